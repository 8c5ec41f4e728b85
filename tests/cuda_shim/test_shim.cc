/* test_shim.cc — the CPU-executed CUDA shim itself: kernels written as for nvcc (this file is compiled
 * like a .cu file, with ck_shim.h force-included) must give the results a GPU gives, and the fake
 * runtime must refuse what CUDA refuses (sync during capture, memory past the device's, bad launch
 * configurations), since the kernel and backend tests rely on both. */
#include "shim_api.h"
#include "tests/check.h"

#include "cuda/ck.h"

#include <mma.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using namespace nvcuda;

/* ---- kernels ---- */

/* Block sum: strided partial sums, a warp-shuffle tree, per-warp partials through static shared
 * memory, the first warp reduces them. blockDim is 2-D to exercise the linear thread id. */
__global__ void __launch_bounds__(1024) k_sum(const float *x, float *out, int n) {
    __shared__ float part[32];
    const int tid = threadIdx.y * blockDim.x + threadIdx.x, nt = blockDim.x * blockDim.y;
    float s = 0.0f;
    for (int i = blockIdx.x * nt + tid; i < n; i += gridDim.x * nt)
        s += x[i];
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (tid % 32 == 0)
        part[tid / 32] = s;
    __syncthreads();
    if (tid < 32) {
        float v = tid < nt / 32 ? part[tid] : 0.0f;
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_down_sync(0xffffffffu, v, o);
        if (tid == 0)
            out[blockIdx.x] = v;
    }
}

/* Per-lane results of every warp function, checked against their definitions on the host. */
__global__ void __launch_bounds__(64) k_warp(int *o) {
    const int t = threadIdx.x, l = t % 32;
    int *r = o + t * 8;
    r[0] = __shfl_sync(0xffffffffu, t * 10, 5);
    r[1] = __shfl_up_sync(0xffffffffu, t, 3);
    r[2] = __shfl_down_sync(0xffffffffu, t, 3, 16);
    r[3] = __shfl_xor_sync(0xffffffffu, t, 9);
    r[4] = (int)__ballot_sync(0xffffffffu, l % 3 == 0);
    r[5] = __any_sync(0xffffffffu, t == 40);
    r[6] = __all_sync(0xffffffffu, l < 31);
    r[7] = __syncthreads_count(t % 4 == 0);
}

/* Dynamic shared memory: reverse each block's slice through it. */
__global__ void __launch_bounds__(128) k_reverse(const float *x, float *y) {
    CK_DYN_SMEM(float, buf);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = buf[blockDim.x - 1 - threadIdx.x];
}

/* One warp: C [16][16] = A [16][16] · B (B stored as Bᵀ, i.e. col_major [k][n] at bt[n*16 + k]). */
__global__ void __launch_bounds__(32) k_wmma(const __nv_bfloat16 *a, const __nv_bfloat16 *bt, float *c) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, bt, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    for (int i = 0; i < fc.num_elements; i++)
        fc.x[i] *= 0.5f;
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_col_major);
}

/* Graph test kernels: parameters read through a pointer, as ck_step is. */
__global__ void __launch_bounds__(64) k_scale(const float *scale, const float *x, float *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = x[i] * scale[0];
}
__global__ void __launch_bounds__(64) k_addone(float *y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += 1.0f;
}

/* The block sum of k_sum's shared-memory stage with its __syncthreads left out: a data race that
 * ThreadSanitizer must report (ctest test_shim_tsan_race). */
__global__ void __launch_bounds__(64) k_race(const float *x, float *out) {
    __shared__ float v[64];
    v[threadIdx.x] = x[threadIdx.x];
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 64; i++)
            s += v[i];
        out[0] = s;
    }
}

/* ---- tests ---- */

