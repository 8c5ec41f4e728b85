/* backend_cuda.c — the CUDA backend: the contract of core/backend.h filled with the kernels of cuda/ck.h
 * (docs/GPU.md). This file holds the session state and the row and matrix ops; the memory plan and the
 * weight upload are in backend_cuda_plan.c, attention and the device's KV copy in backend_cuda_attn.c,
 * the life of a chunk (eager, captured or replayed graph; checks; hook; timing) in backend_cuda_step.c.
 *
 * Every op does the CPU backend's arithmetic (core/backend_cpu.c) on the device, in the same order,
 * with the same checks and hook names. Where it differs, by design:
 *   - matrix products: a GEMV with fp32 inputs for n <= CK_GEMV_MAX_N rows (decode, like the CPU's),
 *     else cuBLASLt with the inputs rounded to bf16 (ck_to_bf16; fp32 accumulation): a prefill's
 *     products differ from the CPU's by the bf16 rounding of their inputs;
 *   - norm weights are bf16 on the device whatever their stored dtype (bf16 in every GLM-4 checkpoint);
 *   - the non-finite checks are read once per chunk (chunk_end), not after each op: the first check
 *     that fired, in the CPU's order, gives the same message.
 * Each op launches on every stream of st->issue (backend_cuda_step.c): the run stream, plus the capture
 * stream while a decode step is recorded as a graph, or none when a recorded graph replays it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"

/* Runs `call` (a ck_ launcher using the stream s) on every issue stream of the op. */
#define ISSUE(what, call)                                                                                             \
    for (int k_ = 0; k_ < st->n_issue; k_++) {                                                                       \
        ck_stream s = (ck_stream)st->issue[k_];                                                                      \
        int e_ = (call);                                                                                             \
        if (e_ && (e_ = cu_issue_fail(st, k_, e_, what))) return e_;                                                 \
    }

/* ---- state ---- */

static int dalloc(void *pp, size_t bytes, int *rc, const char *what) {
    void **p = pp;
    *p = NULL;
    if (*rc) return *rc;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        char w[128];
        snprintf(w, sizeof w, "cudaMalloc of %zu bytes for %s", bytes, what);
        *rc = cu_fail(e, w);
    }
    return *rc;
}

static int halloc(void *pp, size_t bytes, int *rc, const char *what) {
    void **p = pp;
    *p = NULL;
    if (*rc) return *rc;
    cudaError_t e = cudaHostAlloc(p, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        char w[128];
        snprintf(w, sizeof w, "cudaHostAlloc of %zu bytes for %s", bytes, what);
        *rc = cu_fail(e, w);
    }
    return *rc;
}

static void cu_destroy(mtok_backend_state *st) {
    if (!st) return;
    cudaSetDevice(st->p.device);
    if (st->run) cudaStreamSynchronize(st->run);
    cu_step_free(st);
    for (int i = 0; i < MTOK_T_COUNT; i++) cudaFree(st->t[i]);
    cudaFree(st->abf), cudaFree(st->qkvg_d);
    cudaFree(st->part.o), cudaFree(st->part.m), cudaFree(st->part.d);
    cudaFree(st->work.o), cudaFree(st->work.m), cudaFree(st->work.d);
    cudaFree(st->logits_d), cudaFree(st->rec_d), cudaFree(st->step_d);
    cudaFree(st->pool), cudaFree(st->page_of), cudaFree(st->slot_pos);
    cudaFree(st->sums_d), cudaFree(st->score_d);
    cudaFreeHost(st->step_h), cudaFreeHost(st->kv_h), cudaFreeHost(st->kvg_h), cudaFreeHost(st->up_h);
    cudaFreeHost(st->logits_h), cudaFreeHost(st->rec_h);
    ck_gemm_free(st->gemm);
    if (st->run) cudaStreamDestroy(st->run);
    if (st->cap) cudaStreamDestroy(st->cap);
    (void)cudaGetLastError();
    free(st->valid), free(st->prefix), free(st->list_used), free(st->kv);
    free(st);
}

