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
 * synth/synth.c streams them like every other preset. */
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
    const char *metric;   /* NULL: auto (a LongBench v1 dataset: its own metric); "all", "part", "em", "f1" */
    const char *jieba_dir; /* jieba's data for LongBench's Chinese metrics (NULL: python3-jieba's) */
    volatile int *interrupted;
    /* LongBench prompted and generated as its pred.py (eval/lb_prompt.c, docs/EVAL.md §2.1, §2.5) */
    const char *prompts;  /* v1: config/dataset2prompt.json; v2: its prompts/ folder (NULL: off) */
    const char *maxlen;   /* v1: config/dataset2maxlen.json */
    int64_t max_length;   /* pred.py's model2maxlen (0: the context less the answer's budget and 16) */
    int cot;              /* v2: the chain-of-thought pass, then the answer pass */
    const char *dump_prompts; /* a jsonl of every prompt's ids fed and the ids generated (NULL: none) */
    int progress;         /* 1: a progress line over the records to run (base/progress.c) */
    double progress_s;    /* its interval (mtok_progress_begin); < 0: off (--no-progress, -q) */
} mev_eval_params;
/* Runs the model over the data (s, t may be NULL with score_only: then data already holds `pred`). */
int mev_eval_run(mtok_session *s, const mtok_tokenizer *t, const mev_eval_params *p, int score_only, FILE *report);

/* ---- the jsonl readers (eval/jsonl.c, eval/records.c) ------------------------------------------
 * Every jsonl file a user's run reaches (eval --data / --score, eval --resume's predictions, niah's
 * results.jsonl, qa --questions) is read by one of these. Any bytes give 0 or MTOK_EINPUT with one
 * line "FILE:LINE: what is wrong" (MTOK_ERESOURCE when memory runs out), never a crash: lines over
 * MEV_JSONL_MAX_LINE, NUL bytes, a line that is not one JSON object, a field of the wrong type, a
 * number jansson cannot hold. The *_parse forms read a buffer (the fuzz targets in tests/fuzz);
 * their `name` only labels messages. Results are freed with the matching *_free (NULL is fine);
 * on an error *out is NULL. */
#define MEV_JSONL_MAX_LINE ((size_t)256 << 20) /* a 1M-token LongBench context is ~5 MB */

/* mtok eval's input. MEV_DATA_RECORDS (--data): RULER or LongBench records, each needs an "input"
 * string and a list of reference strings ("outputs" or "answers"), or, LongBench v2, a "question" and
 * an "answer" letter; a record's key (its "task" or "dataset", and its "index", "_id" or line) must be
 * unique, since --resume matches predictions by it. MEV_DATA_PREDICTIONS (--score): each record needs
 * a "pred" string and the references (v2: its answer and a "pred" (null allowed), "response" or
 * "judge"). */
typedef struct mev_eval_data mev_eval_data;
enum { MEV_DATA_RECORDS = 0, MEV_DATA_PREDICTIONS = 1 };
int mev_eval_data_read(const char *path, int kind, mev_eval_data **out);
int mev_eval_data_parse(const char *name, const void *buf, size_t len, int kind, mev_eval_data **out);
size_t mev_eval_data_count(const mev_eval_data *d);
void mev_eval_data_free(mev_eval_data *d);

/* --resume's predictions file, matched to data's records by key (data may be NULL: lines are only
 * checked). A file that does not exist reads as empty. Our own output, so damage is repaired, not
 * refused: a torn last line (a run killed mid-write) is dropped, an unparsable line elsewhere is
 * skipped with a warning naming FILE:LINE, a second prediction for a record is dropped with a
 * warning; those records run again. Refused (MTOK_EINPUT): a prediction for a record data does not
 * have, or with other references (the predictions belong to another data file), and a file in which
 * no line is a prediction (not ours: it is never overwritten). */
