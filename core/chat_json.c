/* chat_json.c — JSON read as Python's json.loads reads it and written as json.dumps writes it, and
 * ChatGLM3's tool_call(...) read as Python literals without evaluating anything (chat_json.h says why). */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_json.h"
#include "mtok.h"

#define CJ_MAX_DEPTH 256 /* nesting that a tool definition or call plausibly needs, far below stack limits */

int cj_add(cj_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return mtok_err(MTOK_ERESOURCE, "out of memory building a chat prompt");
        b->s = p, b->cap = cap;
    }
    if (n) memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}
int cj_str(cj_buf *b, const char *s) { return cj_add(b, s, strlen(s)); }

void cj_free(cj_node *n) {
    while (n) {
        cj_node *next = n->next;
        cj_free(n->kids);
        cj_free(n->key);
        free(n->text);
        free(n);
        n = next;
    }
}

cj_node *cj_get(const cj_node *obj, const char *key) {
    cj_node *found = NULL;
    size_t kl = strlen(key);
    for (cj_node *m = obj && obj->type == 'o' ? obj->kids : NULL; m; m = m->next)
        if (m->key->len == kl && !memcmp(m->key->text, key, kl)) found = m;
    return found;
}

int cj_is(const cj_node *n, const char *s) { return n && n->type == 's' && n->len == strlen(s) && !memcmp(n->text, s, n->len); }

const char *cj_kind(const cj_node *n) {
    switch (n ? n->type : 0) {
    case 'o': return "an object";
    case 'a': return "an array";
    case 's': return "a string";
    case 'i': case 'r': return "a number";
    case 't': case 'f': return "a boolean";
    case 'z': return "null";
    default: return "missing";
    }
}

static cj_node *node(char type) {
    cj_node *n = calloc(1, sizeof *n);
    if (n) n->type = type;
    return n;
}

static int put_utf8(cj_buf *b, uint32_t c) {
    char u[4];
    size_t k;
    if (c < 0x80) u[0] = (char)c, k = 1;
    else if (c < 0x800) u[0] = (char)(0xC0 | c >> 6), u[1] = (char)(0x80 | (c & 63)), k = 2;
    else if (c < 0x10000)
        u[0] = (char)(0xE0 | c >> 12), u[1] = (char)(0x80 | ((c >> 6) & 63)), u[2] = (char)(0x80 | (c & 63)), k = 3;
    else
        u[0] = (char)(0xF0 | c >> 18), u[1] = (char)(0x80 | ((c >> 12) & 63)), u[2] = (char)(0x80 | ((c >> 6) & 63)),
        u[3] = (char)(0x80 | (c & 63)), k = 4;
    return cj_add(b, u, k);
}

/* Length of the valid UTF-8 character at s (n >= 1 bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;
    else if (c == 0xED) need = 2, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) need = 2;
    else if (c == 0xF0) need = 3, lo = 0x90;
    else if (c == 0xF4) need = 3, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else return 0;
    for (size_t k = 1; k <= need; k++) {
        if (k >= n || s[k] < lo || s[k] > hi) return 0;
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* JSON reader                                                                                     */

typedef struct {
    const char *s, *what;
    size_t n, i;
    int depth;
} jp;

static int jfail(jp *p, const char *why) {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < p->i && k < p->n; k++) {
        if (p->s[k] == '\n') line++, col = 1;
        else col++;
    }
    return mtok_err(MTOK_EINPUT, "%s: not valid JSON: %s (line %zu, column %zu)", p->what, why, line, col);
}

