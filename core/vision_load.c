/* vision_load.c — GLM-4V's vision_config and the vision tower's tensors (core/vision.h).
 *
 * Names and shapes (docs/VISION.md, "Tensors"), all under `transformer.vision.`; E = hidden,
 * F = intermediate_size, P = patch, N = grid^2 + 1, L = the language model's hidden_size,
 * LF = its ffn_hidden_size:
 *   patch_embedding.proj.weight [E, 3, P, P] .bias [E]   cls_embedding [1, E]
 *   patch_embedding.position_embedding.weight [N, E]
 *   transformer.layers.{i}.input_layernorm.{weight,bias} [E]            (applied to Attn's output)
 *   transformer.layers.{i}.attention.query_key_value.{weight,bias} [3E, E] [3E]   rows [Q | K | V]
 *   transformer.layers.{i}.attention.dense.{weight,bias} [E, E] [E]
 *   transformer.layers.{i}.post_attention_layernorm.{weight,bias} [E]   (applied to the MLP's output)
 *   transformer.layers.{i}.mlp.fc1.{weight,bias} [F, E] [F]   mlp.fc2.{weight,bias} [E, F] [E]
 *   conv.weight [L, E, 2, 2] .bias [L]
 *   linear_proj.linear_proj.weight [L, L]   linear_proj.norm1.{weight,bias} [L]
 *   linear_proj.gate_proj.weight, linear_proj.dense_h_to_4h.weight [LF, L]   linear_proj.dense_4h_to_h.weight [L, LF]
 *   boi, eoi [1, 1, L]
 * The two convolution kernels and boi/eoi have 4 and 3 dimensions: mtok_ckpt_bind_nd checks their
 * whole shape and views them as 2-D. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "safetensors.h"
#include "vision_internal.h"

#define MAX_CONFIG_BYTES (16 << 20)
#define MAX_DIM ((int64_t)1 << 20) /* any width above this is not a ViT config; keeps products in int64 */
#define MAX_LAYERS 1024
#define PFX "transformer.vision."

/* ---- config.json ---- */

typedef struct {
    const char *path;
    json_t *obj;
    const char *where; /* "vision_config." or "" for messages */
} jctx;

static int jint(const jctx *c, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    json_t *v = json_object_get(c->obj, key);
    if (!v || json_is_null(v)) return mtok_err(MTOK_EINPUT, "%s: missing key '%s%s'", c->path, c->where, key);
    double d = json_is_integer(v) ? (double)json_integer_value(v) : json_is_real(v) ? json_real_value(v) : NAN;
    if (!(d == floor(d)) || d < (double)lo || d > (double)hi)
        return mtok_err(MTOK_EINPUT, "%s: key '%s%s' must be an integer in %lld..%lld", c->path, c->where, key,
                        (long long)lo, (long long)hi);
    *out = (int64_t)d;
    return 0;
}

static int jnum(const jctx *c, const char *key, double lo, double hi, double dflt, double *out) {
    json_t *v = json_object_get(c->obj, key);
    if (!v || json_is_null(v)) {
        if (isnan(dflt)) return mtok_err(MTOK_EINPUT, "%s: missing key '%s%s'", c->path, c->where, key);
        *out = dflt;
        return 0;
    }
    double d = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(d > lo && d <= hi))
        return mtok_err(MTOK_EINPUT, "%s: key '%s%s' must be a number in (%g, %g]", c->path, c->where, key, lo, hi);
    *out = d;
    return 0;
}

