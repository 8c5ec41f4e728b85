/* test_backend.c — the backend contract's per-tensor hook (core/backend.h, docs/BACKEND.md).
 *
 * On the g2-chatglm fixture, run in chunks of 8 tokens:
 *   - the hook sees every op of every layer of every chunk, in the model's order, with the shapes and
 *     positions the contract states, all in host memory (the CPU backend);
 *   - a hook changes nothing: the logits equal a run without one, bit for bit;
 *   - layer 0's attention output (o/d) and the final norm, dumped through the hook, agree with the
 *     independent numpy reference tests/ref/glm_ref.py (run by python3; exit 77 without numpy).
 * argv[1] = source dir, argv[2] = build dir (tests/CMakeLists.txt). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "tests/check.h"

#define N_TOK 37 /* 5 chunks of 8, the last one partial */
#define CHUNK 8

/* The names every layer reports, in order (core/backend.h). */
static const char *const layer_ops[] = {"attn_norm", "q",      "k",        "v",        "attn",   "attn_proj",
                                        "attn_res",  "mlp_norm", "mlp_act", "mlp_proj", "mlp_res"};
#define N_LAYER_OPS ((int)(sizeof layer_ops / sizeof layer_ops[0]))

typedef struct {
    int64_t n_layers, hidden, qd;
    int64_t seen;         /* tensors reported so far */
    int64_t chunk_pos;    /* position of the current chunk's row 0 */
    int bad_order;        /* first mismatch reported, later ones counted */
    float *attn0, *fnorm; /* [N_TOK][qd], [N_TOK][hidden], filled by position */
} recorder;

/* The name expected as tensor i of a chunk: embed, the layers' ops, final_norm, logits. */
static const char *expected(const recorder *r, int64_t i, int64_t *layer) {
    *layer = -1;
    if (i == 0) return "embed";
    i--;
    if (i < r->n_layers * N_LAYER_OPS) {
        *layer = i / N_LAYER_OPS;
        return layer_ops[i % N_LAYER_OPS];
    }
    i -= r->n_layers * N_LAYER_OPS;
    return i == 0 ? "final_norm" : i == 1 ? "logits" : "(nothing)";
}

static void hook(const mtok_hook_tensor *t, void *user) {
    recorder *r = user;
    const int64_t per_chunk = 3 + r->n_layers * N_LAYER_OPS;
    int64_t layer;
    const char *want = expected(r, r->seen % per_chunk, &layer);
    if (r->seen % per_chunk == 0) r->chunk_pos = t->pos;
    r->seen++;
    if (strcmp(t->name, want) || t->layer != layer) {
        if (!r->bad_order++)
            CHECK(0, "tensor %lld: got %s of layer %lld, expected %s of layer %lld", (long long)(r->seen - 1),
                  t->name, (long long)t->layer, want, (long long)layer);
        return;
    }
    CHECK(t->mem == MTOK_MEM_HOST && t->data, "%s: not a host tensor", t->name);
    CHECK(t->pos == r->chunk_pos && t->pos % CHUNK == 0, "%s: position %lld in the chunk at %lld", t->name,
          (long long)t->pos, (long long)r->chunk_pos);
    const int64_t rows = N_TOK - t->pos < CHUNK ? N_TOK - t->pos : CHUNK;
    CHECK(t->rows == rows, "%s: %lld rows, expected %lld", t->name, (long long)t->rows, (long long)rows);
    if (!strcmp(t->name, "attn") && t->layer == 0) {
        CHECK(t->cols == r->qd, "attn: %lld columns", (long long)t->cols);
        memcpy(r->attn0 + t->pos * r->qd, t->data, (size_t)(t->rows * t->cols) * sizeof(float));
    }
    if (!strcmp(t->name, "final_norm")) {
        CHECK(t->cols == r->hidden, "final_norm: %lld columns", (long long)t->cols);
        memcpy(r->fnorm + t->pos * r->hidden, t->data, (size_t)(t->rows * t->cols) * sizeof(float));
    }
}

static int read_tokens(const char *path, int32_t *ids, int n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int i = 0;
    while (i < n && fscanf(f, "%d,", &ids[i]) == 1) i++;
    fclose(f);
    return i == n ? 0 : -1;
}

static int write_f32(const char *path, const float *x, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const size_t w = fwrite(x, sizeof *x, n, f);
    return fclose(f) || w != n ? -1 : 0;
}

/* The comparison with the reference: per row cosine >= 0.9999 and max |Δ| <= 2e-2 * max |ref|
 * (mtok keeps K and V in bf16, so does the reference here). */
