/* test_gpu_kernels.c — every launcher of cuda/ck.h on a CUDA device, in device memory, against the CPU
 * backend's kernels (kernels/kernels.h mk_*) on the same inputs: at small shapes (odd sizes take the
 * kernels' scalar paths) and at GLM-4-9B shapes (E 4096, H 32, G 2 and 4, D 128, F 13696, KV blocks of
 * 128, the vocabulary's 151552 rows for the GEMV of the LM head), including cuBLASLt's ck_gemm_bf16
 * with the bias epilogue and with accumulation, which no CPU run can exercise.
 *
 * Exit 77 (ctest's SKIP_RETURN_CODE) when no CUDA device is usable (cudaGetDeviceCount, its count
 * initialised to 0: without a driver the runtime leaves it unwritten). --small runs only the small
 * shapes: that is how the CPU-executed build (tests/cuda_shim's runtime, label shim) runs this file.
 * Every output buffer starts as 0xFF bytes (NaN), so an element a kernel fails to write shows.
 *
 * Tolerances, llm.c-style per element |gpu - ref| <= atol + rtol |ref| (why):
 *   exact (bits)   embed, add, attn_normalize, to_bf16, copy, argmax, check, the KV rows rope_append
 *                  stores (bf16 of the k it left), merge of an empty side: the same integer or single
 *                  IEEE operation on both sides.
 *   rmsnorm        1e-6 + 1e-5|ref|: fp32 vs double sum of squares, then two roundings.
 *   swiglu         1e-7 + 1e-6|ref|: the device's expf is within 2 ulp of glibc's.
 *   rope           1e-6 + 1e-6|ref| (|x| <= 2): one rotation is two products and a sum, FMA-contracted.
 *   GEMV           4e-7 x sum_k |a_k w_k| + 1e-5|ref|: fp32 sums in another order (test_k_gemv.cc).
 *   GEMM           4e-6 x sum_k |a_k w_k| + 1e-5|ref|: tensor-core fp32 accumulation in cuBLASLt's
 *                  order (split-K included) against the CPU's fp32 sums; a wrong layout, bias or
 *                  accumulate costs ~1e-2 x sum |a w|.
 *   attention      decode: o 2e-5 + 1e-4|ref|, lse 2e-5 (1 + |ref|) against mk_attn_accum_ref (double);
 *                  prefill (bf16 tensor-core operands: the reference gets the bf16-rounded q, and P is
 *                  rounded to bf16 for P·V): o 4e-3 + 4e-3|ref|, lse 4e-3 + 2e-5|ref|.
 *   merge          1e-6 relative: the same mm_merge arithmetic as mk_attn_merge.
 * Prints one line per check and "test_gpu_kernels: N passed, F failed, S skipped". */
#include <cuda_runtime_api.h>

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/ck.h"
#include "kernels/kernels.h"

static int g_pass, g_fail, g_skip, g_small;

/* ---- device memory ---- */
static void cuda_die(cudaError_t e, const char *what, int line) {
    fprintf(stderr, "test_gpu_kernels.c:%d: %s: %s (%s)\n", line, what, cudaGetErrorString(e), cudaGetErrorName(e));
    exit(1);
}
#define CU(x)                                           \
    do {                                                \
        cudaError_t e_ = (cudaError_t)(x);              \
        if (e_ != cudaSuccess) cuda_die(e_, #x, __LINE__); \
    } while (0)

static void *dnew(size_t bytes) { /* 0xFF: NaN floats, NaN bf16, -1 ints */
    void *p = NULL;
    CU(cudaMalloc(&p, bytes ? bytes : 1));
    CU(cudaMemset(p, 0xff, bytes ? bytes : 1));
    return p;
}
static void *dup_dev(const void *h, size_t bytes) {
    void *p = dnew(bytes);
    CU(cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice));
    return p;
}
static void *hnew(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}
static void *down(const void *d, size_t bytes) {
    void *h = hnew(bytes);
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
    return h;
}

/* ---- inputs ---- */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return lo + (hi - lo) * (float)((g_rng * 0x2545f4914f6cdd1dull) >> 40) / (float)(1 << 24);
}
static float *randf(size_t n, float lo, float hi) {
    float *v = hnew(n * 4);
    for (size_t i = 0; i < n; i++) v[i] = frand(lo, hi);
    return v;
}
static uint16_t *randb(size_t n, float lo, float hi) {
    uint16_t *v = hnew(n * 2);
    for (size_t i = 0; i < n; i++) v[i] = mk_f32_to_bf16(frand(lo, hi));
    return v;
}

/* ---- checks ---- */
__attribute__((format(printf, 2, 3))) static void expect(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    ok ? g_pass++ : g_fail++;
}

/* A launcher's return code, then the device's state after it ran. */
static int ran(int rc, const char *what) {
    cudaError_t e = cudaDeviceSynchronize();
    if (rc || e != cudaSuccess) {
        expect(0, "%s: launcher returned %d, device %s", what, rc, cudaGetErrorString(e));
        return 0;
    }
    return 1;
}

/* got vs ref within atol[i] (or atol0 when atol is NULL) + rtol |ref|; non-finite ref: the same class */
static void close_to(const char *what, const float *got, const float *ref, size_t n, const float *atol, float atol0,
                     float rtol) {
    size_t bad = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        int ok;
        if (isnan(ref[i])) ok = isnan(got[i]);
        else if (isinf(ref[i])) ok = got[i] == ref[i];
        else {
            const double d = fabs((double)got[i] - ref[i]);
            worst = d > worst ? d : worst;
            ok = d <= (atol ? atol[i] : atol0) + rtol * fabs(ref[i]);
        }
        if (!ok && bad++ < 4) printf("     [%zu] got %.9g ref %.9g\n", i, got[i], ref[i]);
    }
    expect(!bad, "%s: %zu values, max|d| %.3g, %zu outside", what, n, worst, bad);
}

static void same_bits(const char *what, const void *got, const void *ref, size_t bytes) {
    size_t first = bytes;
    for (size_t i = 0; i < bytes && first == bytes; i++)
        if (((const unsigned char *)got)[i] != ((const unsigned char *)ref)[i]) first = i;
    expect(first == bytes, "%s: %zu bytes%s", what, bytes, first == bytes ? " identical" : " DIFFER");
    if (first < bytes) printf("     first difference at byte %zu\n", first);
}

