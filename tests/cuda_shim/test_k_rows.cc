/* test_k_rows.cc — the row, RoPE/append and measurement kernels (cuda/k_rows.cu, cuda/k_rope.cu,
 * cuda/k_bench.cu), their own source run on the CPU through the shim, against the CPU backend's
 * kernels (kernels/kernels.h) on small shapes: odd sizes (scalar paths), multiples of the vector
 * width (16-byte paths), misaligned pointers, GLM-like head ratios.
 *
 * Exact where both sides do the same integer or correctly rounded work (embedding, bf16, add,
 * normalisation, KV append, check keys, argmax, copy); elsewhere llm.c-style per element:
 * |gpu - ref| <= atol + rtol*|ref|, the tolerances printed with each comparison. Exit 1 on any
 * mismatch, every comparison printed. */
#include "cuda/ck.h"

#include <cuda_bf16.h> /* its host __float2bfloat16_rn: an independent oracle for the RNE rounding */

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
#include "kernels/kernels.h"
}

namespace {

int g_fail = 0, g_checks = 0;

uint64_t g_rng = 0x9e3779b97f4a7c15ull;
float frand(float lo, float hi) { /* xorshift64*: fixed sequence, same on every machine */
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    const uint64_t r = g_rng * 0x2545f4914f6cdd1dull;
    return lo + (hi - lo) * (float)(r >> 40) / (float)(1 << 24);
}
std::vector<float> randv(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (auto &x : v) x = frand(lo, hi);
    return v;
}
std::vector<uint16_t> rand_bf16(size_t n, float lo, float hi) {
    std::vector<uint16_t> v(n);
    for (auto &x : v) x = mk_f32_to_bf16(frand(lo, hi));
    return v;
}

void expect(bool ok, const char *what) {
    g_checks++;
    printf("%-64s %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) g_fail++;
}

/* |got - ref| <= atol + rtol*|ref| per element; non-finite ref: got must be the same (NaN: any NaN) */
void expect_close(const char *what, const float *got, const float *ref, size_t n, float atol, float rtol) {
    size_t bad = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        bool ok;
        if (std::isnan(ref[i]))
            ok = std::isnan(got[i]);
        else if (std::isinf(ref[i]))
            ok = got[i] == ref[i];
        else {
            const double d = fabs((double)got[i] - ref[i]);
            worst = d > worst ? d : worst;
            ok = d <= atol + rtol * fabs(ref[i]);
        }
        if (!ok && bad++ < 5) printf("    [%zu] got %.9g ref %.9g\n", i, got[i], ref[i]);
    }
    char line[256];
    snprintf(line, sizeof line, "%s: %zu values, max|d| %.3g (atol %g rtol %g), %zu bad", what, n, worst, atol, rtol,
             bad);
    expect(bad == 0, line);
}

void expect_bits(const char *what, const void *got, const void *ref, size_t bytes) {
    char line[256];
    size_t first = bytes;
    for (size_t i = 0; i < bytes; i++)
        if (((const unsigned char *)got)[i] != ((const unsigned char *)ref)[i]) {
            first = i;
            break;
        }
    if (first < bytes)
        snprintf(line, sizeof line, "%s: %zu bytes, first difference at byte %zu", what, bytes, first);
    else
        snprintf(line, sizeof line, "%s: %zu bytes identical", what, bytes);
    expect(first == bytes, line);
}

void expect_rc(int rc, int want_error, const char *what) {
    char line[256];
    snprintf(line, sizeof line, "%s: rc %d (%s)", what, rc, want_error ? "error expected" : "0 expected");
    expect(want_error ? rc != 0 : rc == 0, line);
}

mk_tensor bf16_tensor(const uint16_t *p, int64_t rows, int64_t cols) { return mk_tensor{p, MTOK_BF16, rows, cols}; }

/* ---- embedding: exact, rows past step->n untouched ---- */
void test_embed(int64_t E) {
    const int64_t vocab = 37, n_max = 5;
    const std::vector<uint16_t> table = rand_bf16((size_t)(vocab * E), -3.0f, 3.0f);
    const int32_t ids[n_max] = {5, 0, 36, 1, 2};
    ck_step st = {};
    st.n = 3;
    std::vector<float> x((size_t)(n_max * E), 12345.0f), ref = x;
    const mk_tensor t = bf16_tensor(table.data(), vocab, E);
    for (int64_t r = 0; r < st.n; r++) mk_embed(ref.data() + r * E, &t, ids[r]);
    char w[96];
    snprintf(w, sizeof w, "embed E=%" PRId64 " n=3 of n_max=5", E);
    expect_rc(ck_embed(nullptr, x.data(), table.data(), &st, ids, n_max, E), 0, w);
    expect_bits(w, x.data(), ref.data(), x.size() * sizeof(float));
}

/* ---- RMSNorm vs the double-sum reference; in place and misaligned too ---- */
void test_rmsnorm(int64_t E, int misalign, int in_place) {
    const int64_t n = 3;
    const float eps = 1.5625e-07f;
    std::vector<float> xb = randv((size_t)(n * E + 1), -2.0f, 2.0f);
    for (int64_t i = 0; i < E; i++) xb[(size_t)(2 * E + i + misalign)] *= 1e-3f; /* a row where eps matters more */
    float *x = xb.data() + misalign;
    const std::vector<uint16_t> w = rand_bf16((size_t)E, 0.5f, 1.5f);
    const mk_tensor wt = bf16_tensor(w.data(), 1, E);
    std::vector<float> ref((size_t)(n * E)), yb((size_t)(n * E + 1), NAN);
    for (int64_t t = 0; t < n; t++) mk_rmsnorm_ref(ref.data() + t * E, x + t * E, &wt, E, eps);
    float *y = in_place ? x : yb.data() + misalign;
    char what[128];
    snprintf(what, sizeof what, "rmsnorm E=%" PRId64 "%s%s vs mk_rmsnorm_ref", E, misalign ? " misaligned" : "",
             in_place ? " in place" : "");
    expect_rc(ck_rmsnorm(nullptr, y, x, w.data(), n, E, eps), 0, what);
    /* fp32 sum of squares vs double: the scale is within ~1e-6 relative; 2 roundings after it */
    expect_close(what, y, ref.data(), (size_t)(n * E), 1e-6f, 1e-5f);
}

/* ---- SwiGLU vs the CPU's scalar path (the same mm_silu) and the AVX2 path ---- */
void test_swiglu(int64_t n, int misalign) {
    std::vector<float> gb = randv((size_t)n + 1, -30.0f, 30.0f), ub = randv((size_t)n + 1, -4.0f, 4.0f);
    float *g = gb.data() + misalign, *u = ub.data() + misalign;
    g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f, g[3] = -0.0f; /* exp overflow: silu -> -0; silu(100) = 100 */
    std::vector<float> ref_s((size_t)n), ref_v((size_t)n);
    mk_force_scalar(1);
    mk_swiglu(ref_s.data(), g, u, n);
    mk_force_scalar(0);
    mk_swiglu(ref_v.data(), g, u, n);
    char what[128];
    snprintf(what, sizeof what, "swiglu n=%" PRId64 "%s", n, misalign ? " misaligned" : "");
    expect_rc(ck_swiglu(nullptr, g, u, n), 0, what);
    /* a GPU's expf is within 2 ulp of glibc's */
    char w2[160];
    snprintf(w2, sizeof w2, "%s vs CPU scalar", what);
    expect_close(w2, g, ref_s.data(), (size_t)n, 1e-7f, 1e-6f);
    snprintf(w2, sizeof w2, "%s vs CPU default path", what);
    expect_close(w2, g, ref_v.data(), (size_t)n, 1e-6f, 1e-5f);
}

void test_add(int64_t n, int misalign) {
    std::vector<float> xb = randv((size_t)n + 1, -5.0f, 5.0f), ab = randv((size_t)n + 1, -5.0f, 5.0f);
    float *x = xb.data() + misalign, *a = ab.data() + misalign;
    std::vector<float> ref(x, x + n);
    for (int64_t i = 0; i < n; i++) ref[(size_t)i] += a[i];
    char what[96];
    snprintf(what, sizeof what, "add n=%" PRId64 "%s", n, misalign ? " misaligned" : "");
    expect_rc(ck_add(nullptr, x, a, n), 0, what);
    expect_bits(what, x, ref.data(), (size_t)n * sizeof(float));
}

/* the CPU backend's normalisation (core/backend_cpu.c cpu_attn_out): o *= d > 0 ? 1/d : 0 */
void test_attn_normalize() {
    const int64_t rows = 7, D = 5;
    std::vector<float> o = randv((size_t)(rows * D), -3.0f, 3.0f);
    std::vector<float> d = {2.5f, 0.0f, NAN, 1e-30f, 7.0f, 1.0f, 3.0f};
    std::vector<float> ref = o;
    for (int64_t r = 0; r < rows; r++) {
        const float inv = d[(size_t)r] > 0 ? 1.0f / d[(size_t)r] : 0.0f;
        for (int64_t j = 0; j < D; j++) ref[(size_t)(r * D + j)] *= inv;
    }
    expect_rc(ck_attn_normalize(nullptr, o.data(), d.data(), rows, D), 0, "attn_normalize rows=7 D=5 (d=0, NaN)");
    expect_bits("attn_normalize vs o * (d > 0 ? 1/d : 0)", o.data(), ref.data(), o.size() * sizeof(float));
}

/* ---- bf16: exact vs mk_f32_to_bf16_row, and vs cuda_bf16.h on every non-NaN value ---- */
void test_to_bf16(int64_t n, int misalign) {
    std::vector<float> sb = randv((size_t)n + 1, -1e4f, 1e4f);
    float *src = sb.data() + misalign;
    const uint32_t special[] = {0x7f800000u, 0xff800000u, 0x7fc00001u, 0xffa00000u, 0x7f7fffffu, 0x00000001u,
                                0x80000000u, 0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7f7f8000u, 0x007fffffu};
    for (size_t i = 0; i < sizeof special / sizeof *special && (int64_t)i < n; i++) memcpy(&src[i], &special[i], 4);
    std::vector<uint16_t> db((size_t)n + 8, 0xdead), ref((size_t)n);
    uint16_t *dst = db.data() + misalign;
    mk_f32_to_bf16_row(ref.data(), src, n);
    char what[128];
    snprintf(what, sizeof what, "to_bf16 n=%" PRId64 "%s vs mk_f32_to_bf16_row", n, misalign ? " misaligned" : "");
    expect_rc(ck_to_bf16(nullptr, dst, src, n), 0, what);
    expect_bits(what, dst, ref.data(), (size_t)n * 2);
    int64_t diff = 0, nan_ok = 1;
    for (int64_t i = 0; i < n; i++) {
        if (std::isnan(src[i])) {
            nan_ok &= (dst[i] & 0x7fffu) > 0x7f80u; /* still a NaN */
            continue;
        }
        const __nv_bfloat16 o = __float2bfloat16_rn(src[i]);
        uint16_t ob;
        memcpy(&ob, &o, 2);
        diff += ob != dst[i];
    }
    snprintf(what, sizeof what, "to_bf16 n=%" PRId64 " vs __float2bfloat16_rn (non-NaN), NaN stays NaN", n);
    expect(diff == 0 && nan_ok && db[(size_t)(n + misalign)] == 0xdead, what);
}

/* ---- non-finite check: key = seq << 41 | index << 1 | is_inf, the smallest kept ---- */
unsigned long long key(uint32_t seq, int inf, int64_t i) {
    return (unsigned long long)seq << 41 | (unsigned long long)i << 1 | (unsigned long long)inf;
}
void test_check(int64_t rows, int64_t width, int misalign, int full) {
    const int64_t n = rows * width;
    std::vector<float> xb = randv((size_t)n + 1, -1.0f, 1.0f);
    float *x = xb.data() + misalign;
    unsigned long long rec = ~0ull;
    char what[160];
    snprintf(what, sizeof what, "check %" PRId64 "x%" PRId64 "%s: clean tensor leaves the record", rows, width,
             misalign ? " misaligned" : "");
    expect(ck_check(nullptr, x, rows, width, &rec, 3) == 0 && rec == ~0ull, what);
    x[n - 1] = INFINITY;
    expect(ck_check(nullptr, x, rows, width, &rec, 3) == 0 && rec == key(3, 1, n - 1),
           "check: one Inf at the last element (grid-stride end)");
    if (!full) return; /* (a large launch takes seconds in the shim) */
    x[n / 3] = -INFINITY;
    rec = ~0ull;
    expect(ck_check(nullptr, x, rows, width, &rec, 3) == 0 && rec == key(3, 1, n / 3),
           "check: two Infs: the first index (-Inf counts)");
    x[n / 2] = NAN;
    rec = ~0ull;
    expect(ck_check(nullptr, x, rows, width, &rec, 3) == 0 && rec == key(3, 1, n / 3),
           "check: a NaN after an Inf: the first bad element wins, as the CPU's scan");
    x[n / 4] = NAN;
    rec = ~0ull;
    expect(ck_check(nullptr, x, rows, width, &rec, 3) == 0 && rec == key(3, 0, n / 4),
           "check: a NaN before an Inf: the NaN is reported");
    expect(ck_check(nullptr, x, rows, width, &rec, 5) == 0 && rec == key(3, 0, n / 4),
           "check: a later check (seq 5) does not replace the record");
    expect(ck_check(nullptr, x, rows, width, &rec, 1) == 0 && rec == key(1, 0, n / 4),
           "check: an earlier check (seq 1) does");
    expect_rc(ck_check(nullptr, x, rows, width, &rec, 1u << 23), 1, "check: seq >= 2^23 refused");
}

/* ---- RoPE + KV append ---- */
struct rope_shape {
    int64_t H, G, D, rope_dim;
};
void test_rope_append(rope_shape sh, int append) {
    const int64_t H = sh.H, G = sh.G, D = sh.D, rd = sh.rope_dim, half = rd / 2, B = 4, n_max = 5, pages = 6;
    ck_step st = {};
    st.n = 3, st.pos = 17, st.kv_pos = 6, st.kv_len = 9, st.append = append; /* slots 6, 7 | 8: two blocks */
    const int32_t page_of[4] = {5, 2, 0, 3};                               /* logical block -> page */
    std::vector<uint16_t> pool((size_t)(pages * G * 2 * B * D), 0xffff);
    std::vector<int32_t> slot_pos((size_t)(pages * B), -7);
    ck_kv kv = {pool.data(), page_of, slot_pos.data(), B, G, D};
    std::vector<float> cs((size_t)(n_max * half + 1)), sn((size_t)(n_max * half + 1));
    for (int64_t t = 0; t < n_max; t++)
        mk_rope_table(cs.data() + t * half, sn.data() + t * half, rd, 10000.0, st.pos + t);
    std::vector<float> q = randv((size_t)(n_max * H * D), -2.0f, 2.0f), k = randv((size_t)(n_max * G * D), -2.0f, 2.0f);
    const std::vector<float> v = randv((size_t)(n_max * G * D), -2.0f, 2.0f);
    std::vector<float> qs = q, ks = k, qv = q, kv2 = k; /* CPU results: scalar and default paths */
    mk_force_scalar(1);
    for (int64_t t = 0; t < st.n; t++) {
        mk_rope(qs.data() + t * H * D, H, D, rd, cs.data() + t * half, sn.data() + t * half);
        mk_rope(ks.data() + t * G * D, G, D, rd, cs.data() + t * half, sn.data() + t * half);
    }
    mk_force_scalar(0);
    for (int64_t t = 0; t < st.n; t++) {
        mk_rope(qv.data() + t * H * D, H, D, rd, cs.data() + t * half, sn.data() + t * half);
        mk_rope(kv2.data() + t * G * D, G, D, rd, cs.data() + t * half, sn.data() + t * half);
    }
    char what[160], w2[200];
    snprintf(what, sizeof what, "rope_append H=%" PRId64 " G=%" PRId64 " D=%" PRId64 " rope_dim=%" PRId64 " append=%d",
             H, G, D, rd, append);
    expect_rc(ck_rope_append(nullptr, q.data(), k.data(), v.data(), &st, cs.data(), sn.data(), n_max, H, G, D, rd, kv),
              0, what);
    /* one rotation is 2 products and a sum: a fused multiply-add on either side moves it an ulp or so */
    snprintf(w2, sizeof w2, "%s: q vs CPU scalar", what);
    expect_close(w2, q.data(), qs.data(), q.size(), 1e-6f, 1e-6f);
    snprintf(w2, sizeof w2, "%s: k vs CPU scalar", what);
    expect_close(w2, k.data(), ks.data(), k.size(), 1e-6f, 1e-6f);
    snprintf(w2, sizeof w2, "%s: q, k vs CPU default path", what);
    expect_close(w2, q.data(), qv.data(), q.size(), 1e-6f, 1e-6f);
    expect_close(w2, k.data(), kv2.data(), k.size(), 1e-6f, 1e-6f);
    /* the pool: exactly bf16 of the k this kernel left (rotated) and of v, at each token's slot */
    std::vector<uint16_t> pref((size_t)(pages * G * 2 * B * D), 0xffff);
    std::vector<int32_t> sref((size_t)(pages * B), -7);
    if (append)
        for (int64_t t = 0; t < st.n; t++) {
            const int64_t P = st.kv_pos + t, page = page_of[P / B], slot = P % B;
            for (int64_t g = 0; g < G; g++) {
                uint16_t *kp = pref.data() + (page * G + g) * 2 * B * D + slot * D;
                mk_f32_to_bf16_row(kp, k.data() + t * G * D + g * D, D);
                mk_f32_to_bf16_row(kp + B * D, v.data() + t * G * D + g * D, D);
            }
            sref[(size_t)(page * B + slot)] = (int32_t)(st.pos + t);
        }
    snprintf(w2, sizeof w2, "%s: KV pool", what);
    expect_bits(w2, pool.data(), pref.data(), pool.size() * 2);
    snprintf(w2, sizeof w2, "%s: slot_pos", what);
    expect_bits(w2, slot_pos.data(), sref.data(), slot_pos.size() * 4);
}

/* ---- argmax: first maximum, NaN never wins ---- */
int32_t argmax_ref(const std::vector<float> &x) {
    int64_t b = -1;
    for (size_t i = 0; i < x.size(); i++)
        if (!std::isnan(x[i]) && (b < 0 || x[i] > x[(size_t)b])) b = (int64_t)i;
    return (int32_t)(b < 0 ? 0 : b);
}
void test_argmax(const char *name, const std::vector<float> &x, int32_t want) {
    int32_t out = -99;
    const int rc = ck_argmax(nullptr, x.data(), (int64_t)x.size(), &out);
    char what[160];
    snprintf(what, sizeof what, "argmax %s (n=%zu): got %d, want %d (ref %d)", name, x.size(), out, want,
             argmax_ref(x));
    expect(rc == 0 && out == want && want == argmax_ref(x), what);
}

void test_bench() {
    std::vector<float> x = randv(1000, -5.0f, 5.0f);
    x[517] = 9.0f;
    test_argmax("random", x, 517);
    x[3] = 9.0f;
    test_argmax("tie: the first", x, 3);
    x[0] = NAN, x[3] = NAN;
    test_argmax("NaN at the front and at the old max", x, 517);
    test_argmax("all NaN", std::vector<float>(77, NAN), 0);
    test_argmax("all -inf", std::vector<float>(77, -INFINITY), 0);
    std::vector<float> y(3, NAN);
    y[2] = -INFINITY;
    test_argmax("NaN, NaN, -inf", y, 2);
    test_argmax("n=1", std::vector<float>(1, 1.0f), 0);
    std::vector<float> big = randv(151552, -20.0f, 20.0f);
    big[151551] = 21.0f;
    test_argmax("vocab-sized, max last", big, 151551);
    expect_rc(ck_argmax(nullptr, x.data(), 0, nullptr), 1, "argmax n=0 refused");

    std::vector<uint32_t> a(4 * 1001), b(4 * 1001, 0);
    for (size_t i = 0; i < a.size(); i++) a[i] = (uint32_t)(i * 2654435761u);
    expect_rc(ck_copy(nullptr, b.data(), a.data(), 1000), 0, "copy 1000 x 16 bytes");
    expect(memcmp(a.data(), b.data(), 16000) == 0 && b[4000] == 0, "copy: 16000 bytes copied, nothing past them");
    expect_rc(ck_copy(nullptr, (char *)b.data() + 4, a.data(), 10), 1, "copy of a misaligned pointer refused");
}

} // namespace

