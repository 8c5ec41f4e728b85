#!/usr/bin/env python3
"""Non-finite weights (issue 16, finding 9) and `mtok check`.

A NaN or Inf poked into the embedding, a QKV weight, a norm weight, the final norm or the LM head of a
glm4-tiny checkpoint must stop `mtok logits` and `mtok generate` with exit 2 and one line naming the
position and the layer (before the fix they ran to exit 0 and greedy sampling emitted id 0 forever).
`mtok check -m DIR` must pass a clean checkpoint (exit 0, "ok: N tensors, B bytes, all finite") in
every dtype and naming, and list every damaged tensor with its NaN and Inf counts and first bad
element (exit 2), also across the 1M-element blocks its threads split a tensor into. A config.json
stop id out of range exits 2 naming the key. Needs only the Python standard library."""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--mtok", required=True)
ap.add_argument("--src")
ap.add_argument("--build")
args = ap.parse_args()
MTOK = args.mtok
failures = []

ESIZE = {"BF16": 2, "F16": 2, "F32": 4}
# bit patterns: (NaN, +Inf, -Inf, negative NaN)
BITS = {"BF16": (0x7FC0, 0x7F80, 0xFF80, 0xFFC1), "F16": (0x7E00, 0x7C00, 0xFC00, 0xFE01),
        "F32": (0x7FC00000, 0x7F800000, 0xFF800000, 0xFFC00001)}


