// Gradient clipping by the global L2 norm over every parameter gradient (torch.nn.utils.clip_grad_norm_).
#pragma once
#include <cmath>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "tessera/core/param.hpp"

namespace tessera::train {

// CUDA (cuda/adamw.cu), device pointers. Clip without a host round trip: grad_sumsq over every gradient into
// one zeroed device double, then clip_scale_grads on every gradient (copy *sumsq to the host for the norm).
/// *sumsq += sum g^2 (accumulated in double, deterministic for a given n).
void grad_sumsq(cuda, double* sumsq, const float* g, int64_t n);
/// The same over many gradients (g[k] of n[k] floats) in a few launches: one per 64 tensors and a final
/// sum, instead of two per tensor (deterministic for given sizes and alignments).
void grad_sumsq(cuda, double* sumsq, std::span<const float* const> g, std::span<const int64_t> n);
/// g *= coef, coef = max_norm / (sqrt(*sumsq) + 1e-6), when coef < 1, the norm is finite and max_norm > 0
/// (clip_grad_norm's rule).
void clip_scale_grads(cuda, float* g, int64_t n, const double* sumsq, double max_norm);

namespace clip_detail {
/// True for a model declaring `using backend = cuda`.
template <class M>
constexpr bool model_on_cuda() {
  if constexpr (requires { typename M::backend; })
    return !is_cpu_v<typename M::backend>;
  else
    return false;
}
template <class P>
inline constexpr bool on_cuda = !is_cpu_v<typename std::remove_reference_t<decltype(std::declval<P&>().grad)>::backend>;

/// Sum of squares of every CUDA gradient in one device double (nullptr result for a CPU model).
template <class Model>
bool device_sumsq(Model& model, Tensor<double, cuda>& acc) {
  bool any = false;
  std::vector<const float*> grads;
  std::vector<int64_t> sizes;
  for_each_param(model, [&](const std::string&, auto& p) {
    if constexpr (on_cuda<std::remove_reference_t<decltype(p)>>) {
      if (!any) acc.resize({1});  // zeroed
      any = true;
      if (p.grad.numel()) grads.push_back(p.grad.data()), sizes.push_back(p.grad.numel());
    }
  });
  if (!grads.empty()) grad_sumsq(cuda{}, acc.data(), grads, sizes);
  return any;
}
}  // namespace clip_detail

/// sqrt(sum over all parameters of sum g^2), accumulated in double. Parameters without an allocated
/// gradient contribute nothing. CUDA parameters are reduced on the device (one copy of the total back).
template <class Model>
double grad_norm(Model& model) {
  double sumsq = 0.0;
  if constexpr (clip_detail::model_on_cuda<Model>()) {
    Tensor<double, cuda> acc;
    if (clip_detail::device_sumsq(model, acc)) cuda_mem::to_host(&sumsq, acc.data(), sizeof(double));
  } else {
    for_each_param(model, [&](const std::string&, auto& p) {
      using P = std::remove_reference_t<decltype(p)>;
      static_assert(is_cpu_v<typename decltype(P::grad)::backend>,
                    "grad_norm: a CUDA parameter in a model whose `backend` is not cuda");
      const auto* g = p.grad.data();
      const int64_t n = p.grad.numel();
      double s = 0.0;
#pragma omp parallel for reduction(+ : s) if (n > (1 << 16))
      for (int64_t i = 0; i < n; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
      sumsq += s;
    });
  }
  return std::sqrt(sumsq);
}

/// Scale every gradient by `coef` (in the gradient's own type).
template <class Model>
void scale_grads(Model& model, double coef) {
  static_assert(!clip_detail::model_on_cuda<Model>(),
                "scale_grads: CPU models only (CUDA models clip on the device in clip_grad_norm)");
  for_each_param(model, [&](const std::string&, auto& p) {
    using T = std::remove_reference_t<decltype(*p.grad.data())>;
    auto* g = p.grad.data();
    const int64_t n = p.grad.numel();
    const T c = static_cast<T>(coef);
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) g[i] *= c;
  });
}

/// The factor clip_grad_norm(model, max_norm) multiplies every gradient by, for a model whose global norm is
/// `norm`, in the gradients' type: max_norm / (norm + 1e-6) where that is < 1 (max_norm > 0, norm finite),
/// else 1. AdamW::step(model, lr, clip_coefficient(grad_norm(model), max_norm)) takes the same step as
/// clip_grad_norm then step, without the pass that scales the gradients in place (they stay unscaled).
template <class T = float>
T clip_coefficient(double norm, double max_norm) {
  if (!(max_norm > 0) || !std::isfinite(norm)) return T(1);
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? static_cast<T>(coef) : T(1);
}

/// Returns the pre-clip global norm. As PyTorch: coef = max_norm / (norm + 1e-6); gradients are multiplied
/// by coef when coef < 1 (i.e. norm exceeds max_norm, up to the 1e-6). max_norm <= 0 disables clipping
/// (the norm is still returned). A non-finite norm leaves the gradients untouched; callers should treat it
/// as an error (the Trainer stops with a message).
template <class Model>
double clip_grad_norm(Model& model, double max_norm) {
  if constexpr (clip_detail::model_on_cuda<Model>()) {
    Tensor<double, cuda> acc;
    double sumsq = 0.0;
    if (!clip_detail::device_sumsq(model, acc)) return 0.0;
    for_each_param(model, [&](const std::string&, auto& p) {
      if (p.grad.numel()) clip_scale_grads(cuda{}, p.grad.data(), p.grad.numel(), acc.data(), max_norm);
    });
    cuda_mem::to_host(&sumsq, acc.data(), sizeof(double));
    return std::sqrt(sumsq);
  } else {
    const double norm = grad_norm(model);
    if (max_norm > 0 && std::isfinite(norm)) {
      const double coef = max_norm / (norm + 1e-6);
      if (coef < 1.0) scale_grads(model, coef);
    }
    return norm;
  }
}

}  // namespace tessera::train
