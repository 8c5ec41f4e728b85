/* common.c — what every cli/cmd_*.c shares: usage errors and exit codes, the ranged numeric option
 * parsers (docs/OPTIONS.md), the common options, reading a file, loading a model (one rank or a
 * tp x cp job). cli/main.c only dispatches; nothing here calls back into it. */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "cli.h"
#include "../kernels/kernels.h"
#include "../parallel/parallel.h"
#include "../parallel/layout.h"

int cli_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("mtok: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (mtok --help for usage)\n", stderr);
    va_end(ap);
    return 1;
}

int cli_fail(int rc) {
    fprintf(stderr, "mtok: error: %s\n", mtok_errmsg());
    switch (rc) {
    case MTOK_EUSAGE: return 1;
    case MTOK_EINPUT: return 2;
    case MTOK_ERESOURCE: return 3;
    default: return 4;
    }
}

const char *cli_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_usage_error("option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

/* ---- numeric options (docs/OPTIONS.md) ----
 * Every numeric option goes through these parsers: base 10 only, the whole argument consumed, and the
 * value inside the option's documented range before it reaches an allocation, a division or a
 * narrowing cast. Unchecked values did all three (issue 16: --chunk 2^62 corrupted the heap,
 * --kv-block 2^62 divided by a truncated zero, --threads 4294967297 became 1, --kv-budget 9000000000G
 * wrapped negative, --rope-base nan was ignored and inf used). */
static int out_of_range(const char *flag, const char *s, int64_t lo, int64_t hi) {
    return cli_usage_error("%s: %s is out of range [%lld, %lld]", flag, s, (long long)lo, (long long)hi), -1;
}

/* suffix: 1 accepts K/M/G/T (powers of 1024) for sizes and token counts */
static int parse_int(const char *flag, const char *s, int64_t lo, int64_t hi, int suffix, int64_t *out) {
    char *end;
    errno = 0;
    /* strtoll skips leading blanks; a value must start with its sign or first digit */
    long long v = (*s == '-' || *s == '+' || (*s >= '0' && *s <= '9')) ? strtoll(s, &end, 10) : (end = (char *)s, 0);
    const int range = errno == ERANGE;
    int64_t mul = 1;
    if (suffix && end != s) {
        switch (*end) {
        case 'K': case 'k': mul = (int64_t)1 << 10, end++; break;
        case 'M': case 'm': mul = (int64_t)1 << 20, end++; break;
        case 'G': case 'g': mul = (int64_t)1 << 30, end++; break;
        case 'T': case 't': mul = (int64_t)1 << 40, end++; break;
        }
    }
    if (end == s || *end)
        return cli_usage_error("%s: '%s' is not an integer%s", flag, s, suffix ? " (K/M/G/T suffixes allowed)" : ""), -1;
    if (range || v > INT64_MAX / mul || v < INT64_MIN / mul || v * mul < lo || v * mul > hi)
        return out_of_range(flag, s, lo, hi);
    *out = (int64_t)v * mul;
    return 0;
}

int cli_parse_int(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    return parse_int(flag, s, lo, hi, 0, out);
}

int cli_parse_size(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    return parse_int(flag, s, lo, hi, 1, out);
}

int cli_parse_u64(const char *flag, const char *s, uint64_t *out) {
    char *end = (char *)s;
    errno = 0;
    /* digits only: strtoull would take "-1" as 2^64-1 */
    unsigned long long v = (*s >= '0' && *s <= '9') ? strtoull(s, &end, 10) : 0;
    const int negative = *s == '-' && s[1] >= '0' && s[1] <= '9';
    if (!negative && (end == s || *end)) return cli_usage_error("%s: '%s' is not an integer", flag, s), -1;
    if (negative || errno == ERANGE)
        return cli_usage_error("%s: %s is out of range [0, %llu]", flag, s, (unsigned long long)UINT64_MAX), -1;
    *out = (uint64_t)v;
    return 0;
}

int cli_parse_real(const char *flag, const char *s, double lo, double hi, int lo_open, double *out) {
    char *end;
    double v = strtod(s, &end);
    /* decimal only: strtod would also take leading blanks and hexadecimal floats */
    if (end == s || *end || isspace((unsigned char)*s) || strpbrk(s, "xX"))
        return cli_usage_error("%s: '%s' is not a number", flag, s), -1;
    if (!isfinite(v)) return cli_usage_error("%s: %s is not a finite number", flag, s), -1;
    /* an underflow (ERANGE with a tiny or zero result) is judged by the value strtod returned */
    if ((lo_open ? !(v > lo) : !(v >= lo)) || !(v <= hi))
        return cli_usage_error("%s: %s is out of range %c%g, %g]", flag, s, lo_open ? '(' : '[', lo, hi), -1;
    *out = v;
    return 0;
}

/* A real option stored as float: the range must hold after the conversion too ((float)1e-50 is 0). */
static int parse_float(const char *flag, const char *s, double lo, double hi, int lo_open, float *out) {
    double d;
    if (cli_parse_real(flag, s, lo, hi, lo_open, &d)) return -1;
    const double f = (double)(float)d;
    if (lo_open ? !(f > lo) : !(f >= lo))
        return cli_usage_error("%s: %s is out of range %c%g, %g] (as a 32-bit float it is %g)", flag, s,
                               lo_open ? '(' : '[', lo, hi, f), -1;
    *out = (float)d;
    return 0;
}

int cli_max_threads(void) {
    /* OpenMP's thread-limit-var may be lower than ours (OMP_THREAD_LIMIT); 100000 threads crashed
     * inside the OpenMP runtime */
    const int lim = omp_get_thread_limit();
    return lim > 0 && lim < CLI_MAX_THREADS ? lim : CLI_MAX_THREADS;
}

void cli_common_defaults(cli_common *o) {
    memset(o, 0, sizeof *o);
    o->log_level = 1;
    o->temperature = 0.0f; /* greedy unless asked: reproducible by default */
    o->top_p = 1.0f;
    o->rep_pen = 1.0f;
    o->seed = 42;
    o->n_gen = 128;
    o->progress_s = MTOK_PROGRESS_INTERVAL;
}

double cli_progress_interval(const cli_common *o) { return o->log_level <= 0 ? -1 : o->progress_s; }

int cli_common_opt(cli_common *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    int64_t n;
    double d;
#define VAL() \
    if (!(v = cli_value(argc, argv, i))) return -1
/* NAME: an integer option in [LO, HI] (PARSE: cli_parse_int or cli_parse_size) stored in FIELD */
#define INT_OPT(NAME, PARSE, LO, HI, FIELD)              \
    else if (!strcmp(a, NAME)) {                         \
        VAL();                                           \
        if (PARSE(a, v, LO, HI, &n)) return -1;          \
        FIELD = n;                                       \
    }
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
        VAL();
        o->model = v;
    } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
        VAL();
        if (cli_parse_int(a, v, 1, cli_max_threads(), &n)) return -1;
        o->threads = (int)n;
    }
    INT_OPT("--ctx", cli_parse_size, 1, CLI_MAX_CTX, o->ctx)
    INT_OPT("--chunk", cli_parse_size, 1, CLI_MAX_CHUNK, o->chunk)
    INT_OPT("--kv-block", cli_parse_size, 1, CLI_MAX_KV_BLOCK, o->kv_block)
    INT_OPT("-n", cli_parse_size, 1, CLI_MAX_TOKENS, o->n_gen)
    INT_OPT("--max-new", cli_parse_size, 1, CLI_MAX_TOKENS, o->n_gen)
    INT_OPT("--top-k", cli_parse_int, 0, CLI_MAX_TOKENS, o->top_k)
    INT_OPT("--kv-budget", cli_parse_size, 0, CLI_MAX_KV_BUDGET, o->kv_budget)
    INT_OPT("--kv-sinks", cli_parse_size, 0, CLI_MAX_TOKENS, o->kv_sinks)
    INT_OPT("--kv-window", cli_parse_size, 0, CLI_MAX_TOKENS, o->kv_window)
    INT_OPT("--kv-depth", cli_parse_int, 0, CLI_MAX_KV_DEPTH, o->kv_depth)
    INT_OPT("--kv-topk", cli_parse_int, 1, CLI_MAX_TOKENS, o->kv_topk)
    INT_OPT("--tp", cli_parse_int, 1, CLI_MAX_RANKS, o->tp)
    INT_OPT("--cp", cli_parse_int, 1, CLI_MAX_RANKS, o->cp)
    INT_OPT("--cp-span", cli_parse_size, 1, CLI_MAX_CP_SPAN, o->cp_span)
    INT_OPT("--log-level", cli_parse_int, 0, 3, o->log_level)
    else if (!strcmp(a, "--seed")) {
        VAL();
        if (cli_parse_u64(a, v, &o->seed)) return -1;
    } else if (!strcmp(a, "--rope-base")) {
        VAL();
        if (cli_parse_real(a, v, 0, CLI_MAX_ROPE_BASE, 1, &d)) return -1;
        o->rope_base = d;
    } else if (!strcmp(a, "--temperature") || !strcmp(a, "--temp")) {
        VAL();
        if (parse_float(a, v, 0, 100, 0, &o->temperature)) return -1;
    } else if (!strcmp(a, "--top-p")) {
        VAL();
        if (parse_float(a, v, 0, 1, 1, &o->top_p)) return -1;
    } else if (!strcmp(a, "--repetition-penalty")) {
        VAL();
        if (parse_float(a, v, 0, 100, 1, &o->rep_pen)) return -1;
    } else if (!strcmp(a, "--kv-audit")) {
        VAL();
        if (cli_parse_real(a, v, 0, 1, 0, &o->kv_audit)) return -1;
    } else if (!strcmp(a, "--progress-interval")) {
        VAL();
        if (cli_parse_real(a, v, 0, 86400, 0, &d)) return -1;
        o->progress_s = d;
    } else if (!strcmp(a, "--no-progress")) {
        o->progress_s = -1;
    } else if (!strcmp(a, "--kv-dir")) {
        VAL();
        o->kv_dir = v;
    } else if (!strcmp(a, "--kv-fault")) {
        VAL();
        o->kv_fault = v;
    } else if (!strcmp(a, "--kv-io")) {
        VAL();
        if (!strcmp(v, "auto")) o->kv_io = 0;
        else if (!strcmp(v, "uring") || !strcmp(v, "io_uring")) o->kv_io = 1;
        else if (!strcmp(v, "threads")) o->kv_io = 2;
        else return cli_usage_error("--kv-io must be auto, uring or threads"), -1;
    } else if (!strcmp(a, "--kv-policy")) {
        VAL();
        if (!strcmp(v, "exact")) o->kv_policy = 0;
        else if (!strcmp(v, "window")) o->kv_policy = 1;
        else if (!strcmp(v, "topk")) o->kv_policy = 2;
        else return cli_usage_error("--kv-policy must be exact, window or topk"), -1;
    } else if (!strcmp(a, "--ignore-eos")) {
        o->ignore_eos = 1;
    } else if (!strcmp(a, "--no-simd")) {
        o->no_simd = 1;
    } else if (!strcmp(a, "--isa")) {
        VAL();
        mk_isa isa;
        if (mk_isa_parse(v, &isa) || isa == MK_ISA_SCALAR)
            return cli_usage_error("--isa must be avx2, avx512 or auto (--no-simd for the scalar kernels)"), -1;
        /* auto: the default level (the CPU's highest, kernels/cpu_dispatch.c), whatever MTOK_ISA says */
        if (!strcmp(v, "auto") && isa > mk_isa_cpu()) isa = mk_isa_cpu();
        if (mk_isa_set(isa)) {
            char feat[256];
            mk_cpu_features(feat, sizeof feat);
            return cli_usage_error("--isa %s: this CPU cannot run it (it has: %s)", v, feat[0] ? feat : "none"), -1;
        }
        o->isa = v;
    } else if (!strcmp(a, "--matmul-precision")) {
        VAL();
        mk_precision p;
        if (mk_precision_parse(v, &p))
            return cli_usage_error("--matmul-precision must be fp32 or bf16"), -1;
        mk_precision_set(p);
        o->matmul_precision = v;
    } else if (!strcmp(a, "--device")) {
        VAL();
        int dev;
        if (mtok_device_parse(v, &dev)) return cli_usage_error("%s", mtok_errmsg()), -1;
        o->device = v;
    } else if (!strcmp(a, "--vision-device")) {
        VAL();
        int dev;
        /* mtok_device_parse's message names "--device NAME: ...": said of this option instead */
        if (mtok_device_parse(v, &dev)) {
            const char *e = mtok_errmsg();
            return cli_usage_error("--vision-%s", strncmp(e, "--", 2) ? e : e + 2), -1;
        }
        o->vision_device = v;
    } else if (!strcmp(a, "-v")) {
        o->log_level = 2;
    } else if (!strcmp(a, "-q")) {
        o->log_level = 0;
    } else {
        return 0;
    }
