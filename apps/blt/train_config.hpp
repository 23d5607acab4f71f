// Training configs of the `blt` app (JSON): the entropy model (`blt train-entropy`) and the BLT
// (`blt train`). Unknown fields are errors, so a typo never silently falls back to a default.
//
// train-entropy: {"model": {"dim", "n_layers", "n_heads", "n_kv_heads"?, "ffn_hidden", "window"? (512),
//                           "norm_eps"?, "rope_theta"? (10000)},
//                 "data": {...}, "train": {...}}
// train:         {"entropy_model": "DIR", "model": {"encoder": L, "global": L, "decoder": L, "cross_attn_k"?,
//                 "hash_sizes"?, "hash_vocab"?, "hash_functions"?, "rope_theta"?, "norm_eps"?}
//                 (L = {"dim", "n_layers", "n_heads", "n_kv_heads"?, "ffn_hidden"?}; a transformers
//                 BltConfig object with "encoder_config" etc. is accepted too),
//                 "patching": {"threshold"? | "target_patch_length"? (4.5), "calibration_windows"? (32),
//                              "max_patch_length"? (0)},
//                 "data": {...}, "train": {...}}
// data:  {"path": FILE_OR_FOLDER or [...], "heldout_fraction", "batch", "seq_len", "eval_windows",
// "max_bytes"} train: tessera::train::TrainConfig fields (steps, warmup, schedule, lr, min_lr, betas, eps,
// weight_decay,
//        grad_clip, log_every, eval_every, ckpt_every, keep_last, seed).
#pragma once
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common.hpp"

namespace bltapp {

using tessera::io::check_keys;

inline tessera::models::LlamaConfig entropy_model_config(nlohmann::json j, const std::string& where) {
  check_keys(j,
             {"vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "window", "norm_eps",
              "rope_theta"},
             where);
  if (!j.contains("vocab_size")) j["vocab_size"] = tessera::blt::VOCAB_SIZE;
  if (!j.contains("window")) j["window"] = tessera::blt::kEntropyWindow;
  TESSERA_CHECK(j["window"].is_number_integer() && j["window"].get<int64_t>() >= 0, "config ", where,
                ": field 'window' must be a non-negative integer");
  auto c = tessera::models::LlamaConfig::from_json(j, "config " + where);
  TESSERA_CHECK(c.vocab_size == tessera::blt::VOCAB_SIZE, "config ", where, ": field 'vocab_size' must be ",
                tessera::blt::VOCAB_SIZE, " (byte + 4 ids), found ", c.vocab_size);
  TESSERA_CHECK((c.dim / c.n_heads) % 2 == 0, "config ", where,
                ": head dimension dim / n_heads = ", c.dim / c.n_heads, " must be even for RoPE");
  return c;
}

/// One local (encoder/decoder) or global block stack of the compact form.
template <class C>
void read_stack(const nlohmann::json& j, C& c, double theta, double eps, const std::string& where) {
  using tessera::io::get_or;
  using tessera::io::require;
  check_keys(j, {"dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden"}, where);
  c.dim = require<int64_t>(j, "dim", where);
  c.n_layers = require<int64_t>(j, "n_layers", where);
  c.n_heads = require<int64_t>(j, "n_heads", where);
  TESSERA_CHECK(c.dim > 0 && c.n_layers > 0 && c.n_heads > 0, "config ", where,
                ": fields 'dim', 'n_layers', 'n_heads' must be positive");
  TESSERA_CHECK(c.dim % c.n_heads == 0 && (c.dim / c.n_heads) % 2 == 0, "config ", where, ": dim ", c.dim,
                " must be a multiple of n_heads ", c.n_heads, " with an even head dimension");
  c.n_kv_heads = get_or<int64_t>(j, "n_kv_heads", c.n_heads, where);
  TESSERA_CHECK(c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0, "config ", where, ": n_heads ", c.n_heads,
                " is not a multiple of n_kv_heads ", c.n_kv_heads);
  c.ffn_hidden = get_or<int64_t>(j, "ffn_hidden", 8 * c.dim / 3, where);
  TESSERA_CHECK(c.ffn_hidden > 0, "config ", where, ": field 'ffn_hidden' must be positive");
  c.rope_theta = theta;
  c.norm_eps = eps;
}

/// The BLT architecture of a training config (without the entropy model, which comes from its folder).
inline tessera::blt::BltConfig blt_model_config(const nlohmann::json& j, const std::string& where) {
  using tessera::io::get_or;
  tessera::io::detail::check_object(j, where);
  if (j.contains("encoder_config")) return tessera::blt::BltConfig::from_hf_json(j, where);
  check_keys(j,
             {"encoder", "global", "decoder", "cross_attn_k", "hash_sizes", "hash_vocab", "hash_functions",
              "rope_theta", "norm_eps"},
             where);
  tessera::blt::BltConfig c;
  const double theta = get_or<double>(j, "rope_theta", 500000.0, where);
  const double eps = get_or<double>(j, "norm_eps", 1e-5, where);
  for (const char* s : {"encoder", "global", "decoder"})
    TESSERA_CHECK(j.contains(s), "config ", where, ": missing field '", s, "'");
  read_stack(j["encoder"], c.encoder, theta, eps, where + ".encoder");
  read_stack(j["global"], c.global, theta, eps, where + ".global");
  read_stack(j["decoder"], c.decoder, theta, eps, where + ".decoder");
  c.encoder.cross_heads = c.encoder.n_heads;  // as transformers' BltCrossAttention
  c.decoder.cross_heads = c.decoder.n_heads;
  c.encoder.cross_attn_all_layers = false;
  c.decoder.cross_attn_all_layers = true;
  c.cross_attn_k = get_or<int64_t>(j, "cross_attn_k", 2, where);
  c.hash_sizes = get_or<std::vector<int64_t>>(j, "hash_sizes", c.hash_sizes, where);
  c.hash_vocab = get_or<int64_t>(j, "hash_vocab", 4099, where);
  c.hash_functions = get_or<int64_t>(j, "hash_functions", 1, where);
  c.vocab_size = tessera::blt::VOCAB_SIZE;
  c.local_window = 0;  // the transformers semantics, so that the saved checkpoint behaves the same there
  c.eos_document_cuts = false;
  return c;
}

/// Data section of a training config: one path or a list of text files / folders (gzip/dictzip allowed).
struct DataConfig {
  std::vector<std::string> paths = {"/usr/share/dictd/gcide.dict.dz"};
  double heldout = 0.01;
  int64_t batch = 8, seq_len = 256, eval_windows = 32, max_bytes = 0;