/* ---- rows ---- */
static void test_embed(int64_t E, int64_t vocab, int64_t n, int64_t n_max) {
    uint16_t *table = randb((size_t)(vocab * E), -3, 3);
    int32_t *ids = hnew((size_t)n_max * 4);
    for (int64_t t = 0; t < n_max; t++) ids[t] = (int32_t)(t == 0 ? vocab - 1 : (t * 7919) % vocab);
    ck_step st = {.n = n};
    float *ref = hnew((size_t)(n_max * E) * 4);
    memset(ref, 0xff, (size_t)(n_max * E) * 4);
    const mk_tensor tt = {table, MTOK_BF16, vocab, E};
    for (int64_t t = 0; t < n; t++) mk_embed(ref + t * E, &tt, ids[t]);
    uint16_t *dt = dup_dev(table, (size_t)(vocab * E) * 2);
    int32_t *di = dup_dev(ids, (size_t)n_max * 4);
    ck_step *ds = dup_dev(&st, sizeof st);
    float *dx = dnew((size_t)(n_max * E) * 4);
    char w[96];
    snprintf(w, sizeof w, "embed E=%" PRId64 " n=%" PRId64 " of %" PRId64 " (rows past n untouched)", E, n, n_max);
    if (ran(ck_embed(NULL, dx, dt, ds, di, n_max, E), w)) {
        float *x = down(dx, (size_t)(n_max * E) * 4);
        same_bits(w, x, ref, (size_t)(n_max * E) * 4);
        free(x);
    }
    cudaFree(dt), cudaFree(di), cudaFree(ds), cudaFree(dx);
    free(table), free(ids), free(ref);
}

static void test_rmsnorm(int64_t n, int64_t E, int in_place) {
    const float eps = 1.5625e-07f;
    float *x = randf((size_t)(n * E), -2, 2), *ref = hnew((size_t)(n * E) * 4);
    uint16_t *w = randb((size_t)E, 0.5f, 1.5f);
    const mk_tensor wt = {w, MTOK_BF16, 1, E};
    for (int64_t t = 0; t < n; t++) mk_rmsnorm_ref(ref + t * E, x + t * E, &wt, E, eps);
    float *dx = dup_dev(x, (size_t)(n * E) * 4), *dy = in_place ? dx : dnew((size_t)(n * E) * 4);
    uint16_t *dw = dup_dev(w, (size_t)E * 2);
    char what[96];
    snprintf(what, sizeof what, "rmsnorm %" PRId64 " x %" PRId64 "%s vs mk_rmsnorm_ref", n, E, in_place ? " in place" : "");
    if (ran(ck_rmsnorm(NULL, dy, dx, dw, n, E, eps), what)) {
        float *y = down(dy, (size_t)(n * E) * 4);
        close_to(what, y, ref, (size_t)(n * E), NULL, 1e-6f, 1e-5f);
        free(y);
    }
    if (!in_place) cudaFree(dy);
    cudaFree(dx), cudaFree(dw);
    free(x), free(ref), free(w);
}

static void test_swiglu_add(int64_t n) {
    float *g = randf((size_t)n, -30, 30), *u = randf((size_t)n, -4, 4), *ref = hnew((size_t)n * 4);
    g[0] = -100, g[1] = 100, g[2] = 0, g[n - 1] = -0.0f;
    mk_force_scalar(1);
    mk_swiglu(ref, g, u, n);
    mk_force_scalar(0);
    float *dg = dup_dev(g, (size_t)n * 4), *du = dup_dev(u, (size_t)n * 4);
    char what[96];
    snprintf(what, sizeof what, "swiglu n=%" PRId64 " vs mk_swiglu (scalar)", n);
    if (ran(ck_swiglu(NULL, dg, du, n), what)) {
        float *y = down(dg, (size_t)n * 4);
        close_to(what, y, ref, (size_t)n, NULL, 1e-7f, 1e-6f);
        free(y);
    }
    /* add: x += a, one IEEE addition per element */
    for (int64_t i = 0; i < n; i++) ref[i] = g[i] + u[i];
    CU(cudaMemcpy(dg, g, (size_t)n * 4, cudaMemcpyHostToDevice));
    snprintf(what, sizeof what, "add n=%" PRId64, n);
    if (ran(ck_add(NULL, dg, du, n), what)) {
        float *y = down(dg, (size_t)n * 4);
        same_bits(what, y, ref, (size_t)n * 4);
        free(y);
    }
    cudaFree(dg), cudaFree(du);
    free(g), free(u), free(ref);
}

