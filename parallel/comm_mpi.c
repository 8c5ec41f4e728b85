/* comm_mpi.c — the MPI backend: host buffers, Open MPI (or any MPI-3 library).
 *
 * Failure model. Every communicator has MPI_ERRORS_RETURN, so an MPI error comes back as a code and
 * is reported with MPI_Error_string instead of killing the process inside the library. Every
 * operation is started nonblocking (MPI_Iallreduce, MPI_Iallgatherv, MPI_Ibcast, MPI_Ibarrier,
 * MPI_Isend, MPI_Irecv) and completed by wait_req(), which polls MPI_Test, spinning and then
 * sleeping between polls (mp__poll_pause), until the deadline (mp_set_timeout): a rank that stalls
 * or whose peer vanished without the launcher noticing gets MTOK_ERESOURCE naming the operation
 * after the timeout, never a silent hang. The pauses matter when ranks share cores (mpirun
 * --oversubscribe): a busy MPI_Wait would take the CPU from the very peer it waits for. A timed-out
 * collective cannot be cancelled (MPI forbids freeing or cancelling a pending collective request),
 * so the communicator is marked broken and the caller is expected to end the job with mp_abort.
 *
 * A rank killed outright (SIGKILL, OOM) is the launcher's business: Open MPI's mpirun notices the
 * dead process and terminates the others within about a second (docs/PARALLEL.md, "Failures").
 *
 * MPI counts are int, so buffers of more than `g_chunk` elements travel in pieces. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/mtok_base.h"
#include "comm_int.h"

#ifdef MTOK_HAVE_MPI
#include <mpi.h>

struct mp_mpi {
    MPI_Comm comm;
};

/* Process-wide: a property of the MPI library (int counts), not of a communicator. */
static size_t g_chunk = (size_t)1 << 30;

int mp_have_mpi(void) { return 1; }

size_t mp__mpi_set_chunk(size_t elems) {
    size_t old = g_chunk;
    g_chunk = elems ? (elems > (size_t)INT_MAX ? (size_t)INT_MAX : elems) : ((size_t)1 << 30);
    return old;
}

static MPI_Datatype mpi_type(mp_dtype t) {
    switch (t) {
    case MP_F32: return MPI_FLOAT;
    case MP_I32: return MPI_INT32_T;
    case MP_I64: return MPI_INT64_T;
    case MP_BYTE: return MPI_UINT8_T; /* not MPI_BYTE: MPI_SUM is defined on integer types only */
    }
    return MPI_DATATYPE_NULL;
}

