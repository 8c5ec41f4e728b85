/* layout.c — the tensor-parallel x context-parallel rank layout (parallel/layout.h). */
#include "layout.h"
#include "../base/mtok_base.h"

int mp_layout_init(mp_layout *L, int tp, int cp, int rank, int size, int64_t cp_span) {
    if (tp <= 0) tp = 1;
    if (cp <= 0) cp = 1;
    if ((int64_t)tp * cp != size)
        return mtok_err(MTOK_EUSAGE, "the job has %d rank%s but tensor-parallel %d x context-parallel %d = %lld "
                        "(launch with mpirun -np %lld)", size, size == 1 ? "" : "s", tp, cp,
                        (long long)tp * cp, (long long)tp * cp);
    if (rank < 0 || rank >= size) return mtok_err(MTOK_EUSAGE, "rank %d outside a job of %d ranks", rank, size);
    *L = (mp_layout){.rank = rank, .size = size, .tp = tp, .cp = cp, .tp_rank = rank % tp, .cp_rank = rank / tp,
                     .cp_span = cp_span > 0 ? cp_span : MP_DEFAULT_CP_SPAN};
    return 0;
}

int mp_layout_split(const mp_layout *L, mp_comm *world, mp_comm **tp_comm, mp_comm **cp_comm) {
    *tp_comm = *cp_comm = NULL;
    if (mp_rank(world) != L->rank || mp_size(world) != L->size)
        return mtok_err(MTOK_EUSAGE, "layout of rank %d of %d used on rank %d of %d", L->rank, L->size,
                        mp_rank(world), mp_size(world));
    int rc = mp_split(world, L->cp_rank, L->tp_rank, tp_comm);
    if (!rc) rc = mp_split(world, L->tp_rank, L->cp_rank, cp_comm);
    return rc;
}
