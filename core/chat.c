/* chat.c — the GLM chat formats (docs/GLM.md §5) and tool-call parsing, for GLM-4 and ChatGLM3 alike.
 *
 * Conversation = [gMASK] + <sop> (ChatGLM3: "sop") + Σ messages + <|assistant|>. A message is
 * <|role|> + encode(metadata + "\n") + encode(content): the role tokens are inserted as ids and the
 * text parts are encoded separately, with special strings as plain text, exactly as the reference
 * tokenizers' build_single_message does (so a user cannot smuggle "<|assistant|>" into a turn).
 *
 * GLM-4 (the HF chat template, rendered with transformers' trim_blocks): a message with empty content
 * renders nothing; tool definitions make a system message of their own: the fixed GLM-4 sentence,
 * "# 可用工具", then per tool "\n## name\n\n" + the function object as json.dumps(indent=4) + a fixed
 * line; entries without "type" (or of a type the template does not know) render nothing, as in the
 * template; the built-in python/simple_browser/cogview tools render the checkpoint's own text, cut from
 * its chat template.
 * ChatGLM3 (THUDM's build_chat_input): every message renders, empty or not; tools ride in the system
 * message's content: content + "\n" + json.dumps(tools, indent=4).
 * The family is the tokenizer's: ChatGLM3's is SentencePiece and spells sop without brackets. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_json.h"
#include "mtok.h"

static const char TOOLS_PREAMBLE[] =
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具";
static const char TOOL_SUFFIX[] = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。";

static const char GLM3_TOOLS_SYSTEM[] =
    "Answer the following questions as best as you can. You have access to the following tools:";

typedef cj_buf sbuf;
#define sb_add cj_add
#define sb_str cj_str

typedef enum { FMT_GLM4 = 0, FMT_GLM3 = 1 } chat_fmt;

static chat_fmt family(const mtok_tokenizer *t) {
    return t && !strcmp(mtok_tokenizer_kind(t), "sentencepiece") ? FMT_GLM3 : FMT_GLM4;
}

static int valid_role(const char *r) {
    return r && (!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant") || !strcmp(r, "observation"));
}

/* The literal text a Jinja template renders for `tool['type'] == 'TYPE'` up to its next tag, with
 * transformers' trim_blocks (the newline right after a tag goes) and lstrip_blocks (blanks before a tag
 * at the start of a line go). 1 when the template has no such branch, < 0 when it holds an expression. */
static int builtin_text(const char *tmpl, const char *type, sbuf *out) {
    char pat[2][64];
    snprintf(pat[0], sizeof pat[0], "== '%s'", type);
    snprintf(pat[1], sizeof pat[1], "== \"%s\"", type);
    const char *at = NULL;
    for (int k = 0; k < 2 && !at; k++) at = tmpl ? strstr(tmpl, pat[k]) : NULL;
    const char *close = at ? strstr(at, "%}") : NULL;
    if (!close) return 1;
    const char *lit = close + 2;
    if (close[-1] == '-') while (*lit == ' ' || *lit == '\t' || *lit == '\n' || *lit == '\r') lit++;
    else if (*lit == '\n') lit++;
    const char *end = lit;
    while (*end && !(end[0] == '{' && (end[1] == '%' || end[1] == '{' || end[1] == '#'))) end++;
    if (end[0] && end[1] == '{')
        return mtok_err(MTOK_EINPUT, "tools: the chat template's %s description holds an expression mtok does not "
                        "evaluate", type);
    const char *e = end;
    if (*end && end[2] == '-') {
        while (e > lit && strchr(" \t\r\n", e[-1])) e--;
    } else if (*end && end[2] != '+') {
        const char *q = e;
        while (q > lit && (q[-1] == ' ' || q[-1] == '\t')) q--;
        if (q == lit || q[-1] == '\n') e = q;
    }
    return sb_add(out, lit, (size_t)(e - lit));
}

/* Checks a function object: a one-line "name", and "description"/"parameters" of the right types. */
static int check_function(const cj_node *fn, size_t i) {
    const cj_node *name = cj_get(fn, "name");
    if (!name) return mtok_err(MTOK_EINPUT, "tools: entry %zu has no \"name\"", i);
    int bad = name->type != 's' || !name->len;
    for (size_t k = 0; !bad && k < name->len; k++) bad = name->text[k] == '\n' || name->text[k] == '\r' || !name->text[k];
    if (bad) return mtok_err(MTOK_EINPUT, "tools: entry %zu: \"name\" must be a non-empty one-line string", i);
    const cj_node *desc = cj_get(fn, "description"), *params = cj_get(fn, "parameters");
    if (desc && desc->type != 's')
        return mtok_err(MTOK_EINPUT, "tools: entry %zu (%s): \"description\" must be a string, not %s", i, name->text,
                        cj_kind(desc));
    if (params && params->type != 'o')
        return mtok_err(MTOK_EINPUT, "tools: entry %zu (%s): \"parameters\" must be an object (a JSON Schema), not %s",
                        i, name->text, cj_kind(params));
    return 0;
}

