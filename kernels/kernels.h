/* kernels.h — CPU compute kernels (prefix mk_). fp32 math on bf16/f16/f32 stored weights.
 *
 * Every kernel has a scalar reference (suffix _ref) that the tests compare against. The public
 * entry points dispatch at run time: AVX-512 + AVX512_BF16 code (kernels/avx512_*.c) for the matrix
 * products and attention when the CPU has it, AVX2+FMA code (kernels/cpu_avx2.c and kernels/avx2_*.c,
 * built with -mavx2 -mfma -mf16c) for the rest and on CPUs without it, the scalar code otherwise. Threading is OpenMP
 * inside the matrix products, with the team size the caller passes (the engine passes its session's
 * thread count, core/backend_cpu.c; 0 takes OpenMP's default); nothing here sets a process-wide
 * thread setting. The other kernels run on the calling thread. */
#ifndef MTOK_KERNELS_H
#define MTOK_KERNELS_H

#include <stdint.h>
#include <string.h>
#include "../base/mtok_base.h"
#include "mtok_math.h"

/* A 1-D or 2-D tensor in its stored dtype. 2-D is row-major [rows][cols] (PyTorch [out, in]). */
typedef struct {
    const void *data;
    mtok_dtype dtype;
    int64_t rows; /* 1 for 1-D tensors */
    int64_t cols;
} mk_tensor;

/* The row r of a 2-D tensor as a tensor view of rows [r0, r0+n). */
static inline mk_tensor mk_rows(mk_tensor t, int64_t r0, int64_t n) {
    mk_tensor v = t;
    v.data = (const char *)t.data + (size_t)r0 * (size_t)t.cols * mtok_dtype_size(t.dtype);
    v.rows = n;
    return v;
}

/* ---- scalar conversions (round-to-nearest-even for f32 -> bf16, NaN kept quiet) ----
 * The bf16 rules live in kernels/mtok_math.h, shared with the CUDA kernels. */
static inline float mk_bf16_to_f32(uint16_t h) { return mm_bf16_to_f32(h); }
static inline uint16_t mk_f32_to_bf16(float f) { return mm_f32_to_bf16(f); }
float mk_f16_to_f32(uint16_t h);
uint16_t mk_f32_to_f16(float f);
/* Element i of a tensor (any dtype) as fp32. */
float mk_get(const mk_tensor *t, int64_t i);

/* ---- instruction sets, chosen at run time (kernels/cpu_dispatch.c) ----
 * avx512: AVX-512F/BW/VL + AVX512_BF16 with the zmm state saved by the OS; the bf16 matrix products
 * use VDPBF16PS on the activations split in two bf16 (or rounded to one: mk_precision below;
 * docs/PERFORMANCE.md, "AVX-512 kernels"). */
typedef enum { MK_ISA_SCALAR = 0, MK_ISA_AVX2 = 1, MK_ISA_AVX512 = 2 } mk_isa;
/* The highest level this CPU and OS can run. */
mk_isa mk_isa_cpu(void);
/* The level the kernels run now: the CPU's, capped by mk_isa_set (or, until it is called, by the
 * environment variable MTOK_ISA = avx2|avx512|auto|scalar), scalar while mk_force_scalar is on. */
mk_isa mk_isa_active(void);
/* Caps the level (mk_isa_cpu() for auto). -1 when the CPU lacks that level.
 * Meant for start-up (--isa) and test phases, not while kernels run. */
int mk_isa_set(mk_isa cap);
/* "avx2" | "avx512" | "auto" (= MK_ISA_AVX512: as a cap, no limit) | "scalar" into *out: 0, or -1 unknown. */
int mk_isa_parse(const char *s, mk_isa *out);
const char *mk_isa_str(mk_isa isa); /* "scalar", "avx2", "avx512" */
/* The name of the active level, mk_isa_str(mk_isa_active()) (cli/cmd_bench.c reports it). */
const char *mk_isa_name(void);
/* The instruction-set extensions found, space-separated ("sse4.2 avx avx2 fma f16c avx512f ..."). */
void mk_cpu_features(char *buf, size_t n);
/* 1 when the active level is AVX2 or higher. */
int mk_have_avx2(void);
/* Forces the scalar path (tests, --no-simd). */
void mk_force_scalar(int on);
/* What the bf16-dot products (the avx512 level, bf16 W) do with the fp32 activations x:
 *   MK_PREC_FP32  x = hi + lo, both bf16, and each weight pair meets both (two VDPBF16PS): the
 *                 products keep x to ~2^-17 relative, so logits stay within the tolerance of the
 *                 scalar path, at half the instruction's rate (the default);
 *   MK_PREC_BF16  x rounded to bf16 once (one VDPBF16PS): twice the rate, and a relative error of
 *                 up to 2^-9 per element of x before any product (docs/PERFORMANCE.md).
 * Every other path computes in fp32 whatever this says. Set by mk_precision_set (--matmul-precision)
 * or, until it is called, by the environment variable MTOK_MATMUL_PRECISION = fp32|bf16. */
