/* identity.c — the model identity a saved KV file carries (docs/KVSTORE.md, "Saved document caches").
 *
 * A saved cache is only meaningful for the exact weights that computed it, so its identity covers
 * every byte of every shard: the model fingerprint (config numbers + tensor table, core/loader.c)
 * combined with an XXH3-128 of each shard's whole file. Hashing a 9B checkpoint reads ~19 GB, so
 *  - it happens only when a KV file is saved or loaded, once per loaded model (memoised in the model);
 *  - each shard's hash is remembered in the user's cache directory ($XDG_CACHE_HOME/mtok, else
 *    ~/.cache/mtok; never beside the checkpoint, which may be read-only or shared), keyed by the
 *    shard's absolute path, device, inode, size, mtime and ctime (ns). ctime is in the key because
 *    mtime can be set back by anyone (touch -d, rsync -t); ctime cannot. A missing, corrupt or
 *    unwritable entry only means the shard is hashed again;
 *  - a shard is hashed as 64 MiB segments (XXH3-128 each, 8 MiB preads) whose hashes are hashed in
 *    order: the segments run in parallel, and the result does not depend on the thread count.
 * If the file on disk is no longer the one mapped at load time (replaced or rewritten since), the
 * mapping itself is hashed and nothing is remembered: the identity is that of the weights in use. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "model.h"

#define SEG_BYTES ((uint64_t)64 << 20) /* one parallel unit of a shard */
#define READ_BYTES ((size_t)8 << 20)    /* one pread */
#define ENTRY_MAX 16384                 /* a cache entry is a few lines */
#define PRUNE_MAX 4096                  /* entries looked at when pruning */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static mtok_file_key key_of(const struct stat *st) {
    return (mtok_file_key){(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size,
                           (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
                           (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec};
}

int mtok_file_key_of(const char *path, mtok_file_key *k) {
    struct stat st;
    if (stat(path, &st)) return -errno;
    *k = key_of(&st);
    return 0;
}

static int key_eq(const mtok_file_key *a, const mtok_file_key *b) {
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns &&
           a->ctime_ns == b->ctime_ns;
}

/* ---- hashing ---- */

/* Segment i of a shard: from the file (fd >= 0, preads into buf) or from the mapping. */
static int hash_segment(int fd, const uint8_t *map, uint64_t size, uint64_t i, uint8_t *buf, XXH128_hash_t *out) {
    const uint64_t off0 = i * SEG_BYTES, end = off0 + SEG_BYTES < size ? off0 + SEG_BYTES : size;
    if (fd < 0) {
        *out = XXH3_128bits(map + off0, (size_t)(end - off0));
        return 0;
    }
    XXH3_state_t *st = XXH3_createState();
    if (!st) return -ENOMEM;
    XXH3_128bits_reset(st);
    int err = 0;
    for (uint64_t off = off0; off < end && !err;) {
        size_t want = end - off < READ_BYTES ? (size_t)(end - off) : READ_BYTES;
        ssize_t r = pread(fd, buf, want, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            err = r < 0 ? -errno : -EIO; /* 0: the file shrank under us */
            break;
        }
        XXH3_128bits_update(st, buf, (size_t)r);
        off += (uint64_t)r;
    }
    *out = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    return err;
}

/* The whole-file hash of one shard: XXH3-128 of (size, segment hashes in order). */
static int hash_shard(const char *path, int fd, const uint8_t *map, uint64_t size, int threads, uint8_t out[16]) {
    const int64_t nseg = (int64_t)((size + SEG_BYTES - 1) / SEG_BYTES);
    XXH128_hash_t *seg = calloc((size_t)(nseg > 0 ? nseg : 1), sizeof *seg);
    if (!seg) return mtok_err(MTOK_ERESOURCE, "out of memory hashing %s", path);
    int err = 0;
#pragma omp parallel num_threads(threads > 0 ? threads : omp_get_max_threads())
    {
        uint8_t *buf = fd >= 0 ? malloc(READ_BYTES) : NULL;
        int my = fd >= 0 && !buf ? -ENOMEM : 0;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < nseg; i++)
            if (!my) my = hash_segment(fd, map, size, (uint64_t)i, buf, &seg[i]);
        if (my) {
#pragma omp critical(mtok_identity_err)
            if (!err) err = my;
        }
        free(buf);
    }
    int rc = 0;
    if (err == -ENOMEM) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory hashing %s", path);
    } else if (err) {
        rc = mtok_err(MTOK_EINPUT, "%s: read error while hashing the weights for the KV file identity: %s", path,
                      strerror(-err));
    } else {
        XXH3_state_t *st = XXH3_createState();
        if (!st) {
            rc = mtok_err(MTOK_ERESOURCE, "out of memory hashing %s", path);
        } else {
            XXH3_128bits_reset(st);
            XXH3_128bits_update(st, &size, sizeof size);
            XXH3_128bits_update(st, seg, (size_t)nseg * sizeof *seg);
            XXH128_hash_t h = XXH3_128bits_digest(st);
            XXH3_freeState(st);
            XXH128_canonical_t c;
            XXH128_canonicalFromHash(&c, h);
            memcpy(out, c.digest, 16);
        }
    }
    free(seg);
    return rc;
}

