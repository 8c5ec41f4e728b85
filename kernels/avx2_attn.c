/* avx2_attn.c — attention kernels, AVX2 + FMA: the one-row online-softmax step (mk_attn_accum) and
 * the grouped block kernel (mk_attn_block). Compiled with -mavx2 -mfma -mf16c -O3 and reached only
 * through cpu_dispatch.c after a CPU check.
 *
 * ---- The forms of mk_attn_block, and which one runs ----
 * One call is rows = n_tok x n_head query rows of one KV group against the n keys of one KV block
 * (kernels/kernels.h, mk_attn_params). K comes in one of two layouts: token-major rows (k_panels 0)
 * or the KV store's 16-key panels (k_panels 1, MK_KPANEL_AT). attn_choose() is the one place that
 * picks a form; the table is its contract:
 *
 *   form                 runs when                                      why this form there
 *   -------------------  ---------------------------------------------  ------------------------------------------
 *   ATTN_ROWWISE         D > AB_DMAX or D % 8, or no scratch; K rows    any head size: one row at a time through
 *                                                                       mk_attn_accum_avx2 (no tiles, no scratch)
 *   ATTN_REFERENCE       the same, K panels                             mk_attn_accum reads rows only; the scalar
 *                                                                       reference reads either layout
 *   ATTN_DIRECT_ROWS     rows < AD_CUT (24), D % 16 == 0; K rows        decode (one token's heads): widening K/V
 *                                                                       would cost as much as the products it feeds,
 *                                                                       so bf16 is read straight from the block
 *   ATTN_DIRECT_PANELS   rows < AD_CUT (24), D % 16 == 0; K panels      decode on the store's layout: one load is
 *                                                                       dim d of 16 keys, no horizontal sums
 *   ATTN_TILED           every other shape (prefill: 24 tokens x heads)  many rows share one widening of K and V per
 *                                                                       64-key sub-block; 6x16 register tiles
 *
 * The forms sum in different orders, so a shape that changes form may change the last bits of the
 * result; each form is deterministic for its shape (tests/test_kernels.c checks every form against
 * the scalar reference). docs/PERFORMANCE.md, "Why the kernels look like this", has the measurements
 * behind the cut-offs and the prefetch schemes.
 *
 * Names: attn_<form> runs a form (attn_rowwise, attn_direct_rows, attn_direct_panels, attn_tiled);
 * attn_scores / attn_values are the one-row step; ab_ helpers belong to the tiled form ("attention
 * block"), ad_ to the direct forms, ap_ to the panel-layout scores; eo_split / eo_join / bf16_eo
 * keep the even/odd element order the direct forms compute in. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "avx2_inline.h"
#include "tls_scratch.h"

/* ---- the one-row online-softmax step (mk_attn_accum; ATTN_ROWWISE runs it per row) ---- */

#define ATT_SUB 64 /* keys per sub-block: the scores live in a 256-byte stack array */

INLINE __m256 bf16x8(const uint16_t *p) { return load8(p, 0, MTOK_BF16); }

/* s[j] = scale * q . k_j for nb keys, 8 keys at a time (8 independent FMA chains). */
static void attn_scores(float *s, const float *q, const uint16_t *k, int64_t nb, int64_t stride, int64_t D,
                        float scale) {
    const int64_t D8 = D & ~(int64_t)7;
    int64_t j = 0;
    for (; j + 8 <= nb; j += 8) {
        __m256 a[8];
        for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
        for (int64_t d = 0; d < D8; d += 8) {
            const __m256 qv = _mm256_loadu_ps(q + d);
            for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(bf16x8(k + (j + r) * stride + d), qv, a[r]);
        }
        _Alignas(32) float t[8];
        _mm256_store_ps(t, hsum8(a));
        for (int r = 0; r < 8; r++) {
            for (int64_t d = D8; d < D; d++) t[r] += q[d] * mk_bf16_to_f32(k[(j + r) * stride + d]);
            s[j + r] = t[r] * scale;
        }
    }
    for (; j < nb; j++) {
        __m256 a[8];
        for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
        for (int64_t d = 0; d < D8; d += 8) a[0] = _mm256_fmadd_ps(bf16x8(k + j * stride + d), _mm256_loadu_ps(q + d), a[0]);
        /* reduced exactly as in the 8-key loop: equal keys get bitwise equal scores wherever the
         * block boundaries fall (at |score| ~ 1e4 one fp32 ulp is already 1e-3 of weight) */
        float t = _mm256_cvtss_f32(hsum8(a));
        for (int64_t d = D8; d < D; d++) t += q[d] * mk_bf16_to_f32(k[j * stride + d]);
        s[j] = t * scale;
    }
}

/* acc[d] = acc[d] * alpha + sum_j p[j] * v_j[d]. Columns in chunks of 64 (8 registers), so acc is
 * read and written once per sub-block and each v row is read once per chunk. */
