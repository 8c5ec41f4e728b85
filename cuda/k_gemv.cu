/* k_gemv.cu — the decode GEMV of cuda/ck.h: y = a·Wᵀ (+ bias) for n <= CK_GEMV_MAX_N tokens, W bf16
 * [rows][K] holding up to three outputs back to back (Q|K|V, gate|up).
 *
 * Decode is bound by the bytes of W, so the kernel reads W exactly once, in 16-byte loads, for all n
 * tokens together, and keeps many of those loads in flight:
 *   - a warp owns kR = 4 consecutive rows; per step each lane loads 16 bytes (8 bf16) of each of them,
 *     two steps at a time, so a lane has 8 independent 16-byte loads in flight and a warp step reads
 *     4 x 512 contiguous bytes. A block is 4 warps (16 rows): small blocks spread a 4096-row matrix
 *     over 256 blocks, so no SM is left with a large share when the grid does not divide evenly;
 *   - the activations are read straight from global memory: every warp of an SM walks the columns in
 *     the same order at about the same pace, so the few KB of a it needs at a time stay in L1 and one
 *     L2 read of a feeds every warp of the SM. (Tiles of a in shared memory would need a __syncthreads
 *     per tile, during which a block has no W load in flight; this path has no barrier at all);
 *   - accumulators are fp32 registers [kR][NT]: NT (the token count) is a compile-time constant per
 *     kernel, one kernel per n, picked by the launcher;
 *   - the sum of an output element is fixed: lane-sequential over the columns it owns, in column
 *     order, then a butterfly across the 32 lanes. No atomics, no split of K across blocks: a rerun
 *     gives the same bits.
 * The scalar path (K not a multiple of 8, or W or a not 16-byte aligned: the tests' odd shapes) has
 * the same structure with one bf16 per lane per step.
 *
 * Segments: row r of W belongs to the first segment whose cumulative end exceeds r; its result goes
 * to seg.y[t*seg.ld + r - start] + seg.bias[r - start] (ck.h). The seg array is read by the launcher
 * on the host and passed by value in the kernel's parameters (so it is captured with the launch). */
#include "ck_rows.cuh"

/* full unrolling keeps acc[kR][NT] in registers under nvcc; the host compiler of the shim has its own
 * heuristics and warns about the CUDA spelling */
#ifdef MTOK_CUDA_SHIM
#define GEMV_UNROLL
#else
#define GEMV_UNROLL _Pragma("unroll")
#endif

