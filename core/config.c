/* config.c — config.json (either naming) -> mtok_config.
 *
 * Two spellings describe the same architecture (docs/GLM.md §1): the original THUDM "chatglm" config
 * and the Hugging Face "glm" re-export. Both are read into one mtok_config; the naming field tells the
 * loader which tensor names to expect. Everything that could make the forward pass silently wrong is
 * rejected here with a message naming the key: unsupported ChatGLM variants, sizes that do not divide,
 * odd rotary dims. The RoPE base of the HF re-exports is corrected here too (docs/GLM.md §1.3). */
#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "model.h"

/* Sizes above this are certainly not a GLM config and would risk int64 overflow in shape products
 * (rows like H*D + 2*G*D stay far below 2^62 with every factor <= 2^24). */
#define MAX_DIM ((int64_t)1 << 24)
#define MAX_LAYERS 4096
/* Context lengths are int64 everywhere, but position x width products must not wrap: 2^40 tokens
 * is far beyond any GLM context (1M = 2^20) and leaves every such product below 2^63. */
#define MAX_CTX ((int64_t)1 << 40)

/* Parsing context: the path for messages and the root object. */
typedef struct {
    const char *path;
    json_t *root;
} cfgctx;

/* ---- typed key readers: 0 ok, 1 absent (optional), <0 error already recorded ---- */

static int get_int(const cfgctx *c, const char *key, int required, int64_t *out) {
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        if (required) return mtok_err(MTOK_EINPUT, "%s: missing key '%s'", c->path, key);
        return 1;
    }
    /* 4096.0 is accepted as 4096: some tools re-save configs with floats */
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || fabs(d) > 9e15)
            return mtok_err(MTOK_EINPUT, "%s: key '%s' must be an integer, got %g", c->path, key, d);
        *out = (int64_t)d;
        return 0;
    }
    if (!json_is_integer(v)) return mtok_err(MTOK_EINPUT, "%s: key '%s' must be an integer", c->path, key);
    *out = (int64_t)json_integer_value(v);
    return 0;
}

static int get_num(const cfgctx *c, const char *key, int required, double *out) {
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        if (required) return mtok_err(MTOK_EINPUT, "%s: missing key '%s'", c->path, key);
        return 1;
    }
    if (!json_is_number(v)) return mtok_err(MTOK_EINPUT, "%s: key '%s' must be a number", c->path, key);
    *out = json_number_value(v);
    if (!isfinite(*out)) return mtok_err(MTOK_EINPUT, "%s: key '%s' is not finite", c->path, key);
    return 0;
}

/* The norm epsilon is used as a float32 (core/forward.c). A value that is positive as a double can
 * still become 0 or a subnormal there (1e-50) or infinity (1e39), so the check is made on the float. */
static int get_eps(const cfgctx *c, const char *key, float *out) {
    double d = 0;
    int rc = get_num(c, key, 1, &d);
    if (rc < 0) return rc;
    float f = (float)d;
    if (!(f >= FLT_MIN && f <= FLT_MAX))
        return mtok_err(MTOK_EINPUT, "%s: key '%s' = %g is not a positive normal float32 (it must lie in [%g, %g])",
                        c->path, key, d, (double)FLT_MIN, (double)FLT_MAX);
    *out = f;
    return 0;
}

/* transformers >= 5 nests rope_theta and partial_rotary_factor in "rope_parameters"; older
 * exports have them at the top level. Top level wins when both exist. */
static int get_rope_num(const cfgctx *c, const char *key, double *out) {
    int rc = get_num(c, key, 0, out);
    if (rc != 1) return rc;
    json_t *rp = json_object_get(c->root, "rope_parameters");
    json_t *v = json_is_object(rp) ? json_object_get(rp, key) : NULL;
    if (!v || json_is_null(v)) return 1;
    if (!json_is_number(v)) return mtok_err(MTOK_EINPUT, "%s: key 'rope_parameters.%s' must be a number", c->path, key);
    *out = json_number_value(v);
    return isfinite(*out) ? 0 : mtok_err(MTOK_EINPUT, "%s: key 'rope_parameters.%s' is not finite", c->path, key);
}

