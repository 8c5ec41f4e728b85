/* niah.c — the needle-in-a-haystack grid (mtok niah).
 *
 * One cell = (variant, length, depth). Its prompt is built from whole haystack sentences (a text
 * repeated to length, or RULER's noise lines), the needle(s) spliced in at the sentence boundary at
 * or before the depth (measured in haystack tokens), and the question; the length is the exact
 * token count of the prompt the model reads, chat template included (RULER, docs/EVAL.md §1.2):
 * the haystack is the longest run of sentences that keeps the prompt within the grid length.
 *
 * Needles: fact tokens (<|fact:K:V|>, asked with <|ask:K|>, answered <|val:V|>) for the planted
 * needle model; RULER's natural-language needles with 7-digit magic numbers for real models.
 * Variants after RULER: single, multi-key (distractor facts with other keys), multi-value (one key,
 * several values), multi-query (several keys, all asked).
 *
 * The session is reused between cells and between the questions of a cell: only the tokens after
 * the longest common prefix with what the session holds are computed (mtok_session_truncate rolls
 * back the rest). Depths run from deep to shallow so the haystack before each needle is shared. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jsonl.h"
#include "niah_int.h"

#define MAX_NEEDLES 16

/* ---- growable text -------------------------------------------------------------------------- */
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;
static int sb_add(sbuf *b, const char *p, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->n + n + 1 > cap) cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) return mtok_err(MTOK_ERESOURCE, "out of memory building a prompt");
        b->s = ns, b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}
static int sb_str(sbuf *b, const char *s) { return sb_add(b, s, strlen(s)); }

/* ---- haystack: sentences of one copy of the text, repeated ------------------------------------ */
typedef struct {
    const char *p;
    size_t n;
} span;
typedef struct {
    char *text;
    size_t len;
    span *sent;     /* sentences; each but the first carries its leading whitespace */
    size_t n_sent;
    int64_t *ntok;  /* tokens of each sentence tokenized alone (an estimate of its share) */
    int64_t sep_tok;
} haystack;

static const char sep_text[] = "\n\n"; /* between two copies of the text */
static const char noise_line[] =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";

static int sentence_end(const char *s, size_t n, size_t i) {
    /* '.', '!' or '?' (and closing quotes/brackets) followed by whitespace or the end */
    if (s[i] != '.' && s[i] != '!' && s[i] != '?') return 0;
    size_t j = i + 1;
    while (j < n && (s[j] == '"' || s[j] == '\'' || s[j] == ')')) j++;
    return j >= n || isspace((unsigned char)s[j]) ? (int)(j - i) : 0;
}

static int haystack_init(haystack *h, const mtok_tokenizer *t, const char *file, int noise) {
    memset(h, 0, sizeof *h);
    const char *src;
    size_t n;
    char *owned = NULL;
    if (noise) {
        src = noise_line, n = sizeof noise_line - 1;
    } else if (file) {
        FILE *f = fopen(file, "rb");
        if (!f) return mtok_err(MTOK_EINPUT, "%s: %s", file, strerror(errno));
        fseek(f, 0, SEEK_END);
        long sz = ftell(f);
        fseek(f, 0, SEEK_SET);
        owned = malloc((size_t)(sz > 0 ? sz : 0) + 1);
        if (!owned) return fclose(f), mtok_err(MTOK_ERESOURCE, "out of memory reading %s", file);
        n = fread(owned, 1, (size_t)(sz > 0 ? sz : 0), f);
        fclose(f);
        owned[n] = 0;
        src = owned;
    } else {
        src = mev_corpus_kjv, n = mev_corpus_kjv_len;
    }
    /* trim surrounding whitespace: copies are joined with sep_text */
    while (n && isspace((unsigned char)src[n - 1])) n--;
    while (n && isspace((unsigned char)*src)) src++, n--;
    h->text = malloc(n + 1);
    h->sent = malloc((n / 2 + 2) * sizeof *h->sent);
    if (!h->text || !h->sent) return free(owned), mtok_err(MTOK_ERESOURCE, "out of memory for the haystack");
    memcpy(h->text, src, n);
    h->text[n] = 0;
    h->len = n;
    free(owned);
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        int e = sentence_end(h->text, n, i);
        if (!e) continue;
        size_t end = i + (size_t)e;
        h->sent[h->n_sent++] = (span){h->text + start, end - start};
        start = end;
        i = end - 1;
    }
    if (start < n) h->sent[h->n_sent++] = (span){h->text + start, n - start};
    if (!h->n_sent) return mtok_err(MTOK_EINPUT, "%s: the haystack text is empty", file ? file : "haystack");
    h->ntok = malloc(h->n_sent * sizeof *h->ntok);
    if (!h->ntok) return mtok_err(MTOK_ERESOURCE, "out of memory for the haystack");
    mtok_ids ids = {0};
    int rc = 0;
    for (size_t i = 0; i < h->n_sent && !rc; i++) {
        ids.n = 0;
        rc = mtok_tokenize(t, h->sent[i].p, h->sent[i].n, 0, &ids);
        h->ntok[i] = (int64_t)ids.n;
    }
    ids.n = 0;
    if (!rc) rc = mtok_tokenize(t, sep_text, 2, 0, &ids);
    h->sep_tok = (int64_t)ids.n;
    mtok_ids_free(&ids);
    return rc;
}