static int cu_create(const mtok_backend_params *p, mtok_backend_state **out) {
    *out = NULL;
    int sms = 0;
    char name[256];
    int rc = cu_device_open(p->device, &sms, name, sizeof name);
    if (rc) return rc;
    mtok_backend_state *st = calloc(1, sizeof *st);
    if (!st) return mtok_err(MTOK_ERESOURCE, "out of memory creating the CUDA backend state");
    st->p = *p;
    st->c = &p->m->cfg;
    st->w = p->w;
    cu_plan_make(p, sms, &st->plan);
    const cu_plan *pl = &st->plan;
    const int64_t C = p->chunk, E = st->c->hidden, H = p->H, G = p->G, D = p->D, F = p->F, V = p->V;
    st->E = E, st->qd = H * D, st->kd = G * D, st->half = st->c->rope_dim / 2, st->B = p->kv_block;
    st->L = st->c->n_layers;
    const int64_t L = st->L, kd = st->kd, nb = pl->kv_blocks, B = st->B;
    st->width[MTOK_T_X] = E;
    st->width[MTOK_T_A] = E > st->qd ? E : st->qd;
    st->width[MTOK_T_Q] = st->qd;
    st->width[MTOK_T_K] = st->width[MTOK_T_V] = kd;
    st->width[MTOK_T_GATE] = st->width[MTOK_T_UP] = F;

    cudaError_t e = cudaStreamCreateWithFlags(&st->run, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&st->cap, cudaStreamNonBlocking);
    if (e != cudaSuccess) rc = cu_fail(e, "cudaStreamCreateWithFlags");
    if (!rc && (rc = ck_gemm_create(&st->gemm, CU_WORKSPACE_BYTES)) != 0)
        rc = mtok_err(MTOK_ERESOURCE, "cuda: cuBLASLt: %s", ck_gemm_error());
    for (int i = 0; i < MTOK_T_COUNT; i++) dalloc(&st->t[i], (size_t)(C * st->width[i]) * 4, &rc, "activations");
    dalloc(&st->abf, (size_t)pl->abf_elems * 2, &rc, "the bf16 GEMM input");
    dalloc(&st->qkvg_d, (size_t)(L * (st->qd + 2 * kd)) * 4, &rc, "the decode graph's q, k and v rows");
    dalloc(&st->part.o, (size_t)(C * H * D) * 4, &rc, "attention partials");
    dalloc(&st->part.m, (size_t)(C * H) * 4, &rc, "attention partials");
    dalloc(&st->part.d, (size_t)(C * H) * 4, &rc, "attention partials");
    const size_t wrows = (size_t)pl->n_split * CK_DECODE_MAX_N * (size_t)H;
    dalloc(&st->work.o, wrows * (size_t)D * 4, &rc, "decode partials");
    dalloc(&st->work.m, wrows * 4, &rc, "decode partials");
    dalloc(&st->work.d, wrows * 4, &rc, "decode partials");
    dalloc(&st->logits_d, (size_t)(pl->logit_rows * V) * 4, &rc, "logits");
    dalloc(&st->rec_d, sizeof *st->rec_d, &rc, "the non-finite record");
    dalloc(&st->step_d, pl->step_bytes, &rc, "the step block");
    dalloc(&st->pool, (size_t)(L * nb * G * 2 * B * D) * 2, &rc, "the KV cache");
    dalloc(&st->page_of, (size_t)nb * 4, &rc, "the KV page table");
    dalloc(&st->slot_pos, (size_t)(nb * B) * 4, &rc, "the KV positions");
    if ((st->topk_dev = cu_topk_rule(p, &st->topk))) {
        dalloc(&st->sums_d, (size_t)(L * nb * 2 * kd) * 2, &rc, "the topk block key summaries");
        dalloc(&st->score_d, (size_t)(G * nb) * 4, &rc, "the topk block scores");
    }
    st->up_cap = (size_t)(G * 2 * B * D) * 2 + (size_t)B * 4 + 64;
    st->up_cap = st->up_cap * 2 > ((size_t)16 << 20) ? st->up_cap * 2 : (size_t)16 << 20;
    halloc(&st->step_h, pl->step_bytes, &rc, "the step block");
    halloc(&st->kv_h, (size_t)(2 * C * kd) * 4, &rc, "K and V rows");
    halloc(&st->kvg_h, (size_t)(2 * L * kd) * 4, &rc, "K and V rows");
    halloc(&st->up_h, st->up_cap, &rc, "KV uploads");
    halloc(&st->logits_h, (size_t)(pl->logit_rows * V) * 4, &rc, "logits");
    halloc(&st->rec_h, sizeof *st->rec_h, &rc, "the non-finite record");
    st->valid = calloc((size_t)(L * nb), sizeof *st->valid);
    st->prefix = calloc((size_t)L, sizeof *st->prefix);
    st->list_used = calloc((size_t)L, 1);
    st->kv = calloc((size_t)L, sizeof *st->kv);
    if (!rc && (!st->valid || !st->prefix || !st->list_used || !st->kv))
        rc = mtok_err(MTOK_ERESOURCE, "out of memory for the CUDA backend's KV bookkeeping");
    if (!rc) rc = cu_step_init(st);
    if (rc) {
        cu_destroy(st);
        return rc;
    }
    st->part = (mtok_partials){.o = st->part.o, .m = st->part.m, .d = st->part.d, .rows = C * H, .D = D,
                               .mem = MTOK_MEM_DEVICE};
    for (int64_t l = 0; l < L; l++)
        st->kv[l] = (ck_kv){.pages = st->pool + l * nb * G * 2 * B * D, .page_of = st->page_of,
                            .slot_pos = st->slot_pos, .B = B, .G = G, .D = D};
    /* logical block b in page b (the pool is preallocated for --ctx: no paging needed yet) */
    int32_t *ident = malloc((size_t)nb * sizeof *ident);
    if (!ident) rc = mtok_err(MTOK_ERESOURCE, "out of memory for the KV page table");
    for (int64_t b = 0; !rc && b < nb; b++) ident[b] = (int32_t)b;
    e = rc ? cudaSuccess : cudaMemcpy(st->page_of, ident, (size_t)nb * 4, cudaMemcpyHostToDevice);
    free(ident);
    if (!rc && e == cudaSuccess) e = cudaMemset(st->rec_d, 0xff, sizeof *st->rec_d);
    /* under the exact policy every list is "every block up to kv_len" (count -1), set once */
    if (!rc && e == cudaSuccess && p->kv_exact)
        e = cudaMemset(st->step_d + pl->off_count, 0xff, (size_t)(L * G) * 4);
    /* the memsets ran on the legacy stream, which the non-blocking run stream does not wait for */
    if (!rc && e == cudaSuccess) e = cudaDeviceSynchronize();
    if (!rc && e != cudaSuccess) rc = cu_fail(e, "initialising the CUDA backend state");
    if (rc) {
        cu_destroy(st);
        return rc;
    }
    st->mode = CU_EAGER;
    st->issue[0] = st->run;
    st->n_issue = 1;
    mtok_log(2, "cuda: session on %s: chunk %lld, %lld KV positions in blocks of %lld, %d decode splits, graphs %s",
             name, (long long)C, (long long)p->kv_ctx, (long long)B, pl->n_split,
             st->graphs_off ? "off (MTOK_CUDA_GRAPHS=0)" : p->kv_exact ? "on"
             : st->topk_dev ? "on (topk: blocks chosen on the device)" : "off (the KV policy is not exact)");
    *out = st;
    return 0;
}

