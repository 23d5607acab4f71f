// TimestepNorm (tessera::ops::timestep_norm_*): brute-force cumulative statistics in double, GroupNorm at
// step 0, finite-difference gradients in double (x, prev_mean, prev_var, weight, bias, with final-state
// upstream), chunked = one pass with carried state (forward and backward), and a long float stream against
// double.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/timestep_norm.hpp"

using namespace tessera;
using namespace tessera::testing;
using ops::TsnDims;

namespace {

struct State {
  std::vector<int64_t> count;
  std::vector<double> mean, var;
};

/// Brute force: y at (b, t, group) uses the population mean/variance of every scalar of the group at steps <=
/// t plus a prefix of prev_count steps (prev_count * D/G scalars) with mean prev_mean and variance prev_var.
void brute(const TsnDims& dm, const std::vector<double>& x, const State* prev, const std::vector<double>& w,
           const std::vector<double>& bias, double eps, std::vector<double>& y, State& out,
           std::vector<double>& cm, std::vector<double>& cr) {
  const int64_t Dg = dm.D / dm.G;
  y.assign(x.size(), 0);
  cm.assign(dm.B * dm.L * dm.G, 0);
  cr.assign(dm.B * dm.L * dm.G, 0);
  out = {std::vector<int64_t>(dm.B), std::vector<double>(dm.B * dm.G), std::vector<double>(dm.B * dm.G)};
  for (int64_t b = 0; b < dm.B; ++b) {
    out.count[b] = (prev ? prev->count[b] : 0) + dm.L;
    for (int64_t g = 0; g < dm.G; ++g) {
      const double n0 = prev ? double(prev->count[b] * Dg) : 0.0;
      const double m0 = prev ? prev->mean[b * dm.G + g] : 0.0, v0 = prev ? prev->var[b * dm.G + g] : 1.0;
      double s1 = n0 * m0, s2 = n0 * (v0 + m0 * m0), n = n0;  // sums of x and x^2 over all scalars so far
      for (int64_t t = 0; t < dm.L; ++t) {
        for (int64_t k = 0; k < Dg; ++k) {
          const double v = x[(b * dm.L + t) * dm.D + g * Dg + k];
          s1 += v;
          s2 += v * v;
          n += 1;
        }
        const double mu = s1 / n, var = s2 / n - mu * mu, r = 1 / std::sqrt(var + eps);
        cm[(b * dm.L + t) * dm.G + g] = mu;
        cr[(b * dm.L + t) * dm.G + g] = r;
        for (int64_t k = 0; k < Dg; ++k) {
          const int64_t i = (b * dm.L + t) * dm.D + g * Dg + k;
          y[i] = (x[i] - mu) * r * (1 + w[g * Dg + k]) + bias[g * Dg + k];
        }
        out.mean[b * dm.G + g] = mu;
        out.var[b * dm.G + g] = var;
      }
    }
  }
}

template <class A, class B>
double rel_to_max(const A* a, const B* b, int64_t n) {
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(ref, 1e-300);
}

std::vector<double> positive(int64_t n, Rng& rng) {
  std::vector<double> v(n);
  for (auto& x : v) x = 0.5 + rng.uniform() * 2;
  return v;
}

}  // namespace

TEST(TimestepNorm, BruteForceWithCarriedState) {
  Rng rng(11);
  const TsnDims dm{2, 9, 12, 3};
  const double eps = 1e-5;
  auto x = randn(dm.B * dm.L * dm.D, rng, 2.0);
  for (auto& v : x) v += 1.5;
  const auto w = randn(dm.D, rng, 0.3), bias = randn(dm.D, rng, 0.3);
  const State prev{{3, 0}, randn(dm.B * dm.G, rng), positive(dm.B * dm.G, rng)};
  for (bool with_prev : {true, false}) {
    const State* pp = with_prev ? &prev : nullptr;
    std::vector<double> y_ref, cm_ref, cr_ref;
    State s_ref;
    brute(dm, x, pp, w, bias, eps, y_ref, s_ref, cm_ref, cr_ref);
    std::vector<double> y(x.size()), mean(dm.B * dm.G), var(dm.B * dm.G), cm(dm.B * dm.L * dm.G),
        cr(dm.B * dm.L * dm.G);
    std::vector<int64_t> count(dm.B);
    ops::timestep_norm_forward(cpu{}, dm, x.data(), pp ? prev.count.data() : nullptr,
                               pp ? prev.mean.data() : nullptr, pp ? prev.var.data() : nullptr, w.data(),
                               bias.data(), eps, y.data(), count.data(), mean.data(), var.data(), cm.data(),
                               cr.data());
    EXPECT_LT(max_abs_err(y.data(), y_ref.data(), y.size()), 1e-12);
    EXPECT_LT(max_abs_err(cm.data(), cm_ref.data(), cm.size()), 1e-12);
    EXPECT_LT(max_rel_err(cr.data(), cr_ref.data(), cr.size()), 1e-12);
    EXPECT_LT(max_abs_err(mean.data(), s_ref.mean.data(), mean.size()), 1e-12);
    EXPECT_LT(max_rel_err(var.data(), s_ref.var.data(), var.size()), 1e-12);
    EXPECT_EQ(count, s_ref.count);
  }
}

