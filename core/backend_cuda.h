/* backend_cuda.h — what the files of the CUDA backend share (core/backend_cuda*.c only; the contract
 * is core/backend.h, the kernels cuda/ck.h). Compiled only in a build with CUDA (MTOK_HAVE_CUDA).
 *
 *   backend_cuda_plan.c   the device probe, the memory plan, the weight upload, mtok_cuda_describe
 *   backend_cuda.c        the state, the row and matrix ops, the ops table
 *   backend_cuda_attn.c   attention over the device's copy of the KV cache, its upload and bookkeeping
 *   backend_cuda_step.c   one forward chunk's life: eager, captured or replayed decode graph; the
 *                         non-finite record; the tensor hook; per-stage timing; chunk_end
 *
 * The device keeps its own copy of the KV cache (the pool of ck_kv, one per layer, logical block b in
 * page b) next to the host store of kvstore/: rope_append writes the chunk's rows on the device, the
 * same rows go to the host store (kvs_write rounds to bf16 exactly as the kernel does, so both copies
 * hold the same bits), and a block the device lacks (a loaded file, a truncate that cut it) is uploaded
 * from the store's blocks when attention streams it. valid[l][b] says how many rows of block b of
 * layer l, from row 0, the device copy holds. */
#ifndef MTOK_BACKEND_CUDA_H
#define MTOK_BACKEND_CUDA_H

#include <cuda_runtime_api.h>

#include "backend.h"
#include "../cuda/ck.h"

/* ---- weights (backend_cuda_plan.c) ---- */
typedef struct {
    uint16_t *wqkv;      /* bf16 [qd + 2 kd][E]: Wq | Wk | Wv */
    float *bqkv;         /* fp32 [qd + 2 kd], NULL without QKV bias */
    uint16_t *wo;        /* [E][qd] */
    uint16_t *wgu;       /* [2F][E]: Wgate | Wup */
    uint16_t *wd;        /* [E][F] */
    uint16_t *attn_norm; /* [E] */
    uint16_t *mlp_norm;  /* [E] */
} cu_layer;

struct mtok_backend_weights {
    int device;
    uint16_t *embed;      /* [vocab][E] */
    uint16_t *final_norm; /* [E] */
    uint16_t *output;     /* [V][E] */
    cu_layer *layers;     /* host array [n_layers] of device pointers */
    void **allocs;        /* every cudaMalloc of the upload, freed by weights_free */
    int n_allocs, cap_allocs;
    uint64_t bytes;
};

/* ---- the memory plan: every device byte a session needs, computed before anything is allocated ---- */
#define CU_WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLASLt's workspace (32 MiB: what Hopper kernels need) */
#define CU_HEADROOM_BYTES ((size_t)256 << 20) /* the runtime's own (cuBLASLt handle, graphs, kernel stacks) */
#define CU_ALLOC_ROUND ((size_t)2 << 20)      /* cudaMalloc hands out large allocations in 2 MiB pages */
#define CU_LOGIT_ROWS 16                      /* rows of the device logits buffer: the LM head runs in slices */

typedef struct {
    uint64_t weights, acts, kv, partials, logits, workspace, step, total;
    uint64_t headroom; /* CU_HEADROOM_BYTES + what cudaMalloc's rounding of each allocation may add */
    int64_t kv_blocks;      /* blocks per layer: ceil(kv_ctx / B) */
    uint64_t kv_per_token;  /* bytes of device KV per position (all layers) */
    int64_t logit_rows;
    int n_split;            /* flash-decoding shares per KV group */
    /* the step block (ck.h): header, ids, RoPE table, then the block lists of every layer */
    size_t step_head;       /* bytes of header + ids + cs + sn at most */
    size_t off_count, off_lists, step_bytes;
    int64_t list_cap;       /* entries per (layer, group) list: kv_blocks, or 0 under the exact policy */
    int64_t abf_elems;      /* bf16 GEMM input [chunk][max(E, qd, F)] */
    uint64_t topk;          /* the topk choice on the device: block key summaries and scores (0: none) */
} cu_plan;

/* The topk policy's rule when the device chooses the blocks (docs/GPU.md, "topk"): 1 and *r filled
 * when the session's parameters carry it (mtok_backend_params.kv_topk > 0: one rank, the topk
 * policy, no audit), else 0 and the host chooses (core/attn.c reads the queries back). The contract
 * (core/backend.h) announces those fields with MTOK_BACKEND_TOPK_RULE. */
static inline int cu_topk_rule(const mtok_backend_params *p, ck_topk *r) {
#ifdef MTOK_BACKEND_TOPK_RULE
    if (p->kv_topk <= 0 || p->kv_block <= 0) return 0;
    r->topk = p->kv_topk;
    r->sink_blocks = (p->kv_sinks + p->kv_block - 1) / p->kv_block;
    r->window = p->kv_window;
    return 1;
#else
    (void)p, (void)r;
    return 0;
#endif
}