static void test_normalize_bf16_check(int64_t rows, int64_t D) {
    const int64_t n = rows * D;
    float *o = randf((size_t)n, -3, 3), *d = randf((size_t)rows, 0.5f, 40), *ref = hnew((size_t)n * 4);
    d[0] = 0, d[rows > 1 ? 1 : 0] = NAN;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < D; j++) ref[r * D + j] = o[r * D + j] * (d[r] > 0 ? 1.0f / d[r] : 0.0f);
    float *dout = dup_dev(o, (size_t)n * 4), *dd = dup_dev(d, (size_t)rows * 4);
    char what[128];
    snprintf(what, sizeof what, "attn_normalize %" PRId64 " x %" PRId64 " (d = 0 and NaN rows)", rows, D);
    if (ran(ck_attn_normalize(NULL, dout, dd, rows, D), what)) {
        float *y = down(dout, (size_t)n * 4);
        same_bits(what, y, ref, (size_t)n * 4);
        free(y);
    }
    /* to_bf16: the specials (inf, NaN, ties, the largest finite, subnormals) and random values */
    const uint32_t special[] = {0x7f800000u, 0xff800000u, 0x7fc00001u, 0xffa00000u, 0x7f7fffffu, 0x00000001u,
                                0x80000000u, 0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7f7f8000u, 0x007fffffu};
    for (size_t i = 0; i < sizeof special / sizeof *special && (int64_t)i < n; i++) memcpy(&o[i], &special[i], 4);
    uint16_t *bref = hnew((size_t)n * 2), *db = dnew((size_t)n * 2);
    mk_f32_to_bf16_row(bref, o, n);
    CU(cudaMemcpy(dout, o, (size_t)n * 4, cudaMemcpyHostToDevice));
    snprintf(what, sizeof what, "to_bf16 n=%" PRId64 " vs mk_f32_to_bf16_row", n);
    if (ran(ck_to_bf16(NULL, db, dout, n), what)) {
        uint16_t *b = down(db, (size_t)n * 2);
        same_bits(what, b, bref, (size_t)n * 2);
        free(b);
    }
    /* check: the record keeps the smallest key, seq << 41 | index << 1 | is_inf (cuda/ck.h): the first
     * non-finite element, NaN or Inf alike */
    float *x = randf((size_t)n, -1, 1);
    unsigned long long rec = ~0ull, *drec = dup_dev(&rec, 8), got = 0;
    const unsigned long long k_inf = 3ull << 41 | (unsigned long long)(n / 3) << 1 | 1,
                             k_nan = 3ull << 41 | (unsigned long long)(n / 2) << 1;
    float *dx = dup_dev(x, (size_t)n * 4);
    int ok = ck_check(NULL, dx, rows, D, drec, 3) == 0;
    CU(cudaMemcpy(&got, drec, 8, cudaMemcpyDeviceToHost));
    ok = ok && got == ~0ull;
    x[n - 1] = INFINITY, x[n / 2] = NAN; /* the NaN comes first */
    CU(cudaMemcpy(dx, x, (size_t)n * 4, cudaMemcpyHostToDevice));
    ok = ok && ck_check(NULL, dx, rows, D, drec, 3) == 0;
    CU(cudaMemcpy(&got, drec, 8, cudaMemcpyDeviceToHost));
    int ok2 = got == k_nan;
    x[n / 3] = -INFINITY; /* now an Inf comes first; a later check (seq 5) does not replace the record */
    CU(cudaMemcpy(dx, x, (size_t)n * 4, cudaMemcpyHostToDevice));
    rec = ~0ull;
    CU(cudaMemcpy(drec, &rec, 8, cudaMemcpyHostToDevice));
    ok2 = ok2 && ck_check(NULL, dx, rows, D, drec, 3) == 0 && ck_check(NULL, dx, rows, D, drec, 5) == 0;
    CU(cudaMemcpy(&got, drec, 8, cudaMemcpyDeviceToHost));
    expect(ok && ok2 && got == k_inf, "check %" PRId64 " x %" PRId64 ": clean leaves the record; the first bad element "
           "is named (a NaN, then an earlier -Inf), a later check does not replace it: key %#llx", rows, D, got);
    cudaFree(dout), cudaFree(dd), cudaFree(db), cudaFree(drec), cudaFree(dx);
    free(o), free(d), free(ref), free(bref), free(x);
}

/* ---- RoPE + KV append: q, k rotated as mk_rope does; the pool holds bf16 of the k left and of v ---- */
static void test_rope_append(int64_t H, int64_t G, int64_t D, int64_t rd, int64_t B, int64_t kv_pos, int64_t n,
                             int64_t n_max) {
    const int64_t half = rd / 2, kv_len = kv_pos + n, nblk = (kv_len + B - 1) / B, pages = nblk + 2;
    const int64_t pool_n = pages * G * 2 * B * D;
    ck_step st = {.n = n, .pos = kv_pos + 5000, .kv_pos = kv_pos, .kv_len = kv_len, .append = 1};
    int32_t *page_of = hnew((size_t)nblk * 4), *slot_ref = hnew((size_t)(pages * B) * 4);
    for (int64_t b = 0; b < nblk; b++) page_of[b] = (int32_t)(nblk + 1 - b); /* reversed, two pages unused */
    float *cs = hnew((size_t)(n_max * half + 1) * 4), *sn = hnew((size_t)(n_max * half + 1) * 4);
    for (int64_t t = 0; t < n_max; t++) mk_rope_table(cs + t * half, sn + t * half, rd, 5e6, st.pos + t);
    float *q = randf((size_t)(n_max * H * D), -2, 2), *k = randf((size_t)(n_max * G * D), -2, 2);
    float *v = randf((size_t)(n_max * G * D), -2, 2);
    float *qr = hnew((size_t)(n_max * H * D) * 4), *kr = hnew((size_t)(n_max * G * D) * 4);
    memcpy(qr, q, (size_t)(n_max * H * D) * 4), memcpy(kr, k, (size_t)(n_max * G * D) * 4);
    for (int64_t t = 0; t < n; t++) {
        mk_rope(qr + t * H * D, H, D, rd, cs + t * half, sn + t * half);
        mk_rope(kr + t * G * D, G, D, rd, cs + t * half, sn + t * half);
    }
    float *dq = dup_dev(q, (size_t)(n_max * H * D) * 4), *dk = dup_dev(k, (size_t)(n_max * G * D) * 4);
    float *dv = dup_dev(v, (size_t)(n_max * G * D) * 4), *dcs = dup_dev(cs, (size_t)(n_max * half + 1) * 4);
    float *dsn = dup_dev(sn, (size_t)(n_max * half + 1) * 4);
    uint16_t *dpool = dnew((size_t)pool_n * 2);
    int32_t *dpage = dup_dev(page_of, (size_t)nblk * 4), *dslot = dnew((size_t)(pages * B) * 4);
    ck_step *ds = dup_dev(&st, sizeof st);
    const ck_kv kv = {dpool, dpage, dslot, B, G, D};
    char what[160];
    snprintf(what, sizeof what, "rope_append H=%" PRId64 " G=%" PRId64 " D=%" PRId64 " rope %" PRId64 " B=%" PRId64
             " kv_pos %" PRId64 " n=%" PRId64, H, G, D, rd, B, kv_pos, n);
    if (ran(ck_rope_append(NULL, dq, dk, dv, ds, dcs, dsn, n_max, H, G, D, rd, kv), what)) {
        float *qg = down(dq, (size_t)(n * H * D) * 4), *kg = down(dk, (size_t)(n * G * D) * 4);
        uint16_t *pool = down(dpool, (size_t)pool_n * 2);
        int32_t *slot = down(dslot, (size_t)(pages * B) * 4);
        char w2[256];
        snprintf(w2, sizeof w2, "%s: q vs mk_rope", what);
        close_to(w2, qg, qr, (size_t)(n * H * D), NULL, 1e-6f, 1e-6f);
        snprintf(w2, sizeof w2, "%s: k vs mk_rope", what);
        close_to(w2, kg, kr, (size_t)(n * G * D), NULL, 1e-6f, 1e-6f);
        uint16_t *pref = hnew((size_t)pool_n * 2);
        memset(pref, 0xff, (size_t)pool_n * 2);
        memset(slot_ref, 0xff, (size_t)(pages * B) * 4);
        for (int64_t t = 0; t < n; t++) {
            const int64_t P = kv_pos + t, page = page_of[P / B], j = P % B;
            for (int64_t g = 0; g < G; g++) {
                uint16_t *kp = pref + ((page * G + g) * 2 * B + j) * D;
                mk_f32_to_bf16_row(kp, kg + (t * G + g) * D, D);
                mk_f32_to_bf16_row(kp + B * D, v + (t * G + g) * D, D);
            }
            slot_ref[page * B + j] = (int32_t)(st.pos + t);
        }
        snprintf(w2, sizeof w2, "%s: KV pool (only the chunk's slots written)", what);
        same_bits(w2, pool, pref, (size_t)pool_n * 2);
        snprintf(w2, sizeof w2, "%s: slot_pos", what);
        same_bits(w2, slot, slot_ref, (size_t)(pages * B) * 4);
        free(qg), free(kg), free(pool), free(slot), free(pref);
    }
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dcs), cudaFree(dsn), cudaFree(dpool), cudaFree(dpage);
    cudaFree(dslot), cudaFree(ds);
    free(page_of), free(slot_ref), free(cs), free(sn), free(q), free(k), free(v), free(qr), free(kr);
}

