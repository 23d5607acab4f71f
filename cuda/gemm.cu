// GEMM on the GPU through cuBLAS, with tessera's row-major semantics.
//
// cuBLAS is column-major. A row-major [R, C] matrix with row stride ld is, read column-major, its
// transpose [C, R] with leading dimension ld. So we ask cuBLAS for C^T = op(B)^T op(A)^T: operands
// swapped, each transpose flag kept, m = N, n = M. fp32 in, fp32 out, fp32 compute (CUBLAS_COMPUTE_32F,
// no TF32) so results match the CPU path to float rounding; TESSERA_ALLOW_TF32=1 in the environment
// opts into TF32 tensor cores.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

#include "check.hpp"
#include "core_util.cuh"
#include "launch.hpp"
#include "launch_core.hpp"
#include "tessera/core/allocator.hpp"

namespace tessera::cuda_detail {
namespace {

// One cuBLAS handle per (host thread, device): handles are cheap to keep and costly to create, and a
// handle must not be shared by threads that set its stream or workspace. Destroyed at thread exit.
struct Handles {
  std::vector<cublasHandle_t> per_device;
  ~Handles() {
    for (cublasHandle_t h : per_device)
      if (h) (void)cublasDestroy(h);
  }
};

cublasHandle_t handle() {
  thread_local Handles handles;
  int dev = 0;
  TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
  auto& v = handles.per_device;
  if (static_cast<size_t>(dev) >= v.size()) v.resize(dev + 1, nullptr);
  if (!v[dev]) TESSERA_CUBLAS_CHECK(cublasCreate(&v[dev]));
  return v[dev];
}

// C = beta * C over `batch` strided [M, N] matrices (row stride ldc), for K == 0 where there is no product.
// beta == 0 writes zeros, so NaN in C does not survive (BLAS semantics; cuBLAS is not asked to do this).
__global__ void scale_kernel(float* C, int64_t M, int64_t N, int64_t ldc, int64_t sc, int64_t batch,
                             float beta) {
  const int64_t total = batch * M * N;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = t / (M * N), i = t / N % M, j = t % N;
    float& c = C[b * sc + i * ldc + j];
    c = beta == 0.f ? 0.f : beta * c;
  }
}

/// The argument checks of every GEMM entry point, errors prefixed by `op`. False when there is nothing to
/// compute (M, N or batch is 0). Stored (row-major) widths: A is [M,K] or [K,M] when ta; B is [K,N] or [N,K]
/// when tb; the output C (named `out` in the messages) is [M,N].
bool check_gemm(const char* op, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t batch, int64_t lda,
                int64_t ldb, int64_t ldc, const void* A, const void* B, const void* C, char out = 'C') {
  TESSERA_CHECK(M >= 0 && N >= 0 && K >= 0 && batch >= 0, op, ": negative size M=", M, " N=", N, " K=", K,
                " batch=", batch);
  if (M == 0 || N == 0 || batch == 0) return false;
  const int64_t a_cols = ta ? M : K, b_cols = tb ? K : N;
  TESSERA_CHECK(lda >= a_cols, op, ": lda=", lda, " is smaller than A's row length ", a_cols);
  TESSERA_CHECK(ldb >= b_cols, op, ": ldb=", ldb, " is smaller than B's row length ", b_cols);
  TESSERA_CHECK(ldc >= N, op, ": ld", static_cast<char>(out - 'A' + 'a'), "=", ldc, " is smaller than ", out,
                "'s row length ", N);
  TESSERA_CHECK(C != nullptr && (K == 0 || (A != nullptr && B != nullptr)), op, ": null matrix pointer");
  return true;
}

cublasComputeType_t compute_type() {
  static const cublasComputeType_t t = [] {
    const char* e = std::getenv("TESSERA_ALLOW_TF32");
    return e && std::strcmp(e, "1") == 0 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  }();
  return t;
}

}  // namespace

void gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C, int64_t ldc,
              int64_t sc, int64_t batch) {
  if (!check_gemm("gemm(cuda)", ta, tb, M, N, K, batch, lda, ldb, ldc, A, B, C)) return;
  if (K == 0) {
    if (beta == 1.f) return;
    const int64_t total = batch * M * N;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 4096));
    scale_kernel<<<blocks, 256>>>(C, M, N, ldc, sc, batch, beta);
    TESSERA_CUDA_CHECK_LAUNCH("scale_kernel");
    return;
  }

  const cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasHandle_t h = handle();
  if (batch == 1) {
    TESSERA_CUBLAS_CHECK_AS(
        cublasGemmEx_64(h, op_b, op_a, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C,
                        CUDA_R_32F, ldc, compute_type(), CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx fp32");
  } else {
    TESSERA_CUBLAS_CHECK_AS(
        cublasGemmStridedBatchedEx_64(h, op_b, op_a, N, M, K, &alpha, B, CUDA_R_32F, ldb, sb, A, CUDA_R_32F,
                                      lda, sa, &beta, C, CUDA_R_32F, ldc, sc, batch, compute_type(),
                                      CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx fp32");
  }
}

// ---- bf16 inputs, fp32 accumulation ---------------------------------------------------------------
// Same operand swap as above; A and B are CUDA_R_16BF, C is CUDA_R_32F or CUDA_R_16BF, compute is always
// CUBLAS_COMPUTE_32F (fp32 accumulation; tensor cores take bf16 products exactly). TESSERA_ALLOW_TF32 does
// not apply: there is nothing to round to TF32.

namespace {

// C = beta * C for bf16 C when K == 0 (beta == 0 writes zeros), rounding back to bf16 as tessera::bf16 does.
__global__ void scale_bf16_kernel(uint16_t* C, int64_t M, int64_t N, int64_t ldc, int64_t sc, int64_t batch,
                                  float beta) {
  const int64_t total = batch * M * N;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = t / (M * N), i = t / N % M, j = t % N;
    uint16_t& c = C[b * sc + i * ldc + j];
    c = beta == 0.f ? uint16_t(0) : bf16_bits(beta * bf16_to_float(c));
  }
}

// ---- cuBLASLt: tuned algorithms and a separate C ----------------------------------------------------------
// cublasGemmEx takes cuBLAS's first heuristic choice. On large products the fastest of cuBLASLt's candidates
// (32 MiB workspace, NVIDIA's figure for Hopper) is a few per cent faster (bench_cuda's "cuBLASLt best of"
// rows), so a bf16 GEMM of at least kLtTunedMacs multiply-adds times the heuristic's top candidates once per
// shape (operand sizes, strides, types, alignments) on scratch output and keeps the fastest for every later
// call of that shape — per host thread and device, like the cuBLAS handle. The first call of a shape costs
// a few of its own run times. Each algorithm is deterministic (split-K reductions are restricted to the
// deterministic schemes), but the choice is made by timing, so two processes may pick different algorithms
// and differ in the last bits; TESSERA_GEMM_AUTOTUNE=0 keeps cublasGemmEx's single heuristic choice.
// cuBLASLt also writes D = alpha op(A) op(B) + beta C with C and D distinct (gemm_bf16_cd: a residual added
// in the GEMM's epilogue instead of a separate pass).

constexpr double kLtTunedMacs = 2147483648.0;  // 2^31: ~5 us of tensor-core time and up
std::atomic<double> g_tuned_min_macs{kLtTunedMacs};
constexpr size_t kLtWorkspace = size_t(32) << 20;
constexpr int kLtCandidates = 8;

bool lt_autotune_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("TESSERA_GEMM_AUTOTUNE");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

bool lt_tuned_size(int64_t M, int64_t N, int64_t K) {
  return lt_autotune_enabled() && double(M) * double(N) * double(K) >= g_tuned_min_macs.load();
}

size_t lt_elem_bytes(cudaDataType_t t) {
  return t == CUDA_R_16BF ? 2 : 4;
}

/// Largest power of two <= 16 dividing the address and the row pitch (bytes): the alignment cuBLASLt may
/// assume for every row of the matrix.
uint32_t lt_alignment(const void* p, int64_t ld, size_t elem) {
  const uint64_t bits = reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(ld) * elem | 16u;
  return static_cast<uint32_t>(bits & (~bits + 1));
}

struct LtCall {
  bool ta, tb;
  int64_t M, N, K;
  float alpha;
  const uint16_t* A;
  int64_t lda;
  const uint16_t* B;
  int64_t ldb;
  float beta;
  const void* C;
  int64_t ldc;
  void* D;
  int64_t ldd;
  cudaDataType_t type;  // of C and D
};

struct LtKey {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc, ldd;
  int type;
  uint32_t align_a, align_b, align_c, align_d;
  bool operator==(const LtKey&) const = default;
};
struct LtKeyHash {
  size_t operator()(const LtKey& k) const {
    size_t h = 1469598103934665603ull;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    for (int64_t v : {k.M, k.N, k.K, k.lda, k.ldb, k.ldc, k.ldd}) mix(static_cast<uint64_t>(v));
    mix(uint64_t(k.ta) | uint64_t(k.tb) << 1 | uint64_t(k.type) << 2);
    mix(uint64_t(k.align_a) | uint64_t(k.align_b) << 8 | uint64_t(k.align_c) << 16 |
        uint64_t(k.align_d) << 24);
    return h;
  }
};

/// A shape's descriptors and chosen algorithm (usable == false: cuBLASLt offered none; use cuBLAS).
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool usable = false;
  LtPlan() = default;
  LtPlan(const LtPlan&) = delete;
  LtPlan& operator=(const LtPlan&) = delete;
  ~LtPlan() {
    if (d) (void)cublasLtMatrixLayoutDestroy(d);
    if (c) (void)cublasLtMatrixLayoutDestroy(c);
    if (b) (void)cublasLtMatrixLayoutDestroy(b);
    if (a) (void)cublasLtMatrixLayoutDestroy(a);
    if (desc) (void)cublasLtMatmulDescDestroy(desc);
  }
};

/// One device's cuBLASLt handle, workspace and plans, for one host thread.
struct LtDevice {
  cublasLtHandle_t h = nullptr;
  void* workspace = nullptr;
  std::unordered_map<LtKey, std::unique_ptr<LtPlan>, LtKeyHash> plans;
  ~LtDevice() {
    plans.clear();
    if (workspace) (void)cudaFree(workspace);
    if (h) (void)cublasLtDestroy(h);
  }
};

LtDevice& lt_device() {
  thread_local std::vector<std::unique_ptr<LtDevice>> per_device;
  int dev = 0;
  TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
  if (static_cast<size_t>(dev) >= per_device.size()) per_device.resize(dev + 1);
  auto& slot = per_device[dev];
  if (!slot) {
    auto d = std::make_unique<LtDevice>();
    TESSERA_CUBLAS_CHECK(cublasLtCreate(&d->h));
    TESSERA_CUDA_CHECK(cudaMalloc(&d->workspace, kLtWorkspace));
    slot = std::move(d);
  }
  return *slot;
}

cublasStatus_t lt_run(LtDevice& dev, const LtPlan& p, const cublasLtMatmulAlgo_t& algo, const LtCall& c,
                      void* D) {
  // Operands swapped as in gemm_f32: cuBLASLt's A is our B, its B our A (column-major view of row-major
  // data).
  return cublasLtMatmul(dev.h, p.desc, &c.alpha, c.B, p.a, c.A, p.b, &c.beta, c.C, p.c, D, p.d, &algo,
                        dev.workspace, kLtWorkspace, 0);
}

/// Time each candidate (one untimed run, then the best of three) writing into `scratch` (M rows of ldd); the
/// fastest wins. An in-place call (C == D) is timed in place on a copy of C, as it will run.
int lt_pick(LtDevice& dev, const LtPlan& p, const cublasLtMatmulHeuristicResult_t* res, int n,
            const LtCall& call, void* scratch) {
  LtCall c = call;
  if (call.C == call.D) {
    const size_t elem = lt_elem_bytes(call.type);
    const size_t pitch = static_cast<size_t>(call.ldd) * elem;
    TESSERA_CUDA_CHECK(cudaMemcpy2DAsync(scratch, pitch, call.C, pitch, static_cast<size_t>(call.N) * elem,
                                         static_cast<size_t>(call.M), cudaMemcpyDeviceToDevice, 0));
    c.C = scratch;
  }
  c.D = scratch;
  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
    if (start) (void)cudaEventDestroy(start);
    (void)cudaGetLastError();
    return 0;
  }
  int best = -1;
  float best_ms = 0.f;
  for (int i = 0; i < n; ++i) {
    if (lt_run(dev, p, res[i].algo, c, scratch) != CUBLAS_STATUS_SUCCESS) continue;
    float ms = 0.f;
    for (int r = 0; r < 3; ++r) {
      float t = 0.f;
      TESSERA_CUDA_CHECK(cudaEventRecord(start, 0));
      (void)lt_run(dev, p, res[i].algo, c, scratch);
      TESSERA_CUDA_CHECK(cudaEventRecord(stop, 0));
      TESSERA_CUDA_CHECK(cudaEventSynchronize(stop));
      TESSERA_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
      ms = r == 0 ? t : std::min(ms, t);
    }
    if (best < 0 || ms < best_ms) {
      best = i;
      best_ms = ms;
    }
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  return best < 0 ? 0 : best;
}

std::unique_ptr<LtPlan> lt_plan(LtDevice& dev, const LtCall& c, const LtKey& key, bool tune) {
  auto p = std::make_unique<LtPlan>();
  const cublasOperation_t op_a = c.tb ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A: our B
  const cublasOperation_t op_b = c.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  TESSERA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  TESSERA_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  TESSERA_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  // Stored (column-major) shapes: our row-major B is [K,N] (or [N,K] when tb) -> column-major [N,K] ([K,N]).
  const int64_t b_rows = c.tb ? c.K : c.N, b_cols = c.tb ? c.N : c.K;
  const int64_t a_rows = c.ta ? c.M : c.K, a_cols = c.ta ? c.K : c.M;
  TESSERA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, b_rows, b_cols, c.ldb));
  TESSERA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, a_rows, a_cols, c.lda));
  TESSERA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, c.type, c.N, c.M, c.ldc));
  TESSERA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, c.type, c.N, c.M, c.ldd));

  cublasLtMatmulPreference_t pref = nullptr;
  TESSERA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kLtWorkspace;
  const uint32_t deterministic = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_INPLACE |
                                 CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                                 CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
  const uint32_t align[4] = {key.align_b, key.align_a, key.align_c, key.align_d};  // cuBLASLt's A, B, C, D
  cublasStatus_t st =
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                              &deterministic, sizeof deterministic);
  const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; ++i)
    st = cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &align[i], sizeof align[i]);
  cublasLtMatmulHeuristicResult_t res[kLtCandidates] = {};
  int n = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(dev.h, p->desc, p->a, p->b, p->c, p->d, pref,
                                        tune ? kLtCandidates : 1, res, &n);
  (void)cublasLtMatmulPreferenceDestroy(pref);
  // Keep the candidates the heuristic vouches for, in its order.
  int m = 0;
  for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < n; ++i)
    if (res[i].state == CUBLAS_STATUS_SUCCESS) res[m++] = res[i];
  if (m == 0) return p;  // not usable: the caller takes cuBLAS
  int pick = 0;
  if (tune && m > 1) {
    void* scratch = nullptr;
    const size_t elem = lt_elem_bytes(c.type);
    try {
      scratch = Allocator<cuda>::allocate(static_cast<size_t>(c.M) * static_cast<size_t>(c.ldd) * elem);
    } catch (const Error&) {
      scratch = nullptr;  // no room to time candidates: keep the heuristic's first
    }
    if (scratch) {
      pick = lt_pick(dev, *p, res, m, c, scratch);
      Allocator<cuda>::deallocate(scratch);
    }
  }
  p->algo = res[pick].algo;
  p->usable = true;
  return p;
}

