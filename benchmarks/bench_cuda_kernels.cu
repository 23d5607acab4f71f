// Kernels and cuFFT code behind bench_cuda_kernels.cuh: buffer fill / compare helpers, the
// materialised-softmax attention baseline, and CEMA as an FFT convolution (the alternative to tessera's scan,
// forward only).
#include <cuda_runtime_api.h>
#include <cufft.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "bench_cuda_kernels.cuh"

#define BENCH_CUDA(call)                                                                                \
  do {                                                                                                  \
    const cudaError_t bench_err_ = (call);                                                              \
    if (bench_err_ != cudaSuccess)                                                                      \
      throw std::runtime_error(std::string(#call) + " failed: " + cudaGetErrorName(bench_err_) + " (" + \
                               cudaGetErrorString(bench_err_) + ") at " + __FILE__ + ":" +              \
                               std::to_string(__LINE__));                                               \
  } while (0)
#define BENCH_LAUNCH(kernel_name)                                                                     \
  do {                                                                                                \
    const cudaError_t bench_err_ = cudaGetLastError();                                                \
    if (bench_err_ != cudaSuccess)                                                                    \
      throw std::runtime_error(std::string("launch of ") + kernel_name +                              \
                               " failed: " + cudaGetErrorName(bench_err_) + " at " + __FILE__ + ":" + \
                               std::to_string(__LINE__));                                             \
  } while (0)
#define BENCH_CUFFT(call)                                                                              \
  do {                                                                                                 \
    const cufftResult bench_fr_ = (call);                                                              \
    if (bench_fr_ != CUFFT_SUCCESS)                                                                    \
      throw std::runtime_error(std::string(#call) + " failed: cufftResult " +                          \
                               std::to_string(static_cast<int>(bench_fr_)) + " at " + __FILE__ + ":" + \
                               std::to_string(__LINE__));                                              \
  } while (0)

namespace bench {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, int64_t(1) << 20));
}

__device__ __forceinline__ int64_t gtid() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t gstride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Max that keeps NaN (fmaxf would drop it), so a NaN output is reported instead of hidden.
__device__ __forceinline__ float nan_max(float a, float b) {
  return (a != a || a > b) ? a : b;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_max(float v, float* red) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : -INFINITY;
  return warp_max(v);
}
__device__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : 0.f;
  return warp_sum(v);
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void fill_uniform_kernel(float* p, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = gtid(); i < n; i += gstride()) {
    const float u = static_cast<float>(splitmix64(seed * 0x100000001b3ull + static_cast<uint64_t>(i)) >> 40) *
                    (1.f / 16777216.f);
    p[i] = lo + (hi - lo) * u;
  }
}

__device__ __forceinline__ uint16_t bf16_round(float f) {
  uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}
__device__ __forceinline__ float bf16_float(uint16_t b) {
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}

__global__ void to_bf16_kernel(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t i = gtid(); i < n; i += gstride()) dst[i] = bf16_round(src[i]);
}

__global__ void from_bf16_kernel(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = gtid(); i < n; i += gstride()) dst[i] = bf16_float(src[i]);
}

// out[0] = max |a - b|, out[1] = max |b| as float bits: for non-negative floats (and +NaN, which sorts above
// +inf) the unsigned order is the float order, so atomicMax on the bits is a float max.
template <class T>
__global__ void diff_kernel(const T* a, const T* b, int64_t n, unsigned* out) {
  float md = 0.f, mr = 0.f;
  for (int64_t i = gtid(); i < n; i += gstride()) {
    float x, y;
    if constexpr (sizeof(T) == 2) {
      x = bf16_float(a[i]);
      y = bf16_float(b[i]);
    } else {
      x = a[i];
      y = b[i];
    }
    md = nan_max(md, fabsf(x - y));
    mr = nan_max(mr, fabsf(y));
  }
  md = warp_max(md);
  mr = warp_max(mr);
  if ((threadIdx.x & 31) == 0) {
    atomicMax(out, __float_as_uint(md));
    atomicMax(out + 1, __float_as_uint(mr));
  }
}

