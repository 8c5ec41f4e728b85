/* tok_load.c — reading tokenizer files: the tiktoken-style tokenizer.model (+ an optional
 * tokenizer_config.json beside it declaring the special tokens) and Hugging Face byte-level BPE
 * tokenizer.json (SentencePiece models: tok_spm.cc), and the chat template beside any of them. Every
 * failure names the file and, where there is one, the line or JSON path. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* GLM-4's pre-tokenizer (docs/GLM.md §4.1) and GPT-2's (a bare ByteLevel pre-tokenizer with use_regex). */
static const char *GLM4_PATTERN = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                                  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Special tokens of GLM-4, numbered after the ranks in this order (docs/GLM.md §4.1). */
static const char *GLM4_SPECIALS[] = {
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>",
};

/* ---------------------------------------------------------------------------------------------- */
/* Token storage                                                                                   */

static int grow_ids(mtok_tokenizer *t, int64_t need) {
    if (need <= t->cap_vocab) return 0;
    int64_t cap = t->cap_vocab ? t->cap_vocab : 1024;
    while (cap < need) cap *= 2;
    uint64_t *off = realloc(t->off, (size_t)cap * sizeof *off);
    if (off) t->off = off;
    uint32_t *len = realloc(t->len, (size_t)cap * sizeof *len);
    if (len) t->len = len;
    uint8_t *flags = realloc(t->flags, (size_t)cap);
    if (flags) t->flags = flags;
    if (!off || !len || !flags) return mtok_err(MTOK_ERESOURCE, "out of memory for %lld token ids", (long long)cap);
    memset(t->flags + t->cap_vocab, 0, (size_t)(cap - t->cap_vocab));
    t->cap_vocab = cap;
    return 0;
}

int tok_set_token(mtok_tokenizer *t, int64_t id, const void *bytes, size_t n, uint8_t flags) {
    /* the callers check ids against the limit with the file in the message; this guards the arrays */
    if (id < 0 || id >= TOK_MAX_RANKS)
        return mtok_err(MTOK_EINPUT, "token id %lld is outside [0, %d)", (long long)id, TOK_MAX_RANKS);
    if ((n == 0 && !(flags & TOK_CONTROL)) || n > UINT32_MAX) return mtok_err(MTOK_EINPUT, "token id %lld has length %zu", (long long)id, n);
    int rc = grow_ids(t, id + 1);
    if (rc) return rc;
    if (t->blob_len + n > t->blob_cap) {
        size_t cap = t->blob_cap ? t->blob_cap : 65536;
        while (cap < t->blob_len + n) cap *= 2;
        char *b = realloc(t->blob, cap);
        if (!b) return mtok_err(MTOK_ERESOURCE, "out of memory for token bytes (%zu)", cap);
        t->blob = b, t->blob_cap = cap;
    }
    if (n) memcpy(t->blob + t->blob_len, bytes, n);
    t->off[id] = t->blob_len;
    t->len[id] = (uint32_t)n;
    t->flags[id] = flags | TOK_PRESENT;
    t->blob_len += n;
    if (id + 1 > t->n_vocab) t->n_vocab = id + 1;
    return 0;
}

/* Registers an added token; an id that is already an ordinary token may be re-declared with the same
 * bytes (GPT-2 lists <|endoftext|> in both places), anything else is a conflict. */
int tok_add_added(mtok_tokenizer *t, const char *path, int64_t id, const char *s, size_t n, int special) {
    uint8_t fl = TOK_ADDED | (special ? TOK_SPECIAL : 0);
    /* checked before the id indexes the flags or sizes the id arrays: a negative id read before
     * them, and 2e9 allocated gigabytes before the count limit in tok_finish was reached */
    if (id < 0 || id >= TOK_MAX_RANKS)
        return mtok_err(MTOK_EINPUT, "%s: added token \"%.*s\" has id %lld, outside [0, %d)", path,
                        (int)(n > 64 ? 64 : n), s, (long long)id, TOK_MAX_RANKS);
    if (id < t->n_vocab && (t->flags[id] & TOK_PRESENT)) {
        size_t kn;
        const uint8_t *k = tok_bytes(t, (int32_t)id, &kn);
        if (kn != n || memcmp(k, s, n) != 0 || (t->flags[id] & TOK_ADDED))
            return mtok_err(MTOK_EINPUT, "%s: added token \"%.*s\" reuses id %lld, which is already another token",
                            path, (int)(n > 64 ? 64 : n), s, (long long)id);
        t->flags[id] |= fl;
        return 0;
    }
    return tok_set_token(t, id, s, n, fl);
}

