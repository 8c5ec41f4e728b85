/* kvtier.c — cold-tier backends behind kvs_tier_ops.
 *
 *  uring:   liburing ring of `depth` entries; the hot arena + staging ring are registered as fixed
 *           buffers (1 GiB iovecs) and the file as a fixed file; requests of one call go out as one
 *           io_uring_submit(); at most `depth` requests are in flight.
 *  threads: `depth` (capped at 16) workers doing pread/pwrite; used when io_uring cannot be set up
 *           (ENOSYS, EPERM from seccomp or io_uring_disabled, ENOMEM) or when --kv-io threads.
 *  fault:   wraps either one and injects the fault of kvs_tier_params.fault (tests only).
 * The file is created O_EXCL in the directory, opened O_DIRECT (buffered, with a log line, where the
 * filesystem refuses O_DIRECT), and unlinked at once so nothing is left behind after a crash. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvtier.h"
#include "../base/mtok_base.h"

/* ---- shared: the file ---- */
static int open_file(const char *dir, char *path, size_t cap, int *direct) {
    static int counter;
    const char *d = dir;
    if (!d || !*d) d = getenv("TMPDIR");
    if (!d || !*d) d = "/var/tmp";
    int fd = -1;
    for (int tries = 0; tries < 100 && fd < 0; tries++) {
        snprintf(path, cap, "%s/mtok-kv-%d-%d.cold", d, (int)getpid(), __atomic_fetch_add(&counter, 1, 0));
        *direct = 1;
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0600);
        if (fd < 0 && errno == EINVAL) { /* filesystem without O_DIRECT (e.g. old tmpfs) */
            *direct = 0;
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        }
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        /* a directory that is missing, not a directory or not writable is the user's input to fix
         * (exit 2); anything else (no inodes, no descriptors, no space) is a resource running out */
        const int e = errno;
        const int input = e == ENOENT || e == ENOTDIR || e == EACCES || e == EPERM || e == EROFS;
        return mtok_err(input ? MTOK_EINPUT : MTOK_ERESOURCE, "kv cold tier: cannot create %s: %s (--kv-dir %s)", path,
                        strerror(e), d);
    }
    unlink(path);
    if (!*direct) mtok_log(1, "kv cold tier: %s does not support O_DIRECT; using buffered I/O", d);
    return fd;
}

