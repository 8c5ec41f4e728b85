/* test_kv_file_hostile.c — saved KV files that lie and saves that fail (issue 16, findings 2, 7, 10):
 *  - a write that fails (ENOSPC, EIO, a short write then ENOSPC, fsync EIO, the file size limit) at
 *    ANY write of a save fails the save with MTOK_ERESOURCE, removes the temp and leaves the previous
 *    file byte for byte (before the fix a failure in any layer but the last was forgotten and the
 *    file with a hole renamed over the good one);
 *  - headers whose meta checksum was recomputed (anyone can) but whose counts and offsets lie:
 *    n_tokens 2^63 with sizes that wrap to a consistent-looking file (loaded as position INT64_MIN
 *    before), offsets past the file, a sparse file claiming a 1 GiB header, block counts, flags,
 *    header_bytes (said "version 2 is not supported" before), token ids outside the vocabulary
 *    (accepted before) — all refused with MTOK_EINPUT naming the file, the session left empty;
 *  - a FIFO or a directory given to load is refused without blocking (open() waited forever before);
 *  - PATH.tmp.PID left by a killed save is removed by the next save when PID is gone, and kept when
 *    that process is alive.
 * Write faults come from this executable's own pwrite() and fsync(): libmtok is linked statically,
 * so these definitions replace libc's for its calls too; they act only on an armed fault and only
 * on descriptors of a "*.kv.tmp.*" file. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/mtok.h"
#include "tests/check.h"

/* ---- write faults ---- */
static int tmp_writes;  /* pwrite calls on a temp since the last arm() */
static int fault_at;    /* the 1-based call that fails (0: none) */
static int fault_errno; /* with this errno */
static int fault_short; /* that call writes half its bytes; the next one fails with ENOSPC */
static int fault_fsync; /* fsync of a temp fails with EIO */

static int is_tmp(int fd) {
    char link[64], target[4200];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return strstr(target, ".kv.tmp.") != NULL;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    if (is_tmp(fd) && ++tmp_writes == fault_at) {
        if (fault_short && n > 1) {
            fault_short = 0;
            fault_at++, fault_errno = ENOSPC;
            return (ssize_t)syscall(SYS_pwrite64, fd, buf, n / 2, off);
        }
        errno = fault_errno;
        return -1;
    }
    return (ssize_t)syscall(SYS_pwrite64, fd, buf, n, off);
}

int fsync(int fd) {
    if (fault_fsync && is_tmp(fd)) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fsync, fd);
}

static void arm(int at, int err, int shrt, int fs) {
    tmp_writes = 0, fault_at = at, fault_errno = err, fault_short = shrt, fault_fsync = fs;
}

/* ---- files ---- */
typedef struct { /* kvstore/kvfile.c's header, to forge */
    char magic[8];
    uint32_t version, header_bytes;
    uint64_t fingerprint, n_tokens;
    uint32_t block_tokens, dtype, n_layers, n_kv_groups, head_dim, flags;
    uint64_t n_blocks, block_bytes, ids_off, sums_off, chain_off, data_off, file_bytes, meta_sum, ksum_sum;
} hdr;
_Static_assert(sizeof(hdr) == 128, "the header is 128 bytes");

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    *len = b && fread(b, 1, (size_t)n, f) == (size_t)n ? (size_t)n : 0;
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n, f) != n) fprintf(stderr, "cannot write %s\n", path), exit(1);
    fclose(f);
}

/* Recomputes meta_sum over [0, data_off) as a forger would (over what the file has of it). */
static void reseal(uint8_t *b, size_t len) {
    hdr h;
    memcpy(&h, b, sizeof h);
    size_t n = h.data_off <= len ? (size_t)h.data_off : len;
    h.meta_sum = 0;
    memcpy(b, &h, sizeof h);
    h.meta_sum = XXH3_64bits(b, n);
    memcpy(b, &h, sizeof h);
}

static int temps_left(const char *dir) {
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q '\\.tmp\\.'", dir);
    return system(cmd) == 0;
}

