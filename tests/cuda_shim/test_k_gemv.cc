/* test_k_gemv.cc — the decode GEMV (cuda/k_gemv.cu), its own source run on the CPU through the shim,
 * against the CPU backend's mk_matmul (default path) and mk_matmul_ref (double sums) with bf16
 * weights: every token count 1..CK_GEMV_MAX_N, one to three segments (Q|K|V with bias in GLM-like
 * ratios, gate|up without), row counts that leave a thread block partly empty, K that takes the
 * 16-byte path (K % 8 == 0, also across two activation tiles) and K that takes the scalar one, and
 * output strides wider than the rows (padding that must stay untouched).
 *
 * Tolerance, llm.c-style per element: |gpu - ref| <= atol + rtol*|ref| with rtol = 1e-5 and
 * atol = 4e-7 * sum_k |a_k w_k| (fp32 accumulation over K terms in a fixed order: a rounding error of
 * about K/32 lane steps plus 5 butterfly steps, each within 2^-24 of the running sum), the numbers
 * printed with each comparison. Exit 1 on any mismatch. */
#include "cuda/ck.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <vector>

extern "C" {
#include "kernels/kernels.h"
}

namespace {

int g_fail = 0, g_checks = 0;

uint64_t g_rng = 0x243f6a8885a308d3ull;
float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    const uint64_t r = g_rng * 0x2545f4914f6cdd1dull;
    return lo + (hi - lo) * (float)(r >> 40) / (float)(1 << 24);
}

void expect(bool ok, const char *what) {
    g_checks++;
    printf("%-72s %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) g_fail++;
}

struct seg_spec {
    int64_t rows;
    int bias;
    int64_t pad; /* ld = rows + pad */
};

/* One case: W [sum rows][K] bf16, a [n][lda], segments as given. */
void run_case(const char *name, int64_t n, int64_t K, int64_t lda, std::vector<seg_spec> segs) {
    int64_t rows = 0;
    for (const auto &s : segs) rows += s.rows;
    std::vector<uint16_t> W((size_t)(rows * K));
    for (auto &w : W) w = mk_f32_to_bf16(frand(-1.0f, 1.0f));
    std::vector<float> a((size_t)(n * lda));
    for (auto &x : a) x = frand(-1.0f, 1.0f);

    const int nseg = (int)segs.size();
    std::vector<std::vector<float>> y(nseg), bias(nseg);
    ck_gemv_seg cs[3] = {};
    for (int i = 0; i < nseg; i++) {
        const int64_t ld = segs[i].rows + segs[i].pad;
        y[i].assign((size_t)(n * ld), 777.0f); /* padding and anything not written keeps 777 */
        if (segs[i].bias) {
            bias[i].resize((size_t)segs[i].rows);
            for (auto &b : bias[i]) b = frand(-2.0f, 2.0f);
        }
        cs[i] = ck_gemv_seg{y[i].data(), ld, segs[i].rows, segs[i].bias ? bias[i].data() : nullptr};
    }
    const int rc = ck_gemv(nullptr, cs, nseg, a.data(), lda, W.data(), n, K);
    char what[256];
    snprintf(what, sizeof what, "gemv %s: n=%" PRId64 " K=%" PRId64 " rows=%" PRId64 " segs=%d launch", name, n, K,
             rows, nseg);
    expect(rc == 0, what);

    const double split_u = mk_isa_active() == MK_ISA_AVX512 && mk_precision_active() == MK_PREC_FP32 ? 0x1p-16 : 0.0;
    int64_t start = 0;
    for (int i = 0; i < nseg; i++) {
        const int64_t R = segs[i].rows, ld = R + segs[i].pad;
        const mk_tensor Wt = {W.data() + start * K, MTOK_BF16, R, K};
        const mk_tensor bt = {segs[i].bias ? bias[i].data() : nullptr, MTOK_F32, 1, R};
        std::vector<float> ref((size_t)(n * ld), 777.0f), fast((size_t)(n * ld), 777.0f);
        mk_matmul_ref(ref.data(), ld, a.data(), lda, n, &Wt, segs[i].bias ? &bt : nullptr);
        mk_matmul(fast.data(), ld, a.data(), lda, n, &Wt, segs[i].bias ? &bt : nullptr);
        size_t bad = 0, bad_fast = 0, pad_bad = 0;
        double worst = 0.0, worst_fast = 0.0;
        for (int64_t t = 0; t < n; t++) {
            for (int64_t r = 0; r < R; r++) {
                double mag = 0.0; /* sum |a_k w_k|: the scale of the rounding error */
                for (int64_t k = 0; k < K; k++)
                    mag += fabs((double)a[(size_t)(t * lda + k)] * mk_bf16_to_f32(W[(size_t)((start + r) * K + k)]));
                const size_t j = (size_t)(t * ld + r);
                const double tol = 4e-7 * mag + 1e-5 * fabs(ref[j]);
                const double d = fabs((double)y[i][j] - ref[j]), df = fabs((double)y[i][j] - fast[j]);
                worst = d > worst ? d : worst;
                worst_fast = df > worst_fast ? df : worst_fast;
                if (!(d <= tol) && bad++ < 5)
                    printf("    seg %d t %" PRId64 " row %" PRId64 ": got %.9g ref %.9g\n", i, t, r, y[i][j], ref[j]);
                /* the CPU default on an AVX-512 BF16 machine takes x as hi + lo bf16 (16 of its 24 bits,
                 * kernels/kernels.h mk_precision): its own bound, 2^-16 sum |a w|, on top */
                bad_fast += !(df <= 2 * tol + split_u * mag);
            }
            for (int64_t r = R; r < ld; r++) pad_bad += y[i][(size_t)(t * ld + r)] != 777.0f;
        }
        snprintf(what, sizeof what, "  seg %d (%" PRId64 " rows%s, ld %" PRId64 "): vs mk_matmul_ref max|d| %.3g, "
                 "%zu bad", i, R, segs[i].bias ? ", bias" : "", ld, worst, bad);
        expect(bad == 0, what);
        snprintf(what, sizeof what, "  seg %d: vs mk_matmul max|d| %.3g (tol x2), %zu bad; padding untouched", i,
                 worst_fast, bad_fast);
        expect(bad_fast == 0 && pad_bad == 0, what);
        start += R;
    }
}

} // namespace

