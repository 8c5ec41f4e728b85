/* test_loader.c — config.json parsing, safetensors validation and weight binding.
 *
 * Writes its own tiny checkpoints from scratch (its own safetensors writer, random bf16) in both
 * namings, single-file and sharded, and checks that all four load into the same weights, bound to the
 * right rows of the fused tensors. Then it corrupts them one way at a time and checks that each
 * failure is MTOK_EINPUT with a message naming the file and the tensor. argv[1] = source dir (unused:
 * everything is generated). Exit 0 pass, 1 fail. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp, nftw, strdup */
#endif
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "core/model.h"

/* The tiny model: every size distinct so that a transposed or mis-split tensor cannot pass. */
enum { E = 64, NL = 2, H = 4, D = 16, G = 2, F = 96, V = 128, QD = H * D, KD = G * D };
#define NAME_CAP 160
#define MAX_T 64

#include "check.h"

/* ---- the source weights (one set, written in both namings) ---- */

typedef struct {
    uint16_t *attn_norm, *q, *k, *v, *bq, *bk, *bv, *o, *mlp_norm, *gate_up, *down;
} src_layer;
typedef struct {
    uint16_t *embed, *final_norm, *output;
    src_layer l[NL];
    float inv_freq[D / 4];
    void *all[NL * 11 + 3];
    int n_all;
} src_weights;

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint16_t *rnd_bf16(src_weights *w, size_t n) {
    uint16_t *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) {
        g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
        p[i] = mk_f32_to_bf16((float)((double)(g_rng >> 11) / 9007199254740992.0 * 2 - 1));
    }
    w->all[w->n_all++] = p;
    return p;
}

static void src_init(src_weights *w) {
    memset(w, 0, sizeof *w);
    w->embed = rnd_bf16(w, (size_t)V * E);
    for (int i = 0; i < NL; i++) {
        src_layer *l = &w->l[i];
        l->attn_norm = rnd_bf16(w, E), l->mlp_norm = rnd_bf16(w, E);
        l->q = rnd_bf16(w, (size_t)QD * E), l->k = rnd_bf16(w, (size_t)KD * E), l->v = rnd_bf16(w, (size_t)KD * E);
        l->bq = rnd_bf16(w, QD), l->bk = rnd_bf16(w, KD), l->bv = rnd_bf16(w, KD);
        l->o = rnd_bf16(w, (size_t)E * QD);
        l->gate_up = rnd_bf16(w, (size_t)2 * F * E), l->down = rnd_bf16(w, (size_t)E * F);
    }
    w->final_norm = rnd_bf16(w, E);
    w->output = rnd_bf16(w, (size_t)V * E);
    for (int i = 0; i < D / 4; i++) w->inv_freq[i] = (float)(1.0 / pow(10000.0, 4.0 * i / D));
}

static void src_free(src_weights *w) {
    for (int i = 0; i < w->n_all; i++) free(w->all[i]);
}

/* ---- tensor lists in either naming ---- */

typedef struct {
    char name[NAME_CAP];
    const char *dtype;
    int ndim;
    int64_t shape[2];
    const void *data;
    size_t nbytes;
} tw_tensor;
typedef struct {
    tw_tensor t[MAX_T];
    int n;
    void *owned[2 * NL];
    int n_owned;
} tw_list;

