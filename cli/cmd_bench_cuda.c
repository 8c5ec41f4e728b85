/* cmd_bench_cuda.c — mtok bench --device cuda: the CUDA backend's figures, each against a limit of the
 * same device measured in the same run (core/limits_cuda.h), as the CPU bench does with the host's.
 *
 *   mtok bench --device cuda[:N] (-m DIR | --preset NAME [--synth-dir DIR] [--naming chatglm|hf] [--keep-synth])
 *              [--chunk N] [--depths D,..] [--topk-depths D,..|none] [--gen N] [--reps N] [--stage-steps N]
 *              [--check-tokens N] [--limits-copy-mb N] [--limits-gemm M,N,K] [--json] [--json-out FILE]
 *
 * Phases, in order (a failing phase is recorded under "errors" and the next ones still run, so a run
 * cut short still reports what it measured; --json-out rewrites its file after every phase):
 *   limits   copy GB/s (ck_copy, >= 4x L2) and cuBLASLt bf16 GEMM TFLOP/s at the gate|up shape of an 8K
 *            chunk, before the model loads and again at the end; the better of the two is the limit.
 *   prefill  one chunk of --chunk tokens (default 8192) from an empty session, best of --reps:
 *            TFLOP/s as a fraction of the GEMM rate.
 *   decode   at each --depths depth (default 4096) under the session's policy (--kv-policy, default
 *            exact): tok/s, and GB/s = (bf16 weight bytes + KV bytes read at the depth) x tok/s as a
 *            fraction of the copy bandwidth. The steps include picking the token on the host.
 *   stages   --stage-steps decode steps at the first depth with mtok_session_profile on: per-stage
 *            device time (norm, QKV, attention, O, MLP, LM head, ...) of one step, and GB/s per stage.
 *   check    logits of the first --check-tokens ids through the CUDA prefill and (4 rows) decode
 *            paths against the CPU backend on the same weights (0 skips it).
 *   topk     a second session with --kv-policy topk decodes at each --topk-depths depth (default
 *            4096,131072); tok/s as a ratio to the first exact depth (the 128K-vs-4K target).
 *
 * Filling 128K of KV: the topk session fills its depths by prefilling in chunks. Under topk a chunk
 * attends only the sinks, the recent window, its 64 chosen blocks and itself, so the fill costs
 * linear time (about a quarter of the attention FLOPs of exact causal prefill at 128K), and what a
 * decode step costs does not depend on the values the KV holds: the steps that follow read exactly
 * the bytes a real 128K topk session reads. */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "cli.h"
#include "../core/limits_cuda.h"

#define CB_MAX_GEN ((int64_t)1 << 20)     /* --gen, --stage-steps */
#define CB_MAX_CHECK ((int64_t)65536)     /* --check-tokens: 3 x tokens x vocab floats */
#define CB_MAX_REPS 100000                /* --reps */
#define CB_WARM_STEPS 2                   /* untimed decode steps first: the first one captures a graph */
#define CB_CHECK_DECODE 4                 /* rows of the check that go through the decode path */
/* The check's tolerances (per row: cosine of the logit rows, max|cuda - cpu| / max|cpu|). The decode
 * path has fp32 GEMV inputs like the CPU: only the summation order differs, and through the
 * CPU-executed build glm4-1m-mini's rows agree to cos 0.9999997 and 9e-4, so it is held tightly. The
 * prefill path rounds each GEMM input to bf16 (2^-9 relative; the CPU keeps fp32): there 4 layers
 * already give cos 0.99946 and 3.6e-2 (docs/GPU.md), and 40 layers more, so it is held against gross
 * errors only (its GEMMs are checked at these shapes by tests/gpu/test_gpu_kernels). */
#define CB_DEC_MIN_COS 0.99999
#define CB_DEC_MAX_REL 5e-3
#define CB_PRE_MIN_COS 0.99
/* The targets (GLM-4-9B-Chat shape, batch 1; docs/GPU.md): recorded, never an exit code. */
#define CB_TARGET_DECODE 0.75 /* decode at 4K: fraction of the copy bandwidth */
#define CB_TARGET_PREFILL 0.5 /* an 8K chunk: fraction of the GEMM rate */
#define CB_TARGET_TOPK 0.8    /* topk decode at 128K over decode at 4K */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static int cmp_i64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t argmax(const float *x, int64_t n) {
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

typedef struct {
    int64_t v[16];
    int n;
} cb_list;

/* "N,N,.." token counts in [min, CLI_MAX_TOKENS], sorted ascending (each depth extends the previous
 * prefix); "none": no values. */
static int parse_list(const char *flag, const char *s, cb_list *out, int64_t min) {
    out->n = 0;
    if (!strcmp(s, "none")) return 0;
    char buf[512];
    if (strlen(s) >= sizeof buf) return cli_usage_error("%s: the list is longer than %zu characters", flag, sizeof buf - 1), -1;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (out->n == 16) return cli_usage_error("%s: at most 16 values", flag), -1;
        if (cli_parse_size(flag, t, min, CLI_MAX_TOKENS, &out->v[out->n])) return -1;
        out->n++;
    }
    if (!out->n) return cli_usage_error("%s: empty list (\"none\" for no depths)", flag), -1;
    qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_i64);
    return 0;
}

/* ---- work per token, from the shapes; weights counted as the device holds them, bf16 ---- */
typedef struct {
    double mm_flop;       /* 2 x (projections + MLP) x layers: every token */
    double out_flop;      /* 2 x vocab x hidden: a token whose logits are computed */
    double attn_flop_key; /* per (query token, visible key): 4 x heads x head_dim x layers */
    /* weight bytes one decode step reads, by stage */
    double norm_b, qkv_b, o_b, mlp_b, head_b, embed_b, weight_bytes;
    double kv_bytes_key;  /* K and V of one position, all layers, bf16 */
} cb_work;

