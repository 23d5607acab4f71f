// Attention mask POLICIES: small structs that answer "may query position q see key position k?" and
// "which keys can a block of queries see at all?" — never a materialised T x T matrix.
//
// A policy M provides
//   bool     allowed(int64_t b, int64_t qpos, int64_t kpos) const;     // qpos = q_offset + i, kpos = j
//   KeyRange key_range(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const;
// key_range is CONSERVATIVE: every key any query in [qpos_lo, qpos_hi) is allowed to see lies in [lo, hi);
// attention skips whole key blocks outside it (this is what makes causal / sliding-window cost O(T*W)).
//
// Policies that read per-row ids (documents, segments, key validity) must know how rows are laid out
// (ids are indexed by row b*Tq + i for queries and b*Tk + j for keys). The attention kernels call
// mask::bind(policy, Layout{B, Tq, Tk, q_offset}) once before use; it returns a copy with the layout filled
// in (and validates the policy). Position-only policies have no bind member and are used as they are.
// Anyone calling allowed()/key_range() directly on an id policy must bind it first.
#pragma once
#include <algorithm>
#include <concepts>
#include <cstdint>
#include <tuple>
#include <utility>

#include "tessera/core/error.hpp"

namespace tessera::ops::mask {

/// Half-open key interval [lo, hi); empty when hi <= lo.
struct KeyRange {
  int64_t lo = 0, hi = 0;
  [[nodiscard]] bool empty() const { return hi <= lo; }
};

/// Row layout of the id arrays: batch, query rows, key rows, absolute position of query row 0.
struct Layout {
  int64_t B = 0, Tq = 0, Tk = 0, q_offset = 0;
};

template <class M>
concept Policy = requires(const M& m, int64_t x) {
  { m.allowed(x, x, x) } -> std::convertible_to<bool>;
  { m.key_range(x, x, x, x) } -> std::same_as<KeyRange>;
};

/// Bind a policy to a row layout (identity for policies without a bind member).
template <Policy M>
M bind(const M& m, const Layout& lay) {
  if constexpr (requires { m.bind(lay); })
    return m.bind(lay);
  else
    return m;
}

// ---- position-only policies ---------------------------------------------------------------------

/// No mask: every query sees every key.
struct Full {
  bool allowed(int64_t, int64_t, int64_t) const { return true; }
  KeyRange key_range(int64_t, int64_t, int64_t, int64_t Tk) const { return {0, Tk}; }
};

/// Causal: kpos <= qpos.
struct Causal {
  bool allowed(int64_t, int64_t qpos, int64_t kpos) const { return kpos <= qpos; }
  KeyRange key_range(int64_t, int64_t, int64_t qpos_hi, int64_t Tk) const {
    return {0, std::min(Tk, qpos_hi)};
  }
};

/// Causal sliding window of W keys: qpos - W < kpos <= qpos, i.e. each query sees itself and the W-1
/// positions before it. BLT's local encoder/decoder use W = 512: a byte attends to itself and the 511
/// bytes before it.
struct SlidingWindow {
  int64_t W = 0;
  bool allowed(int64_t, int64_t qpos, int64_t kpos) const { return kpos <= qpos && kpos > qpos - W; }
  KeyRange key_range(int64_t, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    return {std::max<int64_t>(0, qpos_lo - W + 1), std::min(Tk, qpos_hi)};
  }
  SlidingWindow bind(const Layout&) const {
    TESSERA_CHECK(W >= 1, "mask::SlidingWindow: window W must be >= 1, got ", W);
    return *this;
  }
};

/// Megalodon's chunk-local attention: query and key in the same chunk of C positions, and causal.
struct ChunkLocal {
  int64_t C = 0;
  bool allowed(int64_t, int64_t qpos, int64_t kpos) const { return kpos <= qpos && kpos / C == qpos / C; }
  KeyRange key_range(int64_t, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    return {std::min(Tk, qpos_lo / C * C), std::min(Tk, qpos_hi)};
  }
  ChunkLocal bind(const Layout&) const {
    TESSERA_CHECK(C >= 1, "mask::ChunkLocal: chunk size C must be >= 1, got ", C);
    return *this;
  }
};

// ---- id-based policies --------------------------------------------------------------------------

namespace detail {

/// Shared logic of the policies comparing a query row id with a key row id (a view over their fields).
/// `k_sorted` promises key ids are non-decreasing along each batch row (checked at bind), which lets
/// key_range binary-search instead of returning every key.
struct Ids {
  const int64_t* q_id;
  const int64_t* k_id;
  bool k_sorted;
  const Layout& lay;

