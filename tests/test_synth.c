/* test_synth.c — mtok synth writes checkpoints in the real on-disk format.
 *
 * The checks read the output with their own minimal parsers (safetensors header via jansson, the
 * index, a base64 decoder for tokenizer.model) against tables written here from docs/GLM.md, not
 * from synth.c's tables. argv[1] = source dir, argv[2] = build dir (unused: output goes to a mkdtemp
 * directory under /tmp that is removed at the end). Exit 0 = pass, 1 = fail. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/mtok.h"
#include "synth/mtok_synth.h"

#include "check.h"

static char root[256];

/* ---- helpers ----------------------------------------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        *len = (size_t)n;
    }
    return b;
}

static json_t *load_json(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    CHECK(j, "%s: %s", path, err.text);
    return j;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw) { return remove(p); }
static void rm_rf(const char *p) { nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static int synth(const char *preset, const char *dir, mtok_naming naming, int shards, uint64_t seed,
                 mtok_dtype dt) {
    mtok_synth_params p = {.preset = preset, .out_dir = dir, .naming = naming, .shards = shards, .seed = seed,
                           .dtype = dt};
    int rc = mtok_synth(&p);
    CHECK(rc == 0, "synth %s -> %s: %s", preset, dir, mtok_errmsg());
    return rc;
}

/* Number of entries in dir (hidden_only: only names starting with '.', i.e. synth's temporaries). */
static int count_files(const char *dir, int hidden_only) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && (!hidden_only || e->d_name[0] == '.')) n++;
    closedir(d);
    return n;
}

static int exists(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* ---- expected tensor tables (docs/GLM.md §2.3, §2.4) for glm4-tiny ------------------------------ */
enum { E = 256, H = 4, D = 64, G = 2, F = 704, V = 1024, L = 2, QW = H * D, KW = G * D };

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];
} expect;

static size_t expected(mtok_naming naming, expect *x) {
    size_t n = 0;
#define ADD(nd, r, c, ...)                                                                               \
    do {                                                                                                 \
        snprintf(x[n].name, sizeof x[n].name, __VA_ARGS__);                                             \
        x[n].ndim = nd;                                                                                  \
        x[n].shape[0] = r;                                                                               \
        x[n].shape[1] = c;                                                                               \
        n++;                                                                                             \
    } while (0)
    if (naming == MTOK_NAMING_CHATGLM) {
        ADD(2, V, E, "transformer.embedding.word_embeddings.weight");
        ADD(1, D / 4, 0, "transformer.rotary_pos_emb.inv_freq");
        for (int l = 0; l < L; l++) {
            const char *p = "transformer.encoder.layers";
            ADD(1, E, 0, "%s.%d.input_layernorm.weight", p, l);
            ADD(2, QW + 2 * KW, E, "%s.%d.self_attention.query_key_value.weight", p, l);
            ADD(1, QW + 2 * KW, 0, "%s.%d.self_attention.query_key_value.bias", p, l);
            ADD(2, E, QW, "%s.%d.self_attention.dense.weight", p, l);
            ADD(1, E, 0, "%s.%d.post_attention_layernorm.weight", p, l);
            ADD(2, 2 * F, E, "%s.%d.mlp.dense_h_to_4h.weight", p, l);
            ADD(2, E, F, "%s.%d.mlp.dense_4h_to_h.weight", p, l);
        }
        ADD(1, E, 0, "transformer.encoder.final_layernorm.weight");
        ADD(2, V, E, "transformer.output_layer.weight");
    } else {
        ADD(2, V, E, "model.embed_tokens.weight");
        for (int l = 0; l < L; l++) {
            ADD(1, E, 0, "model.layers.%d.input_layernorm.weight", l);
            ADD(2, QW, E, "model.layers.%d.self_attn.q_proj.weight", l);
            ADD(1, QW, 0, "model.layers.%d.self_attn.q_proj.bias", l);
            ADD(2, KW, E, "model.layers.%d.self_attn.k_proj.weight", l);
            ADD(1, KW, 0, "model.layers.%d.self_attn.k_proj.bias", l);
            ADD(2, KW, E, "model.layers.%d.self_attn.v_proj.weight", l);
            ADD(1, KW, 0, "model.layers.%d.self_attn.v_proj.bias", l);
            ADD(2, E, QW, "model.layers.%d.self_attn.o_proj.weight", l);
            ADD(1, E, 0, "model.layers.%d.post_attention_layernorm.weight", l);
            ADD(2, 2 * F, E, "model.layers.%d.mlp.gate_up_proj.weight", l);
            ADD(2, E, F, "model.layers.%d.mlp.down_proj.weight", l);
        }
        ADD(1, E, 0, "model.norm.weight");
        ADD(2, V, E, "lm_head.weight");
    }
#undef ADD
    return n;
}

