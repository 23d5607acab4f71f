// Matrix products: general GEMM (transposes, strided batches) and the linear layer's forward/backward.
// Row-major throughout. CPU: Eigen (-> OpenBLAS when built with EIGEN_USE_BLAS). CUDA: cuBLAS (cuda/gemm.cu).
#pragma once
#include <cstdint>
#include <type_traits>

#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"
#include "tessera/ops/eigen.hpp"
#include "tessera/ops/streamed_product.hpp"

namespace tessera::ops {

/// C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T. A is [M,K] (or [K,M] when ta),
/// B is [K,N] (or [N,K] when tb); lda/ldb/ldc are row strides of the stored matrices.
template <class T>
void gemm(cpu, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  auto c = eig::mat(C, M, N, ldc);
  if (beta == T(0)) c.setZero();
  else if (beta != T(1)) c *= beta;
  if (M == 0 || N == 0 || K == 0) return;
  const auto a = eig::mat(A, ta ? K : M, ta ? M : K, lda);
  const auto b = eig::mat(B, tb ? N : K, tb ? K : N, ldb);
  if (!ta && !tb) c.noalias() += alpha * (a * b);
  else if (!ta && tb) c.noalias() += alpha * (a * b.transpose());
  else if (ta && !tb) c.noalias() += alpha * (a.transpose() * b);
  else c.noalias() += alpha * (a.transpose() * b.transpose());
}

/// `batch` independent GEMMs; matrix i starts at A + i*sa, B + i*sb, C + i*sc.
template <class T>
void gemm_batched(cpu, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                  int64_t lda, int64_t sa, const T* B, int64_t ldb, int64_t sb, T beta, T* C, int64_t ldc,
                  int64_t sc, int64_t batch) {
  for (int64_t i = 0; i < batch; ++i)
    gemm(cpu{}, ta, tb, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, beta, C + i * sc, ldc);
}

// CUDA (cuda/gemm.cu, cuBLAS). fp32 and bf16-in/fp32-accumulate variants. bf16 products of at least 2^31
// multiply-adds run the cuBLASLt algorithm that was fastest when first timed for their shape (per thread and
// device; deterministic per algorithm, but two processes may choose differently and differ in the last bits);
// TESSERA_GEMM_AUTOTUNE=0 keeps cuBLAS's heuristic choice.
void gemm(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm_batched(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C,
                  int64_t ldc, int64_t sc, int64_t batch);

namespace detail {
// The bf16 GEMMs (cuda/ops_core.cpp); call them as gemm(cuda{}, ...) below.
void gemm_bf16(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A, int64_t lda,
               const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm_bf16(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A, int64_t lda,
               const bf16* B, int64_t ldb, float beta, bf16* C, int64_t ldc);
}  // namespace detail

/// bf16 A and B, fp32 accumulation (CUBLAS_COMPUTE_32F), alpha/beta in fp32; C in fp32 or bf16 (rounded once).
/// A template (T = bf16, TC = float or bf16) only so that fp32 calls with literal nullptr operands (K == 0)
/// still pick the fp32 overload above instead of being ambiguous.
template <class T, class TC>
  requires std::is_same_v<T, bf16> && (std::is_same_v<TC, float> || std::is_same_v<TC, bf16>)
void gemm(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda,
          const std::type_identity_t<T>* B, int64_t ldb, float beta, TC* C, int64_t ldc) {
  detail::gemm_bf16(cuda{}, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/// D = alpha op(A) op(B) + beta C with bf16 A, B, fp32 accumulation and fp32 C, D [M, N] that may be distinct
/// (row strides ldc, ldd) or the same matrix (then ldc == ldd): e.g. a layer's output plus its residual input
/// in the GEMM's epilogue (cuBLASLt), one pass over the output instead of the GEMM's and an addition's.
void gemm_add(cuda, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
              int64_t lda, const bf16* B, int64_t ldb, float beta, const float* C, int64_t ldc, float* D,
              int64_t ldd);

/// Decoding-size products with bf16 weights (cuda/linear_small.cu): for 1 <= M <= kSmallLinearRows rows of
/// fp32 x [M, K], y_g = bf16(x) W_gᵀ (+ b_g) for 1..3 weights W_g [n_g, K] (bf16, 16-byte aligned) sharing x
/// — e.g. q/k/v of one input — in one launch: x is rounded to bf16 in registers (the operands of the cuBLAS
/// route, which casts x first), products and sums in fp32, y_g [M, n_g] fp32. For one decoded token the
/// product is a matrix-vector product bound by the weight bytes; this replaces a cast and one GEMM per
/// weight. small_linear_supported: whether x qualifies (M in range, K % 8 == 0, x 16-byte aligned). A
/// decoding step's neighbours fuse in: with `norm` set, x is first RMS-normalised row by row with that gain
/// [K] (16-byte aligned) and eps (rmsnorm_forward's formula, then the bf16 rounding); an output's `residual`
/// [M, n] (may alias y) is added `residual_adds` times, each add rounded as a separate add kernel's would be
/// (y = residual + product + bias; 2: BLT's patch cross-attention, 2·x + o).
inline constexpr int64_t kSmallLinearRows = 8;
struct SmallLinearOut {
  const bf16* w;
  const float* bias;  // [n] or null
  float* y;
  int64_t n;
  const float* residual = nullptr;
  int residual_adds = 1;
  /// y rounded to bf16 values (stored as fp32) after the bias and residual: the value a bf16 GEMM output
  /// (Linear::forward_to_bf16) would hold, for decoding paths that must match an all-bf16 forward.
  bool round_bf16 = false;
};
struct SmallLinearNorm {
  const float* weight = nullptr;  // null: no normalisation
  double eps = 0;
};
/// RoPE fused into the products (a cached attention step of one sequence): the first `outputs` outputs (q,
/// k) are rotated as rope_qk rotates them — rows are tokens at positions [M] (device), heads of head_dim,
/// `interleaved` pairs or halves.
struct SmallLinearRope {
  const int64_t* positions = nullptr;
  int64_t head_dim = 0;
  double theta = 0;
  bool interleaved = false;
  int outputs = 0;
};
/// Segment ids written with the products: dst[0, M) = src ? src[0, M) : 0 (device). With k and v written
/// straight into KV-cache rows (KvCache::append_rows), the launch is then the whole append.
struct SmallLinearSegments {
  const int64_t* src = nullptr;
  int64_t* dst = nullptr;
};
bool small_linear_supported(cuda, const float* x, int64_t M, int64_t K);
void linear_small_bf16(cuda, const float* x, int64_t M, int64_t K, const SmallLinearOut* outs, int n_outs,
                       SmallLinearNorm norm = {}, SmallLinearRope rope = {}, SmallLinearSegments seg = {});
/// SwiGLU's hidden activation for decoding-size inputs: y [M, N] = silu(bf16(x) W_gateᵀ) * (bf16(x) W_upᵀ),
/// the two products and the gate in one launch (same operands and norm as above).
void swiglu_small_bf16(cuda, const float* x, int64_t M, int64_t K, const bf16* w_gate, const bf16* w_up,
                       int64_t N, float* y, SmallLinearNorm norm = {});

/// y[i, :] += bias for n rows of width D (a linear layer's bias).
template <class T>
void add_row_bias(cpu, T* y, const T* bias, int64_t n, int64_t D) {
  eig::mat(y, n, D).rowwise() += eig::CMapVec<T>(bias, D).transpose();
}
/// dbias[d] += sum_i dy[i, d].
template <class T>
void row_bias_backward(cpu, T* dbias, const T* dy, int64_t n, int64_t D) {
  eig::MapVec<T>(dbias, D) += eig::mat(dy, n, D).colwise().sum().transpose();
}
// CUDA (cuda/megalodon_layers.cu): fp32, device pointers; the column sums are deterministic (no atomics).
void add_row_bias(cuda, float* y, const float* bias, int64_t n, int64_t D);
void row_bias_backward(cuda, float* dbias, const float* dy, int64_t n, int64_t D);

/// y[N,out] = x[N,in] * W[out,in]^T (+ b[out]). PyTorch weight layout. On the CPU in fp32, up to
/// kStreamedRows rows (decoding) take the streamed product (ops/streamed_product.hpp: the weights read once
/// for all rows, each output the same sum whatever the number of rows), more rows the GEMM.
template <class B, class T>
void linear_forward(B be, T* y, const T* x, const T* w, const T* b, int64_t N, int64_t in, int64_t out) {
  if constexpr (std::is_same_v<B, cpu> && std::is_same_v<T, float>) {
    if (N <= kStreamedRows) return streamed_linear_forward(x, w, b, y, N, in, out);
  }
  gemm(be, false, true, N, out, in, T(1), x, in, w, in, T(0), y, out);
  if (b) add_row_bias(be, y, b, N, out);
}

/// dx = dy W (overwritten, or added to dx when accumulate_dx; skipped when dx is null); dW += dy^T x;
/// db += sum_rows dy (when db).
template <class B, class T>
void linear_backward(B be, T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t in,
                     int64_t out, bool accumulate_dx = false) {
  if (dx) gemm(be, false, false, N, in, out, T(1), dy, out, w, in, T(accumulate_dx ? 1 : 0), dx, in);
  if (dw) gemm(be, true, false, out, in, N, T(1), dy, out, x, in, T(1), dw, in);
  if (db) row_bias_backward(be, db, dy, N, out);
}

}  // namespace tessera::ops
