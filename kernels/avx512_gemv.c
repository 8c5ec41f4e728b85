/* avx512_gemv.c — matrix products for few tokens (the decode GEMV, n_tok < GZ_MIN_TOK) straight from
 * the stored weights, and the threaded driver mk_matmul_multi_avx512 that picks it or the packed GEMM
 * of avx512_gemm.c. Compiled with the AVX-512 flags (the kernels/avx512_*.c glob).
 *
 * The row kernel streams W as avx2_gemv.c's does (a thread's rows cut into 4 contiguous quarters read
 * in step: 4 long sequential streams, which the hardware prefetchers follow; docs/PERFORMANCE.md).
 * A bf16 row is multiplied by VDPBF16PS, 32 elements per instruction, against x rounded to bf16 by
 * the driver — the same rounding as the GEMM, so prefill and decode compute the same products. Row
 * tails are masked loads. f16 and f32 W go to the AVX2 kernels (mk_matmul_multi_avx512, the end). */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "avx512_inline.h"
#include "tls_scratch.h"

#define GZ_MIN_TOK 24      /* below this many tokens the packed GEMM does not pay for its packing */
#define GZ_PAR_MIN 65536.0 /* parallel regions only above this many multiply-adds */
#define GZ_PANEL 32        /* avx512_gemm.c's panel width */
#define GZ_BLOCK_PANELS 4  /* panels per dynamically scheduled GEMM block: 128 outputs, as avx2_gemv.c's */
#define GZ_MR 12           /* avx512_gemm.c's token tile */
#define GZ_MAX_JOBS 8

/* R (4 or 1) bf16 rows at o, o + rs, o + 2rs, o + 3rs against MT (1..3) tokens of xb (and, with xl, of
 * their low halves: a second VDPBF16PS per product, as in avx512_gemm.c). With one token the k loop is
 * unrolled twice: 8 independent accumulators cover VDPBF16PS's latency. */
INLINE void zrows_bf16(int R, int MT, float *y, int64_t ldy, const uint16_t *xb, const uint16_t *xl, int64_t ldb,
                       const uint16_t *w, int64_t K, int64_t o, int64_t rs, const float *bias) {
    const int U = MT == 1 ? 2 : 1;
    __m512 acc[2][3][4];
    for (int u = 0; u < 2; u++)
        for (int t = 0; t < 3; t++)
            for (int r = 0; r < 4; r++) acc[u][t][r] = _mm512_setzero_ps();
    const uint16_t *wr[4];
    for (int r = 0; r < 4; r++) wr[r] = w + (o + (r < R ? r : 0) * rs) * K;
    int64_t i = 0;
    for (; i + 32 * U <= K; i += 32 * U)
        for (int u = 0; u < U; u++) {
            __m512i xv[3], lv[3];
            for (int t = 0; t < MT; t++) {
                xv[t] = _mm512_loadu_si512((const void *)(xb + t * ldb + i + 32 * u));
                if (xl) lv[t] = _mm512_loadu_si512((const void *)(xl + t * ldb + i + 32 * u));
            }
            for (int r = 0; r < R; r++) {
                const __m512i wv = _mm512_loadu_si512((const void *)(wr[r] + i + 32 * u));
                for (int t = 0; t < MT; t++) {
                    acc[u][t][r] = dpbf16(acc[u][t][r], wv, xv[t]);
                    if (xl) acc[u][t][r] = dpbf16(acc[u][t][r], wv, lv[t]);
                }
            }
        }
    for (; i < K; i += 32) { /* the tail, masked: lanes past K contribute zero */
        const __mmask32 m = K - i >= 32 ? ~(__mmask32)0 : ((__mmask32)1 << (K - i)) - 1;
        __m512i xv[3], lv[3];
        for (int t = 0; t < MT; t++) {
            xv[t] = _mm512_maskz_loadu_epi16(m, xb + t * ldb + i);
            if (xl) lv[t] = _mm512_maskz_loadu_epi16(m, xl + t * ldb + i);
        }
        for (int r = 0; r < R; r++) {
            const __m512i wv = _mm512_maskz_loadu_epi16(m, wr[r] + i);
            for (int t = 0; t < MT; t++) {
                acc[0][t][r] = dpbf16(acc[0][t][r], wv, xv[t]);
                if (xl) acc[0][t][r] = dpbf16(acc[0][t][r], wv, lv[t]);
            }
        }
    }
    for (int t = 0; t < MT; t++)
        for (int r = 0; r < R; r++)
            y[t * ldy + o + r * rs] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][t][r], acc[1][t][r])) + bias[r];
}

