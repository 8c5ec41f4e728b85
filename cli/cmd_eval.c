/* cmd_eval.c — mtok niah, mtok eval, mtok demo (the needle model + a NIAH grid). */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "../eval/eval.h"
#include "../eval/longbench.h"
#include "../eval/ruler.h"
#include "../eval/runid.h"
#include "../synth/mtok_synth.h"

static volatile int g_interrupted;
static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
    signal(SIGINT, SIG_DFL); /* a second Ctrl-C kills at once */
}

/* "1K,4K,64K" (K/M/G = powers of 1024) */
static int parse_lengths(const char *flag, const char *s, int64_t **out, size_t *n) {
    char *dup = strdup(s);
    size_t cap = 1;
    for (const char *c = s; *c; c++) cap += *c == ',';
    *out = malloc(cap * sizeof **out);
    *n = 0;
    if (!dup || !*out) return free(dup), cli_usage_error("out of memory"), -1;
    for (char *tok = strtok(dup, ","); tok; tok = strtok(NULL, ",")) {
        int64_t v;
        if (cli_parse_size(flag, tok, 16, CLI_MAX_TOKENS, &v)) return free(dup), -1;
        (*out)[(*n)++] = v;
    }
    free(dup);
    return *n ? 0 : (cli_usage_error("%s: empty list", flag), -1);
}