static void test_sum(void) {
    const int n = 5000, nb = 3;
    std::vector<float> h(n);
    double ref = 0;
    for (int i = 0; i < n; i++)
        ref += h[i] = (float)((i * 7) % 13) - 6.0f; /* integers: every order of summation is exact */
    float *x, *out;
    CHECK(cudaMalloc((void **)&x, n * 4) == cudaSuccess && cudaMalloc((void **)&out, nb * 4) == cudaSuccess, "alloc");
    cudaMemcpy(x, h.data(), n * 4, cudaMemcpyHostToDevice);
    const dim3 blocks[] = {dim3(32, 4), dim3(256), dim3(32, 32)};
    for (dim3 b : blocks) {
        CHECK(CK_LAUNCH(k_sum, nb, b, 0, 0)(x, out, n) == 0 && ck_launch_status() == 0, "k_sum launch");
        float r[nb];
        cudaMemcpy(r, out, sizeof r, cudaMemcpyDeviceToHost);
        CHECK(r[0] + r[1] + r[2] == (float)ref, "block sum %g + %g + %g != %g (block %ux%u)", r[0], r[1], r[2], ref,
              b.x, b.y);
    }
    cudaFree(x);
    cudaFree(out);
}

static void test_warp(void) {
    int *o;
    cudaMalloc((void **)&o, 64 * 8 * 4);
    CHECK(CK_LAUNCH(k_warp, 1, 64, 0, 0)(o) == 0, "k_warp launch");
    int h[64 * 8];
    cudaMemcpy(h, o, sizeof h, cudaMemcpyDeviceToHost);
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++)
        ballot |= (unsigned)(l % 3 == 0) << l;
    for (int t = 0; t < 64; t++) {
        const int w = t / 32 * 32, l = t % 32, *r = h + t * 8;
        CHECK(r[0] == (w + 5) * 10, "shfl t %d: %d", t, r[0]);
        CHECK(r[1] == (l >= 3 ? t - 3 : t), "shfl_up t %d: %d", t, r[1]);
        CHECK(r[2] == (l % 16 + 3 < 16 ? t + 3 : t), "shfl_down width 16 t %d: %d", t, r[2]);
        CHECK(r[3] == (w + (l ^ 9)), "shfl_xor t %d: %d", t, r[3]);
        CHECK((unsigned)r[4] == ballot, "ballot t %d: %x", t, r[4]);
        CHECK(r[5] == (w == 32), "any t %d: %d", t, r[5]);
        CHECK(r[6] == 0, "all t %d: %d", t, r[6]);
        CHECK(r[7] == 16, "syncthreads_count t %d: %d", t, r[7]);
    }
    cudaFree(o);
}