static void jws(jp *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static int hex4(const char *s, uint32_t *v) {
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

static int jstring(jp *p, cj_node **out) {
    cj_buf b = {0};
    int rc = cj_add(&b, "", 0);
    p->i++; /* the opening quote */
    while (!rc) {
        if (p->i >= p->n) { rc = jfail(p, "unterminated string"); break; }
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') { p->i++; break; }
        if (c < 0x20) { rc = jfail(p, "control character in a string"); break; }
        if (c != '\\') {
            size_t k = utf8_len((const unsigned char *)p->s + p->i, p->n - p->i);
            if (!k) { rc = jfail(p, "invalid UTF-8 in a string"); break; }
            rc = cj_add(&b, p->s + p->i, k);
            p->i += k;
            continue;
        }
        if (p->i + 1 >= p->n) { rc = jfail(p, "unterminated string"); break; }
        char e = p->s[p->i + 1];
        static const char keys[] = "\"\\/bfnrt", map[] = "\"\\/\b\f\n\r\t";
        const char *simple = strchr(keys, e);
        if (e && simple) {
            rc = cj_add(&b, &map[simple - keys], 1);
            p->i += 2;
            continue;
        }
        uint32_t u, lo;
        if (e != 'u' || p->i + 6 > p->n || hex4(p->s + p->i + 2, &u)) { rc = jfail(p, "bad escape in a string"); break; }
        p->i += 6;
        if (u >= 0xD800 && u < 0xDC00) {
            if (p->i + 6 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u' || hex4(p->s + p->i + 2, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF) {
                rc = jfail(p, "lone surrogate in a string (not encodable as UTF-8)");
                break;
            }
            p->i += 6;
            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
        } else if (u >= 0xDC00 && u <= 0xDFFF) {
            rc = jfail(p, "lone surrogate in a string (not encodable as UTF-8)");
            break;
        }
        rc = put_utf8(&b, u);
    }
    cj_node *n = rc ? NULL : node('s');
    if (!rc && !n) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    if (rc) {
        free(b.s);
        return rc;
    }
    n->text = b.s, n->len = b.n;
    *out = n;
    return 0;
}

static int jvalue(jp *p, cj_node **out);

static int jnumber(jp *p, cj_node **out) {
    size_t st = p->i, i = p->i;
    const char *s = p->s;
    int real = 0;
    if (i < p->n && s[i] == '-') i++;
    if (i + 8 <= p->n && !memcmp(s + i, "Infinity", 8)) i += 8, real = 1;
    else {
        if (i >= p->n || s[i] < '0' || s[i] > '9') { p->i = i; return jfail(p, "bad number"); }
        if (s[i] == '0') i++;
        else while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
        if (i < p->n && s[i] == '.') {
            real = 1, i++;
            if (i >= p->n || s[i] < '0' || s[i] > '9') { p->i = i; return jfail(p, "bad number"); }
            while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
        }
        if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
            real = 1, i++;
            if (i < p->n && (s[i] == '+' || s[i] == '-')) i++;
            if (i >= p->n || s[i] < '0' || s[i] > '9') { p->i = i; return jfail(p, "bad number"); }
            while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
        }
    }
    cj_node *n = node(real ? 'r' : 'i');
    if (!n || !(n->text = strndup(s + st, i - st))) {
        free(n);
        return mtok_err(MTOK_ERESOURCE, "out of memory");
    }
    n->len = i - st;
    p->i = i;
    *out = n;
    return 0;
}

static int jcontainer(jp *p, cj_node **out) {
    char open = p->s[p->i], close = open == '{' ? '}' : ']';
    if (++p->depth > CJ_MAX_DEPTH) return jfail(p, "nested too deeply");
    cj_node *n = node(open == '{' ? 'o' : 'a'), **tail = n ? &n->kids : NULL;
    if (!n) return mtok_err(MTOK_ERESOURCE, "out of memory");
    int rc = 0;
    p->i++;
    jws(p);
    if (p->i < p->n && p->s[p->i] == close) p->i++;
    else for (;;) {
        cj_node *key = NULL, *v = NULL;
        if (open == '{') {
            if (p->i >= p->n || p->s[p->i] != '"') { rc = jfail(p, "expected a string key"); break; }
            if ((rc = jstring(p, &key))) break;
            jws(p);
            if (p->i >= p->n || p->s[p->i] != ':') { cj_free(key); rc = jfail(p, "expected ':'"); break; }
            p->i++;
        }
        if ((rc = jvalue(p, &v))) { cj_free(key); break; }
        v->key = key;
        *tail = v, tail = &v->next;
        jws(p);
        if (p->i < p->n && p->s[p->i] == ',') { p->i++; jws(p); continue; }
        if (p->i < p->n && p->s[p->i] == close) { p->i++; break; }
        rc = jfail(p, open == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
        break;
    }
    p->depth--;
    if (rc) {
        cj_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

static int jvalue(jp *p, cj_node **out) {
    jws(p);
    if (p->i >= p->n) return jfail(p, "unexpected end of text");
    char c = p->s[p->i];
    if (c == '{' || c == '[') return jcontainer(p, out);
    if (c == '"') return jstring(p, out);
    if (c == '-' || (c >= '0' && c <= '9') || c == 'I') return jnumber(p, out);
    static const struct { const char *w; char t; } words[] = {{"true", 't'}, {"false", 'f'}, {"null", 'z'}, {"NaN", 'r'}};
    for (size_t k = 0; k < 4; k++) {
        size_t l = strlen(words[k].w);
        if (p->n - p->i >= l && !memcmp(p->s + p->i, words[k].w, l)) {
            cj_node *n = node(words[k].t);
            if (!n || (words[k].t == 'r' && !(n->text = strdup("NaN")))) {
                free(n);
                return mtok_err(MTOK_ERESOURCE, "out of memory");
            }
            n->len = words[k].t == 'r' ? 3 : 0;
            p->i += l;
            *out = n;
            return 0;
        }
    }
    return jfail(p, "unexpected character");
}

int cj_parse(const char *text, size_t len, const char *what, cj_node **out) {
    jp p = {text, what, len, 0, 0};
    *out = NULL;
    cj_node *n = NULL;
    int rc = jvalue(&p, &n);
    if (!rc) {
        jws(&p);
        if (p.i < p.n) {
            cj_free(n);
            return jfail(&p, "extra data after the value");
        }
        *out = n;
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Writer: Python's json.dumps(ensure_ascii=False)                                                 */

/* float.__repr__: the shortest digits that read back as v; plain notation for exponents -5 < e < 16. */
static int py_float(cj_buf *b, double v) {
    if (isnan(v)) return cj_str(b, "NaN");
    if (isinf(v)) return cj_str(b, v < 0 ? "-Infinity" : "Infinity");
    char t[48], digits[24], out[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(t, sizeof t, "%.*e", p - 1, v);
        if (strtod(t, NULL) == v) break;
    }
    const char *q = t;
    int neg = *q == '-', nd = 0;
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    int e = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int decpt = e + 1, o = 0;
    if (neg) out[o++] = '-';
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            o += sprintf(out + o, "0.");
            for (int k = 0; k < -decpt; k++) out[o++] = '0';
            o += sprintf(out + o, "%s", digits);
        } else if (decpt >= nd) {
            o += sprintf(out + o, "%s", digits);
            for (int k = nd; k < decpt; k++) out[o++] = '0';
            o += sprintf(out + o, ".0");
        } else {
            o += sprintf(out + o, "%.*s.%s", decpt, digits, digits + decpt);
        }
    } else {
        out[o++] = digits[0];
        if (nd > 1) o += sprintf(out + o, ".%s", digits + 1);
        o += sprintf(out + o, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
    return cj_add(b, out, (size_t)o);
}

/* Python's int: the digits as written, but "-0" is 0. */
static int py_int(cj_buf *b, const char *s, size_t n) {
    if (n == 2 && s[0] == '-' && s[1] == '0') return cj_add(b, "0", 1);
    return cj_add(b, s, n);
}

static int py_string(cj_buf *b, const char *s, size_t n) {
    int rc = cj_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        rc = cj_add(b, s + run, i - run);
        run = i + 1;
        char esc[8];
        switch (c) {
        case '"': strcpy(esc, "\\\""); break;
        case '\\': strcpy(esc, "\\\\"); break;
        case '\n': strcpy(esc, "\\n"); break;
        case '\r': strcpy(esc, "\\r"); break;
        case '\t': strcpy(esc, "\\t"); break;
        case '\b': strcpy(esc, "\\b"); break;
        case '\f': strcpy(esc, "\\f"); break;
        default: snprintf(esc, sizeof esc, "\\u%04x", c);
        }
        if (!rc) rc = cj_str(b, esc);
    }
    if (!rc) rc = cj_add(b, s + run, n - run);
    return rc ? rc : cj_add(b, "\"", 1);
}

static int newline(cj_buf *b, int indent, int depth) {
    int rc = cj_add(b, "\n", 1);
    for (int k = 0; k < indent * depth && !rc; k++) rc = cj_add(b, " ", 1);
    return rc;
}

/* A dict keeps the first position of a repeated key with the last value. */
static int shadowed(const cj_node *first, const cj_node *m) {
    for (const cj_node *x = first; x != m; x = x->next)
        if (x->key->len == m->key->len && !memcmp(x->key->text, m->key->text, m->key->len)) return 1;
    return 0;
}

static int dump(const cj_node *n, int indent, int depth, cj_buf *b) {
    switch (n->type) {
    case 's': return py_string(b, n->text, n->len);
    case 'i': return py_int(b, n->text, n->len);
    case 'r': return py_float(b, strtod(n->text, NULL));
    case 't': return cj_str(b, "true");
    case 'f': return cj_str(b, "false");
    case 'z': return cj_str(b, "null");
    default: break;
    }
    int obj = n->type == 'o', rc = cj_add(b, obj ? "{" : "[", 1), first = 1;
    if (!n->kids) return rc ? rc : cj_add(b, obj ? "}" : "]", 1);
    for (const cj_node *m = n->kids; m && !rc; m = m->next) {
        const cj_node *v = m;
        if (obj) {
            if (shadowed(n->kids, m)) continue;
            for (const cj_node *x = m->next; x; x = x->next)
                if (x->key->len == m->key->len && !memcmp(x->key->text, m->key->text, m->key->len)) v = x;
        }
        if (!first) rc = cj_str(b, indent >= 0 ? "," : ", ");
        first = 0;
        if (!rc && indent >= 0) rc = newline(b, indent, depth + 1);
        if (!rc && obj) rc = py_string(b, m->key->text, m->key->len);
        if (!rc && obj) rc = cj_str(b, ": ");
        if (!rc) rc = dump(v, indent, depth + 1, b);
    }
    if (!rc && indent >= 0) rc = newline(b, indent, depth);
    return rc ? rc : cj_add(b, obj ? "}" : "]", 1);
}

int cj_dump(const cj_node *n, int indent, cj_buf *out) { return dump(n, indent, 0, out); }

/* ---------------------------------------------------------------------------------------------- */
/* ChatGLM3's tool_call(...): Python literals, read, never run                                     */

typedef struct {
    const char *s;
    size_t n, i;
    int depth;
} pp;

static void pws(pp *p) {
    while (p->i < p->n && strchr(" \t\r\n", p->s[p->i]) && p->s[p->i]) p->i++;
}
static int peek(pp *p, char c) {
    pws(p);
    return p->i < p->n && p->s[p->i] == c;
}

/* Returns 0 and a node, 1 when the text is not a literal Python accepts here, < 0 on no memory. */
static int pvalue(pp *p, cj_node **out);

static int pstring1(pp *p, cj_buf *b) {
    int raw = 0;
    if (p->i < p->n && (p->s[p->i] == 'r' || p->s[p->i] == 'R')) raw = 1, p->i++;
    else if (p->i < p->n && (p->s[p->i] == 'u' || p->s[p->i] == 'U')) p->i++;
    if (p->i >= p->n || (p->s[p->i] != '"' && p->s[p->i] != '\'')) return 1;
    char q = p->s[p->i];
    int triple = p->i + 2 < p->n && p->s[p->i + 1] == q && p->s[p->i + 2] == q;
    p->i += triple ? 3 : 1;
    for (;;) {
        if (p->i >= p->n) return 1;
        char c = p->s[p->i];
        if (c == q && (!triple || (p->i + 2 < p->n && p->s[p->i + 1] == q && p->s[p->i + 2] == q))) {
            p->i += triple ? 3 : 1;
            return 0;
        }
        if (c == '\n' && !triple) return 1;
        int rc;
        if (c != '\\' || raw) {
            size_t k = c == '\\' && p->i + 1 < p->n ? 2 : utf8_len((const unsigned char *)p->s + p->i, p->n - p->i);
            if (!k) return 1;
            rc = cj_add(b, p->s + p->i, k);
            p->i += k;
            if (rc) return rc;
            continue;
        }
        if (p->i + 1 >= p->n) return 1;
        char e = p->s[p->i + 1];
        p->i += 2;
        static const char keys[] = "\\'\"abfnrtv\n", map[] = "\\'\"\a\b\f\n\r\t\v";
        const char *m = strchr(keys, e);
        uint32_t u = 0;
        int hexn = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (e && m) {
            if (e == '\n') continue; /* a backslash-newline joins lines */
            rc = cj_add(b, &map[m - keys], 1);
        } else if (e >= '0' && e <= '7') {
            u = (uint32_t)(e - '0');
            for (int k = 0; k < 2 && p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '7'; k++)
                u = u * 8 + (uint32_t)(p->s[p->i++] - '0');
            rc = put_utf8(b, u);
        } else if (hexn) {
            for (int k = 0; k < hexn; k++, p->i++) {
                char h = p->i < p->n ? p->s[p->i] : 0;
                int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (d < 0) return 1;
                u = u << 4 | (uint32_t)d;
            }
            if (u > 0x10FFFF || (u >= 0xD800 && u <= 0xDFFF)) return 1; /* Python could not encode it */
            rc = put_utf8(b, u);
        } else {
            if (e == 'N') return 1; /* \N{NAME}: would need Unicode's name table */
            rc = cj_add(b, p->s + p->i - 2, 2); /* an unknown escape stays as written */
        }
        if (rc) return rc;
    }
}

static int pstring(pp *p, cj_node **out) {
    cj_buf b = {0};
    int rc = cj_add(&b, "", 0), any = 0;
    /* adjacent literals concatenate: "a" 'b' is "ab" */
    while (!rc) {
        pws(p);
        size_t save = p->i;
        rc = pstring1(p, &b);
        if (rc == 1 && any) {
            p->i = save, rc = 0;
            break;
        }
        any = 1;
    }
    cj_node *n = rc ? NULL : node('s');
    if (!rc && !n) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    if (rc) {
        free(b.s);
        return rc;
    }
    n->text = b.s, n->len = b.n;
    *out = n;
    return 0;
}

static int is_digit_of(char c, int base) {
    if (base == 16) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    return c >= '0' && c < '0' + base;
}

/* int or float literal, with an optional sign (Python's unary minus/plus on a number) */
static int pnumber(pp *p, cj_node **out) {
    int neg = 0;
    while (p->i < p->n && (p->s[p->i] == '-' || p->s[p->i] == '+')) neg ^= p->s[p->i++] == '-', pws(p);
    char buf[400];
    size_t o = 0, i = p->i;
    int base = 10, real = 0;
    if (i + 1 < p->n && p->s[i] == '0' && strchr("xXoObB", p->s[i + 1]) && p->s[i + 1]) {
        char k = (char)(p->s[i + 1] | 0x20);
        base = k == 'x' ? 16 : k == 'o' ? 8 : 2;
        i += 2;
    }
    /* digits with single underscores between them */
    for (; i < p->n && o < sizeof buf - 8; i++) {
        char c = p->s[i];
        if (is_digit_of(c, base)) buf[o++] = c;
        else if (c == '_' && o && i + 1 < p->n && is_digit_of(p->s[i + 1], base)) continue;
        else if (base == 10 && c == '.' && !real) buf[o++] = c, real = 1;
        else if (base == 10 && (c == 'e' || c == 'E') && o) {
            buf[o++] = 'e', real = 1;
            if (i + 1 < p->n && (p->s[i + 1] == '+' || p->s[i + 1] == '-')) buf[o++] = p->s[++i];
            if (i + 1 >= p->n || !is_digit_of(p->s[i + 1], 10)) return 1;
        } else break;
    }
    buf[o] = 0;
    if (!o || (o == 1 && buf[0] == '.') || (i < p->n && (p->s[i] == 'j' || p->s[i] == 'J'))) return 1;
    p->i = i;
    cj_buf b = {0};
    int rc = cj_add(&b, "", 0);
    cj_node *n = NULL;
    if (real) {
        char *end;
        double v = strtod(buf, &end);
        if (*end) return free(b.s), 1;
        rc = py_float(&b, neg ? -v : v);
    } else if (base != 10) {
        errno = 0;
        unsigned long long v = strtoull(buf, NULL, base);
        if (errno) return free(b.s), 1; /* mtok reads hex/octal/binary literals up to 2^64-1 */
        char t[32];
        snprintf(t, sizeof t, "%s%llu", neg && v ? "-" : "", v);
        rc = cj_str(&b, t);
    } else {
        size_t z = 0;
        while (z + 1 < o && buf[z] == '0') z++;
        if (z && buf[0] == '0' && o > 1) return free(b.s), 1; /* 007 is a syntax error in Python 3 */
        if (neg && !(o == 1 && buf[0] == '0')) rc = cj_add(&b, "-", 1);
        if (!rc) rc = cj_add(&b, buf, o);
    }
    if (!rc && !(n = node(real ? 'r' : 'i'))) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    if (rc) return free(b.s), rc;
    /* a real keeps its repr() text: strtod of it gives the same double back */
    n->text = b.s, n->len = b.n;
    *out = n;
    return 0;
}

/* json.dumps turns dict keys that are not strings into strings: 1 -> "1", True -> "true", None -> "null" */
static int key_to_string(cj_node *k) {
    const char *w = k->type == 't' ? "true" : k->type == 'f' ? "false" : k->type == 'z' ? "null" : NULL;
    if (k->type == 's') return 0;
    if (k->type == 'o' || k->type == 'a') return 1; /* unhashable or not a valid JSON key */
    if (w && !(k->text = strdup(w))) return mtok_err(MTOK_ERESOURCE, "out of memory");
    if (w) k->len = strlen(w);
    k->type = 's';
    return 0;
}

static int pcontainer(pp *p, cj_node **out) {
    char open = p->s[p->i], close = open == '{' ? '}' : open == '[' ? ']' : ')';
    if (++p->depth > CJ_MAX_DEPTH) return 1;
    cj_node *n = node(open == '{' ? 'o' : 'a'), **tail = n ? &n->kids : NULL;
    if (!n) return mtok_err(MTOK_ERESOURCE, "out of memory");
    int rc = 0, count = 0, comma = 0;
    p->i++;
    for (;;) {
        if (peek(p, close)) {
            p->i++;
            break;
        }
        cj_node *key = NULL, *v = NULL;
        if (count && !comma) { rc = 1; break; }
        if (open == '{') {
            if ((rc = pvalue(p, &key)) || (rc = key_to_string(key))) { cj_free(key); break; }
            if (!peek(p, ':')) { cj_free(key); rc = 1; break; }
            p->i++;
        }
        if ((rc = pvalue(p, &v))) { cj_free(key); break; }
        v->key = key;
        *tail = v, tail = &v->next;
        count++;
        comma = peek(p, ',');
        if (comma) p->i++;
    }
    /* "(x)" is x in parentheses, not a tuple; a one-element tuple needs its comma */
    if (!rc && open == '(' && count == 1 && !comma) {
        cj_node *inner = n->kids;
        n->kids = NULL;
        cj_free(n);
        n = inner;
    } else if (!rc && open == '{' && !count) {
        n->type = 'o';
    }
    p->depth--;
    if (rc) {
        cj_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

static int pvalue(pp *p, cj_node **out) {
    pws(p);
    if (p->i >= p->n) return 1;
    char c = p->s[p->i];
    if (c == '{' || c == '[' || c == '(') return pcontainer(p, out);
    if (c == '"' || c == '\'' || ((c == 'r' || c == 'R' || c == 'u' || c == 'U') && p->i + 1 < p->n &&
                                  (p->s[p->i + 1] == '"' || p->s[p->i + 1] == '\'')))
        return pstring(p, out);
    if (c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9')) return pnumber(p, out);
    static const struct { const char *w; char t; } words[] = {{"True", 't'}, {"False", 'f'}, {"None", 'z'}};
    for (size_t k = 0; k < 3; k++) {
        size_t l = strlen(words[k].w);
        if (p->n - p->i >= l && !memcmp(p->s + p->i, words[k].w, l) &&
            (p->i + l == p->n || !(p->s[p->i + l] == '_' || (unsigned)((p->s[p->i + l] | 0x20) - 'a') < 26u ||
                                   (unsigned)(p->s[p->i + l] - '0') < 10u))) {
            if (!(*out = node(words[k].t))) return mtok_err(MTOK_ERESOURCE, "out of memory");
            p->i += l;
            return 0;
        }
    }
    return 1;
}

static int ident(pp *p, size_t *st, size_t *len) {
    pws(p);
    *st = p->i;
    while (p->i < p->n) {
        char c = p->s[p->i];
        if (c == '_' || (unsigned)((c | 0x20) - 'a') < 26u || (p->i > *st && (unsigned)(c - '0') < 10u)) p->i++;
        else break;
    }
    *len = p->i - *st;
    return *len ? 0 : 1;
}

int cj_tool_call(const char *s, size_t n, cj_buf *out) {
    pp p = {s, n, 0, 0};
    size_t st, len;
    if (ident(&p, &st, &len) || len != 9 || memcmp(s + st, "tool_call", 9) || !peek(&p, '(')) return 1;
    p.i++;
    cj_node *obj = node('o'), **tail = obj ? &obj->kids : NULL;
    if (!obj) return mtok_err(MTOK_ERESOURCE, "out of memory");
    int rc = 0, comma = 1;
    while (!rc) {
        if (peek(&p, ')')) {
            p.i++;
            break;
        }
        if (!comma || ident(&p, &st, &len) || !peek(&p, '=')) { rc = 1; break; }
        p.i++;
        cj_node *k = node('s'), *v = NULL;
        if (!k || !(k->text = strndup(s + st, len))) {
            free(k);
            rc = mtok_err(MTOK_ERESOURCE, "out of memory");
            break;
        }
        k->len = len;
        for (cj_node *m = obj->kids; m && !rc; m = m->next)
            if (m->key->len == len && !memcmp(m->key->text, s + st, len)) rc = 1; /* a repeated keyword */
        if (rc || (rc = pvalue(&p, &v))) { cj_free(k); break; }
        v->key = k;
        *tail = v, tail = &v->next;
        comma = peek(&p, ',');
        if (comma) p.i++;
    }
    pws(&p);
    if (!rc && p.i != n) rc = 1; /* anything after the call */
    if (!rc) rc = cj_dump(obj, -1, out);
    cj_free(obj);
    return rc;
}
