#!/usr/bin/env python3
"""`mtok bench --device cuda` without a GPU:
  1. the real mtok (--mtok) on a machine without a usable device fails cleanly: exit 3, the reason on
     stderr, and with --json a report whose "errors" names the device (skipped where a GPU exists);
  2. mtok_shim (--shim-mtok, the CUDA backend's code on the CPU) runs every phase end to end on a
     glm4-tiny synthesized on the spot (--preset): limits before and after (verified), one prefill
     chunk, decode at a depth, the per-stage times, the check against the CPU backend, the topk
     session at two depths (reading fewer KV bytes than exact attention would), the targets, --json-out
     equal to stdout, and the synthesized checkpoint removed afterwards;
  3. usage errors exit 1, a shim with no device (MTOK_SHIM_DEVICES=0) exits 3.
No timing is asserted: the shim's figures only show the arithmetic of the report is wired."""
import json
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpulib import Tally, args, cuda_devices, run  # noqa: E402

a = args(["--shim-mtok"])
T = Tally("test_bench_shim")


def num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse(out):
    try:
        j = json.loads(out)
        return j if isinstance(j, dict) else {}
    except ValueError:
        return {}


# ---- 1. the real build without a device ----
n, line = cuda_devices(a.mtok)
if n >= 1:
    T.skip(f"clean failure without a GPU: this machine has one ({line})")
else:
    r = run(a.mtok, "bench", "--device", "cuda", "--preset", "glm4-tiny", "--json")
    j = parse(r.stdout)
    errs = j.get("errors", [])
    want = 1 if n < 0 else 3  # not built: --device cuda is a usage error; built without a device: a resource error
    T.check(r.returncode == want and ("no usable CUDA device" in r.stderr or "without the CUDA backend" in r.stderr),
            f"mtok bench --device cuda without a usable device: exit {r.returncode} (want {want}): {r.stderr.strip()}")
    if n == 0:
        T.check(len(errs) == 1 and errs[0].get("phase") == "device" and not j.get("prefill"),
                f"--json still reports, with the device error only: {errs}")

if not a.shim_mtok:
    T.done()
shim = a.shim_mtok

# ---- 3. usage and device errors ----
r = run(shim, "bench", "--device", "cuda")
T.check(r.returncode == 1 and "-m DIR" in r.stderr, f"no -m and no --preset: exit 1 ({r.stderr.strip()})")
r = run(shim, "bench", "--device", "cuda", "--preset", "glm4-tiny", "--limits-gemm", "64,32")
T.check(r.returncode == 1, f"--limits-gemm with two numbers: exit 1 ({r.stderr.strip()})")
r = run(shim, "bench", "--device", "cuda", "--preset", "glm4-tiny", "--ctx", "100")
T.check(r.returncode == 1, f"--ctx is refused (the bench sizes its sessions): exit 1 ({r.stderr.strip()})")
r = run(shim, "bench", "--device", "cuda", "--preset", "glm4-tiny", env={"MTOK_SHIM_DEVICES": "0"})
T.check(r.returncode == 3 and "no usable CUDA device" in r.stderr, f"shim without a device: exit 3 ({r.stderr.strip()})")

