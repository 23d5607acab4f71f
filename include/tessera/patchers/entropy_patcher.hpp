// Entropy patching (spec blt.md §2.3, §13.1-3): H_t, the entropy of the prediction of byte t+1, decides
// whether byte t+1 starts a patch. Positions 0 (BOS) and 1 always start; H_0 is discarded.
//
// Rules, on the candidates p = 2..N (decided by H_{p-1}); all arithmetic and comparisons in fp32, as the
// reference does with its float32 entropies:
//   kGlobal             start at p iff H_{p-1} > threshold (strict). What the released models use.
//   kMonotonic          start at p iff H_{p-1} - H_{p-2} > threshold, for p >= 3; p = 2 ALWAYS starts
//                       (quirk of the original patch_start_mask_from_entropy_with_monotonicity).
//   kGlobalAndMonotonic start at p iff H_{p-1} - H_{p-2} > threshold_add and H_{p-1} > threshold, for p >= 4;
//                       p = 2 always starts and p = 3 never does (original
//                       patch_start_mask_global_and_monotonicity, which tests the not-yet-updated mask).
// Whether the candidate p = N (after the last byte) is kept and how long the last patch is: NextByte
// (patcher.hpp). The HF fixture uses kGlobal with NextByte::kHf.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "tessera/io/json_config.hpp"
#include "tessera/patchers/patcher.hpp"

namespace tessera::patchers {

struct EntropyPatcher {
  enum class Rule { kGlobal, kMonotonic, kGlobalAndMonotonic };
  double threshold = 1.335442066192627;  // released models' global threshold (nats)
  Rule rule = Rule::kGlobal;
  double threshold_add = 0.0;  // kGlobalAndMonotonic only: required entropy increase
  NextByte next = NextByte::kHf;
  int64_t max_patch_length = 0;  // 0 = no limit

  /// N+1 start flags for one row; entropies has one value per id.
  std::vector<uint8_t> patch_starts(std::span<const int64_t> ids, std::span<const float> h) const {
    const int64_t N = static_cast<int64_t>(ids.size());
    TESSERA_CHECK(N >= 1, "EntropyPatcher: empty row (need at least the BOS id)");
    TESSERA_CHECK(static_cast<int64_t>(h.size()) == N, "EntropyPatcher: ", h.size(), " entropies for ", N,
                  " ids (need one per id)");
    return patch_starts(h);
  }
  std::vector<int64_t> patch_lengths(std::span<const int64_t> ids, std::span<const float> h) const {
    const auto flags = patch_starts(ids, h);
    return lengths_from_starts(flags, static_cast<int64_t>(ids.size()), next);
  }

  /// The same from the entropies alone (one per id; the rule never reads the ids themselves), e.g. when the
  /// ids live in device memory.
  std::vector<uint8_t> patch_starts(std::span<const float> h) const {
    const int64_t N = static_cast<int64_t>(h.size());
    TESSERA_CHECK(N >= 1, "EntropyPatcher: empty row (need at least the BOS id)");
    std::vector<uint8_t> flags(static_cast<size_t>(N + 1), 0);
    flags[0] = flags[1] = 1;
    const float th = static_cast<float>(threshold), th_add = static_cast<float>(threshold_add);
    for (int64_t p = 2; p <= N; ++p) {
      const float e = h[p - 1];
      switch (rule) {
        case Rule::kGlobal:
          flags[p] = e > th;
          break;
        case Rule::kMonotonic:
          flags[p] = p == 2 || e - h[p - 2] > th;
          break;
        case Rule::kGlobalAndMonotonic:
          flags[p] = p == 2 || (p >= 4 && e - h[p - 2] > th_add && e > th);
          break;
      }
    }
    finish_starts(flags, N, next, max_patch_length);
    return flags;
  }
  std::vector<int64_t> patch_lengths(std::span<const float> h) const {
    return lengths_from_starts(patch_starts(h), static_cast<int64_t>(h.size()), next);
  }

  /// The patcher of an HF BltConfig (config.json): patching_mode must be "entropy"; patching_threshold;
  /// max_patch_length (null = none). NextByte::kHf.
  static EntropyPatcher from_hf(const nlohmann::json& config) {
    const std::string mode = io::get_or<std::string>(config, "patching_mode", "entropy", "blt");
    TESSERA_CHECK(mode == "entropy", "config blt: patching_mode '", mode, "' is not entropy patching");
    EntropyPatcher p;
    p.threshold = io::require<double>(config, "patching_threshold", "blt");
    p.max_patch_length = io::get_or<int64_t>(config, "max_patch_length", 0, "blt");
    TESSERA_CHECK(p.max_patch_length >= 0, "config blt: max_patch_length must be >= 1 or null, got ",
                  p.max_patch_length);
    p.next = NextByte::kHf;
    return p;
  }
  /// The patcher of the original `patcher_args` (params.json data.patcher_args): threshold, threshold_add,
  /// monotonicity, max_patch_length. `next`: kInclude for the model forward / generation, kExclude for
  /// training preprocessing.
  static EntropyPatcher from_original(const nlohmann::json& args, NextByte next = NextByte::kInclude) {
    const char* where = "patcher_args";
    const std::string mode = io::get_or<std::string>(args, "patching_mode", "entropy", where);
    TESSERA_CHECK(mode == "entropy", "config patcher_args: patching_mode '", mode,
                  "' is not entropy patching");
    EntropyPatcher p;
    p.threshold = io::get_or<double>(args, "threshold", p.threshold, where);
    const bool mono = io::get_or<bool>(args, "monotonicity", false, where);
    const bool has_add = args.contains("threshold_add") && !args["threshold_add"].is_null();
    if (mono)
      p.rule = Rule::kMonotonic;  // the original checks monotonicity first
    else if (has_add)
      p.rule = Rule::kGlobalAndMonotonic;
    if (has_add) p.threshold_add = io::require<double>(args, "threshold_add", where);
    p.max_patch_length = io::get_or<int64_t>(args, "max_patch_length", 0, where);
    TESSERA_CHECK(p.max_patch_length >= 0, "config patcher_args: max_patch_length must be >= 1 or null, got ",
                  p.max_patch_length);
    p.next = next;
    return p;
  }
};

}  // namespace tessera::patchers