static cb_work work_of(const mtok_config *c) {
    const double E = (double)c->hidden, qd = (double)(c->n_heads * c->head_dim),
                 kd = (double)(c->n_kv_groups * c->head_dim), F = (double)c->ffn, L = (double)c->n_layers,
                 V = (double)c->vocab;
    cb_work w;
    w.mm_flop = 2.0 * L * (E * (qd + 2 * kd) + qd * E + 3 * F * E);
    w.out_flop = 2.0 * V * E;
    w.attn_flop_key = 4.0 * (double)c->n_heads * (double)c->head_dim * L;
    w.norm_b = (2 * L + 1) * E * 2;
    w.qkv_b = L * ((qd + 2 * kd) * E * 2 + (c->qkv_bias ? (qd + 2 * kd) * 2 : 0));
    w.o_b = L * qd * E * 2;
    w.mlp_b = L * 3 * F * E * 2;
    w.head_b = V * E * 2;
    w.embed_b = E * 2; /* one row of the table */
    w.weight_bytes = w.norm_b + w.qkv_b + w.o_b + w.mlp_b + w.head_b + w.embed_b;
    w.kv_bytes_key = L * 2 * kd * 2;
    return w;
}

/* ---- options ---- */
typedef struct {
    cli_common o;
    bench_synth_opts so;
    const char *json_out;
    int js, reps, device;
    cb_list depths, topk_depths;
    int64_t gen, check_tokens, stage_steps, chunk;
    mtok_cuda_limits_params lp;
} cb_opts;

/* One run: the report as it grows, and what the phases share. */
typedef struct {
    cb_opts *B;
    mtok_model *model;
    const mtok_config *c;
    cb_work W;
    int32_t *ids;
    int64_t need;
    json_t *root, *errors;
    int first_rc;          /* the first phase's error (0: none) */
    double exact_tps;      /* decode tok/s at the first --depths depth */
    mtok_cuda_limits_result lim[2];
    int n_lim;
    char synth_path[4096]; /* --preset: the checkpoint made for this run */
} cb_run;

/* Progress lines: stdout in text mode, stderr beside --json (so a log shows where a run stopped). */
__attribute__((format(printf, 2, 3))) static void say(const cb_run *R, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    FILE *f = R->B->js ? stderr : stdout;
    vfprintf(f, fmt, ap);
    fputc('\n', f);
    fflush(f);
    va_end(ap);
}

/* A failed phase: its message into "errors"; the run goes on with the next phase. */
static void phase_error(cb_run *R, const char *phase, int rc) {
    json_array_append_new(R->errors, json_pack("{s:s, s:s, s:i}", "phase", phase, "error", mtok_errmsg(), "code", rc));
    say(R, "%s: error: %s", phase, mtok_errmsg());
    if (!R->first_rc) R->first_rc = rc;
}

static void print_json(json_t *j) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    if (s) puts(s);
    free(s);
}

/* --json-out: the report so far, replaced atomically after every phase. */
static void save_progress(const cb_run *R) {
    if (!R->B->json_out) return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", R->B->json_out);
    if (json_dump_file(R->root, tmp, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) == 0) rename(tmp, R->B->json_out);
}

/* ---- --preset: the checkpoint synthesized on the spot (cli/bench_synth.c) ---- */
static int synth_preset(cb_run *R) {
    cb_opts *B = R->B;
    const char *naming = B->so.naming == MTOK_NAMING_HF ? "hf" : "chatglm";
    say(R, "synthesizing %s (%s naming) ...", B->so.preset, naming);
    double dt = 0;
    const int rc = bench_synth(&B->so, R->synth_path, sizeof R->synth_path, &dt);
    if (R->synth_path[0])
        json_object_set_new(R->root, "synth", json_pack("{s:s, s:s, s:s, s:f, s:b}", "preset", B->so.preset, "naming",
                                                        naming, "dir", R->synth_path, "seconds", dt, "kept", B->so.keep));
    if (!rc) say(R, "synthesized into %s in %.1f s", R->synth_path, dt);
    B->o.model = R->synth_path;
    return rc;
}

/* ---- limits ---- */
static json_t *limits_json(const mtok_cuda_limits_result *l) {
    json_t *j = json_pack("{s:f, s:f, s:I, s:i, s:b, s:f, s:f, s:[I, I, I], s:i, s:b, s:f, s:b}", "copy_gbs",
                          l->copy_gbs, "copy_gbs_mean", l->copy_gbs_mean, "copy_bytes", (json_int_t)l->copy_bytes,
                          "copy_reps", l->copy_reps, "copy_in_l2", l->copy_in_l2, "gemm_tflops", l->gemm_tflops,
                          "gemm_tflops_mean", l->gemm_tflops_mean, "gemm_mnk", (json_int_t)l->gemm_m,
                          (json_int_t)l->gemm_n, (json_int_t)l->gemm_k, "gemm_reps", l->gemm_reps, "gemm_fallback",
                          l->gemm_fallback, "gemm_max_err", l->gemm_max_err, "verified", l->verified);
    if (l->note[0]) json_object_set_new(j, "note", json_string(l->note));
    return j;
}

