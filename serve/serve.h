/* serve.h — the one public header of mtok's HTTP server (`mtok serve`, docs/SERVER.md).
 *
 * An OpenAI- and vLLM-compatible endpoint over a pool of sessions of one model: completions (token
 * logprobs, echo, stop strings, streaming), chat completions with GLM-4 tool calls, the tokenizer
 * endpoints lm-evaluation-harness probes, and RULER's PUT /generate. Built on civetweb (one worker
 * thread per connection, so a request is straight-line code that blocks on the engine) and jansson. */
#ifndef MTOK_SERVE_H
#define MTOK_SERVE_H

#include <signal.h>
#include <stdint.h>

#include "mtok.h"

typedef struct {
    const char *model_dir;     /* -m DIR */
    const char *host;          /* address to bind (default 127.0.0.1: loopback only) */
    int port;                  /* 0: a free port, chosen at start and logged */
    const char *api_key;       /* NULL: no key asked; else "Authorization: Bearer KEY" on every path but /health */
    const char *model_name;    /* the id /v1/models reports (NULL: the last component of model_dir) */
    const char *vision_device; /* GLM-4V: where the tower runs for an image request (NULL: the sessions' device) */
    int sessions;              /* sessions in the pool (each with its own KV cache and cold-tier files) */
    int max_queue;             /* requests that may wait for a session; beyond: 429 */
    int64_t max_body;          /* request body bytes; beyond: 413 */
    double keepalive_s;        /* SSE comment interval while nothing else is written */
    int log_level;             /* 0 errors only (-q), 1 a line per request, 2 (-v) also the prompts */
    mtok_load_params load;     /* how the model loads (rope override) */
    mtok_session_params sess;  /* every session of the pool is created with these */
} srv_config;

/* Binds, answers /health with "loading" while the model loads, then serves until *stop becomes
 * nonzero (a signal handler sets it): requests in flight are cancelled at their next chunk or decode
 * step, their handlers finish, and everything is freed. Returns 0, or an MTOK_E* code with
 * mtok_errmsg() set (bind failure, model load failure). */
int srv_run(const srv_config *cfg, volatile sig_atomic_t *stop);

#endif
