// GPU benchmark of tessera::cuda against baselines measured in the same run (scripts/gpu-check runs it last).
//
//   memory    cudaMemcpy device-to-device of 1 GiB (the floor for memory-bound kernels) vs the HBM peak
//             computed from the memory clock and bus width.
//   GEMM      ops::gemm(cuda) fp32 and bf16 (bf16 in and out, fp32 accumulate) at 4096^3 and the Llama-1B FFN
//             shape (8192 tokens x 2048 -> 5632, y = x W^T) vs "cuBLAS peak": cublasLtMatmul with a 32 MiB
//             workspace, the fastest of up to 8 heuristic algorithms timed here. The fp32 baseline uses the
//             compute type of our path: CUBLAS_COMPUTE_32F, or TF32 when TESSERA_ALLOW_TF32=1 (cuda/gemm.cu).
//   decode    one decoded token: the small products of frozen bf16 weights (Llama-1B shapes) vs cast +
//             cuBLAS, RoPE + KV-cache append vs its two launches, split-KV attention over 384 keys, and
//             the launch floors (one empty kernel; 256 back to back; the host's time per launch).
//   rows      RMSNorm (fp32 in, bf16 out; backward dx + residual and dw) at Llama-1B's and BLT-1B's training
//             shapes, the vectorised kernels vs the row-wise ones; RoPE on bf16 q, k in place vs the memcpy
//             floor.
//   blt       BLT-1B's byte <-> patch cross-attention (decoder and encoder shapes, 4096 bytes in
//             patches of mean 4.5): the fp32 segment kernels of its PatchSegments binding vs the flash tile
//             kernels under the same id mask; the bf16 segment kernels (a bf16 model's) vs the fp32 ones.
//   attention ops::attention_forward/backward(cuda) (fp32, flash-style) at B=4 T=4096 H=16, Dh 64 and 128,
//             masks Causal and ChunkLocal{2048} (Megalodon's chunk size) vs a materialised baseline: cuBLAS
//             fp32 batched S = scale Q K^T (T x T per head), a masked-softmax kernel, O = P V; backward
//             dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = scale dS K, dK = scale dS^T Q.
//             Also the bf16 tensor-core kernels (ops/attention_bf16.hpp), causal, against the fp32 flash op:
//             its time (measured above) as the baseline, its outputs on the same bf16-rounded inputs as the
//             check (a check above the bf16 tolerance makes the group FAILED). Both bf16 kernel families are
//             timed, forward and backward (WMMA, and mma.sync with the WMMA one as its baseline; the mma.sync
//             backward with dQ from the stored dS and with dQ recomputed).
//   CEMA      ops::cema_forward/backward(cuda) (the scan) at B=1 D=4096 N=16, L 4096 and 16384 vs the FFT
//             convolution (bench_cuda_kernels.cu: kernel k on the device, cuFFT real transforms of length
//             2 next_pow2(L)), forward only, with and without computing k; backward vs the memcpy floor.
//   TSN       ops::timestep_norm_forward/backward(cuda) at B=1 L=16384 D=4096 G=64 vs the memcpy floor.
//   AdamW     train::adamw_update(cuda) (fp32 state, bf16 copy: 30 bytes per element) on one 256 M-element
//             tensor and on 48 of 2048 x 2048, with loads ahead (the default) vs the plain grid-stride pass;
//             the two must give the same bits.
//
// Output: device lines, then one markdown table, a row printed as soon as it is measured:
//   | benchmark | shape | time | rate | baseline | baseline time | baseline rate | t_base/t | check |
// time: median over repetitions (CUDA events around each call after warm-up calls). t_base/t > 1: ours is
// faster. check: max |ours - baseline| / max |baseline| on the outputs. Rates: GEMM 2MNK; attention the
// useful FLOPs for both sides (forward 4 Dh per allowed (query, key) pair, backward 2.5x); memory-bound ops
// the bytes the op must move at least (forward read x + write y; backward read x, dy + write dx), also as a
// percentage of the measured memcpy rate; memcpy counts read + write.
//
// Usage: bench_cuda [--only=mem,gemm,decode,rows,blt,attn,cema,tsn,adamw] [--reps=N] [--attn-dh=64|128] (the
// attention section at one head dim only). No GPU: prints a skip line and exits 0. A failing section prints a
// FAILED row and the others still run; the exit status is then 1.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <complex>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/attn_args.hpp"              // internal: AttnDims -> the launchers' AttnArgs
#include "../cuda/cudnn_attention.hpp"        // internal: cuDNN's fused attention as the alternative
#include "../cuda/launch.hpp"                 // internal: the row-wise RMSNorm kernels (a baseline)
#include "../cuda/launch_attention_bf16.hpp"  // internal: the bf16 attention kernel choice
#include "../cuda/launch_blt.hpp"             // internal: the tile kernels under BLT's id masks (a baseline)
#include "../cuda/launch_core.hpp"            // internal: the per-pair RoPE kernel, AdamW routes (baselines)
#include "bench_cuda_kernels.cuh"
#include "tessera/core/dtype.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/ops/activation.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/attention_bf16.hpp"
#include "tessera/ops/cema.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/matmul.hpp"
#include "tessera/ops/norm.hpp"
#include "tessera/ops/rope.hpp"
#include "tessera/ops/timestep_norm.hpp"
#include "tessera/train/adamw.hpp"

