#!/usr/bin/env python3
"""GLM-4V images on the commands people use (issue 23; docs/VISION.md §5): the chat template's image
placeholder, `mtok logits --image --messages`, `mtok generate --chat --image`, `mtok chat --image` and
/image, and their errors.

The checkpoint: a GLM-4V-shaped one in the real format (tests/test_vision_positions.py's tensors and
config.json layout), with the tokenizer of `mtok synth --preset glm4-tiny` (a trained BPE with GLM-4's
special tokens, <|begin_of_image|> and <|end_of_image|> among them) and config.json's boi_token_id /
eoi_token_id / pad_token_id set to that tokenizer's ids, so template and tower agree.
  (a) `tokenize --messages` with "image": true: the triple right after the user role line's "\\n" and
      before the content, token by token against the same conversation without the image;
  (b) `logits --image --messages` equals `image --prompt-ids` on the ids of (a) bit for bit (one library
      path), and equals tests/ref/glm4v_full_ref.py (float64) within 1e-2 of the largest logit, where the
      text-only logits of the same conversation are far (the image rows are really there);
  (c) `generate --chat --image` runs end to end, prints text, and is deterministic (greedy) and differs
      from the text-only run by exactly the image's rows in its computed-token count; the prompt's
      length it reports ("N in all") is the expanded rows, the template's ids - 3 + the image's rows
      (as the server's usage.prompt_tokens);
  (d) `chat --image` answers two turns (the second reuses the image rows: only its own tokens are
      computed), /image twice is refused, a bad /image file is reported and the chat goes on;
  (e) errors: --image on a checkpoint without vision_config, an unreadable image, no user message,
      two messages marked "image", "image" without --image, --image without --chat, ChatGLM3.
Needs numpy and Pillow (exit 77 without them); about 20 s."""
import json
import os
import re
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
sys.path.insert(0, os.path.join(a.src, "tests"))
import glm4v_full_ref as FR  # noqa: E402
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


def run(*argv, timeout=300, stdin=None):
    return subprocess.run([a.mtok, *argv], capture_output=True, text=True, timeout=timeout, input=stdin)


def ids_of(r):
    return json.loads(r.stdout) if r.returncode == 0 else None


# the vision tensors of test_vision_positions.py (that file runs its checks on import): reuse its
# function by reading its source up to the checkpoint writer
src = open(os.path.join(a.src, "tests", "test_vision_positions.py")).read()
ns = {"np": np, "R": __import__("glm4v_ref"), "math": __import__("math"), "MF": MF}
exec(src[src.index("VIS = dict("):src.index("def write_model")], ns)
VIS = ns["VIS"]

