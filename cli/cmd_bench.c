/* cmd_bench.c — mtok bench: speed and memory figures, each against this machine's limits measured
 * in the same run (the machine is shared, so only same-run ratios mean anything).
 *
 *   mtok bench (-m DIR | --preset NAME [--synth-dir DIR] [--naming chatglm|hf] [--keep-synth]) [--prompt N[,N..]] [--gen N] [--depths D1,D2..] [--reps N] [--check-tokens N] [--json]
 *   mtok bench limits [--threads N] [--array-mb N] [--reps N] [--isa avx2|avx512|auto] [--json]
 *   mtok bench kv ...            (cold-tier benchmark, cli/cmd_kv.c)
 *   mtok bench --device cuda ... (the CUDA backend against the GPU's limits, cli/cmd_bench_cuda.c)
 *
 * The limits (kernels/cpu_limits.c) run in a forked child before and after the model phases, so their
 * arrays never count in the model's peak RSS; the better of the two runs is the limit. Every run also
 * checks correctness: the bench's SIMD logits (prefill GEMM path and decode GEMV path) against the
 * scalar kernels on the first --check-tokens prompt tokens; a mismatch exits 4.
 *
 * The limits include the compute peak of every instruction class the CPU has (kernels/limits_peaks.h:
 * fp32 FMA in ymm and zmm, bf16 and int8 dot products); a prefill's fraction is taken against the
 * class its kernels use (prefill_peak), and the JSON names that class. */
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "../kernels/kernels.h"
#include "../kernels/limits_peaks.h"

/* CPU seconds of this process (all threads): with wall time it tells whether the run had the cores
 * to itself, cpu_util = cpu_s / (wall_s x threads); spinning OpenMP waits count as CPU time. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Option ranges (docs/OPTIONS.md): prompt lengths and depths are token counts like --ctx; the decode
 * steps and the logits check are kept to what one run can time or hold. */
#define BENCH_MAX_TOKENS CLI_MAX_TOKENS   /* --prompt, --depths values */
#define BENCH_MAX_GEN ((int64_t)1 << 20)  /* --gen */
#define BENCH_MAX_CHECK ((int64_t)65536)  /* --check-tokens: 3 x tokens x vocab floats */
#define BENCH_MAX_REPS 100000             /* --reps */
#define BENCH_MAX_ARRAY_MB ((int64_t)1 << 20) /* --array-mb: 1 TiB per array */

/* ---- limits ---- */

/* mk_measure_limits in a forked child (its 3 arrays stay out of this process's RSS); in-process if
 * fork fails. */
static int limits_forked(const mk_limits_params *p, mk_limits_ex *out) {
    int fd[2];
    if (pipe(fd) == 0) {
        pid_t pid = fork();
        if (pid == 0) {
            close(fd[0]);
            mk_limits_ex r;
            int rc = mk_measure_limits_ex(p, &r);
            ssize_t w = rc ? 0 : write(fd[1], &r, sizeof r);
            _exit(w == (ssize_t)sizeof r ? 0 : 3);
        }
        close(fd[1]);
        if (pid > 0) {
            ssize_t got = 0, n;
            while (got < (ssize_t)sizeof *out && (n = read(fd[0], (char *)out + got, sizeof *out - got)) > 0) got += n;
            close(fd[0]);
            int st = 0;
            waitpid(pid, &st, 0);
            if (got == (ssize_t)sizeof *out && WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
            return mtok_err(MTOK_ERESOURCE, "bench limits: the measuring process failed (out of memory?)");
        }
        close(fd[0]);
    }
    return mk_measure_limits_ex(p, out);
}

/* The ISA of the kernels in use, as kernels/cpu_dispatch.c names it ("avx512", "avx2", "scalar"):
 * --isa, MTOK_ISA and --no-simd already applied. */
static const char *kernel_isa(void) { return mk_isa_name(); }

/* The instruction class a prefill of `dtype` weights runs on with the kernels of `isa`: the AVX-512
 * GEMM (kernels/avx512_gemm.c) takes bf16 weights through VDPBF16PS; f16 / f32 ones go to the AVX2
 * kernels at that level too (kernels/avx512_gemv.c says why), which widen every dtype for fp32 FMAs
 * in ymm; the scalar kernels are held to the machine's fp32 FMA peak. -1: no vector class was
 * measured (a CPU without AVX2): the portable FMA loop's figure, mk_limits.fma_gflops, is the limit. */
static int prefill_peak(const char *isa, mtok_dtype dtype, const mk_limits_ex *l) {
    int k = MK_PEAK_FMA_YMM;
    if (!strcmp(isa, "avx512") && dtype == MTOK_BF16) k = MK_PEAK_BF16_ZMM;
    return l->peak[k].available ? k : -1;
}
static const char *peak_label(int k) { return k >= 0 ? mk_peak_name(k) : "fp32_portable"; }
/* VDPBF16PS instructions per multiply-add of the model: 2 at the fp32 matmul precision (x = hi + lo,
 * kernels/avx512_gemv.c), 1 at bf16; every other class does one instruction lane per multiply-add. */
static int dots_per_product(int k) { return k == MK_PEAK_BF16_ZMM && mk_precision_active() == MK_PREC_FP32 ? 2 : 1; }
static double peak_value(int k, const mk_limits_ex *l) { return k >= 0 ? l->peak[k].gops : l->base.fma_gflops; }

/* "peaks": one object per instruction class, named as mk_peak_name: {"available": false} for a class
 * the machine lacks; else its best and mean rate (gflops for the float classes, gops for int8) and
 * the instruction timed. */
static json_t *limits_json(const mk_limits_ex *x) {
    const mk_limits *l = &x->base;
    json_t *j = json_pack("{s:f, s:f, s:f, s:f, s:i, s:I, s:b, s:b}", "triad_gbs", l->triad_gbs, "read_gbs",
                          l->read_gbs, "fma_gflops", l->fma_gflops, "fma_gflops_mean", l->fma_gflops_mean, "threads",
                          l->threads, "array_bytes", (json_int_t)l->array_bytes, "avx2", l->avx2, "verified",
                          l->verified);
    json_t *jp = json_object();
    for (int k = 0; k < MK_PEAK_N; k++) {
        const mk_peak *pk = &x->peak[k];
        json_t *o = json_pack("{s:b}", "available", pk->available);
        if (pk->available) {
            const int in = mk_peak_is_int(k);
            json_object_set_new(o, in ? "gops" : "gflops", json_real(pk->gops));
            json_object_set_new(o, in ? "gops_mean" : "gflops_mean", json_real(pk->gops_mean));
            json_object_set_new(o, "instruction", json_string(pk->insn));
        }
        json_object_set_new(jp, mk_peak_name(k), o);
    }
    json_object_set_new(j, "peaks", jp);
    return j;
}

static int print_json(json_t *j) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    if (!s) return 1;
    puts(s);
    free(s);
    return 0;
}

