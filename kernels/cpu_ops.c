/* cpu_ops.c — kernels with a single implementation (RoPE table, attention merge) and the portable
 * fp32 fallbacks that cpu_dispatch.c uses when the CPU lacks AVX2/FMA/F16C or --no-simd is given.
 * Built for baseline x86-64 (-O2): plain loops the compiler can vectorize with SSE2. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "cpu_internal.h"
#include "tls_scratch.h"

void mk_rope_table(float *cs, float *sn, int64_t rope_dim, double base, int64_t pos) {
    /* theta_i = base^(-2i/d). Everything in double: at pos ~ 1M an fp32 angle would be off by ~0.06
     * rad, while the double product is off by ~1e-10 and libm's cos/sin reduce it exactly. */
    for (int64_t i = 0; i < rope_dim / 2; i++) {
        const double theta = pow(base, -2.0 * (double)i / (double)rope_dim);
        const double a = (double)pos * theta;
        cs[i] = (float)cos(a);
        sn[i] = (float)sin(a);
    }
}

/* mm_merge_row (kernels/mtok_math.h) is the merge the CUDA kernels use per element: an empty side
 * (m = -inf) is skipped or taken as it is, otherwise both are scaled by exp(m_i - max) <= 1. */
void mk_attn_merge(float *acc, float *m, float *l, const float *acc2, float m2, float l2, int64_t D) {
    mm_merge_row(acc, m, l, acc2, m2, l2, D);
}

/* ---- portable fallbacks ---- */

void mk_row_to_f32_portable(float *dst, const void *src, mtok_dtype dt, int64_t n) {
    switch (dt) {
    case MTOK_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = mk_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case MTOK_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = mk_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    case MTOK_F32:
        for (int64_t i = 0; i < n; i++) dst[i] = ((const float *)src)[i];
        break;
    }
}

/* A weight row converted to fp32 once and reused for every token; one buffer per thread, grown on
 * demand and kept (OpenMP reuses its threads, so this allocates once per thread and width). */
static _Thread_local float *tl_row;
static _Thread_local int64_t tl_row_cap;
MK_TLS_SCRATCH(tl_row)

static float *row_buffer(int64_t n) {
    if (n > tl_row_cap) {
        float *p = realloc(tl_row, (size_t)n * sizeof *p);
        if (!p) return NULL;
        tl_row_own(tl_row = p);
        tl_row_cap = n;
    }
    return tl_row;
}

static float dot_f32(const float *a, const float *b, int64_t n) {
    /* 8 partial sums: breaks the add dependency chain and lets -O2 use SSE */
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

void mk_matmul_portable(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                        const mk_tensor *b, int threads) {
    const int64_t N = W->rows, K = W->cols;
    const size_t esz = mtok_dtype_size(W->dtype);
    if (n_tok <= 0 || N <= 0) return;
#pragma omp parallel if (N * K * n_tok > (1 << 16)) num_threads(threads)
    {
        int64_t r0, r1;
        mk_split_rows(N, 16, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
        float *row = row_buffer(K > 0 ? K : 1);
        for (int64_t o = r0; o < r1; o++) {
            const float bias = b ? mk_get(b, o) : 0.0f;
            if (row) {
                mk_row_to_f32_portable(row, (const char *)W->data + (size_t)o * (size_t)K * esz, W->dtype, K);
                for (int64_t t = 0; t < n_tok; t++) y[t * ldy + o] = dot_f32(x + t * ldx, row, K) + bias;
            } else {
                /* no memory for the row buffer: slower, but still right */
                for (int64_t t = 0; t < n_tok; t++) {
                    float s = 0.0f;
                    for (int64_t i = 0; i < K; i++) s += x[t * ldx + i] * mk_get(W, o * K + i);
                    y[t * ldy + o] = s + bias;
                }
            }
        }
    }
}

void mk_rope_portable(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float *cs,
                      const float *sn) {
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        for (int64_t i = 0; i < rope_dim / 2; i++) {
            mm_rope_pair(&v[2 * i], &v[2 * i + 1], cs[i], sn[i]);
        }
    }
}

void mk_swiglu_portable(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = mm_silu(gate[i]) * up[i];
}

void mk_f32_to_bf16_row_portable(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = mk_f32_to_bf16(src[i]);
}
