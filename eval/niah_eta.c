/* niah_eta.c — how long a niah grid still needs, and its progress line on stderr (niah_int.h).
 *
 * Why a fitted model: the old estimate took "work" as length^2 per cell and extrapolated elapsed time
 * linearly. In the all-depths mode (mtok demo) a length is one prefill plus a short question per
 * depth, but the work was counted once per depth, so the 128K demo predicted 12,690 s, took 116 s
 * and ended on "55/55 cells ... ETA 1161s". Here every line of results.jsonl still to run is priced
 * from what it computes (the tokens after the prefix it shares with the line before, at their
 * positions, and the tokens it may generate), with coefficients measured on this run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "niah_int.h"

/* Positions are fitted in units of SCALE tokens, so the normal equations stay well conditioned (a
 * million-token prefill has q ~ 1e12 tokens^2). */
#define SCALE 4096.0

#define REDRAW_S 0.1   /* terminal: looks live, costs nothing */
#define LOG_LINE_S 10.0 /* not a terminal: a line every 10 s, a readable trail in a log */

/* The model's shape gives the priors: per token, ~2 flops per weight (weights read once per token in
 * decode); per earlier position, 4 flops per head dimension and layer (QK^T and PV), and K and V
 * read per KV group in decode. */
void mev_eta_init(mev_eta *e, const mtok_config *c, int64_t chunk, int progress, size_t cells) {
    memset(e, 0, sizeof *e);
    e->chunk = chunk;
    const double L = (double)c->n_layers, h = (double)c->hidden, qd = (double)(c->n_heads * c->head_dim);
    const double kvd = (double)(c->n_kv_groups * c->head_dim);
    const double params = L * (h * (qd + 2 * kvd) + qd * h + 3 * h * (double)c->ffn) + h * (double)c->vocab;
    e->rho_p = params > 0 ? 2 * L * qd / params : 0; /* (4 L qd) / (2 params) */
    e->rho_d = params > 0 ? 2 * L * kvd / params : 0;
    e->mode = progress < 0 ? (isatty(STDERR_FILENO) ? 1 : 2) : progress ? 1 : 0;
    e->interval = LOG_LINE_S;
    e->t0 = e->t_line = mev_now();
    e->cells = cells;
}

void mev_eta_free(mev_eta *e) {
    free(e->lines);
    e->lines = NULL;
}

int mev_eta_plan(mev_eta *e, int64_t length, int64_t shared, int questions, int64_t max_new) {
    if (e->n_lines == e->cap) {
        size_t c = e->cap ? 2 * e->cap : 64;
        mev_eta_line *nl = realloc(e->lines, c * sizeof *nl);
        if (!nl) return mtok_err(MTOK_ERESOURCE, "out of memory");
        e->lines = nl, e->cap = c;
    }
    if (shared > length) shared = length;
    e->lines[e->n_lines++] = (mev_eta_line){length, shared < 0 ? 0 : shared, questions, max_new, 0};
    return 0;
}

void mev_eta_at(mev_eta *e, size_t line, size_t cells_done) {
    for (size_t i = e->cur; i < line && i < e->n_lines; i++) e->lines[i].done = 1;
    e->cur = line;
    e->cur_end = 0;
    e->cells_done = cells_done;
}

/* Solves the k x k normal equations m c = v (k <= 3) by Gaussian elimination; 0 when singular. */
static int solve(int k, const double m[3][3], const double v[3], double c[3]) {
    double a[3][4];
    for (int i = 0; i < k; i++) {
        for (int j = 0; j < k; j++) a[i][j] = m[i][j];
        a[i][k] = v[i];
    }
    for (int col = 0; col < k; col++) {
        int piv = col;
        for (int r = col + 1; r < k; r++)
            if (fabs(a[r][col]) > fabs(a[piv][col])) piv = r;
        if (!(fabs(a[piv][col]) > 1e-9 * fabs(m[col][col]))) return 0; /* (near) singular */
        for (int j = 0; j <= k; j++) {
            double t = a[col][j];
            a[col][j] = a[piv][j], a[piv][j] = t;
        }
        for (int r = 0; r < k; r++) {
            if (r == col) continue;
            const double f = a[r][col] / a[col][col];
            for (int j = col; j <= k; j++) a[r][j] -= f * a[col][j];
        }
    }
    for (int i = 0; i < k; i++) c[i] = a[i][k] / a[i][i];
    return 1;
}

