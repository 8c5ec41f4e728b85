/* fuzz_common.c — the working directory, file helpers and the tokenizer exercise shared by the fuzz
 * targets (fuzz_common.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"

#ifndef MTOK_FUZZ_FIXTURES
#error "MTOK_FUZZ_FIXTURES (the path of tests/fuzz/fixtures) must be defined by the build"
#endif

static char workdir[4096];

static void die(const char *what, const char *path) {
    fprintf(stderr, "fuzz harness: %s %s: %s\n", what, path, strerror(errno));
    abort();
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void rm_workdir(void) {
    if (workdir[0]) nftw(workdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fz_workdir(void) {
    if (workdir[0]) return workdir;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(workdir, sizeof workdir, "%s/mtok-fuzz.XXXXXX", base);
    if (!mkdtemp(workdir)) die("cannot create", workdir);
    atexit(rm_workdir);
    setenv("HOME", workdir, 1);
    setenv("XDG_CACHE_HOME", workdir, 1);
    mtok_set_log_level(0);
    return workdir;
}

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (!p) abort();
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

char *fz_work(const char *rel) { return join(fz_workdir(), rel); }
char *fz_fixture(const char *rel) { return join(MTOK_FUZZ_FIXTURES, rel); }

void fz_mkdir(const char *rel) {
    char *p = fz_work(rel);
    for (char *s = p + strlen(fz_workdir()) + 1;; s++) {
        if (*s != '/' && *s) continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0700) != 0 && errno != EEXIST) die("cannot create", p);
        *s = c;
        if (!c) break;
    }
    free(p);
}

void fz_write(const char *path, const void *p, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) die("cannot write", path);
    const char *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("cannot write", path);
        b += w, n -= (size_t)w;
    }
    close(fd);
}

char *fz_read(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot read", path);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) buf = realloc(buf, (cap *= 2) + 1);
    }
    if (!buf || ferror(f)) die("cannot read", path);
    fclose(f);
    buf[len] = 0;
    if (n) *n = len;
    return buf;
}

void fz_copy(const char *src, const char *dst) {
    size_t n;
    char *b = fz_read(src, &n);
    fz_write(dst, b, n);
    free(b);
}

char *fz_cstr(const uint8_t *data, size_t n) {
    char *s = malloc(n + 1);
    if (!s) abort();
    memcpy(s, data, n);
    s[n] = 0;
    return s;
}

static const char SAMPLE[] = "Hello, world! It's 2024: 12345 tokens.\n\n  indented\ttab \r\n"
                             "你好，世界 — café 😀 [gMASK]<sop><|user|>\nhi<|assistant|> <|endoftext|>";

static void encode_decode(const mtok_tokenizer *t, const char *s, size_t n, int special) {
    mtok_ids ids = {0};
    if (mtok_tokenize(t, s, n, special, &ids) == 0) {
        size_t len;
        free(mtok_detokenize(t, ids.v, ids.n, &len));
    }
    mtok_ids_free(&ids);
}

void fz_exercise_tokenizer(const mtok_tokenizer *t, const uint8_t *text, size_t n) {
    const int64_t nv = mtok_tokenizer_n_vocab(t);
    const size_t cap = mtok_tokenizer_max_token_len(t) + 8;
    char *out = malloc(cap);
    if (!out) abort();
    mtok_decoder d = {0};
    /* every id of a small vocabulary, the ends and a stride of a large one, and ids just outside */
    const int64_t step = nv > 4096 ? nv / 2048 : 1;
    for (int64_t id = -2; id < nv + 2; id += (id >= 0 && id + step < nv - 2) ? step : 1) {
        size_t len;
        const char *b = mtok_token_bytes(t, (int32_t)id, &len);
        if (b && len) (void)*(volatile const char *)(b + len - 1);
        (void)mtok_token_is_special(t, (int32_t)id);
        size_t w = mtok_decode_next(t, &d, (int32_t)id, out, cap);
        if (w > cap) abort(); /* the documented bound (mtok.h) */
    }
    mtok_decode_flush(&d, out, cap);
    free(out);
    (void)mtok_token_special(t, "[gMASK]");
    (void)mtok_token_special(t, "<|assistant|>");
    encode_decode(t, SAMPLE, sizeof SAMPLE - 1, 0);
    encode_decode(t, SAMPLE, sizeof SAMPLE - 1, 1);
    if (n > 512) n = 512;
    encode_decode(t, (const char *)text, n, 0);
    encode_decode(t, (const char *)text, n, 1);
}
