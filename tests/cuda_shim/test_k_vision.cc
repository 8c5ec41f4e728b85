/* test_k_vision.cc — the kernels of GLM-4V's vision tower (cuda/k_vision.cu) and the tower's attention
 * (ck_vis_qkv + ck_attn_prefill + ck_attn_normalize), their own source run through the CPU shim, or
 * on a GPU when linked with nvcc's objects and libcudart (tests/gpu: test_gpu_k_vision, with --full),
 * against straightforward host references.
 *
 * Shapes: small odd ones (the scalar paths, every index formula with distinct sizes), multiples of the
 * vector width (the 16-byte paths), a misaligned pointer (the scalar path at a vector-friendly size),
 * and the tower's row width E = 1792 on a few rows. --full adds the tower's own shapes (T = 6401 rows,
 * an 80 x 80 grid of 14 x 14 patches, 16 heads of 112, the merger's 4096-wide LayerNorm): meant for a
 * GPU, slow on the shim. Every output buffer starts as NaN (0xFF bytes) with room past the end, so an
 * element written where it must not be, or not written where it must, shows.
 *
 * Tolerances (why), per element |got - ref| <= atol + rtol |ref|:
 *   patches, windows, qkv   exact bits: the same single rounding (mm_f32_to_bf16) on both sides.
 *   LayerNorm  1e-5 + 1e-5|ref|: the kernel's mean and variance are fp32 sums in its order, the
 *              reference's double; rows are offset by 2.5 so a variance taken around 0 instead of the
 *              mean, or any misplaced element, is off by far more.
 *   GELU       1e-6 + 1e-5|ref|: erff against double erf, a few ulp.
 *   attention  the reference takes the bf16-rounded q, k and v (the kernel's tensor-core operands) and
 *              a double softmax over every key; the kernel rounds P to bf16 for P·V (test_k_attn.cc's
 *              prefill bound): o within 4e-3 + 4e-3|ref|, lse = m + ln d within 4e-3 + 2e-5|ref|.
 *              A causal mask, a key of the wrong head or slot moves o by ~1e-1.
 * Prints one line per check; exit 1 on any mismatch. */
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/ck.h"
#include "tests/cuda_shim/test_dev.h"
extern "C" {
#include "kernels/kernels.h"
}

namespace {

int g_fail = 0;

rng g_r{12345};

std::vector<float> randv(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (float &x : v) x = lo + (hi - lo) * 0.5f * (g_r.uni() + 1.0f);
    return v;
}

void expect(bool ok, const char *line) {
    printf("%-100s %s\n", line, ok ? "ok" : "FAIL");
    if (!ok) g_fail = 1;
}

/* got[i] vs ref[i], i < n, per element atol + rtol|ref|; then got[n, n_all) must still be NaN */
void expect_close(const char *what, const float *got, const double *ref, size_t n, size_t n_all, double atol,
                  double rtol) {
    size_t bad = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n_all; i++) {
        bool ok;
        if (i >= n) {
            ok = std::isnan(got[i]);
        } else {
            const double d = fabs((double)got[i] - ref[i]);
            if (d == d) worst = std::max(worst, d);
            ok = d <= atol + rtol * fabs(ref[i]);
        }
        if (!ok && bad++ < 5) fprintf(stderr, "    [%zu] got %.9g ref %.9g\n", i, got[i], i < n ? ref[i] : NAN);
    }
    char line[256];
    snprintf(line, sizeof line, "%s: %zu values, max|d| %.2e (atol %g rtol %g), %zu bad", what, n, worst, atol, rtol,
             bad);
    expect(bad == 0, line);
}

/* got[i] == ref[i] bit for bit, i < n; then got[n, n_all) still 0xFFFF */
void expect_bits(const char *what, const uint16_t *got, const uint16_t *ref, size_t n, size_t n_all) {
    size_t bad = 0;
    for (size_t i = 0; i < n_all; i++) {
        const uint16_t want = i < n ? ref[i] : 0xffff;
        if (got[i] != want && bad++ < 5) fprintf(stderr, "    [%zu] got %04x want %04x\n", i, got[i], want);
    }
    char line[256];
    snprintf(line, sizeof line, "%s: %zu values exact, %zu bad", what, n, bad);
    expect(bad == 0, line);
}

/* ---- LayerNorm: off = element offset of x and y in their buffers (1: misaligned, the scalar path);
 * alias: y = x (add == 0 only) ---- */
