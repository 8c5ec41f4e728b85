#!/usr/bin/env python3
"""The CUDA backend end to end on the CPU: `mtok_shim` is the whole CLI with the backend's glue
(core/backend_cuda*.c) and the kernels' own source (cuda/k_*.cu) running on tests/cuda_shim's fake
runtime, so `--device cuda` exercises the memory plan, the upload, every op, the device KV copy, the
block uploads after a loaded file, the decode graphs (captured, instantiated, replayed) and the
non-finite record on a machine without a GPU. Every result is compared with the CPU backend.

Tolerances. The decode path (chunks of at most CK_DECODE_MAX_N = 4 rows: the GEMV with fp32 inputs and
fp32 flash-decoding) does the CPU's arithmetic in another summation order; as in
test_prefill_parity.py, that moves a K or V value across a bf16 rounding now and then, so: cosine
> 1 - 1e-5 per position and max |d| < 2e-3 max |ref| (measured on g2-chatglm: 1 - 1.2e-7 and 2.6e-4).
The prefill paths round operands to bf16 where the CPU keeps fp32: cuBLASLt's inputs (more than 8
rows), the tensor-core Q.K and P.V of the prefill attention (more than 4), and on the device every
weight of an f16/f32 checkpoint. Each such rounding has a relative error of at most u = 2^-9; a layer
makes about 6 of them (QKV, Q, P, O, gate/up, down inputs), so the budget is max |d| < 6 L u max |ref|
and cosine > 1 - (6 L u)^2 (L layers; measured 1.1e-2 and 1 - 9e-5 for L = 2, 2.6e-2 and 1 - 4e-4 for
L = 4 at 40 tokens). A wrong RoPE angle costs far more (cosine 0.69 with the angles doubled); a
dropped or misplaced KV row costs 1 - cos > 1e-3 (test_prefill_parity.py), which only the decode-path
bound is sure to catch: the long prompts also run in chunks of 3 and 4 rows against it.

Needs numpy (else skipped, exit 77) and the mtok_shim binary (built with the CUDA shim; else skipped)."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

from harness import args, numpy_or_skip, shim_and_cpu

np = numpy_or_skip()
a = args()
SHIM, CPU = shim_and_cpu(a)

work = tempfile.mkdtemp(prefix="mtok-cuda-shim-")
ENV = dict(os.environ, OMP_WAIT_POLICY="passive", XDG_CACHE_HOME=os.path.join(work, "cache"))
for var in ("MTOK_SHIM_MEM_MB", "MTOK_SHIM_DEVICES", "MTOK_CUDA_GRAPHS"):  # each case sets its own
    ENV.pop(var, None)
U = 2.0 ** -9
bad = 0


def check(ok, what):
    global bad
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)


def run(binary, *cmd, env=None):
    e = dict(ENV, **(env or {}))
    return subprocess.run([binary, *cmd], capture_output=True, text=True, timeout=900, env=e)


def last_error(err):
    errs = [l for l in err.strip().splitlines() if l.startswith("mtok: error: ")]
    return errs[-1] if errs else ""


def logits(binary, model, tokens, *extra, env=None):
    out = os.path.join(work, "logits.npy")
    p = run(binary, "logits", "-m", model, "--tokens", tokens, "--out", out, "-q", *extra, env=env)
    if p.returncode:
        return None, p
    return np.load(out), p


def compare(got, ref):
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return float(cos.min()), float(np.abs(got - ref).max() / np.abs(ref).max())


def parity(label, model, tokens, layers, tight, *extra):
    """logits on the CPU and through the shim with --device cuda; tight: the decode path's bound."""
    ref, p = logits(CPU, model, tokens, *extra)
    if ref is None:
        check(False, f"{label}: CPU logits failed: {p.stderr.strip()[-300:]}")
        return
    got, p = logits(SHIM, model, tokens, "--device", "cuda", *extra)
    if got is None or got.shape != ref.shape:
        check(False, f"{label}: cuda logits failed: rc {p.returncode} {last_error(p.stderr) or p.stderr[-300:]}")
        return
    cos, rel = compare(got, ref)
    if tight:
        lim_cos, lim_rel = 1 - 1e-5, 2e-3
    else:
        lim_cos, lim_rel = 1 - (6 * layers * U) ** 2, 6 * layers * U
    check(cos > lim_cos and rel < lim_rel, f"{label}: {ref.shape[0]} positions, min cos 1-{1 - cos:.1e} "
          f"(> 1-{1 - lim_cos:.1e}), max |d| {rel:.1e} of max |ref| (< {lim_rel:.1e})")


