/* tok_bpe.c — hash maps over token bytes and the byte-pair merge of one pre-split piece.
 *
 * The merge is O(n log n) in the piece length: the parts form a doubly linked list over byte positions and
 * a binary min-heap holds candidate merges of adjacent parts keyed by (rank, position). Picking the
 * smallest key each time is exactly "lowest rank, leftmost on ties", the rule of both tiktoken and the
 * tokenizers crate, so a 1 MB piece without spaces costs a fraction of a second rather than hours.
 *
 * A merge changes its neighbours' pairs; their old heap entries are not removed but invalidated lazily:
 * when an entry surfaces, the pair now starting at its position is looked up again and the entry is
 * used only if that pair still has the entry's rank. That test is exact because a part only ever grows
 * (by absorbing its right neighbour), so the pair at a position only ever gets longer, and a rank names
 * one byte string (tiktoken) or one (left, right) pair of ids (merges list): an equal rank means the very
 * same pair. Entries are single 64-bit keys, rank << 40 | position, which keeps the heap compact. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "tok_internal.h"

/* ---------------------------------------------------------------------------------------------- */
/* bytes -> id                                                                                     */

static uint64_t slots_for(uint64_t expected) {
    uint64_t s = 16;
    while (s < expected * 2) s *= 2; /* load factor <= 1/2 keeps linear probing short */
    return s;
}

int tok_map_init(tok_map *m, uint64_t expected) {
    uint64_t slots = slots_for(expected);
    m->tag = malloc(slots * sizeof *m->tag);
    m->id = malloc(slots * sizeof *m->id);
    if (!m->tag || !m->id) {
        free(m->tag), free(m->id);
        m->tag = NULL, m->id = NULL;
        return mtok_err(MTOK_ERESOURCE, "out of memory for a token map of %llu slots", (unsigned long long)slots);
    }
    memset(m->id, 0xff, slots * sizeof *m->id);
    m->mask = slots - 1;
    m->n = 0;
    return 0;
}

void tok_map_free(tok_map *m) {
    free(m->tag), free(m->id);
    memset(m, 0, sizeof *m);
}

static int key_equal(const mtok_tokenizer *t, int32_t id, const void *s, size_t n) {
    size_t kn;
    const uint8_t *k = tok_bytes(t, id, &kn);
    return kn == n && memcmp(k, s, n) == 0;
}

int32_t tok_map_find(const mtok_tokenizer *t, const tok_map *m, const void *s, size_t n) {
    if (!m->id) return -1;
    uint64_t h = XXH3_64bits(s, n);
    uint32_t tag = (uint32_t)(h >> 32);
    for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
        int32_t id = m->id[i];
        if (id < 0) return -1;
        if (m->tag[i] == tag && key_equal(t, id, s, n)) return id;
    }
}

static int map_grow(const mtok_tokenizer *t, tok_map *m) {
    tok_map g;
    int rc = tok_map_init(&g, (m->mask + 1)); /* twice the slots */
    if (rc) return rc;
    for (uint64_t i = 0; i <= m->mask; i++) {
        if (m->id[i] < 0) continue;
        size_t n; /* the tag is only half the hash: rehash the key for its new home slot */
        const uint8_t *k = tok_bytes(t, m->id[i], &n);
        uint64_t j = XXH3_64bits(k, n) & g.mask;
        while (g.id[j] >= 0) j = (j + 1) & g.mask;
        g.id[j] = m->id[i];
        g.tag[j] = m->tag[i];
    }
    g.n = m->n;
    tok_map_free(m);
    *m = g;
    return 0;
}

int tok_map_insert(const mtok_tokenizer *t, tok_map *m, int32_t id, int32_t *existing) {
    if (!m->id || (m->n + 1) * 2 > m->mask + 1) {
        int rc = m->id ? map_grow(t, m) : tok_map_init(m, 16);
        if (rc) return rc;
    }
    size_t n;
    const uint8_t *k = tok_bytes(t, id, &n);
    uint64_t h = XXH3_64bits(k, n);
    uint32_t tag = (uint32_t)(h >> 32);
    uint64_t i = h & m->mask;
    for (; m->id[i] >= 0; i = (i + 1) & m->mask) {
        if (m->tag[i] == tag && key_equal(t, m->id[i], k, n)) {
            *existing = m->id[i];
            return 1;
        }
    }
    m->id[i] = id;
    m->tag[i] = tag;
    m->n++;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* (left id, right id) -> merge                                                                    */

int tok_pairmap_init(tok_pairmap *m, uint64_t expected) {
    uint64_t slots = slots_for(expected);
    m->key = malloc(slots * sizeof *m->key);
    m->rank = malloc(slots * sizeof *m->rank);
    m->merged = malloc(slots * sizeof *m->merged);
    if (!m->key || !m->rank || !m->merged) {
        tok_pairmap_free(m);
        return mtok_err(MTOK_ERESOURCE, "out of memory for a merge table of %llu slots", (unsigned long long)slots);
    }
    memset(m->rank, 0xff, slots * sizeof *m->rank);
    m->mask = slots - 1;
    m->n = 0;
    return 0;
}

void tok_pairmap_free(tok_pairmap *m) {
    free(m->key), free(m->rank), free(m->merged);
    memset(m, 0, sizeof *m);
}

static uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t)(uint32_t)left << 32 | (uint32_t)right; }

