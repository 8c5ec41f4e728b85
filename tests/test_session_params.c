/* test_session_params.c — mtok_session_create refuses chunk, thread and context values that would
 * wrap a scratch size or crash the OpenMP runtime before it allocates anything (issue 16: --chunk 2^62
 * corrupted the heap, --threads 100000 died in libgomp). The command line checks its own ranges; this
 * is the library's guard for every other caller. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/mtok.h"
#include "tests/check.h"

static void expect_refused(const mtok_model *m, mtok_session_params p, const char *what) {
    mtok_session *s = NULL;
    int rc = mtok_session_create(m, &p, &s);
    CHECK(rc == MTOK_EUSAGE && !s && strstr(mtok_errmsg(), "out of range"), "%s: rc %d, %s", what, rc,
          mtok_errmsg());
    mtok_session_free(s);
}

int main(int argc, char **argv) {
    if (argc < 2) return 1;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/data/models/g2-chatglm", argv[1]);
    mtok_set_log_level(0);
    mtok_model *m = NULL;
    if (mtok_model_load(dir, NULL, &m)) {
        fprintf(stderr, "load %s: %s\n", dir, mtok_errmsg());
        return 1;
    }
    expect_refused(m, (mtok_session_params){.prefill_chunk = (int64_t)1 << 62}, "chunk 2^62");
    expect_refused(m, (mtok_session_params){.prefill_chunk = MTOK_MAX_CHUNK + 1}, "chunk past the limit");
    expect_refused(m, (mtok_session_params){.threads = 100000}, "threads 100000");
    expect_refused(m, (mtok_session_params){.ctx = INT64_MAX}, "ctx 2^63-1");
    /* the limits themselves are accepted where the memory allows (a chunk of 4096 is small here) */
    mtok_session *s = NULL;
    int rc = mtok_session_create(m, &(mtok_session_params){.prefill_chunk = 4096, .threads = 2}, &s);
    CHECK(rc == 0 && s, "chunk 4096, 2 threads: %s", mtok_errmsg());
    mtok_session_free(s);
    mtok_model_free(m);
    if (!check_failures) printf("session params: all checks passed\n");
    return check_failures != 0;
}
