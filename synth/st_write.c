/* st_write.c — crash-safe output files and a streaming safetensors writer for mtok synth.
 *
 * Safetensors layout (the general format, not GLM-specific): u64 little-endian header length N, N bytes
 * of JSON header {"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end)}, ...}
 * padded with spaces so that the data area starts 8-byte aligned, then the tensor bytes back to back in
 * header order. Sharded checkpoints follow the Hugging Face convention: model-0000i-of-0000n.safetensors
 * plus model.safetensors.index.json mapping every tensor name to its shard. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "synth_int.h"

#define WFILE_BUF ((size_t)1 << 20)
#define FILL_CHUNK ((size_t)4 << 20) /* bytes generated per fill call: bounds memory for any tensor */

static int io_err(const char *path, const char *what, int e) {
    return mtok_err(MTOK_ERESOURCE, "%s: %s: %s", path, what, strerror(e));
}

/* ---- output files -------------------------------------------------------------------------- */

int mtok_out_create(mtok_outset *o, const char *name, mtok_wfile *f) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        mtok_out_file *v = realloc(o->v, cap * sizeof *v);
        if (!v) return mtok_err(MTOK_ERESOURCE, "out of memory");
        o->v = v;
        o->cap = cap;
    }
    mtok_out_file *e = &o->v[o->n];
    size_t len = strlen(o->dir) + strlen(name) + 40;
    e->tmp = malloc(len);
    e->final = malloc(len);
    f->buf = malloc(WFILE_BUF);
    if (!e->tmp || !e->final || !f->buf) goto oom;
    /* hidden and pid-tagged: never mistaken for a checkpoint file, never clashes with a concurrent run */
    snprintf(e->tmp, len, "%s/.%s.tmp-%ld", o->dir, name, (long)getpid());
    snprintf(e->final, len, "%s/%s", o->dir, name);
    f->fd = open(e->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        int rc = io_err(e->tmp, "cannot create", errno);
        free(e->tmp);
        free(e->final);
        free(f->buf);
        f->buf = NULL;
        return rc;
    }
    o->n++; /* from here on mtok_out_free() unlinks the temporary */
    f->path = e->final;
    f->cap = WFILE_BUF;
    return 0;
oom:
    free(e->tmp);
    free(e->final);
    free(f->buf);
    f->buf = NULL;
    return mtok_err(MTOK_ERESOURCE, "out of memory");
}

static int write_all(int fd, const char *path, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return io_err(path, "write failed", errno);
        }
        if (w == 0) return io_err(path, "write failed", ENOSPC);
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int wfile_flush(mtok_wfile *f) {
    int rc = write_all(f->fd, f->path, f->buf, f->n);
    f->n = 0;
    return rc;
}

int mtok_wfile_write(mtok_wfile *f, const void *p, size_t n) {
    int rc;
    if (f->n + n > f->cap && (rc = wfile_flush(f))) return rc;
    f->bytes += n;
    if (n >= f->cap) return write_all(f->fd, f->path, p, n); /* large chunks skip the copy */
    memcpy(f->buf + f->n, p, n);
    f->n += n;
    return 0;
}

int mtok_wfile_close(mtok_wfile *f) {
    int rc = 0;
    if (f->fd >= 0) {
        rc = wfile_flush(f);
        /* the data must be on disk before the rename makes it visible under its real name */
        if (!rc && fsync(f->fd) != 0) rc = io_err(f->path, "fsync failed", errno);
        if (close(f->fd) != 0 && !rc) rc = io_err(f->path, "close failed", errno);
    }
    f->fd = -1;
    free(f->buf);
    f->buf = NULL;
    return rc;
}

int mtok_out_text(mtok_outset *o, const char *name, const char *text, size_t len) {
    mtok_wfile f;
    int rc = mtok_out_create(o, name, &f);
    if (rc) return rc;
    rc = mtok_wfile_write(&f, text, len);
    int rc2 = mtok_wfile_close(&f);
    return rc ? rc : rc2;
}

int mtok_out_commit(mtok_outset *o) {
    for (size_t i = 0; i < o->n; i++) {
        mtok_out_file *e = &o->v[i];
        if (!e->tmp) continue;
        if (rename(e->tmp, e->final) != 0) return io_err(e->final, "rename failed", errno);
        free(e->tmp);
        e->tmp = NULL;
    }
    int dfd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* best effort: some filesystems refuse fsync on directories */
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}

