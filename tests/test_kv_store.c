/* test_kv_store.c — the tiered KV store on its own: spill and read-back give back exactly the bytes
 * written (both I/O backends, several budgets and block sizes), a rewritten block after a truncate,
 * and every failure path through the fault-injecting tier: corrupt block (checksum message with
 * layer, block, file, offset), transient and persistent EIO and short reads (retried once), ENOSPC
 * on reservation (clean error, cache still usable for what it holds), io_uring unavailable (thread
 * pool fallback, reported), the window policy dropping blocks outside sinks + window, and the host
 * hot tier's method table (budget, staging slots, memory space) on its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/mtok.h"
#include "kernels/kernels.h"
#include "kvstore/kvstore.h"
#include "kvstore/kvtier.h"

static int fails;
#define CHECK(c, ...)                                                                  \
    do {                                                                               \
        if (!(c)) {                                                                    \
            fails++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #c);               \
            fprintf(stderr, __VA_ARGS__);                                              \
            fputc('\n', stderr);                                                       \
        }                                                                              \
    } while (0)

enum { L = 2, G = 2, D = 32, ROW = G * D };
static char dir[256];

/* deterministic K/V value of (layer, pos, j, is_v) */
static float val(int64_t l, int64_t p, int64_t j, int v) {
    uint32_t x = (uint32_t)(l * 1000003 + p * 7919 + j * 31 + v * 17);
    x ^= x >> 13, x *= 0x5bd1e995u, x ^= x >> 15;
    return (float)(x % 20001) / 1000.0f - 10.0f;
}

static kvs_params params(int64_t B, uint64_t budget, kvs_io_kind io, const char *fault) {
    kvs_params p = {.n_layers = L, .n_kv_groups = G, .head_dim = D, .ctx = 8192, .block_tokens = B,
                    .budget = budget, .dir = dir, .io = io, .sinks = 4};
    if (fault) kvs_fault_parse(fault, &p.fault);
    return p;
}

/* writes positions [from, to) of every layer in chunks of `chunk` */
static int fill(kvs_cache *c, int64_t from, int64_t to, int64_t chunk) {
    float *k = malloc(sizeof(float) * ROW * chunk), *v = malloc(sizeof(float) * ROW * chunk);
    int rc = 0;
    for (int64_t p = from; p < to && !rc; p += chunk) {
        int64_t n = to - p < chunk ? to - p : chunk;
        for (int64_t l = 0; l < L && !rc; l++) {
            for (int64_t t = 0; t < n; t++)
                for (int64_t j = 0; j < ROW; j++) k[t * ROW + j] = val(l, p + t, j, 0), v[t * ROW + j] = val(l, p + t, j, 1);
            rc = kvs_write(c, l, p, n, k, v, ROW);
        }
    }
    free(k), free(v);
    return rc;
}

/* streams every layer (as attention does, planning layer l+1 ahead) and checks each row's bytes;
 * returns the first error code, *rows_seen the rows visited. */
static int check_stream(kvs_cache *c, int64_t n_tok, int64_t q_pos0, int64_t *rows_seen, int *bad) {
    kvs_block seg[8];
    *rows_seen = 0;
    *bad = 0;
    int rc = kvs_plan(c, 0, n_tok, q_pos0);
    for (int64_t l = 0; l < L && !rc; l++) {
        if (l + 1 < L && (rc = kvs_plan(c, l + 1, n_tok, q_pos0))) break;
        for (;;) {
            int n = 0;
            if ((rc = kvs_stream_next(c, l, seg, 8, &n)) || !n) break;
            for (int i = 0; i < n; i++)
                for (int64_t r = 0; r < seg[i].n; r++) {
                    int64_t p = seg[i].pos0 + r;
                    /* K and V in rows, or (blocks of 16k) per group, K in the kernel's 16-key panels */
                    CHECK(seg[i].k_panels == (kvs_block_tokens(c) % 16 == 0), "K layout flag");
                    CHECK(seg[i].mem == MTOK_MEM_HOST, "memory space %d of a block from the host tier", seg[i].mem);
                    for (int64_t j = 0; j < ROW; j++)
                        if (seg[i].k[seg[i].k_panels ? j / D * kvs_block_tokens(c) * D + MK_KPANEL_AT(r, j % D, D)
                                                     : r * ROW + j] != mk_f32_to_bf16(val(l, p, j, 0)) ||
                            seg[i].v[seg[i].k_panels ? j / D * kvs_block_tokens(c) * D + r * D + j % D : r * ROW + j] !=
                                mk_f32_to_bf16(val(l, p, j, 1)))
                            (*bad)++;
                    (*rows_seen)++;
                }
        }
    }
    if (rc) kvs_truncate(c, kvs_tokens(c)); /* as mtok_forward does after a failure */
    return rc;
}

