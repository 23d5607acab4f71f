// GEMM on the GPU through cuBLAS, with tessera's row-major semantics.
//
// cuBLAS is column-major. A row-major [R, C] matrix with row stride ld is, read column-major, its
// transpose [C, R] with leading dimension ld. So we ask cuBLAS for C^T = op(B)^T op(A)^T: operands
// swapped, each transpose flag kept, m = N, n = M. fp32 in, fp32 out, fp32 compute (CUBLAS_COMPUTE_32F,
// no TF32) so results match the CPU path to float rounding; TESSERA_ALLOW_TF32=1 in the environment
// opts into TF32 tensor cores.
#include <cublas_v2.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "check.hpp"
#include "core_util.cuh"
#include "launch.hpp"
#include "launch_core.hpp"

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
  TESSERA_CHECK(M >= 0 && N >= 0 && K >= 0 && batch >= 0, "gemm(cuda): negative size M=", M, " N=", N,
                " K=", K, " batch=", batch);
  if (M == 0 || N == 0 || batch == 0) return;
  // Stored (row-major) widths: A is [M,K] or [K,M] when ta; B is [K,N] or [N,K] when tb.
  const int64_t a_cols = ta ? M : K, b_cols = tb ? K : N;
  TESSERA_CHECK(lda >= a_cols, "gemm(cuda): lda=", lda, " is smaller than A's row length ", a_cols);
  TESSERA_CHECK(ldb >= b_cols, "gemm(cuda): ldb=", ldb, " is smaller than B's row length ", b_cols);
  TESSERA_CHECK(ldc >= N, "gemm(cuda): ldc=", ldc, " is smaller than C's row length ", N);
  TESSERA_CHECK(C != nullptr && (K == 0 || (A != nullptr && B != nullptr)),
                "gemm(cuda): null matrix pointer");
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
    TESSERA_CUBLAS_CHECK(cublasGemmEx_64(h, op_b, op_a, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F,
                                         lda, &beta, C, CUDA_R_32F, ldc, compute_type(),
                                         CUBLAS_GEMM_DEFAULT));
  } else {
    TESSERA_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(h, op_b, op_a, N, M, K, &alpha, B, CUDA_R_32F, ldb, sb,
                                                       A, CUDA_R_32F, lda, sa, &beta, C, CUDA_R_32F, ldc, sc,
                                                       batch, compute_type(), CUBLAS_GEMM_DEFAULT));
  }
}

// ---- bf16 inputs, fp32 accumulation ---------------------------------------------------------------
// Same operand swap as above; A and B are CUDA_R_16BF, C is CUDA_R_32F or CUDA_R_16BF, compute is always
// CUBLAS_COMPUTE_32F (fp32 accumulation; tensor cores take bf16 products exactly). TESSERA_ALLOW_TF32 does not
// apply: there is nothing to round to TF32.

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

}  // namespace

void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A, int64_t lda,
               int64_t sa, const uint16_t* B, int64_t ldb, int64_t sb, float beta, void* C, bool c_bf16,
               int64_t ldc, int64_t sc, int64_t batch) {
  TESSERA_CHECK(M >= 0 && N >= 0 && K >= 0 && batch >= 0, "gemm(cuda, bf16): negative size M=", M, " N=", N,
                " K=", K, " batch=", batch);
  if (M == 0 || N == 0 || batch == 0) return;
  const int64_t a_cols = ta ? M : K, b_cols = tb ? K : N;
  TESSERA_CHECK(lda >= a_cols, "gemm(cuda, bf16): lda=", lda, " is smaller than A's row length ", a_cols);
  TESSERA_CHECK(ldb >= b_cols, "gemm(cuda, bf16): ldb=", ldb, " is smaller than B's row length ", b_cols);
  TESSERA_CHECK(ldc >= N, "gemm(cuda, bf16): ldc=", ldc, " is smaller than C's row length ", N);
  TESSERA_CHECK(C != nullptr && (K == 0 || (A != nullptr && B != nullptr)),
                "gemm(cuda, bf16): null matrix pointer");
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
  cublasHandle_t h = handle();
  if (batch == 1) {
    TESSERA_CUBLAS_CHECK(cublasGemmEx_64(h, op_b, op_a, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda,
                                         &beta, C, c_type, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    TESSERA_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(h, op_b, op_a, N, M, K, &alpha, B, CUDA_R_16BF, ldb, sb, A,
                                                       CUDA_R_16BF, lda, sa, &beta, C, c_type, ldc, sc, batch,
                                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace tessera::cuda_detail