TEST(TimestepNorm, StepZeroIsGroupNorm) {
  // One group of 4 features, token 0 = (1, 2, 3, 6): mean 3, population variance (4+1+0+9)/4 = 3.5.
  const TsnDims dm{1, 2, 4, 1};
  const std::vector<double> x = {1, 2, 3, 6, 0, 0, 0, 0}, w = {0, 1, -0.5, 0}, b = {0, 0, 1, -1};
  std::vector<double> y(8);
  ops::timestep_norm_forward(cpu{}, dm, x.data(), nullptr, nullptr, nullptr, w.data(), b.data(), 0.5,
                             y.data(), nullptr, nullptr, nullptr, nullptr, nullptr);
  const double r = 1 / std::sqrt(3.5 + 0.5);  // = 0.5
  EXPECT_NEAR(y[0], (1 - 3) * r * 1, 1e-15);
  EXPECT_NEAR(y[1], (2 - 3) * r * 2, 1e-15);
  EXPECT_NEAR(y[2], (3 - 3) * r * 0.5 + 1, 1e-15);
  EXPECT_NEAR(y[3], (6 - 3) * r * 1 - 1, 1e-15);
  // Step 1 (all zeros) merges: mean 1.5, variance (3.5 + 0)/2 + (1/4)(0 - 3)^2 = 4.
  const double r1 = 1 / std::sqrt(4 + 0.5);
  EXPECT_NEAR(y[4], -1.5 * r1, 1e-15);
  EXPECT_NEAR(y[5], -1.5 * r1 * 2, 1e-15);
}

TEST(TimestepNorm, Gradcheck) {
  Rng rng(12);
  const TsnDims dm{2, 6, 8, 2};
  const double eps = 1e-5;
  auto x = randn(dm.B * dm.L * dm.D, rng);
  auto w = randn(dm.D, rng, 0.3), bias = randn(dm.D, rng, 0.3);
  const std::vector<int64_t> prev_count = {2, 5};
  auto pm = randn(dm.B * dm.G, rng), pv = positive(dm.B * dm.G, rng);
  const auto R = randn(x.size(), rng), Sm = randn(dm.B * dm.G, rng), Sv = randn(dm.B * dm.G, rng);
  auto loss = [&] {
    std::vector<double> y(x.size()), mean(dm.B * dm.G), var(dm.B * dm.G);
    ops::timestep_norm_forward(cpu{}, dm, x.data(), prev_count.data(), pm.data(), pv.data(), w.data(),
                               bias.data(), eps, y.data(), nullptr, mean.data(), var.data(), nullptr,
                               nullptr);
    return dot(y, R) + dot(mean, Sm) + dot(var, Sv);
  };
  std::vector<double> y(x.size()), cm(dm.B * dm.L * dm.G), cr(dm.B * dm.L * dm.G);
  ops::timestep_norm_forward(cpu{}, dm, x.data(), prev_count.data(), pm.data(), pv.data(), w.data(),
                             bias.data(), eps, y.data(), nullptr, nullptr, nullptr, cm.data(), cr.data());
  std::vector<double> dx(x.size(), 5.0), dpm(pm.size(), 5.0), dpv(pv.size(), 5.0), dw(dm.D, 1.0),
      db(dm.D, 1.0);
  ops::timestep_norm_backward(cpu{}, dm, R.data(), Sm.data(), Sv.data(), x.data(), prev_count.data(),
                              pm.data(), cm.data(), cr.data(), w.data(), dx.data(), dpm.data(), dpv.data(),
                              dw.data(), db.data());
  for (auto* v : {&dw, &db})
    for (auto& e : *v) e -= 1.0;  // accumulated onto 1
  expect_grad_close("tsn dx", x.data(), dx.data(), x.size(), loss);
  expect_grad_close("tsn dprev_mean", pm.data(), dpm.data(), pm.size(), loss);
  expect_grad_close("tsn dprev_var", pv.data(), dpv.data(), pv.size(), loss);
  expect_grad_close("tsn dweight", w.data(), dw.data(), dw.size(), loss);
  expect_grad_close("tsn dbias", bias.data(), db.data(), db.size(), loss);
  // Without carried state the gradient of x still flows through every later step.
  auto loss0 = [&] {
    std::vector<double> yy(x.size());
    ops::timestep_norm_forward(cpu{}, dm, x.data(), nullptr, nullptr, nullptr, w.data(), bias.data(), eps,
                               yy.data(), nullptr, nullptr, nullptr, nullptr, nullptr);
    return dot(yy, R);
  };
  ops::timestep_norm_forward(cpu{}, dm, x.data(), nullptr, nullptr, nullptr, w.data(), bias.data(), eps,
                             y.data(), nullptr, nullptr, nullptr, cm.data(), cr.data());
  ops::timestep_norm_backward(cpu{}, dm, R.data(), nullptr, nullptr, x.data(), nullptr, nullptr, cm.data(),
                              cr.data(), w.data(), dx.data(), dpm.data(), dpv.data(), nullptr, nullptr);
  expect_grad_close("tsn dx (no state)", x.data(), dx.data(), x.size(), loss0);
  for (double v : dpv) EXPECT_EQ(v, 0.0);  // count 0: the prior variance has no influence
}

