"""GLM-4V-9B's language model over a prompt with an image, in numpy (float64): the image triple
expanded, the tower's rows spliced over it and every row rotated by its own RoPE position, as
docs/VISION.md ("Prompt layout") states it from the model's code (issue 23). Shares no code with mtok.

    expand(ids, boi, pad, eoi, rows)                 -> (ids, positions, image_first): the layout
    forward(model, ids, positions, embeds, first)    -> logits [n, vocab]
    image_logits(dir, ids, image)                    -> logits of the whole path (tower + model)

It imports glm_ref (the GLM-4 language model: weights, RMSNorm, the GLM RoPE rotation) and glm4v_ref
(preprocessing and the tower). glm_ref.forward cannot be reused as is: it embeds every row from the
token table and takes its RoPE angles from np.arange(n) (rope_tables), so this file repeats only the
decoder loop with angles from explicit positions and the embedding override; the rotation itself is
glm_ref.apply_rope. The attention stays ordinary causal attention over the rows (the model has no
bidirectional image block)."""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glm4v_ref  # noqa: E402
import glm_ref  # noqa: E402
from safetensors_np import bf16_round, load_checkpoint_dir  # noqa: E402


def expand(ids, boi, pad, eoi, rows):
    """The expanded ids (boi, pad x (rows - 2), eoi in the image's place), each row's position and the
    image's first row (-1 without an image). The positions are the text's: boi keeps p, every patch
    row gets p + 1 (the placeholder's), eoi p + 2 (its own) and the text after keeps p + 3, ...
    Raises ValueError on a second image or a broken triple."""
    ids = [int(x) for x in ids]
    starts = [i for i, x in enumerate(ids) if x == boi]
    if len(starts) > 1:
        raise ValueError("one image per conversation")
    if not starts:
        if eoi in ids:
            raise ValueError("end_of_image without begin_of_image")
        return ids, list(range(len(ids))), -1
    b = starts[0]
    if ids[b + 1:b + 3] != [pad, eoi] or ids.count(eoi) != 1:
        raise ValueError("broken image triple")
    out = ids[:b] + [boi] + [pad] * (rows - 2) + [eoi] + ids[b + 3:]
    pos = list(range(b)) + [b] + [b + 1] * (rows - 2) + [b + 2] + list(range(b + 3, len(ids)))
    return out, pos, b


def rope_tables_at(positions, rope_dim, base):
    """glm_ref.rope_tables for arbitrary positions: angle[t, i] = positions[t] * base^(-2i/rope_dim)."""
    i = np.arange(rope_dim // 2, dtype=np.float64)
    theta = np.power(float(base), -2.0 * i / rope_dim)
    ang = np.asarray(positions, np.float64)[:, None] * theta[None, :]
    return np.cos(ang), np.sin(ang)


def forward(model, ids, positions, embeds=None, first=0, kv_bf16=True):
    """Logits [n, vocab] (float64) of every row. Rows [first, first + len(embeds)) take embeds' rows
    instead of the token table's; row t is rotated by positions[t]. kv_bf16 rounds K (after RoPE)
    and V to bf16 as mtok's KV cache stores them."""
    c = model.cfg
    ids = np.asarray(ids, np.int64)
    n = ids.shape[0]
    H, G, D, R = c.n_heads, c.n_kv, c.head_dim, c.rope_dim
    g = model.globals()
    h = np.asarray(g["embed"], np.float64)[ids]
    if embeds is not None:
        h[first:first + len(embeds)] = np.asarray(embeds, np.float64)
    cos, sin = rope_tables_at(positions, R, c.rope_base)
    causal = np.triu(np.ones((n, n), dtype=bool), k=1)  # over rows (KV slots), not positions
    for li in range(c.n_layers):
        w = {k: np.asarray(v, np.float64) for k, v in model.layer(li).items()}
        a = glm_ref.rms_norm(h, w["attn_norm"], c.eps)
        qkv = a @ w["qkv_w"].T + w["qkv_b"]
        q = glm_ref.apply_rope(qkv[:, :H * D].reshape(n, H, D), cos, sin, R)
        k = glm_ref.apply_rope(qkv[:, H * D:(H + G) * D].reshape(n, G, D), cos, sin, R)
        v = qkv[:, (H + G) * D:].reshape(n, G, D)
        if kv_bf16:
            k = bf16_round(k.astype(np.float32)).astype(np.float64)
            v = bf16_round(v.astype(np.float32)).astype(np.float64)
        att = np.empty((n, H, D))
        for hh in range(H):
            j = hh // (H // G)
            s = q[:, hh, :] @ k[:, j, :].T / math.sqrt(D)
            s[causal] = -np.inf
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            att[:, hh, :] = (p / p.sum(axis=-1, keepdims=True)) @ v[:, j, :]
        h = h + att.reshape(n, H * D) @ w["dense"].T
        m = glm_ref.rms_norm(h, w["ffn_norm"], c.eps)
        u = m @ w["gate_up"].T
        gate, up = u[:, :c.ffn], u[:, c.ffn:]
        h = h + (gate / (1.0 + np.exp(-gate)) * up) @ w["down"].T
    return glm_ref.rms_norm(h, np.asarray(g["final_norm"], np.float64), c.eps) @ np.asarray(g["output"], np.float64).T


def image_logits(path, ids, image, sequential=False):
    """The whole path for checkpoint dir `path`: the tower on `image` (glm4v_ref), the layout, the
    model. sequential=True gives the rows positions 0..n-1 instead (the layout one server uses, a
    deliberately wrong variant). Returns (logits, expanded ids, positions)."""
    cfg, store = load_checkpoint_dir(path)
    vc = cfg["vision_config"]
    chw = glm4v_ref.preprocess(image, vc["image_size"])
    emb = glm4v_ref.vision_forward(cfg, store.get, chw)
    full, pos, first = expand(ids, cfg["boi_token_id"], cfg.get("pad_token_id", 151329), cfg["eoi_token_id"],
                              emb.shape[0])
    if sequential:
        pos = list(range(len(full)))
    return forward(glm_ref.load_model(path), full, pos, emb, first), full, pos
