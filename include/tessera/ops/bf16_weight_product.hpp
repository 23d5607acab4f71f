// Products with weights stored in bf16 on the CPU: weight-only bf16 inference (layers/precision.hpp).
//
//   y[M, N] = x[M, K] float(W[N, K])ᵀ (+ b[N])      x, y, b fp32; W bf16 in PyTorch's [out, in] layout
//
// Every product and every sum is fp32, so y is the fp32 product with the rounded weights, up to the order of
// the sums; x is not rounded.
//   M <= kStreamedRows (decoding): the streamed product (ops/streamed_product.hpp) widens the weights
//     in registers as they stream by, so a decoding step reads 2 bytes per weight instead of 4.
//   larger M (a prompt, a batch): blocks of W's rows are widened into a per-thread fp32 buffer (at most
//     kBf16WeightPanelFloats) and multiplied by ops::gemm; the widening, N K, is small against the M N K of
//     the product.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/matmul.hpp"
#include "tessera/ops/streamed_product.hpp"

namespace tessera::ops {

/// The largest widened block of W (floats) that the gemm route keeps per thread (4 MiB).
inline constexpr int64_t kBf16WeightPanelFloats = int64_t{1} << 20;

/// y [M, N] = x [M, K] float(w [N, K])ᵀ (+ b [N], may be null). See the file comment.
inline void linear_forward_bf16_weight(cpu, float* y, const float* x, const bf16* w, const float* b,
                                       int64_t M, int64_t K, int64_t N) {
  TESSERA_CHECK(M >= 0 && K >= 0 && N >= 0, "linear_forward_bf16_weight: negative size [", M, ", ", K,
                "] x [", N, ", ", K, "]");
  if (M == 0 || N == 0) return;
  if (M <= kStreamedRows) return streamed_linear_forward(x, w, b, y, M, K, N);
  thread_local std::vector<float> panel;
  const int64_t rows = std::clamp<int64_t>(kBf16WeightPanelFloats / std::max<int64_t>(K, 1), 1, N);
  panel.resize(static_cast<size_t>(rows * K));
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t nb = std::min(rows, N - n0);
    cast(cpu{}, panel.data(), w + n0 * K, nb * K);
    gemm(cpu{}, false, true, M, nb, K, 1.0f, x, K, panel.data(), K, 0.0f, y + n0, N);
  }
  if (b) add_row_bias(cpu{}, y, b, M, N);
}

}  // namespace tessera::ops
