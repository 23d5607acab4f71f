// The `cuda` overloads declared in the public op headers, bound to the launchers of the .cu files
// (see launch.hpp for why this file exists). Compiled by the host compiler.
#include "launch.hpp"
#include "tessera/ops/matmul.hpp"
#include "tessera/ops/norm.hpp"
#include "tessera/ops/softmax.hpp"

namespace tessera::ops {

void gemm(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cuda_detail::gemm_f32(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

void gemm_batched(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C,
                  int64_t ldc, int64_t sc, int64_t batch) {
  cuda_detail::gemm_f32(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

void rmsnorm_forward(cuda, float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                     double eps) {
  cuda_detail::rmsnorm_forward_f32(y, rstd, x, w, N, D, eps);
}

void rmsnorm_backward(cuda, float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t D) {
  cuda_detail::rmsnorm_backward_f32(dx, dw, dy, x, w, rstd, N, D);
}

void softmax_forward(cuda, float* y, const float* x, int64_t N, int64_t D) {
  cuda_detail::softmax_forward_f32(y, x, N, D);
}

void softmax_backward(cuda, float* dx, const float* dy, const float* y, int64_t N, int64_t D) {
  cuda_detail::softmax_backward_f32(dx, dy, y, N, D);
}

}  // namespace tessera::ops
