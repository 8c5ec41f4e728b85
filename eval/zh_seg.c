/* zh_seg.c — Chinese word segmentation exactly as jieba's default mode (jieba.cut(s), cut_all=False,
 * HMM=True), for LongBench's Chinese metrics (docs/EVAL.md §2.3).
 *
 * jieba's algorithm, reproduced step by step (the data are read from the user's jieba install, the
 * Debian package python3-jieba: dict.txt and finalseg/prob_*.py; mtok ships none of them):
 *   1. The text is split into runs of "han" characters (U+4E00..U+9FD5, ASCII letters and digits,
 *      + # & . _ % -) and the rest. Outside a run every character is its own token, except "\r\n",
 *      which stays one token.
 *   2. In a run, a DAG of dictionary words: from each position k, every end i such that text[k..i] is
 *      a word of non-zero frequency (the scan stops at the first fragment that is not even a prefix
 *      of a word); a position with none gets the one-character edge.
 *   3. The best route from the right: route[k] = max over ends x of
 *      (log(freq(text[k..x]) or 1) - log(total)) + route[x+1], ties going to the larger x.
 *   4. Walking the route, single characters gather in a buffer; a buffer of one character is a token,
 *      a buffer that is itself a dictionary word of non-zero frequency is split into characters, any
 *      other buffer goes to the HMM (step 5).
 *   5. The HMM (finalseg): sub-runs of U+4E00..U+9FD5 are tagged B/M/E/S by Viterbi over jieba's
 *      start, transition and emission log-probabilities (missing entries -3.14e100; ties broken by
 *      the larger state letter, as Python's max over (prob, state) tuples does) and cut after E and
 *      S; the rest splits into [a-zA-Z0-9]+(\.\d+)?%? matches and the text between them.
 * The sums are done in Python's order with the same libm log, so the routes are identical.
 * tests/test_eval_longbench.py compares the tokens with python jieba's when it is installed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "longbench.h"

#define MIN_FLOAT (-3.14e100)

/* ---- a string -> int64 hash table (the prefix dictionary) and a code point -> double one -------- */
typedef struct {
    char **key;
    int64_t *val;
    size_t cap, n;
} strmap;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

/* The slot of key s[0, n) (its own or the empty one where it would go). */
static size_t sm_slot(const strmap *m, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & (m->cap - 1);
    while (m->key[i] && !(strlen(m->key[i]) == n && !memcmp(m->key[i], s, n))) i = (i + 1) & (m->cap - 1);
    return i;
}

static int sm_grow(strmap *m) {
    strmap g = {calloc(m->cap * 2, sizeof(char *)), calloc(m->cap * 2, sizeof(int64_t)), m->cap * 2, m->n};
    if (!g.key || !g.val) return free(g.key), free(g.val), -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->key[i]) {
            size_t j = sm_slot(&g, m->key[i], strlen(m->key[i]));
            g.key[j] = m->key[i], g.val[j] = m->val[i];
        }
    free(m->key), free(m->val);
    *m = g;
    return 0;
}

/* 1 and *v when s[0, n) is a key. */
static int sm_get(const strmap *m, const char *s, size_t n, int64_t *v) {
    size_t i = sm_slot(m, s, n);
    if (!m->key[i]) return 0;
    *v = m->val[i];
    return 1;
}

/* Sets s -> v (only_if_absent: leaves an existing key alone). */
static int sm_put(strmap *m, const char *s, size_t n, int64_t v, int only_if_absent) {
    if (2 * (m->n + 1) > m->cap && sm_grow(m)) return -1;
    size_t i = sm_slot(m, s, n);
    if (m->key[i]) {
        if (!only_if_absent) m->val[i] = v;
        return 0;
    }
    if (!(m->key[i] = malloc(n + 1))) return -1;
    memcpy(m->key[i], s, n);
    m->key[i][n] = 0;
    m->val[i] = v;
    m->n++;
    return 0;
}

typedef struct {
    uint32_t *cp;
    double *p;
    size_t n, cap;
} emitmap; /* sorted by code point after loading */

struct mev_zhseg {
    strmap freq;
    int64_t total;
    double logtotal;
    double start[4], trans[4][4];
    emitmap emit[4];
};

static const char STATES[] = "BMES";
static int state_of(uint32_t c) {
    const char *p = c < 128 ? strchr(STATES, (int)c) : NULL;
    return p && c ? (int)(p - STATES) : -1;
}

