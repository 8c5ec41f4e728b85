/* ck.h — the CUDA kernels of mtok's GPU backend (prefix ck_): what core/backend_cuda*.c launches.
 * Plain C (included by the backend's C files); implemented in cuda/k_*.cu, whose launch glue is one
 * line per kernel. docs/GPU.md describes the kernels; docs/BACKEND.md the contract they serve.
 *
 * Memory. Every pointer here is device memory (in the CPU-executed build, tests/cuda_shim, host
 * memory standing in for it) unless a comment says "host". Weights are bf16 (uint16_t bit
 * patterns); activations, scores and softmax state are fp32; the KV pool is bf16.
 *
 * Per-step values (the chunk's token ids, positions, KV length, RoPE table, block lists) are read
 * by the kernels from a ck_step in device memory, never passed by value: a decode step captured as
 * a CUDA graph replays with new values after one copy of the step block (docs/GPU.md, "Graphs").
 *
 * Errors: each launcher returns 0 or the cudaError_t of the launch (cudaGetLastError). */
#ifndef MTOK_CK_H
#define MTOK_CK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st *ck_stream; /* == cudaStream_t */

/* ---- the step block: what changes from one forward chunk to the next ----
 * One contiguous device area: the header, then ids [chunk], then the RoPE table cs, sn
 * [chunk][rope_dim/2] each, then per layer and KV group a block list (see ck_blocks). Filled on the
 * host in pinned memory and copied up once per chunk. */
typedef struct {
    int64_t n;      /* tokens in the chunk (rows of every activation) */
    int64_t pos;    /* sequence position of row 0 (messages, RoPE angles are in the table) */
    int64_t kv_pos; /* KV position of row 0: where the chunk's K and V rows go */
    int64_t kv_len; /* KV positions attention may read: kv_pos + n when the chunk is appended */
    int32_t append; /* 1: rope_append stores the chunk's K and V */
    int32_t pad_;
} ck_step;

/* Block lists of one layer: for KV group g, the logical blocks it attends, ascending:
 * ids[g * cap + i], i < count[g]. count[g] < 0 means "every block [0, ceil(kv_len / B))"
 * (the exact policy: no list to copy). */
typedef struct {
    const int32_t *ids;   /* [G][cap] */
    const int32_t *count; /* [G] */
    int64_t cap;
} ck_blocks;

/* The paged KV pool of one layer: logical block b lives in page page_of[b]; a page holds, per KV
 * group g, B keys then B values: k at pages + (page*G + g)*2*B*D, v B*D further, bf16 [B][D] each.
 * slot_pos[page*B + j] is the sequence position of the token in slot j of the page (written by
 * rope_append; attention's causal test reads it, never assumes position == slot). */
typedef struct {
    uint16_t *pages;
    const int32_t *page_of; /* [max blocks] */
    int32_t *slot_pos;      /* [pages * B] (shared by the layers: every layer stores the same positions) */
    int64_t B, G, D;
} ck_kv;

/* Attention partials of rows (token, head) r = t*H + h: o [rows][D] unnormalised, m, d [rows]
 * (natural log: m the largest scaled score, d = sum exp(s - m), o = sum exp(s - m) v). */
typedef struct {
    float *o, *m, *d;
} ck_part;

/* ---- elementwise and row kernels (cuda/k_rows.cu) ---- */
/* x[t] = fp32(table[ids[t]]) for t < step->n; table bf16 [vocab][E]. */
int ck_embed(ck_stream s, float *x, const uint16_t *table, const ck_step *step, const int32_t *ids, int64_t n_max,
             int64_t E);
/* y[t] = w * x[t] / sqrt(mean(x[t]^2) + eps), rows t < n (fp32 sum of squares per row). */
int ck_rmsnorm(ck_stream s, float *y, const float *x, const uint16_t *w, int64_t n, int64_t E, float eps);
/* gate[i] = silu(gate[i]) * up[i]; silu and the product as kernels/mtok_math.h mm_silu. */
int ck_swiglu(ck_stream s, float *gate, const float *up, int64_t n);
/* x[i] += a[i]. */
int ck_add(ck_stream s, float *x, const float *a, int64_t n);
/* o[r] /= d[r] (0 where d[r] == 0), rows r < rows, D columns: the attention output from partials. */
int ck_attn_normalize(ck_stream s, float *o, const float *d, int64_t rows, int64_t D);
/* dst[i] = bf16(src[i]) round-to-nearest-even (GEMM inputs). */
int ck_to_bf16(ck_stream s, uint16_t *dst, const float *src, int64_t n);
/* Non-finite check: if x[0, rows*width) holds a NaN or Inf, *rec = min(*rec, key) with
 * key = (seq << 41) | (index << 1) | is_inf (index < 2^40). seq orders the checks of a step, so the
 * smallest key names the first check that fired and its first bad element (NaN or Inf alike, as the
 * CPU backend's scan). */
int ck_check(ck_stream s, const float *x, int64_t rows, int64_t width, unsigned long long *rec, uint32_t seq);

