/* fuzz_image.c — an image file given with --image (and a server's data: URI, which decodes to the same
 * bytes): mtok_image_decode (core/image.c: PNG through libpng, JPEG through libjpeg-turbo, the mode
 * conversions to RGB and the size limits checked from the header), then the GLM-4V preprocessing at
 * a small size (Pillow's bicubic resize and CLIP's normalisation) of whatever decoded. The first
 * byte picks the target size (1..64), so that up- and down-scaling of every decoded shape are run. */
#include <stdlib.h>

#include "image.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const int64_t target = 1 + data[0] % 64;
    mtok_image im;
    if (mtok_image_decode(data + 1, size - 1, "fuzz input", &im)) return 0;
    float *chw = NULL;
    if (mtok_image_to_tensor(&im, target, &chw) == 0) free(chw);
    mtok_image_free(&im);
    return 0;
}