static void run_limits(cb_run *R, const char *when) {
    mtok_cuda_limits_result *l = &R->lim[R->n_lim];
    const double t0 = now_s();
    const int rc = mtok_cuda_limits_run(R->B->device, &R->B->lp, l);
    if (rc) {
        phase_error(R, !strcmp(when, "before") ? "limits before" : "limits after", rc);
        return;
    }
    R->n_lim++;
    json_t *jl = json_object_get(R->root, "limits");
    json_object_set_new(jl, when, limits_json(l));
    /* the limit: the better of the runs so far (the device's state differs minutes apart) */
    mtok_cuda_limits_result best = R->lim[0];
    for (int i = 1; i < R->n_lim; i++) {
        best.copy_gbs = fmax(best.copy_gbs, R->lim[i].copy_gbs);
        best.gemm_tflops = fmax(best.gemm_tflops, R->lim[i].gemm_tflops);
        best.verified = best.verified && R->lim[i].verified;
    }
    json_object_set_new(jl, "copy_gbs", json_real(best.copy_gbs));
    json_object_set_new(jl, "gemm_tflops", json_real(best.gemm_tflops));
    json_object_set_new(jl, "verified", json_boolean(best.verified));
    if (!json_object_get(R->root, "device")) {
        char desc[512];
        mtok_cuda_describe(desc, sizeof desc);
        json_object_set_new(R->root, "device",
                            json_pack("{s:s, s:i, s:s, s:i, s:i, s:i, s:I, s:I, s:i, s:i}", "name", l->name, "index",
                                      l->device, "describe", desc, "cc_major", l->cc_major, "cc_minor", l->cc_minor,
                                      "sms", l->sms, "l2_bytes", (json_int_t)l->l2_bytes, "mem_total",
                                      (json_int_t)l->mem_total, "driver_version", l->driver_version,
                                      "runtime_version", l->runtime_version));
    }
    say(R, "limits (%s, %.1f s): copy %.1f GB/s (%lld MiB buffers, mean %.1f), bf16 GEMM %lld x %lld x %lld %.1f "
        "TFLOP/s (mean %.1f)%s", when, now_s() - t0, l->copy_gbs, (long long)(l->copy_bytes >> 20), l->copy_gbs_mean,
        (long long)l->gemm_m, (long long)l->gemm_n, (long long)l->gemm_k, l->gemm_tflops, l->gemm_tflops_mean,
        l->verified ? "" : "  RESULTS WRONG");
    if (l->note[0]) say(R, "  note: %s", l->note);
}

/* The current limits (the best of the runs so far; 0 when none succeeded): copy GB/s, GEMM TFLOP/s. */
static double limit_of(const cb_run *R, int gemm) {
    double v = 0;
    for (int i = 0; i < R->n_lim; i++) v = fmax(v, gemm ? R->lim[i].gemm_tflops : R->lim[i].copy_gbs);
    return v;
}

/* ---- sessions ---- */
static int open_session(cb_run *R, const char *device, int policy, int64_t ctx, int64_t chunk, mtok_session **s) {
    const cli_common *o = &R->B->o;
    const mtok_session_params sp = {.ctx = ctx, .threads = o->threads, .prefill_chunk = chunk,
                                    .kv_block = o->kv_block, .kv_budget = o->kv_budget, .kv_dir = o->kv_dir,
                                    .kv_io = o->kv_io, .kv_policy = policy, .kv_sinks = o->kv_sinks,
                                    .kv_window = o->kv_window, .kv_depth = o->kv_depth, .kv_topk = o->kv_topk,
                                    .kv_audit = o->kv_audit, .device = device};
    const int rc = cli_kv_dir_ready(o); /* created when missing, as for every command */
    return rc ? rc : mtok_session_create(R->model, &sp, s);
}

/* The context a list of depths needs: the deepest, its warm-up and timed steps (and profiled ones). */
static int64_t depths_ctx(const cb_run *R, const cb_list *d) {
    const int64_t deep = d->n ? d->v[d->n - 1] : 0;
    return deep + CB_WARM_STEPS + R->B->gen + R->B->stage_steps + 1;
}

/* Brings the session to `want` tokens of the prompt ids, in pieces of one chunk. */
static int fill_to(cb_run *R, mtok_session *s, int64_t have, int64_t want) {
    int rc = mtok_session_truncate(s, have);
    for (int64_t p = have; !rc && p < want;) {
        const int64_t n = want - p < R->B->chunk ? want - p : R->B->chunk;
        rc = mtok_forward(s, R->ids + p, n, NULL);
        p += n;
    }
    return rc;
}

/* One decode step: the token in, the next one picked on the host from the logits (as mtok generate
 * does with greedy sampling). */
static int step(mtok_session *s, int32_t *tok, int64_t V) {
    int rc = mtok_forward(s, tok, 1, NULL);
    if (!rc) *tok = (int32_t)argmax(mtok_session_logits(s), V);
    return rc;
}

/* ---- prefill: one chunk from an empty session, best of --reps after one untimed run ---- */
static int phase_prefill(cb_run *R, mtok_session *s, json_t *jpre) {
    const int64_t n = R->B->chunk;
    double best = INFINITY, sum = 0;
    for (int r = -1; r < R->B->reps; r++) {
        mtok_session_reset(s);
        const double t0 = now_s();
        const int rc = mtok_forward(s, R->ids, n, NULL);
        if (rc) return rc;
        const double dt = now_s() - t0;
        if (r < 0) continue;
        best = fmin(best, dt);
        sum += dt;
    }
    const double flop = R->W.mm_flop * (double)n + R->W.out_flop + R->W.attn_flop_key * (double)n * (double)(n + 1) / 2;
    json_array_append_new(jpre, json_pack("{s:I, s:i, s:f, s:f, s:f, s:f, s:f}", "tokens", (json_int_t)n, "reps",
                                          R->B->reps, "seconds", best, "tok_s", (double)n / best, "tflop", flop * 1e-12,
                                          "tflops", flop / best * 1e-12, "tflops_mean",
                                          flop / (sum / R->B->reps) * 1e-12));
    say(R, "prefill %lld tokens: %.3f s, %.0f tok/s, %.1f TFLOP/s", (long long)n, best, (double)n / best,
        flop / best * 1e-12);
    return 0;
}

