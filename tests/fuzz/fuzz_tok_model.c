/* fuzz_tok_model.c — tokenizer.model, the tiktoken rank file (core/tok_load.c), loaded the way
 * `mtok -m DIR` finds it: alone in a directory (the GLM-4 specials follow the ranks) and beside the
 * glm4-tiny fixture's tokenizer_config.json (the specials it declares). A tokenizer that loads is
 * then used (fz_exercise_tokenizer). */
#include <stdlib.h>

#include "fuzz_common.h"

static char *alone, *beside;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_mkdir("alone");
    fz_mkdir("beside");
    alone = fz_work("alone/tokenizer.model");
    beside = fz_work("beside/tokenizer.model");
    char *cfg = fz_fixture("tok/tokenizer_config.json"), *dst = fz_work("beside/tokenizer_config.json");
    fz_copy(cfg, dst);
    free(cfg), free(dst);
    return 0;
}

static void one(const char *path, const uint8_t *data, size_t size) {
    fz_write(path, data, size);
    mtok_tokenizer *t = NULL;
    if (mtok_tokenizer_load_file(path, &t) == 0) fz_exercise_tokenizer(t, data, size);
    mtok_tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    one(alone, data, size);
    one(beside, data, size);
    return 0;
}
