/* test_serve_pool.c — the server's session pool (serve/pool.c) on its own, where timing is in the
 * test's hands: which session a prompt goes to (longest exactly reusable prefix, then least recently
 * used), the reuse cut to whole chunks and to what the session computed in whole chunks, the FIFO
 * order of waiting requests, the bounded queue (SRV_POOL_FULL, the server's 429) and a cancel while
 * waiting. The HTTP side is tests/test_serve_raw.py and tests/test_serve_openai.py. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/mtok.h"
#include "serve/srv.h"
#include "tests/check.h"

enum { CHUNK = 16 };

static srv_pool P;

static void feed(int slot, const int32_t *ids, int64_t n) {
    mtok_session_reset(P.sess[slot]);
    if (mtok_session_feed(P.sess[slot], ids, n, NULL, NULL)) {
        fprintf(stderr, "feed: %s\n", mtok_errmsg());
        exit(1);
    }
    P.exact[slot] = n / CHUNK * CHUNK;
}

typedef struct {
    const int32_t *ids;
    int64_t n;
    volatile int cancel;
    int rc, slot;
    int order; /* when it got its session, 1-based */
} waiter;
static int g_order;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static void *wait_for(void *arg) {
    waiter *w = arg;
    double waited;
    w->rc = srv_pool_acquire(&P, w->ids, w->n, &w->cancel, &w->slot, &waited);
    pthread_mutex_lock(&g_mu);
    w->order = ++g_order;
    pthread_mutex_unlock(&g_mu);
    if (w->rc == SRV_POOL_OK) srv_pool_release(&P, w->slot);
    return NULL;
}

/* Polls until the pool's queue holds n requests (bounded: 10 s). */
static int queue_reaches(int n) {
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&P.mu);
        const int q = P.n_queue;
        pthread_mutex_unlock(&P.mu);
        if (q == n) return 1;
        usleep(10000);
    }
    return 0;
}

int main(int argc, char **argv) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/models/g4-chatglm-sharded", argv[1]);
    mtok_model *m = NULL;
    mtok_session_params sp = {.ctx = 1024, .threads = 1, .prefill_chunk = CHUNK, .kv_block = 16};
    if (mtok_model_load(dir, NULL, &m) || srv_pool_init(&P, m, &sp, 2, 2)) {
        fprintf(stderr, "setup: %s\n", mtok_errmsg());
        return 1;
    }
    CHECK(P.chunk == CHUNK, "pool chunk %lld", (long long)P.chunk);
    int32_t a[100], b[100];
    for (int i = 0; i < 100; i++) a[i] = 10 + i, b[i] = 200 + i;

    /* reuse: the common prefix, cut to whole chunks and to the exactly computed part */
    feed(0, a, 70); /* exact 64 */
    feed(1, b, 40); /* exact 32 */
    CHECK(srv_pool_reusable(&P, 0, a, 100) == 64, "a on 0: %lld", (long long)srv_pool_reusable(&P, 0, a, 100));
    CHECK(srv_pool_reusable(&P, 0, a, 50) == 48, "a[:50] on 0: %lld", (long long)srv_pool_reusable(&P, 0, a, 50));
    CHECK(srv_pool_reusable(&P, 1, a, 100) == 0, "a on 1: %lld", (long long)srv_pool_reusable(&P, 1, a, 100));
    int32_t a2[100];
    memcpy(a2, a, sizeof a2);
    a2[40] = 999; /* differs inside the third chunk */
    CHECK(srv_pool_reusable(&P, 0, a2, 100) == 32, "a2 on 0: %lld", (long long)srv_pool_reusable(&P, 0, a2, 100));
    P.exact[0] = 16; /* as after a decode: only the first chunk was computed by a whole-chunk prefill */
    CHECK(srv_pool_reusable(&P, 0, a, 100) == 16, "a on 0 with exact 16: %lld", (long long)srv_pool_reusable(&P, 0, a, 100));
    P.exact[0] = 64;

    /* choice: the session that reuses most; with no reuse anywhere, the least recently used */
    int s0 = -1, s1 = -1;
    double w;
    CHECK(srv_pool_acquire(&P, b, 100, NULL, &s0, &w) == SRV_POOL_OK && s0 == 1, "b went to %d", s0);
    srv_pool_release(&P, s0);
    CHECK(srv_pool_acquire(&P, a, 100, NULL, &s0, &w) == SRV_POOL_OK && s0 == 0, "a went to %d", s0);
    srv_pool_release(&P, s0);
    int32_t c[20];
    for (int i = 0; i < 20; i++) c[i] = 400 + i;
    CHECK(srv_pool_acquire(&P, c, 20, NULL, &s0, &w) == SRV_POOL_OK && s0 == 1, "c (no reuse) went to %d, not the LRU 1", s0);
    srv_pool_release(&P, s0);

    /* both busy: two wait in arrival order, a third is refused, a cancelled waiter leaves the queue */
    CHECK(srv_pool_acquire(&P, a, 100, NULL, &s0, &w) == SRV_POOL_OK, "take 0");
    CHECK(srv_pool_acquire(&P, b, 100, NULL, &s1, &w) == SRV_POOL_OK && s1 != s0, "take 1");
    waiter w1 = {.ids = c, .n = 20}, w2 = {.ids = c, .n = 20}, w3 = {.ids = c, .n = 20};
    pthread_t t1, t2, t3;
    pthread_create(&t1, NULL, wait_for, &w1);
    CHECK(queue_reaches(1), "first waiter queued");
    pthread_create(&t2, NULL, wait_for, &w2);
    CHECK(queue_reaches(2), "second waiter queued");
    int s_full = -1;
    CHECK(srv_pool_acquire(&P, c, 20, NULL, &s_full, &w) == SRV_POOL_FULL, "a third request must be refused (queue of 2)");
    w1.cancel = 1;
    pthread_join(t1, NULL);
    CHECK(w1.rc == SRV_POOL_CANCELLED, "cancelled waiter: rc %d", w1.rc);
    CHECK(queue_reaches(1), "the cancelled waiter left the queue");
    pthread_create(&t3, NULL, wait_for, &w3);
    CHECK(queue_reaches(2), "third waiter queued");
    srv_pool_release(&P, s0);
    pthread_join(t2, NULL);
    pthread_join(t3, NULL);
    CHECK(w2.rc == SRV_POOL_OK && w3.rc == SRV_POOL_OK, "waiters served: %d %d", w2.rc, w3.rc);
    CHECK(w2.order < w3.order, "FIFO: the earlier waiter first (orders %d, %d)", w2.order, w3.order);
    srv_pool_release(&P, s1);
    CHECK(P.n_queue == 0, "queue empty at the end");

    srv_pool_free(&P);
    mtok_model_free(m);
    if (!check_failures) printf("test_serve_pool: ok\n");
    return check_failures != 0;
}
