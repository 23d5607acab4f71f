// Elementwise helpers used by composite layers (residual sums, gradient accumulation), fills and strided
// row copies (constant initialisation of parameters, KV-cache appends) that work on every backend.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
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

/// y[i] = value over n elements.
template <class T>
void fill(cpu, T* y, std::type_identity_t<T> value, int64_t n) {
  std::fill_n(y, n, value);
}
/// Row r of dst (at dst + r * dst_stride) = row r of src (at src + r * src_stride), `cols` elements per row,
/// for r in [0, rows). Strides >= cols; dst and src must not overlap.
template <class T>
void copy_rows(cpu, T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t rows,
               int64_t cols) {
  if (dst_stride == cols && src_stride == cols) {
    if (rows * cols > 0) std::memcpy(dst, src, static_cast<size_t>(rows * cols) * sizeof(T));
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * dst_stride, src + r * src_stride, static_cast<size_t>(cols) * sizeof(T));
}

/// A key/value cache's append (layers/kv_cache.hpp): kdst [rows, kw] = the rows of k (stride k_stride), vdst
/// [rows, vw] those of v, seg_dst[r] = seg ? seg[r] : 0 (segment ids). One launch on CUDA.
template <class T>
void append_kv(cpu, T* kdst, const T* k, int64_t k_stride, int64_t kw, T* vdst, const T* v, int64_t v_stride,
               int64_t vw, int64_t* seg_dst, const int64_t* seg, int64_t rows) {
  copy_rows(cpu{}, kdst, kw, k, k_stride, rows, kw);
  copy_rows(cpu{}, vdst, vw, v, v_stride, rows, vw);
  for (int64_t r = 0; r < rows; ++r) seg_dst[r] = seg ? seg[r] : 0;
}

/// Casts of at least this many elements split over OpenMP threads.
inline constexpr int64_t kCastParallelMin = int64_t{1} << 16;
/// dst = bf16(src) (round to nearest even) / dst = float(src) (exact), n elements: the operand casts of
/// mixed-precision compute and the weight panels of CPU bf16 inference (layers/precision.hpp).
inline void cast(cpu, bf16* dst, const float* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kCastParallelMin)
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16(src[i]);
}
inline void cast(cpu, float* dst, const bf16* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kCastParallelMin)
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// CUDA (cuda/elementwise.cu), fp32, device pointers.
void cast(cuda, bf16* dst, const float* src, int64_t n);
void cast(cuda, float* dst, const bf16* src, int64_t n);
void add_inplace(cuda, float* y, const float* x, int64_t n);
void add(cuda, float* z, const float* x, const float* y, int64_t n);
void scale_inplace(cuda, float* y, float a, int64_t n);
void fill(cuda, float* y, float value, int64_t n);
void copy_rows(cuda, float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
               int64_t cols);
void append_kv(cuda, float* kdst, const float* k, int64_t k_stride, int64_t kw, float* vdst, const float* v,
               int64_t v_stride, int64_t vw, int64_t* seg_dst, const int64_t* seg, int64_t rows);

}  // namespace tessera::ops
