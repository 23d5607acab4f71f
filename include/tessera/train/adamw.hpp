// AdamW (decoupled weight decay), exactly torch.optim.AdamW's update. State (m, v) is keyed by the
// reflected parameter name, so it checkpoints under stable keys "m.<name>" / "v.<name>".
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "tessera/core/dtype.hpp"
#include "tessera/core/param.hpp"
#include "tessera/io/safetensors.hpp"

namespace tessera::train {

struct AdamWConfig {
  double lr = 3e-4;  // default lr; step(model, lr) overrides it per step (schedules)
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

/// Which parameters get weight decay: true = decay. Called with the reflected name and the shape.
using DecayFilter = std::function<bool(const std::string& name, const Shape& shape)>;
/// The default: decay matrices and higher-rank tensors (weights, embeddings), not vectors (biases, norm
/// gains) — the GPT-2/llm.c convention.
inline bool decay_rank_ge2(const std::string&, const Shape& s) {
  return s.rank() >= 2;
}
/// Rank >= 2 parameters except those whose name ends with one of `suffixes` (e.g. {"norm.weight", "emb"}).
inline DecayFilter decay_rank_ge2_except(std::vector<std::string> suffixes) {
  return [suffixes = std::move(suffixes)](const std::string& name, const Shape& s) {
    if (s.rank() < 2) return false;
    for (const auto& suf : suffixes)
      if (name.ends_with(suf)) return false;
    return true;
  };
}

/// One AdamW update of n elements, in place (CPU). Per element, in double, then rounded to T:
///   p <- p * (1 - lr*wd)                          (decoupled decay first, as torch)
///   m <- b1*m + (1-b1)*g ;  v <- b2*v + (1-b2)*g^2
///   p <- p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc_i = 1 - b_i^t
/// torch evaluates each of these lines in fp32 with rounding between them; evaluating in double and rounding
/// once makes our result the correctly rounded one, within ~1 ulp (~1e-7 relative) of torch's per step.
/// grad_scale != 1: g is read as T(g * grad_scale) — exactly what scaling the gradients in place first gives
/// (clip_grad_norm's rule), without that extra pass over them; the gradients are left as they are.
template <class T>
void adamw_update(cpu, T* p, const T* g, T* m, T* v, int64_t n, double lr, double beta1, double beta2,
                  double eps, double wd, int64_t t, T grad_scale = T(1)) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t)));
  const double step_size = lr / bc1;
  const double decay = 1.0 - lr * wd;
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const double gi = static_cast<double>(grad_scale == T(1) ? g[i] : static_cast<T>(g[i] * grad_scale));
    const double pi = static_cast<double>(p[i]) * decay;
    // m and v are stored in T, so round them before use, as torch does.
    const T mi = static_cast<T>(beta1 * static_cast<double>(m[i]) + (1.0 - beta1) * gi);
    const T vi = static_cast<T>(beta2 * static_cast<double>(v[i]) + (1.0 - beta2) * gi * gi);
    m[i] = mi;
    v[i] = vi;
    const double denom = std::sqrt(static_cast<double>(vi)) / bc2_sqrt + eps;
    p[i] = static_cast<T>(pi - step_size * static_cast<double>(mi) / denom);
  }
}

/// CUDA (cuda/adamw.cu): the same update on device memory, fused in one kernel, matching the CPU
/// one to the last bit or within 1 ulp (double per element, rounded once, no FMA contraction on the GPU). p_bf16 (nullable, [n]) receives bf16(p) after the update: the
/// compute copy of fp32 master weights.
void adamw_update(cuda, float* p, const float* g, float* m, float* v, int64_t n, double lr, double beta1,
                  double beta2, double eps, double wd, int64_t t, bf16* p_bf16 = nullptr,
                  float grad_scale = 1.f);

/// AdamW over every parameter of a model (walked with for_each_param). State is created (zeroed) on the first
/// step a parameter is seen; the step count t is shared, as torch's per-parameter counts are all equal when
/// every parameter is stepped every time. Parameters whose grad is not allocated are skipped; a gradient or
/// state whose shape differs from the parameter's is an error naming the parameter.
template <class T, class B = cpu>
class AdamW {
  static_assert(is_cpu_v<B> || std::is_same_v<T, float>, "AdamW: the CUDA update is for fp32 master weights");

 public:
  explicit AdamW(AdamWConfig cfg = {}, DecayFilter decay = decay_rank_ge2)
      : cfg_(cfg), decay_(std::move(decay)) {
    TESSERA_CHECK(cfg.beta1 >= 0 && cfg.beta1 < 1, "AdamW: beta1 must be in [0, 1), got ", cfg.beta1);
    TESSERA_CHECK(cfg.beta2 >= 0 && cfg.beta2 < 1, "AdamW: beta2 must be in [0, 1), got ", cfg.beta2);
    TESSERA_CHECK(cfg.eps > 0, "AdamW: eps must be > 0, got ", cfg.eps);
    TESSERA_CHECK(cfg.weight_decay >= 0, "AdamW: weight_decay must be >= 0, got ", cfg.weight_decay);
    TESSERA_CHECK(decay_, "AdamW: the decay filter is empty");
  }

  const AdamWConfig& config() const { return cfg_; }
  /// Number of steps taken (torch's state['step']).
  int64_t steps() const { return t_; }

