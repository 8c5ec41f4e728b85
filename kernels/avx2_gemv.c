/* avx2_gemv.c — matrix products for few tokens (the decode GEMV, n_tok < GM_MIN_TOK) straight from the
 * stored weights, and the threaded driver mk_matmul_multi_avx2 that picks it or the
 * packed GEMM of avx2_gemm.c. Compiled with -mavx2 -mfma -mf16c -O3 (the kernels/avx2_*.c glob).
 *
 * Streaming W at memory speed. A decode step reads every weight once, so the GEMV is bound by how
 * fast one core can pull bytes from DRAM. Rows of glm4 matrices are 4-14 KiB; reading 4 adjacent rows
 * at once (rows o..o+3) gives 4 streams that each end after a page or so and jump, and the hardware
 * prefetchers re-train on every jump: ~13 GB/s per core here. Instead a thread's row range is cut into
 * 4 equal contiguous quarters and the kernel reads row i of each quarter together (rows r0+i, r0+Q+i,
 * r0+2Q+i, r0+3Q+i): 4 long sequential streams, as STREAM's read kernel, ~20 GB/s per core. Each row's
 * weight vectors are widened in registers and used for up to 3 tokens (x rows come from L1). */
#include <omp.h>
#include <string.h>

#include "avx2_inline.h"
#include "tls_scratch.h"

/* Below this many tokens the packed GEMM does not pay for its packing. */
#define GM_MIN_TOK 24
/* Parallel regions only above this many multiply-adds (fork/join costs a few microseconds). */
#define MM_PAR_MIN 65536.0
#define GM_BLOCK_PANELS 8 /* panels per dynamically scheduled GEMM block (a multiple of avx2_gemm.c's MM_NCP) */

/* R (4 or 1) weight rows at o, o + rs, o + 2rs, o + 3rs against MT (1..3) tokens: each weight vector
 * is loaded and widened once and used for MT FMAs. With one token the K loop is unrolled twice so that
 * 8 independent accumulators cover the FMA latency. bias[r] is row r's bias (0 for none). */
INLINE void rows_kernel(int R, int MT, float *y, int64_t ldy, const float *x, int64_t ldx, const void *w,
                        int64_t K, int64_t o, int64_t rs, mtok_dtype dt, const float *bias) {
    const int U = MT == 1 ? 2 : 1;
    __m256 acc[2][3][4];
    for (int u = 0; u < 2; u++)
        for (int t = 0; t < 3; t++)
            for (int r = 0; r < 4; r++) acc[u][t][r] = _mm256_setzero_ps();
    int64_t base[4];
    for (int r = 0; r < 4; r++) base[r] = (o + r * rs) * K;
    int64_t i = 0;
    for (; i + 8 * U <= K; i += 8 * U)
        for (int u = 0; u < U; u++) {
            /* x vectors first, then one weight vector at a time: 4*MT accumulators + MT + 1 <= 16
             * registers, so nothing spills (a spilled accumulator costs a store-forward per FMA) */
            __m256 xv[3];
            for (int t = 0; t < MT; t++) xv[t] = _mm256_loadu_ps(x + t * ldx + i + 8 * u);
            for (int r = 0; r < R; r++) {
                const __m256 wv = load8(w, base[r] + i + 8 * u, dt);
                for (int t = 0; t < MT; t++) acc[u][t][r] = _mm256_fmadd_ps(wv, xv[t], acc[u][t][r]);
            }
        }
    if (U == 2 && i + 8 <= K) { /* one 8-wide step left over from the 2x unroll */
        for (int r = 0; r < R; r++) {
            const __m256 wv = load8(w, base[r] + i, dt);
            acc[0][0][r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), acc[0][0][r]);
        }
        i += 8;
    }
    for (int t = 0; t < MT; t++) {
        float s[4];
        if (R == 4) {
            __m256 a[4];
            for (int r = 0; r < 4; r++) a[r] = U == 2 ? _mm256_add_ps(acc[0][t][r], acc[1][t][r]) : acc[0][t][r];
            _mm_storeu_ps(s, hsum4(a[0], a[1], a[2], a[3]));
        } else {
            s[0] = hsum(U == 2 ? _mm256_add_ps(acc[0][t][0], acc[1][t][0]) : acc[0][t][0]);
        }
        for (int r = 0; r < R; r++) {
            for (int64_t j = i; j < K; j++) s[r] += x[t * ldx + j] * load1(w, base[r] + j, dt);
            y[t * ldy + o + r * rs] = s[r] + bias[r];
        }
    }
}

