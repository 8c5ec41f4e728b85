#!/usr/bin/env python3
"""Write the small GLM-4-architecture test checkpoints in tests/data/models/ (numpy only).

This is the "independent tool" of docs/REFERENCE.md: it shares no code with mtok (its own
safetensors writer, tests/ref/safetensors_np.py) and writes exactly what a user downloads --
config.json in the real key set (docs/GLM.md §1.1 original ChatGLM, §1.3 Hugging Face Glm), BF16
safetensors, single file or sharded with model.safetensors.index.json.

Weights follow docs/DESIGN.md §7 ("make bugs visible"): q/k projection rows std 2/sqrt(hidden), QKV bias
std 0.5, other matrices std 1/sqrt(fan_in), embedding std 1, norm gains 1 + 0.1*N(0,1). Attention is
then sharp and position-dependent, so a wrong RoPE base / pairing, a missing bias or a wrong GQA
mapping moves the logits far past the test tolerance.

Fixtures:
  g2-chatglm          2 KV groups, 4 heads x 32, ChatGLM naming, model.safetensors, rope_ratio 500 (base 5e6)
  g2-hf-sharded       the same weights, HF Glm naming, 3 shards + index, rope_theta 5e6 (a correct re-export)
  g4-chatglm-sharded  4 KV groups, 8 heads x 16, ChatGLM naming, 2 shards, rope_ratio 10000 (base 1e8),
                      seq_length 1048576 (like glm-4-9b-chat-1m)
  g4-hf-wrongtheta    c's weights, HF naming, single file, the converter's wrong rope_theta 10000 with
                      max_position_embeddings 1048576 and no partial_rotary_factor key (default 0.5);
                      the true base is 1e8 and mtok must correct it
plus tokens.txt: 520 comma-separated token ids (seed 1234, ids < 512).

Usage:  python3 tests/ref/make_fixtures.py [--out tests/data/models] [--check]
  --check  regenerate into a temporary directory and compare byte for byte with --out.
"""

import argparse
import filecmp
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_np import f32_to_bf16_bits, write_safetensors  # noqa: E402

N_TOKENS = 520
TOKEN_SEED = 1234

# name -> model shape, seed
MODELS = {
    "g2": dict(vocab=512, hidden=128, layers=2, heads=4, head_dim=32, groups=2, ffn=160, seed=20240605),
    "g4": dict(vocab=512, hidden=128, layers=2, heads=8, head_dim=16, groups=4, ffn=160, seed=10485760),
}

# fixture -> (model, naming, number of shards (0 = model.safetensors), config flavour)
FIXTURES = {
    "g2-chatglm": dict(model="g2", naming="chatglm", shards=0, rope_ratio=500, seq_length=131072),
    "g2-hf-sharded": dict(model="g2", naming="hf", shards=3, rope_theta=5000000.0, max_pos=131072,
                          partial_rotary_factor=True),
    "g4-chatglm-sharded": dict(model="g4", naming="chatglm", shards=2, rope_ratio=10000, seq_length=1048576),
    "g4-hf-wrongtheta": dict(model="g4", naming="hf", shards=0, rope_theta=10000.0, max_pos=1048576,
                             partial_rotary_factor=False),
}

# The RoPE base the reference must use for each fixture (the true one, not what config.json says).
TRUE_ROPE_BASE = {"g2-chatglm": 5e6, "g2-hf-sharded": 5e6, "g4-chatglm-sharded": 1e8, "g4-hf-wrongtheta": 1e8}

EPS = 1.5625e-07
# Special ids shaped like GLM-4's (151329 <|endoftext|>, 151336 <|user|>, 151338 <|observation|>) moved to 500.
PAD_ID = 500
EOS_IDS = [500, 507, 509]


