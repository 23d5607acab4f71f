// CPU attention forward / backward (tessera::ops::attention_forward / attention_backward) for the lm app's
// shape (B=16, T=128, 6 query heads, 2 kv heads, Dh=32) and long sequences (T=1024, 2048) with causal and
// sliding-window (W=256) masks. Counters: tokens/s (B*T per call) and GFLOP/s of the USEFUL work only:
// forward 4*Dh per allowed (query, key) pair (QK^T and PV), backward 8*Dh (dV, dP, dQ, dK); the backward's
// recomputation of QK^T (twice: once per pass) is not counted.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/ops/attention.hpp"

namespace {

using tessera::cpu;
namespace ops = tessera::ops;

std::vector<float> random_buffer(int64_t n, uint64_t seed) {
  tessera::Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

/// Allowed (query, key) pairs per (batch, head) of a causal mask limited to the last W keys (W = 0: causal).
double allowed_pairs(int64_t T, int64_t W) {
  double n = 0;
  for (int64_t i = 0; i < T; ++i) n += double(W > 0 ? std::min(i + 1, W) : i + 1);
  return n;
}

struct Problem {
  ops::AttnDims d{};
  std::vector<float> q, k, v, o, lse, dout, dq, dk, dv;
  Problem(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t Dh) {
    d.B = B;
    d.Tq = d.Tk = T;
    d.Hq = Hq;
    d.Hkv = Hkv;
    d.Dh = Dh;
    d.q_stride = d.o_stride = Hq * Dh;
    d.k_stride = d.v_stride = Hkv * Dh;
    d.scale = 1.0 / std::sqrt(double(Dh));
    q = random_buffer(B * T * Hq * Dh, 1);
    k = random_buffer(B * T * Hkv * Dh, 2);
    v = random_buffer(B * T * Hkv * Dh, 3);
    dout = random_buffer(B * T * Hq * Dh, 4);
    o.resize(q.size());
    dq.resize(q.size());
    dk.resize(k.size());
    dv.resize(v.size());
    lse.resize(static_cast<size_t>(B * Hq * T));
  }
};

template <class Mask>
void set_counters(benchmark::State& state, const Problem& p, int64_t W, double flop_per_pair_dim) {
  const auto& d = p.d;
  const double flop = flop_per_pair_dim * double(d.Dh) * double(d.B * d.Hq) * allowed_pairs(d.Tq, W);
  const double iters = double(state.iterations());
  state.counters["tokens/s"] = benchmark::Counter(double(d.B * d.Tq) * iters, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flop * 1e-9 * iters, benchmark::Counter::kIsRate);
}

template <class Mask>
void bench_forward(benchmark::State& state, int64_t B, int64_t T, Mask mask, int64_t W) {
  Problem p(B, T, 6, 2, 32);
  for (auto _ : state) {
    ops::attention_forward(cpu{}, p.d, mask, p.q.data(), p.k.data(), p.v.data(), p.o.data(), p.lse.data());
    benchmark::DoNotOptimize(p.o.data());
    benchmark::ClobberMemory();
  }
  set_counters<Mask>(state, p, W, 4.0);
}

template <class Mask>
void bench_backward(benchmark::State& state, int64_t B, int64_t T, Mask mask, int64_t W) {
  Problem p(B, T, 6, 2, 32);
  ops::attention_forward(cpu{}, p.d, mask, p.q.data(), p.k.data(), p.v.data(), p.o.data(), p.lse.data());
  for (auto _ : state) {
    ops::attention_backward(cpu{}, p.d, mask, p.q.data(), p.k.data(), p.v.data(), p.o.data(), p.lse.data(),
                            p.dout.data(), p.dq.data(), p.dk.data(), p.dv.data());
    benchmark::DoNotOptimize(p.dq.data());
    benchmark::ClobberMemory();
  }
  set_counters<Mask>(state, p, W, 8.0);
}

template <class Mask>
void add(const std::string& mask_name, int64_t B, int64_t T, Mask mask, int64_t W) {
  const std::string shape = "/B" + std::to_string(B) + "_T" + std::to_string(T) + "_H6_KV2_D32";
  benchmark::RegisterBenchmark(("attention_fwd/" + mask_name + shape).c_str(),
                               [=](benchmark::State& s) { bench_forward(s, B, T, mask, W); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark(("attention_bwd/" + mask_name + shape).c_str(),
                               [=](benchmark::State& s) { bench_backward(s, B, T, mask, W); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

const bool registered = [] {
  add("causal", 16, 128, ops::mask::Causal{}, 0);  // the lm app's training shape
  for (int64_t T : {1024, 2048}) {
    const int64_t B = 2048 / T;  // 2048 tokens per call, like the app's batch
    add("causal", B, T, ops::mask::Causal{}, 0);
    add("window256", B, T, ops::mask::SlidingWindow{256}, 256);
  }
  return true;
}();

}  // namespace
