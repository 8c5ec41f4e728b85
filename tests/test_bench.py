#!/usr/bin/env python3
"""mtok bench and mtok bench limits: the JSON is well-formed, carries every figure the issue asks for,
and the built-in correctness checks pass (SIMD logits vs the scalar kernels on glm4-tiny; the limit
kernels' sums). The peak of each instruction class is reported exactly for the classes the CPU lists
(/proc/cpuinfo), and a prefill's fraction is taken against the peak of the class its kernels use (with
every --isa this CPU can run). No timing is asserted: benchmarks are never timed unit tests."""
import json
import math
import os
import subprocess
import sys
import tempfile

from harness import args

a = args()

bad = 0


def check(cond, what):
    global bad
    bad += not cond
    print(f"{'ok  ' if cond else 'FAIL'} {what}")


def run(*args):
    p = subprocess.run([a.mtok, *args], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# the instruction classes and the /proc/cpuinfo flags that make each one available (the OS's XCR0
# check is implied: Linux lists an AVX feature only when it saves that state)
PEAKS = {
    "fp32_fma_ymm": (("avx2", "fma"),),
    "fp32_fma_zmm": (("avx512f",),),
    "bf16_dot_zmm": (("avx512f", "avx512_bf16"),),
    "int8_vnni_ymm": (("avx512f", "avx512vl", "avx512_vnni"), ("avx2", "avx_vnni")),
    "int8_vnni_zmm": (("avx512f", "avx512_vnni"),),
}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


FLAGS = cpu_flags()


def peak_value(lim, name):
    """The peak a name stands for: a class of limits.peaks, or the portable FMA loop's figure."""
    if name == "fp32_portable":
        return lim.get("fma_gflops")
    pk = lim.get("peaks", {}).get(name, {})
    return pk.get("gops" if name.startswith("int8") else "gflops")


def peaks_ok(lim, where):
    peaks = lim.get("peaks", {})
    check(isinstance(peaks, dict) and sorted(peaks) == sorted(PEAKS), f"{where}: one peak per instruction class")
    for name, need in PEAKS.items():
        pk = peaks.get(name, {})
        avail = pk.get("available")
        check(isinstance(avail, bool), f"{where}: {name} says whether it is available")
        if FLAGS is not None:
            want = any(all(f in FLAGS for f in alt) for alt in need)
            check(avail == want, f"{where}: {name} available = {want}, as the CPU's flags say")
        if avail:
            u = "gops" if name.startswith("int8") else "gflops"
            check(num(pk.get(u)) and pk[u] > 0 and num(pk.get(u + "_mean")) and 0 < pk[u + "_mean"] <= pk[u] * (1 + 1e-9),
                  f"{where}: {name} has a positive {u} and a mean no faster than it")
            check(isinstance(pk.get("instruction"), str) and pk["instruction"], f"{where}: {name} names its instruction")
        else:
            check("gflops" not in pk and "gops" not in pk, f"{where}: {name} has no figure (not available)")


def limits_ok(lim, where):
    peaks_ok(lim, where)
    check(all(num(lim.get(k)) and lim[k] > 0 for k in ("triad_gbs", "read_gbs", "fma_gflops")),
          f"{where}: triad, read-only and FMA figures are positive numbers")
    check(lim.get("verified") is True, f"{where}: limit kernels verified their results")
    check(num(lim.get("fma_gflops_mean")) and 0 < lim["fma_gflops_mean"] <= lim["fma_gflops"] * (1 + 1e-9),
          f"{where}: the FMA loop's mean over the reps is positive and no faster than its best")


# ---- mtok bench limits ----
rc, out, err = run("bench", "limits", "--json", "--array-mb", "16", "--reps", "1")
check(rc == 0, f"bench limits exits 0 (rc {rc}: {err.strip()})")
try:
    lim = json.loads(out)
except ValueError:
    lim = {}
check(isinstance(lim, dict) and lim, "bench limits prints one JSON object")
limits_ok(lim, "bench limits")
check(num(lim.get("threads")) and lim["threads"] >= 1, "bench limits reports its thread count")
check(lim.get("kernel_isa") in ("scalar", "avx2", "avx512"), "bench limits names the kernels in use")
rc, out, err = run("bench", "limits", "--array-mb", "16", "--reps", "1")
check(rc == 0 and all(n in out for n in PEAKS), "bench limits (text) lists every instruction class")
check(rc == 0 and out.count("not available") == sum(not lim.get("peaks", {}).get(n, {}).get("available", True)
                                                    for n in PEAKS),
      "bench limits (text) says 'not available' for each class the machine lacks")

if FLAGS is not None and {"avx2", "fma", "f16c"} <= FLAGS:
    rc, out, err = run("bench", "limits", "--json", "--array-mb", "16", "--reps", "1", "--isa", "avx2")
    try:
        li = json.loads(out)
    except ValueError:
        li = {}
    check(rc == 0 and li.get("kernel_isa") == "avx2", "bench limits --isa avx2 names the AVX2 kernels")
rc, out, err = run("bench", "limits", "--isa", "scalar")
check(rc == 1, "bench limits --isa scalar is a usage error (--no-simd is the scalar switch)")
rc, out, err = run("bench", "limits", "--bogus")
check(rc == 1, "bench limits rejects an unknown option with exit 1")
rc, out, err = run("bench")
check(rc == 1, "bench without -m is a usage error")

# ---- mtok bench -m glm4-tiny ----
with tempfile.TemporaryDirectory() as tmp:
    model = os.path.join(tmp, "glm4-tiny")
    rc, out, err = run("synth", "--preset", "glm4-tiny", "--out", model, "-q")
    check(rc == 0, f"synth glm4-tiny (rc {rc}: {err.strip()})")
    rc, out, err = run("bench", "-m", model, "--prompt", "48,96", "--depths", "64,0", "--gen", "4",
                       "--check-tokens", "32", "--array-mb", "16", "--json")
    check(rc == 0, f"bench -m glm4-tiny exits 0 (rc {rc}: {err.strip()})")
    try:
        b = json.loads(out)
    except ValueError:
        b = {}
    check(isinstance(b, dict) and b, "bench prints one JSON object")
    m = b.get("model", {})
    check(m.get("layers") == 2 and m.get("hidden") == 256 and m.get("vocab") == 1024, "model shape reported")
    limits_ok(b.get("limits", {}), "bench")
    limits_ok(b.get("limits", {}).get("before", {}), "bench limits before")
    limits_ok(b.get("limits", {}).get("after", {}), "bench limits after")
    pre = b.get("prefill", [])
    check([p.get("tokens") for p in pre] == [48, 96], "one prefill entry per prompt length")
    check(all(num(p.get(k)) and p[k] > 0 for p in pre
              for k in ("tok_s", "ttft_s", "gflops", "frac_fma_peak", "gflops_mean", "frac_fma_peak_mean",
                        "frac_fma_sustained")),
          "prefill: tok/s, time to first token, GFLOP/s and fraction of FMA peak (best and mean of the reps)")
    check(all(p["gflops_mean"] <= p["gflops"] * (1 + 1e-9) for p in pre if num(p.get("gflops_mean"))),
          "prefill: the mean of the reps is no faster than the best")
    dec = b.get("decode", [])
    check([d.get("depth") for d in dec] == [0, 64], "decode depths in ascending order")
    keys = ("tok_s", "weight_bytes_per_token", "gbs", "frac_triad", "frac_read", "tok_s_vs_first_depth")
    check(all(num(d.get(k)) and d[k] > 0 for d in dec for k in keys),
          "decode: tok/s, weight bytes, GB/s and fractions of triad / read-only")
    check(len(dec) == 2 and dec[1]["kv_bytes_per_token"] > dec[0]["kv_bytes_per_token"] > 0,
          "KV bytes per decode token grow with depth")
    # glm4-tiny: 2 layers x (K + V) x 2 groups x 64 dims x 2 bytes per visible key
    check(len(dec) == 2 and abs(dec[1]["kv_bytes_per_token"] - 1024 * (64 + 2.5)) < 1,
          "KV bytes per token follow the shapes (depth 64, 4 steps: 66.5 keys on average)")
    check(num(b.get("peak_rss_bytes")) and b["peak_rss_bytes"] > 0, "peak RSS reported")
    chk = b.get("check", {})
    check(chk.get("ok") is True and chk.get("prefill_tokens") == 32 and chk.get("min_cos", 0) > 0.9999,
          "SIMD logits agree with the scalar kernels")

    def peak_fracs_ok(b, where, want):
        """The report names the peak of the class the kernels used and divides every prefill by it."""
        pk, lim = b.get("peak", {}), b.get("limits", {})
        check(pk.get("name") == want, f"{where}: prefill peak is {want} (got {pk.get('name')}, "
              f"kernels {pk.get('kernel_isa')}, {pk.get('dtype')} weights)")
        ref = peak_value(lim, pk.get("name"))
        check(num(pk.get("gflops")) and num(ref) and pk["gflops"] > 0 and abs(pk["gflops"] - ref) <= 1e-5 * ref,
              f"{where}: the peak's figure is that class's best in limits")
        pre = b.get("prefill", [])
        # the JSON carries 6 significant digits: each of the three numbers is within 5e-6 of its value
        check(len(pre) > 0 and all(num(p.get("frac_peak")) and num(p.get("frac_peak_mean")) for p in pre) and
              all(abs(p["frac_peak"] - p["gflops"] / pk["gflops"]) <= 2e-5 * p["frac_peak"] and
                  abs(p["frac_peak_mean"] - p["gflops_mean"] / pk["gflops"]) <= 2e-5 * p["frac_peak_mean"]
                  for p in pre),
              f"{where}: frac_peak = gflops / the named peak, for every prefill")
        # the fp32 matmul precision takes two VDPBF16PS per product (x = hi + lo): half the class's rate
        dots = 2 if pk.get("name") == "bf16_dot_zmm" and pk.get("matmul_precision") == "fp32" else 1
        check(pk.get("matmul_precision") in ("fp32", "bf16") and pk.get("dots_per_product") == dots and
              num(pk.get("limit_gflops")) and abs(pk["limit_gflops"] - pk["gflops"] / dots) <= 1e-5 * pk["gflops"],
              f"{where}: the peak names the matmul precision, {dots} instruction(s) per product and the limit")
        check(all(num(p.get("frac_limit")) and abs(p["frac_limit"] - p["frac_peak"] * dots) <= 2e-5 * p["frac_limit"]
                  for p in pre), f"{where}: frac_limit = gflops / the limit, for every prefill")

    def want_peak(isa, dtype):
        """The class each ISA's prefill kernels use (kernels/avx512_gemm.c: VDPBF16PS for bf16 weights;
        f16 and f32 weights take the AVX2 kernels at the avx512 level too)."""
        if isa == "avx512" and str(dtype).lower() == "bf16":
            return "bf16_dot_zmm"
        return "fp32_fma_ymm" if b.get("limits", {}).get("peaks", {}).get("fp32_fma_ymm", {}).get("available") \
            else "fp32_portable"

    pk = b.get("peak", {})
    check(pk.get("kernel_isa") in ("scalar", "avx2", "avx512") and pk.get("dtype") == m.get("dtype"),
          "bench names the kernels in use and the weights' dtype")
    peak_fracs_ok(b, "bench", want_peak(pk.get("kernel_isa"), m.get("dtype")))
    # every level this CPU has, forced: the peak follows the kernels
    for isa, flags in (("avx2", ("avx2", "fma", "f16c")),
                       ("avx512", ("avx512f", "avx512bw", "avx512vl", "avx512_bf16"))):
        if FLAGS is None or not all(f in FLAGS for f in flags):
            print(f"skip --isa {isa}: this CPU lacks it")
            continue
        rc, out, err = run("bench", "-m", model, "--isa", isa, "--prompt", "32", "--depths", "0", "--gen", "2",
                           "--check-tokens", "4", "--array-mb", "16", "--json")
        check(rc == 0, f"bench --isa {isa} exits 0 (rc {rc}: {err.strip()})")
        try:
            bi = json.loads(out)
        except ValueError:
            bi = {}
        check(bi.get("peak", {}).get("kernel_isa") == isa, f"bench --isa {isa} runs the {isa} kernels")
        peak_fracs_ok(bi, f"bench --isa {isa}", want_peak(isa, m.get("dtype")))
        # the bf16 precision at this level: its check compares with the scalar kernels rounding x alike
        # (within the looser tolerance it names) and reports what it costs against the fp32 products
        rc, out, err = run("bench", "-m", model, "--isa", isa, "--matmul-precision", "bf16", "--prompt", "32",
                           "--depths", "0", "--gen", "2", "--check-tokens", "8", "--array-mb", "16", "--json")
        try:
            bp = json.loads(out)
        except ValueError:
            bp = {}
        ck = bp.get("check", {})
        check(rc == 0 and ck.get("ok") is True and ck.get("matmul_precision") == "bf16" and
              ck.get("tol_one_minus_cos") == 1e-3, f"bench --isa {isa} --matmul-precision bf16 passes its check "
              f"(rc {rc}: {err.strip()[-300:]}; check {ck})")
        vs = ck.get("vs_fp32", {})
        check(num(vs.get("min_cos")) and 0.99 < vs["min_cos"] < 1.0 and vs["min_cos"] <= ck.get("min_cos", 0) + 1e-4,
              f"bench --isa {isa} --matmul-precision bf16 reports its distance from the fp32 products ({vs})")
        peak_fracs_ok(bp, f"bench --isa {isa} --matmul-precision bf16", want_peak(isa, m.get("dtype")))
    rc, out, err = run("bench", "-m", model, "--matmul-precision", "fp16", "--prompt", "8")
    check(rc == 1 and "--matmul-precision must be fp32 or bf16" in err, "bench --matmul-precision fp16 is refused")

    # the smallest run: the context is exactly what the phases need (warm-up included)
    rc, out, err = run("bench", "-m", model, "--prompt", "8", "--depths", "0", "--gen", "8", "--check-tokens", "2",
                       "--array-mb", "16")
    check(rc == 0, f"bench fits its warm-up into a context of exactly the tokens it needs (rc {rc}: {err.strip()})")

    rc, out, err = run("bench", "-m", model, "--prompt", "16", "--depths", "0", "--gen", "2", "--ctx", "8")
    check(rc == 1, "bench rejects a --ctx below what the run needs")

print(f"{'FAILED' if bad else 'passed'}: {bad} failures")
sys.exit(1 if bad else 0)