/* ---- mtok bench limits [--threads N] [--array-mb N] [--reps N] [--isa L] [--json] ---- */
static int bench_limits(int argc, char **argv) {
    mk_limits_params lp = {0};
    int js = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int64_t n;
        if (!strcmp(a, "--json")) js = 1;
        else if (!strcmp(a, "--isa")) { /* which kernels' peak class the report names (the peaks are all measured) */
            mk_isa isa;
            if (!(v = cli_value(argc, argv, &i))) return 1;
            if (mk_isa_parse(v, &isa) || isa == MK_ISA_SCALAR)
                return cli_usage_error("--isa must be avx2, avx512 or auto");
            if (mk_isa_set(isa)) return cli_usage_error("--isa %s: this CPU cannot run it", v);
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t") || !strcmp(a, "--array-mb") || !strcmp(a, "--reps")) {
            if (!(v = cli_value(argc, argv, &i))) return 1;
            const int64_t hi = !strcmp(a, "--array-mb") ? BENCH_MAX_ARRAY_MB
                               : !strcmp(a, "--reps")   ? BENCH_MAX_REPS
                                                        : cli_max_threads();
            if (cli_parse_int(a, v, 1, hi, &n)) return 1;
            if (!strcmp(a, "--array-mb")) lp.array_bytes = n << 20;
            else if (!strcmp(a, "--reps")) lp.reps = (int)n;
            else lp.threads = (int)n;
        } else
            return cli_usage_error("bench limits: unknown option '%s'", a);
    }
    mk_limits_ex lx;
    int rc = limits_forked(&lp, &lx);
    if (rc) return cli_fail(rc);
    const mk_limits l = lx.base;
    const char *isa = kernel_isa();
    if (js) {
        json_t *j = limits_json(&lx);
        json_object_set_new(j, "kernel_isa", json_string(isa));
        print_json(j);
        json_decref(j);
    } else {
        printf("threads %d (%s bandwidth and FMA loops), arrays 3 x %lld MiB\n", l.threads,
               l.avx2 ? "AVX2+FMA" : "portable", (long long)(l.array_bytes >> 20));
        printf("  STREAM triad      %8.1f GB/s\n  read-only         %8.1f GB/s\n  fp32 FMA peak     %8.1f GFLOP/s"
               " (mean of the reps %.1f GFLOP/s)\n",
               l.triad_gbs, l.read_gbs, l.fma_gflops, l.fma_gflops_mean);
        printf("peak per instruction class (best of the reps; mean):\n");
        for (int k = 0; k < MK_PEAK_N; k++) {
            const mk_peak *pk = &lx.peak[k];
            if (!pk->available) printf("  %-15s not available\n", mk_peak_name(k));
            else
                printf("  %-15s %8.1f %s (%.1f)  %s\n", mk_peak_name(k), pk->gops, mk_peak_is_int(k) ? "GOP/s  " : "GFLOP/s",
                       pk->gops_mean, pk->insn);
        }
        printf("kernels in use: %s; a prefill is measured against %s (bf16 weights), %s (f16)\n", isa,
               peak_label(prefill_peak(isa, MTOK_BF16, &lx)), peak_label(prefill_peak(isa, MTOK_F16, &lx)));
    }
    if (!l.verified) {
        fprintf(stderr, "mtok: error: bench limits: the kernels' results were wrong (triad or read-only sum)\n");
        return 4;
    }
    return 0;
}

/* ---- model bench ---- */

typedef struct {
    int64_t v[16];
    int n;
} i64_list;

/* "N,N,..": token counts in [min, BENCH_MAX_TOKENS], at most 16 */
static int parse_list(const char *flag, const char *s, i64_list *out, int64_t min) {
    out->n = 0;
    char buf[512];
    if (strlen(s) >= sizeof buf) return cli_usage_error("%s: the list is longer than %zu characters", flag, sizeof buf - 1), -1;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (out->n == 16) return cli_usage_error("%s: at most 16 values", flag), -1;
        if (cli_parse_size(flag, t, min, BENCH_MAX_TOKENS, &out->v[out->n])) return -1;
        out->n++;
    }
    if (!out->n) return cli_usage_error("%s: empty list", flag), -1;
    return 0;
}

