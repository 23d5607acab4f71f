// SwiGLU feed-forward (Llama): y = down(silu(gate(x)) * up(x)).
#pragma once
#include <type_traits>

#include "tessera/layers/linear.hpp"
#include "tessera/ops/activation.hpp"
#include "tessera/ops/elementwise.hpp"

namespace tessera {

template <class T, class B = cpu>
struct SwiGlu {
  using value_type = T;
  using backend = B;
  struct Saved {
    typename Linear<T, B>::Saved gate_s, up_s, down_s;
    Tensor<T, B> gate, up, hidden;  // fp32 and mixed paths
    // all-bf16 path (forward_bf16), instead of the above: the GEMM inputs x16, h16 and the gate/up products,
    // kept for the backward
    Tensor<bf16, B> x16, h16, gate16, up16;
  };
  Linear<T, B> gate_proj, up_proj, down_proj;
  int64_t dim = 0, hidden = 0;

  void setup(const LayerConfig& c) { setup(c.dim, c.ffn_hidden); }
  void setup(int64_t d, int64_t h) {
    dim = d;
    hidden = h;
    gate_proj.setup(d, h);
    up_proj.setup(d, h);
    down_proj.setup(h, d);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("gate_proj", gate_proj);
    f("up_proj", up_proj);
    f("down_proj", down_proj);
  }

  /// residual (optional, [rows, dim], not y): y = swiglu(x) + residual, added by down_proj (Linear::forward).
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
               const T* residual = nullptr) const {
    if (forward_small(ctx, x, y, s, {}, residual)) return;
    if (all_bf16()) return forward_bf16(ctx, x, y, s, residual);
    const bf16* x16 = shared_input_bf16(x);  // bf16 compute: one cast of x for gate and up
    gate_proj.forward(ctx, x, s.gate, s.gate_s, x16);
    up_proj.forward(ctx, x, s.up, s.up_s, x16);
    s.hidden.resize_uninit(s.gate.shape());
    ops::swiglu_forward(B{}, s.hidden.data(), s.gate.data(), s.up.data(), s.gate.size(0), hidden);
    down_proj.forward(ctx, s.hidden, y, s.down_s, nullptr, residual);
  }

