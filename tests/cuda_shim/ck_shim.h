/* ck_shim.h — run a CUDA kernel source (the cuda/k_*.cu files) on the CPU, for tests on machines without a GPU.
 *
 * Force-included when a .cu file is compiled as host C++:
 *   g++ -x c++ -std=c++20 -DMTOK_CUDA_SHIM -include tests/cuda_shim/ck_shim.h
 *       -I/usr/local/cuda/include -I<repo root> -pthread -c cuda/k_rows.cu
 * and linked with mtok_cuda_shim_rt (tests/cuda_shim/CMakeLists.txt: mtok_shim_cuda_sources()).
 *
 * Execution model (README.md in this folder has the full list of what is and is not emulated):
 *   - a launch runs synchronously on the calling host thread: each CUDA thread of a block is a fiber
 *     (its own stack, switched cooperatively), the blocks one after another in linear order (x
 *     fastest, then y, then z). Only one launch runs at a time in the whole process (a global lock),
 *     so `__shared__` = `static` is correct: exactly one block's threads ever touch the shared
 *     variables, and the next block starts after the previous one ended.
 *   - __syncthreads is a real barrier of the block's threads; a thread that returns counts as having
 *     arrived at every later barrier (as on the hardware for exited threads). A barrier that some
 *     live thread never reaches (divergent __syncthreads) is detected and aborts with a message;
 *   - under ThreadSanitizer each fiber is a TSan fiber and the barriers are annotated as
 *     release/acquire, so a missing __syncthreads inside a block is reported as a data race (races
 *     between blocks are not: the blocks run in order, ordered by the engine);
 *   - warps are 32 consecutive linear thread ids; shuffles, votes and __syncwarp exchange through
 *     a per-warp slot array between two waits on a per-warp barrier. Only full masks (every live lane
 *     of the warp) are emulated: a partial mask aborts with a message instead of hanging.
 *   - dynamic shared memory: declare it with CK_DYN_SMEM(type, name) (not `extern __shared__`, which
 *     cannot be expressed in host C++ next to `__shared__` = `static`); cuda/ck_dev.cuh gives the nvcc
 *     spelling. The buffer is filled with 0xFF bytes (NaN floats) before each block, so a kernel that
 *     reads dynamic shared memory it did not write sees garbage, as on the GPU.
 *   - nvcuda::wmma is emulated at warp level: every lane holds the whole tile, mma_sync computes the
 *     product of bf16 (or fp16) operands in fp32 with fp32 accumulation in k order; store_matrix_sync
 *     is performed by lane 0 between two warp barriers. Kernels may only apply uniform element-wise
 *     operations to fragment.x[i] (i < num_elements), which the real API allows too. */
#ifndef MTOK_CK_SHIM_H
#define MTOK_CK_SHIM_H

#ifndef __cplusplus
#error "ck_shim.h is for the C++ (shim) compilation of .cu files"
#endif

#include <cuda_runtime.h> /* dim3, uint3, cudaError_t, the runtime API (served by fake_cudart.cc) */
#include <cuda_bf16.h>    /* host implementation of __nv_bfloat16 and its conversions */
#include <cuda_fp16.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

/* ---- keywords ---- the toolkit's runtime header defines __global__ etc. as nothing for a host compiler. */
#undef __shared__
#define __shared__ static
#undef __constant__
#define __constant__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif
#define CK_DYN_SMEM(type, name) type *const name = reinterpret_cast<type *>(::ck_shim::dyn_smem())

/* ---- thread coordinates ----
 * The engine runs a block's CUDA threads as fibers on one OS thread (shim_exec.cc), so the
 * coordinates are those of the fiber running now: a relaxed atomic pointer, which ThreadSanitizer
 * does not count as a data race between the fibers (it tracks each fiber like a thread). */
namespace ck_shim {
struct coords {
    uint3 tid, bid;
    dim3 bdim, gdim;
};
inline thread_local std::atomic<const coords *> current{nullptr};
[[noreturn]] void fail(const char *what);
inline const coords &here() {
    const coords *c = current.load(std::memory_order_relaxed);
    if (!c)
        fail("threadIdx/blockIdx/blockDim/gridDim read outside a kernel");
    return *c;
}
} // namespace ck_shim
#define threadIdx (::ck_shim::here().tid)
#define blockIdx (::ck_shim::here().bid)
#define blockDim (::ck_shim::here().bdim)
#define gridDim (::ck_shim::here().gdim)
static constexpr int warpSize = 32;