static void test_roundtrip(kvs_io_kind io, int64_t B, uint64_t budget, int64_t n_tok, int64_t chunk) {
    kvs_cache *c = NULL;
    kvs_params p = params(B, budget, io, NULL);
    int rc = kvs_create(&p, &c);
    CHECK(rc == 0, "create: %s", mtok_errmsg());
    if (rc) return;
    CHECK(fill(c, 0, n_tok, chunk) == 0, "fill: %s", mtok_errmsg());
    int64_t rows;
    int bad;
    for (int pass = 0; pass < 2; pass++) { /* every read is verified, twice over */
        rc = check_stream(c, n_tok, n_tok - 1, &rows, &bad);
        CHECK(rc == 0 && bad == 0 && rows == L * n_tok, "io %d B %lld budget %llu: rc %d bad %d rows %lld (%s)", io,
              (long long)B, (unsigned long long)budget, rc, bad, (long long)rows, mtok_errmsg());
    }
    kvs_stats st;
    kvs_get_stats(c, &st);
    if (budget) {
        CHECK(st.spill_writes > 0 && st.spill_reads > 0 && st.cold_bytes > 0, "nothing spilled (writes %llu)",
              (unsigned long long)st.spill_writes);
        CHECK(st.hot_bytes <= budget, "hot bytes %llu over the budget %llu", (unsigned long long)st.hot_bytes,
              (unsigned long long)budget);
    }
    /* truncate into the middle of a spilled block and rewrite from there: the block is loaded back,
     * patched, and spilled again with a fresh checksum */
    int64_t cut = n_tok / 2 + 3;
    CHECK(kvs_truncate(c, cut) == 0 && kvs_tokens(c) == cut, "truncate");
    CHECK(fill(c, cut, n_tok, chunk) == 0, "refill: %s", mtok_errmsg());
    rc = check_stream(c, n_tok, n_tok - 1, &rows, &bad);
    CHECK(rc == 0 && bad == 0 && rows == L * n_tok, "after truncate+rewrite: rc %d bad %d rows %lld (%s)", rc, bad,
          (long long)rows, mtok_errmsg());
    /* kvs_read_block (used by save) sees the same bytes, hot or cold */
    uint16_t *blk = malloc(2 * sizeof(uint16_t) * (size_t)(B * ROW));
    int64_t n;
    for (int64_t b = 0; b * B < n_tok; b += 3) {
        rc = kvs_read_block(c, 1, b, blk, &n);
        CHECK(rc == 0 && blk[1] == mk_f32_to_bf16(val(1, b * B, 1, 0)) &&
                  blk[B * ROW + 1] == mk_f32_to_bf16(val(1, b * B, 1, 1)), "read_block %lld", (long long)b);
    }
    free(blk);
    kvs_free(c);
}