/* ---- matrix products: ref = mk_matmul (the CPU backend's fp32 FMA sums: at most the AVX2 level, whose
 * products are exact, not the AVX-512 one's hi + lo split of a), mag = mk_matmul(|a|, |W|) for the
 * tolerance ---- */
static void matmul_ref(float *ref, float *mag, const float *a, int64_t lda, int64_t n, const uint16_t *W, int64_t rows,
                       int64_t K, const float *bias) {
    const mk_tensor Wt = {W, MTOK_BF16, rows, K}, bt = {bias, MTOK_F32, 1, rows};
    const mk_isa was = mk_isa_active();
    if (was > MK_ISA_AVX2) mk_isa_set(MK_ISA_AVX2);
    mk_matmul(ref, rows, a, lda, n, &Wt, bias ? &bt : NULL);
    uint16_t *Wa = hnew((size_t)(rows * K) * 2);
    float *aa = hnew((size_t)(n * lda) * 4);
    for (int64_t i = 0; i < rows * K; i++) Wa[i] = W[i] & 0x7fff;
    for (int64_t i = 0; i < n * lda; i++) aa[i] = fabsf(a[i]);
    const mk_tensor Wat = {Wa, MTOK_BF16, rows, K};
    mk_matmul(mag, rows, aa, lda, n, &Wat, NULL);
    mk_isa_set(was);
    free(Wa), free(aa);
}

/* ck_gemv with up to 3 segments (rows[i], bias[i]) over n tokens; outputs with ld = rows + 3 (padding
 * stays untouched). */
static void test_gemv(const char *name, int64_t n, int64_t K, int nseg, const int64_t *rows, const int *bias) {
    int64_t R = 0;
    for (int i = 0; i < nseg; i++) R += rows[i];
    uint16_t *W = randb((size_t)(R * K), -1, 1);
    float *a = randf((size_t)(n * K), -1, 1);
    uint16_t *dW = dup_dev(W, (size_t)(R * K) * 2);
    float *da = dup_dev(a, (size_t)(n * K) * 4);
    ck_gemv_seg seg[3];
    float *dy[3], *db[3], *hb[3];
    for (int i = 0; i < nseg; i++) {
        hb[i] = bias[i] ? randf((size_t)rows[i], -1, 1) : NULL;
        db[i] = hb[i] ? dup_dev(hb[i], (size_t)rows[i] * 4) : NULL;
        dy[i] = dnew((size_t)(n * (rows[i] + 3)) * 4);
        seg[i] = (ck_gemv_seg){dy[i], rows[i] + 3, rows[i], db[i]};
    }
    char what[160];
    snprintf(what, sizeof what, "gemv %s n=%" PRId64 " K=%" PRId64, name, n, K);
    const int ok = ran(ck_gemv(NULL, seg, nseg, da, K, dW, n, K), what);
    for (int64_t i = 0, r0 = 0; i < nseg; r0 += rows[i], i++) {
        if (ok) {
            float *sref = hnew((size_t)(n * rows[i]) * 4), *smag = hnew((size_t)(n * rows[i]) * 4);
            matmul_ref(sref, smag, a, K, n, W + r0 * K, rows[i], K, hb[i]);
            float *y = down(dy[i], (size_t)(n * (rows[i] + 3)) * 4), *got = hnew((size_t)(n * rows[i]) * 4);
            int pad_ok = 1;
            for (int64_t t = 0; t < n; t++) {
                memcpy(got + t * rows[i], y + t * (rows[i] + 3), (size_t)rows[i] * 4);
                for (int j = 0; j < 3; j++) pad_ok &= isnan(y[t * (rows[i] + 3) + rows[i] + j]);
            }
            for (int64_t e = 0; e < n * rows[i]; e++) smag[e] *= 4e-7f;
            char w2[200];
            snprintf(w2, sizeof w2, "%s segment %" PRId64 " (%" PRId64 " rows%s) vs mk_matmul", what, i, rows[i],
                     bias[i] ? ", bias" : "");
            close_to(w2, got, sref, (size_t)(n * rows[i]), smag, 0, 1e-5f);
            expect(pad_ok, "%s segment %" PRId64 ": the padding of ld stays unwritten", what, i);
            free(sref), free(smag), free(y), free(got);
        }
        cudaFree(dy[i]), cudaFree(db[i]), free(hb[i]);
    }
    cudaFree(dW), cudaFree(da);
    free(W), free(a);
}

