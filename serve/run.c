/* run.c — a parsed request (srv_gen) through the pool's sessions into a response.
 *
 * For each prompt (one choice each): take a session (pool.c), keep the part of its tokens that can be
 * reused exactly (srv_pool_reusable: a request's output never depends on what the session served
 * before), generate with mtok_generate, and answer as JSON or as server-sent events.
 *
 * Logprobs: a token's logprob and its top alternatives are read from one log-softmax of the raw
 * logits the token was drawn from (before temperature and penalties, as vLLM reports them), each
 * value computed by the same expression, so lm-evaluation-harness's "is greedy" test (the token's
 * value equals the largest top value) holds bit for bit. With echo, the prompt's own logprobs come
 * from a prefill that keeps every position's logits, chunk by chunk (never the whole prompt's). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/vision.h"
#include "srv.h"

#define TOP_MAX 21 /* top_logprobs <= 20, plus the token itself */

typedef struct {
    int32_t id;
    float lp;
    int n_top;
    int32_t top_id[TOP_MAX];
    float top_lp[TOP_MAX];
} lp_entry;

typedef struct {
    lp_entry *v;
    size_t n, cap;
} lp_list;

/* The logprob of token id and the k most likely tokens under logits x[0..n). */
static void lp_of(const float *x, int64_t n, int32_t id, int k, lp_entry *e) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)x[i] - m);
    const double lse = m + log(sum);
    e->id = id;
    e->lp = (float)((double)x[id] - lse);
    e->n_top = 0;
    for (int64_t i = 0; i < n && k > 0; i++) { /* insertion into the top k, best first */
        if (e->n_top == k && x[i] <= x[e->top_id[k - 1]]) continue;
        int j = e->n_top < k ? e->n_top++ : k - 1;
        while (j > 0 && x[e->top_id[j - 1]] < x[i]) e->top_id[j] = e->top_id[j - 1], j--;
        e->top_id[j] = (int32_t)i;
    }
    for (int j = 0; j < e->n_top; j++) e->top_lp[j] = (float)((double)x[e->top_id[j]] - lse);
}

static int lp_push(lp_list *L, const lp_entry *e) {
    if (L->n == L->cap) {
        const size_t cap = L->cap ? 2 * L->cap : 64;
        lp_entry *v = realloc(L->v, cap * sizeof *v);
        if (!v) return -1;
        L->v = v, L->cap = cap;
    }
    L->v[L->n++] = *e;
    return 0;
}

/* A token's text for logprobs: its bytes when they are UTF-8 on their own, else "bytes:\xNN..." (a
 * byte-level piece of a character), so two different pieces never share a top_logprobs key. */
static json_t *token_str(const srv *S, int32_t id) {
    size_t len = 0;
    const char *b = mtok_token_bytes(S->tok, id, &len);
    if (!b) return json_string("");
    json_t *j = json_stringn(b, len);
    if (j) return j;
    char buf[6 + 4 * 64 + 1];
    size_t o = 0;
    memcpy(buf, "bytes:", 6), o = 6;
    for (size_t i = 0; i < len && i < 64; i++) o += (size_t)snprintf(buf + o, sizeof buf - o, "\\x%02x", (unsigned char)b[i]);
    return json_string(buf);
}

/* Characters a token adds to the text: its bytes that begin a UTF-8 character (a byte piece that
 * only continues one adds none; the one that begins it counts it). */
static size_t n_chars(const srv *S, int32_t id) {
    size_t len = 0, n = 0;
    const char *b = mtok_token_bytes(S->tok, id, &len);
    for (size_t i = 0; b && i < len; i++) n += ((unsigned char)b[i] & 0xc0) != 0x80;
    return n;
}

/* Completions' logprobs object for entries [0, n): with_null, entry 0 has no logprob (echo's first
 * token); the first zero_width entries are ids the server added before a text prompt, which take no
 * room in the echoed text (their offsets stay at 0). */
