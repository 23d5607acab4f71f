// Internal to tessera::cuda: the host-side launch code of the fp32 flash attention (argument checks, head-dim
// dispatch, the forward / backward launches for one mask functor). Included, after attention_kernels.cuh, by
// each .cu file that instantiates the kernels with its own mask functors (attention.cu, blt.cu); like that
// header it lives in an unnamed namespace.
#pragma once
#include <cuda_runtime_api.h>

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

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
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

}  // namespace
}  // namespace tessera::cuda_detail
