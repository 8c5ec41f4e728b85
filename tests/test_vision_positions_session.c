/* test_vision_positions_session.c — the session side of GLM-4V's image layout (core/forward.c
 * mtok_forward_ex, core/feed.c; docs/VISION.md "Prompt layout"): explicit RoPE positions and
 * spliced embedding rows on a plain GLM-4 test model, with made-up rows standing in for the tower's.
 * Checked: decoding after the image continues at the last position + 1 (and its logits match a
 * one-call run with that position, not with the slot); truncating keeps or drops the image's rows
 * and positions as it should; a saved KV file restores them exactly (and a prompt's prefix match
 * stops before the image); a second image and positions out of order are refused with the session
 * unchanged; a feed never reuses image rows as text; a truncation that would recompute image rows
 * the window policy dropped is refused. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/vision.h"
#include "tests/check.h"

enum { CTX = 256, N = 12, IMG0 = 3, IMGN = 5, EMB_ROWS = 8 /* emb's rows: IMGN here, 6 in the window case */ };

static const mtok_model *M;
static int64_t V, E;

static mtok_session *new_session(int64_t chunk) {
    mtok_session_params p = {.ctx = CTX, .threads = 2, .prefill_chunk = chunk, .kv_block = 4};
    mtok_session *s = NULL;
    if (mtok_session_create(M, &p, &s)) {
        fprintf(stderr, "session: %s\n", mtok_errmsg());
        exit(1);
    }
    return s;
}

static double max_rel(const float *x, const float *ref, int64_t n) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)x[i] - ref[i]));
        m = fmax(m, fabs((double)ref[i]));
    }
    return m > 0 ? d / m : d;
}