/* "0,25,50" or "A:B:N" (N evenly spaced values from A to B) */
static int parse_depths(const char *s, double **out, size_t *n) {
    double a, b;
    int64_t k;
    *out = NULL; /* the caller frees it on an error */
    const char *c1 = strchr(s, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (c1 && c2) { /* A:B:N; sscanf's %lf took nan and inf */
        char *dup = strdup(s);
        if (!dup) return cli_usage_error("out of memory"), -1;
        dup[c1 - s] = dup[c2 - s] = 0;
        const int bad = cli_parse_real("--depths", dup, 0, 100, 0, &a) ||
                        cli_parse_real("--depths", dup + (c1 - s) + 1, 0, 100, 0, &b) ||
                        cli_parse_int("--depths A:B:N count", dup + (c2 - s) + 1, 1, 1000, &k);
        free(dup);
        if (bad) return -1;
        *out = malloc((size_t)k * sizeof **out);
        if (!*out) return -1;
        for (int i = 0; i < k; i++) (*out)[i] = k == 1 ? a : a + (b - a) * i / (k - 1);
        *n = (size_t)k;
        return 0;
    }
    char *dup = strdup(s);
    size_t cap = 1;
    for (const char *c = s; *c; c++) cap += *c == ',';
    *out = malloc(cap * sizeof **out);
    *n = 0;
    if (!dup || !*out) return free(dup), -1;
    for (char *tok = strtok(dup, ","); tok; tok = strtok(NULL, ",")) {
        double v;
        if (cli_parse_real("--depths", tok, 0, 100, 0, &v)) return free(dup), -1;
        (*out)[(*n)++] = v;
    }
    free(dup);
    return *n ? 0 : (cli_usage_error("--depths: empty list"), -1);
}

static int parse_variants(const char *s, mev_variant **out, size_t *n) {
    char *dup = strdup(s);
    *out = malloc(MEV_N_VARIANTS * 4 * sizeof **out);
    *n = 0;
    if (!dup || !*out) return free(dup), -1;
    for (char *tok = strtok(dup, ","); tok; tok = strtok(NULL, ",")) {
        if (*n >= MEV_N_VARIANTS * 4 || mev_variant_parse(tok, &(*out)[*n])) {
            free(dup);
            return cli_usage_error("--variants: %s", mtok_errmsg()), -1;
        }
        (*n)++;
    }
    free(dup);
    return 0;
}

typedef struct {
    int64_t *lengths;
    size_t n_lengths;
    double *depths;
    size_t n_depths;
    mev_variant *variants;
    size_t n_variants;
} grid;

static void grid_free(grid *g) {
    free(g->lengths);
    free(g->depths);
    free(g->variants);
}

/* KV bytes on the cold tier (disk) at the end of a cell. */
static uint64_t cold_bytes(const mtok_session *s, void *user) {
    (void)user;
    mtok_kv_stats st;
    mtok_session_kv_stats(s, &st);
    return st.cold_bytes;
}

/* The identity of a resumable run (eval/runid.h): the model and the options that change its answers,
 * claimed on results before anything is written to it (exit 2 when --resume meets another run's). */
static int claim_run(const cli_common *o, const cli_loaded *L, mev_runid *id, const char *results, int resume) {
    const mev_run_settings rs = {.model_fingerprint = mtok_model_fingerprint(L->model), .device = o->device,
                                 .ctx = o->ctx, .chunk = o->chunk, .rope_base = o->rope_base,
                                 .kv_policy = o->kv_policy, .kv_block = o->kv_block, .kv_topk = o->kv_topk,
                                 .kv_sinks = o->kv_sinks, .kv_window = o->kv_window, .max_new = o->n_gen};
    int rc = mev_runid_settings(id, &rs);
    return rc ? rc : mev_runid_claim(id, results, resume);
}

/* Loads the model with a context just large enough for the grid, then runs it. */
static int run_grid(cli_common *o, mev_niah_params *np, mev_niah_summary *sum) {
    int64_t max_len = 0;
    const int64_t ctx_given = o->ctx; /* the identity records --ctx as given: a grid may grow on --resume */
    for (size_t i = 0; i < np->n_lengths; i++)
        if (np->lengths[i] > max_len) max_len = np->lengths[i];
    if (!o->ctx) o->ctx = max_len + 64 + (np->max_new > 0 ? np->max_new : 64);
    cli_loaded L;
    int rc = cli_load(o, 1, &L);
    if (rc) return rc;
    mev_runid id;
    mev_runid_init(&id, "niah");
    cli_common oid = *o;
    oid.ctx = ctx_given;
    rc = mev_runid_set(&id, "needle", "%s", np->needle_mode < 0 ? "auto" : np->needle_mode ? "facts" : "text");
    if (!rc) rc = mev_runid_set(&id, "haystack", "%s", np->noise ? "noise" : np->haystack_file ? "file" : "genesis");
    if (!rc && np->haystack_file) rc = mev_runid_set_file(&id, "haystack_file", np->haystack_file);
    if (!rc) rc = mev_runid_set(&id, "layout", "%s", np->all_depths ? "all-depths" : "cell");
    if (!rc) rc = mev_runid_set(&id, "n_extra", "%d", np->n_extra);
    if (!rc) rc = mev_runid_set(&id, "seed", "%llu", (unsigned long long)np->seed);
    char *res = NULL;
    if (!rc && !(res = malloc(strlen(np->out_dir) + sizeof "/results.jsonl"))) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    if (!rc) sprintf(res, "%s/results.jsonl", np->out_dir);
    if (!rc) rc = claim_run(&oid, &L, &id, res, np->resume);
    free(res);
    if (rc) {
        cli_unload(&L);
        return rc;
    }
    g_interrupted = 0;
    void (*old)(int) = signal(SIGINT, on_sigint);
    np->interrupted = &g_interrupted;
    np->spilled_bytes = cold_bytes;
    rc = mev_niah_run(L.sess, L.tok, np, sum);
    signal(SIGINT, old);
    cli_unload(&L);
    mev_graphics_cleanup();
    return rc;
}

static const char NIAH_USAGE[] =
    "usage: mtok niah -m DIR --lengths L1,L2.. --depths D1,D2..|A:B:N --out DIR [--variants single,multikey,"
    "multivalue,multiquery] [--haystack FILE | --noise] [--needle auto|facts|text] [--n-extra N] [--resume]"
    " [--all-depths] [--seed S] [--max-new N] [--title T] [--progress|--no-progress]";

int cmd_niah(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    grid g = {0};
    mev_niah_params np = {.needle_mode = -1, .progress = -1, .seed = 1};
    o.n_gen = 0; /* -n / --max-new (a common option): 0 = per-variant default */
    int rc = 1;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) goto out;
        if (r) continue;
        const char *a = argv[i], *v = NULL;
        int64_t n;
#define VAL()                                       \
    do {                                            \
        if (!(v = cli_value(argc, argv, &i))) goto out; \
    } while (0)
        if (!strcmp(a, "--lengths")) {
            VAL();
            free(g.lengths);
            if (parse_lengths(a, v, &g.lengths, &g.n_lengths)) goto out;
        } else if (!strcmp(a, "--depths")) {
            VAL();
            free(g.depths);
            if (parse_depths(v, &g.depths, &g.n_depths)) goto out;
        } else if (!strcmp(a, "--variants") || !strcmp(a, "--variant")) {
            VAL();
            free(g.variants);
            if (parse_variants(v, &g.variants, &g.n_variants)) goto out;
        } else if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
            VAL();
            np.out_dir = v;
        } else if (!strcmp(a, "--haystack")) {
            VAL();
            np.haystack_file = v;
        } else if (!strcmp(a, "--noise")) {
            np.noise = 1;
        } else if (!strcmp(a, "--needle")) {
            VAL();
            if (!strcmp(v, "auto")) np.needle_mode = -1;
            else if (!strcmp(v, "facts")) np.needle_mode = 1;
            else if (!strcmp(v, "text")) np.needle_mode = 0;
            else {
                cli_usage_error("--needle: auto, facts or text");
                goto out;
            }
        } else if (!strcmp(a, "--n-extra")) {
            VAL();
            if (cli_parse_int(a, v, 0, 15, &n)) goto out; /* eval/niah.c: 16 needles at most */
            np.n_extra = (int)n;
        } else if (!strcmp(a, "--resume")) {
            np.resume = 1;
        } else if (!strcmp(a, "--all-depths")) {
            np.all_depths = 1;
        } else if (!strcmp(a, "--title")) {
            VAL();
            np.title = v;
        } else if (!strcmp(a, "--progress")) {
            np.progress = 1;
        } else if (!strcmp(a, "--no-progress")) {
            np.progress = 0;
        } else {
            cli_usage_error("niah: unknown option '%s'\n%s", a, NIAH_USAGE);
            goto out;
        }