/* ---- reading the data ----------------------------------------------------------------------------- */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = NULL;
    size_t cap = 0, len = 0, r;
    do {
        if (len + 65536 + 1 > cap) {
            char *nb = realloc(b, cap = cap * 2 + 65536 + 1);
            if (!nb) return free(b), fclose(f), NULL;
            b = nb;
        }
        r = fread(b + len, 1, cap - len - 1, f);
        len += r;
    } while (r);
    fclose(f);
    b[len] = 0;
    *n = len;
    return b;
}

/* dict.txt: "word freq [tag]" per line; every prefix of a word is a key too (frequency 0 unless it
 * is a word itself); a word listed twice keeps the last frequency and counts twice in the total. */
static int load_dict(mev_zhseg *z, const char *path) {
    size_t n;
    char *b = slurp(path, &n);
    if (!b) return mtok_err(MTOK_EINPUT, "%s: cannot read jieba's dictionary", path);
    z->freq.cap = 1 << 20;
    z->freq.key = calloc(z->freq.cap, sizeof(char *));
    z->freq.val = calloc(z->freq.cap, sizeof(int64_t));
    if (!z->freq.key || !z->freq.val) return free(b), mtok_err(MTOK_ERESOURCE, "out of memory");
    int64_t lineno = 0;
    for (char *line = b, *next; line < b + n; line = next) {
        char *nl = memchr(line, '\n', (size_t)(b + n - line));
        next = nl ? nl + 1 : b + n;
        lineno++;
        char *e = nl ? nl : b + n;
        while (e > line && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) e--;
        while (line < e && (*line == ' ' || *line == '\t')) line++;
        if (line == e) continue;
        char *sp = memchr(line, ' ', (size_t)(e - line));
        char *end = NULL;
        long long f = sp ? strtoll(sp + 1, &end, 10) : 0;
        if (!sp || end == sp + 1 || (end < e && *end != ' '))
            return free(b), mtok_err(MTOK_EINPUT, "%s:%lld: not \"word frequency\"", path, (long long)lineno);
        size_t wl = (size_t)(sp - line);
        if (sm_put(&z->freq, line, wl, f, 0)) return free(b), mtok_err(MTOK_ERESOURCE, "out of memory");
        z->total += f;
        for (size_t k = 1; k < wl; k++) /* prefixes end at character boundaries */
            if (((unsigned char)line[k] & 0xC0) != 0x80 && sm_put(&z->freq, line, k, 0, 1))
                return free(b), mtok_err(MTOK_ERESOURCE, "out of memory");
    }
    free(b);
    if (z->total <= 0) return mtok_err(MTOK_EINPUT, "%s: no words", path);
    z->logtotal = log((double)z->total);
    return 0;
}

/* The HMM tables are Python dict literals (P={'B': {...}, ...}); a small reader for string keys,
 * nested dicts and float values. The values go through strtod, which rounds as Python's float() does. */
typedef struct {
    const char *p, *end, *path;
    mev_zhseg *z;
    int which; /* 0 start, 1 trans, 2 emit */
} pyrd;

static void skip_ws(pyrd *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t' || *r->p == ','))
        r->p++;
}

/* A quoted key of one character ('\u4e00', '\U0001f600', '\x41' or a literal UTF-8 character). */
static int read_key(pyrd *r, uint32_t *cp) {
    if (r->p >= r->end || (*r->p != '\'' && *r->p != '"')) return -1;
    char q = *r->p++;
    const char *s = r->p;
    if (*s == '\\') {
        int digits = s[1] == 'u' ? 4 : s[1] == 'U' ? 8 : s[1] == 'x' ? 2 : 0;
        if (!digits) return -1;
        char hex[9] = {0};
        if (r->end - s < 2 + digits) return -1;
        memcpy(hex, s + 2, (size_t)digits);
        *cp = (uint32_t)strtoul(hex, NULL, 16);
        s += 2 + digits;
    } else {
        size_t used = mev_utf8_decode(s, (size_t)(r->end - s), cp);
        if (!used) return -1;
        s += used;
    }
    if (s >= r->end || *s != q) return -1;
    r->p = s + 1;
    return 0;
}

