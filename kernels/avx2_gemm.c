/* avx2_gemm.c — the prefill GEMM y[t][o] = sum_k x[t][k] W[o][k] (+ b[o]) for many tokens, AVX2+FMA.
 * Compiled with -mavx2 -mfma -mf16c -O3 (CMakeLists.txt: the kernels/avx2_*.c glob) and reached only
 * through cpu_dispatch.c after a CPU check.
 *
 * The design below (packed fp32 W panels, a 6x16 register tile, 2048-deep k slices) is the best of
 * many measured alternatives; docs/PERFORMANCE.md, "Why the kernels look like this", lists them so
 * that the next attempt starts from them. Results are bit-identical for any k-slice depth: the
 * micro-kernel continues the tile's sum in the same k order. */
#include <stdlib.h>

#include "avx2_inline.h"
#include "tls_scratch.h"

/* ---- matmul: prefill GEMM on packed fp32 weight tiles ----
 * A 16-row x KC-column slice of W is widened to fp32 once and stored transposed, [KC][16], so that
 * one k step of the micro-kernel reads 16 consecutive outputs' weights with two aligned loads. The
 * micro-kernel keeps a 6-token x 16-output tile of y in 12 registers: per k it broadcasts x[t][k]
 * for its 6 tokens and issues 12 FMAs for 8 loads, which keeps both FMA ports busy. A block of
 * NCP panels (NCP*16 outputs x KC, 256 KiB, L2-resident) is packed once and reused by every token;
 * the 6 x rows of a token block (48 KiB at KC 2048) come from L2 for the second panel. */
#define MM_KC 2048
#define MM_NCP 2
#define MM_MR 6
#define MM_PACK_FLOATS ((size_t)MM_NCP * MM_KC * 16)

/* Packing scratch: one fixed-size buffer per thread (OpenMP keeps its threads, so this allocates
 * once per thread, not per call). */
static _Thread_local float *tl_pack;
MK_TLS_SCRATCH(tl_pack)

float *mk_gemm_scratch_avx2(void) {
    if (!tl_pack) tl_pack_own(tl_pack = aligned_alloc(64, MM_PACK_FLOATS * sizeof(float)));
    return tl_pack;
}

/* wp[k][j] = W[o0 + j][k0 + k] as fp32 for k < kc, j < 16; rows past N are zero. */
INLINE void pack_panel(float *wp, const void *w, int64_t K, int64_t N, int64_t o0, int64_t k0, int64_t kc,
                       mtok_dtype dt) {
    for (int half = 0; half < 2; half++) {
        const int64_t r = o0 + 8 * half;
        float *dst = wp + 8 * half;
        int64_t k = 0;
        if (r + 8 <= N)
            for (; k + 8 <= kc; k += 8) {
                __m256 v[8];
                for (int j = 0; j < 8; j++) v[j] = load8(w, (r + j) * K + k0 + k, dt);
                transpose8_store_ld(dst + k * 16, 16, v);
            }
        for (; k < kc; k++)
            for (int j = 0; j < 8; j++) dst[k * 16 + j] = r + j < N ? load1(w, (r + j) * K + k0 + k, dt) : 0.0f;
    }
}

static void pack_panel_any(float *wp, const mk_tensor *W, int64_t o0, int64_t k0, int64_t kc) {
    switch (W->dtype) {
    case MTOK_BF16: pack_panel(wp, W->data, W->cols, W->rows, o0, k0, kc, MTOK_BF16); break;
    case MTOK_F16: pack_panel(wp, W->data, W->cols, W->rows, o0, k0, kc, MTOK_F16); break;
    case MTOK_F32: pack_panel(wp, W->data, W->cols, W->rows, o0, k0, kc, MTOK_F32); break;
    }
}

