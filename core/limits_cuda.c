/* limits_cuda.c — the device limits of `mtok bench --device cuda` (core/limits_cuda.h).
 *
 * Copy bandwidth: ck_copy of one buffer into another, both at least 4x the L2 cache (1 GiB by default,
 * so each rep streams 2 GiB through HBM and no L2 flush is needed between reps, as a kernel
 * benchmark at small sizes needs), timed with CUDA events on a stream of its own; the best of the
 * reps is the limit, their mean is reported beside it. Then sampled words of the destination are
 * compared with the source pattern.
 *
 * GEMM rate: ck_gemm_bf16 (cuBLASLt) at the gate|up shape of an 8K-token chunk of GLM-4-9B
 * (m 27392, n 8192, k 4096: 1.8 TFLOP, about 1.2 GB of operands). Where that does not fit the share
 * of free memory the measurement may take, n halves down to 512 tokens, then m and k drop to 4096:
 * the result says which shape ran (gemm_fallback, note). Sampled outputs are checked against a double
 * dot product of the same bf16 inputs.
 *
 * Operand values come from a counter-based hash, so the host can regenerate any element for the
 * checks without keeping the 1.2 GB it uploaded. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits_cuda.h"
#include "mtok.h"
#include "../kernels/mtok_math.h"

#ifndef MTOK_HAVE_CUDA

int mtok_cuda_limits_run(int device, const mtok_cuda_limits_params *p, mtok_cuda_limits_result *out) {
    (void)device, (void)p;
    if (out) memset(out, 0, sizeof *out);
    return mtok_err(MTOK_EUSAGE, "cuda limits: not built (this mtok has no CUDA backend; configure with "
                    "-DMTOK_CUDA=ON where the CUDA toolkit is installed, docs/GPU.md)");
}

#else

#include <cuda_runtime_api.h>

#include "../cuda/ck.h"

#define GEMM_WORKSPACE ((size_t)32 << 20) /* cuBLASLt's workspace on Hopper (docs/GPU.md) */
#define HOST_PIECE ((size_t)16 << 20)     /* bytes generated on the host per upload */
#define COPY_SAMPLES 64
#define COPY_SAMPLE_WORDS 1024            /* 4 KiB per sample */
#define GEMM_SAMPLES 64
#define GEMM_TOL 1e-3                     /* |D - ref| / sum|a w|: fp32 sums of exact bf16 products
                                           * err ~1e-6; a wrong layout or a dropped k range is O(1) */

static uint32_t mix32(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)(z ^ (z >> 31));
}

/* The copy source: word i of the buffer. */
static uint32_t copy_word(uint64_t i) { return mix32(i + 0x6d746f6bull); }

/* A bf16 operand element in [-1, 1) (exact in bf16: 8 significant bits). */
static uint16_t gemm_elem(uint64_t salt, uint64_t i) {
    const int32_t v = (int32_t)(mix32(salt * 0x9E3779B97F4A7C15ull + i) & 0xff) - 128;
    return mm_f32_to_bf16((float)v / 128.0f);
}