/* ---- an independent safetensors reader --------------------------------------------------------- */
typedef struct {
    char name[128], dtype[8];
    int ndim;
    int64_t shape[2];
    uint64_t begin, end;
    const unsigned char *data;
} tinfo;

typedef struct {
    tinfo t[64];
    size_t n;
    unsigned char *files[16];
    int n_files;
} ckpt;

static int by_begin(const void *a, const void *b) {
    const tinfo *x = *(tinfo *const *)a, *y = *(tinfo *const *)b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

static void parse_shard(const char *path, ckpt *c) {
    size_t len = 0;
    unsigned char *b = slurp(path, &len);
    CHECK(b && len >= 8, "%s: cannot read", path);
    if (!b || len < 8) return;
    c->files[c->n_files++] = b;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)b[i] << (8 * i);
    CHECK(hlen % 8 == 0, "%s: header length %llu is not a multiple of 8", path, (unsigned long long)hlen);
    CHECK(8 + hlen <= len, "%s: header runs past the file", path);
    if (8 + hlen > len) return;
    char *hdr = strndup((char *)b + 8, hlen);
    json_error_t err;
    json_t *h = json_loadb(hdr, hlen, 0, &err);
    CHECK(h, "%s: header JSON: %s", path, err.text);
    CHECK(h && json_is_string(json_object_get(json_object_get(h, "__metadata__"), "format")) &&
              !strcmp(json_string_value(json_object_get(json_object_get(h, "__metadata__"), "format")), "pt"),
          "%s: __metadata__.format != pt", path);
    tinfo *mine[64];
    size_t n_mine = 0;
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        if (c->n >= 64) break;
        tinfo *t = &c->t[c->n++];
        mine[n_mine++] = t;
        snprintf(t->name, sizeof t->name, "%s", key);
        snprintf(t->dtype, sizeof t->dtype, "%s", json_string_value(json_object_get(v, "dtype")) ? json_string_value(json_object_get(v, "dtype")) : "?");
        json_t *shape = json_object_get(v, "shape"), *offs = json_object_get(v, "data_offsets");
        t->ndim = (int)json_array_size(shape);
        for (int d = 0; d < t->ndim && d < 2; d++) t->shape[d] = json_integer_value(json_array_get(shape, d));
        t->begin = (uint64_t)json_integer_value(json_array_get(offs, 0));
        t->end = (uint64_t)json_integer_value(json_array_get(offs, 1));
        t->data = b + 8 + hlen + t->begin;
        CHECK(8 + hlen + t->end <= len, "%s: %s runs past the file", path, key);
    }
    /* data contiguous from 0 to the end of the file, in the order the header lists the tensors */
    qsort(mine, n_mine, sizeof *mine, by_begin);
    uint64_t at = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < n_mine; i++) {
        CHECK(mine[i]->begin == at, "%s: %s begins at %llu, expected %llu", path, mine[i]->name,
              (unsigned long long)mine[i]->begin, (unsigned long long)at);
        at = mine[i]->end;
        char quoted[160];
        snprintf(quoted, sizeof quoted, "\"%s\"", mine[i]->name);
        const char *pos = strstr(hdr, quoted);
        CHECK(pos && (!prev || pos > prev), "%s: %s is out of header order", path, mine[i]->name);
        prev = pos;
    }
    CHECK(8 + hlen + at == len, "%s: %llu bytes of data but file is %zu", path, (unsigned long long)at, len);
    json_decref(h);
    free(hdr);
}

static const tinfo *find(const ckpt *c, const char *name) {
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->t[i].name, name)) return &c->t[i];
    return NULL;
}

static void free_ckpt(ckpt *c) {
    for (int i = 0; i < c->n_files; i++) free(c->files[i]);
    memset(c, 0, sizeof *c);
}

