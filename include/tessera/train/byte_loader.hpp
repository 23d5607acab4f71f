// Batches of byte windows for byte-level language models: random windows for training (resumable exactly),
// sequential non-overlapping windows for evaluation (bits per byte).
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::train {

/// inputs[b, t] = byte[o_b + t] + id_offset, targets[b, t] = byte[o_b + t + 1] + id_offset, shapes [B, T].
struct ByteBatch {
  Tensor<int64_t> inputs;
  Tensor<int64_t> targets;
  int64_t rows() const { return inputs.rank() ? inputs.size(0) : 0; }
  int64_t tokens() const { return inputs.numel(); }
};

struct ByteLoaderConfig {
  int64_t batch = 8;      // B windows per batch
  int64_t seq_len = 256;  // T: each window holds T+1 bytes
  uint64_t seed = 0;
  int64_t id_offset = 0;  // added to every byte: 0 for a plain byte LM, 4 for BLT (ids 0..3 are special)
};

namespace detail {
inline void fill_window(const uint8_t* w, int64_t T, int64_t offset, int64_t* in, int64_t* tg) {
  for (int64_t t = 0; t < T; ++t) {
    in[t] = static_cast<int64_t>(w[t]) + offset;
    tg[t] = static_cast<int64_t>(w[t + 1]) + offset;
  }
}
inline nlohmann::json u64_string(uint64_t x) {
  return std::to_string(x);
}
inline uint64_t parse_u64(const nlohmann::json& j, const char* field) {
  TESSERA_CHECK(j.is_string(), "loader state: field '", field, "' must be a decimal string");
  const auto& s = j.get_ref<const std::string&>();
  TESSERA_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos, "loader state: field '",
                field, "' is not a decimal integer: '", s, "'");
  try {
    return std::stoull(s);
  } catch (const std::exception&) {
    throw Error(str("loader state: field '", field, "' is out of range: '", s, "'"));
  }
}
}  // namespace detail

/// Training batches: each row is a window of T+1 bytes starting at an offset drawn uniformly from
/// [0, size - T - 1] with an Rng seeded by config.seed (row order = draw order). The whole position is the
/// Rng state plus the number of batches drawn; state()/set_state() (or the JSON forms) restore it exactly.
class ByteLoader {
 public:
  using Batch = ByteBatch;
  struct State {
    Rng::State rng;
    int64_t batches = 0;
  };

  /// Takes the bytes by value: move the training split in to avoid a copy.
  ByteLoader(std::vector<uint8_t> data, ByteLoaderConfig cfg)
      : data_(std::move(data)), cfg_(cfg), rng_(cfg.seed) {
    TESSERA_CHECK(cfg.batch > 0, "byte loader: batch must be > 0, got ", cfg.batch);
    TESSERA_CHECK(cfg.seq_len > 0, "byte loader: seq_len must be > 0, got ", cfg.seq_len);
    TESSERA_CHECK(static_cast<int64_t>(data_.size()) >= cfg.seq_len + 1, "byte loader: ", data_.size(),
                  " bytes of data is too little for one window of seq_len+1 = ", cfg.seq_len + 1, " bytes");
  }

  const ByteLoaderConfig& config() const { return cfg_; }
  int64_t size() const { return static_cast<int64_t>(data_.size()); }
  int64_t tokens_per_batch() const { return cfg_.batch * cfg_.seq_len; }
  int64_t batches_drawn() const { return batches_; }

  /// Fill `b` (reusing its buffers) with the next batch.
  void next(Batch& b) {
    const int64_t B = cfg_.batch, T = cfg_.seq_len;
    b.inputs.resize_uninit({B, T});
    b.targets.resize_uninit({B, T});
    const uint64_t choices = static_cast<uint64_t>(size() - T);  // starts 0 .. size-T-1
    for (int64_t r = 0; r < B; ++r) {
      const auto o = static_cast<int64_t>(rng_.below(choices));
      detail::fill_window(data_.data() + o, T, cfg_.id_offset, b.inputs.data() + r * T,
                          b.targets.data() + r * T);
    }
    ++batches_;
  }
  Batch next() {
    Batch b;
    next(b);
    return b;
  }

  State state() const { return {rng_.state(), batches_}; }
  void set_state(const State& s) {
    rng_.set_state(s.rng);
    batches_ = s.batches;
  }

