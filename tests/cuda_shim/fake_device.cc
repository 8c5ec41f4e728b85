/* fake_device.cc — the fake runtime's device (tests/cuda_shim/fake_cudart.cc has the rest): its
 * properties and attributes, shaped like a small Hopper part (compute capability 9.0, 4 SMs, the
 * H100's shared-memory limits) so the backend's sizing code takes its GPU paths; the error names and
 * messages; and the environment that shapes the device for a test:
 *   MTOK_SHIM_DEVICES=0   no device: cudaGetDeviceCount fails with cudaErrorNoDevice
 *   MTOK_SHIM_MEM_MB=N    device memory (default 4096): cudaMalloc fails past it
 *   MTOK_SHIM_POISON=0    do not fill new cudaMalloc memory with 0xFF (NaN) bytes */
#include "shim_internal.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {
long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    return *end ? dflt : x;
}
thread_local int current_device = 0;
cudaError_t ret(cudaError_t e) { return ck_shim::set_error(e); }
} // namespace

namespace ck_shim {
int device_count() { return env_long("MTOK_SHIM_DEVICES", 1) > 0 ? 1 : 0; }
size_t device_memory() { return (size_t)std::max(1L, env_long("MTOK_SHIM_MEM_MB", 4096)) << 20; }
bool poison_memory() { return env_long("MTOK_SHIM_POISON", 1) != 0; }
} // namespace ck_shim

using ck_shim::device_count;
using ck_shim::device_memory;

