/* kvsummary.h — block key summaries, internal to kvstore/ (the public side is in kvstore.h).
 *
 * A summary table holds, for every (layer, block), two rows of groups*head_dim bf16 values: the
 * per-channel minimum and maximum over the block's valid key rows. Keys are stored bf16, so the
 * bounds are exact bf16 values (no outward rounding is needed). The table is one calloc'ed array
 * [n_layers][n_blocks][2][row]; its pages are touched only as blocks fill. */
#ifndef MTOK_KVSUMMARY_H
#define MTOK_KVSUMMARY_H

#include <stdint.h>

#include "kvstore.h"

typedef struct kvs_sumtab kvs_sumtab;

int kvsum_create(int64_t n_layers, int64_t n_blocks, int64_t row, kvs_sumtab **out);
void kvsum_free(kvs_sumtab *t);
/* The [2][row] summary of block b of a layer (minimum row, then maximum row). */
uint16_t *kvsum_at(const kvs_sumtab *t, int64_t layer, int64_t b);
/* Row r of block b was written with keys k[row]: r == 0 starts the summary, later rows widen it. */
void kvsum_row(kvs_sumtab *t, int64_t layer, int64_t b, int64_t r, const uint16_t *k);
/* Recomputes block b's summary from its first rows key rows at k (row stride `row`). */
void kvsum_rebuild(kvs_sumtab *t, int64_t layer, int64_t b, const uint16_t *k, int64_t rows);
/* See kvs_summary_bound in kvstore.h. */
void kvsum_bound(const kvs_sumtab *t, int64_t layer, int64_t g, int64_t D, int64_t b0, int64_t nb,
                 const float *qlo, const float *qhi, int64_t nh, float *out);

/* ---- kvstore.c internals used by kvfile.c ---- */
kvs_sumtab *kvs_sumtab_of(kvs_cache *c);
/* hold = 1: kvs_write* leaves the summaries alone (a loader installs saved ones); 0: maintained. */
void kvs_summary_hold(kvs_cache *c, int hold);
/* Recomputes block b's summary from the block's rows (reading it from the cold tier if needed). */
int kvs_summary_rebuild(kvs_cache *c, int64_t layer, int64_t b);

#endif
