// BLT's attention mask policies and the CUDA overloads the generic op headers do not declare (defined in
// cuda/blt.cu, bound in cuda/ops_blt.cpp; link tessera::cuda).
//
//   All<SlidingWindow, DocumentCuts>  BLT's self-attention mask (blt::BltMask): a causal window and document
//   cuts. PatchSegments                     BLT's byte <-> patch cross-attention mask: exactly SegmentEqual
//   (same
//                                     policy, same CPU results), a type of its own only to pick the CUDA
//                                     binding below.
// CUDA: the same contract and results as the CPU op (ops/attention.hpp), fp32, device pointers — the ids too.
// One difference from the CPU op and from attention.cu's id masks: a declared k_sorted is verified on the
// device WITHOUT synchronising the host (attention.cu copies a flag back on every call), so key ids that
// decrease do not throw; the kernels then ignore the promise and scan the window's (or every) key (same
// result, slower). BLT builds its ids sorted, and its training step and generation never wait on an attention
// call.
//
// Included at the end of ops/attention.hpp, so the layer templates (which call ops::attention_forward by its
// qualified name) see these overloads whatever the include order.
#pragma once
#include "tessera/core/backend.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/mask.hpp"

namespace tessera::ops {

namespace mask {
/// SegmentEqual under another name (see the file comment).
struct PatchSegments : SegmentEqual {
  PatchSegments() = default;
  explicit PatchSegments(const SegmentEqual& s) : SegmentEqual(s) {}
  PatchSegments bind(const Layout& l) const { return PatchSegments(SegmentEqual::bind(l)); }
};
}  // namespace mask

using WindowDocumentMask = mask::All<mask::SlidingWindow, mask::DocumentCuts>;

void attention_forward(cuda, const AttnDims& d, const WindowDocumentMask& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_backward(cuda, const AttnDims& d, const WindowDocumentMask& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq,
                        float* dk, float* dv);
void attention_forward(cuda, const AttnDims& d, const mask::PatchSegments& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_backward(cuda, const AttnDims& d, const mask::PatchSegments& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq,
                        float* dk, float* dv);

}  // namespace tessera::ops
