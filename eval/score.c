/* score.c — long-context benchmark scoring and the mtok eval loop.
 *
 * Metrics (eval-harnesses.md §2.7, §3.1): RULER's string_match_all (fraction of the references found
 * in the prediction, case-insensitive substring) and string_match_part (1 if any is found), and the
 * SQuAD-style exact match and token F1 (lower-case, punctuation and articles removed, max over the
 * references) that LongBench's QA tasks use. Task scores are means x 100, like RULER's summary.
 *
 * Input lines: RULER (index, input, outputs, length, answer_prefix) or LongBench (context, input,
 * answers, dataset, _id). Output lines: the record (minus a long context/input) plus `pred` and the
 * sample's score; --resume skips indexes already in the output. Records that share a context are
 * run one after another, so the session's prefix reuse prefills the document once. */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

/* ---- metrics ---------------------------------------------------------------------------------- */
static int contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    if (!n) return 1;
    for (const char *h = hay; *h; h++) {
        size_t i = 0;
        while (i < n && h[i] && tolower((unsigned char)h[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return 1;
    }
    return 0;
}

double mev_string_match_all(const char *pred, const char *const *refs, size_t n) {
    if (!n) return 0;
    double hit = 0;
    for (size_t i = 0; i < n; i++) hit += contains_ci(pred, refs[i]);
    return hit / (double)n;
}

double mev_string_match_part(const char *pred, const char *const *refs, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (contains_ci(pred, refs[i])) return 1;
    return 0;
}

/* SQuAD normalisation into tokens: lower-case, punctuation dropped, articles dropped. */
typedef struct {
    char *buf;
    char **tok;
    size_t n;
} toks;
static int normalize(const char *s, toks *t) {
    size_t n = strlen(s);
    t->buf = malloc(n + 1);
    t->tok = malloc((n / 2 + 2) * sizeof *t->tok);
    t->n = 0;
    if (!t->buf || !t->tok) return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 128 && ispunct(c)) continue;
        t->buf[o++] = (char)(c < 128 ? tolower(c) : c);
    }
    t->buf[o] = 0;
    for (char *p = strtok(t->buf, " \t\n\r\f\v"); p; p = strtok(NULL, " \t\n\r\f\v"))
        if (strcmp(p, "a") && strcmp(p, "an") && strcmp(p, "the")) t->tok[t->n++] = p;
    return 0;
}
static void toks_free(toks *t) {
    free(t->buf);
    free(t->tok);
}

double mev_exact_match(const char *pred, const char *const *refs, size_t n) {
    toks p;
    double best = 0;
    if (normalize(pred, &p)) return toks_free(&p), 0;
    for (size_t r = 0; r < n && best < 1; r++) {
        toks q;
        if (!normalize(refs[r], &q) && q.n == p.n) {
            size_t i = 0;
            while (i < p.n && !strcmp(p.tok[i], q.tok[i])) i++;
            if (i == p.n) best = 1;
        }
        toks_free(&q);
    }
    toks_free(&p);
    return best;
}

double mev_token_f1(const char *pred, const char *const *refs, size_t n) {
    toks p;
    double best = 0;
    if (normalize(pred, &p)) return toks_free(&p), 0;
    for (size_t r = 0; r < n; r++) {
        toks q;
        if (normalize(refs[r], &q) || !p.n || !q.n) {
            toks_free(&q);
            continue;
        }
        /* multiset intersection */
        char *used = calloc(q.n, 1);
        size_t common = 0;
        for (size_t i = 0; used && i < p.n; i++)
            for (size_t j = 0; j < q.n; j++)
                if (!used[j] && !strcmp(p.tok[i], q.tok[j])) {
                    used[j] = 1;
                    common++;
                    break;
                }
        free(used);
        if (common) {
            double prec = (double)common / (double)p.n, rec = (double)common / (double)q.n;
            double f1 = 2 * prec * rec / (prec + rec);
            if (f1 > best) best = f1;
        }
        toks_free(&q);
    }
    toks_free(&p);
    return best;
}

/* ---- the eval loop ---------------------------------------------------------------------------- */
typedef struct {
    char name[128];
    int ruler;   /* RULER (outputs) or LongBench (answers) */
    char metric[8];
    size_t n, nulls;
    double sum_all, sum_part, sum_em, sum_f1;
} task_stat;

