"""A writer process for the multi-process tests:
``python writer_child.py ROOT RUN INDEX STEPS INTERVAL [PACE]``.

Each row's value encodes (writer index, step) so the parent can check every row arrives exactly
once; with STEPS = -1 it logs until killed, one step per millisecond, storing the wall time it
logged each step so the parent can measure what a SIGKILL lost. PACE (seconds) sleeps after each
step, so a finite run stays live long enough for the parent to act beside it.
"""

import sys
import time

from logprobe import collectors

root, run_id, index, steps, interval = (
    sys.argv[1],
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
    float(sys.argv[5]),
)
pace = float(sys.argv[6]) if len(sys.argv) > 6 else (0.001 if steps < 0 else 0.0)
run = collectors.init(run_id=run_id, root=root, source="trainer", rank=index, flush_interval=interval)
print("ready", flush=True)
step = 0
while steps < 0 or step < steps:
    run.log(step, {"writer": float(index), "step_copy": float(step), "logged_at": time.time()})
    step += 1
    if pace:
        time.sleep(pace)
run.close()
print("closed", step, flush=True)
