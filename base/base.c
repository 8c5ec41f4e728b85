/* base.c — errors, logging and dtype helpers (base/mtok_base.h), shared by every module. */
#include <stdarg.h>
#include <stdio.h>

#include "mtok_base.h"

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