void test_layernorm(int64_t n, int64_t E, int add, bool alias, int64_t off) {
    const float eps = 1e-5f;
    const size_t all = (size_t)((n + 1) * E + off); /* one row of room: must stay NaN */
    std::vector<float> x = randv((size_t)(n * E), 1.5f, 3.5f), w = randv((size_t)E, 0.5f, 1.5f),
                       b = randv((size_t)E, -0.5f, 0.5f), y0 = randv((size_t)(n * E), -1.0f, 1.0f);
    dbuf<float> dx(all), dy(all), dw((size_t)E), db((size_t)E);
    dx.up(x, (size_t)off), dw.up(w), db.up(b);
    float *yp = alias ? dx.p + off : dy.p + off;
    if (add) dy.up(y0, (size_t)off);
    CUDA_OK(ck_layernorm(nullptr, yp, dx.p + off, dw.p, db.p, n, E, eps, add));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> got = alias ? dx.down() : dy.down();
    std::vector<double> ref((size_t)(n * E));
    for (int64_t t = 0; t < n; t++) {
        const float *xr = &x[(size_t)(t * E)];
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < E; i++) mean += xr[i];
        mean /= (double)E;
        for (int64_t i = 0; i < E; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)E;
        const double rstd = 1.0 / sqrt(var + eps);
        for (int64_t i = 0; i < E; i++)
            ref[(size_t)(t * E + i)] = (xr[i] - mean) * rstd * w[i] + b[i] + (add ? y0[(size_t)(t * E + i)] : 0.0);
    }
    char what[128];
    snprintf(what, sizeof what, "layernorm n=%lld E=%lld%s%s%s", (long long)n, (long long)E, add ? " add" : "",
             alias ? " in place" : "", off ? " misaligned" : "");
    expect_close(what, got.data() + off, ref.data(), ref.size(), all - (size_t)off, 1e-5, 1e-5);
}

void test_gelu(int64_t n, int64_t off) {
    std::vector<float> x = randv((size_t)n, -6.0f, 6.0f);
    x[0] = 0.0f;
    dbuf<float> dx((size_t)(n + off + 5));
    dx.up(x, (size_t)off);
    CUDA_OK(ck_gelu(nullptr, dx.p + off, n));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> got = dx.down();
    std::vector<double> ref((size_t)n);
    for (int64_t i = 0; i < n; i++) ref[(size_t)i] = 0.5 * x[(size_t)i] * (1.0 + erf(x[(size_t)i] / sqrt(2.0)));
    char what[128];
    snprintf(what, sizeof what, "gelu n=%lld%s", (long long)n, off ? " misaligned" : "");
    expect_close(what, got.data() + off, ref.data(), (size_t)n, got.size() - (size_t)off, 1e-6, 1e-5);
}

/* ---- patches: every element of the [G*G][ldo] output, the padding's zeros included ---- */
void test_patches(int64_t P, int64_t G, int64_t ldo) {
    const int64_t S = G * P;
    const std::vector<float> chw = randv((size_t)(3 * S * S), -2.0f, 2.0f);
    dbuf<float> dimg(chw.size());
    dbuf<uint16_t> dout((size_t)(G * G * ldo + 9));
    dimg.up(chw);
    CUDA_OK(ck_vis_patches(nullptr, dout.p, ldo, dimg.p, S, P, G));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<uint16_t> got = dout.down();
    std::vector<uint16_t> ref((size_t)(G * G * ldo), 0);
    for (int64_t gy = 0; gy < G; gy++)
        for (int64_t gx = 0; gx < G; gx++)
            for (int64_t c = 0; c < 3; c++)
                for (int64_t ky = 0; ky < P; ky++)
                    for (int64_t kx = 0; kx < P; kx++)
                        ref[(size_t)((gy * G + gx) * ldo + (c * P + ky) * P + kx)] =
                            mk_f32_to_bf16(chw[(size_t)((c * S + gy * P + ky) * S + gx * P + kx)]);
    char what[128];
    snprintf(what, sizeof what, "vis_patches P=%lld G=%lld ldo=%lld (%lld zero columns)", (long long)P, (long long)G,
             (long long)ldo, (long long)(ldo - 3 * P * P));
    expect_bits(what, got.data(), ref.data(), ref.size(), got.size());
}