template <class T>
DiffStat diff_impl(const T* a, const T* b, int64_t n) {
  unsigned* d = nullptr;
  BENCH_CUDA(cudaMalloc(&d, 2 * sizeof(unsigned)));
  unsigned h[2] = {0, 0};
  try {
    BENCH_CUDA(cudaMemset(d, 0, 2 * sizeof(unsigned)));
    if (n > 0) {
      diff_kernel<T><<<blocks_for(n), kThreads>>>(a, b, n, d);
      BENCH_LAUNCH("diff_kernel");
    }
    BENCH_CUDA(cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost));
  } catch (...) {
    (void)cudaFree(d);
    throw;
  }
  BENCH_CUDA(cudaFree(d));
  float f[2];
  static_assert(sizeof(f) == sizeof(h));
  std::memcpy(f, h, sizeof(f));
  return DiffStat{f[0], f[1]};
}

// ---- attention baseline -----------------------------------------------------------------------------------

// One block per score row; the row lives in shared memory between the max, exp-sum and normalise passes, so
// it is read once and written once. Masked keys are never loaded.
__global__ void masked_softmax_kernel(float* s, int64_t T, int64_t chunk) {
  extern __shared__ float row[];
  __shared__ float red[32];
  const int64_t r = blockIdx.x, i = r % T;
  float* sr = s + r * T;
  const int64_t lo = chunk > 0 ? i / chunk * chunk : 0;  // first allowed key; the last is i
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
    const float v = (j >= lo && j <= i) ? sr[j] : -INFINITY;
    row[j] = v;
    m = nan_max(m, v);
  }
  m = block_max(m, red);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
    const float e = row[j] == -INFINITY ? 0.f : expf(row[j] - m);
    row[j] = e;
    sum += e;
  }
  sum = block_sum(sum, red);
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) sr[j] = row[j] * inv;
}

__global__ void softmax_backward_kernel(float* dp, const float* p, int64_t T) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  float* dr = dp + r * T;
  const float* pr = p + r * T;
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) dot += pr[j] * dr[j];
  dot = block_sum(dot, red);
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) dr[j] = pr[j] * (dr[j] - dot);
}

// ---- CEMA by FFT ------------------------------------------------------------------------------------------

__device__ __forceinline__ float sigmoid(float x) {
  return 1.f / (1.f + expf(-x));
}

// Per (d, n), the coefficients of spec §1.2 in the form the kernel generator wants, planes [N][D]:
//   log2 |q| with |q| = 1 - p sigmoid(delta);  phase of q in turns, (n+1)/N sigmoid(theta);  p g.
__global__ void cema_fft_coef_kernel(int64_t D, int N, const float* alpha, const float* delta,
                                     const float* theta, const float* gamma, float* coef) {
  const int64_t i = gtid();
  if (i >= D * N) return;
  const int64_t d = i / N;
  const int n = static_cast<int>(i % N);
  const float pa = sigmoid(alpha[i]), r = 1.f - pa * sigmoid(delta[i]);
  const float g_scale = rsqrtf(static_cast<float>(N));
  const int64_t o = static_cast<int64_t>(n) * D + d, plane = static_cast<int64_t>(N) * D;
  coef[o] = log2f(r);
  coef[plane + o] = static_cast<float>(n + 1) / static_cast<float>(N) * sigmoid(theta[d]);
  coef[2 * plane + o] = pa * gamma[2 * i] * g_scale;
  coef[3 * plane + o] = pa * gamma[2 * i + 1] * g_scale;
}

// k[j, d] = sum_n Re(p g q^j) = sum_n |q|^j (Re(pg) cos(j phi) - Im(pg) sin(j phi)) for j < L, 0 for L <= j <
// n. The phase j * turns is reduced in double (j up to 2^20 would lose the angle in float), the rest is
// float.
__global__ void cema_fft_taps_kernel(int64_t nfft, int64_t L, int64_t D, int N, const float* coef, float* k) {
  const int64_t plane = static_cast<int64_t>(N) * D;
  for (int64_t idx = gtid(); idx < nfft * D; idx += gstride()) {
    const int64_t j = idx / D, d = idx % D;
    float acc = 0.f;
    if (j < L) {
      const float jf = static_cast<float>(j);
      for (int n = 0; n < N; ++n) {
        const int64_t o = static_cast<int64_t>(n) * D + d;
        double turns = static_cast<double>(j) * static_cast<double>(coef[plane + o]);
        turns -= rint(turns);
        float sn, cs;
        sincospif(2.f * static_cast<float>(turns), &sn, &cs);
        const float mag = exp2f(jf * coef[o]);
        acc += mag * (coef[2 * plane + o] * cs - coef[3 * plane + o] * sn);
      }
    }
    k[idx] = acc;
  }
}

