/* safetensors.h — the checkpoint reader between core/safetensors.c and core/loader.c (internal).
 * mtok_ckpt is the validated tensor table of a checkpoint directory (single file or shards + index);
 * the shards stay mmapped in the model for as long as it lives. */
#ifndef MTOK_SAFETENSORS_H
#define MTOK_SAFETENSORS_H

#include <xxhash.h>

#include "model.h"

typedef struct mtok_ckpt mtok_ckpt;

/* Opens and validates every shard of DIR; the shard mappings go to *shards (owned by the caller). */
int mtok_ckpt_open(const char *dir, mtok_shard **shards, int *n_shards, mtok_ckpt **out);
void mtok_ckpt_close(mtok_ckpt *st);
void mtok_shards_free(mtok_shard *s, int n);
int mtok_ckpt_has(const mtok_ckpt *st, const char *name);
/* Binds NAME with the expected shape (rows = 1 for 1-D); *file names the shard for messages. */
int mtok_ckpt_bind(mtok_ckpt *st, const char *name, int64_t rows, int64_t cols, mk_tensor *out, const char **file);
/* Binds NAME whose shape is exactly want[0..nd) (nd <= 8) as the 2-D view [want[0], product of the
 * rest]: convolution kernels and other tensors of more than two dimensions (GLM-4V's tower). */
int mtok_ckpt_bind_nd(mtok_ckpt *st, const char *name, int nd, const int64_t *want, mk_tensor *out,
                      const char **file);
/* Feeds the sorted tensor table (name, dtype, shape) into a fingerprint hash. */
int mtok_ckpt_hash(const mtok_ckpt *st, XXH3_state_t *h);
void mtok_ckpt_log_unused(const mtok_ckpt *st, const char *ignored);
uint64_t mtok_ckpt_bound_bytes(const mtok_ckpt *st);

#endif
