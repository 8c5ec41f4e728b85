/* longbench.c — LongBench v1's metrics exactly as LongBench/metrics.py and eval.py compute them
 * (docs/EVAL.md §2), with the behaviour of the Python packages they call:
 *   - qa_f1_score: str.lower(), ASCII punctuation removed, \b(a|an|the)\b replaced by a space, split on
 *     whitespace, token F1 (a Counter intersection);
 *   - qa_f1_zh_score: jieba's words of the raw texts, each lower-cased with ASCII and Chinese punctuation
 *     and all whitespace removed, empty ones dropped, token F1;
 *   - rouge_score: the `rouge` package's ROUGE-L F (summary level): sentences are the pieces between
 *     '.', words their space-split tokens; with its default exclusive=True every count is over distinct
 *     words (the union of the words of the LCS of each reference sentence with each hypothesis sentence,
 *     over the distinct words of each side), F = 2 * (P * R / (P + R + 1e-8)); any exception of the
 *     package scores 0: an empty side, and Python's recursion limit in its recursive LCS walk-back;
 *   - rouge_zh_score: the same on jieba's words joined by spaces;
 *   - classification_score: the classes found in the prediction as substrings, minus those contained in
 *     the answer (with the skip of Python's removal during iteration), 1 / count when the answer is left;
 *   - retrieval / count: the share of the prediction's numbers (\d+) equal to the answer's paragraph
 *     number ("Paragraph N", "段落N") or to the count;
 *   - code_sim_score: fuzzywuzzy's ratio (difflib.SequenceMatcher, which fuzzywuzzy uses when
 *     python-Levenshtein is absent, as LongBench's requirements leave it) of the first line of the
 *     prediction with no '`', '#' or '//', rounded half-even to an integer, / 100. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "longbench.h"

/* ---- code point strings ----------------------------------------------------------------------- */
typedef struct {
    uint32_t *c;
    size_t n, cap;
} ustr;

static int us_push(ustr *u, uint32_t c) {
    if (u->n == u->cap) {
        size_t nc = u->cap ? 2 * u->cap : 64;
        uint32_t *p = realloc(u->c, nc * sizeof *p);
        if (!p) return -1;
        u->c = p, u->cap = nc;
    }
    u->c[u->n++] = c;
    return 0;
}

static int us_decode(ustr *u, const char *s, size_t len) {
    u->n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t k = mev_utf8_decode(s + i, len - i, &c);
        if (!k) k = 1, c = 0xFFFD;
        if (us_push(u, c)) return -1;
        i += k;
    }
    return 0;
}

/* A token: [off, off + len) of a ustr. */
typedef struct {
    size_t off, len;
} tok;
typedef struct {
    tok *v;
    size_t n, cap;
} toks;

static int tk_push(toks *t, size_t off, size_t len) {
    if (t->n == t->cap) {
        size_t nc = t->cap ? 2 * t->cap : 32;
        tok *p = realloc(t->v, nc * sizeof *p);
        if (!p) return -1;
        t->v = p, t->cap = nc;
    }
    t->v[t->n].off = off, t->v[t->n++].len = len;
    return 0;
}

/* str.split(): runs of non-whitespace of u[a, b). */
static int split_ws(const ustr *u, size_t a, size_t b, toks *t) {
    for (size_t i = a; i < b;) {
        while (i < b && mev_py_isspace(u->c[i])) i++;
        size_t s = i;
        while (i < b && !mev_py_isspace(u->c[i])) i++;
        if (i > s && tk_push(t, s, i - s)) return -1;
    }
    return 0;
}

static const uint32_t *g_sort_base; /* the ustr being sorted (qsort has no context argument) */
static int tok_cmp_base(const uint32_t *base, const tok *x, const tok *y) {
    size_t n = x->len < y->len ? x->len : y->len;
    for (size_t i = 0; i < n; i++)
        if (base[x->off + i] != base[y->off + i]) return base[x->off + i] < base[y->off + i] ? -1 : 1;
    return (x->len > y->len) - (x->len < y->len);
}
static int tok_qcmp(const void *a, const void *b) { return tok_cmp_base(g_sort_base, a, b); }