static int64_t argmax(const float *x, int64_t n) {
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Work per token, from the shapes. */
typedef struct {
    double mm_flop;        /* 2 x (per-layer projections + MLP) x layers: every token */
    double out_flop;       /* 2 x vocab x hidden: tokens whose logits are computed */
    double attn_flop_key;  /* flops per (query token, visible key): 4 x heads x head_dim x layers */
    double weight_bytes;   /* bytes of weights one decode token reads (all but the embedding table) */
    double kv_bytes_key;   /* bytes of K and V per visible key, all layers */
} work_model;

static work_model work_of(const mtok_model *m) {
    const mtok_config *c = mtok_model_config(m);
    const double E = (double)c->hidden, qd = (double)(c->n_heads * c->head_dim),
                 kd = (double)(c->n_kv_groups * c->head_dim), F = (double)c->ffn, L = (double)c->n_layers;
    const double ds = (double)mtok_dtype_size(c->dtype);
    work_model w;
    w.mm_flop = 2.0 * L * (E * (qd + 2 * kd) + qd * E + 3 * F * E);
    w.out_flop = 2.0 * (double)c->vocab * E;
    w.attn_flop_key = 4.0 * (double)c->n_heads * (double)c->head_dim * L;
    /* everything mapped except the embedding table, of which one row is read */
    w.weight_bytes = (double)mtok_model_weight_bytes(m) - (double)c->vocab * E * ds + E * ds;
    w.kv_bytes_key = L * 2.0 * kd * 2.0; /* K and V, bf16 */
    return w;
}

/* Deterministic prompt ids in [0, vocab): speed does not depend on the text. */
static void make_ids(int32_t *ids, int64_t n, int64_t vocab) {
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)vocab);
    }
}

/* Correctness: logits of the first n ids through the SIMD prefill (GEMM path, all rows) and through
 * token-by-token decode (GEMV path, first n_dec rows) against the scalar kernels. */
/* The worst position of n prefill rows pf and n_dec decode rows dec against the reference rows ref
 * (decode row t against ref row t): the smallest cosine and the largest |g - r| / max|r|. */
static void compare_logits(const float *pf, const float *dec, const float *ref, int64_t n, int64_t n_dec, int64_t V,
                           double *min_cos_out, double *max_rel_out) {
    double min_cos = 1.0, max_rel = 0.0;
    for (int64_t t = 0; t < n + n_dec; t++) {
        const float *g = t < n ? pf + t * V : dec + (t - n) * V, *r = ref + (t < n ? t : t - n) * V;
        double gg = 0, rr = 0, gr = 0, amax = 0, dmax = 0;
        for (int64_t i = 0; i < V; i++) {
            gg += (double)g[i] * g[i], rr += (double)r[i] * r[i], gr += (double)g[i] * r[i];
            amax = fmax(amax, fabs(r[i]));
            dmax = fmax(dmax, fabs((double)g[i] - r[i]));
        }
        const double cs = gr / (sqrt(gg * rr) + 1e-300);
        if (!(cs >= min_cos)) min_cos = cs; /* NaN sticks */
        if (!(dmax / (amax + 1e-30) <= max_rel)) max_rel = dmax / (amax + 1e-30);
    }
    *min_cos_out = min_cos, *max_rel_out = max_rel;
}

static int check_logits(mtok_session *s, const int32_t *ids, int64_t n, int no_simd, json_t **out, int *ok) {
    const int64_t V = mtok_session_config(s)->vocab, n_dec = n < 4 ? n : 4;
    float *pf = malloc((size_t)(n * V) * sizeof *pf), *ref = malloc((size_t)(n * V) * sizeof *ref);
    float *dec = malloc((size_t)(n_dec * V) * sizeof *dec);
    int rc = 0;
    if (!pf || !ref || !dec) {
        rc = mtok_err(MTOK_ERESOURCE, "bench: out of memory for the logits check");
        goto done;
    }
    mtok_session_reset(s);
    if ((rc = mtok_forward(s, ids, n, pf))) goto done;
    mtok_session_reset(s);
    for (int64_t t = 0; t < n_dec; t++) {
        if ((rc = mtok_forward(s, ids + t, 1, NULL))) goto done;
        memcpy(dec + t * V, mtok_session_logits(s), (size_t)V * sizeof *dec);
    }
    /* the scalar kernels at the same matmul precision: at bf16 they round x as VDPBF16PS does
     * (kernels/cpu_dispatch.c), so the check compares like with like at either precision */
    mk_force_scalar(1);
    mtok_session_reset(s);
    rc = mtok_forward(s, ids, n, ref);
    mk_force_scalar(no_simd);
    if (rc) goto done;
    double min_cos, max_rel;
    compare_logits(pf, dec, ref, n, n_dec, V, &min_cos, &max_rel);
    /* the parity tests' tolerance: a different summation order may flip one bf16 rounding of a
     * cached K/V value (1-cos ~ 1e-6); a wrong kernel costs 1-cos > 1e-3. At the bf16 precision every
     * activation entering a product is such a rounding, and the flips that summation order causes
     * compound through the layers: 1-cos 1.5e-4 to 2.3e-4 between the SIMD and scalar kernels on the
     * synthetic glm4-1b (7e-6 to 1e-5 on the test fixtures; docs/PERFORMANCE.md, "AVX-512 kernels"),
     * so that precision is held to 1e-3 and 5e-2, still below what a wrong kernel costs. */
    const mk_precision prec = mk_precision_active();
    const int bf16x = prec == MK_PREC_BF16 && mtok_session_config(s)->dtype == MTOK_BF16;
    const double tol_cos = bf16x ? 1e-3 : 1e-4, tol_rel = bf16x ? 5e-2 : 2e-2;
    *ok = min_cos > 1.0 - tol_cos && max_rel < tol_rel;
    *out = json_pack("{s:I, s:I, s:f, s:f, s:b, s:s, s:f, s:f}", "prefill_tokens", (json_int_t)n, "decode_tokens",
                     (json_int_t)n_dec, "min_cos", isfinite(min_cos) ? min_cos : -1.0, "max_rel_diff",
                     isfinite(max_rel) ? max_rel : 1e30, "ok", *ok, "matmul_precision", mk_precision_str(prec),
                     "tol_one_minus_cos", tol_cos, "tol_rel_diff", tol_rel);
    if (bf16x) {
        /* what the bf16 precision costs: the same logits against the scalar fp32 products (reported,
         * not judged: docs/PERFORMANCE.md, "AVX-512 kernels", gives the figures it runs at) */
        mk_force_scalar(1);
        mk_precision_set(MK_PREC_FP32);
        mtok_session_reset(s);
        rc = mtok_forward(s, ids, n, ref);
        mk_precision_set(prec);
        mk_force_scalar(no_simd);
        if (rc) goto done;
        compare_logits(pf, dec, ref, n, n_dec, V, &min_cos, &max_rel);
        json_object_set_new(*out, "vs_fp32", json_pack("{s:f, s:f}", "min_cos", isfinite(min_cos) ? min_cos : -1.0,
                                                       "max_rel_diff", isfinite(max_rel) ? max_rel : 1e30));
    }
done:
    free(pf), free(ref), free(dec);
    return rc;
}

