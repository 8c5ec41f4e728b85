/* test_comm.c — the single-rank communicator (parallel/parallel.h) and the placement helpers.
 *
 * One process, no launcher: every collective is a copy or nothing, point-to-point has no peer, and
 * argument errors are MTOK_EUSAGE naming the rank. The multi-rank behaviour (MPI) is checked by
 * tests/test_comm_mpi.py through tests/mpi_comm_check.c. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mtok.h"
#include "parallel/parallel.h"

static void check_world_env(void) {
    mp_comm *w = NULL;
    setenv("MTOK_COMM_TIMEOUT", "soon", 1);
    int rc = mp_world_init(NULL, NULL, 0, &w);
    CHECK(rc == MTOK_EUSAGE && !w, "a malformed MTOK_COMM_TIMEOUT is a usage error (rc %d)", rc);
    CHECK(strstr(mtok_errmsg(), "MTOK_COMM_TIMEOUT"), "message names the variable: %s", mtok_errmsg());
    setenv("MTOK_COMM_TIMEOUT", "2.5", 1);
    rc = mp_world_init(NULL, NULL, 0, &w);
    CHECK(rc == 0 && w, "world init (%s)", mtok_errmsg());
    CHECK(mp_get_timeout() == 2.5, "MTOK_COMM_TIMEOUT read at init: %g", mp_get_timeout());
    mp_comm *again = NULL;
    CHECK(mp_world_init(NULL, NULL, 0, &again) == MTOK_EUSAGE && !again, "a second world is refused");
    mp_world_finalize(w);
    unsetenv("MTOK_COMM_TIMEOUT");
    mp_set_timeout(-1);
    CHECK(mp_get_timeout() == 0, "a negative timeout means none");
    mp_set_timeout(60);
}

static void check_collectives(mp_comm *w) {
    float f[5] = {1, 2, 3, 4, 5.5f};
    CHECK(mp_allreduce_sum(w, f, 5, MP_F32) == 0 && f[0] == 1 && f[4] == 5.5f, "all-reduce of one rank is a no-op");
    int64_t big[2] = {INT64_C(1) << 40, -7};
    CHECK(mp_allreduce_sum(w, big, 2, MP_I64) == 0 && big[0] == INT64_C(1) << 40 && big[1] == -7, "int64 all-reduce");
    CHECK(mp_allreduce_sum(w, NULL, 0, MP_F32) == 0, "an empty all-reduce succeeds");
    CHECK(mp_allreduce_sum(w, f, 5, (mp_dtype)9) == MTOK_EUSAGE, "unknown dtype refused");

    int32_t send[3] = {7, 8, 9}, recv[3] = {0};
    CHECK(mp_allgather(w, send, 3, recv, NULL, MP_I32) == 0 && !memcmp(send, recv, sizeof send),
          "all-gather of one rank copies send into recv");
    size_t counts[1] = {2};
    memset(recv, 0, sizeof recv);
    CHECK(mp_allgather(w, send, 2, recv, counts, MP_I32) == 0 && recv[0] == 7 && recv[1] == 8 && recv[2] == 0,
          "all-gather with counts copies exactly counts[0] elements");
    CHECK(mp_allgather(w, send, 3, recv, counts, MP_I32) == MTOK_EUSAGE, "count != counts[rank] refused");
    CHECK(strstr(mtok_errmsg(), "rank 0"), "message names the rank: %s", mtok_errmsg());
    CHECK(mp_allgather(w, send, 3, send, NULL, MP_I32) == MTOK_EUSAGE, "aliased all-gather buffers refused");
    unsigned char bytes[4] = {1, 2, 3, 4}, bout[4];
    CHECK(mp_allgather(w, bytes, 4, bout, NULL, MP_BYTE) == 0 && !memcmp(bytes, bout, 4), "byte all-gather");

    CHECK(mp_bcast(w, f, 5, MP_F32, 0) == 0 && f[4] == 5.5f, "broadcast from root 0 keeps the data");
    CHECK(mp_bcast(w, f, 5, MP_F32, 1) == MTOK_EUSAGE, "broadcast root outside the communicator refused");
    CHECK(mp_bcast(w, f, 5, MP_F32, -1) == MTOK_EUSAGE, "negative root refused");
    CHECK(mp_barrier(w) == 0, "barrier of one rank");

    CHECK(mp_send(w, f, 1, MP_F32, 0, 0) == MTOK_EUSAGE, "send to itself refused");
    CHECK(strstr(mtok_errmsg(), "itself"), "message says why: %s", mtok_errmsg());
    CHECK(mp_recv(w, f, 1, MP_F32, 0, 0) == MTOK_EUSAGE, "receive from itself refused");
    CHECK(mp_send(w, f, 1, MP_F32, 1, 0) == MTOK_EUSAGE, "send to a rank that does not exist refused");
    CHECK(mp_recv(w, f, 1, MP_F32, -1, 0) == MTOK_EUSAGE, "receive from rank -1 refused");
    CHECK(mp_allreduce_sum(NULL, f, 1, MP_F32) == MTOK_EUSAGE, "NULL communicator refused");
}

static void check_split(mp_comm *w) {
    mp_comm *a = NULL, *b = NULL, *c = NULL;
    CHECK(mp_split(w, 0, 0, &a) == 0 && a, "split of one rank");
    CHECK(mp_size(a) == 1 && mp_rank(a) == 0 && mp_backend_of(a) == MP_BACKEND_SINGLE, "the split is single too");
    CHECK(mp_split(a, 3, 1, &b) == 0 && b, "split of a split");
    CHECK(mp_split(w, -2, 0, &c) == MTOK_EUSAGE && !c, "negative color refused");
    float x = 4;
    CHECK(mp_allreduce_sum(b, &x, 1, MP_F32) == 0 && x == 4, "collective on a split");
    mp_comm_free(a);
    mp_comm_free(w); /* the world is not freed by mp_comm_free: finalize does it */
    CHECK(mp_barrier(w) == 0, "the world survives mp_comm_free");
    /* b is left for mp_world_finalize to free (the ASan build checks that nothing leaks) */
}