static int get_bool(const cfgctx *c, const char *key, int dflt, int *out) {
    json_t *v = json_object_get(c->root, key);
    *out = dflt;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return mtok_err(MTOK_EINPUT, "%s: key '%s' must be true or false", c->path, key);
    *out = json_is_true(v);
    return 0;
}

/* A size: required integer in [1, max]. */
static int get_size(const cfgctx *c, const char *key, int64_t max, int64_t *out) {
    int rc = get_int(c, key, 1, out);
    if (rc < 0) return rc;
    if (*out <= 0) return mtok_err(MTOK_EINPUT, "%s: key '%s' must be positive (got %lld)", c->path, key,
                                   (long long)*out);
    if (*out > max)
        return mtok_err(MTOK_EINPUT, "%s: key '%s' = %lld is too large (at most %lld)", c->path, key,
                        (long long)*out, (long long)max);
    return 0;
}

/* One stop id: an integer that names a row of the vocabulary. Checked as a JSON integer (int64)
 * before it is narrowed to int32, so -5 or 2^40 is refused instead of wrapping into some other id. */
static int eos_id(const cfgctx *c, const mtok_config *cfg, json_t *e, const char *what, int32_t *out) {
    if (!json_is_integer(e))
        return mtok_err(MTOK_EINPUT, "%s: key 'eos_token_id'%s is not an integer", c->path, what);
    json_int_t id = json_integer_value(e);
    if (id < 0 || id >= cfg->vocab)
        return mtok_err(MTOK_EINPUT, "%s: key 'eos_token_id'%s = %lld is not a token id (vocabulary [0, %lld))",
                        c->path, what, (long long)id, (long long)cfg->vocab);
    *out = (int32_t)id; /* vocab <= MAX_DIM < 2^31 */
    return 0;
}

/* eos_token_id: an int or a list of ints (GLM-4 lists three stop ids). Absent: none. */
static int get_eos(const cfgctx *c, mtok_config *cfg) {
    json_t *v = json_object_get(c->root, "eos_token_id");
    cfg->n_eos = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_array(v)) {
        if (!json_is_integer(v))
            return mtok_err(MTOK_EINPUT, "%s: key 'eos_token_id' must be an integer or a list of integers", c->path);
        int rc = eos_id(c, cfg, v, "", &cfg->eos_ids[0]);
        if (!rc) cfg->n_eos = 1;
        return rc;
    }
    if (json_array_size(v) > MTOK_MAX_EOS)
        return mtok_err(MTOK_EINPUT, "%s: key 'eos_token_id' lists %zu ids; mtok keeps at most %d", c->path,
                        json_array_size(v), MTOK_MAX_EOS);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        char what[32];
        snprintf(what, sizeof what, " entry %zu", i);
        int rc = eos_id(c, cfg, e, what, &cfg->eos_ids[cfg->n_eos]);
        if (rc) return rc;
        cfg->n_eos++;
    }
    return 0;
}

static int get_pad(const cfgctx *c, mtok_config *cfg) {
    int64_t pad = -1;
    int rc = get_int(c, "pad_token_id", 0, &pad);
    if (rc < 0) return rc;
    if (pad < -1 || pad > INT32_MAX)
        return mtok_err(MTOK_EINPUT, "%s: key 'pad_token_id' = %lld is not a token id", c->path, (long long)pad);
    cfg->pad_id = (int32_t)pad;
    return 0;
}

/* torch_dtype is only a first guess: the loader sets cfg->dtype from the tensors actually stored. */
static void get_dtype(const cfgctx *c, mtok_config *cfg) {
    const char *s = json_string_value(json_object_get(c->root, "torch_dtype"));
    cfg->dtype = MTOK_BF16;
    if (!s) return;
    if (!strcmp(s, "float16")) cfg->dtype = MTOK_F16;
    else if (!strcmp(s, "float32")) cfg->dtype = MTOK_F32;
    else if (strcmp(s, "bfloat16")) mtok_log(2, "%s: torch_dtype '%s' ignored; the tensors decide", c->path, s);
}

