// Internal to tessera::cuda: the host-side entry points of the .cu files, in plain C++ (no CUDA types).
//
// How the backend is put together: each .cu file holds kernels and a launcher declared here; ops.cpp,
// compiled by the host compiler, includes the public op headers (tessera/ops/*.hpp) and defines their
// `cuda` overloads as calls to these launchers. So nvcc never parses Eigen or whatever else the public
// headers include, and a signature that drifts from its public declaration fails to compile in ops.cpp.
// All work is queued on the legacy default stream. Pointers are device pointers.
#pragma once
#include <cstdint>

namespace tessera::cuda_detail {

// gemm.cu (cuBLAS). Row-major C[M,N] = alpha op(A) op(B) + beta C, as tessera::ops::gemm.
void gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C, int64_t ldc,
              int64_t sc, int64_t batch);
/// bf16 A, B; fp32 C (read) and D (written), distinct or the same: D = alpha op(A) op(B) + beta C.
void gemm_bf16_cd(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
                  int64_t lda, const uint16_t* B, int64_t ldb, float beta, const float* C, int64_t ldc,
                  float* D, int64_t ldd);

/// The bf16 GEMMs of at least this many multiply-adds (default 2^31) take a cuBLASLt algorithm chosen by
/// timing (gemm.cu); returns the previous bound. For tests, which reach the tuned path with small products.
double set_gemm_tuned_min_macs(double macs);

// norm.cu
void rmsnorm_forward_f32(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                         double eps);
/// The same with y in bf16 (each fp32 value rounded once to nearest even).
void rmsnorm_forward_bf16out(uint16_t* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                             double eps);
/// Whether rows that fit them (D a multiple of 4, at most 8192, 16-byte aligned pointers) take the
/// vectorised kernels (the default) or the row-wise ones every D takes; returns the previous setting. For
/// tests and benchmarks, which compare the two.
bool set_rmsnorm_vectorised(bool on);
/// residual (nullable): added to dx in the same pass.
void rmsnorm_backward_f32(float* dx, float* dw, const float* dy, const float* x, const float* w,
                          const float* rstd, int64_t N, int64_t D, const float* residual);

// softmax.cu
void softmax_forward_f32(float* y, const float* x, int64_t N, int64_t D);
void softmax_backward_f32(float* dx, const float* dy, const float* y, int64_t N, int64_t D);

}  // namespace tessera::cuda_detail