static mtok_tview cu_tensor(mtok_backend_state *st, mtok_tensor_id id) {
    return (mtok_tview){.data = st->t[id], .rows = st->p.chunk, .cols = st->width[id], .mem = MTOK_MEM_DEVICE};
}

static mtok_partials *cu_partials(mtok_backend_state *st) { return &st->part; }

static int cu_partials_create(mtok_backend_state *st, int64_t rows, mtok_partials *out) {
    int rc = 0;
    *out = (mtok_partials){.rows = rows, .D = st->p.D, .mem = MTOK_MEM_DEVICE};
    dalloc(&out->o, (size_t)(rows * st->p.D) * 4, &rc, "attention partials");
    dalloc(&out->m, (size_t)rows * 4, &rc, "attention partials");
    dalloc(&out->d, (size_t)rows * 4, &rc, "attention partials");
    if (rc) {
        cudaFree(out->o), cudaFree(out->m), cudaFree(out->d);
        (void)cudaGetLastError();
        *out = (mtok_partials){0};
    }
    return rc;
}

static void cu_partials_free(mtok_backend_state *st, mtok_partials *p) {
    (void)st;
    cudaFree(p->o), cudaFree(p->m), cudaFree(p->d);
    (void)cudaGetLastError();
    *p = (mtok_partials){0};
}

