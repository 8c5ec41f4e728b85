/* tp.c — a rank's slice of a tensor-parallel split (Megatron style, docs/PARALLEL.md).
 *
 * Attention is split by KV group: a rank holds whole groups with their query heads, so attention
 * needs no communication. When the split is wider than the groups (tp 4 on GLM-4-9B-Chat's 2
 * groups), tp/G ranks share a group: each holds the group's K/V projection (replicated) and a
 * share of its query heads. Q/K/V and gate/up are column-parallel (rows of the stored [out, in]
 * matrices: views into the mapping); dense and down are row-parallel (columns of the stored
 * matrix, copied out), so each rank's partial outputs are summed by one all-reduce per block. The
 * output layer is split by vocabulary rows and the logits all-gathered. */
#include <stdlib.h>
#include <string.h>

#include "model.h"

void mtok_tp_split(int64_t total, int rank, int size, int64_t *n0, int64_t *n) {
    int64_t base = total / size, extra = total % size;
    *n0 = rank * base + (rank < extra ? rank : extra);
    *n = base + (rank < extra ? 1 : 0);
}

static mk_tensor vec_view(mk_tensor t, int64_t c0, int64_t n) {
    if (!t.data) return t;
    t.data = (const char *)t.data + (size_t)c0 * mtok_dtype_size(t.dtype);
    t.cols = n;
    return t;
}

/* Columns [c0, c0+n) of a 2-D tensor, copied into a buffer the model owns. */
static int cols_copy(mtok_model *m, mk_tensor *t, int64_t c0, int64_t n) {
    const size_t es = mtok_dtype_size(t->dtype), row = (size_t)n * es;
    char *buf = malloc((size_t)t->rows * row);
    void **o = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *o);
    if (!buf || !o) {
        free(buf);
        if (o) m->owned = o;
        return mtok_err(MTOK_ERESOURCE, "out of memory copying a %lld x %lld weight slice", (long long)t->rows,
                        (long long)n);
    }
    m->owned = o;
    m->owned[m->n_owned++] = buf;
    for (int64_t r = 0; r < t->rows; r++)
        memcpy(buf + (size_t)r * row, (const char *)t->data + ((size_t)r * (size_t)t->cols + (size_t)c0) * es, row);
    t->data = buf;
    t->cols = n;
    return 0;
}

static uint64_t tbytes(const mk_tensor *t) {
    return t->data ? (uint64_t)t->rows * (uint64_t)t->cols * mtok_dtype_size(t->dtype) : 0;
}

int mtok_tp_apply(mtok_model *m, int rank, int size) {
    const mtok_config *c = &m->cfg;
    const int64_t H = c->n_heads, G = c->n_kv_groups, D = c->head_dim, per_group = H / G;
    mtok_tp_slice *s = &m->tp;
    *s = (mtok_tp_slice){.rank = 0, .size = 1, .h0 = 0, .H = H, .g0 = 0, .G = G, .f0 = 0, .F = c->ffn,
                         .v0 = 0, .V = c->vocab};
    if (size <= 1) return 0;
    if (rank < 0 || rank >= size) return mtok_err(MTOK_EUSAGE, "tensor-parallel rank %d of %d", rank, size);
    if (size <= G) {
        if (G % size)
            return mtok_err(MTOK_EUSAGE, "%s: --tp %d does not divide the model's %lld KV groups (use a divisor, or "
                            "a multiple of the group count)", m->dir, size, (long long)G);
        s->G = G / size, s->g0 = rank * s->G;
        s->H = s->G * per_group, s->h0 = s->g0 * per_group;
    } else {
        const int64_t rep = size / G; /* ranks sharing one group */
        if (size % G || per_group % rep)
            return mtok_err(MTOK_EUSAGE, "%s: --tp %d must be a multiple of the %lld KV groups that divides their "
                            "%lld query heads each", m->dir, size, (long long)G, (long long)per_group);
        s->G = 1, s->g0 = rank / rep;
        s->H = per_group / rep, s->h0 = s->g0 * per_group + (rank % rep) * s->H;
    }
    mtok_tp_split(c->ffn, rank, size, &s->f0, &s->F);
    mtok_tp_split(c->vocab, rank, size, &s->v0, &s->V);
    s->rank = rank, s->size = size;

    uint64_t bytes = tbytes(&m->w.embed) + tbytes(&m->w.final_norm);
    for (int64_t l = 0; l < c->n_layers; l++) {
        mtok_layer *L = &m->w.layers[l];
        L->wq = mk_rows(L->wq, s->h0 * D, s->H * D);
        L->wk = mk_rows(L->wk, s->g0 * D, s->G * D);
        L->wv = mk_rows(L->wv, s->g0 * D, s->G * D);
        L->bq = vec_view(L->bq, s->h0 * D, s->H * D);
        L->bk = vec_view(L->bk, s->g0 * D, s->G * D);
        L->bv = vec_view(L->bv, s->g0 * D, s->G * D);
        L->w_gate = mk_rows(L->w_gate, s->f0, s->F);
        L->w_up = mk_rows(L->w_up, s->f0, s->F);
        int rc = cols_copy(m, &L->wo, s->h0 * D, s->H * D);
        if (!rc) rc = cols_copy(m, &L->w_down, s->f0, s->F);
        if (rc) return rc;
        const mk_tensor *all[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->bq, &L->bk, &L->bv,
                                  &L->wo, &L->mlp_norm, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) bytes += tbytes(all[i]);
    }
    m->w.output = mk_rows(m->w.output, s->v0, s->V);
    m->weight_bytes = bytes + tbytes(&m->w.output);
    mtok_log(1, "%s: tensor-parallel rank %d of %d: heads %lld..%lld, KV groups %lld..%lld, ffn rows %lld..%lld, "
             "vocabulary %lld..%lld, %.2f GB of weights", m->dir, rank, size, (long long)s->h0,
             (long long)(s->h0 + s->H - 1), (long long)s->g0, (long long)(s->g0 + s->G - 1), (long long)s->f0,
             (long long)(s->f0 + s->F - 1), (long long)s->v0, (long long)(s->v0 + s->V - 1),
             (double)m->weight_bytes / 1e9);
    return 0;
}
