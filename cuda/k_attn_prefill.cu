/* k_attn_prefill.cu — causal attention of a chunk's queries over the listed KV blocks on tensor cores
 * (cuda/ck.h ck_attn_prefill): nvcuda::wmma 16x16x16 with bf16 operands and fp32 accumulators.
 *
 * Rows and grid. A KV group's query rows are (t, hh), t < step->n, hh < H/G, numbered t*(H/G) + hh;
 * the thread block (x, g) takes rows [64x, 64x + 64) of group g (tiles on x: up to 2^31 - 1 of them),
 * four warps of 16 rows each. So the split is (group, tile of 64 rows) whatever H/G is: with H/G = 16
 * (GLM-4-9B-Chat) a block holds 4 tokens x 16 heads, with H/G = 2 (test models) 32 tokens x 2 heads.
 * Each K/V tile in shared memory then serves 64 query rows, and one block never holds more than 64
 * rows of o: all 16 heads of a 16-token tile would be 256 rows x 128 fp32 of o = 128 KB, half an
 * SM's registers before Q and S.
 *
 * Per warp (16 rows) and tile of KA_KT = 32 keys:
 *   S = Q·Kᵀ     Q: the rows' bf16 q (round-to-nearest-even, mm_f32_to_bf16) held as D/16 matrix_a
 *                fragments for the whole kernel; K^T: the bf16 K tile read col-major;
 *   softmax      S to shared memory; 2 lanes per row scale by 1/sqrt(D) in fp32, mask (slot_pos <=
 *                the row's position, invalid slots never), take the tile max, fold it into the
 *                running max (always subtracted), p = exp(s - m) in fp32, rounded to bf16 for P·V;
 *                d sums the same bf16-rounded p, so o/d is an exact convex combination of V rows;
 *   o = o*alpha + P·V   o: D/16 accumulator fragments in registers. wmma leaves the element ->
 *                (row, col) map of a fragment unspecified, but it is the same for every fragment of
 *                one type: a fragment loaded once from a 16x16 matrix holding each element's row
 *                index tells which row's alpha each element of o takes.
 * Shared memory (D = 128): K and V tiles 2 x 32 x 136 bf16 (the q staging area at the start shares
 * their space), S 4 x 16 x 36 fp32, P 4 x 16 x 40 bf16, key table: 32 KB static, under 48 KB without
 * an opt-in (less for the other head sizes: D = 112, GLM-4V's vision tower, 30 KB). Tiles whose keys
 * are all later than the block's latest query are skipped (their slot positions are read first, their
 * K and V never). */
#include "k_attn_common.cuh"
#ifndef MTOK_CUDA_SHIM
#include <mma.h>
#endif

#define KP_NT 128 /* 4 warps */
#define KP_NW 4
#define KP_ROWS 64 /* query rows per block */
#define KP_LDS (KA_KT + 4) /* S row stride (fp32): a multiple of 4 as wmma needs, not of 32 */
#define KP_LDP (KA_KT + 8) /* P row stride (bf16): a multiple of 8 */

template <int D> struct kp_smem {
    union {
        uint16_t q[KP_ROWS][D + 8]; /* bf16 q, until the warps hold it in fragments */
        struct {
            uint16_t k[KA_KT][D + 8]; /* +8 bf16: rows 16 bytes apart in the banks */
            uint16_t v[KA_KT][D + 8];
        } kv;
    } u;
    float s[KP_NW][16][KP_LDS]; /* scores; also the staging of o on the way out */
    uint16_t p[KP_NW][16][KP_LDP];
    float alpha[KP_NW][16];
    int64_t kpos[KA_KT];
    const uint16_t *src[KA_KT];
};

namespace wm = nvcuda::wmma;
typedef wm::fragment<wm::matrix_a, 16, 16, 16, __nv_bfloat16, wm::row_major> kp_fa;
typedef wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, wm::col_major> kp_fbt; /* Kᵀ */
typedef wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, wm::row_major> kp_fb;  /* V */
typedef wm::fragment<wm::accumulator, 16, 16, 16, float> kp_fc;

__device__ __forceinline__ const __nv_bfloat16 *kp_bf(const uint16_t *p) {
    return reinterpret_cast<const __nv_bfloat16 *>(p);
}

/* The body, templated on D; the kernels are the non-template wrappers below (nvcc 13 reports every
 * instantiation of a __global__ template as lacking __launch_bounds__, even when it has them). */
