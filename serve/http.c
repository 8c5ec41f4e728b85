/* http.c — the HTTP side of `mtok serve`: civetweb setup, routing, the API key, request bodies,
 * JSON and event-stream responses, and the watcher each generation request runs beside it.
 *
 * civetweb gives every connection its own worker thread, so a request is straight-line code that
 * blocks in the engine. Two things must happen while it blocks, and the watcher thread does them:
 *  - a client that goes away must cancel the request (between prefill chunks and decode steps).
 *    A streamed request finds out on its next write, but a non-streamed one writes nothing until
 *    it is done, so the watcher polls the client's socket for a hang-up. civetweb does not expose
 *    the socket, so find_client_fd looks it up by the connection's address pair (unique per TCP
 *    connection, and stable while the handler runs: civetweb closes it only after we return);
 *  - an event stream must carry a comment at least every --keepalive seconds, or clients with read
 *    timeouts give up during a long prefill. */
#include <arpa/inet.h>
#include <civetweb.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "srv.h"

/* ---- the watcher ---- */
static int same_addr(const struct sockaddr_storage *a, const char *addr, int port) {
    char buf[INET6_ADDRSTRLEN];
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)a;
        inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
        return ntohs(in->sin_port) == port && !strcmp(buf, addr);
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in = (const void *)a;
        inet_ntop(AF_INET6, &in->sin6_addr, buf, sizeof buf);
        return ntohs(in->sin6_port) == port && (!strcmp(buf, addr) || (!strncmp(buf, "::ffff:", 7) && !strcmp(buf + 7, addr)));
    }
    return 0;
}

static int local_port(const struct sockaddr_storage *a) {
    if (a->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)(const void *)a)->sin_port);
    if (a->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)(const void *)a)->sin6_port);
    return -1;
}

static int find_client_fd(const struct mg_request_info *ri) {
    DIR *d = opendir("/proc/self/fd");
    int found = -1;
    for (struct dirent *e; d && found < 0 && (e = readdir(d));) {
        char *end;
        const long fd = strtol(e->d_name, &end, 10);
        if (*end || end == e->d_name || fd == dirfd(d)) continue;
        struct sockaddr_storage peer, self;
        socklen_t pl = sizeof peer, sl = sizeof self;
        if (getpeername((int)fd, (struct sockaddr *)&peer, &pl) || getsockname((int)fd, (struct sockaddr *)&self, &sl))
            continue;
        if (same_addr(&peer, ri->remote_addr, ri->remote_port) && local_port(&self) == ri->server_port) found = (int)fd;
    }
    if (d) closedir(d);
    return found;
}

static int client_gone(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return 1;
    char c;
    return (p.revents & POLLIN) && recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static void *watch(void *arg) {
    srv_req *r = arg;
    pthread_mutex_lock(&r->wlock);
    while (!r->watch_end) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&r->wcv, &r->wlock, &ts);
        if (r->watch_end) break;
        if (__atomic_load_n(&r->S->stopping, __ATOMIC_RELAXED)) __atomic_store_n(&r->cancel, 1, __ATOMIC_RELAXED);
        if (!r->disconnected && r->fd >= 0 && client_gone(r->fd)) {
            r->disconnected = 1;
            __atomic_store_n(&r->cancel, 1, __ATOMIC_RELAXED);
        }
        if (r->sse && !r->disconnected && srv_now() - r->last_write >= r->S->cfg.keepalive_s)
            srv_keepalive_locked(r);
    }
    pthread_mutex_unlock(&r->wlock);
    return NULL;
}

static void watch_start(srv_req *r, const struct mg_request_info *ri) {
    r->fd = find_client_fd(ri);
    if (r->fd < 0) srv_log(r->S, 2, "req %llu: client socket not found; a disconnect is seen on the next write",
                           (unsigned long long)r->id);
    r->watching = !pthread_create(&r->watcher, NULL, watch, r);
}

static void watch_stop(srv_req *r) {
    if (!r->watching) return;
    pthread_mutex_lock(&r->wlock);
    r->watch_end = 1;
    pthread_cond_signal(&r->wcv);
    pthread_mutex_unlock(&r->wlock);
    pthread_join(r->watcher, NULL);
    r->watching = 0;
}

