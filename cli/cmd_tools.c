/* cmd_tools.c — mtok tokenize, logits, info, synth. */
#include <errno.h>
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cli.h"
#include "../core/vision.h"
#include "../kernels/kernels.h"
#include "../kvstore/kvstore.h"
#include "../parallel/parallel.h"
#include "../synth/mtok_synth.h"

/* Reads a --messages file: a JSON array of {"role", "content", "metadata"?, "image"?} (OpenAI's "tool"
 * role is GLM's "observation"; "image": true marks the user message that carries GLM-4V's image). The
 * strings stay owned by *root. */
static int read_messages(const char *path, json_t **root, mtok_message **msgs, size_t *n, long *image_msg) {
    json_error_t je;
    *image_msg = -1;
    *root = json_load_file(path, 0, &je);
    *msgs = NULL, *n = 0;
    if (!*root) return mtok_err(MTOK_EINPUT, "%s:%d:%d: not valid JSON: %s", path, je.line, je.column, je.text);
    if (!json_is_array(*root))
        return mtok_err(MTOK_EINPUT, "%s: expected a JSON array of messages {\"role\", \"content\", \"metadata\"?}", path);
    size_t cnt = json_array_size(*root), i;
    *msgs = calloc(cnt + 1, sizeof **msgs);
    if (!*msgs) return mtok_err(MTOK_ERESOURCE, "out of memory");
    json_t *m;
    json_array_foreach(*root, i, m) {
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content"),
               *meta = json_object_get(m, "metadata"), *image = json_object_get(m, "image");
        if (!json_is_object(m)) return mtok_err(MTOK_EINPUT, "%s: message %zu is not an object", path, i);
        if (!json_is_string(role))
            return mtok_err(MTOK_EINPUT, "%s: message %zu has no \"role\" string", path, i);
        if (content && !json_is_null(content) && !json_is_string(content))
            return mtok_err(MTOK_EINPUT, "%s: message %zu: \"content\" must be a string", path, i);
        if (meta && !json_is_null(meta) && !json_is_string(meta))
            return mtok_err(MTOK_EINPUT, "%s: message %zu: \"metadata\" must be a string", path, i);
        if (image && !json_is_boolean(image))
            return mtok_err(MTOK_EINPUT, "%s: message %zu: \"image\" must be true or false", path, i);
        if (json_is_true(image) && *image_msg >= 0)
            return mtok_err(MTOK_EINPUT, "%s: one image per conversation (GLM-4V takes one): messages %ld and %zu are "
                            "both marked \"image\"", path, *image_msg, i);
        if (json_is_true(image)) *image_msg = (long)i;
        const char *r = json_string_value(role);
        (*msgs)[i] = (mtok_message){!strcmp(r, "tool") ? "observation" : r, json_string_value(meta),
                                    json_string_value(content), NULL};
    }
    *n = cnt;
    return 0;
}

/* The ids of a rendered conversation: --tools go on the first message when it is a system message, else
 * on a system message of their own before the rest. */
static int tokenize_messages(const mtok_tokenizer *tok, const char *mpath, const char *tpath, int gen,
                             const int32_t *image_ids, mtok_ids *ids) {
    json_t *root = NULL;
    mtok_message *msgs = NULL;
    size_t n = 0;
    char *tools = NULL;
    size_t tlen = 0;
    long image_msg;
    int rc = read_messages(mpath, &root, &msgs, &n, &image_msg);
    if (!rc && tpath) rc = cli_read_file(tpath, &tools, &tlen);
    if (!rc && tools && strlen(tools) != tlen) rc = mtok_err(MTOK_EINPUT, "%s: contains a NUL byte", tpath);
    if (!rc && tools) {
        if (n && !strcmp(msgs[0].role, "system")) {
            msgs[0].tools_json = tools;
        } else {
            memmove(msgs + 1, msgs, n * sizeof *msgs);
            msgs[0] = (mtok_message){"system", NULL, NULL, tools};
            n++;
            if (image_msg >= 0) image_msg++; /* the marked message moved down by one */
        }
    }
    if (!rc) rc = mtok_chat_encode_ex(tok, msgs, n, gen, image_msg, image_ids, ids);
    free(tools);
    free(msgs);
    json_decref(root);
    return rc;
}

/* ---- mtok tokenize -m DIR (--text T | --text-file F | --messages F [--tools T] [--generation-prompt])
 *      [--special] ---- */
