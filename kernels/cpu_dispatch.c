/* cpu_dispatch.c — the public mk_* entry points: each picks the AVX2 implementation when the CPU can
 * run it (and the scalar path is not forced), else the portable one. This file is built for
 * baseline x86-64, so it never executes an AVX instruction itself. */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <omp.h>

#include "cpu_internal.h"

static int g_force_scalar;

/* CPU check, once: AVX2 and FMA for the arithmetic, F16C for the f16 weight conversions. The result
 * is a pure function of the CPU, so racing first calls all store the same value (atomics only to
 * keep that race well-defined). */
static int cpu_ok(void) {
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
#if defined(__x86_64__) || defined(__i386__)
        /* __builtin_cpu_supports also checks that the OS saves the YMM state; F16C is read from
         * CPUID directly because not every compiler accepts "f16c" there */
        unsigned a, b, c, d;
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __get_cpuid(1, &a, &b, &c, &d) &&
            (c & bit_F16C);
#else
        v = 0;
#endif
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

int mk_have_avx2(void) { return !g_force_scalar && cpu_ok(); }

/* Meant to be set once at start-up (CLI flag) or between test phases, not while kernels run. */
void mk_force_scalar(int on) { g_force_scalar = on != 0; }

/* The team size a kernel's parallel region gets: the caller's, else OpenMP's default (what
 * omp_get_max_threads says for this thread: OMP_NUM_THREADS, or every core). */
static int team(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

void mk_matmul_multi_threads(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads) {
    if (mk_have_avx2()) {
        mk_matmul_multi_avx2(jobs, n_jobs, n_tok, team(threads));
        return;
    }
    for (int i = 0; i < n_jobs; i++)
        mk_matmul_portable(jobs[i].y, jobs[i].ldy, jobs[i].x, jobs[i].ldx, n_tok, jobs[i].W, jobs[i].b, team(threads));
}

void mk_matmul_threads(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                       const mk_tensor *b, int threads) {
    const mk_matmul_job j = {.y = y, .ldy = ldy, .x = x, .ldx = ldx, .W = W, .b = b};
    mk_matmul_multi_threads(&j, 1, n_tok, threads);
}

void mk_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
               const mk_tensor *b) {
    mk_matmul_threads(y, ldy, x, ldx, n_tok, W, b, 0);
}

void mk_matmul_multi(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok) {
    mk_matmul_multi_threads(jobs, n_jobs, n_tok, 0);
}

void mk_rmsnorm(float *y, const float *x, const mk_tensor *w, int64_t n, float eps) {
    if (mk_have_avx2())
        mk_rmsnorm_avx2(y, x, w, n, eps);
    else
        mk_rmsnorm_ref(y, x, w, n, eps); /* one pass over n elements: the reference is fast enough */
}

void mk_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float *cs, const float *sn) {
    if (mk_have_avx2())
        mk_rope_avx2(x, n_heads, head_dim, rope_dim, cs, sn);
    else
        mk_rope_portable(x, n_heads, head_dim, rope_dim, cs, sn);
}

void mk_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    if (mk_have_avx2())
        mk_swiglu_avx2(out, gate, up, n);
    else
        mk_swiglu_portable(out, gate, up, n);
}

void mk_embed(float *y, const mk_tensor *table, int32_t id) {
    const int64_t n = table->cols;
    if (id < 0 || id >= table->rows) {
        /* callers validate ids (forward.c does); never read outside the table if one slips through */
        for (int64_t i = 0; i < n; i++) y[i] = 0.0f;
        return;
    }
    const void *row = (const char *)table->data + (size_t)id * (size_t)n * mtok_dtype_size(table->dtype);
    if (mk_have_avx2())
        mk_row_to_f32_avx2(y, row, table->dtype, n);
    else
        mk_row_to_f32_portable(y, row, table->dtype, n);
}

void mk_attn_accum(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t stride, int64_t D,
                   float scale, float *acc, float *m, float *l) {
    if (mk_have_avx2())
        mk_attn_accum_avx2(q, k, v, n, stride, D, scale, acc, m, l);
    else
        mk_attn_accum_ref(q, k, v, n, stride, D, scale, acc, m, l);
}

void mk_attn_block(const mk_attn_params *p) {
    if (mk_have_avx2())
        mk_attn_block_avx2(p);
    else
        mk_attn_block_ref(p);
}

void mk_f32_to_bf16_row(uint16_t *dst, const float *src, int64_t n) {
    if (mk_have_avx2())
        mk_f32_to_bf16_row_avx2(dst, src, n);
    else
        mk_f32_to_bf16_row_portable(dst, src, n);
}
