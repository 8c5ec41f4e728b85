/* layout.h — where a rank sits in a tensor-parallel x context-parallel job (prefix mp_layout), in
 * one place: the CLI (cli/main.c), a server and the tests set a job up with mp_layout_init and
 * mp_layout_split; a session (core/dist.c) keeps the same struct and asks it which positions it
 * holds. Design: docs/PARALLEL.md.
 *
 * World rank r holds tensor-parallel slice r % tp of context-parallel share r / tp, so the tp ranks
 * of one share are neighbours (on one node under mpirun's default order, where the per-layer sums
 * run) and the cp ranks, which talk once per layer and chunk, are tp apart. Context-parallel rank k
 * stores the KV of positions [j*span, (j+1)*span) for every j with j % cp == k (round-robin
 * spans), so a long prompt fills every rank's store evenly. */
#ifndef MTOK_PARALLEL_LAYOUT_H
#define MTOK_PARALLEL_LAYOUT_H

#include <stdint.h>

#include "parallel.h"

/* Tokens per context-parallel span when the caller gives none. */
#define MP_DEFAULT_CP_SPAN 4096

typedef struct mp_layout {
    int rank, size;         /* this process in the job; size == tp * cp */
    int tp, cp;             /* ways of the tensor-parallel and context-parallel splits (1: none) */
    int tp_rank, cp_rank;   /* rank == cp_rank * tp + tp_rank */
    int64_t cp_span;        /* context parallel: tokens per span */
} mp_layout;

/* Fills *L for world rank `rank` of `size` ranks split tp x cp ways (tp, cp <= 0: 1; cp_span <= 0:
 * MP_DEFAULT_CP_SPAN). MTOK_EUSAGE when size != tp * cp or rank is outside [0, size). One rank
 * without parallelism: mp_layout_init(L, 1, 1, 0, 1, 0). */
int mp_layout_init(mp_layout *L, int tp, int cp, int rank, int size, int64_t cp_span);
/* Makes this rank's communicators out of world (collective over world; mp_rank(world) must be
 * L->rank): *tp_comm over the tp ranks of its share (rank tp_rank within), *cp_comm over the cp
 * ranks holding its slice (rank cp_rank within). mp_world_finalize(world) frees them. */
int mp_layout_split(const mp_layout *L, mp_comm *world, mp_comm **tp_comm, mp_comm **cp_comm);

/* Positions among [0, n) that this rank's KV store holds. */
static inline int64_t mp_layout_local_tokens(const mp_layout *L, int64_t n) {
    if (L->cp <= 1) return n;
    const int64_t cycle = L->cp_span * L->cp, rem = n % cycle - (int64_t)L->cp_rank * L->cp_span;
    return n / cycle * L->cp_span + (rem < 0 ? 0 : rem > L->cp_span ? L->cp_span : rem);
}
/* 1 when this rank stores the KV of position pos. */
static inline int mp_layout_owns(const mp_layout *L, int64_t pos) {
    return L->cp <= 1 || (pos / L->cp_span) % L->cp == L->cp_rank;
}
/* The first position after pos that starts another span (INT64_MAX without context parallelism). */
static inline int64_t mp_layout_span_end(const mp_layout *L, int64_t pos) {
    return L->cp <= 1 ? INT64_MAX : (pos / L->cp_span + 1) * L->cp_span;
}

#endif
