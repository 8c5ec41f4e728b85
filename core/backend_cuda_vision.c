/* backend_cuda_vision.c — the CUDA backend's vision-tower ops (mtok_vision_ops of core/backend.h; the
 * sequence and the formulas: core/vision.c; the kernels: cuda/ck.h "GLM-4V's vision tower").
 *
 * What runs where. Every product is ck_gemm_bf16 (cuBLASLt; bias through its epilogue), so the
 * tower's activations are rounded to bf16 at each product's input, as the language model's prefill
 * GEMMs round theirs; accumulation, LayerNorm, GELU and the residual stream stay fp32. The attention
 * is the language model's prefill kernel (ck_attn_prefill) over a pool that ck_vis_qkv fills with
 * every slot at position 0, so no query is masked from any key: bidirectional attention with no
 * kernel of its own. One tower is uploaded per image (core/vision_prompt.c loads, runs and frees
 * it), on a stream of its own; the ops queue their work and project's copy to the host ends it.
 *
 * Memory. Before anything is allocated, load adds up the weights (bf16) and the activations of one
 * pass and compares them with cudaMemGetInfo's free bytes less CU_HEADROOM_BYTES, refusing with both
 * figures: the language model's session (weights, KV pool) is already resident on the device.
 * GLM-4V-9B: 4.5e9 weights = 9.0 GB, activations ~1.0 GB (T = 6401 rows; the MLP's [T][15360] fp32
 * intermediate is the largest). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "vision_internal.h"

#define VIS_B 64 /* pool rows per page (any size works: the prefill kernel tiles keys by 32) */

typedef struct {
    uint16_t *wqkv, *wo, *w1, *w2; /* bf16 [3E][E], [E][E], [F][E], [E][F] */
    float *bqkv, *bo, *b1, *b2;    /* fp32 [3E], [E], [F], [E] */
    float *ln1w, *ln1b, *ln2w, *ln2b; /* [E]: after attention, after the MLP */
} cv_layer;

struct mtok_vision_dev {
    const struct mtok_vision *v;
    int device;
    cudaStream_t s;
    ck_gemm *gemm;
    int64_t E, F, H, D, T, N, N2, G, S, P, K, Kp, L, LF, nb;
    /* weights */
    uint16_t *wpatch;   /* [E][Kp]: the patch kernel with zero columns [K, Kp) */
    float *bpatch, *cls, *pos; /* [E], [E], [T][E] */
    cv_layer *layers;   /* host array of device pointers */
    uint16_t *wconv, *wproj, *wgate, *wup, *wdown; /* [L][4E], [L][L], [LF][L], [LF][L], [L][LF] */
    float *bconv, *lngw, *lngb; /* [L] */
    /* activations */
    float *chw, *h, *a, *qkv, *q, *ff;  /* [3][S][S], [T][E] x 3, [T][3E] (q [T][E] apart), [T][F] */
    uint16_t *abf;                      /* a product's bf16 input, the widest of them */
    float *y, *z, *g, *u, *o;          /* [N2][L], [N2][L], [N2][LF] x 2, [N2][L] */
    ck_part part;                       /* [T*H][D], [T*H], [T*H] */
    ck_kv kv;                           /* H groups of D, VIS_B rows a page, nb pages */
    ck_step *step;
    int32_t *count;                     /* [H] = -1: every block */
    void **allocs;
    int n_allocs;
    uint64_t bytes;
};

/* One cudaMalloc of the tower (freed with it); *rc set and NULL on failure. */
static void *vis_alloc(mtok_vision_dev *d, size_t bytes, int *rc) {
    if (*rc) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        char w[96];
        snprintf(w, sizeof w, "cudaMalloc of %zu bytes for the vision tower", bytes);
        *rc = cu_fail(e, w);
        return NULL;
    }
    d->allocs[d->n_allocs++] = p;
    d->bytes += bytes;
    return p;
}

static void cv_free(mtok_vision_dev *d) {
    if (!d) return;
    cudaSetDevice(d->device);
    if (d->s) cudaStreamSynchronize(d->s);
    for (int i = 0; i < d->n_allocs; i++) cudaFree(d->allocs[i]);
    if (d->gemm) ck_gemm_free(d->gemm);
    if (d->s) cudaStreamDestroy(d->s);
    free(d->allocs), free(d->layers), free(d);
}

