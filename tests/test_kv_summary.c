/* test_kv_summary.c — the block key summaries behind the topk policy, at library level:
 *  - every block's summary equals the per-channel min/max of its stored bf16 keys, after writes in
 *    pieces, with blocks spilled to the cold tier, after a truncate into a hot and into a cold block,
 *    and after a rewrite from inside a block;
 *  - kvs_summary_bound is an upper bound of q·k for every key of the block and every query in the box,
 *    and equals Σ_d max(q_d kmin_d, q_d kmax_d) for one query;
 *  - kvs_plan_blocks streams exactly the listed blocks, in order, hot or cold;
 *  - saved files carry the summaries (version 2) and loading installs them; a file without them (saved
 *    by an exact-policy cache, and the same file relabelled version 1) gets them recomputed; a
 *    prefix load recomputes the cut block; another block size recomputes all; a flipped byte in the
 *    summaries is refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/mtok.h"
#include "kernels/kernels.h"
#include "kvstore/kvstore.h"
#include "tests/check.h"

enum { L = 2, G = 2, D = 32, ROW = G * D, CTX = 4096 };
static char dir[256];

static float val(int64_t l, int64_t p, int64_t j, int v, int gen) {
    uint32_t x = (uint32_t)(l * 1000003 + p * 7919 + j * 31 + v * 17 + gen * 104729);
    x ^= x >> 13, x *= 0x5bd1e995u, x ^= x >> 15;
    return (float)(x % 20001) / 1000.0f - 10.0f;
}
static float bf(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static kvs_params params(int64_t B, uint64_t budget, kvs_policy pol) {
    return (kvs_params){.n_layers = L, .n_kv_groups = G, .head_dim = D, .ctx = CTX, .block_tokens = B,
                        .budget = budget, .dir = dir, .policy = pol, .sinks = 4};
}

static int create(kvs_params p, kvs_cache **c) { return kvs_create(&p, c); }

/* writes positions [from, to) of every layer in pieces of `chunk`; gen varies the values */
static int fill(kvs_cache *c, int64_t from, int64_t to, int64_t chunk, int gen) {
    float *k = malloc(sizeof(float) * ROW * chunk), *v = malloc(sizeof(float) * ROW * chunk);
    int rc = 0;
    for (int64_t p = from; p < to && !rc; p += chunk) {
        int64_t n = to - p < chunk ? to - p : chunk;
        for (int64_t l = 0; l < L && !rc; l++) {
            for (int64_t t = 0; t < n; t++)
                for (int64_t j = 0; j < ROW; j++)
                    k[t * ROW + j] = val(l, p + t, j, 0, gen), v[t * ROW + j] = val(l, p + t, j, 1, gen);
            rc = kvs_write(c, l, p, n, k, v, ROW);
        }
    }
    free(k), free(v);
    return rc;
}

/* every block's summary against its stored rows, read back through kvs_read_block */
static int summaries_ok(kvs_cache *c, const char *what) {
    const int64_t B = kvs_block_tokens(c), n = kvs_tokens(c);
    uint16_t *blk = malloc(2 * (size_t)B * ROW * 2), want[2 * ROW];
    int bad = 0;
    for (int64_t l = 0; l < L; l++)
        for (int64_t b = 0; b * B < n; b++) {
            int64_t rows = 0;
            if (kvs_read_block(c, l, b, blk, &rows)) {
                bad++;
                continue;
            }
            memcpy(want, blk, ROW * 2);
            memcpy(want + ROW, blk, ROW * 2);
            for (int64_t r = 1; r < rows; r++)
                for (int64_t j = 0; j < ROW; j++) {
                    const uint16_t x = blk[r * ROW + j];
                    if (bf(x) < bf(want[j])) want[j] = x;
                    if (bf(x) > bf(want[ROW + j])) want[ROW + j] = x;
                }
            const uint16_t *got = kvs_summary(c, l, b);
            if (!got || memcmp(got, want, sizeof want)) bad++;
        }
    CHECK(!bad, "%s: %d block summaries differ from the stored keys", what, bad);
    free(blk);
    return !bad;
}

