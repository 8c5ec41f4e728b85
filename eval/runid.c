/* runid.c — a resumable run's identity and its sidecar (runid.h; docs/EVAL.md §3).
 *
 * Why a sidecar and not a header line: the predictions file is read by RULER's evaluate.py and
 * LongBench's eval.py, which take every line for a sample. The sidecar is written before the run
 * appends anything (write to .tmp, fsync, rename), so a results file with content always has one
 * unless an older mtok made it. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "jsonl.h"
#include "runid.h"

void mev_runid_init(mev_runid *id, const char *command) {
    memset(id, 0, sizeof *id);
    mev_runid_set(id, "command", "%s", command ? command : "");
}

int mev_runid_set(mev_runid *id, const char *name, const char *fmt, ...) {
    size_t i = 0;
    while (i < id->n && strcmp(id->f[i].name, name)) i++;
    if (i == MEV_RUNID_MAX) return mtok_err(MTOK_EUSAGE, "run identity: more than %d fields", MEV_RUNID_MAX);
    if (i == id->n) snprintf(id->f[id->n++].name, sizeof id->f[0].name, "%s", name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(id->f[i].value, sizeof id->f[i].value, fmt, ap);
    va_end(ap);
    return 0;
}

int mev_runid_set_file(mev_runid *id, const char *name, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return mtok_err(mev_errno_code(errno), "%s: %s", path, strerror(errno));
    XXH3_state_t *st = XXH3_createState();
    char *buf = malloc(1 << 20);
    int rc = 0;
    if (!st || !buf || XXH3_64bits_reset(st) != XXH_OK) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    size_t k;
    while (!rc && (k = fread(buf, 1, 1 << 20, f)) > 0) XXH3_64bits_update(st, buf, k);
    if (!rc && ferror(f)) rc = mtok_err(MTOK_EINPUT, "%s: read error: %s", path, strerror(errno));
    if (!rc) rc = mev_runid_set(id, name, "xxh3:%016llx", (unsigned long long)XXH3_64bits_digest(st));
    free(buf);
    XXH3_freeState(st);
    fclose(f);
    return rc;
}

int mev_runid_settings(mev_runid *id, const mev_run_settings *s) {
    static const char *const policies[] = {"exact", "window", "topk"};
    int rc = mev_runid_set(id, "model_fingerprint", "%016llx", (unsigned long long)s->model_fingerprint);
    if (!rc) rc = mev_runid_set(id, "device", "%s", s->device ? s->device : "cpu");
    if (!rc) rc = s->ctx ? mev_runid_set(id, "ctx", "%lld", (long long)s->ctx) : mev_runid_set(id, "ctx", "auto");
    if (!rc) rc = mev_runid_set(id, "chunk", "%lld", (long long)s->chunk);
    if (!rc) rc = mev_runid_set(id, "rope_base", "%.17g", s->rope_base);
    if (!rc) rc = mev_runid_set(id, "kv_policy", "%s", s->kv_policy >= 0 && s->kv_policy < 3 ? policies[s->kv_policy]
                                                                                              : "?");
    /* the policy's own knobs only where the policy reads them: an exact run resumes under any --kv-topk */
    if (!rc && s->kv_policy == 2)
        rc = mev_runid_set(id, "kv_topk", "%lld blocks of %lld", (long long)s->kv_topk, (long long)s->kv_block);
    if (!rc && s->kv_policy != 0)
        rc = mev_runid_set(id, "kv_sinks_window", "%lld+%lld", (long long)s->kv_sinks, (long long)s->kv_window);
    if (!rc) rc = mev_runid_set(id, "decoding", "%s", s->decoding ? s->decoding : "greedy");
    if (!rc) rc = mev_runid_set(id, "max_new", "%lld", (long long)s->max_new);
    return rc;
}

char *mev_runid_path(const char *results) {
    size_t n = strlen(results);
    char *p = malloc(n + sizeof ".run.json");
    if (p) memcpy(p, results, n), memcpy(p + n, ".run.json", sizeof ".run.json");
    return p;
}

