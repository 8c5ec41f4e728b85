/* tok_spm.cc — ChatGLM3's SentencePiece tokenizer.model through libsentencepiece (Debian's package), behind
 * the C calls declared in tok_internal.h. The library does what must be exact (normalisation, the dummy
 * prefix, Viterbi/BPE segmentation, byte fallback); this file only copies every piece's text into the
 * tokenizer's id table so that token queries and the streaming decoder of tokenizer.c work as for the other
 * kinds, and numbers ChatGLM3's special tokens after the pieces (docs/GLM.md §4.2).
 *
 * Decoding (tokenizer.c) follows THUDM's SPTokenizer.decode: runs of ordinary ids are SentencePiece-decoded,
 * each special id ends the run and adds its literal text. SentencePiece drops the dummy-prefix space of a
 * run's first piece; so does mtok's decoder, from the flags set here. */
#include <sentencepiece_processor.h>

#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "tok_internal.h"

struct tok_spm {
    sentencepiece::SentencePieceProcessor proc;
};

/* ChatGLM3's special tokens, numbered from the piece count in this order (MODEL-GLM3 SPTokenizer). */
static const char *const GLM3_SPECIALS[] = {
    "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
};

/* ---------------------------------------------------------------------------------------------- */
/* Protobuf framing: enough to recognise a ModelProto without the generated classes (Debian ships no   */
/* sentencepiece_model.pb.h).                                                                     */

static int varint(const uint8_t *p, size_t n, size_t *at, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*at >= n) return -1;
        uint8_t b = p[(*at)++];
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

/* Walks one field at *at; returns its number and wire type, and for length-delimited fields the payload. */
static int field(const uint8_t *p, size_t n, size_t *at, uint32_t *num, int *wt, size_t *off, size_t *len,
                 uint64_t *val) {
    uint64_t key;
    if (varint(p, n, at, &key)) return -1;
    *num = (uint32_t)(key >> 3), *wt = (int)(key & 7);
    if (*num == 0) return -1;
    switch (*wt) {
    case 0: return varint(p, n, at, val);
    case 1: if (n - *at < 8) return -1; *at += 8; return 0;
    case 5: if (n - *at < 4) return -1; *at += 4; return 0;
    case 2: {
        uint64_t l;
        if (varint(p, n, at, &l) || l > n - *at) return -1;
        *off = *at, *len = (size_t)l;
        *at += (size_t)l;
        return 0;
    }
    default: return -1;
    }
}

/* A ModelProto is a run of length-delimited top-level fields 1..5 (pieces, trainer_spec, normalizer_spec,
 * self_test_data, denormalizer_spec) starting with a piece. A tiktoken file starts with a base64 letter or
 * digit, which as a protobuf key is never field 1 of wire type 2 (that byte is "\n"), and a JSON file with
 * "{" or white space; neither walks as such a run to its end. */