static void add(tw_list *L, const char *name, int64_t rows, int64_t cols, const void *data) {
    tw_tensor *t = &L->t[L->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = "BF16";
    t->ndim = rows ? 2 : 1;
    t->shape[0] = rows ? rows : cols;
    t->shape[1] = cols;
    t->data = data;
    t->nbytes = (size_t)(rows ? rows : 1) * (size_t)cols * 2;
}

/* Concatenation of three arrays of uint16 (the fused QKV as the chatglm checkpoint stores it). */
static void *cat3(tw_list *L, const uint16_t *a, size_t na, const uint16_t *b, size_t nb, const uint16_t *c,
                  size_t nc) {
    uint16_t *p = malloc((na + nb + nc) * 2);
    memcpy(p, a, na * 2), memcpy(p + na, b, nb * 2), memcpy(p + na + nb, c, nc * 2);
    L->owned[L->n_owned++] = p;
    return p;
}

static void list_build(tw_list *L, const src_weights *w, int hf) {
    memset(L, 0, sizeof *L);
    char n[NAME_CAP];
    add(L, hf ? "model.embed_tokens.weight" : "transformer.embedding.word_embeddings.weight", V, E, w->embed);
    if (!hf) {
        add(L, "transformer.rotary_pos_emb.inv_freq", 0, D / 4, w->inv_freq);
        L->t[L->n - 1].dtype = "F32";
        L->t[L->n - 1].nbytes = sizeof w->inv_freq;
    }
    for (int i = 0; i < NL; i++) {
        const src_layer *l = &w->l[i];
#define N(fmt) (snprintf(n, sizeof n, fmt, i), n)
        if (hf) {
            add(L, N("model.layers.%d.input_layernorm.weight"), 0, E, l->attn_norm);
            add(L, N("model.layers.%d.self_attn.q_proj.weight"), QD, E, l->q);
            add(L, N("model.layers.%d.self_attn.k_proj.weight"), KD, E, l->k);
            add(L, N("model.layers.%d.self_attn.v_proj.weight"), KD, E, l->v);
            add(L, N("model.layers.%d.self_attn.q_proj.bias"), 0, QD, l->bq);
            add(L, N("model.layers.%d.self_attn.k_proj.bias"), 0, KD, l->bk);
            add(L, N("model.layers.%d.self_attn.v_proj.bias"), 0, KD, l->bv);
            add(L, N("model.layers.%d.self_attn.o_proj.weight"), E, QD, l->o);
            add(L, N("model.layers.%d.post_attention_layernorm.weight"), 0, E, l->mlp_norm);
            add(L, N("model.layers.%d.mlp.gate_up_proj.weight"), 2 * F, E, l->gate_up);
            add(L, N("model.layers.%d.mlp.down_proj.weight"), E, F, l->down);
        } else {
            add(L, N("transformer.encoder.layers.%d.input_layernorm.weight"), 0, E, l->attn_norm);
            add(L, N("transformer.encoder.layers.%d.self_attention.query_key_value.weight"), QD + 2 * KD, E,
                cat3(L, l->q, (size_t)QD * E, l->k, (size_t)KD * E, l->v, (size_t)KD * E));
            add(L, N("transformer.encoder.layers.%d.self_attention.query_key_value.bias"), 0, QD + 2 * KD,
                cat3(L, l->bq, QD, l->bk, KD, l->bv, KD));
            add(L, N("transformer.encoder.layers.%d.self_attention.dense.weight"), E, QD, l->o);
            add(L, N("transformer.encoder.layers.%d.post_attention_layernorm.weight"), 0, E, l->mlp_norm);
            add(L, N("transformer.encoder.layers.%d.mlp.dense_h_to_4h.weight"), 2 * F, E, l->gate_up);
            add(L, N("transformer.encoder.layers.%d.mlp.dense_4h_to_h.weight"), E, F, l->down);
        }
#undef N
    }
    add(L, hf ? "model.norm.weight" : "transformer.encoder.final_layernorm.weight", 0, E, w->final_norm);
    add(L, hf ? "lm_head.weight" : "transformer.output_layer.weight", V, E, w->output);
}

static void list_free(tw_list *L) {
    for (int i = 0; i < L->n_owned; i++) free(L->owned[i]);
}

/* ---- a safetensors writer with ways to lie ---- */

typedef enum { P_NONE, P_DTYPE, P_SHAPE, P_PAST_END, P_SHORT, P_LIKE } pkind;
typedef struct {
    pkind kind;
    const char *name;  /* the tensor whose header entry lies */
    const char *dtype; /* P_DTYPE */
    int64_t shape[2];  /* P_SHAPE (2-D) */
    const char *like;  /* P_LIKE: take this tensor's data_offsets (overlap) */
} tw_patch;

static int write_st(const char *path, const tw_tensor *t, int n, const tw_patch *pt) {
    static char hdr[1 << 16];
    uint64_t off[MAX_T + 1] = {0};
    for (int i = 0; i < n; i++) off[i + 1] = off[i] + t[i].nbytes;
    size_t o = (size_t)snprintf(hdr, sizeof hdr, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        const char *dt = t[i].dtype;
        int64_t sh[2] = {t[i].shape[0], t[i].shape[1]};
        uint64_t b = off[i], e = off[i + 1];
        if (pt && pt->kind != P_NONE && !strcmp(pt->name, t[i].name)) {
            if (pt->kind == P_DTYPE) dt = pt->dtype;
            if (pt->kind == P_SHAPE) sh[0] = pt->shape[0], sh[1] = pt->shape[1];
            if (pt->kind == P_PAST_END) b += off[n], e += off[n];
            if (pt->kind == P_SHORT) e -= 2;
            for (int j = 0; pt->kind == P_LIKE && j < n; j++)
                if (!strcmp(t[j].name, pt->like)) b = off[j], e = off[j + 1];
        }
        o += (size_t)snprintf(hdr + o, sizeof hdr - o, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld", t[i].name, dt,
                              (long long)sh[0]);
        if (t[i].ndim == 2) o += (size_t)snprintf(hdr + o, sizeof hdr - o, ",%lld", (long long)sh[1]);
        o += (size_t)snprintf(hdr + o, sizeof hdr - o, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)b,
                              (unsigned long long)e);
    }
    hdr[o++] = '}';
    while (o % 8) hdr[o++] = ' '; /* the reference writer pads the header to 8 bytes */
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)o >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(hdr, 1, o, f);
    for (int i = 0; i < n; i++) fwrite(t[i].data, 1, t[i].nbytes, f);
    return fclose(f);
}

