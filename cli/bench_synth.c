/* bench_synth.c — `mtok bench --preset NAME`: a synthetic checkpoint (mtok synth's library) made on the
 * spot for one bench run and removed afterwards (cli/bench.h). Used by both benches, the CPU one
 * (cli/cmd_bench.c) and the CUDA one (cli/cmd_bench_cuda.c).
 *
 * The 9B presets are ~19 GB: synth generates them on every core (counter-based values, written in
 * 4 MB pieces), so the disk is what bounds it; /dev/shm (RAM) is taken first where it has room. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "../synth/mtok_synth.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The size the preset's description states ("(~18.8 GB)"), or 0 when it states none. */
static double preset_bytes(const char *name) {
    const char *list = mtok_synth_presets();
    const size_t n = strlen(name);
    for (const char *line = list; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, name, n) || strncmp(line + n, "  ", 2)) continue;
        const char *eol = strchr(line, '\n'), *t = strstr(line, "(~");
        double v;
        char unit[3] = {0};
        if (!t || (eol && t > eol) || sscanf(t, "(~%lf %2s", &v, unit) != 2) return 0;
        return v * (!strcmp(unit, "GB") ? 1e9 : !strcmp(unit, "MB") ? 1e6 : 0);
    }
    return 0;
}

static double free_bytes(const char *dir) {
    struct statvfs st;
    return dir && *dir && statvfs(dir, &st) == 0 ? (double)st.f_bavail * (double)st.f_frsize : -1;
}

/* Files of the synthesized checkpoint, for removal from a signal handler (unlink and rmdir are
 * async-signal-safe; readdir is not, so the names are listed once synth is done). */
#define BENCH_MAX_FILES 64
static char g_files[BENCH_MAX_FILES][4400];
static int g_n_files;
static char g_dir[4096];
static int g_keep;

static void remove_synth(void) {
    for (int i = 0; i < g_n_files; i++) unlink(g_files[i]);
    if (g_dir[0]) rmdir(g_dir);
}

static void on_signal(int sig) {
    remove_synth();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Lists dir's files into g_files (all of them, also when synth failed halfway). */
static void list_synth_files(const char *dir) {
    g_n_files = 0;
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d)) && g_n_files < BENCH_MAX_FILES;)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            snprintf(g_files[g_n_files++], sizeof g_files[0], "%s/%s", dir, e->d_name);
    closedir(d);
}

int bench_synth(const bench_synth_opts *o, char *out, size_t cap, double *seconds) {
    const double need = preset_bytes(o->preset);
    const char *cands[] = {o->dir, "/dev/shm", getenv("TMPDIR"), "/var/tmp", "/tmp"};
    const char *base = NULL;
    out[0] = 0;
    *seconds = 0;
    for (size_t i = o->dir ? 0 : 1; i < (o->dir ? 1 : sizeof cands / sizeof *cands) && !base; i++) {
        const double fr = free_bytes(cands[i]);
        /* 10% and 512 MB to spare: a full tmpfs takes RAM from everything else */
        if (fr >= 0 && (need <= 0 || fr >= need * 1.1 + 512e6)) base = cands[i];
        else if (o->dir)
            return mtok_err(MTOK_ERESOURCE, "bench --preset %s: %s has %.1f GB free, the checkpoint needs about %.1f GB",
                            o->preset, o->dir, fr / 1e9, need * 1.1 / 1e9);
    }
    if (!base)
        return mtok_err(MTOK_ERESOURCE, "bench --preset %s: no directory with %.1f GB free among /dev/shm, $TMPDIR, "
                        "/var/tmp and /tmp: pass --synth-dir DIR", o->preset, need * 1.1 / 1e9);
    snprintf(g_dir, sizeof g_dir, "%s/mtok-bench-XXXXXX", base);
    if (!mkdtemp(g_dir)) {
        const int err = errno;
        g_dir[0] = 0;
        return mtok_err(MTOK_ERESOURCE, "bench --preset: cannot make a directory in %s: %s", base, strerror(err));
    }
    g_keep = o->keep;
    snprintf(out, cap, "%s", g_dir);
    const double t0 = now_s();
    const mtok_synth_params sp = {.preset = o->preset, .out_dir = g_dir, .naming = o->naming, .seed = 1,
                                  .dtype = MTOK_BF16};
    const int rc = mtok_synth(&sp);
    list_synth_files(g_dir);
    if (!g_keep) {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
    *seconds = now_s() - t0;
    return rc;
}

int bench_synth_opt(bench_synth_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    if (!strcmp(a, "--keep-synth")) {
        o->keep = 1;
        return 1;
    }
    if (strcmp(a, "--preset") && strcmp(a, "--synth-dir") && strcmp(a, "--naming")) return 0;
    if (!(v = cli_value(argc, argv, i))) return -1;
    if (!strcmp(a, "--preset")) o->preset = v;
    else if (!strcmp(a, "--synth-dir")) o->dir = v;
    else if (!strcmp(v, "chatglm") || !strcmp(v, "hf")) o->naming = !strcmp(v, "hf") ? MTOK_NAMING_HF : MTOK_NAMING_CHATGLM;
    else return cli_usage_error("--naming must be chatglm or hf"), -1;
    return 1;
}

void bench_synth_remove(void) {
    if (g_dir[0] && !g_keep) {
        list_synth_files(g_dir); /* what is there now */
        remove_synth();
    }
    g_dir[0] = 0;
    g_n_files = 0;
}
