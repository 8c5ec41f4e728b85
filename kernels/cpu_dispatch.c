/* cpu_dispatch.c — the public mk_* entry points and the run-time choice of instruction set. Each entry
 * point runs the highest level that the CPU has, that the OS saves the registers of (XCR0), and that
 * is not capped (mk_isa_set: --isa; MTOK_ISA; mk_force_scalar: --no-simd):
 *   avx512  the matrix products and attention of kernels/avx512_*.c (AVX-512F/BW/VL + AVX512_BF16);
 *           the row ops stay AVX2 (one pass over a row: nothing to gain)
 *   avx2    kernels/cpu_avx2.c and kernels/avx2_*.c (AVX2 + FMA + F16C)
 *   scalar  the portable code of cpu_ops.c / cpu_ref.c
 * This file is built for baseline x86-64, so it never executes an AVX instruction itself. */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

/* What `auto` (and no --isa) runs: the highest level the CPU has. The avx512 level's bf16 products
 * keep the fp32 activations through the hi + lo split by default (mk_precision_active), which puts
 * its logits as close to the scalar path's as AVX2's; the bf16 precision, twice the rate and less
 * accurate, is asked for separately (--matmul-precision bf16; docs/PERFORMANCE.md, "AVX-512 kernels"). */
#define MK_ISA_AUTO_CAP MK_ISA_AVX512

static int g_force_scalar;

/* ---- the CPU's instruction sets (CPUID + XCR0), once ----
 * The result is a pure function of the CPU, so racing first calls all store the same value (atomics
 * only to keep that race well-defined). */
enum {
    F_AVX2 = 1 << 0, F_FMA = 1 << 1, F_F16C = 1 << 2, F_AVX512F = 1 << 3, F_AVX512BW = 1 << 4,
    F_AVX512VL = 1 << 5, F_AVX512DQ = 1 << 6, F_AVX512BF16 = 1 << 7, F_AVX512VNNI = 1 << 8,
    F_YMM_OS = 1 << 9, F_ZMM_OS = 1 << 10, F_SSE42 = 1 << 11, F_AVX = 1 << 12, F_KNOWN = 1 << 30
};

static unsigned cpu_features(void) {
    static unsigned cached;
    unsigned v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v) return v;
    v = F_KNOWN;
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d, max = __get_cpuid_max(0, NULL);
    if (max >= 1 && __get_cpuid(1, &a, &b, &c, &d)) {
        if (c & bit_SSE4_2) v |= F_SSE42;
        if (c & bit_AVX) v |= F_AVX;
        if (c & bit_FMA) v |= F_FMA;
        if (c & bit_F16C) v |= F_F16C;
        if (c & bit_OSXSAVE) {
            /* XCR0: which register state the OS saves on a context switch. Bits 1-2 are XMM/YMM;
             * 5-7 the AVX-512 opmasks, the upper halves of zmm0-15 and zmm16-31. An instruction
             * set whose registers the OS does not save must not be used even if CPUID lists it. */
            unsigned lo, hi;
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            if ((lo & 0x6) == 0x6) v |= F_YMM_OS;
            if ((lo & 0xe6) == 0xe6) v |= F_ZMM_OS;
        }
    }
    if (max >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (b & (1u << 5)) v |= F_AVX2;
        if (b & (1u << 16)) v |= F_AVX512F;
        if (b & (1u << 17)) v |= F_AVX512DQ;
        if (b & (1u << 30)) v |= F_AVX512BW;
        if (b & (1u << 31)) v |= F_AVX512VL;
        if (c & (1u << 11)) v |= F_AVX512VNNI;
        const unsigned sub = a; /* leaf 7's highest subleaf */
        if (sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (a & (1u << 5)) v |= F_AVX512BF16;
        }
    }
#endif
    __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    return v;
}