/* fp32 host array (the tower's own copies of small tensors) to the device */
static int up_f32(float *dst, const float *src, int64_t n, const char *name) {
    cudaError_t e = cudaMemcpy(dst, src, (size_t)n * 4, cudaMemcpyHostToDevice);
    return e == cudaSuccess ? 0 : cu_fail(e, name);
}

/* a 1-D tensor in its stored dtype to fp32 on the device, through stage (CU_STAGE_ELEMS floats' room) */
static int up_vec(float *dst, const mk_tensor *t, int64_t n, float *stage, const char *name) {
    for (int64_t i = 0; i < n; i++) stage[i] = mk_get(t, i);
    return up_f32(dst, stage, n, name);
}

/* The bytes of one tower on the device: weights (bf16 matrices, fp32 vectors) and activations. */
static void cv_sizes(const mtok_vision_dev *d, uint64_t *weights, uint64_t *acts, int64_t *abf_n) {
    const int64_t E = d->E, F = d->F, T = d->T, L = d->L, LF = d->LF, N2 = d->N2;
    const uint64_t per_layer = 2 * (uint64_t)(3 * E * E + E * E + 2 * E * F) + 4 * (uint64_t)(3 * E + 6 * E + F);
    *weights = 2 * (uint64_t)(E * d->Kp + L * 4 * E + L * L + 3 * L * LF) + 4 * (uint64_t)(2 * E + T * E + 3 * L) +
               (uint64_t)d->v->cfg.n_layers * per_layer;
    int64_t a = T * d->Kp;
    if (T * F > a) a = T * F;
    if (N2 * 4 * E > a) a = N2 * 4 * E;
    if (N2 * LF > a) a = N2 * LF;
    *abf_n = a;
    const uint64_t pool = (uint64_t)(d->nb * VIS_B) * (uint64_t)(2 * E) * 2 + (uint64_t)(d->nb * VIS_B + d->nb) * 4;
    *acts = 4 * (uint64_t)(3 * d->S * d->S + 3 * T * E + 3 * T * E + T * F + 3 * N2 * L + 2 * N2 * LF) +
            2 * (uint64_t)a + 4 * (uint64_t)(T * E + 2 * T * d->H) + pool + CU_WORKSPACE_BYTES + 256;
}