/* All n_tok tokens (3 at a time, 4 as 2+2) for the R rows at o + r*rs. */
INLINE void rows_all_tokens(int R, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok,
                            const void *w, int64_t K, int64_t o, int64_t rs, mtok_dtype dt, const float *bias) {
    for (int64_t t = 0, mt; t < n_tok; t += mt) {
        float *yt = y + t * ldy;
        const float *xt = x + t * ldx;
        mt = n_tok - t == 4 ? 2 : n_tok - t < 3 ? n_tok - t : 3;
        if (R == 1) {
            rows_kernel(1, 1, yt, ldy, xt, ldx, w, K, o, rs, dt, bias);
            mt = 1;
            continue;
        }
        switch (mt) {
        case 1: rows_kernel(4, 1, yt, ldy, xt, ldx, w, K, o, rs, dt, bias); break;
        case 2: rows_kernel(4, 2, yt, ldy, xt, ldx, w, K, o, rs, dt, bias); break;
        default: rows_kernel(4, 3, yt, ldy, xt, ldx, w, K, o, rs, dt, bias); break;
        }
    }
}

/* Rows [r0, r1) of y for every token: 4 quarter streams, then the leftover rows one at a time. */
INLINE void gemv_rows(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                      const mk_tensor *b, int64_t r0, int64_t r1, mtok_dtype dt) {
    const int64_t K = W->cols, Q = (r1 - r0) / 4;
    for (int64_t o = r0; o < r0 + Q; o++) {
        float bias[4] = {0, 0, 0, 0};
        if (b)
            for (int r = 0; r < 4; r++) bias[r] = mk_get(b, o + r * Q);
        rows_all_tokens(4, y, ldy, x, ldx, n_tok, W->data, K, o, Q, dt, bias);
    }
    for (int64_t o = r0 + 4 * Q; o < r1; o++) {
        const float bias = b ? mk_get(b, o) : 0.0f;
        rows_all_tokens(1, y, ldy, x, ldx, n_tok, W->data, K, o, 1, dt, &bias);
    }
}

void mk_gemv_rows_avx2(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                       const mk_tensor *b, int64_t r0, int64_t r1) {
    switch (W->dtype) {
    case MTOK_BF16: gemv_rows(y, ldy, x, ldx, n_tok, W, b, r0, r1, MTOK_BF16); break;
    case MTOK_F16: gemv_rows(y, ldy, x, ldx, n_tok, W, b, r0, r1, MTOK_F16); break;
    case MTOK_F32: gemv_rows(y, ldy, x, ldx, n_tok, W, b, r0, r1, MTOK_F32); break;
    }
}

/* ---- threaded drivers ---- */

/* Thread ith of nth computes its share of one product. */
static void matmul_share(const mk_matmul_job *j, int64_t n_tok, int nth, int ith) {
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
    const int64_t npanels = (N + 15) / 16;
    if (n_tok < GM_MIN_TOK) {
        /* few tokens: stream W rows once, contiguous ranges per thread, on 16-row boundaries so that
         * no two threads write the same cache line of y */
        int64_t r0, r1;
        mk_split_rows(N, 16, nth, ith, &r0, &r1);
        mk_gemv_rows_avx2(j->y, j->ldy, j->x, j->ldx, n_tok, W, j->b, r0, r1);
        return;
    }
    /* the packing scratch is per thread; a thread that could not allocate it does its share with
     * the GEMV code (the branches themselves must not differ between threads: see below) */
    float *buf = mk_gemm_scratch_avx2();
    if (npanels >= 2 * nth) {
        /* the usual case: blocks of GM_BLOCK_PANELS 16-output panels (one packing block each) handed
         * out as threads become free. On a shared host one core often runs slower than the other for
         * a while, and a static half each would make the faster one wait at the join. Each output is
         * computed by one thread with the same arithmetic whichever it is, so results do not depend
         * on the schedule. Every thread of the team reaches this loop for the same job (the branch
         * depends only on the job, n_tok and nth), as an orphaned worksharing loop requires. */
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t pb = 0; pb < npanels; pb += GM_BLOCK_PANELS) {
            const int64_t pe = npanels - pb < GM_BLOCK_PANELS ? npanels : pb + GM_BLOCK_PANELS;
            if (buf)
                mk_gemm_block_avx2(j->y, j->ldy, j->x, j->ldx, 0, n_tok, W, j->b, pb, pe, buf);
            else
                mk_gemv_rows_avx2(j->y, j->ldy, j->x, j->ldx, n_tok, W, j->b, pb * 16, pe * 16 < N ? pe * 16 : N);
        }
    } else {
        /* narrow W, many tokens: split the tokens instead */
        int64_t t0, t1;
        mk_split_rows(n_tok, 6, nth, ith, &t0, &t1);
        if (buf)
            mk_gemm_block_avx2(j->y, j->ldy, j->x, j->ldx, t0, t1, W, j->b, 0, npanels, buf);
        else if (t1 > t0)
            mk_gemv_rows_avx2(j->y + t0 * j->ldy, j->ldy, j->x + t0 * j->ldx, j->ldx, t1 - t0, W, j->b, 0, N);
    }
}