static const char *metric_for(const char *task, int ruler, const char *forced) {
    if (forced) return forced;
    if (!ruler) return "f1";
    return !strncmp(task, "qa", 2) ? "part" : "all";
}

static int refs_of(json_t *rec, int *ruler, const char **refs, size_t cap, size_t *n) {
    json_t *a = json_object_get(rec, "outputs");
    *ruler = a != NULL;
    if (!a) a = json_object_get(rec, "answers");
    if (!json_is_array(a)) return -1;
    *n = 0;
    for (size_t i = 0; i < json_array_size(a) && *n < cap; i++)
        if (json_is_string(json_array_get(a, i))) refs[(*n)++] = json_string_value(json_array_get(a, i));
    return 0;
}

static char *index_key(json_t *rec, size_t line) {
    json_t *k = json_object_get(rec, "index");
    if (!k) k = json_object_get(rec, "_id");
    if (k) return json_dumps(k, JSON_ENCODE_ANY | JSON_COMPACT);
    char *s = malloc(32);
    if (s) snprintf(s, 32, "%zu", line);
    return s;
}

static int read_jsonl(const char *path, json_t **out, int missing_ok) {
    *out = json_array();
    FILE *f = fopen(path, "r");
    if (!f) return missing_ok && errno == ENOENT ? 0 : mtok_err(MTOK_EINPUT, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lineno = 0, rc = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        lineno++;
        size_t k = (size_t)n;
        while (k && isspace((unsigned char)line[k - 1])) k--;
        if (!k) continue;
        json_error_t je;
        json_t *o = json_loadb(line, k, 0, &je);
        if (!json_is_object(o)) {
            json_decref(o);
            if (missing_ok) break; /* our own output: a torn last line from a killed run */
            rc = mtok_err(MTOK_EINPUT, "%s:%d: not a JSON object: %s", path, lineno, je.text);
            break;
        }
        json_array_append_new(*out, o);
    }
    free(line);
    fclose(f);
    return rc;
}

static int build_prompt(const mev_eval_params *p, const mtok_tokenizer *t, json_t *rec, mtok_ids *ids) {
    const char *input = json_string_value(json_object_get(rec, "input"));
    const char *ctx = json_string_value(json_object_get(rec, "context"));
    const char *prefix = json_string_value(json_object_get(rec, "answer_prefix"));
    if (!input) return mtok_err(MTOK_EINPUT, "%s: a record has no \"input\" string", p->data);
    size_t n = strlen(input) + (ctx ? strlen(ctx) + 2 : 0);
    char *content = malloc(n + 1);
    if (!content) return mtok_err(MTOK_ERESOURCE, "out of memory");
    if (ctx) snprintf(content, n + 1, "%s\n\n%s", ctx, input);
    else memcpy(content, input, n + 1);
    int rc;
    ids->n = 0;
    if (p->special) {
        /* the chat template, with special-token strings in the data read as their ids */
        int32_t head[3] = {mtok_token_special(t, "[gMASK]"), mtok_token_special(t, "<sop>"),
                           mtok_token_special(t, "<|user|>")};
        int32_t asst = mtok_token_special(t, "<|assistant|>");
        rc = head[0] < 0 || head[1] < 0 || head[2] < 0 || asst < 0
                 ? mtok_err(MTOK_EINPUT, "the tokenizer lacks the GLM-4 chat special tokens")
                 : mtok_ids_append(ids, head, 3);
        if (!rc) rc = mtok_tokenize(t, "\n", 1, 0, ids);
        if (!rc) rc = mtok_tokenize(t, content, strlen(content), 1, ids);
        if (!rc) rc = mtok_ids_push(ids, asst);
    } else {
        mtok_message msg = {"user", NULL, content, NULL};
        rc = mtok_chat_encode(t, &msg, 1, 1, ids);
    }
    if (!rc && prefix && *prefix) rc = mtok_tokenize(t, prefix, strlen(prefix), p->special, ids);
    free(content);
    return rc;
}

/* The record's task or dataset field, else the file name without directory and .jsonl (RULER
 * names its files after the task: niah_single_1.jsonl). */
