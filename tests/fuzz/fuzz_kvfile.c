/* fuzz_kvfile.c — saved KV cache files (--load-kv, kvstore/kvfile.c kvs_file_load) into a cache of
 * the glm4-tiny geometry (2 layers, 2 KV groups x 64).
 *
 * The file's checksums (meta_sum over the header and token list, one per block, one over the key
 * summaries) stop nearly every mutation at the first check, but anyone can recompute them, so the
 * parser must not trust what they cover (issue 16, finding 7). The first input byte is therefore a
 * mode, the rest the file:
 *   bit 0  recompute meta_sum before loading
 *   bit 1  recompute the block checksums and the summaries' checksum (where the offsets allow)
 *   bit 2  pass a prompt: the file's own token ids plus one, one of them (the last input byte picks
 *          which, or none) changed
 *   bit 3  load into a cache that keeps key summaries (topk policy)
 *   bit 4  load into a cache of 32-token blocks (the seeds have 16)
 *   bit 5  load into a cache with a small hot budget, so the load spills to a cold tier
 * The model fingerprint passed is the one the file names (a mismatch is one comparison; the seeds
 * come from a real model). A cache that loads is then read back block by block. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "fuzz_common.h"
#include "../../kvstore/kvstore.h"

/* The header layout of kvstore/kvfile.c (docs/KVSTORE.md "Saved caches"). */
typedef struct {
    char magic[8];
    uint32_t version, header_bytes;
    uint64_t fingerprint, n_tokens;
    uint32_t block_tokens, dtype, n_layers, n_kv_groups, head_dim, flags;
    uint64_t n_blocks, block_bytes, ids_off, sums_off, chain_off, data_off, file_bytes, meta_sum, ksum_sum;
} kvf_header;
_Static_assert(sizeof(kvf_header) == 128, "the kv file header is 128 bytes");

enum { FIX_META = 1, FIX_BLOCKS = 2, PROMPT = 4, TOPK = 8, BLOCK32 = 16, SPILL = 32 };

static kvs_cache *caches[8];
static char *path, *cold_dir;

static kvs_cache *cache_for(int mode) {
    int k = (mode >> 3) & 7;
    if (caches[k]) return caches[k];
    kvs_params p = {.n_layers = 2, .n_kv_groups = 2, .head_dim = 64, .ctx = 1024,
                    .block_tokens = (mode & BLOCK32) ? 32 : 16, .sinks = 4, .window = 64,
                    .policy = (mode & TOPK) ? KVS_POLICY_TOPK : KVS_POLICY_EXACT};
    /* the smallest budget kvs_create takes: 3 hot blocks per layer (sinks + 2), so a file of more
     * than 3 blocks spills while it loads and is read back through the cold tier */
    if (mode & SPILL) p.budget = 6 * (uint64_t)(2 * p.block_tokens * 2 * 64 * 2), p.dir = cold_dir;
    if (kvs_create(&p, &caches[k])) {
        fprintf(stderr, "fuzz harness: kvs_create: %s\n", mtok_errmsg());
        abort();
    }
    return caches[k];
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    path = fz_work("doc.kv");
    /* the cold tier wants O_DIRECT, which tmpfs (the working directory under /dev/shm) refuses */
    const char *t = getenv("TMPDIR");
    cold_dir = strdup(access("/var/tmp", W_OK) == 0 ? "/var/tmp" : t && *t ? t : "/tmp");
    return 0;
}

/* off + n within size, without wrapping */
static int fits(uint64_t off, uint64_t n, uint64_t size) { return off <= size && n <= size - off; }

static void fix_sums(uint8_t *f, size_t size, int mode) {
    if (size < sizeof(kvf_header)) return;
    kvf_header h;
    memcpy(&h, f, sizeof h);
    if ((mode & FIX_BLOCKS) && h.n_layers < 64 && h.n_blocks < (1u << 20) && h.block_bytes &&
        h.block_bytes < (1u << 24)) {
        const uint64_t nsum = (uint64_t)h.n_layers * h.n_blocks;
        for (uint64_t i = 0; i < nsum; i++) {
            uint64_t off = h.data_off + i * h.block_bytes, s;
            if (!fits(off, h.block_bytes, size) || !fits(h.sums_off, (i + 1) * 8, size)) break;
            s = XXH3_64bits(f + off, h.block_bytes);
            memcpy(f + h.sums_off + i * 8, &s, 8);
        }
        const uint64_t sec = nsum * 2 * 2 * (uint64_t)h.n_kv_groups * h.head_dim;
        const uint64_t s0 = h.data_off + nsum * h.block_bytes;
        if (h.n_kv_groups < 4096 && h.head_dim < 4096 && fits(s0, sec, size)) {
            h.ksum_sum = XXH3_64bits(f + s0, sec);
            memcpy(f + offsetof(kvf_header, ksum_sum), &h.ksum_sum, 8);
        }
    }
    if ((mode & FIX_META) && h.data_off >= sizeof h && h.data_off <= size) {
        memset(f + offsetof(kvf_header, meta_sum), 0, 8);
        uint64_t s = XXH3_64bits(f, h.data_off);
        memcpy(f + offsetof(kvf_header, meta_sum), &s, 8);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const int mode = data[0];
    uint8_t *f = malloc(size);
    if (!f) abort();
    const size_t n = size - 1;
    memcpy(f, data + 1, n);
    fix_sums(f, n, mode);
    fz_write(path, f, n);
    uint64_t fp = 0;
    if (n >= 24) memcpy(&fp, f + 16, 8);
    int32_t *prompt = NULL;
    int64_t n_prompt = 0;
    if ((mode & PROMPT) && n >= sizeof(kvf_header)) {
        kvf_header h;
        memcpy(&h, f, sizeof h);
        uint64_t cnt = h.n_tokens < 4096 ? h.n_tokens + 1 : 4096;
        if (fits(h.ids_off, cnt * 4, n)) {
            prompt = malloc(cnt * 4 + 4);
            memcpy(prompt, f + h.ids_off, cnt * 4);
            n_prompt = (int64_t)cnt;
            uint64_t k = data[size - 1] % (cnt + 1);
            if (k < cnt) prompt[k] ^= 1;
        }
    }
    kvs_cache *c = cache_for(mode);
    int32_t *ids = NULL;
    int64_t loaded = 0;
    if (kvs_file_load(c, path, fp, prompt, n_prompt, &ids, &loaded) == 0) {
        const kvs_params *p = kvs_get_params(c);
        const int64_t B = kvs_block_tokens(c);
        uint16_t *blk = malloc((size_t)(2 * B * p->n_kv_groups * p->head_dim) * sizeof *blk);
        for (int64_t l = 0; l < p->n_layers; l++)
            for (int64_t b = 0; b * B < loaded; b++) {
                int64_t rows;
                if (kvs_read_block(c, l, b, blk, &rows)) break;
            }
        free(blk);
        if (ids && loaded) (void)*(volatile int32_t *)&ids[loaded - 1];
    }
    free(ids);
    free(prompt);
    free(f);
    return 0;
}
