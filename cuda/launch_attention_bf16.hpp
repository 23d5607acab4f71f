// Internal to tessera::cuda, plain C++ (no CUDA types): the host entry points of the bf16 attention kernels
// in attention_bf16.cu (bound to the public `cuda` overloads of include/tessera/ops/attention_bf16.hpp by
// ops_attention_bf16.cpp), the choice between the kernel families, and the self-test of the warp-level
// primitives of mma_sm80.cuh. Tests and the benchmark include it by relative path (cuda/ is not a public
// include directory).
#pragma once
#include <cstdint>

#include "launch_megalodon.hpp"  // AttnArgs

namespace tessera::cuda_detail {

/// ops::attention_forward / attention_backward(cuda, ..., bf16 ...) on validated arguments (bf16 as uint16_t
/// bit patterns, device pointers); the contract is in include/tessera/ops/attention_bf16.hpp.
void attention_forward_bf16(const AttnArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                            uint16_t* o, float* lse);
void attention_backward_bf16(const AttnArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                             const uint16_t* o, const float* lse, const uint16_t* dout, uint16_t* dq,
                             uint16_t* dk, uint16_t* dv);

/// The kernels of ops::attention_forward / attention_backward(cuda, ..., bf16 ...): WMMA (score tiles through
/// shared memory) or mma.sync (FlashAttention-2 layout, scores / softmax / dS in registers), forward and
/// backward alike. Either backward reads either forward's o and lse (same contract).
enum class AttnBf16Kernel { Auto, Wmma, Mma };

/// The kernel named by a value of TESSERA_ATTN_BF16_KERNEL: "wmma" or "mma"; null or empty: Mma (the
/// default). Anything else throws tessera::Error naming the variable.
AttnBf16Kernel parse_attention_bf16_kernel(const char* value);

/// Process-wide choice for the following forward and backward calls; Auto (the initial state) means the
/// environment variable TESSERA_ATTN_BF16_KERNEL, read once, else Mma. For tests and benchmarks that compare
/// the kernels.
void set_attention_bf16_kernel(AttnBf16Kernel k);

/// The kernels the next call runs (Wmma or Mma, never Auto).
AttnBf16Kernel attention_bf16_kernel();

/// How the mma.sync backward computes dQ. Stored: the dK/dV kernel also writes the bf16 dS tiles it computes
/// (every 64 x 64 tile the mask lets a query tile see: B * Hq * 8 KB per such tile, e.g. 1.1 GB at B 4, T
/// 4096, H 16, causal) and a light kernel adds dQ = dS K from them — 5 tile products per (query tile, key
/// tile) instead of 7, same dS values, so dQ differs from Recompute only in rounding order. Recompute: the dQ
/// kernel recomputes S, P, dP and dS (no buffer). Auto (the initial state): TESSERA_ATTN_BF16_DQ ("stored" or
/// "recompute", read once) if set, else Stored when the buffer is at most a quarter of the device's memory
/// and its allocation succeeds, Recompute otherwise. A forced Stored that cannot allocate throws.
enum class AttnBf16Dq { Auto, Stored, Recompute };

/// The mode named by a value of TESSERA_ATTN_BF16_DQ: "stored" or "recompute"; null or empty: Auto. Anything
/// else throws tessera::Error naming the variable.
AttnBf16Dq parse_attention_bf16_dq(const char* value);

/// Process-wide choice for the following backward calls (Auto: the environment, then the size rule).
void set_attention_bf16_dq(AttnBf16Dq mode);

/// The path the last mma.sync backward call took (Stored or Recompute; Auto before any), for tests.
AttnBf16Dq last_attention_bf16_dq();

/// One warp runs the primitives of mma_sm80.cuh on 16 x 16 operands (all pointers are device memory;
/// matrices row-major, bf16 as bits):
///   d_nk    = A B + C with B's fragments loaded from bt (bt[n][k] = B[k][n], ldmatrix),
///   d_kn    = A B + C with B's fragments loaded from b (b[k][n], ldmatrix.trans),
///   d_chain = bf16(d_nk) B, the accumulators of d_nk reused as an A fragment (acc_to_a),
///   packed[i] = the bf16x2 packing of (x[2i], x[2i+1]) for i < 32.
/// a, bt, b: 256 bf16 each; c, d_*: 256 floats each; x: 64 floats; packed: 32 words.
void mma_selftest(const uint16_t* a, const uint16_t* bt, const uint16_t* b, const float* c, const float* x,
                  float* d_nk, float* d_kn, float* d_chain, uint32_t* packed);

}  // namespace tessera::cuda_detail