static int mpi_fail(mp_comm *c, int mrc, const char *what) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0, cls = MPI_ERR_OTHER;
    if (MPI_Error_string(mrc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", mrc);
    MPI_Error_class(mrc, &cls);
    /* a truncated message was consumed whole: the ranks still agree on what comes next */
    if (cls != MPI_ERR_TRUNCATE) c->broken = 1;
    return mtok_err(MTOK_ERESOURCE, "rank %d: %s on a %d-rank communicator failed: %s", c->rank, what, c->size, s);
}

/* Completes *req within the timeout. peer >= 0 for point-to-point (named in the message). For a
 * receive, got (may be NULL) receives the element count that arrived. */
static int wait_req(mp_comm *c, MPI_Request *req, int op, size_t count, mp_dtype t, int peer, int *got) {
    const double limit = mp_get_timeout();
    mp__poll poll;
    mp__poll_start(&poll);
    for (;;) {
        int done = 0;
        MPI_Status st;
        int mrc = MPI_Test(req, &done, &st);
        if (mrc != MPI_SUCCESS) return mpi_fail(c, mrc, mp__op_name(op));
        if (done) {
            if (got) MPI_Get_count(&st, mpi_type(t), got);
            return 0;
        }
        double waited = mp__now() - poll.t0;
        if (limit > 0 && waited > limit) {
            if (op == MP_OP_RECV) { /* a pending receive can be withdrawn; a collective cannot */
                int cancelled = 0;
                MPI_Cancel(req);
                MPI_Wait(req, &st);
                MPI_Test_cancelled(&st, &cancelled);
                if (!cancelled) { /* it arrived after all */
                    if (got) MPI_Get_count(&st, mpi_type(t), got);
                    return 0;
                }
            } else {
                c->broken = 1;
            }
            return mp__timeout_err(c, op, count, t, peer, waited);
        }
        mp__poll_pause(&poll);
    }
}

static int set_errhandler(mp_comm *c, MPI_Comm comm) {
    int mrc = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    return mrc == MPI_SUCCESS ? 0 : mpi_fail(c, mrc, "setting MPI_ERRORS_RETURN");
}

/* Fills rank, size, local_rank, local_size of c from its MPI communicator. Ranks sharing memory are
 * "local" (MPI_Comm_split_type SHARED): the same answer under mpirun and srun, and for a split
 * communicator it counts only the node's ranks that belong to it. */
static int fill_ranks(mp_comm *c) {
    MPI_Comm node;
    MPI_Comm_rank(c->mpi->comm, &c->rank);
    MPI_Comm_size(c->mpi->comm, &c->size);
    int mrc = MPI_Comm_split_type(c->mpi->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
    if (mrc != MPI_SUCCESS) return mpi_fail(c, mrc, "finding the ranks of this node (MPI_Comm_split_type)");
    MPI_Comm_rank(node, &c->local_rank);
    MPI_Comm_size(node, &c->local_size);
    MPI_Comm_free(&node);
    return 0;
}

int mp__mpi_init(int *argc, char ***argv, mp_comm *w) {
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        /* FUNNELED: collectives are issued by the thread that called init, between OpenMP regions. */
        int mrc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (mrc != MPI_SUCCESS) return mtok_err(MTOK_ERESOURCE, "MPI_Init_thread failed (error %d)", mrc);
    }
    w->backend = MP_BACKEND_MPI;
    w->mpi = calloc(1, sizeof *w->mpi);
    if (!w->mpi) return mtok_err(MTOK_ERESOURCE, "out of memory for the MPI world");
    w->mpi->comm = MPI_COMM_NULL;
    int rc = set_errhandler(w, MPI_COMM_WORLD);
    if (rc) return rc;
    /* A private duplicate: mtok's traffic never matches messages of another library in the process. */
    int mrc = MPI_Comm_dup(MPI_COMM_WORLD, &w->mpi->comm);
    if (mrc != MPI_SUCCESS) return mpi_fail(w, mrc, "duplicating MPI_COMM_WORLD");
    if ((rc = set_errhandler(w, w->mpi->comm))) return rc;
    return fill_ranks(w);
}

void mp__mpi_finalize(mp_comm *w, int clean) {
    mp__mpi_free(w);
    /* After a failure a peer may still sit in the failed collective and MPI_Finalize would wait
     * for it; returning without it lets the process exit, and mpirun then ends the job. */
    if (clean) MPI_Finalize();
}

int mp__mpi_split(mp_comm *c, int color, int key, mp_comm *out) {
    out->mpi = calloc(1, sizeof *out->mpi);
    if (!out->mpi) return mtok_err(MTOK_ERESOURCE, "rank %d: out of memory for a communicator", c->rank);
    out->backend = MP_BACKEND_MPI;
    out->mpi->comm = MPI_COMM_NULL;
    /* MPI_Comm_split has no timeout; a barrier that has one first turns a missing rank into an error. */
    int rc = mp__mpi_barrier(c);
    int mrc = rc ? MPI_SUCCESS : MPI_Comm_split(c->mpi->comm, color, key, &out->mpi->comm);
    if (!rc && mrc != MPI_SUCCESS) rc = mpi_fail(c, mrc, "split");
    if (!rc) rc = set_errhandler(out, out->mpi->comm);
    if (!rc) rc = fill_ranks(out);
    if (rc) {
        mp__mpi_free(out);
        return rc;
    }
    return 0;
}

void mp__mpi_free(mp_comm *c) {
    if (!c->mpi) return;
    /* MPI_Comm_free of a communicator with a pending (timed-out) collective is erroneous: leave it */
    if (c->mpi->comm != MPI_COMM_NULL && !c->broken) MPI_Comm_free(&c->mpi->comm);
    free(c->mpi);
    c->mpi = NULL;
}

void mp__mpi_abort(int code) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    /* MTOK_E* codes are negative; the launcher wants the CLI's exit codes (1 usage, 2 input, 3 resource) */
    int status = code > 0 ? code : code == MTOK_EUSAGE ? 1 : code == MTOK_EINPUT ? 2 : code == MTOK_ERESOURCE ? 3 : 4;
    if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, status);
}

