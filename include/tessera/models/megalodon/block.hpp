// One Megalodon block (official MegaBlock, megalodon spec §4, §5.1): the gated attention, then the normalised
// feed-forward network with the two-hop residual
//   y = x + MEGA(x),   out = x + fc2(act(LN(y)))        (the FFN's residual is the block INPUT x, not y)
// act(n) = silu(fc1 n) * fc3 n with swiglu, silu(fc1 n) without. No biases in the FFN. With rescale_nffn the
// FFN output is multiplied by a learnt vector `alpha` initialised to 0.1 * 0.5^layer.
#pragma once
#include "tessera/layers/linear.hpp"
#include "tessera/layers/offset_norm.hpp"
#include "tessera/models/megalodon/gated_attention.hpp"
#include "tessera/ops/activation.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/megalodon_elementwise.hpp"

namespace tessera::models {

template <class T, class B = cpu>
struct MegaFeedForward {
  using value_type = T;
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, alpha));  // present only with rescale_nffn
  };
  struct Saved {
    typename OffsetLayerNorm<T, B>::Saved norm;
    typename Linear<T, B>::Saved fc1, fc2, fc3;
    Tensor<T, B> n, a, b, hidden, out;
  };
  Params params;
  OffsetLayerNorm<T, B> norm;
  Linear<T, B> fc1, fc2, fc3;
  int64_t dim = 0, hidden_dim = 0;
  bool swiglu = false;

  void setup(const MegalodonConfig& c, int64_t layer_id) {
    dim = c.model_dim;
    hidden_dim = c.ffn_hidden_dim;
    swiglu = c.swiglu;
    norm.setup(dim, c.norm_eps);
    fc1.setup(dim, hidden_dim);
    fc2.setup(hidden_dim, dim);
    if (swiglu) fc3.setup(dim, hidden_dim);
    if (c.rescale_nffn) {
      params.alpha.resize({dim});
      ops::fill(B{}, params.alpha.value.data(),
                      static_cast<T>(0.1 * std::pow(0.5, static_cast<double>(layer_id))), dim);
    }
  }
  template <class F>
  void for_each_child(F&& f) {
    f("norm", norm);
    f("fc1", fc1);
    f("fc2", fc2);
    if (swiglu) f("fc3", fc3);
  }

  /// out = residual + rescale(fc2(act(norm(y)))).
  void forward(const SeqContext& ctx, TensorView<const T> y, TensorView<const T> residual, Tensor<T, B>& out,
               Saved& s) const {
    const int64_t n = ctx.rows();
    norm.forward(ctx, y, s.n, s.norm);
    fc1.forward(ctx, s.n, s.a, s.fc1);
    s.hidden.resize_uninit({n, hidden_dim});
    if (swiglu) {
      fc3.forward(ctx, s.n, s.b, s.fc3);
      ops::swiglu_forward(B{}, s.hidden.data(), s.a.data(), s.b.data(), n, hidden_dim);
    } else {
      ops::silu_forward(B{}, s.hidden.data(), s.a.data(), n * hidden_dim);
    }
    fc2.forward(ctx, s.hidden, s.out, s.fc2);
    out.resize_uninit({n, dim});
    const T* alpha = params.alpha.present() ? params.alpha.value.data() : nullptr;
    ops::rescale_residual_forward(B{}, out.data(), s.out.data(), alpha, residual.data(), n, dim);
  }

  /// dout -> dy (gradient of the normalised input, overwritten). The residual's gradient is dout itself.
  void backward(const SeqContext& ctx, TensorView<const T> dout, Tensor<T, B>& dy, Saved& s) {
    const int64_t n = ctx.rows();
    TensorView<const T> dfc2 = dout;
    if (params.alpha.present()) {
      scaled_.resize_uninit({n, dim});
      ops::rescale_residual_backward(B{}, scaled_.data(), params.alpha.grad.data(), dout.data(), s.out.data(),
                                     params.alpha.value.data(), n, dim);
      dfc2 = scaled_;
    }
    fc2.backward(ctx, dfc2, dh_, s.fc2);
    da_.resize_uninit({n, hidden_dim});
    if (swiglu) {
      db_.resize_uninit({n, hidden_dim});
      ops::swiglu_backward(B{}, da_.data(), db_.data(), dh_.data(), s.a.data(), s.b.data(), n, hidden_dim);
      fc1.backward(ctx, da_, dn_, s.fc1);
      fc3.backward(ctx, db_, tmp_, s.fc3);
      ops::add_inplace(B{}, dn_.data(), tmp_.data(), dn_.numel());
    } else {
      ops::silu_backward(B{}, da_.data(), dh_.data(), s.a.data(), n * hidden_dim);
      fc1.backward(ctx, da_, dn_, s.fc1);
    }
    norm.backward(ctx, dn_, dy, s.norm);
  }

 private:
  Tensor<T, B> scaled_, dh_, da_, db_, dn_, tmp_;
};

template <class T, class B = cpu>
struct MegaBlock {
  using value_type = T;
  using backend = B;
  using State = MegaLayerState<T, B>;
  struct Saved {
    typename MegaGatedAttention<T, B>::Saved mega;
    typename MegaFeedForward<T, B>::Saved nffn;
    Tensor<T, B> y;
  };
  MegaGatedAttention<T, B> mega;
  MegaFeedForward<T, B> nffn;

  void setup(const MegalodonConfig& c, int64_t layer_id) {
    mega.setup(c);
    nffn.setup(c, layer_id);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("mega", mega);
    f("nffn", nffn);
  }

  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& out, Saved& s,
               State* state = nullptr) const {
    mega.forward(ctx, x, s.y, s.mega, state);
    nffn.forward(ctx, s.y, x, out, s.nffn);
  }
  void forward_stream(const SeqContext& ctx, const CemaCache<T, B>& coeffs, TensorView<const T> x,
                      Tensor<T, B>& out, State& state, Saved& s) const {
    mega.forward_stream(ctx, coeffs, x, s.y, state, s.mega);
    nffn.forward(ctx, s.y, x, out, s.nffn);
  }
  /// dout -> dx (overwritten): through the FFN into y, through the attention into x, plus the two-hop
  /// residual.
  void backward(const SeqContext& ctx, TensorView<const T> dout, Tensor<T, B>& dx, Saved& s) {
    nffn.backward(ctx, dout, dy_, s.nffn);
    mega.backward(ctx, dy_, dx, s.mega);
    ops::add_inplace(B{}, dx.data(), dout.data(), dx.numel());
  }

 private:
  Tensor<T, B> dy_;
};

}  // namespace tessera::models
