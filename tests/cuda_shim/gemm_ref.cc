/* gemm_ref.cc — ck_gemm_* of cuda/ck.h on the CPU, standing in for cuda/gemm_lt.c (cuBLASLt) in the
 * shim build: D [n][M] = A [n][K] · W [M][K]ᵀ, bf16 operands, fp32 products (exact) summed in fp32 in k
 * order, then + D when accumulate, then + bias (cuBLASLt's order: alpha·A·B + beta·C, then the bias
 * epilogue). Like a kernel, a call is work for the stream: recorded while the stream captures, so a
 * captured decode step replays its GEMMs; the workspace is cudaMalloc'd by ck_gemm_create as the real
 * one does, so creating a GEMM handle during a capture fails here as it would on the GPU. */
#include "shim_internal.h"

#include "cuda/ck.h"

#include <cstdio>
#include <cstring>
#include <vector>

struct ck_gemm {
    void *workspace;
    size_t workspace_bytes;
};

namespace {
char gemm_msg[256] = "no error";

int gemm_fail(int code, const char *fmt, long long a = 0, long long b = 0, long long c = 0) {
    snprintf(gemm_msg, sizeof gemm_msg, fmt, a, b, c);
    return code;
}

float bf16f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
} // namespace

extern "C" {
const char *ck_gemm_error(void) { return gemm_msg; }

int ck_gemm_create(ck_gemm **out, size_t workspace_bytes) {
    if (!out)
        return gemm_fail(cudaErrorInvalidValue, "ck_gemm_create: out is NULL");
    *out = nullptr;
    ck_gemm *g = new ck_gemm{nullptr, workspace_bytes};
    if (workspace_bytes) {
        cudaError_t e = cudaMalloc(&g->workspace, workspace_bytes);
        if (e != cudaSuccess) {
            delete g;
            return gemm_fail(e, "ck_gemm_create: cudaMalloc of a %lld-byte workspace failed (error %lld)",
                             (long long)workspace_bytes, (long long)e);
        }
    }
    *out = g;
    return 0;
}

void ck_gemm_free(ck_gemm *g) {
    if (!g)
        return;
    cudaFree(g->workspace);
    delete g;
}

int ck_gemm_bf16(ck_gemm *g, ck_stream s, float *D, const uint16_t *A, const uint16_t *W, const float *bias,
                 int64_t n, int64_t M, int64_t K, int accumulate) {
    if (!g)
        return gemm_fail(cudaErrorInvalidValue, "ck_gemm_bf16: no GEMM handle");
    if (n < 0 || M <= 0 || K <= 0)
        return gemm_fail(cudaErrorInvalidValue, "ck_gemm_bf16: bad shape n %lld, M %lld, K %lld", n, M, K);
    if (n == 0)
        return 0;
    /* every operand must be device memory of the right extent: a host pointer or a short buffer here
     * would be a fault (or silent garbage) in cuBLASLt */
    if (!ck_shim::is_device(D, (size_t)(n * M) * 4) || !ck_shim::is_device(A, (size_t)(n * K) * 2) ||
        !ck_shim::is_device(W, (size_t)(M * K) * 2) || (bias && !ck_shim::is_device(bias, (size_t)M * 4)))
        return gemm_fail(cudaErrorInvalidValue,
                         "ck_gemm_bf16: an operand of the %lld x %lld x %lld product is not inside one device "
                         "allocation",
                         n, M, K);
    cudaError_t e = ck_shim::submit((cudaStream_t)s, ck_shim::OP_GEMM, [=]() {
        std::vector<float> w((size_t)K);
        for (int64_t m = 0; m < M; m++) {
            for (int64_t k = 0; k < K; k++)
                w[k] = bf16f(W[m * K + k]);
            for (int64_t t = 0; t < n; t++) {
                const uint16_t *ar = A + t * K;
                float acc = 0.0f;
                for (int64_t k = 0; k < K; k++)
                    acc += bf16f(ar[k]) * w[k];
                if (accumulate)
                    acc += D[t * M + m];
                if (bias)
                    acc += bias[m];
                D[t * M + m] = acc;
            }
        }
    });
    if (e != cudaSuccess) {
        ck_shim::set_error(e);
        return gemm_fail(e, "ck_gemm_bf16: the stream refused the GEMM (cuda error %lld)", (long long)e);
    }
    return 0;
}
} /* extern "C" */