/// D = alpha op(A) op(B) + beta C through cuBLASLt (C may equal D). False when cuBLASLt has no algorithm for
/// the case (the caller falls back to cuBLAS); errors throw.
bool lt_matmul(const LtCall& c) {
  LtDevice& dev = lt_device();
  const size_t elem = lt_elem_bytes(c.type);
  const LtKey key{c.ta,
                  c.tb,
                  c.M,
                  c.N,
                  c.K,
                  c.lda,
                  c.ldb,
                  c.ldc,
                  c.ldd,
                  static_cast<int>(c.type),
                  lt_alignment(c.A, c.lda, 2),
                  lt_alignment(c.B, c.ldb, 2),
                  lt_alignment(c.C, c.ldc, elem),
                  lt_alignment(c.D, c.ldd, elem)};
  auto it = dev.plans.find(key);
  if (it == dev.plans.end())
    it = dev.plans.emplace(key, lt_plan(dev, c, key, lt_tuned_size(c.M, c.N, c.K))).first;
  const LtPlan& p = *it->second;
  if (!p.usable) return false;
  const cublasStatus_t st = lt_run(dev, p, p.algo, c, c.D);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) return false;
  if (st != CUBLAS_STATUS_SUCCESS) throw_cublas(st, "cublasLtMatmul", __FILE__, __LINE__);
  profile_mark("cublasLtMatmul");
  return true;
}

}  // namespace