#undef INT_OPT
#undef VAL
    mtok_set_log_level(o->log_level);
    mk_force_scalar(o->no_simd);
    return 1;
}

int cli_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return mtok_err(MTOK_EINPUT, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    for (;;) {
        if (!b) {
            fclose(f);
            return mtok_err(MTOK_ERESOURCE, "%s: out of memory reading the file", path);
        }
        n += fread(b + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        cap *= 2;
        char *nb = realloc(b, cap);
        if (!nb) free(b);
        b = nb;
    }
    const int bad = ferror(f), err = errno; /* e.g. EISDIR: fopen opens a directory, fread fails */
    fclose(f);
    if (bad) {
        free(b);
        return mtok_err(MTOK_EINPUT, "%s: read error (%s)", path, strerror(err));
    }
    b[n] = 0;
    *data = b;
    *len = n;
    return 0;
}

/* The job's ranks, when launched by mpirun/srun or asked for with --tp/--cp, laid out by
 * parallel/layout.h (rank r holds tensor-parallel slice r % tp of context-parallel share r / tp). */
static int cli_parallel(const cli_common *o, cli_loaded *L, int *tp_rank, int *threads) {
    const int tp = o->tp > 0 ? o->tp : 1, cp = o->cp > 0 ? o->cp : 1;
    const char *launched = getenv("OMPI_COMM_WORLD_SIZE");
    if (!launched) launched = getenv("PMI_SIZE");
    if (tp * cp == 1 && (!launched || atoi(launched) <= 1)) return 0;
    int rc = mp_world_init(NULL, NULL, tp * cp > 1, &L->world);
    if (rc) return rc;
    const int size = mp_size(L->world), rank = mp_rank(L->world);
    mp_layout lay;
    if ((rc = mp_layout_init(&lay, tp, cp, rank, size, o->cp_span))) /* the message in the user's terms: */
        return size != tp * cp ? mtok_err(MTOK_EUSAGE, "the job has %d rank%s but --tp %d x --cp %d = %d (launch with "
                                          "mpirun -np %d)", size, size == 1 ? "" : "s", tp, cp, tp * cp, tp * cp)
                               : rc;
    char desc[512];
    mp_bind(L->world, o->threads, -1, desc, sizeof desc);
    mtok_log(1, "rank %d of %d: %s", rank, size, desc);
    /* OpenMP counted its cores before the binding (and mpirun may have bound each rank to one):
     * without --threads, use the cores this rank was given */
    if (o->threads <= 0) *threads = mp_bound_cores();
    if (rank != 0 && o->log_level < 2) mtok_set_log_level(0); /* rank 0 speaks for the job */
    *tp_rank = lay.tp_rank;
    return mp_layout_split(&lay, L->world, &L->tp_comm, &L->cp_comm);
}

int cli_kv_dir_ready(const cli_common *o) {
    if (!o->kv_dir || !o->kv_dir[0]) return 0;
    char path[4096];
    if (snprintf(path, sizeof path, "%s", o->kv_dir) >= (int)sizeof path)
        return mtok_err(MTOK_EINPUT, "--kv-dir %s: path too long", o->kv_dir);
    /* mkdir -p: each parent, then the directory itself; existing ones are fine */
    for (char *p = path + 1;; p++) {
        if (*p && *p != '/') continue;
        const char c = *p;
        *p = 0;
        struct stat st;
        if (mkdir(path, 0777) && errno != EEXIST)
            return mtok_err(MTOK_EINPUT, "--kv-dir %s: cannot create %s: %s", o->kv_dir, path, strerror(errno));
        if (stat(path, &st) || !S_ISDIR(st.st_mode))
            return mtok_err(MTOK_EINPUT, "--kv-dir %s: %s is not a directory", o->kv_dir, path);
        if (!(*p = c)) break;
    }
    return 0;
}

int cli_load(const cli_common *o, int need_tokenizer, cli_loaded *L) {
    memset(L, 0, sizeof *L);
    if (!o->model) return mtok_err(MTOK_EUSAGE, "no model: pass -m DIR (a checkpoint directory)");
    int tp_rank = 0, threads = o->threads;
    int rc = cli_kv_dir_ready(o);
    if (rc) return rc;
    rc = cli_parallel(o, L, &tp_rank, &threads);
    const int leader = !L->world || mp_rank(L->world) == 0;
    mtok_load_params lp = {.rope_base = o->rope_base, .tp_rank = tp_rank, .tp_size = o->tp > 0 ? o->tp : 1};
    if (!rc) rc = mtok_model_load(o->model, &lp, &L->model);
    if (!rc && need_tokenizer && leader) rc = mtok_tokenizer_load(o->model, &L->tok);
    if (!rc) {
        mtok_session_params sp = {.ctx = o->ctx, .threads = threads, .prefill_chunk = o->chunk,
                                  .kv_block = o->kv_block, .kv_budget = o->kv_budget, .kv_dir = o->kv_dir,
                                  .kv_io = o->kv_io, .kv_policy = o->kv_policy, .kv_sinks = o->kv_sinks,
                                  .kv_window = o->kv_window, .kv_depth = o->kv_depth, .kv_fault = o->kv_fault,
                                  .kv_topk = o->kv_topk, .kv_audit = o->kv_audit, .world = L->world,
                                  .tp_comm = L->tp_comm, .cp_comm = L->cp_comm, .cp_span = o->cp_span,
                                  .device = o->device};
        rc = mtok_session_create(L->model, &sp, &L->sess);
    }
    if (rc && L->world && mp_size(L->world) > 1) {
        /* the other ranks may already wait for this one: end the job with the message */
        char msg[600];
        snprintf(msg, sizeof msg, "%s", mtok_errmsg());
        mp_abort(L->world, rc, msg);
    }
    if (!rc && !leader) {
        /* serve rank 0's session until it is freed, then leave quietly */
        rc = mtok_session_serve(L->sess);
        cli_unload(L);
        exit(rc ? cli_fail(rc) : 0);
    }
    if (rc) cli_unload(L);
    return rc;
}

void cli_unload(cli_loaded *L) {
    mtok_session_free(L->sess);
    mtok_tokenizer_free(L->tok);
    mtok_model_free(L->model);
    if (L->world) mp_world_finalize(L->world); /* frees tp_comm and cp_comm too */
    memset(L, 0, sizeof *L);
}
