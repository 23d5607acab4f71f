// CEMA (tessera::ops::cema_*): a naive per-step complex recurrence written here (coefficients from the spec's
// formulas in double) against the Scan and Fft modes, the closed-form final state, finite-difference
// gradients in double for both modes, float Scan vs Fft at L=4096, decoding through cached coefficients, and
// chunked processing with carried state (forward and backward).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <iostream>
#include <numbers>
#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/cema.hpp"

using namespace tessera;
using namespace tessera::testing;
using ops::CemaDims;
using ops::CemaMode;
using cd = std::complex<double>;

namespace {

/// Parameters in the official shapes. slow = true puts every third channel near |q| = 1 (long memory).
template <class T = double>
struct Params {
  std::vector<T> alpha, delta, theta, gamma, omega;
  Params(int64_t D, int64_t N, Rng& rng, bool slow = false) {
    alpha = randn<T>(D * N, rng, 0.5);
    delta = randn<T>(D * N, rng, 0.5);
    theta = randn<T>(D, rng, 1.0);
    gamma = randn<T>(D * N * 2, rng, 1.0);
    omega = randn<T>(D, rng, 0.5);
    if (slow)
      for (int64_t d = 0; d < D; d += 3)
        for (int64_t n = 0; n < N; ++n) {
          alpha[d * N + n] = static_cast<T>(-3.0 + 0.1 * n);  // p ~ 0.05, |q| ~ 0.998
          delta[d * N + n] = static_cast<T>(-3.0);
        }
  }
  ops::CemaParams<T> view() const {
    return {alpha.data(), delta.data(), theta.data(), gamma.data(), omega.data()};
  }
};

template <class U, class T>
ops::CemaParams<U> view_as(const Params<T>& p, std::vector<std::vector<U>>& store) {
  store = {cast<U>(p.alpha), cast<U>(p.delta), cast<U>(p.theta), cast<U>(p.gamma), cast<U>(p.omega)};
  return {store[0].data(), store[1].data(), store[2].data(), store[3].data(), store[4].data()};
}

/// Spec §1.2 in double, independent of the op.
struct Ref {
  std::vector<double> p;
  std::vector<cd> q, g;
  Ref(const Params<double>& P, int64_t D, int64_t N) {
    auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
    for (int64_t d = 0; d < D; ++d)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = d * N + n;
        const double pp = sig(P.alpha[i]), phi = (n + 1) * (2 * std::numbers::pi / N) * sig(P.theta[d]);
        p.push_back(pp);
        q.push_back(std::polar(1 - pp * sig(P.delta[i]), phi));
        g.push_back(cd(P.gamma[2 * i], P.gamma[2 * i + 1]) / std::sqrt(double(N)));
      }
  }
};

/// Naive recurrence: h_t = p x_t + q h_{t-1}, y_t = Re(sum g h_t) + omega x_t.
void naive(const CemaDims& dm, const Params<double>& P, const std::vector<double>& u, const cd* hx,
           std::vector<double>& y, std::vector<cd>& h) {
  const Ref R(P, dm.D, dm.N);
  y.assign(dm.B * dm.L * dm.D, 0);
  h.assign(dm.B * dm.D * dm.N, 0);
  for (int64_t b = 0; b < dm.B; ++b)
    for (int64_t d = 0; d < dm.D; ++d)
      for (int64_t n = 0; n < dm.N; ++n) {
        const int64_t i = d * dm.N + n;
        cd s = hx ? hx[(b * dm.D + d) * dm.N + n] : 0;
        for (int64_t t = 0; t < dm.L; ++t) {
          const double x = u[(b * dm.L + t) * dm.D + d];
          s = R.p[i] * x + R.q[i] * s;
          y[(b * dm.L + t) * dm.D + d] += (R.g[i] * s).real();
        }
        h[(b * dm.D + d) * dm.N + n] = s;
      }
  for (int64_t b = 0; b < dm.B; ++b)
    for (int64_t t = 0; t < dm.L; ++t)
      for (int64_t d = 0; d < dm.D; ++d)
        y[(b * dm.L + t) * dm.D + d] += P.omega[d] * u[(b * dm.L + t) * dm.D + d];
}

