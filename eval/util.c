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

int mev_greedy(mev_runner *r, int64_t max_new, char **text, size_t *len) {
    const mtok_config *c = mtok_session_config(r->s);
    int64_t n_valid = mtok_tokenizer_n_vocab(r->t) < c->vocab ? mtok_tokenizer_n_vocab(r->t) : c->vocab;
    mtok_ids gen = {0};
    int rc = 0;
    for (int64_t i = 0; i < max_new && !rc; i++) {
        const float *lg = mtok_session_logits(r->s);
        int32_t best = 0;
        for (int64_t k = 1; k < n_valid; k++)
            if (lg[k] > lg[best]) best = (int32_t)k;
        int eos = 0;
        for (int e = 0; e < c->n_eos; e++) eos |= c->eos_ids[e] == best;
        if (eos) break;
        if ((rc = mtok_ids_push(&gen, best))) break;
        if (i + 1 == max_new || mtok_session_pos(r->s) >= mtok_session_ctx(r->s)) break;
        rc = mtok_forward(r->s, &best, 1, NULL);
    }
    size_t dl = 0;
    char *d = NULL;
    if (!rc && gen.n && !(d = mtok_detokenize(r->t, gen.v, gen.n, &dl)))
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
