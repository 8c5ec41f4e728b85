/* ck_rows.cuh — device helpers of the row kernels (cuda/k_rows.cu, cuda/k_vision.cu, cuda/k_gemv.cu's
 * warp sums): fixed-order sums, the 16-byte loads and the launchers' argument checks. Included after
 * ck_dev.cuh; everything here is inline, so each .cu keeps its own copy as before. */
#ifndef MTOK_CK_ROWS_CUH
#define MTOK_CK_ROWS_CUH

#include "ck_dev.cuh"

/* what a launcher returns for arguments it refuses (1: the static_assert of k_rows.cu) */
constexpr int ck_bad = (int)cudaErrorInvalidValue;

inline bool ck_aligned(const void *p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* blocks for `work` items of `per_block` each, or 0 when the grid would exceed CUDA's limit */
inline int64_t ck_blocks_for(int64_t work, int64_t per_block) {
    const int64_t b = (work + per_block - 1) / per_block;
    return b > 0x7fffffffLL ? 0 : b;
}

__device__ __forceinline__ float ck_warp_sum(float v) {
    /* butterfly: every lane ends with the same bits (each step adds the same two values) */
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The sum of every thread's v in a fixed order (per-warp butterfly, then warp 0 over the warps in
 * order), returned to all threads. sh: [33] floats. Safe to call twice in a row on the same sh: the
 * second call's writes of sh[warp] come after the first call's last barrier, by which warp 0 has read
 * sh[0..nw), and its sh[32] is written only after its own first barrier, once every thread has read
 * the old one. */
__device__ __forceinline__ float ck_block_sum(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    v = ck_warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = ck_warp_sum(lane < nw ? sh[lane] : 0.0f);
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}

__device__ __forceinline__ float4 ck_ld4(const float *p, int64_t i4) { return reinterpret_cast<const float4 *>(p)[i4]; }
__device__ __forceinline__ void ck_st4(float *p, int64_t i4, float4 v) { reinterpret_cast<float4 *>(p)[i4] = v; }

#endif
