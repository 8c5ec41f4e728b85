/* attn.c — attention over the paged KV store for one layer (the policy-dependent part of the
 * forward pass; the contract is in core/session.h, the policies in docs/KVSTORE.md).
 *
 * exact / window: the KV store streams the blocks that attn_plan queued (window: sinks + recent).
 * topk: per layer and KV group, every block between the sinks and the recent window is ranked by an
 * upper bound of q·k over its key summary (kvs_summary_bound); the N best, the sinks, the window
 * and the chunk's own blocks are attended exactly. The next layer's queries are unknown when
 * attn_plan(l+1) runs, so topk plans in attn_layer: it scores, selects, queues the union of the
 * groups' chosen blocks in block order (their cold reads all go out at once, up to the staging
 * ring) and streams them, computing each segment while the reads of the following ones are in
 * flight. Streaming in block order keeps the arithmetic that of exact attention restricted to the
 * chosen blocks, so a selection covering every block equals exact bit for bit, hot or spilled.
 *
 * The arithmetic is the backend's (core/backend.h: attn_begin, attn_blocks, attn_end): this file
 * decides which blocks, the backend computes over them wherever they live. The topk scores and the
 * audit read the queries and partials on the host (MTOK_MEM_HOST views), except where the backend
 * holds the layer's keys and chooses the blocks itself by the same rule (kv_holds under topk: the
 * CUDA backend's device choice, docs/GPU.md), which leaves nothing for the host to read. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"


struct attn_state {
    int policy;
    int64_t topk, window, sink_blocks, B, n_blocks;
    double audit;     /* share of steps audited against exact attention */
    uint64_t step;    /* attention steps (forward chunks) begun */
    int audit_now;    /* the current step is audited */
    /* topk scratch */
    float *qlo, *qhi; /* [H][D]: per head, the chunk's query box */
    float *score;     /* [n_blocks] */
    int64_t *heap;    /* [topk] block ids */
    uint8_t *sel;     /* [G][n_blocks]: block attended by group g */
    int64_t *ids;     /* [n_blocks]: the union, ascending */
    mtok_partials exact; /* audit: exact attention's partials [chunk*H] */
    /* a device backend's queries and partials, read to the host for the selection and the audit */
    float *qhost;     /* [chunk][H*D] */
    float *mdhost;    /* [4][chunk*H]: m, d of the selected and of the exact partials */
    /* accounting (mtok_kv_stats) */
    uint64_t bytes_attended, bytes_exact, audit_steps, audit_rows, audit_bytes_read;
    double audit_min, audit_sum;
    uint8_t *held;    /* [n_layers]: the backend holds the layer's KV up to the queries (kv_holds): no stream */
};

int attn_create(mtok_session *s, const mtok_session_params *p) {
    attn_state *A = s->attn = calloc(1, sizeof *s->attn);
    if (!A) return mtok_err(MTOK_ERESOURCE, "out of memory creating attention state");
    const kvs_params *kp = kvs_get_params(s->kv);
    A->policy = p ? p->kv_policy : 0;
    A->B = kvs_block_tokens(s->kv);
    A->n_blocks = (kp->ctx + A->B - 1) / A->B;
    A->sink_blocks = (kp->sinks + A->B - 1) / A->B;
    A->audit_min = 1.0;
    if (!(A->held = calloc((size_t)s->c->n_layers, 1))) return mtok_err(MTOK_ERESOURCE, "out of memory creating attention state");
    if (A->policy != KVS_POLICY_TOPK) return 0;
    if (p->kv_topk < 0 || p->kv_window < 0 || !(p->kv_audit >= 0 && p->kv_audit <= 1))
        return mtok_err(MTOK_EUSAGE, "topk policy: --kv-topk %lld, --kv-window %lld and --kv-audit %g must be a "
                        "positive block count, a token count >= 0 and a rate in [0, 1]", (long long)p->kv_topk,
                        (long long)p->kv_window, p->kv_audit);
    A->topk = p->kv_topk > 0 ? p->kv_topk : ATTN_TOPK_DEFAULT;
    A->window = p->kv_window > 0 ? p->kv_window : ATTN_TOPK_WINDOW_DEFAULT;
    A->audit = p->kv_audit;
    const size_t nb = (size_t)A->n_blocks, hd = (size_t)(s->H * s->D), C = (size_t)s->chunk;
    A->qlo = malloc(hd * sizeof *A->qlo);
    A->qhi = malloc(hd * sizeof *A->qhi);
    A->score = malloc(nb * sizeof *A->score);
    A->heap = malloc((size_t)A->topk * sizeof *A->heap);
    A->sel = malloc((size_t)s->G * nb);
    A->ids = malloc(nb * sizeof *A->ids);
    if (s->be->tensor(s->bs, MTOK_T_Q).mem != MTOK_MEM_HOST) {
        A->qhost = malloc(C * hd * sizeof *A->qhost);
        A->mdhost = malloc(4 * C * (size_t)s->H * sizeof *A->mdhost);
    }
    if (!(A->qlo && A->qhi && A->score && A->heap && A->sel && A->ids) ||
        (s->be->tensor(s->bs, MTOK_T_Q).mem != MTOK_MEM_HOST && !(A->qhost && A->mdhost)))
        return mtok_err(MTOK_ERESOURCE, "out of memory for the topk selection buffers (%lld blocks)",
                        (long long)A->n_blocks);
    return A->audit > 0 ? s->be->partials_create(s->bs, (int64_t)C * s->H, &A->exact) : 0;
}

