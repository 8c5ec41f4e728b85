/* test_tok_spm.c — the SentencePiece tokenizer (core/tok_spm.cc) against the goldens that
 * tests/ref/make_spm_fixtures.py wrote with the `sentencepiece` package: ids of every test text, and
 * THUDM's decode (runs of ordinary ids through SentencePiece, specials as their text) of those ids and of
 * sequences with specials, bos/eos and broken byte runs, whole and streamed. Also ChatGLM3's special ids,
 * "sop" staying text, and the errors for files of neither kind. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mtok.h"
#include "tests/check.h"

static size_t unhex(const char *h, char *out) {
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    return n;
}

static void check_decode(const mtok_tokenizer *t, json_t *ids, json_t *decoded, size_t line) {
    const char *want = json_string_value(decoded);
    size_t wn = json_string_length(decoded);
    if (!want) {
        CHECK(0, "line %zu: no decoded text", line);
        return;
    }
    size_t n = json_array_size(ids);
    int32_t *v = malloc((n + 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = (int32_t)json_integer_value(json_array_get(ids, i));
    size_t len;
    char *got = mtok_detokenize(t, v, n, &len);
    CHECK(got && len == wn && !memcmp(got, want, len), "line %zu: decoded \"%s\", want \"%s\"", line,
          got ? got : "(null)", want);
    /* streamed one id at a time, with the documented capacity */
    size_t cap = mtok_tokenizer_max_token_len(t) + 8, o = 0;
    char *buf = malloc(n * cap + cap);
    mtok_decoder d = {0};
    for (size_t i = 0; i < n; i++) o += mtok_decode_next(t, &d, v[i], buf + o, cap);
    o += mtok_decode_flush(&d, buf + o, cap);
    CHECK(o == wn && !memcmp(buf, want, o), "line %zu: streamed decode differs (%zu bytes)", line, o);
    free(buf), free(got), free(v);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/tests/data/tok/spm", argv[1]);
    mtok_tokenizer *t = NULL;
    int rc = mtok_tokenizer_load(dir, &t);
    CHECK(rc == 0, "load %s: %s", dir, mtok_errmsg());
    if (rc) return 1;
    CHECK(!strcmp(mtok_tokenizer_kind(t), "sentencepiece"), "kind %s", mtok_tokenizer_kind(t));
    /* the fixture has 600 pieces; ChatGLM3's nine specials follow in THUDM's order */
    const char *sp[] = {"[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                        "<|observation|>"};
    CHECK(mtok_tokenizer_n_vocab(t) == 609, "n_vocab %lld", (long long)mtok_tokenizer_n_vocab(t));
    for (int k = 0; k < 9; k++) {
        CHECK(mtok_token_special(t, sp[k]) == 600 + k, "%s = %d", sp[k], mtok_token_special(t, sp[k]));
        CHECK(mtok_token_is_special(t, 600 + k), "%d special", 600 + k);
    }
    CHECK(!mtok_token_is_special(t, 2) && !mtok_token_is_special(t, 599), "pieces are not specials");

    snprintf(path, sizeof path, "%s/goldens.jsonl", dir);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s missing", path);
    char line[65536], text[32768];
    size_t lineno = 0, n_enc = 0;
    while (f && fgets(line, sizeof line, f)) {
        lineno++;
        json_error_t je;
        json_t *g = json_loads(line, JSON_ALLOW_NUL, &je);
        CHECK(g != NULL, "line %zu: %s", lineno, je.text);
        json_t *ids = json_object_get(g, "ids");
        const char *hex = json_string_value(json_object_get(g, "text_hex"));
        if (hex) {
            size_t n = unhex(hex, text);
            mtok_ids got = {0};
            rc = mtok_tokenize(t, text, n, 0, &got);
            int same = rc == 0 && got.n == json_array_size(ids);
            for (size_t i = 0; same && i < got.n; i++) same = got.v[i] == json_integer_value(json_array_get(ids, i));
            CHECK(same, "line %zu: ids of \"%.40s\" differ from sentencepiece (rc %d, %zu ids)", lineno, text, rc,
                  got.n);
            mtok_ids_free(&got);
            n_enc++;
        }
        check_decode(t, ids, json_object_get(g, "decoded"), lineno);
        json_decref(g);
    }
    if (f) fclose(f);
    CHECK(n_enc >= 15 && lineno >= 20, "goldens: %zu texts, %zu lines", n_enc, lineno);

    /* allow_special: role tokens and [gMASK] become ids, "sop" in running text stays words */
    mtok_ids a = {0}, b = {0};
    const char *s = "<|user|>desops sop[gMASK]";
    CHECK(mtok_tokenize(t, s, strlen(s), 1, &a) == 0, "special encode: %s", mtok_errmsg());
    CHECK(a.n > 2 && a.v[0] == 606 && a.v[a.n - 1] == 601, "specials at both ends");
    for (size_t i = 1; i + 1 < a.n; i++) CHECK(a.v[i] < 600, "id %d at %zu: sop must stay text", a.v[i], i);
    CHECK(mtok_tokenize(t, s, strlen(s), 0, &b) == 0, "plain encode");
    for (size_t i = 0; i < b.n; i++) CHECK(b.v[i] < 600, "plain encode made special id %d", b.v[i]);
    mtok_ids_free(&a), mtok_ids_free(&b);
    mtok_tokenizer_free(t);

    /* files of neither kind, and a SentencePiece model cut short, are refused naming the file */
    const char *tmpd = argc > 2 ? argv[2] : "/tmp";
    snprintf(path, sizeof path, "%s/test_tok_spm_bad.model", tmpd);
    static const unsigned char junk[] = {0x0A, 0x05, '<', 'u', 'n', 'k', '>', 0x12, 0x01, 0x08, 0x00, 0xFF};
    FILE *w = fopen(path, "wb");
    fwrite(junk, 1, sizeof junk, w);
    fclose(w);
    rc = mtok_tokenizer_load_file(path, &t);
    CHECK(rc != 0 && strstr(mtok_errmsg(), path) && strstr(mtok_errmsg(), "SentencePiece"), "junk: %s",
          mtok_errmsg());
    /* the real model truncated in the middle of a piece */
    char *m = NULL;
    snprintf(line, sizeof line, "%s/tokenizer.model", dir);
    FILE *r = fopen(line, "rb");
    m = malloc(1 << 20);
    size_t mn = fread(m, 1, 1 << 20, r);
    fclose(r);
    w = fopen(path, "wb");
    fwrite(m, 1, mn / 2 + 3, w);
    fclose(w);
    rc = mtok_tokenizer_load_file(path, &t);
    CHECK(rc != 0 && strstr(mtok_errmsg(), path), "truncated model: %s", mtok_errmsg());
    free(m);
    remove(path);
    return check_failures != 0;
}
