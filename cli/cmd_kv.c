/* cmd_kv.c — the KV-store commands: mtok prefill (--save-kv), mtok qa (many questions, one
 * document prefill) and mtok bench kv (cold-tier bandwidth). docs/KVSTORE.md describes them. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "../eval/eval.h"
#include "../kvstore/kvstore.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_log_kv_stats(const mtok_session *s) {
    mtok_kv_stats st;
    mtok_session_kv_stats(s, &st);
    if (!strcmp(st.io, "none")) return;
    mtok_log(1, "kv: %.1f MiB hot, %.1f MiB cold; %llu blocks spilled (%.1f MiB), %llu read back (%.1f MiB), "
             "%llu dropped; cold-tier I/O: %s", (double)st.hot_bytes / (1 << 20), (double)st.cold_bytes / (1 << 20),
             (unsigned long long)st.spill_writes, (double)st.bytes_written / (1 << 20),
             (unsigned long long)st.spill_reads, (double)st.bytes_read / (1 << 20), (unsigned long long)st.dropped,
             st.io_note);
}

int cli_load_kv_prompt(mtok_session *s, const mtok_tokenizer *t, const char *path, mtok_ids *ids, size_t *skip) {
    int64_t n = 0;
    *skip = 0;
    int rc = mtok_session_load_kv(s, path, ids->v, ids->n, &n);
    if (rc) return rc;
    if (n > 0) {
        *skip = (size_t)n;
        mtok_log(1, "reused %lld tokens of %s (prefix), prefilling %zu", (long long)n, path, ids->n - (size_t)n);
        return 0;
    }
    /* the prompt does not start with the document: continue after it */
    if ((rc = mtok_session_load_kv(s, path, NULL, 0, &n))) return rc;
    const int32_t *doc = mtok_session_tokens(s);
    int32_t g = mtok_token_special(t, "[gMASK]"), so = mtok_token_special(t, "<sop>");
    if (n >= 2 && ids->n >= 2 && doc[0] == g && doc[1] == so && ids->v[0] == g && ids->v[1] == so)
        *skip = 2; /* the document already has the prefix */
    if (*skip >= ids->n) return mtok_err(MTOK_EINPUT, "--load-kv: the prompt adds no tokens after the document");
    mtok_log(1, "continuing after the %lld document tokens of %s", (long long)n, path);
    return 0;
}

/* Peak resident set of this process (VmHWM of /proc/self/status, bytes; 0 if unknown). */
static uint64_t peak_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1) break;
    if (f) fclose(f);
    return (uint64_t)kb * 1024;
}

/* The document's ids. Plain: [gMASK]<sop> + text, the document convention of mtok generate.
 * chat (--chat): [gMASK]<sop><|user|>\n + text, the document as a user message of its own with no
 * <|assistant|> after it; the template encodes every message apart (core/chat.c), so these ids followed
 * by a question's turn equal the encoding of the conversation [user: document, user: question] token
 * for token, the conversation mtok chat -f DOC holds too. */
static int doc_ids(const mtok_tokenizer *t, const char *text, size_t len, int chat, mtok_ids *ids) {
    if (chat) {
        if (strlen(text) != len)
            return mtok_err(MTOK_EINPUT, "the document contains a NUL byte at offset %zu (a chat message is text)",
                            strlen(text));
        const mtok_message m = {"user", NULL, text, NULL};
        return len ? mtok_chat_encode(t, &m, 1, 0, ids) : 0;
    }
    int32_t g = mtok_token_special(t, "[gMASK]"), s = mtok_token_special(t, "<sop>");
    int rc = 0;
    if (g >= 0 && s >= 0) rc = mtok_ids_push(ids, g), rc = rc ? rc : mtok_ids_push(ids, s);
    return rc ? rc : mtok_tokenize(t, text, len, 0, ids);
}

/* Feeds the document with its progress line on stderr (mtok_progress). */
static int feed_doc(mtok_session *s, const mtok_ids *ids, const cli_common *o, mtok_usage *u) {
    mtok_progress p;
    mtok_progress_begin(&p, "prefill", "tokens", (int64_t)ids->n, cli_progress_interval(o));
    const mtok_request req = {.on_prefill = mtok_progress_prefill_cb, .user = &p};
    const int rc = mtok_session_feed(s, ids->v, (int64_t)ids->n, &req, u);
    mtok_progress_end(&p);
    return rc;
}

