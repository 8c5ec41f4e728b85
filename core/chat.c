/* chat.c — the GLM-4 chat template (docs/GLM.md §5) and tool-call parsing.
 *
 * Conversation = [gMASK]<sop> + Σ messages + <|assistant|>. A message is
 * <|role|> + encode(metadata + "\n") + encode(content): the role tokens are inserted as ids and the
 * text parts are encoded separately, with special strings as plain text, exactly as the reference
 * tokenizer's build_single_message does (so a user cannot smuggle "<|assistant|>" into a turn).
 * A message with empty content renders nothing (the official template skips it). Tool definitions
 * ride in a system message: the fixed GLM-4 system sentence, "# 可用工具", then per function tool
 * "## name" and the function object as JSON with 4-space indent. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mtok.h"

static const char TOOLS_PREAMBLE[] =
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具";
static const char TOOL_SUFFIX[] = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。";

/* growable string */
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;
static int sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return mtok_err(MTOK_ERESOURCE, "out of memory building a chat prompt");
        b->s = p, b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}
static int sb_str(sbuf *b, const char *s) { return sb_add(b, s, strlen(s)); }

static int valid_role(const char *r) {
    return r && (!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant") || !strcmp(r, "observation"));
}

static const char *json_kind(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* The function object of tool entry i, or an error naming what is wrong with the entry. Accepts
 * {"type":"function","function":{...}} and a bare function object {"name":..}. The name goes
 * into the template's "## name" line, so it must be one non-empty line; "description" and
 * "parameters" (a JSON Schema) are optional but must have their types when present. */
static int tool_function(const json_t *tool, size_t i, json_t **fn_out) {
    if (!json_is_object(tool))
        return mtok_err(MTOK_EINPUT, "tools: entry %zu is %s, not an object", i, json_kind(tool));
    json_t *type = json_object_get(tool, "type"), *fn = json_object_get(tool, "function");
    if (!type && !fn) {
        fn = (json_t *)tool; /* a bare function object */
    } else {
        if (!json_is_string(type) || strcmp(json_string_value(type), "function"))
            return mtok_err(MTOK_EINPUT, "tools: entry %zu: \"type\" must be \"function\" (the built-in "
                            "python/simple_browser/cogview tools are not supported)", i);
        if (!json_is_object(fn))
            return mtok_err(MTOK_EINPUT, "tools: entry %zu: \"function\" must be an object, not %s", i,
                            fn ? json_kind(fn) : "missing");
    }
    json_t *name = json_object_get(fn, "name");
    if (!name) return mtok_err(MTOK_EINPUT, "tools: entry %zu has no \"name\"", i);
    const char *nm = json_string_value(name);
    int bad = !nm || !nm[0];
    for (const char *c = nm; c && *c && !bad; c++) bad = (unsigned char)*c < 0x20;
    if (bad) return mtok_err(MTOK_EINPUT, "tools: entry %zu: \"name\" must be a non-empty one-line string", i);
    json_t *desc = json_object_get(fn, "description"), *params = json_object_get(fn, "parameters");
    if (desc && !json_is_string(desc))
        return mtok_err(MTOK_EINPUT, "tools: entry %zu (%s): \"description\" must be a string, not %s", i, nm,
                        json_kind(desc));
    if (params && !json_is_object(params))
        return mtok_err(MTOK_EINPUT, "tools: entry %zu (%s): \"parameters\" must be an object (a JSON Schema), not %s",
                        i, nm, json_kind(params));
    *fn_out = fn;
    return 0;
}

/* The text of the tools system message (after "<|system|>\n"). */
static int tools_text(const char *tools_json, sbuf *out) {
    json_error_t je;
    json_t *arr = json_loads(tools_json, 0, &je);
    int rc = 0;
    if (!arr)
        return mtok_err(MTOK_EINPUT, "tools: not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    if (!json_is_array(arr)) {
        rc = mtok_err(MTOK_EINPUT, "tools: expected a JSON array of tool definitions, got %s", json_kind(arr));
        goto done;
    }
    if ((rc = sb_str(out, TOOLS_PREAMBLE))) goto done;
    size_t i;
    json_t *tool, *fn = NULL;
    json_array_foreach(arr, i, tool) {
        if ((rc = tool_function(tool, i, &fn))) goto done;
        char *dump = json_dumps(fn, JSON_INDENT(4) | JSON_PRESERVE_ORDER);
        if (!dump) {
            rc = mtok_err(MTOK_ERESOURCE, "tools: out of memory");
            goto done;
        }
        rc = sb_str(out, "\n\n## ");
        if (!rc) rc = sb_str(out, json_string_value(json_object_get(fn, "name")));
        if (!rc) rc = sb_str(out, "\n\n");
        if (!rc) rc = sb_str(out, dump);
        if (!rc) rc = sb_str(out, TOOL_SUFFIX);
        free(dump);
        if (rc) goto done;
    }
done:
    json_decref(arr);
    return rc;
}

static int special(const mtok_tokenizer *t, const char *s, mtok_ids *out) {
    int32_t id = mtok_token_special(t, s);
    if (id < 0) return mtok_err(MTOK_EINPUT, "tokenizer has no special token %s (not a GLM-4 tokenizer?)", s);
    return mtok_ids_push(out, id);
}

/* <|role|> + encode(metadata "\n") + encode(content) */
static int encode_turn(const mtok_tokenizer *t, const char *role, const char *meta, const char *content,
                       mtok_ids *out) {
    char tok[32];
    snprintf(tok, sizeof tok, "<|%s|>", role);
    int rc = special(t, tok, out);
    sbuf head = {0};
    if (!rc) rc = sb_str(&head, meta ? meta : "");
    if (!rc) rc = sb_str(&head, "\n");
    if (!rc) rc = mtok_tokenize(t, head.s, head.n, 0, out);
    if (!rc) rc = mtok_tokenize(t, content, strlen(content), 0, out);
    free(head.s);
    return rc;
}

int mtok_chat_encode(const mtok_tokenizer *t, const mtok_message *msgs, size_t n, int add_generation_prompt,
                     mtok_ids *out) {
    int rc = special(t, "[gMASK]", out);
    if (!rc) rc = special(t, "<sop>", out);
    for (size_t i = 0; i < n && !rc; i++) {
        const mtok_message *m = &msgs[i];
        if (!valid_role(m->role))
            return mtok_err(MTOK_EINPUT, "chat: message %zu has role '%s'; GLM-4 knows system, user, assistant, "
                            "observation", i, m->role ? m->role : "(null)");
        if (m->tools_json) {
            sbuf s = {0};
            rc = tools_text(m->tools_json, &s);
            if (!rc) rc = encode_turn(t, "system", NULL, s.s, out);
            free(s.s);
        }
        if (!rc && m->content && m->content[0]) rc = encode_turn(t, m->role, m->metadata, m->content, out);
    }
    if (!rc && add_generation_prompt) rc = special(t, "<|assistant|>", out);
    return rc;
}

int mtok_chat_render(const mtok_message *msgs, size_t n, int add_generation_prompt, char **out) {
    sbuf b = {0};
    int rc = sb_str(&b, "[gMASK]<sop>");
    for (size_t i = 0; i < n && !rc; i++) {
        const mtok_message *m = &msgs[i];
        if (!valid_role(m->role)) {
            rc = mtok_err(MTOK_EINPUT, "chat: message %zu has an unknown role", i);
            break;
        }
        if (m->tools_json) {
            rc = sb_str(&b, "<|system|>\n");
            if (!rc) rc = tools_text(m->tools_json, &b);
        }
        if (!rc && m->content && m->content[0]) {
            rc = sb_str(&b, "<|");
            if (!rc) rc = sb_str(&b, m->role);
            if (!rc) rc = sb_str(&b, "|>");
            if (!rc) rc = sb_str(&b, m->metadata ? m->metadata : "");
            if (!rc) rc = sb_str(&b, "\n");
            if (!rc) rc = sb_str(&b, m->content);
        }
    }
    if (!rc && add_generation_prompt) rc = sb_str(&b, "<|assistant|>");
    if (rc) {
        free(b.s);
        return rc;
    }
    *out = b.s;
    return 0;
}

static char *dup_trim(const char *s, size_t n) {
    while (n && (*s == ' ' || *s == '\t' || *s == '\r')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

/* "metadata\ncontent": a non-empty metadata line followed by a JSON object is a tool call
 * (THUDM's process_response rule); anything else is a plain answer whose text is content. */
int mtok_reply_parse(const char *text, mtok_reply *out) {
    memset(out, 0, sizeof *out);
    const char *nl = strchr(text, '\n');
    size_t meta_len = nl ? (size_t)(nl - text) : 0;
    const char *body = nl ? nl + 1 : text;
    char *meta = dup_trim(text, meta_len);
    out->content = strdup(body);
    if (!meta || !out->content) {
        free(meta);
        mtok_reply_free(out);
        return mtok_err(MTOK_ERESOURCE, "out of memory parsing a reply");
    }
    if (meta[0]) {
        json_error_t je;
        json_t *args = json_loads(body, JSON_DECODE_ANY, &je);
        if (args && json_is_object(args)) {
            out->is_tool_call = 1;
            out->name = meta;
            out->arguments = json_dumps(args, JSON_COMPACT | JSON_PRESERVE_ORDER);
            meta = NULL;
        }
        json_decref(args);
    }
    free(meta);
    return 0;
}

void mtok_reply_free(mtok_reply *r) {
    free(r->name);
    free(r->arguments);
    free(r->content);
    memset(r, 0, sizeof *r);
}
