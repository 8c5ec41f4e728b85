/* test_kernels.c — the CPU kernels against their references.
 *
 * Every fast path (AVX-512 and AVX2 where the CPU has them, each forced with mk_isa_set, and the
 * portable path forced with mk_force_scalar) is compared with the _ref functions or with double / long double references written here. Ends
 * with informational GEMV / GEMM throughput (no assertions on timing). Exit 0 pass, 1 fail. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

static int g_fail, g_checks;

#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        g_checks++;                                                                                          \
        if (!(cond)) {                                                                                       \
            g_fail++;                                                                                        \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                      \
            printf(__VA_ARGS__);                                                                             \
            printf("\n");                                                                                    \
        }                                                                                                    \
    } while (0)

/* ---- helpers ---- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd_u64(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545f4914f6cdd1dull;
}
static float rnd_f(void) { return (float)((double)(rnd_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0); } /* [-1, 1) */
static int64_t rnd_int(int64_t n) { return (int64_t)(rnd_u64() % (uint64_t)n); }
static float bits_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* A tensor of dtype dt holding src (rounded to dt). */
static mk_tensor make_tensor(const float *src, int64_t rows, int64_t cols, mtok_dtype dt) {
    const int64_t n = rows * cols;
    void *d = xmalloc((size_t)n * mtok_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        if (dt == MTOK_BF16) ((uint16_t *)d)[i] = mk_f32_to_bf16(src[i]);
        if (dt == MTOK_F16) ((uint16_t *)d)[i] = mk_f32_to_f16(src[i]);
        if (dt == MTOK_F32) ((float *)d)[i] = src[i];
    }
    return (mk_tensor){d, dt, rows, cols};
}

/* max |a-b| <= tol * (1 + |ref|) per element, and cosine similarity >= 1 - 1e-6. */
static int close_enough(const char *what, const float *got, const float *ref, int64_t n, double tol) {
    double worst = 0, dot = 0, ng = 0, nr = 0;
    int64_t at = -1;
    for (int64_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - ref[i]) / (1.0 + fabs((double)ref[i]));
        if (!(e <= worst)) { /* NaN counts as worst */
            worst = isnan(e) ? INFINITY : e;
            at = i;
        }
        dot += (double)got[i] * ref[i], ng += (double)got[i] * got[i], nr += (double)ref[i] * ref[i];
    }
    const double cosv = ng > 0 && nr > 0 ? dot / sqrt(ng * nr) : (ng == nr ? 1.0 : 0.0);
    const int ok = worst <= tol && cosv >= 1.0 - 1e-6;
    CHECK(ok, "%s: max rel err %.3g at %lld (got %.9g ref %.9g), cos %.9f", what, worst, (long long)at,
          at >= 0 ? got[at] : 0.0, at >= 0 ? ref[at] : 0.0, cosv);
    return ok;
}

static const char *dt_name(mtok_dtype dt) { return mtok_dtype_name(dt); }

/* The paths: avx512 at the fp32 and at the bf16 matmul precision, avx2 (each where the CPU has it),
 * scalar. set_path(p) selects path p and returns 0 when the CPU cannot run it; paths_reset() goes
 * back to the best level at the default precision. */
enum { PATH_AVX512, PATH_AVX512_BF16, PATH_AVX2, PATH_SCALAR, N_PATHS };
static const char *g_path_name = "?";
static int set_path(int path) {
    const mk_isa want = path <= PATH_AVX512_BF16 ? MK_ISA_AVX512 : path == PATH_AVX2 ? MK_ISA_AVX2 : MK_ISA_SCALAR;
    if (want > mk_isa_cpu()) return 0;
    mk_force_scalar(path == PATH_SCALAR);
    if (path != PATH_SCALAR) mk_isa_set(want);
    mk_precision_set(path == PATH_AVX512_BF16 ? MK_PREC_BF16 : MK_PREC_FP32);
    g_path_name = path == PATH_AVX512_BF16 ? "avx512/bf16" : mk_isa_str(want);
    return 1;
}
static void paths_reset(void) {
    mk_force_scalar(0);
    mk_isa_set(mk_isa_cpu());
    mk_precision_set(MK_PREC_FP32);
}

/* Runs body once per path the CPU has. */
#define FOR_PATHS(path) for (int path = 0; path < N_PATHS; path++) if (set_path(path))

/* ---- matmul ---- */

static void test_matmul_ld(int64_t rows, int64_t cols, int64_t n_tok, mtok_dtype dt, int bias_kind, int64_t ldx) {
    const int64_t ldy = rows + 5;
    float *wf = xmalloc((size_t)(rows * cols) * sizeof(float));
    for (int64_t i = 0; i < rows * cols; i++) wf[i] = rnd_f();
    mk_tensor W = make_tensor(wf, rows, cols, dt);
    float *bf = xmalloc((size_t)rows * sizeof(float));
    for (int64_t i = 0; i < rows; i++) bf[i] = rnd_f();
    const mtok_dtype bdt[] = {MTOK_BF16, MTOK_F16, MTOK_F32};
    mk_tensor B = make_tensor(bf, 1, rows, bdt[bias_kind % 3]);
    const mk_tensor *bp = bias_kind == 3 ? NULL : &B;
    float *x = xmalloc((size_t)(n_tok * ldx) * sizeof(float));
    for (int64_t i = 0; i < n_tok * ldx; i++) x[i] = rnd_f();
    float *yr = xmalloc((size_t)(n_tok * ldy) * sizeof(float)), *y = xmalloc((size_t)(n_tok * ldy) * sizeof(float));
    mk_matmul_ref(yr, ldy, x, ldx, n_tok, &W, bp);
    /* the avx512 path on bf16 W takes x as bf16 for VDPBF16PS: rounded (the bf16 precision) or split in
     * hi + lo (fp32). Each has its own reference, and a bound against the exact product: |y - yr| <=
     * u sum |x w| (+ fp32 accumulation), u = 2^-8 (bf16's unit roundoff is 2^-9) rounded, 2^-16 split */
    float *yb = NULL, *ys = NULL, *ya = NULL;
    if (dt == MTOK_BF16 && mk_isa_cpu() >= MK_ISA_AVX512) {
        yb = xmalloc((size_t)(n_tok * ldy) * sizeof(float)), ya = xmalloc((size_t)(n_tok * ldy) * sizeof(float));
        ys = xmalloc((size_t)(n_tok * ldy) * sizeof(float));
        mk_matmul_bf16dot_ref(yb, ldy, x, ldx, n_tok, &W, bp, 0);
        mk_matmul_bf16dot_ref(ys, ldy, x, ldx, n_tok, &W, bp, 1);
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t o = 0; o < rows; o++) {
                double a = 0;
                for (int64_t i = 0; i < cols; i++) a += fabs((double)x[t * ldx + i] * mk_get(&W, o * cols + i));
                ya[t * ldy + o] = (float)a;
            }
    }
    FOR_PATHS(path) {
        const float sentinel = 12345.0f;
        for (int64_t i = 0; i < n_tok * ldy; i++) y[i] = sentinel;
        mk_matmul(y, ldy, x, ldx, n_tok, &W, bp);
        char what[128];
        snprintf(what, sizeof what, "matmul %s %s rows=%lld cols=%lld n_tok=%lld bias=%d", g_path_name,
                 dt_name(dt), (long long)rows, (long long)cols, (long long)n_tok, bias_kind);
        const int bf16dot = yb && path <= PATH_AVX512_BF16;
        const float *ref = !bf16dot ? yr : path == PATH_AVX512 ? ys : yb;
        const double u = path == PATH_AVX512 ? 0x1p-16 : 0x1p-8;
        int pad_ok = 1;
        for (int64_t t = 0; t < n_tok; t++) {
            if (!close_enough(what, y + t * ldy, ref + t * ldy, rows, 1e-4)) break;
            for (int64_t o = rows; o < ldy; o++) pad_ok &= y[t * ldy + o] == sentinel;
        }
        CHECK(pad_ok, "%s: wrote past the row (ldy padding changed)", what);
        if (bf16dot) {
            int64_t bad = 0;
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t o = 0; o < rows; o++) {
                    const double e = fabs((double)y[t * ldy + o] - yr[t * ldy + o]);
                    bad += !(e <= u * ya[t * ldy + o] + 1e-5 * (1.0 + fabs((double)yr[t * ldy + o])));
                }
            CHECK(bad == 0, "%s: %lld outputs outside the bound %g sum|xw| of the exact product", what, (long long)bad, u);
        }
    }
    paths_reset();
    free((void *)W.data), free((void *)B.data), free(wf), free(bf), free(x), free(yr), free(y), free(yb), free(ys), free(ya);
}