/* All n_tok tokens (3 at a time, 4 as 2+2) for the R rows at o + r*rs. */
INLINE void zrows_all(int R, float *y, int64_t ldy, const uint16_t *xb, const uint16_t *xl, int64_t ldb,
                      int64_t n_tok, const uint16_t *w, int64_t K, int64_t o, int64_t rs, const float *bias) {
    for (int64_t t = 0, mt; t < n_tok; t += mt) {
        float *yt = y + t * ldy;
        const uint16_t *xt = xb + t * ldb, *lt = xl ? xl + t * ldb : NULL;
        mt = n_tok - t == 4 ? 2 : n_tok - t < 3 ? n_tok - t : 3;
        if (R == 1) {
            zrows_bf16(1, 1, yt, ldy, xt, lt, ldb, w, K, o, rs, bias);
            mt = 1;
        } else if (mt == 1) {
            zrows_bf16(4, 1, yt, ldy, xt, lt, ldb, w, K, o, rs, bias);
        } else if (mt == 2) {
            zrows_bf16(4, 2, yt, ldy, xt, lt, ldb, w, K, o, rs, bias);
        } else {
            zrows_bf16(4, 3, yt, ldy, xt, lt, ldb, w, K, o, rs, bias);
        }
    }
}

/* Rows [r0, r1) of y for every token: 4 quarter streams, then the leftover rows one at a time. */
static void gemv_rows(const mk_matmul_job *j, const uint16_t *xb, const uint16_t *xl, int64_t ldb, int64_t n_tok,
                      int64_t r0, int64_t r1) {
    const mk_tensor *W = j->W, *b = j->b;
    const int64_t K = W->cols, Q = (r1 - r0) / 4;
    for (int64_t o = r0; o < r0 + Q; o++) {
        float bias[4] = {0, 0, 0, 0};
        if (b)
            for (int r = 0; r < 4; r++) bias[r] = mk_get(b, o + r * Q);
        if (xl) /* NULL as a constant: the plain form keeps no test of xl in its loops */
            zrows_all(4, j->y, j->ldy, xb, xl, ldb, n_tok, W->data, K, o, Q, bias);
        else
            zrows_all(4, j->y, j->ldy, xb, NULL, ldb, n_tok, W->data, K, o, Q, bias);
    }
    for (int64_t o = r0 + 4 * Q; o < r1; o++) {
        const float bias = b ? mk_get(b, o) : 0.0f;
        if (xl)
            zrows_all(1, j->y, j->ldy, xb, xl, ldb, n_tok, W->data, K, o, 1, &bias);
        else
            zrows_all(1, j->y, j->ldy, xb, NULL, ldb, n_tok, W->data, K, o, 1, &bias);
    }
}

/* ---- threaded driver ---- */

/* Thread ith of nth computes its share of one product (as avx2_gemv.c's matmul_share: every thread of
 * the team takes the same branches for a job, as the orphaned worksharing loop requires). */
static void matmul_share(const mk_matmul_job *j, const uint16_t *xb, const uint16_t *xl, int64_t ldb, int64_t n_tok,
                         int nth, int ith) {
    const mk_tensor *W = j->W;
    const int64_t N = W->rows, K = W->cols;
    if (N <= 0) return;
    if (K == 0) { /* no products: y is the bias */
        int64_t r0, r1;
        mk_split_rows(N, 16, nth, ith, &r0, &r1);
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t o = r0; o < r1; o++) j->y[t * j->ldy + o] = j->b ? mk_get(j->b, o) : 0.0f;
        return;
    }
    const int64_t npanels = (N + GZ_PANEL - 1) / GZ_PANEL;
    if (n_tok < GZ_MIN_TOK) {
        int64_t r0, r1;
        mk_split_rows(N, 16, nth, ith, &r0, &r1);
        gemv_rows(j, xb, xl, ldb, n_tok, r0, r1);
        return;
    }
    void *buf = mk_gemm_scratch_avx512();
    if (npanels >= 2 * nth) {
        /* blocks of panels handed out as threads become free (a shared host slows one core at a time);
         * each output is computed by one thread with the same arithmetic, whatever the schedule */
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t pb = 0; pb < npanels; pb += GZ_BLOCK_PANELS) {
            const int64_t pe = npanels - pb < GZ_BLOCK_PANELS ? npanels : pb + GZ_BLOCK_PANELS;
            if (buf)
                mk_gemm_block_avx512(j->y, j->ldy, xb, xl, ldb, 0, n_tok, W, j->b, pb, pe, buf);
            else
                gemv_rows(j, xb, xl, ldb, n_tok, pb * GZ_PANEL, pe * GZ_PANEL < N ? pe * GZ_PANEL : N);
        }
    } else {
        /* narrow W, many tokens: split the tokens instead */
        int64_t t0, t1;
        mk_split_rows(n_tok, GZ_MR, nth, ith, &t0, &t1);
        if (buf) {
            mk_gemm_block_avx512(j->y, j->ldy, xb, xl, ldb, t0, t1, W, j->b, 0, npanels, buf);
        } else if (t1 > t0) {
            mk_matmul_job part = *j;
            part.y += t0 * j->ldy;
            gemv_rows(&part, xb + t0 * ldb, xl ? xl + t0 * ldb : NULL, ldb, t1 - t0, 0, N);
        }
    }
}

