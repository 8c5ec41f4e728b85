/* backend_cpu.c — the CPU backend: the contract of core/backend.h filled with the kernels of kernels/.
 *
 * Weights are the mapped safetensors, used in place. A session's state holds the fp32 scratch of one
 * chunk ([chunk][width] per tensor), the RoPE table of the chunk's positions and the attention
 * partials. Every parallel region gets the session's thread count (num_threads, or the matrix
 * kernels' threads argument): nothing here reads or sets OpenMP's process-wide default.
 *
 * The arithmetic is the forward pass's as it was before the backend seam (issue 17): the same kernels
 * on the same rows in the same order, so logits are bit-identical to it. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

struct mtok_backend_weights {
    const mtok_weights *w;
};

/* Query tokens per attention task. A multiple of 3: with an even number of heads per KV group (8 in
 * glm4-1b, 16 in GLM-4-9B) a task's rows fill whole 6-row tiles of the prefill kernel, where 16
 * tokens left a 2- or 4-row tile that costs nearly a full one (glm4-1b prefill 4096 +2.6%). */
#define ATT_TILE 24
#define SPLIT_MAX 16 /* most key parts per (group, tile) task in split-K attention */

struct mtok_backend_state {
    mtok_backend_params p;
    const mtok_config *c;
    const mtok_weights *w;
    float *t[MTOK_T_COUNT];
    int64_t width[MTOK_T_COUNT];
    int64_t gate_floats; /* the gate scratch also takes a tensor-parallel rank's logits slice */
    float *cs, *sn;      /* [chunk][rope_dim/2] */
    mtok_partials part;  /* [chunk*H] */
    /* split-K attention: the partials of key parts 1..split_max-1 for one tile of queries,
     * [part][ATT_TILE * H] rows; S and part_blocks are those of the attention in progress */
    int64_t split_max, S, part_blocks;
    float *sk_m, *sk_l, *sk_acc;
};

/* ---- shared helpers (backend.h) ----
 * Non-finite values (issue 16): each check reads what an op just wrote, while it is in cache; per
 * layer and token the residual stream twice, q, k and v, and the softmax denominators: 2 hidden +
 * H*D + 2 G*D + H floats against the hidden x (2 H*D + 2 G*D + 3 ffn) weight elements the layer
 * multiplies, 0.006 % of the multiply-adds on the 9B shapes and 0.015 % on glm4-1b (the logits
 * scan: 1/hidden of the output layer's). */

/* The test reads the exponent bits (all ones), so it holds under any floating-point flags; 1024-float
 * blocks are OR-reduced first, which vectorizes. */
int64_t mtok_backend_first_nonfinite(const float *x, int64_t n) {
    enum { BLK = 1024 };
    for (int64_t i0 = 0; i0 < n; i0 += BLK) {
        const int64_t m = n - i0 < BLK ? n - i0 : BLK;
        uint32_t hit = 0;
        for (int64_t i = 0; i < m; i++) {
            uint32_t u;
            memcpy(&u, x + i0 + i, sizeof u);
            hit |= (~u & 0x7f800000u) == 0;
        }
        if (hit)
            for (int64_t i = 0; i < m; i++)
                if (!isfinite(x[i0 + i])) return i0 + i;
    }
    return -1;
}

int mtok_backend_nonfinite(const mtok_model *m, float v, int64_t pos0, int64_t row, int64_t elem, const char *where,
                           int64_t layer) {
    char lay[48] = "";
    if (layer >= 0)
        snprintf(lay, sizeof lay, " of layer %lld of %lld", (long long)layer, (long long)m->cfg.n_layers);
    return mtok_err(MTOK_EINPUT, "%s: %s at position %lld (element %lld) after the %s%s; the weights hold NaN/Inf "
                    "or the activations overflowed (mtok check -m DIR lists non-finite tensors)", m->dir,
                    isnan(v) ? "NaN" : "Inf", (long long)(pos0 + row), (long long)elem, where, lay);
}

/* Rows [0, n) of x (row length width, row 0 at position pos0); where says what produced them. */
static int check(const mtok_backend_state *st, const float *x, int64_t n, int64_t width, int64_t pos0,
                 const char *where, int64_t layer) {
    const int64_t bad = mtok_backend_first_nonfinite(x, n * width);
    return bad < 0 ? 0 : mtok_backend_nonfinite(st->p.m, x[bad], pos0, bad / width, bad % width, where, layer);
}

