/* kvlayout.h — where a K or V row lives inside a block (private to kvstore.c).
 *
 * A block's K and V halves are either token-major, [B][groups*head_dim], or, when B is a multiple of
 * 16 ("grouped"), per group: group g's keys occupy [B/16][head_dim][16] from g*B*head_dim on, in
 * panels of 16 keys (MK_KPANEL_AT), and its values [B][head_dim] from g*B*head_dim on. The panels are
 * what the decode attention kernel reads: one 256-bit load is one dim of 16 keys, so Q·Kᵀ for a few
 * query rows needs no horizontal sums; V per group puts a group's rows head_dim*2 bytes apart
 * instead of groups*head_dim*2, so the 64 rows P·V walks spread over twice as many L1 sets
 * (kernels/avx2_attn.c). Anything that wants rows (save, summaries, tests) goes through these. */
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

/* V: the same for the V half vh (per group [B][D] when grouped). */
static inline void kvl_put_v(uint16_t *vh, int grouped, int64_t B, int64_t G, int64_t D, int64_t r,
                             const uint16_t *row) {
    for (int64_t g = 0; g < G; g++)
        memcpy(vh + (grouped ? g * B * D + r * D : r * G * D + g * D), row + g * D, (size_t)D * sizeof *row);
}

static inline void kvl_get_v(uint16_t *row, int grouped, const uint16_t *vh, int64_t B, int64_t G, int64_t D,
                             int64_t r) {
    for (int64_t g = 0; g < G; g++)
        memcpy(row + g * D, vh + (grouped ? g * B * D + r * D : r * G * D + g * D), (size_t)D * sizeof *row);
}

#endif
