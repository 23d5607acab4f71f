// Shared pieces of the `blt` app: model folders (load and save in the transformers layout), the entropy
// model's own folder, hex parsing, BOS-prefixed byte batches and bits per byte.
//
// Folders. A model folder holds config.json + model.safetensors (what BltForCausalLM.from_pretrained reads).
// A training output folder holds config.json, metrics.jsonl, step_N/ checkpoints and, once a run has ended,
// model.safetensors: -m accepts either; without model.safetensors the latest checkpoint's weights are used.
//
// The entropy model folder (`blt train-entropy`) is a transformers BltPatcher folder: config.json with
// model_type "blt_patcher" and keys embed_tokens / layers.N / norm / lm_head. Its attention window is not
// part of the transformers config (the HF port is plain causal); we store it as "sliding_window" in
// config.json (also inside a BLT config's patcher_config), which transformers keeps as an unused attribute.
#pragma once
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "tessera/io/io.hpp"
#include "tessera/models/blt/blt.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/train/train.hpp"

namespace bltapp {

namespace fs = std::filesystem;
using tessera::Error;
using tessera::str;
/// The models on backend B (tessera::cpu or tessera::cuda); Lm / EntropyLm are the CPU ones.
template <class B>
using BltLm = tessera::blt::BltForCausalLM<float, B>;
template <class B>
using EntropyModel = tessera::models::Llama<float, B>;
using Lm = BltLm<tessera::cpu>;
using EntropyLm = EntropyModel<tessera::cpu>;

/// config.json and the weights of a model folder or a training output folder (see the file comment).
struct ModelFiles {
  fs::path config, weights;
};

inline ModelFiles resolve_model_dir(const std::string& dir) {
  std::error_code ec;
  TESSERA_CHECK(!dir.empty(), "no model folder given");
  TESSERA_CHECK(fs::is_directory(dir, ec), "model folder '", dir, "' does not exist");
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
  return f;
}

/// The entropy model's attention window stored with a config ("sliding_window"; absent: the reference's 512).
inline int64_t sliding_window_of(const nlohmann::json& j, const std::string& where) {
  const auto w = tessera::io::get_or<int64_t>(j, "sliding_window", tessera::blt::kEntropyWindow, where);
  TESSERA_CHECK(w >= 0, "config ", where, ": field 'sliding_window' must be >= 0, found ", w);
  return w;
}

/// The transformers BltPatcherConfig of an entropy model, plus our "sliding_window".
inline nlohmann::json entropy_hf_json(const tessera::models::LlamaConfig& c) {
  return {{"architectures", {"BltPatcher"}},
          {"model_type", "blt_patcher"},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.dim},
          {"num_attention_heads", c.n_heads},
          {"num_key_value_heads", c.n_kv_heads ? c.n_kv_heads : c.n_heads},
          {"num_hidden_layers", c.n_layers},
          {"intermediate_size", c.ffn_hidden},
          {"rms_norm_eps", c.norm_eps},
          {"rope_parameters", {{"rope_theta", c.rope_theta}, {"rope_type", "default"}}},
          {"max_position_embeddings", 8192},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", false},
          {"dtype", "float32"},
          {"sliding_window", c.window}};
}

/// The transformers BltConfig of `c`, with the entropy model's window recorded in patcher_config.
inline nlohmann::json blt_hf_json(const tessera::blt::BltConfig& c) {
  nlohmann::json j = c.to_hf_json();
  if (c.patch_in_forward) j["patcher_config"]["sliding_window"] = c.patcher.window;
  return j;
}

/// True when config.json describes an entropy model on its own (model_type "blt_patcher").
inline bool is_entropy_config(const nlohmann::json& j) {
  return j.is_object() && j.contains("model_type") && j["model_type"] == "blt_patcher";
}

/// Build and load a BLT model (transformers layout) from a model or training output folder; on CUDA the
/// weights are read on the host and uploaded (io::load_model).
template <class B = tessera::cpu>
std::unique_ptr<BltLm<B>> load_blt(const std::string& dir) {
  const ModelFiles f = resolve_model_dir(dir);
  const nlohmann::json j = tessera::io::read_json_file(f.config.string());
  TESSERA_CHECK(!is_entropy_config(j), f.config.string(),
                ": this folder holds an entropy model (model_type \"blt_patcher\"), not a BLT model");
  tessera::blt::BltConfig cfg = tessera::blt::BltConfig::from_hf_json(j, f.config.string());
  if (cfg.patch_in_forward && j.contains("patcher_config"))
    cfg.patcher.window = sliding_window_of(j["patcher_config"], f.config.string() + " patcher_config");
  auto lm = std::make_unique<BltLm<B>>(cfg);
  tessera::io::load_model(*lm, f.weights.string());
  return lm;
}

