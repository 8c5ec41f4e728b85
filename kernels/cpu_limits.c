/* cpu_limits.c — this machine's physical limits, the denominators of every figure `mtok bench`
 * prints: STREAM-style triad and read-only memory bandwidth, and the compute peak of each instruction
 * class the CPU has (fp32 FMA in ymm and zmm, bf16 dot products, int8 dot products), on all cores.
 *
 * Threads are plain pthreads (not OpenMP) so that the measurement can run in a forked child after
 * the parent's OpenMP pool exists (libgomp does not survive fork) and so its arrays never count in
 * the parent's peak RSS. Each kernel runs `reps` times between two barriers; the best time counts
 * (on a shared machine the slow runs measure the neighbours, not the hardware).
 *
 * Counting follows STREAM: triad a = b + s*c moves 3 arrays (the write-allocate read of a is not
 * counted); read-only sums one array. The FMA kernel keeps 12 independent 8-wide FMA chains per
 * thread, enough to cover a 4-5 cycle latency on two FMA ports. The AVX2 versions are compiled
 * through function target attributes and only called after a CPU check.
 *
 * The peak kernels (mk_measure_limits_ex) keep 16 independent accumulator chains each: the longest
 * latency x throughput product among the classes is ~6 cycles x 2 per cycle (VDPBF16PS / VPDPBUSD on
 * cores with two 512-bit pipes), and 16 zmm chains plus two operands fit the 32 vector registers that
 * AVX-512 has. Each class is compiled with its own target attribute and runs only after
 * peak_classes() found its CPUID bits and the OS's XCR0 state bits; an instruction the machine lacks
 * is never executed. Every kernel's result is checked against its exact expected value (the inputs
 * are chosen so that every partial sum is representable), so a silently wrong or skipped loop fails
 * `verified`. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#include "cpu_internal.h"
#include "limits_peaks.h"

#if HAVE_X86
#include <cpuid.h>
#endif

/* iterations of the bf16 peak loop whose sums stay exact (bf16_zmm says why) */
#define BF16_MAX_ITERS (((int64_t)1 << 22) - 64)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the three kernels, portable and AVX2 ---- */

static void triad_portable(float *a, const float *b, const float *c, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
}
static float read_portable(const float *a, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j];
    for (; i < n; i++) s[0] += a[i];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}
/* 12 chains x 8 lanes x 2 flops per iteration (mul + add when the CPU has no FMA) */
static float fma_portable(int64_t iters, float seed) {
    float c[96];
    for (int j = 0; j < 96; j++) c[j] = seed + (float)j * 1e-3f;
    const float a = 0.999999f, b = 1e-7f;
    for (int64_t it = 0; it < iters; it++)
        for (int j = 0; j < 96; j++) c[j] = c[j] * a + b;
    float s = 0;
    for (int j = 0; j < 96; j++) s += c[j];
    return s;
}

#if HAVE_X86
__attribute__((target("avx2,fma"))) static void triad_avx2(float *a, const float *b, const float *c, float s,
                                                             int64_t n) {
    const __m256 sv = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 32; j += 8)
            _mm256_storeu_ps(a + i + j, _mm256_fmadd_ps(sv, _mm256_loadu_ps(c + i + j), _mm256_loadu_ps(b + i + j)));
    for (; i < n; i++) a[i] = b[i] + s * c[i];
}
/* Four interleaved streams (the slice's quarters), as a GEMV reads four weight rows at once: one
 * sequential stream per core leaves DRAM parallelism unused and under-reports what loads can get. */
