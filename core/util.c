/* util.c — errors, logging, dtype helpers and id vectors shared by every module. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mtok.h"

/* The last error message of this thread (like dlerror): library code never prints errors itself,
 * the caller decides where the line goes. */
static __thread char g_errmsg[1024];
static int g_log_level = 1;

const char *mtok_errmsg(void) { return g_errmsg[0] ? g_errmsg : "no error"; }

int mtok_err(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_errmsg, sizeof g_errmsg, fmt, ap);
    va_end(ap);
    /* one line, always: a message that embeds file contents must not break the line contract */
    for (char *p = g_errmsg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return code;
}

void mtok_set_log_level(int level) { g_log_level = level; }

void mtok_log(int level, const char *fmt, ...) {
    if (level > g_log_level) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("mtok: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

size_t mtok_dtype_size(mtok_dtype t) { return t == MTOK_F32 ? 4 : 2; }

const char *mtok_dtype_name(mtok_dtype t) {
    switch (t) {
    case MTOK_BF16: return "BF16";
    case MTOK_F16: return "F16";
    case MTOK_F32: return "F32";
    }
    return "?";
}

int mtok_ids_push(mtok_ids *a, int32_t id) { return mtok_ids_append(a, &id, 1); }

int mtok_ids_append(mtok_ids *a, const int32_t *ids, size_t n) {
    if (n == 0) return 0; /* ids may be NULL then (an empty vector) */
    if (a->n + n > a->cap) {
        size_t cap = a->cap ? a->cap : 64;
        while (cap < a->n + n) cap *= 2;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return mtok_err(MTOK_ERESOURCE, "out of memory growing a token list to %zu ids", cap);
        a->v = v;
        a->cap = cap;
    }
    memcpy(a->v + a->n, ids, n * sizeof *ids);
    a->n += n;
    return 0;
}

void mtok_ids_free(mtok_ids *a) {
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}
