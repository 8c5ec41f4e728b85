/* test_dev.h — what the kernel tests (tests/cuda_shim/test_k_*.cc, also built for a GPU by
 * tests/gpu) share: a checked CUDA call, a device buffer that starts as NaN, a small seeded RNG. */
#ifndef MTOK_TEST_DEV_H
#define MTOK_TEST_DEV_H

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

/* a CUDA call that must succeed: the test stops with the call and its error otherwise */
#define CUDA_OK(x)                                                                                              \
    do {                                                                                                        \
        cudaError_t e_ = (cudaError_t)(x);                                                                      \
        if (e_ != cudaSuccess) {                                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));                \
            exit(1);                                                                                            \
        }                                                                                                       \
    } while (0)

/* a device buffer that starts as NaN (0xFF bytes): an element a kernel should have written and did
 * not, or wrote where it must not, shows */
template <class T> struct dbuf {
    T *p = nullptr;
    size_t n;
    explicit dbuf(size_t n_) : n(n_ ? n_ : 1) {
        CUDA_OK(cudaMalloc((void **)&p, n * sizeof(T)));
        CUDA_OK(cudaMemset(p, 0xff, n * sizeof(T)));
    }
    ~dbuf() { cudaFree(p); }
    dbuf(const dbuf &) = delete;
    dbuf &operator=(const dbuf &) = delete;
    void up(const std::vector<T> &v, size_t at = 0) {
        CUDA_OK(cudaMemcpy(p + at, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> down() const {
        std::vector<T> v(n);
        CUDA_OK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return v;
    }
};

/* a 64-bit LCG: the same numbers on every machine and compiler */
struct rng {
    uint64_t s;
    uint32_t next() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return (uint32_t)(s >> 33);
    }
    float uni() { return (float)next() / 2147483648.0f * 2.0f - 1.0f; } /* [-1, 1) */
};

#endif
