/* kvstore.c — the tiered, paged KV cache: the policies over the tier chain.
 *
 * Implementation notes (in the manner of SQLite's pager.c). The block states, their transitions and
 * the invariants are the contract in kvstore.h; the tiers are method tables (kvtier.h): the hot tier
 * (kvhot.c) hands out slots, the cold tier (kvtier.c) moves them to and from the file. This file
 * decides which block lives where.
 *
 *  - Block table: per (layer, b) the state, the hot slot and its memory space, the cold slot, the
 *    XXH3-64 of the cold copy and whether the hot copy changed since (dirty). Slots hold K and V
 *    token-major or, when B is a multiple of 16, per group with K in the decode kernel's 16-key
 *    panels (kvlayout.h; kvs_read_block hands out rows either way).
 *  - Sizing (kvs_create): budget / slot_bytes slots; the staging ring takes a quarter, 16..64 slots,
 *    plus one bounce slot for kvs_read_block; the rest are hot slots, an equal quota per layer. The
 *    hot tier maps them as one region, which the cold tier registers for fixed-buffer I/O.
 *  - Cold slots are reserved with fallocate in growth steps (1 MiB, then doubling, 64 MiB at most)
 *    before any write lands in them (alloc_cold); freed slots are reused first.
 *  - Eviction (evict) writes up to 16 of the layer's oldest hot blocks past the sinks as one batch,
 *    at most half the quota at once; a block dropped by the window policy is released, not written.
 *  - Reads in flight target staging slots only. make_hot of a COLD block first waits for every read
 *    in flight and forgets staged copies of that block (unstage); kvs_truncate/kvs_reset drop the
 *    plan after waiting; so no slot is rewritten under a read and no stale read-ahead is handed out.
 *  - Key summaries (topk policy, kvsummary.c): write_rows widens a block's summary per row
 *    (restarting from the kept rows when a write starts inside a block below n_tok), kvs_truncate
 *    recomputes a cut block (reading it back if cold), and a loader may hold maintenance off while it
 *    installs saved summaries.
 *  - kvs_plan queues a range of blocks, kvs_plan_blocks an explicit ascending list (the topk policy's
 *    chosen blocks); both feed the same ordered plan and staging ring. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kvstore.h"
#include "kvtier.h"
#include "kvsummary.h"
#include "kvlayout.h"
#include "../base/mtok_base.h"
#include "../kernels/kernels.h"

enum { BLK_EMPTY = 0, BLK_HOT, BLK_COLD, BLK_DROPPED };
enum { ST_FREE = 0, ST_INFLIGHT, ST_HELD };

typedef struct {
    uint16_t *hot; /* the hot tier's slot (an address in memory space mem) or NULL */
    int64_t cold;  /* cold slot or -1 */
    uint64_t sum;  /* XXH3-64 of the cold copy */
    uint8_t state, dirty, mem;
} kvs_blk;

typedef struct {
    kvs_io io;
    uint16_t *buf;
    int64_t plan_idx;
    int state, stale;
} kvs_stage;

typedef struct {
    int64_t layer, b;
} plan_item;

struct kvs_cache {
    kvs_params p;
    int64_t B, row, n_blocks, sink_blocks;
    size_t data_bytes, slot_bytes;
    kvs_blk *blk;   /* [n_layers][n_blocks] */
    int64_t *n_tok; /* [n_layers] */
    /* the tier chain: hot (slots in one memory space) above cold (the file; NULL without a budget) */
    kvs_hot *hot;
    int64_t quota; /* hot blocks per layer (INT64_MAX: unlimited) */
    int64_t *n_hot;
    kvs_tier *tier;
    int64_t *free_cold, n_free_cold, cap_free_cold, next_cold;
    uint64_t reserved;
    /* streaming */
    plan_item *plan;
    int64_t plan_n, plan_cap, plan_head, plan_sub;
    kvs_stage *ring;
    int R;
    uint16_t *bounce; /* one staging slot for kvs_read_block */
    int kp;           /* grouped layout: K in 16-key panels, V per group (B % 16 == 0, kvlayout.h) */
    uint16_t *krow;   /* 2 rows of scratch: the K or V row being written, a K row read back */
    kvs_sumtab *sum;  /* block key summaries (topk policy), else NULL */
    int sum_hold;     /* 1 while a loader installs saved summaries */
    kvs_stats st;
};

static kvs_blk *BLK(kvs_cache *c, int64_t l, int64_t b) { return &c->blk[l * c->n_blocks + b]; }
/* The host address of a hot block's slot: where kvs_write puts rows, checksums and cold I/O read
 * them (the slot itself in host memory; a device tier maps it, kvtier.h). */
static uint16_t *HOT(kvs_cache *c, const kvs_blk *k) { return c->hot->ops->map(c->hot, k->hot); }
static uint64_t cold_off(const kvs_cache *c, int64_t slot) { return (uint64_t)slot * c->slot_bytes; }
static uint64_t sum_of(const kvs_cache *c, const void *data) { return XXH3_64bits(data, c->data_bytes); }

