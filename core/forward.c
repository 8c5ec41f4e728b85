/* forward.c — the GLM-4 decoder forward pass, read top to bottom (the same model in numpy:
 * tests/ref/glm_ref.py).
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
 * memory is O(block) per thread whatever the context length.
 *
 * Every step is one operation of the compute backend (core/backend.h, docs/BACKEND.md), which owns
 * the activations and the loops over them, checks what each op produces for NaN/Inf and reports it
 * to the session's hook. This file holds the order of the steps, the KV-store and parallel calls
 * between them, and the session's life cycle. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "session.h"

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
    /* passed down to the backend's parallel regions; OpenMP's process-wide default is left alone */
    s->threads = mtok_backend_cpu_threads(p ? p->threads : 0);
    /* this rank's heads and groups (all of them unless the model was loaded as a tensor-parallel slice) */
    s->H = m->tp.H, s->G = m->tp.G, s->D = c->head_dim;
    int rc = dist_setup(s, p);
    if (rc) {
        mtok_session_free(s);
        return rc;
    }
    int64_t block = p && p->kv_block > 0 ? p->kv_block : KVS_DEFAULT_BLOCK_TOKENS;
    int device = -1;
    rc = mtok_device_parse(p ? p->device : NULL, &device);
    if (!rc && device >= 0 && s->world)
        rc = mtok_err(MTOK_EUSAGE, "--device cuda runs one rank for now: tensor and context parallel runs (--tp, "
                      "--cp) use the CPU backend (docs/GPU.md)");
    if (rc) {
        mtok_session_free(s);
        return rc;
    }
    if (device >= 0) snprintf(s->device, sizeof s->device, "cuda:%d", device);
    else snprintf(s->device, sizeof s->device, "cpu");
    s->be = device >= 0 ? mtok_backend_cuda() : mtok_backend_cpu();
    if (s->be->version != MTOK_BACKEND_VERSION) {
        mtok_session_free(s);
        return mtok_err(MTOK_EINTERNAL, "backend %s has version %d, this build needs %d", s->be->name,
                        s->be->version, MTOK_BACKEND_VERSION);
    }
    mtok_backend_params bp = {.m = m, .chunk = s->chunk, .H = s->H, .G = s->G, .D = s->D, .F = m->tp.F,
                              .V = m->tp.V, .threads = s->threads, .hook = &s->hook, .device = device > 0 ? device : 0,
                              .kv_ctx = dist_local_tokens(s, s->ctx), .kv_block = block,
                              .kv_exact = !s->world && (!p || p->kv_policy == KVS_POLICY_EXACT)};
    /* topk on one rank: the rule attn_create resolves, so a device backend can choose blocks itself;
     * not with an audit, which reads the partials on the host in the same steps */
    if (!s->world && p && p->kv_policy == KVS_POLICY_TOPK && p->kv_topk >= 0 && !(p->kv_audit > 0)) {
        bp.kv_topk = p->kv_topk > 0 ? p->kv_topk : ATTN_TOPK_DEFAULT;
        bp.kv_sinks = p->kv_sinks > 0 ? p->kv_sinks : 4; /* as the store's sinks below */
        bp.kv_window = p->kv_window > 0 ? p->kv_window : ATTN_TOPK_WINDOW_DEFAULT;
    }
    rc = s->be->weights_load(&bp, &s->bw);
    bp.w = s->bw;
    if (!rc) rc = s->be->create(&bp, &s->bs);
    s->logits = rc ? NULL : malloc((size_t)c->vocab * sizeof *s->logits);
    if (!rc && !s->logits) rc = mtok_err(MTOK_ERESOURCE, "out of memory for %lld logits", (long long)c->vocab);
    if (rc) {
        mtok_session_free(s);
        return rc;
    }
    s->part = s->be->partials(s->bs);
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
    free(s->rpos);
    if (s->be) {
        s->be->destroy(s->bs);
        if (s->bw) s->be->weights_free(s->bw);
    }
    free(s->logits);
    free(s);
}

/* Positions back to the identity (rpos NULL) when the first n held tokens sit at their slots: a
 * session truncated to before its image is a text-only session again. */
