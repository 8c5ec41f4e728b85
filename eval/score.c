/* score.c — long-context benchmark scoring and the mtok eval loop.
 *
 * Metrics (docs/EVAL.md §1.4, §2): RULER's string_match_all (fraction of the references found
 * in the prediction, case-insensitive substring) and string_match_part (1 if any is found), and the
 * SQuAD-style exact match and token F1 (lower-case, punctuation and articles removed, max over the
 * references) that LongBench's QA tasks use. Task scores are means x 100, like RULER's summary.
 *
 * Input lines: RULER (index, input, outputs, length, answer_prefix) or LongBench (context, input,
 * answers, dataset, _id). Output lines: the record (minus a long context/input) plus `pred` and the
 * sample's score; --resume keeps the predictions already made (eval/records.c matches them to the
 * data's records) and runs the rest. Records that share a context are run one after another, so
 * the session's prefix reuse prefills the document once. */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "jsonl.h"
#include "longbench.h"
#include "ruler.h"

/* ---- metrics ---------------------------------------------------------------------------------- */
/* Hits of refs in pred as RULER counts them: `r.lower() in pred.lower()` with Python's Unicode
 * lower-case mapping (eval/ruler.c), a substring search linear in the prediction's length. */
static double count_hits(const char *pred, const char *const *refs, size_t n, int any) {
    size_t hits = 0;
    return mev_ruler_hits(pred, refs, n, any, &hits) ? 0 : (double)hits;
}

double mev_string_match_all(const char *pred, const char *const *refs, size_t n) {
    return n ? count_hits(pred, refs, n, 0) / (double)n : 0;
}

double mev_string_match_part(const char *pred, const char *const *refs, size_t n) {
    return count_hits(pred, refs, n, 1) > 0 ? 1 : 0;
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
    char *save = NULL;
    for (char *p = strtok_r(t->buf, " \t\n\r\f\v", &save); p; p = strtok_r(NULL, " \t\n\r\f\v", &save))
        if (strcmp(p, "a") && strcmp(p, "an") && strcmp(p, "the")) t->tok[t->n++] = p;
    return 0;
}
static void toks_free(toks *t) {
    free(t->buf);
    free(t->tok);
}
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

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
    /* the multiset intersection by merging sorted tokens: n log n, however long the prediction */
    qsort(p.tok, p.n, sizeof *p.tok, cmp_str);
    for (size_t r = 0; r < n; r++) {
        toks q;
        if (normalize(refs[r], &q) || !p.n || !q.n) {
            toks_free(&q);
            continue;
        }
        qsort(q.tok, q.n, sizeof *q.tok, cmp_str);
        size_t common = 0;
        for (size_t i = 0, j = 0; i < p.n && j < q.n;) {
            int c = strcmp(p.tok[i], q.tok[j]);
            if (!c) common++, i++, j++;
            else if (c < 0) i++;
            else j++;
        }
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
    const char *name;
    int ruler;   /* RULER (outputs) or LongBench (answers) */
    char metric[24];
    size_t n, nulls;
    double sum_all, sum_part, sum_em, sum_f1;
    int lb;        /* a LongBench v1 dataset: scored with its own metric (eval/longbench.c) */
    double sum_lb;
    int v2;        /* LongBench v2 multiple choice: accuracy (judge) */
    double sum_v2;
} task_stat;

static const char *metric_for(const char *task, int ruler, const char *forced) {
    if (forced) return forced;
    if (!ruler) return "f1";
    mev_ruler_task rt;
    if (mev_ruler_task_find(task, &rt)) return rt.metric;
    return !strncmp(task, "qa", 2) ? "part" : "all";
}

