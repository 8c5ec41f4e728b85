/* test_comm_nccl.c — the NCCL backend on one rank (parallel/comm_nccl.c).
 *
 * Skipped (77) when the build has no NCCL, or when mp_nccl_create answers MTOK_ERESOURCE "no GPU"
 * (the CI machine: toolkit and NCCL installed, no device) — that answer itself is the check there.
 * With a GPU: a one-rank NCCL communicator on device 0, every collective on device buffers against
 * exact values, point-to-point refused, and clean teardown through mp_world_finalize. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mtok.h"
#include "parallel/parallel.h"

#ifdef MTOK_HAVE_NCCL
#include <cuda_runtime_api.h>

static void check_on_gpu(mp_comm *n) {
    float host[64], back[64];
    for (int i = 0; i < 64; i++) host[i] = (float)i * 0.25f;
    float *d = NULL, *g = NULL;
    CHECK(cudaMalloc((void **)&d, sizeof host) == cudaSuccess && cudaMalloc((void **)&g, sizeof host) == cudaSuccess,
          "cudaMalloc");
    if (!d || !g) return;
    cudaMemcpy(d, host, sizeof host, cudaMemcpyHostToDevice);
    CHECK(mp_allreduce_sum(n, d, 64, MP_F32) == 0, "all-reduce: %s", mtok_errmsg());
    cudaMemcpy(back, d, sizeof back, cudaMemcpyDeviceToHost);
    CHECK(!memcmp(host, back, sizeof host), "one-rank all-reduce keeps the values");
    CHECK(mp_bcast(n, d, 64, MP_F32, 0) == 0, "broadcast: %s", mtok_errmsg());
    size_t counts[1] = {40};
    cudaMemset(g, 0, sizeof host);
    CHECK(mp_allgather(n, d, 40, g, counts, MP_F32) == 0, "all-gather: %s", mtok_errmsg());
    cudaMemcpy(back, g, sizeof back, cudaMemcpyDeviceToHost);
    CHECK(!memcmp(host, back, 40 * sizeof *host) && back[40] == 0, "all-gather copies 40 elements");
    CHECK(mp_allgather(n, d, 64, g, NULL, MP_F32) == 0, "equal all-gather: %s", mtok_errmsg());
    CHECK(mp_barrier(n) == 0, "barrier: %s", mtok_errmsg());
    CHECK(mp_send(n, d, 1, MP_F32, 0, 0) == MTOK_EUSAGE, "send to itself refused");
    cudaFree(d);
    cudaFree(g);
}
#endif

int main(int argc, char **argv) {
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK")) return 77;
    if (!mp_have_nccl()) {
        printf("built without NCCL: skipped\n");
        return 77;
    }
    mp_comm *w = NULL, *n = NULL;
    if (mp_world_init(&argc, &argv, 0, &w)) {
        fprintf(stderr, "world: %s\n", mtok_errmsg());
        return 1;
    }
    int rc = mp_nccl_create(w, 99, &n);
    if (rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), "no GPU")) {
        CHECK(!n && strstr(mtok_errmsg(), "rank 0: no GPU for NCCL"), "message: %s", mtok_errmsg());
        printf("%s: skipped\n", mtok_errmsg());
        mp_world_finalize(w);
        return check_failures ? 1 : 77;
    }
    CHECK(rc == MTOK_EUSAGE && strstr(mtok_errmsg(), "GPU 99"), "a GPU that does not exist: %d %s", rc, mtok_errmsg());
    rc = mp_nccl_create(w, 0, &n);
    CHECK(rc == 0 && n, "NCCL communicator on GPU 0: %s", mtok_errmsg());
#ifdef MTOK_HAVE_NCCL
    if (n) {
        CHECK(mp_backend_of(n) == MP_BACKEND_NCCL && mp_size(n) == 1 && mp_rank(n) == 0, "one NCCL rank");
        check_on_gpu(n);
    }
#endif
    mp_world_finalize(w); /* frees n */
    if (!check_failures) printf("NCCL one-rank checks ok\n");
    return check_failures != 0;
}