int cu_weights_load(const mtok_backend_params *p, mtok_backend_weights **out);
void cu_weights_free(mtok_backend_weights *w);
/* Fills pl from p (the model, chunk, KV geometry) and the device's SM count. */
void cu_plan_make(const mtok_backend_params *p, int sms, cu_plan *pl);
/* Selects device p->device after checking it exists: MTOK_ERESOURCE naming why not. *sms: its SMs. */
int cu_device_open(int device, int *sms, char *name, size_t name_cap);
/* The mtok error for a failed CUDA call (what: the call and its object). */
int cu_fail(cudaError_t e, const char *what);
#define CU_STAGE_ELEMS ((size_t)4 << 20) /* bf16 elements converted per upload step (8 MiB) */
/* n elements of t (any dtype) from element i0 on, as bf16, to device dst through the host buffer
 * stage of CU_STAGE_ELEMS elements (synchronous copies); name is for the error. */
int cu_up_bf16(uint16_t *dst, const mk_tensor *t, int64_t i0, int64_t n, uint16_t *stage, const char *name);

/* ---- the non-finite record: one host entry per check of a step (backend_cuda_step.c) ---- */
typedef struct {
    const char *what; /* the CPU backend's wording: "query projection", "MLP block", ...; NULL: one
                       * q | k | v row, named by the element's part (a graph-style step) */
    int64_t layer;    /* -1 outside the layers */
    int64_t row0;     /* chunk row of the checked tensor's row 0 (the message adds the chunk's position) */
    int64_t width;
} cu_check_entry;

/* Stages of mtok_stage_times an op's time is added to. */
typedef enum { ST_EMBED, ST_NORM, ST_QKV, ST_ATTN, ST_ATTN_OUT, ST_MLP, ST_RESIDUAL, ST_LOGITS, ST_COUNT } cu_stage;

/* How a chunk's ops reach the device. EAGER: launched one by one on the run stream. CAPTURE: a decode
 * step launched on the run stream and recorded at once on the capture stream (the step runs eagerly,
 * the graph serves the next ones). REPLAY: the ops do their host part only and chunk_end launches the
 * graph. */
typedef enum { CU_EAGER = 0, CU_CAPTURE, CU_REPLAY } cu_mode;

struct mtok_backend_state {
    mtok_backend_params p;
    const mtok_config *c;
    const mtok_backend_weights *w;
    cu_plan plan;
    int64_t E, qd, kd, half, B, L;

    cudaStream_t run, cap; /* the run stream; the capture stream (recording only) */
    cudaStream_t issue[2]; /* where an op launches: {run}, {run, cap} while capturing, {} replaying */
    int n_issue;
    cu_mode mode;
    ck_gemm *gemm;

    /* device scratch */
    float *t[MTOK_T_COUNT];
    int64_t width[MTOK_T_COUNT];
    uint16_t *abf;                 /* bf16 copy of a GEMM's input */
    float *qkvg_d;                 /* graph-style steps: each layer's q | k | v row [L][qd + 2 kd] */
    const float *q_att;            /* the queries attention reads (T_Q, or the layer's row of qkvg_d) */
    mtok_partials part;            /* [chunk*H] */
    ck_part work;                  /* flash-decoding shares [n_split][CK_DECODE_MAX_N*H] */
    float *logits_d;               /* [logit_rows][V] */
    unsigned long long *rec_d;     /* the non-finite record */
    uint8_t *step_d;               /* the step block */
    uint16_t *pool;                /* KV pages of every layer: [L][kv_blocks][G][2][B][D] */
    int32_t *page_of, *slot_pos;   /* [kv_blocks], [kv_blocks * B] */
    ck_kv *kv;                     /* [L] */
    /* topk chosen on the device (cu_topk_rule): summaries [L][kv_blocks][2][G*D] bf16 (kvstore's
     * layout, rebuilt on the device as blocks fill: k_topk.cu), bounds [G][kv_blocks] */
    int topk_dev;
    ck_topk topk;
    uint16_t *sums_d;
    float *score_d;

    /* pinned host */
    uint8_t *step_h;               /* the step block as filled on the host */
    float *kv_h;                   /* eager append: K rows then V rows [chunk][kd] each */
    float *kvg_h;                  /* graph append: per layer K then V [L][2][kd] */
    uint16_t *up_h;                /* upload staging (page layout) */
    size_t up_cap, up_off;
    float *logits_h;               /* [logit_rows][V] */
    unsigned long long *rec_h;

    /* the device KV copy */
    int32_t *valid;                /* [L][kv_blocks] rows held from row 0 */
    int64_t *prefix;               /* [L]: positions [0, prefix) are all held */
    uint8_t *list_used;            /* [L]: the layer's lists were sent in this chunk */

