/* k_bench.cu — the measurement kernels of cuda/ck.h: the device copy whose GB/s is the denominator
 * of every bandwidth figure `mtok bench` prints, and the device argmax of greedy decoding. */
#include "ck_dev.cuh"

namespace {

constexpr int kCopyThreads = 256;
constexpr int kArgmaxThreads = 1024;
constexpr int kBad = (int)cudaErrorInvalidValue;

/* Grid-stride copy of 16-byte words, four independent loads before the four stores so each thread
 * keeps 64 bytes in flight (one load at a time leaves HBM waiting on latency). */
__global__ void __launch_bounds__(kCopyThreads) copy_k(uint4 *dst, const uint4 *src, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        const uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
        dst[i] = a, dst[i + stride] = b, dst[i + 2 * stride] = c, dst[i + 3 * stride] = d;
    }
    for (; i < n; i += stride) dst[i] = src[i];
}

/* (value, index) candidates: idx < 0 is "none yet". A NaN never becomes a candidate, so it never wins;
 * between equal values the smaller index wins, so the result is the first maximum. */
struct best {
    float v;
    int64_t i;
};

__device__ __forceinline__ best better(best a, best b) {
    if (b.i < 0) return a;
    if (a.i < 0) return b;
    return b.v > a.v || (b.v == a.v && b.i < a.i) ? b : a;
}

/* One block: x is one row of logits (151552 for GLM-4, about 150 loads per thread). */
__global__ void __launch_bounds__(kArgmaxThreads) argmax_k(const float *x, int64_t n, int32_t *out) {
    __shared__ float sv[32];
    __shared__ int64_t si[32];
    best b = {0.0f, -1};
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i];
        if (v == v && (b.i < 0 || v > b.v)) b.v = v, b.i = i; /* i grows: a tie keeps the earlier one */
    }
    for (int o = 16; o > 0; o >>= 1) {
        const best c = {__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.i, o)};
        b = better(b, c);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sv[warp] = b.v, si[warp] = b.i;
    __syncthreads();
    if (warp == 0) {
        const int nw = (int)(blockDim.x >> 5);
        b = lane < nw ? best{sv[lane], si[lane]} : best{0.0f, -1};
        for (int o = 16; o > 0; o >>= 1) {
            const best c = {__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.i, o)};
            b = better(b, c);
        }
        /* every element NaN: index 0, what the host sampler's `>` scan returns (core/sampler.c) */
        if (lane == 0) *out = (int32_t)(b.i < 0 ? 0 : b.i);
    }
}

} // namespace

extern "C" {

int ck_copy(ck_stream s, void *dst, const void *src, int64_t n16) {
    if (n16 < 0 || ((uintptr_t)dst | (uintptr_t)src) % 16) return kBad;
    if (n16 == 0) return 0;
    /* enough blocks to fill the largest GPUs several times over; the grid-stride loop does the rest */
    int64_t b = (n16 + kCopyThreads - 1) / kCopyThreads;
    b = b > 8192 ? 8192 : b;
    CK_LAUNCH(copy_k, (unsigned)b, kCopyThreads, 0, s)((uint4 *)dst, (const uint4 *)src, n16);
    return ck_launch_status();
}

int ck_argmax(ck_stream s, const float *x, int64_t n, int32_t *out) {
    if (n <= 0 || n > 0x7fffffffLL) return kBad; /* the result is an int32 token id */
    CK_LAUNCH(argmax_k, 1, kArgmaxThreads, 0, s)(x, n, out);
    return ck_launch_status();
}

} // extern "C"
