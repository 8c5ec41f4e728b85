/* test_eval_jsonl.c — the jsonl readers of eval/ (eval.h) through their library entry points, the
 * ones tests/fuzz calls: hostile buffers (NUL bytes, non-objects, wrong field types, numbers
 * beyond int64/double, deep nesting, torn and garbage lines, CRLF) give 0 or MTOK_EINPUT with
 * "NAME:LINE:" and never touch memory they should not (run it under the sanitizer build); the
 * streamed file reader returns the same lines as the buffer reader across its chunk boundaries and
 * refuses a line over MEV_JSONL_MAX_LINE. argv[1] = source dir, argv[2] = build dir (unused). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/mtok.h"
#include "eval/eval.h"

#include "check.h"

static int has(const char *needle) { return strstr(mtok_errmsg(), needle) != NULL; }

static int q_parse(const char *s, mev_questions *q) { return mev_questions_parse("q.jsonl", s, strlen(s), q); }

static void questions(void) {
    mev_questions q;
    CHECK(q_parse("{\"question\": \"a\", \"id\": 7}\r\n\n  \n{\"input\": \"b\", \"id\": {\"k\": [1]}}\n{\"prompt\": \"c\"}", &q)
              == 0 && q.n == 3,
          "three questions: %s", mtok_errmsg());
    if (q.n == 3) {
        CHECK(!strcmp(q.v[0].text, "a") && !strcmp(q.v[0].id_json, "7") && q.v[0].line == 1, "question 1");
        CHECK(!strcmp(q.v[1].text, "b") && !strcmp(q.v[1].id_json, "{\"k\":[1]}") && q.v[1].line == 4, "question 2");
        CHECK(!strcmp(q.v[2].text, "c") && q.v[2].id_json == NULL && q.v[2].line == 5, "question 3 (no id, no '\\n')");
    }
    mev_questions_free(&q);
    static const struct {
        const char *text;
        size_t len; /* 0: strlen */
        const char *want;
    } bad[] = {
        {"{\"question\": \"a\"}\n{\"question\": \"a\0b\"}\n", 38, "q.jsonl:2:"},
        {"{\"question\": \"a\\u0000b\"}", 0, "q.jsonl:1:"},
        {"[\"question\"]", 0, "q.jsonl:1: a JSON array"},
        {"\"question\"", 0, "q.jsonl:1:"},
        {"{\"question\": 5}", 0, "q.jsonl:1: \"question\" is not a string"},
        {"{\"question\": null, \"input\": \"x\"}", 0, "q.jsonl:1: \"question\" is not a string"},
        {"{\"question\": \"\"}", 0, "q.jsonl:1: \"question\" is empty"},
        {"{\"id\": 1}", 0, "q.jsonl:1: expected"},
        {"{\"question\": \"x\", \"id\": 99999999999999999999999}", 0, "q.jsonl:1:"},
        {"{\"question\": \"x\", \"id\": -1e400}", 0, "q.jsonl:1:"},
        {"{\"question\": \"x\"}\n{\"question\": \"x\"", 0, "q.jsonl:2:"},
        {"{\"question\": \"x\"} {\"question\": \"y\"}", 0, "q.jsonl:1:"},
        {"\n\n \r\n", 0, "no questions"},
        {"", 0, "no questions"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = mev_questions_parse("q.jsonl", bad[i].text, bad[i].len ? bad[i].len : strlen(bad[i].text), &q);
        CHECK(rc == MTOK_EINPUT && has(bad[i].want) && q.n == 0 && q.v == NULL, "bad question file %zu: rc %d: %s", i,
              rc, mtok_errmsg());
        CHECK(!strchr(mtok_errmsg(), '\n'), "one line");
    }
    /* deep nesting: jansson stops at its depth limit, no stack overflow */
    size_t depth = 100000, n = 2 * depth + 64;
    char *deep = malloc(n);
    size_t k = (size_t)snprintf(deep, n, "{\"question\": \"x\", \"d\": ");
    for (size_t i = 0; i < depth; i++) deep[k++] = '[';
    for (size_t i = 0; i < depth && k + 2 < n; i++) deep[k++] = ']';
    deep[k++] = '}';
    CHECK(mev_questions_parse("q.jsonl", deep, k, &q) == MTOK_EINPUT && has("q.jsonl:1:"), "deep nesting: %s",
          mtok_errmsg());
    free(deep);
}

