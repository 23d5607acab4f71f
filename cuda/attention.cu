// Flash-style attention on the GPU in fp32 for the position-only masks (Causal, SlidingWindow, ChunkLocal)
// and the id masks (DocumentCuts, SegmentEqual, BlockCausal, KeyValid, All<Causal, DocumentCuts>; ids in device
// memory, a declared k_sorted is verified by a device kernel before it is relied on),
// with the semantics of the CPU op in include/tessera/ops/attention.hpp: strided token rows, GQA (query head
// h reads kv head h / (Hq/Hkv)), separate value head dim Dv, any scale, q_offset, lse [B, Hq, Tq] with -inf
// (and a zero output row) for fully masked rows.
//
// Kernels are templated on kD, a bound on both head dims (64, 128 or 256); tiles of 32 query rows and 32
// keys live in shared memory (zero-padded, so padding never meets garbage).
//   forward:  block (128 threads) per (b, h, 32 query rows); each warp owns 8 rows. Scores: lane j computes
//             the dot products of key j with the warp's rows. Online softmax per row (warp max, per-lane
//             partial sums); P V: lane owns output columns lane + 32 i, p_j comes by warp shuffle.
//   backward: D_i = dO_i . O_i (one warp per row and head), then two race-free kernels recomputing
//             P = exp(scale q.k - lse) and dS = P (dO.v - D) tile by tile (the CPU op's two passes):
//             dK, dV per (b, kv head, 32 keys) over every query head of the group and every query tile whose
//             key range meets the key tile; dQ per (b, h, 32 query rows) over its key range. Accumulators in
//             registers, every output element written exactly once: no atomics, deterministic.
#include <cuda_runtime_api.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "attention_kernels.cuh"
#include "check.hpp"
#include "launch_megalodon.hpp"
#include "scratch.cuh"