static void task_of(json_t *rec, const char *data, char *out, size_t cap) {
    const char *s = json_string_value(json_object_get(rec, "task"));
    if (!s) s = json_string_value(json_object_get(rec, "dataset"));
    if (s) {
        snprintf(out, cap, "%s", s);
        return;
    }
    const char *b = strrchr(data, '/');
    snprintf(out, cap, "%s", b ? b + 1 : data);
    size_t n = strlen(out);
    if (n > 6 && !strcmp(out + n - 6, ".jsonl")) out[n - 6] = 0;
}

static int cmp_ctx(const void *a, const void *b) {
    const size_t *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0]) - (x[0] < y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

int mev_eval_run(mtok_session *s, const mtok_tokenizer *t, const mev_eval_params *p, int score_only, FILE *report) {
    json_t *data = NULL, *prev = NULL;
    task_stat *ts = NULL;
    size_t n_ts = 0;
    FILE *out = NULL;
    mev_runner rn = {.s = s, .t = t, .interrupted = p->interrupted};
    mtok_ids ids = {0};
    size_t (*order)[2] = NULL;
    int rc = read_jsonl(p->data, &data, 0);
    if (rc) goto done;
    size_t n = json_array_size(data);
    if (!score_only) {
        if (p->resume && (rc = read_jsonl(p->out, &prev, 1))) goto done;
        /* rewritten from the lines that parsed, so a line torn by a killed run is dropped */
        out = fopen(p->out, "w");
        if (!out) {
            rc = mtok_err(MTOK_ERESOURCE, "%s: %s", p->out, strerror(errno));
            goto done;
        }
        for (size_t k = 0; k < json_array_size(prev) && !rc; k++) {
            char *line = json_dumps(json_array_get(prev, k), JSON_COMPACT | JSON_PRESERVE_ORDER);
            if (!line || fprintf(out, "%s\n", line) < 0) rc = mtok_err(MTOK_ERESOURCE, "%s: write failed", p->out);
            free(line);
        }
        if (!rc && fflush(out)) rc = mtok_err(MTOK_ERESOURCE, "%s: write failed", p->out);
        if (rc) goto done;
    }
    ts = calloc(n + 1, sizeof *ts);
    order = malloc((n + 1) * sizeof *order);
    if (!ts || !order) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto done;
    }
    /* group records by context (stable), so a shared document is prefilled once */
    for (size_t i = 0; i < n; i++) {
        const char *c = json_string_value(json_object_get(json_array_get(data, i), "context"));
        size_t h = 0;
        for (const char *q = c; q && *q; q++) h = h * 1315423911u + (unsigned char)*q;
        order[i][0] = c ? h : 0;
        order[i][1] = i;
    }
    qsort(order, n, sizeof *order, cmp_ctx);
    /* scores of the records a previous run already predicted */
    json_t *scored = json_array();
    for (size_t k = 0; k < json_array_size(prev); k++) json_array_append(scored, json_array_get(prev, k));
    for (size_t k = 0; k < n && !rc; k++) {
        size_t i = order[k][1];
        json_t *rec = json_array_get(data, i);
        const char *refs[64];
        size_t nr;
        int ruler;
        if (refs_of(rec, &ruler, refs, 64, &nr)) {
            rc = mtok_err(MTOK_EINPUT, "%s: record %zu has neither \"outputs\" nor \"answers\" (a list)", p->data, i + 1);
            break;
        }
        if (score_only) {
            if (!json_is_string(json_object_get(rec, "pred"))) {
                rc = mtok_err(MTOK_EINPUT, "%s: record %zu has no \"pred\" string to score", p->data, i + 1);
                break;
            }
            json_array_append(scored, rec);
            continue;
        }
        char *key = index_key(rec, i);
        int skip = 0;
        for (size_t j = 0; key && j < json_array_size(prev) && !skip; j++) {
            char *k2 = index_key(json_array_get(prev, j), (size_t)-1);
            skip = k2 && !strcmp(k2, key);
            free(k2);
        }
        free(key);
        if (skip) continue;
        if (p->interrupted && *p->interrupted) break;
        if ((rc = build_prompt(p, t, rec, &ids))) break;
        rc = mev_feed(&rn, ids.v, ids.n);
        if (rc == 1) {
            rc = 0;
            break;
        }
        char *pred = NULL;
        size_t plen = 0;
        int64_t max_new = p->max_new > 0 ? p->max_new : ruler ? 128 : 64;
        if (!rc) rc = mev_greedy(&rn, max_new, &pred, &plen);
        if (rc) {
            free(pred);
            break;
        }
        json_t *o = json_deep_copy(rec);
        json_object_del(o, "context");
        const char *in = json_string_value(json_object_get(o, "input"));
        if (in && strlen(in) > 4096) json_object_del(o, "input");
        json_object_set_new(o, "pred", json_string(pred ? pred : ""));
        json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)ids.n));
        free(pred);
        char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!line || fprintf(out, "%s\n", line) < 0 || fflush(out)) rc = mtok_err(MTOK_ERESOURCE, "%s: write failed", p->out);
        free(line);
        json_array_append_new(scored, o);
    }
    /* per-task scores over everything predicted (this run and a resumed one) */
    for (size_t k = 0; k < json_array_size(scored) && !rc; k++) {
        json_t *rec = json_array_get(scored, k);
        const char *refs[64];
        size_t nr;
        int ruler;
        if (refs_of(rec, &ruler, refs, 64, &nr)) continue;
        const char *pred = json_string_value(json_object_get(rec, "pred"));
        if (!pred) pred = "";
        char task[128];
        task_of(rec, p->data, task, sizeof task);
        size_t j;
        for (j = 0; j < n_ts && strcmp(ts[j].name, task); j++) {}
        if (j == n_ts) {
            snprintf(ts[n_ts].name, sizeof ts[n_ts].name, "%s", task);
            ts[n_ts].ruler = ruler;
            snprintf(ts[n_ts].metric, sizeof ts[n_ts].metric, "%s", metric_for(task, ruler, p->metric));
            n_ts++;
        }
        task_stat *st = &ts[j];
        /* RULER post-processing: strip, control characters as newlines */
        char *pp = strdup(pred);
        if (!pp) {
            rc = mtok_err(MTOK_ERESOURCE, "out of memory");
            break;
        }
        for (char *c = pp; *c; c++)
            if ((unsigned char)*c < 0x20) *c = '\n';
        st->n++;
        st->nulls += strspn(pp, " \n") == strlen(pp);
        st->sum_all += mev_string_match_all(pp, refs, nr);
        st->sum_part += mev_string_match_part(pp, refs, nr);
        st->sum_em += mev_exact_match(pp, refs, nr);
        st->sum_f1 += mev_token_f1(pp, refs, nr);
        free(pp);
    }
    json_decref(scored);
    if (!rc && report) {
        fprintf(report, "%-24s %6s %7s %18s %18s %12s %10s\n", "task", "n", "metric", "string_match_all",
                "string_match_part", "exact_match", "token_f1");
        for (size_t j = 0; j < n_ts; j++) {
            const task_stat *st = &ts[j];
            double d = st->n ? 100.0 / (double)st->n : 0;
            fprintf(report, "%-24s %6zu %7s %18.2f %18.2f %12.2f %10.2f\n", st->name, st->n, st->metric,
                    st->sum_all * d, st->sum_part * d, st->sum_em * d, st->sum_f1 * d);
        }
        for (size_t j = 0; j < n_ts; j++) {
            const task_stat *st = &ts[j];
            double d = st->n ? 100.0 / (double)st->n : 0;
            double score = !strcmp(st->metric, "all") ? st->sum_all : !strcmp(st->metric, "part") ? st->sum_part
                           : !strcmp(st->metric, "em")  ? st->sum_em
                                                        : st->sum_f1;
            json_t *o = json_pack("{s:s, s:I, s:I, s:s, s:f, s:f, s:f, s:f, s:f}", "task", st->name, "n",
                                  (json_int_t)st->n, "nulls", (json_int_t)st->nulls, "metric", st->metric, "score",
                                  score * d, "string_match_all", st->sum_all * d, "string_match_part",
                                  st->sum_part * d, "exact_match", st->sum_em * d, "token_f1", st->sum_f1 * d);
            char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
            if (line) fprintf(report, "score %s\n", line);
            free(line);
            json_decref(o);
        }
    }
done:
    if (out) fclose(out);
    json_decref(data);
    json_decref(prev);
    free(ts);
    free(order);
    mtok_ids_free(&ids);
    mev_runner_free(&rn);
    return rc;
}
