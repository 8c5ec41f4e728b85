/* comm.c — the world, the single-rank backend and the dispatch of parallel.h to the backends.
 *
 * Every public collective validates its arguments here, once, so the backends see only calls that
 * are legal on every rank: a wrong root or peer is reported as MTOK_EUSAGE naming this rank
 * instead of surfacing as an MPI error string or a hang. A communicator that failed mid-operation
 * is marked broken; later calls on it fail at once, because its peers may still be inside the
 * failed operation and a new collective would pair with the wrong one. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/mtok_base.h"
#include "comm_int.h"

/* Process-wide, like MPI itself: there is one world per process (the timeout, a property of the
 * run, is in comm_util.c, where the backends read it). */
static int g_world_made;

/* ---- world ---- */

/* Number of ranks the launcher says this job has: >1 several, 1 one, 0 launched by a PMI launcher
 * without a size in the environment, -1 not launched by mpirun/srun at all. */
static int launcher_ranks(const char **var) {
    static const char *sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        const char *v = getenv(sizes[i]);
        if (v && *v) {
            *var = sizes[i];
            return atoi(v) > 0 ? atoi(v) : 1;
        }
    }
    /* srun --mpi=pmix exports PMIX_RANK but not always a size */
    if (getenv("PMIX_RANK") || getenv("PMI_RANK")) {
        *var = getenv("PMIX_RANK") ? "PMIX_RANK" : "PMI_RANK";
        return 0;
    }
    *var = NULL;
    return -1;
}

static int parse_timeout_env(void) {
    const char *v = getenv("MTOK_COMM_TIMEOUT");
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    double s = strtod(v, &end);
    if (errno || end == v || *end || s < 0)
        return mtok_err(MTOK_EUSAGE, "MTOK_COMM_TIMEOUT='%s' is not a number of seconds (0 disables the timeout)", v);
    mp_set_timeout(s);
    return 0;
}

int mp_world_init(int *argc, char ***argv, int force_mpi, mp_comm **world) {
    *world = NULL;
    if (g_world_made) return mtok_err(MTOK_EUSAGE, "mp_world_init called twice in one process");
    int rc = parse_timeout_env();
    if (rc) return rc;
    const char *var;
    int n = launcher_ranks(&var);
    mp_comm *w = calloc(1, sizeof *w);
    if (!w) return mtok_err(MTOK_ERESOURCE, "out of memory for the world communicator");
    w->backend = MP_BACKEND_SINGLE;
    w->size = w->local_size = 1;
    if (force_mpi || n >= 0) {
        if (!mp_have_mpi()) {
            const char *rank = getenv("OMPI_COMM_WORLD_RANK") ? getenv("OMPI_COMM_WORLD_RANK")
                               : getenv("PMIX_RANK")          ? getenv("PMIX_RANK")
                                                              : getenv("PMI_RANK");
            /* one rank of an mpirun -np 1 can still run alone; several cannot */
            if (force_mpi || n > 1 || (rank && atoi(rank) > 0)) {
                free(w);
                if (force_mpi) return mtok_err(MTOK_EUSAGE, "MPI was requested but this mtok was built without MPI");
                return mtok_err(MTOK_EUSAGE,
                                "rank %s: launched as one of %d ranks (%s) but this mtok was built without MPI "
                                "(install Open MPI, libopenmpi-dev, and rebuild)",
                                rank ? rank : "?", n, var);
            }
        } else {
            rc = mp__mpi_init(argc, argv, w);
            if (rc) {
                mp__mpi_free(w);
                free(w);
                return rc;
            }
        }
    }
    g_world_made = 1;
    *world = w;
    return 0;
}

static void comm_release(mp_comm *c) {
    if (c->backend == MP_BACKEND_NCCL) mp__nccl_free(c);
    else if (c->mpi) mp__mpi_free(c);
    free(c);
}

void mp_comm_free(mp_comm *c) {
    if (!c || !c->world) return; /* NULL, or the world: mp_world_finalize frees it */
    mp_comm *w = c->world;
    if (c->prev) c->prev->next = c->next;
    else w->derived = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->broken) w->broken = 1; /* MPI_Finalize would wait for peers stuck in the failed call */
    comm_release(c);
}

void mp_world_finalize(mp_comm *w) {
    if (!w) return;
    while (w->derived) mp_comm_free(w->derived); /* newest first: NCCL before the MPI split it came from */
    if (w->mpi) mp__mpi_finalize(w, !w->broken);
    else g_world_made = 0; /* a single-rank world can be made again; MPI cannot be restarted */
    free(w);
}

void mp_abort(const mp_comm *c, int code, const char *msg) {
    const int rank = c ? c->rank : 0;
    char own[24];
    snprintf(own, sizeof own, "rank %d:", rank);
    if (!msg) msg = "aborted";
    /* messages from this module already start with "rank R:" */
    if (!strncmp(msg, own, strlen(own))) fprintf(stderr, "mtok: error: %s\n", msg);
    else fprintf(stderr, "mtok: error: rank %d: %s\n", rank, msg);
    fflush(stderr);
    if (mp_have_mpi() && c && c->backend != MP_BACKEND_SINGLE) mp__mpi_abort(code);
}