static void test_matmul_case(int64_t rows, int64_t cols, int64_t n_tok, mtok_dtype dt, int bias_kind) {
    test_matmul_ld(rows, cols, n_tok, dt, bias_kind, cols + 3);
}

static void test_matmul(void) {
    static const int64_t shapes[][2] = {{1, 1},     {7, 33},    {33, 7},   {1, 1000}, {16, 256}, {48, 512},
                                        {257, 257}, {1000, 33}, {33, 1000}, {257, 1000}, {1000, 257},
                                        /* K past the GEMM's 2048-deep super-blocks, with a tail */
                                        {33, 4100}, {70, 2049}};
    /* 1..23 tokens take the row kernel, >= 24 the packed GEMM (300: two token blocks) */
    static const int64_t toks[] = {1, 2, 3, 7, 17, 23, 24, 64, 129, 300};
    const mtok_dtype dts[] = {MTOK_BF16, MTOK_F16, MTOK_F32};
    int k = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t t = 0; t < sizeof toks / sizeof toks[0]; t++)
            for (int d = 0; d < 3; d++, k++) {
                /* the largest cases are slow in the reference: one dtype each */
                if (shapes[s][0] * shapes[s][1] * toks[t] > 30000000 && dts[d] != (toks[t] > 200 ? MTOK_BF16 : MTOK_F16))
                    continue;
                test_matmul_case(shapes[s][0], shapes[s][1], toks[t], dts[d], k % 4);
            }
    /* large W (10 MB): many panel blocks per thread, few tokens */
    test_matmul_case(600, 4100, 25, MTOK_F32, 1);
    test_matmul_case(1200, 4100, 26, MTOK_BF16, 3);
    /* x rows a multiple of 4 KiB apart: the GEMM works on a copy with padded rows */
    test_matmul_ld(300, 1024, 30, MTOK_BF16, 0, 1024);
    test_matmul_ld(200, 1000, 40, MTOK_BF16, 3, 2048);
    test_matmul_ld(130, 2048, 25, MTOK_F32, 1, 2048);
    /* cols = 0: y is the bias */
    float bias[3] = {1, 2, 3}, y[6] = {0}, x[2] = {0};
    mk_tensor B = {bias, MTOK_F32, 1, 3}, W = {bias, MTOK_BF16, 3, 0};
    FOR_PATHS(path) {
        memset(y, 0, sizeof y);
        mk_matmul(y, 3, x, 1, 2, &W, &B);
        CHECK(y[0] == 1 && y[2] == 3 && y[3] == 1 && y[5] == 3, "matmul cols=0 must give the bias (path %d)", path);
    }
    paths_reset();
}

/* mk_matmul_multi: Q/K/V-like jobs sharing x plus one with its own x and strides; each output must be
 * bitwise equal to mk_matmul's on the same path, and close to the reference. */
static void test_matmul_multi(void) {
    static const int64_t toks[] = {1, 2, 5, 24, 70};
    static const int64_t rows[] = {96, 17, 17, 130};
    const int64_t K = 133, K2 = 71;
    for (size_t ti = 0; ti < sizeof toks / sizeof toks[0]; ti++)
        for (int d = 0; d < 3; d++) {
            const int64_t n = toks[ti], ldx = K + 1, ldx2 = K2 + 5;
            const mtok_dtype dt = (mtok_dtype)d;
            mk_tensor W[4], B[4];
            float *y[4], *y1[4], *yr[4];
            int64_t ldy[4];
            float *x = xmalloc((size_t)(n * ldx) * 4), *x2 = xmalloc((size_t)(n * ldx2) * 4);
            for (int64_t i = 0; i < n * ldx; i++) x[i] = rnd_f();
            for (int64_t i = 0; i < n * ldx2; i++) x2[i] = rnd_f();
            mk_matmul_job jobs[4];
            for (int j = 0; j < 4; j++) {
                const int64_t k = j == 3 ? K2 : K;
                float *wf = xmalloc((size_t)(rows[j] * k) * 4), *bf = xmalloc((size_t)rows[j] * 4);
                for (int64_t i = 0; i < rows[j] * k; i++) wf[i] = rnd_f();
                for (int64_t i = 0; i < rows[j]; i++) bf[i] = rnd_f();
                W[j] = make_tensor(wf, rows[j], k, dt);
                B[j] = make_tensor(bf, 1, rows[j], MTOK_F32);
                free(wf), free(bf);
                ldy[j] = rows[j] + 3 * j;
                y[j] = xmalloc((size_t)(n * ldy[j]) * 4), y1[j] = xmalloc((size_t)(n * ldy[j]) * 4);
                yr[j] = xmalloc((size_t)(n * ldy[j]) * 4);
                jobs[j] = (mk_matmul_job){.y = y[j], .ldy = ldy[j], .x = j == 3 ? x2 : x, .ldx = j == 3 ? ldx2 : ldx,
                                          .W = &W[j], .b = j % 2 ? NULL : &B[j]};
            }
            mk_matmul_job rj[4];
            memcpy(rj, jobs, sizeof rj);
            for (int j = 0; j < 4; j++) rj[j].y = yr[j];
            mk_matmul_multi_ref(rj, 4, n);
            float *yb[4], *ys[4]; /* the avx512 paths' references for bf16 W (x rounded; x split) */
            for (int j = 0; j < 4; j++) {
                yb[j] = xmalloc((size_t)(n * ldy[j]) * 4), ys[j] = xmalloc((size_t)(n * ldy[j]) * 4);
                mk_matmul_bf16dot_ref(yb[j], ldy[j], jobs[j].x, jobs[j].ldx, n, jobs[j].W, jobs[j].b, 0);
                mk_matmul_bf16dot_ref(ys[j], ldy[j], jobs[j].x, jobs[j].ldx, n, jobs[j].W, jobs[j].b, 1);
            }
            FOR_PATHS(path) {
                for (int j = 0; j < 4; j++) {
                    memset(y[j], 0, (size_t)(n * ldy[j]) * 4), memset(y1[j], 0, (size_t)(n * ldy[j]) * 4);
                    mk_matmul(y1[j], ldy[j], jobs[j].x, jobs[j].ldx, n, jobs[j].W, jobs[j].b);
                }
                mk_matmul_multi(jobs, 4, n);
                for (int j = 0; j < 4; j++) {
                    char what[128];
                    snprintf(what, sizeof what, "matmul_multi %s %s job %d n_tok=%lld", g_path_name,
                             dt_name(dt), j, (long long)n);
                    CHECK(!memcmp(y[j], y1[j], (size_t)(n * ldy[j]) * 4), "%s: differs from mk_matmul", what);
                    for (int64_t t = 0; t < n; t++)
                        if (!close_enough(what, y[j] + t * ldy[j],
                                          (path == PATH_AVX512 ? ys[j] : path == PATH_AVX512_BF16 ? yb[j] : yr[j]) + t * ldy[j],
                                          rows[j], 1e-4))
                            break;
                }
            }
            paths_reset();
            for (int j = 0; j < 4; j++)
                free((void *)W[j].data), free((void *)B[j].data), free(y[j]), free(y1[j]), free(yr[j]), free(yb[j]), free(ys[j]);
            free(x), free(x2);
        }
}

