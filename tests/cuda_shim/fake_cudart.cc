/* fake_cudart.cc — the CUDA runtime API, as far as mtok uses it, on the CPU: one fake device whose
 * "device memory" is host memory, synchronous streams, and CUDA graphs built by stream capture.
 *
 * The functions have the exact signatures of the toolkit's cuda_runtime_api.h (included below, so the
 * compiler checks them): a C file of the backend that includes that header links against this file
 * instead of libcudart and runs unchanged.
 *
 * Honest where the backend could go wrong on a GPU:
 *   - every failing call also becomes this thread's last error (cudaGetLastError), as in CUDA;
 *   - cudaMalloc fails with cudaErrorMemoryAllocation past the fake total (MTOK_SHIM_MEM_MB, default
 *     4096), and fills new memory with 0xFF bytes (NaN floats) so reads of unwritten memory show
 *     (allocations up to 256 MiB);
 *   - memcpy/memset check that the device side of a copy lies inside one cudaMalloc allocation;
 *   - stream capture: work submitted to a capturing stream is recorded, not run; a capture-unsafe call
 *     (cudaMalloc, cudaFree, synchronous cudaMemcpy/cudaMemset, cudaDeviceSynchronize, synchronizing
 *     the capturing stream) during a capture fails with cudaErrorStreamCaptureUnsupported (work on the
 *     legacy stream implicitly synchronizing with a capturing blocking stream: ...CaptureImplicit) and
 *     invalidates the capture, so cudaStreamEndCapture then returns cudaErrorStreamCaptureInvalidated,
 *     following the capture-mode rules of cudaThreadExchangeStreamCaptureMode.
 * The device itself (properties, attributes, error strings, the environment) is fake_device.cc.
 * Not emulated: several devices, asynchrony (every stream runs its work at once, which is a legal
 * schedule), cross-stream capture (events joining streams into one capture), graph updates, sticky
 * errors of faulting kernels (a bad access in a kernel is a crash of the test). */
#include "shim_api.h"
#include "shim_internal.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace {

enum capture_state { CAP_NONE, CAP_ACTIVE, CAP_INVALID };
struct node {
    ck_shim::op_kind kind;
    ck_shim::op_fn f;
};
} // namespace

struct CUstream_st {
    unsigned flags = 0;
    capture_state cap = CAP_NONE;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
    std::thread::id capturer;
    unsigned long long capture_id = 0;
    std::vector<node> rec;
};
struct CUgraph_st {
    std::vector<node> nodes;
};
struct CUgraphExec_st {
    std::vector<node> nodes;
};
struct CUevent_st {
    unsigned flags = 0;
    bool recorded = false;
    std::chrono::steady_clock::time_point t;
};

