/* check.c — mtok check: every value of every tensor of a checkpoint tested for NaN and Inf.
 *
 * The structure is checked before this runs: mtok_model_load validates every header entry of every
 * shard (accepted dtype, shape against data_offsets, bounds, overlaps: core/safetensors.c) and binds
 * each tensor the forward pass uses with the shape config.json implies (core/loader.c). What is left
 * is the values. The headers are walked again here, read only (they were validated), so that tensors
 * the loader does not bind are scanned too. NaN and Inf are the values whose exponent bits are all
 * ones in each format, so the scan is integer compares; blocks of 1M elements go to OpenMP threads. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model.h"

#define BLOCK_ELEMS ((uint64_t)1 << 20)
#define FAST_ELEMS 4096 /* elements per OR-reduced pass: a constant trip count, so the loop vectorizes */

typedef struct {
    const char *name; /* borrowed from the shard's parsed header */
    int shard;
    mtok_dtype dtype;
    const unsigned char *data;
    uint64_t n;
    int ndim;
    int64_t cols; /* last dimension, to show a row and column */
} tensor_ref;

typedef struct {
    uint64_t nan, inf;
    int64_t first;
} counts;

/* Exponent mask and sign-free magnitude of each format: magnitude == exp is Inf, above it NaN. */
static uint32_t exp_mask(mtok_dtype dt) { return dt == MTOK_BF16 ? 0x7f80u : dt == MTOK_F16 ? 0x7c00u : 0x7f800000u; }

static uint32_t elem(const unsigned char *d, mtok_dtype dt, uint64_t i) {
    if (dt == MTOK_F32) {
        uint32_t u;
        memcpy(&u, d + 4 * i, 4);
        return u & 0x7fffffffu;
    }
    uint16_t h;
    memcpy(&h, d + 2 * i, 2);
    return h & 0x7fffu;
}

/* Any element of [i0, i0 + FAST_ELEMS) with an all-ones exponent? */
static int block_suspect(const unsigned char *d, mtok_dtype dt, uint64_t i0) {
    uint32_t hit = 0;
    if (dt == MTOK_F32) {
        const unsigned char *p = d + 4 * i0;
        for (int i = 0; i < FAST_ELEMS; i++) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            hit |= (u & 0x7f800000u) == 0x7f800000u;
        }
    } else {
        const uint32_t m = exp_mask(dt);
        const unsigned char *p = d + 2 * i0;
        for (int i = 0; i < FAST_ELEMS; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            hit |= ((uint32_t)h & m) == m;
        }
    }
    return hit != 0;
}

/* Counts NaN and Inf in elements [i0, i1). */
static void count_range(const unsigned char *d, mtok_dtype dt, uint64_t i0, uint64_t i1, counts *c) {
    const uint32_t m = exp_mask(dt);
    for (uint64_t i = i0; i < i1; i++) {
        uint32_t v = elem(d, dt, i);
        if (v < m) continue;
        if (v == m) c->inf++;
        else c->nan++;
        if (c->first < 0) c->first = (int64_t)i;
    }
}

static void scan_block(const tensor_ref *t, uint64_t b, counts *c) {
    uint64_t i0 = b * BLOCK_ELEMS, i1 = i0 + BLOCK_ELEMS < t->n ? i0 + BLOCK_ELEMS : t->n;
    uint64_t i = i0;
    for (; i + FAST_ELEMS <= i1; i += FAST_ELEMS)
        if (block_suspect(t->data, t->dtype, i)) count_range(t->data, t->dtype, i, i + FAST_ELEMS, c);
    count_range(t->data, t->dtype, i, i1, c);
}

static void scan_tensor(const tensor_ref *t, int threads, counts *out) {
    const int64_t nb = (int64_t)((t->n + BLOCK_ELEMS - 1) / BLOCK_ELEMS);
    uint64_t nan = 0, inf = 0;
    int64_t first = INT64_MAX;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(+ : nan, inf) \
    reduction(min : first) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        counts c = {0, 0, -1};
        scan_block(t, (uint64_t)b, &c);
        nan += c.nan;
        inf += c.inf;
        if (c.first >= 0 && c.first < first) first = c.first;
    }
    *out = (counts){nan, inf, first == INT64_MAX ? -1 : first};
}