int cmd_tokenize(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    const char *text = NULL, *file = NULL, *messages = NULL, *tools = NULL;
    int special = 0, gen = 0;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(argv[i], "--text")) {
            if (!(text = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--text-file")) {
            if (!(file = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--messages")) {
            if (!(messages = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--tools")) {
            if (!(tools = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--generation-prompt")) {
            gen = 1;
        } else if (!strcmp(argv[i], "--special")) {
            special = 1;
        } else
            return cli_usage_error("tokenize: unknown option '%s'", argv[i]);
    }
    if (!o.model || (!!text + !!file + !!messages) != 1)
        return cli_usage_error("tokenize needs -m DIR and one of --text, --text-file, --messages");
    if ((tools || gen) && !messages) return cli_usage_error("--tools and --generation-prompt need --messages");
    if (special && messages) return cli_usage_error("--special does not apply to --messages (roles are ids already)");
    mtok_tokenizer *tok = NULL;
    char *buf = NULL;
    size_t len = text ? strlen(text) : 0;
    mtok_ids ids = {0};
    int rc = mtok_tokenizer_load(o.model, &tok);
    /* a GLM-4V checkpoint's config names the image placeholder's ids; other checkpoints use the
     * tokenizer's (a message marked "image" is an error only where the template refuses it) */
    mtok_vision_config vc = {0};
    const int vision = messages && mtok_vision_config_present(o.model) == 1;
    if (!rc && vision) rc = mtok_vision_config_read(o.model, &vc);
    const int32_t image_ids[3] = {vision ? (int32_t)vc.boi_id : 0, vision ? (int32_t)vc.pad_id : 0,
                                  vision ? (int32_t)vc.eoi_id : 0};
    if (!rc && messages) rc = tokenize_messages(tok, messages, tools, gen, vision ? image_ids : NULL, &ids);
    else if (!rc) {
        if (file) rc = cli_read_file(file, &buf, &len);
        if (!rc) rc = mtok_tokenize(tok, file ? buf : text, len, special, &ids);
    }
    if (!rc) {
        putchar('[');
        for (size_t i = 0; i < ids.n; i++) printf(i ? ", %d" : "%d", ids.v[i]);
        puts("]");
    }
    mtok_ids_free(&ids);
    free(buf);
    mtok_tokenizer_free(tok);
    return rc ? cli_fail(rc) : 0;
}

/* Parses "1,2,3" (commas, blanks or newlines between ids) into ids. Returns the exit code: 0, 1 after
 * a usage message, 3 out of memory. The forward pass checks each id against the vocabulary. */
static int parse_token_list(const char *s, mtok_ids *out) {
    char *dup = strdup(s);
    int rc = dup ? 0 : cli_fail(mtok_err(MTOK_ERESOURCE, "--tokens: out of memory"));
    for (char *save = NULL, *t = dup ? strtok_r(dup, ", \n", &save) : NULL; t && !rc; t = strtok_r(NULL, ", \n", &save)) {
        int64_t v;
        if (cli_parse_int("--tokens", t, 0, INT32_MAX, &v)) rc = 1;
        else if ((rc = mtok_ids_push(out, (int32_t)v))) rc = cli_fail(rc);
    }
    free(dup);
    return rc;
}

/* Writes a float32 [rows][cols] array in NumPy .npy format (v1.0), atomically. */
static int write_npy(const char *path, const float *data, int64_t rows, int64_t cols) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return mtok_err(MTOK_EINPUT, "%s: %s", path, strerror(errno));
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                     (long long)rows, (long long)cols);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;
    uint16_t hlen = (uint16_t)(n + pad + 1);
    int ok = fwrite("\x93NUMPY\x01\x00", 1, 8, f) == 8 && fwrite(&hlen, 2, 1, f) == 1 &&
             fwrite(hdr, 1, (size_t)n, f) == (size_t)n;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    ok = ok && fwrite(data, sizeof(float), (size_t)(rows * cols), f) == (size_t)(rows * cols);
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path)) {
        unlink(tmp);
        return mtok_err(MTOK_ERESOURCE, "%s: write failed (%s)", path, strerror(errno));
    }
    return 0;
}

/* mtok logits --messages M.json [--image F]: the conversation's ids (the image's triple on the message
 * marked "image": true, else on the first user message), expanded around the image and run by
 * mtok_vision_prefill: the logits of every row, image rows included. Without --image it runs the
 * conversation as text (a message marked "image" is then an error: its placeholder would get no image). */
static int logits_messages(const cli_common *o, const char *mpath, int gen, const char *image, const char *out) {
    json_t *root = NULL;
    mtok_message *msgs = NULL;
    size_t n = 0;
    mtok_ids ids = {0};
    float *logits = NULL;
    mtok_vision_layout lay = {0};
    mtok_vision_config vc = {0};
    cli_loaded L;
    int loaded = 0;
    long marked = -1;
    int rc = read_messages(mpath, &root, &msgs, &n, &marked);
    if (!rc && marked >= 0 && !image)
        rc = mtok_err(MTOK_EUSAGE, "%s: message %ld is marked \"image\": give --image FILE", mpath, marked);
    for (size_t i = 0; !rc && image && marked < 0 && i < n; i++)
        if (!strcmp(msgs[i].role, "user")) marked = (long)i;
    if (!rc && image && marked < 0)
        rc = mtok_err(MTOK_EINPUT, "%s: --image needs a user message to carry it; there is none", mpath);
    if (!rc && image) {
        rc = mtok_vision_config_present(o->model);
        if (rc == 0)
            rc = mtok_err(MTOK_EINPUT, "%s: --image needs a GLM-4V checkpoint, and its config.json has no vision_config",
                          o->model);
        else if (rc == 1) rc = mtok_vision_config_read(o->model, &vc);
    }
    if (!rc) {
        rc = cli_load(o, 1, &L);
        loaded = !rc;
    }
    const int32_t image_ids[3] = {(int32_t)vc.boi_id, (int32_t)vc.pad_id, (int32_t)vc.eoi_id};
    if (!rc) rc = mtok_chat_encode_ex(L.tok, msgs, n, gen, marked, image ? image_ids : NULL, &ids);
    if (!rc && !image) {
        const int64_t V = mtok_model_config(L.model)->vocab;
        if (!(logits = malloc(ids.n * (size_t)V * sizeof *logits)))
            rc = mtok_err(MTOK_ERESOURCE, "logits: out of memory for %zu x %lld floats", ids.n, (long long)V);
        if (!rc) rc = mtok_forward(L.sess, ids.v, (int64_t)ids.n, logits);
        if (!rc) rc = write_npy(out, logits, (int64_t)ids.n, V);
        if (!rc) mtok_log(1, "wrote %s: [%zu, %lld] float32", out, ids.n, (long long)V);
    } else if (!rc) {
        const mtok_vision_prefill_params pp = {.model_dir = o->model, .image_path = image, .ids = ids.v,
                                               .n = (int64_t)ids.n,
                                               .vision = {.threads = o->threads,
                                                          .progress_s = cli_progress_interval(o),
                                                          .device = o->vision_device}};
        rc = mtok_vision_prefill(L.sess, &pp, &lay, &logits);
        const int64_t V = mtok_model_config(L.model)->vocab;
        if (!rc) rc = write_npy(out, logits, lay.n, V);
        if (!rc)
            mtok_log(1, "wrote %s: [%lld, %lld] float32 (image rows %lld..%lld)", out, (long long)lay.n, (long long)V,
                     (long long)lay.image_first, (long long)(lay.image_first + lay.image_rows - 1));
    }
    if (loaded) cli_unload(&L);
    mtok_vision_layout_free(&lay);
    free(logits);
    mtok_ids_free(&ids);
    free(msgs);
    json_decref(root);
    return rc ? cli_fail(rc) : 0;
}

/* ---- mtok logits -m DIR (--tokens 1,2,3 | --text-file F | --messages M [--generation-prompt]
 *      [--image F]) --out F.npy ---- */
int cmd_logits(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    const char *tokens = NULL, *file = NULL, *out = NULL, *messages = NULL, *image = NULL;
    int gen = 0;
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(argv[i], "--tokens")) {
            if (!(tokens = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--text-file")) {
            if (!(file = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--messages")) {
            if (!(messages = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--image")) {
            if (!(image = cli_value(argc, argv, &i))) return 1;
        } else if (!strcmp(argv[i], "--generation-prompt")) {
            gen = 1;
        } else if (!strcmp(argv[i], "--out")) {
            if (!(out = cli_value(argc, argv, &i))) return 1;
        } else
            return cli_usage_error("logits: unknown option '%s'", argv[i]);
    }
    if (!o.model || !out || (!!tokens + !!file + !!messages) != 1)
        return cli_usage_error("logits needs -m DIR, --out F.npy and one of --tokens, --text-file, --messages");
    if ((image || gen) && !messages)
        return cli_usage_error("logits: --image and --generation-prompt go with --messages (the chat template places "
                               "the image)");
    if (messages) return logits_messages(&o, messages, gen, image, out);
    cli_loaded L;
    mtok_ids ids = {0};
    char *buf = NULL;
    size_t len;
    float *logits = NULL;
    int rc = tokens ? parse_token_list(tokens, &ids) : 0;
    if (rc) {
        mtok_ids_free(&ids);
        return rc;
    }
    rc = cli_load(&o, file != NULL, &L);
    if (!rc && file) rc = cli_read_file(file, &buf, &len);
    if (!rc && file) rc = mtok_tokenize(L.tok, buf, len, 0, &ids);
    if (!rc && ids.n == 0) rc = mtok_err(MTOK_EINPUT, "logits: no tokens to run");
    int64_t V = rc ? 0 : mtok_model_config(L.model)->vocab;
    if (!rc && !(logits = malloc((size_t)ids.n * (size_t)V * sizeof(float))))
        rc = mtok_err(MTOK_ERESOURCE, "logits: out of memory for %zu x %lld floats", ids.n, (long long)V);
    if (!rc) rc = mtok_forward(L.sess, ids.v, (int64_t)ids.n, logits);
    if (!rc) rc = write_npy(out, logits, (int64_t)ids.n, V);
    if (!rc) mtok_log(1, "wrote %s: [%zu, %lld] float32", out, ids.n, (long long)V);
    free(logits);
    free(buf);
    mtok_ids_free(&ids);
    cli_unload(&L);
    return rc ? cli_fail(rc) : 0;
}

/* io_uring availability: probe the syscall directly (no ring is kept). */
static const char *io_uring_status(void) {
#ifdef SYS_io_uring_setup
    unsigned char params[120] = {0};
    long fd = syscall(SYS_io_uring_setup, 1, params);
    if (fd >= 0) {
        close((int)fd);
        return "available";
    }
    return errno == ENOSYS ? "unavailable (kernel without io_uring)"
           : errno == EPERM ? "unavailable (blocked: io_uring_disabled or seccomp)"
                            : "unavailable";
#else
    return "unavailable (no syscall number)";
#endif
}

/* Topology and the binding each rank would get (docs/PARALLEL.md), as text for rank 0 to print.
 * Under mpirun/srun every rank plans its own binding and sends it to rank 0; *follower is set on
 * the other ranks, which print nothing. */
static char *info_parallel(const cli_common *o, int *follower) {
    enum { LINE = 320, CAP = 32768 };
    char *out = calloc(1, CAP), *all = NULL, mine[LINE];
    *follower = 0;
    if (!out) return NULL;
    int n = snprintf(out, CAP, "parallel: mpi %s, nccl %s\n", mp_have_mpi() ? "built" : "not built",
                     mp_have_nccl() ? "built" : "not built");
    mp_comm *w = NULL;
    if (mp_world_init(NULL, NULL, 0, &w)) { /* e.g. launched by mpirun, built without MPI */
        snprintf(out + n, CAP - (size_t)n, "ranks: %s\n", mtok_errmsg());
        return out;
    }
    const int rank = mp_rank(w), size = mp_size(w);
    mp_bind_plan(w, o->threads, -1, mine, sizeof mine);
    int rc = (all = malloc((size_t)size * LINE)) ? mp_allgather(w, mine, LINE, all, NULL, MP_BYTE) : MTOK_ERESOURCE;
    if (rank == 0) {
        mp_topology_describe(out + n, CAP - (size_t)n);
        n = (int)strlen(out);
        n += snprintf(out + n, CAP - (size_t)n, "ranks: %d (%s)\n", size, mp_backend_name(mp_backend_of(w)));
        for (int r = 0; r < size && (size_t)n < CAP; r++)
            n += snprintf(out + n, CAP - (size_t)n, "  rank %d binding: %s\n", r,
                          rc ? (r ? "unknown" : mine) : all + (size_t)r * LINE);
    }
    *follower = rank != 0;
    free(all);
    mp_world_finalize(w);
    return out;
}

/* ---- mtok info [-m DIR] ---- */
int cmd_info(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (!r) return cli_usage_error("info: unknown option '%s'", argv[i]);
    }
    int follower;
    char *par = info_parallel(&o, &follower);
    if (follower) {
        free(par);
        return 0;
    }
    printf("mtok %s\n", MTOK_VERSION);
    const mk_isa isa = mk_isa_active();
    printf("backends: cpu (%s kernels, %d OpenMP threads)\n", mk_isa_str(isa), o.threads ? o.threads : omp_get_max_threads());
    char feat[256];
    mk_cpu_features(feat, sizeof feat);
    printf("cpu isa: %s; levels this CPU runs: scalar%s%s\n", feat[0] ? feat : "(none found)",
           mk_isa_cpu() >= MK_ISA_AVX2 ? " avx2" : "", mk_isa_cpu() >= MK_ISA_AVX512 ? " avx512" : "");
    /* which kernels run at the active level (kernels/cpu_dispatch.c) */
    const int p16 = mk_precision_active() == MK_PREC_BF16;
    printf("kernels (--isa %s, --matmul-precision %s): %s%s\n", mk_isa_str(isa), mk_precision_str(mk_precision_active()),
           isa == MK_ISA_AVX512 ? (p16 ? "matmul avx512 for bf16 W (vdpbf16ps on bf16-rounded x), avx2 for f16/f32 W; "
                                       : "matmul avx512 for bf16 W (vdpbf16ps on x split in hi + lo bf16), avx2 for "
                                         "f16/f32 W; ")
                                : "",
           isa == MK_ISA_AVX512 ? "attention avx512 for prefill (fp32 fma on widened K/V), avx2 for decode; row ops avx2"
           : isa == MK_ISA_AVX2 ? (p16 ? "matmul, attention and row ops avx2+fma (x rounded to bf16 for bf16 W)"
                                       : "matmul, attention and row ops avx2+fma (fp32 fma on widened weights)")
           : p16                ? "scalar (portable C; x rounded to bf16 for bf16 W)"
                                : "scalar (portable C)");
    char cuda[512];
    mtok_cuda_describe(cuda, sizeof cuda);
    printf("cuda: %s\n", cuda);
    if (par) fputs(par, stdout);
    free(par);
    printf("io_uring: %s\n", io_uring_status());
    char kvio[256];
    kvs_io_describe((kvs_io_kind)o.kv_io, kvio, sizeof kvio);
    printf("kv cold-tier I/O: %s\n", kvio);
    printf("cpus: %ld online\n", sysconf(_SC_NPROCESSORS_ONLN));
    if (!o.model) return 0;
    mtok_model *m = NULL;
    mtok_tokenizer *t = NULL;
    mtok_load_params lp = {.rope_base = o.rope_base};
    int rc = mtok_model_load(o.model, &lp, &m);
    if (rc) return cli_fail(rc);
    const mtok_config *c = mtok_model_config(m);
    printf("model: %s (%s naming)\n", o.model, c->naming == MTOK_NAMING_HF ? "hf" : "chatglm");
    printf("  layers %lld, hidden %lld, heads %lld x %lld, kv groups %lld, ffn %lld, vocab %lld\n",
           (long long)c->n_layers, (long long)c->hidden, (long long)c->n_heads, (long long)c->head_dim,
           (long long)c->n_kv_groups, (long long)c->ffn, (long long)c->vocab);
    printf("  rope: %lld of %lld dims, base %g (config says %g), context %lld\n", (long long)c->rope_dim,
           (long long)c->head_dim, c->rope_base, c->rope_base_config, (long long)c->max_ctx);
    printf("  weights: %s, %.3f GB mapped; KV %lld bytes/token (bf16)\n", mtok_dtype_name(c->dtype),
           (double)mtok_model_weight_bytes(m) / 1e9, (long long)(2 * c->n_layers * c->n_kv_groups * c->head_dim * 2));
    printf("  fingerprint %016llx\n", (unsigned long long)mtok_model_fingerprint(m));
    printf("  stop ids:");
    for (int i = 0; i < c->n_eos; i++) printf(" %d", c->eos_ids[i]);
    putchar('\n');
    /* GLM-4V: the vision tower's shape and cost, from config.json alone (the tower is not loaded) */
    mtok_vision_config vc;
    const int vis = mtok_vision_config_present(o.model);
    if (vis == 1 && !mtok_vision_config_read(o.model, &vc)) {
        const double E = (double)vc.hidden, F = (double)vc.ffn, P = (double)vc.patch, L = (double)vc.lm_hidden,
                     LF = (double)vc.lm_ffn, N = (double)vc.n_pos;
        /* the shapes of docs/VISION.md §2's tensor table: per layer QKV, dense, fc1, fc2 with biases and
         * two LayerNorms; patch embedding, CLS and positions; the 2x2 convolution; the GLU; boi and eoi */
        const double per_layer = 3 * E * E + 3 * E + E * E + E + 2 * E * F + F + E + 4 * E;
        const double params = vc.n_layers * per_layer + (3 * P * P * E + E) + E + N * E + (4 * E * L + L) +
                              (L * L + 2 * L + 3 * L * LF) + 2 * L;
        printf("  vision tower (GLM-4V): %lld layers, width %lld, %lld heads x %lld, mlp %lld; image %lld x %lld in "
               "patches of %lld (%lld x %lld), %lld image tokens (%lld patch rows + boi + eoi) at one position; "
               "%.0f parameters (%.2f B), %.1f GFLOP per image; boi %lld, eoi %lld\n",
               (long long)vc.n_layers, (long long)vc.hidden, (long long)vc.n_heads, (long long)vc.head_dim,
               (long long)vc.ffn, (long long)vc.image, (long long)vc.image, (long long)vc.patch, (long long)vc.grid,
               (long long)vc.grid, (long long)mtok_vision_out_rows(&vc), (long long)mtok_vision_out_rows(&vc) - 2,
               params, params / 1e9, mtok_vision_flops(&vc) / 1e9, (long long)vc.boi_id, (long long)vc.eoi_id);
    } else if (vis == 1) {
        printf("  vision tower: config.json's vision_config is not usable (%s)\n", mtok_errmsg());
    }
    rc = mtok_tokenizer_load(o.model, &t);
    if (!rc) printf("tokenizer: %lld ids (%s)\n", (long long)mtok_tokenizer_n_vocab(t), mtok_tokenizer_kind(t));
    else printf("tokenizer: none (%s)\n", mtok_errmsg());
    mtok_tokenizer_free(t);
    mtok_model_free(m);
    return 0;
}

/* ---- mtok synth --preset NAME --out DIR [--naming chatglm|hf] [--shards N] [--seed S] [--dtype D] ---- */
int cmd_synth(int argc, char **argv) {
    mtok_synth_params p = {.naming = MTOK_NAMING_CHATGLM, .shards = 0, .seed = 1, .dtype = MTOK_BF16};
    cli_common o;
    cli_common_defaults(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int64_t n;
        /* synth's own flags first: --seed here seeds the weights, not the sampler */
        int own = !strcmp(a, "--list") || !strcmp(a, "--preset") || !strcmp(a, "--out") || !strcmp(a, "--naming") ||
                  !strcmp(a, "--shards") || !strcmp(a, "--seed") || !strcmp(a, "--dtype");
        if (!own) {
            int r = cli_common_opt(&o, argc, argv, &i);
            if (r < 0) return 1;
            if (r) continue;
        }
        if (!strcmp(a, "--list")) {
            fputs(mtok_synth_presets(), stdout);
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i))) return 1;
        if (!strcmp(a, "--preset")) p.preset = v;
        else if (!strcmp(a, "--out")) p.out_dir = v;
        else if (!strcmp(a, "--naming")) {
            if (!strcmp(v, "chatglm")) p.naming = MTOK_NAMING_CHATGLM;
            else if (!strcmp(v, "hf")) p.naming = MTOK_NAMING_HF;
            else return cli_usage_error("--naming must be chatglm or hf");
        } else if (!strcmp(a, "--shards")) {
            /* the safetensors writer's limit (synth/st_write.c: 5-digit shard names) */
            if (cli_parse_int(a, v, 1, 99999, &n)) return 1;
            p.shards = (int)n;
        } else if (!strcmp(a, "--seed")) {
            if (cli_parse_u64(a, v, &p.seed)) return 1;
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "bf16")) p.dtype = MTOK_BF16;
            else if (!strcmp(v, "f16")) p.dtype = MTOK_F16;
            else if (!strcmp(v, "f32")) p.dtype = MTOK_F32;
            else return cli_usage_error("--dtype must be bf16, f16 or f32");
        } else
            return cli_usage_error("synth: unknown option '%s'", a);
    }
    if (!p.preset || !p.out_dir) return cli_usage_error("synth needs --preset NAME and --out DIR (--list for presets)");
    int rc = mtok_synth(&p);
    if (rc) return cli_fail(rc);
    printf("%s\n", p.out_dir);
    return 0;
}
