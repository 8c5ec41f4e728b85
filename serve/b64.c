/* b64.c — the strict base64 decoder of the server's data: URIs (serve/parse.c, images in chat).
 *
 * Strict because the bytes come from a client and go to an image decoder: RFC 4648's standard
 * alphabet only, whole groups of four (padding required), '=' only at the end, no whitespace or line
 * breaks, and the unused bits of the last group zero, so one image has exactly one accepted encoding
 * and a corrupted upload is refused with the offset of its first bad character instead of decoding to
 * other bytes. Lengths come from the JSON string, never from strlen: a NUL byte is a bad character. */
#include <stdlib.h>

#include "srv.h"

static int b64_value(unsigned char ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

int srv_b64_decode(const char *s, size_t n, unsigned char **out, size_t *out_len, size_t *bad_at) {
    *out = NULL, *out_len = 0, *bad_at = 0;
    if (n == 0 || n % 4) {
        *bad_at = n - n % 4; /* where the incomplete group starts (0 for an empty string) */
        return SRV_B64_BAD;
    }
    /* n / 4 * 3 cannot overflow (n is a length in memory); +1 keeps malloc(0) out of the picture */
    unsigned char *o = malloc(n / 4 * 3 + 1);
    if (!o) return SRV_B64_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        const int last = i + 4 == n;
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            const unsigned char ch = (unsigned char)s[i + j];
            /* '=' only in the last group's last two places, and nothing but '=' after the first one */
            if (ch == '=' && last && j >= 2 && (j == 3 || s[i + 3] == '=')) {
                v[j] = 0, pad++;
                continue;
            }
            if ((v[j] = b64_value(ch)) < 0 || pad) {
                free(o);
                *bad_at = i + (size_t)j;
                return SRV_B64_BAD;
            }
        }
        /* the bits the padding leaves over must be zero (the canonical encoding) */
        if ((pad == 2 && (v[1] & 0x0f)) || (pad == 1 && (v[2] & 0x03))) {
            free(o);
            *bad_at = i + (size_t)(3 - pad);
            return SRV_B64_BAD;
        }
        const unsigned w = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | (unsigned)v[3];
        o[k++] = (unsigned char)(w >> 16);
        if (pad < 2) o[k++] = (unsigned char)(w >> 8);
        if (pad < 1) o[k++] = (unsigned char)w;
    }
    *out = o, *out_len = k;
    return 0;
}