namespace tessera::cuda_detail {
namespace {

// ---- host side ---------------------------------------------------------------------------------------

Dims make_dims(const AttnArgs& a, const char* op) {
  TESSERA_CHECK(a.B >= 0 && a.Tq >= 0 && a.Tk >= 0, op, "(cuda): AttnDims B, Tq, Tk must be >= 0");
  TESSERA_CHECK(a.Hq >= 1 && a.Hkv >= 1 && a.Dh >= 1 && a.Dv >= 1 && a.Hq % a.Hkv == 0, op,
                "(cuda): bad AttnDims heads/dims Hq=", a.Hq, " Hkv=", a.Hkv, " Dh=", a.Dh, " Dv=", a.Dv);
  TESSERA_CHECK(a.Dh <= kAttnMaxHeadDim && a.Dv <= kAttnMaxHeadDim, op,
                "(cuda): head dims Dh=", a.Dh, " Dv=", a.Dv, " exceed the CUDA attention limit of ",
                kAttnMaxHeadDim);
  TESSERA_CHECK(a.q_stride >= a.Hq * a.Dh && a.k_stride >= a.Hkv * a.Dh && a.v_stride >= a.Hkv * a.Dv &&
                    a.o_stride >= a.Hq * a.Dv,
                op, "(cuda): AttnDims strides too small (q ", a.q_stride, ", k ", a.k_stride, ", v ", a.v_stride,
                ", o ", a.o_stride, ")");
  TESSERA_CHECK(a.q_offset >= 0 && std::isfinite(a.scale), op, "(cuda): bad q_offset ", a.q_offset,
                " or scale ", a.scale);
  if (a.mask == AttnMask::SlidingWindow)
    TESSERA_CHECK(a.mask_param >= 1, "mask::SlidingWindow: window W must be >= 1, got ", a.mask_param);
  if (a.mask == AttnMask::ChunkLocal)
    TESSERA_CHECK(a.mask_param >= 1, "mask::ChunkLocal: chunk size C must be >= 1, got ", a.mask_param);
  return Dims{a.B, a.Tq, a.Tk, a.Hq, a.Hkv, a.Dh, a.Dv, a.q_stride, a.k_stride, a.v_stride, a.o_stride,
              a.q_offset, static_cast<float>(a.scale)};
}

unsigned block_count(int64_t n, const char* op) {
  TESSERA_CHECK(n >= 1 && n <= INT_MAX, op, "(cuda): ", n, " thread blocks exceed the grid limit");
  return static_cast<unsigned>(n);
}

/// Run f(integral_constant<kD>) for the smallest kD >= max(Dh, Dv).
template <class F>
void dispatch_dim(const AttnArgs& a, F&& f) {
  const int64_t dmax = a.Dh > a.Dv ? a.Dh : a.Dv;
  if (dmax <= 64)
    f(std::integral_constant<int, 64>{});
  else if (dmax <= 128)
    f(std::integral_constant<int, 128>{});
  else
    f(std::integral_constant<int, 256>{});
}

/// Run f(mask functor) for the args' position-only mask.
template <class F>
void dispatch_position_mask(const AttnArgs& a, F&& f) {
  switch (a.mask) {
    case AttnMask::Causal:
      f(CausalMask{});
      break;
    case AttnMask::SlidingWindow:
      f(WindowMask{a.mask_param});
      break;
    case AttnMask::ChunkLocal:
      f(ChunkMask{a.mask_param});
      break;
  }
}

/// Throw unless the device id array ids [B, Tk] is non-decreasing along each batch row (the promise of
/// k_sorted). One small kernel and a 8-byte copy back, which waits for the device.
void check_sorted(const int64_t* ids, int64_t B, int64_t Tk, const char* who, const char* name) {
  if (B * Tk <= 1 || Tk <= 1) return;
  TESSERA_CHECK(ids, "mask::", who, ": ", name, " is null");
  DeviceScratch scratch;
  scratch.reserve(DeviceScratch::bytes_for<unsigned long long>(1));
  auto* bad = scratch.carve<unsigned long long>(1);
  TESSERA_CUDA_CHECK(cudaMemset(bad, 0, sizeof(unsigned long long)));
  const int64_t n = B * Tk;
  const unsigned blocks = grid_for(n < int64_t{256} * 4096 ? n : int64_t{256} * 4096, 256, who);
  ids_sorted_kernel<<<blocks, 256>>>(ids, B, Tk, bad);
  TESSERA_CUDA_CHECK_LAUNCH("ids_sorted_kernel");
  unsigned long long host = 0;
  TESSERA_CUDA_CHECK(cudaMemcpy(&host, bad, sizeof host, cudaMemcpyDeviceToHost));
  if (host != 0) {
    const int64_t e = static_cast<int64_t>(host) - 1;
    TESSERA_CHECK(false, "mask::", who, ": ", name, " is declared sorted (k_sorted) but decreases at batch ",
                  e / Tk, ", key row ", e % Tk);
  }
}

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  TESSERA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

/// The forward / backward launches for one mask functor.
template <class Mask>
void forward_impl(const AttnArgs& a, const Mask& mask, const float* q, const float* k, const float* v, float* o,
                  float* lse) {
  constexpr const char* op = "attention_forward";
  const Dims d = make_dims(a, op);
  if (d.B * d.Tq == 0) return;
  TESSERA_CHECK(q && o && (d.Tk == 0 || (k && v)), op, "(cuda): q, k, v or o is null");
  const unsigned blocks = block_count(d.B * d.Hq * ((d.Tq + kBQ - 1) / kBQ), op);
  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    auto kernel = attn_forward_kernel<kD, Mask>;
    constexpr size_t smem = fwd_smem<kD>();
    allow_smem(kernel, smem);
    kernel<<<blocks, kFwdThreads, smem>>>(d, mask, q, k, v, o, lse);
  });
  TESSERA_CUDA_CHECK_LAUNCH("attn_forward_kernel");
}

template <class Mask>
void backward_impl(const AttnArgs& a, const Mask& mask, const float* q, const float* k, const float* v,
                   const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  constexpr const char* op = "attention_backward";
  const Dims d = make_dims(a, op);
  const bool has_q = d.B * d.Tq > 0, has_k = d.B * d.Tk > 0;
  TESSERA_CHECK(!has_q || (q && o && lse && dout && dq), op, "(cuda): q, o, lse, dout or dq is null");
  TESSERA_CHECK(!has_k || (k && v && dk && dv), op, "(cuda): k, v, dk or dv is null");
  if (!has_q && !has_k) return;

  DeviceScratch scratch;
  scratch.reserve(DeviceScratch::bytes_for<float>(d.B * d.Hq * d.Tq));
  float* Dd = scratch.carve<float>(d.B * d.Hq * d.Tq);
  if (has_q) {
    attn_rowdot_kernel<<<grid_for(d.B * d.Tq * d.Hq * 32, 128, op), 128>>>(d, o, dout, Dd);
    TESSERA_CUDA_CHECK_LAUNCH("attn_rowdot_kernel");
  }
  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    constexpr size_t smem = bwd_smem<kD>();
    if (has_k) {
      auto kernel = attn_backward_dkdv_kernel<kD, Mask>;
      allow_smem(kernel, smem);
      const unsigned blocks = block_count(d.B * d.Hkv * ((d.Tk + kBK - 1) / kBK), op);
      kernel<<<blocks, kBwdThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dk, dv);
      TESSERA_CUDA_CHECK_LAUNCH("attn_backward_dkdv_kernel");
    }
    if (has_q) {
      auto kernel = attn_backward_dq_kernel<kD, Mask>;
      allow_smem(kernel, smem);
      const unsigned blocks = block_count(d.B * d.Hq * ((d.Tq + kBQ - 1) / kBQ), op);
      kernel<<<blocks, kBwdThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dq);
      TESSERA_CUDA_CHECK_LAUNCH("attn_backward_dq_kernel");
    }
  });
}