/* ---- configs ---- */

static json_t *base_config(int hf) {
    if (hf)
        return json_pack("{s:s, s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:i, s:b, s:s, s:[i,i], "
                         "s:i, s:s, s:b}",
                         "model_type", "glm", "architectures", "GlmForCausalLM", "num_hidden_layers", NL,
                         "hidden_size", E, "num_attention_heads", H, "num_key_value_heads", G, "head_dim", D,
                         "intermediate_size", F, "vocab_size", V, "rms_norm_eps", 1.5625e-07, "rope_theta", 5e6,
                         "partial_rotary_factor", 0.5, "max_position_embeddings", 4096, "attention_bias", 1,
                         "torch_dtype", "bfloat16", "eos_token_id", 120, 121, "pad_token_id", 120, "hidden_act",
                         "silu", "tie_word_embeddings", 0);
    return json_pack("{s:s, s:[s], s:i, s:i, s:i, s:b, s:i, s:i, s:i, s:i, s:f, s:i, s:i, s:b, s:b, s:b, s:b, "
                     "s:b, s:b, s:[i,i], s:i, s:s}",
                     "model_type", "chatglm", "architectures", "ChatGLMModel", "num_layers", NL, "hidden_size", E,
                     "num_attention_heads", H, "multi_query_attention", 1, "multi_query_group_num", G,
                     "kv_channels", D, "ffn_hidden_size", F, "padded_vocab_size", V, "layernorm_epsilon",
                     1.5625e-07, "rope_ratio", 500, "seq_length", 4096, "add_qkv_bias", 1, "add_bias_linear", 0,
                     "rmsnorm", 1, "apply_residual_connection_post_layernorm", 0, "original_rope", 1,
                     "post_layer_norm", 1, "eos_token_id", 120, 121, "pad_token_id", 120, "torch_dtype",
                     "bfloat16");
}

static int parse_cfg(json_t *j, const mtok_load_params *p, mtok_config *cfg) {
    char *s = json_dumps(j, JSON_COMPACT);
    int rc = mtok_config_parse("x/config.json", s, strlen(s), p, cfg);
    free(s);
    json_decref(j);
    return rc;
}

/* ---- checkpoint directories ---- */

typedef struct {
    int hf, shards;
    const char *drop;   /* leave this tensor out */
    tw_patch patch;
    int index_lie;      /* the index maps the first tensor to the wrong shard */
    int extra;          /* add an unknown tensor (must be ignored) */
    int f32_norm;       /* store the final norm as F32 */
    json_t *config;     /* NULL: base_config (stolen) */
} ckopt;

static char g_tmp[64];
static char g_last_in_shard[8][NAME_CAP];

static char *dir_of(const char *name) {
    static char buf[8][256];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 256, "%s/%s", g_tmp, name);
    return p;
}

static void write_ckpt(const char *dir, const src_weights *w, ckopt o) {
    tw_list L;
    list_build(&L, w, o.hf);
    mkdir(dir, 0755);
    char path[512];
    json_t *cfg = o.config ? o.config : base_config(o.hf);
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_dump_file(cfg, path, JSON_INDENT(2));
    json_decref(cfg);

    if (o.extra) { /* 6 bytes, just before the final norm (which is second to last) */
        static const uint16_t extra[3] = {1, 2, 3};
        L.t[L.n] = L.t[L.n - 1];
        L.t[L.n - 1] = L.t[L.n - 2];
        L.n -= 2;
        add(&L, "transformer.vision.unknown", 0, 3, extra);
        L.n += 2;
    }
    if (o.f32_norm) { /* norms may be stored in another dtype than the weights */
        static float fn[E];
        for (int i = 0; i < E; i++) fn[i] = mk_bf16_to_f32(w->final_norm[i]);
        tw_tensor *t = &L.t[L.n - 2]; /* the final norm */
        t->dtype = "F32", t->data = fn, t->nbytes = sizeof fn;
    }
    int n = 0;
    for (int i = 0; i < L.n; i++)
        if (!o.drop || strcmp(o.drop, L.t[i].name)) L.t[n++] = L.t[i];
    int S = o.shards > 1 ? o.shards : 1;
    json_t *wm = json_object();
    for (int s = 0; s < S; s++) {
        int a = s * n / S, b = (s + 1) * n / S;
        char fname[64];
        if (S == 1) snprintf(fname, sizeof fname, "model.safetensors");
        else snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, S);
        snprintf(path, sizeof path, "%s/%s", dir, fname);
        if (write_st(path, L.t + a, b - a, &o.patch)) CHECK(0, "cannot write %s", path);
        snprintf(g_last_in_shard[s], NAME_CAP, "%s", L.t[b - 1].name);
        for (int i = a; i < b; i++) json_object_set_new(wm, L.t[i].name, json_string(fname));
    }
    if (S > 1) {
        if (o.index_lie) json_object_set_new(wm, L.t[0].name, json_string("model-00002-of-00003.safetensors"));
        json_t *idx = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", wm);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        json_dump_file(idx, path, JSON_INDENT(2));
        json_decref(idx);
    } else {
        json_decref(wm);
    }
    list_free(&L);
}

