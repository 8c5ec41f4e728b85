/* fuzz_tok_config.c — tokenizer_config.json beside a tokenizer.model (core/tok_load.c
 * load_config_specials: the added_tokens_decoder that declares the special tokens), with the
 * glm4-tiny fixture's rank file. A tokenizer that loads is then used (fz_exercise_tokenizer). */
#include <stdlib.h>

#include "fuzz_common.h"

static char *dir, *cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_mkdir("tok");
    dir = fz_work("tok");
    cfg = fz_work("tok/tokenizer_config.json");
    char *src = fz_fixture("tok/tokenizer.model"), *dst = fz_work("tok/tokenizer.model");
    fz_copy(src, dst);
    free(src), free(dst);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(cfg, data, size);
    mtok_tokenizer *t = NULL;
    if (mtok_tokenizer_load(dir, &t) == 0) fz_exercise_tokenizer(t, data, size);
    mtok_tokenizer_free(t);
    return 0;
}