namespace {

std::mutex state_lock; /* everything below except the counters and the thread-locals */
std::map<uintptr_t, size_t> dev_allocs, host_allocs;
size_t dev_used = 0;
std::set<CUstream_st *> streams;
std::set<CUgraph_st *> graphs;
std::set<CUgraphExec_st *> execs;
std::set<CUevent_st *> events;
std::map<const void *, int> func_dyn_smem;
CUstream_st legacy_stream; /* stream 0 / cudaStreamLegacy / cudaStreamPerThread */
unsigned long long next_capture_id = 1;

std::atomic<long long> n_launches{0}, n_graph_launches{0}, n_replayed{0}, n_recorded{0};

thread_local cudaError_t last_error = cudaSuccess;
thread_local cudaStreamCaptureMode thread_mode = cudaStreamCaptureModeGlobal;

cudaError_t ret(cudaError_t e) { return ck_shim::set_error(e); }

int n_devices() { return ck_shim::device_count(); }
size_t total_mem() { return ck_shim::device_memory(); }

bool is_legacy(cudaStream_t s) { return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread; }
/* The stream object of s, or NULL for a handle that was never created or is destroyed. */
CUstream_st *stream_of(cudaStream_t s) {
    if (is_legacy(s))
        return &legacy_stream;
    return streams.count(s) ? s : nullptr;
}

/* The allocation of map m holding [p, p+n), if any. */
bool inside(const std::map<uintptr_t, size_t> &m, const void *p, size_t n) {
    auto it = m.upper_bound((uintptr_t)p);
    if (it == m.begin())
        return false;
    --it;
    return (uintptr_t)p + n <= it->first + it->second;
}

/* A capture-unsafe call from this thread (cudaThreadExchangeStreamCaptureMode's rules): it is
 * prohibited while this thread captures in a mode other than relaxed or any thread captures in global
 * mode; the prohibited call invalidates those captures. Called with state_lock held. */
cudaError_t unsafe_call() {
    if (thread_mode == cudaStreamCaptureModeRelaxed)
        return cudaSuccess;
    bool bad = false;
    auto me = std::this_thread::get_id();
    for (CUstream_st *st : streams)
        if (st->cap == CAP_ACTIVE &&
            (st->mode == cudaStreamCaptureModeGlobal ||
             (st->mode == cudaStreamCaptureModeThreadLocal && st->capturer == me))) {
            st->cap = CAP_INVALID;
            bad = true;
        }
    return bad ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
/* Work on the legacy stream waits for every blocking stream: one that captures cannot be waited for. */
cudaError_t legacy_implicit_sync() {
    bool bad = false;
    for (CUstream_st *st : streams)
        if (st->cap == CAP_ACTIVE && !(st->flags & cudaStreamNonBlocking)) {
            st->cap = CAP_INVALID;
            bad = true;
        }
    return bad ? cudaErrorStreamCaptureImplicit : cudaSuccess;
}

void count(ck_shim::op_kind k, bool replay) {
    if (k == ck_shim::OP_KERNEL || k == ck_shim::OP_GEMM)
        (replay ? n_replayed : n_launches)++;
}

/* Check a copy's pointers against its kind: the device side must lie inside one allocation. */
cudaError_t check_copy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    if (n == 0)
        return cudaSuccess;
    if (!dst || !src)
        return cudaErrorInvalidValue;
    bool dd = inside(dev_allocs, dst, n), sd = inside(dev_allocs, src, n);
    switch (kind) {
    case cudaMemcpyHostToHost:
        return !dd && !sd ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyHostToDevice:
        return dd && !sd ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToHost:
        return !dd && sd ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToDevice:
        return dd && sd ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDefault: /* the runtime infers the kind; a device side must still fit its allocation */
        return (!inside(dev_allocs, dst, 1) || dd) && (!inside(dev_allocs, src, 1) || sd) ? cudaSuccess
                                                                                          : cudaErrorInvalidValue;
    }
    return cudaErrorInvalidMemcpyDirection;
}

} // namespace

namespace ck_shim {
cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess)
        last_error = e;
    return e;
}

bool is_device(const void *p, size_t bytes) {
    std::lock_guard<std::mutex> g(state_lock);
    return inside(dev_allocs, p, bytes ? bytes : 1);
}

size_t func_max_dyn_smem(const void *func) {
    std::lock_guard<std::mutex> g(state_lock);
    auto it = func_dyn_smem.find(func);
    return it == func_dyn_smem.end() ? smem_default_max : (size_t)it->second;
}

cudaError_t submit(cudaStream_t s, op_kind k, op_fn f) {
    {
        std::lock_guard<std::mutex> g(state_lock);
        CUstream_st *st = stream_of(s);
        if (!st)
            return cudaErrorInvalidResourceHandle;
        if (st->cap == CAP_INVALID)
            return cudaErrorStreamCaptureInvalidated;
        if (st->cap == CAP_ACTIVE) {
            if (k == OP_KERNEL || k == OP_GEMM)
                n_recorded++;
            st->rec.push_back({k, std::move(f)});
            return cudaSuccess;
        }
        if (st == &legacy_stream) {
            cudaError_t e = legacy_implicit_sync();
            if (e != cudaSuccess)
                return e;
        }
    }
    f(); /* outside the lock: a kernel may take long, and the engine has its own */
    count(k, false);
    return cudaSuccess;
}
} // namespace ck_shim

/* ---------------------------------------------------------------- the C API of the shim (shim_api.h) */
extern "C" {
long long ck_shim_launches(void) { return n_launches; }
long long ck_shim_graph_launches(void) { return n_graph_launches; }
long long ck_shim_replayed(void) { return n_replayed; }
long long ck_shim_recorded(void) { return n_recorded; }
void ck_shim_reset_counters(void) { n_launches = n_graph_launches = n_replayed = n_recorded = 0; }
size_t ck_shim_device_bytes_in_use(void) {
    std::lock_guard<std::mutex> g(state_lock);
    return dev_used;
}

/* ---------------------------------------------------------------- errors */
cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    if (!free_b || !total_b)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    *total_b = total_mem();
    *free_b = *total_b - std::min(dev_used, *total_b);
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value) {
    if (!func)
        return ret(cudaErrorInvalidDeviceFunction);
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > ck_shim::smem_optin_max)
            return ret(cudaErrorInvalidValue);
        std::lock_guard<std::mutex> g(state_lock);
        func_dyn_smem[func] = value;
        return cudaSuccess;
    }
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout)
        return value >= -1 && value <= 100 ? cudaSuccess : ret(cudaErrorInvalidValue);
    return ret(cudaErrorInvalidValue);
}
} /* extern "C" */

