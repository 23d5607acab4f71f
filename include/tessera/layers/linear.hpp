// Linear: y = x Wᵀ (+ b), weight [out, in] as in PyTorch. The template to copy for a new leaf layer:
// Params (reflected), Saved (what backward needs), setup, forward, backward.
#pragma once
#include <type_traits>

#include "tessera/core/param.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/ops/bf16_weight_product.hpp"
#include "tessera/ops/elementwise.hpp"
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
  Precision compute_precision = Precision::fp32;  // bf16: see layers/precision.hpp

  /// Inside a Sequence a bare Linear maps dim -> dim.
  void setup(const LayerConfig& c) { setup(c.dim, c.dim); }
  void setup(int64_t in_features, int64_t out_features, bool bias = false) {
    in = in_features;
    out = out_features;
    params.weight.resize({out, in});
    if (bias) params.bias.resize({out});
  }
  const T* bias() const { return params.bias.present() ? params.bias.value.data() : nullptr; }
  /// Whether forward/backward run the bf16 GEMMs (then a caller may pass x16, see forward).
  bool computes_in_bf16() const { return kMixed && compute_precision == Precision::bf16; }
  T* bias_grad() { return params.bias.present() ? params.bias.grad.data() : nullptr; }

  /// bf16 inference (freeze_bf16_weights in layers/precision.hpp): keep = true casts the weight to bf16 now and
  /// reuses that copy in every forward until called with keep = false (no-op unless compute is bf16).
  void cache_bf16_weight(bool keep) {
    weight_frozen_ = false;
    if constexpr (kMixed || kCpuBf16Weight) {
      if (keep && compute_precision == Precision::bf16) {
        cast_weight();
        weight_frozen_ = true;
      }
    }
  }

  /// bf16 training (keep_bf16_weight_copies in layers/precision.hpp): keep = true gives the weight a bf16
  /// copy (Param::value_bf16) that the optimizer rewrites with every update; while it is current the forward
  /// multiplies with it instead of casting the fp32 master again. keep = false drops it. Call between steps,
  /// not between a forward and its backward: the layer's own cast buffer is released (unless frozen).
  void keep_bf16_weight_copy(bool keep) {
    Param<T, B>& w = params.weight;
    w.value_bf16_current = false;
    if (keep && computes_in_bf16())
      w.value_bf16.resize_uninit(w.value.shape());
    else
      w.value_bf16 = Tensor<bf16, B>();
    if (!weight_frozen_) {
      weight_bf16_ = Tensor<bf16, B>();
      weight16_ = nullptr;
    }
  }

  /// Decoding-size products (ops::linear_small_bf16): with frozen bf16 weights, an x of at most
  /// ops::kSmallLinearRows rows goes to one small-product launch instead of a cast and a cuBLAS GEMM —
  /// forward() takes that route by itself, and layers whose projections share an input (q/k/v, gate/up)
  /// batch them into one launch through frozen_weight_bf16() / small_output().
  bool small_forward_ok(TensorView<const T> x) const {
    if constexpr (kMixed) {
      return weight_frozen_ && x.rank() == 2 && x.size(1) == in && x.is_contiguous() &&
             ops::small_linear_supported(B{}, x.data(), x.size(0), in);
    } else {
      return false;
    }
  }
  /// The frozen bf16 weight [out, in] for the CUDA small products (null unless cache_bf16_weight(true) is in
  /// effect, and always on the CPU, whose bf16 weights only this layer's forward reads).
  const bf16* frozen_weight_bf16() const {
    if constexpr (kMixed) {
      return weight_frozen_ ? weight_bf16_.data() : nullptr;
    } else {
      return nullptr;
    }
  }
  /// y resized to [n, out], described for ops::linear_small_bf16 (only when small_forward_ok).
  ops::SmallLinearOut small_output(Tensor<T, B>& y, int64_t n) const {
    TESSERA_CHECK(weight_frozen_, "Linear::small_output: needs frozen bf16 weights");
    y.resize_uninit({n, out});
    if constexpr (kMixed) {
      return {weight_bf16_.data(), bias(), y.data(), out};
    } else {
      return {};
    }
  }

  /// x: [N, in] -> y: [N, out]. x16 (optional, bf16 compute only): bf16(x) already cast by the caller, so
  /// that projections of one input (q/k/v, gate/up) share one cast; it must stay valid until this call
  /// returns. residual (optional, [N, out], not y): y = x Wᵀ (+ b) + residual — with bf16 compute and no bias
  /// the addition rides in the GEMM's epilogue (ops::gemm_add), the same fp32 sum as a separate add.
  /// residual_adds (bf16 compute only, >= 1): the residual is added that many times (BLT's doubled residual
  /// 2·x + o), in the epilogue as beta = residual_adds.
  void forward(const SeqContext&, TensorView<const T> x, Tensor<T, B>& y, Saved& s, const bf16* x16 = nullptr,
               const T* residual = nullptr, int residual_adds = 1) const {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == in && x.is_contiguous(), "Linear: input ", x.shape,
                  " does not match in_features ", in);
    const int64_t n = x.size(0);
    y.resize_uninit({n, out});
    s.x = x;
    if constexpr (kMixed) {
      if (compute_precision == Precision::bf16) return forward_bf16(x, x16, y, residual, residual_adds);
    }
    TESSERA_CHECK(residual_adds == 1, "Linear: residual_adds ", residual_adds, " needs bf16 compute on CUDA");
    if constexpr (kCpuBf16Weight) {
      if (compute_precision == Precision::bf16) {
        if (!weight_frozen_) cast_weight();
        ops::linear_forward_bf16_weight(B{}, y.data(), x.data(), weight_bf16_.data(), bias(), n, in, out);
        if (residual) ops::add_inplace(B{}, y.data(), residual, n * out);
        return;
      }
    }
    ops::linear_forward(B{}, y.data(), x.data(), params.weight.value.data(), bias(), n, in, out);
    if (residual) ops::add_inplace(B{}, y.data(), residual, n * out);
  }
  /// bf16 compute only: forward from an input that exists only in bf16 (x16 [n, in], e.g. the bf16 attention
  /// kernel's output); the backward must then be given the same x16, which must stay valid until then.
  /// residual, residual_adds as in forward.
  void forward_bf16_input(const SeqContext&, const bf16* x16, int64_t n, Tensor<T, B>& y, Saved& s,
                          const T* residual = nullptr, int residual_adds = 1) const {
    TESSERA_CHECK(computes_in_bf16() && x16, "Linear::forward_bf16_input: needs bf16 compute and an input");
    y.resize_uninit({n, out});
    s.x = TensorView<const T>(nullptr, Shape{n, in});  // the shape only: the data is x16
    if constexpr (kMixed) forward_bf16(s.x, x16, y, residual, residual_adds);
  }
  /// bf16 compute only: y16 [n, out] = bf16(x Wᵀ (+ b)), the product rounded once (what a cast of forward()'s
  /// y gives) for a consumer that reads bf16 only (the attention kernel's v); x16 as in forward.
  void forward_to_bf16(const SeqContext& ctx, TensorView<const T> x, Tensor<bf16, B>& y16, Saved& s,
                       const bf16* x16 = nullptr) const {
    TESSERA_CHECK(computes_in_bf16(), "Linear::forward_to_bf16: needs bf16 compute");
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == in, "Linear: input ", x.shape, " does not match in_features ",
                  in);
    const int64_t n = x.size(0);
    y16.resize_uninit({n, out});
    s.x = x;
    if constexpr (kMixed) {
      if (bias()) {  // the bias is added in fp32, then rounded
        Tensor<T, B>& y = scratch_f32()[0];
        forward(ctx, x, y, s, x16);
        return ops::cast(B{}, y16.data(), y.data(), n * out);
      }
      if (!x16) x16 = cast_input(x);
      ops::gemm(B{}, false, true, n, out, in, 1.0f, x16, in, weight_for_forward(), in, 0.0f, y16.data(), out);
    }
  }
  /// bf16 compute only: the backward from a gradient that exists only in bf16 (dy16 [n, out], e.g. the bf16
  /// attention kernel's dq/dk/dv). The bf16 backward rounds dy to bf16 anyway, so the numbers are those of
  /// backward() given float(dy16), without the fp32 copy and its cast. dx, accumulate_dx, x16 as in backward.
  void backward_from_bf16(const SeqContext& ctx, const bf16* dy16, Tensor<T, B>& dx, Saved& s,
                          bool accumulate_dx = false, const bf16* x16 = nullptr) {
    TESSERA_CHECK(computes_in_bf16() && dy16,
                  "Linear::backward_from_bf16: needs bf16 compute and a gradient");
    const int64_t n = s.x.size(0);
    if constexpr (kMixed) {
      if (bias_grad()) {  // the bias gradient sums dy in fp32
        Tensor<T, B>& dy = scratch_f32()[0];
        dy.resize_uninit({n, out});
        ops::cast(B{}, dy.data(), dy16, n * out);
        return backward(ctx, dy, dx, s, accumulate_dx, x16);
      }
      prepare_dx(dx, n, accumulate_dx);
      backward_gemms(dy16, dx.data(), nullptr, accumulate_dx, x16, s);
    }
  }
  /// bf16 compute only: backward() whose input gradient is wanted in bf16 (dx16 [n, in], overwritten),
  /// rounded once from the fp32 accumulator (a cast of backward()'s dx) — for a consumer that reads bf16
  /// only (the attention kernel's dO).
  void backward_to_bf16(const SeqContext&, TensorView<const T> dy, Tensor<bf16, B>& dx16, Saved& s,
                        const bf16* x16 = nullptr) {
    TESSERA_CHECK(computes_in_bf16(), "Linear::backward_to_bf16: needs bf16 compute");
    const int64_t n = s.x.size(0);
    dx16.resize_uninit({n, in});
    if constexpr (kMixed) {
      check_bf16_backward(x16, s);
      auto& dy16 = scratch()[1];
      dy16.resize_uninit({n, out});
      ops::cast(B{}, dy16.data(), dy.data(), n * out);
      backward_gemms(dy16.data(), nullptr, dx16.data(), false, x16, s);
      if (bias_grad()) ops::row_bias_backward(B{}, bias_grad(), dy.data(), n, out);
    }
  }

  /// dy: [N, out] -> dx: [N, in] (overwritten, or += when accumulate_dx: then dx already holds [N, in]); dW,
  /// db accumulated. x16: as in forward (bf16(x) of the forward's input, cast by the caller).
  void backward(const SeqContext&, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s, bool accumulate_dx = false,
                const bf16* x16 = nullptr) {
    const int64_t n = s.x.size(0);
    check_cpu_backward();
    prepare_dx(dx, n, accumulate_dx);
    if constexpr (kMixed) {
      if (compute_precision == Precision::bf16) return backward_bf16(dy, dx.data(), accumulate_dx, x16, s);
    }
    ops::linear_backward(B{}, dx.data(), params.weight.grad.data(), bias_grad(), dy.data(), s.x.data(),
                         params.weight.value.data(), n, in, out, accumulate_dx);
  }
  /// Backward without an input gradient (first layer, or dx computed elsewhere).
  void backward_params(TensorView<const T> dy, Saved& s) {
    check_cpu_backward();
    if constexpr (kMixed) {
      if (compute_precision == Precision::bf16) return backward_bf16(dy, nullptr, false, nullptr, s);
    }
    ops::linear_backward(B{}, static_cast<T*>(nullptr), params.weight.grad.data(), bias_grad(), dy.data(),
                         s.x.data(), params.weight.value.data(), s.x.size(0), in, out);
  }

 private:
  // bf16 mixed precision (layers/precision.hpp; float parameters on CUDA only). The weight's bf16 copy is
  // cast from the fp32 master at every forward — 6 bytes per weight, and never stale after an optimizer step
  // or a load — unless the optimizer keeps a current one (keep_bf16_weight_copy) or it is frozen for
  // inference; the backward reuses the forward's. x and dy are cast into per-thread scratch.
  // The GEMMs multiply bf16 operands exactly and accumulate in fp32; y, dx are fp32, dW += in fp32, and the
  // bias add / reduction stay fp32.
  static constexpr bool kMixed = std::is_same_v<T, float> && std::is_same_v<B, cuda>;
  // bf16 on the CPU (float parameters): the weight alone is bf16 — cast from the master at every forward, or
  // once by freeze_bf16_weights — and ops::linear_forward_bf16_weight multiplies fp32 x with it, summing in
  // fp32. Inference only: there is no CPU bf16 backward.
  static constexpr bool kCpuBf16Weight = std::is_same_v<T, float> && is_cpu_v<B>;
  mutable Tensor<bf16, B> weight_bf16_;
  bool weight_frozen_ = false;  // weight_bf16_ is kept (inference), not re-cast per forward
  mutable const bf16* weight16_ = nullptr;  // the bf16 weight of the last forward, for its backward

  static std::array<Tensor<bf16, B>, 2>& scratch() { return shared_scratch<Linear, bf16, B, 2>(); }
  static std::array<Tensor<T, B>, 1>& scratch_f32() { return shared_scratch<Linear, T, B, 1>(); }

  void check_cpu_backward() const {
    if constexpr (kCpuBf16Weight)
      TESSERA_CHECK(
          compute_precision == Precision::fp32,
          "Linear: no backward in bf16 on the CPU (its bf16 weights are for inference; train in fp32, "
          "or in bf16 on CUDA)");
  }
  void prepare_dx(Tensor<T, B>& dx, int64_t n, bool accumulate_dx) const {
    if (accumulate_dx) {
      TESSERA_CHECK(dx.numel() == n * in, "Linear: accumulating into dx of ", dx.shape(), ", expected [", n,
                    ", ", in, "]");
    } else {
      dx.resize_uninit({n, in});
    }
  }

  void cast_weight() const {
    weight_bf16_.resize_uninit({out, in});
    ops::cast(B{}, weight_bf16_.data(), params.weight.value.data(), out * in);
  }
  /// The bf16 weight a forward multiplies with (and its backward after it): the frozen copy, the optimizer's
  /// current copy (keep_bf16_weight_copy; the layer's own cast buffer is then released), or a cast of the
  /// fp32 master made now.
  const bf16* weight_for_forward() const {
    const Param<T, B>& w = params.weight;
    if (weight_frozen_) {
      weight16_ = weight_bf16_.data();
    } else if (w.value_bf16_current && w.value_bf16.numel() == out * in) {
      if (weight_bf16_.numel() > 0) weight_bf16_ = Tensor<bf16, B>();
      weight16_ = w.value_bf16.data();
    } else {
      cast_weight();
      weight16_ = weight_bf16_.data();
    }
    return weight16_;
  }
  const bf16* cast_input(TensorView<const T> x) const {
    auto& x16 = scratch()[0];
    x16.resize_uninit({x.size(0), in});
    ops::cast(B{}, x16.data(), x.data(), x.size(0) * in);
    return x16.data();
  }
  void forward_bf16(TensorView<const T> x, const bf16* x16, Tensor<T, B>& y, const T* residual = nullptr,
                    int residual_adds = 1) const {
    TESSERA_CHECK(residual_adds >= 1, "Linear: residual_adds must be >= 1, got ", residual_adds);
    const int64_t n = x.size(0);
    const auto add_residual = [&] {
      for (int r = 0; residual && r < residual_adds; ++r) ops::add_inplace(B{}, y.data(), residual, n * out);
    };
    if (!x16 && x.data() && small_forward_ok(x)) {
      const ops::SmallLinearOut o = small_output(y, n);
      ops::linear_small_bf16(B{}, x.data(), n, in, &o, 1);
      return add_residual();
    }
    if (!x16) x16 = cast_input(x);
    const bf16* w16 = weight_for_forward();
    if (residual && !bias()) {
      return ops::gemm_add(B{}, false, true, n, out, in, 1.0f, x16, in, w16, in,
                           static_cast<float>(residual_adds), residual, out, y.data(), out);
    }
    ops::gemm(B{}, false, true, n, out, in, 1.0f, x16, in, w16, in, 0.0f, y.data(), out);
    if (bias()) ops::add_row_bias(B{}, y.data(), bias(), n, out);
    add_residual();
  }
  void check_bf16_backward(const bf16* x16, const Saved& s) const {
    TESSERA_CHECK(weight16_ != nullptr, "Linear: bf16 backward without a bf16 forward");
    TESSERA_CHECK(!weight_frozen_, "Linear: backward with frozen bf16 weights (freeze_bf16_weights is for ",
                  "inference; set_compute_precision unfreezes them for training)");
    TESSERA_CHECK(x16 || s.x.data(), "Linear: the backward of forward_bf16_input needs its x16");
  }
  void backward_bf16(TensorView<const T> dy, T* dx, bool accumulate_dx, const bf16* x16, Saved& s) {
    const int64_t n = s.x.size(0);
    check_bf16_backward(x16, s);
    auto& dy16 = scratch()[1];
    dy16.resize_uninit({n, out});
    ops::cast(B{}, dy16.data(), dy.data(), n * out);
    backward_gemms(dy16.data(), dx, nullptr, accumulate_dx, x16, s);
    if (bias_grad()) ops::row_bias_backward(B{}, bias_grad(), dy.data(), n, out);
  }
  /// dx (fp32, overwritten or accumulated) or dx16 (bf16, overwritten) = dy16 W; dW += dy16ᵀ bf16(x).
  void backward_gemms(const bf16* dy16, T* dx, bf16* dx16, bool accumulate_dx, const bf16* x16, Saved& s) {
    check_bf16_backward(x16, s);
    const int64_t n = s.x.size(0);
    if (dx)
      ops::gemm(B{}, false, false, n, in, out, 1.0f, dy16, out, weight16_, in, accumulate_dx ? 1.0f : 0.0f,
                dx, in);
    else if (dx16)
      ops::gemm(B{}, false, false, n, in, out, 1.0f, dy16, out, weight16_, in, 0.0f, dx16, in);
    if (!x16) x16 = cast_input(s.x);
    ops::gemm(B{}, true, false, out, in, n, 1.0f, dy16, out, x16, in, 1.0f, params.weight.grad.data(), in);
  }
};

}  // namespace tessera
