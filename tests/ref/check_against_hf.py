#!/usr/bin/env python3
"""Check the numpy reference (glm_ref.py) against Hugging Face transformers' GlmForCausalLM.

Needs torch + transformers (NOT needed in CI); run it once whenever glm_ref.py or the fixtures change:

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers numpy
    /tmp/hfvenv/bin/python tests/ref/check_against_hf.py [--write-golden]

What it does (all in float32 on CPU, eager attention, no KV cache):
  1. random tiny GlmConfig models, saved by HF's own save_pretrained (F32 single file, BF16 sharded,
     F16) and read back by glm_ref -- once with HF's default init (std 0.02: near-uniform attention)
     and once re-initialised per docs/DESIGN.md §7 (sharp attention, where RoPE/bias bugs show);
  2. the committed fixtures g2-hf-sharded and g4-hf-wrongtheta loaded with from_pretrained (the latter
     with rope_theta corrected to 1e8), weights upcast to float32;
  3. logits of the 520 tokens of tests/data/models/tokens.txt: per-position cosine, max abs diff,
     argmax agreement, HF vs glm_ref (float64).
With --write-golden it writes tests/data/models/hf_golden_<fixture>.npz for the fixtures of step 2:
  positions (every 8th), logits (float16 [n_pos, vocab], HF), top5 (int16 [520, 5], HF), rope_base,
  versions -- which tests/test_logits_ref.py uses to re-check glm_ref against HF without torch.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import GlmConfig, GlmForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import glm_ref  # noqa: E402

MODELS_DIR = os.path.normpath(os.path.join(HERE, "..", "data", "models"))
GOLDEN_EVERY = 8


def hf_logits(model, tokens):
    with torch.no_grad():
        ids = torch.tensor([tokens], dtype=torch.long)
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float().numpy().astype(np.float64)


def summarize(tag, hf, ref):
    r = glm_ref.compare_logits(hf, ref)
    s = {
        "case": tag,
        "n_pos": int(hf.shape[0]),
        "vocab": int(hf.shape[1]),
        "min_cosine": float(r["cosine"].min()),
        "max_1_minus_cos": float((1 - r["cosine"]).max()),
        "max_abs_diff": r["max_abs"],
        "max_rel_err": float(r["rel_err"].max()),
        "logit_absmax": float(np.abs(ref).max()),
        "argmax_agree": float(np.mean(np.argmax(hf, 1) == np.argmax(ref, 1))),
    }
    print("%-34s min cos %.9f (1-cos %.1e)  max|diff| %.2e (|logit|max %.2f)  max rel %.2e  argmax %.4f"
          % (tag, s["min_cosine"], s["max_1_minus_cos"], s["max_abs_diff"], s["logit_absmax"],
             s["max_rel_err"], s["argmax_agree"]))
    return s


def sharpen(model, seed):
    """Re-initialise per docs/DESIGN.md §7 so attention is sharp and position-dependent."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    E = cfg.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "q_proj" in name or "k_proj" in name:
                p.copy_(2.0 / E ** 0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def random_config(rope_theta):
    return GlmConfig(vocab_size=512, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                     num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                     max_position_embeddings=4096, rms_norm_eps=1.5625e-7,
                     rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                                      "partial_rotary_factor": 0.5},
                     attention_bias=True, tie_word_embeddings=False, pad_token_id=500,
                     eos_token_id=[500, 507, 509])


def check_random(tokens, results):
    for init in ("hf-init", "sharp"):
        torch.manual_seed(7)
        cfg = random_config(5e5)
        cfg._attn_implementation = "eager"
        model = GlmForCausalLM(cfg).float().eval()
        if init == "sharp":
            sharpen(model, 11)
        # (a) F32, single file, written by HF itself
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            ref = glm_ref.forward(glm_ref.load_model(d), tokens)
            results.append(summarize("random %s F32 (HF-saved)" % init, hf_logits(model, tokens), ref))
        # (b) BF16, sharded by HF (small max_shard_size); (c) F16. HF reloads each with from_pretrained
        # in float32 (weights upcast; its RoPE inv_freq buffer recomputed in fp32 -- converting a live
        # model with .to(bfloat16) would round that buffer too and cost ~1e-5 in cosine).
        for dt, tname, kw in ((torch.bfloat16, "BF16", {"max_shard_size": "100KB"}),
                              (torch.float16, "F16", {})):
            with tempfile.TemporaryDirectory() as d:
                low = GlmForCausalLM(cfg).float().eval()
                low.load_state_dict(model.state_dict())
                low.to(dt).save_pretrained(d, **kw)
                nshard = len([f for f in os.listdir(d) if f.endswith(".safetensors")])
                back = GlmForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                      attn_implementation="eager").eval()
                ref = glm_ref.forward(glm_ref.load_model(d), tokens)
                results.append(summarize("random %s %s, %d file(s)" % (init, tname, nshard),
                                         hf_logits(back, tokens), ref))


def check_fixture(name, rope_base, tokens, results, write_golden):
    path = os.path.join(MODELS_DIR, name)
    cfg = GlmConfig.from_pretrained(path)
    literal = cfg.rope_parameters["rope_theta"]
    cfg.rope_parameters["rope_theta"] = rope_base
    cfg._attn_implementation = "eager"
    model = GlmForCausalLM.from_pretrained(path, config=cfg, dtype=torch.float32).eval()
    hf = hf_logits(model, tokens)
    ref = glm_ref.forward(glm_ref.load_model(path, rope_base=rope_base), tokens)
    tag = "%s (theta %g%s)" % (name, rope_base, "" if literal == rope_base else ", config says %g" % literal)
    results.append(summarize(tag, hf, ref))
    if write_golden:
        pos = np.arange(0, len(tokens), GOLDEN_EVERY)
        top5 = np.argsort(-hf, axis=1, kind="stable")[:, :5].astype(np.int16)
        out = os.path.join(MODELS_DIR, "hf_golden_%s.npz" % name)
        np.savez_compressed(
            out, positions=pos.astype(np.int32), logits=hf[pos].astype(np.float16), top5=top5,
            tokens=np.asarray(tokens, dtype=np.int16), rope_base=np.float64(rope_base),
            versions=np.array("torch %s, transformers %s, numpy %s" % (
                torch.__version__, transformers.__version__, np.__version__)))
        print("  wrote %s (%d bytes)" % (out, os.path.getsize(out)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write-golden", action="store_true")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tokens = glm_ref.read_tokens(os.path.join(MODELS_DIR, "tokens.txt"))
    print("torch %s, transformers %s, numpy %s, %d tokens" % (
        torch.__version__, transformers.__version__, np.__version__, len(tokens)))
    results = []
    check_random(tokens, results)
    check_fixture("g2-hf-sharded", 5e6, tokens, results, a.write_golden)
    check_fixture("g4-hf-wrongtheta", 1e8, tokens, results, a.write_golden)
    # Proof that HF itself follows the config literally: the wrong theta gives different logits.
    path = os.path.join(MODELS_DIR, "g4-hf-wrongtheta")
    m = GlmForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ref = glm_ref.forward(glm_ref.load_model(path, rope_base=1e8), tokens)
    results.append(summarize("g4-hf-wrongtheta, HF theta 1e4 vs ref 1e8", hf_logits(m, tokens), ref))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                    "numpy": np.__version__}, "results": results}, f, indent=1)
    bad = [r for r in results[:-1] if r["min_cosine"] < 0.99999 or r["argmax_agree"] < 0.99]
    print("OK: glm_ref matches HF GlmForCausalLM" if not bad else "MISMATCH: %s" % [r["case"] for r in bad])
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
