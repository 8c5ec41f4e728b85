/* ruler.c — RULER's scoring rules as its Python applies them (ruler.h; docs/EVAL.md §1.4–1.6).
 *
 * RULER compares `r.lower() in pred.lower()` on Python strings. Python's lower() is the full
 * Unicode lower-case mapping (SpecialCasing's unconditional mappings plus the Final_Sigma context),
 * which ICU's root locale implements too; on valid UTF-8 a substring of code points is a substring of
 * bytes, so the comparison runs on the lowered UTF-8 with memmem (linear, however long the
 * prediction). Locale-specific rules (Turkish dotless i, Lithuanian) are not Python's and stay out:
 * the root locale is "". */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unicode/ucasemap.h>
#include <unicode/utf8.h>

#include "jsonl.h"
#include "ruler.h"

static int oom(void) { return mtok_err(MTOK_ERESOURCE, "out of memory"); }

/* ---- post-processing -------------------------------------------------------------------------- */
/* Length in bytes of the Python whitespace character at s[0..n), or 0 (str.isspace: the code points
 * of Unicode's White_Space property plus U+001C..U+001F, which Python counts as separators). */
static size_t py_space(const unsigned char *s, size_t n) {
    if (!n) return 0;
    if ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20)) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n < 3) return 0;
    const unsigned c = (unsigned)(s[0] & 0x0f) << 12 | (unsigned)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    if ((s[0] & 0xf0) != 0xe0 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
    return c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
                   c == 0x205f || c == 0x3000
               ? 3
               : 0;
}

/* [*a, *b) without Python whitespace at either end (a UTF-8 sequence is decoded from its first
 * byte, so the tail is scanned back to the start of each character). */
static void py_strip(const unsigned char *s, size_t *a, size_t *b) {
    size_t k;
    while (*a < *b && (k = py_space(s + *a, *b - *a))) *a += k;
    while (*a < *b) {
        size_t st = *b - 1;
        while (st > *a && (s[st] & 0xc0) == 0x80 && *b - st < 4) st--;
        if (py_space(s + st, *b - st) != *b - st) break;
        *b = st;
    }
}

int mev_ruler_postprocess(const char *pred, size_t len, char **out, size_t *n) {
    const unsigned char *s = (const unsigned char *)pred;
    size_t a = 0, b = len;
    py_strip(s, &a, &b);
    char *d = malloc(b - a + 1);
    if (!d) return *out = NULL, oom();
    for (size_t i = a; i < b; i++) d[i - a] = s[i] < 0x20 ? '\n' : (char)s[i];
    size_t a2 = 0, b2 = b - a;
    py_strip((const unsigned char *)d, &a2, &b2);
    memmove(d, d + a2, b2 - a2);
    d[b2 - a2] = 0;
    *out = d, *n = b2 - a2;
    return 0;
}

/* ---- case folding ----------------------------------------------------------------------------- */
static int valid_utf8(const char *s, size_t n) {
    int32_t i = 0, len = (int32_t)n;
    if ((size_t)len != n) return 0;
    while (i < len) {
        UChar32 c;
        U8_NEXT(s, i, len, c);
        if (c < 0) return 0;
    }
    return 1;
}

int mev_ruler_lower(const char *s, size_t len, char **out, size_t *n) {
    *out = NULL;
    if (len < (size_t)INT32_MAX / 4 && valid_utf8(s, len)) {
        UErrorCode e = U_ZERO_ERROR;
        UCaseMap *cm = ucasemap_open("", 0, &e);
        /* lower case grows text by at most 3x in UTF-8 ("İ", 2 bytes, becomes 3) */
        int32_t cap = (int32_t)(len * 3 + 1);
        char *d = U_SUCCESS(e) ? malloc((size_t)cap) : NULL;
        int32_t k = d ? ucasemap_utf8ToLower(cm, d, cap, s, (int32_t)len, &e) : 0;
        ucasemap_close(cm);
        if (d && U_SUCCESS(e) && k < cap) {
            d[k] = 0;
            *out = d, *n = (size_t)k;
            return 0;
        }
        free(d);
        if (!d) return oom();
        return mtok_err(MTOK_EINTERNAL, "ICU lower-case mapping failed: %s", u_errorName(e));
    }
    char *d = malloc(len + 1);
    if (!d) return oom();
    for (size_t i = 0; i < len; i++) d[i] = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] + 32) : s[i];
    d[len] = 0;
    *out = d, *n = len;
    return 0;
}

int mev_ruler_hits(const char *pred, const char *const *refs, size_t n, int any, size_t *hits) {
    char *p, *r;
    size_t pl, rl;
    *hits = 0;
    int rc = mev_ruler_lower(pred, strlen(pred), &p, &pl);
    for (size_t i = 0; !rc && i < n && !(any && *hits); i++) {
        if ((rc = mev_ruler_lower(refs[i], strlen(refs[i]), &r, &rl))) break;
        *hits += !rl || memmem(p, pl, r, rl) != NULL;
        free(r);
    }
    free(p);
    return rc;
}

double mev_ruler_score(double sum, size_t n) {
    if (!n) return 0;
    /* evaluate.py: round(sum(...) / len(preds) * 100, 2) — the same operations in the same order,
     * then Python's correctly rounded round(), which printf's %.2f reproduces exactly */
    const double v = sum / (double)n * 100;
    char b[64];
    snprintf(b, sizeof b, "%.2f", v);
    return strtod(b, NULL);
}

