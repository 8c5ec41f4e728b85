/* fuzz_qa_questions.c — `mtok qa --questions Q.jsonl` (eval/records.c mev_questions_*), read from a
 * file and from a buffer; every question's text and id are read back. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "../../eval/eval.h"

static char *path;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    path = fz_work("questions.jsonl");
    return 0;
}

static void touch(const mev_questions *q) {
    size_t sum = 0;
    for (size_t i = 0; i < q->n; i++) {
        sum += strlen(q->v[i].text) + (size_t)q->v[i].line;
        if (q->v[i].id_json) sum += strlen(q->v[i].id_json);
    }
    (void)*(volatile size_t *)&sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(path, data, size);
    mev_questions q = {0};
    if (mev_questions_read(path, &q) == 0) touch(&q);
    mev_questions_free(&q);
    memset(&q, 0, sizeof q);
    if (mev_questions_parse("questions.jsonl", data, size, &q) == 0) touch(&q);
    mev_questions_free(&q);
    return 0;
}
