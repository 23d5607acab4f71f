// Internal to tessera::cuda: the host-side launch code of the fp32 flash attention (argument checks, head-dim
// dispatch, the forward / backward launches for one mask functor). Included, after attention_kernels.cuh, by
// each .cu file that instantiates the kernels with its own mask functors (attention.cu, blt.cu); like that
// header it lives in an unnamed namespace.
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "attention_kernels.cuh"
#include "check.hpp"
#include "launch_megalodon.hpp"
#include "scratch.cuh"

namespace tessera::cuda_detail {
namespace {

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

/// Queue ids_sorted_kernel over ids [B, T] into `flag` (zeroed by the caller): nonzero afterwards when a row
/// decreases somewhere.
inline void queue_ids_sorted_check(const int64_t* ids, int64_t B, int64_t T, unsigned long long* flag,
                                   const char* who) {
  const int64_t n = B * T;
  if (n <= 1 || T <= 1) return;  // nothing to compare
  const unsigned blocks = grid_for(std::min(n, int64_t{256} * 4096), 256, who);
  ids_sorted_kernel<<<blocks, 256>>>(ids, B, T, flag);
  TESSERA_CUDA_CHECK_LAUNCH("ids_sorted_kernel");
}

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}

// ---- split-KV forward selection (attn_forward_split_kernel) ---------------------------------------------

constexpr int64_t kSplitMaxTq = 8;     // query rows at most (the split path reads K, V once per row)
constexpr int64_t kSplitMinKeys = 16;  // keys per split at least: one step of a block's 4 warps x 4 keys
constexpr int64_t kSplitBlocksPerSm = 8;

/// Upper bound of the keys one query row sees (the split count's estimate; results do not depend on it).
/// Masks with a causal window W (WindowMask; blt.cu's id mask, where W = 0 means no window) see <= W keys.
template <class Mask>
int64_t key_span(const Mask& m, const Dims& d) {
  const int64_t causal = std::min(d.Tk, d.q_offset + d.Tq);  // keys up to the last query position
  if constexpr (std::is_same_v<Mask, CausalMask>)
    return causal;
  else if constexpr (std::is_same_v<Mask, ChunkMask>)
    return std::min(causal, m.C);
  else if constexpr (std::is_same_v<Mask, IdEqualMask>)
    return m.causal ? causal : d.Tk;
  else if constexpr (requires { m.W; })
    return m.W > 0 ? std::min(causal, m.W) : d.Tk;
  else
    return d.Tk;
}

/// Splits per query row for attn_forward_split_kernel, or 0 for the tile kernel. The split path needs few
/// query rows (<= 8) and a key span worth splitting (>= 2 x 16 keys). For Tq = 1 it is taken whatever the
/// grid: it reads each K, V row once like the tile kernel, but without the tile kernel's 31 padded query
/// rows and 3 idle warps. For 1 < Tq <= 8 it reads K, V once per query row (from L2), so only while the
/// tile grid fills at most half the SMs. Splits: enough blocks for ~8 per SM, >= 16 keys each, <= 128. A
/// block's steps are serial (load 16 keys, reduce, rescale), so short splits keep a decoding step's
/// attention near one memory round trip: a 384-key Llama-1B row took 13-16 us (H200) with 64-key splits.
int split_kv_parts(const Dims& d, int64_t span, int sms) {
  if (d.Tq > kSplitMaxTq || span < 2 * kSplitMinKeys) return 0;
  const int64_t tile_blocks = d.B * d.Hq * ((d.Tq + kBQ - 1) / kBQ);
  if (d.Tq > 1 && 2 * tile_blocks > sms) return 0;
  const int64_t rows = d.B * d.Hq * d.Tq;
  const int64_t want = (kSplitBlocksPerSm * sms + rows - 1) / rows;
  const int64_t most = std::min(span / kSplitMinKeys, int64_t{kSplitMaxParts});
  return static_cast<int>(std::max<int64_t>(1, std::min(want, most)));
}

/// The split-KV forward with ns splits per query row: one launch (with ns > 1, the last block of each row
/// merges its parts).
template <class Mask>
void forward_split(const AttnArgs& a, const Dims& d, const Mask& mask, int ns, const float* q, const float* k,
                   const float* v, float* o, float* lse) {
  constexpr const char* op = "attention_forward";
  const int64_t rows = d.B * d.Hq * d.Tq;
  const unsigned blocks = block_count(rows * ns, op);
  float *part_ml = nullptr, *part_acc = nullptr;
  unsigned* counters = nullptr;
  if (ns > 1) {
    // The parts live in a buffer kept across calls (a decoding step makes one such call per layer: no pool
    // allocation and free each time); launches on the stream run in order, so reusing it is safe.
    // Sized for the most splits a row can take, so that a growing cache (more splits per step) does not
    // reallocate it step after step.
    thread_local KeptDeviceBuffer<float> split_parts;
    const int64_t ml = (rows * ns * 2 + 63) / 64 * 64;  // part_acc 256-byte aligned
    const int64_t most = (rows * kSplitMaxParts * 2 + 63) / 64 * 64 + rows * kSplitMaxParts * d.Dv;
    part_ml = split_parts.get(static_cast<size_t>(most));
    part_acc = part_ml + ml;
    // Per-row counters for the merge: zeroed when allocated; every launch leaves them zero.
    thread_local KeptDeviceBuffer<unsigned> split_counters;
    counters = split_counters.get(static_cast<size_t>(std::max<int64_t>(rows, 1024)), true);
  }
  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    // Under PDL (cuda/pdl.cuh) the grid is resident when the kernel before it (which wrote q and the cache's
    // new rows) finishes: it waits first thing.
    launch_pdl(attn_forward_split_kernel<kD, Mask>, dim3(blocks), dim3(kSplitThreads), 0, d, mask, ns, q, k, v,
               o, lse, part_ml, part_acc, counters);
  });
  TESSERA_CUDA_CHECK_LAUNCH("attn_forward_split_kernel");
}