models = os.path.join(a.src, "tests", "data", "models")
all_tokens = open(os.path.join(models, "tokens.txt")).read().strip().split(",")


def toks(n):
    return ",".join(all_tokens[:n])


try:
    # ---- the device: mtok info, no device, a device index past the last ----
    p = run(SHIM, "info")
    line = [l for l in p.stdout.splitlines() if "cuda" in l]
    check(p.returncode == 0 and line and re.search(r"built \(sm_80, sm_90a\); 1 device: .+ \(\d+ GiB\)", line[0]),
          f"mtok info: {line[0].strip() if line else p.stdout[-200:]}")
    p = run(SHIM, "info", env={"MTOK_SHIM_DEVICES": "0"})
    line = [l for l in p.stdout.splitlines() if "cuda" in l]
    check(p.returncode == 0 and line and "no devices: no CUDA device" in line[0],
          f"mtok info without a device: {line[0].strip() if line else p.stdout[-200:]}")

    tiny = {}
    for naming in ("chatglm", "hf"):
        d = os.path.join(work, f"tiny-{naming}")
        p = run(SHIM, "synth", "--preset", "glm4-tiny", "--out", d, "--naming", naming, "-q")
        assert p.returncode == 0, p.stderr
        tiny[naming] = d
    T = tiny["chatglm"]
    _, p = logits(SHIM, T, "1,2,3", "--device", "cuda", env={"MTOK_SHIM_DEVICES": "0"})
    check(p.returncode == 3 and "--device cuda: no CUDA device" in last_error(p.stderr),
          f"no device: exit {p.returncode}, {last_error(p.stderr)}")
    _, p = logits(SHIM, T, "1,2,3", "--device", "cuda:1")
    check(p.returncode == 3 and "--device cuda:1 but only 1 device" in last_error(p.stderr),
          f"cuda:1 of one device: exit {p.returncode}, {last_error(p.stderr)}")

    # ---- the memory plan: refused before anything is allocated, with what to lower ----
    _, p = logits(SHIM, T, "1,2,3", "--device", "cuda", env={"MTOK_SHIM_MEM_MB": "1"})
    e = last_error(p.stderr)
    check(p.returncode == 3 and "GiB are free" in e and "weights" in e and "KV cache" in e and "--chunk" in e,
          f"a plan larger than the device: exit {p.returncode}, {e[:240]}")
    # glm4-tiny: 1 KiB of KV per position; 512 MiB hold the rest (weights, scratch, workspace,
    # headroom) but not 131072 positions
    _, p = logits(SHIM, T, "1,2,3", "--device", "cuda", env={"MTOK_SHIM_MEM_MB": "512"})
    e = last_error(p.stderr)
    m = re.search(r"KV cache is (\d+) bytes/token: --ctx (\d+) would fit", e)
    check(p.returncode == 3 and m and m.group(1) == "1024", f"the KV cache too large: exit {p.returncode}, {e[:300]}")
    if m:
        fit = int(m.group(2))
        _, p = logits(SHIM, T, "1,2,3", "--device", "cuda", "--ctx", str(fit), env={"MTOK_SHIM_MEM_MB": "512"})
        _, q = logits(SHIM, T, "1,2,3", "--device", "cuda", "--ctx", str(fit + 4096), env={"MTOK_SHIM_MEM_MB": "512"})
        check(p.returncode == 0 and q.returncode == 3,
              f"the --ctx {fit} the message names runs (exit {p.returncode}); {fit + 4096} does not "
              f"(exit {q.returncode})")
    _, p = logits(SHIM, os.path.join(models, "g4-chatglm-sharded"), "1,2,3", "--device", "cuda")
    check(p.returncode == 2 and "head_dim 16" in last_error(p.stderr),
          f"a head_dim the kernels do not take (g4 fixtures): exit {p.returncode}, {last_error(p.stderr)[:160]}")

    # ---- logits: prompts of 1, 7 and 40 tokens in chunks of 16 (decode kernel; GEMV + prefill
    # attention; cuBLASLt + prefill attention over a cached prefix), both namings, 2 and 4 KV groups ----
    for label, model, layers, lengths, extra in (
            ("g2-chatglm", os.path.join(models, "g2-chatglm"), 2, (1, 7, 40), ()),
            ("g2-hf-sharded", os.path.join(models, "g2-hf-sharded"), 2, (7,), ()),
            ("glm4-tiny chatglm", tiny["chatglm"], 2, (1, 7, 40), ()),
            ("glm4-tiny hf", tiny["hf"], 2, (1, 40), ())):
        for n in lengths:
            parity(f"{label} {n} tokens --chunk 16", model, toks(n), layers, n == 1, "--chunk", "16", *extra)
    # the decode path over a long prefix: every chunk of 4 rows through the split-KV kernel, blocks of
    # 16 so its shares span several blocks, token-major K (--kv-block 12) as well as panels
    parity("glm4-tiny 40 tokens --chunk 4 --kv-block 16", T, toks(40), 2, True, "--chunk", "4", "--kv-block", "16")
    parity("glm4-tiny 40 tokens --chunk 3 --kv-block 12", T, toks(40), 2, True, "--chunk", "3", "--kv-block", "12")
    mini = os.path.join(work, "mini")
    p = run(SHIM, "synth", "--preset", "glm4-1m-mini", "--out", mini, "-q")
    assert p.returncode == 0, p.stderr
    for n in (1, 7, 40):  # 4 KV groups, head_dim 128, 4 layers
        parity(f"glm4-1m-mini (4 KV groups) {n} tokens", mini, toks(n), 4, n == 1, "--chunk", "16", "--ctx", "4096")
    f32 = os.path.join(work, "tiny-f32")
    p = run(SHIM, "synth", "--preset", "glm4-tiny", "--out", f32, "--dtype", "f32", "-q")
    assert p.returncode == 0, p.stderr
    parity("glm4-tiny f32 (converted to bf16 on upload) 7 tokens", f32, toks(7), 2, False)

    # ---- the KV policies that send block lists: topk (with its audit reading device partials) and window ----
    long_toks = ",".join((all_tokens * 3)[:100])
    for policy in (("--kv-policy", "topk", "--kv-topk", "2", "--kv-window", "16", "--kv-audit", "1"),
                   ("--kv-policy", "window", "--kv-window", "24", "--kv-sinks", "4")):
        parity(f"glm4-tiny 100 tokens {' '.join(policy)}", T, long_toks, 2, False, "--chunk", "16", "--kv-block",
               "8", *policy)

    # ---- topk chosen on the device (cuda/k_topk.cu): chunks of at most 4 rows whose rows the device
    # holds take their blocks from the device's summaries and queries, with nothing read back. Where
    # the session's parameters carry the rule (core/backend.h MTOK_BACKEND_TOPK_RULE; the log names it)
    # the choice must be the host's bit for bit: the same queries give the same bounds (the shared
    # mm_topk_bound) and the same lists, so the logits equal those of a run whose audit (a rate that
    # never samples a step) keeps the choice on the host. Without the rule both runs choose on the host. ----
    topk = ("--kv-policy", "topk", "--kv-topk", "2", "--kv-window", "16", "--kv-block", "8", "--chunk", "4")
    parity("glm4-tiny 100 tokens topk in chunks of 4", T, long_toks, 2, True, *topk)
    dev, p = logits(SHIM, T, long_toks, "--device", "cuda", "-v", *topk)
    on_device = "blocks chosen on the device" in p.stderr
    host, q = logits(SHIM, T, long_toks, "--device", "cuda", "--kv-audit", "1e-300", *topk)
    check(dev is not None and host is not None and np.array_equal(dev, host),
          f"topk {'chosen on the device' if on_device else '(the rule is not in the contract: host)'}: logits "
          f"identical to the host's choice ({p.returncode}, {q.returncode} {last_error(p.stderr + q.stderr)})")
    # greedy tokens as the CPU's topk run; on the device every step after the first is a graph replay
    story = "the river stone apple north quiet lamp sea seven green house road"
    gen = ["generate", "-m", T, "-p", " ".join([story] * 5), "-n", "10", "--temperature", "0", "--ignore-eos", *topk]
    ref, g = run(CPU, *gen), run(SHIM, *gen, "--device", "cuda", "-v")
    steps = (re.findall(r"decode steps: .*", g.stderr) or ["?"])[0]
    m = re.search(r"(\d+) captured, (\d+) replayed", steps)
    graphed = bool(m) and m.group(1) == "1" and int(m.group(2)) >= 8
    check(ref.returncode == 0 and g.returncode == 0 and g.stdout == ref.stdout and (graphed or not on_device),
          f"generate topk: the CPU's tokens ({g.stdout == ref.stdout}); {steps}")

    # ---- greedy decoding: the decode graph captured once, then replayed; the same tokens as the CPU.
    # Token identity is asserted on the fp32 path only (prompts in chunks of 4): in the random tiny
    # model two top logits can be 0.002 apart (measured after a 133-token document), inside the bf16
    # prefill's error, where a flip says nothing about the code. ----
    gen = ["generate", "-m", T, "-p", "the river stone apple north", "-n", "8", "--temperature", "0",
           "--ignore-eos", "--chunk", "4"]
    ref = run(CPU, *gen)
    g = run(SHIM, *gen, "--device", "cuda", "--log-level", "3")
    eager = run(SHIM, *gen, "--device", "cuda", "-v", env={"MTOK_CUDA_GRAPHS": "0"})
    replays = len(re.findall(r"replayed from the graph", g.stderr))
    captures = len(re.findall(r"captured as a CUDA graph", g.stderr))
    check(ref.returncode == 0 and g.returncode == 0 and g.stdout == ref.stdout and captures == 1 and replays >= 5,
          f"generate 8 greedy tokens: same text as the CPU ({g.stdout == ref.stdout}), {captures} capture, "
          f"{replays} replays")
    check(eager.returncode == 0 and eager.stdout == ref.stdout and "0 captured, 0 replayed" in eager.stderr,
          "MTOK_CUDA_GRAPHS=0: every decode step eager, the same tokens")
    # one-token chunks: the prompt's steps replay the graph too (captured at position 0)
    one = [x if x != "4" else "1" for x in gen]
    ref, g = run(CPU, *one), run(SHIM, *one, "--device", "cuda", "-v")
    check(ref.returncode == 0 and g.returncode == 0 and g.stdout == ref.stdout and
          re.search(r"1 captured, \d+ replayed from a graph, 0 eager", g.stderr),
          f"generate --chunk 1: the same tokens, {(re.findall(r'decode steps: .*', g.stderr) or ['?'])[0]}")

    # ---- a saved KV file continued in a cuda session: kv_forget, then the blocks uploaded from the
    # store (both K layouts), then graphs once every row is on the device; qa truncates back to the
    # document between questions (kv_forget of the tail) ----
    words = "the river stone apple north quiet lamp sea seven green house road".split()
    doc = os.path.join(work, "doc.txt")
    with open(doc, "w") as f:
        f.write(" ".join(words[(i * 7) % len(words)] for i in range(60)))
    qf = os.path.join(work, "q.jsonl")
    with open(qf, "w") as f:
        for i, q in enumerate((" seven lamp", " the river north")):
            f.write(json.dumps({"id": i, "question": q}) + "\n")
    for blk in ("32", "12"):
        kv = os.path.join(work, f"doc{blk}.kv")
        p = run(CPU, "prefill", "-m", T, "-f", doc, "--save-kv", kv, "--kv-block", blk)
        assert p.returncode == 0, p.stderr
        cont = ["generate", "-m", T, "--load-kv", kv, "-p", " the river north", "-n", "6", "--temperature", "0",
                "--ignore-eos", "--kv-block", blk, "--chunk", "4"]
        ref, got = run(CPU, *cont), run(SHIM, *cont, "--device", "cuda", "--log-level", "3")
        check(ref.returncode == 0 and got.returncode == 0 and got.stdout == ref.stdout and
              "replayed from the graph" in got.stderr,
              f"generate --load-kv (blocks of {blk}): continues like the CPU ({got.stdout == ref.stdout}), "
              f"graphs after the upload ({'replayed from the graph' in got.stderr}) {last_error(got.stderr)}")
    qa = ["qa", "-m", T, "--load-kv", os.path.join(work, "doc32.kv"), "--questions", qf, "-n", "5", "--ignore-eos",
          "--kv-block", "32", "--temperature", "0", "--chunk", "4"]
    ref, got = run(CPU, *qa), run(SHIM, *qa, "--device", "cuda")

    def answers(p):
        return [json.loads(x)["tokens"] for x in p.stdout.splitlines() if x.strip()]

    check(ref.returncode == 0 and got.returncode == 0 and answers(got) == answers(ref) and len(answers(ref)) == 2,
          f"qa --load-kv: 2 questions from one document state, the CPU's answers {last_error(got.stderr)}")

    # ---- non-finite weights: the same error as the CPU backend (tests/test_nonfinite.py's cases) ----
    ESIZE = {"BF16": 2, "F16": 2, "F32": 4}
    BITS = {"BF16": (0x7FC0, 0x7F80, 0xFF80, 0xFFC1)}

    def poke(d, name, elem, kind):
        path = os.path.join(d, "model.safetensors")
        with open(path, "r+b") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            h = json.loads(f.read(n))
            at = 8 + n + h[name]["data_offsets"][0] + elem * ESIZE[h[name]["dtype"]]
            f.seek(at)
            f.write(struct.pack("<H", BITS[h[name]["dtype"]][kind]))

    E = 256
    EMB = "transformer.embedding.word_embeddings.weight"
    QKV1 = "transformer.encoder.layers.1.self_attention.query_key_value.weight"
    NORM0 = "transformer.encoder.layers.0.post_attention_layernorm.weight"
    FINAL = "transformer.encoder.final_layernorm.weight"
    HEAD = "transformer.output_layer.weight"
    for label, name, elem, kind in (("NaN in the embedding of token 2", EMB, 2 * E + 17, 0),
                                    ("-Inf in the embedding of token 3", EMB, 3 * E, 2),
                                    ("NaN in a query row of layer 1", QKV1, 5 * E + 3, 0),
                                    ("Inf in a key row of layer 1", QKV1, 265 * E + 3, 1),
                                    ("NaN in a value row of layer 1", QKV1, 386 * E + 2, 0),
                                    ("NaN in layer 0's MLP norm", NORM0, 7, 3),
                                    ("NaN in the final norm", FINAL, 0, 0),
                                    ("NaN in the LM head", HEAD, 100 * E + 1, 0)):
        d = os.path.join(work, "bad")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(T, d)
        poke(d, name, elem, kind)
        # eager; and one-token chunks: a graph-style step (captured at position 0, replayed after)
        for chunk in ("16", "1"):
            _, r = logits(CPU, d, "1,2,3", "--chunk", chunk)
            _, g = logits(SHIM, d, "1,2,3", "--device", "cuda", "--chunk", chunk)
            er, eg = last_error(r.stderr), last_error(g.stderr)
            check(r.returncode == 2 and g.returncode == 2 and er and eg == er,
                  f"{label} (--chunk {chunk}): exit {g.returncode}, {eg[13:150] or g.stderr[-200:]}"
                  + ("" if eg == er else f" | CPU: {er[13:150]}"))
finally:
    shutil.rmtree(work, ignore_errors=True)

print(f"{'all passed' if not bad else f'{bad} failed'}")
sys.exit(1 if bad else 0)