/// max|a - b| / max|b|
template <class A, class B>
double rel_to_max(const A* a, const B* b, int64_t n) {
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(ref, 1e-300);
}
template <class T>
const T* re(const std::vector<std::complex<T>>& v) {
  return reinterpret_cast<const T*>(v.data());
}
template <class T>
T* re(std::vector<std::complex<T>>& v) {
  return reinterpret_cast<T*>(v.data());
}

std::vector<cd> randc(int64_t n, Rng& rng, double scale = 1.0) {
  std::vector<cd> v(n);
  for (auto& z : v) z = cd(rng.normal() * scale, rng.normal() * scale);
  return v;
}

}  // namespace

TEST(Cema, CoeffsMatchSpec) {
  Rng rng(1);
  const int64_t D = 3, N = 4;
  Params<double> P(D, N, rng);
  ops::CemaCoeffs<double> c;
  ops::cema_coeffs(cpu{}, P.view(), D, N, c);
  const Ref R(P, D, N);
  ASSERT_EQ(c.D, D);
  ASSERT_EQ(c.N, N);
  for (int64_t i = 0; i < D * N; ++i) {
    EXPECT_NEAR(c.p[i], R.p[i], 1e-15);
    EXPECT_NEAR(std::abs(c.q[i] - R.q[i]), 0.0, 1e-15);
    EXPECT_NEAR(std::abs(c.g[i] - R.g[i]), 0.0, 1e-15);
    EXPECT_LT(std::abs(c.q[i]), 1.0);
  }
}

namespace {
void three_way(const CemaDims& dm) {
  Rng rng(2 + dm.L);
  Params<double> P(dm.D, dm.N, rng, /*slow=*/true);
  const auto u = randn(dm.B * dm.L * dm.D, rng);
  const auto hx = randc(dm.B * dm.D * dm.N, rng);
  for (bool with_hx : {true, false}) {
    const cd* hxp = with_hx ? hx.data() : nullptr;
    std::vector<double> y_ref;
    std::vector<cd> h_ref;
    naive(dm, P, u, hxp, y_ref, h_ref);
    // Closed form of spec 1.4 step 5: h_L = p sum_j q^(L-1-j) u_j + q^L hx.
    const Ref R(P, dm.D, dm.N);
    std::vector<cd> h_closed(h_ref.size());
    for (int64_t b = 0; b < dm.B; ++b)
      for (int64_t d = 0; d < dm.D; ++d)
        for (int64_t n = 0; n < dm.N; ++n) {
          const int64_t i = d * dm.N + n, o = (b * dm.D + d) * dm.N + n;
          cd s = 0;
          for (int64_t j = 0; j < dm.L; ++j)
            s += std::pow(R.q[i], double(dm.L - 1 - j)) * u[(b * dm.L + j) * dm.D + d];
          h_closed[o] = R.p[i] * s + (hxp ? std::pow(R.q[i], double(dm.L)) * hxp[o] : 0.0);
        }
    EXPECT_LT(rel_to_max(re(h_closed), re(h_ref), 2 * h_ref.size()), 1e-12);
    for (CemaMode mode : {CemaMode::Scan, CemaMode::Fft, CemaMode::Auto}) {
      std::vector<double> y(y_ref.size(), 7.0);
      std::vector<cd> h(h_ref.size(), 7.0);
      ops::cema_forward(cpu{}, dm, P.view(), u.data(), hxp, y.data(), h.data(), mode);
      const double ey = rel_to_max(y.data(), y_ref.data(), y.size());
      const double eh = rel_to_max(re(h), re(h_ref), 2 * h.size());
      std::cout << "[cema] L=" << dm.L << " mode " << int(mode) << (with_hx ? " hx" : " no hx") << ": y "
                << ey << ", h " << eh << "\n";
      EXPECT_LT(ey, 1e-12);
      EXPECT_LT(eh, 1e-12);
      // Without h_out the output is the same.
      std::vector<double> y2(y_ref.size());
      ops::cema_forward(cpu{}, dm, P.view(), u.data(), hxp, y2.data(), nullptr, mode);
      EXPECT_EQ(y2, y);
    }
  }
}
}  // namespace

