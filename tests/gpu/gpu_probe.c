/* gpu_probe.c — `gpu_probe CMD ARGS...` runs CMD when a CUDA device is usable and exits 77 (ctest's
 * SKIP_RETURN_CODE) otherwise; `gpu_probe` alone prints the device count and exits 0 or 77. For GPU
 * tests that have no skip of their own (tests/gpu/CMakeLists.txt) and for tests/gpu/device-check.sh.
 *
 * The count starts at 0: without a driver cudaGetDeviceCount returns cudaErrorInsufficientDriver and
 * leaves it unwritten. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    int drv = 0;
    if (e == cudaErrorInsufficientDriver && cudaDriverGetVersion(&drv) == cudaSuccess && drv > 0) {
        /* a GPU with a driver too old for this runtime is a failure to report, not a machine without one */
        printf("gpu_probe: the NVIDIA driver supports CUDA %d.%d, older than this build's runtime: FAILED\n",
               drv / 1000, drv % 1000 / 10);
        return 1;
    }
    if (e != cudaSuccess || count < 1) {
        printf("gpu_probe: no usable CUDA device (%s): skipped\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    if (argc < 2) {
        printf("gpu_probe: %d CUDA device%s\n", count, count == 1 ? "" : "s");
        return 0;
    }
    fflush(stdout);
    execvp(argv[1], argv + 1);
    perror(argv[1]);
    return 127;
}
