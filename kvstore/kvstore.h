/* kvstore.h — the KV cache interface the decoder uses (prefix kvs_).
 *
 * The cache is paged: a block holds `block_tokens` consecutive positions of one layer, K and V for
 * every KV group, stored bf16 token-major ([n][groups*head_dim], the layout the QKV projection
 * produces). Attention reads the cache block by block through kvs_get_block(), so the tiered store
 * (hot RAM arena under a byte budget + cold NVMe tier, issue 3) can replace the implementation in
 * kvstore/kvstore.c without touching the forward pass. Today every block lives in host RAM,
 * allocated on first write, so memory follows the tokens actually held rather than --ctx. */
#ifndef MTOK_KVSTORE_H
#define MTOK_KVSTORE_H

#include <stdint.h>

typedef struct kvs_cache kvs_cache;

typedef struct {
    int64_t n_layers;
    int64_t n_kv_groups;
    int64_t head_dim;
    int64_t ctx;          /* positions the cache may hold */
    int64_t block_tokens; /* tokens per block */
} kvs_params;

typedef struct {
    const uint16_t *k; /* bf16 [n][groups*head_dim] */
    const uint16_t *v; /* bf16 [n][groups*head_dim] */
    int64_t pos0;      /* position of row 0 */
    int64_t n;         /* rows valid in this block */
} kvs_block;

int kvs_create(const kvs_params *p, kvs_cache **out);
void kvs_free(kvs_cache *c);
/* Forgets every position (blocks are kept for reuse). */
void kvs_reset(kvs_cache *c);
/* Truncates the cache to its first n_tokens positions (used to drop a rejected continuation). */
int kvs_truncate(kvs_cache *c, int64_t n_tokens);
/* Stores n rows of K and V (fp32, row stride ld elements) for positions pos..pos+n-1 of a layer,
 * rounding to bf16. Positions must be written in order: pos <= tokens already held by the layer. */
int kvs_write(kvs_cache *c, int64_t layer, int64_t pos, int64_t n, const float *k, const float *v, int64_t ld);
/* Read view of block b of a layer. Safe to call from several threads at once. */
int kvs_get_block(kvs_cache *c, int64_t layer, int64_t b, kvs_block *out);
int64_t kvs_block_tokens(const kvs_cache *c);
/* Tokens held (the minimum over layers). */
int64_t kvs_tokens(const kvs_cache *c);
/* Bytes of KV data held in memory. */
uint64_t kvs_bytes(const kvs_cache *c);

#endif
