/* loader.c — a checkpoint directory -> mtok_model: config.json, mmapped safetensors, tensors bound
 * by name to the roles of mtok_weights with shapes derived from the config (docs/GLM.md §2.3–§2.4).
 *
 * Both namings end in the same mtok_weights: the chatglm fused tensors (query_key_value,
 * dense_h_to_4h) are bound as row views, so nothing is copied or converted. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strdup, O_CLOEXEC under -std=c11 */
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "safetensors.h"


#define MAX_CONFIG_BYTES (16 << 20)
#define NAME_CAP 256

/* Binding context: the table, the config the shapes come from, and whether a 2-D weight has fixed
 * the model dtype yet. */
typedef struct {
    const char *dir;
    mtok_ckpt *st;
    mtok_config *cfg;
    int have_dtype;
} binder;

/* ---- config.json ---- */

static int read_config(const char *dir, const mtok_load_params *p, mtok_config *cfg) {
    size_t n = strlen(dir) + sizeof "/config.json";
    char *path = malloc(n), *buf = NULL;
    FILE *f = NULL;
    int rc;
    if (!path) return mtok_err(MTOK_ERESOURCE, "out of memory");
    snprintf(path, n, "%s/config.json", dir);
    if (!(f = fopen(path, "rb"))) {
        rc = mtok_err(MTOK_EINPUT, "%s: cannot open (%s)", path, strerror(errno));
        goto out;
    }
    if (!(buf = malloc(MAX_CONFIG_BYTES))) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto out;
    }
    size_t len = fread(buf, 1, MAX_CONFIG_BYTES, f);
    if (ferror(f)) {
        rc = mtok_err(MTOK_EINPUT, "%s: read error", path);
        goto out;
    }
    if (len == MAX_CONFIG_BYTES) {
        rc = mtok_err(MTOK_EINPUT, "%s: larger than %d bytes; not a model config", path, MAX_CONFIG_BYTES);
        goto out;
    }
    rc = mtok_config_parse(path, buf, len, p, cfg);
out:
    if (f) fclose(f);
    free(buf);
    free(path);
    return rc;
}

/* ---- binding ---- */

/* A 2-D weight [rows, cols]; all of them must share one dtype (the kernels take one weight format). */
static int bind_w(binder *b, const char *name, int64_t rows, int64_t cols, mk_tensor *out) {
    const char *file;
    int rc = mtok_ckpt_bind(b->st, name, rows, cols, out, &file);
    if (rc) return rc;
    if (!b->have_dtype) {
        if (out->dtype != b->cfg->dtype)
            mtok_log(2, "%s: weights are %s although torch_dtype says %s", file, mtok_dtype_name(out->dtype),
                     mtok_dtype_name(b->cfg->dtype));
        b->cfg->dtype = out->dtype;
        b->have_dtype = 1;
    } else if (out->dtype != b->cfg->dtype) {
        return mtok_err(MTOK_EINPUT, "%s: tensor %s has dtype %s but the other weights are %s; mtok needs one "
                        "dtype for all 2-D weights", file, name, mtok_dtype_name(out->dtype),
                        mtok_dtype_name(b->cfg->dtype));
    }
    return 0;
}

/* A 1-D vector (norm gain, bias) of n elements, any dtype. */
static int bind_v(binder *b, const char *name, int64_t n, mk_tensor *out) {
    return mtok_ckpt_bind(b->st, name, 0, n, out, NULL);
}

/* Elements [c0, c0+n) of a 1-D tensor: the split of the fused QKV bias. */
static mk_tensor cols_view(mk_tensor t, int64_t c0, int64_t n) {
    mk_tensor v = t;
    v.data = (const char *)t.data + (size_t)c0 * mtok_dtype_size(t.dtype);
    v.cols = n;
    return v;
}

/* A bias tensor the config says does not exist would be silently dropped: refuse instead. */
static int no_bias(binder *b, const char *name) {
    if (mtok_ckpt_has(b->st, name))
        return mtok_err(MTOK_EINPUT, "%s/config.json: says the model has no QKV bias, but the checkpoint has "
                        "tensor %s", b->dir, name);
    return 0;
}

