// Static patching (spec blt.md §2.3): patches of a fixed size k, the last one the remainder, covering
// total_length(N, next) positions (N, or N+1 with NextByte::kInclude; kHf behaves as kExclude here — a static
// rule never produces an empty patch). k = 1 is byte patching (every position its own patch).
// The original static mode does not give BOS a patch of its own, which the BLT decoder mapping needs
// (§13.2); bos_alone = true makes patch 0 = [BOS] and tiles the rest with size k.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "tessera/patchers/patcher.hpp"

namespace tessera::patchers {

struct StaticPatcher {
  int64_t patch_size = 4;
  bool bos_alone = false;
  NextByte next = NextByte::kHf;

  std::vector<uint8_t> patch_starts(std::span<const int64_t> ids, std::span<const float> = {}) const {
    const int64_t N = static_cast<int64_t>(ids.size());
    TESSERA_CHECK(N >= 1, "StaticPatcher: empty row");
    TESSERA_CHECK(patch_size >= 1, "StaticPatcher: patch_size must be >= 1, got ", patch_size);
    const NextByte mode = next == NextByte::kHf ? NextByte::kExclude : next;
    const int64_t total = total_length(N, mode);
    std::vector<uint8_t> flags(static_cast<size_t>(N + 1), 0);
    flags[0] = 1;
    const int64_t first = bos_alone ? 1 : 0;
    if (bos_alone && total > 1) flags[1] = 1;
    for (int64_t s = first + patch_size; s < total; s += patch_size) flags[s] = 1;
    return flags;
  }
  std::vector<int64_t> patch_lengths(std::span<const int64_t> ids, std::span<const float> h = {}) const {
    const NextByte mode = next == NextByte::kHf ? NextByte::kExclude : next;
    return lengths_from_starts(patch_starts(ids, h), static_cast<int64_t>(ids.size()), mode);
  }
};

}  // namespace tessera::patchers
