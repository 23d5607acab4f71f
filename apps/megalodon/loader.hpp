// Training batches of token windows for `megalodon train`, resumable exactly (tessera::train::Trainer's Loader
// interface: Batch, next, tokens_per_batch, state_json, set_state_json).
//
// Two modes:
//  * random (default): each row is a window of T+1 tokens at an offset drawn uniformly from the data with an
//    Rng seeded by config.seed (as tessera::train::ByteLoader, over token ids instead of bytes);
//  * contiguous (data.carry_state): the data is cut into `batch` equal lanes; batch k holds window k of every
//    lane, so row b of consecutive batches continues the same text and the model's state can be carried from
//    one window to the next (unlimited context). When the lanes are used up they start again and the batch
//    is marked `fresh` (the carried state must be reset).
// In contiguous mode the app's carried model state is part of the loader's position: `save_extra`/`load_extra`
// put it into / take it from state_json, which the Trainer stores in every checkpoint.
#pragma once
#include <algorithm>
#include <bit>
#include <charconv>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/tensor.hpp"

namespace mglapp {

struct TokenBatch {
  tessera::Tensor<int64_t> inputs, targets;  // [B, T]
  bool fresh = false;                        // contiguous mode: first window of every lane
  int64_t rows() const { return inputs.rank() ? inputs.size(0) : 0; }
  int64_t tokens() const { return inputs.numel(); }
};

struct TokenLoaderConfig {
  int64_t batch = 8, seq_len = 256;
  uint64_t seed = 0;
  bool contiguous = false;
};

class TokenLoader {
 public:
  using Batch = TokenBatch;

  TokenLoader(std::vector<int32_t> tokens, TokenLoaderConfig cfg)
      : data_(std::move(tokens)), cfg_(cfg), rng_(cfg.seed) {
    TESSERA_CHECK(cfg.batch > 0 && cfg.seq_len > 0, "token loader: batch and seq_len must be > 0, got ", cfg.batch,
                  " and ", cfg.seq_len);
    TESSERA_CHECK(size() >= cfg.seq_len + 1, "training data: ", size(), " tokens is too little for one window of ",
                  "seq_len + 1 = ", cfg.seq_len + 1, " tokens");
    if (cfg.contiguous)
      TESSERA_CHECK(windows_per_lane() >= 1, "training data: ", size(), " tokens cut into ", cfg.batch,
                    " lanes (data.carry_state) is too little for one window of ", cfg.seq_len + 1,
                    " tokens per lane");
  }

  int64_t size() const { return static_cast<int64_t>(data_.size()); }
  int64_t tokens_per_batch() const { return cfg_.batch * cfg_.seq_len; }
  int64_t lane_size() const { return size() / cfg_.batch; }
  int64_t windows_per_lane() const { return (lane_size() - 1) / cfg_.seq_len; }

  void next(Batch& b) {
    const int64_t B = cfg_.batch, T = cfg_.seq_len;
    b.inputs.resize_uninit({B, T});
    b.targets.resize_uninit({B, T});
    const int64_t k = cfg_.contiguous ? batches_ % windows_per_lane() : 0;
    b.fresh = cfg_.contiguous && k == 0;
    for (int64_t r = 0; r < B; ++r) {
      const int64_t o = cfg_.contiguous ? r * lane_size() + k * T
                                        : static_cast<int64_t>(rng_.below(static_cast<uint64_t>(size() - T)));
      for (int64_t t = 0; t < T; ++t) {
        b.inputs[r * T + t] = data_[o + t];
        b.targets[r * T + t] = data_[o + t + 1];
      }
    }
    ++batches_;
  }

  /// Carried model state (contiguous mode): saved with the position, restored with it.
  std::function<nlohmann::json()> save_extra;
  std::function<void(const nlohmann::json&)> load_extra;

  /// RNG words as decimal strings (exact for 64 bits), the batch count and the geometry (checked on restore).
  nlohmann::json state_json() const {
    const auto st = rng_.state();
    nlohmann::json words = nlohmann::json::array();
    for (uint64_t w : st.s) words.push_back(std::to_string(w));
    nlohmann::json j = {{"rng", words},
                        {"rng_has_spare", st.has_spare},
                        {"rng_spare_bits", std::to_string(std::bit_cast<uint64_t>(st.spare))},
                        {"batches", batches_},
                        {"seed", std::to_string(cfg_.seed)},
                        {"batch", cfg_.batch},
                        {"seq_len", cfg_.seq_len},
                        {"contiguous", cfg_.contiguous},
                        {"data_tokens", size()}};
    if (save_extra) j["carried_state"] = save_extra();
    return j;
  }

  void set_state_json(const nlohmann::json& j) {
    TESSERA_CHECK(j.is_object(), "loader state: expected a JSON object");
    for (const char* f : {"rng", "rng_has_spare", "rng_spare_bits", "batches", "seed", "batch", "seq_len",
                          "contiguous", "data_tokens"})
      TESSERA_CHECK(j.contains(f), "loader state: field '", f, "' is missing");
    auto same = [&](const char* f, const nlohmann::json& mine) {
      TESSERA_CHECK(j[f] == mine, "loader state: saved ", f, " ", j[f].dump(), " differs from this run's ",
                    mine.dump(), " (exact resume needs the same data, tokenizer and batch geometry)");
    };
    same("batch", cfg_.batch);
    same("seq_len", cfg_.seq_len);
    same("contiguous", cfg_.contiguous);
    same("data_tokens", size());
    same("seed", std::to_string(cfg_.seed));
    const auto& words = j["rng"];
    TESSERA_CHECK(words.is_array() && words.size() == 4, "loader state: field 'rng' must be 4 decimal strings");
    tessera::Rng::State s;
    for (size_t i = 0; i < 4; ++i) s.s[i] = parse_u64(words[i], "rng");
    TESSERA_CHECK(j["rng_has_spare"].is_boolean(), "loader state: field 'rng_has_spare' must be a boolean");
    s.has_spare = j["rng_has_spare"].get<bool>();
    s.spare = std::bit_cast<double>(parse_u64(j["rng_spare_bits"], "rng_spare_bits"));
    TESSERA_CHECK(j["batches"].is_number_integer() && j["batches"].get<int64_t>() >= 0,
                  "loader state: field 'batches' must be a non-negative integer");
    if (load_extra) {
      TESSERA_CHECK(j.contains("carried_state"), "loader state: field 'carried_state' is missing");
      load_extra(j["carried_state"]);
    }
    rng_.set_state(s);
    batches_ = j["batches"].get<int64_t>();
  }

 private:
  static uint64_t parse_u64(const nlohmann::json& j, const char* field) {
    TESSERA_CHECK(j.is_string(), "loader state: field '", field, "' must be a decimal string");
    const auto& s = j.get_ref<const std::string&>();
    uint64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    TESSERA_CHECK(!s.empty() && ec == std::errc() && end == s.data() + s.size(), "loader state: field '", field,
                  "' is not a 64-bit decimal integer: '", s, "'");
    return v;
  }

  std::vector<int32_t> data_;
  TokenLoaderConfig cfg_;
  tessera::Rng rng_;
  int64_t batches_ = 0;
};

}  // namespace mglapp