mk_isa mk_isa_cpu(void) {
    const unsigned f = cpu_features();
    const unsigned avx2 = F_AVX | F_AVX2 | F_FMA | F_F16C | F_YMM_OS;
    const unsigned avx512 = avx2 | F_AVX512F | F_AVX512BW | F_AVX512VL | F_AVX512BF16 | F_ZMM_OS;
    if ((f & avx512) == avx512) return MK_ISA_AVX512;
    if ((f & avx2) == avx2) return MK_ISA_AVX2;
    return MK_ISA_SCALAR;
}

void mk_cpu_features(char *buf, size_t n) {
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{F_SSE42, "sse4.2"},       {F_AVX, "avx"},          {F_AVX2, "avx2"},
                 {F_FMA, "fma"},            {F_F16C, "f16c"},        {F_AVX512F, "avx512f"},
                 {F_AVX512BW, "avx512bw"},  {F_AVX512VL, "avx512vl"}, {F_AVX512DQ, "avx512dq"},
                 {F_AVX512BF16, "avx512_bf16"}, {F_AVX512VNNI, "avx512_vnni"}};
    const unsigned f = cpu_features();
    size_t at = 0;
    if (n) buf[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (f & names[i].bit && at < n) {
            const int w = snprintf(buf + at, n - at, "%s%s", at ? " " : "", names[i].name);
            at += w > 0 ? (size_t)w : 0;
        }
    if (at < n && (f & (F_AVX512F | F_ZMM_OS)) == F_AVX512F)
        snprintf(buf + at, n - at, " (zmm state not enabled by the OS)");
}

const char *mk_isa_str(mk_isa isa) {
    switch (isa) {
    case MK_ISA_SCALAR: return "scalar";
    case MK_ISA_AVX2: return "avx2";
    case MK_ISA_AVX512: return "avx512";
    }
    return "?";
}

int mk_isa_parse(const char *s, mk_isa *out) {
    if (!s) return -1;
    if (!strcmp(s, "auto")) *out = MK_ISA_AUTO_CAP;
    else if (!strcmp(s, "avx512")) *out = MK_ISA_AVX512;
    else if (!strcmp(s, "avx2")) *out = MK_ISA_AVX2;
    else if (!strcmp(s, "scalar")) *out = MK_ISA_SCALAR;
    else return -1;
    return 0;
}

/* The cap on the level: -1 until set, then set by mk_isa_set or, on first use, by MTOK_ISA (auto
 * when unset or unreadable: an environment variable cannot report an error to anyone). */
static int g_isa_cap = -1;