# ---- 2. every phase through the shim ----
with tempfile.TemporaryDirectory(prefix="mtok-bench-shim-") as tmp:
    jout = os.path.join(tmp, "bench.json")
    r = run(shim, "bench", "--device", "cuda", "--preset", "glm4-tiny", "--synth-dir", tmp, "--chunk", "64",
            "--depths", "64", "--topk-depths", "48,128", "--gen", "2", "--reps", "1", "--stage-steps", "1",
            "--check-tokens", "8", "--kv-block", "16", "--kv-window", "16", "--kv-topk", "2", "--limits-copy-mb", "1",
            "--limits-gemm", "64,32,64", "--limits-reps", "1", "--json", "--json-out", jout, timeout=900)
    T.check(r.returncode == 0, f"bench --device cuda --preset glm4-tiny through the shim: exit {r.returncode} "
                               f"({r.stderr.strip()[-500:]})")
    b = parse(r.stdout)
    T.check(bool(b), "one JSON object on stdout")
    T.check(os.path.exists(jout) and parse(open(jout).read()) == b, "--json-out holds the same report")
    dev = b.get("device", {})
    T.check(dev.get("name") == "mtok CPU shim" and num(dev.get("l2_bytes")), f"device described: {dev.get('name')}")
    lim = b.get("limits", {})
    for when in ("before", "after"):
        x = lim.get(when, {})
        T.check(x.get("verified") is True and num(x.get("copy_gbs")) and x["copy_gbs"] > 0 and num(x.get("gemm_tflops"))
                and x["gemm_tflops"] > 0 and x.get("gemm_mnk") == [64, 32, 64] and x.get("copy_bytes") == 1 << 20
                and x.get("copy_in_l2") is True,
                f"limits {when}: copy and GEMM measured and verified, the shape asked for, the L2 note")
    T.check(lim.get("copy_gbs") == max(lim.get("before", {}).get("copy_gbs", 0), lim.get("after", {}).get("copy_gbs", 0)),
            "the copy limit is the better of the two runs")
    syn = b.get("synth", {})
    T.check(syn.get("preset") == "glm4-tiny" and syn.get("dir", "").startswith(tmp) and not os.path.exists(syn["dir"]),
            f"the checkpoint was synthesized under --synth-dir and removed afterwards ({syn.get('dir')})")
    m = b.get("model", {})
    T.check(m.get("layers") == 2 and m.get("hidden") == 256 and m.get("kv_groups") == 2, "model shape reported")
    pre = b.get("prefill", [])
    T.check(len(pre) == 1 and pre[0].get("tokens") == 64 and all(num(pre[0].get(k)) and pre[0][k] > 0
                                                                 for k in ("tok_s", "tflops", "frac_gemm")),
            "prefill: one 64-token chunk, TFLOP/s and its fraction of the GEMM rate")
    dec = b.get("decode", [])
    # glm4-tiny: 2 layers x (K + V) x 2 groups x 64 dims x 2 bytes = 1024 bytes per visible key
    T.check(len(dec) == 1 and dec[0].get("depth") == 64 and dec[0].get("policy") == "exact"
            and all(num(dec[0].get(k)) and dec[0][k] > 0 for k in ("tok_s", "gbs", "frac_copy", "weight_bytes_per_token"))
            and abs(dec[0].get("kv_bytes_per_token", 0) - 1024 * (64 + 2 + 1.5)) < 1,
            "decode at 64: tok/s, GB/s, fraction of the copy bandwidth, KV bytes of 67.5 keys per step")
    st = b.get("stages", {})
    stages = ("norm", "qkv", "attn", "attn_out", "mlp", "lm_head")
    T.check(st.get("chunks") == 1 and all(num(st.get(k, {}).get("ms")) and st[k]["ms"] > 0 for k in stages)
            and num(st.get("step_ms")) and abs(st["step_ms"] - sum(v["ms"] for k, v in st.items()
                                                                   if isinstance(v, dict))) < 1e-3 * st["step_ms"],
            "stages: norm, QKV, attention, O, MLP, LM head each timed; step_ms is their sum")
    chk = b.get("check", {})
    cp, cd = chk.get("prefill", {}), chk.get("decode", {})
    T.check(chk.get("ok") is True and chk.get("against") == "cpu" and cp.get("rows") == 8 and cd.get("rows") == 4
            and cp.get("min_cos", 0) >= cp.get("tol_min_cos", 1) and cd.get("min_cos", 0) >= cd.get("tol_min_cos", 1)
            and cd.get("max_rel_diff", 1) <= cd.get("tol_max_rel_diff", 0),
            f"check against the CPU backend: prefill {cp}, decode {cd}")
    tk = b.get("decode_topk", [])
    T.check([x.get("depth") for x in tk] == [48, 128] and all(x.get("policy") == "topk" for x in tk)
            and all(num(x.get("tok_s_vs_exact_first_depth")) for x in tk),
            "topk session: decode at 48 and 128, each as a ratio to the exact depth")
    T.check(len(tk) == 2 and tk[1].get("kv_bytes_per_token", 1e30) < 0.8 * 1024 * (128 + 3.5),
            f"topk at 128 reads fewer KV bytes than exact attention ({tk[1].get('kv_bytes_per_token') if len(tk) == 2 else None}"
            f" < 0.8 x {1024 * 131.5:.0f})")
    tg = b.get("targets", {})
    T.check(tg.get("glm4_9b_shape") is False and all(isinstance(tg.get(k, {}).get("met"), bool)
                                                    for k in ("decode", "prefill", "topk")),
            "targets: each measured (met true or false), marked as not the GLM-4-9B shape")
    T.check(b.get("errors") == [], f"no phase failed: {b.get('errors')}")

    # a failing phase (an unknown preset) is reported, exit 1
    r = run(shim, "bench", "--device", "cuda", "--preset", "glm4-nope", "--synth-dir", tmp, "--json",
            "--limits-copy-mb", "1", "--limits-gemm", "64,32,64", "--limits-reps", "1")
    j = parse(r.stdout)
    T.check(r.returncode == 1 and any(e.get("phase") == "synth" for e in j.get("errors", [])),
            f"an unknown preset: exit 1, the synth phase's error in the report ({r.stderr.strip()[-200:]})")
    T.check(not [d for d in os.listdir(tmp) if d.startswith("mtok-bench-")],
            f"nothing left in --synth-dir after the runs: {os.listdir(tmp)}")
T.done()