/* ---- setup ---- */
int kvs_create(const kvs_params *p, kvs_cache **out) {
    *out = NULL;
    if (p->n_layers <= 0 || p->n_kv_groups <= 0 || p->head_dim <= 0 || p->ctx <= 0 || p->block_tokens <= 0)
        return mtok_err(MTOK_EUSAGE, "kv cache: invalid parameters (layers %lld, groups %lld, ctx %lld, block %lld)",
                        (long long)p->n_layers, (long long)p->n_kv_groups, (long long)p->ctx,
                        (long long)p->block_tokens);
    /* Sizes below are products of these; reject what would overflow (or divide by a wrapped zero)
     * before anything is allocated. The command line checks its ranges too; this guards the library. */
    int64_t n_blocks, table, row, data;
    if (p->block_tokens > KVS_MAX_BLOCK_TOKENS)
        return mtok_err(MTOK_EUSAGE, "kv cache: --kv-block %lld is out of range [1, %d]", (long long)p->block_tokens,
                        KVS_MAX_BLOCK_TOKENS);
    n_blocks = p->ctx / p->block_tokens + (p->ctx % p->block_tokens != 0);
    if (__builtin_mul_overflow(p->n_layers, n_blocks, &table) || table > ((int64_t)1 << 40) ||
        __builtin_mul_overflow(p->n_kv_groups, p->head_dim, &row) ||
        __builtin_mul_overflow(4 * p->block_tokens, row, &data) || data > ((int64_t)1 << 40))
        return mtok_err(MTOK_EUSAGE, "kv cache: %lld layers x %lld blocks of %lld tokens x %lld groups x %lld dims "
                        "is too large to address", (long long)p->n_layers, (long long)n_blocks,
                        (long long)p->block_tokens, (long long)p->n_kv_groups, (long long)p->head_dim);
    if (p->sinks < 0 || p->sinks > ((int64_t)1 << 40) || p->window < 0 || p->window > ((int64_t)1 << 40))
        return mtok_err(MTOK_EUSAGE, "kv cache: --kv-sinks %lld and --kv-window %lld must lie in [0, 2^40]",
                        (long long)p->sinks, (long long)p->window);
    kvs_cache *c = calloc(1, sizeof *c);
    if (!c) return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory");
    int rc = MTOK_ERESOURCE;
    c->p = *p;
    c->B = p->block_tokens;
    c->row = p->n_kv_groups * p->head_dim;
    c->kp = c->B % 16 == 0;
    c->n_blocks = (p->ctx + c->B - 1) / c->B;
    c->data_bytes = 2 * (size_t)c->B * (size_t)c->row * sizeof(uint16_t);
    c->slot_bytes = (c->data_bytes + KVS_ALIGN - 1) / KVS_ALIGN * KVS_ALIGN;
    c->sink_blocks = (p->sinks + c->B - 1) / c->B;
    if (c->sink_blocks > c->n_blocks) c->sink_blocks = c->n_blocks; /* sinks past the context: every block */
    c->blk = calloc((size_t)(p->n_layers * c->n_blocks), sizeof *c->blk);
    c->n_tok = calloc((size_t)p->n_layers, sizeof *c->n_tok);
    c->n_hot = calloc((size_t)p->n_layers, sizeof *c->n_hot);
    c->krow = malloc((size_t)(2 * c->row) * sizeof *c->krow);
    if (!c->blk || !c->n_tok || !c->n_hot || !c->krow) goto oom;
    for (int64_t i = 0; i < p->n_layers * c->n_blocks; i++) c->blk[i].cold = -1;
    if (p->policy == KVS_POLICY_TOPK && (rc = kvsum_create(p->n_layers, c->n_blocks, c->row, &c->sum))) goto fail;
    c->quota = INT64_MAX;
    c->st.io = "none";
    c->st.io_note = "no --kv-budget: every block stays in RAM";
    kvs_hot_params hp = {.mem = MTOK_MEM_HOST, .slot_bytes = c->slot_bytes, .slots = 0, .n_stage = 1};
    if (p->budget) {
        const size_t slot_bytes = c->slot_bytes;
        int64_t slots = (int64_t)(p->budget / c->slot_bytes);
        int64_t min_q = c->sink_blocks + 2;
        /* staging ring: a quarter of the budget, 16..64 blocks; hot slots: the rest, but at least
         * sinks + 2 per layer. A tiny budget is exceeded by at most the 16-block ring. */
        int64_t R = slots / 4;
        R = R < 16 ? 16 : R > 64 ? 64 : R;
        if (slots < p->n_layers * min_q) {
            kvs_free(c);
            return mtok_err(MTOK_EUSAGE, "--kv-budget %llu bytes is too small: it must hold at least %lld bytes "
                            "(%lld layers x %lld hot blocks of %zu bytes; --kv-block %lld)",
                            (unsigned long long)p->budget,
                            (long long)(p->n_layers * min_q * (int64_t)slot_bytes), (long long)p->n_layers,
                            (long long)min_q, slot_bytes, (long long)p->block_tokens);
        }
        c->R = (int)R;
        c->quota = (slots - R) / p->n_layers;
        if (c->quota < min_q) c->quota = min_q;
        hp.slots = c->quota * p->n_layers;
        hp.n_stage = c->R + 1; /* the ring, then the bounce slot */
    }
    if ((rc = kvs_hot_open(&hp, &c->hot))) goto fail;
    if (c->R && !(c->ring = calloc((size_t)c->R, sizeof *c->ring))) goto oom;
    for (int i = 0; i < c->R; i++) c->ring[i].buf = c->hot->ops->stage(c->hot, i);
    c->bounce = c->hot->ops->stage(c->hot, c->R);
    if (p->budget) {
        kvs_tier_params tp = {p->dir, p->io, p->depth, c->hot->region, c->hot->region_bytes, p->fault};
        if ((rc = kvs_tier_open(&tp, &c->tier))) goto fail;
        c->st.io = c->tier->ops == NULL ? "?" : (strstr(c->tier->note, "io_uring") == c->tier->note ? "io_uring"
                                                                                                      : "threads");
        c->st.io_note = c->tier->note;
        mtok_log(1, "kv: hot tier %.1f MiB (%lld blocks/layer of %zu bytes, %d staging), cold tier %s via %s",
                 (double)p->budget / (1 << 20), (long long)c->quota, c->slot_bytes, c->R, c->tier->path,
                 c->tier->note);
    }
    *out = c;
    return 0;
oom:
    mtok_err(MTOK_ERESOURCE, "kv cache: out of memory for the block tables");
fail:
    kvs_free(c);
    return rc;
}

