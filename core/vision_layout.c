/* vision_layout.c — where GLM-4V's image goes in the token sequence and at which RoPE positions
 * (docs/VISION.md "Prompt layout"). The model's own forward finds boi and eoi,
 * asserts they are 2 apart, splices the tower's rows over the three placeholder embeddings and gives
 * every patch row the position that followed boi: positions stay those of the text, so the largest
 * one is n_text - 1 although the sequence is (grid/2)^2 - 1 rows longer. One server splices the rows
 * with sequential positions and loses accuracy; this layout is the model's. */
#include <stdlib.h>

#include "vision.h"

void mtok_vision_layout_free(mtok_vision_layout *l) {
    if (!l) return;
    free(l->ids);
    free(l->pos);
    *l = (mtok_vision_layout){0};
}

int mtok_vision_expand(const mtok_vision_config *c, const int32_t *ids, int64_t n, int64_t pos0,
                       mtok_vision_layout *out) {
    *out = (mtok_vision_layout){0};
    if (n < 0 || pos0 < 0) return mtok_err(MTOK_EUSAGE, "image layout: %lld tokens at position %lld", (long long)n,
                                           (long long)pos0);
    int64_t boi = -1;
    for (int64_t t = 0; t < n; t++) {
        if (ids[t] == c->boi_id) {
            if (boi >= 0)
                return mtok_err(MTOK_EINPUT, "one image per conversation (GLM-4V takes one): a second "
                                "<|begin_of_image|> at token %lld, the first at %lld", (long long)t, (long long)boi);
            if (t + 2 >= n || ids[t + 1] != c->pad_id || ids[t + 2] != c->eoi_id)
                return mtok_err(MTOK_EINPUT, "image placeholder at token %lld: <|begin_of_image|> must be followed "
                                "by <|endoftext|> (%lld) and <|end_of_image|> (%lld)", (long long)t,
                                (long long)c->pad_id, (long long)c->eoi_id);
            boi = t;
            t += 2; /* past this image's eoi */
        } else if (ids[t] == c->eoi_id) {
            return mtok_err(MTOK_EINPUT, "image placeholder at token %lld: <|end_of_image|> without "
                            "<|begin_of_image|><|endoftext|> before it", (long long)t);
        }
    }
    const int64_t rows = boi >= 0 ? mtok_vision_out_rows(c) : 0, total = n + (rows ? rows - 3 : 0);
    out->ids = malloc((size_t)(total ? total : 1) * sizeof *out->ids);
    out->pos = malloc((size_t)(total ? total : 1) * sizeof *out->pos);
    if (!out->ids || !out->pos) {
        mtok_vision_layout_free(out);
        return mtok_err(MTOK_ERESOURCE, "out of memory for an image layout of %lld tokens", (long long)total);
    }
    int64_t r = 0;
    for (int64_t t = 0; t < n; t++) {
        if (t != boi) {
            out->ids[r] = ids[t];
            out->pos[r++] = pos0 + t;
            continue;
        }
        /* boi at p, the patches at p + 1 (the placeholder's position), eoi at p + 2 */
        out->image_first = r;
        for (int64_t i = 0; i < rows; i++) {
            out->ids[r] = i == 0 ? c->boi_id : i == rows - 1 ? c->eoi_id : c->pad_id;
            out->pos[r++] = pos0 + t + (i == 0 ? 0 : i == rows - 1 ? 2 : 1);
        }
        t += 2;
    }
    out->n = total;
    out->image_rows = rows;
    return 0;
}
