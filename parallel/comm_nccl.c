/* comm_nccl.c — the NCCL backend: device buffers, one CUDA stream per communicator.
 *
 * Bootstrap (as nccl-tests do it): every rank first checks that it can use its GPU, and the ranks
 * agree over the host communicator that all of them can (a rank without a GPU would otherwise
 * leave the others waiting in ncclCommInitRank); rank 0 then makes the ncclUniqueId, broadcasts it
 * over the host communicator, and every rank joins with ncclCommInitRankConfig.
 *
 * The communicator is nonblocking (config.blocking = 0): calls return ncclInProgress instead of
 * blocking inside NCCL, and settle() polls ncclCommGetAsyncError until the state leaves
 * ncclInProgress. Together with polling cudaStreamQuery for the enqueued kernels (stream_wait()),
 * this puts every wait, initialisation included, under the same deadline as the MPI backend. On a
 * timeout or an asynchronous error the communicator is aborted (ncclCommAbort), which also
 * releases the kernels stuck waiting for a peer, and the mp_comm is marked broken.
 *
 * NCCL has no message tags: sends and receives between two ranks match in the order issued. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/mtok_base.h"
#include "comm_int.h"

#ifdef MTOK_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

struct mp_nccl {
    ncclComm_t comm;
    cudaStream_t stream;
    int device;
    int *scratch; /* device: one int for the barrier's all-reduce */
};

int mp_have_nccl(void) { return 1; }

static ncclDataType_t nccl_type(mp_dtype t) {
    switch (t) {
    case MP_F32: return ncclFloat32;
    case MP_I32: return ncclInt32;
    case MP_I64: return ncclInt64;
    case MP_BYTE: return ncclUint8;
    }
    return ncclUint8;
}

static void nccl_abort(mp_comm *c) {
    c->broken = 1;
    if (c->nccl && c->nccl->comm) {
        ncclCommAbort(c->nccl->comm);
        c->nccl->comm = NULL;
    }
}

static int nccl_fail(mp_comm *c, ncclResult_t r, const char *what) {
    const char *last = c->nccl && c->nccl->comm ? ncclGetLastError(c->nccl->comm) : ncclGetLastError(NULL);
    int rc = mtok_err(MTOK_ERESOURCE, "rank %d: NCCL %s on a %d-rank communicator failed: %s%s%s", c->rank, what,
                      c->size, ncclGetErrorString(r), last && *last ? ": " : "", last ? last : "");
    nccl_abort(c);
    return rc;
}

static int cuda_fail(mp_comm *c, cudaError_t e, const char *what) {
    int rc = mtok_err(MTOK_ERESOURCE, "rank %d: %s on GPU %d failed: %s", c->rank, what, c->nccl ? c->nccl->device : -1,
                      cudaGetErrorString(e));
    nccl_abort(c);
    return rc;
}

/* Waits until the nonblocking communicator leaves ncclInProgress after a call that returned r. */
static int settle(mp_comm *c, ncclResult_t r, int op, size_t count, mp_dtype t, int peer, const char *what) {
    const double limit = mp_get_timeout();
    mp__poll poll;
    mp__poll_start(&poll);
    while (r == ncclInProgress) {
        if (ncclCommGetAsyncError(c->nccl->comm, &r) != ncclSuccess) break;
        if (r != ncclInProgress) break;
        double waited = mp__now() - poll.t0;
        if (limit > 0 && waited > limit) {
            nccl_abort(c); /* marks c broken */
            return mp__timeout_err(c, op, count, t, peer, waited);
        }
        mp__poll_pause(&poll);
    }
    return r == ncclSuccess ? 0 : nccl_fail(c, r, what);
}

/* Waits for the operations enqueued on the stream: cudaStreamQuery polls, asynchronous NCCL errors
 * (a peer's network connection dropped) checked in between, abort at the deadline. */
static int stream_wait(mp_comm *c, int op, size_t count, mp_dtype t, int peer) {
    const double limit = mp_get_timeout();
    mp__poll poll;
    mp__poll_start(&poll);
    for (;;) {
        cudaError_t e = cudaStreamQuery(c->nccl->stream);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady) return cuda_fail(c, e, mp__op_name(op));
        ncclResult_t ar = ncclSuccess;
        ncclCommGetAsyncError(c->nccl->comm, &ar);
        if (ar != ncclSuccess && ar != ncclInProgress) return nccl_fail(c, ar, mp__op_name(op));
        double waited = mp__now() - poll.t0;
        if (limit > 0 && waited > limit) {
            nccl_abort(c); /* marks c broken */
            return mp__timeout_err(c, op, count, t, peer, waited);
        }
        mp__poll_pause(&poll);
    }
}

