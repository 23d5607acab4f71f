// RMSNorm on the GPU: y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps), rows of length D.
//
// Forward and the dx part of backward: one row per warp or block (rows.cuh). The dw reduction over rows
// is deterministic and atomic-free: a tiled kernel writes per-block partial column sums, a second kernel
// adds them in a fixed order.
#include <algorithm>
#include <climits>

#include "check.hpp"
#include "core_util.cuh"
#include "launch.hpp"
#include "rows.cuh"

namespace tessera::cuda_detail {
namespace {

// Out = float, or uint16_t for bf16 (the fp32 value rounded once: what a cast of the fp32 output gives).
template <class Row, class Out>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    rmsnorm_forward_kernel(Out* y, float* rstd, const float* x, const float* w, int64_t N, int D,
                           double eps) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;  // a whole warp (WarpRows); never taken for BlockRow, whose grid is exactly N
  const float* xr = x + row * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) ss += xr[i] * xr[i];
  // eps added and the root taken in double, as on the CPU (one double op per row).
  const float r = static_cast<float>(1.0 / sqrt(static_cast<double>(Row::sum(ss, storage)) / D + eps));
  if (rstd && threadIdx.x == 0) rstd[row] = r;
  Out* yr = y + row * D;  // fp32: may alias x (each element is read and then written by the same thread)
  if (w)
    for (int i = threadIdx.x; i < D; i += Row::kThreads) store_value(yr + i, xr[i] * r * w[i]);
  else
    for (int i = threadIdx.x; i < D; i += Row::kThreads) store_value(yr + i, xr[i] * r);
}

// With g = dy * w (w optional) and r the row's rstd: dx = r * (g - x * r^2 * <g, x> / D) (+ res, a residual
// branch's gradient, when given: the add of a pre-norm residual block in the same pass).
template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    rmsnorm_backward_dx_kernel(float* dx, const float* dy, const float* x, const float* w, const float* rstd,
                               const float* res, int64_t N, int D) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;
  const float* xr = x + row * D;
  const float* dyr = dy + row * D;
  float dot = 0.f;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) dot += dyr[i] * (w ? w[i] : 1.f) * xr[i];
  dot = Row::sum(dot, storage);
  const float r = rstd[row];
  const float c = dot * r * r / static_cast<float>(D);
  float* dxr = dx + row * D;  // may alias dy or res (same-thread read-then-write per element)
  const float* rr = res ? res + row * D : nullptr;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) {
    const float v = r * (dyr[i] * (w ? w[i] : 1.f) - xr[i] * c);
    dxr[i] = rr ? v + rr[i] : v;
  }
}

// dw partial sums. Block (32, 8) owns 32 columns; grid (ceil(D/32), G). Row group g = blockIdx.y takes
// rows g*8 + ty, stepping by 8G. out[g*D + c] (= or += when `add`) gets the group's sum for column c.
constexpr int kTileCols = 32, kTileRows = 8;

__global__ void __launch_bounds__(kTileCols* kTileRows)
    rmsnorm_dw_partial_kernel(float* __restrict__ out, bool add, const float* __restrict__ dy,
                              const float* __restrict__ x, const float* __restrict__ rstd, int64_t N, int D) {
  __shared__ float part[kTileRows][kTileCols + 1];
  const int c = blockIdx.x * kTileCols + threadIdx.x;
  float acc = 0.f;
  if (c < D)
    for (int64_t n = static_cast<int64_t>(blockIdx.y) * kTileRows + threadIdx.y; n < N;
         n += static_cast<int64_t>(gridDim.y) * kTileRows)
      acc += dy[n * D + c] * x[n * D + c] * rstd[n];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float s = 0.f;
    for (int k = 0; k < kTileRows; ++k) s += part[k][threadIdx.x];
    float* o = out + static_cast<int64_t>(blockIdx.y) * D + c;
    *o = add ? *o + s : s;
  }
}

__global__ void sum_partials_kernel(float* __restrict__ dw, const float* __restrict__ partial, int groups,
                                    int D) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= D) return;
  float s = 0.f;
  for (int g = 0; g < groups; ++g) s += partial[static_cast<int64_t>(g) * D + c];
  dw[c] += s;
}

void check_sizes(const char* op, int64_t N, int64_t D) {
  TESSERA_CHECK(N >= 0 && N <= INT_MAX && D > 0 && D <= INT_MAX, op, "(cuda): bad sizes N=", N, " D=", D);
}

}  // namespace

namespace {
template <class Out>
void rmsnorm_forward_any(Out* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                         double eps) {
  check_sizes("rmsnorm_forward", N, D);
  if (N == 0) return;
  dispatch_rows(D, [&](auto row) {
    using Row = decltype(row);
    rmsnorm_forward_kernel<Row, Out>
        <<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(y, rstd, x, w, N, static_cast<int>(D), eps);
  });
  TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}
}  // namespace

void rmsnorm_forward_f32(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                         double eps) {
  rmsnorm_forward_any(y, rstd, x, w, N, D, eps);
}

void rmsnorm_forward_bf16out(uint16_t* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                             double eps) {
  rmsnorm_forward_any(y, rstd, x, w, N, D, eps);
}

void rmsnorm_backward_f32(float* dx, float* dw, const float* dy, const float* x, const float* w,
                          const float* rstd, int64_t N, int64_t D, const float* residual) {
  check_sizes("rmsnorm_backward", N, D);
  if (N == 0) return;
  const int d = static_cast<int>(D);
  // dw first: it reads dy, which dx may overwrite (dx aliasing dy is allowed).
  if (dw) {
    // Enough row groups to fill the GPU, at least 64 rows each; capped to bound the scratch.
    const int groups = static_cast<int>(std::clamp<int64_t>((N + 63) / 64, 1, 256));
    const dim3 grid((d + kTileCols - 1) / kTileCols, groups), block(kTileCols, kTileRows);
    if (groups == 1) {
      rmsnorm_dw_partial_kernel<<<grid, block>>>(dw, true, dy, x, rstd, N, d);
      TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_dw_partial_kernel");
    } else {
      thread_local KeptDeviceBuffer<float> scratch;  // the partial sums, kept across calls
      float* partial = scratch.get(static_cast<size_t>(groups) * D);
      rmsnorm_dw_partial_kernel<<<grid, block>>>(partial, false, dy, x, rstd, N, d);
      TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_dw_partial_kernel");
      sum_partials_kernel<<<(d + 255) / 256, 256>>>(dw, partial, groups, d);
      TESSERA_CUDA_CHECK_LAUNCH("sum_partials_kernel");
    }
  }
  if (dx) {
    dispatch_rows(D, [&](auto row) {
      using Row = decltype(row);
      rmsnorm_backward_dx_kernel<Row>
          <<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(dx, dy, x, w, rstd, residual, N, d);
    });
    TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_backward_dx_kernel");
  }
}

}  // namespace tessera::cuda_detail
