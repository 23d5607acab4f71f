// Softmax cross-entropy over [N, V] logits with integer targets (PyTorch semantics: mean over the rows whose
// target is not ignore_index). Log-sum-exp is taken around each row's max; the loss sum accumulates in double.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"
#include "tessera/ops/eigen.hpp"

namespace tessera::ops {

namespace detail {
inline constexpr int64_t kLossParallelMin = int64_t(1) << 14;  // elements before OpenMP pays

/// Checks every target is in [0, V) or ignore_index; returns the number of counted (non-ignored) rows.
inline int64_t check_ce_targets(const char* what, const int64_t* targets, int64_t N, int64_t V,
                                int64_t ignore_index) {
  int64_t valid = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = targets[n];
    if (t == ignore_index) continue;
    TESSERA_CHECK(t >= 0 && t < V, what, ": target ", t, " of row ", n, " is outside [0, ", V,
                  ") and is not ignore_index (", ignore_index, ")");
    ++valid;
  }
  return valid;
}
}  // namespace detail

/// Returns mean_n (logsumexp(logits[n]) - logits[n, targets[n]]) over rows with targets[n] != ignore_index
/// (0 when there are none). losses [N] (nullable) receives each row's loss, 0 for ignored rows.
template <class T>
double cross_entropy_forward(cpu, std::type_identity_t<T>* losses, const T* logits, const int64_t* targets,
                             int64_t N, int64_t V, int64_t ignore_index = -100) {
  const int64_t valid = detail::check_ce_targets("cross_entropy_forward", targets, N, V, ignore_index);
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (N * V >= detail::kLossParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = targets[n];
    if (t == ignore_index) {
      if (losses) losses[n] = T(0);
      continue;
    }
    const auto row = eig::CMapVec<T>(logits + n * V, V).array();
    const T m = row.maxCoeff();
    const double lse = static_cast<double>(m) + std::log(static_cast<double>((row - m).exp().sum()));
    const double l = lse - static_cast<double>(logits[n * V + t]);
    if (losses) losses[n] = static_cast<T>(l);
    total += l;
  }
  return valid > 0 ? total / static_cast<double>(valid) : 0.0;
}

/// dlogits = (softmax(logits) - onehot(target)) * dloss / n_valid (overwritten); rows with ignored targets are
/// zero. dloss is the gradient of the mean loss returned by cross_entropy_forward.
template <class T>
void cross_entropy_backward(cpu, T* dlogits, const T* logits, const int64_t* targets, int64_t N, int64_t V,
                            double dloss, int64_t ignore_index = -100) {
  const int64_t valid = detail::check_ce_targets("cross_entropy_backward", targets, N, V, ignore_index);
  const T scale = valid > 0 ? static_cast<T>(dloss / static_cast<double>(valid)) : T(0);
#pragma omp parallel for schedule(static) if (N * V >= detail::kLossParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    auto dr = eig::MapVec<T>(dlogits + n * V, V).array();
    const int64_t t = targets[n];
    if (t == ignore_index) {
      dr.setZero();
      continue;
    }
    const auto row = eig::CMapVec<T>(logits + n * V, V).array();
    const T m = row.maxCoeff();
    dr = (row - m).exp();
    dr *= scale / dr.sum();
    dr(t) -= scale;
  }
}

// CUDA (cuda/loss.cu), fp32, device pointers (targets too). The forward synchronises (it returns the mean to
// the host) and throws on a bad target like the CPU version; losses may be null. The backward does not
// synchronise: a row with a target outside [0, V) that is not ignore_index gets NaN gradients instead.
double cross_entropy_forward(cuda, float* losses, const float* logits, const int64_t* targets, int64_t N,
                             int64_t V, int64_t ignore_index = -100);
void cross_entropy_backward(cuda, float* dlogits, const float* logits, const int64_t* targets, int64_t N,
                            int64_t V, double dloss, int64_t ignore_index = -100);

}  // namespace tessera::ops
