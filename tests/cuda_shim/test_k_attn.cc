/* test_k_attn.cc — the attention kernels of cuda/k_attn_decode.cu, cuda/k_attn_prefill.cu and
 * cuda/k_merge.cu (their own source, run through the CPU shim, or on a GPU when linked with nvcc's
 * objects and libcudart) against the CPU backend's reference: kernels/cpu_ref.c mk_attn_accum_ref
 * over exactly the keys each query may see, and kernels/cpu_ops.c mk_attn_merge.
 *
 * The KV pool is built so that a kernel cutting a corner shows: pages in shuffled order (page_of is
 * read), slots past kv_len and unused pages hold bf16 NaN with slot_pos -1 (a kernel that reads a
 * slot beyond the block's valid rows, or multiplies its V by p = 0, gets NaN), one case stores
 * positions stretched (slot_pos = 2*kv position + 1000, so the causal test must read slot_pos), one
 * has |q·k| ~ 1e4 (exp overflows without the running max), per-group explicit block lists differ
 * between groups, and buffers start as NaN so a row written where it must not be, or not written
 * where it must, fails.
 *
 * Tolerances (why):
 *   decode   q, scores, softmax fp32 on both sides; the reference sums q·k in double and uses double
 *            exp: normalised o within 2e-5 + 1e-4|ref|, lse = m + ln d and m within 2e-5 (1 + |ref|).
 *   prefill  the reference gets the same bf16-rounded q (the kernel's tensor-core operand), so the
 *            remaining difference is P rounded to bf16 for P·V (d sums the same rounded p): each
 *            weight of the normalised output moves by <= 2^-9 relative, |v| <= 1, so o within
 *            4e-3 + 4e-3|ref|; lse within 4e-3 + 2e-5|ref| (2^-8 on d, plus fp32 vs double scores).
 *   merge    the same mm_merge arithmetic as mk_attn_merge: 1e-6 relative.
 * Prints one line per comparison and exits 1 on any mismatch. */
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

static int g_fail = 0;


static const uint16_t BF16_NAN = 0x7fc0;

/* ---- the KV pool and the block lists of one case ---- */
struct kv_case {
    const char *name;
    int H, G, D, B;
    int64_t kv_pos; /* cached prefix: KV position of the chunk's row 0 */
    int n;          /* chunk tokens */
    int pos_mul;    /* slot_pos = kv position * pos_mul + pos_off */
    int64_t pos_off;
    float qmag;    /* q elements uniform in [-qmag, qmag) */
    bool lists;    /* explicit per-group lists (else count = -1) */
    uint32_t seed;
    int ns_step; /* decode: n_split = 1, 1 + ns_step, .. <= 5 */
};

struct host_kv {
    int64_t kv_len, nblk, npages;
    std::vector<uint16_t> pages;
    std::vector<int32_t> page_of, slot_pos, ids, count;
    int64_t cap;
    std::vector<std::vector<int32_t>> list; /* per group: the block ids attended */
    std::vector<float> q;                   /* [n_max][H*D], rows t >= n NaN */
    int64_t pos;                            /* query position of row 0 */
};

static host_kv build(const kv_case &c, int n_max) {
    host_kv h;
    rng r{c.seed * 2654435761ull + 1};
    const int64_t B = c.B, G = c.G, D = c.D;
    h.kv_len = c.kv_pos + c.n;
    h.nblk = (h.kv_len + B - 1) / B;
    h.npages = h.nblk + 2; /* two pages nothing maps to */
    h.pages.assign((size_t)(h.npages * G * 2 * B * D), BF16_NAN);
    h.slot_pos.assign((size_t)(h.npages * B), -1);
    std::vector<int32_t> perm((size_t)h.npages);
    for (int64_t i = 0; i < h.npages; i++) perm[i] = (int32_t)i;
    for (int64_t i = h.npages - 1; i > 0; i--) std::swap(perm[i], perm[r.next() % (uint32_t)(i + 1)]);
    h.page_of.assign(perm.begin(), perm.begin() + h.nblk);
    for (int64_t b = 0; b < h.nblk; b++)
        for (int64_t j = 0; j < B && b * B + j < h.kv_len; j++) {
            const int64_t page = h.page_of[b], kvp = b * B + j;
            h.slot_pos[page * B + j] = (int32_t)(kvp * c.pos_mul + c.pos_off);
            for (int64_t g = 0; g < G; g++) {
                uint16_t *k = &h.pages[((page * G + g) * 2 * B + j) * D], *v = k + B * D;
                for (int64_t d = 0; d < D; d++) {
                    k[d] = mk_f32_to_bf16(r.uni());
                    v[d] = mk_f32_to_bf16(r.uni());
                }
            }
        }
    h.pos = c.kv_pos * c.pos_mul + c.pos_off;
    h.q.assign((size_t)n_max * c.H * D, NAN);
    for (int64_t i = 0; i < (int64_t)c.n * c.H * D; i++) h.q[i] = c.qmag * r.uni();
    /* lists: about 60 % of the blocks, a different draw per group, ascending; the last block always,
     * so the chunk's own keys take part */
    h.cap = h.nblk;
    h.ids.assign((size_t)(G * h.cap), -7);
    h.count.assign((size_t)G, -1);
    h.list.resize(G);
    for (int64_t g = 0; g < G; g++) {
        for (int64_t b = 0; b < h.nblk; b++)
            if (!c.lists || b == h.nblk - 1 || r.next() % 10 < 6) h.list[g].push_back((int32_t)b);
        if (c.lists) {
            h.count[g] = (int32_t)h.list[g].size();
            std::copy(h.list[g].begin(), h.list[g].end(), h.ids.begin() + g * h.cap);
        }
    }
    return h;
}