static void emit(const mtok_backend_state *st, const char *name, int64_t layer, int64_t pos, const float *x,
                 int64_t rows, int64_t cols) {
    mtok_hook_emit(st->p.hook, name, layer, pos, x, rows, cols, MTOK_MEM_HOST);
}

/* ---- weights and state ---- */

static int cpu_weights_load(const mtok_backend_params *p, mtok_backend_weights **out) {
    mtok_backend_weights *w = malloc(sizeof *w);
    if (!w) return mtok_err(MTOK_ERESOURCE, "out of memory for the weight table");
    w->w = &p->m->w; /* the mapping itself: nothing to copy */
    *out = w;
    return 0;
}

static void cpu_weights_free(mtok_backend_weights *w) { free(w); }

static float *xalloc(int64_t n) {
    if (n < 0 || (uint64_t)n > (SIZE_MAX - 63) / sizeof(float)) return NULL; /* the byte count would wrap */
    return aligned_alloc(64, ((size_t)n * sizeof(float) + 63) / 64 * 64);
}

static void cpu_destroy(mtok_backend_state *st) {
    if (!st) return;
    for (int i = 0; i < MTOK_T_COUNT; i++) free(st->t[i]);
    free(st->cs), free(st->sn);
    free(st->part.o), free(st->part.m), free(st->part.d);
    free(st->sk_m), free(st->sk_l), free(st->sk_acc);
    free(st);
}

static int cpu_create(const mtok_backend_params *p, mtok_backend_state **out) {
    *out = NULL;
    mtok_backend_state *st = calloc(1, sizeof *st);
    if (!st) return mtok_err(MTOK_ERESOURCE, "out of memory creating the CPU backend state");
    st->p = *p;
    st->c = &p->m->cfg;
    st->w = p->w->w;
    const int64_t C = p->chunk, E = st->c->hidden, qd = p->H * p->D, kd = p->G * p->D;
    const int64_t half = st->c->rope_dim / 2 + 1;
    st->width[MTOK_T_X] = E;
    st->width[MTOK_T_A] = E > qd ? E : qd;
    st->width[MTOK_T_Q] = qd;
    st->width[MTOK_T_K] = kd;
    st->width[MTOK_T_V] = kd;
    st->width[MTOK_T_GATE] = p->F;
    st->width[MTOK_T_UP] = p->F;
    st->gate_floats = C * p->F > p->V ? C * p->F : p->V;
    int ok = 1;
    for (int i = 0; i < MTOK_T_COUNT; i++)
        ok &= (st->t[i] = xalloc(i == MTOK_T_GATE ? st->gate_floats : C * st->width[i])) != NULL;
    ok &= (st->cs = xalloc(C * half)) != NULL;
    ok &= (st->sn = xalloc(C * half)) != NULL;
    st->part = (mtok_partials){.o = xalloc(C * qd), .m = xalloc(C * p->H), .d = xalloc(C * p->H), .rows = C * p->H,
                               .D = p->D, .mem = MTOK_MEM_HOST};
    ok &= st->part.o && st->part.m && st->part.d;
    if (!ok) {
        cpu_destroy(st);
        return mtok_err(MTOK_ERESOURCE, "out of memory for prefill scratch (chunk %lld tokens)", (long long)C);
    }
    /* Split-K needs a state per extra key part: when there are more threads than KV groups, a decode
     * step (one tile of queries) gives each thread a part of every group's keys. */
    const int64_t S = p->threads / p->G;
    st->split_max = S > SPLIT_MAX ? SPLIT_MAX : S < 1 ? 1 : S;
    if (st->split_max > 1) {
        const size_t rows = (size_t)(st->split_max - 1) * ATT_TILE * (size_t)p->H;
        st->sk_m = malloc(rows * sizeof *st->sk_m);
        st->sk_l = malloc(rows * sizeof *st->sk_l);
        st->sk_acc = malloc(rows * (size_t)p->D * sizeof *st->sk_acc);
        if (!st->sk_m || !st->sk_l || !st->sk_acc) {
            cpu_destroy(st);
            return mtok_err(MTOK_ERESOURCE, "out of memory for the split-K attention state");
        }
    }
    *out = st;
    return 0;
}

static mtok_tview cpu_tensor(mtok_backend_state *st, mtok_tensor_id id) {
    return (mtok_tview){.data = st->t[id], .rows = st->p.chunk, .cols = st->width[id], .mem = MTOK_MEM_HOST};
}

static mtok_partials *cpu_partials(mtok_backend_state *st) { return &st->part; }

