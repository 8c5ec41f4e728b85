/* mtok_base.h — the bottom layer every module includes: error codes and the thread's last error
 * message, logging, storage dtypes, checked size arithmetic. It depends on nothing else in mtok;
 * kernels/, kvstore/ and parallel/ include this instead of the public core/mtok.h, which includes
 * it in turn (so the public API is unchanged). Layer order: README.md, "Layout". */
#ifndef MTOK_BASE_H
#define MTOK_BASE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes; the CLI maps them to exit codes 1 (usage), 2 (bad input), 3 (resource). */
enum {
    MTOK_OK = 0,
    MTOK_EUSAGE = -1,    /* bad arguments */
    MTOK_EINPUT = -2,    /* bad model, data or file contents */
    MTOK_ERESOURCE = -3, /* memory, disk, device */
    MTOK_EINTERNAL = -4,
};
const char *mtok_errmsg(void);
/* Records a message (printf-style) and returns code, so callers write `return mtok_err(MTOK_EINPUT, ...)`. */
int mtok_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logging: messages at or below the level go to stderr. 0 = errors only, 1 = info, 2 = debug. */
void mtok_set_log_level(int level);
void mtok_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef enum { MTOK_BF16 = 0, MTOK_F16 = 1, MTOK_F32 = 2 } mtok_dtype;
/* Where bytes live: host RAM (the CPU may dereference the pointer) or an accelerator's memory (only
 * its backend, a device-aware collective or a KV tier of that space may). One notion for tensors
 * (core/backend.h) and KV blocks (kvstore/kvstore.h). */
typedef enum { MTOK_MEM_HOST = 0, MTOK_MEM_DEVICE = 1 } mtok_mem;
size_t mtok_dtype_size(mtok_dtype t);
const char *mtok_dtype_name(mtok_dtype t);

/* Sizes: *out = a * b or a + b; 1 (and *out unspecified) when the result does not fit, so callers
 * refuse sizes that would wrap before allocating (kvstore/kvstore.c, kvstore/kvfile.c do the same
 * with the builtins directly). */
static inline int mtok_size_mul(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline int mtok_size_add(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }


/* Progress of one long task on stderr (base/progress.c): "what: done/total unit (pct)  rate  ETA".
 * When stderr is a terminal the line is redrawn in place (at most every 0.1 s); otherwise one line
 * is printed every interval_s seconds, so logs of long runs show progress without a flood. Nothing
 * goes to stdout, which carries results. The caller owns the struct (on its stack): the update path
 * allocates nothing and touches no global state, so each thread may run its own reporter. */
#define MTOK_PROGRESS_INTERVAL 10.0 /* default seconds between lines when stderr is not a terminal */
typedef struct {
    const char *what;    /* label, e.g. "prefill" (not copied: must outlive the reporter) */
    const char *unit;    /* e.g. "tokens" ("tokens" shows its rate as tok/s) */
    int64_t total, done;
    int64_t done_free;   /* of done, units that took no time (cached, resumed): left out of the rate */
    double t0, t_line;   /* start, last line drawn (monotonic seconds) */
    double interval_s;   /* seconds between lines when not a terminal; 0: a line at every update */
    int mode;            /* 0 off, 1 terminal (redrawn in place), 2 one line per interval */
    int lines;           /* lines or redraws drawn so far */
    char note[64];       /* optional text after the figures (mtok_progress_note) */
} mtok_progress;
/* Starts a reporter. interval_s < 0 turns it off (every call then does nothing); 0 prints a line at
 * every update; MTOK_PROGRESS_INTERVAL is the usual choice. total may be 0 when not yet known. */
void mtok_progress_begin(mtok_progress *p, const char *what, const char *unit, int64_t total, double interval_s);
/* done units of total so far (absolute); draws when the terminal redraw or the interval is due. */
void mtok_progress_update(mtok_progress *p, int64_t done);
void mtok_progress_add(mtok_progress *p, int64_t n);          /* done += n, then as update */
void mtok_progress_set_total(mtok_progress *p, int64_t total);
/* Counts n units as done that took no time (a prefix reused, cells resumed from disk), so the rate
 * and the ETA measure only the work this run does. */
void mtok_progress_skip(mtok_progress *p, int64_t n);
/* Sets the short text shown after the figures (truncated to 63 bytes; "" clears it). */
void mtok_progress_note(mtok_progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Ends the reporter: when anything was drawn, one last line with the total time ("done in 12.3s",
 * or "stopped" when done < total) and a newline; otherwise nothing, so short tasks stay silent. */
void mtok_progress_end(mtok_progress *p);
/* Formats the current line (no control characters, no newline) into buf; returns its length. */
size_t mtok_progress_format(const mtok_progress *p, double now, char *buf, size_t cap);
/* Monotonic seconds (CLOCK_MONOTONIC). */
double mtok_progress_now(void);
/* An mtok_progress_cb (core/mtok.h) for a request's on_prefill whose user is an mtok_progress: the
 * feed's done and total (tokens it computes) plus what mtok_progress_skip counted; returns 0. */
int mtok_progress_prefill_cb(int64_t done, int64_t total, void *progress);

#ifdef __cplusplus
}
#endif
#endif