#undef VAL
    }
    if (!o.model || !g.n_lengths || !g.n_depths || !np.out_dir) {
        cli_usage_error("niah needs -m DIR, --lengths, --depths and --out\n%s", NIAH_USAGE);
        goto out;
    }
    if (np.noise && np.haystack_file) {
        cli_usage_error("--haystack and --noise exclude each other");
        goto out;
    }
    np.max_new = o.n_gen;
    np.seed = o.seed;
    if (cli_progress_interval(&o) < 0) np.progress = 0; /* --no-progress or -q (common options) */
    np.lengths = g.lengths, np.n_lengths = g.n_lengths;
    np.depths = g.depths, np.n_depths = g.n_depths;
    np.variants = g.variants, np.n_variants = g.n_variants;
    mev_niah_summary sum;
    int lr = run_grid(&o, &np, &sum);
    if (lr) rc = cli_fail(lr);
    else {
        printf("%zu cells run, %zu skipped (already in results.jsonl), mean score %.3f, %.1f s%s\n", sum.done,
               sum.skipped, sum.mean_score, sum.seconds, sum.interrupted ? " (interrupted)" : "");
        rc = sum.interrupted ? 130 : 0;
    }
out:
    grid_free(&g);
    return rc;
}

/* mtok eval --segment FILE: jieba's words of each line of FILE (LongBench's Chinese metrics segment
 * with them), one JSON list per line, to compare with python jieba's jieba.cut. */