/* ---- architecture detection ---- */

static int detect_naming(const cfgctx *c, mtok_naming *naming) {
    json_t *mt = json_object_get(c->root, "model_type");
    const char *what = "(none)";
    if (json_is_string(mt)) {
        what = json_string_value(mt);
        if (!strcmp(what, "chatglm")) return *naming = MTOK_NAMING_CHATGLM, 0;
        if (!strcmp(what, "glm")) return *naming = MTOK_NAMING_HF, 0;
        /* a model_type that names another architecture wins over architectures[] (e.g. "glm4" is the
         * GLM-4-0414 family with sandwich norms, a different forward pass) */
        goto unknown;
    }
    json_t *arch = json_object_get(c->root, "architectures");
    size_t i;
    json_t *a;
    json_array_foreach(arch, i, a) {
        const char *s = json_string_value(a);
        if (!s) continue;
        if (!strcmp(s, "ChatGLMModel") || !strcmp(s, "ChatGLMForConditionalGeneration"))
            return *naming = MTOK_NAMING_CHATGLM, 0;
        if (!strcmp(s, "GlmForCausalLM")) return *naming = MTOK_NAMING_HF, 0;
        if (i == 0) what = s;
    }
unknown:
    return mtok_err(MTOK_EINPUT, "%s: unknown architecture '%s' (mtok runs ChatGLM/GLM-4 checkpoints)", c->path,
                    what);
}

/* ---- the two namings ---- */

/* A chatglm flag whose non-default value selects a forward pass mtok does not implement. */
static int require_flag(const cfgctx *c, const char *key, int supported) {
    int v;
    int rc = get_bool(c, key, supported, &v);
    if (rc < 0) return rc;
    if (v != supported)
        return mtok_err(MTOK_EINPUT,
                        "%s: '%s': %s is not supported (mtok runs the ChatGLM2/3 and GLM-4 architecture: "
                        "RMSNorm, rope on half the head, bias only on QKV)",
                        c->path, key, v ? "true" : "false");
    return 0;
}

static int parse_chatglm(const cfgctx *c, mtok_config *cfg) {
    int rc;
    if (json_object_get(c->root, "position_encoding_2d"))
        return mtok_err(MTOK_EINPUT, "%s: ChatGLM-6B (v1, 2-D positions) is not supported", c->path);
    if ((rc = require_flag(c, "rmsnorm", 1)) || (rc = require_flag(c, "add_bias_linear", 0)) ||
        (rc = require_flag(c, "apply_residual_connection_post_layernorm", 0)) ||
        (rc = require_flag(c, "original_rope", 1)) || (rc = require_flag(c, "post_layer_norm", 1)))
        return rc;

    /* num_hidden_layers is a duplicate some revisions add; num_layers is the original key */
    const char *layers_key = json_object_get(c->root, "num_layers") ? "num_layers"
                             : json_object_get(c->root, "num_hidden_layers") ? "num_hidden_layers"
                                                                             : "num_layers";
    if ((rc = get_size(c, layers_key, MAX_LAYERS, &cfg->n_layers)) || (rc = get_size(c, "hidden_size", MAX_DIM, &cfg->hidden)) ||
        (rc = get_size(c, "num_attention_heads", MAX_DIM, &cfg->n_heads)) ||
        (rc = get_size(c, "kv_channels", MAX_DIM, &cfg->head_dim)) ||
        (rc = get_size(c, "ffn_hidden_size", MAX_DIM, &cfg->ffn)) ||
        (rc = get_size(c, "padded_vocab_size", MAX_DIM, &cfg->vocab)) ||
        (rc = get_size(c, "seq_length", MAX_CTX, &cfg->max_ctx)))
        return rc;

    int mqa;
    if ((rc = get_bool(c, "multi_query_attention", 0, &mqa))) return rc;
    if (mqa) {
        if ((rc = get_size(c, "multi_query_group_num", MAX_DIM, &cfg->n_kv_groups))) return rc;
    } else {
        cfg->n_kv_groups = cfg->n_heads; /* plain multi-head attention */
    }

    if ((rc = get_eps(c, "layernorm_epsilon", &cfg->norm_eps))) return rc;

    double ratio = 1.0;
    if ((rc = get_num(c, "rope_ratio", 0, &ratio)) < 0) return rc;
    if (!(ratio > 0)) return mtok_err(MTOK_EINPUT, "%s: key 'rope_ratio' must be positive (got %g)", c->path, ratio);
    /* GLM-4 and ChatGLM3-32k/128k multiply the base (docs/GLM.md §3.4) */
    cfg->rope_base_config = 10000.0 * ratio;
    if (!isfinite(cfg->rope_base_config))
        return mtok_err(MTOK_EINPUT, "%s: key 'rope_ratio' = %g makes the RoPE base 10000 x %g overflow", c->path,
                        ratio, ratio);
    cfg->rope_base = cfg->rope_base_config;
    cfg->rope_dim = cfg->head_dim / 2; /* RotaryEmbedding(kv_channels // 2): half of every head rotates */

    if ((rc = get_bool(c, "add_qkv_bias", 0, &cfg->qkv_bias))) return rc;
    return 0;
}

