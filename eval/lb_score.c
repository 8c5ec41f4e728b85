/* lb_score.c — mtok eval --score DIR: a folder of LongBench prediction files scored and printed as
 * LongBench's own scripts do (docs/EVAL.md §2.4):
 *   - v1 (LongBench/eval.py): every file whose name ends in "jsonl" is the dataset named by its name up
 *     to the first '.'; lines hold pred, answers, all_classes (the file's last line's is used for all,
 *     as eval.py does) and length; a dataset's score is round(100 * sum / n, 2); with LongBench-E
 *     (e = 1) the samples go to the buckets 0-4k (length < 4000), 4-8k (< 8000) and 8k+, each
 *     round(100 * numpy.mean(bucket), 2) (NaN when empty); printed as eval.py's result.json
 *     (json.dump with indent 4; datasets in name order, where eval.py takes the folder's order);
 *   - v2 (result.py): files whose lines hold difficulty and length (short/medium/long) and judge,
 *     printed as its tab-separated table of accuracy x 100 rounded to 1 decimal (a bucket without
 *     samples prints "-", where result.py would stop on a division by zero). */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"
#include "longbench.h"

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

typedef struct {
    char *name;
    int v2;
    double total, bucket_sum[3];
    double *bucket[3];
    size_t nb[3], n;
    /* v2 */
    double acc[6]; /* overall, easy, hard, short, medium, long */
    size_t cnt[6];
} lb_file;