typedef struct {
    cli_common o;
    i64_list prompts, depths;
    int64_t gen, check_tokens;
    int reps, js;
    mk_limits_params lp;
} bench_opts;

/* One model bench run: what its steps share. */
typedef struct {
    bench_opts *B;
    cli_loaded L;
    const mtok_config *c;
    work_model W;
    int32_t *ids;  /* [need] deterministic prompt ids */
    int64_t need;  /* tokens the run needs: the longest prompt, depth + gen, or check */
    int threads;   /* B->lp.threads: the team size the figures are divided by */
} bench_run;

/* The context the run needs; --ctx, when given, must hold it. Sets the thread count of the limits
 * and of the matmuls. */
static int bench_plan(bench_opts *B, int64_t *need_out) {
    int64_t need = 0;
    for (int i = 0; i < B->prompts.n; i++) need = B->prompts.v[i] > need ? B->prompts.v[i] : need;
    for (int i = 0; i < B->depths.n; i++) need = B->depths.v[i] + B->gen > need ? B->depths.v[i] + B->gen : need;
    if (B->check_tokens > need) need = B->check_tokens;
    if (B->o.ctx && B->o.ctx < need)
        return cli_usage_error("bench: --ctx %lld is below the %lld tokens the run needs", (long long)B->o.ctx,
                               (long long)need);
    if (!B->o.ctx) B->o.ctx = need;
    B->lp.threads = B->o.threads ? B->o.threads : omp_get_max_threads();
    *need_out = need;
    return 0;
}

/* Loads the model, makes the prompt ids, prints the model line and warms up: a prefill and a decode
 * step fault in every weight page and start the thread pool. */
static int bench_setup(bench_run *R) {
    bench_opts *B = R->B;
    int rc = cli_load(&B->o, 0, &R->L);
    if (rc) return rc;
    R->c = mtok_model_config(R->L.model);
    R->W = work_of(R->L.model);
    const mtok_config *c = R->c;
    if (!(R->ids = malloc((size_t)R->need * sizeof *R->ids)))
        return mtok_err(MTOK_ERESOURCE, "bench: out of memory for %lld prompt ids", (long long)R->need);
    make_ids(R->ids, R->need, c->vocab);
    if (!B->js) setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines as they come */
    if (!B->js)
        printf("model %s: %lld layers, hidden %lld, %lld heads x %lld dims, %lld KV groups, ffn %lld, vocab %lld, "
               "dtype %s\n",
               B->o.model, (long long)c->n_layers, (long long)c->hidden, (long long)c->n_heads,
               (long long)c->head_dim, (long long)c->n_kv_groups, (long long)c->ffn, (long long)c->vocab,
               mtok_dtype_name(c->dtype));
    const int64_t warm = R->need < 32 ? R->need : 32; /* a prefill and a decode step, within the context */
    mtok_session_reset(R->L.sess);
    if (warm > 1 && (rc = mtok_forward(R->L.sess, R->ids, warm - 1, NULL))) return rc;
    return mtok_forward(R->L.sess, R->ids, 1, NULL);
}

/* Prefill: for each --prompt length, the best of --reps runs from an empty session; TTFT = prefill
 * + picking the first token. One object per length into jpre. */