static uint64_t pair_home(const tok_pairmap *m, uint64_t key) { return XXH3_64bits(&key, sizeof key) & m->mask; }

int tok_pairmap_put(tok_pairmap *m, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    if ((m->n + 1) * 2 > m->mask + 1) { /* sized by the caller from the merges count; grow if it lied */
        tok_pairmap g;
        int rc = tok_pairmap_init(&g, m->mask + 1);
        if (rc) return rc;
        for (uint64_t i = 0; i <= m->mask; i++)
            if (m->rank[i] >= 0) {
                uint64_t j = pair_home(&g, m->key[i]);
                while (g.rank[j] >= 0) j = (j + 1) & g.mask;
                g.key[j] = m->key[i], g.rank[j] = m->rank[i], g.merged[j] = m->merged[i];
            }
        g.n = m->n;
        tok_pairmap_free(m);
        *m = g;
    }
    uint64_t key = pair_key(left, right);
    uint64_t i = pair_home(m, key);
    while (m->rank[i] >= 0 && m->key[i] != key) i = (i + 1) & m->mask;
    if (m->rank[i] < 0) m->n++;
    m->key[i] = key, m->rank[i] = rank, m->merged[i] = merged;
    return 0;
}

int tok_pairmap_get(const tok_pairmap *m, int32_t left, int32_t right, int32_t *rank, int32_t *merged) {
    if (!m->rank) return 0;
    uint64_t key = pair_key(left, right);
    for (uint64_t i = pair_home(m, key); m->rank[i] >= 0; i = (i + 1) & m->mask)
        if (m->key[i] == key) {
            *rank = m->rank[i], *merged = m->merged[i];
            return 1;
        }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The merge                                                                                       */

typedef uint64_t heap_ent; /* rank << POS_BITS | byte position of the pair's left part */
#define POS_BITS 40
#define POS_MASK ((UINT64_C(1) << POS_BITS) - 1)

struct tok_scratch {
    /* One slot per byte position; a part is identified by its first byte position. */
    int64_t *next, *prev; /* next part's start (n at the end), previous part's start (-1 at the start) */
    int32_t *id;          /* token id of the part; -1 for a byte with no token; -2 for a merged-away part */
    size_t cap;
    heap_ent *heap;
    size_t hn, hcap;
};

tok_scratch *tok_scratch_new(void) { return calloc(1, sizeof(tok_scratch)); }

void tok_scratch_free(tok_scratch *s) {
    if (!s) return;
    free(s->next), free(s->prev), free(s->id), free(s->heap);
    free(s);
}

static int scratch_reserve(tok_scratch *s, size_t n) {
    if (n <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    int64_t *nx = realloc(s->next, cap * sizeof *nx);
    if (nx) s->next = nx;
    int64_t *pv = realloc(s->prev, cap * sizeof *pv);
    if (pv) s->prev = pv;
    int32_t *id = realloc(s->id, cap * sizeof *id);
    if (id) s->id = id;
    if (!nx || !pv || !id) return mtok_err(MTOK_ERESOURCE, "out of memory for BPE of a %zu-byte piece", n);
    s->cap = cap;
    return 0;
}

/* A 4-ary heap: half the depth of a binary one, and the four children share a cache line, which is
 * what the pops of a long piece wait on. */
#define HEAP_D 4

static int heap_push(tok_scratch *s, heap_ent e) {
    if (s->hn == s->hcap) {
        size_t cap = s->hcap ? s->hcap * 2 : 256;
        heap_ent *h = realloc(s->heap, cap * sizeof *h);
        if (!h) return mtok_err(MTOK_ERESOURCE, "out of memory for the BPE heap (%zu entries)", cap);
        s->heap = h, s->hcap = cap;
    }
    size_t i = s->hn++;
    while (i > 0) {
        size_t up = (i - 1) / HEAP_D;
        if (e >= s->heap[up]) break;
        s->heap[i] = s->heap[up];
        i = up;
    }
    s->heap[i] = e;
    return 0;
}

static heap_ent heap_pop(tok_scratch *s) {
    heap_ent top = s->heap[0], last = s->heap[--s->hn];
    size_t i = 0, n = s->hn;
    for (;;) {
        size_t c = HEAP_D * i + 1, end = c + HEAP_D < n ? c + HEAP_D : n;
        if (c >= n) break;
        for (size_t k = c + 1; k < end; k++)
            if (s->heap[k] < s->heap[c]) c = k;
        if (s->heap[c] >= last) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* The merge of the part at a with its right neighbour, if the vocabulary has one. tiktoken: the pair's
 * rank is the rank of the concatenated bytes (which is also the merged id). tokenizer.json: the pair's
 * priority is its position in the merges list. */
static int pair_merge(const mtok_tokenizer *t, const tok_scratch *s, const uint8_t *p, size_t n, int64_t a,
                      int32_t *rank, int32_t *merged) {
    int64_t b = s->next[a];
    if (b >= (int64_t)n) return 0;
    if (t->kind == TOK_HF) return tok_pairmap_get(&t->merges, s->id[a], s->id[b], rank, merged);
    size_t span = (size_t)(s->next[b] - a);
    if (span > t->max_ordinary_len) return 0;
    int32_t id = tok_map_find(t, &t->vocab, p + a, span);
    if (id < 0) return 0;
    *rank = *merged = id;
    return 1;
}

static int push_pair(const mtok_tokenizer *t, tok_scratch *s, const uint8_t *p, size_t n, int64_t a) {
    int32_t rank, merged;
    if (!pair_merge(t, s, p, n, a, &rank, &merged)) return 0;
    return heap_push(s, (uint64_t)rank << POS_BITS | (uint64_t)a);
}

static int unknown_byte(const uint8_t *p, size_t n, size_t at) {
    return mtok_err(MTOK_EINPUT, "tokenize: byte 0x%02X (offset %zu of a %zu-byte piece) has no token in the "
                    "vocabulary", p[at], at, n);
}

static int merge_all(const mtok_tokenizer *t, tok_scratch *s, const uint8_t *p, size_t n) {
    s->hn = 0;
    for (size_t i = 0; i < n; i++) {
        s->id[i] = t->byte_id[p[i]];
        /* The tokenizers crate would silently drop a byte it has no token for; refuse instead. tiktoken
         * mode may still merge such a byte into a longer token, so it is checked after merging. */
        if (s->id[i] < 0 && t->kind == TOK_HF) return unknown_byte(p, n, i);
        s->next[i] = (int64_t)i + 1;
        s->prev[i] = (int64_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int rc = push_pair(t, s, p, n, (int64_t)i);
        if (rc) return rc;
    }
    while (s->hn) {
        heap_ent e = heap_pop(s);
        int64_t a = (int64_t)(e & POS_MASK);
        int32_t rank, merged;
        if (s->id[a] == -2 || !pair_merge(t, s, p, n, a, &rank, &merged) || (uint64_t)rank != e >> POS_BITS)
            continue; /* stale: the pair at a has changed since the entry was made */
        int64_t b = s->next[a], c = s->next[b];
        s->id[a] = merged;
        s->id[b] = -2;
        s->next[a] = c;
        if (c < (int64_t)n) s->prev[c] = a;
        int rc = push_pair(t, s, p, n, a);
        if (!rc && s->prev[a] >= 0) rc = push_pair(t, s, p, n, s->prev[a]);
        if (rc) return rc;
    }
    return 0;
}

int tok_bpe_piece(const mtok_tokenizer *t, tok_scratch *s, const uint8_t *p, size_t n, mtok_ids *out) {
    if (n == 0) return 0;
    /* tiktoken always takes a whole piece that is a token; tokenizer.json does so with ignore_merges. */
    if (t->kind == TOK_TIKTOKEN || t->ignore_merges || n == 1) {
        int32_t id = n == 1 ? t->byte_id[p[0]] : tok_map_find(t, &t->vocab, p, n);
        if (id >= 0) return mtok_ids_push(out, id);
        if (n == 1) return unknown_byte(p, n, 0);
    }
    if (n > POS_MASK) return mtok_err(MTOK_EINPUT, "tokenize: a pre-tokenized piece of %zu bytes is too long", n);
    int rc = scratch_reserve(s, n);
    if (!rc) rc = merge_all(t, s, p, n);
    if (rc) return rc;
    for (int64_t i = 0; i < (int64_t)n; i = s->next[i]) {
        if (s->id[i] < 0) return unknown_byte(p, n, (size_t)i);
        rc = mtok_ids_push(out, s->id[i]);
        if (rc) return rc;
    }
    return 0;
}
