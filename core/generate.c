/* generate.c — mtok_generate: feed the prompt (core/feed.c: prefix reuse, cancellable chunks), then
 * sample, stream and feed back one token at a time until a stop id, a stop string, max_tokens, the
 * context limit or a cancel. Text is streamed through the UTF-8-safe decoder so a callback never sees
 * half a character, and text that may be the start of a stop string is held back until it is known
 * not to be one, so a callback never sees any part of a stop string (docs/SESSION_API.md).
 *
 * mtok_generate_fed is all of it with the feed as a function (generate_internal.h): an image prompt
 * (mtok_vision_generate) is fed its own way and decoded here, stop strings included. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate_internal.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *mtok_finish_name(mtok_finish f) {
    switch (f) {
    case MTOK_FINISH_STOP: return "stop";
    case MTOK_FINISH_LENGTH: return "length";
    case MTOK_FINISH_CANCELLED: return "cancelled";
    case MTOK_FINISH_ERROR: return "error";
    default: return "none";
    }
}

void mtok_result_free(mtok_result *r) {
    if (!r) return;
    mtok_ids_free(&r->tokens);
    free(r->text);
    r->text = NULL;
    r->text_len = 0;
}

static int cancelled(const mtok_request *req) {
    return req->cancel && __atomic_load_n(req->cancel, __ATOMIC_RELAXED); /* core/feed.c says why atomic */
}