int tok_compile_pattern(mtok_tokenizer *t, const char *path, const char *pattern, int literal) {
    int err;
    PCRE2_SIZE at;
    uint32_t opt = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opt, &err, &at, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return mtok_err(MTOK_EINPUT, "%s: pre-tokenizer regex does not compile at offset %zu: %s", path, (size_t)at,
                        (char *)msg);
    }
    /* kept for the messages of a match that fails later: the path, and the pattern as one printable
     * line of at most 80 bytes (a hostile file's pattern may hold newlines or be kilobytes long) */
    size_t pn = strlen(pattern), show = pn > 80 ? 80 : pn;
    t->path = strdup(path);
    t->pattern = malloc(show + 4);
    if (!t->path || !t->pattern) return mtok_err(MTOK_ERESOURCE, "out of memory");
    for (size_t i = 0; i < show; i++) {
        unsigned char ch = (unsigned char)pattern[i];
        t->pattern[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    strcpy(t->pattern + show, pn > show ? "..." : "");
    /* JIT is several times faster; where it is unavailable (no JIT support, W^X policy) the interpreter
     * gives the same matches (tests cover that path through tok_disable_jit). */
    t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    if (!t->jit) mtok_log(2, "%s: regex JIT unavailable, using the PCRE2 interpreter", path);
    return 0;
}

static int cmp_size_desc(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The distinct lengths of the added tokens, longest first: the scan tries them in this order at each
 * position, which makes the match leftmost-longest. */
static int added_lengths(mtok_tokenizer *t) {
    size_t n = 0;
    for (int64_t id = 0; id < t->n_vocab; id++) n += (t->flags[id] & TOK_ADDED) != 0;
    t->added_lens = malloc((n ? n : 1) * sizeof *t->added_lens);
    if (!t->added_lens) return mtok_err(MTOK_ERESOURCE, "out of memory");
    size_t k = 0;
    for (int64_t id = 0; id < t->n_vocab; id++)
        if (t->flags[id] & TOK_ADDED) t->added_lens[k++] = t->len[id];
    qsort(t->added_lens, k, sizeof *t->added_lens, cmp_size_desc);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || t->added_lens[u - 1] != t->added_lens[i]) t->added_lens[u++] = t->added_lens[i];
    t->n_added_lens = (int)u;
    return 0;
}

int tok_finish(mtok_tokenizer *t, const char *path) {
    if (t->n_vocab > TOK_MAX_RANKS)
        return mtok_err(MTOK_EINPUT, "%s: %lld token ids, more than the %d supported", path, (long long)t->n_vocab,
                        TOK_MAX_RANKS);
    memset(t->added_first, 0, sizeof t->added_first);
    t->max_ordinary_len = 0;
    t->max_token_len = 0;
    for (int64_t id = 0; id < t->n_vocab; id++) {
        if (!(t->flags[id] & TOK_PRESENT)) continue;
        size_t n;
        const uint8_t *b = tok_bytes(t, (int32_t)id, &n);
        /* Decoding can turn each non-ASCII byte into a 3-byte U+FFFD, so that is what one token may add. */
        size_t out = n;
        for (size_t i = 0; i < n; i++) out += b[i] >= 0x80 ? 2 : 0;
        if (out > t->max_token_len) t->max_token_len = out;
        /* only a bound for skipping pair lookups: counting added tokens too is harmless */
        if (n > t->max_ordinary_len) t->max_ordinary_len = n;
        if (!(t->flags[id] & TOK_ADDED)) continue;
        int32_t other;
        int rc = tok_map_insert(t, &t->added, (int32_t)id, &other);
        if (rc < 0) return rc;
        if (rc == 1)
            return mtok_err(MTOK_EINPUT, "%s: added tokens %d and %lld have the same text \"%.*s\"", path, other,
                            (long long)id, (int)(n > 64 ? 64 : n), (const char *)b);
        t->added_first[b[0]] |= (t->flags[id] & TOK_SPECIAL) ? 1 : 2;
        if (!(t->flags[id] & TOK_SPECIAL)) t->has_plain_added = 1;
    }
    int rc = added_lengths(t);
    if (rc) return rc;
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        t->byte_id[b] = tok_map_find(t, &t->vocab, &c, 1);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* tiktoken tokenizer.model                                                                        */

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict standard base64 with padding (what Python's b64decode accepts): returns the decoded length, or -1. */
static long b64_decode(const char *s, size_t n, uint8_t *out) {
    if (n == 0 || n % 4) return -1;
    size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        for (size_t k = 0; k < 4; k++) {
            int d = (i + k >= n - pad) ? 0 : b64_value((unsigned char)s[i + k]);
            if (d < 0) return -1;
            v = v << 6 | (uint32_t)d;
        }
        out[o++] = (uint8_t)(v >> 16);
        if (i + 4 < n || pad < 2) out[o++] = (uint8_t)(v >> 8);
        if (i + 4 < n || pad < 1) out[o++] = (uint8_t)v;
    }
    return (long)o;
}

/* "tokenizer_config.json" in the directory of path. */
static char *sibling(const char *path, const char *name) {
    const char *slash = strrchr(path, '/');
    size_t dn = slash ? (size_t)(slash - path + 1) : 0;
    char *s = malloc(dn + strlen(name) + 1);
    if (!s) return NULL;
    memcpy(s, path, dn);
    strcpy(s + dn, name);
    return s;
}

/* chat_template from tokenizer_config.json beside path (a string, or the "default" entry of a list of
 * {name, template}); none is fine. The GLM-4 chat format cuts the built-in tools' descriptions from it. */
int tok_read_chat_template(mtok_tokenizer *t, const char *path) {
    char *cfg = sibling(path, "tokenizer_config.json");
    if (!cfg) return mtok_err(MTOK_ERESOURCE, "out of memory");
    json_error_t je;
    json_t *root = json_load_file(cfg, 0, &je), *ct = root ? json_object_get(root, "chat_template") : NULL;
    size_t i;
    json_t *e;
    if (json_is_array(ct)) {
        json_t *pick = NULL;
        json_array_foreach(ct, i, e) {
            const char *name = json_string_value(json_object_get(e, "name"));
            if (name && !strcmp(name, "default")) pick = json_object_get(e, "template");
        }
        ct = pick;
    }
    int rc = 0;
    if (json_is_string(ct) && !(t->chat_template = strdup(json_string_value(ct))))
        rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    json_decref(root);
    free(cfg);
    return rc;
}

/* Specials from tokenizer_config.json's added_tokens_decoder {"id": {"content": ..., "special": ...}}.
 * Returns 1 when the file declared them, 0 when there is no such file or field. */
static int load_config_specials(mtok_tokenizer *t, const char *model_path, int64_t n_ranks) {
    char *cfg = sibling(model_path, "tokenizer_config.json");
    if (!cfg) return mtok_err(MTOK_ERESOURCE, "out of memory");
    FILE *f = fopen(cfg, "rb");
    if (!f) {
        free(cfg);
        return 0;
    }
    fclose(f);
    json_error_t je;
    json_t *root = json_load_file(cfg, 0, &je);
    int rc = 0;
    json_t *dec = root ? json_object_get(root, "added_tokens_decoder") : NULL;
    if (!root) rc = mtok_err(MTOK_EINPUT, "%s:%d:%d: bad JSON: %s", cfg, je.line, je.column, je.text);
    else if (dec && !json_is_object(dec)) rc = mtok_err(MTOK_EINPUT, "%s: added_tokens_decoder is not an object", cfg);
    const char *key;
    json_t *v;
    if (!rc && dec) {
        json_object_foreach(dec, key, v) {
            char *end;
            long long id = strtoll(key, &end, 10);
            json_t *content = json_object_get(v, "content");
            json_t *special = json_object_get(v, "special");
            if (!*key || *end || id < 0 || id >= TOK_MAX_RANKS) {
                rc = mtok_err(MTOK_EINPUT, "%s: added_tokens_decoder key \"%.64s\" is not a token id in [0, %d)", cfg,
                              key, TOK_MAX_RANKS);
                break;
            }
            if (!json_is_string(content) || json_string_length(content) == 0) {
                rc = mtok_err(MTOK_EINPUT, "%s: added_tokens_decoder[\"%s\"] has no content string", cfg, key);
                break;
            }
            if (id < n_ranks) {
                rc = mtok_err(MTOK_EINPUT, "%s: added_tokens_decoder id %lld is a rank of %s (ranks 0..%lld)", cfg,
                              id, model_path, (long long)n_ranks - 1);
                break;
            }
            rc = tok_add_added(t, cfg, id, json_string_value(content), json_string_length(content),
                           !json_is_false(special));
            if (rc) break;
        }
    }
    json_decref(root);
    free(cfg);
    return rc ? rc : dec != NULL;
}

/* One "<base64> <rank>" line (without its newline). */
static int tiktoken_line(mtok_tokenizer *t, const char *path, long lineno, const char *s, size_t n, uint8_t *tmp,
                         int64_t *next_rank) {
    /* like tiktoken's line.split(): the fields may be separated (and followed) by any spaces or tabs */
    const char *sp = s, *end = s + n;
    while (sp < end && *sp != ' ' && *sp != '\t') sp++;
    const char *r = sp;
    while (r < end && (*r == ' ' || *r == '\t')) r++;
    while (end > r && (end[-1] == ' ' || end[-1] == '\t')) end--;
    if (sp == end) return mtok_err(MTOK_EINPUT, "%s:%ld: expected \"<base64> <rank>\"", path, lineno);
    long blen = b64_decode(s, (size_t)(sp - s), tmp);
    if (blen <= 0) return mtok_err(MTOK_EINPUT, "%s:%ld: bad base64 token \"%.*s\"", path, lineno,
                                   (int)((sp - s) > 64 ? 64 : (sp - s)), s);
    int64_t rank = 0;
    if (r == end) return mtok_err(MTOK_EINPUT, "%s:%ld: missing rank", path, lineno);
    for (const char *q = r; q < end; q++) {
        if (*q < '0' || *q > '9' || rank > INT32_MAX / 10)
            return mtok_err(MTOK_EINPUT, "%s:%ld: rank \"%.*s\" is not a number below 2^31", path, lineno,
                            (int)((end - r) > 32 ? 32 : (end - r)), r);
        rank = rank * 10 + (*q - '0');
    }
    /* tiktoken files list ranks 0, 1, 2, ... in order: anything else is a duplicate or a gap. */
    if (rank < *next_rank) return mtok_err(MTOK_EINPUT, "%s:%ld: duplicate rank %lld", path, lineno, (long long)rank);
    if (rank > *next_rank)
        return mtok_err(MTOK_EINPUT, "%s:%ld: rank %lld leaves a gap (rank %lld is missing)", path, lineno,
                        (long long)rank, (long long)*next_rank);
    int rc = tok_set_token(t, rank, tmp, (size_t)blen, 0);
    if (rc) return rc;
    int32_t other;
    rc = tok_map_insert(t, &t->vocab, (int32_t)rank, &other);
    if (rc < 0) return rc;
    if (rc == 1) return mtok_err(MTOK_EINPUT, "%s:%ld: token repeats the bytes of rank %d", path, lineno, other);
    (*next_rank)++;
    return 0;
}

int tok_load_tiktoken(mtok_tokenizer *t, const char *path, const char *buf, size_t n) {
    t->kind = TOK_TIKTOKEN;
    size_t lines = 1;
    for (size_t i = 0; i < n; i++) lines += buf[i] == '\n';
    int rc = tok_map_init(&t->vocab, lines);
    if (rc) return rc;
    uint8_t *tmp = malloc(n / 4 * 3 + 4);
    if (!tmp) return mtok_err(MTOK_ERESOURCE, "%s: out of memory", path);
    int64_t next_rank = 0;
    long lineno = 0;
    for (size_t i = 0; i < n && !rc;) {
        const char *nl = memchr(buf + i, '\n', n - i);
        size_t e = nl ? (size_t)(nl - buf) : n, le = e;
        lineno++;
        if (le > i && buf[le - 1] == '\r') le--;
        if (le > i) rc = tiktoken_line(t, path, lineno, buf + i, le - i, tmp, &next_rank);
        i = e + 1;
    }
    free(tmp);
    if (rc) return rc;
    if (next_rank == 0) return mtok_err(MTOK_EINPUT, "%s: no tokens", path);
    int declared = load_config_specials(t, path, next_rank);
    if (declared < 0) return declared;
    for (size_t k = 0; !declared && k < sizeof GLM4_SPECIALS / sizeof *GLM4_SPECIALS; k++) {
        rc = tok_add_added(t, path, next_rank + (int64_t)k, GLM4_SPECIALS[k], strlen(GLM4_SPECIALS[k]), 1);
        if (rc) return rc;
    }
    rc = tok_compile_pattern(t, path, GLM4_PATTERN, 0);
    return rc ? rc : tok_finish(t, path);
}

/* ---------------------------------------------------------------------------------------------- */
/* Hugging Face tokenizer.json (byte-level BPE)                                                    */

/* GPT-2's bytes_to_unicode, inverted: code point -> byte. Printable Latin-1 bytes stand for themselves;
 * the other 68 bytes are mapped to U+0100.. in byte order. */
static void byte_level_inverse(int16_t inv[324]) {
    for (int i = 0; i < 324; i++) inv[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        inv[printable ? b : 256 + extra++] = (int16_t)b;
    }
}

/* Byte-level string -> raw bytes; returns the length or -1 if a character is outside the mapping. */
static long byte_level_decode(const int16_t inv[324], const char *s, size_t n, uint8_t *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int k = tok_utf8_char((const uint8_t *)s + i, n - i);
        if (k <= 0 || k > 2) return -1; /* every mapped code point is below U+0800 */
        uint32_t cp = k == 1 ? (uint8_t)s[i] : ((uint32_t)(s[i] & 0x1F) << 6 | (s[i + 1] & 0x3F));
        if (cp >= 324 || inv[cp] < 0) return -1;
        out[o++] = (uint8_t)inv[cp];
        i += (size_t)k;
    }
    return (long)o;
}

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* pre_tokenizer: Split(Regex|String, Isolated) + ByteLevel(use_regex=false), in a Sequence or alone, or a
 * bare ByteLevel(use_regex=true) (GPT-2's regex). Anything else would tokenize differently: refuse it. */
static int hf_pre_tokenizer(mtok_tokenizer *t, const char *path, json_t *pre) {
    json_t *items[8];
    size_t n = 0;
    const char *type = jstr(pre, "type");
    if (type && !strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(pre, "pretokenizers");
        size_t i;
        json_t *v;
        if (!json_is_array(arr) || json_array_size(arr) > 8)
            return mtok_err(MTOK_EINPUT, "%s: pre_tokenizer.pretokenizers must be an array of at most 8", path);
        json_array_foreach(arr, i, v) items[n++] = v;
    } else if (type) {
        items[n++] = pre;
    }
    const char *pattern = NULL;
    int literal = 0, byte_level = 0;
    for (size_t i = 0; i < n; i++) {
        const char *ty = jstr(items[i], "type");
        if (ty && !strcmp(ty, "ByteLevel")) {
            byte_level = 1;
            t->add_prefix_space = json_is_true(json_object_get(items[i], "add_prefix_space"));
            if (!json_is_false(json_object_get(items[i], "use_regex"))) {
                if (pattern) return mtok_err(MTOK_EINPUT, "%s: pre_tokenizer has two regex splits", path);
                pattern = GPT2_PATTERN;
            }
        } else if (ty && !strcmp(ty, "Split")) {
            json_t *pat = json_object_get(items[i], "pattern");
            const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String"), *beh = jstr(items[i], "behavior");
            if (pattern || (!re && !lit))
                return mtok_err(MTOK_EINPUT, "%s: pre_tokenizer Split needs one Regex or String pattern", path);
            if ((beh && strcmp(beh, "Isolated")) || json_is_true(json_object_get(items[i], "invert")))
                return mtok_err(MTOK_EINPUT, "%s: pre_tokenizer Split behavior \"%s\" (or invert) is not supported",
                                path, beh ? beh : "?");
            pattern = re ? re : lit;
            literal = !re;
        } else {
            return mtok_err(MTOK_EINPUT, "%s: pre_tokenizer type \"%s\" is not supported", path, ty ? ty : "?");
        }
    }
    if (!byte_level) return mtok_err(MTOK_EINPUT, "%s: not a byte-level BPE (no ByteLevel pre_tokenizer)", path);
    if (!pattern) return mtok_err(MTOK_EINPUT, "%s: pre_tokenizer has no regex split", path);
    return tok_compile_pattern(t, path, pattern, literal);
}

static int hf_vocab(mtok_tokenizer *t, const char *path, json_t *vocab, json_t *added_ids) {
    int16_t inv[324];
    byte_level_inverse(inv);
    int rc = tok_map_init(&t->vocab, json_object_size(vocab));
    if (rc) return rc;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        size_t kn = strlen(key);
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (id < 0 || id >= TOK_MAX_RANKS)
            return mtok_err(MTOK_EINPUT, "%s: model.vocab[\"%.64s\"] is not a token id in [0, %d)", path, key,
                            TOK_MAX_RANKS);
        uint8_t *raw = malloc(kn + 1);
        if (!raw) return mtok_err(MTOK_ERESOURCE, "out of memory");
        long n = byte_level_decode(inv, key, kn, raw);
        int added = json_object_get(added_ids, key) != NULL;
        if (n <= 0 && !added)
            rc = mtok_err(MTOK_EINPUT, "%s: model.vocab entry \"%.64s\" is not byte-level", path, key);
        else if (n > 0 && id < t->n_vocab && (t->flags[id] & TOK_PRESENT))
            rc = mtok_err(MTOK_EINPUT, "%s: model.vocab id %lld is used twice", path, (long long)id);
        else if (n > 0) rc = tok_set_token(t, id, raw, (size_t)n, 0);
        free(raw);
        if (rc) return rc;
        int32_t other;
        if (n > 0 && (rc = tok_map_insert(t, &t->vocab, (int32_t)id, &other)) != 0)
            return rc < 0 ? rc : mtok_err(MTOK_EINPUT, "%s: model.vocab ids %d and %lld have the same bytes", path,
                                          other, (long long)id);
    }
    return 0;
}

static int32_t vocab_id(json_t *vocab, const char *s) {
    json_t *v = json_object_get(vocab, s);
    return json_is_integer(v) ? (int32_t)json_integer_value(v) : -1;
}

/* merges: "a b" strings or [a, b] pairs; priority = position in the list. */
static int hf_merges(mtok_tokenizer *t, const char *path, json_t *vocab, json_t *merges) {
    if (json_array_size(merges) > TOK_MAX_RANKS)
        return mtok_err(MTOK_EINPUT, "%s: %zu merges, more than the %d supported", path, json_array_size(merges),
                        TOK_MAX_RANKS);
    int rc = tok_pairmap_init(&t->merges, json_array_size(merges));
    size_t i;
    json_t *m;
    char *buf = NULL;
    size_t cap = 0;
    json_array_foreach(merges, i, m) {
        if (rc) break;
        const char *a, *b;
        size_t an, bn;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return free(buf), mtok_err(MTOK_EINPUT, "%s: model.merges[%zu] \"%.64s\" is not \"a b\"", path, i, a);
            an = (size_t)(sp - a), b = sp + 1, bn = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0)), an = strlen(a);
            b = json_string_value(json_array_get(m, 1)), bn = strlen(b);
        } else {
            return free(buf), mtok_err(MTOK_EINPUT, "%s: model.merges[%zu] is neither \"a b\" nor [a, b]", path, i);
        }
        if (an + bn + 2 > cap) {
            cap = (an + bn + 2) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) return free(buf), mtok_err(MTOK_ERESOURCE, "out of memory");
            buf = nb;
        }
        memcpy(buf, a, an), buf[an] = 0;
        int32_t ia = vocab_id(vocab, buf);
        memcpy(buf + an, b, bn), buf[an + bn] = 0;
        int32_t im = vocab_id(vocab, buf);
        memcpy(buf, b, bn), buf[bn] = 0;
        int32_t ib = vocab_id(vocab, buf);
        if (ia < 0 || ib < 0 || im < 0)
            return free(buf), mtok_err(MTOK_EINPUT, "%s: model.merges[%zu]: \"%.*s\", \"%.*s\" or their concatenation "
                                       "is not in model.vocab", path, i, (int)(an > 64 ? 64 : an), a,
                                       (int)(bn > 64 ? 64 : bn), b);
        rc = tok_pairmap_put(&t->merges, ia, ib, (int32_t)i, im);
    }
    free(buf);
    return rc;
}

