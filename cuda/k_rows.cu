/* k_rows.cu — the elementwise and row kernels of cuda/ck.h: embedding, RMSNorm, SwiGLU, residual add,
 * attention normalisation, bf16 conversion and the non-finite check.
 *
 * The arithmetic of each element is a helper of kernels/mtok_math.h, the one the CPU kernels use, so
 * the two backends differ only where nvcc's expf/FMA contraction or a summation order differ.
 * Sums are fixed-order (per-thread strided partials, a butterfly inside each warp, the warps' partials
 * added by warp 0 in warp order): a rerun gives the same bits, whatever the timing.
 *
 * Vector paths: the 16-byte (float4 / 8 x bf16) loads need aligned pointers and lengths that are a
 * multiple of the vector; the launcher tests that once and passes the answer (V), a branch that is
 * the same for every thread, so no kernel tests alignment per element. (V is an argument, not a
 * template parameter: nvcc 13.0's missing-launch-bounds check rejects every templated __global__.)
 * Model shapes (E = 4096, F = 13696) always take them; the tests' odd sizes take the scalar paths. */
#include "ck_rows.cuh"

#ifndef MTOK_CUDA_SHIM
static_assert((int)cudaErrorInvalidValue == 1, "ck launchers return 1 for bad arguments");
#endif

namespace {

constexpr int kThreads = 256;     /* elementwise kernels */
constexpr int kNormThreads = 512; /* one RMSNorm row: 4096 elements = 2 float4 per thread */

/* ---- embedding: one block per token row ---- */
__global__ void __launch_bounds__(kThreads) embed_k(const bool V, float *x, const uint16_t *table,
                                                    const ck_step *step, const int32_t *ids, int64_t E) {
    const int64_t t = blockIdx.x;
    if (t >= step->n) return;
    const uint16_t *row = table + (int64_t)ids[t] * E;
    float *y = x + t * E;
    if (V) {
        for (int64_t i = threadIdx.x; i < E / 8; i += blockDim.x) {
            const uint4 w = reinterpret_cast<const uint4 *>(row)[i];
            ck_st4(y, 2 * i, make_float4(mm_bf16_lo(w.x), mm_bf16_hi(w.x), mm_bf16_lo(w.y), mm_bf16_hi(w.y)));
            ck_st4(y, 2 * i + 1, make_float4(mm_bf16_lo(w.z), mm_bf16_hi(w.z), mm_bf16_lo(w.w), mm_bf16_hi(w.w)));
        }
    } else {
        for (int64_t i = threadIdx.x; i < E; i += blockDim.x) y[i] = mm_bf16_to_f32(row[i]);
    }
}

/* ---- RMSNorm: one block per row; y may alias x (each thread rewrites only what it read) ---- */
__global__ void __launch_bounds__(kNormThreads) rmsnorm_k(const bool V, float *y, const float *x, const uint16_t *w,
                                                         int64_t E, float eps) {
    __shared__ float sh[33];
    const int64_t t = blockIdx.x;
    const float *xr = x + t * E;
    float *yr = y + t * E;
    float ss = 0.0f;
    if (V) {
        for (int64_t i = threadIdx.x; i < E / 4; i += blockDim.x) {
            const float4 v = ck_ld4(xr, i);
            ss += v.x * v.x, ss += v.y * v.y, ss += v.z * v.z, ss += v.w * v.w;
        }
    } else {
        for (int64_t i = threadIdx.x; i < E; i += blockDim.x) ss += xr[i] * xr[i];
    }
    const float r = mm_rms_scale((double)ck_block_sum(ss, sh), E, eps);
    /* y = w * (x * r): the CPU's order (kernels/cpu_ref.c mk_rmsnorm_ref) */
    if (V) {
        for (int64_t i = threadIdx.x; i < E / 4; i += blockDim.x) {
            const float4 v = ck_ld4(xr, i);
            const uint2 wb = reinterpret_cast<const uint2 *>(w)[i];
            ck_st4(yr, i, make_float4(mm_bf16_lo(wb.x) * (v.x * r), mm_bf16_hi(wb.x) * (v.y * r),
                                   mm_bf16_lo(wb.y) * (v.z * r), mm_bf16_hi(wb.y) * (v.w * r)));
        }
    } else {
        for (int64_t i = threadIdx.x; i < E; i += blockDim.x) yr[i] = mm_bf16_to_f32(w[i]) * (xr[i] * r);
    }
}

/* ---- elementwise: thread i takes float4 i (V) or element i ---- */
__global__ void __launch_bounds__(kThreads) swiglu_k(const bool V, float *gate, const float *up, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (V) {
        if (i >= n / 4) return;
        const float4 g = ck_ld4(gate, i), u = ck_ld4(up, i);
        ck_st4(gate, i, make_float4(mm_silu(g.x) * u.x, mm_silu(g.y) * u.y, mm_silu(g.z) * u.z, mm_silu(g.w) * u.w));
    } else if (i < n) {
        gate[i] = mm_silu(gate[i]) * up[i];
    }
}

__global__ void __launch_bounds__(kThreads) add_k(const bool V, float *x, const float *a, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (V) {
        if (i >= n / 4) return;
        const float4 u = ck_ld4(x, i), v = ck_ld4(a, i);
        ck_st4(x, i, make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w));
    } else if (i < n) {
        x[i] += a[i];
    }
}