/* ---------------------------------------------------------------- memory */
extern "C" {
cudaError_t cudaMalloc(void **p, size_t n) {
    if (!p)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    cudaError_t e = n_devices() ? unsafe_call() : cudaErrorNoDevice;
    if (e != cudaSuccess)
        return ret(e);
    if (n == 0) {
        *p = nullptr;
        return cudaSuccess;
    }
    size_t total = total_mem();
    if (n > total - std::min(dev_used, total))
        return ret(cudaErrorMemoryAllocation);
    size_t rounded = (n + 255) & ~(size_t)255;
    void *m = aligned_alloc(256, rounded);
    if (!m)
        return ret(cudaErrorMemoryAllocation);
    /* cudaMalloc does not clear: make unwritten reads visible (NaN). Not past 256 MiB: a test's KV
     * pool of gigabytes would cost that much RAM at once; such a block reads as zeros. */
    if (ck_shim::poison_memory() && rounded <= ((size_t)256 << 20))
        memset(m, 0xFF, rounded);
    dev_allocs[(uintptr_t)m] = n;
    dev_used += n;
    *p = m;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    std::lock_guard<std::mutex> g(state_lock);
    cudaError_t e = unsafe_call();
    if (e != cudaSuccess)
        return ret(e);
    if (!p)
        return cudaSuccess;
    auto it = dev_allocs.find((uintptr_t)p);
    if (it == dev_allocs.end())
        return ret(cudaErrorInvalidValue);
    dev_used -= it->second;
    dev_allocs.erase(it);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int) {
    if (!p)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    cudaError_t e = unsafe_call();
    if (e != cudaSuccess)
        return ret(e);
    void *m = aligned_alloc(4096, (std::max<size_t>(n, 1) + 4095) & ~(size_t)4095);
    if (!m)
        return ret(cudaErrorMemoryAllocation);
    host_allocs[(uintptr_t)m] = n;
    *p = m;
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t n) { return cudaHostAlloc(p, n, 0); }
cudaError_t cudaFreeHost(void *p) {
    std::lock_guard<std::mutex> g(state_lock);
    cudaError_t e = unsafe_call();
    if (e != cudaSuccess)
        return ret(e);
    if (!p)
        return cudaSuccess;
    auto it = host_allocs.find((uintptr_t)p);
    if (it == host_allocs.end())
        return ret(cudaErrorInvalidValue);
    host_allocs.erase(it);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaHostRegister(void *p, size_t n, unsigned int) {
    if (!p || !n)
        return ret(cudaErrorInvalidValue);
    return cudaSuccess;
}
cudaError_t cudaHostUnregister(void *p) { return p ? cudaSuccess : ret(cudaErrorInvalidValue); }

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *p) {
    if (!a)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    memset(a, 0, sizeof *a);
    if (inside(dev_allocs, p, 1)) {
        a->type = cudaMemoryTypeDevice;
        a->devicePointer = (void *)p;
    } else if (inside(host_allocs, p, 1)) {
        a->type = cudaMemoryTypeHost;
        a->hostPointer = a->devicePointer = (void *)p;
    } else {
        a->type = cudaMemoryTypeUnregistered;
        a->device = -2;
        a->hostPointer = (void *)p;
    }
    return cudaSuccess;
}

static cudaError_t copy_async(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
    {
        std::lock_guard<std::mutex> g(state_lock);
        cudaError_t e = check_copy(dst, src, n, kind);
        if (e != cudaSuccess)
            return e;
    }
    if (n == 0)
        return cudaSuccess;
    return ck_shim::submit(s, ck_shim::OP_COPY, [dst, src, n]() { memmove(dst, src, n); });
}
static cudaError_t set_async(void *dst, int v, size_t n, cudaStream_t s) {
    {
        std::lock_guard<std::mutex> g(state_lock);
        if (n && !inside(dev_allocs, dst, n))
            return cudaErrorInvalidValue;
    }
    if (n == 0)
        return cudaSuccess;
    return ck_shim::submit(s, ck_shim::OP_SET, [dst, v, n]() { memset(dst, v, n); });
}
/* The synchronous forms are capture-unsafe calls on the legacy stream. */
static cudaError_t sync_op_guard() {
    std::lock_guard<std::mutex> g(state_lock);
    cudaError_t e = unsafe_call();
    return e != cudaSuccess ? e : legacy_implicit_sync();
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s) {
    return ret(copy_async(dst, src, n, kind, s));
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    cudaError_t e = sync_op_guard();
    return ret(e != cudaSuccess ? e : copy_async(dst, src, n, kind, nullptr));
}
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              enum cudaMemcpyKind kind, cudaStream_t s) {
    if (width > dpitch || width > spitch)
        return ret(cudaErrorInvalidValue);
    for (size_t r = 0; r < height; r++) {
        cudaError_t e = copy_async((char *)dst + r * dpitch, (const char *)src + r * spitch, width, kind, s);
        if (e != cudaSuccess)
            return ret(e);
    }
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t s) { return ret(set_async(dst, v, n, s)); }
cudaError_t cudaMemset(void *dst, int v, size_t n) {
    cudaError_t e = sync_op_guard();
    return ret(e != cudaSuccess ? e : set_async(dst, v, n, nullptr));
}