static void test_dyn_smem(void) {
    const int n = 256;
    float h[n], r[n], *x, *y;
    for (int i = 0; i < n; i++)
        h[i] = (float)i;
    cudaMalloc((void **)&x, sizeof h);
    cudaMalloc((void **)&y, sizeof h);
    cudaMemcpy(x, h, sizeof h, cudaMemcpyHostToDevice);
    CHECK(CK_LAUNCH(k_reverse, 2, 128, 128 * 4, 0)(x, y) == 0, "k_reverse launch");
    cudaMemcpy(r, y, sizeof r, cudaMemcpyDeviceToHost);
    for (int i = 0; i < n; i++)
        CHECK(r[i] == h[i / 128 * 128 + 127 - i % 128], "reverse %d: %g", i, r[i]);
    /* past the 48 KiB default a launch needs the attribute, and the opt-in maximum bounds it */
    CHECK(CK_LAUNCH(k_reverse, 2, 128, 64 << 10, 0)(x, y) == cudaErrorInvalidValue, "64 KiB without the attribute");
    CHECK(ck_launch_status() == cudaErrorInvalidValue, "the launch error is left for cudaGetLastError");
    CHECK(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears");
    CHECK(cudaFuncSetAttribute((const void *)k_reverse, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10) ==
              cudaSuccess,
          "set max dynamic smem");
    CHECK(CK_LAUNCH(k_reverse, 2, 128, 64 << 10, 0)(x, y) == 0, "64 KiB with the attribute");
    CHECK(cudaFuncSetAttribute((const void *)k_reverse, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 << 10) ==
              cudaErrorInvalidValue,
          "past the opt-in maximum");
    cudaGetLastError();
    CHECK(CK_LAUNCH(k_reverse, 1, 2048, 0, 0)(x, y) == cudaErrorInvalidConfiguration, "2048 threads");
    CHECK(CK_LAUNCH(k_reverse, 0, 128, 0, 0)(x, y) == cudaErrorInvalidConfiguration, "empty grid");
    cudaGetLastError();
    cudaFree(x);
    cudaFree(y);
}

static void test_wmma(void) {
    __nv_bfloat16 a[256], bt[256];
    float ref[256], c[256];
    for (int i = 0; i < 256; i++) {
        a[i] = __float2bfloat16_rn((float)((i * 5) % 11 - 5) * 0.125f);
        bt[i] = __float2bfloat16_rn((float)((i * 3) % 7 - 3) * 1.5f);
    }
    for (int m = 0; m < 16; m++)
        for (int nn = 0; nn < 16; nn++) {
            double s = 0;
            for (int k = 0; k < 16; k++)
                s += (double)__bfloat162float(a[m * 16 + k]) * __bfloat162float(bt[nn * 16 + k]);
            ref[nn * 16 + m] = (float)(s * 0.5); /* col_major store */
        }
    __nv_bfloat16 *da, *db;
    float *dc;
    cudaMalloc((void **)&da, sizeof a);
    cudaMalloc((void **)&db, sizeof bt);
    cudaMalloc((void **)&dc, sizeof c);
    cudaMemcpy(da, a, sizeof a, cudaMemcpyHostToDevice);
    cudaMemcpy(db, bt, sizeof bt, cudaMemcpyHostToDevice);
    CHECK(CK_LAUNCH(k_wmma, 1, 32, 0, 0)(da, db, dc) == 0, "k_wmma launch");
    cudaMemcpy(c, dc, sizeof c, cudaMemcpyDeviceToHost);
    for (int i = 0; i < 256; i++) /* small multiples of 1/16: exact in fp32 */
        CHECK(c[i] == ref[i], "wmma element %d: %g != %g", i, c[i], ref[i]);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
}

static void test_graph(void) {
    const int n = 100;
    float *scale, *x, *y, *stage, hx[n], hy[n];
    cudaMalloc((void **)&scale, 4);
    cudaMalloc((void **)&x, n * 4);
    cudaMalloc((void **)&y, n * 4);
    cudaMallocHost((void **)&stage, 4);
    for (int i = 0; i < n; i++)
        hx[i] = (float)i;
    cudaMemcpy(x, hx, sizeof hx, cudaMemcpyHostToDevice);
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    ck_gemm *gm;
    CHECK(ck_gemm_create(&gm, 1 << 20) == 0, "gemm create: %s", ck_gemm_error());
    /* a GEMM in the capture too: gd [1][2] = ga [1][8] · gw [2][8]ᵀ + gd (accumulate: grows per replay) */
    uint16_t *ga, *gw, ones[16];
    for (uint16_t &o : ones)
        o = 0x3f80; /* bf16 1.0 */
    float *gd, gd_h[2] = {0, 0};
    cudaMalloc((void **)&ga, 16);
    cudaMalloc((void **)&gw, 32);
    cudaMalloc((void **)&gd, 8);
    cudaMemcpy(ga, ones, 16, cudaMemcpyHostToDevice);
    cudaMemcpy(gw, ones, 32, cudaMemcpyHostToDevice);
    cudaMemcpy(gd, gd_h, 8, cudaMemcpyHostToDevice);

    ck_shim_reset_counters();
    *stage = 2.0f;
    cudaStreamCaptureStatus st;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin capture");
    CHECK(cudaStreamIsCapturing(s, &st) == cudaSuccess && st == cudaStreamCaptureStatusActive, "capturing");
    cudaMemcpyAsync(scale, stage, 4, cudaMemcpyHostToDevice, s);
    CHECK(CK_LAUNCH(k_scale, 2, 64, 0, s)(scale, x, y, n) == 0, "captured launch");
    CHECK(CK_LAUNCH(k_addone, 2, 64, 0, s)(y, n) == 0, "captured launch 2");
    CHECK(ck_gemm_bf16(gm, s, gd, ga, gw, nullptr, 1, 2, 8, 1) == 0, "captured GEMM: %s", ck_gemm_error());
    cudaGraph_t g;
    CHECK(cudaStreamEndCapture(s, &g) == cudaSuccess && g, "end capture");
    CHECK(ck_shim_recorded() == 3 && ck_shim_launches() == 0, "capture recorded %lld, ran %lld", ck_shim_recorded(),
          ck_shim_launches());
    cudaMemcpy(gd_h, gd, 8, cudaMemcpyDeviceToHost);
    CHECK(gd_h[0] == 0 && gd_h[1] == 0, "the captured GEMM ran at capture: %g %g", gd_h[0], gd_h[1]);
    cudaGraphExec_t ge;
    CHECK(cudaGraphInstantiate(&ge, g, 0) == cudaSuccess, "instantiate");
    for (float sc : {3.0f, -0.5f}) {
        *stage = sc; /* the captured copy reads the pinned stage at replay time */
        CHECK(cudaGraphLaunch(ge, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess, "graph launch");
        cudaMemcpy(hy, y, sizeof hy, cudaMemcpyDeviceToHost);
        for (int i = 0; i < n; i++)
            CHECK(hy[i] == hx[i] * sc + 1.0f, "replay scale %g: y[%d] = %g", sc, i, hy[i]);
    }
    cudaMemcpy(gd_h, gd, 8, cudaMemcpyDeviceToHost);
    CHECK(gd_h[0] == 16 && gd_h[1] == 16, "two replays of the accumulating GEMM: %g %g", gd_h[0], gd_h[1]);
    CHECK(ck_shim_graph_launches() == 2 && ck_shim_replayed() == 6 && ck_shim_launches() == 0,
          "counters: graphs %lld replayed %lld launches %lld", ck_shim_graph_launches(), ck_shim_replayed(),
          ck_shim_launches());
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);

    /* capture-unsafe calls are refused and invalidate the capture */
    void *p = nullptr;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin 2");
    CHECK(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported, "sync of a capturing stream");
    CHECK(CK_LAUNCH(k_addone, 2, 64, 0, s)(y, n) == cudaErrorStreamCaptureInvalidated, "launch into a dead capture");
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated && !g, "end of an invalidated capture");
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin 3");
    CHECK(cudaMalloc(&p, 64) == cudaErrorStreamCaptureUnsupported && !p, "cudaMalloc during a global capture");
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated, "end 3");
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin 4");
    CHECK(cudaMemcpy(hy, y, 4, cudaMemcpyDeviceToHost) == cudaErrorStreamCaptureUnsupported, "cudaMemcpy in capture");
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated, "end 4");
    ck_gemm *gm2 = nullptr;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin 5");
    CHECK(ck_gemm_create(&gm2, 1 << 20) == cudaErrorStreamCaptureUnsupported && !gm2, "GEMM workspace in capture");
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated, "end 5");
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess, "begin relaxed");
    CHECK(cudaMalloc(&p, 64) == cudaSuccess && p, "cudaMalloc during a relaxed capture");
    CHECK(cudaStreamEndCapture(s, &g) == cudaSuccess, "end relaxed");
    cudaGraphDestroy(g);
    cudaFree(p);
    CHECK(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal) == cudaErrorStreamCaptureUnsupported,
          "no capture of the legacy stream");
    cudaGetLastError();
    ck_gemm_free(gm);
    cudaFree(ga);
    cudaFree(gw);
    cudaFree(gd);
    cudaStreamDestroy(s);
    cudaFree(scale);
    cudaFree(x);
    cudaFree(y);
    cudaFreeHost(stage);
}