namespace {

constexpr int kWarps = 4, kThreads = kWarps * 32;
constexpr int kR = 4;                      /* rows of W per warp */
constexpr int kRowsPerBlock = kWarps * kR; /* 16 */
constexpr int kBad = (int)cudaErrorInvalidValue;

struct gemv_args {
    float *y[3];
    const float *bias[3];
    int64_t ld[3];
    int64_t end[3]; /* cumulative row ends of the segments; unused ones = rows */
    int64_t rows;   /* rows of W */
    const float *a;
    int64_t lda;
    const uint16_t *W;
    int64_t K;
    int vec; /* 16-byte loads: K % 8 == 0, W and a 16-byte aligned, lda % 4 == 0 */
};

/* acc[r][t] += the 8 products of W row r's 8 columns w (bf16, as 4 words) with token t's a at x */
template <int NT>
__device__ __forceinline__ void fma8(float (&acc)[kR][NT], const uint4 (&w)[kR], const float *a, int64_t lda) {
    float wf[kR][8];
GEMV_UNROLL
    for (int r = 0; r < kR; r++) {
        wf[r][0] = mm_bf16_lo(w[r].x), wf[r][1] = mm_bf16_hi(w[r].x);
        wf[r][2] = mm_bf16_lo(w[r].y), wf[r][3] = mm_bf16_hi(w[r].y);
        wf[r][4] = mm_bf16_lo(w[r].z), wf[r][5] = mm_bf16_hi(w[r].z);
        wf[r][6] = mm_bf16_lo(w[r].w), wf[r][7] = mm_bf16_hi(w[r].w);
    }
GEMV_UNROLL
    for (int t = 0; t < NT; t++) {
        const float4 x0 = __ldg(reinterpret_cast<const float4 *>(a + t * lda));
        const float4 x1 = __ldg(reinterpret_cast<const float4 *>(a + t * lda) + 1);
        const float x[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
GEMV_UNROLL
        for (int r = 0; r < kR; r++)
GEMV_UNROLL
            for (int e = 0; e < 8; e++) acc[r][t] += x[e] * wf[r][e];
    }
}

template <int NT> __device__ __forceinline__ void gemv_body(const gemv_args &p) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row0 = ((int64_t)blockIdx.x * kWarps + warp) * kR, K = p.K;
    if (row0 >= p.rows) return; /* the whole warp: no shuffle below misses a lane */
    float acc[kR][NT];
GEMV_UNROLL
    for (int r = 0; r < kR; r++)
GEMV_UNROLL
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
    /* rows past the end (last warp) read row0's row instead: in bounds, and their sums are dropped */
    const uint16_t *wr[kR];
GEMV_UNROLL
    for (int r = 0; r < kR; r++) wr[r] = p.W + (row0 + r < p.rows ? row0 + r : row0) * K;

    if (p.vec) {
        int64_t c = lane * 8;
        /* two steps per iteration: 8 loads issued before the first is used */
        for (; c + 256 < K; c += 512) {
            uint4 w0[kR], w1[kR];
GEMV_UNROLL
            for (int r = 0; r < kR; r++) {
                w0[r] = __ldg(reinterpret_cast<const uint4 *>(wr[r] + c));
                w1[r] = __ldg(reinterpret_cast<const uint4 *>(wr[r] + c + 256));
            }
            fma8<NT>(acc, w0, p.a + c, p.lda);
            fma8<NT>(acc, w1, p.a + c + 256, p.lda);
        }
        if (c < K) {
            uint4 w0[kR];
GEMV_UNROLL
            for (int r = 0; r < kR; r++) w0[r] = __ldg(reinterpret_cast<const uint4 *>(wr[r] + c));
            fma8<NT>(acc, w0, p.a + c, p.lda);
        }
    } else {
        for (int64_t c = lane; c < K; c += 32) {
            float wf[kR];
GEMV_UNROLL
            for (int r = 0; r < kR; r++) wf[r] = mm_bf16_to_f32(wr[r][c]);
GEMV_UNROLL
            for (int t = 0; t < NT; t++) {
                const float x = p.a[t * p.lda + c];
GEMV_UNROLL
                for (int r = 0; r < kR; r++) acc[r][t] += x * wf[r];
            }
        }
    }

    /* every lane gets every sum; lane r*NT + t (< 32 = kR * CK_GEMV_MAX_N) writes element (r, t) */
GEMV_UNROLL
    for (int r = 0; r < kR; r++)
GEMV_UNROLL
        for (int t = 0; t < NT; t++) {
            const float v = ck_warp_sum(acc[r][t]);
            const int64_t row = row0 + r;
            if (lane == r * NT + t && row < p.rows) {
                const int sg = row < p.end[0] ? 0 : row < p.end[1] ? 1 : 2;
                const int64_t j = row - (sg ? p.end[sg - 1] : 0);
                p.y[sg][t * p.ld[sg] + j] = p.bias[sg] ? v + p.bias[sg][j] : v;
            }
        }
}

static_assert(kR * CK_GEMV_MAX_N <= 32, "one lane per output element of a warp");

/* one kernel per token count (a template __global__ fails nvcc 13.0's missing-launch-bounds check);
 * up to 4 tokens 4 blocks per SM fit (<= 128 registers), past that the [4][n] accumulators and the 8
 * loads in flight take up to ~216 registers, so 2 blocks per SM are asked for instead */
#define CK_GEMV_KERNEL(NT, MIN_BLOCKS)                                                                          \
    __global__ void __launch_bounds__(kThreads, MIN_BLOCKS) gemv_k##NT(const gemv_args p) { gemv_body<NT>(p); }
CK_GEMV_KERNEL(1, 4)
CK_GEMV_KERNEL(2, 4)
CK_GEMV_KERNEL(3, 4)
CK_GEMV_KERNEL(4, 4)
CK_GEMV_KERNEL(5, 2)
CK_GEMV_KERNEL(6, 2)
CK_GEMV_KERNEL(7, 2)
CK_GEMV_KERNEL(8, 2)
#undef CK_GEMV_KERNEL
static_assert(CK_GEMV_MAX_N == 8, "one gemv_k kernel per n <= CK_GEMV_MAX_N");

} // namespace

extern "C" int ck_gemv(ck_stream s, const ck_gemv_seg *seg, int nseg, const float *a, int64_t lda, const uint16_t *W,
                       int64_t n, int64_t K) {
    if (!seg || nseg < 1 || nseg > 3 || n < 1 || n > CK_GEMV_MAX_N || K < 1 || lda < K) return kBad;
    gemv_args p = {};
    int64_t rows = 0;
    for (int i = 0; i < nseg; i++) {
        if (seg[i].rows < 0 || (seg[i].rows > 0 && (!seg[i].y || (n > 1 && seg[i].ld < seg[i].rows)))) return kBad;
        p.y[i] = seg[i].y, p.bias[i] = seg[i].bias, p.ld[i] = seg[i].ld;
        rows += seg[i].rows;
        p.end[i] = rows;
    }
    for (int i = nseg; i < 3; i++) p.y[i] = p.y[0], p.ld[i] = 0, p.end[i] = rows;
    const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    if (blocks == 0) return 0;
    if (blocks > 0x7fffffffLL) return kBad;
    p.rows = rows, p.a = a, p.lda = lda, p.W = W, p.K = K;
    p.vec = K % 8 == 0 && lda % 4 == 0 && ((uintptr_t)W | (uintptr_t)a) % 16 == 0;
    const unsigned g = (unsigned)blocks;
    switch (n) {
    case 1: CK_LAUNCH(gemv_k1, g, kThreads, 0, s)(p); break;
    case 2: CK_LAUNCH(gemv_k2, g, kThreads, 0, s)(p); break;
    case 3: CK_LAUNCH(gemv_k3, g, kThreads, 0, s)(p); break;
    case 4: CK_LAUNCH(gemv_k4, g, kThreads, 0, s)(p); break;
    case 5: CK_LAUNCH(gemv_k5, g, kThreads, 0, s)(p); break;
    case 6: CK_LAUNCH(gemv_k6, g, kThreads, 0, s)(p); break;
    case 7: CK_LAUNCH(gemv_k7, g, kThreads, 0, s)(p); break;
    default: CK_LAUNCH(gemv_k8, g, kThreads, 0, s)(p); break;
    }
    return ck_launch_status();
}
