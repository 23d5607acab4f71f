// Linear: y = x Wᵀ (+ b), weight [out, in] as in PyTorch. The template to copy for a new leaf layer:
// Params (reflected), Saved (what backward needs), setup, forward, backward.
#pragma once
#include "tessera/core/param.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/ops/matmul.hpp"

namespace tessera {

template <class T, class B = cpu>
struct Linear {
  using value_type = T;
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, weight), (Param<T, B>, bias));
  };
  struct Saved {
    TensorView<const T> x;
  };
  Params params;
  int64_t in = 0, out = 0;

  /// Inside a Sequence a bare Linear maps dim -> dim.
  void setup(const LayerConfig& c) { setup(c.dim, c.dim); }
  void setup(int64_t in_features, int64_t out_features, bool bias = false) {
    in = in_features;
    out = out_features;
    params.weight.resize({out, in});
    if (bias) params.bias.resize({out});
  }
  const T* bias() const { return params.bias.present() ? params.bias.value.data() : nullptr; }

  /// x: [N, in] -> y: [N, out].
  void forward(const SeqContext&, TensorView<const T> x, Tensor<T, B>& y, Saved& s) const {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == in && x.is_contiguous(), "Linear: input ", x.shape,
                  " does not match in_features ", in);
    const int64_t n = x.size(0);
    y.resize_uninit({n, out});
    ops::linear_forward(B{}, y.data(), x.data(), params.weight.value.data(), bias(), n, in, out);
    s.x = x;
  }
  /// dy: [N, out] -> dx: [N, in] (overwritten); dW, db accumulated.
  void backward(const SeqContext&, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    const int64_t n = s.x.size(0);
    dx.resize_uninit({n, in});
    ops::linear_backward(B{}, dx.data(), params.weight.grad.data(),
                         params.bias.present() ? params.bias.grad.data() : nullptr, dy.data(), s.x.data(),
                         params.weight.value.data(), n, in, out);
  }
  /// Backward without an input gradient (first layer, or dx computed elsewhere).
  void backward_params(TensorView<const T> dy, Saved& s) {
    ops::linear_backward(B{}, static_cast<T*>(nullptr), params.weight.grad.data(),
                         params.bias.present() ? params.bias.grad.data() : nullptr, dy.data(), s.x.data(),
                         params.weight.value.data(), s.x.size(0), in, out);
  }
};

}  // namespace tessera