/* ---- checks ---- */

static int same_bytes(const mk_tensor *t, const void *src, int64_t rows, int64_t cols) {
    return t->data && t->dtype == MTOK_BF16 && t->rows == rows && t->cols == cols &&
           !memcmp(t->data, src, (size_t)(rows * cols) * 2);
}

/* Every role is bound to exactly the source bytes: proves the fused-row splits are right. */
static void check_weights(const char *what, const mtok_model *m, const src_weights *w) {
    const mtok_weights *mw = &m->w;
    CHECK(same_bytes(&mw->embed, w->embed, V, E), "%s: embed", what);
    CHECK(same_bytes(&mw->output, w->output, V, E), "%s: output", what);
    CHECK(same_bytes(&mw->final_norm, w->final_norm, 1, E), "%s: final_norm", what);
    for (int i = 0; i < NL; i++) {
        const mtok_layer *l = &mw->layers[i];
        const src_layer *s = &w->l[i];
        CHECK(same_bytes(&l->attn_norm, s->attn_norm, 1, E), "%s: layer %d attn_norm", what, i);
        CHECK(same_bytes(&l->mlp_norm, s->mlp_norm, 1, E), "%s: layer %d mlp_norm", what, i);
        CHECK(same_bytes(&l->wq, s->q, QD, E), "%s: layer %d wq", what, i);
        CHECK(same_bytes(&l->wk, s->k, KD, E), "%s: layer %d wk", what, i);
        CHECK(same_bytes(&l->wv, s->v, KD, E), "%s: layer %d wv", what, i);
        CHECK(same_bytes(&l->bq, s->bq, 1, QD), "%s: layer %d bq", what, i);
        CHECK(same_bytes(&l->bk, s->bk, 1, KD), "%s: layer %d bk", what, i);
        CHECK(same_bytes(&l->bv, s->bv, 1, KD), "%s: layer %d bv", what, i);
        CHECK(same_bytes(&l->wo, s->o, E, QD), "%s: layer %d wo", what, i);
        CHECK(same_bytes(&l->w_gate, s->gate_up, F, E), "%s: layer %d w_gate", what, i);
        CHECK(same_bytes(&l->w_up, s->gate_up + (size_t)F * E, F, E), "%s: layer %d w_up", what, i);
        CHECK(same_bytes(&l->w_down, s->down, E, F), "%s: layer %d w_down", what, i);
    }
}

static void check_config(const char *what, const mtok_config *c, int hf) {
    CHECK(c->naming == (hf ? MTOK_NAMING_HF : MTOK_NAMING_CHATGLM), "%s: naming", what);
    CHECK(c->n_layers == NL && c->hidden == E && c->n_heads == H && c->n_kv_groups == G && c->head_dim == D &&
              c->ffn == F && c->vocab == V && c->rope_dim == D / 2 && c->max_ctx == 4096 && c->qkv_bias == 1,
          "%s: sizes", what);
    CHECK(c->rope_base == 5e6 && c->rope_base_config == 5e6, "%s: rope base %g / %g", what, c->rope_base,
          c->rope_base_config);
    CHECK(c->norm_eps == 1.5625e-07f, "%s: eps %g", what, c->norm_eps);
    CHECK(c->n_eos == 2 && c->eos_ids[0] == 120 && c->eos_ids[1] == 121 && c->pad_id == 120, "%s: eos/pad", what);
    CHECK(c->dtype == MTOK_BF16, "%s: dtype", what);
}

/* Loads dir, expecting MTOK_EINPUT and a message that contains s1 and s2 (either may be NULL). */
static void expect_fail(const char *what, const char *dir, const mtok_load_params *p, const char *s1,
                        const char *s2) {
    mtok_model *m = (mtok_model *)1;
    int rc = mtok_model_load(dir, p, &m);
    const char *msg = mtok_errmsg();
    CHECK(rc == MTOK_EINPUT, "%s: rc %d (%s)", what, rc, msg);
    CHECK(m == NULL, "%s: model not NULL on failure", what);
    CHECK(!s1 || strstr(msg, s1), "%s: message lacks '%s': %s", what, s1, msg);
    CHECK(!s2 || strstr(msg, s2), "%s: message lacks '%s': %s", what, s2, msg);
    CHECK(!strchr(msg, '\n'), "%s: message is not one line", what);
    if (rc == 0) mtok_model_free(m);
    printf("  %-28s -> %s\n", what, msg);
}

