// Named<"name", L>: gives a child layer its checkpoint name ("self_attn", "mlp", ...). Compile-time
// string, so composed types spell out the reference implementation's key names.
#pragma once
#include <algorithm>
#include <cstddef>
#include <string_view>
#include <type_traits>

#include "tessera/layers/context.hpp"

namespace tessera {

template <size_t N>
struct FixedString {
  char chars[N]{};
  constexpr FixedString(const char (&s)[N]) { std::copy_n(s, N, chars); }
  constexpr std::string_view view() const { return {chars, N - 1}; }
};

template <FixedString Name, class L>
struct Named {
  using Inner = L;
  using value_type = typename L::value_type;
  using backend = typename L::backend;
  using Saved = typename L::Saved;
  static constexpr std::string_view name = Name.view();
  L inner;

  void setup(const LayerConfig& c) { inner.setup(c); }
  // Constrained, so that a caller can ask whether the inner layer takes a given argument list (e.g.
  // PreNormResidual's optional residual argument).
  template <class... A>
  requires requires(L& l, A&&... a) { l.forward(std::forward<A>(a)...); }
  void forward(A&&... a) { inner.forward(std::forward<A>(a)...); }
  template <class... A>
  requires requires(L& l, A&&... a) { l.backward(std::forward<A>(a)...); }
  void backward(A&&... a) { inner.backward(std::forward<A>(a)...); }
  template <class F>
  void for_each_child(F&& f) {
    f(name, inner);
  }
};

template <class L>
inline constexpr bool is_named_v = false;
template <FixedString N, class L>
inline constexpr bool is_named_v<Named<N, L>> = true;

namespace detail {
/// The layer inside any Named<> wrappers (which share its Saved).
template <class L>
auto& unnamed(L& l) {
  if constexpr (is_named_v<std::remove_const_t<L>>)
    return unnamed(l.inner);
  else
    return l;
}
}  // namespace detail

}  // namespace tessera