/* LongBench's f1_score on two token lists of one buffer (Counter & Counter), 0 when nothing is common. */
static double token_f1(const ustr *u, toks *p, toks *g) {
    g_sort_base = u->c;
    if (p->n > 1) qsort(p->v, p->n, sizeof *p->v, tok_qcmp); /* qsort(NULL, 0) is undefined */
    if (g->n > 1) qsort(g->v, g->n, sizeof *g->v, tok_qcmp);
    size_t same = 0;
    for (size_t i = 0, j = 0; i < p->n && j < g->n;) {
        int c = tok_cmp_base(u->c, &p->v[i], &g->v[j]);
        if (!c) same++, i++, j++;
        else if (c < 0) i++;
        else j++;
    }
    if (!same) return 0;
    double precision = 1.0 * (double)same / (double)p->n, recall = 1.0 * (double)same / (double)g->n;
    return (2 * precision * recall) / (precision + recall);
}

static int is_ascii_punct(uint32_t c) { return c < 128 && strchr("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", (int)c) && c; }

/* normalize_answer(s).split() appended to u, its tokens in t. */
static int normalize_en(const char *s, ustr *u, toks *t) {
    ustr raw = {0}, low = {0};
    int rc = us_decode(&raw, s, strlen(s));
    for (size_t i = 0; i < raw.n && !rc; i++) { /* lower, then punctuation out */
        uint32_t l[2];
        size_t k = mev_py_lower(raw.c[i], l);
        for (size_t j = 0; j < k && !rc; j++)
            if (!is_ascii_punct(l[j])) rc = us_push(&low, l[j]);
    }
    size_t start = u->n;
    /* \b(a|an|the)\b -> " ": an article starts after a non-word character (or the start) and ends
     * before one (or the end); the scan resumes after each replacement */
    for (size_t i = 0; i < low.n && !rc;) {
        size_t len = 0;
        if (i == 0 || !mev_py_isword(low.c[i - 1])) {
            static const char *const arts[] = {"a", "an", "the"};
            for (int a = 0; a < 3 && !len; a++) {
                size_t al = strlen(arts[a]), k = 0;
                while (k < al && i + k < low.n && low.c[i + k] == (uint32_t)arts[a][k]) k++;
                if (k == al && (i + al == low.n || !mev_py_isword(low.c[i + al]))) len = al;
            }
        }
        if (len) rc = us_push(u, ' '), i += len;
        else rc = us_push(u, low.c[i]), i++;
    }
    if (!rc) rc = split_ws(u, start, u->n, t);
    free(raw.c), free(low.c);
    return rc;
}

static double qa_f1(const char *pred, const char *truth, int *err) {
    ustr u = {0};
    toks p = {0}, g = {0};
    double f = 0;
    if (normalize_en(pred, &u, &p) || normalize_en(truth, &u, &g)) *err = 1;
    else f = token_f1(&u, &p, &g);
    free(u.c), free(p.v), free(g.v);
    return f;
}

/* normalize_zh_answer of each jieba word of s, the non-empty ones appended to u / t. */
static int words_zh(const mev_zhseg *z, const char *s, ustr *u, toks *t) {
    static const char cn_punct[] = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.";
    static ustr punct;
    if (!punct.n && us_decode(&punct, cn_punct, strlen(cn_punct))) return -1;
    mev_spans sp = {0};
    ustr w = {0};
    int rc = mev_zhseg_cut(z, s, strlen(s), &sp);
    for (size_t i = 0; i < sp.n && !rc; i++) {
        if ((rc = us_decode(&w, s + sp.v[i].off, sp.v[i].len))) break;
        size_t start = u->n;
        for (size_t k = 0; k < w.n && !rc; k++) {
            uint32_t l[2];
            size_t m = mev_py_lower(w.c[k], l);
            for (size_t j = 0; j < m && !rc; j++) {
                int drop = is_ascii_punct(l[j]) || mev_py_isspace(l[j]);
                for (size_t q = 0; q < punct.n && !drop; q++) drop = punct.c[q] == l[j];
                if (!drop) rc = us_push(u, l[j]);
            }
        }
        if (!rc && u->n > start) rc = tk_push(t, start, u->n - start);
    }
    free(sp.v), free(w.c);
    return rc;
}

static double qa_f1_zh(const mev_zhseg *z, const char *pred, const char *truth, int *err) {
    ustr u = {0};
    toks p = {0}, g = {0};
    double f = 0;
    if (words_zh(z, pred, &u, &p) || words_zh(z, truth, &u, &g)) *err = 1;
    else f = token_f1(&u, &p, &g);
    free(u.c), free(p.v), free(g.v);
    return f;
}