/* One GLM-4 tool entry, rendered as the template renders it (nothing for an entry it skips). A bare
 * function object (no "type": ChatGLM3's form) is checked like a function, then skipped as the template
 * skips it. out NULL: check only. */
static int glm4_tool(const cj_node *tool, size_t i, const char *tmpl, sbuf *out) {
    if (tool->type != 'o') return mtok_err(MTOK_EINPUT, "tools: entry %zu is %s, not an object", i, cj_kind(tool));
    const cj_node *type = cj_get(tool, "type");
    if (!type) {
        int rc = check_function(tool, i);
        if (!rc && out)
            mtok_log(1, "tools: entry %zu has no \"type\": GLM-4's chat template renders nothing for it", i);
        return rc;
    }
    if (type->type != 's') return mtok_err(MTOK_EINPUT, "tools: entry %zu: \"type\" is %s, not a string", i, cj_kind(type));
    if (cj_is(type, "function")) {
        const cj_node *fn = cj_get(tool, "function");
        if (!fn || fn->type != 'o')
            return mtok_err(MTOK_EINPUT, "tools: entry %zu: \"function\" must be an object, not %s", i, cj_kind(fn));
        int rc = check_function(fn, i);
        if (rc || !out) return rc;
        const cj_node *name = cj_get(fn, "name");
        rc = sb_str(out, "\n## ");
        if (!rc) rc = sb_add(out, name->text, name->len);
        if (!rc) rc = sb_str(out, "\n\n");
        if (!rc) rc = cj_dump(fn, 4, out);
        return rc ? rc : sb_str(out, TOOL_SUFFIX);
    }
    static const char *const builtin[] = {"python", "simple_browser", "cogview"};
    for (size_t k = 0; k < 3; k++) {
        if (!cj_is(type, builtin[k])) continue;
        sbuf scratch = {0};
        int rc = tmpl ? builtin_text(tmpl, builtin[k], out ? out : &scratch) : 1;
        free(scratch.s);
        if (rc == 1)
            return mtok_err(MTOK_EINPUT, "tools: entry %zu: \"type\" must be \"function\" here: the built-in tool "
                            "\"%s\" is described by the checkpoint's chat template (tokenizer_config.json), and %s", i,
                            builtin[k], tmpl ? "its template does not describe it" : "this checkpoint ships none");
        return rc;
    }
    if (out) mtok_log(1, "tools: entry %zu has a type GLM-4's chat template does not know: it renders nothing", i);
    return 0;
}

int mtok_tools_check(const char *tools_json, const char *chat_template) {
    cj_node *arr = NULL;
    int rc = cj_parse(tools_json, strlen(tools_json), "tools", &arr);
    if (rc) return rc;
    if (arr->type != 'a')
        rc = mtok_err(MTOK_EINPUT, "tools: expected a JSON array of tool definitions, got %s", cj_kind(arr));
    size_t i = 0;
    for (cj_node *tool = arr->kids; tool && !rc; tool = tool->next, i++) rc = glm4_tool(tool, i, chat_template, NULL);
    cj_free(arr);
    return rc;
}

/* GLM-4: the text of the tools system message (after "<|system|>\n"). */
static int glm4_tools_text(const char *tools_json, const char *tmpl, sbuf *out) {
    cj_node *arr = NULL;
    int rc = cj_parse(tools_json, strlen(tools_json), "tools", &arr);
    if (rc) return rc;
    if (arr->type != 'a')
        rc = mtok_err(MTOK_EINPUT, "tools: expected a JSON array of tool definitions, got %s", cj_kind(arr));
    if (!rc) rc = sb_str(out, TOOLS_PREAMBLE);
    size_t i = 0;
    for (cj_node *tool = arr->kids; tool && !rc; tool = tool->next, i++) rc = glm4_tool(tool, i, tmpl, out);
    cj_free(arr);
    return rc;
}

/* ChatGLM3: "\n" + json.dumps(tools, indent=4), the list of plain function objects; OpenAI's wrapper
 * {"type": "function", "function": F} is unwrapped to F, as THUDM's API demo does. */
