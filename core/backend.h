/* backend.h — the compute backend contract (prefix mtok_backend_): what a device must provide for the
 * forward pass of core/forward.c to run on it. A table of function pointers with a version, in the
 * manner of the cold tier's kvstore/kvtier.h. The CPU backend (core/backend_cpu.c) fills it with the
 * kernels of kernels/; a CUDA backend fills the same table with its kernels, cuBLASLt products and
 * graph-captured decode steps. docs/BACKEND.md describes every operation with its shapes.
 *
 * Division of labour. core/forward.c owns the model's sequence of operations and calls one op per
 * step; core/attn.c owns the KV-store policy (which blocks a layer attends) and streams the blocks to
 * the backend's attention; core/dist.c owns the communication between ranks. The backend owns every
 * activation and every loop over one: scratch tensors live in its per-session state, in its memory
 * space, and the forward pass only ever holds views (mtok_tview) of them.
 *
 * Numerics. Activations fp32, weights in their stored dtype, KV bf16 (kvstore/kvstore.h). Attention
 * produces online-softmax partials per (query token, head) in the natural-log convention: m the
 * largest scaled score seen, d = Σ exp(score − m), o = Σ exp(score − m)·v (unnormalised). Two partials
 * merge by m = max(m₁, m₂), d = d₁e^(m₁−m) + d₂e^(m₂−m), o = o₁e^(m₁−m) + o₂e^(m₂−m); an empty one
 * (m = −inf, d = 0) drops out (kernels/cpu_ops.c mk_attn_merge). The output is o/d (0 where d = 0).
 *
 * Errors. Ops return 0 or an MTOK_E* code with mtok_err's message. A NaN or Inf in what an op produces
 * stops the pass with MTOK_EINPUT naming the position and the layer (mtok_backend_nonfinite). */
#ifndef MTOK_BACKEND_H
#define MTOK_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "../kvstore/kvstore.h"

#define MTOK_BACKEND_VERSION 4 /* 3: mtok_chunk's rope_pos and embedding override rows (GLM-4V);
                                * 4: the vision tower's ops (mtok_vision_ops) */
/* mtok_backend_params carries the topk rule (kv_topk, kv_sinks, kv_window): a device backend may
 * choose a topk layer's blocks itself (core/backend_cuda.h cu_topk_rule tests this) */
#define MTOK_BACKEND_TOPK_RULE 1

/* Tensors say where their bytes are with mtok_mem (base/mtok_base.h). */

/* A view of an fp32 tensor [rows][cols] (row stride cols) owned by the backend. */
typedef struct {
    float *data;
    int64_t rows, cols;
    mtok_mem mem;
} mtok_tview;

/* The scratch tensors of a session's state, each [chunk][width] fp32 (docs/BACKEND.md, "Tensors"). */
typedef enum {
    MTOK_T_X = 0, /* the residual stream [n][hidden] */
    MTOK_T_A,     /* normalised rows, then a projection's output [n][max(hidden, H*D)] */
    MTOK_T_Q,     /* queries after RoPE [n][H*D] */
    MTOK_T_K,     /* keys after RoPE [n][G*D] */
    MTOK_T_V,     /* values [n][G*D] */
    MTOK_T_GATE,  /* SwiGLU gate, then its product [n][F] */
    MTOK_T_UP,    /* SwiGLU up [n][F] */
    MTOK_T_COUNT
} mtok_tensor_id;

/* Attention partials of `rows` (query token, head) rows, row r = t*H + h: o [rows][D] (unnormalised
 * until attn_out divides it), m [rows], d [rows]. */
typedef struct {
    float *o, *m, *d;
    int64_t rows, D;
    mtok_mem mem;
} mtok_partials;

/* ---- the per-tensor hook ----
 * When a session has a hook, every op reports each tensor it produced (after it is complete, before
 * the op's non-finite check), in the order of the model: "embed"; per layer "attn_norm", "q", "k",
 * "v", "attn" (o/d, after the context-parallel merge), "attn_proj", "attn_res", "mlp_norm",
 * "mlp_act" (silu(gate)·up), "mlp_proj", "mlp_res"; then "final_norm" and "logits". Tensor-parallel
 * ranks report their slices (q, k, v, attn, mlp_act) and their partial sums (attn_proj, mlp_proj,
 * before the all-reduce). data stays valid only during the call. A backend with device memory
 * runs its ops one by one while a hook is set (no deferred work, no graphs) and reports a host copy
 * (MTOK_MEM_HOST). Without a hook an op pays one pointer test. */
