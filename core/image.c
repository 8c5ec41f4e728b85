/* image.c — PNG (libpng) and JPEG (libjpeg-turbo) to 8-bit RGB, Pillow's bicubic resize, CLIP
 * normalisation (core/image.h; the facts behind each step: docs/VISION.md).
 *
 * The reference is PIL: GLM-4V's processor opens the file with PIL, converts it to RGB, resizes it
 * with Image.BICUBIC and normalises. The mode conversions here reproduce PIL's convert("RGB") for
 * every PNG and JPEG mode it produces, and the resizer reproduces Pillow's 8-bit resampler
 * (the coefficient rounding and the 8-bit intermediate image included), so the result equals PIL's
 * byte for byte; tests/test_image_preprocess.py checks it against Pillow. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h> /* JWRN_JPEG_EOF */
#include <png.h>

#include "image.h"

const float MTOK_CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float MTOK_CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

void mtok_image_free(mtok_image *im) {
    if (!im) return;
    free(im->rgb);
    im->rgb = NULL;
    im->w = im->h = 0;
}

/* Width and height from a file header, checked before anything is allocated for pixels. */
static int check_dims(const char *name, const char *kind, int64_t w, int64_t h) {
    if (w <= 0 || h <= 0) return mtok_err(MTOK_EINPUT, "%s: %s image has no pixels (%lld x %lld)", name, kind,
                                          (long long)w, (long long)h);
    if (w > MTOK_IMAGE_MAX_PIXELS || h > MTOK_IMAGE_MAX_PIXELS || w * h > MTOK_IMAGE_MAX_PIXELS)
        return mtok_err(MTOK_EINPUT, "%s: %s image is %lld x %lld pixels, more than the limit of %lld pixels",
                        name, kind, (long long)w, (long long)h, (long long)MTOK_IMAGE_MAX_PIXELS);
    return 0;
}

static int alloc_rgb(mtok_image *im, int64_t w, int64_t h) {
    im->w = w;
    im->h = h;
    im->rgb = malloc((size_t)w * (size_t)h * 3);
    return im->rgb ? 0 : mtok_err(MTOK_ERESOURCE, "out of memory for a %lld x %lld image", (long long)w, (long long)h);
}

/* ---- PNG ---- */

/* libpng reports errors through a longjmp; the context keeps the message and the input cursor. */
typedef struct {
    const uint8_t *data;
    size_t len, off;
    int truncated;
    char msg[200];
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    mtok_log(2, "libpng: %s", msg);
}

static void png_read_mem(png_structp png, png_bytep dst, size_t n) {
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->off) {
        c->truncated = 1;
        png_error(png, "truncated");
    }
    memcpy(dst, c->data + c->off, n);
    c->off += n;
}

/* One row of libpng's output (after the transforms chosen below) to RGB. */
static void png_row_to_rgb(const uint8_t *src, uint8_t *dst, int64_t w, int channels, int depth16) {
    for (int64_t x = 0; x < w; x++) {
        uint8_t *o = dst + x * 3;
        if (channels <= 2) {
            /* grey or grey+alpha: replicate, drop alpha; 16-bit grey (kept 16-bit only without
             * alpha) clips to 255 as PIL's I;16 -> RGB does */
            uint8_t g;
            if (depth16) {
                unsigned v = (unsigned)src[x * 2] << 8 | src[x * 2 + 1];
                g = v > 255 ? 255 : (uint8_t)v;
            } else {
                g = src[x * channels];
            }
            o[0] = o[1] = o[2] = g;
        } else {
            memcpy(o, src + x * channels, 3); /* RGB, or RGBA with alpha dropped */
        }
    }
}

