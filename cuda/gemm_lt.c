/* gemm_lt.c — ck_gemm_* of cuda/ck.h through cuBLASLt: the prefill GEMMs of the CUDA backend.
 *
 * D [n][M] fp32 = A [n][K] bf16 · W [M][K]ᵀ bf16 (+ bias [M] fp32) (+ D when accumulate), computed in
 * fp32 (CUBLAS_COMPUTE_32F). The layout is the usual one for row-major weights: a PyTorch weight [out][in]
 * row-major is column-major in x out with ld = in, passed as cuBLASLt's A with TRANSA = T; the
 * activations [tokens][in] row-major are column-major in x tokens, B without transpose; D comes out
 * column-major out x tokens, which is row-major [tokens][out]. So cuBLASLt's m = outputs, n = tokens,
 * k = inputs. The bias (one per output feature = per row of D, broadcast over tokens: GLM's QKV bias)
 * goes through the CUBLASLT_EPILOGUE_BIAS epilogue; accumulate is beta = 1 with C = D.
 *
 * The workspace (32 MiB: what Hopper's kernels ask for) is the caller's, allocated once: cuBLASLt
 * then allocates nothing per call, which also keeps the calls capturable in a CUDA graph. The
 * descriptors and the heuristic's algorithm are cached per (n, M, K, bias, accumulate, operand
 * alignment): a prefill repeats a handful of shapes (the chunk, the last chunk, QKV, O, MLP, LM head).
 * The shim build (tests/cuda_shim/gemm_ref.cc) replaces this file with a CPU product.
 *
 * cuBLASLt is loaded on first use (dlopen), not linked: the library is about 500 MB, and linking it
 * made every mtok process, CPU runs included, map it at start-up and hold ~200 MB more resident
 * memory (seen as tests/test_kv_spill.py's peak-RSS check failing). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "ck.h"

/* ---- the cuBLASLt entry points, resolved by lt_load ---- */
#define LT_FUNCS(X)                                                                                              \
    X(cublasLtCreate) X(cublasLtDestroy) X(cublasLtGetStatusString) X(cublasLtMatmul)                             \
    X(cublasLtMatmulAlgoGetHeuristic) X(cublasLtMatmulDescCreate) X(cublasLtMatmulDescDestroy)                    \
    X(cublasLtMatmulDescSetAttribute) X(cublasLtMatmulPreferenceCreate) X(cublasLtMatmulPreferenceDestroy)        \
    X(cublasLtMatmulPreferenceSetAttribute) X(cublasLtMatrixLayoutCreate) X(cublasLtMatrixLayoutDestroy)
static struct {
#define LT_MEMBER(f) __typeof__(&f) f;
    LT_FUNCS(LT_MEMBER)
#undef LT_MEMBER
} lt;
static pthread_once_t lt_once = PTHREAD_ONCE_INIT;
static char lt_failure[256]; /* empty once loaded */

#define LT_STR2(x) #x
#define LT_STR(x) LT_STR2(x)
static void lt_load_once(void) {
    const char *names[] = {"libcublasLt.so." LT_STR(CUBLAS_VER_MAJOR), "libcublasLt.so"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof names / sizeof *names && !h; i++) h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(lt_failure, sizeof lt_failure, "cuBLASLt (%s) could not be loaded: %s", names[0], dlerror());
        return;
    }