static int parse_config(const char *path, json_t *root, mtok_vision_config *vc) {
    json_t *vj = json_object_get(root, "vision_config");
    if (!json_is_object(vj))
        return mtok_err(MTOK_EINPUT, "%s: no 'vision_config' object: not a GLM-4V checkpoint", path);
    jctx top = {path, root, ""}, vis = {path, vj, "vision_config."};
    int64_t channels = 3;
    int rc;
    *vc = (mtok_vision_config){.glu_eps = 1e-5};
    if ((rc = jint(&vis, "hidden_size", 1, MAX_DIM, &vc->hidden)) ||
        (rc = jint(&vis, "num_hidden_layers", 1, MAX_LAYERS, &vc->n_layers)) ||
        (rc = jint(&vis, "num_heads", 1, MAX_DIM, &vc->n_heads)) ||
        (rc = jint(&vis, "intermediate_size", 1, MAX_DIM, &vc->ffn)) ||
        (rc = jint(&vis, "patch_size", 1, 1024, &vc->patch)) ||
        (rc = jint(&vis, "image_size", 1, 16384, &vc->image)) ||
        (rc = jint(&vis, "num_positions", 2, MAX_DIM * 8, &vc->n_pos)) ||
        (rc = jnum(&vis, "layer_norm_eps", 0, 1, NAN, &vc->ln_eps)) ||
        (rc = jnum(&vis, "scaling_factor", 0, 1e6, NAN, &vc->scaling)) ||
        (json_object_get(vj, "in_channels") && (rc = jint(&vis, "in_channels", 1, 64, &channels))) ||
        (rc = jint(&top, "hidden_size", 1, MAX_DIM, &vc->lm_hidden)) ||
        (rc = jint(&top, "ffn_hidden_size", 1, MAX_DIM, &vc->lm_ffn)) ||
        (rc = jint(&top, "boi_token_id", 0, INT32_MAX, &vc->boi_id)) ||
        (rc = jint(&top, "eoi_token_id", 0, INT32_MAX, &vc->eoi_id)))
        return rc;
    /* the placeholder between boi and eoi is <|endoftext|>, GLM-4V's pad_token_id (151329); small test
     * models with another vocabulary name theirs there */
    vc->pad_id = 151329;
    if (json_object_get(root, "pad_token_id") && !json_is_null(json_object_get(root, "pad_token_id")) &&
        (rc = jint(&top, "pad_token_id", 0, INT32_MAX, &vc->pad_id)))
        return rc;
    json_t *act = json_object_get(vj, "hidden_act");
    if (act && !(json_is_string(act) && !strcmp(json_string_value(act), "gelu")))
        return mtok_err(MTOK_EINPUT, "%s: vision_config.hidden_act must be \"gelu\" (the exact erf form GLM-4V uses)",
                        path);
    if (channels != 3) return mtok_err(MTOK_EINPUT, "%s: vision_config.in_channels is %lld; images are RGB (3)", path,
                                       (long long)channels);
    if (vc->hidden % vc->n_heads)
        return mtok_err(MTOK_EINPUT, "%s: vision_config.hidden_size %lld is not a multiple of num_heads %lld", path,
                        (long long)vc->hidden, (long long)vc->n_heads);
    vc->head_dim = vc->hidden / vc->n_heads;
    if (vc->image % vc->patch)
        return mtok_err(MTOK_EINPUT, "%s: vision_config.image_size %lld is not a multiple of patch_size %lld", path,
                        (long long)vc->image, (long long)vc->patch);
    vc->grid = vc->image / vc->patch;
    if (vc->grid % 2)
        return mtok_err(MTOK_EINPUT, "%s: vision_config: %lld patches per side; the 2x2 stride-2 convolution needs an "
                        "even number", path, (long long)vc->grid);
    if (vc->n_pos != vc->grid * vc->grid + 1)
        return mtok_err(MTOK_EINPUT, "%s: vision_config.num_positions is %lld, but image_size / patch_size gives "
                        "%lld^2 + 1 = %lld (positions are not interpolated)", path, (long long)vc->n_pos,
                        (long long)vc->grid, (long long)(vc->grid * vc->grid + 1));
    return 0;
}

