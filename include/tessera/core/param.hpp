// Parameters and their reflection. A layer's parameters are a plain Boost.Hana struct of Param fields;
// composites expose their children by name. Walking a model yields (dotted.name, Param&) pairs —
// checkpoint keys, optimizer state, clipping and parameter counts all come from this one walk.
#pragma once
#include <boost/hana/accessors.hpp>
#include <boost/hana/define_struct.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/pair.hpp>
#include <boost/hana/string.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "tessera/core/dtype.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera {

/// A trainable tensor and its gradient (allocated on demand by allocate_grads).
template <class T, class B = cpu>
struct Param {
  using value_type = T;
  using backend = B;
  Tensor<T, B> value;
  Tensor<T, B> grad;
  /// bf16 mixed precision, opt-in (keep_bf16_weight_copies in layers/precision.hpp): bf16(value), written by
  /// the optimizer together with its update, so that the next forward reads it instead of casting the fp32
  /// value again. Used only while value_bf16_current is true: the optimizer sets it, and whatever else writes
  /// value must clear it (the library's loads, initialisations and copies do; see mark_values_changed).
  Tensor<bf16, B> value_bf16;
  bool value_bf16_current = false;
  /// Allocate the value (zeroed); an unallocated Param is absent from the walk (e.g. no bias).
  void resize(Shape s) {
    value.resize(s);
    value_bf16_current = false;
  }
  bool present() const { return value.numel() > 0; }
};

inline std::string join_name(std::string_view prefix, std::string_view name) {
  if (prefix.empty()) return std::string(name);
  if (name.empty()) return std::string(prefix);
  std::string s(prefix);
  s += '.';
  s += name;
  return s;
}

template <class L>
concept HasParams = requires(L& l) { l.params; };
template <class L>
concept HasChildren = requires(L& l) { l.for_each_child([](std::string_view, auto&) {}); };

/// Visit every present Param of `layer` (and, recursively, of its children) as f(dotted_name, param).
/// Order is declaration order, so it is deterministic (RNG init and optimizer state depend on it).
template <class L, class F>
void for_each_param(L& layer, std::string_view prefix, F&& f) {
  if constexpr (HasParams<L>) {
    auto& ps = layer.params;
    using P = std::remove_const_t<std::remove_reference_t<decltype(ps)>>;
    boost::hana::for_each(boost::hana::accessors<P>(), [&](auto acc) {
      auto& p = boost::hana::second(acc)(ps);
      if (p.present()) f(join_name(prefix, boost::hana::to<const char*>(boost::hana::first(acc))), p);
    });
  }
  if constexpr (HasChildren<L>) {
    layer.for_each_child([&](std::string_view name, auto& child) { for_each_param(child, join_name(prefix, name), f); });
  }
}
template <class L, class F>
void for_each_param(L& layer, F&& f) {
  for_each_param(layer, "", std::forward<F>(f));
}

/// Allocate (and zero) every gradient buffer.
template <class L>
void allocate_grads(L& layer) {
  for_each_param(layer, [](const std::string&, auto& p) { p.grad.resize(p.value.shape()); });
}
/// Zero every gradient buffer (allocating if needed).
template <class L>
void zero_grads(L& layer) {
  for_each_param(layer, [](const std::string&, auto& p) {
    if (p.grad.shape() == p.value.shape()) p.grad.zero();
    else p.grad.resize(p.value.shape());
  });
}
/// A zero_grads_async in flight. join() — or the destructor — orders the zeroing before the work queued next:
/// call it before anything reads, writes or frees a gradient (the backward pass). CPU: nothing to wait for.
template <class B>
class [[nodiscard]] GradZeroing {
 public:
  GradZeroing() = default;
  explicit GradZeroing(bool pending) : pending_(pending) {}
  GradZeroing(GradZeroing&& o) noexcept : pending_(std::exchange(o.pending_, false)) {}
  GradZeroing& operator=(GradZeroing&& o) noexcept {
    if (this != &o) {
      join_quietly();
      pending_ = std::exchange(o.pending_, false);
    }
    return *this;
  }
  ~GradZeroing() { join_quietly(); }
  void join() {
    if constexpr (!is_cpu_v<B>) {
      if (pending_) cuda_mem::aside_join();
    }
    pending_ = false;
  }
  bool pending() const { return pending_; }

 private:
  // A destructor must not throw: its failed join is dropped (call join() to see the error).
  void join_quietly() noexcept {
    try {
      join();
    } catch (...) {
    }
  }
  bool pending_ = false;
};

/// zero_grads that overlaps with the work queued after it: on CUDA the gradients that already exist are
/// zeroed on a side stream that starts after the work queued so far (18 GB of memset at BLT-1B, ~4 ms on an
/// H200, alongside the forward pass, which reads no gradient). Missing gradients are allocated (zeroed) on
/// the default stream as zero_grads does, or skipped with allocate_missing = false. Join the result before
/// the backward pass:
///   auto zeroing = zero_grads_async(model);
///   model.forward(...);
///   zeroing.join();
///   model.backward(...);
/// CPU: zeroes at once.
template <class L>
GradZeroing<typename L::backend> zero_grads_async(L& layer, bool allocate_missing = true) {
  using B = typename L::backend;
  bool aside = false;  // a zeroing was queued on the side stream
  for_each_param(layer, [&](const std::string&, auto& p) {
    static_assert(std::is_same_v<typename std::remove_reference_t<decltype(p)>::backend, B>,
                  "zero_grads_async: every parameter must live on the layer's backend");
    if (!(p.grad.shape() == p.value.shape())) {
      if (allocate_missing) p.grad.resize(p.value.shape());
    } else if constexpr (is_cpu_v<B>) {
      p.grad.zero();
    } else if (p.grad.numel() > 0) {
      if (!aside) cuda_mem::aside_begin();
      aside = true;
      cuda_mem::aside_zero(p.grad.data(), static_cast<size_t>(p.grad.numel()) * sizeof(p.grad.data()[0]));
    }
  });
  return GradZeroing<B>(aside);
}
/// Every parameter's value was (or may have been) written by something other than the optimizer: the bf16
/// copies the optimizer keeps (Param::value_bf16) are out of date until its next step. Loads, initialisations
/// and copies call it; so must code that writes Param::value directly while keep_bf16_weight_copies is on.
template <class L>
void mark_values_changed(L& layer) {
  for_each_param(layer, [](const std::string&, auto& p) { p.value_bf16_current = false; });
}
/// Total number of parameter elements.
template <class L>
int64_t count_params(L& layer) {
  int64_t n = 0;
  for_each_param(layer, [&](const std::string&, auto& p) { n += p.value.numel(); });
  return n;
}

}  // namespace tessera