static json_t *completion_logprobs(const srv *S, const lp_entry *e, size_t n, int with_null, size_t zero_width,
                                   size_t *offset) {
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *t = token_str(S, e[i].id);
        json_array_append_new(offs, json_integer((json_int_t)*offset));
        if (i >= zero_width) *offset += n_chars(S, e[i].id);
        json_array_append_new(toks, t);
        if (with_null && i == 0) {
            json_array_append_new(lps, json_null());
            json_array_append_new(tops, json_null());
            continue;
        }
        json_array_append_new(lps, json_real(e[i].lp));
        json_t *d = json_object();
        for (int j = 0; j < e[i].n_top; j++) {
            json_t *k = token_str(S, e[i].top_id[j]);
            if (!json_object_get(d, json_string_value(k))) json_object_set_new(d, json_string_value(k), json_real(e[i].top_lp[j]));
            json_decref(k);
        }
        json_t *k = token_str(S, e[i].id); /* the token itself is always listed */
        if (!json_object_get(d, json_string_value(k))) json_object_set_new(d, json_string_value(k), json_real(e[i].lp));
        json_decref(k);
        json_array_append_new(tops, d);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", toks, "token_logprobs", lps, "top_logprobs", tops, "text_offset", offs);
}

static json_t *bytes_of(const json_t *s) {
    json_t *a = json_array();
    for (const unsigned char *p = (const unsigned char *)json_string_value(s); *p; p++) json_array_append_new(a, json_integer(*p));
    return a;
}

/* Chat's logprobs object: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}. */
static json_t *chat_logprobs(const srv *S, const lp_entry *e, size_t n) {
    json_t *content = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *t = token_str(S, e[i].id), *top = json_array();
        for (int j = 0; j < e[i].n_top; j++) {
            json_t *k = token_str(S, e[i].top_id[j]);
            json_array_append_new(top, json_pack("{s:O, s:f, s:o}", "token", k, "logprob", (double)e[i].top_lp[j],
                                                 "bytes", bytes_of(k)));
            json_decref(k);
        }
        json_array_append_new(content, json_pack("{s:O, s:f, s:o, s:o}", "token", t, "logprob", (double)e[i].lp, "bytes",
                                                 bytes_of(t), "top_logprobs", top));
        json_decref(t);
    }
    return json_pack("{s:o}", "content", content);
}

/* ---- one choice ---- */
enum { CHAT_UNDECIDED = 0, CHAT_STREAM, CHAT_HOLD };
typedef struct {
    srv_req *r;
    srv_gen *g;
    mtok_session *s;
    int index;
    lp_list gen_lp;      /* the generated tokens' entries */
    size_t streamed_lp;  /* entries already sent in events */
    size_t offset;       /* text_offset of the next token */
    int chat_mode;
    int first_byte_seen;
    char id[64];
    time_t created;
} choice;

static const char *object_name(const srv_gen *g, int chunk) {
    return g->kind == SRV_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
}

static json_t *envelope(const choice *c, int chunk, json_t *choices) {
    json_t *e = json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", c->id, "object", object_name(c->g, chunk), "created",
                          (json_int_t)c->created, "model", c->r->S->name, "choices", choices);
    if (chunk) json_object_set_new(e, "usage", json_null());
    return e;
}

/* A chat chunk; it carries the logprobs of the tokens generated since the last chunk that did. */
static int send_chat_delta(choice *c, json_t *delta, const char *finish) {
    json_t *lp = json_null();
    if (c->g->logprobs >= 0 && c->gen_lp.n > c->streamed_lp) {
        json_decref(lp);
        lp = chat_logprobs(c->r->S, c->gen_lp.v + c->streamed_lp, c->gen_lp.n - c->streamed_lp);
        c->streamed_lp = c->gen_lp.n;
    }
    json_t *ch = json_pack("{s:i, s:o, s:o, s:o}", "index", c->index, "delta", delta, "logprobs", lp,
                           "finish_reason", finish ? json_string(finish) : json_null());
    return srv_sse_event(c->r, envelope(c, 1, json_pack("[o]", ch)));
}