static mk_isa isa_cap(void) {
    int v = __atomic_load_n(&g_isa_cap, __ATOMIC_RELAXED);
    if (v < 0) {
        mk_isa e = MK_ISA_AUTO_CAP;
        const char *s = getenv("MTOK_ISA");
        if (s && *s && mk_isa_parse(s, &e)) e = MK_ISA_AUTO_CAP;
        v = (int)e;
        int unset = -1;
        __atomic_compare_exchange_n(&g_isa_cap, &unset, v, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
        v = __atomic_load_n(&g_isa_cap, __ATOMIC_RELAXED);
    }
    return (mk_isa)v;
}

int mk_isa_set(mk_isa cap) {
    if (cap > mk_isa_cpu()) return -1;
    __atomic_store_n(&g_isa_cap, (int)cap, __ATOMIC_RELAXED);
    return 0;
}

mk_isa mk_isa_active(void) {
    if (g_force_scalar) return MK_ISA_SCALAR;
    const mk_isa cpu = mk_isa_cpu(), cap = isa_cap();
    return cap < cpu ? cap : cpu;
}

const char *mk_isa_name(void) { return mk_isa_str(mk_isa_active()); }

int mk_have_avx2(void) { return mk_isa_active() >= MK_ISA_AVX2; }
static int have_avx512(void) { return mk_isa_active() >= MK_ISA_AVX512; }

/* Meant to be set once at start-up (CLI flag) or between test phases, not while kernels run. */
void mk_force_scalar(int on) { g_force_scalar = on != 0; }

/* The bf16-dot precision: -1 until set, then by mk_precision_set or, on first use, MTOK_MATMUL_PRECISION
 * (fp32 when unset or unknown: the CLI validates its flag, the variable only selects). */
static int g_precision = -1;

int mk_precision_parse(const char *s, mk_precision *out) {
    if (!s) return -1;
    if (!strcmp(s, "fp32")) *out = MK_PREC_FP32;
    else if (!strcmp(s, "bf16")) *out = MK_PREC_BF16;
    else return -1;
    return 0;
}

const char *mk_precision_str(mk_precision p) { return p == MK_PREC_BF16 ? "bf16" : "fp32"; }

mk_precision mk_precision_active(void) {
    int v = __atomic_load_n(&g_precision, __ATOMIC_RELAXED);
    if (v < 0) {
        mk_precision e = MK_PREC_FP32;
        const char *s = getenv("MTOK_MATMUL_PRECISION");
        if (s && *s && mk_precision_parse(s, &e)) e = MK_PREC_FP32;
        int unset = -1;
        __atomic_compare_exchange_n(&g_precision, &unset, (int)e, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
        v = __atomic_load_n(&g_precision, __ATOMIC_RELAXED);
    }
    return (mk_precision)v;
}

void mk_precision_set(mk_precision p) { __atomic_store_n(&g_precision, (int)p, __ATOMIC_RELAXED); }

/* The team size a kernel's parallel region gets: the caller's, else OpenMP's default (what
 * omp_get_max_threads says for this thread: OMP_NUM_THREADS, or every core). */
static int team(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

/* The bf16 precision below the avx512 level: the products of bf16 W take x rounded to bf16, as
 * VDPBF16PS does, so a run's numerics follow --matmul-precision and not the machine (a bf16 run on an
 * AVX2-only CPU, or --no-simd as the reference of an avx512 one). The rounded copies are made here and
 * the level's own kernels compute with them. One difference remains: VDPBF16PS reads bf16 subnormals
 * (|x| < 2^-126) as zero, these kernels do not. Returns 0 when it ran the jobs, -1 when there was
 * nothing to round (or no memory: the fp32 products, which are never less accurate). */
static int matmul_bf16_emulated(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads);

void mk_matmul_multi_threads(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads) {
    if (have_avx512()) {
        mk_matmul_multi_avx512(jobs, n_jobs, n_tok, team(threads), mk_precision_active() == MK_PREC_FP32);
        return;
    }
    if (mk_precision_active() == MK_PREC_BF16 && !matmul_bf16_emulated(jobs, n_jobs, n_tok, threads)) return;
    if (mk_have_avx2()) {
        mk_matmul_multi_avx2(jobs, n_jobs, n_tok, team(threads));
        return;
    }
    for (int i = 0; i < n_jobs; i++)
        mk_matmul_portable(jobs[i].y, jobs[i].ldy, jobs[i].x, jobs[i].ldx, n_tok, jobs[i].W, jobs[i].b, team(threads));
}

static int matmul_bf16_emulated(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok, int threads) {
    enum { MAX_JOBS = 16 };
    if (n_jobs > MAX_JOBS || n_tok <= 0) return -1;
    mk_matmul_job use[MAX_JOBS];
    float *copy[MAX_JOBS];
    int n_copies = 0, failed = 0;
    for (int i = 0; i < n_jobs && !failed; i++) {
        use[i] = jobs[i];
        if (jobs[i].W->dtype != MTOK_BF16 || jobs[i].W->cols == 0) continue;
        const int64_t K = jobs[i].W->cols;
        int c = 0; /* an earlier job's copy of the same x, wide enough (Q, K, V; gate and up share one) */
        while (c < i && !(jobs[c].x == jobs[i].x && jobs[c].ldx == jobs[i].ldx && use[c].x != jobs[c].x &&
                          use[c].ldx >= K))
            c++;
        if (c < i) {
            use[i].x = use[c].x, use[i].ldx = use[c].ldx;
            continue;
        }
        float *xr = malloc((size_t)(n_tok * K) * sizeof *xr);
        if (!xr) {
            failed = 1;
            break;
        }
        copy[n_copies++] = xr;
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t k = 0; k < K; k++) xr[t * K + k] = mk_bf16_to_f32(mk_f32_to_bf16(jobs[i].x[t * jobs[i].ldx + k]));
        use[i].x = xr, use[i].ldx = K;
    }
    const int run = !failed && n_copies > 0;
    if (run) {
        if (mk_have_avx2())
            mk_matmul_multi_avx2(use, n_jobs, n_tok, team(threads));
        else
            for (int i = 0; i < n_jobs; i++)
                mk_matmul_portable(use[i].y, use[i].ldy, use[i].x, use[i].ldx, n_tok, use[i].W, use[i].b, team(threads));
    }
    for (int c = 0; c < n_copies; c++) free(copy[c]);
    return run ? 0 : -1;
}

void mk_matmul_threads(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
                       const mk_tensor *b, int threads) {
    const mk_matmul_job j = {.y = y, .ldy = ldy, .x = x, .ldx = ldx, .W = W, .b = b};
    mk_matmul_multi_threads(&j, 1, n_tok, threads);
}

void mk_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n_tok, const mk_tensor *W,
               const mk_tensor *b) {
    mk_matmul_threads(y, ldy, x, ldx, n_tok, W, b, 0);
}

void mk_matmul_multi(const mk_matmul_job *jobs, int n_jobs, int64_t n_tok) {
    mk_matmul_multi_threads(jobs, n_jobs, n_tok, 0);
}

void mk_rmsnorm(float *y, const float *x, const mk_tensor *w, int64_t n, float eps) {
    if (mk_have_avx2())
        mk_rmsnorm_avx2(y, x, w, n, eps);
    else
        mk_rmsnorm_ref(y, x, w, n, eps); /* one pass over n elements: the reference is fast enough */
}

void mk_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float *cs, const float *sn) {
    if (mk_have_avx2())
        mk_rope_avx2(x, n_heads, head_dim, rope_dim, cs, sn);
    else
        mk_rope_portable(x, n_heads, head_dim, rope_dim, cs, sn);
}