/* c[t][0..16) (row stride ldc) = init (16 floats) or c itself, + sum_k x[t][k] * wp[k][0..16). */
INLINE void ukernel(int mr, int64_t kc, const float *wp, const float *x, int64_t ldx, float *c, int64_t ldc,
                    const float *init) {
    __m256 c0[MM_MR], c1[MM_MR];
    const float *xr[MM_MR];
    for (int t = 0; t < MM_MR; t++) {
        xr[t] = x + (t < mr ? t : 0) * ldx;
        if (t >= mr) {
            c0[t] = c1[t] = _mm256_setzero_ps();
        } else if (init) {
            c0[t] = _mm256_load_ps(init);
            c1[t] = _mm256_load_ps(init + 8);
        } else {
            c0[t] = _mm256_loadu_ps(c + t * ldc);
            c1[t] = _mm256_loadu_ps(c + t * ldc + 8);
        }
    }
    for (int64_t k = 0; k < kc; k++) {
        const __m256 w0 = _mm256_load_ps(wp + 16 * k), w1 = _mm256_load_ps(wp + 16 * k + 8);
        for (int t = 0; t < mr; t++) {
            const __m256 a = _mm256_broadcast_ss(xr[t] + k);
            c0[t] = _mm256_fmadd_ps(a, w0, c0[t]);
            c1[t] = _mm256_fmadd_ps(a, w1, c1[t]);
        }
    }
    for (int t = 0; t < mr; t++) {
        _mm256_storeu_ps(c + t * ldc, c0[t]);
        _mm256_storeu_ps(c + t * ldc + 8, c1[t]);
    }
}

static void ukernel_any(int mr, int64_t kc, const float *wp, const float *x, int64_t ldx, float *c, int64_t ldc,
                        const float *init) {
    switch (mr) {
    case 1: ukernel(1, kc, wp, x, ldx, c, ldc, init); break;
    case 2: ukernel(2, kc, wp, x, ldx, c, ldc, init); break;
    case 3: ukernel(3, kc, wp, x, ldx, c, ldc, init); break;
    case 4: ukernel(4, kc, wp, x, ldx, c, ldc, init); break;
    case 5: ukernel(5, kc, wp, x, ldx, c, ldc, init); break;
    default: ukernel(6, kc, wp, x, ldx, c, ldc, init); break;
    }
}

/* Tokens [t0, t1) x panels [p0, p1) (16 outputs each) of y, with packing buffer wp. */
void mk_gemm_block_avx2(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t t0, int64_t t1,
                        const mk_tensor *W, const mk_tensor *b, int64_t p0, int64_t p1, float *wp) {
    const int64_t N = W->rows, K = W->cols;
    _Alignas(32) float bias[MM_NCP][16];
    _Alignas(32) float tmp[MM_MR * 16];
    for (int64_t pc = p0; pc < p1; pc += MM_NCP) {
        const int64_t np = p1 - pc < MM_NCP ? p1 - pc : MM_NCP;
        for (int64_t p = 0; p < np; p++)
            for (int j = 0; j < 16; j++) {
                const int64_t o = (pc + p) * 16 + j;
                bias[p][j] = b && o < N ? mk_get(b, o) : 0.0f;
            }
        for (int64_t k0 = 0; k0 < K; k0 += MM_KC) {
            const int64_t kc = K - k0 < MM_KC ? K - k0 : MM_KC;
            for (int64_t p = 0; p < np; p++) pack_panel_any(wp + p * MM_KC * 16, W, (pc + p) * 16, k0, kc);
            /* tokens outer: a token block's x rows are read by each panel of the packing block
             * while they are still in L2, and the packed panels stream from L2 */
            for (int64_t t = t0; t < t1; t += MM_MR)
                for (int64_t p = 0; p < np; p++) {
                    const int mr = (int)(t1 - t < MM_MR ? t1 - t : MM_MR);
                    const int64_t o0 = (pc + p) * 16;
                    float *c = y + t * ldy + o0;
                    const float *xt = x + t * ldx + k0, *init = k0 == 0 ? bias[p] : NULL;
                    if (o0 + 16 <= N) {
                        ukernel_any(mr, kc, wp + p * MM_KC * 16, xt, ldx, c, ldy, init);
                        continue;
                    }
                    /* last, partial panel: run on a 16-wide copy so no store passes column N */
                    const int64_t nv = N - o0;
                    for (int i = 0; i < mr; i++)
                        for (int64_t j = 0; j < nv; j++) tmp[i * 16 + j] = k0 ? c[i * ldy + j] : 0.0f;
                    ukernel_any(mr, kc, wp + p * MM_KC * 16, xt, ldx, tmp, 16, init);
                    for (int i = 0; i < mr; i++)
                        for (int64_t j = 0; j < nv; j++) c[i * ldy + j] = tmp[i * 16 + j];
                }
        }
    }
}