typedef enum { MK_PREC_FP32 = 0, MK_PREC_BF16 = 1 } mk_precision;
mk_precision mk_precision_active(void);
void mk_precision_set(mk_precision p); /* start-up and test phases only, as mk_isa_set */
int mk_precision_parse(const char *s, mk_precision *out); /* "fp32" | "bf16": 0, or -1 unknown */
const char *mk_precision_str(mk_precision p);           /* "fp32", "bf16" */

/* ---- matrix products ----
 * y[t][o] = sum_i x[t][i] * W[o][i] + (b ? b[o] : 0)   for t < n_tok, o < W.rows, i < W.cols.
 * x, y fp32, row strides ldx, ldy (elements). n_tok == 1 is the decode GEMV; n_tok > 1 the
 * prefill GEMM. b may be NULL (its dtype can differ from W's). */
void mk_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
               const mk_tensor *b);
void mk_matmul_ref(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                   const mk_tensor *b);

/* Several independent products over the same n_tok tokens in one parallel region (one fork/join
 * instead of one per product): e.g. Q, K and V of a layer, or its gate and up projections, which
 * share x. Job i computes y_i = x_i W_i^T (+ b_i) exactly as mk_matmul(y, ldy, x, ldx, n_tok, W, b)
 * would (same summation order, bitwise equal). Outputs must not overlap. */
typedef struct {
    float *y;
    int64_t ldy;
    const float *x;
    int64_t ldx;
    const mk_tensor *W;
    const mk_tensor *b; /* NULL: no bias */
} mk_matmul_job;
void mk_matmul_multi(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok);
/* As mk_matmul and mk_matmul_multi with a parallel team of `threads` (0: OpenMP's default team, what
 * mk_matmul and mk_matmul_multi use). Each output element is computed by one thread with the same
 * arithmetic whichever thread it is (kernels/avx2_gemv.c). */
void mk_matmul_threads(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                       const mk_tensor *b, int threads);
void mk_matmul_multi_threads(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads);
void mk_matmul_multi_ref(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok);
/* What the avx512 path computes for bf16 W: each x rounded to bf16 (round to nearest even), plus with
 * split its remainder x - bf16(x) rounded to bf16 (the fp32 precision), bf16 subnormals of x and W
 * read as zero (VDPBF16PS's DAZ), products summed in double. f16 and f32 W: mk_matmul_ref. The avx512
 * kernels differ from this only by their fp32 accumulation. */
void mk_matmul_bf16dot_ref(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                           const mk_tensor *b, int split);

/* ---- elementwise / row ops ---- */
/* y = w * x / sqrt(mean(x^2) + eps) over n elements (y may alias x). */
void mk_rmsnorm(float *y, const float *x, const mk_tensor *w, int64_t n, float eps);
void mk_rmsnorm_ref(float *y, const float *x, const mk_tensor *w, int64_t n, float eps);

/* GLM RoPE on n_heads vectors of head_dim at x (stride head_dim): adjacent pairs (2i, 2i+1) of the
 * first rope_dim dims rotate by angle pos*theta_i; cs holds cos, sn holds sin for i < rope_dim/2
 * (computed in double by mk_rope_table so that positions near 1M keep full precision). */
void mk_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float *cs, const float *sn);
void mk_rope_table(float *cs, float *sn, int64_t rope_dim, double base, int64_t pos);

/* out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)). */
void mk_swiglu(float *out, const float *gate, const float *up, int64_t n);

/* Embedding row lookup into fp32. */
void mk_embed(float *y, const mk_tensor *table, int32_t id);