void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A, int64_t lda,
               int64_t sa, const uint16_t* B, int64_t ldb, int64_t sb, float beta, void* C, bool c_bf16,
               int64_t ldc, int64_t sc, int64_t batch) {
  if (!check_gemm("gemm(cuda, bf16)", ta, tb, M, N, K, batch, lda, ldb, ldc, A, B, C)) return;
  if (K == 0) {
    if (beta == 1.f) return;
    const int64_t total = batch * M * N;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 4096));
    if (c_bf16) {
      scale_bf16_kernel<<<blocks, 256>>>(static_cast<uint16_t*>(C), M, N, ldc, sc, batch, beta);
      TESSERA_CUDA_CHECK_LAUNCH("scale_bf16_kernel");
    } else {
      scale_kernel<<<blocks, 256>>>(static_cast<float*>(C), M, N, ldc, sc, batch, beta);
      TESSERA_CUDA_CHECK_LAUNCH("scale_kernel");
    }
    return;
  }
  const cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t c_type = c_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  if (batch == 1 && lt_tuned_size(M, N, K)) {
    const LtCall call{ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, C, ldc, c_type};
    if (lt_matmul(call)) return;
  }
  cublasHandle_t h = handle();
  if (batch == 1) {
    TESSERA_CUBLAS_CHECK_AS(
        cublasGemmEx_64(h, op_b, op_a, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C,
                        c_type, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx bf16");
  } else {
    TESSERA_CUBLAS_CHECK_AS(cublasGemmStridedBatchedEx_64(h, op_b, op_a, N, M, K, &alpha, B, CUDA_R_16BF, ldb,
                                                          sb, A, CUDA_R_16BF, lda, sa, &beta, C, c_type, ldc,
                                                          sc, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                            "cublasGemmStridedBatchedEx bf16");
  }
}

double set_gemm_tuned_min_macs(double macs) {
  return g_tuned_min_macs.exchange(macs);
}

void gemm_bf16_cd(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
                  int64_t lda, const uint16_t* B, int64_t ldb, float beta, const float* C, int64_t ldc,
                  float* D, int64_t ldd) {
  if (C == D) {
    TESSERA_CHECK(ldc == ldd, "gemm(cuda, bf16, C -> D): C and D are the same matrix with ldc=", ldc,
                  " and ldd=", ldd);
    return gemm_bf16(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, D, false, ldd, 0, 1);
  }
  constexpr const char* op = "gemm(cuda, bf16, C -> D)";
  // D's checks as C's in the other entries; C itself is read only when beta != 0.
  if (!check_gemm(op, ta, tb, M, N, K, 1, lda, ldb, ldd, A, B, D, 'D')) return;
  TESSERA_CHECK(beta == 0.f || (C != nullptr && ldc >= N), op, ": C is null or ldc=", ldc,
                " is smaller than its row length ", N);
  if (K > 0 && beta != 0.f) {
    const LtCall call{ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, D, ldd, CUDA_R_32F};
    if (lt_matmul(call)) return;
  }
  // No product, beta == 0, or no cuBLASLt algorithm: D = C, then D = alpha op(A) op(B) + beta D.
  if (beta != 0.f)
    TESSERA_CUDA_CHECK(cudaMemcpy2DAsync(D, static_cast<size_t>(ldd) * 4, C, static_cast<size_t>(ldc) * 4,
                                         static_cast<size_t>(N) * 4, static_cast<size_t>(M),
                                         cudaMemcpyDeviceToDevice, 0));
  gemm_bf16(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, D, false, ldd, 0, 1);
}

}  // namespace tessera::cuda_detail
