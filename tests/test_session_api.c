/* test_session_api.c — the request API driven as a server would (core/mtok.h, docs/SESSION_API.md):
 * load a model and a tokenizer, create sessions, feed prompts with prefix reuse, cancel a long
 * prefill from a callback and from a second thread, generate with stop ids, stop strings and
 * max_tokens, and check every finish reason and usage count. The central promise: a cancelled feed
 * loses nothing, so feeding the same ids again gives logits bit-identical to a fresh session's. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/mtok.h"
#include "tests/check.h"

enum { CHUNK = 64, N = 2000, CTX = 4096 };

static const mtok_model *M;
static const mtok_tokenizer *T;
static int64_t V;

static mtok_session *new_session(void) {
    mtok_session_params p = {.ctx = CTX, .threads = 2, .prefill_chunk = CHUNK, .kv_block = 16};
    mtok_session *s = NULL;
    if (mtok_session_create(M, &p, &s)) {
        fprintf(stderr, "session: %s\n", mtok_errmsg());
        exit(1);
    }
    return s;
}

/* deterministic ids below the fixture's eos ids (500, 507, 509) */
static void make_ids(int32_t *v, int64_t n, uint32_t seed) {
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = (int32_t)((seed >> 8) % 500);
    }
}

static float *logits_copy(const mtok_session *s) {
    float *l = malloc((size_t)V * sizeof *l);
    memcpy(l, mtok_session_logits(s), (size_t)V * sizeof *l);
    return l;
}
static int same_bits(const mtok_session *s, const float *ref) {
    return !memcmp(mtok_session_logits(s), ref, (size_t)V * sizeof *ref);
}
static double max_rel_diff(const mtok_session *s, const float *ref) {
    const float *l = mtok_session_logits(s);
    double d = 0, m = 0;
    for (int64_t i = 0; i < V; i++) {
        double e = l[i] > ref[i] ? l[i] - ref[i] : ref[i] - l[i], a = ref[i] < 0 ? -ref[i] : ref[i];
        if (e > d) d = e;
        if (a > m) m = a;
    }
    return m > 0 ? d / m : d;
}

/* ---- prefill progress callbacks ---- */
typedef struct {
    volatile int flag;     /* the request's cancel flag */
    int64_t set_after;     /* set the flag once this many tokens are done (callback case) */
    int64_t stop_after;    /* return nonzero once this many are done */
    int calls;
    int chunks;            /* chunks done (read by the second thread) */
    int slow_ms;           /* sleep per chunk, so a second thread has time to act */
} progress;

static int on_prefill(int64_t done, int64_t total, void *user) {
    progress *p = user;
    p->calls++;
    __atomic_store_n(&p->chunks, p->calls, __ATOMIC_SEQ_CST);
    CHECK(done > 0 && done <= total, "progress %lld of %lld", (long long)done, (long long)total);
    if (p->set_after && done >= p->set_after) p->flag = 1;
    if (p->slow_ms) nanosleep(&(struct timespec){0, p->slow_ms * 1000000L}, NULL);
    return p->stop_after && done >= p->stop_after;
}

/* The second thread: once two chunks are done it sets the flag, then notes how many chunks were done
 * by then; the feed may finish at most the chunk in flight after that. */
typedef struct {
    progress *p;
    int chunks_at_set;
} canceller;
static void *cancel_thread(void *arg) {
    canceller *c = arg;
    while (__atomic_load_n(&c->p->chunks, __ATOMIC_SEQ_CST) < 2) nanosleep(&(struct timespec){0, 100000L}, NULL);
    __atomic_store_n(&c->p->flag, 1, __ATOMIC_SEQ_CST);
    c->chunks_at_set = __atomic_load_n(&c->p->chunks, __ATOMIC_SEQ_CST);
    return NULL;
}

