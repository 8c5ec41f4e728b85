/* test_k_topk.cc — the topk policy's device block choice (cuda/k_topk.cu), its own source run on the
 * CPU through the shim, against the host side of the same policy on the same keys:
 *   - summaries: ck_topk_summarize (after a chunk, from the step; one block after an upload) against
 *     the KV store's own (kvs_summary), bit for bit;
 *   - scores: ck_topk_score against kvs_summary_bound (kvstore/kvsummary.c), bit for bit, one query
 *     (the two-corner form) and a 3-token box, head_dim a multiple of 8 and not;
 *   - lists: ck_topk_select against the rule of docs/KVSTORE.md written out here independently
 *     (sinks, window and own blocks always; of the candidates the N highest CPU bounds, ties to the
 *     earlier block, by a full sort), on random keys and adversarial ones: every block alike (all
 *     scores tied), ties at the cut only, zero queries (every bound +0 or -0, which must tie), N at
 *     and beyond the candidate count, sinks reaching into the window, a context shorter than the
 *     window, and a long context (many radix passes over 2000 candidates).
 * Exit 1 on any mismatch, every comparison printed. */
#include "cuda/ck.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
#include "kernels/kernels.h"
#include "kvstore/kvstore.h"
}

namespace {

int g_fail = 0, g_checks = 0;

uint64_t g_rng = 0x2545f4914f6cdd1dull;
float frand(float lo, float hi) { /* xorshift64*: the same sequence on every machine */
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    const uint64_t r = g_rng * 0x2545f4914f6cdd1dull;
    return lo + (hi - lo) * (float)(r >> 40) / (float)(1 << 24);
}

void expect(bool ok, const char *what) {
    g_checks++;
    printf("%-100s %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) g_fail++;
}

enum Keys { RANDOM, ALIKE, CUT_TIES, ZERO_Q };

struct Case {
    const char *name;
    int64_t G, H, D, B;
    int64_t T;              /* tokens held after the chunk */
    int64_t n;              /* the chunk: positions T-n .. T-1 (queries and the last append) */
    int64_t topk, sinks, window;
    Keys keys;
};

void run(const Case &c) {
    const int64_t G = c.G, H = c.H, D = c.D, B = c.B, row = G * D, per = H / G, pos = c.T - c.n;
    const int64_t ctx = c.T + 3 * B, n_blocks = (ctx + B - 1) / B; /* room past the end, as a session's pool */
    char w[256];
    /* keys: random, or per block a pattern shared with other blocks (identical summaries) */
    std::vector<float> k((size_t)(c.T * row)), v((size_t)(c.T * row), 0.5f);
    std::vector<float> pattern((size_t)(8 * B * row));
    for (auto &x : pattern) x = frand(-2.0f, 2.0f);
    for (int64_t p = 0; p < c.T; p++)
        for (int64_t i = 0; i < row; i++) {
            const int64_t b = p / B, slot = p % B;
            const int64_t which = c.keys == ALIKE ? 0 : c.keys == CUT_TIES ? b % 3 : -1;
            k[(size_t)(p * row + i)] = which < 0 ? frand(-2.0f, 2.0f) : pattern[(size_t)((which * B + slot) * row + i)];
        }
    kvs_params kp = {};
    kp.n_layers = 1, kp.n_kv_groups = G, kp.head_dim = D, kp.ctx = ctx, kp.block_tokens = B;
    kp.policy = KVS_POLICY_TOPK, kp.sinks = c.sinks > 0 ? c.sinks : 1;
    kvs_cache *kv = nullptr;
    if (kvs_create(&kp, &kv) || kvs_write(kv, 0, 0, c.T, k.data(), v.data(), row)) {
        expect(false, "kvs_create / kvs_write");
        return;
    }
    /* the pool, in ck_kv's page layout, from the store's own bf16 rows (page b = block b) */
    std::vector<uint16_t> pages((size_t)(n_blocks * G * 2 * B * D), 0xffff), blk((size_t)(2 * B * row));
    std::vector<int32_t> page_of((size_t)n_blocks), slot_pos((size_t)(n_blocks * B));
    for (int64_t b = 0; b < n_blocks; b++) page_of[(size_t)b] = (int32_t)b;
    const int64_t nb = (c.T + B - 1) / B;
    for (int64_t b = 0; b < nb; b++) {
        int64_t rows = 0;
        kvs_read_block(kv, 0, b, blk.data(), &rows);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t g = 0; g < G; g++)
                memcpy(&pages[(size_t)(((b * G + g) * 2 * B + r) * D)], &blk[(size_t)(r * row + g * D)], (size_t)D * 2);
    }
    const ck_kv ckv = {pages.data(), page_of.data(), slot_pos.data(), B, G, D};
    ck_step st = {};
    st.n = c.n, st.pos = pos, st.kv_pos = pos, st.kv_len = c.T, st.append = 1;

    /* summaries: the blocks before the chunk's one at a time (an upload), then the chunk's from the step */
    std::vector<uint16_t> sums((size_t)(n_blocks * 2 * row), 0xffff);
    const int64_t first = pos / B;
    int rc = 0;
    for (int64_t b = 0; b < first && !rc; b++) rc = ck_topk_summarize(nullptr, ckv, sums.data(), nullptr, 0, b, B);
    rc = rc ? rc : ck_topk_summarize(nullptr, ckv, sums.data(), &st, c.n, 0, 0);
    size_t bad = 0;
    for (int64_t b = 0; b < nb; b++)
        if (memcmp(&sums[(size_t)(b * 2 * row)], kvs_summary(kv, 0, b), (size_t)(2 * row) * 2)) bad++;
    bool untouched = true; /* nothing written past the last block */
    for (size_t i = (size_t)(nb * 2 * row); i < sums.size(); i++) untouched &= sums[i] == 0xffff;
    snprintf(w, sizeof w, "%s: summaries of %" PRId64 " blocks == kvs_summary (rc %d, %zu differ)", c.name, nb, rc, bad);
    expect(!rc && bad == 0 && untouched, w);

    /* the rule, written out from docs/KVSTORE.md */
    const int64_t sink_blocks = (c.sinks + B - 1) / B;
    const int64_t m0 = std::min(sink_blocks, nb);
    const int64_t m1 = std::min(std::max(pos - c.window > 0 ? (pos - c.window) / B : 0, m0), nb), nm = m1 - m0;
    const ck_topk rule = {c.topk, sink_blocks, c.window};

    std::vector<float> q((size_t)(c.n * H * D));
    for (auto &x : q) x = c.keys == ZERO_Q ? ((&x - q.data()) % 2 ? -0.0f : 0.0f) : frand(-1.5f, 1.5f);
    std::vector<float> scores((size_t)(G * n_blocks), NAN);
    rc = ck_topk_score(nullptr, q.data(), &st, sums.data(), rule, B, n_blocks, H, G, D, scores.data());
    /* CPU scores: kvs_summary_bound with the box core/attn.c makes (one token: its queries) */
    std::vector<float> ref((size_t)(G * n_blocks), NAN), lo((size_t)(per * D)), hi((size_t)(per * D));
    bad = 0;
    for (int64_t g = 0; g < G; g++) {
        const float *ql = q.data() + g * per * D, *qh = ql;
        if (c.n > 1) {
            for (int64_t i = 0; i < per * D; i++) {
                float l = ql[i], u = ql[i];
                for (int64_t t = 1; t < c.n; t++) {
                    const float x = ql[t * H * D + i];
                    l = x < l ? x : l;
                    u = x > u ? x : u;
                }
                lo[(size_t)i] = l, hi[(size_t)i] = u;
            }
            ql = lo.data(), qh = hi.data();
        }
        if (nm > 0) kvs_summary_bound(kv, 0, g, m0, nm, ql, qh, per, &ref[(size_t)(g * n_blocks + m0)]);
        for (int64_t b = 0; b < n_blocks; b++) {
            const float got = scores[(size_t)(g * n_blocks + b)], want = ref[(size_t)(g * n_blocks + b)];
            const bool cand = b >= m0 && b < m1 && nm > c.topk;
            if (cand ? memcmp(&got, &want, 4) != 0 : !std::isnan(got)) { /* elsewhere nothing is written */
                if (bad++ < 4) printf("    g %" PRId64 " block %" PRId64 ": got %a want %a\n", g, b, got, want);
            }
        }
    }
    snprintf(w, sizeof w, "%s: scores of %" PRId64 " candidates x %" PRId64 " groups == kvs_summary_bound (rc %d, %zu "
             "differ)", c.name, nm, G, rc, bad);
    expect(!rc && bad == 0, w);

    /* lists */
    const int64_t cap = n_blocks;
    std::vector<int32_t> ids((size_t)(G * cap), -7), count((size_t)G, -7);
    rc = ck_topk_select(nullptr, &st, scores.data(), rule, B, n_blocks, G, ids.data(), count.data(), cap);
    bad = 0;
    for (int64_t g = 0; g < G; g++) {
        std::vector<int32_t> want;
        if (nm > c.topk) {
            const float *sc = &ref[(size_t)(g * n_blocks + m0)];
            std::vector<int64_t> order((size_t)nm);
            for (int64_t i = 0; i < nm; i++) order[(size_t)i] = i;
            std::sort(order.begin(), order.end(),
                      [&](int64_t a, int64_t b) { return sc[a] > sc[b] || (sc[a] == sc[b] && a < b); });
            std::vector<int32_t> chosen;
            for (int64_t i = 0; i < c.topk; i++) chosen.push_back((int32_t)(m0 + order[(size_t)i]));
            std::sort(chosen.begin(), chosen.end());
            for (int64_t b = 0; b < m0; b++) want.push_back((int32_t)b);
            want.insert(want.end(), chosen.begin(), chosen.end());
            for (int64_t b = m1; b < nb; b++) want.push_back((int32_t)b);
        }
        const int32_t want_count = nm > c.topk ? (int32_t)want.size() : -1;
        bool ok = count[(size_t)g] == want_count;
        for (size_t i = 0; ok && i < want.size(); i++) ok = ids[(size_t)(g * cap) + i] == want[i];
        if (!ok && bad++ < 2) {
            printf("    group %" PRId64 ": count %d (want %d); got", g, count[(size_t)g], want_count);
            for (int64_t i = 0; i < std::min<int64_t>(count[(size_t)g], 24); i++) printf(" %d", ids[(size_t)(g * cap + i)]);
            printf("\n    want");
            for (size_t i = 0; i < std::min<size_t>(want.size(), 24); i++) printf(" %d", want[i]);
            printf("\n");
        }
    }
    snprintf(w, sizeof w, "%s: lists (%" PRId64 " blocks, sinks [0,%" PRId64 "), candidates [%" PRId64 ",%" PRId64
             "), N %" PRId64 ") == the CPU rule (rc %d)", c.name, nb, m0, m0, m1, c.topk, rc);
    expect(!rc && bad == 0, w);
    kvs_free(kv);
}

} // namespace