  /// One step at learning rate `lr` over every parameter of `model` that has a gradient, each gradient read
  /// as T(g * grad_scale) (the clipping coefficient of clip_coefficient: the same update as clip_grad_norm
  /// then step, one pass over the gradients fewer; the gradients themselves are not scaled).
  template <class Model>
  void step(Model& model, double lr, T grad_scale = T(1)) {
    const int64_t t = t_ + 1;
    for_each_param(model, [&](const std::string& name, Param<T, B>& p) {
      if (p.grad.numel() == 0) return;
      TESSERA_CHECK(p.grad.shape() == p.value.shape(), "AdamW: gradient of '", name, "' has shape ",
                    p.grad.shape(), " but the parameter has shape ", p.value.shape());
      Slot& s = slot(name, p.value.shape());
      const double wd = decay_(name, p.value.shape()) ? cfg_.weight_decay : 0.0;
      if constexpr (is_cpu_v<B>)
        adamw_update(B{}, p.value.data(), p.grad.data(), s.m.data(), s.v.data(), p.value.numel(), lr,
                     cfg_.beta1, cfg_.beta2, cfg_.eps, wd, t, grad_scale);
      else {
        // The bf16 copy of a layer that keeps one (keep_bf16_weight_copies), written with the update.
        const bool copy = p.value_bf16.numel() == p.value.numel();
        adamw_update(B{}, p.value.data(), p.grad.data(), s.m.data(), s.v.data(), p.value.numel(), lr,
                     cfg_.beta1, cfg_.beta2, cfg_.eps, wd, t, copy ? p.value_bf16.data() : nullptr,
                     grad_scale);
        p.value_bf16_current = copy;
      }
    });
    t_ = t;
  }
  template <class Model>
  void step(Model& model) {
    step(model, cfg_.lr);
  }

  /// First/second moment of a parameter (nullptr before its first step). For tests and inspection.
  const Tensor<T, B>* m(const std::string& name) const { return find(name, &Slot::m); }
  const Tensor<T, B>* v(const std::string& name) const { return find(name, &Slot::v); }

  /// Add "m.<name>", "v.<name>" for every parameter with state, and metadata "step" (decimal). The writer
  /// borrows the moments (no copy): call w.write() before the next step() or load_state().
  void save_state(io::SafeTensorsWriter& w) const {
    for (const auto& [name, s] : state_) {
      if constexpr (is_cpu_v<B>) {
        w.add_borrowed("m." + name, s.m.view());
        w.add_borrowed("v." + name, s.v.view());
      } else {  // CUDA moments: copied to the host (the writer owns the copies)
        for (const auto& [key, t] : {std::pair{"m." + name, &s.m}, std::pair{"v." + name, &s.v}}) {
          Tensor<T> host;
          host.resize_uninit(t->shape());
          cuda_mem::to_host(host.data(), t->data(), static_cast<size_t>(host.numel()) * sizeof(T));
          w.add(key, host);
        }
      }
    }
    w.set_metadata("step", std::to_string(t_));
  }
  /// Replace the state with the one in `f` for the parameters of `model`: each parameter must have both
  /// moments in the file with its own shape, or neither (a parameter never stepped). Errors name the key.
  template <class Model>
  void load_state(const io::SafeTensorsFile& f, Model& model) {
    const auto& meta = f.metadata();
    auto it = meta.find("step");
    TESSERA_CHECK(it != meta.end(), "optimizer state: metadata field 'step' is missing");
    int64_t t = 0;
    try {
      size_t used = 0;
      t = std::stoll(it->second, &used);
      TESSERA_CHECK(used == it->second.size() && t >= 0, "bad");
    } catch (const std::exception&) {
      throw Error(str("optimizer state: metadata 'step' is not a non-negative integer: '", it->second, "'"));
    }
    std::map<std::string, Slot> loaded;
    for_each_param(model, [&](const std::string& name, Param<T, B>& p) {
      const bool hm = f.contains("m." + name), hv = f.contains("v." + name);
      TESSERA_CHECK(hm == hv, "optimizer state: '", hm ? "m." : "v.", name, "' present without '",
                    hm ? "v." : "m.", name, "'");
      if (!hm) return;
      Slot s{to_backend(f.template read<T>("m." + name)), to_backend(f.template read<T>("v." + name))};
      for (const auto* x : {&s.m, &s.v})
        TESSERA_CHECK(x->shape() == p.value.shape(), "optimizer state: '", (x == &s.m ? "m." : "v."), name,
                      "' has shape ", x->shape(), " but the parameter has shape ", p.value.shape());
      loaded.emplace(name, std::move(s));
    });
    state_ = std::move(loaded);
    t_ = t;
  }

 private:
  struct Slot {
    Tensor<T, B> m, v;
  };
  static Tensor<T, B> to_backend(Tensor<T> host) {
    if constexpr (is_cpu_v<B>) {
      return host;
    } else {
      Tensor<T, B> d;
      d.resize_uninit(host.shape());
      cuda_mem::to_device(d.data(), host.data(), static_cast<size_t>(host.numel()) * sizeof(T));
      return d;
    }
  }
  Slot& slot(const std::string& name, const Shape& shape) {
    auto it = state_.find(name);
    if (it == state_.end()) it = state_.emplace(name, Slot{Tensor<T, B>(shape), Tensor<T, B>(shape)}).first;
    TESSERA_CHECK(it->second.m.shape() == shape, "AdamW: state of '", name, "' has shape ",
                  it->second.m.shape(), " but the parameter has shape ", shape);
    return it->second;
  }
  const Tensor<T, B>* find(const std::string& name, Tensor<T, B> Slot::*which) const {
    auto it = state_.find(name);
    return it == state_.end() ? nullptr : &(it->second.*which);
  }

  AdamWConfig cfg_;
  DecayFilter decay_;
  std::map<std::string, Slot> state_;  // ordered: deterministic file layout
  int64_t t_ = 0;
};

}  // namespace tessera::train
