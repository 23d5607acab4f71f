// Normalisation layers: RmsNorm (Llama) and LayerNorm, each a thin wrapper over ops/norm.hpp (any backend:
// gains start at 1 through ops::fill).
#pragma once
#include <type_traits>

#include "tessera/core/param.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/norm.hpp"

namespace tessera {

template <class T, class B = cpu>
struct RmsNorm {
  using value_type = T;
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, weight));
  };
  struct Saved {
    TensorView<const T> x;
    Tensor<T, B> rstd;
  };
  Params params;
  int64_t dim = 0;
  double eps = 1e-5;

  void setup(const LayerConfig& c) { setup(c.dim, c.norm_eps); }
  void setup(int64_t d, double e) {
    dim = d;
    eps = e;
    params.weight.resize({d});
    ops::fill(B{}, params.weight.value.data(), T(1), d);
  }
  void forward(const SeqContext&, TensorView<const T> x, Tensor<T, B>& y, Saved& s) const {
    forward_into(x, y, s);
  }
  /// forward() with y in bf16 only (CUDA, float): y16 = bf16(y), rounded once — for a next layer whose bf16
  /// GEMMs read only bf16(y) (PreNormResidual with SelfAttention / SwiGlu in bf16 compute), saving the fp32
  /// output and its cast. The backward is the same (it reads x and rstd).
  void forward_to_bf16(const SeqContext&, TensorView<const T> x, Tensor<bf16, B>& y16, Saved& s) const
      requires(std::is_same_v<T, float>&& std::is_same_v<B, cuda>) {
    forward_into(x, y16, s);
  }
  /// residual (optional, [n, dim]): added to dx in the same pass (PreNormResidual's skip branch).
  void backward(const SeqContext&, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s,
                const T* residual = nullptr) {
    const int64_t n = s.x.size(0);
    dx.resize_uninit({n, dim});
    ops::rmsnorm_backward(B{}, dx.data(), params.weight.grad.data(), dy.data(), s.x.data(),
                          params.weight.value.data(), s.rstd.data(), n, dim, residual);
  }

 private:
  /// y (fp32, or bf16 through the bf16-output op) = rmsnorm(x); saves x and rstd for the backward.
  template <class Y>
  void forward_into(TensorView<const T> x, Tensor<Y, B>& y, Saved& s) const {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == dim, "RmsNorm: input ", x.shape, " does not match dim ", dim);
    const int64_t n = x.size(0);
    y.resize_uninit({n, dim});
    s.rstd.resize_uninit({n});
    ops::rmsnorm_forward(B{}, y.data(), s.rstd.data(), x.data(), params.weight.value.data(), n, dim, eps);
    s.x = x;
  }
};

template <class T, class B = cpu>
struct LayerNorm {
  using value_type = T;
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, weight), (Param<T, B>, bias));
  };
  struct Saved {
    TensorView<const T> x;
    Tensor<T, B> mean, rstd;
  };
  Params params;
  int64_t dim = 0;
  double eps = 1e-5;

  void setup(const LayerConfig& c) { setup(c.dim, c.norm_eps); }
  void setup(int64_t d, double e, bool bias = true) {
    dim = d;
    eps = e;
    params.weight.resize({d});
    ops::fill(B{}, params.weight.value.data(), T(1), d);
    if (bias) params.bias.resize({d});
  }
  void forward(const SeqContext&, TensorView<const T> x, Tensor<T, B>& y, Saved& s) const {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == dim, "LayerNorm: input ", x.shape, " does not match dim ",
                  dim);
    const int64_t n = x.size(0);
    y.resize_uninit({n, dim});
    s.mean.resize_uninit({n});
    s.rstd.resize_uninit({n});
    ops::layernorm_forward(B{}, y.data(), s.mean.data(), s.rstd.data(), x.data(), params.weight.value.data(),
                           params.bias.present() ? params.bias.value.data() : nullptr, n, dim, eps);
    s.x = x;
  }
  void backward(const SeqContext&, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    const int64_t n = s.x.size(0);
    dx.resize_uninit({n, dim});
    ops::layernorm_backward(B{}, dx.data(), params.weight.grad.data(),
                            params.bias.present() ? params.bias.grad.data() : nullptr, dy.data(), s.x.data(),
                            params.weight.value.data(), s.mean.data(), s.rstd.data(), n, dim);
  }
};

}  // namespace tessera