/* ---- ROUGE-L as the `rouge` package computes it ------------------------------------------------- */
/* The walk back through the LCS table is recursive in the package: one Python frame per step plus the
 * last call. Under eval.py (Python 3.11, recursion limit 1000) a walk of more calls than these raises
 * RecursionError, which metrics.py's bare except turns into a score of 0 (measured by running
 * eval.py on one-sentence predictions of growing length; rouge_zh_score adds one frame). */
#define ROUGE_MAX_CALLS_EN 991
#define ROUGE_MAX_CALLS_ZH 990

typedef struct {
    ustr u;
    toks w;       /* words */
    size_t *sent; /* [n_sent + 1] first word of each sentence */
    size_t n_sent;
    int32_t *id;  /* [w.n] interned word ids */
} rtext;

/* rouge's preparation: the non-empty pieces between '.', each " ".join(piece.split()), split on " ". */
static int rouge_text(const char *s, rtext *r) {
    if (us_decode(&r->u, s, strlen(s))) return -1;
    size_t cap = 1;
    for (size_t i = 0; i < r->u.n; i++) cap += r->u.c[i] == '.';
    if (!(r->sent = malloc((cap + 1) * sizeof *r->sent))) return -1;
    for (size_t i = 0, a = 0; i <= r->u.n; i++) {
        if (i < r->u.n && r->u.c[i] != '.') continue;
        if (i > a) {
            r->sent[r->n_sent++] = r->w.n;
            size_t before = r->w.n;
            if (split_ws(&r->u, a, i, &r->w)) return -1;
            if (r->w.n == before && tk_push(&r->w, a, 0)) return -1; /* "".split(" ") == [""] */
        }
        a = i + 1;
    }
    r->sent[r->n_sent] = r->w.n;
    return 0;
}

typedef struct {
    const ustr *u;
    tok t;
    size_t at; /* index into the combined word list */
} wref;
static int wref_cmp(const void *a, const void *b) {
    const wref *x = a, *y = b;
    size_t n = x->t.len < y->t.len ? x->t.len : y->t.len;
    for (size_t i = 0; i < n; i++) {
        uint32_t p = x->u->c[x->t.off + i], q = y->u->c[y->t.off + i];
        if (p != q) return p < q ? -1 : 1;
    }
    return (x->t.len > y->t.len) - (x->t.len < y->t.len);
}

/* Gives every word of both texts an id (equal words, equal ids); returns the number of ids or -1. */
static int64_t intern(rtext *h, rtext *r) {
    size_t n = h->w.n + r->w.n;
    wref *v = malloc((n + 1) * sizeof *v);
    h->id = malloc((h->w.n + 1) * sizeof *h->id);
    r->id = malloc((r->w.n + 1) * sizeof *r->id);
    if (!v || !h->id || !r->id) return free(v), -1;
    for (size_t i = 0; i < h->w.n; i++) v[i] = (wref){&h->u, h->w.v[i], i};
    for (size_t i = 0; i < r->w.n; i++) v[h->w.n + i] = (wref){&r->u, r->w.v[i], h->w.n + i};
    if (n > 1) qsort(v, n, sizeof *v, wref_cmp);
    int32_t id = -1;
    for (size_t i = 0; i < n; i++) {
        if (!i || wref_cmp(&v[i - 1], &v[i])) id++;
        if (v[i].at < h->w.n) h->id[v[i].at] = id;
        else r->id[v[i].at - h->w.n] = id;
    }
    free(v);
    return (int64_t)id + 1;
}

static size_t distinct(const int32_t *ids, size_t n, unsigned char *seen, size_t n_ids) {
    memset(seen, 0, n_ids);
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += !seen[ids[i]], seen[ids[i]] = 1;
    return d;
}

/* The words of the package's LCS reconstruction of x (reference sentence) and y (hypothesis sentence)
 * marked in inlcs; 1 when the walk back needs more calls than max_calls (RecursionError). */