static int upload(mtok_vision_dev *d, int *rc) {
    const struct mtok_vision *v = d->v;
    const int64_t E = d->E, F = d->F, L = d->L, LF = d->LF, T = d->T, K = d->K, Kp = d->Kp;
    /* bf16 staging for cu_up_bf16; the widest vector (widened to fp32 by up_vec) fits easily */
    int64_t vec = 3 * E > F ? 3 * E : F;
    if (L > vec) vec = L;
    const size_t stage_b = CU_STAGE_ELEMS * 2 > (size_t)vec * 4 ? CU_STAGE_ELEMS * 2 : (size_t)vec * 4;
    uint16_t *stage = malloc(stage_b);
    if (!stage) return *rc = mtok_err(MTOK_ERESOURCE, "out of memory for the vision tower's upload buffer");
    float *fs = (float *)stage;
    d->wpatch = vis_alloc(d, (size_t)(E * Kp) * 2, rc);
    if (!*rc) {
        cudaError_t e = cudaMemset(d->wpatch, 0, (size_t)(E * Kp) * 2);
        if (e != cudaSuccess) *rc = cu_fail(e, "cudaMemset of the patch kernel");
    }
    for (int64_t r = 0; !*rc && r < E; r++) /* row r: the kernel's K columns, then Kp - K zeros */
        *rc = cu_up_bf16(d->wpatch + r * Kp, &v->w_patch, r * K, K, stage, "the patch embedding");
    d->bpatch = vis_alloc(d, (size_t)E * 4, rc), d->cls = vis_alloc(d, (size_t)E * 4, rc);
    d->pos = vis_alloc(d, (size_t)(T * E) * 4, rc);
    if (!*rc)
        (void)((*rc = up_f32(d->bpatch, v->b_patch, E, "the patch bias")) ||
               (*rc = up_f32(d->cls, v->cls, E, "the CLS embedding")) ||
               (*rc = up_f32(d->pos, v->pos, T * E, "the position embeddings")));
    for (int64_t l = 0; !*rc && l < v->cfg.n_layers; l++) {
        const vis_layer *W = &v->layers[l];
        cv_layer *C = &d->layers[l];
        char nm[64];
        snprintf(nm, sizeof nm, "vision layer %lld", (long long)l);
        C->wqkv = vis_alloc(d, (size_t)(3 * E * E) * 2, rc), C->wo = vis_alloc(d, (size_t)(E * E) * 2, rc);
        C->w1 = vis_alloc(d, (size_t)(F * E) * 2, rc), C->w2 = vis_alloc(d, (size_t)(E * F) * 2, rc);
        C->bqkv = vis_alloc(d, (size_t)(3 * E) * 4, rc), C->bo = vis_alloc(d, (size_t)E * 4, rc);
        C->b1 = vis_alloc(d, (size_t)F * 4, rc), C->b2 = vis_alloc(d, (size_t)E * 4, rc);
        C->ln1w = vis_alloc(d, (size_t)E * 4, rc), C->ln1b = vis_alloc(d, (size_t)E * 4, rc);
        C->ln2w = vis_alloc(d, (size_t)E * 4, rc), C->ln2b = vis_alloc(d, (size_t)E * 4, rc);
        if (*rc) break;
        (void)((*rc = cu_up_bf16(C->wqkv, &W->w_qkv, 0, 3 * E * E, stage, nm)) ||
               (*rc = cu_up_bf16(C->wo, &W->w_o, 0, E * E, stage, nm)) ||
               (*rc = cu_up_bf16(C->w1, &W->w_fc1, 0, F * E, stage, nm)) ||
               (*rc = cu_up_bf16(C->w2, &W->w_fc2, 0, E * F, stage, nm)) ||
               (*rc = up_vec(C->bqkv, &W->b_qkv, 3 * E, fs, nm)) || (*rc = up_vec(C->bo, &W->b_o, E, fs, nm)) ||
               (*rc = up_vec(C->b1, &W->b_fc1, F, fs, nm)) || (*rc = up_vec(C->b2, &W->b_fc2, E, fs, nm)) ||
               (*rc = up_f32(C->ln1w, W->ln_attn_w, E, nm)) || (*rc = up_f32(C->ln1b, W->ln_attn_b, E, nm)) ||
               (*rc = up_f32(C->ln2w, W->ln_mlp_w, E, nm)) || (*rc = up_f32(C->ln2b, W->ln_mlp_b, E, nm)));
    }
    d->wconv = vis_alloc(d, (size_t)(L * 4 * E) * 2, rc), d->wproj = vis_alloc(d, (size_t)(L * L) * 2, rc);
    d->wgate = vis_alloc(d, (size_t)(LF * L) * 2, rc), d->wup = vis_alloc(d, (size_t)(LF * L) * 2, rc);
    d->wdown = vis_alloc(d, (size_t)(L * LF) * 2, rc);
    d->bconv = vis_alloc(d, (size_t)L * 4, rc), d->lngw = vis_alloc(d, (size_t)L * 4, rc);
    d->lngb = vis_alloc(d, (size_t)L * 4, rc);
    if (!*rc)
        (void)((*rc = cu_up_bf16(d->wconv, &v->w_conv, 0, L * 4 * E, stage, "the downsampling convolution")) ||
               (*rc = cu_up_bf16(d->wproj, &v->w_proj, 0, L * L, stage, "the GLU projection")) ||
               (*rc = cu_up_bf16(d->wgate, &v->w_gate, 0, LF * L, stage, "the GLU gate")) ||
               (*rc = cu_up_bf16(d->wup, &v->w_up, 0, LF * L, stage, "the GLU up projection")) ||
               (*rc = cu_up_bf16(d->wdown, &v->w_down, 0, L * LF, stage, "the GLU down projection")) ||
               (*rc = up_vec(d->bconv, &v->b_conv, L, fs, "the convolution bias")) ||
               (*rc = up_f32(d->lngw, v->ln_glu_w, L, "the GLU norm")) ||
               (*rc = up_f32(d->lngb, v->ln_glu_b, L, "the GLU norm")));
    free(stage);
    return *rc;
}

