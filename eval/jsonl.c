/* jsonl.c — the line reader every jsonl file of eval/ goes through, niah's results.jsonl and
 * qa's --questions (eval.h describes what each accepts).
 *
 * A line is read whole (up to MEV_JSONL_MAX_LINE) and handed to jansson with its length, so a NUL
 * byte is a parse error of that line rather than an early end of the file, and no reader ever
 * scans past its buffer. jansson refuses what it cannot hold (integers beyond int64, reals beyond
 * double, nesting beyond 2048, NUL in strings), so a parsed string is a C string and a parsed
 * number is in range; the readers then check every field they use for its type and range. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jsonl.h"

/* The NIAH variants by name: here, below niah.c, because the results reader checks them too. */
static const char *const variant_names[MEV_N_VARIANTS] = {"single", "multikey", "multivalue", "multiquery"};
const char *mev_variant_name(mev_variant v) { return v < MEV_N_VARIANTS ? variant_names[v] : "?"; }
int mev_variant_parse(const char *s, mev_variant *out) {
    for (int v = 0; v < MEV_N_VARIANTS; v++)
        if (!strcmp(s, variant_names[v])) return *out = (mev_variant)v, 0;
    if (!strcmp(s, "multi-key")) return *out = MEV_MULTIKEY, 0;
    if (!strcmp(s, "multi-value")) return *out = MEV_MULTIVALUE, 0;
    if (!strcmp(s, "multi-query")) return *out = MEV_MULTIQUERY, 0;
    return mtok_err(MTOK_EUSAGE, "unknown variant '%s' (single, multikey, multivalue, multiquery)", s);
}