static uint16_t bf16_bits(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    uint16_t u;
    memcpy(&u, &b, 2);
    return u;
}

static void test_gemm(void) {
    const int n = 3, M = 5, K = 7;
    uint16_t a[n * K], w[M * K];
    float bias[M], d0[n * M], d[n * M];
    for (int i = 0; i < n * K; i++)
        a[i] = bf16_bits((float)(i % 5) - 2.0f);
    for (int i = 0; i < M * K; i++)
        w[i] = bf16_bits((float)(i % 7) * 0.25f);
    for (int m = 0; m < M; m++)
        bias[m] = (float)m;
    for (int i = 0; i < n * M; i++)
        d0[i] = 100.0f;
    uint16_t *da, *dw;
    float *db, *dd;
    cudaMalloc((void **)&da, sizeof a);
    cudaMalloc((void **)&dw, sizeof w);
    cudaMalloc((void **)&db, sizeof bias);
    cudaMalloc((void **)&dd, sizeof d);
    cudaMemcpy(da, a, sizeof a, cudaMemcpyHostToDevice);
    cudaMemcpy(dw, w, sizeof w, cudaMemcpyHostToDevice);
    cudaMemcpy(db, bias, sizeof bias, cudaMemcpyHostToDevice);
    ck_gemm *g;
    CHECK(ck_gemm_create(&g, 0) == 0, "gemm create");
    for (int accumulate = 0; accumulate < 2; accumulate++) {
        cudaMemcpy(dd, d0, sizeof d0, cudaMemcpyHostToDevice);
        CHECK(ck_gemm_bf16(g, nullptr, dd, da, dw, db, n, M, K, accumulate) == 0, "gemm: %s", ck_gemm_error());
        cudaMemcpy(d, dd, sizeof d, cudaMemcpyDeviceToHost);
        for (int t = 0; t < n; t++)
            for (int m = 0; m < M; m++) {
                float s = 0; /* small multiples of 1/4: exact */
                for (int k = 0; k < K; k++)
                    s += ((float)((t * K + k) % 5) - 2.0f) * ((float)((m * K + k) % 7) * 0.25f);
                float want = s + (accumulate ? 100.0f : 0.0f) + (float)m;
                CHECK(d[t * M + m] == want, "gemm acc %d [%d][%d]: %g != %g", accumulate, t, m, d[t * M + m], want);
            }
    }
    CHECK(ck_gemm_bf16(g, nullptr, d, da, dw, db, n, M, K, 0) == cudaErrorInvalidValue, "host D refused");
    CHECK(ck_gemm_bf16(g, nullptr, dd, da, dw, db, n, M + 1, K, 0) == cudaErrorInvalidValue, "short buffers refused");
    cudaGetLastError();
    ck_gemm_free(g);
    cudaFree(da);
    cudaFree(dw);
    cudaFree(db);
    cudaFree(dd);
}