/* ---- requests ---- */
static int read_body(srv_req *r, const struct mg_request_info *ri, char **out, size_t *len) {
    const int64_t max = r->S->cfg.max_body;
    if (ri->content_length > max)
        return srv_fail(r, 413, NULL, NULL, "request body of %lld bytes is over the limit of %lld bytes (--max-body)",
                        ri->content_length, (long long)max);
    size_t cap = ri->content_length >= 0 ? (size_t)ri->content_length + 1 : 65536, n = 0;
    char *b = malloc(cap);
    if (!b) return srv_fail(r, 500, NULL, NULL, "out of memory for a request body of %lld bytes", ri->content_length);
    for (;;) {
        if (n + 1 >= cap) {
            if ((int64_t)n > max) {
                free(b);
                return srv_fail(r, 413, NULL, NULL, "request body is over the limit of %lld bytes (--max-body)",
                                (long long)max);
            }
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return srv_fail(r, 500, NULL, NULL, "out of memory for a request body");
            }
            b = nb, cap *= 2;
        }
        const int k = mg_read(r->conn, b + n, cap - 1 - n);
        if (k <= 0) break;
        n += (size_t)k;
    }
    if (ri->content_length >= 0 && (long long)n < ri->content_length) {
        free(b);
        return srv_fail(r, 400, NULL, NULL, "request body ended after %zu of %lld bytes", n, ri->content_length);
    }
    b[n] = 0;
    *out = b, *len = n;
    return 0;
}

static int parse_body(srv_req *r, const char *b, size_t n, json_t **out) {
    json_error_t je;
    json_t *j = json_loadb(b, n, 0, &je);
    if (!j) return srv_fail(r, 400, NULL, NULL, "request body is not valid JSON: %s (line %d, column %d)", je.text,
                            je.line, je.column);
    if (!json_is_object(j)) {
        json_decref(j);
        return srv_fail(r, 400, NULL, NULL, "request body must be a JSON object");
    }
    *out = j;
    return 0;
}

static int authorized(const srv *S, const struct mg_request_info *ri) {
    if (!S->cfg.api_key) return 1;
    const char *h = NULL;
    for (int i = 0; i < ri->num_headers; i++)
        if (!strcasecmp(ri->http_headers[i].name, "Authorization")) h = ri->http_headers[i].value;
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    while (*h == ' ') h++;
    /* compare every byte whatever the first difference, so timing says nothing of the key */
    const size_t n = strlen(S->cfg.api_key), m = strlen(h);
    unsigned diff = m != n;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)S->cfg.api_key[i] ^ (unsigned char)(i < m ? h[i] : 0);
    return !diff;
}

static const struct {
    const char *path, *method, *alt_method;
    int gen;     /* a generation request: runs the watcher */
} ROUTES[] = {
    {"/v1/completions", "POST", NULL, 1}, {"/v1/chat/completions", "POST", NULL, 1},
    {"/generate", "PUT", "POST", 1},      {"/v1/models", "GET", NULL, 0},
    {"/health", "GET", NULL, 0},          {"/tokenizer_info", "GET", NULL, 0},
    {"/tokenize", "POST", NULL, 0},       {"/detokenize", "POST", NULL, 0},
};

static int dispatch(srv_req *r, int route, json_t *body) {
    srv_gen g = {0};
    int rc;
    switch (route) {
    case 0: rc = srv_parse_completions(r, body, &g); break;
    case 1: rc = srv_parse_chat(r, body, &g); break;
    case 2: rc = srv_parse_generate(r, body, &g); break;
    case 3: return srv_handle_models(r);
    case 4: return srv_handle_health(r);
    case 5: return srv_handle_tokenizer_info(r);
    case 6: return srv_handle_tokenize(r, body);
    default: return srv_handle_detokenize(r, body);
    }
    if (!rc) rc = srv_run_gen(r, &g);
    srv_gen_free(&g);
    return rc;
}