// D = 19 leaves partial channel blocks in both modes; L = 150 crosses power blocks (64) and scan chunks (64);
// L = 5 takes the short-segment scan.
TEST(Cema, ThreeWayDouble) {
  three_way({2, 150, 19, 5});
}
TEST(Cema, ThreeWayDoubleShort) {
  three_way({3, 5, 19, 5});
}

TEST(Cema, HandComputedSingleState) {
  // D = N = 1, alpha = delta = theta = 0: p = 1/2, q = (3/4) e^{i pi}= -3/4, g = 1 + 2i, omega = 0.5.
  const double alpha = 0, delta = 0, theta = 0, gamma[2] = {1, 2}, omega = 0.5;
  const ops::CemaParams<double> P{&alpha, &delta, &theta, gamma, &omega};
  const std::vector<double> u = {1, 2};
  const std::vector<cd> hx = {cd(1, 1)};
  // h0 = 0.5 - 0.75 (1 + i) = -0.25 - 0.75i; y0 = Re((1+2i)(-0.25-0.75i)) + 0.5 = (-0.25 + 1.5) + 0.5 = 1.75
  // h1 = 1 - 0.75 h0 = 1.1875 + 0.5625i;       y1 = (1.1875 - 1.125) + 1 = 1.0625
  for (CemaMode mode : {CemaMode::Scan, CemaMode::Fft}) {
    std::vector<double> y(2);
    std::vector<cd> h(1);
    ops::cema_forward(cpu{}, CemaDims{1, 2, 1, 1}, P, u.data(), hx.data(), y.data(), h.data(), mode);
    EXPECT_NEAR(y[0], 1.75, 1e-14);
    EXPECT_NEAR(y[1], 1.0625, 1e-14);
    EXPECT_NEAR(h[0].real(), 1.1875, 1e-14);
    EXPECT_NEAR(h[0].imag(), 0.5625, 1e-14);
  }
}

namespace {

/// Finite-difference check of every input and parameter gradient of one mode.
void gradcheck(CemaMode mode, bool with_state) {
  Rng rng(3 + int(mode) + 10 * with_state);
  const CemaDims dm{2, 70, 3, 3};  // L = 70 crosses a scan chunk and a power block
  Params<double> P(dm.D, dm.N, rng);
  auto u = randn(dm.B * dm.L * dm.D, rng);
  auto hx = randc(dm.B * dm.D * dm.N, rng);
  const auto R = randn(dm.B * dm.L * dm.D, rng);
  const auto S = randc(dm.B * dm.D * dm.N, rng);  // dl/dh_out
  const cd* hxp = with_state ? hx.data() : nullptr;
  auto loss = [&] {
    std::vector<double> y(R.size());
    std::vector<cd> h(S.size());
    ops::cema_forward(cpu{}, dm, P.view(), u.data(), hxp, y.data(), h.data(), mode);
    double l = dot(y, R);
    if (with_state)
      for (size_t i = 0; i < h.size(); ++i) l += h[i].real() * S[i].real() + h[i].imag() * S[i].imag();
    return l;
  };
  std::vector<double> du(u.size(), 9.0);
  std::vector<cd> dhx(hx.size(), 9.0);
  std::vector<double> ga(P.alpha.size(), 1.0), gd(P.delta.size(), 1.0), gt(P.theta.size(), 1.0),
      gg(P.gamma.size(), 1.0), go(P.omega.size(), 1.0);
  ops::cema_backward(cpu{}, dm, P.view(), u.data(), hxp, R.data(), with_state ? S.data() : nullptr, du.data(),
                     dhx.data(),
                     ops::CemaGrads<double>{ga.data(), gd.data(), gt.data(), gg.data(), go.data()}, mode);
  for (auto* v : {&ga, &gd, &gt, &gg, &go})
    for (auto& x : *v) x -= 1.0;  // accumulated onto 1
  const std::string tag =
      std::string(mode == CemaMode::Scan ? "scan" : "fft") + (with_state ? " +state" : "");
  expect_grad_close(tag + " du", u.data(), du.data(), u.size(), loss);
  if (with_state) expect_grad_close(tag + " dhx", re(hx), re(dhx), 2 * hx.size(), loss);
  expect_grad_close(tag + " dalpha", P.alpha.data(), ga.data(), ga.size(), loss);
  expect_grad_close(tag + " ddelta", P.delta.data(), gd.data(), gd.size(), loss);
  expect_grad_close(tag + " dtheta", P.theta.data(), gt.data(), gt.size(), loss);
  expect_grad_close(tag + " dgamma", P.gamma.data(), gg.data(), gg.size(), loss);
  expect_grad_close(tag + " domega", P.omega.data(), go.data(), go.size(), loss);
}

}  // namespace