def run(*cmd):
    p = subprocess.run([MTOK, *cmd], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def shard_of(d, name):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        return os.path.join(d, json.load(open(idx))["weight_map"][name])
    return os.path.join(d, "model.safetensors")


def poke(d, name, elem, kind):
    """Writes NaN (kind 0), +Inf (1), -Inf (2) or a negative NaN (3) into element elem of tensor name."""
    p = shard_of(d, name)
    h, off = header(p)
    dt = h[name]["dtype"]
    at = off + h[name]["data_offsets"][0] + elem * ESIZE[dt]
    with open(p, "r+b") as f:
        f.seek(at)
        f.write(struct.pack("<I" if dt == "F32" else "<H", BITS[dt][kind]))


def ok(label, cond, detail):
    print(f"{'ok  ' if cond else 'FAIL'} {label}: {detail}")
    if not cond:
        failures.append(label)


def last_error(err):
    lines = [l for l in err.strip().splitlines() if l]
    errs = [l for l in lines if l.startswith("mtok: error: ")]
    return errs[0] if len(errs) == 1 and lines and errs[0] == lines[-1] else None


PROMPT = "hello world"


def expect_stop(label, d, want, gen_want=None):
    """logits on ids 1,2,3 and generate on PROMPT: exit 2, one error line holding every fragment (for
    generate: gen_want, by default want without its position, which differs with the prompt)."""
    rc, out, err = run("logits", "-m", d, "--tokens", "1,2,3", "--out", os.path.join(d, "out.npy"))
    e = last_error(err)
    ok(f"{label} (logits)", rc == 2 and e and all(w in e for w in want), f"rc={rc} {e or err.strip()[-300:]}")
    rc, out, err = run("generate", "-m", d, "-p", PROMPT, "-n", "4", "--no-prefix")
    e = last_error(err)
    gw = gen_want or want[1:] + ["position"]
    ok(f"{label} (generate)", rc == 2 and e and all(w in e for w in gw), f"rc={rc} {e or err.strip()[-300:]} "
       f"stdout={out[:60]!r}")


def expect_check(label, d, want_lines, n_bad):
    rc, out, err = run("check", "-m", d)
    e = last_error(err)
    lines = [l for l in out.splitlines() if l.strip()]
    good = rc == 2 and e and f"{n_bad} of " in e and len(lines) == n_bad and \
        all(any(all(w in l for w in ws) for l in lines) for ws in want_lines)
    ok(f"{label} (check)", good, f"rc={rc} out={lines} err={e or err.strip()[-200:]}")


tmp = tempfile.mkdtemp(prefix="mtok-nonfinite-")
try:
    base = os.path.join(tmp, "base")
    rc, out, err = run("synth", "--preset", "glm4-tiny", "--out", base, "-q")
    if rc != 0:
        print("synth failed:", err)
        sys.exit(1)
    rc, out, err = run("logits", "-m", base, "--tokens", "1,2,3", "--out", os.path.join(tmp, "ok.npy"))
    ok("clean checkpoint runs", rc == 0, err.strip()[-200:])
    rc, out, err = run("check", "-m", base)
    ok("clean checkpoint checks", rc == 0 and out.startswith("ok: 18 tensors,") and "all finite" in out,
       out.strip() + err.strip()[-200:])
    # progress on stderr: MB scanned of the total, ending at the total with the time taken
    rc, out, err = run("check", "-m", base, "--progress-interval", "0")
    prog = [l for l in err.splitlines() if l.startswith("check: ")]
    tot = re.match(r"check: (\d+)/(\d+) MB", prog[-1]) if prog else None
    ok("check --progress-interval 0: progress lines in MB", rc == 0 and tot is not None and
       tot.group(1) == tot.group(2) and "done in" in prog[-1], f"rc={rc} {prog[-2:]}")
    rc, out, err = run("check", "-m", base, "-q")
    ok("check -q: no progress", rc == 0 and "check: " not in err, err.strip()[-200:])

    def copy(label):
        d = os.path.join(tmp, label)
        shutil.copytree(base, d)
        return d

    E = 256  # glm4-tiny hidden size
    EMB = "transformer.embedding.word_embeddings.weight"
    QKV1 = "transformer.encoder.layers.1.self_attention.query_key_value.weight"
    NORM0 = "transformer.encoder.layers.0.post_attention_layernorm.weight"
    FINAL = "transformer.encoder.final_layernorm.weight"
    HEAD = "transformer.output_layer.weight"

    # the embedding row of token 2 only: positions 0 and 1 are fine, position 1 holds token 2
    rc, out, err = run("tokenize", "-m", base, "--text", PROMPT)
    prompt_ids = json.loads(out) if rc == 0 else [2, 2]
    d = copy("emb-nan")
    poke(d, EMB, 2 * E + 17, 0)
    poke(d, EMB, prompt_ids[1] * E + 17, 0)  # the second token of the generate prompt
    expect_stop("NaN in the embedding of token 2", d, ["position 1", "NaN", "embedding"],
                ["position 1", "NaN", "embedding"])
    rc, out, err = run("check", "-m", d)
    ok("NaN in the embedding (check)", rc == 2 and f"{EMB} (BF16, 262144 elements): " in out and
       f"first at element {min(2, prompt_ids[1]) * E + 17} (row {min(2, prompt_ids[1])}, column 17)" in out,
       out.strip() + " " + err.strip()[-200:])

    d = copy("emb-inf")
    poke(d, EMB, 3 * E, 2)
    poke(d, EMB, prompt_ids[0] * E, 2)
    expect_stop("-Inf in the embedding of token 3", d, ["position 2", "Inf", "embedding"],
                ["position 0", "Inf", "embedding"])

    # a Q row of layer 1 (row 5), a K row (256 + 9) and a V row (256 + 128 + 2): every position's query,
    # key or value, so position 0 already goes bad. Attention alone would hide a NaN query: its
    # softmax skips NaN scores and the head's output became zeros.
    for kind, row, what in ((0, 5, "query"), (1, 5, "query"), (0, 265, "key"), (2, 386, "value")):
        d = copy(f"qkv-{what}-{kind}")
        poke(d, QKV1, row * E + 3, kind)
        expect_stop(f"{'NaN' if kind == 0 else 'Inf'} in layer 1's QKV weight ({what} row {row})", d,
                    ["position 0", f"{what} projection of layer 1 of 2"])
    d = copy("qkv-inf")
    poke(d, QKV1, 5 * E + 3, 1)
    expect_check("Inf in a QKV weight", d, [[QKV1, "0 NaN, 1 Inf", "row 5, column 3"]], 1)

    d = copy("norm-nan")
    poke(d, NORM0, 7, 3)
    expect_stop("NaN in layer 0's MLP norm", d, ["position 0", "MLP block of layer 0"])
    expect_check("NaN in a norm weight", d, [[NORM0, "1 NaN, 0 Inf", "element 7"]], 1)

    d = copy("final-nan")
    poke(d, FINAL, 0, 0)
    expect_stop("NaN in the final norm", d, ["position 0", "final norm"])

    # one row of the LM head: only that logit goes bad, at every position
    d = copy("head-nan")
    poke(d, HEAD, 100 * E + 1, 0)
    expect_stop("NaN in the LM head", d, ["position 0", "output layer", "element 100"])
    poke(d, HEAD, 100 * E + 2, 1)
    poke(d, HEAD, 7 * E, 3)
    poke(d, EMB, 0, 1)
    expect_check("three bad values in the LM head, one in the embedding", d,
                 [[HEAD, "2 NaN, 1 Inf", "element 1792 (row 7, column 0)"], [EMB, "0 NaN, 1 Inf", "element 0"]], 2)

    # every dtype and the HF naming, clean and damaged; glm4-1m-mini's MLP weight [2816, 512] spans two
    # of the scan's 1M-element blocks, so both threads find values
    for preset, dtype, naming, name, elems in (
            ("glm4-tiny", "f16", "chatglm", QKV1, [5, 77]),
            ("glm4-tiny", "f32", "hf", "model.layers.0.self_attn.k_proj.weight", [0, 16383]),
            ("glm4-1m-mini", "bf16", "chatglm", "transformer.encoder.layers.2.mlp.dense_h_to_4h.weight",
             [1048576 + 9, 1048575, 1441791])):
        d = os.path.join(tmp, f"{preset}-{dtype}-{naming}")
        rc, out, err = run("synth", "--preset", preset, "--out", d, "--dtype", dtype, "--naming", naming,
                           "--shards", "2", "-q")
        if rc != 0:
            ok(f"synth {d}", False, err)
            continue
        rc, out, err = run("check", "-m", d, "--threads", "2")
        ok(f"clean {preset} {dtype} {naming} (check)", rc == 0 and "all finite" in out, out + err[-200:])
        kinds = [0, 1, 3][:len(elems)]
        for el, k in zip(elems, kinds):
            poke(d, name, el, k)
        n_nan = sum(1 for k in kinds if k in (0, 3))
        n_inf = len(kinds) - n_nan
        expect_check(f"{preset} {dtype} {naming}", d,
                     [[name, f"{n_nan} NaN, {n_inf} Inf", f"first at element {min(elems)} "]], 1)

    # structure problems are the loader's: one line, exit 2
    d = copy("wrong-shape")
    p = shard_of(d, NORM0)
    h, off = header(p)
    h[NORM0]["shape"] = [128, 2]
    raw = open(p, "rb").read()
    hb = json.dumps(h).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + raw[off:])
    rc, out, err = run("check", "-m", d)
    e = last_error(err)
    ok("wrong shape (check)", rc == 2 and e and NORM0 in e and "shape" in e, f"rc={rc} {e}")

    # a scalar stop id out of range: refused naming the key (it was truncated to int32)
    for bad in (-5, 2 ** 40):
        d = copy(f"eos{bad}")
        cfg = json.load(open(os.path.join(d, "config.json")))
        cfg["eos_token_id"] = bad
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        rc, out, err = run("check", "-m", d)
        e = last_error(err)
        ok(f"eos_token_id {bad}", rc == 2 and e and "eos_token_id" in e and str(bad) in e, f"rc={rc} {e}")
    d = copy("eps")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["layernorm_epsilon"] = 1e-50
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    rc, out, err = run("generate", "-m", d, "-p", "hi", "-n", "2")
    e = last_error(err)
    ok("layernorm_epsilon 1e-50", rc == 2 and e and "layernorm_epsilon" in e, f"rc={rc} {e}")

    rc, out, err = run("check")
    ok("check without -m is a usage error", rc == 1, err.strip())
finally:
    shutil.rmtree(tmp, ignore_errors=True)

if failures:
    print(f"{len(failures)} failure(s): {failures}")
    sys.exit(1)
print("all non-finite cases ok")
