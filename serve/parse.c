/* parse.c — request bodies of /v1/completions, /v1/chat/completions and PUT /generate into srv_gen.
 *
 * Every field a client may send is checked for its type and range, and an error names it (OpenAI's
 * "param"), so a harness misconfiguration is a 400 that says what to fix, never a silent default.
 * Fields we do not implement are refused when they would change the output (n > 1, logit_bias,
 * penalties, ...) and ignored when they cannot (user, skip_special_tokens). Field meanings follow
 * the OpenAI API and vLLM's extensions (docs/SERVER.md lists them). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../core/image.h"
#include "../core/vision.h"
#include "srv.h"

void srv_gen_free(srv_gen *g) {
    for (size_t i = 0; i < g->n_prompts; i++) {
        mtok_ids_free(&g->prompts[i]);
        if (g->prompt_text) free(g->prompt_text[i]);
    }
    free(g->prompts);
    free(g->prompt_text);
    free(g->prompt_text_len);
    free(g->n_prefix);
    for (int i = 0; i < g->n_stop; i++) free(g->stop[i]);
    free(g->stop);
    free(g->stop_ids);
    json_decref(g->tool_names);
    free(g->forced_tool);
    free(g->image);
    memset(g, 0, sizeof *g);
}

/* ---- typed fields ---- */
static const char *kind(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* An optional integer field in [lo, hi]; absent or null leaves *v. */
static int opt_int(srv_req *r, json_t *o, const char *k, int64_t lo, int64_t hi, int64_t *v, int *given) {
    json_t *j = json_object_get(o, k);
    if (!j || json_is_null(j)) return 0;
    /* 16.0 is accepted as 16 (some clients write every number as a float); the range is checked
     * on the double before it is converted, since converting one past int64 is undefined */
    const double d = json_is_real(j) ? json_real_value(j) : 0;
    const int whole_real = json_is_real(j) && d >= -9.2e18 && d <= 9.2e18 && d == floor(d);
    if (!json_is_integer(j) && !whole_real)
        return srv_fail(r, 400, k, NULL, "'%s' must be an integer, not %s", k,
                        json_is_real(j) ? "a fraction or a number past 64 bits" : kind(j));
    const int64_t x = json_is_integer(j) ? (int64_t)json_integer_value(j) : (int64_t)d;
    if (x < lo || x > hi)
        return srv_fail(r, 400, k, NULL, "'%s' is %lld; it must lie in [%lld, %lld]", k, (long long)x, (long long)lo,
                        (long long)hi);
    *v = x;
    if (given) *given = 1;
    return 0;
}

static int opt_real(srv_req *r, json_t *o, const char *k, double lo, double hi, double *v) {
    json_t *j = json_object_get(o, k);
    if (!j || json_is_null(j)) return 0;
    if (!json_is_number(j)) return srv_fail(r, 400, k, NULL, "'%s' must be a number, not %s", k, kind(j));
    const double x = json_number_value(j);
    if (!(x >= lo && x <= hi)) return srv_fail(r, 400, k, NULL, "'%s' is %g; it must lie in [%g, %g]", k, x, lo, hi);
    *v = x;
    return 0;
}

static int opt_bool(srv_req *r, json_t *o, const char *k, int *v) {
    json_t *j = json_object_get(o, k);
    if (!j || json_is_null(j)) return 0;
    if (!json_is_boolean(j)) return srv_fail(r, 400, k, NULL, "'%s' must be true or false, not %s", k, kind(j));
    *v = json_is_true(j);
    return 0;
}

/* Fields that would change the output and that mtok does not implement: refused by name. */
static int unsupported(srv_req *r, json_t *o) {
    int64_t n = 1, best_of = 1, min_tokens = 0;
    double pp = 0, fp = 0;
    int beam = 0;
    if (opt_int(r, o, "n", 1, 1 << 20, &n, NULL) || opt_int(r, o, "best_of", 1, 1 << 20, &best_of, NULL) ||
        opt_int(r, o, "min_tokens", 0, 1 << 30, &min_tokens, NULL) ||
        opt_real(r, o, "presence_penalty", -2, 2, &pp) || opt_real(r, o, "frequency_penalty", -2, 2, &fp) ||
        opt_bool(r, o, "use_beam_search", &beam))
        return -1;
    if (n > 1) return srv_fail(r, 400, "n", NULL, "'n' is %lld: mtok returns one choice per prompt (n = 1)", (long long)n);
    if (best_of > 1) return srv_fail(r, 400, "best_of", NULL, "'best_of' > 1 is not supported");
    if (min_tokens) return srv_fail(r, 400, "min_tokens", NULL, "'min_tokens' is not supported");
    if (pp != 0) return srv_fail(r, 400, "presence_penalty", NULL, "'presence_penalty' is not supported (use repetition_penalty)");
    if (fp != 0) return srv_fail(r, 400, "frequency_penalty", NULL, "'frequency_penalty' is not supported (use repetition_penalty)");
    if (beam) return srv_fail(r, 400, "use_beam_search", NULL, "beam search is not supported");
    json_t *lb = json_object_get(o, "logit_bias");
    if (lb && !json_is_null(lb) && !(json_is_object(lb) && json_object_size(lb) == 0))
        return srv_fail(r, 400, "logit_bias", NULL, "'logit_bias' is not supported");
    json_t *sfx = json_object_get(o, "suffix");
    if (sfx && !json_is_null(sfx) && !(json_is_string(sfx) && !json_string_length(sfx)))
        return srv_fail(r, 400, "suffix", NULL, "'suffix' (insertion) is not supported");
    json_t *rf = json_object_get(o, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *t = json_object_get(rf, "type");
        if (!json_is_object(rf) || !json_is_string(t) || strcmp(json_string_value(t), "text"))
            return srv_fail(r, 400, "response_format", NULL, "'response_format' other than {\"type\": \"text\"} is not supported");
    }
    json_t *m = json_object_get(o, "model");
    if (m && !json_is_null(m) && !json_is_string(m))
        return srv_fail(r, 400, "model", NULL, "'model' must be a string, not %s", kind(m));
    return 0;
}

/* Sampling, stop, streaming: the fields the three endpoints share. */
static int common_fields(srv_req *r, json_t *o, srv_gen *g, double default_temperature) {
    double t = default_temperature, top_p = 1, rep = 1;
    int64_t top_k = 0, seed = 0;
    int seeded = 0;
    if (unsupported(r, o) || opt_real(r, o, "temperature", 0, 100, &t) || opt_real(r, o, "top_p", 0, 1, &top_p) ||
        opt_int(r, o, "top_k", -1, 1 << 30, &top_k, NULL) || opt_int(r, o, "seed", INT64_MIN, INT64_MAX, &seed, &seeded) ||
        opt_real(r, o, "repetition_penalty", 0.01, 100, &rep) || opt_bool(r, o, "ignore_eos", &g->ignore_eos) ||
        opt_bool(r, o, "stream", &g->stream))
        return -1;
    if (top_p <= 0) return srv_fail(r, 400, "top_p", NULL, "'top_p' must be greater than 0");
    static uint64_t counter;
    g->sampler = (mtok_sampler_params){.temperature = (float)t, .top_k = top_k < 0 ? 0 : (int)top_k,
                                       .top_p = (float)top_p, .repetition_penalty = (float)rep,
                                       .seed = seeded ? (uint64_t)seed
                                                      : (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull +
                                                            __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED)};
    json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) return srv_fail(r, 400, "stream_options", NULL, "'stream_options' must be an object");
        if (!g->stream) return srv_fail(r, 400, "stream_options", NULL, "'stream_options' needs \"stream\": true");
        if (opt_bool(r, so, "include_usage", &g->include_usage)) return -1;
    }
    json_t *stop = json_object_get(o, "stop");
    if (stop && !json_is_null(stop)) {
        json_t *one = json_is_string(stop) ? json_pack("[O]", stop) : json_incref(stop);
        if (!json_is_array(one) || json_array_size(one) > 16) {
            json_decref(one);
            return srv_fail(r, 400, "stop", NULL, "'stop' must be a string or a list of at most 16 strings");
        }
        g->stop = calloc(json_array_size(one) + 1, sizeof *g->stop);
        size_t i;
        json_t *s;
        json_array_foreach(one, i, s) {
            if (!json_is_string(s) || !json_string_length(s)) {
                json_decref(one);
                return srv_fail(r, 400, "stop", NULL, "'stop' entry %zu must be a non-empty string", i);
            }
            g->stop[g->n_stop++] = strdup(json_string_value(s));
        }
        json_decref(one);
    }
    json_t *sid = json_object_get(o, "stop_token_ids");
    if (sid && !json_is_null(sid)) {
        if (!json_is_array(sid)) return srv_fail(r, 400, "stop_token_ids", NULL, "'stop_token_ids' must be a list of ids");
        g->stop_ids = calloc(json_array_size(sid) + 4, sizeof *g->stop_ids);
        size_t i;
        json_t *v;
        json_array_foreach(sid, i, v) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= r->S->mc->vocab)
                return srv_fail(r, 400, "stop_token_ids", NULL, "'stop_token_ids' entry %zu is not an id of this model", i);
            g->stop_ids[g->n_stop_ids++] = (int32_t)json_integer_value(v);
        }
    }
    return 0;
}