static int cv_load(const struct mtok_vision *v, int device, int threads, mtok_vision_dev **out) {
    (void)threads;
    *out = NULL;
    const mtok_vision_config *c = &v->cfg;
    int sms = 0, rc;
    char name[128];
    if ((rc = cu_device_open(device, &sms, name, sizeof name))) return rc;
    mtok_vision_dev *d = calloc(1, sizeof *d);
    const int max_allocs = 40 + 12 * (int)c->n_layers; /* every valloc below */
    if (d) d->allocs = calloc((size_t)max_allocs, sizeof *d->allocs);
    if (d) d->layers = calloc((size_t)c->n_layers, sizeof *d->layers);
    if (!d || !d->allocs || !d->layers) {
        if (d) free(d->allocs), free(d->layers), free(d);
        return mtok_err(MTOK_ERESOURCE, "vision tower: out of memory");
    }
    d->v = v, d->device = device;
    d->E = c->hidden, d->F = c->ffn, d->H = c->n_heads, d->D = c->head_dim, d->G = c->grid;
    d->N = d->G * d->G, d->T = d->N + 1, d->N2 = (d->G / 2) * (d->G / 2), d->S = c->image, d->P = c->patch;
    d->K = 3 * d->P * d->P, d->Kp = (d->K + 7) / 8 * 8, d->L = c->lm_hidden, d->LF = c->lm_ffn;
    d->nb = (d->T + VIS_B - 1) / VIS_B;
    if (d->D != 32 && d->D != 64 && d->D != 112 && d->D != 128) { /* ck_attn_prefill's instances */
        cv_free(d);
        return mtok_err(MTOK_EUSAGE, "--device cuda: the vision tower's head_dim %lld is not one the attention "
                        "kernel takes (32, 64, 112 or 128)", (long long)c->head_dim);
    }
    uint64_t wb, ab;
    int64_t abf_n;
    cv_sizes(d, &wb, &ab, &abf_n);
    size_t free_b = 0, total_b = 0;
    cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
    if (e != cudaSuccess) {
        cv_free(d);
        return cu_fail(e, "cudaMemGetInfo");
    }
    if (wb + ab + CU_HEADROOM_BYTES > free_b) {
        cv_free(d);
        const double gib = 1073741824.0;
        return mtok_err(MTOK_ERESOURCE, "--device cuda: the vision tower needs %.2f GiB on %s (weights %.2f, "
                        "activations %.2f, headroom %.2f) and %.2f GiB are free next to the language model's "
                        "session: lower --ctx or run the tower on the CPU (--vision-device cpu)",
                        (double)(wb + ab + CU_HEADROOM_BYTES) / gib, name, (double)wb / gib, (double)ab / gib,
                        (double)CU_HEADROOM_BYTES / gib, (double)free_b / gib);
    }
    e = cudaStreamCreateWithFlags(&d->s, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        d->s = NULL;
        cv_free(d);
        return cu_fail(e, "cudaStreamCreate for the vision tower");
    }
    if ((rc = ck_gemm_create(&d->gemm, CU_WORKSPACE_BYTES))) {
        d->gemm = NULL;
        cv_free(d);
        return mtok_err(MTOK_ERESOURCE, "--device cuda: the vision tower's GEMM: %s", ck_gemm_error());
    }
    const int64_t E = d->E, T = d->T, H = d->H, N2 = d->N2, L = d->L, LF = d->LF;
    if (upload(d, &rc)) {
        cv_free(d);
        return rc;
    }
    d->chw = vis_alloc(d, (size_t)(3 * d->S * d->S) * 4, &rc);
    d->h = vis_alloc(d, (size_t)(T * E) * 4, &rc), d->a = vis_alloc(d, (size_t)(T * E) * 4, &rc);
    d->qkv = vis_alloc(d, (size_t)(T * 3 * E) * 4, &rc), d->q = vis_alloc(d, (size_t)(T * E) * 4, &rc);
    d->ff = vis_alloc(d, (size_t)(T * d->F) * 4, &rc), d->abf = vis_alloc(d, (size_t)abf_n * 2, &rc);
    d->y = vis_alloc(d, (size_t)(N2 * L) * 4, &rc), d->z = vis_alloc(d, (size_t)(N2 * L) * 4, &rc);
    d->g = vis_alloc(d, (size_t)(N2 * LF) * 4, &rc), d->u = vis_alloc(d, (size_t)(N2 * LF) * 4, &rc);
    d->o = vis_alloc(d, (size_t)(N2 * L) * 4, &rc);
    d->part.o = vis_alloc(d, (size_t)(T * E) * 4, &rc);
    d->part.m = vis_alloc(d, (size_t)(T * H) * 4, &rc), d->part.d = vis_alloc(d, (size_t)(T * H) * 4, &rc);
    d->kv.pages = vis_alloc(d, (size_t)(d->nb * VIS_B * 2 * E) * 2, &rc);
    d->kv.slot_pos = vis_alloc(d, (size_t)(d->nb * VIS_B) * 4, &rc);
    int32_t *page_of = vis_alloc(d, (size_t)d->nb * 4, &rc);
    d->kv.page_of = page_of, d->kv.B = VIS_B, d->kv.G = H, d->kv.D = d->D;
    d->step = vis_alloc(d, sizeof *d->step, &rc), d->count = vis_alloc(d, (size_t)H * 4, &rc);
    /* the fixed inputs of the attention: the identity page table, every group's list "all blocks", one step */
    int32_t *host = rc ? NULL : malloc((size_t)(d->nb > H ? d->nb : H) * 4);
    if (!rc && !host) rc = mtok_err(MTOK_ERESOURCE, "vision tower: out of memory");
    if (!rc) {
        for (int64_t b = 0; b < d->nb; b++) host[b] = (int32_t)b;
        e = cudaMemcpy(page_of, host, (size_t)d->nb * 4, cudaMemcpyHostToDevice);
        for (int64_t g = 0; g < H; g++) host[g] = -1;
        if (e == cudaSuccess) e = cudaMemcpy(d->count, host, (size_t)H * 4, cudaMemcpyHostToDevice);
        const ck_step st = {.n = T, .pos = 0, .kv_pos = 0, .kv_len = T, .append = 0};
        if (e == cudaSuccess) e = cudaMemcpy(d->step, &st, sizeof st, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) rc = cu_fail(e, "the vision tower's attention tables");
    }
    free(host);
    if (rc) {
        cv_free(d);
        return rc;
    }
    mtok_log(2, "cuda: vision tower on %s: %.2f GiB of weights, %.2f GiB of activations", name,
             (double)wb / 1073741824.0, (double)ab / 1073741824.0);
    *out = d;
    return 0;
}