/* ---- the cache directory ---- */

/* $XDG_CACHE_HOME/mtok or $HOME/.cache/mtok (created); NULL when neither can be used. */
static char *cache_dir(void) {
    const char *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char base[PATH_MAX];
    if (x && x[0] == '/') /* the XDG spec: a relative value is invalid and ignored */
        snprintf(base, sizeof base, "%s", x);
    else if (home && home[0] == '/')
        snprintf(base, sizeof base, "%s/.cache", home);
    else
        return NULL;
    size_t n = strlen(base) + sizeof "/mtok";
    char *d = malloc(n);
    if (!d) return NULL;
    snprintf(d, n, "%s/mtok", base);
    for (char *p = d + 1;; p++) { /* mkdir -p, private: the entries name the user's files */
        char c = *p;
        if (c != '/' && c) continue;
        *p = 0;
        int bad = mkdir(d, 0700) && errno != EEXIST;
        *p = c;
        if (bad) {
            mtok_log(2, "model identity: cannot create the cache directory %s (%s); weights are hashed each time", d,
                     strerror(errno));
            free(d);
            return NULL;
        }
        if (!c) break;
    }
    return d;
}

/* The text an entry starts with: everything its hash depends on. */
static int entry_key(char *buf, size_t cap, const char *abs, const mtok_file_key *k) {
    return snprintf(buf, cap, "mtok weight hash 1\n%s\n%llu %llu %llu %lld %lld %llu\n", abs,
                    (unsigned long long)k->dev, (unsigned long long)k->ino, (unsigned long long)k->size,
                    (long long)k->mtime_ns, (long long)k->ctime_ns, (unsigned long long)SEG_BYTES);
}

