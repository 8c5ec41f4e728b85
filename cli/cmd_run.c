/* cmd_run.c — mtok generate, mtok chat (docs: README.md, "Chat about a long document"). */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "../core/image.h"
#include "../core/vision.h"

/* What a request's callbacks share: the prefill's progress line (stderr) ends before the first token
 * of the answer is written (stdout), so the two never share a terminal line. */
typedef struct {
    mtok_progress prog;
} run_ui;

static int stream_stdout(int32_t id, const char *text, size_t len, void *user) {
    (void)id;
    mtok_progress_end(&((run_ui *)user)->prog);
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int on_prefill(int64_t done, int64_t total, void *user) {
    return mtok_progress_prefill_cb(done, total, &((run_ui *)user)->prog);
}

static mtok_sampler_params sampler_params(const cli_common *o) {
    return (mtok_sampler_params){.temperature = o->temperature, .top_k = o->top_k, .top_p = o->top_p,
                                 .repetition_penalty = o->rep_pen, .seed = o->seed};
}

/* "prompt N tokens" counts the tokens computed (tests/test_chat_cli.py and test_kv_file.py read it);
 * the cached prefix follows, then the prompt's length: with an image the rows the model holds, the
 * image's rows in place of its placeholder (as the server's prompt_tokens), and more than computed +
 * cached only when a cancel cut the prefill short */
static void print_stats(const mtok_result *r) {
    const mtok_usage *u = &r->usage;
    mtok_log(1, "prompt %lld tokens in %.2f s (%.1f tok/s), %lld more cached, %lld in all; generated %lld tokens "
             "in %.2f s (%.2f tok/s); finish: %s", (long long)u->computed_tokens, u->prefill_s,
             u->prefill_s > 0 ? (double)u->computed_tokens / u->prefill_s : 0, (long long)u->cached_tokens,
             (long long)u->prompt_tokens, (long long)u->generated_tokens, u->decode_s,
             u->decode_s > 0 ? (double)u->generated_tokens / u->decode_s : 0, mtok_finish_name(r->finish));
}

/* Reads a --tools file and checks it with the chat template's own rules before the model loads, so
 * that every problem with it is reported against the file (the template's messages cannot know
 * where the JSON came from). */
static int read_tools(const char *path, const char *model_dir, char **out) {
    char *text = NULL;
    size_t len;
    int rc = cli_read_file(path, &text, &len);
    if (rc) return rc;
    if (strlen(text) != len) {
        rc = mtok_err(MTOK_EINPUT, "%s: contains a NUL byte at offset %zu (expected a JSON array of tool "
                      "definitions)", path, strlen(text));
    } else {
        /* the built-in tools are described by the checkpoint's chat template, when it ships one */
        char cfg[4096];
        snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", model_dir ? model_dir : ".");
        json_t *root = model_dir ? json_load_file(cfg, 0, NULL) : NULL;
        json_t *tmpl = json_object_get(root, "chat_template");
        rc = mtok_tools_check(text, json_string_value(tmpl));
        json_decref(root);
        if (rc) {
            char msg[1024];
            const char *e = mtok_errmsg();
            snprintf(msg, sizeof msg, "%s", strncmp(e, "tools: ", 7) ? e : e + 7);
            rc = mtok_err(rc, "%s: %s", path, msg);
        }
    }
    if (rc) {
        free(text);
        return rc;
    }
    *out = text;
    return 0;
}

/* The end of an assistant turn: the next role token. GLM-4 configs list them as eos ids; ChatGLM3's config
 * has only </s> (2), and THUDM's chat() adds <|user|> and <|observation|> itself (--ignore-eos: none). */
static int chat_stops(const mtok_tokenizer *t, int32_t stops[2]) {
    int n = 0;
    const char *ends[] = {"<|user|>", "<|observation|>"};
    for (int k = 0; k < 2; k++) {
        int32_t id = mtok_token_special(t, ends[k]);
        if (id >= 0) stops[n++] = id;
    }
    return n;
}

/* --image / /image: the checkpoint must be GLM-4V (config.json's vision_config gives the placeholder's
 * ids) and the file a PNG or JPEG that decodes, so a bad one is reported when it is given, not after
 * the conversation was prefilled. */
static int image_check(const char *model_dir, const char *path, int32_t ids[3]) {
    int rc = mtok_vision_config_present(model_dir);
    if (rc == 0)
        rc = mtok_err(MTOK_EINPUT, "%s: images need a GLM-4V checkpoint, and its config.json has no vision_config",
                      model_dir);
    mtok_vision_config vc;
    if (rc == 1) rc = mtok_vision_config_read(model_dir, &vc);
    mtok_image im = {0};
    if (!rc) rc = mtok_image_load(path, &im);
    mtok_image_free(&im);
    if (!rc) ids[0] = (int32_t)vc.boi_id, ids[1] = (int32_t)vc.pad_id, ids[2] = (int32_t)vc.eoi_id;
    return rc;
}

/* ---- mtok generate -m DIR (-p TEXT | -f FILE) [--chat [--image F]] [--system S] [--tools F] [-n N] ---- */
int cmd_generate(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    const char *prompt = NULL, *file = NULL, *system = NULL, *tools_file = NULL, *load_kv = NULL, *image = NULL;
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
        } else if (!strcmp(a, "--image")) {
            if (!(image = cli_value(argc, argv, &i))) return 1;
        } else
            return cli_usage_error("generate: unknown option '%s'", a);
    }
    if (!o.model || (!prompt) == (!file)) return cli_usage_error("generate needs -m DIR and one of -p TEXT, -f FILE");
    if ((system || tools_file) && !chat) return cli_usage_error("--system and --tools need --chat");
    if (image && !chat) return cli_usage_error("generate: --image needs --chat (the chat template places the image)");
    if (image && load_kv)
        return cli_usage_error("generate: --image and --load-kv do not go together (a saved prefix holds no image)");

    cli_loaded L;
    mtok_ids ids = {0}, full = {0};
    char *buf = NULL, *tools = NULL;
    size_t len = 0;
    memset(&L, 0, sizeof L);
    int32_t image_ids[3];
    int rc = tools_file ? read_tools(tools_file, o.model, &tools) : 0;
    if (!rc && image) rc = image_check(o.model, image, image_ids);
    if (!rc) rc = cli_load(&o, 1, &L);
    if (!rc && file) rc = cli_read_file(file, &buf, &len);
    const char *text = file ? buf : prompt;
    if (!rc && chat) {
        mtok_message msgs[3];
        size_t n = 0;
        if (system || tools) msgs[n++] = (mtok_message){"system", NULL, system, tools};
        msgs[n++] = (mtok_message){"user", NULL, text, NULL};
        rc = mtok_chat_encode_ex(L.tok, msgs, n, 1, image ? (long)n - 1 : -1, image ? image_ids : NULL, &ids);
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
        run_ui ui;
        mtok_progress_begin(&ui.prog, "prefill", "tokens", 0, cli_progress_interval(&o));
        mtok_request req = {.max_tokens = o.n_gen, .ignore_eos = o.ignore_eos, .sampler = sampler_params(&o),
                            .on_token = stream_stdout, .on_prefill = on_prefill, .user = &ui};
        int32_t stops[2];
        if (chat && !o.ignore_eos) req.n_stop_ids = chat_stops(L.tok, stops), req.stop_ids = stops;
        mtok_result res;
        /* with an image the prompt is expanded around it and run with shared positions (core/vision_prompt.c) */
        const mtok_vision_prefill_params vp = {.model_dir = o.model, .image_path = image, .ids = full.v,
                                               .n = (int64_t)full.n,
                                               .vision = {.threads = o.threads,
                                                          .progress_s = cli_progress_interval(&o),
                                                          .device = o.vision_device}};
        if (image) rc = mtok_vision_generate(L.sess, L.tok, &vp, &req, &res);
        else rc = mtok_generate(L.sess, L.tok, full.v, (int64_t)full.n, &req, &res);
        mtok_progress_end(&ui.prog);
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
 * prefix already in the KV cache are prefilled, so earlier turns cost nothing again.
 *
 * A document (-f DOC, --load-kv F, /load FILE) is one user message of its own at the start of the
 * conversation: [gMASK]<sop><|user|>\n DOC, then each question as the next <|user|> turn. That is
 * exactly what `prefill --chat` saves and what `qa --chat` appends to, so a KV file from prefill
 * --chat continues here token for token (the template encodes each message apart, core/chat.c).
 *
 * Ctrl-C: SIGINT stays blocked except while a request runs and while waiting for input (ppoll
 * unblocks it atomically), so the handler never races the check of what it interrupted. During a
 * request it sets the request's cancel flag (the answer so far is kept); at the prompt the first
 * Ctrl-C prints a hint and a second one ends the chat. ---- */
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
static void msg_truncate(msg_list *l, size_t keep) {
    for (size_t i = keep; i < l->n; i++)
        free((char *)l->m[i].metadata), free((char *)l->m[i].content), free((char *)l->m[i].tools_json);
    if (keep < l->n) l->n = keep;
}
static void msg_free(msg_list *l) {
    msg_truncate(l, 0);
    free(l->m);
}

static volatile int g_cancel;          /* the running request's cancel flag */
static volatile sig_atomic_t g_busy;   /* a request runs: Ctrl-C cancels it */
static volatile sig_atomic_t g_sigint; /* Ctrl-C while waiting for input */

static void on_sigint(int sig) {
    (void)sig;
    if (g_busy) __atomic_store_n(&g_cancel, 1, __ATOMIC_RELAXED);
    else g_sigint = 1;
}

typedef struct {
    cli_loaded *L;
    const cli_common *o;
    mtok_sampler *smp;
    msg_list h;
    mtok_ids doc;      /* a document loaded from a KV file (from [gMASK]<sop>): the conversation follows it */
    size_t keep;       /* messages /reset keeps: the system message and a document */
    char *image;       /* --image / /image FILE: the conversation's one image (NULL: none) */
    long image_msg;    /* the user message carrying it, or -1 while it waits for the next one */
    int32_t image_ids[3]; /* its placeholder ids, from the checkpoint's vision_config */
    mtok_vision_cache *vcache; /* the tower kept between the conversation's images (/reset, /image) */
    sigset_t run_mask; /* the signal mask while a request runs or input is awaited: SIGINT unblocked */
    sigset_t idle_mask;/* otherwise: SIGINT blocked */
    char *in;          /* stdin bytes read but not yet returned as lines */
    size_t in_n, in_cap;
    int in_eof;
} chat_state;

enum { LINE_OK, LINE_EOF, LINE_INTR };

/* One line of stdin without its newline (malloc'ed into *out), LINE_EOF, LINE_INTR after a Ctrl-C, or
 * a negative error. A reader of its own rather than stdio: it waits in ppoll with SIGINT unblocked. */
static int read_line(chat_state *c, const char *prompt, char **out) {
    if (isatty(0)) fputs(prompt, stdout), fflush(stdout);
    for (;;) {
        char *nl = c->in_n ? memchr(c->in, '\n', c->in_n) : NULL;
        if (nl || (c->in_eof && c->in_n)) {
            size_t len = nl ? (size_t)(nl - c->in) : c->in_n, used = nl ? len + 1 : len;
            char *line = malloc(len + 1);
            if (!line) return mtok_err(MTOK_ERESOURCE, "out of memory reading a line");
            memcpy(line, c->in, len);
            while (len > 0 && line[len - 1] == '\r') len--;
            line[len] = 0;
            memmove(c->in, c->in + used, c->in_n - used);
            c->in_n -= used;
            *out = line;
            return LINE_OK;
        }
        if (c->in_eof) return LINE_EOF;
        if (g_sigint) {
            g_sigint = 0;
            return LINE_INTR;
        }
        struct pollfd pf = {.fd = 0, .events = POLLIN};
        if (ppoll(&pf, 1, NULL, &c->run_mask) < 0) {
            if (errno == EINTR) continue; /* the handler set g_sigint (or a stale cancel): checked above */
            return mtok_err(MTOK_EINPUT, "stdin: %s", strerror(errno));
        }
        if (c->in_cap - c->in_n < 4096) {
            char *b = realloc(c->in, c->in_cap + 65536);
            if (!b) return mtok_err(MTOK_ERESOURCE, "out of memory reading a line");
            c->in = b, c->in_cap += 65536;
        }
        const ssize_t k = read(0, c->in + c->in_n, c->in_cap - c->in_n);
        if (k > 0) c->in_n += (size_t)k;
        else if (k == 0) c->in_eof = 1;
        else if (errno != EINTR && errno != EAGAIN) return mtok_err(MTOK_EINPUT, "stdin: %s", strerror(errno));
    }
}

/* A request runs between these: Ctrl-C cancels it instead of waiting for the prompt. */
static void request_begin(chat_state *c) {
    __atomic_store_n(&g_cancel, 0, __ATOMIC_RELAXED);
    g_busy = 1;
    sigprocmask(SIG_SETMASK, &c->run_mask, NULL);
}
static void request_end(chat_state *c) {
    sigprocmask(SIG_SETMASK, &c->idle_mask, NULL);
    g_busy = 0;
}

/* The ids of the whole conversation: a document loaded from a KV file, then the messages (their
 * [gMASK]<sop> is the document's own first two tokens). */
static int chat_ids(const chat_state *c, int gen, mtok_ids *ids) {
    mtok_ids conv = {0};
    int rc = mtok_chat_encode_ex(c->L->tok, c->h.m, c->h.n, gen, c->image ? c->image_msg : -1, c->image_ids, &conv);
    if (!rc && c->doc.n) {
        rc = mtok_ids_append(ids, c->doc.v, c->doc.n);
        if (!rc && conv.n > 2) rc = mtok_ids_append(ids, conv.v + 2, conv.n - 2);
    } else if (!rc) {
        rc = mtok_ids_append(ids, conv.v, conv.n);
    }
    mtok_ids_free(&conv);
    return rc;
}

/* One assistant turn: encode the whole conversation and generate; the feed reuses the longest
 * prefix the session holds (the earlier turns), so only the new messages are computed. */
static int chat_turn(chat_state *c, int *tool_call) {
    mtok_ids ids = {0};
    mtok_result res = {0};
    *tool_call = 0;
    int rc = chat_ids(c, 1, &ids);
    run_ui ui;
    mtok_progress_begin(&ui.prog, "prefill", "tokens", 0, cli_progress_interval(c->o));
    /* one sampler for the whole conversation: its random stream continues from turn to turn */
    mtok_request req = {.max_tokens = c->o->n_gen, .ignore_eos = c->o->ignore_eos, .sampler_state = c->smp,
                        .cancel = &g_cancel, .on_token = stream_stdout, .on_prefill = on_prefill, .user = &ui};
    int32_t stops[2];
    if (!c->o->ignore_eos) req.n_stop_ids = chat_stops(c->L->tok, stops), req.stop_ids = stops;
    /* a conversation with an image keeps its rows across turns (core/vision_prompt.c): mtok_generate's
     * prefix reuse would stop before them and recompute the placeholders as text */
    const mtok_vision_prefill_params vp = {.model_dir = c->o->model, .image_path = c->image, .ids = ids.v,
                                           .n = (int64_t)ids.n, .cache = c->vcache,
                                           .vision = {.threads = c->o->threads,
                                                      .progress_s = cli_progress_interval(c->o),
                                                      .device = c->o->vision_device}};
    if (!rc) {
        request_begin(c);
        if (c->image && c->image_msg >= 0) rc = mtok_vision_generate(c->L->sess, c->L->tok, &vp, &req, &res);
        else rc = mtok_generate(c->L->sess, c->L->tok, ids.v, (int64_t)ids.n, &req, &res);
        request_end(c);
    }
    mtok_progress_end(&ui.prog);
    const int cancelled = !rc && res.finish == MTOK_FINISH_CANCELLED;
    if (!rc) {
        putchar('\n');
        if (cancelled) fputs("[interrupted]\n", stderr);
        print_stats(&res);
    }
    if (cancelled && res.tokens.n == 0) {
        /* stopped before the answer began: forget the question, or two user turns would follow */
        if (c->h.n > c->keep) msg_truncate(&c->h, c->h.n - 1);
        if (c->image_msg >= (long)c->h.n) c->image_msg = -1; /* the image waits for the next question */
    } else if (!rc) {
        /* an interrupted answer stays in the conversation as far as it went */
        char *reply = mtok_detokenize(c->L->tok, res.tokens.v, res.tokens.n, NULL);
        mtok_reply r = {0};
        if (!reply) rc = mtok_err(MTOK_ERESOURCE, "out of memory decoding the reply");
        else if (!(rc = mtok_reply_parse(reply, &r))) {
            *tool_call = r.is_tool_call && !cancelled;
            if (*tool_call) {
                printf("[tool call] %s %s\n", r.name, r.arguments);
                /* replayed as the model wrote it: GLM-4's JSON arguments, ChatGLM3's fenced tool_call block
                 * (THUDM's process_response keeps the raw content in the history) */
                int glm3 = !strcmp(mtok_tokenizer_kind(c->L->tok), "sentencepiece");
                rc = msg_add(&c->h, "assistant", r.name, glm3 ? r.content : r.arguments, NULL);
            } else {
                rc = msg_add(&c->h, "assistant", NULL, r.content, NULL);
            }
            mtok_reply_free(&r);
        }
        free(reply);
    }
    mtok_ids_free(&ids);
    mtok_result_free(&res);
    return rc;
}

static int is_kv_file(const char *path) {
    char magic[8] = {0};
    FILE *f = fopen(path, "rb");
    const int ok = f && fread(magic, 1, sizeof magic, f) == sizeof magic && !memcmp(magic, "MTOKKV\r\n", 8);
    if (f) fclose(f);
    return ok;
}

/* -f DOC, --load-kv F, /load FILE: a new conversation about the document (the system message stays).
 * A saved KV (mtok prefill --save-kv) is loaded as it is; a text file becomes the first user message
 * and is prefilled now, with progress, so the first question costs only its own tokens. Ctrl-C stops
 * the prefill and leaves no document. */
static int chat_load(chat_state *c, const char *path) {
    const size_t sys = c->h.n && !strcmp(c->h.m[0].role, "system") ? 1 : 0;
    msg_truncate(&c->h, sys);
    c->keep = sys;
    c->doc.n = 0;
    c->image_msg = -1; /* an image of the old conversation goes with the next question about this one */
    int rc;
    if (is_kv_file(path)) {
        int64_t n = 0;
        if ((rc = mtok_session_load_kv(c->L->sess, path, NULL, 0, &n))) return rc;
        if ((rc = mtok_ids_append(&c->doc, mtok_session_tokens(c->L->sess), (size_t)n))) return rc;
        const int32_t u = mtok_token_special(c->L->tok, "<|user|>"), y = mtok_token_special(c->L->tok, "<|system|>");
        const int in_turn = n > 2 && (c->doc.v[2] == u || c->doc.v[2] == y);
        mtok_log(1, "document %s: %lld tokens loaded%s", path, (long long)n,
                 in_turn ? "" : " (saved without --chat: it precedes the conversation outside any turn)");
        if (sys) mtok_log(1, "the system message follows the loaded document");
        return 0;
    }
    char *text = NULL;
    size_t len = 0;
    if ((rc = cli_read_file(path, &text, &len))) return rc;
    if (!len || strlen(text) != len) {
        free(text);
        return mtok_err(MTOK_EINPUT, "%s: %s", path, len ? "contains a NUL byte (not a text document)" : "empty document");
    }
    rc = msg_add(&c->h, "user", NULL, text, NULL);
    free(text);
    mtok_ids ids = {0};
    if (!rc) rc = chat_ids(c, 0, &ids);
    run_ui ui;
    mtok_progress_begin(&ui.prog, "document", "tokens", 0, cli_progress_interval(c->o));
    mtok_request req = {.cancel = &g_cancel, .on_prefill = on_prefill, .user = &ui};
    mtok_usage u = {0};
    if (!rc) {
        request_begin(c);
        rc = mtok_session_feed(c->L->sess, ids.v, (int64_t)ids.n, &req, &u);
        request_end(c);
    }
    mtok_progress_end(&ui.prog);
    if (rc == MTOK_CANCELLED) {
        fprintf(stderr, "[interrupted] %s not loaded\n", path);
        msg_truncate(&c->h, sys);
        rc = 0;
    } else if (!rc) {
        c->keep = c->h.n;
        mtok_log(1, "document %s: %lld tokens, %lld computed in %.2f s", path, (long long)u.prompt_tokens,
                 (long long)u.computed_tokens, u.prefill_s);
    } else {
        msg_truncate(&c->h, sys);
    }
    mtok_ids_free(&ids);
    return rc;
}

/* The chat's loop: commands, a user turn, tool calls answered by observations. */
static int chat_loop(chat_state *c) {
    int rc = 0, ctrl_c = 0;
    if (isatty(0))
        fputs("mtok chat: type a message; /load FILE opens a document or saved KV, /image FILE adds an image "
              "(GLM-4V), /reset clears the history, Ctrl-C stops an answer, /exit or EOF quits\n", stdout);
    while (!rc) {
        char *line = NULL;
        const int got = read_line(c, "> ", &line);
        if (got < 0) return got;
        if (got == LINE_INTR) {
            if (++ctrl_c >= 2) break;
            fputs("\n(Ctrl-C again, /exit or EOF quits)\n", stderr);
            continue;
        }
        ctrl_c = 0;
        if (got == LINE_EOF || !strcmp(line, "/exit")) {
            free(line);
            break;
        }
        if (!strcmp(line, "/reset")) {
            msg_truncate(&c->h, c->keep);
            /* a new conversation: the old one's image goes with it */
            free(c->image);
            c->image = NULL, c->image_msg = -1;
            free(line);
            continue;
        }
        if (!strncmp(line, "/image", 6) && (line[6] == ' ' || !line[6])) {
            const char *path = line + 6;
            while (*path == ' ') path++;
            int ir = !*path ? mtok_err(MTOK_EUSAGE, "/image needs a file: /image FILE")
                     : c->image ? mtok_err(MTOK_EUSAGE, "one image per conversation (GLM-4V takes one): /reset "
                                           "starts a new conversation")
                                : image_check(c->o->model, path, c->image_ids);
            if (!ir && !(c->image = strdup(path))) ir = mtok_err(MTOK_ERESOURCE, "out of memory");
            if (!ir) mtok_log(1, "image %s: goes with your next message", path);
            /* a bad file or a second image is the user's to fix: say so and keep chatting */
            if (ir == MTOK_EUSAGE || ir == MTOK_EINPUT) fprintf(stderr, "mtok: error: %s\n", mtok_errmsg());
            else rc = ir;
            free(line);
            continue;
        }
        if (!strncmp(line, "/load", 5) && (line[5] == ' ' || !line[5])) {
            const char *path = line + 5;
            while (*path == ' ') path++;
            int lr = *path ? chat_load(c, path) : mtok_err(MTOK_EUSAGE, "/load needs a file: /load FILE");
            /* a missing or bad file is the user's to fix: say so and keep chatting */
            if (lr == MTOK_EUSAGE || lr == MTOK_EINPUT) fprintf(stderr, "mtok: error: %s\n", mtok_errmsg());
            else rc = lr;
            free(line);
            continue;
        }
        rc = msg_add(&c->h, "user", NULL, line, NULL);
        free(line);
        if (!rc && c->image && c->image_msg < 0) c->image_msg = (long)c->h.n - 1;
        int tool_call = 0;
        if (!rc) rc = chat_turn(c, &tool_call);
        /* a tool call is answered with an observation, then the model continues */
        while (!rc && tool_call) {
            char *obs = NULL;
            const int g = read_line(c, "observation> ", &obs);
            if (g != LINE_OK) {
                if (g < 0) rc = g;
                break;
            }
            rc = msg_add(&c->h, "observation", NULL, obs, NULL);
            free(obs);
            if (!rc) rc = chat_turn(c, &tool_call);
        }
    }
    return rc;
}

int cmd_chat(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    o.n_gen = 512;
    const char *system = NULL, *tools_file = NULL, *doc = NULL, *load_kv = NULL, *image = NULL;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(argv[i], "--image")) {
            if (!(image = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--system")) {
            if (!(system = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--tools")) {
            if (!(tools_file = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--file")) {
            if (!(doc = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--load-kv")) {
            if (!(load_kv = cli_value(argc, argv, &i))) return 1;
        } else
            return cli_usage_error("chat: unknown option '%s'", argv[i]);
    }
    if (!o.model) return cli_usage_error("chat needs -m DIR");
    if (doc && load_kv) return cli_usage_error("chat takes one of -f DOC and --load-kv F");
    chat_state c = {.o = &o, .image_msg = -1};
    cli_loaded L;
    char *tools = NULL;
    memset(&L, 0, sizeof L);
    c.L = &L;
    /* SIGINT blocked from here, before the model's threads exist, so they inherit the block and the
     * signal always reaches this thread where it unblocks it */
    sigset_t sigint, orig_mask;
    sigemptyset(&sigint);
    sigaddset(&sigint, SIGINT);
    sigprocmask(SIG_BLOCK, &sigint, &orig_mask);
    c.idle_mask = c.run_mask = orig_mask;
    sigdelset(&c.run_mask, SIGINT);
    sigaddset(&c.idle_mask, SIGINT);
    struct sigaction sa = {.sa_handler = on_sigint}, old_sa;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa); /* no SA_RESTART: a wait for input returns EINTR */
    int rc = tools_file ? read_tools(tools_file, o.model, &tools) : 0;
    if (!rc && image) rc = image_check(o.model, image, c.image_ids);
    if (!rc && image && !(c.image = strdup(image))) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    if (!rc) rc = cli_load(&o, 1, &L);
    if (!rc && mtok_vision_config_present(o.model) == 1) rc = mtok_vision_cache_create(&c.vcache);
    mtok_sampler_params sp = sampler_params(&o);
    if (!rc) rc = mtok_sampler_create(&sp, mtok_model_config(L.model)->vocab, &c.smp);
    if (!rc && (system || tools)) rc = msg_add(&c.h, "system", NULL, system, tools);
    if (!rc) c.keep = c.h.n;
    if (!rc && (doc || load_kv)) rc = chat_load(&c, doc ? doc : load_kv);
    if (!rc) rc = chat_loop(&c);
    msg_free(&c.h);
    mtok_vision_cache_free(c.vcache);
    free(c.image);
    mtok_ids_free(&c.doc);
    free(c.in);
    free(tools);
    mtok_sampler_free(c.smp);
    cli_unload(&L);
    /* a Ctrl-C still pending reaches our handler, not the default one that would kill the process */
    sigprocmask(SIG_SETMASK, &orig_mask, NULL);
    sigaction(SIGINT, &old_sa, NULL);
    return rc ? cli_fail(rc) : 0;
}
