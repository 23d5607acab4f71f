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
// header's kernels live in an unnamed namespace, so this file gets its own copy); the launch code mirrors
// attention.cu's. Sortedness of the key ids (the policy's k_sorted) is checked by a small device kernel into
// a device flag that the kernels read when they compute a tile's key range: binary search over the ids when
// the flag is clear, the window's (or the whole) range otherwise. An unsorted "sorted" array thus gives the
// exact result more slowly instead of an exception (BLT builds its ids sorted).
#include <cuda_runtime_api.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "attention_kernels.cuh"
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

Dims make_dims(const AttnArgs& a, const char* op) {
  TESSERA_CHECK(a.B >= 0 && a.Tq >= 0 && a.Tk >= 0, op, "(cuda): AttnDims B, Tq, Tk must be >= 0");
  TESSERA_CHECK(a.Hq >= 1 && a.Hkv >= 1 && a.Dh >= 1 && a.Dv >= 1 && a.Hq % a.Hkv == 0, op,
                "(cuda): bad AttnDims heads/dims Hq=", a.Hq, " Hkv=", a.Hkv, " Dh=", a.Dh, " Dv=", a.Dv);
  TESSERA_CHECK(a.Dh <= kAttnMaxHeadDim && a.Dv <= kAttnMaxHeadDim, op, "(cuda): head dims Dh=", a.Dh,
                " Dv=", a.Dv, " exceed the CUDA attention limit of ", kAttnMaxHeadDim);
  TESSERA_CHECK(a.q_stride >= a.Hq * a.Dh && a.k_stride >= a.Hkv * a.Dh && a.v_stride >= a.Hkv * a.Dv &&
                    a.o_stride >= a.Hq * a.Dv,
                op, "(cuda): AttnDims strides too small (q ", a.q_stride, ", k ", a.k_stride, ", v ",
                a.v_stride, ", o ", a.o_stride, ")");
  TESSERA_CHECK(a.q_offset >= 0 && std::isfinite(a.scale), op, "(cuda): bad q_offset ", a.q_offset,
                " or scale ", a.scale);
  return Dims{a.B,
              a.Tq,
              a.Tk,
              a.Hq,
              a.Hkv,
              a.Dh,
              a.Dv,
              a.q_stride,
              a.k_stride,
              a.v_stride,
              a.o_stride,
              a.q_offset,
              static_cast<float>(a.scale)};
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

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  TESSERA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

/// The mask functor; with k_sorted, queues the sortedness check into a flag carved from `scratch`.
IdNoSyncMask id_mask(const AttnArgs& a, int64_t window, const int64_t* q_id, const int64_t* k_id,
                     bool k_sorted, DeviceScratch& scratch) {
  TESSERA_CHECK(window >= 0, "attention (cuda): window must be >= 0, got ", window);
  TESSERA_CHECK((a.B * a.Tq == 0 || q_id) && (a.B * a.Tk == 0 || k_id),
                "attention (cuda): query or key ids are null");
  unsigned long long* flag = nullptr;
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
  constexpr const char* op = "attention_forward";
  const Dims d = make_dims(a, op);
  if (d.B * d.Tq == 0) return;
  TESSERA_CHECK(q && o && (d.Tk == 0 || (k && v)), op, "(cuda): q, k, v or o is null");
  DeviceScratch scratch;
  const IdNoSyncMask mask = id_mask(a, window, q_id, k_id, k_sorted, scratch);
  const unsigned blocks = block_count(d.B * d.Hq * ((d.Tq + kBQ - 1) / kBQ), op);
  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    auto kernel = attn_forward_kernel<kD, IdNoSyncMask>;
    constexpr size_t smem = fwd_smem<kD>();
    allow_smem(kernel, smem);
    kernel<<<blocks, kFwdThreads, smem>>>(d, mask, q, k, v, o, lse);
  });
  TESSERA_CUDA_CHECK_LAUNCH("attn_forward_kernel");
}

void attention_backward_ids_nosync_f32(const AttnArgs& a, int64_t window, const int64_t* q_id,
                                       const int64_t* k_id, bool k_sorted, const float* q, const float* k,
                                       const float* v, const float* o, const float* lse, const float* dout,
                                       float* dq, float* dk, float* dv) {
  constexpr const char* op = "attention_backward";
  const Dims d = make_dims(a, op);
  const bool has_q = d.B * d.Tq > 0, has_k = d.B * d.Tk > 0;
  TESSERA_CHECK(!has_q || (q && o && lse && dout && dq), op, "(cuda): q, o, lse, dout or dq is null");
  TESSERA_CHECK(!has_k || (k && v && dk && dv), op, "(cuda): k, v, dk or dv is null");
  if (!has_q && !has_k) return;
  DeviceScratch flag_scratch;
  const IdNoSyncMask mask = id_mask(a, window, q_id, k_id, k_sorted, flag_scratch);

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
      auto kernel = attn_backward_dkdv_kernel<kD, IdNoSyncMask>;
      allow_smem(kernel, smem);
      const unsigned blocks = block_count(d.B * d.Hkv * ((d.Tk + kBK - 1) / kBK), op);
      kernel<<<blocks, kBwdThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dk, dv);
      TESSERA_CUDA_CHECK_LAUNCH("attn_backward_dkdv_kernel");
    }
    if (has_q) {
      auto kernel = attn_backward_dq_kernel<kD, IdNoSyncMask>;
      allow_smem(kernel, smem);
      const unsigned blocks = block_count(d.B * d.Hq * ((d.Tq + kBQ - 1) / kBQ), op);
      kernel<<<blocks, kBwdThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dq);
      TESSERA_CUDA_CHECK_LAUNCH("attn_backward_dq_kernel");
    }
  });
}

}  // namespace tessera::cuda_detail