int main(int argc, char **argv) {
    if (argc < 2) return 1;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/data/models/g4-chatglm-sharded", argv[1]);
    mtok_set_log_level(0);
    mtok_model *m = NULL;
    if (mtok_model_load(dir, NULL, &m)) {
        fprintf(stderr, "load: %s\n", mtok_errmsg());
        return 1;
    }
    M = m, V = mtok_model_config(m)->vocab, E = mtok_model_config(m)->hidden;
    /* a prompt of N text positions whose rows IMG0..IMG0+IMGN come from "the tower": boi at 3, the
     * three patch rows share 4, eoi at 5, text after at 6.. (N - IMGN + 3 text positions in all) */
    int32_t ids[N + 1];
    int64_t pos[N + 1];
    for (int i = 0; i <= N; i++) ids[i] = (int32_t)(17 * i + 5) % 400;
    for (int i = 0; i <= N; i++)
        pos[i] = i <= IMG0 ? i : i < IMG0 + IMGN - 1 ? IMG0 + 1 : i == IMG0 + IMGN - 1 ? IMG0 + 2 : i - IMGN + 3;
    float *emb = malloc((size_t)EMB_ROWS * (size_t)E * sizeof *emb);
    for (int64_t i = 0; i < EMB_ROWS * E; i++) emb[i] = (float)sin(0.37 * (double)i) * 2.0f;
    float *lg = malloc((size_t)(N + 1) * (size_t)V * sizeof *lg), *dec = malloc((size_t)V * sizeof *dec);

    /* one call of N + 1 rows, the last at position pos[N] = pos[N-1] + 1: the reference for decoding */
    mtok_session *ref = new_session(64);
    mtok_forward_params fp = {.ids = ids, .n = N + 1, .pos = pos, .embeds = emb, .embed_first = IMG0,
                              .embed_n = IMGN, .all_logits = lg};
    CHECK(!mtok_forward_ex(ref, &fp), "forward_ex: %s", mtok_errmsg());
    /* the same last token at its slot (N) instead: what a decoder that ignored positions computes */
    mtok_session *wrong = new_session(64);
    int64_t pos_wrong[N + 1];
    memcpy(pos_wrong, pos, sizeof pos);
    pos_wrong[N] = N;
    fp.pos = pos_wrong, fp.all_logits = NULL;
    CHECK(!mtok_forward_ex(wrong, &fp), "forward_ex: %s", mtok_errmsg());

    /* prompt (chunks of 4: the image rows cross chunk boundaries), then one decode step */
    mtok_session *s = new_session(4);
    fp = (mtok_forward_params){.ids = ids, .n = N, .pos = pos, .embeds = emb, .embed_first = IMG0, .embed_n = IMGN};
    CHECK(!mtok_forward_ex(s, &fp), "forward_ex: %s", mtok_errmsg());
    CHECK(mtok_session_positions(s) && mtok_session_positions(s)[N - 1] == pos[N - 1], "positions held");
    CHECK(!mtok_forward(s, ids + N, 1, NULL), "decode: %s", mtok_errmsg());
    const int64_t *held = mtok_session_positions(s);
    CHECK(held && held[N] == pos[N - 1] + 1, "decoding continues at the last position + 1: %lld",
          held ? (long long)held[N] : -1LL);
    memcpy(dec, mtok_session_logits(s), (size_t)V * sizeof *dec);
    const double e = max_rel(dec, lg + (size_t)N * V, V);
    const double far = max_rel(mtok_session_logits(wrong), lg + (size_t)N * V, V);
    printf("decode step after the image vs one call: %.2e of max |logit|; at the slot's position: %.2e\n", e, far);
    CHECK(e < 1e-3 && far > 10 * e && far > 1e-3, "decode step vs one call: %.2e; at the slot instead: %.2e", e, far);

    /* refusals leave the session as it was */
    fp = (mtok_forward_params){.ids = ids, .n = 2, .embeds = emb, .embed_first = 0, .embed_n = 1};
    CHECK(mtok_forward_ex(s, &fp) == MTOK_EUSAGE && strstr(mtok_errmsg(), "one image per conversation"),
          "second image: %s", mtok_errmsg());
    const int64_t back[2] = {pos[N - 1], pos[N - 1] - 1};
    fp = (mtok_forward_params){.ids = ids, .n = 2, .pos = back};
    CHECK(mtok_forward_ex(s, &fp) == MTOK_EUSAGE && strstr(mtok_errmsg(), "out of order"), "positions: %s",
          mtok_errmsg());
    CHECK(mtok_session_pos(s) == N + 1 && mtok_session_positions(s)[N] == pos[N - 1] + 1, "unchanged after refusals");

    /* a saved KV file carries the positions and the image's rows: the loaded session decodes exactly
     * as the saved one; a prompt's prefix match stops before the image */
    char path[1100];
    snprintf(path, sizeof path, "%s/vision_positions.kv", argc > 2 ? argv[2] : ".");
    CHECK(!mtok_session_save_kv(s, path), "save_kv: %s", mtok_errmsg());
    mtok_session *l = new_session(4);
    int64_t got = 0;
    CHECK(!mtok_session_load_kv(l, path, NULL, 0, &got) && got == N + 1, "load_kv: %s", mtok_errmsg());
    const int64_t *lp = mtok_session_positions(l);
    CHECK(lp && !memcmp(lp, mtok_session_positions(s), (N + 1) * sizeof *lp), "loaded positions");
    CHECK(!mtok_session_truncate(l, N) && !mtok_forward(l, ids + N, 1, NULL) &&
          !memcmp(mtok_session_logits(l), dec, (size_t)V * sizeof *dec), "loaded session decodes bit for bit");
    fp = (mtok_forward_params){.ids = ids, .n = 2, .embeds = emb, .embed_first = 0, .embed_n = 1};
    CHECK(mtok_forward_ex(l, &fp) == MTOK_EUSAGE, "the loaded image counts: a second one is refused");
    CHECK(!mtok_session_load_kv(l, path, ids, N + 1, &got) && got == IMG0 && !mtok_session_positions(l),
          "prefix load stops at the image: %lld tokens", (long long)got);
    mtok_session_free(l);
    /* the file is version 3 with the layout flag; a position out of order (checksum made to match:
     * anyone can recompute one) is refused as damaged */
    FILE *fh = fopen(path, "rb");
    uint8_t *buf = NULL;
    long size = 0;
    if (fh && !fseek(fh, 0, SEEK_END) && (size = ftell(fh)) > 128 && !fseek(fh, 0, SEEK_SET) &&
        (buf = malloc((size_t)size)) && fread(buf, 1, (size_t)size, fh) != (size_t)size)
        size = 0;
    if (fh) fclose(fh);
    uint32_t version = 0, flags = 0;
    uint64_t ntok = 0, data_off = 0, sum;
    if (buf && size > 128) {
        memcpy(&version, buf + 8, 4), memcpy(&flags, buf + 52, 4), memcpy(&ntok, buf + 24, 8);
        memcpy(&data_off, buf + 96, 8);
    }
    CHECK(version == 3 && (flags & 2) && ntok == N + 1 && data_off <= (uint64_t)size, "file version %u flags %#x",
          version, flags);
    if (version == 3 && data_off <= (uint64_t)size) {
        const int64_t zero = 0;
        memcpy(buf + (128 + 4 * ntok + 7) / 8 * 8 + 8 * (IMG0 + IMGN), &zero, 8); /* the text after the image at 0 */
        memset(buf + 112, 0, 8);
        sum = XXH3_64bits(buf, data_off);
        memcpy(buf + 112, &sum, 8);
        fh = fopen(path, "wb");
        CHECK(fh && fwrite(buf, 1, (size_t)size, fh) == (size_t)size && !fclose(fh), "rewrite %s", path);
        l = new_session(4);
        CHECK(mtok_session_load_kv(l, path, NULL, 0, &got) == MTOK_EINPUT && strstr(mtok_errmsg(), "RoPE position"),
              "damaged positions: %s", mtok_errmsg());
        CHECK(mtok_session_pos(l) == 0 && !mtok_session_positions(l), "nothing loaded");
        mtok_session_free(l);
    }
    free(buf);
    /* a text-only session's file stays version 2 */
    mtok_session *tx = new_session(4);
    CHECK(!mtok_forward(tx, ids, N, NULL) && !mtok_session_save_kv(tx, path), "save text: %s", mtok_errmsg());
    mtok_session_free(tx);
    version = 0;
    if ((fh = fopen(path, "rb"))) {
        if (fseek(fh, 8, SEEK_SET) || fread(&version, 4, 1, fh) != 1) version = 0;
        fclose(fh);
    }
    CHECK(version == 2, "text-only file version %u", version);
    remove(path);

    /* truncate after the image: its rows and positions stay, decoding resumes at the kept position + 1 */
    CHECK(!mtok_session_truncate(s, N), "truncate: %s", mtok_errmsg());
    CHECK(!mtok_forward(s, ids + N, 1, NULL) && mtok_session_positions(s)[N] == pos[N - 1] + 1,
          "after truncate, the same position again");
    CHECK(!memcmp(mtok_session_logits(s), dec, (size_t)V * sizeof *dec), "after truncate, the same logits");
    /* truncate to before the image: a text-only session again (positions = slots) */
    CHECK(!mtok_session_truncate(s, IMG0), "truncate: %s", mtok_errmsg());
    CHECK(mtok_session_positions(s) == NULL, "positions back to the slots");
    CHECK(!mtok_forward(s, ids + IMG0, 2, NULL), "text after truncation: %s", mtok_errmsg());
    mtok_session *text = new_session(4);
    CHECK(!mtok_forward(text, ids, IMG0 + 2, NULL), "text: %s", mtok_errmsg());
    /* not bit for bit: the kept rows ran in other chunk shapes than the text session's */
    CHECK(max_rel(mtok_session_logits(s), mtok_session_logits(text), V) < 1e-5,
          "truncated before the image = a text-only session: %.2e",
          max_rel(mtok_session_logits(s), mtok_session_logits(text), V));

    /* a feed of the same ids (placeholders included) must not take the image rows for text */
    mtok_session *f = new_session(4);
    fp = (mtok_forward_params){.ids = ids, .n = N, .pos = pos, .embeds = emb, .embed_first = IMG0, .embed_n = IMGN};
    CHECK(!mtok_forward_ex(f, &fp), "forward_ex: %s", mtok_errmsg());
    mtok_usage u;
    CHECK(!mtok_session_feed(f, ids, N, NULL, &u), "feed: %s", mtok_errmsg());
    CHECK(u.cached_tokens == IMG0 && mtok_session_positions(f) == NULL, "feed reused %lld tokens (want %d)",
          (long long)u.cached_tokens, IMG0);
    mtok_session *t2 = new_session(4);
    CHECK(!mtok_forward(t2, ids, N, NULL), "text: %s", mtok_errmsg());
    CHECK(max_rel(mtok_session_logits(f), mtok_session_logits(t2), V) < 1e-5, "feed = text prompt");

    /* the window policy drops blocks outside sinks + window; a truncation that would have to recompute
     * dropped image rows from their placeholder ids is refused, leaving the tokens the store holds */
    {
        /* a small hot budget spills blocks to the cold tier; the window policy drops cold blocks outside
         * sinks + window when a later chunk plans its attention */
        mtok_session_params wp = {.ctx = CTX, .threads = 2, .prefill_chunk = 8, .kv_block = 4, .kv_policy = 1,
                                  .kv_window = 8, .kv_sinks = 4, .kv_budget = 1 << 15,
                                  .kv_dir = argc > 2 ? argv[2] : "."};
        mtok_session *w = NULL;
        enum { WN = 48, W0 = 8, WR = 6 }; /* WR <= EMB_ROWS */
        int32_t wid[WN];
        int64_t wpos[WN];
        for (int i = 0; i < WN; i++) wid[i] = (int32_t)(13 * i + 7) % 400;
        for (int i = 0; i < WN; i++)
            wpos[i] = i <= W0 ? i : i < W0 + WR - 1 ? W0 + 1 : i == W0 + WR - 1 ? W0 + 2 : i - WR + 3;
        CHECK(!mtok_session_create(M, &wp, &w), "window session: %s", mtok_errmsg());
        fp = (mtok_forward_params){.ids = wid, .n = WN, .pos = wpos, .embeds = emb, .embed_first = W0, .embed_n = WR};
        CHECK(w && !mtok_forward_ex(w, &fp), "forward_ex (window): %s", mtok_errmsg());
        const int rc = w ? mtok_session_truncate(w, 24) : 0;
        printf("truncate over dropped image rows: rc %d, now %lld tokens: %s\n", rc,
               w ? (long long)mtok_session_pos(w) : -1LL, rc ? mtok_errmsg() : "");
        CHECK(rc == MTOK_EUSAGE && strstr(mtok_errmsg(), "image rows") && mtok_session_pos(w) < W0 + WR,
              "truncate over dropped image rows: rc %d, %s, holds %lld", rc, mtok_errmsg(),
              w ? (long long)mtok_session_pos(w) : -1LL);
        mtok_session_free(w);
    }

    mtok_session_free(ref), mtok_session_free(wrong), mtok_session_free(s), mtok_session_free(text);
    mtok_session_free(f), mtok_session_free(t2);
    free(emb), free(lg), free(dec);
    mtok_model_free(m);
    if (!check_failures) printf("vision positions (session): all checks passed\n");
    return check_failures != 0;
}