/* x rounded to bf16 for the jobs with bf16 W: one copy per distinct x, rows ldb apart; with split (the
 * fp32 matmul precision, which cpu_dispatch.c passes) a second copy of the same shape, xl, holds each
 * element's remainder x - bf16(x) rounded to bf16, so that hi + lo carries 16 of x's 24 significant
 * bits and the products lose what widen-then-FMA loses to within ~2^-17 of x (docs/PERFORMANCE.md,
 * "AVX-512 kernels"). ldb is the longest K among its jobs rounded up to 32, plus 32 more: the padding
 * is zero (the kernels read whole pairs and masked tails), and rows a multiple of 4 KiB apart would
 * alias in one L1 set when the GEMM's 12-token tile reads them in step (docs/PERFORMANCE.md, "The
 * padded copy of x"). The buffer belongs to the calling thread. */
static _Thread_local uint16_t *tl_xb;
static _Thread_local size_t tl_xb_cap;
MK_TLS_SCRATCH(tl_xb)

typedef struct {
    const float *x;
    int64_t ldx, K, ldb;
    uint16_t *xb, *xl; /* xl: NULL at the bf16 precision */
} xb_copy;

/* Fills copies[] (returns their count, or -1 when out of memory) and which[i]: job i's copy or -1. */
static int plan_bf16_x(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int split, xb_copy *copies, int *which) {
    int nc = 0;
    for (int i = 0; i < n_jobs; i++) {
        which[i] = -1;
        if (jobs[i].W->cols == 0 || jobs[i].W->rows == 0) continue; /* y is the bias: no x read */
        int c = 0;
        while (c < nc && (copies[c].x != jobs[i].x || copies[c].ldx != jobs[i].ldx)) c++;
        if (c == nc) copies[nc++] = (xb_copy){.x = jobs[i].x, .ldx = jobs[i].ldx};
        if (jobs[i].W->cols > copies[c].K) copies[c].K = jobs[i].W->cols;
        which[i] = c;
    }
    size_t need = 0;
    for (int c = 0; c < nc; c++) {
        copies[c].ldb = (copies[c].K + 31) / 32 * 32 + 32;
        need += (size_t)(n_tok * copies[c].ldb) * (split ? 2 : 1);
    }
    if (need > tl_xb_cap) {
        free(tl_xb);
        tl_xb = aligned_alloc(64, (need * sizeof(uint16_t) + 63) / 64 * 64);
        tl_xb_cap = tl_xb ? need : 0;
        tl_xb_own(tl_xb);
        if (!tl_xb) return -1;
    }
    size_t at = 0;
    for (int c = 0; c < nc; c++) {
        copies[c].xb = tl_xb + at, at += (size_t)(n_tok * copies[c].ldb);
        copies[c].xl = split ? tl_xb + at : NULL, at += split ? (size_t)(n_tok * copies[c].ldb) : 0;
    }
    return nc;
}

/* lo[i] = bf16(x[i] - hi[i]) for n elements: the difference is exact in fp32 (hi is x rounded, so
 * they share an exponent or hi is a power of two next to x), and its rounding leaves an error of at
 * most 2^-9 of itself, i.e. 2^-17 of x. Where hi is not finite (x infinite or NaN, or rounded up
 * past the largest bf16) lo is 0: hi alone then gives the product's infinity or NaN. */
