// Key/value caches for incremental (inference-only) attention.
//
//   KvCache<T, B>       one sequence's keys and values of one attention layer (rows = tokens, RoPE
//                       already applied), optionally a segment id per row (cross-attention memories); a
//                       sliding window lets it drop rows no future query can see. Buffers live in backend
//                       B's memory.
//   KvCacheStack<T, B>  one sequence's caches of a stack of self-attention layers plus the RoPE position of
//                       the next token.
//   decode_attention    single-query-row attention for decoding steps (the blockwise ops::attention_forward
//                       packs 64-row tiles, which costs more than the products when a query is one row). On
//                       CUDA it is the flash kernel itself (it takes Tq < Tk and q_offset).
//   mask::Cached<M>     which self-attention mask policies a cache can reproduce: causal masks with an
//                       optional sliding window (ctx.window); document cuts are the caller's job — clear the
//                       cache where a new document starts (RoPE depends only on position differences, so a
//                       cleared cache equals the document mask).
//
// Used by SelfAttention::forward_cached, CrossAttention::forward_cached and the models' generators. Every
// pointer a cache takes or returns is in backend B's memory (device pointers on CUDA); the cache's sizes
// (rows, widths, next position) are host values, so appending never synchronises.
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
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/rope.hpp"

namespace tessera {

template <class T, class B = cpu>
class KvCache {
 public:
  KvCache() = default;
  KvCache(int64_t k_width, int64_t v_width, int64_t window = 0) { setup(k_width, v_width, window); }
  // Copies are deep (a cache is a value: std::vector<KvCache>(n, proto) and friends work on every backend).
  KvCache(const KvCache& o) { *this = o; }
  KvCache& operator=(const KvCache& o) {
    if (this == &o) return *this;
    kw_ = o.kw_, vw_ = o.vw_, window_ = o.window_, off_ = o.off_, n_ = o.n_, cap_ = o.cap_;
    k_ = o.k_.clone(), v_ = o.v_.clone(), seg_ = o.seg_.clone();
    return *this;
  }
  KvCache(KvCache&&) noexcept = default;
  KvCache& operator=(KvCache&&) noexcept = default;

  /// k_width / v_width: elements per cached row (kv_heads * head_dim). window > 0: every query sees at most
  /// `window` keys ending at itself, so older rows may be dropped when the buffer is full; 0 keeps every row.
  void setup(int64_t k_width, int64_t v_width, int64_t window = 0) {
    TESSERA_CHECK(k_width > 0 && v_width > 0, "KvCache: row widths must be positive, got ", k_width, " and ",
                  v_width);
    TESSERA_CHECK(window >= 0, "KvCache: window must be >= 0, got ", window);
    kw_ = k_width, vw_ = v_width, window_ = window;
    off_ = n_ = cap_ = 0;
    k_ = {}, v_ = {}, seg_ = {};
  }
  int64_t size() const { return n_; }
  int64_t k_width() const { return kw_; }
  int64_t v_width() const { return vw_; }
  int64_t window() const { return window_; }
  /// Rows [size(), k_width()] / [size(), v_width()] and their segment ids [size()], oldest first (backend
  /// memory).
  const T* k() const { return k_.data() + off_ * kw_; }
  const T* v() const { return v_.data() + off_ * vw_; }
  const int64_t* segments() const { return seg_.data() + off_; }

