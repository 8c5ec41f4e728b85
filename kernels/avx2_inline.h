/* avx2_inline.h — register-level helpers shared by the AVX2 kernel files (cpu_avx2.c, avx2_gemv.c,
 * avx2_gemm.c, avx2_attn.c). Include it only from files compiled with -mavx2 -mfma -mf16c: every
 * function here emits AVX2/FMA/F16C instructions. */
#ifndef MTOK_AVX2_INLINE_H
#define MTOK_AVX2_INLINE_H

#include <immintrin.h>

#include "cpu_internal.h"

#define INLINE static inline __attribute__((always_inline))

/* Elements i..i+7 of a row in dtype dt as fp32. dt is a constant wherever this is inlined, so the
 * switch folds away. bf16 -> fp32 is a zero-extend and a 16-bit shift; f16 uses F16C. */
INLINE __m256 load8(const void *p, int64_t i, mtok_dtype dt) {
    switch (dt) {
    case MTOK_BF16: {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case MTOK_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    case MTOK_F32: break;
    }
    return _mm256_loadu_ps((const float *)p + i);
}

INLINE float load1(const void *p, int64_t i, mtok_dtype dt) {
    switch (dt) {
    case MTOK_BF16: return mk_bf16_to_f32(((const uint16_t *)p)[i]);
    case MTOK_F16: return _cvtsh_ss(((const uint16_t *)p)[i]);
    case MTOK_F32: break;
    }
    return ((const float *)p)[i];
}

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* [sum(a), sum(b), sum(c), sum(d)] */
INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* [sum(r[0]), ..., sum(r[7])] */
INLINE __m256 hsum8(const __m256 r[8]) {
    const __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(r[0], r[1]), _mm256_hadd_ps(r[2], r[3]));
    const __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(r[4], r[5]), _mm256_hadd_ps(r[6], r[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

/* The 8x8 transpose of r[0..7]: out[j][i] = r[i][j]. */
INLINE void transpose8(__m256 out[8], const __m256 r[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    out[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    out[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    out[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    out[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    out[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    out[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    out[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    out[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* 8x8 transpose of r[0..7] stored as 8 rows of dst (32-byte aligned) with stride ld floats. */
INLINE void transpose8_store_ld(float *dst, int64_t ld, const __m256 r[8]) {
    __m256 o[8];
    transpose8(o, r);
    for (int j = 0; j < 8; j++) _mm256_store_ps(dst + j * ld, o[j]);
}

/* n elements of a row in dtype dt to fp32. */
INLINE void row_to_f32(float *dst, const void *src, int64_t n, mtok_dtype dt) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src, i, dt));
    for (; i < n; i++) dst[i] = load1(src, i, dt);
}

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

#endif