static int cu_read(mtok_backend_state *st, void *dst, const void *src, size_t bytes) {
    if (st->mode == CU_REPLAY) /* the step's tensors are computed at chunk_end, by the graph */
        return mtok_err(MTOK_EINTERNAL, "cuda: a device tensor was read during a decode step replayed as a graph");
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st->run);
    if (e != cudaSuccess) return cu_fail(e, "reading a device tensor");
    return cu_sync(st, "reading a device tensor");
}

/* ---- matrix products ----
 * y_i = x·W_iᵀ (+ b_i) for the nseg outputs whose weights are stacked in W (ck_gemv_seg): the GEMV
 * for up to CK_GEMV_MAX_N rows, else cuBLASLt on a bf16 copy of x. x holds n rows of K (ld K). */
static int proj(mtok_backend_state *st, const ck_gemv_seg *seg, int nseg, const float *x, const uint16_t *W,
                int64_t n, int64_t K, const char *what) {
    if (n <= CK_GEMV_MAX_N) {
        ISSUE(what, ck_gemv(s, seg, nseg, x, K, W, n, K));
        return 0;
    }
    ISSUE("ck_to_bf16", ck_to_bf16(s, st->abf, x, n * K));
    int64_t r = 0;
    for (int i = 0; i < nseg; i++) {
        for (int k = 0; k < st->n_issue; k++) {
            int e = ck_gemm_bf16(st->gemm, (ck_stream)st->issue[k], seg[i].y, st->abf, W + r * K, seg[i].bias, n,
                                 seg[i].rows, K, 0);
            if (e) {
                char w[320];
                snprintf(w, sizeof w, "%s (cuBLASLt: %s)", what, ck_gemm_error());
                if ((e = cu_issue_fail(st, k, e, w))) return e;
            }
        }
        r += seg[i].rows;
    }
    return 0;
}

/* ---- the operations ---- */

static int cu_embed(mtok_backend_state *st, const mtok_chunk *c) {
    cudaError_t e = cudaSetDevice(st->p.device); /* the thread may have used another device since */
    if (e != cudaSuccess) return cu_fail(e, "cudaSetDevice");
    int rc = cu_step_begin(st, c); /* the step block up (ids, positions, RoPE table); eager or graph; timing on */
    if (rc) return rc;
    float *x = st->t[MTOK_T_X];
    ISSUE("ck_embed", ck_embed(s, x, st->w->embed, st->stp_d, st->ids_d, c->n, st->E));
    /* GLM-4V: the image's rows (the vision tower's output, host) over their placeholders' lookups. A
     * chunk with such rows is never a captured step (cu_step_begin), so the copy goes on the one issue
     * stream; from pageable memory it has left c->embeds when the call returns. */
    if (c->embeds) {
        const size_t row = (size_t)st->E * sizeof(float);
        cudaError_t e = cudaMemcpyAsync(x + c->embeds_first * st->E, c->embeds, (size_t)c->embeds_n * row,
                                        cudaMemcpyHostToDevice, st->issue[0]);
        if (e != cudaSuccess) return cu_fail(e, "the upload of the image's embedding rows");
    }
    cu_prof_end(st, ST_EMBED);
    if ((rc = cu_emit(st, "embed", -1, c->pos, x, c->n, st->E))) return rc;
    return cu_check(st, x, c->n, st->E, 0, "embedding", -1);
}

/* The RoPE table goes up with the step block (cu_step_begin fills it with mk_rope_table, in double,
 * as the CPU backend's rope_table does): nothing is left to do here. */
static int cu_rope_table(mtok_backend_state *st, const mtok_chunk *c) {
    (void)st, (void)c;
    return 0;
}