static void attn_values(float *acc, float alpha, const float *p, const uint16_t *v, int64_t nb, int64_t stride,
                        int64_t D) {
    const __m256 al = _mm256_set1_ps(alpha);
    int64_t d = 0;
    for (; d + 64 <= D; d += 64) {
        __m256 c[8];
        for (int r = 0; r < 8; r++) c[r] = _mm256_mul_ps(_mm256_loadu_ps(acc + d + 8 * r), al);
        for (int64_t j = 0; j < nb; j++) {
            const __m256 pj = _mm256_broadcast_ss(p + j);
            const uint16_t *vj = v + j * stride + d;
            for (int r = 0; r < 8; r++) c[r] = _mm256_fmadd_ps(pj, bf16x8(vj + 8 * r), c[r]);
        }
        for (int r = 0; r < 8; r++) _mm256_storeu_ps(acc + d + 8 * r, c[r]);
    }
    for (; d + 8 <= D; d += 8) {
        __m256 c = _mm256_mul_ps(_mm256_loadu_ps(acc + d), al);
        for (int64_t j = 0; j < nb; j++) c = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), bf16x8(v + j * stride + d), c);
        _mm256_storeu_ps(acc + d, c);
    }
    for (; d < D; d++) {
        float c = acc[d] * alpha;
        for (int64_t j = 0; j < nb; j++) c += p[j] * mk_bf16_to_f32(v[j * stride + d]);
        acc[d] = c;
    }
}

/* The online-softmax step of one row on its scores s[0..nbp): keys j >= nv are masked. Leaves
 * p_j = exp(s_j - m_new) in s and returns alpha (the factor for the old acc). */
static float ab_softmax_row(float *s, int64_t nv, int64_t nbp, float *m, float *l) {
    if (nv <= 0) { /* nothing visible: the state stays, acc * 1 + 0 */
        for (int64_t j = 0; j < nbp; j++) s[j] = 0.0f;
        return 1.0f;
    }
    /* max over the visible scores; a NaN score is skipped, as in the scalar (s > mb ? s : mb) */
    __m256 mx = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= nv; i += 8) mx = _mm256_max_ps(_mm256_loadu_ps(s + i), mx); /* s > mx ? s : mx */
    _Alignas(32) float t8[8];
    _mm256_store_ps(t8, mx);
    float mb = -INFINITY;
    for (int r = 0; r < 8; r++) mb = t8[r] > mb ? t8[r] : mb;
    for (; i < nv; i++) mb = s[i] > mb ? s[i] : mb;
    const float m_new = mb > *m ? mb : *m;
    if (m_new == -INFINITY) { /* only -inf scores */
        for (int64_t j = 0; j < nbp; j++) s[j] = 0.0f;
        return 1.0f;
    }
    const float alpha = *m == -INFINITY ? 0.0f : expf(*m - m_new);
    const __m256 mv = _mm256_set1_ps(m_new);
    __m256 ls = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= nv; j += 8) {
        const __m256 p = exp256(_mm256_sub_ps(_mm256_load_ps(s + j), mv));
        _mm256_store_ps(s + j, p);
        ls = _mm256_add_ps(ls, p);
    }
    float lsum = hsum(ls);
    for (; j < nv; j++) lsum += s[j] = expf(s[j] - m_new);
    for (; j < nbp; j++) s[j] = 0.0f;
    *l = *l * alpha + lsum;
    *m = m_new;
    return alpha;
}

void mk_attn_accum_avx2(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t stride,
                        int64_t D, float scale, float *acc, float *m, float *l) {
    _Alignas(32) float s[ATT_SUB];
    for (int64_t j0 = 0; j0 < n; j0 += ATT_SUB) {
        const int64_t nb = n - j0 < ATT_SUB ? n - j0 : ATT_SUB;
        attn_scores(s, q, k + j0 * stride, nb, stride, D, scale);
        const float alpha = ab_softmax_row(s, nb, nb, m, l);
        if (*m == -INFINITY) continue; /* only -inf scores so far: nothing to add */
        attn_values(acc, alpha, s, v + j0 * stride, nb, stride, D);
    }
}

/* ---- ATTN_TILED: grouped attention over one KV block, widened tiles (prefill) ----
 * Per sub-block of AB_KEYS keys: K is widened once into kt (transposed, in 16-key panels [D][16]) and
 * V into vb (in 16-column panels [AB_KEYS][16]), so that both products read them in address order;
 * then, for tiles of up to 6 query rows, S = Q·Kᵀ runs as a 6x16 register tile (as
 * the prefill GEMM's micro-kernel), the online-softmax update works on S in place, and O += P·V runs
 * as a second 6x16 tile over D. All rows of the call share the widened block, so K/V cost one read
 * per group instead of one per head. */
#define AB_KEYS 64
#define AB_DMAX 256
#define AB_MR 6

/* kt (AB_KEYS * AB_DMAX) + vb (AB_KEYS * AB_DMAX) + s (AB_MR * AB_KEYS), one per thread, kept */
static _Thread_local float *tl_attn;
MK_TLS_SCRATCH(tl_attn)
static float *tl_attn_alloc(void) {
    float *p = aligned_alloc(64, (2 * AB_KEYS * AB_DMAX + AB_MR * AB_KEYS) * sizeof(float));
    tl_attn_own(p);
    return p;
}