/* ---- per-stage device time of one decode step (mtok_session_profile: ops run eagerly between events) ---- */
static int phase_stages(cb_run *R, mtok_session *s, int32_t *tok, int64_t depth, int topk) {
    const int64_t V = R->c->vocab, n = R->B->stage_steps;
    mtok_kv_stats k0, k1;
    mtok_session_kv_stats(s, &k0);
    int rc = mtok_session_profile(s, 1);
    for (int64_t i = 0; i < n && !rc; i++) rc = step(s, tok, V);
    const int off = mtok_session_profile(s, 0);
    rc = rc ? rc : off;
    mtok_stage_times st;
    if (!rc) rc = mtok_session_stage_times(s, &st);
    if (rc) return rc;
    mtok_session_kv_stats(s, &k1);
    const double per = st.chunks > 0 ? 1.0 / (double)st.chunks : 0;
    /* attention's bytes: the KV it read, per step (exact: the visible keys; topk: what it attended) */
    const double kv = topk ? (double)(k1.bytes_attended - k0.bytes_attended) / (double)n
                           : R->W.kv_bytes_key * ((double)depth + (double)(n + 1) / 2);
    const struct {
        const char *name;
        double ms, bytes;
    } row[] = {{"embed", st.embed_ms, R->W.embed_b},   {"norm", st.norm_ms, R->W.norm_b},
               {"qkv", st.qkv_ms, R->W.qkv_b},         {"attn", st.attn_ms, kv},
               {"attn_out", st.attn_out_ms, R->W.o_b}, {"mlp", st.mlp_ms, R->W.mlp_b},
               {"residual", st.residual_ms, 0},        {"lm_head", st.logits_ms, R->W.head_b}};
    json_t *js = json_pack("{s:I, s:I, s:I}", "depth", (json_int_t)depth, "steps", (json_int_t)n, "chunks",
                           (json_int_t)st.chunks);
    double total = 0;
    for (size_t i = 0; i < sizeof row / sizeof *row; i++) {
        const double ms = row[i].ms * per;
        total += ms;
        json_t *e = json_pack("{s:f}", "ms", ms);
        if (row[i].bytes > 0) {
            json_object_set_new(e, "bytes", json_real(row[i].bytes));
            json_object_set_new(e, "gbs", json_real(ms > 0 ? row[i].bytes / (ms * 1e-3) * 1e-9 : 0));
        }
        json_object_set_new(js, row[i].name, e);
    }
    json_object_set_new(js, "step_ms", json_real(total));
    json_object_set_new(R->root, "stages", js);
    say(R, "stages of one decode step at %lld (eager, %lld steps): norm %.3f, qkv %.3f, attn %.3f, o %.3f, mlp %.3f, "
        "lm head %.3f, rest %.3f ms; sum %.3f ms", (long long)depth, (long long)n, st.norm_ms * per, st.qkv_ms * per,
        st.attn_ms * per, st.attn_out_ms * per, st.mlp_ms * per, st.logits_ms * per,
        (st.embed_ms + st.residual_ms) * per, total);
    return 0;
}

/* ---- decode at each depth: fill to the depth (keeping the previous depth's prefix), CB_WARM_STEPS
 * untimed steps, then --gen timed ones; at the first depth of the main session also the stages ---- */
static int phase_decode(cb_run *R, mtok_session *s, const cb_list *depths, int topk, int stages, json_t *jdec) {
    const cb_opts *B = R->B;
    const int64_t V = R->c->vocab;
    double *dt = malloc((size_t)B->gen * sizeof *dt);
    if (!dt) return mtok_err(MTOK_ERESOURCE, "bench: out of memory");
    int64_t filled = 0;
    int rc = 0;
    mtok_session_reset(s);
    for (int i = 0; i < depths->n && !rc; i++) {
        const int64_t d = depths->v[i];
        const double tf = now_s();
        if ((rc = fill_to(R, s, filled, d))) break;
        const double fill_s = now_s() - tf;
        filled = d;
        int32_t tok = d > 0 ? (int32_t)argmax(mtok_session_logits(s), V) : R->ids[0];
        for (int w = 0; w < CB_WARM_STEPS && !rc; w++) rc = step(s, &tok, V);
        mtok_kv_stats k0, k1;
        mtok_session_kv_stats(s, &k0);
        const int64_t p0 = mtok_session_pos(s);
        double sum = 0;
        for (int64_t g = 0; g < B->gen && !rc; g++) {
            const double t0 = now_s();
            rc = step(s, &tok, V);
            dt[g] = now_s() - t0;
            sum += dt[g];
        }
        if (rc) break;
        mtok_session_kv_stats(s, &k1);
        qsort(dt, (size_t)B->gen, sizeof *dt, cmp_double);
        const double tps = (double)B->gen / sum, gen = (double)B->gen;
        const double kvb = topk ? (double)(k1.bytes_attended - k0.bytes_attended) / gen
                                : R->W.kv_bytes_key * ((double)p0 + (gen + 1) / 2);
        const double gbs = (R->W.weight_bytes + kvb) * tps * 1e-9;
        json_array_append_new(jdec, json_pack("{s:I, s:s, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "depth",
                                              (json_int_t)d, "policy", topk ? "topk" : "exact", "tokens",
                                              (json_int_t)B->gen, "tok_s", tps, "tok_s_median",
                                              1.0 / dt[B->gen / 2], "step_ms_min", dt[0] * 1e3,
                                              "weight_bytes_per_token", R->W.weight_bytes, "kv_bytes_per_token", kvb,
                                              "gbs", gbs, "fill_s", fill_s));
        say(R, "decode at %7lld (%s): %8.2f tok/s (median %.2f)  %7.1f GB/s  (%.0f MB weights + %.0f MB KV per token; "
            "fill %.1f s)", (long long)d, topk ? "topk" : "exact", tps, 1.0 / dt[B->gen / 2], gbs,
            R->W.weight_bytes * 1e-6, kvb * 1e-6, fill_s);
        if (i == 0 && stages) {
            const int sr = phase_stages(R, s, &tok, mtok_session_pos(s), topk);
            if (sr) phase_error(R, "stages", sr); /* the decode figures stand without them */
        }
        save_progress(R);
    }
    free(dt);
    return rc;
}

