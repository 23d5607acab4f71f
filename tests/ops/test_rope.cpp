#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/rope.hpp"

using namespace tessera;
using namespace tessera::testing;
using ops::RopeStyle;

namespace {

/// Meta's formulation: consecutive pairs as complex numbers times exp(i * pos * freq).
std::vector<double> meta_reference(const std::vector<double>& x, int64_t stride,
                                   const std::vector<int64_t>& pos, int64_t H, int64_t Dh, double theta) {
  std::vector<double> y = x;
  for (size_t n = 0; n < pos.size(); ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Dh / 2; ++i) {
        const double freq = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(Dh));
        const int64_t o = static_cast<int64_t>(n) * stride + h * Dh + 2 * i;
        const auto z = std::complex<double>(x[o], x[o + 1]) * std::polar(1.0, pos[n] * freq);
        y[o] = z.real();
        y[o + 1] = z.imag();
      }
  return y;
}

/// Hugging Face's formulation: x * cos + rotate_half(x) * sin with cos/sin = cat(freqs, freqs).
std::vector<double> hf_reference(const std::vector<double>& x, int64_t stride, const std::vector<int64_t>& pos,
                                 int64_t H, int64_t Dh, double theta) {
  std::vector<double> y = x;
  const int64_t half = Dh / 2;
  for (size_t n = 0; n < pos.size(); ++n)
    for (int64_t h = 0; h < H; ++h) {
      const double* v = x.data() + n * stride + h * Dh;
      for (int64_t j = 0; j < Dh; ++j) {
        const double expo = 2.0 * static_cast<double>(j % half) / static_cast<double>(Dh);
        const double freq = 1.0 / std::pow(theta, expo);
        const double rot = j < half ? -v[j + half] : v[j - half];  // rotate_half
        y[n * stride + h * Dh + j] = v[j] * std::cos(pos[n] * freq) + rot * std::sin(pos[n] * freq);
      }
    }
  return y;
}

}  // namespace

TEST(Rope, PositionZeroIsIdentity) {
  Rng rng(31);
  auto x = randn(2 * 3 * 8, rng);
  const std::vector<int64_t> pos = {0, 0};
  for (auto style : {RopeStyle::Interleaved, RopeStyle::Half}) {
    auto y = x;
    ops::rope_forward(cpu{}, y.data(), 24, pos.data(), 2, 3, 8, 10000.0, style);
    EXPECT_EQ(y, x);
  }
}

TEST(Rope, KnownRotations) {
  // Dh = 2: one pair, frequency 1, so position p rotates (1, 0) by p radians, either style.
  for (auto style : {RopeStyle::Interleaved, RopeStyle::Half}) {
    std::vector<double> x = {1, 0, 0, 1};
    const std::vector<int64_t> pos = {1, 3};
    ops::rope_forward(cpu{}, x.data(), 2, pos.data(), 2, 1, 2, 10000.0, style);
    EXPECT_NEAR(x[0], std::cos(1.0), 1e-15);
    EXPECT_NEAR(x[1], std::sin(1.0), 1e-15);
    EXPECT_NEAR(x[2], -std::sin(3.0), 1e-15);  // (0, 1) rotated by 3 rad
    EXPECT_NEAR(x[3], std::cos(3.0), 1e-15);
  }
  // Dh = 4, theta = 100: frequencies 1 and 100^(-1/2) = 0.1; position 2 gives angles 2 and 0.2.
  const std::vector<int64_t> pos = {2};
  std::vector<double> inter = {1, 2, 3, 4}, half = {1, 2, 3, 4};
  ops::rope_forward(cpu{}, inter.data(), 4, pos.data(), 1, 1, 4, 100.0, RopeStyle::Interleaved);
  ops::rope_forward(cpu{}, half.data(), 4, pos.data(), 1, 1, 4, 100.0, RopeStyle::Half);
  const double c2 = std::cos(2.0), s2 = std::sin(2.0), c02 = std::cos(0.2), s02 = std::sin(0.2);
  // Interleaved pairs (1,2) by 2 rad and (3,4) by 0.2 rad.
  EXPECT_NEAR(inter[0], 1 * c2 - 2 * s2, 1e-15);
  EXPECT_NEAR(inter[1], 1 * s2 + 2 * c2, 1e-15);
  EXPECT_NEAR(inter[2], 3 * c02 - 4 * s02, 1e-15);
  EXPECT_NEAR(inter[3], 3 * s02 + 4 * c02, 1e-15);
  // Half pairs (1,3) by 2 rad and (2,4) by 0.2 rad.
  EXPECT_NEAR(half[0], 1 * c2 - 3 * s2, 1e-15);
  EXPECT_NEAR(half[2], 1 * s2 + 3 * c2, 1e-15);
  EXPECT_NEAR(half[1], 2 * c02 - 4 * s02, 1e-15);
  EXPECT_NEAR(half[3], 2 * s02 + 4 * c02, 1e-15);
  EXPECT_GT(max_abs_err(inter.data(), half.data(), 4), 0.5);  // the two layouts really differ
}

