/* cmd_check.c — mtok check -m DIR [--threads N]: is this checkpoint usable? config.json, every
 * header, dtype and shape (the loader: exit 2 with its one line at the first problem), then every
 * tensor's values (core/check.c): one line per tensor holding NaN or Inf, exit 2 if any did, else
 * "ok: N tensors, B bytes, all finite". */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void report(const mtok_tensor_check *t, void *user) {
    (void)user;
    char at[96];
    if (t->cols > 0)
        snprintf(at, sizeof at, "element %lld (row %lld, column %lld)", (long long)t->first_bad,
                 (long long)(t->first_bad / t->cols), (long long)(t->first_bad % t->cols));
    else
        snprintf(at, sizeof at, "element %lld", (long long)t->first_bad);
    printf("%s: tensor %s (%s, %llu elements): %llu NaN, %llu Inf, first at %s\n", t->file, t->name,
           mtok_dtype_name(t->dtype), (unsigned long long)t->n_elems, (unsigned long long)t->n_nan,
           (unsigned long long)t->n_inf, at);
}

int cmd_check(int argc, char **argv) {
    cli_common o;
    cli_common_defaults(&o);
    for (int i = 1; i < argc; i++) {
        int r = cli_common_opt(&o, argc, argv, &i);
        if (r < 0) return 1;
        if (!r) return cli_usage_error("check: unknown option '%s'", argv[i]);
    }
    if (!o.model) return cli_usage_error("check needs -m DIR (a checkpoint directory)");
    mtok_model *m = NULL;
    mtok_load_params lp = {.rope_base = o.rope_base};
    int rc = mtok_model_load(o.model, &lp, &m);
    if (rc) return cli_fail(rc);
    mtok_check_summary sum;
    /* two threads keep a disk-bound scan fed without taking the machine (--threads to change) */
    rc = mtok_model_check(m, o.threads > 0 ? o.threads : 2, cli_progress_interval(&o), report, NULL, &sum);
    mtok_model_free(m);
    if (rc) return cli_fail(rc);
    fflush(stdout);
    if (sum.n_bad)
        return cli_fail(mtok_err(MTOK_EINPUT, "%s: %llu of %llu tensors hold NaN or Inf (listed above)", o.model,
                                 (unsigned long long)sum.n_bad, (unsigned long long)sum.n_tensors));
    printf("ok: %llu tensors, %llu bytes, all finite\n", (unsigned long long)sum.n_tensors,
           (unsigned long long)sum.bytes);
    return 0;
}
