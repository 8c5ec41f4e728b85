/* jsonl.h — inside eval/ only: the line reader the jsonl readers of eval.h share, and the parsed
 * forms behind eval.h's opaque reader types. */
#ifndef MTOK_EVAL_JSONL_H
#define MTOK_EVAL_JSONL_H

#include <jansson.h>

#include "eval.h"

/* Lines of a file (streamed through a buffer that grows up to MEV_JSONL_MAX_LINE, so a file that is
 * one huge line is refused instead of read whole) or of a caller's buffer. */
typedef struct {
    const char *name;
    FILE *f;                  /* NULL: the buffer source */
    const char *src;          /* buffer source */
    size_t src_len, src_pos;
    char *b;                  /* file source: unread bytes are b[start, end); no '\n' in b[start, scan) */
    size_t cap, start, end, scan;
    int eof;
    int64_t lineno;
} mev_lines;

/* missing != NULL: a file that does not exist sets *missing = 1 and returns 0 (no lines). */
int mev_lines_open(mev_lines *L, const char *path, int *missing);
void mev_lines_buffer(mev_lines *L, const char *name, const void *buf, size_t len);
/* 1: the next line in s[0, *n) (without its '\n'; valid until the next call), *complete = 0 when
 * it is the last one and has no '\n' (a torn write); 0: no more lines; < 0: an error. */
int mev_lines_next(mev_lines *L, const char **s, size_t *n, int *complete);
void mev_lines_close(mev_lines *L);

/* One line as a JSON object: 1 with *o set, 0 for a blank line, -1 with the reason in why. */
int mev_json_line(const char *s, size_t n, json_t **o, char *why, size_t cap);
/* The first warnings about skipped lines one by one, then only a count (mev_warn_done). */
void mev_warn_line(int *count, const char *name, int64_t line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void mev_warn_done(int count, const char *name);
/* The MTOK_E* code an errno from opening or writing a user's path maps to (a missing directory or
 * a permission is bad input; a full disk is a resource). */
int mev_errno_code(int e);

/* A kept line of our own output: its bytes (as read), line number and parse. */
typedef struct {
    char *raw;
    size_t len;
    int64_t line;
    json_t *o;
} mev_kept;
/* Appends a copy of s[0, len) with its parse o (owned by *v from then on; not on an error). */
int mev_keep_line(mev_kept **v, size_t *n, size_t *cap, const char *s, size_t len, int64_t line, json_t *o);
/* Replaces path by the kept lines v[0..n) (each followed by '\n') through path.tmp, fsync and
 * rename, so a crash leaves the old file or the new one, never less. */
int mev_rewrite_lines(const char *path, const mev_kept *v, size_t n);

struct mev_eval_data {
    char *name;
    int kind;
    json_t *recs;       /* the records, file order (a folder: its files in RULER's task order) */
    int64_t *line;      /* [n] record i's line in its file */
    char **key;         /* [n] record i's id key: task \x1f index / _id, or task \x1f #line (may repeat:
                         * RULER's index is a character offset; --resume matches by line and content) */
    const char **task;  /* [n] record i's task: its "task" or "dataset", else its file's task */
    const char **file;  /* [n] the file record i came from */
    char *file_task;    /* the (first) file's task: its name without directory and .jsonl; for RULER's
                         * data layout TASK/validation.jsonl (or test.jsonl), TASK */
    char **owned;       /* file names and file tasks of a folder, freed with d */
    size_t n_owned;
    size_t n, cap;
    size_t *slot;       /* key hash table (open addressing): record index + 1, 0 empty */
    size_t n_slot;
};
/* The records (of data d) whose id key is key, one by one: *cursor starts at 0; returns a record index
 * or (size_t)-1 when there are no more. */
size_t mev_eval_data_find(const mev_eval_data *d, const char *key, size_t *cursor);
/* The record on line `line` of a single-file data set, or (size_t)-1. */
size_t mev_eval_data_at_line(const mev_eval_data *d, int64_t line);
/* The id key of a record at line `line` (caller frees); NULL when out of memory. */
char *mev_eval_key(json_t *o, int64_t line);
/* A short printable form of a key's id part for messages ("index 3", "_id \"x\"", "line 7"). */
void mev_eval_key_text(json_t *o, int64_t line, char *buf, size_t cap);

struct mev_eval_preds {
    char *name;
    mev_kept *kept;     /* the predictions kept, file order */
    size_t n, cap;
    size_t *of;         /* [data n]: kept index + 1 of record i's prediction, 0 none (data given) */
    size_t n_data;
    int missing;        /* the file does not exist */
    int rewrite;        /* lines were dropped (or the last one lacks '\n'): write the kept ones anew */
};

struct mev_niah_results {
    char *name;
    mev_kept *kept;
    size_t n, cap;
    size_t skipped;     /* lines that are not cells, ... */
    size_t torn;        /* ... of which a torn last line (0 or 1) */
    int missing, rewrite;
};

#endif
