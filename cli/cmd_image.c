/* cmd_image.c — mtok image: one image through GLM-4V's preprocessing (core/image.h) and, unless
 * --preprocessed, its vision tower (core/vision.h), written as .npy (docs/VISION.md).
 *
 *   mtok image -m DIR --image F --out X.npy                    [rows, lm_hidden] float32 embeddings
 *   mtok image (-m DIR | --size N) --image F --out X.npy --preprocessed   [3, S, S] float32 CHW
 *   mtok image -m DIR [--image F] --prompt-ids IDS.json [--logits-out L.npy] [--layout-out L.json] [--split K]
 *       the prompt's image triple expanded (positions shared by the patch rows), the tower's rows
 *       spliced in and the logits of every expanded row: [n, vocab] float32 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "../core/image.h"
#include "../core/vision.h"

/* A float32 array of any rank in NumPy .npy format (v1.0), written to a temporary file and renamed,
 * so a reader never sees half a file. */
static int write_npy_nd(const char *path, const float *data, int nd, const int64_t *shape) {
    char hdr[256], dims[160] = "";
    size_t o = 0, count = 1;
    for (int d = 0; d < nd; d++) {
        o += (size_t)snprintf(dims + o, sizeof dims - o, "%lld,%s", (long long)shape[d], d + 1 < nd ? " " : "");
        count *= (size_t)shape[d];
    }
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims);
    const int pad = (64 - (10 + n + 1) % 64) % 64; /* magic, version, length, header, '\n': 64-byte multiple */
    const uint16_t hlen = (uint16_t)(n + pad + 1);
    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    if (!tmp) return mtok_err(MTOK_ERESOURCE, "out of memory");
    snprintf(tmp, tlen, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int rc = mtok_err(MTOK_EINPUT, "%s: cannot write (%s)", path, strerror(errno));
        free(tmp);
        return rc;
    }
    int ok = fwrite("\x93NUMPY\x01\x00", 1, 8, f) == 8 && fwrite(&hlen, 2, 1, f) == 1 &&
             fwrite(hdr, 1, (size_t)n, f) == (size_t)n;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF && fwrite(data, sizeof *data, count, f) == count;
    ok = (fclose(f) == 0) && ok;
    int rc = 0;
    if (!ok || rename(tmp, path)) {
        rc = mtok_err(MTOK_ERESOURCE, "%s: write failed (%s)", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

/* A JSON array of token ids. */
static int read_ids_json(const char *path, mtok_ids *out) {
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) return mtok_err(MTOK_EINPUT, "%s: %s (line %d)", path, err.text, err.line);
    int rc = json_is_array(root) && json_array_size(root) > 0
                 ? 0
                 : mtok_err(MTOK_EINPUT, "%s: expected a non-empty JSON array of token ids", path);
    for (size_t i = 0; !rc && i < json_array_size(root); i++) {
        json_t *v = json_array_get(root, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
            rc = mtok_err(MTOK_EINPUT, "%s: element %zu is not a token id", path, i);
        const int32_t id = rc ? 0 : (int32_t)json_integer_value(v);
        if (!rc) rc = mtok_ids_append(out, &id, 1);
    }
    json_decref(root);
    return rc;
}

/* The expanded layout as JSON (ids, positions, the image rows), for tests and for looking at it. */
static int write_layout_json(const char *path, const mtok_vision_layout *l) {
    json_t *root = json_object(), *ids = json_array(), *pos = json_array();
    /* the object owns the arrays from here on (json_object_set_new takes the reference, also on failure) */
    int ok = root && !json_object_set_new(root, "ids", ids) && !json_object_set_new(root, "positions", pos);
    if (!root) json_decref(ids), json_decref(pos);
    for (int64_t t = 0; ok && t < l->n; t++)
        ok = !json_array_append_new(ids, json_integer(l->ids[t])) &&
             !json_array_append_new(pos, json_integer(l->pos[t]));
    ok = ok && !json_object_set_new(root, "image_first", json_integer(l->image_first)) &&
         !json_object_set_new(root, "image_rows", json_integer(l->image_rows)) &&
         !json_dump_file(root, path, JSON_COMPACT);
    json_decref(root);
    return ok ? 0 : mtok_err(MTOK_EINPUT, "%s: cannot write the layout", path);
}

/* --prompt-ids: the language model over the expanded prompt, the image's rows spliced in. */
static int image_prompt(const cli_common *o, const char *image, const char *ids_path, const char *logits_out,
                        const char *layout_out, int64_t split) {
    mtok_vision_config vc;
    mtok_ids ids = {0};
    mtok_vision_layout lay = {0};
    float *logits = NULL;
    cli_loaded L = {0};
    int loaded = 0;
    int rc = read_ids_json(ids_path, &ids);
    if (!rc) rc = mtok_vision_config_read(o->model, &vc);
    if (!rc) rc = mtok_vision_expand(&vc, ids.v, (int64_t)ids.n, 0, &lay);
    if (!rc && lay.image_rows && !image)
        rc = mtok_err(MTOK_EUSAGE, "%s holds an image placeholder: give --image FILE", ids_path);
    if (!rc && !lay.image_rows && image)
        rc = mtok_err(MTOK_EUSAGE, "--image given, but %s holds no <|begin_of_image|><|endoftext|><|end_of_image|>",
                      ids_path);
    if (!rc && layout_out) rc = write_layout_json(layout_out, &lay);
    /* the tower, the splicing and the language model: one library call (core/vision_prompt.c) */
    if (!rc && logits_out) {
        rc = cli_load(o, 0, &L);
        loaded = !rc;
        const mtok_vision_prefill_params pp = {.model_dir = o->model, .image_path = image, .ids = ids.v,
                                               .n = (int64_t)ids.n, .split = split,
                                               .vision = {.threads = o->threads,
                                                          .progress_s = cli_progress_interval(o),
                                                          .device = o->vision_device}};
        if (!rc) rc = mtok_vision_prefill(L.sess, &pp, NULL, &logits);
        const int64_t shape[2] = {lay.n, rc ? 0 : mtok_model_config(L.model)->vocab};
        if (!rc) rc = write_npy_nd(logits_out, logits, 2, shape);
        if (!rc) mtok_log(1, "wrote %s: [%lld, %lld] float32", logits_out, (long long)shape[0], (long long)shape[1]);
    }
    if (loaded) cli_unload(&L);
    free(logits);
    mtok_vision_layout_free(&lay);
    mtok_ids_free(&ids);
    return rc ? cli_fail(rc) : 0;
}

int cmd_image(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    const char *image = NULL, *out = NULL, *prompt_ids = NULL, *logits_out = NULL, *layout_out = NULL;
    int preprocessed = 0;
    int64_t size = 0, split = 0;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        const char *v;
        if (!strcmp(argv[i], "--image")) {
            if (!(image = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--out")) {
            if (!(out = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--prompt-ids")) {
            if (!(prompt_ids = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--logits-out")) {
            if (!(logits_out = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--layout-out")) {
            if (!(layout_out = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--split")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_parse_int("--split", v, 1, MTOK_MAX_CTX, &split)) return 1;
        } else if (!strcmp(argv[i], "--preprocessed")) {
            preprocessed = 1;
        } else if (!strcmp(argv[i], "--size")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_parse_int("--size", v, 1, MTOK_IMAGE_MAX_SIDE, &size)) return 1;
        } else
            return cli_usage_error("image: unknown option '%s'", argv[i]);
    }
    if (prompt_ids || logits_out || layout_out) {
        if (!prompt_ids || !o.model || (!logits_out && !layout_out) || out || preprocessed || size)
            return cli_usage_error("image --prompt-ids IDS.json needs -m DIR and --logits-out L.npy or --layout-out "
                                   "L.json (not --out, --preprocessed, --size)");
        return image_prompt(&o, image, prompt_ids, logits_out, layout_out, split);
    }
    if (!image || !*image) return cli_usage_error("image needs --image FILE (a PNG or JPEG)");
    if (preprocessed && (o.device || o.vision_device))
        return cli_usage_error("image --preprocessed runs on the host: --device and --vision-device do not apply");
    if (!out || !*out) return cli_usage_error("image needs --out FILE.npy");
    if (size && !preprocessed)
        return cli_usage_error("image: --size goes with --preprocessed only; the tower's input size is the model's");
    if (size && o.model) return cli_usage_error("image: give -m DIR or --size N, not both (the model fixes the size)");
    if (!o.model && !size)
        return cli_usage_error(preprocessed ? "image --preprocessed needs -m DIR or --size N"
                                            : "image needs -m DIR (a GLM-4V checkpoint)");
    mtok_vision_config vc;
    mtok_vision *vis = NULL;
    float *chw = NULL, *emb = NULL;
    int rc = 0;
    if (preprocessed && o.model) rc = mtok_vision_config_read(o.model, &vc);
    else if (!preprocessed) rc = mtok_vision_load(o.model, &vis);
    if (!rc && !size) size = vis ? mtok_vision_cfg(vis)->image : vc.image;
    if (!rc) rc = mtok_image_preprocess(image, size, &chw);
    if (!rc && preprocessed) {
        const int64_t shape[3] = {3, size, size};
        rc = write_npy_nd(out, chw, 3, shape);
        if (!rc) mtok_log(1, "wrote %s: [3, %lld, %lld] float32", out, (long long)size, (long long)size);
    } else if (!rc) {
        const mtok_vision_config *c = mtok_vision_cfg(vis);
        const int64_t shape[2] = {mtok_vision_out_rows(c), c->lm_hidden};
        if (!(emb = malloc((size_t)shape[0] * (size_t)shape[1] * sizeof *emb)))
            rc = mtok_err(MTOK_ERESOURCE, "out of memory for %lld x %lld embeddings", (long long)shape[0],
                          (long long)shape[1]);
        const mtok_vision_params vp = {.threads = o.threads, .progress_s = cli_progress_interval(&o),
                                       .device = o.vision_device ? o.vision_device : o.device};
        const double t0 = mtok_progress_now();
        if (!rc) rc = mtok_vision_forward(vis, &vp, chw, emb);
        const double dt = mtok_progress_now() - t0;
        if (!rc)
            mtok_log(1, "vision tower: %.3f s for one image, %.2f GFLOP (%.1f GFLOP/s)", dt,
                     mtok_vision_flops(c) / 1e9, mtok_vision_flops(c) / 1e9 / (dt > 0 ? dt : 1e-9));
        if (!rc) rc = write_npy_nd(out, emb, 2, shape);
        if (!rc) mtok_log(1, "wrote %s: [%lld, %lld] float32", out, (long long)shape[0], (long long)shape[1]);
    }
    free(emb);
    free(chw);
    mtok_vision_free(vis);
    return rc ? cli_fail(rc) : 0;
}
