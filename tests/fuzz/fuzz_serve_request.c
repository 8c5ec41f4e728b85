/* fuzz_serve_request.c — what an HTTP client sends `mtok serve` (serve/parse.c): the request bodies of
 * /v1/completions, /v1/chat/completions and PUT /generate, parsed into a generation request exactly
 * as the server does before anything runs (every field's type and range, prompts as text, ids or
 * lists, messages with tool calls rendered through the GLM-4 template, tools and tool_choice). The
 * first byte picks the endpoint; the rest is the body. A finding is a crash, a sanitizer report or a
 * leak: a bad body must only ever become a 400 (serve/http.c sends what srv_fail recorded). The
 * tokenizer is the glm4-tiny fixture's; the model is only its vocabulary size. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "../../serve/srv.h"

static srv S;
static mtok_config C;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_workdir();
    char *p = fz_fixture("tok/tokenizer.model");
    if (mtok_tokenizer_load_file(p, &S.tok)) {
        fprintf(stderr, "fuzz harness: %s\n", mtok_errmsg());
        abort();
    }
    free(p);
    C.vocab = mtok_tokenizer_n_vocab(S.tok);
    S.mc = &C;
    S.ctx = 4096, S.chunk = 512, S.n_valid = C.vocab;
    S.cfg.log_level = -1; /* srv_log stays quiet */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    json_t *body = json_loadb((const char *)data + 1, size - 1, 0, NULL);
    if (!json_is_object(body)) {
        json_decref(body);
        return 0;
    }
    srv_req r = {.S = &S, .fd = -1};
    srv_gen g = {0};
    switch (data[0] % 4) {
    case 0: (void)srv_parse_completions(&r, body, &g); break;
    case 1: (void)srv_parse_chat(&r, body, &g); break;
    case 2: (void)srv_parse_generate(&r, body, &g); break;
    default: { /* /tokenize with messages renders the template without a generation request */
        mtok_ids ids = {0};
        (void)srv_chat_ids(&r, body, 1, NULL, &ids);
        mtok_ids_free(&ids);
    }
    }
    srv_gen_free(&g);
    json_decref(body);
    return 0;
}