int mp__mpi_allreduce(mp_comm *c, void *buf, size_t count, mp_dtype t) {
    size_t es = mp__dtype_size(t);
    for (size_t off = 0; off < count; off += g_chunk) {
        size_t n = count - off < g_chunk ? count - off : g_chunk;
        MPI_Request req;
        int mrc =
            MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * es, (int)n, mpi_type(t), MPI_SUM, c->mpi->comm, &req);
        if (mrc != MPI_SUCCESS) return mpi_fail(c, mrc, "all-reduce");
        int rc = wait_req(c, &req, MP_OP_ALLREDUCE, count, t, -1, NULL);
        if (rc) return rc;
    }
    return 0;
}

int mp__mpi_bcast(mp_comm *c, void *buf, size_t count, mp_dtype t, int root) {
    size_t es = mp__dtype_size(t);
    for (size_t off = 0; off < count; off += g_chunk) {
        size_t n = count - off < g_chunk ? count - off : g_chunk;
        MPI_Request req;
        int mrc = MPI_Ibcast((char *)buf + off * es, (int)n, mpi_type(t), root, c->mpi->comm, &req);
        if (mrc != MPI_SUCCESS) return mpi_fail(c, mrc, "broadcast");
        int rc = wait_req(c, &req, MP_OP_BCAST, count, t, -1, NULL);
        if (rc) return rc;
    }
    return 0;
}

int mp__mpi_allgather(mp_comm *c, const void *send, size_t count, void *recv, const size_t *counts, mp_dtype t) {
    size_t es = mp__dtype_size(t), total = 0;
    int rc = 0;
    int *cnt = malloc(2 * (size_t)c->size * sizeof *cnt);
    if (!cnt) return mtok_err(MTOK_ERESOURCE, "rank %d: out of memory for all-gather counts", c->rank);
    for (int r = 0; r < c->size; r++) total += counts ? counts[r] : count;
    if (total <= g_chunk) {
        /* one MPI_Iallgatherv: counts and displacements fit an int */
        int *displ = cnt + c->size;
        for (int r = 0, d = 0; r < c->size; r++) {
            cnt[r] = (int)(counts ? counts[r] : count);
            displ[r] = d;
            d += cnt[r];
        }
        MPI_Request req;
        int mrc = MPI_Iallgatherv(send, (int)count, mpi_type(t), recv, cnt, displ, mpi_type(t), c->mpi->comm, &req);
        rc = mrc != MPI_SUCCESS ? mpi_fail(c, mrc, "all-gather")
                                : wait_req(c, &req, MP_OP_ALLGATHER, total, t, -1, NULL);
    } else {
        /* Too big for int displacements: every rank broadcasts its part in turn (the copy into
         * place first, so the root's broadcast sends from recv). Slower, and only for > 1G elements. */
        size_t off = 0;
        for (int r = 0; r < c->size && !rc; r++) {
            size_t n = counts ? counts[r] : count;
            if (r == c->rank && n) memcpy((char *)recv + off * es, send, n * es);
            rc = mp__mpi_bcast(c, (char *)recv + off * es, n, t, r);
            off += n;
        }
    }
    free(cnt);
    return rc;
}

