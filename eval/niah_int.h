/* niah_int.h — inside eval/ only: what the niah grid (eval/niah.c), its report
 * (eval/niah_report.c) and its progress estimate (eval/niah_eta.c) share. */
#ifndef MTOK_EVAL_NIAH_INT_H
#define MTOK_EVAL_NIAH_INT_H

#include <stddef.h>
#include <stdint.h>

#include "eval.h"

/* "dir/name", malloc'ed (NULL: out of memory). */
char *mev_niah_path(const char *dir, const char *name);

/* ---- the time a grid still needs (eval/niah_eta.c) ----------------------------------------------
 * A grid's cells cost very different times: a prefill's cost per token grows with its position
 * (attention reads every earlier token), cells share prefixes (all-depths: one prefill per length,
 * then only a question per depth; otherwise consecutive depths share the haystack before the
 * needle), and answers decode token by token. So the estimate is a model fitted to what the run
 * measures, not work done per second:
 *   a prefill chunk over positions [p0, p1):  a (p1 - p0) + b (p1^2 - p0^2) / 2 + k p1  seconds
 *   one generated token at position p:  c (1 + rho_d p)  seconds
 * (k: a pass over the cache per chunk, what a cache spilled to disk costs); a, b and k by least
 * squares over the prefill chunks seen (b/a = rho_p, from the model's shape, and k = 0 until chunks
 * at long enough positions and of different sizes pin them down), c by the decode time seen. The
 * lines still to run * (planned up front in the grid's order) are priced with it at every redraw. */
#define MEV_ETA_QUESTION_TOKENS 24 /* a question's own tokens after a shared document (an estimate) */
typedef struct {
    int64_t length;      /* prompt tokens */
    int64_t shared;      /* tokens it shares with the line before (prefix reuse), an estimate */
    int questions;       /* questions answered in the line */
    int64_t max_new;     /* tokens each answer may generate */
    int done;
} mev_eta_line;

typedef struct {
    /* the fit: sums over prefill chunks of the products of x = (p1 - p0, (p1^2 - p0^2) / 2, p1) and dt */
    double sxx[3][3], sxt[3], pf_tok, pf_s;
    int64_t chunk;             /* the session's prefill chunk */
    int64_t pf_max;            /* the furthest position a chunk reached */
    double rho_p, rho_d;       /* priors: attention cost per position relative to a token's weights */
    double dec_units, dec_s;   /* decode: sum of (1 + rho_d p) per token, and seconds */
    double gen, gen_max;       /* tokens generated and tokens allowed so far */
    mev_eta_line *lines;       /* the grid's lines in run order */
    size_t n_lines, cap;
    size_t cur;                /* the line running now */
    int64_t cur_pos, cur_end;  /* its prefill: at cur_pos of cur_end (cur_end = 0: not prefilling) */
    /* the progress line */
    int mode;                  /* 0 off, 1 redrawn in place, 2 a line every interval */
    double t0, t_line, interval;
    int lines_drawn;
    size_t cells_done, cells;
    double last_chunk_t;       /* when the last prefill chunk ended (or the feed began) */
    int64_t feed_base, feed_prev; /* the feed: positions before its computed part, tokens done so far */
} mev_eta;

/* progress: -1 auto (redrawn on a terminal, else a line every ~10 s), 0 off, 1 redrawn. */
void mev_eta_init(mev_eta *e, const mtok_config *c, int64_t chunk, int progress, size_t cells);
void mev_eta_free(mev_eta *e);
int mev_eta_plan(mev_eta *e, int64_t length, int64_t shared, int questions, int64_t max_new);
/* The grid is now at line i (in plan order); the cells finished so far. */
void mev_eta_at(mev_eta *e, size_t line, size_t cells_done);
/* Feeds ids[0..n) to the session (as mev_feed does, with prefix reuse), timing each prefill chunk
 * for the fit and redrawing the progress line. 0, 1 when interrupted, or an error. */
int mev_eta_feed(mev_eta *e, mev_runner *r, const int32_t *ids, size_t n);
/* A decode of tokens generated (of max_new allowed) at position pos took secs. */
void mev_eta_decoded(mev_eta *e, int64_t tokens, int64_t max_new, int64_t pos, double secs);
/* Seconds the lines from the current one on still need. */
double mev_eta_remaining(const mev_eta *e);
/* Redraws the progress line (at most every 0.1 s on a terminal, every interval otherwise). */
void mev_eta_draw(mev_eta *e, int force);
/* The last line: "niah: N/M cells  done in T" (or "stopped"), ending the redrawn line. */
void mev_eta_end(mev_eta *e);

#endif
