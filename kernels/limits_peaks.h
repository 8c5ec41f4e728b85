/* limits_peaks.h — the compute peak of each instruction class this machine has (kernels/cpu_limits.c),
 * beside the bandwidth limits of mk_limits (kernels.h): the denominators `mtok bench` divides a
 * prefill by. Which class a prefill is measured against is the class its kernels use (cli/cmd_bench.c).
 *
 * Every class is checked at run time (CPUID feature bits and, for the vector state, XCR0: the OS
 * must save the registers) before any of its instructions executes; a class the machine lacks is
 * reported as not available, never measured. */
#ifndef MTOK_LIMITS_PEAKS_H
#define MTOK_LIMITS_PEAKS_H

#include "kernels.h"

enum {
    MK_PEAK_FMA_YMM,   /* VFMADD231PS ymm: 8 lanes x 2 flops (the AVX2 kernels' class) */
    MK_PEAK_FMA_ZMM,   /* VFMADD231PS zmm: 16 lanes x 2 flops (AVX-512F) */
    MK_PEAK_BF16_ZMM,  /* VDPBF16PS zmm: 16 lanes x 2 bf16 pairs x 2 flops (AVX512_BF16) */
    MK_PEAK_VNNI_YMM,  /* VPDPBUSD ymm: 8 lanes x 4 u8*s8 pairs x 2 ops (AVX-VNNI, or AVX512_VNNI+VL) */
    MK_PEAK_VNNI_ZMM,  /* VPDPBUSD zmm: 16 lanes x 4 pairs x 2 ops (AVX512_VNNI) */
    MK_PEAK_N
};

typedef struct {
    int available;      /* 0: the CPU or the OS lacks it; nothing was executed */
    double gops;        /* best rep, 1e9 ops/s over all threads (flops; int8: multiply and add = 2) */
    double gops_mean;   /* the mean over the reps */
    char insn[48];      /* the instruction and encoding that was timed */
} mk_peak;

typedef struct {
    mk_limits base;            /* bandwidth and the fp32 FMA figure of mk_measure_limits */
    mk_peak peak[MK_PEAK_N];
} mk_limits_ex;

/* JSON / text name of a class ("fp32_fma_ymm", "bf16_dot_zmm", ...). */
const char *mk_peak_name(int k);
/* 1 for the integer classes (their unit is GOP/s of int8 multiply-adds, not GFLOP/s). */
int mk_peak_is_int(int k);
/* The classes this CPU and OS can run (bit k set: class k), from CPUID and XCR0. */
unsigned mk_peak_classes(void);
/* mk_measure_limits plus every available peak class, each on every thread. 0 or MTOK_ERESOURCE. */
int mk_measure_limits_ex(const mk_limits_params *p, mk_limits_ex *out);

#endif