__attribute__((target("avx2,fma"))) static float read_avx2(const float *a, int64_t n) {
    const int64_t q = n / 4 / 8 * 8;
    const float *a0 = a, *a1 = a + q, *a2 = a + 2 * q, *a3 = a + 3 * q;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < q; i += 8) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a0 + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a1 + i));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a2 + i));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a3 + i));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    float s = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    for (int64_t i = 4 * q; i < n; i++) s += a[i];
    return s;
}
__attribute__((target("avx2,fma"))) static float fma_avx2(int64_t iters, float seed) {
    /* named registers, not an array: at -O2 an array of vectors stays in memory */
    __m256 c0 = _mm256_set1_ps(seed), c1 = _mm256_set1_ps(seed + 1e-3f), c2 = _mm256_set1_ps(seed + 2e-3f);
    __m256 c3 = _mm256_set1_ps(seed + 3e-3f), c4 = _mm256_set1_ps(seed + 4e-3f), c5 = _mm256_set1_ps(seed + 5e-3f);
    __m256 c6 = _mm256_set1_ps(seed + 6e-3f), c7 = _mm256_set1_ps(seed + 7e-3f), c8 = _mm256_set1_ps(seed + 8e-3f);
    __m256 c9 = _mm256_set1_ps(seed + 9e-3f), c10 = _mm256_set1_ps(seed + 1e-2f), c11 = _mm256_set1_ps(seed + 1.1e-2f);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int64_t it = 0; it < iters; it++) {
        c0 = _mm256_fmadd_ps(c0, a, b), c1 = _mm256_fmadd_ps(c1, a, b), c2 = _mm256_fmadd_ps(c2, a, b);
        c3 = _mm256_fmadd_ps(c3, a, b), c4 = _mm256_fmadd_ps(c4, a, b), c5 = _mm256_fmadd_ps(c5, a, b);
        c6 = _mm256_fmadd_ps(c6, a, b), c7 = _mm256_fmadd_ps(c7, a, b), c8 = _mm256_fmadd_ps(c8, a, b);
        c9 = _mm256_fmadd_ps(c9, a, b), c10 = _mm256_fmadd_ps(c10, a, b), c11 = _mm256_fmadd_ps(c11, a, b);
        /* the empty asm keeps the compiler from collapsing the chains or hoisting them */
        __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5));
        __asm__ volatile("" : "+x"(c6), "+x"(c7), "+x"(c8), "+x"(c9), "+x"(c10), "+x"(c11));
    }
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                                   _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)),
                                                 _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11))));
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
static int x86_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* ---- the peak kernels: 16 independent chains each (the header says why 16) ---- */
#define CH16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define CH12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
/* the empty asm keeps every chain in a register and the loop from being folded or hoisted */
#define KEEP8(p, a, b, c, d, e, f, g, h)                                                                          \
    __asm__ volatile("" : "+v"(p##a), "+v"(p##b), "+v"(p##c), "+v"(p##d), "+v"(p##e), "+v"(p##f), "+v"(p##g),   \
                          "+v"(p##h))
#define KEEP16(p) KEEP8(p, 0, 1, 2, 3, 4, 5, 6, 7); KEEP8(p, 8, 9, 10, 11, 12, 13, 14, 15)
/* 12 chains in ymm0-15 for VEX-only code ("x": the 16 registers VEX can name) */
#define KEEP12X(p)                                                                                                \
    __asm__ volatile("" : "+x"(p##0), "+x"(p##1), "+x"(p##2), "+x"(p##3), "+x"(p##4), "+x"(p##5));              \
    __asm__ volatile("" : "+x"(p##6), "+x"(p##7), "+x"(p##8), "+x"(p##9), "+x"(p##10), "+x"(p##11))

/* fp32 FMA, zmm: c = c*a + b converges to b/(1-a) and stays finite (as fma_avx2) */
__attribute__((target("avx512f"))) static double fma_zmm(int64_t iters, int seed) {
#define INIT(j) __m512 c##j = _mm512_set1_ps((float)seed + (float)(j) * 1e-3f);
    CH16(INIT)
#undef INIT
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int64_t it = 0; it < iters; it++) {
#define STEP(j) c##j = _mm512_fmadd_ps(c##j, a, b);
        CH16(STEP)
#undef STEP
        KEEP16(c);
    }
    __m512 s = _mm512_setzero_ps();
#define ADD(j) s = _mm512_add_ps(s, c##j);
    CH16(ADD)
#undef ADD
    return (double)_mm512_reduce_add_ps(s);
}

/* bf16 dot products into fp32, zmm: each instruction adds 1.0 x 2^-8 twice per lane. The instruction
 * rounds after each of its two additions (the Intel definition; measured so on Zen 4), so a chain
 * that starts at a small integer stays on a 2^-8 grid, exact in fp32 below 2^16: at most 2^22
 * iterations (BF16_MAX_ITERS). The sum is then known exactly. */
#define BF16_ONE 0x3f80    /* 1.0 */
#define BF16_2M8 0x3b80    /* 2^-8 */
__attribute__((target("avx512f,avx512bf16"))) static double bf16_zmm(int64_t iters, int seed) {
#define INIT(j) __m512 c##j = _mm512_set1_ps((float)((j) + seed));
    CH16(INIT)
#undef INIT
    const __m512bh a = (__m512bh)_mm512_set1_epi16(BF16_ONE), b = (__m512bh)_mm512_set1_epi16(BF16_2M8);
    for (int64_t it = 0; it < iters; it++) {
#define STEP(j) c##j = _mm512_dpbf16_ps(c##j, a, b);
        CH16(STEP)
#undef STEP
        KEEP16(c);
    }
    double s = 0;
#define ADD(j) s += (double)_mm512_reduce_add_ps(c##j);
    CH16(ADD)
#undef ADD
    return s;
}
static double bf16_expect(int64_t iters, int seed) {
    double s = 0;
    for (int j = 0; j < 16; j++) s += 16.0 * ((double)(j + seed) + (double)iters * 0x1p-7);
    return s;
}

/* int8 dot products (u8 x s8, 4 pairs per 32-bit lane) into int32: all bytes 1, so each instruction
 * adds 4 per lane; the sums are exact integers */
__attribute__((target("avx512f,avx512vnni"))) static double vnni_zmm(int64_t iters, int seed) {
#define INIT(j) __m512i c##j = _mm512_set1_epi32((j) + seed);
    CH16(INIT)
#undef INIT
    const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
    for (int64_t it = 0; it < iters; it++) {
#define STEP(j) c##j = _mm512_dpbusd_epi32(c##j, a, b);
        CH16(STEP)
#undef STEP
        KEEP16(c);
    }
    double s = 0;
#define ADD(j) s += (double)_mm512_reduce_add_epi32(c##j);
    CH16(ADD)
#undef ADD
    return s;
}
/* the EVEX form of the ymm instruction (AVX512_VNNI + AVX512VL): 32 registers, 16 chains */
__attribute__((target("avx512f,avx512vl,avx512vnni"))) static double vnni_ymm_evex(int64_t iters, int seed) {
#define INIT(j) __m256i c##j = _mm256_set1_epi32((j) + seed);
    CH16(INIT)
#undef INIT
    const __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(1);
    for (int64_t it = 0; it < iters; it++) {
#define STEP(j) c##j = _mm256_dpbusd_epi32(c##j, a, b);
        CH16(STEP)
#undef STEP
        KEEP16(c);
    }
    __m256i s = _mm256_setzero_si256();
#define ADD(j) s = _mm256_add_epi32(s, c##j);
    CH16(ADD)
#undef ADD
    int32_t t[8];
    _mm256_storeu_si256((__m256i *)t, s);
    double r = 0;
    for (int i = 0; i < 8; i++) r += t[i];
    return r;
}
/* the VEX form (AVX-VNNI, on CPUs without AVX-512): 16 registers, so 12 chains + 2 operands */
__attribute__((target("avx2,avxvnni"))) static double vnni_ymm_vex(int64_t iters, int seed) {
#define INIT(j) __m256i c##j = _mm256_set1_epi32((j) + seed);
    CH12(INIT)
#undef INIT
    const __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(1);
    for (int64_t it = 0; it < iters; it++) {
#define STEP(j) c##j = _mm256_dpbusd_avx_epi32(c##j, a, b);
        CH12(STEP)
#undef STEP
        KEEP12X(c);
    }
    __m256i s = _mm256_setzero_si256();
#define ADD(j) s = _mm256_add_epi32(s, c##j);
    CH12(ADD)
#undef ADD
    int32_t t[8];
    _mm256_storeu_si256((__m256i *)t, s);
    double r = 0;
    for (int i = 0; i < 8; i++) r += t[i];
    return r;
}
/* lanes x chains x (init + 4 per instruction) */
static double vnni_expect(int64_t iters, int seed, int lanes, int chains) {
    double s = 0;
    for (int j = 0; j < chains; j++) s += (double)lanes * ((double)(j + seed) + 4.0 * (double)iters);
    return s;
}
static double vnni_zmm_expect(int64_t iters, int seed) { return vnni_expect(iters, seed, 16, 16); }
static double vnni_ymm_evex_expect(int64_t iters, int seed) { return vnni_expect(iters, seed, 8, 16); }
static double vnni_ymm_vex_expect(int64_t iters, int seed) { return vnni_expect(iters, seed, 8, 12); }

/* What this CPU and OS can run, from CPUID and XCR0 (a feature bit alone is not enough: the OS must
 * save the ymm / zmm / opmask state, XCR0 bits 1-2 and 5-7). Bits: 1 << MK_PEAK_*; plus bit 31 when
 * the ymm VNNI form is the VEX one (AVX-VNNI without AVX512_VNNI+VL). */
#define VNNI_YMM_VEX (1u << 31)
static unsigned peak_classes_detect(void) {
    unsigned a, b, c, d, m = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const int ymm_os = (lo & 0x6) == 0x6, zmm_os = (lo & 0xe6) == 0xe6;
    unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0, a71 = 0, b71 = 0, c71 = 0, d71 = 0;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a7, b7, c7, d7);
        if (a7 >= 1) __cpuid_count(7, 1, a71, b71, c71, d71);
    }
    const int avx2 = (b7 >> 5) & 1, f512 = (b7 >> 16) & 1, vl = (b7 >> 31) & 1, vnni512 = (c7 >> 11) & 1;
    const int avxvnni = (a71 >> 4) & 1, bf16 = (a71 >> 5) & 1;
    if (ymm_os && avx2 && fma) m |= 1u << MK_PEAK_FMA_YMM;
    if (zmm_os && f512) m |= 1u << MK_PEAK_FMA_ZMM;
    if (zmm_os && f512 && bf16) m |= 1u << MK_PEAK_BF16_ZMM;
    if (zmm_os && f512 && vnni512) m |= 1u << MK_PEAK_VNNI_ZMM;
    if (zmm_os && f512 && vl && vnni512) m |= 1u << MK_PEAK_VNNI_YMM;
    else if (ymm_os && avx2 && avxvnni) m |= (1u << MK_PEAK_VNNI_YMM) | VNNI_YMM_VEX;
    return m;
}
#else
static int x86_avx2(void) { return 0; }
static unsigned peak_classes_detect(void) { return 0; }
#endif

/* ---- the classes ---- */

typedef struct {
    double (*run)(int64_t iters, int seed);
    double (*expect)(int64_t iters, int seed); /* exact result; NULL: only finite (the FMA loops) */
    int lane_ops;    /* ops per loop iteration per thread: chains x lanes x ops per lane */
    int chains;      /* instructions per loop iteration */
    const char *insn;
} peak_impl;

static const char *const peak_names[MK_PEAK_N] = {"fp32_fma_ymm", "fp32_fma_zmm", "bf16_dot_zmm", "int8_vnni_ymm",
                                                  "int8_vnni_zmm"};
const char *mk_peak_name(int k) { return k >= 0 && k < MK_PEAK_N ? peak_names[k] : "?"; }
int mk_peak_is_int(int k) { return k == MK_PEAK_VNNI_YMM || k == MK_PEAK_VNNI_ZMM; }

static unsigned peak_bits(void) {
    static unsigned cached;
    static int done;
    if (!__atomic_load_n(&done, __ATOMIC_ACQUIRE)) {
        cached = peak_classes_detect(); /* a pure function of the CPU: racing callers store the same */
        __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
    }
    return cached;
}
unsigned mk_peak_classes(void) { return peak_bits() & ((1u << MK_PEAK_N) - 1); }

/* The implementation of class k on this machine (run NULL: not available, or measured elsewhere:
 * the ymm FMA class is the bandwidth run's own FMA loop). */
static peak_impl peak_impl_of(int k, unsigned bits) {
    peak_impl z = {0};
#if HAVE_X86
    if (!(bits & (1u << k))) return z;
    switch (k) {
    case MK_PEAK_FMA_ZMM: return (peak_impl){fma_zmm, NULL, 16 * 16 * 2, 16, "VFMADD*PS zmm, 16 chains"};
    case MK_PEAK_BF16_ZMM: return (peak_impl){bf16_zmm, bf16_expect, 16 * 16 * 4, 16, "VDPBF16PS zmm, 16 chains"};
    case MK_PEAK_VNNI_ZMM: return (peak_impl){vnni_zmm, vnni_zmm_expect, 16 * 16 * 8, 16, "VPDPBUSD zmm, 16 chains"};
    case MK_PEAK_VNNI_YMM:
        if (bits & VNNI_YMM_VEX)
            return (peak_impl){vnni_ymm_vex, vnni_ymm_vex_expect, 12 * 8 * 8, 12, "VPDPBUSD ymm (VEX), 12 chains"};
        return (peak_impl){vnni_ymm_evex, vnni_ymm_evex_expect, 16 * 8 * 8, 16, "VPDPBUSD ymm (EVEX), 16 chains"};
    default: return z;
    }
#else
    (void)k, (void)bits;
    return z;
#endif
}

/* ---- threads ---- */

typedef struct {
    float *a, *b, *c;
    int64_t n;              /* floats per array */
    int threads, reps, avx2;
    int64_t fma_iters;
    pthread_barrier_t bar;
    pthread_mutex_t go;     /* held while threads start, so the thread count is known before work */
    double t_triad, t_read, t_fma; /* best times (thread 0 writes) */
    double t_fma_sum;              /* the FMA loop's total time over the reps */
    peak_impl peak[MK_PEAK_N];     /* run NULL: not measured */
    int64_t peak_iters[MK_PEAK_N];
    double t_peak[MK_PEAK_N], t_peak_sum[MK_PEAK_N];
    volatile float sink;
} lim_ctx;

typedef struct {
    lim_ctx *x;
    int ith;
    int64_t m;      /* elements of this thread's slice */
    float read_sum; /* its last read-only sum, checked against the triad's output */
    int peak_ok;    /* every peak kernel of this thread gave its expected result */
} lim_arg;

/* One timed phase: all threads start together and the phase ends when the last one is done. */
#define TIMED(x, la, dst_best, dst_sum, body)                                                                     \
    do {                                                                                                         \
        double t0_ = 0;                                                                                          \
        pthread_barrier_wait(&(x)->bar);                                                                         \
        if ((la)->ith == 0) t0_ = now_s();                                                                       \
        body;                                                                                                    \
        pthread_barrier_wait(&(x)->bar);                                                                         \
        if ((la)->ith == 0) {                                                                                    \
            const double dt_ = now_s() - t0_;                                                                    \
            dst_best = fmin(dst_best, dt_);                                                                      \
            dst_sum += dt_;                                                                                      \
        }                                                                                                        \
    } while (0)

static void *lim_worker(void *p) {
    lim_arg *la = p;
    lim_ctx *x = la->x;
    pthread_mutex_lock(&x->go);
    pthread_mutex_unlock(&x->go);
    int64_t i0, i1;
    mk_split_rows(x->n, 1024, x->threads, la->ith, &i0, &i1); /* 4 KiB-aligned slices: no shared lines */
    const int64_t m = i1 - i0;
    float *a = x->a + i0, *b = x->b + i0, *c = x->c + i0;
    /* first touch by the thread that later streams the slice */
    for (int64_t i = 0; i < m; i++) a[i] = 0.0f, b[i] = 1.0f, c[i] = 2.0f;
    float sink = 0, rs = 0;
    double unused = 0;
    la->m = m;
    la->peak_ok = 1;
    for (int r = 0; r < x->reps; r++) {
#if HAVE_X86
        TIMED(x, la, x->t_triad, unused, if (x->avx2) triad_avx2(a, b, c, 3.0f, m); else triad_portable(a, b, c, 3.0f, m));
        TIMED(x, la, x->t_read, unused, rs = x->avx2 ? read_avx2(a, m) : read_portable(a, m));
        TIMED(x, la, x->t_fma, x->t_fma_sum,
              sink += x->avx2 ? fma_avx2(x->fma_iters, (float)r) : fma_portable(x->fma_iters / 8, (float)r));
#else
        TIMED(x, la, x->t_triad, unused, triad_portable(a, b, c, 3.0f, m));
        TIMED(x, la, x->t_read, unused, rs = read_portable(a, m));
        TIMED(x, la, x->t_fma, x->t_fma_sum, sink += fma_portable(x->fma_iters / 8, (float)r));
#endif
        for (int k = 0; k < MK_PEAK_N; k++) {
            const peak_impl *pi = &x->peak[k];
            if (!pi->run) continue;
            double got = 0;
            TIMED(x, la, x->t_peak[k], x->t_peak_sum[k], got = pi->run(x->peak_iters[k], r));
            if (pi->expect) la->peak_ok &= got == pi->expect(x->peak_iters[k], r);
            else la->peak_ok &= isfinite(got);
        }
    }
    (void)unused;
    la->read_sum = rs;
    if (la->ith == 0) x->sink = sink; /* keeps the FMA chains alive */
    return NULL;
}

/* The common run: bandwidth and the fp32 FMA loop, plus the peak classes in `classes`. */
static int measure(const mk_limits_params *p, unsigned classes, mk_limits_ex *ex) {
    memset(ex, 0, sizeof *ex);
    mk_limits *out = &ex->base;
    int threads = p && p->threads > 0 ? p->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    const int64_t bytes = p && p->array_bytes > 0 ? p->array_bytes : (int64_t)256 << 20;
    lim_ctx x = {0};
    x.n = bytes / 4 / 1024 * 1024;
    if (x.n < 1024) x.n = 1024;
    x.threads = threads;
    x.reps = p && p->reps > 0 ? p->reps : 5;
    x.avx2 = x86_avx2();
    x.fma_iters = p && p->fma_iters > 0 ? p->fma_iters : 20000000;
    x.t_triad = x.t_read = x.t_fma = INFINITY;
    const unsigned bits = peak_bits();
    for (int k = 0; k < MK_PEAK_N; k++) {
        x.t_peak[k] = INFINITY;
        if (!(classes & (1u << k))) continue;
        x.peak[k] = peak_impl_of(k, bits);
        if (!x.peak[k].run) continue;
        /* as many instructions as the fp32 FMA loop's 12 per iteration, within the counts where the
         * exact expected sums hold (bf16_zmm: BF16_MAX_ITERS; int32 lanes: 2^23 x 4 per step) */
        const int64_t cap = k == MK_PEAK_BF16_ZMM ? BF16_MAX_ITERS : ((int64_t)1 << 23) - 64;
        int64_t it = x.fma_iters * 12 / x.peak[k].chains;
        it = it < 1 ? 1 : it > cap ? cap : it;
        x.peak_iters[k] = it;
    }
    x.a = aligned_alloc(64, (size_t)x.n * 4);
    x.b = aligned_alloc(64, (size_t)x.n * 4);
    x.c = aligned_alloc(64, (size_t)x.n * 4);
    pthread_t *tid = calloc((size_t)threads, sizeof *tid);
    lim_arg *args = calloc((size_t)threads, sizeof *args);
    int started = 0;
    if (!x.a || !x.b || !x.c || !tid || !args) {
        free(x.a), free(x.b), free(x.c), free(tid), free(args);
        return mtok_err(MTOK_ERESOURCE, "bench limits: out of memory for 3 arrays of %lld bytes", (long long)bytes);
    }
    /* threads that cannot be started are done without: the count is fixed before any work */
    pthread_mutex_init(&x.go, NULL);
    pthread_mutex_lock(&x.go);
    for (int t = 1; t < threads; t++) {
        args[t] = (lim_arg){.x = &x, .ith = t};
        if (pthread_create(&tid[t], NULL, lim_worker, &args[t])) break;
        started++;
    }
    x.threads = threads = started + 1;
    pthread_barrier_init(&x.bar, NULL, (unsigned)threads);
    pthread_mutex_unlock(&x.go);
    args[0] = (lim_arg){.x = &x, .ith = 0};
    lim_worker(&args[0]);
    for (int t = 1; t < threads; t++) pthread_join(tid[t], NULL);
    pthread_barrier_destroy(&x.bar);
    pthread_mutex_destroy(&x.go);
    /* correctness: a = 1 + 3*2 = 7 everywhere, so each read sum is 7 x its slice length */
    out->verified = 1;
    for (int64_t i = 0; i < x.n; i += 4093) out->verified &= x.a[i] == 7.0f;
    for (int t = 0; t < threads; t++) {
        out->verified &= fabs((double)args[t].read_sum - 7.0 * (double)args[t].m) <= 1e-3 * 7.0 * (double)args[t].m;
        out->verified &= args[t].peak_ok;
    }
    out->verified &= isfinite(x.sink);
    out->threads = threads;
    out->avx2 = x.avx2;
    out->array_bytes = x.n * 4;
    out->triad_gbs = 3.0 * 4.0 * (double)x.n / x.t_triad * 1e-9;
    out->read_gbs = 4.0 * (double)x.n / x.t_read * 1e-9;
    /* flops per thread: iters x 12 chains x 8 lanes x 2 (AVX2), or iters/8 x 96 x 2 (portable) */
    const double per_thread = x.avx2 ? (double)x.fma_iters * 12 * 8 * 2 : (double)(x.fma_iters / 8) * 96 * 2;
    out->fma_gflops = per_thread * threads / x.t_fma * 1e-9;
    out->fma_gflops_mean = per_thread * threads * x.reps / x.t_fma_sum * 1e-9;
    for (int k = 0; k < MK_PEAK_N; k++) {
        mk_peak *pk = &ex->peak[k];
        if (k == MK_PEAK_FMA_YMM && (classes & (1u << k)) && x.avx2 && (bits & (1u << k))) {
            pk->available = 1, pk->gops = out->fma_gflops, pk->gops_mean = out->fma_gflops_mean;
            snprintf(pk->insn, sizeof pk->insn, "VFMADD*PS ymm, 12 chains");
            continue;
        }
        if (!x.peak[k].run) continue;
        const double ops = (double)x.peak_iters[k] * x.peak[k].lane_ops * threads;
        pk->available = 1;
        pk->gops = ops / x.t_peak[k] * 1e-9;
        pk->gops_mean = ops * x.reps / x.t_peak_sum[k] * 1e-9;
        snprintf(pk->insn, sizeof pk->insn, "%s", x.peak[k].insn);
    }
    free(x.a), free(x.b), free(x.c), free(tid), free(args);
    return 0;
}

int mk_measure_limits(const mk_limits_params *p, mk_limits *out) {
    mk_limits_ex ex;
    const int rc = measure(p, 0, &ex);
    *out = ex.base;
    return rc;
}

int mk_measure_limits_ex(const mk_limits_params *p, mk_limits_ex *out) {
    return measure(p, (1u << MK_PEAK_N) - 1, out);
}
