/* fuzz_safetensors.c — a single-file checkpoint's model.safetensors (core/safetensors.c: the 8-byte
 * header length, the JSON header, data offsets, overlaps; core/loader.c: binding every tensor with the
 * shape config.json implies), loaded with mtok_model_load beside the config.json of the fixture
 * checkpoint in the naming the header's tensor names use (tests/fuzz/fixtures/ckpt/{chatglm,hf}:
 * glm4-tiny shrunk to hidden 16, see make-seeds.sh). A model that loads has every value of every
 * tensor the header lists scanned (mtok_model_check, `mtok check`) and is loaded again as one rank of
 * a 2-way tensor-parallel split (core/tp.c slices the views the header described). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static const char *const NAMINGS[] = {"chatglm", "hf"};
static char *dirs[2], *files[2];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    for (int i = 0; i < 2; i++) {
        char rel[64];
        fz_mkdir(NAMINGS[i]);
        dirs[i] = fz_work(NAMINGS[i]);
        snprintf(rel, sizeof rel, "%s/model.safetensors", NAMINGS[i]);
        files[i] = fz_work(rel);
        snprintf(rel, sizeof rel, "ckpt/%s/config.json", NAMINGS[i]);
        char *src = fz_fixture(rel);
        snprintf(rel, sizeof rel, "%s/config.json", NAMINGS[i]);
        char *dst = fz_work(rel);
        fz_copy(src, dst);
        free(src), free(dst);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* the naming whose tensor names the header uses: a load costs ~1 ms under ASan (most of it
     * config.json's read buffer), and a header of one naming fails at once beside the other's config */
    const int i = memmem(data, size < 8192 ? size : 8192, "\"transformer.", 13) ? 0 : 1;
    fz_write(files[i], data, size);
    mtok_model *m = NULL;
    if (mtok_model_load(dirs[i], NULL, &m) == 0) {
        mtok_check_summary sum;
        (void)mtok_model_check(m, 1, -1, NULL, NULL, &sum);
        mtok_model_free(m);
        mtok_load_params tp = {.tp_rank = 1, .tp_size = 2};
        if (mtok_model_load(dirs[i], &tp, &m) == 0) mtok_model_free(m);
    }
    return 0;
}