/* K widened and transposed in panels of 16 keys, each panel [D][16]: kt[(j/16)*16*D + d*16 + j%16] =
 * K[j][d] for j < nb (zero for nb <= j < nbp), d < D (D a multiple of 8). */
#define KT_AT(j, d) (((j) / 16) * 16 * D + (d) * 16 + (j) % 16)
static void ab_widen_k(float *kt, const uint16_t *k, int64_t stride, int64_t nb, int64_t nbp, int64_t D) {
    int64_t j = 0;
    for (; j + 8 <= nb; j += 8)
        for (int64_t d = 0; d < D; d += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = load8(k + (j + i) * stride + d, 0, MTOK_BF16);
            transpose8_store_ld(kt + KT_AT(j, d), 16, r);
        }
    for (; j < nbp; j++)
        for (int64_t d = 0; d < D; d++) kt[KT_AT(j, d)] = j < nb ? mk_bf16_to_f32(k[j * stride + d]) : 0.0f;
}
#undef KT_AT

/* The same from a K already in bf16 panels (k_panels): a straight conversion. The slots of keys
 * nb <= j < nbp may hold anything (NaN too): their scores are masked before the softmax and P·V
 * stops at nb, so nothing of them is used (test_kernels fills them with NaN). */
static void ab_widen_kp(float *kt, const uint16_t *k, int64_t nbp, int64_t D) {
    row_to_f32(kt, k, nbp * D, MTOK_BF16);
}

/* V widened in panels of 16 columns, each panel [AB_KEYS][16] (the last one 8 wide when D % 16 == 8):
 * vb[(d/16)*16*AB_KEYS + j*16 + d%16] = V[j][d] for j < nb, d < D. */
static void ab_widen_v(float *vb, const uint16_t *v, int64_t stride, int64_t nb, int64_t D) {
    for (int64_t j = 0; j < nb; j++)
        for (int64_t d = 0; d < D; d += 8)
            _mm256_store_ps(vb + (d / 16) * 16 * AB_KEYS + j * 16 + d % 16, load8(v + j * stride, d, MTOK_BF16));
}

/* s[r][j] = scale * q_r · k_j for r < mr rows, j < nbp (a multiple of 16). */
INLINE void ab_scores(int mr, float *s, const float *const *qr, const float *kt, int64_t nbp, int64_t D,
                      float scale) {
    const __m256 sc = _mm256_set1_ps(scale);
    for (int64_t j = 0; j < nbp; j += 16) {
        __m256 c0[AB_MR], c1[AB_MR];
        for (int r = 0; r < mr; r++) c0[r] = c1[r] = _mm256_setzero_ps();
        const float *kp = kt + j * D; /* the panel of keys j..j+15, read in order */
        for (int64_t d = 0; d < D; d++) {
            const __m256 w0 = _mm256_load_ps(kp + 16 * d), w1 = _mm256_load_ps(kp + 16 * d + 8);
            for (int r = 0; r < mr; r++) {
                const __m256 a = _mm256_broadcast_ss(qr[r] + d);
                c0[r] = _mm256_fmadd_ps(a, w0, c0[r]);
                c1[r] = _mm256_fmadd_ps(a, w1, c1[r]);
            }
        }
        for (int r = 0; r < mr; r++) {
            _mm256_store_ps(s + r * AB_KEYS + j, _mm256_mul_ps(c0[r], sc));
            _mm256_store_ps(s + r * AB_KEYS + j + 8, _mm256_mul_ps(c1[r], sc));
        }
    }
}

/* acc_r[d] = acc_r[d] * alpha_r + sum_{j < nb} p[r][j] * V[j][d], for r < mr, d < D (multiple of 8). */
INLINE void ab_values(int mr, float *const *accr, const float *alpha, const float *s, const float *vb, int64_t nb,
                      int64_t D) {
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
        __m256 c0[AB_MR], c1[AB_MR];
        for (int r = 0; r < mr; r++) {
            const __m256 al = _mm256_set1_ps(alpha[r]);
            c0[r] = _mm256_mul_ps(_mm256_loadu_ps(accr[r] + d), al);
            c1[r] = _mm256_mul_ps(_mm256_loadu_ps(accr[r] + d + 8), al);
        }
        const float *vp = vb + d * AB_KEYS; /* the panel of columns d..d+15, read in order */
        for (int64_t j = 0; j < nb; j++) {
            const __m256 v0 = _mm256_load_ps(vp + 16 * j), v1 = _mm256_load_ps(vp + 16 * j + 8);
            for (int r = 0; r < mr; r++) {
                const __m256 a = _mm256_broadcast_ss(s + r * AB_KEYS + j);
                c0[r] = _mm256_fmadd_ps(a, v0, c0[r]);
                c1[r] = _mm256_fmadd_ps(a, v1, c1[r]);
            }
        }
        for (int r = 0; r < mr; r++) {
            _mm256_storeu_ps(accr[r] + d, c0[r]);
            _mm256_storeu_ps(accr[r] + d + 8, c1[r]);
        }
    }
    for (; d < D; d += 8) {
        __m256 c[AB_MR];
        for (int r = 0; r < mr; r++) c[r] = _mm256_mul_ps(_mm256_loadu_ps(accr[r] + d), _mm256_set1_ps(alpha[r]));
        const float *vp = vb + d * AB_KEYS; /* the last, 8-wide panel */
        for (int64_t j = 0; j < nb; j++) {
            const __m256 v0 = _mm256_load_ps(vp + 16 * j);
            for (int r = 0; r < mr; r++) c[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(s + r * AB_KEYS + j), v0, c[r]);
        }
        for (int r = 0; r < mr; r++) _mm256_storeu_ps(accr[r] + d, c[r]);
    }
}