int main() {
    test_embed(40);
    test_embed(13);
    test_embed(4096);
    test_rmsnorm(4096, 0, 0);
    test_rmsnorm(64, 0, 0);
    test_rmsnorm(64, 1, 0);
    test_rmsnorm(64, 0, 1);
    test_rmsnorm(37, 0, 0);
    test_swiglu(1000, 0);
    test_swiglu(999, 0);
    test_swiglu(1000, 1);
    test_add(1000, 0);
    test_add(999, 1);
    test_attn_normalize();
    test_to_bf16(64, 0);
    test_to_bf16(61, 0);
    test_to_bf16(64, 1);
    test_check(3, 100, 0, 1);
    test_check(7, 13, 0, 1);
    test_check(3, 100, 1, 1);
    test_check(2, 600000, 0, 0); /* past 1024 blocks x 256 threads x 4: the grid-stride loop */
    test_rope_append({4, 2, 32, 16}, 1);
    test_rope_append({4, 2, 32, 16}, 0);
    test_rope_append({8, 4, 24, 24}, 1);
    test_rope_append({3, 1, 10, 6}, 1);
    test_rope_append({2, 2, 8, 0}, 1);
    expect_rc(ck_rope_append(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 2, 32, 15,
                             ck_kv{nullptr, nullptr, nullptr, 4, 2, 32}),
              1, "rope_append odd rope_dim refused");
    test_bench();
    printf("test_k_rows: %d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