void attn_free(mtok_session *s) {
    attn_state *A = s->attn;
    if (!A) return;
    free(A->qlo), free(A->qhi), free(A->score), free(A->heap), free(A->sel), free(A->ids);
    free(A->qhost), free(A->mdhost), free(A->held);
    if (A->exact.o) s->be->partials_free(s->bs, &A->exact);
    free(A);
    s->attn = NULL;
}

int attn_plan(mtok_session *s, int64_t layer, int64_t kv_end, int64_t q_pos0) {
    /* topk plans in attn_layer, once the layer's queries are known; a backend holding the layer's
     * keys before the queries (the chunk's own it appends itself) needs nothing from the store */
    if (s->attn->policy == KVS_POLICY_TOPK) return 0;
    if ((s->attn->held[layer] = (uint8_t)s->be->kv_holds(s->bs, layer, q_pos0))) return 0;
    return kvs_plan(s->kv, layer, kv_end, q_pos0);
}

/* ---- attention over the planned blocks of a layer ----
 * The KV store hands out the planned blocks in order, a segment of resident blocks at a time (cold
 * ones staged from disk); the backend keeps each (token, head) row's online-softmax partials across
 * segments, so the arithmetic is the same block-by-block sequence whether a block was hot or read
 * back. sel (topk; NULL: every planned block) says which blocks each group attends; *attended (if
 * given) counts the K and V bytes the kernels read. */
#define SEG_BLOCKS 64
static int attend(mtok_session *s, int64_t layer, int64_t pos, int64_t n, const uint8_t *sel, mtok_partials *p,
                  uint64_t *attended) {
    attn_state *A = s->attn;
    const mtok_backend_ops *be = s->be;
    const int64_t D = s->D, G = s->G, B = A->B;
    const mtok_attn_job job = {.layer = layer, .q_pos = pos, .n = n, .block_tokens = B, .sel = sel,
                               .sel_stride = A->n_blocks};
    int rc = be->attn_begin(s->bs, &job, p);
    if (!sel && A->held[layer]) { /* the backend's own copy (attn_plan): nothing to stream */
        if (attended) *attended += (uint64_t)((pos + n) * G * D * 4);
        return rc ? rc : be->attn_end(s->bs, &job, p);
    }
    kvs_block seg[SEG_BLOCKS];
    while (!rc) {
        int nseg = 0;
        if ((rc = kvs_stream_next(s->kv, layer, seg, SEG_BLOCKS, &nseg)) || !nseg) break;
        for (int j = 0; j < nseg && attended; j++) /* bf16 K and V rows, per group attending */
            for (int64_t g = 0; g < G; g++)
                if (!sel || sel[g * A->n_blocks + seg[j].pos0 / B]) *attended += (uint64_t)(seg[j].n * D * 4);
        rc = be->attn_blocks(s->bs, &job, p, seg, nseg);
    }
    return rc ? rc : be->attn_end(s->bs, &job, p);
}

/* ---- topk selection ---- */
/* a ranks above b: higher bound, then the earlier block (a total order: runs are reproducible) */
static int above(const float *sc, int64_t a, int64_t b) { return sc[a] > sc[b] || (sc[a] == sc[b] && a < b); }

/* Marks in sel the k best of the nm candidate blocks m0.. (scores sc[i] for block m0 + i), through a
 * heap of the k best so far with the weakest on top: O(nm log k). */
static void select_best(attn_state *A, const float *sc, int64_t m0, int64_t nm, int64_t k, uint8_t *sel) {
    int64_t *hp = A->heap, n = 0;
    for (int64_t i = 0; i < nm; i++) {
        if (n == k && !above(sc, i, hp[0])) continue;
        int64_t at;
        if (n < k) { /* sift up */
            at = n++;
            while (at > 0 && above(sc, hp[(at - 1) / 2], i)) hp[at] = hp[(at - 1) / 2], at = (at - 1) / 2;
        } else { /* replace the weakest, sift down */
            at = 0;
            for (;;) {
                int64_t c = 2 * at + 1;
                if (c >= n) break;
                if (c + 1 < n && above(sc, hp[c], hp[c + 1])) c++;
                if (!above(sc, i, hp[c])) break;
                hp[at] = hp[c], at = c;
            }
        }
        hp[at] = i;
    }
    for (int64_t j = 0; j < n; j++) sel[m0 + hp[j]] = 1;
}

