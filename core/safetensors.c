/* safetensors.c — open, validate and mmap a safetensors checkpoint (one file or an index + shards).
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
 * then the data area; data_offsets [begin, end) are relative to the data area. Everything in the
 * header is untrusted: every offset is checked against the file before any pointer is formed, so a
 * truncated or lying file fails here with a one-line message instead of faulting in a kernel later.
 *
 * The result is a tensor table sorted by name (used by the loader to bind weights and to fingerprint
 * the model) plus the mapped shards, which the model owns. Tensor data is never copied. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strdup, O_CLOEXEC under -std=c11 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <xxhash.h>

#include "safetensors.h"

#define MAX_HEADER ((uint64_t)100 << 20) /* real headers are tens of kB; anything huge is garbage */
#define MAX_DIMS 8
#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

typedef struct {
    char *name;
    mtok_dtype dtype;
    int ndim;
    int64_t shape[MAX_DIMS];
    uint64_t begin, end; /* relative to the shard's data area */
    int shard;
    int used; /* bound by the loader; the rest is reported as unknown */
} st_tensor;

struct mtok_ckpt {
    char *dir;
    const mtok_shard *shards;
    st_tensor *t;
    int64_t n, cap;
    uint64_t bound_bytes;
};


static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* ---- one shard: map it ---- */

static int shard_map(mtok_shard *s) {
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mtok_err(MTOK_EINPUT, "%s: cannot open (%s)", s->path, strerror(errno));
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) != 0) {
        rc = mtok_err(MTOK_EINPUT, "%s: cannot stat (%s)", s->path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = mtok_err(MTOK_EINPUT, "%s: not a regular file", s->path);
        goto out;
    }
    if (sb.st_size < 8) {
        rc = mtok_err(MTOK_EINPUT, "%s: file is %lld bytes, too short for a safetensors header", s->path,
                      (long long)sb.st_size);
        goto out;
    }
    s->size = (size_t)sb.st_size;
    void *map = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = mtok_err(MTOK_ERESOURCE, "%s: mmap of %zu bytes failed (%s)", s->path, s->size, strerror(errno));
        goto out;
    }
    s->map = map;
out:
    close(fd);
    return rc;
}

void mtok_shards_free(mtok_shard *s, int n) {
    if (!s) return;
    for (int i = 0; i < n; i++) {
        if (s[i].map) munmap(s[i].map, s[i].size);
        free(s[i].path);
    }
    free(s);
}

/* ---- one shard: parse and validate its header into the table ---- */

static int parse_dtype(const char *s, mtok_dtype *dt) {
    if (!strcmp(s, "BF16")) return *dt = MTOK_BF16, 0;
    if (!strcmp(s, "F16")) return *dt = MTOK_F16, 0;
    if (!strcmp(s, "F32")) return *dt = MTOK_F32, 0;
    return -1;
}

static void fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

/* Reads one header entry into t (name already set). */
static int parse_entry(const char *file, uint64_t data_size, json_t *v, st_tensor *t) {
    const char *name = t->name;
    if (!json_is_object(v)) return mtok_err(MTOK_EINPUT, "%s: tensor %s: header entry is not an object", file, name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd)) return mtok_err(MTOK_EINPUT, "%s: tensor %s: 'dtype' missing or not a string", file, name);
    if (!json_is_array(js)) return mtok_err(MTOK_EINPUT, "%s: tensor %s: 'shape' missing or not a list", file, name);
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return mtok_err(MTOK_EINPUT, "%s: tensor %s: 'data_offsets' must be a list of two integers", file, name);
    if (parse_dtype(json_string_value(jd), &t->dtype))
        return mtok_err(MTOK_EINPUT, "%s: tensor %s has dtype %s; mtok reads BF16, F16 or F32", file, name,
                        json_string_value(jd));
    if (json_array_size(js) > MAX_DIMS)
        return mtok_err(MTOK_EINPUT, "%s: tensor %s has %zu dimensions (at most %d)", file, name,
                        json_array_size(js), MAX_DIMS);
    t->ndim = (int)json_array_size(js);
    /* element count with overflow check: a lying shape must not wrap around to a plausible size */
    uint64_t count = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(js, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return mtok_err(MTOK_EINPUT, "%s: tensor %s: shape entry %d is not a non-negative integer", file, name, i);
        t->shape[i] = (int64_t)json_integer_value(d);
        if (t->shape[i] && count > UINT64_MAX / 8 / (uint64_t)t->shape[i])
            return mtok_err(MTOK_EINPUT, "%s: tensor %s: shape is impossibly large", file, name);
        count *= (uint64_t)t->shape[i];
    }
    json_int_t b = json_integer_value(json_array_get(jo, 0)), e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b)
        return mtok_err(MTOK_EINPUT, "%s: tensor %s: data_offsets [%lld, %lld] are not an increasing byte range",
                        file, name, (long long)b, (long long)e);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e;
    if (t->end > data_size)
        return mtok_err(MTOK_EINPUT, "%s: tensor %s: data_offsets [%llu, %llu] run past the end of the data "
                        "(%llu bytes; file truncated?)", file, name, (unsigned long long)t->begin,
                        (unsigned long long)t->end, (unsigned long long)data_size);
    uint64_t need = count * mtok_dtype_size(t->dtype);
    if (t->end - t->begin != need) {
        char sh[160];
        fmt_shape(sh, sizeof sh, t->shape, t->ndim);
        return mtok_err(MTOK_EINPUT, "%s: tensor %s: data_offsets [%llu, %llu] span %llu bytes but shape %s of "
                        "%s needs %llu", file, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                        (unsigned long long)(t->end - t->begin), sh, mtok_dtype_name(t->dtype),
                        (unsigned long long)need);
    }
    return 0;
}