static int parse_dt(const char *s, mtok_dtype *dt) {
    if (!s) return -1;
    if (!strcmp(s, "BF16")) return *dt = MTOK_BF16, 0;
    if (!strcmp(s, "F16")) return *dt = MTOK_F16, 0;
    if (!strcmp(s, "F32")) return *dt = MTOK_F32, 0;
    return -1;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const tensor_ref *)a)->name, ((const tensor_ref *)b)->name);
}

/* Appends shard si's tensors to *refs (grown as needed). */
static int collect(const mtok_shard *sh, int si, json_t *hdr, tensor_ref **refs, size_t *n, size_t *cap) {
    const char *key;
    json_t *v;
    json_object_foreach(hdr, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        json_t *jo = json_object_get(v, "data_offsets"), *js = json_object_get(v, "shape");
        tensor_ref r = {.name = key, .shard = si, .ndim = (int)json_array_size(js)};
        uint64_t b = (uint64_t)json_integer_value(json_array_get(jo, 0));
        uint64_t e = (uint64_t)json_integer_value(json_array_get(jo, 1));
        /* the loader accepted this entry; anything else here means the file changed since */
        if (parse_dt(json_string_value(json_object_get(v, "dtype")), &r.dtype) || e < b ||
            e > sh->size - sh->data_off)
            return mtok_err(MTOK_EINPUT, "%s: tensor %s: header changed while checking", sh->path, key);
        r.data = (const unsigned char *)sh->map + sh->data_off + b;
        r.n = (e - b) / mtok_dtype_size(r.dtype);
        r.cols = r.ndim >= 2 ? (int64_t)json_integer_value(json_array_get(js, (size_t)r.ndim - 1)) : 0;
        if (*n == *cap) {
            size_t nc = *cap ? 2 * *cap : 256;
            tensor_ref *g = realloc(*refs, nc * sizeof *g);
            if (!g) return mtok_err(MTOK_ERESOURCE, "out of memory");
            *refs = g, *cap = nc;
        }
        (*refs)[(*n)++] = r;
    }
    return 0;
}

int mtok_model_check(const mtok_model *m, int threads, double progress_s, mtok_check_cb cb, void *user,
                     mtok_check_summary *out) {
    memset(out, 0, sizeof *out);
    if (threads <= 0) threads = 2;
    json_t **hdr = calloc((size_t)m->n_shards, sizeof *hdr);
    tensor_ref *refs = NULL;
    size_t n = 0, cap = 0;
    int rc = hdr ? 0 : mtok_err(MTOK_ERESOURCE, "out of memory");
    for (int i = 0; i < m->n_shards && !rc; i++) {
        const mtok_shard *sh = &m->shards[i];
        json_error_t je;
        hdr[i] = json_loadb((const char *)sh->map + 8, sh->data_off - 8, 0, &je);
        if (!hdr[i]) rc = mtok_err(MTOK_EINPUT, "%s: header changed while checking (%s)", sh->path, je.text);
        else rc = collect(sh, i, hdr[i], &refs, &n, &cap);
    }
    if (!rc && n) qsort(refs, n, sizeof *refs, by_name);
    /* a 9B checkpoint is ~19 GB read from disk: minutes on a cold cache, so the scan reports progress */
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) total += refs[i].n * mtok_dtype_size(refs[i].dtype);
    mtok_progress pr;
    mtok_progress_begin(&pr, "check", "MB", (int64_t)(total >> 20), rc ? -1 : progress_s);
    for (size_t i = 0; i < n && !rc; i++) {
        const tensor_ref *t = &refs[i];
        counts c;
        scan_tensor(t, threads, &c);
        out->n_tensors++;
        out->bytes += t->n * mtok_dtype_size(t->dtype);
        mtok_progress_update(&pr, (int64_t)(out->bytes >> 20));
        if (!c.nan && !c.inf) continue;
        out->n_bad++;
        mtok_tensor_check r = {.name = t->name, .file = m->shards[t->shard].path, .dtype = t->dtype,
                               .n_elems = t->n, .n_nan = c.nan, .n_inf = c.inf, .first_bad = c.first,
                               .cols = t->cols};
        if (cb) cb(&r, user);
    }
    mtok_progress_end(&pr);
    free(refs);
    for (int i = 0; hdr && i < m->n_shards; i++) json_decref(hdr[i]);
    free(hdr);
    return rc;
}
