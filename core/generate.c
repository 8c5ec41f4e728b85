/* generate.c — the generation loop: prefill the prompt, then sample, stream and feed back one token
 * at a time until a stop id, max_new tokens or the context limit. Text is streamed through the
 * UTF-8-safe decoder so a callback never sees half a character. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mtok.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_stop(const mtok_gen_params *gp, const mtok_config *c, int32_t id) {
    const int32_t *stop = gp->stop_ids ? gp->stop_ids : c->eos_ids;
    int n = gp->stop_ids ? gp->n_stop : c->n_eos;
    for (int i = 0; i < n; i++)
        if (stop[i] == id) return 1;
    return 0;
}

int mtok_generate(mtok_session *s, const mtok_tokenizer *t, mtok_sampler *smp, const int32_t *prompt, size_t n,
                  const mtok_gen_params *gp, mtok_stream_cb cb, void *user, mtok_ids *generated,
                  mtok_gen_stats *stats) {
    const mtok_config *c = mtok_session_config(s);
    mtok_gen_stats st = {.n_prompt = (int64_t)n, .stop_id = -1};
    mtok_ids hist = {0};
    float *logits = malloc((size_t)c->vocab * sizeof *logits);
    size_t cap = mtok_tokenizer_max_token_len(t) + 16;
    char *text = malloc(cap);
    int rc = 0;
    if (!logits || !text) {
        rc = mtok_err(MTOK_ERESOURCE, "out of memory for generation buffers");
        goto done;
    }
    if ((rc = mtok_ids_append(&hist, prompt, n))) goto done;

    if ((int64_t)n > mtok_session_ctx(s) - mtok_session_pos(s)) {
        rc = mtok_err(MTOK_EINPUT, "prompt of %zu tokens does not fit the context limit of %lld tokens (%lld already "
                      "used; raise --ctx)", n, (long long)mtok_session_ctx(s), (long long)mtok_session_pos(s));
        goto done;
    }
    double t0 = now_s();
    if (n > 0 && (rc = mtok_forward(s, prompt, (int64_t)n, NULL))) goto done;
    st.prefill_s = now_s() - t0;

    /* the sampler never picks padding rows beyond the tokenizer's vocabulary */
    int64_t n_valid = mtok_tokenizer_n_vocab(t) < c->vocab ? mtok_tokenizer_n_vocab(t) : c->vocab;
    mtok_decoder dec = {0};
    t0 = now_s();
    for (int64_t i = 0; i < gp->max_new; i++) {
        memcpy(logits, mtok_session_logits(s), (size_t)c->vocab * sizeof *logits);
        int32_t id = mtok_sample(smp, logits, n_valid, hist.v, hist.n);
        if (!gp->ignore_eos && is_stop(gp, c, id)) {
            st.stop_id = id;
            break;
        }
        st.n_gen++;
        if ((rc = mtok_ids_push(&hist, id))) goto done;
        if (generated && (rc = mtok_ids_push(generated, id))) goto done;
        size_t len = mtok_decode_next(t, &dec, id, text, cap);
        if (cb && cb(id, text, len, user)) break;
        if (i + 1 == gp->max_new || mtok_session_pos(s) >= mtok_session_ctx(s)) break;
        if ((rc = mtok_forward(s, &id, 1, NULL))) goto done;
    }
    size_t len = mtok_decode_flush(&dec, text, cap);
    if (cb && len) cb(-1, text, len, user);
    st.decode_s = now_s() - t0;
done:
    if (stats) *stats = st;
    mtok_ids_free(&hist);
    free(logits);
    free(text);
    return rc;
}
