/* test_tokenizer.c — the tokenizer against goldens made by tiktoken (tests/ref/make_tok_fixtures.py),
 * for both file formats; round trips, streaming decode, special tokens, malformed files, declared
 * specials, threads, the PCRE2 interpreter path, and big inputs (timed, not asserted: ctest's timeout
 * guards against a quadratic BPE).
 * Usage: test_tokenizer SRC_DIR [BUILD_DIR]. Exit 0 pass, 1 fail. */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/mtok.h"
#include "core/tok_internal.h"

static int g_checks, g_fail;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        g_checks++;                                                             \
        if (!(cond)) {                                                          \
            g_fail++;                                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char g_tmp[64];   /* scratch directory for generated files */
static char g_data[4096]; /* SRC/tests/data/tok */

static char *path_in(const char *dir, const char *name) {
    static __thread char buf[8][4096];
    static __thread int k;
    char *p = buf[k++ & 7];
    snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *path, const char *s, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(s, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)len + 1);
    if (fread(s, 1, (size_t)len, f) != (size_t)len) len = 0;
    s[len] = 0;
    fclose(f);
    if (n) *n = (size_t)len;
    return s;
}

/* ---------------------------------------------------------------------------------------------- */
/* Goldens                                                                                         */

typedef struct {
    char variant[32]; /* goldens_variants.jsonl: which pre_tokenizer; "" in goldens.jsonl */
    char *text;
    size_t len;
    int special;
    int32_t *ids;
    size_t n_ids;
} golden;

static golden *g_gold;  /* goldens.jsonl */
static size_t g_n_gold;
static golden *g_var;   /* goldens_variants.jsonl */
static size_t g_n_var;

static golden *load_goldens(const char *file, size_t *count) {
    size_t n;
    char *s = read_all(path_in(g_data, file), &n);
    if (!s) {
        fprintf(stderr, "cannot read %s in %s\n", file, g_data);
        exit(1);
    }
    golden *gold = calloc(256, sizeof *gold);
    size_t k = 0;
    for (char *line = s; line && *line && k < 256;) {
        char *nl = strchr(line, '\n');
        size_t ln = nl ? (size_t)(nl - line) : strlen(line);
        json_error_t je;
        json_t *o = json_loadb(line, ln, JSON_ALLOW_NUL, &je);
        if (!o) {
            fprintf(stderr, "goldens.jsonl: %s\n", je.text);
            exit(1);
        }
        golden *g = &gold[k++];
        json_t *variant = json_object_get(o, "variant");
        snprintf(g->variant, sizeof g->variant, "%s", json_is_string(variant) ? json_string_value(variant) : "");
        json_t *text = json_object_get(o, "text"), *ids = json_object_get(o, "ids");
        g->len = json_string_length(text);
        g->text = malloc(g->len + 1);
        memcpy(g->text, json_string_value(text), g->len + 1);
        g->special = json_is_true(json_object_get(o, "special"));
        g->n_ids = json_array_size(ids);
        g->ids = malloc((g->n_ids + 1) * sizeof *g->ids);
        for (size_t i = 0; i < g->n_ids; i++) g->ids[i] = (int32_t)json_integer_value(json_array_get(ids, i));
        json_decref(o);
        line = nl ? nl + 1 : NULL;
    }
    free(s);
    *count = k;
    return gold;
}

static void free_goldens(golden *g, size_t n) {
    for (size_t i = 0; i < n; i++) free(g[i].text), free(g[i].ids);
    free(g);
}

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || !memcmp(a, b, na * sizeof *a));
}

/* dec (from mtok_detokenize) holds exactly text[0..len) and its NUL. The text may contain NULs, so no
 * strlen; dec's buffer is at least len bytes whenever the tokens' bytes add up to len. */
static int dec_equals(const char *dec, const char *text, size_t len) {
    return dec && !memcmp(dec, text, len) && dec[len] == 0;
}