int mtok_vision_config_read(const char *dir, mtok_vision_config *out) {
    size_t n = strlen(dir) + sizeof "/config.json";
    char *path = malloc(n);
    if (!path) return mtok_err(MTOK_ERESOURCE, "out of memory");
    snprintf(path, n, "%s/config.json", dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    int rc;
    if (!root) rc = mtok_err(MTOK_EINPUT, "%s: %s (line %d)", path, err.text, err.line);
    else if (!json_is_object(root)) rc = mtok_err(MTOK_EINPUT, "%s: not a JSON object", path);
    else rc = parse_config(path, root, out);
    json_decref(root);
    free(path);
    return rc;
}

/* ---- binding ---- */

typedef struct {
    mtok_vision *v;
    mtok_ckpt *st;
} vbinder;

static int bind_w(vbinder *b, const char *name, int64_t rows, int64_t cols, mk_tensor *out) {
    char n[256];
    snprintf(n, sizeof n, PFX "%s", name);
    return mtok_ckpt_bind(b->st, n, rows, cols, out, NULL);
}

/* A tensor of nd dimensions, exactly want[0..nd), viewed as [want[0], product of the rest]. */
static int bind_nd(vbinder *b, const char *name, int nd, const int64_t *want, mk_tensor *out) {
    char n[256];
    snprintf(n, sizeof n, PFX "%s", name);
    return mtok_ckpt_bind_nd(b->st, n, nd, want, out, NULL);
}

/* A vector (or [rows, cols] table with rows > 0) widened to an fp32 copy owned by the model. */
static int bind_f32(vbinder *b, const char *name, int64_t rows, int64_t cols, float **out) {
    mk_tensor t;
    int rc = bind_w(b, name, rows, cols, &t);
    if (rc) return rc;
    return vis_own_f32(b->v, &t, out);
}

static int bind_layer(vbinder *b, int64_t i, vis_layer *l) {
    const mtok_vision_config *c = &b->v->cfg;
    const int64_t E = c->hidden, F = c->ffn;
    char n[160];
    int rc;
#define NAME(s) (snprintf(n, sizeof n, "transformer.layers.%lld.%s", (long long)i, s), n)
    if ((rc = bind_w(b, NAME("attention.query_key_value.weight"), 3 * E, E, &l->w_qkv)) ||
        (rc = bind_w(b, NAME("attention.query_key_value.bias"), 0, 3 * E, &l->b_qkv)) ||
        (rc = bind_w(b, NAME("attention.dense.weight"), E, E, &l->w_o)) ||
        (rc = bind_w(b, NAME("attention.dense.bias"), 0, E, &l->b_o)) ||
        (rc = bind_w(b, NAME("mlp.fc1.weight"), F, E, &l->w_fc1)) ||
        (rc = bind_w(b, NAME("mlp.fc1.bias"), 0, F, &l->b_fc1)) ||
        (rc = bind_w(b, NAME("mlp.fc2.weight"), E, F, &l->w_fc2)) ||
        (rc = bind_w(b, NAME("mlp.fc2.bias"), 0, E, &l->b_fc2)) ||
        (rc = bind_f32(b, NAME("input_layernorm.weight"), 0, E, &l->ln_attn_w)) ||
        (rc = bind_f32(b, NAME("input_layernorm.bias"), 0, E, &l->ln_attn_b)) ||
        (rc = bind_f32(b, NAME("post_attention_layernorm.weight"), 0, E, &l->ln_mlp_w)) ||
        (rc = bind_f32(b, NAME("post_attention_layernorm.bias"), 0, E, &l->ln_mlp_b)))
        return rc;
#undef NAME
    return 0;
}

static int bind_all(vbinder *b) {
    mtok_vision *v = b->v;
    const mtok_vision_config *c = &v->cfg;
    const int64_t E = c->hidden, P = c->patch, L = c->lm_hidden, LF = c->lm_ffn;
    const int64_t pshape[4] = {E, 3, P, P}, cshape[4] = {L, E, 2, 2}, eshape[3] = {1, 1, L};
    mk_tensor boi, eoi;
    int rc;
    if ((rc = bind_nd(b, "patch_embedding.proj.weight", 4, pshape, &v->w_patch)) ||
        (rc = bind_f32(b, "patch_embedding.proj.bias", 0, E, &v->b_patch)) ||
        (rc = bind_f32(b, "patch_embedding.cls_embedding", 1, E, &v->cls)) ||
        (rc = bind_f32(b, "patch_embedding.position_embedding.weight", c->n_pos, E, &v->pos)))
        return rc;
    for (int64_t i = 0; i < c->n_layers; i++)
        if ((rc = bind_layer(b, i, &v->layers[i]))) return rc;
    if ((rc = bind_nd(b, "conv.weight", 4, cshape, &v->w_conv)) ||
        (rc = bind_w(b, "conv.bias", 0, L, &v->b_conv)) ||
        (rc = bind_w(b, "linear_proj.linear_proj.weight", L, L, &v->w_proj)) ||
        (rc = bind_f32(b, "linear_proj.norm1.weight", 0, L, &v->ln_glu_w)) ||
        (rc = bind_f32(b, "linear_proj.norm1.bias", 0, L, &v->ln_glu_b)) ||
        (rc = bind_w(b, "linear_proj.gate_proj.weight", LF, L, &v->w_gate)) ||
        (rc = bind_w(b, "linear_proj.dense_h_to_4h.weight", LF, L, &v->w_up)) ||
        (rc = bind_w(b, "linear_proj.dense_4h_to_h.weight", L, LF, &v->w_down)) ||
        (rc = bind_nd(b, "boi", 3, eshape, &boi)) || (rc = vis_own_f32(v, &boi, &v->boi)) ||
        (rc = bind_nd(b, "eoi", 3, eshape, &eoi)) || (rc = vis_own_f32(v, &eoi, &v->eoi)))
        return rc;
    return 0;
}

int vis_own_f32(mtok_vision *v, const mk_tensor *t, float **out) {
    const int64_t n = t->rows * t->cols;
    float *f = malloc((size_t)n * sizeof *f);
    void **grown = f ? realloc(v->owned, (size_t)(v->n_owned + 1) * sizeof *v->owned) : NULL;
    if (!grown) {
        free(f);
        return mtok_err(MTOK_ERESOURCE, "out of memory for vision weights");
    }
    v->owned = grown;
    v->owned[v->n_owned++] = f;
    for (int64_t i = 0; i < n; i++) f[i] = mk_get(t, i);
    *out = f;
    return 0;
}

int mtok_vision_load(const char *dir, mtok_vision **out) {
    *out = NULL;
    mtok_vision *v = calloc(1, sizeof *v);
    vbinder b = {.v = v};
    int rc;
    if (!v) return mtok_err(MTOK_ERESOURCE, "out of memory");
    if ((rc = mtok_vision_config_read(dir, &v->cfg))) goto fail;
    if (!(v->layers = calloc((size_t)v->cfg.n_layers, sizeof *v->layers))) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto fail;
    }
    if ((rc = mtok_ckpt_open(dir, &v->shards, &v->n_shards, &b.st)) || (rc = bind_all(&b)))
        goto fail;
    mtok_log(1, "%s: vision tower: %lld layers, hidden %lld, %lld heads, image %lld (%lld x %lld patches of %lld) -> "
             "%lld embeddings of %lld", dir, (long long)v->cfg.n_layers, (long long)v->cfg.hidden,
             (long long)v->cfg.n_heads, (long long)v->cfg.image, (long long)v->cfg.grid, (long long)v->cfg.grid,
             (long long)v->cfg.patch, (long long)mtok_vision_out_rows(&v->cfg), (long long)v->cfg.lm_hidden);
    mtok_ckpt_close(b.st);
    *out = v;
    return 0;
fail:
    mtok_ckpt_close(b.st);
    mtok_vision_free(v);
    return rc;
}

void mtok_vision_free(mtok_vision *v) {
    if (!v) return;
    mtok_shards_free(v->shards, v->n_shards);
    for (int i = 0; i < v->n_owned; i++) free(v->owned[i]);
    free(v->owned);
    free(v->layers);
    free(v);
}

const mtok_vision_config *mtok_vision_cfg(const mtok_vision *v) { return &v->cfg; }
