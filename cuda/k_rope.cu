/* k_rope.cu — RoPE on the chunk's queries and keys, and the append of its keys and values to the
 * paged KV pool (cuda/ck.h ck_rope_append).
 *
 * One thread block per token row t < n_max; rows at or past step->n return at once, so a captured
 * decode step replays with any n <= n_max. Per row the threads take, in turn:
 *   - the q pairs (h, i), i < rope_dim/2, of the H query heads: rotated in place (mm_rope_pair);
 *   - the k dims (g, d) of the G key heads: pairs below rope_dim rotated, the rest passed through;
 *     each rotated pair written back to k, and, when step->append, both k values stored bf16 into
 *     the pool (mm_f32_to_bf16: the CPU's kvstore rounding) — from registers, so the stored key is the
 *     rotated fp32 value rounded once, as the CPU's rope-then-kvs_write gives;
 *   - the v dims, stored bf16 when appending.
 * Threads of a row never touch the same element, so the kernel has no barrier.
 *
 * Pool addressing (ck.h ck_kv): position P = kv_pos + t sits in logical block P / B at slot P % B;
 * the block lives in page page_of[P / B]; the group-g keys of a page start at (page*G + g)*2*B*D and its
 * values B*D further. slot_pos[page*B + slot] = pos + t records the token's sequence position, which
 * is what the causal test of attention reads (kv_pos and pos differ when the KV is laid out apart from
 * the sequence, e.g. after a rewrite). All offsets are 64-bit: a 1M-token pool passes 2^31 elements. */
#include "ck_dev.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kBad = (int)cudaErrorInvalidValue;

__global__ void __launch_bounds__(kThreads)
    rope_append_k(float *q, float *k, const float *v, const ck_step *step, const float *cs, const float *sn, int64_t H,
                  int64_t G, int64_t D, int64_t half, ck_kv kv) {
    const int64_t t = blockIdx.x;
    if (t >= step->n) return;
    const float *c = cs + t * half, *s = sn + t * half;
    float *qt = q + t * H * D, *kt = k + t * G * D;
    for (int64_t j = threadIdx.x; j < H * half; j += blockDim.x) {
        const int64_t h = j / half, i = j - h * half;
        mm_rope_pair(&qt[h * D + 2 * i], &qt[h * D + 2 * i + 1], c[i], s[i]);
    }

    const bool append = step->append != 0;
    uint16_t *kp = nullptr, *vp = nullptr; /* group 0's key and value row of the token's slot */
    if (append) {
        const int64_t P = step->kv_pos + t, b = P / kv.B, slot = P - b * kv.B;
        const int64_t page = kv.page_of[b];
        kp = kv.pages + page * kv.G * 2 * kv.B * D + slot * D;
        vp = kp + kv.B * D;
        if (threadIdx.x == 0) kv.slot_pos[page * kv.B + slot] = (int32_t)(step->pos + t);
    }
    const int64_t gstride = 2 * kv.B * D; /* from one group's keys to the next's */
    /* k: unit j is the pair i of group g (j < G*half), else one pass-through dim */
    const int64_t pass = D - 2 * half, nk = G * half + G * pass;
    for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
        if (j < G * half) {
            const int64_t g = j / half, i = j - g * half;
            float *x0 = &kt[g * D + 2 * i], *x1 = x0 + 1;
            mm_rope_pair(x0, x1, c[i], s[i]);
            if (append) {
                kp[g * gstride + 2 * i] = mm_f32_to_bf16(*x0);
                kp[g * gstride + 2 * i + 1] = mm_f32_to_bf16(*x1);
            }
        } else if (append) {
            const int64_t u = j - G * half, g = u / pass, d = 2 * half + (u - g * pass);
            kp[g * gstride + d] = mm_f32_to_bf16(kt[g * D + d]);
        }
    }
    if (append)
        for (int64_t j = threadIdx.x; j < G * D; j += blockDim.x) {
            const int64_t g = j / D, d = j - g * D;
            vp[g * gstride + d] = mm_f32_to_bf16(v[t * G * D + j]);
        }
}

} // namespace

extern "C" int ck_rope_append(ck_stream s, float *q, float *k, const float *v, const ck_step *step, const float *cs,
                              const float *sn, int64_t n_max, int64_t H, int64_t G, int64_t D, int64_t rope_dim,
                              ck_kv kv) {
    /* pairs need an even rope_dim within the head; the pool must be laid out for these G and D */
    if (n_max < 0 || n_max > 0x7fffffffLL || H < 0 || G <= 0 || D <= 0 || rope_dim < 0 || rope_dim % 2 ||
        rope_dim > D || kv.B <= 0 || kv.G != G || kv.D != D)
        return kBad;
    if (n_max == 0) return 0;
    CK_LAUNCH(rope_append_k, (unsigned)n_max, kThreads, 0, s)(q, k, v, step, cs, sn, H, G, D, rope_dim / 2, kv);
    return ck_launch_status();
}
