/* fuzz_tools.c — the --tools file (a JSON array of tool definitions, core/chat.c) as the chat template
 * renders it, as text and as ids, and the parser of an assistant reply that may carry a tool call
 * (mtok_reply_parse: model output, not a file, but the same JSON path). The tokenizer is the
 * glm4-tiny fixture's. */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_common.h"

static mtok_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_workdir();
    char *p = fz_fixture("tok/tokenizer.model");
    if (mtok_tokenizer_load_file(p, &tok)) {
        fprintf(stderr, "fuzz harness: %s\n", mtok_errmsg());
        abort();
    }
    free(p);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = fz_cstr(data, size);
    mtok_message msgs[3] = {{"system", NULL, "You are helpful.", json},
                            {"user", NULL, "What is the weather in Paris?", NULL},
                            {"assistant", "get_weather", "{\"city\": \"Paris\"}", NULL}};
    char *text = NULL;
    if (mtok_chat_render(msgs, 3, 1, &text) == 0) free(text);
    mtok_ids ids = {0};
    (void)mtok_chat_encode(tok, msgs, 3, 1, &ids);
    mtok_ids_free(&ids);
    mtok_reply r;
    if (mtok_reply_parse(json, &r) == 0) mtok_reply_free(&r);
    free(json);
    return 0;
}