TEST(Cema, GradcheckScan) {
  gradcheck(CemaMode::Scan, true);
  gradcheck(CemaMode::Scan, false);
}
TEST(Cema, GradcheckFft) {
  gradcheck(CemaMode::Fft, true);
  gradcheck(CemaMode::Fft, false);
}

TEST(Cema, BackwardScanEqualsFftDouble) {
  // Larger than the gradcheck: more channels than one block, several chunks, long-memory channels.
  Rng rng(4);
  const CemaDims dm{2, 300, 37, 6};
  Params<double> P(dm.D, dm.N, rng, true);
  const auto u = randn(dm.B * dm.L * dm.D, rng), dy = randn(dm.B * dm.L * dm.D, rng);
  const auto hx = randc(dm.B * dm.D * dm.N, rng), dh = randc(dm.B * dm.D * dm.N, rng);
  struct Out {
    std::vector<double> du, ga, gd, gt, gg, go;
    std::vector<cd> dhx;
  };
  auto run = [&](CemaMode mode) {
    Out o{std::vector<double>(u.size()),       std::vector<double>(P.alpha.size()),
          std::vector<double>(P.delta.size()), std::vector<double>(P.theta.size()),
          std::vector<double>(P.gamma.size()), std::vector<double>(P.omega.size()),
          std::vector<cd>(hx.size())};
    ops::cema_backward(cpu{}, dm, P.view(), u.data(), hx.data(), dy.data(), dh.data(), o.du.data(),
                       o.dhx.data(), {o.ga.data(), o.gd.data(), o.gt.data(), o.gg.data(), o.go.data()}, mode);
    return o;
  };
  const Out s = run(CemaMode::Scan), f = run(CemaMode::Fft);
  EXPECT_LT(rel_to_max(f.du.data(), s.du.data(), s.du.size()), 1e-12);
  EXPECT_LT(rel_to_max(re(f.dhx), re(s.dhx), 2 * s.dhx.size()), 1e-12);
  EXPECT_LT(rel_to_max(f.ga.data(), s.ga.data(), s.ga.size()), 1e-11);
  EXPECT_LT(rel_to_max(f.gd.data(), s.gd.data(), s.gd.size()), 1e-11);
  EXPECT_LT(rel_to_max(f.gt.data(), s.gt.data(), s.gt.size()), 1e-11);
  EXPECT_LT(rel_to_max(f.gg.data(), s.gg.data(), s.gg.size()), 1e-11);
  EXPECT_LT(rel_to_max(f.go.data(), s.go.data(), s.go.size()), 1e-12);
}

