/* lb_prompt.c — LongBench records prompted and generated as THUDM/LongBench's own pred.py scripts do
 * (docs/EVAL.md §2.1 for v1, §2.5 for v2), with the user's own config files: mtok ships none of
 * LongBench's prompt texts.
 *
 * v1 (LongBench/pred.py, its chatglm3 path, the one that tokenizes without special tokens):
 *   prompt  = dataset2prompt[dataset].format(**record)         (Python's str.format)
 *   ids     = encode(prompt) without special tokens
 *   if len(ids) > max_length: half = int(max_length / 2);
 *             prompt = decode(ids[:half]) + decode(ids[-half:])  (each skipping special tokens)
 *   fed     = the chat template around prompt, except trec, triviaqa, samsum, lsht, lcc, repobench-p:
 *             [gMASK]<sop> + encode(prompt)
 *   answer  = greedy, dataset2maxlen[dataset] tokens at most; samsum stops at the tokenizer's eos or
 *             the newline token (they replace the model's eos ids) and its first token may be neither
 *             (min_length = context + 1); the text decoded skipping special tokens.
 *   line    = pred, answers, all_classes, length (then mtok's _id / dataset / data_line).
 * v2 (pred.py at the repository's root, one user message to an OpenAI-style server):
 *   prompt  = template with $DOC$, $Q$, $C_A$..$C_D$ (and $COT$) replaced in that order, each value
 *             strip()ped; ids = [gMASK]<sop> + encode(prompt); when longer than max_len the ids
 *             ids[:max_len//2] + ids[-max_len//2:] are decoded (skipping special tokens) as one text;
 *   fed     = the chat template around prompt; 128 tokens (the CoT pass 1024, then the answer pass
 *             fed the stripped CoT as $COT$); response = the answer stripped, pred its letter.
 *   line    = the record's fields less its context (kept to its first 1000 characters) plus
 *             response_cot, response, pred, judge. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "longbench.h"

struct mev_lb_gen {
    int v2, cot;
    json_t *prompts, *maxlen;       /* v1: dataset2prompt.json, dataset2maxlen.json (maxlen may be NULL) */
    char *t0, *t_cot, *t_ans;       /* v2: prompts/0shot.txt, 0shot_cot.txt, 0shot_cot_ans.txt */
    const char *prompts_name, *maxlen_name;
};

/* ---- a growable string --------------------------------------------------------------------------- */
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

static int sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        char *ns = realloc(b->s, c);
        if (!ns) return mtok_err(MTOK_ERESOURCE, "out of memory building a prompt");
        b->s = ns, b->cap = c;
    }
    if (n) memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}

/* ---- loading the user's configuration ---------------------------------------------------------- */
static int utf8_ok(const char *s, size_t n) { /* jansson refuses a string that is not UTF-8 */
    json_t *j = json_stringn(s, n);
    json_decref(j);
    return j != NULL;
}

/* A text file as Python's open(path, encoding='utf-8').read() gives it: universal newlines ("\r\n" and
 * a lone "\r" read as "\n"). */
static int read_text(const char *path, char **out) {
    FILE *f = fopen(path, "rb");
    if (!f) return mtok_err(MTOK_EINPUT, "%s: %s", path, strerror(errno));
    sbuf b = {0};
    char buf[8192];
    size_t n;
    int rc = sb_add(&b, "", 0);
    while (!rc && (n = fread(buf, 1, sizeof buf, f)) > 0) rc = sb_add(&b, buf, n);
    if (!rc && ferror(f)) rc = mtok_err(MTOK_EINPUT, "%s: read error", path);
    fclose(f);
    if (!rc && strlen(b.s) != b.n) rc = mtok_err(MTOK_EINPUT, "%s: a NUL byte in a prompt template", path);
    if (!rc && !utf8_ok(b.s, b.n)) rc = mtok_err(MTOK_EINPUT, "%s: not UTF-8", path);
    size_t o = 0;
    for (size_t i = 0; !rc && i < b.n; i++) {
        if (b.s[i] == '\r') {
            b.s[o++] = '\n';
            if (i + 1 < b.n && b.s[i + 1] == '\n') i++;
        } else b.s[o++] = b.s[i];
    }
    if (rc) return free(b.s), rc;
    b.s[o] = 0;
    *out = b.s;
    return 0;
}

