/* kvhot.c — the host-RAM memory tier behind kvs_hot_ops (kvtier.h): fixed-size block slots and the
 * staging slots where cold reads land.
 *
 *  budgeted (kvs_hot_params.slots > 0): one anonymous mapping of slots + n_stage slot-sized pieces,
 *           the hot slots first and the staging slots after them, bound to the NUMA node(s) of the
 *           creating thread and advised for huge pages. The mapping is the tier's region: the cold
 *           tier registers it for fixed-buffer io_uring, so evictions write from and reads land in it.
 *  unlimited (slots == 0): slots are carved as the context grows from chunks of whole 2 MiB pages
 *           (grow); the staging slots are one aligned allocation. Nothing below registers them.
 * The free list has room for every slot there is, so release never fails. */
#include <errno.h>
#include <hwloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kvtier.h"
#include "../base/mtok_base.h"

#define KVS_HUGE ((size_t)2 << 20)  /* a transparent huge page */
#define KVS_CHUNK ((size_t)8 << 20) /* unlimited mode maps slots this many bytes at a time (grow) */

typedef struct {
    kvs_hot base;
    char *arena; /* budgeted: the one mapping (== base.region) */
    char *stage; /* the staging slots: inside the arena, or their own allocation */
    int n_stage;
    void **free; /* room for every slot there is */
    int64_t n_free, cap_free;
    char **chunks; /* unlimited: the slots' memory, chunk_bytes each */
    int64_t n_chunks;
    size_t chunk_bytes;
} host_tier;

/* Binds the arena to the NUMA node(s) nearest the CPUs this thread may run on (hwloc), so blocks
 * land in local memory on first touch. Best effort: where the kernel or the topology cannot tell,
 * pages go wherever the default policy puts them, and the log says so. */
static void bind_arena_local(void *arena, size_t bytes) {
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo)) return;
    hwloc_bitmap_t cpus = hwloc_bitmap_alloc();
    if (hwloc_topology_load(topo) == 0 && cpus && hwloc_get_cpubind(topo, cpus, HWLOC_CPUBIND_THREAD) == 0) {
        int nodes = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
        if (hwloc_set_area_membind(topo, arena, bytes, cpus, HWLOC_MEMBIND_BIND, 0) == 0)
            mtok_log(2, "kv cache: hot arena bound to the NUMA node(s) of this thread's CPUs (%d node%s)", nodes,
                     nodes == 1 ? "" : "s");
        else
            mtok_log(2, "kv cache: NUMA binding of the hot arena unavailable (%s); default placement",
                     strerror(errno));
    }
    hwloc_bitmap_free(cpus);
    hwloc_topology_destroy(topo);
}

/* Unlimited mode: slots are carved from chunks of whole 2 MiB pages advised for transparent huge
 * pages. Decode attention reads every block of a layer for each token; with 4 KiB pages a 128 KiB
 * block costs 32 TLB misses and as many restarts of the hardware prefetchers, which stop at page
 * edges (docs/PERFORMANCE.md, "Why the kernels look like this"). Chunks are mapped as the context
 * grows and unmapped by close. */