static int glm3_tools_text(const char *tools_json, sbuf *out) {
    cj_node *arr = NULL;
    int rc = cj_parse(tools_json, strlen(tools_json), "tools", &arr);
    if (rc) return rc;
    if (arr->type != 'a')
        rc = mtok_err(MTOK_EINPUT, "tools: expected a JSON array of tool definitions, got %s", cj_kind(arr));
    size_t i = 0;
    for (cj_node **pt = &arr->kids; *pt && !rc; pt = &(*pt)->next, i++) {
        cj_node *tool = *pt, *fn = cj_get(tool, "function");
        if (tool->type != 'o') {
            rc = mtok_err(MTOK_EINPUT, "tools: entry %zu is %s, not an object", i, cj_kind(tool));
        } else if (cj_is(cj_get(tool, "type"), "function") && fn && fn->type == 'o') {
            /* splice F in place of its wrapper */
            cj_node *wrapper = tool;
            for (cj_node **pk = &wrapper->kids; *pk; pk = &(*pk)->next)
                if (*pk == fn) {
                    *pk = fn->next;
                    break;
                }
            fn->next = wrapper->next;
            cj_free(fn->key);
            fn->key = NULL;
            *pt = fn;
            wrapper->next = NULL;
            cj_free(wrapper);
        }
    }
    if (!rc) rc = sb_str(out, "\n");
    if (!rc) rc = cj_dump(arr, 4, out);
    cj_free(arr);
    return rc;
}

static int special(const mtok_tokenizer *t, const char *s, mtok_ids *out) {
    int32_t id = mtok_token_special(t, s);
    if (id < 0) return mtok_err(MTOK_EINPUT, "tokenizer has no special token %s (not a GLM tokenizer?)", s);
    return mtok_ids_push(out, id);
}

/* <|role|> + encode(metadata "\n") + [image triple] + encode(content) */
static int encode_turn(const mtok_tokenizer *t, const char *role, const char *meta, const int32_t *image,
                       const char *content, size_t content_len, mtok_ids *out) {
    char tok[32];
    snprintf(tok, sizeof tok, "<|%s|>", role);
    int rc = special(t, tok, out);
    sbuf head = {0};
    if (!rc) rc = sb_str(&head, meta ? meta : "");
    if (!rc) rc = sb_str(&head, "\n");
    if (!rc) rc = mtok_tokenize(t, head.s, head.n, 0, out);
    if (!rc && image) rc = mtok_ids_append(out, image, 3);
    if (!rc) rc = mtok_tokenize(t, content, content_len, 0, out);
    free(head.s);
    return rc;
}

static int bad_role(size_t i, const char *role) {
    return mtok_err(MTOK_EINPUT, "chat: message %zu has role '%s'; GLM knows system, user, assistant, observation", i,
                    role ? role : "(null)");
}

/* The image goes with a user message, and not with ChatGLM3 (no vision there). */
static int check_image(const mtok_message *msgs, size_t n, chat_fmt fmt, long image_msg) {
    if (image_msg < 0) return 0;
    if ((size_t)image_msg >= n)
        return mtok_err(MTOK_EINPUT, "chat: the image is on message %ld of %zu", image_msg, n);
    if (fmt == FMT_GLM3)
        return mtok_err(MTOK_EINPUT, "chat: message %ld carries an image, but ChatGLM3 has no vision (GLM-4V takes "
                        "images)", image_msg);
    const char *role = msgs[image_msg].role;
    if (!role || strcmp(role, "user"))
        return mtok_err(MTOK_EINPUT, "chat: message %ld carries an image but its role is '%s': images go with a user "
                        "message", image_msg, role ? role : "(null)");
    return 0;
}

/* The placeholder's ids: the caller's (the checkpoint's config), else the tokenizer's, else GLM-4's. */
static void image_triple(const mtok_tokenizer *t, const int32_t *given, int32_t out[3]) {
    static const char *const names[3] = {"<|begin_of_image|>", "<|endoftext|>", "<|end_of_image|>"};
    static const int32_t glm4[3] = {151339, 151329, 151340};
    for (int k = 0; k < 3; k++) {
        const int32_t id = given ? given[k] : mtok_token_special(t, names[k]);
        out[k] = id >= 0 ? id : glm4[k];
    }
}

int mtok_chat_encode(const mtok_tokenizer *t, const mtok_message *msgs, size_t n, int add_generation_prompt,
                     mtok_ids *out) {
    return mtok_chat_encode_ex(t, msgs, n, add_generation_prompt, -1, NULL, out);
}