typedef struct {
    const char *name;
    int64_t layer; /* -1 outside the layers */
    int64_t pos;   /* sequence position of row 0 */
    const float *data;
    int64_t rows, cols;
    mtok_mem mem;
} mtok_hook_tensor;
typedef void (*mtok_tensor_hook)(const mtok_hook_tensor *t, void *user);
typedef struct {
    mtok_tensor_hook fn; /* NULL: none */
    void *user;
} mtok_hook;

/* Sets (fn non-NULL) or clears the session's hook; takes effect with the next op. */
void mtok_session_set_hook(mtok_session *s, mtok_tensor_hook fn, void *user);

static inline void mtok_hook_emit(const mtok_hook *h, const char *name, int64_t layer, int64_t pos,
                                  const float *data, int64_t rows, int64_t cols, mtok_mem mem) {
    if (h && h->fn) {
        const mtok_hook_tensor t = {name, layer, pos, data, rows, cols, mem};
        h->fn(&t, h->user);
    }
}

/* ---- what the ops are given ---- */

/* One chunk of n tokens on this rank (core/forward.c forward_chunk). */
typedef struct {
    const int32_t *ids; /* [n], host, already checked against the vocabulary */
    int64_t n;
    int64_t pos;        /* sequence position of row 0 (RoPE angles, messages) */
    kvs_cache *kv;      /* the session's KV store */
    int64_t kv_pos;     /* this rank's KV-store position of row 0 */
    int append;         /* 1: this rank stores the chunk's K and V (context parallel: the span's owner) */
    /* GLM-4V (docs/VISION.md): the RoPE position of each row when it is not pos + t (after an image
     * the 1600 patch rows share one position, so position != slot); NULL: pos + t. K is stored
     * rotated by these angles; the causal mask stays over KV slots. */
    const int64_t *rope_pos; /* [n] host */
    /* Rows [embeds_first, embeds_first + embeds_n) of x take embeds' rows (host, [embeds_n][hidden])
     * instead of the embedding lookup of their ids (the vision tower's output); NULL: none. */
    const float *embeds;
    int64_t embeds_first, embeds_n;
} mtok_chunk;

/* Attention of one layer for n query rows at KV-store positions q_pos.. (core/attn.c attend). */
typedef struct {
    int64_t layer;
    int64_t q_pos, n;
    int64_t block_tokens; /* the KV store's B: block b holds positions [b*B, (b+1)*B) */
    const uint8_t *sel;   /* NULL: every block streamed; else group g attends block b iff sel[g*sel_stride + b] */
    int64_t sel_stride;
} mtok_attn_job;

/* Tensor parallel: completes this rank's vocabulary slice of n rows of logits [n][V_local] (in the
 * backend's memory space) into out [n][vocab] (host). NULL on one rank. */
typedef struct {
    int (*fn)(void *ctx, const float *local, int64_t n, float *out);
    void *ctx;
} mtok_gather;

/* Per-session parameters of a backend state. */
typedef struct {
    const mtok_model *m;
    const struct mtok_backend_weights *w; /* from weights_load */
    int64_t chunk;   /* most tokens per op */
    int64_t H, G, D; /* this rank's query heads, KV groups, head_dim */
    int64_t F, V;    /* this rank's ffn rows and vocabulary rows (tensor parallel slices) */
    int threads;     /* CPU threads the ops may use (> 0): the team size of every parallel region */
    const mtok_hook *hook; /* the session's hook (read at every op; may be changed between ops) */
    int device;      /* the device's index for a device backend (cuda:N); 0 otherwise */
    int64_t kv_ctx, kv_block; /* this rank's KV positions and the KV store's block size B (a device
                               * backend keeps its own copy of the cache in blocks of B) */
    int kv_exact;    /* 1: every attention streams all blocks up to its queries (the exact policy on one
                      * rank), so a device backend may attend its own copy without a block list and
                      * replay a captured decode step */
    int64_t kv_topk; /* > 0: the topk policy on one rank without an audit, choosing kv_topk blocks per KV
                      * group (core/attn.c): a device backend may choose them itself by the same rule
                      * where kv_holds says it holds a layer (docs/KVSTORE.md "Policy topk") */
    int64_t kv_sinks, kv_window; /* that rule's sink tokens and recent window in tokens (defaults resolved) */
} mtok_backend_params;

typedef struct mtok_backend_weights mtok_backend_weights;
typedef struct mtok_backend_state mtok_backend_state;

/* ---- the vision tower (contract v4; GLM-4V) ----
 * core/vision.c owns the tower's sequence and calls one op per step: embed, then attn and mlp per
 * layer, then project; it puts the boi and eoi rows around project's rows, divides by the scaling
 * factor and checks the result on the host. The backend owns the tower's weights in its memory (the
 * CPU backend reads the mapped checkpoint in place, a device backend uploads them) and every
 * activation, as with the language model. Shapes and formulas: core/vision.c's header, docs/BACKEND.md
 * "Vision tower". A tower is loaded for one image and freed after it. */