static int grow(host_tier *t) {
    const size_t slot = t->base.slot_bytes;
    const int64_t per = (int64_t)(t->chunk_bytes / slot);
    char **nc = realloc(t->chunks, (size_t)(t->n_chunks + 1) * sizeof *nc);
    if (!nc) return -1;
    t->chunks = nc;
    void **nf = realloc(t->free, (size_t)(t->cap_free + per) * sizeof *nf);
    if (!nf) return -1;
    t->free = nf, t->cap_free += per;
    /* map one huge page more and trim, so the chunk starts on a 2 MiB boundary */
    char *m = mmap(NULL, t->chunk_bytes + KVS_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    const size_t head = (KVS_HUGE - (uintptr_t)m % KVS_HUGE) % KVS_HUGE;
    if (head) munmap(m, head);
    munmap(m + head + t->chunk_bytes, KVS_HUGE - head); /* head < KVS_HUGE: never empty */
    m += head;
    madvise(m, t->chunk_bytes, MADV_HUGEPAGE); /* a hint: refused where THP is off, and that is fine */
    t->chunks[t->n_chunks++] = m;
    t->base.mapped += t->chunk_bytes;
    for (int64_t i = per - 1; i >= 0; i--) t->free[t->n_free++] = m + i * slot;
    return 0;
}

static void *host_alloc(kvs_hot *h) {
    host_tier *t = (host_tier *)h;
    if (!t->n_free && !t->arena) grow(t); /* a failure leaves the list empty: NULL below */
    if (!t->n_free) return NULL;
    h->used++;
    return t->free[--t->n_free];
}

static void host_release(kvs_hot *h, void *slot) {
    host_tier *t = (host_tier *)h;
    t->free[t->n_free++] = slot;
    h->used--;
}

static void *host_stage(kvs_hot *h, int i) {
    host_tier *t = (host_tier *)h;
    return t->stage + (size_t)i * h->slot_bytes;
}

static void *host_map(kvs_hot *h, void *slot) {
    (void)h;
    return slot; /* host memory: the slot is its own host address */
}

static void host_close(kvs_hot *h) {
    host_tier *t = (host_tier *)h;
    if (t->arena) {
        munmap(t->arena, h->region_bytes);
    } else {
        for (int64_t i = 0; i < t->n_chunks; i++) munmap(t->chunks[i], t->chunk_bytes);
        free(t->chunks), free(t->stage);
    }
    free(t->free);
    free(t);
}

static const kvs_hot_ops host_ops = {KVS_HOT_VERSION, "host", host_alloc, host_release, host_stage, host_map,
                                     host_close};

int kvs_hot_open(const kvs_hot_params *p, kvs_hot **out) {
    *out = NULL;
    if (p->mem != MTOK_MEM_HOST || !p->slot_bytes || p->slot_bytes % KVS_ALIGN || p->slots < 0 || p->n_stage < 0)
        return mtok_err(MTOK_EINTERNAL, "kv hot tier: unsupported memory space %d or slot geometry", (int)p->mem);
    host_tier *t = calloc(1, sizeof *t);
    if (!t) return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory for the hot tier");
    kvs_hot *h = &t->base;
    h->ops = &host_ops;
    h->mem = MTOK_MEM_HOST;
    h->slot_bytes = p->slot_bytes;
    h->cap = p->slots ? p->slots : INT64_MAX;
    t->n_stage = p->n_stage;
    const size_t slot = p->slot_bytes, stage_bytes = (size_t)p->n_stage * slot;
    if (p->slots) {
        const size_t bytes = (size_t)p->slots * slot + stage_bytes;
        /* pages are touched only as blocks are written; MAP_NORESERVE keeps RSS = what is used */
        t->arena = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (t->arena == MAP_FAILED) {
            t->arena = NULL;
            goto oom;
        }
        h->region = t->arena, h->region_bytes = h->mapped = bytes;
        bind_arena_local(t->arena, bytes);
        madvise(t->arena, bytes, MADV_HUGEPAGE); /* see grow; a hint, refused where THP is off */
        t->cap_free = p->slots;
        if (!(t->free = malloc((size_t)p->slots * sizeof *t->free))) goto oom;
        for (int64_t i = p->slots - 1; i >= 0; i--) t->free[t->n_free++] = t->arena + (size_t)i * slot;
        t->stage = t->arena + (size_t)p->slots * slot;
        snprintf(h->note, sizeof h->note, "host arena of %lld slots + %d staging", (long long)p->slots, p->n_stage);
    } else {
        /* ~8 MiB of slots per chunk, rounded up to whole huge pages */
        t->chunk_bytes = ((slot < KVS_CHUNK ? KVS_CHUNK / slot : 1) * slot + KVS_HUGE - 1) / KVS_HUGE * KVS_HUGE;
        if (stage_bytes && !(t->stage = aligned_alloc(KVS_ALIGN, stage_bytes))) goto oom;
        h->mapped = stage_bytes;
        snprintf(h->note, sizeof h->note, "host chunks of %zu bytes, grown on demand", t->chunk_bytes);
    }
    *out = h;
    return 0;
oom:
    host_close(h);
    return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory for the block tables and the hot arena");
}
