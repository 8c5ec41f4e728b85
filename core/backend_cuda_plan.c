/* backend_cuda_plan.c — the CUDA backend's device probe, memory plan and weight upload, and the
 * `mtok info` line (mtok_cuda_describe).
 *
 * Nothing is allocated on a device before the whole session is known to fit: weights_load receives
 * the parameters create will get (core/backend.h), so it adds up every device byte the session needs
 * (weights, activations, the KV pool for --ctx positions, partials, logits, cuBLASLt's workspace, the
 * step block) and compares the sum with what cudaMemGetInfo says is free. A plan that does not fit is
 * refused with MTOK_ERESOURCE, each part in GiB and what to lower; otherwise the weights go up, every
 * matrix as bf16 (bf16 as stored, f16 and f32 converted on the host), Wq|Wk|Wv and Wgate|Wup of a
 * layer concatenated so a decode GEMV reads each layer's input once for them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"

#ifndef MTOK_CUDA_ARCH_LIST /* the fatbinary's real architectures (CMakeLists.txt MTOK_CUDA_ARCHS) */
#define MTOK_CUDA_ARCH_LIST "sm_80, sm_90a"
#endif

#define GIB(x) ((double)(x) / (double)(1ull << 30))

int cu_fail(cudaError_t e, const char *what) {
    (void)cudaGetLastError(); /* the launchers read the last error: leave none behind */
    return mtok_err(e == cudaErrorInvalidValue ? MTOK_EINTERNAL : MTOK_ERESOURCE, "cuda: %s failed: %s (%s)", what,
                    cudaGetErrorString(e), cudaGetErrorName(e));
}

/* "cuda" for the first device (what --device cuda names), "cuda:N" otherwise */
/* cudaErrorInsufficientDriver means no driver at all, or one older than this runtime needs (CUDA 13
 * wants r580+; many rented machines run 535-570): the driver's own version tells them apart. */
