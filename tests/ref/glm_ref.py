#!/usr/bin/env python3
"""Independent numpy reference of the GLM-4 / ChatGLM3 forward pass (docs/GLM.md §3).

Written from the published semantics, not from mtok's code:

    h = word_embeddings[tokens]                                   (no scaling)
    per layer:
        a   = RMSNorm(h) * input_layernorm
        qkv = a @ W_qkv.T + b_qkv          rows [Q heads 0..H-1 | K groups 0..G-1 | V groups 0..G-1]
        RoPE on q and k: only dims [0, rope_dim) of each head, rope_dim = head_dim * partial_rotary_factor
            (0.5 by default); adjacent pairs (2i, 2i+1);  theta_i = base^(-2i/rope_dim);  positions 0..n-1
            out[2i]   = x[2i] cos(p theta_i) - x[2i+1] sin(p theta_i)
            out[2i+1] = x[2i+1] cos(p theta_i) + x[2i] sin(p theta_i)
        causal GQA attention: query head h uses KV group h // (H/G); scale 1/sqrt(head_dim); softmax
        h  += concat_heads(out) @ W_dense.T                        (no bias)
        m   = RMSNorm(h) * post_attention_layernorm
        u   = m @ W_h_to_4h.T ; gate = u[:, :F], up = u[:, F:]
        h  += (silu(gate) * up) @ W_4h_to_h.T
    logits = RMSNorm(h) * final_layernorm @ W_output.T            (untied)

RMSNorm: y = w * x / sqrt(mean(x^2) + eps).

Loads a Hugging Face checkpoint directory in either naming (original ChatGLM `transformer.encoder...`
or HF Glm `model.layers...`), single file or sharded. Math runs in float64 by default (an "exact"
reference); `dtype=np.float32` gives an fp32 computation. `kv_bf16=True` rounds the cached K (after
RoPE) and V to bf16, like an engine that stores its KV cache in bf16.

Command line:
    python3 glm_ref.py -m DIR (--tokens 1,2,3 | --tokens-file F) --out logits.npy [--rope-base B] [--kv-bf16]
"""

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_np import bf16_round, load_checkpoint_dir  # noqa: E402


