/* parallel.h — communicators and placement for multi-rank runs (prefix mp_). Design: docs/PARALLEL.md.
 *
 * A communicator is a group of ranks with collectives (all-reduce sum, all-gather, broadcast,
 * barrier) and point-to-point messages. Backends, chosen at run time:
 *   single — one rank, every collective is a copy or nothing (a build without MPI has only this);
 *   mpi    — Open MPI on host buffers (launch with mpirun/srun; MPI also bootstraps NCCL);
 *   nccl   — NCCL on device buffers, made from an MPI communicator by broadcasting the
 *            ncclUniqueId over it (built only when the CUDA toolkit with NCCL is found).
 * Every call returns 0 or an mtok error code with a message naming this rank (mtok_errmsg()).
 * A collective that does not complete within the timeout (mp_set_timeout) fails with
 * MTOK_ERESOURCE naming the operation and the ranks that did not arrive where known; a peer that
 * died makes the job end (mp_abort) instead of hanging. After such a failure the communicator is
 * unusable (its peers may still be inside the failed operation): every later call on it fails at
 * once, and the caller should end the job with mp_abort. */
#ifndef MTOK_PARALLEL_H
#define MTOK_PARALLEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct mp_comm mp_comm;

typedef enum { MP_BACKEND_SINGLE = 0, MP_BACKEND_MPI = 1, MP_BACKEND_NCCL = 2 } mp_backend;
typedef enum { MP_F32 = 0, MP_I32 = 1, MP_I64 = 2, MP_BYTE = 3 } mp_dtype;

/* ---- world ----
 * Starts MPI when the process was launched by mpirun/srun (OMPI_COMM_WORLD_SIZE, PMI_SIZE or
 * PMIX_RANK in the environment) or when force_mpi is set; otherwise returns a single-rank world.
 * A build without MPI returns a single-rank world, and an error if force_mpi is set or the
 * environment says the process is one of several ranks. Call once per process. */
int mp_world_init(int *argc, char ***argv, int force_mpi, mp_comm **world);
/* Frees sub-communicators first; finalizes MPI when the world used it. */
void mp_world_finalize(mp_comm *world);
/* Ends every rank of the job now: prints "mtok: error: rank R: msg" on stderr and calls
 * MPI_Abort (single rank: prints the same line and returns so the caller can exit with code).
 * code: an exit status > 0, or an MTOK_E* code mapped as the CLI does (1 usage, 2 input,
 * 3 resource, 4 internal); mpirun exits with it. Never returns under MPI. */
void mp_abort(const mp_comm *c, int code, const char *msg);

int mp_rank(const mp_comm *c);
int mp_size(const mp_comm *c);
/* Rank among the ranks of this node (OMPI_COMM_WORLD_LOCAL_RANK or equivalent; 0 single). */
int mp_local_rank(const mp_comm *c);
int mp_local_size(const mp_comm *c);
mp_backend mp_backend_of(const mp_comm *c);
const char *mp_backend_name(mp_backend b);

/* Ranks with the same color form one new communicator, ordered by key then old rank. */
int mp_split(mp_comm *c, int color, int key, mp_comm **out);
void mp_comm_free(mp_comm *c);

/* Seconds a collective, send or receive may wait before failing (default 60; 0 disables). Also
 * read from MTOK_COMM_TIMEOUT at mp_world_init. Process-wide. */
void mp_set_timeout(double seconds);
double mp_get_timeout(void);

/* ---- collectives: buffers are host memory for single/mpi, device memory for nccl ---- */
int mp_allreduce_sum(mp_comm *c, void *buf, size_t count, mp_dtype t);             /* in place */
/* recv receives every rank's send in rank order; counts[r] elements from rank r (counts may
 * differ between ranks; NULL: every rank sends `count`). recv may not alias send. */
int mp_allgather(mp_comm *c, const void *send, size_t count, void *recv, const size_t *counts, mp_dtype t);
int mp_bcast(mp_comm *c, void *buf, size_t count, mp_dtype t, int root);
int mp_barrier(mp_comm *c);
/* Point-to-point: peer != own rank, tag 0..32767 (NCCL ignores tags: messages between two ranks
 * match in the order issued). The receiver must expect exactly the count sent. */
int mp_send(mp_comm *c, const void *buf, size_t count, mp_dtype t, int peer, int tag);
int mp_recv(mp_comm *c, void *buf, size_t count, mp_dtype t, int peer, int tag);

/* ---- NCCL (device buffers) ----
 * Makes a NCCL communicator over the ranks of `host` (an MPI or single communicator): rank 0
 * creates the ncclUniqueId and broadcasts it over `host`, every rank selects CUDA device `device`
 * (< 0: local rank mod the GPUs of the node) and joins. Collective over `host`: the ranks first
 * agree that every one of them has its GPU, so one rank without a GPU makes all of them fail
 * instead of leaving the others waiting. MTOK_EUSAGE when the build has no NCCL; MTOK_ERESOURCE
 * when no GPU is present ("no GPU for NCCL ..."). mp_world_finalize frees it if the caller does not. */
int mp_nccl_create(mp_comm *host, int device, mp_comm **out);
int mp_have_nccl(void); /* 1 when the build includes the NCCL backend */
int mp_have_mpi(void);  /* 1 when the build includes the MPI backend */

/* ---- placement (hwloc) ----
 * Binds the calling process (and so the OpenMP threads it starts afterwards) to `threads` cores of
 * one NUMA node chosen by the local rank: ranks on a node are spread over its NUMA nodes, then
 * over disjoint cores within a node; with gpu >= 0 the NUMA node nearest that GPU is preferred.
 * threads <= 0: all cores of the chosen share. A lone rank on its node without a GPU keeps the
 * whole machine. One PU per core is bound. Writes one line describing the binding (cores,
 * NUMA node, GPU) into desc. Must run before the first OpenMP parallel region. Binding failure is
 * not an error (containers may forbid it): the line says so.
 * OpenMP (libgomp) sizes its default team from the affinity mask it saw at program start (one
 * core under mpirun's default binding for -np <= 2): pass omp_set_num_threads(mp_bound_cores())
 * when the user gave no --threads. */
int mp_bind(const mp_comm *world, int threads, int gpu, char *desc, size_t cap);
/* The binding mp_bind would choose, described in desc, without applying it (`mtok info`). */
int mp_bind_plan(const mp_comm *world, int threads, int gpu, char *desc, size_t cap);
/* Cores this process is allowed to run on (after mp_bind, or as launched). */
int mp_bound_cores(void);
/* Writes a multi-line description of the machine topology (packages, NUMA nodes with memory,
 * cores, PUs, GPUs/NICs hwloc sees) for `mtok info`. */
int mp_topology_describe(char *buf, size_t cap);

#endif
