/* util.c — small helpers shared by the eval module. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "eval.h"

double mev_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t mev_peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}

int mev_mkdir_p(const char *dir) {
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p) return mtok_err(MTOK_ERESOURCE, "out of memory");
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int rc = mtok_err(errno == ENOTDIR ? MTOK_EINPUT : MTOK_ERESOURCE, "%s: cannot create directory: %s", p,
                              strerror(errno));
            free(p);
            return rc;
        }
        p[i] = c;
    }
    free(p);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return mtok_err(MTOK_EINPUT, "%s: not a directory", dir);
    return 0;
}

int mev_feed(mev_runner *r, const int32_t *ids, size_t n) {
    const mtok_request req = {.cancel = r->interrupted};
    mtok_usage u;
    int rc = mtok_session_feed(r->s, ids, (int64_t)n, &req, &u);
    r->cached += u.cached_tokens;
    r->prefilled += u.computed_tokens;
    r->prefill_s += u.prefill_s;
    return rc == MTOK_CANCELLED ? 1 : rc;
}

/* Greedy decoding as transformers' generate(do_sample=False) does it: the argmax of every step; a stop
 * id ends the answer and is part of it (as generate's output keeps the eos token), but it is never fed
 * back, so the session holds the prompt and the tokens before it. While fewer than min_new tokens
 * exist, every stop id is masked out of the argmax (MinLengthLogitsProcessor). */
int mev_greedy_ex(mev_runner *r, const mev_gen_opts *o, mtok_ids *gen) {
    const mtok_config *c = mtok_session_config(r->s);
    int64_t n_valid = mtok_tokenizer_n_vocab(r->t) < c->vocab ? mtok_tokenizer_n_vocab(r->t) : c->vocab;
    const int32_t *stop = o->stop_ids ? o->stop_ids : c->eos_ids;
    const size_t n_stop = o->stop_ids ? o->n_stop : (size_t)c->n_eos;
    int rc = 0;
    for (int64_t i = 0; i < o->max_new && !rc; i++) {
        const float *lg = mtok_session_logits(r->s);
        const int masked = i < o->min_new;
        int32_t best = -1;
        for (int64_t k = 0; k < n_valid; k++) {
            int is_stop = 0;
            for (size_t e = 0; masked && e < n_stop; e++) is_stop |= stop[e] == k;
            if (!is_stop && (best < 0 || lg[k] > lg[best])) best = (int32_t)k;
        }
        if (best < 0) break;
        int is_stop = 0;
        for (size_t e = 0; e < n_stop; e++) is_stop |= stop[e] == best;
        if ((rc = mtok_ids_push(gen, best))) break;
        if (is_stop || i + 1 == o->max_new || mtok_session_pos(r->s) >= mtok_session_ctx(r->s)) break;
        rc = mtok_forward(r->s, &best, 1, NULL);
    }
    return rc;
}

char *mev_decode_ids(const mtok_tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len) {
    int32_t *keep = malloc((n + 1) * sizeof *keep);
    size_t m = 0;
    if (!keep) return mtok_err(MTOK_ERESOURCE, "out of memory decoding"), NULL;
    for (size_t i = 0; i < n; i++)
        if (!skip_special || !mtok_token_is_special(t, ids[i])) keep[m++] = ids[i];
    char *d = mtok_detokenize(t, keep, m, len);
    free(keep);
    return d;
}

int mev_greedy(mev_runner *r, int64_t max_new, char **text, size_t *len) {
    const mtok_config *c = mtok_session_config(r->s);
    const mev_gen_opts o = {.max_new = max_new};
    mtok_ids gen = {0};
    int rc = mev_greedy_ex(r, &o, &gen);
    /* the answer's text without the end-of-sequence id that ended it */
    int eos = 0;
    for (int e = 0; gen.n && e < c->n_eos; e++) eos |= c->eos_ids[e] == gen.v[gen.n - 1];
    size_t n = gen.n - (size_t)eos, dl = 0;
    char *d = NULL;
    if (!rc && n && !(d = mtok_detokenize(r->t, gen.v, n, &dl)))
        rc = mtok_err(MTOK_ERESOURCE, "out of memory decoding an answer");
    if (!rc) {
        size_t old = *text ? *len : 0, sep = old && dl ? 1 : 0;
        char *nt = realloc(*text, old + sep + dl + 1);
        if (!nt) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        else {
            if (sep) nt[old] = ' ';
            if (dl) memcpy(nt + old + sep, d, dl);
            nt[old + sep + dl] = 0;
            *text = nt;
            *len = old + sep + dl;
        }
    }
    free(d);
    mtok_ids_free(&gen);
    return rc;
}

/* the session owns the ids it holds now (mtok_session_tokens): nothing is left to free here */
void mev_runner_free(mev_runner *r) { (void)r; }