#define LT_RESOLVE(f)                                                                                           \
    if (!(*(void **)&lt.f = dlsym(h, #f))) {                                                                  \
        snprintf(lt_failure, sizeof lt_failure, "cuBLASLt (%s) lacks %s", names[0], #f);                      \
        return;                                                                                                \
    }
    LT_FUNCS(LT_RESOLVE)
#undef LT_RESOLVE
}

/* 0 once every entry point is resolved; else the message stays in lt_failure */
static int lt_load(void) {
    pthread_once(&lt_once, lt_load_once);
    return lt_failure[0] ? -1 : 0;
}

/* From here on every cublasLt* call goes through the table. */
#define cublasLtCreate lt.cublasLtCreate
#define cublasLtDestroy lt.cublasLtDestroy
#define cublasLtGetStatusString lt.cublasLtGetStatusString
#define cublasLtMatmul lt.cublasLtMatmul
#define cublasLtMatmulAlgoGetHeuristic lt.cublasLtMatmulAlgoGetHeuristic
#define cublasLtMatmulDescCreate lt.cublasLtMatmulDescCreate
#define cublasLtMatmulDescDestroy lt.cublasLtMatmulDescDestroy
#define cublasLtMatmulDescSetAttribute lt.cublasLtMatmulDescSetAttribute
#define cublasLtMatmulPreferenceCreate lt.cublasLtMatmulPreferenceCreate
#define cublasLtMatmulPreferenceDestroy lt.cublasLtMatmulPreferenceDestroy
#define cublasLtMatmulPreferenceSetAttribute lt.cublasLtMatmulPreferenceSetAttribute
#define cublasLtMatrixLayoutCreate lt.cublasLtMatrixLayoutCreate
#define cublasLtMatrixLayoutDestroy lt.cublasLtMatrixLayoutDestroy

#define PLAN_CACHE 48

typedef struct {
    int64_t n, M, K;
    int bias, acc;
    unsigned align_a, align_b, align_d;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
    uint64_t used; /* last use, for eviction */
} gemm_plan;

struct ck_gemm {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    gemm_plan plan[PLAN_CACHE];
    int n_plan;
    uint64_t clock;
};

static char gemm_msg[320] = "no error";

__attribute__((format(printf, 2, 3))) static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(gemm_msg, sizeof gemm_msg, fmt, ap);
    va_end(ap);
    return code ? code : (int)cudaErrorUnknown;
}

const char *ck_gemm_error(void) { return gemm_msg; }

int ck_gemm_create(ck_gemm **out, size_t workspace_bytes) {
    *out = NULL;
    if (lt_load()) return fail(cudaErrorSharedObjectInitFailed, "%s", lt_failure);
    ck_gemm *g = calloc(1, sizeof *g);
    if (!g) return fail(cudaErrorMemoryAllocation, "ck_gemm_create: out of host memory");
    cublasStatus_t s = cublasLtCreate(&g->lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        free(g);
        return fail(cudaErrorInitializationError, "cublasLtCreate failed: %s", cublasLtGetStatusString(s));
    }
    if (workspace_bytes) {
        cudaError_t e = cudaMalloc(&g->ws, workspace_bytes);
        if (e != cudaSuccess) {
            cublasLtDestroy(g->lt);
            free(g);
            return fail(e, "cudaMalloc of the %zu-byte cuBLASLt workspace failed: %s", workspace_bytes,
                        cudaGetErrorString(e));
        }
    }
    g->ws_bytes = workspace_bytes;
    *out = g;
    return 0;
}

static void plan_free(gemm_plan *p) {
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->ld) cublasLtMatrixLayoutDestroy(p->ld);
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

void ck_gemm_free(ck_gemm *g) {
    if (!g) return;
    for (int i = 0; i < g->n_plan; i++) plan_free(&g->plan[i]);
    cudaFree(g->ws);
    cublasLtDestroy(g->lt);
    free(g);
}

/* The largest power of two up to 256 dividing the address (cuBLASLt's default assumption is 256). */
static unsigned align_of(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 1 && a % al) al /= 2;
    return al;
}

#define LT(call)                                                                                                     \
    do {                                                                                                             \
        cublasStatus_t s_ = (call);                                                                                  \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                           \
            rc = fail(cudaErrorUnknown, "cuBLASLt setup of the %lld x %lld x %lld product failed: %s", (long long)n, \
                      (long long)M, (long long)K, cublasLtGetStatusString(s_));                                      \
            goto out;                                                                                                \
        }                                                                                                            \
    } while (0)