static int hf_added(mtok_tokenizer *t, const char *path, json_t *added) {
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        json_t *id = json_object_get(a, "id"), *content = json_object_get(a, "content");
        if (!json_is_integer(id) || !json_is_string(content) || json_string_length(content) == 0)
            return mtok_err(MTOK_EINPUT, "%s: added_tokens[%zu] needs an integer id and a content string", path, i);
        if (json_integer_value(id) < 0 || json_integer_value(id) >= TOK_MAX_RANKS)
            return mtok_err(MTOK_EINPUT, "%s: added_tokens[%zu] has id %lld, outside [0, %d)", path, i,
                            (long long)json_integer_value(id), TOK_MAX_RANKS);
        int rc = tok_add_added(t, path, json_integer_value(id), json_string_value(content), json_string_length(content),
                           json_is_true(json_object_get(a, "special")));
        if (rc) return rc;
    }
    return 0;
}

/* Model options that change tokenization and that this loader does not implement. */
static int hf_check_model(const char *path, json_t *model) {
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE")) return mtok_err(MTOK_EINPUT, "%s: model.type \"%s\" is not BPE", path, type);
    static const char *unsupported[] = {"dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
        json_t *v = json_object_get(model, unsupported[i]);
        if (v && !json_is_null(v))
            return mtok_err(MTOK_EINPUT, "%s: model.%s is set; only plain byte-level BPE is supported", path,
                            unsupported[i]);
    }
    if (json_is_true(json_object_get(model, "byte_fallback")))
        return mtok_err(MTOK_EINPUT, "%s: model.byte_fallback is not supported", path);
    if (!json_is_object(json_object_get(model, "vocab")) || !json_is_array(json_object_get(model, "merges")))
        return mtok_err(MTOK_EINPUT, "%s: model needs a vocab object and a merges array", path);
    return 0;
}

