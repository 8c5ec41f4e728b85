/* test_config_ranges.c — config.json values that are numbers of the right JSON type but out of the
 * range their C type or their use allows (issue 16, findings 5 and 10): stop ids that do not name a
 * row of the vocabulary or do not fit int32, norm epsilons that are positive as a double but 0,
 * subnormal or infinite as the float32 the forward pass uses, a RoPE ratio whose base overflows and
 * context lengths past 2^40. Each must be refused with MTOK_EINPUT and a message naming the key; the
 * values just inside the range must still load. Both namings. Exit 0 pass, 1 fail. */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/model.h"
#include "tests/check.h"

enum { V = 128 };

static json_t *base_config(int hf) {
    if (hf)
        return json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:i, s:[i,i]}", "model_type", "glm",
                         "num_hidden_layers", 2, "hidden_size", 64, "num_attention_heads", 4, "num_key_value_heads",
                         2, "head_dim", 16, "intermediate_size", 96, "vocab_size", V, "rms_norm_eps", 1.5625e-07,
                         "rope_theta", 5e6, "max_position_embeddings", 4096, "eos_token_id", 120, 121);
    return json_pack("{s:s, s:i, s:i, s:i, s:b, s:i, s:i, s:i, s:i, s:f, s:f, s:i, s:[i,i]}", "model_type", "chatglm",
                     "num_layers", 2, "hidden_size", 64, "num_attention_heads", 4, "multi_query_attention", 1,
                     "multi_query_group_num", 2, "kv_channels", 16, "ffn_hidden_size", 96, "padded_vocab_size", V,
                     "layernorm_epsilon", 1.5625e-07, "rope_ratio", 500.0, "seq_length", 4096, "eos_token_id", 120,
                     121);
}

/* Parses j with key set to v (v == NULL: j as it is); consumes both. */
static int parse_with(json_t *j, const char *key, json_t *v, mtok_config *c) {
    if (key) json_object_set_new(j, key, v);
    char *s = json_dumps(j, JSON_COMPACT);
    int rc = mtok_config_parse("x/config.json", s, strlen(s), NULL, c);
    free(s);
    json_decref(j);
    return rc;
}

static void expect_fail(int hf, const char *key, json_t *v, const char *want) {
    mtok_config c;
    char *shown = json_dumps(v, JSON_ENCODE_ANY);
    int rc = parse_with(base_config(hf), key, v, &c);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), key) && strstr(mtok_errmsg(), "x/config.json") &&
              (!want || strstr(mtok_errmsg(), want)),
          "%s %s = %s: rc %d, '%s'", hf ? "hf" : "chatglm", key, shown, rc, mtok_errmsg());
    if (rc) printf("  %-8s %s = %s -> %s\n", hf ? "hf" : "chatglm", key, shown, mtok_errmsg());
    free(shown);
}

static void test_eos(int hf) {
    mtok_config c;
    /* a scalar was narrowed to int32 unchecked: -5 stayed -5 and 2^40 became 0 */
    expect_fail(hf, "eos_token_id", json_integer(-5), "-5");
    expect_fail(hf, "eos_token_id", json_integer((json_int_t)1 << 40), "1099511627776");
    expect_fail(hf, "eos_token_id", json_integer(V), "vocabulary");
    expect_fail(hf, "eos_token_id", json_pack("[i,I]", 1, (json_int_t)1 << 40), "entry 1");
    expect_fail(hf, "eos_token_id", json_pack("[i,i]", 1, -1), "entry 1");
    expect_fail(hf, "eos_token_id", json_real(3.0), NULL);
    expect_fail(hf, "eos_token_id", json_string("2"), NULL);
    int rc = parse_with(base_config(hf), "eos_token_id", json_integer(V - 1), &c);
    CHECK(rc == 0 && c.n_eos == 1 && c.eos_ids[0] == V - 1, "eos %d: %s", V - 1, mtok_errmsg());
    rc = parse_with(base_config(hf), "eos_token_id", json_pack("[i,i,i]", 0, 5, V - 1), &c);
    CHECK(rc == 0 && c.n_eos == 3 && c.eos_ids[2] == V - 1, "eos list: %s", mtok_errmsg());
}

static void test_eps(int hf) {
    const char *key = hf ? "rms_norm_eps" : "layernorm_epsilon";
    mtok_config c;
    /* positive as a double, 0 as a float: passed the old check and made rmsnorm divide by 0 on a zero row */
    expect_fail(hf, key, json_real(1e-50), "float32");
    expect_fail(hf, key, json_real(1e-40), "float32"); /* a float32 subnormal */
    expect_fail(hf, key, json_real(1e39), "float32");  /* float32 infinity */
    expect_fail(hf, key, json_real(0.0), NULL);
    expect_fail(hf, key, json_real(-1e-5), NULL);
    int rc = parse_with(base_config(hf), key, json_real(1e-5), &c);
    CHECK(rc == 0 && c.norm_eps == 1e-5f, "eps 1e-5: %s", mtok_errmsg());
    rc = parse_with(base_config(hf), key, json_real((double)FLT_MIN), &c);
    CHECK(rc == 0 && c.norm_eps == FLT_MIN, "eps FLT_MIN: %s", mtok_errmsg());
    rc = parse_with(base_config(hf), key, json_integer(1), &c);
    CHECK(rc == 0 && c.norm_eps == 1.0f, "eps 1 (a JSON integer): %s", mtok_errmsg());
}

static void test_sizes(int hf) {
    const char *ctx = hf ? "max_position_embeddings" : "seq_length";
    mtok_config c;
    expect_fail(hf, ctx, json_integer((json_int_t)1 << 50), "too large");
    expect_fail(hf, ctx, json_real(1e15), "too large");
    expect_fail(hf, hf ? "vocab_size" : "padded_vocab_size", json_integer((json_int_t)1 << 40), "too large");
    expect_fail(hf, "hidden_size", json_integer(-64), "positive");
    int rc = parse_with(base_config(hf), ctx, json_integer(1048576), &c);
    CHECK(rc == 0 && c.max_ctx == 1048576, "ctx 1M: %s", mtok_errmsg());
    rc = parse_with(base_config(hf), ctx, json_real(8192.0), &c);
    CHECK(rc == 0 && c.max_ctx == 8192, "ctx 8192.0: %s", mtok_errmsg());
    if (!hf) expect_fail(0, "rope_ratio", json_real(1e305), "overflow");
}

int main(void) {
    for (int hf = 0; hf < 2; hf++) {
        test_eos(hf);
        test_eps(hf);
        test_sizes(hf);
    }
    if (check_failures) fprintf(stderr, "test_config_ranges: %d failure(s)\n", check_failures);
    else printf("test_config_ranges: ok\n");
    return check_failures != 0;
}
