// Key/value caches for incremental (inference-only) attention.
//
//   KvCache<T>       one sequence's keys and values of one attention layer (rows = tokens, RoPE already
//   applied),
//                    optionally a segment id per row (cross-attention memories); a sliding window lets it
//                    drop rows no future query can see.
//   KvCacheStack<T>  one sequence's caches of a stack of self-attention layers plus the RoPE position of the
//                    next token.
//   decode_attention single-query-row attention for decoding steps (the blockwise ops::attention_forward
//   packs
//                    64-row tiles, which costs more than the products when a query is one row).
//   mask::Cached<M>  which self-attention mask policies a cache can reproduce: causal masks with an optional
//                    sliding window (ctx.window); document cuts are the caller's job — clear the cache where
//                    a new document starts (RoPE depends only on position differences, so a cleared cache
//                    equals the document mask).
//
// Used by SelfAttention::forward_cached, CrossAttention::forward_cached and the models' generators. Host
// memory only for now (the CPU backend).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/layers/masks.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/eigen.hpp"

namespace tessera {

template <class T, class B = cpu>
class KvCache {
  static_assert(is_cpu_v<B>, "KvCache: only host (CPU backend) caches exist so far");

 public:
  KvCache() = default;
  KvCache(int64_t k_width, int64_t v_width, int64_t window = 0) { setup(k_width, v_width, window); }

  /// k_width / v_width: elements per cached row (kv_heads * head_dim). window > 0: every query sees at most
  /// `window` keys ending at itself, so older rows may be dropped when the buffer is full; 0 keeps every row.
  void setup(int64_t k_width, int64_t v_width, int64_t window = 0) {
    TESSERA_CHECK(k_width > 0 && v_width > 0, "KvCache: row widths must be positive, got ", k_width, " and ",
                  v_width);
    TESSERA_CHECK(window >= 0, "KvCache: window must be >= 0, got ", window);
    kw_ = k_width, vw_ = v_width, window_ = window;
    n_ = cap_ = 0;
    k_.clear(), v_.clear(), seg_.clear();
  }
  int64_t size() const { return n_; }
  int64_t k_width() const { return kw_; }
  int64_t v_width() const { return vw_; }
  int64_t window() const { return window_; }
  /// Rows [size(), k_width()] / [size(), v_width()] and their segment ids [size()], oldest first.
  const T* k() const { return k_.data(); }
  const T* v() const { return v_.data(); }
  const int64_t* segments() const { return seg_.data(); }

  void clear() { n_ = 0; }
  /// Append n rows: row i of the keys at k + i * k_stride, of the values at v + i * v_stride; seg (may be
  /// null: segment 0) gives their segment ids.
  void append(const T* k, int64_t k_stride, const T* v, int64_t v_stride, int64_t n,
              const int64_t* seg = nullptr) {
    TESSERA_CHECK(kw_ > 0, "KvCache: append before setup");
    TESSERA_CHECK(n >= 0, "KvCache: cannot append ", n, " rows");
    make_room(n);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(k_.data() + (n_ + i) * kw_, k + i * k_stride, static_cast<size_t>(kw_) * sizeof(T));
      std::memcpy(v_.data() + (n_ + i) * vw_, v + i * v_stride, static_cast<size_t>(vw_) * sizeof(T));
      seg_[n_ + i] = seg ? seg[i] : 0;
    }
    n_ += n;
  }
  /// Remove the newest n rows.
  void pop_back(int64_t n) {
    TESSERA_CHECK(n >= 0 && n <= n_, "KvCache: cannot remove ", n, " of ", n_, " rows");
    n_ -= n;
  }
  /// Keep only the newest n rows (all of them when n >= size()).
  void keep_last(int64_t n) {
    TESSERA_CHECK(n >= 0, "KvCache: keep_last(", n, ")");
    if (n < n_) drop_front(n_ - n);
  }

 private:
  void drop_front(int64_t d) {
    const int64_t keep = n_ - d;
    std::memmove(k_.data(), k_.data() + d * kw_, static_cast<size_t>(keep * kw_) * sizeof(T));
    std::memmove(v_.data(), v_.data() + d * vw_, static_cast<size_t>(keep * vw_) * sizeof(T));
    std::memmove(seg_.data(), seg_.data() + d, static_cast<size_t>(keep) * sizeof(int64_t));
    n_ = keep;
  }
  /// Room for n more rows. A windowed cache first drops what the next query (the first new row) cannot see:
  /// it needs the window - 1 rows before it. Capacity doubles, up to 2 * window when windowed, so dropping
  /// happens about once per window rows (amortised O(1) per row).
  void make_room(int64_t n) {
    if (n_ + n <= cap_) return;
    if (window_ > 0 && n_ > window_ - 1) drop_front(n_ - (window_ - 1));
    if (n_ + n <= cap_) return;
    int64_t cap = std::max<int64_t>({n_ + n, 2 * cap_, 16});
    if (window_ > 0) cap = std::min(cap, std::max(n_ + n, 2 * window_));
    k_.resize(static_cast<size_t>(cap * kw_));
    v_.resize(static_cast<size_t>(cap * vw_));
    seg_.resize(static_cast<size_t>(cap));
    cap_ = cap;
  }
  int64_t kw_ = 0, vw_ = 0, window_ = 0, n_ = 0, cap_ = 0;
  std::vector<T> k_, v_;
  std::vector<int64_t> seg_;
};