static int cpu_partials_create(mtok_backend_state *st, int64_t rows, mtok_partials *out) {
    *out = (mtok_partials){.o = xalloc(rows * st->p.D), .m = xalloc(rows), .d = xalloc(rows), .rows = rows,
                           .D = st->p.D, .mem = MTOK_MEM_HOST};
    if (out->o && out->m && out->d) return 0;
    free(out->o), free(out->m), free(out->d);
    *out = (mtok_partials){0};
    return mtok_err(MTOK_ERESOURCE, "out of memory for %lld rows of attention partials", (long long)rows);
}

static void cpu_partials_free(mtok_backend_state *st, mtok_partials *p) {
    free(p->o), free(p->m), free(p->d);
    *p = (mtok_partials){0};
}

/* ---- the operations ---- */

static int cpu_embed(mtok_backend_state *st, const mtok_chunk *c) {
    const int64_t E = st->c->hidden;
    float *x = st->t[MTOK_T_X];
    for (int64_t t = 0; t < c->n; t++) {
        const int64_t e = t - c->embeds_first; /* an override row (the vision tower's) replaces the lookup */
        if (c->embeds && e >= 0 && e < c->embeds_n) memcpy(x + t * E, c->embeds + e * E, (size_t)E * sizeof *x);
        else mk_embed(x + t * E, &st->w->embed, c->ids[t]);
    }
    emit(st, "embed", -1, c->pos, x, c->n, E);
    return check(st, x, c->n, E, c->pos, "embedding", -1);
}

static int cpu_rope_table(mtok_backend_state *st, const mtok_chunk *c) {
    const int64_t half = st->c->rope_dim / 2;
    for (int64_t t = 0; t < c->n; t++)
        mk_rope_table(st->cs + t * half, st->sn + t * half, st->c->rope_dim, st->c->rope_base,
                      c->rope_pos ? c->rope_pos[t] : c->pos + t);
    return 0;
}

static int cpu_norm(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, int which) {
    const int64_t E = st->c->hidden;
    const mtok_layer *L = &st->w->layers[layer];
    const mk_tensor *w = which == MTOK_NORM_ATTN ? &L->attn_norm : &L->mlp_norm;
    float *a = st->t[MTOK_T_A], *x = st->t[MTOK_T_X];
    for (int64_t t = 0; t < c->n; t++) mk_rmsnorm(a + t * E, x + t * E, w, E, st->c->norm_eps);
    emit(st, which == MTOK_NORM_ATTN ? "attn_norm" : "mlp_norm", layer, c->pos, a, c->n, E);
    return 0;
}

static int cpu_qkv(mtok_backend_state *st, const mtok_chunk *c, int64_t layer) {
    const mtok_layer *L = &st->w->layers[layer];
    const int64_t E = st->c->hidden, H = st->p.H, G = st->p.G, D = st->p.D, qd = H * D, kd = G * D, n = c->n;
    const int64_t half = st->c->rope_dim / 2;
    float *a = st->t[MTOK_T_A], *q = st->t[MTOK_T_Q], *k = st->t[MTOK_T_K], *v = st->t[MTOK_T_V];
    /* Q, K and V read the same rows: one parallel region for the three (bitwise as three calls) */
    const mk_matmul_job jobs[3] = {{q, qd, a, E, &L->wq, L->bq.data ? &L->bq : NULL},
                                   {k, kd, a, E, &L->wk, L->bk.data ? &L->bk : NULL},
                                   {v, kd, a, E, &L->wv, L->bv.data ? &L->bv : NULL}};
    mk_matmul_multi_threads(jobs, 3, n, st->p.threads);
    /* checked before attention, whose softmax skips NaN scores (kernels/cpu_ref.c accum_ref): a NaN
     * query would otherwise leave its head's output silently zero */
    int rc;
    if ((rc = check(st, q, n, qd, c->pos, "query projection", layer)) ||
        (rc = check(st, k, n, kd, c->pos, "key projection", layer)) ||
        (rc = check(st, v, n, kd, c->pos, "value projection", layer)))
        return rc;
    for (int64_t t = 0; t < n; t++) {
        mk_rope(q + t * qd, H, D, st->c->rope_dim, st->cs + t * half, st->sn + t * half);
        mk_rope(k + t * kd, G, D, st->c->rope_dim, st->cs + t * half, st->sn + t * half);
    }
    emit(st, "q", layer, c->pos, q, n, qd);
    emit(st, "k", layer, c->pos, k, n, kd);
    emit(st, "v", layer, c->pos, v, n, kd);
    return c->append ? kvs_write(c->kv, layer, c->kv_pos, n, k, v, kd) : 0;
}