static void bf16_remainder(uint16_t *lo, const uint16_t *hi, const float *x, int64_t n) {
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff), expo = _mm512_set1_epi32(0x7f800000);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512i h = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, hi + i)), 16);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_castsi512_ps(h));
        const __mmask16 fin = _mm512_cmpneq_epi32_mask(_mm512_and_si512(h, expo), expo);
        const __m512i u = _mm512_castps_si512(d);
        /* round to nearest even, as mk_f32_to_bf16 (d is finite here) */
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
        const __m512i r = _mm512_maskz_srli_epi32(fin, _mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
        _mm256_mask_storeu_epi16(lo + i, m, _mm512_cvtepi32_epi16(r));
    }
}

/* Row r of the copies (copy r / n_tok, token r % n_tok): x rounded to bf16 (and its remainder), then
 * zeros to ldb. */
static void convert_row(const xb_copy *copies, int64_t n_tok, int64_t r) {
    const xb_copy *c = &copies[r / n_tok];
    const int64_t t = r % n_tok;
    uint16_t *dst = c->xb + t * c->ldb;
    const float *x = c->x + t * c->ldx;
    mk_f32_to_bf16_row_avx2(dst, x, c->K);
    memset(dst + c->K, 0, (size_t)(c->ldb - c->K) * sizeof *dst);
    if (c->xl) {
        uint16_t *lo = c->xl + t * c->ldb;
        bf16_remainder(lo, dst, x, c->K);
        memset(lo + c->K, 0, (size_t)(c->ldb - c->K) * sizeof *lo);
    }
}

/* bf16 jobs only (at most GZ_MAX_JOBS). */
static void matmul_multi_bf16(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads, int split) {
    xb_copy copies[GZ_MAX_JOBS];
    int which[GZ_MAX_JOBS];
    const int nc = plan_bf16_x(jobs, n_jobs, n_tok, split, copies, which);
    if (nc < 0) { /* no memory for the bf16 copy of x: the AVX2 products need none */
        mk_matmul_multi_avx2(jobs, n_jobs, n_tok, threads);
        return;
    }
    double work = 0;
    for (int i = 0; i < n_jobs; i++) work += (double)jobs[i].W->rows * (double)jobs[i].W->cols * (double)n_tok;
    /* decode converts its few x rows before the parallel region: a worksharing loop there would add
     * a barrier to every product of every token */
    const int convert_inside = n_tok >= GZ_MIN_TOK;
    for (int64_t r = 0; !convert_inside && r < nc * n_tok; r++) convert_row(copies, n_tok, r);
    /* the products are independent: no barrier between them, one join at the end */
#pragma omp parallel if (work > GZ_PAR_MIN) num_threads(threads)
    {
        const int nth = omp_get_num_threads(), ith = omp_get_thread_num();
        if (convert_inside && nc > 0) { /* each thread converts its rows; the loop's barrier publishes them */
#pragma omp for schedule(static)
            for (int64_t r = 0; r < nc * n_tok; r++) convert_row(copies, n_tok, r);
        }
        for (int i = 0; i < n_jobs; i++) {
            const xb_copy *c = which[i] >= 0 ? &copies[which[i]] : NULL;
            matmul_share(&jobs[i], c ? c->xb : NULL, c ? c->xl : NULL, c ? c->ldb : 0, n_tok, nth, ith);
        }
    }
}

/* f16 and f32 W go to the AVX2 kernels: Zen 4 executes a zmm FMA as two ymm halves, and the widening
 * forms of these files measured 0.91-0.92x (prefill GEMM, f16, 512 x 2048 x 2048, one thread) and
 * 1.02x (decode GEMV, f16, 13696 x 4096) of AVX2's (docs/PERFORMANCE.md, "AVX-512 kernels"); so f16
 * logits are the same at both levels. A call mixing dtypes runs as two parallel regions. */
void mk_matmul_multi_avx512(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads, int split) {
    if (n_tok <= 0 || n_jobs <= 0) return;
    mk_matmul_job bf[GZ_MAX_JOBS], other[GZ_MAX_JOBS];
    for (int i0 = 0; i0 < n_jobs; i0 += GZ_MAX_JOBS) {
        int nb = 0, no = 0;
        for (int i = i0; i < n_jobs && i < i0 + GZ_MAX_JOBS; i++) {
            if (jobs[i].W->dtype == MTOK_BF16) bf[nb++] = jobs[i];
            else other[no++] = jobs[i];
        }
        if (no) mk_matmul_multi_avx2(other, no, n_tok, threads);
        if (nb) matmul_multi_bf16(bf, nb, n_tok, threads, split);
    }
}
