/* comm_int.h — what the files of parallel/ share behind parallel.h (not for other modules).
 *
 * comm.c owns the mp_comm struct, the world, the single-rank backend and the dispatch of every
 * public call to a backend; comm_mpi.c is the MPI backend, comm_nccl.c the NCCL one; comm_util.c
 * holds the helpers below (mp__*) that all three use, so the backends never call comm.c. A backend
 * function is reached only for communicators of its kind, so a build without MPI or NCCL links
 * backends that say so if ever called (the create functions report what is missing). */
#ifndef MTOK_PARALLEL_COMM_INT_H
#define MTOK_PARALLEL_COMM_INT_H

#include "parallel.h"

typedef struct mp_mpi mp_mpi;   /* comm_mpi.c: the MPI_Comm and its scratch */
typedef struct mp_nccl mp_nccl; /* comm_nccl.c: ncclComm_t, stream, device scratch */

struct mp_comm {
    mp_backend backend;
    int rank, size;
    int local_rank, local_size; /* among the ranks of this node that belong to this communicator */
    /* Set once an operation timed out or failed mid-flight: the peers may still be inside that
     * operation, so every later call fails at once instead of mismatching collectives. */
    int broken;
    mp_mpi *mpi;   /* MP_BACKEND_MPI (and the world of an MPI run) */
    mp_nccl *nccl; /* MP_BACKEND_NCCL */
    /* Communicators made from the world (split, NCCL) hang off it so that mp_world_finalize can free
     * what the caller forgot, in reverse order of creation, before MPI_Finalize. */
    mp_comm *world;          /* NULL for the world itself */
    mp_comm *prev, *next;    /* the world's list of derived communicators */
    mp_comm *derived;        /* the world: newest derived communicator first */
};

/* Monotonic seconds. */
double mp__now(void);
/* One wait for an unfinished operation. Between polls, mp__poll_pause spins for the first 1 ms,
 * yielding the CPU every 8th poll (a peer sharing this core, mpirun --oversubscribe, gets to run;
 * on a core of its own the poll resumes at once: nonblocking MPI collectives progress only while
 * polled, so sleeping here would stretch every round of the algorithm), then sleeps 20 µs doubling
 * to 1 ms, so a long wait costs no CPU and adds at most ~1 ms of latency. */
typedef struct {
    double t0;     /* mp__now() at the start */
    long polls;
    long sleep_ns; /* current sleep, once past the spinning phase */
} mp__poll;
void mp__poll_start(mp__poll *p);
void mp__poll_pause(mp__poll *p);
size_t mp__dtype_size(mp_dtype t);
const char *mp__op_name(int op);
/* The message of a timeout, shared by the backends so that users grep for one text; peer >= 0
 * names the rank a send or receive waited for. The caller decides whether c is now broken. */
int mp__timeout_err(const mp_comm *c, int op, size_t count, mp_dtype t, int peer, double waited);
/* Links a new communicator into world's list (and copies the world pointer). */
void mp__adopt(mp_comm *world, mp_comm *c);

enum { MP_OP_ALLREDUCE, MP_OP_ALLGATHER, MP_OP_BCAST, MP_OP_BARRIER, MP_OP_SEND, MP_OP_RECV };

/* ---- MPI backend (comm_mpi.c) ---- */
int mp__mpi_init(int *argc, char ***argv, mp_comm *world);
void mp__mpi_finalize(mp_comm *world, int clean);
int mp__mpi_split(mp_comm *c, int color, int key, mp_comm *out);
void mp__mpi_free(mp_comm *c);
void mp__mpi_abort(int code);
int mp__mpi_allreduce(mp_comm *c, void *buf, size_t count, mp_dtype t);
int mp__mpi_allgather(mp_comm *c, const void *send, size_t count, void *recv, const size_t *counts, mp_dtype t);
int mp__mpi_bcast(mp_comm *c, void *buf, size_t count, mp_dtype t, int root);
int mp__mpi_barrier(mp_comm *c);
int mp__mpi_send(mp_comm *c, const void *buf, size_t count, mp_dtype t, int peer, int tag);
int mp__mpi_recv(mp_comm *c, void *buf, size_t count, mp_dtype t, int peer, int tag);
/* Largest element count one MPI call carries (MPI counts are int); bigger buffers go in pieces.
 * Tests lower it to exercise the piecewise paths with small buffers. Returns the previous value. */
size_t mp__mpi_set_chunk(size_t elems);

/* ---- NCCL backend (comm_nccl.c) ---- */
/* A NCCL communicator is made in two steps around the agreement and the broadcast of the
 * ncclUniqueId that mp_nccl_create (comm.c) runs over the host communicator, so this backend never
 * calls comm.c's collectives back. prepare: this rank alone selects its GPU, makes a stream and
 * scratch, and on host rank 0 writes a new ncclUniqueId into id[MP__NCCL_ID_BYTES]. join: every
 * rank joins with rank 0's id (discarding what prepare made if that fails). discard: frees what
 * prepare made when the ranks do not all get to join. */
#define MP__NCCL_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */
int mp__nccl_prepare(mp_comm *host, int device, mp_comm *out, void *id);
int mp__nccl_join(mp_comm *host, mp_comm *out, const void *id);
void mp__nccl_discard(mp_comm *out);
void mp__nccl_free(mp_comm *c);
int mp__nccl_allreduce(mp_comm *c, void *buf, size_t count, mp_dtype t);
int mp__nccl_allgather(mp_comm *c, const void *send, size_t count, void *recv, const size_t *counts, mp_dtype t);
int mp__nccl_bcast(mp_comm *c, void *buf, size_t count, mp_dtype t, int root);
int mp__nccl_barrier(mp_comm *c);
int mp__nccl_send(mp_comm *c, const void *buf, size_t count, mp_dtype t, int peer, int tag);
int mp__nccl_recv(mp_comm *c, void *buf, size_t count, mp_dtype t, int peer, int tag);

#endif
