// Decoding-size products on the CPU: y [M, N] = x [M, K] Wᵀ (+ b) for a few rows of x (M <= kStreamedRows),
// W [N, K] in fp32 or bf16 (PyTorch's [out, in] layout), every product and sum in fp32.
//
// Decoding reads every weight once per step for one row of x (or a few, one per sequence of a batch), so
// these products are bound by the bytes of W. The kernel streams W once: each block of weight rows is loaded
// (bf16 widened to fp32 in registers) and multiplied with every row of x while it is in registers, so a batch
// of 4 rows costs about what one row costs. Written by hand because the libraries do not stream: OpenBLAS's
// sgemm reads the weights at a third of its sgemv rate for 2 to 16 rows (benchmarks/RESULTS.md), Eigen has no
// fp32 × bf16 product, and OpenBLAS's sbgemm would round x to bf16 too.
//
// Every output is one fixed-order fp32 sum — per vector lane over K in blocks of 2 lanes, the lanes added,
// the tail of K % (2 lanes) elements, then the bias — whatever M, the row's place in x and the thread count:
// a row gives bit-identical results alone or in a batch. AVX-512 and AVX2 loops, a portable loop otherwise.
//
// bf16: a 2 L-element block of bf16 weights loads as L 32-bit lanes, lane i holding weight 2i in its low half
// and weight 2i + 1 in its high half; a shift by 16 widens the even weights and a mask the odd ones. x is
// split to match once per call (per block, its even elements, then its odd ones).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"

namespace tessera::ops {

/// The most rows of x a streamed product takes.
inline constexpr int64_t kStreamedRows = 16;

namespace streamed_detail {

/// Products of this many weights or more split their output columns over OpenMP threads.
inline constexpr int64_t kParallelMin = int64_t{1} << 16;

inline float widen(float w) {
  return w;
}
inline float widen(uint16_t w) {
  return bf16::to_float(w);
}

#if defined(__AVX512F__)
struct Vec {
  using T = __m512;
  static constexpr int64_t kLanes = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(T a) { return _mm512_reduce_add_ps(a); }
  /// The 2 kLanes weights at p as two vectors (see the file comment for bf16's even / odd order).
  static void load_weights(const float* p, T& lo, T& hi) { lo = load(p), hi = load(p + kLanes); }
  static void load_weights(const uint16_t* p, T& lo, T& hi) {
    const __m512i v = _mm512_loadu_si512(p);
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
};
inline constexpr int kBlockRows = 8;      // weight rows per unit of work
inline constexpr int kChunk = 4;          // rows of x multiplied per pass over a block
inline constexpr int kAccumulators = 32;  // sums per kernel call (spills measured faster than re-reading x)
#elif defined(__AVX2__) && defined(__FMA__)
struct Vec {
  using T = __m256;
  static constexpr int64_t kLanes = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(T a) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
  }
  static void load_weights(const float* p, T& lo, T& hi) { lo = load(p), hi = load(p + kLanes); }
  static void load_weights(const uint16_t* p, T& lo, T& hi) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
};
inline constexpr int kBlockRows = 4;
inline constexpr int kChunk = 2;
inline constexpr int kAccumulators = 8;  // of 16 registers
#else
struct Vec {
  static constexpr int64_t kLanes = 0;  // no vector loop
};
inline constexpr int kBlockRows = 4;
inline constexpr int kChunk = 1;
inline constexpr int kAccumulators = 8;
#endif

/// Weight rows per kernel call for MB rows of x and weights of type W: as many as the accumulator registers
/// hold (a power of two), except one row of x with fp32 weights, where 4 rows streamed together measured
/// faster than 8 (fewer concurrent streams from memory).
template <int MB, class W>
inline constexpr int kKernelRows = (MB == 1 && std::is_same_v<W, float>) ? std::min(4, kBlockRows)
                                   : kAccumulators / MB >= 8             ? std::min(8, kBlockRows)
                                   : kAccumulators / MB >= 4             ? std::min(4, kBlockRows)
                                   : kAccumulators / MB >= 2             ? 2
                                                                         : 1;

/// The length of K's part that the vector loop covers.
inline int64_t vector_body(int64_t K) {
  if constexpr (Vec::kLanes > 0) {
    return K - K % (2 * Vec::kLanes);
  } else {
    return 0;
  }
}

/// x as the vector loop reads it: bf16 weights pair with x split into even / odd elements per block; fp32
/// weights read x itself.
template <class W>
const float* vector_x(const float* x, int64_t M, int64_t K, std::vector<float>& buf) {
  if constexpr (std::is_same_v<W, uint16_t> && Vec::kLanes > 0) {
    constexpr int64_t L = Vec::kLanes;
    const int64_t body = vector_body(K);
    buf.resize(static_cast<size_t>(M * K));
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < body; k += 2 * L)
        for (int64_t i = 0; i < L; ++i) {
          buf[m * K + k + i] = x[m * K + k + 2 * i];
          buf[m * K + k + L + i] = x[m * K + k + 2 * i + 1];
        }
    return buf.data();
  } else {
    return x;
  }
}

/// y[m, n0 + r] for R weight rows from n0 and MB rows of x from m0 (xv: vector_x of x). (V: Vec, a template
/// parameter so that the vector branch is not compiled where there is none.)
template <int R, int MB, class W, class V = Vec>
inline void kernel(float* y, const float* x, const float* xv, const W* w, const float* b, int64_t K,
                   int64_t N, int64_t n0, int64_t m0) {
  float out[R][MB];
  int64_t k = 0;
  if constexpr (V::kLanes > 0) {
    constexpr int64_t L = V::kLanes;
    typename V::T acc[R][MB];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) acc[r][m] = V::zero();
    const int64_t body = vector_body(K);
    for (; k < body; k += 2 * L) {
      typename V::T xe[MB], xo[MB];
      for (int m = 0; m < MB; ++m) {
        xe[m] = V::load(xv + (m0 + m) * K + k);
        xo[m] = V::load(xv + (m0 + m) * K + k + L);
      }
      for (int r = 0; r < R; ++r) {
        typename V::T lo, hi;
        V::load_weights(w + (n0 + r) * K + k, lo, hi);
        for (int m = 0; m < MB; ++m) acc[r][m] = V::fma(xo[m], hi, V::fma(xe[m], lo, acc[r][m]));
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) out[r][m] = V::sum(acc[r][m]);
  } else {
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) {
        const float* xr = x + (m0 + m) * K;
        const W* wr = w + (n0 + r) * K;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < K; ++i) s += xr[i] * widen(wr[i]);
        out[r][m] = s;
      }
    k = K;
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) {
      float s = out[r][m];
      for (int64_t i = k; i < K; ++i) s += x[(m0 + m) * K + i] * widen(w[(n0 + r) * K + i]);
      y[(m0 + m) * N + n0 + r] = b ? s + b[n0 + r] : s;
    }
}