static int send_completion_piece(choice *c, const char *text, size_t len, const char *finish) {
    json_t *lp = json_null();
    if (c->g->logprobs >= 0 && c->gen_lp.n > c->streamed_lp) {
        json_decref(lp);
        lp = completion_logprobs(c->r->S, c->gen_lp.v + c->streamed_lp, c->gen_lp.n - c->streamed_lp, 0, 0, &c->offset);
        c->streamed_lp = c->gen_lp.n;
    }
    json_t *ch = json_pack("{s:i, s:o, s:o, s:o}", "index", c->index, "text", srv_jstr(text, len), "logprobs", lp,
                           "finish_reason", finish ? json_string(finish) : json_null());
    return srv_sse_event(c->r, envelope(c, 1, json_pack("[o]", ch)));
}

static int on_token(int32_t id, const char *text, size_t len, void *user) {
    choice *c = user;
    if (id >= 0 && c->g->logprobs >= 0) {
        lp_entry e;
        lp_of(mtok_session_logits(c->s), c->r->S->n_valid, id, c->g->logprobs, &e);
        if (lp_push(&c->gen_lp, &e)) return 1;
    }
    if (!c->g->stream) return 0;
    if (c->g->kind != SRV_CHAT) {
        if (!len && c->g->logprobs < 0) return 0;
        return send_completion_piece(c, text, len, NULL) ? 1 : 0;
    }
    if (c->chat_mode == CHAT_UNDECIDED && c->g->forced_tool) c->chat_mode = CHAT_HOLD; /* the arguments of a call */
    if (c->chat_mode == CHAT_UNDECIDED && len) { /* the reply's first byte says what it is (GLM-4: "\n" = text) */
        c->chat_mode = text[0] == '\n' ? CHAT_STREAM : c->g->tools_active ? CHAT_HOLD : CHAT_STREAM;
        if (text[0] == '\n') text++, len--;
    }
    if (c->chat_mode != CHAT_STREAM || !len) return 0;
    return send_chat_delta(c, json_pack("{s:o}", "content", srv_jstr(text, len)), NULL) ? 1 : 0;
}

/* Reads the reply as a GLM-4 assistant turn: a declared tool's name line followed by a JSON object is
 * a call; anything else is text (without the turn's leading newline). */
static json_t *chat_message(choice *c, const char *text, size_t len, const char **finish) {
    const srv_gen *g = c->g;
    if (g->tools_active) {
        const size_t fl = g->forced_tool ? strlen(g->forced_tool) + 1 : 0;
        char *full = malloc(fl + len + 1);
        mtok_reply rep = {0};
        if (full) {
            if (fl) memcpy(full, g->forced_tool, fl - 1), full[fl - 1] = '\n';
            memcpy(full + fl, text, len);
            full[fl + len] = 0;
        }
        int known = 0;
        if (full && !mtok_reply_parse(full, &rep) && rep.is_tool_call) {
            size_t i;
            json_t *nm;
            json_array_foreach(g->tool_names, i, nm) known |= !strcmp(json_string_value(nm), rep.name);
        }
        json_t *msg = NULL;
        if (known) {
            char cid[64];
            snprintf(cid, sizeof cid, "call_%llx%llu", (unsigned long long)time(NULL), (unsigned long long)c->r->id);
            json_t *call = json_pack("{s:s, s:s, s:i, s:{s:s, s:s}}", "id", cid, "type", "function", "index", 0,
                                     "function", "name", rep.name, "arguments", rep.arguments);
            msg = json_pack("{s:s, s:n, s:[o]}", "role", "assistant", "content", "tool_calls", call);
            *finish = "tool_calls";
        }
        mtok_reply_free(&rep);
        free(full);
        if (msg) return msg;
    }
    if (len && text[0] == '\n') text++, len--;
    return json_pack("{s:s, s:o}", "role", "assistant", "content", srv_jstr(text, len));
}

