/* test_tok_hostile.c — tokenizer files written to hurt (issue 16, finding 6): token ids below 0 or
 * far beyond the 2^24 limit in tokenizer.json (added_tokens, model.vocab) and tokenizer_config.json
 * (added_tokens_decoder) must be refused with MTOK_EINPUT naming the file, before an id indexes
 * anything or sizes an allocation; a Split regex that backtracks catastrophically must fail fast,
 * with the JIT and with the interpreter, naming the file and the pattern — and the shipped pattern
 * must still handle the inputs that make it backtrack most. Fixtures: tests/data/tok.
 * Usage: test_tok_hostile SRC_DIR [BUILD_DIR]. Exit 0 pass, 1 fail. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/mtok.h"
#include "core/tok_internal.h"
#include "tests/check.h"

static char g_tmp[64], g_json[4200], g_model[4200], g_cfg[4200];
static const char *g_src;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static json_t *fixture(void) {
    char p[4200];
    snprintf(p, sizeof p, "%s/tests/data/tok/tokenizer.json", g_src);
    json_error_t je;
    json_t *root = json_load_file(p, 0, &je);
    if (!root) {
        fprintf(stderr, "%s: %s\n", p, je.text);
        exit(1);
    }
    return root;
}

/* Writes root (consumed) as tokenizer.json and loads it: the rc, the loaded tokenizer in *t (or NULL). */
static int load_json(json_t *root, mtok_tokenizer **t) {
    json_dump_file(root, g_json, 0);
    json_decref(root);
    return mtok_tokenizer_load_file(g_json, t);
}

static void expect_refused(const char *what, int rc, double secs, const char *frag1, const char *frag2) {
    const char *msg = mtok_errmsg();
    CHECK(rc == MTOK_EINPUT && strstr(msg, frag1) && (!frag2 || strstr(msg, frag2)),
          "%s: rc %d, '%s' (want '%s'%s%s)", what, rc, msg, frag1, frag2 ? " and " : "", frag2 ? frag2 : "");
    /* refused before the id sizes anything: no gigabyte allocation, no long loop */
    CHECK(secs < 2.0, "%s: took %.2f s", what, secs);
    if (rc) printf("  %-40s -> %s\n", what, msg);
}

static void test_added_ids(void) {
    static const struct {
        const char *what;
        json_int_t id;
    } cases[] = {{"added_tokens id -1", -1}, {"added_tokens id -2147483648", -2147483647 - 1},
                 {"added_tokens id 2e9", 2000000000}, {"added_tokens id 2^24", 1 << 24},
                 {"added_tokens id 2^40", (json_int_t)1 << 40}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        json_t *root = fixture(), *added = json_object_get(root, "added_tokens");
        json_array_append_new(added, json_pack("{s:I, s:s, s:b}", "id", cases[k].id, "content", "<|hostile|>",
                                               "special", 1));
        char idtxt[32];
        snprintf(idtxt, sizeof idtxt, "%lld", (long long)cases[k].id);
        mtok_tokenizer *t = NULL;
        double t0 = now_s();
        int rc = load_json(root, &t);
        expect_refused(cases[k].what, rc, now_s() - t0, g_json, idtxt);
        CHECK(rc || strstr(mtok_errmsg(), "added_tokens"), "%s: message names added_tokens", cases[k].what);
        mtok_tokenizer_free(t);
    }
    /* the largest id below the limit is fine (a sparse id space: holes are allowed) */
    json_t *root = fixture();
    json_array_append_new(json_object_get(root, "added_tokens"),
                          json_pack("{s:i, s:s, s:b}", "id", (1 << 24) - 1, "content", "<|last|>", "special", 1));
    mtok_tokenizer *t = NULL;
    int rc = load_json(root, &t);
    CHECK(rc == 0 && mtok_tokenizer_n_vocab(t) == 1 << 24, "id 2^24-1: rc %d %s", rc, mtok_errmsg());
    mtok_tokenizer_free(t);
}