TEST(Cema, FloatScanVsFftLong) {
  // L = 4096 in float, a third of the channels with |q| ~ 0.998 (q^4096 ~ 1e-4): both modes against a double
  // scan, and against each other.
  // Every input is rounded to float first, so the double reference sees exactly the float run's inputs (with
  // |q| ~ 0.998 the output's sensitivity to rounding q alone is ~500 ulp).
  Rng rng(5);
  const CemaDims dm{1, 4096, 40, 16};
  Params<double> P(dm.D, dm.N, rng, true);
  for (auto* v : {&P.alpha, &P.delta, &P.theta, &P.gamma, &P.omega}) *v = cast<double>(cast<float>(*v));
  const auto u = cast<double>(randn<float>(dm.B * dm.L * dm.D, rng));
  const auto dy = cast<double>(randn<float>(dm.B * dm.L * dm.D, rng));
  auto hx = randc(dm.B * dm.D * dm.N, rng), dh = randc(dm.B * dm.D * dm.N, rng);
  for (auto* v : {&hx, &dh})
    for (auto& z : *v) z = cd(float(z.real()), float(z.imag()));
  std::vector<std::vector<float>> store;
  const auto Pf = view_as<float>(P, store);
  // The double reference runs on the float coefficients: rounding q to float alone moves y by ~2e-5 here (an
  // input perturbation, the same for the official fp32 code), which is not what this test measures.
  ops::CemaCoeffs<float> cf;
  ops::cema_coeffs(cpu{}, Pf, dm.D, dm.N, cf);
  ops::CemaCoeffs<double> c64{
      dm.D, dm.N, cast<double>(cf.p), {cf.q.begin(), cf.q.end()}, {cf.g.begin(), cf.g.end()}};
  std::vector<double> y64(u.size());
  std::vector<cd> h64(hx.size());
  ops::cema_forward(cpu{}, dm, c64, P.omega.data(), u.data(), hx.data(), y64.data(), h64.data(),
                    CemaMode::Scan);

  const auto uf = cast<float>(u), dyf = cast<float>(dy);
  std::vector<std::complex<float>> hxf(hx.begin(), hx.end()), dhf(dh.begin(), dh.end());
  std::vector<float> ys(u.size()), yf(u.size());
  std::vector<std::complex<float>> hs(hx.size()), hf(hx.size());
  ops::cema_forward(cpu{}, dm, Pf, uf.data(), hxf.data(), ys.data(), hs.data(), CemaMode::Scan);
  ops::cema_forward(cpu{}, dm, Pf, uf.data(), hxf.data(), yf.data(), hf.data(), CemaMode::Fft);
  const double e_sf = rel_to_max(yf.data(), ys.data(), ys.size());
  const double e_s = rel_to_max(ys.data(), y64.data(), ys.size()),
               e_f = rel_to_max(yf.data(), y64.data(), yf.size());
  const double eh_s = rel_to_max(re(hs), re(h64), 2 * hs.size()),
               eh_f = rel_to_max(re(hf), re(h64), 2 * hf.size());
  std::cout << "[cema] float L=4096 y: scan vs fft " << e_sf << ", scan vs f64 " << e_s << ", fft vs f64 "
            << e_f << "; h: scan vs f64 " << eh_s << ", fft vs f64 " << eh_f << "\n";
  EXPECT_LT(e_sf, 1e-5);
  EXPECT_LT(e_s, 1e-5);
  EXPECT_LT(e_f, 1e-5);
  EXPECT_LT(eh_s, 1e-5);
  EXPECT_LT(eh_f, 1e-5);

  // Backward, float: the two modes against each other, and against the double scan (whose coefficients are
  // computed in double, so this bound includes the float rounding of q: see above).
  std::vector<std::vector<float>> bw;
  std::vector<double> du64(u.size()), ga64(P.alpha.size()), gd64(P.delta.size()), gt64(P.theta.size()),
      gg64(P.gamma.size()), go64(P.omega.size());
  std::vector<cd> dhx64(hx.size());
  ops::cema_backward(cpu{}, dm, P.view(), u.data(), hx.data(), dy.data(), dh.data(), du64.data(),
                     dhx64.data(), {ga64.data(), gd64.data(), gt64.data(), gg64.data(), go64.data()},
                     CemaMode::Scan);
  for (CemaMode mode : {CemaMode::Scan, CemaMode::Fft}) {
    std::vector<float> du(u.size()), ga(P.alpha.size()), gd(P.delta.size()), gt(P.theta.size()),
        gg(P.gamma.size()), go(P.omega.size());
    std::vector<std::complex<float>> dhx(hx.size());
    ops::cema_backward(cpu{}, dm, Pf, uf.data(), hxf.data(), dyf.data(), dhf.data(), du.data(), dhx.data(),
                       {ga.data(), gd.data(), gt.data(), gg.data(), go.data()}, mode);
    const double e[] = {
        rel_to_max(du.data(), du64.data(), du.size()), rel_to_max(re(dhx), re(dhx64), 2 * dhx.size()),
        rel_to_max(ga.data(), ga64.data(), ga.size()), rel_to_max(gd.data(), gd64.data(), gd.size()),
        rel_to_max(gt.data(), gt64.data(), gt.size()), rel_to_max(gg.data(), gg64.data(), gg.size()),
        rel_to_max(go.data(), go64.data(), go.size())};
    std::cout << "[cema] float L=4096 backward " << (mode == CemaMode::Scan ? "scan" : "fft")
              << " vs f64: du " << e[0] << " dhx " << e[1] << " alpha " << e[2] << " delta " << e[3]
              << " theta " << e[4] << " gamma " << e[5] << " omega " << e[6] << "\n";
    for (double v : e) EXPECT_LT(v, 2e-4);
    bw.push_back(du);
    for (auto* v : {&ga, &gd, &gt, &gg, &go}) bw.push_back(*v);
    bw.push_back(std::vector<float>(re(dhx), re(dhx) + 2 * dhx.size()));
  }
  double worst = 0;
  for (size_t k = 0; k < bw.size() / 2; ++k)
    worst = std::max(worst, rel_to_max(bw[k + bw.size() / 2].data(), bw[k].data(), bw[k].size()));
  std::cout << "[cema] float L=4096 backward fft vs scan: worst " << worst << "\n";
  EXPECT_LT(worst, 1e-5);
}

