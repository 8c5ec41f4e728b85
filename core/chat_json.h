/* chat_json.h — JSON as the GLM chat templates write it (core/chat_json.c), for core/chat.c only.
 *
 * THUDM's tokenizers and the HF template put tool definitions into the prompt as Python's
 * json.dumps(..., ensure_ascii=False, indent=4) writes them, after json.loads; a model's ChatGLM3 tool call
 * is a Python call whose keyword arguments are literals. Neither is what a JSON library writes (jansson
 * prints 0.1 as 0.10000000000000001, refuses integers above 2^63-1, escapes upper-case), so mtok keeps
 * its own small tree: every number keeps its source text, and the writer formats it as Python would. */
#ifndef MTOK_CHAT_JSON_H
#define MTOK_CHAT_JSON_H

#include <stddef.h>

/* growable NUL-terminated string */
typedef struct {
    char *s;
    size_t n, cap;
} cj_buf;
int cj_add(cj_buf *b, const char *s, size_t n);
int cj_str(cj_buf *b, const char *s);

typedef struct cj_node cj_node;
struct cj_node {
    char type;       /* 'o' object, 'a' array, 's' string, 'i' integer, 'r' real, 't' true, 'f' false, 'z' null */
    char *text;      /* 's': the decoded UTF-8 (may hold NUL: see len); 'i'/'r': the number's source text */
    size_t len;
    cj_node *kids;   /* 'o'/'a': first member/element */
    cj_node *next;   /* next sibling */
    cj_node *key;    /* an object member: its key (an 's' node) */
};

/* Parses JSON text as Python's json.loads does (NaN, Infinity, -Infinity included). Errors are
 * MTOK_EINPUT with "<what>: not valid JSON: <why> (line L, column C)". */
int cj_parse(const char *text, size_t len, const char *what, cj_node **out);
void cj_free(cj_node *n);
/* An object's value for key (the last of duplicates, as a dict keeps), or NULL. */
cj_node *cj_get(const cj_node *obj, const char *key);
/* 1 when n is a string equal to s. */
int cj_is(const cj_node *n, const char *s);
const char *cj_kind(const cj_node *n); /* "an object", "a string", ... for messages */

/* Appends n as Python's json.dumps(n, ensure_ascii=False, indent=indent) writes it (indent < 0: no
 * indent, the default ", " and ": " separators). Fails (MTOK_EINPUT) only on a string Python could not
 * encode as UTF-8 (a lone surrogate; the parsers refuse those already). */
int cj_dump(const cj_node *n, int indent, cj_buf *out);

/* ChatGLM3's tool call: "tool_call(name=literal, ...)" with Python literals (strings with escapes, ints,
 * floats, True/False/None, lists, tuples, dicts of them), never evaluated. Appends the keyword arguments as
 * json.dumps(kwargs, ensure_ascii=False) writes them. Returns 0, 1 when the text is not such a call, or a
 * negative error (memory). */
int cj_tool_call(const char *s, size_t n, cj_buf *out);

#endif