/* ---- rmsnorm, rope, swiglu, embed ---- */

static void test_rmsnorm(void) {
    static const int64_t ns[] = {1, 7, 128, 4096, 4099};
    for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++)
        for (int d = 0; d < 3; d++) {
            const int64_t n = ns[c];
            float *x = xmalloc((size_t)n * 4), *wf = xmalloc((size_t)n * 4), *yr = xmalloc((size_t)n * 4),
                  *y = xmalloc((size_t)n * 4);
            for (int64_t i = 0; i < n; i++) x[i] = rnd_f() * 3.0f, wf[i] = 1.0f + rnd_f() * 0.5f;
            mk_tensor w = make_tensor(wf, 1, n, (mtok_dtype)d);
            mk_rmsnorm_ref(yr, x, &w, n, 1e-5f);
            double mx = 0;
            for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(yr[i]));
            FOR_PATHS(path) {
                for (int alias = 0; alias < 2; alias++) {
                    float *out = y;
                    if (alias) memcpy(out = y, x, (size_t)n * 4);
                    mk_rmsnorm(out, alias ? out : x, &w, n, 1e-5f);
                    double e = 0;
                    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)out[i] - yr[i]));
                    CHECK(e <= 1e-6 * mx, "rmsnorm %s n=%lld w=%s alias=%d: max err %.3g (max |y| %.3g)",
                          g_path_name, (long long)n, dt_name((mtok_dtype)d), alias, e, mx);
                }
            }
            paths_reset();
            free((void *)w.data), free(x), free(wf), free(yr), free(y);
        }
}

static void test_rope(void) {
    /* the table: double math vs long double at the largest 1M-context position */
    static const int64_t poss[] = {0, 1, 7, 4095, 131071, 1048575};
    const int64_t rd = 64;
    float cs[64], sn[64];
    for (size_t p = 0; p < sizeof poss / sizeof poss[0]; p++) {
        const double base = p % 2 ? 10000.0 : 10000.0 * 500;
        mk_rope_table(cs, sn, rd, base, poss[p]);
        double e = 0;
        for (int64_t i = 0; i < rd / 2; i++) {
            const long double th = powl((long double)base, -2.0L * i / rd), a = (long double)poss[p] * th;
            e = fmax(e, fmax(fabs((double)(cs[i] - cosl(a))), fabs((double)(sn[i] - sinl(a)))));
        }
        CHECK(e < 1e-6, "rope table pos=%lld base=%g: max err %.3g vs long double", (long long)poss[p], base, e);
    }
    /* the rotation: several head/rope widths (tails of the 8-wide loop) */
    static const int64_t dims[][3] = {{5, 128, 64}, {3, 96, 48}, {2, 16, 6}, {4, 10, 2}, {1, 8, 8}};
    for (size_t c = 0; c < sizeof dims / sizeof dims[0]; c++) {
        const int64_t H = dims[c][0], hd = dims[c][1], rdim = dims[c][2], n = H * hd;
        float *x0 = xmalloc((size_t)n * 4), *x = xmalloc((size_t)n * 4), *ref = xmalloc((size_t)n * 4);
        float c2[64], s2[64];
        mk_rope_table(c2, s2, rdim, 10000.0, 12345);
        for (int64_t i = 0; i < n; i++) x0[i] = rnd_f();
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < hd; i++) {
                const float *v = x0 + h * hd;
                double r = v[i];
                if (i < rdim) {
                    const int64_t j = i / 2;
                    r = i % 2 == 0 ? (double)v[i] * c2[j] - (double)v[i + 1] * s2[j]
                                   : (double)v[i - 1] * s2[j] + (double)v[i] * c2[j];
                }
                ref[h * hd + i] = (float)r;
            }
        FOR_PATHS(path) {
            memcpy(x, x0, (size_t)n * 4);
            mk_rope(x, H, hd, rdim, c2, s2);
            char what[96];
            snprintf(what, sizeof what, "rope %s H=%lld hd=%lld rd=%lld", g_path_name, (long long)H,
                     (long long)hd, (long long)rdim);
            close_enough(what, x, ref, n, 1e-6);
        }
        paths_reset();
        free(x0), free(x), free(ref);
    }
}

