/* mpi_comm_check.c — one rank of a multi-rank communicator check, run by tests/test_comm_mpi.py
 * under `mpirun -np N`. Modes (argv[1]):
 *   basic            every collective and point-to-point call against exact expected values, with
 *                    unequal all-gather counts, splits, piecewise (chunked) transfers, argument and
 *                    message-size errors, a receive timeout, and NCCL bootstrap over MPI;
 *   fail R           rank R ends the job with mp_abort while the others wait in an all-reduce;
 *   stall R S        rank R sleeps S seconds before the all-reduce (the others time out:
 *                    MTOK_COMM_TIMEOUT), then every rank that fails calls mp_abort;
 *   loop             all-reduces forever (prints "pid R PID" first) until a rank is killed;
 *   wait R           rank R prints its pid and sleeps, the others wait in an all-reduce;
 *   bench [N]        times N all-reduces of 4096 floats (one hidden state) and a barrier.
 * Prints "rank R/N: basic ok" on success; FAIL lines and a non-zero exit otherwise. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mtok.h"
#include "parallel/layout.h"
#include "parallel/comm_int.h"

static int R, N;

static void fail_job(mp_comm *w, int rc) {
    char msg[1200];
    snprintf(msg, sizeof msg, "%s", mtok_errmsg());
    mp_abort(w, rc, msg);
}

static void check_allreduce(mp_comm *c) {
    float f[33];
    for (int i = 0; i < 33; i++) f[i] = (float)R + 0.5f * (float)i;
    CHECK(mp_allreduce_sum(c, f, 33, MP_F32) == 0, "all-reduce f32: %s", mtok_errmsg());
    for (int i = 0; i < 33; i++)
        CHECK(f[i] == (float)(N * (N - 1) / 2) + 0.5f * (float)i * (float)N, "f32 sum [%d] = %g", i, f[i]);
    int64_t l[3] = {(INT64_C(1) << 40) * (R + 1), -R, R * R};
    CHECK(mp_allreduce_sum(c, l, 3, MP_I64) == 0, "all-reduce i64: %s", mtok_errmsg());
    CHECK(l[0] == (INT64_C(1) << 40) * N * (N + 1) / 2 && l[1] == -(int64_t)N * (N - 1) / 2, "i64 sums %lld %lld",
          (long long)l[0], (long long)l[1]);
    int32_t k = R + 1;
    CHECK(mp_allreduce_sum(c, &k, 1, MP_I32) == 0 && k == N * (N + 1) / 2, "i32 sum %d", k);
    unsigned char b[2] = {1, (unsigned char)R};
    CHECK(mp_allreduce_sum(c, b, 2, MP_BYTE) == 0 && b[0] == N, "byte sum %d", b[0]);
}

static void check_allgather(mp_comm *c) {
    int n = mp_size(c), r = mp_rank(c);
    size_t counts[64], total = 0;
    for (int q = 0; q < n; q++) total += counts[q] = q % 2 ? (size_t)q + 2 : (size_t)q; /* rank 0 sends nothing */
    int32_t send[80], recv[400];
    for (size_t j = 0; j < counts[r]; j++) send[j] = r * 1000 + (int32_t)j;
    memset(recv, 0xff, sizeof recv);
    CHECK(mp_allgather(c, send, counts[r], recv, counts, MP_I32) == 0, "all-gather unequal: %s", mtok_errmsg());
    size_t off = 0;
    for (int q = 0; q < n; q++)
        for (size_t j = 0; j < counts[q]; j++, off++)
            CHECK(recv[off] == q * 1000 + (int32_t)j, "unequal all-gather: recv[%zu] = %d from rank %d", off,
                  recv[off], q);
    CHECK(recv[total] == -1, "all-gather wrote past the end");
    float fs[5], fr[5 * 64];
    for (int j = 0; j < 5; j++) fs[j] = (float)(r * 10 + j);
    CHECK(mp_allgather(c, fs, 5, fr, NULL, MP_F32) == 0, "all-gather equal: %s", mtok_errmsg());
    for (int j = 0; j < 5 * n; j++) CHECK(fr[j] == (float)((j / 5) * 10 + j % 5), "equal all-gather [%d] %g", j, fr[j]);
}

