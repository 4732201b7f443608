"""A writer process for the multi-process tests: ``python writer_child.py ROOT RUN INDEX STEPS INTERVAL``.

Each row's value encodes (writer index, step) so the parent can check every row arrives exactly
once; with STEPS = -1 it logs until killed, one step per millisecond, storing the wall time it
logged each step so the parent can measure what a SIGKILL lost.
"""

import sys
import time

import collectors

root, run_id, index, steps, interval = (
    sys.argv[1],
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
    float(sys.argv[5]),
)
run = collectors.init(run_id=run_id, root=root, source="trainer", rank=index, flush_interval=interval)
print("ready", flush=True)
step = 0
while steps < 0 or step < steps:
    run.log(step, {"writer": float(index), "step_copy": float(step), "logged_at": time.time()})
    step += 1
    if steps < 0:
        time.sleep(0.001)
run.close()
print("closed", step, flush=True)
