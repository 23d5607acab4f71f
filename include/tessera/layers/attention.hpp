// Self-attention with rotary positions and a mask policy; projections are Linear children
// (q_proj, k_proj, v_proj, o_proj) so checkpoint keys follow the Llama/HF layout. GQA via n_kv_heads.
// Backend-generic: every index array (ctx.positions, the cache's rows) is in backend B's memory; rotary
// positions pos_offset + t are filled by an op (on the device on CUDA).
#pragma once
#include <cmath>

#include "tessera/layers/kv_cache.hpp"
#include "tessera/layers/linear.hpp"
#include "tessera/layers/masks.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/attention_bf16.hpp"
#include "tessera/ops/elementwise.hpp"

namespace tessera {

template <class T, class Rope = rope::Interleaved, class Mask = mask::Causal, class B = cpu>
struct SelfAttention {
  using value_type = T;
  using backend = B;
  struct Saved {
    typename Linear<T, B>::Saved q_s, k_s, v_s, o_s;
    Tensor<T, B> q, k, v, attn, lse;
    Tensor<int64_t, B> positions;  // pos_offset + t when ctx.positions is null
    // bf16 attention with bf16 projections (forward_bf16): the layer input and the kernel's operands and
    // output, kept in bf16 for the backward instead of q, k, v, attn in fp32.
    Tensor<bf16, B> x16, q16, k16, v16, o16;
  };
  Linear<T, B> q_proj, k_proj, v_proj, o_proj;
  int64_t dim = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  double rope_theta = 10000.0;
  /// bf16: the projections' GEMMs and the attention kernel take bf16 operands (layers/precision.hpp); masks
  /// without a bf16 kernel keep the fp32 attention (the projections still run in bf16).
  Precision compute_precision = Precision::fp32;
  /// Whether this instantiation can run the bf16 attention kernel: float on CUDA, and a mask that is (or, in
  /// some contexts, reduces to: mask::PositionOnly) a position mask the kernel supports.
  static constexpr bool has_bf16_attention = [] {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda> && mask::PositionOnly<Mask>::possible) {
      return requires(const ops::AttnDims& d, const bf16* p, bf16* o, float* l) {
        ops::attention_forward(cuda{}, d, *mask::PositionOnly<Mask>::make(SeqContext{}), p, p, p, o, l);
      };
    } else {
      return false;
    }
  }();

  void setup(const LayerConfig& c) {
    dim = c.dim;
    n_heads = c.n_heads;
    n_kv_heads = c.kv_heads();
    head_dim = c.hdim();
    rope_theta = c.rope_theta;
    TESSERA_CHECK(n_heads > 0 && n_heads % n_kv_heads == 0, "SelfAttention: n_heads ", n_heads,
                  " is not a multiple of n_kv_heads ", n_kv_heads);
    q_proj.setup(dim, n_heads * head_dim);
    k_proj.setup(dim, n_kv_heads * head_dim);
    v_proj.setup(dim, n_kv_heads * head_dim);
    o_proj.setup(n_heads * head_dim, dim);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("q_proj", q_proj);
    f("k_proj", k_proj);
    f("v_proj", v_proj);
    f("o_proj", o_proj);
  }

  ops::AttnDims dims(const SeqContext& ctx) const {
    ops::AttnDims d{};
    d.B = ctx.batch;
    d.Tq = d.Tk = ctx.seq;
    d.Hq = n_heads;
    d.Hkv = n_kv_heads;
    d.Dh = head_dim;
    d.q_stride = d.o_stride = n_heads * head_dim;
    d.k_stride = d.v_stride = n_kv_heads * head_dim;
    d.scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    return d;
  }