/* ---- the execution engine (shim_exec.cc) ---- */
namespace ck_shim {
/* Run (or, when s is capturing, record) body on every thread of every block. func identifies the
 * kernel for cudaFuncSetAttribute limits. Returns the cudaError_t also left for cudaGetLastError. */
int launch(const void *func, dim3 grid, dim3 block, size_t smem, cudaStream_t s, std::function<void()> body);
void *dyn_smem();
void syncthreads();
int syncthreads_reduce(int pred, int op); /* op 0: count, 1: and, 2: or */
void syncwarp(unsigned mask);
/* Every live lane of the warp calls it with its value: afterwards all[l] is lane l's value, live[l] 1. */
void warp_gather(unsigned mask, uint64_t mine, uint64_t all[32], unsigned *live_mask);
int lane();

template <class T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <class T> inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}
/* One shuffle: src(lane) gives the source lane or -1 for "keep my own value". */
template <class T, class F> inline T shuffle(unsigned mask, T v, F src) {
    uint64_t all[32];
    unsigned live;
    warp_gather(mask, to_bits(v), all, &live);
    int s = src(lane());
    if (s < 0 || s > 31 || !((live >> s) & 1u))
        return v;
    return from_bits<T>(all[s]);
}

/* CK_LAUNCH(kernel, grid, block, smem, stream)(args...): the arguments are converted to the kernel's
 * parameter types at the launch (as <<<>>> does) and copied into the closure, so a recorded launch
 * replays with the values it was given, like a kernel node of a CUDA graph. */
template <class... P> struct launcher {
    void (*k)(P...);
    dim3 grid, block;
    size_t smem;
    cudaStream_t s;
    template <class... A> int operator()(A &&...a) const {
        static_assert(sizeof...(A) == sizeof...(P), "CK_LAUNCH: argument count differs from the kernel's");
        std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
        auto kf = k;
        return launch(reinterpret_cast<const void *>(kf), grid, block, smem, s,
                      [kf, args]() { std::apply(kf, args); });
    }
};
template <class... P> inline launcher<P...> make_launcher(void (*k)(P...), dim3 g, dim3 b, size_t smem, cudaStream_t s) {
    return launcher<P...>{k, g, b, smem, s};
}
} // namespace ck_shim

#define CK_LAUNCH(kernel, grid, block, smem, stream)                                                            \
    ::ck_shim::make_launcher((kernel), dim3(grid), dim3(block), (size_t)(smem), (cudaStream_t)(stream))
static inline int ck_launch_status(void) { return (int)cudaGetLastError(); }

/* ---- synchronisation, warp functions ---- */
inline void __syncthreads() { ck_shim::syncthreads(); }
inline int __syncthreads_count(int p) { return ck_shim::syncthreads_reduce(p, 0); }
inline int __syncthreads_and(int p) { return ck_shim::syncthreads_reduce(p, 1); }
inline int __syncthreads_or(int p) { return ck_shim::syncthreads_reduce(p, 2); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ck_shim::syncwarp(mask); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { ck_shim::fail("__trap() in a kernel"); }
inline unsigned __activemask() {
    uint64_t all[32];
    unsigned live;
    ck_shim::warp_gather(0xffffffffu, 0, all, &live);
    return live;
}

template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return ck_shim::shuffle(mask, v, [&](int l) { return (l & ~(width - 1)) + (src & (width - 1)); });
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lm, int width = 32) {
    return ck_shim::shuffle(mask, v, [&](int l) {
        int s = l ^ lm;
        return (s & ~(width - 1)) == (l & ~(width - 1)) ? s : -1;
    });
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return ck_shim::shuffle(mask, v, [&](int l) { return (l & (width - 1)) + (int)d < width ? l + (int)d : -1; });
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return ck_shim::shuffle(mask, v, [&](int l) { return (l & (width - 1)) >= (int)d ? l - (int)d : -1; });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    uint64_t all[32];
    unsigned live, r = 0;
    ck_shim::warp_gather(mask, pred != 0, all, &live);
    for (int l = 0; l < 32; l++)
        if (((live & mask) >> l) & 1u)
            r |= (unsigned)(all[l] != 0) << l;
    return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    uint64_t all[32];
    unsigned live;
    ck_shim::warp_gather(mask, pred != 0, all, &live);
    for (int l = 0; l < 32; l++)
        if ((((live & mask) >> l) & 1u) && !all[l])
            return 0;
    return 1;
}

