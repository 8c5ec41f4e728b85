/* k_attn_decode.cu — split-KV flash-decoding over the paged KV pool and the fixed-order combine of
 * its shares (cuda/ck.h ck_attn_decode, ck_attn_combine).
 *
 * Grid (G, n_split): the thread block of (g, c) takes share c of group g's block list, entries
 * [c*len/n_split, (c+1)*len/n_split) (the list length is read on the device, so a captured graph
 * serves any kv_len), and serves every query row (t, h) of the group, t < step->n: each K and V byte
 * of the share is read from memory once for all H/G heads and all tokens.
 *
 * Work of a block, per pass of up to KD_RP = 32 query rows (GLM-4-9B-Chat decoding one token: 16
 * rows, one pass; 4 tokens x 16 heads take two, the second re-reading the share, mostly from L2):
 *   - q rows of the pass in shared memory as fp32 (q keeps its full precision: decode is
 *     bandwidth-bound, the score FMAs are not the limit, so there is no reason to round q to bf16);
 *   - per tile of KA_KT keys: K and V copied to shared memory with 16-byte loads; scores with one key
 *     per lane and KD_RP/4 rows per warp (q broadcast from shared memory, K widened once per 8 dims
 *     and reused by every row of the warp); the row's tile max and sum by warp shuffles; p and the
 *     rescale factor to shared memory; then P·V with each thread owning 8 dims of RPT = KD_RP*D/(8*128)
 *     rows, rescaling them by alpha first.
 * Softmax in fp32 with the running max always subtracted (scores of GLM-4 exceed exp's range).
 *
 * Output: work.o [n_split][n_max*H][D] unnormalised, work.m, work.d [n_split][n_max*H] (natural
 * log). Rows of tokens t >= step->n get m = -inf, d = 0 and no o (a merge never reads the o of an
 * empty side), so ck_attn_combine may merge all n_max*H rows whatever step->n is. */
#include "k_attn_common.cuh"

#define KD_NT 128 /* threads of a decode block: 4 warps */
#define KD_NW 4
#define KD_RP 32 /* query rows per pass */

template <int D> struct kd_smem {
    float q[KD_RP][D];                  /* the pass's query rows; rows past the last are 0 */
    uint16_t k[KA_KT][D + 8];           /* +8: lane j reads row j, the pad spreads the rows over the banks */
    uint16_t v[KA_KT][D];
    float p[KD_RP][KA_KT + 1];          /* +1: the P·V threads of a warp read different rows */
    float alpha[KD_RP];
    int64_t qpos[KD_RP]; /* the rows' positions (in shared memory to spare 2 registers per row) */
    int64_t kpos[KA_KT];
    const uint16_t *src[KA_KT];
};

/* The body, templated on D; the kernels are the non-template wrappers below (nvcc 13 reports every
 * instantiation of a __global__ template as lacking __launch_bounds__, even when it has them). */