/// Columns [n0, n0 + R) of rows [m0, m0 + MB) of y, in kernel calls of kKernelRows<MB> weight rows.
template <int R, int MB, class W>
inline void chunk(float* y, const float* x, const float* xv, const W* w, const float* b, int64_t K, int64_t N,
                  int64_t n0, int64_t m0) {
  constexpr int RK = std::min(R, kKernelRows<MB, W>);
  static_assert(R % RK == 0);
  for (int r0 = 0; r0 < R; r0 += RK) kernel<RK, MB>(y, x, xv, w, b, K, N, n0 + r0, m0);
}

/// Columns [n0, n0 + R) of every row of y, the rows of x in chunks of up to kChunk (the block's weights stay
/// in L1 / L2 between chunks).
template <int R, class W>
inline void column_block(float* y, const float* x, const float* xv, const W* w, const float* b, int64_t M,
                         int64_t K, int64_t N, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kChunk <= M; m0 += kChunk) chunk<R, kChunk>(y, x, xv, w, b, K, N, n0, m0);
  const int64_t rest = M - m0;
  if constexpr (kChunk > 1) {
    if (rest == 1) chunk<R, 1>(y, x, xv, w, b, K, N, n0, m0);
  }
  if constexpr (kChunk > 2) {
    if (rest == 2) chunk<R, 2>(y, x, xv, w, b, K, N, n0, m0);
  }
  if constexpr (kChunk > 3) {
    if (rest == 3) chunk<R, 3>(y, x, xv, w, b, K, N, n0, m0);
  }
}

/// y [M, N] = x [M, K] widen(w [N, K])ᵀ (+ b); 1 <= M <= kStreamedRows.
template <class W>
void product(float* y, const float* x, const W* w, const float* b, int64_t M, int64_t K, int64_t N) {
  TESSERA_CHECK(M >= 0 && M <= kStreamedRows && K >= 0 && N >= 0, "streamed product: bad size [", M, ", ", K,
                "] x [", N, ", ", K, "] (at most ", kStreamedRows, " rows)");
  if (M == 0 || N == 0) return;
  thread_local std::vector<float> split;  // (thread_local: the OpenMP region below must not name it)
  const float* xv = vector_x<W>(x, M, K, split);
  constexpr int R = kBlockRows;
  const int64_t blocks = N / R;
#pragma omp parallel for schedule(static) if (N * K >= kParallelMin && blocks > 1)
  for (int64_t i = 0; i < blocks; ++i) column_block<R>(y, x, xv, w, b, M, K, N, i * R);
  for (int64_t n = blocks * R; n < N; ++n) column_block<1>(y, x, xv, w, b, M, K, N, n);
}

}  // namespace streamed_detail

/// y [M, N] = x [M, K] wᵀ (+ b [N], may be null), fp32 weights, 1 <= M <= kStreamedRows (see the file
/// comment). linear_forward takes this route for such M.
inline void streamed_linear_forward(const float* x, const float* w, const float* b, float* y, int64_t M,
                                    int64_t K, int64_t N) {
  streamed_detail::product(y, x, w, b, M, K, N);
}
/// The same with bf16 weights (widened exactly; x is not rounded).
inline void streamed_linear_forward(const float* x, const bf16* w, const float* b, float* y, int64_t M,
                                    int64_t K, int64_t N) {
  static_assert(sizeof(bf16) == sizeof(uint16_t) && std::is_standard_layout_v<bf16>);
  streamed_detail::product(y, x, reinterpret_cast<const uint16_t*>(w), b, M, K, N);
}

}  // namespace tessera::ops
