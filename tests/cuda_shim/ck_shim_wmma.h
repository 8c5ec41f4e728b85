/* ck_shim_wmma.h — nvcuda::wmma (the warp-level tensor-core API of <mma.h>) for the CPU shim;
 * included by ck_shim.h.
 *
 * Every lane holds the whole tile (num_elements = M*N, M*K or K*N, more than the hardware's per-lane
 * share), so a kernel may only apply the same element-wise operation to every x[i], i < num_elements —
 * which is also all the real API allows, since it leaves the element-to-lane mapping unspecified.
 * mma_sync: d = a·b + c with the products of the bf16/fp16 operands formed in fp32 (exact: 8- or
 * 11-bit mantissas) and summed in fp32 in k order starting from c. The tensor cores' internal
 * summation order differs, so a test compares against a host product with a tolerance, not bits.
 * load_matrix_sync and store_matrix_sync wait for the whole warp first (the "_sync" of the API);
 * stores are done by lane 0 alone and followed by a second warp barrier, so the lanes do not race on
 * the destination and all of them see it afterwards. */
#ifndef MTOK_CK_SHIM_WMMA_H
#define MTOK_CK_SHIM_WMMA_H

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K> struct ck_dims;
template <int M, int N, int K> struct ck_dims<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K> struct ck_dims<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K> struct ck_dims<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};

/* The tile in row-major order of its logical [rows][cols] (A: [M][K], B: [K][N], C: [M][N]); Layout
 * only says how load_matrix_sync reads it from memory. */
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static_assert((M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16),
                  "wmma shapes of bf16/fp16: m16n16k16, m32n8k16, m8n32k16");
    static constexpr int rows = ck_dims<Use, M, N, K>::rows, cols = ck_dims<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    T x[num_elements];
};

template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L> &f, const V &v) {
    for (int i = 0; i < f.num_elements; i++)
        f.x[i] = (T)v;
}

/* matrix_a / matrix_b: the element (r, c) of the logical tile is p[r*ldm + c] (row_major) or
 * p[c*ldm + r] (col_major). */
template <class Use, int M, int N, int K, class T, class L, class S>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L> &f, const S *p, unsigned ldm) {
    static_assert(std::is_same_v<L, row_major> || std::is_same_v<L, col_major>, "operand fragments need a layout");
    __syncwarp();
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] = std::is_same_v<L, row_major> ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T> &f, const T *p, unsigned ldm, layout_t l) {
    __syncwarp();
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            f.x[r * N + c] = l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(T *p, const fragment<accumulator, M, N, K, T> &f, unsigned ldm, layout_t l) {
    __syncwarp();
    if (::ck_shim::lane() == 0)
        for (int r = 0; r < M; r++)
            for (int c = 0; c < N; c++)
                (l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = f.x[r * N + c];
    __syncwarp();
}

inline float ck_operand(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float ck_operand(__half v) { return __half2float(v); }

template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC> &d, const fragment<matrix_a, M, N, K, TA, LA> &a,
                     const fragment<matrix_b, M, N, K, TB, LB> &b, const fragment<accumulator, M, N, K, TC> &c) {
    static_assert(std::is_same_v<TC, float>, "the shim emulates fp32 accumulators only");
    float out[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = c.x[i * N + j];
            for (int k = 0; k < K; k++)
                s += ck_operand(a.x[i * K + k]) * ck_operand(b.x[k * N + j]);
            out[i * N + j] = s;
        }
    for (int i = 0; i < M * N; i++) /* d may be c */
        d.x[i] = out[i];
}

} // namespace wmma
} // namespace nvcuda

#endif