static int segment_lines(const char *path, const char *jieba_dir) {
    FILE *f = fopen(path, "rb");
    if (!f) return cli_fail(mtok_err(MTOK_EINPUT, "%s: cannot read it", path));
    mev_zhseg *z = NULL;
    int rc = mev_zhseg_open(jieba_dir, &z);
    mev_spans sp = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while (!rc && (n = getline(&line, &cap, f)) >= 0) {
        if (n && line[n - 1] == '\n') line[--n] = 0;
        if ((rc = mev_zhseg_cut(z, line, (size_t)n, &sp))) break;
        json_t *a = json_array();
        for (size_t i = 0; a && i < sp.n; i++) json_array_append_new(a, json_stringn(line + sp.v[i].off, sp.v[i].len));
        char *t = a ? json_dumps(a, JSON_COMPACT) : NULL;
        if (!t) rc = mtok_err(MTOK_EINPUT, "%s: a line that is not UTF-8", path);
        else printf("%s\n", t);
        free(t);
        json_decref(a);
    }
    free(line), free(sp.v);
    fclose(f);
    mev_zhseg_free(z);
    return rc ? cli_fail(rc) : 0;
}

/* The files and numbers LongBench's prompting reads (--prompts, --maxlen, --max-length, --cot) in the
 * run's identity: another template or budget makes other answers. */
static int set_prompts_id(mev_runid *id, const mev_eval_params *ep) {
    struct stat st;
    char p[4200];
    int rc = 0;
    if (!stat(ep->prompts, &st) && S_ISDIR(st.st_mode)) { /* v2's prompts/ folder: the templates used */
        static const char *const names[] = {"0shot.txt", "0shot_cot.txt", "0shot_cot_ans.txt"};
        for (int k = ep->cot ? 1 : 0; !rc && k < (ep->cot ? 3 : 1); k++) {
            snprintf(p, sizeof p, "%s/%s", ep->prompts, names[k]);
            rc = mev_runid_set_file(id, names[k], p);
        }
    } else
        rc = mev_runid_set_file(id, "prompts", ep->prompts);
    if (!rc && ep->maxlen) rc = mev_runid_set_file(id, "maxlen", ep->maxlen);
    if (!rc) rc = mev_runid_set(id, "max_length", "%lld", (long long)ep->max_length);
    if (!rc) rc = mev_runid_set(id, "cot", "%d", ep->cot);
    return rc;
}

