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
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "../kvstore/kvstore.h"

struct mtok_session {
    const mtok_model *m;
    const mtok_config *c;
    int64_t ctx, chunk, pos;
    int threads;
    kvs_cache *kv;
    /* scratch, each [chunk][width] */
    float *x, *a, *q, *k, *v, *att, *gate, *up;
    float *cs, *sn; /* [chunk][rope_dim/2] */
    float *logits;  /* [vocab] of the last position */
};

static void *xalloc(size_t n) { return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64); }

int mtok_session_create(const mtok_model *m, const mtok_session_params *p, mtok_session **out) {
    *out = NULL;
    const mtok_config *c = &m->cfg;
    mtok_session *s = calloc(1, sizeof *s);
    if (!s) return mtok_err(MTOK_ERESOURCE, "out of memory creating a session");
    s->m = m;
    s->c = c;
    s->ctx = p && p->ctx > 0 ? p->ctx : c->max_ctx;
    s->chunk = p && p->prefill_chunk > 0 ? p->prefill_chunk : 256;
    s->threads = p && p->threads > 0 ? p->threads : omp_get_num_procs();
    int64_t block = p && p->kv_block > 0 ? p->kv_block : 128;
    int64_t qd = c->n_heads * c->head_dim, kd = c->n_kv_groups * c->head_dim, C = s->chunk;
    s->x = xalloc(C * c->hidden);
    s->a = xalloc(C * (c->hidden > qd ? c->hidden : qd));
    s->q = xalloc(C * qd);
    s->k = xalloc(C * kd);
    s->v = xalloc(C * kd);
    s->att = xalloc(C * qd);
    s->gate = xalloc(C * c->ffn);
    s->up = xalloc(C * c->ffn);
    s->cs = xalloc(C * (c->rope_dim / 2 + 1));
    s->sn = xalloc(C * (c->rope_dim / 2 + 1));
    s->logits = xalloc(c->vocab);
    if (!s->x || !s->a || !s->q || !s->k || !s->v || !s->att || !s->gate || !s->up || !s->cs || !s->sn ||
        !s->logits) {
        mtok_session_free(s);
        return mtok_err(MTOK_ERESOURCE, "out of memory for prefill scratch (chunk %lld tokens)", (long long)C);
    }
    kvs_params kp = {c->n_layers, c->n_kv_groups, c->head_dim, s->ctx, block};
    int rc = kvs_create(&kp, &s->kv);
    if (rc) {
        mtok_session_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void mtok_session_free(mtok_session *s) {
    if (!s) return;
    kvs_free(s->kv);
    free(s->x), free(s->a), free(s->q), free(s->k), free(s->v), free(s->att);
    free(s->gate), free(s->up), free(s->cs), free(s->sn), free(s->logits);
    free(s);
}

void mtok_session_reset(mtok_session *s) {
    s->pos = 0;
    kvs_reset(s->kv);
}
int mtok_session_truncate(mtok_session *s, int64_t n) {
    if (n < 0 || n > s->pos)
        return mtok_err(MTOK_EUSAGE, "truncate to %lld tokens: session holds %lld", (long long)n, (long long)s->pos);
    s->pos = n;
    return kvs_truncate(s->kv, n);
}
int64_t mtok_session_pos(const mtok_session *s) { return s->pos; }
int64_t mtok_session_ctx(const mtok_session *s) { return s->ctx; }
const float *mtok_session_logits(const mtok_session *s) { return s->logits; }
uint64_t mtok_session_kv_bytes(const mtok_session *s) { return kvs_bytes(s->kv); }

/* ---- attention: o[t][h] = softmax_s≤pos_t(q·k_s/sqrt(D)) · v_s, query head h reads group h/(H/G) ---- */
static int attention(mtok_session *s, int64_t layer, int64_t pos, int64_t n) {
    const mtok_config *c = s->c;
    const int64_t H = c->n_heads, D = c->head_dim, G = c->n_kv_groups, per_group = H / G;
    const int64_t B = kvs_block_tokens(s->kv), row = G * D;
    const float scale = (float)(1.0 / sqrt((double)D));
    int err = 0;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(s->threads)
    for (int64_t t = 0; t < n; t++) {
        for (int64_t h = 0; h < H; h++) {
            const int64_t p = pos + t, g = h / per_group;
            const float *q = s->q + (size_t)t * H * D + h * D;
            float *acc = s->att + (size_t)t * H * D + h * D;
            float m = -INFINITY, l = 0.0f;
            memset(acc, 0, (size_t)D * sizeof *acc);
            for (int64_t b = 0; b <= p / B; b++) {
                kvs_block blk;
                if (kvs_get_block(s->kv, layer, b, &blk)) {
                    err = 1;
                    break;
                }
                int64_t upto = p - blk.pos0 + 1; /* causal: positions ≤ p */
                int64_t nb = blk.n < upto ? blk.n : upto;
                mk_attn_accum(q, blk.k + g * D, blk.v + g * D, nb, row, D, scale, acc, &m, &l);
            }
            const float inv = l > 0 ? 1.0f / l : 0.0f;
            for (int64_t d = 0; d < D; d++) acc[d] *= inv;
        }
    }
    return err ? mtok_err(MTOK_EINTERNAL, "attention: KV block missing in layer %lld", (long long)layer) : 0;
}

/* ---- one chunk of n ≤ chunk tokens through every layer; logits into out (ld vocab) if non-NULL ---- */
static int forward_chunk(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits, int want_last) {
    const mtok_config *c = s->c;
    const mtok_weights *w = &s->m->w;
    const int64_t E = c->hidden, qd = c->n_heads * c->head_dim, kd = c->n_kv_groups * c->head_dim;
    const int64_t F = c->ffn, half = c->rope_dim / 2;
    int rc;

    /* embedding */
    for (int64_t t = 0; t < n; t++) {
        if (ids[t] < 0 || ids[t] >= c->vocab)
            return mtok_err(MTOK_EINPUT, "token id %d at position %lld is outside the vocabulary [0, %lld)",
                            ids[t], (long long)(s->pos + t), (long long)c->vocab);
        mk_embed(s->x + t * E, &w->embed, ids[t]);
    }
    /* RoPE angles for this chunk's positions, computed once in double precision */
    for (int64_t t = 0; t < n; t++)
        mk_rope_table(s->cs + t * half, s->sn + t * half, c->rope_dim, c->rope_base, s->pos + t);

    for (int64_t l = 0; l < c->n_layers; l++) {
        const mtok_layer *L = &w->layers[l];
        /* attention block */
        for (int64_t t = 0; t < n; t++) mk_rmsnorm(s->a + t * E, s->x + t * E, &L->attn_norm, E, c->norm_eps);
        mk_matmul(s->q, qd, s->a, E, n, &L->wq, L->bq.data ? &L->bq : NULL);
        mk_matmul(s->k, kd, s->a, E, n, &L->wk, L->bk.data ? &L->bk : NULL);
        mk_matmul(s->v, kd, s->a, E, n, &L->wv, L->bv.data ? &L->bv : NULL);
        for (int64_t t = 0; t < n; t++) {
            mk_rope(s->q + t * qd, c->n_heads, c->head_dim, c->rope_dim, s->cs + t * half, s->sn + t * half);
            mk_rope(s->k + t * kd, c->n_kv_groups, c->head_dim, c->rope_dim, s->cs + t * half, s->sn + t * half);
        }
        if ((rc = kvs_write(s->kv, l, s->pos, n, s->k, s->v, kd))) return rc;
        if ((rc = attention(s, l, s->pos, n))) return rc;
        mk_matmul(s->a, E, s->att, qd, n, &L->wo, NULL);
        for (int64_t i = 0; i < n * E; i++) s->x[i] += s->a[i];
        /* MLP block: SwiGLU, gate rows first */
        for (int64_t t = 0; t < n; t++) mk_rmsnorm(s->a + t * E, s->x + t * E, &L->mlp_norm, E, c->norm_eps);
        mk_matmul(s->gate, F, s->a, E, n, &L->w_gate, NULL);
        mk_matmul(s->up, F, s->a, E, n, &L->w_up, NULL);
        mk_swiglu(s->gate, s->gate, s->up, n * F);
        mk_matmul(s->a, E, s->gate, F, n, &L->w_down, NULL);
        for (int64_t i = 0; i < n * E; i++) s->x[i] += s->a[i];
    }

    /* output: every row for `mtok logits`, else only the last one (generation needs no more) */
    if (all_logits) {
        for (int64_t t = 0; t < n; t++) mk_rmsnorm(s->a + t * E, s->x + t * E, &w->final_norm, E, c->norm_eps);
        mk_matmul(all_logits, c->vocab, s->a, E, n, &w->output, NULL);
        if (want_last) memcpy(s->logits, all_logits + (size_t)(n - 1) * c->vocab, (size_t)c->vocab * sizeof(float));
    } else if (want_last) {
        mk_rmsnorm(s->a, s->x + (n - 1) * E, &w->final_norm, E, c->norm_eps);
        mk_matmul(s->logits, c->vocab, s->a, E, 1, &w->output, NULL);
    }
    s->pos += n;
    return 0;
}

int mtok_forward(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits) {
    if (n <= 0) return mtok_err(MTOK_EUSAGE, "forward: no tokens");
    if (s->pos + n > s->ctx)
        return mtok_err(MTOK_EINPUT, "%lld tokens at position %lld exceed the context limit of %lld tokens (--ctx)",
                        (long long)n, (long long)s->pos, (long long)s->ctx);
    const int64_t start = s->pos;
    for (int64_t i = 0; i < n; i += s->chunk) {
        int64_t nc = n - i < s->chunk ? n - i : s->chunk;
        float *out = all_logits ? all_logits + (size_t)i * s->c->vocab : NULL;
        int rc = forward_chunk(s, ids + i, nc, out, i + nc == n);
        if (rc) {
            /* leave the session as it was before this call: a failed request loses nothing */
            s->pos = start;
            kvs_truncate(s->kv, start);
            return rc;
        }
    }
    return 0;
}

const mtok_config *mtok_session_config(const mtok_session *s) { return s->c; }
