/* niah_report.c — the report of a needle-in-a-haystack grid (mtok niah, eval/niah.c): the score
 * table on stdout and the heatmaps, rebuilt from the whole results.jsonl so that a resumed or
 * interrupted run reports every cell it holds. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"
#include "niah_int.h"

char *mev_niah_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* ---- report: table + heatmaps from results.jsonl ---------------------------------------------- */
static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}
static int cmp_f64(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int mev_niah_report(const char *out_dir, const char *title, FILE *table) {
    char *res_path = mev_niah_path(out_dir, "results.jsonl");
    if (!res_path) return mtok_err(MTOK_ERESOURCE, "out of memory");
    mev_niah_results *R = NULL;
    int rc = mev_niah_results_read(res_path, &R);
    if (!rc && R->missing) rc = mtok_err(MTOK_EINPUT, "%s: %s", res_path, strerror(ENOENT));
    if (rc) {
        mev_niah_results_free(R);
        free(res_path);
        return rc;
    }
    size_t n = R->n;
    int64_t *lens = malloc((n + 1) * sizeof *lens);
    double *deps = malloc((n + 1) * sizeof *deps), *score = NULL, *cnt = NULL;
    size_t nl = 0, nd = 0;
    if (!lens || !deps) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
    for (int v = 0; v < MEV_N_VARIANTS && !rc; v++) {
        const char *vname = mev_variant_name((mev_variant)v);
        nl = nd = 0;
        for (size_t i = 0; i < n; i++) {
            json_t *o = R->kept[i].o;
            const char *vv = json_string_value(json_object_get(o, "variant"));
            if (!vv || strcmp(vv, vname)) continue;
            int64_t L = json_integer_value(json_object_get(o, "length"));
            double D = json_number_value(json_object_get(o, "depth"));
            size_t k;
            for (k = 0; k < nl && lens[k] != L; k++) {}
            if (k == nl) lens[nl++] = L;
            for (k = 0; k < nd && fabs(deps[k] - D) > 1e-9; k++) {}
            if (k == nd) deps[nd++] = D;
            /* a heatmap (and this quadratic search) has room for a grid, not for any file: cairo's
             * images end at 32767 pixels a side, and 64K cells is 100x the largest grid in the docs */
            if (nl > 512 || nd > 1024 || nl * nd > 65536) {
                rc = mtok_err(MTOK_EINPUT, "%s:%lld: more than %s in variant %s: too many for a heatmap", res_path,
                              (long long)R->kept[i].line, nl > 512 ? "512 distinct lengths" : nd > 1024 ?
                              "1024 distinct depths" : "65536 cells", vname);
                break;
            }
        }
        if (rc) break;
        if (!nl) continue;
        qsort(lens, nl, sizeof *lens, cmp_i64);
        qsort(deps, nd, sizeof *deps, cmp_f64);
        free(score), free(cnt);
        score = calloc(nl * nd, sizeof *score);
        cnt = calloc(nl * nd, sizeof *cnt);
        if (!score || !cnt) {
            rc = mtok_err(MTOK_ERESOURCE, "out of memory");
            break;
        }
        double total = 0, spilled_max = 0;
        size_t cells = 0;
        for (size_t i = 0; i < n; i++) {
            json_t *o = R->kept[i].o;
            const char *vv = json_string_value(json_object_get(o, "variant"));
            if (!vv || strcmp(vv, vname)) continue;
            int64_t L = json_integer_value(json_object_get(o, "length"));
            double D = json_number_value(json_object_get(o, "depth"));
            size_t a, b;
            for (a = 0; a + 1 < nd && deps[a] != D && fabs(deps[a] - D) > 1e-9; a++) {}
            for (b = 0; b + 1 < nl && lens[b] != L; b++) {}
            double sc = json_number_value(json_object_get(o, "score"));
            score[a * nl + b] += sc;
            cnt[a * nl + b] += 1;
            total += sc;
            cells++;
            double sp = (double)json_integer_value(json_object_get(o, "bytes_spilled"));
            if (sp > spilled_max) spilled_max = sp;
        }
        for (size_t i = 0; i < nl * nd; i++) score[i] = cnt[i] > 0 ? score[i] / cnt[i] : NAN;
        if (table) {
            fprintf(table, "niah %s: mean score %.3f over %zu cells (rows: depth %%, columns: length in tokens)\n",
                    vname, cells ? total / (double)cells : 0.0, cells);
            fprintf(table, "%8s", "depth");
            for (size_t b = 0; b < nl; b++) fprintf(table, " %8lld", (long long)lens[b]);
            fputc('\n', table);
            for (size_t a = 0; a < nd; a++) {
                fprintf(table, "%7g%%", deps[a]);
                for (size_t b = 0; b < nl; b++) {
                    double sc = score[a * nl + b];
                    if (isnan(sc)) fprintf(table, " %8s", "-");
                    else fprintf(table, " %8.2f", sc);
                }
                fputc('\n', table);
            }
        }
        char name[64], ttl[256], sub[256];
        /* heatmap.png shows the first variant present; every variant also gets its own file */
        int first = 1;
        for (int w = 0; w < v; w++) {
            for (size_t i = 0; i < n && first; i++) {
                const char *vv = json_string_value(json_object_get(R->kept[i].o, "variant"));
                if (vv && !strcmp(vv, mev_variant_name((mev_variant)w))) first = 0;
            }
        }
        snprintf(ttl, sizeof ttl, "%s", title ? title : "Needle in a haystack: fact retrieval across context lengths");
        snprintf(sub, sizeof sub, "variant %s - mean score %.3f over %zu cells%s", vname,
                 cells ? total / (double)cells : 0.0, cells, spilled_max > 0 ? " - KV spilled to disk" : "");
        mev_heatmap hm = {lens, nl, deps, nd, score, ttl, sub};
        snprintf(name, sizeof name, "heatmap-%s.png", vname);
        char *hp = mev_niah_path(out_dir, first ? "heatmap.png" : name);
        if (!hp) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
        if (!rc) rc = mev_heatmap_png(&hm, hp);
        if (!rc && table) fprintf(table, "heatmap: %s\n", hp);
        free(hp);
        if (!rc && first) {
            hp = mev_niah_path(out_dir, name);
            if (!hp) rc = mtok_err(MTOK_ERESOURCE, "out of memory");
            if (!rc) rc = mev_heatmap_png(&hm, hp);
            free(hp);
        }
    }
    free(score), free(cnt), free(lens), free(deps);
    mev_niah_results_free(R);
    free(res_path);
    return rc;
}
