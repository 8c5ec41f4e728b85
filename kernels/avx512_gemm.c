/* avx512_gemm.c — the prefill GEMM y[t][o] = sum_k x[t][k] W[o][k] (+ b[o]) for many tokens, AVX-512.
 * Compiled with the AVX-512 flags (CMakeLists.txt: the kernels/avx512_*.c glob) and reached only
 * through cpu_dispatch.c after its CPU and XCR0 checks.
 *
 * The structure is avx2_gemm.c's (docs/PERFORMANCE.md, "Why the kernels look like this"): a slice of
 * W is packed once per packing block of NCP panels (256 KiB, L2-resident), tokens run outer so a
 * token block's x rows are reused by every panel of the block, and a micro-kernel keeps a tile of y
 * in registers across a whole k slice. What changes with 32 zmm registers and VDPBF16PS (bf16 W
 * only: f16/f32 W take the AVX2 kernels, avx512_gemv.c says why):
 *
 *   panel   a panel is 32 outputs x KC k, stored as [KC/2][32] bf16 pairs (one 32-bit lane = the
 *           weights of one output at k, k+1), so one VDPBF16PS per 16 outputs multiplies a pair of
 *           tokens' k values (x rounded to bf16 once per product by the driver, a 32-bit broadcast)
 *           with 16 outputs' pairs: 32 multiply-adds per instruction, twice an fp32 FMA's.
 *   tile    12 tokens x 32 outputs: 24 accumulators + 2 weight registers + a broadcast of 32; per
 *           k pair 2 weight loads and 12 broadcasts feed 24 products, so the loads never limit
 *           the one VDPBF16PS per cycle a core issues.
 *
 * Results are bit-identical for any k-slice depth: the micro-kernel continues a tile's sum in the
 * same k order. */
#include <stdlib.h>

#include "avx512_inline.h"
#include "tls_scratch.h"

#define ZM_NR 32       /* outputs per panel: two zmm */
#define ZM_MR 12       /* tokens per register tile */
#define ZM_NCP 2       /* panels per packing block */
#define ZM_KC 2048     /* k per slice (even: pairs never straddle slices) */
#define ZM_PANEL_U32 ((size_t)ZM_KC / 2 * ZM_NR) /* 32-bit words per packed panel: 128 KiB */

static _Thread_local uint32_t *tl_pack512;
MK_TLS_SCRATCH(tl_pack512)

void *mk_gemm_scratch_avx512(void) {
    if (!tl_pack512) tl_pack512_own(tl_pack512 = aligned_alloc(64, ZM_NCP * ZM_PANEL_U32 * sizeof(uint32_t)));
    return tl_pack512;
}

/* bf16 W: wp[p][j] = W[o0+j][k0+2p] | W[o0+j][k0+2p+1] << 16 for p < ceil(kc/2), j < 32; zero past N
 * and past kc. Whole 16-row x 32-k blocks go through a 16x16 transpose of 32-bit pairs. */
static void pack_bf16(uint32_t *wp, const uint16_t *w, int64_t K, int64_t N, int64_t o0, int64_t k0, int64_t kc) {
    for (int h = 0; h < 2; h++) {
        const int64_t r = o0 + 16 * h;
        uint32_t *dst = wp + 16 * h;
        int64_t k = 0;
        if (r + 16 <= N)
            for (; k + 32 <= kc; k += 32) {
                __m512i v[16];
                for (int j = 0; j < 16; j++) v[j] = _mm512_loadu_si512((const void *)(w + (r + j) * K + k0 + k));
                transpose16(v);
                for (int i = 0; i < 16; i++) _mm512_store_si512((void *)(dst + (k / 2 + i) * ZM_NR), v[i]);
            }
        for (; k < kc; k += 2)
            for (int j = 0; j < 16; j++) {
                const uint16_t *row = w + (r + j) * K + k0;
                const uint32_t lo = r + j < N ? row[k] : 0, hi = r + j < N && k + 1 < kc ? row[k + 1] : 0;
                dst[k / 2 * ZM_NR + j] = lo | hi << 16;
            }
    }
}

/* The tile's start: init (32 floats: the bias) for the first slice, else c itself. */
INLINE void tile_load(int mr, __m512 *c0, __m512 *c1, const float *c, int64_t ldc, const float *init) {
    for (int t = 0; t < ZM_MR; t++) {
        if (t >= mr) {
            c0[t] = c1[t] = _mm512_setzero_ps();
        } else if (init) {
            c0[t] = _mm512_load_ps(init);
            c1[t] = _mm512_load_ps(init + 16);
        } else {
            c0[t] = _mm512_loadu_ps(c + t * ldc);
            c1[t] = _mm512_loadu_ps(c + t * ldc + 16);
        }
    }
}

INLINE void tile_store(int mr, const __m512 *c0, const __m512 *c1, float *c, int64_t ldc) {
    for (int t = 0; t < mr; t++) {
        _mm512_storeu_ps(c + t * ldc, c0[t]);
        _mm512_storeu_ps(c + t * ldc + 16, c1[t]);
    }
}

/* c[t][0..32) += sum over np pairs of x[t] (bf16, rows ldb apart) times the packed pairs wp. With
 * SPLIT, x is the pair hi + lo (xl: the low halves, rows ldb apart as well) and each pair of weights
 * meets both: two VDPBF16PS per product, the hi one first. */