void kvs_free(kvs_cache *c) {
    if (!c) return;
    if (c->tier) c->tier->ops->close(c->tier); /* waits for requests in flight */
    if (c->hot) c->hot->ops->close(c->hot); /* after the tier below: no I/O is left into its slots */
    free(c->free_cold), free(c->plan), free(c->ring);
    free(c->blk), free(c->n_tok), free(c->n_hot), free(c->krow);
    kvsum_free(c->sum);
    free(c);
}

/* ---- slots ---- */
static void release_hot(kvs_cache *c, int64_t layer, kvs_blk *k) {
    if (!k->hot) return;
    c->hot->ops->release(c->hot, k->hot);
    k->hot = NULL;
    c->n_hot[layer]--;
}

static void release_cold(kvs_cache *c, kvs_blk *k) {
    if (k->cold < 0) return;
    if (c->n_free_cold == c->cap_free_cold) {
        int64_t nc = c->cap_free_cold ? 2 * c->cap_free_cold : 256;
        int64_t *nv = realloc(c->free_cold, (size_t)nc * sizeof *nv);
        if (!nv) { /* the slot leaks until the cache is freed; nothing else breaks */
            k->cold = -1;
            return;
        }
        c->free_cold = nv, c->cap_free_cold = nc;
    }
    c->free_cold[c->n_free_cold++] = k->cold;
    k->cold = -1;
}

static int alloc_cold(kvs_cache *c, int64_t *slot) {
    if (c->n_free_cold) {
        *slot = c->free_cold[--c->n_free_cold];
        return 0;
    }
    uint64_t need = cold_off(c, c->next_cold + 1);
    if (need > c->reserved) {
        /* grow by what is reserved so far (1 MiB first, 64 MiB at most per step) */
        uint64_t step = c->reserved < ((uint64_t)1 << 20) ? (uint64_t)1 << 20 : c->reserved;
        if (step > (uint64_t)64 << 20) step = (uint64_t)64 << 20;
        if (step < 16 * c->slot_bytes) step = 16 * c->slot_bytes;
        uint64_t want = (need + step - 1) / step * step;
        int rc = c->tier->ops->reserve(c->tier, want);
        if (rc < 0)
            return mtok_err(MTOK_ERESOURCE, "kv cold tier: cannot reserve %llu bytes for spilled blocks in %s: %s "
                            "(free space on --kv-dir, or raise --kv-budget)", (unsigned long long)want,
                            c->tier->path, strerror(-rc));
        c->reserved = want;
    }
    *slot = c->next_cold++;
    return 0;
}

/* Waits for io and checks it transferred everything; retries once. */
static int io_finish(kvs_cache *c, kvs_io *io, int64_t layer, int64_t b) {
    c->tier->ops->wait(c->tier, io);
    if (io->res == (int64_t)io->len) return 0;
    int64_t first = io->res;
    kvs_io *p = io;
    int rc = c->tier->ops->submit(c->tier, &p, 1);
    if (!rc) c->tier->ops->wait(c->tier, io);
    if (!rc && io->res == (int64_t)io->len) {
        mtok_log(1, "kv cold tier: %s of layer %lld block %lld at offset %llu retried after %s", 
                 io->op == KVS_OP_READ ? "read" : "write", (long long)layer, (long long)b,
                 (unsigned long long)io->off, first < 0 ? strerror((int)-first) : "a short transfer");
        return 0;
    }
    char why[96];
    int64_t r = rc ? rc : io->res;
    if (r < 0) snprintf(why, sizeof why, "%s", strerror((int)-r));
    else snprintf(why, sizeof why, "short transfer: %lld of %zu bytes", (long long)r, io->len);
    return mtok_err(MTOK_ERESOURCE, "kv cold tier: %s of layer %lld block %lld failed twice (%s) in %s at offset %llu",
                    io->op == KVS_OP_READ ? "read" : "write", (long long)layer, (long long)b, why, c->tier->path,
                    (unsigned long long)io->off);
}

static int verify(kvs_cache *c, const void *data, int64_t layer, int64_t b) {
    kvs_blk *k = BLK(c, layer, b);
    if (sum_of(c, data) == k->sum) return 0;
    return mtok_err(MTOK_ERESOURCE, "kv cold tier: checksum mismatch in layer %lld block %lld (file %s, offset %llu): "
                    "the spilled block is corrupt", (long long)layer, (long long)b, c->tier->path,
                    (unsigned long long)cold_off(c, k->cold));
}