static void check_bcast_p2p(mp_comm *c) {
    int n = mp_size(c), r = mp_rank(c);
    for (int root = 0; root < n; root++) {
        int64_t v[4] = {0};
        if (r == root)
            for (int j = 0; j < 4; j++) v[j] = root * 100 + j;
        CHECK(mp_bcast(c, v, 4, MP_I64, root) == 0, "bcast from %d: %s", root, mtok_errmsg());
        for (int j = 0; j < 4; j++)
            CHECK(v[j] == root * 100 + j, "bcast root %d [%d] = %lld", root, j, (long long)v[j]);
    }
    CHECK(mp_bcast(c, &n, 1, MP_I32, n) == MTOK_EUSAGE, "root out of range refused on every rank");
    CHECK(mp_barrier(c) == 0, "barrier: %s", mtok_errmsg());
    if (n < 2) return;
    /* a ring: even ranks send first, odd ranks receive first */
    float out[50], in[50];
    for (int j = 0; j < 50; j++) out[j] = (float)(r * 100 + j);
    int next = (r + 1) % n, prev = (r + n - 1) % n, rc1, rc2;
    if (r % 2 == 0) {
        rc1 = mp_send(c, out, 50, MP_F32, next, 5);
        rc2 = mp_recv(c, in, 50, MP_F32, prev, 5);
    } else {
        rc2 = mp_recv(c, in, 50, MP_F32, prev, 5);
        rc1 = mp_send(c, out, 50, MP_F32, next, 5);
    }
    CHECK(!rc1 && !rc2, "ring send/recv: %s", mtok_errmsg());
    for (int j = 0; j < 50; j++) CHECK(in[j] == (float)(prev * 100 + j), "ring recv [%d] = %g", j, in[j]);
}

/* Message-size mismatches between ranks 0 and 1 fail on the receiver and leave the communicator
 * usable; a receive nobody answers times out and is withdrawn. */
static void check_p2p_errors(mp_comm *c) {
    int r = mp_rank(c);
    float x[5] = {1, 2, 3, 4, 5};
    if (r == 0) {
        CHECK(mp_send(c, x, 5, MP_F32, 1, 7) == 0, "send 5: %s", mtok_errmsg());
        int rc = mp_recv(c, x, 5, MP_F32, 1, 8);
        CHECK(rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), "expected 5") && strstr(mtok_errmsg(), "received 3"),
              "short message: rc %d %s", rc, mtok_errmsg());
        double t = mp_get_timeout();
        mp_set_timeout(0.3);
        rc = mp_recv(c, x, 4, MP_F32, 1, 99);
        mp_set_timeout(t);
        CHECK(rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), "receive of 4 floats from rank 1 timed out"),
              "unanswered receive: rc %d %s", rc, mtok_errmsg());
    } else if (r == 1) {
        int rc = mp_recv(c, x, 3, MP_F32, 0, 7);
        CHECK(rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), "rank 1: receive"), "truncated: rc %d %s", rc,
              mtok_errmsg());
        CHECK(mp_send(c, x, 3, MP_F32, 0, 8) == 0, "send 3: %s", mtok_errmsg());
    }
    CHECK(mp_barrier(c) == 0, "communicator usable after message errors: %s", mtok_errmsg());
}

static void check_split(mp_comm *w) {
    /* like --tp 2: tp groups of consecutive ranks, cp groups across them; key -R reverses order */
    mp_comm *odd = NULL, *tp = NULL, *cp = NULL;
    CHECK(mp_split(w, R % 2, -R, &odd) == 0, "split: %s", mtok_errmsg());
    int members = (N - R % 2 + 1) / 2;
    CHECK(mp_size(odd) == members && mp_rank(odd) == members - 1 - R / 2, "split by parity, reversed: %d/%d",
          mp_rank(odd), mp_size(odd));
    CHECK(mp_local_size(odd) == members && mp_local_rank(odd) == mp_rank(odd), "split local ranks");
    int32_t s = R;
    CHECK(mp_allreduce_sum(odd, &s, 1, MP_I32) == 0, "split all-reduce: %s", mtok_errmsg());
    int32_t want = 0;
    for (int q = R % 2; q < N; q += 2) want += q;
    CHECK(s == want, "split all-reduce %d, want %d", s, want);
    check_allgather(odd);
    check_bcast_p2p(odd);
    if (N % 2 == 0) {
        mp_layout lay; /* the CLI's layout (parallel/layout.h): tp 2 x cp N/2 */
        CHECK(!mp_layout_init(&lay, 2, N / 2, R, N, 0) && !mp_layout_split(&lay, w, &tp, &cp), "tp/cp split: %s",
              mtok_errmsg());
        CHECK(lay.tp_rank == R % 2 && lay.cp_rank == R / 2, "layout of rank %d: tp %d cp %d", R, lay.tp_rank,
              lay.cp_rank);
        CHECK(mp_size(tp) == 2 && mp_rank(tp) == R % 2 && mp_size(cp) == N / 2 && mp_rank(cp) == R / 2, "tp/cp ranks");
        float v = (float)R;
        CHECK(mp_allreduce_sum(tp, &v, 1, MP_F32) == 0 && v == (float)(2 * (R / 2) * 2 + 1), "tp sum %g", v);
        mp_comm_free(tp);
    }
    mp_comm_free(odd);
    (void)cp; /* left to mp_world_finalize */
}