static int bind_layer_chatglm(binder *b, int64_t i, mtok_layer *l) {
    const mtok_config *c = b->cfg;
    const int64_t E = c->hidden, qd = c->n_heads * c->head_dim, kd = c->n_kv_groups * c->head_dim, F = c->ffn;
    char n[NAME_CAP];
    int rc;
    mk_tensor qkv, mlp;
#define NAME(suffix) (snprintf(n, sizeof n, "transformer.encoder.layers.%lld.%s", (long long)i, suffix), n)
    if ((rc = bind_v(b, NAME("input_layernorm.weight"), E, &l->attn_norm)) ||
        (rc = bind_w(b, NAME("self_attention.query_key_value.weight"), qd + 2 * kd, E, &qkv)) ||
        (rc = bind_w(b, NAME("self_attention.dense.weight"), E, qd, &l->wo)) ||
        (rc = bind_v(b, NAME("post_attention_layernorm.weight"), E, &l->mlp_norm)) ||
        (rc = bind_w(b, NAME("mlp.dense_h_to_4h.weight"), 2 * F, E, &mlp)) ||
        (rc = bind_w(b, NAME("mlp.dense_4h_to_h.weight"), E, F, &l->w_down)))
        return rc;
    /* fused row order [Q heads | K groups | V groups] and [gate | up] (docs/GLM.md §2.3) */
    l->wq = mk_rows(qkv, 0, qd);
    l->wk = mk_rows(qkv, qd, kd);
    l->wv = mk_rows(qkv, qd + kd, kd);
    l->w_gate = mk_rows(mlp, 0, F);
    l->w_up = mk_rows(mlp, F, F);
    if (!c->qkv_bias) return no_bias(b, NAME("self_attention.query_key_value.bias"));
    mk_tensor bias;
    if ((rc = bind_v(b, NAME("self_attention.query_key_value.bias"), qd + 2 * kd, &bias))) return rc;
    l->bq = cols_view(bias, 0, qd);
    l->bk = cols_view(bias, qd, kd);
    l->bv = cols_view(bias, qd + kd, kd);
#undef NAME
    return 0;
}

static int bind_layer_hf(binder *b, int64_t i, mtok_layer *l) {
    const mtok_config *c = b->cfg;
    const int64_t E = c->hidden, qd = c->n_heads * c->head_dim, kd = c->n_kv_groups * c->head_dim, F = c->ffn;
    char n[NAME_CAP];
    int rc;
    mk_tensor mlp;
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%lld.%s", (long long)i, suffix), n)
    if ((rc = bind_v(b, NAME("input_layernorm.weight"), E, &l->attn_norm)) ||
        (rc = bind_w(b, NAME("self_attn.q_proj.weight"), qd, E, &l->wq)) ||
        (rc = bind_w(b, NAME("self_attn.k_proj.weight"), kd, E, &l->wk)) ||
        (rc = bind_w(b, NAME("self_attn.v_proj.weight"), kd, E, &l->wv)) ||
        (rc = bind_w(b, NAME("self_attn.o_proj.weight"), E, qd, &l->wo)) ||
        (rc = bind_v(b, NAME("post_attention_layernorm.weight"), E, &l->mlp_norm)) ||
        (rc = bind_w(b, NAME("mlp.gate_up_proj.weight"), 2 * F, E, &mlp)) ||
        (rc = bind_w(b, NAME("mlp.down_proj.weight"), E, F, &l->w_down)))
        return rc;
    l->w_gate = mk_rows(mlp, 0, F);
    l->w_up = mk_rows(mlp, F, F);
    if (!c->qkv_bias) {
        if ((rc = no_bias(b, NAME("self_attn.q_proj.bias"))) || (rc = no_bias(b, NAME("self_attn.k_proj.bias"))) ||
            (rc = no_bias(b, NAME("self_attn.v_proj.bias"))))
            return rc;
        return 0;
    }
    if ((rc = bind_v(b, NAME("self_attn.q_proj.bias"), qd, &l->bq)) ||
        (rc = bind_v(b, NAME("self_attn.k_proj.bias"), kd, &l->bk)) ||
        (rc = bind_v(b, NAME("self_attn.v_proj.bias"), kd, &l->bv)))
        return rc;
#undef NAME
    return 0;
}

static int bind_all(binder *b, mtok_weights *w) {
    const mtok_config *c = b->cfg;
    const int hf = c->naming == MTOK_NAMING_HF;
    int rc;
    /* the embedding goes first: its dtype becomes the model dtype the other weights must match */
    if ((rc = bind_w(b, hf ? "model.embed_tokens.weight" : "transformer.embedding.word_embeddings.weight",
                     c->vocab, c->hidden, &w->embed)))
        return rc;
    for (int64_t i = 0; i < c->n_layers; i++) {
        rc = hf ? bind_layer_hf(b, i, &w->layers[i]) : bind_layer_chatglm(b, i, &w->layers[i]);
        if (rc) return rc;
    }
    if ((rc = bind_v(b, hf ? "model.norm.weight" : "transformer.encoder.final_layernorm.weight", c->hidden,
                     &w->final_norm)) ||
        (rc = bind_w(b, hf ? "lm_head.weight" : "transformer.output_layer.weight", c->vocab, c->hidden, &w->output)))
        return rc;
    /* the stored inv_freq buffer uses base 10000 whatever rope_ratio says (docs/GLM.md §2.3): never read */
    mtok_ckpt_log_unused(b->st, hf ? NULL : "transformer.rotary_pos_emb.inv_freq");
    return 0;
}