static int parse_hf(const cfgctx *c, mtok_config *cfg) {
    int rc;
    if ((rc = get_size(c, "num_hidden_layers", MAX_LAYERS, &cfg->n_layers)) ||
        (rc = get_size(c, "hidden_size", MAX_DIM, &cfg->hidden)) ||
        (rc = get_size(c, "num_attention_heads", MAX_DIM, &cfg->n_heads)) ||
        (rc = get_size(c, "num_key_value_heads", MAX_DIM, &cfg->n_kv_groups)) ||
        (rc = get_size(c, "intermediate_size", MAX_DIM, &cfg->ffn)) ||
        (rc = get_size(c, "vocab_size", MAX_DIM, &cfg->vocab)) ||
        (rc = get_size(c, "max_position_embeddings", MAX_CTX, &cfg->max_ctx)))
        return rc;

    if (json_object_get(c->root, "head_dim")) {
        if ((rc = get_size(c, "head_dim", MAX_DIM, &cfg->head_dim))) return rc;
    } else {
        if (cfg->hidden % cfg->n_heads)
            return mtok_err(MTOK_EINPUT, "%s: no 'head_dim' and hidden_size %lld is not divisible by "
                            "num_attention_heads %lld", c->path, (long long)cfg->hidden, (long long)cfg->n_heads);
        cfg->head_dim = cfg->hidden / cfg->n_heads;
    }

    const char *act = json_string_value(json_object_get(c->root, "hidden_act"));
    if (act && strcmp(act, "silu"))
        return mtok_err(MTOK_EINPUT, "%s: hidden_act '%s' is not supported (GLM uses silu)", c->path, act);

    if ((rc = get_eps(c, "rms_norm_eps", &cfg->norm_eps))) return rc;

    double prf = 0.5; /* GlmConfig default */
    if ((rc = get_rope_num(c, "partial_rotary_factor", &prf)) < 0) return rc;
    if (!(prf > 0 && prf <= 1))
        return mtok_err(MTOK_EINPUT, "%s: key 'partial_rotary_factor' must be in (0, 1] (got %g)", c->path, prf);
    cfg->rope_dim = (int64_t)((double)cfg->head_dim * prf);

    double theta = 10000.0; /* GlmConfig default */
    if ((rc = get_rope_num(c, "rope_theta", &theta)) < 0) return rc;
    if (!(theta > 0)) return mtok_err(MTOK_EINPUT, "%s: key 'rope_theta' must be positive (got %g)", c->path, theta);
    cfg->rope_base_config = theta;
    cfg->rope_base = theta;

    if ((rc = get_bool(c, "attention_bias", 1, &cfg->qkv_bias))) return rc; /* GlmConfig default true */
    return 0;
}

