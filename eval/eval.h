/* eval.h — the evaluation module (prefix mev_): the planted needle model, the needle-in-a-haystack
 * grid runner (mtok niah), RULER / LongBench-style scoring (mtok eval) and the heatmap.
 *
 * Everything returns 0 or a negative MTOK_E* code with a message in mtok_errmsg(), like libmtok. */
#ifndef MTOK_EVAL_H
#define MTOK_EVAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../core/mtok.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the needle model (eval/needle.c; docs/NEEDLE.md) -------------------------------------------
 * Special tokens declared after the 14 GLM-4 ones: <|fact:K:V|> (K-major), then <|ask:K|>, then
 * <|val:V|>. The weights are a function of (tensor kind, layer, row, column, a unit-normal draw), so
 * core/synth.c streams them like every other preset. */
#define MEV_NEEDLE_KEYS 16
#define MEV_NEEDLE_VALUES 64
#define MEV_NEEDLE_N_EXTRA (MEV_NEEDLE_KEYS * MEV_NEEDLE_VALUES + MEV_NEEDLE_KEYS + MEV_NEEDLE_VALUES)

typedef enum {
    MEV_W_EMBED, MEV_W_ATTN_NORM, MEV_W_Q, MEV_W_K, MEV_W_V, MEV_W_QB, MEV_W_KB, MEV_W_VB, MEV_W_DENSE,
    MEV_W_MLP_NORM, MEV_W_GATE, MEV_W_UP, MEV_W_DOWN, MEV_W_FINAL_NORM, MEV_W_OUTPUT, MEV_W_OTHER
} mev_wkind;

typedef struct {
    int64_t layers, hidden, heads, head_dim, groups, ffn, vocab;
    int64_t first_extra; /* id of <|fact:0:0|> = BPE ranks + 14 GLM-4 specials */
} mev_needle_shape;

/* Text of extra special j (0 <= j < MEV_NEEDLE_N_EXTRA) into buf. */
void mev_needle_token_name(int j, char *buf, size_t cap);
/* Checks that the shape can carry the circuit (head_dim 128, enough residual dims, ...). */
int mev_needle_check(const mev_needle_shape *s);
/* The value of one weight element; z is a unit-normal draw owned by this element. */
float mev_needle_weight(const mev_needle_shape *s, mev_wkind kind, int layer, int64_t row, int64_t col, float z);
/* The public-domain corpus (Genesis, KJV) that trains the BPE vocabulary and fills default haystacks. */
extern const char mev_corpus_kjv[];
extern const size_t mev_corpus_kjv_len;

/* Token ids of a needle model's specials, found through its tokenizer; *is_needle = 0 for other models. */
typedef struct {
    int is_needle;
    int32_t fact0, ask0, val0; /* <|fact:0:0|>, <|ask:0|>, <|val:0|> */
} mev_needle_ids;
int mev_needle_ids_find(const mtok_tokenizer *t, mev_needle_ids *out);

/* ---- needle-in-a-haystack grid (eval/niah.c) ---------------------------------------------------- */
typedef enum { MEV_SINGLE = 0, MEV_MULTIKEY, MEV_MULTIVALUE, MEV_MULTIQUERY, MEV_N_VARIANTS } mev_variant;
const char *mev_variant_name(mev_variant v);
int mev_variant_parse(const char *s, mev_variant *out);

typedef struct {
    const int64_t *lengths; /* prompt tokens, template included */
    size_t n_lengths;
    const double *depths;   /* percent, 0..100 */
    size_t n_depths;
    const mev_variant *variants;
    size_t n_variants;
    const char *out_dir;
    const char *haystack_file; /* NULL: the built-in Genesis text (or noise when noise = 1) */
    int noise;                 /* RULER's "grass is green" noise haystack */
    int needle_mode;           /* -1 auto (fact tokens if the model has them), 0 text needles, 1 fact tokens */
    int n_extra;               /* distractors / values / queries for the multi-* variants (default 3, 4, 4) */
    int resume;
    int all_depths;            /* one document per length with a needle (distinct key) at every depth,
                                * each key asked on its own: one prefill per length instead of one per
                                * cell (at most 16 depths) */
    uint64_t seed;
    int64_t max_new;           /* tokens generated per answer (0: auto) */
    int progress;              /* -1: auto (stderr is a terminal), 0 off, 1 on */
    const char *title;         /* heatmap title (NULL: a default naming the model) */
    const char *model_name;
    volatile int *interrupted; /* set by a SIGINT handler; the run stops between chunks */
    uint64_t (*spilled_bytes)(const mtok_session *s, void *user); /* optional; NULL: 0 */
    void *spilled_user;
} mev_niah_params;

