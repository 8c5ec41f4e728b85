/* mtok_math.h — the small pieces of arithmetic that the CPU kernels (the C11 files of kernels/) and
 * the CUDA kernels (the .cu files of cuda/, built by nvcc or run on the CPU through tests/cuda_shim)
 * must compute the same way (prefix mm_). Each helper is written once here, so a rounding rule, an
 * empty-state rule or a RoPE sign cannot drift between the backends.
 *
 * Compiled three ways: plain C (MM_HD adds nothing), nvcc (MM_HD = __host__ __device__, so the same
 * function is callable from a kernel and from host code), and host C++ under MTOK_CUDA_SHIM (plain
 * host functions, like C).
 *
 * Bit-exactness. On the host every helper is exactly the arithmetic the CPU path had before it
 * moved here (the CPU results did not change by one bit). nvcc may contract a*b + c into one FMA and
 * its expf differs from glibc's by an ulp or two, so device results of the float helpers agree
 * with the CPU within rounding, not bit for bit; the integer helpers (bf16 conversion, block rows)
 * agree exactly everywhere.
 *
 * Conventions: softmax state is natural-log (m = largest scaled score, d or l = sum exp(s - m),
 * o or acc = sum exp(s - m) v); m = -INFINITY with d = 0 is the empty state. */
#ifndef MTOK_MM_MATH_H
#define MTOK_MM_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
/* nvcc rejects a second inline specifier next to __forceinline__; always_inline keeps the intent */
#define MM_HD __host__ __device__ __attribute__((always_inline))
#else
#define MM_HD
#endif
/* a loop nvcc must unroll (an array indexed by it stays in registers: no local memory); only in
 * the device pass (the host compiler nvcc runs would warn about the pragma) */
#if defined(__CUDA_ARCH__)
#define MM_UNROLL _Pragma("unroll")
#else
#define MM_UNROLL
#endif

/* ---- bf16 <-> fp32 ---- */

MM_HD static inline uint32_t mm_f32_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

MM_HD static inline float mm_bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

/* bf16 is the top half of an fp32: widening is exact */
MM_HD static inline float mm_bf16_to_f32(uint16_t h) { return mm_bits_f32((uint32_t)h << 16); }

/* Round to nearest, ties to even; overflow rounds to inf; NaN keeps its top payload bits and gets
 * the quiet bit (adding the rounding bias to a NaN could carry it into inf). */