/* The query box of group g's heads over the chunk: per head and channel, min and max over tokens. */
static void query_box(mtok_session *s, const float *q, int64_t g, int64_t n, float *lo, float *hi) {
    const int64_t H = s->H, D = s->D, per = H / s->G;
    for (int64_t h = 0; h < per; h++) {
        const float *q0 = q + (g * per + h) * D;
        float *l = lo + h * D, *u = hi + h * D;
        memcpy(l, q0, (size_t)D * sizeof *l);
        memcpy(u, q0, (size_t)D * sizeof *u);
        for (int64_t t = 1; t < n; t++)
            for (int64_t d = 0; d < D; d++) {
                const float x = q0[t * H * D + d];
                l[d] = x < l[d] ? x : l[d];
                u[d] = x > u[d] ? x : u[d];
            }
    }
}

/* The blocks of queries pos..pos+n-1: nb hold keys; fixed are the sinks [0, m0), then from m1 on the
 * window and the chunk's own blocks; the candidates lie between. */
static void topk_range(const attn_state *A, int64_t pos, int64_t n, int64_t *nb, int64_t *m0, int64_t *m1) {
    const int64_t B = A->B;
    *nb = (pos + n + B - 1) / B;
    *m0 = A->sink_blocks < *nb ? A->sink_blocks : *nb;
    *m1 = pos - A->window > 0 ? (pos - A->window) / B : 0;
    *m1 = *m1 < *m0 ? *m0 : *m1 > *nb ? *nb : *m1;
}

/* Chooses, per group, the blocks layer `layer` attends for queries pos..pos+n-1 (into A->sel) and
 * returns their union in block order (A->ids, *n_ids). */
static int topk_select(mtok_session *s, int64_t layer, int64_t pos, int64_t n, int64_t *n_ids) {
    attn_state *A = s->attn;
    const int64_t G = s->G, D = s->D, per = s->H / G, nbm = A->n_blocks;
    int64_t nb, m0, m1;
    topk_range(A, pos, n, &nb, &m0, &m1);
    const int64_t nm = m1 - m0;
    const mtok_tview qv = s->be->tensor(s->bs, MTOK_T_Q);
    const float *q = qv.data; /* host on the CPU backend; a device backend's are read over */
    if (qv.mem != MTOK_MEM_HOST) {
        int rc = s->be->read(s->bs, A->qhost, qv.data, (size_t)(n * s->H * D) * sizeof *A->qhost);
        if (rc) return rc;
        q = A->qhost;
    }
    for (int64_t g = 0; g < G; g++) {
        uint8_t *sg = A->sel + g * nbm;
        memset(sg, 0, (size_t)nb);
        memset(sg, 1, (size_t)m0);
        memset(sg + m1, 1, (size_t)(nb - m1));
        if (nm <= A->topk) { /* every candidate fits */
            memset(sg + m0, 1, (size_t)nm);
            continue;
        }
        const float *qlo = q + g * per * D, *qhi = qlo; /* one token: its own queries */
        if (n > 1) {
            query_box(s, q, g, n, A->qlo, A->qhi);
            qlo = A->qlo, qhi = A->qhi;
        }
        /* the bound costs O(candidates x heads x D): split it over the team when that is large */
        const int64_t piece = 512, np = (nm + piece - 1) / piece;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s->threads) if (nm * per * D > (1 << 20))
        for (int64_t i = 0; i < np; i++) {
            const int64_t b0 = m0 + i * piece, cnt = nm - i * piece < piece ? nm - i * piece : piece;
            kvs_summary_bound(s->kv, layer, g, b0, cnt, qlo, qhi, per, A->score + (b0 - m0));
        }
        select_best(A, A->score, m0, nm, A->topk, sg);
    }
    int64_t k = 0;
    for (int64_t b = 0; b < nb; b++) {
        int any = 0;
        for (int64_t g = 0; g < G && !any; g++) any = A->sel[g * nbm + b];
        if (any) A->ids[k++] = b;
    }
    *n_ids = k;
    return 0;
}

/* The backend holds the layer's keys up to the chunk's end and their summaries, and chooses the
 * blocks itself by the rule above (a device backend: kernels/mtok_math.h mm_topk_range and
 * mm_topk_bound, the same ranges and the same bound; docs/GPU.md): nothing is read back or streamed.
 * The bytes its attention reads follow from the rule: every row up to the chunk's end but those of
 * the candidates left out, which are all whole blocks (the last block is never a candidate). */