static void expect_cfg_fail(const char *what, json_t *j, const char *s1) {
    mtok_config c;
    int rc = parse_cfg(j, NULL, &c);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), s1) && strstr(mtok_errmsg(), "x/config.json"),
          "%s: rc %d, message '%s' (want '%s')", what, rc, mtok_errmsg(), s1);
    printf("  %-28s -> %s\n", what, mtok_errmsg());
}

/* ---- the tests ---- */

static void test_good(const src_weights *w) {
    const char *names[4] = {"chatglm1", "chatglm3", "hf1", "hf3"};
    uint64_t fp[4] = {0};
    for (int k = 0; k < 4; k++) {
        int hf = k >= 2, shards = k % 2 ? 3 : 1;
        write_ckpt(dir_of(names[k]), w, (ckopt){.hf = hf, .shards = shards});
        mtok_model *m = NULL;
        int rc = mtok_model_load(dir_of(names[k]), NULL, &m);
        CHECK(rc == 0 && m, "%s: load failed: %s", names[k], mtok_errmsg());
        if (rc) continue;
        check_config(names[k], mtok_model_config(m), hf);
        check_weights(names[k], m, w);
        CHECK(m->n_shards == shards, "%s: %d shards", names[k], m->n_shards);
        /* bound bytes: every weight once (the fused tensors count once, inv_freq not at all) */
        uint64_t want = 2ull * (2 * (uint64_t)V * E + E +
                                NL * (2ull * E + (uint64_t)(QD + 2 * KD) * (E + 1) + (uint64_t)E * QD + 3ull * F * E));
        CHECK(mtok_model_weight_bytes(m) == want, "%s: weight_bytes %llu, want %llu", names[k],
              (unsigned long long)mtok_model_weight_bytes(m), (unsigned long long)want);
        fp[k] = mtok_model_fingerprint(m);
        mtok_model_free(m);
    }
    CHECK(fp[0] && fp[0] == fp[1], "chatglm fingerprint differs between single file and shards");
    CHECK(fp[2] && fp[2] == fp[3], "hf fingerprint differs between single file and shards");
    CHECK(fp[0] != fp[2], "fingerprints of the two namings coincide (tensor tables differ)");

    /* unknown tensors are logged and ignored (they are not weights of the model) */
    write_ckpt(dir_of("extra"), w, (ckopt){.shards = 3, .extra = 1});
    mtok_model *mx = NULL;
    CHECK(mtok_model_load(dir_of("extra"), NULL, &mx) == 0, "extra tensor: %s", mtok_errmsg());
    if (mx) {
        check_weights("extra", mx, w);
        mtok_model_free(mx);
    }

    write_ckpt(dir_of("f32norm"), w, (ckopt){.hf = 1, .f32_norm = 1});
    CHECK(mtok_model_load(dir_of("f32norm"), NULL, &mx) == 0, "f32 norm: %s", mtok_errmsg());
    if (mx) {
        const mk_tensor *t = &mx->w.final_norm;
        CHECK(t->dtype == MTOK_F32 && t->cols == E && mx->cfg.dtype == MTOK_BF16, "f32 norm: dtype");
        for (int i = 0; t->dtype == MTOK_F32 && i < E; i++)
            CHECK(((const float *)t->data)[i] == mk_bf16_to_f32(w->final_norm[i]), "f32 norm: value %d", i);
        mtok_model_free(mx);
    }
    /* 6 bytes of an unknown tensor before it leave the F32 norm misaligned */
    write_ckpt(dir_of("misaligned"), w, (ckopt){.hf = 1, .f32_norm = 1, .extra = 1});
    expect_fail("misaligned tensor", dir_of("misaligned"), NULL, "model.norm.weight", "element size");

    /* a different RoPE base is a different model for the KV cache */
    mtok_model *m = NULL;
    mtok_load_params p = {.rope_base = 1234.5};
    CHECK(mtok_model_load(dir_of("hf1"), &p, &m) == 0, "override load: %s", mtok_errmsg());
    if (m) {
        CHECK(m->cfg.rope_base == 1234.5 && m->cfg.rope_base_config == 5e6, "override: base %g", m->cfg.rope_base);
        CHECK(mtok_model_fingerprint(m) != fp[2], "fingerprint ignores the RoPE base");
        mtok_model_free(m);
    }
}

