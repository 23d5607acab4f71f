// Shared pieces of the `megalodon` app: model folders, config checks, text loading, token-id parsing and
// bits per byte.
//
// Folders. A model folder holds config.json (the official ModelConf field names) + model.safetensors (the
// official state_dict names), and optionally tokenizer.model (a sentencepiece model; without it the model reads
// bytes). A training output folder holds config.json, metrics.jsonl, step_N/ checkpoints, tokenizer.model when
// trained with one and, once the run has ended, model.safetensors: -m accepts either; without
// model.safetensors the latest checkpoint's weights are used.
#pragma once
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "tessera/io/io.hpp"
#include "tessera/models/megalodon/megalodon.hpp"
#include "tessera/train/train.hpp"
#include "tokenizer.hpp"

namespace mglapp {

namespace fs = std::filesystem;
using tessera::Error;
using tessera::str;
using Model = tessera::models::Megalodon<float>;
using ModelConfig = tessera::models::MegalodonConfig;

inline constexpr const char* kTokenizerFile = "tokenizer.model";

using tessera::io::check_keys;

/// The official ModelConf arguments (megalodon/config.py); the "model" section of a training config may hold
/// only these.
inline void check_model_keys(const nlohmann::json& j, const std::string& where) {
  check_keys(j,
             {"num_layers", "model_dim", "z_dim", "value_dim", "num_heads", "ffn_hidden_dim", "cema_ndim",
              "chunk_size", "efficient_attn", "init_mode", "vocab_size", "output_size", "norm_num_groups",
              "norm_affine", "norm_eps", "rope_base", "dropout", "hidden_dropout", "attention_dropout", "swiglu",
              "rescale_nffn", "scale_emb", "share_emb", "layerwise_ckpt"},
             where);
}

/// config.json, weights and tokenizer of a model folder or a training output folder (see the file comment).
struct ModelFiles {
  fs::path config, weights, tokenizer;  // tokenizer empty: bytes
};

inline ModelFiles resolve_model_dir(const std::string& dir) {
  std::error_code ec;
  TESSERA_CHECK(!dir.empty(), "no model folder given (-m)");
  TESSERA_CHECK(fs::exists(dir, ec), "model folder '", dir, "' does not exist");
  TESSERA_CHECK(fs::is_directory(dir, ec), "model folder '", dir, "' is not a folder");
  const fs::path d = dir;
  ModelFiles f;
  if (fs::exists(d / "model.safetensors", ec)) {
    f.weights = d / "model.safetensors";
    f.config = d / "config.json";
  } else if (const auto latest = tessera::train::find_latest(d)) {
    f.weights = *latest / "model.safetensors";
    f.config = fs::exists(*latest / "config.json", ec) ? *latest / "config.json" : d / "config.json";
  } else {
    throw Error(str("model folder '", dir, "' holds neither model.safetensors nor a training checkpoint"));
  }
  TESSERA_CHECK(fs::is_regular_file(f.config, ec), "model folder '", dir, "': '", f.config.string(),
                "' is missing");
  if (fs::exists(d / kTokenizerFile, ec)) f.tokenizer = d / kTokenizerFile;
  return f;
}

inline ModelConfig read_model_config(const ModelFiles& f) {
  return ModelConfig::from_json(tessera::io::read_json_file(f.config.string()), f.config.string());
}

/// Builds the model of `cfg` and loads the weights of `f` (strict: missing, unexpected or mis-shaped tensors
/// and truncated files are errors naming the file).
inline std::unique_ptr<Model> load_model(const ModelFiles& f, const ModelConfig& cfg) {
  auto m = std::make_unique<Model>(cfg);
  tessera::models::load_megalodon_weights(*m, f.weights.string());
  return m;
}

/// The tokenizer of a model folder, checked against the model's vocabulary.
inline Tokenizer model_tokenizer(const ModelFiles& f, const ModelConfig& cfg) {
  if (f.tokenizer.empty()) {
    TESSERA_CHECK(cfg.vocab_size >= 256, f.config.string(), ": vocab_size ", cfg.vocab_size,
                  " is below 256 and the folder has no ", kTokenizerFile,
                  ", so text cannot be encoded (bytes need 256 ids); `megalodon logits --ids` still works");
    return Tokenizer::bytes();
  }
  Tokenizer t = Tokenizer::sentencepiece(f.tokenizer.string());
  TESSERA_CHECK(t.vocab_size() == cfg.vocab_size, f.tokenizer.string(), " has ", t.vocab_size(),
                " pieces but ", f.config.string(), " says vocab_size ", cfg.vocab_size);
  return t;
}

/// The bytes of every path (text file, gzip/dictzip file or folder), in order, joined by '\n'; max_bytes
/// (0 = all) caps the total.
inline std::string load_text(const std::vector<std::string>& paths, int64_t max_bytes = 0) {
  std::string all;
  for (const auto& p : paths) {
    tessera::train::CorpusOptions opt;
    if (max_bytes > 0) opt.max_bytes = max_bytes - static_cast<int64_t>(all.size());
    if (max_bytes > 0 && opt.max_bytes <= 0) break;
    const auto c = tessera::train::load_corpus(p, opt);
    if (!all.empty()) all.push_back('\n');
    all.append(c.bytes.begin(), c.bytes.end());
  }
  if (max_bytes > 0 && static_cast<int64_t>(all.size()) > max_bytes) all.resize(static_cast<size_t>(max_bytes));
  return all;
}

/// Token ids from a comma-separated list ("5,17,42"; spaces around ids allowed), each in [0, vocab).
inline std::vector<int64_t> parse_ids(const std::string& s, int64_t vocab, const std::string& what) {
  std::vector<int64_t> ids;
  size_t pos = 0;
  for (int64_t index = 0;; ++index) {
    const size_t comma = std::min(s.find(',', pos), s.size());
    size_t b = pos, e = comma;
    while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
    const std::string item = s.substr(b, e - b);
    TESSERA_CHECK(!(item.empty() && index == 0 && comma == s.size()), what, ": no token ids given");
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    TESSERA_CHECK(!item.empty() && ec == std::errc() && end == item.data() + item.size(), what, ": '", item,
                  "' (entry ", index, ") is not an integer token id");
    TESSERA_CHECK(v >= 0 && v < vocab, what, ": token id ", v, " (entry ", index,
                  ") is out of the vocabulary range [0, ", vocab, ")");
    ids.push_back(v);
    if (comma == s.size()) break;
    pos = comma + 1;
  }
  return ids;
}

/// Summed negative log-likelihood (nats) over some predicted tokens.
struct Nll {
  double nats = 0;
  int64_t tokens = 0;
  /// Bits per byte when each predicted token stands for `bytes_per_token` bytes of text on average (1 for the
  /// byte vocabulary; text bytes / tokens for a sentencepiece vocabulary).
  double bits_per_byte(double bytes_per_token = 1.0) const {
    return tessera::train::bits_per_byte(nats, tokens) / bytes_per_token;
  }
  double bits_per_token() const { return tessera::train::bits_per_byte(nats, tokens); }
};

/// NLL of the model over non-overlapping windows of `tokens`: window k has inputs [kT, kT+T) and targets
/// [kT+1, kT+T+1) (no state carried between windows), `batch` windows per forward, at most `max_windows`
/// (0 = all).
inline Nll window_nll(Model& m, std::span<const int32_t> tokens, int64_t batch, int64_t T, int64_t max_windows) {
  TESSERA_CHECK(batch > 0 && T > 0, "evaluation: batch and window length must be > 0, got ", batch, " and ", T);
  int64_t windows = tokens.empty() ? 0 : (static_cast<int64_t>(tokens.size()) - 1) / T;
  if (max_windows > 0) windows = std::min(windows, max_windows);
  TESSERA_CHECK(windows > 0, "evaluation: ", tokens.size(), " tokens is too little for one window of ", T + 1,
                " tokens");
  std::vector<int64_t> x, y;
  Nll r;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int64_t rows = std::min(batch, windows - w0);
    x.resize(static_cast<size_t>(rows * T));
    y.resize(static_cast<size_t>(rows * T));
    for (int64_t r0 = 0; r0 < rows; ++r0)
      for (int64_t t = 0; t < T; ++t) {
        x[r0 * T + t] = tokens[(w0 + r0) * T + t];
        y[r0 * T + t] = tokens[(w0 + r0) * T + t + 1];
      }
    m.forward(x.data(), rows, T);
    r.nats += m.loss(y.data()) * static_cast<double>(rows * T);
    r.tokens += rows * T;
  }
  return r;
}

}  // namespace mglapp