  static DataConfig from_json(const nlohmann::json& j, const std::string& where) {
    using tessera::io::get_or;
    check_keys(j, {"path", "heldout_fraction", "batch", "seq_len", "eval_windows", "max_bytes"}, where);
    DataConfig d;
    if (j.contains("path") && j["path"].is_array())
      d.paths = tessera::io::require<std::vector<std::string>>(j, "path", where);
    else if (j.contains("path"))
      d.paths = {tessera::io::require<std::string>(j, "path", where)};
    TESSERA_CHECK(!d.paths.empty(), "config ", where, ": field 'path' is an empty list");
    d.heldout = get_or<double>(j, "heldout_fraction", d.heldout, where);
    d.batch = get_or<int64_t>(j, "batch", d.batch, where);
    d.seq_len = get_or<int64_t>(j, "seq_len", d.seq_len, where);
    d.eval_windows = get_or<int64_t>(j, "eval_windows", d.eval_windows, where);
    d.max_bytes = get_or<int64_t>(j, "max_bytes", d.max_bytes, where);
    TESSERA_CHECK(d.heldout > 0 && d.heldout < 1, "config ", where,
                  ": field 'heldout_fraction' must be in (0, 1), found ", d.heldout);
    TESSERA_CHECK(d.batch > 0, "config ", where, ": field 'batch' must be positive, found ", d.batch);
    TESSERA_CHECK(d.seq_len > 1, "config ", where, ": field 'seq_len' must be > 1, found ", d.seq_len);
    TESSERA_CHECK(d.eval_windows >= 0, "config ", where, ": field 'eval_windows' must be >= 0");
    TESSERA_CHECK(d.max_bytes >= 0, "config ", where, ": field 'max_bytes' must be >= 0");
    return d;
  }
};

struct PatchingConfig {
  double threshold = NAN;            // NaN: calibrate
  double target_patch_length = 4.5;  // mean bytes per patch aimed at by the calibration (spec §2.4)
  int64_t calibration_windows = 32;
  int64_t max_patch_length = 0;

  static PatchingConfig from_json(const nlohmann::json& j, const std::string& where) {
    using tessera::io::get_or;
    check_keys(j, {"threshold", "target_patch_length", "calibration_windows", "max_patch_length"}, where);
    PatchingConfig p;
    p.threshold = get_or<double>(j, "threshold", p.threshold, where);
    p.target_patch_length = get_or<double>(j, "target_patch_length", p.target_patch_length, where);
    p.calibration_windows = get_or<int64_t>(j, "calibration_windows", p.calibration_windows, where);
    p.max_patch_length = get_or<int64_t>(j, "max_patch_length", p.max_patch_length, where);
    TESSERA_CHECK(p.target_patch_length > 1, "config ", where, ": field 'target_patch_length' must be > 1");
    TESSERA_CHECK(p.calibration_windows > 0, "config ", where, ": field 'calibration_windows' must be > 0");
    TESSERA_CHECK(p.max_patch_length >= 0, "config ", where, ": field 'max_patch_length' must be >= 0");
    return p;
  }
};

}  // namespace bltapp
