/* vision.h — GLM-4V-9B's vision tower (an EVA2-CLIP ViT, a 2x2 downsampling convolution and a GLU
 * projector) on the CPU or CUDA backend: one preprocessed image (core/image.h) in, the (grid/2)^2 + 2 embeddings that
 * replace <|begin_of_image|><|endoftext|><|end_of_image|> in the prompt out. The architecture and
 * the sources of each fact: docs/VISION.md; the same model in numpy: tests/ref/glm4v_ref.py.
 *
 * Loading binds the tensors of the checkpoint directory (names under `transformer.vision.`) with
 * every shape checked against config.json's vision_config; 2-D weights stay views into the mmapped
 * shards (any of bf16/f16/f32), the small vectors (norms, biases, positions, boi/eoi) are widened to
 * fp32 copies once. */
#ifndef MTOK_VISION_H
#define MTOK_VISION_H

#include <stdint.h>

#include "../base/mtok_base.h"
#include "mtok.h"

typedef struct {
    /* vision_config */
    int64_t hidden;      /* hidden_size (1792) */
    int64_t n_layers;    /* num_hidden_layers (63) */
    int64_t n_heads;     /* num_heads (16); head_dim = hidden / n_heads (112) */
    int64_t head_dim;
    int64_t ffn;         /* intermediate_size (15360), fc1/fc2 with exact-erf GELU */
    int64_t patch;       /* patch_size (14) */
    int64_t image;       /* image_size (1120): the input is image x image, no other size */
    int64_t grid;        /* image / patch (80) patches per side; even (the 2x2 stride-2 convolution) */
    int64_t n_pos;       /* num_positions = grid^2 + 1 (6401) */
    double ln_eps;       /* layer_norm_eps (1e-6) of the transformer's LayerNorms */
    double scaling;      /* scaling_factor (8): every output row is divided by it */
    /* the language model's side (top level of config.json) */
    int64_t lm_hidden;   /* hidden_size (4096): the convolution's output and the GLU's width */
    int64_t lm_ffn;      /* ffn_hidden_size (13696): the GLU's gate/up width */
    double glu_eps;      /* the GLU's LayerNorm: PyTorch's default 1e-5 (not in config.json) */
    int64_t boi_id, eoi_id; /* boi_token_id (151339), eoi_token_id (151340) */
    int64_t pad_id;      /* the placeholder between them: <|endoftext|>, pad_token_id (151329; the default) */
} mtok_vision_config;

/* Image tokens the tower puts out: (grid/2)^2 patches + boi + eoi (1602 for GLM-4V-9B). */
static inline int64_t mtok_vision_out_rows(const mtok_vision_config *c) {
    return (c->grid / 2) * (c->grid / 2) + 2;
}

/* Parses DIR/config.json's vision part (MTOK_EINPUT naming the field when one is missing or out of
 * range, or when config.json has no vision_config: not a GLM-4V checkpoint). */
int mtok_vision_config_read(const char *dir, mtok_vision_config *out);
/* 1 when DIR/config.json has a vision_config object (a GLM-4V checkpoint), 0 when it has none, < 0
 * (MTOK_EINPUT) when config.json cannot be read. For callers that treat images as optional
 * (core/vision_prompt.c). */
int mtok_vision_config_present(const char *dir);

typedef struct mtok_vision mtok_vision;
int mtok_vision_load(const char *dir, mtok_vision **out);
void mtok_vision_free(mtok_vision *v);
const mtok_vision_config *mtok_vision_cfg(const mtok_vision *v);

typedef struct {
    int threads;        /* OpenMP team (0: OpenMP's default) */
    double progress_s;  /* progress over the layers on stderr (base/mtok_base.h); < 0: none */
    const char *device; /* the backend the tower runs on: "cpu" (NULL), "cuda", "cuda:N" (mtok_device_parse);
                         * mtok_vision_prefill and feed default it to their session's device */
} mtok_vision_params;

/* chw: [3][image][image] (mtok_image_preprocess's output). out: [mtok_vision_out_rows][lm_hidden]
 * fp32 (host), already divided by scaling_factor, on the backend p->device names. MTOK_ERESOURCE when
 * the weights or the scratch do not fit (a device: next to what is allocated there already),
 * MTOK_EINPUT when a row comes out NaN or Inf. */
int mtok_vision_forward(const mtok_vision *v, const mtok_vision_params *p, const float *chw, float *out);

/* A tower kept loaded between images (and, on a device, uploaded: the 9 GB of GLM-4V-9B's tower
 * would otherwise cross the bus for every image). The cache holds at most one tower, of the
 * checkpoint, device and thread count of its last pass, and runs one pass at a time (a mutex: the
 * server's sessions share one). mtok_vision_cache_forward loads on the first call and again when
 * they change; a failed load leaves the cache empty. Freeing it frees the tower. */
typedef struct mtok_vision_cache mtok_vision_cache;
int mtok_vision_cache_create(mtok_vision_cache **out);
void mtok_vision_cache_free(mtok_vision_cache *c);
int mtok_vision_cache_forward(mtok_vision_cache *c, const char *dir, const mtok_vision_params *p, const float *chw,
                              float *out);

