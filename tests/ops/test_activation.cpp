#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/activation.hpp"

using namespace tessera;
using namespace tessera::testing;
using ops::GeluApprox;

namespace {
double silu_ref(double x) { return x / (1 + std::exp(-x)); }
double gelu_ref(double x, GeluApprox a) {
  if (a == GeluApprox::None) return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}
}  // namespace

TEST(Activation, KnownValues) {
  const std::vector<double> x = {0, 1, -1, 100, -100};
  std::vector<double> y(5);
  ops::silu_forward(cpu{}, y.data(), x.data(), 5);
  EXPECT_EQ(y[0], 0.0);
  EXPECT_NEAR(y[1], 0.7310585786300049, 1e-15);
  EXPECT_NEAR(y[2], -0.2689414213699951, 1e-15);
  EXPECT_NEAR(y[3], 100.0, 1e-12);
  EXPECT_NEAR(y[4], 0.0, 1e-40);
  ops::gelu_forward(cpu{}, y.data(), x.data(), 5, GeluApprox::None);
  EXPECT_NEAR(y[1], 0.8413447460685429, 1e-15);   // Phi(1)
  EXPECT_NEAR(y[2], -0.15865525393145707, 1e-15);  // -(1 - Phi(1))
  ops::gelu_forward(cpu{}, y.data(), x.data(), 5, GeluApprox::Tanh);
  EXPECT_NEAR(y[1], 0.8411919906082768, 1e-15);
  // Saturation in fp32 stays finite.
  const std::vector<float> xf = {-200.f, 200.f, -90.f};
  std::vector<float> yf(3), df(3);
  const std::vector<float> ones(3, 1.f);
  ops::silu_forward(cpu{}, yf.data(), xf.data(), 3);
  ops::silu_backward(cpu{}, df.data(), ones.data(), xf.data(), 3);
  EXPECT_NEAR(yf[0], 0.f, 1e-30f);  // Eigen's fp32 exp may clamp instead of overflowing
  EXPECT_EQ(yf[1], 200.f);
  EXPECT_EQ(df[1], 1.f);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(std::isfinite(yf[i]) && std::isfinite(df[i])) << i;
}

// fp32 over a size above the OpenMP threshold (and not a multiple of the chunk) against std:: formulas.
TEST(Activation, LargeFloatMatchesReference) {
  Rng rng(41);
  const int64_t n = 3 * 16384 + 7;
  auto x = randn<float>(n, rng, 3.0);
  std::vector<float> y(n);
  ops::silu_forward(cpu{}, y.data(), x.data(), n);
  double err = 0;
  for (int64_t i = 0; i < n; ++i) err = std::max(err, std::abs(y[i] - silu_ref(x[i])));
  EXPECT_LT(err, 1e-5);  // fp32 exp and division: a few ulp of values up to ~10
  for (auto a : {GeluApprox::None, GeluApprox::Tanh}) {
    ops::gelu_forward(cpu{}, y.data(), x.data(), n, a);
    err = 0;
    for (int64_t i = 0; i < n; ++i) err = std::max(err, std::abs(y[i] - gelu_ref(x[i], a)));
    EXPECT_LT(err, 1e-5) << "approx " << static_cast<int>(a);
  }
}

TEST(Activation, Gradcheck) {
  Rng rng(42);
  const int64_t n = 40;
  auto x = randn(n, rng, 2.0), R = randn(n, rng);
  {
    auto loss = [&] {
      std::vector<double> y(n);
      ops::silu_forward(cpu{}, y.data(), x.data(), n);
      return dot(y, R);
    };
    std::vector<double> dx(n);
    ops::silu_backward(cpu{}, dx.data(), R.data(), x.data(), n);
    expect_grad_close("silu dx", x.data(), dx.data(), n, loss);
  }
  for (auto a : {GeluApprox::None, GeluApprox::Tanh}) {
    auto loss = [&] {
      std::vector<double> y(n);
      ops::gelu_forward(cpu{}, y.data(), x.data(), n, a);
      return dot(y, R);
    };
    auto dx = R;  // in place: dx aliases dy
    ops::gelu_backward(cpu{}, dx.data(), dx.data(), x.data(), n, a);
    expect_grad_close(a == GeluApprox::None ? "gelu(erf) dx" : "gelu(tanh) dx", x.data(), dx.data(), n, loss);
  }
}

// SwiGLU on the two halves of a fused [N, 2H] gate_up buffer.
TEST(SwiGlu, FusedForwardAndGradcheck) {
  Rng rng(43);
  const int64_t N = 3, H = 5;
  auto gu = randn(N * 2 * H, rng, 2.0), R = randn(N * H, rng);
  std::vector<double> out(N * H);
  ops::swiglu_forward(cpu{}, out.data(), gu.data(), gu.data() + H, N, H, 2 * H);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      EXPECT_NEAR(out[n * H + h], silu_ref(gu[n * 2 * H + h]) * gu[n * 2 * H + H + h], 1e-14);

  auto loss = [&] {
    std::vector<double> o(N * H);
    ops::swiglu_forward(cpu{}, o.data(), gu.data(), gu.data() + H, N, H, 2 * H);
    return dot(o, R);
  };
  std::vector<double> dgu(N * 2 * H, 123.0);
  ops::swiglu_backward(cpu{}, dgu.data(), dgu.data() + H, R.data(), gu.data(), gu.data() + H, N, H, 2 * H);
  expect_grad_close("swiglu d(gate_up)", gu.data(), dgu.data(), N * 2 * H, loss);
}

TEST(SwiGlu, SeparateBuffersLarge) {
  Rng rng(44);
  const int64_t N = 16, H = 3000;  // rows longer than one chunk, total above the OpenMP threshold
  auto g = randn<float>(N * H, rng, 2.0), u = randn<float>(N * H, rng), d = randn<float>(N * H, rng);
  std::vector<float> out(N * H), dg(N * H), du(N * H);
  ops::swiglu_forward(cpu{}, out.data(), g.data(), u.data(), N, H);
  ops::swiglu_backward(cpu{}, dg.data(), du.data(), d.data(), g.data(), u.data(), N, H);
  double eo = 0, eg = 0, eu = 0;
  for (int64_t i = 0; i < N * H; ++i) {
    const double s = 1 / (1 + std::exp(-double(g[i])));
    eo = std::max(eo, std::abs(out[i] - silu_ref(g[i]) * u[i]));
    eu = std::max(eu, std::abs(du[i] - d[i] * silu_ref(g[i])));
    eg = std::max(eg, std::abs(dg[i] - d[i] * u[i] * s * (1 + g[i] * (1 - s))));
  }
  EXPECT_LT(eo, 1e-5);
  EXPECT_LT(eu, 1e-5);
  EXPECT_LT(eg, 1e-5);
}
