/* resp.c — what every part of the server answers with: OpenAI-style errors, JSON bodies, server-sent
 * events, and the log line. The bottom of serve/: it calls nothing else of it (tests/test_layers.py).
 *
 * Writes to one connection come from two threads, the handler and its watcher's keep-alive comments
 * (serve/http.c), so every write holds the request's wlock. */
#include <civetweb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "srv.h"

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void srv_log(const srv *S, int level, const char *fmt, ...) {
    if (S && level > S->cfg.log_level) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "mtok serve: %s\n", buf);
}

int srv_fail(srv_req *r, int status, const char *param, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err_msg, sizeof r->err_msg, fmt, ap);
    va_end(ap);
    r->err_status = status;
    snprintf(r->err_param, sizeof r->err_param, "%s", param ? param : "");
    r->err_code = code;
    r->err_type = status == 401 ? "authentication_error" : status == 404 ? "not_found_error"
                : status == 429 ? "rate_limit_error" : status >= 500 ? "server_error" : "invalid_request_error";
    return -1;
}

int srv_fail_lib(srv_req *r, int rc) {
    const int st = rc == MTOK_EINPUT || rc == MTOK_EUSAGE ? 400 : 500;
    return srv_fail(r, st, NULL, NULL, "%s", mtok_errmsg());
}

/* ---- writing ---- */
static int write_all(srv_req *r, const char *p, size_t n, int chunked) {
    if (r->disconnected) return -1;
    int ok = chunked ? mg_send_chunk(r->conn, p, (unsigned)n) > 0 : mg_write(r->conn, p, n) == (int)n;
    if (!ok) {
        r->disconnected = 1;
        __atomic_store_n(&r->cancel, 1, __ATOMIC_RELAXED);
        return -1;
    }
    r->last_write = srv_now();
    return 0;
}

static void headers(srv_req *r, int status, const char *type, long long length) {
    char len[32];
    mg_response_header_start(r->conn, status);
    mg_response_header_add(r->conn, "Content-Type", type, -1);
    if (length >= 0) {
        snprintf(len, sizeof len, "%lld", length);
        mg_response_header_add(r->conn, "Content-Length", len, -1);
    } else {
        mg_response_header_add(r->conn, "Transfer-Encoding", "chunked", -1);
        mg_response_header_add(r->conn, "Cache-Control", "no-cache", -1);
    }
    if (status == 429) mg_response_header_add(r->conn, "Retry-After", "1", -1);
    mg_response_header_send(r->conn);
    r->status = status;
    r->responded = 1;
}

int srv_send_json(srv_req *r, int status, json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (!s) {
        status = 500;
        s = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
        if (!s) return -1;
    }
    pthread_mutex_lock(&r->wlock);
    headers(r, status, "application/json", (long long)strlen(s));
    const int rc = write_all(r, s, strlen(s), 0);
    pthread_mutex_unlock(&r->wlock);
    free(s);
    return rc;
}

static json_t *error_object(const srv_req *r) {
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", r->err_msg, "type",
                     r->err_type ? r->err_type : "invalid_request_error", "param",
                     r->err_param[0] ? json_string(r->err_param) : json_null(), "code",
                     r->err_code ? json_string(r->err_code) : json_null());
}

int srv_send_error(srv_req *r) {
    if (!r->err_status) srv_fail(r, 500, NULL, NULL, "internal error");
    if (r->finish == NULL) r->finish = "error";
    srv_log(r->S, 1, "req %llu: %d %s", (unsigned long long)r->id, r->err_status, r->err_msg);
    if (r->sse) { /* the stream has begun: the error becomes an event, then the end */
        r->status = r->err_status;
        srv_sse_event(r, error_object(r));
        return srv_sse_done(r);
    }
    if (r->responded) return -1;
    return srv_send_json(r, r->err_status, error_object(r));
}

int srv_sse_begin(srv_req *r) {
    pthread_mutex_lock(&r->wlock);
    headers(r, 200, "text/event-stream", -1);
    r->sse = 1;
    r->last_write = srv_now();
    pthread_mutex_unlock(&r->wlock);
    return 0;
}

int srv_sse_event(srv_req *r, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) return -1;
    const size_t n = strlen(s);
    char *ev = malloc(n + 9);
    int rc = -1;
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, s, n);
        memcpy(ev + 6 + n, "\n\n", 3);
        pthread_mutex_lock(&r->wlock);
        rc = write_all(r, ev, n + 8, 1);
        pthread_mutex_unlock(&r->wlock);
    }
    free(ev);
    free(s);
    return rc;
}

int srv_sse_done(srv_req *r) {
    pthread_mutex_lock(&r->wlock);
    const int rc = write_all(r, "data: [DONE]\n\n", 14, 1);
    if (!rc) mg_send_chunk(r->conn, "", 0); /* the zero-length chunk ends the body */
    pthread_mutex_unlock(&r->wlock);
    return rc;
}

int srv_keepalive_locked(srv_req *r) { return write_all(r, ": keep-alive\n\n", 14, 1); }

/* ---- JSON strings ---- */
/* Length of the valid UTF-8 sequence at p (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n) {
    const unsigned c = p[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!k || k > n || (k == 2 && c < 0xc2)) return 0;
    for (size_t i = 1; i < k; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    if (k == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0))) return 0; /* overlong, surrogate */
    if (k == 4 && ((c == 0xf0 && p[1] < 0x90) || c > 0xf4 || (c == 0xf4 && p[1] >= 0x90))) return 0;
    return k;
}

json_t *srv_jstr(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j) return j;
    char *t = malloc(3 * n + 1); /* each invalid byte becomes U+FFFD, 3 bytes */
    size_t o = 0;
    if (!t) return NULL;
    for (size_t i = 0; i < n;) {
        const size_t k = utf8_len((const unsigned char *)s + i, n - i);
        if (k) {
            memcpy(t + o, s + i, k), o += k, i += k;
        } else {
            memcpy(t + o, "\xef\xbf\xbd", 3), o += 3, i++;
        }
    }
    j = json_stringn(t, o);
    free(t);
    return j;
}
