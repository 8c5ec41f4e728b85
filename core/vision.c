/* vision.c — GLM-4V's vision tower, forward pass on the CPU (core/vision.h; the same model in numpy:
 * tests/ref/glm4v_ref.py; the facts and their sources: docs/VISION.md).
 *
 * E = hidden, H heads of D, G = grid, N = G^2 patches, T = N + 1 tokens, L = the LM's hidden:
 *   x = im2col(image, P x P patches) · Wpatchᵀ + b                   [N][E]
 *   h = [cls ; x] + positions                                        [T][E]
 *   for each layer (the norms apply to each sublayer's output, not its input):
 *     qkv = h·Wqkvᵀ + b ; o = softmax(q kᵀ / sqrt(D)) v per head, every token sees every token
 *     h += LN_in(o·Woᵀ + bo)
 *     h += LN_post(gelu(h·W1ᵀ + b1)·W2ᵀ + b2)                        gelu = exact erf form
 *   y = im2col(h without cls as G x G x E, 2 x 2 stride 2) · Wconvᵀ + b   [N/4][L]
 *   y = (silu(z·Wgᵀ) ⊙ z·Wuᵀ)·Wdᵀ,  z = gelu(LN(y·Wprojᵀ))            (no biases; LN eps 1e-5)
 *   out = [boi ; y ; eoi] / scaling_factor                            [N/4 + 2][L]
 * Activations are fp32, weights stay in their stored dtype (mk_matmul). The attention is mtok's
 * block kernel (mk_attn_block) with causal = 0 over K and V rounded to bf16, as the language
 * model's KV store holds them; the MLP and the projector run in chunks of tokens so their wide
 * intermediates stay small. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

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
        for (int64_t i = 0; i < w; i++) r[i] = (r[i] - mu) * rstd * g[i] + b[i];
    }
}

/* GELU, exact form x/2 (1 + erf(x / sqrt 2)) (PyTorch's nn.GELU() and ACT2FN["gelu"]). */
static void gelu(float *x, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads) if (n > (1 << 16))
    for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
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

/* One transformer layer on h [T][E]. */
static void layer(const mtok_vision *v, const vis_layer *Lw, float *h, float *a, float *buf, float *ff,
                  uint16_t *kb, uint16_t *vb, float *m, float *l, int threads) {
    const mtok_vision_config *c = &v->cfg;
    const int64_t E = c->hidden, F = c->ffn, T = c->grid * c->grid + 1;
    /* h += LN_in(Attn(h)) */
    mk_matmul_threads(buf, 3 * E, h, E, T, &Lw->w_qkv, &Lw->b_qkv, threads);
    attention(buf, T, c->n_heads, c->head_dim, kb, vb, a, m, l, threads);
    mk_matmul_threads(buf, E, a, E, T, &Lw->w_o, &Lw->b_o, threads);
    layernorm(buf, T, E, Lw->ln_attn_w, Lw->ln_attn_b, c->ln_eps, threads);
    add_rows(h, buf, T, E, threads);
    /* h += LN_post(MLP(h)), CHUNK tokens at a time (each row depends on its own row only) */
    for (int64_t t0 = 0; t0 < T; t0 += CHUNK) {
        const int64_t nt = T - t0 < CHUNK ? T - t0 : CHUNK;
        mk_matmul_threads(ff, F, h + t0 * E, E, nt, &Lw->w_fc1, &Lw->b_fc1, threads);
        gelu(ff, nt * F, threads);
        mk_matmul_threads(a + t0 * E, E, ff, F, nt, &Lw->w_fc2, &Lw->b_fc2, threads);
    }
    layernorm(a, T, E, Lw->ln_mlp_w, Lw->ln_mlp_b, c->ln_eps, threads);
    add_rows(h, a, T, E, threads);
}

