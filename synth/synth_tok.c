/* synth_tok.c — the tokenizer of synthetic checkpoints: byte-level BPE trained on a small embedded
 * English text and written as a GLM-4 tiktoken rank file (docs/GLM.md §4.1).
 *
 * Ranks 0..255 are the single bytes (in byte order), every later rank is the concatenation of two
 * earlier tokens, learned greedily by pair frequency. Training runs on pre-split pieces (an
 * approximation of the GLM-4 regex), so no merge crosses a word boundary: " word" is one piece, the
 * space before a word belongs to it, digits come in runs of at most three. Any such rank file is a
 * valid tokenizer; exact agreement with the regex only makes the learned merges more useful. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "synth_int.h"

const char *const mtok_syn_specials[MTOK_SYN_N_SPECIAL] = {
    "<|endoftext|>", "[MASK]",        "[gMASK]",           "[sMASK]",          "<sop>",
    "<eop>",         "<|system|>",    "<|user|>",          "<|assistant|>",    "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
};

#define MAX_MERGES 4096

/* Original prose written for mtok (free to use): everyday English with numbers, punctuation,
 * contractions, line breaks, a little code and a few non-ASCII words, so the merges cover the
 * kinds of pieces the tests and demos feed in. */
static const char corpus[] =
    "The Lighthouse at Carrow Point\n\n"
    "The lighthouse at Carrow Point was built in 1848, and for the next ninety-one years it was kept by "
    "members of the same family. The first keeper, Thomas Hale, wrote in his log every evening at 6:30: "
    "the state of the sea, the direction of the wind, the number of ships that passed, and the amount of "
    "oil he had burned. His daughter kept the same log after him, and her son after her. When the light "
    "was finally automated in 1939, the logs filled eleven wooden boxes.\n\n"
    "Most of the entries are short. \"Wind from the north-east, strong. Sea rough. Two ships passed, one "
    "steamer and one schooner. Oil: 4 gallons.\" Some are longer. On the night of 12 March 1867 a ship ran "
    "onto the rocks below the point, and the keeper and his wife rowed out three times to bring the crew "
    "ashore. Seventeen men were saved; two were lost. The keeper's entry for that night is only one line: "
    "\"We did what could be done.\"\n\n"
    "People often ask what a keeper did all day. The answer is that the work never stopped. The lamp had to "
    "be cleaned, the wick trimmed, the brass polished and the windows of the lantern room wiped free of salt. "
    "In winter the keeper climbed the 114 steps of the tower every four hours through the night. In summer "
    "there were visitors, and they wanted to see everything. \"It's a small world up here,\" one keeper "
    "told a newspaper in 1902, \"but it's never a quiet one.\"\n\n"
    "Numbers and Records\n\n"
    "The logs are useful to historians because they're so regular. From them we know that the average "
    "number of ships passing the point each day rose from 3.2 in 1850 to 11.7 in 1900, and that the worst "
    "storm of the century (on 26-27 October 1859) brought winds of more than 100 miles per hour. We also "
    "know the price of lamp oil: about $0.45 a gallon in 1860, $0.62 in 1880, and $0.38 in 1910, when "
    "kerosene had become cheap. A careful reader can add up the totals: 1,048,576 hours of light, give or "
    "take a few thousand, and roughly 250,000 gallons of oil.\n\n"
    "Here is a list of the keepers and the years they served:\n"
    "1. Thomas Hale (1848-1871)\n"
    "2. Mary Hale Dunmore (1871-1899)\n"
    "3. Edward Dunmore (1899-1939)\n\n"
    "Edward kept a second notebook that was not part of the official record. In it he wrote about birds, "
    "the weather, the books he was reading, and the letters he received. He wasn't a scientist, but he "
    "was patient, and he counted things: 412 gannets on one morning, 37 seals on the rocks on another. "
    "\"I've learned more from counting,\" he wrote, \"than from any book I'd ever read.\"\n\n"
    "A Conversation\n\n"
    "\"Do you ever get lonely out here?\" the visitor asked.\n"
    "\"Not often,\" said the keeper. \"There's the sea, and there's the light, and there's the log. "
    "I'm never short of company.\"\n"
    "\"And if the light went out?\"\n"
    "\"Then I'd light it again. That's the whole of the job, really. You don't let it go out, and if it "
    "does, you don't let it stay out.\"\n"
    "\"What would you say to someone who wanted to do this work?\"\n"
    "\"I'd tell them to learn to sleep in short pieces, to keep their hands warm, and to write everything "
    "down. You'll forget what happened on Tuesday by Friday, but the log won't.\"\n\n"
    "Questions and Answers\n\n"
    "Question: In which year was the lighthouse built?\n"
    "Answer: It was built in 1848.\n"
    "Question: How many steps lead to the top of the tower?\n"
    "Answer: There are 114 steps.\n"
    "Question: Who was the last keeper?\n"
    "Answer: Edward Dunmore, who served from 1899 until 1939.\n"
    "Question: What is the secret number mentioned in the notebook?\n"
    "Answer: The secret number is 7261, written on the last page.\n\n"
    "Notes on the Data\n\n"
    "When the logs were copied into a computer, each entry became one record with a date, a time, the wind, "
    "the sea and a count of ships. A short program was enough to read them:\n\n"
    "    for (int i = 0; i < n; i++) {\n"
    "        total += entry[i].ships;\n"
    "        if (entry[i].wind > max_wind) max_wind = entry[i].wind;\n"
    "    }\n"
    "    printf(\"%d ships, max wind %d\\n\", total, max_wind);\n\n"
    "The results matched the hand counts to within 0.5 percent. The few differences came from pages that "
    "were damaged by water, or from entries where the keeper had written \"several\" instead of a number. "
    "In those cases the copyists wrote down the smallest number that fit the description.\n\n"
    "Visitors from abroad left their names in the guest book: a painter from Z\xc3\xbcrich, a student who signed "
    "as \"na\xc3\xafve but curious\", a family who ran a caf\xc3\xa9 in Lyon, and a sailor who wrote a single "
    "line in Chinese: \xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82 The keeper "
    "could not read it, but he copied it carefully into the log \xe2\x80\x94 every stroke of it \xe2\x80\x94 "
    "because, as he said, a record is only as good as its worst line.\n\n"
    "The Weather Book\n\n"
    "Besides the log, each keeper filled in a weather book for the government office in the city. Three "
    "times a day they read the barometer, the thermometer and the rain gauge, and they wrote the numbers "
    "in neat columns: pressure in inches, temperature in degrees, rain in hundredths of an inch. On a "
    "calm summer morning the page might read 30.12, 64, 0.00; on a winter night before a storm, 29.41, "
    "38, 1.27. The office sent back printed forms, a new pencil every month, and now and then a short "
    "letter asking why a number was missing. The keepers answered every letter, politely and at length.\n\n"
    "Over the years the weather books became a long and steady record of the climate of the coast. "
    "Scientists who study it today have found that the winters grew a little milder after 1890, that the "
    "wettest month was usually November, and that the strongest winds almost always came from the "
    "south-west. None of the keepers ever saw these patterns themselves. They only wrote down what they "
    "saw, day after day, and trusted that someone, someday, would put the pages together.\n\n"
    "Today the tower is a museum. The lamp still turns, though it is electric now, and the eleven boxes of "
    "logs sit in a glass case on the ground floor. Visitors can read a page at random. Most of them read "
    "about the wind, the sea and the ships, and some of them, on a quiet afternoon, read every word.\n";

