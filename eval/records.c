/* records.c — mtok eval's jsonl inputs: the data file (RULER / LongBench records, or predictions to
 * score) and --resume's predictions, matched to the data's records by key (eval.h).
 *
 * A record's key is its task ("task" or "dataset", may be absent) and its id: "index" (RULER),
 * "_id" (LongBench), else "data_line", the line number mtok eval writes into the prediction of a
 * record that has neither, else (in the data file) its line. Every prediction names the record it
 * belongs to by that key, so a resumed run scores exactly the data's records: a prediction whose
 * key the data lacks, or whose references differ, was made for another data file and is refused
 * rather than scored (a task-per-record table indexed by the predictions once overflowed here). */
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"

static const char *record_problem(json_t *o, int kind, char *buf, size_t cap) {
    static const char *const strs[] = {"input", "context", "answer_prefix", "task", "dataset", "pred"};
    const char *rname = json_object_get(o, "outputs") ? "outputs" : "answers";
    json_t *refs = json_object_get(o, rname);
    if (!refs) return "neither \"outputs\" nor \"answers\" (a list of reference strings)";
    if (!json_is_array(refs)) return snprintf(buf, cap, "\"%s\" is not a list of strings", rname), buf;
    for (size_t i = 0; i < json_array_size(refs); i++)
        if (!json_is_string(json_array_get(refs, i)))
            return snprintf(buf, cap, "\"%s\" item %zu is not a string", rname, i + 1), buf;
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        json_t *v = json_object_get(o, strs[i]);
        if (v && !json_is_string(v)) return snprintf(buf, cap, "\"%s\" is not a string", strs[i]), buf;
    }
    static const char *const ids[] = {"index", "_id"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(o, ids[i]);
        if (v && !json_is_integer(v) && !json_is_string(v))
            return snprintf(buf, cap, "\"%s\" is neither an integer nor a string", ids[i]), buf;
    }
    json_t *dl = json_object_get(o, "data_line");
    if (dl && (!json_is_integer(dl) || json_integer_value(dl) < 1)) return "\"data_line\" is not a line number";
    if (kind == MEV_DATA_RECORDS && !json_object_get(o, "input")) return "no \"input\" string";
    if (kind == MEV_DATA_PREDICTIONS && !json_object_get(o, "pred")) return "no \"pred\" string to score";
    return NULL;
}

static const char *task_field(json_t *o) {
    const char *s = json_string_value(json_object_get(o, "task"));
    return s ? s : json_string_value(json_object_get(o, "dataset"));
}

static json_t *id_field(json_t *o) {
    json_t *k = json_object_get(o, "index");
    return k ? k : json_object_get(o, "_id");
}