int srv_tokenize_text(srv_req *r, const char *text, size_t len, int add_prefix, mtok_ids *out, int *n_prefix) {
    int rc = 0;
    const size_t n0 = out->n;
    if (add_prefix && strncmp(text, "[gMASK]", 7)) {
        const int32_t g = mtok_token_special(r->S->tok, "[gMASK]"), s = mtok_token_special(r->S->tok, "<sop>");
        if (g >= 0) rc = mtok_ids_push(out, g);
        if (!rc && s >= 0) rc = mtok_ids_push(out, s);
    }
    if (n_prefix) *n_prefix = (int)(out->n - n0);
    if (!rc) rc = mtok_tokenize(r->S->tok, text, len, 1, out);
    return rc ? srv_fail_lib(r, rc) : 0;
}

/* A prompt given as ids: every id must be one the model has. */
static int ids_prompt(srv_req *r, json_t *arr, const char *what, mtok_ids *out) {
    size_t i;
    json_t *v;
    if (!json_array_size(arr)) return srv_fail(r, 400, "prompt", NULL, "%s is an empty list of tokens", what);
    json_array_foreach(arr, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= r->S->mc->vocab)
            return srv_fail(r, 400, "prompt", NULL, "%s: entry %zu is not a token id of this model (0..%lld)", what, i,
                            (long long)r->S->mc->vocab - 1);
        if (mtok_ids_push(out, (int32_t)json_integer_value(v))) return srv_fail_lib(r, MTOK_ERESOURCE);
    }
    return 0;
}