/* ---- fingerprint ---- */

/* The numbers that decide what the forward pass computes (and so what a saved KV cache means), then
 * the tensor table. Context length and stop ids do not change the KV contents and are left out. */
static int fingerprint(const mtok_ckpt *st, const mtok_config *c, uint64_t *out) {
    XXH3_state_t *h = XXH3_createState();
    if (!h) return mtok_err(MTOK_ERESOURCE, "out of memory");
    uint64_t base_bits, eps_bits;
    double eps = c->norm_eps;
    memcpy(&base_bits, &c->rope_base, sizeof base_bits);
    memcpy(&eps_bits, &eps, sizeof eps_bits);
    const uint64_t rec[] = {0x6d746f6b63666731ull, /* "mtokcfg1": version of this layout */
                            (uint64_t)c->n_layers, (uint64_t)c->hidden, (uint64_t)c->n_heads,
                            (uint64_t)c->n_kv_groups, (uint64_t)c->head_dim, (uint64_t)c->ffn,
                            (uint64_t)c->vocab, (uint64_t)c->rope_dim, base_bits, eps_bits,
                            (uint64_t)c->qkv_bias, (uint64_t)c->dtype};
    int rc = 0;
    if (XXH3_64bits_reset(h) != XXH_OK || XXH3_64bits_update(h, rec, sizeof rec) != XXH_OK)
        rc = mtok_err(MTOK_EINTERNAL, "xxhash failed");
    if (!rc) rc = mtok_ckpt_hash(st, h);
    if (!rc) *out = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    return rc;
}

/* ---- public API ---- */

int mtok_model_load(const char *dir, const mtok_load_params *p, mtok_model **out) {
    *out = NULL;
    mtok_ckpt *st = NULL;
    mtok_model *m = calloc(1, sizeof *m);
    int rc;
    if (!m || !(m->dir = strdup(dir))) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto fail;
    }
    if ((rc = read_config(dir, p, &m->cfg))) goto fail;
    if (!(m->w.layers = calloc((size_t)m->cfg.n_layers, sizeof *m->w.layers))) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto fail;
    }
    if ((rc = mtok_ckpt_open(dir, &m->shards, &m->n_shards, &st))) goto fail;
    /* the shard files as mapped: the KV-file identity (core/identity.c, computed on first use) hashes
     * them only while they are still these files */
    if ((m->id_memo = calloc(1, sizeof *m->id_memo))) pthread_mutex_init(&m->id_memo->lock, NULL);
    if (!m->id_memo ||
        !(m->id_memo->keys = calloc((size_t)(m->n_shards > 0 ? m->n_shards : 1), sizeof *m->id_memo->keys))) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        goto fail;
    }
    for (int i = 0; i < m->n_shards; i++) mtok_file_key_of(m->shards[i].path, &m->id_memo->keys[i]);
    binder b = {dir, st, &m->cfg, 0};
    if ((rc = bind_all(&b, &m->w)) || (rc = fingerprint(st, &m->cfg, &m->fingerprint))) goto fail;
    m->weight_bytes = mtok_ckpt_bound_bytes(st);
    mtok_ckpt_close(st);
    st = NULL;
    if ((rc = mtok_tp_apply(m, p ? p->tp_rank : 0, p ? p->tp_size : 1))) goto fail;
    mtok_log(1, "%s: %lld layers, hidden %lld, %lld heads / %lld KV groups, %s weights %.2f GB in %d file%s, "
             "RoPE base %g", dir, (long long)m->cfg.n_layers, (long long)m->cfg.hidden, (long long)m->cfg.n_heads,
             (long long)m->cfg.n_kv_groups, mtok_dtype_name(m->cfg.dtype), (double)m->weight_bytes / 1e9,
             m->n_shards, m->n_shards == 1 ? "" : "s", m->cfg.rope_base);
    *out = m;
    return 0;
fail:
    mtok_ckpt_close(st);
    mtok_model_free(m);
    return rc;
}

void mtok_model_free(mtok_model *m) {
    if (!m) return;
    mtok_shards_free(m->shards, m->n_shards);
    if (m->id_memo) {
        pthread_mutex_destroy(&m->id_memo->lock);
        free(m->id_memo->keys);
        free(m->id_memo);
    }
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->w.layers);
    free(m->dir);
    free(m);
}

const mtok_config *mtok_model_config(const mtok_model *m) { return &m->cfg; }
uint64_t mtok_model_fingerprint(const mtok_model *m) { return m->fingerprint; }
uint64_t mtok_model_weight_bytes(const mtok_model *m) { return m->weight_bytes; }