/* Builds the descriptors of a shape and asks the heuristic for one algorithm. */
static int plan_make(ck_gemm *g, gemm_plan *p, int64_t n, int64_t M, int64_t K, int bias, int acc, unsigned aa,
                     unsigned ab, unsigned ad) {
    int rc = 0;
    cublasLtMatmulPreference_t pref = NULL;
    memset(p, 0, sizeof *p);
    *p = (gemm_plan){.n = n, .M = M, .K = K, .bias = bias, .acc = acc, .align_a = aa, .align_b = ab, .align_d = ad};
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        const int32_t bt = CUDA_R_32F;
        LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    LT(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, (uint64_t)K, (uint64_t)M, K)); /* W: K x M, ld K, op T */
    LT(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, (uint64_t)K, (uint64_t)n, K)); /* A: K x n, ld K */
    LT(cublasLtMatrixLayoutCreate(&p->ld, CUDA_R_32F, (uint64_t)M, (uint64_t)n, M));  /* D (and C): M x n, ld M */
    LT(cublasLtMatmulPreferenceCreate(&pref));
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g->ws_bytes,
                                            sizeof g->ws_bytes));
    const uint32_t a32 = aa, b32 = ab, d32 = ad;
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a32, sizeof a32));
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b32, sizeof b32));
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &d32, sizeof d32));
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &d32, sizeof d32));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    LT(cublasLtMatmulAlgoGetHeuristic(g->lt, p->op, p->la, p->lb, p->ld, p->ld, pref, 1, &res, &found));
    if (found < 1 || res.state != CUBLAS_STATUS_SUCCESS) {
        rc = fail(cudaErrorNotSupported,
                  "cuBLASLt has no algorithm for the bf16 x bf16 -> fp32 product of %lld tokens x %lld outputs x %lld "
                  "inputs%s", (long long)n, (long long)M, (long long)K, bias ? " with a bias epilogue" : "");
        goto out;
    }
    p->algo = res.algo;
out:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (rc) plan_free(p);
    return rc;
}

static gemm_plan *plan_get(ck_gemm *g, int64_t n, int64_t M, int64_t K, int bias, int acc, unsigned aa, unsigned ab,
                           unsigned ad, int *rc) {
    *rc = 0;
    g->clock++;
    for (int i = 0; i < g->n_plan; i++) {
        gemm_plan *p = &g->plan[i];
        if (p->n == n && p->M == M && p->K == K && p->bias == bias && p->acc == acc && p->align_a == aa &&
            p->align_b == ab && p->align_d == ad) {
            p->used = g->clock;
            return p;
        }
    }
    int slot = g->n_plan;
    if (slot == PLAN_CACHE) { /* the least recently used shape makes room */
        slot = 0;
        for (int i = 1; i < PLAN_CACHE; i++)
            if (g->plan[i].used < g->plan[slot].used) slot = i;
        plan_free(&g->plan[slot]);
    } else {
        g->n_plan++;
    }
    if ((*rc = plan_make(g, &g->plan[slot], n, M, K, bias, acc, aa, ab, ad))) {
        /* keep the cache dense: the failed slot takes the last entry */
        if (slot != g->n_plan - 1) g->plan[slot] = g->plan[g->n_plan - 1];
        memset(&g->plan[g->n_plan - 1], 0, sizeof g->plan[0]);
        g->n_plan--;
        return NULL;
    }
    g->plan[slot].used = g->clock;
    return &g->plan[slot];
}

int ck_gemm_bf16(ck_gemm *g, ck_stream s, float *D, const uint16_t *A, const uint16_t *W, const float *bias,
                 int64_t n, int64_t M, int64_t K, int accumulate) {
    if (!g) return fail(cudaErrorInvalidValue, "ck_gemm_bf16: no GEMM handle");
    if (n < 0 || M <= 0 || K <= 0)
        return fail(cudaErrorInvalidValue, "ck_gemm_bf16: bad shape n %lld, M %lld, K %lld", (long long)n,
                    (long long)M, (long long)K);
    if (n == 0) return 0;
    int rc;
    gemm_plan *p = plan_get(g, n, M, K, bias != NULL, accumulate != 0, align_of(W), align_of(A), align_of(D), &rc);
    if (!p) return rc;
    if (bias) {
        cublasStatus_t st =
            cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        if (st != CUBLAS_STATUS_SUCCESS)
            return fail(cudaErrorUnknown, "cuBLASLt: setting the bias of the %lld x %lld x %lld product: %s",
                        (long long)n, (long long)M, (long long)K, cublasLtGetStatusString(st));
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t st = cublasLtMatmul(g->lt, p->op, &alpha, W, p->la, A, p->lb, &beta, D, p->ld, D, p->ld, &p->algo,
                                       g->ws, g->ws_bytes, (cudaStream_t)s);
    if (st != CUBLAS_STATUS_SUCCESS)
        return fail(cudaErrorNotSupported, "cublasLtMatmul of %lld tokens x %lld outputs x %lld inputs failed: %s",
                    (long long)n, (long long)M, (long long)K, cublasLtGetStatusString(st));
    return 0;
}