/* Everything that may be live across the longjmp is a field here or volatile. */
static int decode_png(const uint8_t *data, size_t len, const char *name, mtok_image *out) {
    /* the size first, from IHDR's bytes (always the first chunk): an oversized image is refused with
     * the one message below whatever follows the header */
    if (len >= 24 && !memcmp(data + 12, "IHDR", 4)) {
        const int64_t w = (int64_t)data[16] << 24 | data[17] << 16 | data[18] << 8 | data[19];
        const int64_t h = (int64_t)data[20] << 24 | data[21] << 16 | data[22] << 8 | data[23];
        int rc = check_dims(name, "PNG", w, h);
        if (rc) return rc;
    }
    png_ctx c = {.data = data, .len = len};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint8_t *volatile buf = NULL;
    png_bytep *volatile rows = NULL;
    volatile int rc = 0;
    mtok_image im = {0};
    if (!png || !info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        return mtok_err(MTOK_ERESOURCE, "%s: out of memory starting libpng", name);
    }
    if (setjmp(png_jmpbuf(png))) {
        rc = c.truncated ? mtok_err(MTOK_EINPUT, "%s: truncated PNG (the file ends after %zu bytes)", name, c.len)
                         : mtok_err(MTOK_EINPUT, "%s: corrupt PNG: %s", name, c.msg);
        goto done;
    }
    png_set_read_fn(png, &c, png_read_mem);
    /* libpng's own limit (1e6 per side by default) would fail IHDR with a message of its own: lifted
     * to PNG's maximum, so that check_dims gives the one message for every oversized image */
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if ((rc = check_dims(name, "PNG", w, h))) goto done;
    const int grey16 = depth == 16 && ctype == PNG_COLOR_TYPE_GRAY;
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16 && !grey16) png_set_strip_16(png); /* high byte, as PIL's ";16B" raw modes */
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const int channels = png_get_channels(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    if (channels < 1 || channels > 4 || rowbytes < (size_t)w * (size_t)channels * (grey16 ? 2 : 1)) {
        rc = mtok_err(MTOK_EINPUT, "%s: unsupported PNG layout (%d channels, %zu bytes per row)", name, channels,
                      rowbytes);
        goto done;
    }
    /* the whole image at once: interlaced PNGs are filled in over seven passes */
    if (!(buf = malloc(rowbytes * h)) || !(rows = malloc(h * sizeof *rows))) {
        rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory for a %u x %u PNG", name, w, h);
        goto done;
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = buf + (size_t)y * rowbytes;
    png_read_image(png, rows);
    png_read_end(png, NULL); /* checks the remaining chunks' CRCs, as a complete read should */
    if ((rc = alloc_rgb(&im, w, h))) goto done;
    for (png_uint_32 y = 0; y < h; y++) png_row_to_rgb(rows[y], im.rgb + (size_t)y * w * 3, w, channels, grey16);
    *out = im;
    im.rgb = NULL;
done:
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    free(buf);
    mtok_image_free(&im);
    return rc;
}

/* ---- JPEG ---- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
    int truncated;
    char msg[JMSG_LENGTH_MAX];
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr ci) {
    jpeg_ctx *c = (jpeg_ctx *)ci->err;
    ci->err->format_message(ci, c->msg);
    longjmp(c->jmp, 1);
}

/* Warnings: libjpeg pads a file that ends early with a fake EOI and carries on; PIL reports such a
 * file as truncated, and so does this. Other warnings (extraneous bytes and the like) are logged and
 * decoding goes on, as in PIL. */
static void jpeg_on_message(j_common_ptr ci, int level) {
    jpeg_ctx *c = (jpeg_ctx *)ci->err;
    if (level >= 0) return; /* trace messages */
    if (ci->err->msg_code == JWRN_JPEG_EOF) {
        c->truncated = 1;
        longjmp(c->jmp, 1);
    }
    char m[JMSG_LENGTH_MAX];
    ci->err->format_message(ci, m);
    mtok_log(2, "libjpeg: %s", m);
}

static int decode_jpeg(const uint8_t *data, size_t len, const char *name, mtok_image *out) {
    struct jpeg_decompress_struct ci;
    jpeg_ctx c = {0};
    /* set between setjmp and a possible longjmp: volatile */
    uint8_t *volatile row = NULL, *volatile pix = NULL;
    volatile int rc = 0;
    ci.err = jpeg_std_error(&c.pub);
    c.pub.error_exit = jpeg_on_error;
    c.pub.emit_message = jpeg_on_message;
    if (setjmp(c.jmp)) {
        rc = c.truncated ? mtok_err(MTOK_EINPUT, "%s: truncated JPEG (the file ends after %zu bytes)", name, len)
                         : mtok_err(MTOK_EINPUT, "%s: corrupt JPEG: %s", name, c.msg);
        goto done;
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, data, (unsigned long)len);
    jpeg_read_header(&ci, TRUE);
    if ((rc = check_dims(name, "JPEG", ci.image_width, ci.image_height))) goto done;
    int grey = 0;
    switch (ci.jpeg_color_space) {
    case JCS_GRAYSCALE: grey = 1; ci.out_color_space = JCS_GRAYSCALE; break;
    case JCS_YCbCr:
    case JCS_RGB: ci.out_color_space = JCS_RGB; break;
    default:
        rc = mtok_err(MTOK_EINPUT, "%s: unsupported JPEG colour space (%s; only greyscale, YCbCr and RGB)", name,
                      ci.jpeg_color_space == JCS_CMYK ? "CMYK" : ci.jpeg_color_space == JCS_YCCK ? "YCCK" : "unknown");
        goto done;
    }
    /* PIL's decoder settings: libjpeg's defaults (islow IDCT, fancy upsampling), no scaling */
    jpeg_start_decompress(&ci);
    if (ci.output_components != (grey ? 1 : 3)) {
        rc = mtok_err(MTOK_EINPUT, "%s: unsupported JPEG (%d output components)", name, ci.output_components);
        goto done;
    }
    const int64_t w = ci.output_width, h = ci.output_height;
    if (!(pix = malloc((size_t)w * (size_t)h * 3)) || (grey && !(row = malloc((size_t)w)))) {
        rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory", name);
        goto done;
    }
    while (ci.output_scanline < ci.output_height) {
        uint8_t *dst = pix + (size_t)ci.output_scanline * (size_t)w * 3;
        JSAMPROW r = grey ? row : dst;
        if (jpeg_read_scanlines(&ci, &r, 1) != 1) {
            rc = mtok_err(MTOK_EINPUT, "%s: corrupt JPEG: no data for row %u", name, ci.output_scanline);
            goto done;
        }
        if (grey)
            for (int64_t x = 0; x < w; x++) dst[x * 3] = dst[x * 3 + 1] = dst[x * 3 + 2] = row[x];
    }
    jpeg_finish_decompress(&ci);
    *out = (mtok_image){.w = w, .h = h, .rgb = pix};
    pix = NULL;
done:
    jpeg_destroy_decompress(&ci);
    free(row);
    free(pix);
    return rc;
}

/* ---- files ---- */

int mtok_image_decode(const void *data, size_t len, const char *name, mtok_image *out) {
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *d = data;
    *out = (mtok_image){0};
    if (len == 0) return mtok_err(MTOK_EINPUT, "%s: empty file, not an image", name);
    if (len >= 8 && !memcmp(d, png_sig, 8)) return decode_png(d, len, name, out);
    if (len >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff) return decode_jpeg(d, len, name, out);
    if (len >= 6 && (!memcmp(d, "GIF87a", 6) || !memcmp(d, "GIF89a", 6)))
        return mtok_err(MTOK_EINPUT, "%s: GIF images are not supported (PNG or JPEG)", name);
    if (len >= 12 && !memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4))
        return mtok_err(MTOK_EINPUT, "%s: WebP images are not supported (PNG or JPEG)", name);
    if (len >= 2 && d[0] == 'B' && d[1] == 'M')
        return mtok_err(MTOK_EINPUT, "%s: BMP images are not supported (PNG or JPEG)", name);
    return mtok_err(MTOK_EINPUT, "%s: not a PNG or JPEG image (unrecognised first bytes)", name);
}