static int add_prompt(srv_gen *g, size_t cap) {
    if (!g->prompts) {
        g->prompts = calloc(cap, sizeof *g->prompts);
        g->prompt_text = calloc(cap, sizeof *g->prompt_text);
        g->prompt_text_len = calloc(cap, sizeof *g->prompt_text_len);
        g->n_prefix = calloc(cap, sizeof *g->n_prefix);
    }
    return g->prompts && g->prompt_text && g->prompt_text_len && g->n_prefix ? 0 : -1;
}

/* Prompt i given as text: its ids, and the text itself for echo. */
static int text_prompt(srv_req *r, srv_gen *g, size_t i, json_t *str, int add_prefix) {
    const size_t len = json_string_length(str);
    if (!(g->prompt_text[i] = malloc(len + 1))) return srv_fail_lib(r, MTOK_ERESOURCE);
    memcpy(g->prompt_text[i], json_string_value(str), len + 1);
    g->prompt_text_len[i] = len;
    return srv_tokenize_text(r, json_string_value(str), len, add_prefix, &g->prompts[i], &g->n_prefix[i]);
}

int srv_parse_completions(srv_req *r, json_t *o, srv_gen *g) {
    g->kind = SRV_COMPLETIONS;
    g->max_tokens = 16;
    g->logprobs = -1;
    int64_t lp = -1;
    int add_special = 1;
    if (common_fields(r, o, g, 1.0) ||
        opt_int(r, o, "max_tokens", 0, CLI_MAX_TOKENS_SRV, &g->max_tokens, &g->max_tokens_given) ||
        opt_int(r, o, "logprobs", 0, 20, &lp, NULL) || opt_bool(r, o, "echo", &g->echo) ||
        opt_bool(r, o, "add_special_tokens", &add_special))
        return -1;
    g->logprobs = (int)lp;
    json_t *p = json_object_get(o, "prompt");
    if (!p) return srv_fail(r, 400, "prompt", NULL, "'prompt' is missing");
    if (json_is_string(p)) {
        if (add_prompt(g, 1)) return srv_fail_lib(r, MTOK_ERESOURCE);
        g->n_prompts = 1;
        return text_prompt(r, g, 0, p, add_special);
    }
    if (!json_is_array(p) || !json_array_size(p))
        return srv_fail(r, 400, "prompt", NULL, "'prompt' must be a string, a list of strings, a list of token ids or "
                        "a list of such lists, not %s", json_is_array(p) ? "an empty list" : kind(p));
    json_t *first = json_array_get(p, 0);
    if (json_is_integer(first)) {
        if (add_prompt(g, 1)) return srv_fail_lib(r, MTOK_ERESOURCE);
        g->n_prompts = 1;
        return ids_prompt(r, p, "prompt", &g->prompts[0]);
    }
    const size_t n = json_array_size(p);
    if (add_prompt(g, n)) return srv_fail_lib(r, MTOK_ERESOURCE);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(p, i);
        char what[48];
        snprintf(what, sizeof what, "prompt %zu", i);
        g->n_prompts++;
        if (json_is_string(e) && json_is_string(first)) {
            if (text_prompt(r, g, i, e, add_special)) return -1;
        } else if (json_is_array(e) && json_is_array(first)) {
            if (ids_prompt(r, e, what, &g->prompts[i])) return -1;
        } else {
            return srv_fail(r, 400, "prompt", NULL, "'prompt' mixes kinds: entry %zu is %s, entry 0 %s", i, kind(e),
                            kind(first));
        }
    }
    return 0;
}