void mk_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    if (mk_have_avx2())
        mk_swiglu_avx2(out, gate, up, n);
    else
        mk_swiglu_portable(out, gate, up, n);
}

void mk_embed(float *y, const mk_tensor *table, int32_t id) {
    const int64_t n = table->cols;
    if (id < 0 || id >= table->rows) {
        /* callers validate ids (forward.c does); never read outside the table if one slips through */
        for (int64_t i = 0; i < n; i++) y[i] = 0.0f;
        return;
    }
    const void *row = (const char *)table->data + (size_t)id * (size_t)n * mtok_dtype_size(table->dtype);
    if (mk_have_avx2())
        mk_row_to_f32_avx2(y, row, table->dtype, n);
    else
        mk_row_to_f32_portable(y, row, table->dtype, n);
}

void mk_attn_accum(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t stride, int64_t D,
                   float scale, float *acc, float *m, float *l) {
    if (mk_have_avx2()) /* one query row: bound by reading K and V, the AVX2 form at either level */
        mk_attn_accum_avx2(q, k, v, n, stride, D, scale, acc, m, l);
    else
        mk_attn_accum_ref(q, k, v, n, stride, D, scale, acc, m, l);
}

void mk_attn_block(const mk_attn_params *p) {
    if (have_avx512())
        mk_attn_block_avx512(p);
    else if (mk_have_avx2())
        mk_attn_block_avx2(p);
    else
        mk_attn_block_ref(p);
}

void mk_f32_to_bf16_row(uint16_t *dst, const float *src, int64_t n) {
    if (mk_have_avx2())
        mk_f32_to_bf16_row_avx2(dst, src, n);
    else
        mk_f32_to_bf16_row_portable(dst, src, n);
}
