/* cpu_avx2.c — AVX2 + FMA + F16C row ops and attention (the matrix products are in avx2_gemv.c and
 * avx2_gemm.c). Compiled alone with -mavx2 -mfma -mf16c -O3 and only reached through cpu_dispatch.c
 * after a CPU check, so nothing here may run on other CPUs.
 *
 * All arithmetic is fp32 with fp32 accumulation. Weights stay in their stored dtype (bf16 mostly)
 * and are widened in registers: bf16 -> fp32 is a zero-extend and a 16-bit shift, f16 uses F16C. */
#include <math.h>
#include <stdlib.h>

#include "avx2_inline.h"

/* exp(x) for 8 lanes, ~2 ulp (Cephes expf polynomial). Inputs below -87.3 give exactly 0 and
 * inputs above 88 give exp(88) instead of overflowing: callers only need exp(<= 0) and silu. */
INLINE __m256 exp256(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    const __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    /* operand order matters: max/min return their second operand for NaN, so NaN passes through */
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));
    /* x = n*ln2 + r, |r| <= ln2/2, with ln2 split in two so that n*ln2_hi is exact */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n built in the exponent field; n is in [-126, 127], so it is always a normal number */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* ---- row ops ---- */

void mk_row_to_f32_avx2(float *dst, const void *src, mtok_dtype dt, int64_t n) {
    switch (dt) {
    case MTOK_BF16: row_to_f32(dst, src, n, MTOK_BF16); break;
    case MTOK_F16: row_to_f32(dst, src, n, MTOK_F16); break;
    case MTOK_F32: row_to_f32(dst, src, n, MTOK_F32); break;
    }
}

/* y[i] = w[i] * (x[i] * r): the same operation order as mk_rmsnorm_ref. */
INLINE void rms_apply(float *y, const float *x, const void *w, int64_t n, float r, mtok_dtype dt) {
    const __m256 rv = _mm256_set1_ps(r);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(load8(w, i, dt), _mm256_mul_ps(_mm256_loadu_ps(x + i), rv)));
    for (; i < n; i++) y[i] = load1(w, i, dt) * (x[i] * r);
}

void mk_rmsnorm_avx2(float *y, const float *x, const mk_tensor *w, int64_t n, float eps) {
    /* sum of squares in double (4 accumulators): costs nothing next to the matmuls and keeps the
     * result within rounding of the reference for any n */
    __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 a = _mm256_loadu_ps(x + i), c = _mm256_loadu_ps(x + i + 8);
        const __m256d a0 = _mm256_cvtps_pd(_mm256_castps256_ps128(a)), a1 = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
        const __m256d c0 = _mm256_cvtps_pd(_mm256_castps256_ps128(c)), c1 = _mm256_cvtps_pd(_mm256_extractf128_ps(c, 1));
        s0 = _mm256_fmadd_pd(a0, a0, s0);
        s1 = _mm256_fmadd_pd(a1, a1, s1);
        s2 = _mm256_fmadd_pd(c0, c0, s2);
        s3 = _mm256_fmadd_pd(c1, c1, s3);
    }
    double part[4];
    _mm256_storeu_pd(part, _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
    double ss = (part[0] + part[1]) + (part[2] + part[3]);
    for (; i < n; i++) ss += (double)x[i] * x[i];
    const float r = n > 0 ? (float)(1.0 / sqrt(ss / (double)n + (double)eps)) : 0.0f;
    switch (w->dtype) {
    case MTOK_BF16: rms_apply(y, x, w->data, n, r, MTOK_BF16); break;
    case MTOK_F16: rms_apply(y, x, w->data, n, r, MTOK_F16); break;
    case MTOK_F32: rms_apply(y, x, w->data, n, r, MTOK_F32); break;
    }
}

#define ROPE_MAX 1024

void mk_rope_avx2(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float *cs,
                  const float *sn) {
    const int64_t half = rope_dim / 2;
    if (half * 2 > ROPE_MAX) {
        mk_rope_portable(x, n_heads, head_dim, rope_dim, cs, sn);
        return;
    }
    /* Per-lane tables so one pair rotation is x*cc + swap(x)*ss:
     *   out[2i] = x[2i]*c - x[2i+1]*s,  out[2i+1] = x[2i+1]*c + x[2i]*s. */
    _Alignas(32) float cc[ROPE_MAX], ss[ROPE_MAX];
    for (int64_t i = 0; i < half; i++) {
        cc[2 * i] = cc[2 * i + 1] = cs[i];
        ss[2 * i] = -sn[i];
        ss[2 * i + 1] = sn[i];
    }
    const int64_t nv = 2 * half;
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        int64_t i = 0;
        for (; i + 8 <= nv; i += 8) {
            const __m256 a = _mm256_loadu_ps(v + i);
            const __m256 sw = _mm256_permute_ps(a, 0xB1); /* swap the two floats of every pair */
            _mm256_storeu_ps(v + i, _mm256_fmadd_ps(a, _mm256_load_ps(cc + i), _mm256_mul_ps(sw, _mm256_load_ps(ss + i))));
        }
        for (; i < nv; i += 2) {
            const float a = v[i], c = v[i + 1];
            v[i] = a * cc[i] + c * ss[i];
            v[i + 1] = c * cc[i] + a * ss[i + 1];
        }
    }
}

