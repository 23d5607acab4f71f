// BLT configuration: one struct that both published layouts map to (specs/blt.md §7, §8.3).
//
//   BltConfig::from_hf_json(j)        Hugging Face transformers `config.json` (model_type "blt": sub-configs
//                                     encoder_config, decoder_config, global_config, patcher_config)
//   BltConfig::from_original_json(j)  facebookresearch/blt `params.json` ("model" section) or the hub
//                                     `config.json` ("args" section); the entropy model's own params.json
//                                     ("entropy_model" section) is passed separately
//   BltConfig::read(path)             either, detected from the file's top-level keys
//
// The two layouts differ in behaviour, not only in names: the original masks local self-attention to a
// 512-byte window with EOS document cuts and cuts the global model's block-causal mask at EOS patches, the HF
// port is plain causal everywhere (§8.3). `local_window` and `eos_document_cuts` carry that choice.
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tessera/io/json_config.hpp"
#include "tessera/layers/context.hpp"
#include "tessera/models/llama.hpp"

namespace tessera::blt {

/// Local encoder or decoder (byte-level transformer with cross-attention to patches).
struct LocalConfig {
  int64_t dim = 1024, n_layers = 1, n_heads = 16, n_kv_heads = 16, ffn_hidden = 2816;
  int64_t cross_heads = 16;             // heads of the cross-attention (original `cross_attn_nheads`)
  int64_t cross_kv_heads = 0;           // its key/value heads (HF: num_key_value_heads); 0 = cross_heads
  bool cross_attn_all_layers = false;   // decoder: one cross-attention before every layer (else before layer 0)
  double norm_eps = 1e-5, rope_theta = 500000.0;
  int64_t max_positions = 24576;        // RoPE table size of the reference (bytes); informational

  LayerConfig layer() const {
    LayerConfig c;
    c.dim = dim;
    c.n_layers = n_layers;
    c.n_heads = n_heads;
    c.n_kv_heads = n_kv_heads;
    c.head_dim = dim / n_heads;
    c.ffn_hidden = ffn_hidden;
    c.norm_eps = norm_eps;
    c.rope_theta = rope_theta;
    return c;
  }
  LayerConfig cross_layer() const {
    LayerConfig c = layer();
    c.n_heads = cross_heads;
    c.n_kv_heads = cross_kv_heads ? cross_kv_heads : cross_heads;
    c.head_dim = dim / cross_heads;
    return c;
  }
};

/// Global latent transformer over patches.
struct GlobalConfig {
  int64_t dim = 2048, n_layers = 25, n_heads = 16, n_kv_heads = 16, ffn_hidden = 5632;
  double norm_eps = 1e-5, rope_theta = 500000.0;
  int64_t max_positions = 4096;  // RoPE table size of the reference (patches); informational

  LayerConfig layer() const {
    LayerConfig c;
    c.dim = dim;
    c.n_layers = n_layers;
    c.n_heads = n_heads;
    c.n_kv_heads = n_kv_heads;
    c.head_dim = dim / n_heads;
    c.ffn_hidden = ffn_hidden;
    c.norm_eps = norm_eps;
    c.rope_theta = rope_theta;
    return c;
  }
};

struct BltConfig {
  int64_t vocab_size = 260;
  LocalConfig encoder, decoder;
  GlobalConfig global;
  int64_t cross_attn_k = 2;  // query slots per patch (encoder) / memory slots per patch (decoder)

  // Hash n-gram embeddings (§3): one table per (function, n), stacked row-block by row-block.
  std::vector<int64_t> hash_sizes = {3, 4, 5, 6, 7, 8};
  int64_t hash_vocab = 500002;
  int64_t hash_functions = 1;

  // Patching (§2.3). The entropy model is a plain Llama (models/llama.hpp); `patch_in_forward` decides
  // whether the BLT model owns it (HF: `model.patcher.*` keys exist iff patch_in_forward).
  bool patch_in_forward = true;
  models::LlamaConfig patcher;
  std::string patching_mode = "entropy";
  double patching_threshold = 1.335442066192627;
  int64_t max_patch_length = 0;  // 0 = no limit
  int64_t patch_size = 4;

