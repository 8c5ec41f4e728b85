/* k_topk.cu — the topk KV policy's block choice on the device (cuda/ck.h ck_topk_*): the block key
 * summaries kept beside the paged KV pool, the q·k bound of every candidate block, and the selection
 * of the N best into the block lists the decode attention kernel reads. The rule is core/attn.c's
 * (docs/KVSTORE.md "Policy topk"); the arithmetic is kernels/mtok_math.h's (mm_topk_range,
 * mm_topk_bound, mm_topk_key, mm_sum_widen), so the device ranks blocks on the CPU's bits.
 *
 * Everything per step is read from the step header (kv_pos, n, kv_len) and every grid is fixed by
 * the session's shapes, so the three launches are captured into a decode step's CUDA graph and
 * replay with new positions.
 *
 * Summaries (ck_topk_summarize): why rebuilt from the pool rather than uploaded from the host store
 * or widened incrementally. The device already holds every key it appended (rope_append), so a
 * rebuild costs no PCIe transfer and no host work inside the step (an upload per layer would put 40
 * host copies in a step that a graph must replay with nothing from the host); rebuilding the blocks
 * a chunk touched from row 0 (a decode step: one block per layer, at most B rows of G*D bf16, read
 * coalesced) rather than folding in the new rows means a summary never depends on what the block held
 * before: after a truncate, a forget or an upload of the rows the device lacked, the next rebuild of
 * the block is right whatever the old summary was. The rows are folded in row order with
 * mm_sum_widen, kvsum_row's rule, so both copies of a summary hold the same bits.
 *
 * Selection (ck_topk_select): one thread block per KV group. Each candidate gets the 64-bit key
 * mm_topk_key(bound, index) (bound first, then the earlier block: keys are distinct), and a radix
 * select over the keys, 8 bits per pass from the top, finds the k-th largest key T; the chosen blocks
 * are exactly those with key >= T, the set core/attn.c's heap keeps, ties included. Then the list:
 * the sinks, the chosen blocks (compacted in block order by a prefix sum over the threads' ranges),
 * the window and the chunk's own blocks. When every candidate fits (m1 - m0 <= N) the group attends
 * every block: count -1, as the host path sends it. */
#include "ck_dev.cuh"

namespace {

constexpr int kSumThreads = 128;
constexpr int kScoreThreads = 128;
constexpr int kSelThreads = 256;
constexpr int64_t kQMax = 2048; /* floats of one group's queries (H/G heads x D) the score kernel holds */
constexpr int kBad = (int)cudaErrorInvalidValue;

/* Rebuilds the summary of the blocks [b, ...) the chunk appended to (step non-null: grid y over the
 * blocks it can touch, each rebuilt from its rows held after the append), or of block b with `rows`
 * rows (step null: after an upload). One thread per channel (g, d) of the block. */
__global__ void __launch_bounds__(kSumThreads)
    topk_summarize_k(ck_kv kv, uint16_t *sums, const ck_step *step, int64_t b0, int64_t rows0) {
    int64_t b = b0 + blockIdx.y, rows = rows0;
    if (step) {
        if (!step->append) return;
        b = step->kv_pos / kv.B + blockIdx.y;
        if (b * kv.B >= step->kv_pos + step->n) return; /* past the chunk's last block */
        rows = mm_block_rows(step->kv_len, b, kv.B);
    }
    const int64_t row = kv.G * kv.D, c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= row || rows <= 0) return;
    const int64_t g = c / kv.D, d = c - g * kv.D;
    const uint16_t *k = kv.pages + ((int64_t)kv.page_of[b] * kv.G + g) * 2 * kv.B * kv.D + d;
    uint16_t lo = 0, hi = 0;
    for (int64_t r = 0; r < rows; r++) mm_sum_widen(&lo, &hi, k[r * kv.D], r);
    uint16_t *s = sums + b * 2 * row;
    s[c] = lo;
    s[row + c] = hi;
}

/* scores[g][b] = the bound of candidate block b for group g (grid: candidate tiles x G). The group's
 * query box (per head and channel the min and max over the step's tokens, core/attn.c query_box's
 * order) goes to shared memory first; one token uses the one-query form. */
__global__ void __launch_bounds__(kScoreThreads)
    topk_score_k(const float *q, const ck_step *step, const uint16_t *sums, ck_topk rule, int64_t B, int64_t H,
                 int64_t G, int64_t D, float *scores, int64_t cap) {
    __shared__ float qbox[2 * kQMax];
    const int64_t g = blockIdx.y, per = H / G, n = step->n;
    int64_t nb, m0, m1;
    mm_topk_range(step->kv_pos, n, B, rule.sink_blocks, rule.window, &nb, &m0, &m1);
    /* every candidate fits (nothing to rank), or this tile starts past them: the whole block leaves */
    if (m1 - m0 <= rule.topk || m0 + (int64_t)blockIdx.x * blockDim.x >= m1) return;
    float *lo = qbox, *hi = n > 1 ? qbox + per * D : qbox;
    for (int64_t i = threadIdx.x; i < per * D; i += blockDim.x) {
        const float *qi = q + g * per * D + i; /* head g*per + i/D, channel i%D of token 0 */
        float l = qi[0], u = qi[0];
        for (int64_t t = 1; t < n; t++) {
            const float x = qi[t * H * D];
            l = x < l ? x : l;
            u = x > u ? x : u;
        }
        lo[i] = l;
        if (n > 1) hi[i] = u;
    }
    __syncthreads();
    const int64_t b = m0 + (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= m1) return;
    const uint16_t *smin = sums + b * 2 * G * D + g * D, *smax = smin + G * D;
    scores[g * cap + b] = mm_topk_bound(lo, hi, smin, smax, D, per);
}