static void entry_name(char *buf, size_t cap, const char *dir, const char *abs) {
    snprintf(buf, cap, "%s/w-%016llx", dir, (unsigned long long)XXH3_64bits(abs, strlen(abs)));
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Reads an entry: 1 and the hash when it exists, matches the key and passes its check line. */
static int entry_read(const char *file, const char *key, uint8_t out[16]) {
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return 0;
    char buf[ENTRY_MAX + 1];
    ssize_t n = read(fd, buf, ENTRY_MAX);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    size_t kl = strlen(key);
    const char *hl = buf + kl;
    unsigned long long check = 0;
    int used = 0;
    if ((size_t)n < kl + 38 || memcmp(buf, key, kl) || memcmp(hl, "hash ", 5) || hl[37] != '\n' ||
        sscanf(hl + 38, "check %16llx\n%n", &check, &used) != 1 || hl + 38 + used != buf + n ||
        check != (unsigned long long)XXH3_64bits(buf, kl + 38)) {
        mtok_log(2, "model identity: %s is stale or damaged; hashing again", file);
        return 0;
    }
    for (int i = 0; i < 16; i++) {
        int a = hexval(hl[5 + 2 * i]), b = hexval(hl[6 + 2 * i]);
        if (a < 0 || b < 0) return 0;
        out[i] = (uint8_t)(a << 4 | b);
    }
    return 1;
}

/* Removes the entries of files that no longer exist (temporary checkpoints), so the directory does not
 * grow without bound; an entry whose file still exists is replaced when that file's hash is written. */
static void prune(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    int seen = 0;
    char file[PATH_MAX + 64], buf[ENTRY_MAX + 1];
    while ((e = readdir(d)) && seen < PRUNE_MAX) {
        if (strncmp(e->d_name, "w-", 2)) continue;
        seen++;
        snprintf(file, sizeof file, "%s/%s", dir, e->d_name);
        const char *t = strstr(e->d_name, ".tmp."); /* the temp of a writer that was killed */
        const int pid = t ? atoi(t + 5) : 0;
        if (pid > 0 && kill((pid_t)pid, 0) && errno == ESRCH) unlink(file);
        if (strlen(e->d_name) != 18) continue;
        int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, ENTRY_MAX);
        close(fd);
        if (n <= 0) continue;
        buf[n] = 0;
        char *p = strchr(buf, '\n'), *q = p ? strchr(p + 1, '\n') : NULL;
        if (!q) continue;
        *q = 0;
        struct stat st;
        if (stat(p + 1, &st) && errno == ENOENT) unlink(file);
    }
    closedir(d);
}

