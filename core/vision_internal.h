/* vision_internal.h — the vision tower's weights, shared by core/vision_load.c (binding) and
 * core/vision.c (the forward pass). Shapes as in vision_load.c's header comment. */
#ifndef MTOK_VISION_INTERNAL_H
#define MTOK_VISION_INTERNAL_H

#include "model.h"
#include "vision.h"

typedef struct {
    mk_tensor w_qkv, b_qkv;   /* [3E, E], [3E]: rows [Q heads | K heads | V heads], head-major inside */
    mk_tensor w_o, b_o;       /* [E, E], [E] */
    mk_tensor w_fc1, b_fc1;   /* [F, E], [F] */
    mk_tensor w_fc2, b_fc2;   /* [E, F], [E] */
    float *ln_attn_w, *ln_attn_b; /* [E] "input_layernorm": normalises the attention's output */
    float *ln_mlp_w, *ln_mlp_b;   /* [E] "post_attention_layernorm": normalises the MLP's output */
} vis_layer;

struct mtok_vision {
    mtok_vision_config cfg;
    mk_tensor w_patch;        /* [E, 3*P*P]: the [E, 3, P, P] kernel, inner order (channel, ky, kx) */
    float *b_patch;           /* [E] */
    float *cls;               /* [E] */
    float *pos;               /* [grid^2 + 1][E] */
    vis_layer *layers;        /* [n_layers] */
    mk_tensor w_conv, b_conv; /* [L, E*4]: the [L, E, 2, 2] kernel, inner order (channel, ky, kx); [L] */
    mk_tensor w_proj;         /* [L, L] GLU input projection, no bias */
    float *ln_glu_w, *ln_glu_b; /* [L] */
    mk_tensor w_gate, w_up;   /* [LF, L] each: SiLU(gate) x up */
    mk_tensor w_down;         /* [L, LF] */
    float *boi, *eoi;         /* [L] */
    mtok_shard *shards;
    int n_shards;
    void **owned;             /* fp32 copies of the small tensors */
    int n_owned;
};

/* Copies t (any dtype, rows x cols elements) into an fp32 array that v owns. */
int vis_own_f32(mtok_vision *v, const mk_tensor *t, float **out);

#endif