static void test_maintenance(void) {
    kvs_cache *c;
    /* 40 slots of 4 KiB (block 16 x 64 channels x K,V bf16): most of 1500 tokens spill */
    CHECK(kvs_create(&(kvs_params){0}, &c) != 0, "invalid params refused");
    CHECK(!kvs_create(&(kvs_params){.n_layers = L, .n_kv_groups = G, .head_dim = D, .ctx = CTX, .block_tokens = 16,
                                    .policy = KVS_POLICY_EXACT}, &c), "exact cache: %s", mtok_errmsg());
    fill(c, 0, 100, 7, 0);
    CHECK(kvs_summary(c, 0, 0) == NULL, "an exact-policy cache keeps no summaries");
    kvs_free(c);

    for (int spill = 0; spill < 2; spill++) {
        const char *w = spill ? "spilled" : "in RAM";
        CHECK(!kvs_create(&(kvs_params){.n_layers = L, .n_kv_groups = G, .head_dim = D, .ctx = CTX,
                                        .block_tokens = 16, .budget = spill ? 40 * 4096 : 0, .dir = dir,
                                        .policy = KVS_POLICY_TOPK, .sinks = 4}, &c), "create: %s", mtok_errmsg());
        CHECK(!fill(c, 0, 1500, 37, 0), "fill: %s", mtok_errmsg());
        kvs_stats st;
        kvs_get_stats(c, &st);
        CHECK(!spill || st.cold_bytes > st.hot_bytes, "%s: most blocks cold (hot %llu, cold %llu)", w,
              (unsigned long long)st.hot_bytes, (unsigned long long)st.cold_bytes);
        CHECK(st.summary_bytes == (uint64_t)L * 94 * 2 * ROW * 2, "%s: summary bytes %llu", w,
              (unsigned long long)st.summary_bytes);
        summaries_ok(c, w);
        CHECK(kvs_summary(c, 0, 94) == NULL && kvs_summary(c, 2, 0) == NULL, "no summary past the held tokens");
        /* truncate into the last (hot) block, then into an old (cold when spilled) one; refill */
        CHECK(!kvs_truncate(c, 1490), "truncate: %s", mtok_errmsg());
        summaries_ok(c, "truncate into the last block");
        CHECK(!kvs_truncate(c, 16 * 20 + 5), "truncate: %s", mtok_errmsg());
        summaries_ok(c, "truncate into an old block");
        CHECK(!fill(c, 16 * 20 + 5, 700, 50, 1), "refill: %s", mtok_errmsg());
        summaries_ok(c, "refill after truncate");
        /* a rewrite from inside a block drops the rows after it */
        float k[ROW], v[ROW];
        for (int j = 0; j < ROW; j++) k[j] = v[j] = 0.5f;
        for (int64_t l = 0; l < L; l++) CHECK(!kvs_write(c, l, 650, 1, k, v, ROW), "rewrite: %s", mtok_errmsg());
        CHECK(kvs_tokens(c) == 651, "rewrite keeps %lld tokens", (long long)kvs_tokens(c));
        summaries_ok(c, "rewrite inside a block");
        kvs_free(c);
    }
}