/* Reads a checkpoint (single file or index + shards) and checks it against the expected table. */
static void read_ckpt(const char *dir, mtok_naming naming, int shards, const char *dtype, ckpt *c) {
    memset(c, 0, sizeof *c);
    char path[512];
    if (shards == 1) {
        CHECK(!exists(dir, "model.safetensors.index.json"), "%s: index next to a single file", dir);
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        parse_shard(path, c);
    } else {
        CHECK(!exists(dir, "model.safetensors"), "%s: model.safetensors next to shards", dir);
        for (int s = 1; s <= shards; s++) {
            snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, s, shards);
            size_t before = c->n;
            parse_shard(path, c);
            CHECK(c->n > before, "%s: empty shard", path);
        }
        json_t *idx = load_json(dir, "model.safetensors.index.json");
        json_t *map = json_object_get(idx, "weight_map");
        CHECK(json_object_size(map) == c->n, "%s: index maps %zu tensors, shards hold %zu", dir,
              json_object_size(map), c->n);
        uint64_t total = 0;
        for (int s = 1; s <= shards; s++) {
            /* every tensor of shard s is mapped to shard s */
            snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, s, shards);
            ckpt one = {0};
            parse_shard(path, &one);
            for (size_t i = 0; i < one.n; i++) {
                const char *f = json_string_value(json_object_get(map, one.t[i].name));
                CHECK(f && !strcmp(f, strrchr(path, '/') + 1), "%s: index puts %s in %s", dir, one.t[i].name,
                      f ? f : "nothing");
                total += one.t[i].end - one.t[i].begin;
            }
            free_ckpt(&one);
        }
        json_t *ts = json_object_get(json_object_get(idx, "metadata"), "total_size");
        CHECK(json_is_integer(ts) && (uint64_t)json_integer_value(ts) == total, "%s: total_size %lld != %llu",
              dir, (long long)json_integer_value(ts), (unsigned long long)total);
        json_decref(idx);
    }
    expect x[64];
    size_t n = expected(naming, x);
    CHECK(c->n == n, "%s: %zu tensors, expected %zu", dir, c->n, n);
    size_t esz = !strcmp(dtype, "F32") ? 4 : 2;
    for (size_t i = 0; i < n; i++) {
        const tinfo *t = find(c, x[i].name);
        CHECK(t, "%s: missing %s", dir, x[i].name);
        if (!t) continue;
        CHECK(t->ndim == x[i].ndim && t->shape[0] == x[i].shape[0] && (t->ndim == 1 || t->shape[1] == x[i].shape[1]),
              "%s: %s has the wrong shape", dir, x[i].name);
        CHECK(!strcmp(t->dtype, dtype), "%s: %s is %s, expected %s", dir, x[i].name, t->dtype, dtype);
        uint64_t el = (uint64_t)x[i].shape[0] * (x[i].ndim == 2 ? (uint64_t)x[i].shape[1] : 1);
        CHECK(t->end - t->begin == el * esz, "%s: %s byte size", dir, x[i].name);
    }
}

/* Bytes of rows [r0, r0 + nr) of tensor name (bf16/f16 elements). */
static const unsigned char *rows_of(const ckpt *c, const char *name, int64_t r0, size_t *nbytes, int64_t nr) {
    const tinfo *t = find(c, name);
    if (!t) return NULL;
    size_t cols = t->ndim == 2 ? (size_t)t->shape[1] : 1;
    size_t esz = (t->end - t->begin) / ((size_t)t->shape[0] * cols);
    *nbytes = (size_t)nr * cols * esz;
    return t->data + (size_t)r0 * cols * esz;
}

static void same_rows(const ckpt *a, const char *na, int64_t r0, int64_t nr, const ckpt *b, const char *nb) {
    size_t la = 0, lb = 0;
    const unsigned char *pa = rows_of(a, na, r0, &la, nr), *pb = rows_of(b, nb, 0, &lb, nr);
    CHECK(pa && pb && la == lb && !memcmp(pa, pb, la), "rows %lld+%lld of %s differ from %s", (long long)r0,
          (long long)nr, na, nb);
}

static float bf16(const unsigned char *p) {
    uint32_t u = (uint32_t)(p[0] | p[1] << 8) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float f16_at(const unsigned char *p) {
    unsigned h = p[0] | p[1] << 8, e = h >> 10 & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m | 1024), (int)e - 25);
    return h & 0x8000 ? -v : v; /* (no inf/nan in weights) */
}

static void stats(const ckpt *c, const char *name, double want_mean, double want_std, double tol) {
    const tinfo *t = find(c, name);
    CHECK(t, "missing %s", name);
    if (!t) return;
    size_t n = (t->end - t->begin) / 2;
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        double v = bf16(t->data + 2 * i);
        s += v;
        s2 += v * v;
    }
    double mean = s / n, sd = sqrt(s2 / n - mean * mean);
    CHECK(fabs(mean - want_mean) < tol * want_std + 1e-3 && fabs(sd - want_std) < tol * want_std,
          "%s: mean %.4f sd %.4f, expected %.4f / %.4f", name, mean, sd, want_mean, want_std);
}

/* ---- tokenizer.model --------------------------------------------------------------------------- */
static int b64val(int ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    return ch == '+' ? 62 : ch == '/' ? 63 : -1;
}