/* o *= 1/d per row, as core/backend_cpu.c does (a multiply by the rounded reciprocal, not a division) */
__global__ void __launch_bounds__(kThreads) attn_normalize_k(float *o, const float *d, int64_t rows, int64_t D) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * D) return;
    o[i] *= mm_attn_inv(d[i / D]);
}

/* V: 8 elements per thread, two float4 in, one 16-byte store out */
__global__ void __launch_bounds__(kThreads) to_bf16_k(const bool V, uint16_t *dst, const float *src, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (V) {
        if (i >= n / 8) return;
        const float4 a = ck_ld4(src, 2 * i), b = ck_ld4(src, 2 * i + 1);
        reinterpret_cast<uint4 *>(dst)[i] =
            make_uint4(mm_bf16x2(a.x, a.y), mm_bf16x2(a.z, a.w), mm_bf16x2(b.x, b.y), mm_bf16x2(b.z, b.w));
    } else if (i < n) {
        dst[i] = mm_f32_to_bf16(src[i]);
    }
}

/* ---- non-finite check ----
 * Every element that is NaN or Inf has the key (seq << 41) | (index << 1) | is_inf; the record keeps
 * the smallest (ck.h): the first bad element of the first check that fired, NaN or Inf, as the CPU
 * backend's scan reports it. Each thread keeps the smallest of its own elements, each warp the smallest of
 * its lanes, and only a warp that found one does an atomic: a clean tensor costs one read. The
 * minimum does not depend on the order of the atomics, so the record is deterministic. */
constexpr unsigned long long kNoKey = ~0ull;

__device__ __forceinline__ unsigned long long bad_key(float v, uint64_t base, int64_t i) {
    const uint32_t a = mm_f32_bits(v) & 0x7fffffffu;
    if (a < 0x7f800000u) return kNoKey;
    return base | (uint64_t)i << 1 | (uint64_t)(a == 0x7f800000u);
}

__global__ void __launch_bounds__(kThreads) check_k(const bool V, const float *x, int64_t n, unsigned long long *rec,
                                                    uint32_t seq) {
    const uint64_t base = (uint64_t)seq << 41;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    unsigned long long k = kNoKey;
    if (V) {
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n / 4; i += stride) {
            const float4 v = ck_ld4(x, i);
            const unsigned long long k4 = min(min(bad_key(v.x, base, 4 * i), bad_key(v.y, base, 4 * i + 1)),
                                              min(bad_key(v.z, base, 4 * i + 2), bad_key(v.w, base, 4 * i + 3)));
            k = min(k, k4);
        }
    } else {
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
            k = min(k, bad_key(x[i], base, i));
    }
    for (int o = 16; o > 0; o >>= 1) k = min(k, __shfl_xor_sync(0xffffffffu, k, o));
    if ((threadIdx.x & 31) == 0 && k != kNoKey) atomicMin(rec, k);
}

} // namespace

