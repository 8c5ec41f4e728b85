/* tokenizer.c — the public tokenizer API (mtok.h "Tokenizer"): loading, encoding, token queries and
 * the streaming decoder. Files are read in tok_load.c, the byte-pair merge lives in tok_bpe.c, and
 * ChatGLM3's SentencePiece models go through libsentencepiece in tok_spm.cc: for them step 1 below is the
 * same, and each text segment between added tokens is then encoded by the library (steps 2-4 are its
 * own); their decoding rules are spm_decode_next's.
 *
 * Encoding a text:
 *   1. added tokens: the text is cut at added-token strings (leftmost-longest). Special ones count only
 *      with allow_special; non-special added tokens of a tokenizer.json always do, as in `tokenizers`.
 *   2. UTF-8: each gap is split into maximal valid UTF-8 runs and runs of invalid bytes. The regex runs
 *      on the valid runs (validated here, so PCRE2 gets PCRE2_NO_UTF_CHECK); a run of invalid bytes is one
 *      piece of its own, merged by BPE like any other, so encoding stays lossless (tiktoken and tokenizers
 *      take str and never see invalid UTF-8; whatever we do with it is ours to define).
 *   3. pre-split: PCRE2 (UTF + UCP, JIT when available) with the tokenizer's pattern; text between matches
 *      (none for the GLM-4 pattern, which covers every character) is kept as a piece, not dropped.
 *   4. BPE of each piece (tok_bpe.c).
 * All per-call state (match data, JIT stack, BPE scratch) is allocated per call, so one tokenizer may be
 * used from several threads at once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tok_internal.h"

/* ---------------------------------------------------------------------------------------------- */
/* Loading                                                                                         */

static int read_file(const char *path, char **buf, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return mtok_err(MTOK_EINPUT, "%s: cannot open", path);
    char *b = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(b, cap);
            if (!nb) {
                free(b), fclose(f);
                return mtok_err(MTOK_ERESOURCE, "%s: out of memory reading the file", path);
            }
            b = nb;
        }
        size_t got = fread(b + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        return mtok_err(MTOK_EINPUT, "%s: read error", path);
    }
    *buf = b, *n = len;
    return 0;
}

void mtok_tokenizer_free(mtok_tokenizer *t) {
    if (!t) return;
    free(t->blob), free(t->off), free(t->len), free(t->flags), free(t->added_lens);
    tok_map_free(&t->vocab);
    tok_map_free(&t->added);
    tok_pairmap_free(&t->merges);
    pcre2_code_free(t->re);
    tok_spm_free(t->spm);
    free(t->chat_template);
    free(t->path), free(t->pattern);
    free(t);
}

void tok_disable_jit(mtok_tokenizer *t) { t->jit = 0; }

/* Text files (tiktoken lines, JSON) hold no control bytes but tab, CR and LF. */
static int looks_like_text(const char *buf, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x20 && c != '\t' && c != '\r' && c != '\n') return 0;
    }
    return 1;
}

const char *mtok_tokenizer_kind(const mtok_tokenizer *t) {
    if (!t) return "none";
    return t->kind == TOK_SPM ? "sentencepiece" : t->kind == TOK_HF ? "tokenizer.json" : "tiktoken";
}

