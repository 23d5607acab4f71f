// One full training step of the lm app's default model (apps/lm/default.json): zero grads, forward, loss,
// backward, clip_grad_norm(1.0), AdamW — the Trainer's step without data loading or logging. Also the phases
// alone (forward+loss, forward+loss+backward, clip+AdamW) to see where the time goes.
// Each benchmark iteration is ONE step; 15 repetitions are reported as mean/median/stddev (the median is the
// number to quote, as compare_pytorch.py does). Counters: tokens/s (B*T per step) and time/step.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/layers/init.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/clip.hpp"

namespace {

using namespace tessera;

constexpr int64_t kBatch = 16, kSeq = 128;

models::LlamaConfig app_config() {
  models::LlamaConfig c;  // apps/lm/default.json "model"
  c.vocab_size = 256;
  c.dim = 192;
  c.n_layers = 4;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.ffn_hidden = 512;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

/// Model, optimizer and one fixed batch, shared by every benchmark and warmed up once.
struct Setup {
  models::Llama<float> model;
  train::AdamW<float> opt;
  std::vector<int64_t> ids, targets;

  Setup()
      : model(app_config()),
        opt(train::AdamWConfig{.lr = 2e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1}) {
    Rng rng(1);
    init_normal(model, rng, 0.02);
    allocate_grads(model);
    // Next-byte prediction on a random byte stream: cost does not depend on the values.
    std::vector<int64_t> stream(static_cast<size_t>(kBatch * kSeq + 1));
    for (auto& b : stream) b = static_cast<int64_t>(rng.below(256));
    ids.assign(stream.begin(), stream.end() - 1);
    targets.assign(stream.begin() + 1, stream.end());
    for (int i = 0; i < 3; ++i) step();  // warm-up: buffers sized, optimizer state created, caches hot
  }
  double forward_loss() {
    model.forward(ids.data(), kBatch, kSeq);
    return model.loss(targets.data());
  }
  double forward_backward() {
    zero_grads(model);
    const double loss = forward_loss();
    model.backward(targets.data());
    return loss;
  }
  void clip_adamw() {
    train::clip_grad_norm(model, 1.0);
    opt.step(model, 2e-3);
  }
  double step() {
    const double loss = forward_backward();
    clip_adamw();
    return loss;
  }
};

Setup& setup() {
  static Setup s;
  return s;
}

void set_counters(benchmark::State& state) {
  const double it = double(state.iterations());
  state.counters["tokens/s"] = benchmark::Counter(double(kBatch * kSeq) * it, benchmark::Counter::kIsRate);
  // kIsRate | kInvert reports elapsed seconds / iterations, printed with an SI prefix (e.g. "483ms").
  state.counters["time/step"] = benchmark::Counter(it, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_train_step(benchmark::State& state) {
  auto& s = setup();
  for (auto _ : state) benchmark::DoNotOptimize(s.step());
  set_counters(state);
  state.counters["params"] = double(count_params(s.model));
}
void BM_forward_loss(benchmark::State& state) {
  auto& s = setup();
  for (auto _ : state) benchmark::DoNotOptimize(s.forward_loss());
  set_counters(state);
}
void BM_forward_backward(benchmark::State& state) {
  auto& s = setup();
  for (auto _ : state) benchmark::DoNotOptimize(s.forward_backward());
  set_counters(state);
}
void BM_clip_adamw(benchmark::State& state) {
  auto& s = setup();
  for (auto _ : state) s.clip_adamw();
  set_counters(state);
}

#define TESSERA_STEP_BENCH(fn) \
  BENCHMARK(fn)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1)->Repetitions(15)->ReportAggregatesOnly()

TESSERA_STEP_BENCH(BM_train_step);
TESSERA_STEP_BENCH(BM_forward_loss);
TESSERA_STEP_BENCH(BM_forward_backward);
TESSERA_STEP_BENCH(BM_clip_adamw);

}  // namespace
