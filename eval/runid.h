/* runid.h — the identity of a resumable run (mtok niah --resume, mtok eval --resume; docs/EVAL.md §3).
 *
 * A results file that a later run extends must come from the same run: the same model, KV policy and
 * the options that change what the model answers. The command fills a mev_runid with those values
 * (only it knows them: the model's fingerprint, the session's parameters), then claims the results
 * file before it runs. The identity lives in a sidecar, RESULTS.run.json (a flat JSON object, one
 * field per value), so the results file itself stays in the format other tools read (RULER's
 * evaluate.py, LongBench's eval.py). */
#ifndef MTOK_EVAL_RUNID_H
#define MTOK_EVAL_RUNID_H

#include <stddef.h>
#include <stdint.h>

#define MEV_RUNID_MAX 32
typedef struct {
    size_t n;
    struct {
        char name[32];
        char value[96];
    } f[MEV_RUNID_MAX]; /* in the order they were set */
} mev_runid;

/* Starts an identity for a command ("niah", "eval"). */
void mev_runid_init(mev_runid *id, const char *command);
/* Sets name (replacing an earlier value) to a printf-formatted value (cut at 95 bytes). MTOK_EUSAGE
 * when the table is full. */
int mev_runid_set(mev_runid *id, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Sets name to the XXH3-64 of a file's bytes ("xxh3:" and 16 hex digits); MTOK_EINPUT when the file
 * cannot be read. */
int mev_runid_set_file(mev_runid *id, const char *name, const char *path);

/* The values a session's results depend on, as the commands set them: a small struct rather than a
 * dozen mev_runid_set lines in each command. Zero means "the default" for every count. */
typedef struct {
    uint64_t model_fingerprint; /* mtok_model_fingerprint */
    const char *device;         /* "cpu" when NULL */
    int64_t ctx, chunk;         /* --ctx as given (0: sized by the command), --chunk */
    double rope_base;           /* --rope-base (0: the config's) */
    int kv_policy;              /* 0 exact, 1 window, 2 topk */
    int64_t kv_block, kv_topk, kv_sinks, kv_window;
    const char *decoding;       /* "greedy" when NULL; a sampled run names its settings here */
    int64_t max_new;            /* -n / --max-new (0: the per-task default) */
} mev_run_settings;
int mev_runid_settings(mev_runid *id, const mev_run_settings *s);

/* The sidecar's path for a results file: RESULTS.run.json (malloc'ed; NULL when out of memory). */
char *mev_runid_path(const char *results);

/* Claims results (a file that may not exist yet) for the run id names:
 *  - resume == 0: the run starts over; the sidecar is written (atomically) with this identity;
 *  - resume != 0 and a sidecar exists: its fields must equal id's, else MTOK_EINPUT with one line
 *    naming each difference ("model_fingerprint: recorded 0123..., this run 4567...") — nothing is
 *    changed, the caller exits 2;
 *  - resume != 0 and no sidecar: a results file that is missing or empty is claimed (sidecar written);
 *    one with content is refused (MTOK_EINPUT): nothing says which run made it.
 * A sidecar that is not a flat JSON object of strings is refused the same way. */
int mev_runid_claim(const mev_runid *id, const char *results, int resume);

#endif
