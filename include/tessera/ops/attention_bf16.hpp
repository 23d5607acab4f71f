// bf16 flash attention on the GPU's tensor cores (cuda/attention_bf16.cu): the mixed-precision counterpart of
// the fp32 ops::attention_forward / attention_backward(cuda, ...) in ops/attention.hpp, with the same
// AttnDims layout (strided token rows, GQA, Dv != Dh, q_offset), masks and lse convention.
//
// Supported: mask::Causal, mask::SlidingWindow, mask::ChunkLocal; head dims Dh, Dv <= 128 (fastest at 64 and
// 128; other dims run zero-padded to the next of those). All pointers are DEVICE memory.
//
// Precision contract:
//   - q, k, v, o, dout, dq, dk, dv are bf16; lse is fp32 [B, Hq, Tq] (natural log, as the CPU op; -inf and a
//     zero output row for a fully masked row).
//   - Every product Q K^T, P V, dO V^T, P^T dO, dS K, dS^T Q multiplies bf16 operands exactly and accumulates
//     in fp32 (tensor cores); max, exp, sums, lse and D = rowsum(dO * O) are fp32.
//   - Rounded to bf16 along the way (relative error <= 2^-9 each): P before P V (the normaliser sums the same
//     rounded P, so each output row stays a convex combination of V rows), P and dS = P (dP - D) before the
//     backward products, and each output once at the end (o, dq, dk, dv).
//   - So o, dq, dk, dv carry O(2^-8) relative errors against an exact computation on the same bf16 inputs;
//     tests/cuda/test_cuda_attention_bf16.cpp bounds max |gpu - ref| / max |ref| by 1e-2 (o) and 2e-2 (grads)
//     against the fp32 CPU op, and lse by 4e-3 absolute.
//   - The backward is deterministic (every gradient element is written by exactly one warp; no atomics) and
//     OVERWRITES dq, dk, dv (only their head columns; other columns of a strided row are left untouched).
//     By default it keeps the bf16 dS tiles of the dK/dV pass in a temporary device buffer (B * Hq * 8 KB per
//     64 x 64 tile the mask lets through) and computes dq from them; where that buffer would not fit it
//     recomputes dS for dq instead (same values; cuda/launch_attention_bf16.hpp, AttnBf16Dq).
//     With GQA, dk / dv sum over the query heads of their group in fp32 before the single rounding.
// The gradients are bf16 because their consumer, the backward of the bf16 QKV projection GEMM, takes bf16 dy.
//
// Two implementations keep this contract: cuDNN's fused attention (cuda/cudnn_attention.hpp), which by
// default serves causal and sliding-window calls of at least 1024 keys with Tq == Tk and q_offset 0 where
// libcudnn.so.9 can be loaded (1.7-2.4x tessera's kernels at T 4096 on an H200), and tessera's kernels, which
// run every other call (TESSERA_ATTN_BF16_BACKEND=tessera: every call; =cudnn: every call cuDNN covers).
// cuDNN rounds P and dS to bf16 before the products as above (with GQA it also rounds each query head's dk /
// dv to bf16 before the group sum: one more rounding than tessera's kernels); its backward graph writes dq
// directly (cuDNN's deterministic path, no fp32 atomics), which the GPU test checks bit for bit. Either
// backward reads either forward's o and lse.
#pragma once
#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/ops/attention.hpp"

namespace tessera::ops {

/// o = softmax(scale q k^T restricted by the mask) v; lse may be null when no backward follows.
void attention_forward(cuda, const AttnDims& d, const mask::Causal& m, const bf16* q, const bf16* k,
                       const bf16* v, bf16* o, float* lse);
void attention_forward(cuda, const AttnDims& d, const mask::SlidingWindow& m, const bf16* q, const bf16* k,
                       const bf16* v, bf16* o, float* lse);
void attention_forward(cuda, const AttnDims& d, const mask::ChunkLocal& m, const bf16* q, const bf16* k,
                       const bf16* v, bf16* o, float* lse);

/// Gradients of attention_forward from its o and lse; dq, dk, dv are overwritten (strides of q, k, v).
void attention_backward(cuda, const AttnDims& d, const mask::Causal& m, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* o, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                        bf16* dv);
void attention_backward(cuda, const AttnDims& d, const mask::SlidingWindow& m, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* o, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                        bf16* dv);
void attention_backward(cuda, const AttnDims& d, const mask::ChunkLocal& m, const bf16* q, const bf16* k,
                        const bf16* v, const bf16* o, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                        bf16* dv);

}  // namespace tessera::ops