  /// residual (optional, [rows, dim], not y): y = attention(x) + residual, added by o_proj (Linear::forward).
  void forward(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
               const T* residual = nullptr) const {
    TESSERA_CHECK(x.size(0) == ctx.rows(), "SelfAttention: ", x.size(0), " rows but the context has ",
                  ctx.batch, " x ", ctx.seq);
    if constexpr (has_bf16_attention) {
      if (all_bf16(ctx)) return forward_bf16(ctx, x, y, s, residual);
    }
    const bf16* x16 = shared_input_bf16(x);  // bf16 compute: one cast of x for the three projections
    q_proj.forward(ctx, x, s.q, s.q_s, x16);
    k_proj.forward(ctx, x, s.k, s.k_s, x16);
    v_proj.forward(ctx, x, s.v, s.v_s, x16);
    const int64_t n = ctx.rows();
    rope_forward_qk(ctx, s, s.q, s.k);
    const auto d = dims(ctx);
    s.attn.resize_uninit({n, n_heads * head_dim});
    s.lse.resize_uninit({ctx.batch, n_heads, ctx.seq});
    if (use_bf16_attention(ctx)) {
      if constexpr (has_bf16_attention) attention_forward_bf16(ctx, s);
    } else {
      ops::attention_forward(B{}, d, Mask::make(ctx), s.q.data(), s.k.data(), s.v.data(), s.attn.data(),
                             s.lse.data());
    }
    o_proj.forward(ctx, s.attn, y, s.o_s, nullptr, residual);
  }

  /// Inference with a KV cache (no backward): ctx.batch sequences with ctx.seq new tokens each, x [rows,
  /// dim]. caches[b] (widths n_kv_heads * head_dim) holds sequence b's earlier keys and values and receives
  /// the new ones; its queries attend to every cached key the position part of Mask allows (mask::Cached:
  /// causal, window ctx.window). RoPE positions: ctx.positions [rows] or ctx.pos_offset + t. Document cuts
  /// are the caller's job (clear a cache where a document starts). Row for row the same as forward() over the
  /// whole sequence.
  void forward_cached(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y,
                      KvCache<T, B>* const* caches, Saved& s) const {
    forward_cached_impl(ctx, x, y, caches, s, nullptr, nullptr);
  }
  /// Decoding with frozen bf16 weights: forward_cached with the RMSNorm in front of the layer (gain and eps
  /// in `norm`; x is the norm's input) and the residual add after it fused into the small products:
  /// y = residual + attention(rmsnorm(x)) in the launches of forward_cached alone. Only where
  /// fuses_decode(x) holds.
  void forward_cached_fused(const SeqContext& ctx, TensorView<const T> x, ops::SmallLinearNorm norm,
                            const T* residual, Tensor<T, B>& y, KvCache<T, B>* const* caches,
                            Saved& s) const {
    TESSERA_CHECK(
        fuses_decode(x) && norm.weight && residual,
        "SelfAttention::forward_cached_fused: needs frozen bf16 weights, a decoding-size input, a norm ",
        "and a residual");
    forward_cached_impl(ctx, x, y, caches, s, &norm, residual);
  }
  bool fuses_decode(TensorView<const T> x) const {
    return q_proj.small_forward_ok(x) && k_proj.small_forward_ok(x) && v_proj.small_forward_ok(x) &&
           o_proj.frozen_weight_bf16() && (n_heads * head_dim) % 8 == 0;
  }

