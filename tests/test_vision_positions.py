#!/usr/bin/env python3
"""GLM-4V's image-token layout in the language model (issue 23; docs/VISION.md "Prompt layout"):
the boi / <|endoftext|> / eoi triple becomes the tower's rows, boi at p, every patch row at p + 1,
eoi at p + 2 and the text after at p + 3, ...; the rows are spliced over the token embeddings and
the causal mask stays over the rows. Through `mtok image -m DIR --prompt-ids IDS.json`:
  (a) the expanded ids and positions token by token (--layout-out), against positions spelled out
      here from the rule above and against tests/ref/glm4v_full_ref.py's expand;
  (b) the logits of every expanded row of a small GLM-4V-shaped checkpoint (bf16, the real tensor
      names) equal tests/ref/glm4v_full_ref.py (tower + spliced model in float64); also with the
      prefill in chunks of 5 rows (the image's rows cross chunks) and with the text after the image
      run by plain mtok_forward (--split: positions continue from the last one); the same reference
      with sequential positions is far (the comparison catches the layout one server uses);
  (c) bad prompts (two images, broken triples, a lone eoi) fail with exit 2 and the reason;
  (d) a text-only prompt through mtok_forward_ex gives logits bit-identical to `mtok logits`.
The checkpoint writer follows tests/test_vision.py's (that file runs its checks on import, so its
functions cannot be imported). Needs numpy and Pillow (exit 77 without them); about 10 s."""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

from harness import args, numpy_or_skip

np = numpy_or_skip()
try:
    from PIL import Image
except ImportError:
    print("Pillow missing: skipped")
    sys.exit(77)

a = args()
sys.path.insert(0, os.path.join(a.src, "tests", "ref"))
import glm4v_full_ref as FR  # noqa: E402
import glm4v_ref as R  # noqa: E402
import make_fixtures as MF  # noqa: E402
from safetensors_np import write_safetensors  # noqa: E402

bad = []
passed = 0


def check(ok, what):
    global passed
    print(("ok   " if ok else "FAIL ") + what)
    if ok:
        passed += 1
    else:
        bad.append(what)