static int cu_fail(cudaError_t e, const char *what) {
    return mtok_err(MTOK_ERESOURCE, "cuda limits: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

typedef struct {
    cudaStream_t s;
    cudaEvent_t e0, e1;
} timer;

static int timer_open(timer *t) {
    cudaError_t e = cudaStreamCreateWithFlags(&t->s, cudaStreamNonBlocking);
    if (e != cudaSuccess) return cu_fail(e, "cudaStreamCreate");
    if ((e = cudaEventCreate(&t->e0)) != cudaSuccess || (e = cudaEventCreate(&t->e1)) != cudaSuccess)
        return cu_fail(e, "cudaEventCreate");
    return 0;
}

static void timer_close(timer *t) {
    if (t->e0) cudaEventDestroy(t->e0);
    if (t->e1) cudaEventDestroy(t->e1);
    if (t->s) cudaStreamDestroy(t->s);
}

/* Milliseconds between the two events once e1 is done. */
static int timer_ms(timer *t, float *ms) {
    cudaError_t e = cudaEventSynchronize(t->e1);
    if (e == cudaSuccess) e = cudaEventElapsedTime(ms, t->e0, t->e1);
    return e == cudaSuccess ? 0 : cu_fail(e, "timing events");
}

/* Fills device buffer dst (n bf16 elements or n/2 copy words) from the host generator, in pieces. */
static int upload_pattern(void *dst, uint64_t bytes, int kind, uint64_t salt, void *host) {
    for (uint64_t off = 0; off < bytes; off += HOST_PIECE) {
        const uint64_t len = bytes - off < HOST_PIECE ? bytes - off : HOST_PIECE;
        if (kind == 0) {
            uint32_t *w = host;
            for (uint64_t i = 0; i < len / 4; i++) w[i] = copy_word(off / 4 + i);
        } else {
            uint16_t *h = host;
            for (uint64_t i = 0; i < len / 2; i++) h[i] = gemm_elem(salt, off / 2 + i);
        }
        cudaError_t e = cudaMemcpy((char *)dst + off, host, len, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) return cu_fail(e, "uploading a pattern");
    }
    return 0;
}

/* ---- the copy ---- */
static int measure_copy(const mtok_cuda_limits_params *p, int64_t budget, void *host, mtok_cuda_limits_result *r) {
    int64_t bytes = p->copy_bytes;
    const int64_t want = 4 * r->l2_bytes > ((int64_t)1 << 30) ? 4 * r->l2_bytes : (int64_t)1 << 30;
    if (bytes > 0) {
        if (2 * bytes > budget)
            return mtok_err(MTOK_ERESOURCE, "cuda limits: two copy buffers of %lld MiB do not fit the %lld MiB the "
                            "measurement may take", (long long)(bytes >> 20), (long long)(budget >> 20));
    } else {
        bytes = 2 * want <= budget ? want : (budget / 2) & ~(((int64_t)1 << 20) - 1);
        if (bytes < ((int64_t)1 << 20))
            return mtok_err(MTOK_ERESOURCE, "cuda limits: %lld MiB of device memory free: too little for the copy "
                            "measurement", (long long)(r->mem_free >> 20));
    }
    bytes &= ~(int64_t)15;
    r->copy_bytes = bytes;
    r->copy_in_l2 = bytes < 4 * r->l2_bytes;
    if (r->copy_in_l2)
        snprintf(r->note, sizeof r->note, "copy buffers of %lld MiB are below 4 x L2 (%lld MiB): the copy figure "
                 "includes L2 hits", (long long)(bytes >> 20), (long long)((4 * r->l2_bytes) >> 20));
    void *src = NULL, *dst = NULL;
    timer t = {0};
    int rc = 0;
    cudaError_t e;
    if ((e = cudaMalloc(&src, (size_t)bytes)) != cudaSuccess || (e = cudaMalloc(&dst, (size_t)bytes)) != cudaSuccess) {
        rc = cu_fail(e, "cudaMalloc of the copy buffers");
        goto done;
    }
    if ((rc = upload_pattern(src, (uint64_t)bytes, 0, 0, host)) || (rc = timer_open(&t))) goto done;
    const int reps = p->copy_reps > 0 ? p->copy_reps : 10;
    double best = INFINITY, sum = 0;
    for (int i = -1; i < reps && !rc; i++) { /* i = -1: warm-up, not counted */
        float ms = 0;
        if ((e = cudaEventRecord(t.e0, t.s)) != cudaSuccess) {
            rc = cu_fail(e, "cudaEventRecord");
            break;
        }
        const int k = ck_copy((ck_stream)t.s, dst, src, bytes / 16);
        if (k) {
            rc = cu_fail((cudaError_t)k, "ck_copy");
            break;
        }
        if ((e = cudaEventRecord(t.e1, t.s)) != cudaSuccess) rc = cu_fail(e, "cudaEventRecord");
        if (!rc) rc = timer_ms(&t, &ms);
        if (!rc && i >= 0) {
            const double s = (double)ms * 1e-3 > 1e-9 ? (double)ms * 1e-3 : 1e-9;
            best = s < best ? s : best;
            sum += s;
        }
    }
    if (rc) goto done;
    r->copy_reps = reps;
    r->copy_gbs = 2.0 * (double)bytes / best * 1e-9;
    r->copy_gbs_mean = 2.0 * (double)bytes / (sum / reps) * 1e-9;
    /* sampled words of dst against the pattern (spread over the buffer, first and last included) */
    const int64_t words = bytes / 4, span = words < COPY_SAMPLE_WORDS ? words : COPY_SAMPLE_WORDS;
    uint32_t *got = host;
    int ok = 1;
    for (int j = 0; j < COPY_SAMPLES && ok && !rc; j++) {
        const int64_t w0 = (words - span) * j / (COPY_SAMPLES - 1);
        if ((e = cudaMemcpy(got, (uint32_t *)dst + w0, (size_t)span * 4, cudaMemcpyDeviceToHost)) != cudaSuccess) {
            rc = cu_fail(e, "reading the copy back");
            break;
        }
        for (int64_t i = 0; i < span && ok; i++) ok = got[i] == copy_word((uint64_t)(w0 + i));
    }
    r->verified = ok;
done:
    timer_close(&t);
    cudaFree(src);
    cudaFree(dst);
    return rc;
}

/* ---- the GEMM ---- */
static int64_t gemm_need(int64_t m, int64_t n, int64_t k) {
    return n * k * 2 + m * k * 2 + n * m * 4 + (int64_t)GEMM_WORKSPACE;
}

/* The shape: explicit, or the gate|up shape with n halved (then m, k lowered) until it fits. */
static int gemm_shape(const mtok_cuda_limits_params *p, int64_t budget, mtok_cuda_limits_result *r) {
    if (p->gemm_m || p->gemm_n || p->gemm_k) {
        if (p->gemm_m <= 0 || p->gemm_n <= 0 || p->gemm_k <= 0 || p->gemm_m > ((int64_t)1 << 20) ||
            p->gemm_n > ((int64_t)1 << 20) || p->gemm_k > ((int64_t)1 << 20))
            return mtok_err(MTOK_EUSAGE, "cuda limits: GEMM shape %lld x %lld x %lld: each of m, n, k must be in "
                            "[1, 2^20]", (long long)p->gemm_m, (long long)p->gemm_n, (long long)p->gemm_k);
        r->gemm_m = p->gemm_m, r->gemm_n = p->gemm_n, r->gemm_k = p->gemm_k;
        if (gemm_need(r->gemm_m, r->gemm_n, r->gemm_k) > budget)
            return mtok_err(MTOK_ERESOURCE, "cuda limits: the %lld x %lld x %lld GEMM needs %lld MiB, more than the "
                            "%lld MiB it may take", (long long)r->gemm_m, (long long)r->gemm_n, (long long)r->gemm_k,
                            (long long)(gemm_need(r->gemm_m, r->gemm_n, r->gemm_k) >> 20), (long long)(budget >> 20));
        return 0;
    }
    int64_t m = MTOK_CUDA_GEMM_M, n = MTOK_CUDA_GEMM_N, k = MTOK_CUDA_GEMM_K;
    while (gemm_need(m, n, k) > budget && n > 512) n /= 2;
    if (gemm_need(m, n, k) > budget) m = 4096, k = 4096, n = 512;
    if (gemm_need(m, n, k) > budget)
        return mtok_err(MTOK_ERESOURCE, "cuda limits: %lld MiB of device memory free: too little for even a "
                        "4096 x 512 x 4096 GEMM", (long long)(r->mem_free >> 20));
    r->gemm_m = m, r->gemm_n = n, r->gemm_k = k;
    r->gemm_fallback = m != MTOK_CUDA_GEMM_M || n != MTOK_CUDA_GEMM_N;
    if (r->gemm_fallback) {
        const size_t used = strlen(r->note);
        snprintf(r->note + used, sizeof r->note - used, "%sthe gate|up GEMM (27392 x 8192 x 4096) needs %lld MiB, "
                 "more than the %lld MiB share of free memory: %lld x %lld x %lld ran", used ? "; " : "",
                 (long long)(gemm_need(MTOK_CUDA_GEMM_M, MTOK_CUDA_GEMM_N, MTOK_CUDA_GEMM_K) >> 20),
                 (long long)(budget >> 20), (long long)m, (long long)n, (long long)k);
    }
    return 0;
}

static int measure_gemm(const mtok_cuda_limits_params *p, int64_t budget, void *host, mtok_cuda_limits_result *r) {
    int rc = gemm_shape(p, budget, r);
    if (rc) return rc;
    const int64_t m = r->gemm_m, n = r->gemm_n, k = r->gemm_k;
    uint16_t *A = NULL, *W = NULL;
    float *D = NULL;
    ck_gemm *g = NULL;
    timer t = {0};
    cudaError_t e;
    if ((e = cudaMalloc((void **)&A, (size_t)(n * k) * 2)) != cudaSuccess ||
        (e = cudaMalloc((void **)&W, (size_t)(m * k) * 2)) != cudaSuccess ||
        (e = cudaMalloc((void **)&D, (size_t)(n * m) * 4)) != cudaSuccess) {
        rc = cu_fail(e, "cudaMalloc of the GEMM operands");
        goto done;
    }
    if ((rc = upload_pattern(A, (uint64_t)(n * k) * 2, 1, 1, host)) ||
        (rc = upload_pattern(W, (uint64_t)(m * k) * 2, 1, 2, host)) || (rc = timer_open(&t)))
        goto done;
    int k2 = ck_gemm_create(&g, GEMM_WORKSPACE);
    if (k2) {
        rc = mtok_err(MTOK_ERESOURCE, "cuda limits: ck_gemm_create: %s", ck_gemm_error());
        goto done;
    }
    const int reps = p->gemm_reps > 0 ? p->gemm_reps : 5;
    double best = INFINITY, sum = 0;
    for (int i = -1; i < reps && !rc; i++) { /* i = -1: warm-up (cuBLASLt picks its algorithm) */
        float ms = 0;
        if ((e = cudaEventRecord(t.e0, t.s)) != cudaSuccess) {
            rc = cu_fail(e, "cudaEventRecord");
            break;
        }
        if ((k2 = ck_gemm_bf16(g, (ck_stream)t.s, D, A, W, NULL, n, m, k, 0))) {
            rc = mtok_err(MTOK_ERESOURCE, "cuda limits: ck_gemm_bf16 %lld x %lld x %lld: %s", (long long)m,
                          (long long)n, (long long)k, ck_gemm_error());
            break;
        }
        if ((e = cudaEventRecord(t.e1, t.s)) != cudaSuccess) rc = cu_fail(e, "cudaEventRecord");
        if (!rc) rc = timer_ms(&t, &ms);
        if (!rc && i >= 0) {
            const double s = (double)ms * 1e-3 > 1e-9 ? (double)ms * 1e-3 : 1e-9;
            best = s < best ? s : best;
            sum += s;
        }
    }
    if (rc) goto done;
    const double flop = 2.0 * (double)m * (double)n * (double)k;
    r->gemm_reps = reps;
    r->gemm_tflops = flop / best * 1e-12;
    r->gemm_tflops_mean = flop / (sum / reps) * 1e-12;
    /* sampled outputs against a double dot product of the same bf16 values */
    double worst = 0;
    for (int j = 0; j < GEMM_SAMPLES; j++) {
        const int64_t ti = j == 0 ? 0 : j == 1 ? n - 1 : (int64_t)(mix32(3 + (uint64_t)j) % (uint64_t)n);
        const int64_t oi = j == 0 ? 0 : j == 1 ? m - 1 : (int64_t)(mix32(7 + (uint64_t)j) % (uint64_t)m);
        float got;
        if ((e = cudaMemcpy(&got, D + ti * m + oi, 4, cudaMemcpyDeviceToHost)) != cudaSuccess) {
            rc = cu_fail(e, "reading the GEMM output");
            goto done;
        }
        double ref = 0, mag = 0;
        for (int64_t x = 0; x < k; x++) {
            const double a = mm_bf16_to_f32(gemm_elem(1, (uint64_t)(ti * k + x)));
            const double w = mm_bf16_to_f32(gemm_elem(2, (uint64_t)(oi * k + x)));
            ref += a * w;
            mag += fabs(a * w);
        }
        const double err = fabs((double)got - ref) / (mag + 1e-30);
        if (!(err <= worst)) worst = err; /* NaN sticks */
    }
    r->gemm_max_err = isfinite(worst) ? worst : 1e30;
    r->verified = r->verified && worst <= GEMM_TOL;
done:
    ck_gemm_free(g);
    timer_close(&t);
    cudaFree(A);
    cudaFree(W);
    cudaFree(D);
    return rc;
}

int mtok_cuda_limits_run(int device, const mtok_cuda_limits_params *pp, mtok_cuda_limits_result *out) {
    const mtok_cuda_limits_params p = pp ? *pp : (mtok_cuda_limits_params){0};
    memset(out, 0, sizeof *out);
    if (p.copy_bytes < 0 || p.copy_reps < 0 || p.gemm_reps < 0 || p.copy_reps > 100000 || p.gemm_reps > 100000 ||
        !(p.mem_share >= 0 && p.mem_share <= 0.95))
        return mtok_err(MTOK_EUSAGE, "cuda limits: copy bytes and reps must be >= 0 (reps <= 100000), the memory "
                        "share in [0, 0.95]");
    int count = 0; /* the runtime leaves it unwritten when there is no driver */
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count <= 0)
        return mtok_err(MTOK_ERESOURCE, "cuda limits: no usable CUDA device (cudaGetDeviceCount: %s)",
                        e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    if (device < 0 || device >= count)
        return mtok_err(MTOK_EUSAGE, "cuda limits: device %d does not exist (%d device%s)", device, count,
                        count == 1 ? "" : "s");
    if ((e = cudaSetDevice(device)) != cudaSuccess) return cu_fail(e, "cudaSetDevice");
    struct cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) return cu_fail(e, "cudaGetDeviceProperties");
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->device = device, out->cc_major = prop.major, out->cc_minor = prop.minor;
    out->sms = prop.multiProcessorCount, out->l2_bytes = prop.l2CacheSize;
    cudaDriverGetVersion(&out->driver_version);
    cudaRuntimeGetVersion(&out->runtime_version);
    size_t fr = 0, tot = 0;
    if ((e = cudaMemGetInfo(&fr, &tot)) != cudaSuccess) return cu_fail(e, "cudaMemGetInfo");
    out->mem_free = (int64_t)fr, out->mem_total = (int64_t)tot;
    const int64_t budget = (int64_t)((double)fr * (p.mem_share > 0 ? p.mem_share : 0.5));

    void *host = malloc(HOST_PIECE);
    if (!host) return mtok_err(MTOK_ERESOURCE, "cuda limits: out of host memory");
    int rc = measure_copy(&p, budget, host, out);
    if (!rc) rc = measure_gemm(&p, budget, host, out);
    free(host);
    return rc;
}

#endif /* MTOK_HAVE_CUDA */

int mtok_cuda_limits(int device, mtok_cuda_limits_result *out) { return mtok_cuda_limits_run(device, NULL, out); }