static void haystack_free(haystack *h) {
    free(h->text);
    free(h->sent);
    free(h->ntok);
}

/* Appends haystack sentences [a, b) of the repeated text. */
static int haystack_text(const haystack *h, int64_t a, int64_t b, sbuf *out) {
    int rc = 0;
    for (int64_t i = a; i < b && !rc; i++) {
        size_t k = (size_t)(i % (int64_t)h->n_sent);
        if (k == 0 && i > 0) rc = sb_add(out, sep_text, 2);
        if (!rc) rc = sb_add(out, h->sent[k].p, h->sent[k].n);
    }
    return rc;
}
static int64_t sentence_tokens(const haystack *h, int64_t i) {
    size_t k = (size_t)(i % (int64_t)h->n_sent);
    return h->ntok[k] + (k == 0 && i > 0 ? h->sep_tok : 0);
}

/* ---- cell plans ------------------------------------------------------------------------------- */
typedef struct {
    double depth;
    int key, val;       /* needle model: key < 16, value < 64 */
    char key_s[48];     /* text mode */
    char val_s[16];
    int64_t at;         /* sentence boundary index, set per build */
} needle;

typedef struct {
    mev_variant variant;
    int64_t length;
    double depth;
    needle nd[MAX_NEEDLES];
    int n_nd;
    int q[MAX_NEEDLES]; /* indexes of the needles whose keys are asked (by distinct key) */
    int n_q;
    char expected[MAX_NEEDLES][48];
    int n_expected;
    int all_depths; /* one needle per grid depth, each asked (and scored) on its own */
} plan;

static const char *const adjectives[16] = {"determined", "quiet",  "ancient", "bright", "hollow", "silver",
                                           "patient",    "frozen", "gentle",  "crimson", "narrow", "distant",
                                           "humble",     "wooden", "restless", "golden"};
static const char *const nouns[16] = {"consignment", "harbor", "lantern", "meadow", "compass", "orchard",
                                      "engine",      "ledger", "pilgrim", "quarry", "saddle",  "thimble",
                                      "violin",      "walnut", "anchor",  "furnace"};

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* all != NULL: the all-depths layout, one needle at each of the n_all depths (distinct keys). */
static void make_plan(plan *P, mev_variant v, int64_t length, double depth, int n_extra, uint64_t seed, int facts,
                      const double *all, int n_all) {
    memset(P, 0, sizeof *P);
    P->variant = v, P->length = length, P->depth = depth, P->all_depths = all != NULL;
    uint64_t r = seed ^ (uint64_t)length * 0x100000001B3ull ^ (uint64_t)(depth * 1000.0) * 0x9E37ull ^
                 (uint64_t)v << 56;
    int n = all ? n_all : v == MEV_SINGLE ? 1 : 1 + (n_extra > 0 ? n_extra : 3);
    if (n > MAX_NEEDLES) n = MAX_NEEDLES;
    if (facts && n > MEV_NEEDLE_KEYS) n = MEV_NEEDLE_KEYS;
    /* distinct keys (a permutation prefix), values drawn per needle */
    int keys[MEV_NEEDLE_KEYS * MEV_NEEDLE_KEYS];
    int nkeys = facts ? MEV_NEEDLE_KEYS : 16 * 16;
    for (int i = 0; i < nkeys; i++) keys[i] = i;
    for (int i = 0; i < nkeys - 1; i++) {
        int j = i + (int)(rng_next(&r) % (uint64_t)(nkeys - i));
        int tmp = keys[i];
        keys[i] = keys[j], keys[j] = tmp;
    }
    int used_vals[MAX_NEEDLES];
    for (int i = 0; i < n; i++) {
        needle *d = &P->nd[i];
        /* the first needle sits at the cell's depth; the others are spread over the rest of the
         * document after it (gkamradt's multi-needle rule), so every needle is inside the prompt */
        d->depth = all ? all[i] : i == 0 ? depth : depth + (100.0 - depth) * i / n;
        d->key = v == MEV_MULTIVALUE ? keys[0] : keys[i];
        for (;;) { /* distinct values inside a cell */
            d->val = (int)(rng_next(&r) % MEV_NEEDLE_VALUES);
            int clash = 0;
            for (int j = 0; j < i; j++) clash |= used_vals[j] == d->val;
            if (!clash) break;
        }
        used_vals[i] = d->val;
        snprintf(d->key_s, sizeof d->key_s, "%s-%s", adjectives[d->key / 16 % 16], nouns[d->key % 16]);
        snprintf(d->val_s, sizeof d->val_s, "%07llu", (unsigned long long)(1000000 + rng_next(&r) % 9000000));
    }
    P->n_nd = n;
    /* which keys are asked, and what the answer must contain */
    if (v == MEV_MULTIQUERY || all) {
        for (int i = 0; i < n; i++) P->q[P->n_q++] = i;
    } else {
        P->q[P->n_q++] = 0;
    }
    for (int i = 0; i < n; i++) {
        int asked = v == MEV_MULTIVALUE || v == MEV_MULTIQUERY || all || i == 0;
        if (!asked) continue;
        if (facts) snprintf(P->expected[P->n_expected++], 48, "<|val:%d|>", P->nd[i].val);
        else snprintf(P->expected[P->n_expected++], 48, "%s", P->nd[i].val_s);
    }
}