static const char *DATA = "{\"index\": 0, \"input\": \"i0\", \"outputs\": [\"a\"]}\n"
                          "{\"index\": 1, \"input\": \"i1\", \"outputs\": [\"b\", \"c\"]}\n"
                          "{\"_id\": \"x\", \"dataset\": \"hq\", \"input\": \"i2\", \"answers\": [\"d\"]}\n"
                          "{\"input\": \"i3\", \"answers\": []}\n";

static void eval_data(void) {
    mev_eval_data *d = NULL;
    CHECK(mev_eval_data_parse("d.jsonl", DATA, strlen(DATA), MEV_DATA_RECORDS, &d) == 0 && mev_eval_data_count(d) == 4,
          "data: %s", mtok_errmsg());
    mev_eval_data_free(d);
    static const struct {
        const char *text;
        int kind;
        const char *want;
    } bad[] = {
        {"{\"input\": \"i\"}", MEV_DATA_RECORDS, "d.jsonl:1: neither \"outputs\" nor \"answers\""},
        {"{\"input\": \"i\", \"outputs\": \"a\"}", MEV_DATA_RECORDS, "d.jsonl:1: \"outputs\" is not a list"},
        {"{\"input\": \"i\", \"answers\": [\"a\", 1]}", MEV_DATA_RECORDS, "d.jsonl:1: \"answers\" item 2"},
        {"{\"input\": 3, \"outputs\": []}", MEV_DATA_RECORDS, "d.jsonl:1: \"input\" is not a string"},
        {"{\"outputs\": []}", MEV_DATA_RECORDS, "d.jsonl:1: no \"input\""},
        {"{\"input\": \"i\", \"outputs\": [], \"context\": {}}", MEV_DATA_RECORDS, "\"context\" is not a string"},
        {"{\"input\": \"i\", \"outputs\": [], \"index\": 1.5}", MEV_DATA_RECORDS, "\"index\" is neither"},
        {"{\"input\": \"i\", \"outputs\": [], \"index\": true}", MEV_DATA_RECORDS, "\"index\" is neither"},
        {"{\"input\": \"i\", \"outputs\": [], \"data_line\": -4}", MEV_DATA_RECORDS, "\"data_line\""},
        /* RULER's index is a character offset that may repeat; only the same record twice is refused */
        {"{\"input\": \"i\", \"outputs\": [], \"index\": 1}\n{\"input\": \"i\", \"outputs\": [], \"index\": 1}",
         MEV_DATA_RECORDS, "d.jsonl:2: index 1 repeats line 1"},
        {"{\"outputs\": [\"a\"]}", MEV_DATA_PREDICTIONS, "d.jsonl:1: no \"pred\""},
        {"{\"outputs\": [\"a\"], \"pred\": [\"a\"]}", MEV_DATA_PREDICTIONS, "d.jsonl:1: \"pred\" is not a string"},
        {"{\"outputs\": [\"a\"], \"pred\": \"a\", \"length\": 1e309}", MEV_DATA_PREDICTIONS, "d.jsonl:1:"},
        {"\xef\xbb\xbf{\"outputs\": [\"a\"], \"pred\": \"a\"}", MEV_DATA_PREDICTIONS, "d.jsonl:1:"},
        {"{\"outputs\": [\"a\"], \"pred\": \"\xc3\"}", MEV_DATA_PREDICTIONS, "d.jsonl:1:"},
        {"", MEV_DATA_PREDICTIONS, "no records"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = mev_eval_data_parse("d.jsonl", bad[i].text, strlen(bad[i].text), bad[i].kind, &d);
        CHECK(rc == MTOK_EINPUT && has(bad[i].want) && d == NULL, "bad data %zu: rc %d: %s", i, rc, mtok_errmsg());
    }
    /* the same index twice is fine for --score (files of several tasks scored together) */
    const char *two = "{\"index\": 0, \"outputs\": [], \"pred\": \"\"}\n{\"index\": 0, \"outputs\": [], \"pred\": \"\"}\n";
    CHECK(mev_eval_data_parse("p.jsonl", two, strlen(two), MEV_DATA_PREDICTIONS, &d) == 0 && mev_eval_data_count(d) == 2,
          "repeated index in predictions: %s", mtok_errmsg());
    mev_eval_data_free(d);
}

static void eval_preds(void) {
    mev_eval_data *d = NULL;
    mev_eval_preds *p = NULL;
    if (mev_eval_data_parse("d.jsonl", DATA, strlen(DATA), MEV_DATA_RECORDS, &d)) {
        CHECK(0, "data: %s", mtok_errmsg());
        return;
    }
    /* damage is repaired: garbage, a non-prediction, a duplicate, a torn tail */
    const char *ok = "{\"index\": 1, \"input\": \"i1\", \"outputs\": [\"b\", \"c\"], \"pred\": \"b\"}\n"
                     "garbage\x01\n"
                     "{\"index\": 0, \"outputs\": [\"a\"]}\n"
                     "{\"_id\": \"x\", \"dataset\": \"hq\", \"answers\": [\"d\"], \"pred\": \"d\"}\n"
                     "{\"index\": 1, \"outputs\": [\"b\", \"c\"], \"pred\": \"c\"}\n"
                     "{\"data_line\": 4, \"answers\": [], \"pred\": \"\"}\n"
                     "{\"index\": 0, \"outp";
    CHECK(mev_eval_preds_parse("p.jsonl", ok, strlen(ok), d, &p) == 0 && mev_eval_preds_count(p) == 3,
          "repaired predictions: %zu kept: %s", mev_eval_preds_count(p), mtok_errmsg());
    mev_eval_preds_free(p);
    CHECK(mev_eval_preds_parse("p.jsonl", ok, strlen(ok), NULL, &p) == 0 && mev_eval_preds_count(p) == 4,
          "without data every prediction line is kept: %zu", mev_eval_preds_count(p));
    mev_eval_preds_free(p);
    CHECK(mev_eval_preds_parse("p.jsonl", "", 0, d, &p) == 0 && mev_eval_preds_count(p) == 0, "empty predictions");
    mev_eval_preds_free(p);
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"{\"index\": 7, \"outputs\": [\"a\"], \"pred\": \"a\"}", "p.jsonl:1: a prediction for index 7, which d.jsonl"},
        {"{\"index\": 0, \"task\": \"t\", \"outputs\": [\"a\"], \"pred\": \"a\"}", "p.jsonl:1: a prediction for task t"},
        {"{\"index\": \"0\", \"outputs\": [\"a\"], \"pred\": \"a\"}", "p.jsonl:1: a prediction for index \"0\""},
        {"{\"index\": 1, \"outputs\": [\"b\"], \"pred\": \"a\"}", "p.jsonl:1: the prediction for index 1 has other "
                                                               "references than d.jsonl:2"},
        {"{\"index\": 1, \"input\": \"other\", \"outputs\": [\"b\", \"c\"], \"pred\": \"a\"}", "other input"},
        {"{\"data_line\": 9, \"answers\": [], \"pred\": \"\"}", "p.jsonl:1: a prediction for data line 9"},
        {"nope\n[]\n", "p.jsonl:1: not JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = mev_eval_preds_parse("p.jsonl", bad[i].text, strlen(bad[i].text), d, &p);
        CHECK(rc == MTOK_EINPUT && has(bad[i].want) && p == NULL, "bad predictions %zu: rc %d: %s", i, rc,
              mtok_errmsg());
    }
    mev_eval_data_free(d);
}