typedef struct {
    size_t cells, done, skipped;
    double mean_score, seconds;
    int interrupted;
} mev_niah_summary;

/* Runs the grid on a loaded model. results.jsonl lines are appended (fsynced) as cells finish;
 * heatmap.png and the stdout table are produced from the whole file at the end (also when
 * interrupted). */
int mev_niah_run(mtok_session *s, const mtok_tokenizer *t, const mev_niah_params *p, mev_niah_summary *sum);
/* Rebuilds heatmap.png and prints the table from DIR/results.jsonl. */
int mev_niah_report(const char *out_dir, const char *title, FILE *table);

/* ---- heatmap (eval/heatmap.c) ------------------------------------------------------------------- */
typedef struct {
    const int64_t *lengths; /* columns */
    size_t n_lengths;
    const double *depths;   /* rows, top to bottom */
    size_t n_depths;
    const double *score;    /* [n_depths][n_lengths]; NaN = missing cell */
    const char *title;
    const char *subtitle;
} mev_heatmap;
int mev_heatmap_png(const mev_heatmap *h, const char *path);
/* Releases cairo's and fontconfig's process-wide caches (before exit, for leak checkers). */
void mev_graphics_cleanup(void);

/* ---- scoring (eval/score.c) --------------------------------------------------------------------- */
/* RULER: fraction of refs contained in pred (case-insensitive), and 1 if any is. */
double mev_string_match_all(const char *pred, const char *const *refs, size_t n);
double mev_string_match_part(const char *pred, const char *const *refs, size_t n);
/* SQuAD-style normalised exact match and token F1, maximised over the refs. */
double mev_exact_match(const char *pred, const char *const *refs, size_t n);
double mev_token_f1(const char *pred, const char *const *refs, size_t n);

typedef struct {
    const char *data;     /* input jsonl (RULER or LongBench lines) */
    const char *out;      /* predictions jsonl */
    int64_t max_new;      /* 0: per-format default (RULER 128, LongBench 64) */
    int special;          /* special-token strings in the data map to their ids */
    int resume;           /* skip records whose index is already in out */
    const char *metric;   /* NULL: auto; "all", "part", "em", "f1" */
    volatile int *interrupted;
} mev_eval_params;
/* Runs the model over the data (s, t may be NULL with score_only: then data already holds `pred`). */
int mev_eval_run(mtok_session *s, const mtok_tokenizer *t, const mev_eval_params *p, int score_only, FILE *report);

/* ---- small shared helpers (eval/util.c) --------------------------------------------------------- */
/* A session plus the ids it holds: feeding a prompt computes only what follows the longest common
 * prefix with them (mtok_session_truncate rolls the rest back), so cells and questions that share a
 * document share its prefill. */
typedef struct {
    mtok_session *s;
    const mtok_tokenizer *t;
    mtok_ids held;
    volatile int *interrupted;
    int64_t prefilled, cached; /* counters, reset by the caller */
    double prefill_s;
} mev_runner;
/* Returns 0, 1 when interrupted (the session then holds a prefix of ids), or an error code. */
int mev_feed(mev_runner *r, const int32_t *ids, size_t n);
/* Greedy decoding of at most max_new tokens after the held prompt (stops at an end-of-sequence
 * id); the decoded text is appended to *text (malloc'ed, NUL-terminated, may start NULL). */
int mev_greedy(mev_runner *r, int64_t max_new, char **text, size_t *len);
void mev_runner_free(mev_runner *r);
double mev_now(void);
uint64_t mev_peak_rss_bytes(void);
int mev_mkdir_p(const char *dir);

#ifdef __cplusplus
}
#endif
#endif