static int lcs_union(const int32_t *x, size_t n, const int32_t *y, size_t m, unsigned char *inlcs, int max_calls,
                     int *err) {
    if ((n < m ? n : m) + 1 > (size_t)max_calls) return 1; /* every step lowers i or j by one at most */
    uint16_t *T = malloc((n + 1) * (m + 1) * sizeof *T);
    if (!T) return *err = 1, 0;
#define AT(i, j) T[(size_t)(i) * (m + 1) + (j)]
    for (size_t i = 0; i <= n; i++)
        for (size_t j = 0; j <= m; j++)
            AT(i, j) = !i || !j ? 0 : x[i - 1] == y[j - 1] ? (uint16_t)(AT(i - 1, j - 1) + 1)
                                 : AT(i - 1, j) > AT(i, j - 1) ? AT(i - 1, j) : AT(i, j - 1);
    size_t i = n, j = m, calls = 1;
    while (i && j) {
        calls++;
        if (x[i - 1] == y[j - 1]) inlcs[x[i - 1]] = 1, i--, j--;
        else if (AT(i - 1, j) > AT(i, j - 1)) i--;
        else j--;
    }
#undef AT
    free(T);
    /* the words are only added once the whole walk returned */
    return calls > (size_t)max_calls;
}

static double rouge_l(const char *hyp, const char *ref, int max_calls, int *err) {
    rtext h = {0}, r = {0};
    double f = 0;
    unsigned char *seen = NULL, *uni = NULL, *cur = NULL;
    int64_t n_ids;
    if (rouge_text(hyp, &h) || rouge_text(ref, &r)) {
        *err = 1;
        goto out;
    }
    if (!h.n_sent || !r.n_sent) goto out; /* "Hypothesis is empty." and the like: 0 */
    if ((n_ids = intern(&h, &r)) < 0 || !(seen = malloc((size_t)n_ids + 1)) || !(uni = calloc((size_t)n_ids + 1, 1)) ||
        !(cur = malloc((size_t)n_ids + 1))) {
        *err = 1;
        goto out;
    }
    size_t m = distinct(r.id, r.w.n, seen, (size_t)n_ids), n = distinct(h.id, h.w.n, seen, (size_t)n_ids);
    for (size_t a = 0; a < r.n_sent; a++)
        for (size_t b = 0; b < h.n_sent; b++) {
            memset(cur, 0, (size_t)n_ids);
            if (lcs_union(r.id + r.sent[a], r.sent[a + 1] - r.sent[a], h.id + h.sent[b], h.sent[b + 1] - h.sent[b],
                          cur, max_calls, err))
                goto out; /* RecursionError: 0 */
            if (*err) goto out;
            for (int64_t k = 0; k < n_ids; k++) uni[k] |= cur[k];
        }
    size_t llcs = 0;
    for (int64_t k = 0; k < n_ids; k++) llcs += uni[k];
    double r_lcs = (double)llcs / (double)m, p_lcs = (double)llcs / (double)n;
    f = 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8));
out:
    free(h.u.c), free(h.w.v), free(h.sent), free(h.id);
    free(r.u.c), free(r.w.v), free(r.sent), free(r.id);
    free(seen), free(uni), free(cur);
    return f;
}

/* " ".join(jieba.cut(s)) */
static char *zh_join(const mev_zhseg *z, const char *s) {
    mev_spans sp = {0};
    size_t n = strlen(s);
    char *o = malloc(2 * n + 1);
    if (!o || mev_zhseg_cut(z, s, n, &sp)) return free(o), free(sp.v), NULL;
    size_t k = 0;
    for (size_t i = 0; i < sp.n; i++) {
        if (i) o[k++] = ' ';
        memcpy(o + k, s + sp.v[i].off, sp.v[i].len);
        k += sp.v[i].len;
    }
    o[k] = 0;
    free(sp.v);
    return o;
}

/* ---- classification, retrieval, count ----------------------------------------------------------- */
static int contains(const char *hay, const char *needle) {
    return !*needle || strstr(hay, needle) != NULL;
}

static double classification(const mev_lb_ctx *c, const char *pred, const char *truth) {
    size_t n = 0;
    const char **em = malloc((c->n_classes + 1) * sizeof *em);
    if (!em) return 0;
    for (size_t i = 0; i < c->n_classes; i++)
        if (contains(pred, c->all_classes[i])) em[n++] = c->all_classes[i];
    /* for t in list: if ...: list.remove(t) — the iterator's index moves on past the element that slid
     * into the removed one's place, and remove() drops the first equal element */
    for (size_t i = 0; i < n; i++)
        if (contains(truth, em[i]) && strcmp(em[i], truth)) {
            size_t j = 0;
            while (strcmp(em[j], em[i])) j++;
            memmove(em + j, em + j + 1, (n - j - 1) * sizeof *em);
            n--;
        }
    double s = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(em[i], truth)) s = 1.0 / (double)n;
    free(em);
    return s;
}