/* Writes an entry atomically (temp + rename); failures only cost a rehash next time. */
static void entry_write(const char *dir, const char *file, const char *key, const uint8_t h[16]) {
    char buf[ENTRY_MAX + 64], tmp[PATH_MAX + 96];
    int n = snprintf(buf, sizeof buf, "%shash ", key);
    for (int i = 0; i < 16; i++) n += snprintf(buf + n, sizeof buf - (size_t)n, "%02x", h[i]);
    n += snprintf(buf + n, sizeof buf - (size_t)n, "\n");
    n += snprintf(buf + n, sizeof buf - (size_t)n, "check %016llx\n", (unsigned long long)XXH3_64bits(buf, (size_t)n));
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", file, (int)getpid());
    prune(dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int ok = fd >= 0 && write(fd, buf, (size_t)n) == n;
    if (fd >= 0 && close(fd)) ok = 0;
    if (ok && rename(tmp, file)) ok = 0;
    if (!ok) {
        mtok_log(2, "model identity: cannot write %s (%s); the weights will be hashed again next time", file,
                 strerror(errno));
        if (fd >= 0) unlink(tmp);
    }
}

/* ---- the shards ---- */

typedef struct {
    int fd;             /* the shard file, when it is still the file mapped at load time; else -1 */
    int hit;            /* the hash came from the cache */
    char key[ENTRY_MAX]; /* the cache entry's key text ("" when it cannot be cached) */
    char file[PATH_MAX + 64];
    uint8_t h[16];
} shard_job;

/* Opens a shard and looks its hash up in the cache directory *dir (created on first use). */
static void shard_lookup(const mtok_shard *sh, const mtok_file_key *loaded, char **dir, shard_job *j) {
    char abs[PATH_MAX];
    struct stat st;
    mtok_file_key now = {0};
    j->key[0] = 0;
    j->hit = 0;
    j->fd = open(sh->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (j->fd >= 0 && !fstat(j->fd, &st)) now = key_of(&st);
    if (j->fd < 0 || !key_eq(&now, loaded) || now.size != sh->size || !realpath(sh->path, abs)) {
        mtok_log(2, "model identity: %s is not the file loaded (changed on disk since?); hashing the loaded weights "
                 "and remembering nothing", sh->path);
        if (j->fd >= 0) close(j->fd);
        j->fd = -1;
        return;
    }
    if (!*dir) *dir = cache_dir();
    if (!*dir || entry_key(j->key, sizeof j->key, abs, &now) >= (int)sizeof j->key) {
        j->key[0] = 0;
        return;
    }
    entry_name(j->file, sizeof j->file, *dir, abs);
    if ((j->hit = entry_read(j->file, j->key, j->h)))
        mtok_log(2, "model identity: %s: weight hash remembered in %s", sh->path, j->file);
}

/* Hashes a shard the cache did not know, from its file (or its mapping), and remembers the result. */
static int shard_hash(const mtok_shard *sh, const char *dir, int threads, shard_job *j) {
    double t0 = now_s();
#ifdef POSIX_FADV_SEQUENTIAL
    if (j->fd >= 0) posix_fadvise(j->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    int rc = hash_shard(sh->path, j->fd, j->fd >= 0 ? NULL : sh->map, sh->size, threads, j->h);
    double dt = now_s() - t0;
    if (rc) return rc;
    mtok_log(2, "model identity: hashed %s (%.2f GB) in %.2f s (%.2f GB/s)", sh->path, (double)sh->size / 1e9, dt,
             dt > 0 ? (double)sh->size / 1e9 / dt : 0.0);
    if (j->fd >= 0 && j->key[0]) entry_write(dir, j->file, j->key, j->h);
    return 0;
}

int mtok_model_identity(const mtok_model *m, int threads, uint64_t *out) {
    mtok_identity_memo *memo = m->id_memo;
    if (!memo) return mtok_err(MTOK_EINTERNAL, "model identity: the model was not made by mtok_model_load");
    pthread_mutex_lock(&memo->lock);
    if (memo->done) {
        *out = memo->identity;
        pthread_mutex_unlock(&memo->lock);
        return 0;
    }
    const int n = m->n_shards;
    shard_job *j = calloc((size_t)(n > 0 ? n : 1), sizeof *j);
    char *dir = NULL;
    uint64_t hashed = 0;
    int rc = j ? 0 : mtok_err(MTOK_ERESOURCE, "out of memory");
    double t0 = now_s();
    for (int i = 0; i < n && !rc; i++) {
        shard_lookup(&m->shards[i], &memo->keys[i], &dir, &j[i]);
        if (!j[i].hit) hashed += m->shards[i].size;
    }
    if (!rc && hashed > ((uint64_t)1 << 30)) /* seconds on a big model: say why the first save/load waits */
        mtok_log(1, "hashing %.1f GB of weights for the model identity of saved KV files (once per checkpoint, "
                 "remembered in %s)", (double)hashed / 1e9, dir ? dir : "no cache folder: it cannot be created");
    for (int i = 0; i < n && !rc; i++)
        if (!j[i].hit) rc = shard_hash(&m->shards[i], dir, threads, &j[i]);
    if (!rc) {
        const uint64_t head[2] = {0x6d746f6b69643032ull /* "mtokid02": this layout */, m->fingerprint};
        XXH3_state_t *st = XXH3_createState();
        if (!st) {
            rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        } else {
            XXH3_64bits_reset(st);
            XXH3_64bits_update(st, head, sizeof head);
            for (int i = 0; i < n; i++) XXH3_64bits_update(st, j[i].h, 16);
            memo->identity = XXH3_64bits_digest(st);
            memo->done = 1;
            XXH3_freeState(st);
            *out = memo->identity;
            mtok_log(2, "model identity %016llx (%d file%s; %.2f GB hashed in %.2f s, the rest remembered)",
                     (unsigned long long)memo->identity, n, n == 1 ? "" : "s", (double)hashed / 1e9, now_s() - t0);
        }
    }
    pthread_mutex_unlock(&memo->lock);
    for (int i = 0; j && i < n; i++)
        if (j[i].fd >= 0) close(j[i].fd);
    free(j);
    free(dir);
    return rc;
}
