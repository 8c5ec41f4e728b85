/* cmd_serve.c — `mtok serve`: the options, the signals, and serve/serve.h's srv_run
 * (docs/SERVER.md). Every model, KV and device option the other commands take applies to each
 * session of the pool. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "../serve/serve.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

int cmd_serve(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    srv_config c = {.host = "127.0.0.1", .port = 8000, .sessions = 1, .max_queue = 8,
                    .max_body = (int64_t)64 << 20, .keepalive_s = 15};
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        const char *a = argv[i], *v;
        int64_t x;
        double d;
        if (!strcmp(a, "--host")) {
            if (!(c.host = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--port")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_parse_int(a, v, 0, 65535, &x)) return 1;
            c.port = (int)x;
        } else if (!strcmp(a, "--api-key")) {
            if (!(c.api_key = cli_value(argc, argv, &i))) return 1;
            if (!*c.api_key) return cli_usage_error("--api-key: the key is empty");
        } else if (!strcmp(a, "--served-model-name")) {
            if (!(c.model_name = cli_value(argc, argv, &i))) return 1;
            if (!*c.model_name) return cli_usage_error("--served-model-name: the name is empty");
        } else if (!strcmp(a, "--sessions")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_parse_int(a, v, 1, 256, &x)) return 1;
            c.sessions = (int)x;
        } else if (!strcmp(a, "--max-queue")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_parse_int(a, v, 0, 4096, &x)) return 1;
            c.max_queue = (int)x;
        } else if (!strcmp(a, "--max-body")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_parse_size(a, v, 1024, (int64_t)1 << 34, &x)) return 1;
            c.max_body = x;
        } else if (!strcmp(a, "--keepalive")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_parse_real(a, v, 0, 3600, 1, &d)) return 1;
            c.keepalive_s = d;
        } else {
            return cli_usage_error("serve: unknown option '%s'", a);
        }
    }
    if (!o.model) return cli_usage_error("serve needs -m DIR (a checkpoint directory)");
    cli_common d;
    cli_common_defaults(&d);
    if (o.temperature != d.temperature || o.top_p != d.top_p || o.top_k != d.top_k || o.rep_pen != d.rep_pen ||
        o.seed != d.seed || o.n_gen != d.n_gen)
        return cli_usage_error("serve: sampling options and -n belong to each request (temperature, top_p, top_k, "
                               "repetition_penalty, seed, max_tokens in its JSON), not to the server");
    if (o.tp > 1 || o.cp > 1)
        return cli_usage_error("serve: --tp/--cp are not supported yet (the pool's sessions run in one process)");
    c.model_dir = o.model;
    c.vision_device = o.vision_device;
    c.log_level = o.log_level;
    c.load = (mtok_load_params){.rope_base = o.rope_base};
    c.sess = (mtok_session_params){.ctx = o.ctx, .threads = o.threads, .prefill_chunk = o.chunk, .kv_block = o.kv_block,
                                   .kv_budget = o.kv_budget, .kv_dir = o.kv_dir, .kv_io = o.kv_io,
                                   .kv_policy = o.kv_policy, .kv_sinks = o.kv_sinks, .kv_window = o.kv_window,
                                   .kv_depth = o.kv_depth, .kv_fault = o.kv_fault, .kv_topk = o.kv_topk,
                                   .kv_audit = o.kv_audit, .device = o.device};
    if (o.device) {
        int idx;
        int rc = mtok_device_parse(o.device, &idx);
        if (rc) return cli_fail(rc);
    }
    int rc = cli_kv_dir_ready(&o); /* every session's cold-tier files go there */
    if (rc) return cli_fail(rc);
    mtok_set_log_level(o.log_level > 1 ? 1 : o.log_level); /* the library's own lines; -v adds prompts here only */
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error return, not a signal */
    rc = srv_run(&c, &g_stop);
    return rc ? cli_fail(rc) : 0;
}