INLINE void uk_bf16(int mr, int SPLIT, int64_t np, const uint32_t *wp, const uint16_t *xb, const uint16_t *xl,
                    int64_t ldb, float *c, int64_t ldc, const float *init) {
    __m512 c0[ZM_MR], c1[ZM_MR];
    const uint16_t *xr[ZM_MR], *lr[ZM_MR];
    for (int t = 0; t < ZM_MR; t++) {
        xr[t] = xb + (t < mr ? t : 0) * ldb;
        lr[t] = SPLIT ? xl + (t < mr ? t : 0) * ldb : NULL;
    }
    tile_load(mr, c0, c1, c, ldc, init);
    for (int64_t p = 0; p < np; p++) {
        const __m512i w0 = _mm512_load_si512((const void *)(wp + ZM_NR * p));
        const __m512i w1 = _mm512_load_si512((const void *)(wp + ZM_NR * p + 16));
        for (int t = 0; t < mr; t++) {
            const __m512i a = bcast_pair(xr[t] + 2 * p);
            c0[t] = dpbf16(c0[t], w0, a);
            c1[t] = dpbf16(c1[t], w1, a);
            if (SPLIT) {
                const __m512i l = bcast_pair(lr[t] + 2 * p);
                c0[t] = dpbf16(c0[t], w0, l);
                c1[t] = dpbf16(c1[t], w1, l);
            }
        }
    }
    tile_store(mr, c0, c1, c, ldc);
}

#define UK_PARAMS \
    (int64_t np, const uint32_t *wp, const uint16_t *xb, const uint16_t *xl, int64_t ldb, float *c, int64_t ldc, \
     const float *init)
ZM_TILE_FNS(uk_split, uk_bf16, UK_PARAMS, 1, np, wp, xb, xl, ldb, c, ldc, init)
ZM_TILE_FNS(uk_plain, uk_bf16, UK_PARAMS, 0, np, wp, xb, NULL, ldb, c, ldc, init)

static void uk_bf16_any(int mr, int64_t np, const uint32_t *wp, const uint16_t *xb, const uint16_t *xl, int64_t ldb,
                        float *c, int64_t ldc, const float *init) {
    if (xl)
        ZM_TILE_CALL(uk_split, np, wp, xb, xl, ldb, c, ldc, init)
    else
        ZM_TILE_CALL(uk_plain, np, wp, xb, xl, ldb, c, ldc, init)
}

/* Tokens [t0, t1) x panels [p0, p1) (32 outputs each) of y = xb W^T (+ b), bf16 W, with packing buffer
 * buf. xb: x rounded to bf16, rows ldb apart, zero past K up to the next even column; xl: NULL, or
 * the low halves (x - xb rounded to bf16, the same layout), whose products are added too. */
void mk_gemm_block_avx512(float *y, int64_t ldy, const uint16_t *xb, const uint16_t *xl, int64_t ldb, int64_t t0,
                          int64_t t1, const mk_tensor *W, const mk_tensor *b, int64_t p0, int64_t p1, void *buf) {
    const int64_t N = W->rows, K = W->cols;
    uint32_t *wp = buf;
    _Alignas(64) float bias[ZM_NCP][ZM_NR];
    _Alignas(64) float tmp[ZM_MR * ZM_NR];
    for (int64_t pc = p0; pc < p1; pc += ZM_NCP) {
        const int64_t np = p1 - pc < ZM_NCP ? p1 - pc : ZM_NCP;
        for (int64_t p = 0; p < np; p++)
            for (int j = 0; j < ZM_NR; j++) {
                const int64_t o = (pc + p) * ZM_NR + j;
                bias[p][j] = b && o < N ? mk_get(b, o) : 0.0f;
            }
        for (int64_t k0 = 0; k0 < K; k0 += ZM_KC) {
            const int64_t kc = K - k0 < ZM_KC ? K - k0 : ZM_KC;
            for (int64_t p = 0; p < np; p++)
                pack_bf16(wp + p * ZM_PANEL_U32, W->data, K, N, (pc + p) * ZM_NR, k0, kc);
            /* tokens outer: a token block's x rows are read by each panel of the packing block
             * while they are still in L1/L2, and the packed panels stream from L2 */
            for (int64_t t = t0; t < t1; t += ZM_MR)
                for (int64_t p = 0; p < np; p++) {
                    const int mr = (int)(t1 - t < ZM_MR ? t1 - t : ZM_MR);
                    const int64_t o0 = (pc + p) * ZM_NR;
                    const float *init = k0 == 0 ? bias[p] : NULL;
                    /* the last, partial panel runs on a 32-wide copy so no store passes column N */
                    const int part = o0 + ZM_NR > N;
                    const int64_t nv = part ? N - o0 : ZM_NR;
                    float *c = y + t * ldy + o0, *cc = part ? tmp : c;
                    if (part)
                        for (int i = 0; i < mr; i++)
                            for (int64_t j = 0; j < nv; j++) tmp[i * ZM_NR + j] = k0 ? c[i * ldy + j] : 0.0f;
                    uk_bf16_any(mr, (kc + 1) / 2, wp + p * ZM_PANEL_U32, xb + t * ldb + k0,
                                xl ? xl + t * ldb + k0 : NULL, ldb, cc,
                                part ? ZM_NR : ldy, init);
                    if (part)
                        for (int i = 0; i < mr; i++)
                            for (int64_t j = 0; j < nv; j++) c[i * ldy + j] = tmp[i * ZM_NR + j];
                }
        }
    }
}
