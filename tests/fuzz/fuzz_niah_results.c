/* fuzz_niah_results.c — niah's results.jsonl (eval/records.c mev_niah_results_*: the cells `mtok niah
 * --resume` skips), read from a file and from a buffer. The report built from the same file is
 * fuzz_niah_report.c (rendering heatmaps is ~50x slower than reading). */
#include <stdlib.h>

#include "fuzz_common.h"
#include "../../eval/eval.h"

static char *path;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    path = fz_work("results.jsonl");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(path, data, size);
    mev_niah_results *r = NULL;
    if (mev_niah_results_read(path, &r) == 0) (void)mev_niah_results_count(r), (void)mev_niah_results_skipped(r);
    mev_niah_results_free(r);
    r = NULL;
    if (mev_niah_results_parse("results.jsonl", data, size, &r) == 0) (void)mev_niah_results_count(r);
    mev_niah_results_free(r);
    return 0;
}