void mk_swiglu_avx2(float *out, const float *gate, const float *up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i);
        const __m256 e = exp256(_mm256_xor_ps(g, neg)); /* exp(-g) */
        _mm256_storeu_ps(out + i, _mm256_div_ps(_mm256_mul_ps(g, u), _mm256_add_ps(one, e)));
    }
    for (; i < n; i++) out[i] = gate[i] * up[i] / (1.0f + expf(-gate[i]));
}

void mk_f32_to_bf16_row_avx2(uint16_t *dst, const float *src, int64_t n) {
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff), quiet = _mm256_set1_epi32(0x40);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_loadu_si256((const __m256i *)(src + i));
        /* round to nearest even: add 0x7fff + the lowest kept bit, then drop 16 bits */
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
        const __m256i rnd = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), 16);
        /* NaN: truncate and set the quiet bit, as mk_f32_to_bf16 does */
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs), inf);
        const __m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
        const __m256i r = _mm256_blendv_epi8(rnd, qn, nan);
        /* values are < 2^16, so the saturating pack is exact; it interleaves lanes, hence the permute */
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_castsi256_si128(p));
    }
    for (; i < n; i++) dst[i] = mk_f32_to_bf16(src[i]);
}

/* ---- attention ---- */

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

/* ---- grouped attention over one KV block (mk_attn_block) ----
 * Per sub-block of AB_KEYS keys: K is widened once into kt (transposed, in 16-key panels [D][16]) and
 * V into vb (in 16-column panels [AB_KEYS][16]), so that both products read them in address order; then, for tiles of up to 6 query rows, S = Q·Kᵀ runs as a 6x16 register tile (as
 * the prefill GEMM's micro-kernel), the online-softmax update works on S in place, and O += P·V runs
 * as a second 6x16 tile over D. All rows of the call share the widened block, so K/V cost one read
 * per group instead of one per head. */
#define AB_KEYS 64
#define AB_DMAX 256
#define AB_MR 6

/* kt (AB_KEYS * AB_DMAX) + vb (AB_KEYS * AB_DMAX) + s (AB_MR * AB_KEYS), one per thread, kept */
static _Thread_local float *tl_attn;


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

void mk_attn_block_avx2(const mk_attn_params *p) {
    const int64_t D = p->D, rows = p->n_tok * p->n_head;
    if (!tl_attn) tl_attn = aligned_alloc(64, (2 * AB_KEYS * AB_DMAX + AB_MR * AB_KEYS) * sizeof(float));
    if (D > AB_DMAX || D % 8 || !tl_attn) { /* unusual shapes: one row at a time */
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
        return;
    }
    float *kt = tl_attn, *vb = kt + AB_KEYS * AB_DMAX, *s = vb + AB_KEYS * AB_DMAX;
    /* keys past the last token's position are never visible: do not even widen them */
    int64_t n = p->n;
    if (p->causal) {
        const int64_t lim = p->q_pos0 + p->n_tok - 1 - p->k_pos0 + 1;
        n = lim < 0 ? 0 : lim < n ? lim : n;
    }
    for (int64_t j0 = 0; j0 < n; j0 += AB_KEYS) {
        const int64_t nb = n - j0 < AB_KEYS ? n - j0 : AB_KEYS, nbp = (nb + 15) & ~(int64_t)15;
        const uint16_t *k = p->k + j0 * p->kv_stride, *v = p->v + j0 * p->kv_stride;
        ab_widen_k(kt, k, p->kv_stride, nb, nbp, D);
        ab_widen_v(vb, v, p->kv_stride, nb, D);
        /* the next sub-block's K and V rows (L3 or DRAM) are prefetched a few lines per tile, so its
         * widening does not wait on every 8-row gather */
        const int64_t nn = n - j0 - nb < AB_KEYS ? n - j0 - nb : AB_KEYS, lpr = (D * 2 + 63) / 64;
        const int64_t ntile = (rows + AB_MR - 1) / AB_MR, per_tile = (2 * nn * lpr + ntile - 1) / ntile;
        int64_t pf = 0;
        for (int64_t r0 = 0; r0 < rows; r0 += AB_MR) {
            for (int64_t q = 0; q < per_tile && pf < 2 * nn * lpr; q++, pf++) {
                const int64_t row = pf / lpr % nn, line = pf % lpr;
                const uint16_t *src = (pf < nn * lpr ? k : v) + (nb + row) * p->kv_stride;
                _mm_prefetch((const char *)src + line * 64, _MM_HINT_T1);
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
