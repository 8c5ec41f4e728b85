"""GLM-4V-9B's image path in numpy (float64), written from the architecture as docs/VISION.md states
it (issue 23), sharing no code with mtok: PIL preprocessing, the EVA2-CLIP tower, the 2x2 downsampling
convolution, the GLU projector, boi/eoi and the scaling.

    preprocess(path, size)            -> [3, size, size] float32 (PIL bicubic, CLIP mean/std)
    vision_forward(cfg, get, chw)     -> [(grid/2)^2 + 2, hidden] float64

cfg is the parsed config.json (vision_config inside it); get(name) returns a tensor of the checkpoint
as a float array (tests/ref/safetensors_np.py's TensorStore.get). Options:
    kv_bf16    round K and V to bf16 before attention, the precision mtok's attention kernel stores
               them in (the language model's KV cache does the same); False: full precision
    post_norm  the model's "LayerNorm on each sublayer's output"; False gives the usual pre-norm
               ViT, a deliberately wrong variant tests use to show the comparison would catch it
The convolutions are written as einsums over the kernel's (out, in, ky, kx) indices, not as the
patch-matrix product mtok uses, so a wrong flattening order on either side shows.
"""
import math

import numpy as np

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
PFX = "transformer.vision."

_erf = np.frompyfunc(math.erf, 1, 1)


def preprocess(path, size):
    from PIL import Image
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))
    x = rgb.astype(np.float32) / np.float32(255)  # torchvision ToTensor
    return ((x - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)  # Normalize, CHW


def bf16(x):
    """float -> nearest bf16 value (ties to even), via float32 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def silu(x):
    return x / (1.0 + np.exp(-x))


def attention(x, wqkv, bqkv, heads, kv_bf16):
    T, E = x.shape
    D = E // heads
    qkv = (x @ wqkv.T + bqkv).reshape(T, 3, heads, D)  # [Q | K | V], head-major inside each
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    if kv_bf16:
        k, v = bf16(k.astype(np.float32)), bf16(v.astype(np.float32))
    s = np.einsum("thd,shd->hts", q, k) / math.sqrt(D)  # every token sees every token
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v).reshape(T, E)


def vision_forward(cfg, get, chw, kv_bf16=True, post_norm=True):
    vc = cfg["vision_config"]
    E, heads, P, S = vc["hidden_size"], vc["num_heads"], vc["patch_size"], vc["image_size"]
    eps, G = vc["layer_norm_eps"], S // P

    def W(name):
        return np.asarray(get(PFX + name), np.float64)

    # patch embedding: a P x P stride-P convolution; out[y, x, e] = sum_c,i,j k[e, c, i, j] img[c, yP+i, xP+j]
    img = np.asarray(chw, np.float64).reshape(3, G, P, G, P)  # c, y, i, x, j
    x = np.einsum("ecij,cyixj->yxe", W("patch_embedding.proj.weight"), img).reshape(G * G, E)
    x = x + W("patch_embedding.proj.bias")
    h = np.concatenate([W("patch_embedding.cls_embedding").reshape(1, E), x], 0)
    h = h + W("patch_embedding.position_embedding.weight")
    for i in range(vc["num_hidden_layers"]):
        p = "transformer.layers.%d." % i
        ln1 = (W(p + "input_layernorm.weight"), W(p + "input_layernorm.bias"), eps)
        ln2 = (W(p + "post_attention_layernorm.weight"), W(p + "post_attention_layernorm.bias"), eps)

        def attn(z):
            o = attention(z, W(p + "attention.query_key_value.weight"), W(p + "attention.query_key_value.bias"),
                          heads, kv_bf16)
            return o @ W(p + "attention.dense.weight").T + W(p + "attention.dense.bias")

        def mlp(z):
            f = gelu(z @ W(p + "mlp.fc1.weight").T + W(p + "mlp.fc1.bias"))
            return f @ W(p + "mlp.fc2.weight").T + W(p + "mlp.fc2.bias")

        if post_norm:
            h = h + layernorm(attn(h), *ln1)
            h = h + layernorm(mlp(h), *ln2)
        else:
            h = h + attn(layernorm(h, *ln1))
            h = h + mlp(layernorm(h, *ln2))
    # drop CLS; 2x2 stride-2 convolution over the G x G grid
    g = h[1:].reshape(G // 2, 2, G // 2, 2, E)  # y, i, x, j, c
    y = np.einsum("ecij,yixjc->yxe", W("conv.weight"), g).reshape((G // 2) ** 2, -1) + W("conv.bias")
    # GLU projector (no biases; its LayerNorm has PyTorch's default eps 1e-5)
    z = y @ W("linear_proj.linear_proj.weight").T
    z = gelu(layernorm(z, W("linear_proj.norm1.weight"), W("linear_proj.norm1.bias"), 1e-5))
    z = silu(z @ W("linear_proj.gate_proj.weight").T) * (z @ W("linear_proj.dense_h_to_4h.weight").T)
    z = z @ W("linear_proj.dense_4h_to_h.weight").T
    L = z.shape[1]
    out = np.concatenate([W("boi").reshape(1, L), z, W("eoi").reshape(1, L)], 0)
    return out / vc["scaling_factor"]
