/* k_merge.cu — into = merge(into, from), row by row (cuda/ck.h ck_merge): the log-sum-exp merge of
 * two attention partials over disjoint key sets (context-parallel ranks, KV tiers), with the empty
 * side rules of kernels/mtok_math.h mm_merge_factors (= kernels/cpu_ops.c mk_attn_merge): an empty
 * `from` leaves the row as it is, an empty `into` takes `from` exactly, both empty stays empty (never
 * NaN, whatever the o of an empty side holds).
 *
 * One thread block per row, threads over D. Every thread reads the row's m before any is
 * overwritten: the barrier separates the reads of into.m from thread 0's writes of m and d. */
#include "ck_dev.cuh"

__global__ void __launch_bounds__(128) km_merge(ck_part into, ck_part from, int64_t D) {
    const int64_t r = blockIdx.x;
    const mm_merge_w f = mm_merge_factors(into.m[r], from.m[r]);
    if (f.keep == 1) return; /* `from` is empty: the row stays as it is (the whole block returns) */
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        into.o[r * D + j] = mm_merge_elem(f, into.o[r * D + j], from.o[r * D + j]);
    __syncthreads();
    if (threadIdx.x == 0) {
        into.d[r] = mm_merge_elem(f, into.d[r], from.d[r]);
        into.m[r] = f.m;
    }
}

extern "C" int ck_merge(ck_stream s, ck_part into, ck_part from, int64_t rows, int64_t D) {
    if (rows < 0 || D < 1 || rows > 0x7fffffff) return (int)cudaErrorInvalidValue;
    if (rows == 0) return 0;
    const int threads = D >= 128 ? 128 : (int)((D + 31) / 32 * 32);
    CK_LAUNCH(km_merge, (unsigned)rows, threads, 0, s)(into, from, D);
    return ck_launch_status();
}
