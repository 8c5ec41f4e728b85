/* attn.c — attention over the paged KV store for one layer (the policy-dependent part of the
 * forward pass; the contract is in core/session.h). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"

struct attn_state {
    int policy;
};

int attn_create(mtok_session *s, const mtok_session_params *p) {
    s->attn = calloc(1, sizeof *s->attn);
    if (!s->attn) return mtok_err(MTOK_ERESOURCE, "out of memory creating attention state");
    s->attn->policy = p ? p->kv_policy : 0;
    return 0;
}

void attn_free(mtok_session *s) {
    free(s->attn);
    s->attn = NULL;
}

int attn_plan(mtok_session *s, int64_t layer, int64_t kv_end, int64_t q_pos0) {
    return kvs_plan(s->kv, layer, kv_end, q_pos0);
}

/* ---- attention: o[t][h] = softmax_s≤pos_t(q·k_s/sqrt(D)) · v_s, query head h reads group h/(H/G) ----
 * The KV store hands out the layer's blocks in order, a segment of resident blocks at a time (cold
 * ones staged from disk); each (t, h) keeps its online-softmax state (m, l, acc) across segments, so
 * the arithmetic is the same block-by-block sequence whether a block was hot or read back. */
#define SEG_BLOCKS 64
#define ATT_TILE 16 /* query tokens per attention task */
int attn_layer(mtok_session *s, int64_t layer, int64_t pos, int64_t n) {
    const int64_t H = s->H, D = s->D, G = s->G, per_group = H / G;
    const int64_t row = G * D;
    const float scale = (float)(1.0 / sqrt((double)D));
    for (int64_t i = 0; i < n * H; i++) s->ms[i] = -INFINITY, s->ls[i] = 0.0f;
    memset(s->att, 0, (size_t)(n * H * D) * sizeof *s->att);
    kvs_block seg[SEG_BLOCKS];
    for (;;) {
        int nseg = 0;
        int rc = kvs_stream_next(s->kv, layer, seg, SEG_BLOCKS, &nseg);
        if (rc) return rc;
        if (!nseg) break;
        /* small segments (decode against a few blocks) run on this thread: waking the team for them
         * costs more than the work, and idle spinning threads slow the I/O that feeds the next one */
        const int64_t work = n * H * (seg[nseg - 1].pos0 + seg[nseg - 1].n - seg[0].pos0) * D;
        /* one task per (KV group, tile of ATT_TILE query tokens): the task's per_group x tile query
         * rows meet each block once through mk_attn_block, so a block is widened once per group and
         * tile instead of once per head and token, and Q·Kᵀ, P·V run as register-blocked tiles */
        const int64_t n_tiles = (n + ATT_TILE - 1) / ATT_TILE;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(s->threads) if (work > (1 << 18))
        for (int64_t g = 0; g < G; g++) {
            for (int64_t tt = 0; tt < n_tiles; tt++) {
                const int64_t t0 = tt * ATT_TILE, nt = n - t0 < ATT_TILE ? n - t0 : ATT_TILE;
                const int64_t r0 = t0 * H + g * per_group; /* the task's first (token, head) row */
                for (int j = 0; j < nseg; j++) {
                    const kvs_block *blk = &seg[j];
                    if (blk->pos0 > pos + t0 + nt - 1) break; /* past the tile's last position */
                    const mk_attn_params ap = {
                        .q = s->q + (size_t)r0 * D, .q_ts = H * D, .acc = s->att + (size_t)r0 * D, .acc_ts = H * D,
                        .m = s->ms + r0, .l = s->ls + r0, .ml_ts = H, .n_tok = nt, .n_head = per_group, .D = D,
                        .k = blk->k + g * D, .v = blk->v + g * D, .kv_stride = row, .n = blk->n,
                        .q_pos0 = pos + t0, .k_pos0 = blk->pos0, .causal = 1, .scale = scale};
                    mk_attn_block(&ap);
                }
            }
        }
    }
    return 0;
}

void attn_normalize(mtok_session *s, int64_t n) {
    const int64_t H = s->H, D = s->D;
    for (int64_t i = 0; i < n * H; i++) {
        const float inv = s->ls[i] > 0 ? 1.0f / s->ls[i] : 0.0f;
        for (int64_t d = 0; d < D; d++) s->att[i * D + d] *= inv;
    }
}

