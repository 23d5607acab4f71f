// Optimizer kernels on the GPU: the fused AdamW step (train::adamw_update), the squared global gradient norm
// and gradient clipping by it.
//
// AdamW: one launch, four elements per thread with 16-byte accesses where the pointers allow (one per thread
// otherwise and for the tail), the next four loaded while the current four are computed (adamw_ahead_kernel);
// each element's update is evaluated in double and rounded once, exactly as the CPU (the per-step scalars
// bc1, sqrt(bc2), lr/bc1, 1 - lr*wd are computed on the host with the CPU's expressions). The double
// operations use the _rn intrinsics so nvcc cannot contract them into FMAs: every operation is one
// IEEE-rounded +, *, / or sqrt, so the result equals the CPU's bit for bit unless the host compiler contracts
// the CPU loop into FMAs (-march=native can), which moves the double result by ~1e-16 and the fp32 result by
// at most 1 ulp, rarely. Optionally writes the bf16 (RNE) copy of the new weights. Sum of squares: blocks
// over fixed chunks of the gradients (a list of them per launch) reduce g^2 in double to per-block partials,
// one block adds them in a fixed order: deterministic. Clipping reads the accumulated sum on the device (no
// host round trip).
#include <algorithm>
#include <climits>
#include <cmath>
#include <cub/block/block_reduce.cuh>

#include "core_util.cuh"
#include "launch_core.hpp"