static int handle(struct mg_connection *conn, void *cbdata) {
    srv *S = cbdata;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    srv_req r = {.S = S, .conn = conn, .fd = -1, .method = ri->request_method, .path = ri->local_uri,
                 .id = __atomic_add_fetch(&S->next_id, 1, __ATOMIC_RELAXED)};
    pthread_mutex_init(&r.wlock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r.wcv, &ca);
    pthread_condattr_destroy(&ca);
    const double t0 = srv_now();
    /* the openai client numbers its retries (0, 1, 2): a retry of a long prefill that timed out is
     * worth seeing in the log, since it should find the kept prefix */
    const char *retry = mg_get_header(conn, "x-stainless-retry-count");
    int route = -1, rc = 0;
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++)
        if (!strcmp(ri->local_uri, ROUTES[i].path)) route = (int)i;
    json_t *body = NULL;
    if (route < 0) {
        rc = srv_fail(&r, 404, NULL, NULL, "no such path: %s %s", ri->request_method, ri->local_uri);
    } else if (strcmp(ri->request_method, ROUTES[route].method) &&
               !(ROUTES[route].alt_method && !strcmp(ri->request_method, ROUTES[route].alt_method))) {
        rc = srv_fail(&r, 405, NULL, NULL, "%s takes %s, not %s", ROUTES[route].path, ROUTES[route].method,
                      ri->request_method);
    } else if (route != 4 && !authorized(S, ri)) {
        rc = srv_fail(&r, 401, NULL, "invalid_api_key", "missing or wrong API key: send the header "
                      "\"Authorization: Bearer KEY\" with the key given to --api-key");
    } else if (route != 4 && !__atomic_load_n(&S->ready, __ATOMIC_ACQUIRE)) {
        rc = srv_fail(&r, 503, NULL, NULL, "the model is still loading");
    } else if (!strcmp(ROUTES[route].method, "POST") || !strcmp(ROUTES[route].method, "PUT")) {
        char *b = NULL;
        size_t n = 0;
        rc = read_body(&r, ri, &b, &n);
        if (!rc) rc = parse_body(&r, b, n, &body);
        free(b);
    }
    if (!rc) {
        if (ROUTES[route].gen) watch_start(&r, ri);
        rc = dispatch(&r, route, body);
        watch_stop(&r);
    }
    json_decref(body);
    if (rc && !r.disconnected) srv_send_error(&r);
    /* 499: the client closed the connection before the answer (nginx's code; no status line went out) */
    if (!r.status) r.status = r.err_status ? r.err_status : r.disconnected ? 499 : 200;
    if (route >= 0 && ROUTES[route].gen) {
        const double pre = r.prefill_s > 0 ? (double)r.computed / r.prefill_s : 0;
        const double dec = r.decode_s > 0 ? (double)r.completion / r.decode_s : 0;
        srv_log(S, 1, "req %llu %s %s status=%d prompt=%lld cached=%lld computed=%lld completion=%lld queue_ms=%.0f "
                "prefill_tok_s=%.1f decode_tok_s=%.1f finish=%s%s total_ms=%.0f%s%s", (unsigned long long)r.id, r.method,
                r.path, r.status, (long long)r.prompt, (long long)r.cached, (long long)r.computed, (long long)r.completion, 1e3 * r.queue_s,
                pre, dec, r.finish ? r.finish : "error",
                !r.finish || strcmp(r.finish, "cancelled") ? ""
                : r.disconnected ? " (client disconnected)" : " (server stopping)",
                1e3 * (srv_now() - t0), retry && strcmp(retry, "0") ? " retry=" : "", retry && strcmp(retry, "0") ? retry : "");
        if (r.prompt_log) srv_log(S, 2, "req %llu prompt: %s", (unsigned long long)r.id, r.prompt_log);
    } else {
        srv_log(S, 2, "req %llu %s %s status=%d", (unsigned long long)r.id, r.method, r.path, r.status);
    }
    free(r.prompt_log);
    pthread_cond_destroy(&r.wcv);
    pthread_mutex_destroy(&r.wlock);
    return r.status;
}

