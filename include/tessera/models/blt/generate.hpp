// BLT text generation (specs/blt.md §9) with caches, and the reference no-cache path it must reproduce.
//
//   blt::GenerateOptions o;  // max_new_tokens, temperature (0 = greedy), top_k, top_p, seed, stop_at_eos
//   o.max_new_tokens = 200;
//   auto r = blt::generate_cached(lm, {blt::encode("A BLT has"), blt::encode("my name is")}, o);
//   r.tokens[0];               // the generated ids of prompt 0 (EOS last when it stopped there)
//   r.generate_bytes_per_s();  // new bytes of all rows per second
//
//   blt::BltGenerator<float> g(lm, o);           // step by step: prefill, then step() until done()
//   g.prefill(prompts);  while (!g.done()) { std::vector<int64_t> next = g.step(); ... }
//
// generate_uncached is the reference's generate_nocache: every step recomputes the patches of the whole row
// with the entropy model and runs a full forward; it shares the sampler, so both paths consume the random
// stream the same way and give the same ids (up to fp32 rounding deciding a near-tie, which the tests would
// catch).
//
// Rows are independent: per-row patching (no batch leak, issue #123), per-row caches and one random stream
// per row, seeded with `seed` for every row — a prompt gets the same continuation alone or in any batch.
// (Sample the same prompt several times by calling with different seeds.) Rows finish on their own (EOS or
// max_new_tokens).
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/models/blt/cache.hpp"
#include "tessera/models/sampling.hpp"

namespace tessera::blt {

/// Sampling (temperature, top_k, top_p, seed: models::SamplingOptions) plus BLT's stopping rules.
struct GenerateOptions : models::SamplingOptions {
  int64_t max_new_tokens = 256;  // per row (the reference's max_gen_len)
  bool stop_at_eos = true;       // a row ends after generating EOS (id 2), which is included in its tokens

  void validate() const {
    TESSERA_CHECK(max_new_tokens >= 0, "BLT generate: max_new_tokens must be >= 0, got ", max_new_tokens);
    models::SamplingOptions::validate("BLT generate");
  }
};

/// The shared sampler (models/sampling.hpp): every row gets its own, seeded with `seed`.
using Sampler = models::Sampler;

/// Generated ids per row and rough throughput numbers.
struct GenerateResult {
  std::vector<std::vector<int64_t>>
      tokens;                           // per row: the generated ids (EOS last when the row stopped there)
  std::vector<uint8_t> stopped_at_eos;  // per row
  int64_t prompt_bytes = 0;             // ids of all prompts
  int64_t new_bytes = 0;                // ids generated over all rows
  double prefill_seconds = 0;           // prompts -> first next-byte logits of every row
  double generate_seconds = 0;          // everything after: sampling and feeding back
  double prefill_bytes_per_s() const { return prefill_seconds > 0 ? prompt_bytes / prefill_seconds : 0; }
  double generate_bytes_per_s() const { return generate_seconds > 0 ? new_bytes / generate_seconds : 0; }
};

/// Cached generation over a batch of rows (see the file comment). CPU and CUDA (BltIncremental<float, cuda>:
/// caches on the device, prompts, ids and logits on the host).
template <class T, class B = cpu>
class BltGenerator {
 public:
  BltGenerator(const BltForCausalLM<T, B>& lm, const GenerateOptions& options)
      : inc_(lm), options_(options), eos_(lm.config().eos_id) {
    options.validate();
  }

  /// Starts a new batch, one row per prompt (each non-empty, normally BOS + bytes + 4), and computes every
  /// row's next-byte logits. With max_new_tokens == 0 every row is finished at once.
  void prefill(const std::vector<std::vector<int64_t>>& prompts) {
    TESSERA_CHECK(!prompts.empty(), "BLT generate: no prompts");
    const size_t R = prompts.size();
    rows_.resize(R);
    samplers_.assign(R, Sampler(options_, "BLT generate"));
    generated_.assign(R, {});
    finished_.assign(R, options_.max_new_tokens == 0);
    stopped_at_eos_.assign(R, 0);
    for (size_t b = 0; b < R; ++b)
      with_context(str("BLT generate: prompt ", b), [&] { inc_.prefill(rows_[b], prompts[b]); });
  }

  /// Samples the next id of every unfinished row from its logits, records it, and feeds it back unless the
  /// row is now finished (EOS with stop_at_eos, or max_new_tokens reached). Returns one id per row, -1 for
  /// rows that were already finished.
  std::vector<int64_t> step() {
    const int64_t R = rows();
    std::vector<int64_t> next(static_cast<size_t>(R), -1);
    feed_rows_.clear();
    feed_ids_.clear();
    for (int64_t b = 0; b < R; ++b) {
      if (finished_[b]) continue;
      const auto& lg = rows_[b].logits;
      const int64_t id = samplers_[b](lg.data(), static_cast<int64_t>(lg.size()));
      next[b] = id;
      generated_[b].push_back(id);
      if (options_.stop_at_eos && id == eos_) {
        finished_[b] = true;
        stopped_at_eos_[b] = 1;
      } else if (static_cast<int64_t>(generated_[b].size()) >= options_.max_new_tokens) {
        finished_[b] = true;
      } else {
        feed_rows_.push_back(&rows_[b]);
        feed_ids_.push_back(id);
      }
    }
    if (!feed_rows_.empty())
      inc_.step(feed_rows_.data(), static_cast<int64_t>(feed_rows_.size()), feed_ids_.data());
    return next;
  }