static void check_chunked(mp_comm *w) {
    size_t old = mp__mpi_set_chunk(7); /* every transfer below goes in pieces of 7 elements */
    check_allreduce(w);
    check_allgather(w);
    check_bcast_p2p(w);
    float big[100];
    for (int i = 0; i < 100; i++) big[i] = (float)(R * i);
    CHECK(mp_allreduce_sum(w, big, 100, MP_F32) == 0, "chunked all-reduce: %s", mtok_errmsg());
    for (int i = 0; i < 100; i++) CHECK(big[i] == (float)(i * N * (N - 1) / 2), "chunked [%d] = %g", i, big[i]);
    mp__mpi_set_chunk(old);
}

static int basic(mp_comm *w) {
    CHECK(mp_backend_of(w) == MP_BACKEND_MPI, "backend %s", mp_backend_name(mp_backend_of(w)));
    CHECK(mp_local_size(w) == N && mp_local_rank(w) == R, "one node: local %d/%d", mp_local_rank(w), mp_local_size(w));
    check_allreduce(w);
    check_allgather(w);
    check_bcast_p2p(w);
    check_p2p_errors(w);
    check_split(w);
    check_chunked(w);
    mp_comm *n = NULL;
    int rc = mp_nccl_create(w, -1, &n);
    if (!mp_have_nccl())
        CHECK(rc == MTOK_EUSAGE, "no NCCL in the build: %d %s", rc, mtok_errmsg());
    else if (rc)
        CHECK(rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), "no GPU"), "NCCL without GPU: %d %s", rc, mtok_errmsg());
    CHECK(mp_barrier(w) == 0, "world usable after the NCCL attempt: %s", mtok_errmsg());
    char desc[400];
    CHECK(mp_bind_plan(w, 0, -1, desc, sizeof desc) == 0, "bind plan");
    char want[64];
    snprintf(want, sizeof want, "local rank %d of %d", R, N);
    CHECK(strstr(desc, want), "plan names the local rank: %s", desc);
    if (!check_failures) printf("rank %d/%d: basic ok (%s)\n", R, N, desc);
    return check_failures != 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: mpi_comm_check basic|fail R|stall R S|loop|wait R\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_comm *w = NULL;
    int rc = mp_world_init(&argc, &argv, 1, &w);
    if (rc) {
        fprintf(stderr, "mpi_comm_check: %s\n", mtok_errmsg());
        return rc == MTOK_EUSAGE ? 77 : 1; /* built without MPI */
    }
    R = mp_rank(w), N = mp_size(w);
    const char *mode = argv[1];
    int who = argc > 2 ? atoi(argv[2]) : 1;
    int fails = 0;
    if (!strcmp(mode, "basic")) {
        fails = basic(w);
    } else if (!strcmp(mode, "fail")) {
        float x = 1;
        if (R == who) {
            usleep(200000); /* let the others enter the all-reduce first */
            mtok_err(MTOK_EINPUT, "rank %d: deliberate failure", R);
            fail_job(w, MTOK_EINPUT);
        }
        if ((rc = mp_allreduce_sum(w, &x, 1, MP_F32))) fail_job(w, rc);
        fails = 1; /* not reached: the job was aborted */
    } else if (!strcmp(mode, "stall")) {
        float x = 1;
        if (R == who) sleep((unsigned)(argc > 3 ? atoi(argv[3]) : 30));
        if ((rc = mp_allreduce_sum(w, &x, 1, MP_F32))) fail_job(w, rc);
    } else if (!strcmp(mode, "loop")) {
        printf("pid %d %d\n", R, (int)getpid());
        static float buf[1 << 18];
        for (long it = 0;; it++) {
            if ((rc = mp_allreduce_sum(w, buf, sizeof buf / sizeof *buf, MP_F32))) fail_job(w, rc);
            if (it == 3) printf("looping %d\n", R);
        }
    } else if (!strcmp(mode, "wait")) {
        float x = 1;
        printf("pid %d %d\n", R, (int)getpid());
        if (R == who) sleep(600);
        if ((rc = mp_allreduce_sum(w, &x, 1, MP_F32))) fail_job(w, rc);
    } else if (!strcmp(mode, "bench")) {
        static float h[4096];
        int iters = argc > 2 ? atoi(argv[2]) : 2000;
        for (int pass = 0; pass < 2 && !rc; pass++) {
            double t0 = mp__now();
            for (int i = 0; i < iters && !rc; i++) rc = pass ? mp_barrier(w) : mp_allreduce_sum(w, h, 4096, MP_F32);
            if (R == 0) printf("%s: %.1f us per call (%d ranks)\n", pass ? "barrier" : "all-reduce of 4096 floats",
                               1e6 * (mp__now() - t0) / iters, N);
        }
        fails = rc != 0;
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        fails = 1;
    }
    mp_world_finalize(w);
    return fails;
}
