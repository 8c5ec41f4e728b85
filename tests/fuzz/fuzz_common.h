/* fuzz_common.h — what the libFuzzer targets of tests/fuzz share (docs/FUZZING.md).
 *
 * Most mtok parsers take a path, not a buffer, because the user hands mtok files: each target writes
 * the fuzz input to a file in a private working directory (one per process, under /dev/shm when it
 * is writable, else $TMPDIR or /tmp; reused for every input, removed at exit) and calls the loader on
 * it. Fixtures (small checkpoints and a tokenizer that the targets build directories from) are read
 * from tests/fuzz/fixtures, found through the source path compiled in. Harness failures (a fixture
 * missing, the working directory not writable) abort: they are bugs of the harness, not findings. */
#ifndef MTOK_FUZZ_COMMON_H
#define MTOK_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "mtok.h"

/* The private working directory; created (and HOME, XDG_CACHE_HOME pointed into it, so that nothing a
 * loader caches lands in the user's home) on the first call. */
const char *fz_workdir(void);
/* workdir/rel, malloc'ed. */
char *fz_work(const char *rel);
/* tests/fuzz/fixtures/rel, malloc'ed. */
char *fz_fixture(const char *rel);
/* Creates workdir/rel as a directory (and its parents). */
void fz_mkdir(const char *rel);
/* Replaces the file at path by the n bytes at p (truncating it). */
void fz_write(const char *path, const void *p, size_t n);
/* Copies a whole file (a fixture into the working directory). */
void fz_copy(const char *src, const char *dst);
/* Reads a whole file into a malloc'ed, NUL-terminated buffer; *n gets its length. */
char *fz_read(const char *path, size_t *n);
/* A malloc'ed NUL-terminated copy of the input (for parsers that take C strings). */
char *fz_cstr(const uint8_t *data, size_t n);

/* Uses a tokenizer the way mtok does after loading one: every id's bytes and its streaming decode,
 * the encoding of a fixed sample and of up to 512 bytes of text (with and without specials), and the
 * decoding of the ids that came out. Returns nothing: only crashes and sanitizer reports matter. */
void fz_exercise_tokenizer(const mtok_tokenizer *t, const uint8_t *text, size_t n);

#endif