static void test_memory(void) {
    CHECK(ck_shim_device_bytes_in_use() == 0, "leak from earlier tests: %zu bytes", ck_shim_device_bytes_in_use());
    setenv("MTOK_SHIM_MEM_MB", "64", 1);
    size_t fr, tot;
    CHECK(cudaMemGetInfo(&fr, &tot) == cudaSuccess && tot == (size_t)64 << 20 && fr == tot, "meminfo");
    void *p = nullptr, *q = nullptr;
    CHECK(cudaMalloc(&p, (size_t)48 << 20) == cudaSuccess, "48 of 64 MiB");
    CHECK(cudaMalloc(&q, (size_t)32 << 20) == cudaErrorMemoryAllocation && !q, "32 more MiB must fail");
    CHECK(cudaGetLastError() == cudaErrorMemoryAllocation, "the failure is the last error");
    CHECK(cudaMemGetInfo(&fr, &tot) == cudaSuccess && fr == (size_t)16 << 20, "free after 48 MiB: %zu", fr);
    char host[16];
    CHECK(cudaMemcpy(host, host + 8, 8, cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "H2D to host memory");
    CHECK(cudaMemcpy(p, host, 16, cudaMemcpyHostToDevice) == cudaSuccess, "H2D");
    CHECK(cudaMemcpy((char *)p + ((48 << 20) - 8), host, 16, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "a copy past the allocation's end");
    CHECK(cudaMemcpy((char *)p + ((48 << 20) - 8), host, 16, cudaMemcpyDefault) == cudaErrorInvalidValue,
          "a cudaMemcpyDefault copy past the allocation's end");
    CHECK(cudaMemcpy(host, p, 16, cudaMemcpyDefault) == cudaSuccess, "cudaMemcpyDefault D2H");
    CHECK(cudaFree(host) == cudaErrorInvalidValue, "cudaFree of host memory");
    CHECK(cudaFree(p) == cudaSuccess && ck_shim_device_bytes_in_use() == 0, "free");
    cudaGetLastError();
    unsetenv("MTOK_SHIM_MEM_MB");
    int count = -1;
    setenv("MTOK_SHIM_DEVICES", "0", 1);
    CHECK(cudaGetDeviceCount(&count) == cudaErrorNoDevice && count == -1, "no device: count %d", count);
    unsetenv("MTOK_SHIM_DEVICES");
    cudaGetLastError();
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceCount(&count) == cudaSuccess && count == 1, "one device");
    CHECK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess && !strcmp(prop.name, "mtok CPU shim") && prop.major == 9,
          "properties");
    CHECK(cudaSetDevice(1) == cudaErrorInvalidDevice, "device 1");
    cudaGetLastError();
}

