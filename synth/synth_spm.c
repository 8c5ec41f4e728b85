/* synth_spm.c — a real SentencePiece tokenizer.model for the ChatGLM3-shaped presets, written here as a
 * serialized ModelProto (protobuf wire format by hand: libsentencepiece's trainer is C++ and not linked
 * into mtok_synth). The model is a unigram model configured as ChatGLM3's is (docs/GLM.md §4.2):
 * <unk> <s> </s>, the 256 byte-fallback pieces <0x00>..<0xFF>, then "▁", the printable ASCII characters
 * and the multi-byte strings the byte-level BPE trainer of synth_tok.c learns from its embedded corpus
 * (spaces spelled "▁"), each scored so that fewer, longer pieces win; identity normalisation, dummy prefix
 * on, white space kept as it is. Deterministic: the same bytes every run.
 *
 * Field numbers (sentencepiece_model.proto): ModelProto.pieces = 1, trainer_spec = 2, normalizer_spec = 3;
 * SentencePiece.piece = 1, score = 2 (float), type = 3 (NORMAL 1, UNKNOWN 2, CONTROL 3, BYTE 6);
 * TrainerSpec.model_type = 3 (UNIGRAM 1), vocab_size = 4, byte_fallback = 35; NormalizerSpec.name = 1,
 * add_dummy_prefix = 3, remove_extra_whitespaces = 4, escape_whitespaces = 5. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "synth_int.h"

typedef struct {
    unsigned char *p;
    size_t n, cap;
} pbuf;

static int pb_put(pbuf *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + n) cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) return mtok_err(MTOK_ERESOURCE, "out of memory writing tokenizer.model");
        b->p = q, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

static int pb_varint(pbuf *b, uint64_t v) {
    unsigned char t[10];
    size_t k = 0;
    do {
        t[k++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return pb_put(b, t, k);
}

static int pb_key(pbuf *b, unsigned field, unsigned wire) { return pb_varint(b, (uint64_t)field << 3 | wire); }

static int pb_bytes(pbuf *b, unsigned field, const void *s, size_t n) {
    int rc = pb_key(b, field, 2);
    if (!rc) rc = pb_varint(b, n);
    return rc ? rc : pb_put(b, s, n);
}

static int pb_bool(pbuf *b, unsigned field, uint64_t v) {
    int rc = pb_key(b, field, 0);
    return rc ? rc : pb_varint(b, v);
}

/* one SentencePiece message, as field 1 of the ModelProto */
static int put_piece(pbuf *m, const char *s, size_t n, float score, int type) {
    pbuf p = {0};
    int rc = pb_bytes(&p, 1, s, n);
    unsigned char f[4];
    uint32_t u;
    memcpy(&u, &score, 4);
    for (int k = 0; k < 4; k++) f[k] = (unsigned char)(u >> (8 * k)); /* little-endian fixed32 */
    if (!rc) rc = pb_key(&p, 2, 5);
    if (!rc) rc = pb_put(&p, f, 4);
    if (!rc) rc = pb_bool(&p, 3, (uint64_t)type);
    if (!rc) rc = pb_bytes(m, 1, p.p, p.n);
    free(p.p);
    return rc;
}

static int b64v(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* base64 (as synth_tok.c writes it) -> bytes; returns the length */
static size_t unb64(const char *s, size_t n, unsigned char *out) {
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        int v = b64v((unsigned char)s[i]);
        if (v < 0) break;
        acc = acc << 6 | (uint32_t)v, bits += 6;
        if (bits >= 8) bits -= 8, out[o++] = (unsigned char)(acc >> bits);
    }
    return o;
}

/* A learned string fit to be a piece: whole UTF-8 characters, no control bytes; spaces become "▁". */
static int spm_text(const unsigned char *s, size_t n, char *out, size_t *on) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!k || i + k > n || c < 0x20 || c == 0x7f) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return 0;
        if (c == ' ') memcpy(out + o, "\xE2\x96\x81", 3), o += 3;
        else memcpy(out + o, s + i, k), o += k;
        i += k;
    }
    *on = o;
    return o > 0;
}

typedef struct {
    char **s;
    size_t *len, n;
} seen_set;

static int seen(const seen_set *z, const char *s, size_t n) {
    for (size_t i = 0; i < z->n; i++)
        if (z->len[i] == n && !memcmp(z->s[i], s, n)) return 1;
    return 0;
}

