/* fuzz_tok_json.c — tokenizer.json, Hugging Face byte-level BPE (core/tok_load.c tok_load_hf_json:
 * vocab, merges, added_tokens, the pre_tokenizer's regex), found in a directory the way `mtok -m DIR`
 * finds it. A tokenizer that loads is then used (fz_exercise_tokenizer). */
#include <stdlib.h>

#include "fuzz_common.h"

static char *dir, *path;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_mkdir("tok");
    dir = fz_work("tok");
    path = fz_work("tok/tokenizer.json");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(path, data, size);
    mtok_tokenizer *t = NULL;
    if (mtok_tokenizer_load(dir, &t) == 0) fz_exercise_tokenizer(t, data, size);
    mtok_tokenizer_free(t);
    return 0;
}