/* ---- check: the CUDA session's logits (prefill path, all rows; decode path, the first rows) against
 * the CPU backend's on the same weights ---- */
/* min cos, max rel diff and top-1 agreement of `rows` rows, as {"min_cos", "max_rel_diff", "top1"} */
static json_t *compare(const float *g, const float *r, int64_t rows, int64_t V, double *min_cos, double *max_rel) {
    int64_t agree = 0;
    *min_cos = 1, *max_rel = 0;
    for (int64_t t = 0; t < rows; t++) {
        const float *a = g + t * V, *b = r + t * V;
        double aa = 0, bb = 0, ab = 0, amax = 0, dmax = 0;
        for (int64_t i = 0; i < V; i++) {
            aa += (double)a[i] * a[i], bb += (double)b[i] * b[i], ab += (double)a[i] * b[i];
            amax = fmax(amax, fabs(b[i]));
            dmax = fmax(dmax, fabs((double)a[i] - b[i]));
        }
        const double cs = ab / (sqrt(aa * bb) + 1e-300), rel = dmax / (amax + 1e-30);
        if (!(cs >= *min_cos)) *min_cos = cs; /* NaN sticks */
        if (!(rel <= *max_rel)) *max_rel = rel;
        agree += argmax(a, V) == argmax(b, V);
    }
    return json_pack("{s:I, s:f, s:f, s:I}", "rows", (json_int_t)rows, "min_cos", isfinite(*min_cos) ? *min_cos : -1.0,
                     "max_rel_diff", isfinite(*max_rel) ? *max_rel : 1e30, "top1_agree", (json_int_t)agree);
}

static int phase_check(cb_run *R, mtok_session *gpu, int *ok) {
    const int64_t V = R->c->vocab, n = R->B->check_tokens, nd = n < CB_CHECK_DECODE ? n : CB_CHECK_DECODE;
    float *pf = malloc((size_t)(n * V) * sizeof *pf), *ref = malloc((size_t)(n * V) * sizeof *ref);
    float *dec = malloc((size_t)(nd * V) * sizeof *dec);
    mtok_session *cpu = NULL;
    int rc = 0;
    if (!pf || !ref || !dec) {
        rc = mtok_err(MTOK_ERESOURCE, "bench: out of memory for the logits check");
        goto done;
    }
    mtok_session_reset(gpu);
    if ((rc = mtok_forward(gpu, R->ids, n, pf))) goto done;
    mtok_session_reset(gpu);
    for (int64_t t = 0; t < nd && !rc; t++) {
        rc = mtok_forward(gpu, R->ids + t, 1, NULL);
        if (!rc) memcpy(dec + t * V, mtok_session_logits(gpu), (size_t)V * sizeof *dec);
    }
    if (rc) goto done;
    const double t0 = now_s();
    if ((rc = open_session(R, "cpu", 0, n + 1, n, &cpu)) || (rc = mtok_forward(cpu, R->ids, n, ref))) goto done;
    const double cpu_s = now_s() - t0;
    double pc, pr, dc, dr;
    json_t *jp = compare(pf, ref, n, V, &pc, &pr), *jd = compare(dec, ref, nd, V, &dc, &dr);
    *ok = pc >= CB_PRE_MIN_COS && dc >= CB_DEC_MIN_COS && dr <= CB_DEC_MAX_REL;
    json_object_set_new(jp, "tol_min_cos", json_real(CB_PRE_MIN_COS));
    json_object_set_new(jd, "tol_min_cos", json_real(CB_DEC_MIN_COS));
    json_object_set_new(jd, "tol_max_rel_diff", json_real(CB_DEC_MAX_REL));
    json_object_set_new(R->root, "check", json_pack("{s:s, s:o, s:o, s:f, s:b}", "against", "cpu", "prefill", jp,
                                                    "decode", jd, "cpu_seconds", cpu_s, "ok", *ok));
    say(R, "check vs the CPU backend: prefill path %lld rows min cos %.6f, max rel diff %.2e; decode path %lld rows min "
        "cos %.7f, max rel diff %.2e: %s", (long long)n, pc, pr, (long long)nd, dc, dr, *ok ? "ok" : "MISMATCH");
done:
    mtok_session_free(cpu);
    free(pf), free(ref), free(dec);
    return rc;
}

/* ---- fractions of the limits and the targets (recomputed when the limit changes) ---- */
static void set_fractions(cb_run *R) {
    const double copy = limit_of(R, 0), gemm = limit_of(R, 1);
    size_t k;
    json_t *e;
    json_array_foreach(json_object_get(R->root, "prefill"), k, e)
        if (gemm > 0) json_object_set_new(e, "frac_gemm", json_real(json_real_value(json_object_get(e, "tflops")) / gemm));
    double first = 0;
    json_array_foreach(json_object_get(R->root, "decode"), k, e) {
        const double tps = json_real_value(json_object_get(e, "tok_s"));
        if (k == 0) first = tps, R->exact_tps = tps;
        if (copy > 0) json_object_set_new(e, "frac_copy", json_real(json_real_value(json_object_get(e, "gbs")) / copy));
        json_object_set_new(e, "tok_s_vs_first_depth", json_real(tps / first));
    }
    double tfirst = 0;
    json_array_foreach(json_object_get(R->root, "decode_topk"), k, e) {
        const double tps = json_real_value(json_object_get(e, "tok_s"));
        if (k == 0) tfirst = tps;
        if (copy > 0) json_object_set_new(e, "frac_copy", json_real(json_real_value(json_object_get(e, "gbs")) / copy));
        json_object_set_new(e, "tok_s_vs_first_depth", json_real(tps / tfirst));
        if (R->exact_tps > 0) json_object_set_new(e, "tok_s_vs_exact_first_depth", json_real(tps / R->exact_tps));
    }
    json_t *st = json_object_get(R->root, "stages");
    const char *names[] = {"embed", "norm", "qkv", "attn", "attn_out", "mlp", "lm_head"};
    for (size_t i = 0; st && copy > 0 && i < sizeof names / sizeof *names; i++) {
        json_t *g = json_object_get(json_object_get(st, names[i]), "gbs");
        if (g) json_object_set_new(json_object_get(st, names[i]), "frac_copy", json_real(json_real_value(g) / copy));
    }
}