/* ---- lines ------------------------------------------------------------------------------------ */
int mev_lines_open(mev_lines *L, const char *path, int *missing) {
    memset(L, 0, sizeof *L);
    L->name = path;
    if (missing) *missing = 0;
    L->f = fopen(path, "rb");
    if (!L->f) {
        if (missing && errno == ENOENT) return *missing = 1, 0;
        return mtok_err(mev_errno_code(errno), "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fileno(L->f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(L->f);
        L->f = NULL;
        return mtok_err(MTOK_EINPUT, "%s: is a directory, not a jsonl file", path);
    }
    return 0;
}

void mev_lines_buffer(mev_lines *L, const char *name, const void *buf, size_t len) {
    memset(L, 0, sizeof *L);
    L->name = name;
    L->src = buf;
    L->src_len = buf ? len : 0;
}

static int too_long(mev_lines *L) {
    return mtok_err(MTOK_EINPUT, "%s:%lld: a line longer than %zu MiB (one JSON object per line expected)", L->name,
                    (long long)L->lineno + 1, MEV_JSONL_MAX_LINE >> 20);
}

int mev_lines_next(mev_lines *L, const char **s, size_t *n, int *complete) {
    if (!L->f) {
        if (L->src_pos >= L->src_len) return 0;
        const char *p = L->src + L->src_pos;
        size_t rest = L->src_len - L->src_pos;
        const char *nl = memchr(p, '\n', rest);
        size_t k = nl ? (size_t)(nl - p) : rest;
        if (k > MEV_JSONL_MAX_LINE) return too_long(L);
        L->src_pos += k + (nl != NULL);
        L->lineno++;
        *s = p, *n = k, *complete = nl != NULL;
        return 1;
    }
    for (;;) {
        char *nl = L->end > L->scan ? memchr(L->b + L->scan, '\n', L->end - L->scan) : NULL;
        if (nl || (L->eof && L->end > L->start)) {
            size_t stop = nl ? (size_t)(nl - L->b) : L->end;
            if (stop - L->start > MEV_JSONL_MAX_LINE) return too_long(L);
            *s = L->b + L->start, *n = stop - L->start, *complete = nl != NULL;
            L->start = L->scan = nl ? stop + 1 : stop;
            L->lineno++;
            return 1;
        }
        if (L->eof) return 0;
        L->scan = L->end;
        if (L->end - L->start > MEV_JSONL_MAX_LINE) return too_long(L);
        if (L->start) { /* keep only the unfinished line */
            memmove(L->b, L->b + L->start, L->end - L->start);
            L->end -= L->start, L->scan -= L->start, L->start = 0;
        }
        if (L->cap - L->end < (1u << 16)) {
            size_t cap = L->cap ? 2 * L->cap : (size_t)1 << 20;
            if (cap > MEV_JSONL_MAX_LINE + ((size_t)1 << 17)) cap = MEV_JSONL_MAX_LINE + ((size_t)1 << 17);
            char *b = cap > L->cap ? realloc(L->b, cap) : NULL;
            if (!b) return mtok_err(MTOK_ERESOURCE, "%s:%lld: out of memory reading a line", L->name,
                                    (long long)L->lineno + 1);
            L->b = b, L->cap = cap;
        }
        size_t got = fread(L->b + L->end, 1, L->cap - L->end, L->f);
        L->end += got;
        if (!got) {
            if (ferror(L->f)) return mtok_err(MTOK_EINPUT, "%s: read error: %s", L->name, strerror(errno));
            L->eof = 1;
        }
    }
}

void mev_lines_close(mev_lines *L) {
    if (L->f) fclose(L->f);
    free(L->b);
    memset(L, 0, sizeof *L);
}

/* ---- one line, one object --------------------------------------------------------------------- */
int mev_json_line(const char *s, size_t n, json_t **o, char *why, size_t cap) {
    *o = NULL;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\f' || s[n - 1] == '\v'))
        n--;
    size_t lead = 0;
    while (lead < n && (s[lead] == ' ' || s[lead] == '\t' || s[lead] == '\r')) lead++;
    if (lead == n) return 0;
    json_error_t je;
    json_t *j = json_loadb(s, n, 0, &je);
    if (!j) {
        /* jansson quotes the token it stopped at: keep the message one printable line */
        char t[sizeof je.text];
        size_t k = 0;
        for (; je.text[k]; k++) t[k] = (unsigned char)je.text[k] < 0x20 || je.text[k] == 0x7f ? '?' : je.text[k];
        t[k] = 0;
        snprintf(why, cap, "not JSON: %s (column %d)", t, je.column);
        return -1;
    }
    if (!json_is_object(j)) {
        snprintf(why, cap, "a JSON %s, not an object", json_is_array(j) ? "array" : "value");
        json_decref(j);
        return -1;
    }
    *o = j;
    return 1;
}

#define MEV_WARN_MAX 10
void mev_warn_line(int *count, const char *name, int64_t line, const char *fmt, ...) {
    if ((*count)++ >= MEV_WARN_MAX) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mtok_log(1, "warning: %s:%lld: %s", name, (long long)line, msg);
}
void mev_warn_done(int count, const char *name) {
    if (count > MEV_WARN_MAX)
        mtok_log(1, "warning: %s: %d more lines skipped like those", name, count - MEV_WARN_MAX);
}

int mev_errno_code(int e) {
    switch (e) {
    case ENOSPC: case EDQUOT: case EIO: case ENOMEM: case EMFILE: case ENFILE: return MTOK_ERESOURCE;
    default: return MTOK_EINPUT;
    }
}

int mev_rewrite_lines(const char *path, const mev_kept *v, size_t n) {
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) return mtok_err(MTOK_ERESOURCE, "out of memory");
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644), rc = 0;
    if (fd < 0) {
        rc = mtok_err(mev_errno_code(errno), "%s: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    for (size_t i = 0; i < n && !rc; i++)
        for (size_t part = 0; part < 2 && !rc; part++) {
            const char *p = part ? "\n" : v[i].raw;
            size_t k = part ? 1 : v[i].len;
            while (k && !rc) {
                ssize_t w = write(fd, p, k);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) rc = mtok_err(mev_errno_code(w < 0 ? errno : ENOSPC), "%s: write failed: %s", tmp,
                                          strerror(w < 0 ? errno : ENOSPC));
                else p += w, k -= (size_t)w;
            }
        }
    if (!rc && fsync(fd) != 0) rc = mtok_err(mev_errno_code(errno), "%s: %s", tmp, strerror(errno));
    close(fd);
    if (!rc && rename(tmp, path) != 0) rc = mtok_err(mev_errno_code(errno), "%s: %s", path, strerror(errno));
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}

