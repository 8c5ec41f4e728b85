/* test_layout.c — the tp x cp rank layout (parallel/layout.h) that the CLI, a server and
 * tests/mpi_comm_check.c set jobs up with, and its context-parallel position ownership, checked
 * for every rank of small jobs in one process (no launcher needed); the split itself on a
 * single-rank world. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "base/mtok_base.h"
#include "parallel/layout.h"

static void check_ranks(void) {
    for (int tp = 1; tp <= 4; tp++)
        for (int cp = 1; cp <= 3; cp++)
            for (int r = 0; r < tp * cp; r++) {
                mp_layout L;
                CHECK(mp_layout_init(&L, tp, cp, r, tp * cp, 0) == 0, "tp %d cp %d rank %d: %s", tp, cp, r,
                      mtok_errmsg());
                /* the arrangement the CLI has always used: tp neighbours, cp ranks tp apart */
                CHECK(L.tp_rank == r % tp && L.cp_rank == r / tp && L.cp_rank * tp + L.tp_rank == r,
                      "tp %d cp %d rank %d -> (%d, %d)", tp, cp, r, L.tp_rank, L.cp_rank);
                CHECK(L.cp_span == MP_DEFAULT_CP_SPAN, "default span %lld", (long long)L.cp_span);
            }
    mp_layout L;
    CHECK(mp_layout_init(&L, 2, 2, 0, 3, 0) == MTOK_EUSAGE && strstr(mtok_errmsg(), "mpirun -np 4"),
          "3 ranks for 2 x 2: %s", mtok_errmsg());
    CHECK(mp_layout_init(&L, 2, 1, 2, 2, 0) == MTOK_EUSAGE, "rank outside the job");
    CHECK(mp_layout_init(&L, 0, -1, 0, 1, 7) == 0 && L.tp == 1 && L.cp == 1 && L.cp_span == 7, "0 and -1 mean 1");
}

/* Every position has exactly one owner among the cp ranks; local_tokens counts what owns says. */
static void check_spans(void) {
    const int64_t span = 5;
    for (int cp = 1; cp <= 3; cp++) {
        mp_layout L[3];
        for (int k = 0; k < cp; k++) CHECK(!mp_layout_init(&L[k], 1, cp, k, cp, span), "init cp %d", cp);
        int64_t held[3] = {0};
        for (int64_t pos = 0; pos < 40; pos++) {
            int owners = 0;
            for (int k = 0; k < cp; k++) {
                CHECK(mp_layout_local_tokens(&L[k], pos) == held[k], "cp %d rank %d: %lld held before %lld, not %lld",
                      cp, k, (long long)held[k], (long long)pos, (long long)mp_layout_local_tokens(&L[k], pos));
                if (mp_layout_owns(&L[k], pos)) owners++, held[k]++;
                const int64_t end = mp_layout_span_end(&L[k], pos);
                CHECK(cp == 1 ? end == INT64_MAX : end == (pos / span + 1) * span, "span end of %lld", (long long)pos);
            }
            CHECK(owners == 1, "cp %d: position %lld has %d owners", cp, (long long)pos, owners);
            if (cp > 1) CHECK(mp_layout_owns(&L[(pos / span) % cp], pos), "round-robin spans");
        }
    }
}

static void check_split_single(void) {
    mp_comm *w = NULL, *tp = NULL, *cp = NULL;
    if (mp_world_init(NULL, NULL, 0, &w)) {
        CHECK(0, "world: %s", mtok_errmsg());
        return;
    }
    mp_layout L;
    CHECK(!mp_layout_init(&L, 1, 1, mp_rank(w), mp_size(w), 0), "one rank: %s", mtok_errmsg());
    CHECK(!mp_layout_split(&L, w, &tp, &cp) && tp && cp && mp_size(tp) == 1 && mp_size(cp) == 1, "split: %s",
          mtok_errmsg());
    mp_layout other;
    CHECK(!mp_layout_init(&other, 2, 1, 1, 2, 0), "layout of another job");
    mp_comm *a = NULL, *b = NULL;
    CHECK(mp_layout_split(&other, w, &a, &b) == MTOK_EUSAGE && !a && !b, "a layout of another rank is refused");
    mp_world_finalize(w);
}

int main(void) {
    check_ranks();
    check_spans();
    check_split_single();
    if (!check_failures) printf("test_layout: ok\n");
    return check_failures != 0;
}
