"""The start every mtok ctest script shares: its arguments (--mtok BIN --src DIR --build DIR, as
tests/CMakeLists.txt passes them) and, for the numeric tests, numpy — without it they skip with
exit 77, ctest's SKIP_RETURN_CODE. Imported as `from harness import ...` (the scripts' own folder
is first on sys.path); not a test itself, the test_*.py glob does not pick it up."""
import argparse
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