  int64_t q(int64_t b, int64_t qpos) const { return q_id[b * lay.Tq + (qpos - lay.q_offset)]; }
  int64_t k(int64_t b, int64_t kpos) const { return k_id[b * lay.Tk + kpos]; }

  /// Min and max query id over the query positions [qpos_lo, qpos_hi) (clamped to the rows).
  std::pair<int64_t, int64_t> q_minmax(int64_t b, int64_t qpos_lo, int64_t qpos_hi) const {
    const int64_t i0 = std::max<int64_t>(0, qpos_lo - lay.q_offset);
    const int64_t i1 = std::min(lay.Tq, qpos_hi - lay.q_offset);
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (int64_t i = i0; i < i1; ++i) {
      lo = std::min(lo, q_id[b * lay.Tq + i]);
      hi = std::max(hi, q_id[b * lay.Tq + i]);
    }
    return {lo, hi};
  }
  /// First key row of batch b whose id is >= v (upper = false) or > v (upper = true); needs k_sorted.
  int64_t first_key(int64_t b, int64_t v, bool upper) const {
    const int64_t* row = k_id + b * lay.Tk;
    return (upper ? std::upper_bound(row, row + lay.Tk, v) : std::lower_bound(row, row + lay.Tk, v)) - row;
  }
  /// Keys whose id lies within [min, max] of the block's query ids (all keys unless sorted).
  KeyRange equal_range(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    if (!k_sorted) return {0, Tk};
    const auto [lo, hi] = q_minmax(b, qpos_lo, qpos_hi);
    if (lo > hi) return {0, 0};
    return {first_key(b, lo, false), first_key(b, hi, true)};
  }
  /// Keys whose id is <= the block's largest query id (all keys unless sorted).
  KeyRange below_range(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    if (!k_sorted) return {0, Tk};
    const auto [lo, hi] = q_minmax(b, qpos_lo, qpos_hi);
    if (lo > hi) return {0, 0};
    return {0, first_key(b, hi, true)};
  }
  void validate(const char* who, const char* qname, const char* kname) const {
    TESSERA_CHECK(lay.B * lay.Tq == 0 || q_id, "mask::", who, ": ", qname, " is null");
    TESSERA_CHECK(lay.B * lay.Tk == 0 || k_id, "mask::", who, ": ", kname, " is null");
    if (k_sorted)
      for (int64_t b = 0; b < lay.B; ++b)
        for (int64_t j = 1; j < lay.Tk; ++j)
          TESSERA_CHECK(k_id[b * lay.Tk + j - 1] <= k_id[b * lay.Tk + j], "mask::", who, ": ", kname,
                        " is declared sorted (k_sorted) but decreases at batch ", b, ", key row ", j);
  }
};

}  // namespace detail

/// Document cuts: allowed iff the query row and the key row belong to the same document
/// (q_doc[b*Tq+i] == k_doc[b*Tk+j]). Combine with Causal (All{Causal{}, DocumentCuts{...}}) for packed
/// causal pretraining. With k_sorted (doc ids non-decreasing per batch row) whole key blocks are skipped.
struct DocumentCuts {
  const int64_t* q_doc = nullptr;
  const int64_t* k_doc = nullptr;
  bool k_sorted = false;
  Layout layout{};  // filled by bind

