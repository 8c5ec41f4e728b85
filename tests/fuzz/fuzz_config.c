/* fuzz_config.c — config.json (core/config.c) in both namings. The parser takes a buffer; the loader
 * (core/loader.c read_config) only reads the file into one, so the input goes in directly. */
#include <stdlib.h>

#include "fuzz_common.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_workdir();
    mtok_config cfg;
    (void)mtok_config_parse("config.json", (const char *)data, size, NULL, &cfg);
    /* --rope-base replaces the base after parsing: the override path */
    mtok_load_params p = {.rope_base = 1e4};
    (void)mtok_config_parse("config.json", (const char *)data, size, &p, &cfg);
    return 0;
}
