// Parameters and their reflection. A layer's parameters are a plain Boost.Hana struct of Param fields;
// composites expose their children by name. Walking a model yields (dotted.name, Param&) pairs —
// checkpoint keys, optimizer state, clipping and parameter counts all come from this one walk.
#pragma once
#include <boost/hana/accessors.hpp>
#include <boost/hana/define_struct.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/string.hpp>
#include <boost/hana/pair.hpp>
#include <string>
#include <string_view>

#include "tessera/core/tensor.hpp"

namespace tessera {

/// A trainable tensor and its gradient (allocated on demand by allocate_grads).
template <class T, class B = cpu>
struct Param {
  using value_type = T;
  using backend = B;
  Tensor<T, B> value;
  Tensor<T, B> grad;
  /// Allocate the value (zeroed); an unallocated Param is absent from the walk (e.g. no bias).
  void resize(Shape s) { value.resize(s); }
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
/// Total number of parameter elements.
template <class L>
int64_t count_params(L& layer) {
  int64_t n = 0;
  for_each_param(layer, [&](const std::string&, auto& p) { n += p.value.numel(); });
  return n;
}

}  // namespace tessera