/* Lane 0 waits for its warp, which waits at __syncthreads for lane 0: neither barrier can complete.
 * (A thread that returns instead would not block anyone: exited threads count as arrived.) */
__global__ void __launch_bounds__(64) k_divergent(float *out) {
    if (threadIdx.x == 0)
        __syncwarp();
    else
        __syncthreads();
    out[threadIdx.x] = 1.0f;
}

/* The engine must abort with its deadlock report rather than hang: run the kernel in a child. */
static void test_deadlock(void) {
#if defined(__SANITIZE_THREAD__)
    /* TSan's fiber contexts do not survive fork(): the plain build (test_shim) runs this check */
    printf("test_shim: deadlock check skipped under ThreadSanitizer\n");
    return;
#endif
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        alarm(60); /* a hang ends in SIGALRM, which the parent reports */
        float *out;
        cudaMalloc((void **)&out, 64 * 4);
        CK_LAUNCH(k_divergent, 1, 64, 0, 0)(out);
        _exit(0);
    }
    close(fds[1]);
    char msg[512] = "";
    size_t len = 0;
    ssize_t r;
    while ((r = read(fds[0], msg + len, sizeof msg - 1 - len)) > 0)
        len += (size_t)r;
    msg[len] = 0;
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(msg, "ck_shim: deadlock in block (0,0,0)"),
          "a divergent __syncthreads: status 0x%x, message \"%s\"", st, msg);
}

static int run_race(void) {
    float *x, *out;
    cudaMalloc((void **)&x, 64 * 4);
    cudaMalloc((void **)&out, 4);
    cudaMemset(x, 0, 64 * 4);
    int e = CK_LAUNCH(k_race, 1, 64, 0, 0)(x, out);
    cudaFree(x);
    cudaFree(out);
    printf("test_shim --race: launched (%d); a ThreadSanitizer build must have reported a data race\n", e);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--race"))
        return run_race();
    test_sum();
    test_warp();
    test_dyn_smem();
    test_wmma();
    test_graph();
    test_gemm();
    test_memory();
    test_deadlock();
    if (!check_failures)
        printf("test_shim: all passed\n");
    return check_failures != 0;
}