TEST(TimestepNorm, ChunkedEqualsOnePass) {
  Rng rng(13);
  const TsnDims dm{2, 20, 12, 4};
  const int64_t L1 = 7, L2 = dm.L - L1, G = dm.G, BG = dm.B * dm.G;
  const double eps = 1e-5;
  auto x = randn(dm.B * dm.L * dm.D, rng);
  const auto w = randn(dm.D, rng, 0.3), bias = randn(dm.D, rng, 0.3), dy = randn(x.size(), rng);
  const auto dmean = randn(BG, rng), dvar = randn(BG, rng);
  const std::vector<int64_t> c0 = {4, 0};
  const auto m0 = randn(BG, rng), v0 = positive(BG, rng);
  auto rows = [&](const std::vector<double>& v, int64_t t0, int64_t len, int64_t width) {
    std::vector<double> o(dm.B * len * width);
    for (int64_t b = 0; b < dm.B; ++b)
      std::copy_n(v.data() + (b * dm.L + t0) * width, len * width, o.data() + b * len * width);
    return o;
  };
  // One pass.
  std::vector<double> y(x.size()), mean(BG), var(BG), cm(dm.B * dm.L * G), cr(dm.B * dm.L * G), dx(x.size()),
      dpm(BG), dpv(BG), dw(dm.D), db(dm.D);
  std::vector<int64_t> count(dm.B);
  ops::timestep_norm_forward(cpu{}, dm, x.data(), c0.data(), m0.data(), v0.data(), w.data(), bias.data(), eps,
                             y.data(), count.data(), mean.data(), var.data(), cm.data(), cr.data());
  ops::timestep_norm_backward(cpu{}, dm, dy.data(), dmean.data(), dvar.data(), x.data(), c0.data(), m0.data(),
                              cm.data(), cr.data(), w.data(), dx.data(), dpm.data(), dpv.data(), dw.data(),
                              db.data());
  // Two pieces with carried state.
  const TsnDims d1{dm.B, L1, dm.D, G}, d2{dm.B, L2, dm.D, G};
  const auto x1 = rows(x, 0, L1, dm.D), x2 = rows(x, L1, L2, dm.D);
  std::vector<double> y1(x1.size()), y2(x2.size()), mean1(BG), var1(BG), mean2(BG), var2(BG),
      cm1(dm.B * L1 * G), cr1(dm.B * L1 * G), cm2(dm.B * L2 * G), cr2(dm.B * L2 * G);
  std::vector<int64_t> count1(dm.B), count2(dm.B);
  ops::timestep_norm_forward(cpu{}, d1, x1.data(), c0.data(), m0.data(), v0.data(), w.data(), bias.data(),
                             eps, y1.data(), count1.data(), mean1.data(), var1.data(), cm1.data(),
                             cr1.data());
  ops::timestep_norm_forward(cpu{}, d2, x2.data(), count1.data(), mean1.data(), var1.data(), w.data(),
                             bias.data(), eps, y2.data(), count2.data(), mean2.data(), var2.data(),
                             cm2.data(), cr2.data());
  EXPECT_LT(max_abs_err(y1.data(), rows(y, 0, L1, dm.D).data(), y1.size()), 1e-13);
  EXPECT_LT(max_abs_err(y2.data(), rows(y, L1, L2, dm.D).data(), y2.size()), 1e-13);
  EXPECT_LT(max_abs_err(mean2.data(), mean.data(), BG), 1e-13);
  EXPECT_LT(max_abs_err(var2.data(), var.data(), BG), 1e-13);
  EXPECT_EQ(count2, count);
  // Backward: the second piece's dprev_* seed the first piece's dmean/dvar.
  const auto dy1 = rows(dy, 0, L1, dm.D), dy2 = rows(dy, L1, L2, dm.D);
  std::vector<double> dx1(x1.size()), dx2(x2.size()), dpm2(BG), dpv2(BG), dpm1(BG), dpv1(BG), dw2(dm.D),
      db2(dm.D);
  ops::timestep_norm_backward(cpu{}, d2, dy2.data(), dmean.data(), dvar.data(), x2.data(), count1.data(),
                              mean1.data(), cm2.data(), cr2.data(), w.data(), dx2.data(), dpm2.data(),
                              dpv2.data(), dw2.data(), db2.data());
  ops::timestep_norm_backward(cpu{}, d1, dy1.data(), dpm2.data(), dpv2.data(), x1.data(), c0.data(),
                              m0.data(), cm1.data(), cr1.data(), w.data(), dx1.data(), dpm1.data(),
                              dpv1.data(), dw2.data(), db2.data());
  EXPECT_LT(max_abs_err(dx1.data(), rows(dx, 0, L1, dm.D).data(), dx1.size()), 1e-12);
  EXPECT_LT(max_abs_err(dx2.data(), rows(dx, L1, L2, dm.D).data(), dx2.size()), 1e-12);
  EXPECT_LT(max_abs_err(dpm1.data(), dpm.data(), BG), 1e-12);
  EXPECT_LT(max_abs_err(dpv1.data(), dpv.data(), BG), 1e-12);
  EXPECT_LT(max_abs_err(dw2.data(), dw.data(), dm.D), 1e-12);
  EXPECT_LT(max_abs_err(db2.data(), db.data(), dm.D), 1e-12);
}