static int bench_prefill(bench_run *R, json_t *jpre) {
    const bench_opts *B = R->B;
    const int64_t V = R->c->vocab;
    for (int i = 0; i < B->prompts.n; i++) {
        const int64_t n = B->prompts.v[i];
        double best = INFINITY, ttft = INFINITY, cpu = 0, sum = 0;
        for (int r = 0; r < B->reps; r++) {
            mtok_session_reset(R->L.sess);
            /* the feed runs the same chunks mtok_forward would, and reports each one to the progress line */
            mtok_progress prog;
            mtok_progress_begin(&prog, "bench prefill", "tokens", n, B->o.progress_s);
            if (B->reps > 1) mtok_progress_note(&prog, "rep %d/%d", r + 1, B->reps);
            const mtok_request req = {.on_prefill = mtok_progress_prefill_cb, .user = &prog};
            const double c0 = cpu_s(), t0 = now_s();
            int rc = mtok_session_feed(R->L.sess, R->ids, n, &req, NULL);
            const double t1 = now_s();
            mtok_progress_end(&prog);
            if (rc) return rc;
            if (t1 - t0 < best) cpu = cpu_s() - c0;
            volatile int64_t first = argmax(mtok_session_logits(R->L.sess), V);
            (void)first;
            best = fmin(best, t1 - t0);
            sum += t1 - t0;
            ttft = fmin(ttft, now_s() - t0);
        }
        /* the mean beside the best: on a shared host the two differ by what the neighbours took */
        const double mean = sum / B->reps;
        const double flop =
            R->W.mm_flop * (double)n + R->W.out_flop + R->W.attn_flop_key * (double)n * (double)(n + 1) / 2;
        json_array_append_new(jpre, json_pack("{s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "tokens",
                                              (json_int_t)n, "seconds", best, "tok_s", (double)n / best, "ttft_s",
                                              ttft, "gflop", flop * 1e-9, "gflops", flop / best * 1e-9, "cpu_s", cpu,
                                              "cpu_util", cpu / (best * R->threads), "seconds_mean", mean,
                                              "gflops_mean", flop / mean * 1e-9));
        if (!B->js)
            printf("prefill %6lld tokens: time %8.2f s  speed %8.1f tok/s  compute %7.1f GFLOP/s  ttft %.3f s  "
                   "cpu util %.0f%%\n",
                   (long long)n, best, (double)n / best, flop / best * 1e-9, ttft, 100 * cpu / (best * R->threads));
    }
    return 0;
}

/* The figures of one depth's decode steps (step[] sorted in place) as a json object; prints its line. */
static json_t *decode_figures(const bench_run *R, int64_t d, double *step, double sum, double cpu, double wall,
                              double fill_s, const mtok_kv_stats *k0, const mtok_kv_stats *k1) {
    const bench_opts *B = R->B;
    qsort(step, (size_t)B->gen, sizeof *step, cmp_double);
    const double med = step[B->gen / 2], tps = (double)B->gen / sum;
    /* keys visible to the steps: positions d..d+gen-1 each read p+1 keys; a sparse policy reads
     * what the session counted (bytes_attended) */
    const double keys = (double)d + ((double)B->gen + 1) / 2, gen = (double)B->gen;
    const double att = (double)(k1->bytes_attended - k0->bytes_attended) / gen;
    const double kvb = B->o.kv_policy ? att : R->W.kv_bytes_key * keys, gbs = (R->W.weight_bytes + kvb) * tps * 1e-9;
    json_t *jk = json_pack("{s:f, s:f, s:f, s:I}", "kv_bytes_read_per_token",
                           (double)((k1->bytes_read - k1->audit_bytes_read) - (k0->bytes_read - k0->audit_bytes_read)) / gen,
                           "kv_bytes_attended_per_token", att, "kv_bytes_exact_per_token",
                           (double)(k1->bytes_exact - k0->bytes_exact) / gen, "audit_steps",
                           (json_int_t)(k1->audit_steps - k0->audit_steps));
    if (k1->audit_rows > k0->audit_rows)
        json_object_set_new(jk, "audit_mass_mean", json_real((k1->audit_mass_mean * (double)k1->audit_rows -
                                                               k0->audit_mass_mean * (double)k0->audit_rows) /
                                                              (double)(k1->audit_rows - k0->audit_rows)));
    json_t *o = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "depth", (json_int_t)d, "tokens",
                          (json_int_t)B->gen, "tok_s", tps, "tok_s_median", 1.0 / med, "weight_bytes_per_token",
                          R->W.weight_bytes, "kv_bytes_per_token", kvb, "gbs", gbs, "fill_s", fill_s, "cpu_util",
                          cpu / (wall * R->threads));
    json_object_update(o, jk);
    json_decref(jk);
    if (!B->js)
        printf("decode at depth %6lld: speed %7.2f tok/s (median step %.2f tok/s)  memory %6.1f GB/s (%.0f MB weights + "
               "%.0f MB KV per token)  cpu util %.0f%%\n", (long long)d, tps, 1.0 / med, gbs, R->W.weight_bytes * 1e-6, kvb * 1e-6,
               100 * cpu / (wall * R->threads));
    return o;
}

/* Decode at each depth (ascending): keep the prefilled prefix, drop the previous depth's generated
 * tokens, prefill up to the depth, then time --gen greedy steps. One object per depth into jdec. */