/* Decodes standard padded base64; returns the length or -1. */
static int b64dec(const char *s, size_t n, unsigned char *out) {
    if (n == 0 || n % 4) return -1;
    int o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else if ((v[k] = b64val((unsigned char)s[i + k])) < 0 || pad) {
                return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (unsigned char)(w >> 16);
        if (pad < 2) out[o++] = (unsigned char)(w >> 8);
        if (pad < 1) out[o++] = (unsigned char)w;
    }
    return o;
}

typedef struct {
    unsigned char b[256];
    int len;
} tok;

/* Returns the number of ranks (-1 on a format error). */
static int64_t check_tokenizer(const char *dir, int64_t max_ranks) {
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    size_t len = 0;
    char *text = (char *)slurp(path, &len);
    CHECK(text, "%s: cannot read", path);
    if (!text) return -1;
    tok *toks = calloc((size_t)max_ranks + 1, sizeof *toks);
    int64_t n = 0;
    int bad = 0;
    for (char *line = text, *nl; *line && !bad; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl || n > max_ranks) {
            bad = 1;
            break;
        }
        char *sp = memchr(line, ' ', (size_t)(nl - line));
        char *end = NULL;
        long rank = sp ? strtol(sp + 1, &end, 10) : -1;
        if (!sp || end != nl || rank != n || (sp - line) > 340) {
            bad = 1;
            break;
        }
        toks[n].len = b64dec(line, (size_t)(sp - line), toks[n].b);
        if (toks[n].len <= 0) {
            bad = 1;
            break;
        }
        n++;
    }
    CHECK(!bad, "%s: malformed line after rank %lld", path, (long long)n);
    CHECK(n >= 256 && n <= max_ranks, "%s: %lld ranks", path, (long long)n);
    /* 0..255: the 256 single bytes */
    int seen[256] = {0};
    for (int i = 0; i < 256 && i < n; i++) {
        CHECK(toks[i].len == 1 && !seen[toks[i].b[0]], "%s: rank %d is not a fresh single byte", path, i);
        if (toks[i].len == 1) seen[toks[i].b[0]] = 1;
    }
    /* every later token is new and is the concatenation of two lower-ranked tokens (a BPE merge) */
    for (int64_t i = 256; i < n; i++) {
        int dup = 0, split = 0;
        for (int64_t j = 0; j < i && !dup; j++)
            dup = toks[j].len == toks[i].len && !memcmp(toks[j].b, toks[i].b, (size_t)toks[i].len);
        for (int cut = 1; cut < toks[i].len && !split; cut++) {
            int left = 0, right = 0;
            for (int64_t j = 0; j < i; j++) {
                if (toks[j].len == cut && !memcmp(toks[j].b, toks[i].b, (size_t)cut)) left = 1;
                if (toks[j].len == toks[i].len - cut && !memcmp(toks[j].b, toks[i].b + cut, (size_t)toks[j].len))
                    right = 1;
            }
            split = left && right;
        }
        CHECK(!dup && split, "%s: rank %lld is %s", path, (long long)i, dup ? "a duplicate" : "not a merge");
    }
    free(toks);
    free(text);
    return bad ? -1 : n;
}

