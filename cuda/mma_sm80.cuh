// Internal to tessera::cuda: warp-level tensor-core primitives of sm_80+ (also on the H100) as inline
// functions: mma.sync m16n8k16 bf16 x bf16 -> fp32, ldmatrix x4 (and .trans) from shared memory, bf16x2
// packing, and the fragment loads the FlashAttention-2-style kernels build from them
// (attention_bf16_mma.cuh). Under tools/cuda-emu (TESSERA_CUDA_EMU) the same functions run on the emulation
// in tools/cuda-emu/include/mma_emu.hpp, which moves the fragments between lanes with exactly the layouts
// below, so a kernel's layout assumptions are checked on the CPU too. attention_bf16.cu's mma_selftest
// (tested in tests/cuda/test_cuda_attention_bf16.cpp) checks these functions against a host matmul on both.
// Also here, for the same reason (one switch between GPU and emulation): exp2_approx, the bare ex2.approx.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"); lane = 4 g + t
// (g = groupID = lane / 4, t = threadID_in_group = lane % 4). A .b32 register holding two 16-bit elements
// keeps the first (lower column / lower k) in its low half.
//   A (16 x 16, row-major operand), 4 registers:  a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                                                  a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B (16 x 8, "col" operand: k x n), 2 registers: b[0] = B[2t, 2t+1][g]     b[1] = B[2t+8, 2t+9][g]
//   C, D (16 x 8, fp32), 4 floats:                 c[0], c[1] = C[g][2t, 2t+1]
//                                                  c[2], c[3] = C[g+8][2t, 2t+1]
// ldmatrix.x4 (m8n8, b16): lanes 8i .. 8i+7 give the 16-byte row addresses (rows 0..7) of matrix i;
// register i of lane l receives matrix i's row l / 4, columns 2 (l % 4), +1; with .trans it receives column
// l / 4, rows 2 (l % 4), +1 (the fragment of the transposed matrix).
// Hence (the FA2 identities the attention kernel relies on):
//   - an A fragment of a row-major 16 x 16 tile is one ldmatrix.x4 with lane l pointing at row l % 16, column
//     8 (l / 16) (matrix i = a[i]: rows 8 (i % 2) .. + 8, columns 8 (i / 2) .. + 8);
//   - B fragments of two n-tiles from a row-major [n][k] tile (B^T stored, e.g. K for S = Q K^T): ldmatrix.x4
//     with lane l at row 8 (l / 16) + l % 8, column 8 ((l / 8) % 2); registers 0, 1: n-tile 0; 2, 3: 1;
//   - B fragments of two n-tiles from a row-major [k][n] tile (e.g. V for O = P V): ldmatrix.x4.trans with
//     lane l at row l % 16, column 8 (l / 16); registers 0, 1: n-tile 0; 2, 3: n-tile 1;
//   - the accumulators C of n-tiles 2j and 2j+1 (columns 16 j ..) hold, element for element, the A
//     fragment of k-chunk j: a[0] = C_2j[0, 1], a[1] = C_2j[2, 3], a[2] = C_2j+1[0, 1], a[3] = C_2j+1[2, 3].
#pragma once
#include <cmath>
#include <cstdint>

#if defined(TESSERA_CUDA_EMU)
#include "mma_emu.hpp"  // tools/cuda-emu/include
#elif defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "mma_sm80.cuh: mma.sync m16n8k16 bf16 and ldmatrix need sm_80 or newer"
#endif
#else
#error "mma_sm80.cuh is device code: compile it with nvcc or under tools/cuda-emu"
#endif

namespace tessera::cuda_detail::mma {

/// d += A B for one 16 x 16 A fragment and one 16 x 8 B fragment (bf16 products exact, fp32 accumulation).
/// Every lane of the warp must call it (.sync.aligned).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2]) {
#if defined(TESSERA_CUDA_EMU)
  emu::mma::mma_m16n8k16_bf16(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

/// Four 8 x 8 b16 matrices from shared memory; `row` is this lane's row address (16-byte aligned; lanes 8i ..
/// 8i+7 address the rows of matrix i). Every lane of the warp must call it.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if defined(TESSERA_CUDA_EMU)
  emu::mma::ldmatrix_x4(r, row, false);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
#endif
}

/// ldmatrix_x4 with .trans: each register holds the fragment of the transposed 8 x 8 matrix.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#if defined(TESSERA_CUDA_EMU)
  emu::mma::ldmatrix_x4(r, row, true);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
#endif
}