/* ---- attention (online softmax over KV blocks) ----
 * One query vector q[D] against n keys/values stored bf16 at k + s*stride, v + s*stride (s < n).
 * The state (m: running max of scaled scores, l: running sum of exp(score - m), acc[D]: running sum
 * of exp(score - m) * v) starts as m = -INFINITY, l = 0, acc = 0 and is updated in place.
 * The final output is acc / l. */
void mk_attn_accum(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t stride, int64_t D,
                   float scale, float *acc, float *m, float *l);
void mk_attn_accum_ref(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t stride,
                       int64_t D, float scale, float *acc, float *m, float *l);
/* Log-sum-exp merge of partial state (acc2, m2, l2) into (acc, m, l). The shared primitive for
 * spilled blocks, split-K decoding and context parallelism. */
void mk_attn_merge(float *acc, float *m, float *l, const float *acc2, float m2, float l2, int64_t D);

/* Grouped attention over one KV block: every query row that reads the same KV group (the
 * n_head = H/G heads of one group, for n_tok consecutive query tokens) against the block's keys at
 * once, so the block is read and widened once per group and tile instead of once per head, and the
 * scores and P·V products run as small register-blocked GEMMs. Row (t, h) for t < n_tok, h < n_head:
 *   query  q   + t*q_ts   + h*D   [D]
 *   state  acc + t*acc_ts + h*D   [D],  m[t*ml_ts + h], l[t*ml_ts + h]  (as mk_attn_accum's)
 * Keys/values j < n at k + j*kv_stride, v + j*kv_stride (bf16), at positions k_pos0 + j; or, with
 * k_panels, K in panels of 16 keys, each [D][16] (key j, dim d at k[MK_KPANEL_AT(j, d, D)]; the last
 * panel is allocated whole, its slots past n are never read as scores). causal:
 * token t (position q_pos0 + t) sees keys at positions <= its own only. The state update equals n_tok
 * x n_head calls of mk_attn_accum (within fp32 rounding). */
typedef struct {
    const float *q;
    int64_t q_ts;
    float *acc;
    int64_t acc_ts;
    float *m, *l;
    int64_t ml_ts;
    int64_t n_tok, n_head, D;
    const uint16_t *k, *v;
    int64_t kv_stride, n;
    int64_t q_pos0, k_pos0;
    int causal;
    int k_panels; /* K in 16-key panels (the KV store's layout when its blocks are multiples of 16) */
    float scale;
    /* optional: the keys of the block the caller passes next (same stride), prefetched while this
     * one computes (NULL: none); a hint only, never read as data */
    const uint16_t *k_next;
} mk_attn_params;
void mk_attn_block(const mk_attn_params *p);
/* Where key j, dim d of head_dim D sits in a panel-layout K: the decode kernel reads one 256-bit
 * load per dim as 16 keys' bf16 values, so Q·Kᵀ needs no horizontal sums. */
#define MK_KPANEL_AT(j, d, D) (((j) >> 4) * 16 * (D) + (d) * 16 + ((j) & 15))
void mk_attn_block_ref(const mk_attn_params *p);

/* fp32 -> bf16 row conversion (KV append). */
void mk_f32_to_bf16_row(uint16_t *dst, const float *src, int64_t n);

/* ---- machine limits (kernels/cpu_limits.c; the denominators of `mtok bench`) ---- */
typedef struct {
    int threads;         /* 0: all online cores */
    int64_t array_bytes; /* bytes per STREAM array (0: 256 MiB; use >> last-level cache) */
    int reps;            /* best of reps (0: 5) */
    int64_t fma_iters;   /* FMA loop iterations per thread and rep (0: 2e7, ~0.1 s) */
} mk_limits_params;
typedef struct {
    double triad_gbs;  /* a = b + s*c, 12 bytes per element counted (STREAM convention) */
    double read_gbs;   /* sum of one array, 4 bytes per element */
    double fma_gflops; /* fp32, 2 flops per FMA lane; the best rep: the core's peak */
    double fma_gflops_mean; /* the same loop's mean over the reps: what the host gave it (on a shared
                             * host, time taken by neighbours lowers this and not the best) */
    int threads, avx2;
    int64_t array_bytes;
    int verified;      /* 1: the triad output and the read sums had their expected values */
} mk_limits;
/* Measures with plain pthreads (safe in a forked child of an OpenMP process). 0 or MTOK_ERESOURCE. */
int mk_measure_limits(const mk_limits_params *p, mk_limits *out);

#endif