/* ---- pre-split ------------------------------------------------------------------------------ */

/* Bytes >= 0x80 count as letters: UTF-8 text outside ASCII is mostly letters (\p{L}). */
static int is_letter(unsigned char c) { return (unsigned)((c | 32) - 'a') < 26u || c >= 0x80; }
static int is_digit(unsigned char c) { return (unsigned)(c - '0') < 10u; }
static int is_nl(unsigned char c) { return c == '\n' || c == '\r'; }
static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\f' || c == '\v' || is_nl(c); }

/* Length of the piece starting at s[i], following the GLM-4 / cl100k regex alternatives in order:
 * contractions | [^\r\n L N]?L+ | N{1,3} | ' '?[^\s L N]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+ */
static size_t piece_len(const unsigned char *s, size_t n, size_t i) {
    size_t j = i;
    if (s[i] == '\'' && i + 1 < n) {
        static const char *const cs[] = {"re", "ve", "ll", "s", "t", "m", "d"};
        for (int k = 0; k < 7; k++) {
            size_t l = strlen(cs[k]);
            if (i + 1 + l > n) continue;
            size_t m = 0;
            while (m < l && (s[i + 1 + m] | 32) == cs[k][m]) m++;
            if (m == l) return 1 + l;
        }
    }
    if (!is_digit(s[i]) && !is_nl(s[i]) && (is_letter(s[i]) || (i + 1 < n && is_letter(s[i + 1])))) {
        j = is_letter(s[i]) ? i : i + 1;
        while (j < n && is_letter(s[j])) j++;
        return j - i;
    }
    if (is_digit(s[i])) {
        while (j < n && j - i < 3 && is_digit(s[j])) j++;
        return j - i;
    }
    size_t p = i + (s[i] == ' ' && i + 1 < n && !is_space(s[i + 1]) && !is_letter(s[i + 1]) && !is_digit(s[i + 1]));
    if (!is_space(s[p]) && !is_letter(s[p]) && !is_digit(s[p])) {
        j = p;
        while (j < n && !is_space(s[j]) && !is_letter(s[j]) && !is_digit(s[j])) j++;
        while (j < n && is_nl(s[j])) j++;
        return j - i;
    }
    /* a whitespace run [i, e) */
    size_t e = i;
    while (e < n && is_space(s[e])) e++;
    size_t last_nl = 0;
    for (size_t k = i; k < e; k++)
        if (is_nl(s[k])) last_nl = k + 1;
    if (last_nl) return last_nl - i;
    if (e == n || e - i == 1) return e - i;
    return e - i - 1; /* leave the last space to prefix the next word */
}