static void test_vocab_ids(void) {
    const json_int_t ids[] = {-7, 2000000000};
    for (size_t k = 0; k < 2; k++) {
        json_t *root = fixture(), *vocab = json_object_get(json_object_get(root, "model"), "vocab");
        json_object_set_new(vocab, "zzzz", json_integer(ids[k]));
        mtok_tokenizer *t = NULL;
        double t0 = now_s();
        int rc = load_json(root, &t);
        expect_refused(k ? "model.vocab id 2e9" : "model.vocab id -7", rc, now_s() - t0, g_json, "model.vocab");
        mtok_tokenizer_free(t);
    }
}

/* tokenizer.model + a tokenizer_config.json declaring specials by id */
static void test_config_ids(void) {
    char src[4200];
    snprintf(src, sizeof src, "%s/tests/data/tok/tokenizer.model", g_src);
    FILE *in = fopen(src, "rb"), *out = fopen(g_model, "wb");
    if (!in || !out) {
        fprintf(stderr, "cannot copy %s to %s\n", src, g_model);
        exit(1);
    }
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
    const char *keys[] = {"-3", "2000000000"};
    for (size_t k = 0; k < 2; k++) {
        json_t *cfg = json_pack("{s:{s:{s:s, s:b}}}", "added_tokens_decoder", keys[k], "content", "<|x|>", "special", 1);
        json_dump_file(cfg, g_cfg, 0);
        json_decref(cfg);
        mtok_tokenizer *t = NULL;
        double t0 = now_s();
        int rc = mtok_tokenizer_load_file(g_model, &t);
        expect_refused(k ? "added_tokens_decoder \"2000000000\"" : "added_tokens_decoder \"-3\"", rc, now_s() - t0,
                       g_cfg, keys[k]);
        mtok_tokenizer_free(t);
    }
    unlink(g_cfg);
    unlink(g_model);
}

/* The Split regex of the fixture replaced by pat. */
static json_t *with_pattern(const char *pat) {
    json_t *root = fixture();
    json_t *pre = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence",
                            "pretokenizers", "type", "Split", "pattern", "Regex", pat, "behavior", "Isolated",
                            "invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
                            "use_regex", 0);
    json_object_set_new(root, "pre_tokenizer", pre);
    return root;
}

static void test_pathological_regex(void) {
    /* the fourth holds a newline, which the message shows as '?' so that it stays one line; the
     * fifth is 126 bytes long and shown as its first 80 and "..." */
    char longpat[160] = "(a+)+$", longshown[100];
    for (int i = 0; i < 12; i++) strcat(longpat, "|zzzzzzzzz");
    snprintf(longshown, sizeof longshown, "\"%.80s...\"", longpat);
    const char *pats[] = {"(a+)+$", "(\\w+\\s?)*$", "(a|aa)+$", "(a+)+\n*$", longpat};
    const char *shown[] = {"(a+)+$", "(\\w+\\s?)*$", "(a|aa)+$", "\"(a+)+?*$\"", longshown};
    char text[4096];
    for (size_t p = 0; p < sizeof pats / sizeof pats[0]; p++)
        for (int jit = 1; jit >= 0; jit--) {
            mtok_tokenizer *t = NULL;
            int rc = load_json(with_pattern(pats[p]), &t);
            CHECK(rc == 0, "%s: the pattern compiles: %s", pats[p], mtok_errmsg());
            if (rc) continue;
            if (!jit) tok_disable_jit(t);
            /* 40 letters and no end: 2^40 ways to split them before each fails at the '!' */
            for (size_t len = 40; len <= 4000; len *= 100) {
                memset(text, 'a', len);
                text[len - 1] = '!';
                mtok_ids ids = {0};
                double t0 = now_s();
                rc = mtok_tokenize(t, text, len, 0, &ids);
                double secs = now_s() - t0;
                char what[128];
                snprintf(what, sizeof what, "regex %.20s, %zu bytes, %s", shown[p], len, jit ? "JIT" : "interpreter");
                /* under the old 2^32-step limit (a+)+$ ran 5.6 s with the JIT and 52 s interpreted;
                 * now 0.01 s and 0.13 s (bounds with room for a loaded machine) */
                CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), g_json) && strstr(mtok_errmsg(), shown[p]) &&
                          !strchr(mtok_errmsg(), '\n') && ids.n == 0,
                      "%s: rc %d, %zu ids, '%s'", what, rc, ids.n, mtok_errmsg());
                CHECK(secs < (jit ? 2.0 : 5.0), "%s: failed after %.2f s, not fast", what, secs);
                printf("  %-44s -> %.3f s: %s\n", what, secs, mtok_errmsg());
                mtok_ids_free(&ids);
            }
            mtok_tokenizer_free(t);
        }
}