static int load_object(const char *path, int ints, json_t **out) {
    json_error_t e;
    json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!o) return mtok_err(MTOK_EINPUT, "%s:%d: %s", path, e.line, e.text);
    if (!json_is_object(o)) return json_decref(o), mtok_err(MTOK_EINPUT, "%s: not a JSON object", path);
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (ints ? !json_is_integer(v) || json_integer_value(v) < 1 : !json_is_string(v)) {
            json_decref(o);
            return mtok_err(MTOK_EINPUT, "%s: \"%s\" is not %s", path, k, ints ? "a positive integer" : "a string");
        }
    }
    *out = o;
    return 0;
}

void mev_lb_gen_free(mev_lb_gen *g) {
    if (!g) return;
    json_decref(g->prompts), json_decref(g->maxlen);
    free(g->t0), free(g->t_cot), free(g->t_ans);
    free(g);
}

int mev_lb_gen_open(const char *prompts, const char *maxlen, int cot, mev_lb_gen **out) {
    struct stat st;
    *out = NULL;
    if (stat(prompts, &st) != 0) return mtok_err(MTOK_EINPUT, "--prompts %s: %s", prompts, strerror(errno));
    mev_lb_gen *g = calloc(1, sizeof *g);
    if (!g) return mtok_err(MTOK_ERESOURCE, "out of memory");
    g->v2 = S_ISDIR(st.st_mode), g->cot = cot, g->prompts_name = prompts, g->maxlen_name = maxlen;
    int rc = 0;
    if (g->v2) { /* LongBench v2's prompts/ folder */
        char p[4200];
        if (maxlen) rc = mtok_err(MTOK_EUSAGE, "--maxlen is LongBench v1's dataset2maxlen.json; v2 (--prompts %s, a "
                                  "folder) generates 128 tokens, 1024 for --cot's first pass", prompts);
        if (!rc && !cot) snprintf(p, sizeof p, "%s/0shot.txt", prompts), rc = read_text(p, &g->t0);
        if (!rc && cot) snprintf(p, sizeof p, "%s/0shot_cot.txt", prompts), rc = read_text(p, &g->t_cot);
        if (!rc && cot) snprintf(p, sizeof p, "%s/0shot_cot_ans.txt", prompts), rc = read_text(p, &g->t_ans);
    } else {
        if (cot) rc = mtok_err(MTOK_EUSAGE, "--cot is LongBench v2's: --prompts takes its prompts/ folder then");
        if (!rc) rc = load_object(prompts, 0, &g->prompts);
        if (!rc && maxlen) rc = load_object(maxlen, 1, &g->maxlen);
    }
    if (rc) return mev_lb_gen_free(g), rc;
    *out = g;
    return 0;
}

int mev_lb_gen_is_v2(const mev_lb_gen *g) { return g && g->v2; }

/* ---- Python's text operations ------------------------------------------------------------------ */
/* str.strip(): s[*a, *b) without leading and trailing whitespace (str.isspace's). */
static void py_strip(const char *s, size_t n, size_t *a, size_t *b) {
    size_t i = 0, j = n;
    uint32_t c;
    size_t k;
    while (i < n && (k = mev_utf8_decode(s + i, n - i, &c)) && mev_py_isspace(c)) i += k;
    while (j > i) {
        size_t st = j - 1;
        while (st > i && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
        if (!mev_utf8_decode(s + st, j - st, &c) || !mev_py_isspace(c)) break;
        j = st;
    }
    *a = i, *b = j;
}

/* str(v) of a JSON value as Python's json.loads gives it; lists and objects are refused (their repr
 * is not reproduced). */
static int py_str(json_t *v, const char *field, sbuf *out) {
    char num[64];
    switch (json_typeof(v)) {
    case JSON_STRING: return sb_add(out, json_string_value(v), json_string_length(v));
    case JSON_INTEGER: snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v)); break;
    case JSON_REAL: mev_py_repr(json_real_value(v), num, sizeof num); break;
    case JSON_TRUE: snprintf(num, sizeof num, "True"); break;
    case JSON_FALSE: snprintf(num, sizeof num, "False"); break;
    case JSON_NULL: snprintf(num, sizeof num, "None"); break;
    default:
        return mtok_err(MTOK_EINPUT, "the prompt template asks for {%s}, a JSON %s: only strings, numbers, "
                        "booleans and null are filled in", field, json_is_array(v) ? "list" : "object");
    }
    return sb_add(out, num, strlen(num));
}