static int read_table(pyrd *r, int depth, int outer) {
    skip_ws(r);
    if (r->p >= r->end || *r->p != '{') return -1;
    r->p++;
    for (;;) {
        skip_ws(r);
        if (r->p < r->end && *r->p == '}') return r->p++, 0;
        uint32_t key;
        if (read_key(r, &key)) return -1;
        skip_ws(r);
        if (r->p >= r->end || *r->p++ != ':') return -1;
        skip_ws(r);
        if (r->p < r->end && *r->p == '{') {
            if (depth || state_of(key) < 0 || read_table(r, 1, state_of(key))) return -1;
            continue;
        }
        char *e;
        double v = strtod(r->p, &e);
        if (e == r->p) return -1;
        r->p = e;
        mev_zhseg *z = r->z;
        if (r->which == 0 && !depth && state_of(key) >= 0) z->start[state_of(key)] = v;
        else if (r->which == 1 && depth && state_of(key) >= 0) z->trans[outer][state_of(key)] = v;
        else if (r->which == 2 && depth) {
            emitmap *m = &z->emit[outer];
            if (m->n == m->cap) {
                size_t c = m->cap ? 2 * m->cap : 4096;
                uint32_t *nc = realloc(m->cp, c * sizeof *nc);
                if (nc) m->cp = nc;
                double *np = nc ? realloc(m->p, c * sizeof *np) : NULL;
                if (!np) return -2;
                m->p = np, m->cap = c;
            }
            m->cp[m->n] = key, m->p[m->n++] = v;
        } else
            return -1;
    }
}

static int cmp_emit(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int load_table(mev_zhseg *z, const char *path, int which) {
    size_t n;
    char *b = slurp(path, &n);
    if (!b) return mtok_err(MTOK_EINPUT, "%s: cannot read jieba's HMM table", path);
    char *eq = strstr(b, "P=");
    pyrd r = {eq ? eq + 2 : b + n, b + n, path, z, which};
    int rc = read_table(&r, 0, 0);
    free(b);
    if (rc == -2) return mtok_err(MTOK_ERESOURCE, "out of memory");
    if (rc) return mtok_err(MTOK_EINPUT, "%s: not jieba's P={...} table", path);
    if (which == 2)
        for (int s = 0; s < 4; s++) { /* sort (code point, value) pairs together */
            emitmap *m = &z->emit[s];
            struct pair { uint32_t cp; double p; } *v = malloc((m->n + 1) * sizeof *v);
            if (!v) return mtok_err(MTOK_ERESOURCE, "out of memory");
            for (size_t i = 0; i < m->n; i++) v[i].cp = m->cp[i], v[i].p = m->p[i];
            if (m->n > 1) qsort(v, m->n, sizeof *v, cmp_emit);
            for (size_t i = 0; i < m->n; i++) m->cp[i] = v[i].cp, m->p[i] = v[i].p;
            free(v);
        }
    return 0;
}

static double emit_p(const mev_zhseg *z, int s, uint32_t cp) {
    const emitmap *m = &z->emit[s];
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->cp[mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < m->n && m->cp[lo] == cp ? m->p[lo] : MIN_FLOAT;
}

void mev_zhseg_free(mev_zhseg *z) {
    if (!z) return;
    for (size_t i = 0; i < z->freq.cap; i++) free(z->freq.key ? z->freq.key[i] : NULL);
    free(z->freq.key), free(z->freq.val);
    for (int s = 0; s < 4; s++) free(z->emit[s].cp), free(z->emit[s].p);
    free(z);
}

const char *mev_zhseg_default_dir(void) {
    static const char *const dirs[] = {"/usr/lib/python3/dist-packages/jieba", "/usr/local/lib/python3/dist-packages/jieba"};
    char probe[512];
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        snprintf(probe, sizeof probe, "%s/dict.txt", dirs[i]);
        FILE *f = fopen(probe, "rb");
        if (f) return fclose(f), dirs[i];
    }
    return NULL;
}

int mev_zhseg_open(const char *dir, mev_zhseg **out) {
    *out = NULL;
    if (!dir && !(dir = mev_zhseg_default_dir()))
        return mtok_err(MTOK_EINPUT, "LongBench's Chinese metrics segment words as jieba does, with jieba's own "
                        "dictionary: install python3-jieba (apt-get install python3-jieba) or name its folder "
                        "with --jieba DIR");
    mev_zhseg *z = calloc(1, sizeof *z);
    if (!z) return mtok_err(MTOK_ERESOURCE, "out of memory");
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) z->trans[a][b] = MIN_FLOAT;
    for (int a = 0; a < 4; a++) z->start[a] = MIN_FLOAT;
    char path[4200];
    static const char *const tabs[] = {"finalseg/prob_start.py", "finalseg/prob_trans.py", "finalseg/prob_emit.py"};
    snprintf(path, sizeof path, "%s/dict.txt", dir);
    int rc = load_dict(z, path);
    for (int w = 0; w < 3 && !rc; w++) {
        snprintf(path, sizeof path, "%s/%s", dir, tabs[w]);
        rc = load_table(z, path, w);
    }
    if (rc) return mev_zhseg_free(z), rc;
    *out = z;
    return 0;
}

