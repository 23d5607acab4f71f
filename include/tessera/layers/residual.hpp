// Residual composites: PreNormResidual (y = x + inner(norm(x)), Llama/BLT) and PostNormResidual
// (y = norm(x + inner(x))). Both passes derive from the two children's passes.
#pragma once
#include <string_view>
#include <type_traits>

#include "tessera/core/tensor.hpp"
#include "tessera/layers/named.hpp"
#include "tessera/ops/elementwise.hpp"

namespace tessera {

namespace detail {
template <class L>
concept Transparent = requires {
  requires L::transparent;
};

/// Children of composites: a Named<> child contributes its own name; a transparent composite (a residual
/// wrapper) adds no level of its own; any other child is named by the given fallback (its index).
template <class L, class F>
void visit_child(L& child, std::string_view fallback, F&& f) {
  using U = std::remove_const_t<L>;
  if constexpr (is_named_v<U> || Transparent<U>)
    child.for_each_child(f);
  else
    f(fallback, child);
}
}  // namespace detail

template <class Norm, class Inner>
struct PreNormResidual {
  using value_type = typename Inner::value_type;
  using backend = typename Inner::backend;
  using T = value_type;
  using B = backend;
  static constexpr bool transparent = true;  // adds no name level: "input_layernorm", "self_attn"
  struct Saved {
    typename Norm::Saved norm_s;
    typename Inner::Saved inner_s;
    Tensor<T, B> normed;
  };
  Norm norm;
  Inner inner;

  void setup(const LayerConfig& c) {
    norm.setup(c);
    inner.setup(c);
  }
  template <class F>
  void for_each_child(F&& f) {
    detail::visit_child(norm, "norm", f);
    detail::visit_child(inner, "inner", f);
  }
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s) {
    const T* residual = x.data();
    // bf16 compute where the inner layer's GEMMs read only bf16(norm(x)): the norm writes that directly (no
    // fp32 normed tensor, no cast) and the inner layer adds x in its output GEMM.
    auto& n = detail::unnamed(norm);
    auto& in = detail::unnamed(inner);
    if constexpr (requires {
                    n.forward_to_bf16(ctx, x, in.bf16_input(s.inner_s), s.norm_s);
                    in.forward_from_bf16_input(ctx, y, s.inner_s, residual);
                  }) {
      if (in.takes_bf16_input(ctx)) {
        n.forward_to_bf16(ctx, x, in.bf16_input(s.inner_s), s.norm_s);
        return in.forward_from_bf16_input(ctx, y, s.inner_s, residual);
      }
    }
    norm.forward(ctx, x, s.normed, s.norm_s);
    if constexpr (requires { inner.forward(ctx, s.normed, y, s.inner_s, residual); }) {
      inner.forward(ctx, s.normed, y, s.inner_s, residual);  // the layer adds x (in its output GEMM)
    } else {
      inner.forward(ctx, s.normed, y, s.inner_s);
      ops::add_inplace(B{}, y.data(), x.data(), x.numel());
    }
  }
  /// dx = dy + norm'(inner'(dy)).
  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    Tensor<T, B>& scratch = shared_scratch<PreNormResidual, T, B, 1>()[0];  // context.hpp
    inner.backward(ctx, dy, scratch, s.inner_s);
    if constexpr (requires { norm.backward(ctx, scratch, dx, s.norm_s, dy.data()); }) {
      norm.backward(ctx, scratch, dx, s.norm_s, dy.data());  // dx = norm'(...) + dy in one pass
    } else {
      norm.backward(ctx, scratch, dx, s.norm_s);
      ops::add_inplace(B{}, dx.data(), dy.data(), dy.numel());
    }
  }
};

template <class Norm, class Inner>
struct PostNormResidual {
  using value_type = typename Inner::value_type;
  using backend = typename Inner::backend;
  using T = value_type;
  using B = backend;
  static constexpr bool transparent = true;
  struct Saved {
    typename Inner::Saved inner_s;
    typename Norm::Saved norm_s;
    Tensor<T, B> sum;
  };
  Norm norm;
  Inner inner;

  void setup(const LayerConfig& c) {
    norm.setup(c);
    inner.setup(c);
  }
  template <class F>
  void for_each_child(F&& f) {
    detail::visit_child(norm, "norm", f);
    detail::visit_child(inner, "inner", f);
  }
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s) {
    inner.forward(ctx, x, s.sum, s.inner_s);
    ops::add_inplace(B{}, s.sum.data(), x.data(), x.numel());
    norm.forward(ctx, s.sum, y, s.norm_s);
  }
  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    Tensor<T, B>& scratch = shared_scratch<PostNormResidual, T, B, 1>()[0];  // context.hpp
    norm.backward(ctx, dy, scratch, s.norm_s);
    inner.backward(ctx, scratch, dx, s.inner_s);
    ops::add_inplace(B{}, dx.data(), scratch.data(), scratch.numel());
  }
};

}  // namespace tessera