/* Prefill coefficients (a, b, k): the free fit once chunks reached positions where attention is a
 * good share of the cost (before that b and k are noise), with k dropped when it comes out negative;
 * otherwise a alone with b = rho_p a. */
static void prefill_coef(const mev_eta *e, double c[3]) {
    if (e->rho_p * (double)e->pf_max >= 0.25 && e->pf_max >= 2048) {
        if (solve(3, e->sxx, e->sxt, c) && c[0] > 0 && c[1] >= 0 && c[2] >= 0) return;
        c[2] = 0;
        if (solve(2, e->sxx, e->sxt, c) && c[0] > 0 && c[1] >= 0) return;
    }
    const double r = e->rho_p * SCALE, den = e->sxx[0][0] + 2 * r * e->sxx[0][1] + r * r * e->sxx[1][1];
    c[0] = den > 0 ? (e->sxt[0] + r * e->sxt[1]) / den : 0;
    c[1] = r * c[0], c[2] = 0;
}

/* Seconds to prefill positions [p0, p1) in chunks of e->chunk. */
static double prefill_s(const mev_eta *e, const double c[3], int64_t p0, int64_t p1) {
    if (p1 <= p0) return 0;
    const double x = (double)p0 / SCALE, y = (double)p1 / SCALE;
    const double C = (double)(e->chunk > 0 ? e->chunk : 512) / SCALE;
    const double m = ceil((y - x) / C); /* chunks; they end at x + C, x + 2C, ..., y */
    const double ends = (m - 1) * x + C * (m - 1) * m / 2 + y;
    return c[0] * (y - x) + c[1] * (y * y - x * x) / 2 + c[2] * ends;
}

double mev_eta_remaining(const mev_eta *e) {
    double k[3];
    prefill_coef(e, k);
    const double a = k[0];
    if (a <= 0) return -1; /* nothing measured yet */
    /* a decode step costs what the run measured; before the first one, a guess of 8 prefill tokens */
    const double c = e->dec_units > 0 ? e->dec_s / e->dec_units : 8 * a;
    const double genr = e->gen_max > 0 ? e->gen / e->gen_max : 1;
    double s = 0;
    for (size_t i = e->cur; i < e->n_lines; i++) {
        const mev_eta_line *l = &e->lines[i];
        if (l->done) continue;
        double fwd = (double)l->max_new * genr - 1; /* the first answer token needs no forward */
        const double answers = l->questions * (fwd > 0 ? fwd : 0) * c * (1 + e->rho_d * (double)l->length);
        const int64_t from = i == e->cur && e->cur_end ? e->cur_pos : l->shared;
        const int64_t asks = l->questions > 1 ? (int64_t)(l->questions - 1) : 0;
        s += prefill_s(e, k, from, l->length) + answers +
             (double)asks * prefill_s(e, k, l->length - MEV_ETA_QUESTION_TOKENS, l->length);
    }
    return s;
}

/* "42s", "5m02s", "2h05m" */
static void fmt_s(double s, char *buf, size_t cap) {
    if (!(s >= 0) || s > 1e9) {
        snprintf(buf, cap, "?");
        return;
    }
    const long long t = (long long)(s + 0.5);
    if (t < 60) snprintf(buf, cap, "%llds", t);
    else if (t < 3600) snprintf(buf, cap, "%lldm%02llds", t / 60, t % 60);
    else snprintf(buf, cap, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
}

static void emit(const char *s, size_t n) {
    while (n) { /* progress never fails the work it describes: an error drops the line */
        const ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0) return;
        s += w, n -= (size_t)w;
    }
}