def make_weights(m):
    """Canonical (ChatGLM layout) float32 weights, already rounded to bf16 values."""
    rng = np.random.default_rng(m["seed"])
    E, H, D, G, F, V = m["hidden"], m["heads"], m["head_dim"], m["groups"], m["ffn"], m["vocab"]
    qd, kd = H * D, G * D

    def n(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def gain():
        return (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)

    w = {"embed": n((V, E), 1.0), "layers": []}
    for _ in range(m["layers"]):
        qkv = np.concatenate([n((qd, E), 2.0 / np.sqrt(E)),      # Q rows: sharp attention
                              n((kd, E), 2.0 / np.sqrt(E)),      # K rows
                              n((kd, E), 1.0 / np.sqrt(E))], 0)  # V rows
        w["layers"].append({
            "attn_norm": gain(),
            "qkv_w": qkv,
            "qkv_b": n((qd + 2 * kd,), 0.5),
            "dense": n((E, qd), 1.0 / np.sqrt(qd)),
            "ffn_norm": gain(),
            "gate_up": n((2 * F, E), 1.0 / np.sqrt(E)),  # rows [gate | up]
            "down": n((E, F), 1.0 / np.sqrt(F)),
        })
    w["final_norm"] = gain()
    w["output"] = n((V, E), 1.0 / np.sqrt(E))
    return w


def state_dict(w, m, naming):
    """Ordered list of (name, array) as the real checkpoints order them."""
    H, D, G = m["heads"], m["head_dim"], m["groups"]
    qd, kd = H * D, G * D
    out = []
    if naming == "chatglm":
        out.append(("transformer.embedding.word_embeddings.weight", w["embed"]))
        # The buffer real GLM-4 checkpoints carry: inverse frequencies for base 10000 (NOT the model's
        # base), dim = kv_channels / 2. An engine must ignore it.
        dim = D // 2
        out.append(("transformer.rotary_pos_emb.inv_freq",
                    (1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)))
        for i, L in enumerate(w["layers"]):
            p = "transformer.encoder.layers.%d." % i
            out += [(p + "input_layernorm.weight", L["attn_norm"]),
                    (p + "self_attention.query_key_value.weight", L["qkv_w"]),
                    (p + "self_attention.query_key_value.bias", L["qkv_b"]),
                    (p + "self_attention.dense.weight", L["dense"]),
                    (p + "post_attention_layernorm.weight", L["ffn_norm"]),
                    (p + "mlp.dense_h_to_4h.weight", L["gate_up"]),
                    (p + "mlp.dense_4h_to_h.weight", L["down"])]
        out.append(("transformer.encoder.final_layernorm.weight", w["final_norm"]))
        out.append(("transformer.output_layer.weight", w["output"]))
    else:
        out.append(("model.embed_tokens.weight", w["embed"]))
        for i, L in enumerate(w["layers"]):
            p = "model.layers.%d." % i
            out += [(p + "input_layernorm.weight", L["attn_norm"]),
                    (p + "self_attn.q_proj.weight", L["qkv_w"][:qd]),
                    (p + "self_attn.q_proj.bias", L["qkv_b"][:qd]),
                    (p + "self_attn.k_proj.weight", L["qkv_w"][qd:qd + kd]),
                    (p + "self_attn.k_proj.bias", L["qkv_b"][qd:qd + kd]),
                    (p + "self_attn.v_proj.weight", L["qkv_w"][qd + kd:]),
                    (p + "self_attn.v_proj.bias", L["qkv_b"][qd + kd:]),
                    (p + "self_attn.o_proj.weight", L["dense"]),
                    (p + "post_attention_layernorm.weight", L["ffn_norm"]),
                    (p + "mlp.gate_up_proj.weight", L["gate_up"]),
                    (p + "mlp.down_proj.weight", L["down"])]
        out.append(("model.norm.weight", w["final_norm"]))
        out.append(("lm_head.weight", w["output"]))
    return out


def config_json(m, fx):
    """config.json with the real key set of glm-4-9b-chat(-1m) (§1.1) or its -hf re-export (§1.3)."""
    if fx["naming"] == "chatglm":
        return {
            "_name_or_path": "mtok-fixture",
            "model_type": "chatglm",
            "architectures": ["ChatGLMModel"],
            "auto_map": {
                "AutoConfig": "configuration_chatglm.ChatGLMConfig",
                "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
            },
            "add_bias_linear": False,
            "add_qkv_bias": True,
            "apply_query_key_layer_scaling": True,
            "apply_residual_connection_post_layernorm": False,
            "attention_dropout": 0.0,
            "attention_softmax_in_fp32": True,
            "attn_implementation": "sdpa",
            "bias_dropout_fusion": True,
            "ffn_hidden_size": m["ffn"],
            "fp32_residual_connection": False,
            "hidden_dropout": 0.0,
            "hidden_size": m["hidden"],
            "kv_channels": m["head_dim"],
            "layernorm_epsilon": EPS,
            "multi_query_attention": True,
            "multi_query_group_num": m["groups"],
            "num_attention_heads": m["heads"],
            "num_hidden_layers": m["layers"],
            "num_layers": m["layers"],
            "rope_ratio": fx["rope_ratio"],
            "original_rope": True,
            "padded_vocab_size": m["vocab"],
            "post_layer_norm": True,
            "rmsnorm": True,
            "seq_length": fx["seq_length"],
            "use_cache": True,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.44.0",
            "tie_word_embeddings": False,
            "eos_token_id": EOS_IDS,
            "pad_token_id": PAD_ID,
        }
    c = {
        "architectures": ["GlmForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": EOS_IDS,
        "head_dim": m["head_dim"],
        "hidden_act": "silu",
        "hidden_size": m["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": m["ffn"],
        "max_position_embeddings": fx["max_pos"],
        "model_type": "glm",
        "num_attention_heads": m["heads"],
        "num_hidden_layers": m["layers"],
        "num_key_value_heads": m["groups"],
        "pad_token_id": PAD_ID,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": EPS,
        "rope_theta": fx["rope_theta"],
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vocab_size": m["vocab"],
    }
    if not fx["partial_rotary_factor"]:
        del c["partial_rotary_factor"]
    return c


def split_shards(items, n):
    """Split the ordered tensor list into n consecutive groups of roughly equal bytes (tensors of
    one layer may land in different shards, as in real checkpoints)."""
    sizes = [a.size * 2 for _, a in items]
    total = sum(sizes)
    groups, cur, acc = [], [], 0
    for (name, a), s in zip(items, sizes):
        cur.append((name, a))
        acc += s
        if len(groups) < n - 1 and acc >= total * (len(groups) + 1) / n:
            groups.append(cur)
            cur = []
    groups.append(cur)
    assert len(groups) == n and all(groups), [len(g) for g in groups]
    return groups


def write_fixture(out_dir, name):
    fx = FIXTURES[name]
    m = MODELS[fx["model"]]
    d = os.path.join(out_dir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    w = make_weights(m)
    items = [(k, f32_to_bf16_bits(a)) for k, a in state_dict(w, m, fx["naming"])]
    with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_json(m, fx), f, indent=2)
        f.write("\n")
    meta = {"format": "pt"}
    if fx["shards"] == 0:
        write_safetensors(os.path.join(d, "model.safetensors"),
                          [(k, "BF16", a) for k, a in sorted(items)], metadata=meta)
        return
    n = fx["shards"]
    weight_map, total = {}, 0
    for i, group in enumerate(split_shards(items, n)):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, n)
        total += write_safetensors(os.path.join(d, fname), [(k, "BF16", a) for k, a in sorted(group)],
                                   metadata=meta)
        for k, _ in group:
            weight_map[k] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(d, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


def write_tokens(out_dir):
    rng = np.random.default_rng(TOKEN_SEED)
    vocab = min(m["vocab"] for m in MODELS.values())
    toks = rng.integers(0, vocab, size=N_TOKENS)
    with open(os.path.join(out_dir, "tokens.txt"), "w", encoding="utf-8") as f:
        f.write(",".join(str(int(t)) for t in toks) + "\n")


def write_all(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name in FIXTURES:
        write_fixture(out_dir, name)
    write_tokens(out_dir)


def check(out_dir):
    tmp = tempfile.mkdtemp(prefix="mtok-fixtures-")
    try:
        write_all(tmp)
        bad = []
        for root, _, files in os.walk(tmp):
            for fn in files:
                rel = os.path.relpath(os.path.join(root, fn), tmp)
                ref = os.path.join(out_dir, rel)
                if not os.path.exists(ref) or not filecmp.cmp(os.path.join(tmp, rel), ref, shallow=False):
                    bad.append(rel)
        for b in bad:
            print("differs: " + b)
        print("fixtures reproduce byte for byte" if not bad else "%d file(s) differ" % len(bad))
        return 0 if not bad else 1
    finally:
        shutil.rmtree(tmp)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="write the mtok test checkpoints")
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "data", "models")))
    ap.add_argument("--check", action="store_true", help="regenerate to a temp dir and compare")
    a = ap.parse_args()
    if a.check:
        return check(a.out)
    write_all(a.out)
    for name in FIXTURES:
        d = os.path.join(a.out, name)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print("%-20s %8d bytes  %s" % (name, size, ", ".join(sorted(os.listdir(d)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
