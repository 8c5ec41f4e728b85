/* fuzz_st_index.c — model.safetensors.index.json of a sharded checkpoint (core/safetensors.c
 * index_read / index_check: the weight_map naming the shard of every tensor), loaded with
 * mtok_model_load beside the two shards and the config.json of the fixture checkpoint
 * tests/fuzz/fixtures/ckpt/hf2 (glm4-tiny in HF naming, shrunk to hidden 16; make-seeds.sh). */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_common.h"

static const char *const FILES[] = {"config.json", "model-00001-of-00002.safetensors",
                                    "model-00002-of-00002.safetensors"};
static char *dir, *index_path;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_mkdir("hf2");
    dir = fz_work("hf2");
    index_path = fz_work("hf2/model.safetensors.index.json");
    for (size_t i = 0; i < sizeof FILES / sizeof *FILES; i++) {
        char rel[96];
        snprintf(rel, sizeof rel, "ckpt/hf2/%s", FILES[i]);
        char *src = fz_fixture(rel);
        snprintf(rel, sizeof rel, "hf2/%s", FILES[i]);
        char *dst = fz_work(rel);
        fz_copy(src, dst);
        free(src), free(dst);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(index_path, data, size);
    mtok_model *m = NULL;
    if (mtok_model_load(dir, NULL, &m) == 0) mtok_model_free(m);
    return 0;
}
