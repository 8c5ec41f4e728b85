/* test_chat_sampler.c — GLM-4 chat template, tool-call parsing and the sampler.
 * argv[1] = source dir (uses the tokenizer fixture in tests/data/tok). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mtok.h"

#include "check.h"

static int32_t sp(const mtok_tokenizer *t, const char *s) { return mtok_token_special(t, s); }

/* ids of the message layout built by hand: <|role|> + enc(meta "\n") + enc(content) */
static void expect_turn(const mtok_tokenizer *t, mtok_ids *want, const char *role_tok, const char *meta,
                        const char *content) {
    char head[256];
    snprintf(head, sizeof head, "%s\n", meta ? meta : "");
    mtok_ids_push(want, sp(t, role_tok));
    mtok_tokenize(t, head, strlen(head), 0, want);
    mtok_tokenize(t, content, strlen(content), 0, want);
}

static int same(const mtok_ids *a, const mtok_ids *b) {
    return a->n == b->n && !memcmp(a->v, b->v, a->n * sizeof *a->v);
}

static void test_template(const mtok_tokenizer *t) {
    /* [system S, user U1, assistant A1, user U2] + generation prompt (docs/GLM.md §5.1) */
    mtok_message msgs[] = {{"system", NULL, "Be brief.", NULL},
                           {"user", NULL, "Hello there", NULL},
                           {"assistant", NULL, "Hi! How can I help?", NULL},
                           {"user", NULL, "<|assistant|> is plain text here", NULL}};
    mtok_ids got = {0}, want = {0};
    CHECK(mtok_chat_encode(t, msgs, 4, 1, &got) == 0, "encode: %s", mtok_errmsg());
    mtok_ids_push(&want, sp(t, "[gMASK]"));
    mtok_ids_push(&want, sp(t, "<sop>"));
    expect_turn(t, &want, "<|system|>", NULL, "Be brief.");
    expect_turn(t, &want, "<|user|>", NULL, "Hello there");
    expect_turn(t, &want, "<|assistant|>", NULL, "Hi! How can I help?");
    expect_turn(t, &want, "<|user|>", NULL, "<|assistant|> is plain text here");
    mtok_ids_push(&want, sp(t, "<|assistant|>"));
    CHECK(same(&got, &want), "chat ids differ from the hand-built layout (%zu vs %zu ids)", got.n, want.n);
    /* the user's "<|assistant|>" string must not become the special id */
    int n_assist = 0;
    for (size_t i = 0; i < got.n; i++) n_assist += got.v[i] == sp(t, "<|assistant|>");
    CHECK(n_assist == 2, "special string in user text was turned into a role token (%d)", n_assist);

    char *text = NULL;
    CHECK(mtok_chat_render(msgs, 4, 1, &text) == 0, "render");
    CHECK(text && !strcmp(text, "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHello there<|assistant|>\nHi! How can "
                                "I help?<|user|>\n<|assistant|> is plain text here<|assistant|>"),
          "rendered text: %s", text ? text : "(null)");
    free(text);

    /* empty content renders nothing; metadata goes on the role line */
    mtok_message m2[] = {{"user", NULL, "", NULL}, {"assistant", "get_weather", "{\"city\": \"Paris\"}", NULL},
                         {"observation", NULL, "{\"temp\": 21}", NULL}};
    CHECK(mtok_chat_render(m2, 3, 1, &text) == 0, "render 2");
    CHECK(text && !strcmp(text, "[gMASK]<sop><|assistant|>get_weather\n{\"city\": \"Paris\"}<|observation|>\n"
                                "{\"temp\": 21}<|assistant|>"),
          "tool replay rendered as: %s", text ? text : "(null)");
    free(text);

    /* tools in the system message: one newline before each "## name", as the glm-4-9b-chat template
     * writes it (docs/GLM.md §5.4) */
    const char *tools = "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": "
                        "\"Weather of a city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": "
                        "{\"type\": \"string\"}}, \"required\": [\"city\"]}}}]";
    mtok_message m3[] = {{"system", NULL, NULL, tools}, {"user", NULL, "Weather in Paris?", NULL}};
    CHECK(mtok_chat_render(m3, 2, 1, &text) == 0, "render tools: %s", mtok_errmsg());
    const char *want_tools =
        "[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
        "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具\n## get_weather\n\n{\n"
        "    \"name\": \"get_weather\",\n    \"description\": \"Weather of a city\",\n    \"parameters\": {\n"
        "        \"type\": \"object\",\n        \"properties\": {\n            \"city\": {\n"
        "                \"type\": \"string\"\n            }\n        },\n        \"required\": [\n"
        "            \"city\"\n        ]\n    }\n}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
        "<|user|>\nWeather in Paris?<|assistant|>";
    CHECK(text && !strcmp(text, want_tools), "tools system text:\n%s", text ? text : "(null)");
    free(text);
    mtok_ids_free(&got);
    CHECK(mtok_chat_encode(t, m3, 2, 1, &got) == 0, "encode tools");
    mtok_message bad[] = {{"system", NULL, NULL, "[{\"type\": \"python\"}]"}};
    CHECK(mtok_chat_encode(t, bad, 1, 1, &got) == MTOK_EINPUT, "unsupported tool type accepted");
    mtok_message badrole[] = {{"tool", NULL, "x", NULL}};
    CHECK(mtok_chat_encode(t, badrole, 1, 1, &got) == MTOK_EINPUT && strstr(mtok_errmsg(), "role"),
          "unknown role accepted");
    mtok_ids_free(&got);
    mtok_ids_free(&want);
}