tmp = tempfile.mkdtemp(prefix="mtok_viscli_")
try:
    tiny = os.path.join(tmp, "tiny")
    r = run("synth", "--preset", "glm4-tiny", "--out", tiny, "-q")
    if r.returncode:
        print("synth glm4-tiny failed: " + r.stderr)
        sys.exit(1)
    tcfg = json.load(open(os.path.join(tiny, "config.json")))

    def special(name):
        got = ids_of(run("tokenize", "-m", tiny, "--special", "--text", name))
        assert got and len(got) == 1, name
        return got[0]

    BOI, EOI, PAD, USER, ASSIST = (special(t) for t in ("<|begin_of_image|>", "<|end_of_image|>", "<|endoftext|>",
                                                         "<|user|>", "<|assistant|>"))
    LM = dict(vocab=tcfg["padded_vocab_size"], hidden=96, layers=2, heads=4, head_dim=24, groups=2, ffn=160, seed=77)
    ns["LM"] = LM
    d = os.path.join(tmp, "v")
    os.makedirs(d)
    lm = [(k, "BF16", w) for k, w in MF.state_dict(MF.make_weights(LM), LM, "chatglm")]
    vis = [(k, "BF16", w) for k, w in ns["vision_tensors"](np.random.default_rng(5))]
    cfg = MF.config_json(LM, dict(naming="chatglm", rope_ratio=1, seq_length=2048))
    G = VIS["S"] // VIS["P"]
    ROWS = (G // 2) ** 2 + 2
    cfg.update({"boi_token_id": BOI, "eoi_token_id": EOI, "pad_token_id": PAD, "eos_token_id": tcfg["eos_token_id"],
                "vision_config": {"hidden_act": "gelu", "hidden_size": VIS["E"], "image_size": VIS["S"],
                                  "in_channels": 3, "intermediate_size": VIS["F"], "layer_norm_eps": 1e-06,
                                  "num_heads": VIS["heads"], "num_hidden_layers": VIS["layers"],
                                  "num_positions": G * G + 1, "patch_size": VIS["P"], "scaling_factor": 8}})
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    write_safetensors(os.path.join(d, "model.safetensors"), lm + vis, metadata={"format": "pt"})
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny, f), d)

    # ---- mtok info: the tower described; its parameter count is that of the tensors written ----
    r = run("info", "-m", d)
    m = re.search(r"vision tower \(GLM-4V\): (\d+) layers, width (\d+), (\d+) heads .*?image (\d+) x \d+ in "
                  r"patches of (\d+) .*?, (\d+) image tokens .*?; (\d+) parameters", r.stdout)
    n_params = sum(w.size for _, _, w in vis)
    check(r.returncode == 0 and m is not None and [int(v) for v in m.groups()[:6]] ==
          [VIS["layers"], VIS["E"], VIS["heads"], VIS["S"], VIS["P"], ROWS] and
          int(m.group(7)) == n_params, f"mtok info describes the vision tower "
          f"({n_params} parameters written): {m.group(0) if m else r.stdout[-300:]!r}")

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:60, 0:80].astype(np.float64)
    pix = np.stack([255 * x / 80, 255 * y / 60, 128 + 100 * np.sin(x / 4.0 + y / 7.0)], -1) + rng.normal(0, 15, (60, 80, 3))
    img = os.path.join(tmp, "p.png")
    Image.fromarray(np.clip(np.rint(pix), 0, 255).astype(np.uint8)).save(img)

    def msgs_file(name, msgs):
        p = os.path.join(tmp, name)
        json.dump(msgs, open(p, "w"))
        return p

    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is in the picture?"}]
    m_text = msgs_file("text.json", conv)
    m_img = msgs_file("img.json", [conv[0], dict(conv[1], image=True)])

    # ---- (a) the placeholder in the template, token by token ----
    t_text = ids_of(run("tokenize", "-m", d, "--messages", m_text, "--generation-prompt"))
    t_img = ids_of(run("tokenize", "-m", d, "--messages", m_img, "--generation-prompt"))
    nl = ids_of(run("tokenize", "-m", d, "--text", "\n"))
    ok = t_text is not None and t_img is not None and nl is not None and USER in (t_text or [])
    if ok:
        k = t_text.index(USER) + 1 + len(nl)  # after <|user|> and the role line's "\n"
        want = t_text[:k] + [BOI, PAD, EOI] + t_text[k:]
        ok = t_img == want and t_img[-1] == ASSIST
    check(ok, f"tokenize --messages: the image triple [{BOI}, {PAD}, {EOI}] right after <|user|>\\n, before the "
          f"content ({t_img})")
    # the image goes with the first user message when none is marked; the same ids
    lay = os.path.join(tmp, "lay.json")
    ids_path = os.path.join(tmp, "ids.json")
    json.dump(t_img or [], open(ids_path, "w"))

    # ---- (b) logits with an image ----
    out1, out2 = os.path.join(tmp, "a.npy"), os.path.join(tmp, "b.npy")
    r1 = run("logits", "-m", d, "--image", img, "--messages", m_text, "--generation-prompt", "--out", out1)
    r2 = run("image", "-m", d, "--image", img, "--prompt-ids", ids_path, "--logits-out", out2, "--layout-out", lay)
    ok = r1.returncode == 0 and r2.returncode == 0
    g1 = np.load(out1) if ok else None
    check(ok and g1.shape == (len(t_img) - 3 + ROWS, LM["vocab"]) and np.array_equal(g1, np.load(out2)),
          f"logits --image --messages (image on the first user message) equals image --prompt-ids bit for bit, "
          f"shape {None if g1 is None else g1.shape}" + ("" if ok else ": " + (r1.stderr + r2.stderr).strip()[-300:]))
    r3 = run("logits", "-m", d, "--image", img, "--messages", m_img, "--generation-prompt", "--out", out2)
    check(r3.returncode == 0 and ok and np.array_equal(np.load(out2), g1),
          "a message marked \"image\": true gives the same logits" + ("" if r3.returncode == 0 else ": " + r3.stderr))
    if ok:
        ref, full, pos = FR.image_logits(d, t_img, img)
        e = float(np.max(np.abs(g1 - ref)) / np.max(np.abs(ref)))
        rt = run("logits", "-m", d, "--messages", m_text, "--generation-prompt", "--out", out2)
        gt = np.load(out2) if rt.returncode == 0 else None
        # the text-only run's last row (the generation prompt) against the image run's last row
        far = float(np.max(np.abs(gt[-1] - ref[-1])) / np.max(np.abs(ref))) if gt is not None else 0
        check(e <= 1e-2 and far > 5e-2, f"logits --image vs the float64 reference: {e:.2e} of max |ref| (<= 1e-2); "
              f"the text-only conversation's last row is {far:.3f} away")
        got_lay = json.load(open(lay))
        b = t_img.index(BOI)
        check(got_lay["image_first"] == b and got_lay["positions"][b:b + ROWS] == [b] + [b + 1] * (ROWS - 2) + [b + 2]
              and got_lay["positions"][b + ROWS] == b + 3, "the conversation's layout: boi at p, patches at p + 1, "
              "eoi at p + 2, text on at p + 3")

    # ---- (c) generate --chat --image ----
    gen = ["generate", "-m", d, "--chat", "-p", "What is in the picture?", "-n", "8", "--ignore-eos"]
    ra, rb = run(*gen, "--image", img), run(*gen, "--image", img)
    rt = run(*gen)
    comp = re.search(r"prompt (\d+) tokens", ra.stderr)
    compt = re.search(r"prompt (\d+) tokens", rt.stderr)
    check(ra.returncode == 0 and ra.stdout.strip() != "" and ra.stdout == rb.stdout and comp and compt and
          int(comp.group(1)) == int(compt.group(1)) + ROWS,
          f"generate --chat --image: {ra.stdout.strip()[:60]!r}, prompt {comp and comp.group(1)} rows computed "
          f"(text only {compt and compt.group(1)}, + the {ROWS} image rows)" + ("" if ra.returncode == 0 else ": " + ra.stderr))
    # the prompt's length is the rows the model ran, the image's in place of its triple (what the
    # server's usage.prompt_tokens counts), not the template's ids
    m_gen = msgs_file("gen.json", [{"role": "user", "content": "What is in the picture?", "image": True}])
    t_gen = ids_of(run("tokenize", "-m", d, "--messages", m_gen, "--generation-prompt")) or []
    alls = [re.search(r"more cached, (\d+) in all", r.stderr) for r in (ra, rt)]
    got = [int(m.group(1)) if m else None for m in alls]
    check(len(t_gen) > 3 and got == [len(t_gen) - 3 + ROWS, len(t_gen) - 3],
          f"generate --chat --image: the prompt's length {got[0]} == {len(t_gen)} ids - 3 + {ROWS} image rows "
          f"(text only {got[1]} == {len(t_gen) - 3})")

    # ---- (d) chat --image: two turns, /image refused the second time ----
    rc = run("chat", "-m", d, "--image", img, "-n", "4", "--ignore-eos",
             stdin="What is it?\n/image " + img + "\nAnd the colour?\n/exit\n")
    turns = re.findall(r"prompt (\d+) tokens .*?, (\d+) more cached, (\d+) in all", rc.stderr)
    check(rc.returncode == 0 and len(turns) == 2 and int(turns[1][1]) > ROWS and int(turns[1][0]) < 20 and
          all(int(t[0]) + int(t[1]) == int(t[2]) for t in turns) and "one image per conversation" in rc.stderr,
          f"chat --image: two turns {turns} (computed, cached, in all: the rows held), the second reuses the "
          f"image rows; a second /image is refused" + ("" if rc.returncode == 0 else ": " + rc.stderr[-300:]))
    rc = run("chat", "-m", d, "-n", "2", "--ignore-eos",
             stdin="/image " + os.path.join(tmp, "nope.png") + "\n/image " + img + "\nHi\n/exit\n")
    turns = re.findall(r"prompt (\d+) tokens", rc.stderr)
    check(rc.returncode == 0 and "nope.png" in rc.stderr and len(turns) == 1 and int(turns[0]) > ROWS,
          f"chat: a missing /image file is reported and the chat goes on; the next /image is used ({turns})")

    # ---- (e) errors ----
    junk = os.path.join(tmp, "junk.png")
    open(junk, "wb").write(b"not an image at all")
    none_user = msgs_file("sys.json", [conv[0]])
    two = msgs_file("two.json", [dict(conv[1], image=True), {"role": "assistant", "content": "ok"},
                                 dict(conv[1], image=True)])
    cases = [
        ("--image on a checkpoint without vision_config",
         ["logits", "-m", tiny, "--image", img, "--messages", m_text, "--out", out2], "no vision_config"),
        ("an unreadable image", ["logits", "-m", d, "--image", junk, "--messages", m_text, "--out", out2], "junk.png"),
        ("a missing image", ["logits", "-m", d, "--image", junk + "x", "--messages", m_text, "--out", out2], "junk.pngx"),
        ("no user message", ["logits", "-m", d, "--image", img, "--messages", none_user, "--out", out2],
         "needs a user message"),
        ("two images", ["logits", "-m", d, "--image", img, "--messages", two, "--out", out2], "one image per conversation"),
        ("\"image\" without --image", ["logits", "-m", d, "--messages", m_img, "--out", out2], "give --image"),
        ("--image without --messages", ["logits", "-m", d, "--image", img, "--tokens", "1,2", "--out", out2],
         "go with --messages"),
        ("generate --image without --chat", ["generate", "-m", d, "--image", img, "-p", "x"], "needs --chat"),
        ("generate --chat --image without vision", ["generate", "-m", tiny, "--chat", "--image", img, "-p", "x"],
         "no vision_config"),
        ("tokenize: two images", ["tokenize", "-m", d, "--messages", two], "one image per conversation"),
        ("--vision-device bogus", ["logits", "-m", d, "--image", img, "--messages", m_text, "--out", out2,
                                   "--vision-device", "gpu0"], "--vision-device gpu0: expected cpu, cuda"),
    ]
    for name, argv, words in cases:
        r = run(*argv)
        check(r.returncode != 0 and words in r.stderr, f"{name}: exit {r.returncode}, {r.stderr.strip()[-160:]!r}")
    # a tower whose output holds a NaN (here its learned boi vector) is stopped before the language
    # model sees it, naming the row (core/vision.c checks what the backend's ops produced)
    dn = os.path.join(tmp, "vnan")
    os.makedirs(dn)
    vis_nan = [(k, t, np.full_like(w, np.nan) if k.endswith(".boi") else w) for k, t, w in vis]
    write_safetensors(os.path.join(dn, "model.safetensors"), lm + vis_nan, metadata={"format": "pt"})
    for f in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(d, f), dn)
    r = run("logits", "-m", dn, "--image", img, "--messages", m_text, "--out", out2)
    check(r.returncode == 2 and "vision tower: its output row 0 of" in r.stderr and "NaN" in r.stderr,
          f"a NaN in the tower's output: exit {r.returncode}, {r.stderr.strip()[-160:]!r}")
    # ---- mtok synth --preset glm4v-tiny: the real format, end to end ----
    v4 = os.path.join(tmp, "v4")
    r = run("synth", "--preset", "glm4v-tiny", "--out", v4, "-q")
    vcfg = json.load(open(os.path.join(v4, "config.json"))) if r.returncode == 0 else {}
    ok = r.returncode == 0 and vcfg.get("boi_token_id") == BOI and vcfg.get("eoi_token_id") == EOI and \
        vcfg.get("pad_token_id") == PAD
    check(ok, f"synth glm4v-tiny: boi/eoi/pad in config.json are its tokenizer's ({vcfg.get('boi_token_id')}, "
          f"{vcfg.get('eoi_token_id')}, {vcfg.get('pad_token_id')})" + ("" if r.returncode == 0 else ": " + r.stderr))
    if ok:
        t4 = ids_of(run("tokenize", "-m", v4, "--messages", m_img, "--generation-prompt"))
        r = run("logits", "-m", v4, "--image", img, "--messages", m_img, "--generation-prompt", "--out", out2)
        if r.returncode == 0 and t4:
            g4 = np.load(out2)
            ref4, _, _ = FR.image_logits(v4, t4, img)  # reads the tensors by their real names and shapes
            e = float(np.max(np.abs(g4 - ref4)) / np.max(np.abs(ref4))) if g4.shape == ref4.shape else float("inf")
            check(e <= 1e-2, f"synth glm4v-tiny: logits --image {g4.shape} vs the float64 reference: {e:.2e}")
        else:
            check(False, "synth glm4v-tiny: logits --image: " + r.stderr[-300:])
        r = run("generate", "-m", v4, "--chat", "--image", img, "-p", "Describe it.", "-n", "6", "--ignore-eos")
        check(r.returncode == 0 and r.stdout.strip() != "", f"synth glm4v-tiny: generate --chat --image answers "
              f"{r.stdout.strip()[:40]!r}" + ("" if r.returncode == 0 else ": " + r.stderr[-200:]))
        r = run("synth", "--preset", "glm4v-tiny", "--naming", "hf", "--out", os.path.join(tmp, "v4hf"))
        check(r.returncode != 0 and "chatglm" in r.stderr, f"synth glm4v-tiny --naming hf refused: {r.stderr.strip()!r}")

    g3 = os.path.join(tmp, "g3")
    r = run("synth", "--preset", "chatglm3-tiny", "--out", g3, "-q")
    if r.returncode == 0:
        r = run("tokenize", "-m", g3, "--messages", m_img)
        check(r.returncode != 0 and "ChatGLM3 has no vision" in r.stderr, f"ChatGLM3 with an image: {r.stderr.strip()!r}")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print(f"{passed} passed, {len(bad)} failed")
sys.exit(1 if bad else 0)