/* ---- niah results.jsonl ----------------------------------------------------------------------- */
/* NULL when o is a cell mev_niah_report and --resume can use, else what is wrong. */
static const char *cell_problem(json_t *o) {
    json_t *l = json_object_get(o, "length"), *d = json_object_get(o, "depth"), *v = json_object_get(o, "variant");
    json_t *sc = json_object_get(o, "score"), *sp = json_object_get(o, "bytes_spilled");
    if (!json_is_integer(l) || json_integer_value(l) < 1 || json_integer_value(l) > ((json_int_t)1 << 40))
        return "\"length\" is not a token count";
    if (!json_is_number(d) || !(json_number_value(d) >= 0 && json_number_value(d) <= 100))
        return "\"depth\" is not a number in 0..100";
    int known = 0;
    for (int k = 0; k < MEV_N_VARIANTS && json_is_string(v); k++)
        known |= !strcmp(json_string_value(v), mev_variant_name((mev_variant)k));
    if (!known) return "\"variant\" is not single, multikey, multivalue or multiquery";
    if (!json_is_number(sc) || !(json_number_value(sc) >= 0 && json_number_value(sc) <= 1))
        return "\"score\" is not a number in 0..1";
    if (sp && (!json_is_integer(sp) || json_integer_value(sp) < 0)) return "\"bytes_spilled\" is not a byte count";
    return NULL;
}

int mev_keep_line(mev_kept **v, size_t *n, size_t *cap, const char *s, size_t len, int64_t line, json_t *o) {
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 64;
        mev_kept *nv = realloc(*v, c * sizeof *nv);
        if (!nv) return mtok_err(MTOK_ERESOURCE, "out of memory");
        *v = nv, *cap = c;
    }
    char *raw = malloc(len + 1);
    if (!raw) return mtok_err(MTOK_ERESOURCE, "out of memory");
    memcpy(raw, s, len);
    raw[len] = 0;
    (*v)[(*n)++] = (mev_kept){raw, len, line, o};
    return 0;
}

void mev_niah_results_free(mev_niah_results *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) free(r->kept[i].raw), json_decref(r->kept[i].o);
    free(r->kept);
    free(r->name);
    free(r);
}
size_t mev_niah_results_count(const mev_niah_results *r) { return r ? r->n : 0; }
size_t mev_niah_results_skipped(const mev_niah_results *r) { return r ? r->skipped : 0; }

static int niah_results_lines(mev_lines *L, mev_niah_results **out) {
    mev_niah_results *r = calloc(1, sizeof *r);
    *out = NULL;
    if (!r || !(r->name = strdup(L->name))) return free(r), mtok_err(MTOK_ERESOURCE, "out of memory");
    const char *s;
    size_t n;
    int complete, rc, warned = 0;
    while ((rc = mev_lines_next(L, &s, &n, &complete)) == 1) {
        char why[320];
        json_t *o;
        int k = mev_json_line(s, n, &o, why, sizeof why);
        if (k == 0) continue;
        const char *bad = k < 0 ? why : cell_problem(o);
        if (bad) {
            json_decref(o);
            r->skipped++, r->rewrite = 1;
            if (!complete && k < 0 && ++r->torn)
                mtok_log(1, "%s:%lld: dropping a torn last line (a run killed mid-write); its cell runs again",
                         L->name, (long long)L->lineno);
            else
                mev_warn_line(&warned, L->name, L->lineno, "skipping a line that is not a niah cell (%s); its cell "
                              "runs again", bad);
            continue;
        }
        if ((rc = mev_keep_line(&r->kept, &r->n, &r->cap, s, n, L->lineno, o))) {
            json_decref(o);
            break;
        }
        r->rewrite |= !complete; /* appends need the '\n' */
    }
    mev_warn_done(warned, L->name);
    if (rc < 0) return mev_niah_results_free(r), rc;
    *out = r;
    return 0;
}