/* ---- training -------------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    size_t len;
} span;

typedef struct {
    int32_t *sym; /* current token ids of the word */
    size_t n;
    int64_t count;
} word;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, m);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Open-addressing counter of adjacent pairs, rebuilt every round (the corpus is a few KB). */
typedef struct {
    uint64_t *key; /* (a << 32 | b) + 1; 0 = empty */
    int64_t *cnt;
    size_t cap;
} pair_map;

static void pair_add(pair_map *m, uint64_t k, int64_t c) {
    k += 1;
    size_t h = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & (m->cap - 1);
    while (m->key[h] && m->key[h] != k) h = (h + 1) & (m->cap - 1);
    m->key[h] = k;
    m->cnt[h] += c;
}

typedef struct {
    span *tok; /* bytes of every token id (pointing into toks_bytes) */
    unsigned char *bytes;
    size_t n_tok, used, bytes_cap;
} vocab;

static int32_t vocab_find(const vocab *v, const unsigned char *p, size_t len) {
    for (size_t i = 256; i < v->n_tok; i++)
        if (v->tok[i].len == len && !memcmp(v->tok[i].p, p, len)) return (int32_t)i;
    return -1;
}

static void base64(const unsigned char *p, size_t n, char *out) {
    static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        out[o++] = tb[v >> 18 & 63];
        out[o++] = tb[v >> 12 & 63];
        out[o++] = i + 1 < n ? tb[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? tb[v & 63] : '=';
    }
    out[o] = 0;
}

int mtok_syn_tokenizer(int64_t max_ranks, char **text, size_t *len, int64_t *n_ranks) {
    return mtok_syn_tokenizer_corpus(corpus, sizeof corpus - 1, max_ranks, text, len, n_ranks);
}