# 2 language layers with RoPE over half of each head; vision grid 10 -> 5 x 5 = 25 patch rows + boi + eoi
LM = dict(vocab=512, hidden=96, layers=2, heads=4, head_dim=24, groups=2, ffn=160, seed=77)
VIS = dict(E=32, layers=2, heads=2, F=64, P=7, S=70)
BOI, EOI, PAD = 509, 510, MF.PAD_ID
ROWS = (VIS["S"] // VIS["P"] // 2) ** 2 + 2


def vision_tensors(rng):
    E, F, P, L, LF, G = VIS["E"], VIS["F"], VIS["P"], LM["hidden"], LM["ffn"], VIS["S"] // VIS["P"]

    def n(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def gain(k):
        return (1.0 + 0.1 * rng.standard_normal(k)).astype(np.float32)

    p = R.PFX
    t = [(p + "patch_embedding.proj.weight", n((E, 3, P, P), 1 / math.sqrt(3 * P * P))),
         (p + "patch_embedding.proj.bias", n((E,), 0.3)), (p + "patch_embedding.cls_embedding", n((1, E), 1.0)),
         (p + "patch_embedding.position_embedding.weight", n((G * G + 1, E), 1.0))]
    for i in range(VIS["layers"]):
        q = p + "transformer.layers.%d." % i
        t += [(q + "input_layernorm.weight", gain(E)), (q + "input_layernorm.bias", n((E,), 0.1)),
              (q + "attention.query_key_value.weight", n((3 * E, E), 1 / math.sqrt(E))),
              (q + "attention.query_key_value.bias", n((3 * E,), 0.5)),
              (q + "attention.dense.weight", n((E, E), 1 / math.sqrt(E))), (q + "attention.dense.bias", n((E,), 0.2)),
              (q + "post_attention_layernorm.weight", gain(E)), (q + "post_attention_layernorm.bias", n((E,), 0.1)),
              (q + "mlp.fc1.weight", n((F, E), 1 / math.sqrt(E))), (q + "mlp.fc1.bias", n((F,), 0.3)),
              (q + "mlp.fc2.weight", n((E, F), 1 / math.sqrt(F))), (q + "mlp.fc2.bias", n((E,), 0.2))]
    # the rows the language model sees are divided by scaling_factor 8: project them large enough
    # that the image moves the logits
    t += [(p + "conv.weight", n((L, E, 2, 2), 1 / math.sqrt(4 * E))), (p + "conv.bias", n((L,), 0.3)),
          (p + "linear_proj.linear_proj.weight", n((L, L), 1 / math.sqrt(L))),
          (p + "linear_proj.norm1.weight", gain(L)), (p + "linear_proj.norm1.bias", n((L,), 0.1)),
          (p + "linear_proj.gate_proj.weight", n((LF, L), 1 / math.sqrt(L))),
          (p + "linear_proj.dense_h_to_4h.weight", n((LF, L), 1 / math.sqrt(L))),
          (p + "linear_proj.dense_4h_to_h.weight", n((L, LF), 8 / math.sqrt(LF))),
          (p + "boi", n((1, 1, L), 8.0)), (p + "eoi", n((1, 1, L), 8.0))]
    return t


def write_model(d):
    os.makedirs(d)
    lm = [(k, "BF16", w) for k, w in MF.state_dict(MF.make_weights(LM), LM, "chatglm")]
    vis = [(k, "BF16", w) for k, w in vision_tensors(np.random.default_rng(5))]
    cfg = MF.config_json(LM, dict(naming="chatglm", rope_ratio=1, seq_length=2048))
    G = VIS["S"] // VIS["P"]
    cfg.update({"boi_token_id": BOI, "eoi_token_id": EOI, "vision_config": {
        "dropout_prob": 0.0, "hidden_act": "gelu", "hidden_size": VIS["E"], "image_size": VIS["S"], "in_channels": 3,
        "intermediate_size": VIS["F"], "layer_norm_eps": 1e-06, "num_heads": VIS["heads"],
        "num_hidden_layers": VIS["layers"], "num_positions": G * G + 1, "patch_size": VIS["P"], "scaling_factor": 8}})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_safetensors(os.path.join(d, "model.safetensors"), lm + vis, metadata={"format": "pt"})


def run(*argv, timeout=300):
    return subprocess.run([a.mtok, *argv], capture_output=True, text=True, timeout=timeout)


def image_run(d, ids, *extra, image=None):
    fn = os.path.join(tmp, "ids.json")
    with open(fn, "w") as f:
        json.dump([int(x) for x in ids], f)
    argv = ["image", "-m", d, "--prompt-ids", fn, *extra]
    return run(*(argv + (["--image", image] if image else [])))


def rel(x, y):
    return float(np.max(np.abs(x - y)) / np.max(np.abs(y)))


tmp = tempfile.mkdtemp(prefix="mtok_vispos_")
try:
    d = os.path.join(tmp, "m")
    write_model(d)
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:90, 0:120].astype(np.float64)
    pix = np.stack([255 * x / 120, 255 * y / 90, 128 + 100 * np.sin(x / 5.0 + y / 9.0)], -1)
    pix += rng.normal(0, 20, pix.shape)
    img = os.path.join(tmp, "p.png")
    Image.fromarray(np.clip(np.rint(pix), 0, 255).astype(np.uint8)).save(img)

    # ---- (a) the layout, token by token ----
    T = [int(v) for v in rng.integers(1, 400, 12)]
    prompts = {"middle": T[:4] + [BOI, PAD, EOI] + T[4:9], "first": [BOI, PAD, EOI] + T[:3],
               "last": T[:5] + [BOI, PAD, EOI], "none": T[:6]}
    for name, ids in prompts.items():
        lay = os.path.join(tmp, "lay.json")
        r = image_run(d, ids, "--layout-out", lay, image=img if BOI in ids else None)
        if r.returncode:
            check(False, f"layout {name}: exit {r.returncode}: {r.stderr.strip()}")
            continue
        got = json.load(open(lay))
        # spelled out from the rule: text before keeps 0..b-1, boi b, patches b+1, eoi b+2, then b+3..
        if BOI in ids:
            b = ids.index(BOI)
            want_pos = list(range(b)) + [b] + [b + 1] * (ROWS - 2) + [b + 2] + list(range(b + 3, len(ids)))
            want_ids = ids[:b] + [BOI] + [PAD] * (ROWS - 2) + [EOI] + ids[b + 3:]
            want_first, want_rows = b, ROWS
        else:
            want_pos, want_ids, want_first, want_rows = list(range(len(ids))), ids, 0, 0
        ok = (got["ids"] == want_ids and got["positions"] == want_pos and got["image_first"] == want_first
              and got["image_rows"] == want_rows)
        rids, rpos, _ = FR.expand(ids, BOI, PAD, EOI, ROWS)
        check(ok and rids == got["ids"] and rpos == got["positions"],
              f"layout {name}: {len(got['ids'])} rows, positions {got['positions'][:8]}... "
              f"(image rows {got['image_first']}+{got['image_rows']})")

    # ---- (b) logits against the reference ----
    ids = prompts["middle"]
    ref, full, pos = FR.image_logits(d, ids, img)
    seq, _, _ = FR.image_logits(d, ids, img, sequential=True)
    nofix = FR.forward(FR.glm_ref.load_model(d), full, pos)  # the placeholder ids' own embeddings
    b = ids.index(BOI)
    after = slice(b + ROWS, len(full))  # the rows after the image: their positions are shifted
    # bf16 weights on the default kernels (AVX-512 BF16 rounds the activations: test_vision.py) give
    # ~1e-3 of the largest logit against the float64 reference; the controls move the rows after the
    # image by 0.1 or more (printed)
    lim = 1e-2
    far_seq, far_emb = rel(seq[after], ref[after]), rel(nofix[after], ref[after])
    print(f"     controls: sequential positions {far_seq:.3f}, no image rows {far_emb:.3f} (relative to max |ref|)")
    check(far_seq > 5 * lim and far_emb > 5 * lim, f"the controls are far from the reference "
          f"(sequential {far_seq:.3f}, no image rows {far_emb:.3f} > {5 * lim})")
    runs = {"one call": [], "chunks of 5": ["--chunk", "5"],
            "--split (text by mtok_forward)": ["--split", str(b + ROWS + 2)], "--no-simd": ["--no-simd"]}
    out = os.path.join(tmp, "l.npy")
    got = {}
    for name, extra in runs.items():
        r = image_run(d, ids, "--logits-out", out, *extra, image=img)
        if r.returncode:
            check(False, f"logits {name}: exit {r.returncode}: {r.stderr.strip()}")
            continue
        g = np.load(out)
        got[name] = g
        e = rel(g, ref) if g.shape == ref.shape else float("inf")
        check(g.shape == (len(full), LM["vocab"]) and e <= lim and
              (np.argmax(g[after], -1) == np.argmax(ref[after], -1)).mean() >= 0.8,
              f"logits {name}: shape {g.shape}, max |diff| {e:.2e} of max |ref| (<= {lim})")
    if "one call" in got and "--split (text by mtok_forward)" in got:
        check(np.array_equal(got["one call"][:b + ROWS + 2], got["--split (text by mtok_forward)"][:b + ROWS + 2]),
              "--split: the rows of the first call are bit-identical to one call's")

    # ---- (c) bad prompts ----
    for name, bids, words in [("two images", T[:2] + [BOI, PAD, EOI] + T[2:4] + [BOI, PAD, EOI], ["one image"]),
                              ("boi without its pad", T[:2] + [BOI, T[3], EOI], ["begin_of_image", "token 2"]),
                              ("boi at the end", T[:2] + [BOI, PAD], ["begin_of_image", "token 2"]),
                              ("a lone eoi", T[:2] + [EOI] + T[2:4], ["end_of_image", "token 2"])]:
        r = image_run(d, bids, "--logits-out", out, image=img)
        check(r.returncode == 2 and all(w in r.stderr for w in words),
              f"{name}: exit {r.returncode}, {r.stderr.strip()!r}")
    r = image_run(d, prompts["none"], "--logits-out", out, image=img)
    check(r.returncode != 0 and "no <|begin_of_image|>" in r.stderr,
          f"--image without a placeholder: {r.stderr.strip()!r}")
    r = image_run(d, prompts["middle"], "--logits-out", out)
    check(r.returncode != 0 and "--image" in r.stderr, f"a placeholder without --image: {r.stderr.strip()!r}")

    # ---- (d) text only: bit-identical to mtok logits ----
    text = T + T[:5]
    r1 = image_run(d, text, "--logits-out", out)
    r2 = run("logits", "-m", d, "--tokens", ",".join(map(str, text)), "--out", os.path.join(tmp, "t.npy"))
    ok = r1.returncode == 0 and r2.returncode == 0
    check(ok and np.array_equal(np.load(out), np.load(os.path.join(tmp, "t.npy"))),
          "text only: mtok_forward_ex with explicit identity positions equals mtok logits bit for bit"
          + ("" if ok else f": {(r1.stderr + r2.stderr).strip()[-200:]}"))
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print(f"{passed} passed, {len(bad)} failed")
sys.exit(1 if bad else 0)
