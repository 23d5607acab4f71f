// Cross-attention: queries from x (query context), keys/values from a source sequence (key context),
// projections q_proj/k_proj/v_proj/o_proj, no rotary positions, a cross mask policy (Mask::make_cross).
// bf16: when its four projections compute in bf16 (set_compute_precision) and the mask has a bf16 attention
// kernel (BLT's PatchSegments, ops/blt_cuda.hpp), the layer runs all in bf16 like SelfAttention's all-bf16
// path: x and src cast once (or given in bf16 by the caller), q, k, v written in bf16 by their GEMMs, the
// kernel's bf16 output fed to o_proj, and the backward's gradients in bf16 between the kernel and the GEMMs.
#pragma once
#include <cmath>
#include <type_traits>

#include "tessera/layers/kv_cache.hpp"
#include "tessera/layers/linear.hpp"
#include "tessera/layers/masks.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/elementwise.hpp"

namespace tessera {

template <class T, class Mask = mask::None, class B = cpu>
struct CrossAttention {
  using value_type = T;
  using backend = B;
  struct Saved {
    typename Linear<T, B>::Saved q_s, k_s, v_s, o_s;
    Tensor<T, B> q, k, v, attn, lse;
    SeqContext kctx;
    // The all-bf16 path: the inputs and the kernel's operands and output, kept in bf16 for the backward
    // instead of q, k, v, attn in fp32.
    Tensor<bf16, B> x16, src16, q16, k16, v16, o16;
  };
  Linear<T, B> q_proj, k_proj, v_proj, o_proj;
  int64_t dim = 0, kv_dim = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;

  /// Whether this instantiation has a bf16 attention kernel for its mask: float on CUDA and an
  /// ops::attention_forward overload of Mask::make_cross's policy for bf16 operands.
  static constexpr bool has_bf16_attention = [] {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      return requires(const ops::AttnDims& d, const SeqContext& c, const bf16* p, bf16* o, float* l) {
        ops::attention_forward(cuda{}, d, Mask::make_cross(c, c), p, p, p, o, l);
      };
    } else {
      return false;
    }
  }();
  /// The all-bf16 path (see the file comment): a bf16 attention kernel and all four projections in bf16.
  bool all_bf16() const {
    if constexpr (has_bf16_attention) {
      return q_proj.computes_in_bf16() && k_proj.computes_in_bf16() && v_proj.computes_in_bf16() &&
             o_proj.computes_in_bf16();
    } else {
      return false;
    }
  }

