// BLT's attention mask policies and the CUDA overloads the generic op headers do not declare (defined in
// cuda/blt.cu, bound in cuda/ops_blt.cpp; link tessera::cuda).
//
// - All<SlidingWindow, DocumentCuts>: BLT's self-attention mask (blt::BltMask), a causal window and document
//   cuts.
// - PatchSegments: BLT's byte <-> patch cross-attention mask, exactly SegmentEqual (same policy, same CPU
//   results), a type of its own only to pick the CUDA binding below.
//
// CUDA: the same contract and results as the CPU op (ops/attention.hpp), fp32 (PatchSegments also bf16,
// below), device pointers — the ids too. One difference from the CPU op and from attention.cu's id masks: a
// declared k_sorted is verified on the device WITHOUT synchronising the host (attention.cu copies a flag back
// on every call), so key ids that decrease do not throw; the kernels then ignore the promise and scan the
// window's (or every) key (same result, slower). BLT builds its ids sorted, and its training step and
// generation never wait on an attention call.
//
// Included at the end of ops/attention.hpp, so the layer templates (which call ops::attention_forward by its
// qualified name) see these overloads whatever the include order.
#pragma once
#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
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

/// The bf16 cross-attention (BLT's all-bf16 PatchCrossAttention): q, k, v, o, dout, dq, dk, dv in bf16, lse
/// fp32; the same kernels as the fp32 overloads, with every score, max, exp, sum and lse in fp32 on the
/// exactly widened bf16 operands, and each output (o, dq, dk, dv) rounded to bf16 once — no rounding of P or
/// dS, so the results are those of the fp32 op on the same bf16 inputs up to that last rounding (2^-9
/// relative) and fp32 summation order.
void attention_forward(cuda, const AttnDims& d, const mask::PatchSegments& m, const bf16* q, const bf16* k,
                       const bf16* v, bf16* o, float* lse);
void attention_backward(cuda, const AttnDims& d, const mask::PatchSegments& m, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* o, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                        bf16* dv);

}  // namespace tessera::ops