/* The three targets from what ran; "met" is null when a figure is missing. They are defined
 * for the GLM-4-9B-Chat shape at batch 1: other shapes get them for information. */
static void set_targets(cb_run *R) {
    const mtok_config *c = R->c;
    json_t *d0 = json_array_get(json_object_get(R->root, "decode"), 0);
    json_t *p0 = json_array_get(json_object_get(R->root, "prefill"), 0);
    json_t *tk = json_object_get(R->root, "decode_topk"), *dk = json_object_get(R->root, "decode");
    json_t *tl = json_array_size(tk) ? json_array_get(tk, json_array_size(tk) - 1) : NULL;
    const double fd = d0 ? json_real_value(json_object_get(d0, "frac_copy")) : 0;
    const double fp = p0 ? json_real_value(json_object_get(p0, "frac_gemm")) : 0;
    double ft = tl ? json_real_value(json_object_get(tl, "tok_s_vs_exact_first_depth")) : 0;
    if (!tl && R->B->o.kv_policy == 2 && json_array_size(dk) > 1) { /* --kv-policy topk: the main session's depths */
        tl = json_array_get(dk, json_array_size(dk) - 1);
        ft = json_real_value(json_object_get(tl, "tok_s_vs_first_depth"));
    }
#define MET(have, v, t) ((have) ? json_boolean((v) >= (t)) : json_null())
    json_t *t = json_pack("{s:b, s:{s:o, s:f, s:f, s:o}, s:{s:o, s:f, s:f, s:o}, s:{s:o, s:o, s:f, s:f, s:o}}",
                          "glm4_9b_shape", c && c->n_layers == 40 && c->hidden == 4096 && c->n_heads == 32 &&
                                               c->ffn == 13696 && c->vocab == 151552,
                          "decode", "depth", d0 ? json_copy(json_object_get(d0, "depth")) : json_null(), "frac_copy", fd,
                          "target", CB_TARGET_DECODE, "met", MET(d0 && fd > 0, fd, CB_TARGET_DECODE),
                          "prefill", "tokens", p0 ? json_copy(json_object_get(p0, "tokens")) : json_null(), "frac_gemm",
                          fp, "target", CB_TARGET_PREFILL, "met", MET(p0 && fp > 0, fp, CB_TARGET_PREFILL),
                          "topk", "depth", tl ? json_copy(json_object_get(tl, "depth")) : json_null(), "vs_depth",
                          d0 ? json_copy(json_object_get(d0, "depth")) : json_null(), "ratio", ft, "target",
                          CB_TARGET_TOPK, "met", MET(tl && ft > 0, ft, CB_TARGET_TOPK));
#undef MET
    json_object_set_new(R->root, "targets", t);
}

static json_t *model_json(const cb_run *R) {
    const mtok_config *c = R->c;
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:I, s:f}", "dir", R->B->o.model, "naming",
                     c->naming == MTOK_NAMING_HF ? "hf" : "chatglm", "layers", (json_int_t)c->n_layers, "hidden",
                     (json_int_t)c->hidden, "heads", (json_int_t)c->n_heads, "kv_groups", (json_int_t)c->n_kv_groups,
                     "head_dim", (json_int_t)c->head_dim, "ffn", (json_int_t)c->ffn, "vocab", (json_int_t)c->vocab,
                     "dtype", mtok_dtype_name(c->dtype), "file_weight_bytes",
                     (json_int_t)mtok_model_weight_bytes(R->model), "decode_weight_bytes_bf16", R->W.weight_bytes);
}

/* Deterministic prompt ids in [0, vocab): speed does not depend on the text. */
static void make_ids(int32_t *ids, int64_t n, int64_t vocab) {
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)vocab);
    }
}

/* The text summary after the progress lines. */
static void print_summary(const cb_run *R) {
    size_t k;
    json_t *e, *root = R->root;
    printf("limits (best of %d runs): copy %.1f GB/s, bf16 GEMM %.1f TFLOP/s\n", R->n_lim, limit_of(R, 0), limit_of(R, 1));
    json_array_foreach(json_object_get(root, "prefill"), k, e)
        printf("  prefill %6lld: %5.1f%% of the GEMM rate\n", (long long)json_integer_value(json_object_get(e, "tokens")),
               100 * json_real_value(json_object_get(e, "frac_gemm")));
    json_array_foreach(json_object_get(root, "decode"), k, e)
        printf("  decode at %7lld (%s): %5.1f%% of the copy bandwidth\n",
               (long long)json_integer_value(json_object_get(e, "depth")),
               json_string_value(json_object_get(e, "policy")), 100 * json_real_value(json_object_get(e, "frac_copy")));
    json_array_foreach(json_object_get(root, "decode_topk"), k, e)
        printf("  decode at %7lld (topk): %5.1f%% of the copy bandwidth, %.2f x the first exact depth's tok/s\n",
               (long long)json_integer_value(json_object_get(e, "depth")),
               100 * json_real_value(json_object_get(e, "frac_copy")),
               json_real_value(json_object_get(e, "tok_s_vs_exact_first_depth")));
    json_t *t = json_object_get(root, "targets");
    const char *names[] = {"decode", "prefill", "topk"};
    for (int i = 0; t && i < 3; i++) {
        json_t *x = json_object_get(t, names[i]), *met = json_object_get(x, "met");
        printf("target %-7s %s (>= %.2f)%s\n", names[i], json_is_null(met) ? "not measured" : json_is_true(met) ? "met" : "MISSED",
               json_real_value(json_object_get(x, "target")),
               json_is_true(json_object_get(t, "glm4_9b_shape")) ? "" : "  [defined for the GLM-4-9B shape]");
    }
    json_t *chk = json_object_get(root, "check");
    printf("check vs the CPU backend: %s\n", !chk ? "not run" : json_is_true(json_object_get(chk, "ok")) ? "ok" : "MISMATCH");
    json_array_foreach(json_object_get(root, "errors"), k, e)
        printf("error in %s: %s\n", json_string_value(json_object_get(e, "phase")),
               json_string_value(json_object_get(e, "error")));
}