static void draw_line(mev_eta *e, double now, int final) {
    char buf[320], el[24], eta[24];
    size_t n = 0;
    fmt_s(now - e->t0, el, sizeof el);
    if (e->mode == 1) buf[n++] = '\r';
    int w;
    if (final)
        w = snprintf(buf + n, sizeof buf - n - 8, "niah: %zu/%zu cells  %s in %s", e->cells_done, e->cells,
                     e->cells_done < e->cells ? "stopped" : "done", el);
    else {
        fmt_s(mev_eta_remaining(e), eta, sizeof eta);
        char pf[96] = "";
        if (e->cur_end) {
            const double tps = e->pf_s > 0 ? e->pf_tok / e->pf_s : 0;
            snprintf(pf, sizeof pf, "  prefill %lld/%lld tokens  %.0f tok/s", (long long)e->cur_pos,
                     (long long)e->cur_end, tps);
        }
        w = snprintf(buf + n, sizeof buf - n - 8, "niah: %zu/%zu cells%s  elapsed %s  ETA %s", e->cells_done,
                     e->cells, pf, el, eta);
    }
    n += w > 0 ? ((size_t)w < sizeof buf - n - 8 ? (size_t)w : sizeof buf - n - 9) : 0;
    if (e->mode == 1) memcpy(buf + n, "\033[K", 3), n += 3; /* erase a longer old line */
    if (e->mode == 2 || final) buf[n++] = '\n';
    emit(buf, n);
    e->t_line = now;
    e->lines_drawn++;
}

void mev_eta_draw(mev_eta *e, int force) {
    if (!e->mode) return;
    const double now = mev_now();
    const double every = e->mode == 1 ? REDRAW_S : e->interval;
    /* a log's first line comes after one interval, so a short run adds nothing to it */
    if ((force && e->mode == 1) || (e->mode == 1 && !e->lines_drawn) || now - e->t_line >= every)
        draw_line(e, now, 0);
}

void mev_eta_end(mev_eta *e) {
    if (e->mode && e->lines_drawn) draw_line(e, mev_now(), 1);
    e->mode = 0;
}

/* ---- measuring -------------------------------------------------------------------------------- */
typedef struct {
    mev_eta *e;
    int64_t n; /* ids fed */
} feed_ctx;

static int on_chunk(int64_t done, int64_t total, void *user) {
    feed_ctx *f = user;
    mev_eta *e = f->e;
    const double now = mev_now(), dt = now - e->last_chunk_t;
    e->feed_base = f->n - total; /* the reused prefix: the computed part starts there */
    const double p0 = (double)(e->feed_base + e->feed_prev), p1 = (double)(e->feed_base + done);
    const double u0 = p0 / SCALE, u1 = p1 / SCALE;
    const double x[3] = {u1 - u0, (u1 * u1 - u0 * u0) / 2, u1};
    if (x[0] > 0 && dt > 0) {
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < 3; j++) e->sxx[i][j] += x[i] * x[j];
            e->sxt[i] += x[i] * dt;
        }
        e->pf_tok += p1 - p0, e->pf_s += dt;
        if ((int64_t)p1 > e->pf_max) e->pf_max = (int64_t)p1;
    }
    e->feed_prev = done, e->last_chunk_t = now;
    e->cur_pos = (int64_t)p1, e->cur_end = f->n;
    mev_eta_draw(e, 0);
    return 0;
}

int mev_eta_feed(mev_eta *e, mev_runner *r, const int32_t *ids, size_t n) {
    feed_ctx f = {e, (int64_t)n};
    const mtok_request req = {.cancel = r->interrupted, .on_prefill = on_chunk, .user = &f};
    mtok_usage u = {0};
    e->feed_prev = 0, e->last_chunk_t = mev_now();
    int rc = mtok_session_feed(r->s, ids, (int64_t)n, &req, &u);
    e->cur_end = 0;
    r->cached += u.cached_tokens;
    r->prefilled += u.computed_tokens;
    r->prefill_s += u.prefill_s;
    return rc == MTOK_CANCELLED ? 1 : rc;
}

void mev_eta_decoded(mev_eta *e, int64_t tokens, int64_t max_new, int64_t pos, double secs) {
    /* tokens = forward steps; the answer had one more token (its first comes from the prompt) */
    e->gen += (double)(tokens + 1 < max_new ? tokens + 1 : max_new);
    e->gen_max += (double)max_new;
    if (tokens > 0) {
        e->dec_units += (double)tokens * (1 + e->rho_d * (double)pos);
        e->dec_s += secs;
    }
}