/* The references of a record (the reader checked: a list of strings); *refs is malloc'ed. */
static int refs_of(json_t *rec, int *ruler, const char ***refs, size_t *n) {
    json_t *a = json_object_get(rec, "outputs");
    *ruler = a != NULL;
    if (!a) a = json_object_get(rec, "answers");
    *n = json_array_size(a);
    if (!(*refs = malloc((*n + 1) * sizeof **refs))) return mtok_err(MTOK_ERESOURCE, "out of memory");
    for (size_t i = 0; i < *n; i++) {
        const char *v = json_string_value(json_array_get(a, i));
        (*refs)[i] = v ? v : "";
    }
    return 0;
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
    const int templated = mev_ruler_has_template(content);
    if (templated) { /* RULER's chatglm-chat data: fed as it is, its markers read as special tokens */
        rc = mtok_tokenize(t, content, strlen(content), 1, ids);
    } else if (p->special) {
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
    if (!rc && prefix && *prefix) rc = mtok_tokenize(t, prefix, strlen(prefix), p->special || templated, ids);
    free(content);
    return rc;
}

static int cmp_ctx(const void *a, const void *b) {
    const size_t *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0]) - (x[0] < y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

/* The predictions file, opened for appends: kept lines of a resumed run stay (rewritten through a
 * temporary file and a rename when lines were dropped, so a crash here loses none of them). */
static int open_out(const mev_eval_params *p, const mev_eval_preds *prev, FILE **out) {
    struct stat a, b;
    if (!stat(p->data, &a) && !stat(p->out, &b) && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        return mtok_err(MTOK_EUSAGE, "--out %s is the --data file", p->out);
    int rc = prev && prev->rewrite ? mev_rewrite_lines(p->out, prev->kept, prev->n) : 0;
    if (rc) return rc;
    *out = fopen(p->out, prev && !prev->missing ? "a" : "w");
    if (!*out) return mtok_err(mev_errno_code(errno), "%s: %s", p->out, strerror(errno));
    return 0;
}

/* LongBench v2: whether prediction o is right, as result.py reads it (judge, else its letter, else the
 * letter of its response, against the record's answer). */
static int v2_correct(json_t *rec, json_t *o) {
    json_t *judge = json_object_get(o, "judge");
    if (json_is_boolean(judge)) return json_is_true(judge);
    const char *p = json_string_value(json_object_get(o, "pred")), *a = json_string_value(json_object_get(rec, "answer"));
    const char *resp = json_string_value(json_object_get(o, "response"));
    char x[2] = {resp && !p ? mev_lb2_extract(resp) : 0, 0};
    if (x[0]) p = x;
    return p && a && !strcmp(p, a);
}

static int is_v2_rec(json_t *rec) {
    return !json_object_get(rec, "outputs") && !json_object_get(rec, "answers") &&
           json_is_string(json_object_get(rec, "answer"));
}

/* Adds record rec's prediction (the line o) to its task's sums. */
static int score_one(const mev_eval_params *p, mev_zhseg **zh, json_t *rec, const char *task, json_t *o,
                     task_stat *ts, size_t *n_ts) {
    const char **refs;
    size_t nr, j;
    const char *pred = json_string_value(json_object_get(o, "pred"));
    if (!pred) pred = "";
    int ruler, rc = refs_of(rec, &ruler, &refs, &nr);
    if (rc) return rc;
    for (j = 0; j < *n_ts && strcmp(ts[j].name, task); j++) {}
    if (j == *n_ts) {
        ts[j].name = task;
        ts[j].v2 = is_v2_rec(rec);
        if (ts[j].v2) snprintf(ts[j].metric, sizeof ts[j].metric, "accuracy");
        ts[j].ruler = ruler;
        ts[j].lb = !ruler && !ts[j].v2 && !p->metric && mev_lb_metric_of(task) >= 0;
        if (!ts[j].v2)
            snprintf(ts[j].metric, sizeof ts[j].metric, "%s",
                     ts[j].lb ? mev_lb_metric_name(mev_lb_metric_of(task)) : metric_for(task, ruler, p->metric));
        (*n_ts)++;
    }
    task_stat *st = &ts[j];
    if (st->v2) {
        st->n++;
        st->sum_v2 += v2_correct(rec, o);
        return free(refs), 0;
    }
    if (st->lb) { /* LongBench's metric on the raw prediction (eval.py strips nothing else) */
        int metric = mev_lb_metric_of(task), rc = 0, bad = 0;
        if (mev_lb_needs_zh(metric) && !*zh) rc = mev_zhseg_open(p->jieba_dir, zh); /* once per run */
        json_t *cl = json_object_get(rec, "all_classes");
        size_t nc = json_array_size(cl);
        const char **classes = cl && json_is_array(cl) ? malloc((nc + 1) * sizeof *classes) : NULL;
        for (size_t k = 0; classes && k < nc; k++) bad |= !(classes[k] = json_string_value(json_array_get(cl, k)));
        mev_lb_ctx c = {*zh, bad ? NULL : classes, bad ? 0 : nc};
        double sc = 0;
        if (!rc) rc = mev_lb_sample_score(task, &c, pred, refs, nr, &sc);
        free(classes);
        st->sum_lb += sc;
        if (rc) return free(refs), rc;
    }
    /* RULER's postprocess_pred: strip, control characters as newlines, strip */
    char *pp;
    size_t ppl;
    if ((rc = mev_ruler_postprocess(pred, strlen(pred), &pp, &ppl))) return free(refs), rc;
    st->n++;
    st->nulls += ppl == 0;
    st->sum_all += mev_string_match_all(pp, refs, nr);
    st->sum_part += mev_string_match_part(pp, refs, nr);
    st->sum_em += mev_exact_match(pp, refs, nr);
    st->sum_f1 += mev_token_f1(pp, refs, nr);
    free(pp);
    free(refs);
    return 0;
}

static void print_report(FILE *report, const task_stat *ts, size_t n_ts, size_t done, size_t total) {
    if (done < total)
        fprintf(report, "interrupted: %zu of %zu records predicted; the scores below cover those (--resume "
                "continues)\n", done, total);
    fprintf(report, "%-24s %6s %7s %18s %18s %12s %10s\n", "task", "n", "metric", "string_match_all",
            "string_match_part", "exact_match", "token_f1");
    for (size_t j = 0; j < n_ts; j++) {
        const task_stat *st = &ts[j];
        double d = st->n ? 100.0 / (double)st->n : 0;
        if (st->v2) { /* multiple choice: accuracy only (result.py's table: --score DIR) */
            fprintf(report, "%-24s %6zu %7s %18s %18s %12s %10s  accuracy %.1f\n", st->name, st->n, "choice", "-", "-",
                    "-", "-", mev_py_round(st->sum_v2 * d, 1));
            continue;
        }
        /* RULER's columns rounded as its evaluate.py rounds them */
        const double all = st->ruler ? mev_ruler_score(st->sum_all, st->n) : st->sum_all * d;
        const double part = st->ruler ? mev_ruler_score(st->sum_part, st->n) : st->sum_part * d;
        fprintf(report, "%-24s %6zu %7s %18.2f %18.2f %12.2f %10.2f\n", st->name, st->n, st->metric, all, part,
                st->sum_em * d, st->sum_f1 * d);
    }
    for (size_t j = 0; j < n_ts; j++) {
        const task_stat *st = &ts[j];
        double d = st->n ? 100.0 / (double)st->n : 0;
        if (st->v2) {
            json_t *o = json_pack("{s:s, s:I, s:s, s:f}", "task", st->name, "n", (json_int_t)st->n, "metric", st->metric,
                                  "score", mev_py_round(st->sum_v2 * d, 1));
            char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) : NULL;
            if (line) fprintf(report, "score %s\n", line);
            free(line);
            json_decref(o);
            continue;
        }
        double score = st->lb ? st->sum_lb : !strcmp(st->metric, "all") ? st->sum_all
                       : !strcmp(st->metric, "part") ? st->sum_part
                       : !strcmp(st->metric, "em")  ? st->sum_em
                                                    : st->sum_f1;
        json_t *o = json_pack("{s:s, s:I, s:I, s:s, s:f, s:f, s:f, s:f, s:f}", "task", st->name, "n",
                              (json_int_t)st->n, "nulls", (json_int_t)st->nulls, "metric", st->metric, "score",
                              st->lb ? mev_py_round(100 * st->sum_lb / (double)st->n, 2)
                              : st->ruler && (!strcmp(st->metric, "all") || !strcmp(st->metric, "part"))
                                  ? mev_ruler_score(score, st->n) : score * d,
                              "string_match_all", st->sum_all * d, "string_match_part",
                              st->sum_part * d, "exact_match", st->sum_em * d, "token_f1", st->sum_f1 * d);
        char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) : NULL;
        if (line) fprintf(report, "score %s\n", line);
        free(line);
        json_decref(o);
    }
}