/* ---- RoPE base correction (docs/GLM.md §1.3) ---- */

static int contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return 1;
    }
    return 0;
}

/* The HF converter wrote rope_theta = 10000 for models whose real base is 10000 * rope_ratio, because
 * getattr() on a dict always fell back to 1. The model id or the context length tells which model it is. */
static void correct_rope(const cfgctx *c, mtok_config *cfg) {
    if (cfg->naming != MTOK_NAMING_HF || cfg->rope_base_config != 10000.0) return;
    const char *name = json_string_value(json_object_get(c->root, "_name_or_path"));
    if (!name) name = "";
    double base = 0;
    if (contains_ci(name, "1m") || cfg->max_ctx >= 1048576) base = 1e8;             /* GLM-4-9B-Chat-1M */
    else if (contains_ci(name, "glm-4-9b-chat") || cfg->max_ctx >= 131072) base = 5e6; /* GLM-4-9B-Chat */
    if (base == 0) return;
    cfg->rope_base = base;
    mtok_log(1, "%s: rope_theta 10000 is the known-wrong value of the HF re-export; using %g (override with "
             "--rope-base)", c->path, base);
}

/* ---- cross-field checks ---- */

static int check_shapes(const cfgctx *c, const mtok_config *cfg) {
    if (cfg->n_heads % cfg->n_kv_groups)
        return mtok_err(MTOK_EINPUT, "%s: %lld attention heads are not divisible by %lld KV groups", c->path,
                        (long long)cfg->n_heads, (long long)cfg->n_kv_groups);
    if (cfg->rope_dim <= 0 || cfg->rope_dim % 2)
        return mtok_err(MTOK_EINPUT, "%s: rotary dim %lld (of head dim %lld) must be even and positive: RoPE "
                        "rotates pairs", c->path, (long long)cfg->rope_dim, (long long)cfg->head_dim);
    if (cfg->rope_dim > cfg->head_dim)
        return mtok_err(MTOK_EINPUT, "%s: rotary dim %lld exceeds head dim %lld", c->path,
                        (long long)cfg->rope_dim, (long long)cfg->head_dim);
    int tie = 0;
    int rc = get_bool(c, "tie_word_embeddings", 0, &tie);
    if (rc) return rc;
    if (tie)
        return mtok_err(MTOK_EINPUT, "%s: tie_word_embeddings true is not supported (GLM has a separate output "
                        "layer)", c->path);
    return 0;
}

int mtok_config_parse(const char *path, const char *json_text, size_t len, const mtok_load_params *p,
                      mtok_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loadb(json_text, len, 0, &jerr);
    if (!root) return mtok_err(MTOK_EINPUT, "%s: not valid JSON (line %d: %s)", path, jerr.line, jerr.text);
    cfgctx c = {path, root};
    int rc;
    if (!json_is_object(root)) {
        rc = mtok_err(MTOK_EINPUT, "%s: expected a JSON object", path);
        goto done;
    }
    if ((rc = detect_naming(&c, &cfg->naming))) goto done;
    rc = cfg->naming == MTOK_NAMING_CHATGLM ? parse_chatglm(&c, cfg) : parse_hf(&c, cfg);
    if (rc || (rc = check_shapes(&c, cfg)) || (rc = get_eos(&c, cfg)) || (rc = get_pad(&c, cfg))) goto done;
    get_dtype(&c, cfg);
    correct_rope(&c, cfg);
    if (p && p->rope_base > 0) {
        mtok_log(1, "%s: RoPE base %g from --rope-base (config gives %g, would use %g)", path, p->rope_base,
                 cfg->rope_base_config, cfg->rope_base);
        cfg->rope_base = p->rope_base;
    }
    rc = 0;
done:
    json_decref(root);
    return rc;
}
