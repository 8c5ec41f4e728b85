/* cli.h — shared pieces of the mtok command: options common to every subcommand, and loading. */
#ifndef MTOK_CLI_H
#define MTOK_CLI_H

#include <stdint.h>
#include "mtok.h"

/* Options every command understands (docs/DESIGN.md §3). Subcommand-specific flags are parsed by the
 * command itself through cli_opt(). */
typedef struct {
    const char *model;     /* -m DIR */
    int threads;           /* --threads N */
    int64_t ctx;           /* --ctx N */
    int64_t chunk;         /* --chunk N (prefill chunk tokens) */
    int64_t kv_block;      /* --kv-block N */
    double rope_base;      /* --rope-base X */
    int ignore_eos;        /* --ignore-eos */
    int log_level;         /* -v / -q / --log-level N */
    int no_simd;           /* --no-simd: scalar kernels */
    const char *isa;       /* --isa avx2|avx512|auto: the highest instruction set the kernels use (NULL:
                            * auto, or MTOK_ISA); applied when parsed (kernels/kernels.h, mk_isa_set) */
    const char *matmul_precision; /* --matmul-precision fp32|bf16: what the avx512 bf16-dot products do
                            * with the activations (NULL: fp32, or MTOK_MATMUL_PRECISION); applied when
                            * parsed (kernels/kernels.h, mk_precision_set) */
    const char *device;    /* --device cpu|cuda|cuda:N (NULL: cpu) */
    const char *vision_device; /* --vision-device: where GLM-4V's tower runs (NULL: --device's) */
    /* KV store (docs/KVSTORE.md) */
    uint64_t kv_budget;    /* --kv-budget BYTES (K/M/G suffixes): hot-tier size; 0 = all in RAM */
    const char *kv_dir;    /* --kv-dir DIR: cold tier location */
    int kv_io;             /* --kv-io auto|uring|threads */
    int kv_policy;         /* --kv-policy exact|window|topk */
    int64_t kv_topk;       /* --kv-topk N: blocks chosen per layer and KV group (topk policy) */
    double kv_audit;       /* --kv-audit RATE: share of steps audited against exact attention */
    int64_t kv_sinks;      /* --kv-sinks N */
    int64_t kv_window;     /* --kv-window N */
    int kv_depth;          /* --kv-depth N: cold-tier queue depth */
    const char *kv_fault;  /* --kv-fault KIND[:NTH[:COUNT]]: test-only fault injection */
    /* parallel runs under mpirun/srun (docs/PARALLEL.md) */
    int tp, cp;            /* --tp N, --cp N: ranks = tp x cp */
    int64_t cp_span;       /* --cp-span N: tokens per context-parallel span */
    /* sampling */
    float temperature, top_p, rep_pen;
    int top_k;
    uint64_t seed;
    int64_t n_gen;         /* -n N */
    /* progress of long work on stderr (base/mtok_base.h, mtok_progress) */
    double progress_s;     /* --progress-interval S: seconds between lines when stderr is not a
                            * terminal (default MTOK_PROGRESS_INTERVAL); --no-progress: -1 */
} cli_common;

/* Iterates argv; for each argument that is a common option consumes it and returns 1; returns 0 for
 * an argument the caller must handle, -1 on a malformed value (message already printed). */
int cli_common_opt(cli_common *o, int argc, char **argv, int *i);
void cli_common_defaults(cli_common *o);
/* Value of the option at argv[*i] (advances *i) or NULL with a usage message. */
const char *cli_value(int argc, char **argv, int *i);

/* Numeric options (docs/OPTIONS.md lists each option with its range). Each parser prints one line
 * naming the option, the value and the allowed range, and returns -1, when the argument is not a
 * decimal number or lies outside [lo, hi]; 0 with *out set otherwise. */
/* A plain integer: threads, ranks, queue depths, counts of blocks or repetitions. */
int cli_parse_int(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out);
/* A size in bytes or a count of tokens: K/M/G/T suffixes (powers of 1024) accepted, and the product
 * checked for overflow before the range. */
int cli_parse_size(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out);
/* Any 64-bit unsigned value (seeds). */
int cli_parse_u64(const char *flag, const char *s, uint64_t *out);
/* A finite real in [lo, hi], or (lo, hi] when lo_open; nan and inf are refused. */
int cli_parse_real(const char *flag, const char *s, double lo, double hi, int lo_open, double *out);
/* --threads' upper bound: CLI_MAX_THREADS, or OpenMP's thread limit where that is lower. */
int cli_max_threads(void);