static void print_ids(const char *what, const int32_t *v, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* Streams ids through the decoder; every chunk must be whole characters and the total must equal
 * mtok_detokenize. Returns the malloc'ed stream text. */
static char *stream_decode(const mtok_tokenizer *t, const int32_t *ids, size_t n, size_t *out_len) {
    size_t cap = mtok_tokenizer_max_token_len(t) + 8;
    char *chunk = malloc(cap); /* exactly the promised size: ASan catches any overrun */
    size_t total = 0, tcap = 64;
    char *s = malloc(tcap);
    mtok_decoder d = {{0}, 0};
    for (size_t i = 0; i <= n; i++) {
        size_t k = i < n ? mtok_decode_next(t, &d, ids[i], chunk, cap) : mtok_decode_flush(&d, chunk, cap);
        /* no chunk may end inside a character */
        for (size_t j = 0; j < k;) {
            unsigned char c = (unsigned char)chunk[j];
            size_t w = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            CHECK(j + w <= k, "decode chunk of token %zu ends inside a character", i);
            j += w;
        }
        while (total + k + 1 > tcap) tcap *= 2;
        s = realloc(s, tcap);
        memcpy(s + total, chunk, k);
        total += k;
    }
    s[total] = 0;
    free(chunk);
    *out_len = total;
    return s;
}

/* Goldens (of one variant): ids, and with roundtrip decode(encode(x)) == x and stream == whole decode
 * (not where add_prefix_space adds text). Returns failures. */
static int check_golden_set(const mtok_tokenizer *t, const char *name, const golden *set, size_t n_set,
                            const char *variant, int roundtrip) {
    int fails = 0;
    for (size_t i = 0; i < n_set; i++) {
        const golden *g = &set[i];
        if (strcmp(g->variant, variant)) continue;
        mtok_ids ids = {0};
        int rc = mtok_tokenize(t, g->text, g->len, g->special, &ids);
        int same = rc == 0 && ids_equal(ids.v, ids.n, g->ids, g->n_ids);
        CHECK(same, "%s: golden %zu (special=%d) \"%.60s\" differs (rc %d %s)", name, i, g->special, g->text, rc,
              rc ? mtok_errmsg() : "");
        if (!same) {
            print_ids("want", g->ids, g->n_ids);
            print_ids("got ", ids.v, ids.n);
            fails++;
        }
        if (!roundtrip) {
            mtok_ids_free(&ids);
            continue;
        }
        char *dec = mtok_detokenize(t, ids.v, ids.n, NULL);
        CHECK(dec_equals(dec, g->text, g->len),
              "%s: decode(encode(\"%.60s\")) differs: \"%.60s\"", name, g->text, dec ? dec : "(null)");
        size_t sl;
        char *st = stream_decode(t, ids.v, ids.n, &sl);
        CHECK(dec && sl == g->len && !memcmp(st, g->text, sl), "%s: stream decode of golden %zu differs", name, i);
        free(st);
        free(dec);
        mtok_ids_free(&ids);
    }
    return fails;
}

static int check_goldens(const mtok_tokenizer *t, const char *name) {
    return check_golden_set(t, name, g_gold, g_n_gold, "", 1);
}

/* ---------------------------------------------------------------------------------------------- */

static int64_t count_lines(const char *path) {
    size_t n;
    char *s = read_all(path, &n);
    int64_t k = 0;
    for (size_t i = 0; i < n; i++) k += s[i] == '\n';
    free(s);
    return k;
}

static void test_basics(const mtok_tokenizer *t, int64_t n_ranks, const char *name) {
    CHECK(mtok_tokenizer_n_vocab(t) == n_ranks + 14, "%s: n_vocab %lld, want %lld", name,
          (long long)mtok_tokenizer_n_vocab(t), (long long)n_ranks + 14);
    static const char *sp[] = {"<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                               "<|user|>", "<|assistant|>", "<|observation|>", "<|begin_of_image|>",
                               "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"};
    for (int i = 0; i < 14; i++) {
        int32_t id = mtok_token_special(t, sp[i]);
        CHECK(id == n_ranks + i, "%s: special %s = %d, want %lld", name, sp[i], id, (long long)n_ranks + i);
        size_t len;
        const char *b = mtok_token_bytes(t, (int32_t)(n_ranks + i), &len);
        CHECK(b && len == strlen(sp[i]) && !memcmp(b, sp[i], len), "%s: bytes of special %s", name, sp[i]);
        CHECK(mtok_token_is_special(t, (int32_t)(n_ranks + i)), "%s: %s not special", name, sp[i]);
    }
    CHECK(mtok_token_special(t, "hello") == -1 && mtok_token_special(t, "") == -1 &&
          mtok_token_special(t, "<|user|") == -1, "%s: non-specials found as specials", name);
    CHECK(!mtok_token_is_special(t, 0) && !mtok_token_is_special(t, -1) &&
          !mtok_token_is_special(t, (int32_t)(n_ranks + 14)), "%s: is_special of ordinary/out-of-range ids", name);
    size_t len;
    CHECK(!mtok_token_bytes(t, -1, &len) && !mtok_token_bytes(t, (int32_t)(n_ranks + 14), &len),
          "%s: bytes of out-of-range ids", name);
    int ok = 1;
    for (int b = 0; b < 256; b++) {
        const char *s = mtok_token_bytes(t, b, &len);
        ok &= s && len == 1 && (unsigned char)s[0] == b;
    }
    CHECK(ok, "%s: ids 0..255 are not the single bytes", name);
    CHECK(mtok_tokenizer_max_token_len(t) >= strlen("<|begin_of_image|>"), "%s: max_token_len too small", name);
}

/* Lossless encoding and U+FFFD decoding of invalid UTF-8. */
static void test_invalid_utf8(const mtok_tokenizer *t, const char *name) {
    static const char in[] = "\xff\xfe abc \xe4\xbd\xa0\xe4\xbd \xc0\x80 \xed\xa0\x80 \xf4\x90\x80\x80 end\xe4";
    static const char want[] =
        "\xef\xbf\xbd\xef\xbf\xbd abc \xe4\xbd\xa0\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd"
        "\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end\xef\xbf\xbd"; /* = Python errors="replace" */
    mtok_ids ids = {0};
    int rc = mtok_tokenize(t, in, sizeof in - 1, 0, &ids);
    CHECK(rc == 0, "%s: invalid UTF-8 input: %s", name, mtok_errmsg());
    char raw[256];
    size_t n = 0;
    for (size_t i = 0; i < ids.n; i++) {
        size_t len;
        const char *b = mtok_token_bytes(t, ids.v[i], &len);
        memcpy(raw + n, b, len);
        n += len;
    }
    CHECK(n == sizeof in - 1 && !memcmp(raw, in, n), "%s: invalid UTF-8 is not encoded losslessly", name);
    char *dec = mtok_detokenize(t, ids.v, ids.n, NULL);
    CHECK(dec && !strcmp(dec, want), "%s: invalid UTF-8 decodes to \"%s\"", name, dec ? dec : "(null)");
    size_t sl;
    char *st = stream_decode(t, ids.v, ids.n, &sl);
    CHECK(sl == strlen(want) && !memcmp(st, want, sl), "%s: streamed invalid UTF-8 differs", name);
    free(st);
    free(dec);
    mtok_ids_free(&ids);
}

/* A 4-byte character split over several tokens produces nothing until its last byte arrives. */
static void test_stream_split(const mtok_tokenizer *t) {
    const char *crab = "\xf0\x9f\xa6\x80"; /* U+1F980, rare in the training corpus */
    mtok_ids ids = {0};
    mtok_tokenize(t, crab, 4, 0, &ids);
    CHECK(ids.n >= 2, "the crab emoji should take several tokens, got %zu", ids.n);
    char out[64];
    mtok_decoder d = {{0}, 0};
    for (size_t i = 0; i < ids.n; i++) {
        size_t k = mtok_decode_next(t, &d, ids.v[i], out, sizeof out);
        if (i + 1 < ids.n) CHECK(k == 0, "partial output after token %zu of %zu", i, ids.n);
        else CHECK(k == 4 && !memcmp(out, crab, 4), "emoji not emitted whole at its last token");
    }
    CHECK(mtok_decode_flush(&d, out, sizeof out) == 0, "flush after a complete character emits bytes");
    mtok_ids_free(&ids);

    /* Byte by byte (ids 0..255 are the bytes): F0 9F A6 80, then F0 9F 'a' (broken), then F0 9F (flushed). */
    const int32_t seq[] = {0xF0, 0x9F, 0xA6, 0x80, 0xF0, 0x9F, 'a', 0xF0, 0x9F};
    const size_t want[] = {0, 0, 0, 4, 0, 0, 4, 0, 0};
    size_t total = 0;
    char all[64];
    for (size_t i = 0; i < sizeof seq / sizeof *seq; i++) {
        size_t k = mtok_decode_next(t, &d, seq[i], all + total, sizeof all - total);
        CHECK(k == want[i], "byte %zu: %zu bytes out, want %zu", i, k, want[i]);
        total += k;
    }
    total += mtok_decode_flush(&d, all + total, sizeof all - total);
    CHECK(total == 4 + 4 + 3 && !memcmp(all, "\xf0\x9f\xa6\x80\xef\xbf\xbd" "a\xef\xbf\xbd", total),
          "byte-wise stream decode");
    char *whole = mtok_detokenize(t, seq, sizeof seq / sizeof *seq, NULL);
    CHECK(whole && strlen(whole) == total && !memcmp(whole, all, total), "detokenize != stream");
    free(whole);
    CHECK(mtok_decode_next(t, &d, -5, all, sizeof all) == 0 && d.n_pend == 0, "invalid id decodes to nothing");
}

static void test_specials(const mtok_tokenizer *t, int64_t n_ranks, const char *name) {
    const char *s = "[gMASK]<sop>";
    mtok_ids plain = {0}, spec = {0};
    mtok_tokenize(t, s, strlen(s), 0, &plain);
    mtok_tokenize(t, s, strlen(s), 1, &spec);
    CHECK(spec.n == 2 && spec.v[0] == n_ranks + 2 && spec.v[1] == n_ranks + 4, "%s: specials not mapped", name);
    int any = 0;
    for (size_t i = 0; i < plain.n; i++) any |= mtok_token_is_special(t, plain.v[i]);
    CHECK(plain.n > 2 && !any, "%s: allow_special=0 produced special ids", name);
    char *dec = mtok_detokenize(t, spec.v, spec.n, NULL);
    CHECK(dec && !strcmp(dec, s), "%s: specials decode to their strings", name);
    free(dec);
    /* appending keeps what is there */
    mtok_tokenize(t, "x", 1, 0, &spec);
    CHECK(spec.n == 3 && spec.v[0] == n_ranks + 2, "%s: mtok_tokenize must append", name);
    mtok_ids_free(&plain);
    mtok_ids_free(&spec);
}

/* ---------------------------------------------------------------------------------------------- */
/* Malformed and alternative files                                                                 */

/* Loads a tokenizer.model made of these lines; expects failure with every fragment in the message. */
static void expect_bad_model(const char *lines, const char *frag1, const char *frag2) {
    char *p = path_in(g_tmp, "tokenizer.model");
    write_file(p, lines, strlen(lines));
    mtok_tokenizer *t = (mtok_tokenizer *)1;
    int rc = mtok_tokenizer_load_file(p, &t);
    const char *m = mtok_errmsg();
    CHECK(rc == MTOK_EINPUT && t == NULL, "corrupt model (%s) loaded: rc %d", frag2, rc);
    CHECK(strstr(m, p) && strstr(m, frag1) && strstr(m, frag2), "message \"%s\" lacks \"%s\"/\"%s\"", m, frag1,
          frag2);
    unlink(p);
}

static void test_corrupt_files(void) {
    expect_bad_model("YQ== 0\nYg== 1\n!!!! 2\nYw== 3\n", ":3:", "base64");
    expect_bad_model("YQ== 0\nYg== 1\nYWI 2\n", ":3:", "base64");          /* bad padding */
    expect_bad_model("YQ== 0\nYg== 1\nYw== 1\n", ":3:", "duplicate rank");
    expect_bad_model("YQ== 0\nYg== 1\nYw== 3\n", ":3:", "gap");
    expect_bad_model("YQ== 0\nYg== x1\n", ":2:", "not a number");
    expect_bad_model("YQ== 0\nYg==\n", ":2:", "<base64> <rank>");
    expect_bad_model("YQ== 0\nYQ== 1\n", ":2:", "repeats the bytes of rank 0");
    expect_bad_model("\n\n", "tokenizer.model", "no tokens");

    mtok_tokenizer *t = NULL;
    int rc = mtok_tokenizer_load_file(path_in(g_tmp, "missing.model"), &t);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "missing.model"), "missing file: %d %s", rc, mtok_errmsg());
    rc = mtok_tokenizer_load(g_tmp, &t);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "no tokenizer.model"), "empty dir: %s", mtok_errmsg());

    char *j = path_in(g_tmp, "tokenizer.json");
    write_file(j, "{\"model\": {\"type\": \"BPE\", ", 26);
    rc = mtok_tokenizer_load_file(j, &t);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "tokenizer.json") && strstr(mtok_errmsg(), "bad JSON"),
          "truncated JSON: %s", mtok_errmsg());
    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}";
    write_file(j, wp, strlen(wp));
    rc = mtok_tokenizer_load_file(j, &t);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "WordPiece"), "WordPiece accepted: %s", mtok_errmsg());
    unlink(j);

    /* A vocabulary without some bytes: text using them fails, naming the byte; the output is untouched. */
    const char *small = "YQ== 0\nYg== 1\nYWI= 2\n"; /* a, b, ab */
    char *p = path_in(g_tmp, "tokenizer.model");
    write_file(p, small, strlen(small));
    rc = mtok_tokenizer_load_file(p, &t);
    CHECK(rc == 0, "small vocab: %s", mtok_errmsg());
    if (!rc) {
        mtok_ids ids = {0};
        rc = mtok_tokenize(t, "abab", 4, 0, &ids);
        CHECK(rc == 0 && ids.n == 2 && ids.v[0] == 2 && ids.v[1] == 2, "small vocab: abab");
        rc = mtok_tokenize(t, "abc", 3, 0, &ids);
        CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "0x63") && ids.n == 2, "unknown byte: rc %d \"%s\"", rc,
              mtok_errmsg());
        CHECK(mtok_tokenizer_n_vocab(t) == 3 + 14, "small vocab n_vocab");
        mtok_ids_free(&ids);
        mtok_tokenizer_free(t);
    }
    unlink(p);
}