 private:
  void forward_cached_impl(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y,
                           KvCache<T, B>* const* caches, Saved& s, const ops::SmallLinearNorm* norm,
                           const T* residual) const {
    static_assert(
        mask::Cached<Mask>::supported && mask::Cached<Mask>::causal,
        "SelfAttention::forward_cached needs a causal mask (optionally windowed / with document cuts)");
    TESSERA_CHECK(x.size(0) == ctx.rows(), "SelfAttention::forward_cached: ", x.size(0),
                  " rows but the context has ", ctx.batch, " x ", ctx.seq);
    const int64_t n = ctx.rows(), qw = n_heads * head_dim, kw = n_kv_heads * head_dim;
    for (int64_t b = 0; b < ctx.batch; ++b)
      TESSERA_CHECK(caches[b]->k_width() == kw && caches[b]->v_width() == kw,
                    "SelfAttention::forward_cached: cache of sequence ", b, " has row widths ",
                    caches[b]->k_width(), "/", caches[b]->v_width(), ", expected ", kw);
    const int64_t* pos = Rope::enabled ? positions(ctx, s) : nullptr;
    const ops::SmallLinearNorm small_norm = norm ? *norm : ops::SmallLinearNorm{};
    // One sequence with frozen bf16 weights: q/k/v, RoPE and the cache append are one launch.
    const bool appended =
        Rope::enabled && ctx.batch == 1 && project_qkv_small(x, s, small_norm, pos, caches[0]);
    if (!appended && !project_qkv_small(x, s, small_norm)) {
      const bf16* x16 = shared_input_bf16(x);  // bf16 compute: one cast of x for the three projections
      q_proj.forward(ctx, x, s.q, s.q_s, x16);
      k_proj.forward(ctx, x, s.k, s.k_s, x16);
      v_proj.forward(ctx, x, s.v, s.v_s, x16);
    }
    const int64_t W = mask::Cached<Mask>::window(ctx);
    const ops::mask::SlidingWindow m{W > 0 ? W : INT64_MAX / 4};
    s.attn.resize_uninit({n, qw});
    for (int64_t b = 0; b < ctx.batch; ++b) {
      KvCache<T, B>& c = *caches[b];
      const int64_t r0 = b * ctx.seq;
      if (!appended) {
        if constexpr (Rope::enabled) {  // RoPE and the append in one pass: the rotated keys go to the cache
          const auto rows = c.append_rows(ctx.seq);
          ops::rope_qk_append(B{}, s.q.data() + r0 * qw, s.k.data() + r0 * kw, s.v.data() + r0 * kw, pos + r0,
                              ctx.seq, n_heads, n_kv_heads, head_dim, kw, rope_theta, Rope::style, rows.k,
                              rows.v, rows.seg);
        } else {
          c.append(s.k.data() + r0 * kw, kw, s.v.data() + r0 * kw, kw, ctx.seq);
        }
      }
      ops::AttnDims d = dims(ctx);
      d.B = 1;
      d.Tk = c.size();
      d.q_offset = d.Tk - ctx.seq;
      const T* qb = s.q.data() + b * ctx.seq * qw;
      T* ob = s.attn.data() + b * ctx.seq * qw;
      if (ctx.seq <= kDecodeAttentionRows)
        decode_attention(d, m, qb, c.k(), c.v(), ob, s.lse);  // lse: scratch here
      else
        ops::attention_forward(B{}, d, m, qb, c.k(), c.v(), ob, static_cast<T*>(nullptr));
    }
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (residual) {
        ops::SmallLinearOut o = o_proj.small_output(y, n);
        o.residual = residual;
        return ops::linear_small_bf16(B{}, s.attn.data(), n, qw, &o, 1);
      }
    }
    o_proj.forward(ctx, s.attn, y, s.o_s);
  }

 public:
  void backward(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    if constexpr (has_bf16_attention) {
      if (all_bf16(ctx)) return backward_bf16(ctx, dy, dx, s);
    }
    auto& [d_attn, dq, dk, dv] = shared_scratch<SelfAttention, T, B, 4>();
    o_proj.backward(ctx, dy, d_attn, s.o_s);
    dq.resize_uninit(s.q.shape());
    dk.resize_uninit(s.k.shape());
    dv.resize_uninit(s.v.shape());
    if (use_bf16_attention(ctx)) {
      if constexpr (has_bf16_attention) attention_backward_bf16(ctx, s, d_attn, dq, dk, dv);
    } else {
      ops::attention_backward(B{}, dims(ctx), Mask::make(ctx), s.q.data(), s.k.data(), s.v.data(),
                              s.attn.data(), s.lse.data(), d_attn.data(), dq.data(), dk.data(), dv.data());
    }
    rope_backward_qk(ctx, s, dq, dk);
    // dx = dq Wq + dk Wk + dv Wv, the last two accumulated by their GEMMs.
    const bf16* x16 = shared_input_bf16(s.q_s.x);
    q_proj.backward(ctx, dq, dx, s.q_s, false, x16);
    k_proj.backward(ctx, dk, dx, s.k_s, true, x16);
    v_proj.backward(ctx, dv, dx, s.v_s, true, x16);
  }

 private:
  // bf16 attention (ops/attention_bf16.hpp) runs for float models on CUDA whose mask is a position mask in
  // this context (has_bf16_attention, mask::PositionOnly); forward and backward decide alike from the same
  // context. Saved keeps q, k, v (after RoPE) and the output in fp32; the bf16 operands are cast into
  // per-thread scratch in forward and again in backward (the output was rounded to bf16 by the kernel, so its
  // cast back is exact).
  bool use_bf16_attention(const SeqContext& ctx) const {
    if constexpr (has_bf16_attention) {
      return compute_precision == Precision::bf16 && mask::PositionOnly<Mask>::make(ctx).has_value();
    } else {
      return false;
    }
  }
  static std::array<Tensor<bf16, B>, 9>& scratch16() { return shared_scratch<SelfAttention, bf16, B, 9>(); }

  /// The all-bf16 path: bf16 attention and all four projections in bf16 (set_compute_precision sets them
  /// together). Then the layer keeps bf16 copies only (Saved::x16 .. o16): the input is cast once for the
  /// three projections and their backward; q and k exist in fp32 only between their GEMMs and the RoPE that
  /// writes their bf16 copies (per-thread scratch), v's GEMM writes bf16, and the kernel's bf16 output feeds
  /// o_proj directly. Backward: o_proj writes dO in bf16, the kernel's bf16 dq/dk are rotated back in place,
  /// and the projections' backward reads the bf16 gradients. The numbers are those of the mixed path above
  /// (every operand is the same bf16 value, every rounding happens once at the same place) with one cast and
  /// one RoPE launch per direction instead of 13 casts and 4 RoPE launches, and half the saved bytes.
  bool all_bf16(const SeqContext& ctx) const {
    return use_bf16_attention(ctx) && q_proj.computes_in_bf16() && k_proj.computes_in_bf16() &&
           v_proj.computes_in_bf16() && o_proj.computes_in_bf16();
  }

 public:
  /// The all-bf16 path from an input that exists only in bf16: where takes_bf16_input(ctx), a caller may
  /// write bf16(x) [rows, dim] into bf16_input(s) itself (e.g. RmsNorm::forward_to_bf16) and call
  /// forward_from_bf16_input — forward()'s numbers for that x, without an fp32 x or its cast.
  bool takes_bf16_input(const SeqContext& ctx) const {
    if constexpr (has_bf16_attention) {
      return all_bf16(ctx);
    } else {
      return false;
    }
  }
  Tensor<bf16, B>& bf16_input(Saved& s) const { return s.x16; }
  void forward_from_bf16_input(const SeqContext& ctx, Tensor<T, B>& y, Saved& s,
                               const T* residual = nullptr) const {
    TESSERA_CHECK(takes_bf16_input(ctx) && s.x16.numel() == ctx.rows() * dim,
                  "SelfAttention::forward_from_bf16_input: needs the all-bf16 path and bf16_input(s) of [",
                  ctx.rows(), ", ", dim, "]");
    forward_bf16_projected(ctx, TensorView<const T>(nullptr, Shape{ctx.rows(), dim}), y, s, residual);
  }

 private:
  void forward_bf16(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
                    const T* residual = nullptr) const {
    s.x16.resize_uninit(x.shape);
    ops::cast(B{}, s.x16.data(), x.data(), x.numel());
    forward_bf16_projected(ctx, x, y, s, residual);
  }
  /// forward_bf16 once s.x16 holds bf16(x); x gives the shape only.
  void forward_bf16_projected(const SeqContext& ctx, TensorView<const T> x, Tensor<T, B>& y, Saved& s,
                              const T* residual) const {
    if constexpr (has_bf16_attention) {
      const int64_t n = ctx.rows();
      auto& scratch = shared_scratch<SelfAttention, T, B, 4>();  // the mixed path's backward scratch
      Tensor<T, B>& q = scratch[1];
      Tensor<T, B>& k = scratch[2];
      q_proj.forward(ctx, x, q, s.q_s, s.x16.data());
      k_proj.forward(ctx, x, k, s.k_s, s.x16.data());
      v_proj.forward_to_bf16(ctx, x, s.v16, s.v_s, s.x16.data());
      s.q16.resize_uninit(q.shape());
      s.k16.resize_uninit(k.shape());
      if constexpr (Rope::enabled) {
        ops::rope_qk(B{}, q.data(), k.data(), s.q16.data(), s.k16.data(), positions(ctx, s), n, n_heads,
                     n_kv_heads, head_dim, rope_theta, Rope::style, false);
      } else {
        ops::cast(B{}, s.q16.data(), q.data(), q.numel());
        ops::cast(B{}, s.k16.data(), k.data(), k.numel());
      }
      s.o16.resize_uninit({n, n_heads * head_dim});
      s.lse.resize_uninit({ctx.batch, n_heads, ctx.seq});
      ops::attention_forward(B{}, dims(ctx), *mask::PositionOnly<Mask>::make(ctx), s.q16.data(), s.k16.data(),
                             s.v16.data(), s.o16.data(), s.lse.data());
      o_proj.forward_bf16_input(ctx, s.o16.data(), n, y, s.o_s, residual);
    }
  }
  void backward_bf16(const SeqContext& ctx, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    if constexpr (has_bf16_attention) {
      auto& [q16, k16, v16, o16, do16, dq16, dk16, dv16, x16] = scratch16();
      o_proj.backward_to_bf16(ctx, dy, do16, s.o_s, s.o16.data());
      dq16.resize_uninit(s.q16.shape());
      dk16.resize_uninit(s.k16.shape());
      dv16.resize_uninit(s.v16.shape());
      ops::attention_backward(B{}, dims(ctx), *mask::PositionOnly<Mask>::make(ctx), s.q16.data(),
                              s.k16.data(), s.v16.data(), s.o16.data(), s.lse.data(), do16.data(),
                              dq16.data(), dk16.data(), dv16.data());
      if constexpr (Rope::enabled) {
        const int64_t* pos = ctx.positions ? ctx.positions : s.positions.data();
        ops::rope_qk(B{}, dq16.data(), dk16.data(), dq16.data(), dk16.data(), pos, ctx.rows(), n_heads,
                     n_kv_heads, head_dim, rope_theta, Rope::style, true);
      }
      q_proj.backward_from_bf16(ctx, dq16.data(), dx, s.q_s, false, s.x16.data());
      k_proj.backward_from_bf16(ctx, dk16.data(), dx, s.k_s, true, s.x16.data());
      v_proj.backward_from_bf16(ctx, dv16.data(), dx, s.v_s, true, s.x16.data());
    }
  }

  /// Decoding-size inference with frozen bf16 weights (Linear::small_forward_ok): q, k and v of the same x in
  /// one launch (ops::linear_small_bf16) into s.q, s.k, s.v. With `append_to` (one sequence's new tokens at
  /// positions `pos`, a layer with RoPE), RoPE rides in the products' epilogue (queries rotated into s.q) and
  /// k, v go straight into new rows of that cache: a decoding step's projections, rotation and cache append
  /// in one launch. False (nothing done) when it does not apply.
  bool project_qkv_small(TensorView<const T> x, Saved& s, ops::SmallLinearNorm norm = {},
                         const int64_t* pos = nullptr, KvCache<T, B>* append_to = nullptr) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (!q_proj.small_forward_ok(x) || !k_proj.small_forward_ok(x) || !v_proj.small_forward_ok(x))
        return false;
      const int64_t n = x.size(0);
      if (!append_to) {
        const ops::SmallLinearOut outs[] = {q_proj.small_output(s.q, n), k_proj.small_output(s.k, n),
                                            v_proj.small_output(s.v, n)};
        ops::linear_small_bf16(B{}, x.data(), n, dim, outs, 3, norm);
        return true;
      }
      if constexpr (Rope::enabled) {
        const int64_t kw = n_kv_heads * head_dim;
        const auto rows = append_to->append_rows(n);
        const ops::SmallLinearOut outs[] = {q_proj.small_output(s.q, n),
                                            {k_proj.frozen_weight_bf16(), k_proj.bias(), rows.k, kw},
                                            {v_proj.frozen_weight_bf16(), v_proj.bias(), rows.v, kw}};
        ops::linear_small_bf16(B{}, x.data(), n, dim, outs, 3, norm,
                               {pos, head_dim, rope_theta, Rope::style == ops::RopeStyle::Interleaved, 2},
                               {nullptr, rows.seg});
        return true;
      }
    }
    return false;
  }

  /// bf16(x) in scratch when the projections compute in bf16 (nullptr otherwise: each casts for itself).
  const bf16* shared_input_bf16(TensorView<const T> x) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (q_proj.computes_in_bf16() && k_proj.computes_in_bf16() && v_proj.computes_in_bf16()) {
        Tensor<bf16, B>& x16 = scratch16()[8];
        x16.resize_uninit(x.shape);
        ops::cast(B{}, x16.data(), x.data(), x.numel());
        return x16.data();
      }
    }
    return nullptr;
  }

  void attention_forward_bf16(const SeqContext& ctx, Saved& s) const {
    auto& [q16, k16, v16, o16, do16, dq16, dk16, dv16, x16] = scratch16();
    cast_to(q16, s.q);
    cast_to(k16, s.k);
    cast_to(v16, s.v);
    o16.resize_uninit(s.attn.shape());
    ops::attention_forward(B{}, dims(ctx), *mask::PositionOnly<Mask>::make(ctx), q16.data(), k16.data(),
                           v16.data(), o16.data(),
                           s.lse.data());
    ops::cast(B{}, s.attn.data(), o16.data(), o16.numel());
  }
  void attention_backward_bf16(const SeqContext& ctx, Saved& s, const Tensor<T, B>& d_attn, Tensor<T, B>& dq,
                               Tensor<T, B>& dk, Tensor<T, B>& dv) {
    auto& [q16, k16, v16, o16, do16, dq16, dk16, dv16, x16] = scratch16();
    cast_to(q16, s.q);
    cast_to(k16, s.k);
    cast_to(v16, s.v);
    cast_to(o16, s.attn);
    cast_to(do16, d_attn);
    dq16.resize_uninit(s.q.shape());
    dk16.resize_uninit(s.k.shape());
    dv16.resize_uninit(s.v.shape());
    ops::attention_backward(B{}, dims(ctx), *mask::PositionOnly<Mask>::make(ctx), q16.data(), k16.data(),
                            v16.data(), o16.data(),
                            s.lse.data(), do16.data(), dq16.data(), dk16.data(), dv16.data());
    ops::cast(B{}, dq.data(), dq16.data(), dq.numel());
    ops::cast(B{}, dk.data(), dk16.data(), dk.numel());
    ops::cast(B{}, dv.data(), dv16.data(), dv.numel());
  }
  static void cast_to(Tensor<bf16, B>& dst, const Tensor<T, B>& src) {
    dst.resize_uninit(src.shape());
    ops::cast(B{}, dst.data(), src.data(), src.numel());
  }

  /// RoPE on q [rows, n_heads * head_dim] and k [rows, n_kv_heads * head_dim] in place, and its backward on
  /// dq, dk (the positions the forward used).
  void rope_forward_qk(const SeqContext& ctx, Saved& s, Tensor<T, B>& q, Tensor<T, B>& k) const {
    if constexpr (Rope::enabled) {
      ops::rope_qk(B{}, q.data(), k.data(), q.data(), k.data(), positions(ctx, s), ctx.rows(), n_heads,
                   n_kv_heads, head_dim, rope_theta, Rope::style, false);
    }
  }
  void rope_backward_qk(const SeqContext& ctx, Saved& s, Tensor<T, B>& dq, Tensor<T, B>& dk) const {
    if constexpr (Rope::enabled) {
      const int64_t* pos = ctx.positions ? ctx.positions : s.positions.data();
      ops::rope_qk(B{}, dq.data(), dk.data(), dq.data(), dk.data(), pos, ctx.rows(), n_heads, n_kv_heads,
                   head_dim, rope_theta, Rope::style, true);
    }
  }

  /// Rotary positions: the context's, or pos_offset + t within each sequence.
  static const int64_t* positions(const SeqContext& ctx, Saved& s) {
    if (ctx.positions) return ctx.positions;
    s.positions.resize_uninit({ctx.rows()});
    ops::fill_positions(B{}, s.positions.data(), ctx.batch, ctx.seq, ctx.pos_offset);
    return s.positions.data();
  }
};

}  // namespace tessera
