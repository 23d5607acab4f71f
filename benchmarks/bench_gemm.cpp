// CPU fp32 GEMM through tessera::ops::gemm (Eigen, routed to OpenBLAS when built with TESSERA_USE_BLAS):
// square sizes and the exact products of a training step of the lm app's default model. Then decoding-size
// products (1 to 64 rows) with weights that do not stay in cache, in GB/s of weights read: the GEMM
// (ops::gemm: OpenBLAS's sgemv / sgemm), fp32 ops::linear_forward (the streamed product up to 16 rows, the
// GEMM beyond) and bf16 weights (ops::linear_forward_bf16_weight).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tessera/core/dtype.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/ops/bf16_weight_product.hpp"
#include "tessera/ops/elementwise.hpp"
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

enum class DecodeRoute { gemm, linear_fp32, linear_bf16 };

/// y [rows, out] = x [rows, in] Wᵀ over `copies` distinct weights (together >= 256 MB of fp32, beyond any
/// cache), one per iteration in turn, as a decoding step walks its layers. Counters: GB/s of weight bytes
/// read, GFLOP/s.
void run_decode_product(benchmark::State& state, DecodeRoute route, int64_t rows, int64_t in, int64_t out) {
  const bool bf16_weights = route == DecodeRoute::linear_bf16;
  const int64_t per = in * out, copies = std::max<int64_t>(2, (int64_t{256} << 20) / (4 * per));
  const auto w32 = random_buffer(per * copies, 4);
  std::vector<tessera::bf16> w16;
  if (bf16_weights) {
    w16.resize(w32.size());
    tessera::ops::cast(cpu{}, w16.data(), w32.data(), per * copies);
  }
  const auto x = random_buffer(rows * in, 5);
  std::vector<float> y(static_cast<size_t>(rows * out));
  int64_t i = 0;
  for (auto _ : state) {
    const int64_t c = i++ % copies;
    if (bf16_weights)
      tessera::ops::linear_forward_bf16_weight(cpu{}, y.data(), x.data(), w16.data() + c * per, nullptr, rows,
                                               in, out);
    else if (route == DecodeRoute::gemm)
      tessera::ops::gemm(cpu{}, false, true, rows, out, in, 1.0f, x.data(), in, w32.data() + c * per, in,
                         0.0f, y.data(), out);
    else
      tessera::ops::linear_forward(cpu{}, y.data(), x.data(), w32.data() + c * per,
                                   static_cast<const float*>(nullptr), rows, in, out);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double n = double(state.iterations());
  state.counters["GB/s"] =
      benchmark::Counter(double(per) * (bf16_weights ? 2 : 4) * 1e-9 * n, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(rows) * double(per) * 1e-9 * n, benchmark::Counter::kIsRate);
}

void add_decode(const std::string& what, int64_t rows, int64_t in, int64_t out) {
  for (const auto& [route, label] :
       {std::pair{DecodeRoute::gemm, "gemm_fp32/"}, std::pair{DecodeRoute::linear_fp32, "linear_fp32/"},
        std::pair{DecodeRoute::linear_bf16, "linear_bf16_weights/"}}) {
    const std::string name = std::string("decode_product/") + label + what + "/" + std::to_string(rows) +
                             "x" + std::to_string(in) + "->" + std::to_string(out);
    const DecodeRoute r = route;
    benchmark::RegisterBenchmark(name.c_str(),
                                 [=](benchmark::State& s) { run_decode_product(s, r, rows, in, out); })
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
  }
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
  // Decoding: the global model of benchmarks/compare_blt_hf.py's 278 M BLT (d 1024, FFN 2816) and of BLT-1B
  // (d 2048, FFN 5632); one row (batch-1 decoding), a few rows, and 64 (the widened-panel route).
  for (const int64_t r : {1, 4, 64}) {
    add_decode("blt278m_gate_up", r, 1024, 2816);
    add_decode("blt278m_down", r, 2816, 1024);
  }
  add_decode("blt1b_gate_up", 1, 2048, 5632);
  add_decode("blt1b_qkvo", 1, 2048, 2048);
  return true;
}();

}  // namespace