/* tokenizer_config.json beside tokenizer.model declares the specials (e.g. the needle model's). */
static void test_declared_specials(int64_t n_ranks) {
    size_t n;
    char *model = read_all(path_in(g_data, "tokenizer.model"), &n);
    write_file(path_in(g_tmp, "tokenizer.model"), model, n);
    free(model);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"added_tokens_decoder\": {\"%lld\": {\"content\": \"<|endoftext|>\", \"special\": true},"
             " \"%lld\": {\"content\": \"<|fact:3:7|>\", \"special\": true},"
             " \"%lld\": {\"content\": \"<|ask:3|>\", \"special\": true},"
             " \"%lld\": {\"content\": \"<|plain|>\", \"special\": false}}, \"eos_token\": \"<|endoftext|>\"}",
             (long long)n_ranks, (long long)n_ranks + 1, (long long)n_ranks + 3, (long long)n_ranks + 4);
    write_file(path_in(g_tmp, "tokenizer_config.json"), cfg, strlen(cfg));
    mtok_tokenizer *t = NULL;
    int rc = mtok_tokenizer_load(g_tmp, &t);
    CHECK(rc == 0, "declared specials: %s", mtok_errmsg());
    if (!rc) {
        CHECK(mtok_tokenizer_n_vocab(t) == n_ranks + 5, "declared specials: n_vocab %lld",
              (long long)mtok_tokenizer_n_vocab(t));
        CHECK(mtok_token_special(t, "<|fact:3:7|>") == n_ranks + 1 && mtok_token_special(t, "<|ask:3|>") == n_ranks + 3,
              "declared specials: ids");
        CHECK(mtok_token_special(t, "[gMASK]") == -1, "declared specials replace the GLM-4 list");
        CHECK(!mtok_token_bytes(t, (int32_t)n_ranks + 2, NULL), "id hole has no bytes");
        const char *s = "x<|fact:3:7|>y<|plain|>";
        mtok_ids a = {0}, b = {0};
        mtok_tokenize(t, s, strlen(s), 1, &a);
        mtok_tokenize(t, s, strlen(s), 0, &b);
        int has_fact_a = 0, has_fact_b = 0, plain_b = 0;
        for (size_t i = 0; i < a.n; i++) has_fact_a |= a.v[i] == n_ranks + 1;
        for (size_t i = 0; i < b.n; i++) has_fact_b |= b.v[i] == n_ranks + 1, plain_b |= b.v[i] == n_ranks + 4;
        CHECK(has_fact_a && !has_fact_b, "declared special matched only with allow_special");
        CHECK(plain_b && !mtok_token_is_special(t, (int32_t)n_ranks + 4), "non-special added token always matched");
        mtok_ids_free(&a);
        mtok_ids_free(&b);
        mtok_tokenizer_free(t);
    }
    const char *bad = "{\"added_tokens_decoder\": {\"5\": {\"content\": \"<x>\"}}}";
    write_file(path_in(g_tmp, "tokenizer_config.json"), bad, strlen(bad));
    rc = mtok_tokenizer_load(g_tmp, &t);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "tokenizer_config.json"), "special on a rank id: %s",
          mtok_errmsg());
    unlink(path_in(g_tmp, "tokenizer_config.json"));
    unlink(path_in(g_tmp, "tokenizer.model"));
}

