// Row normalisations over the last dimension: RMSNorm (Llama / Hugging Face convention) and LayerNorm.
// x, y, dx, dy are [N, D] row-major; per-row statistics (mean, rstd) are [N] and saved for backward.
// Optional (nullable) pointers are std::type_identity_t<T>* so that a plain nullptr does not break deduction.
// Row statistics are reduced in T (Eigen's vectorised sums); eps is added and the rsqrt taken in double.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/ops/eigen.hpp"

namespace tessera::ops {

namespace detail {
inline constexpr int64_t kNormParallelMin = int64_t(1) << 15;  // elements before OpenMP pays

/// out[d] += sum_n a[n, d] * b[n, d] * s[n] (b and s optional), parallel over column blocks: no races and a
/// summation order (row order) independent of the thread count.
template <class T>
void norm_colsum(T* out, const T* a, const T* b, const T* s, int64_t N, int64_t D) {
  constexpr int64_t kBlock = 256;
  const int64_t nblocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * D >= kNormParallelMin && nblocks > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t d0 = blk * kBlock, d1 = std::min(D, d0 + kBlock);
    for (int64_t n = 0; n < N; ++n) {
      const T* ar = a + n * D;
      const T sn = s ? s[n] : T(1);
      if (b) {
        const T* br = b + n * D;
        for (int64_t d = d0; d < d1; ++d) out[d] += ar[d] * br[d] * sn;
      } else {
        for (int64_t d = d0; d < d1; ++d) out[d] += ar[d] * sn;
      }
    }
  }
}
}  // namespace detail

// ---- RMSNorm --------------------------------------------------------------------------------------

/// y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps); w [D] may be null (no affine).
template <class T>
void rmsnorm_forward(cpu, T* y, std::type_identity_t<T>* rstd, const T* x, const std::type_identity_t<T>* w,
                     int64_t N, int64_t D, double eps) {
#pragma omp parallel for schedule(static) if (N * D >= detail::kNormParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const auto xr = eig::CMapVec<T>(x + n * D, D).array();
    const double ms = static_cast<double>(xr.square().sum()) / static_cast<double>(D);
    const T r = static_cast<T>(1.0 / std::sqrt(ms + eps));
    auto yr = eig::MapVec<T>(y + n * D, D).array();
    if (w) yr = xr * r * eig::CMapVec<T>(w, D).array();
    else yr = xr * r;
    if (rstd) rstd[n] = r;
  }
}

/// With g = dy * w: dx = rstd * (g - x * rstd^2 * <g, x> / D) (overwritten, skipped when null), plus
/// `residual` [N, D] when given (a pre-norm residual block's other gradient branch, added in the same pass:
/// the sum rounds as a separate add would); dw += sum_rows dy * x * rstd (skipped when null). dx must not
/// alias dy or x (dw reads them afterwards); it may alias residual.
template <class T>
void rmsnorm_backward(cpu, std::type_identity_t<T>* dx, std::type_identity_t<T>* dw, const T* dy, const T* x,
                      const std::type_identity_t<T>* w, const T* rstd, int64_t N, int64_t D,
                      const std::type_identity_t<T>* residual = nullptr) {
  if (dx) {
#pragma omp parallel for schedule(static) if (N * D >= detail::kNormParallelMin)
    for (int64_t n = 0; n < N; ++n) {
      const auto xr = eig::CMapVec<T>(x + n * D, D).array();
      const auto dyr = eig::CMapVec<T>(dy + n * D, D).array();
      auto dxr = eig::MapVec<T>(dx + n * D, D).array();
      const T r = rstd[n];
      const T* res = residual ? residual + n * D : nullptr;
      if (res && residual == dx) {  // aliased: keep the residual row before dx's is written
        static thread_local std::vector<T> kept;
        kept.assign(res, res + D);
        res = kept.data();
      }
      if (w) {
        const auto wr = eig::CMapVec<T>(w, D).array();
        const T c = (dyr * wr * xr).sum() * r * r / static_cast<T>(D);
        dxr = r * (dyr * wr - xr * c);
      } else {
        const T c = (dyr * xr).sum() * r * r / static_cast<T>(D);
        dxr = r * (dyr - xr * c);
      }
      if (res) dxr += eig::CMapVec<T>(res, D).array();
    }
  }
  if (dw) detail::norm_colsum(dw, dy, x, rstd, N, D);
}

