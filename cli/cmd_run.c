/* cmd_run.c — mtok generate, mtok chat. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static int stream_stdout(int32_t id, const char *text, size_t len, void *user) {
    (void)id, (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static mtok_sampler_params sampler_params(const cli_common *o) {
    return (mtok_sampler_params){.temperature = o->temperature, .top_k = o->top_k, .top_p = o->top_p,
                                 .repetition_penalty = o->rep_pen, .seed = o->seed};
}

/* "prompt N tokens" counts the tokens computed (tests/test_chat_cli.py and test_kv_file.py read it);
 * the cached prefix follows */
static void print_stats(const mtok_result *r) {
    const mtok_usage *u = &r->usage;
    mtok_log(1, "prompt %lld tokens in %.2f s (%.1f tok/s), %lld more cached; generated %lld tokens in %.2f s "
             "(%.2f tok/s); finish: %s", (long long)u->computed_tokens, u->prefill_s,
             u->prefill_s > 0 ? (double)u->computed_tokens / u->prefill_s : 0, (long long)u->cached_tokens,
             (long long)u->generated_tokens, u->decode_s,
             u->decode_s > 0 ? (double)u->generated_tokens / u->decode_s : 0, mtok_finish_name(r->finish));
}

/* Reads a --tools file and checks it with the chat template's own rules before the model loads, so
 * that every problem with it is reported against the file (the template's messages cannot know
 * where the JSON came from). */
static int read_tools(const char *path, char **out) {
    char *text = NULL, *rendered = NULL;
    size_t len;
    int rc = cli_read_file(path, &text, &len);
    if (rc) return rc;
    if (strlen(text) != len) {
        rc = mtok_err(MTOK_EINPUT, "%s: contains a NUL byte at offset %zu (expected a JSON array of tool "
                      "definitions)", path, strlen(text));
    } else {
        const mtok_message m = {"system", NULL, NULL, text};
        rc = mtok_chat_render(&m, 1, 0, &rendered);
        if (rc) {
            char msg[1024];
            const char *e = mtok_errmsg();
            snprintf(msg, sizeof msg, "%s", strncmp(e, "tools: ", 7) ? e : e + 7);
            rc = mtok_err(rc, "%s: %s", path, msg);
        }
    }
    free(rendered);
    if (rc) {
        free(text);
        return rc;
    }
    *out = text;
    return 0;
}

