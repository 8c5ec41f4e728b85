/* fuzz_eval_data.c — mtok eval's jsonl input (eval/records.c): --data records (RULER or LongBench)
 * and --score predictions, read from a file (the streaming line reader, eval/jsonl.c) and from a
 * buffer, then, for a file that reads as predictions, scored as `mtok eval --score` does (every
 * metric of eval/score.c over the fuzzed strings). The file is named like a RULER task file, since
 * the task falls back to the file name. */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "../../eval/eval.h"

static char *path;
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    path = fz_work("niah_single_1.jsonl");
    if (!(devnull = fopen("/dev/null", "w"))) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(path, data, size);
    int scored = 0;
    for (int kind = MEV_DATA_RECORDS; kind <= MEV_DATA_PREDICTIONS; kind++) {
        mev_eval_data *d = NULL;
        if (mev_eval_data_read(path, kind, &d) == 0) {
            (void)mev_eval_data_count(d);
            if (kind == MEV_DATA_PREDICTIONS && !scored++) {
                mev_eval_params p = {.data = path};
                (void)mev_eval_run(NULL, NULL, &p, 1, devnull);
            }
        }
        mev_eval_data_free(d);
        d = NULL;
        if (mev_eval_data_parse("niah_single_1.jsonl", data, size, kind, &d) == 0) (void)mev_eval_data_count(d);
        mev_eval_data_free(d);
    }
    return 0;
}