/* ---- atomics (device memory is host memory: std::atomic_ref on it) ---- */
template <class T> inline T ck_shim_atomic_add(T *p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
inline int atomicAdd(int *p, int v) { return ck_shim_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return ck_shim_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) { return ck_shim_atomic_add(p, v); }
inline float atomicAdd(float *p, float v) { return ck_shim_atomic_add(p, v); }
inline double atomicAdd(double *p, double v) { return ck_shim_atomic_add(p, v); }
inline int atomicSub(int *p, int v) { return ck_shim_atomic_add(p, -v); }
inline unsigned atomicSub(unsigned *p, unsigned v) { return ck_shim_atomic_add(p, 0u - v); }
template <class T> inline T ck_shim_atomic_cas(T *p, T cmp, T v) {
    std::atomic_ref<T> a(*p);
    a.compare_exchange_strong(cmp, v, std::memory_order_relaxed);
    return cmp; /* the old value, whether or not it was swapped */
}
inline int atomicCAS(int *p, int c, int v) { return ck_shim_atomic_cas(p, c, v); }
inline unsigned atomicCAS(unsigned *p, unsigned c, unsigned v) { return ck_shim_atomic_cas(p, c, v); }
inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long c, unsigned long long v) {
    return ck_shim_atomic_cas(p, c, v);
}
inline unsigned short atomicCAS(unsigned short *p, unsigned short c, unsigned short v) {
    return ck_shim_atomic_cas(p, c, v);
}
template <class T, class F> inline T ck_shim_atomic_rmw(T *p, F f) {
    std::atomic_ref<T> a(*p);
    T old = a.load(std::memory_order_relaxed);
    while (!a.compare_exchange_weak(old, f(old), std::memory_order_relaxed)) {
    }
    return old;
}
#define CK_SHIM_MINMAX(T)                                                                                       \
    inline T atomicMin(T *p, T v) { return ck_shim_atomic_rmw(p, [v](T o) { return v < o ? v : o; }); }         \
    inline T atomicMax(T *p, T v) { return ck_shim_atomic_rmw(p, [v](T o) { return v > o ? v : o; }); }
CK_SHIM_MINMAX(int)
CK_SHIM_MINMAX(unsigned)
CK_SHIM_MINMAX(long long)
CK_SHIM_MINMAX(unsigned long long)
#undef CK_SHIM_MINMAX
template <class T> inline T atomicExch(T *p, T v) { return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed); }
inline int atomicAnd(int *p, int v) { return std::atomic_ref<int>(*p).fetch_and(v); }
inline unsigned atomicAnd(unsigned *p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_and(v); }
inline int atomicOr(int *p, int v) { return std::atomic_ref<int>(*p).fetch_or(v); }
inline unsigned atomicOr(unsigned *p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_or(v); }

/* ---- math intrinsics: the host functions (the fast-math variants computed exactly) ---- */
using std::isfinite;
using std::isinf;
using std::isnan;
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float *s, float *c) { *s = sinf(x), *c = cosf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return !(x > 0.0f) ? 0.0f : x > 1.0f ? 1.0f : x; } /* NaN -> 0 */
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline float __double2float_rn(double x) { return (float)x; }
inline int __float_as_int(float x) { return ck_shim::from_bits<int>(ck_shim::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return ck_shim::from_bits<unsigned>(ck_shim::to_bits(x)); }
inline float __int_as_float(int x) { return ck_shim::from_bits<float>(ck_shim::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return ck_shim::from_bits<float>(ck_shim::to_bits(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++)
        r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <class T> inline T __ldg(const T *p) { return *p; }
template <class T> inline T __ldcs(const T *p) { return *p; }
template <class T> inline T __ldcg(const T *p) { return *p; }
template <class T> inline void __stcs(T *p, T v) { *p = v; }
template <class T> inline void __stcg(T *p, T v) { *p = v; }
inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
inline void __nanosleep(unsigned) {}

/* CUDA's min/max overloads for mixed arithmetic types (the result is the usual arithmetic conversion;
 * floating point as fminf/fmaxf: a NaN operand loses). */
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>)
        return std::fmin((C)a, (C)b);
    else
        return (C)a < (C)b ? (C)a : (C)b;
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>)
        return std::fmax((C)a, (C)b);
    else
        return (C)a > (C)b ? (C)a : (C)b;
}

#include "ck_shim_wmma.h"

#endif
