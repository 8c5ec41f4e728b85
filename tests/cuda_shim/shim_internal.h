/* shim_internal.h — what the parts of the shim runtime (shim_exec.cc, fake_cudart.cc, gemm_ref.cc)
 * share; not for kernels or tests (they use ck_shim.h and shim_api.h). */
#ifndef MTOK_SHIM_INTERNAL_H
#define MTOK_SHIM_INTERNAL_H

#include <cuda_runtime_api.h>

#include <cstddef>
#include <functional>

namespace ck_shim {
using op_fn = std::function<void()>;
enum op_kind { OP_KERNEL, OP_COPY, OP_SET, OP_GEMM };

/* Work for stream s: while s captures, append f to the capture (or refuse when the capture is
 * invalid); otherwise run f now (every stream is synchronous in the shim). */
cudaError_t submit(cudaStream_t s, op_kind k, op_fn f);
/* Leave e for cudaGetLastError / cudaPeekAtLastError of this host thread (cudaSuccess leaves it) and
 * return it. */
cudaError_t set_error(cudaError_t e);
/* cudaFuncAttributeMaxDynamicSharedMemorySize set for the kernel, or the default 48 KiB. */
size_t func_max_dyn_smem(const void *func);
/* The device's limit on a block's shared memory with the opt-in (cudaDevAttrMaxSharedMemoryPerBlockOptin). */
constexpr size_t smem_optin_max = 232448;
constexpr size_t smem_default_max = 49152;

/* The fake device (fake_device.cc): 1 or 0 devices, its memory in bytes, whether new device memory
 * is filled with 0xFF bytes; read from the environment at each call, so a test can change them. */
int device_count();
size_t device_memory();
bool poison_memory();

/* Whether [p, p + bytes) lies inside one cudaMalloc allocation. */
bool is_device(const void *p, size_t bytes);

/* Run body on every thread of every block of the grid (shim_exec.cc). */
void run_grid(dim3 grid, dim3 block, size_t smem, const op_fn &body);
} // namespace ck_shim

#endif