int main() {
    /* name G H D B T n topk sinks window keys */
    run({"random G2 D16", 2, 8, 16, 4, 301, 1, 7, 4, 16, RANDOM});
    run({"random G4 D12 (tail)", 4, 8, 12, 4, 203, 1, 5, 4, 16, RANDOM});
    run({"box of 3 tokens", 2, 4, 16, 4, 157, 3, 6, 4, 8, RANDOM});
    run({"chunk across a block edge", 2, 4, 16, 4, 162, 4, 6, 4, 8, RANDOM});
    run({"every block alike (all tied)", 2, 4, 16, 4, 240, 1, 9, 4, 16, ALIKE});
    run({"ties at the cut", 2, 4, 8, 4, 240, 1, 10, 4, 16, CUT_TIES});
    run({"zero queries (+0/-0 ties)", 2, 4, 16, 4, 200, 1, 8, 4, 16, ZERO_Q});
    run({"N == candidates", 2, 4, 16, 4, 64, 1, 12, 4, 8, RANDOM}); /* candidates [1, 13) */
    run({"N > candidates", 2, 4, 16, 4, 64, 1, 40, 4, 8, RANDOM});
    run({"N = 1", 2, 4, 16, 4, 120, 1, 1, 4, 8, RANDOM});
    run({"sinks reach into the window", 2, 4, 16, 4, 100, 1, 3, 80, 16, RANDOM});
    run({"sinks cover everything", 1, 2, 16, 4, 30, 1, 2, 64, 8, RANDOM});
    run({"context shorter than the window", 2, 4, 16, 4, 40, 1, 2, 4, 64, RANDOM});
    run({"2000 candidates, N 64", 2, 4, 8, 2, 4011, 1, 64, 4, 8, RANDOM});
    run({"2000 candidates alike, N 64", 2, 4, 8, 2, 4011, 1, 64, 4, 8, CUT_TIES});
    printf("test_k_topk: %d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