int mp_rank(const mp_comm *c) { return c ? c->rank : 0; }
int mp_size(const mp_comm *c) { return c ? c->size : 1; }
int mp_local_rank(const mp_comm *c) { return c ? c->local_rank : 0; }
int mp_local_size(const mp_comm *c) { return c ? c->local_size : 1; }
mp_backend mp_backend_of(const mp_comm *c) { return c ? c->backend : MP_BACKEND_SINGLE; }

int mp_split(mp_comm *c, int color, int key, mp_comm **out) {
    *out = NULL;
    if (!c) return mtok_err(MTOK_EUSAGE, "mp_split on a NULL communicator");
    if (color < 0) return mtok_err(MTOK_EUSAGE, "rank %d: split color %d must be >= 0", c->rank, color);
    if (c->backend == MP_BACKEND_NCCL)
        return mtok_err(MTOK_EUSAGE, "rank %d: split the host communicator, then make NCCL ones from it", c->rank);
    if (c->broken) return mtok_err(MTOK_ERESOURCE, "rank %d: communicator unusable after an earlier failure", c->rank);
    mp_comm *n = calloc(1, sizeof *n);
    if (!n) return mtok_err(MTOK_ERESOURCE, "rank %d: out of memory for a communicator", c->rank);
    n->backend = c->backend;
    n->size = n->local_size = 1;
    if (c->backend == MP_BACKEND_MPI) {
        int rc = mp__mpi_split(c, color, key, n);
        if (rc) {
            free(n);
            return rc;
        }
    }
    mp__adopt(c->world ? c->world : c, n);
    *out = n;
    return 0;
}

/* ---- collectives ---- */

static int check_comm(const mp_comm *c, const char *op) {
    if (!c) return mtok_err(MTOK_EUSAGE, "%s on a NULL communicator", op);
    if (c->broken)
        return mtok_err(MTOK_ERESOURCE, "rank %d: %s on a %d-rank communicator that failed earlier (end the job)",
                        c->rank, op, c->size);
    return 0;
}

static int check_dtype(const mp_comm *c, mp_dtype t) {
    if (!mp__dtype_size(t)) return mtok_err(MTOK_EUSAGE, "rank %d: unknown element type %d", c->rank, (int)t);
    return 0;
}

int mp_allreduce_sum(mp_comm *c, void *buf, size_t count, mp_dtype t) {
    int rc = check_comm(c, "all-reduce");
    if (!rc) rc = check_dtype(c, t);
    if (rc || count == 0) return rc;
    switch (c->backend) {
    case MP_BACKEND_SINGLE: return 0;
    case MP_BACKEND_MPI: return mp__mpi_allreduce(c, buf, count, t);
    case MP_BACKEND_NCCL: return mp__nccl_allreduce(c, buf, count, t);
    }
    return MTOK_EINTERNAL;
}

int mp_allgather(mp_comm *c, const void *send, size_t count, void *recv, const size_t *counts, mp_dtype t) {
    int rc = check_comm(c, "all-gather");
    if (!rc) rc = check_dtype(c, t);
    if (rc) return rc;
    if (counts && counts[c->rank] != count)
        return mtok_err(MTOK_EUSAGE, "rank %d: all-gather sends %zu elements but counts[%d] says %zu", c->rank, count,
                        c->rank, counts[c->rank]);
    if (count && send == recv) /* MPI forbids it; a copy would be read while written */
        return mtok_err(MTOK_EUSAGE, "rank %d: all-gather receive buffer aliases the send buffer", c->rank);
    switch (c->backend) {
    case MP_BACKEND_SINGLE:
        if (count) memcpy(recv, send, count * mp__dtype_size(t));
        return 0;
    case MP_BACKEND_MPI: return mp__mpi_allgather(c, send, count, recv, counts, t);
    case MP_BACKEND_NCCL: return mp__nccl_allgather(c, send, count, recv, counts, t);
    }
    return MTOK_EINTERNAL;
}

int mp_bcast(mp_comm *c, void *buf, size_t count, mp_dtype t, int root) {
    int rc = check_comm(c, "broadcast");
    if (!rc) rc = check_dtype(c, t);
    if (rc) return rc;
    if (root < 0 || root >= c->size)
        return mtok_err(MTOK_EUSAGE, "rank %d: broadcast root %d outside a %d-rank communicator", c->rank, root,
                        c->size);
    if (count == 0) return 0;
    switch (c->backend) {
    case MP_BACKEND_SINGLE: return 0;
    case MP_BACKEND_MPI: return mp__mpi_bcast(c, buf, count, t, root);
    case MP_BACKEND_NCCL: return mp__nccl_bcast(c, buf, count, t, root);
    }
    return MTOK_EINTERNAL;
}