  /// JSON form for trainer_state.json: RNG words and the spare normal's bit pattern as decimal strings
  /// (exact for all 64 bits), plus the geometry, which set_state_json checks.
  nlohmann::json state_json() const {
    const auto st = rng_.state();
    nlohmann::json words = nlohmann::json::array();
    for (uint64_t w : st.s) words.push_back(detail::u64_string(w));
    return {{"rng", words},
            {"rng_has_spare", st.has_spare},
            {"rng_spare_bits", detail::u64_string(std::bit_cast<uint64_t>(st.spare))},
            {"batches", batches_},
            {"seed", detail::u64_string(cfg_.seed)},
            {"batch", cfg_.batch},
            {"seq_len", cfg_.seq_len},
            {"id_offset", cfg_.id_offset},
            {"data_bytes", size()}};
  }
  /// Restore from state_json(). The saved seed, batch, seq_len, id_offset and data size must equal this
  /// loader's: otherwise the resumed stream would differ from the interrupted one, so it is an error.
  void set_state_json(const nlohmann::json& j) {
    TESSERA_CHECK(j.is_object(), "loader state: expected a JSON object");
    for (const char* f : {"rng", "rng_has_spare", "rng_spare_bits", "batches", "seed", "batch", "seq_len",
                          "id_offset", "data_bytes"})
      TESSERA_CHECK(j.contains(f), "loader state: field '", f, "' is missing");
    auto same = [&](const char* f, int64_t mine) {
      TESSERA_CHECK(j[f].is_number_integer() && j[f].get<int64_t>() == mine, "loader state: saved ", f, " ",
                    j[f].dump(), " differs from this run's ", mine,
                    " (exact resume needs the same data and batch "
                    "geometry)");
    };
    same("batch", cfg_.batch);
    same("seq_len", cfg_.seq_len);
    same("id_offset", cfg_.id_offset);
    same("data_bytes", size());
    TESSERA_CHECK(detail::parse_u64(j["seed"], "seed") == cfg_.seed, "loader state: saved seed ",
                  j["seed"].dump(), " differs from this run's ", cfg_.seed);
    const auto& words = j["rng"];
    TESSERA_CHECK(words.is_array() && words.size() == 4,
                  "loader state: field 'rng' must be 4 decimal strings");
    State s;
    for (size_t i = 0; i < 4; ++i) s.rng.s[i] = detail::parse_u64(words[i], "rng");
    TESSERA_CHECK(j["rng_has_spare"].is_boolean(), "loader state: field 'rng_has_spare' must be a boolean");
    s.rng.has_spare = j["rng_has_spare"].get<bool>();
    s.rng.spare = std::bit_cast<double>(detail::parse_u64(j["rng_spare_bits"], "rng_spare_bits"));
    TESSERA_CHECK(j["batches"].is_number_integer() && j["batches"].get<int64_t>() >= 0,
                  "loader state: field 'batches' must be a non-negative integer");
    s.batches = j["batches"].get<int64_t>();
    set_state(s);
  }

 private:
  std::vector<uint8_t> data_;
  ByteLoaderConfig cfg_;
  Rng rng_;
  int64_t batches_ = 0;
};

/// Evaluation windows over held-out bytes, in order: window k has inputs bytes [kT, kT+T) and targets bytes
/// [kT+1, kT+T+1), so windows do not overlap and every byte after the first is predicted exactly once
/// (trailing bytes that do not fill a window are left out). Batches hold up to `batch` windows; the last one
/// may have fewer rows. Non-owning: `data` must outlive the iterator.
class EvalWindows {
 public:
  EvalWindows(std::span<const uint8_t> data, int64_t batch, int64_t seq_len, int64_t id_offset = 0,
              int64_t max_windows = 0)
      : data_(data), batch_(batch), T_(seq_len), offset_(id_offset) {
    TESSERA_CHECK(batch > 0 && seq_len > 0, "eval windows: batch and seq_len must be > 0, got ", batch,
                  " and ", seq_len);
    windows_ = data.size() > 0 ? (static_cast<int64_t>(data.size()) - 1) / seq_len : 0;
    if (max_windows > 0) windows_ = std::min(windows_, max_windows);
    TESSERA_CHECK(windows_ > 0, "eval windows: ", data.size(),
                  " held-out bytes is too little for one window of ", seq_len + 1, " bytes");
  }
  int64_t num_windows() const { return windows_; }
  /// Number of predicted bytes over all windows (the denominator of bits per byte).
  int64_t num_targets() const { return windows_ * T_; }
  void reset() { next_ = 0; }
  /// Fill `b` with the next batch; false when all windows have been returned.
  bool next(ByteBatch& b) {
    if (next_ >= windows_) return false;
    const int64_t rows = std::min(batch_, windows_ - next_);
    b.inputs.resize_uninit({rows, T_});
    b.targets.resize_uninit({rows, T_});
    for (int64_t r = 0; r < rows; ++r)
      detail::fill_window(data_.data() + (next_ + r) * T_, T_, offset_, b.inputs.data() + r * T_,
                          b.targets.data() + r * T_);
    next_ += rows;
    return true;
  }

 private:
  std::span<const uint8_t> data_;
  int64_t batch_, T_, offset_;
  int64_t windows_ = 0, next_ = 0;
};

/// Bits per byte from a summed negative log-likelihood in nats over n predicted bytes.
inline double bits_per_byte(double sum_nll_nats, int64_t n_bytes) {
  TESSERA_CHECK(n_bytes > 0, "bits_per_byte: no bytes");
  return sum_nll_nats / (static_cast<double>(n_bytes) * std::log(2.0));
}

}  // namespace tessera::train
