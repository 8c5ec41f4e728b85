/* kvtier.h — the cold tier as a table of function pointers (in the manner of SQLite's VFS and
 * Redis's rio): one file, asynchronous block reads and writes at 4 KiB-aligned offsets, space
 * reservation. Implementations (kvtier.c): io_uring (liburing, registered buffers and file, batched
 * submissions), a pread/pwrite worker pool, and a fault-injecting wrapper used by tests. */
#ifndef MTOK_KVTIER_H
#define MTOK_KVTIER_H

#include <stddef.h>
#include <stdint.h>

#include "kvstore.h"

#define KVS_TIER_VERSION 1
#define KVS_ALIGN 4096

enum { KVS_OP_READ = 0, KVS_OP_WRITE = 1 };

/* One request. The tier sets res (bytes transferred or -errno) and then done. */
typedef struct kvs_io {
    int op;
    void *buf; /* KVS_ALIGN-aligned, inside a registered region when one was given */
    size_t len;
    uint64_t off;
    int64_t res;
    volatile int done;
    struct kvs_io *next; /* tier-private queue link */
    int seen;            /* fault wrapper: completion already counted */
} kvs_io;

typedef struct kvs_tier kvs_tier;
typedef struct {
    int version; /* KVS_TIER_VERSION */
    const char *name;
    /* Makes [0, bytes) of the file allocated (fallocate); 0 or -errno. */
    int (*reserve)(kvs_tier *t, uint64_t bytes);
    /* Queues n requests and submits them as one batch; 0 or -errno. */
    int (*submit)(kvs_tier *t, kvs_io **ios, int n);
    /* Blocks until io is done (completions of other requests are recorded on the way). */
    int (*wait)(kvs_tier *t, kvs_io *io);
    /* Closes the file and frees the tier (waits for requests in flight). */
    void (*close)(kvs_tier *t);
} kvs_tier_ops;

struct kvs_tier {
    const kvs_tier_ops *ops;
    char path[4096];  /* for messages (the file is unlinked once open) */
    char note[160];   /* how it was set up (backend, flags, fallback reason) */
    int direct;       /* O_DIRECT in effect */
};

typedef struct {
    const char *dir;
    kvs_io_kind io;
    int depth;
    void *region;       /* memory to register for fixed-buffer I/O (may be NULL) */
    size_t region_bytes;
    kvs_fault fault;
} kvs_tier_params;

/* Creates the cold-tier file in dir and the I/O backend (io_uring, falling back to threads). */
int kvs_tier_open(const kvs_tier_params *p, kvs_tier **out);

#endif