static int cu_norm(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, int which) {
    const cu_layer *L = &st->w->layers[layer];
    float *a = st->t[MTOK_T_A];
    cu_prof_begin(st);
    ISSUE("ck_rmsnorm", ck_rmsnorm(s, a, st->t[MTOK_T_X], which == MTOK_NORM_ATTN ? L->attn_norm : L->mlp_norm,
                                   c->n, st->E, st->c->norm_eps));
    cu_prof_end(st, ST_NORM);
    return cu_emit(st, which == MTOK_NORM_ATTN ? "attn_norm" : "mlp_norm", layer, c->pos, a, c->n, st->E);
}

/* A graph-style (one-token) step writes each layer's q | k | v row to a row of its own in qkvg_d
 * (nothing but attention reads them there): one check covers the three (what = NULL: the element
 * says which part; q first, so the first bad one is named as the CPU's three checks would), and after
 * the last layer one copy takes every layer's k | v to the host for kvs_write in chunk_end, where
 * per-layer copies of T_K and T_V would add two graph nodes a layer. */
static int cu_qkv(mtok_backend_state *st, const mtok_chunk *c, int64_t layer) {
    const cu_layer *L = &st->w->layers[layer];
    const int64_t n = c->n, qd = st->qd, kd = st->kd, row = qd + 2 * kd;
    const int staged = st->deferred_kv; /* a graph-style step: n == 1 */
    float *q = staged ? st->qkvg_d + layer * row : st->t[MTOK_T_Q];
    float *k = staged ? q + qd : st->t[MTOK_T_K], *v = staged ? k + kd : st->t[MTOK_T_V];
    const float *b = L->bqkv;
    const ck_gemv_seg seg[3] = {{q, qd, qd, b}, {k, kd, kd, b ? b + qd : NULL}, {v, kd, kd, b ? b + qd + kd : NULL}};
    int rc;
    st->q_att = q;
    cu_prof_begin(st);
    if ((rc = proj(st, seg, 3, st->t[MTOK_T_A], L->wqkv, n, st->E, "the QKV projection"))) return rc;
    /* checked before RoPE, as the CPU does (attention would turn a NaN query into a silent zero) */
    if (staged) {
        if ((rc = cu_check(st, q, 1, row, 0, NULL, layer))) return rc;
    } else if ((rc = cu_check(st, q, n, qd, 0, "query projection", layer)) ||
               (rc = cu_check(st, k, n, kd, 0, "key projection", layer)) ||
               (rc = cu_check(st, v, n, kd, 0, "value projection", layer))) {
        return rc;
    }
    ISSUE("ck_rope_append", ck_rope_append(s, q, k, v, st->stp_d, st->cs_d, st->sn_d, n, st->p.H, st->p.G, st->p.D,
                                           st->c->rope_dim, st->kv[layer]));
    if (st->topk_dev && c->append) /* the summaries of the blocks the append touched, rebuilt (k_topk.cu) */
        ISSUE("ck_topk_summarize", ck_topk_summarize(s, st->kv[layer], cu_sums(st, layer), st->stp_d, n, 0, 0));
    if (staged && c->append && layer == st->L - 1) /* every layer's k | v row to pinned staging [L][2][kd] */
        ISSUE("the K and V row copy", (int)cudaMemcpy2DAsync(st->kvg_h, (size_t)(2 * kd) * 4, st->qkvg_d + qd,
                                                             (size_t)row * 4, (size_t)(2 * kd) * 4, (size_t)st->L,
                                                             cudaMemcpyDeviceToHost, (cudaStream_t)s));
    cu_prof_end(st, ST_QKV);
    if (c->append) {
        cu_kv_appended(st, layer, c->kv_pos, n);
        if (!st->deferred_kv) { /* eager: the host store now, before this layer's attention streams it */
            float *kh = st->kv_h, *vh = st->kv_h + st->p.chunk * kd;
            cudaError_t e = cudaMemcpyAsync(kh, k, (size_t)(n * kd) * 4, cudaMemcpyDeviceToHost, st->run);
            if (e == cudaSuccess) e = cudaMemcpyAsync(vh, v, (size_t)(n * kd) * 4, cudaMemcpyDeviceToHost, st->run);
            if (e != cudaSuccess) return cu_fail(e, "copying K and V rows to the host");
            if ((rc = cu_sync(st, "copying K and V rows to the host")) ||
                (rc = kvs_write(c->kv, layer, c->kv_pos, n, kh, vh, kd)))
                return rc;
        }
    }
    if ((rc = cu_emit(st, "q", layer, c->pos, q, n, qd)) || (rc = cu_emit(st, "k", layer, c->pos, k, n, kd)))
        return rc;
    return cu_emit(st, "v", layer, c->pos, v, n, kd);
}

