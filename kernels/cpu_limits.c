/* cpu_limits.c — this machine's physical limits, the denominators of every figure `mtok bench`
 * prints: STREAM-style triad and read-only memory bandwidth, and fp32 FMA peak, on all cores.
 *
 * Threads are plain pthreads (not OpenMP) so that the measurement can run in a forked child after
 * the parent's OpenMP pool exists (libgomp does not survive fork) and so its arrays never count in
 * the parent's peak RSS. Each kernel runs `reps` times between two barriers; the best time counts
 * (on a shared machine the slow runs measure the neighbours, not the hardware).
 *
 * Counting follows STREAM: triad a = b + s*c moves 3 arrays (the write-allocate read of a is not
 * counted); read-only sums one array. The FMA kernel keeps 12 independent 8-wide FMA chains per
 * thread, enough to cover a 4-5 cycle latency on two FMA ports. The AVX2 versions are compiled
 * through function target attributes and only called after a CPU check. */
#include <math.h>
#include <pthread.h>
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
#else
static int x86_avx2(void) { return 0; }
#endif

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
    volatile float sink;
} lim_ctx;

typedef struct {
    lim_ctx *x;
    int ith;
    int64_t m;      /* elements of this thread's slice */
    float read_sum; /* its last read-only sum, checked against the triad's output */
} lim_arg;

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
    la->m = m;
    for (int r = 0; r < x->reps; r++) {
        double t0 = 0;
        pthread_barrier_wait(&x->bar);
        if (la->ith == 0) t0 = now_s();
#if HAVE_X86
        if (x->avx2) triad_avx2(a, b, c, 3.0f, m);
        else
#endif
            triad_portable(a, b, c, 3.0f, m);
        pthread_barrier_wait(&x->bar);
        if (la->ith == 0) x->t_triad = fmin(x->t_triad, now_s() - t0);
        pthread_barrier_wait(&x->bar);
        if (la->ith == 0) t0 = now_s();
#if HAVE_X86
        if (x->avx2) rs = read_avx2(a, m);
        else
#endif
            rs = read_portable(a, m);
        pthread_barrier_wait(&x->bar);
        if (la->ith == 0) x->t_read = fmin(x->t_read, now_s() - t0);
        pthread_barrier_wait(&x->bar);
        if (la->ith == 0) t0 = now_s();
#if HAVE_X86
        if (x->avx2) sink += fma_avx2(x->fma_iters, (float)r);
        else
#endif
            sink += fma_portable(x->fma_iters / 8, (float)r);
        pthread_barrier_wait(&x->bar);
        if (la->ith == 0) {
            const double dt = now_s() - t0;
            x->t_fma = fmin(x->t_fma, dt);
            x->t_fma_sum += dt;
        }
    }
    la->read_sum = rs;
    if (la->ith == 0) x->sink = sink; /* keeps the FMA chains alive */
    return NULL;
}

int mk_measure_limits(const mk_limits_params *p, mk_limits *out) {
    memset(out, 0, sizeof *out);
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
    for (int t = 0; t < threads; t++)
        out->verified &= fabs((double)args[t].read_sum - 7.0 * (double)args[t].m) <= 1e-3 * 7.0 * (double)args[t].m;
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
    free(x.a), free(x.b), free(x.c), free(tid), free(args);
    return 0;
}
