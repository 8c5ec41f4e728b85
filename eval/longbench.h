/* longbench.h — inside eval/: LongBench v1 / v2 scoring and prompting as THUDM/LongBench's own
 * scripts do it (docs/EVAL.md §2), and the pieces of Python's text handling they depend on. */
#ifndef MTOK_EVAL_LONGBENCH_H
#define MTOK_EVAL_LONGBENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "eval.h"

/* ---- Python's view of text (eval/lb_unicode.c) -------------------------------------------------- */
/* One code point from s[0, n): its byte length, 0 when the bytes are not UTF-8. */
size_t mev_utf8_decode(const char *s, size_t n, uint32_t *cp);
size_t mev_utf8_encode(uint32_t c, char *out); /* 1..4 bytes */
int mev_py_isword(uint32_t c);                 /* re's \w */
int mev_py_isdigit(uint32_t c);                /* re's \d */
int mev_py_isspace(uint32_t c);                /* str.isspace(), str.split()'s separators */
size_t mev_py_lower(uint32_t c, uint32_t out[2]); /* str.lower() of one code point: 1 or 2 code points */

/* ---- jieba's default segmentation (eval/zh_seg.c) ----------------------------------------------- */
typedef struct mev_zhseg mev_zhseg;
typedef struct {
    size_t off, len; /* bytes of the text */
} mev_span;
typedef struct {
    mev_span *v;
    size_t n, cap;
} mev_spans;
/* dir: a folder with jieba's dict.txt and finalseg/prob_{start,trans,emit}.py; NULL: python3-jieba's. */
int mev_zhseg_open(const char *dir, mev_zhseg **out);
const char *mev_zhseg_default_dir(void); /* NULL when python3-jieba is not installed */
void mev_zhseg_free(mev_zhseg *z);
/* The words of s[0, len) as jieba.cut(s) yields them (out is reused; free out->v). */
int mev_zhseg_cut(const mev_zhseg *z, const char *s, size_t len, mev_spans *out);

/* ---- LongBench v1 metrics (eval/longbench.c): each as LongBench/metrics.py defines it ------------ */
typedef enum {
    MEV_LB_QA_F1, MEV_LB_QA_F1_ZH, MEV_LB_ROUGE, MEV_LB_ROUGE_ZH, MEV_LB_CLASSIFICATION, MEV_LB_RETRIEVAL,
    MEV_LB_RETRIEVAL_ZH, MEV_LB_COUNT, MEV_LB_CODE_SIM
} mev_lb_metric;
/* The metric of a LongBench v1 dataset (eval.py's dataset2metric); -1 for other names. */
int mev_lb_metric_of(const char *dataset);
const char *mev_lb_metric_name(int metric); /* "qa_f1_score", ... */
/* The needs of a metric: jieba (Chinese) for QA_F1_ZH and ROUGE_ZH. */
int mev_lb_needs_zh(int metric);

typedef struct {
    const mev_zhseg *zh;             /* for the Chinese metrics */
    const char *const *all_classes;  /* classification */
    size_t n_classes;
} mev_lb_ctx;
/* One metric on one (prediction, ground truth) pair; < 0 is an error (MTOK_EINPUT with a message: a
 * retrieval answer without its paragraph number, a classification without all_classes). */
int mev_lb_metric_score(int metric, const mev_lb_ctx *c, const char *pred, const char *truth, double *out);
/* A sample's score as eval.py's scorer makes it: the first line of the prediction for trec,
 * triviaqa, samsum and lsht, then the maximum of the metric over the answers. */
int mev_lb_sample_score(const char *dataset, const mev_lb_ctx *c, const char *pred, const char *const *answers,
                        size_t n_answers, double *out);

/* Python's round(x, nd) on a double, and repr(x) (json.dump's form of a float: "66.67", "100.0", "NaN"). */
double mev_py_round(double x, int nd);
void mev_py_repr(double x, char *buf, size_t cap);
/* numpy.mean of n doubles (its pairwise summation), NaN when n == 0. */
double mev_np_mean(const double *v, size_t n);

/* mtok eval --score DIR: every DIR/<dataset>.jsonl in LongBench's prediction layout (pred, answers,
 * all_classes, length) scored as eval.py does (LongBench-E's length buckets with e = 1), printed as
 * its result.json; LongBench v2 result files (lines with _id, difficulty, length, judge or pred and
 * answer) are scored as v2's result.py does. */
typedef struct {
    const char *dir;
    int e;                  /* LongBench-E: 0-4k / 4-8k / 8k+ buckets */
    const char *jieba_dir;  /* NULL: python3-jieba's */
} mev_lb_score_params;
int mev_lb_score_dir(const mev_lb_score_params *p, FILE *out);

/* ---- prompting and generating as LongBench's pred.py (eval/lb_prompt.c) ------------------------ */
/* The user's LongBench configuration: prompts is v1's config/dataset2prompt.json (then maxlen, may be
 * NULL, its dataset2maxlen.json) or v2's prompts/ folder (0shot.txt; with cot 0shot_cot.txt and
 * 0shot_cot_ans.txt). */
typedef struct mev_lb_gen mev_lb_gen;
int mev_lb_gen_open(const char *prompts, const char *maxlen, int cot, mev_lb_gen **out);
void mev_lb_gen_free(mev_lb_gen *g);
int mev_lb_gen_is_v2(const mev_lb_gen *g);
typedef struct {
    int64_t max_length; /* pred.py's model2maxlen; 0: the context less the answer's budget and 16 */
    int64_t max_new;    /* > 0: replaces dataset2maxlen's (v1) and the 128 / 1024 tokens (v2) */
    FILE *dump;         /* NULL, or a jsonl that gets each pass's fed ids and generated ids */
} mev_lb_gen_opts;
/* Prompts record rec (of dataset, on its data file's line) as pred.py does, feeds and generates
 * through r (sharing what r's session holds), and makes the prediction line pred.py writes: *out.
 * *n_fed: the tokens of the last prompt fed. Returns 0, 1 when interrupted, or an error. */
int mev_lb_predict(const mev_lb_gen *g, const mev_lb_gen_opts *o, mev_runner *r, json_t *rec, const char *dataset,
                   int64_t line, json_t **out, int64_t *n_fed);
/* Python's template.format(**fields) for the templates LongBench writes (named fields, "{{" / "}}"). */
int mev_py_format(const char *tmpl, json_t *fields, char **out, size_t *len);

/* ---- LongBench v2 (eval/longbench.c) ------------------------------------------------------------ */
/* The answer letter in a response: "The correct answer is (X)" or "... is X", '*' removed first;
 * 0 when there is none. */
char mev_lb2_extract(const char *response);

#endif
