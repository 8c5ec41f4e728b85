/* backend_cpu_vision.c — the CPU backend's vision-tower ops (mtok_vision_ops of core/backend.h; the
 * sequence that calls them and the model's formulas: core/vision.c). Weights stay in their stored
 * dtype in the mapped checkpoint (mk_matmul); activations are fp32. The attention is mtok's block
 * kernel (mk_attn_block) with causal = 0 over K and V rounded to bf16, as the language model's KV
 * store holds them; the MLP and the projector run in chunks of tokens so their wide intermediates
 * stay small. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "vision_internal.h"

#define CHUNK 256 /* tokens per MLP / projector chunk: a [CHUNK][ffn] intermediate instead of [T][ffn] */
#define Q_TILE 48 /* query rows per attention task (a multiple of the kernel's 6-row register tile) */

/* LayerNorm over each of n rows of width w, in place: mean and variance in double. */
static void layernorm(float *x, int64_t n, int64_t w, const float *g, const float *b, double eps, int threads) {
#pragma omp parallel for num_threads(threads) if (n * w > (1 << 16))
    for (int64_t t = 0; t < n; t++) {
        float *r = x + t * w;
        double s = 0, ss = 0;
        for (int64_t i = 0; i < w; i++) s += r[i];
        const double mean = s / (double)w;
        for (int64_t i = 0; i < w; i++) ss += (r[i] - mean) * (r[i] - mean);
        const float rstd = (float)(1.0 / sqrt(ss / (double)w + eps)), mu = (float)mean;
        for (int64_t i = 0; i < w; i++) r[i] = mm_ln_elem(r[i], mu, rstd, g[i], b[i]);
    }
}

/* GELU, exact form x/2 (1 + erf(x / sqrt 2)) (PyTorch's nn.GELU() and ACT2FN["gelu"]). */
static void gelu(float *x, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads) if (n > (1 << 16))
    for (int64_t i = 0; i < n; i++) x[i] = mm_gelu(x[i]);
}

/* h[t] += a[t] for n rows of w. */
static void add_rows(float *h, const float *a, int64_t n, int64_t w, int threads) {
#pragma omp parallel for num_threads(threads) if (n * w > (1 << 16))
    for (int64_t i = 0; i < n * w; i++) h[i] += a[i];
}

/* Bidirectional multi-head attention of T tokens: qkv [T][3E] (rows [Q | K | V], head-major) ->
 * o [T][E]. kb, vb: [T][E] bf16 scratch; m, l: [T][H] softmax state. */
static void attention(const float *qkv, int64_t T, int64_t H, int64_t D, uint16_t *kb, uint16_t *vb, float *o,
                      float *m, float *l, int threads) {
    const int64_t E = H * D, n_tiles = (T + Q_TILE - 1) / Q_TILE;
#pragma omp parallel for num_threads(threads) if (T * E > (1 << 16))
    for (int64_t t = 0; t < T; t++) {
        mk_f32_to_bf16_row(kb + t * E, qkv + t * 3 * E + E, E);
        mk_f32_to_bf16_row(vb + t * E, qkv + t * 3 * E + 2 * E, E);
        memset(o + t * E, 0, (size_t)E * sizeof *o);
        for (int64_t h = 0; h < H; h++) m[t * H + h] = -INFINITY, l[t * H + h] = 0.0f;
    }
    const float scale = (float)(1.0 / sqrt((double)D));
    /* one task per (head, tile of query rows): all T keys of that head in one call (the kernel walks
     * them in sub-blocks with an online softmax); no mask, so no position enters */
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(threads)
    for (int64_t h = 0; h < H; h++) {
        for (int64_t tt = 0; tt < n_tiles; tt++) {
            const int64_t t0 = tt * Q_TILE, nt = T - t0 < Q_TILE ? T - t0 : Q_TILE;
            const mk_attn_params ap = {.q = qkv + t0 * 3 * E + h * D, .q_ts = 3 * E, .acc = o + t0 * E + h * D,
                                       .acc_ts = E, .m = m + t0 * H + h, .l = l + t0 * H + h, .ml_ts = H,
                                       .n_tok = nt, .n_head = 1, .D = D, .k = kb + h * D, .v = vb + h * D,
                                       .kv_stride = E, .n = T, .causal = 0, .scale = scale};
            mk_attn_block(&ap);
            for (int64_t t = t0; t < t0 + nt; t++) {
                const float inv = 1.0f / l[t * H + h];
                for (int64_t d = 0; d < D; d++) o[t * E + h * D + d] *= inv;
            }
        }
    }
}