/* ---- chat ---- */
/* An {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}} part (OpenAI's shape;
 * "detail" is ignored: the tower's input size is fixed) -> g->image. Checked in this order, each
 * error naming the part: where it may be (user messages, one per conversation: GLM-4V takes one), the
 * URL (only data: URIs; mtok never fetches), the base64, then the model (a vision tower) and the
 * image itself, decoded once here so a bad upload is a 400 before any session is taken. The body
 * limit bounds the size: the decoded bytes are 3/4 of a string that fit in it. */
static int image_part(srv_req *r, json_t *part, const char *param, const char *role, srv_gen *g) {
    char at[128];
    snprintf(at, sizeof at, "%s.image_url", param);
    json_t *iu = json_object_get(part, "image_url"), *u = json_object_get(iu, "url");
    if (!json_is_object(iu) || !json_is_string(u))
        return srv_fail(r, 400, at, NULL, "%s must be an object with a string 'url'", at);
    if (strcmp(role, "user"))
        return srv_fail(r, 400, at, NULL, "%s: images go in user messages, not in a \"%s\" message", at, role);
    if (g->image) return srv_fail(r, 400, at, NULL, "%s: one image per conversation (GLM-4V takes one)", at);
    const char *s = json_string_value(u);
    const size_t n = json_string_length(u); /* the JSON string may hold NUL bytes: lengths, not strlen */
    if (n < 5 || strncasecmp(s, "data:", 5))
        return srv_fail(r, 400, at, NULL, "%s: only data: URLs are accepted; mtok does not fetch", at);
    const char *comma = memchr(s, ',', n);
    const size_t hl = comma ? (size_t)(comma - s) : 0; /* "data:MEDIATYPE;base64" */
    if (!comma || hl < 5 + 6 + 7 || strncasecmp(s + 5, "image/", 6) || strncasecmp(comma - 7, ";base64", 7) ||
        memchr(s, 0, hl))
        return srv_fail(r, 400, at, NULL, "%s: a data: URL must read data:image/png;base64,... or "
                        "data:image/jpeg;base64,...", at);
    size_t len = 0, bad = 0;
    unsigned char *bytes = NULL;
    const int b = srv_b64_decode(comma + 1, n - hl - 1, &bytes, &len, &bad);
    if (b == SRV_B64_NOMEM) return srv_fail_lib(r, mtok_err(MTOK_ERESOURCE, "out of memory for the image"));
    if (b) return srv_fail(r, 400, at, NULL, "%s: bad base64 at offset %zu of the data", at, bad);
    const char *dir = r->S->cfg.model_dir;
    const int has = dir ? mtok_vision_config_present(dir) : 0;
    mtok_vision_config vc;
    int rc = has == 1 ? mtok_vision_config_read(dir, &vc) : 0;
    if (has != 1 || rc) {
        free(bytes);
        if (rc) return srv_fail_lib(r, rc);
        return srv_fail(r, 400, at, NULL, "%s: this model has no vision tower (images need a GLM-4V checkpoint)", at);
    }
    mtok_image im = {0};
    if ((rc = mtok_image_decode(bytes, len, "the image", &im))) {
        free(bytes);
        return srv_fail(r, rc == MTOK_EINPUT ? 400 : 500, at, NULL, "%s: %s", at, mtok_errmsg());
    }
    mtok_image_free(&im);
    g->image = bytes, g->image_len = len;
    g->image_ids[0] = (int32_t)vc.boi_id, g->image_ids[1] = (int32_t)vc.pad_id, g->image_ids[2] = (int32_t)vc.eoi_id;
    g->image_extra = mtok_vision_out_rows(&vc) - 3;
    return 0;
}