/* ---- mtok eval -m DIR --data F.jsonl --out preds.jsonl | mtok eval --score F.jsonl ---- */
int cmd_eval(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    mev_eval_params ep = {0};
    const char *score_file = NULL;
    mev_lb_score_params lb = {0};
    const char *segment = NULL;
    o.n_gen = 0; /* -n / --max-new (a common option): 0 = per-format default */
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        const char *a = argv[i], *v;
        if (!strcmp(a, "--data") || !strcmp(a, "--out") || !strcmp(a, "--score") || !strcmp(a, "--metric")) {
            if (!(v = cli_value(argc, argv, &i))) return 1;
            if (!strcmp(a, "--data")) ep.data = v;
            else if (!strcmp(a, "--out")) ep.out = v;
            else if (!strcmp(a, "--score")) score_file = v;
            else if (!strcmp(v, "all") || !strcmp(v, "part") || !strcmp(v, "em") || !strcmp(v, "f1")) ep.metric = v;
            else return cli_usage_error("--metric: all, part, em or f1");
        } else if (!strcmp(a, "--jieba")) {
            if (!(v = cli_value(argc, argv, &i))) return 1;
            lb.jieba_dir = ep.jieba_dir = v;
        } else if (!strcmp(a, "--segment")) {
            if (!(v = cli_value(argc, argv, &i))) return 1;
            segment = v;
        } else if (!strcmp(a, "--prompts") || !strcmp(a, "--maxlen") || !strcmp(a, "--dump-prompts")) {
            if (!(v = cli_value(argc, argv, &i))) return 1;
            if (!strcmp(a, "--prompts")) ep.prompts = v;
            else if (!strcmp(a, "--maxlen")) ep.maxlen = v;
            else ep.dump_prompts = v;
        } else if (!strcmp(a, "--max-length")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_parse_size(a, v, 2, CLI_MAX_TOKENS, &ep.max_length)) return 1;
        } else if (!strcmp(a, "--cot")) {
            ep.cot = 1;
        } else if (!strcmp(a, "--longbench-e")) {
            lb.e = 1;
        } else if (!strcmp(a, "--special")) {
            ep.special = 1;
        } else if (!strcmp(a, "--resume")) {
            ep.resume = 1;
        } else
            return cli_usage_error("eval: unknown option '%s'", a);
    }
    ep.max_new = o.n_gen;
    if (segment) return segment_lines(segment, lb.jieba_dir);
    if (score_file) {
        if (ep.data) return cli_usage_error("--score FILE scores existing predictions; it takes no --data");
        struct stat st;
        if (!stat(score_file, &st) && S_ISDIR(st.st_mode) && !mev_ruler_folder(score_file)) { /* LongBench's pred/MODEL/ */
            lb.dir = score_file;
            int rc = mev_lb_score_dir(&lb, stdout);
            return rc ? cli_fail(rc) : 0;
        }
        ep.data = score_file;
        int rc = mev_eval_run(NULL, NULL, &ep, 1, stdout);
        return rc ? cli_fail(rc) : 0;
    }
    if (!o.model || !ep.data || !ep.out)
        return cli_usage_error("eval needs -m DIR --data F.jsonl --out preds.jsonl (or --score PREDS.jsonl | DIR "
                               "[--longbench-e] [--jieba DIR], or --segment FILE)");
    if (!ep.prompts && (ep.maxlen || ep.max_length || ep.cot))
        return cli_usage_error("--maxlen, --max-length and --cot shape LongBench's prompts: they need --prompts");
    if (ep.prompts && ep.special)
        return cli_usage_error("--special has no meaning with --prompts (LongBench's prompts are plain text)");
    cli_loaded L;
    int rc = cli_load(&o, 1, &L);
    if (rc) return cli_fail(rc);
    mev_runid id;
    mev_runid_init(&id, "eval");
    rc = mev_runid_set(&id, "template", "%s", ep.prompts ? "longbench" : ep.special ? "special" : "chat");
    if (!rc) rc = mev_runid_set_file(&id, "data", ep.data);
    if (!rc && ep.prompts) rc = set_prompts_id(&id, &ep);
    if (!rc) rc = claim_run(&o, &L, &id, ep.out, ep.resume);
    if (rc) {
        cli_unload(&L);
        return cli_fail(rc);
    }
    g_interrupted = 0;
    void (*old)(int) = signal(SIGINT, on_sigint);
    ep.interrupted = &g_interrupted;
    ep.progress = 1, ep.progress_s = cli_progress_interval(&o);
    rc = mev_eval_run(L.sess, L.tok, &ep, 0, stdout);
    signal(SIGINT, old);
    cli_unload(&L);
    if (rc) return cli_fail(rc);
    return g_interrupted ? 130 : 0;
}

