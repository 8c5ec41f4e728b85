/* fuzz_eval_preds.c — the predictions file `mtok eval --resume` reads back (eval/records.c
 * mev_eval_preds_*: our own output, repaired rather than refused, but matched by key against the
 * data's records, where a wrong count once overflowed the heap: issue 16, finding 3), read from a file
 * and from a buffer, against the fixture data set (tests/fuzz/fixtures/eval/niah_single_1.jsonl, the
 * file the seeds were predicted from) and against none. */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "../../eval/eval.h"

static char *path;
static mev_eval_data *data_set;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    path = fz_work("niah_single_1.preds.jsonl");
    char *src = fz_fixture("eval/niah_single_1.jsonl"), *dst = fz_work("niah_single_1.jsonl");
    fz_copy(src, dst);
    if (mev_eval_data_read(dst, MEV_DATA_RECORDS, &data_set)) {
        fprintf(stderr, "fuzz harness: %s\n", mtok_errmsg());
        abort();
    }
    free(src), free(dst);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(path, data, size);
    for (int with = 0; with < 2; with++) {
        const mev_eval_data *d = with ? data_set : NULL;
        mev_eval_preds *p = NULL;
        if (mev_eval_preds_read(path, d, &p) == 0) (void)mev_eval_preds_count(p);
        mev_eval_preds_free(p);
        p = NULL;
        if (mev_eval_preds_parse("niah_single_1.preds.jsonl", data, size, d, &p) == 0) (void)mev_eval_preds_count(p);
        mev_eval_preds_free(p);
    }
    return 0;
}