/* Echo: reset the session and prefill ids keeping every position's logits, one chunk at a time;
 * out[i] is token i's entry (entry 0 has no logprob). Returns 0, MTOK_CANCELLED or an error. */
static int prompt_logprobs(choice *c, const int32_t *ids, int64_t n, lp_list *out, int64_t *exact) {
    const srv *S = c->r->S;
    const int64_t V = S->mc->vocab;
    int64_t piece = S->chunk;
    if (piece * V > ((int64_t)1 << 27)) piece = ((int64_t)1 << 27) / V > 0 ? ((int64_t)1 << 27) / V : 1; /* <= 512 MiB */
    float *buf = malloc((size_t)(piece * V) * sizeof *buf);
    if (!buf) return mtok_err(MTOK_ERESOURCE, "out of memory for %lld x %lld echo logits", (long long)piece, (long long)V);
    mtok_session_reset(c->s);
    lp_entry e0 = {.id = ids[0]};
    int rc = lp_push(out, &e0) ? mtok_err(MTOK_ERESOURCE, "out of memory") : 0;
    for (int64_t i = 0; !rc && i < n; i += piece) {
        if (__atomic_load_n(&c->r->cancel, __ATOMIC_RELAXED)) {
            rc = MTOK_CANCELLED;
            break;
        }
        const int64_t k = n - i < piece ? n - i : piece;
        if ((rc = mtok_forward(c->s, ids + i, k, buf))) break;
        for (int64_t j = 0; j < k && i + j + 1 < n; j++) {
            lp_entry e;
            lp_of(buf + j * V, S->n_valid, ids[i + j + 1], c->g->logprobs, &e);
            if (lp_push(out, &e)) {
                rc = mtok_err(MTOK_ERESOURCE, "out of memory for prompt logprobs");
                break;
            }
        }
    }
    free(buf);
    /* whole chunks from position 0 are what a fresh prefill computes; smaller pieces are not */
    *exact = piece == S->chunk ? mtok_session_pos(c->s) / S->chunk * S->chunk : 0;
    return rc;
}

/* Echo's text: the prompt as the client sent it, or its ids' text when it came as ids. */
static char *echo_text(const srv *S, const srv_gen *g, size_t i, size_t *len) {
    if (g->prompt_text[i]) {
        char *t = malloc(g->prompt_text_len[i] + 1);
        if (t) memcpy(t, g->prompt_text[i], g->prompt_text_len[i] + 1), *len = g->prompt_text_len[i];
        return t;
    }
    return mtok_detokenize(S->tok, g->prompts[i].v, g->prompts[i].n, len);
}

static json_t *usage_json(int64_t prompt, int64_t completion, int64_t cached) {
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                     (json_int_t)completion, "total_tokens", (json_int_t)(prompt + completion), "prompt_tokens_details",
                     "cached_tokens", (json_int_t)cached);
}

static int check_lengths(srv_req *r, srv_gen *g) {
    for (size_t i = 0; i < g->n_prompts; i++) {
        /* an image counts as the rows it becomes (the prompt the model sees) */
        const int64_t n = (int64_t)g->prompts[i].n + (g->image ? g->image_extra : 0), want = g->max_tokens_given ? g->max_tokens : 0;
        if (n == 0) return srv_fail(r, 400, g->kind == SRV_CHAT ? "messages" : "prompt", NULL, "the prompt is empty");
        if (n + want > r->S->ctx || n > r->S->ctx)
            return srv_fail(r, 400, g->kind == SRV_CHAT ? "messages" : "prompt", "context_length_exceeded",
                            "This model's maximum context length is %lld tokens. However, you requested %lld tokens "
                            "(%lld in the prompt%s, %lld for the completion). Shorten the prompt or max_tokens, or "
                            "start the server with a larger --ctx.", (long long)r->S->ctx, (long long)(n + want),
                            (long long)n, g->n_prompts > 1 ? " of this choice" : "", (long long)want);
    }
    return 0;
}

