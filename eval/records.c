/* records.c — mtok eval's jsonl inputs: the data file (RULER / LongBench records, or predictions to
 * score: one file, or a folder of RULER's TASK.jsonl prediction files) and --resume's predictions,
 * matched to the data's records (eval.h).
 *
 * A record is known by its line in the data file and its content. Its id key (its task, "task" or
 * "dataset", and "index" (RULER) or "_id" (LongBench), else its line) may repeat: RULER's current
 * generator writes a character offset into "index". mtok eval writes the record's line into every
 * prediction ("data_line"); a prediction belongs to the record on that line when its id key and
 * references (and its input, when it has one) equal the record's. A prediction without data_line
 * (an older mtok) goes to the first record of its id key with the same content that has none yet. A
 * prediction that fits no record was made for another data file and is refused rather than scored
 * (a task-per-record table indexed by the predictions once overflowed here). LongBench v2's records
 * and results carry one "answer" letter in place of a list of references (and "pred" may be null). */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "jsonl.h"
#include "ruler.h"

/* A LongBench v2 record or result: one "answer" letter instead of a list of references. */
static int is_v2(json_t *o) {
    return !json_object_get(o, "outputs") && !json_object_get(o, "answers") && json_is_string(json_object_get(o, "answer"));
}

static const char *record_problem(json_t *o, int kind, char *buf, size_t cap) {
    static const char *const strs[] = {"input", "context", "answer_prefix", "task", "dataset", "pred", "question",
                                       "response"};
    const int v2 = is_v2(o);
    const char *rname = json_object_get(o, "outputs") ? "outputs" : "answers";
    json_t *refs = json_object_get(o, rname);
    if (!refs && !v2)
        return "neither \"outputs\" nor \"answers\" (a list of reference strings), nor a LongBench v2 \"answer\"";
    if (refs && !json_is_array(refs)) return snprintf(buf, cap, "\"%s\" is not a list of strings", rname), buf;
    for (size_t i = 0; i < json_array_size(refs); i++)
        if (!json_is_string(json_array_get(refs, i)))
            return snprintf(buf, cap, "\"%s\" item %zu is not a string", rname, i + 1), buf;
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        json_t *v = json_object_get(o, strs[i]);
        /* v2's pred.py writes None when the response names no letter */
        if (v && !json_is_string(v) && !(v2 && json_is_null(v) && !strcmp(strs[i], "pred")))
            return snprintf(buf, cap, "\"%s\" is not a string", strs[i]), buf;
    }
    json_t *judge = json_object_get(o, "judge");
    if (v2 && judge && !json_is_boolean(judge)) return "\"judge\" is not true or false";
    static const char *const ids[] = {"index", "_id"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(o, ids[i]);
        if (v && !json_is_integer(v) && !json_is_string(v))
            return snprintf(buf, cap, "\"%s\" is neither an integer nor a string", ids[i]), buf;
    }
    json_t *dl = json_object_get(o, "data_line");
    if (dl && (!json_is_integer(dl) || json_integer_value(dl) < 1)) return "\"data_line\" is not a line number";
    if (v2) {
        if (kind == MEV_DATA_RECORDS && !json_object_get(o, "question")) return "a LongBench v2 record without \"question\"";
        if (kind == MEV_DATA_PREDICTIONS && !json_object_get(o, "pred") && !json_object_get(o, "response") && !judge)
            return "a LongBench v2 result without \"pred\", \"response\" or \"judge\"";
        return NULL;
    }
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

size_t mev_eval_data_find(const mev_eval_data *d, const char *key, size_t *cursor) {
    if (!d->n_slot) return (size_t)-1;
    /* the probe sequence of key from its home slot; *cursor counts the slots already looked at */
    for (size_t i = (hash_key(key) + *cursor) & (d->n_slot - 1);; i = (i + 1) & (d->n_slot - 1)) {
        if (!d->slot[i] || *cursor >= d->n_slot) return (size_t)-1;
        ++*cursor;
        if (!strcmp(d->key[d->slot[i] - 1], key)) return d->slot[i] - 1;
    }
}

size_t mev_eval_data_at_line(const mev_eval_data *d, int64_t line) {
    size_t lo = 0, hi = d->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->line[mid] < line) lo = mid + 1;
        else hi = mid;
    }
    return lo < d->n && d->line[lo] == line ? lo : (size_t)-1;
}

