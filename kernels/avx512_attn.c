/* avx512_attn.c — the prefill form of grouped attention (mk_attn_block) in zmm registers. Compiled
 * with the AVX-512 flags and reached only through cpu_dispatch.c after its CPU and XCR0 checks.
 *
 * Which calls run here: the tiled form (avx2_attn.c's ATTN_TILED: many query rows, D a multiple of
 * 16 up to 256); every other shape — decode's few rows (the direct forms), odd head sizes — goes to
 * mk_attn_block_avx2, whose forms are bound by reading K and V, not by arithmetic.
 *
 * Numerics: fp32 FMA on K and V widened from bf16, as the AVX2 forms — not VDPBF16PS. A bf16 dot
 * product would round q (and P for P·V) to bf16: at the score magnitudes attention meets (the tests
 * use |score| up to 1e4, where 2^-8 of relative error moves a score by ~40) the softmax weights
 * would change far beyond the tolerance every attention form meets against the scalar reference
 * (docs/PERFORMANCE.md, "AVX-512 kernels"). The scores and the P·V sums run in the same order as
 * avx2_attn.c's tiled form; only the softmax's sum of exponentials is reduced in another order.
 *
 * Layout (the same as the tiled AVX2 form): per sub-block of AZ_KEYS keys, K widened into panels of
 * 16 keys, each [D][16] (one zmm = dim d of 16 keys), and V into panels of 16 columns, each
 * [AZ_KEYS][16] (one zmm = 16 dims of one key). Tiles of up to 12 query rows: S = Q·Kᵀ as 12 x 16
 * (12 accumulators, one K load per 12 FMAs), the online softmax on S in place, O += P·V as
 * 12 x 32 (24 accumulators, two V loads per 24 FMAs). */
#include <math.h>
#include <stdlib.h>

#include "avx512_inline.h"
#include "tls_scratch.h"

#define AZ_KEYS 64  /* keys per sub-block */
#define AZ_DMAX 256 /* largest head size of this form */
#define AZ_MR 12    /* query rows per tile */
#define AZ_CUT 24   /* fewer rows per call: avx2_attn.c's direct (decode) forms, as its AD_CUT */

static _Thread_local float *tl_attn512;
MK_TLS_SCRATCH(tl_attn512)

/* exp(x) for 16 lanes: avx2_inline.h's exp256 (Cephes expf polynomial, ~2 ulp) in zmm. Inputs below
 * -87.3 give 0; callers pass x <= 0 (scores minus their running max). */
INLINE __m512 exp512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f);
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(lo, x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
}

/* The online-softmax step of one row on its scores s[0..nbp) (nbp a multiple of 16): keys j >= nv
 * are masked. Leaves p_j = exp(s_j - m_new) in s (0 past nv) and returns alpha, the old acc's factor. */
static float softmax_row(float *s, int64_t nv, int64_t nbp, float *m, float *l) {
    float mb = -INFINITY;
    for (int64_t j = 0; j < nv; j += 16) { /* a NaN score is skipped, as in the scalar (s > mb ? s : mb) */
        const __mmask16 k = nv - j >= 16 ? 0xffff : (__mmask16)((1u << (nv - j)) - 1);
        const float b = _mm512_mask_reduce_max_ps(k, _mm512_loadu_ps(s + j));
        mb = b > mb ? b : mb;
    }
    const float m_new = mb > *m ? mb : *m;
    if (nv <= 0 || m_new == -INFINITY) { /* nothing visible, or only -inf scores: the state stays */
        for (int64_t j = 0; j < nbp; j++) s[j] = 0.0f;
        return 1.0f;
    }
    const float alpha = *m == -INFINITY ? 0.0f : expf(*m - m_new);
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 ls = _mm512_setzero_ps();
    for (int64_t j = 0; j < nbp; j += 16) {
        const __mmask16 k = nv - j >= 16 ? 0xffff : nv - j <= 0 ? 0 : (__mmask16)((1u << (nv - j)) - 1);
        const __m512 p = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_load_ps(s + j), mv)));
        _mm512_store_ps(s + j, p);
        ls = _mm512_add_ps(ls, p);
    }
    *l = *l * alpha + _mm512_reduce_add_ps(ls);
    *m = m_new;
    return alpha;
}

/* K rows (stride apart) widened into 16-key panels [D][16]: kt[(j/16)*16*D + d*16 + j%16] = K[j][d]
 * for j < nb, zero for nb <= j < nbp; whole 16-key groups through a 16x16 transpose. */
static void widen_k(float *kt, const uint16_t *k, int64_t stride, int64_t nb, int64_t nbp, int64_t D) {
    int64_t j = 0;
    for (; j + 16 <= nb; j += 16)
        for (int64_t d = 0; d < D; d += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = _mm512_castps_si512(bf16x16(k + (j + i) * stride, d));
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_store_si512((void *)(kt + j * D + (d + i) * 16), r[i]);
        }
    for (; j < nbp; j++)
        for (int64_t d = 0; d < D; d++)
            kt[(j / 16) * 16 * D + d * 16 + j % 16] = j < nb ? mk_bf16_to_f32(k[j * stride + d]) : 0.0f;
}

