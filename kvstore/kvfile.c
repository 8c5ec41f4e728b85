/* kvfile.c — saved document caches (mtok prefill --save-kv, --load-kv), docs/DESIGN.md §4.
 *
 * File layout, little-endian:
 *   [0, 128)            header (kvf_header below)
 *   ids_off             int32 token ids [n_tokens]
 *   (8-aligned)         version 3, flags bit 1 only: int64 RoPE position of each token [n_tokens], then
 *                       int64 img_lo, img_hi: the slots whose embeddings were image rows (GLM-4V,
 *                       docs/VISION.md; their ids are placeholders). Files of sessions whose
 *                       positions are the slots stay version 2 and byte-identical to before.
 *   sums_off            uint64 XXH3-64 of each block's data [n_layers][n_blocks]
 *   chain_off           16-byte prefix hashes [n_blocks]: h_i = XXH3_128(h_{i-1} || ids of block i),
 *                       h_{-1} = 0 (the last block may be partial: its ids are the ones saved)
 *   data_off (4 KiB)    block data [n_layers][n_blocks][block_bytes]: K rows then V rows, bf16
 *                       [block_tokens][groups*head_dim] each; rows past n_tokens are zero
 *   after the data      version 2 with flags bit 0: block key summaries [n_layers][n_blocks][2]
 *                       [groups*head_dim] bf16 (per-channel key minimum, maximum over the block's
 *                       saved rows), checked against ksum_sum (XXH3-64 of the section)
 * meta_sum is the XXH3-64 of bytes [0, data_off) with meta_sum itself zero, so a flipped byte
 * anywhere in the header, ids, checksums or chain is caught before anything is used; block data
 * is checked against sums as it is loaded. Version 1 (no flags, no summaries) is still read: a cache
 * that keeps summaries (topk policy) recomputes them from the loaded rows.
 * A header is not trusted because its checksum matches (anyone can recompute one): every count and
 * offset must be the layout the saver writes (layout()) and agree with the file's real size before
 * anything sized by it is allocated or read; token ids are checked against the vocabulary by the
 * caller (core/forward.c), which knows it.
 * Saving: written to PATH.tmp.PID, every write checked, fsynced, renamed, directory fsynced: a reader
 * sees the old file or the whole new one, and a failed save removes its temp and leaves PATH as it
 * was. Temps of saves killed before their rename are removed by the next save to the same PATH when
 * their process is gone. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvstore.h"
#include "kvsummary.h"
#include "../base/mtok_base.h"

#define KVF_MAGIC "MTOKKV\r\n"
#define KVF_VERSION 2
#define KVF_VERSION_LAYOUT 3 /* written only with KVF_HAS_LAYOUT, so older readers refuse it by version */
#define KVF_HAS_SUMMARIES 1u /* flags: key summaries follow the block data */
#define KVF_HAS_LAYOUT 2u    /* flags: RoPE positions and the image span follow the ids (version 3) */
#ifndef KVS_MAX_BLOCK_TOKENS
#define KVS_MAX_BLOCK_TOKENS 65536 /* the largest --kv-block */
#endif

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes;
    uint64_t fingerprint;
    uint64_t n_tokens;
    uint32_t block_tokens;
    uint32_t dtype; /* 0 = bf16 */
    uint32_t n_layers, n_kv_groups, head_dim, flags; /* flags: version 2 (0 in version 1) */
    uint64_t n_blocks;    /* per layer */
    uint64_t block_bytes; /* data bytes per block */
    uint64_t ids_off, sums_off, chain_off, data_off, file_bytes;
    uint64_t meta_sum;
    uint64_t ksum_sum; /* XXH3-64 of the key summaries (flags & KVF_HAS_SUMMARIES; 0 in version 1) */
} kvf_header;
_Static_assert(sizeof(kvf_header) == 128, "kv file header is 128 bytes");