// q slice of a fused [N, 3, H, Dh] qkv buffer: matches Meta's complex form (interleaved) and HF's rotate_half
// form (half); the k and v parts of each token are untouched.
TEST(Rope, FusedSliceMatchesMetaAndHfFormulations) {
  Rng rng(32);
  const int64_t N = 5, H = 3, Dh = 16, stride = 3 * H * Dh;
  const double theta = 500000.0;
  const std::vector<int64_t> pos = {0, 7, 1, 4095, 123456};
  auto x = randn(N * stride, rng);
  for (auto style : {RopeStyle::Interleaved, RopeStyle::Half}) {
    auto y = x;
    ops::rope_forward(cpu{}, y.data(), stride, pos.data(), N, H, Dh, theta, style);
    const auto ref = style == RopeStyle::Interleaved ? meta_reference(x, stride, pos, H, Dh, theta)
                                                     : hf_reference(x, stride, pos, H, Dh, theta);
    EXPECT_LT(max_abs_err(y.data(), ref.data(), N * stride), 1e-12);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = H * Dh; j < stride; ++j) ASSERT_EQ(y[n * stride + j], x[n * stride + j]);
  }
}

// Backward of L = <rope(x), R> by finite differences; forward then backward restores x.
TEST(Rope, GradcheckAndInverse) {
  Rng rng(33);
  const int64_t N = 3, H = 2, Dh = 6, stride = H * Dh + 2;
  const std::vector<int64_t> pos = {5, 0, 11};
  for (auto style : {RopeStyle::Interleaved, RopeStyle::Half}) {
    auto x = randn(N * stride, rng), R = randn(N * stride, rng);
    auto loss = [&] {
      auto y = x;
      ops::rope_forward(cpu{}, y.data(), stride, pos.data(), N, H, Dh, 10000.0, style);
      return dot(y, R);
    };
    auto dx = R;
    ops::rope_backward(cpu{}, dx.data(), stride, pos.data(), N, H, Dh, 10000.0, style);
    expect_grad_close(style == RopeStyle::Half ? "rope half dx" : "rope interleaved dx", x.data(), dx.data(),
                      N * stride, loss);
    auto y = x;
    ops::rope_forward(cpu{}, y.data(), stride, pos.data(), N, H, Dh, 10000.0, style);
    ops::rope_backward(cpu{}, y.data(), stride, pos.data(), N, H, Dh, 10000.0, style);
    EXPECT_LT(max_abs_err(y.data(), x.data(), N * stride), 1e-14);
  }
}

// fp32 above the OpenMP threshold against the double reference (angles computed in double in both).
TEST(Rope, LargeFloatMatchesReference) {
  Rng rng(34);
  const int64_t N = 256, H = 8, Dh = 64;
  std::vector<int64_t> pos(N);
  for (int64_t n = 0; n < N; ++n) pos[n] = 3 * n;
  auto x = randn(N * H * Dh, rng);
  auto xf = cast<float>(x);
  ops::rope_forward(cpu{}, xf.data(), H * Dh, pos.data(), N, H, Dh, 10000.0, RopeStyle::Half);
  const auto ref = hf_reference(cast<double>(cast<float>(x)), H * Dh, pos, H, Dh, 10000.0);
  // cos/sin rounded to fp32, products and sums in fp32: a few ulp times (|a| + |b|) <= ~9.
  EXPECT_LT(max_abs_err(xf.data(), ref.data(), N * H * Dh), 5e-6);
}

TEST(Rope, BadShapes) {
  std::vector<float> x(64);
  const std::vector<int64_t> pos = {0, 1};
  expect_error([&] { ops::rope_forward(cpu{}, x.data(), 10, pos.data(), 2, 2, 5, 1e4, RopeStyle::Half); },
               {"rope_forward", "even", "5"});
  expect_error(
      [&] { ops::rope_backward(cpu{}, x.data(), 10, pos.data(), 2, 2, 8, 1e4, RopeStyle::Interleaved); },
      {"rope_backward", "stride 10", "16"});
}