/* The \d+ runs of s (re.findall), as UTF-8 spans. */
static int digit_runs(const char *s, mev_spans *out) {
    size_t n = strlen(s);
    out->n = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t k = mev_utf8_decode(s + i, n - i, &c);
        if (!k) k = 1, c = 0xFFFD;
        if (!mev_py_isdigit(c)) {
            i += k;
            continue;
        }
        size_t a = i;
        while (i < n && (k = mev_utf8_decode(s + i, n - i, &c)) && mev_py_isdigit(c)) i += k;
        if (out->n == out->cap) {
            size_t nc = out->cap ? 2 * out->cap : 16;
            mev_span *p = realloc(out->v, nc * sizeof *p);
            if (!p) return -1;
            out->v = p, out->cap = nc;
        }
        out->v[out->n].off = a, out->v[out->n++].len = i - a;
    }
    return 0;
}

/* right / len(numbers) for the numbers of pred equal to want[0, wl). */
static double share_equal(const char *pred, const char *want, size_t wl, int *err) {
    mev_spans sp = {0};
    if (digit_runs(pred, &sp)) return *err = 1, free(sp.v), 0;
    size_t right = 0;
    for (size_t i = 0; i < sp.n; i++) right += sp.v[i].len == wl && !memcmp(pred + sp.v[i].off, want, wl);
    double s = sp.n ? (double)right / (double)sp.n : 0.0;
    free(sp.v);
    return s;
}

/* The first "Paragraph N" / "段落N" of the answer: N's bytes. */
static int paragraph_id(const char *truth, const char *label, const char **id, size_t *len) {
    size_t ll = strlen(label);
    for (const char *p = strstr(truth, label); p; p = strstr(p + 1, label)) {
        mev_spans sp = {0};
        const char *q = p + ll;
        uint32_t c;
        size_t k = mev_utf8_decode(q, strlen(q), &c);
        if (!k || !mev_py_isdigit(c)) continue;
        if (digit_runs(q, &sp) || !sp.n) return free(sp.v), -1;
        *id = q, *len = sp.v[0].len;
        free(sp.v);
        return 0;
    }
    return -1;
}

/* ---- code similarity: fuzzywuzzy.fuzz.ratio over difflib.SequenceMatcher ------------------------- */
typedef struct {
    const uint32_t *a, *b;
    size_t la, lb;
    uint32_t *key;    /* b2j: distinct elements of b (sorted) ... */
    size_t *first;    /* ... their positions start at pos[first[k]] ... */
    size_t *pos;      /* ... ascending, until first[k + 1] */
    size_t nkey;
    size_t *len_v[2]; /* j2len: length of the match ending at j, valid when stamp == the row's */
    size_t *stamp[2];
    size_t row;
} seqm;

static const size_t *b2j(const seqm *s, uint32_t c, size_t *n) {
    size_t lo = 0, hi = s->nkey;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->key[mid] < c) lo = mid + 1;
        else hi = mid;
    }
    if (lo == s->nkey || s->key[lo] != c) return *n = 0, NULL;
    *n = s->first[lo + 1] - s->first[lo];
    return s->pos + s->first[lo];
}

static void longest(seqm *s, size_t alo, size_t ahi, size_t blo, size_t bhi, size_t *bi, size_t *bj, size_t *bk) {
    size_t besti = alo, bestj = blo, bestsize = 0;
    for (size_t i = alo; i < ahi; i++) {
        size_t row = ++s->row, cur = row & 1, prev = cur ^ 1, n;
        const size_t *js = b2j(s, s->a[i], &n);
        for (size_t q = 0; q < n; q++) {
            size_t j = js[q];
            if (j < blo) continue;
            if (j >= bhi) break;
            size_t k = (j && s->stamp[prev][j - 1] == row - 1 ? s->len_v[prev][j - 1] : 0) + 1;
            s->len_v[cur][j] = k, s->stamp[cur][j] = row;
            if (k > bestsize) besti = i - k + 1, bestj = j - k + 1, bestsize = k;
        }
    }
    s->row++; /* the next call's first row sees no stale entries */
    while (besti > alo && bestj > blo && s->a[besti - 1] == s->b[bestj - 1]) besti--, bestj--, bestsize++;
    while (besti + bestsize < ahi && bestj + bestsize < bhi && s->a[besti + bestsize] == s->b[bestj + bestsize])
        bestsize++;
    *bi = besti, *bj = bestj, *bk = bestsize;
}