/* ---- mtok demo: the needle model, a NIAH grid, the heatmap ---- */
int cmd_demo(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    const char *dir = NULL, *out = NULL;
    int64_t max_len = 65536;
    int spill = 1;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(argv[i], "--dir")) {
            if (!(dir = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--out")) {
            if (!(out = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--no-spill")) {
            spill = 0;
        } else if (!strcmp(argv[i], "--max-len")) {
            const char *v = cli_value(argc, argv, &i);
            if (!v || cli_parse_size("--max-len", v, 1024, CLI_MAX_TOKENS, &max_len)) return 1;
        } else
            return cli_usage_error("demo: unknown option '%s' (demo [--dir DIR] [--out DIR] [--max-len N] [--no-spill])",
                                   argv[i]);
    }
    char path[4200], cfg[4300], outp[4200];
    const char *base = getenv("XDG_CACHE_HOME");
    char cache[4096];
    if (base && *base) snprintf(cache, sizeof cache, "%s/mtok", base);
    else snprintf(cache, sizeof cache, "%s/.cache/mtok", getenv("HOME") ? getenv("HOME") : ".");
    if (!dir) {
        snprintf(path, sizeof path, "%s/needle", cache);
        dir = path;
    }
    if (!out) {
        snprintf(outp, sizeof outp, "%s/demo-niah", cache);
        out = outp;
    }
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (access(cfg, F_OK) != 0) {
        printf("synthesizing the needle model in %s ...\n", dir);
        mtok_synth_params sp = {.preset = "needle", .out_dir = dir, .naming = MTOK_NAMING_CHATGLM, .shards = 1,
                                .seed = 1, .dtype = MTOK_BF16};
        int rc = mtok_synth(&sp);
        if (rc) return cli_fail(rc);
    }
    o.model = dir;
    /* lengths 1K, 4K, 16K, ... up to max_len (x4 steps, the last one exactly max_len) */
    int64_t lengths[16];
    size_t nl = 0;
    for (int64_t L = 1024; L < max_len && nl < 15; L *= 4) lengths[nl++] = L;
    lengths[nl++] = max_len;
    static const double depths[] = {0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100};
    /* one document per length with a needle (its own key) at every depth, each key asked on its
     * own: one prefill per length, so 64K tokens x 11 depths fit in minutes on 2 cores */
    mev_niah_params np = {.lengths = lengths, .n_lengths = nl, .depths = depths, .n_depths = 11, .out_dir = out,
                          .needle_mode = 1, .progress = -1, .seed = 1, .all_depths = 1,
                          .title = "mtok demo: the planted needle model, fact retrieval across context lengths"};
    /* the KV cache: 2 KiB per token for this model (2 layers x 2 groups x 128 x K,V x bf16); an 8 MiB
     * hot tier keeps ~4K tokens in RAM, so most of a 64K cache lives on disk */
    if (cli_progress_interval(&o) < 0) np.progress = 0;
    if (spill && !o.kv_budget) o.kv_budget = 8u << 20;
    /* 2048-token prefill chunks: 4x fewer passes over the (mostly cold) cache than the default 512 */
    if (!o.chunk) o.chunk = 2048;
    if (!spill) o.kv_budget = 0;
    printf("model: %s (the planted needle model: 2 layers, 2x128 heads, 2 KV groups; docs/NEEDLE.md)\n", dir);
    printf("grid: %zu lengths up to %lld tokens x 11 depths (one document per length, a needle at every depth),"
           " %s attention\n", nl, (long long)max_len,
           o.kv_policy == 2 ? "topk (query-aware block selection)" : o.kv_policy == 1 ? "window" : "exact");
    if (o.kv_policy == 0 && max_len > 131072)
        printf("note: exact prefill is quadratic: past 128K tokens it takes hours on a few cores; "
               "--kv-policy topk makes it linear (docs/KVSTORE.md)\n");
    if (o.kv_budget)
        printf("KV cache: hot tier %.1f MiB in RAM, the rest spilled to %s (--kv-budget, --kv-dir, --no-spill)\n",
               (double)o.kv_budget / 1048576.0, o.kv_dir ? o.kv_dir : "$TMPDIR or /var/tmp");
    else
        printf("KV cache: all in RAM (--no-spill)\n");
    fflush(stdout);
    mev_niah_summary sum;
    int rc = run_grid(&o, &np, &sum);
    if (rc) return cli_fail(rc);
    printf("%zu cells, mean score %.3f, %.1f s%s; results in %s/results.jsonl\n", sum.done + sum.skipped,
           sum.mean_score, sum.seconds, sum.interrupted ? " (interrupted)" : "", out);
    return sum.interrupted ? 130 : 0;
}
