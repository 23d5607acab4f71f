// Optimizer kernels on the GPU: the fused AdamW step (train::adamw_update), the squared global gradient norm
// and gradient clipping by it.
//
// AdamW: one thread per element, grid-stride; each element's update is evaluated in double and rounded once,
// exactly as the CPU (the per-step scalars bc1, sqrt(bc2), lr/bc1, 1 - lr*wd are computed on the host with
// the CPU's expressions). The double operations use the _rn intrinsics so nvcc cannot contract them into
// FMAs: every operation is one IEEE-rounded +, *, / or sqrt, so the result equals the CPU's bit for bit
// unless the host compiler contracts the CPU loop into FMAs (-march=native can), which moves the double
// result by ~1e-16 and the fp32 result by at most 1 ulp, rarely. Optionally writes the bf16 (RNE) copy of the
// new weights. Sum of squares: a fixed grid of blocks reduces g^2 in double to per-block partials, one block
// adds them in a fixed order: deterministic. Clipping reads the accumulated sum on the device (no host round
// trip).
#include <algorithm>
#include <cmath>
#include <cub/block/block_reduce.cuh>

#include "core_util.cuh"
#include "launch_core.hpp"

namespace tessera::cuda_detail {
namespace {

constexpr int kThreads = 256;

struct AdamWScalars {
  double beta1, one_minus_beta1, beta2, one_minus_beta2, eps, bc2_sqrt, step_size, decay;
};

__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, AdamWScalars c,
                             uint16_t* __restrict__ p_bf16) {
  TESSERA_GRID_STRIDE(i, n) {
    const double gi = g[i];
    const double pi = __dmul_rn(static_cast<double>(p[i]), c.decay);  // decoupled decay first, as torch
    // m and v are stored in fp32: round them before use, as torch (and the CPU op) do.
    const float mi =
        static_cast<float>(__dadd_rn(__dmul_rn(c.beta1, m[i]), __dmul_rn(c.one_minus_beta1, gi)));
    const float vi = static_cast<float>(
        __dadd_rn(__dmul_rn(c.beta2, v[i]), __dmul_rn(__dmul_rn(c.one_minus_beta2, gi), gi)));
    m[i] = mi;
    v[i] = vi;
    const double denom = __dadd_rn(__ddiv_rn(__dsqrt_rn(static_cast<double>(vi)), c.bc2_sqrt), c.eps);
    const float pn = static_cast<float>(__dsub_rn(pi, __ddiv_rn(__dmul_rn(c.step_size, mi), denom)));
    p[i] = pn;
    if (p_bf16) p_bf16[i] = bf16_bits(pn);
  }
}

constexpr int kSumBlocks = 1024;  // partials; the final block has one thread per partial

__global__ void __launch_bounds__(kThreads)
    sumsq_partial_kernel(double* __restrict__ partial, const float* __restrict__ g, int64_t n) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  double s = 0.0;
  TESSERA_GRID_STRIDE(i, n) {
    const double x = g[i];
    s += x * x;
  }
  s = Reduce(storage).Sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(kSumBlocks)
    sumsq_final_kernel(double* sumsq, const double* __restrict__ partial, int parts) {
  using Reduce = cub::BlockReduce<double, kSumBlocks>;
  __shared__ typename Reduce::TempStorage storage;
  const double s = Reduce(storage).Sum(threadIdx.x < parts ? partial[threadIdx.x] : 0.0);
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
                      double beta2, double eps, double wd, int64_t t, uint16_t* p_bf16) {
  TESSERA_CHECK(n >= 0, "adamw_update(cuda): negative element count ", n);
  TESSERA_CHECK(t >= 1, "adamw_update(cuda): step t must be >= 1, got ", t);
  if (n == 0) return;
  TESSERA_CHECK(p && g && m && v, "adamw_update(cuda): p, g, m or v is null");
  // The CPU op's per-step scalars, with the same expressions.
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t)));
  const AdamWScalars c{beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, bc2_sqrt, lr / bc1, 1.0 - lr * wd};
  adamw_kernel<<<stride_blocks(n), kThreads>>>(p, g, m, v, n, c, p_bf16);
  TESSERA_CUDA_CHECK_LAUNCH("adamw_kernel");
}

void grad_sumsq_f32(double* sumsq, const float* g, int64_t n) {
  TESSERA_CHECK(n >= 0, "grad_sumsq(cuda): negative element count ", n);
  TESSERA_CHECK(sumsq, "grad_sumsq(cuda): sumsq is null");
  if (n == 0) return;
  // The grid depends on n only, so the summation order (hence the result) is fixed for a given tensor.
  const int parts =
      static_cast<int>(std::clamp<int64_t>((n + 8 * kThreads - 1) / (8 * kThreads), 1, kSumBlocks));
  OpTemp temp(OpTemp::bytes<double>(parts));
  double* partial = temp.carve<double>(parts);
  sumsq_partial_kernel<<<parts, kThreads>>>(partial, g, n);
  TESSERA_CUDA_CHECK_LAUNCH("sumsq_partial_kernel");
  sumsq_final_kernel<<<1, kSumBlocks>>>(sumsq, partial, parts);
  TESSERA_CUDA_CHECK_LAUNCH("sumsq_final_kernel");
}

void clip_scale_grads_f32(float* g, int64_t n, const double* sumsq, double max_norm) {
  TESSERA_CHECK(n >= 0, "clip_scale_grads(cuda): negative element count ", n);
  TESSERA_CHECK(sumsq, "clip_scale_grads(cuda): sumsq is null");
  if (n == 0 || !(max_norm > 0)) return;
  clip_scale_kernel<<<stride_blocks(n), kThreads>>>(g, n, sumsq, max_norm);
  TESSERA_CUDA_CHECK_LAUNCH("clip_scale_kernel");
}

}  // namespace tessera::cuda_detail