void mtok_out_free(mtok_outset *o) {
    for (size_t i = 0; i < o->n; i++) {
        if (o->v[i].tmp) unlink(o->v[i].tmp);
        free(o->v[i].tmp);
        free(o->v[i].final);
    }
    free(o->v);
    o->v = NULL;
    o->n = o->cap = 0;
}

/* ---- safetensors ---------------------------------------------------------------------------- */

uint64_t mtok_st_nbytes(const mtok_st_tensor *t) {
    uint64_t n = mtok_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

/* Assigns tensors to shards in order, cutting where the running byte count passes the next 1/n of
 * the total (a tensor goes where its middle falls), while making sure no shard stays empty. */
static void plan_shards(mtok_st_tensor *t, size_t n, int shards) {
    uint64_t total = 0, cum = 0, in_shard = 0, off = 0;
    for (size_t i = 0; i < n; i++) total += mtok_st_nbytes(&t[i]);
    int s = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t sz = mtok_st_nbytes(&t[i]);
        size_t left_tensors = n - i;
        size_t left_shards = (size_t)(shards - 1 - s);
        int past_cut = (double)cum + sz / 2.0 > (double)total * (s + 1) / shards;
        if (in_shard > 0 && s < shards - 1 && (left_tensors <= left_shards || past_cut)) {
            s++;
            in_shard = 0;
            off = 0;
        }
        t[i].shard = s;
        t[i].off = off;
        off += sz;
        cum += sz;
        in_shard++;
    }
}

static void shard_name(char *buf, size_t cap, int s, int shards) {
    if (shards == 1)
        snprintf(buf, cap, "model.safetensors");
    else
        snprintf(buf, cap, "model-%05d-of-%05d.safetensors", s + 1, shards);
}

/* The JSON header of one shard, padded with spaces to a multiple of 8 bytes. */
static int shard_header(const mtok_st_tensor *t, size_t n, int s, char **out, size_t *len) {
    json_t *h = json_object();
    char *js = NULL;
    int rc = MTOK_ERESOURCE;
    /* __metadata__ first, as the reference writer puts it */
    if (!h || json_object_set_new(h, "__metadata__", json_pack("{s:s}", "format", "pt"))) goto done;
    for (size_t i = 0; i < n; i++) {
        if (t[i].shard != s) continue;
        json_t *shape = json_array(), *offs = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(shape, json_integer(t[i].shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)t[i].off));
        json_array_append_new(offs, json_integer((json_int_t)(t[i].off + mtok_st_nbytes(&t[i]))));
        json_t *e = json_pack("{s:s, s:o, s:o}", "dtype", mtok_dtype_name(t[i].dtype), "shape", shape,
                              "data_offsets", offs);
        if (!e || json_object_set_new(h, t[i].name, e)) goto done;
    }
    js = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!js) goto done;
    size_t n0 = strlen(js), n8 = (n0 + 7) & ~(size_t)7;
    char *p = realloc(js, n8 + 1);
    if (!p) goto done;
    js = p;
    memset(js + n0, ' ', n8 - n0);
    js[n8] = 0;
    *out = js;
    *len = n8;
    js = NULL;
    rc = 0;
done:
    free(js);
    json_decref(h);
    return rc ? mtok_err(rc, "out of memory building a safetensors header") : 0;
}

static int write_shard(mtok_outset *o, const mtok_st_tensor *t, size_t n, int s, int shards, char *chunk,
                       mtok_st_fill_fn fill, void *user) {
    char name[64];
    char *hdr = NULL;
    size_t hlen = 0;
    mtok_wfile f = {.fd = -1};
    shard_name(name, sizeof name, s, shards);
    int rc = shard_header(t, n, s, &hdr, &hlen);
    if (rc) return rc;
    if ((rc = mtok_out_create(o, name, &f))) goto done;
    unsigned char len8[8];
    for (int b = 0; b < 8; b++) len8[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    if ((rc = mtok_wfile_write(&f, len8, 8)) || (rc = mtok_wfile_write(&f, hdr, hlen))) goto done;
    uint64_t data = 0;
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i].shard != s) continue;
        uint64_t esz = mtok_dtype_size(t[i].dtype), nel = mtok_st_nbytes(&t[i]) / esz;
        uint64_t per = FILL_CHUNK / esz;
        for (uint64_t e0 = 0; e0 < nel; e0 += per) {
            uint64_t k = nel - e0 < per ? nel - e0 : per;
            if ((rc = fill(user, i, e0, k, chunk))) goto done;
            if ((rc = mtok_wfile_write(&f, chunk, (size_t)(k * esz)))) goto done;
        }
        data += nel * esz;
        count++;
    }
    rc = mtok_wfile_close(&f);
    if (!rc)
        mtok_log(1, "synth: %s: %d tensors, %.1f MB (shard %d of %d)", name, count, data / 1e6, s + 1, shards);