static void test_swiglu(void) {
    const int64_t n = 1003;
    float *g = xmalloc(n * 4), *u = xmalloc(n * 4), *ref = xmalloc(n * 4), *out = xmalloc(n * 4);
    static const float edge[] = {0.0f, -0.0f, 100.0f, -100.0f, 88.5f, -88.5f, 1e-30f, -1e30f, 1e30f, 20.0f, -20.0f};
    for (int64_t i = 0; i < n; i++) {
        g[i] = i < (int64_t)(sizeof edge / sizeof edge[0]) ? edge[i] : rnd_f() * 20.0f;
        u[i] = rnd_f() * 4.0f;
        ref[i] = (float)((double)g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
    }
    FOR_PATHS(path) {
        mk_swiglu(out, g, u, n);
        char what[64];
        snprintf(what, sizeof what, "swiglu %s", g_path_name);
        close_enough(what, out, ref, n, 2e-6);
        memcpy(out, g, n * 4); /* in place, as forward.c calls it */
        mk_swiglu(out, out, u, n);
        snprintf(what, sizeof what, "swiglu %s in place", g_path_name);
        close_enough(what, out, ref, n, 2e-6);
    }
    paths_reset();
    free(g), free(u), free(ref), free(out);
}

static void test_embed(void) {
    const int64_t rows = 10, cols = 37;
    float *tf = xmalloc(rows * cols * 4), y[37], ref[37];
    for (int64_t i = 0; i < rows * cols; i++) tf[i] = rnd_f() * 10.0f;
    for (int d = 0; d < 3; d++) {
        mk_tensor t = make_tensor(tf, rows, cols, (mtok_dtype)d);
        for (int32_t id = 0; id < rows; id += 3) {
            for (int64_t i = 0; i < cols; i++) ref[i] = mk_get(&t, id * cols + i);
            FOR_PATHS(path) {
                mk_embed(y, &t, id);
                CHECK(memcmp(y, ref, sizeof y) == 0, "embed %s %s id=%d", g_path_name, dt_name((mtok_dtype)d), id);
            }
        }
        FOR_PATHS(path) {
            mk_embed(y, &t, (int32_t)rows); /* out of range: zeros, no read */
            CHECK(y[0] == 0 && y[cols - 1] == 0, "embed out-of-range id must give zeros");
        }
        paths_reset();
        free((void *)t.data);
    }
    free(tf);
}

/* ---- attention ---- */

/* The direct two-pass softmax in double: out = sum_j softmax(s)_j v_j. */
static void attn_direct(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t stride, int64_t D,
                        float scale, float *out) {
    double *s = xmalloc((size_t)n * sizeof(double)), m = -INFINITY, L = 0;
    for (int64_t j = 0; j < n; j++) {
        double d = 0;
        for (int64_t i = 0; i < D; i++) d += (double)q[i] * mk_bf16_to_f32(k[j * stride + i]);
        s[j] = d * scale;
        m = fmax(m, s[j]);
    }
    for (int64_t j = 0; j < n; j++) L += s[j] = exp(s[j] - m);
    for (int64_t i = 0; i < D; i++) {
        double a = 0;
        for (int64_t j = 0; j < n; j++) a += s[j] * mk_bf16_to_f32(v[j * stride + i]);
        out[i] = (float)(a / L);
    }
    free(s);
}

enum { ATT_RANDOM, ATT_EQUAL, ATT_LARGE, ATT_LARGE_EQUAL, ATT_LARGE_NEG_EQUAL, ATT_MODES };

static void test_attn_case(int64_t D, int64_t n, int mode) {
    const int64_t stride = 2 * D + 3;
    const float scale = (float)(1.0 / sqrt((double)D));
    uint16_t *k = xmalloc((size_t)(n * stride) * 2), *v = xmalloc((size_t)(n * stride) * 2);
    float *q = xmalloc((size_t)D * 4), *ref = xmalloc((size_t)D * 4), *acc = xmalloc((size_t)D * 4),
          *acc2 = xmalloc((size_t)D * 4), *out = xmalloc((size_t)D * 4);
    const int equal = mode == ATT_EQUAL || mode == ATT_LARGE_EQUAL || mode == ATT_LARGE_NEG_EQUAL;
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < stride; i++) {
            k[j * stride + i] = mk_f32_to_bf16(equal ? (float)((i * 7919) % 13) / 13.0f - 0.4f : rnd_f());
            v[j * stride + i] = mk_f32_to_bf16(rnd_f());
        }
    for (int64_t i = 0; i < D; i++) q[i] = rnd_f();
    if (mode >= ATT_LARGE) {
        /* rescale q so the largest |score| is 1e4 (negative for the last mode): exp(score) overflows */
        double mx = 0, sum = 0;
        for (int64_t j = 0; j < n; j++) {
            double d = 0;
            for (int64_t i = 0; i < D; i++) d += (double)q[i] * mk_bf16_to_f32(k[j * stride + i]);
            mx = fmax(mx, fabs(d * scale));
            sum += d;
        }
        double f = mx > 0 ? 1e4 / mx : 1.0;
        if (mode == ATT_LARGE_NEG_EQUAL && sum > 0) f = -f;
        for (int64_t i = 0; i < D; i++) q[i] = (float)(q[i] * f);
    }
    attn_direct(q, k, v, n, stride, D, scale, ref);
    const int64_t split = rnd_int(n + 1); /* keys [0, split) to state A, the rest to B; merged at the end */
    for (int impl = 0; impl < N_PATHS + 1; impl++) {
        /* impl < N_PATHS: mk_attn_accum on that path; N_PATHS: mk_attn_accum_ref */
        if (impl < N_PATHS && !set_path(impl)) continue;
        float m = -INFINITY, l = 0, m2 = -INFINITY, l2 = 0;
        memset(acc, 0, (size_t)D * 4), memset(acc2, 0, (size_t)D * 4);
        for (int64_t j = 0; j < n;) {
            int64_t nb = 1 + rnd_int(rnd_int(2) ? 8 : 100);
            if (j + nb > n) nb = n - j;
            if (j < split && j + nb > split) nb = split - j;
            float *a = j < split ? acc : acc2, *pm = j < split ? &m : &m2, *pl = j < split ? &l : &l2;
            if (impl == N_PATHS)
                mk_attn_accum_ref(q, k + j * stride, v + j * stride, nb, stride, D, scale, a, pm, pl);
            else
                mk_attn_accum(q, k + j * stride, v + j * stride, nb, stride, D, scale, a, pm, pl);
            j += nb;
        }
        mk_attn_merge(acc, &m, &l, acc2, m2, l2, D);
        for (int64_t i = 0; i < D; i++) out[i] = acc[i] / l;
        char what[128];
        snprintf(what, sizeof what, "attention %s D=%lld n=%lld mode=%d split=%lld",
                 impl == N_PATHS ? "ref" : g_path_name, (long long)D, (long long)n, mode, (long long)split);
        close_enough(what, out, ref, D, 1e-5);
        CHECK(isfinite(m) && l >= 1.0f && l <= (float)n * 1.0001f, "%s: state m=%g l=%g", what, m, l);
    }
    paths_reset();
    free(k), free(v), free(q), free(ref), free(acc), free(acc2), free(out);
}

static void test_attn(void) {
    static const int64_t Ds[] = {128, 1, 13, 72};
    static const int64_t ns[] = {1, 2, 5, 64, 65, 300};
    for (size_t d = 0; d < sizeof Ds / sizeof Ds[0]; d++)
        for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++)
            for (int mode = 0; mode < ATT_MODES; mode++) test_attn_case(Ds[d], ns[c], mode);
    /* empty calls and merges leave the state valid */
    float acc[4] = {0}, acc2[4] = {1, 2, 3, 4}, q[4] = {1, 1, 1, 1}, m = -INFINITY, l = 0;
    uint16_t kv[4] = {0};
    FOR_PATHS(path) {
        mk_attn_accum(q, kv, kv, 0, 4, 4, 0.5f, acc, &m, &l);
        CHECK(m == -INFINITY && l == 0 && acc[0] == 0, "attention n=0 changed the state (path %d)", path);
    }
    paths_reset();
    mk_attn_merge(acc, &m, &l, acc2, -INFINITY, 0, 4); /* empty into empty */
    CHECK(m == -INFINITY && l == 0 && acc[0] == 0 && !isnan(acc[3]), "merge of two empty states");
    mk_attn_merge(acc, &m, &l, acc2, 2.0f, 3.0f, 4); /* non-empty into empty: a copy */
    CHECK(m == 2.0f && l == 3.0f && acc[3] == 4.0f, "merge into an empty state");
    mk_attn_merge(acc, &m, &l, acc2, -INFINITY, 0, 4); /* empty into non-empty: unchanged */
    CHECK(m == 2.0f && l == 3.0f && acc[3] == 4.0f, "merge of an empty state");
    mk_attn_merge(acc, &m, &l, acc2, 2.0f + logf(2.0f), 3.0f, 4); /* the old side is scaled by 1/2 */
    CHECK(fabsf(l - 4.5f) < 1e-5f && fabsf(acc[0] - 1.5f) < 1e-5f && fabsf(m - 2.0f - logf(2.0f)) < 1e-6f,
          "merge arithmetic: l=%g acc0=%g", l, acc[0]);
}