/// Build and load an entropy model from its folder (config.json of a BltPatcher).
template <class B = tessera::cpu>
std::unique_ptr<EntropyModel<B>> load_entropy(const std::string& dir) {
  const ModelFiles f = resolve_model_dir(dir);
  const nlohmann::json j = tessera::io::read_json_file(f.config.string());
  TESSERA_CHECK(is_entropy_config(j), f.config.string(),
                ": not an entropy model folder (expected model_type \"blt_patcher\", as `blt train-entropy` "
                "writes)");
  auto m = std::make_unique<EntropyModel<B>>(tessera::with_context(f.config.string(), [&] {
    return tessera::blt::entropy_config_from_hf(j, sliding_window_of(j, f.config.string()));
  }));
  tessera::io::load_model(*m, f.weights.string());
  return m;
}

/// Write a BLT model folder: model.safetensors (HF names, entropy model as model.patcher.*) and config.json.
/// A CUDA model's weights are downloaded tensor by tensor (io::save_model); the files do not depend on the
/// backend.
template <class B>
void save_blt(BltLm<B>& lm, const fs::path& dir) {
  tessera::io::save_model(lm, (dir / "model.safetensors").string());
  tessera::io::write_text_atomic((dir / "config.json").string(), blt_hf_json(lm.config()).dump(2) + "\n");
}

/// Write an entropy model folder (BltPatcher layout).
template <class B>
void save_entropy(EntropyModel<B>& m, const fs::path& dir) {
  tessera::io::save_model(m, (dir / "model.safetensors").string());
  tessera::io::write_text_atomic((dir / "config.json").string(), entropy_hf_json(m.config).dump(2) + "\n");
}

/// Bytes of a hex string ("48656c6c6f"; upper or lower case, no separators). `what` names the option.
inline std::string parse_hex(const std::string& hex, const std::string& what) {
  TESSERA_CHECK(hex.size() % 2 == 0, what, ": odd number of hex digits (", hex.size(), ")");
  auto digit = [&](size_t i) -> int {
    const char c = hex[i];
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw Error(str(what, ": '", std::string(1, c), "' at position ", i, " is not a hex digit"));
  };
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(digit(2 * i) * 16 + digit(2 * i + 1));
  return out;
}

/// BLT rows start with BOS, as at inference: from a loader batch (inputs = bytes w[0..T-1], targets =
/// w[1..T], ids = byte + 4) make inputs [BOS, w[0..T-2]] and targets w[0..T-1]. Every row still predicts T
/// bytes, the first one from BOS alone.
inline void prepend_bos(const tessera::train::ByteBatch& in, std::vector<int64_t>& ids,
                        std::vector<int64_t>& tgt) {
  const int64_t B = in.rows(), T = in.tokens() / std::max<int64_t>(B, 1);
  ids.resize(static_cast<size_t>(B * T));
  tgt.assign(in.inputs.data(), in.inputs.data() + B * T);
  for (int64_t b = 0; b < B; ++b) {
    ids[b * T] = tessera::blt::BOS;
    std::copy_n(in.inputs.data() + b * T, T - 1, ids.data() + b * T + 1);
  }
}

/// Zero the gradients that exist. The entropy model inside a BLT never gets a gradient buffer, so clipping
/// and AdamW (which skip parameters without one) never touch it; tessera::zero_grads would allocate it. On
/// CUDA the zeroing runs on the side stream alongside what is queued next: join it before the backward pass.
template <class M>
tessera::GradZeroing<typename M::backend> zero_existing_grads_async(M& m) {
  return tessera::zero_grads_async(m, /*allocate_missing=*/false);
}

/// The bytes of every path, in order, joined by '\n'; max_bytes (0 = all) caps the total.
inline std::vector<uint8_t> load_bytes(const std::vector<std::string>& paths, int64_t max_bytes = 0) {
  std::vector<uint8_t> all;
  for (const auto& p : paths) {
    tessera::train::CorpusOptions opt;
    if (max_bytes > 0) opt.max_bytes = max_bytes - static_cast<int64_t>(all.size());
    if (max_bytes > 0 && opt.max_bytes <= 0) break;
    auto c = tessera::train::load_corpus(p, opt);
    if (!all.empty()) all.push_back('\n');
    all.insert(all.end(), c.bytes.begin(), c.bytes.end());
  }
  if (max_bytes > 0 && static_cast<int64_t>(all.size()) > max_bytes)
    all.resize(static_cast<size_t>(max_bytes));
  return all;
}

/// Held-out bits per byte over non-overlapping BOS-prefixed windows: `forward_loss(ids, targets, rows, T)`
/// returns the mean loss (nats) of a batch.
template <class F>
double heldout_bpb(std::span<const uint8_t> bytes, int64_t batch, int64_t seq, int64_t max_windows,
                   F&& forward_loss) {
  tessera::train::EvalWindows ev(bytes, batch, seq, tessera::blt::OFFSET, max_windows);
  tessera::train::ByteBatch b;
  std::vector<int64_t> ids, tgt;
  double nll = 0;
  while (ev.next(b)) {
    prepend_bos(b, ids, tgt);
    nll += forward_loss(ids.data(), tgt.data(), b.rows(), seq) * static_cast<double>(b.tokens());
  }
  return tessera::train::bits_per_byte(nll, ev.num_targets());
}

}  // namespace bltapp