char *mev_eval_key(json_t *o, int64_t line) {
    const char *task = task_field(o);
    json_t *k = id_field(o), *dl = json_object_get(o, "data_line");
    char lb[32], *id = k ? json_dumps(k, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    if (k && !id) return NULL;
    if (!k) snprintf(lb, sizeof lb, "#%lld", (long long)(dl ? json_integer_value(dl) : line));
    size_t n = (task ? strlen(task) : 0) + strlen(id ? id : lb) + 2;
    char *key = malloc(n);
    if (key) snprintf(key, n, "%s\037%s", task ? task : "", id ? id : lb);
    free(id);
    return key;
}

void mev_eval_key_text(json_t *o, int64_t line, char *buf, size_t cap) {
    const char *task = task_field(o);
    json_t *k = id_field(o), *dl = json_object_get(o, "data_line");
    char *id = k ? json_dumps(k, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    if (id && strlen(id) > 48) memcpy(id + 44, "...", 4);
    if (id) snprintf(buf, cap, "%s%.64s%s%s %s", task ? "task " : "", task ? task : "", task ? ", " : "",
                     json_object_get(o, "index") ? "index" : "_id", id);
    else snprintf(buf, cap, "%s%.64s%sdata line %lld", task ? "task " : "", task ? task : "", task ? ", " : "",
                  (long long)(dl ? json_integer_value(dl) : line));
    free(id);
}

static uint64_t hash_key(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

size_t mev_eval_data_find(const mev_eval_data *d, const char *key) {
    if (!d->n_slot) return (size_t)-1;
    for (size_t i = hash_key(key) & (d->n_slot - 1);; i = (i + 1) & (d->n_slot - 1)) {
        if (!d->slot[i]) return (size_t)-1;
        if (!strcmp(d->key[d->slot[i] - 1], key)) return d->slot[i] - 1;
    }
}

void mev_eval_data_free(mev_eval_data *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) free(d->key[i]);
    json_decref(d->recs);
    free(d->line), free(d->key), free(d->task), free(d->slot), free(d->file_task), free(d->name);
    free(d);
}
size_t mev_eval_data_count(const mev_eval_data *d) { return d ? d->n : 0; }

static int oom(const char *name) { return mtok_err(MTOK_ERESOURCE, "out of memory reading %s", name); }

/* The key table; a key seen twice is refused (predictions could not tell the two records apart). */
static int index_keys(mev_eval_data *d) {
    size_t ns = 16;
    while (ns < 2 * d->n) ns *= 2;
    if (!(d->slot = calloc(ns, sizeof *d->slot))) return oom(d->name);
    d->n_slot = ns;
    for (size_t r = 0; r < d->n; r++) {
        size_t i = hash_key(d->key[r]) & (ns - 1);
        for (; d->slot[i]; i = (i + 1) & (ns - 1))
            if (!strcmp(d->key[d->slot[i] - 1], d->key[r])) {
                char kt[160];
                mev_eval_key_text(json_array_get(d->recs, r), d->line[r], kt, sizeof kt);
                return mtok_err(MTOK_EINPUT, "%s:%lld: %s repeats line %lld (--resume matches predictions to "
                                "records by task and index or _id, so each record needs its own)", d->name,
                                (long long)d->line[r], kt, (long long)d->line[d->slot[i] - 1]);
            }
        d->slot[i] = r + 1;
    }
    return 0;
}

static int eval_data_lines(mev_lines *L, int kind, mev_eval_data **out) {
    mev_eval_data *d = calloc(1, sizeof *d);
    *out = NULL;
    if (!d || !(d->name = strdup(L->name)) || !(d->recs = json_array())) return mev_eval_data_free(d), oom(L->name);
    d->kind = kind;
    /* RULER names its files after the task: niah_single_1.jsonl */
    const char *b = strrchr(L->name, '/');
    if (!(d->file_task = strdup(b ? b + 1 : L->name))) return mev_eval_data_free(d), oom(L->name);
    size_t fl = strlen(d->file_task);
    if (fl > 6 && !strcmp(d->file_task + fl - 6, ".jsonl")) d->file_task[fl - 6] = 0;
    const char *s;
    size_t n;
    int complete, rc;
    while ((rc = mev_lines_next(L, &s, &n, &complete)) == 1) {
        char why[320], pb[128];
        json_t *o;
        int k = mev_json_line(s, n, &o, why, sizeof why);
        if (k == 0) continue;
        const char *bad = k < 0 ? why : record_problem(o, kind, pb, sizeof pb);
        if (bad) {
            json_decref(o);
            rc = mtok_err(MTOK_EINPUT, "%s:%lld: %s", L->name, (long long)L->lineno, bad);
            break;
        }
        if (d->n == d->cap) {
            size_t c = d->cap ? 2 * d->cap : 64;
            int64_t *nl = realloc(d->line, c * sizeof *nl);
            if (nl) d->line = nl;
            char **nk = nl ? realloc(d->key, c * sizeof *nk) : NULL;
            if (nk) d->key = nk;
            const char **nt = nk ? realloc(d->task, c * sizeof *nt) : NULL;
            if (!nt) {
                json_decref(o);
                rc = oom(L->name);
                break;
            }
            d->task = nt, d->cap = c;
        }
        d->line[d->n] = L->lineno;
        d->task[d->n] = task_field(o) ? task_field(o) : d->file_task;
        d->key[d->n] = kind == MEV_DATA_RECORDS ? mev_eval_key(o, L->lineno) : NULL;
        if ((kind == MEV_DATA_RECORDS && !d->key[d->n]) || json_array_append_new(d->recs, o)) {
            free(d->key[d->n]);
            rc = oom(L->name);
            break;
        }
        d->n++;
    }
    if (!rc && !d->n) rc = mtok_err(MTOK_EINPUT, "%s: no records (one JSON object per line expected)", L->name);
    if (!rc && kind == MEV_DATA_RECORDS) rc = index_keys(d);
    if (rc) return mev_eval_data_free(d), rc;
    *out = d;
    return 0;
}

int mev_eval_data_read(const char *path, int kind, mev_eval_data **out) {
    mev_lines L;
    *out = NULL;
    int rc = mev_lines_open(&L, path, NULL);
    if (!rc) rc = eval_data_lines(&L, kind, out);
    mev_lines_close(&L);
    return rc;
}

int mev_eval_data_parse(const char *name, const void *buf, size_t len, int kind, mev_eval_data **out) {
    mev_lines L;
    mev_lines_buffer(&L, name, buf, len);
    return eval_data_lines(&L, kind, out);
}

/* ---- --resume's predictions -------------------------------------------------------------------- */
void mev_eval_preds_free(mev_eval_preds *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) free(p->kept[i].raw), json_decref(p->kept[i].o);
    free(p->kept), free(p->of), free(p->name);
    free(p);
}
size_t mev_eval_preds_count(const mev_eval_preds *p) { return p ? p->n : 0; }

static json_t *refs_field(json_t *o) {
    json_t *r = json_object_get(o, "outputs");
    return r ? r : json_object_get(o, "answers");
}

static int another_file(const mev_lines *L, const mev_eval_data *d, json_t *o, size_t r, const char *what) {
    char kt[160];
    mev_eval_key_text(o, L->lineno, kt, sizeof kt);
    if (r == (size_t)-1)
        return mtok_err(MTOK_EINPUT, "%s:%lld: a prediction for %s, which %s does not have: the predictions belong to "
                        "another data file (use another --out, or drop --resume to start over)", L->name,
                        (long long)L->lineno, kt, d->name);
    return mtok_err(MTOK_EINPUT, "%s:%lld: the prediction for %s has other %s than %s:%lld: the predictions belong to "
                    "another data file (use another --out, or drop --resume to start over)", L->name,
                    (long long)L->lineno, kt, what, d->name, (long long)d->line[r]);
}

static int eval_preds_lines(mev_lines *L, const mev_eval_data *d, mev_eval_preds **out) {
    mev_eval_preds *p = calloc(1, sizeof *p);
    *out = NULL;
    if (!p || !(p->name = strdup(L->name)) || (d && !(p->of = calloc(d->n + 1, sizeof *p->of))))
        return mev_eval_preds_free(p), oom(L->name);
    p->n_data = d ? d->n : 0;
    const char *s;
    size_t n;
    int complete, rc, warned = 0;
    int64_t first_bad = 0;
    char first_why[320] = "";
    while ((rc = mev_lines_next(L, &s, &n, &complete)) == 1) {
        char why[320], pb[128];
        json_t *o;
        int k = mev_json_line(s, n, &o, why, sizeof why);
        if (k == 0) continue;
        const char *bad = k < 0 ? why : record_problem(o, MEV_DATA_PREDICTIONS, pb, sizeof pb);
        if (!bad && d && !id_field(o) && !json_object_get(o, "data_line"))
            bad = "no \"index\", \"_id\" or \"data_line\" naming its record";
        if (bad) {
            json_decref(o);
            p->rewrite = 1;
            if (!complete && k < 0) {
                mtok_log(1, "%s:%lld: dropping a torn last line (a run killed mid-write); its record runs again",
                         L->name, (long long)L->lineno);
                continue;
            }
            if (!first_bad) first_bad = L->lineno, snprintf(first_why, sizeof first_why, "%s", bad);
            mev_warn_line(&warned, L->name, L->lineno, "skipping a line that is not a prediction (%s); its record "
                          "runs again", bad);
            continue;
        }
        size_t r = (size_t)-1;
        if (d) {
            char *key = mev_eval_key(o, L->lineno);
            if (!key) {
                json_decref(o);
                rc = oom(L->name);
                break;
            }
            r = mev_eval_data_find(d, key);
            free(key);
            json_t *rec = r == (size_t)-1 ? NULL : json_array_get(d->recs, r);
            json_t *in = json_object_get(o, "input");
            rc = !rec                                                 ? another_file(L, d, o, r, "")
                 : !json_equal(refs_field(rec), refs_field(o))        ? another_file(L, d, o, r, "references")
                 : in && !json_equal(in, json_object_get(rec, "input")) ? another_file(L, d, o, r, "input")
                                                                      : 0;
            if (rc) {
                json_decref(o);
                break;
            }
            if (p->of[r]) {
                char kt[160];
                mev_eval_key_text(o, L->lineno, kt, sizeof kt);
                mev_warn_line(&warned, L->name, L->lineno, "a second prediction for %s (the first is on line %lld); "
                              "dropping it", kt, (long long)p->kept[p->of[r] - 1].line);
                json_decref(o);
                p->rewrite = 1;
                continue;
            }
        }
        if ((rc = mev_keep_line(&p->kept, &p->n, &p->cap, s, n, L->lineno, o))) {
            json_decref(o);
            break;
        }
        if (d) p->of[r] = p->n;
        p->rewrite |= !complete; /* appends need the '\n' */
    }
    mev_warn_done(warned, L->name);
    if (!rc && !p->n && first_bad)
        rc = mtok_err(MTOK_EINPUT, "%s:%lld: %s, and no line of this file is a prediction of mtok eval: refusing to "
                      "overwrite it (use another --out)", L->name, (long long)first_bad, first_why);
    if (rc < 0) return mev_eval_preds_free(p), rc;
    *out = p;
    return 0;
}

int mev_eval_preds_read(const char *path, const mev_eval_data *data, mev_eval_preds **out) {
    mev_lines L;
    int missing;
    *out = NULL;
    int rc = mev_lines_open(&L, path, &missing);
    if (!rc) rc = eval_preds_lines(&L, data, out);
    mev_lines_close(&L);
    if (!rc) (*out)->missing = missing;
    return rc;
}

int mev_eval_preds_parse(const char *name, const void *buf, size_t len, const mev_eval_data *data,
                         mev_eval_preds **out) {
    mev_lines L;
    mev_lines_buffer(&L, name, buf, len);
    return eval_preds_lines(&L, data, out);
}
