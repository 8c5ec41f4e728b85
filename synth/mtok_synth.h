/* mtok_synth.h — synthetic checkpoints in the real format (mtok synth): config.json, safetensors
 * (one file or shards + index) and a trained BPE tokenizer.model, for every preset shape. Its own
 * library (mtok_synth) above libmtok and eval (the needle preset's weights and corpus are
 * eval/needle.c and eval/corpus_kjv.c); nothing in core/ calls it. Errors as in base/mtok_base.h. */
#ifndef MTOK_SYNTH_H
#define MTOK_SYNTH_H

#include "../core/mtok.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *preset;   /* a mtok_synth_presets() name: glm4-tiny, glm4v-tiny (GLM-4V), glm4-9b-chat, ... */
    const char *out_dir;
    mtok_naming naming;
    int shards;           /* 1: model.safetensors; >1: model-0000i-of-0000n + index */
    uint64_t seed;
    mtok_dtype dtype;
} mtok_synth_params;
int mtok_synth(const mtok_synth_params *p);
/* Lists the preset names, one per line, into a static string. */
const char *mtok_synth_presets(void);

#ifdef __cplusplus
}
#endif
#endif
