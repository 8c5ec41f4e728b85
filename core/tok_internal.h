/* tok_internal.h — what the tokenizer's source files (tokenizer.c, tok_load.c, tok_bpe.c, tok_spm.cc) share.
 * Nothing here is public: the API is the "Tokenizer" section of mtok.h. */
#ifndef MTOK_TOK_INTERNAL_H
#define MTOK_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "mtok.h"

/* Per-id flags. */
enum {
    TOK_PRESENT = 1, /* the id has bytes (a tokenizer.json may leave holes in its id space) */
    TOK_SPECIAL = 2, /* a special token: matched in text only with allow_special */
    TOK_ADDED = 4,   /* an added token (special or not): matched before pre-splitting, never by BPE */
    /* SentencePiece (tok_spm.cc) only: */
    TOK_SPM_RAW = 8,     /* a byte-fallback or unknown piece: decoded as stored, its leading space never dropped */
    TOK_CONTROL = 16,    /* <s>, </s>: no text at all (stored with length 0) */
    TOK_NOSCAN = 32,     /* a special never matched in text, even with allow_special: ChatGLM3's "sop"/"eop"
                          * are ordinary words, so "desops" must not turn into a control id */
};

typedef enum { TOK_TIKTOKEN = 0, TOK_HF = 1, TOK_SPM = 2 } tok_kind;

/* BPE heap keys pack a rank (an id, or a merge's position in the merges list) into 24 bits. */
#define TOK_MAX_RANKS (1 << 24)

/* Open-addressing map from byte strings to ids. The keys are not copied: a slot holds the id, and the
 * id's bytes live in the tokenizer's blob, so a lookup compares against tok_bytes(id). */
typedef struct {
    uint32_t *tag; /* high 32 bits of the XXH3 hash, to skip most memcmps */
    int32_t *id;   /* -1 = empty */
    uint64_t mask; /* slots - 1 (slots is a power of two) */
    uint64_t n;
} tok_map;

/* Open-addressing map from an adjacent id pair to its merge (tokenizer.json only). */
typedef struct {
    uint64_t *key;  /* (left << 32) | right */
    int32_t *rank;  /* merge priority: index in the merges list; -1 = empty slot */
    int32_t *merged;
    uint64_t mask;
    uint64_t n;
} tok_pairmap;

struct mtok_tokenizer {
    tok_kind kind;
    int64_t n_vocab;     /* max id + 1 */
    int64_t cap_vocab;   /* allocated length of off/len/flags */
    /* Bytes of every id, concatenated. */
    char *blob;
    size_t blob_len, blob_cap;
    uint64_t *off;
    uint32_t *len;
    uint8_t *flags;

    tok_map vocab;       /* ordinary (BPE) tokens: bytes -> id */
    tok_map added;       /* added/special strings -> id */
    int32_t byte_id[256];/* id of each single byte, -1 if the byte is not a token */
    size_t max_ordinary_len; /* no BPE pair longer than this can be a token */

    /* tokenizer.json merges; unused for tiktoken files (whose pair rank is the rank of the bytes). */
    tok_pairmap merges;
    int ignore_merges;
    int add_prefix_space;

    /* Added-token scan: which first bytes can start an added token (bit 1: special, bit 2: plain),
     * and the distinct added-token lengths, longest first, for leftmost-longest matching. */
    uint8_t added_first[256];
    size_t *added_lens;
    int n_added_lens;
    int has_plain_added;

    pcre2_code *re;
    int jit; /* JIT compiled; otherwise the interpreter runs */
    char *path, *pattern; /* the file loaded and its pre-tokenizer regex (one printable line, <= 80 bytes
                           * + "..."), for the messages of a match that fails at encode time */
    size_t max_token_len; /* bound on the bytes one token adds to decoded text (see tokenizer.c) */

    struct tok_spm *spm; /* SentencePiece (kind TOK_SPM): the library's processor (tok_spm.cc) */
    char *chat_template; /* tokenizer_config.json's chat_template beside the file, or NULL */
};

