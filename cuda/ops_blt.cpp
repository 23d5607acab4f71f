// The `cuda` overloads of include/tessera/ops/blt_cuda.hpp, bound to the launchers of blt.cu
// (launch_blt.hpp). Compiled by the host compiler (see launch.hpp). The CPU op's dimension checks, the
// window's validation and the ids' null checks run first; the ids are device memory and are never read here.
#include <cstdint>
#include <tuple>

#include "attn_args.hpp"
#include "launch_blt.hpp"
#include "tessera/ops/blt_cuda.hpp"

namespace tessera::ops {

namespace {

cuda_detail::AttnArgs attn_args(const AttnDims& d, const char* who) { return attn_detail::to_attn_args(d, who); }

const uint16_t* bits(const bf16* p) {
  return reinterpret_cast<const uint16_t*>(p);
}
uint16_t* bits(bf16* p) {
  return reinterpret_cast<uint16_t*>(p);
}

/// Null checks and layout of an id policy without reading its (device) ids: bound with k_sorted cleared.
template <class Mask>
void check_ids(const AttnDims& d, Mask m) {
  m.k_sorted = false;
  (void)mask::bind(m, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
}

/// The window W (>= 1, checked like the CPU bind) of BLT's self-attention mask.
int64_t window_of(const AttnDims& d, const WindowDocumentMask& m) {
  const mask::SlidingWindow w = mask::bind(std::get<0>(m.parts), mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  check_ids(d, std::get<1>(m.parts));
  return w.W;
}

}  // namespace

void attention_forward(cuda, const AttnDims& d, const WindowDocumentMask& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  const auto a = attn_args(d, "attention_forward");
  const int64_t W = window_of(d, m);
  const mask::DocumentCuts& doc = std::get<1>(m.parts);
  cuda_detail::attention_forward_ids_nosync_f32(a, W, doc.q_doc, doc.k_doc, doc.k_sorted, q, k, v, o, lse);
}

void attention_backward(cuda, const AttnDims& d, const WindowDocumentMask& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq,
                        float* dk, float* dv) {
  const auto a = attn_args(d, "attention_backward");
  const int64_t W = window_of(d, m);
  const mask::DocumentCuts& doc = std::get<1>(m.parts);
  cuda_detail::attention_backward_ids_nosync_f32(a, W, doc.q_doc, doc.k_doc, doc.k_sorted, q, k, v, o, lse,
                                                 dout, dq, dk, dv);
}

void attention_forward(cuda, const AttnDims& d, const mask::PatchSegments& m, const float* q, const float* k,
                       const float* v, float* o, float* lse) {
  const auto a = attn_args(d, "attention_forward");
  check_ids(d, static_cast<const mask::SegmentEqual&>(m));
  cuda_detail::attention_forward_segments_f32(a, m.q_seg, m.k_seg, m.k_sorted, q, k, v, o, lse);
}

void attention_backward(cuda, const AttnDims& d, const mask::PatchSegments& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq,
                        float* dk, float* dv) {
  const auto a = attn_args(d, "attention_backward");
  check_ids(d, static_cast<const mask::SegmentEqual&>(m));
  cuda_detail::attention_backward_segments_f32(a, m.q_seg, m.k_seg, m.k_sorted, q, k, v, o, lse, dout, dq, dk,
                                               dv);
}

void attention_forward(cuda, const AttnDims& d, const mask::PatchSegments& m, const bf16* q, const bf16* k,
                       const bf16* v, bf16* o, float* lse) {
  const auto a = attn_args(d, "attention_forward");
  check_ids(d, static_cast<const mask::SegmentEqual&>(m));
  cuda_detail::attention_forward_segments_bf16(a, m.q_seg, m.k_seg, m.k_sorted, bits(q), bits(k), bits(v),
                                               bits(o), lse);
}

void attention_backward(cuda, const AttnDims& d, const mask::PatchSegments& m, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* o, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                        bf16* dv) {
  const auto a = attn_args(d, "attention_backward");
  check_ids(d, static_cast<const mask::SegmentEqual&>(m));
  cuda_detail::attention_backward_segments_bf16(a, m.q_seg, m.k_seg, m.k_sorted, bits(q), bits(k), bits(v),
                                                bits(o), lse, bits(dout), bits(dq), bits(dk), bits(dv));
}

}  // namespace tessera::ops
