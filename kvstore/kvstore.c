/* kvstore.c — paged KV cache, host-RAM tier.
 *
 * Design note (the tiered store of issue 3 extends this):
 *  - A block is (layer, b): positions [b*B, (b+1)*B). Its memory is one allocation holding K rows
 *    then V rows, B*groups*head_dim bf16 values each, allocated the first time a position of the
 *    block is written and kept across kvs_reset() so a new request reuses it.
 *  - Invariant: n_tok[layer] positions of a layer are valid; blocks beyond them hold stale data that
 *    is never read. kvs_write() may rewrite a tail (pos < n_tok) but never leave a hole.
 *  - Readers get const pointers into block memory; nothing moves while a forward pass runs, so
 *    kvs_get_block() needs no lock. (Spill/restore will add pin counts here.) */
#include <stdlib.h>
#include <string.h>

#include "kvstore.h"
#include "../core/mtok.h"
#include "../kernels/kernels.h"

struct kvs_cache {
    kvs_params p;
    int64_t row;       /* groups*head_dim */
    int64_t n_blocks;  /* per layer: ceil(ctx / B) */
    uint16_t **blocks; /* [n_layers][n_blocks], NULL until first write */
    int64_t *n_tok;    /* [n_layers] */
    uint64_t bytes;
};

int kvs_create(const kvs_params *p, kvs_cache **out) {
    *out = NULL;
    if (p->n_layers <= 0 || p->n_kv_groups <= 0 || p->head_dim <= 0 || p->ctx <= 0 || p->block_tokens <= 0)
        return mtok_err(MTOK_EUSAGE, "kv cache: invalid parameters (layers %lld, groups %lld, ctx %lld, block %lld)",
                        (long long)p->n_layers, (long long)p->n_kv_groups, (long long)p->ctx,
                        (long long)p->block_tokens);
    kvs_cache *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->p = *p;
    c->row = p->n_kv_groups * p->head_dim;
    c->n_blocks = (p->ctx + p->block_tokens - 1) / p->block_tokens;
    c->blocks = calloc((size_t)(p->n_layers * c->n_blocks), sizeof *c->blocks);
    c->n_tok = calloc((size_t)p->n_layers, sizeof *c->n_tok);
    if (!c->blocks || !c->n_tok) goto oom;
    *out = c;
    return 0;
oom:
    kvs_free(c);
    return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory for the block table");
}

void kvs_free(kvs_cache *c) {
    if (!c) return;
    if (c->blocks)
        for (int64_t i = 0; i < c->p.n_layers * c->n_blocks; i++) free(c->blocks[i]);
    free(c->blocks);
    free(c->n_tok);
    free(c);
}

void kvs_reset(kvs_cache *c) { memset(c->n_tok, 0, (size_t)c->p.n_layers * sizeof *c->n_tok); }

int kvs_truncate(kvs_cache *c, int64_t n_tokens) {
    for (int64_t l = 0; l < c->p.n_layers; l++)
        if (c->n_tok[l] > n_tokens) c->n_tok[l] = n_tokens;
    return 0;
}

static size_t block_elems(const kvs_cache *c) { return (size_t)c->p.block_tokens * (size_t)c->row; }

int kvs_write(kvs_cache *c, int64_t layer, int64_t pos, int64_t n, const float *k, const float *v, int64_t ld) {
    if (layer < 0 || layer >= c->p.n_layers || pos < 0 || pos > c->n_tok[layer] || pos + n > c->p.ctx)
        return mtok_err(MTOK_EINPUT, "kv cache: write of %lld tokens at position %lld of layer %lld is outside "
                        "the cache (holds %lld of %lld)", (long long)n, (long long)pos, (long long)layer,
                        (long long)c->n_tok[layer], (long long)c->p.ctx);
    const int64_t B = c->p.block_tokens;
    for (int64_t t = 0; t < n; t++) {
        int64_t p = pos + t, b = p / B, r = p % B;
        uint16_t **slot = &c->blocks[layer * c->n_blocks + b];
        if (!*slot) {
            *slot = malloc(2 * block_elems(c) * sizeof(uint16_t));
            if (!*slot)
                return mtok_err(MTOK_ERESOURCE, "kv cache: out of memory allocating block %lld of layer %lld",
                                (long long)b, (long long)layer);
            c->bytes += 2 * block_elems(c) * sizeof(uint16_t);
        }
        mk_f32_to_bf16_row(*slot + (size_t)r * c->row, k + (size_t)t * ld, c->row);
        mk_f32_to_bf16_row(*slot + block_elems(c) + (size_t)r * c->row, v + (size_t)t * ld, c->row);
    }
    c->n_tok[layer] = pos + n;
    return 0;
}

int kvs_get_block(kvs_cache *c, int64_t layer, int64_t b, kvs_block *out) {
    const int64_t B = c->p.block_tokens;
    if (layer < 0 || layer >= c->p.n_layers || b < 0 || b * B >= c->n_tok[layer])
        return mtok_err(MTOK_EINTERNAL, "kv cache: block %lld of layer %lld is not held", (long long)b,
                        (long long)layer);
    const uint16_t *base = c->blocks[layer * c->n_blocks + b];
    out->k = base;
    out->v = base + block_elems(c);
    out->pos0 = b * B;
    out->n = c->n_tok[layer] - b * B < B ? c->n_tok[layer] - b * B : B;
    return 0;
}

int64_t kvs_block_tokens(const kvs_cache *c) { return c->p.block_tokens; }

int64_t kvs_tokens(const kvs_cache *c) {
    int64_t m = c->n_tok[0];
    for (int64_t l = 1; l < c->p.n_layers; l++)
        if (c->n_tok[l] < m) m = c->n_tok[l];
    return m;
}

uint64_t kvs_bytes(const kvs_cache *c) { return c->bytes; }