/* ---------------------------------------------------------------- streams */
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    if (!s || (flags & ~(unsigned)cudaStreamNonBlocking))
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    CUstream_st *st = new CUstream_st;
    st->flags = flags;
    streams.insert(st);
    *s = st;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithPriority(cudaStream_t *s, unsigned int flags, int) {
    return cudaStreamCreateWithFlags(s, flags);
}
cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest) {
    if (least)
        *least = 0;
    if (greatest)
        *greatest = -5;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    std::lock_guard<std::mutex> g(state_lock);
    if (is_legacy(s) || !streams.count(s))
        return ret(cudaErrorInvalidResourceHandle);
    if (s->cap != CAP_NONE) /* CUDA refuses to destroy a stream in the middle of a capture too */
        return ret(cudaErrorStreamCaptureUnsupported);
    streams.erase(s);
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    std::lock_guard<std::mutex> g(state_lock);
    CUstream_st *st = stream_of(s);
    if (!st)
        return ret(cudaErrorInvalidResourceHandle);
    if (st->cap != CAP_NONE) {
        st->cap = CAP_INVALID;
        return ret(cudaErrorStreamCaptureUnsupported);
    }
    return st == &legacy_stream ? ret(legacy_implicit_sync()) : cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return cudaStreamSynchronize(s); }
cudaError_t cudaDeviceSynchronize(void) {
    std::lock_guard<std::mutex> g(state_lock);
    bool bad = false;
    for (CUstream_st *st : streams)
        if (st->cap == CAP_ACTIVE) {
            st->cap = CAP_INVALID;
            bad = true;
        }
    return bad ? ret(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t ev, unsigned int) {
    std::lock_guard<std::mutex> g(state_lock);
    if (!stream_of(s) || !events.count(ev))
        return ret(cudaErrorInvalidResourceHandle);
    return cudaSuccess; /* all work is already done when it is submitted */
}

/* ---------------------------------------------------------------- events (wall clock) */
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned int flags) {
    if (!ev)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    CUevent_st *e = new CUevent_st;
    e->flags = flags;
    events.insert(e);
    *ev = e;
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *ev) { return cudaEventCreateWithFlags(ev, cudaEventDefault); }
cudaError_t cudaEventDestroy(cudaEvent_t ev) {
    std::lock_guard<std::mutex> g(state_lock);
    if (!events.erase(ev))
        return ret(cudaErrorInvalidResourceHandle);
    delete ev;
    return cudaSuccess;
}
/* Recorded into a capture, the record happens at each replay (the time of that point of the graph). */
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t s) {
    {
        std::lock_guard<std::mutex> g(state_lock);
        if (!events.count(ev))
            return ret(cudaErrorInvalidResourceHandle);
    }
    return ret(ck_shim::submit(s, ck_shim::OP_SET, [ev]() {
        ev->t = std::chrono::steady_clock::now();
        ev->recorded = true;
    }));
}
cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
    std::lock_guard<std::mutex> g(state_lock);
    return events.count(ev) ? cudaSuccess : ret(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventQuery(cudaEvent_t ev) { return cudaEventSynchronize(ev); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!ms)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    if (!events.count(a) || !events.count(b) || !a->recorded || !b->recorded ||
        ((a->flags | b->flags) & cudaEventDisableTiming))
        return ret(cudaErrorInvalidResourceHandle);
    *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
    return cudaSuccess;
}