static void check_nccl(mp_comm *w) {
    mp_comm *n = NULL;
    int rc = mp_nccl_create(w, 0, &n);
    if (!mp_have_nccl()) {
        CHECK(rc == MTOK_EUSAGE && !n, "a build without NCCL says so (rc %d)", rc);
        CHECK(strstr(mtok_errmsg(), "without NCCL"), "message: %s", mtok_errmsg());
    } else if (rc) {
        /* no GPU here: the expected answer (test_comm_nccl exercises a present GPU) */
        CHECK(rc == MTOK_ERESOURCE && !n && strstr(mtok_errmsg(), "no GPU"), "no GPU: rc %d %s", rc, mtok_errmsg());
    } else {
        CHECK(mp_backend_of(n) == MP_BACKEND_NCCL && mp_size(n) == 1, "NCCL communicator of one rank");
        mp_comm_free(n);
    }
}

static void check_place(mp_comm *w) {
    char desc[512], topo[8192];
    CHECK(mp_topology_describe(topo, sizeof topo) == 0, "topology: %s", mtok_errmsg());
    CHECK(!strncmp(topo, "topology: ", 10) && strstr(topo, "NUMA node"), "topology text:\n%s", topo);
    char tiny[16];
    CHECK(mp_topology_describe(tiny, sizeof tiny) == 0 && strlen(tiny) == sizeof tiny - 1, "truncates safely");
    CHECK(mp_bind_plan(w, 1, -1, desc, sizeof desc) == 0, "plan: %s", mtok_errmsg());
    CHECK(strstr(desc, "local rank 0 of 1: 1 core"), "plan of one thread: %s", desc);
    CHECK(mp_bind_plan(w, 0, 0, desc, sizeof desc) == 0 && strstr(desc, "GPU 0"), "plan with a GPU: %s", desc);
    int before = mp_bound_cores();
    CHECK(before >= 1, "bound cores %d", before);
    CHECK(mp_bind(w, 0, -1, desc, sizeof desc) == 0, "bind: %s", desc);
    CHECK(strstr(desc, "whole machine"), "a lone rank keeps the machine: %s", desc);
    printf("topology:\n%sbinding: %s\nbound cores: %d (before: %d)\n", topo, desc, mp_bound_cores(), before);
}

int main(int argc, char **argv) {
    /* a ctest run started under mpirun would make this a multi-rank world: not what is tested */
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK")) return 77;
    check_world_env();
    mp_comm *w = NULL;
    int rc = mp_world_init(&argc, &argv, 0, &w);
    CHECK(rc == 0 && w, "world init: %s", mtok_errmsg());
    if (!w) return 1;
    CHECK(mp_backend_of(w) == MP_BACKEND_SINGLE && !strcmp(mp_backend_name(mp_backend_of(w)), "single"), "single");
    CHECK(mp_rank(w) == 0 && mp_size(w) == 1 && mp_local_rank(w) == 0 && mp_local_size(w) == 1, "one rank");
    check_collectives(w);
    check_split(w);
    check_nccl(w);
    check_place(w);
    fprintf(stderr, "(expected) ");
    mp_abort(w, 3, "mp_abort of a single rank returns"); /* must return: we are still here */
    mp_world_finalize(w);
    printf("mpi %s, nccl %s\n", mp_have_mpi() ? "built" : "not built", mp_have_nccl() ? "built" : "not built");
    return check_failures != 0;
}