extern "C" {
#define CK_SHIM_ERRORS(X)                                                                                      \
    X(cudaSuccess, "no error")                                                                                 \
    X(cudaErrorInvalidValue, "invalid argument")                                                               \
    X(cudaErrorMemoryAllocation, "out of memory")                                                              \
    X(cudaErrorInitializationError, "initialization error")                                                    \
    X(cudaErrorInvalidConfiguration, "invalid configuration argument")                                         \
    X(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")                                    \
    X(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version")             \
    X(cudaErrorNoDevice, "no CUDA-capable device is detected")                                                 \
    X(cudaErrorInvalidDevice, "invalid device ordinal")                                                        \
    X(cudaErrorInvalidDeviceFunction, "invalid device function")                                               \
    X(cudaErrorInvalidResourceHandle, "invalid resource handle")                                               \
    X(cudaErrorNotReady, "device not ready")                                                                   \
    X(cudaErrorNotSupported, "operation not supported")                                                        \
    X(cudaErrorLaunchFailure, "unspecified launch failure")                                                    \
    X(cudaErrorLaunchOutOfResources, "too many resources requested for launch")                                \
    X(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing")                   \
    X(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture")            \
    X(cudaErrorStreamCaptureMerge, "operation would result in a merge of separate capture sequences")          \
    X(cudaErrorStreamCaptureUnmatched, "capture was not initiated in this stream")                             \
    X(cudaErrorStreamCaptureUnjoined, "capturing stream has unjoined work")                                    \
    X(cudaErrorStreamCaptureIsolation, "dependency created on uncaptured work in another stream")              \
    X(cudaErrorStreamCaptureImplicit, "operation would make the legacy stream depend on a capturing blocking stream") \
    X(cudaErrorStreamCaptureWrongThread, "attempt to terminate a thread-local capture sequence from another thread") \
    X(cudaErrorIllegalState, "the resource is in an invalid state for this operation")                         \
    X(cudaErrorUnknown, "unknown error")

const char *cudaGetErrorString(cudaError_t e) {
#define X(code, msg)                                                                                           \
    case code:                                                                                                 \
        return msg;
    switch (e) { CK_SHIM_ERRORS(X) default: return "unrecognized error code"; }
#undef X
}
const char *cudaGetErrorName(cudaError_t e) {
#define X(code, msg)                                                                                           \
    case code:                                                                                                 \
        return #code;
    switch (e) { CK_SHIM_ERRORS(X) default: return "cudaErrorUnknown"; }
#undef X
}

/* ---------------------------------------------------------------- the device */
cudaError_t cudaDriverGetVersion(int *v) {
    if (!v)
        return ret(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    if (!v)
        return ret(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}
/* With MTOK_SHIM_DEVICES=0: cudaErrorNoDevice and *count left unwritten, as the real runtime leaves it
 * when it finds no driver (the caller must initialise it). */
cudaError_t cudaGetDeviceCount(int *count) {
    if (!count)
        return ret(cudaErrorInvalidValue);
    if (!device_count())
        return ret(cudaErrorNoDevice);
    *count = 1;
    return cudaSuccess;
}
static cudaError_t check_device(int d) {
    if (!device_count())
        return cudaErrorNoDevice;
    return d == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaSetDevice(int d) {
    cudaError_t e = check_device(d);
    if (e == cudaSuccess)
        current_device = d;
    return ret(e);
}
cudaError_t cudaGetDevice(int *d) {
    if (!d)
        return ret(cudaErrorInvalidValue);
    if (!device_count())
        return ret(cudaErrorNoDevice);
    *d = current_device;
    return cudaSuccess;
}
cudaError_t cudaSetDeviceFlags(unsigned int) { return ret(check_device(0)); }
cudaError_t cudaDeviceSetLimit(enum cudaLimit, size_t) { return ret(check_device(0)); }
cudaError_t cudaDeviceReset(void) { return ret(check_device(0)); }

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
    if (!p)
        return ret(cudaErrorInvalidValue);
    cudaError_t e = check_device(d);
    if (e != cudaSuccess)
        return ret(e);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "mtok CPU shim");
    p->totalGlobalMem = device_memory();
    p->sharedMemPerBlock = ck_shim::smem_default_max;
    p->sharedMemPerBlockOptin = ck_shim::smem_optin_max;
    p->sharedMemPerMultiprocessor = 233472;
    p->reservedSharedMemPerBlock = 1024;
    p->regsPerBlock = p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->memPitch = (size_t)1 << 31;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->totalConstMem = 65536;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 4;
    p->maxThreadsPerMultiProcessor = 2048;
    p->maxBlocksPerMultiProcessor = 32;
    p->l2CacheSize = 4 << 20;
    p->persistingL2CacheMaxSize = 1 << 20;
    p->memoryBusWidth = 5120;
    p->concurrentKernels = 1;
    p->asyncEngineCount = 2;
    p->unifiedAddressing = 1;
    p->canMapHostMemory = 1;
    p->managedMemory = 1;
    p->streamPrioritiesSupported = 1;
    p->cooperativeLaunch = 1;
    p->hostRegisterSupported = 1;
    p->memoryPoolsSupported = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d) {
    if (!v)
        return ret(cudaErrorInvalidValue);
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, d);
    if (e != cudaSuccess)
        return e;
    switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *v = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *v = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *v = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: *v = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *v = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *v = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = (int)p.sharedMemPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = (int)p.sharedMemPerBlockOptin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = (int)p.sharedMemPerMultiprocessor; break;
    case cudaDevAttrTotalConstantMemory: *v = (int)p.totalConstMem; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *v = p.regsPerBlock; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *v = p.regsPerMultiprocessor; break;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
    case cudaDevAttrL2CacheSize: *v = p.l2CacheSize; break;
    case cudaDevAttrMaxPersistingL2CacheSize: *v = p.persistingL2CacheMaxSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *v = p.maxBlocksPerMultiProcessor; break;
    case cudaDevAttrGlobalMemoryBusWidth: *v = p.memoryBusWidth; break;
    case cudaDevAttrConcurrentKernels: *v = 1; break;
    case cudaDevAttrAsyncEngineCount: *v = p.asyncEngineCount; break;
    case cudaDevAttrUnifiedAddressing: *v = 1; break;
    case cudaDevAttrCanMapHostMemory: *v = 1; break;
    case cudaDevAttrManagedMemory: *v = 1; break;
    case cudaDevAttrIntegrated: *v = 0; break;
    case cudaDevAttrCooperativeLaunch: *v = 1; break;
    case cudaDevAttrMemoryPoolsSupported: *v = 0; break;
    case cudaDevAttrPciBusId: case cudaDevAttrPciDeviceId: case cudaDevAttrPciDomainId: *v = 0; break;
    case cudaDevAttrEccEnabled: *v = 0; break;
    default:
        return ret(cudaErrorInvalidValue); /* an attribute this shim does not know: say so */
    }
    return cudaSuccess;
}

} /* extern "C" */
