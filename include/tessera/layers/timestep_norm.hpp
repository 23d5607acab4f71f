// TimestepNorm (Megalodon, megalodon spec §2): a causal GroupNorm. Every timestep is normalised by the
// population mean and variance of all values of its group at timesteps <= t, including those summarised by a
// carried state (count, mean, var) from earlier segments. Gain stored as an offset from 1, plus a bias.
// The math is in ops/timestep_norm.hpp.
#pragma once
#include "tessera/core/param.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/megalodon_elementwise.hpp"
#include "tessera/ops/timestep_norm.hpp"

namespace tessera {

/// Carried statistics of a TimestepNorm for `batch` sequences: count [B], mean [B, G], var [B, G], all in
/// the backend's memory (device int64 counts on CUDA). Empty (batch 0) means the official prior: count 0,
/// mean 0, var 1.
template <class T, class B = cpu>
struct TimestepNormState {
  Tensor<int64_t, B> count;
  Tensor<T, B> mean, var;
  bool empty() const { return count.numel() == 0; }
  void resize(int64_t batch, int64_t groups) {
    count.resize({batch});
    mean.resize({batch, groups});
    var.resize({batch, groups});
  }
  /// The official prior for `batch` sequences: count 0, mean 0, var 1 (same as an empty state).
  void reset_prior(int64_t batch, int64_t groups) {
    resize(batch, groups);
    ops::fill(B{}, var.data(), T(1), var.numel());
  }
  TimestepNormState clone() const { return {count.clone(), mean.clone(), var.clone()}; }
};

template <class T, class B = cpu>
struct TimestepNorm {
  using value_type = T;
  using backend = B;
  using State = TimestepNormState<T, B>;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, weight), (Param<T, B>, bias));
  };
  struct Saved {
    TensorView<const T> x;
    const State* prev = nullptr;
    Tensor<T, B> cummean, cumrstd;
  };
  Params params;
  int64_t dim = 0, groups = 0;
  double eps = 1e-5;

  void setup(int64_t d, int64_t g, double e) {
    TESSERA_CHECK(d > 0 && g > 0 && d % g == 0, "TimestepNorm: dim ", d, " is not a multiple of groups ", g);
    dim = d;
    groups = g;
    eps = e;
    params.weight.resize({d});
    params.bias.resize({d});
  }
  ops::TsnDims dims(const SeqContext& ctx) const { return {ctx.batch, ctx.seq, dim, groups}; }

  /// x [B*L, D] -> y. prev: carried state (nullptr or empty = prior); next: receives the final state
  /// (nullable). prev must stay valid until backward. With `train` false nothing is saved for backward.
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
               const State* prev = nullptr, State* next = nullptr, bool train = true) const {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == dim && x.size(0) == ctx.rows(), "TimestepNorm: input ",
                  x.shape, " does not match ", ctx.batch, " x ", ctx.seq, " rows of dim ", dim);
    if (prev && prev->empty()) prev = nullptr;
    if (prev)
      TESSERA_CHECK(prev->count.numel() == ctx.batch && prev->mean.numel() == ctx.batch * groups,
                    "TimestepNorm: carried state is for ", prev->count.numel(), " sequences, input has ",
                    ctx.batch);
    y.resize_uninit({ctx.rows(), dim});
    if (train) {
      s.cummean.resize_uninit({ctx.rows(), groups});
      s.cumrstd.resize_uninit({ctx.rows(), groups});
    }
    if (next) next->resize(ctx.batch, groups);
    ops::timestep_norm_forward(B{}, dims(ctx), x.data(), prev ? prev->count.data() : nullptr,
                               prev ? prev->mean.data() : nullptr, prev ? prev->var.data() : nullptr,
                               params.weight.value.data(), params.bias.value.data(), eps, y.data(),
                               next ? next->count.data() : nullptr, next ? next->mean.data() : nullptr,
                               next ? next->var.data() : nullptr, train ? s.cummean.data() : nullptr,
                               train ? s.cumrstd.data() : nullptr);
    s.x = x;
    s.prev = prev;
  }

  /// dy -> dx (overwritten); weight/bias gradients accumulated. Gradients of the carried-in state are not
  /// needed by the model (states are detached between segments) but available through the op.
  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    dx.resize_uninit({ctx.rows(), dim});
    const State* prev = s.prev;
    ops::timestep_norm_backward(
        B{}, dims(ctx), dy.data(), static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), s.x.data(),
        prev ? prev->count.data() : nullptr, prev ? prev->mean.data() : nullptr, s.cummean.data(),
        s.cumrstd.data(), params.weight.value.data(), dx.data(), static_cast<T*>(nullptr),
        static_cast<T*>(nullptr), params.weight.grad.data(), params.bias.grad.data());
  }
};

}  // namespace tessera