    /* the step in progress */
    mtok_chunk ch;                 /* its ids pointer is not kept (valid during the chunk only) */
    const ck_step *stp_d;          /* the step header, ids and RoPE table in step_d for this chunk */
    const int32_t *ids_d;
    const float *cs_d, *sn_d;
    int deferred_kv;               /* K/V rows of every layer wait in kvg_h for chunk_end */
    float *logits_out;             /* host rows of the last logits slice, copied at chunk_end */
    int64_t logits_rows;
    int logits_asked;              /* this step asked for logits */
    int sticky_rc;                 /* an error of an op that returns none (merge) */

    int in_step;                   /* embed ran, chunk_end not yet */

    /* checks */
    cu_check_entry *chk;           /* this step's table */
    uint32_t n_chk, cap_chk;
    int sync_checks;               /* hook set: every check is read at once, as the CPU stops */

    /* the decode graph (a one-token step with the logits of its row) */
    cudaGraphExec_t gexec;
    cu_check_entry *gchk;          /* its check table */
    uint32_t n_gchk;
    int last_logits;               /* the previous step asked for logits (else the next one is not captured) */
    int graphs_off;                /* MTOK_CUDA_GRAPHS=0, or a capture failed */
    int64_t n_captured, n_replayed, n_eager_decode;

    /* the attention in progress */
    const mtok_attn_job *job;
    int32_t *cnt_h;                /* this layer's list counts (pinned, in step_h) */
    int streamed;                  /* attn_blocks got blocks for it (else, under topk_dev, the device chooses) */

    /* profiling */
    int prof_on;
    cudaEvent_t *ev;               /* [2 * cap_ev] start, end */
    uint8_t *ev_stage;
    int n_ev, cap_ev, ev_open;
    mtok_stage_times times;

    /* the hook's host copies */
    float *hbuf;
    size_t hbuf_n;
};

/* ---- backend_cuda_step.c ---- */
/* Chooses the chunk's mode and prepares it (called by embed after the step block is filled). */
int cu_step_begin(mtok_backend_state *st, const mtok_chunk *c);
/* A launch on issue stream k failed with e: 0 when k is the capture stream (the capture is abandoned
 * with a log line, the step goes on eagerly), else the error naming what. */
int cu_issue_fail(mtok_backend_state *st, int k, int e, const char *what);
/* Abandons a capture in progress (log line; the graphs stay off when why is non-NULL). */
void cu_capture_abort(mtok_backend_state *st, const char *why, int disable);
/* Adds the check of rows x width floats at x (chunk row row0) to the step; returns 0 or the error
 * (with the hook set, the record is read at once). */
int cu_check(mtok_backend_state *st, const float *x, int64_t rows, int64_t width, int64_t row0, const char *what,
             int64_t layer);
/* Waits for the run stream (MTOK error on failure). */
int cu_sync(mtok_backend_state *st, const char *what);
/* The hook: a host copy of device rows x cols at x, reported as name. */
int cu_emit(mtok_backend_state *st, const char *name, int64_t layer, int64_t pos, const float *x, int64_t rows,
            int64_t cols);
static inline int cu_hook_on(const mtok_backend_state *st) {
    return st->mode == CU_EAGER && st->p.hook && st->p.hook->fn;
}
/* Timing of one op on the run stream (no-ops unless profiling). */
void cu_prof_begin(mtok_backend_state *st);
void cu_prof_end(mtok_backend_state *st, cu_stage stage);
int cu_chunk_end(mtok_backend_state *st, const mtok_chunk *c);
/* Creates the step's resources (check table, streams' use); frees them. */
int cu_step_init(mtok_backend_state *st);
int cu_profile(mtok_backend_state *st, int on);
int cu_stage_times(const mtok_backend_state *st, mtok_stage_times *out);
void cu_step_free(mtok_backend_state *st);

/* ---- backend_cuda_attn.c ---- */
/* Layer l's block key summaries on the device [kv_blocks][2][G*D] (topk_dev). */
static inline uint16_t *cu_sums(const mtok_backend_state *st, int64_t l) {
    return st->sums_d + l * st->plan.kv_blocks * 2 * st->kd;
}
int cu_attn_begin(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p);
int cu_attn_blocks(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p, const kvs_block *blk, int n_blk);
int cu_attn_end(mtok_backend_state *st, const mtok_attn_job *j, mtok_partials *p);
void cu_merge(mtok_backend_state *st, mtok_partials *into, const mtok_partials *from, int64_t rows);
/* The device copy now holds rows [kv_pos, kv_pos + n) of layer l (rope_append). */
void cu_kv_appended(mtok_backend_state *st, int64_t l, int64_t kv_pos, int64_t n);
void cu_kv_forget(mtok_backend_state *st, int64_t kv_pos);
int cu_kv_holds(const mtok_backend_state *st, int64_t layer, int64_t kv_pos);

#endif