/* ---- attention: o[t][h] = softmax_s≤pos_t(q·k_s/sqrt(D)) · v_s, query head h reads group h/(H/G) ----
 * Each (t, h) keeps its online-softmax state across the segments core/attn.c streams, so the
 * arithmetic is the same block-by-block sequence whether a block was hot or read back.
 *
 * Split-K: with a single tile of queries (decode) there are only G tasks; when the team is larger,
 * each task's keys are cut into S parts by block index, each part with its own online-softmax state,
 * merged in part order at the end (mk_attn_merge). The parts are fixed by position, not by how the
 * store segments its stream, so spilled and in-RAM runs stay bit-identical; the sums then depend on
 * the thread count (as in every split-K engine). */
static mtok_partials split_part(const mtok_backend_state *st, int64_t part) {
    const int64_t rows = ATT_TILE * st->p.H, k = (part - 1) * rows;
    return (mtok_partials){.o = st->sk_acc + k * st->p.D, .m = st->sk_m + k, .d = st->sk_l + k, .rows = rows,
                           .D = st->p.D, .mem = MTOK_MEM_HOST};
}

static int cpu_attn_begin(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p) {
    const int64_t G = st->p.G, H = st->p.H, D = st->p.D, n = j->n, B = j->block_tokens;
    const int64_t n_tiles = (n + ATT_TILE - 1) / ATT_TILE, kblocks = (j->q_pos + n + B - 1) / B;
    int64_t S = 1;
    if (n_tiles == 1 && st->split_max > 1) {
        S = st->p.threads / G;
        S = S > st->split_max ? st->split_max : S;
        S = S > kblocks / 2 ? kblocks / 2 : S; /* at least two blocks a part */
        S = S < 1 ? 1 : S;
    }
    st->S = S;
    st->part_blocks = (kblocks + S - 1) / S;
    const int64_t part_rows = ATT_TILE * H;
    for (int64_t i = 0; i < n * H; i++) p->m[i] = -INFINITY, p->d[i] = 0.0f;
    memset(p->o, 0, (size_t)(n * H * D) * sizeof *p->o);
    for (int64_t i = 0; i < (S - 1) * part_rows; i++) st->sk_m[i] = -INFINITY, st->sk_l[i] = 0.0f;
    if (S > 1) memset(st->sk_acc, 0, (size_t)((S - 1) * part_rows * D) * sizeof *st->sk_acc);
    return 0;
}

static int cpu_attn_blocks(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p, const kvs_block *seg,
                           int nseg) {
    const int64_t H = st->p.H, D = st->p.D, G = st->p.G, per_group = H / G, row = G * D;
    const int64_t n = j->n, pos = j->q_pos, B = j->block_tokens, S = st->S, part_blocks = st->part_blocks;
    const int64_t n_tiles = (n + ATT_TILE - 1) / ATT_TILE, part_rows = ATT_TILE * H;
    const float scale = (float)(1.0 / sqrt((double)D));
    const uint8_t *sel = j->sel;
    const float *q = st->t[MTOK_T_Q];
    if (nseg <= 0) return 0;
    /* small segments (decode against a few blocks) run on this thread: waking the team for them
     * costs more than the work, and idle spinning threads slow the I/O that feeds the next one */
    const int64_t work = n * H * (seg[nseg - 1].pos0 + seg[nseg - 1].n - seg[0].pos0) * D;
    /* one task per (KV group, tile of ATT_TILE query tokens, key part): the task's per_group x tile
     * query rows meet each block once through mk_attn_block, so a block is widened once per group
     * and tile instead of once per head and token, and Q·Kᵀ, P·V run as register-blocked tiles */
#pragma omp parallel for collapse(3) schedule(dynamic, 1) num_threads(st->p.threads) if (work > (1 << 18))
    for (int64_t g = 0; g < G; g++) {
        for (int64_t tt = 0; tt < n_tiles; tt++) {
            for (int64_t part = 0; part < S; part++) {
                const int64_t t0 = tt * ATT_TILE, nt = n - t0 < ATT_TILE ? n - t0 : ATT_TILE;
                const int64_t r0 = t0 * H + g * per_group; /* the task's first (token, head) row */
                /* part 0 accumulates into the caller's state, the others into their own */
                float *pm = part ? st->sk_m + (part - 1) * part_rows : p->m;
                float *pl = part ? st->sk_l + (part - 1) * part_rows : p->d;
                float *pacc = part ? st->sk_acc + (part - 1) * part_rows * D : p->o;
#define ATTENDS(blk) ((blk).pos0 / B / part_blocks == part && (!sel || sel[g * j->sel_stride + (blk).pos0 / B]))
                for (int jb = 0; jb < nseg; jb++) {
                    const kvs_block *blk = &seg[jb];
                    /* where group g's K and V start (kvstore.h: token-major, or grouped) */
                    const int64_t go = blk->k_panels ? B * D : D;
                    if (blk->pos0 > pos + t0 + nt - 1) break; /* past the tile's last position */
                    if (!ATTENDS(*blk)) continue;            /* another part's, or not chosen for g */
                    int jn = jb + 1; /* the next block this task reads, prefetched during this one */
                    while (jn < nseg && !ATTENDS(seg[jn])) jn++;
                    const int has_next = jn < nseg && seg[jn].pos0 <= pos + t0 + nt - 1;
                    const mk_attn_params ap = {
                        .q = q + (size_t)r0 * D, .q_ts = H * D, .acc = pacc + (size_t)r0 * D, .acc_ts = H * D,
                        .m = pm + r0, .l = pl + r0, .ml_ts = H, .n_tok = nt, .n_head = per_group, .D = D,
                        .k = blk->k + g * go, .v = blk->v + g * go, .kv_stride = blk->k_panels ? D : row,
                        .n = blk->n, .q_pos0 = pos + t0, .k_pos0 = blk->pos0, .causal = 1, .scale = scale,
                        .k_panels = blk->k_panels, .k_next = has_next ? seg[jn].k + g * go : NULL};
                    mk_attn_block(&ap);
                }
#undef ATTENDS
            }
        }
    }
    return 0;
}