class GlmConfig:
    """The hyper-parameters the forward pass needs, from either config.json flavour."""

    def __init__(self, **kw):
        self.naming = kw["naming"]            # "chatglm" or "hf"
        self.n_layers = kw["n_layers"]
        self.hidden = kw["hidden"]
        self.n_heads = kw["n_heads"]
        self.n_kv = kw["n_kv"]                # KV groups
        self.head_dim = kw["head_dim"]
        self.ffn = kw["ffn"]
        self.vocab = kw["vocab"]              # rows of the output layer / embedding
        self.eps = kw["eps"]
        self.rope_base = kw["rope_base"]      # as read from config.json (may be the wrong -hf value)
        self.rope_dim = kw["rope_dim"]
        self.max_pos = kw.get("max_pos")

    def __repr__(self):
        return ("GlmConfig(naming=%s, L=%d, E=%d, H=%d, G=%d, D=%d, F=%d, V=%d, eps=%g, base=%g, rope_dim=%d)"
                % (self.naming, self.n_layers, self.hidden, self.n_heads, self.n_kv, self.head_dim,
                   self.ffn, self.vocab, self.eps, self.rope_base, self.rope_dim))

    @staticmethod
    def from_dict(cfg):
        if "num_layers" in cfg or "multi_query_group_num" in cfg or cfg.get("model_type") == "chatglm":
            # Original THUDM format (docs/GLM.md §1.1).
            heads = cfg["num_attention_heads"]
            head_dim = cfg.get("kv_channels", cfg["hidden_size"] // heads)
            groups = cfg["multi_query_group_num"] if cfg.get("multi_query_attention", True) else heads
            if cfg.get("add_bias_linear", False):
                raise ValueError("add_bias_linear=true is not part of GLM-4 / ChatGLM3")
            if not cfg.get("rmsnorm", True) or not cfg.get("original_rope", True):
                raise ValueError("only rmsnorm=true, original_rope=true (ChatGLM2/3, GLM-4) are modelled")
            return GlmConfig(
                naming="chatglm",
                n_layers=cfg.get("num_layers", cfg.get("num_hidden_layers")),
                hidden=cfg["hidden_size"], n_heads=heads, n_kv=groups, head_dim=head_dim,
                ffn=cfg["ffn_hidden_size"],
                vocab=cfg.get("padded_vocab_size", cfg.get("vocab_size")),
                eps=cfg.get("layernorm_epsilon", 1e-5),
                rope_base=10000.0 * float(cfg.get("rope_ratio", 1)),
                rope_dim=head_dim // 2,
                max_pos=cfg.get("seq_length"))
        # Hugging Face GlmConfig (docs/GLM.md §1.3); defaults are GlmConfig's.
        heads = cfg.get("num_attention_heads", 32)
        hidden = cfg.get("hidden_size", 4096)
        head_dim = cfg.get("head_dim") or hidden // heads
        prf = cfg.get("partial_rotary_factor", 0.5)
        theta = cfg.get("rope_theta", 10000.0)
        # transformers >= 5 writes {"rope_parameters": {"rope_theta", "partial_rotary_factor",
        # "rope_type"}} instead of the top-level keys; it takes precedence when present.
        rp = cfg.get("rope_parameters") or {}
        if rp:
            if rp.get("rope_type", "default") != "default":
                raise ValueError("rope_type %r is not modelled" % rp.get("rope_type"))
            theta = rp.get("rope_theta", theta)
            prf = rp.get("partial_rotary_factor", prf)
        if cfg.get("rope_scaling"):
            raise ValueError("rope_scaling is not modelled")
        return GlmConfig(
            naming="hf",
            n_layers=cfg.get("num_hidden_layers", 40), hidden=hidden, n_heads=heads,
            n_kv=cfg.get("num_key_value_heads", heads), head_dim=head_dim,
            ffn=cfg.get("intermediate_size", 13696), vocab=cfg.get("vocab_size", 151552),
            eps=cfg.get("rms_norm_eps", 1.5625e-7),
            rope_base=float(theta),
            rope_dim=int(head_dim * prf),
            max_pos=cfg.get("max_position_embeddings"))


def _names(naming, i):
    """Tensor names of layer i (None = the whole model) in one naming."""
    if naming == "chatglm":
        if i is None:
            return {"embed": "transformer.embedding.word_embeddings.weight",
                    "final_norm": "transformer.encoder.final_layernorm.weight",
                    "output": "transformer.output_layer.weight"}
        p = "transformer.encoder.layers.%d." % i
        return {"attn_norm": p + "input_layernorm.weight",
                "qkv_w": p + "self_attention.query_key_value.weight",
                "qkv_b": p + "self_attention.query_key_value.bias",
                "dense": p + "self_attention.dense.weight",
                "ffn_norm": p + "post_attention_layernorm.weight",
                "gate_up": p + "mlp.dense_h_to_4h.weight",
                "down": p + "mlp.dense_4h_to_h.weight"}
    if i is None:
        return {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
                "output": "lm_head.weight"}
    p = "model.layers.%d." % i
    return {"attn_norm": p + "input_layernorm.weight",
            "q_w": p + "self_attn.q_proj.weight", "q_b": p + "self_attn.q_proj.bias",
            "k_w": p + "self_attn.k_proj.weight", "k_b": p + "self_attn.k_proj.bias",
            "v_w": p + "self_attn.v_proj.weight", "v_b": p + "self_attn.v_proj.bias",
            "dense": p + "self_attn.o_proj.weight",
            "ffn_norm": p + "post_attention_layernorm.weight",
            "gate_up": p + "mlp.gate_up_proj.weight",
            "down": p + "mlp.down_proj.weight"}


class GlmModel:
    """A checkpoint: config + lazily decoded weights in one canonical (fused) layout."""

    def __init__(self, path, rope_base=None):
        cfg_dict, self.store = load_checkpoint_dir(path)
        self.path = path
        self.cfg_dict = cfg_dict
        self.cfg = GlmConfig.from_dict(cfg_dict)
        if rope_base is not None:
            self.cfg.rope_base = float(rope_base)
        c = self.cfg
        if "transformer.encoder.layers.0.input_layernorm.weight" in self.store:
            self.naming = "chatglm"
        elif "model.layers.0.input_layernorm.weight" in self.store:
            self.naming = "hf"
        else:
            raise ValueError(f"{path}: neither ChatGLM nor HF Glm tensor names")
        qw = c.n_heads * c.head_dim + 2 * c.n_kv * c.head_dim
        self._expect = {"embed": (c.vocab, c.hidden), "final_norm": (c.hidden,),
                        "output": (c.vocab, c.hidden), "attn_norm": (c.hidden,),
                        "qkv_w": (qw, c.hidden), "qkv_b": (qw,),
                        "dense": (c.hidden, c.n_heads * c.head_dim), "ffn_norm": (c.hidden,),
                        "gate_up": (2 * c.ffn, c.hidden), "down": (c.hidden, c.ffn)}

    def _get(self, key, name):
        t = self.store.get(name)
        exp = self._expect.get(key)
        if exp is not None and tuple(t.shape) != exp:
            raise ValueError(f"{self.path}: {name} has shape {list(t.shape)}, expected {list(exp)}")
        return t

    def globals(self):
        n = _names(self.naming, None)
        return {k: self._get(k, v) for k, v in n.items()}

    def layer(self, i):
        """Weights of layer i as float32, fused layout (qkv rows [Q|K|V], gate_up rows [gate|up])."""
        n = _names(self.naming, i)
        w = {k: self._get(k, n[k]) for k in ("attn_norm", "dense", "ffn_norm", "gate_up", "down")}
        if self.naming == "chatglm":
            w["qkv_w"] = self._get("qkv_w", n["qkv_w"])
            w["qkv_b"] = self._get("qkv_b", n["qkv_b"])
        else:
            w["qkv_w"] = np.concatenate([self.store.get(n["q_w"]), self.store.get(n["k_w"]),
                                         self.store.get(n["v_w"])], axis=0)
            w["qkv_b"] = np.concatenate([self.store.get(n["q_b"]), self.store.get(n["k_b"]),
                                         self.store.get(n["v_b"])], axis=0)
            for k in ("qkv_w", "qkv_b"):
                if tuple(w[k].shape) != self._expect[k]:
                    raise ValueError(f"{self.path}: layer {i} fused {k} has shape {list(w[k].shape)}")
        return w


def load_model(path, rope_base=None):
    return GlmModel(path, rope_base=rope_base)


def rms_norm(x, w, eps):
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w


def rope_tables(n, rope_dim, base, dtype):
    """cos, sin of shape [n, rope_dim/2]: angle[p, i] = p * base^(-2i/rope_dim)."""
    i = np.arange(rope_dim // 2, dtype=np.float64)
    theta = np.power(float(base), -2.0 * i / rope_dim)
    ang = np.arange(n, dtype=np.float64)[:, None] * theta[None, :]
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


def apply_rope(x, cos, sin, rope_dim, style="interleaved"):
    """x: [n, heads, head_dim]. Rotates dims [0, rope_dim) of every head; the rest passes through.

    style "interleaved" = GLM (adjacent pairs 2i, 2i+1). "neox" (pairs i, i+rope_dim/2) and "conj"
    (interleaved with the sign of sin flipped) exist only as deliberately wrong variants for negative
    controls."""
    out = x.copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    if style == "conj":
        s = -s
        style = "interleaved"
    if style == "interleaved":
        a = x[:, :, 0:rope_dim:2]
        b = x[:, :, 1:rope_dim:2]
        out[:, :, 0:rope_dim:2] = a * c - b * s
        out[:, :, 1:rope_dim:2] = b * c + a * s
    elif style == "neox":
        h = rope_dim // 2
        a = x[:, :, 0:h]
        b = x[:, :, h:rope_dim]
        out[:, :, 0:h] = a * c - b * s
        out[:, :, h:rope_dim] = b * c + a * s
    else:
        raise ValueError(style)
    return out


def _softmax_rows(s):
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def forward(model, tokens, dtype=np.float64, kv_bf16=False, rope_base=None, qkv_bias=True,
            rope_style="interleaved", positions=None, hook=None, act_bf16=False, gqa_modulo=False):
    """Logits [n, vocab] (numpy array of `dtype`) for every position of `tokens` (or only `positions`).

    rope_base overrides the model's base for this call. qkv_bias=False, rope_style="neox"/"conj" and
    gqa_modulo=True (query head h uses group h % G instead of h // (H/G)) exist for negative
    controls. kv_bf16 rounds the cached K (after RoPE) and V to bf16; act_bf16 also rounds q and
    every matmul input (normed activations, attention output, SwiGLU output) to bf16, to estimate
    what an engine with bf16 activations can reach. hook(name, layer, array) is called
    with intermediate tensors if given."""
    c = model.cfg
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.shape[0]
    if tokens.min() < 0 or tokens.max() >= c.vocab:
        raise ValueError(f"token id out of range [0, {c.vocab})")
    base = c.rope_base if rope_base is None else float(rope_base)
    H, G, D, R = c.n_heads, c.n_kv, c.head_dim, c.rope_dim
    if H % G != 0:
        raise ValueError(f"{H} heads do not divide into {G} KV groups")
    if R % 2 != 0 or R > D:
        raise ValueError(f"bad rope_dim {R} for head_dim {D}")
    per_group = H // G
    g = model.globals()

    def act(x):
        return bf16_round(x.astype(np.float32)).astype(dtype) if act_bf16 else x

    h = g["embed"][tokens].astype(dtype)
    cos, sin = rope_tables(n, R, base, dtype)
    scale = 1.0 / math.sqrt(D)
    causal = np.triu(np.ones((n, n), dtype=bool), k=1)
    if hook:
        hook("embed", -1, h)
    for li in range(c.n_layers):
        w = model.layer(li)
        a = rms_norm(h, w["attn_norm"].astype(dtype), c.eps)
        qkv = act(a) @ w["qkv_w"].astype(dtype).T
        if qkv_bias:
            qkv = qkv + w["qkv_b"].astype(dtype)
        q = qkv[:, :H * D].reshape(n, H, D)
        k = qkv[:, H * D:H * D + G * D].reshape(n, G, D)
        v = qkv[:, H * D + G * D:].reshape(n, G, D)
        q = apply_rope(q, cos, sin, R, rope_style)
        k = apply_rope(k, cos, sin, R, rope_style)
        if act_bf16:
            q = act(q)
        if kv_bf16 or act_bf16:
            k = bf16_round(k.astype(np.float32)).astype(dtype)
            v = bf16_round(v.astype(np.float32)).astype(dtype)
        if hook:
            hook("q", li, q)
            hook("k", li, k)
            hook("v", li, v)
        att = np.empty((n, H, D), dtype=dtype)
        for hh in range(H):
            j = hh % G if gqa_modulo else hh // per_group
            s = (q[:, hh, :] @ k[:, j, :].T) * scale
            s[causal] = -np.inf
            p = _softmax_rows(s)
            att[:, hh, :] = p @ v[:, j, :]
        att = att.reshape(n, H * D)
        if hook:
            hook("attn_out", li, att)
        h = h + act(att) @ w["dense"].astype(dtype).T
        m = rms_norm(h, w["ffn_norm"].astype(dtype), c.eps)
        u = act(m) @ w["gate_up"].astype(dtype).T
        gate, up = u[:, :c.ffn], u[:, c.ffn:]
        z = gate / (1.0 + np.exp(-gate)) * up
        h = h + act(z) @ w["down"].astype(dtype).T
        if hook:
            hook("layer_out", li, h)
    hf = rms_norm(h if positions is None else h[np.asarray(positions)], g["final_norm"].astype(dtype), c.eps)
    return act(hf) @ g["output"].astype(dtype).T


# ----------------------------------------------------------------------------------------------
# Comparison helpers shared by the tests and check_against_hf.py.

def compare_logits(test, ref, argmax_margin=1e-3):
    """Per-position figures of `test` against `ref` (both [n, V]).

    Returns dict with cosine[n], rel_err[n] (max |test-ref| / max |ref| per position), max_abs,
    argmax_checked (positions whose top two reference logits differ by more than
    argmax_margin * max|ref|), argmax_bad (those of them where the argmax differs)."""
    t = np.asarray(test, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if t.shape != r.shape:
        raise ValueError(f"shape {t.shape} != reference {r.shape}")
    dot = np.sum(t * r, axis=1)
    nt = np.linalg.norm(t, axis=1)
    nr = np.linalg.norm(r, axis=1)
    cos = dot / np.maximum(nt * nr, 1e-300)
    scale = np.max(np.abs(r), axis=1)
    diff = np.abs(t - r)
    rel = np.max(diff, axis=1) / np.maximum(scale, 1e-300)
    top2 = np.sort(r, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > argmax_margin * scale
    checked = np.nonzero(clear)[0]
    bad = checked[np.argmax(t[checked], axis=1) != np.argmax(r[checked], axis=1)]
    return {"cosine": cos, "rel_err": rel, "max_abs": float(diff.max()),
            "argmax_checked": checked, "argmax_bad": bad,
            "argmax_agree_all": float(np.mean(np.argmax(t, 1) == np.argmax(r, 1)))}


def read_tokens(path):
    with open(path, "r", encoding="utf-8") as f:
        return [int(x) for x in f.read().replace("\n", ",").split(",") if x.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True, help="checkpoint directory")
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--tokens-file", help="file of comma-separated token ids")
    ap.add_argument("--out", required=True, help="output .npy, float32 [n_tokens, vocab]")
    ap.add_argument("--rope-base", type=float, default=None, help="override the RoPE base")
    ap.add_argument("--kv-bf16", action="store_true", help="round cached K/V to bf16")
    ap.add_argument("--fp32", action="store_true", help="compute in float32 instead of float64")
    a = ap.parse_args(argv)
    if bool(a.tokens) == bool(a.tokens_file):
        ap.error("give exactly one of --tokens, --tokens-file")
    toks = read_tokens(a.tokens_file) if a.tokens_file else [int(x) for x in a.tokens.split(",")]
    model = load_model(a.model, rope_base=a.rope_base)
    print(model.cfg, file=sys.stderr)
    logits = forward(model, toks, dtype=np.float32 if a.fp32 else np.float64, kv_bf16=a.kv_bf16)
    np.save(a.out, logits.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