namespace tessera::cuda_detail {
namespace {

constexpr int kThreads = 256;

struct AdamWScalars {
  double beta1, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt, step_size, decay;
  float grad_scale;  // g is read as float(g * grad_scale) when it is not 1 (clipping folded in)
};

/// One element's update: p, m, v in place; returns the new p.
__device__ __forceinline__ float adamw_element(float& p, float g, float& m, float& v, const AdamWScalars& c) {
  const double gi = c.grad_scale == 1.f ? g : __fmul_rn(g, c.grad_scale);  // as clip_scale_kernel's g *= c
  const double pi = __dmul_rn(static_cast<double>(p), c.decay);  // decoupled decay first, as torch
  // m and v are stored in fp32: round them before use, as torch (and the CPU op) do.
  const float mi = static_cast<float>(__dadd_rn(__dmul_rn(c.beta1, m), __dmul_rn(c.one_minus_beta1, gi)));
  const float vi =
      static_cast<float>(__dadd_rn(__dmul_rn(c.beta2, v), __dmul_rn(__dmul_rn(c.one_minus_beta2, gi), gi)));
  m = mi;
  v = vi;
  const double denom = __dadd_rn(__ddiv_rn(__dsqrt_rn(static_cast<double>(vi)), c.bc2_sqrt), c.eps);
  p = static_cast<float>(__dsub_rn(pi, __ddiv_rn(__dmul_rn(c.step_size, mi), denom)));
  return p;
}

/// Group i of four elements: their update from the loaded pp, gg, mm, vv (updated in place), stored to p, m,
/// v (and the bf16 copy of p when b4 is set).
__device__ __forceinline__ void adamw_group(float4* p4, float4* m4, float4* v4, uint64_t* b4, int64_t i,
                                            float4& pp, const float4& gg, float4& mm, float4& vv,
                                            const AdamWScalars& c) {
  adamw_element(pp.x, gg.x, mm.x, vv.x, c);
  adamw_element(pp.y, gg.y, mm.y, vv.y, c);
  adamw_element(pp.z, gg.z, mm.z, vv.z, c);
  adamw_element(pp.w, gg.w, mm.w, vv.w, c);
  p4[i] = pp;
  m4[i] = mm;
  v4[i] = vv;
  if (b4) b4[i] = pack_bf16x4(pp.x, pp.y, pp.z, pp.w);
}
/// Element i alone (misaligned tensors, tails).
__device__ __forceinline__ void adamw_one(float* p, const float* g, float* m, float* v, uint16_t* p_bf16,
                                          int64_t i, const AdamWScalars& c) {
  const float pn = adamw_element(p[i], g[i], m[i], v[i], c);
  if (p_bf16) p_bf16[i] = bf16_bits(pn);
}

/// The update of n elements, four at a time with 16-byte loads and stores of p, g, m, v (8-byte of the bf16
/// copy) where vec4 (p, g, m, v 16-byte aligned, p_bf16 8-byte aligned), the tail one by one
/// (for_each_x4): the same arithmetic per element, so the same bits either way.
__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, AdamWScalars c, uint16_t* __restrict__ p_bf16,
                             bool vec4) {
  float4* p4 = reinterpret_cast<float4*>(p);
  const float4* g4 = reinterpret_cast<const float4*>(g);
  float4 *m4 = reinterpret_cast<float4*>(m), *v4 = reinterpret_cast<float4*>(v);
  uint64_t* b4 = reinterpret_cast<uint64_t*>(p_bf16);
  for_each_x4(
      n, vec4,
      [&](int64_t i) {
        float4 pp = p4[i], mm = m4[i], vv = v4[i];
        adamw_group(p4, m4, v4, b4, i, pp, g4[i], mm, vv, c);
      },
      [&](int64_t i) { adamw_one(p, g, m, v, p_bf16, i, c); });
}

/// The 4-wide update with loads ahead: each thread walks groups i, i + stride, ... of a grid of at most
/// kAheadBlocksPerSm blocks per multiprocessor and issues the next group's four 16-byte loads before it
/// computes the current group. Per element the update is two double divisions, a double square root and eight
/// fp32 <-> fp64 conversions — about as long as the group's 64 bytes take to arrive at the card's bandwidth —
/// so the arithmetic now runs while the next group is in flight. In the plain grid-stride pass every thread
/// waits for its loads and then computes, the threads of a wave in step, and memory idles during the
/// arithmetic (60 % of HBM bandwidth on BLT-1B's 3-billion-element hash tables, run 12). Same arithmetic per
/// element, so the same bits as adamw_kernel. Needs p, g, m, v 16-byte and p_bf16 8-byte aligned.
constexpr int kAheadBlocksPerSm = 4;

__global__ void __launch_bounds__(kThreads, kAheadBlocksPerSm)
    adamw_ahead_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                       float* __restrict__ v, int64_t n, AdamWScalars c, uint16_t* __restrict__ p_bf16) {
  float4* p4 = reinterpret_cast<float4*>(p);
  const float4* g4 = reinterpret_cast<const float4*>(g);
  float4 *m4 = reinterpret_cast<float4*>(m), *v4 = reinterpret_cast<float4*>(v);
  uint64_t* b4 = reinterpret_cast<uint64_t*>(p_bf16);
  const int64_t n4 = n / 4, stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n4) {
    float4 pp = p4[i], gg = g4[i], mm = m4[i], vv = v4[i];
    for (;;) {
      const int64_t next = i + stride;
      const bool more = next < n4;
      float4 pn{}, gn{}, mn{}, vn{};
      if (more) pn = p4[next], gn = g4[next], mn = m4[next], vn = v4[next];
      adamw_group(p4, m4, v4, b4, i, pp, gg, mm, vv, c);
      if (!more) break;
      i = next, pp = pn, gg = gn, mm = mn, vv = vn;
    }
  }
  for (int64_t k = 4 * n4 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += stride)
    adamw_one(p, g, m, v, p_bf16, k, c);
}

AdamWRoute g_adamw_route{};

constexpr int kSumBlocks = 1024;  // threads of the final sum

// Many gradients in one launch (kernel arguments: up to kListMax tensors). Tensor k is cut into chunks of
// kChunk elements, one block each, numbered from first[k]; block b writes the sum of its chunk's squares to
// partial[b] (four floats per load where the tensor is 16-byte aligned: bit k of vec4). Which block sums
// which elements depends only on the tensors' sizes and alignment: deterministic.
constexpr int kListMax = 64;
constexpr int64_t kChunk = int64_t{1} << 17;  // 512 KB of floats per block