int mp__mpi_barrier(mp_comm *c) {
    MPI_Request req;
    int mrc = MPI_Ibarrier(c->mpi->comm, &req);
    if (mrc != MPI_SUCCESS) return mpi_fail(c, mrc, "barrier");
    return wait_req(c, &req, MP_OP_BARRIER, 0, MP_BYTE, -1, NULL);
}

int mp__mpi_send(mp_comm *c, const void *buf, size_t count, mp_dtype t, int peer, int tag) {
    size_t es = mp__dtype_size(t);
    size_t off = 0;
    do { /* one message even for count 0, so the receiver's matching receive completes */
        size_t n = count - off < g_chunk ? count - off : g_chunk;
        MPI_Request req;
        int mrc = MPI_Isend((const char *)buf + off * es, (int)n, mpi_type(t), peer, tag, c->mpi->comm, &req);
        if (mrc != MPI_SUCCESS) return mpi_fail(c, mrc, "send");
        int rc = wait_req(c, &req, MP_OP_SEND, count, t, peer, NULL);
        if (rc) return rc;
        off += n;
    } while (off < count);
    return 0;
}

int mp__mpi_recv(mp_comm *c, void *buf, size_t count, mp_dtype t, int peer, int tag) {
    size_t es = mp__dtype_size(t);
    size_t off = 0;
    do {
        size_t n = count - off < g_chunk ? count - off : g_chunk;
        MPI_Request req;
        int got = 0;
        int mrc = MPI_Irecv((char *)buf + off * es, (int)n, mpi_type(t), peer, tag, c->mpi->comm, &req);
        if (mrc != MPI_SUCCESS) return mpi_fail(c, mrc, "receive");
        int rc = wait_req(c, &req, MP_OP_RECV, count, t, peer, &got);
        if (rc) return rc;
        if ((size_t)got != n) /* a longer message is MPI_ERR_TRUNCATE above; a shorter one is a bug too */
            return mtok_err(MTOK_ERESOURCE, "rank %d: expected %zu elements from rank %d (tag %d), received %d",
                            c->rank, count, peer, tag, got);
        off += n;
    } while (off < count);
    return 0;
}

#else /* no MPI in this build: only the single-rank world exists, so only init is ever reached */
/* no MPI communicator can exist in this build, so these are unreachable; if one ever is reached
 * the caller gets an error that says so instead of a silent no-op */
static int absent(void) { return mtok_err(MTOK_EINTERNAL, "MPI backend called in a build without MPI"); }

int mp_have_mpi(void) { return 0; }
size_t mp__mpi_set_chunk(size_t elems) { return elems; }
int mp__mpi_init(int *argc, char ***argv, mp_comm *w) {
    return mtok_err(MTOK_EUSAGE, "this mtok was built without MPI");
}
void mp__mpi_finalize(mp_comm *w, int clean) {}
int mp__mpi_split(mp_comm *c, int color, int key, mp_comm *out) { return absent(); }
void mp__mpi_free(mp_comm *c) {}
void mp__mpi_abort(int code) {}
int mp__mpi_allreduce(mp_comm *c, void *buf, size_t count, mp_dtype t) { return absent(); }
int mp__mpi_allgather(mp_comm *c, const void *send, size_t count, void *recv, const size_t *counts, mp_dtype t) {
    return absent();
}
int mp__mpi_bcast(mp_comm *c, void *buf, size_t count, mp_dtype t, int root) { return absent(); }
int mp__mpi_barrier(mp_comm *c) { return absent(); }
int mp__mpi_send(mp_comm *c, const void *buf, size_t count, mp_dtype t, int peer, int tag) { return absent(); }
int mp__mpi_recv(mp_comm *c, void *buf, size_t count, mp_dtype t, int peer, int tag) { return absent(); }

#endif