static int is_stop(const mtok_request *req, const mtok_config *c, int32_t id) {
    for (int i = 0; i < req->n_stop_ids; i++)
        if (req->stop_ids[i] == id) return 1;
    for (int i = 0; !req->ignore_eos && i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return 1;
    return 0;
}

/* ---- the text stream: text[0..len) is everything decoded so far, text[0..sent) went to on_token ---- */
typedef struct {
    const mtok_request *req;
    char *text;
    size_t len, cap, sent;
} text_stream;

enum { PIECE_MORE = 0, PIECE_STOP_STRING, PIECE_CANCEL };

static int text_append(text_stream *st, const char *p, size_t n) {
    if (st->len + n + 1 > st->cap) {
        size_t cap = st->cap ? st->cap : 256;
        while (cap < st->len + n + 1) cap *= 2;
        char *t = realloc(st->text, cap);
        if (!t) return mtok_err(MTOK_ERESOURCE, "out of memory for %zu bytes of generated text", st->len + n);
        st->text = t, st->cap = cap;
    }
    if (n) memcpy(st->text + st->len, p, n);
    st->len += n;
    st->text[st->len] = 0;
    return 0;
}

/* The earliest stop-string match that ends after byte `from` (earlier matches were looked for when
 * those bytes arrived): its start in *at and index in *which; 0 when none. */
static int find_stop(const text_stream *st, size_t from, size_t *at, int *which) {
    int found = 0;
    for (int j = 0; j < st->req->n_stop_strings; j++) {
        const char *s = st->req->stop_strings[j];
        const size_t L = strlen(s), start = from >= L - 1 ? from - (L - 1) : 0;
        if (start >= st->len) continue;
        const char *hit = memmem(st->text + start, st->len - start, s, L);
        if (hit && (!found || (size_t)(hit - st->text) < *at)) *at = (size_t)(hit - st->text), *which = j, found = 1;
    }
    return found;
}

/* Bytes at the end of the unsent text that begin some stop string: held back from on_token. */
static size_t held_back(const text_stream *st) {
    size_t h = 0;
    for (int j = 0; j < st->req->n_stop_strings; j++) {
        const char *s = st->req->stop_strings[j];
        size_t k = strlen(s) - 1;
        if (k > st->len - st->sent) k = st->len - st->sent;
        for (; k > h; k--)
            if (!memcmp(st->text + st->len - k, s, k)) {
                h = k;
                break;
            }
    }
    return h;
}

/* Adds the text of token id (-1: the decoder's flush, which releases everything held back) and
 * passes on what can no longer be part of a stop string. On a match the text ends before it. */
static int text_piece(text_stream *st, int32_t id, const char *p, size_t n, int *which, int *rc) {
    const size_t from = st->len;
    if ((*rc = text_append(st, p, n))) return PIECE_CANCEL;
    size_t at = 0;
    const int stop = find_stop(st, from, &at, which);
    if (stop) st->len = at, st->text[at] = 0;
    const size_t end = stop || id < 0 ? st->len : st->len - held_back(st);
    int r = 0;
    if (st->req->on_token && (id >= 0 || end > st->sent)) r = st->req->on_token(id, st->text + st->sent, end - st->sent,
                                                                               st->req->user);
    st->sent = end;
    return stop ? PIECE_STOP_STRING : r ? PIECE_CANCEL : PIECE_MORE;
}

static int check_request(const mtok_request *req) {
    if (req->n_stop_ids < 0 || (req->n_stop_ids && !req->stop_ids) || req->n_stop_strings < 0 ||
        (req->n_stop_strings && !req->stop_strings))
        return mtok_err(MTOK_EUSAGE, "request: stop id or stop string count without the array");
    for (int j = 0; j < req->n_stop_strings; j++)
        if (!req->stop_strings[j] || !*req->stop_strings[j])
            return mtok_err(MTOK_EUSAGE, "request: stop string %d is empty", j);
    return 0;
}

int mtok_generate_fed(mtok_session *s, const mtok_tokenizer *t, mtok_feed_fn feed, const void *feed_arg,
                      const mtok_request *req, mtok_result *res) {
    static const mtok_request defaults;
    if (!req) req = &defaults;
    memset(res, 0, sizeof *res);
    res->stop_id = -1, res->stop_string = -1;
    const mtok_config *c = mtok_session_config(s);
    mtok_sampler *own = NULL, *smp = req->sampler_state;
    text_stream st = {.req = req};
    const size_t cap = mtok_tokenizer_max_token_len(t) + 16;
    char *piece = malloc(cap);
    float *logits = malloc((size_t)c->vocab * sizeof *logits);
    int rc = check_request(req);
    if (!rc && (!piece || !logits)) rc = mtok_err(MTOK_ERESOURCE, "out of memory for generation buffers");
    if (!rc && !smp) {
        mtok_sampler_params sp = req->sampler;
        if (sp.top_p == 0) sp.top_p = 1;
        if (sp.repetition_penalty == 0) sp.repetition_penalty = 1;
        rc = mtok_sampler_create(&sp, c->vocab, &own);
        smp = own;
    }
    if (rc) goto done;

    rc = feed(s, feed_arg, req, &res->usage);
    if (rc == MTOK_CANCELLED || (!rc && cancelled(req))) {
        rc = 0;
        res->finish = MTOK_FINISH_CANCELLED;
        goto done;
    }
    if (rc) goto done;

    /* the sampler never picks padding rows beyond the tokenizer's vocabulary */
    const int64_t n_valid = mtok_tokenizer_n_vocab(t) < c->vocab ? mtok_tokenizer_n_vocab(t) : c->vocab;
    mtok_decoder dec = {0};
    const double t0 = now_s();
    for (int64_t i = 0;; i++) {
        if (req->max_tokens >= 0 && i >= req->max_tokens) {
            res->finish = MTOK_FINISH_LENGTH;
            break;
        }
        memcpy(logits, mtok_session_logits(s), (size_t)c->vocab * sizeof *logits);
        /* the history for the repetition penalty: the prompt and every token fed back since */
        int32_t id = mtok_sample(smp, logits, n_valid, mtok_session_tokens(s), (size_t)mtok_session_pos(s));
        if (is_stop(req, c, id)) {
            res->finish = MTOK_FINISH_STOP, res->stop_id = id;
            break;
        }
        res->usage.generated_tokens++;
        if ((rc = mtok_ids_push(&res->tokens, id))) goto done;
        const size_t len = mtok_decode_next(t, &dec, id, piece, cap);
        const int r = text_piece(&st, id, piece, len, &res->stop_string, &rc);
        if (rc) goto done;
        if (r != PIECE_MORE) {
            res->finish = r == PIECE_STOP_STRING ? MTOK_FINISH_STOP : MTOK_FINISH_CANCELLED;
            break;
        }
        if (i + 1 == req->max_tokens || mtok_session_pos(s) >= mtok_session_ctx(s)) {
            res->finish = MTOK_FINISH_LENGTH;
            break;
        }
        if (cancelled(req)) {
            res->finish = MTOK_FINISH_CANCELLED;
            break;
        }
        if ((rc = mtok_forward(s, &id, 1, NULL))) goto done;
    }
    if (res->stop_string < 0) { /* what the decoder still holds, and the text held back */
        const size_t len = mtok_decode_flush(&dec, piece, cap);
        if (text_piece(&st, -1, piece, len, &res->stop_string, &rc) == PIECE_STOP_STRING)
            res->finish = MTOK_FINISH_STOP;
    }
    res->usage.decode_s = now_s() - t0;
done:
    if (rc) res->finish = MTOK_FINISH_ERROR;
    res->text = st.text;
    res->text_len = st.len;
    mtok_sampler_free(own);
    free(logits);
    free(piece);
    return rc;
}

typedef struct {
    const int32_t *ids;
    int64_t n;
} ids_prompt;

static int feed_ids(mtok_session *s, const void *arg, const mtok_request *req, mtok_usage *usage) {
    const ids_prompt *p = arg;
    return mtok_session_feed(s, p->ids, p->n, req, usage);
}

int mtok_generate(mtok_session *s, const mtok_tokenizer *t, const int32_t *prompt, int64_t n,
                  const mtok_request *req, mtok_result *res) {
    const ids_prompt p = {prompt, n};
    return mtok_generate_fed(s, t, feed_ids, &p, req, res);
}