/* mk_attn_block (grouped rows x one KV block at a time, causal) against its reference and against
 * one mk_attn_accum_ref call per row: several blocks in sequence, then the output acc / l. With
 * panels, mk_attn_block reads K from a copy in the KV store's panel layout (block a multiple of 16)
 * whose slots past the block's keys hold NaN: a kernel that let them into a score would fail. */
static void test_attn_block_case(int64_t D, int64_t n_tok, int64_t n_head, int64_t n_keys, int64_t block,
                                 int causal, int panels) {
    const int64_t G = 2, stride = G * D + 5, q_ts = (n_head * G + 1) * D, ml_ts = n_head * G + 3;
    /* queries are the last n_tok positions (or start at 0 when there are fewer keys than queries) */
    const int64_t q_pos0 = causal && n_keys > n_tok ? n_keys - n_tok : 0;
    const float scale = (float)(1.0 / sqrt((double)D));
    uint16_t *k = xmalloc((size_t)(n_keys * stride) * 2), *v = xmalloc((size_t)(n_keys * stride) * 2);
    float *q = xmalloc((size_t)(n_tok * q_ts) * 4);
    float *acc[2], *m[2], *l[2];
    for (int64_t i = 0; i < n_keys * stride; i++) k[i] = mk_f32_to_bf16(rnd_f()), v[i] = mk_f32_to_bf16(rnd_f());
    for (int64_t i = 0; i < n_tok * q_ts; i++) q[i] = 3.0f * rnd_f();
    for (int i = 0; i < 2; i++) {
        acc[i] = xmalloc((size_t)(n_tok * q_ts) * 4);
        m[i] = xmalloc((size_t)(n_tok * ml_ts) * 4);
        l[i] = xmalloc((size_t)(n_tok * ml_ts) * 4);
        for (int64_t j = 0; j < n_tok * q_ts; j++) acc[i][j] = 0.0f;
        for (int64_t j = 0; j < n_tok * ml_ts; j++) m[i][j] = -INFINITY, l[i][j] = 0.0f;
    }
    const int64_t g = 1; /* the second group: offsets into q, acc, m, l and K/V columns */
    const int64_t nblk = (n_keys + block - 1) / block;
    uint16_t *kp = panels ? xmalloc((size_t)(nblk * block * D) * 2) : NULL;
    for (int64_t b = 0; panels && b < nblk; b++)
        for (int64_t j = 0; j < block; j++)
            for (int64_t d = 0; d < D; d++)
                kp[b * block * D + MK_KPANEL_AT(j, d, D)] =
                    b * block + j < n_keys ? k[(b * block + j) * stride + g * D + d] : 0x7fc0; /* NaN */
    for (int impl = 0; impl < 2; impl++) {
        /* impl 0: mk_attn_block (dispatch), impl 1: per-row mk_attn_accum_ref */
        for (int64_t b0 = 0; b0 < n_keys; b0 += block) {
            const int64_t nb = n_keys - b0 < block ? n_keys - b0 : block;
            mk_attn_params P = {.q = q + g * n_head * D, .q_ts = q_ts, .acc = acc[impl] + g * n_head * D,
                                .acc_ts = q_ts, .m = m[impl] + g * n_head, .l = l[impl] + g * n_head,
                                .ml_ts = ml_ts, .n_tok = n_tok, .n_head = n_head, .D = D,
                                .k = k + b0 * stride + g * D, .v = v + b0 * stride + g * D, .kv_stride = stride,
                                .n = nb, .q_pos0 = q_pos0, .k_pos0 = b0, .causal = causal, .scale = scale,
                                .k_next = b0 + block < n_keys ? k + (b0 + block) * stride + g * D : NULL};
            if (impl == 0 && panels) {
                P.k_panels = 1;
                P.k = kp + b0 * D;
                P.k_next = b0 + block < n_keys ? kp + (b0 + block) * D : NULL;
            }
            if (impl == 0) {
                mk_attn_block(&P);
            } else {
                for (int64_t t = 0; t < n_tok; t++)
                    for (int64_t h = 0; h < n_head; h++) {
                        int64_t nv = causal ? q_pos0 + t - b0 + 1 : nb;
                        nv = nv < 0 ? 0 : nv > nb ? nb : nv;
                        const int64_t r = t * q_ts + (g * n_head + h) * D, ml = t * ml_ts + g * n_head + h;
                        mk_attn_accum_ref(q + r, P.k, P.v, nv, stride, D, scale, acc[1] + r, m[1] + ml, l[1] + ml);
                    }
            }
        }
    }
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t h = 0; h < n_head; h++) {
            const int64_t r = t * q_ts + (g * n_head + h) * D, ml = t * ml_ts + g * n_head + h;
            for (int i = 0; i < 2; i++)
                for (int64_t d = 0; d < D; d++) acc[i][r + d] /= l[i][ml];
        }
    char what[160];
    snprintf(what, sizeof what, "attn_block %s D=%lld tok=%lld heads=%lld keys=%lld block=%lld causal=%d%s",
             g_path_name, (long long)D, (long long)n_tok, (long long)n_head, (long long)n_keys,
             (long long)block, causal, panels ? " K panels" : "");
    close_enough(what, acc[0], acc[1], n_tok * q_ts, 2e-5);
    int same_ml = 1;
    for (int64_t j = 0; j < n_tok * ml_ts; j++)
        same_ml &= (m[0][j] == m[1][j] || fabsf(m[0][j] - m[1][j]) <= 1e-4f * (1 + fabsf(m[1][j]))) &&
                   fabsf(l[0][j] - l[1][j]) <= 1e-4f * (1 + fabsf(l[1][j]));
    CHECK(same_ml, "%s: running max / sum differ", what);
    /* rows of the other group were not touched */
    CHECK(acc[0][0] == 0.0f && m[0][0] == -INFINITY && l[0][0] == 0.0f, "%s: wrote outside its group", what);
    for (int i = 0; i < 2; i++) free(acc[i]), free(m[i]), free(l[i]);
    free(k), free(v), free(q), free(kp);
}