// u_spec *= k_spec / n (cuFFT's inverse is unnormalised).
__global__ void cema_fft_mul_kernel(float2* u, const float2* k, int64_t count, float inv_n) {
  for (int64_t i = gtid(); i < count; i += gstride()) {
    const float2 a = u[i], b = k[i];
    u[i] = make_float2((a.x * b.x - a.y * b.y) * inv_n, (a.x * b.y + a.y * b.x) * inv_n);
  }
}

__global__ void cema_fft_out_kernel(float* y, const float* conv, const float* u, const float* omega,
                                    int64_t L, int64_t D) {
  for (int64_t i = gtid(); i < L * D; i += gstride()) y[i] = conv[i] + omega[i % D] * u[i];
}

__global__ void empty_kernel() {}

}  // namespace

// ---- public functions -------------------------------------------------------------------------------------

void empty_launches(int n) {
  for (int i = 0; i < n; ++i) empty_kernel<<<1, 32>>>();
  BENCH_LAUNCH("empty_kernel");
}

void fill_uniform(float* p, int64_t n, uint64_t seed, float lo, float hi) {
  if (n <= 0) return;
  fill_uniform_kernel<<<blocks_for(n), kThreads>>>(p, n, seed, lo, hi);
  BENCH_LAUNCH("fill_uniform_kernel");
}

void to_bf16(uint16_t* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  to_bf16_kernel<<<blocks_for(n), kThreads>>>(dst, src, n);
  BENCH_LAUNCH("to_bf16_kernel");
}

void from_bf16(float* dst, const uint16_t* src, int64_t n) {
  if (n <= 0) return;
  from_bf16_kernel<<<blocks_for(n), kThreads>>>(dst, src, n);
  BENCH_LAUNCH("from_bf16_kernel");
}

DiffStat diff(const float* a, const float* b, int64_t n) {
  return diff_impl(a, b, n);
}
DiffStat diff_bf16(const uint16_t* a, const uint16_t* b, int64_t n) {
  return diff_impl(a, b, n);
}

void masked_softmax_rows(float* s, int64_t rows, int64_t T, int64_t chunk) {
  if (T > 12288) throw std::runtime_error("masked_softmax_rows: T=" + std::to_string(T) + " > 12288");
  if (rows > INT32_MAX) throw std::runtime_error("masked_softmax_rows: too many rows");
  if (rows <= 0) return;
  const size_t smem = static_cast<size_t>(T) * sizeof(float);
  BENCH_CUDA(cudaFuncSetAttribute(masked_softmax_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)));
  masked_softmax_kernel<<<static_cast<unsigned>(rows), kThreads, smem>>>(s, T, chunk);
  BENCH_LAUNCH("masked_softmax_kernel");
}

void softmax_backward_rows(float* dp, const float* p, int64_t rows, int64_t T) {
  if (rows > INT32_MAX) throw std::runtime_error("softmax_backward_rows: too many rows");
  if (rows <= 0) return;
  softmax_backward_kernel<<<static_cast<unsigned>(rows), kThreads>>>(dp, p, T);
  BENCH_LAUNCH("softmax_backward_kernel");
}