/* Record i prompted as mtok does without --prompts (build_prompt), answered greedily: *o its line.
 * 1 when interrupted. */
static int predict_plain(const mev_eval_params *p, mev_runner *rn, const mev_eval_data *d, size_t i, mtok_ids *ids,
                         json_t **o, int64_t *fed) {
    json_t *rec = json_array_get(d->recs, i);
    if (is_v2_rec(rec))
        return mtok_err(MTOK_EINPUT, "%s:%lld: a LongBench v2 record: give --prompts with LongBench's prompts/ folder",
                        p->data, (long long)d->line[i]);
    int rc = build_prompt(p, rn->t, rec, ids);
    if (!rc) rc = mev_feed(rn, ids->v, ids->n);
    if (rc) return rc;
    *fed = (int64_t)ids->n;
    char *text = NULL;
    size_t plen = 0;
    mev_ruler_task rt;
    const int ruler_rec = json_object_get(rec, "outputs") != NULL;
    /* RULER: the task's tokens_to_generate (its synthetic.yaml task, named by the data's folder) */
    int64_t max_new = p->max_new > 0 ? p->max_new
                      : ruler_rec      ? (mev_ruler_task_find(d->task[i], &rt) ? rt.tokens_to_generate : 128)
                                       : 64;
    if ((rc = mev_greedy(rn, max_new, &text, &plen))) return free(text), rc;
    *o = ruler_rec ? mev_ruler_prediction(rec, text, d->line[i]) : json_deep_copy(rec);
    if (*o) {
        json_object_del(*o, "context");
        json_object_set_new(*o, "data_line", json_integer((json_int_t)d->line[i]));
        if (!ruler_rec) json_object_set_new(*o, "pred", json_string(text ? text : ""));
    }
    free(text);
    return *o ? 0 : mtok_err(MTOK_ERESOURCE, "out of memory");
}