/* device copies of a host_kv */
struct dev_kv {
    dbuf<uint16_t> pages;
    dbuf<int32_t> page_of, slot_pos, ids, count;
    dbuf<float> q;
    dbuf<ck_step> step;
    dev_kv(const host_kv &h, const kv_case &c)
        : pages(h.pages.size()), page_of(h.page_of.size()), slot_pos(h.slot_pos.size()), ids(h.ids.size()),
          count(h.count.size()), q(h.q.size()), step(1) {
        pages.up(h.pages);
        page_of.up(h.page_of);
        slot_pos.up(h.slot_pos);
        ids.up(h.ids);
        count.up(h.count);
        q.up(h.q);
        ck_step s = {};
        s.n = c.n, s.pos = h.pos, s.kv_pos = c.kv_pos, s.kv_len = h.kv_len, s.append = 1;
        step.up(std::vector<ck_step>{s});
    }
    ck_kv kv(const kv_case &c) const { return ck_kv{pages.p, page_of.p, slot_pos.p, c.B, c.G, c.D}; }
    ck_blocks blocks(const host_kv &h) const { return ck_blocks{ids.p, count.p, h.cap}; }
};

/* The reference partial of row (t, h) over list entries [i0, i1) of its group: the keys it may see,
 * gathered in list order, through mk_attn_accum_ref. qrow is the query as the kernel uses it. */
struct part_ref {
    std::vector<float> o;
    float m, d;
};
static part_ref reference(const kv_case &c, const host_kv &h, const float *qrow, int64_t t, int64_t hd, size_t i0,
                          size_t i1) {
    const int64_t B = c.B, G = c.G, D = c.D, g = hd / (c.H / G);
    std::vector<uint16_t> K, V;
    for (size_t i = i0; i < i1; i++) {
        const int64_t b = h.list[g][i], rows = std::min<int64_t>(B, h.kv_len - b * B);
        for (int64_t j = 0; j < rows; j++) {
            const int64_t page = h.page_of[b];
            if (h.slot_pos[page * B + j] > h.pos + t) continue;
            const uint16_t *k = &h.pages[((page * G + g) * 2 * B + j) * D];
            K.insert(K.end(), k, k + D);
            V.insert(V.end(), k + B * D, k + B * D + D);
        }
    }
    part_ref p{std::vector<float>((size_t)D, 0.0f), -INFINITY, 0.0f};
    const int64_t nk = (int64_t)K.size() / D;
    if (nk) mk_attn_accum_ref(qrow, K.data(), V.data(), nk, D, D, (float)(1.0 / sqrt((double)D)), p.o.data(), &p.m, &p.d);
    return p;
}

struct tol {
    float o_abs, o_rel, lse_abs, lse_rel;
};
struct stats {
    int64_t rows = 0, bad = 0;
    double max_do = 0, max_dlse = 0;
};

/* Compare one row of kernel partials with the reference: both empty, or both non-empty with close
 * m, lse and normalised o. */
