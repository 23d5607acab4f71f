// BLT cached generation on the CPU for batches of 1, 2, 4, ... prompts: how the cost of a decoding step grows
// with the rows decoded together (the streamed products read each weight once for all rows,
// ops/streamed_product.hpp). Results in benchmarks/RESULTS.md.
//
//   blt_batch_decode -m MODEL_DIR [--precision fp32|bf16] [--batches 1,2,4,8] [-n 64] [--prompt-bytes 128]
//
// MODEL_DIR: a Hugging Face layout BLT (config.json, model.safetensors), e.g. the 278 M model that
// benchmarks/compare_blt_hf.py writes to /work/blt-bench-model. Row b's prompt is BOS and --prompt-bytes
// bytes of a fixed English text, from offset 37 b (distinct prompts, so rows close patches at different
// steps). Greedy, no stop at EOS, every row generates -n bytes; the best of --repeats runs per batch size.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "tessera/io/model_io.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/models/blt/blt.hpp"
#include "tessera/models/blt/generate.hpp"

using namespace tessera;

int main(int argc, char** argv) {
  CLI::App app{"BLT cached generation on the CPU against the number of rows decoded together"};
  std::string dir, precision = "fp32";
  std::vector<int64_t> batches = {1, 2, 4, 8};
  int64_t n = 64, prompt_bytes = 128, repeats = 3;
  app.add_option("-m,--model", dir, "Hugging Face layout BLT folder (config.json, model.safetensors)")
      ->required();
  app.add_option("--precision", precision, "fp32, or bf16 (bf16 weights)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--batches", batches, "batch sizes")->delimiter(',');
  app.add_option("-n", n, "bytes generated per row");
  app.add_option("--prompt-bytes", prompt_bytes, "prompt bytes per row (after BOS)");
  app.add_option("--repeats", repeats, "runs per batch size (the fastest counts)");
  CLI11_PARSE(app, argc, argv);
  try {
    const blt::BltConfig cfg = blt::BltConfig::read(dir + "/config.json");
    blt::BltForCausalLM<float> lm(cfg);
    io::load_model(lm, dir + "/model.safetensors");
    if (precision == "bf16") {
      set_compute_precision(lm, Precision::bf16);
      freeze_bf16_weights(lm);
    }
    std::string text;
    while (static_cast<int64_t>(text.size()) < prompt_bytes + 37 * 64)
      text +=
          "The quick brown fox jumps over the lazy dog. Byte-level models read raw UTF-8 and patch it by "
          "the entropy of the next byte; a patch ends where the next byte is hard to predict. ";
    blt::GenerateOptions o;
    o.max_new_tokens = n;
    o.temperature = 0;
    o.stop_at_eos = false;
    std::printf(
        "| rows | new bytes/s (all rows) | per row | step time | against 1 row |\n|---|---|---|---|---|\n");
    double one = 0;
    for (const int64_t B : batches) {
      std::vector<std::vector<int64_t>> prompts;
      for (int64_t b = 0; b < B; ++b)
        prompts.push_back(
            blt::encode(text.substr(static_cast<size_t>(37 * b), static_cast<size_t>(prompt_bytes))));
      double best = 0;
      for (int64_t r = 0; r < repeats; ++r)
        best = std::max(best, blt::generate_cached(lm, prompts, o).generate_bytes_per_s());
      if (B == batches.front()) one = best / static_cast<double>(B);
      std::printf("| %lld | %.1f | %.1f | %.2f ms | %.2fx the time, %.2fx the bytes |\n",
                  static_cast<long long>(B), best, best / static_cast<double>(B),
                  1e3 * static_cast<double>(B) / best, static_cast<double>(B) / best * one, best / one);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