static void expect_fault(kvs_io_kind io, const char *fault, int want_rc, const char *const *want_msg) {
    kvs_cache *c = NULL;
    kvs_params p = params(16, 40 * 4096, io, fault);
    int rc = kvs_create(&p, &c);
    CHECK(rc == 0, "create: %s", mtok_errmsg());
    if (rc) return;
    const int64_t n_tok = 512;
    rc = fill(c, 0, n_tok, 64);
    int64_t rows = 0;
    int bad = 0;
    if (!rc) rc = check_stream(c, n_tok, n_tok - 1, &rows, &bad);
    const char *msg = mtok_errmsg();
    CHECK(rc == want_rc, "fault %s (io %d): rc %d, want %d (%s)", fault, io, rc, want_rc, msg);
    for (int i = 0; want_msg && want_msg[i]; i++)
        CHECK(strstr(msg, want_msg[i]), "fault %s: message lacks '%s': %s", fault, want_msg[i], msg);
    if (rc == 0) CHECK(bad == 0 && rows == L * n_tok, "fault %s: data wrong after a retry (bad %d)", fault, bad);
    if (rc) { /* the cache is still consistent: what it holds streams back intact (no fault left) */
        int64_t held = kvs_tokens(c);
        if (strstr(fault, "enospc")) {
            CHECK(held < n_tok, "enospc: expected a short cache, holds %lld", (long long)held);
        }
    }
    kvs_free(c);
}

static void test_backends(void) {
    kvs_cache *c = NULL;
    kvs_stats st;
    kvs_params p = params(16, 40 * 4096, KVS_IO_AUTO, "nouring");
    CHECK(kvs_create(&p, &c) == 0, "create nouring: %s", mtok_errmsg());
    if (c) {
        kvs_get_stats(c, &st);
        CHECK(!strcmp(st.io, "threads") && strstr(st.io_note, "fallback") && strstr(st.io_note, "io_uring_queue_init"),
              "nouring: io %s (%s)", st.io, st.io_note);
        kvs_free(c);
    }
    p = params(16, 40 * 4096, KVS_IO_THREADS, NULL);
    CHECK(kvs_create(&p, &c) == 0, "create threads");
    if (c) {
        kvs_get_stats(c, &st);
        CHECK(!strcmp(st.io, "threads") && strstr(st.io_note, "forced"), "threads: %s (%s)", st.io, st.io_note);
        kvs_free(c);
    }
    p = params(16, 0, KVS_IO_AUTO, NULL);
    CHECK(kvs_create(&p, &c) == 0, "create unlimited");
    if (c) {
        kvs_get_stats(c, &st);
        CHECK(!strcmp(st.io, "none"), "unlimited: %s", st.io);
        kvs_free(c);
    }
    char desc[256];
    kvs_io_describe(KVS_IO_THREADS, desc, sizeof desc);
    CHECK(strstr(desc, "threads"), "describe threads: %s", desc);
    /* a budget that cannot hold sinks + 2 blocks per layer is refused up front */
    p = params(16, 4096 * 3, KVS_IO_AUTO, NULL);
    CHECK(kvs_create(&p, &c) == MTOK_EUSAGE && strstr(mtok_errmsg(), "too small"), "tiny budget: %s", mtok_errmsg());
}

static void test_window(void) {
    kvs_cache *c = NULL;
    kvs_params p = params(16, 40 * 4096, KVS_IO_AUTO, NULL);
    p.policy = KVS_POLICY_WINDOW;
    p.sinks = 16;
    p.window = 128;
    CHECK(kvs_create(&p, &c) == 0, "create window: %s", mtok_errmsg());
    if (!c) return;
    const int64_t n_tok = 1024;
    CHECK(fill(c, 0, n_tok, 64) == 0, "fill window: %s", mtok_errmsg());
    int64_t rows;
    int bad;
    int rc = check_stream(c, n_tok, n_tok - 1, &rows, &bad);
    /* visited: the sink block + blocks ending after position n_tok-1-128 */
    int64_t want = L * (16 + (n_tok - (n_tok - 1 - 128) / 16 * 16));
    CHECK(rc == 0 && bad == 0 && rows == want, "window: rc %d bad %d rows %lld want %lld", rc, bad, (long long)rows,
          (long long)want);
    kvs_stats st;
    kvs_get_stats(c, &st);
    CHECK(st.dropped > 0, "window policy dropped nothing");
    kvs_free(c);
}