/* ---- the ops: each queues its kernels on the tower's stream ---- */

#define CK(what, call)                                                                                                \
    do {                                                                                                              \
        int e_ = (call);                                                                                              \
        if (e_) return cu_fail((cudaError_t)e_, what);                                                                \
    } while (0)

/* D [n][M] = abf [n][K]·Wᵀ + bias, abf already holding the product's bf16 input */
static int gemm_bf(mtok_vision_dev *d, float *D, const uint16_t *W, const float *bias, int64_t n, int64_t M,
                   int64_t K, const char *what) {
    if (ck_gemm_bf16(d->gemm, (ck_stream)d->s, D, d->abf, W, bias, n, M, K, 0))
        return mtok_err(MTOK_ERESOURCE, "--device cuda: the vision tower's %s (cuBLASLt: %s)", what, ck_gemm_error());
    return 0;
}

/* D [n][M] = bf16(x [n][K])·Wᵀ + bias: x rounded into abf first, then the product */
static int gemm(mtok_vision_dev *d, float *D, const float *x, const uint16_t *W, const float *bias, int64_t n,
                int64_t M, int64_t K, const char *what) {
    CK("ck_to_bf16", ck_to_bf16((ck_stream)d->s, d->abf, x, n * K));
    return gemm_bf(d, D, W, bias, n, M, K, what);
}

static int cv_embed(mtok_vision_dev *d, const float *chw) {
    const int64_t E = d->E, T = d->T;
    cudaSetDevice(d->device);
    cudaError_t e = cudaMemcpyAsync(d->chw, chw, (size_t)(3 * d->S * d->S) * 4, cudaMemcpyHostToDevice, d->s);
    if (e == cudaSuccess) e = cudaMemcpyAsync(d->h, d->cls, (size_t)E * 4, cudaMemcpyDeviceToDevice, d->s);
    if (e != cudaSuccess) return cu_fail(e, "the image's upload");
    CK("ck_vis_patches", ck_vis_patches((ck_stream)d->s, d->abf, d->Kp, d->chw, d->S, d->P, d->G));
    int rc = gemm_bf(d, d->h + E, d->wpatch, d->bpatch, d->N, E, d->Kp, "patch embedding");
    if (rc) return rc;
    CK("ck_add", ck_add((ck_stream)d->s, d->h, d->pos, T * E)); /* (x·Wᵀ + b) + pos; row 0: cls + pos */
    return 0;
}