CemaFft::CemaFft(int64_t L, int64_t D, int64_t N) : L_(L), D_(D), N_(N), n_(2) {
  while (n_ < L) n_ <<= 1;
  n_ *= 2;  // 2 next_pow2(L): the circular convolution of the padded signals is the linear one
  if (L < 1 || D < 1 || N < 1 || n_ > INT32_MAX || D > INT32_MAX || (n_ / 2 + 1) * D > INT32_MAX)
    throw std::runtime_error("CemaFft: unsupported sizes L=" + std::to_string(L) + " D=" + std::to_string(D));
  const int64_t nspec = n_ / 2 + 1;
  try {
    BENCH_CUDA(cudaMalloc(&coef_, sizeof(float) * 4 * N * D));
    BENCH_CUDA(cudaMalloc(&upad_, sizeof(float) * n_ * D));
    BENCH_CUDA(cudaMalloc(&work_, sizeof(float) * n_ * D));
    BENCH_CUDA(cudaMalloc(&kspec_, sizeof(float2) * nspec * D));
    BENCH_CUDA(cudaMalloc(&uspec_, sizeof(float2) * nspec * D));
    BENCH_CUDA(cudaMemset(upad_, 0, sizeof(float) * n_ * D));
    // Batched over the channels in the token-row layout: channel d's sample j at j * D + d.
    int len[1] = {static_cast<int>(n_)}, real_embed[1] = {static_cast<int>(n_)},
        spec_embed[1] = {static_cast<int>(nspec)};
    const int Di = static_cast<int>(D);
    cufftHandle r2c = 0, c2r = 0;
    BENCH_CUFFT(cufftPlanMany(&r2c, 1, len, real_embed, Di, 1, spec_embed, Di, 1, CUFFT_R2C, Di));
    plan_r2c_ = r2c;
    has_r2c_ = true;
    BENCH_CUFFT(cufftPlanMany(&c2r, 1, len, spec_embed, Di, 1, real_embed, Di, 1, CUFFT_C2R, Di));
    plan_c2r_ = c2r;
    has_c2r_ = true;
  } catch (...) {
    release();
    throw;
  }
}

CemaFft::~CemaFft() {
  release();
}

void CemaFft::release() noexcept {
  if (has_r2c_) (void)cufftDestroy(plan_r2c_);
  if (has_c2r_) (void)cufftDestroy(plan_c2r_);
  has_r2c_ = has_c2r_ = false;
  for (void* p :
       {static_cast<void*>(coef_), static_cast<void*>(upad_), static_cast<void*>(work_), kspec_, uspec_})
    if (p) (void)cudaFree(p);
  coef_ = upad_ = work_ = nullptr;
  kspec_ = uspec_ = nullptr;
}

void CemaFft::kernel(const float* alpha, const float* delta, const float* theta, const float* gamma) {
  const int N = static_cast<int>(N_);
  cema_fft_coef_kernel<<<blocks_for(N_ * D_), kThreads>>>(D_, N, alpha, delta, theta, gamma, coef_);
  BENCH_LAUNCH("cema_fft_coef_kernel");
  cema_fft_taps_kernel<<<blocks_for(n_ * D_), kThreads>>>(n_, L_, D_, N, coef_, work_);
  BENCH_LAUNCH("cema_fft_taps_kernel");
  BENCH_CUFFT(cufftExecR2C(plan_r2c_, work_, static_cast<cufftComplex*>(kspec_)));
}

void CemaFft::apply(const float* u, const float* omega, float* y) {
  BENCH_CUDA(cudaMemcpyAsync(upad_, u, sizeof(float) * L_ * D_, cudaMemcpyDeviceToDevice, 0));
  BENCH_CUFFT(cufftExecR2C(plan_r2c_, upad_, static_cast<cufftComplex*>(uspec_)));
  const int64_t count = (n_ / 2 + 1) * D_;
  cema_fft_mul_kernel<<<blocks_for(count), kThreads>>>(
      static_cast<float2*>(uspec_), static_cast<const float2*>(kspec_), count, 1.f / static_cast<float>(n_));
  BENCH_LAUNCH("cema_fft_mul_kernel");
  BENCH_CUFFT(cufftExecC2R(plan_c2r_, static_cast<cufftComplex*>(uspec_), work_));
  cema_fft_out_kernel<<<blocks_for(L_ * D_), kThreads>>>(y, work_, u, omega, L_, D_);
  BENCH_LAUNCH("cema_fft_out_kernel");
}

}  // namespace bench
