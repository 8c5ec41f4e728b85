/* needle.c — the planted needle model (docs/DESIGN.md §5, docs/NEEDLE.md).
 *
 * A GLM-4-architecture checkpoint whose last layer holds one retrieval head:
 *
 *   residual coordinates  [0, K)          "question key"  — set by the embedding of <|ask:k|>
 *                         [K, 2K)         "fact key"      — set by the embedding of <|fact:k:v|>
 *                         [2K, 2K+V)      "fact value"    — set by the embedding of <|fact:k:v|>
 *                         [2K+V, 2K+2V)   "answer"        — written by the retrieval head
 *                         the rest        free: haystack tokens live here
 *
 *   head 0 of the last layer, on the non-rotary half of head_dim (dims D/2..D-1, so position does
 *   not matter): q[D/2+k] reads "question key" k, k[D/2+k] reads "fact key" k (separate directions,
 *   so the question does not match itself), v[D/2+v] reads "fact value" v, and the output
 *   projection writes head 0's value dim D/2+v into "answer" v. The output row of <|val:v|> reads
 *   "answer" v. Everything else is small noise: layer 0, the other heads, the MLPs, the norms, the
 *   rotary half, so every part of the forward pass still runs and still moves the numbers.
 *
 * The gains below give a needle score of ~35 against haystack scores of std ~1.6 (docs/NEEDLE.md
 * has the arithmetic and the measured logit margins): a softmax over 1M haystack tokens needs
 * ln(1e6) ~ 14 plus the haystack's spread, and "tens, not hundreds" keeps attention-scale bugs
 * visible. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "eval.h"

#define NK MEV_NEEDLE_KEYS
#define NV MEV_NEEDLE_VALUES

/* residual coordinates */
#define C_ASK(k) (k)
#define C_FKEY(k) (NK + (k))
#define C_FVAL(v) (2 * NK + (v))
#define C_ANS(v) (2 * NK + NV + (v))
#define C_FREE0 (2 * NK + 2 * NV)

/* planted gains (see the header comment and docs/NEEDLE.md) */
#define A_EMB 16.0f  /* planted embedding coordinates */
#define G_Q 1.6f
#define G_K 1.6f
#define G_V 2.0f
#define G_O 1.85f
#define G_OUT 2.0f

void mev_needle_token_name(int j, char *buf, size_t cap) {
    if (j < NK * NV) snprintf(buf, cap, "<|fact:%d:%d|>", j / NV, j % NV);
    else if (j < NK * NV + NK) snprintf(buf, cap, "<|ask:%d|>", j - NK * NV);
    else snprintf(buf, cap, "<|val:%d|>", j - NK * NV - NK);
}

int mev_needle_check(const mev_needle_shape *s) {
    if (s->head_dim != 128 || s->head_dim / 2 < NV || s->head_dim / 2 < NK)
        return mtok_err(MTOK_EUSAGE, "needle model: head_dim must be 128 (got %lld)", (long long)s->head_dim);
    if (s->hidden < C_FREE0 + 32)
        return mtok_err(MTOK_EUSAGE, "needle model: hidden %lld leaves no free residual dims (need >= %d)",
                        (long long)s->hidden, C_FREE0 + 32);
    if (s->layers < 2 || s->heads < 1 || s->groups < 1 || s->heads % s->groups)
        return mtok_err(MTOK_EUSAGE, "needle model: needs >= 2 layers and heads divisible by KV groups");
    if (s->first_extra + MEV_NEEDLE_N_EXTRA > s->vocab)
        return mtok_err(MTOK_EUSAGE, "needle model: vocab %lld too small for %d extra tokens after id %lld",
                        (long long)s->vocab, MEV_NEEDLE_N_EXTRA, (long long)s->first_extra);
    return 0;
}

static float rsq(int64_t n) { return 1.0f / sqrtf((float)n); }