// ---- LayerNorm ------------------------------------------------------------------------------------

/// y = (x - mean) * rstd * w + b with rstd = 1 / sqrt(var + eps) (biased variance, two-pass);
/// w and b [D] may be null. mean/rstd [N] are written when non-null (backward needs both).
template <class T>
void layernorm_forward(cpu, T* y, std::type_identity_t<T>* mean, std::type_identity_t<T>* rstd, const T* x,
                       const std::type_identity_t<T>* w, const std::type_identity_t<T>* b, int64_t N, int64_t D,
                       double eps) {
#pragma omp parallel for schedule(static) if (N * D >= detail::kNormParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const auto xr = eig::CMapVec<T>(x + n * D, D).array();
    const T mu = xr.sum() / static_cast<T>(D);
    const double var = static_cast<double>((xr - mu).square().sum()) / static_cast<double>(D);
    const T r = static_cast<T>(1.0 / std::sqrt(var + eps));
    auto yr = eig::MapVec<T>(y + n * D, D).array();
    yr = (xr - mu) * r;
    if (w) yr *= eig::CMapVec<T>(w, D).array();
    if (b) yr += eig::CMapVec<T>(b, D).array();
    if (mean) mean[n] = mu;
    if (rstd) rstd[n] = r;
  }
}

/// With xhat = (x - mean) * rstd and g = dy * w: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
/// (overwritten, skipped when null); dw += sum_rows dy * xhat, db += sum_rows dy (each skipped when null).
template <class T>
void layernorm_backward(cpu, std::type_identity_t<T>* dx, std::type_identity_t<T>* dw,
                        std::type_identity_t<T>* db, const T* dy, const T* x, const std::type_identity_t<T>* w,
                        const T* mean, const T* rstd, int64_t N, int64_t D) {
  const T inv_d = T(1) / static_cast<T>(D);
  if (dx) {
#pragma omp parallel for schedule(static) if (N * D >= detail::kNormParallelMin)
    for (int64_t n = 0; n < N; ++n) {
      const auto xr = eig::CMapVec<T>(x + n * D, D).array();
      const auto dyr = eig::CMapVec<T>(dy + n * D, D).array();
      auto dxr = eig::MapVec<T>(dx + n * D, D).array();
      const T mu = mean[n], r = rstd[n];
      if (w) {
        const auto g = dyr * eig::CMapVec<T>(w, D).array();
        const T mg = g.sum() * inv_d, mgx = (g * (xr - mu)).sum() * r * inv_d;
        dxr = r * (g - mg - (xr - mu) * (r * mgx));
      } else {
        const T mg = dyr.sum() * inv_d, mgx = (dyr * (xr - mu)).sum() * r * inv_d;
        dxr = r * (dyr - mg - (xr - mu) * (r * mgx));
      }
    }
  }
  if (dw) {
    // dw[d] += sum_n dy[n,d] * (x[n,d] - mean[n]) * rstd[n], column blocks as in norm_colsum.
    constexpr int64_t kBlock = 256;
    const int64_t nblocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * D >= detail::kNormParallelMin && nblocks > 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t d0 = blk * kBlock, d1 = std::min(D, d0 + kBlock);
      for (int64_t n = 0; n < N; ++n) {
        const T* xr = x + n * D;
        const T* dyr = dy + n * D;
        const T mu = mean[n], r = rstd[n];
        for (int64_t d = d0; d < d1; ++d) dw[d] += dyr[d] * (xr[d] - mu) * r;
      }
    }
  }
  if (db) detail::norm_colsum<T>(db, dy, nullptr, nullptr, N, D);
}

// CUDA (cuda/*.cu), fp32.
void rmsnorm_forward(cuda, float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                     double eps);
/// y in bf16: the fp32 result rounded once (a cast of the fp32 op's y), for a bf16 GEMM that reads only
/// bf16(y).
void rmsnorm_forward(cuda, bf16* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                     double eps);
void rmsnorm_backward(cuda, float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t D, const float* residual = nullptr);
// LayerNorm (cuda/loss.cu). dw/db are reduced without atomics (deterministic); dx may alias dy.
void layernorm_forward(cuda, float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                       int64_t N, int64_t D, double eps);
void layernorm_backward(cuda, float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                        const float* mean, const float* rstd, int64_t N, int64_t D);

}  // namespace tessera::ops