static void cpu_merge(mtok_backend_state *st, mtok_partials *into, const mtok_partials *from, int64_t rows) {
    const int64_t D = into->D;
    for (int64_t i = 0; i < rows; i++)
        mk_attn_merge(into->o + i * D, &into->m[i], &into->d[i], from->o + i * D, from->m[i], from->d[i], D);
}

static int cpu_attn_end(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p) {
    for (int64_t part = 1; part < st->S; part++) { /* in part order: the result does not depend on timing */
        const mtok_partials sk = split_part(st, part);
        cpu_merge(st, p, &sk, j->n * st->p.H);
    }
    return 0;
}

static int cpu_attn_out(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, mtok_partials *p) {
    const int64_t H = st->p.H, D = st->p.D, n = c->n, E = st->c->hidden;
    /* finite queries and keys can still overflow to an infinite score, which makes the softmax
     * denominator NaN; the division below would turn that row into zeros */
    int rc = check(st, p->d, n, H, c->pos, "attention softmax", layer);
    if (rc) return rc;
    for (int64_t i = 0; i < n * H; i++) {
        const float inv = p->d[i] > 0 ? 1.0f / p->d[i] : 0.0f;
        for (int64_t d = 0; d < D; d++) p->o[i * D + d] *= inv;
    }
    emit(st, "attn", layer, c->pos, p->o, n, H * D);
    float *a = st->t[MTOK_T_A];
    mk_matmul_threads(a, E, p->o, H * D, n, &st->w->layers[layer].wo, NULL, st->p.threads);
    emit(st, "attn_proj", layer, c->pos, a, n, E);
    return 0;
}

static int cpu_mlp(mtok_backend_state *st, const mtok_chunk *c, int64_t layer) {
    const mtok_layer *L = &st->w->layers[layer];
    const int64_t E = st->c->hidden, F = st->p.F, n = c->n;
    float *a = st->t[MTOK_T_A], *gate = st->t[MTOK_T_GATE], *up = st->t[MTOK_T_UP];
    /* SwiGLU, gate rows first */
    const mk_matmul_job gu[2] = {{gate, F, a, E, &L->w_gate, NULL}, {up, F, a, E, &L->w_up, NULL}};
    mk_matmul_multi_threads(gu, 2, n, st->p.threads);
    mk_swiglu(gate, gate, up, n * F);
    emit(st, "mlp_act", layer, c->pos, gate, n, F);
    mk_matmul_threads(a, E, gate, F, n, &L->w_down, NULL, st->p.threads);
    emit(st, "mlp_proj", layer, c->pos, a, n, E);
    return 0;
}