static void chain_next(uint8_t h[16], const int32_t *ids, int64_t n) {
    XXH3_state_t *st = XXH3_createState();
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, h, 16);
    XXH3_128bits_update(st, ids, (size_t)n * sizeof *ids);
    XXH128_hash_t r = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    memcpy(h, &r.high64, 8);
    memcpy(h + 8, &r.low64, 8);
}

static int write_all(int fd, const void *p, size_t n, uint64_t off) {
    const char *b = p;
    while (n) {
        ssize_t w = pwrite(fd, b, n, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return w < 0 ? -errno : -EIO; /* 0: no progress, nothing else to report */
        b += w, n -= (size_t)w, off += (uint64_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n, uint64_t off) {
    char *b = p;
    while (n) {
        ssize_t r = pread(fd, b, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return r < 0 ? -errno : -EIO;
        b += r, n -= (size_t)r, off += (uint64_t)r;
    }
    return 0;
}

/* The layout of a file of n tokens in blocks of B with this geometry: what the saver writes and the
 * only one the loader accepts. 0, or -1 when a size overflows 64 bits (a hostile header). */
static uint64_t pos_off(uint64_t ids_off, uint64_t n) { return (ids_off + n * 4 + 7) / 8 * 8; }

static int layout(kvf_header *h, uint64_t n, uint64_t B, uint64_t layers, uint64_t row, int with_sum,
                  int with_pos) {
    const uint64_t nb = (n + B - 1) / B, bb = 4 * B * row, sb = 4 * row; /* K and V, bf16 */
    uint64_t nsum, per, data, sums;
    if (__builtin_mul_overflow(layers, nb, &nsum) || __builtin_add_overflow(bb, with_sum ? sb : 0, &per) ||
        __builtin_mul_overflow(nsum, per, &data) || __builtin_mul_overflow(nsum, 8, &sums) || n > (1ull << 60) ||
        sums > (1ull << 62) || nb > (1ull << 58))
        return -1;
    h->n_blocks = nb;
    h->block_bytes = bb;
    h->ids_off = sizeof *h;
    h->sums_off = pos_off(h->ids_off, n) + (with_pos ? n * 8 + 16 : 0);
    h->chain_off = h->sums_off + sums;
    h->data_off = (h->chain_off + nb * 16 + 4095) / 4096 * 4096;
    return __builtin_add_overflow(h->data_off, data, &h->file_bytes) ? -1 : 0;
}

/* Removes PATH.tmp.PID files left by saves that were killed before their rename, when process PID
 * no longer exists on this machine (a live one may be a save in progress). */
static void remove_stale_temps(const char *path) {
    char dbuf[4200], bbuf[4200];
    snprintf(dbuf, sizeof dbuf, "%s", path);
    snprintf(bbuf, sizeof bbuf, "%s", path);
    const char *base = basename(bbuf);
    const size_t bl = strlen(base);
    DIR *d = opendir(dirname(dbuf));
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, base, bl) || strncmp(e->d_name + bl, ".tmp.", 5)) continue;
        const char *p = e->d_name + bl + 5;
        if (*p < '1' || *p > '9') continue;
        char *end;
        errno = 0;
        long pid = strtol(p, &end, 10);
        if (*end || errno || pid > INT_MAX || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        if (!unlinkat(dirfd(d), e->d_name, 0))
            mtok_log(1, "%s: removed %s, left by an interrupted save (process %ld is gone)", path, e->d_name, pid);
    }
    closedir(d);
}

/* The exit class of a failed write: the disk or a limit (3) unless the path itself is wrong (2). */
static int write_code(int err) {
    return err == EACCES || err == EPERM || err == ENOENT || err == ENOTDIR || err == EISDIR || err == EROFS ||
                   err == ENAMETOOLONG || err == ELOOP || err == EXDEV
               ? MTOK_EINPUT
               : MTOK_ERESOURCE;
}

int kvs_file_save(kvs_cache *c, const char *path, uint64_t fingerprint, const int32_t *ids, int64_t n) {
    return kvs_file_save_ex(c, path, fingerprint, ids, n, NULL, 0, 0);
}

int kvs_file_save_ex(kvs_cache *c, const char *path, uint64_t fingerprint, const int32_t *ids, int64_t n,
                     const int64_t *pos, int64_t img_lo, int64_t img_hi) {
    const kvs_params *p = kvs_get_params(c);
    const int64_t B = kvs_block_tokens(c), row = p->n_kv_groups * p->head_dim;
    const int with_sum = kvs_summary(c, 0, 0) != NULL, with_pos = pos || img_hi > img_lo;
    kvf_header h = {0};
    if (n <= 0 || layout(&h, (uint64_t)n, (uint64_t)B, (uint64_t)p->n_layers, (uint64_t)row, with_sum, with_pos))
        return mtok_err(MTOK_EUSAGE, "%s: cannot save %lld tokens of KV", path, (long long)n);
    if (with_pos && (img_lo < 0 || img_lo > img_hi || img_hi > n))
        return mtok_err(MTOK_EUSAGE, "%s: image rows [%lld, %lld) outside the %lld tokens saved", path,
                        (long long)img_lo, (long long)img_hi, (long long)n);
    const int64_t nb = (int64_t)h.n_blocks, nsum = p->n_layers * nb;
    const size_t bb = (size_t)h.block_bytes, sb = 2 * (size_t)row * sizeof(uint16_t);
    memcpy(h.magic, KVF_MAGIC, 8);
    h.version = with_pos ? KVF_VERSION_LAYOUT : KVF_VERSION;
    h.header_bytes = sizeof h;
    h.fingerprint = fingerprint;
    h.n_tokens = (uint64_t)n;
    h.block_tokens = (uint32_t)B;
    h.n_layers = (uint32_t)p->n_layers, h.n_kv_groups = (uint32_t)p->n_kv_groups, h.head_dim = (uint32_t)p->head_dim;
    h.flags = (with_sum ? KVF_HAS_SUMMARIES : 0) | (with_pos ? KVF_HAS_LAYOUT : 0);

    remove_stale_temps(path);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    uint8_t *meta = calloc(1, h.data_off);
    uint16_t *blk = malloc(bb);
    int fd = -1, rc = 0, err = 0;
    uint64_t err_off = 0;
    const char *what = NULL; /* the step that failed, for the message */
    if (!meta || !blk) {
        rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory saving the KV cache", path);
        goto done;
    }
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        rc = mtok_err(write_code(errno), "%s: cannot create %s: %s", path, tmp, strerror(errno));
        goto done;
    }
    memcpy(meta + h.ids_off, ids, (size_t)n * 4);
    if (with_pos) { /* positions (the slots when pos is NULL), then the image span */
        uint8_t *q = meta + pos_off(h.ids_off, (uint64_t)n);
        for (int64_t t = 0; t < n; t++) {
            const int64_t v = pos ? pos[t] : t;
            memcpy(q + t * 8, &v, 8);
        }
        memcpy(q + n * 8, &img_lo, 8);
        memcpy(q + n * 8 + 8, &img_hi, 8);
    }
    uint8_t *sums = meta + h.sums_off; /* uint64 each, written with memcpy */
    uint8_t chain[16] = {0};
    for (int64_t b = 0; b < nb; b++) {
        chain_next(chain, ids + b * B, (b + 1) * B <= n ? B : n - b * B);
        memcpy(meta + h.chain_off + b * 16, chain, 16);
    }
    /* The key summaries are recomputed from the saved rows, not copied from the cache: a cache
     * holding more than n tokens has summaries that cover rows the file does not keep. */
    kvs_sumtab *st = NULL;
    XXH3_state_t *xs = NULL;
    if (with_sum && (kvsum_create(1, nb, row, &st) || !(xs = XXH3_createState()))) {
        rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory saving the KV cache", path);
        goto done;
    }
    if (xs) XXH3_64bits_reset(xs);
    /* every write is checked: the first failure ends the save (a later success must not hide it) */
    for (int64_t l = 0; l < p->n_layers && !rc && !err; l++) {
        for (int64_t b = 0; b < nb && !rc && !err; b++) {
            int64_t rows, want = n - b * B < B ? n - b * B : B;
            if ((rc = kvs_read_block(c, l, b, blk, &rows))) break;
            if (rows < want) {
                rc = mtok_err(MTOK_EUSAGE, "%s: layer %lld holds %lld tokens, fewer than the %lld to save", path,
                              (long long)l, (long long)(b * B + rows), (long long)n);
                break;
            }
            if (want < B) { /* rows past the end are not part of the document */
                memset(blk + want * row, 0, (size_t)(B - want) * row * 2);
                memset(blk + (B + want) * row, 0, (size_t)(B - want) * row * 2);
            }
            uint64_t sum = XXH3_64bits(blk, bb);
            memcpy(sums + (l * nb + b) * 8, &sum, 8);
            err_off = h.data_off + (uint64_t)(l * nb + b) * bb;
            if ((err = write_all(fd, blk, bb, err_off))) what = "writing block data";
            if (st) kvsum_rebuild(st, 0, b, blk, want);
        }
        if (st && !rc && !err) { /* this layer's summaries, [block][2][row] after all the block data */
            const uint8_t *lay = (const uint8_t *)kvsum_at(st, 0, 0);
            XXH3_64bits_update(xs, lay, (size_t)nb * sb);
            err_off = h.data_off + (uint64_t)nsum * bb + (uint64_t)(l * nb) * sb;
            if ((err = write_all(fd, lay, (size_t)nb * sb, err_off))) what = "writing the key summaries";
        }
    }
    if (xs) h.ksum_sum = XXH3_64bits_digest(xs);
    XXH3_freeState(xs);
    kvsum_free(st);
    if (rc) goto done;
    memcpy(meta, &h, sizeof h);
    h.meta_sum = XXH3_64bits(meta, h.data_off);
    memcpy(meta, &h, sizeof h);
    if (!err && (err = write_all(fd, meta, h.chain_off + (uint64_t)nb * 16, 0))) what = "writing the header", err_off = 0;
    if (!err && ftruncate(fd, (off_t)h.file_bytes)) err = -errno, what = "extending the file", err_off = h.file_bytes;
    if (!err && fsync(fd)) err = -errno, what = "syncing", err_off = UINT64_MAX;
    int cl = close(fd);
    fd = -1;
    if (!err && cl) err = -errno, what = "closing", err_off = UINT64_MAX;
    if (err) {
        char at[48] = "";
        if (err_off != UINT64_MAX) snprintf(at, sizeof at, " at offset %llu", (unsigned long long)err_off);
        rc = mtok_err(write_code(-err), "%s: saving the KV cache failed %s %s%s: %s; %s is unchanged", path, what, tmp,
                      at, strerror(-err), path);
        goto done;
    }
    if (rename(tmp, path)) {
        rc = mtok_err(write_code(errno), "%s: saving the KV cache failed renaming %s over it: %s", path, tmp,
                      strerror(errno));
        goto done;
    }
    char dirbuf[4200];
    snprintf(dirbuf, sizeof dirbuf, "%s", path);
    int dfd = open(dirname(dirbuf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) fsync(dfd), close(dfd); /* the rename is durable; the data was synced before it */
    mtok_log(1, "saved %lld tokens of KV (%lld layers x %lld blocks of %lld tokens, %.1f MiB) to %s", (long long)n,
             (long long)p->n_layers, (long long)nb, (long long)B, (double)h.file_bytes / (1 << 20), path);
done:
    if (fd >= 0) close(fd);
    if (rc) unlink(tmp);
    free(meta);
    free(blk);
    return rc;
}

/* Reads the summary section of a file (block size = the cache's) into the cache for the blocks of
 * the first `use` positions, after checking the whole section against ksum_sum. A block cut short
 * by a prefix load gets its summary recomputed from the loaded rows. */
static int load_summaries(kvs_cache *c, int fd, const kvf_header *h, int64_t use, const char *path) {
    const int64_t nb = (int64_t)h->n_blocks, Bf = h->block_tokens, nb_use = (use + Bf - 1) / Bf;
    const size_t sb = 2 * (size_t)h->n_kv_groups * h->head_dim * sizeof(uint16_t), lb = (size_t)nb * sb;
    const uint64_t off0 = h->data_off + h->n_layers * h->n_blocks * h->block_bytes;
    kvs_sumtab *t = kvs_sumtab_of(c);
    XXH3_state_t *xs = XXH3_createState();
    uint8_t *lay = malloc(lb ? lb : 1);
    int rc = 0;
    if (!xs || !lay) rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory loading the key summaries", path);
    else XXH3_64bits_reset(xs);
    for (int64_t l = 0; l < (int64_t)h->n_layers && !rc; l++) {
        if (read_all(fd, lay, lb, off0 + (uint64_t)l * lb)) {
            rc = mtok_err(MTOK_EINPUT, "%s: read error in the key summaries at offset %llu", path,
                          (unsigned long long)(off0 + (uint64_t)l * lb));
            break;
        }
        XXH3_64bits_update(xs, lay, lb);
        for (int64_t b = 0; b < nb_use; b++) memcpy(kvsum_at(t, l, b), lay + b * sb, sb);
    }
    if (!rc && XXH3_64bits_digest(xs) != h->ksum_sum)
        rc = mtok_err(MTOK_EINPUT, "%s: corrupt: the block key summaries fail their checksum", path);
    if (!rc && use < (int64_t)h->n_tokens && use % Bf) /* the last loaded block holds fewer rows than saved */
        for (int64_t l = 0; l < (int64_t)h->n_layers && !rc; l++) rc = kvs_summary_rebuild(c, l, use / Bf);
    XXH3_freeState(xs);
    free(lay);
    return rc;
}

/* Checks a header against the file's size and its own counts, before anything sized by it is
 * allocated or read: every offset and size must be the one the saver writes for its token count,
 * block size and geometry (the meta checksum cannot vouch for them: anyone can recompute it). */
static int check_header(const kvf_header *h, uint64_t size, const char *path) {
    if (h->file_bytes != size)
        return mtok_err(MTOK_EINPUT, "%s: truncated or damaged: the header says %llu bytes, the file has %llu", path,
                        (unsigned long long)h->file_bytes, (unsigned long long)size);
    const struct {
        const char *name;
        uint64_t v, lo, hi;
    } range[] = {{"n_tokens", h->n_tokens, 1, 1ull << 40}, {"block_tokens", h->block_tokens, 1, KVS_MAX_BLOCK_TOKENS},
                 {"n_layers", h->n_layers, 1, 1u << 16}, {"n_kv_groups", h->n_kv_groups, 1, 1u << 16},
                 {"head_dim", h->head_dim, 1, 1u << 16}};
    for (size_t i = 0; i < sizeof range / sizeof range[0]; i++)
        if (range[i].v < range[i].lo || range[i].v > range[i].hi)
            return mtok_err(MTOK_EINPUT, "%s: damaged header: %s is %llu, outside [%llu, %llu]", path, range[i].name,
                            (unsigned long long)range[i].v, (unsigned long long)range[i].lo,
                            (unsigned long long)range[i].hi);
    /* the layout section comes with version 3 and only there */
    if ((h->flags & ~(KVF_HAS_SUMMARIES | KVF_HAS_LAYOUT)) || (h->version == 1 && h->flags) ||
        ((h->flags & KVF_HAS_LAYOUT) != 0) != (h->version == KVF_VERSION_LAYOUT))
        return mtok_err(MTOK_EINPUT, "%s: damaged header: unknown flags %#x for version %u", path, h->flags, h->version);
    kvf_header want = {0};
    if (layout(&want, h->n_tokens, h->block_tokens, h->n_layers, (uint64_t)h->n_kv_groups * h->head_dim,
               (h->flags & KVF_HAS_SUMMARIES) != 0, (h->flags & KVF_HAS_LAYOUT) != 0))
        return mtok_err(MTOK_EINPUT, "%s: damaged header: its sizes overflow", path);
    const struct {
        const char *name;
        uint64_t got, want;
    } field[] = {{"n_blocks", h->n_blocks, want.n_blocks},    {"block_bytes", h->block_bytes, want.block_bytes},
                 {"ids_off", h->ids_off, want.ids_off},       {"sums_off", h->sums_off, want.sums_off},
                 {"chain_off", h->chain_off, want.chain_off}, {"data_off", h->data_off, want.data_off},
                 {"file_bytes", h->file_bytes, want.file_bytes}};
    for (size_t i = 0; i < sizeof field / sizeof field[0]; i++)
        if (field[i].got != field[i].want)
            return mtok_err(MTOK_EINPUT, "%s: damaged header: %s is %llu, expected %llu for %llu tokens in blocks of "
                            "%u", path, field[i].name, (unsigned long long)field[i].got,
                            (unsigned long long)field[i].want, (unsigned long long)h->n_tokens, h->block_tokens);
    return 0;
}

int kvs_file_load(kvs_cache *c, const char *path, uint64_t fingerprint, const int32_t *prompt, int64_t n_prompt,
                  int32_t **ids_out, int64_t *n_loaded) {
    return kvs_file_load_ex(c, path, fingerprint, prompt, n_prompt, ids_out, n_loaded, NULL);
}

int kvs_file_load_ex(kvs_cache *c, const char *path, uint64_t fingerprint, const int32_t *prompt, int64_t n_prompt,
                     int32_t **ids_out, int64_t *n_loaded, kvs_file_layout *lay) {
    *ids_out = NULL;
    *n_loaded = 0;
    if (lay) *lay = (kvs_file_layout){0};
    int64_t *pos = NULL;
    const kvs_params *p = kvs_get_params(c);
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return mtok_err(MTOK_EINPUT, "%s: %s", path, strerror(errno));
    struct stat st;
    kvf_header h;
    uint8_t *meta = NULL;
    uint16_t *blk = NULL;
    int32_t *ids = NULL;
    int rc = 0;
    if (fstat(fd, &st)) {
        rc = mtok_err(MTOK_EINPUT, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = mtok_err(MTOK_EINPUT, "%s: not a regular file (%s); an mtok KV cache is a file written by --save-kv",
                      path, S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO" : "a device or socket");
        goto done;
    }
    if (st.st_size < (off_t)sizeof h || read_all(fd, &h, sizeof h, 0)) {
        rc = mtok_err(MTOK_EINPUT, "%s: truncated: %lld bytes, shorter than the %zu-byte header of an mtok KV file",
                      path, (long long)st.st_size, sizeof h);
        goto done;
    }
    if (memcmp(h.magic, KVF_MAGIC, 8)) {
        rc = mtok_err(MTOK_EINPUT, "%s: not an mtok KV cache file (bad magic)", path);
        goto done;
    }
    if (h.header_bytes != sizeof h) {
        rc = mtok_err(MTOK_EINPUT, "%s: damaged header: header_bytes %u, expected %zu", path, h.header_bytes,
                      sizeof h);
        goto done;
    }
    if (h.version != 1 && h.version != KVF_VERSION && h.version != KVF_VERSION_LAYOUT) {
        rc = mtok_err(MTOK_EINPUT, "%s: KV file version %u is not supported (this mtok reads versions 1 to %d)", path,
                      h.version, KVF_VERSION_LAYOUT);
        goto done;
    }
    if ((rc = check_header(&h, (uint64_t)st.st_size, path))) goto done;
    /* the header is consistent with the file's real size, so data_off is bounded by it */
    if (!(meta = malloc(h.data_off))) {
        rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory reading the header (%llu bytes)", path,
                      (unsigned long long)h.data_off);
        goto done;
    }
    if (read_all(fd, meta, h.data_off, 0)) {
        rc = mtok_err(MTOK_EINPUT, "%s: read error before offset %llu", path, (unsigned long long)h.data_off);
        goto done;
    }
    uint64_t want = h.meta_sum;
    memset(meta + offsetof(kvf_header, meta_sum), 0, 8);
    if (XXH3_64bits(meta, h.data_off) != want) {
        rc = mtok_err(MTOK_EINPUT, "%s: corrupt: the header/token-list checksum does not match (flipped or damaged "
                      "bytes before offset %llu)", path, (unsigned long long)h.data_off);
        goto done;
    }
    if (h.fingerprint != fingerprint) {
        rc = mtok_err(MTOK_EINPUT, "%s: saved by a different model: its config, tensors or weights differ (identity "
                      "%016llx, this model %016llx)", path, (unsigned long long)h.fingerprint,
                      (unsigned long long)fingerprint);
        goto done;
    }
    const int has_sum = (h.flags & KVF_HAS_SUMMARIES) != 0;
    if (h.dtype != 0 || h.n_layers != p->n_layers || h.n_kv_groups != p->n_kv_groups || h.head_dim != p->head_dim) {
        rc = mtok_err(MTOK_EINPUT, "%s: KV layout (%u layers, %u groups x %u, block %u, dtype %u) does not match "
                      "this model", path, h.n_layers, h.n_kv_groups, h.head_dim, h.block_tokens, h.dtype);
        goto done;
    }
    if (!prompt && h.n_tokens > (uint64_t)p->ctx) {
        rc = mtok_err(MTOK_EINPUT, "%s: %llu saved tokens exceed the context limit %lld (--ctx)", path,
                      (unsigned long long)h.n_tokens, (long long)p->ctx);
        goto done;
    }
    const int64_t Bf = h.block_tokens, n_tok = (int64_t)h.n_tokens, nb = (int64_t)h.n_blocks;
    const int64_t row = p->n_kv_groups * p->head_dim;
    const int32_t *saved = (const int32_t *)(meta + h.ids_off);
    int64_t img_lo = 0, img_hi = 0;
    if (h.flags & KVF_HAS_LAYOUT) {
        /* checked like the ids: the checksum says the bytes are as written, not that a writer was sane */
        const uint8_t *q = meta + pos_off(h.ids_off, h.n_tokens);
        if (!lay) {
            rc = mtok_err(MTOK_EINPUT, "%s: the file holds an image's rows and their RoPE positions (GLM-4V), which "
                          "this reader cannot restore", path);
            goto done;
        }
        memcpy(&img_lo, q + n_tok * 8, 8);
        memcpy(&img_hi, q + n_tok * 8 + 8, 8);
        if (!(pos = malloc((size_t)n_tok * sizeof *pos))) {
            rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory for %lld positions", path, (long long)n_tok);
            goto done;
        }
        memcpy(pos, q, (size_t)n_tok * 8);
        for (int64_t t = 0; t < n_tok && !rc; t++)
            if (pos[t] < (t ? pos[t - 1] : 0) || pos[t] > (int64_t)1 << 40)
                rc = mtok_err(MTOK_EINPUT, "%s: damaged: RoPE position %lld of token %lld out of order or range", path,
                              (long long)pos[t], (long long)t);
        if (!rc && (img_lo < 0 || img_lo > img_hi || img_hi > n_tok))
            rc = mtok_err(MTOK_EINPUT, "%s: damaged: image rows [%lld, %lld) outside the %lld saved tokens", path,
                          (long long)img_lo, (long long)img_hi, (long long)n_tok);
        if (rc) goto done;
    }
    int64_t use = n_tok;
    if (prompt) { /* longest saved prefix the prompt starts with, block by block through the hash chain */
        uint8_t hc[16] = {0};
        use = 0;
        for (int64_t b = 0; b < nb; b++) {
            int64_t len = (b + 1) * Bf <= n_tok ? Bf : n_tok - b * Bf;
            if (b * Bf + len > n_prompt) break;
            chain_next(hc, prompt + b * Bf, len);
            if (memcmp(hc, meta + h.chain_off + b * 16, 16)) break;
            use += len;
        }
        if (use >= n_prompt) use = n_prompt - 1; /* one prompt token must run to give logits */
        if (use < 0) use = 0;
        /* image rows hold placeholder ids: equal ids do not mean an equal image */
        if (img_hi > img_lo && use > img_lo) use = img_lo;
    }
    if (use > p->ctx) {
        rc = mtok_err(MTOK_EINPUT, "%s: %lld saved tokens exceed the context limit %lld (--ctx)", path,
                      (long long)use, (long long)p->ctx);
        goto done;
    }
    kvs_reset(c);
    blk = malloc(h.block_bytes);
    ids = malloc((size_t)(use > 0 ? use : 1) * sizeof *ids);
    if (!blk || !ids) {
        rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory loading the KV cache", path);
        goto done;
    }
    memcpy(ids, saved, (size_t)use * sizeof *ids);
    /* the saved key summaries are installed when the block size matches; otherwise (or for a file
     * without them) kvs_write_bf16 recomputes them from the rows */
    const int install = has_sum && kvs_sumtab_of(c) && Bf == kvs_block_tokens(c);
    if (!has_sum && kvs_sumtab_of(c))
        mtok_log(1, "%s: the file has no block key summaries (version %u); recomputing them from the keys", path,
                 h.version);
    kvs_summary_hold(c, install);
    const uint8_t *sums = meta + h.sums_off;
    for (int64_t l = 0; l < p->n_layers && !rc; l++)
        for (int64_t b = 0; b * Bf < use && !rc; b++) {
            uint64_t off = h.data_off + (uint64_t)(l * nb + b) * h.block_bytes;
            if (read_all(fd, blk, h.block_bytes, off)) {
                rc = mtok_err(MTOK_EINPUT, "%s: read error at offset %llu", path, (unsigned long long)off);
                break;
            }
            uint64_t want_sum;
            memcpy(&want_sum, sums + (l * nb + b) * 8, 8);
            if (XXH3_64bits(blk, h.block_bytes) != want_sum) {
                rc = mtok_err(MTOK_EINPUT, "%s: corrupt block: layer %lld block %lld at offset %llu fails its checksum",
                              path, (long long)l, (long long)b, (unsigned long long)off);
                break;
            }
            int64_t rows = use - b * Bf < Bf ? use - b * Bf : Bf;
            rc = kvs_write_bf16(c, l, b * Bf, rows, blk, blk + Bf * row, row);
        }
    kvs_summary_hold(c, 0);
    if (!rc && install) rc = load_summaries(c, fd, &h, use, path);
    if (rc) {
        kvs_reset(c);
        goto done;
    }
    *ids_out = ids;
    ids = NULL;
    *n_loaded = use;
    if (lay && pos) {
        lay->pos = pos;
        pos = NULL;
        lay->img_lo = use > img_lo ? img_lo : 0;
        lay->img_hi = use > img_lo ? (img_hi < use ? img_hi : use) : 0;
    }
    mtok_log(1, "loaded %lld of %lld saved tokens of KV from %s", (long long)use, (long long)n_tok, path);
done:
    close(fd);
    free(meta);
    free(blk);
    free(ids);
    free(pos);
    return rc;
}