static int by_begin(const void *a, const void *b) {
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Two tensors sharing bytes means a corrupt (or hostile) header; empty tensors occupy nothing. */
static int check_overlap(const char *file, st_tensor *t, int64_t n) {
    qsort(t, (size_t)n, sizeof *t, by_begin);
    const st_tensor *prev = NULL;
    for (int64_t i = 0; i < n; i++) {
        if (t[i].begin == t[i].end) continue;
        if (prev && t[i].begin < prev->end)
            return mtok_err(MTOK_EINPUT, "%s: tensors %s and %s overlap (bytes [%llu, %llu) and [%llu, %llu))",
                            file, prev->name, t[i].name, (unsigned long long)prev->begin,
                            (unsigned long long)prev->end, (unsigned long long)t[i].begin,
                            (unsigned long long)t[i].end);
        if (!prev || t[i].end > prev->end) prev = &t[i];
    }
    return 0;
}

static int table_grow(mtok_ckpt *st, int64_t extra) {
    if (st->n + extra <= st->cap) return 0;
    int64_t cap = st->cap ? st->cap : 256;
    while (cap < st->n + extra) cap *= 2;
    st_tensor *t = realloc(st->t, (size_t)cap * sizeof *t);
    if (!t) return mtok_err(MTOK_ERESOURCE, "out of memory for a tensor table of %lld entries", (long long)cap);
    st->t = t;
    st->cap = cap;
    return 0;
}

/* Validates shard si's header, sets its data offset and appends its tensors to the table. */
static int shard_parse(mtok_ckpt *st, mtok_shard *s, int si) {
    const unsigned char *p = s->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > s->size - 8)
        return mtok_err(MTOK_EINPUT, "%s: header length %llu exceeds the file size %zu (truncated, or not "
                        "safetensors)", s->path, (unsigned long long)hlen, s->size);
    if (hlen > MAX_HEADER)
        return mtok_err(MTOK_EINPUT, "%s: header length %llu is over the %llu-byte limit (not safetensors)",
                        s->path, (unsigned long long)hlen, (unsigned long long)MAX_HEADER);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return mtok_err(MTOK_EINPUT, "%s: header is not valid JSON (%s)", s->path, jerr.text);
    int rc = 0;
    int64_t first = st->n;
    if (!json_is_object(root)) {
        rc = mtok_err(MTOK_EINPUT, "%s: header is not a JSON object", s->path);
        goto out;
    }
    if ((rc = table_grow(st, (int64_t)json_object_size(root)))) goto out;
    s->data_off = 8 + (size_t)hlen;
    uint64_t data_size = s->size - s->data_off;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        st_tensor *t = &st->t[st->n];
        memset(t, 0, sizeof *t);
        if (!(t->name = strdup(key))) {
            rc = mtok_err(MTOK_ERESOURCE, "out of memory");
            goto out;
        }
        st->n++; /* counted now so that the name is freed on any error below */
        t->shard = si;
        if ((rc = parse_entry(s->path, data_size, v, t))) goto out;
    }
    rc = check_overlap(s->path, st->t + first, st->n - first);
out:
    json_decref(root);
    return rc;
}

/* ---- the table ---- */

static int by_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static st_tensor *find(const mtok_ckpt *st, const char *name) {
    st_tensor key = {.name = (char *)name};
    return st->n ? bsearch(&key, st->t, (size_t)st->n, sizeof key, by_name) : NULL;
}

/* Sorts by name; a name in two shards is ambiguous. */
static int table_finish(mtok_ckpt *st) {
    if (st->n) qsort(st->t, (size_t)st->n, sizeof *st->t, by_name);
    for (int64_t i = 1; i < st->n; i++)
        if (!strcmp(st->t[i].name, st->t[i - 1].name))
            return mtok_err(MTOK_EINPUT, "%s: tensor %s is stored in both %s and %s", st->dir, st->t[i].name,
                            st->shards[st->t[i - 1].shard].path, st->shards[st->t[i].shard].path);
    return 0;
}

