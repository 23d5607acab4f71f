// `megalodon eval`, `megalodon generate` and `megalodon logits` on a model folder or a training output folder.
// Nothing is ever prepended to the token ids (no BOS): a byte model reads the text's bytes as they are.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "sampling.hpp"
#include "tessera/ops/loss.hpp"

namespace mglapp {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// NLL of one pass over `ids` with the state carried through the whole text (forward_stream, `piece` tokens
/// per call): every token is predicted from everything before it, in memory constant in the text length.
Nll stream_nll(const Model& m, std::span<const int32_t> ids, int64_t piece, int64_t& state_bytes) {
  TESSERA_CHECK(ids.size() >= 2, "evaluation: the text has ", ids.size(), " tokens; at least 2 are needed");
  Model::State st = m.make_state(1);
  Model::StreamScratch s;
  const int64_t n = static_cast<int64_t>(ids.size()) - 1, V = m.vocab();
  std::vector<int64_t> x, y;
  Nll r;
  for (int64_t p = 0; p < n; p += piece) {
    const int64_t len = std::min(piece, n - p);
    x.assign(ids.begin() + p, ids.begin() + p + len);
    y.assign(ids.begin() + p + 1, ids.begin() + p + len + 1);
    const auto& logits = m.forward_stream(x.data(), len, st, s);
    r.nats += tessera::ops::cross_entropy_forward(tessera::cpu{}, static_cast<float*>(nullptr), logits.data(),
                                                  y.data(), len, V) *
              static_cast<double>(len);
    r.tokens += len;
  }
  state_bytes = st.bytes();
  return r;
}

}  // namespace

int cmd_eval(const EvalArgs& a) {
  TESSERA_CHECK(a.seq_len > 0, "--seq-len must be > 0, got ", a.seq_len);
  TESSERA_CHECK(a.batch > 0, "--batch must be > 0, got ", a.batch);
  TESSERA_CHECK(a.max_windows >= 0, "--max-windows must be >= 0, got ", a.max_windows);
  TESSERA_CHECK(a.max_bytes >= 0, "--max-bytes must be >= 0, got ", a.max_bytes);
  const ModelFiles f = resolve_model_dir(a.model);
  const ModelConfig cfg = read_model_config(f);
  const Tokenizer tok = model_tokenizer(f, cfg);
  auto m = load_model(f, cfg);
  const std::string text = load_text({a.data}, a.max_bytes);
  const std::vector<int32_t> ids = tok.encode(text);
  TESSERA_CHECK(!ids.empty(), "'", a.data, "' gives no tokens");
  const double bytes_per_token = static_cast<double>(text.size()) / static_cast<double>(ids.size());

  const auto t0 = Clock::now();
  int64_t state_bytes = 0;
  const Nll r = a.stream ? stream_nll(*m, ids, 2 * cfg.chunk_size, state_bytes)
                         : window_nll(*m, ids, a.batch, a.seq_len, a.max_windows);
  const double sec = seconds_since(t0);
  std::printf("bpb: %.4f\n", r.bits_per_byte(bytes_per_token));
  if (!tok.is_bytes())
    std::printf("bits per token: %.4f (%.3f bytes per token, %s)\n", r.bits_per_token(), bytes_per_token,
                tok.describe().c_str());
  if (a.stream)
    std::printf("%lld tokens predicted in one stream (state carried; %.1f KiB of state) | %.0f tokens/s\n",
                static_cast<long long>(r.tokens), static_cast<double>(state_bytes) / 1024.0,
                static_cast<double>(r.tokens) / sec);
  else
    std::printf("%lld tokens predicted in %lld windows of %lld (no state between windows) | %.0f tokens/s\n",
                static_cast<long long>(r.tokens), static_cast<long long>(r.tokens / a.seq_len),
                static_cast<long long>(a.seq_len), static_cast<double>(r.tokens) / sec);
  return 0;
}

int cmd_generate(const GenerateArgs& a) {
  Sampler sample(a.sampling, "generate");  // checks --temp, --top-k, --top-p
  TESSERA_CHECK(a.n >= 1, "-n must be >= 1, got ", a.n);
  const ModelFiles f = resolve_model_dir(a.model);
  const ModelConfig cfg = read_model_config(f);
  const Tokenizer tok = model_tokenizer(f, cfg);
  TESSERA_CHECK(cfg.out_size() == cfg.vocab_size, f.config.string(), ": output_size ", cfg.out_size(),
                " differs from vocab_size ", cfg.vocab_size, ", so generated ids cannot be fed back");
  auto m = load_model(f, cfg);
  const std::vector<int32_t> p = tok.encode(a.prompt);
  TESSERA_CHECK(!p.empty(), "the prompt is empty (-p)");
  std::vector<int64_t> ids(p.begin(), p.end());
  const int64_t V = m->vocab(), np = static_cast<int64_t>(ids.size());

  // The whole prompt in one call, then one token per call; the state stays the same size throughout.
  Model::State st = m->make_state(1);
  Model::StreamScratch s;
  auto t0 = Clock::now();
  const float* row = m->forward_stream(ids.data(), np, st, s).data() + (np - 1) * V;
  const double prefill = seconds_since(t0);
  t0 = Clock::now();
  std::vector<int64_t> out;
  for (int64_t i = 0; i < a.n; ++i) {
    int64_t next = sample(row, V);
    out.push_back(next);
    if (next == tok.eos_id() || i + 1 == a.n) break;
    row = m->forward_stream(&next, 1, st, s).data();
  }
  const double gen = seconds_since(t0);
  const std::string continuation = tok.decode(out);
  std::vector<int64_t> all = ids;
  all.insert(all.end(), out.begin(), out.end());
  const std::string text = tok.decode(all) + "\n";
  std::fwrite(text.data(), 1, text.size(), stdout);  // the bytes as they are, NUL included
  std::fflush(stdout);
  std::fprintf(stderr,
               "prefill: %lld tokens in %.1f ms (%.0f tokens/s) | generation: %zu tokens, %zu bytes in %.1f ms "
               "(%.1f bytes/s) | state %.1f KiB, constant in the length\n",
               static_cast<long long>(np), prefill * 1e3, static_cast<double>(np) / std::max(prefill, 1e-9),
               out.size(), continuation.size(), gen * 1e3,
               static_cast<double>(continuation.size()) / std::max(gen, 1e-9),
               static_cast<double>(st.bytes()) / 1024.0);
  return 0;
}

int cmd_logits(const LogitsArgs& a) {
  TESSERA_CHECK(!a.out.empty(), "no output file given (--out)");
  const ModelFiles f = resolve_model_dir(a.model);
  const ModelConfig cfg = read_model_config(f);
  const std::vector<int64_t> ids = parse_ids(a.ids, cfg.vocab_size, "--ids");
  auto m = load_model(f, cfg);
  const int64_t T = static_cast<int64_t>(ids.size());
  const auto& logits = m->forward(ids.data(), 1, T);
  tessera::io::SafeTensorsWriter w;
  w.add("logits", logits);
  w.set_metadata("format", "pt");
  w.write(a.out);
  std::printf("wrote %s: logits [%lld, %lld] F32\n", a.out.c_str(), static_cast<long long>(T),
              static_cast<long long>(logits.size(1)));
  return 0;
}

}  // namespace mglapp