/* The block list of group g (blockIdx.x): sinks, the k best candidates, window and own blocks. */
__global__ void __launch_bounds__(kSelThreads)
    topk_select_k(const ck_step *step, const float *scores, int64_t scap, ck_topk rule, int64_t B, int32_t *ids,
                  int32_t *count, int64_t cap) {
    __shared__ unsigned hist[256];
    __shared__ unsigned long long s_prefix;
    __shared__ long long s_need;
    __shared__ int32_t offs[kSelThreads + 1];
    const int64_t g = blockIdx.x, tid = threadIdx.x, T = blockDim.x;
    int64_t nb, m0, m1;
    mm_topk_range(step->kv_pos, step->n, B, rule.sink_blocks, rule.window, &nb, &m0, &m1);
    const int64_t nm = m1 - m0, k = rule.topk;
    int32_t *out = ids + g * cap;
    if (nm <= k) { /* every block up to kv_len */
        if (tid == 0) count[g] = -1;
        return;
    }
    const float *sc = scores + g * scap + m0;
    if (tid == 0) s_prefix = 0, s_need = k;
    for (int pass = 0; pass < 8; pass++) {
        const int shift = 56 - 8 * pass;
        const unsigned long long mask = pass ? ~0ull << (shift + 8) : 0ull; /* the bits fixed so far */
        for (int64_t i = tid; i < 256; i += T) hist[i] = 0;
        __syncthreads();
        const unsigned long long pre = s_prefix;
        for (int64_t i = tid; i < nm; i += T) {
            const unsigned long long key = mm_topk_key(sc[i], i);
            if ((key & mask) == pre) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) { /* the bin holding the need-th largest key among those matching the prefix */
            long long cum = 0;
            for (int bin = 255; bin >= 0; bin--) {
                if (cum + (long long)hist[bin] >= s_need) {
                    s_prefix = pre | (unsigned long long)bin << shift;
                    s_need -= cum;
                    break;
                }
                cum += hist[bin];
            }
        }
        __syncthreads();
    }
    const unsigned long long kth = s_prefix; /* the k-th largest key: exactly k keys are >= it */
    /* each thread a contiguous range of candidates: count, prefix sum, write in block order */
    const int64_t span = (nm + T - 1) / T, i0 = tid * span, i1 = i0 + span < nm ? i0 + span : nm;
    int32_t mine = 0;
    for (int64_t i = i0; i < i1; i++) mine += mm_topk_key(sc[i], i) >= kth;
    offs[tid + 1] = mine;
    __syncthreads();
    if (tid == 0) {
        offs[0] = 0;
        for (int64_t t = 1; t <= T; t++) offs[t] += offs[t - 1];
    }
    __syncthreads();
    int32_t at = (int32_t)m0 + offs[tid];
    for (int64_t i = i0; i < i1; i++)
        if (mm_topk_key(sc[i], i) >= kth) out[at++] = (int32_t)(m0 + i);
    for (int64_t b = tid; b < m0; b += T) out[b] = (int32_t)b;
    for (int64_t b = m1 + tid; b < nb; b += T) out[m0 + k + (b - m1)] = (int32_t)b;
    if (tid == 0) count[g] = (int32_t)(m0 + k + (nb - m1));
}

} // namespace

extern "C" int ck_topk_summarize(ck_stream s, ck_kv kv, uint16_t *sums, const ck_step *step, int64_t n_max, int64_t b,
                                 int64_t rows) {
    if (kv.B <= 0 || kv.G <= 0 || kv.D <= 0 || n_max < 0 || (!step && (b < 0 || rows < 0 || rows > kv.B)))
        return kBad;
    /* a chunk of n_max rows starting inside a block touches at most this many blocks */
    const int64_t nblk = step ? (n_max + kv.B - 1) / kv.B + 1 : 1;
    if (nblk > 65535 || (step && n_max == 0)) return step && n_max == 0 ? 0 : kBad;
    const dim3 grid((unsigned)((kv.G * kv.D + kSumThreads - 1) / kSumThreads), (unsigned)nblk);
    CK_LAUNCH(topk_summarize_k, grid, kSumThreads, 0, s)(kv, sums, step, step ? 0 : b, rows);
    return ck_launch_status();
}

extern "C" int ck_topk_score(ck_stream s, const float *q, const ck_step *step, const uint16_t *sums, ck_topk rule,
                             int64_t B, int64_t n_blocks, int64_t H, int64_t G, int64_t D, float *scores) {
    if (B <= 0 || n_blocks <= 0 || G <= 0 || H % G || D <= 0 || (H / G) * D > kQMax || rule.topk < 0 ||
        rule.sink_blocks < 0 || rule.window < 0 || G > 65535)
        return kBad;
    const dim3 grid((unsigned)((n_blocks + kScoreThreads - 1) / kScoreThreads), (unsigned)G);
    CK_LAUNCH(topk_score_k, grid, kScoreThreads, 0, s)(q, step, sums, rule, B, H, G, D, scores, n_blocks);
    return ck_launch_status();
}

extern "C" int ck_topk_select(ck_stream s, const ck_step *step, const float *scores, ck_topk rule, int64_t B,
                              int64_t n_blocks, int64_t G, int32_t *ids, int32_t *count, int64_t cap) {
    /* keys carry the candidate index in 32 bits; a list holds at most every block */
    if (B <= 0 || n_blocks <= 0 || n_blocks > 0x7fffffffLL || G <= 0 || G > 65535 || cap < n_blocks ||
        rule.topk < 0 || rule.sink_blocks < 0 || rule.window < 0)
        return kBad;
    CK_LAUNCH(topk_select_k, (unsigned)G, kSelThreads, 0, s)(step, scores, n_blocks, rule, B, ids, count, cap);
    return ck_launch_status();
}