MM_HD static inline uint16_t mm_f32_to_bf16(float f) {
    uint32_t u = mm_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The two bf16 of a 32-bit word as read from memory (little-endian: element 0 in the low half), and
 * the word that stores two: for 16-byte loads that carry 8 bf16 in 4 words. */
MM_HD static inline float mm_bf16_lo(uint32_t w) { return mm_bits_f32(w << 16); }
MM_HD static inline float mm_bf16_hi(uint32_t w) { return mm_bits_f32(w & 0xffff0000u); }
MM_HD static inline uint32_t mm_bf16x2(float lo, float hi) {
    return (uint32_t)mm_f32_to_bf16(lo) | (uint32_t)mm_f32_to_bf16(hi) << 16;
}

/* ---- elementwise ---- */

/* SiLU(x) = x / (1 + exp(-x)); swiglu is mm_silu(gate) * up, in that order. */
MM_HD static inline float mm_silu(float x) { return x / (1.0f + expf(-x)); }

/* GELU in its exact form x/2 (1 + erf(x/sqrt 2)) (PyTorch's nn.GELU(); GLM-4V's vision tower). */
MM_HD static inline float mm_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

/* One element of LayerNorm: (x - mean) * rstd * w + b, mean and rstd of the row rounded to fp32 once
 * (the CPU computes them in double, the GPU in fp32 in a fixed order). */
MM_HD static inline float mm_ln_elem(float x, float mean, float rstd, float w, float b) {
    return (x - mean) * rstd * w + b;
}

/* One RoPE pair (x0, x1) = dims (2i, 2i+1) of a head, rotated by the angle whose cos, sin are c, s. */
MM_HD static inline void mm_rope_pair(float *x0, float *x1, float c, float s) {
    const float a = *x0, b = *x1;
    *x0 = a * c - b * s;
    *x1 = a * s + b * c;
}

/* RMSNorm's scale 1/sqrt(ss/n + eps) from the sum of squares ss of n elements, in double then
 * rounded once to fp32 (0 for an empty row). The CPU sums ss in double; the GPU sums in fp32 in a
 * fixed order and widens the sum: one division and one sqrt per row, so double costs nothing, and
 * the scale differs from the CPU's only through the sum. */
MM_HD static inline float mm_rms_scale(double ss, int64_t n, float eps) {
    return n > 0 ? (float)(1.0 / sqrt(ss / (double)n + (double)eps)) : 0.0f;
}

/* The factor that turns attention partials into the output, o * mm_attn_inv(d): 1/d, and 0 for a row
 * that saw no key (d = 0) or whose denominator is NaN (the non-finite check reports those first). */
MM_HD static inline float mm_attn_inv(float d) { return d > 0 ? 1.0f / d : 0.0f; }

/* ---- online softmax, one score at a time ----
 * Folds the scaled score sc into the state whose running max is *m: returns 0 when there is nothing
 * to add (the new max is still -inf: a -inf score into an empty state), else 1 with *m updated and
 * the caller applies l = l*alpha + p, acc[d] = acc[d]*alpha + p*v[d]. alpha = 0 when the state was
 * empty (its l and acc are 0 anyway; exp(-inf - m) is avoided so no NaN can appear). fp32 expf; the
 * scalar reference kernels/cpu_ref.c keeps its double exp as the definition the others are tested
 * against. */
MM_HD static inline int mm_softmax_step(float sc, float *m, float *alpha, float *p) {
    const float m_new = sc > *m ? sc : *m;
    if (m_new == -INFINITY) return 0;
    *alpha = *m == -INFINITY ? 0.0f : expf(*m - m_new);
    *p = expf(sc - m_new);
    *m = m_new;
    return 1;
}

/* ---- the (o, m, d) log-sum-exp merge ----
 * merge(1, 2) with side i = (o_i [D], m_i, d_i): an empty side (m = -inf) contributes nothing and is
 * never multiplied (its o may be anything); both sides empty gives side 1 unchanged, never NaN.
 * Otherwise m = max(m1, m2) and every o and d element is x1*a1 + x2*a2 with a_i = exp(m_i - m) <= 1,
 * so nothing overflows. Per element, so a kernel can give each thread its own columns:
 *   mm_merge_w w = mm_merge_factors(m1, m2);
 *   o[j] = mm_merge_elem(w, o1[j], o2[j]); d = mm_merge_elem(w, d1, d2); m = w.m; */
typedef struct {
    float m;      /* the merged max */
    float a1, a2; /* the factors of side 1 and side 2 (when keep == 0) */
    int keep;     /* 1: side 2 empty, the result is side 1; 2: side 1 empty, it is side 2; 0: mix */
} mm_merge_w;

MM_HD static inline mm_merge_w mm_merge_factors(float m1, float m2) {
    mm_merge_w w;
    w.a1 = 1.0f, w.a2 = 0.0f;
    if (m2 == -INFINITY) {
        w.m = m1, w.keep = 1;
    } else if (m1 == -INFINITY) {
        w.m = m2, w.a1 = 0.0f, w.a2 = 1.0f, w.keep = 2;
    } else {
        w.m = m1 > m2 ? m1 : m2;
        w.a1 = expf(m1 - w.m), w.a2 = expf(m2 - w.m), w.keep = 0;
    }
    return w;
}

MM_HD static inline float mm_merge_elem(mm_merge_w w, float x1, float x2) {
    return w.keep == 1 ? x1 : w.keep == 2 ? x2 : x1 * w.a1 + x2 * w.a2;
}

/* The whole merge of one row in place into side 1 (o1 [D]), on one thread: kernels/cpu_ops.c
 * mk_attn_merge is this. */
MM_HD static inline void mm_merge_row(float *o1, float *m1, float *d1, const float *o2, float m2, float d2,
                                      int64_t D) {
    const mm_merge_w w = mm_merge_factors(*m1, m2);
    if (w.keep == 1) return;
    /* the case tested once, not per element: the mix loop stays a plain vectorisable loop */
    if (w.keep == 2)
        for (int64_t j = 0; j < D; j++) o1[j] = o2[j];
    else
        for (int64_t j = 0; j < D; j++) o1[j] = o1[j] * w.a1 + o2[j] * w.a2;
    *d1 = mm_merge_elem(w, *d1, d2);
    *m1 = w.m;
}

/* ---- topk block scoring (the Quest-style bound of kvstore/kvsummary.c) ---- */

/* A product that is never contracted into an FMA (nvcc may fuse a*b + c; the bound below must give
 * the CPU's bits on the device too). */
MM_HD static inline float mm_mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

/* Folds key row r (bf16 k[row]) into a block summary lo, hi [row] (bf16 bits): row 0 starts it,
 * later rows widen it, compared as floats, so equal values (+0 and -0) keep the first one seen.
 * kvstore/kvsummary.c kvsum_row is this rule; the device rebuilds a block with it in row order. */
MM_HD static inline void mm_sum_widen(uint16_t *lo, uint16_t *hi, uint16_t k, int64_t r) {
    if (r == 0) {
        *lo = k, *hi = k;
        return;
    }
    const float x = mm_bf16_to_f32(k);
    if (x < mm_bf16_to_f32(*lo)) *lo = k;
    if (x > mm_bf16_to_f32(*hi)) *hi = k;
}

/* The upper bound of q·k of one block for the nh query heads of one KV group: max over heads of
 * Σ_d max over the query box corners of q_d·k_d, k_d in [lo_d, hi_d] (bf16 summary rows of the
 * group's D channels). qlo == qhi: one query per head (the two-corner form). Per head the channels
 * go into eight running sums, channel d into sum d % 8 in order of d, then the tail (D % 8 channels)
 * and the eight sums are added in order: exactly kvstore/kvsummary.c kvsum_bound's order (whose
 * eight sums are what lets GCC vectorise it without reassociating), so host and device give the
 * same bits. Heads compare with >, starting from -inf. */
MM_HD static inline float mm_topk_bound(const float *qlo, const float *qhi, const uint16_t *lo, const uint16_t *hi,
                                        int64_t D, int64_t nh) {
    const int one = qlo == qhi;
    const int64_t D8 = D / 8 * 8;
    float best = -INFINITY;
    for (int64_t h = 0; h < nh; h++) {
        const float *ql = qlo + h * D, *qh = qhi + h * D;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t d = 0; d < D8; d += 8)
            MM_UNROLL for (int j = 0; j < 8; j++) {
                const float kl = mm_bf16_to_f32(lo[d + j]), kh = mm_bf16_to_f32(hi[d + j]);
                const float a = mm_mul_rn(qh[d + j], kh), c = mm_mul_rn(qh[d + j], kl);
                float x = a > c ? a : c;
                if (!one) {
                    const float e = mm_mul_rn(ql[d + j], kh), f = mm_mul_rn(ql[d + j], kl);
                    const float y = e > f ? e : f;
                    x = x > y ? x : y;
                }
                acc[j] += x;
            }
        float s = 0;
        for (int64_t d = D8; d < D; d++) { /* head_dim not a multiple of 8 */
            const float kl = mm_bf16_to_f32(lo[d]), kh = mm_bf16_to_f32(hi[d]);
            const float a = mm_mul_rn(qh[d], kh), c = mm_mul_rn(qh[d], kl), e = mm_mul_rn(ql[d], kh),
                        f = mm_mul_rn(ql[d], kl);
            const float x = a > c ? a : c, y = e > f ? e : f;
            s += x > y ? x : y;
        }
        MM_UNROLL for (int j = 0; j < 8; j++) s += acc[j];
        if (s > best) best = s;
    }
    return best;
}

