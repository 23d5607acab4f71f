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
#include "attention_launch.cuh"
#include "check.hpp"
#include "launch_megalodon.hpp"
#include "scratch.cuh"

namespace tessera::cuda_detail {
namespace {

// ---- host side ---------------------------------------------------------------------------------------


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
  queue_ids_sorted_check(ids, B, Tk, bad, who);
  unsigned long long host = 0;
  TESSERA_CUDA_CHECK(cudaMemcpy(&host, bad, sizeof host, cudaMemcpyDeviceToHost));
  if (host != 0) {
    const int64_t e = static_cast<int64_t>(host) - 1;
    TESSERA_CHECK(false, "mask::", who, ": ", name, " is declared sorted (k_sorted) but decreases at batch ",
                  e / Tk, ", key row ", e % Tk);
  }
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