/* ck_gemm_bf16 (cuBLASLt on the device): D [n][M] = A·Wᵀ (+ D) (+ bias) against mk_matmul on A widened */
static void test_gemm(ck_gemm *g, const char *name, int64_t n, int64_t M, int64_t K, int bias, int acc) {
    uint16_t *A = randb((size_t)(n * K), -1, 1), *W = randb((size_t)(M * K), -1, 1);
    float *af = hnew((size_t)(n * K) * 4), *hb = bias ? randf((size_t)M, -1, 1) : NULL;
    float *D0 = randf((size_t)(n * M), -4, 4), *ref = hnew((size_t)(n * M) * 4), *mag = hnew((size_t)(n * M) * 4);
    for (int64_t i = 0; i < n * K; i++) af[i] = mk_bf16_to_f32(A[i]);
    matmul_ref(ref, mag, af, K, n, W, M, K, hb);
    for (int64_t i = 0; i < n * M; i++) {
        if (acc) ref[i] += D0[i], mag[i] += fabsf(D0[i]);
        mag[i] *= 4e-6f;
    }
    uint16_t *dA = dup_dev(A, (size_t)(n * K) * 2), *dW = dup_dev(W, (size_t)(M * K) * 2);
    float *dD = dup_dev(D0, (size_t)(n * M) * 4), *db = hb ? dup_dev(hb, (size_t)M * 4) : NULL;
    char what[160];
    snprintf(what, sizeof what, "gemm_bf16 %s n=%" PRId64 " M=%" PRId64 " K=%" PRId64 "%s%s vs mk_matmul", name, n, M, K,
             bias ? " +bias" : "", acc ? " +D" : "");
    const int rc = ck_gemm_bf16(g, NULL, dD, dA, dW, db, n, M, K, acc);
    if (rc) printf("     ck_gemm_error: %s\n", ck_gemm_error());
    if (ran(rc, what)) {
        float *got = down(dD, (size_t)(n * M) * 4);
        close_to(what, got, ref, (size_t)(n * M), mag, 0, 1e-5f);
        free(got);
    }
    cudaFree(dA), cudaFree(dW), cudaFree(dD), cudaFree(db);
    free(A), free(W), free(af), free(hb), free(D0), free(ref), free(mag);
}

/* ---- attention: a paged pool with shuffled pages, NaN in every slot nobody may read ---- */
typedef struct {
    int64_t H, G, D, B, kv_pos, n;
    int lists;  /* explicit per-group block lists (about 60 % of the blocks, the last always) */
    float qmag; /* q uniform in [-qmag, qmag) */
} kv_case;

typedef struct {
    int64_t kv_len, nblk, npages, pos, n_max;
    uint16_t *pages;
    int32_t *page_of, *slot_pos, *ids, *count;
    float *q; /* [n_max][H*D], rows past n NaN */
    /* device copies */
    uint16_t *d_pages;
    int32_t *d_page_of, *d_slot_pos, *d_ids, *d_count;
    float *d_q;
    ck_step *d_step;
} pool;

static int64_t shuffle_pick(int64_t n) { return (int64_t)(frand(0, 1) * (float)n) % (n > 0 ? n : 1); }

