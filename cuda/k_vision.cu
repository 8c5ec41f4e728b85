/* k_vision.cu — the kernels of GLM-4V's vision tower (cuda/ck.h, "GLM-4V's vision tower"): LayerNorm
 * (plain and accumulating), exact GELU, the image's patches and the merger's 2 x 2 windows as bf16
 * GEMM operands, and the attention operands (q, and K and V stored into a KV pool for ck_attn_prefill).
 *
 * The style of k_rows.cu: element arithmetic through kernels/mtok_math.h (mm_ln_elem, mm_gelu,
 * mm_f32_to_bf16), fixed-order block sums (a rerun gives the same bits), 16-byte paths chosen once by
 * the launcher (V, a uniform branch: no template, which nvcc 13.0's missing-launch-bounds check would
 * reject on a __global__). Every grid is one-dimensional on x (up to 2^31 - 1 blocks), so no shape of
 * the tower (T = 6401 rows, E = 1792, the merger's width 4096) comes near a limit. */
#include "ck_rows.cuh"

#ifndef MTOK_CUDA_SHIM
static_assert((int)cudaErrorInvalidValue == 1, "ck launchers return 1 for bad arguments");
#endif

namespace {

constexpr int kThreads = 256;   /* elementwise kernels */
constexpr int kLnThreads = 256; /* one LayerNorm row: E = 1792 is 448 float4, under 2 per thread */

/* ---- LayerNorm: one block per row. Each thread owns the same elements in all three passes (read for
 * the mean, read for the variance, write), so y may alias x when add == 0. ---- */
__global__ void __launch_bounds__(kLnThreads) layernorm_k(const bool V, float *y, const float *x, const float *w,
                                                         const float *b, int64_t E, float eps, int add) {
    __shared__ float sh[33];
    const int64_t t = blockIdx.x;
    const float *xr = x + t * E;
    float *yr = y + t * E;
    const int64_t n4 = V ? E / 4 : 0; /* float4 groups; the scalar loops take the rest (all of E when !V) */
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = ck_ld4(xr, i);
        s += v.x, s += v.y, s += v.z, s += v.w;
    }
    for (int64_t i = 4 * n4 + threadIdx.x; i < E; i += blockDim.x) s += xr[i];
    const float mean = ck_block_sum(s, sh) / (float)E;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = ck_ld4(xr, i);
        const float a = v.x - mean, c = v.y - mean, d = v.z - mean, e = v.w - mean;
        ss += a * a, ss += c * c, ss += d * d, ss += e * e;
    }
    for (int64_t i = 4 * n4 + threadIdx.x; i < E; i += blockDim.x) {
        const float a = xr[i] - mean;
        ss += a * a;
    }
    const float var = ck_block_sum(ss, sh) / (float)E;
    const float rstd = (float)(1.0 / sqrt((double)var + (double)eps)); /* once per row: double costs nothing */
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = ck_ld4(xr, i), wv = ck_ld4(w, i), bv = ck_ld4(b, i);
        float4 o = make_float4(mm_ln_elem(v.x, mean, rstd, wv.x, bv.x), mm_ln_elem(v.y, mean, rstd, wv.y, bv.y),
                               mm_ln_elem(v.z, mean, rstd, wv.z, bv.z), mm_ln_elem(v.w, mean, rstd, wv.w, bv.w));
        if (add) {
            const float4 u = ck_ld4(yr, i);
            o.x += u.x, o.y += u.y, o.z += u.z, o.w += u.w;
        }
        ck_st4(yr, i, o);
    }
    for (int64_t i = 4 * n4 + threadIdx.x; i < E; i += blockDim.x) {
        const float o = mm_ln_elem(xr[i], mean, rstd, w[i], b[i]);
        yr[i] = add ? yr[i] + o : o;
    }
}

/* ---- GELU: thread i takes float4 i (V) or element i ---- */
__global__ void __launch_bounds__(kThreads) gelu_k(const bool V, float *x, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (V) {
        if (i >= n / 4) return;
        const float4 v = ck_ld4(x, i);
        ck_st4(x, i, make_float4(mm_gelu(v.x), mm_gelu(v.y), mm_gelu(v.z), mm_gelu(v.w)));
    } else if (i < n) {
        x[i] = mm_gelu(x[i]);
    }
}