static void test_attn_block(void) {
    static const struct {
        int64_t D, n_tok, n_head, n_keys, block;
    } cs[] = {{128, 1, 8, 1, 128},   {128, 1, 8, 300, 128}, {128, 1, 1, 65, 64},   {128, 7, 8, 300, 128},
              {64, 3, 2, 200, 16},   {64, 13, 4, 77, 1000}, {72, 5, 3, 150, 37},  {13, 4, 2, 50, 8},
              {256, 2, 8, 130, 128}, {320, 2, 2, 40, 16},   {128, 16, 8, 1, 1},   {8, 6, 1, 9, 3},
              /* the direct (few-row) form's edges: 23 rows, odd blocks, D = 192 */
              {128, 1, 23, 131, 128}, {192, 3, 5, 70, 33},
              /* K panels only (blocks of 16k): partial last panels, 2 decode tokens, D = 72 (tiled form) */
              {128, 2, 8, 1000, 128}, {128, 1, 8, 5, 16},   {72, 5, 3, 150, 32},  {16, 1, 4, 40, 16},
              /* the avx512 tiled form (>= 24 rows, D % 16 == 0): D % 32 == 16, D = 256, D = 16 */
              {48, 9, 3, 90, 32},     {256, 4, 8, 200, 64},  {16, 30, 1, 40, 16}, {80, 25, 1, 70, 48}};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        for (int causal = 0; causal < 2; causal++)
            for (int panels = 0; panels < 1 + (cs[i].block % 16 == 0); panels++)
                FOR_PATHS(path)
                test_attn_block_case(cs[i].D, cs[i].n_tok, cs[i].n_head, cs[i].n_keys, cs[i].block, causal, panels);
    paths_reset();
}

/* ---- VDPBF16PS as this CPU computes it: the definition docs/PERFORMANCE.md ("AVX-512 kernels")
 * states, per 32-bit lane acc += a[2j+1] * b[2j+1], then acc += a[2j] * b[2j], two fused steps rounded
 * to nearest even, bf16 subnormal inputs read as zero, subnormal results flushed to zero ---- */
static float ftz(float f) { return fabsf(f) < 0x1p-126f ? copysignf(0.0f, f) : f; }
static float bfdaz(uint16_t h) { return (h & 0x7f80) ? mk_bf16_to_f32(h) : 0.0f; }

__attribute__((target("avx512f,avx512bf16"))) static void hw_dpbf16(float *acc, const uint32_t *a, const uint32_t *b) {
    const __m512i va = _mm512_loadu_si512(a), vb = _mm512_loadu_si512(b);
    _mm512_storeu_ps(acc, _mm512_dpbf16_ps(_mm512_loadu_ps(acc), (__m512bh)va, (__m512bh)vb));
}

static void test_dpbf16_definition(void) {
    if (mk_isa_cpu() < MK_ISA_AVX512) return;
    int64_t bad = 0, n = 0;
    for (int it = 0; it < 20000; it++) {
        float acc[16], want[16];
        uint32_t a[16], b[16];
        for (int j = 0; j < 16; j++) {
            /* magnitudes 2^-20 .. 2^20 so that the two steps' roundings are visible */
            const float s1 = ldexpf(rnd_f(), (int)rnd_int(41) - 20), s2 = ldexpf(rnd_f(), (int)rnd_int(41) - 20);
            a[j] = mk_f32_to_bf16(s1) | (uint32_t)mk_f32_to_bf16(rnd_f() * 3) << 16;
            b[j] = mk_f32_to_bf16(s2) | (uint32_t)mk_f32_to_bf16(rnd_f() * 5) << 16;
            acc[j] = ldexpf(rnd_f(), (int)rnd_int(41) - 20);
            if (it % 4 == 0) acc[j] = -(bfdaz((uint16_t)a[j]) * bfdaz((uint16_t)b[j])); /* cancellation */
            if (it % 8 == 1) /* a subnormal bf16 times 2^100: 0 when read as zero, ~2^-30 if not */
                a[j] = (a[j] & 0xffff0000u) | (uint32_t)(1 + rnd_int(127)), b[j] = (b[j] & 0xffff0000u) | 0x7180u;
            if (it % 8 == 2) /* 2^-70 * 2^-60 onto 0: a subnormal fp32 result, flushed to zero */
                a[j] = 0x1c80u, b[j] = 0x2180u, acc[j] = 0.0f;
            float t = ftz(fmaf(bfdaz((uint16_t)(a[j] >> 16)), bfdaz((uint16_t)(b[j] >> 16)), acc[j]));
            want[j] = ftz(fmaf(bfdaz((uint16_t)a[j]), bfdaz((uint16_t)b[j]), t));
        }
        hw_dpbf16(acc, a, b);
        for (int j = 0; j < 16; j++, n++) bad += f_bits(acc[j]) != f_bits(want[j]);
    }
    CHECK(bad == 0, "VDPBF16PS differs from two fused steps (odd pair, then even) in %lld of %lld lanes", (long long)bad,
          (long long)n);
}

/* ---- conversions ---- */

__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) { return (uint16_t)_cvtss_sh(f, 0); }
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