namespace {

using tessera::cuda;
namespace ops = tessera::ops;

// ---- error checks and buffers -----------------------------------------------------------------------------

[[noreturn]] void fail(const std::string& what, const char* file, int line) {
  throw std::runtime_error(what + " at " + file + ":" + std::to_string(line));
}
#define CHECK_CUDA(call)                                                                                  \
  do {                                                                                                    \
    const cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess)                                                                                \
      fail(std::string(#call) + " failed: " + cudaGetErrorName(e_) + " (" + cudaGetErrorString(e_) + ")", \
           __FILE__, __LINE__);                                                                           \
  } while (0)
#define CHECK_CUBLAS(call)                                                                  \
  do {                                                                                      \
    const cublasStatus_t s_ = (call);                                                       \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                        \
      fail(std::string(#call) + " failed: " + cublasGetStatusName(s_), __FILE__, __LINE__); \
  } while (0)

/// Owning device array of n elements of T (uninitialised).
template <class T>
class DevBuf {
 public:
  explicit DevBuf(int64_t n) : n_(n) {
    CHECK_CUDA(
        cudaMalloc(reinterpret_cast<void**>(&p_), sizeof(T) * static_cast<size_t>(std::max<int64_t>(n, 1))));
  }
  DevBuf(const std::vector<T>& h) : DevBuf(static_cast<int64_t>(h.size())) {
    CHECK_CUDA(cudaMemcpy(p_, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice));
  }
  DevBuf(DevBuf&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() {
    if (p_) (void)cudaFree(p_);
  }
  T* get() const { return p_; }
  int64_t size() const { return n_; }
  void zero() { CHECK_CUDA(cudaMemset(p_, 0, sizeof(T) * static_cast<size_t>(n_))); }

 private:
  T* p_ = nullptr;
  int64_t n_;
};

DevBuf<float> uniform_buf(int64_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  DevBuf<float> b(n);
  bench::fill_uniform(b.get(), n, seed, lo, hi);
  return b;
}

// ---- timing -----------------------------------------------------------------------------------------------

struct Reps {
  int warmup, reps;
};

/// Median time in ms of f() over r.reps calls after r.warmup calls, CUDA events on the default stream.
class Timer {
 public:
  Timer() {
    CHECK_CUDA(cudaEventCreate(&start_));
    CHECK_CUDA(cudaEventCreate(&stop_));
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  ~Timer() {
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
  }
  double median_ms(const std::function<void()>& f, Reps r) {
    for (int i = 0; i < r.warmup; ++i) f();
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<double> t;
    for (int i = 0; i < r.reps; ++i) {
      CHECK_CUDA(cudaEventRecord(start_, 0));
      f();
      CHECK_CUDA(cudaEventRecord(stop_, 0));
      CHECK_CUDA(cudaEventSynchronize(stop_));
      float ms = 0;
      CHECK_CUDA(cudaEventElapsedTime(&ms, start_, stop_));
      t.push_back(ms);
    }
    CHECK_CUDA(cudaGetLastError());
    std::sort(t.begin(), t.end());
    const size_t n = t.size();
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
  }

 private:
  cudaEvent_t start_{}, stop_{};
};

// ---- the table --------------------------------------------------------------------------------------------

std::string strf(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string ms_str(double ms) {
  return ms < 1 ? strf("%.1f us", ms * 1e3) : strf("%.3f ms", ms);
}
std::string tflops(double flops, double ms) {
  return strf("%.1f TFLOP/s", flops / (ms * 1e-3) / 1e12);
}

struct Row {
  std::string what, shape;
  double ms;
  std::string rate, base;
  double base_ms;
  std::string base_rate, check;
};

void print_header() {
  std::printf(
      "\n| benchmark | shape | time | rate | baseline | baseline time | baseline rate | t_base/t | check "
      "|\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
}

void print_row(const Row& r) {
  const std::string ratio = r.base_ms > 0 && r.ms > 0 ? strf("%.2fx", r.base_ms / r.ms) : "-";
  std::printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.what.c_str(), r.shape.c_str(),
              ms_str(r.ms).c_str(), r.rate.c_str(), r.base.c_str(),
              r.base_ms > 0 ? ms_str(r.base_ms).c_str() : "-", r.base_rate.c_str(), ratio.c_str(),
              r.check.c_str());
  std::fflush(stdout);
}

void print_failure(const std::string& section, const std::string& msg) {
  std::string m = msg;
  std::replace(m.begin(), m.end(), '|', '/');
  std::replace(m.begin(), m.end(), '\n', ' ');
  std::printf("| %s | FAILED | - | - | - | - | - | - | %s |\n", section.c_str(), m.c_str());
  std::fflush(stdout);
}

std::string rel_str(const bench::DiffStat& s) {
  return strf("%.2e", s.rel());
}

// ---- shared state -----------------------------------------------------------------------------------------

struct Ctx {
  Timer timer;
  Reps reps{2, 7};        // GEMM, memory, CEMA, TSN
  Reps heavy{1, 5};       // attention (tens of ms per call)
  double memcpy_gbs = 0;  // measured by the memory section (0: not run)
  double peak_gbs = 0;    // from the clocks
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  int failures = 0;
  int64_t attn_dh = 0;  // attention section: only this head dim (0: 64 and 128)
};

/// Run one group of rows; an exception becomes a FAILED row and the next group still runs.
void guarded(Ctx& c, const std::string& name, const std::function<void()>& f) {
  try {
    f();
    CHECK_CUDA(cudaDeviceSynchronize());
  } catch (const std::exception& ex) {
    ++c.failures;
    print_failure(name, ex.what());
    (void)cudaGetLastError();  // clear a non-sticky error so that later groups can run
  }
}

/// "X GB/s (Y% memcpy), Z us/tok" for a memory-bound op moving `bytes` in `ms` over `tokens` tokens.
std::string mem_rate(const Ctx& c, double bytes, double ms, double tokens) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::string s = strf("%.0f GB/s", gbs);
  if (c.memcpy_gbs > 0) s += strf(" (%.0f%% memcpy)", 100 * gbs / c.memcpy_gbs);
  if (tokens > 0) s += strf(", %.3f us/tok", ms * 1e3 / tokens);
  return s;
}

/// The memcpy-floor baseline for `bytes`: its time and a label (no floor when the memory section did not
/// run).
void set_floor(const Ctx& c, Row& r, double bytes) {
  if (c.memcpy_gbs <= 0) {
    r.base = "memcpy floor (not measured)";
    r.base_ms = 0;
    r.base_rate = "-";
    return;
  }
  r.base = "memcpy floor, same bytes";
  r.base_ms = bytes / (c.memcpy_gbs * 1e9) * 1e3;
  r.base_rate = strf("%.0f GB/s", c.memcpy_gbs);
}

// ---- device -----------------------------------------------------------------------------------------------

void print_device(Ctx& c) {
  int dev = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  CHECK_CUDA(cudaGetDeviceProperties(&p, dev));
  int sm_khz = 0, mem_khz = 0, bus_bits = 0, driver = 0, runtime = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
  CHECK_CUDA(cudaDriverGetVersion(&driver));
  CHECK_CUDA(cudaRuntimeGetVersion(&runtime));
  c.peak_gbs = 2.0 * mem_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // double data rate
  std::printf("# bench_cuda\n\n");
  std::printf(
      "device: %s (sm_%d%d), %d SMs, SM clock %d MHz (max), memory clock %d MHz x %d bit = %.0f GB/s "
      "peak, %.1f GiB, L2 %d MiB; driver %d, runtime %d\n",
      p.name, p.major, p.minor, p.multiProcessorCount, sm_khz / 1000, mem_khz / 1000, bus_bits, c.peak_gbs,
      p.totalGlobalMem / double(1 << 30), p.l2CacheSize >> 20, driver, runtime);
  std::printf(
      "timing: CUDA events on the default stream, median of %d calls after %d warm-up (attention: %d "
      "after %d)\n",
      c.reps.reps, c.reps.warmup, c.heavy.reps, c.heavy.warmup);
  std::fflush(stdout);
}

// ---- 4. memory bandwidth ----------------------------------------------------------------------------------

void bench_memory(Ctx& c) {
  const int64_t bytes = int64_t(1) << 30;
  DevBuf<float> src = uniform_buf(bytes / 4, 1), dst(bytes / 4);
  const double ms = c.timer.median_ms(
      [&] { CHECK_CUDA(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, 0)); }, c.reps);
  c.memcpy_gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
  Row r{"memcpy D2D",
        "1 GiB",
        ms,
        strf("%.0f GB/s (read+write)", c.memcpy_gbs),
        "HBM peak from clocks",
        c.peak_gbs > 0 ? 2.0 * bytes / (c.peak_gbs * 1e9) * 1e3 : 0,
        strf("%.0f GB/s", c.peak_gbs),
        rel_str(bench::diff(dst.get(), src.get(), bytes / 4))};
  print_row(r);
}

// ---- 1. GEMM ----------------------------------------------------------------------------------------------

/// cublasLtMatmul for row-major C[M,N] = A[M,K] B[N,K]^T, i.e. column-major C^T[N,M] = op_T(B) op_N(A):
/// the operand order and transposes of cuda/gemm.cu's linear-layer call.
class LtGemm {
 public:
  LtGemm(cublasLtHandle_t h, int64_t M, int64_t N, int64_t K, cudaDataType_t ab, cudaDataType_t ct,
         cublasComputeType_t compute)
      : h_(h) {
    try {
      CHECK_CUDA(cudaMalloc(&ws_, kWorkspace));
      CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc_, compute, CUDA_R_32F));
      const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
      CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT));
      CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN));
      CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&a_, ab, K, N, K));  // B row-major [N,K]
      CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&b_, ab, K, M, K));  // A row-major [M,K]
      CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&c_, ct, N, M, N));  // C row-major [M,N]
      CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref_));
      const size_t ws = kWorkspace;
      CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref_, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                        sizeof ws));
      cublasLtMatmulHeuristicResult_t res[kMaxAlgos];
      int n = 0;
      CHECK_CUBLAS(cublasLtMatmulAlgoGetHeuristic(h_, desc_, a_, b_, c_, c_, pref_, kMaxAlgos, res, &n));
      if (n <= 0) fail("cublasLtMatmulAlgoGetHeuristic returned no algorithm", __FILE__, __LINE__);
      for (int i = 0; i < n; ++i)
        if (res[i].state == CUBLAS_STATUS_SUCCESS) algos_.push_back(res[i].algo);
    } catch (...) {
      release();
      throw;
    }
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  ~LtGemm() { release(); }

  /// Time every candidate algorithm (one failing to run is skipped); keep the fastest. Returns its time.
  double tune(Timer& t, const void* A, const void* B, void* C, Reps r) {
    double best_ms = 0;
    for (size_t i = 0; i < algos_.size(); ++i) {
      if (matmul(algos_[i], A, B, C) != CUBLAS_STATUS_SUCCESS) continue;
      const double ms = t.median_ms([&] { CHECK_CUBLAS(matmul(algos_[i], A, B, C)); }, r);
      if (best_ms == 0 || ms < best_ms) {
        best_ms = ms;
        best_ = static_cast<int>(i);
      }
    }
    if (best_ < 0) fail("cublasLtMatmul: no candidate algorithm ran", __FILE__, __LINE__);
    return best_ms;
  }
  void run(const void* A, const void* B, void* C) { CHECK_CUBLAS(matmul(algos_.at(best_), A, B, C)); }
  size_t candidates() const { return algos_.size(); }

 private:
  static constexpr size_t kWorkspace = size_t(32) << 20;  // what NVIDIA recommends for Hopper
  static constexpr int kMaxAlgos = 8;

  cublasStatus_t matmul(const cublasLtMatmulAlgo_t& algo, const void* A, const void* B, void* C) {
    const float alpha = 1.f, beta = 0.f;
    return cublasLtMatmul(h_, desc_, &alpha, B, a_, A, b_, &beta, C, c_, C, c_, &algo, ws_, kWorkspace, 0);
  }
  void release() noexcept {
    if (pref_) (void)cublasLtMatmulPreferenceDestroy(pref_);
    if (c_) (void)cublasLtMatrixLayoutDestroy(c_);
    if (b_) (void)cublasLtMatrixLayoutDestroy(b_);
    if (a_) (void)cublasLtMatrixLayoutDestroy(a_);
    if (desc_) (void)cublasLtMatmulDescDestroy(desc_);
    if (ws_) (void)cudaFree(ws_);
    pref_ = nullptr;
    a_ = b_ = c_ = nullptr;
    desc_ = nullptr;
    ws_ = nullptr;
  }

  cublasLtHandle_t h_;
  void* ws_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulPreference_t pref_ = nullptr;
  std::vector<cublasLtMatmulAlgo_t> algos_;
  int best_ = -1;
};

void bench_gemm(Ctx& c) {
  const char* tf32_env = std::getenv("TESSERA_ALLOW_TF32");
  const bool tf32 = tf32_env && std::strcmp(tf32_env, "1") == 0;  // what cuda/gemm.cu reads
  const cublasComputeType_t f32_compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  struct Shape {
    int64_t M, N, K;
    const char* note;
  };
  const Shape shapes[] = {{4096, 4096, 4096, ""}, {8192, 5632, 2048, " (Llama-1B FFN, x W^T)"}};
  for (const Shape& s : shapes) {
    const int64_t M = s.M, N = s.N, K = s.K;
    const double flops = 2.0 * M * N * K;
    const std::string shape =
        "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + s.note;
    DevBuf<float> A = uniform_buf(M * K, 11), B = uniform_buf(N * K, 12), C(M * N), Cref(M * N);

    guarded(c, "GEMM fp32 " + shape, [&] {  // our path vs cuBLASLt with the same compute type
      const double ms = c.timer.median_ms(
          [&] { ops::gemm(cuda{}, false, true, M, N, K, 1.f, A.get(), K, B.get(), K, 0.f, C.get(), N); },
          c.reps);
      LtGemm lt(c.lt, M, N, K, CUDA_R_32F, CUDA_R_32F, f32_compute);
      const double base_ms = lt.tune(c.timer, A.get(), B.get(), Cref.get(), c.reps);
      lt.run(A.get(), B.get(), Cref.get());
      print_row({std::string("GEMM fp32 ") + (tf32 ? "(TF32 compute)" : "(FP32 compute, no TF32)"), shape, ms,
                 tflops(flops, ms), "cuBLASLt best of " + std::to_string(lt.candidates()) + ", same compute",
                 base_ms, tflops(flops, base_ms), rel_str(bench::diff(C.get(), Cref.get(), M * N))});
    });
    guarded(c, "GEMM bf16 " + shape, [&] {  // bf16 in, bf16 out, fp32 accumulate
      DevBuf<uint16_t> Ab(M * K), Bb(N * K), Cb(M * N), Cbref(M * N);
      bench::to_bf16(Ab.get(), A.get(), M * K);
      bench::to_bf16(Bb.get(), B.get(), N * K);
      using tessera::bf16;
      const bf16* a = reinterpret_cast<const bf16*>(Ab.get());
      const bf16* b = reinterpret_cast<const bf16*>(Bb.get());
      bf16* cc = reinterpret_cast<bf16*>(Cb.get());
      const double ms = c.timer.median_ms(
          [&] { ops::gemm(cuda{}, false, true, M, N, K, 1.f, a, K, b, K, 0.f, cc, N); }, c.reps);
      LtGemm lt(c.lt, M, N, K, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F);
      const double base_ms = lt.tune(c.timer, Ab.get(), Bb.get(), Cbref.get(), c.reps);
      lt.run(Ab.get(), Bb.get(), Cbref.get());
      print_row({"GEMM bf16 in/out, fp32 acc", shape, ms, tflops(flops, ms),
                 "cuBLASLt best of " + std::to_string(lt.candidates()), base_ms, tflops(flops, base_ms),
                 rel_str(bench::diff_bf16(Cb.get(), Cbref.get(), M * N))});
    });
  }
}