/* ---- the run ---------------------------------------------------------------------------------- */
typedef struct {
    mtok_session *s;
    const mtok_tokenizer *t;
    const mev_niah_params *p;
    haystack h;
    mev_needle_ids nid;
    int facts;                 /* fact-token needles */
    int32_t gmask, sop, user, assistant;
    mev_runner rn;             /* the session and its counters */
    /* the grid walk (mev_niah_run and its steps) */
    char *res_path;            /* out_dir/results.jsonl, appended through fd */
    int fd;
    mev_niah_results *prev;    /* --resume: the cells already in results.jsonl */
    mtok_ids ctx, q[MAX_NEEDLES], full; /* the unit's prompt (build), question i's is ctx + q[i] */
    char *out;                 /* the line's answers */
    size_t out_len;
    size_t n_done;             /* progress: cells done or skipped */
    size_t line;               /* the results.jsonl line running now, in the grid's plan order */
    mev_eta eta;               /* the time still needed and the progress line (niah_eta.c) */
    double t0, score_sum;
} run;

/* Builds the prompt of a cell with S haystack sentences: ctx = everything up to the questions,
 * q[i] = the suffix that asks question i (the whole prompt for question i is ctx + q[i]). */
static int build(run *R, plan *P, int64_t S, mtok_ids *ctx, mtok_ids *q) {
    const haystack *h = &R->h;
    int rc = 0;
    ctx->n = 0;
    for (int i = 0; i < P->n_q; i++) q[i].n = 0;
    /* needle boundaries: the last sentence boundary at or before depth% of the haystack tokens */
    int64_t total = 0;
    for (int64_t i = 0; i < S; i++) total += sentence_tokens(h, i);
    for (int j = 0; j < P->n_nd; j++) {
        double target = P->nd[j].depth / 100.0 * (double)total;
        int64_t cum = 0, at = 0;
        for (int64_t i = 0; i < S; i++) {
            cum += sentence_tokens(h, i);
            if ((double)cum <= target + 1e-9) at = i + 1;
            else break;
        }
        P->nd[j].at = at;
    }
    /* needles in document order (stable for equal boundaries) */
    int order[MAX_NEEDLES];
    for (int j = 0; j < P->n_nd; j++) order[j] = j;
    for (int a = 1; a < P->n_nd; a++)
        for (int b = a; b > 0 && P->nd[order[b]].at < P->nd[order[b - 1]].at; b--) {
            int tmp = order[b];
            order[b] = order[b - 1], order[b - 1] = tmp;
        }
    sbuf text = {0};
    if (R->facts) {
        /* [gMASK]<sop><|user|> "\n" haystack with fact tokens, then per question
         * "\n"<|ask:K|><|assistant|><|ask:K|> */
        int32_t head[3] = {R->gmask, R->sop, R->user};
        rc = mtok_ids_append(ctx, head, 3);
        if (!rc) rc = mtok_tokenize(R->t, "\n", 1, 0, ctx);
        int64_t from = 0;
        for (int j = 0; j <= P->n_nd && !rc; j++) {
            int64_t to = j < P->n_nd ? P->nd[order[j]].at : S;
            text.n = 0;
            rc = haystack_text(h, from, to, &text);
            if (!rc && text.n) rc = mtok_tokenize(R->t, text.s, text.n, 0, ctx);
            if (!rc && j < P->n_nd) {
                const needle *d = &P->nd[order[j]];
                rc = mtok_ids_push(ctx, R->nid.fact0 + d->key * MEV_NEEDLE_VALUES + d->val);
            }
            from = to;
        }
        for (int i = 0; i < P->n_q && !rc; i++) {
            rc = mtok_tokenize(R->t, "\n", 1, 0, &q[i]);
            if (!rc) rc = mtok_ids_push(&q[i], R->nid.ask0 + P->nd[P->q[i]].key);
            if (!rc) rc = mtok_ids_push(&q[i], R->assistant);
            /* the answer prefix (RULER's answer_prefix names the key again): the answer is predicted at
             * the position of an ask token, where the retrieval head's query is */
            if (!rc) rc = mtok_ids_push(&q[i], R->nid.ask0 + P->nd[P->q[i]].key);
        }
    } else {
        /* RULER's niah template (docs/EVAL.md §1.1) in the model's chat template; the whole
         * prompt of each question goes to q[i] (ctx stays empty; the session's prefix reuse still
         * prefills the shared document once) */
        rc = sb_str(&text, "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
                           "I will quiz you about the numbers afterwards.\n");
        int64_t from = 0;
        for (int j = 0; j <= P->n_nd && !rc; j++) {
            int64_t to = j < P->n_nd ? P->nd[order[j]].at : S;
            rc = haystack_text(h, from, to, &text);
            if (!rc && j < P->n_nd) {
                char line[160];
                snprintf(line, sizeof line, " One of the special magic numbers for %s is: %s.",
                         P->nd[order[j]].key_s, P->nd[order[j]].val_s);
                rc = sb_str(&text, line);
            }
            from = to;
        }
        const size_t doc_len = text.n;
        const int per_key = P->all_depths, n_questions = per_key ? P->n_q : 1;
        const int many = !per_key && (P->variant == MEV_MULTIVALUE || P->variant == MEV_MULTIQUERY);
        for (int qi = 0; qi < n_questions && !rc; qi++) {
            char query[256] = "";
            for (int i = per_key ? qi : 0; i < (per_key ? qi + 1 : P->n_q); i++) {
                size_t l = strlen(query);
                snprintf(query + l, sizeof query - l, "%s%s", l == 0 ? "" : i + 1 == P->n_q ? ", and " : ", ",
                         P->nd[P->q[i]].key_s);
            }
            char question[512], prefix[512];
            snprintf(question, sizeof question,
                     "\nWhat %s the special magic number%s for %s mentioned in the provided text?",
                     many ? "are all" : "is", many ? "s" : "", query);
            snprintf(prefix, sizeof prefix, " The special magic number%s for %s mentioned in the provided text %s",
                     many ? "s" : "", query, many ? "are" : "is");
            text.n = doc_len;
            rc = sb_str(&text, question);
            mtok_message msg = {"user", NULL, text.s, NULL};
            if (!rc) rc = mtok_chat_encode(R->t, &msg, 1, 1, &q[qi]);
            if (!rc) rc = mtok_tokenize(R->t, prefix, strlen(prefix), 0, &q[qi]);
        }
        if (!per_key) P->n_q = 1; /* one question names every key */
    }
    free(text.s);
    return rc;
}