static void driver_why(char *buf, size_t cap) {
    int drv = 0, rt = 0;
    (void)cudaDriverGetVersion(&drv);
    (void)cudaRuntimeGetVersion(&rt);
    (void)cudaGetLastError();
    if (drv > 0)
        snprintf(buf, cap, "the NVIDIA driver supports CUDA %d.%d, this build's runtime needs %d.%d (a newer driver)",
                 drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    else
        snprintf(buf, cap, "no NVIDIA driver");
}

static const char *dev_name(int device, char *buf, size_t cap) {
    if (device == 0) snprintf(buf, cap, "cuda");
    else snprintf(buf, cap, "cuda:%d", device);
    return buf;
}

int cu_device_open(int device, int *sms, char *name, size_t name_cap) {
    char dn[32];
    dev_name(device, dn, sizeof dn);
    int count = 0; /* cudaGetDeviceCount leaves it unwritten when there is no driver */
    cudaError_t e = cudaGetDeviceCount(&count);
    (void)cudaGetLastError();
    if (e == cudaErrorInsufficientDriver) {
        char why[160];
        driver_why(why, sizeof why);
        return mtok_err(MTOK_ERESOURCE, "--device %s: %s (cudaErrorInsufficientDriver)", dn, why);
    }
    if (e == cudaErrorNoDevice || (e == cudaSuccess && count <= 0))
        return mtok_err(MTOK_ERESOURCE, "--device %s: no CUDA device (cudaErrorNoDevice)", dn);
    if (e != cudaSuccess)
        return mtok_err(MTOK_ERESOURCE, "--device %s: the CUDA runtime finds no device: %s (%s)", dn,
                        cudaGetErrorString(e), cudaGetErrorName(e));
    if (device >= count)
        return mtok_err(MTOK_ERESOURCE, "--device %s but only %d device%s (cuda:0%s)", dn, count, count == 1 ? "" : "s",
                        count == 1 ? "" : " is the first");
    if ((e = cudaSetDevice(device)) != cudaSuccess) return cu_fail(e, "cudaSetDevice");
    if ((e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess)
        return cu_fail(e, "cudaDeviceGetAttribute(multiProcessorCount)");
    struct cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) return cu_fail(e, "cudaGetDeviceProperties");
    snprintf(name, name_cap, "%s", prop.name);
    return 0;
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

void cu_plan_make(const mtok_backend_params *p, int sms, cu_plan *pl) {
    const mtok_config *c = &p->m->cfg;
    const uint64_t E = (uint64_t)c->hidden, H = (uint64_t)p->H, G = (uint64_t)p->G, D = (uint64_t)p->D;
    const uint64_t F = (uint64_t)p->F, V = (uint64_t)p->V, L = (uint64_t)c->n_layers, C = (uint64_t)p->chunk;
    const uint64_t qd = H * D, kd = G * D, half = (uint64_t)c->rope_dim / 2, B = (uint64_t)p->kv_block;
    const uint64_t ew = E > qd ? E : qd, wmax = ew > F ? ew : F;
    memset(pl, 0, sizeof *pl);
    /* weights: matrices and norms bf16, biases fp32 */
    uint64_t wl = ((qd + 2 * kd) * E + E * qd + 2 * F * E + E * F + 2 * E) * 2;
    if (c->qkv_bias) wl += (qd + 2 * kd) * 4;
    pl->weights = L * wl + ((uint64_t)c->vocab * E + V * E + E) * 2;
    /* activations: the fp32 scratch of core/backend.h and the bf16 copy of a GEMM input */
    pl->abf_elems = (int64_t)(C * wmax);
    pl->acts = C * (E + ew + qd + 2 * kd + 2 * F) * 4 + C * wmax * 2 + L * (qd + 2 * kd) * 4;
    /* flash-decoding: about two thread blocks per SM over the KV groups */
    pl->n_split = (int)(2 * (uint64_t)(sms > 0 ? sms : 1) / G);
    pl->n_split = pl->n_split < 1 ? 1 : pl->n_split > 1024 ? 1024 : pl->n_split;
    pl->partials = C * H * (D + 2) * 4 + (uint64_t)pl->n_split * CK_DECODE_MAX_N * H * (D + 2) * 4;
    pl->logit_rows = (int64_t)(C < CU_LOGIT_ROWS ? C : CU_LOGIT_ROWS);
    pl->logits = (uint64_t)pl->logit_rows * V * 4;
    pl->kv_blocks = (p->kv_ctx + p->kv_block - 1) / p->kv_block;
    pl->kv_per_token = L * G * 2 * D * 2;
    pl->kv = L * (uint64_t)pl->kv_blocks * G * 2 * B * D * 2 + (uint64_t)pl->kv_blocks * (B + 1) * 4;
    pl->workspace = CU_WORKSPACE_BYTES;
    /* the step block: header | ids | cs | sn, then the per-layer list counts and lists */
    pl->step_head = align_up(64 + align_up(C * 4, 16) + 2 * C * half * 4, 256);
    pl->off_count = pl->step_head;
    pl->list_cap = p->kv_exact ? 0 : pl->kv_blocks; /* exact: every list is "all blocks" (count -1) */
    pl->off_lists = align_up(pl->off_count + L * G * 4, 256);
    pl->step_bytes = align_up(pl->off_lists + L * G * (uint64_t)pl->list_cap * 4, 256);
    pl->step = pl->step_bytes + 256; /* + the non-finite record */
    ck_topk rule;
    if (cu_topk_rule(p, &rule)) /* summaries: 1/B of the KV (4 bytes per channel and block); bounds */
        pl->topk = L * (uint64_t)pl->kv_blocks * 2 * G * D * 2 + G * (uint64_t)pl->kv_blocks * 4;
    pl->total = pl->weights + pl->acts + pl->partials + pl->logits + pl->kv + pl->workspace + pl->step + pl->topk;
    /* every weight tensor and state buffer may waste up to a 2 MiB page (about 8 per layer and 40 more),
     * and 1% more for what the plan cannot see (the topk audit's second partials, cuBLASLt's kernels):
     * a hint "--ctx N would fit" must not fail later, after the upload */
    pl->headroom = CU_HEADROOM_BYTES + (uint64_t)(8 * L + 40) * CU_ALLOC_ROUND + pl->total / 100;
}

/* Compares the plan with the device's free memory; prints it at -v. */
static int plan_check(const mtok_backend_params *p, const cu_plan *pl, const char *name) {
    char dn[32];
    dev_name(p->device, dn, sizeof dn);
    size_t free_b = 0, total_b = 0;
    cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
    if (e != cudaSuccess) return cu_fail(e, "cudaMemGetInfo");
    const uint64_t need = pl->total + pl->headroom;
    const uint64_t other = pl->partials + pl->logits + pl->workspace + pl->step;
    mtok_log(2, "%s (%s): memory plan %.2f GiB of %.2f GiB free (%.2f GiB total): weights %.2f GiB, KV cache %.2f "
             "GiB (%lld positions x %lld layers, %llu bytes/token, blocks of %lld), activations %.3f GiB (chunk "
             "%lld), partials %.3f GiB (%d decode splits), logits %.3f GiB (%lld rows), cuBLASLt workspace %.3f "
             "GiB, step block %.3f GiB, runtime headroom %.2f GiB", dn, name, GIB(need), GIB(free_b), GIB(total_b),
             GIB(pl->weights), GIB(pl->kv + pl->topk), (long long)p->kv_ctx, (long long)p->m->cfg.n_layers,
             (unsigned long long)pl->kv_per_token, (long long)p->kv_block, GIB(pl->acts), (long long)p->chunk,
             GIB(pl->partials), pl->n_split, GIB(pl->logits), (long long)pl->logit_rows, GIB(pl->workspace),
             GIB(pl->step), GIB(pl->headroom));
    if (need <= free_b) return 0;
    /* what grows with --ctx: the pool, its positions and page table, and the block lists */
    const uint64_t L = (uint64_t)p->m->cfg.n_layers, G = (uint64_t)p->G, B = (uint64_t)p->kv_block;
    const uint64_t lists = pl->list_cap ? L * G * 4 : 0;
    uint64_t per_block = L * G * 2 * B * (uint64_t)p->D * 2 + (B + 1) * 4 + lists;
    if (pl->topk) per_block += L * 2 * G * (uint64_t)p->D * 2 + G * 4;
    per_block += per_block / 100 + 1; /* the headroom's 1% grows with the cache */
    const uint64_t fixed = need - pl->kv - pl->topk - lists * (uint64_t)pl->kv_blocks;
    char hint[256];
    if (fixed + 2 * per_block <= free_b) {
        /* one block less than the division gives: the step block's 256-byte rounding */
        const int64_t fit = ((int64_t)((free_b - fixed) / per_block) - 1) * p->kv_block;
        snprintf(hint, sizeof hint, "lower --ctx (the KV cache is %llu bytes/token: --ctx %lld would fit) or --chunk",
                 (unsigned long long)pl->kv_per_token, (long long)fit);
    } else {
        snprintf(hint, sizeof hint, "lower --chunk; even without a KV cache the rest needs %.2f GiB (the KV cache "
                 "is %llu bytes/token on top); a larger GPU or the CPU backend (--device cpu) runs it", GIB(fixed),
                 (unsigned long long)pl->kv_per_token);
    }
    return mtok_err(MTOK_ERESOURCE, "--device %s (%s): the session needs %.2f GiB of GPU memory and %.2f GiB are "
                    "free: weights %.2f GiB, KV cache %.2f GiB (--ctx %lld), activations %.2f GiB (--chunk %lld), "
                    "partials, logits, workspace and step block %.2f GiB, runtime headroom %.2f GiB; %s", dn, name,
                    GIB(need), GIB(free_b), GIB(pl->weights), GIB(pl->kv + pl->topk), (long long)p->kv_ctx,
                    GIB(pl->acts), (long long)p->chunk, GIB(other), GIB(pl->headroom), hint);
}

/* ---- the upload ---- */

static void *walloc(mtok_backend_weights *w, size_t bytes, int *rc) {
    if (*rc) return NULL;
    if (w->n_allocs == w->cap_allocs) {
        int cap = w->cap_allocs ? 2 * w->cap_allocs : 64;
        void **a = realloc(w->allocs, (size_t)cap * sizeof *a);
        if (!a) {
            *rc = mtok_err(MTOK_ERESOURCE, "out of memory for the weight table");
            return NULL;
        }
        w->allocs = a, w->cap_allocs = cap;
    }
    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        char what[96];
        snprintf(what, sizeof what, "cudaMalloc of %zu bytes of weights", bytes);
        *rc = cu_fail(e, what);
        return NULL;
    }
    w->allocs[w->n_allocs++] = d;
    w->bytes += bytes;
    return d;
}

/* n elements of t starting at element i0, as bf16, to device dst (backend_cuda.h). */
int cu_up_bf16(uint16_t *dst, const mk_tensor *t, int64_t i0, int64_t n, uint16_t *stage, const char *name) {
    cudaError_t e = cudaSuccess;
    if (t->dtype == MTOK_BF16) {
        e = cudaMemcpy(dst, (const uint16_t *)t->data + i0, (size_t)n * 2, cudaMemcpyHostToDevice);
    } else {
        for (int64_t a = 0; a < n && e == cudaSuccess; a += (int64_t)CU_STAGE_ELEMS) {
            const int64_t m = n - a < (int64_t)CU_STAGE_ELEMS ? n - a : (int64_t)CU_STAGE_ELEMS;
            if (t->dtype == MTOK_F32) {
                const float *s = (const float *)t->data + i0 + a;
                for (int64_t i = 0; i < m; i++) stage[i] = mk_f32_to_bf16(s[i]);
            } else {
                const uint16_t *s = (const uint16_t *)t->data + i0 + a;
                for (int64_t i = 0; i < m; i++) stage[i] = mk_f32_to_bf16(mk_f16_to_f32(s[i]));
            }
            e = cudaMemcpy(dst + a, stage, (size_t)m * 2, cudaMemcpyHostToDevice);
        }
    }
    if (e == cudaSuccess) return 0;
    char what[160];
    snprintf(what, sizeof what, "upload of %s", name);
    return cu_fail(e, what);
}

static int64_t numel(const mk_tensor *t) { return t->rows * t->cols; }

/* Tensor t must hold exactly rows x cols (the loader checked the model; this guards a sliced view). */
static int want(const mk_tensor *t, int64_t n, const char *name, int64_t layer) {
    if (t->data && numel(t) == n) return 0;
    return mtok_err(MTOK_EINPUT, "layer %lld: %s holds %lld elements, the CUDA backend expects %lld (one rank only)",
                    (long long)layer, name, (long long)(t->data ? numel(t) : 0), (long long)n);
}

static int up_fp32(float *dst, const mk_tensor *t, int64_t n, float *stage, const char *name) {
    for (int64_t i = 0; i < n; i++) stage[i] = mk_get(t, i);
    cudaError_t e = cudaMemcpy(dst, stage, (size_t)n * 4, cudaMemcpyHostToDevice);
    return e == cudaSuccess ? 0 : cu_fail(e, name);
}

static int upload_layer(mtok_backend_weights *w, const mtok_backend_params *p, int64_t l, uint16_t *stage) {
    const mtok_config *c = &p->m->cfg;
    const mtok_layer *L = &p->m->w.layers[l];
    const int64_t E = c->hidden, qd = p->H * p->D, kd = p->G * p->D, F = p->F;
    cu_layer *d = &w->layers[l];
    int rc = 0;
    if ((rc = want(&L->wq, qd * E, "Wq", l)) || (rc = want(&L->wk, kd * E, "Wk", l)) ||
        (rc = want(&L->wv, kd * E, "Wv", l)) || (rc = want(&L->wo, E * qd, "Wo", l)) ||
        (rc = want(&L->w_gate, F * E, "Wgate", l)) || (rc = want(&L->w_up, F * E, "Wup", l)) ||
        (rc = want(&L->w_down, E * F, "Wdown", l)) || (rc = want(&L->attn_norm, E, "attention norm", l)) ||
        (rc = want(&L->mlp_norm, E, "MLP norm", l)))
        return rc;
    d->wqkv = walloc(w, (size_t)((qd + 2 * kd) * E) * 2, &rc);
    d->wo = walloc(w, (size_t)(E * qd) * 2, &rc);
    d->wgu = walloc(w, (size_t)(2 * F * E) * 2, &rc);
    d->wd = walloc(w, (size_t)(E * F) * 2, &rc);
    /* the small ones in one allocation: norms (bf16), then the QKV bias (fp32) 256 bytes on */
    const size_t nb = ((size_t)(2 * E) * 2 + 255) / 256 * 256;
    const int bias = L->bq.data != NULL;
    uint8_t *small = walloc(w, nb + (bias ? (size_t)(qd + 2 * kd) * 4 : 0), &rc);
    if (rc) return rc;
    d->attn_norm = (uint16_t *)small;
    d->mlp_norm = d->attn_norm + E;
    d->bqkv = bias ? (float *)(small + nb) : NULL;
    char nm[64];
    snprintf(nm, sizeof nm, "layer %lld", (long long)l);
    if ((rc = cu_up_bf16(d->wqkv, &L->wq, 0, qd * E, stage, nm)) ||
        (rc = cu_up_bf16(d->wqkv + qd * E, &L->wk, 0, kd * E, stage, nm)) ||
        (rc = cu_up_bf16(d->wqkv + (qd + kd) * E, &L->wv, 0, kd * E, stage, nm)) ||
        (rc = cu_up_bf16(d->wo, &L->wo, 0, E * qd, stage, nm)) ||
        (rc = cu_up_bf16(d->wgu, &L->w_gate, 0, F * E, stage, nm)) ||
        (rc = cu_up_bf16(d->wgu + F * E, &L->w_up, 0, F * E, stage, nm)) ||
        (rc = cu_up_bf16(d->wd, &L->w_down, 0, E * F, stage, nm)) ||
        (rc = cu_up_bf16(d->attn_norm, &L->attn_norm, 0, E, stage, nm)) ||
        (rc = cu_up_bf16(d->mlp_norm, &L->mlp_norm, 0, E, stage, nm)))
        return rc;
    if (bias) {
        if ((rc = want(&L->bq, qd, "bq", l)) || (rc = want(&L->bk, kd, "bk", l)) || (rc = want(&L->bv, kd, "bv", l)))
            return rc;
        float *fs = (float *)stage; /* CU_STAGE_ELEMS bf16 = 2M floats: a bias is far smaller */
        if ((rc = up_fp32(d->bqkv, &L->bq, qd, fs, "upload of bq")) ||
            (rc = up_fp32(d->bqkv + qd, &L->bk, kd, fs, "upload of bk")) ||
            (rc = up_fp32(d->bqkv + qd + kd, &L->bv, kd, fs, "upload of bv")))
            return rc;
    }
    return 0;
}

void cu_weights_free(mtok_backend_weights *w) {
    if (!w) return;
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != w->device) cudaSetDevice(w->device);
    for (int i = 0; i < w->n_allocs; i++) cudaFree(w->allocs[i]);
    (void)cudaGetLastError();
    free(w->allocs);
    free(w->layers);
    free(w);
}