TEST(TimestepNorm, LongFloatStreamMatchesDouble) {
  // 65536 steps of data with a large common offset (mean 3, sd 2): the running statistics must not drift.
  Rng rng(14);
  const TsnDims dm{1, 65536, 32, 4};
  auto x = randn(dm.B * dm.L * dm.D, rng, 2.0);
  for (auto& v : x) v += 3.0;
  const auto w = randn(dm.D, rng, 0.3), bias = randn(dm.D, rng, 0.3), dy = randn(x.size(), rng);
  const int64_t BG = dm.B * dm.G, S = dm.B * dm.L * dm.G;
  std::vector<double> y(x.size()), mean(BG), var(BG), cm(S), cr(S), dx(x.size()), dw(dm.D), db(dm.D);
  ops::timestep_norm_forward(cpu{}, dm, x.data(), nullptr, nullptr, nullptr, w.data(), bias.data(), 1e-5,
                             y.data(), nullptr, mean.data(), var.data(), cm.data(), cr.data());
  ops::timestep_norm_backward(cpu{}, dm, dy.data(), nullptr, nullptr, x.data(), nullptr, nullptr, cm.data(),
                              cr.data(), w.data(), dx.data(), nullptr, nullptr, dw.data(), db.data());
  const auto xf = cast<float>(x), wf = cast<float>(w), bf = cast<float>(bias), dyf = cast<float>(dy);
  std::vector<float> yf(x.size()), meanf(BG), varf(BG), cmf(S), crf(S), dxf(x.size()), dwf(dm.D), dbf(dm.D);
  ops::timestep_norm_forward(cpu{}, dm, xf.data(), nullptr, nullptr, nullptr, wf.data(), bf.data(), 1e-5,
                             yf.data(), nullptr, meanf.data(), varf.data(), cmf.data(), crf.data());
  ops::timestep_norm_backward(cpu{}, dm, dyf.data(), nullptr, nullptr, xf.data(), nullptr, nullptr,
                              cmf.data(), crf.data(), wf.data(), dxf.data(), nullptr, nullptr, dwf.data(),
                              dbf.data());
  const double e_y = rel_to_max(yf.data(), y.data(), y.size()),
               e_m = max_rel_err(meanf.data(), mean.data(), BG),
               e_v = max_rel_err(varf.data(), var.data(), BG),
               e_dx = rel_to_max(dxf.data(), dx.data(), dx.size()),
               e_dw = rel_to_max(dwf.data(), dw.data(), dm.D), e_db = rel_to_max(dbf.data(), db.data(), dm.D);
  std::cout << "[tsn] float L=65536 vs double: y " << e_y << " mean " << e_m << " var " << e_v << " dx "
            << e_dx << " dweight " << e_dw << " dbias " << e_db << "\n";
  EXPECT_LT(e_y, 1e-5);
  EXPECT_LT(e_m, 1e-6);
  EXPECT_LT(e_v, 1e-6);
  EXPECT_LT(e_dx, 1e-5);
  EXPECT_LT(e_dw, 1e-5);
  EXPECT_LT(e_db, 1e-5);
}

