/* session.h — the session struct shared by the forward pass (core/forward.c) and attention over
 * the KV store (core/attn.c). Internal to libmtok; the public API is mtok_session_* in mtok.h. */
#ifndef MTOK_SESSION_H
#define MTOK_SESSION_H

#include "model.h"
#include "../kvstore/kvstore.h"

typedef struct attn_state attn_state; /* core/attn.c: policy state (selection buffers, counters) */

struct mtok_session {
    const mtok_model *m;
    const mtok_config *c;
    int64_t ctx, chunk, pos;
    int threads;
    /* this rank's share of the attention heads (all of them on one rank; tensor parallel: the
     * heads of this rank's KV groups). Attention reads only these. */
    int64_t H, G, D;       /* query heads, KV groups, head_dim */
    kvs_cache *kv;
    attn_state *attn;
    mtok_ids ids;          /* the token ids at positions 0..pos-1 (saved with the KV) */
    int64_t computed;      /* tokens run through the model since creation */
    float *ms, *ls;        /* [chunk][H] online-softmax max and denominator */
    /* scratch, each [chunk][width] */
    float *x, *a, *q, *k, *v, *att, *gate, *up;
    float *cs, *sn; /* [chunk][rope_dim/2] */
    float *logits;  /* [vocab] of the last position */
};

/* ---- core/attn.c ----
 * Positions here are the session's KV-store positions (the same as sequence positions on one
 * rank). attn_create/attn_free manage s->attn from the session parameters. attn_plan announces
 * that attention over `layer` will run for queries from q_pos0 with keys up to kv_end (the store
 * may start reading cold blocks). attn_layer computes, for the n query rows in s->q ([n][H*D],
 * post-RoPE), the online-softmax state over the layer's KV: s->ms, s->ls ([n][H]) and the
 * unnormalised s->att ([n][H*D]); attn_normalize divides att by l. Between the two a caller may
 * merge states from other ranks (context parallel, log-sum-exp rule). */
int attn_create(mtok_session *s, const mtok_session_params *p);
void attn_free(mtok_session *s);
int attn_plan(mtok_session *s, int64_t layer, int64_t kv_end, int64_t q_pos0);
int attn_layer(mtok_session *s, int64_t layer, int64_t q_pos0, int64_t n);
void attn_normalize(mtok_session *s, int64_t n);

#endif