  /// Lower level, no sampling or limits: feeds ids[b] to row b (rows with ids[b] < 0 are left alone) and
  /// updates their logits.
  void feed(const std::vector<int64_t>& ids) {
    TESSERA_CHECK(static_cast<int64_t>(ids.size()) == rows(), "BLT generate: feed got ", ids.size(),
                  " ids for ", rows(), " rows");
    feed_rows_.clear();
    feed_ids_.clear();
    for (int64_t b = 0; b < rows(); ++b)
      if (ids[b] >= 0) {
        feed_rows_.push_back(&rows_[b]);
        feed_ids_.push_back(ids[b]);
      }
    if (!feed_rows_.empty())
      inc_.step(feed_rows_.data(), static_cast<int64_t>(feed_rows_.size()), feed_ids_.data());
  }

  int64_t rows() const { return static_cast<int64_t>(rows_.size()); }
  bool done() const {
    return std::all_of(finished_.begin(), finished_.end(), [](bool f) { return f; });
  }
  bool finished(int64_t row) const { return finished_.at(row); }
  bool stopped_at_eos(int64_t row) const { return stopped_at_eos_.at(row) != 0; }
  /// Ids generated so far for a row.
  const std::vector<int64_t>& generated(int64_t row) const { return generated_.at(row); }
  /// Every id the row's caches hold (prompt + generated, except a last one that was not fed back).
  const std::vector<int64_t>& ids(int64_t row) const { return rows_.at(row).ids; }
  /// Next-byte logits of a row (after its last fed id) [vocab].
  std::span<const T> logits(int64_t row) const { return rows_.at(row).logits; }
  /// Entropies (nats) of the row's fed ids.
  const std::vector<float>& entropies(int64_t row) const { return rows_.at(row).entropies; }
  /// Patches of the row's fed ids, as BltModel::compute_patch_lengths gives them for one row.
  std::vector<int64_t> patch_lengths(int64_t row) const { return inc_.patch_lengths(rows_.at(row)); }

 private:
  BltIncremental<T, B> inc_;
  GenerateOptions options_;
  int64_t eos_;
  std::vector<BltRowCache<T, B>> rows_;
  std::vector<Sampler> samplers_;
  std::vector<std::vector<int64_t>> generated_;
  std::vector<bool> finished_;
  std::vector<uint8_t> stopped_at_eos_;
  std::vector<BltRowCache<T, B>*> feed_rows_;
  std::vector<int64_t> feed_ids_;
};

namespace detail {
inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace detail

/// Cached generation for a batch of prompts (see the file comment).
template <class T, class B>
GenerateResult generate_cached(const BltForCausalLM<T, B>& lm,
                               const std::vector<std::vector<int64_t>>& prompts,
                               const GenerateOptions& options) {
  GenerateResult r;
  BltGenerator<T, B> g(lm, options);
  auto t0 = std::chrono::steady_clock::now();
  g.prefill(prompts);
  r.prefill_seconds = detail::seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  while (!g.done()) g.step();
  r.generate_seconds = detail::seconds_since(t0);
  for (int64_t b = 0; b < g.rows(); ++b) {
    r.tokens.push_back(g.generated(b));
    r.stopped_at_eos.push_back(g.stopped_at_eos(b));
    r.prompt_bytes += static_cast<int64_t>(prompts[b].size());
    r.new_bytes += static_cast<int64_t>(g.generated(b).size());
  }
  return r;
}

/// The reference path (generate_nocache): for every new byte of every row, entropy-model patches of the whole
/// row and a full forward; the same Sampler and stopping rules as generate_cached. Rows run one at a time.
template <class T, class B>
GenerateResult generate_uncached(BltForCausalLM<T, B>& lm, const std::vector<std::vector<int64_t>>& prompts,
                                 const GenerateOptions& options) {
  options.validate();
  TESSERA_CHECK(!prompts.empty(), "BLT generate: no prompts");
  const int64_t eos = lm.config().eos_id, V = lm.config().vocab_size;
  GenerateResult r;
  r.tokens.resize(prompts.size());
  r.stopped_at_eos.assign(prompts.size(), 0);
  std::vector<T> last(static_cast<size_t>(V));
  for (size_t b = 0; b < prompts.size(); ++b) {
    TESSERA_CHECK(!prompts[b].empty(), "BLT generate: prompt ", b, " is empty (it needs at least BOS)");
    Sampler sample(options, "BLT generate");
    std::vector<int64_t> ids = prompts[b];
    auto forward_last = [&] {  // CUDA: the ids go up, the last row of logits comes back
      const int64_t n = static_cast<int64_t>(ids.size());
      const Tensor<T, B>& lg = lm.forward(lm.to_backend_ids(ids), 1, n);
      copy_bytes<cpu, B>(last.data(), lg.data() + (n - 1) * V, static_cast<size_t>(V) * sizeof(T));
    };
    auto t0 = std::chrono::steady_clock::now();
    if (options.max_new_tokens > 0) forward_last();
    r.prefill_seconds += detail::seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < options.max_new_tokens; ++i) {
      const int64_t id = sample(last.data(), V);
      r.tokens[b].push_back(id);
      if (options.stop_at_eos && id == eos) {
        r.stopped_at_eos[b] = 1;
        break;
      }
      if (i + 1 == options.max_new_tokens) break;
      ids.push_back(id);
      forward_last();
    }
    r.generate_seconds += detail::seconds_since(t0);
    r.prompt_bytes += static_cast<int64_t>(prompts[b].size());
    r.new_bytes += static_cast<int64_t>(r.tokens[b].size());
  }
  return r;
}

}  // namespace tessera::blt