static int bench_decode(bench_run *R, json_t *jdec) {
    const bench_opts *B = R->B;
    mtok_session *s = R->L.sess;
    const int64_t V = R->c->vocab;
    int64_t filled = 0;
    int rc = 0;
    mtok_session_reset(s);
    double *step = malloc((size_t)B->gen * sizeof *step);
    if (!step) return mtok_err(MTOK_ERESOURCE, "bench: out of memory");
    for (int i = 0; i < B->depths.n; i++) {
        const int64_t d = B->depths.v[i];
        if ((rc = mtok_session_truncate(s, filled))) break;
        const double tf = now_s();
        mtok_progress prog; /* filling a 32K or 1M depth takes long enough to want one */
        mtok_progress_begin(&prog, "bench fill", "tokens", d, B->o.progress_s);
        mtok_progress_skip(&prog, filled);
        mtok_progress_note(&prog, "to depth %lld", (long long)d);
        for (int64_t p = filled; p < d;) { /* in prompt-sized pieces, as a client would send them */
            const int64_t n = d - p < 4096 ? d - p : 4096;
            if ((rc = mtok_forward(s, R->ids + p, n, NULL))) break;
            p += n;
            mtok_progress_update(&prog, p);
        }
        mtok_progress_end(&prog);
        if (rc) break;
        const double fill_s = now_s() - tf;
        filled = d;
        int32_t tok = d > 0 ? (int32_t)argmax(mtok_session_logits(s), V) : R->ids[0];
        double sum = 0;
        mtok_kv_stats k0, k1;
        mtok_session_kv_stats(s, &k0);
        const double c0 = cpu_s(), w0 = now_s();
        for (int64_t g = 0; g < B->gen; g++) {
            const double t0 = now_s();
            if ((rc = mtok_forward(s, &tok, 1, NULL))) break;
            tok = (int32_t)argmax(mtok_session_logits(s), V);
            step[g] = now_s() - t0;
            sum += step[g];
        }
        if (rc) break;
        const double cpu = cpu_s() - c0, wall = now_s() - w0;
        mtok_session_kv_stats(s, &k1);
        json_array_append_new(jdec, decode_figures(R, d, step, sum, cpu, wall, fill_s, &k0, &k1));
    }
    free(step);
    return rc;
}

/* The limit is the better of the two runs (before and after the model phases). */
static mk_limits_ex limits_best(const mk_limits_ex *xa, const mk_limits_ex *xb) {
    mk_limits_ex x = *xa;
    const mk_limits *a = &xa->base, *b = &xb->base;
    mk_limits *lim = &x.base;
    lim->triad_gbs = fmax(a->triad_gbs, b->triad_gbs);
    lim->read_gbs = fmax(a->read_gbs, b->read_gbs);
    lim->fma_gflops = fmax(a->fma_gflops, b->fma_gflops);
    lim->fma_gflops_mean = 0.5 * (a->fma_gflops_mean + b->fma_gflops_mean);
    lim->verified = a->verified && b->verified;
    for (int k = 0; k < MK_PEAK_N; k++) {
        x.peak[k].gops = fmax(xa->peak[k].gops, xb->peak[k].gops);
        x.peak[k].gops_mean = 0.5 * (xa->peak[k].gops_mean + xb->peak[k].gops_mean);
    }
    return x;
}

/* Each prefill and decode figure as a fraction of the limit that bounds it: frac_peak against the
 * peak of the instruction class the prefill's kernels use (peak_gflops, named by the report's
 * "peak"), frac_fma_* against the fp32 FMA loop (ymm with AVX2) as before. */
static void add_fractions(json_t *jpre, json_t *jdec, const mk_limits *lim, double peak_gflops, int dots) {
    size_t k;
    json_t *e;
    json_array_foreach(jpre, k, e) {
        /* against the limit of the arithmetic done: the class's peak over its instructions per product */
        json_object_set_new(e, "frac_limit",
                            json_real(json_real_value(json_object_get(e, "gflops")) * dots / peak_gflops));
        json_object_set_new(e, "frac_peak", json_real(json_real_value(json_object_get(e, "gflops")) / peak_gflops));
        json_object_set_new(e, "frac_peak_mean",
                            json_real(json_real_value(json_object_get(e, "gflops_mean")) / peak_gflops));
        json_object_set_new(e, "frac_fma_peak", json_real(json_real_value(json_object_get(e, "gflops")) / lim->fma_gflops));
        json_object_set_new(e, "frac_fma_peak_mean",
                            json_real(json_real_value(json_object_get(e, "gflops_mean")) / lim->fma_gflops));
        /* a diagnostic, not the headline: the prefill's mean against the FMA loop's mean, i.e. against
         * what the host gave a loop with no memory traffic at all; on a quiet host it equals the above */
        json_object_set_new(e, "frac_fma_sustained",
                            json_real(json_real_value(json_object_get(e, "gflops_mean")) / lim->fma_gflops_mean));
    }
    double short_tps = 0;
    json_array_foreach(jdec, k, e) {
        const double gbs = json_real_value(json_object_get(e, "gbs")), tps = json_real_value(json_object_get(e, "tok_s"));
        if (k == 0) short_tps = tps;
        json_object_set_new(e, "frac_triad", json_real(gbs / lim->triad_gbs));
        json_object_set_new(e, "frac_read", json_real(gbs / lim->read_gbs));
        json_object_set_new(e, "tok_s_vs_first_depth", json_real(tps / short_tps));
    }
}

/* The "model" and "kv" objects of the report: the shapes, and the KV policy with its traffic. */
static json_t *model_json(const bench_run *R) {
    const mtok_config *c = R->c;
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:I}", "dir", R->B->o.model, "layers",
                     (json_int_t)c->n_layers, "hidden", (json_int_t)c->hidden, "heads", (json_int_t)c->n_heads,
                     "kv_groups", (json_int_t)c->n_kv_groups, "head_dim", (json_int_t)c->head_dim, "ffn",
                     (json_int_t)c->ffn, "vocab", (json_int_t)c->vocab, "dtype", mtok_dtype_name(c->dtype),
                     "weight_bytes", (json_int_t)mtok_model_weight_bytes(R->L.model));
}