extern "C" {

int ck_embed(ck_stream s, float *x, const uint16_t *table, const ck_step *step, const int32_t *ids, int64_t n_max,
             int64_t E) {
    if (n_max < 0 || E < 0 || n_max > 0x7fffffffLL) return ck_bad;
    if (n_max == 0 || E == 0) return 0;
    const bool v = ck_aligned(x, 16) && ck_aligned(table, 16) && E % 8 == 0;
    CK_LAUNCH(embed_k, (unsigned)n_max, kThreads, 0, s)(v, x, table, step, ids, E);
    return ck_launch_status();
}

int ck_rmsnorm(ck_stream s, float *y, const float *x, const uint16_t *w, int64_t n, int64_t E, float eps) {
    if (n < 0 || E < 0 || n > 0x7fffffffLL) return ck_bad;
    if (n == 0) return 0;
    const bool v = ck_aligned(y, 16) && ck_aligned(x, 16) && ck_aligned(w, 8) && E % 4 == 0;
    CK_LAUNCH(rmsnorm_k, (unsigned)n, kNormThreads, 0, s)(v, y, x, w, E, eps);
    return ck_launch_status();
}

int ck_swiglu(ck_stream s, float *gate, const float *up, int64_t n) {
    if (n < 0) return ck_bad;
    if (n == 0) return 0;
    const bool v = ck_aligned(gate, 16) && ck_aligned(up, 16) && n % 4 == 0;
    const int64_t b = ck_blocks_for(v ? n / 4 : n, kThreads);
    if (!b) return ck_bad;
    CK_LAUNCH(swiglu_k, (unsigned)b, kThreads, 0, s)(v, gate, up, n);
    return ck_launch_status();
}

int ck_add(ck_stream s, float *x, const float *a, int64_t n) {
    if (n < 0) return ck_bad;
    if (n == 0) return 0;
    const bool v = ck_aligned(x, 16) && ck_aligned(a, 16) && n % 4 == 0;
    const int64_t b = ck_blocks_for(v ? n / 4 : n, kThreads);
    if (!b) return ck_bad;
    CK_LAUNCH(add_k, (unsigned)b, kThreads, 0, s)(v, x, a, n);
    return ck_launch_status();
}

int ck_attn_normalize(ck_stream s, float *o, const float *d, int64_t rows, int64_t D) {
    if (rows < 0 || D < 0 || (D > 0 && rows > INT64_MAX / D)) return ck_bad;
    if (rows == 0 || D == 0) return 0;
    const int64_t b = ck_blocks_for(rows * D, kThreads);
    if (!b) return ck_bad;
    CK_LAUNCH(attn_normalize_k, (unsigned)b, kThreads, 0, s)(o, d, rows, D);
    return ck_launch_status();
}

int ck_to_bf16(ck_stream s, uint16_t *dst, const float *src, int64_t n) {
    if (n < 0) return ck_bad;
    if (n == 0) return 0;
    const bool v = ck_aligned(dst, 16) && ck_aligned(src, 16) && n % 8 == 0;
    const int64_t b = ck_blocks_for(v ? n / 8 : n, kThreads);
    if (!b) return ck_bad;
    CK_LAUNCH(to_bf16_k, (unsigned)b, kThreads, 0, s)(v, dst, src, n);
    return ck_launch_status();
}

int ck_check(ck_stream s, const float *x, int64_t rows, int64_t width, unsigned long long *rec, uint32_t seq) {
    /* the key has 40 bits of index and 23 of seq */
    if (rows < 0 || width < 0 || (width > 0 && rows > ((int64_t)1 << 40) / width) || seq >= (1u << 23)) return ck_bad;
    const int64_t n = rows * width;
    if (n == 0) return 0;
    const bool v = ck_aligned(x, 16) && n % 4 == 0;
    /* a grid-stride loop over at most 1024 blocks: enough to fill any current GPU with loads */
    int64_t b = ck_blocks_for(v ? n / 4 : n, kThreads);
    b = b > 1024 ? 1024 : b;
    CK_LAUNCH(check_k, (unsigned)b, kThreads, 0, s)(v, x, n, rec, seq);
    return ck_launch_status();
}

} // extern "C"