template <int D>
__device__ __forceinline__ void kp_prefill(const float *__restrict__ q, const ck_step *step, const ck_kv &kv,
                                           const ck_blocks &bl, int64_t n_max, int64_t H, const ck_part &out,
                                           float scale) {
    static_assert(D % 16 == 0 && D <= 128, "D: a multiple of 16 up to 128");
    constexpr int LDK = D + 8, DF = D / 16;
    __shared__ __align__(32) kp_smem<D> sm; /* wmma tile pointers must be 32-byte aligned */

    const int tid = (int)threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int64_t g = blockIdx.y, G = kv.G, HG = H / G;
    const int64_t kv_len = step->kv_len, pos = step->pos;
    const int64_t n = step->n < 0 ? 0 : step->n < n_max ? step->n : n_max;
    const int64_t R = n * HG, rho0 = (int64_t)blockIdx.x * KP_ROWS;
    if (rho0 >= R) return; /* the grid covers n_max tokens; this chunk has fewer */
    const int64_t live = R - rho0 < KP_ROWS ? R - rho0 : KP_ROWS;
    const int64_t qmax = pos + (rho0 + live - 1) / HG; /* the block's latest query position */

    /* q rows -> bf16 in shared memory -> each warp's 16 rows as matrix_a fragments */
    for (int i = tid; i < KP_ROWS * D / 4; i += KP_NT) {
        const int r = i / (D / 4), e = (i - r * (D / 4)) * 4;
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (r < live) {
            const int64_t rho = rho0 + r, t = rho / HG, h = g * HG + rho % HG;
            const uint4 v = ka_ld16(q + (t * H + h) * D + e);
            x[0] = __uint_as_float(v.x), x[1] = __uint_as_float(v.y);
            x[2] = __uint_as_float(v.z), x[3] = __uint_as_float(v.w);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) sm.u.q[r][e + j] = mm_f32_to_bf16(x[j]);
    }
    /* the row index of every accumulator element (see the top of the file) */
    for (int i = lane; i < 256; i += 32) sm.s[w][i / 16][i % 16] = (float)(i / 16);
    __syncthreads();
    kp_fa qf[DF];
#pragma unroll
    for (int kk = 0; kk < DF; kk++) wm::load_matrix_sync(qf[kk], kp_bf(&sm.u.q[w * 16][kk * 16]), LDK);
    kp_fc rowid;
    wm::load_matrix_sync(rowid, &sm.s[w][0][0], KP_LDS, wm::mem_row_major);
    kp_fc o[DF];
#pragma unroll
    for (int j = 0; j < DF; j++) wm::fill_fragment(o[j], 0.0f);

    /* softmax side: lane pair (2i, 2i+1) owns row i of the warp, columns 16*(lane&1) .. +16 */
    const int row = lane >> 1, half = lane & 1;
    const int64_t rho = rho0 + w * 16 + row;
    const bool row_live = rho < rho0 + live;
    const int64_t qpos = pos + rho / HG;
    float m = -INFINITY, d = 0.0f;

    const ka_list L = ka_group_list(bl, g, kv_len, kv.B);
    const int64_t k_end = L.len * kv.B;
    for (int64_t k0 = 0; k0 < k_end; k0 += KA_KT) {
        __syncthreads(); /* the previous tile's (or q staging's) readers are done */
        ka_tile_keys(sm.kpos, sm.src, L, kv, g, kv_len, k0, k_end);
        __syncthreads();
        if (!ka_tile_visible(sm.kpos, qmax)) continue;
        ka_tile_load<D, KP_NT, LDK, LDK>(&sm.u.kv.k[0][0], &sm.u.kv.v[0][0], sm.src, kv.B * D);
        __syncthreads();

        /* S = Q·Kᵀ, 16 rows x 32 keys */
#pragma unroll
        for (int nk = 0; nk < KA_KT / 16; nk++) {
            kp_fc sf;
            wm::fill_fragment(sf, 0.0f);
#pragma unroll
            for (int kk = 0; kk < DF; kk++) {
                kp_fbt kb;
                wm::load_matrix_sync(kb, kp_bf(&sm.u.kv.k[nk * 16][kk * 16]), LDK);
                wm::mma_sync(sf, qf[kk], kb, sf);
            }
            wm::store_matrix_sync(&sm.s[w][0][nk * 16], sf, KP_LDS, wm::mem_row_major);
        }
        __syncwarp();

        /* the row's online-softmax step over its 32 scores, two lanes per row */
        float sv[16], tmax = -INFINITY;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int col = half * 16 + j;
            const bool vis = row_live && sm.kpos[col] <= qpos;
            sv[j] = vis ? sm.s[w][row][col] * scale : -INFINITY;
            tmax = fmaxf(tmax, sv[j]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        const float alpha = ka_tile_step(tmax, &m);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const uint16_t pb = mm_f32_to_bf16(ka_p(sv[j], m));
            sm.p[w][row][half * 16 + j] = pb;
            sum += mm_bf16_to_f32(pb);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        d = d * alpha + sum;
        if (half == 0) sm.alpha[w][row] = alpha;
        __syncwarp();

        /* o = o*alpha (per row) + P·V */
#pragma unroll
        for (int e = 0; e < (int)kp_fc::num_elements; e++) {
            const float a = sm.alpha[w][(int)rowid.x[e]];
#pragma unroll
            for (int j = 0; j < DF; j++) o[j].x[e] *= a;
        }
        kp_fa pf[KA_KT / 16];
#pragma unroll
        for (int kk = 0; kk < KA_KT / 16; kk++) wm::load_matrix_sync(pf[kk], kp_bf(&sm.p[w][0][kk * 16]), KP_LDP);
#pragma unroll
        for (int j = 0; j < DF; j++) {
#pragma unroll
            for (int kk = 0; kk < KA_KT / 16; kk++) {
                kp_fb vb;
                wm::load_matrix_sync(vb, kp_bf(&sm.u.kv.v[kk * 16][j * 16]), LDK);
                wm::mma_sync(o[j], pf[kk], vb, o[j]);
            }
        }
    }

    /* out: o through the warp's S area, 16 columns at a time; m, d from the row's even lane */
    const int64_t t_row = rho / HG, h_row = g * HG + rho % HG;
#pragma unroll
    for (int j = 0; j < DF; j++) {
        __syncwarp();
        wm::store_matrix_sync(&sm.s[w][0][0], o[j], KP_LDS, wm::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 256; i += 32) {
            const int r = i / 16, col = i % 16;
            const int64_t rr = rho0 + w * 16 + r;
            if (rr < rho0 + live) out.o[((rr / HG) * H + g * HG + rr % HG) * D + j * 16 + col] = sm.s[w][r][col];
        }
    }
    if (row_live && half == 0) {
        out.m[t_row * H + h_row] = m;
        out.d[t_row * H + h_row] = d;
    }
}

#define KP_KERNEL(D)                                                                                            \
    __global__ void __launch_bounds__(KP_NT) kp_prefill_##D(const float *q, const ck_step *step, ck_kv kv,         \
                                                            ck_blocks bl, int64_t n_max, int64_t H, ck_part out,  \
                                                            float scale) {                                         \
        kp_prefill<D>(q, step, kv, bl, n_max, H, out, scale);                                                       \
    }