TEST(Cema, DecodeMatchesFullPass) {
  Rng rng(6);
  const CemaDims dm{2, 12, 21, 4};
  Params<double> P(dm.D, dm.N, rng);
  const auto u = randn(dm.B * dm.L * dm.D, rng);
  const auto hx = randc(dm.B * dm.D * dm.N, rng);
  std::vector<double> y(u.size());
  std::vector<cd> h(hx.size());
  ops::cema_forward(cpu{}, dm, P.view(), u.data(), hx.data(), y.data(), h.data(), CemaMode::Fft);
  ops::CemaCoeffs<double> c;
  ops::cema_coeffs(cpu{}, P.view(), dm.D, dm.N, c);
  std::vector<cd> state = hx, next(hx.size());
  std::vector<double> ut(dm.B * dm.D), yt(dm.B * dm.D);
  for (int64_t t = 0; t < dm.L; ++t) {
    for (int64_t b = 0; b < dm.B; ++b)
      std::copy_n(u.data() + (b * dm.L + t) * dm.D, dm.D, ut.data() + b * dm.D);
    ops::cema_forward(cpu{}, CemaDims{dm.B, 1, dm.D, dm.N}, c, P.omega.data(), ut.data(), state.data(),
                      yt.data(),
                      next.data());  // Auto: L = 1 runs the scan
    for (int64_t b = 0; b < dm.B; ++b)
      EXPECT_LT(rel_to_max(yt.data() + b * dm.D, y.data() + (b * dm.L + t) * dm.D, dm.D), 1e-12) << "t=" << t;
    state.swap(next);
  }
  EXPECT_LT(rel_to_max(re(state), re(h), 2 * h.size()), 1e-12);
}

