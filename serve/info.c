/* info.c — the endpoints that describe the model and its tokenizer: /v1/models, /health,
 * /tokenizer_info, /tokenize and /detokenize, shaped as vLLM shapes them (lm-evaluation-harness uses
 * the last three instead of a local tokenizer when the server offers them). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "srv.h"

/* The GLM-4 conversation format (core/chat.c) as a Jinja template, for clients that render chats
 * themselves (lm-eval --apply_chat_template): used when the checkpoint's tokenizer_config.json has
 * none. Tool definitions are not rendered here; /v1/chat/completions renders them server-side. */
static const char GLM4_TEMPLATE[] =
    "[gMASK]<sop>{% for message in messages %}{% if message['content'] %}"
    "<|{{ 'observation' if message['role'] == 'tool' else message['role'] }}|>\n{{ message['content'] }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

int srv_load_chat_template(srv *S) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", S->cfg.model_dir);
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    const char *t = json_string_value(json_object_get(cfg, "chat_template"));
    S->chat_template = strdup(t ? t : GLM4_TEMPLATE);
    json_decref(cfg);
    return S->chat_template ? 0 : mtok_err(MTOK_ERESOURCE, "out of memory");
}

int srv_handle_health(srv_req *r) {
    const int ready = __atomic_load_n(&r->S->ready, __ATOMIC_ACQUIRE);
    return srv_send_json(r, ready ? 200 : 503, json_pack("{s:s}", "status", ready ? "ok" : "loading"));
}

int srv_handle_models(srv_req *r) {
    json_t *m = json_pack("{s:s, s:s, s:I, s:s, s:I}", "id", r->S->name, "object", "model", "created",
                          (json_int_t)time(NULL), "owned_by", "mtok", "max_model_len", (json_int_t)r->S->ctx);
    return srv_send_json(r, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", m));
}

static json_t *token_text(const srv *S, int32_t id) {
    size_t len = 0;
    const char *b = id >= 0 ? mtok_token_bytes(S->tok, id, &len) : NULL;
    return b ? srv_jstr(b, len) : json_null();
}

int srv_handle_tokenizer_info(srv_req *r) {
    const srv *S = r->S;
    json_t *o = json_object();
    json_object_set_new(o, "eos_token", token_text(S, S->mc->n_eos ? S->mc->eos_ids[0] : -1));
    json_object_set_new(o, "bos_token", json_null()); /* GLM-4 has none: [gMASK]<sop> is a prefix, not a bos */
    json_object_set_new(o, "pad_token", token_text(S, S->mc->pad_id));
    json_object_set_new(o, "chat_template", json_string(S->chat_template));
    json_object_set_new(o, "model_max_length", json_integer((json_int_t)S->ctx));
    json_object_set_new(o, "vocab_size", json_integer((json_int_t)S->n_valid));
    return srv_send_json(r, 200, o);
}

int srv_handle_tokenize(srv_req *r, json_t *body) {
    mtok_ids ids = {0};
    int rc, with_strs = 0, add = 1;
    json_t *prompt = json_object_get(body, "prompt"), *msgs = json_object_get(body, "messages");
    json_t *strs = json_object_get(body, "return_token_strs");
    if (strs && !json_is_null(strs)) {
        if (!json_is_boolean(strs)) return srv_fail(r, 400, "return_token_strs", NULL, "'return_token_strs' must be a boolean");
        with_strs = json_is_true(strs);
    }
    if (json_is_string(prompt)) {
        json_t *a = json_object_get(body, "add_special_tokens");
        if (a && !json_is_null(a) && !json_is_boolean(a))
            return srv_fail(r, 400, "add_special_tokens", NULL, "'add_special_tokens' must be a boolean");
        if (a) add = json_is_true(a);
        rc = srv_tokenize_text(r, json_string_value(prompt), json_string_length(prompt), add, &ids, NULL);
    } else if (msgs) {
        json_t *a = json_object_get(body, "add_generation_prompt");
        if (a && !json_is_null(a) && !json_is_boolean(a))
            return srv_fail(r, 400, "add_generation_prompt", NULL, "'add_generation_prompt' must be a boolean");
        rc = srv_chat_ids(r, body, a ? json_is_true(a) : 1, NULL, &ids);
    } else {
        return srv_fail(r, 400, "prompt", NULL, "/tokenize needs a string 'prompt' or a list of 'messages'");
    }
    if (rc) {
        mtok_ids_free(&ids);
        return -1;
    }
    json_t *toks = json_array(), *ts = with_strs ? json_array() : NULL;
    for (size_t i = 0; i < ids.n; i++) {
        json_array_append_new(toks, json_integer(ids.v[i]));
        if (ts) json_array_append_new(ts, token_text(r->S, ids.v[i]));
    }
    json_t *o = json_pack("{s:o, s:I, s:I}", "tokens", toks, "count", (json_int_t)ids.n, "max_model_len",
                          (json_int_t)r->S->ctx);
    if (ts) json_object_set_new(o, "token_strs", ts);
    mtok_ids_free(&ids);
    return srv_send_json(r, 200, o);
}

int srv_handle_detokenize(srv_req *r, json_t *body) {
    json_t *t = json_object_get(body, "tokens");
    if (!json_is_array(t)) return srv_fail(r, 400, "tokens", NULL, "/detokenize needs 'tokens', a list of token ids");
    const int64_t nv = mtok_tokenizer_n_vocab(r->S->tok);
    int32_t *ids = malloc((json_array_size(t) + 1) * sizeof *ids);
    if (!ids) return srv_fail_lib(r, MTOK_ERESOURCE);
    size_t i;
    json_t *v;
    json_array_foreach(t, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= nv) {
            free(ids);
            return srv_fail(r, 400, "tokens", NULL, "'tokens' entry %zu is not a token id of this tokenizer (0..%lld)", i,
                            (long long)nv - 1);
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    size_t len = 0;
    char *text = mtok_detokenize(r->S->tok, ids, json_array_size(t), &len);
    free(ids);
    if (!text) return srv_fail_lib(r, MTOK_ERESOURCE);
    json_t *o = json_pack("{s:o}", "prompt", srv_jstr(text, len));
    free(text);
    return srv_send_json(r, 200, o);
}
