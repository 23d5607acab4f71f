#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/loss.hpp"
#include "tessera/ops/softmax.hpp"

using namespace tessera;
using namespace tessera::testing;

// ---- softmax --------------------------------------------------------------------------------------

TEST(Softmax, StableForLargeLogits) {
  const std::vector<float> x = {1000.f, 1001.f, -1000.f, -1000.f};
  std::vector<float> y(4);
  ops::softmax_forward(cpu{}, y.data(), x.data(), 2, 2);
  const double e = std::exp(1.0);
  EXPECT_NEAR(y[0], 1 / (1 + e), 1e-7);
  EXPECT_NEAR(y[1], e / (1 + e), 1e-7);
  EXPECT_FLOAT_EQ(y[2], 0.5f);
  EXPECT_FLOAT_EQ(y[3], 0.5f);
}

TEST(Softmax, Gradcheck) {
  Rng rng(51);
  const int64_t N = 3, D = 5;
  auto x = randn(N * D, rng, 2.0), R = randn(N * D, rng);
  auto loss = [&] {
    std::vector<double> y(N * D);
    ops::softmax_forward(cpu{}, y.data(), x.data(), N, D);
    return dot(y, R);
  };
  std::vector<double> y(N * D);
  ops::softmax_forward(cpu{}, y.data(), x.data(), N, D);
  auto dx = R;  // in place: dx aliases dy
  ops::softmax_backward(cpu{}, dx.data(), dx.data(), y.data(), N, D);
  expect_grad_close("softmax dx", x.data(), dx.data(), N * D, loss);
}

TEST(Softmax, LargeFloatMatchesNaive) {
  Rng rng(52);
  const int64_t N = 40, D = 1000;
  auto x = randn<float>(N * D, rng, 4.0);
  std::vector<float> y(N * D);
  ops::softmax_forward(cpu{}, y.data(), x.data(), N, D);
  double err = 0;
  for (int64_t n = 0; n < N; ++n) {
    double m = -INFINITY, s = 0;
    for (int64_t d = 0; d < D; ++d) m = std::max(m, double(x[n * D + d]));
    for (int64_t d = 0; d < D; ++d) s += std::exp(x[n * D + d] - m);
    for (int64_t d = 0; d < D; ++d) {
      const double ref = std::exp(x[n * D + d] - m) / s;
      err = std::max(err, std::abs(y[n * D + d] - ref) / ref);
    }
  }
  EXPECT_LT(err, 1e-5);  // relative: fp32 exp plus a length-1000 fp32 sum
}

// ---- cross-entropy --------------------------------------------------------------------------------

TEST(CrossEntropy, TwoClassByHand) {
  // logits (0, ln 3): p = (1/4, 3/4). Target 1: -ln(3/4); target 0: ln 4.
  const std::vector<double> logits = {0, std::log(3.0), 0, std::log(3.0)};
  const std::vector<int64_t> targets = {1, 0};
  std::vector<double> losses(2);
  const double mean = ops::cross_entropy_forward(cpu{}, losses.data(), logits.data(), targets.data(), 2, 2);
  EXPECT_NEAR(losses[0], -std::log(0.75), 1e-15);
  EXPECT_NEAR(losses[1], std::log(4.0), 1e-15);
  EXPECT_NEAR(mean, (std::log(4.0) - std::log(0.75)) / 2, 1e-15);
  std::vector<double> d(4);
  ops::cross_entropy_backward(cpu{}, d.data(), logits.data(), targets.data(), 2, 2, 1.0);
  // (p - onehot) / 2
  EXPECT_NEAR(d[0], 0.125, 1e-15);
  EXPECT_NEAR(d[1], -0.125, 1e-15);
  EXPECT_NEAR(d[2], -0.375, 1e-15);
  EXPECT_NEAR(d[3], 0.375, 1e-15);
}

