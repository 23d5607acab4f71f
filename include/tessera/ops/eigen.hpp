// Eigen maps over raw row-major buffers: the CPU backend's view of tensors.
#pragma once
#include <Eigen/Core>
#include <cstdint>

namespace tessera::eig {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MapMat = Eigen::Map<Mat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using CMapMat = Eigen::Map<const Mat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using MapVec = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <class T>
using CMapVec = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;

/// rows x cols row-major matrix at p with leading dimension ld (elements between rows).
template <class T>
MapMat<T> mat(T* p, int64_t rows, int64_t cols, int64_t ld) {
  return MapMat<T>(p, rows, cols, Eigen::OuterStride<>(ld));
}
template <class T>
CMapMat<T> mat(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return CMapMat<T>(p, rows, cols, Eigen::OuterStride<>(ld));
}
template <class T>
MapMat<T> mat(T* p, int64_t rows, int64_t cols) {
  return mat(p, rows, cols, cols);
}
template <class T>
CMapMat<T> mat(const T* p, int64_t rows, int64_t cols) {
  return mat(p, rows, cols, cols);
}

}  // namespace tessera::eig