static void rope_pos_trim(mtok_session *s, int64_t n) {
    if (!s->rpos) return;
    for (int64_t t = 0; t < n; t++)
        if (s->rpos[t] != t) return;
    free(s->rpos);
    s->rpos = NULL;
    s->rpos_cap = 0;
}

static int rope_pos_reserve(mtok_session *s, int64_t n);

void session_reset_local(mtok_session *s) {
    s->pos = 0;
    s->kv_pos = 0;
    s->ids.n = 0;
    s->img_lo = s->img_hi = 0;
    rope_pos_trim(s, 0);
    kvs_reset(s->kv);
    s->be->kv_forget(s->bs, 0);
}
void mtok_session_reset(mtok_session *s) {
    int rc = dist_announce(s, DIST_RESET, 0, NULL, 0);
    if (rc) dist_fail(s, rc);
    session_reset_local(s);
}
int session_truncate_local(mtok_session *s, int64_t n) {
    /* image rows before n keep their exact K and V; rows from n on are dropped with the rest */
    if (s->img_hi > s->img_lo && n <= s->img_lo) s->img_lo = s->img_hi = 0;
    else if (s->img_hi > n) s->img_hi = n;
    rope_pos_trim(s, n);
    s->pos = n;
    s->ids.n = (size_t)n;
    s->kv_pos = dist_local_tokens(s, n);
    int rc = kvs_truncate(s->kv, s->kv_pos);
    const int64_t held = kvs_tokens(s->kv);
    s->be->kv_forget(s->bs, held < s->kv_pos ? held : s->kv_pos);
    if (rc || held >= s->kv_pos) return rc;
    /* The window policy dropped blocks that queries after n would attend (kvs_truncate kept less):
     * recompute the lost positions from their ids, so the session holds n tokens as asked and its
     * next steps equal a fresh run's. */
    if (s->world)
        return mtok_err(MTOK_EUSAGE, "truncate to %lld tokens: the window policy dropped KV blocks the next positions "
                        "need, and parallel runs cannot recompute them (use --kv-policy exact or topk)", (long long)n);
    if (s->img_hi > s->img_lo && s->img_hi > held) {
        /* image rows have placeholder ids: recomputing them from ids would be silently wrong */
        const int64_t lo = s->img_lo;
        session_truncate_local(s, held);
        return mtok_err(MTOK_EUSAGE, "truncate to %lld tokens: the window policy dropped KV blocks of the image rows "
                        "(from slot %lld), which cannot be recomputed from token ids; the session now holds %lld "
                        "tokens (use --kv-policy exact or topk with images)", (long long)n, (long long)lo,
                        (long long)held);
    }
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
int64_t session_rope_next(const mtok_session *s) { return s->rpos && s->pos > 0 ? s->rpos[s->pos - 1] + 1 : s->pos; }
int session_has_layout(const mtok_session *s) { return s->rpos != NULL || s->img_hi > s->img_lo; }
const int64_t *mtok_session_positions(const mtok_session *s) { return s->rpos; }
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
    int rc = mtok_model_identity(s->m, s->threads, &id);
    /* with an image, its rows' span and every token's RoPE position go into the file (version 3): the
     * rows' K and V are exact, but their ids are placeholders and position != slot after them */
    return rc ? rc : kvs_file_save_ex(s->kv, path, id, s->ids.v, s->pos, s->rpos, s->img_lo, s->img_hi);
}