static void test_feed(const int32_t *ids) {
    mtok_session *fresh = new_session();
    mtok_usage u;
    CHECK(mtok_session_chunk(fresh) == CHUNK, "chunk %lld", (long long)mtok_session_chunk(fresh));
    int rc = mtok_session_feed(fresh, ids, N, NULL, &u);
    CHECK(rc == 0 && mtok_session_pos(fresh) == N && u.prompt_tokens == N && u.cached_tokens == 0 &&
          u.computed_tokens == N, "fresh feed: rc %d pos %lld usage %lld/%lld/%lld %s", rc,
          (long long)mtok_session_pos(fresh), (long long)u.prompt_tokens, (long long)u.cached_tokens,
          (long long)u.computed_tokens, rc ? mtok_errmsg() : "");
    float *ref = logits_copy(fresh);

    /* cancel from the progress callback: the flag set after chunk 3 is honoured before chunk 4 */
    mtok_session *s = new_session();
    progress p = {.set_after = 3 * CHUNK};
    mtok_request req = {.cancel = &p.flag, .on_prefill = on_prefill, .user = &p};
    rc = mtok_session_feed(s, ids, N, &req, &u);
    CHECK(rc == MTOK_CANCELLED && mtok_session_pos(s) == 3 * CHUNK && u.computed_tokens == 3 * CHUNK && p.calls == 3,
          "cancel by flag after 3 chunks: rc %d, pos %lld, computed %lld, %d progress calls", rc,
          (long long)mtok_session_pos(s), (long long)u.computed_tokens, p.calls);
    CHECK(!memcmp(mtok_session_tokens(s), ids, 3 * CHUNK * sizeof *ids), "the cancelled session holds a prefix of ids");
    /* lost nothing: fed again, it computes only the rest and ends bit-identical to the fresh session */
    rc = mtok_session_feed(s, ids, N, NULL, &u);
    CHECK(rc == 0 && u.cached_tokens == 3 * CHUNK && u.computed_tokens == N - 3 * CHUNK && same_bits(s, ref),
          "fed again after the cancel: rc %d, cached %lld, computed %lld, logits %s", rc, (long long)u.cached_tokens,
          (long long)u.computed_tokens, same_bits(s, ref) ? "identical" : "DIFFER from a fresh session");
    mtok_session_free(s);

    /* a callback returning nonzero cancels the same way */
    s = new_session();
    p = (progress){.stop_after = 2 * CHUNK};
    req = (mtok_request){.on_prefill = on_prefill, .user = &p};
    rc = mtok_session_feed(s, ids, N, &req, &u);
    CHECK(rc == MTOK_CANCELLED && mtok_session_pos(s) == 2 * CHUNK, "callback cancel: rc %d, pos %lld", rc,
          (long long)mtok_session_pos(s));
    rc = mtok_session_feed(s, ids, N, NULL, &u);
    CHECK(rc == 0 && u.cached_tokens == 2 * CHUNK && same_bits(s, ref), "fed again after a callback cancel");
    mtok_session_free(s);

    /* a flag set by a second thread while a chunk computes stops the feed within one chunk; on a
     * machine so loaded that the thread never ran in time the feed completes, so try a few times */
    int caught = 0;
    for (int attempt = 0; attempt < 5 && !caught; attempt++) {
        s = new_session();
        p = (progress){.slow_ms = 2};
        canceller c = {.p = &p};
        req = (mtok_request){.cancel = &p.flag, .on_prefill = on_prefill, .user = &p};
        pthread_t th;
        pthread_create(&th, NULL, cancel_thread, &c);
        rc = mtok_session_feed(s, ids, N, &req, &u);
        pthread_join(th, NULL);
        const int64_t pos = mtok_session_pos(s);
        if (rc == MTOK_CANCELLED) {
            caught = 1;
            CHECK(pos % CHUNK == 0 && pos >= 2 * CHUNK && pos <= (int64_t)(c.chunks_at_set + 1) * CHUNK,
                  "thread cancel: %lld tokens held, flag set when %d chunks were done", (long long)pos,
                  c.chunks_at_set);
            rc = mtok_session_feed(s, ids, N, NULL, &u);
            CHECK(rc == 0 && u.cached_tokens == pos && same_bits(s, ref), "fed again after a thread cancel");
        } else {
            CHECK(rc == 0, "feed with a second thread: %s", mtok_errmsg());
        }
        mtok_session_free(s);
    }
    CHECK(caught, "a cancel flag set by a second thread never stopped the feed in 5 tries");

    /* a flag already set: nothing is dropped or computed */
    p = (progress){.flag = 1};
    req = (mtok_request){.cancel = &p.flag};
    int32_t *other = malloc(N * sizeof *other);
    make_ids(other, N, 99);
    rc = mtok_session_feed(fresh, other, N, &req, &u);
    CHECK(rc == MTOK_CANCELLED && mtok_session_pos(fresh) == N && same_bits(fresh, ref) && u.computed_tokens == 0,
          "a cancel before the feed starts keeps the session: rc %d pos %lld", rc, (long long)mtok_session_pos(fresh));

    /* prefix reuse: 704 tokens (11 chunks) shared, 96 new; the new part runs in the chunks a fresh
     * session runs, so the logits match bit for bit */
    int32_t *p2 = malloc(800 * sizeof *p2);
    memcpy(p2, ids, 704 * sizeof *p2);
    memcpy(p2 + 704, other, 96 * sizeof *p2);
    rc = mtok_session_feed(fresh, p2, 800, NULL, &u);
    CHECK(rc == 0 && u.cached_tokens == 704 && u.computed_tokens == 96 && mtok_session_pos(fresh) == 800,
          "prefix reuse: rc %d, cached %lld, computed %lld", rc, (long long)u.cached_tokens, (long long)u.computed_tokens);
    mtok_session *d = new_session();
    rc = mtok_session_feed(d, p2, 800, NULL, &u);
    float *ref2 = logits_copy(d);
    CHECK(rc == 0 && same_bits(fresh, ref2), "prefix reuse gives the logits of a fresh session");
    /* the whole prompt already held: the last position is computed again, its logits current */
    rc = mtok_session_feed(fresh, p2, 800, NULL, &u);
    double rel = max_rel_diff(fresh, ref2);
    CHECK(rc == 0 && u.cached_tokens == 799 && u.computed_tokens == 1 && rel < 1e-3,
          "whole prompt held: rc %d, cached %lld, computed %lld, logits off by %.2e", rc, (long long)u.cached_tokens,
          (long long)u.computed_tokens, rel);
    /* too long for the context: an error, and the session keeps what it held */
    int32_t *big = malloc((CTX + 1) * sizeof *big);
    make_ids(big, CTX + 1, 5);
    rc = mtok_session_feed(fresh, big, CTX + 1, NULL, &u);
    CHECK(rc == MTOK_EINPUT && mtok_session_pos(fresh) == 800, "prompt over the context: rc %d", rc);
    CHECK(mtok_session_feed(fresh, ids, 0, NULL, &u) == MTOK_EUSAGE, "empty prompt refused");
    free(big);
    free(p2);
    free(other);
    free(ref);
    free(ref2);
    mtok_session_free(d);
    mtok_session_free(fresh);
}

