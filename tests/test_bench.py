#!/usr/bin/env python3
"""mtok bench and mtok bench limits: the JSON is well-formed, carries every figure the issue asks for,
and the built-in correctness checks pass (SIMD logits vs the scalar kernels on glm4-tiny; the limit
kernels' sums). No timing is asserted: benchmarks are never timed unit tests."""
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


def limits_ok(lim, where):
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

    # the smallest run: the context is exactly what the phases need (warm-up included)
    rc, out, err = run("bench", "-m", model, "--prompt", "8", "--depths", "0", "--gen", "8", "--check-tokens", "2",
                       "--array-mb", "16")
    check(rc == 0, f"bench fits its warm-up into a context of exactly the tokens it needs (rc {rc}: {err.strip()})")

    rc, out, err = run("bench", "-m", model, "--prompt", "16", "--depths", "0", "--gen", "2", "--ctx", "8")
    check(rc == 1, "bench rejects a --ctx below what the run needs")

print(f"{'FAILED' if bad else 'passed'}: {bad} failures")
sys.exit(1 if bad else 0)