/* template.format(**rec) as Python does it: "{{" and "}}" are literal braces, a single '}' or an
 * unclosed '{' is an error, {name} (optionally {name!s} or {name:}) is str(rec[name]); fields by
 * position, attribute or index, conversions other than !s and format specs are refused. */
static int py_format(const char *tmpl, json_t *rec, sbuf *out) {
    const char *p = tmpl;
    int rc = sb_add(out, "", 0);
    while (!rc && *p) {
        const char *q = p;
        while (*q && *q != '{' && *q != '}') q++;
        if ((rc = sb_add(out, p, (size_t)(q - p))) || !*q) break;
        if (q[0] == q[1]) { /* "{{" or "}}" */
            rc = sb_add(out, q, 1);
            p = q + 2;
            continue;
        }
        if (*q == '}') return mtok_err(MTOK_EINPUT, "prompt template: Single '}' encountered in format string");
        /* a field: up to the '}' that closes it (a nested '{' opens a level, as Python counts them) */
        const char *f = q + 1, *e = f;
        int depth = 1;
        for (; *e; e++) {
            if (*e == '{') depth++;
            else if (*e == '}' && --depth == 0) break;
        }
        if (!*e) return mtok_err(MTOK_EINPUT, q[1] ? "prompt template: expected '}' before end of string"
                                              : "prompt template: Single '{' encountered in format string");
        size_t nl = strcspn(f, ".[!:}");
        char name[128];
        if (nl == 0 || nl >= sizeof name || f[nl] == '.' || f[nl] == '[')
            return mtok_err(MTOK_EINPUT, "prompt template: the field {%.*s} is not a record field name (positional, "
                            "attribute and index fields are not filled in)", (int)(e - f), f);
        const char *rest = f + nl;
        if (!(rest == e || (rest[0] == '!' && rest[1] == 's' && rest + 2 == e) || (rest[0] == ':' && rest + 1 == e) ||
              (rest[0] == '!' && rest[1] == 's' && rest[2] == ':' && rest + 3 == e)))
            return mtok_err(MTOK_EINPUT, "prompt template: {%.*s}: conversions and format specs are not reproduced",
                            (int)(e - f), f);
        memcpy(name, f, nl);
        name[nl] = 0;
        size_t dg = strspn(name, "0123456789");
        if (dg == nl) return mtok_err(MTOK_EINPUT, "prompt template: {%s} is a positional field (format(**record) has "
                                      "none)", name);
        json_t *v = json_object_get(rec, name);
        if (!v) return mtok_err(MTOK_EINPUT, "prompt template: the record has no field \"%s\" (KeyError)", name);
        rc = py_str(v, name, out);
        p = e + 1;
    }
    return rc;
}

/* str.replace(old, new): every non-overlapping occurrence, left to right. */
static int py_replace(sbuf *s, const char *old, const char *val, size_t vl) {
    sbuf o = {0};
    const size_t ol = strlen(old);
    const char *p = s->s, *end = s->s + s->n, *q;
    int rc = sb_add(&o, "", 0);
    while (!rc && (q = memmem(p, (size_t)(end - p), old, ol))) {
        rc = sb_add(&o, p, (size_t)(q - p));
        if (!rc) rc = sb_add(&o, val, vl);
        p = q + ol;
    }
    if (!rc) rc = sb_add(&o, p, (size_t)(end - p));
    if (rc) return free(o.s), rc;
    free(s->s);
    *s = o;
    return 0;
}

/* An answer's text in a prediction line: up to its first NUL byte, if any (rare: a byte-0 token). The
 * jsonl reader behind --resume and --score (jansson without JSON_ALLOW_NUL) refuses "\u0000", so a
 * line holding one would be unreadable to mtok itself; the rest of mtok eval cuts there too. */
static json_t *answer_json(const char *s, size_t n) { return json_stringn(s, strnlen(s, n)); }

