#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/norm.hpp"

using namespace tessera;
using namespace tessera::testing;

// ---- RMSNorm --------------------------------------------------------------------------------------

TEST(RmsNorm, HandComputed) {
  // x = (3, 4): mean(x^2) = 12.5, rstd = 1/sqrt(12.5 + 0.5) = 1/sqrt(13).
  const std::vector<double> x = {3, 4}, w = {1, 2};
  std::vector<double> y(2), rstd(1);
  ops::rmsnorm_forward(cpu{}, y.data(), rstd.data(), x.data(), w.data(), 1, 2, 0.5);
  const double r = 1 / std::sqrt(13.0);
  EXPECT_NEAR(rstd[0], r, 1e-15);
  EXPECT_NEAR(y[0], 3 * r, 1e-15);
  EXPECT_NEAR(y[1], 8 * r, 1e-15);
  ops::rmsnorm_forward(cpu{}, y.data(), rstd.data(), x.data(), nullptr, 1, 2, 0.5);  // no affine
  EXPECT_NEAR(y[1], 4 * r, 1e-15);
}

TEST(RmsNorm, Gradcheck) {
  Rng rng(21);
  const int64_t N = 3, D = 7;
  const double eps = 1e-5;
  auto x = randn(N * D, rng), w = randn(D, rng), R = randn(N * D, rng);
  for (bool affine : {true, false}) {
    const double* wp = affine ? w.data() : nullptr;
    auto loss = [&] {
      std::vector<double> y(N * D), rs(N);
      ops::rmsnorm_forward(cpu{}, y.data(), rs.data(), x.data(), wp, N, D, eps);
      return dot(y, R);
    };
    std::vector<double> y(N * D), rstd(N), dx(N * D, 3.0), dw(D, 1.0);
    ops::rmsnorm_forward(cpu{}, y.data(), rstd.data(), x.data(), wp, N, D, eps);
    ops::rmsnorm_backward(cpu{}, dx.data(), affine ? dw.data() : nullptr, R.data(), x.data(), wp, rstd.data(),
                          N, D);
    expect_grad_close(affine ? "rmsnorm dx" : "rmsnorm dx (no affine)", x.data(), dx.data(), N * D, loss);
    if (affine) {
      for (auto& v : dw) v -= 1.0;  // dw accumulates onto its previous contents
      expect_grad_close("rmsnorm dw", w.data(), dw.data(), D, loss);
    }
  }
}

// A residual gradient (a pre-norm block's skip branch) is added in the same pass: exactly the plain dx plus
// it, also when dx is the residual itself (accumulating a norm's input gradient in place, e.g. BLT's decoder
// memory).
TEST(RmsNorm, BackwardAddsAResidualThatMayBeDx) {
  Rng rng(23);
  const int64_t N = 5, D = 33;
  auto x = cast<float>(randn(N * D, rng)), w = cast<float>(randn(D, rng)),
       dy = cast<float>(randn(N * D, rng)), res = cast<float>(randn(N * D, rng));
  std::vector<float> y(N * D), rstd(N), plain(N * D), with_res(N * D);
  ops::rmsnorm_forward(cpu{}, y.data(), rstd.data(), x.data(), w.data(), N, D, 1e-5);
  ops::rmsnorm_backward(cpu{}, plain.data(), nullptr, dy.data(), x.data(), w.data(), rstd.data(), N, D);
  ops::rmsnorm_backward(cpu{}, with_res.data(), nullptr, dy.data(), x.data(), w.data(), rstd.data(), N, D,
                        res.data());
  std::vector<float> in_place = res;
  ops::rmsnorm_backward(cpu{}, in_place.data(), nullptr, dy.data(), x.data(), w.data(), rstd.data(), N, D,
                        in_place.data());
  for (int64_t i = 0; i < N * D; ++i) {
    ASSERT_EQ(with_res[i], plain[i] + res[i]) << i;
    ASSERT_EQ(in_place[i], plain[i] + res[i]) << "dx aliasing the residual, " << i;
  }
}

// fp32 on sizes above the OpenMP threshold against the double implementation (checked above).
TEST(RmsNorm, LargeFloatMatchesDouble) {
  Rng rng(22);
  const int64_t N = 64, D = 1000;
  auto x = randn(N * D, rng), w = randn(D, rng), dy = randn(N * D, rng);
  std::vector<double> y(N * D), rstd(N), dx(N * D), dw(D, 0.0);
  ops::rmsnorm_forward(cpu{}, y.data(), rstd.data(), x.data(), w.data(), N, D, 1e-6);
  ops::rmsnorm_backward(cpu{}, dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, D);
  auto xf = cast<float>(x), wf = cast<float>(w), dyf = cast<float>(dy);
  std::vector<float> yf(N * D), rstdf(N), dxf(N * D), dwf(D, 0.f);
  ops::rmsnorm_forward(cpu{}, yf.data(), rstdf.data(), xf.data(), wf.data(), N, D, 1e-6);
  ops::rmsnorm_backward(cpu{}, dxf.data(), dwf.data(), dyf.data(), xf.data(), wf.data(), rstdf.data(), N, D);
  // fp32 reductions of length 1000 (dw: 64) over O(1) values: errors of a few 1e-6 absolute.
  EXPECT_LT(max_abs_err(yf.data(), y.data(), N * D), 1e-5);
  EXPECT_LT(max_abs_err(dxf.data(), dx.data(), N * D), 1e-5);
  EXPECT_LT(max_abs_err(dwf.data(), dw.data(), D), 1e-4);
}