template <int D>
__device__ __forceinline__ void kd_decode(const float *__restrict__ q, const ck_step *step, const ck_kv &kv,
                                          const ck_blocks &bl, int64_t n_max, int64_t H, const ck_part &work,
                                          float scale) {
    static_assert(D % 32 == 0 && D <= 128, "D: a multiple of 32 up to 128");
    constexpr int LDK = D + 8;
    constexpr int RB = KD_RP / KD_NW;  /* score rows per warp: rows w, w + 4, .. */
    constexpr int DG = D / 8;          /* P·V: 8-dim groups per row */
    constexpr int RG = KD_NT / DG;     /* P·V: row groups */
    constexpr int RPT = KD_RP / RG;    /* P·V: rows per thread, rows rg, rg + RG, .. */
    static_assert(RPT >= 1 && RG * RPT == KD_RP, "P·V thread layout");
    __shared__ __align__(16) kd_smem<D> sm; /* 16-byte vector accesses */

    const int tid = (int)threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int dg = tid % DG, rg = tid / DG;
    const int64_t g = blockIdx.x, c = blockIdx.y, ns = gridDim.y, G = kv.G, HG = H / G;
    const int64_t kv_len = step->kv_len, pos = step->pos;
    const int64_t n = step->n < 0 ? 0 : step->n < n_max ? step->n : n_max;
    const int64_t R = n * HG; /* rows (t, hh), row index t*HG + hh */
    const int64_t rows_all = n_max * H;

    /* rows of tokens past n: empty, so a combine over n_max*H rows reads defined m, d */
    for (int64_t i = tid; i < (n_max - n) * HG; i += KD_NT) {
        const int64_t t = n + i / HG, h = g * HG + i % HG, r = c * rows_all + t * H + h;
        work.m[r] = -INFINITY;
        work.d[r] = 0.0f;
    }

    const ka_list L = ka_group_list(bl, g, kv_len, kv.B);
    const int64_t k_begin = c * L.len / ns * kv.B, k_end = (c + 1) * L.len / ns * kv.B;

    for (int64_t r0 = 0; r0 < R; r0 += KD_RP) {
        const int64_t live = R - r0 < KD_RP ? R - r0 : KD_RP; /* rows of this pass */
        const int64_t qmax = pos + (r0 + live - 1) / HG;      /* the pass's latest query position */
        __syncthreads(); /* the previous pass is done with sm.q */
        for (int i = tid; i < KD_RP * D / 4; i += KD_NT) {
            const int r = i / (D / 4), e = (i - r * (D / 4)) * 4;
            uint4 x = make_uint4(0, 0, 0, 0);
            if (r < live) {
                const int64_t rho = r0 + r, t = rho / HG, h = g * HG + rho % HG;
                x = ka_ld16(q + (t * H + h) * D + e);
            }
            ka_st16(&sm.q[r][e], x);
        }
        for (int r = tid; r < KD_RP; r += KD_NT) sm.qpos[r] = pos + (r0 + r) / HG;

        /* score side: warp w owns rows w + KD_NW*i; m, d replicated in its lanes */
        float m[RB], d[RB];
#pragma unroll
        for (int i = 0; i < RB; i++) m[i] = -INFINITY, d[i] = 0.0f;
        const int nrb = (int)((live - w + KD_NW - 1) / KD_NW); /* live rows of this warp (may be <= 0) */
        /* P·V side: 8 dims of RPT rows */
        float o[RPT][8];
#pragma unroll
        for (int i = 0; i < RPT; i++)
#pragma unroll
            for (int e = 0; e < 8; e++) o[i][e] = 0.0f;

        for (int64_t k0 = k_begin; k0 < k_end; k0 += KA_KT) {
            __syncthreads(); /* the previous tile's readers are done */
            ka_tile_keys(sm.kpos, sm.src, L, kv, g, kv_len, k0, k_end);
            __syncthreads();
            if (!ka_tile_visible(sm.kpos, qmax)) continue;
            ka_tile_load<D, KD_NT, LDK, D>(&sm.k[0][0], &sm.v[0][0], sm.src, kv.B * D);
            __syncthreads();

            /* scores of key `lane` for the warp's rows */
            float acc[RB];
#pragma unroll
            for (int i = 0; i < RB; i++) acc[i] = 0.0f;
#pragma unroll 4
            for (int e = 0; e < D; e += 8) {
                float kf[8];
                ka_widen8(ka_ld16(&sm.k[lane][e]), kf);
#pragma unroll
                for (int i = 0; i < RB; i++) {
                    if (i < nrb) {
                        const float *qr = &sm.q[w + KD_NW * i][e];
#pragma unroll
                        for (int x = 0; x < 8; x++) acc[i] = fmaf(qr[x], kf[x], acc[i]);
                    }
                }
            }
            const int64_t kp = sm.kpos[lane];
#pragma unroll
            for (int i = 0; i < RB; i++) {
                const bool vis = i < nrb && kp <= sm.qpos[w + KD_NW * i];
                const float s = vis ? acc[i] * scale : -INFINITY;
                float tmax = s;
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
                const float alpha = ka_tile_step(tmax, &m[i]);
                const float p = ka_p(s, m[i]);
                float sum = p;
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
                d[i] = d[i] * alpha + sum;
                sm.p[w + KD_NW * i][lane] = p;
                if (lane == 0) sm.alpha[w + KD_NW * i] = alpha;
            }
            __syncthreads();

            /* o = o*alpha + P·V for this thread's rows and dims */
#pragma unroll
            for (int i = 0; i < RPT; i++) {
                const float a = sm.alpha[rg + RG * i];
#pragma unroll
                for (int e = 0; e < 8; e++) o[i][e] *= a;
            }
#pragma unroll 4
            for (int j = 0; j < KA_KT; j++) {
                float vf[8];
                ka_widen8(ka_ld16(&sm.v[j][dg * 8]), vf);
#pragma unroll
                for (int i = 0; i < RPT; i++) {
                    const float p = sm.p[rg + RG * i][j];
#pragma unroll
                    for (int e = 0; e < 8; e++) o[i][e] = fmaf(p, vf[e], o[i][e]);
                }
            }
        }

        /* the share's partials of the pass's live rows */
#pragma unroll
        for (int i = 0; i < RPT; i++) {
            const int r = rg + RG * i;
            if (r < live) {
                const int64_t rho = r0 + r, t = rho / HG, h = g * HG + rho % HG;
                float *dst = work.o + (c * rows_all + t * H + h) * D + dg * 8;
                ka_st16(dst, make_uint4(__float_as_uint(o[i][0]), __float_as_uint(o[i][1]), __float_as_uint(o[i][2]),
                                        __float_as_uint(o[i][3])));
                ka_st16(dst + 4, make_uint4(__float_as_uint(o[i][4]), __float_as_uint(o[i][5]),
                                            __float_as_uint(o[i][6]), __float_as_uint(o[i][7])));
            }
        }
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < RB; i++) {
                if (i < nrb) {
                    const int64_t rho = r0 + w + KD_NW * i, t = rho / HG, h = g * HG + rho % HG;
                    const int64_t r = c * rows_all + t * H + h;
                    work.m[r] = m[i];
                    work.d[r] = d[i];
                }
            }
        }
    }
}