/// The forward / backward launches for one mask functor.
template <class Mask>
void forward_impl(const AttnArgs& a, const Mask& mask, const float* q, const float* k, const float* v, float* o,
                  float* lse) {
  constexpr const char* op = "attention_forward";
  const Dims d = make_dims(a, op);
  if (d.B * d.Tq == 0) return;
  TESSERA_CHECK(q && o && (d.Tk == 0 || (k && v)), op, "(cuda): q, k, v or o is null");
  if (const int ns = split_kv_parts(d, key_span(mask, d), device_sm_count()); ns > 0) {
    forward_split(a, d, mask, ns, q, k, v, o, lse);
    return;
  }
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

  const int64_t tiles = d.B * ((d.Tq + kBQ - 1) / kBQ);  // query tiles (their key ranges, for dK/dV)
  DeviceScratch scratch;
  scratch.reserve(DeviceScratch::bytes_for<float>(d.B * d.Hq * d.Tq) +
                  (has_k ? DeviceScratch::bytes_for<Range>(tiles) : 0));
  float* Dd = scratch.carve<float>(d.B * d.Hq * d.Tq);
  Range* tile_ranges = has_k ? scratch.carve<Range>(tiles) : nullptr;
  if (has_q) {
    attn_rowdot_kernel<<<grid_for(d.B * d.Tq * d.Hq * 32, 128, op), 128>>>(d, o, dout, Dd);
    TESSERA_CUDA_CHECK_LAUNCH("attn_rowdot_kernel");
  }
  if (has_k && tiles > 0) {
    attn_tile_ranges_kernel<<<grid_for(tiles, 128, op), 128>>>(d, mask, tile_ranges);
    TESSERA_CUDA_CHECK_LAUNCH("attn_tile_ranges_kernel");
  }
  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    constexpr size_t smem = bwd_smem<kD>();
    if (has_k) {
      auto kernel = attn_backward_dkdv_kernel<kD, Mask>;
      allow_smem(kernel, smem);
      const unsigned blocks = block_count(d.B * d.Hkv * ((d.Tk + kBK - 1) / kBK), op);
      kernel<<<blocks, kBwdThreads, smem>>>(d, mask, q, k, v, lse, Dd, dout, dk, dv, tile_ranges);
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

}  // namespace
}  // namespace tessera::cuda_detail