void mtok_ckpt_close(mtok_ckpt *st) {
    if (!st) return;
    for (int64_t i = 0; i < st->n; i++) free(st->t[i].name);
    free(st->t);
    free(st->dir);
    free(st);
}

/* ---- the index of a sharded checkpoint ---- */

static int by_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Reads the index; fills the sorted distinct shard file names. */
static int index_read(const char *ipath, json_t **root_out, const char ***files, int *n_files) {
    json_error_t jerr;
    json_t *root = json_load_file(ipath, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return mtok_err(MTOK_EINPUT, "%s: cannot read the index (line %d: %s)", ipath, jerr.line, jerr.text);
    *root_out = root;
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0)
        return mtok_err(MTOK_EINPUT, "%s: no 'weight_map' object (not a safetensors index)", ipath);
    const char **f = calloc(json_object_size(wm), sizeof *f);
    if (!f) return mtok_err(MTOK_ERESOURCE, "out of memory");
    *files = f;
    int n = 0;
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        const char *s = json_string_value(v);
        /* shards live next to the index; a path here could point anywhere */
        if (!s || !*s || strchr(s, '/'))
            return mtok_err(MTOK_EINPUT, "%s: weight_map entry for %s is not a file name in this directory", ipath,
                            key);
        f[n++] = s; /* borrowed from root */
    }
    qsort(f, (size_t)n, sizeof *f, by_str);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!k || strcmp(f[k - 1], f[i])) f[k++] = f[i];
    *n_files = k;
    return 0;
}

/* Every tensor the index names must be in the shard it names. */
static int index_check(const mtok_ckpt *st, const char *ipath, json_t *root, const char **files, int n_files) {
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(root, "weight_map"), key, v) {
        const char *fname = json_string_value(v);
        const char **hit = bsearch(&fname, files, (size_t)n_files, sizeof *files, by_str);
        int si = (int)(hit - files);
        const st_tensor *t = find(st, key);
        if (!t || t->shard != si)
            return mtok_err(MTOK_EINPUT, "%s: tensor %s is not in this file, but %s maps it here",
                            st->shards[si].path, key, ipath);
    }
    for (int64_t i = 0; i < st->n; i++)
        if (!json_object_get(json_object_get(root, "weight_map"), st->t[i].name))
            mtok_log(2, "%s: tensor %s is not listed in %s", st->shards[st->t[i].shard].path, st->t[i].name, ipath);
    return 0;
}

/* Maps and parses the given files (names relative to dir) into shards + table. */
static int open_files(mtok_ckpt *st, const char *dir, const char **files, int n_files, int from_index,
                      mtok_shard **shards_out) {
    mtok_shard *sh = calloc((size_t)n_files, sizeof *sh);
    if (!sh) return mtok_err(MTOK_ERESOURCE, "out of memory");
    *shards_out = sh;
    st->shards = sh;
    for (int i = 0; i < n_files; i++) {
        if (!(sh[i].path = path_join(dir, files[i]))) return mtok_err(MTOK_ERESOURCE, "out of memory");
        if (from_index && access(sh[i].path, F_OK) != 0)
            return mtok_err(MTOK_EINPUT, "%s: missing shard (listed in %s)", sh[i].path, INDEX_NAME);
        int rc = shard_map(&sh[i]);
        if (rc) return rc;
        int64_t before = st->n;
        if ((rc = shard_parse(st, &sh[i], i))) return rc;
        mtok_log(2, "%s: %lld tensors", sh[i].path, (long long)(st->n - before));
    }
    return 0;
}

int mtok_ckpt_open(const char *dir, mtok_shard **shards, int *n_shards, mtok_ckpt **out) {
    *shards = NULL;
    *n_shards = 0;
    *out = NULL;
    mtok_ckpt *st = calloc(1, sizeof *st);
    char *ipath = path_join(dir, INDEX_NAME), *spath = path_join(dir, SINGLE_NAME);
    json_t *index = NULL;
    const char **files = NULL;
    int n_files = 0, rc = 0;
    mtok_shard *sh = NULL;
    if (!st || !ipath || !spath || !(st->dir = strdup(dir))) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto fail;
    }
    if (access(ipath, F_OK) == 0) { /* the index wins when both exist: it is what HF tools read */
        rc = index_read(ipath, &index, &files, &n_files);
        if (!rc) rc = open_files(st, dir, files, n_files, 1, &sh);
    } else if (access(spath, F_OK) == 0) {
        static const char *single[] = {SINGLE_NAME};
        n_files = 1;
        rc = open_files(st, dir, single, 1, 0, &sh);
    } else {
        rc = mtok_err(MTOK_EINPUT, "%s: no %s or %s (not a safetensors checkpoint directory)", dir, SINGLE_NAME,
                      INDEX_NAME);
    }
    if (rc || (rc = table_finish(st))) goto fail;
    if (index && (rc = index_check(st, ipath, index, files, n_files))) goto fail;
    *shards = sh;
    *n_shards = n_files;
    *out = st;
    sh = NULL;
    st = NULL;