// ---- decoding-size products ---------------------------------------------------------------------------------

/// One decoded token (M = 1) through frozen bf16 weights of the Llama-1B shape: the small products
/// (ops::linear_small_bf16 / swiglu_small_bf16, one launch each) against the route they replace, a cast of x
/// and one cuBLAS GEMM per weight (+ the SwiGLU kernel). Rate: weight bytes per second (the product is bound
/// by them); check: max difference of the two routes' outputs relative to their largest entry.
void bench_decode(Ctx& c) {
  using tessera::bf16;
  struct Case {
    const char* what;
    int64_t K;
    std::vector<int64_t> n;
    bool gated;
  };
  const Case cases[] = {{"q/k/v (3 weights, one input)", 2048, {2048, 2048, 2048}, false},
                        {"o_proj", 2048, {2048}, false},
                        {"SwiGLU gate+up+product", 2048, {5632, 5632}, true},
                        {"down_proj", 5632, {2048}, false}};
  for (const Case& k : cases) {
    const int64_t K = k.K;
    int64_t cols = 0;
    for (const int64_t n : k.n) cols += n;
    const std::string shape = "M=1 K=" + std::to_string(K) + " N=" + std::to_string(cols) + (k.gated ? " (2x" : "") +
                              (k.gated ? std::to_string(k.n[0]) + ")" : "");
    guarded(c, std::string("decode ") + k.what, [&] {
      DevBuf<float> x = uniform_buf(K, 31);
      std::vector<DevBuf<uint16_t>> w;
      std::vector<DevBuf<float>> y_small, y_ref;
      for (size_t g = 0; g < k.n.size(); ++g) {
        DevBuf<float> wf = uniform_buf(k.n[g] * K, 32 + g, -0.05f, 0.05f);
        w.emplace_back(k.n[g] * K);
        bench::to_bf16(w.back().get(), wf.get(), k.n[g] * K);
        y_small.emplace_back(k.n[g]);
        y_ref.emplace_back(k.n[g]);
      }
      auto wp = [&](size_t g) { return reinterpret_cast<const bf16*>(w[g].get()); };
      DevBuf<uint16_t> x16(K);
      const int64_t N0 = k.n[0];
      auto small = [&] {
        if (k.gated) return ops::swiglu_small_bf16(cuda{}, x.get(), 1, K, wp(0), wp(1), N0, y_small[0].get());
        std::vector<ops::SmallLinearOut> outs;
        for (size_t g = 0; g < k.n.size(); ++g) outs.push_back({wp(g), nullptr, y_small[g].get(), k.n[g]});
        ops::linear_small_bf16(cuda{}, x.get(), 1, K, outs.data(), static_cast<int>(outs.size()));
      };
      auto cast_gemm = [&] {
        bf16* xb = reinterpret_cast<bf16*>(x16.get());
        ops::cast(cuda{}, xb, x.get(), K);
        for (size_t g = 0; g < k.n.size(); ++g)
          ops::gemm(cuda{}, false, true, 1, k.n[g], K, 1.f, xb, K, wp(g), K, 0.f, y_ref[g].get(), k.n[g]);
        if (k.gated) ops::swiglu_forward(cuda{}, y_ref[0].get(), y_ref[0].get(), y_ref[1].get(), 1, N0);
      };
      // The previous route of the small products (x read from global memory in the inner loop) first, its
      // outputs kept for the check of the default (x staged in shared memory).
      const bool was_staged = tessera::cuda_detail::set_small_linear_staged(false);
      const double loop_ms = c.timer.median_ms(small, c.reps);
      small();
      std::vector<DevBuf<float>> y_loop;
      for (size_t g = 0; g < (k.gated ? 1 : k.n.size()); ++g) {
        y_loop.emplace_back(k.n[g]);
        CHECK_CUDA(cudaMemcpy(y_loop.back().get(), y_small[g].get(), sizeof(float) * k.n[g],
                              cudaMemcpyDeviceToDevice));
      }
      tessera::cuda_detail::set_small_linear_staged(was_staged);
      const double ms = c.timer.median_ms(small, c.reps), base_ms = c.timer.median_ms(cast_gemm, c.reps);
      small();
      cast_gemm();
      bench::DiffStat d;
      for (size_t g = 0; g < (k.gated ? 1 : k.n.size()); ++g) {
        const bench::DiffStat e = bench::diff(y_small[g].get(), y_ref[g].get(), k.n[g]);
        d.max_abs_diff = std::max(d.max_abs_diff, e.max_abs_diff);
        d.max_abs_ref = std::max(d.max_abs_ref, e.max_abs_ref);
      }
      const double bytes = 2.0 * cols * K;
      print_row({std::string("decode small product: ") + k.what, shape, ms, mem_rate(c, bytes, ms, 0),
                 "cast + cuBLAS GEMM per weight" + std::string(k.gated ? " + SwiGLU" : ""), base_ms,
                 mem_rate(c, bytes, base_ms, 0), rel_str(d)});
      bench::DiffStat dl;
      for (size_t g = 0; g < y_loop.size(); ++g) {
        const bench::DiffStat e = bench::diff(y_small[g].get(), y_loop[g].get(), k.n[g]);
        dl.max_abs_diff = std::max(dl.max_abs_diff, e.max_abs_diff);
        dl.max_abs_ref = std::max(dl.max_abs_ref, e.max_abs_ref);
      }
      print_row({std::string("decode small product: ") + k.what + ", x staged in shared memory", shape, ms,
                 mem_rate(c, bytes, ms, 0), "x read in the inner loop (previous route)", loop_ms,
                 mem_rate(c, bytes, loop_ms, 0), rel_str(dl)});
    });
  }
}