int main() {
    /* GLM-like: H=4, G=2, D=32 -> Q|K|V = 128|64|64 rows with bias, E = 96 */
    for (int64_t n = 1; n <= CK_GEMV_MAX_N; n++)
        run_case("qkv H=4 G=2 D=32", n, 96, 96, {{128, 1, 0}, {64, 1, 0}, {64, 1, 0}});
    /* H=8, G=4, D=16: 128|64|64 again in rows, odd E (scalar path), a wider lda */
    run_case("qkv H=8 G=4 D=16 odd K", 3, 37, 40, {{128, 1, 0}, {64, 1, 2}, {64, 1, 5}});
    /* gate|up, no bias, rows not a multiple of a block's 32, padded outputs */
    run_case("gate|up", 2, 64, 64, {{40, 0, 3}, {40, 0, 3}});
    run_case("gate|up", 8, 64, 64, {{40, 0, 0}, {40, 0, 0}});
    /* one segment: K over two 1024-column tiles (16-byte path), and a lone row */
    run_case("down K=1040", 1, 1040, 1044, {{33, 0, 0}});
    run_case("down K=1040", 4, 1040, 1044, {{33, 0, 0}});
    run_case("down K=1040", 8, 1040, 1044, {{33, 0, 0}});
    /* segment ends inside a warp's 4 rows */
    run_case("odd segments", 3, 64, 64, {{13, 1, 1}, {6, 0, 0}, {9, 1, 2}});
    run_case("one row", 1, 8, 8, {{1, 1, 0}});
    run_case("empty middle segment", 2, 24, 24, {{5, 1, 0}, {0, 1, 0}, {7, 1, 1}});
    /* refused arguments */
    float y[8];
    uint16_t w[8] = {0};
    const ck_gemv_seg s1 = {y, 8, 1, nullptr};
    expect(ck_gemv(nullptr, &s1, 1, y, 8, w, CK_GEMV_MAX_N + 1, 8) != 0, "gemv: n > CK_GEMV_MAX_N refused");
    expect(ck_gemv(nullptr, &s1, 4, y, 8, w, 1, 8) != 0, "gemv: 4 segments refused");
    expect(ck_gemv(nullptr, &s1, 1, y, 4, w, 1, 8) != 0, "gemv: lda < K refused");
    printf("test_k_gemv: %d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