/* ---- 2 x 2 windows; off 1: the output misaligned (the scalar stores) ---- */
void test_windows(int64_t G, int64_t E, int64_t off) {
    const int64_t Gh = G / 2;
    const std::vector<float> grid = randv((size_t)(G * G * E), -3.0f, 3.0f);
    dbuf<float> dg(grid.size());
    dbuf<uint16_t> dout((size_t)(Gh * Gh * 4 * E + off + 7));
    dg.up(grid);
    CUDA_OK(ck_vis_windows(nullptr, dout.p + off, dg.p, G, E));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<uint16_t> got = dout.down();
    std::vector<uint16_t> ref((size_t)(Gh * Gh * 4 * E));
    for (int64_t oy = 0; oy < Gh; oy++)
        for (int64_t ox = 0; ox < Gh; ox++)
            for (int64_t ky = 0; ky < 2; ky++)
                for (int64_t kx = 0; kx < 2; kx++)
                    for (int64_t c = 0; c < E; c++)
                        ref[(size_t)((oy * Gh + ox) * 4 * E + c * 4 + ky * 2 + kx)] =
                            mk_f32_to_bf16(grid[(size_t)(((2 * oy + ky) * G + 2 * ox + kx) * E + c)]);
    char what[128];
    snprintf(what, sizeof what, "vis_windows G=%lld E=%lld%s", (long long)G, (long long)E, off ? " misaligned" : "");
    expect_bits(what, got.data() + off, ref.data(), ref.size(), got.size() - (size_t)off);
}

/* ---- the tower's attention: a pool with shuffled pages (two that nothing maps to), its K and V
 * from ck_vis_qkv ---- */
struct vis_pool {
    int64_t T, H, D, B, nblk, npages;
    std::vector<float> qkv;
    std::vector<int32_t> page_of;
    dbuf<float> dqkv, dq;
    dbuf<uint16_t> pages;
    dbuf<int32_t> dpage_of, slot_pos;
    vis_pool(int64_t T_, int64_t H_, int64_t D_, int64_t B_, float qmag)
        : T(T_), H(H_), D(D_), B(B_), nblk((T_ + B_ - 1) / B_), npages(nblk + 2), dqkv((size_t)(T_ * 3 * H_ * D_)),
          dq((size_t)((T_ + 1) * H_ * D_)), pages((size_t)(npages * H_ * 2 * B_ * D_)), dpage_of((size_t)nblk),
          slot_pos((size_t)(npages * B_)) {
        const int64_t E = H * D;
        qkv.resize((size_t)(T * 3 * E));
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < 3 * E; j++) qkv[(size_t)(t * 3 * E + j)] = (j < E ? qmag : 1.0f) * g_r.uni();
        std::vector<int32_t> perm((size_t)npages);
        for (int64_t i = 0; i < npages; i++) perm[(size_t)i] = (int32_t)i;
        for (int64_t i = npages - 1; i > 0; i--) std::swap(perm[(size_t)i], perm[g_r.next() % (uint32_t)(i + 1)]);
        page_of.assign(perm.begin(), perm.begin() + nblk);
        dqkv.up(qkv);
        dpage_of.up(page_of);
    }
    ck_kv kv() const { return ck_kv{pages.p, dpage_of.p, slot_pos.p, B, H, D}; }
    /* bf16 bits of token t's K (which 1) or V (2) column e, from the input */
    uint16_t kv_ref(int64_t t, int which, int64_t e) const {
        return mk_f32_to_bf16(qkv[(size_t)(t * 3 * H * D + which * H * D + e)]);
    }
};

/* ck_vis_qkv: q copied (rows past T untouched), every K and V element at its pool place, slot_pos 0
 * for the T slots, and every other pool element and slot untouched. */
void test_qkv(int64_t T, int64_t H, int64_t D, int64_t B) {
    vis_pool p(T, H, D, B, 1.0f);
    const int64_t E = H * D;
    CUDA_OK(ck_vis_qkv(nullptr, p.dq.p, p.dqkv.p, T, H, D, p.kv()));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> q = p.dq.down();
    std::vector<double> qref((size_t)(T * E));
    for (int64_t t = 0; t < T; t++)
        for (int64_t e = 0; e < E; e++) qref[(size_t)(t * E + e)] = p.qkv[(size_t)(t * 3 * E + e)];
    char what[128];
    snprintf(what, sizeof what, "vis_qkv T=%lld H=%lld D=%lld B=%lld: q", (long long)T, (long long)H, (long long)D,
             (long long)B);
    expect_close(what, q.data(), qref.data(), qref.size(), q.size(), 0.0, 0.0);
    /* the expected pool: 0xFFFF everywhere, then every token's K and V rows */
    const std::vector<uint16_t> pool = p.pages.down();
    std::vector<uint16_t> pref(pool.size(), 0xffff);
    std::vector<int32_t> sref((size_t)(p.npages * B), -1);
    for (int64_t t = 0; t < T; t++) {
        const int64_t page = p.page_of[(size_t)(t / B)], row = t % B;
        sref[(size_t)(page * B + row)] = 0;
        for (int64_t h = 0; h < H; h++)
            for (int64_t d = 0; d < D; d++) {
                const size_t k = (size_t)(((page * H + h) * 2 * B + row) * D + d);
                pref[k] = p.kv_ref(t, 1, h * D + d);
                pref[k + (size_t)(B * D)] = p.kv_ref(t, 2, h * D + d);
            }
    }
    snprintf(what, sizeof what, "vis_qkv T=%lld H=%lld D=%lld B=%lld: pool (%lld pages, shuffled)", (long long)T,
             (long long)H, (long long)D, (long long)B, (long long)p.npages);
    expect_bits(what, pool.data(), pref.data(), pool.size(), pool.size());
    const std::vector<int32_t> sp = p.slot_pos.down();
    size_t bad = 0;
    for (size_t i = 0; i < sp.size(); i++) bad += sp[i] != sref[i];
    snprintf(what, sizeof what, "vis_qkv T=%lld H=%lld D=%lld B=%lld: slot_pos 0 at the %lld slots, others untouched",
             (long long)T, (long long)H, (long long)D, (long long)B, (long long)T);
    expect(bad == 0, what);
}

