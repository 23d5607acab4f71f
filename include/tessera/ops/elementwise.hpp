// Elementwise helpers used by composite layers (residual sums, gradient accumulation).
#pragma once
#include <cstdint>

#include "tessera/core/backend.hpp"
#include "tessera/ops/eigen.hpp"

namespace tessera::ops {

/// y += x over n elements.
template <class T>
void add_inplace(cpu, T* y, const T* x, int64_t n) {
  eig::MapVec<T>(y, n) += eig::CMapVec<T>(x, n);
}
/// z = x + y over n elements.
template <class T>
void add(cpu, T* z, const T* x, const T* y, int64_t n) {
  eig::MapVec<T>(z, n) = eig::CMapVec<T>(x, n) + eig::CMapVec<T>(y, n);
}
/// y *= a over n elements.
template <class T>
void scale_inplace(cpu, T* y, T a, int64_t n) {
  eig::MapVec<T>(y, n) *= a;
}

// CUDA (cuda/elementwise.cu), fp32, device pointers.
void add_inplace(cuda, float* y, const float* x, int64_t n);
void add(cuda, float* z, const float* x, const float* y, int64_t n);
void scale_inplace(cuda, float* y, float a, int64_t n);

}  // namespace tessera::ops