/* Generation from a prompt with an image: the tower runs, then the language model over the expanded
 * rows with their shared positions (core/vision_prompt.c), decoding as mtok_generate does. */
static int image_generate(srv_req *r, srv_gen *g, choice *c, const mtok_ids *p, const mtok_request *req,
                          mtok_result *res) {
    const mtok_vision_prefill_params vp = {.model_dir = r->S->cfg.model_dir, .image_data = g->image,
                                           .image_len = g->image_len, .cache = r->S->vision, .ids = p->v,
                                           .n = (int64_t)p->n, .vision = {.threads = r->S->cfg.sess.threads,
                                                                          .progress_s = -1,
                                                                          .device = r->S->cfg.vision_device}};
    return mtok_vision_generate(c->s, r->S->tok, &vp, req, res);
}

/* Runs prompt i on a session: choice c is filled, res receives the outcome, *out_usage the counts. */
static int run_one(srv_req *r, srv_gen *g, choice *c, size_t i, lp_list *echo_lp, mtok_result *res) {
    srv *S = r->S;
    const mtok_ids *p = &g->prompts[i];
    int slot = -1;
    double waited = 0;
    /* a prompt with an image reuses nothing (below), so it takes the least recently used session
     * rather than the one whose prefix another request could reuse */
    const int image = g->image != NULL;
    const int q = srv_pool_acquire(&S->pool, p->v, image ? 0 : (int64_t)p->n, &r->cancel, &slot, &waited);
    r->queue_s += waited;
    if (q == SRV_POOL_FULL)
        return srv_fail(r, 429, NULL, NULL, "all %d sessions are busy and %d requests already wait; retry later",
                        S->pool.n, S->pool.max_queue);
    if (q == SRV_POOL_CANCELLED) return MTOK_CANCELLED;
    c->s = S->pool.sess[slot];
    if (g->stream && !r->sse) { /* headers only now: a full queue above is still a clean 429 */
        srv_sse_begin(r);
        if (g->kind == SRV_CHAT) send_chat_delta(c, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL);
    }
    const int64_t n = (int64_t)p->n, rows = n + (image ? g->image_extra : 0);
    /* Images and prefix reuse: equal placeholder ids need not be an equal image, so a prompt with an
     * image starts from an empty session (the tower and the whole prompt run), and the session is
     * left with exact = 0 below, so the next request reuses nothing of it either. */
    int64_t keep = image ? 0 : srv_pool_reusable(&S->pool, slot, p->v, n), exact = 0;
    if (image) mtok_session_reset(c->s);
    int rc = keep < mtok_session_pos(c->s) ? mtok_session_truncate(c->s, keep) : 0;
    const int echo = g->echo && g->logprobs >= 0;
    if (!rc && echo) {
        const double t0 = srv_now();
        keep = 0;
        rc = prompt_logprobs(c, p->v, n, echo_lp, &exact);
        r->prefill_s += srv_now() - t0;
    }
    const int64_t max_new = g->max_tokens >= 0 ? g->max_tokens : S->ctx - rows;
    mtok_request req = {.max_tokens = max_new, .stop_ids = g->stop_ids, .n_stop_ids = g->n_stop_ids,
                        .ignore_eos = g->ignore_eos, .stop_strings = (const char *const *)g->stop, .n_stop_strings = g->n_stop,
                        .sampler = g->sampler, .cancel = &r->cancel, .on_token = on_token, .user = c};
    if (!rc && g->stream && g->echo) { /* the prompt's text (and logprobs) lead the stream */
        size_t tl = 0;
        char *t = echo_text(S, g, i, &tl);
        json_t *lp = echo ? completion_logprobs(S, echo_lp->v, echo_lp->n, 1, (size_t)g->n_prefix[i], &c->offset)
                          : json_null();
        json_t *ch = json_pack("{s:i, s:o, s:o, s:n}", "index", c->index, "text", srv_jstr(t ? t : "", t ? tl : 0),
                               "logprobs", lp, "finish_reason");
        srv_sse_event(r, envelope(c, 1, json_pack("[o]", ch)));
        free(t);
    }
    if (rc == 0 && (max_new > 0 || !echo)) {
        if (image) rc = image_generate(r, g, c, p, &req, res);
        else rc = mtok_generate(c->s, S->tok, p->v, n, &req, res);
        if (rc && !r->err_status) rc = srv_fail_lib(r, rc);
        else if (res->finish == MTOK_FINISH_CANCELLED) rc = MTOK_CANCELLED;
        if (!rc && res->stop_id >= 0) {
            /* a stop id is a generated token (as vLLM counts it): in the usage and the logprobs, not the
             * text. lm-eval's loglikelihood drops the last entry, which must be this one. The session
             * still holds the logits it was drawn from (it is never fed). */
            res->usage.generated_tokens++;
            if (g->logprobs >= 0) {
                lp_entry e;
                lp_of(mtok_session_logits(c->s), S->n_valid, res->stop_id, g->logprobs, &e);
                if (lp_push(&c->gen_lp, &e)) rc = srv_fail(r, 500, NULL, NULL, "out of memory for logprobs");
            }
        }
        /* exact afterwards: whole chunks fed from an exact start; a prompt the session held in full
         * (after echo, or kept whole) had its last position computed again, alone */
        const int64_t fed = res->usage.cached_tokens + res->usage.computed_tokens, last = (n - 1) / S->chunk * S->chunk;
        if (image) exact = 0;
        else if (echo || keep == n) exact = (echo ? exact : n) < last ? (echo ? exact : n) : last;
        else exact = fed / S->chunk * S->chunk;
    } else if (rc == 0) {
        res->finish = MTOK_FINISH_LENGTH;
        res->usage.prompt_tokens = n;
    } else if (rc != MTOK_CANCELLED) {
        rc = srv_fail_lib(r, rc);
        exact = 0;
    }
    if (!echo) res->usage.cached_tokens = res->usage.cached_tokens > keep ? keep : res->usage.cached_tokens;
    else res->usage.cached_tokens = 0;
    S->pool.exact[slot] = exact;
    srv_pool_release(&S->pool, slot);
    r->prompt += rows;
    r->cached += res->usage.cached_tokens;
    r->computed += echo ? n : res->usage.computed_tokens;
    r->completion += res->usage.generated_tokens;
    r->prefill_s += res->usage.prefill_s;
    r->decode_s += res->usage.decode_s;
    return rc;
}