/* The GLM-4 pattern's most backtracking inputs (long whitespace runs before a letter, digits,
 * punctuation) stay inside the step limit, with the JIT and without. */
static void test_shipped_pattern_inputs(void) {
    size_t n = 1u << 20;
    char *s = malloc(n);
    for (int jit = 1; jit >= 0; jit--) {
        mtok_tokenizer *t = NULL;
        int rc = load_json(fixture(), &t);
        CHECK(rc == 0, "fixture: %s", mtok_errmsg());
        if (rc) break;
        if (!jit) tok_disable_jit(t);
        const char fill[] = {' ', '\t', '7', '!', '\n'};
        for (size_t f = 0; f < sizeof fill; f++) {
            for (size_t i = 0; i < n; i++) s[i] = f == 1 ? (i % 2 ? '\t' : ' ') : fill[f];
            s[n - 1] = 'x';
            mtok_ids ids = {0};
            rc = mtok_tokenize(t, s, n, 0, &ids);
            CHECK(rc == 0 && ids.n > 0, "1 MiB of '%c' then x (%s): %s", fill[f], jit ? "JIT" : "interpreter",
                  mtok_errmsg());
            mtok_ids_free(&ids);
        }
        mtok_tokenizer_free(t);
    }
    free(s);
}

/* A pattern whose match needs more than PCRE2's default 32 KiB JIT stack (a capturing group repeated
 * for every byte of a long run) but does not backtrack: the memory limits are raised once and it works. */
static void test_deep_but_linear(void) {
    mtok_tokenizer *t = NULL;
    int rc = load_json(with_pattern("(a|b)+"), &t);
    CHECK(rc == 0, "(a|b)+ compiles: %s", mtok_errmsg());
    if (rc) return;
    size_t n = 256 * 1024;
    char *s = malloc(n);
    for (size_t i = 0; i < n; i++) s[i] = i % 2 ? 'a' : 'b';
    for (int jit = 1; jit >= 0; jit--) {
        if (!jit) tok_disable_jit(t);
        mtok_ids ids = {0};
        rc = mtok_tokenize(t, s, n, 0, &ids);
        CHECK(rc == 0 && ids.n > 0, "(a|b)+ over 256 KiB (%s): %s", jit ? "JIT" : "interpreter", mtok_errmsg());
        mtok_ids_free(&ids);
    }
    free(s);
    mtok_tokenizer_free(t);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SRC_DIR [BUILD_DIR]\n", argv[0]);
        return 1;
    }
    g_src = argv[1];
    strcpy(g_tmp, "/tmp/mtok_tok_hostile_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(g_json, sizeof g_json, "%s/tokenizer.json", g_tmp);
    snprintf(g_model, sizeof g_model, "%s/tokenizer.model", g_tmp);
    snprintf(g_cfg, sizeof g_cfg, "%s/tokenizer_config.json", g_tmp);
    test_added_ids();
    test_vocab_ids();
    test_config_ids();
    test_pathological_regex();
    test_shipped_pattern_inputs();
    test_deep_but_linear();
    unlink(g_json);
    rmdir(g_tmp);
    if (check_failures) fprintf(stderr, "test_tok_hostile: %d failure(s)\n", check_failures);
    else printf("test_tok_hostile: ok\n");
    return check_failures != 0;
}