TEST(TimestepNorm, BadInput) {
  std::vector<double> x(24), y(24), cm(6), cr(6);
  auto fwd = [&](TsnDims dm, const double* xx, const int64_t* pc) {
    ops::timestep_norm_forward(cpu{}, dm, xx, pc, nullptr, nullptr, nullptr, nullptr, 1e-5, y.data(), nullptr,
                               nullptr, nullptr, nullptr, nullptr);
  };
  expect_error([&] { fwd({0, 2, 12, 3}, x.data(), nullptr); }, {"timestep_norm_forward", "B"});
  expect_error([&] { fwd({1, 0, 12, 3}, x.data(), nullptr); }, {"timestep_norm_forward", "L"});
  expect_error([&] { fwd({1, 2, 0, 3}, x.data(), nullptr); }, {"timestep_norm_forward", "D"});
  expect_error([&] { fwd({1, 2, 12, 0}, x.data(), nullptr); }, {"timestep_norm_forward", "G"});
  expect_error([&] { fwd({1, 2, 12, 5}, x.data(), nullptr); }, {"timestep_norm_forward", "divisible"});
  expect_error([&] { fwd({1, 2, 12, 3}, nullptr, nullptr); }, {"timestep_norm_forward", "x"});
  const int64_t neg = -1;
  expect_error([&] { fwd({1, 2, 12, 3}, x.data(), &neg); }, {"timestep_norm_forward", "prev_count"});
  expect_error(
      [&] {
        ops::timestep_norm_backward(cpu{}, TsnDims{1, 2, 12, 3}, y.data(), nullptr, nullptr, x.data(),
                                    nullptr, nullptr, nullptr, cr.data(), nullptr, y.data(), nullptr, nullptr,
                                    nullptr, nullptr);
      },
      {"timestep_norm_backward", "cummean"});
  expect_error(
      [&] {
        ops::timestep_norm_backward(cpu{}, TsnDims{1, 2, 12, 3}, y.data(), nullptr, nullptr, x.data(),
                                    nullptr, nullptr, cm.data(), cr.data(), nullptr, nullptr, nullptr,
                                    nullptr, nullptr, nullptr);
      },
      {"timestep_norm_backward", "dx"});
}

#ifdef _OPENMP
#include <omp.h>

TEST(TimestepNorm, ThreadCountInvariant) {
  Rng rng(15);
  const TsnDims dm{3, 300, 64, 8};
  const auto x = randn<float>(dm.B * dm.L * dm.D, rng), dy = randn<float>(x.size(), rng);
  const auto w = randn<float>(dm.D, rng, 0.3), bias = randn<float>(dm.D, rng, 0.3);
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    const int64_t BG = dm.B * dm.G, S = dm.B * dm.L * dm.G;
    std::vector<float> y(x.size()), mean(BG), var(BG), cm(S), cr(S), dx(x.size()), dw(dm.D), db(dm.D);
    ops::timestep_norm_forward(cpu{}, dm, x.data(), nullptr, nullptr, nullptr, w.data(), bias.data(), 1e-5,
                               y.data(), nullptr, mean.data(), var.data(), cm.data(), cr.data());
    ops::timestep_norm_backward(cpu{}, dm, dy.data(), nullptr, nullptr, x.data(), nullptr, nullptr, cm.data(),
                                cr.data(), w.data(), dx.data(), nullptr, nullptr, dw.data(), db.data());
    omp_set_num_threads(saved);
    for (auto* v : {&mean, &var, &dx, &dw, &db}) y.insert(y.end(), v->begin(), v->end());
    return y;
  };
  const auto one = run(1);
  EXPECT_EQ(run(2), one);
  EXPECT_EQ(run(3), one);
}
#endif
