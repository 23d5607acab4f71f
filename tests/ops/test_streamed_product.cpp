// The CPU's decoding-size products (ops/streamed_product.hpp) and bf16-weight products
// (ops::linear_forward_bf16_weight): against a double loop over the same (rounded) weights on every route
// (the streamed product for up to kStreamedRows rows, with its vector tails, odd column counts and row
// chunks; the widened-panel GEMM beyond, in several panels), and the streamed product's promise that a row's
// result does not depend on the batch around it or on the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/bf16_weight_product.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/matmul.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace tessera;
using namespace tessera::testing;

namespace {

struct Case {
  int64_t M, K, N;
  bool bias;
};

/// Checks one product (bf16 weights: linear_forward_bf16_weight; fp32: ops::linear_forward, which takes the
/// streamed product up to kStreamedRows rows): y within a few fp32 ulps of the double reference (relative to
/// sum |x w|); returns the largest error relative to that scale.
double check_product(const Case& c, Rng& rng, bool bf16_weights = true) {
  const auto x = randn<float>(c.M * c.K, rng);
  auto wf = randn<float>(c.N * c.K, rng, 0.1);
  std::vector<bf16> w(wf.size());
  ops::cast(cpu{}, w.data(), wf.data(), static_cast<int64_t>(wf.size()));
  if (bf16_weights) ops::cast(cpu{}, wf.data(), w.data(), static_cast<int64_t>(wf.size()));  // the reference
  const auto b = randn<float>(c.N, rng);
  std::vector<float> y(c.M * c.N, std::numeric_limits<float>::quiet_NaN());
  const float* bias = c.bias ? b.data() : nullptr;
  if (bf16_weights)
    ops::linear_forward_bf16_weight(cpu{}, y.data(), x.data(), w.data(), bias, c.M, c.K, c.N);
  else
    ops::linear_forward(cpu{}, y.data(), x.data(), wf.data(), bias, c.M, c.K, c.N);
  double worst = 0;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      double s = c.bias ? b[n] : 0.0, scale = c.bias ? std::abs(b[n]) : 0.0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = static_cast<double>(x[m * c.K + k]) * wf[n * c.K + k];
        s += p;
        scale += std::abs(p);
      }
      const double err = std::abs(y[m * c.N + n] - s) / std::max(scale, 1e-30);
      worst = std::max(worst, err);
      // fp32 sums of K terms: well under K * 2^-24 of sum |x w| (K = 400000 below: 2.4e-2 at worst; in
      // practice ~sqrt(K) ulps).
      EXPECT_LE(err, 1e-6 * std::max<double>(1.0, std::sqrt(static_cast<double>(c.K))))
          << (bf16_weights ? "bf16" : "fp32") << " M " << c.M << " K " << c.K << " N " << c.N << " at (" << m
          << ", " << n << ")";
    }
  return worst;
}

}  // namespace

TEST(StreamedProduct, TailsColumnBlocksAndRowChunks) {
  Rng rng(7);
  // K: below one vector, exactly one, 32 + tail, long; N: below a block, odd, a multiple of 8; M: 1 to the
  // streamed limit, every remainder of the row chunks.
  for (const bool b16 : {true, false})
    for (const int64_t M : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{6}, ops::kStreamedRows})
      for (const int64_t K : {1, 7, 16, 33, 100, 512})
        for (const int64_t N : {1, 5, 8, 13}) check_product({M, K, N, N % 2 == 1}, rng, b16);
  // Large enough to split columns over threads.
  for (const bool b16 : {true, false}) {
    check_product({1, 1100, 70, true}, rng, b16);
    check_product({5, 4096, 37, false}, rng, b16);
  }
}