/* The sidecar, atomically: path.tmp, fsync, rename. */
static int write_sidecar(const mev_runid *id, const char *path) {
    json_t *o = json_object();
    for (size_t i = 0; o && i < id->n; i++)
        if (json_object_set_new(o, id->f[i].name, json_string(id->f[i].value))) json_decref(o), o = NULL;
    char *s = o ? json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    size_t pl = strlen(path);
    char *tmp = s ? malloc(pl + 5) : NULL;
    if (!tmp) return free(s), mtok_err(MTOK_ERESOURCE, "out of memory");
    memcpy(tmp, path, pl), memcpy(tmp + pl, ".tmp", 5);
    int rc = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    size_t n = strlen(s);
    s[n] = '\n'; /* replaces the NUL */
    if (fd < 0 || write(fd, s, n + 1) != (ssize_t)(n + 1) || fsync(fd) != 0)
        rc = mtok_err(mev_errno_code(errno), "%s: %s", tmp, strerror(errno));
    if (fd >= 0) close(fd);
    if (!rc && rename(tmp, path) != 0) rc = mtok_err(mev_errno_code(errno), "%s: %s", path, strerror(errno));
    if (rc) unlink(tmp);
    free(tmp), free(s);
    return rc;
}

/* Every field that differs, as "name: recorded A, this run B; ...", into buf. 0: none. */
static int differences(const mev_runid *id, json_t *rec, char *buf, size_t cap) {
    size_t k = 0, ndiff = 0;
    buf[0] = 0;
#define ADD(...)                                                              \
    do {                                                                      \
        if (k < cap) {                                                        \
            int w = snprintf(buf + k, cap - k, "%s", ndiff++ ? "; " : "");    \
            if (w > 0) k += (size_t)w;                                        \
            if (k < cap && (w = snprintf(buf + k, cap - k, __VA_ARGS__)) > 0) \
                k += (size_t)w;                                               \
        }                                                                     \
    } while (0)
    for (size_t i = 0; i < id->n; i++) {
        json_t *v = json_object_get(rec, id->f[i].name);
        if (!v) ADD("%s: not recorded, this run %s", id->f[i].name, id->f[i].value);
        else if (strcmp(json_string_value(v), id->f[i].value))
            ADD("%s: recorded %s, this run %s", id->f[i].name, json_string_value(v), id->f[i].value);
    }
    const char *name;
    json_t *v;
    json_object_foreach(rec, name, v) {
        size_t i = 0;
        while (i < id->n && strcmp(id->f[i].name, name)) i++;
        if (i == id->n) ADD("%s: recorded %s, not set in this run", name, json_string_value(v));
    }
#undef ADD
    if (k >= cap && cap > 4) memcpy(buf + cap - 4, "...", 4);
    return ndiff > 0;
}

static int has_content(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && st.st_size > 0;
}

int mev_runid_claim(const mev_runid *id, const char *results, int resume) {
    char *side = mev_runid_path(results);
    if (!side) return mtok_err(MTOK_ERESOURCE, "out of memory");
    int rc = 0;
    json_error_t je;
    json_t *rec = resume ? json_load_file(side, 0, &je) : NULL;
    if (resume && !rec && access(side, F_OK) == 0) {
        rc = mtok_err(MTOK_EINPUT, "%s: not a run record (%s); refusing to resume %s", side, je.text, results);
        goto done;
    }
    if (rec) {
        const char *k;
        json_t *v;
        int flat = json_is_object(rec);
        json_object_foreach(rec, k, v) flat &= json_is_string(v);
        char diff[1024];
        if (!flat)
            rc = mtok_err(MTOK_EINPUT, "%s: not a run record (a JSON object of strings); refusing to resume %s", side,
                          results);
        else if (differences(id, rec, diff, sizeof diff))
            rc = mtok_err(MTOK_EINPUT, "%s was made by another run (%s): %s; use another --out, or drop --resume to "
                          "start over", results, side, diff);
        goto done;
    }
    if (resume && has_content(results)) {
        rc = mtok_err(MTOK_EINPUT, "%s has no run record (%s): nothing says which model and options made it, so "
                      "--resume cannot add to it; use another --out, or drop --resume to start over", results, side);
        goto done;
    }
    /* niah's output directory may not exist yet: the sidecar goes in first */
    const char *slash = strrchr(results, '/');
    if (slash && slash != results) {
        char *dir = strndup(results, (size_t)(slash - results));
        rc = dir ? mev_mkdir_p(dir) : mtok_err(MTOK_ERESOURCE, "out of memory");
        free(dir);
    }
    if (!rc) rc = write_sidecar(id, side);
done:
    json_decref(rec);
    free(side);
    return rc;
}