void mev_eval_data_free(mev_eval_data *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) free(d->key[i]);
    json_decref(d->recs);
    for (size_t i = 0; i < d->n_owned; i++) free(d->owned[i]);
    free(d->line), free(d->key), free(d->task), free(d->file), free(d->slot), free(d->file_task), free(d->name);
    free(d->owned);
    free(d);
}
size_t mev_eval_data_count(const mev_eval_data *d) { return d ? d->n : 0; }

static int oom(const char *name) { return mtok_err(MTOK_ERESOURCE, "out of memory reading %s", name); }

/* The id key table. Keys may repeat (RULER's index is an offset); the same record twice (every field
 * equal) is refused: a file concatenated to itself would count its samples twice. */
static int index_keys(mev_eval_data *d) {
    size_t ns = 16;
    while (ns < 2 * d->n) ns *= 2;
    if (!(d->slot = calloc(ns, sizeof *d->slot))) return oom(d->name);
    d->n_slot = ns;
    for (size_t r = 0; r < d->n; r++) {
        size_t i = hash_key(d->key[r]) & (ns - 1);
        for (; d->slot[i]; i = (i + 1) & (ns - 1)) {
            size_t o = d->slot[i] - 1;
            if (!strcmp(d->key[o], d->key[r]) && json_equal(json_array_get(d->recs, o), json_array_get(d->recs, r))) {
                char kt[160];
                mev_eval_key_text(json_array_get(d->recs, r), d->line[r], kt, sizeof kt);
                return mtok_err(MTOK_EINPUT, "%s:%lld: %s repeats line %lld field for field (the same record twice "
                                "would count twice)", d->name, (long long)d->line[r], kt, (long long)d->line[o]);
            }
        }
        d->slot[i] = r + 1;
    }
    return 0;
}

static int grow(mev_eval_data *d) {
    size_t c = d->cap ? 2 * d->cap : 64;
    int64_t *nl = realloc(d->line, c * sizeof *nl);
    if (nl) d->line = nl;
    char **nk = nl ? realloc(d->key, c * sizeof *nk) : NULL;
    if (nk) d->key = nk;
    const char **nt = nk ? realloc(d->task, c * sizeof *nt) : NULL;
    if (nt) d->task = nt;
    const char **nf = nt ? realloc(d->file, c * sizeof *nf) : NULL;
    if (!nf) return -1;
    d->file = nf, d->cap = c;
    return 0;
}

/* The records of one file, appended to d; file_task names those without a "task" or "dataset". */
static int add_lines(mev_eval_data *d, mev_lines *L, const char *file, const char *file_task) {
    const char *s;
    size_t n;
    int complete, rc;
    while ((rc = mev_lines_next(L, &s, &n, &complete)) == 1) {
        char why[320], pb[128];
        json_t *o;
        int k = mev_json_line(s, n, &o, why, sizeof why);
        if (k == 0) continue;
        const char *bad = k < 0 ? why : record_problem(o, d->kind, pb, sizeof pb);
        if (bad) {
            json_decref(o);
            return mtok_err(MTOK_EINPUT, "%s:%lld: %s", L->name, (long long)L->lineno, bad);
        }
        if (d->n == d->cap && grow(d)) return json_decref(o), oom(L->name);
        d->line[d->n] = L->lineno;
        d->task[d->n] = task_field(o) ? task_field(o) : file_task;
        d->file[d->n] = file;
        d->key[d->n] = d->kind == MEV_DATA_RECORDS ? mev_eval_key(o, L->lineno) : NULL;
        if ((d->kind == MEV_DATA_RECORDS && !d->key[d->n]) || json_array_append_new(d->recs, o)) {
            free(d->key[d->n]);
            return oom(L->name);
        }
        d->n++;
    }
    return rc;
}

/* The task a file's name gives: NAME.jsonl -> NAME, and RULER's data layout TASK/validation.jsonl
 * (or TASK/test.jsonl, its --subset) -> TASK. */
static char *task_of_path(const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t bl = strlen(b);
    if (bl > 6 && !strcmp(b + bl - 6, ".jsonl")) bl -= 6;
    if ((bl == 10 && !strncmp(b, "validation", 10)) || (bl == 4 && !strncmp(b, "test", 4))) {
        const char *e = b - 1, *a = e;
        while (a > path && a[-1] != '/') a--;
        if (b > path && e > a) return strndup(a, (size_t)(e - a));
    }
    return strndup(b, bl);
}

