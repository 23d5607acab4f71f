// Row-wise softmax on the GPU: y = exp(x - max) / sum(exp(x - max)); backward dx = y * (dy - sum(dy * y)).
// One row per warp or block (rows.cuh); max and sums in fp32, expf (not the fast intrinsic) for CPU parity.
#include <climits>

#include "check.hpp"
#include "launch.hpp"
#include "rows.cuh"

namespace tessera::cuda_detail {
namespace {

template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    softmax_forward_kernel(float* y, const float* x, int64_t N, int D) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;  // a whole warp (WarpRows); never taken for BlockRow
  const float* xr = x + row * D;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) m = fmaxf(m, xr[i]);
  m = Row::max(m, storage);
  float s = 0.f;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) s += expf(xr[i] - m);
  const float inv = 1.f / Row::sum(s, storage);
  float* yr = y + row * D;  // may alias x: each element is read and then written by the same thread
  for (int i = threadIdx.x; i < D; i += Row::kThreads) yr[i] = expf(xr[i] - m) * inv;
}

template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    softmax_backward_kernel(float* dx, const float* dy, const float* y, int64_t N, int D) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;
  const float* yr = y + row * D;
  const float* dyr = dy + row * D;
  float dot = 0.f;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) dot += dyr[i] * yr[i];
  dot = Row::sum(dot, storage);
  float* dxr = dx + row * D;  // may alias dy (same-thread read-then-write per element)
  for (int i = threadIdx.x; i < D; i += Row::kThreads) dxr[i] = yr[i] * (dyr[i] - dot);
}

void check_sizes(const char* op, int64_t N, int64_t D) {
  TESSERA_CHECK(N >= 0 && N <= INT_MAX && D > 0 && D <= INT_MAX, op, "(cuda): bad sizes N=", N, " D=", D);
}

}  // namespace

void softmax_forward_f32(float* y, const float* x, int64_t N, int64_t D) {
  check_sizes("softmax_forward", N, D);
  if (N == 0) return;
  dispatch_rows(D, [&](auto row) {
    using Row = decltype(row);
    softmax_forward_kernel<Row>
        <<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(y, x, N, static_cast<int>(D));
  });
  TESSERA_CUDA_CHECK_LAUNCH("softmax_forward_kernel");
}

void softmax_backward_f32(float* dx, const float* dy, const float* y, int64_t N, int64_t D) {
  check_sizes("softmax_backward", N, D);
  if (N == 0) return;
  dispatch_rows(D, [&](auto row) {
    using Row = decltype(row);
    softmax_backward_kernel<Row>
        <<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(dx, dy, y, N, static_cast<int>(D));
  });
  TESSERA_CUDA_CHECK_LAUNCH("softmax_backward_kernel");
}

}  // namespace tessera::cuda_detail