int mev_niah_results_read(const char *path, mev_niah_results **out) {
    mev_lines L;
    int missing;
    *out = NULL;
    int rc = mev_lines_open(&L, path, &missing);
    if (rc) return rc;
    rc = niah_results_lines(&L, out);
    mev_lines_close(&L);
    if (!rc) (*out)->missing = missing;
    return rc;
}

int mev_niah_results_parse(const char *name, const void *buf, size_t len, mev_niah_results **out) {
    mev_lines L;
    mev_lines_buffer(&L, name, buf, len);
    return niah_results_lines(&L, out);
}

/* ---- qa --questions --------------------------------------------------------------------------- */
void mev_questions_free(mev_questions *q) {
    if (!q) return;
    for (size_t i = 0; i < q->n; i++) free(q->v[i].text), free(q->v[i].id_json);
    free(q->v);
    q->v = NULL, q->n = 0;
}

static int questions_lines(mev_lines *L, mev_questions *out) {
    static const char *const fields[] = {"question", "input", "prompt"};
    const char *s;
    size_t n, cap = 0;
    int complete, rc;
    memset(out, 0, sizeof *out);
    while ((rc = mev_lines_next(L, &s, &n, &complete)) == 1) {
        char why[320];
        json_t *o;
        int k = mev_json_line(s, n, &o, why, sizeof why);
        if (k == 0) continue;
        if (k < 0) {
            rc = mtok_err(MTOK_EINPUT, "%s:%lld: %s (one JSON object with a \"question\" string per line)", L->name,
                          (long long)L->lineno, why);
            break;
        }
        json_t *q = NULL;
        const char *field = NULL;
        for (int f = 0; f < 3 && !q; f++) q = json_object_get(o, field = fields[f]);
        if (!json_is_string(q) || !json_string_length(q)) {
            rc = !q ? mtok_err(MTOK_EINPUT, "%s:%lld: expected a JSON object with a \"question\" string", L->name,
                               (long long)L->lineno)
                    : mtok_err(MTOK_EINPUT, "%s:%lld: \"%s\" is %s", L->name, (long long)L->lineno, field,
                               json_is_string(q) ? "empty" : "not a string");
            json_decref(o);
            break;
        }
        if (out->n == cap) {
            size_t c = cap ? 2 * cap : 16;
            mev_question *nv = realloc(out->v, c * sizeof *nv);
            if (!nv) {
                json_decref(o);
                rc = mtok_err(MTOK_ERESOURCE, "out of memory reading %s", L->name);
                break;
            }
            out->v = nv, cap = c;
        }
        json_t *id = json_object_get(o, "id");
        mev_question *mq = &out->v[out->n];
        mq->line = L->lineno;
        mq->text = strdup(json_string_value(q));
        mq->id_json = id ? json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        json_decref(o);
        if (!mq->text || (id && !mq->id_json)) {
            free(mq->text), free(mq->id_json);
            rc = mtok_err(MTOK_ERESOURCE, "out of memory reading %s", L->name);
            break;
        }
        out->n++;
    }
    if (!rc && !out->n) rc = mtok_err(MTOK_EINPUT, "%s: no questions (one JSON object with a \"question\" string per "
                                      "line expected)", L->name);
    if (rc) mev_questions_free(out);
    return rc < 0 ? rc : 0;
}

int mev_questions_read(const char *path, mev_questions *out) {
    mev_lines L;
    memset(out, 0, sizeof *out);
    int rc = mev_lines_open(&L, path, NULL);
    if (rc) return rc;
    rc = questions_lines(&L, out);
    mev_lines_close(&L);
    return rc;
}

int mev_questions_parse(const char *name, const void *buf, size_t len, mev_questions *out) {
    mev_lines L;
    mev_lines_buffer(&L, name, buf, len);
    return questions_lines(&L, out);
}
