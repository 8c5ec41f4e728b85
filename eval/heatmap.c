/* heatmap.c — the NIAH heatmap as a PNG (cairo): rows = needle depth (0 % at the top), columns =
 * context length, each cell coloured on the usual red -> yellow -> green scale of gkamradt's
 * notebook (#F0496E, #EBB839, #0CD79F) with its score printed in it, labelled axes, a title, a
 * subtitle and a colour bar. Missing cells are grey. */
#include <cairo.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "eval.h"

static void score_rgb(double s, double *r, double *g, double *b) {
    static const double stops[3][3] = {{0xF0, 0x49, 0x6E}, {0xEB, 0xB8, 0x39}, {0x0C, 0xD7, 0x9F}};
    if (s < 0) s = 0;
    if (s > 1) s = 1;
    int i = s < 0.5 ? 0 : 1;
    double f = s < 0.5 ? s / 0.5 : (s - 0.5) / 0.5;
    *r = (stops[i][0] + f * (stops[i + 1][0] - stops[i][0])) / 255.0;
    *g = (stops[i][1] + f * (stops[i + 1][1] - stops[i][1])) / 255.0;
    *b = (stops[i][2] + f * (stops[i + 1][2] - stops[i][2])) / 255.0;
}

static void fmt_len(int64_t n, char *buf, size_t cap) {
    if (n >= 1048576 && n % 1048576 == 0) snprintf(buf, cap, "%lldM", (long long)(n / 1048576));
    else if (n >= 1024 && n % 1024 == 0) snprintf(buf, cap, "%lldK", (long long)(n / 1024));
    else snprintf(buf, cap, "%lld", (long long)n);
}

static void text_at(cairo_t *cr, const char *s, double x, double y, double ax, double ay) {
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    cairo_move_to(cr, x - ax * e.width - e.x_bearing, y - ay * e.height - e.y_bearing);
    cairo_show_text(cr, s);
}

int mev_heatmap_png(const mev_heatmap *h, const char *path) {
    if (!h->n_lengths || !h->n_depths) return mtok_err(MTOK_EUSAGE, "heatmap: no cells");
    const double cw = h->n_lengths > 12 ? 56 : 72;
    double ch = h->n_depths > 12 ? 26 : 34;
    if (ch * (double)h->n_depths < 300) ch = 300 / (double)h->n_depths; /* room for the rotated y label */
    const double top = 84, right = 120, bottom = 84, grid_w = cw * (double)h->n_lengths;
    /* wide enough for the title; the grid is centred */
    const double W = 110 + grid_w + right < 760 ? 760 : 110 + grid_w + right;
    const double left = 110 + (W - (110 + grid_w + right)) / 2, H = top + ch * (double)h->n_depths + bottom;
    cairo_surface_t *sf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, (int)W, (int)H);
    cairo_t *cr = cairo_create(sf);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
    cairo_set_font_size(cr, 17);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    text_at(cr, h->title ? h->title : "Needle in a haystack", W / 2, 24, 0.5, 0.5);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, 12);
    if (h->subtitle) text_at(cr, h->subtitle, W / 2, 48, 0.5, 0.5);

    char buf[64];
    for (size_t a = 0; a < h->n_depths; a++) {
        for (size_t b = 0; b < h->n_lengths; b++) {
            double x = left + cw * (double)b, y = top + ch * (double)a, s = h->score[a * h->n_lengths + b], r, g, bl;
            if (isnan(s)) r = g = bl = 0.85;
            else score_rgb(s, &r, &g, &bl);
            cairo_set_source_rgb(cr, r, g, bl);
            cairo_rectangle(cr, x, y, cw, ch);
            cairo_fill(cr);
            cairo_set_source_rgb(cr, 1, 1, 1);
            cairo_set_line_width(cr, 1);
            cairo_rectangle(cr, x + 0.5, y + 0.5, cw - 1, ch - 1);
            cairo_stroke(cr);
            cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
            cairo_set_font_size(cr, 11);
            if (isnan(s)) snprintf(buf, sizeof buf, "-");
            else snprintf(buf, sizeof buf, "%.2f", s);
            text_at(cr, buf, x + cw / 2, y + ch / 2, 0.5, 0.5);
        }
        cairo_set_font_size(cr, 11);
        snprintf(buf, sizeof buf, "%g", h->depths[a]);
        text_at(cr, buf, left - 8, top + ch * ((double)a + 0.5), 1.0, 0.5);
    }
    for (size_t b = 0; b < h->n_lengths; b++) {
        fmt_len(h->lengths[b], buf, sizeof buf);
        text_at(cr, buf, left + cw * ((double)b + 0.5), top + ch * (double)h->n_depths + 14, 0.5, 0.5);
    }
    /* axis titles */
    cairo_set_font_size(cr, 13);
    text_at(cr, "Context length (tokens, chat template included)", left + cw * (double)h->n_lengths / 2,
            top + ch * (double)h->n_depths + 44, 0.5, 0.5);
    cairo_save(cr);
    cairo_translate(cr, left - 80, top + ch * (double)h->n_depths / 2);
    cairo_rotate(cr, -M_PI / 2);
    text_at(cr, "Needle depth (% of the document)", 0, 0, 0.5, 0.5);
    cairo_restore(cr);
    /* colour bar */
    const double bx = left + cw * (double)h->n_lengths + 36, bh = ch * (double)h->n_depths, bw = 18;
    for (int i = 0; i < 100; i++) {
        double r, g, bl;
        score_rgb(1.0 - i / 99.0, &r, &g, &bl);
        cairo_set_source_rgb(cr, r, g, bl);
        cairo_rectangle(cr, bx, top + bh * i / 100.0, bw, bh / 100.0 + 1);
        cairo_fill(cr);
    }
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    cairo_set_font_size(cr, 11);
    text_at(cr, "1.0", bx + bw + 6, top, 0.0, 0.5);
    text_at(cr, "0.5", bx + bw + 6, top + bh / 2, 0.0, 0.5);
    text_at(cr, "0.0", bx + bw + 6, top + bh, 0.0, 0.5);
    text_at(cr, "score", bx + bw / 2, top - 12, 0.5, 0.5);

    cairo_destroy(cr);
    cairo_surface_flush(sf);
    cairo_status_t st = cairo_surface_write_to_png(sf, path);
    cairo_surface_destroy(sf);
    if (st != CAIRO_STATUS_SUCCESS)
        return mtok_err(MTOK_ERESOURCE, "%s: cannot write the heatmap: %s", path, cairo_status_to_string(st));
    return 0;
}

/* cairo's text API loads fontconfig, whose caches live until exit; a process that wants a clean leak
 * report (the CLI, the sanitizer builds) releases them here. FcFini is looked up at run time because
 * libmtok links only cairo (which loaded fontconfig). Call once, after the last heatmap. */
void mev_graphics_cleanup(void) {
    cairo_debug_reset_static_data();
    void (*fc_fini)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "FcFini");
    if (fc_fini) fc_fini();
}