static void niah_results(void) {
    mev_niah_results *r = NULL;
    static const char s[] = "{\"length\": 512, \"depth\": 0, \"variant\": \"single\", \"score\": 1.0}\n"
                    "\x00\x01\n"
                    "{\"length\": 512, \"depth\": 50.5, \"variant\": \"multikey\", \"score\": 0}\n"
                    "{\"length\": -5, \"depth\": 0, \"variant\": \"single\", \"score\": 1}\n"
                    "{\"length\": 512, \"depth\": 101, \"variant\": \"single\", \"score\": 1}\n"
                    "{\"length\": 512, \"depth\": 1, \"variant\": \"sideways\", \"score\": 1}\n"
                    "{\"length\": 512, \"depth\": 1, \"variant\": \"single\", \"score\": 2}\n"
                    "{\"length\": 512, \"depth\": 1, \"variant\": \"single\", \"score\": 1, \"bytes_spilled\": \"x\"}\n"
                    "{\"length\": 99999999999999999999, \"depth\": 1, \"variant\": \"single\", \"score\": 1}\n"
                    "{\"length\": 1024, \"depth\": 100, \"variant\": \"single\", \"score\": 0.5}\n"
                    "{\"length\": 1024, \"de";
    const size_t n = sizeof s - 1; /* the literal holds a NUL */
    CHECK(mev_niah_results_parse("r.jsonl", s, n, &r) == 0 && mev_niah_results_count(r) == 3 &&
              mev_niah_results_skipped(r) == 8,
          "niah results: %zu kept, %zu skipped: %s", mev_niah_results_count(r), mev_niah_results_skipped(r),
          mtok_errmsg());
    mev_niah_results_free(r);
    CHECK(mev_niah_results_parse("r.jsonl", NULL, 0, &r) == 0 && mev_niah_results_count(r) == 0, "empty results");
    mev_niah_results_free(r);
}

