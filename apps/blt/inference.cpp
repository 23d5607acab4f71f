// `blt eval`, `blt generate`, `blt patch` and `blt logits`: a trained (or published, transformers layout) BLT
// in a folder; ids are [BOS] + (byte + 4), the tool prepends the BOS. eval and generate run on --device
// (eval_impl.hpp, instantiated in cpu_commands.cpp and cuda_commands.cpp); patch and logits run on the CPU.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "device.hpp"
#include "eval_impl.hpp"
#include "plot.hpp"
#include "tessera/models/blt/generate.hpp"

namespace bltapp {

namespace blt = tessera::blt;
using nlohmann::json;

namespace {

/// The entropy-model context rule the model's own forward uses (see BltModel::compute_patch_lengths).
blt::EntropyOptions entropy_options(const blt::BltConfig& c) {
  return c.eos_document_cuts ? blt::EntropyOptions::original() : blt::EntropyOptions::hf();
}

std::vector<float> model_entropies(Lm& lm, const std::vector<int64_t>& ids) {
  TESSERA_CHECK(lm.config().patch_in_forward,
                "this BLT model has no entropy model (patch_in_forward is false)");
  return blt::entropies(lm.model.patcher, ids.data(), 1, static_cast<int64_t>(ids.size()),
                        entropy_options(lm.config()));
}

/// A byte for a one-line display: printable ASCII as is, the rest as \xNN (and \n, \t, \\, \").
std::string show_byte(unsigned char b) {
  if (b == '\n') return "\\n";
  if (b == '\t') return "\\t";
  if (b == '\\') return "\\\\";
  if (b == '"') return "\\\"";
  if (b >= 32 && b < 127) return std::string(1, static_cast<char>(b));
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\x%02x", b);
  return buf;
}

std::string read_text_file(const std::string& path, int64_t max_bytes) {
  tessera::train::CorpusOptions opt;
  opt.max_bytes = max_bytes;
  const auto c = tessera::train::load_corpus(path, opt);
  return std::string(c.bytes.begin(), c.bytes.end());
}

}  // namespace

int cmd_eval(const EvalArgs& a) {
  TESSERA_CHECK(a.seq_len > 1, "--seq-len must be > 1, got ", a.seq_len);
  TESSERA_CHECK(a.batch > 0, "--batch must be > 0, got ", a.batch);
  TESSERA_CHECK(a.max_windows >= 0, "--max-windows must be >= 0, got ", a.max_windows);
  const Target t = select_target(a.device, a.precision, Use::inference);
#if TESSERA_BLT_CUDA
  const EvalResult r =
      t.device == Device::cuda ? evaluate<tessera::cuda>(a, t) : evaluate<tessera::cpu>(a, t);
#else
  const EvalResult r = evaluate<tessera::cpu>(a, t);
#endif
  const int64_t n = r.windows * a.seq_len;
  std::printf("bpb: %.4f\n", r.bpb);
  std::printf("%lld bytes in %lld windows of %lld (BOS-prefixed) | %.0f bytes/s", static_cast<long long>(n),
              static_cast<long long>(r.windows), static_cast<long long>(a.seq_len),
              static_cast<double>(n) / r.seconds);
  if (r.patches > 0)
    std::printf(" | mean patch length %.3f", static_cast<double>(n) / static_cast<double>(r.patches));
  std::printf(" | loss %.6f nats/byte\n", r.loss());
  return 0;
}

int cmd_generate(const GenerateArgs& a) {
  TESSERA_CHECK(a.prompt.has_value() != a.prompt_hex.has_value(),
                "give the prompt with exactly one of -p TEXT or --prompt-hex HEX");
  TESSERA_CHECK(a.n >= 1, "-n must be >= 1, got ", a.n);
  TESSERA_CHECK(a.temp >= 0 && std::isfinite(a.temp), "--temp must be >= 0, got ", a.temp);
  TESSERA_CHECK(a.top_k >= 0, "--top-k must be >= 0, got ", a.top_k);
  TESSERA_CHECK(a.top_p >= 0 && a.top_p <= 1, "--top-p must be in [0, 1], got ", a.top_p);
  const std::string prompt = a.prompt ? *a.prompt : parse_hex(*a.prompt_hex, "--prompt-hex");
  [[maybe_unused]] const Target t =
      select_target(a.device, a.precision, Use::inference);                // throws if unusable
  const std::vector<int64_t> ids = blt::encode(prompt);                    // BOS + bytes, no EOS
#if TESSERA_BLT_CUDA
  const blt::GenerateResult r =
      t.device == Device::cuda ? generate<tessera::cuda>(a, ids) : generate<tessera::cpu>(a, ids);
#else
  const blt::GenerateResult r = generate<tessera::cpu>(a, ids);
#endif
  const std::vector<int64_t>& out = r.tokens.at(0);

  if (!a.ids_out.empty()) {
    std::string s;
    for (size_t i = 0; i < out.size(); ++i) s += str(i ? " " : "", out[i]);
    tessera::io::write_text_atomic(a.ids_out, s + "\n");
  }
  std::vector<int64_t> all = ids;
  all.insert(all.end(), out.begin(), out.end());
  std::printf("%s\n", blt::decode_utf8_ignore(all).c_str());
  std::printf(
      "prefill: %lld bytes in %.1f ms (%.1f bytes/s) | generation: %lld bytes in %.1f ms (%.1f "
      "bytes/s)%s%s\n",
      static_cast<long long>(r.prompt_bytes), r.prefill_seconds * 1e3, r.prefill_bytes_per_s(),
      static_cast<long long>(r.new_bytes), r.generate_seconds * 1e3, r.generate_bytes_per_s(),
      a.no_cache ? " | no cache" : "", r.stopped_at_eos.at(0) ? " | stopped at EOS" : "");
  return 0;
}

int cmd_patch(const PatchArgs& a) {
  constexpr int64_t kMaxBytes = 1 << 16;
  TESSERA_CHECK(a.text.has_value() != a.file.has_value(),
                "give the text with exactly one of --text or --file");
  std::string bytes = a.text ? *a.text : read_text_file(*a.file, kMaxBytes + 1);
  TESSERA_CHECK(!bytes.empty(), "the text to patch is empty");
  if (static_cast<int64_t>(bytes.size()) > kMaxBytes) {
    bytes.resize(kMaxBytes);
    std::fprintf(stderr, "note: only the first %lld bytes are patched\n", static_cast<long long>(kMaxBytes));
  }
  auto lm = load_blt(a.model);
  const std::vector<int64_t> ids = blt::encode(bytes);
  const int64_t N = static_cast<int64_t>(ids.size());
  const std::vector<float> H = model_entropies(*lm, ids);
  const auto rule = lm->model.entropy_patcher();
  const std::vector<int64_t> lengths = rule.patch_lengths(ids, H);

  // v[i]: entropy of the prediction of text byte i (= H at the position before it); starts[i]: byte i opens
  // a patch. Position 0 is BOS, a patch of its own.
  const double th = lm->config().patching_threshold;
  std::vector<float> v(H.begin(), H.end() - 1);
  std::vector<bool> starts(bytes.size(), false);
  int64_t pos = 0, non_empty = 0;
  for (int64_t len : lengths) {
    if (pos >= 1 && pos < N) starts[pos - 1] = true;
    pos += len;
    non_empty += len > 0;
  }
  std::printf("threshold %.6f nats | %lld bytes + BOS | %lld patches | mean %.3f bytes per patch\n", th,
              static_cast<long long>(bytes.size()), static_cast<long long>(non_empty),
              static_cast<double>(N) / static_cast<double>(non_empty));
  std::printf(
      "H = entropy (nats) of the entropy model's prediction of each byte; a byte whose H exceeds the "
      "threshold starts a patch (BOS and the first byte always do)\n");
  pos = 0;
  for (size_t p = 0; p < lengths.size(); ++p) {
    const int64_t len = lengths[p];
    std::string shown, hs;
    for (int64_t i = pos; i < pos + len && i < N; ++i) {
      if (i == 0) {
        shown += "<BOS>";
        hs += " -";
        continue;
      }
      shown += show_byte(static_cast<unsigned char>(bytes[i - 1]));
      char buf[16];
      std::snprintf(buf, sizeof buf, " %.3f", v[i - 1]);
      hs += buf;
    }
    if (len == 0 || pos >= N)
      std::printf("patch %4zu  len %3lld  (empty: the next byte will start a new patch)\n", p,
                  static_cast<long long>(len));
    else
      std::printf("patch %4zu  len %3lld  \"%s\"  H:%s\n", p, static_cast<long long>(len), shown.c_str(),
                  hs.c_str());
    pos += len;
  }
  if (!a.png.empty()) {
    write_png(a.png, entropy_plot(bytes, v, starts, th));
    std::printf("wrote %s\n", a.png.c_str());
  }
  return 0;
}

int cmd_logits(const LogitsArgs& a) {
  TESSERA_CHECK(!a.out.empty(), "no output file given (--out)");
  const std::string bytes = parse_hex(a.ids_hex, "--ids-hex");
  auto lm = load_blt(a.model);
  const std::vector<int64_t> ids = blt::encode(bytes);
  const int64_t T = static_cast<int64_t>(ids.size());
  const std::vector<float> H = model_entropies(*lm, ids);
  const blt::PatchLengths pl = lm->model.compute_patch_lengths(ids.data(), 1, T);
  const auto& logits = lm->forward(ids.data(), 1, T, pl.lengths.data(), pl.P);
  tessera::io::SafeTensorsWriter w;
  w.add("logits", logits);
  w.add("entropies", tessera::TensorView<const float>(H.data(), {T}));
  w.add("patch_lengths", tessera::TensorView<const int64_t>(pl.lengths.data(), {pl.P}));
  w.set_metadata("format", "pt");
  w.write(a.out);
  std::printf("wrote %s: logits [%lld, %lld], entropies [%lld], patch_lengths [%lld]\n", a.out.c_str(),
              static_cast<long long>(T), static_cast<long long>(logits.size(1)), static_cast<long long>(T),
              static_cast<long long>(pl.P));
  return 0;
}

}  // namespace bltapp