int mtok_tokenizer_load_file(const char *path, mtok_tokenizer **out) {
    if (!path || !out) return mtok_err(MTOK_EUSAGE, "mtok_tokenizer_load_file: NULL argument");
    *out = NULL;
    char *buf = NULL;
    size_t n = 0;
    int rc = read_file(path, &buf, &n);
    if (rc) return rc;
    mtok_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        free(buf);
        return mtok_err(MTOK_ERESOURCE, "out of memory");
    }
    /* A JSON object is a tokenizer.json; anything else must be tiktoken rank lines (whose base64 never
     * starts with '{'). */
    size_t i = 0;
    if (n >= 3 && !memcmp(buf, "\xEF\xBB\xBF", 3)) i = 3;
    while (i < n && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n')) i++;
    if (tok_is_spm(buf, n)) rc = tok_load_spm(t, path, buf, n);
    else if (i < n && buf[i] == '{') rc = tok_load_hf_json(t, path, buf, n);
    else if (!looks_like_text(buf, n))
        rc = mtok_err(MTOK_EINPUT, "%s: not a tokenizer mtok reads: neither a SentencePiece model (a serialized "
                      "ModelProto), a tiktoken rank file (\"<base64> <rank>\" lines) nor a tokenizer.json", path);
    else rc = tok_load_tiktoken(t, path, buf, n);
    free(buf);
    if (!rc) rc = tok_read_chat_template(t, path);
    if (rc) {
        mtok_tokenizer_free(t);
        return rc;
    }
    mtok_log(2, "%s: %lld ids, %s, regex %s", path, (long long)t->n_vocab, mtok_tokenizer_kind(t),
             t->kind == TOK_SPM ? "none" : t->jit ? "JIT" : "interpreted");
    *out = t;
    return 0;
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int mtok_tokenizer_load(const char *dir, mtok_tokenizer **out) {
    if (!dir || !out) return mtok_err(MTOK_EUSAGE, "mtok_tokenizer_load: NULL argument");
    *out = NULL;
    size_t dn = strlen(dir);
    char *p = malloc(dn + sizeof "/tokenizer.model");
    if (!p) return mtok_err(MTOK_ERESOURCE, "out of memory");
    int rc;
    sprintf(p, "%s/tokenizer.model", dir);
    if (!is_file(p)) sprintf(p, "%s/tokenizer.json", dir);
    if (is_file(p)) rc = mtok_tokenizer_load_file(p, out);
    else rc = mtok_err(MTOK_EINPUT, "%s: no tokenizer.model or tokenizer.json", dir);
    free(p);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Encoding                                                                                        */

typedef struct {
    const mtok_tokenizer *t;
    mtok_ids *out;
    tok_scratch *scratch;
    pcre2_match_data *md;
    pcre2_match_context *mctx;   /* the work limits of every match (regex_split) */
    pcre2_jit_stack *jit_stack;  /* created only when a match needs more than the default 32 KiB */
    int raised;                  /* the memory limits were raised once already */
} enc_ctx;

/* Work limits of one regex match (PCRE2's match and depth limits) over a subject with `left` bytes
 * from the match start. The pre-tokenizer patterns mtok ships (GLM-4's, GPT-2's) take under one
 * step per byte even on their worst inputs (a megabyte of spaces then a letter: \s*[\r\n]+
 * backtracks through every space), so PCRE2's default of 10M plus 16 per byte never binds on them.
 * A tokenizer.json pattern that backtracks catastrophically, such as (a+)+$, reaches the limit in
 * well under a second (it ran for 6.7 s under a limit of 2^32, issue 16) and the match fails with
 * a message naming the file and the pattern. */
#define RE_BASE_STEPS 10000000u
#define RE_STEPS_PER_BYTE 16u
static uint32_t match_steps(size_t left) {
    uint64_t v = RE_BASE_STEPS + (uint64_t)RE_STEPS_PER_BYTE * left;
    return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* A match ran out of JIT stack or interpreter heap (memory, not steps): raise both once, to sizes
 * that still bound what a hostile pattern can take. */
static int raise_memory(enc_ctx *c, size_t n) {
    if (c->raised)
        return mtok_err(MTOK_EINPUT, "%s: the pre-tokenizer regex \"%s\" needs more than %d MiB of match memory "
                        "on a %zu-byte run of text", c->t->path, c->t->pattern, c->t->jit ? 256 : 1024, n);
    c->raised = 1;
    if (c->t->jit) {
        c->jit_stack = pcre2_jit_stack_create(32 * 1024, 256 * 1024 * 1024, NULL);
        if (!c->jit_stack) return mtok_err(MTOK_ERESOURCE, "out of memory for a regex JIT stack");
        pcre2_jit_stack_assign(c->mctx, NULL, c->jit_stack);
    }
    pcre2_set_heap_limit(c->mctx, 1024 * 1024); /* KiB: 1 GiB */
    return 0;
}

/* Splits a valid UTF-8 run with the pre-tokenizer regex and BPEs every piece. */
static int regex_split(enc_ctx *c, const uint8_t *s, size_t n) {
    if (!c->md && !(c->md = pcre2_match_data_create_from_pattern(c->t->re, NULL)))
        return mtok_err(MTOK_ERESOURCE, "out of memory for regex match data");
    if (!c->mctx && !(c->mctx = pcre2_match_context_create(NULL))) return mtok_err(MTOK_ERESOURCE, "out of memory");
    size_t gap = 0, at = 0;
    int rc = 0;
    while (at < n && !rc) {
        uint32_t steps = match_steps(n - at);
        pcre2_set_match_limit(c->mctx, steps);
        pcre2_set_depth_limit(c->mctx, steps);
        int m = pcre2_match(c->t->re, s, n, at, PCRE2_NO_UTF_CHECK | (c->t->jit ? 0 : PCRE2_NO_JIT), c->md, c->mctx);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m == PCRE2_ERROR_MATCHLIMIT || m == PCRE2_ERROR_DEPTHLIMIT)
            return mtok_err(MTOK_EINPUT, "%s: the pre-tokenizer regex \"%s\" gave up after %u backtracking steps "
                            "on a %zu-byte run of text (a pattern that backtracks catastrophically cannot be used)",
                            c->t->path, c->t->pattern, steps, n - at);
        if (m == PCRE2_ERROR_JIT_STACKLIMIT || m == PCRE2_ERROR_HEAPLIMIT) {
            rc = raise_memory(c, n - at);
            continue;
        }
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            return mtok_err(MTOK_EINTERNAL, "%s: the pre-tokenizer regex \"%s\" failed: %s", c->t->path,
                            c->t->pattern, (char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (ms < gap || me < ms || me > n)
            return mtok_err(MTOK_EINPUT, "%s: the pre-tokenizer regex \"%s\" reports a match outside its subject",
                            c->t->path, c->t->pattern);
        if (me == ms) { /* an empty match splits nothing: step over one character, it joins the gap */
            int k = ms < n ? tok_utf8_char(s + ms, n - ms) : 1;
            at = ms + (size_t)(k > 0 ? k : 1);
            continue;
        }
        if (ms > gap) rc = tok_bpe_piece(c->t, c->scratch, s + gap, ms - gap, c->out);
        if (!rc) rc = tok_bpe_piece(c->t, c->scratch, s + ms, me - ms, c->out);
        gap = at = me;
    }
    if (!rc && gap < n) rc = tok_bpe_piece(c->t, c->scratch, s + gap, n - gap, c->out);
    return rc;
}

/* Text between added tokens: valid UTF-8 runs go through the regex, invalid byte runs straight to BPE. */
static int encode_runs(enc_ctx *c, const uint8_t *s, size_t n) {
    size_t i = 0;
    int rc = 0;
    while (i < n && !rc) {
        size_t j = i;
        int k;
        while (j < n && (k = tok_utf8_char(s + j, n - j)) > 0) j += (size_t)k;
        if (j > i) rc = regex_split(c, s + i, j - i);
        i = j;
        while (j < n && (k = tok_utf8_char(s + j, n - j)) <= 0) j += k < 0 ? (size_t)-k : n - j;
        if (!rc && j > i) rc = tok_bpe_piece(c->t, c->scratch, s + i, j - i, c->out);
        i = j;
    }
    return rc;
}

static int encode_plain(enc_ctx *c, const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    if (c->t->kind == TOK_SPM) return tok_spm_encode(c->t, s, n, c->out); /* each segment its own dummy prefix */
    if (!c->t->add_prefix_space || s[0] == ' ') return encode_runs(c, s, n);
    /* ByteLevel(add_prefix_space): every segment between added tokens gets a leading space */
    uint8_t *p = malloc(n + 1);
    if (!p) return mtok_err(MTOK_ERESOURCE, "out of memory");
    p[0] = ' ';
    memcpy(p + 1, s, n);
    int rc = encode_runs(c, p, n + 1);
    free(p);
    return rc;
}

/* Length of the longest added token at s that may be matched (0 if none). */
static size_t added_at(const mtok_tokenizer *t, const uint8_t *s, size_t n, int allow_special, int32_t *id) {
    for (int k = 0; k < t->n_added_lens; k++) {
        size_t len = t->added_lens[k];
        if (len > n) continue;
        int32_t a = tok_map_find(t, &t->added, s, len);
        if (a >= 0 && !(t->flags[a] & TOK_NOSCAN) && (allow_special || !(t->flags[a] & TOK_SPECIAL))) {
            *id = a;
            return len;
        }
    }
    return 0;
}

static int encode(enc_ctx *c, const uint8_t *s, size_t n, int allow_special) {
    const mtok_tokenizer *t = c->t;
    uint8_t want = allow_special ? 3 : 2; /* which added_first bits may start a match */
    if (!t->n_added_lens || (!allow_special && !t->has_plain_added)) return encode_plain(c, s, n);
    size_t seg = 0;
    for (size_t i = 0; i < n;) {
        int32_t id;
        size_t len = (t->added_first[s[i]] & want) ? added_at(t, s + i, n - i, allow_special, &id) : 0;
        if (!len) {
            i++;
            continue;
        }
        int rc = encode_plain(c, s + seg, i - seg);
        if (!rc) rc = mtok_ids_push(c->out, id);
        if (rc) return rc;
        i += len;
        seg = i;
    }
    return encode_plain(c, s + seg, n - seg);
}

int mtok_tokenize(const mtok_tokenizer *t, const char *text, size_t len, int allow_special, mtok_ids *out) {
    if (!t || !out || (!text && len)) return mtok_err(MTOK_EUSAGE, "mtok_tokenize: NULL argument");
    enc_ctx c = {.t = t, .out = out, .scratch = tok_scratch_new()};
    if (!c.scratch) return mtok_err(MTOK_ERESOURCE, "out of memory");
    size_t n0 = out->n;
    int rc = encode(&c, (const uint8_t *)text, len, allow_special);
    if (rc) out->n = n0; /* all or nothing */
    tok_scratch_free(c.scratch);
    pcre2_match_data_free(c.md);
    pcre2_match_context_free(c.mctx);
    pcre2_jit_stack_free(c.jit_stack);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Token queries                                                                                   */

int32_t mtok_token_special(const mtok_tokenizer *t, const char *s) {
    if (!t || !s || !*s) return -1;
    /* ChatGLM3 spells GLM-4's <sop>/<eop> without brackets; the GLM-4 spelling finds them too, so code that
     * builds the [gMASK]<sop> prefix serves both families */
    if (t->kind == TOK_SPM && (!strcmp(s, "<sop>") || !strcmp(s, "<eop>"))) s = s[1] == 's' ? "sop" : "eop";
    int32_t id = tok_map_find(t, &t->added, s, strlen(s));
    return id >= 0 && (t->flags[id] & TOK_SPECIAL) ? id : -1;
}

const char *mtok_token_bytes(const mtok_tokenizer *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->n_vocab || !(t->flags[id] & TOK_PRESENT)) {
        if (len) *len = 0;
        return NULL;
    }
    size_t n;
    const uint8_t *b = tok_bytes(t, id, &n);
    if (len) *len = n;
    return (const char *)b;
}

const char *mtok_tokenizer_chat_template(const mtok_tokenizer *t) { return t ? t->chat_template : NULL; }

int64_t mtok_tokenizer_n_vocab(const mtok_tokenizer *t) { return t ? t->n_vocab : 0; }

int mtok_token_is_special(const mtok_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab && (t->flags[id] & TOK_SPECIAL) != 0;
}

/* Not the raw length of the longest token but the most bytes decoding one token can produce: each
 * non-ASCII byte may come out as a 3-byte U+FFFD. So cap = max_token_len + 8 is always enough for
 * mtok_decode_next (the +8 covers up to 3 pending bytes completed or replaced). */
size_t mtok_tokenizer_max_token_len(const mtok_tokenizer *t) { return t ? t->max_token_len : 0; }

/* ---------------------------------------------------------------------------------------------- */
/* Decoding                                                                                        */

/* bytes of mtok_decoder.pend past any pending character: SentencePiece's "a run has begun" and "this
 * decoder serves a SentencePiece tokenizer" (for mtok_decode_flush, which is not given the tokenizer) */
#define SPM_RUN 7
#define SPM_MODE 6
static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

typedef struct {
    char *p;
    size_t n, cap;
    int full; /* once something did not fit, nothing more is written, so the output stays a prefix */
} obuf;

static void put(obuf *o, const void *s, size_t n) {
    if (o->full || o->n + n > o->cap) {
        o->full = 1;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

/* Emits the characters of s; invalid maximal subparts become U+FFFD. A trailing incomplete character is
 * replaced too when final, else left unconsumed. Returns the bytes consumed. */
static size_t decode_bytes(obuf *o, const uint8_t *s, size_t n, int final) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] < 0x80) j++; /* ASCII runs in one copy */
        if (j > i) {
            put(o, s + i, j - i);
            i = j;
            continue;
        }
        int k = tok_utf8_char(s + i, n - i);
        if (k > 0) put(o, s + i, (size_t)k), i += (size_t)k;
        else if (k < 0) put(o, REPLACEMENT, 3), i += (size_t)-k;
        else if (!final) break;
        else put(o, REPLACEMENT, 3), i = n;
    }
    return i;
}

/* SentencePiece pending bytes are final: each becomes a U+FFFD, as SentencePiece replaces each byte of a
 * byte-piece run that does not form a character (not Unicode's maximal subparts). */
static void spm_flush(mtok_decoder *d, obuf *o) {
    for (int i = 0; i < d->n_pend && i < 3; i++) put(o, REPLACEMENT, 3);
    d->n_pend = 0;
}

/* THUDM's SPTokenizer.decode, one id at a time: a special id ends the run of ordinary ids and adds its
 * literal; the next run starts afresh. SentencePiece drops the dummy-prefix space of a run's first visible
 * piece (control pieces, <s> and </s>, are invisible) and decodes runs of byte pieces greedily: a complete
 * character as it is, otherwise one U+FFFD for the first byte and the rest looked at again. */
static size_t spm_decode_next(const mtok_tokenizer *t, mtok_decoder *d, int32_t id, const uint8_t *s, size_t n,
                              obuf *o) {
    uint8_t f = t->flags[id];
    d->pend[SPM_MODE] = 1;
    if (d->n_pend < 0 || d->n_pend > 3) d->n_pend = 0;
    if (f & TOK_CONTROL) return 0;
    if (f & TOK_SPECIAL) {
        spm_flush(d, o);
        put(o, s, n);
        d->pend[SPM_RUN] = 0;
        return o->n;
    }
    int first = !d->pend[SPM_RUN];
    d->pend[SPM_RUN] = 1;
    if (!(f & TOK_SPM_RAW) || n != 1 || t->len[id] != 1 || s[0] < 0x80) {
        /* an ordinary piece (or an ASCII byte piece): whole characters; a byte run before it is over */
        spm_flush(d, o);
        if (first && !(f & TOK_SPM_RAW) && n && s[0] == ' ') s++, n--;
        decode_bytes(o, s, n, 1);
        return o->n;
    }
    d->pend[d->n_pend++] = s[0];
    while (d->n_pend > 0) {
        int k = tok_utf8_char(d->pend, (size_t)d->n_pend);
        if (k == 0) break;
        size_t used = k > 0 ? (size_t)k : 1;
        put(o, k > 0 ? (const void *)d->pend : REPLACEMENT, k > 0 ? (size_t)k : 3);
        memmove(d->pend, d->pend + used, (size_t)d->n_pend - used);
        d->n_pend -= (int)used;
    }
    return o->n;
}

size_t mtok_decode_next(const mtok_tokenizer *t, mtok_decoder *d, int32_t id, char *out, size_t cap) {
    size_t n;
    const uint8_t *s = (const uint8_t *)mtok_token_bytes(t, id, &n);
    if (!s || !d) return 0; /* ids outside the vocabulary (e.g. padding rows) decode to nothing */
    obuf o = {out, 0, out ? cap : 0, 0};
    if (t->kind == TOK_SPM) return spm_decode_next(t, d, id, s, n, &o);
    int np = d->n_pend;
    if (np < 0 || np > 3) np = 0; /* a pending prefix is at most 3 bytes; anything else is not ours */
    if (np > 0) {
        /* Finish the pending character with the token's first bytes. The pending bytes are a valid prefix,
         * so the character either completes, stays incomplete, or breaks at a byte of this token. */
        uint8_t head[8];
        size_t h = n < 4 ? n : 4;
        memcpy(head, d->pend, (size_t)np);
        memcpy(head + np, s, h);
        int k = tok_utf8_char(head, (size_t)np + h);
        if (k == 0) { /* still incomplete: then the whole token (h == n) joins the pending bytes */
            memcpy(d->pend, head, (size_t)np + h);
            d->n_pend = np + (int)h;
            return 0;
        }
        size_t used = (size_t)(k > 0 ? k : -k) - (size_t)np;
        put(&o, k > 0 ? (const void *)head : REPLACEMENT, k > 0 ? (size_t)k : 3);
        s += used, n -= used;
    }
    size_t c = decode_bytes(&o, s, n, 0);
    memcpy(d->pend, s + c, n - c); /* at most 3 bytes: an incomplete character */
    d->n_pend = (int)(n - c);
    return o.n;
}

size_t mtok_decode_flush(mtok_decoder *d, char *out, size_t cap) {
    if (!d) return 0;
    obuf o = {out, 0, out ? cap : 0, 0};
    if (d->pend[SPM_MODE]) spm_flush(d, &o);
    else if (d->n_pend > 0) put(&o, REPLACEMENT, 3);
    d->n_pend = 0;
    return o.n;
}

char *mtok_detokenize(const mtok_tokenizer *t, const int32_t *ids, size_t n, size_t *out_len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        if (mtok_token_bytes(t, ids[i], &len)) total += 3 * len + 3; /* every byte a U+FFFD, plus a pending one */
    }
    size_t cap = total + 4;
    char *s = malloc(cap);
    if (!s) {
        mtok_err(MTOK_ERESOURCE, "out of memory decoding %zu tokens", n);
        return NULL;
    }
    /* the stream decoder itself, so a whole decode always equals the concatenated stream */
    mtok_decoder d = {{0}, 0};
    size_t o = 0;
    for (size_t i = 0; i < n; i++) o += mtok_decode_next(t, &d, ids[i], s + o, cap - 1 - o);
    o += mtok_decode_flush(&d, s + o, cap - 1 - o);
    s[o] = 0;
    if (out_len) *out_len = o;
    return s;
}