static int cu_attn_out(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, mtok_partials *p) {
    const int64_t H = st->p.H, D = st->p.D, n = c->n, E = st->E;
    float *a = st->t[MTOK_T_A];
    /* finite queries and keys can still overflow to an infinite score (a NaN denominator) */
    int rc = cu_check(st, p->d, n, H, 0, "attention softmax", layer);
    if (rc) return rc;
    cu_prof_begin(st);
    ISSUE("ck_attn_normalize", ck_attn_normalize(s, p->o, p->d, n * H, D));
    if ((rc = cu_emit(st, "attn", layer, c->pos, p->o, n, H * D))) return rc;
    const ck_gemv_seg seg = {a, E, E, NULL};
    if ((rc = proj(st, &seg, 1, p->o, st->w->layers[layer].wo, n, H * D, "the attention output projection")))
        return rc;
    cu_prof_end(st, ST_ATTN_OUT);
    return cu_emit(st, "attn_proj", layer, c->pos, a, n, E);
}

static int cu_mlp(mtok_backend_state *st, const mtok_chunk *c, int64_t layer) {
    const cu_layer *L = &st->w->layers[layer];
    const int64_t E = st->E, F = st->p.F, n = c->n;
    float *a = st->t[MTOK_T_A], *gate = st->t[MTOK_T_GATE], *up = st->t[MTOK_T_UP];
    const ck_gemv_seg gu[2] = {{gate, F, F, NULL}, {up, F, F, NULL}}, down = {a, E, E, NULL};
    int rc;
    cu_prof_begin(st);
    if ((rc = proj(st, gu, 2, a, L->wgu, n, E, "the MLP gate and up projections"))) return rc;
    ISSUE("ck_swiglu", ck_swiglu(s, gate, up, n * F));
    if ((rc = cu_emit(st, "mlp_act", layer, c->pos, gate, n, F))) return rc;
    if ((rc = proj(st, &down, 1, gate, L->wd, n, F, "the MLP down projection"))) return rc;
    cu_prof_end(st, ST_MLP);
    return cu_emit(st, "mlp_proj", layer, c->pos, a, n, E);
}

static int cu_residual(mtok_backend_state *st, const mtok_chunk *c, int64_t layer, int block) {
    float *x = st->t[MTOK_T_X];
    cu_prof_begin(st);
    ISSUE("ck_add", ck_add(s, x, st->t[MTOK_T_A], c->n * st->E));
    cu_prof_end(st, ST_RESIDUAL);
    int rc = cu_emit(st, block == MTOK_BLOCK_ATTN ? "attn_res" : "mlp_res", layer, c->pos, x, c->n, st->E);
    return rc ? rc
              : cu_check(st, x, c->n, st->E, 0, block == MTOK_BLOCK_ATTN ? "attention block" : "MLP block", layer);
}

/* The final norm of rows r0.., then the LM head in slices of logit_rows rows into the device logits
 * buffer and from there to pinned memory; every slice but the last is copied to out here (a sync
 * each: only `mtok logits` asks for more rows than a slice), the last one by chunk_end. */