/// The row ops around every attention and MLP block, at the training shapes of Llama-1B (4 x 4096 tokens of
/// 2048) and of BLT-1B's stacks (4096 tokens of 2048, 1024, 768): RMSNorm forward (fp32 in, bf16 out, as
/// the bf16 blocks take it) and backward (dx with the residual's gradient added, dw), vectorised rows
/// against the row-wise kernels in the same run; RoPE on bf16 q and k in place. Rates: bytes moved once.
void bench_rows(Ctx& c) {
  using tessera::bf16;
  struct Shape {
    int64_t N, D;
    const char* what;
  };
  for (const Shape sh : {Shape{16384, 2048, "Llama-1B"}, Shape{4096, 2048, "BLT-1B global"},
                         Shape{4096, 1024, "BLT-1B local"}, Shape{4096, 768, "BLT-1B entropy model"}}) {
    const int64_t N = sh.N, D = sh.D, n = N * D;
    const std::string shape = std::string(sh.what) + ": " + std::to_string(N) + " x " + std::to_string(D);
    guarded(c, std::string("rmsnorm ") + sh.what, [&] {
      DevBuf<float> x = uniform_buf(n, 51, -2.f, 2.f), w = uniform_buf(D, 52, 0.5f, 1.5f);
      DevBuf<float> dy = uniform_buf(n, 53), res = uniform_buf(n, 54), rstd(N), dx(n), dx_ref(n), dw(D),
                    dw_ref(D);
      DevBuf<uint16_t> y(n), y_ref(n);
      auto fwd = [&](uint16_t* out) {
        ops::rmsnorm_forward(cuda{}, reinterpret_cast<bf16*>(out), rstd.get(), x.get(), w.get(), N, D, 1e-5);
      };
      auto bwd = [&](float* dxo, float* dwo) {
        ops::rmsnorm_backward(cuda{}, dxo, dwo, dy.get(), x.get(), w.get(), rstd.get(), N, D, res.get());
      };
      // The row-wise kernels first (baseline and reference), then the vectorised ones (the default).
      const bool was = tessera::cuda_detail::set_rmsnorm_vectorised(false);
      const double f_base = c.timer.median_ms([&] { fwd(y_ref.get()); }, c.reps);
      dw_ref.zero();
      bwd(dx_ref.get(), dw_ref.get());
      const double b_base = c.timer.median_ms([&] { bwd(dx_ref.get(), dw_ref.get()); }, c.reps);
      tessera::cuda_detail::set_rmsnorm_vectorised(true);
      const double f_ms = c.timer.median_ms([&] { fwd(y.get()); }, c.reps);
      dw.zero();
      bwd(dx.get(), dw.get());
      const bench::DiffStat e_dx = bench::diff(dx.get(), dx_ref.get(), n);
      const bench::DiffStat e_dw = bench::diff(dw.get(), dw_ref.get(), D);
      const double b_ms = c.timer.median_ms([&] { bwd(dx.get(), dw.get()); }, c.reps);
      tessera::cuda_detail::set_rmsnorm_vectorised(was);
      const double f_bytes = 6.0 * n, b_bytes = 16.0 * n;  // x in, bf16 y out; dy, x, res in, dx out
      print_row({"RMSNorm fwd, bf16 out (vectorised rows)", shape, f_ms, mem_rate(c, f_bytes, f_ms, 0),
                 "row-wise kernel", f_base, mem_rate(c, f_bytes, f_base, 0),
                 rel_str(bench::diff_bf16(y.get(), y_ref.get(), n))});
      print_row({"RMSNorm bwd: dx + residual, dw (one pass)", shape, b_ms, mem_rate(c, b_bytes, b_ms, 0),
                 "row-wise dx + tiled dw", b_base, mem_rate(c, b_bytes, b_base, 0),
                 "dx " + rel_str(e_dx) + ", dw " + rel_str(e_dw)});
    });
  }
  guarded(c, "rope", [&] {
    constexpr int64_t N = 16384, H = 16, Dh = 128, W = H * Dh;
    DevBuf<uint16_t> q(N * W), k(N * W);
    DevBuf<int64_t> pos(N);
    {
      const DevBuf<float> qf = uniform_buf(N * W, 55), kf = uniform_buf(N * W, 56);
      bench::to_bf16(q.get(), qf.get(), N * W);
      bench::to_bf16(k.get(), kf.get(), N * W);
    }
    ops::fill_positions(cuda{}, pos.get(), 4, 4096, 0);
    DevBuf<uint16_t> q2(N * W), k2(N * W);  // copies for the output check
    CHECK_CUDA(cudaMemcpy(q2.get(), q.get(), 2 * N * W, cudaMemcpyDeviceToDevice));
    CHECK_CUDA(cudaMemcpy(k2.get(), k.get(), 2 * N * W, cudaMemcpyDeviceToDevice));
    auto rope = [&](DevBuf<uint16_t>& a, DevBuf<uint16_t>& b) {
      ops::rope_qk(cuda{}, reinterpret_cast<bf16*>(a.get()), reinterpret_cast<bf16*>(b.get()),
                   reinterpret_cast<bf16*>(a.get()), reinterpret_cast<bf16*>(b.get()), pos.get(), N, H, H, Dh,
                   5e5, ops::RopeStyle::Half, false);
    };
    // The kernel with 16-byte accesses (the default) against the per-pair kernel, same inputs; then one call
    // of each on equal copies, compared.
    namespace cd = tessera::cuda_detail;
    const double ms = c.timer.median_ms([&] { rope(q, k); }, c.reps);
    const bool was = cd::set_rope_vectorised(false);
    const double base_ms = c.timer.median_ms([&] { rope(q2, k2); }, c.reps);
    CHECK_CUDA(cudaMemcpy(q2.get(), q.get(), 2 * N * W, cudaMemcpyDeviceToDevice));
    CHECK_CUDA(cudaMemcpy(k2.get(), k.get(), 2 * N * W, cudaMemcpyDeviceToDevice));
    rope(q2, k2);
    cd::set_rope_vectorised(was);
    rope(q, k);
    const bench::DiffStat dq = bench::diff_bf16(q.get(), q2.get(), N * W),
                          dk = bench::diff_bf16(k.get(), k2.get(), N * W);
    print_row({"RoPE q and k, bf16 in place (16-byte accesses)",
               "Llama-1B: 4 x 4096 tokens, 2 x 16 heads of 128", ms, mem_rate(c, 8.0 * N * W, ms, N),
               "per-pair kernel", base_ms, mem_rate(c, 8.0 * N * W, base_ms, N),
               "q " + rel_str(dq) + ", k " + rel_str(dk)});
  });
}

/// What else a decoded token costs per layer (BLT-1B global shape: 16 heads of 128, fp32 cache): the fused
/// RoPE + cache append against the two launches it replaces (rope_qk in place, append_kv), and the split-KV
/// decode attention over a 384-key cache (K and V bytes as its rate). Then the launch floors that bound a
/// decoding step of ~400 launches: one empty kernel between two events, the per-launch time of 256 empty
/// kernels back to back on the GPU, and the host's time to issue one launch.
void bench_decode_step(Ctx& c) {
  constexpr int64_t H = 16, Dh = 128, W = H * Dh, Tk = 384;
  guarded(c, "decode RoPE + cache append", [&] {
    DevBuf<float> q = uniform_buf(W, 41), k = uniform_buf(W, 42), v = uniform_buf(W, 43);
    DevBuf<float> kc(W), vc(W), q2(W), k2(W);
    DevBuf<int64_t> pos(1), seg(1);
    ops::fill_positions(cuda{}, pos.get(), 1, 1, 300);
    auto fused = [&] {
      ops::rope_qk_append(cuda{}, q.get(), k.get(), v.get(), pos.get(), 1, H, H, Dh, W, 5e5,
                          ops::RopeStyle::Half, kc.get(), vc.get(), seg.get());
    };
    auto two = [&] {
      ops::rope_qk(cuda{}, q2.get(), k2.get(), q2.get(), k2.get(), pos.get(), 1, H, H, Dh, 5e5,
                   ops::RopeStyle::Half, false);
      ops::append_kv(cuda{}, kc.get(), k2.get(), W, W, vc.get(), v.get(), W, W, seg.get(), nullptr, 1);
    };
    const double ms = c.timer.median_ms(fused, c.reps), base_ms = c.timer.median_ms(two, c.reps);
    print_row({"decode RoPE + KV-cache append (one launch)", "1 token, 2x16 heads of 128", ms, "-",
               "rope_qk + append_kv", base_ms, "-", "-"});
  });
  guarded(c, "decode attention", [&] {
    DevBuf<float> q = uniform_buf(W, 44), k = uniform_buf(Tk * W, 45), v = uniform_buf(Tk * W, 46), o(W);
    ops::AttnDims d;
    d.B = 1, d.Tq = 1, d.Tk = Tk, d.Hq = H, d.Hkv = H, d.Dh = Dh;
    d.q_stride = d.k_stride = d.v_stride = d.o_stride = W;
    d.q_offset = Tk - 1;
    d.scale = 1.0 / std::sqrt(static_cast<double>(Dh));
    const double ms = c.timer.median_ms(
        [&] {
          ops::attention_forward(cuda{}, d, ops::mask::Causal{}, q.get(), k.get(), v.get(), o.get(), nullptr);
        },
        c.reps);
    print_row({"decode attention, split-KV (fp32 cache)", "1 query, 16 heads of 128, 384 keys", ms,
               mem_rate(c, 2.0 * Tk * W * 4, ms, 0), "-", 0, "-", "-"});
  });
  guarded(c, "launch floor", [&] {
    constexpr int kChain = 256;
    const double one = c.timer.median_ms([] { bench::empty_launches(1); }, c.reps);
    const double chain = c.timer.median_ms([] { bench::empty_launches(kChain); }, c.reps) / kChain;
    std::vector<double> host;
    for (int i = 0; i < 9; ++i) {
      CHECK_CUDA(cudaDeviceSynchronize());
      const auto t0 = std::chrono::steady_clock::now();
      bench::empty_launches(kChain);
      host.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / kChain);
    }
    CHECK_CUDA(cudaDeviceSynchronize());
    std::sort(host.begin(), host.end());
    print_row({"launch: one empty kernel between two events", "1 block", one,
               strf("host issues one launch in %.2f us", 1e3 * host[host.size() / 2]),
               "per launch, 256 back to back", chain, "-", "-"});
  });
}

// ---- 2. attention -----------------------------------------------------------------------------------------

