#include <gtest/gtest.h>

#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/segment.hpp"

using namespace tessera;
using namespace tessera::testing;

// Unsorted ids, a padding row (-1), a tie, and an empty segment (2).
TEST(SegmentMax, TiesEmptyAndIgnoredRows) {
  const int64_t N = 5, S = 4, D = 2;
  const std::vector<double> x = {1, 5,    // row 0 -> seg 1
                                 9, 9,    // row 1 -> ignored
                                 3, 5,    // row 2 -> seg 0
                                 2, -1,   // row 3 -> seg 1
                                 -4, -2}; // row 4 -> seg 3
  const std::vector<int64_t> seg = {1, -1, 0, 1, 3};
  std::vector<double> out(S * D, 7.0);
  std::vector<int64_t> am(S * D, 7);
  ops::segment_max_forward(cpu{}, out.data(), am.data(), x.data(), seg.data(), N, S, D);
  EXPECT_EQ(out, (std::vector<double>{3, 5, 2, 5, 0, 0, -4, -2}));
  EXPECT_EQ(am, (std::vector<int64_t>{2, 2, 3, 0, -1, -1, 4, 4}));

  // Tie: rows 0 and 2 of the same segment both hold 5 in column 1; the first row wins.
  const std::vector<int64_t> seg2 = {0, -1, 0, 1, 1};
  ops::segment_max_forward(cpu{}, out.data(), am.data(), x.data(), seg2.data(), N, S, D);
  EXPECT_EQ(am[0 * D + 1], 0);
  EXPECT_EQ(am[0 * D + 0], 2);

  std::vector<double> dx(N * D, 1.0);
  const std::vector<double> dout = {10, 20, 30, 40, 50, 60, 70, 80};
  ops::segment_max_backward(cpu{}, dx.data(), dout.data(), am.data(), S, D);
  // seg 0 -> (row 2, row 0); seg 1 -> (row 3, row 3); segs 2, 3 empty.
  EXPECT_EQ(dx, (std::vector<double>{1, 21, 1, 1, 11, 1, 31, 41, 1, 1}));
}

TEST(SegmentMax, Gradcheck) {
  Rng rng(61);
  const int64_t N = 9, S = 4, D = 3;
  auto x = randn(N * D, rng), R = randn(S * D, rng);  // continuous values: no ties almost surely
  const std::vector<int64_t> seg = {2, 0, -1, 2, 0, 0, 3, -5, 2};  // segment 1 is empty
  auto loss = [&] {
    std::vector<double> out(S * D);
    std::vector<int64_t> am(S * D);
    ops::segment_max_forward(cpu{}, out.data(), am.data(), x.data(), seg.data(), N, S, D);
    return dot(out, R);
  };
  std::vector<double> out(S * D), dx(N * D, 0.0);
  std::vector<int64_t> am(S * D);
  ops::segment_max_forward(cpu{}, out.data(), am.data(), x.data(), seg.data(), N, S, D);
  ops::segment_max_backward(cpu{}, dx.data(), R.data(), am.data(), S, D);
  expect_grad_close("segment_max dx", x.data(), dx.data(), N * D, loss);
}

TEST(SegmentMean, HandComputedAndGradcheck) {
  const int64_t N = 5, S = 3, D = 2;
  auto x = std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const std::vector<int64_t> seg = {2, 0, 2, -1, 2};  // segment 1 empty, row 3 ignored
  std::vector<double> out(S * D, 7.0);
  ops::segment_mean_forward(cpu{}, out.data(), x.data(), seg.data(), N, S, D);
  EXPECT_EQ(out, (std::vector<double>{3, 4, 0, 0, 5, 6}));

  Rng rng(62);
  const auto R = randn(S * D, rng);
  auto loss = [&] {
    std::vector<double> o(S * D);
    ops::segment_mean_forward(cpu{}, o.data(), x.data(), seg.data(), N, S, D);
    return dot(o, R);
  };
  std::vector<double> dx(N * D, 2.0);  // accumulates: subtract the initial 2 afterwards
  ops::segment_mean_backward(cpu{}, dx.data(), R.data(), seg.data(), N, S, D);
  for (auto& v : dx) v -= 2.0;
  expect_grad_close("segment_mean dx", x.data(), dx.data(), N * D, loss);
}

TEST(Segment, IdOutOfRangeNamesRow) {
  std::vector<float> x(6), out(4), dx(6);
  std::vector<int64_t> am(4);
  const std::vector<int64_t> seg = {0, 2, 1};
  expect_error([&] { ops::segment_max_forward(cpu{}, out.data(), am.data(), x.data(), seg.data(), 3, 2, 2); },
               {"segment_max_forward", "segment id 2", "row 1"});
  expect_error([&] { ops::segment_mean_forward(cpu{}, out.data(), x.data(), seg.data(), 3, 2, 2); },
               {"segment_mean_forward", "row 1"});
  expect_error([&] { ops::segment_mean_backward(cpu{}, dx.data(), out.data(), seg.data(), 3, 2, 2); },
               {"segment_mean_backward", "row 1"});
}

// Above the OpenMP threshold (several column blocks) against naive loops; same summation order: exact.
TEST(Segment, LargeMatchesNaive) {
  Rng rng(63);
  const int64_t N = 200, S = 37, D = 700;
  std::vector<int64_t> seg(N);
  for (auto& s : seg) s = static_cast<int64_t>(rng.below(S + 3)) - 3;  // some rows ignored
  auto x = randn<float>(N * D, rng), dout = randn<float>(S * D, rng);
  std::vector<float> mx(S * D), mean(S * D), dxm(N * D, 0.f), dxa(N * D, 0.f);
  std::vector<int64_t> am(S * D);
  ops::segment_max_forward(cpu{}, mx.data(), am.data(), x.data(), seg.data(), N, S, D);
  ops::segment_max_backward(cpu{}, dxm.data(), dout.data(), am.data(), S, D);
  ops::segment_mean_forward(cpu{}, mean.data(), x.data(), seg.data(), N, S, D);
  ops::segment_mean_backward(cpu{}, dxa.data(), dout.data(), seg.data(), N, S, D);
  std::vector<float> rmx(S * D, 0.f), rsum(S * D, 0.f), rdxm(N * D, 0.f);
  std::vector<int64_t> ram(S * D, -1), cnt(S, 0);
  for (int64_t n = 0; n < N; ++n) {
    if (seg[n] < 0) continue;
    ++cnt[seg[n]];
    for (int64_t d = 0; d < D; ++d) {
      const int64_t o = seg[n] * D + d;
      if (ram[o] < 0 || x[n * D + d] > rmx[o]) rmx[o] = x[n * D + d], ram[o] = n;
      rsum[o] += x[n * D + d];
    }
  }
  for (int64_t o = 0; o < S * D; ++o)
    if (ram[o] >= 0) rdxm[ram[o] * D + o % D] += dout[o];
  EXPECT_EQ(mx, rmx);
  EXPECT_EQ(am, ram);
  EXPECT_EQ(dxm, rdxm);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t d = 0; d < D; ++d) {
      const double m = cnt[s] ? rsum[s * D + d] / double(cnt[s]) : 0.0;
      ASSERT_NEAR(mean[s * D + d], m, 1e-6) << s << "," << d;
    }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      const double g = seg[n] < 0 ? 0.0 : dout[seg[n] * D + d] / double(cnt[seg[n]]);
      ASSERT_NEAR(dxa[n * D + d], g, 1e-6);
    }
}
