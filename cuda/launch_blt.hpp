// Internal to tessera::cuda: host entry points of blt.cu, in plain C++ (no CUDA types, no public op headers);
// ops_blt.cpp binds the public `cuda` overloads of include/tessera/ops/blt_cuda.hpp to them (see launch.hpp).
// Pointers are device pointers; work is queued on the legacy default stream.
#pragma once
#include <cstdint>

#include "launch_megalodon.hpp"  // AttnArgs

namespace tessera::cuda_detail {

/// Attention under an id-equality mask whose key ids are verified sorted WITHOUT a host synchronisation:
///   window > 0: BLT's self-attention mask All<SlidingWindow{window}, DocumentCuts> (q_id, k_id = documents):
///               key j visible to query i iff pos(i) - window < j <= pos(i) and the documents are equal;
///   window = 0: an id-equality mask SegmentEqual (q_id, k_id = segments): equal ids (BLT's cross-attention
///               binding takes attention_*_segments_f32 below instead, made for few keys per query).
/// q_id [B, Tq] and k_id [B, Tk] are device memory (never null when the rows exist). k_sorted (key ids
/// non-decreasing per row) is checked by a device kernel into a device flag: when it holds, key tiles outside
/// the query tile's ids are skipped; when it does not, the kernels scan the window's (or every) key (same
/// result). a.mask is ignored.
void attention_forward_ids_nosync_f32(const AttnArgs& a, int64_t window, const int64_t* q_id,
                                      const int64_t* k_id, bool k_sorted, const float* q, const float* k,
                                      const float* v, float* o, float* lse);
void attention_backward_ids_nosync_f32(const AttnArgs& a, int64_t window, const int64_t* q_id,
                                       const int64_t* k_id, bool k_sorted, const float* q, const float* k,
                                       const float* v, const float* o, const float* lse, const float* dout,
                                       float* dq, float* dk, float* dv);

/// BLT's cross-attention mask SegmentEqual (q_id, k_id = patch / slot segments: key j visible to query i iff
/// their ids are equal) by kernels that walk each row's exact equal range, one warp per row: a query row's
/// keys (forward, dQ) and a key row's queries (dK, dV), found by binary search where the ids are verified
/// sorted on the device (the keys' only when k_sorted is promised; the queries' always; once per row, before
/// the walks), else by scanning
/// every row of the other side (same result). Same contract as attention_forward_ids_nosync_f32 with window
/// 0, for the few keys per query that patches give. a.mask is ignored.
void attention_forward_segments_f32(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id,
                                    bool k_sorted, const float* q, const float* k, const float* v, float* o,
                                    float* lse);
void attention_backward_segments_f32(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id,
                                     bool k_sorted, const float* q, const float* k, const float* v,
                                     const float* o, const float* lse, const float* dout, float* dq,
                                     float* dk, float* dv);
/// The same with q, k, v, o, dO, dQ, dK, dV in bf16 (bit patterns): fp32 sums, max, exp and lse; each output
/// rounded once (the bf16 cross-attention of include/tessera/ops/blt_cuda.hpp).
void attention_forward_segments_bf16(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id,
                                     bool k_sorted, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                     uint16_t* o, float* lse);
void attention_backward_segments_bf16(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id,
                                      bool k_sorted, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                      const uint16_t* o, const float* lse, const uint16_t* dout, uint16_t* dq,
                                      uint16_t* dk, uint16_t* dv);

}  // namespace tessera::cuda_detail