/* The patches of the [3][S][S] image as rows [N][3*P*P] in the kernel's (channel, ky, kx) order. */
static void patches(const float *chw, int64_t S, int64_t P, int64_t G, float *out, int threads) {
    const int64_t K = 3 * P * P;
#pragma omp parallel for num_threads(threads)
    for (int64_t n = 0; n < G * G; n++) {
        const int64_t gy = n / G, gx = n % G;
        float *r = out + n * K;
        for (int64_t c = 0; c < 3; c++)
            for (int64_t ky = 0; ky < P; ky++)
                memcpy(r + (c * P + ky) * P, chw + (c * S + gy * P + ky) * S + gx * P, (size_t)P * sizeof *r);
    }
}

/* The 2 x 2 stride-2 windows of the G x G x E grid (h without its CLS row) as rows [G/2 * G/2][4E]
 * in the kernel's (channel, ky, kx) order. */
static void windows(const float *grid, int64_t G, int64_t E, float *out, int threads) {
    const int64_t G2 = G / 2;
#pragma omp parallel for num_threads(threads)
    for (int64_t n = 0; n < G2 * G2; n++) {
        const int64_t oy = n / G2, ox = n % G2;
        float *r = out + n * 4 * E;
        for (int64_t ky = 0; ky < 2; ky++)
            for (int64_t kx = 0; kx < 2; kx++) {
                const float *src = grid + ((2 * oy + ky) * G + 2 * ox + kx) * E;
                for (int64_t c = 0; c < E; c++) r[c * 4 + ky * 2 + kx] = src[c];
            }
    }
}

/* ---- the ops ---- */

struct mtok_vision_dev {
    const struct mtok_vision *v;
    int threads;
    int64_t E, F, H, T, N, N2, L, LF, K;
    float *h, *a, *buf, *ff, *m, *l, *y; /* h, a [T][E]; buf: qkv [T][3E], patches [N][K], windows [N2][4E] */
    uint16_t *kb, *vb;                   /* [T][E] bf16 K and V */
};

static void cpu_vis_free(mtok_vision_dev *d) {
    if (!d) return;
    free(d->h), free(d->a), free(d->buf), free(d->ff), free(d->m), free(d->l), free(d->y), free(d->kb), free(d->vb);
    free(d);
}

static int cpu_vis_load(const struct mtok_vision *v, int device, int threads, mtok_vision_dev **out) {
    (void)device;
    *out = NULL;
    const mtok_vision_config *c = &v->cfg;
    mtok_vision_dev *d = calloc(1, sizeof *d);
    if (!d) return mtok_err(MTOK_ERESOURCE, "vision tower: out of memory");
    /* a team size for every parallel region here: num_threads(0) is not a valid OpenMP request */
    d->v = v, d->threads = threads > 0 ? threads : omp_get_max_threads();
    d->E = c->hidden, d->F = c->ffn, d->H = c->n_heads, d->N = c->grid * c->grid, d->T = d->N + 1;
    d->N2 = (c->grid / 2) * (c->grid / 2), d->L = c->lm_hidden, d->LF = c->lm_ffn, d->K = 3 * c->patch * c->patch;
    /* the widest use of each scratch buffer; every size below is far inside int64 (config limits) */
    int64_t buf_n = d->T * 3 * d->E;
    if (d->N * d->K > buf_n) buf_n = d->N * d->K;
    if (d->N2 * 4 * d->E > buf_n) buf_n = d->N2 * 4 * d->E;
    const int64_t ff_n = CHUNK * (d->F > d->L + 2 * d->LF ? d->F : d->L + 2 * d->LF);
    const int64_t TE = d->T * d->E, TH = d->T * d->H;
    d->h = malloc((size_t)TE * sizeof *d->h), d->a = malloc((size_t)TE * sizeof *d->a);
    d->buf = malloc((size_t)buf_n * sizeof *d->buf), d->ff = malloc((size_t)ff_n * sizeof *d->ff);
    d->m = malloc((size_t)TH * sizeof *d->m), d->l = malloc((size_t)TH * sizeof *d->l);
    d->y = malloc((size_t)(d->N2 * d->L) * sizeof *d->y);
    d->kb = malloc((size_t)TE * sizeof *d->kb), d->vb = malloc((size_t)TE * sizeof *d->vb);
    if (!d->h || !d->a || !d->buf || !d->ff || !d->m || !d->l || !d->y || !d->kb || !d->vb) {
        const double mb = (double)((2 * TE + buf_n + ff_n + 2 * TH + d->N2 * d->L) * 4 + 4 * TE) / 1e6;
        cpu_vis_free(d);
        return mtok_err(MTOK_ERESOURCE, "vision tower: out of memory for %.0f MB of activations", mb);
    }
    *out = d;
    return 0;
}