int mp_barrier(mp_comm *c) {
    int rc = check_comm(c, "barrier");
    if (rc) return rc;
    switch (c->backend) {
    case MP_BACKEND_SINGLE: return 0;
    case MP_BACKEND_MPI: return mp__mpi_barrier(c);
    case MP_BACKEND_NCCL: return mp__nccl_barrier(c);
    }
    return MTOK_EINTERNAL;
}

static int check_p2p(const mp_comm *c, int op, mp_dtype t, int peer, int tag) {
    int rc = check_comm(c, mp__op_name(op));
    if (!rc) rc = check_dtype(c, t);
    if (rc) return rc;
    if (peer < 0 || peer >= c->size)
        return mtok_err(MTOK_EUSAGE, "rank %d: %s peer %d outside a %d-rank communicator", c->rank, mp__op_name(op),
                        peer, c->size);
    if (peer == c->rank) /* would deadlock under MPI's rendezvous protocol; never needed */
        return mtok_err(MTOK_EUSAGE, "rank %d: %s to itself", c->rank, mp__op_name(op));
    if (tag < 0 || tag > 32767) /* 32767: the smallest MPI_TAG_UB the standard allows */
        return mtok_err(MTOK_EUSAGE, "rank %d: %s tag %d outside 0..32767", c->rank, mp__op_name(op), tag);
    return 0;
}

int mp_send(mp_comm *c, const void *buf, size_t count, mp_dtype t, int peer, int tag) {
    int rc = check_p2p(c, MP_OP_SEND, t, peer, tag);
    if (rc) return rc;
    switch (c->backend) {
    case MP_BACKEND_SINGLE: return MTOK_EINTERNAL; /* check_p2p: a single rank has no peer */
    case MP_BACKEND_MPI: return mp__mpi_send(c, buf, count, t, peer, tag);
    case MP_BACKEND_NCCL: return mp__nccl_send(c, buf, count, t, peer, tag);
    }
    return MTOK_EINTERNAL;
}

int mp_recv(mp_comm *c, void *buf, size_t count, mp_dtype t, int peer, int tag) {
    int rc = check_p2p(c, MP_OP_RECV, t, peer, tag);
    if (rc) return rc;
    switch (c->backend) {
    case MP_BACKEND_SINGLE: return MTOK_EINTERNAL;
    case MP_BACKEND_MPI: return mp__mpi_recv(c, buf, count, t, peer, tag);
    case MP_BACKEND_NCCL: return mp__nccl_recv(c, buf, count, t, peer, tag);
    }
    return MTOK_EINTERNAL;
}

/* ---- NCCL ---- */

int mp_nccl_create(mp_comm *host, int device, mp_comm **out) {
    *out = NULL;
    int rc = check_comm(host, "NCCL communicator creation");
    if (rc) return rc;
    if (host->backend == MP_BACKEND_NCCL)
        return mtok_err(MTOK_EUSAGE, "rank %d: make a NCCL communicator from an MPI or single one", host->rank);
    if (!mp_have_nccl())
        return mtok_err(MTOK_EUSAGE, "rank %d: this mtok was built without NCCL (needs the CUDA toolkit and nccl.h)",
                        host->rank);
    mp_comm *n = calloc(1, sizeof *n);
    if (!n) return mtok_err(MTOK_ERESOURCE, "rank %d: out of memory for a communicator", host->rank);
    n->backend = MP_BACKEND_NCCL;
    n->rank = host->rank;
    n->size = host->size;
    n->local_rank = host->local_rank;
    n->local_size = host->local_size;
    /* the backend prepares this rank, the ranks agree here that every one of them has its GPU
     * before anyone waits in ncclCommInitRank, rank 0's id is broadcast, then all join */
    char id[MP__NCCL_ID_BYTES] = {0};
    rc = mp__nccl_prepare(host, device, n, id);
    char why[512];
    snprintf(why, sizeof why, "%s", rc ? mtok_errmsg() : "");
    int32_t failed = rc != 0;
    int arc = mp_allreduce_sum(host, &failed, 1, MP_I32);
    if (arc) rc = arc;
    else if (failed && !rc)
        rc = mtok_err(MTOK_ERESOURCE, "rank %d: NCCL setup failed on %d of %d ranks (see their messages)", host->rank,
                      (int)failed, host->size);
    else if (rc)
        mtok_err(rc, "%s", why); /* keep this rank's own reason as the message */
    if (!rc) rc = mp_bcast(host, id, sizeof id, MP_BYTE, 0);
    if (!rc) rc = mp__nccl_join(host, n, id);
    else mp__nccl_discard(n);
    if (rc) {
        free(n);
        return rc;
    }
    mp__adopt(host->world ? host->world : host, n);
    *out = n;
    return 0;
}