static void print_key(FILE *out, const char *k) {
    json_t *s = json_string(k);
    char *t = s ? json_dumps(s, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
    fputs(t ? t : "\"?\"", out);
    free(t);
    json_decref(s);
}

/* The strings of a JSON list (borrowed), or NULL for null; *bad when it is neither. */
static const char **str_list(json_t *a, size_t *n, int *bad) {
    *n = 0;
    if (!a || json_is_null(a)) return NULL;
    if (!json_is_array(a)) return *bad = 1, NULL;
    const char **v = malloc((json_array_size(a) + 1) * sizeof *v);
    if (!v) return *bad = 2, NULL;
    for (size_t i = 0; i < json_array_size(a); i++)
        if (!(v[(*n)++] = json_string_value(json_array_get(a, i)))) return free(v), *bad = 1, NULL;
    return v;
}

static int v2_line(lb_file *f, json_t *o, const char *path, int64_t line) {
    const char *diff = json_string_value(json_object_get(o, "difficulty"));
    const char *len = json_string_value(json_object_get(o, "length"));
    json_t *judge = json_object_get(o, "judge");
    int acc;
    if (judge && (json_is_boolean(judge) || json_is_integer(judge)))
        acc = json_is_boolean(judge) ? json_is_true(judge) : json_integer_value(judge) != 0;
    else if (!judge) { /* no judge: as pred.py sets it, the letter (pred, else extracted from the
                          * response) against the answer */
        const char *p = json_string_value(json_object_get(o, "pred")), *a = json_string_value(json_object_get(o, "answer"));
        const char *resp = json_string_value(json_object_get(o, "response"));
        char x[2] = {resp && !p ? mev_lb2_extract(resp) : 0, 0};
        if (x[0]) p = x;
        acc = p && a && !strcmp(p, a);
    } else
        return mtok_err(MTOK_EINPUT, "%s:%lld: \"judge\" is not true or false", path, (long long)line);
    if (!diff || !len) return mtok_err(MTOK_EINPUT, "%s:%lld: a LongBench v2 result needs \"difficulty\" and \"length\""
                                       " strings", path, (long long)line);
    int d = !strcmp(diff, "easy") ? 1 : 2, l = !strcmp(len, "short") ? 3 : !strcmp(len, "medium") ? 4 : 5;
    int idx[3] = {0, d, l};
    for (int i = 0; i < 3; i++) f->acc[idx[i]] += acc, f->cnt[idx[i]]++;
    f->n++;
    return 0;
}

/* The message of error rc with "FILE[:LINE]: " before it (copied first: mtok_err writes the buffer
 * mtok_errmsg() reads). */
static int prefix_err(int rc, const char *path, int64_t line) {
    char m[600];
    snprintf(m, sizeof m, "%s", mtok_errmsg());
    return line ? mtok_err(rc, "%s:%lld: %s", path, (long long)line, m) : mtok_err(rc, "%s: %s", path, m);
}

/* Reads and scores one file. */
static int score_file(const mev_lb_score_params *p, const char *dir, lb_file *f, mev_zhseg **zh) {
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, f->name);
    mev_lines L;
    int rc = mev_lines_open(&L, path, NULL);
    json_t **recs = NULL;
    size_t n = 0, cap = 0;
    const char *s;
    size_t len;
    int complete, kind = -1;
    while (!rc && (rc = mev_lines_next(&L, &s, &len, &complete)) == 1) {
        char why[320];
        json_t *o;
        int k = mev_json_line(s, len, &o, why, sizeof why);
        rc = 0;
        if (!k) continue;
        if (k < 0) {
            rc = mtok_err(MTOK_EINPUT, "%s:%lld: %s", path, (long long)L.lineno, why);
            break;
        }
        if (kind < 0) kind = json_object_get(o, "answers") ? 1 : json_object_get(o, "difficulty") ? 2 : 0;
        if (kind == 2) {
            rc = v2_line(f, o, path, L.lineno);
            json_decref(o);
            continue;
        }
        if (kind == 0 || !json_is_string(json_object_get(o, "pred"))) {
            json_decref(o);
            rc = mtok_err(MTOK_EINPUT, "%s:%lld: not a LongBench prediction (\"pred\", \"answers\", \"all_classes\", "
                          "\"length\") nor a LongBench v2 result (\"difficulty\", \"length\", \"judge\")", path,
                          (long long)L.lineno);
            break;
        }
        json_object_set_new(o, "_line", json_integer((json_int_t)L.lineno));
        if (n == cap) {
            json_t **nr = realloc(recs, (cap = cap ? 2 * cap : 64) * sizeof *nr);
            if (!nr) {
                json_decref(o);
                rc = mtok_err(MTOK_ERESOURCE, "out of memory");
                break;
            }
            recs = nr;
        }
        recs[n++] = o;
    }
    mev_lines_close(&L);
    f->v2 = kind == 2;
    if (!rc && kind < 0) rc = mtok_err(MTOK_EINPUT, "%s: no predictions", path);
    if (rc || f->v2) goto out;
    /* v1: the dataset is the name up to its first '.' */
    char *dataset = strndup(f->name, strcspn(f->name, "."));
    int metric = mev_lb_metric_of(dataset);
    if (metric < 0) {
        rc = mtok_err(MTOK_EINPUT, "%s: \"%s\" is none of LongBench's 21 datasets (the file names the dataset, as "
                      "eval.py reads it)", path, dataset ? dataset : "");
        free(dataset);
        goto out;
    }
    if (mev_lb_needs_zh(metric) && !*zh && (rc = mev_zhseg_open(p->jieba_dir, zh))) {
        rc = prefix_err(rc, path, 0);
        free(dataset);
        goto out;
    }
    int bad = 0;
    size_t n_classes = 0, n_ans;
    const char **classes = str_list(json_object_get(recs[n - 1], "all_classes"), &n_classes, &bad);
    mev_lb_ctx c = {*zh, classes, n_classes};
    for (int b = 0; b < 3; b++)
        if (p->e && !(f->bucket[b] = malloc((n + 1) * sizeof(double)))) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        int64_t line = json_integer_value(json_object_get(recs[i], "_line"));
        const char **ans = str_list(json_object_get(recs[i], "answers"), &n_ans, &bad);
        json_t *lj = json_object_get(recs[i], "length");
        if (bad || !ans) {
            rc = bad == 2 ? mtok_err(MTOK_ERESOURCE, "out of memory")
                          : mtok_err(MTOK_EINPUT, "%s:%lld: \"answers\" is not a list of strings%s", path,
                                     (long long)(bad ? line : json_integer_value(json_object_get(recs[n - 1], "_line"))),
                                     bad && i == n - 1 ? " (or \"all_classes\" is neither a list of strings nor null)" : "");
            free(ans);
            break;
        }
        if (p->e && !json_is_number(lj)) {
            free(ans);
            rc = mtok_err(MTOK_EINPUT, "%s:%lld: LongBench-E's buckets need each line's \"length\" (a number)", path,
                          (long long)line);
            break;
        }
        double sc;
        rc = mev_lb_sample_score(dataset, &c, json_string_value(json_object_get(recs[i], "pred")), ans, n_ans, &sc);
        free(ans);
        if (rc) {
            rc = prefix_err(rc, path, line);
            break;
        }
        f->total += sc;
        if (p->e) {
            double l = json_number_value(lj);
            int b = l < 4000 ? 0 : l < 8000 ? 1 : 2;
            f->bucket[b][f->nb[b]++] = sc;
        }
        f->n++;
    }
    free(classes);
    free(dataset);