/* Waits for every staged read in flight (they stay valid). */
static void drain_reads(kvs_cache *c) {
    for (int i = 0; i < c->R; i++)
        if (c->ring[i].state != ST_FREE) c->tier->ops->wait(c->tier, &c->ring[i].io);
}

/* Forgets every staged copy of block b of a layer. Called when the block is about to change: a
 * read-ahead staged before a rewrite holds the old bytes, and once the rewritten block is evicted
 * again it would be verified against the new checksum and reported corrupt (or, worse, match an
 * identical rewrite and hide nothing). kvs_stream_next reads an unstaged cold block on demand. */
static void unstage(kvs_cache *c, int64_t layer, int64_t b) {
    for (int i = 0; i < c->R; i++) {
        kvs_stage *s = &c->ring[i];
        if (s->state == ST_FREE || s->plan_idx >= c->plan_n) continue;
        if (c->plan[s->plan_idx].layer != layer || c->plan[s->plan_idx].b != b) continue;
        if (s->state == ST_INFLIGHT) c->tier->ops->wait(c->tier, &s->io);
        s->state = ST_FREE;
    }
}

static void drop_plan(kvs_cache *c) {
    if (c->tier) drain_reads(c);
    for (int i = 0; i < c->R; i++) c->ring[i].state = ST_FREE;
    c->plan_n = c->plan_head = c->plan_sub = 0;
}

/* ---- eviction: hot → cold (or dropped) for up to 16 of the layer's oldest hot blocks past the sinks ---- */
static int evict(kvs_cache *c, int64_t layer, int64_t keep_b, int64_t cur_pos) {
    int64_t victims[16];
    int nv = 0;
    int64_t end = (c->n_tok[layer] + c->B - 1) / c->B; /* blocks of this write may lie past n_tok */
    if (end < keep_b) end = keep_b;
    for (int64_t b = c->sink_blocks; b < end && nv < 16; b++) {
        kvs_blk *k = BLK(c, layer, b);
        if (k->state == BLK_HOT && b != keep_b) victims[nv++] = b;
    }
    if (!nv)
        return mtok_err(MTOK_EINTERNAL, "kv cache: layer %lld is over its hot quota with nothing to evict",
                        (long long)layer);
    /* keep the evictions that make room, not more than half the layer's quota at once */
    int64_t limit = c->quota / 2 > 0 ? c->quota / 2 : 1;
    if (nv > limit) nv = (int)limit;
    kvs_io ios[16];
    kvs_io *sub[16];
    int ns = 0;
    for (int i = 0; i < nv; i++) {
        kvs_blk *k = BLK(c, layer, victims[i]);
        int outside = c->p.policy == KVS_POLICY_WINDOW && (victims[i] + 1) * c->B <= cur_pos - c->p.window;
        if (outside) {
            release_cold(c, k);
            continue;
        }
        if (!k->dirty && k->cold >= 0) continue; /* clean copy on disk already */
        if (k->cold < 0) {
            int rc = alloc_cold(c, &k->cold);
            if (rc) return rc;
        }
        k->sum = sum_of(c, HOT(c, k));
        ios[ns] = (kvs_io){.op = KVS_OP_WRITE, .buf = HOT(c, k), .len = c->slot_bytes, .off = cold_off(c, k->cold)};
        sub[ns] = &ios[ns];
        ns++;
    }
    if (ns) {
        int rc = c->tier->ops->submit(c->tier, sub, ns);
        if (rc < 0)
            return mtok_err(MTOK_ERESOURCE, "kv cold tier: submitting %d writes to %s failed: %s", ns, c->tier->path,
                            strerror(-rc));
        int err = 0;
        for (int i = 0, j = 0; i < nv; i++) {
            kvs_blk *k = BLK(c, layer, victims[i]);
            if (j < ns && sub[j]->buf == HOT(c, k)) {
                if (!err && (err = io_finish(c, sub[j], layer, victims[i]))) {
                    for (int q = j + 1; q < ns; q++) c->tier->ops->wait(c->tier, sub[q]);
                }
                j++;
                if (err) continue;
                c->st.spill_writes++;
                c->st.bytes_written += c->slot_bytes;
            }
        }
        if (err) return err;
    }
    for (int i = 0; i < nv; i++) {
        kvs_blk *k = BLK(c, layer, victims[i]);
        release_hot(c, layer, k);
        k->dirty = 0;
        if (k->cold >= 0) {
            k->state = BLK_COLD;
        } else {
            k->state = BLK_DROPPED;
            c->st.dropped++;
        }
    }
    return 0;
}