static const char *const specials[14] = {
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"};

static int arch_is(json_t *o, const char *want) {
    const char *s = json_string_value(json_array_get(json_object_get(o, "architectures"), 0));
    return s && !strcmp(s, want);
}
static int64_t jint(json_t *o, const char *k) { return json_integer_value(json_object_get(o, k)); }
static int jtrue(json_t *o, const char *k) { return json_is_true(json_object_get(o, k)); }
static int jfalse(json_t *o, const char *k) { return json_is_false(json_object_get(o, k)); }
static int jstr(json_t *o, const char *k, const char *want) {
    const char *s = json_string_value(json_object_get(o, k));
    return s && !strcmp(s, want);
}
static int eos_ok(json_t *o, int64_t r) {
    json_t *e = json_object_get(o, "eos_token_id");
    return json_array_size(e) == 3 && json_integer_value(json_array_get(e, 0)) == r &&
           json_integer_value(json_array_get(e, 1)) == r + 7 && json_integer_value(json_array_get(e, 2)) == r + 9 &&
           jint(o, "pad_token_id") == r;
}

/* config.json, tokenizer_config.json and generation_config.json of a glm4-tiny output. */
static void check_configs(const char *dir, mtok_naming naming, int64_t r, const char *torch_dtype) {
    json_t *c = load_json(dir, "config.json");
    if (naming == MTOK_NAMING_CHATGLM) {
        CHECK(jstr(c, "model_type", "chatglm") && arch_is(c, "ChatGLMModel"),
              "%s: chatglm model_type/architectures", dir);
        CHECK(jint(c, "num_layers") == L && jint(c, "num_hidden_layers") == L && jint(c, "hidden_size") == E &&
                  jint(c, "ffn_hidden_size") == F && jint(c, "num_attention_heads") == H &&
                  jint(c, "kv_channels") == D && jint(c, "multi_query_group_num") == G &&
                  jint(c, "padded_vocab_size") == V && jint(c, "seq_length") == 131072,
              "%s: chatglm shape keys", dir);
        CHECK(json_number_value(json_object_get(c, "rope_ratio")) == 500 &&
                  fabs(json_number_value(json_object_get(c, "layernorm_epsilon")) - 1.5625e-07) < 1e-15,
              "%s: rope_ratio / layernorm_epsilon", dir);
        CHECK(jtrue(c, "multi_query_attention") && jtrue(c, "rmsnorm") && jtrue(c, "add_qkv_bias") &&
                  jfalse(c, "add_bias_linear") && jtrue(c, "post_layer_norm") &&
                  jfalse(c, "apply_residual_connection_post_layernorm") && jtrue(c, "original_rope") &&
                  jfalse(c, "tie_word_embeddings"),
              "%s: chatglm flags", dir);
    } else {
        CHECK(jstr(c, "model_type", "glm") && arch_is(c, "GlmForCausalLM"),
              "%s: hf model_type/architectures", dir);
        CHECK(jint(c, "num_hidden_layers") == L && jint(c, "hidden_size") == E && jint(c, "intermediate_size") == F &&
                  jint(c, "num_attention_heads") == H && jint(c, "num_key_value_heads") == G &&
                  jint(c, "head_dim") == D && jint(c, "vocab_size") == V &&
                  jint(c, "max_position_embeddings") == 131072,
              "%s: hf shape keys", dir);
        CHECK(json_number_value(json_object_get(c, "partial_rotary_factor")) == 0.5 &&
                  json_number_value(json_object_get(c, "rope_theta")) == 5e6 &&
                  fabs(json_number_value(json_object_get(c, "rms_norm_eps")) - 1.5625e-07) < 1e-15,
              "%s: hf rope/eps", dir);
        CHECK(jtrue(c, "attention_bias") && jfalse(c, "tie_word_embeddings"), "%s: hf flags", dir);
    }
    CHECK(eos_ok(c, r) && jstr(c, "torch_dtype", torch_dtype), "%s: eos/pad/torch_dtype", dir);
    json_decref(c);

    json_t *tc = load_json(dir, "tokenizer_config.json");
    json_t *dec = json_object_get(tc, "added_tokens_decoder");
    CHECK(json_object_size(dec) == 14, "%s: added_tokens_decoder size", dir);
    for (int i = 0; i < 14; i++) {
        char id[32];
        snprintf(id, sizeof id, "%lld", (long long)(r + i));
        json_t *e = json_object_get(dec, id);
        CHECK(jstr(e, "content", specials[i]) && jtrue(e, "special"), "%s: special %s is not id %s", dir,
              specials[i], id);
    }
    CHECK(jstr(tc, "eos_token", "<|endoftext|>") && jstr(tc, "pad_token", "<|endoftext|>"), "%s: eos/pad token",
          dir);
    json_decref(tc);

    json_t *gc = load_json(dir, "generation_config.json");
    CHECK(eos_ok(gc, r) && jtrue(gc, "do_sample") && json_real_value(json_object_get(gc, "temperature")) == 0.8 &&
              json_real_value(json_object_get(gc, "top_p")) == 0.8 && jint(gc, "max_length") > 0,
          "%s: generation_config", dir);
    json_decref(gc);
}

/* ---- optional: load the output with the real loader/tokenizer when they are part of the build ---- */
#if defined(__has_include) && !defined(MTOK_SYNTH_NO_LOADER)
#if __has_include("core/loader.c")
#define HAVE_LOADER 1
#endif
#if __has_include("core/tokenizer.c")
#define HAVE_TOKENIZER 1
#endif
#endif

static void check_with_library(const char *dir, int64_t r) {
#ifdef HAVE_LOADER
    mtok_model *m = NULL;
    mtok_load_params lp = {0};
    int rc = mtok_model_load(dir, &lp, &m);
    CHECK(rc == 0, "mtok_model_load(%s): %s", dir, mtok_errmsg());
    if (rc == 0) {
        const mtok_config *c = mtok_model_config(m);
        CHECK(c->n_layers == L && c->hidden == E && c->n_heads == H && c->n_kv_groups == G && c->head_dim == D &&
                  c->ffn == F && c->vocab == V && c->rope_dim == D / 2 && c->rope_base == 5e6 &&
                  c->max_ctx == 131072 && c->qkv_bias && c->n_eos == 3 && c->eos_ids[0] == r && c->pad_id == r,
              "%s: the loader reads a different config", dir);
        mtok_model_free(m);
    }
#endif
#ifdef HAVE_TOKENIZER
    mtok_tokenizer *t = NULL;
    int trc = mtok_tokenizer_load(dir, &t);
    CHECK(trc == 0, "mtok_tokenizer_load(%s): %s", dir, mtok_errmsg());
    if (trc == 0) {
        CHECK(mtok_tokenizer_n_vocab(t) == r + 14 && mtok_token_special(t, "[gMASK]") == r + 2 &&
                  mtok_token_special(t, "<|user|>") == r + 7,
              "%s: the tokenizer sees a different vocabulary", dir);
        mtok_ids ids = {0};
        const char *text = "The lighthouse was built in 1848.\n";
        CHECK(mtok_tokenize(t, text, strlen(text), 0, &ids) == 0 && ids.n > 0 && ids.n < strlen(text),
              "%s: tokenize", dir);
        char *back = mtok_detokenize(t, ids.v, ids.n, NULL);
        CHECK(back && !strcmp(back, text), "%s: round trip gives '%s'", dir, back ? back : "(null)");
        free(back);
        mtok_ids_free(&ids);
        mtok_tokenizer_free(t);
    }
#endif
    (void)dir;
    (void)r;
}

static void report_library_checks(void) {
#ifdef HAVE_LOADER
    const char *l = "mtok_model_load";
#else
    const char *l = "no loader";
#endif
#ifdef HAVE_TOKENIZER
    const char *t = "mtok_tokenizer_load";
#else
    const char *t = "no tokenizer";
#endif
    printf("library cross-check: %s, %s\n", l, t);
}

/* ---- the test ---------------------------------------------------------------------------------- */
int main(int argc, char **argv) {
    mtok_set_log_level(0);
    snprintf(root, sizeof root, "/tmp/mtok-test-synth-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    char d[8][300];
    const char *names[8] = {"glm1", "glm3", "hf1", "hf3", "glm1b", "seed2", "f32", "f16"};
    for (int i = 0; i < 8; i++) snprintf(d[i], sizeof d[i], "%s/%s", root, names[i]);

    /* glm4-tiny in both namings, 1 and 3 shards, same seed */
    synth("glm4-tiny", d[0], MTOK_NAMING_CHATGLM, 1, 42, MTOK_BF16);
    synth("glm4-tiny", d[1], MTOK_NAMING_CHATGLM, 3, 42, MTOK_BF16);
    synth("glm4-tiny", d[2], MTOK_NAMING_HF, 1, 42, MTOK_BF16);
    synth("glm4-tiny", d[3], MTOK_NAMING_HF, 3, 42, MTOK_BF16);
    synth("glm4-tiny", d[4], MTOK_NAMING_CHATGLM, 0, 42, MTOK_BF16); /* default shards: 1 */
    synth("glm4-tiny", d[5], MTOK_NAMING_CHATGLM, 1, 43, MTOK_BF16);
    synth("glm4-tiny", d[6], MTOK_NAMING_CHATGLM, 1, 42, MTOK_F32);
    synth("glm4-tiny", d[7], MTOK_NAMING_CHATGLM, 1, 42, MTOK_F16);

    ckpt g1, g3, h1, h3;
    read_ckpt(d[0], MTOK_NAMING_CHATGLM, 1, "BF16", &g1);
    read_ckpt(d[1], MTOK_NAMING_CHATGLM, 3, "BF16", &g3);
    read_ckpt(d[2], MTOK_NAMING_HF, 1, "BF16", &h1);
    read_ckpt(d[3], MTOK_NAMING_HF, 3, "BF16", &h3);

    /* sharding never changes a tensor's bytes */
    for (size_t i = 0; i < g1.n; i++) same_rows(&g1, g1.t[i].name, 0, g1.t[i].shape[0], &g3, g1.t[i].name);
    for (size_t i = 0; i < h1.n; i++) same_rows(&h1, h1.t[i].name, 0, h1.t[i].shape[0], &h3, h1.t[i].name);

    /* the same logical weight has the same bytes in both namings (docs/GLM.md §2.4 mapping) */
    same_rows(&g1, "transformer.embedding.word_embeddings.weight", 0, V, &h1, "model.embed_tokens.weight");
    same_rows(&g1, "transformer.output_layer.weight", 0, V, &h1, "lm_head.weight");
    same_rows(&g1, "transformer.encoder.final_layernorm.weight", 0, E, &h1, "model.norm.weight");
    for (int l = 0; l < L; l++) {
        char a[128], b[128];
        const char *gl = "transformer.encoder.layers";
        static const char *const wb[2] = {"weight", "bias"};
        for (int k = 0; k < 2; k++) {
            snprintf(a, sizeof a, "%s.%d.self_attention.query_key_value.%s", gl, l, wb[k]);
            snprintf(b, sizeof b, "model.layers.%d.self_attn.q_proj.%s", l, wb[k]);
            same_rows(&g1, a, 0, QW, &h1, b);
            snprintf(b, sizeof b, "model.layers.%d.self_attn.k_proj.%s", l, wb[k]);
            same_rows(&g1, a, QW, KW, &h1, b);
            snprintf(b, sizeof b, "model.layers.%d.self_attn.v_proj.%s", l, wb[k]);
            same_rows(&g1, a, QW + KW, KW, &h1, b);
        }
        static const char *const pairs[][2] = {{"self_attention.dense", "self_attn.o_proj"},
                                               {"mlp.dense_h_to_4h", "mlp.gate_up_proj"},
                                               {"mlp.dense_4h_to_h", "mlp.down_proj"},
                                               {"input_layernorm", "input_layernorm"},
                                               {"post_attention_layernorm", "post_attention_layernorm"}};
        for (size_t k = 0; k < sizeof pairs / sizeof *pairs; k++) {
            snprintf(a, sizeof a, "%s.%d.%s.weight", gl, l, pairs[k][0]);
            snprintf(b, sizeof b, "model.layers.%d.%s.weight", l, pairs[k][1]);
            const tinfo *t = find(&g1, a);
            same_rows(&g1, a, 0, t ? t->shape[0] : 0, &h1, b);
        }
    }
    /* inv_freq: base 10000 over rope_dim = D/2 (the buffer loaders ignore) */
    const tinfo *inv = find(&g1, "transformer.rotary_pos_emb.inv_freq");
    for (int i = 0; inv && i < D / 4; i++) {
        double want = 1.0 / pow(10000.0, 2.0 * i / (D / 2));
        CHECK(fabs(bf16(inv->data + 2 * i) - want) <= want * 0.01, "inv_freq[%d]", i);
    }

    /* scales of docs/DESIGN.md §7 */
    stats(&h1, "model.layers.0.self_attn.q_proj.weight", 0, 2.0 / 16, 0.05);
    stats(&h1, "model.layers.1.self_attn.k_proj.weight", 0, 2.0 / 16, 0.05);
    stats(&h1, "model.layers.0.self_attn.v_proj.weight", 0, 1.0 / 16, 0.05);
    stats(&h1, "model.layers.0.self_attn.q_proj.bias", 0, 0.5, 0.2);
    stats(&h1, "model.layers.0.self_attn.v_proj.bias", 0, 0.1, 0.3);
    stats(&h1, "model.layers.0.mlp.down_proj.weight", 0, 1.0 / sqrt(F), 0.05);
    stats(&h1, "model.layers.0.input_layernorm.weight", 1.0, 0.05, 0.2);
    stats(&h1, "model.embed_tokens.weight", 0, 1.0, 0.02);
    stats(&h1, "lm_head.weight", 0, 1.0 / 16, 0.02);

    /* determinism: same seed -> identical files; another seed -> other weights */
    size_t la = 0, lb = 0;
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/model.safetensors", d[0]);
    snprintf(pb, sizeof pb, "%s/model.safetensors", d[4]);
    unsigned char *fa = slurp(pa, &la), *fb = slurp(pb, &lb);
    CHECK(fa && fb && la == lb && !memcmp(fa, fb, la), "same seed gave different files");
    free(fb);
    snprintf(pb, sizeof pb, "%s/model.safetensors", d[5]);
    fb = slurp(pb, &lb);
    CHECK(fa && fb && la == lb && memcmp(fa, fb, la), "another seed gave the same file");
    free(fa);
    free(fb);

    /* other dtypes: F32 holds the values BF16 rounds; F16 is within its precision */
    ckpt f32, f16;
    read_ckpt(d[6], MTOK_NAMING_CHATGLM, 1, "F32", &f32);
    read_ckpt(d[7], MTOK_NAMING_CHATGLM, 1, "F16", &f16);
    const tinfo *q32 = find(&f32, "transformer.encoder.layers.1.self_attention.query_key_value.weight");
    const tinfo *q16 = find(&f16, "transformer.encoder.layers.1.self_attention.query_key_value.weight");
    const tinfo *qb = find(&g1, "transformer.encoder.layers.1.self_attention.query_key_value.weight");
    for (size_t i = 0; q32 && q16 && qb && i < (size_t)(QW + 2 * KW) * E; i += 97) {
        float v;
        memcpy(&v, q32->data + 4 * i, 4);
        uint32_t u;
        memcpy(&u, &v, 4);
        uint16_t want = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
        CHECK(want == (qb->data[2 * i] | qb->data[2 * i + 1] << 8), "bf16 != round(f32) at %zu", i);
        float h = f16_at(q16->data + 2 * i);
        CHECK(fabsf(h - v) <= fabsf(v) * 1e-3f + 1e-7f, "f16 %g vs f32 %g at %zu", (double)h, (double)v, i);
    }
    free_ckpt(&f32);
    free_ckpt(&f16);

    /* tokenizer.model: valid rank file; the configs number the specials right after it */
    int64_t r = check_tokenizer(d[0], V - 14);
    printf("glm4-tiny tokenizer: %lld ranks + 14 specials (vocab %d)\n", (long long)r, V);
    CHECK(r > 256 + 100, "only %lld ranks learned", (long long)r);
    check_configs(d[0], MTOK_NAMING_CHATGLM, r, "bfloat16");
    check_configs(d[1], MTOK_NAMING_CHATGLM, r, "bfloat16");
    check_configs(d[2], MTOK_NAMING_HF, r, "bfloat16");
    check_configs(d[3], MTOK_NAMING_HF, r, "bfloat16");
    check_configs(d[6], MTOK_NAMING_CHATGLM, r, "float32");
    report_library_checks();
    for (int i = 0; i < 4; i++) check_with_library(d[i], r);
    for (int i = 0; i < 8; i++) CHECK(count_files(d[i], 1) == 0, "%s: temporary files left", d[i]);

    /* glm4-1m-mini in hf naming: 4 KV groups and the correct rope_theta 1e8 */
    char mini[300];
    snprintf(mini, sizeof mini, "%s/mini", root);
    if (!synth("glm4-1m-mini", mini, MTOK_NAMING_HF, 0, 7, MTOK_BF16)) {
        json_t *c = load_json(mini, "config.json");
        CHECK(jint(c, "num_key_value_heads") == 4 && json_number_value(json_object_get(c, "rope_theta")) == 1e8 &&
                  jint(c, "max_position_embeddings") == 1048576 && jint(c, "head_dim") == 128,
              "glm4-1m-mini config");
        json_decref(c);
        ckpt m = {0};
        snprintf(pa, sizeof pa, "%s/model.safetensors", mini);
        parse_shard(pa, &m);
        const tinfo *k = find(&m, "model.layers.3.self_attn.k_proj.weight");
        CHECK(k && k->shape[0] == 512 && k->shape[1] == 512, "glm4-1m-mini k_proj shape");
        free_ckpt(&m);
    }

    /* overwriting a checkpoint: stale shards and index go, unrelated files stay */
    char notes[400];
    snprintf(notes, sizeof notes, "%s/notes.txt", d[1]);
    FILE *nf = fopen(notes, "w");
    if (nf) fclose(nf);
    synth("glm4-tiny", d[1], MTOK_NAMING_HF, 1, 42, MTOK_BF16);
    CHECK(exists(d[1], "notes.txt") && exists(d[1], "model.safetensors") &&
              !exists(d[1], "model.safetensors.index.json") && !exists(d[1], "model-00001-of-00003.safetensors") &&
              !exists(d[1], "model-00003-of-00003.safetensors"),
          "overwrite left the wrong files");
    ckpt over;
    read_ckpt(d[1], MTOK_NAMING_HF, 1, "BF16", &over);
    free_ckpt(&over);

    /* errors: unknown preset; output under a regular file; a write failure (file size limit) */
    mtok_synth_params bad = {.preset = "glm5", .out_dir = root, .naming = MTOK_NAMING_CHATGLM, .shards = 1};
    CHECK(mtok_synth(&bad) == MTOK_EUSAGE && strstr(mtok_errmsg(), "glm5"), "unknown preset: %s", mtok_errmsg());
    char under[500];
    snprintf(under, sizeof under, "%s/sub", notes);
    bad.preset = "glm4-tiny";
    bad.out_dir = under;
    int rc = mtok_synth(&bad);
    CHECK(rc != 0 && strstr(mtok_errmsg(), "notes.txt"), "out dir under a file: rc %d %s", rc, mtok_errmsg());

    char full[300];
    snprintf(full, sizeof full, "%s/full", root);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 1 << 20; /* 1 MiB: model.safetensors (4 MB) cannot be written */
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    bad.out_dir = full;
    rc = mtok_synth(&bad);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), full), "write failure: rc %d %s", rc, mtok_errmsg());
    CHECK(count_files(full, 0) == 0, "a failed synth left %d files in %s", count_files(full, 0), full);

    free_ckpt(&g1);
    free_ckpt(&g3);
    free_ckpt(&h1);
    free_ckpt(&h3);
    rm_rf(root);
    printf("test_synth: %s (%d failures)\n", check_failures ? "FAIL" : "ok", check_failures);
    (void)argc;
    (void)argv;
    return check_failures ? 1 : 0;
}