/* ---- truncation --------------------------------------------------------------------------------- */
/* v1: the text ids[:half] and ids[-half:] decode to, joined (pred.py decodes the halves apart). */
static int v1_truncate(const mtok_tokenizer *t, const mtok_ids *ids, int64_t max_length, sbuf *out) {
    const size_t half = (size_t)(max_length / 2);
    size_t la, lb;
    char *a = mev_decode_ids(t, ids->v, half, 1, &la);
    char *b = a ? mev_decode_ids(t, ids->v + ids->n - half, half, 1, &lb) : NULL;
    int rc = !b ? MTOK_ERESOURCE : 0;
    out->n = 0;
    if (!rc) rc = sb_add(out, a, la);
    if (!rc) rc = sb_add(out, b, lb);
    free(a), free(b);
    return rc;
}

/* v2: ids[:max_len//2] + ids[-max_len//2:] (Python's floor division: the tail gets the odd token)
 * decoded as one text. */
static int v2_truncate(const mtok_tokenizer *t, mtok_ids *ids, int64_t max_len, sbuf *out) {
    const size_t head = (size_t)(max_len / 2), tail = (size_t)(max_len - max_len / 2);
    memmove(ids->v + head, ids->v + ids->n - tail, tail * sizeof *ids->v);
    ids->n = head + tail;
    size_t l;
    char *d = mev_decode_ids(t, ids->v, ids->n, 1, &l);
    if (!d) return MTOK_ERESOURCE;
    out->n = 0;
    int rc = sb_add(out, d, l);
    free(d);
    return rc;
}

static int prefix_ids(const mtok_tokenizer *t, mtok_ids *ids) {
    int32_t g = mtok_token_special(t, "[gMASK]"), s = mtok_token_special(t, "<sop>");
    if (g < 0 || s < 0) return mtok_err(MTOK_EINPUT, "the tokenizer lacks [gMASK] and <sop> (not a GLM-4 tokenizer)");
    int rc = mtok_ids_push(ids, g);
    return rc ? rc : mtok_ids_push(ids, s);
}

/* One user message in GLM-4's chat template, [gMASK]<sop><|user|> + encode("\n") + encode(text) +
 * <|assistant|>, as mtok_chat_encode makes it, for a text of n bytes: a decoded answer fed back as
 * $COT$ may hold a NUL byte, which mtok_message's C string would end at. */
static int chat_ids(const mtok_tokenizer *t, const char *text, size_t n, mtok_ids *ids) {
    int32_t u = mtok_token_special(t, "<|user|>"), as = mtok_token_special(t, "<|assistant|>");
    int rc = u < 0 || as < 0 ? mtok_err(MTOK_EINPUT, "the tokenizer lacks <|user|> and <|assistant|>")
                             : prefix_ids(t, ids);
    if (!rc) rc = mtok_ids_push(ids, u);
    if (!rc) rc = mtok_tokenize(t, "\n", 1, 0, ids);
    if (!rc) rc = mtok_tokenize(t, text, n, 0, ids);
    return rc ? rc : mtok_ids_push(ids, as);
}

/* ---- one pass: feed, generate, dump -------------------------------------------------------------- */
typedef struct {
    const mev_lb_gen_opts *o;
    mev_runner *r;
    const char *dataset;
    int64_t line;
} pass_ctx;

static int dump_ids(json_t *o, const char *k, const int32_t *v, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_integer(v[i]))) return json_decref(a), -1;
    return a ? json_object_set_new(o, k, a) : -1;
}

/* Feeds ids, generates as g asks; *text gets the answer decoded skipping special tokens. 1 when
 * interrupted. */
static int run_pass(const pass_ctx *c, const char *pass, const mtok_ids *ids, const mev_gen_opts *go, int64_t max_len,
                    int truncated, char **text, size_t *tl) {
    const int64_t ctx = mtok_session_ctx(c->r->s);
    if ((int64_t)ids->n >= ctx)
        return mtok_err(MTOK_EINPUT, "%s line %lld: the prompt is %zu tokens, the context %lld: give a smaller "
                        "--max-length (now %lld) or a larger --ctx", c->dataset, (long long)c->line, ids->n,
                        (long long)ctx, (long long)max_len);
    int rc = mev_feed(c->r, ids->v, ids->n);
    if (rc) return rc;
    mtok_ids gen = {0};
    rc = mev_greedy_ex(c->r, go, &gen);
    if (!rc && !(*text = mev_decode_ids(c->r->t, gen.v, gen.n, 1, tl))) rc = MTOK_ERESOURCE;
    if (!rc && c->o->dump) {
        json_t *d = json_pack("{s:I, s:s, s:s, s:I, s:I, s:b}", "data_line", (json_int_t)c->line, "dataset",
                              c->dataset, "pass", pass, "max_length", (json_int_t)max_len, "max_new",
                              (json_int_t)go->max_new, "truncated", truncated);
        char *s = NULL;
        if (!d || dump_ids(d, "ids", ids->v, ids->n) || dump_ids(d, "gen", gen.v, gen.n) ||
            !(s = json_dumps(d, JSON_COMPACT | JSON_PRESERVE_ORDER)))
            rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        else if (fprintf(c->o->dump, "%s\n", s) < 0 || fflush(c->o->dump))
            rc = mtok_err(MTOK_ERESOURCE, "--dump-prompts: write failed: %s", strerror(errno));
        free(s);
        json_decref(d);
    }
    mtok_ids_free(&gen);
    return rc;
}