/* tok_bpe.c: maps */
int tok_map_init(tok_map *m, uint64_t expected);
void tok_map_free(tok_map *m);
/* Id with these bytes, or -1. */
int32_t tok_map_find(const mtok_tokenizer *t, const tok_map *m, const void *s, size_t n);
/* Inserts id (its bytes must already be in the tokenizer). Returns 0 when inserted, 1 when another id
 * already holds the same bytes (*existing = that id; nothing inserted), MTOK_ERESOURCE on no memory. */
int tok_map_insert(const mtok_tokenizer *t, tok_map *m, int32_t id, int32_t *existing);
int tok_pairmap_init(tok_pairmap *m, uint64_t expected);
void tok_pairmap_free(tok_pairmap *m);
/* Sets (left,right) -> (rank, merged); a later entry for the same pair replaces the earlier one. */
int tok_pairmap_put(tok_pairmap *m, int32_t left, int32_t right, int32_t rank, int32_t merged);
int tok_pairmap_get(const tok_pairmap *m, int32_t left, int32_t right, int32_t *rank, int32_t *merged);

/* tok_bpe.c: BPE of one pre-split piece. The scratch memory is per call of mtok_tokenize, so one
 * tokenizer can be used from several threads at once. */
typedef struct tok_scratch tok_scratch;
tok_scratch *tok_scratch_new(void);
void tok_scratch_free(tok_scratch *s);
int tok_bpe_piece(const mtok_tokenizer *t, tok_scratch *s, const uint8_t *p, size_t n, mtok_ids *out);

/* tok_load.c */
int tok_load_tiktoken(mtok_tokenizer *t, const char *path, const char *buf, size_t n);
int tok_load_hf_json(mtok_tokenizer *t, const char *path, const char *buf, size_t n);

/* tok_spm.cc: SentencePiece through libsentencepiece (C++ behind these C calls).
 * tok_is_spm: the buffer is a serialized ModelProto (by its protobuf framing, see tok_spm.cc).
 * tok_load_spm fills t with every piece (for decoding and token queries) and ChatGLM3's specials;
 * tok_spm_encode appends the ids of one text segment (its own dummy prefix). */
int tok_is_spm(const char *buf, size_t n);
int tok_load_spm(mtok_tokenizer *t, const char *path, const char *buf, size_t n);
int tok_spm_encode(const mtok_tokenizer *t, const uint8_t *s, size_t n, mtok_ids *out);
void tok_spm_free(struct tok_spm *p);
int tok_read_chat_template(mtok_tokenizer *t, const char *path);
/* tok_load.c, for tok_spm.cc */
int tok_add_added(mtok_tokenizer *t, const char *path, int64_t id, const char *s, size_t n, int special);
/* Stores bytes for id (growing the id space) and sets its flags. */
int tok_set_token(mtok_tokenizer *t, int64_t id, const void *bytes, size_t n, uint8_t flags);
/* Builds the added-token scan tables and max_token_len once all ids are known. */
int tok_finish(mtok_tokenizer *t, const char *path);
int tok_compile_pattern(mtok_tokenizer *t, const char *path, const char *pattern, int literal);

static inline const uint8_t *tok_bytes(const mtok_tokenizer *t, int32_t id, size_t *n) {
    *n = t->len[id];
    return (const uint8_t *)t->blob + t->off[id];
}

/* UTF-8 (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF) at s with n >= 1 bytes left:
 * > 0: a complete valid character of that length; 0: a valid but incomplete prefix that runs to the end;
 * -k: invalid, and its maximal subpart (Unicode's "U+FFFD substitution of maximal subparts", which Python's
 * errors="replace" follows) is k >= 1 bytes long. */
static inline int tok_utf8_char(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;
    else if (c == 0xED) need = 2, hi = 0x9F; /* no surrogates */
    else if (c >= 0xE1 && c <= 0xEF) need = 2;
    else if (c == 0xF0) need = 3, lo = 0x90;
    else if (c == 0xF4) need = 3, hi = 0x8F; /* nothing above U+10FFFF */
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else return -1;
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n) return 0;
        if (s[k] < lo || s[k] > hi) return -k;
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

/* Test hook: match with the PCRE2 interpreter even where JIT compiled (the path taken where the
 * platform forbids JIT). */
void tok_disable_jit(mtok_tokenizer *t);

#ifdef __cplusplus
}
#endif
#endif
