// Megalodon model configuration. The JSON field names are the official model arguments (ModelConf in the
// official code, megalodon spec §5): a config.json written by the official code loads here and ours loads
// there. Options the official presets never use (dropout > 0, norm_affine false) are refused with a message.
#pragma once
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "tessera/core/error.hpp"

namespace tessera::models {

struct MegalodonConfig {
  int64_t num_layers = 8, model_dim = 1024, z_dim = 256, value_dim = 2048, num_heads = 1;
  int64_t ffn_hidden_dim = 2048, cema_ndim = 16, chunk_size = 2048;
  int64_t vocab_size = -1, output_size = -1, norm_num_groups = 32;
  bool norm_affine = true;
  double norm_eps = 1e-5;
  double rope_base = 10000.0;  // official default when the field is null
  bool swiglu = false, rescale_nffn = false, scale_emb = false, share_emb = false;
  // Accepted for compatibility, no effect here: efficient_attn (our attention is always blockwise),
  // init_mode (only "he" exists), layerwise_ckpt (activation checkpointing is a memory trade we do not make).
  std::string efficient_attn, init_mode = "he";
  bool layerwise_ckpt = false;

  int64_t z_head_dim() const { return z_dim / num_heads; }
  int64_t v_head_dim() const { return value_dim / num_heads; }
  int64_t out_size() const { return output_size == -1 ? vocab_size : output_size; }

  /// Every structural size is required; the rest defaults as in the official ModelConf. Errors name the
  /// field.
  static MegalodonConfig from_json(const nlohmann::json& j, const std::string& where = "megalodon config") {
    TESSERA_CHECK(j.is_object(), where, ": expected a JSON object");
    auto req = [&](const char* f) -> int64_t {
      TESSERA_CHECK(j.contains(f), where, ": missing field '", f, "'");
      TESSERA_CHECK(j[f].is_number_integer() && j[f].get<int64_t>() > 0, where, ": field '", f,
                    "' must be a positive integer");
      return j[f].get<int64_t>();
    };
    auto num = [&](const char* f, double d) {
      if (!j.contains(f) || j[f].is_null()) return d;
      TESSERA_CHECK(j[f].is_number(), where, ": field '", f, "' must be a number");
      return j[f].get<double>();
    };
    auto flag = [&](const char* f, bool d) {
      if (!j.contains(f)) return d;
      TESSERA_CHECK(j[f].is_boolean(), where, ": field '", f, "' must be true or false");
      return j[f].get<bool>();
    };
    MegalodonConfig c;
    c.num_layers = req("num_layers");
    c.model_dim = req("model_dim");
    c.z_dim = req("z_dim");
    c.value_dim = req("value_dim");
    c.num_heads = req("num_heads");
    c.ffn_hidden_dim = req("ffn_hidden_dim");
    c.cema_ndim = req("cema_ndim");
    c.chunk_size = req("chunk_size");
    c.vocab_size = req("vocab_size");
    c.norm_num_groups = req("norm_num_groups");
    c.output_size = static_cast<int64_t>(num("output_size", -1));
    c.norm_eps = num("norm_eps", 1e-5);
    c.rope_base = num("rope_base", 10000.0);
    c.norm_affine = flag("norm_affine", true);
    c.swiglu = flag("swiglu", false);
    c.rescale_nffn = flag("rescale_nffn", false);
    c.scale_emb = flag("scale_emb", false);
    c.share_emb = flag("share_emb", false);
    c.layerwise_ckpt = flag("layerwise_ckpt", false);
    if (j.contains("efficient_attn") && !j["efficient_attn"].is_null()) {
      TESSERA_CHECK(j["efficient_attn"].is_string(), where,
                    ": field 'efficient_attn' must be null or a string");
      c.efficient_attn = j["efficient_attn"].get<std::string>();
      TESSERA_CHECK(c.efficient_attn == "swift" || c.efficient_attn == "fused", where,
                    ": field 'efficient_attn' must be null, \"swift\" or \"fused\", got \"", c.efficient_attn,
                    "\"");
    }
    if (j.contains("init_mode")) {
      TESSERA_CHECK(j["init_mode"].is_string(), where, ": field 'init_mode' must be a string");
      c.init_mode = j["init_mode"].get<std::string>();
    }
    for (const char* f : {"dropout", "hidden_dropout", "attention_dropout"})
      TESSERA_CHECK(num(f, 0.0) == 0.0, where, ": field '", f,
                    "' must be 0 (dropout is not implemented; every official preset uses 0)");
    c.validate(where);
    return c;
  }

  void validate(const std::string& where = "megalodon config") const {
    TESSERA_CHECK(z_dim % num_heads == 0, where, ": z_dim ", z_dim, " is not divisible by num_heads ",
                  num_heads);
    TESSERA_CHECK(value_dim % num_heads == 0, where, ": value_dim ", value_dim,
                  " is not divisible by num_heads ", num_heads);
    TESSERA_CHECK(z_head_dim() % 2 == 0, where, ": z_dim / num_heads = ", z_head_dim(),
                  " must be even (rotary pairs)");
    TESSERA_CHECK(model_dim % norm_num_groups == 0, where, ": model_dim ", model_dim,
                  " is not divisible by norm_num_groups ", norm_num_groups);
    TESSERA_CHECK(cema_ndim <= 64, where, ": cema_ndim ", cema_ndim, " is above 64");
    TESSERA_CHECK(norm_affine, where, ": field 'norm_affine' must be true (every official preset uses it)");
    TESSERA_CHECK(output_size == -1 || output_size > 0, where,
                  ": field 'output_size' must be -1 or positive");
    TESSERA_CHECK(!share_emb || out_size() == vocab_size, where,
                  ": share_emb needs output_size == vocab_size");
    TESSERA_CHECK(norm_eps > 0 && std::isfinite(norm_eps), where, ": field 'norm_eps' must be positive");
    TESSERA_CHECK(rope_base > 0 && std::isfinite(rope_base), where, ": field 'rope_base' must be positive");
  }

  nlohmann::json to_json() const {
    nlohmann::json j = {{"num_layers", num_layers},
                        {"model_dim", model_dim},
                        {"z_dim", z_dim},
                        {"value_dim", value_dim},
                        {"num_heads", num_heads},
                        {"ffn_hidden_dim", ffn_hidden_dim},
                        {"cema_ndim", cema_ndim},
                        {"chunk_size", chunk_size},
                        {"init_mode", init_mode},
                        {"vocab_size", vocab_size},
                        {"output_size", output_size},
                        {"norm_num_groups", norm_num_groups},
                        {"norm_affine", norm_affine},
                        {"norm_eps", norm_eps},
                        {"rope_base", rope_base},
                        {"dropout", 0.0},
                        {"hidden_dropout", 0.0},
                        {"attention_dropout", 0.0},
                        {"swiglu", swiglu},
                        {"rescale_nffn", rescale_nffn},
                        {"scale_emb", scale_emb},
                        {"share_emb", share_emb},
                        {"layerwise_ckpt", layerwise_ckpt}};
    j["efficient_attn"] = efficient_attn.empty() ? nlohmann::json(nullptr) : nlohmann::json(efficient_attn);
    return j;
  }
};

}  // namespace tessera::models