/* tokenizer.json variants: merges as "a b" strings (the older format) must give the same ids; without
 * ignore_merges the ids may differ (HF semantics) but must still round-trip. */
static void test_json_variants(void) {
    json_error_t je;
    json_t *root = json_load_file(path_in(g_data, "tokenizer.json"), 0, &je);
    CHECK(root != NULL, "tokenizer.json: %s", je.text);
    if (!root) return;
    json_t *model = json_object_get(root, "model"), *merges = json_object_get(model, "merges"), *strs = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s %s", json_string_value(json_array_get(m, 0)),
                 json_string_value(json_array_get(m, 1)));
        json_array_append_new(strs, json_string(buf));
    }
    json_object_set_new(model, "merges", strs);
    char *j = path_in(g_tmp, "tokenizer.json");
    json_dump_file(root, j, 0);
    mtok_tokenizer *t = NULL;
    int rc = mtok_tokenizer_load_file(j, &t);
    CHECK(rc == 0, "string merges: %s", mtok_errmsg());
    if (!rc) check_goldens(t, "tokenizer.json (string merges)");
    mtok_tokenizer_free(t);

    json_object_set_new(model, "ignore_merges", json_false());
    json_dump_file(root, j, 0);
    rc = mtok_tokenizer_load_file(j, &t);
    CHECK(rc == 0, "ignore_merges=false: %s", mtok_errmsg());
    for (size_t k = 0; !rc && k < g_n_gold; k++) {
        mtok_ids ids = {0};
        rc = mtok_tokenize(t, g_gold[k].text, g_gold[k].len, g_gold[k].special, &ids);
        char *dec = mtok_detokenize(t, ids.v, ids.n, NULL);
        CHECK(rc == 0 && dec_equals(dec, g_gold[k].text, g_gold[k].len),
              "ignore_merges=false: golden %zu does not round-trip", k);
        free(dec);
        mtok_ids_free(&ids);
    }
    mtok_tokenizer_free(t);
    /* A bare ByteLevel(use_regex=true) splits with GPT-2's regex; add_prefix_space prefixes each segment. */
    const char *variants[] = {"bytelevel", "bytelevel_prefix"};
    for (int v = 0; v < 2; v++) {
        json_t *pre = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", v == 1,
                                "trim_offsets", 1, "use_regex", 1);
        json_object_set_new(root, "pre_tokenizer", pre);
        json_object_set_new(model, "ignore_merges", json_true());
        json_dump_file(root, j, 0);
        rc = mtok_tokenizer_load_file(j, &t);
        CHECK(rc == 0, "%s: %s", variants[v], mtok_errmsg());
        int n = 0;
        for (size_t k = 0; k < g_n_var; k++) n += !strcmp(g_var[k].variant, variants[v]);
        CHECK(n > 20, "goldens_variants.jsonl has only %d %s lines", n, variants[v]);
        if (!rc) check_golden_set(t, variants[v], g_var, g_n_var, variants[v], v == 0);
        mtok_tokenizer_free(t);
    }
    json_decref(root);
    unlink(j);
}

