/* session.h — the session struct shared by the forward pass (core/forward.c) and attention over
 * the KV store (core/attn.c). Internal to libmtok; the public API is mtok_session_* in mtok.h. */
#ifndef MTOK_SESSION_H
#define MTOK_SESSION_H

#include "backend.h"
#include "model.h"
#include "../kvstore/kvstore.h"
#include "../parallel/layout.h"
#include "vision.h"

typedef struct attn_state attn_state; /* core/attn.c: policy state (selection buffers, counters) */

struct mtok_session {
    const mtok_model *m;
    const mtok_config *c;
    int64_t ctx, chunk, pos;
    int threads;           /* the compute threads, passed to the backend (never set process-wide) */
    char device[16];       /* "cpu" or "cuda:N" (mtok_session_device) */
    /* this rank's share of the attention heads (all of them on one rank; tensor parallel: the
     * heads of this rank's KV groups). Attention reads only these. */
    int64_t H, G, D;       /* query heads, KV groups, head_dim */
    kvs_cache *kv;
    attn_state *attn;
    mtok_ids ids;          /* the token ids at positions 0..pos-1 (saved with the KV) */
    /* GLM-4V (docs/VISION.md): the RoPE position of each held token. NULL while every position
     * equals its slot (all text-only runs: nothing changes for them); else [rpos_cap], valid for
     * slots 0..pos-1. The next token's position (rope_next) is rpos[pos-1] + 1. */
    int64_t *rpos;
    int64_t rpos_cap;
    /* slots whose embeddings came from override rows (the image): [img_lo, img_hi); empty when equal.
     * Their ids are placeholders, so they cannot be recomputed from ids or matched as text. */
    int64_t img_lo, img_hi;
    int64_t computed;      /* tokens run through the model since creation */
    /* the compute backend (core/backend.h): its weights, its state with the activations of a chunk */
    const mtok_backend_ops *be;
    mtok_backend_weights *bw;
    mtok_backend_state *bs;
    mtok_hook hook;        /* mtok_session_set_hook */
    mtok_partials *part;   /* the backend's attention partials of the current layer */
    float *logits;  /* [vocab] of the last position (host: what mtok_session_logits returns) */
    /* parallel runs (core/dist.c); all NULL / 0 / 1 on one rank */
    struct mp_comm *world, *tp, *cp;
    mp_layout lay;         /* this rank's place in the job (parallel/layout.h); rank 0 of 1 alone */
    int64_t kv_pos;        /* positions held by this rank's KV store (== pos on one rank) */
    float *gbuf;           /* all-gather scratch */
    size_t gbuf_cap;       /* floats */
};

/* ---- core/dist.c: the parallel parts of the forward pass (docs/PARALLEL.md) ---- */
int dist_setup(mtok_session *s, const mtok_session_params *p);
void dist_free(mtok_session *s);
/* Positions among [0, n) that this rank's KV store holds. */
int64_t dist_local_tokens(const mtok_session *s, int64_t n);
/* 1 when this rank stores the KV of position pos. */
int dist_owns(const mtok_session *s, int64_t pos);
/* The first position after pos that starts another context-parallel span (INT64_MAX on one rank). */
int64_t dist_span_end(const mtok_session *s, int64_t pos);
/* Tensor parallel: sums buf [n] over the tensor-parallel ranks (nothing on one rank). */
int dist_tp_sum(mtok_session *s, float *buf, size_t n);
/* Context parallel: merges the attention partials s->part of n query rows over the
 * context-parallel ranks by the log-sum-exp rule (nothing on one rank). */
int dist_cp_merge(mtok_session *s, int64_t n);
/* Tensor parallel: local [n][V_local] logits -> out [n][vocab] (every rank receives all). */
int dist_gather_logits(mtok_session *s, const float *local, int64_t n, float *out);
/* Leader side of a call the followers must mirror; 0 on one rank or on a follower. */
enum { DIST_FORWARD = 1, DIST_RESET, DIST_TRUNCATE, DIST_EXIT };
int dist_announce(mtok_session *s, int op, int64_t arg, const int32_t *ids, int want_all);
/* Ends the whole job after an error that left the ranks out of step (never returns under MPI). */
void dist_fail(mtok_session *s, int rc);
/* Implemented in core/forward.c, used by the followers' loop (core/follow.c). Runs ids at the
 * positions s->rpos holds for slots pos.. (pos + t when s->rpos is NULL); rows [emb_first,
 * emb_first + emb_n) of the call take emb's rows instead of their ids' embeddings (emb NULL: none). */
int forward_run(mtok_session *s, const int32_t *ids, int64_t n, float *all_logits);
int forward_run_ex(mtok_session *s, const int32_t *ids, int64_t n, const float *emb, int64_t emb_first,
                   int64_t emb_n, float *all_logits);
/* The RoPE position the next token gets (pos without images). */
int64_t session_rope_next(const mtok_session *s);
/* 1 when the session holds an image or positions that differ from the slots. */
int session_has_layout(const mtok_session *s);

/* mtok_forward_ex and mtok_forward_params are declared in core/vision.h until they move to mtok.h */
void session_reset_local(mtok_session *s);
int session_truncate_local(mtok_session *s, int64_t n);

/* ---- core/attn.c ----
 * Positions here are the session's KV-store positions (the same as sequence positions on one
 * rank). attn_create/attn_free manage s->attn from the session parameters. attn_plan announces
 * that attention over `layer` will run for queries from q_pos0 with keys up to kv_end (the store
 * may start reading cold blocks). attn_layer computes, for the n query rows of the backend's
 * queries (MTOK_T_Q, post-RoPE), the online-softmax partials over the layer's KV blocks into
 * s->part (the backend's attn_begin / attn_blocks / attn_end); the backend's attn_out normalises
 * them. Between the two a caller may merge partials from other ranks (context parallel). */
#define ATTN_TOPK_DEFAULT 64          /* blocks per KV group (--kv-topk) */
#define ATTN_TOPK_WINDOW_DEFAULT 1024  /* tokens: the recent window topk always attends (--kv-window) */
int attn_create(mtok_session *s, const mtok_session_params *p);
void attn_free(mtok_session *s);
int attn_plan(mtok_session *s, int64_t layer, int64_t kv_end, int64_t q_pos0);
int attn_layer(mtok_session *s, int64_t layer, int64_t q_pos0, int64_t n);
/* Adds the policy's accounting (bytes attended vs exact, audit results) to out. */
void attn_kv_stats(const mtok_session *s, mtok_kv_stats *out);

#endif