static int cv_attn(mtok_vision_dev *d, int64_t layer) {
    const cv_layer *C = &d->layers[layer];
    const int64_t E = d->E, T = d->T, H = d->H;
    const ck_stream s = (ck_stream)d->s;
    const ck_blocks bl = {.ids = NULL, .count = d->count, .cap = 0};
    int rc = gemm(d, d->qkv, d->h, C->wqkv, C->bqkv, T, 3 * E, E, "QKV projection");
    if (rc) return rc;
    CK("ck_vis_qkv", ck_vis_qkv(s, d->q, d->qkv, T, H, d->D, d->kv));
    CK("ck_attn_prefill", ck_attn_prefill(s, d->q, d->step, d->kv, bl, T, H, d->part));
    CK("ck_attn_normalize", ck_attn_normalize(s, d->part.o, d->part.d, T * H, d->D));
    if ((rc = gemm(d, d->a, d->part.o, C->wo, C->bo, T, E, E, "attention output projection"))) return rc;
    CK("ck_layernorm", ck_layernorm(s, d->h, d->a, C->ln1w, C->ln1b, T, E, (float)d->v->cfg.ln_eps, 1));
    return 0;
}

static int cv_mlp(mtok_vision_dev *d, int64_t layer) {
    const cv_layer *C = &d->layers[layer];
    const int64_t E = d->E, F = d->F, T = d->T;
    const ck_stream s = (ck_stream)d->s;
    int rc = gemm(d, d->ff, d->h, C->w1, C->b1, T, F, E, "MLP fc1");
    if (rc) return rc;
    CK("ck_gelu", ck_gelu(s, d->ff, T * F));
    if ((rc = gemm(d, d->a, d->ff, C->w2, C->b2, T, E, F, "MLP fc2"))) return rc;
    CK("ck_layernorm", ck_layernorm(s, d->h, d->a, C->ln2w, C->ln2b, T, E, (float)d->v->cfg.ln_eps, 1));
    return 0;
}

static int cv_project(mtok_vision_dev *d, float *out) {
    const int64_t E = d->E, L = d->L, LF = d->LF, N2 = d->N2;
    const ck_stream s = (ck_stream)d->s;
    CK("ck_vis_windows", ck_vis_windows(s, d->abf, d->h + E, d->G, E)); /* without the CLS row */
    int rc = gemm_bf(d, d->y, d->wconv, d->bconv, N2, L, 4 * E, "downsampling convolution");
    if (!rc) rc = gemm(d, d->z, d->y, d->wproj, NULL, N2, L, L, "GLU projection");
    if (rc) return rc;
    CK("ck_layernorm", ck_layernorm(s, d->z, d->z, d->lngw, d->lngb, N2, L, (float)d->v->cfg.glu_eps, 0));
    CK("ck_gelu", ck_gelu(s, d->z, N2 * L));
    if ((rc = gemm(d, d->g, d->z, d->wgate, NULL, N2, LF, L, "GLU gate")) ||
        (rc = gemm_bf(d, d->u, d->wup, NULL, N2, LF, L, "GLU up projection")))
        return rc;
    CK("ck_swiglu", ck_swiglu(s, d->g, d->u, N2 * LF));
    if ((rc = gemm(d, d->o, d->g, d->wdown, NULL, N2, L, LF, "GLU down projection"))) return rc;
    cudaError_t e = cudaMemcpyAsync(out, d->o, (size_t)(N2 * L) * 4, cudaMemcpyDeviceToHost, d->s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(d->s);
    return e == cudaSuccess ? 0 : cu_fail(e, "the vision tower's pass");
}

const mtok_vision_ops mtok_vision_ops_cuda = {
    .load = cv_load,
    .free = cv_free,
    .embed = cv_embed,
    .attn = cv_attn,
    .mlp = cv_mlp,
    .project = cv_project,
};
