// Internal to tessera::cuda, plain C++ (no CUDA types): the host-side controls of the mma.sync kernels in
// attention_bf16.cu: which bf16 attention kernels run, and the self-test of the warp-level
// primitives of mma_sm80.cuh. Used by tests/cuda/test_cuda_attention_bf16.cpp and benchmarks/bench_cuda.cpp
// (included by relative path: cuda/ is not a public include directory).
#pragma once
#include <cstdint>

namespace tessera::cuda_detail {

/// The kernels of ops::attention_forward / attention_backward(cuda, ..., bf16 ...): WMMA (score tiles through
/// shared memory) or mma.sync (FlashAttention-2 layout, scores / softmax / dS in registers), forward and
/// backward alike. Either backward reads either forward's o and lse (same contract).
enum class AttnBf16Kernel { Auto, Wmma, Mma };

/// The kernel named by a value of TESSERA_ATTN_BF16_KERNEL: "wmma" or "mma"; null or empty: Mma (the
/// default). Anything else throws tessera::Error naming the variable.
AttnBf16Kernel parse_attention_bf16_kernel(const char* value);

/// Process-wide choice for the following forward and backward calls; Auto (the initial state) means the environment
/// variable TESSERA_ATTN_BF16_KERNEL, read once, else Mma. For tests and benchmarks that compare the kernels.
void set_attention_bf16_kernel(AttnBf16Kernel k);

/// The kernels the next call runs (Wmma or Mma, never Auto).
AttnBf16Kernel attention_bf16_kernel();

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
