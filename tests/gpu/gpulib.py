"""What the GPU test scripts of tests/gpu share: their arguments, the skip when no CUDA device is
usable (exit 77, ctest's SKIP_RETURN_CODE), running mtok, reading .npy logits without numpy, and the
"N passed, F failed, S skipped" summary. Not a test itself (the scripts are named test_*.py).

--shim: the script runs mtok_shim, the CPU-executed build of the CUDA backend (tests/cuda_shim), so
it uses small sizes; the shim's fake device is always there, so nothing skips."""
import argparse
import array
import ast
import os
import re
import subprocess
import sys


def args(extra=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtok", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--build")
    ap.add_argument("--shim", action="store_true", help="mtok is mtok_shim: small sizes")
    for a in extra or ():
        ap.add_argument(a, default=None)
    return ap.parse_args()


def run(mtok, *argv, timeout=600, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([mtok, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=e)


def cuda_devices(mtok):
    """(devices, the `mtok info` cuda line): devices -1 when the build has no CUDA backend."""
    r = run(mtok, "info", timeout=120)
    line = next((l for l in r.stdout.splitlines() if l.startswith("cuda:")), "cuda: (no line in mtok info)")
    if "not built" in line or not line.startswith("cuda: built"):
        return -1, line
    m = re.search(r"; (\d+) devices?:", line)
    return (int(m.group(1)) if m else 0), line


def skip_unless_device(mtok):
    n, line = cuda_devices(mtok)
    if n < 1:
        print(f"no usable CUDA device ({line}): 0 passed, 0 failed, all skipped")
        sys.exit(77)
    print(line)
    return n


def read_npy(path):
    """(shape, flat array('f')) of a little-endian float32 .npy file (what mtok logits writes)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    hlen = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(data[8:12], "little")
    off = 10 if data[6] == 1 else 12
    hdr = ast.literal_eval(data[off:off + hlen].decode("latin1"))
    if hdr["descr"] not in ("<f4", "=f4") or hdr["fortran_order"]:
        raise ValueError(f"{path}: expected C-order float32, got {hdr}")
    vals = array.array("f")
    vals.frombytes(data[off + hlen:])
    if sys.byteorder != "little":
        vals.byteswap()
    return tuple(hdr["shape"]), vals


class Tally:
    def __init__(self, name):
        self.name, self.passed, self.failed, self.skipped = name, 0, 0, 0

    def check(self, cond, what):
        print(f"{'ok  ' if cond else 'FAIL'} {what}", flush=True)
        if cond:
            self.passed += 1
        else:
            self.failed += 1
        return cond

    def skip(self, what):
        print(f"skip {what}", flush=True)
        self.skipped += 1

    def done(self):
        print(f"{self.name}: {self.passed} passed, {self.failed} failed, {self.skipped} skipped")
        sys.exit(1 if self.failed else 0)