typedef struct {
    uint32_t c;
    size_t i;
} cpos;
static int cpos_cmp(const void *x, const void *y) {
    const cpos *a = x, *b = y;
    return a->c != b->c ? (a->c > b->c) - (a->c < b->c) : (a->i > b->i) - (a->i < b->i);
}

/* SequenceMatcher(None, a, b).ratio()'s matches: the sum of the matching blocks' sizes. */
static int seq_matches(const ustr *a, const ustr *b, size_t *matches) {
    seqm s = {.a = a->c, .b = b->c, .la = a->n, .lb = b->n, .row = 1}; /* stamps start at 0: never a row - 1 */
    cpos *v = malloc((b->n + 1) * sizeof *v);
    s.key = malloc((b->n + 1) * sizeof *s.key);
    s.first = malloc((b->n + 2) * sizeof *s.first);
    s.pos = malloc((b->n + 1) * sizeof *s.pos);
    size_t (*queue)[4] = malloc((a->n + b->n + 2) * sizeof *queue);
    for (int k = 0; k < 2; k++) {
        s.len_v[k] = malloc((b->n + 1) * sizeof(size_t));
        s.stamp[k] = calloc(b->n + 1, sizeof(size_t));
    }
    int rc = -1;
    if (!v || !s.key || !s.first || !s.pos || !queue || !s.len_v[0] || !s.len_v[1] || !s.stamp[0] || !s.stamp[1])
        goto out;
    for (size_t i = 0; i < b->n; i++) v[i] = (cpos){b->c[i], i};
    if (b->n > 1) qsort(v, b->n, sizeof *v, cpos_cmp);
    /* autojunk: in a b of 200 or more, elements seen more than len(b) // 100 + 1 times leave b2j */
    size_t np = 0, ntest = b->n / 100 + 1;
    for (size_t i = 0; i < b->n;) {
        size_t e = i;
        while (e < b->n && v[e].c == v[i].c) e++;
        if (!(b->n >= 200 && e - i > ntest)) {
            s.key[s.nkey] = v[i].c;
            s.first[s.nkey++] = np;
            for (size_t k = i; k < e; k++) s.pos[np++] = v[k].i;
        }
        i = e;
    }
    s.first[s.nkey] = np;
    size_t nq = 0, total = 0;
    queue[nq][0] = 0, queue[nq][1] = a->n, queue[nq][2] = 0, queue[nq++][3] = b->n;
    while (nq) {
        nq--;
        size_t alo = queue[nq][0], ahi = queue[nq][1], blo = queue[nq][2], bhi = queue[nq][3], i, j, k;
        longest(&s, alo, ahi, blo, bhi, &i, &j, &k);
        if (!k) continue;
        total += k;
        if (alo < i && blo < j) queue[nq][0] = alo, queue[nq][1] = i, queue[nq][2] = blo, queue[nq++][3] = j;
        if (i + k < ahi && j + k < bhi)
            queue[nq][0] = i + k, queue[nq][1] = ahi, queue[nq][2] = j + k, queue[nq++][3] = bhi;
    }
    *matches = total;
    rc = 0;
out:
    free(v), free(s.key), free(s.first), free(s.pos), free(queue);
    for (int k = 0; k < 2; k++) free(s.len_v[k]), free(s.stamp[k]);
    return rc;
}

static double code_sim(const char *pred, const char *truth, int *err) {
    while (*pred == '\n') pred++;
    const char *line = "", *end = line;
    for (const char *p = pred;;) {
        const char *nl = strchr(p, '\n'), *e = nl ? nl : p + strlen(p);
        int comment = 0;
        for (const char *q = p; q < e && !comment; q++) comment = *q == '`' || *q == '#' || (*q == '/' && q[1] == '/');
        if (!comment) {
            line = p, end = e;
            break;
        }
        if (!nl) break;
        p = nl + 1;
    }
    size_t ll = (size_t)(end - line), tl = strlen(truth);
    if (ll == tl && !memcmp(line, truth, ll)) return 1.0; /* fuzz.ratio: equal strings are 100 */
    if (!ll || !tl) return 0.0;
    ustr a = {0}, b = {0};
    size_t m = 0;
    double r = 0;
    if (us_decode(&a, line, ll) || us_decode(&b, truth, tl) || seq_matches(&a, &b, &m)) *err = 1;
    else r = nearbyint(100 * (2.0 * (double)m / (double)(a.n + b.n))) / 100;
    free(a.c), free(b.c);
    return r;
}