/* Makes block b of a layer hot and writable. */
static int make_hot(kvs_cache *c, int64_t layer, int64_t b, int64_t cur_pos) {
    kvs_blk *k = BLK(c, layer, b);
    if (k->state == BLK_HOT) return 0;
    while (c->n_hot[layer] >= c->quota) {
        int rc = evict(c, layer, b, cur_pos);
        if (rc) return rc;
    }
    uint16_t *mem = c->hot->ops->alloc(c->hot);
    if (!mem)
        return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory allocating block %lld of layer %lld", (long long)b,
                        (long long)layer);
    if (k->state == BLK_COLD) { /* rewriting a spilled block (after a truncate): load it first */
        drain_reads(c);
        unstage(c, layer, b);
        kvs_io io = {.op = KVS_OP_READ, .buf = c->hot->ops->map(c->hot, mem), .len = c->slot_bytes,
                     .off = cold_off(c, k->cold)};
        kvs_io *p = &io;
        int rc = c->tier->ops->submit(c->tier, &p, 1);
        if (!rc) rc = io_finish(c, &io, layer, b);
        else rc = mtok_err(MTOK_ERESOURCE, "kv cold tier: read submit failed: %s", strerror(-rc));
        if (!rc) rc = verify(c, io.buf, layer, b);
        if (rc) {
            c->hot->ops->release(c->hot, mem);
            return rc;
        }
        c->st.spill_reads++;
        c->st.bytes_read += c->slot_bytes;
    } else {
        release_cold(c, k);
    }
    k->hot = mem;
    k->mem = (uint8_t)c->hot->mem;
    k->state = BLK_HOT;
    k->dirty = 1;
    c->n_hot[layer]++;
    return 0;
}

void kvs_reset(kvs_cache *c) { kvs_truncate(c, 0); }

/* Where a truncate to n tokens can really leave the window policy. Queries from n on attend the
 * sinks and the blocks ending after n - window; a block the policy dropped in the longer run may lie
 * there now, its rows gone. Then keep only what precedes the first dropped block: every query after
 * that attends what it would have attended in a fresh run (the dropped blocks are one range after
 * the sinks, so this is also the fixpoint of the rule). */
static int64_t window_keep(const kvs_cache *c, int64_t n) {
    if (c->p.policy != KVS_POLICY_WINDOW) return n;
    int64_t first = INT64_MAX, needed = 0;
    for (int64_t l = 0; l < c->p.n_layers; l++)
        for (int64_t b = c->sink_blocks; b * c->B < n && b * c->B < c->n_tok[l]; b++)
            if (BLK((kvs_cache *)c, l, b)->state == BLK_DROPPED) {
                if (b < first) first = b;
                if ((b + 1) * c->B > n - c->p.window) needed = 1;
            }
    return needed ? first * c->B : n;
}

/* HOT/COLD -> EMPTY: block b of a layer gives back its slots (kvs_truncate, and a rewrite from inside
 * a layer in write_rows). A staged read of it must already be waited for (drop_plan or unstage). */
static void release_block(kvs_cache *c, int64_t layer, int64_t b) {
    kvs_blk *k = BLK(c, layer, b);
    release_hot(c, layer, k);
    release_cold(c, k);
    k->state = BLK_EMPTY;
    k->dirty = 0;
}

int kvs_truncate(kvs_cache *c, int64_t n_tokens) {
    drop_plan(c);
    n_tokens = window_keep(c, n_tokens);
    int rc = 0;
    for (int64_t l = 0; l < c->p.n_layers; l++) {
        if (c->n_tok[l] > n_tokens) c->n_tok[l] = n_tokens;
        for (int64_t b = (c->n_tok[l] + c->B - 1) / c->B; b < c->n_blocks; b++) {
            kvs_blk *k = BLK(c, l, b);
            if (k->state == BLK_EMPTY) {
                if (b * c->B > n_tokens + c->B) break;
                continue;
            }
            release_block(c, l, b);
        }
        /* the kept rows of a cut block: its key summary must not remember the dropped ones. Also when
         * this call cut nothing: a write that failed part way (a cold read in make_hot) lowered n_tok
         * below rows its summary still covers, and this truncate is the caller's recovery */
        if (c->sum && !rc && c->n_tok[l] % c->B) rc = kvs_summary_rebuild(c, l, c->n_tok[l] / c->B);
    }
    return rc;
}

/* The summary of block b from its first rows rows, held hot in data (K rows read out of its layout). */
static void sum_rebuild_hot(kvs_cache *c, int64_t layer, int64_t b, const uint16_t *data, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) {
        kvl_get_k(c->krow + c->row, c->kp, data, c->B, c->p.n_kv_groups, c->p.head_dim, r);
        kvsum_row(c->sum, layer, b, r, c->krow + c->row);
    }
}

typedef void (*row_fn)(uint16_t *dst, const void *src, int64_t n);
static void row_f32(uint16_t *dst, const void *src, int64_t n) { mk_f32_to_bf16_row(dst, src, n); }
static void row_bf16(uint16_t *dst, const void *src, int64_t n) { memcpy(dst, src, (size_t)n * sizeof *dst); }