typedef struct mev_eval_preds mev_eval_preds;
int mev_eval_preds_read(const char *path, const mev_eval_data *data, mev_eval_preds **out);
int mev_eval_preds_parse(const char *name, const void *buf, size_t len, const mev_eval_data *data,
                         mev_eval_preds **out);
size_t mev_eval_preds_count(const mev_eval_preds *p); /* predictions kept */
void mev_eval_preds_free(mev_eval_preds *p);

/* niah's results.jsonl: the finished cells (length, depth, variant and score checked). Lines that
 * are not a cell are skipped with a warning naming FILE:LINE (a torn last line with a note); a file
 * that does not exist reads as empty. Reading never changes the file. */
typedef struct mev_niah_results mev_niah_results;
int mev_niah_results_read(const char *path, mev_niah_results **out);
int mev_niah_results_parse(const char *name, const void *buf, size_t len, mev_niah_results **out);
size_t mev_niah_results_count(const mev_niah_results *r); /* cells kept */
size_t mev_niah_results_skipped(const mev_niah_results *r); /* lines skipped (torn one included) */
void mev_niah_results_free(mev_niah_results *r);

/* qa --questions: one JSON object per line with a "question" (or "input", or "prompt") string and
 * an optional "id" of any JSON type. Strict: a bad line is MTOK_EINPUT naming FILE:LINE, and so is
 * a file without questions. */
typedef struct {
    char *text;    /* the question, NUL-terminated (jansson refuses NUL in strings) */
    char *id_json; /* the "id" value as compact JSON, or NULL when absent */
    int64_t line;  /* its line in the file */
} mev_question;
typedef struct {
    mev_question *v;
    size_t n;
} mev_questions;
int mev_questions_read(const char *path, mev_questions *out);
int mev_questions_parse(const char *name, const void *buf, size_t len, mev_questions *out);
void mev_questions_free(mev_questions *q);

/* ---- small shared helpers (eval/util.c) --------------------------------------------------------- */
/* A session and its counters: feeding a prompt computes only what follows the longest common prefix
 * with what the session holds (mtok_session_feed), so cells and questions that share a document
 * share its prefill. */
typedef struct {
    mtok_session *s;
    const mtok_tokenizer *t;
    volatile int *interrupted; /* the feed's cancel flag: checked between prefill chunks */
    int64_t prefilled, cached; /* counters, reset by the caller */
    double prefill_s;
} mev_runner;
/* Returns 0, 1 when interrupted (the session then holds a prefix of ids, whole chunks of it), or an
 * error code. */
int mev_feed(mev_runner *r, const int32_t *ids, size_t n);
/* Greedy decoding of at most max_new tokens after the held prompt (stops at an end-of-sequence
 * id); the decoded text is appended to *text (malloc'ed, NUL-terminated, may start NULL). */
int mev_greedy(mev_runner *r, int64_t max_new, char **text, size_t *len);
/* Greedy decoding as transformers' generate(do_sample=False): at most max_new ids appended to *gen;
 * the stop id that ends it is appended too (never fed back). stop_ids NULL: the config's eos ids;
 * else these ids replace them (generate's eos_token_id=). For the first min_new tokens every stop id
 * is masked out of the argmax (generate's min_length). */
typedef struct {
    int64_t max_new, min_new;
    const int32_t *stop_ids;
    size_t n_stop;
} mev_gen_opts;
int mev_greedy_ex(mev_runner *r, const mev_gen_opts *o, mtok_ids *gen);
/* The text of ids, special tokens left out when skip_special (decode(skip_special_tokens=True));
 * malloc'ed, NUL-terminated; NULL with a message when out of memory. */
char *mev_decode_ids(const mtok_tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len);
void mev_runner_free(mev_runner *r);
double mev_now(void);
uint64_t mev_peak_rss_bytes(void);
int mev_mkdir_p(const char *dir);

#ifdef __cplusplus
}
#endif
#endif