int mtok_image_load(const char *path, mtok_image *out) {
    *out = (mtok_image){0};
    FILE *f = fopen(path, "rb");
    if (!f) return mtok_err(MTOK_EINPUT, "%s: cannot open image (%s)", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (len == cap) {
            if (cap >= MTOK_IMAGE_MAX_FILE_BYTES) {
                rc = mtok_err(MTOK_EINPUT, "%s: larger than %zu MiB; refused as an image", path,
                              MTOK_IMAGE_MAX_FILE_BYTES >> 20);
                break;
            }
            size_t ncap = cap ? cap * 2 : (size_t)1 << 16;
            if (ncap > MTOK_IMAGE_MAX_FILE_BYTES) ncap = MTOK_IMAGE_MAX_FILE_BYTES;
            uint8_t *nb = realloc(buf, ncap + 1); /* +1: a file of exactly the limit is told from a larger one */
            if (!nb) {
                rc = mtok_err(MTOK_ERESOURCE, "%s: out of memory reading the image", path);
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) rc = mtok_err(MTOK_EINPUT, "%s: read error (%s)", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!rc) rc = mtok_image_decode(buf, len, path, out);
    free(buf);
    return rc;
}

/* ---- Pillow's bicubic resize ----
 * Per output pixel xx of an axis scaled in -> out (scale = in / out, the filter widened by
 * fs = max(scale, 1) so a downscale averages over all the pixels it covers):
 *   center = (xx + 0.5) * scale, support = 2 * fs,
 *   taps x in [xmin, xmin + n): xmin = trunc(center - support + 0.5) clamped to 0,
 *   xmax = trunc(center + support + 0.5) clamped to in, weights cubic((x - center + 0.5) / fs)
 *   (a = -0.5) normalised to sum 1 in double, then rounded to integers of 22 fractional bits.
 * A pass adds 2^21 (rounding) to the integer dot product and keeps bits 22..29, clamped to 0..255.
 * The horizontal pass runs first, over the input rows the vertical pass will read, into an 8-bit
 * image; the vertical pass reads that. An axis whose size does not change gets no pass. */

#define RS_BITS 22 /* Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2 */

typedef struct {
    int64_t taps;   /* coefficients per output pixel (the widest window) */
    int64_t *xmin;  /* [out] first input pixel */
    int64_t *n;     /* [out] input pixels used */
    int32_t *k;     /* [out][taps] fixed-point weights */
} rs_axis;

static double cubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static void rs_axis_free(rs_axis *ax) {
    free(ax->xmin);
    free(ax->n);
    free(ax->k);
}

static int rs_axis_make(int64_t in, int64_t out, rs_axis *ax) {
    const double scale = (double)in / (double)out;
    const double fs = scale < 1.0 ? 1.0 : scale;
    const double support = 2.0 * fs;
    ax->taps = (int64_t)ceil(support) * 2 + 1;
    ax->xmin = malloc((size_t)out * sizeof *ax->xmin);
    ax->n = malloc((size_t)out * sizeof *ax->n);
    ax->k = calloc((size_t)out * (size_t)ax->taps, sizeof *ax->k);
    double *w = malloc((size_t)ax->taps * sizeof *w);
    if (!ax->xmin || !ax->n || !ax->k || !w) {
        free(w);
        rs_axis_free(ax);
        return mtok_err(MTOK_ERESOURCE, "out of memory for resize coefficients");
    }
    for (int64_t xx = 0; xx < out; xx++) {
        const double center = ((double)xx + 0.5) * scale;
        const double ss = 1.0 / fs;
        int64_t xmin = (int64_t)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int64_t xmax = (int64_t)(center + support + 0.5);
        if (xmax > in) xmax = in;
        xmax -= xmin;
        double ww = 0.0;
        for (int64_t x = 0; x < xmax; x++) {
            w[x] = cubic(((double)(x + xmin) - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = ax->k + xx * ax->taps;
        for (int64_t x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = (int32_t)(v < 0 ? -0.5 + v * (1 << RS_BITS) : 0.5 + v * (1 << RS_BITS));
        }
        ax->xmin[xx] = xmin;
        ax->n[xx] = xmax;
    }
    free(w);
    return 0;
}

static inline uint8_t rs_clip8(int64_t v) {
    v >>= RS_BITS; /* arithmetic: floor, as Pillow's lookup of in >> PRECISION_BITS */
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* rows [y0, y0 + nrows) of src (width src_w) resized horizontally into dst (width ax's out). */
static void rs_horizontal(const uint8_t *src, int64_t src_w, int64_t y0, int64_t nrows, const rs_axis *ax,
                          int64_t out_w, uint8_t *dst) {
    for (int64_t y = 0; y < nrows; y++) {
        const uint8_t *s = src + (size_t)(y0 + y) * (size_t)src_w * 3;
        uint8_t *d = dst + (size_t)y * (size_t)out_w * 3;
        for (int64_t xx = 0; xx < out_w; xx++) {
            const int32_t *k = ax->k + xx * ax->taps;
            const uint8_t *p = s + ax->xmin[xx] * 3;
            int64_t a0 = 1 << (RS_BITS - 1), a1 = a0, a2 = a0;
            for (int64_t x = 0; x < ax->n[xx]; x++) {
                a0 += (int64_t)p[x * 3] * k[x];
                a1 += (int64_t)p[x * 3 + 1] * k[x];
                a2 += (int64_t)p[x * 3 + 2] * k[x];
            }
            d[xx * 3] = rs_clip8(a0), d[xx * 3 + 1] = rs_clip8(a1), d[xx * 3 + 2] = rs_clip8(a2);
        }
    }
}

/* src (w x any rows, its row 0 being input row `off`) resized vertically into dst (w x out_h). */
static void rs_vertical(const uint8_t *src, int64_t w, int64_t off, const rs_axis *ax, int64_t out_h,
                        uint8_t *dst) {
    const size_t stride = (size_t)w * 3;
    for (int64_t yy = 0; yy < out_h; yy++) {
        const int32_t *k = ax->k + yy * ax->taps;
        const uint8_t *s = src + (size_t)(ax->xmin[yy] - off) * stride;
        uint8_t *d = dst + (size_t)yy * stride;
        for (size_t i = 0; i < stride; i++) {
            int64_t acc = 1 << (RS_BITS - 1);
            for (int64_t y = 0; y < ax->n[yy]; y++) acc += (int64_t)s[(size_t)y * stride + i] * k[y];
            d[i] = rs_clip8(acc);
        }
    }
}

int mtok_image_resize_bicubic(const mtok_image *in, int64_t w, int64_t h, mtok_image *out) {
    *out = (mtok_image){0};
    if (w <= 0 || h <= 0 || w > MTOK_IMAGE_MAX_SIDE || h > MTOK_IMAGE_MAX_SIDE)
        return mtok_err(MTOK_EUSAGE, "resize to %lld x %lld: each side must be 1..%d", (long long)w, (long long)h,
                        MTOK_IMAGE_MAX_SIDE);
    if (!in->rgb || in->w <= 0 || in->h <= 0) return mtok_err(MTOK_EUSAGE, "resize: empty input image");
    const int need_h = w != in->w, need_v = h != in->h;
    rs_axis ah = {0}, av = {0};
    uint8_t *tmp = NULL;
    int rc = 0;
    if ((need_h && (rc = rs_axis_make(in->w, w, &ah))) || (need_v && (rc = rs_axis_make(in->h, h, &av))))
        goto done;
    if ((rc = alloc_rgb(out, w, h))) goto done;
    if (need_h && need_v) {
        /* only the input rows some output row reads go through the horizontal pass */
        const int64_t y0 = av.xmin[0], y1 = av.xmin[h - 1] + av.n[h - 1];
        if (!(tmp = malloc((size_t)(y1 - y0) * (size_t)w * 3))) {
            rc = mtok_err(MTOK_ERESOURCE, "out of memory resizing to %lld x %lld", (long long)w, (long long)h);
            goto done;
        }
        rs_horizontal(in->rgb, in->w, y0, y1 - y0, &ah, w, tmp);
        rs_vertical(tmp, w, y0, &av, h, out->rgb);
    } else if (need_h) {
        rs_horizontal(in->rgb, in->w, 0, h, &ah, w, out->rgb);
    } else if (need_v) {
        rs_vertical(in->rgb, w, 0, &av, h, out->rgb);
    } else {
        memcpy(out->rgb, in->rgb, (size_t)w * (size_t)h * 3);
    }
done:
    if (rc) mtok_image_free(out);
    free(tmp);
    rs_axis_free(&ah);
    rs_axis_free(&av);
    return rc;
}

/* In float32 and in this order, as torch computes ToTensor's div(255) and Normalize's sub, div. */
void mtok_image_normalize(const mtok_image *im, float *chw) {
    const size_t plane = (size_t)im->w * (size_t)im->h;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < plane; i++) {
            float x = (float)im->rgb[i * 3 + c] / 255.0f;
            chw[(size_t)c * plane + i] = (x - MTOK_CLIP_MEAN[c]) / MTOK_CLIP_STD[c];
        }
}

int mtok_image_to_tensor(const mtok_image *im, int64_t size, float **chw) {
    *chw = NULL;
    mtok_image rs;
    int rc = mtok_image_resize_bicubic(im, size, size, &rs);
    if (rc) return rc;
    float *t = malloc((size_t)3 * (size_t)size * (size_t)size * sizeof *t);
    if (!t) rc = mtok_err(MTOK_ERESOURCE, "out of memory for a %lld x %lld image tensor", (long long)size,
                          (long long)size);
    else mtok_image_normalize(&rs, t);
    mtok_image_free(&rs);
    *chw = t;
    return rc;
}

int mtok_image_preprocess(const char *path, int64_t size, float **chw) {
    *chw = NULL;
    mtok_image im;
    int rc = mtok_image_load(path, &im);
    if (!rc) rc = mtok_image_to_tensor(&im, size, chw);
    mtok_image_free(&im);
    return rc;
}