out:
    for (size_t i = 0; i < n; i++) json_decref(recs[i]);
    free(recs);
    return rc;
}

int mev_lb_score_dir(const mev_lb_score_params *p, FILE *out) {
    DIR *d = opendir(p->dir);
    if (!d) return mtok_err(MTOK_EINPUT, "%s: cannot open the folder", p->dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 5, "jsonl")) continue; /* eval.py: filename.endswith("jsonl") */
        if (n == cap) {
            char **nn = realloc(names, (cap = cap ? 2 * cap : 32) * sizeof *nn);
            if (!nn) break;
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) break;
        n++;
    }
    closedir(d);
    if (!n) {
        free(names);
        return mtok_err(MTOK_EINPUT, "%s: no .jsonl prediction files", p->dir);
    }
    if (n > 1) qsort(names, n, sizeof *names, cmp_name);
    lb_file *f = calloc(n, sizeof *f);
    mev_zhseg *zh = NULL;
    if (!f) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        f[i].name = names[i];
        rc = score_file(p, p->dir, &f[i], &zh);
    }
    size_t n_v1 = 0, n_v2 = 0;
    for (size_t i = 0; i < n && !rc; i++) n_v1 += !f[i].v2, n_v2 += f[i].v2;
    char num[64];
    if (!rc && n_v1) { /* eval.py's result.json */
        fputs("{", out);
        int first = 1;
        for (size_t i = 0; i < n; i++) {
            if (f[i].v2) continue;
            fputs(first ? "\n    " : ",\n    ", out);
            first = 0;
            char *ds = strndup(f[i].name, strcspn(f[i].name, "."));
            print_key(out, ds ? ds : "");
            free(ds);
            fputs(": ", out);
            if (!p->e) {
                mev_py_repr(mev_py_round(100 * f[i].total / (double)f[i].n, 2), num, sizeof num);
                fputs(num, out);
                continue;
            }
            static const char *const bn[3] = {"0-4k", "4-8k", "8k+"};
            fputs("{", out);
            for (int b = 0; b < 3; b++) {
                mev_py_repr(mev_py_round(100 * mev_np_mean(f[i].bucket[b], f[i].nb[b]), 2), num, sizeof num);
                fprintf(out, "%s\n        \"%s\": %s", b ? "," : "", bn[b], num);
            }
            fputs("\n    }", out);
        }
        fputs("\n}\n", out);
    }
    if (!rc && n_v2) { /* v2's result.py */
        fputs("Model\tOverall\tEasy\tHard\tShort\tMedium\tLong\n", out);
        for (size_t i = 0; i < n; i++) {
            if (!f[i].v2) continue;
            char *dot = strrchr(f[i].name, '.');
            fprintf(out, "%.*s", (int)(dot ? dot - f[i].name : (long)strlen(f[i].name)), f[i].name);
            for (int k = 0; k < 6; k++) {
                if (f[i].cnt[k]) mev_py_repr(mev_py_round(100 * f[i].acc[k] / (double)f[i].cnt[k], 1), num, sizeof num);
                else snprintf(num, sizeof num, "-");
                fprintf(out, "\t%s", num);
            }
            fputs("\n", out);
        }
    }
    for (size_t i = 0; i < n; i++) {
        free(names[i]);
        for (int b = 0; f && b < 3; b++) free(f[i].bucket[b]);
    }
    free(names), free(f);
    mev_zhseg_free(zh);
    return rc;
}