static void test_bound(void) {
    kvs_cache *c;
    CHECK(!kvs_create(&(kvs_params){.n_layers = L, .n_kv_groups = G, .head_dim = D, .ctx = CTX, .block_tokens = 16,
                                    .policy = KVS_POLICY_TOPK}, &c), "create: %s", mtok_errmsg());
    fill(c, 0, 16 * 8, 16, 3);
    uint16_t blk[2 * 16 * ROW];
    float q[2 * D], lo[2 * D], hi[2 * D], out[8], out1[8];
    int bad = 0, loose = 0;
    for (int trial = 0; trial < 20; trial++) {
        for (int j = 0; j < 2 * D; j++) {
            q[j] = val(9, trial, j, 0, 7) / 10;
            const float a = val(9, trial, j, 1, 7) / 10, b = val(9, trial, j, 0, 8) / 10;
            lo[j] = a < b ? a : b, hi[j] = a < b ? b : a;
        }
        for (int64_t l = 0; l < L; l++)
            for (int64_t g = 0; g < G; g++) {
                kvs_summary_bound(c, l, g, 0, 8, q, q, 2, out1);
                kvs_summary_bound(c, l, g, 0, 8, lo, hi, 2, out);
                for (int64_t b = 0; b < 8; b++) {
                    int64_t rows;
                    kvs_read_block(c, l, b, blk, &rows);
                    const uint16_t *s = kvs_summary(c, l, b);
                    double best = -1e30, form = -1e30;
                    for (int h = 0; h < 2; h++) {
                        double f = 0;
                        for (int d = 0; d < D; d++) {
                            const double x = q[h * D + d] * (double)bf(s[g * D + d]);
                            const double y = q[h * D + d] * (double)bf(s[ROW + g * D + d]);
                            f += x > y ? x : y;
                        }
                        form = f > form ? f : form;
                        for (int64_t r = 0; r < rows; r++) {
                            double dot = 0, bdot = 0; /* q itself, and a random point of the box */
                            for (int d = 0; d < D; d++) {
                                const double kk = bf(blk[r * ROW + g * D + d]);
                                const double t = (double)((r * 31 + d * 7 + trial) % 11) / 10;
                                dot += q[h * D + d] * kk;
                                bdot += (lo[h * D + d] + t * (hi[h * D + d] - lo[h * D + d])) * kk;
                            }
                            bad += dot > out1[b] + 1e-3 || bdot > out[b] + 1e-3;
                            best = dot > best ? dot : best;
                        }
                    }
                    bad += !(out1[b] <= out[b] + 1e-3);
                    loose += (out1[b] - form) * (out1[b] - form) > 1e-6 * (1 + form * form);
                }
            }
    }
    CHECK(!bad, "%d keys/queries above their block's bound", bad);
    CHECK(!loose, "%d one-query bounds differ from sum_d max(q kmin, q kmax)", loose);
    kvs_free(c);
}

static void test_plan_blocks(void) {
    kvs_cache *c;
    CHECK(!create(params(16, 40 * 4096, KVS_POLICY_TOPK), &c), "create: %s", mtok_errmsg());
    fill(c, 0, 1000, 64, 0);
    const int64_t want[] = {0, 3, 4, 17, 40, 41, 55, 62};
    uint16_t ref[2 * 16 * ROW];
    for (int64_t l = 0; l < L; l++) {
        CHECK(!kvs_plan_blocks(c, l, want, 8), "plan: %s", mtok_errmsg());
        int got = 0, same = 1;
        for (;;) {
            kvs_block seg[3];
            int n = 0;
            CHECK(!kvs_stream_next(c, l, seg, 3, &n), "stream: %s", mtok_errmsg());
            if (!n) break;
            for (int i = 0; i < n && got < 8; i++, got++) {
                int64_t rows;
                same &= seg[i].pos0 == want[got] * 16 && seg[i].n == (want[got] == 62 ? 8 : 16);
                same &= !kvs_read_block(c, l, want[got], ref, &rows) && seg[i].k_panels;
                for (int64_t r = 0; r < 16; r++) /* grouped: K panels, V rows per group; kvs_read_block gives rows */
                    for (int64_t j = 0; j < ROW; j++)
                        same &= seg[i].k[j / D * 16 * D + MK_KPANEL_AT(r, j % D, D)] == ref[r * ROW + j] &&
                                seg[i].v[j / D * 16 * D + r * D + j % D] == ref[16 * ROW + r * ROW + j];
            }
        }
        CHECK(got == 8 && same, "layer %lld: streamed %d of 8 planned blocks, in order and intact: %d",
              (long long)l, got, same);
    }
    const int64_t bad_order[] = {5, 3};
    CHECK(kvs_plan_blocks(c, 0, bad_order, 2) != 0, "unordered block list refused");
    kvs_free(c);
}

static int set_version1(const char *path) { /* relabels a file without summaries as version 1 */
    FILE *f = fopen(path, "r+b");
    if (!f) return -1;
    uint8_t head[128];
    uint64_t data_off;
    if (fread(head, 1, 128, f) != 128) return fclose(f), -1;
    memcpy(&data_off, head + 96, 8);
    uint8_t *meta = malloc(data_off);
    fseek(f, 0, SEEK_SET);
    if (fread(meta, 1, data_off, f) != data_off) return free(meta), fclose(f), -1;
    const uint32_t v1 = 1;
    memcpy(meta + 8, &v1, 4);
    memset(meta + 112, 0, 8);
    const uint64_t sum = XXH3_64bits(meta, data_off);
    memcpy(meta + 112, &sum, 8);
    fseek(f, 0, SEEK_SET);
    fwrite(meta, 1, 128, f);
    free(meta);
    return fclose(f);
}

