// Chunk-local attention (mask::ChunkLocal: Megalodon's causal attention inside chunks of C tokens) in bf16
// mixed precision through batched GEMMs. Megalodon's value heads are wider than the bf16 flash kernels take
// (256 and up, against 128) and its chunks short enough that one chunk's C x C scores fit in memory (C 2048:
// 16 MB fp32 per chunk and head), so instead of a flash kernel (which at these head dims has to run on CUDA
// cores in fp32) every product is a cuBLAS bf16 GEMM with fp32 accumulation over all B * T / C chunks at
// once, and only the softmax is a kernel:
//
//   forward, per head:  S = Q K^T (fp32);  P = softmax(scale S) causal inside the chunk (bf16), lse;  O = P
//   V. backward, per head: S = Q K^T again;  P = exp(scale S - lse) (bf16);  dV = P^T dO;  dP = dO V^T;
//                       dS = P (dP - rowsum(dO O)) scale (bf16);  dQ = dS K;  dK = dS^T Q.
//
// The precision contract is the bf16 attention's (include/tessera/ops/attention_bf16.hpp): q, k, v, dO, P and
// dS rounded to bf16 once, fp32 accumulation, fp32 softmax statistics; o, lse, dq, dk, dv fp32, laid out as
// the fp32 op's.
#include <cmath>
#include <limits>

#include "attention_kernels.cuh"  // Dims, warp_max / warp_sum, attn_rowdot_kernel
#include "check.hpp"
#include "core_util.cuh"
#include "launch_core.hpp"
#include "launch_megalodon.hpp"
#include "scratch.cuh"

namespace tessera::cuda_detail {

namespace {

constexpr int kRowsPerBlock = 8;  // one warp per score row
constexpr int kThreads = 256;     // the element-wise kernels

/// Where the statistics of score row g and head h live: lse[(b * H + h) * T + t] for token t of sequence b.
__device__ __forceinline__ int64_t stat_index(int64_t g, int64_t T, int H, int h) {
  return (g / T * H + h) * T + g % T;
}

/// Row g of the scores S [rows, C] (rows = B * T; row g is position g % C of its chunk, token g % T of
/// sequence g / T): P = exp(scale S - lse) for the keys c <= g % C, 0 for the rest (bf16), and
/// lse[(b * H + h) * T + t] = log sum exp over the same keys.
__global__ void chunk_softmax_kernel(const float* __restrict__ S, uint16_t* __restrict__ P,
                                     float* __restrict__ lse, int64_t rows, int C, float scale, int64_t T,
                                     int H, int h) {
  const int lane = threadIdx.x % 32;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (g >= rows) return;
  const int r = static_cast<int>(g % C);
  const float* s = S + g * C;
  float m = -std::numeric_limits<float>::infinity();
  for (int c = lane; c <= r; c += 32) m = fmaxf(m, scale * s[c]);
  m = warp_max(m);
  float sum = 0.f;
  for (int c = lane; c <= r; c += 32) sum += expf(scale * s[c] - m);
  sum = warp_sum(sum);
  const float l = m + logf(sum);
  uint16_t* p = P + g * C;
  for (int c = lane; c < C; c += 32) p[c] = c <= r ? bf16_bits(expf(scale * s[c] - l)) : uint16_t{0};
  if (lane == 0) lse[stat_index(g, T, H, h)] = l;
}

/// The backward's P from the forward's lse: P = exp(scale S - lse) for c <= g % C, else 0 (bf16).
__global__ void chunk_probs_kernel(const float* __restrict__ S, const float* __restrict__ lse,
                                   uint16_t* __restrict__ P, int64_t rows, int C, float scale, int64_t T,
                                   int H, int h) {
  TESSERA_GRID_STRIDE(i, rows * C) {
    const int64_t g = i / C;
    const int c = static_cast<int>(i - g * C), r = static_cast<int>(g % C);
    const float l = lse[stat_index(g, T, H, h)];
    P[i] = c <= r ? bf16_bits(expf(scale * S[i] - l)) : uint16_t{0};
  }
}

/// dS = P (dP - Dsum) scale, in place over P (bf16); dP fp32; Dsum = rowsum(dO O) per (row, head), laid out
/// as lse (attn_rowdot_kernel's output).
__global__ void chunk_dscores_kernel(const float* __restrict__ dP, uint16_t* __restrict__ P,
                                     const float* __restrict__ Dsum, int64_t rows, int C, float scale,
                                     int64_t T, int H, int h) {
  TESSERA_GRID_STRIDE(i, rows * C) {
    const int64_t g = i / C;
    const float p = bf16_to_float(P[i]);
    P[i] = bf16_bits(p * (dP[i] - Dsum[stat_index(g, T, H, h)]) * scale);
  }
}

/// Elements from the first to the last used one of a strided [rows, cols] buffer (token stride `stride`).
int64_t extent(int64_t rows, int64_t stride, int64_t cols) {
  return (rows - 1) * stride + cols;
}

/// A strided fp32 [rows, cols] buffer as bf16 with the same stride: its extent is cast (padding columns
/// between rows too, never read).
void cast_rows(uint16_t* dst, const float* src, int64_t rows, int64_t stride, int64_t cols) {
  cast_f32_to_bf16(dst, src, extent(rows, stride, cols));
}

/// out_i = op(A_i) op(B_i) for every chunk i at once (alpha 1, beta 0, fp32 out): chunk i of each operand
/// starts C rows further on, so each batch stride is C times its leading dimension.
void per_chunk_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const uint16_t* A, int64_t lda,
                    const uint16_t* B, int64_t ldb, float* out, int64_t ldc, int64_t C, int64_t chunks) {
  gemm_bf16(ta, tb, m, n, k, 1.f, A, lda, C * lda, B, ldb, C * ldb, 0.f, out, false, ldc, C * ldc, chunks);
}

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

}  // namespace