static void ab_tile(int mr, float *s, const float *const *qr, float *const *accr, float **mr_, float **lr,
                    const int64_t *nv, const float *kt, const float *vb, int64_t nb, int64_t nbp, int64_t D,
                    float scale) {
    float alpha[AB_MR];
    int64_t nmax = 0;
    switch (mr) {
    case 1: ab_scores(1, s, qr, kt, nbp, D, scale); break;
    case 2: ab_scores(2, s, qr, kt, nbp, D, scale); break;
    case 3: ab_scores(3, s, qr, kt, nbp, D, scale); break;
    case 4: ab_scores(4, s, qr, kt, nbp, D, scale); break;
    case 5: ab_scores(5, s, qr, kt, nbp, D, scale); break;
    default: ab_scores(6, s, qr, kt, nbp, D, scale); break;
    }
    for (int r = 0; r < mr; r++) {
        alpha[r] = ab_softmax_row(s + r * AB_KEYS, nv[r], nbp, mr_[r], lr[r]);
        nmax = nv[r] > nmax ? nv[r] : nmax;
    }
    if (nmax > nb) nmax = nb;
    switch (mr) {
    case 1: ab_values(1, accr, alpha, s, vb, nmax, D); break;
    case 2: ab_values(2, accr, alpha, s, vb, nmax, D); break;
    case 3: ab_values(3, accr, alpha, s, vb, nmax, D); break;
    case 4: ab_values(4, accr, alpha, s, vb, nmax, D); break;
    case 5: ab_values(5, accr, alpha, s, vb, nmax, D); break;
    default: ab_values(6, accr, alpha, s, vb, nmax, D); break;
    }
}

/* ---- ATTN_DIRECT_ROWS: few query rows (decode), K in token-major rows ----
 * With a handful of rows (one token's heads of one KV group) the widening and transposing of the
 * tiled form costs about as much as the products it feeds. Here K and V are read as bf16 straight
 * from the block: a 16-element slice of a bf16 row is one 256-bit load whose even elements become
 * fp32 by shifting each 32-bit lane left by 16 and whose odd elements become fp32 by masking the low
 * half. A dot product does not care about the order of d, so the query rows are copied once per call
 * in that order (per 16 dims: the 8 even, then the 8 odd) and q·k is a lane-wise FMA reduced at the
 * end; the acc rows are kept in the same order for the call and put back at its end. */
#define AD_ROWS 32 /* rows the direct form's scratch holds */
#define AD_CUT 24  /* mk_attn_block takes the direct form below this many rows (decode: one token's heads) */
_Static_assert(AD_CUT <= AD_ROWS && AD_ROWS * (AB_DMAX + AB_KEYS) <= AB_KEYS * AB_DMAX, "direct-form scratch");

/* 16 bf16 values at p as fp32: the even ones in *e, the odd ones in *o (one load, a shift, a mask) */
INLINE void bf16_eo(const uint16_t *p, __m256 *e, __m256 *o) {
    const __m256i raw = _mm256_loadu_si256((const __m256i *)p);
    *e = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
    *o = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32((int)0xffff0000u)));
}

/* dst = src with every 16 floats reordered as [0, 2, .., 14, 1, 3, .., 15] (D a multiple of 16) */
INLINE void eo_split(float *dst, const float *src, int64_t D) {
    for (int64_t d = 0; d < D; d += 16) {
        const __m256 a = _mm256_loadu_ps(src + d), b = _mm256_loadu_ps(src + d + 8);
        const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); /* a0 a2 b0 b2 | a4 a6 b4 b6 */
        const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        _mm256_store_ps(dst + d, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
        _mm256_store_ps(dst + d + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8)));
    }
}