/* ---- tasks ------------------------------------------------------------------------------------ */
static const struct {
    const char *name, *base;
} yaml_tasks[] = {
    {"niah_single_1", "niah"},    {"niah_single_2", "niah"},   {"niah_single_3", "niah"},
    {"niah_multikey_1", "niah"},  {"niah_multikey_2", "niah"}, {"niah_multikey_3", "niah"},
    {"niah_multivalue", "niah"},  {"niah_multiquery", "niah"}, {"vt", "variable_tracking"},
    {"cwe", "common_words_extraction"}, {"fwe", "freq_words_extraction"}, {"qa_1", "qa"}, {"qa_2", "qa"},
};
static const struct {
    const char *base, *metric;
    int64_t tokens;
} base_tasks[] = {
    {"niah", "all", 128}, {"variable_tracking", "all", 30}, {"common_words_extraction", "all", 120},
    {"freq_words_extraction", "all", 50}, {"qa", "part", 32},
};
#define N_YAML (sizeof yaml_tasks / sizeof *yaml_tasks)
#define N_BASE (sizeof base_tasks / sizeof *base_tasks)

int mev_ruler_task_find(const char *name, mev_ruler_task *t) {
    const char *base = NULL;
    int order = (int)N_YAML;
    for (size_t i = 0; i < N_YAML && !base; i++)
        if (!strcmp(name, yaml_tasks[i].name)) base = yaml_tasks[i].base, order = (int)i;
    for (size_t i = 0; i < N_BASE && !base; i++)
        if (!strcmp(name, base_tasks[i].base)) base = base_tasks[i].base;
    if (!base) return 0;
    for (size_t i = 0; i < N_BASE; i++)
        if (!strcmp(base, base_tasks[i].base)) {
            *t = (mev_ruler_task){name, base, base_tasks[i].metric, base_tasks[i].tokens, order};
            return 1;
        }
    return 0;
}

/* ---- folders ---------------------------------------------------------------------------------- */
static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* 1: a line with "outputs", 0: with "answers", -1: neither in the file's first 64 object lines. */
static int file_kind(const char *path) {
    mev_lines L;
    const char *s;
    size_t n;
    int complete, kind = -1;
    if (mev_lines_open(&L, path, NULL)) return -1;
    for (int k = 0; kind < 0 && k < 64 && mev_lines_next(&L, &s, &n, &complete) == 1; k++) {
        char why[320];
        json_t *o;
        if (mev_json_line(s, n, &o, why, sizeof why) != 1) continue;
        kind = json_object_get(o, "outputs") ? 1 : json_object_get(o, "answers") ? 0 : -1;
        json_decref(o);
    }
    mev_lines_close(&L);
    return kind;
}

int mev_ruler_folder(const char *dir) {
    DIR *dp = opendir(dir);
    if (!dp) return 0;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        size_t l = strlen(e->d_name);
        if (l <= 6 || strcmp(e->d_name + l - 6, ".jsonl")) continue;
        char **nn = n == cap ? realloc(names, (cap = cap ? 2 * cap : 16) * sizeof *nn) : names;
        if (!nn) break;
        names = nn;
        if (!(names[n] = malloc(strlen(dir) + l + 2))) break;
        sprintf(names[n++], "%s/%s", dir, e->d_name);
    }
    closedir(dp);
    if (n > 1) qsort(names, n, sizeof *names, cmp_name);
    int kind = -1;
    for (size_t i = 0; i < n && kind < 0; i++) kind = file_kind(names[i]);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return kind == 1;
}

/* ---- prompts and prediction lines ------------------------------------------------------------- */
int mev_ruler_has_template(const char *input) {
    return input && (strstr(input, "[gMASK]") || (strstr(input, "<|user|>") && strstr(input, "<|assistant|>")));
}

json_t *mev_ruler_prediction(json_t *rec, const char *pred, int64_t data_line) {
    json_t *o = json_object();
    json_t *idx = json_object_get(rec, "index");
    json_t *others = json_object_get(rec, "others"), *trunc = json_object_get(rec, "truncation");
    json_t *len = json_object_get(rec, "length");
    json_t *in = json_object_get(rec, "input"), *refs = json_object_get(rec, "outputs");
    int bad = !o;
    /* call_api.py's fields, in its order; a record without an index gets its sample number (what
     * RULER wrote before its index became an offset), since evaluate.py reads line['index'] */
    bad = bad || json_object_set_new(o, "index", idx ? json_incref(idx) : json_integer((json_int_t)data_line - 1));
    bad = bad || json_object_set_new(o, "pred", json_string(pred ? pred : ""));
    bad = bad || json_object_set_new(o, "input", in ? json_incref(in) : json_string(""));
    bad = bad || json_object_set_new(o, "outputs", refs ? json_incref(refs) : json_array());
    bad = bad || json_object_set_new(o, "others", others ? json_incref(others) : json_object());
    bad = bad || json_object_set_new(o, "truncation", trunc ? json_incref(trunc) : json_integer(-1));
    bad = bad || json_object_set_new(o, "length", len ? json_incref(len) : json_integer(-1));
    const char *k;
    json_t *v;
    json_object_foreach(rec, k, v) {
        if (bad) break;
        if (!strcmp(k, "context") || json_object_get(o, k)) continue;
        bad = json_object_set(o, k, v) != 0;
    }
    bad = bad || json_object_set_new(o, "data_line", json_integer((json_int_t)data_line));
    if (bad) json_decref(o);
    return bad ? NULL : o;
}