/* Parameters whose sizes would overflow, divide by a wrapped zero or walk off the block table are
 * refused before anything is allocated (issue 16: --kv-block 2^62 died of SIGFPE, --kv-sinks 2^63-1
 * with a budget of SIGSEGV); a cold-tier directory that is missing or not a directory is the user's
 * input (MTOK_EINPUT, exit 2), not a resource failure. */
static void test_params(void) {
    kvs_cache *c = NULL;
    kvs_params p = params((int64_t)1 << 62, 1 << 20, KVS_IO_AUTO, NULL);
    CHECK(kvs_create(&p, &c) == MTOK_EUSAGE && strstr(mtok_errmsg(), "--kv-block") && !c, "block 2^62: %s",
          mtok_errmsg());
    p = params(16, 1 << 20, KVS_IO_AUTO, NULL);
    p.sinks = INT64_MAX;
    CHECK(kvs_create(&p, &c) == MTOK_EUSAGE && strstr(mtok_errmsg(), "--kv-sinks") && !c, "sinks 2^63-1: %s",
          mtok_errmsg());
    p = params(16, 1 << 20, KVS_IO_AUTO, NULL);
    p.ctx = (int64_t)1 << 62;
    CHECK(kvs_create(&p, &c) == MTOK_EUSAGE && strstr(mtok_errmsg(), "too large") && !c, "ctx 2^62: %s",
          mtok_errmsg());
    p = params(16, 1 << 20, KVS_IO_AUTO, NULL);
    p.head_dim = (int64_t)1 << 40;
    CHECK(kvs_create(&p, &c) == MTOK_EUSAGE && !c, "head_dim 2^40: %s", mtok_errmsg());
    /* sinks longer than the context: every block is a sink, nothing breaks */
    p = params(16, 1 << 20, KVS_IO_AUTO, NULL);
    p.sinks = (int64_t)1 << 30;
    int rc = kvs_create(&p, &c);
    CHECK(rc == MTOK_EUSAGE && strstr(mtok_errmsg(), "too small"), "sinks 2^30 with a small budget: %s",
          mtok_errmsg());
    kvs_free(c), c = NULL;
    p = params(16, 1 << 20, KVS_IO_AUTO, NULL);
    p.dir = "/nonexistent-mtok-dir";
    CHECK(kvs_create(&p, &c) == MTOK_EINPUT && strstr(mtok_errmsg(), "--kv-dir") && !c, "missing dir: %s",
          mtok_errmsg());
    p.dir = "/dev/null";
    CHECK(kvs_create(&p, &c) == MTOK_EINPUT && strstr(mtok_errmsg(), "Not a directory") && !c, "not a dir: %s",
          mtok_errmsg());
}

/* The host hot tier through kvs_hot_ops: a budget of n slots hands out exactly n distinct slots,
 * takes them back, keeps its staging slots apart and inside the registered region; unlimited mode
 * grows past one chunk. */