/* The ranges (docs/OPTIONS.md). Token counts stop at 2^30, a thousand times GLM-4-9B-Chat-1M's
 * context: far beyond any model, and small enough that a count times any row size, block size or
 * rank count stays inside int64. */
#define CLI_MAX_TOKENS ((int64_t)1 << 30)     /* -n, --top-k, --kv-sinks, --kv-window, --kv-topk */
#define CLI_MAX_CTX CLI_MAX_TOKENS            /* --ctx */
#define CLI_MAX_CHUNK ((int64_t)1 << 20)      /* --chunk: the prefill scratch is chunk x hidden floats */
#define CLI_MAX_KV_BLOCK ((int64_t)65536)     /* --kv-block (tokens per KV block) */
#define CLI_MAX_KV_BUDGET ((int64_t)1 << 50)  /* --kv-budget bytes (1 PiB) */
#define CLI_MAX_KV_DEPTH 4096                 /* --kv-depth (io_uring queue entries) */
#define CLI_MAX_THREADS 1024                  /* --threads */
#define CLI_MAX_RANKS 4096                    /* --tp, --cp */
#define CLI_MAX_CP_SPAN ((int64_t)1 << 40)    /* --cp-span */
#define CLI_MAX_ROPE_BASE 1e12                /* --rope-base (0, 1e12] */

/* Prints "mtok: <message>" and returns the exit code for a library error code. */
int cli_fail(int rc);
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Loads model + tokenizer and makes a session from the common options. */
typedef struct {
    mtok_model *model;
    mtok_tokenizer *tok;  /* NULL on the ranks other than 0 of a parallel run */
    mtok_session *sess;
    struct mp_comm *world, *tp_comm, *cp_comm; /* parallel runs only */
} cli_loaded;
/* In a parallel run only rank 0 returns; the other ranks serve its session and exit the process. */
int cli_load(const cli_common *o, int need_tokenizer, cli_loaded *L);
void cli_unload(cli_loaded *L);

/* The interval_s to pass to mtok_progress_begin: -1 (off) with --no-progress or -q. */
double cli_progress_interval(const cli_common *o);

/* Creates --kv-dir (and its parents) when it is missing; 0 without --kv-dir. MTOK_EINPUT naming the
 * option when it cannot be made (a file in the way, no permission). cli_load calls it. */
int cli_kv_dir_ready(const cli_common *o);

/* Reads a whole file into a NUL-terminated buffer. */
int cli_read_file(const char *path, char **data, size_t *len);

/* cli/help.c: `mtok COMMAND --help`. cli_help_wanted: the arguments after the command ask for help
 * (--help anywhere, or -h / help first); cli_help prints the command's options to stdout. */
int cli_help_wanted(int argc, char **argv);
int cli_help(const char *cmd);

int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_niah(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);    /* cli/cmd_bench.c: bench -m DIR | bench limits | bench kv */
int cmd_bench_kv(int argc, char **argv); /* cli/cmd_kv.c: the cold-tier benchmark behind `mtok bench kv` */
int cmd_prefill(int argc, char **argv);  /* cli/cmd_kv.c: prefill a document, --save-kv */
int cmd_qa(int argc, char **argv);       /* cli/cmd_kv.c: many questions from one document state */
int cmd_check(int argc, char **argv);    /* cli/cmd_check.c: dtypes, shapes and finite values of a checkpoint */
int cmd_serve(int argc, char **argv);    /* cli/cmd_serve.c: the OpenAI-compatible HTTP server (serve/) */
int cmd_image(int argc, char **argv);    /* cli/cmd_image.c: GLM-4V preprocessing and vision tower to .npy */
/* cli/cmd_kv.c: --load-kv for generate. Loads the saved document into the session: if the prompt ids
 * start with the saved tokens (block hash chain) those blocks are reused and *skip says how many
 * prompt ids are already in; otherwise the prompt continues after the document (a leading
 * [gMASK]<sop> is dropped when the document has one) and *skip = 0. */
int cli_load_kv_prompt(mtok_session *s, const mtok_tokenizer *t, const char *path, mtok_ids *ids, size_t *skip);
/* Logs the KV store's hot/cold sizes and spill traffic (nothing without --kv-budget). */
void cli_log_kv_stats(const mtok_session *s);

#endif