static mev_eval_data *data_new(const char *name, int kind) {
    mev_eval_data *d = calloc(1, sizeof *d);
    if (!d || !(d->name = strdup(name)) || !(d->recs = json_array())) return mev_eval_data_free(d), NULL;
    d->kind = kind;
    return d;
}

static int eval_data_lines(mev_lines *L, int kind, mev_eval_data **out) {
    mev_eval_data *d = data_new(L->name, kind);
    *out = NULL;
    if (!d || !(d->file_task = task_of_path(L->name))) return mev_eval_data_free(d), oom(L->name);
    int rc = add_lines(d, L, d->name, d->file_task);
    if (!rc && !d->n) rc = mtok_err(MTOK_EINPUT, "%s: no records (one JSON object per line expected)", L->name);
    if (!rc && kind == MEV_DATA_RECORDS) rc = index_keys(d);
    if (rc) return mev_eval_data_free(d), rc;
    *out = d;
    return 0;
}

/* ---- a folder of RULER prediction files (--score DIR) ---------------------------------------- */
typedef struct {
    char *file, *task; /* owned until handed to the data set */
    int chunk;         /* TASK-N.jsonl, a chunk of a split run (call_api.py --chunk_amount) */
    int order;         /* the task's place in RULER's synthetic.yaml; others after, by name */
} pfile;

static int cmp_pfile(const void *a, const void *b) {
    const pfile *x = a, *y = b;
    int c = x->order != y->order ? (x->order > y->order) - (x->order < y->order) : strcmp(x->task, y->task);
    return c ? c : strcmp(x->file, y->file);
}

/* evaluate.py's aggregate_chunk: a file whose name matches .*[^_]+-\d+\.jsonl is a chunk of the task
 * named by what precedes its last '-'. */
static int chunk_task(const char *name, size_t stem) {
    size_t i = stem;
    while (i > 0 && name[i - 1] >= '0' && name[i - 1] <= '9') i--;
    if (i == stem || i < 2 || name[i - 1] != '-' || name[i - 2] == '_') return -1;
    return (int)(i - 1);
}

static int own(mev_eval_data *d, char *s) {
    char **no = realloc(d->owned, (d->n_owned + 1) * sizeof *no);
    if (!no) return free(s), -1;
    d->owned = no, d->owned[d->n_owned++] = s;
    return 0;
}

/* Every TASK.jsonl of dir (chunks TASK-N.jsonl merged in name order, as evaluate.py merges them,
 * in place of a TASK.jsonl), RULER's tasks in synthetic.yaml's order, other names after them. */
static int preds_folder(const char *dir, mev_eval_data **out) {
    DIR *dp = opendir(dir);
    if (!dp) return mtok_err(mev_errno_code(errno), "%s: %s", dir, strerror(errno));
    mev_eval_data *d = data_new(dir, MEV_DATA_PREDICTIONS);
    pfile *v = NULL;
    size_t n = 0, cap = 0;
    int rc = d ? 0 : oom(dir);
    struct dirent *e;
    while (!rc && (e = readdir(dp))) {
        size_t nl = strlen(e->d_name);
        if (nl <= 6 || strcmp(e->d_name + nl - 6, ".jsonl")) continue;
        char *path = malloc(strlen(dir) + nl + 2);
        if (!path) { rc = oom(dir); break; }
        sprintf(path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) { free(path); continue; }
        int c = chunk_task(e->d_name, nl - 6);
        mev_ruler_task t;
        char *task = strndup(e->d_name, c >= 0 ? (size_t)c : nl - 6);
        pfile *nv = n == cap ? realloc(v, (cap = cap ? 2 * cap : 16) * sizeof *v) : v;
        if (!task || !nv) { free(path), free(task), rc = oom(dir); break; }
        v = nv;
        v[n++] = (pfile){path, task, c >= 0, mev_ruler_task_find(task, &t) ? t.order : 1 << 20};
    }
    closedir(dp);
    if (!rc) qsort(v, n, sizeof *v, cmp_pfile);
    for (size_t i = 0; i < n && !rc; i++) {
        int chunked = 0; /* the task has chunk files: they replace its TASK.jsonl */
        for (size_t j = 0; j < n; j++) chunked |= v[j].chunk && !strcmp(v[j].task, v[i].task);
        if (chunked && !v[i].chunk) {
            mtok_log(1, "warning: %s: ignored: the chunk files of task %s replace it (as evaluate.py merges them)",
                     v[i].file, v[i].task);
            continue;
        }
        mev_lines L;
        char *file = strdup(v[i].file), *task = strdup(v[i].task); /* v's stay: later entries compare tasks */
        const int lost = own(d, file) | own(d, task); /* own() frees what it cannot keep */
        if (lost || !file || !task) { rc = oom(dir); break; }
        if (!(rc = mev_lines_open(&L, file, NULL))) rc = add_lines(d, &L, file, task);
        mev_lines_close(&L);
        if (!d->file_task && !(d->file_task = strdup(task))) rc = oom(dir);
    }
    for (size_t i = 0; i < n; i++) free(v[i].file), free(v[i].task);
    free(v);
    if (!rc && !d->n) rc = mtok_err(MTOK_EINPUT, "%s: no predictions (a folder of TASK.jsonl files expected)", dir);
    if (rc) return mev_eval_data_free(d), rc;
    *out = d;
    return 0;
}

