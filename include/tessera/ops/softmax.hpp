// Row-wise softmax over the last dimension of an [N, D] row-major array, and its backward.
#pragma once
#include <cstdint>

#include "tessera/core/backend.hpp"
#include "tessera/ops/eigen.hpp"

namespace tessera::ops {

namespace detail {
inline constexpr int64_t kSoftmaxParallelMin = int64_t(1) << 14;  // elements before OpenMP pays
}

/// y[n, :] = exp(x[n, :] - max) / sum exp(x[n, :] - max). y may alias x.
template <class T>
void softmax_forward(cpu, T* y, const T* x, int64_t N, int64_t D) {
#pragma omp parallel for schedule(static) if (N * D >= detail::kSoftmaxParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const auto xr = eig::CMapVec<T>(x + n * D, D).array();
    auto yr = eig::MapVec<T>(y + n * D, D).array();
    const T m = xr.maxCoeff();
    yr = (xr - m).exp();
    yr *= T(1) / yr.sum();
  }
}

/// dx = y * (dy - <dy, y>) per row (overwritten; may alias dy).
template <class T>
void softmax_backward(cpu, T* dx, const T* dy, const T* y, int64_t N, int64_t D) {
#pragma omp parallel for schedule(static) if (N * D >= detail::kSoftmaxParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const auto yr = eig::CMapVec<T>(y + n * D, D).array();
    const auto dyr = eig::CMapVec<T>(dy + n * D, D).array();
    const T dot = (dyr * yr).sum();
    eig::MapVec<T>(dx + n * D, D).array() = yr * (dyr - dot);
  }
}

// CUDA (cuda/*.cu), fp32.
void softmax_forward(cuda, float* y, const float* x, int64_t N, int64_t D);
void softmax_backward(cuda, float* dx, const float* dy, const float* y, int64_t N, int64_t D);

}  // namespace tessera::ops
