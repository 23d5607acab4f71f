// Layer-level mask policies: types that build an ops::mask policy from a SeqContext at forward time.
// A layer names its mask as a template argument (SelfAttention<T, rope::Interleaved, mask::Causal>);
// the ids it needs (documents, segments, validity) travel in the context, never as a T×T matrix.
#pragma once
#include <optional>
#include <type_traits>

#include "tessera/layers/context.hpp"
#include "tessera/ops/mask.hpp"
#include "tessera/ops/rope.hpp"

namespace tessera::mask {

struct None {
  static ops::mask::Full make(const SeqContext&) { return {}; }
  static ops::mask::Full make_cross(const SeqContext&, const SeqContext&) { return {}; }
};
struct Causal {
  static ops::mask::Causal make(const SeqContext&) { return {}; }
};
/// Causal within the last ctx.window positions (ctx.window == 0: plain causal over everything).
struct SlidingWindow {
  static ops::mask::SlidingWindow make(const SeqContext& c) {
    return ops::mask::SlidingWindow{c.window > 0 ? c.window : INT64_MAX / 4};
  }
};
/// Same document only (ctx.doc_ids); combine with Causal via All<>.
struct Document {
  static ops::mask::DocumentCuts make(const SeqContext& c) {
    TESSERA_CHECK(c.doc_ids, "mask::Document needs SeqContext::doc_ids");
    return ops::mask::DocumentCuts{c.doc_ids, c.doc_ids, true};
  }
};
/// Block-causal over segments (ctx.segment_ids, non-decreasing per row), e.g. BLT's patches.
struct BlockCausal {
  static ops::mask::BlockCausal make(const SeqContext& c) {
    TESSERA_CHECK(c.segment_ids, "mask::BlockCausal needs SeqContext::segment_ids");
    return ops::mask::BlockCausal{c.segment_ids, c.segment_ids, true};
  }
};
/// Padding keys excluded (ctx.key_valid).
struct KeyValid {
  static ops::mask::KeyValid make(const SeqContext& c) {
    TESSERA_CHECK(c.key_valid, "mask::KeyValid needs SeqContext::key_valid");
    return ops::mask::KeyValid{c.key_valid};
  }
};
/// Cross-attention between rows of equal segment id (e.g. a byte and its own patch): the query context's
/// segment_ids against the key context's (keys' ids non-decreasing per row).
struct SegmentMatch {
  static ops::mask::SegmentEqual make_cross(const SeqContext& q, const SeqContext& k) {
    TESSERA_CHECK(q.segment_ids && k.segment_ids, "mask::SegmentMatch needs segment_ids on both contexts");
    return ops::mask::SegmentEqual{q.segment_ids, k.segment_ids, true};
  }
};
/// Conjunction of layer-level masks.
template <class... Ms>
struct All {
  static auto make(const SeqContext& c) { return ops::mask::All{Ms::make(c)...}; }
};

/// M as a position-only ops mask in this context, where there is one: `possible` says whether M can ever be
/// one, make(ctx) returns it or std::nullopt. Document cuts drop out when ctx.single_document. Kernels that
/// know only position masks (the bf16 attention) serve M through it.
template <class M>
struct PositionOnly {
  static constexpr bool possible = false;
};
template <>
struct PositionOnly<Causal> {
  static constexpr bool possible = true;
  static std::optional<ops::mask::Causal> make(const SeqContext& c) { return Causal::make(c); }
};
template <>
struct PositionOnly<SlidingWindow> {
  static constexpr bool possible = true;
  static std::optional<ops::mask::SlidingWindow> make(const SeqContext& c) { return SlidingWindow::make(c); }
};
template <class P>
  requires std::is_same_v<P, Causal> || std::is_same_v<P, SlidingWindow>
struct PositionOnly<All<P, Document>> {
  static constexpr bool possible = true;
  static std::optional<decltype(P::make(SeqContext{}))> make(const SeqContext& c) {
    if (!c.single_document) return std::nullopt;
    return P::make(c);
  }
};

}  // namespace tessera::mask

namespace tessera::rope {
/// Rotary policies for attention layers.
struct Interleaved {
  static constexpr bool enabled = true;
  static constexpr ops::RopeStyle style = ops::RopeStyle::Interleaved;
};
struct Half {
  static constexpr bool enabled = true;
  static constexpr ops::RopeStyle style = ops::RopeStyle::Half;
};
struct None {
  static constexpr bool enabled = false;
  static constexpr ops::RopeStyle style = ops::RopeStyle::Interleaved;
};
}  // namespace tessera::rope