int mtok_vision_forward(const mtok_vision *v, const mtok_vision_params *p, const float *chw, float *out) {
    const mtok_vision_config *c = &v->cfg;
    /* a team size for every parallel region here: num_threads(0) is not a valid OpenMP request */
    const int threads = p && p->threads > 0 ? p->threads : omp_get_max_threads();
    const int64_t E = c->hidden, H = c->n_heads, P = c->patch, G = c->grid, N = G * G, T = N + 1;
    const int64_t L = c->lm_hidden, LF = c->lm_ffn, N2 = (G / 2) * (G / 2), K = 3 * P * P;
    /* the widest use of each scratch buffer; every size below is far inside int64 (config limits) */
    int64_t buf_n = T * 3 * E;
    if (N * K > buf_n) buf_n = N * K;
    if (N2 * 4 * E > buf_n) buf_n = N2 * 4 * E;
    const int64_t ff_n = CHUNK * (c->ffn > L + 2 * LF ? c->ffn : L + 2 * LF);
    float *h = malloc((size_t)(T * E) * sizeof *h), *a = malloc((size_t)(T * E) * sizeof *a);
    float *buf = malloc((size_t)buf_n * sizeof *buf), *ff = malloc((size_t)ff_n * sizeof *ff);
    float *m = malloc((size_t)(T * H) * sizeof *m), *l = malloc((size_t)(T * H) * sizeof *l);
    float *y = malloc((size_t)(N2 * L) * sizeof *y);
    uint16_t *kb = malloc((size_t)(T * E) * sizeof *kb), *vb = malloc((size_t)(T * E) * sizeof *vb);
    int rc = 0;
    if (!h || !a || !buf || !ff || !m || !l || !y || !kb || !vb) {
        rc = mtok_err(MTOK_ERESOURCE, "vision tower: out of memory for %.0f MB of activations",
                      (double)((2 * T * E + buf_n + ff_n + 2 * T * H + N2 * L) * 4 + 4 * T * E) / 1e6);
        goto done;
    }
    /* patch embedding, CLS, learned positions: (x·Wᵀ + b) + pos, in PyTorch's order */
    patches(chw, c->image, P, G, buf, threads);
    mk_matmul_threads(h + E, E, buf, K, N, &v->w_patch, NULL, threads);
    for (int64_t i = 0; i < E; i++) h[i] = v->cls[i] + v->pos[i];
#pragma omp parallel for num_threads(threads)
    for (int64_t t = 1; t < T; t++)
        for (int64_t i = 0; i < E; i++) h[t * E + i] = (h[t * E + i] + v->b_patch[i]) + v->pos[t * E + i];

    mtok_progress pr;
    mtok_progress_begin(&pr, "vision", "layers", c->n_layers, p ? p->progress_s : -1);
    for (int64_t i = 0; i < c->n_layers; i++) {
        layer(v, &v->layers[i], h, a, buf, ff, kb, vb, m, l, threads);
        mtok_progress_update(&pr, i + 1);
    }
    mtok_progress_end(&pr);

    /* drop CLS, 2 x 2 stride-2 convolution to the LM's width */
    windows(h + E, G, E, buf, threads);
    mk_matmul_threads(y, L, buf, 4 * E, N2, &v->w_conv, &v->b_conv, threads);
    /* GLU projector, CHUNK rows at a time, straight into out rows 1..N2 */
    for (int64_t t0 = 0; t0 < N2; t0 += CHUNK) {
        const int64_t nt = N2 - t0 < CHUNK ? N2 - t0 : CHUNK;
        float *z = ff, *g = ff + CHUNK * L, *u = g + CHUNK * LF;
        mk_matmul_threads(z, L, y + t0 * L, L, nt, &v->w_proj, NULL, threads);
        layernorm(z, nt, L, v->ln_glu_w, v->ln_glu_b, c->glu_eps, threads);
        gelu(z, nt * L, threads);
        const mk_matmul_job gu[2] = {{g, LF, z, L, &v->w_gate, NULL}, {u, LF, z, L, &v->w_up, NULL}};
        mk_matmul_multi_threads(gu, 2, nt, threads);
        mk_swiglu(g, g, u, nt * LF);
        mk_matmul_threads(out + (1 + t0) * L, L, g, LF, nt, &v->w_down, NULL, threads);
    }
    memcpy(out, v->boi, (size_t)L * sizeof *out);
    memcpy(out + (N2 + 1) * L, v->eoi, (size_t)L * sizeof *out);
    /* a division, as the model's x / scaling_factor (a reciprocal multiply differs in the last bit) */
    const float sf = (float)c->scaling;
    for (int64_t i = 0; i < (N2 + 2) * L; i++) out[i] /= sf;
done:
    free(h), free(a), free(buf), free(ff), free(m), free(l), free(y), free(kb), free(vb);
    return rc;
}

double mtok_vision_flops(const mtok_vision_config *c) {
    const double E = (double)c->hidden, F = (double)c->ffn, P = (double)c->patch, N = (double)(c->grid * c->grid);
    const double T = N + 1, L = (double)c->lm_hidden, LF = (double)c->lm_ffn, N2 = N / 4;
    const double per_layer = 2 * T * E * 3 * E /* qkv */ + 4 * T * T * E /* q·kᵀ and p·v */ + 2 * T * E * E /* dense */
                           + 2 * 2 * T * E * F /* fc1, fc2 */;
    return 2 * N * E * 3 * P * P + (double)c->n_layers * per_layer + 2 * N2 * L * 4 * E /* conv */
         + 2 * N2 * (L * L + 3 * L * LF) /* GLU */;
}