/* The GEMM's 6-token micro-kernel reads six x rows in step. When the row stride is a multiple of
 * 4 KiB (hidden 2048 or 4096 in fp32) their current lines all map to one L1 set and keep evicting
 * each other; a copy of x with rows one cache line further apart costs less than it saves
 * (docs/PERFORMANCE.md, "Why the kernels look like this"). The copy belongs to the calling thread. */
static _Thread_local float *tl_xpad;
static _Thread_local size_t tl_xpad_cap;
MK_TLS_SCRATCH(tl_xpad)

#define XPAD_MAX_JOBS 8

/* The padded copy's buffer (NULL: no copy wanted or no memory; the product then reads x itself). */
static float *padded_x(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int64_t *ldp) {
    if (n_jobs > XPAD_MAX_JOBS) return NULL;
    const float *x = jobs[0].x;
    const int64_t ldx = jobs[0].ldx;
    int64_t K = 0;
    for (int i = 0; i < n_jobs; i++) {
        if (jobs[i].x != x || jobs[i].ldx != ldx) return NULL; /* only the shared-x case */
        K = jobs[i].W->cols > K ? jobs[i].W->cols : K;
    }
    if (n_tok < GM_MIN_TOK || ldx % 1024 || K < 256) return NULL;
    const int64_t ld = K + 16;
    const size_t need = (size_t)(n_tok * ld);
    if (need > tl_xpad_cap) {
        free(tl_xpad);
        tl_xpad = aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64);
        tl_xpad_cap = tl_xpad ? need : 0;
        tl_xpad_own(tl_xpad);
    }
    *ldp = ld;
    return tl_xpad;
}

void mk_matmul_multi_avx2(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads) {
    if (n_tok <= 0 || n_jobs <= 0) return;
    double work = 0;
    for (int i = 0; i < n_jobs; i++) work += (double)jobs[i].W->rows * (double)jobs[i].W->cols * (double)n_tok;
    int64_t ldp = 0;
    float *xp = padded_x(jobs, n_jobs, n_tok, &ldp);
    mk_matmul_job padded[XPAD_MAX_JOBS];
    for (int i = 0; xp && i < n_jobs; i++) padded[i] = jobs[i], padded[i].x = xp, padded[i].ldx = ldp;
    const mk_matmul_job *use = xp ? padded : jobs;
    /* the products are independent: no barrier between them, one join at the end */
#pragma omp parallel if (work > MM_PAR_MIN) num_threads(threads)
    {
        const int nth = omp_get_num_threads(), ith = omp_get_thread_num();
        if (xp) { /* each thread copies its rows; the barrier at the loop's end publishes them */
            const int64_t K = ldp - 16;
#pragma omp for schedule(static)
            for (int64_t t = 0; t < n_tok; t++) memcpy(xp + t * ldp, jobs[0].x + t * jobs[0].ldx, (size_t)K * sizeof *xp);
        }
        for (int i = 0; i < n_jobs; i++) matmul_share(&use[i], n_tok, nth, ith);
    }
}