/* ---------------------------------------------------------------- capture and graphs */
cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode *mode) {
    if (!mode)
        return ret(cudaErrorInvalidValue);
    std::swap(*mode, thread_mode);
    return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    std::lock_guard<std::mutex> g(state_lock);
    if (is_legacy(s))
        return ret(cudaErrorStreamCaptureUnsupported);
    CUstream_st *st = stream_of(s);
    if (!st)
        return ret(cudaErrorInvalidResourceHandle);
    if (st->cap != CAP_NONE)
        return ret(cudaErrorIllegalState);
    if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
        mode != cudaStreamCaptureModeRelaxed)
        return ret(cudaErrorInvalidValue);
    st->cap = CAP_ACTIVE;
    st->mode = mode;
    st->capturer = std::this_thread::get_id();
    st->capture_id = next_capture_id++;
    st->rec.clear();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph) {
    if (!graph)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    CUstream_st *st = stream_of(s);
    if (!st)
        return ret(cudaErrorInvalidResourceHandle);
    if (st->cap == CAP_NONE)
        return ret(cudaErrorIllegalState);
    if (st->mode != cudaStreamCaptureModeRelaxed && st->capturer != std::this_thread::get_id())
        return ret(cudaErrorStreamCaptureWrongThread);
    *graph = nullptr;
    bool invalid = st->cap == CAP_INVALID;
    std::vector<node> rec = std::move(st->rec);
    st->rec.clear();
    st->cap = CAP_NONE;
    if (invalid)
        return ret(cudaErrorStreamCaptureInvalidated);
    CUgraph_st *gr = new CUgraph_st;
    gr->nodes = std::move(rec);
    graphs.insert(gr);
    *graph = gr;
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status) {
    if (!status)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    CUstream_st *st = stream_of(s);
    if (!st)
        return ret(cudaErrorInvalidResourceHandle);
    *status = st->cap == CAP_ACTIVE    ? cudaStreamCaptureStatusActive
              : st->cap == CAP_INVALID ? cudaStreamCaptureStatusInvalidated
                                       : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}
cudaError_t cudaStreamGetCaptureInfo(cudaStream_t s, enum cudaStreamCaptureStatus *status, unsigned long long *id,
                                     cudaGraph_t *graph, const cudaGraphNode_t **deps, const cudaGraphEdgeData **edges,
                                     size_t *ndeps) {
    cudaError_t e = cudaStreamIsCapturing(s, status);
    if (e != cudaSuccess)
        return e;
    std::lock_guard<std::mutex> g(state_lock);
    if (id)
        *id = stream_of(s)->capture_id;
    if (graph)
        *graph = nullptr; /* the graph under construction is not exposed by the shim */
    if (deps)
        *deps = nullptr;
    if (edges)
        *edges = nullptr;
    if (ndeps)
        *ndeps = 0;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    if (!exec)
        return ret(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(state_lock);
    if (!graphs.count(graph))
        return ret(cudaErrorInvalidValue);
    if (flags & ~(unsigned long long)(cudaGraphInstantiateFlagAutoFreeOnLaunch | cudaGraphInstantiateFlagUpload |
                                      cudaGraphInstantiateFlagUseNodePriority))
        return ret(cudaErrorInvalidValue);
    CUgraphExec_st *x = new CUgraphExec_st;
    x->nodes = graph->nodes; /* an executable graph is a snapshot: later changes to graph do not reach it */
    execs.insert(x);
    *exec = x;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    return cudaGraphInstantiate(exec, graph, flags);
}
cudaError_t cudaGraphUpload(cudaGraphExec_t exec, cudaStream_t s) {
    std::lock_guard<std::mutex> g(state_lock);
    return execs.count(exec) && stream_of(s) ? cudaSuccess : ret(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    {
        std::lock_guard<std::mutex> g(state_lock);
        CUstream_st *st = stream_of(s);
        if (!execs.count(exec) || !st)
            return ret(cudaErrorInvalidResourceHandle);
        if (st->cap != CAP_NONE) /* a graph launched into a capture (a child graph): not emulated */
            return ret(cudaErrorNotSupported);
        if (st == &legacy_stream) {
            cudaError_t e = legacy_implicit_sync();
            if (e != cudaSuccess)
                return ret(e);
        }
    }
    /* exec stays valid: destroying an executable graph while it is being launched is the caller's bug */
    for (const node &n : exec->nodes) {
        n.f();
        count(n.kind, true);
    }
    n_graph_launches++;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    std::lock_guard<std::mutex> g(state_lock);
    if (!execs.erase(exec))
        return ret(cudaErrorInvalidValue);
    delete exec;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    std::lock_guard<std::mutex> g(state_lock);
    if (!graphs.erase(graph))
        return ret(cudaErrorInvalidValue);
    delete graph;
    return cudaSuccess;
}
} /* extern "C" */