static void compare(stats &st, const char *what, int64_t row, const float *o, float m, float d, const part_ref &ref,
                    int64_t D, const tol &tl) {
    st.rows++;
    bool ok = true;
    if (ref.m == -INFINITY) {
        ok = m == -INFINITY && d == 0.0f;
        for (int64_t j = 0; ok && j < D; j++) ok = o[j] == 0.0f;
    } else if (!(std::isfinite(m) && std::isfinite(d) && d > 0.0f)) {
        ok = false;
    } else {
        const double lse = m + log((double)d), lse_ref = ref.m + log((double)ref.d);
        const double dl = fabs(lse - lse_ref), dm = fabs((double)m - ref.m);
        st.max_dlse = std::max(st.max_dlse, dl);
        if (dl > tl.lse_abs + tl.lse_rel * fabs(lse_ref) || dm > tl.lse_abs + tl.lse_rel * fabs(ref.m)) ok = false;
        for (int64_t j = 0; j < D; j++) {
            const double x = o[j] / (double)d, xr = ref.o[j] / (double)ref.d, dx = fabs(x - xr);
            if (!(dx <= tl.o_abs + tl.o_rel * fabs(xr))) ok = false;
            if (dx == dx) st.max_do = std::max(st.max_do, dx);
        }
    }
    if (!ok) {
        if (st.bad < 5)
            fprintf(stderr, "  MISMATCH %s row %lld: m %g d %g o0 %g | ref m %g d %g o0 %g\n", what, (long long)row,
                    m, d, o[0], ref.m, ref.d, ref.o[0]);
        st.bad++;
    }
}

static void report(const char *kind, const kv_case &c, const char *extra, const stats &st) {
    printf("%-7s %-10s H=%d G=%d D=%d B=%d kv_len=%lld n=%d %s: %lld rows, max|do| %.2e, max|dlse| %.2e: %s\n", kind,
           c.name, c.H, c.G, c.D, c.B, (long long)(c.kv_pos + c.n), c.n, extra, (long long)st.rows, st.max_do,
           st.max_dlse, st.bad ? "FAIL" : "ok");
    if (st.bad) g_fail = 1;
}

/* ---- decode: the shares in work, then their combine ---- */
static void test_decode(const kv_case &c, int n_split) {
    const int n_max = CK_DECODE_MAX_N, H = c.H, D = c.D, HG = c.H / c.G;
    const host_kv h = build(c, n_max);
    dev_kv dk(h, c);
    const int64_t rows = (int64_t)n_max * H;
    dbuf<float> wo((size_t)(n_split * rows * D)), wm((size_t)(n_split * rows)), wd((size_t)(n_split * rows));
    dbuf<float> oo((size_t)(rows * D)), om((size_t)rows), od((size_t)rows);
    const ck_part work{wo.p, wm.p, wd.p}, out{oo.p, om.p, od.p};
    CUDA_OK(ck_attn_decode(nullptr, dk.q.p, dk.step.p, dk.kv(c), dk.blocks(h), n_max, H, n_split, work));
    CUDA_OK(ck_attn_combine(nullptr, out, work, n_split, rows, D));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> o = wo.down(), m = wm.down(), d = wd.down(), fo = oo.down(), fm = om.down(),
                             fd = od.down();
    const tol tl{2e-5f, 1e-4f, 2e-5f, 2e-5f};
    stats st_share, st_out;
    for (int64_t t = 0; t < n_max; t++)
        for (int64_t hd = 0; hd < H; hd++) {
            const int64_t r = t * H + hd, g = hd / HG;
            const size_t len = h.list[g].size();
            if (t >= c.n) { /* empty in every share; the combine gives the empty state */
                for (int s = 0; s < n_split; s++) {
                    st_share.rows++;
                    if (!(m[s * rows + r] == -INFINITY && d[s * rows + r] == 0.0f)) st_share.bad++;
                }
                part_ref e{std::vector<float>((size_t)D, 0.0f), -INFINITY, 0.0f};
                compare(st_out, "combine (t >= n)", r, &fo[r * D], fm[r], fd[r], e, D, tl);
                continue;
            }
            const float *qrow = &h.q[r * D];
            for (int s = 0; s < n_split; s++) {
                const size_t i0 = (size_t)s * len / n_split, i1 = (size_t)(s + 1) * len / n_split;
                const part_ref ref = reference(c, h, qrow, t, hd, i0, i1);
                const int64_t rs = s * rows + r;
                compare(st_share, "share", rs, &o[rs * D], m[rs], d[rs], ref, D, tl);
            }
            compare(st_out, "combine", r, &fo[r * D], fm[r], fd[r], reference(c, h, qrow, t, hd, 0, len), D, tl);
        }
    char extra[64];
    snprintf(extra, sizeof extra, "n_split=%d shares", n_split);
    report("decode", c, extra, st_share);
    snprintf(extra, sizeof extra, "n_split=%d combine", n_split);
    report("decode", c, extra, st_out);
}