/* ck_vis_qkv + ck_attn_prefill (every key at position 0, every block listed) + ck_attn_normalize
 * against a double softmax over all T keys; rows checked: all, or every `stride`-th (--full). */
void test_attention(int64_t T, int64_t H, int64_t D, int64_t B, int64_t stride) {
    vis_pool p(T, H, D, B, 4.0f);
    const int64_t E = H * D, rows = T * H;
    dbuf<ck_step> step(1);
    ck_step st = {};
    st.n = T, st.pos = 0, st.kv_pos = 0, st.kv_len = T, st.append = 0;
    step.up(std::vector<ck_step>{st});
    dbuf<int32_t> ids(1), count((size_t)H);
    count.up(std::vector<int32_t>((size_t)H, -1));
    dbuf<float> o((size_t)(rows * D)), m((size_t)rows), d((size_t)rows);
    CUDA_OK(ck_vis_qkv(nullptr, p.dq.p, p.dqkv.p, T, H, D, p.kv()));
    CUDA_OK(ck_attn_prefill(nullptr, p.dq.p, step.p, p.kv(), ck_blocks{ids.p, count.p, 0}, T, H,
                            ck_part{o.p, m.p, d.p}));
    CUDA_OK(ck_attn_normalize(nullptr, o.p, d.p, rows, D));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> go = o.down(), gm = m.down(), gd = d.down();
    const double scale = (float)(1.0 / sqrt((double)D)); /* the kernel's fp32 scale */
    std::vector<double> qb((size_t)D), s((size_t)T), ref((size_t)D);
    int64_t checked = 0, bad = 0;
    double max_do = 0.0, max_dl = 0.0;
    for (int64_t r = 0; r < rows; r += stride) {
        const int64_t t = r / H, h = r % H;
        for (int64_t j = 0; j < D; j++)
            qb[(size_t)j] = mk_bf16_to_f32(mk_f32_to_bf16(p.qkv[(size_t)(t * 3 * E + h * D + j)]));
        double mx = -INFINITY;
        for (int64_t k = 0; k < T; k++) {
            double a = 0.0;
            for (int64_t j = 0; j < D; j++) a += qb[(size_t)j] * mk_bf16_to_f32(p.kv_ref(k, 1, h * D + j));
            s[(size_t)k] = a * scale;
            mx = std::max(mx, s[(size_t)k]);
        }
        double sum = 0.0;
        std::fill(ref.begin(), ref.end(), 0.0);
        for (int64_t k = 0; k < T; k++) {
            const double e = exp(s[(size_t)k] - mx);
            sum += e;
            for (int64_t j = 0; j < D; j++) ref[(size_t)j] += e * mk_bf16_to_f32(p.kv_ref(k, 2, h * D + j));
        }
        bool ok = std::isfinite(gm[(size_t)r]) && gd[(size_t)r] > 0.0f;
        const double lse = gm[(size_t)r] + log((double)gd[(size_t)r]), lse_ref = mx + log(sum);
        const double dl = fabs(lse - lse_ref);
        if (dl == dl) max_dl = std::max(max_dl, dl);
        ok = ok && dl <= 4e-3 + 2e-5 * fabs(lse_ref);
        for (int64_t j = 0; j < D; j++) {
            const double x = go[(size_t)(r * D + j)], xr = ref[(size_t)j] / sum, dx = fabs(x - xr);
            if (dx == dx) max_do = std::max(max_do, dx);
            ok = ok && dx <= 4e-3 + 4e-3 * fabs(xr);
        }
        if (!ok && bad++ < 5)
            fprintf(stderr, "    row %lld (t %lld h %lld): m %g d %g o0 %g | ref lse %g o0 %g\n", (long long)r,
                    (long long)t, (long long)h, gm[(size_t)r], gd[(size_t)r], go[(size_t)(r * D)], lse_ref,
                    ref[0] / sum);
        checked++;
    }
    char what[192];
    snprintf(what, sizeof what, "attention T=%lld H=%lld D=%lld B=%lld: %lld rows, max|do| %.2e, max|dlse| %.2e",
             (long long)T, (long long)H, (long long)D, (long long)B, (long long)checked, max_do, max_dl);
    expect(bad == 0, what);
}