/* ---- mtok generate -m DIR (-p TEXT | -f FILE) [--chat] [--system S] [--tools F] [-n N] ---- */
int cmd_generate(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    const char *prompt = NULL, *file = NULL, *system = NULL, *tools_file = NULL, *load_kv = NULL;
    int chat = 0, no_prefix = 0;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "--no-prefix")) no_prefix = 1;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!(prompt = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!(file = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--system")) {
            if (!(system = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--tools")) {
            if (!(tools_file = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--load-kv")) {
            if (!(load_kv = cli_value(argc, argv, &i))) return 1;
        } else
            return cli_usage_error("generate: unknown option '%s'", a);
    }
    if (!o.model || (!prompt) == (!file)) return cli_usage_error("generate needs -m DIR and one of -p TEXT, -f FILE");
    if ((system || tools_file) && !chat) return cli_usage_error("--system and --tools need --chat");

    cli_loaded L;
    mtok_ids ids = {0}, full = {0};
    char *buf = NULL, *tools = NULL;
    size_t len = 0;
    memset(&L, 0, sizeof L);
    int rc = tools_file ? read_tools(tools_file, &tools) : 0;
    if (!rc) rc = cli_load(&o, 1, &L);
    if (!rc && file) rc = cli_read_file(file, &buf, &len);
    const char *text = file ? buf : prompt;
    if (!rc && chat) {
        mtok_message msgs[3];
        size_t n = 0;
        if (system || tools) msgs[n++] = (mtok_message){"system", NULL, system, tools};
        msgs[n++] = (mtok_message){"user", NULL, text, NULL};
        rc = mtok_chat_encode(L.tok, msgs, n, 1, &ids);
    } else if (!rc) {
        /* base-model convention (the reference tokenizer's encode): [gMASK]<sop> + text */
        int32_t g = mtok_token_special(L.tok, "[gMASK]"), s = mtok_token_special(L.tok, "<sop>");
        if (!no_prefix && g >= 0 && s >= 0) rc = mtok_ids_push(&ids, g), rc = rc ? rc : mtok_ids_push(&ids, s);
        if (!rc) rc = mtok_tokenize(L.tok, text, file ? len : strlen(text), 0, &ids);
    }
    size_t skip = 0; /* prompt tokens already in the session (from --load-kv) */
    if (!rc && load_kv) rc = cli_load_kv_prompt(L.sess, L.tok, load_kv, &ids, &skip);
    /* what the session is to hold: the loaded tokens (a prefix of the prompt, or a document the
     * prompt continues) and the rest of the prompt; the feed then computes only that rest */
    if (!rc && mtok_session_pos(L.sess) > 0)
        rc = mtok_ids_append(&full, mtok_session_tokens(L.sess), (size_t)mtok_session_pos(L.sess));
    if (!rc) rc = mtok_ids_append(&full, ids.v + skip, ids.n - skip);
    if (!rc) {
        mtok_request req = {.max_tokens = o.n_gen, .ignore_eos = o.ignore_eos, .sampler = sampler_params(&o),
                            .on_token = stream_stdout};
        mtok_result res;
        rc = mtok_generate(L.sess, L.tok, full.v, (int64_t)full.n, &req, &res);
        if (!rc) cli_log_kv_stats(L.sess);
        if (!rc) {
            putchar('\n');
            print_stats(&res);
            char *reply = mtok_detokenize(L.tok, res.tokens.v, res.tokens.n, NULL);
            mtok_reply r;
            if (chat && reply && mtok_reply_parse(reply, &r) == 0) {
                if (r.is_tool_call) printf("tool call: %s %s\n", r.name, r.arguments);
                mtok_reply_free(&r);
            }
            free(reply);
        }
        mtok_result_free(&res);
    }
    mtok_ids_free(&ids);
    mtok_ids_free(&full);
    free(buf);
    free(tools);
    cli_unload(&L);
    return rc ? cli_fail(rc) : 0;
}

/* ---- mtok chat: the conversation is re-encoded every turn and only the tokens after the longest
 * prefix already in the KV cache are prefilled, so earlier turns cost nothing again. ---- */
typedef struct {
    mtok_message *m;
    size_t n, cap;
} msg_list;

static int msg_add(msg_list *l, const char *role, const char *meta, const char *content, const char *tools) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        mtok_message *m = realloc(l->m, cap * sizeof *m);
        if (!m) return mtok_err(MTOK_ERESOURCE, "out of memory in chat history");
        l->m = m, l->cap = cap;
    }
    l->m[l->n++] = (mtok_message){role, meta ? strdup(meta) : NULL, content ? strdup(content) : NULL,
                                  tools ? strdup(tools) : NULL};
    return 0;
}
static void msg_free(msg_list *l) {
    for (size_t i = 0; i < l->n; i++)
        free((char *)l->m[i].metadata), free((char *)l->m[i].content), free((char *)l->m[i].tools_json);
    free(l->m);
}

static char *read_line(const char *prompt) {
    if (isatty(0)) fputs(prompt, stdout), fflush(stdout);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    return line;
}

/* One assistant turn: encode the whole conversation and generate; the feed reuses the longest
 * prefix the session holds (the earlier turns), so only the new messages are computed. */
static int chat_turn(cli_loaded *L, mtok_sampler *smp, const cli_common *o, msg_list *h, int *tool_call) {
    mtok_ids ids = {0};
    mtok_result res = {0};
    int rc = mtok_chat_encode(L->tok, h->m, h->n, 1, &ids);
    /* one sampler for the whole conversation: its random stream continues from turn to turn */
    mtok_request req = {.max_tokens = o->n_gen, .ignore_eos = o->ignore_eos, .sampler_state = smp,
                        .on_token = stream_stdout};
    if (!rc) rc = mtok_generate(L->sess, L->tok, ids.v, (int64_t)ids.n, &req, &res);
    if (!rc) {
        putchar('\n');
        print_stats(&res);
    }
    char *reply = rc ? NULL : mtok_detokenize(L->tok, res.tokens.v, res.tokens.n, NULL);
    mtok_reply r = {0};
    if (reply && !(rc = mtok_reply_parse(reply, &r))) {
        *tool_call = r.is_tool_call;
        if (r.is_tool_call) {
            printf("[tool call] %s %s\n", r.name, r.arguments);
            rc = msg_add(h, "assistant", r.name, r.arguments, NULL);
        } else {
            rc = msg_add(h, "assistant", NULL, r.content, NULL);
        }
        mtok_reply_free(&r);
    }
    free(reply);
    mtok_ids_free(&ids);
    mtok_result_free(&res);
    return rc;
}

int cmd_chat(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    o.n_gen = 512;
    const char *system = NULL, *tools_file = NULL;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(argv[i], "--system")) {
            if (!(system = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--tools")) {
            if (!(tools_file = cli_value(argc, argv, &i))) return 1;
        } else
            return cli_usage_error("chat: unknown option '%s'", argv[i]);
    }
    if (!o.model) return cli_usage_error("chat needs -m DIR");
    cli_loaded L;
    mtok_sampler *smp = NULL;
    msg_list h = {0};
    char *tools = NULL;
    memset(&L, 0, sizeof L);
    int rc = tools_file ? read_tools(tools_file, &tools) : 0;
    if (!rc) rc = cli_load(&o, 1, &L);
    mtok_sampler_params sp = sampler_params(&o);
    if (!rc) rc = mtok_sampler_create(&sp, mtok_model_config(L.model)->vocab, &smp);
    if (!rc && (system || tools)) rc = msg_add(&h, "system", NULL, system, tools);
    if (!rc && isatty(0)) fputs("mtok chat: type a message; /reset clears the history, /exit or EOF quits\n", stdout);
    while (!rc) {
        char *line = read_line("> ");
        if (!line || !strcmp(line, "/exit")) {
            free(line);
            break;
        }
        if (!strcmp(line, "/reset")) {
            size_t keep = (h.n && !strcmp(h.m[0].role, "system")) ? 1 : 0;
            for (size_t i = keep; i < h.n; i++)
                free((char *)h.m[i].metadata), free((char *)h.m[i].content), free((char *)h.m[i].tools_json);
            h.n = keep;
            free(line);
            continue;
        }
        rc = msg_add(&h, "user", NULL, line, NULL);
        free(line);
        int tool_call = 0;
        if (!rc) rc = chat_turn(&L, smp, &o, &h, &tool_call);
        /* a tool call is answered with an observation, then the model continues */
        while (!rc && tool_call) {
            char *obs = read_line("observation> ");
            if (!obs) break;
            rc = msg_add(&h, "observation", NULL, obs, NULL);
            free(obs);
            if (!rc) rc = chat_turn(&L, smp, &o, &h, &tool_call);
        }
    }
    msg_free(&h);
    free(tools);
    mtok_sampler_free(smp);
    cli_unload(&L);
    return rc ? cli_fail(rc) : 0;
}
