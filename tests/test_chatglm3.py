#!/usr/bin/env python3
"""ChatGLM3-shaped checkpoints end to end (issue 22): `mtok synth --preset chatglm3-tiny` and
`chatglm3-32k-tiny` (f16 weights, a SentencePiece tokenizer.model, no rope_ratio / rope_ratio 50) must
  - load with the config values of ChatGLM3 (RoPE base 10000 x rope_ratio, 2 KV groups from
    multi_query_group_num, context from seq_length, stop id 2) and report the tokenizer kind;
  - tokenize as the `sentencepiece` package does with the same model file (when it is installed);
  - give logits equal to tests/ref/glm_ref.py (numpy) within bf16-KV rounding, and the test can tell: a
    reference run with the RoPE base of a config whose rope_ratio is ignored is rejected;
  - ignore the generic keys of a transformers-style ChatGLM3 config (num_key_value_heads 32, rope_theta
    10000, max_position_embeddings 2048): same values, same logits;
  - generate and chat (the chat prompt is [gMASK] sop <|user|> ... <|assistant|>, counted as tokenize does)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from harness import args, numpy_or_skip

a = args()
np = numpy_or_skip()
sys.path.insert(0, os.path.join(a.src, "tests", "ref"))
import glm_ref  # noqa: E402

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def last(p):
    lines = p.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def run(*argv, timeout=120):
    return subprocess.run([a.mtok, *argv], capture_output=True, text=True, timeout=timeout)


TEXT = "The quick brown fox, 你好！ Code: for (i = 0; i < n; i++) {}\n  two spaces and a tab\there."
tmp = tempfile.mkdtemp(prefix="mtok-glm3-")
try:
    for preset, base, ctx in [("chatglm3-tiny", 10000.0, 8192), ("chatglm3-32k-tiny", 500000.0, 32768)]:
        d = os.path.join(tmp, preset)
        p = run("synth", "--preset", preset, "--dtype", "f16", "--out", d)
        check(p.returncode == 0, f"synth {preset}: {last(p)}")
        if p.returncode:
            continue
        cfg = json.load(open(os.path.join(d, "config.json")))
        check(("rope_ratio" in cfg) == (base != 10000.0) and cfg["eos_token_id"] == 2 and cfg["torch_dtype"] == "float16",
              f"{preset} config: rope_ratio {cfg.get('rope_ratio')}, eos {cfg['eos_token_id']}, {cfg['torch_dtype']}")
        with open(os.path.join(d, "tokenizer.model"), "rb") as f:
            tok_bytes = f.read()
        check(tok_bytes[:1] == b"\n", f"{preset}: tokenizer.model is a serialized protobuf (SentencePiece)")
        # deterministic, and the hf naming writes the same tokenizer and ChatGLM3's values
        d2 = os.path.join(tmp, preset + "-again")
        p = run("synth", "--preset", preset, "--dtype", "f16", "--naming", "hf", "--out", d2)
        with open(os.path.join(d2, "tokenizer.model"), "rb") as f:
            same = f.read() == tok_bytes
        hf = json.load(open(os.path.join(d2, "config.json")))
        check(p.returncode == 0 and same and hf["rope_theta"] == base and hf["eos_token_id"] == 2 and
              hf["rms_norm_eps"] == 1e-5, f"{preset}: a second synth (hf naming) writes the same tokenizer.model, "
                                          f"rope_theta {hf.get('rope_theta')}, eps {hf.get('rms_norm_eps')}")
        info = run("info", "-m", d).stdout
        check(f"base {base:g} " in info and f"context {ctx}" in info and "kv groups 2" in info and
              "stop ids: 2\n" in info and "ids (sentencepiece)" in info and "F16" in info,
              f"{preset} info: base, context, KV groups, stop ids, tokenizer kind, F16")

        # tokenization against the sentencepiece package
        p = run("tokenize", "-m", d, "--text", TEXT)
        ids = json.loads(p.stdout) if p.returncode == 0 else []
        check(len(ids) > 10, f"{preset} tokenize: {len(ids)} ids")
        try:
            import sentencepiece
            sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
            check(ids == sp.encode(TEXT), f"{preset}: ids equal sentencepiece's")
            n_pieces = sp.get_piece_size()
        except ImportError:
            print("sentencepiece not installed: the package comparison is skipped")
            n_pieces = None

        # logits against the numpy reference; the prompt as mtok generate builds it ([gMASK] sop + text)
        gmask = json.loads(run("tokenize", "-m", d, "--special", "--text", "[gMASK]").stdout)
        sop = json.loads(run("tokenize", "-m", d, "--special", "--text", "<|user|>").stdout)  # a role id, as a check
        check(len(gmask) == 1 and (n_pieces is None or gmask[0] == n_pieces + 1) and len(sop) == 1,
              f"{preset}: [gMASK] is one id right after the pieces ({gmask})")
        prompt = gmask + ids
        out = os.path.join(tmp, preset + ".npy")
        p = run("logits", "-m", d, "--tokens", ",".join(map(str, prompt)), "--out", out)
        check(p.returncode == 0, f"{preset} logits: {last(p)}")
        if p.returncode:
            continue
        got = np.load(out)
        model = glm_ref.load_model(d)
        check(model.cfg.rope_base == base and model.cfg.n_kv == 2,
              f"{preset}: reference config {model.cfg}")
        ref = glm_ref.forward(model, prompt, kv_bf16=True)
        c = glm_ref.compare_logits(got, ref, argmax_margin=2e-2)
        check(c["cosine"].min() >= 0.9999 and len(c["argmax_bad"]) == 0,
              f"{preset}: logits vs glm_ref over {len(prompt)} positions: min cosine {c['cosine'].min():.6f}, "
              f"{len(c['argmax_bad'])} argmax differences of {len(c['argmax_checked'])} checked")
        if base != 10000.0:
            wrong = glm_ref.forward(model, prompt, kv_bf16=True, rope_base=10000.0)
            cw = glm_ref.compare_logits(got, wrong)
            check(cw["cosine"].min() < 0.999, f"{preset}: a reference ignoring rope_ratio is rejected "
                                              f"(min cosine {cw['cosine'].min():.6f})")
            # a transformers-style config: generic keys that must not win
            t = os.path.join(tmp, preset + "-hfkeys")
            shutil.copytree(d, t)
            cfg.update({"architectures": ["ChatGlmForCausalLM"], "num_key_value_heads": 32, "rope_theta": 10000.0,
                        "max_position_embeddings": 2048, "partial_rotary_factor": 0.5, "attention_bias": False})
            json.dump(cfg, open(os.path.join(t, "config.json"), "w"), indent=2)
            info2 = run("info", "-m", t).stdout
            check(f"base {base:g} " in info2 and "kv groups 2" in info2 and f"context {ctx}" in info2,
                  f"{preset} with transformers-style keys: still base {base:g}, 2 KV groups, context {ctx}")
            out2 = os.path.join(tmp, preset + "-hf.npy")
            p = run("logits", "-m", t, "--tokens", ",".join(map(str, prompt)), "--out", out2)
            check(p.returncode == 0 and np.array_equal(np.load(out2), got),
                  f"{preset} with transformers-style keys: identical logits")

        # generate and chat run; the chat prompt has the length tokenize --messages gives it
        p = run("generate", "-m", d, "-p", "Hello", "-n", "4", "--temp", "0")
        check(p.returncode == 0, f"{preset} generate: rc {p.returncode} {last(p)}")
        mf = os.path.join(tmp, "m.json")
        json.dump([{"role": "user", "content": "你好"}], open(mf, "w"), ensure_ascii=False)
        want = json.loads(run("tokenize", "-m", d, "--messages", mf, "--generation-prompt").stdout)
        p = run("generate", "-m", d, "--chat", "-p", "你好", "-n", "4", "--temp", "0")
        check(p.returncode == 0 and f"prompt {len(want)} tokens" in p.stderr,
              f"{preset} generate --chat: prompt of {len(want)} tokens ({last(p)})")
        p = subprocess.run([a.mtok, "chat", "-m", d, "-n", "3", "--temp", "0"], input="hi\n", capture_output=True,
                           text=True, timeout=120)
        check(p.returncode == 0, f"{preset} chat: rc {p.returncode} {last(p)}")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

if failures:
    print(f"{len(failures)} failed")
    sys.exit(1)