struct mtok_vision; /* core/vision_internal.h: the bound checkpoint tensors */
typedef struct mtok_vision_dev mtok_vision_dev;
typedef struct {
    /* Makes v's weights usable on `device` (a device backend's index; -1 for the CPU) and allocates
     * the activations of one pass; `threads` is the CPU team size. A device backend that cannot fit
     * the tower next to what is already allocated refuses, saying how much it needs. */
    int (*load)(const struct mtok_vision *v, int device, int threads, mtok_vision_dev **out);
    void (*free)(mtok_vision_dev *d);
    /* h = [cls ; patches(chw)·Wpatchᵀ + b] + positions; chw host [3][S][S] (core/image.h). */
    int (*embed)(mtok_vision_dev *d, const float *chw);
    /* h += LN_in(attention(h)·Woᵀ + bo): qkv = h·Wqkvᵀ + b, softmax(q·kᵀ/√D)·v per head, every token
     * sees every token (K and V rounded to bf16, as the language model's KV store holds them). */
    int (*attn)(mtok_vision_dev *d, int64_t layer);
    /* h += LN_post(gelu(h·W1ᵀ + b1)·W2ᵀ + b2). */
    int (*mlp)(mtok_vision_dev *d, int64_t layer);
    /* Without CLS: y = windows2x2(h)·Wconvᵀ + b, z = gelu(LN(y·Wprojᵀ)), out rows (host,
     * [(grid/2)^2][lm_hidden]) = (silu(z·Wgᵀ) ⊙ z·Wuᵀ)·Wdᵀ. */
    int (*project)(mtok_vision_dev *d, float *out);
} mtok_vision_ops;

