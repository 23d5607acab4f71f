#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/matmul.hpp"

using namespace tessera;
using namespace tessera::testing;

namespace {

/// Naive C = alpha op(A) op(B) + beta C in double.
template <class T>
void naive_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, double beta, std::vector<double>& C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[k * lda + i] : A[i * lda + k];
        const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
      }
      C[i * ldc + j] = alpha * s + (beta == 0 ? 0.0 : beta * C[i * ldc + j]);
    }
}

}  // namespace

// All four transpose combinations, padded leading dimensions, alpha/beta, against a naive loop.
TEST(Gemm, TransposeCombosMatchNaive) {
  Rng rng(1);
  const int64_t M = 7, N = 5, K = 9, pad = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
      const int64_t lda = acols + pad, ldb = bcols + pad, ldc = N + pad;
      auto A = randn<float>(arows * lda, rng), B = randn<float>(brows * ldb, rng);
      auto C = randn<float>(M * ldc, rng);
      std::vector<double> ref(C.begin(), C.end());
      ops::gemm(cpu{}, ta, tb, M, N, K, 0.75f, A.data(), lda, B.data(), ldb, 0.5f, C.data(), ldc);
      naive_gemm(ta, tb, M, N, K, 0.75, A.data(), lda, B.data(), ldb, 0.5, ref, ldc);
      // fp32 dot products of length 9 with O(1) values: a few ulp of the partial sums.
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < ldc; ++j) {
          if (j < N) EXPECT_NEAR(C[i * ldc + j], ref[i * ldc + j], 1e-5) << "ta=" << ta << " tb=" << tb;
          else EXPECT_EQ(C[i * ldc + j], static_cast<float>(ref[i * ldc + j])) << "padding was written";
        }
    }
}

// beta = 0 must overwrite C, even when it holds NaN; K = 0 reduces to C = beta C.
TEST(Gemm, BetaZeroOverwritesAndEmptyK) {
  std::vector<float> A = {1, 2, 3, 4}, B = {5, 6, 7, 8};
  std::vector<float> C(4, std::numeric_limits<float>::quiet_NaN());
  ops::gemm(cpu{}, false, false, 2, 2, 2, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{19, 22, 43, 50}));
  ops::gemm(cpu{}, false, false, 2, 2, 0, 1.0f, A.data(), 2, B.data(), 2, 2.0f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{38, 44, 86, 100}));
}

// Integer-valued inputs small enough that every product and sum is exact in fp32: results must be bit-exact.
TEST(Gemm, ExactIntegerProducts) {
  const int64_t M = 6, N = 8, K = 33;
  std::vector<float> A(M * K), B(K * N);
  for (int64_t i = 0; i < M * K; ++i) A[i] = static_cast<float>((i * 7) % 11 - 5);
  for (int64_t i = 0; i < K * N; ++i) B[i] = static_cast<float>((i * 5) % 13 - 6);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      // Store op(A) / op(B) transposed when requested so the mathematical product is the same.
      std::vector<float> As(M * K), Bs(K * N);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t k = 0; k < K; ++k) As[ta ? k * M + i : i * K + k] = A[i * K + k];
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < N; ++j) Bs[tb ? j * K + k : k * N + j] = B[k * N + j];
      std::vector<float> C(M * N);
      ops::gemm(cpu{}, ta, tb, M, N, K, 1.0f, As.data(), ta ? M : K, Bs.data(), tb ? K : N, 0.0f, C.data(), N);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          int64_t s = 0;
          for (int64_t k = 0; k < K; ++k)
            s += static_cast<int64_t>(A[i * K + k]) * static_cast<int64_t>(B[k * N + j]);
          EXPECT_EQ(C[i * N + j], static_cast<float>(s)) << "ta=" << ta << " tb=" << tb;
        }
    }
}

// Strided batches with gaps between matrices; the gaps must stay untouched.
TEST(Gemm, StridedBatchesMatchNaive) {
  Rng rng(2);
  const int64_t M = 4, N = 3, K = 5, batch = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
      const int64_t sa = M * K + 2, sb = K * N + 5, sc = M * N + 4;
      auto A = randn<double>(sa * batch, rng), B = randn<double>(sb * batch, rng);
      auto C = randn<double>(sc * batch, rng);
      const auto C0 = C;
      ops::gemm_batched(cpu{}, ta, tb, M, N, K, 2.0, A.data(), lda, sa, B.data(), ldb, sb, 1.0, C.data(), ldc,
                        sc, batch);
      for (int64_t b = 0; b < batch; ++b) {
        std::vector<double> ref(C0.begin() + b * sc, C0.begin() + b * sc + M * N);
        naive_gemm(ta, tb, M, N, K, 2.0, A.data() + b * sa, lda, B.data() + b * sb, ldb, 1.0, ref, ldc);
        for (int64_t i = 0; i < M * N; ++i) EXPECT_NEAR(C[b * sc + i], ref[i], 1e-12);
        for (int64_t i = M * N; i < sc; ++i) EXPECT_EQ(C[b * sc + i], C0[b * sc + i]) << "gap was written";
      }
    }
}

// linear: y = x W^T + b against a naive loop; gradients by finite differences of L = <y, R> in double.
TEST(Linear, ForwardReferenceAndGradcheck) {
  Rng rng(3);
  const int64_t N = 4, in = 5, out = 3;
  auto x = randn(N * in, rng), w = randn(out * in, rng), b = randn(out, rng), R = randn(N * out, rng);
  std::vector<double> y(N * out);
  ops::linear_forward(cpu{}, y.data(), x.data(), w.data(), b.data(), N, in, out);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double s = b[o];
      for (int64_t i = 0; i < in; ++i) s += x[n * in + i] * w[o * in + i];
      EXPECT_NEAR(y[n * out + o], s, 1e-12);
    }

  auto loss = [&] {
    std::vector<double> yy(N * out);
    ops::linear_forward(cpu{}, yy.data(), x.data(), w.data(), b.data(), N, in, out);
    return dot(yy, R);
  };
  // Parameter gradients accumulate: start from 1 and subtract it afterwards.
  std::vector<double> dx(N * in, 7.0), dw(out * in, 1.0), db(out, 1.0);
  ops::linear_backward(cpu{}, dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, in, out);
  for (auto& v : dw) v -= 1.0;
  for (auto& v : db) v -= 1.0;
  expect_grad_close("linear dx", x.data(), dx.data(), N * in, loss);
  expect_grad_close("linear dw", w.data(), dw.data(), out * in, loss);
  expect_grad_close("linear db", b.data(), db.data(), out, loss);
}
