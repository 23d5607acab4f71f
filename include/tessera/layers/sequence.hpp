// Sequence<L...>: layers applied in order (compile-time list); Stack<L>: a runtime number of copies of L
// ("layers.0", "layers.1", ...). Backward runs the children's backward passes in reverse.
#pragma once
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "tessera/layers/residual.hpp"

namespace tessera {

template <class... Ls>
struct Sequence {
  static_assert(sizeof...(Ls) > 0);
  using First = std::tuple_element_t<0, std::tuple<Ls...>>;
  using value_type = typename First::value_type;
  using backend = typename First::backend;
  using T = value_type;
  using B = backend;
  static constexpr size_t N = sizeof...(Ls);
  struct Saved {
    std::tuple<typename Ls::Saved...> child;
    Tensor<T, B> out[N - 1 > 0 ? N - 1 : 1];  // intermediate outputs (inputs of children 1..N-1)
  };
  std::tuple<Ls...> layers;

  void setup(const LayerConfig& c) {
    std::apply([&](auto&... l) { (l.setup(c), ...); }, layers);
  }
  template <class F>
  void for_each_child(F&& f) {
    for_each_indexed([&](auto& l, size_t i) { detail::visit_child(l, std::to_string(i), f); });
  }
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s) {
    forward_from<0>(ctx, x, y, s);
  }
  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    backward_from<N - 1>(ctx, dy, dx, s);
  }

 private:
  template <class F>
  void for_each_indexed(F&& f) {
    [&]<size_t... I>(std::index_sequence<I...>) { (f(std::get<I>(layers), I), ...); }
    (std::index_sequence_for<Ls...>{});
  }
  template <size_t I>
  void forward_from(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s) {
    if constexpr (I == N - 1) {
      std::get<I>(layers).forward(ctx, x, y, std::get<I>(s.child));
    } else {
      std::get<I>(layers).forward(ctx, x, s.out[I], std::get<I>(s.child));
      forward_from<I + 1>(ctx, s.out[I], y, s);
    }
  }
  template <size_t I>
  void backward_from(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    if constexpr (I == 0) {
      std::get<0>(layers).backward(ctx, dy, dx, std::get<0>(s.child));
    } else {
      Tensor<T, B>& g = shared_scratch<Sequence, T, B, 2>()[I % 2];  // context.hpp
      std::get<I>(layers).backward(ctx, dy, g, std::get<I>(s.child));
      backward_from<I - 1>(ctx, g, dx, s);
    }
  }
};

template <class L>
struct Stack {
  using value_type = typename L::value_type;
  using backend = typename L::backend;
  using T = value_type;
  using B = backend;
  struct Saved {
    std::vector<typename L::Saved> child;
    std::vector<Tensor<T, B>> out;
  };
  std::vector<L> layers;

  void setup(const LayerConfig& c) { setup(c, c.n_layers); }
  void setup(const LayerConfig& c, int64_t n) {
    layers.clear();
    layers.resize(static_cast<size_t>(n));
    for (auto& l : layers) l.setup(c);
  }
  size_t size() const { return layers.size(); }
  template <class F>
  void for_each_child(F&& f) {
    for (size_t i = 0; i < layers.size(); ++i) f(std::to_string(i), layers[i]);
  }
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s) {
    const size_t n = layers.size();
    TESSERA_CHECK(n > 0, "Stack: no layers");
    s.child.resize(n);
    s.out.resize(n - 1);
    TensorView<const T> cur = x;
    for (size_t i = 0; i < n; ++i) {
      Tensor<T, B>& o = i + 1 == n ? y : s.out[i];
      layers[i].forward(ctx, cur, o, s.child[i]);
      cur = o;
    }
  }
  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    const size_t n = layers.size();
    TensorView<const T> g = dy;
    for (size_t i = n; i-- > 0;) {
      Tensor<T, B>& o = i == 0 ? dx : grad_[i % 2];
      layers[i].backward(ctx, g, o, s.child[i]);
      g = o;
    }
  }

 private:
  Tensor<T, B> grad_[2];
};

}  // namespace tessera