/* ---- the dataset table ------------------------------------------------------------------------- */
static const struct {
    const char *name;
    int metric;
} DATASETS[] = {
    {"narrativeqa", MEV_LB_QA_F1}, {"qasper", MEV_LB_QA_F1}, {"multifieldqa_en", MEV_LB_QA_F1},
    {"multifieldqa_zh", MEV_LB_QA_F1_ZH}, {"hotpotqa", MEV_LB_QA_F1}, {"2wikimqa", MEV_LB_QA_F1},
    {"musique", MEV_LB_QA_F1}, {"dureader", MEV_LB_ROUGE_ZH}, {"gov_report", MEV_LB_ROUGE},
    {"qmsum", MEV_LB_ROUGE}, {"multi_news", MEV_LB_ROUGE}, {"vcsum", MEV_LB_ROUGE_ZH},
    {"trec", MEV_LB_CLASSIFICATION}, {"triviaqa", MEV_LB_QA_F1}, {"samsum", MEV_LB_ROUGE},
    {"lsht", MEV_LB_CLASSIFICATION}, {"passage_retrieval_en", MEV_LB_RETRIEVAL}, {"passage_count", MEV_LB_COUNT},
    {"passage_retrieval_zh", MEV_LB_RETRIEVAL_ZH}, {"lcc", MEV_LB_CODE_SIM}, {"repobench-p", MEV_LB_CODE_SIM},
};

int mev_lb_metric_of(const char *dataset) {
    for (size_t i = 0; dataset && i < sizeof DATASETS / sizeof *DATASETS; i++)
        if (!strcmp(DATASETS[i].name, dataset)) return DATASETS[i].metric;
    return -1;
}

const char *mev_lb_metric_name(int metric) {
    static const char *const names[] = {"qa_f1_score", "qa_f1_zh_score", "rouge_score", "rouge_zh_score",
                                        "classification_score", "retrieval_score", "retrieval_zh_score",
                                        "count_score", "code_sim_score"};
    return metric >= 0 && metric < 9 ? names[metric] : "?";
}

int mev_lb_needs_zh(int metric) { return metric == MEV_LB_QA_F1_ZH || metric == MEV_LB_ROUGE_ZH; }

int mev_lb_metric_score(int metric, const mev_lb_ctx *c, const char *pred, const char *truth, double *out) {
    int err = 0;
    const char *id;
    size_t idl;
    char *hp = NULL, *rp = NULL;
    *out = 0;
    if (mev_lb_needs_zh(metric) && !c->zh) return mtok_err(MTOK_EINPUT, "the Chinese metrics need jieba's data");
    switch (metric) {
    case MEV_LB_QA_F1: *out = qa_f1(pred, truth, &err); break;
    case MEV_LB_QA_F1_ZH: *out = qa_f1_zh(c->zh, pred, truth, &err); break;
    case MEV_LB_ROUGE: *out = rouge_l(pred, truth, ROUGE_MAX_CALLS_EN, &err); break;
    case MEV_LB_ROUGE_ZH:
        if (!(hp = zh_join(c->zh, pred)) || !(rp = zh_join(c->zh, truth))) err = 1;
        else *out = rouge_l(hp, rp, ROUGE_MAX_CALLS_ZH, &err);
        free(hp), free(rp);
        break;
    case MEV_LB_CLASSIFICATION:
        if (!c->all_classes) return mtok_err(MTOK_EINPUT, "a classification dataset without \"all_classes\"");
        *out = classification(c, pred, truth);
        break;
    case MEV_LB_RETRIEVAL:
    case MEV_LB_RETRIEVAL_ZH:
        if (paragraph_id(truth, metric == MEV_LB_RETRIEVAL ? "Paragraph " : "段落", &id, &idl))
            return mtok_err(MTOK_EINPUT, "a retrieval answer without its paragraph number (\"%s\" and digits): %.60s",
                            metric == MEV_LB_RETRIEVAL ? "Paragraph " : "段落", truth);
        *out = share_equal(pred, id, idl, &err);
        break;
    case MEV_LB_COUNT: *out = share_equal(pred, truth, strlen(truth), &err); break;
    case MEV_LB_CODE_SIM: *out = code_sim(pred, truth, &err); break;
    default: return mtok_err(MTOK_EINPUT, "unknown LongBench metric %d", metric);
    }
    return err ? mtok_err(MTOK_ERESOURCE, "out of memory scoring a prediction") : 0;
}

