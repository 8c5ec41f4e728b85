/* srv.h — what the serve/ sources share inside the server (the public header is serve/serve.h).
 *
 *   resp.c    errors, JSON and event-stream responses, the log line (the bottom: calls nothing here)
 *   http.c    civetweb: binding, routing, auth, bodies, the per-request watcher (the top)
 *   pool.c    the session pool: longest-prefix choice, FIFO queue, 429
 *   parse.c   OpenAI / vLLM request JSON -> srv_gen (every field checked, errors name it)
 *   run.c     srv_gen -> sessions -> responses (logprobs, echo, streaming, tool calls)
 *   info.c    /v1/models, /health, /tokenizer_info, /tokenize, /detokenize
 *   b64.c     the strict base64 decoder of data: URIs (images in chat messages) */
#ifndef MTOK_SRV_H
#define MTOK_SRV_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#include "serve.h"
#include "../core/vision.h"

struct mg_connection;

/* Token counts a request may ask for (max_tokens): as the CLI's -n, 2^30. */
#define CLI_MAX_TOKENS_SRV ((int64_t)1 << 30)

/* ---- the session pool (pool.c) ---- */
typedef struct srv_waiter srv_waiter;
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mtok_session **sess;
    int *busy;
    uint64_t *last_used;
    int64_t *exact;      /* leading positions of each session computed as a fresh prefill computes them */
    int64_t chunk;       /* the sessions' prefill chunk */
    int n;
    srv_waiter **queue; /* FIFO of requests waiting for a session */
    int n_queue, max_queue;
    uint64_t clock;
} srv_pool;
enum { SRV_POOL_OK = 0, SRV_POOL_FULL = 1, SRV_POOL_CANCELLED = 2 };
int srv_pool_init(srv_pool *p, const mtok_model *m, const mtok_session_params *sp, int n, int max_queue);
void srv_pool_free(srv_pool *p);
/* Waits (FIFO) for a free session, then takes the one that can reuse the most of ids (ties: the least
 * recently used): srv_pool_reusable tokens. SRV_POOL_FULL when the queue is full; SRV_POOL_CANCELLED
 * when *cancel became nonzero while waiting. *slot and *waited_s are set on success. */
int srv_pool_acquire(srv_pool *p, const int32_t *ids, int64_t n, volatile int *cancel, int *slot, double *waited_s);
void srv_pool_release(srv_pool *p, int slot);
/* Tokens of ids that session slot can keep so that what follows is computed bit for bit as a fresh
 * prefill of ids computes it: the common prefix, cut to what the session computed in whole chunks
 * from position 0 (exact[slot]), rounded down to a multiple of the chunk. */
int64_t srv_pool_reusable(const srv_pool *p, int slot, const int32_t *ids, int64_t n);

/* ---- the server ---- */
typedef struct {
    srv_config cfg;
    char name[256];              /* served model name */
    mtok_model *model;
    mtok_tokenizer *tok;
    const mtok_config *mc;
    int64_t ctx, chunk, n_valid; /* context limit, prefill chunk, ids the sampler may pick */
    srv_pool pool;
    mtok_vision_cache *vision;   /* GLM-4V: the tower, loaded at the first image and kept (NULL: no tower) */
    int ready, stopping;         /* atomics */
    uint64_t next_id;            /* atomic request counter */
    char *chat_template;         /* tokenizer_config.json's, else mtok's own (info.c) */
} srv;

/* ---- one HTTP request (http.c owns its lifetime) ---- */
typedef struct {
    srv *S;
    struct mg_connection *conn;
    uint64_t id;
    volatile int cancel;         /* set by the watcher: client gone or server stopping */
    int disconnected;
    int fd;                      /* the client socket (-1: not found; writes still detect a gone client) */
    pthread_mutex_t wlock;       /* serializes writes of the handler and the keep-alive watcher */
    pthread_cond_t wcv;          /* wakes the watcher to end */
    pthread_t watcher;
    int watching, watch_end;
    double last_write;
    int sse;                     /* an event stream has begun */
    int responded;               /* a status line went out */
    /* the error to answer with (srv_fail) */
    int err_status;
    char err_msg[600], err_param[96];
    const char *err_type, *err_code;
    /* the log line */
    const char *method, *path;
    int status;
    int64_t prompt, cached, computed, completion;
    double queue_s, prefill_s, decode_s;
    const char *finish;
    char *prompt_log;            /* -v only */
} srv_req;

