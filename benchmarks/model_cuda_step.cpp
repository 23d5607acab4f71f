// Whole-model training steps on the GPU (scripts/gpu-check runs it after bench_cuda; the PyTorch side of the
// same shapes is benchmarks/compare_gpu_torch.py, run in the same check):
//   model_cuda_step llama      [--layers 25 --dim 2048 --heads 16 --ffn 5632 --batch 4 --seq 4096]
//   model_cuda_step megalodon  [--layers 4 --dim 1024 --batch 4 --seq 4096]
// One step = forward + cross-entropy + backward + global-norm clip + AdamW (fp32 master weights and state;
// the clip coefficient folded into the AdamW kernel, as the Trainer does), all on the device, in fp32 or
// (--precision bf16) with bf16 GEMM / attention operands (layers/precision.hpp); the loss and the gradient
// norm are the step's host synchronisations. Weights: N(0, 0.02) matrices from a fixed-seed pool, uploaded
// once. Prints one markdown row per model (same columns as compare_gpu_torch.py) and a JSON line; exits 1
// when the loss is not finite. Shared helpers (weights, timing, batch): cuda_bench_util.hpp.
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_bench_util.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/models/megalodon/megalodon.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/clip.hpp"

using namespace tessera;

namespace {

using bench::DeviceBatch;
using bench::init_on_device;
using bench::Timing;
using bench::time_steps;

int report(const char* what, const char* precision, const std::string& shape, int64_t params, int64_t tokens,
           double flops, const Timing& t, double peak_tflops) {
  const double s = t.median_ms / 1e3;
  // TESSERA_GEMM_AUTOTUNE=0 (cuda/gemm.cu: cuBLAS's heuristic GEMMs instead of the timed cuBLASLt choice) is
  // named in the row, so that an A/B of the two in one run reads unambiguously.
  const char* tune = std::getenv("TESSERA_GEMM_AUTOTUNE");
  const bool untuned = tune && std::strcmp(tune, "0") == 0;
  const std::string attn = bench::attention_backend_note();
  std::printf(
      "| tessera %s step %s%s%s (CUDA) | %s | %.1f ms | %.0f tok/s, %.1f TFLOP/s (%.1f%% of %.0f) |\n", what,
      precision, untuned ? ", GEMM autotune off" : "", attn.c_str(), shape.c_str(), t.median_ms,
      double(tokens) / s, flops / s / 1e12, flops / s / 1e12 / peak_tflops * 100, peak_tflops);
  std::printf("json: {\"model\": \"%s\", \"precision\": \"%s\", \"params\": %lld, \"tokens\": %lld, \"median_ms\": %.3f, \"min_ms\": %.3f, "
              "\"tokens_per_s\": %.1f, \"loss\": %.6f}\n",
              what, precision, static_cast<long long>(params), static_cast<long long>(tokens), t.median_ms, t.min_ms,
              double(tokens) / s, t.loss);
  std::fflush(stdout);
  if (!std::isfinite(t.loss)) {
    std::printf("| tessera %s step | FAILED: loss %f is not finite | - | - |\n", what, t.loss);
    return 1;
  }
  return 0;
}

/// Milliseconds of f() on the device (median of 3 after one warm-up).
template <class F>
double device_ms(F&& f) {
  f();
  cudaDeviceSynchronize();
  std::vector<double> ms;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    cudaDeviceSynchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[1];
}

/// Where a Llama step's time goes: the step's phases on the whole model, then one block's attention and MLP
/// sublayers (norm + residual included) forward and backward, times the number of layers.
/// `opt` is the step's own optimizer (a second AdamW would allocate a second set of moments: 8 bytes per
/// parameter).
template <class Model, class Data>
void llama_breakdown(Model& m, Data& data, train::AdamW<float, cuda>& opt, int64_t batch, int64_t seq,
                     const std::string& precision) {
  const double fwd = device_ms([&] { m.forward(data.ids.data(), batch, seq); });
  const double bwd = device_ms([&] {
    m.loss(data.targets.data());
    m.backward(data.targets.data());
  });
  const double zero = device_ms([&] { zero_grads(m); });
  float coef = 1.f;
  const double clip = device_ms([&] { coef = train::clip_coefficient(train::grad_norm(m), 1.0); });
  const double adamw = device_ms([&] { opt.step(m, opt.config().lr, coef); });
  std::printf(
      "| tessera Llama step %s phases (CUDA) | forward / loss+backward / zero / grad norm / AdamW with clip "
      "| %.1f / %.1f / "
      "%.1f / %.1f / %.1f ms | - |\n",
      precision.c_str(), fwd, bwd, zero, clip, adamw);
  auto& blk = m.layers.layers[0];
  const int64_t L = static_cast<int64_t>(m.layers.layers.size()), rows = batch * seq, dim = m.config.dim;
  SeqContext ctx;
  ctx.batch = batch, ctx.seq = seq, ctx.window = m.config.window;
  Tensor<float, cuda> x({rows, dim}), y, dy({rows, dim}), dx;
  ops::fill(cuda{}, x.data(), 0.5f, x.numel());
  ops::fill(cuda{}, dy.data(), 1e-3f, dy.numel());
  auto part = [&](const char* name, auto& sub) {
    typename std::remove_reference_t<decltype(sub)>::Saved s;
    const double f = device_ms([&] { sub.forward(ctx, x, y, s); });
    const double b = device_ms([&] { sub.backward(ctx, dy, dx, s); });
    std::printf("| tessera Llama %s sublayer %s (CUDA) | one block, fwd / bwd; x %lld layers | %.2f / %.2f ms | "
                "%.1f ms per step |\n",
                precision.c_str(), name, static_cast<long long>(L), f, b, (f + b) * double(L));
  };
  part("attention", std::get<0>(blk.layers));
  part("mlp", std::get<1>(blk.layers));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"time whole-model training steps on the GPU"};
  std::string which = "llama";
  int64_t layers = 25, dim = 2048, heads = 16, ffn = 5632, batch = 4, seq = 4096, steps = 5, warmup = 2;
  double peak = 989.0;
  std::string precision = "fp32";
  bool breakdown = false;
  app.add_option("model", which, "llama | megalodon")->check(CLI::IsMember({"llama", "megalodon"}));
  app.add_option("--layers", layers);
  app.add_option("--dim", dim);
  app.add_option("--heads", heads);
  app.add_option("--ffn", ffn);
  app.add_option("--batch", batch);
  app.add_option("--seq", seq);
  app.add_option("--steps", steps, "timed steps (median reported)");
  app.add_option("--warmup", warmup);
  app.add_option("--precision", precision, "fp32, or bf16 mixed precision (layers/precision.hpp)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_flag("--breakdown", breakdown, "llama: also time the step's phases and one block's sublayers");
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
      set_compute_precision(m, parse_precision(precision));
      keep_bf16_weight_copies(m);  // bf16: AdamW writes the bf16 weights, the forward does not cast them
      init_on_device(m, 1);
      allocate_grads(m);
      const int64_t params = count_params(m);
      train::AdamW<float, cuda> opt({1e-4, 0.9, 0.95, 1e-8, 0.1});
      DeviceBatch data(rows, cfg.vocab_size, 2);
      const auto step = [&] {
        auto zeroing = zero_grads_async(m);  // on the side stream, alongside the forward
        m.forward(data.ids.data(), batch, seq);
        const double loss = m.loss(data.targets.data());
        zeroing.join();
        m.backward(data.targets.data());
        // Global-norm clip folded into AdamW (the Trainer's step): same update as clip_grad_norm + step.
        opt.step(m, opt.config().lr, train::clip_coefficient(train::grad_norm(m), 1.0));
        return loss;
      };
      const Timing t = time_steps(step, warmup, steps);
      const double flops = 6.0 * double(params) * double(rows) +
                           3.0 * double(layers) * 4.0 * double(dim) * double(batch) * double(seq) * double(seq + 1) / 2;
      const std::string shape = "d" + std::to_string(dim) + " L" + std::to_string(layers) + " H" +
                                std::to_string(heads) + " ffn" + std::to_string(ffn) + ", " + std::to_string(batch) +
                                "x" + std::to_string(seq);
      const int rc = report("Llama", precision.c_str(), shape, params, rows, flops, t, peak);
      if (breakdown) {  // after the step's row, so that a failure here cannot cost it
        try {
          llama_breakdown(m, data, opt, batch, seq, precision);
        } catch (const std::exception& e) {
          std::printf("| tessera Llama step %s phases (CUDA) | FAILED: %s | - | - |\n", precision.c_str(),
                      e.what());
          return 1;
        }
      }
      return rc;
    }
    models::MegalodonConfig cfg;
    cfg.num_layers = layers, cfg.model_dim = dim, cfg.vocab_size = 256;
    cfg.num_heads = std::max<int64_t>(1, dim / 256), cfg.z_dim = dim / 4, cfg.value_dim = dim;  // v head <= 256
    cfg.ffn_hidden_dim = ffn, cfg.chunk_size = std::min<int64_t>(seq, 2048), cfg.norm_num_groups = 32;
    cfg.validate();
    models::Megalodon<float, cuda> m(cfg);
    set_compute_precision(m, parse_precision(precision));
    keep_bf16_weight_copies(m);
    init_on_device(m, 1);
    allocate_grads(m);
    const int64_t params = count_params(m);
    train::AdamW<float, cuda> opt({1e-4, 0.9, 0.95, 1e-8, 0.1});
    DeviceBatch data(rows, cfg.vocab_size, 2);
    const auto step = [&] {
      auto zeroing = zero_grads_async(m);  // on the side stream, alongside the forward
      m.forward(data.ids.data(), batch, seq);
      const double loss = m.loss(data.targets.data());
      zeroing.join();
      m.backward(data.targets.data());
      opt.step(m, opt.config().lr, train::clip_coefficient(train::grad_norm(m), 1.0));
      return loss;
    };
    const Timing t = time_steps(step, warmup, steps);
    const std::string shape = "d" + std::to_string(dim) + " L" + std::to_string(layers) + ", " +
                              std::to_string(batch) + "x" + std::to_string(seq) + ", chunk " +
                              std::to_string(cfg.chunk_size);
    return report("Megalodon", precision.c_str(), shape, params, rows, 6.0 * double(params) * double(rows), t, peak);
  } catch (const std::exception& e) {
    std::printf("| tessera %s step | FAILED: %s | - | - |\n", which.c_str(), e.what());
    return 1;
  }
}
