// Megalodon's moving-average gated attention (official MovingAverageGatedAttention, megalodon spec §3, §5.1
// steps 1-8), with the official child names:
//   x̂ = timenorm(x)            TimestepNorm, carried state
//   c = cema(x̂)                complex EMA, carried state
//   mx = rmsnorm(c)            RMSNorm, gain 1 + weight
//   z = znorm(wz(mx))          per-head RMS normalisation, no affine
//   q, k = z (1 + gamma[0|1]) / sqrt(dz) + beta[0|1]      ("normalised attention", no further 1/sqrt(d))
//   v = silu(wv(x̂)),  r = silu(wr(mx))
//   a = ChunkAttention(RoPE(q), RoPE(k), v)               causal inside chunks of C, never across; RoPE
//                                                         positions restart at every chunk
//   y = x + wh1(mx) + wh2(a * r)
// Training: forward/backward over B sequences of L tokens (a segment starting at a chunk boundary, optionally
// with carried TimestepNorm/CEMA state). Inference: forward_stream over any number of new tokens per call
// with a KV cache of the current partial chunk only, so memory stays constant however long the sequence.
// Backend-generic: on CUDA every tensor, the carried state and the KV cache live on the device; the
// elementwise pieces are ops (ops/megalodon_elementwise.hpp).
#pragma once
#include <cmath>
#include <complex>
#include <type_traits>
#include <vector>

#include "tessera/layers/cema.hpp"
#include "tessera/layers/kv_cache.hpp"
#include "tessera/layers/linear.hpp"
#include "tessera/layers/offset_norm.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/layers/timestep_norm.hpp"
#include "tessera/models/megalodon/config.hpp"
#include "tessera/ops/activation.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/megalodon_elementwise.hpp"
#include "tessera/ops/rope.hpp"