/* The rank key of candidate block i (index from the first candidate) with bound sc: a larger key
 * ranks above. core/attn.c ranks by the higher bound, then the earlier block; as one unsigned
 * integer, the float's order-preserving bits above the complement of the index. +0 and -0 get the
 * same key (the CPU's > treats them as equal), NaN the lowest (a NaN bound never wins there either:
 * it needs finite queries and keys to be impossible). */
MM_HD static inline uint64_t mm_topk_key(float sc, int64_t i) {
    uint32_t u = mm_f32_bits(sc == 0.0f ? 0.0f : sc);
    u = sc != sc ? 0u : (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (uint64_t)u << 32 | (uint64_t)(0xffffffffu - (uint32_t)i);
}

/* The topk policy's ranges of blocks for queries at KV positions pos .. pos+n-1 (core/attn.c
 * topk_select, docs/KVSTORE.md "Policy topk"): nb blocks hold keys; [0, m0) are the sinks and
 * [m1, nb) the blocks that end within the last `window` tokens before the chunk plus the chunk's own,
 * all attended; the m1 - m0 blocks in between are the candidates ranked by mm_topk_bound. */
MM_HD static inline void mm_topk_range(int64_t pos, int64_t n, int64_t B, int64_t sink_blocks, int64_t window,
                                       int64_t *nb, int64_t *m0, int64_t *m1) {
    const int64_t b_end = (pos + n + B - 1) / B;
    const int64_t lo = sink_blocks < b_end ? sink_blocks : b_end;
    int64_t hi = pos - window > 0 ? (pos - window) / B : 0;
    hi = hi < lo ? lo : hi > b_end ? b_end : hi;
    *nb = b_end, *m0 = lo, *m1 = hi;
}

/* ---- paged KV ---- */

/* Valid rows of logical block b (B tokens each) when kv_len positions exist: B for full blocks,
 * the remainder for the last one, 0 past the end. */
MM_HD static inline int64_t mm_block_rows(int64_t kv_len, int64_t b, int64_t B) {
    const int64_t r = kv_len - b * B;
    return r <= 0 ? 0 : r < B ? r : B;
}

#endif