int mtok_session_load_kv(mtok_session *s, const char *path, const int32_t *prompt, size_t n_prompt,
                         int64_t *n_loaded) {
    int32_t *ids = NULL;
    int64_t n = 0;
    uint64_t id;
    if (s->world) return mtok_err(MTOK_EUSAGE, "%s: saved KV files are not supported in parallel runs (--tp/--cp)", path);
    struct stat st; /* a mistyped path must not wait for the first hashing of the weights */
    if (stat(path, &st)) return mtok_err(MTOK_EINPUT, "%s: %s", path, strerror(errno));
    int rc = mtok_model_identity(s->m, s->threads, &id);
    if (rc) return rc;
    mtok_session_reset(s);
    kvs_file_layout lay;
    rc = kvs_file_load_ex(s->kv, path, id, prompt, prompt ? (int64_t)n_prompt : -1, &ids, &n, &lay);
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
    if (!rc && lay.pos && n > 0 && !(rc = rope_pos_reserve(s, n))) {
        memcpy(s->rpos, lay.pos, (size_t)n * sizeof *s->rpos);
        s->img_lo = lay.img_lo, s->img_hi = lay.img_hi;
        rope_pos_trim(s, n); /* a prefix before the image is text at its slots */
    }
    free(lay.pos);
    free(ids);
    s->be->kv_forget(s->bs, 0); /* the store's blocks are the file's now */
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
 * layer. The backend's ops check what they produce (core/backend_cpu.c says what that costs). */

/* 0, or the error naming the first token id outside the vocabulary (ids at positions pos..). */
static int ids_in_vocab(const mtok_session *s, const int32_t *ids, int64_t n, int64_t pos) {
    for (int64_t t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= s->c->vocab)
            return mtok_err(MTOK_EINPUT, "token id %d at position %lld is outside the vocabulary [0, %lld)", ids[t],
                            (long long)(pos + t), (long long)s->c->vocab);
    return 0;
}

/* Tensor parallel: the output layer's vocabulary slices of n rows into whole rows (mtok_gather). */
static int gather_logits(void *ctx, const float *local, int64_t n, float *out) {
    return dist_gather_logits(ctx, local, n, out);
}

/* ---- one chunk of n ≤ chunk tokens through every layer; logits into out (ld vocab) if non-NULL ----
 * Parallel runs (docs/PARALLEL.md): under tensor parallelism the weights are this rank's slices, so
 * the dense and down projections give partial sums that one all-reduce each completes, and the
 * output layer gives this rank's vocabulary rows. Under context parallelism every rank runs the
 * whole chunk, the rank owning the chunk's span stores its K/V, and each rank's attention over its
 * own positions is merged by the log-sum-exp rule. A chunk never crosses a span boundary. */
static int forward_chunk(mtok_session *s, const int32_t *ids, int64_t n, const float *emb, int64_t emb_first,
                         int64_t emb_n, float *all_logits, int want_last) {
    const mtok_backend_ops *be = s->be;
    mtok_backend_state *st = s->bs;
    const int64_t vocab = s->c->vocab;
    const int owner = dist_owns(s, s->pos);
    const int64_t kpos = s->kv_pos, kend = kpos + (owner ? n : 0); /* this rank's KV-store positions */
    /* GLM-4V: RoPE positions of their own (shared by the image rows) and the image's embedding rows */
    const mtok_chunk c = {.ids = ids, .n = n, .pos = s->pos, .kv = s->kv, .kv_pos = kpos, .append = owner,
                          .rope_pos = s->rpos ? s->rpos + s->pos : NULL, .embeds = emb, .embeds_first = emb_first,
                          .embeds_n = emb_n};
    const size_t rows = (size_t)(n * s->c->hidden);
    float *a = be->tensor(st, MTOK_T_A).data; /* the projections' outputs the tensor-parallel sums complete */
    const mtok_gather gather = {gather_logits, s}, *split = s->lay.tp > 1 ? &gather : NULL;
    int rc;

    if ((rc = ids_in_vocab(s, ids, n, s->pos))) return rc;
    if ((rc = be->embed(st, &c))) return rc;                                  /* x = embed(ids) | image rows */
    if ((rc = be->rope_table(st, &c))) return rc;                             /* RoPE angles of the chunk */
    /* the KV blocks attention will read, layer 0 first; each layer queues the next one's before its
     * own attention runs, so the next layer's cold blocks are in flight while this one computes */
    if ((rc = attn_plan(s, 0, kend, kpos))) return rc;
    for (int64_t l = 0; l < s->c->n_layers; l++) {
        /* attention block */
        if ((rc = be->norm(st, &c, l, MTOK_NORM_ATTN))) return rc;            /* a = rmsnorm(x) */
        if ((rc = be->qkv(st, &c, l))) return rc;                             /* q, k, v; RoPE; KV append */
        if (l + 1 < s->c->n_layers && (rc = attn_plan(s, l + 1, kend, kpos))) return rc;
        /* queries sit at kpos.. in this rank's positions: after every key it holds from earlier
         * spans, and causally aligned with the chunk's own keys when it owns them */
        if ((rc = attn_layer(s, l, kpos, n))) return rc;                      /* partials (o, m, d) */
        if ((rc = dist_cp_merge(s, n))) return rc;                            /* context parallel */
        if ((rc = be->attn_out(st, &c, l, s->part))) return rc;               /* a = (o/d)·Woᵀ */
        if ((rc = dist_tp_sum(s, a, rows))) return rc;                        /* tensor parallel */
        if ((rc = be->residual(st, &c, l, MTOK_BLOCK_ATTN))) return rc;       /* x += a */
        /* MLP block */
        if ((rc = be->norm(st, &c, l, MTOK_NORM_MLP))) return rc;             /* a = rmsnorm(x) */
        if ((rc = be->mlp(st, &c, l))) return rc;                             /* a = swiglu(a)·Wdᵀ */
        if ((rc = dist_tp_sum(s, a, rows))) return rc;                        /* tensor parallel */
        if ((rc = be->residual(st, &c, l, MTOK_BLOCK_MLP))) return rc;        /* x += a */
    }

    /* output: every row for `mtok logits`, else only the last one (generation needs no more); a
     * tensor-parallel rank computes its vocabulary rows and gathers the rest */
    if (all_logits) {
        if ((rc = be->logits(st, &c, 0, n, all_logits, split))) return rc;
    } else if (want_last && (rc = be->logits(st, &c, n - 1, 1, s->logits, split))) {
        return rc;
    }
    if ((rc = be->chunk_end(st, &c))) return rc; /* logits, KV store and checks final from here on */
    if (all_logits && want_last)
        memcpy(s->logits, all_logits + (size_t)(n - 1) * vocab, (size_t)vocab * sizeof(float));
    s->pos += n;
    s->kv_pos = kend;
    s->computed += n;
    return mtok_ids_append(&s->ids, ids, (size_t)n);
}

/* Runs n tokens on this rank, in chunks that end at the prefill chunk size and at span boundaries. */
int forward_run(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits) {
    return forward_run_ex(s, ids, n, NULL, 0, 0, all_logits);
}
int forward_run_ex(mtok_session *s, const int32_t *ids, int64_t n, const float *emb, int64_t emb_first,
                   int64_t emb_n, float *all_logits) {
    const int64_t start = s->pos;
    for (int64_t i = 0; i < n;) {
        int64_t nc = n - i < s->chunk ? n - i : s->chunk, span_left = dist_span_end(s, s->pos) - s->pos;
        if (nc > span_left) nc = span_left;
        float *out = all_logits ? all_logits + (size_t)i * s->c->vocab : NULL;
        /* the part of the embedding rows [emb_first, emb_first + emb_n) inside this chunk [i, i + nc) */
        const int64_t lo = emb && emb_first > i ? emb_first : i;
        const int64_t hi = emb && emb_first + emb_n < i + nc ? emb_first + emb_n : i + nc;
        const float *ce = emb && lo < hi ? emb + (size_t)(lo - emb_first) * (size_t)s->c->hidden : NULL;
        int rc = forward_chunk(s, ids + i, nc, ce, ce ? lo - i : 0, ce ? hi - lo : 0, out, i + nc == n);
        if (rc) {
            /* leave the session as it was before this call: a failed request loses nothing */
            s->pos = start;
            s->ids.n = (size_t)start;
            s->kv_pos = dist_local_tokens(s, start);
            kvs_truncate(s->kv, s->kv_pos);
            s->be->kv_forget(s->bs, s->kv_pos);
            return rc;
        }
        i += nc;
    }
    return 0;
}

int mtok_forward(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits) {
    const mtok_forward_params p = {.ids = ids, .n = n, .all_logits = all_logits};
    return mtok_forward_ex(s, &p);
}

const mtok_config *mtok_session_config(const mtok_session *s) { return s->c; }
const char *mtok_session_device(const mtok_session *s) { return s->device; }

void mtok_session_set_hook(mtok_session *s, mtok_tensor_hook fn, void *user) { s->hook = (mtok_hook){fn, user}; }

int mtok_session_profile(mtok_session *s, int on) { return s->be->profile(s->bs, on); }
int mtok_session_stage_times(const mtok_session *s, mtok_stage_times *out) { return s->be->stage_times(s->bs, out); }

/* ---- explicit positions and embedding rows (GLM-4V, docs/VISION.md) ----
 * The image's rows share one RoPE position, so after an image the position of a token is not its
 * slot. The positions live in s->rpos only once they differ from the slots: a text-only session
 * never allocates them and runs exactly the code it ran before. */
static int rope_pos_reserve(mtok_session *s, int64_t n) {
    if (n <= s->rpos_cap) return 0;
    int64_t cap = s->rpos_cap ? s->rpos_cap : 256;
    while (cap < n) cap *= 2;
    if (cap > s->ctx) cap = s->ctx > n ? s->ctx : n;
    int64_t *r = realloc(s->rpos, (size_t)cap * sizeof *r);
    if (!r) return mtok_err(MTOK_ERESOURCE, "out of memory for %lld RoPE positions", (long long)cap);
    if (!s->rpos)
        for (int64_t t = 0; t < s->pos; t++) r[t] = t; /* the tokens held so far sat at their slots */
    s->rpos = r;
    s->rpos_cap = cap;
    return 0;
}

int mtok_forward_ex(mtok_session *s, const mtok_forward_params *p) {
    const int32_t *ids = p->ids;
    const int64_t n = p->n, start = s->pos;
    if (n <= 0) return mtok_err(MTOK_EUSAGE, "forward: no tokens");
    if (s->pos + n > s->ctx)
        return mtok_err(MTOK_EINPUT, "%lld tokens at position %lld exceed the context limit of %lld tokens (--ctx)",
                        (long long)n, (long long)s->pos, (long long)s->ctx);
    if (p->embeds && (p->embed_n <= 0 || p->embed_first < 0 || p->embed_first > n - p->embed_n))
        return mtok_err(MTOK_EUSAGE, "forward: embedding rows [%lld, +%lld) outside the call's %lld tokens",
                        (long long)p->embed_first, (long long)p->embed_n, (long long)n);
    if (p->embeds && s->img_hi > s->img_lo)
        return mtok_err(MTOK_EUSAGE, "one image per conversation: the session already holds image rows at slots "
                        "[%lld, %lld)", (long long)s->img_lo, (long long)s->img_hi);
    /* explicit positions: each >= 0, never decreasing, from the last held token's on */
    const int64_t prev = s->pos > 0 ? session_rope_next(s) - 1 : 0;
    int custom = s->rpos != NULL; /* positions differ from slots once they did */
    for (int64_t t = 0; p->pos && t < n; t++) {
        const int64_t lo = t ? p->pos[t - 1] : prev;
        if (p->pos[t] < lo || p->pos[t] > MTOK_MAX_CTX)
            return mtok_err(MTOK_EUSAGE, "forward: RoPE position %lld of token %lld is out of order or range (at least "
                            "%lld, at most 2^40)", (long long)p->pos[t], (long long)t, (long long)lo);
        if (p->pos[t] != start + t) custom = 1;
    }
    /* checked before the other ranks are told, so a bad id loses nothing */
    int rc = ids_in_vocab(s, ids, n, s->pos);
    if (!rc && s->world && (custom || p->embeds))
        rc = mtok_err(MTOK_EUSAGE, "image input (GLM-4V rows and positions) is not supported in parallel runs "
                      "(--tp/--cp) yet");
    if (rc) return rc;
    const int had = s->rpos != NULL;
    if (custom) {
        if ((rc = rope_pos_reserve(s, start + n))) return rc;
        const int64_t next = session_rope_next(s);
        for (int64_t t = 0; t < n; t++) s->rpos[start + t] = p->pos ? p->pos[t] : next + t;
    }
    rc = dist_announce(s, DIST_FORWARD, n, ids, p->all_logits != NULL);
    if (!rc) rc = forward_run_ex(s, ids, n, p->embeds, p->embed_first, p->embed_n, p->all_logits);
    if (!rc && p->embeds) s->img_lo = start + p->embed_first, s->img_hi = s->img_lo + p->embed_n;
    if (rc && !had) rope_pos_trim(s, 0); /* the call changed nothing: back to the identity */
    /* in a parallel run the other ranks are part-way through the same call: they cannot be rolled
     * back in step, so an error there ends the job with the message */
    if (rc && s->world) dist_fail(s, rc);
    return rc;
}