int tok_load_hf_json(mtok_tokenizer *t, const char *path, const char *buf, size_t n) {
    t->kind = TOK_HF;
    json_error_t je;
    json_t *root = json_loadb(buf, n, 0, &je);
    if (!root) return mtok_err(MTOK_EINPUT, "%s:%d:%d: bad JSON: %s", path, je.line, je.column, je.text);
    json_t *model = json_object_get(root, "model"), *added = json_object_get(root, "added_tokens");
    json_t *norm = json_object_get(root, "normalizer"), *added_ids = json_object();
    int rc = 0;
    if (!json_is_object(model)) rc = mtok_err(MTOK_EINPUT, "%s: no \"model\" object", path);
    else if (norm && !json_is_null(norm)) rc = mtok_err(MTOK_EINPUT, "%s: normalizers are not supported", path);
    else if (added && !json_is_array(added)) rc = mtok_err(MTOK_EINPUT, "%s: added_tokens is not an array", path);
    else if (!added_ids) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    else rc = hf_check_model(path, model);
    size_t i;
    json_t *a;
    if (!rc && added) /* vocab entries that are added tokens need not be byte-level strings */
        json_array_foreach(added, i, a) if (json_is_string(json_object_get(a, "content")))
            json_object_set(added_ids, json_string_value(json_object_get(a, "content")), json_true());
    if (!rc) rc = hf_vocab(t, path, json_object_get(model, "vocab"), added_ids);
    if (!rc) rc = hf_merges(t, path, json_object_get(model, "vocab"), json_object_get(model, "merges"));
    if (!rc && added) rc = hf_added(t, path, added);
    if (!rc) t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    if (!rc) rc = hf_pre_tokenizer(t, path, json_object_get(root, "pre_tokenizer"));
    json_decref(added_ids);
    json_decref(root);
    return rc ? rc : tok_finish(t, path);
}