/* K already in the store's bf16 panels: a straight conversion of nbp/16 whole panels. The slots of
 * keys nb <= j < nbp may hold anything (NaN too): their scores are masked, P·V stops at nb. */
static void widen_kp(float *kt, const uint16_t *k, int64_t nbp, int64_t D) {
    for (int64_t i = 0; i < nbp * D; i += 16) _mm512_store_ps(kt + i, bf16x16(k, i));
}

/* V widened in 16-column panels [AZ_KEYS][16]: vb[(d/16)*16*AZ_KEYS + j*16 + d%16] = V[j][d]. */
static void widen_v(float *vb, const uint16_t *v, int64_t stride, int64_t nb, int64_t D) {
    for (int64_t j = 0; j < nb; j++)
        for (int64_t d = 0; d < D; d += 16)
            _mm512_store_ps(vb + d * AZ_KEYS + j * 16, bf16x16(v + j * stride, d));
}

/* s[r][j] = scale * q_r · k_j for r < mr, j < nbp (a multiple of 16), in d order per score. */
INLINE void tile_scores(int mr, float *s, const float *const *qr, const float *kt, int64_t nbp, int64_t D,
                        float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t j = 0; j < nbp; j += 16) {
        __m512 c[AZ_MR];
        for (int r = 0; r < mr; r++) c[r] = _mm512_setzero_ps();
        const float *kp = kt + j * D;
        for (int64_t d = 0; d < D; d++) {
            const __m512 w = _mm512_load_ps(kp + 16 * d);
            for (int r = 0; r < mr; r++) c[r] = _mm512_fmadd_ps(_mm512_set1_ps(qr[r][d]), w, c[r]);
        }
        for (int r = 0; r < mr; r++) _mm512_store_ps(s + r * AZ_KEYS + j, _mm512_mul_ps(c[r], sc));
    }
}

/* acc_r[d] = acc_r[d] * alpha_r + sum_{j < nb} p[r][j] * V[j][d], for r < mr, d < D (multiple of 16):
 * 32 columns (two panels) at a time, a last 16-wide panel when D % 32 == 16. */
INLINE void tile_values(int mr, float *const *accr, const float *alpha, const float *s, const float *vb, int64_t nb,
                        int64_t D) {
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
        __m512 c0[AZ_MR], c1[AZ_MR];
        for (int r = 0; r < mr; r++) {
            const __m512 al = _mm512_set1_ps(alpha[r]);
            c0[r] = _mm512_mul_ps(_mm512_loadu_ps(accr[r] + d), al);
            c1[r] = _mm512_mul_ps(_mm512_loadu_ps(accr[r] + d + 16), al);
        }
        const float *v0 = vb + d * AZ_KEYS, *v1 = vb + (d + 16) * AZ_KEYS;
        for (int64_t j = 0; j < nb; j++) {
            const __m512 a0 = _mm512_load_ps(v0 + 16 * j), a1 = _mm512_load_ps(v1 + 16 * j);
            for (int r = 0; r < mr; r++) {
                const __m512 pj = _mm512_set1_ps(s[r * AZ_KEYS + j]);
                c0[r] = _mm512_fmadd_ps(pj, a0, c0[r]);
                c1[r] = _mm512_fmadd_ps(pj, a1, c1[r]);
            }
        }
        for (int r = 0; r < mr; r++) {
            _mm512_storeu_ps(accr[r] + d, c0[r]);
            _mm512_storeu_ps(accr[r] + d + 16, c1[r]);
        }
    }
    if (d < D) {
        __m512 c[AZ_MR];
        for (int r = 0; r < mr; r++) c[r] = _mm512_mul_ps(_mm512_loadu_ps(accr[r] + d), _mm512_set1_ps(alpha[r]));
        const float *v0 = vb + d * AZ_KEYS;
        for (int64_t j = 0; j < nb; j++) {
            const __m512 a0 = _mm512_load_ps(v0 + 16 * j);
            for (int r = 0; r < mr; r++) c[r] = _mm512_fmadd_ps(_mm512_set1_ps(s[r * AZ_KEYS + j]), a0, c[r]);
        }
        for (int r = 0; r < mr; r++) _mm512_storeu_ps(accr[r] + d, c[r]);
    }
}

ZM_TILE_FNS(scores_mr, tile_scores,
            (float *s, const float *const *qr, const float *kt, int64_t nbp, int64_t D, float scale), s, qr, kt,
            nbp, D, scale)
ZM_TILE_FNS(values_mr, tile_values,
            (float *const *accr, const float *alpha, const float *s, const float *vb, int64_t nb, int64_t D), accr,
            alpha, s, vb, nb, D)