KP_KERNEL(32)
KP_KERNEL(64)
KP_KERNEL(112) /* GLM-4V's vision tower (1792 = 16 heads x 112) */
KP_KERNEL(128)

extern "C" int ck_attn_prefill(ck_stream s, const float *q, const ck_step *step, ck_kv kv, ck_blocks bl,
                               int64_t n_max, int64_t H, ck_part out) {
    if (n_max < 0 || H < 1 || kv.G < 1 || kv.B < 1 || H % kv.G != 0 || kv.G > 0x7fffffff)
        return (int)cudaErrorInvalidValue;
    if (n_max == 0) return 0;
    const int64_t tiles = (n_max * (H / kv.G) + KP_ROWS - 1) / KP_ROWS;
    /* query tiles on x (up to 2^31 - 1: a 1M-token chunk), KV groups on y (<= 65535) */
    if (tiles > 0x7fffffff || kv.G > 65535) return (int)cudaErrorInvalidValue;
    const dim3 grid((unsigned)tiles, (unsigned)kv.G);
    const float scale = ka_scale(kv.D);
    switch (kv.D) {
    case 32: CK_LAUNCH(kp_prefill_32, grid, KP_NT, 0, s)(q, step, kv, bl, n_max, H, out, scale); break;
    case 64: CK_LAUNCH(kp_prefill_64, grid, KP_NT, 0, s)(q, step, kv, bl, n_max, H, out, scale); break;
    case 112: CK_LAUNCH(kp_prefill_112, grid, KP_NT, 0, s)(q, step, kv, bl, n_max, H, out, scale); break;
    case 128: CK_LAUNCH(kp_prefill_128, grid, KP_NT, 0, s)(q, step, kv, bl, n_max, H, out, scale); break;
    default: return (int)cudaErrorInvalidValue;
    }
    return ck_launch_status();
}
