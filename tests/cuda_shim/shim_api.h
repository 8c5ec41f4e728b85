/* shim_api.h — what tests ask the CPU-executed CUDA runtime (tests/cuda_shim/fake_cudart.cc): counts
 * of the work it ran, so a test can assert, for example, that a decode step replayed a graph instead
 * of launching its kernels one by one. Plain C. */
#ifndef MTOK_SHIM_API_H
#define MTOK_SHIM_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Kernel launches (and ck_gemm_bf16 calls) run directly, outside any graph. */
long long ck_shim_launches(void);
/* cudaGraphLaunch calls that ran a graph. */
long long ck_shim_graph_launches(void);
/* Kernels (and GEMMs) run as nodes of launched graphs. */
long long ck_shim_replayed(void);
/* Kernels (and GEMMs) recorded into captures instead of run. */
long long ck_shim_recorded(void);
void ck_shim_reset_counters(void);
/* Bytes of cudaMalloc memory not yet freed (leak checks). */
size_t ck_shim_device_bytes_in_use(void);

#ifdef __cplusplus
}
#endif
#endif