static void tile_scores_any(int mr, float *s, const float *const *qr, const float *kt, int64_t nbp, int64_t D,
                            float scale) {
    ZM_TILE_CALL(scores_mr, s, qr, kt, nbp, D, scale)
}

static void tile_values_any(int mr, float *const *accr, const float *alpha, const float *s, const float *vb,
                            int64_t nb, int64_t D) {
    ZM_TILE_CALL(values_mr, accr, alpha, s, vb, nb, D)
}

/* The tiled form over keys [0, n) of the block. */
static void attn_tiled(const mk_attn_params *p, int64_t n, float *kt, float *vb, float *s) {
    const int64_t D = p->D, rows = p->n_tok * p->n_head;
    for (int64_t j0 = 0; j0 < n; j0 += AZ_KEYS) {
        const int64_t nb = n - j0 < AZ_KEYS ? n - j0 : AZ_KEYS, nbp = (nb + 15) & ~(int64_t)15;
        const uint16_t *k = p->k + j0 * (p->k_panels ? D : p->kv_stride), *v = p->v + j0 * p->kv_stride;
        if (p->k_panels) widen_kp(kt, k, nbp, D);
        else widen_k(kt, k, p->kv_stride, nb, nbp, D);
        widen_v(vb, v, p->kv_stride, nb, D);
        /* the next sub-block's K and V lines come in a few per tile, as in the AVX2 tiled form, so
         * its widening does not wait on memory (docs/PERFORMANCE.md, "The attention forms") */
        const int64_t nn = n - j0 - nb < AZ_KEYS ? n - j0 - nb : AZ_KEYS, lpr = (D * 2 + 63) / 64;
        const int64_t ntile = (rows + AZ_MR - 1) / AZ_MR, per_tile = (2 * nn * lpr + ntile - 1) / ntile;
        int64_t pf = 0;
        for (int64_t r0 = 0; r0 < rows; r0 += AZ_MR) {
            for (int64_t q = 0; q < per_tile && pf < 2 * nn * lpr; q++, pf++) {
                const int64_t row = pf / lpr % nn, line = pf % lpr;
                const int is_k = pf < nn * lpr;
                const char *at = is_k && p->k_panels ? (const char *)(k + nb * D) + pf * 64
                                                     : (const char *)((is_k ? k : v) + (nb + row) * p->kv_stride) + line * 64;
                _mm_prefetch(at, _MM_HINT_T1);
            }
            const int mr = (int)(rows - r0 < AZ_MR ? rows - r0 : AZ_MR);
            const float *qr[AZ_MR];
            float *accr[AZ_MR], alpha[AZ_MR];
            for (int r = 0; r < mr; r++) {
                const int64_t t = (r0 + r) / p->n_head, h = (r0 + r) % p->n_head;
                qr[r] = p->q + t * p->q_ts + h * D;
                accr[r] = p->acc + t * p->acc_ts + h * D;
            }
            tile_scores_any(mr, s, qr, kt, nbp, D, p->scale);
            int64_t nmax = 0;
            for (int r = 0; r < mr; r++) {
                const int64_t t = (r0 + r) / p->n_head, h = (r0 + r) % p->n_head;
                int64_t nv = nb;
                if (p->causal) {
                    const int64_t lim = p->q_pos0 + t - (p->k_pos0 + j0) + 1;
                    nv = lim < 0 ? 0 : lim < nb ? lim : nb;
                }
                alpha[r] = softmax_row(s + r * AZ_KEYS, nv, nbp, p->m + t * p->ml_ts + h, p->l + t * p->ml_ts + h);
                nmax = nv > nmax ? nv : nmax;
            }
            tile_values_any(mr, accr, alpha, s, vb, nmax, D);
        }
    }
}

void mk_attn_block_avx512(const mk_attn_params *p) {
    const int64_t rows = p->n_tok * p->n_head;
    if (rows < AZ_CUT || p->D % 16 || p->D > AZ_DMAX) {
        mk_attn_block_avx2(p);
        return;
    }
    if (!tl_attn512) /* kt, vb: AZ_KEYS x AZ_DMAX each; s: AZ_MR x AZ_KEYS */
        tl_attn512_own(tl_attn512 = aligned_alloc(64, (2 * AZ_KEYS * AZ_DMAX + AZ_MR * AZ_KEYS) * sizeof(float)));
    if (!tl_attn512) {
        mk_attn_block_avx2(p);
        return;
    }
    /* keys past the last token's position are never visible: not even widened */
    int64_t n = p->n;
    if (p->causal) {
        const int64_t lim = p->q_pos0 + p->n_tok - 1 - p->k_pos0 + 1;
        n = lim < 0 ? 0 : lim < n ? lim : n;
    }
    attn_tiled(p, n, tl_attn512, tl_attn512 + AZ_KEYS * AZ_DMAX, tl_attn512 + 2 * AZ_KEYS * AZ_DMAX);
}
