/* kvsummary.c — block key summaries (Quest-style per-channel bounds) and the q·k upper bound that
 * the topk policy ranks blocks by. Layout and invariants: kvsummary.h; use: docs/KVSTORE.md.
 *
 * Why the bound holds: for a query q and any key k of a block with kmin_d <= k_d <= kmax_d,
 * q_d k_d <= max(q_d kmin_d, q_d kmax_d), so q·k <= Σ_d max(q_d kmin_d, q_d kmax_d). For every query
 * of a box qlo_d <= q_d <= qhi_d (a prefill chunk) the product q_d k_d is bilinear on the box, so its
 * maximum is at one of the four corners. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvsummary.h"
#include "../base/mtok_base.h"

struct kvs_sumtab {
    int64_t n_layers, n_blocks, row;
    uint16_t *v; /* [n_layers][n_blocks][2][row] bf16 */
};

static inline float bf(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

int kvsum_create(int64_t n_layers, int64_t n_blocks, int64_t row, kvs_sumtab **out) {
    kvs_sumtab *t = calloc(1, sizeof *t);
    if (t) t->v = calloc((size_t)(n_layers * n_blocks * 2 * row), sizeof *t->v);
    if (!t || !t->v) {
        free(t);
        *out = NULL;
        return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory for the block key summaries (%lld layers x %lld "
                        "blocks x %lld channels x 2 bounds)", (long long)n_layers, (long long)n_blocks, (long long)row);
    }
    t->n_layers = n_layers, t->n_blocks = n_blocks, t->row = row;
    *out = t;
    return 0;
}

void kvsum_free(kvs_sumtab *t) {
    if (!t) return;
    free(t->v);
    free(t);
}

uint16_t *kvsum_at(const kvs_sumtab *t, int64_t layer, int64_t b) {
    return t->v + (size_t)((layer * t->n_blocks + b) * 2 * t->row);
}

void kvsum_row(kvs_sumtab *t, int64_t layer, int64_t b, int64_t r, const uint16_t *k) {
    uint16_t *lo = kvsum_at(t, layer, b), *hi = lo + t->row;
    if (r == 0) {
        memcpy(lo, k, (size_t)t->row * sizeof *k);
        memcpy(hi, k, (size_t)t->row * sizeof *k);
        return;
    }
    for (int64_t i = 0; i < t->row; i++) {
        const float x = bf(k[i]);
        if (x < bf(lo[i])) lo[i] = k[i];
        if (x > bf(hi[i])) hi[i] = k[i];
    }
}

void kvsum_rebuild(kvs_sumtab *t, int64_t layer, int64_t b, const uint16_t *k, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) kvsum_row(t, layer, b, r, k + (size_t)(r * t->row));
}

/* Compiled for AVX2 and for the baseline, chosen at load time (GCC function multi-versioning); the
 * eight partial sums per head keep the reduction vectorisable without reassociating floats. */
#if defined(__clang__) && __clang_major__ < 15
/* clang 14 emits only the clones' names, not the dispatching symbol, so other files cannot link to
 * kvsum_bound (the fuzz build, tests/fuzz, is compiled with clang): the baseline form there */
#define KVS_CLONES
#else
#define KVS_CLONES __attribute__((target_clones("avx2", "default")))
#endif
KVS_CLONES
void kvsum_bound(const kvs_sumtab *t, int64_t layer, int64_t g, int64_t D, int64_t b0, int64_t nb,
                 const float *qlo, const float *qhi, int64_t nh, float *out) {
    const int one = qlo == qhi; /* one query per head: the two-corner form */
    for (int64_t i = 0; i < nb; i++) {
        const uint16_t *lo = kvsum_at(t, layer, b0 + i) + g * D, *hi = lo + t->row;
        float best = -INFINITY;
        for (int64_t h = 0; h < nh; h++) {
            const float *ql = qlo + h * D, *qh = qhi + h * D;
            float acc[8] = {0};
            int64_t d = 0;
            if (one) {
                for (; d + 8 <= D; d += 8)
                    for (int j = 0; j < 8; j++) {
                        const float a = qh[d + j] * bf(hi[d + j]), c = qh[d + j] * bf(lo[d + j]);
                        acc[j] += a > c ? a : c;
                    }
            } else {
                for (; d + 8 <= D; d += 8)
                    for (int j = 0; j < 8; j++) {
                        const float kl = bf(lo[d + j]), kh = bf(hi[d + j]);
                        const float a = qh[d + j] * kh, c = qh[d + j] * kl, e = ql[d + j] * kh, f = ql[d + j] * kl;
                        const float x = a > c ? a : c, y = e > f ? e : f;
                        acc[j] += x > y ? x : y;
                    }
            }
            float s = 0;
            for (; d < D; d++) { /* head_dim not a multiple of 8 */
                const float kl = bf(lo[d]), kh = bf(hi[d]);
                const float a = qh[d] * kh, c = qh[d] * kl, e = ql[d] * kh, f = ql[d] * kl;
                const float x = a > c ? a : c, y = e > f ? e : f;
                s += x > y ? x : y;
            }
            for (int j = 0; j < 8; j++) s += acc[j];
            if (s > best) best = s;
        }
        out[i] = best;
    }
}