/// Device functor of an id mask; checks the ids' presence and, when declared, their sortedness.
IdRows id_rows(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id, bool k_sorted, const char* who,
               const char* qname, const char* kname) {
  TESSERA_CHECK(a.B * a.Tq == 0 || q_id, "mask::", who, ": ", qname, " is null");
  TESSERA_CHECK(a.B * a.Tk == 0 || k_id, "mask::", who, ": ", kname, " is null");
  if (k_sorted) check_sorted(k_id, a.B, a.Tk, who, kname);
  return IdRows{q_id, k_id, a.Tq, a.Tk, a.q_offset, k_sorted};
}

IdEqualMask id_equal_mask(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id, bool k_sorted,
                          bool causal, bool segments) {
  const char* who = segments ? "SegmentEqual" : "DocumentCuts";
  return IdEqualMask{id_rows(a, q_id, k_id, k_sorted, who, segments ? "q_seg" : "q_doc",
                             segments ? "k_seg" : "k_doc"),
                     causal};
}

KeyValidMask key_valid_mask(const AttnArgs& a, const uint8_t* valid) {
  TESSERA_CHECK(a.B * a.Tk == 0 || valid, "mask::KeyValid: valid is null");
  return KeyValidMask{valid, a.Tk};
}

}  // namespace

void attention_forward_f32(const AttnArgs& a, const float* q, const float* k, const float* v, float* o,
                           float* lse) {
  dispatch_position_mask(a, [&](auto mask) { forward_impl(a, mask, q, k, v, o, lse); });
}

void attention_backward_f32(const AttnArgs& a, const float* q, const float* k, const float* v, const float* o,
                            const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  dispatch_position_mask(a, [&](auto mask) { backward_impl(a, mask, q, k, v, o, lse, dout, dq, dk, dv); });
}

void attention_forward_id_equal_f32(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id, bool k_sorted,
                                    bool causal, bool segments, const float* q, const float* k, const float* v,
                                    float* o, float* lse) {
  forward_impl(a, id_equal_mask(a, q_id, k_id, k_sorted, causal, segments), q, k, v, o, lse);
}
void attention_backward_id_equal_f32(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id, bool k_sorted,
                                     bool causal, bool segments, const float* q, const float* k, const float* v,
                                     const float* o, const float* lse, const float* dout, float* dq, float* dk,
                                     float* dv) {
  backward_impl(a, id_equal_mask(a, q_id, k_id, k_sorted, causal, segments), q, k, v, o, lse, dout, dq, dk, dv);
}

void attention_forward_block_causal_f32(const AttnArgs& a, const int64_t* q_seg, const int64_t* k_seg,
                                        bool k_sorted, const float* q, const float* k, const float* v, float* o,
                                        float* lse) {
  const BlockCausalMask m{id_rows(a, q_seg, k_seg, k_sorted, "BlockCausal", "q_seg", "k_seg")};
  forward_impl(a, m, q, k, v, o, lse);
}
void attention_backward_block_causal_f32(const AttnArgs& a, const int64_t* q_seg, const int64_t* k_seg,
                                         bool k_sorted, const float* q, const float* k, const float* v,
                                         const float* o, const float* lse, const float* dout, float* dq, float* dk,
                                         float* dv) {
  const BlockCausalMask m{id_rows(a, q_seg, k_seg, k_sorted, "BlockCausal", "q_seg", "k_seg")};
  backward_impl(a, m, q, k, v, o, lse, dout, dq, dk, dv);
}

void attention_forward_key_valid_f32(const AttnArgs& a, const uint8_t* valid, const float* q, const float* k,
                                     const float* v, float* o, float* lse) {
  forward_impl(a, key_valid_mask(a, valid), q, k, v, o, lse);
}
void attention_backward_key_valid_f32(const AttnArgs& a, const uint8_t* valid, const float* q, const float* k,
                                      const float* v, const float* o, const float* lse, const float* dout,
                                      float* dq, float* dk, float* dv) {
  backward_impl(a, key_valid_mask(a, valid), q, k, v, o, lse, dout, dq, dk, dv);
}

}  // namespace tessera::cuda_detail