static int log_message(const struct mg_connection *conn, const char *message) {
    srv_log(NULL, 0, "civetweb: %s", message);
    return 1;
}

int srv_run(const srv_config *cfg, volatile sig_atomic_t *stop) {
    srv *S = calloc(1, sizeof *S);
    if (!S) return mtok_err(MTOK_ERESOURCE, "out of memory");
    S->cfg = *cfg;
    const char *base = strrchr(cfg->model_dir, '/');
    while (base && !base[1] && base > cfg->model_dir) { /* a trailing slash: the component before it */
        const char *p = base - 1;
        while (p > cfg->model_dir && *p != '/') p--;
        base = p;
    }
    snprintf(S->name, sizeof S->name, "%s", cfg->model_name ? cfg->model_name : base ? base + (*base == '/') : cfg->model_dir);
    char *slash = strchr(S->name, '/');
    if (!cfg->model_name && slash) *slash = 0;
    int port = cfg->port, rc = 0;
    char ports[300], threads[16];
    snprintf(ports, sizeof ports, "%s:%d", cfg->host, port);
    /* every pooled and queued request holds a worker; the rest keep /health and /tokenize answering */
    snprintf(threads, sizeof threads, "%d", cfg->sessions + cfg->max_queue + 16);
    const char *opts[] = {"listening_ports", ports, "num_threads", threads, "request_timeout_ms", "120000",
                          "enable_keep_alive", "yes", "keep_alive_timeout_ms", "5000", NULL};
    struct mg_callbacks cb = {.log_message = log_message};
    mg_init_library(0);
    struct mg_context *ctx = mg_start(&cb, S, opts);
    if (!ctx) {
        mg_exit_library();
        free(S);
        return mtok_err(MTOK_EUSAGE, "cannot listen on %s (address in use, or not an address of this machine)", ports);
    }
    mg_set_request_handler(ctx, "/", handle, S);
    struct mg_server_port sp[4];
    if (port == 0 && mg_get_server_ports(ctx, 4, sp) > 0) port = sp[0].port; /* --port 0: the one the kernel chose */
    srv_log(S, 0, "listening on http://%s:%d (loading %s)", cfg->host, port, cfg->model_dir);

    rc = mtok_model_load(cfg->model_dir, &cfg->load, &S->model);
    if (!rc) rc = mtok_tokenizer_load(cfg->model_dir, &S->tok);
    if (!rc) rc = srv_pool_init(&S->pool, S->model, &cfg->sess, cfg->sessions, cfg->max_queue);
    if (!rc) rc = srv_load_chat_template(S);
    /* a GLM-4V checkpoint: one tower for every session, loaded at the first image and kept */
    if (!rc && mtok_vision_config_present(cfg->model_dir) == 1) rc = mtok_vision_cache_create(&S->vision);
    if (!rc) {
        S->mc = mtok_model_config(S->model);
        S->ctx = mtok_session_ctx(S->pool.sess[0]);
        S->chunk = mtok_session_chunk(S->pool.sess[0]);
        const int64_t nv = mtok_tokenizer_n_vocab(S->tok);
        S->n_valid = nv < S->mc->vocab ? nv : S->mc->vocab;
        srv_log(S, 0, "ready: model %s, %d session%s, context %lld tokens, chunk %lld", S->name, cfg->sessions,
                cfg->sessions == 1 ? "" : "s", (long long)S->ctx, (long long)S->chunk);
        __atomic_store_n(&S->ready, 1, __ATOMIC_RELEASE); /* after the line: a client that saw 200 finds it */
        while (!*stop) usleep(50 * 1000);
        srv_log(S, 0, "stopping: cancelling the requests in flight");
    }
    __atomic_store_n(&S->stopping, 1, __ATOMIC_RELAXED);
    mg_stop(ctx); /* returns when every handler has returned */
    mg_exit_library();
    if (S->pool.sess) srv_pool_free(&S->pool);
    mtok_vision_cache_free(S->vision);
    mtok_tokenizer_free(S->tok);
    mtok_model_free(S->model);
    free(S->chat_template);
    free(S);
    if (!rc) srv_log(NULL, 0, "stopped");
    return rc;
}
