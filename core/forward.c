/* forward.c — the GLM-4 decoder forward pass on the CPU (glm-spec.md §3), read top to bottom.
 *
 * Per chunk of up to `chunk` tokens at positions pos..pos+n-1:
 *   x = embed(ids)                                                   [n][hidden]
 *   for each layer:
 *     a = rmsnorm(x) ; q,k,v = a·Wqᵀ+bq, a·Wkᵀ+bk, a·Wvᵀ+bv          [n][H*D], [n][G*D], [n][G*D]
 *     rope(q), rope(k) on the first rope_dim dims, adjacent pairs
 *     kv[layer] += (k, v)  (stored bf16)
 *     o = causal GQA attention(q, kv[layer])                         [n][H*D]
 *     x += o·Woᵀ
 *     a = rmsnorm(x) ; x += (silu(a·Wgᵀ) ⊙ a·Wuᵀ)·Wdᵀ
 *   logits = rmsnorm_final(x)·Woutᵀ                                  [n][vocab] (or last row only)
 * All activations fp32; weights stay in their stored dtype; KV is bf16. Prefill runs in chunks so
 * the scratch memory is O(chunk), and attention uses an online softmax over KV blocks, so the score
 * memory is O(block) per thread whatever the context length. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "session.h"



static void *xalloc(size_t n) {
    if (n > (SIZE_MAX - 63) / sizeof(float)) return NULL; /* the byte count would wrap */
    return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
}