  void setup(const LayerConfig& c) {
    dim = c.dim;
    kv_dim = c.source_dim();
    n_heads = c.n_heads;
    n_kv_heads = c.kv_heads();  // GQA: query head h reads key/value head h / (n_heads / n_kv_heads)
    head_dim = c.hdim();
    TESSERA_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, "CrossAttention: n_heads ",
                  n_heads, " is not a multiple of n_kv_heads ", n_kv_heads);
    q_proj.setup(dim, n_heads * head_dim);
    k_proj.setup(kv_dim, n_kv_heads * head_dim);
    v_proj.setup(kv_dim, n_kv_heads * head_dim);
    o_proj.setup(n_heads * head_dim, dim);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("q_proj", q_proj);
    f("k_proj", k_proj);
    f("v_proj", v_proj);
    f("o_proj", o_proj);
  }

  /// x: [q.rows(), dim] attends to src: [k.rows(), kv_dim]; both contexts share the batch size.
  void forward(const SeqContext& q, TensorView<const T> x, const SeqContext& k, TensorView<const T> src,
               Tensor<T, B>& y, Saved& s) const {
    TESSERA_CHECK(q.batch == k.batch, "CrossAttention: query batch ", q.batch, " != key batch ", k.batch);
    TESSERA_CHECK(src.size(0) == k.rows() && src.size(1) == kv_dim, "CrossAttention: source ", src.shape,
                  " does not match ", k.rows(), " rows of width ", kv_dim);
    if constexpr (has_bf16_attention) {
      if (all_bf16()) {
        s.x16.resize_uninit(x.shape);
        ops::cast(B{}, s.x16.data(), x.data(), x.numel());
        s.src16.resize_uninit(src.shape);
        ops::cast(B{}, s.src16.data(), src.data(), src.numel());
        return forward_from_bf16_inputs(q, k, y, s);
      }
    }
    q_proj.forward(q, x, s.q, s.q_s);
    k_proj.forward(k, src, s.k, s.k_s);
    v_proj.forward(k, src, s.v, s.v_s);
    s.attn.resize_uninit({q.rows(), n_heads * head_dim});
    s.lse.resize_uninit({q.batch, n_heads, q.seq});
    s.kctx = k;
    ops::attention_forward(B{}, dims(q, k), Mask::make_cross(q, k), s.q.data(), s.k.data(), s.v.data(),
                           s.attn.data(), s.lse.data());
    o_proj.forward(q, s.attn, y, s.o_s);
  }
  /// The all-bf16 path from inputs that exist only in bf16: where all_bf16(), a caller may write bf16(x)
  /// [q.rows(), dim] into s.x16 and bf16(src) [k.rows(), kv_dim] into s.src16 itself (e.g. with
  /// RmsNorm::forward_to_bf16) and call this — forward()'s numbers for those inputs, without fp32 copies or
  /// their casts. y = o (+ residual_adds · residual, in o_proj's epilogue; residual [q.rows(), dim], not y).
  void forward_from_bf16_inputs(const SeqContext& q, const SeqContext& k, Tensor<T, B>& y, Saved& s,
                                const T* residual = nullptr, int residual_adds = 1) const {
    TESSERA_CHECK(all_bf16(), "CrossAttention::forward_from_bf16_inputs: needs the all-bf16 path");
    TESSERA_CHECK(q.batch == k.batch, "CrossAttention: query batch ", q.batch, " != key batch ", k.batch);
    TESSERA_CHECK(s.x16.numel() == q.rows() * dim && s.src16.numel() == k.rows() * kv_dim,
                  "CrossAttention::forward_from_bf16_inputs: bf16 inputs of ", s.x16.numel(), " and ",
                  s.src16.numel(), " values for ", q.rows(), " x ", dim, " queries and ", k.rows(), " x ",
                  kv_dim, " keys");
    if constexpr (has_bf16_attention) {
      const TensorView<const T> x(nullptr, Shape{q.rows(), dim}), src(nullptr, Shape{k.rows(), kv_dim});
      q_proj.forward_to_bf16(q, x, s.q16, s.q_s, s.x16.data());
      k_proj.forward_to_bf16(k, src, s.k16, s.k_s, s.src16.data());
      v_proj.forward_to_bf16(k, src, s.v16, s.v_s, s.src16.data());
      s.o16.resize_uninit({q.rows(), n_heads * head_dim});
      s.lse.resize_uninit({q.batch, n_heads, q.seq});
      s.kctx = k;
      ops::attention_forward(B{}, dims(q, k), Mask::make_cross(q, k), s.q16.data(), s.k16.data(),
                             s.v16.data(), s.o16.data(), s.lse.data());
      o_proj.forward_bf16_input(q, s.o16.data(), q.rows(), y, s.o_s, residual, residual_adds);
    }
  }

  /// Inference: keys and values of a source for a cache, kout / vout [k.rows(), n_kv_heads * head_dim].
  void project_kv(const SeqContext& k, TensorView<const T> src, Tensor<T, B>& kout,
                  Tensor<T, B>& vout) const {
    TESSERA_CHECK(src.size(0) == k.rows() && src.size(1) == kv_dim, "CrossAttention::project_kv: source ",
                  src.shape, " does not match ", k.rows(), " rows of width ", kv_dim);
    typename Linear<T, B>::Saved unused;
    k_proj.forward(k, src, kout, unused);
    v_proj.forward(k, src, vout, unused);
  }
  /// project_kv of norm(src) at decoding sizes with frozen bf16 weights: k and v in one small product with
  /// the RMSNorm (gain and eps in `norm`) fused in; round_bf16: k and v rounded to bf16 values (as the
  /// all-bf16 forward's GEMMs write them). False (nothing done) when that does not apply.
  bool project_kv_small(TensorView<const T> src, ops::SmallLinearNorm norm, Tensor<T, B>& kout,
                        Tensor<T, B>& vout, bool round_bf16 = false) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (!k_proj.small_forward_ok(src) || !v_proj.small_forward_ok(src)) return false;
      const int64_t n = src.size(0);
      ops::SmallLinearOut outs[] = {k_proj.small_output(kout, n), v_proj.small_output(vout, n)};
      outs[0].round_bf16 = outs[1].round_bf16 = round_bf16;
      ops::linear_small_bf16(B{}, src.data(), n, kv_dim, outs, 2, norm);
      return true;
    } else {
      return false;
    }
  }
  /// project_kv_small written straight into `n` new rows of `cache` (KvCache::append_rows) with segment ids
  /// seg [n] (device): a cache append in one launch. False (nothing done) when the small products do not
  /// apply.
  bool project_kv_small_into(TensorView<const T> src, ops::SmallLinearNorm norm, KvCache<T, B>& cache,
                             const int64_t* seg) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (!k_proj.small_forward_ok(src) || !v_proj.small_forward_ok(src)) return false;
      const int64_t n = src.size(0), kvw = n_kv_heads * head_dim;
      TESSERA_CHECK(cache.k_width() == kvw && cache.v_width() == kvw,
                    "CrossAttention::project_kv_small_into: ", "cache rows of width ", cache.k_width(), "/",
                    cache.v_width(), ", expected ", kvw);
      const auto rows = cache.append_rows(n);
      const ops::SmallLinearOut outs[] = {{k_proj.frozen_weight_bf16(), k_proj.bias(), rows.k, kvw},
                                          {v_proj.frozen_weight_bf16(), v_proj.bias(), rows.v, kvw}};
      ops::linear_small_bf16(B{}, src.data(), n, kv_dim, outs, 2, norm, {}, {seg, rows.seg});
      return true;
    } else {
      return false;
    }
  }
  /// Inference against cached keys/values (no backward): q.batch query sequences of q.seq rows, x [q.rows(),
  /// dim]; caches[b] holds sequence b's keys, values (project_kv) and segment ids. The mask is
  /// Mask::make_cross of sequence b's slice of the query context and a key context over the cache
  /// (segment_ids = its segments).
  void forward_cached(const SeqContext& q, TensorView<const T> x, const KvCache<T, B>* const* caches,
                      Tensor<T, B>& y, Saved& s) const {
    forward_cached_impl(q, x, caches, y, s, {}, nullptr, 0);
  }
  /// Decoding with frozen bf16 weights: forward_cached with an RMSNorm of the queries' input (gain and eps in
  /// `norm`; x is the norm's input) and a residual added `residual_adds` times to the output, fused into the
  /// small products of q_proj and o_proj. Only where fuses_decode(x) holds.
  void forward_cached_fused(const SeqContext& q, TensorView<const T> x, ops::SmallLinearNorm norm,
                            const T* residual, int residual_adds, const KvCache<T, B>* const* caches,
                            Tensor<T, B>& y, Saved& s) const {
    TESSERA_CHECK(
        fuses_decode(x) && norm.weight && residual,
        "CrossAttention::forward_cached_fused: needs frozen bf16 weights, a decoding-size input, a norm ",
        "and a residual");
    forward_cached_impl(q, x, caches, y, s, norm, residual, residual_adds);
  }
  /// Inference with frozen bf16 weights at decoding sizes (no backward): forward() of norm_q(x) against
  /// norm_k(src), both RMSNorms fused into the small products (q_proj; k_proj and v_proj in one launch), and
  /// `residual` added `residual_adds` times in o_proj's — 4 launches with the attention. Where all_bf16()
  /// holds, q, k and v are rounded to bf16 values in the products, so that the fp32 kernel computes what the
  /// all-bf16 forward's bf16 kernel does (its output is rounded by o_proj's product, which reads bf16(x)).
  /// False (nothing done) when the small products do not apply to x or src.
  bool forward_fused(const SeqContext& q, TensorView<const T> x, ops::SmallLinearNorm norm_q,
                     const SeqContext& k, TensorView<const T> src, ops::SmallLinearNorm norm_k,
                     const T* residual, int residual_adds, Tensor<T, B>& y, Saved& s) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (!norm_q.weight || !norm_k.weight || !residual || !fuses_decode(x)) return false;
      TESSERA_CHECK(q.batch == k.batch && x.size(0) == q.rows() && src.size(0) == k.rows(),
                    "CrossAttention::forward_fused: ", x.size(0), " query rows and ", src.size(0),
                    " key rows for contexts of ", q.batch, " x ", q.seq, " and ", k.batch, " x ", k.seq);
      const bool round = all_bf16();
      if (!project_kv_small(src, norm_k, s.k, s.v, round)) return false;  // src too large: nothing done
      ops::SmallLinearOut qo = q_proj.small_output(s.q, x.size(0));
      qo.round_bf16 = round;
      ops::linear_small_bf16(B{}, x.data(), x.size(0), x.size(1), &qo, 1, norm_q);
      const int64_t w = n_heads * head_dim;
      s.attn.resize_uninit({q.rows(), w});
      ops::attention_forward(B{}, dims(q, k), Mask::make_cross(q, k), s.q.data(), s.k.data(), s.v.data(),
                             s.attn.data(), static_cast<T*>(nullptr));
      ops::SmallLinearOut o = o_proj.small_output(y, q.rows());
      o.residual = residual;
      o.residual_adds = residual_adds;
      ops::linear_small_bf16(B{}, s.attn.data(), q.rows(), w, &o, 1);
      return true;
    } else {
      return false;
    }
  }
  bool fuses_decode(TensorView<const T> x) const {
    return q_proj.small_forward_ok(x) && o_proj.frozen_weight_bf16() && (n_heads * head_dim) % 8 == 0;
  }

 private:
  void forward_cached_impl(const SeqContext& q, TensorView<const T> x, const KvCache<T, B>* const* caches,
                           Tensor<T, B>& y, Saved& s, ops::SmallLinearNorm norm, const T* residual,
                           int residual_adds) const {
    TESSERA_CHECK(x.size(0) == q.rows(), "CrossAttention::forward_cached: ", x.size(0),
                  " rows but the context has ", q.batch, " x ", q.seq);
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (norm.weight) {
        const ops::SmallLinearOut o = q_proj.small_output(s.q, x.size(0));
        ops::linear_small_bf16(B{}, x.data(), x.size(0), x.size(1), &o, 1, norm);
      } else {
        q_proj.forward(q, x, s.q, s.q_s);
      }
    } else {
      q_proj.forward(q, x, s.q, s.q_s);
    }
    const int64_t w = n_heads * head_dim, kvw = n_kv_heads * head_dim;
    s.attn.resize_uninit({q.rows(), w});
    for (int64_t b = 0; b < q.batch; ++b) {
      const KvCache<T, B>& c = *caches[b];
      TESSERA_CHECK(c.k_width() == kvw && c.v_width() == kvw,
                    "CrossAttention::forward_cached: cache of sequence ", b, " has row widths ", c.k_width(),
                    "/", c.v_width(), ", expected ", kvw);
      SeqContext qb = q, kb;
      qb.batch = 1;
      if (q.segment_ids) qb.segment_ids = q.segment_ids + b * q.seq;
      kb.batch = 1;
      kb.seq = c.size();
      kb.segment_ids = c.segments();
      const T* qp = s.q.data() + b * q.seq * w;
      T* op = s.attn.data() + b * q.seq * w;
      if (q.seq <= kDecodeAttentionRows)
        decode_attention(dims(qb, kb), Mask::make_cross(qb, kb), qp, c.k(), c.v(), op, s.lse);
      else
        ops::attention_forward(B{}, dims(qb, kb), Mask::make_cross(qb, kb), qp, c.k(), c.v(), op,
                               static_cast<T*>(nullptr));
    }
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      if (residual) {
        ops::SmallLinearOut o = o_proj.small_output(y, q.rows());
        o.residual = residual;
        o.residual_adds = residual_adds;
        return ops::linear_small_bf16(B{}, s.attn.data(), q.rows(), w, &o, 1);
      }
    }
    o_proj.forward(q, s.attn, y, s.o_s);
  }

 public:
  /// dx (overwritten) and dsrc (overwritten) from dy; parameter gradients accumulated.
  void backward(const SeqContext& q, TensorView<const T> dy, Tensor<T, B>& dx, Tensor<T, B>& dsrc, Saved& s) {
    const SeqContext& k = s.kctx;
    if (all_bf16()) return backward_bf16(q, dy, dx, dsrc, s);
    o_proj.backward(q, dy, d_attn_, s.o_s);
    dq_.resize_uninit(s.q.shape());
    dk_.resize_uninit(s.k.shape());
    dv_.resize_uninit(s.v.shape());
    ops::attention_backward(B{}, dims(q, k), Mask::make_cross(q, k), s.q.data(), s.k.data(), s.v.data(),
                            s.attn.data(), s.lse.data(), d_attn_.data(), dq_.data(), dk_.data(), dv_.data());
    q_proj.backward(q, dq_, dx, s.q_s);
    k_proj.backward(k, dk_, dsrc, s.k_s);
    v_proj.backward(k, dv_, dsrc, s.v_s, true);  // dsrc = dk Wk + dv Wv, the second accumulated by its GEMM
  }

 private:
  void backward_bf16(const SeqContext& q, TensorView<const T> dy, Tensor<T, B>& dx, Tensor<T, B>& dsrc,
                     Saved& s) {
    if constexpr (has_bf16_attention) {
      const SeqContext& k = s.kctx;
      auto& [do16, dq16, dk16, dv16] = shared_scratch<CrossAttention, bf16, B, 4>();
      o_proj.backward_to_bf16(q, dy, do16, s.o_s, s.o16.data());
      dq16.resize_uninit(s.q16.shape());
      dk16.resize_uninit(s.k16.shape());
      dv16.resize_uninit(s.v16.shape());
      ops::attention_backward(B{}, dims(q, k), Mask::make_cross(q, k), s.q16.data(), s.k16.data(),
                              s.v16.data(), s.o16.data(), s.lse.data(), do16.data(), dq16.data(), dk16.data(),
                              dv16.data());
      q_proj.backward_from_bf16(q, dq16.data(), dx, s.q_s, false, s.x16.data());
      k_proj.backward_from_bf16(k, dk16.data(), dsrc, s.k_s, false, s.src16.data());
      v_proj.backward_from_bf16(k, dv16.data(), dsrc, s.v_s, true, s.src16.data());
    }
  }

  ops::AttnDims dims(const SeqContext& q, const SeqContext& k) const {
    ops::AttnDims d{};
    d.B = q.batch;
    d.Tq = q.seq;
    d.Tk = k.seq;
    d.Hq = n_heads;
    d.Hkv = n_kv_heads;
    d.Dh = head_dim;
    d.q_stride = d.o_stride = n_heads * head_dim;
    d.k_stride = d.v_stride = n_kv_heads * head_dim;
    d.scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    return d;
  }
  Tensor<T, B> d_attn_, dq_, dk_, dv_;
};

}  // namespace tessera