/* Records an OpenAI-style error for the handler to send; returns -1. param may be NULL. */
int srv_fail(srv_req *r, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* srv_fail with mtok_errmsg() of a library call that failed with rc. */
int srv_fail_lib(srv_req *r, int rc);

/* Responses (resp.c). srv_send_json steals j. */
int srv_send_json(srv_req *r, int status, json_t *j);
int srv_send_error(srv_req *r);
int srv_sse_begin(srv_req *r);
int srv_sse_event(srv_req *r, json_t *j);   /* "data: {j}\n\n"; steals j; -1 when the client is gone */
int srv_sse_done(srv_req *r);               /* "data: [DONE]\n\n" and the end of the stream */
int srv_keepalive_locked(srv_req *r);       /* ": keep-alive" comment; the caller holds r->wlock */
double srv_now(void);
/* One line on stderr, "mtok serve: ...", written in one call so threads do not interleave. */
void srv_log(const srv *S, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* JSON helpers (resp.c): a string from bytes that may hold invalid UTF-8 (replaced by U+FFFD). */
json_t *srv_jstr(const char *s, size_t n);

/* ---- generation requests (parse.c -> run.c) ---- */
enum { SRV_COMPLETIONS = 0, SRV_CHAT = 1, SRV_GENERATE = 2 };
typedef struct {
    int kind;
    mtok_ids *prompts;           /* completions: one per choice; chat and generate: one */
    char **prompt_text;          /* the prompts' text when given as text (echo returns it as sent), else NULL */
    size_t *prompt_text_len;
    int *n_prefix;               /* ids the server put before a text prompt's own ([gMASK]<sop>) */
    size_t n_prompts;
    int64_t max_tokens;          /* -1: up to the context */
    int max_tokens_given;
    mtok_sampler_params sampler;
    char **stop;                 /* stop strings */
    int n_stop;
    int32_t *stop_ids;           /* vLLM's stop_token_ids, chat's end-of-turn ids */
    int n_stop_ids;
    int ignore_eos;
    int logprobs;                /* -1: none; completions: top entries per token; chat: top_logprobs */
    int echo;
    int stream, include_usage;
    /* chat */
    int tools_active;            /* tools given and tool_choice is not "none" */
    json_t *tool_names;          /* array of the declared function names */
    char *forced_tool;           /* tool_choice naming a function: its "name\n" is fed after <|assistant|> */
    /* GLM-4V: the conversation's one image (an image_url part with a data: URI), already checked to
     * decode; NULL when the request has none. Its placeholder triple is in prompts[0] (unexpanded). */
    unsigned char *image;        /* the file's bytes (PNG or JPEG), decoded from base64 */
    size_t image_len;
    int32_t image_ids[3];        /* boi, pad, eoi of the checkpoint's vision_config */
    int64_t image_extra;         /* rows the expansion adds to the prompt: mtok_vision_out_rows - 3 */
} srv_gen;
void srv_gen_free(srv_gen *g);
int srv_parse_completions(srv_req *r, json_t *body, srv_gen *g);
int srv_parse_chat(srv_req *r, json_t *body, srv_gen *g);
int srv_parse_generate(srv_req *r, json_t *body, srv_gen *g);
/* Text -> ids the way vLLM does for these endpoints: special-token text becomes special ids, and
 * add_prefix puts [gMASK]<sop> first unless the text already starts with [gMASK]. */
int srv_tokenize_text(srv_req *r, const char *text, size_t len, int add_prefix, mtok_ids *out, int *n_prefix);
/* messages (+ tools) -> the GLM-4 chat template's ids; used by /v1/chat/completions and /tokenize. */
int srv_chat_ids(srv_req *r, json_t *body, int add_generation_prompt, srv_gen *g, mtok_ids *out);

int srv_run_gen(srv_req *r, srv_gen *g);

/* b64.c: standard padded base64 s[0..n) -> *out (malloc'd, *out_len bytes). SRV_B64_BAD with *bad_at
 * the offset of the first character that is not part of a canonical encoding; SRV_B64_NOMEM. */
enum { SRV_B64_BAD = 1, SRV_B64_NOMEM = 2 };
int srv_b64_decode(const char *s, size_t n, unsigned char **out, size_t *out_len, size_t *bad_at);

/* info.c */
int srv_handle_models(srv_req *r);
int srv_handle_health(srv_req *r);
int srv_handle_tokenizer_info(srv_req *r);
int srv_handle_tokenize(srv_req *r, json_t *body);
int srv_handle_detokenize(srv_req *r, json_t *body);
int srv_load_chat_template(srv *S);

#endif