  detail::Ids ids() const { return {q_doc, k_doc, k_sorted, layout}; }
  bool allowed(int64_t b, int64_t qpos, int64_t kpos) const { return ids().q(b, qpos) == ids().k(b, kpos); }
  KeyRange key_range(int64_t b, int64_t lo, int64_t hi, int64_t Tk) const {
    return ids().equal_range(b, lo, hi, Tk);
  }
  DocumentCuts bind(const Layout& l) const {
    DocumentCuts m = *this;
    m.layout = l;
    m.ids().validate("DocumentCuts", "q_doc", "k_doc");
    return m;
  }
};

/// Block-causal over segments (e.g. BLT patch ids): allowed iff k_seg[b*Tk+j] <= q_seg[b*Tq+i].
struct BlockCausal {
  const int64_t* q_seg = nullptr;
  const int64_t* k_seg = nullptr;
  bool k_sorted = false;
  Layout layout{};  // filled by bind

  detail::Ids ids() const { return {q_seg, k_seg, k_sorted, layout}; }
  bool allowed(int64_t b, int64_t qpos, int64_t kpos) const { return ids().k(b, kpos) <= ids().q(b, qpos); }
  KeyRange key_range(int64_t b, int64_t lo, int64_t hi, int64_t Tk) const {
    return ids().below_range(b, lo, hi, Tk);
  }
  BlockCausal bind(const Layout& l) const {
    BlockCausal m = *this;
    m.layout = l;
    m.ids().validate("BlockCausal", "q_seg", "k_seg");
    return m;
  }
};

/// Segment equality, for cross attention between bytes and their own patch (Tq != Tk is typical):
/// allowed iff q_seg[b*Tq+i] == k_seg[b*Tk+j].
struct SegmentEqual {
  const int64_t* q_seg = nullptr;
  const int64_t* k_seg = nullptr;
  bool k_sorted = false;
  Layout layout{};  // filled by bind

  detail::Ids ids() const { return {q_seg, k_seg, k_sorted, layout}; }
  bool allowed(int64_t b, int64_t qpos, int64_t kpos) const { return ids().q(b, qpos) == ids().k(b, kpos); }
  KeyRange key_range(int64_t b, int64_t lo, int64_t hi, int64_t Tk) const {
    return ids().equal_range(b, lo, hi, Tk);
  }
  SegmentEqual bind(const Layout& l) const {
    SegmentEqual m = *this;
    m.layout = l;
    m.ids().validate("SegmentEqual", "q_seg", "k_seg");
    return m;
  }
};

/// Key padding: allowed iff valid[b*Tk+j] != 0.
struct KeyValid {
  const uint8_t* valid = nullptr;
  Layout layout{};  // filled by bind
  bool allowed(int64_t b, int64_t, int64_t kpos) const { return valid[b * layout.Tk + kpos] != 0; }
  KeyRange key_range(int64_t, int64_t, int64_t, int64_t Tk) const { return {0, Tk}; }
  KeyValid bind(const Layout& l) const {
    TESSERA_CHECK(l.B * l.Tk == 0 || valid, "mask::KeyValid: valid is null");
    KeyValid m = *this;
    m.layout = l;
    return m;
  }
};

// ---- conjunction --------------------------------------------------------------------------------

/// All<M...>: allowed iff every part allows; key range is the intersection of the parts' ranges.
/// Construct as mask::All{mask::Causal{}, mask::DocumentCuts{docs, docs}}.
template <Policy... M>
struct All {
  std::tuple<M...> parts;

  All() = default;
  explicit All(M... m) : parts(std::move(m)...) {}

  bool allowed(int64_t b, int64_t qpos, int64_t kpos) const {
    return std::apply([&](const auto&... p) { return (p.allowed(b, qpos, kpos) && ...); }, parts);
  }
  KeyRange key_range(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    KeyRange r{0, Tk};
    std::apply(
        [&](const auto&... p) {
          ((r =
                [&](KeyRange s) {
                  return KeyRange{std::max(r.lo, s.lo), std::min(r.hi, s.hi)};
                }(p.key_range(b, qpos_lo, qpos_hi, Tk))),
           ...);
        },
        parts);
    return r;
  }
  All bind(const Layout& l) const {
    All out;
    out.parts = std::apply([&](const auto&... p) { return std::tuple<M...>(mask::bind(p, l)...); }, parts);
    return out;
  }
};
template <class... M>
All(M...) -> All<M...>;

}  // namespace tessera::ops::mask