/* ---- patches: thread i writes output element i of [G*G][ldo] (consecutive threads: consecutive
 * columns, so the stores coalesce; the loads are runs of P floats of an image row) ---- */
__global__ void __launch_bounds__(kThreads) vis_patches_k(uint16_t *out, int64_t ldo, const float *chw, int64_t S,
                                                         int64_t P, int64_t G) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= G * G * ldo) return;
    const int64_t row = i / ldo, col = i - row * ldo, PP = P * P;
    if (col >= 3 * PP) { /* the padding up to ldo: zeros, so the GEMM's K may be ldo */
        out[i] = 0;
        return;
    }
    const int64_t c = col / PP, r = col - c * PP, ky = r / P, kx = r - ky * P;
    const int64_t gy = row / G, gx = row - gy * G;
    out[i] = mm_f32_to_bf16(chw[(c * S + gy * P + ky) * S + gx * P + kx]);
}

/* ---- 2 x 2 windows: thread i takes (window row, channel c) = (i / E, i % E): reads channel c of the
 * four cells (consecutive threads, consecutive channels: coalesced) and writes the 4 adjacent bf16 at
 * columns 4c .. 4c+3 (one 8-byte store when V: out 8-byte aligned) ---- */
__global__ void __launch_bounds__(kThreads) vis_windows_k(const bool V, uint16_t *out, const float *grid, int64_t G,
                                                         int64_t E) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, Gh = G / 2;
    if (i >= Gh * Gh * E) return;
    const int64_t row = i / E, c = i - row * E, oy = row / Gh, ox = row - oy * Gh;
    const float *g0 = grid + ((2 * oy) * G + 2 * ox) * E + c; /* cell (2oy, 2ox); kx steps E, ky steps G*E */
    const float v00 = g0[0], v01 = g0[E], v10 = g0[G * E], v11 = g0[G * E + E];
    uint16_t *o = out + row * 4 * E + 4 * c; /* column c*4 + ky*2 + kx */
    if (V) {
        reinterpret_cast<uint2 *>(o)[0] = make_uint2(mm_bf16x2(v00, v01), mm_bf16x2(v10, v11));
    } else {
        o[0] = mm_f32_to_bf16(v00), o[1] = mm_f32_to_bf16(v01), o[2] = mm_f32_to_bf16(v10), o[3] = mm_f32_to_bf16(v11);
    }
}

/* ---- attention operands: thread i takes 4 columns (V) or 1 column of token t's E-wide Q, K and V:
 * q copied, K and V rounded to bf16 into the pool at slot t (page page_of[t / B], row t % B); the
 * thread of column 0 sets the slot's position to 0. V needs D % 4 == 0, so the 4 columns of a thread
 * lie in one head and its pool store is one 8-byte word. ---- */
__global__ void __launch_bounds__(kThreads) vis_qkv_k(const bool V, float *q, const float *qkv, int64_t T,
                                                     int64_t E, int64_t D, ck_kv kv) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t per = V ? E / 4 : E; /* threads per token */
    if (i >= T * per) return;
    const int64_t t = i / per, e = (i - t * per) * (V ? 4 : 1), h = e / D, d = e - h * D;
    const float *src = qkv + t * 3 * E + e;
    const int64_t blk = t / kv.B, row = t - blk * kv.B, page = kv.page_of[blk];
    uint16_t *k = kv.pages + ((page * kv.G + h) * 2 * kv.B + row) * kv.D + d, *v = k + kv.B * kv.D;
    if (V) {
        const float4 qv = ck_ld4(src, 0), kf = ck_ld4(src + E, 0), vf = ck_ld4(src + 2 * E, 0);
        ck_st4(q + t * E + e, 0, qv);
        reinterpret_cast<uint2 *>(k)[0] = make_uint2(mm_bf16x2(kf.x, kf.y), mm_bf16x2(kf.z, kf.w));
        reinterpret_cast<uint2 *>(v)[0] = make_uint2(mm_bf16x2(vf.x, vf.y), mm_bf16x2(vf.z, vf.w));
    } else {
        q[t * E + e] = src[0];
        *k = mm_f32_to_bf16(src[E]);
        *v = mm_f32_to_bf16(src[2 * E]);
    }
    if (e == 0) kv.slot_pos[page * kv.B + row] = 0;
}

} // namespace