/* ---- the image's place in the prompt (core/vision_layout.c, docs/VISION.md "Prompt layout") ----
 * In the prompt the image is the triple boi, pad, eoi (<|begin_of_image|><|endoftext|><|end_of_image|>);
 * the language model sees the tower's rows in its place (boi vector, (grid/2)^2 patches, eoi vector)
 * and all patch rows share one RoPE position: boi at p, every patch at p + 1, eoi at p + 2, the text
 * after at p + 3, ... (the text keeps the positions it had without the image). */
typedef struct {
    int32_t *ids;       /* [n] the expanded ids: the image rows hold boi, pad x patches, eoi (placeholders) */
    int64_t *pos;       /* [n] each row's RoPE position */
    int64_t n;
    int64_t image_first; /* rows [image_first, image_first + image_rows) take mtok_vision_forward's rows */
    int64_t image_rows;  /* mtok_vision_out_rows, or 0 when ids hold no image */
} mtok_vision_layout;
/* Expands ids[0..n) (text positions pos0, pos0 + 1, ...) around its image triple. ids without boi,
 * eoi give the identity layout (image_rows 0). MTOK_EINPUT naming the index for a broken triple (boi
 * not followed by pad and eoi, an eoi without its boi) and for a second image ("one image per
 * conversation", as GLM-4V supports); MTOK_ERESOURCE for memory. */
int mtok_vision_expand(const mtok_vision_config *c, const int32_t *ids, int64_t n, int64_t pos0,
                       mtok_vision_layout *out);
void mtok_vision_layout_free(mtok_vision_layout *l);

/* ---- an image prompt in one call (core/vision_prompt.c) ----
 * Expands ids around their image triple at the session's next position (the held tokens' last + 1,
 * so a later turn of a conversation works too), preprocesses image_path (or image_data), loads the tower from
 * model_dir, runs it (then frees it) and runs the language model over the expanded rows with
 * mtok_forward_ex. ids without a triple run as text (then image_path must be NULL). split > 0: rows
 * from split on go through plain mtok_forward, as decoding after a prompt does (a test of the
 * positions' continuation); the image must lie before it. layout_out (optional) gets the expanded
 * layout (free with mtok_vision_layout_free); logits_out (optional) a malloc'd [layout n][vocab]
 * fp32 array of every row's logits, image rows included. Errors: MTOK_EINPUT for a bad image,
 * checkpoint or triple (mtok_vision_expand's messages), MTOK_EUSAGE for an image without a triple or
 * a triple without an image, and mtok_forward_ex's (a second image in the session, --tp/--cp).
 * On error nothing is allocated and, as mtok_forward_ex promises, the session holds what it held
 * (with split, a failure in the plain part leaves the mtok_forward_ex part held). */
typedef struct {
    const char *model_dir;     /* the GLM-4V checkpoint: config.json's vision_config and the tower */
    const char *image_path;    /* a PNG or JPEG; NULL for a text-only prompt */
    const void *image_data;    /* or the file's bytes in memory (the server's data: URI); wins over image_path */
    size_t image_len;
    const int32_t *ids;        /* the prompt, with at most one boi, pad, eoi triple */
    int64_t n;
    int64_t split;             /* 0: the whole prompt in one mtok_forward_ex call */
    mtok_vision_params vision; /* the tower's threads and progress */
    mtok_vision_cache *cache;  /* optional: the tower stays loaded there between calls; NULL: loaded, run, freed */
} mtok_vision_prefill_params;
int mtok_vision_prefill(mtok_session *s, const mtok_vision_prefill_params *p, mtok_vision_layout *layout_out,
                        float **logits_out);

/* A conversation with an image, turn after turn (generate/chat --image). mtok_session_feed's prefix
 * reuse stops before an image (equal placeholder ids need not be an equal image), which would turn
 * the image rows back into placeholder text; these keep them. p->ids is the whole conversation from
 * [gMASK] (unexpanded, its image triple where the template put it) and p->split is ignored.
 * mtok_vision_feed makes the session hold its expanded rows: the held rows are reused up to the
 * first difference when that lies after the image (the image is then the one the session was
 * given: the caller keeps one image per conversation), else the session is reset and everything,
 * the tower included, runs again. usage as mtok_session_feed's (no progress, no cancel inside).
 * mtok_vision_generate is mtok_generate with this feed (core/generate_internal.h): the same
 * decoding (stop ids, eos, stop strings, max_tokens, cancel, on_token), each token fed back with
 * mtok_forward, whose positions continue from the last one. Its usage.prompt_tokens counts the
 * expanded rows the session holds (the image's rows in place of the triple), as the server's
 * prompt_tokens does. */
int mtok_vision_feed(mtok_session *s, const mtok_vision_prefill_params *p, mtok_usage *usage);
int mtok_vision_generate(mtok_session *s, const mtok_tokenizer *t, const mtok_vision_prefill_params *p,
                         const mtok_request *req, mtok_result *res);

/* Multiply-adds x 2 of one forward pass (the tower's cost; docs/VISION.md derives it). */
double mtok_vision_flops(const mtok_vision_config *c);

#endif