  // Masks. HF port: local_window 0 (plain causal), no document cuts. Original: 512 and cuts at EOS.
  int64_t local_window = 0;
  bool eos_document_cuts = false;
  int64_t eos_id = 2;

  int64_t hash_tables() const { return hash_functions * static_cast<int64_t>(hash_sizes.size()); }
  /// Width of the encoder's patch representation (k * d_enc) fed to the global model.
  int64_t global_input_dim() const { return cross_attn_k * encoder.dim; }
  /// The global model projects its input only when k * d_enc != d_global (the 7B model: 5120 -> 4096).
  bool has_token_projection() const { return global_input_dim() != global.dim; }

  /// Consistency checks shared by both layouts; `where` names the source in the error.
  void validate(const std::string& where) const;

  static BltConfig from_hf_json(const nlohmann::json& j, const std::string& where = "config.json");
  static BltConfig from_original_json(const nlohmann::json& j, const nlohmann::json* entropy = nullptr,
                                      const std::string& where = "params.json");
  /// Reads a config file of either layout (HF if it has "encoder_config", original if "model" or "args").
  /// For the original layout, `entropy_path` (entropy_model/params.json) supplies the patcher.
  static BltConfig read(const std::string& path, const std::string& entropy_path = "");
  /// The HF transformers layout (enough for BltForCausalLM.from_pretrained with the same weights).
  nlohmann::json to_hf_json() const;
};

// ---- implementation --------------------------------------------------------------------------------

namespace detail {

using io::get_or;
using io::json;
using io::require;

inline int64_t positive(const json& j, const char* field, int64_t fallback, const std::string& where) {
  const int64_t v = get_or<int64_t>(j, field, fallback, where);
  TESSERA_CHECK(v > 0, "config ", where, ": field '", field, "' must be a positive integer, found ", v);
  return v;
}

/// RoPE theta from `rope_parameters` (transformers >= 4.56), the older `rope_theta`, or the class default;
/// any rope type other than "default" is rejected (the BLT port uses plain RoPE).
inline double hf_rope_theta(const json& j, double fallback, const std::string& where) {
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    const json& r = j["rope_parameters"];
    const std::string sub = where + ".rope_parameters";
    const std::string type = get_or<std::string>(r, "rope_type", "default", sub);
    TESSERA_CHECK(type == "default", "config ", sub, ": field 'rope_type' is '", type,
                  "', only \"default\" RoPE is supported");
    return get_or<double>(r, "rope_theta", fallback, sub);
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    throw Error(str("config ", where, ": field 'rope_scaling' is set; only plain RoPE is supported"));
  return get_or<double>(j, "rope_theta", fallback, where);
}

/// Common fields of the HF sub-configs (hidden_size, heads, layers, ffn, eps, rope). Defaults follow
/// transformers' configuration_blt.py where a field is absent.
template <class C>
void hf_transformer_fields(const json& j, C& c, int64_t d_dim, int64_t d_heads, int64_t d_layers, int64_t d_ffn,
                           double d_theta, const std::string& where) {
  io::detail::check_object(j, where);
  c.dim = positive(j, "hidden_size", d_dim, where);
  c.n_heads = positive(j, "num_attention_heads", d_heads, where);
  c.n_kv_heads = positive(j, "num_key_value_heads", c.n_heads, where);
  c.n_layers = positive(j, "num_hidden_layers", d_layers, where);
  // transformers: intermediate_size or int(8 * hidden / 3)
  c.ffn_hidden = positive(j, "intermediate_size", d_ffn ? d_ffn : 8 * c.dim / 3, where);
  c.norm_eps = get_or<double>(j, "rms_norm_eps", 1e-5, where);
  c.rope_theta = hf_rope_theta(j, d_theta, where);
  c.max_positions = positive(j, "max_position_embeddings", c.max_positions, where);
  TESSERA_CHECK(c.dim % c.n_heads == 0, "config ", where, ": hidden_size ", c.dim,
                " is not divisible by num_attention_heads ", c.n_heads);
  TESSERA_CHECK(c.n_heads % c.n_kv_heads == 0, "config ", where, ": num_attention_heads ", c.n_heads,
                " is not a multiple of num_key_value_heads ", c.n_kv_heads);
  TESSERA_CHECK((c.dim / c.n_heads) % 2 == 0, "config ", where, ": head dimension ", c.dim / c.n_heads,
                " (hidden_size / num_attention_heads) must be even for RoPE");
  if (j.contains("hidden_act") && !j["hidden_act"].is_null()) {
    const auto act = require<std::string>(j, "hidden_act", where);
    TESSERA_CHECK(act == "silu", "config ", where, ": field 'hidden_act' is '", act,
                  "', only \"silu\" (SwiGLU) is supported");
  }
}

/// FFN width rule of the original code (FeedForward): int(2*4d/3), times the multiplier, rounded up to a
/// multiple of `multiple_of` (768 -> 2048, 1024 -> 2816, 2048 -> 5632, 4096 -> 11008).
inline int64_t original_ffn_hidden(int64_t dim, double multiplier, int64_t multiple_of) {
  int64_t h = static_cast<int64_t>(2.0 * static_cast<double>(4 * dim) / 3.0);
  h = static_cast<int64_t>(multiplier * static_cast<double>(h));
  return multiple_of * ((h + multiple_of - 1) / multiple_of);
}

}  // namespace detail

inline void BltConfig::validate(const std::string& where) const {
  TESSERA_CHECK(vocab_size > 0, "config ", where, ": vocab_size must be positive");
  TESSERA_CHECK(cross_attn_k > 0, "config ", where, ": field 'cross_attn_k' must be a positive integer");
  TESSERA_CHECK(!hash_sizes.empty(), "config ", where, ": field 'encoder_hash_byte_group_size' is empty");
  for (int64_t n : hash_sizes)
    TESSERA_CHECK(n >= 1, "config ", where, ": field 'encoder_hash_byte_group_size' has a group size ", n, " < 1");
  TESSERA_CHECK(hash_vocab > 0, "config ", where, ": field 'encoder_hash_byte_group_vocab' must be positive");
  TESSERA_CHECK(hash_functions >= 1 && hash_functions <= 11, "config ", where,
                ": field 'encoder_hash_byte_group_nb_functions' must be in [1, 11] (one prime each), found ",
                hash_functions);
  for (const auto* l : {&encoder, &decoder}) {
    const char* name = l == &encoder ? "encoder" : "decoder";
    TESSERA_CHECK(l->dim % l->cross_heads == 0, "config ", where, ": ", name, " width ", l->dim,
                  " is not divisible by its cross-attention heads ", l->cross_heads);
  }
  TESSERA_CHECK(encoder.dim == decoder.dim, "config ", where, ": encoder width ", encoder.dim,
                " != decoder width ", decoder.dim, " (the decoder reads the encoder's byte states)");
  TESSERA_CHECK(!(encoder.cross_attn_all_layers && encoder.n_layers > 1), "config ", where,
                ": encoder cross_attn_all_layers with more than one encoder layer is not supported (the released "
                "models use one cross-attention after the last encoder layer)");
  TESSERA_CHECK(patching_threshold == patching_threshold, "config ", where, ": patching_threshold is NaN");
  TESSERA_CHECK(max_patch_length >= 0, "config ", where, ": max_patch_length must be >= 0");
  TESSERA_CHECK(local_window >= 0, "config ", where, ": local attention window must be >= 0");
}

inline BltConfig BltConfig::from_hf_json(const nlohmann::json& j, const std::string& where) {
  using namespace detail;
  io::detail::check_object(j, where);
  if (j.contains("model_type")) {
    const auto mt = require<std::string>(j, "model_type", where);
    TESSERA_CHECK(mt == "blt", "config ", where, ": field 'model_type' is '", mt, "', expected \"blt\"");
  }
  BltConfig c;
  c.vocab_size = positive(j, "vocab_size", 260, where);
  c.cross_attn_k = positive(j, "cross_attn_k", 2, where);
  c.hash_sizes = get_or<std::vector<int64_t>>(j, "encoder_hash_byte_group_size", c.hash_sizes, where);
  c.hash_vocab = positive(j, "encoder_hash_byte_group_vocab", 500002, where);
  c.hash_functions = positive(j, "encoder_hash_byte_group_nb_functions", 1, where);
  c.patch_in_forward = get_or<bool>(j, "patch_in_forward", true, where);
  c.patching_mode = get_or<std::string>(j, "patching_mode", "entropy", where);
  c.patching_threshold = get_or<double>(j, "patching_threshold", 1.335442066192627, where);
  c.max_patch_length = get_or<int64_t>(j, "max_patch_length", 0, where);
  c.patch_size = get_or<int64_t>(j, "patch_size", 4, where);
  if (get_or<bool>(j, "tie_word_embeddings", false, where))
    throw Error(str("config ", where, ": field 'tie_word_embeddings' is true; BLT never ties its head"));

  auto sub = [&](const char* name) -> json {
    if (!j.contains(name) || j[name].is_null()) return json::object();  // transformers' defaults
    return j[name];
  };
  const json enc = sub("encoder_config"), dec = sub("decoder_config"), glo = sub("global_config"),
             pat = sub("patcher_config");
  const std::string we = where + " encoder_config", wd = where + " decoder_config", wg = where + " global_config",
                    wp = where + " patcher_config";
  hf_transformer_fields(enc, c.encoder, 1024, 16, 1, 2816, 500000.0, we);
  c.encoder.cross_attn_all_layers = get_or<bool>(enc, "cross_attn_all_layers", false, we);
  c.encoder.cross_heads = c.encoder.n_heads;  // BltCrossAttention uses the sub-config's num_attention_heads
  c.encoder.cross_kv_heads = c.encoder.n_kv_heads;  // ... and its num_key_value_heads (GQA)
  hf_transformer_fields(dec, c.decoder, 1024, 16, 9, 2816, 500000.0, wd);
  c.decoder.cross_attn_all_layers = get_or<bool>(dec, "cross_attn_all_layers", true, wd);
  c.decoder.cross_heads = c.decoder.n_heads;
  c.decoder.cross_kv_heads = c.decoder.n_kv_heads;
  c.global.max_positions = 4096;
  hf_transformer_fields(glo, c.global, 2048, 16, 25, 5632, 500000.0, wg);
  for (const auto& [s, w] : {std::pair{&enc, we}, std::pair{&dec, wd}}) {
    const int64_t k = get_or<int64_t>(*s, "cross_attn_k", c.cross_attn_k, w);
    TESSERA_CHECK(k == c.cross_attn_k, "config ", w, ": field 'cross_attn_k' is ", k, " but the top level says ",
                  c.cross_attn_k);
  }
  const int64_t hg = get_or<int64_t>(dec, "hidden_size_global", c.global.dim, wd);
  TESSERA_CHECK(hg == c.global.dim, "config ", wd, ": field 'hidden_size_global' is ", hg,
                " but global_config.hidden_size is ", c.global.dim);

  if (c.patch_in_forward) {
    LocalConfig p;  // reuse the field reader; copied into the Llama config below
    p.max_positions = 8192;
    hf_transformer_fields(pat, p, 768, 12, 14, 2048, 10000.0, wp);
    c.patcher.vocab_size = positive(pat, "vocab_size", 260, wp);
    c.patcher.dim = p.dim;
    c.patcher.n_layers = p.n_layers;
    c.patcher.n_heads = p.n_heads;
    c.patcher.n_kv_heads = p.n_kv_heads;
    c.patcher.ffn_hidden = p.ffn_hidden;
    c.patcher.norm_eps = p.norm_eps;
    c.patcher.rope_theta = p.rope_theta;
    c.patcher.window = 0;  // the HF patcher is plain causal
  }
  c.local_window = 0;
  c.eos_document_cuts = false;
  c.validate(where);
  return c;
}

inline BltConfig BltConfig::from_original_json(const nlohmann::json& root, const nlohmann::json* entropy,
                                               const std::string& where0) {
  using namespace detail;
  io::detail::check_object(root, where0);
  std::string where = where0;
  const json* mp = &root;
  if (root.contains("model")) mp = &root["model"], where += " model";
  else if (root.contains("args")) mp = &root["args"], where += " args";
  const json& m = *mp;
  io::detail::check_object(m, where);
  BltConfig c;
  c.vocab_size = positive(m, "vocab_size", 260, where);
  const double mult = get_or<double>(m, "ffn_dim_multiplier", 1.0, where);
  const int64_t multiple_of = positive(m, "multiple_of", 256, where);
  const double eps = get_or<double>(m, "norm_eps", 1e-5, where);
  const double theta = get_or<double>(m, "rope_theta", 10000.0, where);
  const int64_t n_kv_local = get_or<int64_t>(m, "n_kv_heads", 0, where);
  c.cross_attn_k = positive(m, "cross_attn_k", 2, where);

  auto local = [&](LocalConfig& l, const char* dim_f, const char* layers_f, const char* heads_f) {
    l.dim = require<int64_t>(m, dim_f, where);
    l.n_layers = require<int64_t>(m, layers_f, where);
    l.n_heads = require<int64_t>(m, heads_f, where);
    TESSERA_CHECK(l.dim > 0 && l.n_layers > 0 && l.n_heads > 0, "config ", where, ": fields '", dim_f, "', '",
                  layers_f, "', '", heads_f, "' must be positive");
    l.n_kv_heads = n_kv_local > 0 ? n_kv_local : l.n_heads;
    l.ffn_hidden = original_ffn_hidden(l.dim, mult, multiple_of);
    l.norm_eps = eps;
    l.rope_theta = theta;
    l.max_positions = get_or<int64_t>(m, "max_encoder_seq_length", 24576, where);
    l.cross_heads = get_or<int64_t>(m, "cross_attn_nheads", l.n_heads, where);
    TESSERA_CHECK(l.dim % l.n_heads == 0, "config ", where, ": '", dim_f, "' ", l.dim, " is not divisible by '",
                  heads_f, "' ", l.n_heads);
  };
  local(c.encoder, "dim_local_encoder", "n_layers_local_encoder", "n_heads_local_encoder");
  local(c.decoder, "dim_local_decoder", "n_layers_local_decoder", "n_heads_local_decoder");
  c.encoder.cross_attn_all_layers = get_or<bool>(m, "cross_attn_all_layers_encoder", false, where);
  c.decoder.cross_attn_all_layers = get_or<bool>(m, "cross_attn_all_layers_decoder", true, where);
  TESSERA_CHECK(get_or<bool>(m, "cross_attn_encoder", true, where) &&
                    get_or<bool>(m, "cross_attn_decoder", true, where),
                "config ", where, ": models without encoder/decoder cross-attention are not supported");
  TESSERA_CHECK(get_or<bool>(m, "cross_attn_init_by_pooling", true, where) &&
                    get_or<std::string>(m, "downsampling_by_pooling", "max", where) == "max",
                "config ", where, ": only max-pooling initialisation of the patch queries is supported");
  TESSERA_CHECK(get_or<json>(m, "cross_attn_window_encoder", json(), where).is_null() &&
                    get_or<json>(m, "cross_attn_window_decoder", json(), where).is_null(),
                "config ", where, ": windowed cross-attention (cross_attn_window_*) is not supported");
  TESSERA_CHECK(!get_or<bool>(m, "weight_tying", false, where), "config ", where,
                ": field 'weight_tying' is true; not supported");

  c.global.dim = require<int64_t>(m, "dim_global", where);
  c.global.n_layers = require<int64_t>(m, "n_layers_global", where);
  c.global.n_heads = require<int64_t>(m, "n_heads_global", where);
  TESSERA_CHECK(c.global.dim > 0 && c.global.n_layers > 0 && c.global.n_heads > 0, "config ", where,
                ": fields 'dim_global', 'n_layers_global', 'n_heads_global' must be positive");
  const int64_t kvg = get_or<int64_t>(m, "n_kv_heads_global", 0, where);
  c.global.n_kv_heads = kvg > 0 ? kvg : c.global.n_heads;
  c.global.ffn_hidden = original_ffn_hidden(c.global.dim, mult, multiple_of);
  c.global.norm_eps = eps;
  c.global.rope_theta = theta;
  c.global.max_positions = get_or<int64_t>(m, "max_seqlen", 4096, where);
  TESSERA_CHECK(c.global.dim % c.global.n_heads == 0, "config ", where, ": 'dim_global' ", c.global.dim,
                " is not divisible by 'n_heads_global' ", c.global.n_heads);

  c.hash_sizes = get_or<std::vector<int64_t>>(m, "encoder_hash_byte_group_size", c.hash_sizes, where);
  c.hash_vocab = positive(m, "encoder_hash_byte_group_vocab", 500002, where);
  c.hash_functions = positive(m, "encoder_hash_byte_group_nb_functions", 1, where);
  TESSERA_CHECK(!get_or<bool>(m, "encoder_enable_byte_ngrams", false, where), "config ", where,
                ": frequency n-gram tables (encoder_enable_byte_ngrams) are not supported");

  c.patching_mode = get_or<std::string>(m, "patching_mode", "entropy", where);
  c.patching_threshold = get_or<double>(m, "patching_threshold", 1.335442066192627, where);
  c.max_patch_length = get_or<int64_t>(m, "max_patch_length", 0, where);
  c.patch_size = static_cast<int64_t>(get_or<double>(m, "patch_size", 4.5, where));
  TESSERA_CHECK(!get_or<bool>(m, "monotonicity", false, where) &&
                    get_or<json>(m, "patching_threshold_add", json(), where).is_null(),
                "config ", where, ": monotonic patching is not supported (released models use the global threshold)");
  c.local_window = get_or<int64_t>(m, "local_attention_window_len", 512, where);
  c.eos_document_cuts = true;
  c.eos_id = get_or<int64_t>(m, "eos_id", 2, where);

  c.patch_in_forward = entropy != nullptr;
  if (entropy) {
    std::string we = "entropy model params";
    const json* ep = entropy;
    if (entropy->contains("entropy_model")) ep = &(*entropy)["entropy_model"], we += " entropy_model";
    else if (entropy->contains("args")) ep = &(*entropy)["args"], we += " args";
    const json& e = *ep;
    io::detail::check_object(e, we);
    c.patcher.vocab_size = positive(e, "vocab_size", 260, we);
    c.patcher.dim = require<int64_t>(e, "dim", we);
    c.patcher.n_layers = require<int64_t>(e, "n_layers", we);
    c.patcher.n_heads = require<int64_t>(e, "n_heads", we);
    TESSERA_CHECK(c.patcher.dim > 0 && c.patcher.n_layers > 0 && c.patcher.n_heads > 0 &&
                      c.patcher.dim % c.patcher.n_heads == 0,
                  "config ", we, ": 'dim', 'n_layers', 'n_heads' must be positive and dim divisible by n_heads");
    const int64_t kv = get_or<int64_t>(e, "n_kv_heads", 0, we);
    c.patcher.n_kv_heads = kv > 0 ? kv : c.patcher.n_heads;
    c.patcher.ffn_hidden = original_ffn_hidden(c.patcher.dim, get_or<double>(e, "ffn_dim_multiplier", 1.0, we),
                                               positive(e, "multiple_of", 256, we));
    c.patcher.norm_eps = get_or<double>(e, "norm_eps", 1e-5, we);
    c.patcher.rope_theta = get_or<double>(e, "rope_theta", 10000.0, we);
    c.patcher.window = get_or<int64_t>(e, "sliding_window", 512, we);
  }
  c.validate(where);
  return c;
}

inline BltConfig BltConfig::read(const std::string& path, const std::string& entropy_path) {
  using io::json;
  const json j = io::read_json_file(path);
  io::detail::check_object(j, path);
  const bool hf_type = j.contains("model_type") && j["model_type"].is_string() && j["model_type"] == "blt";
  if (j.contains("encoder_config") || hf_type) return from_hf_json(j, path);
  if (j.contains("model") || j.contains("args")) {
    if (entropy_path.empty()) return from_original_json(j, nullptr, path);
    const json e = io::read_json_file(entropy_path);
    return from_original_json(j, &e, path);
  }
  throw Error(str(path, ": not a BLT config (expected 'encoder_config' of the Hugging Face layout, or a 'model'/"
                  "'args' section of the original layout)"));
}

inline nlohmann::json BltConfig::to_hf_json() const {
  using json = nlohmann::json;
  auto rope = [](double theta) { return json{{"rope_theta", theta}, {"rope_type", "default"}}; };
  auto local = [&](const LocalConfig& l, const char* type) {
    return json{{"model_type", type},
                {"hidden_size", l.dim},
                {"num_attention_heads", l.n_heads},
                {"num_key_value_heads", l.n_kv_heads},
                {"num_hidden_layers", l.n_layers},
                {"intermediate_size", l.ffn_hidden},
                {"rms_norm_eps", l.norm_eps},
                {"rope_parameters", rope(l.rope_theta)},
                {"max_position_embeddings", l.max_positions},
                {"cross_attn_all_layers", l.cross_attn_all_layers},
                {"cross_attn_k", cross_attn_k},
                {"hidden_size_global", global.dim},
                {"vocab_size", vocab_size},
                {"hidden_act", "silu"}};
  };
  json j{{"architectures", {"BltForCausalLM"}},
         {"model_type", "blt"},
         {"vocab_size", vocab_size},
         {"cross_attn_k", cross_attn_k},
         {"encoder_hash_byte_group_size", hash_sizes},
         {"encoder_hash_byte_group_vocab", hash_vocab},
         {"encoder_hash_byte_group_nb_functions", hash_functions},
         {"patch_in_forward", patch_in_forward},
         {"patching_mode", patching_mode},
         {"patching_threshold", patching_threshold},
         {"max_patch_length", max_patch_length > 0 ? json(max_patch_length) : json()},
         {"patch_size", patch_size},
         {"tie_word_embeddings", false},
         {"dtype", "float32"},
         {"encoder_config", local(encoder, "blt_local_encoder")},
         {"decoder_config", local(decoder, "blt_local_decoder")},
         {"global_config",
          json{{"model_type", "blt_global_transformer"},
               {"hidden_size", global.dim},
               {"num_attention_heads", global.n_heads},
               {"num_key_value_heads", global.n_kv_heads},
               {"num_hidden_layers", global.n_layers},
               {"intermediate_size", global.ffn_hidden},
               {"rms_norm_eps", global.norm_eps},
               {"rope_parameters", rope(global.rope_theta)},
               {"max_position_embeddings", global.max_positions},
               {"hidden_act", "silu"}}}};
  if (patch_in_forward)
    j["patcher_config"] = json{{"model_type", "blt_patcher"},
                               {"vocab_size", patcher.vocab_size},
                               {"hidden_size", patcher.dim},
                               {"num_attention_heads", patcher.n_heads},
                               {"num_key_value_heads", patcher.n_kv_heads ? patcher.n_kv_heads : patcher.n_heads},
                               {"num_hidden_layers", patcher.n_layers},
                               {"intermediate_size", patcher.ffn_hidden},
                               {"rms_norm_eps", patcher.norm_eps},
                               {"rope_parameters", rope(patcher.rope_theta)},
                               {"max_position_embeddings", 8192}};
  return j;
}

}  // namespace tessera::blt