static void test_file_corruption(const src_weights *w) {
    char path[512];
    const char *shard2 = "model-00002-of-00003.safetensors";

    /* truncated shard: the last tensor of shard 2 runs past the end */
    write_ckpt(dir_of("trunc"), w, (ckopt){.shards = 3});
    snprintf(path, sizeof path, "%s/%s", dir_of("trunc"), shard2);
    struct stat sb;
    stat(path, &sb);
    CHECK(truncate(path, sb.st_size - 10) == 0, "truncate");
    expect_fail("truncated shard", dir_of("trunc"), NULL, shard2, g_last_in_shard[1]);

    /* truncated to less than the length field */
    CHECK(truncate(path, 5) == 0, "truncate");
    expect_fail("5-byte shard", dir_of("trunc"), NULL, shard2, "too short");

    /* header length larger than the file */
    write_ckpt(dir_of("hlen"), w, (ckopt){0});
    snprintf(path, sizeof path, "%s/model.safetensors", dir_of("hlen"));
    FILE *f = fopen(path, "r+b");
    unsigned char big[8] = {0, 0, 0, 0, 1, 0, 0, 0}; /* 2^32 */
    fwrite(big, 1, 8, f);
    fclose(f);
    expect_fail("header length > file", dir_of("hlen"), NULL, "model.safetensors", "header length");

    /* header not JSON */
    write_ckpt(dir_of("notjson"), w, (ckopt){0});
    snprintf(path, sizeof path, "%s/model.safetensors", dir_of("notjson"));
    f = fopen(path, "r+b");
    fseek(f, 8, SEEK_SET);
    fputc('#', f);
    fclose(f);
    expect_fail("header not JSON", dir_of("notjson"), NULL, "model.safetensors", "not valid JSON");

    /* lying data_offsets */
    const char *down = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight";
    const char *n0 = "transformer.encoder.layers.0.input_layernorm.weight";
    const char *n1 = "transformer.encoder.layers.0.post_attention_layernorm.weight";
    write_ckpt(dir_of("pastend"), w, (ckopt){.patch = {.kind = P_PAST_END, .name = down}});
    expect_fail("offsets past end", dir_of("pastend"), NULL, "model.safetensors", down);
    write_ckpt(dir_of("overlap"), w, (ckopt){.patch = {.kind = P_LIKE, .name = n1, .like = n0}});
    expect_fail("overlapping offsets", dir_of("overlap"), NULL, n0, n1);
    write_ckpt(dir_of("short"), w, (ckopt){.patch = {.kind = P_SHORT, .name = down}});
    expect_fail("offsets/size mismatch", dir_of("short"), NULL, down, "needs");

    /* bad dtype; an F16 weight among BF16 ones */
    write_ckpt(dir_of("i8"), w, (ckopt){.patch = {.kind = P_DTYPE, .name = down, .dtype = "I8"}});
    expect_fail("dtype I8", dir_of("i8"), NULL, down, "dtype I8");
    write_ckpt(dir_of("mixed"), w, (ckopt){.hf = 1, .patch = {.kind = P_DTYPE, .name = "model.layers.1.mlp.down_proj.weight", .dtype = "F16"}});
    expect_fail("mixed weight dtypes", dir_of("mixed"), NULL, "model.layers.1.mlp.down_proj.weight", "F16");

    /* no checkpoint at all */
    mkdir(dir_of("empty"), 0755);
    expect_fail("no config", dir_of("empty"), NULL, "config.json", NULL);
    snprintf(path, sizeof path, "%s/config.json", dir_of("empty"));
    json_t *cfg = base_config(0);
    json_dump_file(cfg, path, 0);
    json_decref(cfg);
    expect_fail("no weights", dir_of("empty"), NULL, dir_of("empty"), "model.safetensors");
}

