// CPU CEMA (Scan vs Fft) and TimestepNorm, float, Megalodon-7B-like channel count: D=1024, N=16, B=1, G=32,
// L in {256, 1024, 4096, 16384}. Run with OMP_NUM_THREADS=1 to measure the per-core cost the Auto crossover
// in include/tessera/ops/cema.hpp is chosen from. Two CEMA parameter sets (second argument):
//   0 "init": the official initialisation (alpha, delta ~ N(0, 0.2^2): |q| ~ 0.75, the FFT path's powers die
//   out
//      after ~150 steps and are skipped);
//   1 "long": every state with |q| ~ 0.998 (long memory, the FFT path's worst case: all L powers are live).
// Counter: seconds per token (per row of D channels).
#include <benchmark/benchmark.h>

#include <cmath>
#include <complex>
#include <cstdint>
#include <utility>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/ops/cema.hpp"
#include "tessera/ops/timestep_norm.hpp"

namespace {

using tessera::cpu;
namespace ops = tessera::ops;

constexpr int64_t kD = 1024, kN = 16, kB = 1, kG = 32;

std::vector<float> randn(int64_t n, uint64_t seed, double scale = 1.0, double mean = 0.0) {
  tessera::Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(mean + scale * rng.normal());
  return v;
}

struct CemaSetup {
  std::vector<float> alpha, delta, theta, gamma, omega, u, dy, y, du, ga, gd, gt, gg, go;
  std::vector<std::complex<float>> hx, h, dh, dhx;
  ops::CemaDims dm;
  CemaSetup(int64_t L, bool long_memory) : dm{kB, L, kD, kN} {
    alpha = randn(kD * kN, 1, 0.2);
    delta = randn(kD * kN, 2, 0.2);
    if (long_memory) {
      alpha = randn(kD * kN, 1, 0.2, -3.0);
      delta = randn(kD * kN, 2, 0.2, -3.0);
    }
    theta.resize(kD);
    for (int64_t d = 0; d < kD; ++d) {  // the official init: sigmoid(theta_d) = D^{-(d+1)/D}
      const double f = std::exp(-(d + 1) * std::log(double(kD)) / kD);
      theta[d] = static_cast<float>(std::log(f / (1 - f)));
    }
    gamma = randn(kD * kN * 2, 3);
    omega = randn(kD, 4, 0.25);
    u = randn(kB * L * kD, 5);
    dy = randn(kB * L * kD, 6);
    y.resize(u.size());
    du.resize(u.size());
    ga.resize(alpha.size());
    gd.resize(delta.size());
    gt.resize(theta.size());
    gg.resize(gamma.size());
    go.resize(omega.size());
    hx.assign(kB * kD * kN, {0.1f, -0.2f});
    h.resize(hx.size());
    dh.assign(hx.size(), {0.3f, 0.1f});
    dhx.resize(hx.size());
  }
  ops::CemaParams<float> params() const {
    return {alpha.data(), delta.data(), theta.data(), gamma.data(), omega.data()};
  }
  void forward(ops::CemaMode mode) {
    ops::cema_forward(cpu{}, dm, params(), u.data(), hx.data(), y.data(), h.data(), mode);
  }
  void backward(ops::CemaMode mode) {
    ops::cema_backward(cpu{}, dm, params(), u.data(), hx.data(), dy.data(), dh.data(), du.data(), dhx.data(),
                       {ga.data(), gd.data(), gt.data(), gg.data(), go.data()}, mode);
  }
};

void set_counters(benchmark::State& st, int64_t L) {
  st.counters["s/token"] =
      benchmark::Counter(static_cast<double>(kB * L),
                         benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

template <ops::CemaMode Mode>
void BM_CemaForward(benchmark::State& st) {
  const int64_t L = st.range(0);
  CemaSetup s(L, st.range(1) != 0);
  for (auto _ : st) {
    s.forward(Mode);
    benchmark::DoNotOptimize(s.y.data());
  }
  set_counters(st, L);
}

template <ops::CemaMode Mode>
void BM_CemaForwardBackward(benchmark::State& st) {
  const int64_t L = st.range(0);
  CemaSetup s(L, st.range(1) != 0);
  for (auto _ : st) {
    s.forward(Mode);
    s.backward(Mode);
    benchmark::DoNotOptimize(s.du.data());
  }
  set_counters(st, L);
}

/// One decoding step (L = 1, Scan) through cached coefficients, state carried in place of hx.
void BM_CemaDecodeStep(benchmark::State& st) {
  CemaSetup s(1, false);
  ops::CemaCoeffs<float> c;
  ops::cema_coeffs(cpu{}, s.params(), kD, kN, c);
  for (auto _ : st) {
    ops::cema_forward(cpu{}, s.dm, c, s.omega.data(), s.u.data(), s.hx.data(), s.y.data(), s.h.data(),
                      ops::CemaMode::Scan);
    std::swap(s.hx, s.h);
    benchmark::DoNotOptimize(s.y.data());
  }
  set_counters(st, 1);
}

void BM_TsnForwardBackward(benchmark::State& st) {
  const int64_t L = st.range(0);
  const ops::TsnDims dm{kB, L, kD, kG};
  const auto x = randn(kB * L * kD, 7, 1.3, 0.5), dy = randn(kB * L * kD, 8);
  const auto w = randn(kD, 9, 0.3), b = randn(kD, 10, 0.3);
  std::vector<float> y(x.size()), dx(x.size()), cm(kB * L * kG), cr(kB * L * kG), mean(kB * kG), var(kB * kG),
      dw(kD), db(kD);
  for (auto _ : st) {
    ops::timestep_norm_forward(cpu{}, dm, x.data(), nullptr, nullptr, nullptr, w.data(), b.data(), 1e-5,
                               y.data(), nullptr, mean.data(), var.data(), cm.data(), cr.data());
    ops::timestep_norm_backward(cpu{}, dm, dy.data(), nullptr, nullptr, x.data(), nullptr, nullptr, cm.data(),
                                cr.data(), w.data(), dx.data(), nullptr, nullptr, dw.data(), db.data());
    benchmark::DoNotOptimize(dx.data());
  }
  set_counters(st, L);
}

void cema_args(benchmark::internal::Benchmark* b) {
  for (int64_t p : {0, 1})
    for (int64_t L : {256, 1024, 4096, 16384}) b->Args({L, p});
  b->ArgNames({"L", "long"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_CemaForward<ops::CemaMode::Scan>)->Apply(cema_args);
BENCHMARK(BM_CemaForward<ops::CemaMode::Fft>)->Apply(cema_args);
BENCHMARK(BM_CemaForwardBackward<ops::CemaMode::Scan>)->Apply(cema_args);
BENCHMARK(BM_CemaForwardBackward<ops::CemaMode::Fft>)->Apply(cema_args);
BENCHMARK(BM_CemaDecodeStep)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_TsnForwardBackward)
    ->ArgName("L")
    ->Arg(256)
    ->Arg(1024)
    ->Arg(4096)
    ->Arg(16384)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