/* A message's content: a string, null, or a list of {"type": "text", "text": ...} parts (joined) and
 * at most one image_url part (image_part; the template puts the image before the text wherever the
 * part stands, as glm-4v-9b's does). role is the GLM role the message renders as. */
static int content_text(srv_req *r, json_t *c, size_t i, const char *role, srv_gen *g, char **out) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (!c || json_is_null(c)) return *out = strdup(""), 0;
    if (json_is_string(c)) return *out = strdup(json_string_value(c)), 0;
    if (!json_is_array(c)) return srv_fail(r, 400, param, NULL, "%s must be a string or a list of parts, not %s", param, kind(c));
    size_t len = 0, k;
    json_t *part;
    json_array_foreach(c, k, part) {
        json_t *t = json_object_get(part, "type"), *x = json_object_get(part, "text");
        char pp[96];
        snprintf(pp, sizeof pp, "%s[%zu]", param, k);
        if (json_is_string(t) && !strcmp(json_string_value(t), "image_url")) {
            if (image_part(r, part, pp, role, g)) return -1;
            continue;
        }
        if (!json_is_string(t) || strcmp(json_string_value(t), "text"))
            return srv_fail(r, 400, pp, NULL, "%s: only \"text\" and \"image_url\" parts are supported", pp);
        if (!json_is_string(x)) return srv_fail(r, 400, pp, NULL, "%s.text must be a string", pp);
        len += json_string_length(x);
    }
    char *s = malloc(len + 1);
    if (!s) return srv_fail_lib(r, MTOK_ERESOURCE);
    len = 0;
    json_array_foreach(c, k, part) {
        json_t *x = json_object_get(part, "text");
        if (!json_is_string(x) || strcmp(json_string_value(json_object_get(part, "type")), "text")) continue;
        memcpy(s + len, json_string_value(x), json_string_length(x));
        len += json_string_length(x);
    }
    s[len] = 0;
    *out = s;
    return 0;
}

typedef struct {
    mtok_message *m;
    size_t n, cap;
    char **owned;
    size_t n_owned, cap_owned;
} msg_list;

/* Keeps s to be freed with the list (NULL passes through; on a failed growth s is freed and NULL
 * returned, which push_msg then renders as an empty part). */
static char *own(msg_list *L, char *s) {
    if (!s) return NULL;
    if (L->n_owned == L->cap_owned) {
        const size_t cap = L->cap_owned ? 2 * L->cap_owned : 32;
        char **o = realloc(L->owned, cap * sizeof *o);
        if (!o) {
            free(s);
            return NULL;
        }
        L->owned = o, L->cap_owned = cap;
    }
    return L->owned[L->n_owned++] = s;
}

static int push_msg(msg_list *L, const char *role, const char *meta, const char *content, const char *tools) {
    if (L->n == L->cap) {
        L->cap = L->cap ? 2 * L->cap : 16;
        mtok_message *m = realloc(L->m, L->cap * sizeof *m);
        if (!m) return -1;
        L->m = m;
    }
    L->m[L->n++] = (mtok_message){.role = role, .metadata = meta, .content = content, .tools_json = tools};
    return 0;
}

