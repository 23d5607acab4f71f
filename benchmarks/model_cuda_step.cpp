// Whole-model training steps on the GPU (scripts/gpu-check runs it after bench_cuda; the PyTorch side of the
// same shapes is benchmarks/compare_gpu_torch.py, run in the same check):
//   model_cuda_step llama      [--layers 25 --dim 2048 --heads 16 --ffn 5632 --batch 4 --seq 4096]
//   model_cuda_step megalodon  [--layers 4 --dim 1024 --batch 4 --seq 4096]
// One step = forward + cross-entropy + backward + global-norm clip + AdamW (fp32 master weights and state), all
// on the device; the loss is the step's only host synchronisation. Weights: N(0, 0.02) matrices from a
// fixed-seed pool, uploaded once. Prints one markdown row per model (same columns as
// compare_gpu_torch.py) and a JSON line; exits 1 when the loss is not finite.
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/core/transfer.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/models/megalodon/megalodon.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/clip.hpp"

using namespace tessera;
using Clock = std::chrono::steady_clock;

namespace {

/// Matrices ~ N(0, 0.02): windows of one pool of 2^22 normal draws (fixed seed) at random offsets, uploaded —
/// drawing 1.3 B separate normals on the host would take longer than the benchmark; timing does not depend
/// on the values as long as they are sane. Vectors keep their setup values (norm gains 1).
template <class Model>
void init_on_device(Model& m, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> pool(size_t{1} << 22);
  for (auto& v : pool) v = static_cast<float>(rng.normal() * 0.02);
  std::vector<float> host;
  for_each_param(m, [&](const std::string&, auto& p) {
    if (p.value.rank() < 2) return;
    host.resize(static_cast<size_t>(p.value.numel()));
    for (size_t i = 0; i < host.size();) {
      const size_t off = static_cast<size_t>(rng.below(pool.size() / 2));
      const size_t n = std::min(pool.size() - off, host.size() - i);
      std::copy_n(pool.begin() + static_cast<std::ptrdiff_t>(off), n, host.begin() + static_cast<std::ptrdiff_t>(i));
      i += n;
    }
    cuda_mem::to_device(p.value.data(), host.data(), host.size() * sizeof(float));
  });
}

struct Timing {
  double median_ms = 0, min_ms = 0, loss = 0;
};

/// Runs `warmup` + `steps` steps of step() (which returns the loss) and times each with a device sync.
template <class F>
Timing time_steps(F&& step, int64_t warmup, int64_t steps) {
  Timing t;
  for (int64_t i = 0; i < warmup; ++i) t.loss = step();
  cudaDeviceSynchronize();
  std::vector<double> ms;
  for (int64_t i = 0; i < steps; ++i) {
    const auto t0 = Clock::now();
    t.loss = step();
    cudaDeviceSynchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  t.median_ms = ms[ms.size() / 2];
  t.min_ms = ms.front();
  return t;
}

/// Random token ids and next-token targets, uploaded.
struct DeviceBatch {
  Tensor<int64_t, cuda> ids, targets;
  DeviceBatch(int64_t rows, int64_t vocab, uint64_t seed) {
    Rng rng(seed);
    Tensor<int64_t> h_ids({rows}), h_tgt({rows});
    for (int64_t i = 0; i < rows; ++i) h_ids[i] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
    for (int64_t i = 0; i < rows; ++i) h_tgt[i] = h_ids[(i + 1) % rows];
    copy_tensor(ids, h_ids);
    copy_tensor(targets, h_tgt);
  }
};

int report(const char* what, const std::string& shape, int64_t params, int64_t tokens, double flops,
           const Timing& t, double peak_tflops) {
  const double s = t.median_ms / 1e3;
  std::printf("| tessera %s step fp32 (CUDA) | %s | %.1f ms | %.0f tok/s, %.1f TFLOP/s (%.1f%% of %.0f) |\n", what,
              shape.c_str(), t.median_ms, double(tokens) / s, flops / s / 1e12, flops / s / 1e12 / peak_tflops * 100,
              peak_tflops);
  std::printf("json: {\"model\": \"%s\", \"params\": %lld, \"tokens\": %lld, \"median_ms\": %.3f, \"min_ms\": %.3f, "
              "\"tokens_per_s\": %.1f, \"loss\": %.6f}\n",
              what, static_cast<long long>(params), static_cast<long long>(tokens), t.median_ms, t.min_ms,
              double(tokens) / s, t.loss);
  std::fflush(stdout);
  if (!std::isfinite(t.loss)) {
    std::printf("| tessera %s step | FAILED: loss %f is not finite | - | - |\n", what, t.loss);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"time whole-model training steps on the GPU"};
  std::string which = "llama";
  int64_t layers = 25, dim = 2048, heads = 16, ffn = 5632, batch = 4, seq = 4096, steps = 5, warmup = 2;
  double peak = 989.0;
  app.add_option("model", which, "llama | megalodon")->check(CLI::IsMember({"llama", "megalodon"}));
  app.add_option("--layers", layers);
  app.add_option("--dim", dim);
  app.add_option("--heads", heads);
  app.add_option("--ffn", ffn);
  app.add_option("--batch", batch);
  app.add_option("--seq", seq);
  app.add_option("--steps", steps, "timed steps (median reported)");
  app.add_option("--warmup", warmup);
  app.add_option("--peak-tflops", peak, "dense bf16 peak of the card, for the utilisation column");
  CLI11_PARSE(app, argc, argv);
  if (cuda_mem::device_count() == 0) {
    std::printf("model_cuda_step: no CUDA device, skipping\n");
    return 0;
  }
  try {
    const int64_t rows = batch * seq;
    if (which == "llama") {
      models::LlamaConfig cfg;
      cfg.vocab_size = 256, cfg.dim = dim, cfg.n_layers = layers, cfg.n_heads = heads, cfg.ffn_hidden = ffn;
      models::Llama<float, cuda> m(cfg);
      init_on_device(m, 1);
      allocate_grads(m);
      const int64_t params = count_params(m);
      train::AdamW<float, cuda> opt({1e-4, 0.9, 0.95, 1e-8, 0.1});
      DeviceBatch data(rows, cfg.vocab_size, 2);
      const auto step = [&] {
        zero_grads(m);
        m.forward(data.ids.data(), batch, seq);
        const double loss = m.loss(data.targets.data());
        m.backward(data.targets.data());
        train::clip_grad_norm(m, 1.0);
        opt.step(m);
        return loss;
      };
      const Timing t = time_steps(step, warmup, steps);
      const double flops = 6.0 * double(params) * double(rows) +
                           3.0 * double(layers) * 4.0 * double(dim) * double(batch) * double(seq) * double(seq + 1) / 2;
      const std::string shape = "d" + std::to_string(dim) + " L" + std::to_string(layers) + " H" +
                                std::to_string(heads) + " ffn" + std::to_string(ffn) + ", " + std::to_string(batch) +
                                "x" + std::to_string(seq);
      return report("Llama", shape, params, rows, flops, t, peak);
    }
    models::MegalodonConfig cfg;
    cfg.num_layers = layers, cfg.model_dim = dim, cfg.vocab_size = 256;
    cfg.num_heads = std::max<int64_t>(1, dim / 256), cfg.z_dim = dim / 4, cfg.value_dim = dim;  // v head <= 256
    cfg.ffn_hidden_dim = ffn, cfg.chunk_size = std::min<int64_t>(seq, 2048), cfg.norm_num_groups = 32;
    cfg.validate();
    models::Megalodon<float, cuda> m(cfg);
    init_on_device(m, 1);
    allocate_grads(m);
    const int64_t params = count_params(m);
    train::AdamW<float, cuda> opt({1e-4, 0.9, 0.95, 1e-8, 0.1});
    DeviceBatch data(rows, cfg.vocab_size, 2);
    const auto step = [&] {
      zero_grads(m);
      m.forward(data.ids.data(), batch, seq);
      const double loss = m.loss(data.targets.data());
      m.backward(data.targets.data());
      train::clip_grad_norm(m, 1.0);
      opt.step(m);
      return loss;
    };
    const Timing t = time_steps(step, warmup, steps);
    const std::string shape = "d" + std::to_string(dim) + " L" + std::to_string(layers) + ", " +
                              std::to_string(batch) + "x" + std::to_string(seq) + ", chunk " +
                              std::to_string(cfg.chunk_size);
    return report("Megalodon", shape, params, rows, 6.0 * double(params) * double(rows), t, peak);
  } catch (const std::exception& e) {
    std::printf("| tessera %s step | FAILED: %s | - | - |\n", which.c_str(), e.what());
    return 1;
  }
}