/* ---- prefill ---- */
static void test_prefill(const kv_case &c) {
    const int n_max = c.n + 3, H = c.H, D = c.D, HG = c.H / c.G;
    const host_kv h = build(c, n_max);
    dev_kv dk(h, c);
    const int64_t rows = (int64_t)n_max * H;
    dbuf<float> oo((size_t)(rows * D)), om((size_t)rows), od((size_t)rows);
    CUDA_OK(ck_attn_prefill(nullptr, dk.q.p, dk.step.p, dk.kv(c), dk.blocks(h), n_max, H, ck_part{oo.p, om.p, od.p}));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> o = oo.down(), m = om.down(), d = od.down();
    const tol tl{4e-3f, 4e-3f, 4e-3f, 2e-5f};
    stats st;
    std::vector<float> qb((size_t)D);
    for (int64_t t = 0; t < n_max; t++)
        for (int64_t hd = 0; hd < H; hd++) {
            const int64_t r = t * H + hd;
            if (t >= c.n) { /* rows past the chunk are not written: still NaN */
                st.rows++;
                if (!std::isnan(m[r]) || !std::isnan(d[r]) || !std::isnan(o[r * D])) st.bad++;
                continue;
            }
            for (int64_t j = 0; j < D; j++) qb[j] = mk_bf16_to_f32(mk_f32_to_bf16(h.q[r * D + j]));
            compare(st, "prefill", r, &o[r * D], m[r], d[r], reference(c, h, qb.data(), t, hd, 0, h.list[hd / HG].size()),
                    D, tl);
        }
    report("prefill", c, "", st);
}

/* ---- merge: ck_merge against mk_attn_merge, the empty cases included ---- */
static void test_merge() {
    const int64_t D = 32, rows = 7;
    rng r{99};
    std::vector<float> io((size_t)(rows * D)), im((size_t)rows), id((size_t)rows), fo(io.size()), fm(im.size()),
        fd(id.size());
    for (size_t i = 0; i < io.size(); i++) io[i] = 3.0f * r.uni(), fo[i] = 3.0f * r.uni();
    for (int64_t i = 0; i < rows; i++) im[i] = 2.0f * r.uni(), fm[i] = 2.0f * r.uni(), id[i] = 1.5f, fd[i] = 2.5f;
    auto empty = [&](std::vector<float> &o, std::vector<float> &m, std::vector<float> &d, int64_t row, float ov) {
        for (int64_t j = 0; j < D; j++) o[row * D + j] = ov;
        m[row] = -INFINITY, d[row] = 0.0f;
    };
    empty(io, im, id, 0, 0.0f), empty(fo, fm, fd, 0, NAN); /* both empty: stays empty, no NaN */
    empty(io, im, id, 1, 0.0f);                           /* into empty: takes from exactly */
    empty(fo, fm, fd, 2, NAN);                            /* from empty, its o garbage: into unchanged */
    im[3] = 1e4f, fm[3] = 0.0f;                           /* far apart: the small side underflows to 0 */
    im[4] = -5.0f, fm[4] = 1e4f;
    im[5] = 1e4f, fm[5] = 1e4f + 3.0f; /* large and close: no overflow */
    dbuf<float> dio(io.size()), dim(im.size()), did(id.size()), dfo(fo.size()), dfm(fm.size()), dfd(fd.size());
    dio.up(io), dim.up(im), did.up(id), dfo.up(fo), dfm.up(fm), dfd.up(fd);
    CUDA_OK(ck_merge(nullptr, ck_part{dio.p, dim.p, did.p}, ck_part{dfo.p, dfm.p, dfd.p}, rows, D));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> go = dio.down(), gm = dim.down(), gd = did.down();
    int64_t bad = 0;
    for (int64_t i = 0; i < rows; i++) {
        float m = im[i], l = id[i];
        std::vector<float> acc(&io[i * D], &io[i * D] + D);
        mk_attn_merge(acc.data(), &m, &l, &fo[i * D], fm[i], fd[i], D);
        auto close = [](float a, float b) { return a == b || fabsf(a - b) <= 1e-6f * fabsf(b); };
        bool ok = close(gm[i], m) && close(gd[i], l);
        for (int64_t j = 0; j < D; j++) ok = ok && close(go[i * D + j], acc[j]) && !std::isnan(go[i * D + j]);
        if (i == 0) ok = ok && gm[i] == -INFINITY && gd[i] == 0.0f;
        if (!ok) {
            fprintf(stderr, "  MISMATCH merge row %lld: m %g d %g o0 %g | ref m %g d %g o0 %g\n", (long long)i, gm[i],
                    gd[i], go[i * D], m, l, acc[0]);
            bad++;
        }
    }
    printf("merge   %lld rows (both empty, into empty, from empty with NaN o, m 1e4 apart both ways, large close): %s\n",
           (long long)rows, bad ? "FAIL" : "ok");
    if (bad) g_fail = 1;
}