static json_t *kv_json(const cli_common *o, const mtok_kv_stats *ks) {
    static const char *const pol[] = {"exact", "window", "topk"};
    json_t *jkv = json_pack("{s:s, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:I}", "policy",
                            pol[o->kv_policy >= 0 && o->kv_policy < 3 ? o->kv_policy : 0], "budget",
                            (json_int_t)o->kv_budget, "topk", (json_int_t)o->kv_topk, "sinks", (json_int_t)o->kv_sinks,
                            "window", (json_int_t)o->kv_window, "audit", o->kv_audit, "bytes_read",
                            (json_int_t)(ks->bytes_read - ks->audit_bytes_read), "bytes_attended",
                            (json_int_t)ks->bytes_attended, "bytes_exact", (json_int_t)ks->bytes_exact,
                            "summary_bytes", (json_int_t)ks->summary_bytes);
    json_object_set_new(jkv, "audit_steps", json_integer((json_int_t)ks->audit_steps));
    if (ks->audit_rows) {
        json_object_set_new(jkv, "audit_mass_min", json_real(ks->audit_mass_min));
        json_object_set_new(jkv, "audit_mass_mean", json_real(ks->audit_mass_mean));
    }
    return jkv;
}

/* The text summary after the progress lines: limits, fractions, memory and the check. */
static void print_summary(json_t *root, const mk_limits *lim, double rss, double kv_held, int ok) {
    size_t k;
    json_t *e;
    json_t *jpk = json_object_get(root, "peak");
    printf("limits (best of 2 runs, %d threads): triad %.1f GB/s, read %.1f GB/s, FMA %.1f GFLOP/s "
           "(mean of the reps %.1f GFLOP/s)\n",
           lim->threads, lim->triad_gbs, lim->read_gbs, lim->fma_gflops, lim->fma_gflops_mean);
    printf("prefill peak: %s %.1f GFLOP/s (%s kernels, %s weights, matmul precision %s: %lld instruction(s) per "
           "multiply-add, limit %.1f GFLOP/s)\n",
           json_string_value(json_object_get(jpk, "name")), json_real_value(json_object_get(jpk, "gflops")),
           json_string_value(json_object_get(jpk, "kernel_isa")), json_string_value(json_object_get(jpk, "dtype")),
           json_string_value(json_object_get(jpk, "matmul_precision")),
           (long long)json_integer_value(json_object_get(jpk, "dots_per_product")),
           json_real_value(json_object_get(jpk, "limit_gflops")));
    json_array_foreach(json_object_get(root, "prefill"), k, e)
        printf("  prefill %6lld tokens: %5.1f%% of the %s peak (mean of the reps %.1f%%); %5.1f%% of fp32 FMA peak "
               "(mean %.1f%%; %.1f%% of the FMA loop's mean)\n",
               (long long)json_integer_value(json_object_get(e, "tokens")),
               100 * json_real_value(json_object_get(e, "frac_peak")), json_string_value(json_object_get(jpk, "name")),
               100 * json_real_value(json_object_get(e, "frac_peak_mean")),
               100 * json_real_value(json_object_get(e, "frac_fma_peak")),
               100 * json_real_value(json_object_get(e, "frac_fma_peak_mean")),
               100 * json_real_value(json_object_get(e, "frac_fma_sustained")));
    json_array_foreach(json_object_get(root, "decode"), k, e)
        printf("  decode at depth %6lld: %5.1f%% of triad, %5.1f%% of read-only, %5.1f%% of the first depth's tok/s\n",
               (long long)json_integer_value(json_object_get(e, "depth")),
               100 * json_real_value(json_object_get(e, "frac_triad")),
               100 * json_real_value(json_object_get(e, "frac_read")),
               100 * json_real_value(json_object_get(e, "tok_s_vs_first_depth")));
    printf("memory: peak RSS %.1f MB, KV held %.1f MB\ncheck vs scalar kernels: %s\n", rss * 1e-6, kv_held * 1e-6,
           ok ? "ok" : "MISMATCH");
}

/* mtok bench -m DIR: limits, load and warm-up, prefill, decode at each depth, the memory figures,
 * the correctness check, limits again; then the report (JSON or text). */