fail:
    mtok_shards_free(sh, n_files);
    mtok_ckpt_close(st);
    free(files);
    json_decref(index);
    free(ipath);
    free(spath);
    return rc;
}

/* ---- what the loader asks ---- */

int mtok_ckpt_has(const mtok_ckpt *st, const char *name) { return find(st, name) != NULL; }

/* Binds name, whose shape must be exactly want[0..nd), as the 2-D view [want[0], product of the rest]
 * (a 1-D tensor as [1, want[0]]). The one place a pointer into a shard is formed. */
int mtok_ckpt_bind_nd(mtok_ckpt *st, const char *name, int nd, const int64_t *want, mk_tensor *out,
                      const char **file) {
    st_tensor *t = find(st, name);
    if (!t) return mtok_err(MTOK_EINPUT, "%s: missing tensor '%s'", st->dir, name);
    const mtok_shard *s = &st->shards[t->shard];
    int ok = nd >= 1 && nd <= MAX_DIMS && t->ndim == nd;
    for (int d = 0; ok && d < nd; d++) ok = t->shape[d] == want[d];
    if (!ok) {
        char got[160], exp[160];
        fmt_shape(got, sizeof got, t->shape, t->ndim);
        fmt_shape(exp, sizeof exp, want, nd >= 1 && nd <= MAX_DIMS ? nd : 0);
        return mtok_err(MTOK_EINPUT, "%s: tensor %s has shape %s, expected %s (from config.json)", s->path, name,
                        got, exp);
    }
    /* the kernels read elements in place: a misaligned start would be undefined behaviour there */
    if ((s->data_off + t->begin) % mtok_dtype_size(t->dtype))
        return mtok_err(MTOK_EINPUT, "%s: tensor %s starts at file byte %llu, not a multiple of its %s element "
                        "size", s->path, name, (unsigned long long)(s->data_off + t->begin),
                        mtok_dtype_name(t->dtype));
    int64_t cols = 1; /* the product fits: parse_entry bounded the element count of every shape */
    for (int d = 1; d < nd; d++) cols *= want[d];
    out->data = (const char *)s->map + s->data_off + t->begin;
    out->dtype = t->dtype;
    out->rows = nd == 1 ? 1 : want[0];
    out->cols = nd == 1 ? want[0] : cols;
    if (file) *file = s->path;
    if (!t->used) st->bound_bytes += t->end - t->begin;
    t->used = 1;
    return 0;
}

/* Binds name as a [rows, cols] tensor (rows == 0: 1-D [cols]); the shape must match exactly. */
int mtok_ckpt_bind(mtok_ckpt *st, const char *name, int64_t rows, int64_t cols, mk_tensor *out, const char **file) {
    const int64_t want[2] = {rows ? rows : cols, cols};
    return mtok_ckpt_bind_nd(st, name, rows ? 2 : 1, want, out, file);
}

uint64_t mtok_ckpt_bound_bytes(const mtok_ckpt *st) { return st->bound_bytes; }

/* Feeds (name, dtype, shape) of every tensor, in name order, to h: the layout, not the data. */
int mtok_ckpt_hash(const mtok_ckpt *st, XXH3_state_t *h) {
    for (int64_t i = 0; i < st->n; i++) {
        const st_tensor *t = &st->t[i];
        uint64_t rec[2 + MAX_DIMS] = {(uint64_t)t->dtype, (uint64_t)t->ndim};
        for (int d = 0; d < t->ndim; d++) rec[2 + d] = (uint64_t)t->shape[d];
        if (XXH3_64bits_update(h, t->name, strlen(t->name) + 1) != XXH_OK ||
            XXH3_64bits_update(h, rec, (size_t)(2 + t->ndim) * sizeof rec[0]) != XXH_OK)
            return mtok_err(MTOK_EINTERNAL, "xxhash update failed");
    }
    return 0;
}

/* Tensors the loader did not bind: reported, not fatal (e.g. extra heads of a fine-tune). */
void mtok_ckpt_log_unused(const mtok_ckpt *st, const char *ignored) {
    for (int64_t i = 0; i < st->n; i++)
        if (!st->t[i].used && !(ignored && !strcmp(st->t[i].name, ignored)))
            mtok_log(2, "%s: ignoring unknown tensor %s", st->shards[st->t[i].shard].path, st->t[i].name);
}