int mtok_chat_encode_ex(const mtok_tokenizer *t, const mtok_message *msgs, size_t n, int add_generation_prompt,
                        long image_msg, const int32_t image_ids[3], mtok_ids *out) {
    if (!t || !out || (n && !msgs)) return mtok_err(MTOK_EUSAGE, "mtok_chat_encode: NULL argument");
    chat_fmt fmt = family(t);
    int rc0 = check_image(msgs, n, fmt, image_msg);
    if (rc0) return rc0;
    int32_t image[3];
    if (image_msg >= 0) image_triple(t, image_ids, image);
    size_t n0 = out->n;
    int rc = special(t, "[gMASK]", out);
    if (!rc) rc = special(t, "<sop>", out); /* ChatGLM3's "sop" answers to this name too */
    for (size_t i = 0; i < n && !rc; i++) {
        const mtok_message *m = &msgs[i];
        const char *content = m->content ? m->content : "";
        if (!valid_role(m->role)) {
            rc = bad_role(i, m->role);
            break;
        }
        if (fmt == FMT_GLM3) {
            sbuf c = {0};
            /* tools without a system text of the caller's: the sentence THUDM's ChatGLM3 API demo uses */
            rc = sb_str(&c, m->tools_json && !m->content ? GLM3_TOOLS_SYSTEM : content);
            if (!rc && m->tools_json) rc = glm3_tools_text(m->tools_json, &c);
            if (!rc) rc = encode_turn(t, m->role, m->metadata, NULL, c.s, c.n, out);
            free(c.s);
            continue;
        }
        if (m->tools_json) {
            sbuf s = {0};
            rc = glm4_tools_text(m->tools_json, mtok_tokenizer_chat_template(t), &s);
            if (!rc) rc = encode_turn(t, "system", NULL, NULL, s.s, s.n, out);
            free(s.s);
        }
        /* a message with an image and no text still renders: the image is content, and dropping the
         * turn would drop the image with it */
        const int has_image = image_msg >= 0 && (size_t)image_msg == i;
        if (!rc && (content[0] || has_image))
            rc = encode_turn(t, m->role, m->metadata, has_image ? image : NULL, content, strlen(content), out);
    }
    if (!rc && add_generation_prompt) rc = special(t, "<|assistant|>", out);
    if (rc) out->n = n0;
    return rc;
}

int mtok_chat_render(const mtok_message *msgs, size_t n, int add_generation_prompt, char **out) {
    sbuf b = {0};
    int rc = sb_str(&b, "[gMASK]<sop>");
    for (size_t i = 0; i < n && !rc; i++) {
        const mtok_message *m = &msgs[i];
        if (!valid_role(m->role)) {
            rc = bad_role(i, m->role);
            break;
        }
        if (m->tools_json) {
            rc = sb_str(&b, "<|system|>\n");
            if (!rc) rc = glm4_tools_text(m->tools_json, NULL, &b);
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

/* ChatGLM3's call body: a fenced block (THUDM drops its first and last line) holding tool_call(...).
 * 0 and *args (malloc'ed JSON of the keyword arguments) when it is one, 1 when not, < 0 on no memory. */
static int glm3_call(const char *body, char **args) {
    if (strncmp(body, "```", 3)) return 1;
    const char *first_nl = strchr(body, '\n');
    if (!first_nl) return 1;
    size_t n = strlen(body);
    while (n && strchr(" \t\r\n", body[n - 1])) n--; /* the model may end the fence with a newline */
    const char *last_nl = first_nl;
    for (const char *q = first_nl; q && q < body + n; q = memchr(q + 1, '\n', (size_t)(body + n - q - 1)))
        last_nl = q;
    if (last_nl == first_nl || strncmp(last_nl + 1, "```", 3) || last_nl + 4 != body + n) return 1;
    cj_buf out = {0};
    int rc = cj_tool_call(first_nl + 1, (size_t)(last_nl - first_nl - 1), &out);
    if (rc) {
        free(out.s);
        return rc;
    }
    *args = out.s;
    return 0;
}

/* "metadata\ncontent": a non-empty metadata line followed by a JSON object (GLM-4), or by ChatGLM3's
 * fenced tool_call(...) block, is a tool call (THUDM's process_response rules; the ChatGLM3 arguments are
 * read as literals, never run); anything else is a plain answer whose text is content. */
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
        char *a = NULL;
        int r = out->is_tool_call ? 1 : glm3_call(body, &a);
        if (r < 0) {
            free(meta);
            mtok_reply_free(out);
            return r;
        }
        if (r == 0) {
            out->is_tool_call = 1;
            out->name = meta;
            out->arguments = a;
            meta = NULL;
        }
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
