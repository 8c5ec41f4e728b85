/* pool.c — the session pool: N sessions of one model, each holding the tokens of the last request it
 * served, so a book prefilled once can be questioned many times.
 *
 * Invariants (under mu): busy[i] says a request owns sess[i]; only the owner touches a busy session,
 * and sess[i]'s tokens are read here only while it is free. queue holds the waiting requests in
 * arrival order; a request takes a session only when it is at the head of the queue (or the queue is
 * empty), so a late request never overtakes an earlier one.
 *
 * Choice: the free session whose held tokens share the longest prefix with the prompt, compared token
 * by token (two prompts with equal hashes are still different prompts); ties go to the least recently
 * used session, so unrelated documents spread over the pool instead of evicting each other. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "srv.h"

struct srv_waiter {
    int dummy; /* identity only: the queue stores addresses */
};

int srv_pool_init(srv_pool *p, const mtok_model *m, const mtok_session_params *sp, int n, int max_queue) {
    memset(p, 0, sizeof *p);
    p->sess = calloc((size_t)n, sizeof *p->sess);
    p->busy = calloc((size_t)n, sizeof *p->busy);
    p->last_used = calloc((size_t)n, sizeof *p->last_used);
    p->exact = calloc((size_t)n, sizeof *p->exact);
    p->queue = calloc((size_t)max_queue + 1, sizeof *p->queue);
    if (!p->sess || !p->busy || !p->last_used || !p->exact || !p->queue) {
        srv_pool_free(p);
        return mtok_err(MTOK_ERESOURCE, "out of memory for a pool of %d sessions", n);
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    p->n = n, p->max_queue = max_queue;
    for (int i = 0; i < n; i++) {
        int rc = mtok_session_create(m, sp, &p->sess[i]);
        if (rc) {
            srv_pool_free(p);
            return rc;
        }
    }
    p->chunk = mtok_session_chunk(p->sess[0]);
    return 0;
}

void srv_pool_free(srv_pool *p) {
    if (p->sess) {
        for (int i = 0; i < p->n; i++) mtok_session_free(p->sess[i]);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
    }
    free(p->sess);
    free(p->busy);
    free(p->last_used);
    free(p->exact);
    free(p->queue);
    memset(p, 0, sizeof *p);
}

int64_t srv_pool_reusable(const srv_pool *p, int slot, const int32_t *ids, int64_t n) {
    const int32_t *held = mtok_session_tokens(p->sess[slot]);
    int64_t lim = mtok_session_pos(p->sess[slot]);
    if (lim > p->exact[slot]) lim = p->exact[slot];
    if (lim > n) lim = n;
    int64_t lcp = 0;
    while (lcp < lim && held[lcp] == ids[lcp]) lcp++;
    return lcp / p->chunk * p->chunk;
}

/* The free session to give ids to, or -1. */
static int best_free(const srv_pool *p, const int32_t *ids, int64_t n) {
    int best = -1;
    int64_t best_reuse = -1;
    for (int i = 0; i < p->n; i++) {
        if (p->busy[i]) continue;
        const int64_t reuse = srv_pool_reusable(p, i, ids, n);
        if (reuse > best_reuse || (reuse == best_reuse && p->last_used[i] < p->last_used[best])) best = i, best_reuse = reuse;
    }
    return best;
}

static void dequeue(srv_pool *p, srv_waiter *w) {
    for (int i = 0; i < p->n_queue; i++)
        if (p->queue[i] == w) {
            memmove(p->queue + i, p->queue + i + 1, (size_t)(p->n_queue - i - 1) * sizeof *p->queue);
            p->n_queue--;
            return;
        }
}

int srv_pool_acquire(srv_pool *p, const int32_t *ids, int64_t n, volatile int *cancel, int *slot, double *waited_s) {
    const double t0 = srv_now();
    srv_waiter me;
    int rc = SRV_POOL_OK, queued = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (cancel && __atomic_load_n(cancel, __ATOMIC_RELAXED)) {
            rc = SRV_POOL_CANCELLED;
            break;
        }
        const int my_turn = queued ? p->queue[0] == &me : p->n_queue == 0;
        const int s = my_turn ? best_free(p, ids, n) : -1;
        if (s >= 0) {
            p->busy[s] = 1;
            p->last_used[s] = ++p->clock;
            *slot = s;
            break;
        }
        if (!queued) {
            if (p->n_queue >= p->max_queue) {
                rc = SRV_POOL_FULL;
                break;
            }
            p->queue[p->n_queue++] = &me;
            queued = 1;
        }
        /* wake at least every 100 ms to see a cancel (the watcher sets it without the lock) */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    if (queued) {
        dequeue(p, &me);
        pthread_cond_broadcast(&p->cv); /* the next in line may now be at the head */
    }
    pthread_mutex_unlock(&p->mu);
    *waited_s = srv_now() - t0;
    return rc;
}

void srv_pool_release(srv_pool *p, int slot) {
    pthread_mutex_lock(&p->mu);
    p->busy[slot] = 0;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}