int mev_eval_run(mtok_session *s, const mtok_tokenizer *t, const mev_eval_params *p, int score_only, FILE *report) {
    mev_eval_data *d = NULL;
    mev_eval_preds *prev = NULL;
    task_stat *ts = NULL;
    size_t n_ts = 0, n_run = 0, n_prev = 0;
    FILE *out = NULL;
    mev_runner rn = {.s = s, .t = t, .interrupted = p->interrupted};
    mev_zhseg *zh = NULL; /* jieba's data, loaded by the first Chinese LongBench record */
    mtok_ids ids = {0};
    size_t (*order)[2] = NULL;
    json_t **pred = NULL, *made = json_array();
    mev_lb_gen *lbg = NULL; /* --prompts: LongBench's own prompting (eval/lb_prompt.c) */
    FILE *dump = NULL;
    int rc = mev_eval_data_read(p->data, score_only ? MEV_DATA_PREDICTIONS : MEV_DATA_RECORDS, &d);
    if (rc) goto done;
    if (!score_only && p->prompts && (rc = mev_lb_gen_open(p->prompts, p->maxlen, p->cot, &lbg))) goto done;
    if (!score_only && p->dump_prompts && !(dump = fopen(p->dump_prompts, p->resume ? "a" : "w"))) {
        rc = mtok_err(mev_errno_code(errno), "--dump-prompts %s: %s", p->dump_prompts, strerror(errno));
        goto done;
    }
    const mev_lb_gen_opts lbo = {.max_length = p->max_length, .max_new = p->max_new, .dump = dump};
    const size_t n = d->n;
    if (!score_only) {
        if (!p->out) {
            rc = mtok_err(MTOK_EUSAGE, "eval: no predictions file (--out)");
            goto done;
        }
        if (p->resume && (rc = mev_eval_preds_read(p->out, d, &prev))) goto done;
        if ((rc = open_out(p, prev, &out))) goto done;
    }
    ts = calloc(n + 1, sizeof *ts);
    order = malloc((n + 1) * sizeof *order);
    pred = calloc(n + 1, sizeof *pred); /* record i's prediction (borrowed), NULL while it has none */
    if (!ts || !order || !pred || !made) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *rec = json_array_get(d->recs, i);
        if (score_only) pred[i] = rec;
        else if (prev && prev->of[i]) pred[i] = prev->kept[prev->of[i] - 1].o, n_prev++;
    }
    if (prev && !prev->missing)
        mtok_log(1, "eval: %s holds predictions for %zu of the %zu records of %s; running the other %zu", p->out,
                 n_prev, n, p->data, n - n_prev);
    /* group records by context (stable), so a shared document is prefilled once */
    for (size_t i = 0; i < n; i++) {
        const char *c = json_string_value(json_object_get(json_array_get(d->recs, i), "context"));
        size_t h = 0;
        for (const char *q = c; q && *q; q++) h = h * 1315423911u + (unsigned char)*q;
        order[i][0] = c ? h : 0;
        order[i][1] = i;
    }
    qsort(order, n, sizeof *order, cmp_ctx);
    /* progress over the records this run computes (resumed ones are not work), with an ETA */
    size_t n_todo = 0;
    for (size_t i = 0; i < n; i++) n_todo += !pred[i];
    mtok_progress pg;
    mtok_progress_begin(&pg, "eval", "records", (int64_t)n_todo, p->progress && !score_only ? p->progress_s : -1);
    for (size_t k = 0; k < n && !rc && !score_only; k++) {
        size_t i = order[k][1];
        json_t *rec = json_array_get(d->recs, i);
        if (pred[i]) continue;
        if (p->interrupted && *p->interrupted) break;
        json_t *o = NULL;
        int64_t fed = 0;
        /* --prompts: pred.py's prompt, truncation, decoding and line; else mtok's own */
        rc = lbg ? mev_lb_predict(lbg, &lbo, &rn, rec, d->task[i], d->line[i], &o, &fed)
                 : predict_plain(p, &rn, d, i, &ids, &o, &fed);
        if (rc == 1) rc = 0;
        if (rc || !o) break;
        /* every prediction names its record's line: --resume matches it by line and content */
        json_object_set_new(o, "data_line", json_integer((json_int_t)d->line[i]));
        json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)fed));
        char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!line || fprintf(out, "%s\n", line) < 0 || fflush(out))
            rc = mtok_err(line ? mev_errno_code(errno) : MTOK_ERESOURCE, "%s: write failed: %s", p->out,
                          line ? strerror(errno) : "out of memory");
        free(line);
        if (json_array_append_new(made, o) && !rc) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        pred[i] = o;
        n_run++;
        mtok_progress_note(&pg, "%s, %lld prompt tokens", d->task[i] ? d->task[i] : "-", (long long)fed);
        mtok_progress_add(&pg, 1);
    }
    mtok_progress_end(&pg);
    if (!score_only) mtok_log(2, "eval: %zu records run, %zu kept from %s", n_run, n_prev, p->out);
    /* per-task scores over every record predicted (by this run or a resumed one), in data order */
    for (size_t i = 0; i < n && !rc; i++) {
        if (pred[i]) rc = score_one(p, &zh, json_array_get(d->recs, i), d->task[i], pred[i], ts, &n_ts);
    }
    if (!rc && report) print_report(report, ts, n_ts, score_only ? n : n_prev + n_run, n);
done:
    mev_zhseg_free(zh);
    mev_lb_gen_free(lbg);
    if (dump && fclose(dump) && !rc) rc = mtok_err(mev_errno_code(errno), "%s: write failed", p->dump_prompts);
    if (out && fclose(out) && !rc) rc = mtok_err(mev_errno_code(errno), "%s: write failed: %s", p->out, strerror(errno));
    mev_eval_data_free(d);
    mev_eval_preds_free(prev);
    json_decref(made);
    free(pred);
    free(ts);
    free(order);
    mtok_ids_free(&ids);
    mev_runner_free(&rn);
    return rc;
}
