/* kvtier.h — the tiers of the KV store as tables of function pointers (in the manner of SQLite's
 * VFS and Redis's rio), private to kvstore/. The store is a chain of tiers, fastest first:
 *
 *     hot tier (kvs_hot_ops: block slots in one memory space, under a budget)
 *       └─> cold tier (kvs_tier_ops: one file, asynchronous block I/O at 4 KiB-aligned offsets)
 *
 * Today the chain is host RAM (kvhot.c) above a file (kvtier.c: io_uring, a pread/pwrite worker pool,
 * and a fault-injecting wrapper used by tests). kvstore.c holds the policies (which block lives where,
 * eviction, the read plan) and reaches memory and storage only through these tables; every block
 * records the memory space of the slot it occupies (mtok_mem, kvstore.h), and so does every kvs_block
 * attention receives. A device (HBM) tier is another kvs_hot_ops with mem = MTOK_MEM_DEVICE placed
 * above the host tier: docs/KVSTORE.md, "Tier chain". */
#ifndef MTOK_KVTIER_H
#define MTOK_KVTIER_H

#include <stddef.h>
#include <stdint.h>

#include "kvstore.h"

#define KVS_TIER_VERSION 1
#define KVS_HOT_VERSION 1
#define KVS_ALIGN 4096

/* ---- hot tier: fixed-size block slots in one memory space ---- */
typedef struct kvs_hot kvs_hot;
typedef struct {
    int version; /* KVS_HOT_VERSION */
    const char *name;
    /* A free slot, as its address in the tier's memory space, or NULL: every slot the budget allows
     * is taken (or memory ran out growing an unlimited tier). */
    void *(*alloc)(kvs_hot *h);
    /* Gives back a slot alloc handed out; never fails. */
    void (*release)(kvs_hot *h, void *slot);
    /* Staging slot i (0 <= i < n_stage): fixed for the tier's life, where reads from the tier below
     * land before attention reads them in place. */
    void *(*stage)(kvs_hot *h, int i);
    /* An address through which the host reads and writes the slot's bytes (rows written by
     * kvs_write, checksums, kvs_read_block): the slot itself for host memory. */
    void *(*map)(kvs_hot *h, void *slot);
    /* Frees the tier's memory (no slot may be in use by I/O). */
    void (*close)(kvs_hot *h);
} kvs_hot_ops;

struct kvs_hot {
    const kvs_hot_ops *ops;
    mtok_mem mem;        /* the space slot and staging addresses point into */
    size_t slot_bytes;  /* a multiple of KVS_ALIGN */
    int64_t cap;        /* slots alloc may hand out at once (INT64_MAX: unlimited) */
    int64_t used;       /* slots handed out now */
    uint64_t mapped;    /* bytes of memory the tier holds (slots mapped so far + staging) */
    void *region;       /* one mapping of every slot and staging slot, for the tier below to register
                         * (fixed-buffer I/O); NULL where slots are not one mapping */
    size_t region_bytes;
    char note[160];     /* how it was set up */
};

typedef struct {
    mtok_mem mem;        /* MTOK_MEM_HOST (the only space implemented) */
    size_t slot_bytes;  /* a multiple of KVS_ALIGN */
    int64_t slots;      /* slots the budget allows (0: unlimited, mapped as the context grows) */
    int n_stage;        /* staging slots */
} kvs_hot_params;

/* Creates the hot tier of p->mem (kvhot.c). */
int kvs_hot_open(const kvs_hot_params *p, kvs_hot **out);

/* ---- cold tier: one file ---- */

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