/* Fits the haystack: the most sentences whose prompt stays within the cell length. */
static int fit(run *R, plan *P, mtok_ids *ctx, mtok_ids *q, int64_t *S_out) {
    int rc = build(R, P, 0, ctx, q);
    if (rc) return rc;
    int64_t over = (int64_t)ctx->n + (int64_t)q[0].n;
    if (over > P->length)
        return mtok_err(MTOK_EUSAGE, "length %lld is too short: the template, needles and question alone take %lld "
                        "tokens", (long long)P->length, (long long)over);
    int64_t S = 0, est = over;
    while (est + sentence_tokens(&R->h, S) <= P->length) est += sentence_tokens(&R->h, S++);
    for (int tries = 0; tries < 64; tries++) {
        if ((rc = build(R, P, S, ctx, q))) return rc;
        int64_t n = (int64_t)ctx->n + (int64_t)q[0].n;
        if (n <= P->length) {
            /* one more sentence may still fit when the estimate was pessimistic */
            if (tries < 32 && n + sentence_tokens(&R->h, S) <= P->length) {
                S++;
                continue;
            }
            *S_out = S;
            return 0;
        }
        int64_t drop = 1;
        for (int64_t excess = n - P->length, i = S - 1; i > 0 && excess > sentence_tokens(&R->h, i); i--)
            excess -= sentence_tokens(&R->h, i), drop++;
        S = S > drop ? S - drop : 0;
        if (S == 0) break;
    }
    if ((rc = build(R, P, S, ctx, q))) return rc;
    *S_out = S;
    return (int64_t)ctx->n + (int64_t)q[0].n <= P->length
               ? 0
               : mtok_err(MTOK_EINTERNAL, "niah: cannot fit length %lld", (long long)P->length);
}