static void test_conversions(void) {
    /* f32 -> bf16: ties to even, NaN quiet, overflow to inf, subnormals */
    static const uint32_t bf_in[] = {0x3f800000, 0x3f808000, 0x3f818000, 0x3f808001, 0x7f800000, 0xff800000,
                                     0x7f7fffff, 0x7f7f7fff, 0x7fc00000, 0x7f800001, 0xffc00000, 0x00008000,
                                     0x00018000, 0x00008001, 0x80000000, 0x00000001, 0xbf7fffff};
    static const uint16_t bf_out[] = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x7f80, 0xff80, 0x7f80, 0x7f7f, 0x7fc0,
                                      0x7fc0, 0xffc0, 0x0000, 0x0002, 0x0001, 0x8000, 0x0000, 0xbf80};
    for (size_t i = 0; i < sizeof bf_in / sizeof bf_in[0]; i++)
        CHECK(mk_f32_to_bf16(bits_f(bf_in[i])) == bf_out[i], "bf16(0x%08x) = 0x%04x, want 0x%04x", bf_in[i],
              mk_f32_to_bf16(bits_f(bf_in[i])), bf_out[i]);
    /* the row converter (both paths) against the scalar one on edge values and random bit patterns */
    const int64_t n = 4099;
    float *src = xmalloc(n * 4);
    uint16_t *dst = xmalloc(n * 2);
    for (int64_t i = 0; i < n; i++)
        src[i] = i < (int64_t)(sizeof bf_in / sizeof bf_in[0]) ? bits_f(bf_in[i]) : bits_f((uint32_t)rnd_u64());
    FOR_PATHS(path) {
        mk_f32_to_bf16_row(dst, src, n);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += dst[i] != mk_f32_to_bf16(src[i]);
        CHECK(bad == 0, "f32_to_bf16_row %s: %lld mismatches", g_path_name, (long long)bad);
    }
    paths_reset();
    free(src), free(dst);

    /* f16 -> f32, all 65536 values, against an independent formula */
    int64_t bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const uint32_t e = (h >> 10) & 31, mt = h & 1023;
        const float f = mk_f16_to_f32((uint16_t)h);
        if (e == 31 && mt) {
            bad += !isnan(f) || (f_bits(f) >> 31) != (h >> 15) || !(f_bits(f) & 0x400000);
            continue;
        }
        double want = e == 31 ? INFINITY : e == 0 ? ldexp(mt, -24) : ldexp(1024 + mt, (int)e - 25);
        if (h & 0x8000) want = -want;
        bad += f_bits(f) != f_bits((float)want);
    }
    CHECK(bad == 0, "f16_to_f32: %lld of 65536 values wrong", (long long)bad);
    /* f32 -> f16 edges: max, overflow tie, ties to even, subnormal boundaries, NaN */
    static const float h_in[] = {65504.0f, 65519.99f, 65520.0f, 1e9f, -INFINITY, 0x1p-24f, 0x1p-25f, 0x1.000002p-25f,
                                 0x1.8p-24f, 0x1.4p-23f, 0x1p-14f, 0x1.ffcp-15f, 1.0f + 0x1p-11f, 1.0f + 0x3p-11f,
                                 -0.0f, 1e-10f};
    static const uint16_t h_out[] = {0x7bff, 0x7bff, 0x7c00, 0x7c00, 0xfc00, 0x0001, 0x0000, 0x0001,
                                     0x0002, 0x0002, 0x0400, 0x0400, 0x3c00, 0x3c02, 0x8000, 0x0000};
    for (size_t i = 0; i < sizeof h_in / sizeof h_in[0]; i++)
        CHECK(mk_f32_to_f16(h_in[i]) == h_out[i], "f16(%a) = 0x%04x, want 0x%04x", h_in[i], mk_f32_to_f16(h_in[i]),
              h_out[i]);
    CHECK((mk_f32_to_f16(NAN) & 0x7e00) == 0x7e00, "f16(NaN) must be a quiet NaN");
    /* round trip of every finite half, and every midpoint between neighbours rounds to the even one */
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31) continue;
        bad += mk_f32_to_f16(mk_f16_to_f32((uint16_t)h)) != h;
        if ((h & 0x7fff) < 0x7bff) {
            const float mid = (mk_f16_to_f32((uint16_t)h) + mk_f16_to_f32((uint16_t)(h + 1))) * 0.5f;
            bad += mk_f32_to_f16(mid) != (h & 1 ? h + 1 : h);
        }
    }
    CHECK(bad == 0, "f16 round trip / ties: %lld wrong", (long long)bad);
    /* against the hardware (F16C) on a sweep of all exponents and random bit patterns */
    paths_reset();
    if (mk_have_avx2()) { /* implies F16C */
        bad = 0;
        for (uint64_t u = 0; u < (1ull << 32); u += 997) {
            const float f = bits_f((uint32_t)u);
            bad += mk_f32_to_f16(f) != hw_f32_to_f16(f);
        }
        for (int i = 0; i < 1000000; i++) {
            /* exponents 2^-28 .. 2^16: the half subnormal, normal and overflow ranges */
            const uint64_t r = rnd_u64();
            const float f = bits_f((uint32_t)(r & 0x807fffffu) | (uint32_t)(99 + (r >> 40) % 45) << 23);
            bad += mk_f32_to_f16(f) != hw_f32_to_f16(f);
        }
        for (uint32_t h = 0; h < 65536; h++)
            bad += f_bits(mk_f16_to_f32((uint16_t)h)) != f_bits(hw_f16_to_f32((uint16_t)h));
        CHECK(bad == 0, "f16 conversions differ from F16C in %lld cases", (long long)bad);
    }
}

/* ---- throughput (informational) ---- */

static void bench_matmul(int64_t n_tok, int64_t N, int64_t K, double min_s) {
    uint16_t *wd = xmalloc((size_t)(N * K) * 2);
    for (int64_t i = 0; i < N * K; i++) wd[i] = mk_f32_to_bf16(rnd_f() * 0.05f);
    mk_tensor W = {wd, MTOK_BF16, N, K};
    float *x = xmalloc((size_t)(n_tok * K) * 4), *y = xmalloc((size_t)(n_tok * N) * 4);
    for (int64_t i = 0; i < n_tok * K; i++) x[i] = rnd_f();
    mk_matmul(y, N, x, K, n_tok, &W, NULL); /* warm-up: page faults, thread pool, packing buffers */
    /* the best of several calls: on a shared machine the mean mostly measures the neighbours */
    double t = INFINITY;
    const double t_end = omp_get_wtime() + min_s;
    for (int it = 0; it < 3 || omp_get_wtime() < t_end; it++) {
        const double t0 = omp_get_wtime();
        mk_matmul(y, N, x, K, n_tok, &W, NULL);
        t = fmin(t, omp_get_wtime() - t0);
    }
    const double flop = 2.0 * (double)n_tok * (double)N * (double)K, bytes = 2.0 * (double)N * (double)K;
    printf("  %-6s %4lld tok x %5lld x %5lld bf16: %8.3f ms  %7.1f GFLOP/s  %6.1f GB/s of weights\n",
           mk_isa_name(), (long long)n_tok, (long long)N, (long long)K, t * 1e3, flop / t * 1e-9,
           bytes / t * 1e-9);
    free((void *)W.data), free(x), free(y);
}

/* One layer of GQA attention, 16 heads x 128 in 2 groups (glm4-1b / 9B), n_tok queries at the end of
 * n_keys cached positions in blocks of 128: per-head mk_attn_accum (today's forward.c) against
 * mk_attn_block per (group, token tile). */
static void bench_attn(int64_t n_tok, int64_t n_keys, double min_s) {
    const int64_t H = 16, G = 2, D = 128, per = H / G, stride = G * D, B = 128;
    const float scale = (float)(1.0 / sqrt((double)D));
    uint16_t *k = xmalloc((size_t)(n_keys * stride) * 2), *v = xmalloc((size_t)(n_keys * stride) * 2);
    float *q = xmalloc((size_t)(n_tok * H * D) * 4), *acc = xmalloc((size_t)(n_tok * H * D) * 4);
    float *m = xmalloc((size_t)(n_tok * H) * 4), *l = xmalloc((size_t)(n_tok * H) * 4);
    for (int64_t i = 0; i < n_keys * stride; i++) k[i] = mk_f32_to_bf16(rnd_f()), v[i] = mk_f32_to_bf16(rnd_f());
    for (int64_t i = 0; i < n_tok * H * D; i++) q[i] = rnd_f();
    const int64_t q_pos0 = n_keys - n_tok, tile = n_tok < 16 ? n_tok : 16;
    double t_old = INFINITY, t_new = INFINITY;
    for (int impl = 0; impl < 2; impl++) {
        const double t_end = omp_get_wtime() + min_s;
        for (int it = 0; it < 3 || omp_get_wtime() < t_end; it++) {
            const double t0 = omp_get_wtime();
            if (impl == 0) {
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
                for (int64_t t = 0; t < n_tok; t++)
                    for (int64_t h = 0; h < H; h++) {
                        float *a = acc + (t * H + h) * D, mm = -INFINITY, ll = 0;
                        memset(a, 0, (size_t)D * 4);
                        const int64_t p = q_pos0 + t;
                        for (int64_t b = 0; b <= p / B; b++) {
                            const int64_t nb = p - b * B + 1 < B ? p - b * B + 1 : B;
                            mk_attn_accum(q + (t * H + h) * D, k + b * B * stride + h / per * D,
                                          v + b * B * stride + h / per * D, nb, stride, D, scale, a, &mm, &ll);
                        }
                    }
            } else {
                const int64_t n_tiles = (n_tok + tile - 1) / tile;
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
                for (int64_t g = 0; g < G; g++)
                    for (int64_t tt = 0; tt < n_tiles; tt++) {
                        const int64_t t0 = tt * tile, nt = n_tok - t0 < tile ? n_tok - t0 : tile;
                        for (int64_t t = t0; t < t0 + nt; t++)
                            for (int64_t h = g * per; h < (g + 1) * per; h++) {
                                m[t * H + h] = -INFINITY, l[t * H + h] = 0;
                                memset(acc + (t * H + h) * D, 0, (size_t)D * 4);
                            }
                        const int64_t p_last = q_pos0 + t0 + nt - 1;
                        for (int64_t b = 0; b <= p_last / B; b++) {
                            mk_attn_params P = {.q = q + (t0 * H + g * per) * D, .q_ts = H * D,
                                                .acc = acc + (t0 * H + g * per) * D, .acc_ts = H * D,
                                                .m = m + t0 * H + g * per, .l = l + t0 * H + g * per, .ml_ts = H,
                                                .n_tok = nt, .n_head = per, .D = D,
                                                .k = k + b * B * stride + g * D, .v = v + b * B * stride + g * D,
                                                .kv_stride = stride, .n = n_keys - b * B < B ? n_keys - b * B : B,
                                                .q_pos0 = q_pos0 + t0, .k_pos0 = b * B, .causal = 1, .scale = scale};
                            mk_attn_block(&P);
                        }
                    }
            }
            const double dt = omp_get_wtime() - t0;
            if (impl == 0) t_old = fmin(t_old, dt);
            else t_new = fmin(t_new, dt);
        }
    }
    const double keys = (double)n_tok * (double)q_pos0 + (double)n_tok * (n_tok + 1) / 2;
    const double flop = 4.0 * (double)H * (double)D * keys, kvb = (double)n_keys * stride * 2 * 2;
    printf("  attention %4lld tok x %6lld keys (16x128 heads, 2 groups): per-head %8.3f ms %6.1f GFLOP/s %6.1f GB/s"
           " | grouped %8.3f ms %6.1f GFLOP/s %6.1f GB/s\n",
           (long long)n_tok, (long long)n_keys, t_old * 1e3, flop / t_old * 1e-9, kvb / t_old * 1e-9, t_new * 1e3,
           flop / t_new * 1e-9, kvb / t_new * 1e-9);
    free(k), free(v), free(q), free(acc), free(m), free(l);
}

