/* k_attn_common.cuh — what the attention kernels (cuda/k_attn_decode.cu, cuda/k_attn_prefill.cu)
 * share: resolving a KV group's block list, the key tile (which pool slot each of KA_KT keys comes
 * from and the position it holds), the 16-byte K/V tile copy and the per-tile softmax step.
 *
 * Keys are numbered along the group's block list: key k is slot k % B of the list's block k / B,
 * so a tile of KA_KT keys may span several blocks (B = 16) or part of one (B = 128), and a decode
 * share of list entries [i0, i1) is the key range [i0*B, i1*B). A key is valid when its slot is
 * below the block's valid rows (mm_block_rows); invalid keys get position KA_NOPOS (never visible)
 * and zero K and V in shared memory: a slot past kv_len may hold anything, NaN included, and
 * P·V multiplies every V row of the tile, even by p = 0. */
#ifndef MTOK_K_ATTN_COMMON_CUH
#define MTOK_K_ATTN_COMMON_CUH

#include "ck_dev.cuh"

#define KA_KT 32                 /* keys per tile */
#define KA_NOPOS INT64_MAX       /* position of an invalid key: no query sees it */

/* A KV group's block list: block id of entry i is ids[i] (or i when ids is NULL: the exact policy). */
typedef struct {
    const int32_t *ids;
    int64_t len;
} ka_list;

__device__ __forceinline__ ka_list ka_group_list(const ck_blocks &bl, int64_t g, int64_t kv_len, int64_t B) {
    ka_list L;
    const int32_t c = bl.count[g];
    if (c < 0) {
        L.ids = nullptr;
        L.len = kv_len > 0 ? (kv_len + B - 1) / B : 0;
    } else {
        L.ids = bl.ids + g * bl.cap;
        L.len = c;
    }
    return L;
}

/* Where key k of the list comes from: on return *src points at its K row (V is B*D further) and the
 * result is its sequence position; KA_NOPOS and *src = NULL for a key past end or an invalid slot. */
__device__ __forceinline__ int64_t ka_key(const ka_list &L, const ck_kv &kv, int64_t g, int64_t kv_len, int64_t k,
                                          int64_t end, const uint16_t **src) {
    *src = nullptr;
    if (k >= end) return KA_NOPOS;
    const int64_t i = k / kv.B, slot = k - i * kv.B;
    const int64_t b = L.ids ? (int64_t)L.ids[i] : i;
    if (b < 0 || slot >= mm_block_rows(kv_len, b, kv.B)) return KA_NOPOS;
    const int64_t page = kv.page_of[b];
    *src = kv.pages + ((page * kv.G + g) * 2 * kv.B + slot) * kv.D;
    return (int64_t)kv.slot_pos[page * kv.B + slot];
}

/* 16-byte copies (8 bf16 or 4 fp32). On the device one vector load/store; on the CPU shim memcpy,
 * which has no alignment or aliasing requirement. */
__device__ __forceinline__ uint4 ka_ld16(const void *p) {
#ifdef MTOK_CUDA_SHIM
    uint4 v;
    memcpy(&v, p, sizeof v);
    return v;
#else
    return *(const uint4 *)p;
#endif
}
__device__ __forceinline__ void ka_st16(void *p, uint4 v) {
#ifdef MTOK_CUDA_SHIM
    memcpy(p, &v, sizeof v);
#else
    *(uint4 *)p = v;
#endif
}

/* The 8 bf16 of a 16-byte word widened to fp32 (exact). */
__device__ __forceinline__ void ka_widen8(uint4 w, float f[8]) {
    const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = mm_bf16_to_f32((uint16_t)(u[i] & 0xffffu));
        f[2 * i + 1] = mm_bf16_to_f32((uint16_t)(u[i] >> 16));
    }
}

/* Fill the tile's key table: threads t < KA_KT each resolve key k0 + t. The caller syncs after. */
__device__ __forceinline__ void ka_tile_keys(int64_t *kpos, const uint16_t **src, const ka_list &L, const ck_kv &kv,
                                             int64_t g, int64_t kv_len, int64_t k0, int64_t end) {
    const int t = (int)threadIdx.x;
    if (t < KA_KT) {
        const uint16_t *p;
        kpos[t] = ka_key(L, kv, g, kv_len, k0 + t, end, &p);
        src[t] = p;
    }
}

/* Whether any key of the tile is visible to a query at position qmax (the block's latest): a tile
 * entirely in the future is skipped without reading its K and V. Every thread computes the same
 * answer from shared memory, so the skip is uniform. */
__device__ __forceinline__ bool ka_tile_visible(const int64_t *kpos, int64_t qmax) {
    bool any = false;
#pragma unroll
    for (int j = 0; j < KA_KT; j++) any |= kpos[j] <= qmax;
    return any;
}

/* Copy the tile's K rows to Ks [KA_KT][LDK] and V rows to Vs [KA_KT][LDV] (bf16, 16-byte words),
 * zeros for invalid keys. NT threads share the work. */
template <int D, int NT, int LDK, int LDV>
__device__ __forceinline__ void ka_tile_load(uint16_t *Ks, uint16_t *Vs, const uint16_t *const *src, int64_t BD) {
    constexpr int CH = D / 8; /* 16-byte words per row */
    for (int c = (int)threadIdx.x; c < KA_KT * CH; c += NT) {
        const int j = c / CH, e = (c - j * CH) * 8;
        const uint16_t *p = src[j];
        uint4 kw = make_uint4(0, 0, 0, 0), vw = make_uint4(0, 0, 0, 0);
        if (p) {
            kw = ka_ld16(p + e);
            vw = ka_ld16(p + BD + e);
        }
        ka_st16(Ks + j * LDK + e, kw);
        ka_st16(Vs + j * LDV + e, vw);
    }
}

/* Online softmax over a tile: fold the tile's largest visible score tmax into the running max *m and
 * return the factor alpha for the old (o, d). The rules of mm_softmax_step applied to a tile's max:
 * nothing visible so far (new max -inf): alpha = 1 and the state (empty: o = 0, d = 0) stays; an empty
 * state: alpha = 0 (exp(-inf - m) is never formed). The scores then give p = exp(s - *m) <= 1. */
__device__ __forceinline__ float ka_tile_step(float tmax, float *m) {
    const float m_new = tmax > *m ? tmax : *m;
    if (m_new == -INFINITY) return 1.0f;
    const float alpha = *m == -INFINITY ? 0.0f : expf(*m - m_new);
    *m = m_new;
    return alpha;
}

/* p for a score already masked to -inf where invisible; the running max m is finite whenever s is. */
__device__ __forceinline__ float ka_p(float s, float m) { return s == -INFINITY ? 0.0f : expf(s - m); }

/* 1/sqrt(D) as the CPU backend computes it (core/backend_cpu.c): in double, rounded once. */
static inline float ka_scale(int64_t D) { return (float)(1.0 / sqrt((double)D)); }

#endif
