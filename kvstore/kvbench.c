/* kvbench.c — raw cold-tier bandwidth (mtok bench kv): the spill pattern of a run, measured through
 * the same tier, slot size, queue depth and checksums. Writes total_bytes as block slots at
 * consecutive 4 KiB-aligned offsets with `depth` requests in flight, then reads them back the same
 * way and verifies every block's XXH3 (a mismatch fails the benchmark). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <xxhash.h>

#include "kvtier.h"
#include "../base/mtok_base.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Runs n requests over a ring of depth buffers, keeping depth in flight. */
static int run_pass(kvs_tier *t, int op, char *region, size_t slot, int depth, uint64_t n, uint64_t *sums,
                    double *secs) {
    kvs_io *ios = calloc((size_t)depth, sizeof *ios);
    uint64_t *which = calloc((size_t)depth, sizeof *which);
    if (!ios || !which) {
        free(ios), free(which);
        return mtok_err(MTOK_ERESOURCE, "bench kv: out of memory");
    }
    int rc = 0;
    double t0 = now_s();
    uint64_t next = 0;
    for (int i = 0; i < depth && next < n; i++, next++) {
        char *buf = region + (size_t)i * slot;
        if (op == KVS_OP_WRITE) {
            memset(buf, (int)(next * 131 + 7), 64);
            memcpy(buf + 64, &next, sizeof next);
            sums[next] = XXH3_64bits(buf, slot);
        }
        ios[i] = (kvs_io){.op = op, .buf = buf, .len = slot, .off = next * slot};
        which[i] = next;
        kvs_io *p = &ios[i];
        if ((rc = t->ops->submit(t, &p, 1)) < 0) break;
    }
    for (uint64_t done = 0; !rc && done < n; done++) {
        int i = (int)(done % (uint64_t)depth);
        t->ops->wait(t, &ios[i]);
        if (ios[i].res != (int64_t)slot) {
            rc = mtok_err(MTOK_ERESOURCE, "bench kv: %s at offset %llu failed (%lld)", op ? "write" : "read",
                          (unsigned long long)ios[i].off, (long long)ios[i].res);
            break;
        }
        if (op == KVS_OP_READ && XXH3_64bits(ios[i].buf, slot) != sums[which[i]]) {
            rc = mtok_err(MTOK_ERESOURCE, "bench kv: checksum mismatch reading block %llu", (unsigned long long)which[i]);
            break;
        }
        if (next < n) {
            char *buf = ios[i].buf;
            if (op == KVS_OP_WRITE) {
                memset(buf, (int)(next * 131 + 7), 64);
                memcpy(buf + 64, &next, sizeof next);
                sums[next] = XXH3_64bits(buf, slot);
            }
            ios[i] = (kvs_io){.op = op, .buf = buf, .len = slot, .off = next * slot};
            which[i] = next++;
            kvs_io *p = &ios[i];
            if ((rc = t->ops->submit(t, &p, 1)) < 0) break;
        }
    }
    *secs = now_s() - t0;
    for (int i = 0; i < depth; i++) /* nothing may stay in flight on error */
        if (ios[i].buf && !ios[i].done) t->ops->wait(t, &ios[i]);
    free(ios);
    free(which);
    return rc < 0 && rc > -4096 && rc != MTOK_ERESOURCE ? mtok_err(MTOK_ERESOURCE, "bench kv: submit failed") : rc;
}

int kvs_bench(const kvs_bench_params *p, kvs_bench_result *r) {
    memset(r, 0, sizeof *r);
    int depth = p->depth > 0 ? p->depth : 32;
    size_t slot = (p->block_bytes + KVS_ALIGN - 1) / KVS_ALIGN * KVS_ALIGN;
    uint64_t n = p->total_bytes / slot;
    if (n < (uint64_t)depth) n = (uint64_t)depth;
    size_t region_bytes = (size_t)depth * slot;
    char *region = mmap(NULL, region_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *sums = calloc(n, sizeof *sums);
    if (region == MAP_FAILED || !sums) {
        if (region != MAP_FAILED) munmap(region, region_bytes);
        free(sums);
        return mtok_err(MTOK_ERESOURCE, "bench kv: out of memory");
    }
    memset(region, 0x5a, region_bytes);
    kvs_tier_params tp = {.dir = p->dir, .io = p->io, .depth = depth, .region = region, .region_bytes = region_bytes};
    kvs_tier *t = NULL;
    int rc = kvs_tier_open(&tp, &t);
    if (!rc && (rc = t->ops->reserve(t, n * slot)) < 0)
        rc = mtok_err(MTOK_ERESOURCE, "bench kv: cannot reserve %llu bytes in %s", (unsigned long long)(n * slot),
                      t->path);
    if (!rc) rc = run_pass(t, KVS_OP_WRITE, region, slot, depth, n, sums, &r->write_s);
    if (!rc) rc = run_pass(t, KVS_OP_READ, region, slot, depth, n, sums, &r->read_s);
    if (!rc) {
        double bytes = (double)n * (double)slot;
        r->write_gbs = bytes / r->write_s / 1e9;
        r->read_gbs = bytes / r->read_s / 1e9;
        r->write_iops = (double)n / r->write_s;
        r->read_iops = (double)n / r->read_s;
        r->blocks = n;
        r->slot_bytes = slot;
        r->depth = depth;
        snprintf(r->io, sizeof r->io, "%s", t->note);
    }
    if (t) t->ops->close(t);
    munmap(region, region_bytes);
    free(sums);
    return rc;
}