TEST(StreamedProduct, ARowGivesTheSameBitsAloneInABatchAndOnAnyThreadCount) {
  Rng rng(9);
  const int64_t K = 1000, N = 75;  // a K tail, a column tail, enough weights for threads
  const auto x = randn<float>(ops::kStreamedRows * K, rng);
  const auto wf = randn<float>(N * K, rng, 0.1);
  std::vector<bf16> w(wf.size());
  ops::cast(cpu{}, w.data(), wf.data(), N * K);
  const auto b = randn<float>(N, rng);
  const auto run = [&](bool b16, int64_t M, const float* xs) {
    std::vector<float> y(M * N);
    if (b16)
      ops::streamed_linear_forward(xs, w.data(), b.data(), y.data(), M, K, N);
    else
      ops::streamed_linear_forward(xs, wf.data(), b.data(), y.data(), M, K, N);
    return y;
  };
  for (const bool b16 : {true, false})
    for (int64_t r = 0; r < ops::kStreamedRows; ++r) {
      const std::vector<float> alone = run(b16, 1, x.data() + r * K);
      for (const int64_t M : {r + 1, ops::kStreamedRows}) {  // row r last in the batch, and inside a full one
        const std::vector<float> batch = run(b16, M, x.data());
        for (int64_t n = 0; n < N; ++n)
          ASSERT_EQ(batch[r * N + n], alone[n]) << (b16 ? "bf16" : "fp32") << " row " << r << " of " << M;
      }
    }
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<float> one = run(true, 7, x.data());
  omp_set_num_threads(2);
  const std::vector<float> two = run(true, 7, x.data());
  omp_set_num_threads(threads);
  EXPECT_EQ(one, two);
#endif
}

TEST(StreamedProduct, Bf16WidenedPanelRoute) {
  Rng rng(8);
  check_product({ops::kStreamedRows + 1, 33, 9, true}, rng);
  check_product({64, 256, 300, false}, rng);
  // A weight larger than one panel: K 400000 leaves room for 2 of the 3 rows, so two panels.
  ASSERT_LT(ops::kBf16WeightPanelFloats / 400000, 3);
  check_product({17, 400000, 3, true}, rng);
}

TEST(StreamedProduct, ExactOnRepresentableValues) {
  // Small integers times bf16-exact weights: every product and partial sum is exact in fp32, so both routes
  // give the exact integer results (this fails if a weight is widened wrongly, e.g. by a byte).
  for (const int64_t M : {int64_t{1}, int64_t{20}}) {
    const int64_t K = 37, N = 6;
    std::vector<float> x(M * K), y(M * N);
    std::vector<bf16> w(N * K);
    for (int64_t i = 0; i < M * K; ++i) x[i] = static_cast<float>(i % 7 - 3);
    for (int64_t i = 0; i < N * K; ++i) w[i] = bf16(static_cast<float>(i % 5) * 0.5f - 1.0f);
    ops::linear_forward_bf16_weight(cpu{}, y.data(), x.data(), w.data(), nullptr, M, K, N);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * static_cast<float>(w[n * K + k]);
        EXPECT_EQ(y[m * N + n], static_cast<float>(s)) << "M " << M << " at (" << m << ", " << n << ")";
      }
  }
}

TEST(StreamedProduct, EmptyAndBadSizes) {
  std::vector<float> y(4, 7.0f), x(4, 1.0f);
  std::vector<bf16> w(4, bf16(1.0f));
  ops::linear_forward_bf16_weight(cpu{}, y.data(), x.data(), w.data(), nullptr, 0, 2, 2);  // no rows
  EXPECT_EQ(y[0], 7.0f);
  ops::linear_forward_bf16_weight(cpu{}, y.data(), x.data(), w.data(), nullptr, 2, 0, 2);  // K = 0: zeros
  EXPECT_EQ(y, (std::vector<float>{0, 0, 0, 0}));
  expect_error(
      [&] { ops::linear_forward_bf16_weight(cpu{}, y.data(), x.data(), w.data(), nullptr, -1, 2, 2); },
      {"linear_forward_bf16_weight", "negative size"});
}