static int bench_model(bench_opts *B) {
    bench_run R = {.B = B};
    json_t *root = json_object(), *jpre = json_array(), *jdec = json_array(), *jchk = NULL;
    mk_limits_ex lim0, lim1;
    int rc, ok = 0;
    if ((rc = bench_plan(B, &R.need))) {
        json_decref(root), json_decref(jpre), json_decref(jdec);
        return rc;
    }
    R.threads = B->lp.threads;

    if ((rc = limits_forked(&B->lp, &lim0))) goto fail;
    if ((rc = bench_setup(&R))) goto fail;
    if ((rc = bench_prefill(&R, jpre))) goto fail;
    if ((rc = bench_decode(&R, jdec))) goto fail;

    /* peak RSS and the KV traffic of the model phases, before the check allocates its logits */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const double rss = (double)ru.ru_maxrss * 1024.0;
    const double kv_held = (double)mtok_session_kv_bytes(R.L.sess);
    mtok_kv_stats ks;
    mtok_session_kv_stats(R.L.sess, &ks);

    const int64_t nchk = B->check_tokens < R.need ? B->check_tokens : R.need;
    if ((rc = check_logits(R.L.sess, R.ids, nchk, B->o.no_simd, &jchk, &ok))) goto fail;
    if ((rc = limits_forked(&B->lp, &lim1))) goto fail;

    const mk_limits_ex limx = limits_best(&lim0, &lim1);
    const mk_limits lim = limx.base;
    /* the kernels that ran the prefill, and the peak of their instruction class */
    const char *isa = kernel_isa();
    const int pk = prefill_peak(isa, R.c->dtype, &limx);
    add_fractions(jpre, jdec, &lim, peak_value(pk, &limx), dots_per_product(pk));
    json_t *jl = limits_json(&limx);
    json_object_set_new(jl, "before", limits_json(&lim0));
    json_object_set_new(jl, "after", limits_json(&lim1));
    json_object_set_new(root, "model", model_json(&R));
    json_object_set_new(root, "threads", json_integer(lim.threads));
    json_object_set_new(root, "simd", json_boolean(mk_have_avx2()));
    json_object_set_new(root, "peak", json_pack("{s:s, s:f, s:s, s:s, s:s, s:i, s:f}", "name", peak_label(pk), "gflops",
                                                peak_value(pk, &limx), "kernel_isa", isa, "dtype",
                                                mtok_dtype_name(R.c->dtype), "matmul_precision",
                                                mk_precision_str(mk_precision_active()), "dots_per_product",
                                                dots_per_product(pk), "limit_gflops",
                                                peak_value(pk, &limx) / dots_per_product(pk)));
    json_object_set_new(root, "limits", jl);
    json_object_set_new(root, "prefill", jpre);
    json_object_set_new(root, "decode", jdec);
    json_object_set_new(root, "peak_rss_bytes", json_integer((json_int_t)rss));
    json_object_set_new(root, "kv_bytes_held", json_integer((json_int_t)kv_held));
    json_object_set_new(root, "kv", kv_json(&B->o, &ks));
    json_object_set_new(root, "check", jchk);
    jpre = jdec = jchk = NULL;
    if (B->js) print_json(root);
    else print_summary(root, &lim, rss, kv_held, ok);
    json_decref(root);
    free(R.ids);
    cli_unload(&R.L);
    if (!ok || !lim.verified) {
        fprintf(stderr, "mtok: error: bench: %s\n",
                !ok ? "SIMD logits differ from the scalar kernels (see \"check\")" : "the limit kernels' results were wrong");
        return 4;
    }
    return 0;
fail:
    json_decref(root), json_decref(jpre), json_decref(jdec), json_decref(jchk);
    free(R.ids);
    cli_unload(&R.L);
    return cli_fail(rc);
}

/* ---- mtok bench: dispatch ---- */
int cmd_bench(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "kv")) return cmd_bench_kv(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "limits")) return bench_limits(argc - 1, argv + 1);
    /* --device cuda[:N]: the GPU's own bench (its limits, phases and defaults differ); in a build
     * without CUDA its option parsing refuses the device with the reason */
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--device") && !strncmp(argv[i + 1], "cuda", 4)) return cmd_bench_cuda(argc, argv);
    bench_opts B = {.gen = 32, .check_tokens = 32, .reps = 1};
    bench_synth_opts so = {0};
    cli_common_defaults(&B.o);
    B.o.log_level = 0;
    mtok_set_log_level(0);
    parse_list("--prompt", "512", &B.prompts, 1);
    parse_list("--depths", "0,4096,16384,32768", &B.depths, 0);
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&B.o, argc, argv, &i);
        if (!r) r = bench_synth_opt(&so, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        const char *a = argv[i], *v;
        int64_t n;
        if (!strcmp(a, "--json")) B.js = 1;
        else if (!strcmp(a, "--prompt")) {
            if (!(v = cli_value(argc, argv, &i)) || parse_list(a, v, &B.prompts, 1)) return 1;
        } else if (!strcmp(a, "--depths")) {
            if (!(v = cli_value(argc, argv, &i)) || parse_list(a, v, &B.depths, 0)) return 1;
        } else if (!strcmp(a, "--gen") || !strcmp(a, "--reps") || !strcmp(a, "--check-tokens") ||
                   !strcmp(a, "--array-mb")) {
            if (!(v = cli_value(argc, argv, &i))) return 1;
            const int64_t hi = !strcmp(a, "--gen")            ? BENCH_MAX_GEN
                               : !strcmp(a, "--reps")         ? BENCH_MAX_REPS
                               : !strcmp(a, "--check-tokens") ? BENCH_MAX_CHECK
                                                              : BENCH_MAX_ARRAY_MB;
            if (!strcmp(a, "--gen") || !strcmp(a, "--check-tokens") ? cli_parse_size(a, v, 1, hi, &n)
                                                                     : cli_parse_int(a, v, 1, hi, &n))
                return 1;
            if (!strcmp(a, "--gen")) B.gen = n;
            else if (!strcmp(a, "--reps")) B.reps = (int)n;
            else if (!strcmp(a, "--array-mb")) B.lp.array_bytes = n << 20;
            else B.check_tokens = n;
        } else
            return cli_usage_error("bench: unknown option '%s'", a);
    }
    if (!B.o.model == !so.preset)
        return cli_usage_error("bench needs one of -m DIR and --preset NAME (or: bench limits, bench kv)");
    if ((so.dir || so.keep) && !so.preset) return cli_usage_error("--synth-dir and --keep-synth go with --preset");
    /* ascending depths: each one extends the previous prefix */
    for (int i = 1; i < B.depths.n; i++)
        for (int j = i; j > 0 && B.depths.v[j] < B.depths.v[j - 1]; j--) {
            const int64_t t = B.depths.v[j];
            B.depths.v[j] = B.depths.v[j - 1], B.depths.v[j - 1] = t;
        }
    char dir[4096];
    double secs;
    if (so.preset) {
        const int rc = bench_synth(&so, dir, sizeof dir, &secs);
        if (rc) {
            bench_synth_remove();
            return cli_fail(rc);
        }
        fprintf(stderr, "mtok: bench: synthesized %s into %s in %.1f s%s\n", so.preset, dir, secs,
                so.keep ? " (kept)" : " (removed at the end)");
        B.o.model = dir;
    }
    const int rc = bench_model(&B);
    bench_synth_remove();
    return rc;
}