/// Row-major strided-batched C = alpha op(A) op(B) + beta C through cuBLAS (operands swapped, column-major).
void rm_gemm_batched(cublasHandle_t h, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb,
                     float beta, float* C, int64_t ldc, int64_t sc, int64_t batch) {
  CHECK_CUBLAS(cublasGemmStridedBatchedEx(
      h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N),
      static_cast<int>(M), static_cast<int>(K), &alpha, B, CUDA_R_32F, static_cast<int>(ldb), sb, A,
      CUDA_R_32F, static_cast<int>(lda), sa, &beta, C, CUDA_R_32F, static_cast<int>(ldc), sc,
      static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/// Allowed (query, key) pairs per head: causal T(T+1)/2; chunk-local the same within each chunk.
double attn_pairs(int64_t T, int64_t chunk) {
  if (chunk <= 0) return 0.5 * double(T) * double(T + 1);
  double p = 0;
  for (int64_t s = 0; s < T; s += chunk) {
    const double n = double(std::min(chunk, T - s));
    p += 0.5 * n * (n + 1);
  }
  return p;
}

/// The bf16 tensor-core attention (causal) at the dims of `d` on bf16 roundings of q, k, v, dout. Check: max
/// relative difference to the fp32 flash op run on the same rounded values (o; worst of dq, dk, dv); above
/// kTol (bf16 roundings of P, dS and the outputs: ~1e-2 at most; see tests/cuda/test_cuda_attention_bf16.cpp)
/// the rows are printed and the group throws. Baseline: the fp32 flash op's time from the causal rows.
void bench_attention_bf16(Ctx& c, const ops::AttnDims& d, const DevBuf<float>& q, const DevBuf<float>& k,
                          const DevBuf<float>& v, const DevBuf<float>& dout, double f32_fwd_ms,
                          double f32_bwd_ms) {
  constexpr double kTol = 3e-2;
  using tessera::bf16;
  namespace cd = tessera::cuda_detail;
  // The kernel rows time tessera's kernels (the default sends calls this long to cuDNN); cuDNN's rows below.
  struct TesseraKernels {
    TesseraKernels() { cd::set_attention_bf16_backend(cd::AttnBf16Backend::Tessera); }
    ~TesseraKernels() { cd::set_attention_bf16_backend(cd::AttnBf16Backend::Auto); }
  } const tessera_kernels;
  const int64_t n = q.size(), nl = d.B * d.Hq * d.Tq;
  const ops::mask::Causal m;
  auto bf = [](const DevBuf<uint16_t>& b) { return reinterpret_cast<bf16*>(b.get()); };
  DevBuf<uint16_t> qb(n), kb(n), vb(n), dob(n), ob(n), dqb(n), dkb(n), dvb(n);
  DevBuf<float> qr(n), kr(n), vr(n), dor(n), o_ref(n), dq_ref(n), dk_ref(n), dv_ref(n), lse_ref(nl), lse(nl),
      tmp(n);
  // bf16 copy b of src, and r: the fp32 values of b (what the bf16 kernel sees).
  auto round = [&](const DevBuf<float>& src, DevBuf<uint16_t>& b, DevBuf<float>& r) {
    bench::to_bf16(b.get(), src.get(), n);
    bench::from_bf16(r.get(), b.get(), n);
  };
  round(q, qb, qr);
  round(k, kb, kr);
  round(v, vb, vr);
  round(dout, dob, dor);
  ops::attention_forward(cuda{}, d, m, qr.get(), kr.get(), vr.get(), o_ref.get(), lse_ref.get());
  ops::attention_backward(cuda{}, d, m, qr.get(), kr.get(), vr.get(), o_ref.get(), lse_ref.get(), dor.get(),
                          dq_ref.get(), dk_ref.get(), dv_ref.get());

  // Both forward kernels (the WMMA one, then the mma.sync one), each checked; then the default choice once
  // more, whose o and lse the backward reads.
  using tessera::cuda_detail::AttnBf16Kernel;
  auto forward = [&] { ops::attention_forward(cuda{}, d, m, bf(qb), bf(kb), bf(vb), bf(ob), lse.get()); };
  auto rel = [&](const DevBuf<uint16_t>& ours, const DevBuf<float>& ref) {
    bench::from_bf16(tmp.get(), ours.get(), n);
    return bench::diff(tmp.get(), ref.get(), n).rel();
  };
  double ms_fk[2] = {0, 0}, err_fk[2] = {0, 0};
  const AttnBf16Kernel kernels[2] = {AttnBf16Kernel::Wmma, AttnBf16Kernel::Mma};
  try {
    for (int i = 0; i < 2; ++i) {
      tessera::cuda_detail::set_attention_bf16_kernel(kernels[i]);
      ms_fk[i] = c.timer.median_ms(forward, c.heavy);
      err_fk[i] = rel(ob, o_ref);
    }
  } catch (...) {
    tessera::cuda_detail::set_attention_bf16_kernel(AttnBf16Kernel::Auto);
    throw;
  }
  tessera::cuda_detail::set_attention_bf16_kernel(AttnBf16Kernel::Auto);
  forward();  // the default forward's o and lse, read by both backward kernels
  auto backward = [&] {
    ops::attention_backward(cuda{}, d, m, bf(qb), bf(kb), bf(vb), bf(ob), lse.get(), bf(dob), bf(dqb), bf(dkb),
                            bf(dvb));
  };
  // Backward: WMMA, mma.sync (default: dQ from the stored dS), mma.sync with dQ recomputed (the A/B of the
  // two dQ paths, AttnBf16Dq).
  using tessera::cuda_detail::AttnBf16Dq;
  double ms_bk[3] = {0, 0, 0}, err_bk[3] = {0, 0, 0};
  const AttnBf16Kernel bwd_kernels[3] = {AttnBf16Kernel::Wmma, AttnBf16Kernel::Mma, AttnBf16Kernel::Mma};
  const AttnBf16Dq bwd_dq[3] = {AttnBf16Dq::Auto, AttnBf16Dq::Auto, AttnBf16Dq::Recompute};
  AttnBf16Dq dq_taken = AttnBf16Dq::Auto;  // the path the default mma.sync backward took
  try {
    for (int i = 0; i < 3; ++i) {
      tessera::cuda_detail::set_attention_bf16_kernel(bwd_kernels[i]);
      tessera::cuda_detail::set_attention_bf16_dq(bwd_dq[i]);
      ms_bk[i] = c.timer.median_ms(backward, c.heavy);
      if (i == 1) dq_taken = tessera::cuda_detail::last_attention_bf16_dq();
      err_bk[i] = std::max({rel(dqb, dq_ref), rel(dkb, dk_ref), rel(dvb, dv_ref)});
    }
  } catch (...) {
    tessera::cuda_detail::set_attention_bf16_kernel(AttnBf16Kernel::Auto);
    tessera::cuda_detail::set_attention_bf16_dq(AttnBf16Dq::Auto);
    throw;
  }
  tessera::cuda_detail::set_attention_bf16_kernel(AttnBf16Kernel::Auto);
  tessera::cuda_detail::set_attention_bf16_dq(AttnBf16Dq::Auto);
  const double err_f = std::max(err_fk[0], err_fk[1]);
  const double err_b = std::max({err_bk[0], err_bk[1], err_bk[2]});

  const double fwd_flops = 4.0 * double(d.Dh) * attn_pairs(d.Tq, 0) * double(d.B * d.Hq),
               bwd_flops = 2.5 * fwd_flops;
  const std::string shape = "B=" + std::to_string(d.B) + " T=" + std::to_string(d.Tq) +
                            " H=" + std::to_string(d.Hq) + " Dh=" + std::to_string(d.Dh) + " causal";
  const std::string base = "tessera fp32 flash, same rounded inputs";
  print_row({"attention fwd bf16 (WMMA)", shape, ms_fk[0], tflops(fwd_flops, ms_fk[0]), base, f32_fwd_ms,
             f32_fwd_ms > 0 ? tflops(fwd_flops, f32_fwd_ms) : "-", strf("%.2e", err_fk[0])});
  print_row({"attention fwd bf16 (mma.sync)", shape, ms_fk[1], tflops(fwd_flops, ms_fk[1]),
             "tessera bf16 WMMA forward (row above)", ms_fk[0], tflops(fwd_flops, ms_fk[0]),
             strf("%.2e", err_fk[1])});
  print_row({"attention bwd bf16 (WMMA)", shape, ms_bk[0], tflops(bwd_flops, ms_bk[0]), base + " (bwd)",
             f32_bwd_ms, f32_bwd_ms > 0 ? tflops(bwd_flops, f32_bwd_ms) : "-", strf("%.2e", err_bk[0])});
  print_row({dq_taken == AttnBf16Dq::Stored ? "attention bwd bf16 (mma.sync, dQ from stored dS)"
                                            : "attention bwd bf16 (mma.sync, dQ recomputed: no room for dS)",
             shape, ms_bk[1], tflops(bwd_flops, ms_bk[1]), "tessera bf16 WMMA backward (row above)", ms_bk[0],
             tflops(bwd_flops, ms_bk[0]), strf("%.2e", err_bk[1])});
  print_row({"attention bwd bf16 (mma.sync, dQ recomputed)", shape, ms_bk[2], tflops(bwd_flops, ms_bk[2]),
             "tessera bf16 mma.sync backward (row above)", ms_bk[1], tflops(bwd_flops, ms_bk[1]),
             strf("%.2e", err_bk[2])});
  // cuDNN's fused attention on the same inputs (cuda/cudnn_attention.hpp), against the default kernels: the
  // A/B that decides which implementation the bf16 attention ops should default to.
  double err_cudnn = 0;
  {
    const std::string why = cd::cudnn_unavailable_reason();
    if (!why.empty()) {
      print_row({"attention bf16 (cuDNN)", shape, 0, "-", "not run: " + why, 0, "-", "-"});
    } else {
      const int64_t v = cd::cudnn_loaded_version();  // e.g. 91400 for 9.14.0
      const std::string ver = "cuDNN " + std::to_string(v / 10000) + "." + std::to_string(v % 10000 / 100) +
                              "." + std::to_string(v % 100);
      double ms_cf = 0, ms_cb = 0, err_cf = 0, err_cb = 0, ms_ca = 0, err_ca = 0;
      std::string refused;
      cd::set_attention_bf16_backend(cd::AttnBf16Backend::Cudnn);
      try {
        forward();
        if (cd::last_attention_bf16_backend() != cd::AttnBf16Backend::Cudnn)
          refused = cd::last_cudnn_attention_error();
        if (refused.empty()) {
          ms_cf = c.timer.median_ms(forward, c.heavy);
          err_cf = rel(ob, o_ref);
          backward();
          if (cd::last_attention_bf16_backend() != cd::AttnBf16Backend::Cudnn)
            refused = cd::last_cudnn_attention_error();
        }
        if (refused.empty()) {
          ms_cb = c.timer.median_ms(backward, c.heavy);
          err_cb = std::max({rel(dqb, dq_ref), rel(dkb, dk_ref), rel(dvb, dv_ref)});
          // The backward with cuDNN's fp32 dq accumulator (its frontend's default; not bitwise reproducible).
          cd::set_cudnn_attention_deterministic(0);
          backward();
          if (cd::last_attention_bf16_backend() == cd::AttnBf16Backend::Cudnn) {
            ms_ca = c.timer.median_ms(backward, c.heavy);
            err_ca = std::max({rel(dqb, dq_ref), rel(dkb, dk_ref), rel(dvb, dv_ref)});
          } else {
            std::string why = cd::last_cudnn_attention_error();
            std::replace(why.begin(), why.end(), '|', '/');
            print_row({"attention bwd bf16 (" + ver + ", dq accumulator)", shape, 0, "-", "refused: " + why,
                       0, "-", "-"});
          }
          cd::set_cudnn_attention_deterministic(-1);
        }
      } catch (...) {
        cd::set_attention_bf16_backend(cd::AttnBf16Backend::Auto);
        cd::set_cudnn_attention_deterministic(-1);
        throw;
      }
      cd::set_attention_bf16_backend(cd::AttnBf16Backend::Auto);
      if (!refused.empty()) {
        std::replace(refused.begin(), refused.end(), '|', '/');
        print_row({"attention bf16 (" + ver + ")", shape, 0, "-", "refused: " + refused, 0, "-", "-"});
      }
      if (ms_cf > 0)
        print_row({"attention fwd bf16 (" + ver + ")", shape, ms_cf, tflops(fwd_flops, ms_cf),
                   "tessera bf16 mma.sync forward", ms_fk[1], tflops(fwd_flops, ms_fk[1]),
                   strf("%.2e", err_cf)});
      if (ms_cb > 0)
        print_row({"attention bwd bf16 (" + ver + ")", shape, ms_cb, tflops(bwd_flops, ms_cb),
                   "tessera bf16 mma.sync backward (default)", ms_bk[1], tflops(bwd_flops, ms_bk[1]),
                   strf("%.2e", err_cb)});
      if (ms_ca > 0)
        print_row({"attention bwd bf16 (" + ver + ", dq accumulator)", shape, ms_ca, tflops(bwd_flops, ms_ca),
                   "cuDNN deterministic backward (row above)", ms_cb, tflops(bwd_flops, ms_cb),
                   strf("%.2e", err_ca)});
      err_cudnn = std::max({err_cf, err_cb, err_ca});
    }
  }
  if (!(err_f <= kTol && err_b <= kTol && err_cudnn <= kTol))  // NaN fails too
    throw std::runtime_error(strf("bf16 attention differs from fp32: cuDNN %.2e", err_cudnn) +
                             strf(", fwd WMMA %.2e", err_fk[0]) + strf(", fwd mma.sync %.2e", err_fk[1]) +
                             strf(", bwd WMMA %.2e", err_bk[0]) + strf(", bwd mma.sync %.2e", err_bk[1]) +
                             strf(", bwd recompute %.2e", err_bk[2]) + strf(" (tolerance %.0e)", kTol));
}

void bench_attention(Ctx& c) {
  const int64_t B = 4, T = 4096, H = 16, kChunk = 2048;
  for (const int64_t Dh : {int64_t(64), int64_t(128)}) {
    if (c.attn_dh != 0 && Dh != c.attn_dh) continue;
    guarded(c, "attention Dh=" + std::to_string(Dh), [&] {
      const int64_t n = B * T * H * Dh, ld = H * Dh, TT = T * T;
      DevBuf<float> q = uniform_buf(n, 21), k = uniform_buf(n, 22), v = uniform_buf(n, 23),
                    dout = uniform_buf(n, 24);
      DevBuf<float> o(n), dq(n), dk(n), dv(n), lse(B * H * T);
      DevBuf<float> ob(n), dqb(n), dkb(n), dvb(n), P(B * H * TT), dS(B * H * TT);
      ops::AttnDims d;
      d.B = B;
      d.Tq = d.Tk = T;
      d.Hq = d.Hkv = H;
      d.Dh = Dh;
      d.q_stride = d.k_stride = d.v_stride = d.o_stride = ld;
      d.scale = 1.0 / std::sqrt(double(Dh));
      const float scale = static_cast<float>(d.scale);

      // Baseline, per batch row b: the H heads of b are a strided batch (head stride Dh, row stride H*Dh).
      auto base_fwd = [&](int64_t chunk) {
        for (int64_t b = 0; b < B; ++b)
          rm_gemm_batched(c.blas, false, true, T, T, Dh, scale, q.get() + b * T * ld, ld, Dh,
                          k.get() + b * T * ld, ld, Dh, 0.f, P.get() + b * H * TT, T, TT, H);
        bench::masked_softmax_rows(P.get(), B * H * T, T, chunk);
        for (int64_t b = 0; b < B; ++b)
          rm_gemm_batched(c.blas, false, false, T, Dh, T, 1.f, P.get() + b * H * TT, T, TT,
                          v.get() + b * T * ld, ld, Dh, 0.f, ob.get() + b * T * ld, ld, Dh, H);
      };
      auto base_bwd = [&] {
        for (int64_t b = 0; b < B; ++b) {
          const int64_t off = b * T * ld;
          float* Pb = P.get() + b * H * TT;
          float* dSb = dS.get() + b * H * TT;
          rm_gemm_batched(c.blas, true, false, T, Dh, T, 1.f, Pb, T, TT, dout.get() + off, ld, Dh, 0.f,
                          dvb.get() + off, ld, Dh, H);  // dV = P^T dO
          rm_gemm_batched(c.blas, false, true, T, T, Dh, 1.f, dout.get() + off, ld, Dh, v.get() + off, ld, Dh,
                          0.f, dSb, T, TT, H);  // dP = dO V^T
        }
        bench::softmax_backward_rows(dS.get(), P.get(), B * H * T, T);
        for (int64_t b = 0; b < B; ++b) {
          const int64_t off = b * T * ld;
          const float* dSb = dS.get() + b * H * TT;
          rm_gemm_batched(c.blas, false, false, T, Dh, T, scale, dSb, T, TT, k.get() + off, ld, Dh, 0.f,
                          dqb.get() + off, ld, Dh, H);  // dQ = scale dS K
          rm_gemm_batched(c.blas, true, false, T, Dh, T, scale, dSb, T, TT, q.get() + off, ld, Dh, 0.f,
                          dkb.get() + off, ld, Dh, H);  // dK = scale dS^T Q
        }
      };

      double f32_fwd_ms = 0, f32_bwd_ms = 0;  // the fp32 flash op, causal: baseline of the bf16 rows
      for (const int64_t chunk : {int64_t(0), kChunk})
        guarded(c, "attention Dh=" + std::to_string(Dh) + (chunk ? " chunk" : " causal"), [&] {
          const std::string shape =
              "B=4 T=4096 H=16 Dh=" + std::to_string(Dh) +
              (chunk ? " ChunkLocal{" + std::to_string(chunk) + "}" : std::string(" causal"));
          const double fwd_flops = 4.0 * double(Dh) * attn_pairs(T, chunk) * double(B * H),
                       bwd_flops = 2.5 * fwd_flops;
          // Our op, timed through a generic lambda so both mask types share the code.
          double ms_f = 0, ms_b = 0;
          auto ours = [&](const auto& m) {
            ms_f = c.timer.median_ms(
                [&] { ops::attention_forward(cuda{}, d, m, q.get(), k.get(), v.get(), o.get(), lse.get()); },
                c.heavy);
            ms_b = c.timer.median_ms(
                [&] {
                  ops::attention_backward(cuda{}, d, m, q.get(), k.get(), v.get(), o.get(), lse.get(),
                                          dout.get(), dq.get(), dk.get(), dv.get());
                },
                c.heavy);
          };
          if (chunk)
            ours(ops::mask::ChunkLocal{chunk});
          else
            ours(ops::mask::Causal{});
          const double base_f = c.timer.median_ms([&] { base_fwd(chunk); }, c.heavy);
          const double base_b = c.timer.median_ms(base_bwd, c.heavy);  // P from the last forward, same mask
          const std::string check_f = rel_str(bench::diff(o.get(), ob.get(), n));
          const double worst_b =
              std::max({bench::diff(dq.get(), dqb.get(), n).rel(), bench::diff(dk.get(), dkb.get(), n).rel(),
                        bench::diff(dv.get(), dvb.get(), n).rel()});
          if (!chunk) {
            f32_fwd_ms = ms_f;
            f32_bwd_ms = ms_b;
          }
          const std::string base = "cuBLAS fp32 QK^T (TxT) + softmax + PV";
          print_row({"attention fwd fp32", shape, ms_f, tflops(fwd_flops, ms_f), base, base_f,
                     tflops(fwd_flops, base_f), check_f});
          print_row({"attention bwd fp32", shape, ms_b, tflops(bwd_flops, ms_b), base + " (bwd)", base_b,
                     tflops(bwd_flops, base_b), strf("%.2e", worst_b)});
        });
      guarded(c, "attention bf16 Dh=" + std::to_string(Dh),
              [&] { bench_attention_bf16(c, d, q, k, v, dout, f32_fwd_ms, f32_bwd_ms); });
    });
  }
}

// ---- BLT's byte <-> patch cross-attention -----------------------------------------------------------------

/// The BLT-1B local models' cross-attention (fp32, 16 heads of 64, k = 2 slots per patch) over 4096 bytes in
/// patches of 1..8 bytes (mean 4.5), decoder (bytes attend to their patch's slots) and encoder (slots attend
/// to their patch's bytes): the segment kernels the PatchSegments binding uses against the flash tile kernels
/// under the same id mask (launch_blt.hpp, window 0), which it used before.
void bench_blt_cross(Ctx& c) {
  const int64_t T = 4096, H = 16, Dh = 64, k_slots = 2;
  std::vector<int64_t> byte_seg(static_cast<size_t>(T));
  int64_t P = 0;
  for (int64_t t = 0, len = 0; t < T; ++P, len = (len + 1) % 8)
    for (int64_t e = 0; e <= len && t < T; ++e) byte_seg[static_cast<size_t>(t++)] = P;
  std::vector<int64_t> slot_seg(static_cast<size_t>(k_slots * P));
  for (int64_t j = 0; j < k_slots * P; ++j) slot_seg[static_cast<size_t>(j)] = j / k_slots;
  DevBuf<int64_t> bytes_d(byte_seg), slots_d(slot_seg);
  for (const bool decoder : {true, false}) {
    const std::string name = decoder ? "decoder" : "encoder";
    guarded(c, "BLT cross-attention " + name, [&] {
      ops::AttnDims d;
      d.B = 1;
      d.Tq = decoder ? T : k_slots * P;
      d.Tk = decoder ? k_slots * P : T;
      d.Hq = d.Hkv = H;
      d.Dh = Dh;
      d.q_stride = d.k_stride = d.v_stride = d.o_stride = H * Dh;
      d.scale = 1.0 / std::sqrt(double(Dh));
      const int64_t* q_id = decoder ? bytes_d.get() : slots_d.get();
      const int64_t* k_id = decoder ? slots_d.get() : bytes_d.get();
      const int64_t nq = d.Tq * H * Dh, nk = d.Tk * H * Dh;
      DevBuf<float> q = uniform_buf(nq, 41), k = uniform_buf(nk, 42), v = uniform_buf(nk, 43),
                    dout = uniform_buf(nq, 44);
      DevBuf<float> o(nq), lse(H * d.Tq), dq(nq), dk(nk), dv(nk);
      DevBuf<float> ob(nq), lseb(H * d.Tq), dqb(nq), dkb(nk), dvb(nk);
      const ops::mask::PatchSegments m(ops::mask::SegmentEqual{q_id, k_id, true});
      const tessera::cuda_detail::AttnArgs a = ops::attn_detail::to_attn_args(d, "bench_cuda");
      const double ms_f = c.timer.median_ms(
          [&] { ops::attention_forward(cuda{}, d, m, q.get(), k.get(), v.get(), o.get(), lse.get()); },
          c.reps);
      const double ms_b = c.timer.median_ms(
          [&] {
            ops::attention_backward(cuda{}, d, m, q.get(), k.get(), v.get(), o.get(), lse.get(), dout.get(),
                                    dq.get(), dk.get(), dv.get());
          },
          c.reps);
      const double base_f = c.timer.median_ms(
          [&] {
            tessera::cuda_detail::attention_forward_ids_nosync_f32(a, 0, q_id, k_id, true, q.get(), k.get(),
                                                                   v.get(), ob.get(), lseb.get());
          },
          c.reps);
      const double base_b = c.timer.median_ms(
          [&] {
            tessera::cuda_detail::attention_backward_ids_nosync_f32(a, 0, q_id, k_id, true, q.get(), k.get(),
                                                                    v.get(), ob.get(), lseb.get(), dout.get(),
                                                                    dqb.get(), dkb.get(), dvb.get());
          },
          c.reps);
      const double worst_b =
          std::max({bench::diff(dq.get(), dqb.get(), nq).rel(), bench::diff(dk.get(), dkb.get(), nk).rel(),
                    bench::diff(dv.get(), dvb.get(), nk).rel()});
      const std::string shape = name + ": " + std::to_string(d.Tq) + " queries, " + std::to_string(d.Tk) +
                                " keys, 16 heads of 64, " + std::to_string(P) + " patches";
      const std::string base = "flash tiles under the same id mask";
      print_row({"BLT cross-attention fwd fp32 (segments)", shape, ms_f, "-", base, base_f, "-",
                 rel_str(bench::diff(o.get(), ob.get(), nq))});
      print_row({"BLT cross-attention bwd fp32 (segments)", shape, ms_b, "-", base + " (bwd)", base_b, "-",
                 strf("%.2e", worst_b)});

      // The bf16 overloads (the all-bf16 cross-attention of a bf16 model): half the bytes, the same walks;
      // baseline the fp32 rows above, check against them (the bf16 outputs widened; the inputs differ by
      // their bf16 rounding, so the check is the bf16 contract's, ~1e-2, not 0).
      using tessera::bf16;
      DevBuf<uint16_t> q16(nq), k16(nk), v16(nk), dout16(nq), o16(nq), dq16(nq), dk16(nk), dv16(nk);
      bench::to_bf16(q16.get(), q.get(), nq);
      bench::to_bf16(k16.get(), k.get(), nk);
      bench::to_bf16(v16.get(), v.get(), nk);
      bench::to_bf16(dout16.get(), dout.get(), nq);
      auto b16 = [](DevBuf<uint16_t>& b) { return reinterpret_cast<bf16*>(b.get()); };
      DevBuf<float> lse16(H * d.Tq), wide_q(nq), wide_k(nk);
      const double ms_f16 = c.timer.median_ms(
          [&] { ops::attention_forward(cuda{}, d, m, b16(q16), b16(k16), b16(v16), b16(o16), lse16.get()); },
          c.reps);
      const double ms_b16 = c.timer.median_ms(
          [&] {
            ops::attention_backward(cuda{}, d, m, b16(q16), b16(k16), b16(v16), b16(o16), lse16.get(),
                                    b16(dout16), b16(dq16), b16(dk16), b16(dv16));
          },
          c.reps);
      bench::from_bf16(wide_q.get(), o16.get(), nq);
      const std::string o_err = rel_str(bench::diff(wide_q.get(), o.get(), nq));
      bench::from_bf16(wide_q.get(), dq16.get(), nq);
      double worst16 = bench::diff(wide_q.get(), dq.get(), nq).rel();
      bench::from_bf16(wide_k.get(), dk16.get(), nk);
      worst16 = std::max(worst16, bench::diff(wide_k.get(), dk.get(), nk).rel());
      bench::from_bf16(wide_k.get(), dv16.get(), nk);
      worst16 = std::max(worst16, bench::diff(wide_k.get(), dv.get(), nk).rel());
      print_row({"BLT cross-attention fwd bf16 (segments)", shape, ms_f16, "-", "fp32 segments, same run",
                 ms_f, "-", o_err});
      print_row({"BLT cross-attention bwd bf16 (segments)", shape, ms_b16, "-", "fp32 segments (bwd)", ms_b,
                 "-", strf("%.2e", worst16)});
    });
  }
}

// ---- 3. Megalodon: CEMA and TimestepNorm ------------------------------------------------------------------

std::vector<float> randn_host(int64_t n, tessera::Rng& rng, double scale, double mean = 0) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(mean + scale * rng.normal());
  return v;
}

void bench_cema(Ctx& c) {
  const int64_t B = 1, D = 4096, N = 16;
  tessera::Rng rng(31);
  // The official initialisation (as benchmarks/bench_cema.cpp): alpha, delta ~ N(0, 0.2^2),
  // sigmoid(theta_d) = D^{-(d+1)/D}, gamma ~ N(0, 1); omega ~ N(0, 0.25^2).
  std::vector<float> theta(D);
  for (int64_t i = 0; i < D; ++i) {
    const double f = std::exp(-(i + 1) * std::log(double(D)) / D);
    theta[i] = static_cast<float>(std::log(f / (1 - f)));
  }
  DevBuf<float> alpha(randn_host(D * N, rng, 0.2)), delta(randn_host(D * N, rng, 0.2)), th(theta),
      gamma(randn_host(D * N * 2, rng, 1.0)), omega(randn_host(D, rng, 0.25));
  DevBuf<float> ga(D * N), gd(D * N), gt(D), gg(D * N * 2), gw(D);
  for (DevBuf<float>* g : {&ga, &gd, &gt, &gg, &gw}) g->zero();
  const ops::CemaParams<float> prm{alpha.get(), delta.get(), th.get(), gamma.get(), omega.get()};
  const ops::CemaGrads<float> grads{ga.get(), gd.get(), gt.get(), gg.get(), gw.get()};

  for (const int64_t L : {int64_t(4096), int64_t(16384)})
    guarded(c, "CEMA L=" + std::to_string(L), [&] {
      const int64_t n = B * L * D;
      const ops::CemaDims dm{B, L, D, N};
      DevBuf<float> u = uniform_buf(n, 41), dy = uniform_buf(n, 42), y(n), du(n), yf(n);
      const std::string shape = "B=1 D=4096 N=16 L=" + std::to_string(L);
      const double tokens = double(B * L), fwd_bytes = 2.0 * 4 * n, bwd_bytes = 3.0 * 4 * n;

      auto fwd = [&] { ops::cema_forward(cuda{}, dm, prm, u.get(), nullptr, y.get(), nullptr); };
      const double ms_f = c.timer.median_ms(fwd, c.reps);
      const double ms_b = c.timer.median_ms(
          [&] {
            ops::cema_backward(cuda{}, dm, prm, u.get(), nullptr, dy.get(), nullptr, du.get(), nullptr,
                               grads);
          },
          c.reps);

      bench::CemaFft fft(L, D, N);
      const double fft_full = c.timer.median_ms(
          [&] {
            fft.kernel(alpha.get(), delta.get(), th.get(), gamma.get());
            fft.apply(u.get(), omega.get(), yf.get());
          },
          c.reps);
      const double fft_cached = c.timer.median_ms([&] { fft.apply(u.get(), omega.get(), yf.get()); }, c.reps);
      fwd();  // y from the scan next to yf from the FFT for the agreement check
      const std::string check = rel_str(bench::diff(yf.get(), y.get(), n));
      const std::string nfft = std::to_string(fft.fft_len());

      print_row({"CEMA fwd (scan)", shape, ms_f, mem_rate(c, fwd_bytes, ms_f, tokens),
                 "cuFFT conv n=" + nfft + ", incl. kernel k", fft_full,
                 mem_rate(c, fwd_bytes, fft_full, tokens), check});
      print_row({"CEMA fwd (scan)", shape, ms_f, mem_rate(c, fwd_bytes, ms_f, tokens),
                 "cuFFT conv n=" + nfft + ", k cached", fft_cached,
                 mem_rate(c, fwd_bytes, fft_cached, tokens), check});
      Row rb{"CEMA bwd (scan)", shape, ms_b, mem_rate(c, bwd_bytes, ms_b, tokens), "", 0, "", "-"};
      set_floor(c, rb, bwd_bytes);
      print_row(rb);
    });
}

void bench_tsn(Ctx& c) {
  const int64_t B = 1, L = 16384, D = 4096, G = 64;
  const int64_t n = B * L * D;
  const ops::TsnDims dm{B, L, D, G};
  DevBuf<float> x = uniform_buf(n, 51, -1.5f, 2.5f), dy = uniform_buf(n, 52), y(n), dx(n);
  DevBuf<float> w = uniform_buf(D, 53, -0.3f, 0.3f), bias = uniform_buf(D, 54, -0.3f, 0.3f), dw(D), db(D);
  DevBuf<float> mean(B * G), var(B * G), cm(B * L * G), cr(B * L * G);
  DevBuf<int64_t> count(B);
  dw.zero();
  db.zero();
  const std::string shape = "B=1 L=16384 D=4096 G=64";
  const double tokens = double(B * L), fwd_bytes = 2.0 * 4 * n, bwd_bytes = 3.0 * 4 * n;
  const double ms_f = c.timer.median_ms(
      [&] {
        ops::timestep_norm_forward(cuda{}, dm, x.get(), nullptr, nullptr, nullptr, w.get(), bias.get(), 1e-5,
                                   y.get(), count.get(), mean.get(), var.get(), cm.get(), cr.get());
      },
      c.reps);
  const double ms_b = c.timer.median_ms(
      [&] {
        ops::timestep_norm_backward(cuda{}, dm, dy.get(), nullptr, nullptr, x.get(), nullptr, nullptr,
                                    cm.get(), cr.get(), w.get(), dx.get(), nullptr, nullptr, dw.get(),
                                    db.get());
      },
      c.reps);
  Row rf{"TimestepNorm fwd", shape, ms_f, mem_rate(c, fwd_bytes, ms_f, tokens), "", 0, "", "-"};
  set_floor(c, rf, fwd_bytes);
  print_row(rf);
  Row rb{"TimestepNorm bwd", shape, ms_b, mem_rate(c, bwd_bytes, ms_b, tokens), "", 0, "", "-"};
  set_floor(c, rb, bwd_bytes);
  print_row(rb);
}

/// The AdamW step (fp32 p, g, m, v; the bf16 copy of p written too: 30 bytes per element) with loads ahead
/// (the default) against the plain grid-stride pass, on one 256 M-element tensor (half a BLT-1B hash table)
/// and on 48 tensors of 2048 x 2048 (a Llama-1B-like model's matrices). The check runs one step of each
/// route from the same state: p, m, v and the bf16 copy must be equal bit for bit.
void bench_adamw(Ctx& c) {
  namespace cd = tessera::cuda_detail;
  struct Case {
    int64_t tensors, n;
    const char* shape;
  };
  for (const Case cs :
       {Case{1, int64_t{256} << 20, "1 tensor of 256 M"}, Case{48, 2048 * 2048, "48 x 2048 x 2048"}}) {
    guarded(c, std::string("adamw ") + cs.shape, [&] {
      const int64_t total = cs.tensors * cs.n;
      const DevBuf<float> g = uniform_buf(total, 61, -1e-2f, 1e-2f);
      DevBuf<float> p = uniform_buf(total, 62), m = uniform_buf(total, 63, -1e-3f, 1e-3f),
                    v = uniform_buf(total, 64, 0.f, 1e-4f);
      DevBuf<uint16_t> pb(total);
      int64_t t = 1;
      auto step = [&](DevBuf<float>& pp, DevBuf<float>& mm, DevBuf<float>& vv, DevBuf<uint16_t>& bb) {
        for (int64_t k = 0; k < cs.tensors; ++k) {
          const int64_t o = k * cs.n;
          tessera::train::adamw_update(cuda{}, pp.get() + o, g.get() + o, mm.get() + o, vv.get() + o, cs.n,
                                       1e-4, 0.9, 0.95, 1e-8, 0.1, t,
                                       reinterpret_cast<tessera::bf16*>(bb.get() + o));
        }
      };
      const cd::AdamWRoute was = cd::set_adamw_route({});
      struct Restore {
        cd::AdamWRoute was;
        ~Restore() { cd::set_adamw_route(was); }
      } const restore{was};
      // One step of each route from the same state, compared; then the timed steps (t fixed: the state keeps
      // changing, the work does not).
      DevBuf<float> p2(total), m2(total), v2(total);
      DevBuf<uint16_t> pb2(total);
      CHECK_CUDA(cudaMemcpy(p2.get(), p.get(), 4 * total, cudaMemcpyDeviceToDevice));
      CHECK_CUDA(cudaMemcpy(m2.get(), m.get(), 4 * total, cudaMemcpyDeviceToDevice));
      CHECK_CUDA(cudaMemcpy(v2.get(), v.get(), 4 * total, cudaMemcpyDeviceToDevice));
      step(p, m, v, pb);
      cd::set_adamw_route({false, 0});
      step(p2, m2, v2, pb2);
      const bench::DiffStat dp = bench::diff(p.get(), p2.get(), total),
                            dm = bench::diff(m.get(), m2.get(), total),
                            dv = bench::diff(v.get(), v2.get(), total),
                            db = bench::diff_bf16(pb.get(), pb2.get(), total);
      const bool same =
          dp.max_abs_diff == 0 && dm.max_abs_diff == 0 && dv.max_abs_diff == 0 && db.max_abs_diff == 0;
      t = 2;
      const double base_ms = c.timer.median_ms([&] { step(p2, m2, v2, pb2); }, c.reps);
      cd::set_adamw_route({});
      const double ms = c.timer.median_ms([&] { step(p, m, v, pb); }, c.reps);
      const double bytes = 30.0 * double(total);
      print_row(
          {"AdamW step, loads ahead (fp32 state, bf16 copy)", cs.shape, ms, mem_rate(c, bytes, ms, 0),
           "grid-stride pass", base_ms, mem_rate(c, bytes, base_ms, 0),
           same ? "bits equal" : "DIFFER: p " + rel_str(dp) + ", m " + rel_str(dm) + ", v " + rel_str(dv)});
      if (!same) throw std::runtime_error("the two AdamW routes differ");
    });
  }
}

void print_notes(const Ctx& c) {
  std::printf("\nnotes:\n");
  std::printf("  time: median; t_base/t > 1: ours is faster (GEMM: our share of the cuBLAS peak).\n");
  std::printf("  check: max |ours - baseline| / max |baseline| on the outputs (CEMA: FFT vs scan).\n");
  std::printf("  GEMM: 2MNK FLOPs; C = A B^T row-major (the linear layer); cuBLASLt: the fastest of its\n");
  std::printf("    heuristic candidates (32 MiB workspace), timed here.\n");
  std::printf(
      "  attention: useful FLOPs on both sides (forward 4 Dh per allowed (query, key) pair, backward\n");
  std::printf("    2.5x); the baseline computes all T x T scores (cuBLAS fp32, no TF32) and keeps P.\n");
  std::printf(
      "  attention bf16: tensor cores, bf16 in/out, fp32 accumulation; baseline and check: the fp32 flash\n");
  std::printf("    op on the same bf16-rounded inputs (its causal time from the rows above). Two forward\n");
  std::printf("    kernels: WMMA and mma.sync (FA2 layout, the default; its baseline: the WMMA row).\n");
  std::printf("    The backward (WMMA) is timed after the default forward.\n");
  std::printf(
      "  CEMA, TimestepNorm: GB/s of the bytes the op must move (forward x in + y out, backward x, dy\n");
  std::printf("    in + dx out) and %% of the memcpy rate (%.0f GB/s); us/tok per token of D channels.\n",
              c.memcpy_gbs);
  std::fflush(stdout);
}

bool wanted(const std::string& only, const char* name) {
  if (only.empty()) return true;
  return ("," + only + ",").find(std::string(",") + name + ",") != std::string::npos;
}

}  // namespace