/* ---- results.jsonl ---------------------------------------------------------------------------- */
static int cell_key_eq(json_t *o, int64_t len, double depth, const char *variant) {
    json_t *l = json_object_get(o, "length"), *d = json_object_get(o, "depth"), *v = json_object_get(o, "variant");
    return json_is_integer(l) && json_integer_value(l) == len && json_is_number(d) &&
           fabs(json_number_value(d) - depth) < 1e-9 && json_is_string(v) && !strcmp(json_string_value(v), variant);
}

static int append_line(int fd, const char *path, json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    if (!s) return mtok_err(MTOK_ERESOURCE, "out of memory writing %s", path);
    size_t n = strlen(s);
    s[n] = '\n'; /* replaces the NUL: one write() per line, so a line is never torn by our own exit */
    ssize_t w = write(fd, s, n + 1);
    free(s);
    if (w != (ssize_t)(n + 1) || fdatasync(fd) != 0)
        return mtok_err(MTOK_ERESOURCE, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

/* The KV traffic of one cell (the difference of the session's counters before and after it):
 * cold-tier bytes the policy read, K+V bytes attention read, what exact attention would have read,
 * and the --kv-audit share of the exact softmax mass the topk blocks held (mean over the cell's
 * audited rows; the minimum is over the run so far, since the session keeps one running minimum). */
static void kv_fields(json_t *o, const mtok_kv_stats *a, const mtok_kv_stats *b) {
    const uint64_t rows = b->audit_rows - a->audit_rows;
    const double sum = b->audit_mass_mean * (double)b->audit_rows - a->audit_mass_mean * (double)a->audit_rows;
    json_object_set_new(o, "kv_bytes_read", json_integer((json_int_t)((b->bytes_read - b->audit_bytes_read) -
                                                                      (a->bytes_read - a->audit_bytes_read))));
    json_object_set_new(o, "kv_bytes_attended", json_integer((json_int_t)(b->bytes_attended - a->bytes_attended)));
    json_object_set_new(o, "kv_bytes_exact", json_integer((json_int_t)(b->bytes_exact - a->bytes_exact)));
    json_object_set_new(o, "kv_summary_bytes", json_integer((json_int_t)b->summary_bytes));
    json_object_set_new(o, "audit_steps", json_integer((json_int_t)(b->audit_steps - a->audit_steps)));
    if (rows) {
        json_object_set_new(o, "audit_mass_mean", json_real(sum / (double)rows));
        json_object_set_new(o, "audit_mass_min_run", json_real(b->audit_mass_min));
    }
}

/* Refuses a grid that cannot run: no lengths, depths or output directory, a depth outside 0..100,
 * --all-depths with more depths than a prompt holds needles or with another variant. */
static int niah_check(const mev_niah_params *p) {
    if (!p->n_lengths || !p->n_depths || !p->out_dir)
        return mtok_err(MTOK_EUSAGE, "niah: lengths, depths and an output directory are required");
    for (size_t i = 0; i < p->n_depths; i++)
        if (!(p->depths[i] >= 0 && p->depths[i] <= 100))
            return mtok_err(MTOK_EUSAGE, "niah: depth %g is outside 0..100", p->depths[i]);
    if (p->all_depths && p->n_depths > MAX_NEEDLES)
        return mtok_err(MTOK_EUSAGE, "niah: --all-depths takes at most %d depths", MAX_NEEDLES);
    for (size_t i = 0; p->all_depths && i < p->n_variants; i++)
        if (p->variants[i] != MEV_SINGLE)
            return mtok_err(MTOK_EUSAGE, "niah: --all-depths runs the single variant only");
    return 0;
}

/* The output directory, the needle mode (fact tokens or text), the chat special tokens, the runner. */
static int run_init(run *R, mtok_session *s, const mtok_tokenizer *t, const mev_niah_params *p) {
    *R = (run){.s = s, .t = t, .p = p, .fd = -1};
    int rc = mev_mkdir_p(p->out_dir);
    if (rc) return rc;
    mev_needle_ids_find(t, &R->nid);
    R->facts = p->needle_mode < 0 ? R->nid.is_needle : p->needle_mode;
    if (R->facts && !R->nid.is_needle)
        return mtok_err(MTOK_EUSAGE, "niah: --needle facts needs the needle model (mtok synth --preset needle)");
    R->gmask = mtok_token_special(t, "[gMASK]"), R->sop = mtok_token_special(t, "<sop>");
    R->user = mtok_token_special(t, "<|user|>"), R->assistant = mtok_token_special(t, "<|assistant|>");
    if (R->gmask < 0 || R->sop < 0 || R->user < 0 || R->assistant < 0)
        return mtok_err(MTOK_EINPUT, "niah: the tokenizer lacks the GLM-4 chat special tokens");
    R->rn = (mev_runner){.s = s, .t = t, .interrupted = p->interrupted};
    return 0;
}

static void run_free(run *R) {
    if (R->fd >= 0) close(R->fd);
    mev_niah_results_free(R->prev);
    haystack_free(&R->h);
    mev_runner_free(&R->rn);
    mtok_ids_free(&R->ctx);
    mtok_ids_free(&R->full);
    for (int i = 0; i < MAX_NEEDLES; i++) mtok_ids_free(&R->q[i]);
    mev_eta_free(&R->eta);
    free(R->out);
    free(R->res_path);
}

/* Opens results.jsonl for appending: emptied for a new run; with --resume every valid cell stays
 * (R->prev) and lines that are not cells are dropped (their cells run again) through a rewrite that
 * leaves the old file or the new one after a crash, never less. */
static int results_open(run *R) {
    const mev_niah_params *p = R->p;
    int rc;
    if (p->resume) {
        if ((rc = mev_niah_results_read(R->res_path, &R->prev))) return rc;
        if (!R->prev->n && R->prev->skipped > R->prev->torn)
            return mtok_err(MTOK_EINPUT, "%s: no line is a niah cell: refusing to overwrite it (use another --out)",
                            R->res_path);
        if (R->prev->rewrite && (rc = mev_rewrite_lines(R->res_path, R->prev->kept, R->prev->n))) return rc;
    }
    R->fd = open(R->res_path, O_WRONLY | O_CREAT | O_APPEND | (p->resume ? 0 : O_TRUNC), 0644);
    if (R->fd < 0) return mtok_err(mev_errno_code(errno), "%s: %s", R->res_path, strerror(errno));
    return 0;
}

/* The depth indexes from deep to shallow (stable for equal depths), so that consecutive cells share
 * the haystack before their needles. NULL: out of memory. */
static size_t *depth_order(const mev_niah_params *p) {
    size_t *dord = malloc(p->n_depths * sizeof *dord);
    if (!dord) return NULL;
    for (size_t i = 0; i < p->n_depths; i++) dord[i] = i;
    for (size_t a = 1; a < p->n_depths; a++)
        for (size_t b = a; b > 0 && p->depths[dord[b]] > p->depths[dord[b - 1]]; b--) {
            size_t tmp = dord[b];
            dord[b] = dord[b - 1], dord[b - 1] = tmp;
        }
    return dord;
}

/* The depths of a unit still to run (their indexes into todo; all-depths: indexes of p->depths); with
 * sum, a cell already in results.jsonl (--resume) is counted as skipped and done. */
static int unit_todo(run *R, int64_t L, double D, const char *vname, int *todo, mev_niah_summary *sum) {
    const mev_niah_params *p = R->p;
    const int all = p->all_depths;
    int n_todo = 0;
    for (size_t k = 0; k < (all ? p->n_depths : 1); k++) {
        double Dk = all ? p->depths[k] : D;
        int skip = 0;
        for (size_t j = 0; j < mev_niah_results_count(R->prev) && !skip; j++)
            skip = cell_key_eq(R->prev->kept[j].o, L, Dk, vname);
        if (skip && sum) {
            sum->skipped++;
            R->n_done++;
        } else if (!skip) {
            todo[n_todo++] = (int)k;
        }
    }
    return n_todo;
}

/* Tokens one answer may generate: --max-new, else one value token per expected value (fact needles)
 * or 16 tokens per 7-digit number (text needles). */
static int64_t answer_tokens(const run *R, const plan *P) {
    const mev_niah_params *p = R->p;
    const int many = P->variant == MEV_MULTIVALUE || P->variant == MEV_MULTIQUERY;
    return p->max_new > 0 ? p->max_new
           : R->facts     ? (P->variant == MEV_MULTIVALUE ? P->n_expected : 1)
                          : 16 * (many ? P->n_expected : 1);
}

/* The lines still to run, in run order, for the time estimate (niah_eta.c): each with the tokens it
 * likely shares with the line before. Units share the haystack before their first needle (the text
 * and template are the same from the start at every length); the questions of an all-depths unit
 * after its first share the whole document. */
static int plan_eta(run *R, const mev_variant *vars, size_t n_vars, const size_t *dord) {
    const mev_niah_params *p = R->p;
    const int all = p->all_depths;
    double prev_at = 0, min_depth = 100;
    for (size_t i = 0; i < p->n_depths; i++) min_depth = fmin(min_depth, p->depths[i]);
    int rc = 0;
    for (size_t vi = 0; vi < n_vars && !rc; vi++)
        for (size_t li = 0; li < p->n_lengths && !rc; li++)
            for (size_t dj = 0; dj < (all ? 1 : p->n_depths) && !rc; dj++) {
                const int64_t L = p->lengths[li];
                const double D = all ? -1 : p->depths[dord[dj]];
                int todo[MAX_NEEDLES];
                const int n_todo = unit_todo(R, L, D, mev_variant_name(vars[vi]), todo, NULL);
                if (!n_todo) continue;
                plan P;
                make_plan(&P, vars[vi], L, D, p->n_extra, p->seed, R->facts, all ? p->depths : NULL, (int)p->n_depths);
                const double at = (all ? min_depth : D) / 100.0 * (double)L;
                const int64_t shared = (int64_t)fmin(at, prev_at), mn = answer_tokens(R, &P);
                prev_at = at;
                for (int i = 0; i < (all ? n_todo : 1) && !rc; i++)
                    rc = mev_eta_plan(&R->eta, L, i == 0 ? shared : L - MEV_ETA_QUESTION_TOKENS,
                                      all || !R->facts ? 1 : P.n_q, mn);
            }
    return rc;
}

/* One line of results.jsonl: questions q0..q1-1 of the unit's prompt fed (prefix reuse) and
 * answered greedily, the answers scored against their needles, the line written (fsynced) and
 * counted in the progress. 1: interrupted during a feed. */
static int run_line(run *R, const plan *P, int q0, int q1, double Dl, mev_niah_summary *sum) {
    const mev_niah_params *p = R->p;
    const int all = p->all_depths;
    const int64_t L = P->length;
    const char *vname = mev_variant_name(P->variant);
    int rc = 0;
    R->rn.prefilled = R->rn.cached = 0;
    R->rn.prefill_s = 0;
    free(R->out);
    R->out = NULL, R->out_len = 0;
    double c0 = mev_now();
    int64_t tokens = 0;
    mtok_kv_stats k0, k1;
    mtok_session_kv_stats(R->s, &k0);
    mev_eta_at(&R->eta, R->line, R->n_done);
    for (int qi = q0; qi < q1 && !rc; qi++) {
        R->full.n = 0;
        if ((R->ctx.n && (rc = mtok_ids_append(&R->full, R->ctx.v, R->ctx.n))) ||
            (R->q[qi].n && (rc = mtok_ids_append(&R->full, R->q[qi].v, R->q[qi].n))))
            break;
        if ((int64_t)R->full.n > tokens) tokens = (int64_t)R->full.n;
        rc = mev_eta_feed(&R->eta, &R->rn, R->full.v, R->full.n);
        if (rc) return rc; /* 1: interrupted */
        const int64_t max_new = answer_tokens(R, P), pos = mtok_session_pos(R->s);
        const double g0 = mev_now();
        rc = mev_greedy(&R->rn, max_new, &R->out, &R->out_len);
        mev_eta_decoded(&R->eta, mtok_session_pos(R->s) - pos, max_new, pos, mev_now() - g0);
    }
    if (rc) return rc;
    const char *refs[MAX_NEEDLES];
    int n_refs = 0;
    for (int k = all ? q0 : 0; k < (all ? q0 + 1 : P->n_expected); k++) refs[n_refs++] = P->expected[k];
    const char *out = R->out ? R->out : "";
    double score = mev_string_match_all(out, refs, (size_t)n_refs);
    double secs = mev_now() - c0;
    json_t *exp = json_array();
    for (int k = 0; k < n_refs; k++) json_array_append_new(exp, json_string(refs[k]));
    json_t *o = json_pack(
        "{s:I, s:I, s:f, s:s, s:s, s:s, s:o, s:s, s:f, s:f, s:I, s:I, s:f, s:I, s:I}", "length", (json_int_t)L,
        "tokens", (json_int_t)tokens, "depth", Dl, "variant", vname, "needle", R->facts ? "facts" : "text", "layout",
        all ? "all-depths" : "cell", "expected", exp, "output", out, "score", score, "seconds", secs,
        "prefill_tokens", (json_int_t)R->rn.prefilled, "cached_tokens", (json_int_t)R->rn.cached, "prefill_tok_s",
        R->rn.prefill_s > 0 ? (double)R->rn.prefilled / R->rn.prefill_s : 0.0, "peak_rss",
        (json_int_t)mev_peak_rss_bytes(), "bytes_spilled",
        (json_int_t)(p->spilled_bytes ? p->spilled_bytes(R->s, p->spilled_user) : 0));
    if (!o) return mtok_err(MTOK_ERESOURCE, "out of memory");
    mtok_session_kv_stats(R->s, &k1);
    kv_fields(o, &k0, &k1);
    rc = append_line(R->fd, R->res_path, o);
    json_decref(o);
    R->score_sum += score;
    sum->done++;
    R->n_done++;
    R->line++;
    mtok_log(2, "niah: %s length %lld (%lld tokens) depth %g: score %.2f, %.1f s, output \"%s\"", vname, (long long)L,
             (long long)tokens, Dl, score, secs, out);
    mev_eta_at(&R->eta, R->line, R->n_done);
    mev_eta_draw(&R->eta, 1);
    return rc;
}

/* One prompt document: a cell (variant, length, depth D), or (--all-depths) one length with a needle
 * at every grid depth, of which those in todo are asked, one line each. 1: interrupted. */
static int run_unit(run *R, mev_variant v, int64_t L, double D, const int *todo, int n_todo, mev_niah_summary *sum) {
    const mev_niah_params *p = R->p;
    const int all = p->all_depths;
    if (p->interrupted && *p->interrupted) return 1;
    plan P;
    make_plan(&P, v, L, D, p->n_extra, p->seed, R->facts, all ? p->depths : NULL, (int)p->n_depths);
    int64_t S;
    int rc = fit(R, &P, &R->ctx, R->q, &S);
    /* normal: every question of the cell feeds one line; all-depths: one line per question */
    for (int i = 0; i < (all ? n_todo : 1) && !rc; i++) {
        const int q0 = all ? todo[i] : 0, q1 = all ? q0 + 1 : P.n_q;
        rc = run_line(R, &P, q0, q1, all ? p->depths[q0] : D, sum);
    }
    return rc;
}

int mev_niah_run(mtok_session *s, const mtok_tokenizer *t, const mev_niah_params *p, mev_niah_summary *sum) {
    memset(sum, 0, sizeof *sum);
    int rc = niah_check(p);
    if (rc) return rc;
    run R;
    if ((rc = run_init(&R, s, t, p))) return rc;
    if (!(R.res_path = mev_niah_path(p->out_dir, "results.jsonl"))) return mtok_err(MTOK_ERESOURCE, "out of memory");
    size_t *dord = NULL;
    if ((rc = haystack_init(&R.h, t, p->haystack_file, p->noise))) goto fail;
    if ((rc = results_open(&R))) goto fail;

    /* the cell order: variants, lengths ascending, depths deep to shallow (shared prefixes) */
    mev_variant vdef = MEV_SINGLE;
    const mev_variant *vars = p->n_variants ? p->variants : &vdef;
    const size_t n_vars = p->n_variants ? p->n_variants : 1;
    if (!(dord = depth_order(p))) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto fail;
    }
    R.t0 = mev_now();
    sum->cells = n_vars * p->n_lengths * p->n_depths;
    mev_eta_init(&R.eta, mtok_session_config(s), mtok_session_chunk(s), p->progress, sum->cells);
    if ((rc = plan_eta(&R, vars, n_vars, dord))) goto fail;
    const int all = p->all_depths;
    for (size_t vi = 0; vi < n_vars && !rc; vi++)
        for (size_t li = 0; li < p->n_lengths && !rc; li++)
            /* a unit is one prompt document: one cell, or (all-depths) one length with every depth */
            for (size_t dj = 0; dj < (all ? 1 : p->n_depths) && !rc; dj++) {
                const int64_t L = p->lengths[li];
                const double D = all ? -1 : p->depths[dord[dj]];
                int todo[MAX_NEEDLES];
                const int n_todo = unit_todo(&R, L, D, mev_variant_name(vars[vi]), todo, sum);
                if (n_todo) rc = run_unit(&R, vars[vi], L, D, todo, n_todo, sum);
            }
    if (rc == 1) { /* interrupted: what is done stays, and the report covers it */
        sum->interrupted = 1;
        rc = 0;
        mev_eta_end(&R.eta);
        mtok_log(1, "niah: interrupted; %s holds the %zu finished cells (--resume continues)", R.res_path,
                 sum->done + sum->skipped);
    }
    mev_eta_at(&R.eta, R.line, R.n_done);
    mev_eta_end(&R.eta);
    sum->mean_score = sum->done ? R.score_sum / (double)sum->done : 0;
    sum->seconds = mev_now() - R.t0;
    if (R.fd >= 0) close(R.fd), R.fd = -1;
    if (!rc) rc = mev_niah_report(p->out_dir, p->title, stdout);
fail:
    free(dord);
    run_free(&R);
    return rc;
}