/* ---- generation ---- */
typedef struct {
    char buf[4096];
    size_t len, ends[64]; /* ends[i]: bytes streamed after the i-th call */
    int calls, stop_after, flag_after, bad_len;
    volatile int flag;
} sink;
static int on_token(int32_t id, const char *text, size_t len, void *user) {
    sink *k = user;
    if (len > sizeof k->buf - k->len) { /* more than was generated: a broken length */
        k->bad_len = 1;
        return 1;
    }
    memcpy(k->buf + k->len, text, len);
    k->len += len;
    if (id >= 0 && k->calls < 64) k->ends[k->calls] = k->len;
    if (id >= 0) k->calls++;
    if (k->flag_after && k->calls >= k->flag_after) k->flag = 1;
    return k->stop_after && k->calls >= k->stop_after;
}

static int same_tokens(const mtok_ids *a, const mtok_ids *b, size_t n) {
    return a->n >= n && b->n >= n && (!n || !memcmp(a->v, b->v, n * sizeof *a->v));
}

static void test_generate(const int32_t *ids) {
    enum { P = 40, G = 16 };
    mtok_session *s = new_session();
    sink k = {0};
    mtok_request req = {.max_tokens = G, .ignore_eos = 1, .on_token = on_token, .user = &k};
    mtok_result a, r;
    int rc = mtok_generate(s, T, ids, P, &req, &a);
    CHECK(rc == 0 && a.finish == MTOK_FINISH_LENGTH && a.tokens.n == G && a.usage.generated_tokens == G &&
          a.usage.prompt_tokens == P && a.usage.computed_tokens == P && a.usage.cached_tokens == 0 &&
          mtok_session_pos(s) == P + G - 1 && a.stop_id == -1 && a.stop_string == -1,
          "max_tokens: rc %d finish %s, %zu tokens, pos %lld %s", rc, mtok_finish_name(a.finish), a.tokens.n,
          (long long)mtok_session_pos(s), rc ? mtok_errmsg() : "");
    CHECK(k.calls == G && !k.bad_len && k.len == a.text_len && (!k.len || !memcmp(k.buf, a.text, k.len)),
          "the stream (%d calls, %zu bytes) is the result's text (%zu bytes)", k.calls, k.len, a.text_len);

    /* the same request again: the prompt is held, only its last position runs */
    rc = mtok_generate(s, T, ids, P, &req, &r);
    CHECK(rc == 0 && r.usage.cached_tokens == P - 1 && r.usage.computed_tokens == 1 && same_tokens(&r.tokens, &a.tokens, G),
          "repeat: cached %lld, computed %lld, same tokens %d", (long long)r.usage.cached_tokens,
          (long long)r.usage.computed_tokens, same_tokens(&r.tokens, &a.tokens, G));
    mtok_result_free(&r);

    /* a stop id: generation ends before it, and it is not fed */
    if (a.tokens.n == G) {
        int32_t stop = a.tokens.v[5];
        size_t first = 0;
        while (a.tokens.v[first] != stop) first++;
        req = (mtok_request){.max_tokens = G, .ignore_eos = 1, .stop_ids = &stop, .n_stop_ids = 1};
        rc = mtok_generate(s, T, ids, P, &req, &r);
        CHECK(rc == 0 && r.finish == MTOK_FINISH_STOP && r.stop_id == stop && r.tokens.n == first &&
              same_tokens(&r.tokens, &a.tokens, first) && mtok_session_pos(s) == P + (int64_t)first,
              "stop id %d: finish %s, stop_id %d, %zu tokens (expected %zu)", stop, mtok_finish_name(r.finish),
              r.stop_id, r.tokens.n, first);
        mtok_result_free(&r);
    }

    /* a stop string that straddles two tokens' text: the text and the stream end before its first
     * occurrence, and no byte of it reaches the callback, though the first token's text ends with
     * its first byte (held back until the next token shows it is the stop string) */
    const char *first = NULL;
    char stop[4] = "";
    for (int i = 0; i + 1 < k.calls && !first; i++) {
        const size_t b = k.ends[i];
        if (b < 1 || b + 2 > a.text_len) continue;
        memcpy(stop, a.text + b - 1, 3);
        const char *f = memmem(a.text, a.text_len, stop, 3);
        for (int j = 0; f && j + 1 < k.calls; j++) /* its first occurrence must straddle a boundary too */
            if (k.ends[j] > (size_t)(f - a.text) && k.ends[j] < (size_t)(f - a.text) + 3 && strlen(stop) == 3) first = f;
    }
    CHECK(first, "no 3-byte string straddling two tokens in the %zu bytes of generated text", a.text_len);
    if (first) {
        {
            const char *stops[2] = {"\x01never\x02", stop};
            k = (sink){0};
            req = (mtok_request){.max_tokens = G, .ignore_eos = 1, .stop_strings = stops, .n_stop_strings = 2,
                                 .on_token = on_token, .user = &k};
            rc = mtok_generate(s, T, ids, P, &req, &r);
            const size_t at = (size_t)(first - a.text);
            CHECK(rc == 0 && r.finish == MTOK_FINISH_STOP && r.stop_string == 1 && r.stop_id == -1 &&
                  r.text_len == at && !memcmp(r.text, a.text, at) && !k.bad_len && k.len == at &&
                  !memcmp(k.buf, a.text, at) &&
                  same_tokens(&r.tokens, &a.tokens, r.tokens.n) && (int64_t)r.tokens.n == r.usage.generated_tokens,
                  "stop string: finish %s, index %d, text %zu bytes, streamed %zu, expected %zu",
                  mtok_finish_name(r.finish), r.stop_string, r.text_len, k.len, at);
            mtok_result_free(&r);
        }
    }

    /* max_tokens 0: the prompt is fed, nothing generated */
    req = (mtok_request){0};
    rc = mtok_generate(s, T, ids, P, &req, &r);
    CHECK(rc == 0 && r.finish == MTOK_FINISH_LENGTH && r.tokens.n == 0 && mtok_session_pos(s) == P,
          "max_tokens 0: finish %s, pos %lld", mtok_finish_name(r.finish), (long long)mtok_session_pos(s));
    mtok_result_free(&r);

    /* the stream callback cancels after 3 tokens */
    k = (sink){.stop_after = 3};
    req = (mtok_request){.max_tokens = G, .ignore_eos = 1, .on_token = on_token, .user = &k};
    rc = mtok_generate(s, T, ids, P, &req, &r);
    CHECK(rc == 0 && r.finish == MTOK_FINISH_CANCELLED && r.tokens.n == 3 && same_tokens(&r.tokens, &a.tokens, 3),
          "callback cancel in decode: finish %s, %zu tokens", mtok_finish_name(r.finish), r.tokens.n);
    mtok_result_free(&r);

    /* the cancel flag, set while the second token streams, stops before its decode step */
    k = (sink){.flag_after = 2};
    req = (mtok_request){.max_tokens = G, .ignore_eos = 1, .cancel = &k.flag, .on_token = on_token, .user = &k};
    rc = mtok_generate(s, T, ids, P, &req, &r);
    CHECK(rc == 0 && r.finish == MTOK_FINISH_CANCELLED && r.tokens.n == 2 && mtok_session_pos(s) == P + 1,
          "cancel flag in decode: finish %s, %zu tokens, pos %lld", mtok_finish_name(r.finish), r.tokens.n,
          (long long)mtok_session_pos(s));
    mtok_result_free(&r);

    /* cancel mid-prefill through generate: nothing generated, whole chunks kept */
    mtok_session *s2 = new_session();
    progress p = {.stop_after = CHUNK};
    req = (mtok_request){.max_tokens = G, .on_prefill = on_prefill, .user = &p};
    rc = mtok_generate(s2, T, ids, 5 * CHUNK, &req, &r);
    CHECK(rc == 0 && r.finish == MTOK_FINISH_CANCELLED && r.tokens.n == 0 && r.usage.computed_tokens == CHUNK &&
          mtok_session_pos(s2) == CHUNK, "prefill cancel in generate: finish %s, computed %lld",
          mtok_finish_name(r.finish), (long long)r.usage.computed_tokens);
    mtok_result_free(&r);
    mtok_session_free(s2);

    /* errors: a prompt over the context, an empty stop string */
    int32_t *big = malloc((CTX + 1) * sizeof *big);
    make_ids(big, CTX + 1, 7);
    req = (mtok_request){.max_tokens = G};
    const int64_t before = mtok_session_pos(s);
    rc = mtok_generate(s, T, big, CTX + 1, &req, &r);
    CHECK(rc == MTOK_EINPUT && r.finish == MTOK_FINISH_ERROR && mtok_session_pos(s) == before,
          "prompt over the context: rc %d finish %s", rc, mtok_finish_name(r.finish));
    mtok_result_free(&r);
    free(big);
    const char *empty[1] = {""};
    req = (mtok_request){.max_tokens = G, .stop_strings = empty, .n_stop_strings = 1};
    rc = mtok_generate(s, T, ids, P, &req, &r);
    CHECK(rc == MTOK_EUSAGE && r.finish == MTOK_FINISH_ERROR, "empty stop string: rc %d", rc);
    mtok_result_free(&r);

    CHECK(!strcmp(mtok_finish_name(MTOK_FINISH_STOP), "stop") && !strcmp(mtok_finish_name(MTOK_FINISH_LENGTH), "length") &&
          !strcmp(mtok_finish_name(MTOK_FINISH_CANCELLED), "cancelled") &&
          !strcmp(mtok_finish_name(MTOK_FINISH_ERROR), "error"), "finish names");
    mtok_result_free(&a);
    mtok_session_free(s);
}

int main(int argc, char **argv) {
    if (argc < 2) return 1;
    char dir[1024], tok[1024];
    snprintf(dir, sizeof dir, "%s/tests/data/models/g4-chatglm-sharded", argv[1]);
    snprintf(tok, sizeof tok, "%s/tests/data/tok/tokenizer.model", argv[1]);
    mtok_set_log_level(0);
    mtok_model *m = NULL;
    mtok_tokenizer *t = NULL;
    if (mtok_model_load(dir, NULL, &m) || mtok_tokenizer_load_file(tok, &t)) {
        fprintf(stderr, "load: %s\n", mtok_errmsg());
        return 1;
    }
    M = m, T = t, V = mtok_model_config(m)->vocab;
    int32_t *ids = malloc(N * sizeof *ids);
    make_ids(ids, N, 1);
    test_feed(ids);
    test_generate(ids);
    free(ids);
    mtok_tokenizer_free(t);
    mtok_model_free(m);
    if (!check_failures) printf("session api: all checks passed\n");
    return check_failures != 0;
}
