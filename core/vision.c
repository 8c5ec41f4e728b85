/* vision.c — GLM-4V's vision tower: its forward pass as a sequence of backend ops (core/vision.h; the
 * same model in numpy: tests/ref/glm4v_ref.py; the facts and their sources: docs/VISION.md).
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
 * The backend of the call (p->device) runs each step (mtok_vision_ops, core/backend.h): the CPU's in
 * core/backend_cpu_vision.c, CUDA's in core/backend_cuda_vision.c; this file owns their order, the
 * boi/eoi rows, the division and the check of what comes out. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "vision_internal.h"

/* The backend ops of device name dev ("cpu" or NULL, "cuda[:N]"); *index gets -1 or N. */
static int vision_ops(const char *dev, int *index, const mtok_vision_ops **out) {
    int rc = mtok_device_parse(dev, index);
    if (rc) return rc;
    const mtok_backend_ops *be = *index >= 0 ? mtok_backend_cuda() : mtok_backend_cpu();
    if (!be || !be->vision)
        return mtok_err(MTOK_EUSAGE, "the %s backend cannot run a vision tower", be ? be->name : "requested");
    *out = be->vision;
    return 0;
}

/* One pass on a loaded tower: the ops in the model's order, then the rows core/vision.c owns. */
static int run(const mtok_vision *v, const mtok_vision_ops *o, mtok_vision_dev *d, const mtok_vision_params *p,
               const float *chw, float *out) {
    const mtok_vision_config *c = &v->cfg;
    const int64_t L = c->lm_hidden, N2 = (c->grid / 2) * (c->grid / 2);
    int rc = o->embed(d, chw);
    mtok_progress pr;
    mtok_progress_begin(&pr, "vision", "layers", c->n_layers, p ? p->progress_s : -1);
    for (int64_t i = 0; !rc && i < c->n_layers; i++) {
        rc = o->attn(d, i);
        if (!rc) rc = o->mlp(d, i);
        mtok_progress_update(&pr, i + 1);
    }
    mtok_progress_end(&pr);
    if (!rc) rc = o->project(d, out + L); /* rows 1 .. N2, between boi and eoi */
    if (rc) return rc;

    memcpy(out, v->boi, (size_t)L * sizeof *out);
    memcpy(out + (N2 + 1) * L, v->eoi, (size_t)L * sizeof *out);
    /* a division, as the model's x / scaling_factor (a reciprocal multiply differs in the last bit) */
    const float sf = (float)c->scaling;
    for (int64_t i = 0; i < (N2 + 2) * L; i++) out[i] /= sf;
    /* the tower's ops check nothing on the way: a NaN or Inf would reach the language model as an
     * embedding, so the rows are checked once here, naming the row */
    const int64_t bad = mtok_backend_first_nonfinite(out, (N2 + 2) * L);
    if (bad >= 0)
        return mtok_err(MTOK_EINPUT, "vision tower: its output row %lld of %lld holds %s (element %lld)",
                        (long long)(bad / L), (long long)(N2 + 2), isnan(out[bad]) ? "NaN" : "Inf",
                        (long long)(bad % L));
    return 0;
}

int mtok_vision_forward(const mtok_vision *v, const mtok_vision_params *p, const float *chw, float *out) {
    int device = -1;
    const mtok_vision_ops *o = NULL;
    int rc = vision_ops(p ? p->device : NULL, &device, &o);
    mtok_vision_dev *d = NULL;
    if (!rc) rc = o->load(v, device, p ? p->threads : 0, &d);
    if (!rc) rc = run(v, o, d, p, chw, out);
    if (d) o->free(d);
    return rc;
}

/* ---- a tower kept between images (core/vision.h) ---- */

struct mtok_vision_cache {
    pthread_mutex_t mu;
    char *dir;                 /* the checkpoint the tower came from; NULL: none held */
    int device;                /* -1: the CPU */
    int threads;
    mtok_vision *v;
    const mtok_vision_ops *o;
    mtok_vision_dev *d;
};

int mtok_vision_cache_create(mtok_vision_cache **out) {
    mtok_vision_cache *c = calloc(1, sizeof *c);
    if (!c) return mtok_err(MTOK_ERESOURCE, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

static void cache_drop(mtok_vision_cache *c) {
    if (c->d) c->o->free(c->d);
    mtok_vision_free(c->v);
    free(c->dir);
    c->d = NULL, c->v = NULL, c->dir = NULL;
}

void mtok_vision_cache_free(mtok_vision_cache *c) {
    if (!c) return;
    cache_drop(c);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

int mtok_vision_cache_forward(mtok_vision_cache *c, const char *dir, const mtok_vision_params *p, const float *chw,
                              float *out) {
    int device = -1;
    const mtok_vision_ops *o = NULL;
    int rc = vision_ops(p ? p->device : NULL, &device, &o);
    if (rc) return rc;
    const int threads = p ? p->threads : 0;
    pthread_mutex_lock(&c->mu); /* one pass at a time: the tower's activations are one set */
    if (c->dir && (strcmp(c->dir, dir) || c->device != device || c->threads != threads)) cache_drop(c);
    if (!c->dir) {
        if (!(c->dir = strdup(dir))) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        if (!rc) rc = mtok_vision_load(dir, &c->v);
        if (!rc) rc = o->load(c->v, device, threads, &c->d);
        if (rc) cache_drop(c); /* nothing half-loaded stays */
        c->device = device, c->threads = threads, c->o = o;
    }
    if (!rc) rc = run(c->v, c->o, c->d, p, chw, out);
    pthread_mutex_unlock(&c->mu);
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