int mev_lb_sample_score(const char *dataset, const mev_lb_ctx *c, const char *pred, const char *const *answers,
                        size_t n_answers, double *out) {
    int metric = mev_lb_metric_of(dataset);
    if (metric < 0) return mtok_err(MTOK_EINPUT, "%s is not a LongBench dataset", dataset ? dataset : "(none)");
    char *first = NULL;
    if (!strcmp(dataset, "trec") || !strcmp(dataset, "triviaqa") || !strcmp(dataset, "samsum") ||
        !strcmp(dataset, "lsht")) {
        while (*pred == '\n') pred++;
        const char *nl = strchr(pred, '\n');
        if (!(first = strndup(pred, nl ? (size_t)(nl - pred) : strlen(pred))))
            return mtok_err(MTOK_ERESOURCE, "out of memory");
        pred = first;
    }
    double best = 0.;
    int rc = 0;
    for (size_t i = 0; i < n_answers && !rc; i++) {
        double s;
        if (!(rc = mev_lb_metric_score(metric, c, pred, answers[i], &s)) && s > best) best = s;
    }
    free(first);
    *out = best;
    return rc;
}

/* ---- Python's and numpy's number handling ------------------------------------------------------- */
double mev_py_round(double x, int nd) {
    if (!isfinite(x)) return x;
    char b[400];
    snprintf(b, sizeof b, "%.*f", nd, x); /* glibc rounds the exact binary value, half-even: as Python */
    return strtod(b, NULL);
}

void mev_py_repr(double x, char *buf, size_t cap) {
    if (isnan(x)) {
        snprintf(buf, cap, "NaN");
        return;
    }
    if (isinf(x)) {
        snprintf(buf, cap, x > 0 ? "Infinity" : "-Infinity");
        return;
    }
    if (x != 0 && (fabs(x) >= 1e16 || fabs(x) < 1e-4)) { /* repr's exponent form */
        for (int p = 1; p <= 17; p++) {
            snprintf(buf, cap, "%.*e", p - 1, x);
            if (strtod(buf, NULL) == x) break;
        }
        return;
    }
    for (int d = 0; d <= 20; d++) {
        snprintf(buf, cap, "%.*f", d, x);
        if (strtod(buf, NULL) == x) {
            if (!d) strncat(buf, ".0", cap - strlen(buf) - 1);
            return;
        }
    }
}

/* numpy's pairwise_sum for float64 (blocks of 128, eight accumulators) */
static double pairwise(const double *a, size_t n) {
    if (n < 8) {
        double r = 0.;
        for (size_t i = 0; i < n; i++) r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8];
        size_t i;
        for (int j = 0; j < 8; j++) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + (size_t)j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise(a, n2) + pairwise(a + n2, n - n2);
}

double mev_np_mean(const double *v, size_t n) {
    if (!n) return NAN;
    return pairwise(v, n) / (double)n;
}

char mev_lb2_extract(const char *response) {
    size_t n = strlen(response), k = 0;
    char *r = malloc(n + 1);
    if (!r) return 0;
    for (size_t i = 0; i < n; i++)
        if (response[i] != '*') r[k++] = response[i];
    r[k] = 0;
    static const char lead[] = "The correct answer is ";
    char found = 0;
    for (const char *p = strstr(r, lead); p && !found; p = strstr(p + 1, lead)) {
        const char *q = p + sizeof lead - 1;
        if (q[0] == '(' && q[1] >= 'A' && q[1] <= 'D' && q[2] == ')') found = q[1];
    }
    for (const char *p = strstr(r, lead); p && !found; p = strstr(p + 1, lead)) {
        const char *q = p + sizeof lead - 1;
        if (q[0] >= 'A' && q[0] <= 'D') found = q[0];
    }
    free(r);
    return found;
}
