/* follow.c — the followers of a parallel run (docs/PARALLEL.md): every rank other than 0 sits in
 * mtok_session_serve() and mirrors the forward, reset and truncate calls that the leader announces
 * (core/dist.c, dist_announce). It lives above both the forward pass (core/forward.c) and the
 * parallel plumbing (core/dist.c) so that neither of those calls the other back. */
#include <stdlib.h>

#include "session.h"
#include "../parallel/parallel.h"

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
