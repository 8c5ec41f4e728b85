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

/* The 12-row register tiles of avx512_gemm.c and avx512_attn.c, one function per row count: F(MR, ...)
 * with MR a constant 1..12, so that each instance's loops over rows unroll and its accumulators stay
 * in registers. ZM_TILE_FNS(NAME, F, (PARAMS), ARGS...) defines NAME_1 .. NAME_12 (PARAMS) calling
 * F(MR, ARGS...); ZM_TILE_CALL(NAME, ARGS...) calls the one for the variable mr (12 for anything
 * larger). The instances are kept out of line: inlined into one switch, their 12 frames add up in
 * the caller's, and under AddressSanitizer (no stack-slot sharing) that overflowed the small stacks
 * of the server's worker threads. */
#define ZM_TILE_FN(NAME, F, MR, PARAMS, ...) static __attribute__((noinline)) void NAME##_##MR PARAMS { F(MR, __VA_ARGS__); }
#define ZM_TILE_FNS(NAME, F, PARAMS, ...)                                                                    \
    ZM_TILE_FN(NAME, F, 1, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 2, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 3, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 4, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 5, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 6, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 7, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 8, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 9, PARAMS, __VA_ARGS__)                                                              \
    ZM_TILE_FN(NAME, F, 10, PARAMS, __VA_ARGS__)                                                             \
    ZM_TILE_FN(NAME, F, 11, PARAMS, __VA_ARGS__)                                                             \
    ZM_TILE_FN(NAME, F, 12, PARAMS, __VA_ARGS__)
#define ZM_TILE_CALL(NAME, ...)                                                                              \
    switch (mr) {                                                                                            \
    case 1: NAME##_1(__VA_ARGS__); break;                                                                    \
    case 2: NAME##_2(__VA_ARGS__); break;                                                                    \
    case 3: NAME##_3(__VA_ARGS__); break;                                                                    \
    case 4: NAME##_4(__VA_ARGS__); break;                                                                    \
    case 5: NAME##_5(__VA_ARGS__); break;                                                                    \
    case 6: NAME##_6(__VA_ARGS__); break;                                                                    \
    case 7: NAME##_7(__VA_ARGS__); break;                                                                    \
    case 8: NAME##_8(__VA_ARGS__); break;                                                                    \
    case 9: NAME##_9(__VA_ARGS__); break;                                                                    \
    case 10: NAME##_10(__VA_ARGS__); break;                                                                  \
    case 11: NAME##_11(__VA_ARGS__); break;                                                                  \
    default: NAME##_12(__VA_ARGS__); break;                                                                  \
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
