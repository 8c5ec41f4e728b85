/* model.h — the model contract inside libmtok: config, weights (views into mmapped safetensors),
 * in the manner of calm's model.h. Both checkpoint namings load into these structs; the forward
 * pass (core/forward.c) only ever sees them. */
#ifndef MTOK_MODEL_H
#define MTOK_MODEL_H

#include <pthread.h>

#include "mtok.h"
#include "../kernels/kernels.h"

typedef struct {
    mk_tensor attn_norm; /* [hidden] */
    mk_tensor wq;        /* [n_heads*head_dim, hidden]   (rows of the fused QKV in chatglm naming) */
    mk_tensor wk;        /* [n_kv_groups*head_dim, hidden] */
    mk_tensor wv;        /* [n_kv_groups*head_dim, hidden] */
    mk_tensor bq;        /* [n_heads*head_dim] (data NULL when the model has no QKV bias) */
    mk_tensor bk;        /* [n_kv_groups*head_dim] */
    mk_tensor bv;        /* [n_kv_groups*head_dim] */
    mk_tensor wo;        /* [hidden, n_heads*head_dim] dense / o_proj, no bias */
    mk_tensor mlp_norm;  /* [hidden] */
    mk_tensor w_gate;    /* [ffn, hidden] first half of dense_h_to_4h / gate_up_proj */
    mk_tensor w_up;      /* [ffn, hidden] second half */
    mk_tensor w_down;    /* [hidden, ffn] */
} mtok_layer;

typedef struct {
    mk_tensor embed;      /* [vocab, hidden] */
    mtok_layer *layers;   /* [n_layers] */
    mk_tensor final_norm; /* [hidden] */
    mk_tensor output;     /* [vocab, hidden] untied LM head */
} mtok_weights;

/* One mmapped safetensors file. */
typedef struct {
    char *path;
    void *map;
    size_t size;
    size_t data_off; /* 8 + header length */
} mtok_shard;

/* What identifies one version of a file: a file rewritten in place changes its ctime even when its
 * mtime is set back, a replaced file its inode. */
typedef struct {
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
} mtok_file_key;

/* The identity of saved KV files (core/identity.c), computed on first use and kept for the model's
 * life; keys: each shard as it was when mapped [n_shards]. */
typedef struct {
    pthread_mutex_t lock;
    int done;
    uint64_t identity;
    mtok_file_key *keys;
} mtok_identity_memo;

/* This rank's slice of a tensor-parallel split (core/tp.c); size 1 when the model is whole. Heads
 * [h0, h0+H) of KV groups [g0, g0+G); ffn rows [f0, f0+F); vocabulary rows [v0, v0+V). When the
 * split is wider than the KV groups, several ranks hold the same group (K/V replicated). */
typedef struct {
    int rank, size;
    int64_t h0, H, g0, G, f0, F, v0, V;
} mtok_tp_slice;

struct mtok_model {
    char *dir;
    mtok_config cfg;
    mtok_weights w;
    mtok_tp_slice tp;
    void **owned;  /* buffers of column slices copied out of the mapping (tensor parallel) */
    int n_owned;
    mtok_shard *shards;
    int n_shards;
    uint64_t fingerprint;
    uint64_t weight_bytes;
    mtok_identity_memo *id_memo;
};

/* core/config.c: parse DIR/config.json into cfg (both namings); rope correction applied there.
 * path is used in messages. */
int mtok_config_parse(const char *path, const char *json_text, size_t len, const mtok_load_params *p,
                      mtok_config *cfg);

/* core/identity.c: the identity a saved KV file carries: the fingerprint combined with a hash of
 * every byte of every shard file, remembered per shard in $XDG_CACHE_HOME/mtok (else ~/.cache/mtok)
 * and computed once per model with `threads` OpenMP threads (0: OpenMP's default). Errors: MTOK_EINPUT
 * (a shard cannot be read), MTOK_ERESOURCE. */
int mtok_model_identity(const mtok_model *m, int threads, uint64_t *out);
/* The key of the file at path now (0, or -errno). */
int mtok_file_key_of(const char *path, mtok_file_key *k);

/* core/tp.c: replaces the whole-model views in m->w by rank's slices of a size-way split (row
 * slices stay views into the mapping; the column slices of the dense and down projections are
 * copied, so pages of other ranks' slices are never touched). size 1: records the whole model. */
int mtok_tp_apply(mtok_model *m, int rank, int size);
/* [n0, n0+n) of `total` split `size` ways as evenly as possible (the first total%size get one more):
 * the split of ffn rows and vocabulary rows that mtok_tp_apply makes and dist_gather_logits undoes. */
void mtok_tp_split(int64_t total, int rank, int size, int64_t *n0, int64_t *n);

#endif
