"""The start every mtok ctest script shares: its arguments (--mtok BIN --src DIR --build DIR, as
tests/CMakeLists.txt passes them) and, for the numeric tests, numpy — without it they skip with
exit 77, ctest's SKIP_RETURN_CODE. Imported as `from harness import ...` (the scripts' own folder
is first on sys.path); not a test itself, the test_*.py glob does not pick it up."""
import argparse
import os
import sys


def args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtok", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--build")
    return ap.parse_args()


def numpy_or_skip():
    try:
        import numpy
    except ImportError:
        print("numpy missing: skipped")
        sys.exit(77)
    return numpy


def shim_and_cpu(a):
    """The binaries of the CUDA shim tests: (mtok_shim, a CPU mtok). --mtok may name either; the other
    is looked for beside it (or in --build). Exit 77 when mtok_shim was not built (no CUDA toolkit
    headers at configure time). Without a separate CPU build the shim's own CLI serves: it runs the
    CPU backend unless given --device cuda."""
    build = a.build or os.path.dirname(os.path.abspath(a.mtok))
    shim = a.mtok if os.path.basename(a.mtok).startswith("mtok_shim") else os.path.join(build, "mtok_shim")
    if not os.path.exists(shim):
        print(f"{shim} not built (configure with the CUDA toolkit's headers present): skipped")
        sys.exit(77)
    cpu = a.mtok if a.mtok != shim else os.path.join(build, "mtok")
    return shim, cpu if os.path.exists(cpu) else shim