/* pred.py's max_length, or what fits the context: it less the answer's budget and 16 tokens (the chat
 * template's 5 and what a re-encoded join of two halves may add). */
static int max_len_of(const mev_lb_gen_opts *o, const mev_runner *r, int64_t budget, int64_t *out) {
    *out = o->max_length ? o->max_length : mtok_session_ctx(r->s) - budget - 16;
    if (*out < 2)
        return mtok_err(MTOK_EINPUT, "the context (%lld tokens) leaves no room for a prompt and %lld generated tokens",
                        (long long)mtok_session_ctx(r->s), (long long)budget);
    return 0;
}

static const char *const RAW[] = {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"};

/* The name pred.py looks the dataset up with: LongBench-E's "<name>_e" is <name>'s. */
static void base_name(const mev_lb_gen *g, const char *ds, char *out, size_t cap) {
    size_t n = strlen(ds);
    snprintf(out, cap, "%s", ds);
    if (!json_object_get(g->prompts, ds) && n > 2 && !strcmp(ds + n - 2, "_e") && n - 2 < cap) out[n - 2] = 0;
}

static int predict_v1(const mev_lb_gen *g, const pass_ctx *c, json_t *rec, json_t **out, int64_t *n_fed) {
    char ds[128];
    base_name(g, c->dataset, ds, sizeof ds);
    const char *tmpl = json_string_value(json_object_get(g->prompts, ds));
    if (!tmpl)
        return mtok_err(MTOK_EINPUT, "%s has no prompt for dataset \"%s\" (line %lld)", g->prompts_name, ds,
                        (long long)c->line);
    json_t *ml = g->maxlen ? json_object_get(g->maxlen, ds) : NULL;
    if (c->o->max_new <= 0 && !ml)
        return mtok_err(MTOK_EINPUT, g->maxlen ? "%s has no length for dataset \"%s\"" : "%s: no --maxlen (LongBench's "
                        "dataset2maxlen.json) for dataset \"%s\" and no -n", g->maxlen ? g->maxlen_name : "eval", ds);
    const int64_t budget = c->o->max_new > 0 ? c->o->max_new : (int64_t)json_integer_value(ml);
    int64_t max_len;
    int rc = max_len_of(c->o, c->r, budget, &max_len);
    if (rc) return rc;
    sbuf prompt = {0};
    mtok_ids ids = {0};
    int truncated = 0, raw = 0;
    rc = py_format(tmpl, rec, &prompt);
    if (!rc) rc = mtok_tokenize(c->r->t, prompt.s, prompt.n, 0, &ids);
    if (!rc && (int64_t)ids.n > max_len) truncated = 1, rc = v1_truncate(c->r->t, &ids, max_len, &prompt);
    for (size_t i = 0; i < sizeof RAW / sizeof *RAW; i++) raw |= !strcmp(ds, RAW[i]);
    ids.n = 0;
    if (!rc && raw) { /* fed as it is: tokenizer(prompt) puts [gMASK]<sop> first */
        rc = prefix_ids(c->r->t, &ids);
        if (!rc) rc = mtok_tokenize(c->r->t, prompt.s, prompt.n, 0, &ids);
    } else if (!rc)
        rc = chat_ids(c->r->t, prompt.s, prompt.n, &ids);
    /* samsum: generate(min_length = context + 1, eos_token_id = [tokenizer.eos_token_id, encode("\n")[-1]]) */
    int32_t stops[2];
    mev_gen_opts go = {.max_new = budget};
    if (!rc && !strcmp(ds, "samsum")) {
        mtok_ids nl = {0};
        const mtok_config *cf = mtok_session_config(c->r->s);
        stops[0] = mtok_token_special(c->r->t, "<|endoftext|>");
        if (stops[0] < 0 && cf->n_eos) stops[0] = cf->eos_ids[0];
        rc = mtok_tokenize(c->r->t, "\n", 1, 0, &nl);
        if (!rc && !nl.n) rc = mtok_err(MTOK_EINPUT, "the tokenizer encodes \"\\n\" to nothing");
        if (!rc) stops[1] = nl.v[nl.n - 1];
        mtok_ids_free(&nl);
        go.stop_ids = stops, go.n_stop = 2, go.min_new = 1;
    }
    char *text = NULL;
    size_t tl = 0;
    if (!rc) rc = run_pass(c, "answer", &ids, &go, max_len, truncated, &text, &tl);
    *n_fed = (int64_t)ids.n;
    free(prompt.s);
    mtok_ids_free(&ids);
    if (rc) return free(text), rc;
    /* pred.py's line, then what mtok's --resume knows the record by */
    static const char *const keep[] = {"answers", "all_classes", "length"};
    json_t *o = json_object();
    int bad = !o || json_object_set_new(o, "pred", answer_json(text, tl));
    for (size_t i = 0; !bad && i < 3; i++) {
        json_t *v = json_object_get(rec, keep[i]);
        bad = json_object_set(o, keep[i], v ? v : json_null());
    }
    static const char *const ids_of[] = {"_id", "index", "dataset", "task"};
    for (size_t i = 0; !bad && i < 4; i++)
        if (json_object_get(rec, ids_of[i])) bad = json_object_set(o, ids_of[i], json_object_get(rec, ids_of[i]));
    free(text);
    if (bad) return json_decref(o), mtok_err(MTOK_ERESOURCE, "out of memory");
    *out = o;
    return 0;
}

/* A v2 prompt: the template with its markers replaced in pred.py's order, each value stripped. */
static int v2_prompt(const char *tmpl, json_t *rec, const char *cot, size_t cot_len, sbuf *out) {
    static const char *const marks[][2] = {{"$DOC$", "context"}, {"$Q$", "question"}, {"$C_A$", "choice_A"},
                                           {"$C_B$", "choice_B"}, {"$C_C$", "choice_C"}, {"$C_D$", "choice_D"}};
    out->n = 0;
    int rc = sb_add(out, tmpl, strlen(tmpl));
    for (size_t i = 0; !rc && i < 6; i++) {
        json_t *v = json_object_get(rec, marks[i][1]);
        if (!json_is_string(v)) return mtok_err(MTOK_EINPUT, "a LongBench v2 record needs a \"%s\" string", marks[i][1]);
        size_t a, b;
        py_strip(json_string_value(v), json_string_length(v), &a, &b);
        rc = py_replace(out, marks[i][0], json_string_value(v) + a, b - a);
    }
    if (!rc && cot) rc = py_replace(out, "$COT$", cot, cot_len);
    return rc;
}

/* One v2 pass: the prompt truncated as query_llm does, in the chat template, generated. */
static int v2_pass(const pass_ctx *c, const char *pass, sbuf *prompt, int64_t budget, int64_t max_len, char **text,
                   size_t *tl, int64_t *n_fed) {
    mtok_ids ids = {0};
    int truncated = 0;
    int rc = prefix_ids(c->r->t, &ids); /* tokenizer.encode(prompt) counts [gMASK]<sop> */
    if (!rc) rc = mtok_tokenize(c->r->t, prompt->s, prompt->n, 0, &ids);
    if (!rc && (int64_t)ids.n > max_len) truncated = 1, rc = v2_truncate(c->r->t, &ids, max_len, prompt);
    ids.n = 0;
    if (!rc) rc = chat_ids(c->r->t, prompt->s, prompt->n, &ids);
    const mev_gen_opts go = {.max_new = budget};
    if (!rc) rc = run_pass(c, pass, &ids, &go, max_len, truncated, text, tl);
    *n_fed = (int64_t)ids.n;
    mtok_ids_free(&ids);
    return rc;
}

static int predict_v2(const mev_lb_gen *g, const pass_ctx *c, json_t *rec, json_t **out, int64_t *n_fed) {
    const int64_t b_ans = c->o->max_new > 0 ? c->o->max_new : 128, b_cot = c->o->max_new > 0 ? c->o->max_new : 1024;
    int64_t max_len;
    int rc = max_len_of(c->o, c->r, g->cot && b_cot > b_ans ? b_cot : b_ans, &max_len);
    if (rc) return rc;
    sbuf prompt = {0};
    char *cot = NULL, *text = NULL;
    size_t cl = 0, tl = 0, ca = 0, cb = 0, ta, tb;
    if (g->cot) {
        rc = v2_prompt(g->t_cot, rec, NULL, 0, &prompt);
        if (!rc) rc = v2_pass(c, "cot", &prompt, b_cot, max_len, &cot, &cl, n_fed);
        if (!rc) py_strip(cot, cl, &ca, &cb), cot[cb] = 0;
        if (!rc) rc = v2_prompt(g->t_ans, rec, cot + ca, cb - ca, &prompt);
    } else
        rc = v2_prompt(g->t0, rec, NULL, 0, &prompt);
    if (!rc) rc = v2_pass(c, "answer", &prompt, b_ans, max_len, &text, &tl, n_fed);
    free(prompt.s);
    if (rc) return free(cot), free(text), rc;
    py_strip(text, tl, &ta, &tb);
    text[tb] = 0;
    /* pred.py's item: the record's fields in its order, the context cut to 1000 characters */
    static const char *const fields[] = {"_id", "domain", "sub_domain", "difficulty", "length", "question", "choice_A",
                                         "choice_B", "choice_C", "choice_D", "answer"};
    json_t *o = json_object();
    int bad = !o;
    for (size_t i = 0; !bad && i < sizeof fields / sizeof *fields; i++)
        if (json_object_get(rec, fields[i])) bad = json_object_set(o, fields[i], json_object_get(rec, fields[i]));
    const char *ctx = json_string_value(json_object_get(rec, "context"));
    size_t at = 0, chars = 0, k;
    uint32_t cp;
    while (ctx && chars < 1000 && (k = mev_utf8_decode(ctx + at, strlen(ctx + at), &cp))) at += k, chars++;
    if (!bad) bad = json_object_set_new(o, "context", json_stringn(ctx ? ctx : "", at));
    if (!bad && cot) bad = json_object_set_new(o, "response_cot", answer_json(cot + ca, cb - ca));
    /* the letter: Python's regex reads past a NUL the text may hold, strstr would not (a NUL is no
     * part of the pattern, so it becomes another byte that is none either) */
    char *scan = malloc(tb - ta + 1);
    for (size_t i = ta; scan && i < tb; i++) scan[i - ta] = text[i] ? text[i] : '\001';
    if (scan) scan[tb - ta] = 0;
    char letter[2] = {scan ? mev_lb2_extract(scan) : 0, 0};
    bad |= !scan;
    free(scan);
    const char *answer = json_string_value(json_object_get(rec, "answer"));
    if (!bad) bad = json_object_set_new(o, "response", answer_json(text + ta, tb - ta));
    if (!bad) bad = json_object_set_new(o, "pred", letter[0] ? json_string(letter) : json_null());
    if (!bad) bad = json_object_set_new(o, "judge", json_boolean(letter[0] && answer && !strcmp(letter, answer)));
    free(cot), free(text);
    if (bad) return json_decref(o), mtok_err(MTOK_ERESOURCE, "out of memory");
    *out = o;
    return 0;
}

int mev_lb_predict(const mev_lb_gen *g, const mev_lb_gen_opts *o, mev_runner *r, json_t *rec, const char *dataset,
                   int64_t line, json_t **out, int64_t *n_fed) {
    const pass_ctx c = {o, r, dataset ? dataset : "", line};
    *out = NULL;
    *n_fed = 0;
    return g->v2 ? predict_v2(g, &c, rec, out, n_fed) : predict_v1(g, &c, rec, out, n_fed);
}

int mev_py_format(const char *tmpl, json_t *fields, char **out, size_t *len) {
    sbuf b = {0};
    int rc = py_format(tmpl, fields, &b);
    if (rc) return free(b.s), rc;
    *out = b.s, *len = b.n;
    return 0;
}