/* ---- segmentation --------------------------------------------------------------------------------- */
typedef struct {
    const char *s;     /* the text */
    const uint32_t *c; /* its code points */
    const size_t *off; /* byte offset of code point i (off[n] = end) */
    mev_spans *out;
} text_t;

static int emit_tok(text_t *t, size_t a, size_t b) { /* code points [a, b) */
    mev_spans *o = t->out;
    if (o->n == o->cap) {
        size_t c = o->cap ? 2 * o->cap : 64;
        mev_span *nv = realloc(o->v, c * sizeof *nv);
        if (!nv) return mtok_err(MTOK_ERESOURCE, "out of memory");
        o->v = nv, o->cap = c;
    }
    o->v[o->n].off = t->off[a];
    o->v[o->n++].len = t->off[b] - t->off[a];
    return 0;
}

static int is_han(uint32_t c) { return c >= 0x4E00 && c <= 0x9FD5; }
static int is_han_default(uint32_t c) {
    return is_han(c) || (c < 128 && ((c | 32) - 'a' < 26 || c - '0' < 10 || strchr("+#&._%-", (int)c)));
}
static int is_alnum_ascii(uint32_t c) { return c < 128 && ((c | 32) - 'a' < 26 || c - '0' < 10); }

/* The HMM over code points [a, b), all in U+4E00..U+9FD5. */
static int viterbi_cut(const mev_zhseg *z, text_t *t, size_t a, size_t b) {
    static const char *const prev[4] = {"ES", "MB", "BM", "SE"}; /* the states before B, M, E, S */
    size_t n = b - a;
    double *V = malloc(n * 4 * sizeof *V);
    unsigned char *bp = malloc(n * 4), *tag = malloc(n);
    if (!V || !bp || !tag) return free(V), free(bp), free(tag), mtok_err(MTOK_ERESOURCE, "out of memory");
    for (int y = 0; y < 4; y++) V[y] = z->start[y] + emit_p(z, y, t->c[a]);
    for (size_t k = 1; k < n; k++)
        for (int y = 0; y < 4; y++) {
            double em = emit_p(z, y, t->c[a + k]), best = 0;
            int bs = -1;
            for (int j = 0; j < 2; j++) {
                int y0 = state_of((unsigned char)prev[y][j]);
                double pr = V[(k - 1) * 4 + y0] + z->trans[y0][y] + em;
                if (bs < 0 || pr > best || (pr == best && STATES[y0] > STATES[bs])) best = pr, bs = y0;
            }
            V[k * 4 + y] = best;
            bp[k * 4 + y] = (unsigned char)bs;
        }
    int last = V[(n - 1) * 4 + 3] >= V[(n - 1) * 4 + 2] ? 3 : 2; /* 'S' > 'E' on a tie */
    for (size_t k = n; k-- > 0;) {
        tag[k] = (unsigned char)last;
        if (k) last = bp[k * 4 + last];
    }
    size_t begin = 0, nexti = 0;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (tag[i] == 0) begin = i;
        else if (tag[i] == 2) rc = emit_tok(t, a + begin, a + i + 1), nexti = i + 1;
        else if (tag[i] == 3) rc = emit_tok(t, a + i, a + i + 1), nexti = i + 1;
    }
    if (!rc && nexti < n) rc = emit_tok(t, a + nexti, b);
    free(V), free(bp), free(tag);
    return rc;
}

/* finalseg.cut on [a, b): han runs through the HMM, the rest split at [a-zA-Z0-9]+(\.\d+)?%? matches. */
static int hmm_cut(const mev_zhseg *z, text_t *t, size_t a, size_t b) {
    int rc = 0;
    for (size_t i = a; i < b && !rc;) {
        size_t j = i;
        if (is_han(t->c[i])) {
            while (j < b && is_han(t->c[j])) j++;
            rc = viterbi_cut(z, t, i, j);
            i = j;
            continue;
        }
        while (j < b && !is_han(t->c[j])) j++;
        /* [i, j) has no han: matches of the pattern and the text between them */
        size_t k = i, gap = i;
        while (k < j && !rc) {
            if (!is_alnum_ascii(t->c[k])) {
                k++;
                continue;
            }
            size_t e = k;
            while (e < j && is_alnum_ascii(t->c[e])) e++;
            if (e + 1 < j && t->c[e] == '.' && t->c[e + 1] - '0' < 10) {
                e += 2;
                while (e < j && t->c[e] - '0' < 10) e++;
            }
            if (e < j && t->c[e] == '%') e++;
            if (gap < k) rc = emit_tok(t, gap, k);
            if (!rc) rc = emit_tok(t, k, e);
            k = gap = e;
        }
        if (!rc && gap < j) rc = emit_tok(t, gap, j);
        i = j;
    }
    return rc;
}