int cu_weights_load(const mtok_backend_params *p, mtok_backend_weights **out) {
    *out = NULL;
    const mtok_config *c = &p->m->cfg;
    if (p->H != c->n_heads || p->G != c->n_kv_groups || p->F != c->ffn || p->V != c->vocab)
        return mtok_err(MTOK_EUSAGE,
                        "--device cuda runs the whole model on one rank (this is a tensor-parallel slice)");
    if (p->D != 32 && p->D != 64 && p->D != 128)
        return mtok_err(MTOK_EINPUT, "%s: head_dim %lld: the CUDA attention kernels take 32, 64 or 128 (use --device "
                        "cpu)", p->m->dir, (long long)p->D);
    if (c->rope_dim % 2 || c->rope_dim > p->D || p->H % p->G)
        return mtok_err(MTOK_EINPUT, "%s: rotary dims %lld of head_dim %lld with %lld heads over %lld groups: not a "
                        "shape the CUDA kernels take", p->m->dir, (long long)c->rope_dim, (long long)p->D,
                        (long long)p->H, (long long)p->G);
    int sms = 0;
    char name[256];
    int rc = cu_device_open(p->device, &sms, name, sizeof name);
    if (rc) return rc;
    cu_plan pl;
    cu_plan_make(p, sms, &pl);
    if ((rc = plan_check(p, &pl, name))) return rc;

    mtok_backend_weights *w = calloc(1, sizeof *w);
    uint16_t *stage = malloc(CU_STAGE_ELEMS * 2);
    if (w) w->layers = calloc((size_t)c->n_layers, sizeof *w->layers);
    if (!w || !stage || !w->layers) {
        free(stage);
        if (w) free(w->layers);
        free(w);
        return mtok_err(MTOK_ERESOURCE, "out of memory for the weight upload");
    }
    w->device = p->device;
    const mtok_weights *mw = &p->m->w;
    const int64_t E = c->hidden;
    if (!(rc = want(&mw->embed, c->vocab * E, "embedding", -1)) && !(rc = want(&mw->output, p->V * E, "output", -1)) &&
        !(rc = want(&mw->final_norm, E, "final norm", -1))) {
        w->embed = walloc(w, (size_t)(c->vocab * E) * 2, &rc);
        w->output = walloc(w, (size_t)(p->V * E) * 2, &rc);
        w->final_norm = walloc(w, (size_t)E * 2, &rc);
    }
    if (!rc) rc = cu_up_bf16(w->embed, &mw->embed, 0, c->vocab * E, stage, "the embedding");
    if (!rc) rc = cu_up_bf16(w->output, &mw->output, 0, p->V * E, stage, "the output layer");
    if (!rc) rc = cu_up_bf16(w->final_norm, &mw->final_norm, 0, E, stage, "the final norm");
    for (int64_t l = 0; l < c->n_layers && !rc; l++) rc = upload_layer(w, p, l, stage);
    free(stage);
    /* copies from pageable memory may return before they land, and the non-blocking streams of the
     * session do not wait for the legacy stream: everything is in place before the first op */
    if (!rc) {
        const cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) rc = cu_fail(e, "uploading the weights");
    }
    if (rc) {
        cu_weights_free(w);
        return rc;
    }
    mtok_log(2, "cuda: %.2f GiB of weights uploaded as bf16 (%s stored)", GIB(w->bytes), mtok_dtype_name(c->dtype));
    *out = w;
    return 0;
}

