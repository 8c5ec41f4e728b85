/* progress.c — the progress line of long commands (base/mtok_base.h, mtok_progress).
 *
 * A prefill of a million tokens runs for minutes; without a line saying how far it is, a user cannot
 * tell a slow run from a hung one. Two modes, chosen by whether stderr is a terminal:
 *   terminal  the line is redrawn in place ("\r" + text + erase to end of line), at most every 0.1 s;
 *   otherwise one line per interval (10 s by default), so a log file gets a readable trail.
 * Every draw is a single write(2) of a buffer on the caller's stack: no allocation, no stdio lock held
 * across calls, no global state; concurrent reporters on separate threads do not corrupt each other's
 * counters (their lines may interleave on a terminal, which is as much as one stderr allows). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mtok_base.h"

#define REDRAW_S 0.1 /* terminal: fast enough to look live, slow enough to cost nothing */

double mtok_progress_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void mtok_progress_begin(mtok_progress *p, const char *what, const char *unit, int64_t total, double interval_s) {
    memset(p, 0, sizeof *p);
    p->what = what ? what : "progress";
    p->unit = unit ? unit : "";
    p->total = total > 0 ? total : 0;
    p->interval_s = interval_s;
    p->mode = interval_s < 0 ? 0 : isatty(STDERR_FILENO) ? 1 : 2;
    p->t0 = p->t_line = mtok_progress_now();
}

/* "4.2s", "42s", "5m02s", "2h05m": an ETA needs no more precision than that */
static void fmt_duration(double s, char *buf, size_t cap) {
    if (!(s >= 0) || s > 1e9) {
        snprintf(buf, cap, "?");
        return;
    }
    const long long t = (long long)(s + 0.5);
    if (s < 9.95) snprintf(buf, cap, "%.1fs", s);
    else if (t < 60) snprintf(buf, cap, "%llds", t);
    else if (t < 3600) snprintf(buf, cap, "%lldm%02llds", t / 60, t % 60);
    else snprintf(buf, cap, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
}

static double rate_of(const mtok_progress *p, double now) {
    const double dt = now - p->t0;
    const int64_t worked = p->done - p->done_free;
    return dt > 0 && worked > 0 ? (double)worked / dt : 0;
}

static size_t format_line(const mtok_progress *p, double now, int final, char *buf, size_t cap) {
    if (!cap) return 0;
    char rate[48], tail[48];
    const double r = rate_of(p, now);
    const int tokens = !strncmp(p->unit, "token", 5);
    if (r > 0) snprintf(rate, sizeof rate, "  %.*f %s/s", r < 10 ? 2 : r < 100 ? 1 : 0, r, tokens ? "tok" : p->unit);
    else rate[0] = 0;
    if (final) {
        char d[24];
        fmt_duration(now - p->t0, d, sizeof d);
        snprintf(tail, sizeof tail, "  %s in %s", p->total && p->done < p->total ? "stopped" : "done", d);
    } else if (p->total && r > 0) {
        char d[24];
        fmt_duration((double)(p->total - p->done) / r, d, sizeof d);
        snprintf(tail, sizeof tail, "  ETA %s", d);
    } else {
        snprintf(tail, sizeof tail, "  ETA ?");
    }
    int n;
    if (p->total)
        n = snprintf(buf, cap, "%s: %lld/%lld %s (%.1f%%)%s%s%s%s", p->what, (long long)p->done, (long long)p->total,
                     p->unit, 100.0 * (double)p->done / (double)p->total, rate, tail, p->note[0] ? "  " : "", p->note);
    else
        n = snprintf(buf, cap, "%s: %lld %s%s%s%s%s", p->what, (long long)p->done, p->unit, rate, tail,
                     p->note[0] ? "  " : "", p->note);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

size_t mtok_progress_format(const mtok_progress *p, double now, char *buf, size_t cap) {
    return format_line(p, now, 0, buf, cap);
}

/* One write per line; a short write (a full pipe) is retried, an error dropped: progress never fails
 * the work it describes. */
static void emit(const char *s, size_t n) {
    while (n) {
        const ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0) return;
        s += w, n -= (size_t)w;
    }
}

static void draw(mtok_progress *p, double now, int final) {
    char buf[256];
    size_t n = 0;
    if (p->mode == 1) buf[n++] = '\r';
    n += format_line(p, now, final, buf + n, sizeof buf - n - 8);
    if (p->mode == 1) n += (size_t)snprintf(buf + n, sizeof buf - n, "\033[K"); /* erase a longer old line */
    if (p->mode == 2 || final) buf[n++] = '\n';
    emit(buf, n);
    p->t_line = now;
    p->lines++;
}

static void maybe_draw(mtok_progress *p) {
    if (!p->mode) return;
    const double now = mtok_progress_now();
    const double every = p->mode == 1 ? (p->interval_s < REDRAW_S ? p->interval_s : REDRAW_S) : p->interval_s;
    /* the terminal shows the first update at once; a log gets its first line only after an interval,
     * so commands that finish quickly add nothing to it */
    if ((p->mode == 1 && p->lines == 0) || now - p->t_line >= every) draw(p, now, 0);
}

void mtok_progress_update(mtok_progress *p, int64_t done) {
    p->done = done;
    maybe_draw(p);
}

void mtok_progress_add(mtok_progress *p, int64_t n) { mtok_progress_update(p, p->done + n); }

void mtok_progress_set_total(mtok_progress *p, int64_t total) { p->total = total > 0 ? total : 0; }

void mtok_progress_skip(mtok_progress *p, int64_t n) {
    p->done += n;
    p->done_free += n;
}

void mtok_progress_note(mtok_progress *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->note, sizeof p->note, fmt, ap);
    va_end(ap);
    for (char *c = p->note; *c; c++) /* one line, always */
        if (*c == '\n' || *c == '\r') *c = ' ';
}

void mtok_progress_end(mtok_progress *p) {
    if (p->mode && p->lines) draw(p, mtok_progress_now(), 1);
    p->mode = 0;
}

int mtok_progress_prefill_cb(int64_t done, int64_t total, void *progress) {
    mtok_progress *p = progress;
    /* the feed counts only the tokens it computes; units skipped before (a reused prefix) stay counted */
    p->total = p->done_free + total;
    mtok_progress_update(p, p->done_free + done);
    return 0;
}