#define KD_KERNEL(D)                                                                                            \
    __global__ void __launch_bounds__(KD_NT) kd_decode_##D(const float *q, const ck_step *step, ck_kv kv,          \
                                                           ck_blocks bl, int64_t n_max, int64_t H, ck_part work,   \
                                                           float scale) {                                          \
        kd_decode<D>(q, step, kv, bl, n_max, H, work, scale);                                                       \
    }
KD_KERNEL(32)
KD_KERNEL(64)
KD_KERNEL(128)

/* out = the n_split shares merged in share order, starting from the empty state: a share that saw
 * no key (m = -inf) drops out whatever its o holds, and a row no share saw stays o = 0, m = -inf,
 * d = 0. One thread block per row, threads over D; the merge factors are recomputed per thread
 * (a few expf per element, against ns*D loads). */
__global__ void __launch_bounds__(128)
    kd_combine(ck_part out, ck_part work, int n_split, int64_t rows, int64_t D) {
    const int64_t r = blockIdx.x;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        float m = -INFINITY, d = 0.0f, o = 0.0f;
        for (int c = 0; c < n_split; c++) {
            const int64_t rc = (int64_t)c * rows + r;
            const float mc = work.m[rc];
            if (mc == -INFINITY) continue; /* mm_merge_factors' keep == 1, without reading the unwritten o */
            const mm_merge_w f = mm_merge_factors(m, mc);
            o = mm_merge_elem(f, o, work.o[rc * D + j]);
            d = mm_merge_elem(f, d, work.d[rc]);
            m = f.m;
        }
        out.o[r * D + j] = o;
        if (j == 0) {
            out.m[r] = m;
            out.d[r] = d;
        }
    }
}

extern "C" int ck_attn_decode(ck_stream s, const float *q, const ck_step *step, ck_kv kv, ck_blocks bl,
                              int64_t n_max, int64_t H, int n_split, ck_part work) {
    if (n_max < 1 || H < 1 || kv.G < 1 || kv.B < 1 || H % kv.G != 0 || n_split < 1 || n_split > 65535 ||
        kv.G > 65535)
        return (int)cudaErrorInvalidValue;
    const dim3 grid((unsigned)kv.G, (unsigned)n_split);
    const float scale = ka_scale(kv.D);
    switch (kv.D) {
    case 32: CK_LAUNCH(kd_decode_32, grid, KD_NT, 0, s)(q, step, kv, bl, n_max, H, work, scale); break;
    case 64: CK_LAUNCH(kd_decode_64, grid, KD_NT, 0, s)(q, step, kv, bl, n_max, H, work, scale); break;
    case 128: CK_LAUNCH(kd_decode_128, grid, KD_NT, 0, s)(q, step, kv, bl, n_max, H, work, scale); break;
    default: return (int)cudaErrorInvalidValue;
    }
    return ck_launch_status();
}

extern "C" int ck_attn_combine(ck_stream s, ck_part out, ck_part work, int n_split, int64_t rows, int64_t D) {
    if (n_split < 1 || rows < 0 || D < 1 || rows > 0x7fffffff) return (int)cudaErrorInvalidValue;
    if (rows == 0) return 0;
    const int threads = D >= 128 ? 128 : (int)((D + 31) / 32 * 32);
    CK_LAUNCH(kd_combine, (unsigned)rows, threads, 0, s)(out, work, n_split, rows, D);
    return ck_launch_status();
}