static int cpu_residual(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, int block) {
    const int64_t m = c->n * st->c->hidden;
    float *x = st->t[MTOK_T_X];
    const float *a = st->t[MTOK_T_A];
    for (int64_t i = 0; i < m; i++) x[i] += a[i];
    emit(st, block == MTOK_BLOCK_ATTN ? "attn_res" : "mlp_res", layer, c->pos, x, c->n, st->c->hidden);
    return check(st, x, c->n, st->c->hidden, c->pos, block == MTOK_BLOCK_ATTN ? "attention block" : "MLP block", layer);
}

static int cpu_logits(mtok_backend_state *st, const mtok_chunk *c, int64_t r0, int64_t rows, float *out,
                      const mtok_gather *g) {
    const int64_t E = st->c->hidden, V = st->p.V, vocab = st->c->vocab, pos0 = c->pos + r0;
    float *a = st->t[MTOK_T_A];
    const float *x = st->t[MTOK_T_X] + r0 * E;
    for (int64_t t = 0; t < rows; t++) mk_rmsnorm(a + t * E, x + t * E, &st->w->final_norm, E, st->c->norm_eps);
    emit(st, "final_norm", -1, pos0, a, rows, E);
    int rc = check(st, a, rows, E, pos0, "final norm", -1);
    if (rc) return rc;
    if (g) {
        /* this rank's vocabulary rows into the gate scratch (free now) when they fit */
        float *local = rows * V <= st->gate_floats ? st->t[MTOK_T_GATE] : NULL;
        if (!local && !(local = malloc((size_t)(rows * V) * sizeof *local)))
            return mtok_err(MTOK_ERESOURCE, "out of memory for %lld x %lld logits", (long long)rows, (long long)V);
        mk_matmul_threads(local, V, a, E, rows, &st->w->output, NULL, st->p.threads);
        rc = g->fn(g->ctx, local, rows, out);
        if (local != st->t[MTOK_T_GATE]) free(local);
        if (rc) return rc;
    } else {
        mk_matmul_threads(out, vocab, a, E, rows, &st->w->output, NULL, st->p.threads);
    }
    emit(st, "logits", -1, pos0, out, rows, vocab);
    return check(st, out, rows, vocab, pos0, "output layer (logits)", -1);
}

/* Every op completes before it returns, in host memory: nothing is deferred, nothing is cached. */
static int cpu_chunk_end(mtok_backend_state *st, const mtok_chunk *c) { return 0; }

static int cpu_read(mtok_backend_state *st, void *dst, const void *src, size_t bytes) {
    memcpy(dst, src, bytes);
    return 0;
}

static void cpu_kv_forget(mtok_backend_state *st, int64_t kv_pos) {}
static int cpu_kv_holds(const mtok_backend_state *st, int64_t layer, int64_t kv_pos) { return 0; }

static int cpu_profile(mtok_backend_state *st, int on) {
    return mtok_err(MTOK_EUSAGE, "per-stage times are measured on the CUDA backend only (--device cuda)");
}
static int cpu_stage_times(const mtok_backend_state *st, mtok_stage_times *out) { return cpu_profile(NULL, 0); }

static const mtok_backend_ops cpu_ops = {
    .version = MTOK_BACKEND_VERSION,
    .name = "cpu",
    .weights_load = cpu_weights_load,
    .weights_free = cpu_weights_free,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .tensor = cpu_tensor,
    .partials = cpu_partials,
    .partials_create = cpu_partials_create,
    .partials_free = cpu_partials_free,
    .embed = cpu_embed,
    .rope_table = cpu_rope_table,
    .norm = cpu_norm,
    .qkv = cpu_qkv,
    .attn_begin = cpu_attn_begin,
    .attn_blocks = cpu_attn_blocks,
    .attn_end = cpu_attn_end,
    .merge = cpu_merge,
    .attn_out = cpu_attn_out,
    .mlp = cpu_mlp,
    .residual = cpu_residual,
    .logits = cpu_logits,
    .chunk_end = cpu_chunk_end,
    .read = cpu_read,
    .kv_forget = cpu_kv_forget,
    .kv_holds = cpu_kv_holds,
    .profile = cpu_profile,
    .stage_times = cpu_stage_times,
    .vision = &mtok_vision_ops_cpu,
};

const mtok_backend_ops *mtok_backend_cpu(void) { return &cpu_ops; }

int mtok_backend_cpu_threads(int requested) { return requested > 0 ? requested : omp_get_num_procs(); }