float mev_needle_weight(const mev_needle_shape *s, mev_wkind kind, int layer, int64_t row, int64_t col, float z) {
    const int64_t E = s->hidden, D = s->head_dim, half = D / 2;
    const int planted = layer == (int)s->layers - 1; /* the retrieval head lives in the last layer */
    const int64_t fact0 = s->first_extra, ask0 = fact0 + NK * NV, val0 = ask0 + NK;
    const int reserved = col < C_FREE0;
    switch (kind) {
    case MEV_W_EMBED: {
        const int64_t id = row;
        if (id >= fact0 && id < fact0 + NK * NV) {
            int64_t k = (id - fact0) / NV, v = (id - fact0) % NV;
            if (col == C_FKEY(k) || col == C_FVAL(v)) return A_EMB;
            return reserved ? 0.02f * z : 0.5f * z;
        }
        if (id >= ask0 && id < ask0 + NK) {
            if (col == C_ASK(id - ask0)) return A_EMB;
            return reserved ? 0.02f * z : 0.5f * z;
        }
        return reserved ? 0.02f * z : z; /* haystack, template and answer tokens: free dims only */
    }
    case MEV_W_ATTN_NORM:
    case MEV_W_MLP_NORM:
    case MEV_W_FINAL_NORM:
        return 1.0f + 0.02f * z;
    case MEV_W_Q:
    case MEV_W_K: {
        /* rows: head (q) or group (k) blocks of D; head 0 / group 0 carries the circuit */
        int64_t blk = row / D, d = row % D;
        if (planted && blk == 0 && d >= half) {
            int64_t k = d - half;
            int64_t src = kind == MEV_W_Q ? C_ASK(k) : C_FKEY(k);
            if (k < NK && col == src) return kind == MEV_W_Q ? G_Q : G_K;
            return 0.05f * rsq(E) * z;
        }
        return 1.0f * rsq(E) * z;
    }
    case MEV_W_V: {
        int64_t blk = row / D, d = row % D;
        if (planted && blk == 0 && d >= half) {
            int64_t v = d - half;
            if (v < NV && col == C_FVAL(v)) return G_V;
            return 0.05f * rsq(E) * z;
        }
        return 1.0f * rsq(E) * z;
    }
    case MEV_W_QB:
    case MEV_W_KB:
    case MEV_W_VB: {
        int64_t blk = row / D, d = row % D;
        if (planted && blk == 0 && d >= half) return 0.0f;
        return (kind == MEV_W_VB ? 0.05f : 0.2f) * z;
    }
    case MEV_W_DENSE: {
        /* [hidden][heads*D]: head 0's value dims feed only the answer coordinates */
        int64_t h = col / D, d = col % D;
        if (planted && h == 0 && d >= half) {
            int64_t v = d - half;
            return (v < NV && row == C_ANS(v)) ? G_O : 0.0f;
        }
        return 0.3f * rsq(s->heads * D) * z;
    }
    case MEV_W_GATE:
    case MEV_W_UP:
        return 1.0f * rsq(E) * z;
    case MEV_W_DOWN:
        return 0.3f * rsq(s->ffn) * z;
    case MEV_W_OUTPUT: {
        const int64_t id = row;
        if (id >= val0 && id < val0 + NV) return col == C_ANS(id - val0) ? G_OUT : 0.3f * rsq(E) * z;
        return 1.0f * rsq(E) * z;
    }
    default:
        return 0.0f;
    }
}

int mev_needle_ids_find(const mtok_tokenizer *t, mev_needle_ids *out) {
    memset(out, 0, sizeof *out);
    out->fact0 = mtok_token_special(t, "<|fact:0:0|>");
    out->ask0 = mtok_token_special(t, "<|ask:0|>");
    out->val0 = mtok_token_special(t, "<|val:0|>");
    out->is_needle = out->fact0 >= 0 && out->ask0 == out->fact0 + NK * NV && out->val0 == out->ask0 + NK;
    return 0;
}