struct GradList {
  const float* g[kListMax];
  int64_t n[kListMax];
  int64_t first[kListMax + 1];  // first[count] = blocks of this launch
  uint64_t vec4;
  int count;
};

__global__ void __launch_bounds__(kThreads)
    sumsq_list_kernel(double* __restrict__ partial, const GradList list) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const int64_t b = blockIdx.x;
  int k = 0;  // the tensor of this block: first[k] <= b < first[k + 1]
  for (int lo = 0, hi = list.count - 1; lo <= hi;) {
    const int mid = (lo + hi) / 2;
    if (list.first[mid] <= b)
      k = mid, lo = mid + 1;
    else
      hi = mid - 1;
  }
  const int64_t begin = (b - list.first[k]) * kChunk, end = min(list.n[k], begin + kChunk);
  const float* g = list.g[k];
  double s0 = 0.0, s1 = 0.0;
  int64_t i = begin + threadIdx.x;
  if ((list.vec4 >> k) & 1u) {  // begin is a multiple of 4 (kChunk is): 16-byte aligned
    const float4* g4 = reinterpret_cast<const float4*>(g + begin);
    const int64_t n4 = (end - begin) / 4;
    for (int64_t j = threadIdx.x; j < n4; j += kThreads) {
      const float4 x = g4[j];
      s0 += static_cast<double>(x.x) * x.x + static_cast<double>(x.y) * x.y;
      s1 += static_cast<double>(x.z) * x.z + static_cast<double>(x.w) * x.w;
    }
    i = begin + 4 * n4 + threadIdx.x;
  }
  for (; i < end; i += kThreads) s0 += static_cast<double>(g[i]) * g[i];
  const double s = Reduce(storage).Sum(s0 + s1);
  if (threadIdx.x == 0) partial[b] = s;
}

// *sumsq += the sum of partial[0, parts): thread t adds partials t, t + kSumBlocks, ... in order, then one
// block reduction (a fixed order).
__global__ void __launch_bounds__(kSumBlocks)
    sumsq_final_kernel(double* sumsq, const double* __restrict__ partial, int64_t parts) {
  using Reduce = cub::BlockReduce<double, kSumBlocks>;
  __shared__ typename Reduce::TempStorage storage;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < parts; i += kSumBlocks) s += partial[i];
  s = Reduce(storage).Sum(s);
  if (threadIdx.x == 0) *sumsq += s;
}

// As train::clip_grad_norm: coef = max_norm / (norm + 1e-6), applied (rounded to float) only when < 1.
__global__ void clip_scale_kernel(float* g, int64_t n, const double* __restrict__ sumsq, double max_norm) {
  const double norm = sqrt(*sumsq);
  if (!(max_norm > 0) || !isfinite(norm)) return;
  const double coef = max_norm / (norm + 1e-6);
  if (!(coef < 1.0)) return;
  const float c = static_cast<float>(coef);
  TESSERA_GRID_STRIDE(i, n) g[i] *= c;
}

}  // namespace

void adamw_update_f32(float* p, const float* g, float* m, float* v, int64_t n, double lr, double beta1,
                      double beta2, double eps, double wd, int64_t t, uint16_t* p_bf16, float grad_scale) {
  TESSERA_CHECK(n >= 0, "adamw_update(cuda): negative element count ", n);
  TESSERA_CHECK(t >= 1, "adamw_update(cuda): step t must be >= 1, got ", t);
  if (n == 0) return;
  TESSERA_CHECK(p && g && m && v, "adamw_update(cuda): p, g, m or v is null");
  // The CPU op's per-step scalars, with the same expressions.
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t)));
  const AdamWScalars c{beta1,    1.0 - beta1, beta2,         1.0 - beta2, eps,
                       bc2_sqrt, lr / bc1,    1.0 - lr * wd, grad_scale};
  const bool vec4 = aligned_to(p, 16) && aligned_to(g, 16) && aligned_to(m, 16) && aligned_to(v, 16) &&
                    (!p_bf16 || aligned_to(p_bf16, 8)) && n >= 4;
  if (vec4 && g_adamw_route.loads_ahead) {
    const int64_t cap = g_adamw_route.max_blocks > 0 ? g_adamw_route.max_blocks
                                                     : int64_t{kAheadBlocksPerSm} * device_sm_count();
    const auto blocks = static_cast<unsigned>(std::clamp<int64_t>((n / 4 + kThreads - 1) / kThreads, 1, cap));
    adamw_ahead_kernel<<<blocks, kThreads>>>(p, g, m, v, n, c, p_bf16);
    TESSERA_CUDA_CHECK_LAUNCH("adamw_ahead_kernel");
    return;
  }
  adamw_kernel<<<stride_blocks(vec4 ? n / 4 : n, kThreads), kThreads>>>(p, g, m, v, n, c, p_bf16, vec4);
  TESSERA_CUDA_CHECK_LAUNCH("adamw_kernel");
}