/* tools and tool_choice -> g (tools_active, tool_names, forced_tool) and the tools JSON to render. */
static int parse_tools(srv_req *r, json_t *o, srv_gen *g, char **tools_json) {
    json_t *tools = json_object_get(o, "tools"), *choice = json_object_get(o, "tool_choice");
    *tools_json = NULL;
    if (!tools || json_is_null(tools) || (json_is_array(tools) && !json_array_size(tools))) {
        if (choice && !json_is_null(choice) && !(json_is_string(choice) && (!strcmp(json_string_value(choice), "none") ||
                                                                          !strcmp(json_string_value(choice), "auto"))))
            return srv_fail(r, 400, "tool_choice", NULL, "'tool_choice' names a tool but no 'tools' were given");
        return 0;
    }
    if (!json_is_array(tools)) return srv_fail(r, 400, "tools", NULL, "'tools' must be a list, not %s", kind(tools));
    json_t *names = json_array(), *keep = json_array();
    const char *forced = NULL;
    if (choice && json_is_object(choice)) {
        json_t *fn = json_object_get(choice, "function");
        forced = json_string_value(json_object_get(fn, "name"));
        if (!forced) {
            json_decref(names), json_decref(keep);
            return srv_fail(r, 400, "tool_choice", NULL, "'tool_choice' must be \"none\", \"auto\" or "
                            "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        }
    } else if (choice && !json_is_null(choice)) {
        const char *c = json_string_value(choice);
        if (!c || (strcmp(c, "none") && strcmp(c, "auto"))) {
            json_decref(names), json_decref(keep);
            return srv_fail(r, 400, "tool_choice", NULL, "'tool_choice' %s%s%s is not supported (\"none\", \"auto\" or a "
                            "named function)", c ? "\"" : "", c ? c : kind(choice), c ? "\"" : "");
        }
        if (!strcmp(c, "none")) {
            json_decref(names), json_decref(keep);
            return 0; /* the tools are not shown to the model, and no call is parsed */
        }
    }
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *fn = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(fn ? fn : t, "name"));
        if (name) json_array_append_new(names, json_string(name));
        if (!forced || (name && !strcmp(name, forced))) json_array_append(keep, t);
    }
    if (forced && !json_array_size(keep)) {
        json_decref(names), json_decref(keep);
        return srv_fail(r, 400, "tool_choice", NULL, "'tool_choice' names \"%s\", which is not among 'tools'", forced);
    }
    g->tools_active = 1;
    g->tool_names = names;
    g->forced_tool = forced ? strdup(forced) : NULL;
    *tools_json = json_dumps(keep, JSON_PRESERVE_ORDER);
    json_decref(keep);
    return 0;
}

int srv_chat_ids(srv_req *r, json_t *o, int add_generation_prompt, srv_gen *g, mtok_ids *out) {
    json_t *msgs = json_object_get(o, "messages");
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return srv_fail(r, 400, "messages", NULL, "'messages' must be a non-empty list");
    srv_gen scratch = {0};
    if (!g) g = &scratch;
    msg_list L = {0};
    char *tools_json = NULL;
    long image_msg = -1; /* the index in L.m of the message that carries the image */
    int rc = parse_tools(r, o, g, &tools_json);
    if (!rc && tools_json && push_msg(&L, "system", NULL, NULL, own(&L, tools_json))) rc = srv_fail_lib(r, MTOK_ERESOURCE);
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        if (rc) break;
        char param[64];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!json_is_object(m) || !role) {
            rc = srv_fail(r, 400, param, NULL, "messages[%zu] must be an object with a string 'role'", i);
            break;
        }
        json_t *calls = json_object_get(m, "tool_calls");
        const char *glm = !strcmp(role, "system") || !strcmp(role, "developer") ? "system"
                        : !strcmp(role, "user")      ? "user"
                        : !strcmp(role, "assistant") ? "assistant"
                        : !strcmp(role, "tool")      ? "observation" : NULL;
        if (!glm) {
            rc = srv_fail(r, 400, param, NULL, "messages[%zu] has role \"%s\"; known roles are system, developer, user, "
                          "assistant and tool", i, role);
            break;
        }
        char *content = NULL;
        const int had_image = g->image != NULL;
        if ((rc = content_text(r, json_object_get(m, "content"), i, glm, g, &content))) break;
        own(&L, content);
        if (!had_image && g->image) image_msg = (long)L.n; /* the message pushed next */
        if (push_msg(&L, glm, NULL, content, NULL)) rc = srv_fail_lib(r, MTOK_ERESOURCE);
        if (!rc && !strcmp(glm, "assistant") && json_is_array(calls)) { /* one turn per call: name, then arguments */
            size_t k;
            json_t *c;
            json_array_foreach(calls, k, c) {
                json_t *fn = json_object_get(c, "function");
                const char *name = json_string_value(json_object_get(fn, "name"));
                json_t *args = json_object_get(fn, "arguments");
                if (!name || !(json_is_string(args) || json_is_object(args))) {
                    rc = srv_fail(r, 400, "messages", NULL, "messages[%zu].tool_calls[%zu] needs function.name and "
                                  "function.arguments", i, k);
                    break;
                }
                char *a = json_is_string(args) ? strdup(json_string_value(args)) : json_dumps(args, JSON_PRESERVE_ORDER);
                if (push_msg(&L, "assistant", own(&L, strdup(name)), own(&L, a), NULL)) rc = srv_fail_lib(r, MTOK_ERESOURCE);
                if (rc) break;
            }
        } else if (!rc && calls && !json_is_null(calls)) {
            rc = srv_fail(r, 400, "messages", NULL, "messages[%zu]: 'tool_calls' must be a list on an assistant message", i);
        }
    }
    if (!rc && (rc = mtok_chat_encode_ex(r->S->tok, L.m, L.n, add_generation_prompt, image_msg,
                                         image_msg >= 0 ? g->image_ids : NULL, out)))
        rc = srv_fail_lib(r, rc);
    if (!rc && g->forced_tool && add_generation_prompt) { /* the metadata line of the forced call */
        char line[300];
        snprintf(line, sizeof line, "%s\n", g->forced_tool);
        if ((rc = mtok_tokenize(r->S->tok, line, strlen(line), 0, out))) rc = srv_fail_lib(r, rc);
    }
    for (size_t k = 0; k < L.n_owned; k++) free(L.owned[k]);
    free(L.owned);
    free(L.m);
    srv_gen_free(&scratch);
    return rc;
}