/* patch embedding, CLS, learned positions: (x·Wᵀ + b) + pos, in PyTorch's order */
static int cpu_vis_embed(mtok_vision_dev *d, const float *chw) {
    const struct mtok_vision *v = d->v;
    const int64_t E = d->E, T = d->T;
    patches(chw, v->cfg.image, v->cfg.patch, v->cfg.grid, d->buf, d->threads);
    mk_matmul_threads(d->h + E, E, d->buf, d->K, d->N, &v->w_patch, NULL, d->threads);
    float *h = d->h;
    for (int64_t i = 0; i < E; i++) h[i] = v->cls[i] + v->pos[i];
#pragma omp parallel for num_threads(d->threads)
    for (int64_t t = 1; t < T; t++)
        for (int64_t i = 0; i < E; i++) h[t * E + i] = (h[t * E + i] + v->b_patch[i]) + v->pos[t * E + i];
    return 0;
}

/* h += LN_in(Attn(h)) (the norm applies to the sublayer's output) */
static int cpu_vis_attn(mtok_vision_dev *d, int64_t layer) {
    const vis_layer *Lw = &d->v->layers[layer];
    const mtok_vision_config *c = &d->v->cfg;
    const int64_t E = d->E, T = d->T;
    mk_matmul_threads(d->buf, 3 * E, d->h, E, T, &Lw->w_qkv, &Lw->b_qkv, d->threads);
    attention(d->buf, T, c->n_heads, c->head_dim, d->kb, d->vb, d->a, d->m, d->l, d->threads);
    mk_matmul_threads(d->buf, E, d->a, E, T, &Lw->w_o, &Lw->b_o, d->threads);
    layernorm(d->buf, T, E, Lw->ln_attn_w, Lw->ln_attn_b, c->ln_eps, d->threads);
    add_rows(d->h, d->buf, T, E, d->threads);
    return 0;
}

/* h += LN_post(MLP(h)), CHUNK tokens at a time (each row depends on its own row only) */
static int cpu_vis_mlp(mtok_vision_dev *d, int64_t layer) {
    const vis_layer *Lw = &d->v->layers[layer];
    const int64_t E = d->E, F = d->F, T = d->T;
    for (int64_t t0 = 0; t0 < T; t0 += CHUNK) {
        const int64_t nt = T - t0 < CHUNK ? T - t0 : CHUNK;
        mk_matmul_threads(d->ff, F, d->h + t0 * E, E, nt, &Lw->w_fc1, &Lw->b_fc1, d->threads);
        gelu(d->ff, nt * F, d->threads);
        mk_matmul_threads(d->a + t0 * E, E, d->ff, F, nt, &Lw->w_fc2, &Lw->b_fc2, d->threads);
    }
    layernorm(d->a, T, E, Lw->ln_mlp_w, Lw->ln_mlp_b, d->v->cfg.ln_eps, d->threads);
    add_rows(d->h, d->a, T, E, d->threads);
    return 0;
}

/* drop CLS, the 2 x 2 stride-2 convolution to the LM's width, then the GLU projector CHUNK rows at a
 * time straight into out */
static int cpu_vis_project(mtok_vision_dev *d, float *out) {
    const struct mtok_vision *v = d->v;
    const int64_t E = d->E, L = d->L, LF = d->LF, N2 = d->N2;
    windows(d->h + E, v->cfg.grid, E, d->buf, d->threads);
    mk_matmul_threads(d->y, L, d->buf, 4 * E, N2, &v->w_conv, &v->b_conv, d->threads);
    for (int64_t t0 = 0; t0 < N2; t0 += CHUNK) {
        const int64_t nt = N2 - t0 < CHUNK ? N2 - t0 : CHUNK;
        float *z = d->ff, *g = d->ff + CHUNK * L, *u = g + CHUNK * LF;
        mk_matmul_threads(z, L, d->y + t0 * L, L, nt, &v->w_proj, NULL, d->threads);
        layernorm(z, nt, L, v->ln_glu_w, v->ln_glu_b, v->cfg.glu_eps, d->threads);
        gelu(z, nt * L, d->threads);
        const mk_matmul_job gu[2] = {{g, LF, z, L, &v->w_gate, NULL}, {u, LF, z, L, &v->w_up, NULL}};
        mk_matmul_multi_threads(gu, 2, nt, d->threads);
        mk_swiglu(g, g, u, nt * LF);
        mk_matmul_threads(out + t0 * L, L, g, LF, nt, &v->w_down, NULL, d->threads);
    }
    return 0;
}

const mtok_vision_ops mtok_vision_ops_cpu = {
    .load = cpu_vis_load,
    .free = cpu_vis_free,
    .embed = cpu_vis_embed,
    .attn = cpu_vis_attn,
    .mlp = cpu_vis_mlp,
    .project = cpu_vis_project,
};