int mtok_session_create(const mtok_model *m, const mtok_session_params *p, mtok_session **out) {
    *out = NULL;
    const mtok_config *c = &m->cfg;
    /* Every scratch buffer is a product of the chunk with a model width, and OpenMP's runtime dies
     * (SIGSEGV) rather than fail on absurd team sizes: bound both before anything is allocated. */
    if (p && (p->prefill_chunk > MTOK_MAX_CHUNK || p->threads > MTOK_MAX_THREADS || p->ctx > MTOK_MAX_CTX))
        return mtok_err(MTOK_EUSAGE, "session: chunk %lld (at most %d), threads %d (at most %d) or context %lld "
                        "(at most 2^40) out of range", (long long)p->prefill_chunk, MTOK_MAX_CHUNK, p->threads,
                        MTOK_MAX_THREADS, (long long)p->ctx);
    mtok_session *s = calloc(1, sizeof *s);
    if (!s) return mtok_err(MTOK_ERESOURCE, "out of memory creating a session");
    s->m = m;
    s->c = c;
    s->ctx = p && p->ctx > 0 ? p->ctx : c->max_ctx;
    s->chunk = p && p->prefill_chunk > 0 ? p->prefill_chunk : MTOK_DEFAULT_CHUNK;
    s->threads = p && p->threads > 0 ? p->threads : omp_get_num_procs();
    /* this rank's heads and groups (all of them unless the model was loaded as a tensor-parallel slice) */
    s->H = m->tp.H, s->G = m->tp.G, s->D = c->head_dim;
    /* the kernels' parallel regions take OpenMP's default team size; an explicit thread count must
     * reach them too, not only attention (this sets the calling thread's default, as the CLI wants) */
    if (p && p->threads > 0) omp_set_num_threads(p->threads);
    int rc = dist_setup(s, p);
    if (rc) {
        mtok_session_free(s);
        return rc;
    }
    int64_t block = p && p->kv_block > 0 ? p->kv_block : 128;
    int64_t qd = s->H * s->D, kd = s->G * s->D, C = s->chunk;
    s->x = xalloc(C * c->hidden);
    s->a = xalloc(C * (c->hidden > qd ? c->hidden : qd));
    s->q = xalloc(C * qd);
    s->k = xalloc(C * kd);
    s->v = xalloc(C * kd);
    s->att = xalloc(C * qd);
    /* gate also takes a tensor-parallel rank's slice of the last row's logits */
    s->gate = xalloc(C * m->tp.F > m->tp.V ? C * m->tp.F : m->tp.V);
    s->up = xalloc(C * m->tp.F);
    s->cs = xalloc(C * (c->rope_dim / 2 + 1));
    s->sn = xalloc(C * (c->rope_dim / 2 + 1));
    s->logits = xalloc(c->vocab);
    s->ms = xalloc(C * s->H);
    s->ls = xalloc(C * s->H);
    if (!s->x || !s->a || !s->q || !s->k || !s->v || !s->att || !s->gate || !s->up || !s->cs || !s->sn ||
        !s->logits || !s->ms || !s->ls) {
        mtok_session_free(s);
        return mtok_err(MTOK_ERESOURCE, "out of memory for prefill scratch (chunk %lld tokens)", (long long)C);
    }
    /* a context-parallel rank stores only its spans of positions, densely */
    kvs_params kp = {.n_layers = c->n_layers, .n_kv_groups = s->G, .head_dim = c->head_dim,
                     .ctx = dist_local_tokens(s, s->ctx), .block_tokens = block};
    if (p) {
        kp.budget = p->kv_budget;
        kp.dir = p->kv_dir;
        kp.io = (kvs_io_kind)p->kv_io;
        kp.policy = (kvs_policy)p->kv_policy;
        kp.sinks = p->kv_sinks > 0 ? p->kv_sinks : 4; /* StreamingLLM keeps 4 sink tokens */
        kp.window = p->kv_window;
        kp.depth = p->kv_depth;
        if (p->kv_policy == KVS_POLICY_WINDOW && kp.window <= 0) kp.window = 4096;
        if (p->kv_fault && *p->kv_fault) rc = kvs_fault_parse(p->kv_fault, &kp.fault);
    }
    if (!rc) rc = kvs_create(&kp, &s->kv);
    if (!rc) rc = attn_create(s, p);
    if (rc) {
        mtok_session_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void mtok_session_free(mtok_session *s) {
    if (!s) return;
    dist_announce(s, DIST_EXIT, 0, NULL, 0); /* releases the serving ranks */
    attn_free(s);
    kvs_free(s->kv);
    dist_free(s);
    mtok_ids_free(&s->ids);
    free(s->ms), free(s->ls);
    free(s->x), free(s->a), free(s->q), free(s->k), free(s->v), free(s->att);
    free(s->gate), free(s->up), free(s->cs), free(s->sn), free(s->logits);
    free(s);
}

void session_reset_local(mtok_session *s) {
    s->pos = 0;
    s->kv_pos = 0;
    s->ids.n = 0;
    kvs_reset(s->kv);
}
void mtok_session_reset(mtok_session *s) {
    int rc = dist_announce(s, DIST_RESET, 0, NULL, 0);
    if (rc) dist_fail(s, rc);
    session_reset_local(s);
}
int session_truncate_local(mtok_session *s, int64_t n) {
    s->pos = n;
    s->ids.n = (size_t)n;
    s->kv_pos = dist_local_tokens(s, n);
    int rc = kvs_truncate(s->kv, s->kv_pos);
    const int64_t held = kvs_tokens(s->kv);
    if (rc || held >= s->kv_pos) return rc;
    /* The window policy dropped blocks that queries after n would attend (kvs_truncate kept less):
     * recompute the lost positions from their ids, so the session holds n tokens as asked and its
     * next steps equal a fresh run's. */
    if (s->world)
        return mtok_err(MTOK_EUSAGE, "truncate to %lld tokens: the window policy dropped KV blocks the next positions "
                        "need, and parallel runs cannot recompute them (use --kv-policy exact or topk)", (long long)n);
    int32_t *lost = malloc((size_t)(n - held) * sizeof *lost);
    if (!lost) return mtok_err(MTOK_ERESOURCE, "out of memory recomputing %lld positions", (long long)(n - held));
    memcpy(lost, s->ids.v + held, (size_t)(n - held) * sizeof *lost);
    s->pos = s->kv_pos = held;
    s->ids.n = (size_t)held;
    mtok_log(2, "truncate to %lld tokens: the window policy had dropped blocks after position %lld; recomputing %lld",
             (long long)n, (long long)held, (long long)(n - held));
    rc = forward_run(s, lost, n - held, NULL);
    free(lost);
    return rc;
}
int mtok_session_truncate(mtok_session *s, int64_t n) {
    if (n < 0 || n > s->pos)
        return mtok_err(MTOK_EUSAGE, "truncate to %lld tokens: session holds %lld", (long long)n, (long long)s->pos);
    int rc = dist_announce(s, DIST_TRUNCATE, n, NULL, 0);
    if (!rc) rc = session_truncate_local(s, n);
    if (rc && s->world) dist_fail(s, rc);
    return rc;
}
int64_t mtok_session_pos(const mtok_session *s) { return s->pos; }
int64_t mtok_session_ctx(const mtok_session *s) { return s->ctx; }
const float *mtok_session_logits(const mtok_session *s) { return s->logits; }
uint64_t mtok_session_kv_bytes(const mtok_session *s) { return kvs_bytes(s->kv); }
const int32_t *mtok_session_tokens(const mtok_session *s) { return s->ids.v; }

void mtok_session_kv_stats(const mtok_session *s, mtok_kv_stats *out) {
    kvs_stats st;
    kvs_get_stats(s->kv, &st);
    *out = (mtok_kv_stats){.io = st.io, .io_note = st.io_note, .hot_bytes = st.hot_bytes,
                           .cold_bytes = st.cold_bytes, .spill_writes = st.spill_writes,
                           .spill_reads = st.spill_reads, .bytes_written = st.bytes_written,
                           .bytes_read = st.bytes_read, .dropped = st.dropped, .tokens_computed = s->computed,
                           .summary_bytes = st.summary_bytes};
    attn_kv_stats(s, out);
}

/* The identity a saved KV file carries is the model's (core/identity.c): the fingerprint and a hash of
 * every weight byte, computed on the first save or load. */
int mtok_session_save_kv(mtok_session *s, const char *path) {
    if (s->world) return mtok_err(MTOK_EUSAGE, "%s: saved KV files are not supported in parallel runs (--tp/--cp)", path);
    if (s->pos <= 0) return mtok_err(MTOK_EUSAGE, "%s: nothing to save, the session holds no tokens", path);
    uint64_t id;
    int rc = mtok_model_identity(s->m, &id);
    return rc ? rc : kvs_file_save(s->kv, path, id, s->ids.v, s->pos);
}

int mtok_session_load_kv(mtok_session *s, const char *path, const int32_t *prompt, size_t n_prompt,
                         int64_t *n_loaded) {
    int32_t *ids = NULL;
    int64_t n = 0;
    uint64_t id;
    if (s->world) return mtok_err(MTOK_EUSAGE, "%s: saved KV files are not supported in parallel runs (--tp/--cp)", path);
    struct stat st; /* a mistyped path must not wait for the first hashing of the weights */
    if (stat(path, &st)) return mtok_err(MTOK_EINPUT, "%s: %s", path, strerror(errno));
    int rc = mtok_model_identity(s->m, &id);
    if (rc) return rc;
    mtok_session_reset(s);
    rc = kvs_file_load(s->kv, path, id, prompt, prompt ? (int64_t)n_prompt : -1, &ids, &n);
    if (!rc && (n < 0 || n > s->ctx))
        rc = mtok_err(MTOK_EINPUT, "%s: %lld saved tokens exceed the context limit %lld (--ctx)", path, (long long)n,
                      (long long)s->ctx);
    /* the checksums only say the file is as written, not that a writer was honest: a token outside
     * this vocabulary would index past the embedding on the next forward */
    for (int64_t t = 0; !rc && t < n; t++)
        if (ids[t] < 0 || ids[t] >= s->c->vocab)
            rc = mtok_err(MTOK_EINPUT, "%s: damaged: saved token id %d at position %lld is outside the vocabulary "
                          "[0, %lld)", path, ids[t], (long long)t, (long long)s->c->vocab);
    if (!rc && n > 0) rc = mtok_ids_append(&s->ids, ids, (size_t)n);
    free(ids);
    if (rc) {
        mtok_session_reset(s);
        return rc;
    }
    s->pos = s->kv_pos = n;
    if (n_loaded) *n_loaded = n;
    return 0;
}

/* ---- non-finite values (issue 16) ----
 * A NaN or Inf in the weights (or an activation that overflows) reaches every later position through
 * attention, and greedy sampling of NaN logits picked id 0 forever. The pass stops instead with
 * MTOK_EINPUT, naming the position and where the value appeared: the embedding, the query, key or
 * value projection, the attention softmax or the MLP block of a layer, the final norm or the output
 * layer. Each check reads what the step just wrote, while it is in cache: per layer and token the
 * residual stream twice, q, k and v, and the softmax denominators: 2 hidden + H*D + 2 G*D + H floats
 * against the hidden x (2 H*D + 2 G*D + 3 ffn) weight elements the layer multiplies, 0.006 % of
 * the multiply-adds on the 9B shapes and 0.015 % on glm4-1b (the logits scan: 1/hidden of the
 * output layer's). Integer compares on cached data, so the share of the time is smaller still. */

/* Index of the first NaN or Inf in x[0..n), or -1. The test reads the exponent bits (all ones), so
 * it holds under any floating-point flags; 1024-float blocks are OR-reduced first, which vectorizes. */
static int64_t first_nonfinite(const float *x, int64_t n) {
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

/* Checks rows [0, n) of x (row length `width`, first row at position pos0); where says what produced
 * them. 0, or the error naming the first bad position. */
static int check_finite(const mtok_session *s, const float *x, int64_t n, int64_t width, int64_t pos0,
                        const char *where, int64_t layer) {
    int64_t bad = first_nonfinite(x, n * width);
    if (bad < 0) return 0;
    const int64_t t = bad / width;
    char lay[48] = "";
    if (layer >= 0) snprintf(lay, sizeof lay, " of layer %lld of %lld", (long long)layer, (long long)s->c->n_layers);
    return mtok_err(MTOK_EINPUT, "%s: %s at position %lld (element %lld) after the %s%s; the weights hold NaN/Inf "
                    "or the activations overflowed (mtok check -m DIR lists non-finite tensors)", s->m->dir,
                    isnan(x[bad]) ? "NaN" : "Inf", (long long)(pos0 + t), (long long)(bad % width), where, lay);
}

/* ---- one chunk of n ≤ chunk tokens through every layer; logits into out (ld vocab) if non-NULL ----
 * Parallel runs (docs/PARALLEL.md): under tensor parallelism the weights are this rank's slices, so
 * the dense and down projections give partial sums that one all-reduce each completes, and the
 * output layer gives this rank's vocabulary rows. Under context parallelism every rank runs the
 * whole chunk, the rank owning the chunk's span stores its K/V, and each rank's attention over its
 * own positions is merged by the log-sum-exp rule. A chunk never crosses a span boundary. */
static int forward_chunk(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits, int want_last) {
    const mtok_config *c = s->c;
    const mtok_weights *w = &s->m->w;
    const int64_t E = c->hidden, qd = s->H * s->D, kd = s->G * s->D;
    const int64_t F = s->m->tp.F, V = s->m->tp.V, half = c->rope_dim / 2;
    const int owner = dist_owns(s, s->pos);
    const int64_t kpos = s->kv_pos, kend = kpos + (owner ? n : 0); /* this rank's KV-store positions */
    int rc;

    /* embedding */
    for (int64_t t = 0; t < n; t++) {
        if (ids[t] < 0 || ids[t] >= c->vocab)
            return mtok_err(MTOK_EINPUT, "token id %d at position %lld is outside the vocabulary [0, %lld)",
                            ids[t], (long long)(s->pos + t), (long long)c->vocab);
        mk_embed(s->x + t * E, &w->embed, ids[t]);
    }
    if ((rc = check_finite(s, s->x, n, E, s->pos, "embedding", -1))) return rc;
    /* RoPE angles for this chunk's positions, computed once in double precision */
    for (int64_t t = 0; t < n; t++)
        mk_rope_table(s->cs + t * half, s->sn + t * half, c->rope_dim, c->rope_base, s->pos + t);

    /* the KV blocks attention will read, layer 0 first; each layer queues the next one's before its
     * own attention runs, so the next layer's cold blocks are in flight while this one computes */
    if ((rc = attn_plan(s, 0, kend, kpos))) return rc;
    for (int64_t l = 0; l < c->n_layers; l++) {
        const mtok_layer *L = &w->layers[l];
        /* attention block */
        for (int64_t t = 0; t < n; t++) mk_rmsnorm(s->a + t * E, s->x + t * E, &L->attn_norm, E, c->norm_eps);
        /* Q, K and V read the same rows: one parallel region for the three (bitwise as three calls) */
        const mk_matmul_job qkv[3] = {{s->q, qd, s->a, E, &L->wq, L->bq.data ? &L->bq : NULL},
                                      {s->k, kd, s->a, E, &L->wk, L->bk.data ? &L->bk : NULL},
                                      {s->v, kd, s->a, E, &L->wv, L->bv.data ? &L->bv : NULL}};
        mk_matmul_multi(qkv, 3, n);
        /* checked before attention, whose softmax skips NaN scores (kernels/cpu_ref.c accum_ref): a
         * NaN query would otherwise leave its head's output silently zero */
        if ((rc = check_finite(s, s->q, n, qd, s->pos, "query projection", l)) ||
            (rc = check_finite(s, s->k, n, kd, s->pos, "key projection", l)) ||
            (rc = check_finite(s, s->v, n, kd, s->pos, "value projection", l)))
            return rc;
        for (int64_t t = 0; t < n; t++) {
            mk_rope(s->q + t * qd, s->H, c->head_dim, c->rope_dim, s->cs + t * half, s->sn + t * half);
            mk_rope(s->k + t * kd, s->G, c->head_dim, c->rope_dim, s->cs + t * half, s->sn + t * half);
        }
        if (owner && (rc = kvs_write(s->kv, l, kpos, n, s->k, s->v, kd))) return rc;
        if (l + 1 < c->n_layers && (rc = attn_plan(s, l + 1, kend, kpos))) return rc;
        /* queries sit at kpos.. in this rank's positions: after every key it holds from earlier
         * spans, and causally aligned with the chunk's own keys when it owns them */
        if ((rc = attn_layer(s, l, kpos, n))) return rc;
        if ((rc = dist_cp_merge(s, n))) return rc;
        /* finite queries and keys can still overflow to an infinite score, which makes the softmax
         * denominator NaN; attn_normalize would turn that row into zeros */
        if ((rc = check_finite(s, s->ls, n, s->H, s->pos, "attention softmax", l))) return rc;
        attn_normalize(s, n);
        mk_matmul(s->a, E, s->att, qd, n, &L->wo, NULL);
        if ((rc = dist_tp_sum(s, s->a, (size_t)(n * E)))) return rc;
        for (int64_t i = 0; i < n * E; i++) s->x[i] += s->a[i];
        if ((rc = check_finite(s, s->x, n, E, s->pos, "attention block", l))) return rc;
        /* MLP block: SwiGLU, gate rows first */
        for (int64_t t = 0; t < n; t++) mk_rmsnorm(s->a + t * E, s->x + t * E, &L->mlp_norm, E, c->norm_eps);
        const mk_matmul_job gu[2] = {{s->gate, F, s->a, E, &L->w_gate, NULL}, {s->up, F, s->a, E, &L->w_up, NULL}};
        mk_matmul_multi(gu, 2, n);
        mk_swiglu(s->gate, s->gate, s->up, n * F);
        mk_matmul(s->a, E, s->gate, F, n, &L->w_down, NULL);
        if ((rc = dist_tp_sum(s, s->a, (size_t)(n * E)))) return rc;
        for (int64_t i = 0; i < n * E; i++) s->x[i] += s->a[i];
        if ((rc = check_finite(s, s->x, n, E, s->pos, "MLP block", l))) return rc;
    }

    /* output: every row for `mtok logits`, else only the last one (generation needs no more). A
     * tensor-parallel rank computes its vocabulary rows into the scratch and gathers the rest. */
    const int split = s->tp_size > 1;
    if (all_logits) {
        for (int64_t t = 0; t < n; t++) mk_rmsnorm(s->a + t * E, s->x + t * E, &w->final_norm, E, c->norm_eps);
        if ((rc = check_finite(s, s->a, n, E, s->pos, "final norm", -1))) return rc;
        if (split) {
            float *loc = s->gate; /* the scratch holds [chunk][F] (or [V]) and is free now */
            float *tmp = n * V <= s->chunk * F ? loc : NULL;
            if (!tmp && !(tmp = malloc((size_t)(n * V) * sizeof *tmp)))
                return mtok_err(MTOK_ERESOURCE, "out of memory for %lld x %lld logits", (long long)n, (long long)V);
            mk_matmul(tmp, V, s->a, E, n, &w->output, NULL);
            rc = dist_gather_logits(s, tmp, n, all_logits);
            if (tmp != loc) free(tmp);
            if (rc) return rc;
        } else {
            mk_matmul(all_logits, c->vocab, s->a, E, n, &w->output, NULL);
        }
        if ((rc = check_finite(s, all_logits, n, c->vocab, s->pos, "output layer (logits)", -1))) return rc;
        if (want_last) memcpy(s->logits, all_logits + (size_t)(n - 1) * c->vocab, (size_t)c->vocab * sizeof(float));
    } else if (want_last) {
        mk_rmsnorm(s->a, s->x + (n - 1) * E, &w->final_norm, E, c->norm_eps);
        if ((rc = check_finite(s, s->a, 1, E, s->pos + n - 1, "final norm", -1))) return rc;
        if (split) {
            mk_matmul(s->gate, V, s->a, E, 1, &w->output, NULL);
            if ((rc = dist_gather_logits(s, s->gate, 1, s->logits))) return rc;
        } else {
            mk_matmul(s->logits, c->vocab, s->a, E, 1, &w->output, NULL);
        }
        if ((rc = check_finite(s, s->logits, 1, c->vocab, s->pos + n - 1, "output layer (logits)", -1))) return rc;
    }
    s->pos += n;
    s->kv_pos = kend;
    s->computed += n;
    return mtok_ids_append(&s->ids, ids, (size_t)n);
}

/* Runs n tokens on this rank, in chunks that end at the prefill chunk size and at span boundaries. */
int forward_run(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits) {
    const int64_t start = s->pos;
    for (int64_t i = 0; i < n;) {
        int64_t nc = n - i < s->chunk ? n - i : s->chunk, span_left = dist_span_end(s, s->pos) - s->pos;
        if (nc > span_left) nc = span_left;
        float *out = all_logits ? all_logits + (size_t)i * s->c->vocab : NULL;
        int rc = forward_chunk(s, ids + i, nc, out, i + nc == n);
        if (rc) {
            /* leave the session as it was before this call: a failed request loses nothing */
            s->pos = start;
            s->ids.n = (size_t)start;
            s->kv_pos = dist_local_tokens(s, start);
            kvs_truncate(s->kv, s->kv_pos);
            return rc;
        }
        i += nc;
    }
    return 0;
}

int mtok_forward(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits) {
    if (n <= 0) return mtok_err(MTOK_EUSAGE, "forward: no tokens");
    if (s->pos + n > s->ctx)
        return mtok_err(MTOK_EINPUT, "%lld tokens at position %lld exceed the context limit of %lld tokens (--ctx)",
                        (long long)n, (long long)s->pos, (long long)s->ctx);
    for (int64_t t = 0; t < n; t++) /* checked before the other ranks are told, so a bad id loses nothing */
        if (ids[t] < 0 || ids[t] >= s->c->vocab)
            return mtok_err(MTOK_EINPUT, "token id %d at position %lld is outside the vocabulary [0, %lld)", ids[t],
                            (long long)(s->pos + t), (long long)s->c->vocab);
    int rc = dist_announce(s, DIST_FORWARD, n, ids, all_logits != NULL);
    if (!rc) rc = forward_run(s, ids, n, all_logits);
    /* in a parallel run the other ranks are part-way through the same call: they cannot be rolled
     * back in step, so an error there ends the job with the message */
    if (rc && s->world) dist_fail(s, rc);
    return rc;
}

const mtok_config *mtok_session_config(const mtok_session *s) { return s->c; }