  void clear() { off_ = n_ = 0; }
  /// Append n rows: row i of the keys at k + i * k_stride, of the values at v + i * v_stride; seg (may be
  /// null: segment 0) gives their segment ids. All three in backend memory.
  void append(const T* k, int64_t k_stride, const T* v, int64_t v_stride, int64_t n,
              const int64_t* seg = nullptr) {
    const NewRows r = append_rows(n);
    if (n > 0) ops::append_kv(B{}, r.k, k, k_stride, kw_, r.v, v, v_stride, vw_, r.seg, seg, n);
  }
  /// The rows of an append that the caller writes itself (e.g. ops::rope_qk_append): room for n rows is made
  /// and they count as cached at once; fill rows [0, n) of k, v and seg (backend memory) before the cache is
  /// read.
  struct NewRows {
    T* k;
    T* v;
    int64_t* seg;
  };
  NewRows append_rows(int64_t n) {
    TESSERA_CHECK(kw_ > 0, "KvCache: append before setup");
    TESSERA_CHECK(n >= 0, "KvCache: cannot append ", n, " rows");
    make_room(n);
    const int64_t end = off_ + n_;
    const NewRows r{k_.data() + end * kw_, v_.data() + end * vw_, seg_.data() + end};
    n_ += n;
    return r;
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
  /// Rows [d, d + keep) of a [*, width] buffer move to rows [0, keep). Host: one memmove. Device copies must
  /// not overlap, so the rows move in chunks of at most d rows, front to back (each chunk's source is the
  /// next chunk's destination, and copies on the stream run in order).
  template <class U>
  static void move_to_front(U* p, int64_t d, int64_t keep, int64_t width) {
    if constexpr (is_cpu_v<B>) {
      std::memmove(p, p + d * width, static_cast<size_t>(keep * width) * sizeof(U));
    } else {
      for (int64_t r = 0; r < keep; r += d) {
        const int64_t c = std::min(d, keep - r);
        Allocator<B>::copy(p + r * width, p + (r + d) * width, static_cast<size_t>(c * width) * sizeof(U));
      }
    }
  }
  /// Forget the oldest d rows: the live rows start d rows later in the buffer (no copy).
  void drop_front(int64_t d) {
    off_ += d;
    n_ -= d;
    if (n_ == 0) off_ = 0;
  }
  /// The live rows [off_, off_ + n_) of buf move to rows [0, n_).
  template <class U>
  void compact(Tensor<U, B>& buf, int64_t width) {
    if (off_ > 0 && n_ > 0) move_to_front(buf.data(), off_, n_, width);
  }
  /// A buffer of `cap` rows holding the live rows of `old` at its front.
  template <class U>
  void grow(Tensor<U, B>& buf, int64_t cap, int64_t width) {
    Tensor<U, B> next;
    next.resize_uninit({cap, width});
    if (n_ > 0)
      Allocator<B>::copy(next.data(), buf.data() + off_ * width, static_cast<size_t>(n_ * width) * sizeof(U));
    buf = std::move(next);
  }
  /// Room for n more rows after the live ones. A windowed cache first drops what the next query (the first
  /// new row) cannot see: it needs the window - 1 rows before it. Dropped rows are skipped, not moved. At the
  /// end of the buffer the live rows move to its front when the capacity cannot grow (windowed: at most 2 *
  /// window) or when they and the new rows fill at most half of it; otherwise the capacity doubles. Either
  /// way a row moves O(1) times on average.
  void make_room(int64_t n) {
    if (off_ + n_ + n <= cap_) return;
    if (window_ > 0 && n_ > window_ - 1) drop_front(n_ - (window_ - 1));
    if (off_ + n_ + n <= cap_) return;
    int64_t cap = std::max<int64_t>({n_ + n, 2 * cap_, 16});
    if (window_ > 0) cap = std::min(cap, std::max(n_ + n, 2 * window_));
    if (n_ + n <= cap_ && (cap <= cap_ || 2 * (n_ + n) <= cap_)) {
      compact(k_, kw_);
      compact(v_, vw_);
      compact(seg_, int64_t{1});
      off_ = 0;
      return;
    }
    grow(k_, cap, kw_);
    grow(v_, cap, vw_);
    grow(seg_, cap, int64_t{1});
    off_ = 0;
    cap_ = cap;
  }
  int64_t kw_ = 0, vw_ = 0, window_ = 0, off_ = 0, n_ = 0, cap_ = 0;  // live rows: [off_, off_ + n_)
  Tensor<T, B> k_, v_;       // [cap_, kw_], [cap_, vw_]
  Tensor<int64_t, B> seg_;  // [cap_]
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
/// The same into a tensor in backend B's memory (filled on the device on CUDA: one small launch per
/// sequence).
template <class Stack, class B>
void cached_positions(Stack* const* caches, int64_t batch, int64_t seq, Tensor<int64_t, B>& positions) {
  positions.resize_uninit({batch * seq});
  for (int64_t b = 0; b < batch; ++b)
    ops::fill_positions(B{}, positions.data() + b * seq, 1, seq, caches[b]->next_pos);
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

/// decode_attention on CUDA: the flash kernel, which already handles a few query rows after a long cache
/// (Tq < Tk, d.q_offset); q, k, v, o are device pointers, no lse is written and `scores` is unused. Only the
/// masks with a CUDA ops::attention_forward overload compile (the position masks and the id masks, whose id
/// pointers must then be device memory).
template <class Mask>
void decode_attention(const ops::AttnDims& d, const Mask& policy, const float* q, const float* k,
                      const float* v, float* o, Tensor<float, cuda>& scores) {
  (void)scores;
  ops::attention_forward(cuda{}, d, policy, q, k, v, o, static_cast<float*>(nullptr));
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