done:
    if (f.fd >= 0) mtok_wfile_close(&f);
    free(hdr);
    return rc;
}

static int write_index(mtok_outset *o, const mtok_st_tensor *t, size_t n, int shards) {
    json_t *root = json_object(), *meta = json_object(), *map = json_object();
    char *js = NULL;
    int rc = 0;
    uint64_t total = 0;
    if (!root || !meta || !map) goto oom;
    for (size_t i = 0; i < n; i++) {
        char name[64];
        shard_name(name, sizeof name, t[i].shard, shards);
        if (json_object_set_new(map, t[i].name, json_string(name))) goto oom;
        total += mtok_st_nbytes(&t[i]);
    }
    /* total_size is the sum of tensor bytes (headers excluded), as transformers writes it */
    if (json_object_set_new(meta, "total_size", json_integer((json_int_t)total))) goto oom;
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "weight_map", map);
    meta = map = NULL;
    js = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!js) goto oom;
    size_t len = strlen(js);
    js[len] = '\n'; /* json_dumps leaves room for the NUL we overwrite; write len + 1 bytes */
    rc = mtok_out_text(o, "model.safetensors.index.json", js, len + 1);
    goto done;
oom:
    rc = mtok_err(MTOK_ERESOURCE, "out of memory building the safetensors index");
done:
    free(js);
    json_decref(root);
    json_decref(meta);
    json_decref(map);
    return rc;
}

int mtok_st_write(mtok_outset *o, mtok_st_tensor *t, size_t n, int shards, mtok_st_fill_fn fill, void *user) {
    if (shards < 1 || (size_t)shards > n || shards > 99999)
        return mtok_err(MTOK_EUSAGE, "%s: cannot split %zu tensors into %d shards", o->dir, n, shards);
    plan_shards(t, n, shards);
    char *chunk = malloc(FILL_CHUNK);
    if (!chunk) return mtok_err(MTOK_ERESOURCE, "out of memory");
    int rc = 0;
    for (int s = 0; s < shards && !rc; s++) rc = write_shard(o, t, n, s, shards, chunk, fill, user);
    free(chunk);
    if (!rc && shards > 1) rc = write_index(o, t, n, shards);
    return rc;
}

/* ---- stale weight files ----------------------------------------------------------------------- */

static int is_weight_file(const char *s) {
    if (!strcmp(s, "model.safetensors") || !strcmp(s, "model.safetensors.index.json")) return 1;
    /* model-DDDDD-of-DDDDD.safetensors, exactly */
    static const char pat[] = "model-#####-of-#####.safetensors";
    if (strlen(s) != sizeof pat - 1) return 0;
    for (size_t i = 0; pat[i]; i++)
        if (pat[i] == '#' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i]) return 0;
    return 1;
}

int mtok_st_remove_stale(const mtok_outset *o) {
    DIR *d = opendir(o->dir);
    if (!d) return io_err(o->dir, "cannot list", errno);
    size_t dlen = strlen(o->dir);
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!is_weight_file(de->d_name)) continue;
        int ours = 0;
        for (size_t i = 0; i < o->n && !ours; i++)
            ours = !strcmp(o->v[i].final + dlen + 1, de->d_name);
        if (ours) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", o->dir, de->d_name);
        if (unlink(path) != 0 && errno != ENOENT) {
            rc = io_err(path, "cannot remove stale weight file", errno);
            break;
        }
        mtok_log(1, "synth: removed %s (weights of an older layout)", path);
    }
    closedir(d);
    return rc;
}
