/* dist.c — the parallel parts of a session (docs/PARALLEL.md): who stores which positions, the
 * tensor-parallel sums and gathers, the context-parallel log-sum-exp merge, and the little
 * protocol by which rank 0 leads the other ranks through the same calls.
 *
 * The leader (world rank 0) alone tokenizes, samples, prints and writes files; every other rank
 * sits in mtok_session_serve() and mirrors the leader's forward/reset/truncate calls, which the
 * leader announces with one broadcast of (op, argument, flags) and, for a forward, the token ids.
 * So the command-line tools run unchanged on rank 0, and sampling needs no agreement. The
 * followers' loop, which calls back into the forward pass, is core/follow.c: this file sits below
 * core/forward.c and calls nothing above it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"
#include "../parallel/parallel.h"

/* The session takes its layout from the communicators it is given (parallel/layout.h's
 * mp_layout_split makes them so for a tp x cp job). */
int dist_setup(mtok_session *s, const mtok_session_params *p) {
    mp_layout_init(&s->lay, 1, 1, 0, 1, p ? p->cp_span : 0); /* one rank: cannot fail */
    if (!p || !p->world || mp_size(p->world) == 1) {
        if (s->m->tp.size > 1)
            return mtok_err(MTOK_EUSAGE, "the model was loaded as a %d-way tensor-parallel slice but the session has "
                            "no communicator", s->m->tp.size);
        return 0;
    }
    s->world = p->world;
    s->lay.rank = mp_rank(p->world), s->lay.size = mp_size(p->world);
    if (p->tp_comm && mp_size(p->tp_comm) > 1) {
        s->tp = p->tp_comm;
        s->lay.tp = mp_size(p->tp_comm), s->lay.tp_rank = mp_rank(p->tp_comm);
    }
    if (s->lay.tp != s->m->tp.size || s->lay.tp_rank != s->m->tp.rank)
        return mtok_err(MTOK_EUSAGE, "tensor-parallel communicator (rank %d of %d) does not match the model slice "
                        "(rank %d of %d)", s->lay.tp_rank, s->lay.tp, s->m->tp.rank, s->m->tp.size);
    if (p->cp_comm && mp_size(p->cp_comm) > 1) {
        s->cp = p->cp_comm;
        s->lay.cp_rank = mp_rank(p->cp_comm), s->lay.cp = mp_size(p->cp_comm);
        const int64_t B = p->kv_block > 0 ? p->kv_block : KVS_DEFAULT_BLOCK_TOKENS;
        if (s->lay.cp_span % B)
            return mtok_err(MTOK_EUSAGE, "context-parallel span %lld is not a multiple of the KV block (%lld tokens)",
                            (long long)s->lay.cp_span, (long long)B);
    }
    return 0;
}

void dist_free(mtok_session *s) {
    free(s->gbuf);
    s->gbuf = NULL;
    s->gbuf_cap = 0;
}

static float *gbuf(mtok_session *s, size_t n) {
    if (n > s->gbuf_cap) {
        float *b = realloc(s->gbuf, n * sizeof *b);
        if (!b) return NULL;
        s->gbuf = b;
        s->gbuf_cap = n;
    }
    return s->gbuf;
}

int64_t dist_local_tokens(const mtok_session *s, int64_t n) { return mp_layout_local_tokens(&s->lay, n); }

int dist_owns(const mtok_session *s, int64_t pos) { return mp_layout_owns(&s->lay, pos); }

int64_t dist_span_end(const mtok_session *s, int64_t pos) { return mp_layout_span_end(&s->lay, pos); }

int dist_tp_sum(mtok_session *s, float *buf, size_t n) {
    return s->tp ? mp_allreduce_sum(s->tp, buf, n, MP_F32) : 0;
}

/* Each rank contributes (m, l, acc) of every query row over the positions it holds; the rows
 * combine as m = max m_r, l = Σ l_r·e^(m_r−m), acc = Σ acc_r·e^(m_r−m) (mk_attn_merge). A rank
 * that holds no key yet contributes m = −inf, l = 0 and drops out. */
