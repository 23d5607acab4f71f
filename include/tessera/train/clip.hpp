// Gradient clipping by the global L2 norm over every parameter gradient (torch.nn.utils.clip_grad_norm_).
#pragma once
#include <cmath>
#include <string>
#include <type_traits>

#include "tessera/core/param.hpp"

namespace tessera::train {

/// sqrt(sum over all parameters of sum g^2), accumulated in double. Parameters without an allocated
/// gradient contribute nothing. CPU parameters only.
template <class Model>
double grad_norm(Model& model) {
  double sumsq = 0.0;
  for_each_param(model, [&](const std::string&, auto& p) {
    using P = std::remove_reference_t<decltype(p)>;
    static_assert(is_cpu_v<typename decltype(P::grad)::backend>, "grad_norm: CPU parameters only");
    const auto* g = p.grad.data();
    const int64_t n = p.grad.numel();
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    sumsq += s;
  });
  return std::sqrt(sumsq);
}

/// Scale every gradient by `coef` (in the gradient's own type).
template <class Model>
void scale_grads(Model& model, double coef) {
  for_each_param(model, [&](const std::string&, auto& p) {
    using T = std::remove_reference_t<decltype(*p.grad.data())>;
    auto* g = p.grad.data();
    const int64_t n = p.grad.numel();
    const T c = static_cast<T>(coef);
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) g[i] *= c;
  });
}

/// Returns the pre-clip global norm. As PyTorch: coef = max_norm / (norm + 1e-6); gradients are multiplied
/// by coef when coef < 1 (i.e. norm exceeds max_norm, up to the 1e-6). max_norm <= 0 disables clipping
/// (the norm is still returned). A non-finite norm leaves the gradients untouched; callers should treat it
/// as an error (the Trainer stops with a message).
template <class Model>
double clip_grad_norm(Model& model, double max_norm) {
  const double norm = grad_norm(model);
  if (max_norm > 0 && std::isfinite(norm)) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) scale_grads(model, coef);
  }
  return norm;
}

// CUDA (cuda/adamw.cu), device pointers. Clip without a host round trip: grad_sumsq over every gradient into
// one zeroed device double, then clip_scale_grads on every gradient (copy *sumsq to the host for the norm).
/// *sumsq += sum g^2 (accumulated in double, deterministic for a given n).
void grad_sumsq(cuda, double* sumsq, const float* g, int64_t n);
/// g *= coef, coef = max_norm / (sqrt(*sumsq) + 1e-6), when coef < 1, the norm is finite and max_norm > 0
/// (clip_grad_norm's rule).
void clip_scale_grads(cuda, float* g, int64_t n, const double* sumsq, double max_norm);

}  // namespace tessera::train
