/* vision_prompt.c — an image prompt through GLM-4V in one call (docs/VISION.md §4-5): the ids' image
 * triple expanded (boi, patch rows sharing one position, eoi), the image preprocessed and run
 * through the tower, its rows spliced over the placeholders and the language model run with
 * mtok_forward_ex. `mtok image --prompt-ids`, `mtok logits --image`, `generate`/`chat --image` all
 * come through here, so the sequence (config, tower, preprocessing, expansion, positions) exists once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "generate_internal.h"
#include "image.h"
#include "vision.h"

int mtok_vision_config_present(const char *dir) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return mtok_err(MTOK_EINPUT, "%s: path too long", dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) return mtok_err(MTOK_EINPUT, "%s: %s (line %d)", path, err.text, err.line);
    const int has = json_is_object(json_object_get(root, "vision_config"));
    json_decref(root);
    return has;
}

/* The RoPE position the next token gets: the held tokens' last + 1. Positions equal slots until an
 * image was run; after one they are behind the slots (the patch rows share one), so the slot count
 * would be wrong for a later turn. */
static int64_t next_position(const mtok_session *s) {
    const int64_t held = mtok_session_pos(s);
    const int64_t *pos = mtok_session_positions(s);
    return held && pos ? pos[held - 1] + 1 : held;
}

int mtok_vision_prefill(mtok_session *s, const mtok_vision_prefill_params *p, mtok_vision_layout *layout_out,
                        float **logits_out) {
    if (layout_out) *layout_out = (mtok_vision_layout){0};
    if (logits_out) *logits_out = NULL;
    if (!s || !p || !p->model_dir || (p->n && !p->ids))
        return mtok_err(MTOK_EUSAGE, "mtok_vision_prefill: NULL argument");
    mtok_vision_config vc;
    mtok_vision_layout lay = {0};
    mtok_vision *vis = NULL;
    float *chw = NULL, *emb = NULL, *logits = NULL;
    int rc = mtok_vision_config_read(p->model_dir, &vc);
    if (!rc) rc = mtok_vision_expand(&vc, p->ids, p->n, next_position(s), &lay);
    const int has_image = p->image_path || p->image_data;
    if (!rc && lay.image_rows && !has_image)
        rc = mtok_err(MTOK_EUSAGE, "the prompt holds an image placeholder but no image was given");
    if (!rc && !lay.image_rows && has_image)
        rc = mtok_err(MTOK_EUSAGE, "an image was given, but the prompt holds no "
                      "<|begin_of_image|><|endoftext|><|end_of_image|> to put it in");
    const mtok_config *mc = mtok_session_config(s);
    if (!rc && mc->hidden != vc.lm_hidden)
        rc = mtok_err(MTOK_EINPUT, "%s: the language model's hidden size %lld is not the vision config's %lld",
                      p->model_dir, (long long)mc->hidden, (long long)vc.lm_hidden);
    /* the split must leave the whole image in the mtok_forward_ex call: plain mtok_forward cannot
     * take embedding rows or shared positions */
    const int64_t split = p->split;
    if (!rc && split && (split >= lay.n || split < lay.image_first + lay.image_rows))
        rc = mtok_err(MTOK_EUSAGE, "split at %lld: must fall after the image's rows (%lld) and before the end (%lld)",
                      (long long)split, (long long)(lay.image_first + lay.image_rows), (long long)lay.n);
    /* the image is decoded before the tower is loaded: a bad file fails fast, naming the file */
    if (!rc && lay.image_rows && p->image_data) {
        mtok_image im = {0};
        rc = mtok_image_decode(p->image_data, p->image_len, "the image", &im);
        if (!rc) rc = mtok_image_to_tensor(&im, vc.image, &chw);
        mtok_image_free(&im);
    } else if (!rc && lay.image_rows) {
        rc = mtok_image_preprocess(p->image_path, vc.image, &chw);
    }
    if (!rc && lay.image_rows && !p->cache) rc = mtok_vision_load(p->model_dir, &vis);
    if (!rc && lay.image_rows && !(emb = malloc((size_t)lay.image_rows * (size_t)vc.lm_hidden * sizeof *emb)))
        rc = mtok_err(MTOK_ERESOURCE, "out of memory for the image's %lld rows", (long long)lay.image_rows);
    mtok_vision_params vp = p->vision; /* the tower runs where the language model does */
    if (!vp.device) vp.device = mtok_session_device(s);
    if (!rc && lay.image_rows && p->cache) rc = mtok_vision_cache_forward(p->cache, p->model_dir, &vp, chw, emb);
    else if (!rc && lay.image_rows) rc = mtok_vision_forward(vis, &vp, chw, emb);
    mtok_vision_free(vis); /* without a cache, the tower's weights are not needed past its one pass */
    free(chw);
    const int64_t V = mc->vocab;
    if (!rc && logits_out && !(logits = malloc((size_t)(lay.n ? lay.n : 1) * (size_t)V * sizeof *logits)))
        rc = mtok_err(MTOK_ERESOURCE, "out of memory for %lld x %lld logits", (long long)lay.n, (long long)V);
    const int64_t n1 = split ? split : lay.n;
    const mtok_forward_params fp = {.ids = lay.ids, .n = n1, .pos = lay.pos, .embeds = emb,
                                    .embed_first = lay.image_first, .embed_n = lay.image_rows,
                                    .all_logits = logits};
    if (!rc && lay.n) rc = mtok_forward_ex(s, &fp);
    if (!rc && split) rc = mtok_forward(s, lay.ids + n1, lay.n - n1, logits ? logits + (size_t)n1 * (size_t)V : NULL);
    free(emb);
    if (rc) {
        free(logits);
        mtok_vision_layout_free(&lay);
        return rc;
    }
    if (logits_out) *logits_out = logits;
    if (layout_out) *layout_out = lay;
    else mtok_vision_layout_free(&lay);
    return 0;
}