/* The bf16 matmul precision below the avx512 level (kernels/cpu_dispatch.c rounds x for bf16 W and runs
 * the level's own kernels): avx2 and scalar must then compute what VDPBF16PS would — close to
 * mk_matmul_bf16dot_ref without the split, and measurably away from the fp32 product — while the f16
 * job that shares x in the same call keeps the fp32 products bit for bit. Decode and prefill sizes. */
static void test_matmul_bf16_emulated(void) {
    static const int64_t toks[] = {1, 3, 30};
    const int64_t K = 300, rows[3] = {64, 40, 64};
    for (size_t ti = 0; ti < sizeof toks / sizeof toks[0]; ti++)
        for (int path = PATH_AVX2; path <= PATH_SCALAR; path++) {
            if (!set_path(path)) continue;
            const int64_t n = toks[ti], ldx = K + 7;
            float *x = xmalloc((size_t)(n * ldx) * 4);
            for (int64_t i = 0; i < n * ldx; i++) x[i] = rnd_f();
            mk_tensor W[3];
            float *y[3], *yf[3], *yb[3], *yr[3];
            mk_matmul_job jobs[3];
            for (int j = 0; j < 3; j++) {
                float *wf = xmalloc((size_t)(rows[j] * K) * 4);
                for (int64_t i = 0; i < rows[j] * K; i++) wf[i] = rnd_f();
                W[j] = make_tensor(wf, rows[j], K - (j == 1 ? 13 : 0), j == 2 ? MTOK_F16 : MTOK_BF16);
                free(wf);
                y[j] = xmalloc((size_t)(n * rows[j]) * 4), yf[j] = xmalloc((size_t)(n * rows[j]) * 4);
                yb[j] = xmalloc((size_t)(n * rows[j]) * 4), yr[j] = xmalloc((size_t)(n * rows[j]) * 4);
                jobs[j] = (mk_matmul_job){.y = y[j], .ldy = rows[j], .x = x, .ldx = ldx, .W = &W[j], .b = NULL};
                mk_matmul_bf16dot_ref(yb[j], rows[j], x, ldx, n, &W[j], NULL, 0);
                mk_matmul_ref(yr[j], rows[j], x, ldx, n, &W[j], NULL);
            }
            mk_precision_set(MK_PREC_FP32);
            for (int j = 0; j < 3; j++) jobs[j].y = yf[j];
            mk_matmul_multi(jobs, 3, n);
            mk_precision_set(MK_PREC_BF16);
            for (int j = 0; j < 3; j++) jobs[j].y = y[j];
            mk_matmul_multi(jobs, 3, n);
            for (int j = 0; j < 3; j++) {
                char what[128];
                snprintf(what, sizeof what, "bf16 precision emulated %s job %d (%s) n_tok=%lld", g_path_name, j,
                         dt_name(W[j].dtype), (long long)n);
                if (W[j].dtype == MTOK_F16) {
                    CHECK(!memcmp(y[j], yf[j], (size_t)(n * rows[j]) * 4), "%s: f16 W must keep the fp32 products", what);
                    continue;
                }
                double dev = 0;
                for (int64_t t = 0; t < n; t++) {
                    if (!close_enough(what, y[j] + t * rows[j], yb[j] + t * rows[j], rows[j], 1e-4)) break;
                    for (int64_t o = 0; o < rows[j]; o++) dev = fmax(dev, fabs(y[j][t * rows[j] + o] - yr[j][t * rows[j] + o]));
                }
                /* the rounding must have happened: ~2^-9 relative per element over K = 300 terms */
                CHECK(dev > 1e-4, "%s: equal to the fp32 product (max diff %g): x was not rounded", what, dev);
            }
            for (int j = 0; j < 3; j++) free((void *)W[j].data), free(y[j]), free(yf[j]), free(yb[j]), free(yr[j]);
            free(x);
        }
    paths_reset();
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    char feat[256];
    mk_cpu_features(feat, sizeof feat);
    printf("test_kernels: CPU level %s (%s), %d OpenMP threads\n", mk_isa_str(mk_isa_cpu()), feat,
           omp_get_max_threads());
    test_dpbf16_definition();
    test_conversions();
    test_matmul();
    test_matmul_multi();
    test_matmul_bf16_emulated();
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_embed();
    test_attn();
    test_attn_block();
    printf("test_kernels: %d checks, %d failed\n", g_checks, g_fail);

    printf("throughput (informational):\n");
    FOR_PATHS(path) {
        bench_matmul(1, 2048, 2048, 0.3);
        bench_matmul(64, 2048, 2048, 0.3);
        if (path == PATH_SCALAR) continue;
        bench_matmul(1, 13696, 4096, 0.5); /* 112 MB: past the caches, DRAM bandwidth */
        bench_matmul(256, 6848, 2048, 0.5); /* glm4-1b gate/up on a 256-token prefill chunk */
        bench_matmul(512, 2048, 2048, 0.5);
        bench_attn(1, 4096, 0.3);
        bench_attn(1, 16384, 0.3);
        bench_attn(64, 4096, 0.3);
    }
    paths_reset();
    return g_fail ? 1 : 0;
}