static char dir[512], good[600], scratch[600];

/* Loads a forged file; it must be refused with MTOK_EINPUT naming it and `want`, session empty. */
static void expect_refused(mtok_session *s, const uint8_t *b, size_t len, const char *want, const char *what,
                           int with_prompt) {
    spit(scratch, b, len);
    int64_t n = -1;
    int rc = mtok_session_load_kv(s, scratch, NULL, 0, &n);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), scratch) && strstr(mtok_errmsg(), want) &&
              mtok_session_pos(s) == 0,
          "%s: rc %d, pos %lld, '%s' (want '%s')", what, rc, (long long)mtok_session_pos(s), mtok_errmsg(), want);
    if (!with_prompt) return; /* a prompt that matches no saved block loads nothing: nothing to refuse */
    int32_t prompt[4] = {1, 2, 3, 4};
    rc = mtok_session_load_kv(s, scratch, prompt, 4, &n);
    CHECK(rc == MTOK_EINPUT && mtok_session_pos(s) == 0, "%s (with a prompt): rc %d, %s", what, rc, mtok_errmsg());
}

static void save_faults(mtok_session *s, const uint8_t *prev, size_t prev_len) {
    char count[600];
    snprintf(count, sizeof count, "%s/count.kv", dir);
    arm(0, 0, 0, 0);
    CHECK(!mtok_session_save_kv(s, count), "count save: %s", mtok_errmsg());
    const int writes = tmp_writes;
    CHECK(writes >= 4, "the pwrite of this test was not reached by the save (%d calls)", writes);
    struct {
        int err, shrt, fs;
        const char *want;
    } kinds[] = {{ENOSPC, 0, 0, "No space left"}, {EIO, 0, 0, "Input/output error"}, {EIO, 1, 0, "No space left"}};
    for (int k = 0; k < 3; k++)
        for (int at = 1; at <= writes; at++) {
            arm(at, kinds[k].err, kinds[k].shrt, 0);
            int rc = mtok_session_save_kv(s, good);
            size_t len = 0;
            uint8_t *now = slurp(good, &len);
            CHECK(rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), good) && strstr(mtok_errmsg(), kinds[k].want),
                  "write %d of %d fails (%s%s): rc %d, %s", at, writes, kinds[k].want, kinds[k].shrt ? ", short" : "",
                  rc, mtok_errmsg());
            CHECK(now && len == prev_len && !memcmp(now, prev, len), "write %d failed: the previous file changed", at);
            CHECK(!temps_left(dir), "write %d failed: a temp file was left", at);
            free(now);
        }
    arm(0, 0, 0, 1);
    int rc = mtok_session_save_kv(s, good);
    CHECK(rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), "syncing") && !temps_left(dir), "fsync EIO: rc %d, %s", rc,
          mtok_errmsg());
    arm(0, 0, 0, 0);
    /* the file size limit: EFBIG is a resource limit too */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 8192;
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    rc = mtok_session_save_kv(s, good);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(rc == MTOK_ERESOURCE && strstr(mtok_errmsg(), "File too large") && !temps_left(dir), "RLIMIT_FSIZE: rc %d, %s",
          rc, mtok_errmsg());
    size_t len = 0;
    uint8_t *now = slurp(good, &len);
    CHECK(now && len == prev_len && !memcmp(now, prev, len), "the previous file survived every failed save");
    free(now);
}