std::string chunk_attention_gemm_unsupported(const AttnArgs& a) {
  if (a.mask != AttnMask::ChunkLocal) return "mask is not chunk-local";
  if (a.q_offset != 0 || a.Tq != a.Tk) return "q_offset != 0 or Tq != Tk";
  if (a.Hq != a.Hkv) return "grouped heads (Hq != Hkv)";
  if (a.mask_param < 1 || a.mask_param > kChunkAttentionMaxChunk) return "chunk size outside [1, 4096]";
  if (a.Tq % a.mask_param != 0) return "length not a multiple of the chunk size";
  if (a.B < 1 || a.Tq < 1) return "empty call";
  return "";
}

bool chunk_attention_forward_gemm(const AttnArgs& a, const float* q, const float* k, const float* v, float* o,
                                  float* lse) {
  if (!chunk_attention_gemm_unsupported(a).empty()) return false;
  TESSERA_CHECK(q && k && v && o && lse, "attention_forward(cuda, chunk GEMMs): null pointer");
  const int64_t C = a.mask_param, T = a.Tq, rows = a.B * T, chunks = rows / C, H = a.Hq;
  DeviceScratch scratch;
  const int64_t nq = extent(rows, a.q_stride, H * a.Dh), nk = extent(rows, a.k_stride, H * a.Dh),
                nv = extent(rows, a.v_stride, H * a.Dv);
  // (the scores of every chunk at once: B T C fp32 and bf16; where that memory cannot be had, the flash
  // kernels, which need none, run the call)
  if (!scratch.try_reserve(DeviceScratch::bytes_for<uint16_t>(nq) + DeviceScratch::bytes_for<uint16_t>(nk) +
                           DeviceScratch::bytes_for<uint16_t>(nv) +
                           DeviceScratch::bytes_for<float>(rows * C) +
                           DeviceScratch::bytes_for<uint16_t>(rows * C)))
    return false;
  uint16_t* q16 = scratch.carve<uint16_t>(nq);
  uint16_t* k16 = scratch.carve<uint16_t>(nk);
  uint16_t* v16 = scratch.carve<uint16_t>(nv);
  float* S = scratch.carve<float>(rows * C);
  uint16_t* P = scratch.carve<uint16_t>(rows * C);
  cast_rows(q16, q, rows, a.q_stride, H * a.Dh);
  cast_rows(k16, k, rows, a.k_stride, H * a.Dh);
  cast_rows(v16, v, rows, a.v_stride, H * a.Dv);
  const float scale = static_cast<float>(a.scale);
  for (int64_t h = 0; h < H; ++h) {
    // S_i = Q_i K_i^T for every chunk i (batched: chunk i starts at row i * C).
    per_chunk_gemm(false, true, C, C, a.Dh, q16 + h * a.Dh, a.q_stride, k16 + h * a.Dh, a.k_stride, S, C, C,
                   chunks);
    chunk_softmax_kernel<<<row_blocks(rows), 32 * kRowsPerBlock>>>(
        S, P, lse, rows, static_cast<int>(C), scale, T, static_cast<int>(H), static_cast<int>(h));
    TESSERA_CUDA_CHECK_LAUNCH("chunk_softmax_kernel");
    // O_i = P_i V_i, into head h's columns of o.
    per_chunk_gemm(false, false, C, a.Dv, C, P, C, v16 + h * a.Dv, a.v_stride, o + h * a.Dv, a.o_stride, C,
                   chunks);
  }
  return true;
}