static int write_rows(kvs_cache *c, int64_t layer, int64_t pos, int64_t n, const char *k, const char *v,
                      size_t row_bytes, row_fn fn) {
    if (layer < 0 || layer >= c->p.n_layers || pos < 0 || pos > c->n_tok[layer] || pos + n > c->p.ctx)
        return mtok_err(MTOK_EINPUT, "kv cache: write of %lld tokens at position %lld of layer %lld is outside "
                        "the cache (holds %lld of %lld)", (long long)n, (long long)pos, (long long)layer,
                        (long long)c->n_tok[layer], (long long)c->p.ctx);
    const int64_t B = c->B, half = B * c->row;
    /* a rewrite from inside the layer: the blocks wholly after pos are gone, as after kvs_truncate
     * (left in place they would hold hot quota that evict never looks at, and stale staged reads) */
    for (int64_t b = (pos + B - 1) / B; b < c->n_blocks && b * B < c->n_tok[layer]; b++) {
        if (c->tier) unstage(c, layer, b);
        release_block(c, layer, b);
    }
    for (int64_t t = 0; t < n; t++) {
        int64_t p = pos + t, b = p / B, r = p % B;
        kvs_blk *blk = BLK(c, layer, b);
        if (t == 0 && r > 0 && blk->state == BLK_DROPPED) /* its kept rows are gone: never hand out garbage */
            return mtok_err(MTOK_EINPUT, "kv cache: block %lld of layer %lld was dropped by the window policy, so "
                            "positions %lld..%lld are lost and the cache cannot continue at position %lld (truncate "
                            "to %lld or earlier)", (long long)b, (long long)layer, (long long)(b * B),
                            (long long)(p - 1), (long long)p, (long long)(b * B));
        if (blk->state != BLK_HOT || !blk->dirty) {
            int rc;
            /* the window policy may drop what lies outside sinks + window before this write's
             * first position (its first query's), as kvs_plan reckons it; the write's end would
             * drop blocks the chunk's early queries still attend when a chunk is longer than the window */
            if (blk->state != BLK_HOT && (rc = make_hot(c, layer, b, pos))) {
                c->n_tok[layer] = p; /* rows before p are in place */
                return rc;
            }
            blk->dirty = 1;
        }
        fn(c->krow, k + (size_t)t * row_bytes, c->row);
        if (c->sum && !c->sum_hold) {
            /* a rewrite from inside a block drops the rows after it: restart from the kept ones */
            if (t == 0 && r > 0 && p < c->n_tok[layer]) sum_rebuild_hot(c, layer, b, HOT(c, blk), r);
            kvsum_row(c->sum, layer, b, r, c->krow);
        }
        uint16_t *dst = HOT(c, blk);
        kvl_put_k(dst, c->kp, B, c->p.n_kv_groups, c->p.head_dim, r, c->krow);
        fn(c->krow, v + (size_t)t * row_bytes, c->row);
        kvl_put_v(dst + half, c->kp, B, c->p.n_kv_groups, c->p.head_dim, r, c->krow);
    }
    c->n_tok[layer] = pos + n;
    return 0;
}

int kvs_write(kvs_cache *c, int64_t layer, int64_t pos, int64_t n, const float *k, const float *v, int64_t ld) {
    return write_rows(c, layer, pos, n, (const char *)k, (const char *)v, (size_t)ld * sizeof(float), row_f32);
}

int kvs_write_bf16(kvs_cache *c, int64_t layer, int64_t pos, int64_t n, const uint16_t *k, const uint16_t *v,
                   int64_t ld) {
    return write_rows(c, layer, pos, n, (const char *)k, (const char *)v, (size_t)ld * sizeof(uint16_t), row_bf16);
}

/* A block's data with K and V in rows (the layout of kvs_read_block and of saved files). */
static void block_rows(const kvs_cache *c, uint16_t *dst, const uint16_t *data) {
    if (!c->kp) {
        memcpy(dst, data, c->data_bytes);
        return;
    }
    const int64_t half = c->B * c->row, G = c->p.n_kv_groups, D = c->p.head_dim;
    for (int64_t r = 0; r < c->B; r++) {
        kvl_get_k(dst + r * c->row, 1, data, c->B, G, D, r);
        kvl_get_v(dst + half + r * c->row, 1, data + half, c->B, G, D, r);
    }
}

int kvs_read_block(kvs_cache *c, int64_t layer, int64_t b, uint16_t *dst, int64_t *n) {
    if (layer < 0 || layer >= c->p.n_layers || b < 0 || b * c->B >= c->n_tok[layer])
        return mtok_err(MTOK_EINTERNAL, "kv cache: block %lld of layer %lld is not held", (long long)b,
                        (long long)layer);
    kvs_blk *k = BLK(c, layer, b);
    int64_t rows = c->n_tok[layer] - b * c->B;
    *n = rows < c->B ? rows : c->B;
    if (k->state == BLK_HOT) {
        block_rows(c, dst, HOT(c, k));
        return 0;
    }
    if (k->state != BLK_COLD)
        return mtok_err(MTOK_EINPUT, "kv cache: block %lld of layer %lld was dropped by the window policy",
                        (long long)b, (long long)layer);
    kvs_io io = {.op = KVS_OP_READ, .buf = c->bounce, .len = c->slot_bytes, .off = cold_off(c, k->cold)};
    kvs_io *p = &io;
    int rc = c->tier->ops->submit(c->tier, &p, 1);
    if (rc) return mtok_err(MTOK_ERESOURCE, "kv cold tier: read submit failed: %s", strerror(-rc));
    if ((rc = io_finish(c, &io, layer, b)) || (rc = verify(c, c->bounce, layer, b))) return rc;
    c->st.spill_reads++;
    c->st.bytes_read += c->slot_bytes;
    block_rows(c, dst, c->bounce);
    return 0;
}

/* ---- streaming ---- */
static kvs_stage *find_stage(kvs_cache *c, int64_t plan_idx) {
    for (int i = 0; i < c->R; i++)
        if (c->ring[i].state != ST_FREE && c->ring[i].plan_idx == plan_idx) return &c->ring[i];
    return NULL;
}
static kvs_stage *free_stage(kvs_cache *c) {
    for (int i = 0; i < c->R; i++)
        if (c->ring[i].state == ST_FREE) return &c->ring[i];
    return NULL;
}