int srv_run_gen(srv_req *r, srv_gen *g) {
    srv *S = r->S;
    if (check_lengths(r, g)) return -1;
    if (S->cfg.log_level >= 2 && g->n_prompts) {
        size_t tl = 0;
        r->prompt_log = mtok_detokenize(S->tok, g->prompts[0].v, g->prompts[0].n, &tl);
    }
    json_t *choices = json_array();
    int64_t completion = 0;
    int rc = 0;
    const char *last_finish = NULL;
    char id[64];
    snprintf(id, sizeof id, "%s-%llx%llu", g->kind == SRV_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)time(NULL),
             (unsigned long long)r->id);
    for (size_t i = 0; i < g->n_prompts && !rc; i++) {
        choice c = {.r = r, .g = g, .index = (int)i, .created = time(NULL)};
        snprintf(c.id, sizeof c.id, "%s", id);
        lp_list echo_lp = {0};
        mtok_result res = {0};
        rc = run_one(r, g, &c, i, &echo_lp, &res);
        const char *finish = res.finish == MTOK_FINISH_LENGTH ? "length" : "stop";
        if (!rc) {
            const char *text = res.text ? res.text : "";
            const size_t len = res.text ? res.text_len : 0;
            completion += res.usage.generated_tokens;
            if (g->kind == SRV_CHAT) {
                const char *f = finish;
                json_t *msg = chat_message(&c, text, len, &f);
                if (g->stream) {
                    if (!strcmp(f, "tool_calls")) {
                        json_t *calls = json_incref(json_object_get(msg, "tool_calls"));
                        send_chat_delta(&c, json_pack("{s:o}", "tool_calls", calls), NULL);
                    } else if (c.chat_mode != CHAT_STREAM && json_string_length(json_object_get(msg, "content"))) {
                        send_chat_delta(&c, json_pack("{s:O}", "content", json_object_get(msg, "content")), NULL);
                    }
                    send_chat_delta(&c, json_object(), f);
                    json_decref(msg);
                } else {
                    json_t *lp = g->logprobs >= 0 ? chat_logprobs(S, c.gen_lp.v, c.gen_lp.n) : json_null();
                    json_array_append_new(choices, json_pack("{s:i, s:o, s:o, s:s}", "index", (int)i, "message", msg,
                                                             "logprobs", lp, "finish_reason", f));
                }
                finish = f;
            } else if (g->stream) {
                send_completion_piece(&c, "", 0, finish);
            } else {
                json_t *lp = json_null();
                char *ptext = NULL;
                size_t pl = 0;
                if (g->echo) ptext = echo_text(S, g, i, &pl);
                if (g->logprobs >= 0) {
                    json_decref(lp);
                    lp_list all = echo_lp;
                    for (size_t k = 0; k < c.gen_lp.n; k++) lp_push(&all, &c.gen_lp.v[k]);
                    lp = completion_logprobs(S, all.v, all.n, g->echo, g->echo ? (size_t)g->n_prefix[i] : 0, &c.offset);
                    echo_lp = all;
                }
                char *full = malloc(pl + len + 1);
                if (full) {
                    if (pl) memcpy(full, ptext, pl);
                    memcpy(full + pl, text, len);
                }
                json_array_append_new(choices, json_pack("{s:i, s:o, s:o, s:s}", "index", (int)i, "text",
                                                         srv_jstr(full ? full : "", full ? pl + len : 0), "logprobs", lp,
                                                         "finish_reason", finish));
                free(full);
                free(ptext);
            }
            last_finish = finish;
        }
        free(c.gen_lp.v);
        free(echo_lp.v);
        mtok_result_free(&res);
    }
    if (rc == MTOK_CANCELLED) {
        r->finish = "cancelled";
        json_decref(choices);
        if (r->disconnected) return 0; /* nobody to answer */
        return srv_fail(r, 503, NULL, NULL, "the server is shutting down; the request was cancelled");
    }
    if (rc) {
        json_decref(choices);
        return -1;
    }
    r->finish = last_finish;
    if (g->stream) {
        json_decref(choices);
        if (g->include_usage) {
            choice c = {.r = r, .g = g, .created = time(NULL)};
            snprintf(c.id, sizeof c.id, "%s", id);
            json_t *e = envelope(&c, 1, json_array());
            json_object_set_new(e, "usage", usage_json(r->prompt, completion, r->cached));
            srv_sse_event(r, e);
        }
        srv_sse_done(r);
        return 0;
    }
    if (g->kind == SRV_GENERATE) {
        json_t *texts = json_array();
        json_array_append(texts, json_object_get(json_array_get(choices, 0), "text"));
        json_decref(choices);
        return srv_send_json(r, 200, json_pack("{s:o}", "text", texts));
    }
    choice c = {.r = r, .g = g, .created = time(NULL)};
    snprintf(c.id, sizeof c.id, "%s", id);
    json_t *e = envelope(&c, 0, choices);
    json_object_set_new(e, "usage", usage_json(r->prompt, completion, r->cached));
    return srv_send_json(r, 200, e);
}
