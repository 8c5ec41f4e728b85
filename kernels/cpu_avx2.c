/* cpu_avx2.c — AVX2 + FMA + F16C row ops (the matrix products are in avx2_gemv.c and avx2_gemm.c,
 * attention in avx2_attn.c). Compiled alone with -mavx2 -mfma -mf16c -O3 and only reached through
 * cpu_dispatch.c after a CPU check, so nothing here may run on other CPUs.
 *
 * All arithmetic is fp32 with fp32 accumulation. Weights stay in their stored dtype (bf16 mostly)
 * and are widened in registers: bf16 -> fp32 is a zero-extend and a 16-bit shift, f16 uses F16C. */
#include <math.h>
#include <stdlib.h>

#include "avx2_inline.h"

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