/* Submits reads for planned cold blocks while staging slots are free (one batch). */
static int pump(kvs_cache *c) {
    if (!c->tier) return 0;
    kvs_io *batch[64];
    int nb = 0;
    while (c->plan_sub < c->plan_n && nb < 64) {
        plan_item it = c->plan[c->plan_sub];
        kvs_blk *k = BLK(c, it.layer, it.b);
        if (k->state == BLK_COLD && !find_stage(c, c->plan_sub)) {
            kvs_stage *s = free_stage(c);
            if (!s) break;
            s->plan_idx = c->plan_sub;
            s->state = ST_INFLIGHT;
            s->stale = 0;
            s->io = (kvs_io){.op = KVS_OP_READ, .buf = s->buf, .len = c->slot_bytes, .off = cold_off(c, k->cold)};
            batch[nb++] = &s->io;
        }
        c->plan_sub++;
    }
    if (!nb) return 0;
    int rc = c->tier->ops->submit(c->tier, batch, nb);
    return rc < 0 ? mtok_err(MTOK_ERESOURCE, "kv cold tier: submitting %d reads failed: %s", nb, strerror(-rc)) : 0;
}

/* Room for n more plan items (the plan restarts when everything was consumed). */
static int plan_reserve(kvs_cache *c, int64_t n) {
    if (c->plan_head == c->plan_n && c->plan_head > 0) drop_plan(c); /* everything consumed: start over */
    if (c->plan_n + n > c->plan_cap) {
        int64_t cap = c->plan_cap ? c->plan_cap : 256;
        while (cap < c->plan_n + n) cap *= 2;
        plan_item *np = realloc(c->plan, (size_t)cap * sizeof *np);
        if (!np) return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory for the read plan");
        c->plan = np, c->plan_cap = cap;
    }
    return 0;
}

int kvs_plan(kvs_cache *c, int64_t layer, int64_t pos_end, int64_t q_pos0) {
    int64_t nb = (pos_end + c->B - 1) / c->B;
    if (nb > c->n_blocks) nb = c->n_blocks;
    int rc = plan_reserve(c, nb);
    if (rc) return rc;
    for (int64_t b = 0; b < nb; b++) {
        kvs_blk *k = BLK(c, layer, b);
        if (c->p.policy == KVS_POLICY_WINDOW && b >= c->sink_blocks && (b + 1) * c->B <= q_pos0 - c->p.window) {
            if (k->state == BLK_COLD) { /* outside sinks + window: dropped, never read */
                release_cold(c, k);
                k->state = BLK_DROPPED;
                c->st.dropped++;
            }
            continue;
        }
        if (k->state == BLK_DROPPED) continue;
        c->plan[c->plan_n++] = (plan_item){layer, b};
    }
    return pump(c);
}

int kvs_plan_blocks(kvs_cache *c, int64_t layer, const int64_t *blocks, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (blocks[i] < 0 || blocks[i] >= c->n_blocks || (i && blocks[i] <= blocks[i - 1]))
            return mtok_err(MTOK_EINTERNAL, "kv cache: planned block %lld of layer %lld is out of order or range",
                            (long long)blocks[i], (long long)layer);
    int rc = plan_reserve(c, n);
    if (rc) return rc;
    for (int64_t i = 0; i < n; i++)
        if (BLK(c, layer, blocks[i])->state != BLK_DROPPED) c->plan[c->plan_n++] = (plan_item){layer, blocks[i]};
    return pump(c);
}

