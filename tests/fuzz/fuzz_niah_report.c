/* fuzz_niah_report.c — the report `mtok niah` builds from results.jsonl at the end of every run and
 * on --resume (eval/niah.c mev_niah_report: the table, and the heatmap of every variant through
 * eval/heatmap.c, whose grid comes from the file's lengths, depths and scores). */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "../../eval/eval.h"

static char *dir, *path;
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_mkdir("niah");
    dir = fz_work("niah");
    path = fz_work("niah/results.jsonl");
    if (!(devnull = fopen("/dev/null", "w"))) abort();
    /* cairo's and fontconfig's process-wide caches, released as mtok niah releases them before exit,
     * so that the leak check at exit sees only what mtok itself keeps */
    atexit(mev_graphics_cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(path, data, size);
    (void)mev_niah_report(dir, "fuzz", devnull);
    return 0;
}