int dist_cp_merge(mtok_session *s, int64_t n) {
    if (!s->cp) return 0;
    mtok_partials *p = s->part;
    const int64_t rows = n * s->H, D = s->D, per = rows * (D + 2);
    /* the exchange goes through host memory (mp_allgather over MPI): the CPU backend's partials are
     * host tensors; a device backend exchanges its own over NCCL before calling merge */
    if (p->mem != MTOK_MEM_HOST)
        return mtok_err(MTOK_EINTERNAL, "context-parallel merge: partials in device memory need a device collective");
    float *all = gbuf(s, (size_t)(per * (s->lay.cp + 1)));
    if (!all) return mtok_err(MTOK_ERESOURCE, "out of memory for the context-parallel merge");
    float *mine = all + per * s->lay.cp;
    memcpy(mine, p->m, (size_t)rows * sizeof *mine);
    memcpy(mine + rows, p->d, (size_t)rows * sizeof *mine);
    memcpy(mine + 2 * rows, p->o, (size_t)(rows * D) * sizeof *mine);
    int rc = mp_allgather(s->cp, mine, (size_t)per, all, NULL, MP_F32);
    if (rc) return rc;
    /* merge in rank order on every rank, so all ranks hold bit-identical results: rank 0's partials,
     * then each other rank's by the backend's log-sum-exp merge */
    memcpy(p->m, all, (size_t)rows * sizeof *p->m);
    memcpy(p->d, all + rows, (size_t)rows * sizeof *p->d);
    memcpy(p->o, all + 2 * rows, (size_t)(rows * D) * sizeof *p->o);
    for (int r = 1; r < s->lay.cp; r++) {
        float *o = all + per * r;
        const mtok_partials from = {.o = o + 2 * rows, .m = o, .d = o + rows, .rows = rows, .D = D,
                                    .mem = MTOK_MEM_HOST};
        s->be->merge(s->bs, p, &from, rows);
    }
    return 0;
}

int dist_gather_logits(mtok_session *s, const float *local, int64_t n, float *out) {
    const int P = s->lay.tp;
    const int64_t vocab = s->c->vocab;
    size_t counts[64];
    if (P > 64) return mtok_err(MTOK_EUSAGE, "tensor parallelism wider than 64 ranks");
    int64_t total = 0;
    for (int r = 0; r < P; r++) {
        int64_t v0, Vr;
        mtok_tp_split(vocab, r, P, &v0, &Vr);
        counts[r] = (size_t)(Vr * n);
        total += Vr;
    }
    float *g = gbuf(s, (size_t)(total * n));
    if (!g) return mtok_err(MTOK_ERESOURCE, "out of memory gathering logits");
    int rc = mp_allgather(s->tp, local, counts[s->m->tp.rank], g, counts, MP_F32);
    if (rc) return rc;
    /* rank r's block is [n][V_r]: transpose the blocks into rows of the whole vocabulary */
    const float *src = g;
    for (int r = 0; r < P; r++) {
        int64_t v0, Vr;
        mtok_tp_split(vocab, r, P, &v0, &Vr);
        for (int64_t t = 0; t < n; t++) memcpy(out + t * vocab + v0, src + t * Vr, (size_t)Vr * sizeof *out);
        src += counts[r];
    }
    return 0;
}

/* ---- leader and followers ---- */

int dist_announce(mtok_session *s, int op, int64_t arg, const int32_t *ids, int want_all) {
    if (!s->world || s->lay.rank != 0) return 0;
    int64_t h[3] = {op, arg, want_all};
    int rc = mp_bcast(s->world, h, 3, MP_I64, 0);
    if (!rc && op == DIST_FORWARD) rc = mp_bcast(s->world, (void *)ids, (size_t)arg, MP_I32, 0);
    if (op == DIST_EXIT) s->world = NULL; /* the followers are gone: nothing more to announce */
    return rc;
}

void dist_fail(mtok_session *s, int rc) {
    if (s->world) mp_abort(s->world, rc, mtok_errmsg());
}

int mtok_session_is_follower(const mtok_session *s) { return s->world && s->lay.rank != 0; }
