// CPU fp32 GEMM through tessera::ops::gemm (Eigen, routed to OpenBLAS when built with TESSERA_USE_BLAS):
// square sizes and the exact products of a training step of the lm app's default model.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/ops/matmul.hpp"

namespace {

using tessera::cpu;

std::vector<float> random_buffer(int64_t n, uint64_t seed) {
  tessera::Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.uniform() - 0.5);
  return v;
}

/// C[M,N] = op(A) op(B), packed (lda/ldb/ldc = the stored row lengths). Counter: GFLOP/s on 2*M*N*K.
void run_gemm(benchmark::State& state, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float beta) {
  const auto a = random_buffer(M * K, 1), b = random_buffer(K * N, 2);
  auto c = random_buffer(M * N, 3);
  const int64_t lda = ta ? M : K, ldb = tb ? K : N;
  for (auto _ : state) {
    tessera::ops::gemm(cpu{}, ta, tb, M, N, K, 1.0f, a.data(), lda, b.data(), ldb, beta, c.data(), N);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(M) * double(N) * double(K) * 1e-9 * double(state.iterations()),
                         benchmark::Counter::kIsRate);
}

void add(const std::string& name, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float beta) {
  benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { run_gemm(s, ta, tb, M, N, K, beta); })
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();  // BLAS threads do the work: CPU time of the main thread would flatter multi-thread runs
}

/// Forward y = x W^T (NT), backward dx = dy W (NN) and dW += dy^T x (TN, beta = 1) of Linear(in -> out)
/// over `rows` tokens: exactly the gemm calls of ops::linear_forward / linear_backward.
void add_linear(const std::string& what, int64_t rows, int64_t in, int64_t out) {
  const std::string shape = std::to_string(rows) + "x" + std::to_string(in) + "->" + std::to_string(out);
  add("gemm_linear/" + what + "/fwd_NT/" + shape, false, true, rows, out, in, 0.0f);
  add("gemm_linear/" + what + "/bwd_dx_NN/" + shape, false, false, rows, in, out, 0.0f);
  add("gemm_linear/" + what + "/bwd_dW_TN/" + shape, true, false, out, in, rows, 1.0f);
}

const bool registered = [] {
  for (int64_t n : {128, 256, 512, 1024, 2048}) add("gemm_square/NN/" + std::to_string(n), false, false, n, n, n, 0.0f);
  // apps/lm/default.json: batch 16 x seq 128 = 2048 token rows, dim 192, 6 heads x 32 (2 kv heads), ffn 512,
  // vocab 256.
  const int64_t rows = 2048;
  add_linear("q_o_proj", rows, 192, 192);
  add_linear("kv_proj", rows, 192, 64);
  add_linear("gate_up_proj", rows, 192, 512);
  add_linear("down_proj", rows, 512, 192);
  add_linear("lm_head", rows, 192, 256);
  return true;
}();

}  // namespace