int main(int argc, char** argv) {
  std::string only;
  int reps = 0;
  int64_t attn_dh = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--only=", 0) == 0) {
      only = a.substr(7);
    } else if (a.rfind("--reps=", 0) == 0) {
      reps = std::atoi(a.c_str() + 7);
    } else if (a.rfind("--attn-dh=", 0) == 0) {
      attn_dh = std::atoll(a.c_str() + 10);
      if (attn_dh != 64 && attn_dh != 128) {
        std::fprintf(stderr, "bench_cuda: --attn-dh must be 64 or 128, got %s\n", a.c_str() + 10);
        return 2;
      }
    } else if (a.rfind("--benchmark_", 0) == 0) {
      // Google Benchmark flags (an older gpu-check passed one): not a Google Benchmark program, ignored.
    } else {
      std::fprintf(stderr,
                   "usage: bench_cuda [--only=mem,gemm,decode,rows,blt,attn,cema,tsn,adamw] [--reps=N] "
                   "[--attn-dh=64|128]\n");
      return 2;
    }
  }

  int ndev = 0;
  const cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev == 0) {
    std::printf("bench_cuda: no CUDA device (cudaGetDeviceCount: %s), skipping\n",
                e != cudaSuccess ? cudaGetErrorName(e) : "0 devices");
    return 0;
  }

  const auto t_start = std::chrono::steady_clock::now();
  int failures = 0;
  try {
    Ctx c;
    if (reps > 0) c.reps.reps = c.heavy.reps = reps;
    c.attn_dh = attn_dh;
    print_device(c);
    CHECK_CUBLAS(cublasCreate(&c.blas));
    CHECK_CUBLAS(cublasLtCreate(&c.lt));
    print_header();
    const struct {
      const char* name;
      void (*run)(Ctx&);
    } sections[] = {{"mem", bench_memory},
                    {"gemm", bench_gemm},
                    {"decode",
                     [](Ctx& c) {
                       bench_decode(c);
                       bench_decode_step(c);
                     }},
                    {"rows", bench_rows},
                    {"blt", bench_blt_cross},
                    {"attn", bench_attention},
                    {"cema", bench_cema},
                    {"tsn", bench_tsn},
                    {"adamw", bench_adamw}};
    for (const auto& s : sections) {
      if (wanted(only, s.name)) guarded(c, s.name, [&] { s.run(c); });
    }
    failures = c.failures;
    print_notes(c);
    (void)cublasLtDestroy(c.lt);
    (void)cublasDestroy(c.blas);
  } catch (const std::exception& ex) {
    std::printf("bench_cuda: FAILED: %s\n", ex.what());
    return 1;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::printf("\nbench_cuda: %s in %.0f s\n", failures ? "some rows FAILED" : "done", secs);
  return failures ? 1 : 0;
}