/* ---- RoPE + KV append (cuda/k_rope.cu) ----
 * For rows t < step->n: rotate the first rope_dim dims of every head of q [n][H*D] and k [n][G*D] in
 * adjacent pairs with cs, sn [n][rope_dim/2] (mm_rope_pair); then, when step->append, store k and v
 * rows as bf16 into the pool at KV position step->kv_pos + t and record slot_pos = step->pos + t. */
int ck_rope_append(ck_stream s, float *q, float *k, const float *v, const ck_step *step, const float *cs,
                   const float *sn, int64_t n_max, int64_t H, int64_t G, int64_t D, int64_t rope_dim, ck_kv kv);

/* ---- matrix products ----
 * The decode GEMV (cuda/k_gemv.cu): for n <= CK_GEMV_MAX_N tokens, y = a·Wᵀ (+ bias) with W bf16
 * [rows][K] holding the rows of up to 3 outputs back to back (Q|K|V, gate|up): row r of W belongs to
 * the output i with seg[0].rows + .. + seg[i-1].rows <= r, and lands in seg[i].y[t*seg[i].ld + r - start].
 * fp32 accumulation; each output element summed in a fixed order (no atomics). */
#define CK_GEMV_MAX_N 8
typedef struct {
    float *y;
    int64_t ld, rows;
    const float *bias; /* fp32 [rows] or NULL */
} ck_gemv_seg; /* the array itself is host memory: the launcher passes it by value */
int ck_gemv(ck_stream s, const ck_gemv_seg *seg, int nseg, const float *a, int64_t lda, const uint16_t *W, int64_t n,
            int64_t K);

/* The prefill GEMM through cuBLASLt (cuda/gemm_lt.c; the CPU-executed build links
 * tests/cuda_shim/gemm_ref.cc instead): D [n][M] fp32 = A [n][K] bf16 · W [M][K]ᵀ bf16 (+ bias [M]
 * fp32 through the bias epilogue) (+ D when accumulate). ld of every matrix = its column count. */
typedef struct ck_gemm ck_gemm;
int ck_gemm_create(ck_gemm **out, size_t workspace_bytes);
void ck_gemm_free(ck_gemm *g);
int ck_gemm_bf16(ck_gemm *g, ck_stream s, float *D, const uint16_t *A, const uint16_t *W, const float *bias,
                 int64_t n, int64_t M, int64_t K, int accumulate);
/* A message for the last ck_gemm_* failure (static storage). */
const char *ck_gemm_error(void);

/* ---- attention (cuda/k_attn_decode.cu, cuda/k_attn_prefill.cu, cuda/k_merge.cu) ----
 * q [n][H*D] post-RoPE; query head h reads KV group h / (H/G); scale = 1/sqrt(D) applied to the fp32
 * score; a query at position p sees the keys whose slot_pos <= p among the listed blocks' first
 * valid rows (block b holds min(B, kv_len - b*B) valid rows). Output: partials of the n*H rows.
 *
 * Decode (n <= CK_DECODE_MAX_N): split-KV flash-decoding. Grid (G, n_split): the thread block of
 * (g, c) takes the c-th share of group g's block list and serves all H/G query heads of the group
 * for every token, so each KV byte is read once; it writes the share's partials to
 * work [n_split][n*H] (o [D], m, d). Shares past the list end write empty partials (m = -inf, d = 0):
 * the grid is fixed whatever kv_len, as a captured graph needs. work: o [n_split][n_max*H][D], m, d
 * [n_split][n_max*H]; rows of tokens t >= step->n get m = -inf, d = 0 and no o. ck_attn_combine then
 * merges the n_split shares in share order into out (mm_merge_*); its rows = n_max*H, the share stride. */
#define CK_DECODE_MAX_N 4
int ck_attn_decode(ck_stream s, const float *q, const ck_step *step, ck_kv kv, ck_blocks bl, int64_t n_max,
                   int64_t H, int n_split, ck_part work);
int ck_attn_combine(ck_stream s, ck_part out, ck_part work, int n_split, int64_t rows, int64_t D);
/* Prefill (any n): causal attention of the chunk's queries over the listed blocks (cached prefix
 * and the chunk's own keys, already appended) with tensor-core Q·Kᵀ and P·V (bf16 operands, fp32
 * accumulation, fp32 softmax with the running max). Grid (query tiles, G). Writes out. */
int ck_attn_prefill(ck_stream s, const float *q, const ck_step *step, ck_kv kv, ck_blocks bl, int64_t n_max,
                    int64_t H, ck_part out);
/* into = merge(into, from) row by row (the contract's merge op: context-parallel ranks, tiers). */
int ck_merge(ck_stream s, ck_part into, ck_part from, int64_t rows, int64_t D);

/* ---- the topk policy's block choice (cuda/k_topk.cu) ----
 * Block key summaries: per layer [n_blocks][2][G*D] bf16, per block the channel minimum row then the
 * maximum row over its valid keys (kvstore/kvsummary.h's layout and rule). Scores: [G][n_blocks]
 * fp32. The rule (mm_topk_range): for queries at step->kv_pos .. + step->n - 1, blocks [0, m0) (the
 * sinks) and [m1, nb) (the window and the chunk's own) always; of the candidates [m0, m1), the topk
 * with the highest mm_topk_bound, ties to the earlier block. */
