// BLT's device pieces that the generic ops do not cover: attention under BLT's two id masks with a
// key-sortedness check that never synchronises the host.
//
//   All<SlidingWindow, DocumentCuts>  every BLT transformer's self-attention (local encoder/decoder over
//   bytes with
//                                     the 512-byte window, the global model over patches with window 0 =
//                                     causal; document ids all zero when EOS cuts are off). No other CUDA
//                                     binding exists.
//   PatchSegments (= SegmentEqual)    the byte <-> patch cross-attention (ops/blt_cuda.hpp). attention.cu
//   binds
//                                     SegmentEqual too, but verifies k_sorted with a copy back to the host,
//                                     i.e. one synchronisation per call (per cross-attention layer, forward
//                                     and backward); this binding keeps the BLT step free of them.
//
// The flash kernels of attention_kernels.cuh are instantiated here with a mask functor of their own (the
// header's kernels live in an unnamed namespace, so this file gets its own copy); the launch code is
// attention.cu's (attention_launch.cuh). Sortedness of the key ids (the policy's k_sorted) is checked by a small device kernel into
// a device flag that the kernels read when they compute a tile's key range: binary search over the ids when
// the flag is clear, the window's (or the whole) range otherwise. An unsorted "sorted" array thus gives the
// exact result more slowly instead of an exception (BLT builds its ids sorted).
#include <cuda_runtime_api.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "attention_kernels.cuh"
#include "attention_launch.cuh"
#include "check.hpp"
#include "launch_blt.hpp"
#include "scratch.cuh"

namespace tessera::cuda_detail {
namespace {

/// Equal ids, within a causal window of W keys when W > 0.
struct IdNoSyncMask {
  int64_t W;                           // 0: no window (cross-attention)
  IdRows ids;                          // ids.k_sorted: the policy's promise (binary search once verified)
  const unsigned long long* unsorted;  // device flag (ids_sorted_kernel): nonzero = the promise is broken

  __device__ bool allowed(int64_t b, int64_t qpos, int64_t kpos) const {
    return (W == 0 || (kpos <= qpos && kpos > qpos - W)) && ids.q(b, qpos) == ids.k(b, kpos);
  }
  __device__ Range range(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    Range r = W > 0 ? Range{max(int64_t{0}, qpos_lo - W + 1), min(Tk, qpos_hi)} : Range{0, Tk};
    if (ids.k_sorted && *unsorted == 0) {
      const Range e = ids.equal_range(b, qpos_lo, qpos_hi);
      r.lo = max(r.lo, e.lo);
      r.hi = min(r.hi, e.hi);
    }
    return r;
  }
};

/// The mask functor; with k_sorted, queues the sortedness check into a flag carved from `scratch`.
IdNoSyncMask id_mask(const AttnArgs& a, int64_t window, const int64_t* q_id, const int64_t* k_id,
                     bool k_sorted, DeviceScratch& scratch) {
  TESSERA_CHECK(window >= 0, "attention (cuda): window must be >= 0, got ", window);
  TESSERA_CHECK((a.B * a.Tq == 0 || q_id) && (a.B * a.Tk == 0 || k_id),
                "attention (cuda): query or key ids are null");
  unsigned long long* flag = nullptr;
  // Keys within one tile gain nothing from the binary search: skip it and its check (a memset and a launch
  // per call, e.g. for the decoder's cross-attention over one patch's k slots while generating).
  if (a.Tk <= kBK) k_sorted = false;
  if (k_sorted) {
    scratch.reserve(DeviceScratch::bytes_for<unsigned long long>(1));
    flag = scratch.carve<unsigned long long>(1);
    TESSERA_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(unsigned long long), 0));
    const int64_t n = a.B * a.Tk;
    if (n > 1 && a.Tk > 1) {
      const int64_t items = n < int64_t{256} * 4096 ? n : int64_t{256} * 4096;
      ids_sorted_kernel<<<grid_for(items, 256, "ids_sorted_kernel"), 256>>>(k_id, a.B, a.Tk, flag);
      TESSERA_CUDA_CHECK_LAUNCH("ids_sorted_kernel");
    }
  }
  return IdNoSyncMask{window, IdRows{q_id, k_id, a.Tq, a.Tk, a.q_offset, k_sorted}, flag};
}

}  // namespace

void attention_forward_ids_nosync_f32(const AttnArgs& a, int64_t window, const int64_t* q_id,
                                      const int64_t* k_id, bool k_sorted, const float* q, const float* k,
                                      const float* v, float* o, float* lse) {
  DeviceScratch flag_scratch;  // outlives the launches that read the flag
  forward_impl(a, id_mask(a, window, q_id, k_id, k_sorted, flag_scratch), q, k, v, o, lse);
}

void attention_backward_ids_nosync_f32(const AttnArgs& a, int64_t window, const int64_t* q_id,
                                       const int64_t* k_id, bool k_sorted, const float* q, const float* k,
                                       const float* v, const float* o, const float* lse, const float* dout,
                                       float* dq, float* dk, float* dv) {
  DeviceScratch flag_scratch;
  backward_impl(a, id_mask(a, window, q_id, k_id, k_sorted, flag_scratch), q, k, v, o, lse, dout, dq, dk, dv);
}

}  // namespace tessera::cuda_detail
