/* mtok_base.h — the bottom layer every module includes: error codes and the thread's last error
 * message, logging, storage dtypes, checked size arithmetic. It depends on nothing else in mtok;
 * kernels/, kvstore/ and parallel/ include this instead of the public core/mtok.h, which includes
 * it in turn (so the public API is unchanged). Layer order: README.md, "Layout". */
#ifndef MTOK_BASE_H
#define MTOK_BASE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes; the CLI maps them to exit codes 1 (usage), 2 (bad input), 3 (resource). */
enum {
    MTOK_OK = 0,
    MTOK_EUSAGE = -1,    /* bad arguments */
    MTOK_EINPUT = -2,    /* bad model, data or file contents */
    MTOK_ERESOURCE = -3, /* memory, disk, device */
    MTOK_EINTERNAL = -4,
};
const char *mtok_errmsg(void);
/* Records a message (printf-style) and returns code, so callers write `return mtok_err(MTOK_EINPUT, ...)`. */
int mtok_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logging: messages at or below the level go to stderr. 0 = errors only, 1 = info, 2 = debug. */
void mtok_set_log_level(int level);
void mtok_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef enum { MTOK_BF16 = 0, MTOK_F16 = 1, MTOK_F32 = 2 } mtok_dtype;
/* Where bytes live: host RAM (the CPU may dereference the pointer) or an accelerator's memory (only
 * its backend, a device-aware collective or a KV tier of that space may). One notion for tensors
 * (core/backend.h) and KV blocks (kvstore/kvstore.h). */
typedef enum { MTOK_MEM_HOST = 0, MTOK_MEM_DEVICE = 1 } mtok_mem;
size_t mtok_dtype_size(mtok_dtype t);
const char *mtok_dtype_name(mtok_dtype t);

/* Sizes: *out = a * b or a + b; 1 (and *out unspecified) when the result does not fit, so callers
 * refuse sizes that would wrap before allocating (kvstore/kvstore.c, kvstore/kvfile.c do the same
 * with the builtins directly). */
static inline int mtok_size_mul(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline int mtok_size_add(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }

#ifdef __cplusplus
}
#endif
#endif