TEST(Cema, ChunkedEqualsOnePass) {
  Rng rng(7);
  const CemaDims dm{2, 100, 18, 4};
  const int64_t pieces[] = {30, 45, 25};
  Params<double> P(dm.D, dm.N, rng, true);
  const auto u = randn(dm.B * dm.L * dm.D, rng), dy = randn(dm.B * dm.L * dm.D, rng);
  const auto hx = randc(dm.B * dm.D * dm.N, rng), dh = randc(dm.B * dm.D * dm.N, rng);
  const int64_t BD = dm.B * dm.D;
  // Rows [t0, t0+len) of every batch row.
  auto slice = [&](const std::vector<double>& v, int64_t t0, int64_t len) {
    std::vector<double> o(dm.B * len * dm.D);
    for (int64_t b = 0; b < dm.B; ++b)
      std::copy_n(v.data() + (b * dm.L + t0) * dm.D, len * dm.D, o.data() + b * len * dm.D);
    return o;
  };
  for (CemaMode mode : {CemaMode::Scan, CemaMode::Fft}) {
    std::vector<double> y(u.size()), du(u.size()), g1(dm.D * dm.N), g2(dm.D * dm.N), g3(dm.D),
        g4(2 * dm.D * dm.N), g5(dm.D);
    std::vector<cd> h(BD * dm.N), dhx(BD * dm.N);
    ops::cema_forward(cpu{}, dm, P.view(), u.data(), hx.data(), y.data(), h.data(), mode);
    ops::cema_backward(cpu{}, dm, P.view(), u.data(), hx.data(), dy.data(), dh.data(), du.data(), dhx.data(),
                       {g1.data(), g2.data(), g3.data(), g4.data(), g5.data()}, mode);
    // Forward piece by piece, carrying h_out -> hx.
    std::vector<std::vector<cd>> states = {hx};
    int64_t t0 = 0;
    for (int64_t len : pieces) {
      const CemaDims pd{dm.B, len, dm.D, dm.N};
      const auto up = slice(u, t0, len);
      std::vector<double> yp(up.size());
      std::vector<cd> hn(BD * dm.N);
      ops::cema_forward(cpu{}, pd, P.view(), up.data(), states.back().data(), yp.data(), hn.data(), mode);
      EXPECT_LT(rel_to_max(yp.data(), slice(y, t0, len).data(), yp.size()), 1e-12);
      states.push_back(hn);
      t0 += len;
    }
    EXPECT_LT(rel_to_max(re(states.back()), re(h), 2 * h.size()), 1e-12);
    // Backward piece by piece in reverse, carrying dhx -> dh_out; parameter gradients accumulate.
    std::vector<double> c1(g1.size()), c2(g2.size()), c3(g3.size()), c4(g4.size()), c5(g5.size());
    std::vector<cd> carry = dh;
    for (int k = 2; k >= 0; --k) {
      t0 -= pieces[k];
      const CemaDims pd{dm.B, pieces[k], dm.D, dm.N};
      const auto up = slice(u, t0, pieces[k]), dyp = slice(dy, t0, pieces[k]);
      std::vector<double> dup(up.size());
      std::vector<cd> dprev(BD * dm.N);
      ops::cema_backward(cpu{}, pd, P.view(), up.data(), states[k].data(), dyp.data(), carry.data(),
                         dup.data(), dprev.data(), {c1.data(), c2.data(), c3.data(), c4.data(), c5.data()},
                         mode);
      EXPECT_LT(rel_to_max(dup.data(), slice(du, t0, pieces[k]).data(), dup.size()), 1e-12);
      carry = dprev;
    }
    EXPECT_LT(rel_to_max(re(carry), re(dhx), 2 * dhx.size()), 1e-12);
    EXPECT_LT(rel_to_max(c1.data(), g1.data(), g1.size()), 1e-11);
    EXPECT_LT(rel_to_max(c2.data(), g2.data(), g2.size()), 1e-11);
    EXPECT_LT(rel_to_max(c3.data(), g3.data(), g3.size()), 1e-11);
    EXPECT_LT(rel_to_max(c4.data(), g4.data(), g4.size()), 1e-11);
    EXPECT_LT(rel_to_max(c5.data(), g5.data(), g5.size()), 1e-11);
  }
}