// ---- LayerNorm ------------------------------------------------------------------------------------

TEST(LayerNorm, HandComputed) {
  // x = (1, 2, 3, 4): mean 2.5, biased variance 1.25; eps = 0.
  const std::vector<double> x = {1, 2, 3, 4}, w = {1, 2, 3, 4}, b = {0.5, 0, 0, -1};
  std::vector<double> y(4), mean(1), rstd(1);
  ops::layernorm_forward(cpu{}, y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), 1, 4, 0.0);
  const double r = 1 / std::sqrt(1.25);
  EXPECT_DOUBLE_EQ(mean[0], 2.5);
  EXPECT_NEAR(rstd[0], r, 1e-15);
  const double expect[4] = {-1.5 * r * 1 + 0.5, -0.5 * r * 2, 0.5 * r * 3, 1.5 * r * 4 - 1};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i], expect[i], 1e-14);
  ops::layernorm_forward(cpu{}, y.data(), nullptr, nullptr, x.data(), nullptr, nullptr, 1, 4, 0.0);
  EXPECT_NEAR(y[0], -1.5 * r, 1e-14);
  EXPECT_NEAR(y[3], 1.5 * r, 1e-14);
}

TEST(LayerNorm, Gradcheck) {
  Rng rng(23);
  const int64_t N = 3, D = 6;
  const double eps = 1e-5;
  auto x = randn(N * D, rng), w = randn(D, rng), b = randn(D, rng), R = randn(N * D, rng);
  for (bool affine : {true, false}) {
    const double* wp = affine ? w.data() : nullptr;
    const double* bp = affine ? b.data() : nullptr;
    auto loss = [&] {
      std::vector<double> y(N * D);
      ops::layernorm_forward(cpu{}, y.data(), nullptr, nullptr, x.data(), wp, bp, N, D, eps);
      return dot(y, R);
    };
    std::vector<double> y(N * D), mean(N), rstd(N), dx(N * D, 3.0), dw(D, 1.0), db(D, 1.0);
    ops::layernorm_forward(cpu{}, y.data(), mean.data(), rstd.data(), x.data(), wp, bp, N, D, eps);
    ops::layernorm_backward(cpu{}, dx.data(), affine ? dw.data() : nullptr, affine ? db.data() : nullptr,
                            R.data(), x.data(), wp, mean.data(), rstd.data(), N, D);
    expect_grad_close(affine ? "layernorm dx" : "layernorm dx (no affine)", x.data(), dx.data(), N * D, loss);
    if (affine) {
      for (auto& v : dw) v -= 1.0;
      for (auto& v : db) v -= 1.0;
      expect_grad_close("layernorm dw", w.data(), dw.data(), D, loss);
      expect_grad_close("layernorm db", b.data(), db.data(), D, loss);
    }
  }
}

TEST(LayerNorm, LargeFloatMatchesDouble) {
  Rng rng(24);
  const int64_t N = 64, D = 1000;
  auto x = randn(N * D, rng, 3.0), w = randn(D, rng), b = randn(D, rng), dy = randn(N * D, rng);
  for (auto& v : x) v += 5.0;  // an offset mean exercises the two-pass variance
  std::vector<double> y(N * D), mean(N), rstd(N), dx(N * D), dw(D, 0.0), db(D, 0.0);
  ops::layernorm_forward(cpu{}, y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, D, 1e-5);
  ops::layernorm_backward(cpu{}, dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                          rstd.data(), N, D);
  auto xf = cast<float>(x), wf = cast<float>(w), bf = cast<float>(b), dyf = cast<float>(dy);
  std::vector<float> yf(N * D), meanf(N), rstdf(N), dxf(N * D), dwf(D, 0.f), dbf(D, 0.f);
  ops::layernorm_forward(cpu{}, yf.data(), meanf.data(), rstdf.data(), xf.data(), wf.data(), bf.data(), N, D,
                         1e-5);
  ops::layernorm_backward(cpu{}, dxf.data(), dwf.data(), dbf.data(), dyf.data(), xf.data(), wf.data(),
                          meanf.data(), rstdf.data(), N, D);
  // fp32 row reductions of length 1000 with |x| ~ 5-15: a few 1e-6 absolute after normalisation.
  EXPECT_LT(max_abs_err(yf.data(), y.data(), N * D), 2e-5);
  EXPECT_LT(max_abs_err(dxf.data(), dx.data(), N * D), 2e-5);
  EXPECT_LT(max_abs_err(dwf.data(), dw.data(), D), 1e-4);
  EXPECT_LT(max_abs_err(dbf.data(), db.data(), D), 1e-4);
}
