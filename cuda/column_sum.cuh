// Internal to tessera::cuda: the deterministic second half of a column reduction. Kernels that reduce the
// rows of an [N, D] product to D column sums (a norm's weight gradients, TimestepNorm's, Megalodon's column
// sums) first write per-group partial sums (a fixed set of rows per group, a function of the sizes only),
// then this kernel adds the groups of each column in a fixed order: the same bits on every run, no atomics.
//
// Block (32, kColumnSumRows) owns 32 columns: thread (x, y) sums groups y, y + kColumnSumRows, ... of column
// x (a warp reads 32 consecutive values of one group), then the kColumnSumRows sums of the column are added
// in order. That keeps kColumnSumRows loads of a column in flight where one thread per column walking every
// group would wait on each in turn.
#pragma once
#include <cstdint>

#include "check.hpp"

namespace tessera::cuda_detail {

/// out[c] += scale * sum over g < groups of in[g * group_stride + c], for c < D (skipped when out is null).
/// T: the partials' type, and the type the column is summed in (float or double).
template <class T>
struct ColumnSumJob {
  const T* in = nullptr;
  float* out = nullptr;
  int64_t group_stride = 0;
};

namespace {

constexpr int kColumnSumRows = 32;

template <class T>
__global__ void __launch_bounds__(32 * kColumnSumRows)
    column_sum_kernel(ColumnSumJob<T> j0, ColumnSumJob<T> j1, int64_t groups, int64_t D, T scale) {
  __shared__ T part[kColumnSumRows][33];
  const ColumnSumJob<T> j = blockIdx.y == 0 ? j0 : j1;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  T s = 0;
  if (c < D && j.out)
    for (int64_t g = threadIdx.y; g < groups; g += kColumnSumRows) s += j.in[g * j.group_stride + c];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < D && j.out) {
    T t = 0;
    for (int k = 0; k < kColumnSumRows; ++k) t += part[k][threadIdx.x];
    j.out[c] += static_cast<float>(scale * t);
  }
}

/// One launch for one or two jobs over the same groups and columns (a null `b.out` leaves b out).
template <class T>
void launch_column_sum(const ColumnSumJob<T>& a, const ColumnSumJob<T>& b, int64_t groups, int64_t D,
                       T scale = T(1)) {
  if (D <= 0 || (!a.out && !b.out)) return;
  TESSERA_CHECK((D + 31) / 32 <= INT32_MAX, "column sum: ", D, " columns exceed the grid");
  const dim3 grid(static_cast<unsigned>((D + 31) / 32), b.out ? 2u : 1u);
  auto kernel = column_sum_kernel<T>;
  kernel<<<grid, dim3(32, kColumnSumRows)>>>(a, b, groups, D, scale);
  TESSERA_CUDA_CHECK_LAUNCH("column_sum_kernel");
}

}  // namespace
}  // namespace tessera::cuda_detail