/* the inverse of eo_split */
INLINE void eo_join(float *dst, const float *src, int64_t D) {
    for (int64_t d = 0; d < D; d += 16) {
        const __m256 e = _mm256_load_ps(src + d), o = _mm256_load_ps(src + d + 8);
        const __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o); /* x0..3 | x8..11, x4..7 | x12..15 */
        _mm256_storeu_ps(dst + d, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(dst + d + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
}

/* s[r*AB_KEYS + i] = scale * qp_r · k_i for 4 rows r and 2 keys i (k and k2): eight dot products of
 * length D as lane-wise FMA chains in named registers (2 q loads per 4 FMAs), reduced at the end. */
INLINE void ad_dot42(float *s, const float *qp, int64_t D, const uint16_t *k, const uint16_t *k2, float scale) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    for (int64_t d = 0; d < D; d += 16) {
        __m256 e0, o0, e1, o1;
        bf16_eo(k + d, &e0, &o0);
        bf16_eo(k2 + d, &e1, &o1);
        const float *q = qp + d;
        __m256 qe = _mm256_load_ps(q), qo = _mm256_load_ps(q + 8);
        c0 = _mm256_fmadd_ps(e0, qe, c0), c4 = _mm256_fmadd_ps(e1, qe, c4);
        c0 = _mm256_fmadd_ps(o0, qo, c0), c4 = _mm256_fmadd_ps(o1, qo, c4);
        qe = _mm256_load_ps(q + D), qo = _mm256_load_ps(q + D + 8);
        c1 = _mm256_fmadd_ps(e0, qe, c1), c5 = _mm256_fmadd_ps(e1, qe, c5);
        c1 = _mm256_fmadd_ps(o0, qo, c1), c5 = _mm256_fmadd_ps(o1, qo, c5);
        qe = _mm256_load_ps(q + 2 * D), qo = _mm256_load_ps(q + 2 * D + 8);
        c2 = _mm256_fmadd_ps(e0, qe, c2), c6 = _mm256_fmadd_ps(e1, qe, c6);
        c2 = _mm256_fmadd_ps(o0, qo, c2), c6 = _mm256_fmadd_ps(o1, qo, c6);
        qe = _mm256_load_ps(q + 3 * D), qo = _mm256_load_ps(q + 3 * D + 8);
        c3 = _mm256_fmadd_ps(e0, qe, c3), c7 = _mm256_fmadd_ps(e1, qe, c7);
        c3 = _mm256_fmadd_ps(o0, qo, c3), c7 = _mm256_fmadd_ps(o1, qo, c7);
    }
    const __m256 c[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
    const __m256 t = _mm256_mul_ps(hsum8(c), _mm256_set1_ps(scale)); /* lane 4i + r: row r, key i */
    _Alignas(32) float u[8];
    _mm256_store_ps(u, t);
    for (int r = 0; r < 4; r++) s[r * AB_KEYS] = u[r], s[r * AB_KEYS + 1] = u[4 + r];
}

/* accp_r[0..16) = accp_r * alpha_r + sum_{j < nb} p[r][j] v_j[0..16) for r < rb (rows ld floats
 * apart), in the even/odd order: the rb x 2 sums stay in registers while the block's V rows pass. */
INLINE void ad_values(int rb, float *accp, int64_t ld, const float *alpha, const float *s, const uint16_t *v,
                      int64_t stride, int64_t nb) {
    __m256 ce[4], co[4];
    for (int r = 0; r < rb; r++) {
        const __m256 al = _mm256_set1_ps(alpha[r]);
        ce[r] = _mm256_mul_ps(_mm256_load_ps(accp + r * ld), al);
        co[r] = _mm256_mul_ps(_mm256_load_ps(accp + r * ld + 8), al);
    }
    for (int64_t j = 0; j < nb; j++) {
        __m256 ve, vo;
        bf16_eo(v + j * stride, &ve, &vo);
        for (int r = 0; r < rb; r++) {
            const __m256 pj = _mm256_broadcast_ss(s + r * AB_KEYS + j);
            ce[r] = _mm256_fmadd_ps(pj, ve, ce[r]);
            co[r] = _mm256_fmadd_ps(pj, vo, co[r]);
        }
    }
    for (int r = 0; r < rb; r++) {
        _mm256_store_ps(accp + r * ld, ce[r]);
        _mm256_store_ps(accp + r * ld + 8, co[r]);
    }
}

INLINE void ad_values_any(int rb, float *accp, int64_t ld, const float *alpha, const float *s, const uint16_t *v,
                          int64_t stride, int64_t nb) {
    switch (rb) {
    case 1: ad_values(1, accp, ld, alpha, s, v, stride, nb); break;
    case 2: ad_values(2, accp, ld, alpha, s, v, stride, nb); break;
    case 3: ad_values(3, accp, ld, alpha, s, v, stride, nb); break;
    default: ad_values(4, accp, ld, alpha, s, v, stride, nb); break;
    }
}

/* The rest of a direct-form sub-block (keys j0 .. j0+nb of the call, nbp padded) once its scores are
 * in s: every row's online-softmax update, then acc += P·V in 4-row tiles, 16 dims at a time, acc
 * rows in the even/odd order. Shared by the row- and panel-layout forms; inlined into both, as the
 * P·V tiles keep their sums in registers only when the compiler sees the whole loop. */
INLINE void ad_update(const mk_attn_params *p, int64_t j0, int64_t nb, int64_t nbp, float *s, float *accp,
                      const uint16_t *v) {
    const int64_t D = p->D, rows = p->n_tok * p->n_head;
    float alpha[AD_ROWS];
    int64_t nmax = 0;
    for (int64_t row = 0; row < rows; row++) {
        const int64_t t = row / p->n_head, h = row % p->n_head;
        int64_t nv = nb;
        if (p->causal) {
            const int64_t lim = p->q_pos0 + t - (p->k_pos0 + j0) + 1;
            nv = lim < 0 ? 0 : lim < nb ? lim : nb;
        }
        alpha[row] = ab_softmax_row(s + row * AB_KEYS, nv, nbp, p->m + t * p->ml_ts + h, p->l + t * p->ml_ts + h);
        nmax = nv > nmax ? nv : nmax;
    }
    for (int64_t d = 0; d < D; d += 16)
        for (int64_t r0 = 0; r0 < rows; r0 += 4) {
            const int rb = (int)(rows - r0 < 4 ? rows - r0 : 4);
            ad_values_any(rb, accp + r0 * D + d, D, alpha + r0, s + r0 * AB_KEYS, v + d, p->kv_stride, nmax);
        }
}

/* ATTN_DIRECT_ROWS over keys [0, n) of the block (rows <= AD_ROWS, D a multiple of 16). */
static void attn_direct_rows(const mk_attn_params *p, int64_t n, float *qp, float *accp, float *s) {
    const int64_t D = p->D, rows = p->n_tok * p->n_head;
    const int64_t rows4 = (rows + 3) & ~(int64_t)3; /* q rows padded with zeros to whole tiles */
    for (int64_t r = 0; r < rows; r++) {
        const int64_t t = r / p->n_head, h = r % p->n_head;
        eo_split(qp + r * D, p->q + t * p->q_ts + h * D, D);
        eo_split(accp + r * D, p->acc + t * p->acc_ts + h * D, D);
    }
    memset(qp + rows * D, 0, (size_t)((rows4 - rows) * D) * sizeof *qp);
    const int64_t lpr = D * 2 / 64; /* cache lines per K or V row */
    for (int64_t j0 = 0; j0 < n; j0 += AB_KEYS) {
        const int64_t nb = n - j0 < AB_KEYS ? n - j0 : AB_KEYS, nbp = (nb + 15) & ~(int64_t)15;
        const uint16_t *k = p->k + j0 * p->kv_stride, *v = p->v + j0 * p->kv_stride;
        /* DRAM latency, not bandwidth, limits a lone decode row set: while the scores run, prefetch
         * the keys of the next sub-block (or of the caller's next block) and the values of this one,
         * two rows per key pair. Every row tile meets a key pair while its lines are in L1, and the
         * values go 16 dims of every tile at a time: K and V leave L1 once per sub-block rather than
         * once per tile (docs/PERFORMANCE.md, "Why the kernels look like this"). */
        const uint16_t *kn = j0 + AB_KEYS < n ? k + AB_KEYS * p->kv_stride : p->k_next;
        for (int64_t i = 0; i < nb; i += 2) {
            for (int64_t r = i; r < i + 2; r++) /* rows i, i+1: lpr lines of 64 bytes (32 bf16) each */
                for (int64_t at = r * p->kv_stride, e = at + lpr * 32; at < e; at += 32) {
                    if (kn) _mm_prefetch((const char *)(kn + at), _MM_HINT_T0);
                    _mm_prefetch((const char *)(v + at), _MM_HINT_T0);
                }
            /* an odd last key pairs with itself; its second score lands in the row's padding */
            const uint16_t *ki = k + i * p->kv_stride, *ki2 = i + 1 < nb ? ki + p->kv_stride : ki;
            for (int64_t r0 = 0; r0 < rows; r0 += 4)
                ad_dot42(s + r0 * AB_KEYS + i, qp + r0 * D, D, ki, ki2, p->scale);
        }
        ad_update(p, j0, nb, nbp, s, accp, v);
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t t = r / p->n_head, h = r % p->n_head;
        eo_join(p->acc + t * p->acc_ts + h * D, accp + r * D, D);
    }
}

/* ---- ATTN_DIRECT_PANELS: few query rows (decode), K in the KV store's 16-key panels ----
 * One 256-bit load holds dim d of 16 keys; its even keys widen by a shift, its odd keys by a mask,
 * and every row's broadcast q[d] meets both: the scores of 4 rows x 16 keys build up lane-wise in 8
 * registers with no horizontal sum, which the row-layout form spends much of its time on
 * (docs/PERFORMANCE.md, "Why the kernels look like this"). */

/* s[r*AB_KEYS + j] = scale * q_r · k_j for 4 rows r (q rows D apart), the 16 keys of panel kp, in key
 * order. While it runs it prefetches D/2 cache lines: of pk (contiguous: the next keys) and/or of pv
 * (16 rows of D bf16, vstride apart: this panel's values), one each per 2 dims. */
INLINE void ap_scores(float *s, const float *q, int64_t D, const uint16_t *kp, float scale, const uint16_t *pk,
                      const uint16_t *pv, int64_t vstride) {
    __m256 e[4], o[4];
    for (int r = 0; r < 4; r++) e[r] = o[r] = _mm256_setzero_ps();
    int64_t vr = 0, vc = 0; /* the next V line: row, column */
    for (int64_t d = 0; d < D; d += 2) {
        if (pk) _mm_prefetch((const char *)(pk + d * 16), _MM_HINT_T0);
        if (pv) {
            _mm_prefetch((const char *)(pv + vr * vstride + vc), _MM_HINT_T0);
            if ((vc += 32) >= D) vc = 0, vr++;
        }
        for (int64_t dd = d; dd < d + 2; dd++) {
            __m256 ke, ko;
            bf16_eo(kp + 16 * dd, &ke, &ko);
            for (int r = 0; r < 4; r++) {
                const __m256 a = _mm256_broadcast_ss(q + r * D + dd);
                e[r] = _mm256_fmadd_ps(a, ke, e[r]);
                o[r] = _mm256_fmadd_ps(a, ko, o[r]);
            }
        }
    }
    const __m256 sc = _mm256_set1_ps(scale);
    for (int r = 0; r < 4; r++) { /* keys 0 2 .. 14 and 1 3 .. 15 back into key order */
        const __m256 lo = _mm256_unpacklo_ps(e[r], o[r]), up = _mm256_unpackhi_ps(e[r], o[r]);
        _mm256_store_ps(s + r * AB_KEYS, _mm256_mul_ps(_mm256_permute2f128_ps(lo, up, 0x20), sc));
        _mm256_store_ps(s + r * AB_KEYS + 8, _mm256_mul_ps(_mm256_permute2f128_ps(lo, up, 0x31), sc));
    }
}

/* ATTN_DIRECT_PANELS over keys [0, n) of a panel-layout block (rows <= AD_ROWS, D a multiple of 16);
 * the softmax and P·V steps are the row-layout form's. */
static void attn_direct_panels(const mk_attn_params *p, int64_t n, float *qn, float *accp, float *s) {
    const int64_t D = p->D, rows = p->n_tok * p->n_head;
    const int64_t rows4 = (rows + 3) & ~(int64_t)3; /* q rows padded with zeros to whole tiles */
    for (int64_t r = 0; r < rows; r++) {
        const int64_t t = r / p->n_head, h = r % p->n_head;
        memcpy(qn + r * D, p->q + t * p->q_ts + h * D, (size_t)D * sizeof *qn);
        eo_split(accp + r * D, p->acc + t * p->acc_ts + h * D, D);
    }
    memset(qn + rows * D, 0, (size_t)((rows4 - rows) * D) * sizeof *qn);
    for (int64_t j0 = 0; j0 < n; j0 += AB_KEYS) {
        const int64_t nb = n - j0 < AB_KEYS ? n - j0 : AB_KEYS, nbp = (nb + 15) & ~(int64_t)15;
        const uint16_t *k = p->k + j0 * D, *v = p->v + j0 * p->kv_stride;
        /* the next sub-block's keys (or the caller's next block's) come in while the first row tile
         * runs, this sub-block's values while the second does (the first, with a single tile) */
        const uint16_t *kn = j0 + AB_KEYS < n ? k + AB_KEYS * D : p->k_next;
        for (int64_t i = 0; i < nbp; i += 16)
            for (int64_t r0 = 0; r0 < rows4; r0 += 4) {
                const uint16_t *pk = r0 == 0 && kn ? kn + i * D : NULL;
                const uint16_t *pv = r0 == 4 || (r0 == 0 && rows4 == 4) ? v + i * p->kv_stride : NULL;
                ap_scores(s + r0 * AB_KEYS + i, qn + r0 * D, D, k + i * D, p->scale, pk, pv, p->kv_stride);
            }
        ad_update(p, j0, nb, nbp, s, accp, v);
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t t = r / p->n_head, h = r % p->n_head;
        eo_join(p->acc + t * p->acc_ts + h * D, accp + r * D, D);
    }
}

/* ATTN_TILED over keys [0, n) of the block: per 64-key sub-block, K and V widened once into kt and
 * vb, then every 6-row tile of the call runs ab_tile on them. */
static void attn_tiled(const mk_attn_params *p, int64_t n, float *kt, float *vb, float *s) {
    const int64_t D = p->D, rows = p->n_tok * p->n_head;
    for (int64_t j0 = 0; j0 < n; j0 += AB_KEYS) {
        const int64_t nb = n - j0 < AB_KEYS ? n - j0 : AB_KEYS, nbp = (nb + 15) & ~(int64_t)15;
        const uint16_t *k = p->k + j0 * (p->k_panels ? D : p->kv_stride), *v = p->v + j0 * p->kv_stride;
        if (p->k_panels) ab_widen_kp(kt, k, nbp, D);
        else ab_widen_k(kt, k, p->kv_stride, nb, nbp, D);
        ab_widen_v(vb, v, p->kv_stride, nb, D);
        /* the next sub-block's K and V rows (L3 or DRAM) are prefetched a few lines per tile, so its
         * widening does not wait on every 8-row gather. The q and acc rows are not: the engine's
         * prefill calls (24 tokens' heads) keep them in L2 across blocks (docs/PERFORMANCE.md). */
        const int64_t nn = n - j0 - nb < AB_KEYS ? n - j0 - nb : AB_KEYS, lpr = (D * 2 + 63) / 64;
        const int64_t ntile = (rows + AB_MR - 1) / AB_MR, per_tile = (2 * nn * lpr + ntile - 1) / ntile;
        int64_t pf = 0;
        for (int64_t r0 = 0; r0 < rows; r0 += AB_MR) {
            for (int64_t q = 0; q < per_tile && pf < 2 * nn * lpr; q++, pf++) {
                const int64_t row = pf / lpr % nn, line = pf % lpr;
                const int is_k = pf < nn * lpr;
                const char *at = is_k && p->k_panels /* panels: the next keys are contiguous */
                                     ? (const char *)(k + nb * D) + pf * 64
                                     : (const char *)((is_k ? k : v) + (nb + row) * p->kv_stride) + line * 64;
                _mm_prefetch(at, _MM_HINT_T1);
            }
            const int mr = (int)(rows - r0 < AB_MR ? rows - r0 : AB_MR);
            const float *qr[AB_MR];
            float *accr[AB_MR], *mr_[AB_MR], *lr[AB_MR];
            int64_t nv[AB_MR];
            for (int r = 0; r < mr; r++) {
                const int64_t t = (r0 + r) / p->n_head, h = (r0 + r) % p->n_head;
                qr[r] = p->q + t * p->q_ts + h * D;
                accr[r] = p->acc + t * p->acc_ts + h * D;
                mr_[r] = p->m + t * p->ml_ts + h;
                lr[r] = p->l + t * p->ml_ts + h;
                nv[r] = nb;
                if (p->causal) {
                    const int64_t lim = p->q_pos0 + t - (p->k_pos0 + j0) + 1;
                    nv[r] = lim < 0 ? 0 : lim < nb ? lim : nb;
                }
            }
            ab_tile(mr, s, qr, accr, mr_, lr, nv, kt, vb, nb, nbp, D, p->scale);
        }
    }
}

/* ATTN_ROWWISE: each query row on its own through the one-row step (any D, no scratch). */
static void attn_rowwise(const mk_attn_params *p) {
    const int64_t D = p->D;
    for (int64_t t = 0; t < p->n_tok; t++) {
        int64_t nv = p->n;
        if (p->causal) {
            const int64_t lim = p->q_pos0 + t - p->k_pos0 + 1;
            nv = lim < 0 ? 0 : lim < nv ? lim : nv;
        }
        for (int64_t h = 0; h < p->n_head; h++)
            mk_attn_accum_avx2(p->q + t * p->q_ts + h * D, p->k, p->v, nv, p->kv_stride, D, p->scale,
                               p->acc + t * p->acc_ts + h * D, p->m + t * p->ml_ts + h, p->l + t * p->ml_ts + h);
    }
}

/* ---- the choice (the table at the top of this file) ---- */
typedef enum { ATTN_ROWWISE, ATTN_REFERENCE, ATTN_DIRECT_ROWS, ATTN_DIRECT_PANELS, ATTN_TILED } attn_form;

static attn_form attn_choose(const mk_attn_params *p, int have_scratch) {
    const int64_t rows = p->n_tok * p->n_head;
    if (p->D > AB_DMAX || p->D % 8 || !have_scratch) return p->k_panels ? ATTN_REFERENCE : ATTN_ROWWISE;
    if (rows < AD_CUT && p->D % 16 == 0) return p->k_panels ? ATTN_DIRECT_PANELS : ATTN_DIRECT_ROWS;
    return ATTN_TILED;
}

/* Keys of the block that any query row of the call can see: those past the last token's position
 * are never visible, so the block forms do not even widen or read them. */
static int64_t attn_visible_keys(const mk_attn_params *p) {
    int64_t n = p->n;
    if (p->causal) {
        const int64_t lim = p->q_pos0 + p->n_tok - 1 - p->k_pos0 + 1;
        n = lim < 0 ? 0 : lim < n ? lim : n;
    }
    return n;
}

void mk_attn_block_avx2(const mk_attn_params *p) {
    if (!tl_attn) tl_attn = tl_attn_alloc();
    /* the scratch (NULL only for the first two forms): kt, then vb at AB_KEYS * AB_DMAX, then s for
     * the tiled form; the direct forms put q in kt's place, acc in vb's and s after q */
    float *const kt = tl_attn;
    switch (attn_choose(p, tl_attn != NULL)) {
    case ATTN_REFERENCE: mk_attn_block_ref(p); break;
    case ATTN_ROWWISE: attn_rowwise(p); break;
    case ATTN_DIRECT_ROWS:
        attn_direct_rows(p, attn_visible_keys(p), kt, kt + AB_KEYS * AB_DMAX, kt + AD_ROWS * AB_DMAX);
        break;
    case ATTN_DIRECT_PANELS:
        attn_direct_panels(p, attn_visible_keys(p), kt, kt + AB_KEYS * AB_DMAX, kt + AD_ROWS * AB_DMAX);
        break;
    case ATTN_TILED:
        attn_tiled(p, attn_visible_keys(p), kt, kt + AB_KEYS * AB_DMAX, kt + 2 * AB_KEYS * AB_DMAX);
        break;
    }
}