static pool pool_make(const kv_case *c, int64_t n_max) {
    pool p = {.n_max = n_max};
    const int64_t B = c->B, G = c->G, D = c->D;
    p.kv_len = c->kv_pos + c->n, p.nblk = (p.kv_len + B - 1) / B, p.npages = p.nblk + 2;
    p.pos = c->kv_pos + 17; /* positions differ from KV slots: the causal test must read slot_pos */
    const size_t pool_n = (size_t)(p.npages * G * 2 * B * D);
    p.pages = hnew(pool_n * 2);
    for (size_t i = 0; i < pool_n; i++) p.pages[i] = 0x7fc0; /* bf16 NaN */
    p.slot_pos = hnew((size_t)(p.npages * B) * 4);
    for (int64_t i = 0; i < p.npages * B; i++) p.slot_pos[i] = -1;
    int32_t *perm = hnew((size_t)p.npages * 4);
    for (int64_t i = 0; i < p.npages; i++) perm[i] = (int32_t)i;
    for (int64_t i = p.npages - 1; i > 0; i--) {
        const int64_t j = shuffle_pick(i + 1);
        const int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    p.page_of = perm; /* the first nblk entries map the logical blocks */
    for (int64_t b = 0; b < p.nblk; b++)
        for (int64_t j = 0; j < B && b * B + j < p.kv_len; j++) {
            const int64_t page = p.page_of[b];
            p.slot_pos[page * B + j] = (int32_t)(b * B + j + 17);
            for (int64_t g = 0; g < G; g++) {
                uint16_t *k = p.pages + ((page * G + g) * 2 * B + j) * D;
                for (int64_t d = 0; d < D; d++) k[d] = mk_f32_to_bf16(frand(-1, 1)), k[B * D + d] = mk_f32_to_bf16(frand(-1, 1));
            }
        }
    p.ids = hnew((size_t)(G * p.nblk) * 4), p.count = hnew((size_t)G * 4);
    for (int64_t g = 0; g < G; g++) {
        int32_t k = 0;
        for (int64_t b = 0; b < p.nblk; b++)
            if (!c->lists || b == p.nblk - 1 || frand(0, 1) < 0.6f) p.ids[g * p.nblk + k++] = (int32_t)b;
        p.count[g] = c->lists ? k : -1;
    }
    p.q = hnew((size_t)(n_max * c->H * D) * 4);
    for (int64_t i = 0; i < n_max * c->H * D; i++) p.q[i] = i < c->n * c->H * D ? c->qmag * frand(-1, 1) : NAN;
    const ck_step st = {.n = c->n, .pos = p.pos, .kv_pos = c->kv_pos, .kv_len = p.kv_len, .append = 1};
    p.d_pages = dup_dev(p.pages, pool_n * 2);
    p.d_page_of = dup_dev(p.page_of, (size_t)p.npages * 4);
    p.d_slot_pos = dup_dev(p.slot_pos, (size_t)(p.npages * B) * 4);
    p.d_ids = dup_dev(p.ids, (size_t)(G * p.nblk) * 4);
    p.d_count = dup_dev(p.count, (size_t)G * 4);
    p.d_q = dup_dev(p.q, (size_t)(n_max * c->H * D) * 4);
    p.d_step = dup_dev(&st, sizeof st);
    return p;
}

static void pool_free(pool *p) {
    cudaFree(p->d_pages), cudaFree(p->d_page_of), cudaFree(p->d_slot_pos), cudaFree(p->d_ids), cudaFree(p->d_count);
    cudaFree(p->d_q), cudaFree(p->d_step);
    free(p->pages), free(p->page_of), free(p->slot_pos), free(p->ids), free(p->count), free(p->q);
}

/* The keys and values token t of group g may see, in list order, gathered into K, V [nk][D]. */
static int64_t gather(const kv_case *c, const pool *p, int64_t g, int64_t t, uint16_t *K, uint16_t *V) {
    const int64_t B = c->B, G = c->G, D = c->D, cnt = p->count[g] < 0 ? p->nblk : p->count[g];
    int64_t nk = 0;
    for (int64_t i = 0; i < cnt; i++) {
        const int64_t b = p->count[g] < 0 ? i : p->ids[g * p->nblk + i], page = p->page_of[b];
        for (int64_t j = 0; j < B && b * B + j < p->kv_len; j++) {
            if (p->slot_pos[page * B + j] > p->pos + t) continue;
            const uint16_t *k = p->pages + ((page * G + g) * 2 * B + j) * D;
            memcpy(K + nk * D, k, (size_t)D * 2), memcpy(V + nk * D, k + B * D, (size_t)D * 2);
            nk++;
        }
    }
    return nk;
}

/* Rows (t, h) for the tokens in toks[] against the reference; o unnormalised, m, d as the kernels
 * write them. q_bf16: round the query to bf16 for the reference (the prefill's tensor-core operand). */
static void attn_compare(const char *what, const kv_case *c, const pool *p, const int64_t *toks, int nt,
                         const float *o, const float *m, const float *d, int q_bf16, float o_abs, float o_rel,
                         float l_abs, float l_rel) {
    const int64_t H = c->H, D = c->D, HG = c->H / c->G;
    uint16_t *K = hnew((size_t)(p->kv_len * D) * 2), *V = hnew((size_t)(p->kv_len * D) * 2);
    float *qr = hnew((size_t)D * 4), *ro = hnew((size_t)D * 4);
    int64_t rows = 0, bad = 0;
    double worst_o = 0, worst_l = 0;
    for (int i = 0; i < nt; i++) {
        const int64_t t = toks[i];
        for (int64_t g = 0; g < c->G; g++) {
            const int64_t nk = gather(c, p, g, t, K, V);
            for (int64_t h = g * HG; h < (g + 1) * HG; h++) {
                const int64_t r = t * H + h;
                for (int64_t j = 0; j < D; j++) {
                    const float x = p->q[r * D + j];
                    qr[j] = q_bf16 ? mk_bf16_to_f32(mk_f32_to_bf16(x)) : x;
                    ro[j] = 0;
                }
                float rm = -INFINITY, rd = 0;
                if (nk) mk_attn_accum_ref(qr, K, V, nk, D, D, (float)(1.0 / sqrt((double)D)), ro, &rm, &rd);
                int ok = 1;
                rows++;
                if (rm == -INFINITY) {
                    ok = m[r] == -INFINITY && d[r] == 0;
                } else if (!(isfinite(m[r]) && isfinite(d[r]) && d[r] > 0)) {
                    ok = 0;
                } else {
                    const double l = m[r] + log((double)d[r]), lr = rm + log((double)rd), dl = fabs(l - lr);
                    worst_l = dl > worst_l ? dl : worst_l;
                    ok = dl <= l_abs + l_rel * fabs(lr);
                    for (int64_t j = 0; j < D; j++) {
                        const double x = o[r * D + j] / (double)d[r], xr = ro[j] / (double)rd, dx = fabs(x - xr);
                        if (!(dx <= o_abs + o_rel * fabs(xr))) ok = 0;
                        if (dx == dx && dx > worst_o) worst_o = dx;
                    }
                }
                if (!ok && bad++ < 4)
                    printf("     row t=%" PRId64 " h=%" PRId64 ": m %g d %g | ref m %g d %g (%" PRId64 " keys)\n", t, h,
                           m[r], d[r], rm, rd, nk);
            }
        }
    }
    expect(!bad, "%s: %" PRId64 " rows, max|do| %.2e, max|dlse| %.2e, %" PRId64 " wrong", what, rows, worst_o, worst_l,
           bad);
    free(K), free(V), free(qr), free(ro);
}

static void test_decode(const kv_case *c, int n_split) {
    const int64_t n_max = CK_DECODE_MAX_N, rows = n_max * c->H, D = c->D;
    pool p = pool_make(c, n_max);
    const ck_part work = {dnew((size_t)(n_split * rows * D) * 4), dnew((size_t)(n_split * rows) * 4),
                          dnew((size_t)(n_split * rows) * 4)};
    const ck_part out = {dnew((size_t)(rows * D) * 4), dnew((size_t)rows * 4), dnew((size_t)rows * 4)};
    const ck_kv kv = {p.d_pages, p.d_page_of, p.d_slot_pos, c->B, c->G, c->D};
    const ck_blocks bl = {p.d_ids, p.d_count, p.nblk};
    char what[200];
    snprintf(what, sizeof what, "attn_decode+combine H=%" PRId64 " G=%" PRId64 " D=%" PRId64 " B=%" PRId64
             " kv_len %" PRId64 " n=%" PRId64 " split %d%s", c->H, c->G, D, c->B, p.kv_len, c->n, n_split,
             c->lists ? " lists" : "");
    int rc = ck_attn_decode(NULL, p.d_q, p.d_step, kv, bl, n_max, c->H, n_split, work);
    if (!rc) rc = ck_attn_combine(NULL, out, work, n_split, rows, D);
    if (ran(rc, what)) {
        float *o = down(out.o, (size_t)(rows * D) * 4), *m = down(out.m, (size_t)rows * 4), *d = down(out.d, (size_t)rows * 4);
        int64_t toks[CK_DECODE_MAX_N];
        for (int64_t t = 0; t < c->n; t++) toks[t] = t;
        attn_compare(what, c, &p, toks, (int)c->n, o, m, d, 0, 2e-5f, 1e-4f, 2e-5f, 2e-5f);
        free(o), free(m), free(d);
    }
    cudaFree(work.o), cudaFree(work.m), cudaFree(work.d), cudaFree(out.o), cudaFree(out.m), cudaFree(out.d);
    pool_free(&p);
}

/* Prefill: every row is checked at small shapes, a sample of tokens (all heads) at GLM shapes. */
static void test_prefill(const kv_case *c, int sample) {
    const int64_t rows = c->n * c->H, D = c->D;
    pool p = pool_make(c, c->n);
    const ck_part out = {dnew((size_t)(rows * D) * 4), dnew((size_t)rows * 4), dnew((size_t)rows * 4)};
    const ck_kv kv = {p.d_pages, p.d_page_of, p.d_slot_pos, c->B, c->G, c->D};
    const ck_blocks bl = {p.d_ids, p.d_count, p.nblk};
    char what[200];
    snprintf(what, sizeof what, "attn_prefill H=%" PRId64 " G=%" PRId64 " D=%" PRId64 " B=%" PRId64 " cached %" PRId64
             " + chunk %" PRId64 "%s%s", c->H, c->G, D, c->B, c->kv_pos, c->n, c->lists ? " lists" : "",
             sample ? " (sampled tokens)" : "");
    if (ran(ck_attn_prefill(NULL, p.d_q, p.d_step, kv, bl, c->n, c->H, out), what)) {
        float *o = down(out.o, (size_t)(rows * D) * 4), *m = down(out.m, (size_t)rows * 4), *d = down(out.d, (size_t)rows * 4);
        int64_t *toks = hnew((size_t)c->n * 8);
        int nt = 0;
        for (int64_t t = 0; t < c->n; t++)
            if (!sample || t < 2 || t >= c->n - 2 || t % 61 == 7) toks[nt++] = t;
        attn_compare(what, c, &p, toks, nt, o, m, d, 1, 4e-3f, 4e-3f, 4e-3f, 2e-5f);
        int64_t nonfinite = 0; /* rows not compared must still be written */
        for (int64_t i = 0; i < rows * D; i++) nonfinite += !isfinite(o[i]);
        expect(!nonfinite, "%s: every output element finite (%" PRId64 " not)", what, nonfinite);
        free(o), free(m), free(d), free(toks);
    }
    cudaFree(out.o), cudaFree(out.m), cudaFree(out.d);
    pool_free(&p);
}

/* merge: ck_merge into = merge(into, from) against mk_attn_merge, empty sides included */
static void test_merge(int64_t rows, int64_t D) {
    float *o1 = randf((size_t)(rows * D), -3, 3), *o2 = randf((size_t)(rows * D), -3, 3);
    float *m1 = randf((size_t)rows, -20, 20), *m2 = randf((size_t)rows, -20, 20);
    float *d1 = randf((size_t)rows, 0.5f, 9), *d2 = randf((size_t)rows, 0.5f, 9);
    m2[0] = -INFINITY, d2[0] = 0;                          /* from empty */
    m1[1] = -INFINITY, d1[1] = 0;                          /* into empty */
    m1[2] = m2[2] = -INFINITY, d1[2] = d2[2] = 0;          /* both */
    for (int64_t j = 0; j < D; j++) o1[D + j] = 0, o1[2 * D + j] = 0, o2[2 * D + j] = 0, o2[j] = 0;
    float *ro = hnew((size_t)(rows * D) * 4), *rm = hnew((size_t)rows * 4), *rd = hnew((size_t)rows * 4);
    memcpy(ro, o1, (size_t)(rows * D) * 4), memcpy(rm, m1, (size_t)rows * 4), memcpy(rd, d1, (size_t)rows * 4);
    for (int64_t r = 0; r < rows; r++) mk_attn_merge(ro + r * D, &rm[r], &rd[r], o2 + r * D, m2[r], d2[r], D);
    const ck_part into = {dup_dev(o1, (size_t)(rows * D) * 4), dup_dev(m1, (size_t)rows * 4), dup_dev(d1, (size_t)rows * 4)};
    const ck_part from = {dup_dev(o2, (size_t)(rows * D) * 4), dup_dev(m2, (size_t)rows * 4), dup_dev(d2, (size_t)rows * 4)};
    char what[96];
    snprintf(what, sizeof what, "merge %" PRId64 " rows x %" PRId64 " vs mk_attn_merge (empty sides)", rows, D);
    if (ran(ck_merge(NULL, into, from, rows, D), what)) {
        float *o = down(into.o, (size_t)(rows * D) * 4), *m = down(into.m, (size_t)rows * 4), *d = down(into.d, (size_t)rows * 4);
        close_to(what, o, ro, (size_t)(rows * D), NULL, 1e-6f, 1e-6f);
        close_to(what, m, rm, (size_t)rows, NULL, 0, 0);
        close_to(what, d, rd, (size_t)rows, NULL, 1e-6f, 1e-6f);
        free(o), free(m), free(d);
    }
    cudaFree(into.o), cudaFree(into.m), cudaFree(into.d), cudaFree(from.o), cudaFree(from.m), cudaFree(from.d);
    free(o1), free(o2), free(m1), free(m2), free(d1), free(d2), free(ro), free(rm), free(rd);
}

/* ---- measurement kernels ---- */
static void test_copy_argmax(int64_t words, int64_t n) {
    uint32_t *a = hnew((size_t)words * 16);
    for (int64_t i = 0; i < words * 4; i++) a[i] = (uint32_t)i * 2654435761u;
    void *src = dup_dev(a, (size_t)words * 16), *dst = dnew((size_t)(words + 1) * 16);
    if (ran(ck_copy(NULL, dst, src, words), "copy")) {
        uint32_t *b = down(dst, (size_t)(words + 1) * 16);
        int tail = 1;
        for (int i = 0; i < 4; i++) tail &= b[words * 4 + i] == 0xffffffffu;
        expect(!memcmp(a, b, (size_t)words * 16) && tail, "copy %" PRId64 " x 16 bytes: copied, nothing past them", words);
        free(b);
    }
    expect(ck_copy(NULL, (char *)dst + 4, src, 8) != 0, "copy of a misaligned pointer refused");
    cudaGetLastError(); /* the refusal is not a device error */
    float *x = randf((size_t)n, -20, 20);
    x[n - 1] = 21, x[n / 3] = 21, x[0] = NAN; /* a tie: the first maximum wins; NaN never does */
    float *dx = dup_dev(x, (size_t)n * 4);
    int32_t *dout = dnew(4), got = -1;
    if (ran(ck_argmax(NULL, dx, n, dout), "argmax")) {
        CU(cudaMemcpy(&got, dout, 4, cudaMemcpyDeviceToHost));
        expect(got == (int32_t)(n / 3), "argmax n=%" PRId64 " (NaN first, tie at n/3 and n-1): %d", n, got);
    }
    cudaFree(src), cudaFree(dst), cudaFree(dx), cudaFree(dout);
    free(a), free(x);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small")) g_small = 1;
        else {
            fprintf(stderr, "usage: test_gpu_kernels [--small]\n");
            return 2;
        }
    }
    int count = 0; /* without a driver cudaGetDeviceCount fails and leaves it unwritten */
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count < 1) {
        printf("no usable CUDA device (%s): 0 passed, 0 failed, all skipped\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    printf("device 0: %s, sm_%d%d, %d SMs%s\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
           g_small ? " (small shapes only)" : "");

    /* rows, small then GLM */
    test_embed(40, 37, 3, 5);
    test_embed(13, 37, 5, 5);
    test_rmsnorm(3, 64, 0);
    test_rmsnorm(3, 37, 1);
    test_swiglu_add(999);
    test_normalize_bf16_check(7, 5);
    test_rope_append(4, 2, 32, 16, 4, 6, 3, 5);
    test_rope_append(8, 4, 24, 24, 16, 30, 5, 8);
    {
        const int64_t qkv[3] = {96, 32, 32}, gu[2] = {80, 80};
        const int b3[3] = {1, 1, 1}, b0[2] = {0, 0};
        test_gemv("q|k|v +bias", 1, 64, 3, qkv, b3);
        test_gemv("gate|up", 8, 72, 2, gu, b0);
        test_gemv("odd K", 3, 37, 1, qkv, b3);
    }
    ck_gemm *g = NULL;
    if (ck_gemm_create(&g, (size_t)32 << 20)) {
        expect(0, "ck_gemm_create: %s", ck_gemm_error());
    } else {
        test_gemm(g, "small", 5, 48, 64, 1, 0);
        test_gemm(g, "small", 1, 32, 64, 0, 0);
        test_gemm(g, "small", 17, 40, 72, 1, 1);
    }
    {
        const kv_case d1 = {4, 2, 32, 16, 70, 1, 0, 1.0f}, d2 = {8, 4, 64, 32, 150, 4, 1, 1.0f};
        const kv_case d3 = {4, 2, 32, 16, 60, 2, 0, 40.0f}; /* |q·k| ~ 1e3: exp overflows without the max */
        test_decode(&d1, 3);
        test_decode(&d2, 5);
        test_decode(&d3, 2);
        const kv_case p1 = {4, 2, 32, 16, 37, 17, 0, 1.0f}, p2 = {8, 4, 64, 16, 33, 17, 1, 1.0f};
        test_prefill(&p1, 0);
        test_prefill(&p2, 0);
    }
    test_merge(9, 16);
    test_copy_argmax(1001, 1000);

    if (g_small) {
        g_skip += 1;
        printf("GLM-4-9B shapes: skipped (--small)\n");
    } else {
        test_embed(4096, 4096, 8, 8);
        test_embed(4096, 4096, 3, 8);
        test_rmsnorm(1, 4096, 0);
        test_rmsnorm(512, 4096, 1);
        test_swiglu_add(8 * 13696);
        test_swiglu_add(512 * 13696);
        test_normalize_bf16_check(128, 128);
        test_normalize_bf16_check(512, 27392);
        test_rope_append(32, 2, 128, 64, 128, 4093, 4, 4);
        test_rope_append(32, 4, 128, 64, 128, 1000, 512, 512);
        const int64_t qkv2[3] = {4096, 256, 256}, qkv4[3] = {4096, 512, 512}, gu[2] = {13696, 13696};
        const int64_t down_[1] = {4096}, head[1] = {151552};
        const int b3[3] = {1, 1, 1}, b0[2] = {0, 0};
        for (int64_t n = 1; n <= CK_GEMV_MAX_N; n += n < 2 ? 1 : 3) test_gemv("q|k|v G=2 +bias", n, 4096, 3, qkv2, b3);
        test_gemv("q|k|v G=4 +bias", 1, 4096, 3, qkv4, b3);
        test_gemv("o", 1, 4096, 1, down_, b0);
        test_gemv("gate|up", 1, 4096, 2, gu, b0);
        test_gemv("gate|up", 8, 4096, 2, gu, b0);
        test_gemv("down", 1, 13696, 1, down_, b0);
        test_gemv("lm head", 1, 4096, 1, head, b0);
        if (g) {
            test_gemm(g, "qkv G=2", 512, 4608, 4096, 1, 0);
            test_gemm(g, "qkv G=4", 512, 5120, 4096, 1, 0);
            test_gemm(g, "o +residual", 512, 4096, 4096, 0, 1);
            test_gemm(g, "gate|up", 256, 27392, 4096, 0, 0);
            test_gemm(g, "down +residual", 256, 4096, 13696, 0, 1);
            test_gemm(g, "odd n", 37, 4608, 4096, 1, 0);
        }
        const kv_case d1 = {32, 2, 128, 128, 4093, 3, 0, 1.0f}, d2 = {32, 2, 128, 128, 4095, 1, 1, 1.0f};
        const kv_case d3 = {32, 4, 128, 128, 4092, 4, 0, 1.0f}, d4 = {32, 2, 128, 128, 32767, 1, 0, 1.0f};
        const kv_case d5 = {32, 2, 128, 128, 2000, 2, 1, 30.0f};
        test_decode(&d1, 16);
        test_decode(&d2, 64); /* more shares than listed blocks: empty shares */
        test_decode(&d3, 32);
        test_decode(&d4, 132);
        test_decode(&d5, 8);
        const kv_case p1 = {32, 2, 128, 128, 1000, 512, 0, 1.0f}, p2 = {32, 4, 128, 128, 300, 256, 1, 1.0f};
        const kv_case p3 = {32, 2, 128, 128, 0, 200, 0, 8.0f};
        test_prefill(&p1, 1);
        test_prefill(&p2, 1);
        test_prefill(&p3, 1);
        test_merge(4 * 32, 128);
        test_copy_argmax((int64_t)16 << 20, 151552);
    }
    ck_gemm_free(g);
    printf("test_gpu_kernels: %d passed, %d failed, %d skipped\n", g_pass, g_fail, g_skip);
    return g_fail ? 1 : 0;
}
