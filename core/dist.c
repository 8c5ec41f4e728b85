/* dist.c — the parallel parts of a session (docs/PARALLEL.md): who stores which positions, the
 * tensor-parallel sums and gathers, the context-parallel log-sum-exp merge, and the little
 * protocol by which rank 0 leads the other ranks through the same calls.
 *
 * The leader (world rank 0) alone tokenizes, samples, prints and writes files; every other rank
 * sits in mtok_session_serve() and mirrors the leader's forward/reset/truncate calls, which the
 * leader announces with one broadcast of (op, argument, flags) and, for a forward, the token ids.
 * So the command-line tools run unchanged on rank 0, and sampling needs no agreement. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"
#include "../parallel/parallel.h"

int dist_setup(mtok_session *s, const mtok_session_params *p) {
    s->leader = 1;
    s->tp_size = 1, s->cp_rank = 0, s->cp_size = 1;
    s->cp_span = p && p->cp_span > 0 ? p->cp_span : 4096;
    if (!p || !p->world || mp_size(p->world) == 1) {
        if (s->m->tp.size > 1)
            return mtok_err(MTOK_EUSAGE, "the model was loaded as a %d-way tensor-parallel slice but the session has "
                            "no communicator", s->m->tp.size);
        return 0;
    }
    s->world = p->world;
    s->leader = mp_rank(p->world) == 0;
    if (p->tp_comm && mp_size(p->tp_comm) > 1) {
        s->tp = p->tp_comm;
        s->tp_size = mp_size(p->tp_comm);
    }
    if (s->tp_size != s->m->tp.size || (s->tp && mp_rank(s->tp) != s->m->tp.rank))
        return mtok_err(MTOK_EUSAGE, "tensor-parallel communicator (rank %d of %d) does not match the model slice "
                        "(rank %d of %d)", s->tp ? mp_rank(s->tp) : 0, s->tp_size, s->m->tp.rank, s->m->tp.size);
    if (p->cp_comm && mp_size(p->cp_comm) > 1) {
        s->cp = p->cp_comm;
        s->cp_rank = mp_rank(p->cp_comm), s->cp_size = mp_size(p->cp_comm);
        const int64_t B = p->kv_block > 0 ? p->kv_block : 128;
        if (s->cp_span % B)
            return mtok_err(MTOK_EUSAGE, "context-parallel span %lld is not a multiple of the KV block (%lld tokens)",
                            (long long)s->cp_span, (long long)B);
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

/* Positions [k*span, (k+1)*span) belong to context-parallel rank k % cp_size. */
int64_t dist_local_tokens(const mtok_session *s, int64_t n) {
    if (s->cp_size <= 1) return n;
    const int64_t cycle = s->cp_span * s->cp_size, rem = n % cycle - (int64_t)s->cp_rank * s->cp_span;
    return n / cycle * s->cp_span + (rem < 0 ? 0 : rem > s->cp_span ? s->cp_span : rem);
}

int dist_owns(const mtok_session *s, int64_t pos) {
    return s->cp_size <= 1 || (pos / s->cp_span) % s->cp_size == s->cp_rank;
}

int64_t dist_span_end(const mtok_session *s, int64_t pos) {
    return s->cp_size <= 1 ? INT64_MAX : (pos / s->cp_span + 1) * s->cp_span;
}

int dist_tp_sum(mtok_session *s, float *buf, size_t n) {
    return s->tp ? mp_allreduce_sum(s->tp, buf, n, MP_F32) : 0;
}

/* Each rank contributes (m, l, acc) of every query row over the positions it holds; the rows
 * combine as m = max m_r, l = Σ l_r·e^(m_r−m), acc = Σ acc_r·e^(m_r−m) (mk_attn_merge). A rank
 * that holds no key yet contributes m = −inf, l = 0 and drops out. */
