// Products with weights stored in bf16 on the CPU: weight-only bf16 inference (layers/precision.hpp).
//
//   y[M, N] = x[M, K] float(W[N, K])ᵀ (+ b[N])      x, y, b fp32; W bf16 in PyTorch's [out, in] layout
//
// Every product and every sum is fp32, so y is the fp32 product with the rounded weights, up to the order of
// the sums; x is not rounded. Written by hand because neither library does it: Eigen multiplies its
// bfloat16 matrices element by element through scalar conversions, and OpenBLAS's sbgemm wants bf16 on both
// sides (it would round x as well).
//
//   M <= kBf16WeightDirectRows (decoding): each weight row is widened to fp32 in registers as it streams by
//     (bf16 is the top half of an fp32, so widening is a shift or a mask) and multiplied with every row of x.
//     A matrix-vector product then reads 2 bytes per weight instead of 4: batch-1 decoding is bound by those
//     bytes. AVX-512 and AVX2 loops, a portable one otherwise. Output columns go to OpenMP threads in blocks
//     of weight rows; each output is one thread's fixed-order sum, so the result does not depend on the
//     thread count.
//   larger M (a prompt, a batch): blocks of W's rows are widened into a per-thread fp32 buffer (at most
//     kBf16WeightPanelFloats) and multiplied by ops::gemm; the widening, N K, is small against the M N K of
//     the product.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"
#include "tessera/ops/matmul.hpp"

namespace tessera::ops {

/// Up to this many rows of x take the streaming kernel; more rows widen W and call gemm.
inline constexpr int64_t kBf16WeightDirectRows = 16;
/// The largest widened block of W (floats) that the gemm route keeps per thread (4 MiB).
inline constexpr int64_t kBf16WeightPanelFloats = int64_t{1} << 20;

namespace detail {

/// Products of this many weights or more split their output columns over OpenMP threads.
inline constexpr int64_t kBf16WeightParallelMin = int64_t{1} << 16;

inline float widen_bf16(uint16_t b) {
  return bf16::to_float(b);
}

// The vector loops load 2 L bf16 weights as L 32-bit lanes: lane i holds weight 2i in its low half and
// weight 2i + 1 in its high half, so a shift by 16 widens the even weights and a mask the odd ones (two
// instructions per 2 L weights). x is split the same way once per call: per block of 2 L elements, its even
// elements, then its odd ones (split_x).
#if defined(__AVX512F__)
inline constexpr int64_t kLanes = 16;
inline constexpr int kBlockRows = 8;  // weight rows per unit of work: 16 accumulators of 32
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr int64_t kLanes = 8;
inline constexpr int kBlockRows = 4;  // 8 accumulators of 16 registers
#else
inline constexpr int64_t kLanes = 0;  // no vector loop: x is used as it is
inline constexpr int kBlockRows = 4;
#endif

/// The even/odd split of a row of x [K] (its first K - K % (2 kLanes) elements) into xs.
inline void split_x(const float* x, int64_t K, float* xs) {
  if constexpr (kLanes > 0) {
    const int64_t body = K - K % (2 * kLanes);
    for (int64_t k = 0; k < body; k += 2 * kLanes)
      for (int64_t i = 0; i < kLanes; ++i) {
        xs[k + i] = x[k + 2 * i];
        xs[k + kLanes + i] = x[k + 2 * i + 1];
      }
  }
}

/// out[r] = sum_k x[k] float(w[r][k]) for R weight rows of K elements; xs = split_x(x).
template <int R>
inline void dot_bf16_rows(const float* x, const float* xs, const uint16_t* const* w, int64_t K, float* out) {
  int64_t k = 0;
#if defined(__AVX512F__)
  __m512 a[R], b[R];
  for (int r = 0; r < R; ++r) a[r] = b[r] = _mm512_setzero_ps();
  const __m512i odd = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (; k + 32 <= K; k += 32) {  // even and odd weights: two independent FMA chains per row
    const __m512 xe = _mm512_loadu_ps(xs + k), xo = _mm512_loadu_ps(xs + k + 16);
    for (int r = 0; r < R; ++r) {
      const __m512i v = _mm512_loadu_si512(w[r] + k);
      a[r] = _mm512_fmadd_ps(xe, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), a[r]);
      b[r] = _mm512_fmadd_ps(xo, _mm512_castsi512_ps(_mm512_and_si512(v, odd)), b[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r], b[r]));
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 a[R], b[R];
  for (int r = 0; r < R; ++r) a[r] = b[r] = _mm256_setzero_ps();
  const __m256i odd = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  for (; k + 16 <= K; k += 16) {
    const __m256 xe = _mm256_loadu_ps(xs + k), xo = _mm256_loadu_ps(xs + k + 8);
    for (int r = 0; r < R; ++r) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + k));
      a[r] = _mm256_fmadd_ps(xe, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), a[r]);
      b[r] = _mm256_fmadd_ps(xo, _mm256_castsi256_ps(_mm256_and_si256(v, odd)), b[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m256 s = _mm256_add_ps(a[r], b[r]);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    out[r] = _mm_cvtss_f32(q);
  }
#else
  (void)xs;
  for (int r = 0; r < R; ++r) {
    float s = 0;
    const uint16_t* wr = w[r];
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < K; ++i) s += x[i] * widen_bf16(wr[i]);
    out[r] = s;
  }
  k = K;
#endif
  for (; k < K; ++k)  // the tail the vector loop leaves (K not a multiple of its width)
    for (int r = 0; r < R; ++r) out[r] += x[k] * widen_bf16(w[r][k]);
}

