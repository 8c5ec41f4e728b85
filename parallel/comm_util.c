/* comm_util.c — what the dispatch (parallel/comm.c) and the backends (parallel/comm_mpi.c,
 * parallel/comm_nccl.c) share: the timeout, the clock and the polling wait, element sizes, operation
 * names, the one timeout message, the world's list of derived communicators. It sits below all three, so
 * comm.c calls the backends and the backends call this file, never comm.c back. */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>

#include "../base/mtok_base.h"
#include "comm_int.h"

/* The timeout is a property of the run (MTOK_COMM_TIMEOUT, read by mp_world_init in comm.c), not
 * of one communicator: process-wide, like MPI itself. */
static double g_timeout = 60.0;

void mp_set_timeout(double seconds) { g_timeout = seconds > 0 ? seconds : 0; }
double mp_get_timeout(void) { return g_timeout; }

const char *mp_backend_name(mp_backend b) {
    switch (b) {
    case MP_BACKEND_SINGLE: return "single";
    case MP_BACKEND_MPI: return "mpi";
    case MP_BACKEND_NCCL: return "nccl";
    }
    return "unknown";
}

double mp__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void mp__poll_start(mp__poll *p) {
    p->t0 = mp__now();
    p->polls = 0;
    p->sleep_ns = 0;
}

void mp__poll_pause(mp__poll *p) {
    if (mp__now() - p->t0 < 1e-3) {
        /* the common case, peers microseconds away: poll on, and every 8th time let a peer that
         * shares this core run (on a core of its own sched_yield returns at once) */
        if ((++p->polls & 7) == 0) sched_yield();
        return;
    }
    p->sleep_ns = p->sleep_ns <= 0 ? 20000 : (p->sleep_ns * 2 > 1000000 ? 1000000 : p->sleep_ns * 2);
    struct timespec ts = {0, p->sleep_ns};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

size_t mp__dtype_size(mp_dtype t) {
    switch (t) {
    case MP_F32: return 4;
    case MP_I32: return 4;
    case MP_I64: return 8;
    case MP_BYTE: return 1;
    }
    return 0;
}

static const char *dtype_plural(mp_dtype t, size_t count) {
    const int one = count == 1;
    switch (t) {
    case MP_F32: return one ? "float" : "floats";
    case MP_I32: return one ? "int32" : "int32s";
    case MP_I64: return one ? "int64" : "int64s";
    case MP_BYTE: return one ? "byte" : "bytes";
    }
    return "elements";
}

const char *mp__op_name(int op) {
    switch (op) {
    case MP_OP_ALLREDUCE: return "all-reduce";
    case MP_OP_ALLGATHER: return "all-gather";
    case MP_OP_BCAST: return "broadcast";
    case MP_OP_BARRIER: return "barrier";
    case MP_OP_SEND: return "send";
    case MP_OP_RECV: return "receive";
    }
    return "operation";
}

int mp__timeout_err(const mp_comm *c, int op, size_t count, mp_dtype t, int peer, double waited) {
    if (peer >= 0)
        return mtok_err(MTOK_ERESOURCE,
                        "rank %d: %s of %zu %s %s rank %d timed out after %.1f s on a %d-rank %s communicator "
                        "(rank %d died or stalled?)",
                        c->rank, mp__op_name(op), count, dtype_plural(t, count), op == MP_OP_SEND ? "to" : "from", peer,
                        waited, c->size, mp_backend_name(c->backend), peer);
    if (op == MP_OP_BARRIER)
        return mtok_err(MTOK_ERESOURCE,
                        "rank %d: barrier timed out after %.1f s waiting for the other ranks of a %d-rank %s "
                        "communicator (a rank died or stalled?)",
                        c->rank, waited, c->size, mp_backend_name(c->backend));
    return mtok_err(MTOK_ERESOURCE,
                    "rank %d: %s of %zu %s timed out after %.1f s waiting for the other ranks of a %d-rank %s "
                    "communicator (a rank died or stalled?)",
                    c->rank, mp__op_name(op), count, dtype_plural(t, count), waited, c->size,
                    mp_backend_name(c->backend));
}

void mp__adopt(mp_comm *world, mp_comm *c) {
    c->world = world;
    c->prev = NULL;
    c->next = world->derived;
    if (world->derived) world->derived->prev = c;
    world->derived = c;
}