int srv_parse_chat(srv_req *r, json_t *o, srv_gen *g) {
    g->kind = SRV_CHAT;
    g->max_tokens = -1;
    g->logprobs = -1;
    int want_lp = 0;
    int64_t top = 0;
    if (common_fields(r, o, g, 1.0) || opt_int(r, o, "max_tokens", 0, CLI_MAX_TOKENS_SRV, &g->max_tokens, &g->max_tokens_given) ||
        opt_int(r, o, "max_completion_tokens", 0, CLI_MAX_TOKENS_SRV, &g->max_tokens, &g->max_tokens_given) ||
        opt_bool(r, o, "logprobs", &want_lp) || opt_int(r, o, "top_logprobs", 0, 20, &top, NULL))
        return -1;
    if (top && !want_lp) return srv_fail(r, 400, "top_logprobs", NULL, "'top_logprobs' needs \"logprobs\": true");
    g->logprobs = want_lp ? (int)top : -1;
    if (add_prompt(g, 1)) return srv_fail_lib(r, MTOK_ERESOURCE);
    g->n_prompts = 1;
    if (srv_chat_ids(r, o, 1, g, &g->prompts[0])) return -1;
    /* the end of the assistant's turn: the next role token (the config's eos list normally has them) */
    if (!g->stop_ids && !(g->stop_ids = calloc(4, sizeof *g->stop_ids))) return srv_fail_lib(r, MTOK_ERESOURCE);
    const char *ends[] = {"<|user|>", "<|observation|>", "<|endoftext|>"};
    for (int k = 0; k < 3; k++) {
        const int32_t id = mtok_token_special(r->S->tok, ends[k]);
        if (id >= 0) g->stop_ids[g->n_stop_ids++] = id;
    }
    return 0;
}

int srv_parse_generate(srv_req *r, json_t *o, srv_gen *g) {
    g->kind = SRV_GENERATE;
    g->max_tokens = 16;
    g->logprobs = -1;
    if (common_fields(r, o, g, 1.0) ||
        opt_int(r, o, "max_tokens", 0, CLI_MAX_TOKENS_SRV, &g->max_tokens, &g->max_tokens_given))
        return -1;
    if (g->stream) return srv_fail(r, 400, "stream", NULL, "PUT /generate does not stream; use /v1/completions");
    json_t *p = json_object_get(o, "prompt");
    if (!json_is_string(p)) return srv_fail(r, 400, "prompt", NULL, "'prompt' must be a string");
    if (add_prompt(g, 1)) return srv_fail_lib(r, MTOK_ERESOURCE);
    g->n_prompts = 1;
    return text_prompt(r, g, 0, p, 1);
}