/// Output columns [n0, n0 + R) of every row of y (the streaming kernel's unit of work); xs: split_x of
/// every row of x.
template <int R>
inline void bf16_weight_block(float* y, const float* x, const float* xs, const uint16_t* w, const float* b,
                              int64_t M, int64_t K, int64_t N, int64_t n0) {
  const uint16_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = w + (n0 + r) * K;
  float out[R];
  for (int64_t m = 0; m < M; ++m) {  // the block's weight rows stay in L1/L2 across the rows of x
    dot_bf16_rows<R>(x + m * K, xs + m * K, rows, K, out);
    for (int r = 0; r < R; ++r) y[m * N + n0 + r] = b ? out[r] + b[n0 + r] : out[r];
  }
}

}  // namespace detail

/// y [M, N] = x [M, K] float(w [N, K])ᵀ (+ b [N], may be null). See the file comment.
inline void linear_forward_bf16_weight(cpu, float* y, const float* x, const bf16* w, const float* b,
                                       int64_t M, int64_t K, int64_t N) {
  TESSERA_CHECK(M >= 0 && K >= 0 && N >= 0, "linear_forward_bf16_weight: negative size [", M, ", ", K,
                "] x [", N, ", ", K, "]");
  if (M == 0 || N == 0) return;
  static_assert(sizeof(bf16) == sizeof(uint16_t));
  const uint16_t* wb = &w->bits;
  thread_local std::vector<float> scratch;  // (thread_local: OpenMP regions below must not name it)
  if (M <= kBf16WeightDirectRows) {
    constexpr int R = detail::kBlockRows;
    scratch.resize(static_cast<size_t>(M * K));
    float* xs = scratch.data();
    for (int64_t m = 0; m < M; ++m) detail::split_x(x + m * K, K, xs + m * K);
    const int64_t blocks = N / R;
#pragma omp parallel for schedule(static) if (N * K >= detail::kBf16WeightParallelMin && blocks > 1)
    for (int64_t i = 0; i < blocks; ++i) detail::bf16_weight_block<R>(y, x, xs, wb, b, M, K, N, i * R);
    for (int64_t n = blocks * R; n < N; ++n) detail::bf16_weight_block<1>(y, x, xs, wb, b, M, K, N, n);
    return;
  }
  std::vector<float>& panel = scratch;
  const int64_t rows = std::clamp<int64_t>(kBf16WeightPanelFloats / std::max<int64_t>(K, 1), 1, N);
  panel.resize(static_cast<size_t>(rows * K));
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t nb = std::min(rows, N - n0);
    const uint16_t* src = wb + n0 * K;
    const int64_t count = nb * K;
    float* dst = panel.data();
#pragma omp parallel for schedule(static) if (count >= detail::kBf16WeightParallelMin)
    for (int64_t i = 0; i < count; ++i) dst[i] = detail::widen_bf16(src[i]);
    gemm(cpu{}, false, true, M, nb, K, 1.0f, x, K, dst, K, 0.0f, y + n0, N);
  }
  if (b) add_row_bias(cpu{}, y, b, M, N);
}

}  // namespace tessera::ops
