/* ruler.h — inside eval/ only: RULER (NVIDIA/RULER) exactly as its own Python does it
 * (docs/EVAL.md §1.4–1.6): the prediction's post-processing, the Unicode case folding of its
 * string_match_all / string_match_part, the rounding of a task score, the task table
 * (scripts/synthetic.yaml: name -> base task -> metric and tokens_to_generate), the detection of an
 * input that already carries a chat template, and the prediction line its evaluate.py reads.
 *
 * Every function returns 0 or a negative MTOK_E* code (message in mtok_errmsg()), or says otherwise. */
#ifndef MTOK_EVAL_RULER_H
#define MTOK_EVAL_RULER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* RULER's postprocess_pred (NVIDIA/RULER:scripts/eval/evaluate.py): Python's str.strip() (its 29 whitespace code
 * points, U+001C..U+001F and U+0085, U+00A0, U+2000.. included), every byte 0x00..0x1f replaced by
 * '\n', strip() again. *out is malloc'ed and NUL-terminated; *n its length. */
int mev_ruler_postprocess(const char *pred, size_t len, char **out, size_t *n);

/* Python's str.lower() on UTF-8 text: the full Unicode lower-case mapping of ICU's root locale
 * ("İ" -> "i̇", "ẞ" -> "ß", a final capital sigma -> "ς"), the mapping CPython applies. Bytes that are
 * not UTF-8 are lowered as ASCII (Python never sees them: a JSON string is Unicode). *out is
 * malloc'ed and NUL-terminated. */
int mev_ruler_lower(const char *s, size_t len, char **out, size_t *n);

/* How many of refs[0..n) RULER finds in pred: `r.lower() in pred.lower()` (an empty reference is
 * always found); any != 0 stops at the first hit. pred is used as given: post-process it first. */
int mev_ruler_hits(const char *pred, const char *const *refs, size_t n, int any, size_t *hits);

/* A task score as RULER reports it: round(sum / n * 100, 2) with Python's round (the binary value
 * rounded to two decimals, ties to even), 0 for n = 0. */
double mev_ruler_score(double sum, size_t n);

/* A RULER task by the name its data and prediction files carry (synthetic.yaml's keys, e.g.
 * niah_multikey_2, vt, qa_1) or its base task's name (niah, variable_tracking, ...). */
typedef struct {
    const char *name;       /* synthetic.yaml's name (or the name asked for, for a base task) */
    const char *base;       /* niah, variable_tracking, common_words_extraction, freq_words_extraction, qa */
    const char *metric;     /* "all" (string_match_all) or "part" (string_match_part, the qa tasks) */
    int64_t tokens_to_generate; /* NVIDIA/RULER:scripts/data/synthetic/constants.py: 128, 30, 120, 50, 32 */
    int order;              /* its place in synthetic.yaml (evaluate.py reports tasks in that order) */
} mev_ruler_task;
/* 1 with *t filled for a known task, 0 for another name. */
int mev_ruler_task_find(const char *name, mev_ruler_task *t);

/* 1 when dir holds RULER prediction files (NVIDIA/RULER:scripts/pred/call_api.py's TASK.jsonl, whose lines carry
 * "outputs"), 0 otherwise (e.g. LongBench's pred/MODEL/DATASET.jsonl, whose lines carry "answers"):
 * the first object line of the first .jsonl file (in name order) with either field decides. */
int mev_ruler_folder(const char *dir);

/* 1 when a record's input already holds a GLM-4 chat template (RULER's `chatglm-chat` model
 * template, NVIDIA/RULER:scripts/data/template.py: "[gMASK]sop<|user|> \n ...<|assistant|> \n "): it has
 * "[gMASK]", or both "<|user|>" and "<|assistant|>". Such an input is fed as it is (its marker
 * strings read as the special tokens) and not wrapped in the chat template again. */
int mev_ruler_has_template(const char *input);

/* The prediction line RULER's NVIDIA/RULER:scripts/pred/call_api.py writes and its evaluate.py reads, built from
 * a data record: index, pred, input, outputs, others, truncation, length first (others {} and
 * truncation -1 when the record has none, length -1 likewise), then every other field of the record
 * but a LongBench "context", then data_line (the record's line in the data file, which --resume
 * matches with the content). The input is kept whatever its length (evaluate.py reads it). NULL when
 * out of memory. */
json_t *mev_ruler_prediction(json_t *rec, const char *pred, int64_t data_line);

#endif
