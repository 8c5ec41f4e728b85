/* feed.c — mtok_session_feed: make the session hold a given token sequence, reusing the longest
 * prefix it already holds (chat turns, questions over one document, eval records sharing a context)
 * and prefilling the rest in cancellable chunks.
 *
 * Why chunk by chunk here, though mtok_forward chunks by itself: a cancel must take effect within
 * one chunk, and a caller needs progress. The chunks are the ones mtok_forward would run for the same
 * call (core/forward.c forward_run starts a chunk every `chunk` tokens from the first new position),
 * so the logits are bit-identical to one mtok_forward of the whole suffix. A cancel keeps the chunks
 * already computed: feeding the same ids again resumes at the next chunk boundary, computes the same
 * chunks an uncancelled feed would have, and so ends with the same logits (tests/test_session_api.c). */
#include <string.h>
#include <time.h>

#include "session.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int64_t mtok_session_chunk(const mtok_session *s) { return s->chunk; }

/* The flag may be set by another thread: an atomic load keeps the read well defined and prevents
 * the compiler from hoisting it out of the loop. */
static int cancelled(const mtok_request *req) {
    return req && req->cancel && __atomic_load_n(req->cancel, __ATOMIC_RELAXED);
}

int mtok_session_feed(mtok_session *s, const int32_t *ids, int64_t n, const mtok_request *req, mtok_usage *usage) {
    mtok_usage u = {.prompt_tokens = n > 0 ? n : 0};
    if (usage) *usage = u;
    if (n <= 0) return mtok_err(MTOK_EUSAGE, "feed: empty prompt");
    const int64_t ctx = mtok_session_ctx(s);
    if (n > ctx)
        return mtok_err(MTOK_EINPUT, "prompt of %lld tokens does not fit the context limit of %lld tokens (raise --ctx)",
                        (long long)n, (long long)ctx);
    if (cancelled(req)) return MTOK_CANCELLED; /* before anything is dropped */
    const int32_t *held = mtok_session_tokens(s);
    const int64_t n_held = mtok_session_pos(s);
    int64_t lcp = 0;
    while (lcp < n && lcp < n_held && held[lcp] == ids[lcp]) lcp++;
    /* image rows hold placeholder ids: equal ids do not mean an equal image, so reuse stops there */
    if (s->img_hi > s->img_lo && lcp > s->img_lo) lcp = s->img_lo;
    if (lcp == n) lcp = n - 1; /* the last position's logits must be current: compute it again */
    int rc = lcp < n_held ? mtok_session_truncate(s, lcp) : 0;
    if (rc) return rc;
    u.cached_tokens = lcp;
    if (usage) *usage = u;
    const int64_t chunk = s->chunk, total = n - lcp;
    const double t0 = now_s();
    for (int64_t i = lcp; i < n; i += chunk) {
        if (i > lcp && cancelled(req)) {
            rc = MTOK_CANCELLED;
            break;
        }
        const int64_t k = n - i < chunk ? n - i : chunk;
        if ((rc = mtok_forward(s, ids + i, k, NULL))) break;
        u.computed_tokens += k;
        if (req && req->on_prefill && req->on_prefill(u.computed_tokens, total, req->user) && i + k < n) {
            rc = MTOK_CANCELLED;
            break;
        }
    }
    u.prefill_s = now_s() - t0;
    if (usage) *usage = u;
    return rc;
}