static void test_files(void) {
    char path[300], plain[300];
    snprintf(path, sizeof path, "%s/a.kv", dir);
    snprintf(plain, sizeof plain, "%s/plain.kv", dir);
    const int64_t n = 16 * 30 + 9;
    int32_t ids[CTX];
    for (int i = 0; i < CTX; i++) ids[i] = i * 7 % 1000;
    kvs_cache *a, *e, *b;
    CHECK(!create(params(16, 40 * 4096, KVS_POLICY_TOPK), &a), "create: %s", mtok_errmsg());
    CHECK(!create(params(16, 0, KVS_POLICY_EXACT), &e), "create: %s", mtok_errmsg());
    fill(a, 0, n, 100, 0);
    fill(e, 0, n, 100, 0);
    CHECK(!kvs_file_save(a, path, 42, ids, n), "save: %s", mtok_errmsg());
    CHECK(!kvs_file_save(e, plain, 42, ids, n), "save: %s", mtok_errmsg());
    FILE *f = fopen(path, "rb");
    uint32_t ver = 0, flags = 0;
    if (f) {
        fseek(f, 8, SEEK_SET);
        CHECK(fread(&ver, 4, 1, f) == 1, "read");
        fseek(f, 52, SEEK_SET);
        CHECK(fread(&flags, 4, 1, f) == 1, "read");
        fclose(f);
    }
    CHECK(ver == 2 && flags == 1, "topk cache saves version 2 with summaries (version %u, flags %u)", ver, flags);

    struct {
        const char *file;
        int64_t B, budget;
        const int32_t *prompt;
        int64_t n_prompt, want;
        const char *what;
    } cases[] = {
        {path, 16, 40 * 4096, NULL, 0, n, "saved summaries installed"},
        {path, 16, 0, ids, n, n - 1, "prefix load cuts a block"},
        {path, 32, 0, NULL, 0, n, "another block size recomputes"},
        {plain, 16, 40 * 4096, NULL, 0, n, "file without summaries recomputes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(!create(params(cases[i].B, (uint64_t)cases[i].budget, KVS_POLICY_TOPK), &b), "create: %s",
              mtok_errmsg());
        int32_t *got = NULL;
        int64_t nl = 0;
        int rc = kvs_file_load(b, cases[i].file, 42, cases[i].prompt, cases[i].n_prompt, &got, &nl);
        CHECK(!rc && nl == cases[i].want, "%s: load rc %d, %lld tokens: %s", cases[i].what, rc, (long long)nl,
              mtok_errmsg());
        if (!rc) summaries_ok(b, cases[i].what);
        free(got);
        kvs_free(b);
    }
    /* version 1 (the layout before summaries) */
    CHECK(!set_version1(plain), "relabel");
    CHECK(!create(params(16, 0, KVS_POLICY_TOPK), &b), "create");
    int32_t *got = NULL;
    int64_t nl = 0;
    CHECK(!kvs_file_load(b, plain, 42, NULL, 0, &got, &nl) && nl == n, "version 1 file loads: %s", mtok_errmsg());
    summaries_ok(b, "version 1 file recomputed");
    free(got);
    got = NULL;
    /* a flipped byte in the summary section (the file's last bytes) */
    f = fopen(path, "r+b");
    if (f) {
        fseek(f, -3, SEEK_END);
        int ch = fgetc(f);
        fseek(f, -3, SEEK_END);
        fputc(ch ^ 0x10, f);
        fclose(f);
    }
    int rc = kvs_file_load(b, path, 42, NULL, 0, &got, &nl);
    CHECK(rc == MTOK_EINPUT && strstr(mtok_errmsg(), "key summaries"), "corrupt summaries refused: %d %s", rc,
          mtok_errmsg());
    CHECK(kvs_tokens(b) == 0, "a refused load leaves the cache empty");
    free(got);
    kvs_free(b);
    kvs_free(a);
    kvs_free(e);
    unlink(path);
    unlink(plain);
}

int main(int argc, char **argv) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/mtok-kvsum-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    mtok_set_log_level(0);
    test_maintenance();
    test_bound();
    test_plan_blocks();
    test_files();
    rmdir(dir);
    if (check_failures) fprintf(stderr, "%d check(s) failed\n", check_failures);
    else printf("ok\n");
    return check_failures != 0;
}