int mtok_syn_spm(int64_t max_pieces, char **data, size_t *len, int64_t *n_pieces) {
    const int64_t fixed = 3 + 256 + 1 + 94; /* unk/bos/eos, bytes, "▁", printable ASCII */
    if (max_pieces < fixed + 1)
        return mtok_err(MTOK_EUSAGE, "synth: a SentencePiece vocabulary needs more than %lld pieces", (long long)fixed);
    char *bpe = NULL;
    size_t bpe_len = 0;
    int64_t n_ranks = 0;
    int rc = mtok_syn_tokenizer(max_pieces, &bpe, &bpe_len, &n_ranks);
    if (rc) return rc;
    pbuf m = {0};
    seen_set z = {calloc((size_t)max_pieces, sizeof(char *)), calloc((size_t)max_pieces, sizeof(size_t)), 0};
    unsigned char raw[1024];
    char txt[2048];
    if (!z.s || !z.len) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    int64_t count = 0;
    /* the specials and the bytes */
    if (!rc) rc = put_piece(&m, "<unk>", 5, 0, 2);
    if (!rc) rc = put_piece(&m, "<s>", 3, 0, 3);
    if (!rc) rc = put_piece(&m, "</s>", 4, 0, 3);
    for (int b = 0; b < 256 && !rc; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        rc = put_piece(&m, name, 6, 0, 6);
    }
    count = 3 + 256;
    /* the characters, then the learned strings, longest-first preference through the scores */
    for (int c = -1; c < 0x7f && !rc; c++) {
        if (c >= 0 && c <= 0x20) continue;
        size_t n = c < 0 ? 3 : 1;
        memcpy(txt, c < 0 ? "\xE2\x96\x81" : (char[]){(char)c}, n);
        if (!(z.s[z.n] = malloc(n))) { rc = mtok_err(MTOK_ERESOURCE, "out of memory"); break; }
        memcpy(z.s[z.n], txt, n), z.len[z.n++] = n;
        rc = put_piece(&m, txt, n, -1.0f, 1);
        count++;
    }
    const char *line = bpe;
    for (int64_t r = 0; !rc && line < bpe + bpe_len && count < max_pieces; r++) {
        const char *nl = memchr(line, '\n', (size_t)(bpe + bpe_len - line));
        const char *sp = memchr(line, ' ', (size_t)((nl ? nl : bpe + bpe_len) - line));
        size_t tn, rn = sp && (size_t)(sp - line) < sizeof raw * 4 / 3 ? unb64(line, (size_t)(sp - line), raw) : 0;
        line = nl ? nl + 1 : bpe + bpe_len;
        if (rn < 2 || !spm_text(raw, rn, txt, &tn) || seen(&z, txt, tn)) continue;
        if (!(z.s[z.n] = malloc(tn))) { rc = mtok_err(MTOK_ERESOURCE, "out of memory"); break; }
        memcpy(z.s[z.n], txt, tn), z.len[z.n++] = tn;
        /* every piece costs about the same, so the segmentation with the fewest pieces wins; ties go to
         * the piece learned first */
        rc = put_piece(&m, txt, tn, -1.0f - 1e-4f * (float)r, 1);
        count++;
    }
    /* trainer_spec: unigram, the piece count, byte fallback */
    pbuf t = {0}, nz = {0};
    if (!rc) rc = pb_bool(&t, 3, 1);
    if (!rc) rc = pb_bool(&t, 4, (uint64_t)count);
    if (!rc) rc = pb_bool(&t, 35, 1);
    if (!rc) rc = pb_bytes(&m, 2, t.p, t.n);
    /* normalizer_spec: identity, dummy prefix, white space kept, spaces escaped as "▁" */
    if (!rc) rc = pb_bytes(&nz, 1, "identity", 8);
    if (!rc) rc = pb_bool(&nz, 3, 1);
    if (!rc) rc = pb_bool(&nz, 4, 0);
    if (!rc) rc = pb_bool(&nz, 5, 1);
    if (!rc) rc = pb_bytes(&m, 3, nz.p, nz.n);
    free(t.p), free(nz.p), free(bpe);
    for (size_t i = 0; z.s && i < z.n; i++) free(z.s[i]);
    free(z.s), free(z.len);
    if (rc) {
        free(m.p);
        return rc;
    }
    *data = (char *)m.p, *len = m.n, *n_pieces = count;
    return 0;
}