/* ---- launcher argument checks ---- */
static void test_errors() {
    ck_part p{nullptr, nullptr, nullptr};
    ck_kv kv{nullptr, nullptr, nullptr, 16, 2, 48}; /* D = 48: no kernel for it */
    ck_blocks bl{nullptr, nullptr, 0};
    const int e1 = ck_attn_decode(nullptr, nullptr, nullptr, kv, bl, 1, 4, 2, p);
    const int e2 = ck_attn_prefill(nullptr, nullptr, nullptr, kv, bl, 4, 4, p);
    kv.D = 32;
    const int e3 = ck_attn_decode(nullptr, nullptr, nullptr, kv, bl, 1, 5, 2, p); /* H not a multiple of G */
    const int e4 = ck_attn_decode(nullptr, nullptr, nullptr, kv, bl, 1, 4, 0, p); /* no shares */
    const bool ok = e1 == cudaErrorInvalidValue && e2 == cudaErrorInvalidValue && e3 == cudaErrorInvalidValue &&
                    e4 == cudaErrorInvalidValue;
    cudaGetLastError();
    printf("errors  unsupported D, H %% G != 0, n_split 0 -> cudaErrorInvalidValue: %s\n", ok ? "ok" : "FAIL");
    if (!ok) g_fail = 1;
}

int main(void) {
    /* linked with libcudart instead of the shim (a device check), a machine without a GPU skips */
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("test_k_attn: no CUDA device: skipped\n");
        return 77;
    }
    /* name, H, G, D, B, kv_pos, n, pos_mul, pos_off, qmag, lists, seed, ns_step */
    const float big = 1e4f * 3.0f / sqrtf(32.0f); /* |q·k| ~ 1e4 with k uniform in [-1, 1) */
    const kv_case dec[] = {
        {"all", 4, 2, 32, 16, 70, 1, 1, 0, 1.0f, false, 1, 2},
        {"topk", 4, 2, 32, 16, 90, 2, 1, 0, 1.0f, true, 2, 1},
        {"all", 8, 4, 64, 32, 100, 3, 1, 0, 1.0f, false, 3, 2},
        {"topk", 8, 4, 64, 32, 150, 4, 1, 0, 1.0f, true, 4, 1},
        {"pos+1000", 4, 2, 32, 32, 45, 4, 1, 1000, 1.0f, true, 5, 2},
        {"large", 4, 2, 32, 16, 60, 2, 1, 0, big, false, 6, 2},
        /* the last block holds only keys 64..66, later than token 0 (63): with 5 shares its share's
         * only tile is visible to tokens 1..3 alone */
        {"tail", 4, 2, 32, 16, 63, 4, 1, 0, 1.0f, false, 7, 2},
        /* GLM-4's head size and 16 heads per group: 48 rows, two passes of the decode block */
        {"d128", 16, 1, 128, 32, 80, 3, 1, 0, 1.0f, true, 8, 2},
    };
    for (const kv_case &c : dec)
        for (int ns = 1; ns <= 5; ns += c.ns_step) test_decode(c, ns);
    const kv_case pre[] = {
        {"all", 4, 2, 32, 16, 37, 1, 1, 0, 1.0f, false, 11, 0},
        {"all", 4, 2, 32, 16, 37, 17, 1, 0, 1.0f, false, 12, 0},
        {"topk", 4, 2, 32, 32, 50, 40, 1, 0, 1.0f, true, 13, 0},
        {"all", 8, 4, 64, 32, 21, 40, 1, 0, 1.0f, false, 14, 0},
        {"topk", 8, 4, 64, 16, 33, 17, 1, 0, 1.0f, true, 15, 0},
        {"stretched", 4, 2, 32, 16, 20, 17, 2, 1000, 1.0f, false, 16, 0},
        {"large", 4, 2, 32, 32, 30, 40, 1, 0, big, false, 17, 0},
        {"d128", 16, 1, 128, 16, 45, 17, 1, 0, 1.0f, true, 18, 0}, /* a block = 4 tokens x 16 heads */
        {"d112", 4, 2, 112, 16, 29, 19, 1, 0, 1.0f, true, 19, 0},  /* GLM-4V's vision tower's head size */
    };
    for (const kv_case &c : pre) test_prefill(c);
    test_merge();
    test_errors();
    printf("%s\n", g_fail ? "test_k_attn: FAILED" : "test_k_attn: all ok");
    return g_fail;
}
