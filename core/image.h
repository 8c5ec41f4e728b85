/* image.h — image input for GLM-4V (docs/VISION.md): decode a PNG or JPEG file to 8-bit RGB the way
 * PIL's Image.open(f).convert("RGB") does, resize it with Pillow's bicubic filter (bit-exact on the
 * 8-bit values), and normalise it with CLIP's mean and std into the float CHW tensor the vision
 * tower takes.
 *
 * Errors are returned as MTOK_* codes with mtok_err's message (base/mtok_base.h): MTOK_EINPUT for a
 * file that is unreadable, empty, truncated, corrupt, of an unsupported kind or mode, or larger than
 * the limits below; MTOK_ERESOURCE for memory. Nothing here exits. */
#ifndef MTOK_IMAGE_H
#define MTOK_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "../base/mtok_base.h"

/* Decoded images larger than this are refused before any pixel buffer is allocated: 2^26 pixels
 * (8192 x 8192, 192 MiB as RGB) is far above what the tower's fixed input (1120 x 1120) needs and
 * keeps a hostile header (a 65500 x 65500 JPEG, a 10^6 x 10^6 PNG) from allocating gigabytes. */
#define MTOK_IMAGE_MAX_PIXELS ((int64_t)1 << 26)
/* Files are read whole into memory (the decoders then run on a buffer, and a data: URI of the server
 * can take the same path); larger files are refused. */
#define MTOK_IMAGE_MAX_FILE_BYTES ((size_t)512 << 20)
/* The largest side the resizer produces (GLM-4V-9B uses 1120). */
#define MTOK_IMAGE_MAX_SIDE 16384

/* An 8-bit RGB image, rows top to bottom, pixels interleaved: rgb[(y * w + x) * 3 + c]. */
typedef struct {
    int64_t w, h;
    uint8_t *rgb;
} mtok_image;

/* Decodes a PNG or JPEG held in memory (the kind is told by its first bytes, not by a file name).
 * name is only used in messages. Modes become RGB as PIL's convert("RGB") makes them:
 *   grey (1/2/4/8-bit)  each value replicated to R, G, B (1-bit: 0/255, 2-bit: x85, 4-bit: x17)
 *   grey 16-bit         min(value, 255) replicated (PIL's "I;16" -> RGB clips, it does not scale)
 *   grey+alpha, RGBA    alpha dropped (PIL's RGBA -> RGB ignores alpha; no compositing)
 *   palette             the palette's colours; a tRNS chunk is ignored
 *   16-bit RGB(A), grey+alpha  the high byte of each sample (PIL's ";16B" raw modes)
 *   JPEG grey / YCbCr / RGB  libjpeg's colour conversion (islow IDCT, fancy upsampling, as PIL)
 * gAMA, iCCP and EXIF orientation are ignored, as PIL's open + convert ignores them. CMYK and YCCK
 * JPEGs are refused (unsupported mode). */
int mtok_image_decode(const void *data, size_t len, const char *name, mtok_image *out);
/* Reads path whole and decodes it. */
int mtok_image_load(const char *path, mtok_image *out);
void mtok_image_free(mtok_image *im);

/* Pillow's Image.resize((w, h), BICUBIC) without a box: separable, horizontal pass then vertical,
 * 8-bit rounding between them, 22-bit fixed-point coefficients. *out is allocated. */
int mtok_image_resize_bicubic(const mtok_image *in, int64_t w, int64_t h, mtok_image *out);

/* CLIP's normalisation, as torchvision's ToTensor + Normalize compute it in float32:
 * chw[c][y][x] = (rgb / 255 - mean[c]) / std[c]. chw holds 3 * w * h floats. */
extern const float MTOK_CLIP_MEAN[3], MTOK_CLIP_STD[3];
void mtok_image_normalize(const mtok_image *im, float *chw);

/* Resize to size x size and normalise: *chw is malloc'd [3][size][size]. For images that arrive in
 * memory (mtok_image_decode: a data: URI of the server, a chat upload). */
int mtok_image_to_tensor(const mtok_image *im, int64_t size, float **chw);
/* The whole preprocessing of GLM-4V from a file: load, then mtok_image_to_tensor. */
int mtok_image_preprocess(const char *path, int64_t size, float **chw);

#endif
