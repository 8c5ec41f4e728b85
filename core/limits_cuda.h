/* limits_cuda.h — a CUDA device's limits measured in the run that reports against them (`mtok bench
 * --device cuda`): the device copy bandwidth (cuda/ck.h ck_copy) and the bf16 GEMM rate of cuBLASLt
 * (ck_gemm_bf16) at the shape of a prefill chunk's gate|up product. Quoted peaks (3.35 TB/s, 989
 * TFLOP/s on an H100 SXM) are never reached and vary with clocks and parts, so mtok's figures are
 * held against what the same device did minutes earlier (docs/GPU.md, "The bench").
 *
 * Built with and without the CUDA backend: without it mtok_cuda_limits returns MTOK_EUSAGE
 * ("not built"). Errors as in base/mtok_base.h. */
#ifndef MTOK_LIMITS_CUDA_H
#define MTOK_LIMITS_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The gate|up GEMM of one 8K-token prefill chunk of GLM-4-9B: D [n][M] = A [n][K] · W [M][K]ᵀ. */
#define MTOK_CUDA_GEMM_M 27392 /* 2 x ffn 13696: the output features */
#define MTOK_CUDA_GEMM_N 8192  /* tokens of the chunk */
#define MTOK_CUDA_GEMM_K 4096  /* hidden */

typedef struct {
    int64_t copy_bytes;             /* bytes of each of the two copy buffers (0: max(4 x L2, 1 GiB)); below
                                     * 4 x L2 the figure includes L2 hits and says so (copy_in_l2) */
    int64_t gemm_m, gemm_n, gemm_k; /* 0 (all three): the gate|up shape above */
    int copy_reps, gemm_reps;       /* timed repetitions after one warm-up (0: 10 and 5); the best counts */
    double mem_share;               /* share of the device's free memory the buffers may take (0: 0.5) */
} mtok_cuda_limits_params;

typedef struct {
    /* the device */
    char name[256];
    int device, cc_major, cc_minor, sms;
    int driver_version, runtime_version; /* CUDA versions as 1000 x major + 10 x minor (13000) */
    int64_t l2_bytes, mem_total, mem_free;
    /* copy: GB/s = 2 x copy_bytes / time (each byte read once and written once, STREAM's count) */
    double copy_gbs, copy_gbs_mean; /* the best rep and the mean of the reps */
    int64_t copy_bytes;
    int copy_reps, copy_in_l2;
    /* GEMM: TFLOP/s = 2 x m x n x k / time, bf16 operands, fp32 accumulation and output, no bias */
    double gemm_tflops, gemm_tflops_mean;
    int64_t gemm_m, gemm_n, gemm_k;
    int gemm_reps;
    int gemm_fallback;       /* 1: the gate|up shape did not fit the memory share; a smaller one ran */
    double gemm_max_err;     /* largest |D - ref| / sum |a w| over the sampled outputs (ref in double) */
    int verified;            /* 1: the copy's sampled words and the GEMM's sampled outputs were right */
    char note[256];          /* why a fallback or an in-L2 copy was used ("" when none) */
} mtok_cuda_limits_result;

/* Measures device `device` with the defaults (the gate|up shape, or a fallback that fits). */
int mtok_cuda_limits(int device, mtok_cuda_limits_result *out);
/* The same with explicit sizes (p may be NULL: the defaults). MTOK_EUSAGE for a bad size or a build
 * without CUDA, MTOK_ERESOURCE when the device, its memory or cuBLASLt fail. A wrong copy or GEMM
 * result is not an error: out->verified says it, and the caller decides (the bench exits 4). */
int mtok_cuda_limits_run(int device, const mtok_cuda_limits_params *p, mtok_cuda_limits_result *out);

#ifdef __cplusplus
}
#endif
#endif