int tok_is_spm(const char *buf, size_t n) {
    const uint8_t *p = (const uint8_t *)buf;
    if (n < 2 || p[0] != 0x0A) return 0;
    size_t at = 0;
    while (at < n) {
        uint32_t num;
        int wt;
        size_t off, len;
        uint64_t v;
        if (field(p, n, &at, &num, &wt, &off, &len, &v) || wt != 2 || num > 5) return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */

/* The text a piece decodes to: U+2581 "▁" becomes a space. */
static std::string piece_text(const std::string &piece) {
    std::string out;
    out.reserve(piece.size());
    for (size_t i = 0; i < piece.size();) {
        if (piece.compare(i, 3, "\xE2\x96\x81") == 0) out += ' ', i += 3;
        else out += piece[i++];
    }
    return out;
}

/* "<0xAB>" -> 0xAB */
static int byte_piece(const std::string &piece) {
    if (piece.size() != 6 || piece.compare(0, 3, "<0x") || piece[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = piece[(size_t)i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Every piece's decoded text and kind into the id table. */
static int set_pieces(mtok_tokenizer *t, const char *path, int pieces) {
    const sentencepiece::SentencePieceProcessor &proc = t->spm->proc;
    for (int id = 0; id < pieces; id++) {
        const std::string &piece = proc.IdToPiece(id);
        int rc;
        if (proc.IsControl(id)) {
            rc = tok_set_token(t, id, "", 0, TOK_CONTROL);
        } else if (proc.IsUnknown(id)) {
            /* SentencePiece's surface for an unknown piece (kDefaultUnknownSymbol) */
            rc = tok_set_token(t, id, " \xE2\x81\x87 ", 5, TOK_SPM_RAW);
        } else if (proc.IsByte(id)) {
            int b = byte_piece(piece);
            if (b < 0) return mtok_err(MTOK_EINPUT, "%s: byte piece %d is \"%.16s\", not <0xXX>", path, id, piece.c_str());
            uint8_t c = (uint8_t)b;
            rc = tok_set_token(t, id, &c, 1, TOK_SPM_RAW);
        } else {
            std::string s = piece_text(piece);
            if (s.empty()) return mtok_err(MTOK_EINPUT, "%s: piece %d is empty", path, id);
            rc = tok_set_token(t, id, s.data(), s.size(), 0);
        }
        if (rc) return rc;
    }
    return 0;
}

int tok_load_spm(mtok_tokenizer *t, const char *path, const char *buf, size_t n) {
    t->kind = TOK_SPM;
    tok_spm *h = new (std::nothrow) tok_spm;
    if (!h) return mtok_err(MTOK_ERESOURCE, "out of memory");
    t->spm = h;
    sentencepiece::util::Status st;
    try { /* no C++ exception may cross into C */
        st = h->proc.LoadFromSerializedProto(absl::string_view(buf, n));
    } catch (const std::exception &e) {
        return mtok_err(MTOK_ERESOURCE, "%s: loading the SentencePiece model failed: %s", path, e.what());
    }
    if (!st.ok())
        return mtok_err(MTOK_EINPUT, "%s: a SentencePiece model that libsentencepiece rejects: %s", path,
                        st.message());
    int rc = tok_map_init(&t->vocab, 16); /* unused by this kind; tok_finish looks up single bytes in it */
    if (rc) return rc;
    int pieces = h->proc.GetPieceSize();
    if (pieces <= 0 || pieces > TOK_MAX_RANKS - 64)
        return mtok_err(MTOK_EINPUT, "%s: SentencePiece model with %d pieces", path, pieces);
    try {
        rc = set_pieces(t, path, pieces);
    } catch (const std::exception &e) {
        return mtok_err(MTOK_ERESOURCE, "%s: reading the SentencePiece pieces failed: %s", path, e.what());
    }
    if (rc) return rc;
    for (size_t k = 0; k < sizeof GLM3_SPECIALS / sizeof *GLM3_SPECIALS; k++) {
        const char *sp = GLM3_SPECIALS[k];
        int64_t id = pieces + (int64_t)k;
        rc = tok_add_added(t, path, id, sp, strlen(sp), 1);
        if (rc) return rc;
        if (!strcmp(sp, "sop") || !strcmp(sp, "eop")) t->flags[id] |= TOK_NOSCAN;
    }
    t->path = strdup(path);
    if (!t->path) return mtok_err(MTOK_ERESOURCE, "out of memory");
    rc = tok_finish(t, path);
    /* a special id may first turn up to 3 pending bytes into U+FFFDs (tokenizer.c, spm_flush) */
    t->max_token_len += 9;
    return rc;
}

int tok_spm_encode(const mtok_tokenizer *t, const uint8_t *s, size_t n, mtok_ids *out) {
    if (n == 0) return 0;
    std::vector<int> ids;
    sentencepiece::util::Status st;
    try {
        st = t->spm->proc.Encode(absl::string_view((const char *)s, n), &ids);
    } catch (const std::exception &e) {
        return mtok_err(MTOK_ERESOURCE, "%s: encoding %zu bytes failed: %s", t->path, n, e.what());
    }
    if (!st.ok()) return mtok_err(MTOK_EINPUT, "%s: SentencePiece encode failed: %s", t->path, st.message());
    for (int id : ids) {
        int rc = mtok_ids_push(out, id);
        if (rc) return rc;
    }
    return 0;
}

void tok_spm_free(struct tok_spm *p) { delete p; }