static int cu_logits_issue(mtok_backend_state *st, const mtok_chunk *c, int64_t r0, int64_t rows, float *out) {
    const int64_t E = st->E, V = st->p.V, LR = st->plan.logit_rows, pos0 = c->pos + r0;
    float *a = st->t[MTOK_T_A];
    int rc;
    ISSUE("ck_rmsnorm", ck_rmsnorm(s, a, st->t[MTOK_T_X] + r0 * E, st->w->final_norm, rows, E, st->c->norm_eps));
    if ((rc = cu_emit(st, "final_norm", -1, pos0, a, rows, E)) || (rc = cu_check(st, a, rows, E, r0, "final norm", -1)))
        return rc;
    const int host_check = cu_hook_on(st); /* with a hook: emitted first, then checked, as the CPU does */
    for (int64_t s0 = 0; s0 < rows; s0 += LR) {
        const int64_t m = rows - s0 < LR ? rows - s0 : LR;
        if (s0) { /* the previous slice's pinned copy must be read before this one lands */
            if ((rc = cu_sync(st, "copying logits"))) return rc;
            memcpy(out + (s0 - LR) * V, st->logits_h, (size_t)(LR * V) * sizeof *out);
        }
        const ck_gemv_seg seg = {st->logits_d, V, V, NULL};
        if ((rc = proj(st, &seg, 1, a + s0 * E, st->w->output, m, E, "the output layer"))) return rc;
        if (!host_check && (rc = cu_check(st, st->logits_d, m, V, r0 + s0, "output layer (logits)", -1))) return rc;
        ISSUE("the logits copy", (int)cudaMemcpyAsync(st->logits_h, st->logits_d, (size_t)(m * V) * 4,
                                                       cudaMemcpyDeviceToHost, (cudaStream_t)s));
        st->logits_out = out + s0 * V, st->logits_rows = m;
    }
    if (!host_check) return 0;
    if ((rc = cu_sync(st, "copying logits"))) return rc;
    memcpy(st->logits_out, st->logits_h, (size_t)(st->logits_rows * V) * sizeof *out);
    st->logits_out = NULL;
    mtok_hook_emit(st->p.hook, "logits", -1, pos0, out, rows, V, MTOK_MEM_HOST);
    const int64_t bad = mtok_backend_first_nonfinite(out, rows * V);
    return bad < 0 ? 0
                   : mtok_backend_nonfinite(st->p.m, out[bad], pos0, bad / V, bad % V, "output layer (logits)", -1);
}

static int cu_logits(mtok_backend_state *st, const mtok_chunk *c, int64_t r0, int64_t rows, float *out,
                     const mtok_gather *g) {
    if (g) return mtok_err(MTOK_EUSAGE, "--device cuda runs one rank: the output layer is not split");
    if (r0 < 0 || rows < 1 || r0 + rows > c->n)
        return mtok_err(MTOK_EINTERNAL, "logits of rows [%lld, %lld) of a %lld-row chunk", (long long)r0,
                        (long long)(r0 + rows), (long long)c->n);
    st->logits_asked = 1;
    if (st->mode == CU_REPLAY) { /* the graph computes them (of its one row); chunk_end copies them to out */
        st->logits_out = out, st->logits_rows = rows;
        return 0;
    }
    cu_prof_begin(st);
    int rc = cu_logits_issue(st, c, r0, rows, out);
    cu_prof_end(st, ST_LOGITS);
    return rc;
}

static const mtok_backend_ops cuda_ops = {
    .version = MTOK_BACKEND_VERSION,
    .name = "cuda",
    .weights_load = cu_weights_load,
    .weights_free = cu_weights_free,
    .create = cu_create,
    .destroy = cu_destroy,
    .tensor = cu_tensor,
    .partials = cu_partials,
    .partials_create = cu_partials_create,
    .partials_free = cu_partials_free,
    .embed = cu_embed,
    .rope_table = cu_rope_table,
    .norm = cu_norm,
    .qkv = cu_qkv,
    .attn_begin = cu_attn_begin,
    .attn_blocks = cu_attn_blocks,
    .attn_end = cu_attn_end,
    .merge = cu_merge,
    .attn_out = cu_attn_out,
    .mlp = cu_mlp,
    .residual = cu_residual,
    .logits = cu_logits,
    .chunk_end = cu_chunk_end,
    .read = cu_read,
    .kv_forget = cu_kv_forget,
    .kv_holds = cu_kv_holds,
    .profile = cu_profile,
    .stage_times = cu_stage_times,
    .vision = &mtok_vision_ops_cuda,
};

const mtok_backend_ops *mtok_backend_cuda(void) { return &cuda_ops; }