namespace tessera::models {

/// What one gated-attention layer carries between segments of `batch` sequences: TimestepNorm statistics,
/// the CEMA state hx [batch, D, N] (complex as pairs) and, for streaming, the keys/values of the current
/// partial chunk ([batch, C, Z] and [batch, C, E]; `count` rows valid).
template <class T, class B = cpu>
struct MegaLayerState {
  TimestepNormState<T, B> tsn, tsn_next;  // tsn_next: the streaming step's output, swapped with tsn
  Tensor<T, B> hx, k, v;
  Tensor<T, B> hx_next;  // the streaming step's output state, swapped with hx (no allocation per token)
  int64_t count = 0;
  const std::complex<T>* hx_ptr() const {
    return hx.numel() ? reinterpret_cast<const std::complex<T>*>(hx.data()) : nullptr;
  }
};

template <class T, class B = cpu>
struct MegaGatedAttention {
  using value_type = T;
  using backend = B;
  using State = MegaLayerState<T, B>;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T, B>, gamma), (Param<T, B>, beta));
  };
  struct Saved {
    TensorView<const T> x;
    typename TimestepNorm<T, B>::Saved tsn;
    typename Cema<T, B>::Saved cema;
    typename OffsetRmsNorm<T, B>::Saved rms;
    typename Linear<T, B>::Saved wz, wv, wr, wh1, wh2;
    Tensor<T, B> xt, c, mx, z, zrstd, zn, q, k, v_pre, v, r_pre, r, attn, lse, ar, h, tmp;
    Tensor<int64_t, B> positions;
    TimestepNormState<T, B> prev_tsn;  // carried-in state of a training forward (read again by backward)
    Tensor<T, B> prev_hx;
  };
  Params params;
  TimestepNorm<T, B> timenorm;
  Cema<T, B> cema;
  OffsetRmsNorm<T, B> rmsnorm;
  Linear<T, B> wv, wz, wr, wh1, wh2;
  int64_t dim = 0, zdim = 0, vdim = 0, heads = 0, dz = 0, dv = 0, chunk = 0;
  double eps = 1e-5, rope_base = 10000.0;
  /// bf16 (layers/precision.hpp): besides the Linear layers, the chunk attention's products run as batched
  /// bf16 GEMMs where ops::attention_forward_chunks_bf16 covers the call (whole chunks), else on the fp32
  /// kernels.
  Precision compute_precision = Precision::fp32;

  void setup(const MegalodonConfig& c) {
    dim = c.model_dim;
    zdim = c.z_dim;
    vdim = c.value_dim;
    heads = c.num_heads;
    dz = c.z_head_dim();
    dv = c.v_head_dim();
    chunk = c.chunk_size;
    eps = c.norm_eps;
    rope_base = c.rope_base;
    timenorm.setup(dim, c.norm_num_groups, eps);
    cema.setup(dim, c.cema_ndim);
    rmsnorm.setup(dim, eps);
    wv.setup(dim, vdim, true);
    wz.setup(dim, zdim, true);
    wr.setup(dim, vdim, true);
    wh1.setup(dim, dim, true);
    wh2.setup(vdim, dim, false);
    params.gamma.resize({2, zdim});
    params.beta.resize({2, zdim});
  }
  template <class F>
  void for_each_child(F&& f) {
    f("timenorm", timenorm);
    f("cema", cema);
    f("rmsnorm", rmsnorm);
    f("wv", wv);
    f("wz", wz);
    f("wr", wr);
    f("wh1", wh1);
    f("wh2", wh2);
  }

  /// Training forward over ctx.batch sequences of ctx.seq tokens starting at a chunk boundary. `state`
  /// (nullable) carries TimestepNorm and CEMA state in and out (detached: no gradient flows into the previous
  /// segment); its KV part must be empty. x and the state must stay valid until backward.
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
               State* state = nullptr) const {
    TESSERA_CHECK(!state || state->count == 0, "MegaGatedAttention::forward: the carried state holds ",
                  state ? state->count : 0,
                  " tokens of an unfinished chunk; training segments start at a chunk "
                  "boundary (use forward_stream for inference)");
    const int64_t n = ctx.rows();
    s.x = x;
    // Carried state is read before it is overwritten: keep the previous copies alive in Saved.
    s.prev_tsn = state ? state->tsn.clone() : TimestepNormState<T, B>{};
    s.prev_hx = state && state->hx.numel() ? state->hx.clone() : Tensor<T, B>{};
    const std::complex<T>* hx =
        s.prev_hx.numel() ? reinterpret_cast<const std::complex<T>*>(s.prev_hx.data()) : nullptr;
    std::complex<T>* h_out = nullptr;
    if (state) {
      state->hx.resize_uninit({ctx.batch, dim, cema.ndim, 2});
      h_out = reinterpret_cast<std::complex<T>*>(state->hx.data());
    }
    timenorm.forward(ctx, x, s.xt, s.tsn, s.prev_tsn.empty() ? nullptr : &s.prev_tsn,
                     state ? &state->tsn : nullptr);
    cema.forward(ctx, s.xt, s.c, s.cema, hx, h_out);
    project(ctx, s, ctx.positions ? ctx.positions : chunk_positions(ctx, 0, s.positions));
    // Chunk-local attention.
    s.attn.resize_uninit({n, vdim});
    s.lse.resize_uninit({ctx.batch, heads, ctx.seq});
    const ops::AttnDims d = attn_dims(ctx.batch, ctx.seq, ctx.seq, 0);
    bool in_bf16 = false;
    if constexpr (std::is_same_v<B, cuda> && std::is_same_v<T, float>) {
      in_bf16 = compute_precision == Precision::bf16 &&
                ops::attention_forward_chunks_bf16(B{}, d, ops::mask::ChunkLocal{chunk}, s.q.data(),
                                                   s.k.data(), s.v.data(), s.attn.data(), s.lse.data());
    }
    if (!in_bf16)
      ops::attention_forward(B{}, d, ops::mask::ChunkLocal{chunk}, s.q.data(), s.k.data(), s.v.data(),
                             s.attn.data(), s.lse.data());
    finish(ctx, x, y, s);
  }

  /// dy -> dx (overwritten); every parameter gradient accumulated.
  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    const int64_t n = ctx.rows();
    // y = x + wh1(mx) + wh2(a * r)
    wh1.backward(ctx, dy, dmx_, s.wh1);
    wh2.backward(ctx, dy, dar_, s.wh2);
    da_.resize_uninit({n, vdim});
    dr_.resize_uninit({n, vdim});
    ops::gate_mul_backward(B{}, da_.data(), dr_.data(), dar_.data(), s.attn.data(), s.r.data(), n * vdim);
    // r = silu(wr(mx))
    ops::silu_backward(B{}, dr_.data(), dr_.data(), s.r_pre.data(), n * vdim);
    wr.backward(ctx, dr_, tmp_, s.wr);
    ops::add_inplace(B{}, dmx_.data(), tmp_.data(), dmx_.numel());
    // attention
    dq_.resize_uninit({n, zdim});
    dk_.resize_uninit({n, zdim});
    dv_.resize_uninit({n, vdim});
    const ops::AttnDims d = attn_dims(ctx.batch, ctx.seq, ctx.seq, 0);
    bool in_bf16 = false;
    if constexpr (std::is_same_v<B, cuda> && std::is_same_v<T, float>) {
      in_bf16 = compute_precision == Precision::bf16 &&
                ops::attention_backward_chunks_bf16(B{}, d, ops::mask::ChunkLocal{chunk}, s.q.data(),
                                                    s.k.data(), s.v.data(), s.attn.data(), s.lse.data(),
                                                    da_.data(), dq_.data(), dk_.data(), dv_.data());
    }
    if (!in_bf16)
      ops::attention_backward(B{}, d, ops::mask::ChunkLocal{chunk}, s.q.data(), s.k.data(), s.v.data(),
                              s.attn.data(), s.lse.data(), da_.data(), dq_.data(), dk_.data(), dv_.data());
    const int64_t* pos = ctx.positions ? ctx.positions : s.positions.data();
    ops::rope_backward(B{}, dq_.data(), zdim, pos, n, heads, dz, rope_base, ops::RopeStyle::Interleaved);
    ops::rope_backward(B{}, dk_.data(), zdim, pos, n, heads, dz, rope_base, ops::RopeStyle::Interleaved);
    // q, k = zn * scale[0|1] + beta[0|1]
    dz_.resize_uninit({n, zdim});
    ops::mega_qk_backward(B{}, dz_.data(), params.gamma.grad.data(), params.beta.grad.data(), dq_.data(),
                          dk_.data(), s.zn.data(), params.gamma.value.data(), n, zdim, dz);
    // zn = znorm(z): RMS over each head's dz values, no affine.
    dzz_.resize_uninit({n, zdim});
    ops::rmsnorm_backward(B{}, dzz_.data(), static_cast<T*>(nullptr), dz_.data(), s.z.data(),
                          static_cast<const T*>(nullptr), s.zrstd.data(), n * heads, dz);
    wz.backward(ctx, dzz_, tmp_, s.wz);
    ops::add_inplace(B{}, dmx_.data(), tmp_.data(), dmx_.numel());
    // mx = rmsnorm(c), c = cema(x̂)
    rmsnorm.backward(ctx, dmx_, dc_, s.rms);
    cema.backward(ctx, dc_, dxt_, s.cema);
    // v = silu(wv(x̂))
    ops::silu_backward(B{}, dv_.data(), dv_.data(), s.v_pre.data(), n * vdim);
    wv.backward(ctx, dv_, tmp_, s.wv);
    ops::add_inplace(B{}, dxt_.data(), tmp_.data(), dxt_.numel());
    // x̂ = timenorm(x); y = x + ...
    timenorm.backward(ctx, dxt_, dx, s.tsn);
    ops::add_inplace(B{}, dx.data(), dy.data(), dx.numel());
  }

  /// An empty streaming state for `batch` sequences (prior statistics, zero CEMA state, empty KV).
  State make_state(int64_t batch) const {
    State st;
    st.tsn.reset_prior(batch, timenorm.groups);
    st.tsn_next.reset_prior(batch, timenorm.groups);
    st.hx.resize({batch, dim, cema.ndim, 2});  // zero state
    st.hx_next.resize({batch, dim, cema.ndim, 2});
    st.k.resize({batch, chunk, zdim});
    st.v.resize({batch, chunk, vdim});
    st.count = 0;
    return st;
  }

  /// Inference over ctx.seq new tokens of each of ctx.batch sequences, continuing `state` (make_state) and
  /// advancing it. The new tokens must not cross a chunk boundary unless they start at one and fill whole
  /// chunks (the model splits its input so). Row for row the same as forward() over the whole sequences.
  void forward_stream(const SeqContext& ctx, const CemaCache<T, B>& coeffs, TensorView<const T> x,
                      Tensor<T, B>& y, State& state, Saved& s) const {
    const int64_t L = ctx.seq, count = state.count;
    TESSERA_CHECK(state.k.numel() == ctx.batch * chunk * zdim,
                  "MegaGatedAttention::forward_stream: state is for ",
                  state.k.numel() / std::max<int64_t>(1, chunk * zdim), " sequences, input has ", ctx.batch);
    TESSERA_CHECK(count + L <= chunk || (count == 0 && L % chunk == 0),
                  "MegaGatedAttention::forward_stream: ", L, " new tokens after ", count,
                  " cached ones cross a chunk boundary of ", chunk);
    s.x = x;
    timenorm.forward(ctx, x, s.xt, s.tsn, state.tsn.empty() ? nullptr : &state.tsn, &state.tsn_next, false);
    std::swap(state.tsn, state.tsn_next);
    state.hx_next.resize_uninit({ctx.batch, dim, cema.ndim, 2});
    cema.forward_cached(ctx, coeffs, s.xt, s.c, state.hx_ptr(),
                        reinterpret_cast<std::complex<T>*>(state.hx_next.data()));
    std::swap(state.hx, state.hx_next);
    project(ctx, s, chunk_positions(ctx, count, s.positions));
    s.attn.resize_uninit({ctx.rows(), vdim});
    if (count == 0 && L >= chunk) {  // whole chunks: the training path
      ops::attention_forward(B{}, attn_dims(ctx.batch, L, L, 0), ops::mask::ChunkLocal{chunk}, s.q.data(),
                             s.k.data(), s.v.data(), s.attn.data(), static_cast<T*>(nullptr));
    } else {  // continue the current chunk: keys/values of its earlier tokens come from the cache
      for (int64_t b = 0; b < ctx.batch; ++b) {
        T* kc = state.k.data() + b * chunk * zdim;
        T* vc = state.v.data() + b * chunk * vdim;
        Allocator<B>::copy(kc + count * zdim, s.k.data() + b * L * zdim,
                           static_cast<size_t>(L * zdim) * sizeof(T));
        Allocator<B>::copy(vc + count * vdim, s.v.data() + b * L * vdim,
                           static_cast<size_t>(L * vdim) * sizeof(T));
        const ops::AttnDims d = attn_dims(1, L, count + L, count);
        attend_cached(d, s.q.data() + b * L * zdim, kc, vc, s.attn.data() + b * L * vdim, s.lse);
      }
    }
    state.count = (count + L) % chunk;
    finish(ctx, x, y, s);
  }

 private:
  ops::AttnDims attn_dims(int64_t batch, int64_t tq, int64_t tk, int64_t q_offset) const {
    ops::AttnDims d;
    d.B = batch;
    d.Tq = tq;
    d.Tk = tk;
    d.Hq = d.Hkv = heads;
    d.Dh = dz;
    d.Dv = dv;
    d.q_stride = d.k_stride = zdim;
    d.v_stride = d.o_stride = vdim;
    d.q_offset = q_offset;
    d.scale = 1.0;  // the (1 + gamma) / sqrt(dz) factors on q and k are the whole temperature (spec §3.2)
    return d;
  }

  /// Causal attention of a few new query rows to the cached keys/values of the current chunk. The CPU uses
  /// decode_attention for a handful of rows (kv_cache.hpp, host only); the CUDA flash kernel takes any Tq
  /// with q_offset.
  void attend_cached(const ops::AttnDims& d, const T* q, const T* k, const T* v, T* o,
                     Tensor<T, B>& scratch) const {
    if constexpr (is_cpu_v<B>) {
      if (d.Tq <= kDecodeAttentionRows) {
        decode_attention(d, ops::mask::Causal{}, q, k, v, o, scratch);
        return;
      }
    }
    ops::attention_forward(B{}, d, ops::mask::Causal{}, q, k, v, o, static_cast<T*>(nullptr));
  }

  /// RoPE positions restart at every chunk: (first + t) % C for token t of each sequence.
  const int64_t* chunk_positions(const SeqContext& ctx, int64_t first, Tensor<int64_t, B>& pos) const {
    pos.resize_uninit({ctx.rows()});
    ops::fill_positions(B{}, pos.data(), ctx.batch, ctx.seq, first, chunk);  // (first + t) % chunk
    return pos.data();
  }

  /// mx, q, k (rotated), v, r from s.xt and s.c.
  void project(const SeqContext& ctx, Saved& s, const int64_t* positions) const {
    const int64_t n = ctx.rows();
    rmsnorm.forward(ctx, s.c, s.mx, s.rms);
    wz.forward(ctx, s.mx, s.z, s.wz);
    s.zn.resize_uninit({n, zdim});
    s.zrstd.resize_uninit({n * heads});
    ops::rmsnorm_forward(B{}, s.zn.data(), s.zrstd.data(), s.z.data(), static_cast<const T*>(nullptr),
                         n * heads, dz, eps);
    s.q.resize_uninit({n, zdim});
    s.k.resize_uninit({n, zdim});
    ops::mega_qk_forward(B{}, s.q.data(), s.k.data(), s.zn.data(), params.gamma.value.data(),
                         params.beta.value.data(), n, zdim, dz);
    ops::rope_forward(B{}, s.q.data(), zdim, positions, n, heads, dz, rope_base, ops::RopeStyle::Interleaved);
    ops::rope_forward(B{}, s.k.data(), zdim, positions, n, heads, dz, rope_base, ops::RopeStyle::Interleaved);
    wv.forward(ctx, s.xt, s.v_pre, s.wv);
    s.v.resize_uninit({n, vdim});
    ops::silu_forward(B{}, s.v.data(), s.v_pre.data(), n * vdim);
    wr.forward(ctx, s.mx, s.r_pre, s.wr);
    s.r.resize_uninit({n, vdim});
    ops::silu_forward(B{}, s.r.data(), s.r_pre.data(), n * vdim);
  }

  /// y = x + wh1(mx) + wh2(attn * r).
  void finish(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s) const {
    const int64_t n = ctx.rows();
    s.ar.resize_uninit({n, vdim});
    ops::gate_mul_forward(B{}, s.ar.data(), s.attn.data(), s.r.data(), n * vdim);
    wh1.forward(ctx, s.mx, y, s.wh1);
    wh2.forward(ctx, s.ar, s.h, s.wh2);
    ops::add_inplace(B{}, y.data(), s.h.data(), y.numel());
    ops::add_inplace(B{}, y.data(), x.data(), y.numel());
  }

  Tensor<T, B> dmx_, dar_, da_, dr_, dq_, dk_, dv_, dz_, dzz_, dc_, dxt_, tmp_;  // backward scratch
};

}  // namespace tessera::models