bool chunk_attention_backward_gemm(const AttnArgs& a, const float* q, const float* k, const float* v,
                                   const float* o, const float* lse, const float* dout, float* dq, float* dk,
                                   float* dv) {
  if (!chunk_attention_gemm_unsupported(a).empty()) return false;
  TESSERA_CHECK(q && k && v && o && lse && dout && dq && dk && dv,
                "attention_backward(cuda, chunk GEMMs): null pointer");
  const int64_t C = a.mask_param, T = a.Tq, rows = a.B * T, chunks = rows / C, H = a.Hq;
  DeviceScratch scratch;
  const int64_t nq = extent(rows, a.q_stride, H * a.Dh), nk = extent(rows, a.k_stride, H * a.Dh),
                nv = extent(rows, a.v_stride, H * a.Dv), no = extent(rows, a.o_stride, H * a.Dv);
  if (!scratch.try_reserve(DeviceScratch::bytes_for<uint16_t>(nq) + DeviceScratch::bytes_for<uint16_t>(nk) +
                           DeviceScratch::bytes_for<uint16_t>(nv) + DeviceScratch::bytes_for<uint16_t>(no) +
                           DeviceScratch::bytes_for<float>(rows * C) +
                           DeviceScratch::bytes_for<uint16_t>(rows * C) +
                           DeviceScratch::bytes_for<float>(rows * H)))
    return false;
  uint16_t* q16 = scratch.carve<uint16_t>(nq);
  uint16_t* k16 = scratch.carve<uint16_t>(nk);
  uint16_t* v16 = scratch.carve<uint16_t>(nv);
  uint16_t* do16 = scratch.carve<uint16_t>(no);
  float* S = scratch.carve<float>(rows * C);        // the scores, then dP
  uint16_t* P = scratch.carve<uint16_t>(rows * C);  // P, then dS
  float* Dsum = scratch.carve<float>(rows * H);
  cast_rows(q16, q, rows, a.q_stride, H * a.Dh);
  cast_rows(k16, k, rows, a.k_stride, H * a.Dh);
  cast_rows(v16, v, rows, a.v_stride, H * a.Dv);
  cast_rows(do16, dout, rows, a.o_stride, H * a.Dv);
  const float scale = static_cast<float>(a.scale);
  const int Ci = static_cast<int>(C), Hi = static_cast<int>(H);
  // rowsum(dO O) of every (row, head), in fp32 (the fp32 op's kernel).
  const Dims dims{a.B,        a.Tq,       a.Tk,       a.Hq,       a.Hkv,      a.Dh, a.Dv,
                  a.q_stride, a.k_stride, a.v_stride, a.o_stride, a.q_offset, scale};
  attn_rowdot_kernel<<<grid_for(rows * H * 32, 128, "attention_backward"), 128>>>(dims, o, dout, Dsum);
  TESSERA_CUDA_CHECK_LAUNCH("attn_rowdot_kernel");
  for (int64_t h = 0; h < H; ++h) {
    const uint16_t *qh = q16 + h * a.Dh, *kh = k16 + h * a.Dh, *vh = v16 + h * a.Dv, *doh = do16 + h * a.Dv;
    per_chunk_gemm(false, true, C, C, a.Dh, qh, a.q_stride, kh, a.k_stride, S, C, C, chunks);
    chunk_probs_kernel<<<stride_blocks(rows * C), kThreads>>>(S, lse, P, rows, Ci, scale, T, Hi,
                                                              static_cast<int>(h));
    TESSERA_CUDA_CHECK_LAUNCH("chunk_probs_kernel");
    // dV_i = P_i^T dO_i
    per_chunk_gemm(true, false, C, a.Dv, C, P, C, doh, a.o_stride, dv + h * a.Dv, a.v_stride, C, chunks);
    // dP_i = dO_i V_i^T (over the scores' buffer)
    per_chunk_gemm(false, true, C, C, a.Dv, doh, a.o_stride, vh, a.v_stride, S, C, C, chunks);
    chunk_dscores_kernel<<<stride_blocks(rows * C), kThreads>>>(S, P, Dsum, rows, Ci, scale, T, Hi,
                                                                static_cast<int>(h));
    TESSERA_CUDA_CHECK_LAUNCH("chunk_dscores_kernel");
    // dQ_i = dS_i K_i;  dK_i = dS_i^T Q_i
    per_chunk_gemm(false, false, C, a.Dh, C, P, C, kh, a.k_stride, dq + h * a.Dh, a.q_stride, C, chunks);
    per_chunk_gemm(true, false, C, a.Dh, C, P, C, qh, a.q_stride, dk + h * a.Dh, a.k_stride, C, chunks);
  }
  return true;
}

}  // namespace tessera::cuda_detail
