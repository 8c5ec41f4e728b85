/* avx512_inline.h — register-level helpers shared by the AVX-512 kernel files (avx512_gemm.c,
 * avx512_gemv.c, avx512_attn.c). Include it only from files compiled with the AVX-512 flags
 * (CMakeLists.txt, MTOK_AVX512_FLAGS): every function here emits AVX-512F/BW/VL/BF16 instructions. */
#ifndef MTOK_AVX512_INLINE_H
#define MTOK_AVX512_INLINE_H

#include <immintrin.h>
#include <string.h>

#include "cpu_internal.h"

#ifndef INLINE
#define INLINE static inline __attribute__((always_inline))
#endif

/* VDPBF16PS: acc[j] += a.bf16[2j+1] * b.bf16[2j+1], then += a.bf16[2j] * b.bf16[2j] (two fused
 * steps with bf16 subnormals read as zero; docs/PERFORMANCE.md, "AVX-512 kernels"). The operands
 * are plain integer vectors here: the bf16 vector types differ between compiler versions. */
INLINE __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

/* The bf16 pair at p (two consecutive elements) in every 32-bit lane. */
INLINE __m512i bcast_pair(const uint16_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* 16 bf16 at p + i as fp32 (a zero-extend and a 16-bit shift). */
INLINE __m512 bf16x16(const uint16_t *p, int64_t i) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + i))), 16));
}

/* F(MR, ...) with MR the constant 1..12 equal to the variable mr (12 for anything larger): the 12-row
 * register tiles of avx512_gemm.c and avx512_attn.c are inlined once per row count, so their loops
 * over rows unroll and their accumulators stay in registers. */
#define ZM_TILE_CASES(F, ...)                                                                               \
    switch (mr) {                                                                                            \
    case 1: F(1, __VA_ARGS__); break;                                                                        \
    case 2: F(2, __VA_ARGS__); break;                                                                        \
    case 3: F(3, __VA_ARGS__); break;                                                                        \
    case 4: F(4, __VA_ARGS__); break;                                                                        \
    case 5: F(5, __VA_ARGS__); break;                                                                        \
    case 6: F(6, __VA_ARGS__); break;                                                                        \
    case 7: F(7, __VA_ARGS__); break;                                                                        \
    case 8: F(8, __VA_ARGS__); break;                                                                        \
    case 9: F(9, __VA_ARGS__); break;                                                                        \
    case 10: F(10, __VA_ARGS__); break;                                                                      \
    case 11: F(11, __VA_ARGS__); break;                                                                      \
    default: F(12, __VA_ARGS__); break;                                                                      \
    }

/* The 16x16 transpose of 32-bit elements: r[i] lane j becomes r[j] lane i. */
INLINE void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* u[4i+c], 128-bit lane L: rows 4i..4i+3 of column 4L+c */
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* column 4L+c = the 4x4 transpose of the 128-bit lanes of u[c], u[4+c], u[8+c], u[12+c] */
    for (int c = 0; c < 4; c++) {
        const __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
        const __m512i x2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44),
                      x3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
        r[c] = _mm512_shuffle_i32x4(x0, x2, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(x0, x2, 0xDD);
        r[8 + c] = _mm512_shuffle_i32x4(x1, x3, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
    }
}

#endif