/* ---- launcher argument checks ---- */
void test_errors() {
    const int bad = (int)cudaErrorInvalidValue;
    float f = 0.0f;
    uint16_t u = 0;
    const ck_kv kv{&u, nullptr, nullptr, 16, 4, 32};
    const bool ok = ck_layernorm(nullptr, &f, &f, &f, &f, 1, 0, 1e-5f, 0) == bad &&  /* E = 0 */
                    ck_layernorm(nullptr, &f, &f, &f, &f, -1, 4, 1e-5f, 0) == bad && /* n < 0 */
                    ck_gelu(nullptr, &f, -1) == bad &&
                    ck_vis_patches(nullptr, &u, 26, &f, 15, 3, 5) == bad &&      /* ldo < 3*P*P */
                    ck_vis_patches(nullptr, &u, 32, &f, 16, 3, 5) == bad &&      /* S != G*P */
                    ck_vis_windows(nullptr, &u, &f, 5, 8) == bad &&              /* G odd */
                    ck_vis_qkv(nullptr, &f, &f, 4, 3, 32, kv) == bad &&          /* kv.G != H */
                    ck_vis_qkv(nullptr, &f, &f, 4, 4, 16, kv) == bad;            /* kv.D != D */
    cudaGetLastError();
    expect(ok, "errors: E 0, n < 0, ldo < 3PP, S != GP, odd G, kv.G != H, kv.D != D -> cudaErrorInvalidValue");
}

} // namespace

int main(int argc, char **argv) {
    /* linked with libcudart instead of the shim (the device check), a machine without a GPU skips */
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("test_k_vision: no CUDA device: skipped\n");
        return 77;
    }
    bool full = false;
    for (int i = 1; i < argc; i++) full |= strcmp(argv[i], "--full") == 0;

    test_layernorm(5, 37, 0, false, 0);
    test_layernorm(3, 37, 1, false, 0);
    test_layernorm(4, 64, 0, true, 0);   /* the float4 path, in place */
    test_layernorm(3, 68, 1, false, 1);  /* misaligned: the scalar path at E % 4 == 0 */
    test_layernorm(3, 1792, 0, false, 0); /* the tower's width */
    test_layernorm(3, 1792, 1, false, 0);
    test_layernorm(2, 4096, 0, true, 0); /* the merger's */
    test_gelu(1001, 0);
    test_gelu(4096, 0);
    test_gelu(4096, 1);
    test_patches(3, 5, 32);  /* 27 columns + 5 of padding */
    test_patches(2, 3, 12);  /* no padding */
    test_patches(14, 3, 592); /* the tower's patch: 588 + 4 */
    test_windows(6, 5, 0);
    test_windows(4, 7, 1);
    test_windows(4, 1792, 0);
    test_qkv(45, 3, 12, 16); /* the 16-byte path (D % 4 == 0) */
    test_qkv(20, 2, 7, 8);   /* the scalar path */
    test_qkv(37, 2, 112, 16);
    test_attention(77, 3, 32, 16, 1);  /* 77: neither 64 query rows, 32 keys nor 16 slots divide it */
    test_attention(70, 2, 112, 16, 1);
    test_attention(45, 2, 112, 32, 1);
    test_errors();
    if (full) { /* the tower's shapes (GLM-4V: 1120 x 1120 image, 14 x 14 patches, E 1792, 16 x 112) */
        test_layernorm(6401, 1792, 1, false, 0);
        test_layernorm(1600, 4096, 0, true, 0);
        test_gelu(6401LL * 1792, 0);
        test_patches(14, 80, 592);
        test_windows(80, 1792, 0);
        test_qkv(6401, 16, 112, 128);
        test_attention(6401, 16, 112, 128, 997); /* every 997th of the 102416 rows: 103 rows, all heads */
    }
    printf("%s\n", g_fail ? "test_k_vision: FAILED" : "test_k_vision: all ok");
    return g_fail;
}