/// One sequence's caches of a stack of self-attention layers and the RoPE position of its next token.
template <class T, class B = cpu>
struct KvCacheStack {
  std::vector<KvCache<T, B>> layers;
  int64_t next_pos = 0;

  void setup(int64_t n_layers, int64_t k_width, int64_t v_width, int64_t window = 0) {
    layers.assign(static_cast<size_t>(n_layers), KvCache<T, B>{});
    for (auto& l : layers) l.setup(k_width, v_width, window);
    next_pos = 0;
  }
  /// Forget every cached token (a new document). reset_position: the next token is at position 0 again
  /// (a fresh context); otherwise positions continue (a document cut inside one position space).
  void clear(bool reset_position) {
    for (auto& l : layers) l.clear();
    if (reset_position) next_pos = 0;
  }
  int64_t size() const { return layers.empty() ? 0 : layers[0].size(); }
};

/// positions[b * seq + t] = caches[b]->next_pos + t (the rotary positions of `seq` new tokens per sequence).
template <class Stack>
void cached_positions(Stack* const* caches, int64_t batch, int64_t seq, std::vector<int64_t>& positions) {
  positions.resize(static_cast<size_t>(batch * seq));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t) positions[b * seq + t] = caches[b]->next_pos + t;
}

/// Cached forwards with at most this many new query rows per sequence use decode_attention.
inline constexpr int64_t kDecodeAttentionRows = 4;

/// Attention for decoding: the same contract as ops::attention_forward (AttnDims, a mask policy, o written,
/// no lse), computed query row by query row with matrix-vector products over the row's key range — for the
/// few query rows of a decoding step, where the blockwise kernel's tile packing dominates. `scores` is
/// scratch. Equal to attention_forward up to rounding (a plain two-pass softmax instead of the online one).
template <class T, class Mask>
void decode_attention(const ops::AttnDims& d, const Mask& policy, const T* q, const T* k, const T* v, T* o,
                      Tensor<T>& scores) {
  ops::attn_detail::check_dims(d, "decode_attention");
  const auto m = ops::mask::bind(policy, ops::mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  const int64_t Dh = d.Dh, Dv = d.dv(), rep = d.Hq / d.Hkv;
  const T scale = static_cast<T>(d.scale), ninf = -std::numeric_limits<T>::infinity();
  scores.resize_uninit({std::max<int64_t>(d.Tk, 1)});
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t i = 0; i < d.Tq; ++i) {
      const int64_t qpos = d.q_offset + i;
      const ops::mask::KeyRange kr = ops::attn_detail::clamped_range(m, b, qpos, qpos + 1, d.Tk);
      const int64_t n = kr.hi - kr.lo;
      for (int64_t h = 0; h < d.Hq; ++h) {
        const int64_t g = h / rep;
        auto out = eig::mat(o + (b * d.Tq + i) * d.o_stride + h * Dv, 1, Dv);
        if (n <= 0) {
          out.setZero();
          continue;
        }
        const auto qv = eig::mat(q + (b * d.Tq + i) * d.q_stride + h * Dh, 1, Dh);
        const auto kb = eig::mat(k + (b * d.Tk + kr.lo) * d.k_stride + g * Dh, n, Dh, d.k_stride);
        const auto vb = eig::mat(v + (b * d.Tk + kr.lo) * d.v_stride + g * Dv, n, Dv, d.v_stride);
        auto s = eig::mat(scores.data(), 1, n);
        s.noalias() = scale * (qv * kb.transpose());
        for (int64_t j = 0; j < n; ++j)
          if (!m.allowed(b, qpos, kr.lo + j)) s(0, j) = ninf;
        const T mx = s.maxCoeff();
        if (mx == ninf) {
          out.setZero();
          continue;
        }
        s.array() = (s.array() - mx).exp();
        const T sum = s.sum();
        out.noalias() = (s * vb) / sum;
      }
    }
}

namespace mask {

/// How a self-attention mask policy runs against a KV cache. `supported`: the policy's position part is
/// causal (optionally windowed) and everything else is a document cut, which the caller reproduces by
/// clearing caches. window(ctx): the key window (0 = unlimited).
template <class M>
struct Cached {
  static constexpr bool supported = false, causal = false;
};
template <>
struct Cached<Causal> {
  static constexpr bool supported = true, causal = true;
  static int64_t window(const SeqContext&) { return 0; }
};
template <>
struct Cached<SlidingWindow> {
  static constexpr bool supported = true, causal = true;
  static int64_t window(const SeqContext& c) { return c.window; }
};
template <>
struct Cached<Document> {
  static constexpr bool supported = true, causal = false;  // only as a part of a causal conjunction
  static int64_t window(const SeqContext&) { return 0; }
};
template <class... Ms>
struct Cached<All<Ms...>> {
  static constexpr bool supported = (Cached<Ms>::supported && ...), causal = (Cached<Ms>::causal || ...);
  static int64_t window(const SeqContext& c) {
    int64_t w = 0;
    for (const int64_t x : {Cached<Ms>::window(c)...})
      if (x > 0) w = w > 0 ? std::min(w, x) : x;
    return w;
  }
};

}  // namespace mask
}  // namespace tessera