/* ---------------------------------------------------------------------------------------------- */
/* Threads and the interpreter                                                                     */

typedef struct {
    const mtok_tokenizer *t;
    int fails;
} thread_arg;

static void *thread_main(void *p) {
    thread_arg *a = p;
    for (int rep = 0; rep < 20; rep++)
        for (size_t i = 0; i < g_n_gold; i++) {
            mtok_ids ids = {0};
            int rc = mtok_tokenize(a->t, g_gold[i].text, g_gold[i].len, g_gold[i].special, &ids);
            if (rc || !ids_equal(ids.v, ids.n, g_gold[i].ids, g_gold[i].n_ids)) a->fails++;
            mtok_ids_free(&ids);
        }
    return NULL;
}

static void test_threads(const mtok_tokenizer *t, const char *name) {
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){t, 0};
        pthread_create(&th[i], NULL, thread_main, &args[i]);
    }
    int fails = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        fails += args[i].fails;
    }
    CHECK(fails == 0, "%s: %d golden mismatches with 4 threads", name, fails);
}

static void test_interpreter(const char *file) {
    mtok_tokenizer *t = NULL;
    int rc = mtok_tokenizer_load_file(path_in(g_data, file), &t);
    if (!rc) tok_disable_jit(t);
    CHECK(rc == 0, "no-JIT load: %s", mtok_errmsg());
    if (!rc) check_goldens(t, "interpreted regex");
    mtok_tokenizer_free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* Big inputs                                                                                      */

/* Tokenizes and decodes s, timing both. Valid UTF-8 must come back as itself; invalid UTF-8 (which
 * decodes to U+FFFD) must at least be encoded losslessly, i.e. its tokens' bytes concatenate to s. */
static void timed_roundtrip(const mtok_tokenizer *t, const char *name, const char *what, const char *s, size_t n,
                            int valid_utf8) {
    mtok_ids ids = {0};
    double t0 = now_s();
    int rc = mtok_tokenize(t, s, n, 0, &ids);
    double t1 = now_s();
    char *dec = rc ? NULL : mtok_detokenize(t, ids.v, ids.n, NULL);
    double t2 = now_s();
    CHECK(rc == 0, "%s: %s: %s", name, what, mtok_errmsg());
    if (valid_utf8) {
        CHECK(dec && strlen(dec) == n && !memcmp(dec, s, n), "%s: %s does not round-trip", name, what);
    } else {
        size_t at = 0, len;
        int same = 1;
        for (size_t i = 0; i < ids.n && same; i++) {
            const char *b = mtok_token_bytes(t, ids.v[i], &len);
            same = b && at + len <= n && !memcmp(s + at, b, len);
            at += len;
        }
        CHECK(same && at == n, "%s: %s is not encoded losslessly", name, what);
    }
    printf("  %-16s %-34s %9.2f MB -> %9zu tokens: encode %.3f s, decode %.3f s\n", name, what, n / 1e6, ids.n,
           t1 - t0, t2 - t1);
    free(dec);
    mtok_ids_free(&ids);
}

static void test_big(const mtok_tokenizer *t, const char *name) {
    size_t cap = 4u << 20, n = 0;
    char *s = malloc(cap + 1);
    /* 4 MB of the English goldens (specials left as text), repeated */
    while (n < cap) {
        for (size_t i = 0; i < g_n_gold && n < cap; i++) {
            const golden *g = &g_gold[i];
            int ascii = 1;
            for (size_t k = 0; k < g->len; k++) ascii &= (unsigned char)g->text[k] < 0x80 && g->text[k];
            if (!ascii) continue;
            size_t k = g->len + 1 < cap - n ? g->len : cap - n - 1;
            memcpy(s + n, g->text, k);
            n += k;
            s[n++] = ' ';
        }
    }
    timed_roundtrip(t, name, "4 MB English (goldens repeated)", s, n, 1);
    memset(s, 'l', 1 << 20); /* "ll" is a token: one piece with half a million merges */
    timed_roundtrip(t, name, "1 MB of 'l' (one piece)", s, 1 << 20, 1);
    for (size_t i = 0; i + 3 <= (1 << 20); i += 3) memcpy(s + i, "\xe5\xa5\xbd", 3); /* 好 */
    timed_roundtrip(t, name, "1 MB of one CJK character", s, (1 << 20) / 3 * 3, 1);
    memset(s, ' ', 1 << 20);
    s[(1 << 20) - 1] = 'x';
    timed_roundtrip(t, name, "1 MB of spaces then x", s, 1 << 20, 1);
    for (size_t i = 0; i < (1 << 20); i++) s[i] = (char)(0x80 + i % 64); /* continuation bytes only */
    timed_roundtrip(t, name, "1 MB of invalid UTF-8", s, 1 << 20, 0);
    free(s);
}

/* ---------------------------------------------------------------------------------------------- */

static void cleanup_tmp(void) {
    static const char *names[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"};
    for (size_t i = 0; i < 3; i++) unlink(path_in(g_tmp, names[i]));
    rmdir(g_tmp);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SRC_DIR [BUILD_DIR]\n", argv[0]);
        return 1;
    }
    snprintf(g_data, sizeof g_data, "%s/tests/data/tok", argv[1]);
    strcpy(g_tmp, "/tmp/mtok_test_tok_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    g_gold = load_goldens("goldens.jsonl", &g_n_gold);
    g_var = load_goldens("goldens_variants.jsonl", &g_n_var);
    int64_t n_ranks = count_lines(path_in(g_data, "tokenizer.model"));

    const char *files[] = {"tokenizer.model", "tokenizer.json"};
    mtok_tokenizer *tk[2] = {NULL, NULL};
    for (int f = 0; f < 2; f++) {
        double t0 = now_s();
        int rc = mtok_tokenizer_load_file(path_in(g_data, files[f]), &tk[f]);
        CHECK(rc == 0, "load %s: %s", files[f], mtok_errmsg());
        if (rc) continue;
        printf("  %s: loaded in %.3f s, %lld ids\n", files[f], now_s() - t0, (long long)mtok_tokenizer_n_vocab(tk[f]));
        test_basics(tk[f], n_ranks, files[f]);
        int bad = check_goldens(tk[f], files[f]);
        printf("  %s: %zu goldens, %d mismatches\n", files[f], g_n_gold, bad);
        test_invalid_utf8(tk[f], files[f]);
        test_specials(tk[f], n_ranks, files[f]);
        test_threads(tk[f], files[f]);
    }
    mtok_tokenizer *dir_tok = NULL;
    CHECK(mtok_tokenizer_load(g_data, &dir_tok) == 0 && mtok_tokenizer_n_vocab(dir_tok) == n_ranks + 14,
          "load(dir): %s", mtok_errmsg());
    mtok_tokenizer_free(dir_tok);
    if (tk[0]) test_stream_split(tk[0]);
    test_corrupt_files();
    test_declared_specials(n_ranks);
    test_json_variants();
    test_interpreter("tokenizer.model");
    for (int f = 0; f < 2; f++)
        if (tk[f]) test_big(tk[f], files[f]);
    for (int f = 0; f < 2; f++) mtok_tokenizer_free(tk[f]);

    free_goldens(g_gold, g_n_gold);
    free_goldens(g_var, g_n_var);
    cleanup_tmp();
    printf("test_tokenizer: %d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
