/* bench.h — what the parts of `mtok bench` share: cli/cmd_bench.c (the CPU bench, limits, kv and the
 * dispatch), cli/cmd_bench_cuda.c (--device cuda) and cli/bench_synth.c (--preset: a checkpoint
 * synthesized on the spot for the run). */
#ifndef MTOK_CLI_BENCH_H
#define MTOK_CLI_BENCH_H

#include <stddef.h>

#include "mtok.h"

/* mtok bench --device cuda[:N] ... (argv as cmd_bench got it). */
int cmd_bench_cuda(int argc, char **argv);

/* --preset NAME [--synth-dir DIR] [--naming chatglm|hf] [--keep-synth]: a synthetic checkpoint (mtok
 * synth's library) made for the run in a new directory under dir, else under the first of /dev/shm,
 * $TMPDIR, /var/tmp, /tmp with the size the preset states plus 10% free. */
typedef struct {
    const char *preset, *dir;
    mtok_naming naming;
    int keep; /* 1: bench_synth_remove leaves it */
} bench_synth_opts;
/* The directory's path goes to out (set as soon as it exists, also when synth then fails), the time
 * taken to *seconds. Until bench_synth_remove, SIGINT and SIGTERM remove the written checkpoint. */
int bench_synth(const bench_synth_opts *o, char *out, size_t cap, double *seconds);
/* Parses argv[*i] if it is one of the four options above (advancing *i past a value): 1 when it was,
 * 0 when not, -1 after a usage message. */
int bench_synth_opt(bench_synth_opts *o, int argc, char **argv, int *i);
/* Removes the checkpoint bench_synth made (unless keep); nothing when there is none. */
void bench_synth_remove(void);

#endif