AdamWRoute set_adamw_route(AdamWRoute r) {
  TESSERA_CHECK(r.max_blocks >= 0, "set_adamw_route: max_blocks must be >= 0, got ", r.max_blocks);
  const AdamWRoute was = g_adamw_route;
  g_adamw_route = r;
  return was;
}

void grad_sumsq_many_f32(double* sumsq, const float* const* g, const int64_t* n, int64_t count) {
  TESSERA_CHECK(sumsq, "grad_sumsq(cuda): sumsq is null");
  TESSERA_CHECK(count >= 0, "grad_sumsq(cuda): negative tensor count ", count);
  int64_t parts = 0;
  for (int64_t k = 0; k < count; ++k) {
    TESSERA_CHECK(n[k] >= 0, "grad_sumsq(cuda): tensor ", k, " has a negative element count ", n[k]);
    TESSERA_CHECK(n[k] == 0 || g[k], "grad_sumsq(cuda): tensor ", k, " is null");
    parts += (n[k] + kChunk - 1) / kChunk;
  }
  if (parts == 0) return;
  OpTemp temp(OpTemp::bytes<double>(parts));
  double* partial = temp.carve<double>(parts);
  int64_t done = 0;  // partials written by earlier launches
  for (int64_t k = 0; k < count;) {
    GradList list{};
    int64_t blocks = 0;
    for (; k < count && list.count < kListMax; ++k) {
      if (n[k] == 0) continue;
      const int c = list.count++;
      list.g[c] = g[k], list.n[c] = n[k], list.first[c] = blocks;
      if (aligned_to(g[k], 16)) list.vec4 |= uint64_t{1} << c;
      blocks += (n[k] + kChunk - 1) / kChunk;
    }
    if (list.count == 0) break;
    list.first[list.count] = blocks;
    TESSERA_CHECK(blocks <= INT_MAX, "grad_sumsq(cuda): too many chunks in one launch (", blocks, ")");
    sumsq_list_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(partial + done, list);
    TESSERA_CUDA_CHECK_LAUNCH("sumsq_list_kernel");
    done += blocks;
  }
  sumsq_final_kernel<<<1, kSumBlocks>>>(sumsq, partial, parts);
  TESSERA_CUDA_CHECK_LAUNCH("sumsq_final_kernel");
}

void grad_sumsq_f32(double* sumsq, const float* g, int64_t n) {
  TESSERA_CHECK(n >= 0, "grad_sumsq(cuda): negative element count ", n);
  grad_sumsq_many_f32(sumsq, &g, &n, 1);  // one tensor is a list of one
}

void clip_scale_grads_f32(float* g, int64_t n, const double* sumsq, double max_norm) {
  TESSERA_CHECK(n >= 0, "clip_scale_grads(cuda): negative element count ", n);
  TESSERA_CHECK(sumsq, "clip_scale_grads(cuda): sumsq is null");
  if (n == 0 || !(max_norm > 0)) return;
  clip_scale_kernel<<<stride_blocks(n), kThreads>>>(g, n, sumsq, max_norm);
  TESSERA_CUDA_CHECK_LAUNCH("clip_scale_kernel");
}

}  // namespace tessera::cuda_detail