extern "C" {

int ck_layernorm(ck_stream s, float *y, const float *x, const float *w, const float *b, int64_t n, int64_t E,
                 float eps, int add) {
    if (n < 0 || E < 1 || n > 0x7fffffffLL || !(eps >= 0.0f)) return ck_bad;
    if (n == 0) return 0;
    const bool v = ck_aligned(y, 16) && ck_aligned(x, 16) && ck_aligned(w, 16) && ck_aligned(b, 16) && E % 4 == 0;
    CK_LAUNCH(layernorm_k, (unsigned)n, kLnThreads, 0, s)(v, y, x, w, b, E, eps, add);
    return ck_launch_status();
}

int ck_gelu(ck_stream s, float *x, int64_t n) {
    if (n < 0) return ck_bad;
    if (n == 0) return 0;
    const bool v = ck_aligned(x, 16) && n % 4 == 0;
    const int64_t b = ck_blocks_for(v ? n / 4 : n, kThreads);
    if (!b) return ck_bad;
    CK_LAUNCH(gelu_k, (unsigned)b, kThreads, 0, s)(v, x, n);
    return ck_launch_status();
}

int ck_vis_patches(ck_stream s, uint16_t *out, int64_t ldo, const float *chw, int64_t S, int64_t P, int64_t G) {
    if (P < 1 || G < 0 || P > 0x7fff || G > 0x7fffffffLL / P || S != G * P || ldo < 3 * P * P) return ck_bad;
    if (G == 0) return 0;
    if (G * G > INT64_MAX / ldo) return ck_bad;
    const int64_t b = ck_blocks_for(G * G * ldo, kThreads);
    if (!b) return ck_bad;
    CK_LAUNCH(vis_patches_k, (unsigned)b, kThreads, 0, s)(out, ldo, chw, S, P, G);
    return ck_launch_status();
}

int ck_vis_windows(ck_stream s, uint16_t *out, const float *grid, int64_t G, int64_t E) {
    if (G < 0 || G % 2 != 0 || E < 1 || G > 0x7fffffffLL || E > 0x7fffffffLL) return ck_bad;
    if (G == 0) return 0;
    if ((G / 2) * (G / 2) > INT64_MAX / 4 / E) return ck_bad; /* the output's 4E columns per window */
    const bool v = ck_aligned(out, 8);
    const int64_t b = ck_blocks_for((G / 2) * (G / 2) * E, kThreads);
    if (!b) return ck_bad;
    CK_LAUNCH(vis_windows_k, (unsigned)b, kThreads, 0, s)(v, out, grid, G, E);
    return ck_launch_status();
}

int ck_vis_qkv(ck_stream s, float *q, const float *qkv, int64_t T, int64_t H, int64_t D, ck_kv kv) {
    if (T < 0 || H < 1 || D < 1 || kv.G != H || kv.D != D || kv.B < 1 || H > 0x7fffffffLL / D ||
        T > 0x7fffffffLL)
        return ck_bad;
    if (T == 0) return 0;
    const int64_t E = H * D;
    const bool v = ck_aligned(q, 16) && ck_aligned(qkv, 16) && ck_aligned(kv.pages, 8) && D % 4 == 0;
    const int64_t b = ck_blocks_for(T * (v ? E / 4 : E), kThreads);
    if (!b) return ck_bad;
    CK_LAUNCH(vis_qkv_k, (unsigned)b, kThreads, 0, s)(v, q, qkv, T, E, D, kv);
    return ck_launch_status();
}

} // extern "C"