static void test_reply(void) {
    mtok_reply r;
    CHECK(mtok_reply_parse("get_weather\n{\"city\": \"Paris\", \"unit\": \"celsius\"}", &r) == 0, "parse");
    CHECK(r.is_tool_call && !strcmp(r.name, "get_weather") && strstr(r.arguments, "\"Paris\""),
          "tool call not recognised");
    mtok_reply_free(&r);
    CHECK(mtok_reply_parse("\nThe answer is 42.", &r) == 0 && !r.is_tool_call && !strcmp(r.content, "The answer is 42."),
          "plain answer mis-parsed");
    mtok_reply_free(&r);
    CHECK(mtok_reply_parse("note\nnot json at all", &r) == 0 && !r.is_tool_call, "non-JSON body taken as a call");
    mtok_reply_free(&r);
    CHECK(mtok_reply_parse("no newline", &r) == 0 && !r.is_tool_call && !strcmp(r.content, "no newline"),
          "reply without newline");
    mtok_reply_free(&r);
}

static void test_sampler(void) {
    enum { V = 8 };
    float base[V] = {1.0f, 3.0f, 2.0f, 0.5f, -1.0f, 2.9f, 0.0f, 10.0f};
    float lg[V];
    mtok_sampler *s;
    mtok_sampler_params g = {.temperature = 0, .top_p = 1, .repetition_penalty = 1, .seed = 1};
    CHECK(mtok_sampler_create(&g, V, &s) == 0, "create");
    memcpy(lg, base, sizeof lg);
    CHECK(mtok_sample(s, lg, V, NULL, 0) == 7, "greedy");
    memcpy(lg, base, sizeof lg);
    CHECK(mtok_sample(s, lg, 7, NULL, 0) == 1, "n_valid must mask padding rows");
    mtok_sampler_free(s);

    /* repetition penalty: 3.0 / 1.5 = 2.0 < 2.9, so id 5 wins once 1 is in the history */
    mtok_sampler_params rp = {.temperature = 0, .top_p = 1, .repetition_penalty = 1.5f, .seed = 1};
    CHECK(mtok_sampler_create(&rp, V, &s) == 0, "create");
    int32_t hist[] = {1, 7, 1};
    memcpy(lg, base, sizeof lg);
    CHECK(mtok_sample(s, lg, 7, hist, 3) == 5, "repetition penalty");
    mtok_sampler_free(s);

    /* temperature sampling follows the softmax: frequencies within 3 sigma over 20000 draws */
    mtok_sampler_params tp = {.temperature = 1.0f, .top_p = 1, .repetition_penalty = 1, .seed = 7};
    CHECK(mtok_sampler_create(&tp, V, &s) == 0, "create");
    int cnt[V] = {0};
    const int N = 20000;
    for (int i = 0; i < N; i++) {
        memcpy(lg, base, sizeof lg);
        cnt[mtok_sample(s, lg, 7, NULL, 0)]++;
    }
    double z = 0;
    for (int i = 0; i < 7; i++) z += exp(base[i]);
    for (int i = 0; i < 7; i++) {
        double p = exp(base[i]) / z, sd = sqrt(N * p * (1 - p));
        CHECK(fabs(cnt[i] - N * p) <= 4 * sd + 1, "id %d drawn %d times, expected %.0f", i, cnt[i], N * p);
    }
    CHECK(cnt[7] == 0, "padding id sampled");
    mtok_sampler_free(s);

    /* same seed, same stream */
    int32_t a[50], b[50];
    for (int rep = 0; rep < 2; rep++) {
        CHECK(mtok_sampler_create(&tp, V, &s) == 0, "create");
        for (int i = 0; i < 50; i++) {
            memcpy(lg, base, sizeof lg);
            (rep ? b : a)[i] = mtok_sample(s, lg, V, NULL, 0);
        }
        mtok_sampler_free(s);
    }
    CHECK(!memcmp(a, b, sizeof a), "seeded sampling is not reproducible");

    /* top-k 2 only ever returns the two best; top-p 0.5 only the nucleus */
    mtok_sampler_params tk = {.temperature = 1.0f, .top_k = 2, .top_p = 1, .repetition_penalty = 1, .seed = 3};
    CHECK(mtok_sampler_create(&tk, V, &s) == 0, "create");
    for (int i = 0; i < 2000; i++) {
        memcpy(lg, base, sizeof lg);
        int32_t id = mtok_sample(s, lg, 7, NULL, 0);
        CHECK(id == 1 || id == 5, "top-k 2 returned %d", id);
    }
    mtok_sampler_free(s);
    /* softmax of base[0..6]: id1 ≈ 0.35, id5 ≈ 0.32, id2 ≈ 0.13: top-p 0.6 keeps {1, 5} */
    mtok_sampler_params pp = {.temperature = 1.0f, .top_p = 0.6f, .repetition_penalty = 1, .seed = 5};
    CHECK(mtok_sampler_create(&pp, V, &s) == 0, "create");
    int seen5 = 0;
    for (int i = 0; i < 2000; i++) {
        memcpy(lg, base, sizeof lg);
        int32_t id = mtok_sample(s, lg, 7, NULL, 0);
        CHECK(id == 1 || id == 5, "top-p 0.6 returned %d", id);
        seen5 += id == 5;
    }
    CHECK(seen5 > 0, "top-p dropped a nucleus member");
    mtok_sampler_free(s);
    mtok_sampler_params bad = {.temperature = -1, .top_p = 1, .repetition_penalty = 1};
    CHECK(mtok_sampler_create(&bad, V, &s) == MTOK_EUSAGE, "negative temperature accepted");
}

int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/tok/tokenizer.model", argc > 1 ? argv[1] : ".");
    mtok_tokenizer *t = NULL;
    if (mtok_tokenizer_load_file(path, &t)) {
        fprintf(stderr, "FAIL: %s\n", mtok_errmsg());
        return 1;
    }
    test_template(t);
    test_reply();
    test_sampler();
    mtok_tokenizer_free(t);
    printf("%s\n", check_failures ? "FAILED" : "ok");
    return check_failures ? 1 : 0;
}