/* The main session: warm-up, prefill, decode at --depths (+ stages), check; then the topk session. */
static void run_model(cb_run *R, int *check_ok) {
    cb_opts *B = R->B;
    json_t *root = R->root;
    mtok_session *s = NULL;
    const int main_topk = B->o.kv_policy == 2;
    int64_t ctx = imax(imax(depths_ctx(R, &B->depths), B->chunk + 1), B->check_tokens + 1);
    const double t0 = now_s();
    int rc = open_session(R, B->o.device, B->o.kv_policy, ctx, B->chunk, &s);
    if (rc) {
        phase_error(R, "session", rc);
    } else {
        const int64_t warm = 32;
        rc = mtok_forward(s, R->ids, warm, NULL);
        if (!rc) rc = mtok_forward(s, R->ids + warm, 1, NULL);
        say(R, "session ready in %.1f s (weights uploaded, one prefill and one decode step run)", now_s() - t0);
        if (rc) phase_error(R, "warm-up", rc);
    }
    if (!rc && (rc = phase_prefill(R, s, json_object_get(root, "prefill")))) phase_error(R, "prefill", rc);
    set_fractions(R);
    save_progress(R);
    if (s && (rc = phase_decode(R, s, &B->depths, main_topk, B->stage_steps > 0, json_object_get(root, "decode"))))
        phase_error(R, "decode", rc);
    set_fractions(R);
    save_progress(R);
    if (s && B->check_tokens > 0 && (rc = phase_check(R, s, check_ok))) phase_error(R, "check", rc);
    save_progress(R);
    mtok_session_free(s); /* its KV and scratch go before the second session allocates its own */
    s = NULL;
    if (main_topk || !B->topk_depths.n) return;
    ctx = imax(depths_ctx(R, &B->topk_depths), B->chunk + 1);
    if ((rc = open_session(R, B->o.device, 2, ctx, B->chunk, &s))) {
        phase_error(R, "topk session", rc);
        return;
    }
    if ((rc = phase_decode(R, s, &B->topk_depths, 1, 0, json_object_get(root, "decode_topk"))))
        phase_error(R, "topk decode", rc);
    mtok_session_free(s);
    set_fractions(R);
    save_progress(R);
}

static int bench_cuda(cb_opts *B) {
    cb_run R = {.B = B};
    R.root = json_pack("{s:s, s:s, s:o, s:[], s:[], s:[], s:[]}", "backend", "cuda", "device_arg", B->o.device,
                       "limits", json_object(), "prefill", "decode", "decode_topk", "errors");
    R.errors = json_object_get(R.root, "errors");
    int check_ok = -1, rc = 0;
    char desc[512];
    const int count = mtok_cuda_describe(desc, sizeof desc);
    if (count <= B->device) { /* nothing can run: the reason, and the JSON with it when asked */
        rc = mtok_err(MTOK_ERESOURCE, "bench --device %s: no usable CUDA device: %s", B->o.device, desc);
        json_array_append_new(R.errors, json_pack("{s:s, s:s, s:i}", "phase", "device", "error", mtok_errmsg(), "code", rc));
        save_progress(&R);
        if (B->js) print_json(R.root);
        json_decref(R.root);
        return cli_fail(rc);
    }
    say(&R, "cuda: %s", desc);
    run_limits(&R, "before");
    save_progress(&R);
    if (B->so.preset && (rc = synth_preset(&R))) {
        phase_error(&R, "synth", rc);
        goto finish;
    }
    const mtok_load_params lp = {.rope_base = B->o.rope_base};
    if ((rc = mtok_model_load(B->o.model, &lp, &R.model))) {
        phase_error(&R, "load", rc);
        goto finish;
    }
    R.c = mtok_model_config(R.model);
    R.W = work_of(R.c);
    json_object_set_new(R.root, "model", model_json(&R));
    say(&R, "model %s: %lld layers, hidden %lld, %lldx%lld heads, %lld KV groups, ffn %lld, vocab %lld; %.1f MB of "
        "bf16 weights read per decode step", B->o.model, (long long)R.c->n_layers, (long long)R.c->hidden,
        (long long)R.c->n_heads, (long long)R.c->head_dim, (long long)R.c->n_kv_groups, (long long)R.c->ffn,
        (long long)R.c->vocab, R.W.weight_bytes * 1e-6);
    R.need = imax(imax(depths_ctx(&R, &B->depths), depths_ctx(&R, &B->topk_depths)),
                  imax(B->chunk + 1, B->check_tokens + 1));
    if (!(R.ids = malloc((size_t)R.need * sizeof *R.ids))) {
        rc = mtok_err(MTOK_ERESOURCE, "bench: out of memory for %lld prompt ids", (long long)R.need);
        phase_error(&R, "setup", rc);
        goto finish;
    }
    make_ids(R.ids, R.need, R.c->vocab);
    run_model(&R, &check_ok);
    run_limits(&R, "after");
finish:
    if (R.c) set_fractions(&R), set_targets(&R);
    save_progress(&R);
    if (B->js) {
        print_json(R.root);
    } else {
        print_summary(&R);
    }
    const int verified = R.n_lim > 0 && json_is_true(json_object_get(json_object_get(R.root, "limits"), "verified"));
    const size_t n_err = json_array_size(R.errors);
    json_decref(R.root);
    free(R.ids);
    mtok_model_free(R.model);
    bench_synth_remove();
    if (R.first_rc) {
        fprintf(stderr, "mtok: error: bench --device %s: %zu phase(s) failed (see \"errors\")\n", B->o.device,
                n_err);
        return R.first_rc == MTOK_EUSAGE ? 1 : R.first_rc == MTOK_EINPUT ? 2 : R.first_rc == MTOK_ERESOURCE ? 3 : 4;
    }
    if (check_ok == 0 || !verified) {
        fprintf(stderr, "mtok: error: bench: %s\n", check_ok == 0 ? "CUDA logits differ from the CPU backend's (see "
                "\"check\")" : "the limit kernels' results were wrong (see \"limits\")");
        return 4;
    }
    return 0;
}