int kvs_stream_next(kvs_cache *c, int64_t layer, kvs_block *blks, int max, int *n_out) {
    *n_out = 0;
    for (int i = 0; i < c->R; i++) /* the previous segment is done with */
        if (c->ring[i].state == ST_HELD) c->ring[i].state = ST_FREE;
    const int max_cold = c->R / 2 > 1 ? c->R / 2 : 1;
    kvs_stage *held[64];
    int64_t held_b[64];
    int k = 0, nh = 0;
    while (c->plan_head < c->plan_n && k < max && c->plan[c->plan_head].layer == layer) {
        plan_item it = c->plan[c->plan_head];
        kvs_blk *blk = BLK(c, layer, it.b);
        kvs_stage *s = c->tier ? find_stage(c, c->plan_head) : NULL;
        if (blk->state == BLK_COLD) {
            if (nh >= max_cold || nh >= 64) break;
            if (!s) { /* went cold after it was planned: read it now, stealing the furthest read-ahead */
                if (!(s = free_stage(c))) {
                    for (int i = 0; i < c->R; i++)
                        if (c->ring[i].state == ST_INFLIGHT && (!s || c->ring[i].plan_idx > s->plan_idx))
                            s = &c->ring[i];
                    if (!s) return mtok_err(MTOK_EINTERNAL, "kv cache: staging ring exhausted");
                    c->tier->ops->wait(c->tier, &s->io);
                    if (s->plan_idx < c->plan_sub) c->plan_sub = s->plan_idx;
                }
                s->plan_idx = c->plan_head;
                s->io = (kvs_io){.op = KVS_OP_READ, .buf = s->buf, .len = c->slot_bytes, .off = cold_off(c, blk->cold)};
                kvs_io *p = &s->io;
                int rc = c->tier->ops->submit(c->tier, &p, 1);
                if (rc < 0) return mtok_err(MTOK_ERESOURCE, "kv cold tier: read submit failed: %s", strerror(-rc));
            }
            s->state = ST_HELD;
            held[nh] = s;
            held_b[nh++] = it.b;
            blks[k] = (kvs_block){.k = s->buf, .v = s->buf + c->B * c->row, .pos0 = it.b * c->B, .k_panels = c->kp,
                                  .mem = c->hot->mem}; /* staging slots are the hot tier's */
        } else if (blk->state == BLK_HOT) {
            if (s) { /* staged earlier, hot again since: the staged copy is stale */
                c->tier->ops->wait(c->tier, &s->io);
                s->state = ST_FREE;
            }
            blks[k] = (kvs_block){.k = blk->hot, .v = blk->hot + c->B * c->row, .pos0 = it.b * c->B,
                                  .k_panels = c->kp, .mem = (mtok_mem)blk->mem};
        } else {
            if (s) { /* dropped or released since planning: its staged read is of no use */
                c->tier->ops->wait(c->tier, &s->io);
                s->state = ST_FREE;
            }
            c->plan_head++;
            continue;
        }
        int64_t rows = c->n_tok[layer] - it.b * c->B;
        blks[k].n = rows < c->B ? rows : c->B;
        if (blks[k].n <= 0) { /* truncated since planning */
            if (blk->state == BLK_COLD) { /* its read may still be in flight: wait before the slot is reused */
                c->tier->ops->wait(c->tier, &held[nh - 1]->io);
                held[--nh]->state = ST_FREE;
            }
            c->plan_head++;
            continue;
        }
        k++;
        c->plan_head++;
    }
    if (c->plan_sub < c->plan_head) c->plan_sub = c->plan_head;
    int rc = pump(c); /* read ahead, across into the next planned layer */
    for (int i = 0; i < nh && !rc; i++) {
        rc = io_finish(c, &held[i]->io, layer, held_b[i]);
        if (!rc) rc = verify(c, held[i]->buf, layer, held_b[i]);
        c->st.spill_reads++;
        c->st.bytes_read += c->slot_bytes;
    }
    if (rc) return rc;
    *n_out = k;
    return 0;
}

/* ---- queries ---- */
int64_t kvs_block_tokens(const kvs_cache *c) { return c->B; }
const kvs_params *kvs_get_params(const kvs_cache *c) { return &c->p; }

int64_t kvs_layer_tokens(const kvs_cache *c, int64_t layer) {
    return layer >= 0 && layer < c->p.n_layers ? c->n_tok[layer] : 0;
}

int64_t kvs_tokens(const kvs_cache *c) {
    int64_t m = c->n_tok[0];
    for (int64_t l = 1; l < c->p.n_layers; l++)
        if (c->n_tok[l] < m) m = c->n_tok[l];
    return m;
}

void kvs_get_stats(const kvs_cache *c, kvs_stats *st) {
    *st = c->st;
    st->hot_bytes = st->cold_bytes = st->summary_bytes = 0;
    for (int64_t l = 0; l < c->p.n_layers; l++)
        for (int64_t b = 0; b * c->B < c->n_tok[l]; b++) {
            if (c->sum) st->summary_bytes += 2 * (uint64_t)c->row * sizeof(uint16_t);
            const kvs_blk *k = &c->blk[l * c->n_blocks + b];
            if (k->state == BLK_HOT) st->hot_bytes += c->data_bytes;
            else if (k->state == BLK_COLD) st->cold_bytes += c->data_bytes;
        }
}

uint64_t kvs_bytes(const kvs_cache *c) {
    kvs_stats st;
    kvs_get_stats(c, &st);
    return st.hot_bytes + st.cold_bytes;
}

/* ---- block key summaries (the table and the bound live in kvsummary.c) ---- */
const uint16_t *kvs_summary(const kvs_cache *c, int64_t layer, int64_t b) {
    if (!c->sum || layer < 0 || layer >= c->p.n_layers || b < 0 || b * c->B >= c->n_tok[layer]) return NULL;
    return kvsum_at(c->sum, layer, b);
}

void kvs_summary_bound(const kvs_cache *c, int64_t layer, int64_t g, int64_t b0, int64_t nb, const float *qlo,
                       const float *qhi, int64_t nh, float *out) {
    kvsum_bound(c->sum, layer, g, c->p.head_dim, b0, nb, qlo, qhi, nh, out);
}

kvs_sumtab *kvs_sumtab_of(kvs_cache *c) { return c->sum; }
void kvs_summary_hold(kvs_cache *c, int hold) { c->sum_hold = hold; }

int kvs_summary_rebuild(kvs_cache *c, int64_t layer, int64_t b) {
    int64_t rows = c->n_tok[layer] - b * c->B;
    if (!c->sum || rows <= 0) return 0;
    kvs_blk *k = BLK(c, layer, b);
    if (k->state == BLK_HOT) {
        sum_rebuild_hot(c, layer, b, HOT(c, k), rows < c->B ? rows : c->B);
        return 0;
    }
    if (k->state != BLK_COLD) return 0;
    uint16_t *tmp = malloc(c->data_bytes);
    if (!tmp) return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory recomputing a block key summary");
    int rc = kvs_read_block(c, layer, b, tmp, &rows);
    if (!rc) kvsum_rebuild(c->sum, layer, b, tmp, rows);
    free(tmp);
    return rc;
}
