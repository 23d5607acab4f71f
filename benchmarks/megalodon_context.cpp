// Megalodon unlimited context: time and memory against context length.
// For each context length N it streams N tokens through a randomly initialised Megalodon chunk by chunk
// (carried TimestepNorm/CEMA state, KV of the current chunk only), then decodes tokens one at a time. It
// prints a markdown table: prefill ms and µs/token, ratio to the shortest context, decode ms/token after N
// tokens, the streaming state's bytes and the process's resident memory.
//   megalodon_context [--lengths 4096,8192,...] [--decode 64] [--dim 256] [--layers 4] [--chunk 1024]
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "tessera/models/megalodon/megalodon.hpp"

using namespace tessera;
using Clock = std::chrono::steady_clock;

namespace {
double resident_mib() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, rss = 0;
  f >> pages >> rss;
  return static_cast<double>(rss) * 4096.0 / (1024.0 * 1024.0);
}
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Megalodon: prefill and decode time and memory against context length"};
  std::vector<int64_t> lengths = {4096, 8192, 16384, 32768, 65536};
  int64_t decode = 64, dim = 256, layers = 4, chunk = 1024, per_call = 2;
  app.add_option("--lengths", lengths, "context lengths")->delimiter(',');
  app.add_option("--decode", decode, "tokens decoded one at a time after each context");
  app.add_option("--dim", dim, "model_dim (z_dim = dim/2, value_dim = 2*dim, FFN 8/3*dim SwiGLU)");
  app.add_option("--layers", layers, "num_layers");
  app.add_option("--chunk", chunk, "chunk_size");
  app.add_option("--chunks-per-call", per_call, "prefill this many chunks per forward_stream call");
  CLI11_PARSE(app, argc, argv);

  models::MegalodonConfig c;
  c.num_layers = layers;
  c.model_dim = dim;
  c.z_dim = dim / 2;
  c.value_dim = 2 * dim;
  c.num_heads = 1;
  c.ffn_hidden_dim = dim * 8 / 3;
  c.cema_ndim = 16;
  c.chunk_size = chunk;
  c.norm_num_groups = 32;
  c.vocab_size = 256;
  c.swiglu = true;
  models::Megalodon<float> m(c);
  Rng rng(1);
  m.init(rng);
  std::printf("Megalodon: %lld parameters, dim %lld, %lld layers, chunk %lld, z %lld, v %lld\n\n",
              static_cast<long long>(count_params(m)), static_cast<long long>(dim),
              static_cast<long long>(layers), static_cast<long long>(chunk), static_cast<long long>(c.z_dim),
              static_cast<long long>(c.value_dim));
  std::printf(
      "| context N | prefill ms | prefill µs/token | ratio to N=%lld | decode ms/token after N | state KiB | "
      "RSS MiB |\n",
      static_cast<long long>(lengths.front()));
  std::printf("|---|---|---|---|---|---|---|\n");
  double first_ms = 0;
  typename models::Megalodon<float>::StreamScratch scratch;
  for (const int64_t N : lengths) {
    std::vector<int64_t> ids(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) ids[i] = static_cast<int64_t>(rng.below(256));
    auto state = m.make_state(1);
    const auto t0 = Clock::now();
    for (int64_t done = 0; done < N;) {
      const int64_t n = std::min(per_call * chunk, N - done);
      m.forward_stream(ids.data() + done, n, state, scratch);
      done += n;
    }
    const double prefill = ms_since(t0);
    if (first_ms == 0) first_ms = prefill;
    int64_t id = 65;
    const auto t1 = Clock::now();
    for (int64_t i = 0; i < decode; ++i) {
      const auto& lg = m.forward_stream(&id, 1, state, scratch);
      id = static_cast<int64_t>(std::max_element(lg.begin(), lg.end()) - lg.begin());
    }
    const double per_tok = ms_since(t1) / static_cast<double>(decode);
    std::printf("| %lld | %.0f | %.1f | %.2f | %.3f | %.1f | %.1f |\n", static_cast<long long>(N), prefill,
                1000.0 * prefill / static_cast<double>(N), prefill / first_ms, per_tok,
                static_cast<double>(state.bytes()) / 1024.0, resident_mib());
    std::fflush(stdout);
  }
  return 0;
}