/* ---- mtok prefill -m DIR (-f DOC | -p TEXT) [--chat] [--save-kv F] ---- */
int cmd_prefill(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    const char *file = NULL, *save = NULL, *text = NULL;
    int chat = 0;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--file")) {
            if (!(file = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "-p") || !strcmp(argv[i], "--prompt")) {
            if (!(text = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--save-kv")) {
            if (!(save = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--chat")) {
            chat = 1;
        } else
            return cli_usage_error("prefill: unknown option '%s'", argv[i]);
    }
    if (!o.model || (!file) == (!text)) return cli_usage_error("prefill needs -m DIR and one of -f DOC, -p TEXT");
    cli_loaded L;
    char *buf = NULL;
    size_t len = text ? strlen(text) : 0;
    mtok_ids ids = {0};
    int rc = cli_load(&o, 1, &L);
    if (!rc && file) rc = cli_read_file(file, &buf, &len);
    if (!rc) rc = doc_ids(L.tok, file ? buf : text, len, chat, &ids);
    if (!rc && ids.n == 0) rc = mtok_err(MTOK_EINPUT, "prefill: the document has no tokens");
    double t0 = now_s(), dt = 0;
    if (!rc) rc = feed_doc(L.sess, &ids, &o, NULL);
    dt = now_s() - t0;
    if (!rc) {
        mtok_log(1, "prefilled %zu tokens in %.2f s (%.1f tok/s); KV %.1f MiB; peak RSS %.1f MiB", ids.n, dt,
                 dt > 0 ? (double)ids.n / dt : 0, (double)mtok_session_kv_bytes(L.sess) / (1 << 20),
                 (double)peak_rss() / (1 << 20));
        cli_log_kv_stats(L.sess);
    }
    if (!rc && save) rc = mtok_session_save_kv(L.sess, save);
    free(buf);
    mtok_ids_free(&ids);
    cli_unload(&L);
    return rc ? cli_fail(rc) : 0;
}

/* ---- mtok qa -m DIR (--load-kv F | -f DOC) --questions Q.jsonl [--chat] ----
 * Every question starts from the document state: the session is truncated back to the document's
 * tokens before each one, so the document is prefilled (or loaded) exactly once.
 * --chat: each question is a user turn of its own after the document, then <|assistant|>. With -f DOC
 * the document is a user message (as prefill --chat saves it); with --load-kv it is what the file
 * holds, and a file saved without --chat (or a chat file asked without --chat) gets a warning. */
static int question_ids(const mtok_tokenizer *t, const char *q, int chat, mtok_ids *ids) {
    mtok_ids tmp = {0};
    int rc;
    if (chat) {
        mtok_message m = {"user", NULL, q, NULL};
        rc = mtok_chat_encode(t, &m, 1, 1, &tmp);
    } else {
        rc = mtok_tokenize(t, q, strlen(q), 0, &tmp);
    }
    /* the document already starts with [gMASK]<sop> */
    size_t skip = 0;
    if (!rc && tmp.n >= 2 && tmp.v[0] == mtok_token_special(t, "[gMASK]") && tmp.v[1] == mtok_token_special(t, "<sop>"))
        skip = 2;
    if (!rc && tmp.n > skip) rc = mtok_ids_append(ids, tmp.v + skip, tmp.n - skip);
    mtok_ids_free(&tmp);
    return rc;
}

int cmd_qa(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    o.n_gen = 32;
    const char *load = NULL, *file = NULL, *qfile = NULL;
    int chat = 0;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(argv[i], "--load-kv")) {
            if (!(load = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--file")) {
            if (!(file = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--questions")) {
            if (!(qfile = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--chat")) {
            chat = 1;
        } else
            return cli_usage_error("qa: unknown option '%s'", argv[i]);
    }
    if (!o.model || !qfile || (!load) == (!file))
        return cli_usage_error("qa needs -m DIR, --questions Q.jsonl and one of --load-kv F, -f DOC");
    /* the questions first: a bad file is reported before the model loads (eval/jsonl.c reads it) */
    mev_questions qs;
    int rc = mev_questions_read(qfile, &qs);
    if (rc) return cli_fail(rc);
    cli_loaded L;
    char *buf = NULL;
    size_t len = 0;
    mtok_ids doc = {0};
    int64_t n_doc = 0, n_q = 0, q_tokens = 0;
    rc = cli_load(&o, 1, &L);
    double t0 = now_s();
    if (!rc && load) {
        rc = mtok_session_load_kv(L.sess, load, NULL, 0, &n_doc);
    } else if (!rc) {
        rc = cli_read_file(file, &buf, &len);
        if (!rc) rc = doc_ids(L.tok, buf, len, chat, &doc);
        if (!rc && doc.n == 0) rc = mtok_err(MTOK_EINPUT, "qa: the document has no tokens");
        if (!rc) rc = feed_doc(L.sess, &doc, &o, NULL);
        n_doc = (int64_t)doc.n;
    }
    if (!rc && load) {
        /* a document saved by prefill --chat starts [gMASK]<sop><|user|> */
        const int32_t *t = mtok_session_tokens(L.sess);
        const int in_turn = n_doc > 2 && (t[2] == mtok_token_special(L.tok, "<|user|>") ||
                                          t[2] == mtok_token_special(L.tok, "<|system|>"));
        if (chat && !in_turn)
            mtok_log(1, "qa: %s was saved without --chat: the document precedes the first turn, outside any "
                     "message (prefill --chat puts it in a user turn)", load);
        else if (!chat && in_turn)
            mtok_log(1, "qa: %s was saved with --chat: without --chat each question continues the document's user "
                     "message as plain text (pass --chat to ask in the chat format)", load);
    }
    double doc_s = now_s() - t0;
    mtok_ids prompt = {0}; /* the document, then each question in turn */
    if (!rc) rc = mtok_ids_append(&prompt, mtok_session_tokens(L.sess), (size_t)n_doc);
    mtok_kv_stats st0 = {0};
    if (!rc) mtok_session_kv_stats(L.sess, &st0);
    for (size_t qi = 0; !rc && qi < qs.n; qi++) {
        const char *q = qs.v[qi].text;
        json_t *id = qs.v[qi].id_json ? json_loads(qs.v[qi].id_json, JSON_DECODE_ANY, NULL) : NULL;
        mtok_ids ids = {0};
        mtok_result res = {0};
        /* every question is asked of the document alone: back to the document state first, or the
         * feed would also reuse tokens the previous question shares with this one, and an answer
         * would depend on the questions before it (the bits of a position depend on its chunk) */
        rc = mtok_session_truncate(L.sess, n_doc);
        if (!rc) rc = question_ids(L.tok, q, chat, &ids);
        if (!rc && ids.n == 0)
            rc = mtok_err(MTOK_EINPUT, "%s:%lld: the question has no tokens", qfile, (long long)qs.v[qi].line);
        prompt.n = (size_t)n_doc;
        if (!rc) rc = mtok_ids_append(&prompt, ids.v, ids.n);
        mtok_request req = {.max_tokens = o.n_gen, .ignore_eos = o.ignore_eos,
                            .sampler = {.temperature = o.temperature, .top_k = o.top_k, .top_p = o.top_p,
                                        .repetition_penalty = o.rep_pen, .seed = o.seed}};
        if (!rc) rc = mtok_generate(L.sess, L.tok, prompt.v, (int64_t)prompt.n, &req, &res);
        const mtok_ids out = res.tokens;
        if (!rc) {
            char *ans = mtok_detokenize(L.tok, out.v, out.n, NULL);
            json_t *toks = json_array();
            for (size_t k = 0; k < out.n; k++) json_array_append_new(toks, json_integer(out.v[k]));
            json_t *rec = json_pack("{s:O?, s:s, s:s, s:o, s:I}", "id", id, "question", q, "answer", ans ? ans : "",
                                    "tokens", toks, "question_tokens", (json_int_t)ids.n);
            char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
            if (s) puts(s);
            fflush(stdout);
            free(s);
            json_decref(rec);
            free(ans);
            n_q++;
            q_tokens += (int64_t)ids.n;
        }
        mtok_ids_free(&ids);
        mtok_result_free(&res);
        json_decref(id);
    }
    mtok_ids_free(&prompt);
    if (!rc) {
        mtok_kv_stats st;
        mtok_session_kv_stats(L.sess, &st);
        mtok_log(1, "qa summary {\"questions\": %lld, \"document_tokens\": %lld, \"document_source\": \"%s\", "
                 "\"document_prefills\": %d, \"document_tokens_computed\": %lld, \"question_tokens\": %lld, "
                 "\"tokens_computed\": %lld, \"document_s\": %.3f}", (long long)n_q, (long long)n_doc,
                 load ? "loaded" : "prefilled", load ? 0 : 1, (long long)st0.tokens_computed, (long long)q_tokens,
                 (long long)st.tokens_computed, doc_s);
        cli_log_kv_stats(L.sess);
    }
    free(buf);
    mev_questions_free(&qs);
    mtok_ids_free(&doc);
    cli_unload(&L);
    return rc ? cli_fail(rc) : 0;
}

/* ---- mtok bench kv [-m DIR] [--kv-dir D] [--kv-block N | --block-bytes N] [--kv-depth N] [--size B] [--json] ----
 * Without -m the block geometry is GLM-4-9B-Chat-1M's (4 KV groups x 128 dims, bf16 K and V):
 * 2 KiB per token per layer, so --kv-block 128 gives 256 KiB blocks. argv[0] is "kv". */
int cmd_bench_kv(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    int64_t block_bytes = 0, size = (int64_t)1 << 30;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        const char *v;
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--block-bytes") || !strcmp(argv[i], "--size")) {
            const char *a = argv[i];
            if (!(v = cli_value(argc, argv, &i))) return 1;
            int64_t n;
            if (cli_parse_size(a, v, 1, !strcmp(a, "--size") ? CLI_MAX_KV_BUDGET : (int64_t)1 << 30, &n)) return 1;
            if (!strcmp(a, "--size")) size = n;
            else block_bytes = n;
        } else
            return cli_usage_error("bench kv: unknown option '%s'", argv[i]);
    }
    int64_t B = o.kv_block > 0 ? o.kv_block : KVS_DEFAULT_BLOCK_TOKENS, row_bytes = 4 * 128 * 2 * 2;
    const char *geom = "GLM-4-9B-Chat-1M (4 KV groups x 128)";
    mtok_model *m = NULL;
    if (o.model) {
        mtok_load_params lp = {.rope_base = o.rope_base};
        int rc = mtok_model_load(o.model, &lp, &m);
        if (rc) return cli_fail(rc);
        const mtok_config *c = mtok_model_config(m);
        row_bytes = c->n_kv_groups * c->head_dim * 2 * 2;
        geom = o.model;
    }
    if (!block_bytes) block_bytes = B * row_bytes;
    int rc = cli_kv_dir_ready(&o);
    if (rc) {
        mtok_model_free(m);
        return cli_fail(rc);
    }
    kvs_bench_params bp = {.dir = o.kv_dir, .io = (kvs_io_kind)o.kv_io, .block_bytes = (uint64_t)block_bytes,
                           .total_bytes = (uint64_t)size, .depth = o.kv_depth};
    kvs_bench_result r;
    rc = kvs_bench(&bp, &r);
    mtok_model_free(m);
    if (rc) return cli_fail(rc);
    const char *dir = o.kv_dir ? o.kv_dir : (getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp");
    if (json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:i, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:b}",
                              "bench", "kv", "dir", dir, "io", r.io, "block_tokens", (json_int_t)B, "block_bytes",
                              (json_int_t)block_bytes, "slot_bytes", (json_int_t)r.slot_bytes, "depth", r.depth,
                              "blocks", (json_int_t)r.blocks, "bytes", (json_int_t)(r.blocks * r.slot_bytes),
                              "write_gbs", r.write_gbs, "read_gbs", r.read_gbs, "write_iops", r.write_iops,
                              "read_iops", r.read_iops, "write_s", r.write_s, "read_s", r.read_s, "checksums_ok", 1);
        char *s = json_dumps(j, JSON_INDENT(2));
        puts(s);
        free(s);
        json_decref(j);
    } else {
        printf("cold tier %s via %s\n", dir, r.io);
        printf("blocks of %lld bytes (%lld tokens, %s), slot %llu bytes, queue depth %d, %llu blocks\n",
               (long long)block_bytes, (long long)B, geom, (unsigned long long)r.slot_bytes, r.depth,
               (unsigned long long)r.blocks);
        printf("spill write: %.3f GB/s, %.0f IOPS\nread back:   %.3f GB/s, %.0f IOPS (every block checksum-verified)\n",
               r.write_gbs, r.write_iops, r.read_gbs, r.read_iops);
    }
    return 0;
}