static const char *const compare_py =
    "import sys, numpy as np\n"
    "src, d, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])\n"
    "sys.path.insert(0, src + '/tests/ref')\n"
    "import glm_ref as G\n"
    "m = G.load_model(model)\n"
    "toks = G.read_tokens(src + '/tests/data/models/tokens.txt')[:n]\n"
    "cap = {}\n"
    "G.forward(m, toks, kv_bf16=True, hook=lambda name, li, x: cap.__setitem__((name, li), np.array(x)))\n"
    "fn = G.rms_norm(cap[('layer_out', m.cfg.n_layers - 1)], m.globals()['final_norm'].astype(np.float64), m.cfg.eps)\n"
    "bad = 0\n"
    "for name, ref in (('attn0', cap[('attn_out', 0)]), ('final_norm', fn)):\n"
    "    got = np.fromfile(d + '/' + name + '.f32', dtype=np.float32).reshape(ref.shape).astype(np.float64)\n"
    "    cos = np.sum(got * ref, 1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-300)\n"
    "    rel = np.max(np.abs(got - ref), 1) / np.maximum(np.max(np.abs(ref), 1), 1e-300)\n"
    "    ok = cos.min() >= 0.9999 and rel.max() <= 2e-2\n"
    "    print('%-10s vs numpy reference: min cosine %.7f, max rel err %.2e -> %s'\n"
    "          % (name, cos.min(), rel.max(), 'pass' if ok else 'FAIL'))\n"
    "    bad += not ok\n"
    "sys.exit(1 if bad else 0)\n";

static int run(const mtok_model *m, const int32_t *ids, recorder *r, float *logits) {
    mtok_session *s = NULL;
    int rc = mtok_session_create(m, &(mtok_session_params){.prefill_chunk = CHUNK, .threads = 2}, &s);
    if (rc) return rc;
    if (r) mtok_session_set_hook(s, hook, r);
    rc = mtok_forward(s, ids, N_TOK, logits);
    mtok_session_free(s);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 3) return 1;
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/tests/data/models/g2-chatglm", argv[1]);
    mtok_set_log_level(0);
    int32_t ids[N_TOK];
    snprintf(path, sizeof path, "%s/tests/data/models/tokens.txt", argv[1]);
    if (read_tokens(path, ids, N_TOK)) {
        fprintf(stderr, "%s: cannot read %d token ids\n", path, N_TOK);
        return 1;
    }
    mtok_model *m = NULL;
    if (mtok_model_load(dir, NULL, &m)) {
        fprintf(stderr, "load %s: %s\n", dir, mtok_errmsg());
        return 1;
    }
    const mtok_config *c = mtok_model_config(m);
    recorder r = {.n_layers = c->n_layers, .hidden = c->hidden, .qd = c->n_heads * c->head_dim};
    r.attn0 = calloc((size_t)(N_TOK * r.qd), sizeof(float));
    r.fnorm = calloc((size_t)(N_TOK * r.hidden), sizeof(float));
    float *with = malloc((size_t)(N_TOK * c->vocab) * sizeof(float));
    float *without = malloc((size_t)(N_TOK * c->vocab) * sizeof(float));
    if (!r.attn0 || !r.fnorm || !with || !without) return 1;

    int rc = run(m, ids, &r, with);
    CHECK(!rc, "forward with a hook: %s", mtok_errmsg());
    const int64_t chunks = (N_TOK + CHUNK - 1) / CHUNK;
    CHECK(r.seen == chunks * (3 + r.n_layers * N_LAYER_OPS), "the hook saw %lld tensors, expected %lld",
          (long long)r.seen, (long long)(chunks * (3 + r.n_layers * N_LAYER_OPS)));
    rc = run(m, ids, NULL, without);
    CHECK(!rc, "forward without a hook: %s", mtok_errmsg());
    CHECK(!memcmp(with, without, (size_t)(N_TOK * c->vocab) * sizeof(float)), "the hook changed the logits");

    /* against the numpy reference */
    int ref_rc = 0;
    if (system("python3 -c 'import numpy' >/dev/null 2>&1")) {
        printf("numpy reference: SKIP (python3 with numpy not found)\n");
        ref_rc = 77;
    } else {
        char d[1100], cmd[4400];
        snprintf(d, sizeof d, "%s/test_backend.d", argv[2]);
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", d);
        CHECK(!system(cmd), "%s failed", cmd);
        snprintf(path, sizeof path, "%s/compare.py", d);
        FILE *f = fopen(path, "w");
        CHECK(f && fputs(compare_py, f) >= 0 && !fclose(f), "cannot write %s", path);
        snprintf(path, sizeof path, "%s/attn0.f32", d);
        CHECK(!write_f32(path, r.attn0, (size_t)(N_TOK * r.qd)), "cannot write %s", path);
        snprintf(path, sizeof path, "%s/final_norm.f32", d);
        CHECK(!write_f32(path, r.fnorm, (size_t)(N_TOK * r.hidden)), "cannot write %s", path);
        snprintf(cmd, sizeof cmd, "python3 '%s/compare.py' '%s' '%s' '%s' %d", d, argv[1], d, dir, N_TOK);
        fflush(stdout);
        CHECK(!system(cmd), "the hooked tensors differ from the numpy reference (%s)", cmd);
    }
    free(r.attn0), free(r.fnorm), free(with), free(without);
    mtok_model_free(m);
    if (check_failures) return 1;
    printf("backend hook: all checks passed\n");
    return ref_rc;
}
