#!/usr/bin/env python3
"""The instruction-set choice (kernels/cpu_dispatch.c): `--isa avx2|avx512|auto` and MTOK_ISA reach the
kernels, `mtok info` names the levels, and each level this CPU runs gives logits within its tolerance of
the scalar kernels. test_kernels checks every kernel on every level itself; this is the model-level side:

  - avx2 and avx512 (forced; the default fp32 matmul precision) against --no-simd: 1-cos < 1e-5,
    test_prefill_parity's tolerance (measured 2.4e-7 to 3.1e-6), decode (--chunk 1) included, and
    test_prefill_parity.py itself passes under MTOK_ISA=avx2 (the default level runs it in ctest);
  - --matmul-precision bf16 (x rounded to bf16 for bf16 W: VDPBF16PS at avx512, the same rounding done
    beforehand at avx2 and scalar, docs/PERFORMANCE.md "AVX-512 kernels"): every level against the
    scalar kernels at that precision, 1-cos < 5e-5 (measured 6e-6 to 1e-5), and against the fp32
    products between 1e-6 (the rounding happened) and 1e-3 (measured 1.0e-4 and 1.4e-4);
  - the flags and the variables select the same kernels (bit-identical logits), and avx512 differs from
    avx2 (otherwise the flag would not reach the kernels).
Skips (77) without numpy or on a CPU without AVX2."""
import os
import re
import subprocess
import sys
import tempfile

from harness import args, numpy_or_skip

np = numpy_or_skip()
a = args()
models = os.path.join(a.src, "tests", "data", "models")
tokens = open(os.path.join(models, "tokens.txt")).read().strip()
fail = 0


def check(ok, what):
    global fail
    fail += not ok
    print(("ok   " if ok else "FAIL ") + what)


def run(cmd, env=None):
    e = dict(os.environ)
    e.pop("MTOK_ISA", None)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=e)


info = run([a.mtok, "info"])
m = re.search(r"levels this CPU runs: ([a-z0-9 ]+)", info.stdout)
if info.returncode or not m:
    print("mtok info names no ISA levels:\n" + info.stdout + info.stderr)
    sys.exit(1)
levels = m.group(1).split()
print("levels:", levels)
if "avx2" not in levels:
    print("no AVX2 on this CPU: skipped")
    sys.exit(77)
top = levels[-1]
auto = top  # auto runs the highest level (kernels/cpu_dispatch.c)


def backend(cmd, env=None):
    p = run(cmd, env)
    mm = re.search(r"backends: cpu \((\w+) kernels", p.stdout)
    return p.returncode, mm.group(1) if mm else None, p.stderr


check(backend([a.mtok, "info"])[1] == auto, f"info: the default level is {auto}")
check(backend([a.mtok, "info", "--isa", "avx2"])[1] == "avx2", "info --isa avx2 runs avx2 kernels")
check(backend([a.mtok, "info"], {"MTOK_ISA": "avx2"})[1] == "avx2", "MTOK_ISA=avx2 runs avx2 kernels")
check(backend([a.mtok, "info", "--isa", "auto"], {"MTOK_ISA": "scalar"})[1] == auto, "--isa auto overrides MTOK_ISA")
check(backend([a.mtok, "info", "--no-simd"])[1] == "scalar", "--no-simd runs the scalar kernels")
rc, _, err = backend([a.mtok, "info", "--isa", "sse9"])
check(rc == 1 and "--isa must be" in err, "--isa sse9 is refused")
rc, _, err = backend([a.mtok, "info", "--matmul-precision", "fp16"])
check(rc == 1 and "--matmul-precision must be fp32 or bf16" in err, "--matmul-precision fp16 is refused")
if "avx512" in levels:
    check(backend([a.mtok, "info", "--isa", "avx512"])[1] == "avx512", "info --isa avx512 runs avx512 kernels")
    check("avx512_bf16" in info.stdout, "info lists avx512_bf16 among the CPU's extensions")
else:
    rc, _, err = backend([a.mtok, "info", "--isa", "avx512"])
    check(rc == 1 and "cannot run it" in err, "--isa avx512 is refused on a CPU without it")


def logits(model, *extra, env=None):
    with tempfile.NamedTemporaryFile(suffix=".npy", delete=False) as f:
        out = f.name
    try:
        p = run([a.mtok, "logits", "-m", model, "--tokens", tokens, "--out", out, "-q", *extra], env)
        if p.returncode:
            raise SystemExit(f"mtok logits {' '.join(extra)} failed: {p.stderr}")
        return np.load(out)
    finally:
        os.unlink(out)


def one_minus_cos(x, y):
    c = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(1 - c.min())


BF16 = ("--matmul-precision", "bf16")
for fixture in ("g2-chatglm", "g4-chatglm-sharded"):
    d = os.path.join(models, fixture)
    ref = logits(d, "--no-simd")
    ref16 = logits(d, "--no-simd", *BF16)
    e = one_minus_cos(ref16, ref)
    check(1e-6 < e < 1e-3, f"{fixture} scalar bf16 precision vs fp32: 1-cos {e:.2e} in (1e-6, 1e-3)")
    got = {}
    for lv in levels:
        if lv == "scalar":
            continue
        got[lv] = logits(d, "--isa", lv)
        e = one_minus_cos(got[lv], ref)
        check(e < 1e-5, f"{fixture} {lv} vs scalar: 1-cos {e:.2e} < 1e-5")
        dec = logits(d, "--isa", lv, "--chunk", "1")
        e = one_minus_cos(dec, ref)
        check(e < 1e-5, f"{fixture} {lv} decode (--chunk 1) vs scalar: 1-cos {e:.2e} < 1e-5")
        for chunk in (("--chunk", "256"), ("--chunk", "1")):
            b = logits(d, "--isa", lv, *BF16, *chunk)
            e, e32 = one_minus_cos(b, ref16), one_minus_cos(b, ref)
            check(e < 5e-5, f"{fixture} {lv} {' '.join(chunk)} bf16 precision vs scalar bf16: 1-cos {e:.2e} < 5e-5")
            check(1e-6 < e32 < 1e-3, f"{fixture} {lv} {' '.join(chunk)} bf16 precision vs fp32: 1-cos {e32:.2e} "
                  "in (1e-6, 1e-3)")
    check(np.array_equal(logits(d, env={"MTOK_ISA": "avx2"}), got["avx2"]),
          f"{fixture} MTOK_ISA=avx2 and --isa avx2 give identical logits")
    check(np.array_equal(logits(d, "--isa", "avx2", env={"MTOK_MATMUL_PRECISION": "bf16"}),
                         logits(d, "--isa", "avx2", *BF16)),
          f"{fixture} MTOK_MATMUL_PRECISION=bf16 and --matmul-precision bf16 give identical logits")
    if "avx512" in got:
        check(not np.array_equal(got["avx512"], got["avx2"]), f"{fixture} avx512 and avx2 logits differ")
        check(np.array_equal(logits(d), got["avx512"]), f"{fixture} the default runs the avx512 kernels")

# the AVX2 kernels, forced, still meet every variant of the parity test
p = run([sys.executable, os.path.join(a.src, "tests", "test_prefill_parity.py"), "--mtok", a.mtok, "--src", a.src,
         "--build", a.build or "."], {"MTOK_ISA": "avx2"})
check(p.returncode == 0, "test_prefill_parity.py under MTOK_ISA=avx2" + ("" if p.returncode == 0 else ":\n" + p.stdout[-2000:]))

print(f"{'FAILED' if fail else 'passed'}: {fail} failures")
sys.exit(1 if fail else 0)