TEST(Cema, BadInput) {
  Rng rng(8);
  Params<double> P(4, 2, rng);
  const auto u = randn(8, rng), dy = randn(8, rng);
  std::vector<double> y(8), du(8);
  auto fwd = [&](CemaDims dm, ops::CemaParams<double> p, const double* uu, double* yy) {
    ops::cema_forward(cpu{}, dm, p, uu, nullptr, yy, nullptr);
  };
  expect_error([&] { fwd({0, 2, 4, 2}, P.view(), u.data(), y.data()); }, {"cema_forward", "B"});
  expect_error([&] { fwd({1, 0, 4, 2}, P.view(), u.data(), y.data()); }, {"cema_forward", "L"});
  expect_error([&] { fwd({1, 2, -1, 2}, P.view(), u.data(), y.data()); }, {"cema_forward", "D"});
  expect_error([&] { fwd({1, 2, 4, 0}, P.view(), u.data(), y.data()); }, {"cema_forward", "N"});
  expect_error([&] { fwd({1, 2, 4, 65}, P.view(), u.data(), y.data()); }, {"cema_forward", "N", "64"});
  auto bad = P.view();
  bad.theta = nullptr;
  expect_error([&] { fwd({1, 2, 4, 2}, bad, u.data(), y.data()); }, {"cema_forward", "theta"});
  expect_error([&] { fwd({1, 2, 4, 2}, P.view(), nullptr, y.data()); }, {"cema_forward", "u"});
  expect_error([&] { fwd({1, 2, 4, 2}, P.view(), u.data(), nullptr); }, {"cema_forward", "y"});
  ops::CemaCoeffs<double> c;
  ops::cema_coeffs(cpu{}, P.view(), 4, 2, c);
  expect_error(
      [&] {
        ops::cema_forward(cpu{}, CemaDims{1, 2, 4, 3}, c, P.omega.data(), u.data(), nullptr, y.data(),
                          nullptr);
      },
      {"cema_forward", "coeffs"});
  expect_error(
      [&] {
        ops::cema_forward(cpu{}, CemaDims{1, 2, 4, 2}, c, nullptr, u.data(), nullptr, y.data(), nullptr);
      },
      {"cema_forward", "omega"});
  auto bwd = [&](CemaDims dm, const double* dyy, double* duu) {
    ops::cema_backward(cpu{}, dm, P.view(), u.data(), nullptr, dyy, nullptr, duu, nullptr,
                       ops::CemaGrads<double>{nullptr, nullptr, nullptr, nullptr, nullptr});
  };
  expect_error([&] { bwd({1, 2, 4, 2}, nullptr, du.data()); }, {"cema_backward", "dy"});
  expect_error([&] { bwd({1, 2, 4, 2}, dy.data(), nullptr); }, {"cema_backward", "du"});
  expect_error([&] { bwd({1, -2, 4, 2}, dy.data(), du.data()); }, {"cema_backward", "L"});
  expect_error([&] { ops::cema_coeffs(cpu{}, P.view(), 4, 100, c); }, {"cema_coeffs", "N"});
}

#ifdef _OPENMP
#include <omp.h>

TEST(Cema, ThreadCountInvariant) {
  // Large enough for the OpenMP paths; every thread count must give bit-identical results (no races, fixed
  // reduction order).
  Rng rng(9);
  const CemaDims dm{3, 200, 70, 8};
  Params<double> P(dm.D, dm.N, rng, true);
  std::vector<std::vector<float>> store;
  const auto Pf = view_as<float>(P, store);
  const auto u = randn<float>(dm.B * dm.L * dm.D, rng), dy = randn<float>(dm.B * dm.L * dm.D, rng);
  const std::vector<std::complex<float>> hx(dm.B * dm.D * dm.N, {0.3f, -0.1f}), dh(hx.size(), {-0.2f, 0.4f});
  auto run = [&](CemaMode mode, int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> y(u.size()), du(u.size()), ga(P.alpha.size()), gd(P.delta.size()), gt(P.theta.size()),
        gg(P.gamma.size()), go(P.omega.size());
    std::vector<std::complex<float>> h(hx.size()), dhx(hx.size());
    ops::cema_forward(cpu{}, dm, Pf, u.data(), hx.data(), y.data(), h.data(), mode);
    ops::cema_backward(cpu{}, dm, Pf, u.data(), hx.data(), dy.data(), dh.data(), du.data(), dhx.data(),
                       {ga.data(), gd.data(), gt.data(), gg.data(), go.data()}, mode);
    omp_set_num_threads(saved);
    std::vector<float> all = y;
    for (auto* v : {&du, &ga, &gd, &gt, &gg, &go}) all.insert(all.end(), v->begin(), v->end());
    for (auto* v : {&h, &dhx}) all.insert(all.end(), re(*v), re(*v) + 2 * v->size());
    return all;
  };
  for (CemaMode mode : {CemaMode::Scan, CemaMode::Fft}) {
    const auto one = run(mode, 1);
    EXPECT_EQ(run(mode, 2), one);
    EXPECT_EQ(run(mode, 3), one);
  }
}
#endif