int mtok_syn_tokenizer_corpus(const char *corpus_text, size_t n, int64_t max_ranks, char **text, size_t *len,
                              int64_t *n_ranks) {
    const unsigned char *s = (const unsigned char *)corpus_text;
    size_t n_pieces = 0, n_words = 0, total_sym = 0;
    span *pieces = NULL;
    word *words = NULL;
    vocab v = {0};
    pair_map pm = {0};
    char *out = NULL, *b64 = NULL;
    int rc = MTOK_ERESOURCE;
    if (max_ranks < 256) return mtok_err(MTOK_EUSAGE, "tokenizer: vocabulary too small for 256 byte tokens");

    /* unique pieces with their counts */
    pieces = malloc(n * sizeof *pieces);
    if (!pieces) goto oom;
    for (size_t i = 0; i < n;) {
        size_t l = piece_len(s, n, i);
        pieces[n_pieces++] = (span){s + i, l};
        i += l;
    }
    qsort(pieces, n_pieces, sizeof *pieces, span_cmp);
    words = calloc(n_pieces, sizeof *words);
    if (!words) goto oom;
    for (size_t i = 0; i < n_pieces; i++) {
        if (n_words && !span_cmp(&pieces[i], &pieces[i - 1])) {
            words[n_words - 1].count++;
            continue;
        }
        word *w = &words[n_words++];
        w->sym = malloc(pieces[i].len * sizeof *w->sym);
        if (!w->sym) goto oom;
        for (size_t k = 0; k < pieces[i].len; k++) w->sym[k] = pieces[i].p[k];
        w->n = pieces[i].len;
        w->count = 1;
        total_sym += w->n;
    }

    /* the 256 byte tokens; merged tokens get their bytes appended to one arena */
    v.tok = malloc((256 + MAX_MERGES) * sizeof *v.tok);
    v.bytes_cap = 256 + (size_t)MAX_MERGES * 64;
    v.bytes = malloc(v.bytes_cap);
    if (!v.tok || !v.bytes) goto oom;
    for (int b = 0; b < 256; b++) {
        v.bytes[b] = (unsigned char)b;
        v.tok[b] = (span){v.bytes + b, 1};
    }
    v.n_tok = 256;
    v.used = 256;

    for (pm.cap = 64; pm.cap < 2 * total_sym; pm.cap *= 2) {}
    pm.key = malloc(pm.cap * sizeof *pm.key);
    pm.cnt = malloc(pm.cap * sizeof *pm.cnt);
    if (!pm.key || !pm.cnt) goto oom;

    for (int round = 0; round < MAX_MERGES && (int64_t)v.n_tok < max_ranks; round++) {
        memset(pm.key, 0, pm.cap * sizeof *pm.key);
        memset(pm.cnt, 0, pm.cap * sizeof *pm.cnt);
        for (size_t w = 0; w < n_words; w++)
            for (size_t k = 0; k + 1 < words[w].n; k++)
                pair_add(&pm, (uint64_t)words[w].sym[k] << 32 | (uint32_t)words[w].sym[k + 1], words[w].count);
        /* most frequent pair; ties go to the smaller (a, b) so the result is deterministic */
        uint64_t best = 0;
        int64_t best_c = 1;
        for (size_t h = 0; h < pm.cap; h++)
            if (pm.key[h] && (pm.cnt[h] > best_c || (pm.cnt[h] == best_c && pm.key[h] < best))) {
                best = pm.key[h];
                best_c = pm.cnt[h];
            }
        if (!best) break; /* nothing occurs twice any more */
        int32_t a = (int32_t)((best - 1) >> 32), b = (int32_t)((best - 1) & 0xffffffffu);
        size_t la = v.tok[a].len, lb = v.tok[b].len;
        if (v.used + la + lb > v.bytes_cap) break; /* arena full: enough merges for a test vocabulary */
        unsigned char *np = v.bytes + v.used;
        memcpy(np, v.tok[a].p, la);
        memcpy(np + la, v.tok[b].p, lb);
        /* two merge paths can spell the same bytes ("a"+"bc", "ab"+"c"): reuse the token, since a
         * rank file must not list a byte string twice */
        int32_t id = vocab_find(&v, np, la + lb);
        if (id < 0) {
            id = (int32_t)v.n_tok;
            v.tok[v.n_tok++] = (span){np, la + lb};
            v.used += la + lb;
        }
        for (size_t w = 0; w < n_words; w++) {
            size_t o = 0;
            for (size_t k = 0; k < words[w].n; k++) {
                if (k + 1 < words[w].n && words[w].sym[k] == a && words[w].sym[k + 1] == b) {
                    words[w].sym[o++] = id;
                    k++;
                } else {
                    words[w].sym[o++] = words[w].sym[k];
                }
            }
            words[w].n = o;
        }
    }

    /* render "base64 rank\n" lines */
    size_t cap = 0, max_len = 0;
    for (size_t i = 0; i < v.n_tok; i++) {
        cap += (v.tok[i].len + 2) / 3 * 4 + 24;
        if (v.tok[i].len > max_len) max_len = v.tok[i].len;
    }
    out = malloc(cap + 1);
    b64 = malloc((max_len + 2) / 3 * 4 + 1);
    if (!out || !b64) goto oom;
    size_t o = 0;
    for (size_t i = 0; i < v.n_tok; i++) {
        base64(v.tok[i].p, v.tok[i].len, b64);
        o += (size_t)snprintf(out + o, cap + 1 - o, "%s %zu\n", b64, i);
    }
    *text = out;
    *len = o;
    *n_ranks = (int64_t)v.n_tok;
    out = NULL;
    rc = 0;
    goto done;
oom:
    rc = mtok_err(MTOK_ERESOURCE, "out of memory training the synthetic tokenizer");
done:
    free(out);
    free(b64);
    for (size_t w = 0; w < n_words; w++) free(words[w].sym);
    free(words);
    free(pieces);
    free(v.tok);
    free(v.bytes);
    free(pm.key);
    free(pm.cnt);
    return rc;
}