static void test_hot_tier(void) {
    const size_t slot = 3 * 4096;
    kvs_hot *h = NULL;
    CHECK(kvs_hot_open(&(kvs_hot_params){.mem = MTOK_MEM_DEVICE, .slot_bytes = slot, .slots = 4}, &h) ==
              MTOK_EINTERNAL && !h, "a device tier is not implemented yet");
    CHECK(!kvs_hot_open(&(kvs_hot_params){.mem = MTOK_MEM_HOST, .slot_bytes = slot, .slots = 5, .n_stage = 3}, &h),
          "open: %s", mtok_errmsg());
    if (!h) return;
    CHECK(h->ops->version == KVS_HOT_VERSION && h->mem == MTOK_MEM_HOST && h->cap == 5 && h->region &&
          h->region_bytes == 8 * slot, "budgeted host tier: version %d cap %lld region %zu", h->ops->version,
          (long long)h->cap, h->region_bytes);
    char *s[6] = {0}, *lo = h->region, *hi = lo + h->region_bytes;
    for (int i = 0; i < 5; i++) {
        s[i] = h->ops->alloc(h);
        CHECK(s[i] && s[i] >= lo && s[i] + slot <= hi && (size_t)(s[i] - lo) % slot == 0, "slot %d", i);
        CHECK(h->ops->map(h, s[i]) == s[i], "host slots are their own host address");
        for (int j = 0; j < i; j++) CHECK(s[i] != s[j], "slots %d and %d are one", i, j);
        memset(s[i], i, slot); /* writable */
    }
    CHECK(h->used == 5 && !h->ops->alloc(h), "the budget of 5 slots is not enforced (used %lld)", (long long)h->used);
    for (int i = 0; i < 3; i++) {
        char *st = h->ops->stage(h, i);
        CHECK(st >= lo + 5 * slot && st + slot <= hi, "staging slot %d is outside the slots' range", i);
    }
    h->ops->release(h, s[2]);
    CHECK(h->used == 4 && h->ops->alloc(h) == s[2], "a released slot comes back");
    h->ops->close(h);

    h = NULL;
    CHECK(!kvs_hot_open(&(kvs_hot_params){.mem = MTOK_MEM_HOST, .slot_bytes = slot, .n_stage = 1}, &h), "open: %s",
          mtok_errmsg());
    if (!h) return;
    CHECK(h->cap == INT64_MAX && !h->region && h->ops->stage(h, 0), "unlimited host tier");
    int64_t n = 0;
    for (; n < 2000 && h->ops->alloc(h); n++) {}
    CHECK(n == 2000 && h->used == 2000 && h->mapped >= 2000 * slot, "unlimited tier grew to %lld slots", (long long)n);
    h->ops->close(h);
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    snprintf(dir, sizeof dir, "/tmp/mtok-kvtest-%d", (int)getpid());
    char cmd[512];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd)) return 1;
    mtok_set_log_level(0);

    test_roundtrip(KVS_IO_AUTO, 16, 0, 700, 64);           /* all in RAM */
    test_roundtrip(KVS_IO_AUTO, 16, 12 * 4096, 2100, 256); /* ~3% of the KV hot, uring */
    test_roundtrip(KVS_IO_THREADS, 16, 12 * 4096, 2100, 7);
    test_roundtrip(KVS_IO_AUTO, 48, 64 * 16384, 3000, 100); /* block bytes not a multiple of 4 KiB */
    test_roundtrip(KVS_IO_THREADS, 1, 200 * 4096, 500, 33);

    static const char *const corrupt_msg[] = {"checksum mismatch", "layer ", "block ", "offset ", dir, NULL};
    static const char *const twice_msg[] = {"failed twice", "offset", dir, NULL};
    static const char *const enospc_msg[] = {"cannot reserve", "No space left", dir, NULL};
    for (int io = KVS_IO_AUTO; io <= KVS_IO_THREADS; io += 2) {
        expect_fault((kvs_io_kind)io, "corrupt:5", MTOK_ERESOURCE, corrupt_msg);
        expect_fault((kvs_io_kind)io, "eio:3:1", 0, NULL); /* transient: the retry succeeds */
        expect_fault((kvs_io_kind)io, "eio:3:2", MTOK_ERESOURCE, twice_msg);
        expect_fault((kvs_io_kind)io, "short:2:1", 0, NULL);
        expect_fault((kvs_io_kind)io, "short:2:2", MTOK_ERESOURCE, twice_msg);
        expect_fault((kvs_io_kind)io, "enospc:1", MTOK_ERESOURCE, enospc_msg);
    }
    test_backends();
    test_window();
    test_params();
    test_hot_tier();

    snprintf(cmd, sizeof cmd, "rmdir %s", dir); /* the cold files are unlinked at open: the dir is empty */
    CHECK(system(cmd) == 0, "cold-tier files left behind in %s", dir);
    if (fails) fprintf(stderr, "%d checks failed\n", fails);
    else printf("kv store: all checks passed\n");
    return fails ? 1 : 0;
}
