/* sampler.c — greedy, temperature, top-k, top-p and repetition-penalty sampling.
 *
 * Order of operations (as in Hugging Face's generate and llama.cpp's default chain):
 * repetition penalty → temperature → top-k → softmax → top-p → draw. Temperature 0 is greedy
 * (after the penalty). Rows at or beyond n_valid (padding rows of the output layer that the
 * tokenizer never produces) are never chosen. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mtok.h"

struct mtok_sampler {
    mtok_sampler_params p;
    int64_t vocab;
    uint64_t rng[4];
    int32_t *idx;      /* [vocab] candidate ids */
    unsigned char *seen; /* [vocab] penalty marks */
};

/* xoshiro256** seeded through splitmix64: reproducible streams from one 64-bit seed */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t next_u64(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
    return r;
}
static double next_unit(uint64_t *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

int mtok_sampler_create(const mtok_sampler_params *p, int64_t vocab, mtok_sampler **out) {
    *out = NULL;
    /* written so that NaN fails every test: it compares false with anything */
    if (!(p->temperature >= 0 && p->temperature <= FLT_MAX) || p->top_k < 0 || !(p->top_p > 0 && p->top_p <= 1) ||
        !(p->repetition_penalty > 0 && p->repetition_penalty <= FLT_MAX) || vocab <= 0)
        return mtok_err(MTOK_EUSAGE, "sampler: need temperature >= 0, top-k >= 0, 0 < top-p <= 1, "
                        "repetition penalty > 0 (got %g, %d, %g, %g)", p->temperature, p->top_k, p->top_p,
                        p->repetition_penalty);
    mtok_sampler *s = calloc(1, sizeof *s);
    if (!s) return mtok_err(MTOK_ERESOURCE, "out of memory creating the sampler");
    s->p = *p;
    s->vocab = vocab;
    s->idx = malloc((size_t)vocab * sizeof *s->idx);
    s->seen = calloc((size_t)vocab, 1);
    if (!s->idx || !s->seen) {
        mtok_sampler_free(s);
        return mtok_err(MTOK_ERESOURCE, "out of memory creating the sampler");
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    *out = s;
    return 0;
}

void mtok_sampler_free(mtok_sampler *s) {
    if (!s) return;
    free(s->idx);
    free(s->seen);
    free(s);
}

/* CTRL-style penalty on every distinct id already seen: positive logits divided, negative multiplied */
static void apply_penalty(mtok_sampler *s, float *logits, int64_t n_valid, const int32_t *hist, size_t nh) {
    const float pen = s->p.repetition_penalty;
    if (pen == 1.0f) return;
    for (size_t i = 0; i < nh; i++) {
        int32_t id = hist[i];
        if (id < 0 || id >= n_valid || s->seen[id]) continue;
        s->seen[id] = 1;
        /* a tiny or huge penalty must not make a logit infinite: inf - inf in the softmax is NaN */
        const float x = logits[id] > 0 ? logits[id] / pen : logits[id] * pen;
        logits[id] = x > FLT_MAX ? FLT_MAX : x < -FLT_MAX ? -FLT_MAX : x;
    }
    for (size_t i = 0; i < nh; i++)
        if (hist[i] >= 0 && hist[i] < n_valid) s->seen[hist[i]] = 0;
}

static int by_logit_desc(const void *a, const void *b, void *ctx) {
    const float *lg = ctx;
    float x = lg[*(const int32_t *)a], y = lg[*(const int32_t *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b; /* ties: lower id first, deterministic */
}

int32_t mtok_sample(mtok_sampler *s, float *logits, int64_t n_valid, const int32_t *history, size_t n_history) {
    if (n_valid <= 0 || n_valid > s->vocab) n_valid = s->vocab;
    apply_penalty(s, logits, n_valid, history, n_history);

    if (s->p.temperature == 0.0f || s->p.top_k == 1) {
        int32_t best = 0;
        for (int64_t i = 1; i < n_valid; i++)
            if (logits[i] > logits[best]) best = (int32_t)i;
        return best;
    }
    /* The temperature scales the differences to the largest logit, in double: scaling the float
     * logits themselves overflowed to inf for a tiny temperature (1e-40 -> x 1e40), and inf - inf
     * made every weight NaN, so the last candidate was drawn. Dividing by T > 0 keeps the order. */
    const double invt = 1.0 / (double)s->p.temperature;

    /* candidates sorted by logit, descending; top-k keeps a prefix */
    int64_t n = n_valid;
    for (int64_t i = 0; i < n; i++) s->idx[i] = (int32_t)i;
    qsort_r(s->idx, (size_t)n, sizeof *s->idx, by_logit_desc, logits);
    if (s->p.top_k > 0 && s->p.top_k < n) n = s->p.top_k;
#define WEIGHT(i) exp(((double)logits[s->idx[i]] - mx) * invt)

    /* softmax over the candidates, relative to the max */
    const double mx = logits[s->idx[0]];
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += WEIGHT(i);
    /* top-p: the smallest prefix whose probability mass reaches p */
    if (s->p.top_p < 1.0f) {
        double cum = 0;
        int64_t keep = n;
        for (int64_t i = 0; i < n; i++) {
            cum += WEIGHT(i) / sum;
            if (cum >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0;
        for (int64_t i = 0; i < n; i++) sum += WEIGHT(i);
    }
    double r = next_unit(s->rng) * sum, acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += WEIGHT(i);
        if (r < acc) return s->idx[i];
    }
#undef WEIGHT
    return s->idx[n - 1];
}