/* The streamed reader against the buffer reader: lines of every length around its chunk sizes. */
static void file_reader(void) {
    char path[] = "/tmp/mtok-jsonl-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        CHECK(0, "mkstemp");
        return;
    }
    FILE *f = fdopen(fd, "w");
    size_t want = 0;
    srand(7);
    char *big = malloc(3u << 20);
    memset(big, 'q', 3u << 20);
    for (int i = 0; i < 600; i++) {
        size_t len = i == 300 ? (3u << 20) - 1 : (size_t)(rand() % 9000) + 1;
        fprintf(f, "{\"question\": \"%.*s\", \"id\": %d}\n", (int)len, big, i);
        want++;
    }
    fprintf(f, "{\"question\": \"last\"}"); /* no '\n' */
    want++;
    fclose(f);
    mev_questions q;
    CHECK(mev_questions_read(path, &q) == 0 && q.n == want, "streamed questions: %zu of %zu: %s", q.n, want,
          mtok_errmsg());
    for (size_t i = 0; i + 1 < q.n; i++) {
        size_t len = strlen(q.v[i].text);
        CHECK(q.v[i].line == (int64_t)i + 1 && (i == 300 ? len == (3u << 20) - 1 : len >= 1 && len <= 9000),
              "question %zu: line %lld, %zu bytes", i, (long long)q.v[i].line, len);
    }
    if (q.n == want) CHECK(!strcmp(q.v[want - 1].text, "last"), "the last question without '\\n'");
    mev_questions_free(&q);
    free(big);
    /* one line past the limit, as a sparse file (no disk, little time) */
    f = fopen(path, "w");
    if (f) fputs("{\"question\": \"", f), fclose(f);
    CHECK(truncate(path, (off_t)MEV_JSONL_MAX_LINE + 10) == 0, "truncate");
    CHECK(mev_questions_read(path, &q) == MTOK_EINPUT && has(":1: a line longer than 256 MiB"), "long line: %s",
          mtok_errmsg());
    unlink(path);
    CHECK(mev_questions_read(path, &q) == MTOK_EINPUT && has("No such file"), "missing file: %s", mtok_errmsg());
    CHECK(mev_questions_read("/tmp", &q) == MTOK_EINPUT && has("is a directory"), "directory: %s", mtok_errmsg());
    mev_niah_results *r = NULL;
    CHECK(mev_niah_results_read(path, &r) == 0 && mev_niah_results_count(r) == 0, "missing results read as empty");
    mev_niah_results_free(r);
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    mtok_set_log_level(0); /* the repaired-line warnings are expected here */
    questions();
    eval_data();
    eval_preds();
    niah_results();
    file_reader();
    if (!check_failures) printf("all jsonl reader checks passed\n");
    return check_failures != 0;
}
