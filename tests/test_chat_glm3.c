/* test_chat_glm3.c — ChatGLM3's tool calls read by mtok_reply_parse: the fenced tool_call(...) block as
 * Python literals, never evaluated, its arguments exactly as json.dumps(kwargs, ensure_ascii=False) writes
 * them (the expected strings were produced by Python's eval + json.dumps of the same calls); anything that
 * is not a literal call stays a plain answer. Also the ChatGLM3 prompt's first and last ids with the
 * SentencePiece fixture (the full id comparison is tests/test_chat_formats.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mtok.h"
#include "tests/check.h"

static void call(const char *body, const char *want_args) {
    char text[4096];
    snprintf(text, sizeof text, "get_weather\n```python\n%s\n```", body);
    mtok_reply r;
    CHECK(mtok_reply_parse(text, &r) == 0, "parse: %s", mtok_errmsg());
    if (want_args) {
        CHECK(r.is_tool_call && r.name && !strcmp(r.name, "get_weather"), "%s: not a call", body);
        CHECK(r.arguments && !strcmp(r.arguments, want_args), "%s:\n got  %s\n want %s", body,
              r.arguments ? r.arguments : "(null)", want_args);
    } else {
        CHECK(!r.is_tool_call && r.content && !strcmp(r.content, text + strlen("get_weather\n")),
              "%s: taken as a call (%s)", body, r.arguments ? r.arguments : "");
    }
    mtok_reply_free(&r);
}

int main(int argc, char **argv) {
    call("tool_call(city='Beijing', days=3)", "{\"city\": \"Beijing\", \"days\": 3}");
    call("tool_call(q=\"a\\\"b\\\\n\\t\\x41\\u00e9\\U0001F600\", n=-0, f=1e16, g=.5, h=0x1F, i=1_000, j=-2.50, "
         "k=1e-7, l=[1, (2, 3), {'k': None, 1: True, 2.5: False}], s='中文' \"concat\", t=(), u=(1,), v=(7), w={}, "
         "big=123456789012345678901234567890, z=-1e400, )",
         "{\"q\": \"a\\\"b\\\\n\\tAé😀\", \"n\": 0, \"f\": 1e+16, \"g\": 0.5, \"h\": 31, \"i\": 1000, \"j\": -2.5, "
         "\"k\": 1e-07, \"l\": [1, [2, 3], {\"k\": null, \"1\": true, \"2.5\": false}], \"s\": \"中文concat\", "
         "\"t\": [], \"u\": [1], \"v\": 7, \"w\": {}, \"big\": 123456789012345678901234567890, \"z\": -Infinity}");
    call("tool_call()", "{}");
    call("tool_call(r=r'raw\\n', m='''multi\nline''')", "{\"r\": \"raw\\\\n\", \"m\": \"multi\\nline\"}");
    /* code, not literals: never a call */
    call("tool_call(x=__import__('os').system('true'))", NULL);
    call("tool_call(x=1+2)", NULL);
    call("tool_call(1)", NULL);
    call("tool_call(x=1, x=2)", NULL); /* a repeated keyword is a SyntaxError in Python */
    call("tool_call(x={1, 2})", NULL); /* a set: json.dumps cannot write it */
    call("tool_call(x=007)", NULL);
    call("tool_call(x=[1, 2)", NULL);
    call("tool_call(x=1) ; print(2)", NULL);
    call("other_call(x=1)", NULL);
    call("tool_call(x=b'bytes')", NULL);
    call("tool_call(x=\"\\ud800\")", NULL); /* a lone surrogate: not encodable */

    /* the fence is required, both ends */
    mtok_reply r;
    CHECK(mtok_reply_parse("get_weather\ntool_call(city='x')", &r) == 0 && !r.is_tool_call, "unfenced call accepted");
    mtok_reply_free(&r);
    CHECK(mtok_reply_parse("get_weather\n```python\ntool_call(city='x')", &r) == 0 && !r.is_tool_call,
          "unclosed fence accepted");
    mtok_reply_free(&r);
    /* a plain answer, and GLM-4's JSON form, still read as before */
    CHECK(mtok_reply_parse("\nHello there", &r) == 0 && !r.is_tool_call && !strcmp(r.content, "Hello there"), "plain");
    mtok_reply_free(&r);
    CHECK(mtok_reply_parse("f\n{\"a\": 1}", &r) == 0 && r.is_tool_call && !strcmp(r.name, "f"), "GLM-4 call");
    mtok_reply_free(&r);

    /* ChatGLM3 prompt: [gMASK] sop <|user|> ... <|assistant|> with the fixture's ids (600 pieces) */
    if (argc > 1) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/tests/data/tok/spm", argv[1]);
        mtok_tokenizer *t = NULL;
        CHECK(mtok_tokenizer_load(dir, &t) == 0, "load: %s", mtok_errmsg());
        mtok_message m[] = {{"user", NULL, "hi", NULL}};
        mtok_ids ids = {0};
        CHECK(t && mtok_chat_encode(t, m, 1, 1, &ids) == 0, "encode: %s", mtok_errmsg());
        /* [gMASK] sop <|user|> "▁" "\n" ... <|assistant|> */
        CHECK(ids.n > 5 && ids.v[0] == 601 && ids.v[1] == 603 && ids.v[2] == 606 && ids.v[ids.n - 1] == 607,
              "ChatGLM3 prompt frame");
        CHECK(mtok_token_special(t, "<sop>") == 603 && mtok_token_special(t, "sop") == 603, "sop alias");
        mtok_ids_free(&ids);
        mtok_tokenizer_free(t);
    }
    return check_failures != 0;
}
