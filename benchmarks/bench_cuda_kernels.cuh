// Device helpers and baselines for benchmarks/bench_cuda.cpp, compiled by nvcc in bench_cuda_kernels.cu.
// Plain C++ declarations (no CUDA syntax), so the host-compiled driver can include them. Every function
// queues its work on the legacy default stream (as tessera::cuda does) and throws std::runtime_error naming
// the failing CUDA / cuFFT call.
#pragma once
#include <cstdint>

namespace bench {

// ---- buffers ----------------------------------------------------------------------------------------------

/// p[i] = uniform in [lo, hi) from a counter-based hash of (seed, i): reproducible, no host round trip.
void fill_uniform(float* p, int64_t n, uint64_t seed, float lo, float hi);
/// dst[i] = bf16(src[i]), round to nearest even (bit patterns, as tessera::bf16).
void to_bf16(uint16_t* dst, const float* src, int64_t n);
/// dst[i] = float(src[i]) for bf16 bit patterns (exact).
void from_bf16(float* dst, const uint16_t* src, int64_t n);

/// n launches of an empty one-block kernel, back to back on the default stream (launch overhead rows).
void empty_launches(int n);

/// max |a - b| and max |b| over n elements (b is the reference); NaN anywhere shows up as NaN.
struct DiffStat {
  double max_abs_diff = 0, max_abs_ref = 0;
  double rel() const { return max_abs_ref > 0 ? max_abs_diff / max_abs_ref : max_abs_diff; }
};
DiffStat diff(const float* a, const float* b, int64_t n);
DiffStat diff_bf16(const uint16_t* a, const uint16_t* b, int64_t n);

// ---- attention baseline: softmax over materialised score rows
// ----------------------------------------------

/// Score matrices [rows, T] (rows = batch * heads * T query rows; row r is query position r % T).
/// chunk == 0: causal (key j <= query i); chunk > 0: Megalodon's chunk-local causal mask (also j / chunk ==
/// i / chunk). In place: s becomes P = softmax over the allowed keys (0 elsewhere). T <= 12288 (row in smem).
void masked_softmax_rows(float* s, int64_t rows, int64_t T, int64_t chunk);
/// Softmax backward in place: dp becomes dS = P * (dP - rowsum(P * dP)).
void softmax_backward_rows(float* dp, const float* p, int64_t rows, int64_t T);

// ---- CEMA by FFT convolution (forward only, B = 1, no carried state)
// ----------------------------------------

/// y[t, d] = sum_{s <= t} k[t - s, d] u[s, d] + omega[d] u[t, d] with k[j, d] = sum_n Re(p g q^j) (spec
/// §1.4), u, y [L, D] token rows. Causal linear convolution by cuFFT real transforms of length n = 2
/// next_pow2(L), batched over the D channels in place (stride D, no transposes). kernel() computes k from the
/// raw parameters on the device and transforms it; apply() pads u, transforms, multiplies by the cached
/// spectrum, inverts.
class CemaFft {
 public:
  CemaFft(int64_t L, int64_t D, int64_t N);
  ~CemaFft();
  CemaFft(const CemaFft&) = delete;
  CemaFft& operator=(const CemaFft&) = delete;

  /// Coefficients (as cuda/cema.cu), the kernel k [n, D] (zero for j >= L) and its spectrum. Raw parameters
  /// in the official shapes: alpha, delta [D, N], theta [D], gamma [D, N, 2].
  void kernel(const float* alpha, const float* delta, const float* theta, const float* gamma);
  /// y = conv(u, k) + omega * u with the spectrum from the last kernel() call.
  void apply(const float* u, const float* omega, float* y);
  int64_t fft_len() const { return n_; }

 private:
  void release() noexcept;

  int64_t L_, D_, N_, n_;
  int plan_r2c_ = 0, plan_c2r_ = 0;  // cufftHandle (any value is valid: see has_r2c_, has_c2r_)
  bool has_r2c_ = false, has_c2r_ = false;
  float* coef_ = nullptr;  // [4, N, D]: log2 |q|, phase per step in turns, Re(p g), Im(p g)
  float* upad_ = nullptr;  // [n, D] real: u zero-padded (rows L..n-1 stay zero)
  float* work_ = nullptr;  // [n, D] real: k for its transform, then the inverse transform's output
  void* kspec_ = nullptr;  // [n/2+1, D] complex: spectrum of k
  void* uspec_ = nullptr;  // [n/2+1, D] complex: spectrum of u, then the product
};

}  // namespace bench