static int topk_on_backend(mtok_session *s, int64_t layer, int64_t pos, int64_t n) {
    attn_state *A = s->attn;
    int64_t nb, m0, m1;
    topk_range(A, pos, n, &nb, &m0, &m1);
    const int64_t out = m1 - m0 > A->topk ? m1 - m0 - A->topk : 0;
    A->bytes_attended += (uint64_t)((pos + n - out * A->B) * s->G * s->D * 4);
    A->held[layer] = 1; /* attend: begin and end, nothing streamed, no selection passed */
    const int rc = attend(s, layer, pos, n, NULL, s->part, NULL);
    A->held[layer] = 0;
    return rc;
}

/* Audit: exact attention over every block for the same queries; per (query, head) the share of the
 * exact softmax mass the chosen blocks hold, l_sel e^(m_sel - m) / l. */
static int audit_layer(mtok_session *s, int64_t layer, int64_t pos, int64_t n) {
    attn_state *A = s->attn;
    kvs_stats st0, st1;
    kvs_get_stats(s->kv, &st0);
    int rc = kvs_plan(s->kv, layer, pos + n, pos);
    if (!rc) rc = attend(s, layer, pos, n, NULL, &A->exact, NULL);
    kvs_get_stats(s->kv, &st1);
    A->audit_bytes_read += st1.bytes_read - st0.bytes_read;
    if (rc) return rc;
    const int64_t rows = n * s->H;
    const float *sm = s->part->m, *sd = s->part->d, *em = A->exact.m, *ed = A->exact.d;
    if (s->part->mem != MTOK_MEM_HOST) { /* a device backend's partials: their m and d to the host */
        float *h = A->mdhost;
        const size_t bytes = (size_t)rows * sizeof *h;
        if ((rc = s->be->read(s->bs, h, sm, bytes)) || (rc = s->be->read(s->bs, h + rows, sd, bytes)) ||
            (rc = s->be->read(s->bs, h + 2 * rows, em, bytes)) || (rc = s->be->read(s->bs, h + 3 * rows, ed, bytes)))
            return rc;
        sm = h, sd = h + rows, em = h + 2 * rows, ed = h + 3 * rows;
    }
    for (int64_t i = 0; i < rows; i++) {
        double share = ed[i] > 0 ? (double)sd[i] * exp((double)sm[i] - (double)em[i]) / ed[i] : 1.0;
        share = share > 1.0 ? 1.0 : share; /* rounding */
        A->audit_min = share < A->audit_min ? share : A->audit_min;
        A->audit_sum += share;
        A->audit_rows++;
    }
    return 0;
}

/* Deterministic sampling of audited steps: a hash of the step index against the rate. */
static int audit_pick(uint64_t step, double rate) {
    uint64_t z = step + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53 < rate;
}

int attn_layer(mtok_session *s, int64_t layer, int64_t pos, int64_t n) {
    attn_state *A = s->attn;
    if (layer == 0) {
        A->step++;
        A->audit_now = A->audit > 0 && audit_pick(A->step, A->audit);
        A->audit_steps += (uint64_t)A->audit_now;
    }
    A->bytes_exact += (uint64_t)((pos + n) * s->G * s->D * 4);
    if (A->policy != KVS_POLICY_TOPK) return attend(s, layer, pos, n, NULL, s->part, &A->bytes_attended);
    /* an audited step reads the partials on the host anyway: the host chooses there */
    if (!A->audit_now && s->be->kv_holds(s->bs, layer, pos)) return topk_on_backend(s, layer, pos, n);
    int64_t n_ids = 0;
    int rc = topk_select(s, layer, pos, n, &n_ids);
    if (!rc) rc = kvs_plan_blocks(s->kv, layer, A->ids, n_ids);
    if (!rc) rc = attend(s, layer, pos, n, A->sel, s->part, &A->bytes_attended);
    if (!rc && A->audit_now) rc = audit_layer(s, layer, pos, n);
    return rc;
}

/* The attention accounting of mtok_kv_stats (called by mtok_session_kv_stats). */
void attn_kv_stats(const mtok_session *s, mtok_kv_stats *out) {
    const attn_state *A = s->attn;
    out->bytes_attended = A->bytes_attended;
    out->bytes_exact = A->bytes_exact;
    out->audit_steps = A->audit_steps;
    out->audit_rows = A->audit_rows;
    out->audit_bytes_read = A->audit_bytes_read;
    out->audit_mass_min = A->audit_rows ? A->audit_min : 0;
    out->audit_mass_mean = A->audit_rows ? A->audit_sum / (double)A->audit_rows : 0;
}