static int freq_of(const mev_zhseg *z, const text_t *t, size_t a, size_t b, int64_t *f) {
    return sm_get(&z->freq, t->s + t->off[a], t->off[b] - t->off[a], f);
}

/* The buffered single characters [a, b) of the route (jieba's buf). */
static int flush_buf(const mev_zhseg *z, text_t *t, size_t a, size_t b) {
    int64_t f = 0;
    if (b - a == 1) return emit_tok(t, a, b);
    if (!freq_of(z, t, a, b, &f) || !f) return hmm_cut(z, t, a, b);
    for (size_t i = a; i < b; i++)
        if (emit_tok(t, i, i + 1)) return MTOK_ERESOURCE;
    return 0;
}

/* One run of han_default characters [a, b): the DAG, the best route, the walk. */
static int cut_dag(const mev_zhseg *z, text_t *t, size_t a, size_t b) {
    size_t n = b - a;
    double *rs = malloc((n + 1) * sizeof *rs);
    size_t *rx = malloc((n + 1) * sizeof *rx);
    if (!rs || !rx) return free(rs), free(rx), mtok_err(MTOK_ERESOURCE, "out of memory");
    rs[n] = 0, rx[n] = 0;
    for (size_t k = n; k-- > 0;) {
        /* the DAG's ends for k, scanned while the fragment is a key (a word or a prefix) */
        int any = 0;
        double best = 0;
        size_t bx = k;
        int64_t f;
        for (size_t i = k; i < n && freq_of(z, t, a + k, a + i + 1, &f); i++) {
            if (!f) continue;
            double sc = (log((double)f) - z->logtotal) + rs[i + 1];
            if (!any || sc >= best) best = sc, bx = i; /* ties: the larger end, as max() over tuples */
            any = 1;
        }
        if (!any) {
            f = 0;
            freq_of(z, t, a + k, a + k + 1, &f);
            best = (log((double)(f ? f : 1)) - z->logtotal) + rs[k + 1];
            bx = k;
        }
        rs[k] = best, rx[k] = bx;
    }
    int rc = 0;
    size_t x = 0, buf = 0, nbuf = 0;
    while (x < n && !rc) {
        size_t y = rx[x] + 1;
        if (y - x == 1) {
            if (!nbuf) buf = x;
            nbuf++;
        } else {
            if (nbuf) rc = flush_buf(z, t, a + buf, a + buf + nbuf), nbuf = 0;
            if (!rc) rc = emit_tok(t, a + x, a + y);
        }
        x = y;
    }
    if (!rc && nbuf) rc = flush_buf(z, t, a + buf, a + buf + nbuf);
    free(rs), free(rx);
    return rc;
}

int mev_zhseg_cut(const mev_zhseg *z, const char *s, size_t len, mev_spans *out) {
    out->n = 0;
    size_t cap = len + 1, n = 0;
    uint32_t *c = malloc(cap * sizeof *c);
    size_t *off = malloc((cap + 1) * sizeof *off);
    if (!c || !off) return free(c), free(off), mtok_err(MTOK_ERESOURCE, "out of memory");
    for (size_t i = 0; i < len;) {
        size_t u = mev_utf8_decode(s + i, len - i, &c[n]);
        if (!u) u = 1, c[n] = 0xFFFD; /* not UTF-8 (jansson's strings always are) */
        off[n++] = i;
        i += u;
    }
    off[n] = len;
    text_t t = {s, c, off, out};
    int rc = 0;
    for (size_t i = 0; i < n && !rc;) {
        size_t j = i;
        if (is_han_default(c[i])) {
            while (j < n && is_han_default(c[j])) j++;
            rc = cut_dag(z, &t, i, j);
        } else {
            j = i + (c[i] == '\r' && i + 1 < n && c[i + 1] == '\n' ? 2 : 1);
            rc = emit_tok(&t, i, j);
        }
        i = j;
    }
    free(c), free(off);
    return rc;
}
