/* kvstore.h — the tiered KV cache the decoder uses (prefix kvs_): the contract. Implementation
 * notes: top of kvstore.c; the tiers' method tables: kvtier.h; user-facing description:
 * docs/KVSTORE.md.
 *
 * The cache is paged: a block holds `block_tokens` consecutive positions of one layer, K and V for
 * every KV group, bf16 (layout: kvs_block below and kvlayout.h). Blocks live in a chain of tiers,
 * fastest first: a hot tier (block slots in one memory space under a byte budget; host RAM today,
 * mtok_mem) above a cold tier (a preallocated O_DIRECT file driven through io_uring or a
 * pread/pwrite thread pool). Attention streams the blocks of a layer in order through kvs_plan() +
 * kvs_stream_next(): hot blocks are read in place, cold blocks arrive through a staging ring in the
 * hot tier's memory that is filled ahead of use (including the next layer's blocks while this layer
 * computes) and checked against their XXH3 checksum. Every block handed out says which memory space
 * its pointers are in.
 *
 * Blocks. A block is (layer, b): positions [b*B, (b+1)*B) of one layer, K then V,
 * data_bytes = 2*B*groups*head_dim*2. In every tier it occupies one slot of slot_bytes = data_bytes
 * rounded up to 4 KiB, so every cold-tier transfer is O_DIRECT-aligned.
 *
 * States of a block and the function of kvstore.c performing each transition:
 *     EMPTY ──make_hot──> HOT ──evict (write, checksum)──> [spilling] ──> COLD
 *     COLD ──kvs_plan/pump (read into a staging slot)──> [loading] ──stream_next (verify)──> read view
 *     COLD ──make_hot (kvs_write into a spilled block after a truncate)──> HOT (dirty)
 *     HOT/COLD ──kvs_truncate / kvs_reset──> EMPTY;  HOT/COLD outside sinks+window (window policy)
 *     ──evict / kvs_plan──> DROPPED (never read again).
 * A cold block is never promoted back to hot for reading: attention reads it through the staging
 * ring each time (exact policy: every block is read back, so results equal the unspilled run).
 *
 * Invariants.
 *  - kvs_tokens positions of every layer are valid (a layer may hold more while a forward pass is
 *    between layers); rows of a block beyond them are stale and never handed out.
 *  - A HOT block occupies one slot of the hot tier, tagged with the tier's memory space. A COLD
 *    block's slot in the file holds data whose XXH3-64 was computed from the hot copy before the
 *    write was submitted; it is verified after every read (mismatch: MTOK_ERESOURCE naming layer,
 *    block, file and offset). A block is durable for this process once its write completed; only
 *    then does its hot slot return to the hot tier. A HOT block may keep its cold slot as a clean
 *    copy: evicting it again costs no write.
 *  - Budget: hot slots + staging slots fit the budget (a budget too small for the 16-slot staging
 *    ring is exceeded by the ring); each layer owns an equal quota of hot slots, at least sinks + 2
 *    blocks. A layer over quota evicts its own oldest hot blocks after the sinks (the recent window
 *    and the sinks stay hot; the middle, needed by attention only after them, goes cold).
 *  - Space in the cold tier is reserved before any write lands in it, so a full disk shows up as a
 *    failed reservation (clean stop, MTOK_ERESOURCE) rather than a torn write.
 *  - Evictions happen only inside kvs_write*; no slot is rewritten while a read into or from it is in
 *    flight, and no staged copy older than its block is ever handed out.
 *  - Short reads/writes and EIO are retried once, then reported with the file and offset.
 *  - Blocks come out of kvs_stream_next in plan order, each resident (hot slot or staging slot)
 *    until the next call; the arithmetic over them does not depend on which tier they came from.
 *  - Key summaries (topk policy): the summary of every block holding rows covers exactly its valid
 *    rows, whatever tier the block is in; they live outside the budget and are never spilled.
 */
#ifndef MTOK_KVSTORE_H
#define MTOK_KVSTORE_H

#include <stddef.h>
#include <stdint.h>
#include "../base/mtok_base.h"

typedef struct kvs_cache kvs_cache;

/* Tokens per block when the caller names none (--kv-block, mtok_session_params.kv_block = 0). */
#define KVS_DEFAULT_BLOCK_TOKENS 128

/* A tier's slots, and so a block's pointers, are in one memory space: mtok_mem (base/mtok_base.h);
 * only MTOK_MEM_HOST tiers exist yet. */

typedef enum { KVS_IO_AUTO = 0, KVS_IO_URING = 1, KVS_IO_THREADS = 2 } kvs_io_kind;
typedef enum { KVS_POLICY_EXACT = 0, KVS_POLICY_WINDOW = 1, KVS_POLICY_TOPK = 2 } kvs_policy;