/// Two floats rounded to bf16 (nearest even, as bf16_bits in core_util.cuh; NaN stays NaN) in one register:
/// `lo` in the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#if defined(TESSERA_CUDA_EMU)
  return emu::mma::pack_bf16x2(lo, hi);
#else
  uint32_t u;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(u) : "f"(hi), "f"(lo));  // first source -> upper half
  return u;
#endif
}

/// 2^x on the special function unit (ex2.approx.ftz.f32: relative error ~2^-22, subnormal results flushed to
/// zero, 2^-inf = 0), without the subnormal rescaling exp2f adds around it (3 more instructions per call).
/// The emulation flushes subnormal results too.
__device__ __forceinline__ float exp2_approx(float x) {
#if defined(TESSERA_CUDA_EMU)
  const float y = exp2f(x);
  return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

/// The two bf16 halves of a register as floats (exact).
__device__ __forceinline__ float bf16x2_lo(uint32_t u) {
  return __uint_as_float(u << 16);
}
__device__ __forceinline__ float bf16x2_hi(uint32_t u) {
  return __uint_as_float(u & 0xffff0000u);
}

// ---- fragment loads of whole tiles (row-major bf16 tiles in shared memory, `ld` elements per row, a
// multiple of 8; tile pointers 16-byte aligned) -------------------------------------------------------------

__device__ __forceinline__ int lane_id() {
  return static_cast<int>(threadIdx.x % 32);
}

/// A fragment of the 16 x 16 tile at `tile` (A[m][k] = tile[m * ld + k]).
template <class T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int ld) {
  const int l = lane_id();
  ldmatrix_x4(a, tile + (l % 16) * ld + (l / 16) * 8);
}

/// A fragment of the 16 x 16 operand stored transposed at `tile`: A[m][k] = tile[k * ld + m] (ldmatrix.trans;
/// matrix i = a[i] is the 8 x 8 block at rows k 8 (i / 2) .., columns m 8 (i % 2) ..).
template <class T>
__device__ __forceinline__ void load_a_t(uint32_t (&a)[4], const T* tile, int ld) {
  const int l = lane_id(), i = l / 8;
  ldmatrix_x4_trans(a, tile + (8 * (i / 2) + l % 8) * ld + 8 * (i % 2));
}

/// B fragments of n-tiles 0 and 1 (b[0..1], b[2..3]) of the 16 (k) x 16 (n) operand stored transposed at
/// `tile`: B[k][n] = tile[n * ld + k] (rows are n, e.g. keys of K for S = Q K^T).
template <class T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* tile, int ld) {
  const int l = lane_id();
  ldmatrix_x4(b, tile + ((l / 16) * 8 + l % 8) * ld + ((l / 8) % 2) * 8);
}

/// B fragments of n-tiles 0 and 1 (b[0..1], b[2..3]) of the 16 (k) x 16 (n) operand stored row-major at
/// `tile`: B[k][n] = tile[k * ld + n] (rows are k, e.g. keys of V for O = P V).
template <class T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* tile, int ld) {
  const int l = lane_id();
  ldmatrix_x4_trans(b, tile + (l % 16) * ld + (l / 16) * 8);
}

/// mma_bf16_16816 with the B fragment of n-tile `nt` (0 or 1) of a load_b_* result.
__device__ __forceinline__ void mma_nt(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                       int nt) {
  const uint32_t bb[2] = {b[2 * nt], b[2 * nt + 1]};
  mma_bf16_16816(d, a, bb);
}

/// The A fragment (bf16, rounded to nearest even) of the 16 x 16 matrix whose columns 0-7 are the accumulator
/// c0 and columns 8-15 the accumulator c1 (FA2's reuse of the S = Q K^T accumulators as P for P V).
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16x2(c0[0], c0[1]);
  a[1] = pack_bf16x2(c0[2], c0[3]);
  a[2] = pack_bf16x2(c1[0], c1[1]);
  a[3] = pack_bf16x2(c1[2], c1[3]);
}

}  // namespace tessera::cuda_detail::mma