TEST(CrossEntropy, IgnoreIndex) {
  const std::vector<float> logits = {0, 0, 5, -5, 1, 2};
  const std::vector<int64_t> targets = {1, -100, 0};
  std::vector<float> losses(3, 9.f), d(6, 9.f);
  const double mean = ops::cross_entropy_forward(cpu{}, losses.data(), logits.data(), targets.data(), 3, 2);
  const double l0 = std::log(2.0), l2 = std::log(1 + std::exp(1.0));
  EXPECT_NEAR(losses[0], l0, 1e-6);
  EXPECT_EQ(losses[1], 0.f);
  EXPECT_NEAR(losses[2], l2, 1e-6);
  EXPECT_NEAR(mean, (l0 + l2) / 2, 1e-6);  // mean over the two counted rows
  ops::cross_entropy_backward(cpu{}, d.data(), logits.data(), targets.data(), 3, 2, 1.0);
  EXPECT_EQ(d[2], 0.f);
  EXPECT_EQ(d[3], 0.f);
  EXPECT_NEAR(d[0], 0.25, 1e-7);

  // A custom ignore_index inside the vocabulary; and every row ignored gives 0 loss and zero gradient.
  const std::vector<int64_t> t0 = {0, 0, 1};
  EXPECT_NEAR(ops::cross_entropy_forward<float>(cpu{}, nullptr, logits.data(), t0.data(), 3, 2, 0),
              std::log(1 + std::exp(-1.0)), 1e-6);
  const std::vector<int64_t> none = {-100, -100, -100};
  EXPECT_EQ(ops::cross_entropy_forward(cpu{}, nullptr, logits.data(), none.data(), 3, 2), 0.0);
  ops::cross_entropy_backward(cpu{}, d.data(), logits.data(), none.data(), 3, 2, 1.0);
  EXPECT_EQ(d, std::vector<float>(6, 0.f));
}

TEST(CrossEntropy, BadTargetNamesRow) {
  const std::vector<float> logits(6);
  const std::vector<int64_t> targets = {1, 2, 0};
  std::vector<float> d(6);
  expect_error([&] { ops::cross_entropy_forward(cpu{}, nullptr, logits.data(), targets.data(), 3, 2); },
               {"cross_entropy_forward", "target 2", "row 1", "[0, 2)"});
  const std::vector<int64_t> neg = {-1, 0, 0};
  expect_error([&] { ops::cross_entropy_backward(cpu{}, d.data(), logits.data(), neg.data(), 3, 2, 1.0); },
               {"cross_entropy_backward", "target -1", "row 0"});
}

TEST(CrossEntropy, Gradcheck) {
  Rng rng(53);
  const int64_t N = 4, V = 6;
  auto logits = randn(N * V, rng, 2.0);
  const std::vector<int64_t> targets = {3, -100, 0, 5};
  const double dloss = 0.7;
  auto loss = [&] {
    return dloss * ops::cross_entropy_forward(cpu{}, nullptr, logits.data(), targets.data(), N, V);
  };
  std::vector<double> d(N * V, 5.0);
  ops::cross_entropy_backward(cpu{}, d.data(), logits.data(), targets.data(), N, V, dloss);
  expect_grad_close("cross_entropy dlogits", logits.data(), d.data(), N * V, loss);
}

TEST(CrossEntropy, LargeFloatMatchesDouble) {
  Rng rng(54);
  const int64_t N = 64, V = 1000;
  auto logits = randn(N * V, rng, 3.0);
  std::vector<int64_t> targets(N);
  for (auto& t : targets) t = static_cast<int64_t>(rng.below(V));
  targets[5] = -100;
  std::vector<double> losses(N), d(N * V);
  const double mean = ops::cross_entropy_forward(cpu{}, losses.data(), logits.data(), targets.data(), N, V);
  ops::cross_entropy_backward(cpu{}, d.data(), logits.data(), targets.data(), N, V, 1.0);
  auto lf = cast<float>(logits);
  std::vector<float> lossesf(N), df(N * V);
  const double meanf = ops::cross_entropy_forward(cpu{}, lossesf.data(), lf.data(), targets.data(), N, V);
  ops::cross_entropy_backward(cpu{}, df.data(), lf.data(), targets.data(), N, V, 1.0);
  // Inputs rounded to fp32 (rel 6e-8 of |x| ~ 10) and an fp32 exp-sum of length 1000.
  EXPECT_NEAR(meanf, mean, 1e-5);
  EXPECT_LT(max_abs_err(lossesf.data(), losses.data(), N), 1e-5);
  EXPECT_LT(max_abs_err(df.data(), d.data(), N * V), 1e-7);  // entries are O(1/N)
}