  /// The all-bf16 path from an input that exists only in bf16 (as SelfAttention's): where
  /// takes_bf16_input(ctx), a caller may write bf16(x) [rows, dim] into bf16_input(s) itself and call
  /// forward_from_bf16_input. Not taken for decoding-size inputs with frozen weights (the small products).
  bool takes_bf16_input(const SeqContext& ctx) const {
    return all_bf16() && !(gate_proj.frozen_weight_bf16() && ctx.rows() <= ops::kSmallLinearRows);
  }
  Tensor<bf16, B>& bf16_input(Saved& s) const { return s.x16; }
  void forward_from_bf16_input(const SeqContext& ctx, Tensor<T, B>& y, Saved& s,
                               const T* residual = nullptr) const {
    TESSERA_CHECK(takes_bf16_input(ctx) && s.x16.numel() == ctx.rows() * dim,
                  "SwiGlu::forward_from_bf16_input: needs the all-bf16 path and bf16_input(s) of [",
                  ctx.rows(), ", ", dim, "]");
    forward_bf16_projected(ctx, TensorView<const T>(nullptr, Shape{ctx.rows(), dim}), y, s, residual);
  }

  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    const bool bf16_path = all_bf16();
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (bf16_path) return backward_bf16(ctx, dy, dx, s);
    }
    auto& scratch = shared_scratch<SwiGlu, T, B, 3>();  // backward temporaries (context.hpp)
    Tensor<T, B>& dh = scratch[0];
    down_proj.backward(ctx, dy, dh, s.down_s);
    Tensor<T, B>& dgate = scratch[1];
    Tensor<T, B>& dup = scratch[2];
    dgate.resize_uninit(s.gate.shape());
    dup.resize_uninit(s.up.shape());
    ops::swiglu_backward(B{}, dgate.data(), dup.data(), dh.data(), s.gate.data(), s.up.data(), s.gate.size(0),
                         hidden);
    const bf16* x16 = shared_input_bf16(s.gate_s.x);
    gate_proj.backward(ctx, dgate, dx, s.gate_s, false, x16);
    up_proj.backward(ctx, dup, dx, s.up_s, true, x16);  // dx += dup W_up
  }

 private:
  /// All three projections in bf16 (set_compute_precision sets them together): the input is cast once for
  /// gate/up and their backward; gate/up write their products in bf16 (each rounded once from the fp32
  /// accumulator, as autocast's linear outputs are), the SwiGLU reads those and writes h in bf16 for
  /// down_proj, and its backward writes the gate/up gradients in bf16 for their GEMMs. Saved keeps bf16(x),
  /// bf16(gate), bf16(up) and bf16(h), no fp32 activations. The one numeric difference from per-projection
  /// casts is the bf16 rounding of the SwiGLU's inputs; in exchange the memory-bound SwiGLU forward and
  /// backward read half the bytes (at Llama-1B sizes, two [n, 5632] fp32 arrays written once and read twice
  /// per step become bf16), with 2 casts per layer and step instead of 6.
  bool all_bf16() const {
    return gate_proj.computes_in_bf16() && up_proj.computes_in_bf16() && down_proj.computes_in_bf16();
  }
  void forward_bf16(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
                    const T* residual) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {  // else all_bf16() is false
      s.x16.resize_uninit(x.shape);
      ops::cast(B{}, s.x16.data(), x.data(), x.numel());
      forward_bf16_projected(ctx, x, y, s, residual);
    }
  }
  /// forward_bf16 once s.x16 holds bf16(x); x gives the shape only.
  void forward_bf16_projected(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
                              const T* residual) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      const int64_t n = x.size(0);
      gate_proj.forward_to_bf16(ctx, x, s.gate16, s.gate_s, s.x16.data());
      up_proj.forward_to_bf16(ctx, x, s.up16, s.up_s, s.x16.data());
      s.h16.resize_uninit({n, hidden});
      ops::swiglu_forward(B{}, s.h16.data(), s.gate16.data(), s.up16.data(), n, hidden);
      down_proj.forward_bf16_input(ctx, s.h16.data(), n, y, s.down_s, residual);
    }
  }
  /// dh stays fp32 (the SwiGLU backward reads it in full precision), the SwiGLU backward writes bf16
  /// dgate/dup for the gate/up GEMMs.
  void backward_bf16(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      Tensor<T, B>& dh = shared_scratch<SwiGlu, T, B, 3>()[0];
      down_proj.backward(ctx, dy, dh, s.down_s, false, s.h16.data());
      auto& [dgate16, dup16] = shared_scratch<SwiGlu, bf16, B, 2>();
      const int64_t n = s.gate16.size(0);
      dgate16.resize_uninit({n, hidden});
      dup16.resize_uninit({n, hidden});
      ops::swiglu_backward(B{}, dgate16.data(), dup16.data(), dh.data(), s.gate16.data(), s.up16.data(), n,
                           hidden);
      gate_proj.backward_from_bf16(ctx, dgate16.data(), dx, s.gate_s, false, s.x16.data());
      up_proj.backward_from_bf16(ctx, dup16.data(), dx, s.up_s, true, s.x16.data());  // dx += dup W_up
    }
  }

  /// Decoding-size inference with frozen bf16 weights (Linear::small_forward_ok): gate, up and the SwiGLU in
  /// one launch (ops::swiglu_small_bf16), then down_proj's small product — 2 launches instead of 6. No
  /// backward (frozen weights refuse it).
  bool forward_small(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
                     ops::SmallLinearNorm norm = {}, const T* residual = nullptr) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (!fuses_decode(x)) return false;
      const int64_t n = x.size(0);
      Tensor<T, B>& h = shared_scratch<SwiGlu, T, B, 3>()[0];
      h.resize_uninit({n, hidden});
      ops::swiglu_small_bf16(B{}, x.data(), n, dim, gate_proj.frozen_weight_bf16(),
                             up_proj.frozen_weight_bf16(), hidden, h.data(), norm);
      if (!residual) {
        down_proj.forward(ctx, h, y, s.down_s);
      } else {
        ops::SmallLinearOut o = down_proj.small_output(y, n);
        o.residual = residual;
        ops::linear_small_bf16(B{}, h.data(), n, hidden, &o, 1);
      }
      return true;
    } else {
      return false;
    }
  }

 public:
  /// Decoding with frozen bf16 weights: the RMSNorm in front of the layer (gain and eps in `norm`; x is the
  /// norm's input) and the residual add after it fused into the small products: y = residual +
  /// swiglu(rmsnorm(x)) in 2 launches. Only where fuses_decode(x) holds.
  void forward_fused(const SeqContext& ctx, TensorView<const T> x, ops::SmallLinearNorm norm,
                     const T* residual, Tensor<T, B>& y, Saved& s) const {
    TESSERA_CHECK(
        norm.weight && residual && forward_small(ctx, x, y, s, norm, residual),
        "SwiGlu::forward_fused: needs frozen bf16 weights, a decoding-size input, a norm and a residual");
  }
  bool fuses_decode(TensorView<const T> x) const {
    return gate_proj.small_forward_ok(x) && up_proj.small_forward_ok(x) && down_proj.frozen_weight_bf16() &&
           hidden % 8 == 0;
  }

 private:
  /// bf16(x) in scratch when gate and up compute in bf16 (nullptr otherwise: each casts for itself).
  const bf16* shared_input_bf16(TensorView<const T> x) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (gate_proj.computes_in_bf16() && up_proj.computes_in_bf16()) {
        Tensor<bf16, B>& x16 = shared_scratch<SwiGlu, bf16, B, 1>()[0];
        x16.resize_uninit(x.shape);
        ops::cast(B{}, x16.data(), x.data(), x.numel());
        return x16.data();
      }
    }
    return nullptr;
  }
};

}  // namespace tessera
