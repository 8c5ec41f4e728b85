/* util.c — token id vectors (errors, logging and dtypes: base/base.c). */
#include <stdlib.h>
#include <string.h>

#include "mtok.h"

int mtok_ids_push(mtok_ids *a, int32_t id) { return mtok_ids_append(a, &id, 1); }

int mtok_ids_append(mtok_ids *a, const int32_t *ids, size_t n) {
    if (n == 0) return 0; /* ids may be NULL then (an empty vector) */
    if (a->n + n > a->cap) {
        size_t cap = a->cap ? a->cap : 64;
        while (cap < a->n + n) cap *= 2;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return mtok_err(MTOK_ERESOURCE, "out of memory growing a token list to %zu ids", cap);
        a->v = v;
        a->cap = cap;
    }
    memcpy(a->v + a->n, ids, n * sizeof *ids);
    a->n += n;
    return 0;
}

void mtok_ids_free(mtok_ids *a) {
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}