static void stale_temps(mtok_session *s) {
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    pid_t live = fork();
    if (live == 0) {
        pause();
        _exit(0);
    }
    char f_dead[700], f_live[700], f_other[700], f_name[700];
    snprintf(f_dead, sizeof f_dead, "%s.tmp.%d", good, (int)dead);
    snprintf(f_live, sizeof f_live, "%s.tmp.%d", good, (int)live);
    snprintf(f_other, sizeof f_other, "%s/other.kv.tmp.%d", dir, (int)dead);
    snprintf(f_name, sizeof f_name, "%s.tmp.12x", good);
    const char *all[] = {f_dead, f_live, f_other, f_name};
    for (int i = 0; i < 4; i++) spit(all[i], "x", 1);
    CHECK(!mtok_session_save_kv(s, good), "save over leftovers: %s", mtok_errmsg());
    CHECK(access(f_dead, F_OK) != 0, "the temp of a dead process (%d) was not removed", (int)dead);
    CHECK(access(f_live, F_OK) == 0, "the temp of a live process was removed");
    CHECK(access(f_other, F_OK) == 0 && access(f_name, F_OK) == 0, "a temp of another file, or not PID-named, was "
          "removed");
    kill(live, SIGKILL);
    waitpid(live, NULL, 0);
    for (int i = 0; i < 4; i++) unlink(all[i]);
}

