/* ck_dev.cuh — what every cuda/k_*.cu file includes first: the CUDA headers, the shared math of
 * kernels/mtok_math.h, and the one launch macro.
 *
 * The same .cu source is built two ways (docs/GPU.md, "Testing without a GPU"):
 *   - by nvcc for the GPU (sm_80, sm_90a, PTX compute_90);
 *   - by the host C++ compiler with MTOK_CUDA_SHIM defined and tests/cuda_shim/ck_shim.h included
 *     first (-include), which runs each thread block's threads as CPU threads with real barriers,
 *     32-lane warp shuffles and per-block shared memory, so ctest compares the kernel's own source
 *     with the CPU backend on a machine without a GPU.
 * CK_LAUNCH(kernel, grid, block, smem, stream)(args...) is kernel<<<grid, block, smem, stream>>>(args...)
 * under nvcc and the shim's launcher otherwise; launchers return ck_launch_status(). */
#ifndef MTOK_CK_DEV_CUH
#define MTOK_CK_DEV_CUH

#ifndef MTOK_CUDA_SHIM
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#define CK_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (cudaStream_t)(stream)>>>
static inline int ck_launch_status(void) { return (int)cudaGetLastError(); }
#endif

#include "../kernels/mtok_math.h"
#include "ck.h"

#endif
