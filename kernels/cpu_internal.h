/* cpu_internal.h — private prototypes shared by the kernel files (not part of the public API).
 *
 * kernels/cpu_dispatch.c owns the public mk_* entry points and picks one of three implementations:
 *   *_avx512    kernels/avx512_*.c (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512bf16 ...;
 *               only called when the CPU has them and the OS saves the zmm state),
 *   *_avx2      kernels/cpu_avx2.c and kernels/avx2_*.c (compiled with -mavx2 -mfma -mf16c; only called
 *               when the CPU has all three),
 *   *_portable  kernels/cpu_ops.c (baseline x86-64, threaded, fp32) or the _ref functions of cpu_ref.c
 *               where those are already as fast as a scalar loop gets. */
#ifndef MTOK_CPU_INTERNAL_H
#define MTOK_CPU_INTERNAL_H

#include "kernels.h"

/* ---- AVX2 + FMA + F16C (kernels/cpu_avx2.c, kernels/avx2_*.c) ---- */
/* avx2_gemv.c: the threaded drivers and the few-token row kernel (rows [r0, r1) of y, one thread) */
/* threads: the team size of their parallel region (kernels.h: mk_matmul_threads) */
void mk_matmul_multi_avx2(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads);
void mk_gemv_rows_avx2(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                       const mk_tensor *b, int64_t r0, int64_t r1);
/* avx2_gemm.c: the packed GEMM over tokens [t0, t1) x 16-output panels [p0, p1), one thread, with
 * that thread's scratch (mk_gemm_scratch_avx2: allocated once per thread, NULL if out of memory) */
void mk_gemm_block_avx2(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t t0, int64_t t1,
                        const mk_tensor *W, const mk_tensor *b, int64_t p0, int64_t p1, float *buf);
float *mk_gemm_scratch_avx2(void);
/* cpu_avx2.c: row ops */
void mk_rmsnorm_avx2(float *y, const float *x, const mk_tensor *w, int64_t n, float eps);
void mk_rope_avx2(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float *cs,
                  const float *sn);
void mk_swiglu_avx2(float *out, const float *gate, const float *up, int64_t n);
/* n elements of src (stored dtype dt) to fp32. */
void mk_row_to_f32_avx2(float *dst, const void *src, mtok_dtype dt, int64_t n);
void mk_f32_to_bf16_row_avx2(uint16_t *dst, const float *src, int64_t n);
/* avx2_attn.c: attention */
void mk_attn_accum_avx2(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t stride,
                        int64_t D, float scale, float *acc, float *m, float *l);
void mk_attn_block_avx2(const mk_attn_params *p);

/* ---- AVX-512F/BW/VL + AVX512_BF16 (kernels/avx512_*.c; only called when the CPU has all of them
 * and the OS saves the zmm state) ---- */
/* avx512_gemv.c: the threaded driver (bf16 W: VDPBF16PS on x split in hi + lo bf16 when split is 1,
 * the fp32 precision, or rounded to bf16; f16/f32 W: on to mk_matmul_multi_avx2) and the few-token
 * row kernel */
void mk_matmul_multi_avx512(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads, int split);
/* avx512_gemm.c: the packed bf16 GEMM over tokens [t0, t1) x 32-output panels [p0, p1), one thread;
 * xb: x rounded to bf16 (rows ldb apart, zero past K up to an even column); xl: NULL, or the
 * remainders x - xb rounded to bf16 in the same layout (the fp32 precision) */
void mk_gemm_block_avx512(float *y, int64_t ldy, const uint16_t *xb, const uint16_t *xl, int64_t ldb, int64_t t0,
                          int64_t t1, const mk_tensor *W, const mk_tensor *b, int64_t p0, int64_t p1, void *buf);
void *mk_gemm_scratch_avx512(void);
/* avx512_attn.c: the prefill (tiled) form; other shapes go on to mk_attn_block_avx2 */
void mk_attn_block_avx512(const mk_attn_params *p);

/* ---- portable fallbacks (kernels/cpu_ops.c) ---- */
void mk_matmul_portable(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                        const mk_tensor *b, int threads);
void mk_row_to_f32_portable(float *dst, const void *src, mtok_dtype dt, int64_t n);
void mk_rope_portable(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float *cs,
                      const float *sn);
void mk_swiglu_portable(float *out, const float *gate, const float *up, int64_t n);
void mk_f32_to_bf16_row_portable(uint16_t *dst, const float *src, int64_t n);

/* Rows [*r0, *r1) of n that thread ith of nth owns: contiguous, boundaries on multiples of align so
 * that two threads never write the same cache line of the output. */
static inline void mk_split_rows(int64_t n, int64_t align, int nth, int ith, int64_t *r0, int64_t *r1) {
    int64_t blocks = (n + align - 1) / align;
    int64_t b0 = blocks * ith / nth, b1 = blocks * (ith + 1) / nth;
    *r0 = b0 * align < n ? b0 * align : n;
    *r1 = b1 * align < n ? b1 * align : n;
}

#endif
