// Normalisations whose gain is stored as an offset from 1 (scale = 1 + weight, weight zero-initialised), as
// in Megalodon's RMSNorm, LayerNorm and TimestepNorm (megalodon spec §4 "Norm weights"). Weight decay then
// pulls the scale towards 1, and checkpoints hold the offset. The gradient of the offset equals that of the
// scale.
#pragma once
#include <algorithm>

#include "tessera/core/param.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/ops/megalodon_elementwise.hpp"
#include "tessera/ops/norm.hpp"

namespace tessera {

namespace offset_norm_detail {
/// scale[d] = 1 + weight[d], refreshed on every forward (weights change between steps).
template <class T, class B>
const T* scale_of(const Param<T, B>& w, Tensor<T, B>& scale) {
  scale.resize_uninit(w.value.shape());
  ops::offset_scale(B{}, scale.data(), w.value.data(), w.value.numel());
  return scale.data();
}
}  // namespace offset_norm_detail

/// y = x * rsqrt(mean(x^2) + eps) * (1 + weight).
template <class T, class B = cpu>
struct OffsetRmsNorm {
  using value_type = T;
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, weight));
  };
  struct Saved {
    TensorView<const T> x;
    Tensor<T, B> rstd, scale;
  };
  Params params;
  int64_t dim = 0;
  double eps = 1e-5;

  void setup(const LayerConfig& c) { setup(c.dim, c.norm_eps); }
  void setup(int64_t d, double e) {
    dim = d;
    eps = e;
    params.weight.resize({d});
  }
  void forward(const SeqContext&, TensorView<const T> x, Tensor<T, B>& y, Saved& s) const {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == dim, "OffsetRmsNorm: input ", x.shape, " does not match dim ",
                  dim);
    const int64_t n = x.size(0);
    y.resize_uninit({n, dim});
    s.rstd.resize_uninit({n});
    const T* scale = offset_norm_detail::scale_of(params.weight, s.scale);
    ops::rmsnorm_forward(B{}, y.data(), s.rstd.data(), x.data(), scale, n, dim, eps);
    s.x = x;
  }
  void backward(const SeqContext&, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    const int64_t n = s.x.size(0);
    dx.resize_uninit({n, dim});
    ops::rmsnorm_backward(B{}, dx.data(), params.weight.grad.data(), dy.data(), s.x.data(), s.scale.data(),
                          s.rstd.data(), n, dim);
  }
};

/// y = (x - mean) * rsqrt(var + eps) * (1 + weight) + bias.
template <class T, class B = cpu>
struct OffsetLayerNorm {
  using value_type = T;
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, weight), (Param<T, B>, bias));
  };
  struct Saved {
    TensorView<const T> x;
    Tensor<T, B> mean, rstd, scale;
  };
  Params params;
  int64_t dim = 0;
  double eps = 1e-5;

  void setup(const LayerConfig& c) { setup(c.dim, c.norm_eps); }
  void setup(int64_t d, double e) {
    dim = d;
    eps = e;
    params.weight.resize({d});
    params.bias.resize({d});
  }
  void forward(const SeqContext&, TensorView<const T> x, Tensor<T, B>& y, Saved& s) const {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == dim, "OffsetLayerNorm: input ", x.shape,
                  " does not match dim ", dim);
    const int64_t n = x.size(0);
    y.resize_uninit({n, dim});
    s.mean.resize_uninit({n});
    s.rstd.resize_uninit({n});
    const T* scale = offset_norm_detail::scale_of(params.weight, s.scale);
    ops::layernorm_forward(B{}, y.data(), s.mean.data(), s.rstd.data(), x.data(), scale,
                           params.bias.value.data(), n, dim, eps);
    s.x = x;
  }
  void backward(const SeqContext&, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    const int64_t n = s.x.size(0);
    dx.resize_uninit({n, dim});
    ops::layernorm_backward(B{}, dx.data(), params.weight.grad.data(), params.bias.grad.data(), dy.data(),
                            s.x.data(), s.scale.data(), s.mean.data(), s.rstd.data(), n, dim);
  }
};

}  // namespace tessera