/* Test-only fault injection, applied by a wrapping tier (kvstore/kvtier.c); see docs/KVSTORE.md. */
typedef enum {
    KVS_FAULT_NONE = 0,
    KVS_FAULT_CORRUPT, /* flip one byte of the nth cold read after it completes */
    KVS_FAULT_EIO,     /* the nth cold read fails with EIO */
    KVS_FAULT_SHORT,   /* the nth cold read returns half its bytes */
    KVS_FAULT_ENOSPC,  /* the nth space reservation (fallocate) fails with ENOSPC */
    KVS_FAULT_NOURING, /* io_uring setup fails as if blocked (exercises the fallback) */
} kvs_fault_kind;
typedef struct {
    kvs_fault_kind kind;
    int64_t nth;  /* 1-based index of the first faulty operation */
    int64_t count; /* consecutive faulty operations (1: a retry succeeds) */
} kvs_fault;
/* Parses "corrupt|eio|short|enospc|nouring[:NTH[:COUNT]]". */
int kvs_fault_parse(const char *s, kvs_fault *out);

typedef struct {
    int64_t n_layers;
    int64_t n_kv_groups;
    int64_t head_dim;
    int64_t ctx;          /* positions the cache may hold */
    int64_t block_tokens; /* tokens per block */
    uint64_t budget;      /* bytes of the hot tier incl. the staging ring; 0: unlimited, nothing spills */
    const char *dir;      /* cold tier directory (NULL: $TMPDIR, else /var/tmp) */
    kvs_io_kind io;
    kvs_policy policy;
    int64_t sinks, window; /* tokens: attention sinks and recent window (window policy; kept hot always) */
    int depth;            /* cold-tier queue depth (0: 32) */
    kvs_fault fault;      /* test-only (kind NONE in production) */
} kvs_params;

typedef struct {
    const uint16_t *k; /* bf16 [n][groups*head_dim], or with k_panels per group g from g*B*head_dim
                        * on in 16-key panels [B/16][head_dim][16] (MK_KPANEL_AT, kernels.h) */
    const uint16_t *v; /* bf16 [n][groups*head_dim], or with k_panels per group [B][head_dim] */
    int64_t pos0;      /* position of row 0 */
    int64_t n;         /* rows valid in this block */
    int k_panels;      /* the cache's layout: grouped when block_tokens is a multiple of 16 */
    mtok_mem mem;       /* the space k and v point into (MTOK_MEM_HOST from the host tier and staging) */
} kvs_block;

typedef struct {
    const char *io;         /* "none" (no budget), "io_uring" or "threads" */
    const char *io_note;    /* why (forced, fallback reason) */
    uint64_t hot_bytes;     /* bytes of block data held hot */
    uint64_t cold_bytes;    /* bytes of block data held cold */
    uint64_t spill_writes, spill_reads, bytes_written, bytes_read, dropped;
    uint64_t summary_bytes; /* RAM of the block key summaries of the blocks held (topk policy) */
} kvs_stats;

/* Largest block_tokens kvs_create accepts (a block is one unit of spill I/O: 64K tokens of a 9B
 * model's KV is already 256 MiB). */
#define KVS_MAX_BLOCK_TOKENS 65536
int kvs_create(const kvs_params *p, kvs_cache **out);
void kvs_free(kvs_cache *c);
/* Forgets every position. */
void kvs_reset(kvs_cache *c);
/* Truncates the cache to its first n_tokens positions; whole blocks beyond are released. Under the
 * window policy it may keep fewer: when a block it dropped lies inside the window of the queries that
 * would follow, only the positions before the first dropped block stay (kvs_tokens tells how many);
 * the caller recomputes the rest. */
int kvs_truncate(kvs_cache *c, int64_t n_tokens);
/* Stores n rows of K and V (fp32, row stride ld elements) for positions pos..pos+n-1 of a layer,
 * rounding to bf16. Positions must be written in order: pos <= tokens already held by the layer.
 * May spill older blocks of the layer to the cold tier (errors: MTOK_ERESOURCE). */
int kvs_write(kvs_cache *c, int64_t layer, int64_t pos, int64_t n, const float *k, const float *v, int64_t ld);
/* As kvs_write with bf16 rows (loading a saved cache). */
int kvs_write_bf16(kvs_cache *c, int64_t layer, int64_t pos, int64_t n, const uint16_t *k, const uint16_t *v,
                   int64_t ld);
/* Copies block b of a layer (K rows then V rows, block_tokens rows each, whatever the K layout) into dst, reading the cold
 * tier if needed (checksum verified). Returns the rows valid through *n. */
int kvs_read_block(kvs_cache *c, int64_t layer, int64_t b, uint16_t *dst, int64_t *n);

/* ---- streaming reads for attention ----
 * kvs_plan queues the blocks [0, ceil(pos_end/B)) of a layer that attention for queries from
 * q_pos0 on will visit (the window policy leaves out blocks outside sinks + window) and starts
 * reading their cold ones. kvs_stream_next returns the next up to max planned blocks of that layer,
 * in order, all resident until the next call (0 blocks: the layer is done). Plans are consumed in
 * the order they were made, so planning layer l+1 before streaming layer l prefetches it. */
int kvs_plan(kvs_cache *c, int64_t layer, int64_t pos_end, int64_t q_pos0);
/* As kvs_plan for exactly the listed blocks of a layer (ascending, each holding rows): the topk
 * policy's chosen blocks. */