int dist_cp_merge(mtok_session *s, int64_t n) {
    if (!s->cp) return 0;
    const int64_t rows = n * s->H, D = s->D, per = rows * (D + 2);
    float *all = gbuf(s, (size_t)(per * (s->cp_size + 1)));
    if (!all) return mtok_err(MTOK_ERESOURCE, "out of memory for the context-parallel merge");
    float *mine = all + per * s->cp_size;
    memcpy(mine, s->ms, (size_t)rows * sizeof *mine);
    memcpy(mine + rows, s->ls, (size_t)rows * sizeof *mine);
    memcpy(mine + 2 * rows, s->att, (size_t)(rows * D) * sizeof *mine);
    int rc = mp_allgather(s->cp, mine, (size_t)per, all, NULL, MP_F32);
    if (rc) return rc;
    /* merge in rank order on every rank, so all ranks hold bit-identical results */
    const float *r0 = all;
    memcpy(s->ms, r0, (size_t)rows * sizeof *s->ms);
    memcpy(s->ls, r0 + rows, (size_t)rows * sizeof *s->ls);
    memcpy(s->att, r0 + 2 * rows, (size_t)(rows * D) * sizeof *s->att);
    for (int r = 1; r < s->cp_size; r++) {
        const float *o = all + per * r;
        for (int64_t i = 0; i < rows; i++)
            mk_attn_merge(s->att + i * D, s->ms + i, s->ls + i, o + 2 * rows + i * D, o[i], o[rows + i], D);
    }
    return 0;
}

int dist_gather_logits(mtok_session *s, const float *local, int64_t n, float *out) {
    const int P = s->tp_size;
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
    if (!s->world || !s->leader) return 0;
    int64_t h[3] = {op, arg, want_all};
    int rc = mp_bcast(s->world, h, 3, MP_I64, 0);
    if (!rc && op == DIST_FORWARD) rc = mp_bcast(s->world, (void *)ids, (size_t)arg, MP_I32, 0);
    if (op == DIST_EXIT) s->world = NULL; /* the followers are gone: nothing more to announce */
    return rc;
}

void dist_fail(mtok_session *s, int rc) {
    if (s->world) mp_abort(s->world, rc, mtok_errmsg());
}

int mtok_session_is_follower(const mtok_session *s) { return s->world && !s->leader; }

int mtok_session_serve(mtok_session *s) {
    if (!mtok_session_is_follower(s))
        return mtok_err(MTOK_EUSAGE, "mtok_session_serve: only ranks other than 0 of a parallel run serve");
    mtok_ids ids = {0};
    float *all = NULL;
    int rc = 0;
    for (;;) {
        int64_t h[3];
        /* the leader may be idle for long (a chat user typing): wait for commands without a
         * deadline; a dead leader ends the job through mpirun/srun, not through this wait */
        const double t = mp_get_timeout();
        mp_set_timeout(0);
        rc = mp_bcast(s->world, h, 3, MP_I64, 0);
        mp_set_timeout(t);
        if (rc) break;
        if (h[0] == DIST_EXIT) break;
        if (h[0] == DIST_RESET) {
            session_reset_local(s);
            continue;
        }
        if (h[0] == DIST_TRUNCATE) {
            if ((rc = session_truncate_local(s, h[1]))) break;
            continue;
        }
        if (h[0] != DIST_FORWARD || h[1] <= 0) {
            rc = mtok_err(MTOK_EINTERNAL, "unknown command %lld from rank 0", (long long)h[0]);
            break;
        }
        if (ids.cap < (size_t)h[1]) {
            int32_t *v = realloc(ids.v, (size_t)h[1] * sizeof *v);
            if (!v) {
                rc = mtok_err(MTOK_ERESOURCE, "out of memory for %lld token ids", (long long)h[1]);
                break;
            }
            ids.v = v, ids.cap = (size_t)h[1];
        }
        if ((rc = mp_bcast(s->world, ids.v, (size_t)h[1], MP_I32, 0))) break;
        free(all);
        all = NULL;
        if (h[2] && !(all = malloc((size_t)h[1] * (size_t)s->c->vocab * sizeof *all))) {
            rc = mtok_err(MTOK_ERESOURCE, "out of memory for %lld x %lld logits", (long long)h[1],
                          (long long)s->c->vocab);
            break;
        }
        if ((rc = forward_run(s, ids.v, h[1], all))) break;
    }
    free(all);
    mtok_ids_free(&ids);
    if (rc) dist_fail(s, rc);
    s->world = NULL; /* released: freeing this session announces nothing */
    return rc;
}