static int file_reserve(int fd, uint64_t bytes) {
    if (fallocate(fd, 0, 0, (off_t)bytes) == 0) return 0;
    if (errno == EOPNOTSUPP) { /* no fallocate here: extend the file, space is not guaranteed */
        struct stat st;
        if (fstat(fd, &st) == 0 && (uint64_t)st.st_size >= bytes) return 0;
        return ftruncate(fd, (off_t)bytes) == 0 ? 0 : -errno;
    }
    return -errno;
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Polls the completion queue for up to KVS_POLL_S before sleeping in io_uring_wait_cqe: a block read
 * takes tens of microseconds, and waking a sleeping thread (a halted vCPU in a VM) can cost far more. */
#define KVS_POLL_S 0.002

/* ---- io_uring backend ---- */
typedef struct {
    kvs_tier base;
    struct io_uring ring;
    int fd, fixed_file, depth, inflight;
    char *region;
    size_t region_bytes, chunk;
    int n_bufs;
} uring_tier;

#define URING_CHUNK ((size_t)1 << 30) /* registered buffers are limited to 1 GiB each */

static int uring_reserve(kvs_tier *t, uint64_t bytes) { return file_reserve(((uring_tier *)t)->fd, bytes); }

static void uring_reap(uring_tier *u, int block) {
    struct io_uring_cqe *cqe;
    int rc = block ? io_uring_wait_cqe(&u->ring, &cqe) : io_uring_peek_cqe(&u->ring, &cqe);
    while (rc == 0 && cqe) {
        kvs_io *io = io_uring_cqe_get_data(cqe);
        io->res = cqe->res;
        __atomic_store_n(&io->done, 1, __ATOMIC_RELEASE);
        io_uring_cqe_seen(&u->ring, cqe);
        u->inflight--;
        rc = io_uring_peek_cqe(&u->ring, &cqe);
    }
}

static int uring_submit(kvs_tier *t, kvs_io **ios, int n) {
    uring_tier *u = (uring_tier *)t;
    for (int i = 0; i < n; i++) {
        kvs_io *io = ios[i];
        io->done = 0;
        io->res = 0;
        while (u->inflight >= u->depth) { /* keep at most depth in flight */
            int s = io_uring_submit(&u->ring);
            if (s < 0) return s;
            uring_reap(u, 1);
        }
        struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
        if (!sqe) {
            io_uring_submit(&u->ring);
            sqe = io_uring_get_sqe(&u->ring);
            if (!sqe) return -EBUSY;
        }
        int fd = u->fixed_file ? 0 : u->fd;
        char *b = io->buf;
        int idx = (u->n_bufs && b >= u->region && b + io->len <= u->region + u->region_bytes)
                      ? (int)((size_t)(b - u->region) / u->chunk) : -1;
        if (idx >= 0 && (size_t)(b - u->region) / u->chunk != (size_t)(b + io->len - 1 - u->region) / u->chunk)
            idx = -1; /* straddles two registered chunks */
        if (io->op == KVS_OP_READ) {
            if (idx >= 0) io_uring_prep_read_fixed(sqe, fd, b, (unsigned)io->len, io->off, idx);
            else io_uring_prep_read(sqe, fd, b, (unsigned)io->len, io->off);
        } else {
            if (idx >= 0) io_uring_prep_write_fixed(sqe, fd, b, (unsigned)io->len, io->off, idx);
            else io_uring_prep_write(sqe, fd, b, (unsigned)io->len, io->off);
        }
        if (u->fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
        io_uring_sqe_set_data(sqe, io);
        u->inflight++;
    }
    int s = io_uring_submit(&u->ring); /* one batch */
    return s < 0 ? s : 0;
}

static int uring_wait(kvs_tier *t, kvs_io *io) {
    uring_tier *u = (uring_tier *)t;
    double t0 = 0;
    for (int spins = 0; !__atomic_load_n(&io->done, __ATOMIC_ACQUIRE); spins++) {
        io_uring_get_events(&u->ring); /* completions may be pending as task work until we enter */
        uring_reap(u, 0);
        if (__atomic_load_n(&io->done, __ATOMIC_ACQUIRE)) break;
        if (spins == 0) t0 = mono_s();
        else if ((spins & 63) == 0 && mono_s() - t0 > KVS_POLL_S) uring_reap(u, 1);
    }
    return 0;
}

static void uring_close(kvs_tier *t) {
    uring_tier *u = (uring_tier *)t;
    while (u->inflight > 0) uring_reap(u, 1);
    io_uring_queue_exit(&u->ring);
    close(u->fd);
    free(u);
}

static const kvs_tier_ops uring_ops = {KVS_TIER_VERSION, "io_uring", uring_reserve, uring_submit, uring_wait,
                                       uring_close};

/* Returns 0 and the tier, or -errno of the failed setup step (the caller falls back). */
static int uring_open(const kvs_tier_params *p, int fd, kvs_tier **out, const char **step) {
    uring_tier *u = calloc(1, sizeof *u);
    if (!u) return -ENOMEM;
    u->fd = fd;
    u->depth = p->depth;
    int rc = p->fault.kind == KVS_FAULT_NOURING ? -EPERM : io_uring_queue_init((unsigned)p->depth, &u->ring, 0);
    if (rc < 0) {
        *step = p->fault.kind == KVS_FAULT_NOURING ? "io_uring_queue_init (simulated failure, --kv-fault nouring)"
                                                   : "io_uring_queue_init";
        free(u);
        return rc;
    }
    u->fixed_file = io_uring_register_files(&u->ring, &fd, 1) == 0;
    if (p->region && p->region_bytes) {
        size_t nb = (p->region_bytes + URING_CHUNK - 1) / URING_CHUNK;
        struct iovec *iov = calloc(nb, sizeof *iov);
        if (iov) {
            for (size_t i = 0; i < nb; i++) {
                iov[i].iov_base = (char *)p->region + i * URING_CHUNK;
                iov[i].iov_len = i + 1 < nb ? URING_CHUNK : p->region_bytes - i * URING_CHUNK;
            }
            if (io_uring_register_buffers(&u->ring, iov, (unsigned)nb) == 0) {
                u->n_bufs = (int)nb;
                u->region = p->region;
                u->region_bytes = p->region_bytes;
                u->chunk = URING_CHUNK;
            }
            free(iov);
        }
    }
    u->base.ops = &uring_ops;
    snprintf(u->base.note, sizeof u->base.note, "io_uring (queue depth %d, %s buffers, %s file)", p->depth,
             u->n_bufs ? "registered" : "unregistered", u->fixed_file ? "registered" : "plain");
    *out = &u->base;
    return 0;
}

/* ---- pread/pwrite worker pool ---- */
typedef struct {
    kvs_tier base;
    int fd, n_workers, stop;
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    kvs_io *head, *tail;
} pool_tier;

static void *pool_worker(void *arg) {
    pool_tier *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->head && !t->stop) pthread_cond_wait(&t->work, &t->mu);
        if (!t->head) break;
        kvs_io *io = t->head;
        t->head = io->next;
        if (!t->head) t->tail = NULL;
        pthread_mutex_unlock(&t->mu);
        ssize_t r = io->op == KVS_OP_READ ? pread(t->fd, io->buf, io->len, (off_t)io->off)
                                          : pwrite(t->fd, io->buf, io->len, (off_t)io->off);
        pthread_mutex_lock(&t->mu);
        io->res = r < 0 ? -errno : r;
        __atomic_store_n(&io->done, 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&t->done);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

static int pool_reserve(kvs_tier *t, uint64_t bytes) { return file_reserve(((pool_tier *)t)->fd, bytes); }

static int pool_submit(kvs_tier *tt, kvs_io **ios, int n) {
    pool_tier *t = (pool_tier *)tt;
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < n; i++) {
        ios[i]->done = 0;
        ios[i]->res = 0;
        ios[i]->next = NULL;
        if (t->tail) t->tail->next = ios[i];
        else t->head = ios[i];
        t->tail = ios[i];
    }
    pthread_cond_broadcast(&t->work);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

static int pool_wait(kvs_tier *tt, kvs_io *io) {
    pool_tier *t = (pool_tier *)tt;
    double t0 = mono_s(); /* poll first, as uring_wait does */
    for (int spins = 1; !__atomic_load_n(&io->done, __ATOMIC_ACQUIRE); spins++)
        if ((spins & 63) == 0 && mono_s() - t0 > KVS_POLL_S) break;
    pthread_mutex_lock(&t->mu);
    while (!io->done) pthread_cond_wait(&t->done, &t->mu);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

static void pool_close(kvs_tier *tt) {
    pool_tier *t = (pool_tier *)tt;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->work);
    pthread_mutex_unlock(&t->mu);
    for (int i = 0; i < t->n_workers; i++) pthread_join(t->workers[i], NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->work);
    pthread_cond_destroy(&t->done);
    close(t->fd);
    free(t->workers);
    free(t);
}

static const kvs_tier_ops pool_ops = {KVS_TIER_VERSION, "threads", pool_reserve, pool_submit, pool_wait,
                                      pool_close};

static int pool_open(int fd, int depth, kvs_tier **out) {
    pool_tier *t = calloc(1, sizeof *t);
    if (!t) return -ENOMEM;
    t->fd = fd;
    t->n_workers = depth < 1 ? 1 : depth > 16 ? 16 : depth;
    t->workers = calloc((size_t)t->n_workers, sizeof *t->workers);
    if (!t->workers) {
        free(t);
        return -ENOMEM;
    }
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->work, NULL);
    pthread_cond_init(&t->done, NULL);
    for (int i = 0; i < t->n_workers; i++)
        if (pthread_create(&t->workers[i], NULL, pool_worker, t)) {
            t->n_workers = i;
            t->fd = -1;
            pool_close(&t->base);
            return -EAGAIN;
        }
    t->base.ops = &pool_ops;
    snprintf(t->base.note, sizeof t->base.note, "threads (%d pread/pwrite workers)", t->n_workers);
    *out = &t->base;
    return 0;
}

/* ---- fault-injecting wrapper (tests) ---- */
typedef struct {
    kvs_tier base;
    kvs_tier *inner;
    kvs_fault f;
    int64_t n_reads, n_reserves;
} fault_tier;

static int hit(const kvs_fault *f, int64_t n) { return n >= f->nth && n < f->nth + f->count; }

static int fault_reserve(kvs_tier *t, uint64_t bytes) {
    fault_tier *w = (fault_tier *)t;
    if (w->f.kind == KVS_FAULT_ENOSPC && hit(&w->f, ++w->n_reserves)) return -ENOSPC;
    return w->inner->ops->reserve(w->inner, bytes);
}
static int fault_submit(kvs_tier *t, kvs_io **ios, int n) {
    fault_tier *w = (fault_tier *)t;
    for (int i = 0; i < n; i++) ios[i]->seen = 0;
    return w->inner->ops->submit(w->inner, ios, n);
}
static int fault_wait(kvs_tier *t, kvs_io *io) {
    fault_tier *w = (fault_tier *)t;
    int rc = w->inner->ops->wait(w->inner, io);
    /* each read is counted once, when its completion is first observed here */
    if (rc || io->op != KVS_OP_READ || io->seen) return rc;
    io->seen = 1;
    if (!hit(&w->f, ++w->n_reads)) return 0;
    if (w->f.kind == KVS_FAULT_CORRUPT && io->res > 0) ((unsigned char *)io->buf)[io->len / 3] ^= 0x10;
    else if (w->f.kind == KVS_FAULT_EIO) io->res = -EIO;
    else if (w->f.kind == KVS_FAULT_SHORT && io->res > 0) io->res /= 2;
    return 0;
}
static void fault_close(kvs_tier *t) {
    fault_tier *w = (fault_tier *)t;
    w->inner->ops->close(w->inner);
    free(w);
}
static const kvs_tier_ops fault_ops = {KVS_TIER_VERSION, "fault", fault_reserve, fault_submit, fault_wait,
                                       fault_close};

int kvs_fault_parse(const char *s, kvs_fault *f) {
    static const char *names[] = {"none", "corrupt", "eio", "short", "enospc", "nouring"};
    memset(f, 0, sizeof *f);
    f->nth = 1, f->count = 1;
    size_t n = strcspn(s, ":");
    int kind = -1;
    for (int i = 0; i < 6; i++)
        if (strlen(names[i]) == n && !strncmp(s, names[i], n)) kind = i;
    if (kind < 0) return mtok_err(MTOK_EUSAGE, "--kv-fault: unknown fault '%.*s' (corrupt|eio|short|enospc|nouring)",
                                  (int)n, s);
    f->kind = (kvs_fault_kind)kind;
    long long a = 1, b = 1;
    if (s[n] == ':' && sscanf(s + n + 1, "%lld:%lld", &a, &b) < 1)
        return mtok_err(MTOK_EUSAGE, "--kv-fault: expected KIND[:NTH[:COUNT]], got '%s'", s);
    if (a < 1 || b < 1) return mtok_err(MTOK_EUSAGE, "--kv-fault: NTH and COUNT must be >= 1");
    f->nth = a, f->count = b;
    return 0;
}

int kvs_tier_open(const kvs_tier_params *p, kvs_tier **out) {
    *out = NULL;
    char path[4096];
    int direct;
    int fd = open_file(p->dir, path, sizeof path, &direct);
    if (fd < 0) return fd;
    kvs_tier_params q = *p;
    if (q.depth <= 0) q.depth = 32;
    kvs_tier *t = NULL;
    int rc = -1;
    const char *step = "";
    char why[200] = "";
    if (q.io != KVS_IO_THREADS) {
        rc = uring_open(&q, fd, &t, &step);
        if (rc < 0) snprintf(why, sizeof why, "%s failed: %s", step, strerror(-rc));
    }
    if (rc < 0) {
        rc = pool_open(fd, q.depth, &t);
        if (rc < 0) {
            close(fd);
            return mtok_err(MTOK_ERESOURCE, "kv cold tier: cannot start the I/O thread pool: %s", strerror(-rc));
        }
        size_t l = strlen(t->note);
        if (q.io == KVS_IO_THREADS) snprintf(t->note + l, sizeof t->note - l, ", forced by --kv-io threads");
        else snprintf(t->note + l, sizeof t->note - l, ", fallback: %s", why);
        if (q.io != KVS_IO_THREADS)
            mtok_log(1, "kv cold tier: io_uring unavailable (%s); falling back to the pread/pwrite thread pool", why);
    }
    snprintf(t->path, sizeof t->path, "%s", path);
    t->direct = direct;
    if (p->fault.kind != KVS_FAULT_NONE && p->fault.kind != KVS_FAULT_NOURING) {
        fault_tier *w = calloc(1, sizeof *w);
        if (!w) {
            t->ops->close(t);
            return mtok_err(MTOK_ERESOURCE, "kv cold tier: out of memory");
        }
        w->base = *t;
        w->base.ops = &fault_ops;
        w->inner = t;
        w->f = p->fault;
        size_t l = strlen(w->base.note);
        snprintf(w->base.note + l, sizeof w->base.note - l, " + test fault injection");
        t = &w->base;
    }
    *out = t;
    return 0;
}

void kvs_io_describe(kvs_io_kind want, char *buf, size_t cap) {
    if (want == KVS_IO_THREADS) {
        snprintf(buf, cap, "threads (pread/pwrite pool, forced by --kv-io threads)");
        return;
    }
    struct io_uring ring;
    int rc = io_uring_queue_init(8, &ring, 0);
    if (rc == 0) {
        io_uring_queue_exit(&ring);
        snprintf(buf, cap, "io_uring (liburing, registered buffers and file)");
    } else {
        snprintf(buf, cap, "threads (pread/pwrite pool; fallback: io_uring_queue_init failed: %s)", strerror(-rc));
    }
}