/* ---- mtok info ---- */
int mtok_cuda_describe(char *buf, size_t cap) {
    int count = 0; /* unwritten by cudaGetDeviceCount without a driver */
    cudaError_t e = cudaGetDeviceCount(&count);
    (void)cudaGetLastError();
    if (e == cudaErrorInsufficientDriver) {
        char why[160];
        driver_why(why, sizeof why);
        snprintf(buf, cap, "built (%s); no devices: %s", MTOK_CUDA_ARCH_LIST, why);
        return 0;
    }
    if (e == cudaErrorNoDevice || (e == cudaSuccess && count <= 0)) {
        snprintf(buf, cap, "built (%s); no devices: no CUDA device", MTOK_CUDA_ARCH_LIST);
        return 0;
    }
    if (e != cudaSuccess) {
        snprintf(buf, cap, "built (%s); no devices: %s (%s)", MTOK_CUDA_ARCH_LIST, cudaGetErrorString(e),
                 cudaGetErrorName(e));
        return 0;
    }
    size_t at = (size_t)snprintf(buf, cap, "built (%s); %d device%s: ", MTOK_CUDA_ARCH_LIST, count,
                                 count == 1 ? "" : "s");
    for (int d = 0; d < count; d++) {
        struct cudaDeviceProp prop;
        const char *sep = d ? ", " : "";
        if (at >= cap) break;
        if (cudaGetDeviceProperties(&prop, d) == cudaSuccess)
            at += (size_t)snprintf(buf + at, cap - at, "%s%s (%.0f GiB)", sep, prop.name, GIB(prop.totalGlobalMem));
        else
            at += (size_t)snprintf(buf + at, cap - at, "%s(device %d: properties unreadable)", sep, d);
    }
    (void)cudaGetLastError();
    return count;
}