int mev_eval_data_read(const char *path, int kind, mev_eval_data **out) {
    mev_lines L;
    *out = NULL;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (kind == MEV_DATA_PREDICTIONS) return preds_folder(path, out);
        return mtok_err(MTOK_EINPUT, "%s: is a directory: --data takes one jsonl file (RULER's TASK/validation.jsonl)",
                        path);
    }
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
    if (!r) r = json_object_get(o, "answers");
    return r ? r : json_object_get(o, "answer"); /* LongBench v2's letter */
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

/* NULL when prediction o has the content of record rec (its references, and its input when it has
 * one), else what differs. */
static const char *content_differs(json_t *o, json_t *rec) {
    json_t *in = json_object_get(o, "input"), *q = json_object_get(o, "question");
    if (!json_equal(refs_field(rec), refs_field(o))) return "references";
    if (in && !json_equal(in, json_object_get(rec, "input"))) return "input";
    if (q && !json_equal(q, json_object_get(rec, "question"))) return "question";
    return NULL;
}

/* The record prediction o (line L->lineno) belongs to, into *r: 0; 1 when that record already has a
 * prediction (warned: o is dropped); < 0 when no record fits (the predictions are another file's). */
static int match(const mev_lines *L, const mev_eval_data *d, const mev_eval_preds *p, json_t *o, size_t *r,
                 int *warned) {
    char *key = mev_eval_key(o, L->lineno);
    if (!key) return oom(L->name);
    json_t *dl = json_object_get(o, "data_line");
    size_t first = (size_t)-1, taken = (size_t)-1, cur = 0, c;
    const char *what = NULL;
    *r = (size_t)-1;
    if (dl) { /* our own line: the record on that line, if its id key and content agree */
        c = mev_eval_data_at_line(d, json_integer_value(dl));
        if (c != (size_t)-1 && !strcmp(d->key[c], key)) {
            first = c;
            if (!(what = content_differs(o, json_array_get(d->recs, c)))) *r = c;
        }
    } else { /* an older line without data_line: the first free record of its id key with its content */
        while (*r == (size_t)-1 && (c = mev_eval_data_find(d, key, &cur)) != (size_t)-1) {
            const char *w = content_differs(o, json_array_get(d->recs, c));
            if (first == (size_t)-1) first = c, what = w;
            if (!w && p->of[c] && taken == (size_t)-1) taken = c;
            if (!w && !p->of[c]) *r = c;
        }
        if (*r == (size_t)-1 && taken != (size_t)-1) *r = taken;
    }
    free(key);
    if (*r == (size_t)-1) return another_file(L, d, o, first, first == (size_t)-1 ? "" : what);
    if (!p->of[*r]) return 0;
    char kt[160];
    mev_eval_key_text(o, L->lineno, kt, sizeof kt);
    mev_warn_line(warned, L->name, L->lineno, "a second prediction for %s (the first is on line %lld); dropping it", kt,
                  (long long)p->kept[p->of[*r] - 1].line);
    return 1;
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
        if (d && (rc = match(L, d, p, o, &r, &warned))) {
            json_decref(o);
            if (rc < 0) break;
            p->rewrite = 1, rc = 0; /* a second prediction for a record: dropped */
            continue;
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