static void test_binding_errors(const src_weights *w) {
    const char *down = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight";
    write_ckpt(dir_of("missing"), w, (ckopt){.shards = 3, .drop = down});
    expect_fail("missing tensor", dir_of("missing"), NULL, dir_of("missing"), down);

    /* [F, E] instead of [E, F]: same byte count, so only the shape check can catch it */
    write_ckpt(dir_of("shape"), w, (ckopt){.patch = {.kind = P_SHAPE, .name = down, .shape = {F, E}}});
    expect_fail("wrong shape", dir_of("shape"), NULL, down, "has shape [96, 64], expected [64, 96]");

    /* config and weights disagree about the number of KV groups */
    json_t *c = base_config(1);
    json_object_set_new(c, "num_key_value_heads", json_integer(4));
    write_ckpt(dir_of("groups"), w, (ckopt){.hf = 1, .config = c});
    expect_fail("config/weights mismatch", dir_of("groups"), NULL, "model.layers.0.self_attn.k_proj.weight",
                "expected [64, 64]");

    /* a bias the config says does not exist */
    c = base_config(0);
    json_object_set_new(c, "add_qkv_bias", json_false());
    write_ckpt(dir_of("bias"), w, (ckopt){.config = c});
    expect_fail("unexpected bias", dir_of("bias"), NULL, "query_key_value.bias", "config.json");

    /* sharding errors: a shard gone, an index that lies */
    write_ckpt(dir_of("noshard"), w, (ckopt){.hf = 1, .shards = 3});
    char path[512];
    snprintf(path, sizeof path, "%s/model-00003-of-00003.safetensors", dir_of("noshard"));
    unlink(path);
    expect_fail("index names a missing shard", dir_of("noshard"), NULL, "model-00003-of-00003.safetensors",
                "missing shard");
    write_ckpt(dir_of("lie"), w, (ckopt){.hf = 1, .shards = 3, .index_lie = 1});
    expect_fail("index maps to wrong shard", dir_of("lie"), NULL, "model-00002-of-00003.safetensors",
                "model.embed_tokens.weight");

    /* config errors surface through the loader with the config's path */
    c = base_config(0);
    json_object_del(c, "num_layers");
    write_ckpt(dir_of("nokey"), w, (ckopt){.config = c});
    expect_fail("missing config key", dir_of("nokey"), NULL, "config.json: missing key 'num_layers'", NULL);
    c = base_config(0);
    json_object_set_new(c, "model_type", json_string("llama"));
    write_ckpt(dir_of("llama"), w, (ckopt){.config = c});
    expect_fail("unknown architecture", dir_of("llama"), NULL, "unknown architecture 'llama'", NULL);
}