/* Everything a rank must have before it may join: a GPU, the device selected, a stream. */
static int local_setup(mp_comm *host, int device, mp_comm *out) {
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev == 0)
        return mtok_err(MTOK_ERESOURCE, "rank %d: no GPU for NCCL (cudaGetDeviceCount: %s)", host->rank,
                        e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    if (device < 0) device = host->local_rank % ndev;
    if (device >= ndev)
        return mtok_err(MTOK_EUSAGE, "rank %d: GPU %d requested but this node has %d", host->rank, device, ndev);
    out->nccl->device = device;
    if ((e = cudaSetDevice(device)) != cudaSuccess) return cuda_fail(out, e, "cudaSetDevice");
    if ((e = cudaStreamCreateWithFlags(&out->nccl->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return cuda_fail(out, e, "creating a stream");
    if ((e = cudaMalloc((void **)&out->nccl->scratch, sizeof(int))) != cudaSuccess)
        return cuda_fail(out, e, "allocating the barrier scratch");
    return 0;
}

static void release(mp_nccl *m) {
    if (m->comm) ncclCommAbort(m->comm);
    if (m->scratch) cudaFree(m->scratch);
    if (m->stream) cudaStreamDestroy(m->stream);
    free(m);
}

_Static_assert(sizeof(ncclUniqueId) == MP__NCCL_ID_BYTES, "ncclUniqueId travels as MP__NCCL_ID_BYTES bytes");

int mp__nccl_prepare(mp_comm *host, int device, mp_comm *out, void *id) {
    out->nccl = calloc(1, sizeof *out->nccl);
    if (!out->nccl) return mtok_err(MTOK_ERESOURCE, "rank %d: out of memory for a NCCL communicator", host->rank);
    int rc = local_setup(host, device, out);
    if (!rc && host->rank == 0) {
        ncclUniqueId u;
        memset(&u, 0, sizeof u);
        ncclResult_t r = ncclGetUniqueId(&u);
        if (r != ncclSuccess) rc = nccl_fail(out, r, "ncclGetUniqueId");
        else memcpy(id, &u, sizeof u);
    }
    return rc;
}

int mp__nccl_join(mp_comm *host, mp_comm *out, const void *id) {
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&out->nccl->comm, host->size, u, host->rank, &cfg);
    int rc;
    if (r != ncclSuccess && r != ncclInProgress) rc = nccl_fail(out, r, "ncclCommInitRank");
    else rc = settle(out, r, MP_OP_BARRIER, 0, MP_BYTE, -1, "ncclCommInitRank");
    if (rc) mp__nccl_discard(out);
    return rc;
}

void mp__nccl_discard(mp_comm *out) {
    if (out->nccl) release(out->nccl);
    out->nccl = NULL;
}

void mp__nccl_free(mp_comm *c) {
    mp_nccl *m = c->nccl;
    if (!m) return;
    cudaSetDevice(m->device);
    if (m->comm && !c->broken) {
        /* finalize flushes outstanding work; destroy then frees. Abort instead if that fails. */
        ncclResult_t r = ncclCommFinalize(m->comm);
        if ((r == ncclSuccess || r == ncclInProgress) &&
            settle(c, r, MP_OP_BARRIER, 0, MP_BYTE, -1, "ncclCommFinalize") == 0) {
            ncclCommDestroy(m->comm);
            m->comm = NULL;
        }
    }
    release(m); /* aborts a communicator still set */
    c->nccl = NULL;
}

/* Issues one NCCL call (or group) and waits for it: the common tail of every operation. */
static int finish(mp_comm *c, ncclResult_t r, int op, size_t count, mp_dtype t, int peer) {
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(c, r, mp__op_name(op));
    int rc = settle(c, r, op, count, t, peer, mp__op_name(op));
    return rc ? rc : stream_wait(c, op, count, t, peer);
}

int mp__nccl_allreduce(mp_comm *c, void *buf, size_t count, mp_dtype t) {
    cudaSetDevice(c->nccl->device);
    ncclResult_t r = ncclAllReduce(buf, buf, count, nccl_type(t), ncclSum, c->nccl->comm, c->nccl->stream);
    return finish(c, r, MP_OP_ALLREDUCE, count, t, -1);
}

int mp__nccl_allgather(mp_comm *c, const void *send, size_t count, void *recv, const size_t *counts, mp_dtype t) {
    cudaSetDevice(c->nccl->device);
    int equal = 1;
    size_t total = 0;
    for (int r = 0; r < c->size && counts; r++) {
        equal &= counts[r] == count;
        total += counts[r];
    }
    if (equal) {
        ncclResult_t r = ncclAllGather(send, recv, count, nccl_type(t), c->nccl->comm, c->nccl->stream);
        return finish(c, r, MP_OP_ALLGATHER, count * (size_t)c->size, t, -1);
    }
    /* Unequal parts: one broadcast per rank into its place, fused into one group launch. */
    size_t es = mp__dtype_size(t), off = 0;
    ncclResult_t r = ncclGroupStart();
    for (int k = 0; k < c->size && r == ncclSuccess; k++) {
        char *dst = (char *)recv + off * es;
        r = ncclBroadcast(k == c->rank ? send : dst, dst, counts[k], nccl_type(t), k, c->nccl->comm, c->nccl->stream);
        off += counts[k];
    }
    ncclResult_t e = ncclGroupEnd();
    return finish(c, r != ncclSuccess ? r : e, MP_OP_ALLGATHER, total, t, -1);
}

int mp__nccl_bcast(mp_comm *c, void *buf, size_t count, mp_dtype t, int root) {
    cudaSetDevice(c->nccl->device);
    ncclResult_t r = ncclBroadcast(buf, buf, count, nccl_type(t), root, c->nccl->comm, c->nccl->stream);
    return finish(c, r, MP_OP_BCAST, count, t, -1);
}

int mp__nccl_barrier(mp_comm *c) {
    cudaSetDevice(c->nccl->device);
    ncclResult_t r = ncclAllReduce(c->nccl->scratch, c->nccl->scratch, 1, ncclInt32, ncclSum, c->nccl->comm,
                                   c->nccl->stream);
    return finish(c, r, MP_OP_BARRIER, 0, MP_BYTE, -1);
}

int mp__nccl_send(mp_comm *c, const void *buf, size_t count, mp_dtype t, int peer, int tag) {
    cudaSetDevice(c->nccl->device);
    ncclResult_t r = ncclSend(buf, count, nccl_type(t), peer, c->nccl->comm, c->nccl->stream);
    return finish(c, r, MP_OP_SEND, count, t, peer);
}

int mp__nccl_recv(mp_comm *c, void *buf, size_t count, mp_dtype t, int peer, int tag) {
    cudaSetDevice(c->nccl->device);
    ncclResult_t r = ncclRecv(buf, count, nccl_type(t), peer, c->nccl->comm, c->nccl->stream);
    return finish(c, r, MP_OP_RECV, count, t, peer);
}

#else /* built without NCCL: mp_nccl_create reports it before reaching here */
/* no NCCL communicator can exist in this build, so these are unreachable; if one ever is reached
 * the caller gets an error that says so instead of a silent no-op */
static int absent(void) { return mtok_err(MTOK_EINTERNAL, "NCCL backend called in a build without NCCL"); }

int mp_have_nccl(void) { return 0; }
int mp__nccl_prepare(mp_comm *host, int device, mp_comm *out, void *id) {
    return mtok_err(MTOK_EUSAGE, "this mtok was built without NCCL");
}
int mp__nccl_join(mp_comm *host, mp_comm *out, const void *id) { return absent(); }
void mp__nccl_discard(mp_comm *out) {}
void mp__nccl_free(mp_comm *c) {}
int mp__nccl_allreduce(mp_comm *c, void *buf, size_t count, mp_dtype t) { return absent(); }
int mp__nccl_allgather(mp_comm *c, const void *send, size_t count, void *recv, const size_t *counts, mp_dtype t) {
    return absent();
}
int mp__nccl_bcast(mp_comm *c, void *buf, size_t count, mp_dtype t, int root) { return absent(); }
int mp__nccl_barrier(mp_comm *c) { return absent(); }
int mp__nccl_send(mp_comm *c, const void *buf, size_t count, mp_dtype t, int peer, int tag) { return absent(); }
int mp__nccl_recv(mp_comm *c, void *buf, size_t count, mp_dtype t, int peer, int tag) { return absent(); }

#endif