typedef struct {
    int version; /* MTOK_BACKEND_VERSION */
    const char *name;

    /* ---- weight residency ----
     * Makes the model's (this rank's slice of) weights usable by the ops: the CPU backend uses the
     * mapped safetensors in place; a device backend uploads them (and may share one upload between
     * the sessions of a model by counting references). p->w is NULL here; the rest of p is what
     * create will get, so a device backend can check that weights, activations, KV and workspace
     * fit before it allocates anything (and refuse, saying what to lower). */
    int (*weights_load)(const mtok_backend_params *p, mtok_backend_weights **out);
    void (*weights_free)(mtok_backend_weights *w);

    /* ---- per-session state: the scratch tensors, partials and anything the ops keep ---- */
    int (*create)(const mtok_backend_params *p, mtok_backend_state **out);
    void (*destroy)(mtok_backend_state *st);
    /* A view of scratch tensor id, sized for the whole chunk. */
    mtok_tview (*tensor)(mtok_backend_state *st, mtok_tensor_id id);
    /* The layer's attention partials (attn_begin .. attn_out), chunk*H rows. */
    mtok_partials *(*partials)(mtok_backend_state *st);
    /* Further partials of `rows` rows (the topk audit's exact attention), and their release. */
    int (*partials_create)(mtok_backend_state *st, int64_t rows, mtok_partials *out);
    void (*partials_free)(mtok_backend_state *st, mtok_partials *p);

    /* ---- the operations of a pass, in the order forward.c calls them ---- */
    /* x[t] = embedding row ids[t], or c->embeds' row for the override rows. Checks x. A backend that
     * cannot take c->embeds or c->rope_pos refuses the chunk (MTOK_EUSAGE) rather than ignore them. */
    int (*embed)(mtok_backend_state *st, const mtok_chunk *c);
    /* The RoPE angles of positions c->pos .. c->pos + n - 1, or c->rope_pos[0..n) (cos, sin in double,
     * stored fp32). */
    int (*rope_table)(mtok_backend_state *st, const mtok_chunk *c);
    /* a = rmsnorm(x) with the layer's attention (which 0) or MLP (which 1) norm weight. */
    int (*norm)(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, int which);
    /* q, k, v = a·Wqᵀ + bq, a·Wkᵀ + bk, a·Wvᵀ + bv (checked); RoPE on q and k; when c->append, K and
     * V rows appended to the layer's KV blocks at c->kv_pos. */
    int (*qkv)(mtok_backend_state *st, const mtok_chunk *c, int64_t layer);
    /* Attention over KV blocks into partials p, in three steps: begin empties p's n*H rows (and
     * whatever split the backend makes of the keys); blocks accumulates one resident segment of
     * the layer's planned blocks, in block order (called once per kvs_stream_next segment); end
     * merges the backend's key splits into p in a fixed order. */
    int (*attn_begin)(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p);
    int (*attn_blocks)(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p, const kvs_block *blk,
                       int n_blk);
    int (*attn_end)(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p);
    /* into = merge(into, from) row by row, rows [0, rows) (the log-sum-exp rule above). The merge of
     * key splits, of context-parallel ranks (in rank order) and of KV tiers. */
    void (*merge)(mtok_backend_state *st, mtok_partials *into, const mtok_partials *from, int64_t rows);
    /* Checks the denominators p->d, o = o/d, a = o·Woᵀ (a tensor-parallel rank's partial sum). */
    int (*attn_out)(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, mtok_partials *p);
    /* gate, up = a·Wgᵀ, a·Wuᵀ; gate = silu(gate)·up; a = gate·Wdᵀ (a tensor-parallel rank's partial sum). */
    int (*mlp)(mtok_backend_state *st, const mtok_chunk *c, int64_t layer);
    /* x += a, checked; block 0 closes the attention block of the layer, 1 the MLP block. */
    int (*residual)(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, int block);
    /* Logits of rows [r0, r0 + rows) of the chunk: a = final_norm(x rows), out [rows][vocab] (host)
     * = a·Woutᵀ, through g when the output layer is split over ranks. Checks a and out. */
    int (*logits)(mtok_backend_state *st, const mtok_chunk *c, int64_t r0, int64_t rows, float *out,
                  const mtok_gather *g);
    /* Closes the chunk, after its last op: a backend that defers work (a device backend queues its
     * ops, replays a decode step as a CUDA graph, checks for NaN/Inf on the device and writes the
     * chunk's K and V rows into the KV store once the step is done) completes it here, so `out` of
     * logits, the KV store and any error are final when this returns. */
    int (*chunk_end)(mtok_backend_state *st, const mtok_chunk *c);

    /* ---- outside the pass ---- */
    /* Copies bytes from the backend's memory (a tensor view, partials) to host dst; returns once done.
     * Core's host-side policy code (topk's query boxes, the audit) reads device tensors through it. */
    int (*read)(mtok_backend_state *st, void *dst, const void *src, size_t bytes);
    /* The session's KV store changed behind the ops from KV position kv_pos on (truncate, reset,
     * a loaded file, a failed chunk rolled back): a backend that keeps its own copy of KV blocks
     * forgets those positions and takes them from the store's blocks again when they are streamed. */
    void (*kv_forget)(mtok_backend_state *st, int64_t kv_pos);
    /* 1 when the backend holds KV positions [0, kv_pos) of the layer itself and attends them without
     * the store's blocks (a device backend's complete copy under kv_exact): core/attn.c then streams
     * nothing for that attention (no host work, no cold-tier reads) and calls attn_begin, attn_end.
     * Under topk (kv_topk > 0; asked after the layer's qkv, kv_pos the queries' first position): 1
     * when the backend holds the rows up to the chunk's end and chooses the blocks itself; attn_begin
     * and attn_end then come with no selection (sel NULL) and no blocks. */
    int (*kv_holds)(const mtok_backend_state *st, int64_t layer, int64_t kv_pos);
    /* Per-stage timing (mtok_session_profile, mtok_session_stage_times in mtok.h): MTOK_EUSAGE from a
     * backend that does not time its ops. */
    int (*profile)(mtok_backend_state *st, int on);
    int (*stage_times)(const mtok_backend_state *st, mtok_stage_times *out);

    /* The vision tower's ops (v4); NULL: this backend runs no tower. */
    const mtok_vision_ops *vision;
} mtok_backend_ops;

enum { MTOK_NORM_ATTN = 0, MTOK_NORM_MLP = 1 };
enum { MTOK_BLOCK_ATTN = 0, MTOK_BLOCK_MLP = 1 };

/* The CPU backend (core/backend_cpu.c). */
const mtok_backend_ops *mtok_backend_cpu(void);
/* The backends' vision ops (core/backend_cpu_vision.c, core/backend_cuda_vision.c). */
extern const mtok_vision_ops mtok_vision_ops_cpu, mtok_vision_ops_cuda;
/* The CUDA backend (core/backend_cuda.c; NULL in a build without CUDA). */
const mtok_backend_ops *mtok_backend_cuda(void);
/* The CPU thread count of a session: requested when > 0, else the cores this process may run on. */
int mtok_backend_cpu_threads(int requested);

/* ---- helpers every backend shares (core/backend_cpu.c) ---- */
/* Index of the first NaN or Inf in x[0..n) (host), or -1. */
int64_t mtok_backend_first_nonfinite(const float *x, int64_t n);
/* The MTOK_EINPUT error for value v found at element `elem` of row `row` of a tensor whose row 0 is
 * at position pos0, produced by `where` (of `layer` when >= 0). */
int mtok_backend_nonfinite(const mtok_model *m, float v, int64_t pos0, int64_t row, int64_t elem, const char *where,
                           int64_t layer);

#endif
