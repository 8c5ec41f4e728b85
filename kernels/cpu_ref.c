/* cpu_ref.c — IEEE half conversions, mk_get, and the scalar reference kernels (suffix _ref).
 *
 * The references are the definition of what every kernel computes: plain loops, element access
 * through mk_get, sums in double. They are slow on purpose; the tests compare the fast paths
 * (kernels/cpu_avx2.c, kernels/cpu_ops.c) against them. */
#include <math.h>
#include <string.h>

#include "kernels.h"

/* ---- IEEE 754 binary16 ---- */

float mk_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t u;
    float f;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in fp32 */
        f = (float)mant * 0x1p-24f;
        return sign ? -f : f;
    }
    if (exp == 31)
        /* inf, or NaN with its payload kept and the quiet bit set (what VCVTPH2PS does) */
        u = sign | 0x7f800000u | (mant ? 0x00400000u | (mant << 13) : 0u);
    else
        u = sign | ((exp + 112u) << 23) | (mant << 13); /* rebias 15 -> 127 */
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest, ties to even; overflow to inf; fp32 subnormals and tiny values to (signed) zero
 * or half subnormals; NaN stays NaN (quiet, top payload bits kept). Matches VCVTPS2PH with RNE. */
uint16_t mk_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    /* 65520 = 0x477ff000 is the tie between 65504 (max half, odd mantissa) and 2^16: rounds up */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {
        /* below 2^-14: the result is round(|f| * 2^24) in units of the half subnormal */
        const uint32_t exp = a >> 23;
        if (exp < 102) return sign; /* |f| < 2^-25: rounds to zero (ties included) */
        const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - exp; /* 14..24 */
        uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++; /* q == 0x400 is the smallest normal */
        return (uint16_t)(sign | q);
    }
    /* normal: rebias 127 -> 15 and drop 13 mantissa bits; a rounding carry moves into the exponent */
    const uint32_t r = a - 0x38000000u;
    uint32_t q = r >> 13;
    const uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

float mk_get(const mk_tensor *t, int64_t i) {
    switch (t->dtype) {
    case MTOK_BF16: return mk_bf16_to_f32(((const uint16_t *)t->data)[i]);
    case MTOK_F16: return mk_f16_to_f32(((const uint16_t *)t->data)[i]);
    case MTOK_F32: return ((const float *)t->data)[i];
    }
    return 0.0f;
}

/* ---- references ---- */

void mk_matmul_ref(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                   const mk_tensor *b) {
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t o = 0; o < W->rows; o++) {
            double s = b ? mk_get(b, o) : 0.0;
            for (int64_t i = 0; i < W->cols; i++) s += (double)x[t * ldx + i] * mk_get(W, o * W->cols + i);
            y[t * ldy + o] = (float)s;
        }
}

/* bf16 as VDPBF16PS reads it: subnormals (and so every value below 2^-126 in magnitude) as zero */
static double bf16_daz(uint16_t h) { return (h & 0x7f80u) ? (double)mk_bf16_to_f32(h) : 0.0; }

void mk_matmul_bf16dot_ref(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                           const mk_tensor *b, int split) {
    if (W->dtype != MTOK_BF16) {
        mk_matmul_ref(y, ldy, x, ldx, n_tok, W, b);
        return;
    }
    const uint16_t *w = W->data;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t o = 0; o < W->rows; o++) {
            double s = b ? mk_get(b, o) : 0.0;
            for (int64_t i = 0; i < W->cols; i++) {
                const float xi = x[t * ldx + i];
                const uint16_t hi = mk_f32_to_bf16(xi);
                const double wi = bf16_daz(w[o * W->cols + i]);
                s += bf16_daz(hi) * wi;
                /* the remainder is exact in fp32; 0 where hi is not finite (avx512_gemv.c) */
                if (split && isfinite(mk_bf16_to_f32(hi))) s += bf16_daz(mk_f32_to_bf16(xi - mk_bf16_to_f32(hi))) * wi;
            }
            y[t * ldy + o] = (float)s;
        }
}

void mk_matmul_multi_ref(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok) {
    for (int i = 0; i < n_jobs; i++)
        mk_matmul_ref(jobs[i].y, jobs[i].ldy, jobs[i].x, jobs[i].ldx, n_tok, jobs[i].W, jobs[i].b);
}

void mk_rmsnorm_ref(float *y, const float *x, const mk_tensor *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    /* the same scale the fast paths use, so they differ only by the order of the sum */
    const float r = mm_rms_scale(ss, n, eps);
    for (int64_t i = 0; i < n; i++) y[i] = mk_get(w, i) * (x[i] * r);
}

/* the textbook online-softmax update, one key at a time; K at k[kat(s, d)] (rows or panels) */
static void accum_ref(const float *q, const uint16_t *k, int kp, const uint16_t *v, int64_t n, int64_t stride,
                      int64_t D, float scale, float *acc, float *m, float *l) {
    for (int64_t s = 0; s < n; s++) {
        const uint16_t *vs = v + s * stride;
        double dot = 0.0;
        for (int64_t d = 0; d < D; d++)
            dot += (double)q[d] * mk_bf16_to_f32(k[kp ? MK_KPANEL_AT(s, d, D) : s * stride + d]);
        const float sc = (float)(dot * scale);
        const float m_new = sc > *m ? sc : *m;
        if (m_new == -INFINITY) continue; /* a -inf score adds nothing */
        const float alpha = *m == -INFINITY ? 0.0f : (float)exp((double)*m - m_new);
        const float p = (float)exp((double)sc - m_new);
        *l = *l * alpha + p;
        for (int64_t d = 0; d < D; d++) acc[d] = acc[d] * alpha + p * mk_bf16_to_f32(vs[d]);
        *m = m_new;
    }
}

void mk_attn_accum_ref(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t stride,
                       int64_t D, float scale, float *acc, float *m, float *l) {
    accum_ref(q, k, 0, v, n, stride, D, scale, acc, m, l);
}

void mk_attn_block_ref(const mk_attn_params *p) {
    for (int64_t t = 0; t < p->n_tok; t++) {
        int64_t nv = p->n;
        if (p->causal) {
            const int64_t lim = p->q_pos0 + t - p->k_pos0 + 1; /* keys at positions <= q_pos0 + t */
            nv = lim < 0 ? 0 : lim < nv ? lim : nv;
        }
        for (int64_t h = 0; h < p->n_head; h++)
            accum_ref(p->q + t * p->q_ts + h * p->D, p->k, p->k_panels, p->v, nv, p->kv_stride, p->D, p->scale,
                              p->acc + t * p->acc_ts + h * p->D, p->m + t * p->ml_ts + h, p->l + t * p->ml_ts + h);
    }
}