/* ---- a conversation with an image: feed and decode ---- */

int mtok_vision_feed(mtok_session *s, const mtok_vision_prefill_params *p, mtok_usage *usage) {
    mtok_usage u = {.prompt_tokens = p ? p->n : 0};
    if (usage) *usage = u;
    if (!s || !p || !p->model_dir || p->n <= 0 || !p->ids)
        return mtok_err(MTOK_EUSAGE, "mtok_vision_feed: NULL argument or empty prompt");
    mtok_vision_config vc;
    mtok_vision_layout lay = {0};
    int rc = mtok_vision_config_read(p->model_dir, &vc);
    if (!rc) rc = mtok_vision_expand(&vc, p->ids, p->n, 0, &lay);
    if (rc) return rc;
    u.prompt_tokens = lay.n; /* the rows the model runs: the image's placeholder triple expanded */
    /* the held rows are reusable up to the first difference, and only when the image's rows are among
     * them: equal placeholder ids before the image's end would not mean an equal image, and rows cut
     * inside the image cannot be recomputed from placeholders */
    const int32_t *held = mtok_session_tokens(s);
    const int64_t n_held = mtok_session_pos(s), img_end = lay.image_first + lay.image_rows;
    const int64_t *held_pos = mtok_session_positions(s);
    int64_t lcp = 0;
    while (lcp < lay.n && lcp < n_held && held[lcp] == lay.ids[lcp] &&
           (held_pos ? held_pos[lcp] : lcp) == lay.pos[lcp])
        lcp++;
    if (lcp == lay.n) lcp = lay.n - 1; /* the last row's logits must be current: compute it again */
    const double t0 = mtok_progress_now();
    if (lay.image_rows && lcp >= img_end && held_pos) {
        rc = lcp < n_held ? mtok_session_truncate(s, lcp) : 0;
        const mtok_forward_params fp = {.ids = lay.ids + lcp, .n = lay.n - lcp, .pos = lay.pos + lcp};
        if (!rc) rc = mtok_forward_ex(s, &fp);
        u.cached_tokens = lcp;
    } else {
        /* the image is not held: the text before it that is (a document, earlier turns) stays, the
         * rest runs from there with the tower; rows before the first difference hold no image, so
         * the unexpanded ids index the same tokens up to it */
        if (lcp > lay.image_first && lay.image_rows) lcp = lay.image_first;
        rc = lcp < n_held ? mtok_session_truncate(s, lcp) : 0;
        mtok_vision_prefill_params q = *p;
        q.split = 0, q.ids = p->ids + lcp, q.n = p->n - lcp;
        if (!rc) rc = mtok_vision_prefill(s, &q, NULL, NULL);
        u.cached_tokens = lcp;
    }
    if (!rc) u.computed_tokens = lay.n - u.cached_tokens;
    u.prefill_s = mtok_progress_now() - t0;
    if (usage) *usage = u;
    mtok_vision_layout_free(&lay);
    return rc;
}

/* The feed of mtok_generate_fed: the conversation's rows as mtok_vision_feed leaves them (its
 * prompt_tokens are the expanded rows, the server's prompt_tokens for an image). */
static int vision_feed(mtok_session *s, const void *arg, const mtok_request *req, mtok_usage *usage) {
    (void)req; /* mtok_vision_feed runs uncancellable; mtok_generate_fed checks the cancel after it */
    return mtok_vision_feed(s, arg, usage);
}

/* mtok_generate's own feed would drop the image rows (its prefix reuse stops before an image), so
 * only the feed differs: the decode after it is mtok_generate's (core/generate.c). */
int mtok_vision_generate(mtok_session *s, const mtok_tokenizer *t, const mtok_vision_prefill_params *p,
                         const mtok_request *req, mtok_result *res) {
    return mtok_generate_fed(s, t, vision_feed, p, req, res);
}
