// One Megalodon training step (forward, backward, clip, AdamW) and cached decoding, timed on random bytes, for
// the comparison with the official PyTorch code in benchmarks/compare_megalodon_official.py (same config, same
// batch, same threads). Prints one JSON line.
//   megalodon_step --config benchmarks/configs/mvl_megalodon.json [--batch 8] [--seq 256] [--steps 20]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "tessera/io/json_config.hpp"
#include "tessera/models/megalodon/megalodon.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/clip.hpp"

using namespace tessera;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  CLI::App app{"time a Megalodon training step and cached decoding"};
  std::string config;
  int64_t batch = 8, seq = 256, steps = 20, warmup = 3, prompt = 256, decode = 200;
  app.add_option("--config", config, "JSON with a `model` section (official ModelConf names)")->required();
  app.add_option("--batch", batch);
  app.add_option("--seq", seq);
  app.add_option("--steps", steps, "timed training steps");
  app.add_option("--warmup", warmup, "untimed steps first");
  app.add_option("--prompt", prompt, "prefill length before decoding");
  app.add_option("--decode", decode, "tokens decoded one at a time");
  CLI11_PARSE(app, argc, argv);
  try {
    const auto j = io::read_json_file(config);
    const auto cfg = models::MegalodonConfig::from_json(io::require<nlohmann::json>(j, "model", config), "model");
    models::Megalodon<float> m(cfg);
    Rng rng(1);
    m.init(rng);
    allocate_grads(m);
    train::AdamW<float> opt({1e-3, 0.9, 0.98, 1e-8, 0.1}, [](const std::string&, const Shape&) { return true; });
    std::vector<int64_t> ids(static_cast<size_t>(batch * seq)), targets(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(rng.below(256));
    for (size_t i = 0; i < ids.size(); ++i) targets[i] = ids[(i + 1) % ids.size()];
    double loss = 0;
    const auto step = [&] {
      zero_grads(m);
      m.forward(ids.data(), batch, seq);
      loss = m.loss(targets.data());
      m.backward(targets.data());
      train::clip_grad_norm(m, 1.0);
      opt.step(m);
    };
    for (int64_t i = 0; i < warmup; ++i) step();
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < steps; ++i) step();
    const double step_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / double(steps);

    auto state = m.make_state(1);
    typename models::Megalodon<float>::StreamScratch scratch;
    m.forward_stream(ids.data(), prompt, state, scratch);
    int64_t id = 65;
    const auto t1 = Clock::now();
    for (int64_t i = 0; i < decode; ++i) {
      const auto& lg = m.forward_stream(&id, 1, state, scratch);
      id = static_cast<int64_t>(std::max_element(lg.begin(), lg.end()) - lg.begin());
    }
    const double tok_ms = std::chrono::duration<double, std::milli>(Clock::now() - t1).count() / double(decode);
    std::printf("{\"impl\": \"tessera\", \"params\": %lld, \"step_ms\": %.3f, \"tokens_per_s\": %.1f, "
                "\"decode_ms_per_token\": %.4f, \"loss\": %.4f}\n",
                static_cast<long long>(count_params(m)), step_ms, double(batch * seq) / step_ms * 1e3, tok_ms, loss);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