static void test_config(void) {
    mtok_config c;
    json_t *j;

    /* the HF rope_theta correction (docs/GLM.md §1.3) and the override */
    j = base_config(1);
    json_object_set_new(j, "rope_theta", json_real(10000));
    json_object_set_new(j, "max_position_embeddings", json_integer(1048576));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.rope_base == 1e8 && c.rope_base_config == 10000,
          "1M correction: %g / %g", c.rope_base, c.rope_base_config);
    j = base_config(1);
    json_object_set_new(j, "rope_theta", json_real(10000));
    json_object_set_new(j, "_name_or_path", json_string("THUDM/glm-4-9b-chat-hf"));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.rope_base == 5e6, "chat correction: %g", c.rope_base);
    j = base_config(1);
    json_object_set_new(j, "rope_theta", json_real(10000));
    json_object_set_new(j, "_name_or_path", json_string("THUDM/GLM-4-9B-Chat-1M-hf"));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.rope_base == 1e8, "1m name correction: %g", c.rope_base);
    j = base_config(1);
    json_object_set_new(j, "rope_theta", json_real(10000));
    json_object_set_new(j, "max_position_embeddings", json_integer(131072));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.rope_base == 5e6, "128k correction: %g", c.rope_base);
    j = base_config(1);
    json_object_set_new(j, "rope_theta", json_real(10000));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.rope_base == 10000, "no correction for a short model: %g", c.rope_base);
    j = base_config(1);
    json_object_set_new(j, "rope_theta", json_real(10000));
    json_object_set_new(j, "max_position_embeddings", json_integer(1048576));
    mtok_load_params p = {.rope_base = 2.5e7};
    CHECK(parse_cfg(j, &p, &c) == 0 && c.rope_base == 2.5e7 && c.rope_base_config == 10000, "override: %g",
          c.rope_base);
    /* transformers >= 5 nests the RoPE keys in rope_parameters */
    j = base_config(1);
    json_object_del(j, "rope_theta");
    json_object_del(j, "partial_rotary_factor");
    json_object_set_new(j, "rope_parameters", json_pack("{s:s, s:f, s:f}", "rope_type", "default", "rope_theta",
                                                        5e6, "partial_rotary_factor", 0.25));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.rope_base == 5e6 && c.rope_dim == D / 4, "rope_parameters: %g %lld",
          c.rope_base, (long long)c.rope_dim);
    j = base_config(1);
    json_object_del(j, "rope_theta");
    json_object_set_new(j, "max_position_embeddings", json_integer(1048576));
    json_object_set_new(j, "rope_parameters", json_pack("{s:f}", "rope_theta", 10000.0));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.rope_base == 1e8, "nested wrong theta corrected: %g", c.rope_base);
    j = base_config(0);
    json_object_set_new(j, "rope_ratio", json_integer(10000));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.rope_base == 1e8, "rope_ratio 10000: %g", c.rope_base);
    j = base_config(0);
    json_object_del(j, "rope_ratio");
    CHECK(parse_cfg(j, &p, &c) == 0 && c.rope_base == 2.5e7 && c.rope_base_config == 1e4, "chatglm override");

    /* detection by architectures alone; defaults; eos as an int; MHA without groups */
    j = base_config(1);
    json_object_del(j, "model_type");
    json_object_del(j, "head_dim");
    json_object_del(j, "partial_rotary_factor");
    json_object_set_new(j, "eos_token_id", json_integer(7));
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.naming == MTOK_NAMING_HF && c.head_dim == E / H && c.rope_dim == D / 2 &&
              c.n_eos == 1 && c.eos_ids[0] == 7,
          "hf defaults: %s", mtok_errmsg());
    j = base_config(0);
    json_object_set_new(j, "multi_query_attention", json_false());
    json_object_del(j, "multi_query_group_num");
    CHECK(parse_cfg(j, NULL, &c) == 0 && c.n_kv_groups == H, "MHA: %s", mtok_errmsg());

    /* errors */
    j = base_config(1);
    json_object_set_new(j, "model_type", json_string("glm4"));
    expect_cfg_fail("glm4 (0414) model_type", j, "unknown architecture 'glm4'");
    j = base_config(0);
    json_object_del(j, "model_type");
    json_object_set_new(j, "architectures", json_pack("[s]", "LlamaForCausalLM"));
    expect_cfg_fail("unknown architectures", j, "unknown architecture 'LlamaForCausalLM'");
    j = base_config(1);
    json_object_del(j, "num_key_value_heads");
    expect_cfg_fail("hf missing key", j, "missing key 'num_key_value_heads'");
    j = base_config(0);
    json_object_set_new(j, "hidden_size", json_string("64"));
    expect_cfg_fail("string size", j, "'hidden_size' must be an integer");
    j = base_config(0);
    json_object_set_new(j, "ffn_hidden_size", json_integer(0));
    expect_cfg_fail("zero size", j, "'ffn_hidden_size' must be positive");
    j = base_config(0);
    json_object_set_new(j, "multi_query_group_num", json_integer(3));
    expect_cfg_fail("heads % groups", j, "not divisible by 3 KV groups");
    j = base_config(0);
    json_object_set_new(j, "kv_channels", json_integer(6));
    expect_cfg_fail("odd rope dim", j, "rotary dim 3");
    j = base_config(1);
    json_object_set_new(j, "partial_rotary_factor", json_real(0.3125)); /* 16 * 0.3125 = 5 */
    expect_cfg_fail("odd partial rotary", j, "must be even");
    const char *flags[][2] = {{"rmsnorm", "f"}, {"add_bias_linear", "t"},
                              {"apply_residual_connection_post_layernorm", "t"}, {"original_rope", "f"},
                              {"post_layer_norm", "f"}};
    for (int i = 0; i < 5; i++) {
        j = base_config(0);
        json_object_set_new(j, flags[i][0], flags[i][1][0] == 't' ? json_true() : json_false());
        expect_cfg_fail(flags[i][0], j, flags[i][0]);
    }
    j = base_config(0);
    json_object_set_new(j, "multi_query_attention", json_string("yes"));
    expect_cfg_fail("string bool", j, "'multi_query_attention' must be true or false");
    j = base_config(0);
    json_object_set_new(j, "eos_token_id", json_pack("[i,s]", 1, "x"));
    expect_cfg_fail("bad eos list", j, "eos_token_id");
    CHECK(mtok_config_parse("x/config.json", "{\"model_type\":", 14, NULL, &c) == MTOK_EINPUT &&
              strstr(mtok_errmsg(), "not valid JSON"),
          "truncated JSON: %s", mtok_errmsg());
}

/* Mappings of files under the temp dir still alive: every load and every failed load must unmap. */
static int count_maps(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, g_tmp) != NULL;
    fclose(f);
    return n;
}

static int count_fds(void) {
    int n = 0;
    for (int fd = 0; fd < 1024; fd++) n += fcntl(fd, F_GETFD) != -1;
    return n;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }

int main(int argc, char **argv) {
    mtok_set_log_level(getenv("MTOK_TEST_VERBOSE") ? 2 : 0);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mtok_test_loader_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    src_weights w;
    src_init(&w);
    int fds = count_fds();
    printf("good checkpoints\n");
    test_good(&w);
    printf("file corruption\n");
    test_file_corruption(&w);
    printf("binding errors\n");
    test_binding_errors(&w);
    printf("config\n");
    test_config();
    src_free(&w);
    CHECK(count_maps() == 0, "%d checkpoint mappings left after the models were freed", count_maps());
    CHECK(count_fds() == fds, "file descriptors leaked: %d before, %d after", fds, count_fds());
    nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf(check_failures ? "test_loader: FAIL\n" : "test_loader: OK\n");
    return check_failures ? 1 : 0;
}
