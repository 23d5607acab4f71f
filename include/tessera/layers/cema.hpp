// Complex exponential moving average (Megalodon's MultiHeadComplexEMA, megalodon spec §1), a layer over token
// rows [B*L, D]: h_t = p x_t + q h_{t-1}, y_t = Re(sum_n g_n h_t,n) + omega x_t per channel, with the
// official parameter shapes (alpha, delta [D,N,1], theta [D,1,1], gamma [D,N,2], omega [D,1]). The carried
// state (hx in, h out; [B, D, N] complex, stored as [B, D, N, 2] reals) is how a long sequence is processed
// segment by segment. The math is in ops/cema.hpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <complex>
#include <numeric>
#include <vector>

#include "tessera/core/allocator.hpp"
#include "tessera/core/param.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/ops/cema.hpp"

namespace tessera {

/// Cached CEMA coefficients for decoding (Cema::coeffs): host vectors on the CPU, device buffers on CUDA.
template <class T, class B = cpu>
struct CemaCache {
  ops::CemaCoeffs<T> c;
  int64_t bytes() const {
    return static_cast<int64_t>(c.p.size() * sizeof(T) + (c.q.size() + c.g.size()) * 2 * sizeof(T));
  }
};
template <class T>
struct CemaCache<T, cuda> {
  Tensor<T, cuda> p, q, g;  // p [D, N]; q, g [D, N, 2] (re, im)
  int64_t bytes() const { return (p.numel() + q.numel() + g.numel()) * int64_t(sizeof(T)); }
};

namespace cema_layer_detail {
/// Runs f on a host tensor of t's shape and stores the result in t: f(t) itself for CPU tensors, f on a
/// host copy then one upload for device tensors (initialisation draws random numbers on the host).
template <class T, class B, class F>
void on_host(Tensor<T, B>& t, F&& f) {
  if constexpr (is_cpu_v<B>) {
    f(t);
  } else {
    Tensor<T> h(t.shape());
    f(h);
    cuda_mem::to_device(t.data(), h.data(), static_cast<size_t>(h.numel()) * sizeof(T));
  }
}
}  // namespace cema_layer_detail

template <class T, class B = cpu>
struct Cema {
  using value_type = T;
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, alpha), (Param<T, B>, delta), (Param<T, B>, theta),
                             (Param<T, B>, gamma), (Param<T, B>, omega));
  };
  struct Saved {
    TensorView<const T> x;
    const std::complex<T>* hx = nullptr;
  };
  Params params;
  int64_t dim = 0, ndim = 0;
  ops::CemaMode mode = ops::CemaMode::Auto;

  void setup(int64_t d, int64_t n) {
    dim = d;
    ndim = n;
    params.alpha.resize({d, n, 1});
    params.delta.resize({d, n, 1});
    params.theta.resize({d, 1, 1});
    params.gamma.resize({d, n, 2});
    params.omega.resize({d, 1});
  }

  /// Official initialisation (spec §1.7): alpha, delta ~ N(0, 0.2^2); theta = logit(D^(-k/D)) for a random
  /// permutation of k = 1..D; gamma real part ~ N(0, 1), imaginary part 0; omega ~ N(0, 0.25^2) cut to [-1,
  /// 1].
  void init(Rng& rng) {
    using cema_layer_detail::on_host;
    for (auto* p : {&params.alpha, &params.delta})
      on_host(p->value, [&](Tensor<T>& t) {
        for (auto& v : t) v = static_cast<T>(0.2 * rng.normal());
      });
    std::vector<int64_t> perm(static_cast<size_t>(dim));
    std::iota(perm.begin(), perm.end(), int64_t(1));
    for (int64_t i = dim - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(static_cast<uint64_t>(i + 1))]);
    const double step = std::log(static_cast<double>(dim)) / static_cast<double>(dim);
    on_host(params.theta.value, [&](Tensor<T>& t) {
      for (int64_t d = 0; d < dim; ++d) {
        const double f = std::exp(-static_cast<double>(perm[d]) * step);
        t[d] = static_cast<T>(std::log(f / (1.0 - f)));
      }
    });
    on_host(params.gamma.value, [&](Tensor<T>& t) {
      for (int64_t i = 0; i < dim * ndim; ++i) {
        t[2 * i] = static_cast<T>(rng.normal());
        t[2 * i + 1] = T(0);
      }
    });
    on_host(params.omega.value, [&](Tensor<T>& t) {
      for (auto& v : t) {
        double z;
        do z = 0.25 * rng.normal();
        while (z < -1.0 || z > 1.0);
        v = static_cast<T>(z);
      }
    });
  }

  ops::CemaParams<T> raw() const {
    return {params.alpha.value.data(), params.delta.value.data(), params.theta.value.data(),
            params.gamma.value.data(), params.omega.value.data()};
  }
  ops::CemaDims dims(const SeqContext& ctx) const { return {ctx.batch, ctx.seq, dim, ndim}; }

  /// x [B*L, D] -> y [B*L, D]. hx: carried state [B, D, N] (nullptr = zero); h_out: final state (nullptr =
  /// not needed). hx must stay valid until backward.
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
               const std::complex<T>* hx = nullptr, std::complex<T>* h_out = nullptr) const {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == dim && x.size(0) == ctx.rows(), "Cema: input ", x.shape,
                  " does not match ", ctx.batch, " x ", ctx.seq, " rows of dim ", dim);
    y.resize_uninit({ctx.rows(), dim});
    ops::cema_forward(B{}, dims(ctx), raw(), x.data(), hx, y.data(), h_out, mode);
    s.x = x;
    s.hx = hx;
  }
  /// Decoding with precomputed coefficients (coeffs()): no exp/sin/cos per token.
  void forward_cached(const SeqContext& ctx, const CemaCache<T, B>& c, TensorView<const T> x, Tensor<T, B>& y,
                      const std::complex<T>* hx, std::complex<T>* h_out) const {
    y.resize_uninit({ctx.rows(), dim});
    if constexpr (is_cpu_v<B>) {
      ops::cema_forward(B{}, dims(ctx), c.c, params.omega.value.data(), x.data(), hx, y.data(), h_out, mode);
    } else {
      TESSERA_CHECK(c.p.numel() == dim * ndim, "Cema::forward_cached: the coefficient cache holds ",
                    c.p.numel(), " values, D*N is ", dim * ndim, " (make it with coeffs())");
      ops::cema_forward(B{}, dims(ctx), c.p.data(), reinterpret_cast<const std::complex<T>*>(c.q.data()),
                        reinterpret_cast<const std::complex<T>*>(c.g.data()), params.omega.value.data(),
                        x.data(), hx, y.data(), h_out);
    }
  }
  CemaCache<T, B> coeffs() const {
    CemaCache<T, B> c;
    if constexpr (is_cpu_v<B>) {
      ops::cema_coeffs(B{}, raw(), dim, ndim, c.c);
    } else {
      c.p.resize_uninit({dim, ndim});
      c.q.resize_uninit({dim, ndim, 2});
      c.g.resize_uninit({dim, ndim, 2});
      ops::cema_coeffs(B{}, raw(), dim, ndim, c.p.data(), reinterpret_cast<std::complex<T>*>(c.q.data()),
                       reinterpret_cast<std::complex<T>*>(c.g.data()));
    }
    return c;
  }

  /// dy [B*L, D] (+ dh_out, the gradient of the final state, nullable) -> dx (overwritten), dhx (nullable,
  /// overwritten), parameter gradients accumulated.
  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s,
                const std::complex<T>* dh_out = nullptr, std::complex<T>* dhx = nullptr) {
    dx.resize_uninit({ctx.rows(), dim});
    const ops::CemaGrads<T> g{params.alpha.grad.data(), params.delta.grad.data(), params.theta.grad.data(),
                              params.gamma.grad.data(), params.omega.grad.data()};
    ops::cema_backward(B{}, dims(ctx), raw(), s.x.data(), s.hx, dy.data(), dh_out, dx.data(), dhx, g, mode);
  }
};

}  // namespace tessera