typedef struct {
    int64_t topk;        /* N: candidate blocks chosen per KV group */
    int64_t sink_blocks; /* blocks holding the sink tokens */
    int64_t window;      /* tokens: blocks that end within the last window tokens before the chunk */
} ck_topk;
/* Rebuilds the summaries of the blocks a chunk appended to (step non-null: the blocks of positions
 * [kv_pos, kv_pos + n), n <= n_max, each from its rows [0, mm_block_rows(kv_len)) in the pool), or,
 * with step NULL, of block b from its first `rows` rows (after an upload). */
int ck_topk_summarize(ck_stream s, ck_kv kv, uint16_t *sums, const ck_step *step, int64_t n_max, int64_t b,
                      int64_t rows);
/* scores[g][b] = the bound of every candidate block b of every group g for the step's queries q
 * [n][H*D] (one token: its queries; more: their per-channel box). Nothing is written when every
 * candidate fits. (H/G)*D <= 2048. */
int ck_topk_score(ck_stream s, const float *q, const ck_step *step, const uint16_t *sums, ck_topk rule, int64_t B,
                  int64_t n_blocks, int64_t H, int64_t G, int64_t D, float *scores);
/* The block lists of the step: for group g, ids[g*cap ..] ascending and count[g], or count[g] = -1
 * when every candidate fits (every block up to kv_len); the ck_blocks that attention then reads. */
int ck_topk_select(ck_stream s, const ck_step *step, const float *scores, ck_topk rule, int64_t B, int64_t n_blocks,
                   int64_t G, int32_t *ids, int32_t *count, int64_t cap);

/* ---- GLM-4V's vision tower (cuda/k_vision.cu; the sequence: core/vision.c, the glue:
 * core/backend_cuda_vision.c; docs/VISION.md). Its GEMMs are ck_gemm_bf16, its attention
 * ck_attn_prefill over a pool that ck_vis_qkv fills, its residual ck_add. ---- */
/* LayerNorm of rows t < n of x [n][E]: mean, then the variance of x - mean, each a fixed-order fp32
 * sum (as block sums in k_rows.cu), rstd = 1/sqrt(var + eps); element i is
 * mm_ln_elem(x, mean, rstd, w[i], b[i]) (w, b fp32 [E]). add == 0: y[t] = that (y may alias x);
 * add != 0: y[t] += that (the tower's h += LN(sublayer(h)); y must not alias x). */
int ck_layernorm(ck_stream s, float *y, const float *x, const float *w, const float *b, int64_t n, int64_t E,
                 float eps, int add);
/* x[i] = mm_gelu(x[i]) for i < n (the exact erf form). */
int ck_gelu(ck_stream s, float *x, int64_t n);
/* The P x P patches of the image chw [3][S][S] fp32 (S = G*P) as bf16 rows of width ldo >= 3*P*P:
 * patch (gy, gx) in row gy*G + gx, element (c, ky, kx) at column (c*P + ky)*P + kx (the convolution
 * kernel's order), columns [3*P*P, ldo) zero (ldo a multiple of 8 keeps cuBLASLt's rows 16-byte aligned). */
int ck_vis_patches(ck_stream s, uint16_t *out, int64_t ldo, const float *chw, int64_t S, int64_t P, int64_t G);
/* The 2 x 2 stride-2 windows of grid [G][G][E] fp32 (G even) as bf16 rows [(G/2)^2][4E]: window (oy, ox)
 * in row oy*(G/2) + ox, grid cell (2oy + ky, 2ox + kx) channel c at column c*4 + ky*2 + kx. */
int ck_vis_windows(ck_stream s, uint16_t *out, const float *grid, int64_t G, int64_t E);
/* Bidirectional attention's operands from qkv [T][3E] (E = H*D; columns Q heads | K heads | V heads,
 * head-major): q [T][E] = the Q columns; token t's K and V of head h stored as bf16 (mm_f32_to_bf16)
 * into kv (kv.G == H groups of kv.D == D) at slot t, i.e. page kv.page_of[t / B] row t % B, and
 * kv.slot_pos[page*B + row] = 0. Every key then sits at position 0, so ck_attn_prefill with a step
 * {n = T, pos = 0, kv_pos = 0, kv_len = T} and every block listed lets every query see every key. */
int ck_vis_qkv(ck_stream s, float *q, const float *qkv, int64_t T, int64_t H, int64_t D, ck_kv kv);

/* ---- measurement (cuda/k_bench.cu) ---- */
/* dst[i] = src[i] over n 16-byte words: the device copy that gives the bench its HBM bandwidth. */
int ck_copy(ck_stream s, void *dst, const void *src, int64_t n16);
/* *out = argmax of x[0, n) (first index of the maximum; NaN never wins): greedy decoding on the device. */
int ck_argmax(ck_stream s, const float *x, int64_t n, int32_t *out);

#ifdef __cplusplus
}
#endif
#endif
