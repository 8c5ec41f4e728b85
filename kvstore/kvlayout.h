/* kvlayout.h — where a K row lives inside a block (private to kvstore.c).
 *
 * A block's K half is either token-major, [B][groups*head_dim] (as V always is), or, when B is a
 * multiple of 16, per group in panels of 16 keys: group g's keys occupy [B/16][head_dim][16] from
 * g*B*head_dim on (MK_KPANEL_AT). The panel layout is what the decode attention kernel reads: one
 * 256-bit load is one dim of 16 keys, so Q·Kᵀ for a few query rows needs no horizontal sums
 * (kernels/avx2_attn.c). Anything that wants rows (save, summaries, tests) goes through these two. */
#ifndef MTOK_KVLAYOUT_H
#define MTOK_KVLAYOUT_H

#include <stdint.h>
#include <string.h>

#include "../kernels/kernels.h"

/* Stores the K row of block row r (G groups x D values) into the block's K half kh. */
static inline void kvl_put_k(uint16_t *kh, int panels, int64_t B, int64_t G, int64_t D, int64_t r,
                             const uint16_t *row) {
    if (!panels) {
        memcpy(kh + r * G * D, row, (size_t)(G * D) * sizeof *row);
        return;
    }
    for (int64_t g = 0; g < G; g++)
        for (int64_t d = 0; d < D; d++) kh[g * B * D + MK_KPANEL_AT(r, d, D)] = row[g * D + d];
}

/* The inverse: the K row of block row r out of kh. */
static inline void kvl_get_k(uint16_t *row, int panels, const uint16_t *kh, int64_t B, int64_t G, int64_t D,
                             int64_t r) {
    if (!panels) {
        memcpy(row, kh + r * G * D, (size_t)(G * D) * sizeof *row);
        return;
    }
    for (int64_t g = 0; g < G; g++)
        for (int64_t d = 0; d < D; d++) row[g * D + d] = kh[g * B * D + MK_KPANEL_AT(r, d, D)];
}

#endif