int main(int argc, char **argv) {
    if (argc < 2) return 1;
    char model_dir[1024], tmpl[] = "/tmp/mtok-kvhostile-XXXXXX", cache[600];
    snprintf(model_dir, sizeof model_dir, "%s/tests/data/models/g2-chatglm", argv[1]);
    if (!mkdtemp(tmpl)) return 1;
    snprintf(dir, sizeof dir, "%s", tmpl);
    snprintf(good, sizeof good, "%s/doc.kv", dir);
    snprintf(scratch, sizeof scratch, "%s/forged.kv", dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    setenv("XDG_CACHE_HOME", cache, 1); /* the identity cache stays in the test's folder */
    mtok_set_log_level(0);
    mtok_model *m = NULL;
    mtok_session *s = NULL;
    if (mtok_model_load(model_dir, NULL, &m) ||
        mtok_session_create(m, &(mtok_session_params){.ctx = 256, .kv_block = 32, .threads = 2}, &s)) {
        fprintf(stderr, "setup: %s\n", mtok_errmsg());
        return 1;
    }
    const int64_t vocab = mtok_model_config(m)->vocab, n = 100;
    int32_t ids[128];
    for (int i = 0; i < 128; i++) ids[i] = (int32_t)((i * 37 + 5) % vocab);
    CHECK(!mtok_forward(s, ids, n, NULL), "forward: %s", mtok_errmsg());
    CHECK(!mtok_session_save_kv(s, good), "save: %s", mtok_errmsg());
    size_t len = 0;
    uint8_t *blob = slurp(good, &len), *b = malloc(len);
    hdr h0;
    memcpy(&h0, blob, sizeof h0);

    /* ---- saves that fail ---- */
    CHECK(!mtok_forward(s, ids + n, 20, NULL), "forward: %s", mtok_errmsg()); /* new content to save */
    save_faults(s, blob, len);
    stale_temps(s);

    /* ---- forged headers ---- */
    mtok_session *small = NULL;
    mtok_session_create(m, &(mtok_session_params){.ctx = 64, .kv_block = 32, .threads = 2}, &small);
    hdr h;
#define FORGE(edit, want, what)            \
    do {                                   \
        memcpy(b, blob, len);              \
        memcpy(&h, b, sizeof h);           \
        edit;                              \
        memcpy(b, &h, sizeof h);           \
        reseal(b, len);                    \
        expect_refused(s, b, len, want, what, 1); \
    } while (0)
    FORGE(h.header_bytes = 64, "header_bytes 64, expected 128", "header_bytes 64");
    FORGE(h.version = 9, "version 9 is not supported", "version 9");
    FORGE(h.n_tokens = (uint64_t)1 << 63, "n_tokens is", "n_tokens 2^63");
    FORGE(h.n_tokens = 0, "n_tokens is 0", "n_tokens 0");
    FORGE(h.n_tokens += 1, "expected", "one token more than the ids");
    FORGE(h.block_tokens = 0, "block_tokens is 0", "block_tokens 0");
    FORGE(h.n_blocks += 1, "n_blocks is", "n_blocks + 1");
    FORGE(h.data_off = (uint64_t)1 << 35, "data_off is", "data_off 32 GiB");
    FORGE(h.sums_off -= 8, "sums_off is", "sums_off overlapping the ids");
    FORGE(h.flags = 6, "unknown flags", "flags 6");
    FORGE(h.n_layers = 3, "chain_off is", "3 layers");
    FORGE((h.n_kv_groups = 1, h.head_dim *= 2), "does not match this model", "1 group x 64"); /* same sizes */
    {
        /* n_tokens 2^63 in blocks of 1 token: n*4, n*16 and every block size wrap to 0 mod 2^64, so a
         * 128-byte file "holds" 2^63 tokens; it used to load as session position INT64_MIN */
        hdr w = h0;
        w.n_tokens = w.n_blocks = (uint64_t)1 << 63;
        w.block_tokens = 1;
        w.flags = 0;
        w.block_bytes = 4ull * w.n_kv_groups * w.head_dim;
        w.ids_off = w.sums_off = w.chain_off = w.data_off = w.file_bytes = 128;
        w.ksum_sum = 0;
        uint8_t raw[128];
        memcpy(raw, &w, sizeof w);
        reseal(raw, sizeof raw);
        expect_refused(s, raw, sizeof raw, "n_tokens is", "n_tokens 2^63 with wrapped sizes", 1);
    }
    {
        /* a sparse 1 GiB file whose header claims a 1 GiB meta section: refused before it is read */
        memcpy(b, blob, len);
        memcpy(&h, b, sizeof h);
        h.file_bytes = (uint64_t)1 << 30;
        h.data_off = h.file_bytes - 4096;
        memcpy(b, &h, sizeof h);
        reseal(b, len);
        spit(scratch, b, len);
        CHECK(!truncate(scratch, (off_t)h.file_bytes), "truncate");
        int64_t nl;
        int rc = mtok_session_load_kv(s, scratch, NULL, 0, &nl);
        CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "data_off is"), "sparse 1 GiB header: rc %d, %s", rc,
              mtok_errmsg());
        unlink(scratch);
    }
    /* token ids the model does not have (the ids sit at offset 128) */
    for (int k = 0; k < 2; k++) {
        memcpy(b, blob, len);
        int32_t bad = k ? -1 : (int32_t)vocab + 7;
        memcpy(b + 128 + 5 * 4, &bad, 4);
        reseal(b, len);
        expect_refused(s, b, len, "outside the vocabulary", k ? "token id -1" : "token id vocab+7", 0);
    }
    /* more tokens than the context holds */
    spit(scratch, blob, len);
    int64_t nl = 0;
    int rc = mtok_session_load_kv(small, scratch, NULL, 0, &nl);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "exceed the context limit") && mtok_session_pos(small) == 0,
          "100 tokens into ctx 64: rc %d, %s", rc, mtok_errmsg());

    /* ---- not regular files: refused at once (alarm: the old open() of a FIFO never returned) ---- */
    char fifo[700];
    snprintf(fifo, sizeof fifo, "%s/pipe.kv", dir);
    CHECK(!mkfifo(fifo, 0600), "mkfifo");
    alarm(30);
    rc = mtok_session_load_kv(s, fifo, NULL, 0, &nl);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "not a regular file") && strstr(mtok_errmsg(), fifo),
          "FIFO: rc %d, %s", rc, mtok_errmsg());
    rc = mtok_session_load_kv(s, dir, NULL, 0, &nl);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "not a regular file"), "directory: rc %d, %s", rc, mtok_errmsg());
    alarm(0);
    unlink(fifo);

    /* ---- and the honest file still loads into the same session ---- */
    spit(scratch, blob, len);
    rc = mtok_session_load_kv(s, scratch, NULL, 0, &nl);
    CHECK(rc == 0 && nl == n && mtok_session_pos(s) == n && !memcmp(mtok_session_tokens(s), ids, (size_t)n * 4),
          "the unforged file loads: rc %d, %lld tokens, %s", rc, (long long)nl, mtok_errmsg());

    free(blob);
    free(b);
    mtok_session_free(small);
    mtok_session_free(s);
    mtok_model_free(m);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    if (!check_failures) printf("kv file hostile: all checks passed\n");
    return check_failures != 0;
}