int kvs_plan_blocks(kvs_cache *c, int64_t layer, const int64_t *blocks, int64_t n);
int kvs_stream_next(kvs_cache *c, int64_t layer, kvs_block *blks, int max, int *n_out);

/* ---- block key summaries (kvstore/kvsummary.c; kept with the topk policy only) ----
 * For every block of every layer, hot or cold, the per-channel minimum and maximum of its stored
 * (post-RoPE, bf16) keys over its valid rows: [2][groups*head_dim] bf16, the minimum row then the
 * maximum row (exact: the keys are bf16 already). Kept in RAM outside the budget, widened by
 * kvs_write* as rows arrive, recomputed when kvs_truncate or a rewrite cuts into a block, saved with
 * the cache and recomputed on load when a file has none. kvs_summary: NULL when the cache keeps no
 * summaries (other policies). */
const uint16_t *kvs_summary(const kvs_cache *c, int64_t layer, int64_t b);
/* Upper bounds of q·k (unscaled) over blocks b0..b0+nb-1 of a layer for KV group g, for nh query
 * heads whose queries lie in the boxes qlo[h][d] <= q_d <= qhi[h][d] ([nh][head_dim] each; one query
 * per head: pass qlo == qhi): out[i] = max_h Σ_d max over the box corners of q_d·k_d, k_d in
 * [kmin_d, kmax_d]. Needs summaries (kvs_summary non-NULL). */
void kvs_summary_bound(const kvs_cache *c, int64_t layer, int64_t g, int64_t b0, int64_t nb, const float *qlo,
                       const float *qhi, int64_t nh, float *out);

int64_t kvs_block_tokens(const kvs_cache *c);
const kvs_params *kvs_get_params(const kvs_cache *c);
/* Tokens held (the minimum over layers), and by one layer (0 outside [0, n_layers)). */
int64_t kvs_tokens(const kvs_cache *c);
int64_t kvs_layer_tokens(const kvs_cache *c, int64_t layer);
/* Bytes of KV data held (hot + cold). */
uint64_t kvs_bytes(const kvs_cache *c);
void kvs_get_stats(const kvs_cache *c, kvs_stats *st);

/* Which cold-tier I/O a cache with these settings would use, as one line (mtok info). */
void kvs_io_describe(kvs_io_kind want, char *buf, size_t cap);

/* ---- raw cold-tier benchmark (mtok bench kv) ---- */
typedef struct {
    const char *dir;
    kvs_io_kind io;
    uint64_t block_bytes; /* bytes per block (rounded up to 4 KiB) */
    uint64_t total_bytes; /* bytes written then read back */
    int depth;
} kvs_bench_params;
typedef struct {
    double write_gbs, read_gbs, write_iops, read_iops, write_s, read_s;
    uint64_t blocks, slot_bytes;
    int depth;
    char io[160];
} kvs_bench_result;
int kvs_bench(const kvs_bench_params *p, kvs_bench_result *r);

/* ---- saved document caches (kvstore/kvfile.c; format in docs/KVSTORE.md and docs/DESIGN.md §4) ----
 * Save: the first n positions of every layer with their token ids, atomically (temp, fsync, rename).
 * Load: validates the whole header against the model fingerprint and the cache geometry
 * (MTOK_EINPUT with a message on any mismatch, truncation or checksum failure), then, if prompt is
 * given, keeps only the longest prefix of saved tokens that the prompt starts with (whole blocks by
 * the hash chain h_i = XXH3_128(h_{i-1} || ids of block i), plus the tail when every saved token
 * matches), resets the cache and loads those positions. ids_out receives the tokens loaded. */
int kvs_file_save(kvs_cache *c, const char *path, uint64_t fingerprint, const int32_t *ids, int64_t n);
int kvs_file_load(kvs_cache *c, const char *path, uint64_t fingerprint, const int32_t *prompt, int64_t n_prompt,
                  int32_t **ids_out, int64_t *n_loaded);
/* GLM-4V (docs/VISION.md): a session whose RoPE positions differ from the slots, or that holds image
 * rows [img_lo, img_hi) (placeholder ids), saves them too (pos NULL: the slots); such a file is
 * version 3 (flags bit 1), every other file is written as before. kvs_file_load refuses a version 3
 * file (it could not restore it); kvs_file_load_ex returns its layout: pos [n_loaded] (malloc'd,
 * NULL for a file without one) and the image rows among the loaded ones. A prompt's prefix match
 * stops at the image's first row (equal placeholder ids do not mean an equal image). */
typedef struct {
    int64_t *pos;
    int64_t img_lo, img_hi;
} kvs_file_layout;
int kvs_file_save_ex(kvs_cache *c, const char *path, uint64_t fingerprint, const int32_t *ids, int64_t n,
                     const int64_t *pos, int64_t img_lo, int64_t img_hi);
int kvs_file_load_ex(kvs_cache *c, const char *path, uint64_t fingerprint, const int32_t *prompt, int64_t n_prompt,
                     int32_t **ids_out, int64_t *n_loaded, kvs_file_layout *lay);

#endif