/* ---- mtok bench --device cuda ...: options ---- */

/* --limits-gemm M,N,K: output features, tokens, inputs, each in [1, 2^20] */
static int parse_mnk(const char *flag, const char *s, mtok_cuda_limits_params *lp) {
    int64_t *dst[3] = {&lp->gemm_m, &lp->gemm_n, &lp->gemm_k};
    char buf[128];
    int k = 0;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save), k++)
        if (k == 3 || cli_parse_size(flag, t, 1, (int64_t)1 << 20, dst[k])) return k == 3 ? cli_usage_error("%s takes M,N,K", flag), -1 : -1;
    return k == 3 ? 0 : (cli_usage_error("%s takes M,N,K (output features, tokens, inputs)", flag), -1);
}
int cmd_bench_cuda(int argc, char **argv) {
    cb_opts B = {.gen = 32, .check_tokens = 32, .reps = 3, .stage_steps = 8};
    cli_common_defaults(&B.o);
    B.o.log_level = 0;
    mtok_set_log_level(0);
    parse_list("--depths", "4096", &B.depths, 0);
    parse_list("--topk-depths", "4096,131072", &B.topk_depths, 0);
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&B.o, argc, argv, &i);
        if (!r) r = bench_synth_opt(&B.so, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        const char *a = argv[i], *v;
        int64_t n;
        if (!strcmp(a, "--json")) B.js = 1;
        else if (!strcmp(a, "--depths") || !strcmp(a, "--topk-depths")) {
            if (!(v = cli_value(argc, argv, &i)) ||
                parse_list(a, v, !strcmp(a, "--depths") ? &B.depths : &B.topk_depths, 0))
                return 1;
        } else if (!strcmp(a, "--json-out")) {
            if (!(B.json_out = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--gen") || !strcmp(a, "--check-tokens") || !strcmp(a, "--stage-steps") ||
                   !strcmp(a, "--reps") || !strcmp(a, "--limits-copy-mb") || !strcmp(a, "--limits-reps")) {
            if (!(v = cli_value(argc, argv, &i))) return 1;
            const int cnt = !strcmp(a, "--reps") || !strcmp(a, "--limits-reps") || !strcmp(a, "--limits-copy-mb");
            const int64_t lo = !strcmp(a, "--check-tokens") || !strcmp(a, "--stage-steps") ? 0 : 1;
            const int64_t hi = !strcmp(a, "--check-tokens")     ? CB_MAX_CHECK
                               : !strcmp(a, "--limits-copy-mb") ? (int64_t)1 << 20
                               : cnt                            ? CB_MAX_REPS
                                                                : CB_MAX_GEN;
            if (cnt ? cli_parse_int(a, v, lo, hi, &n) : cli_parse_size(a, v, lo, hi, &n)) return 1;
            if (!strcmp(a, "--gen")) B.gen = n;
            else if (!strcmp(a, "--check-tokens")) B.check_tokens = n;
            else if (!strcmp(a, "--stage-steps")) B.stage_steps = n;
            else if (!strcmp(a, "--reps")) B.reps = (int)n;
            else if (!strcmp(a, "--limits-copy-mb")) B.lp.copy_bytes = n << 20;
            else B.lp.copy_reps = B.lp.gemm_reps = (int)n;
        } else if (!strcmp(a, "--limits-gemm")) {
            if (!(v = cli_value(argc, argv, &i)) || parse_mnk(a, v, &B.lp)) return 1;
        } else
            return cli_usage_error("bench --device cuda: unknown option '%s'", a);
    }
    if (!B.o.device || mtok_device_parse(B.o.device, &B.device) || B.device < 0)
        return cli_usage_error("bench: the CUDA bench needs --device cuda or cuda:N");
    if (!B.o.model == !B.so.preset)
        return cli_usage_error("bench --device %s needs one of -m DIR and --preset NAME (mtok synth --list)", B.o.device);
    if ((B.so.dir || B.so.keep) && !B.so.preset) return cli_usage_error("--synth-dir and --keep-synth go with --preset");
    if (B.o.tp > 1 || B.o.cp > 1) return cli_usage_error("bench --device cuda runs one rank: no --tp, --cp");
    if (B.o.ctx) return cli_usage_error("bench --device cuda sizes each session's context itself: no --ctx");
    if (B.gen < 1) return cli_usage_error("--gen must be at least 1");
    B.chunk = B.o.chunk ? B.o.chunk : 8192;
    if (B.check_tokens > B.chunk)
        return cli_usage_error("--check-tokens %lld: at most one chunk (--chunk %lld)", (long long)B.check_tokens,
                               (long long)B.chunk);
    if (!B.js) setvbuf(stdout, NULL, _IOLBF, 0);
    return bench_cuda(&B);
}
