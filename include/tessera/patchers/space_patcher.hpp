// Space patching (spec blt.md §2.3, original find_space_patch_start_ids): a patch starts at the byte AFTER
// each counted space-like byte.
//   space-like: byte b = id - 4 is not [0-9A-Za-z] and not a UTF-8 continuation byte (0x80..0xBF), i.e. ASCII
//               punctuation, whitespace and controls, and UTF-8 lead bytes >= 0xC0; every id < 4 (BOE, BOS,
//               EOS, BPE) also counts;
//   counted:    a space-like byte whose predecessor is not space-like (runs count once, at their first byte),
//               or any id < 4.
// Positions 0 and 1 always start. A counted byte at N-1 proposes a start at N (handled by NextByte).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "tessera/patchers/patcher.hpp"

namespace tessera::patchers {

/// True for the ids the space patcher treats as space-like (see the file comment).
inline bool space_like(int64_t id) {
  const int64_t b = id - 4;
  if (b < 0) return true;
  const bool alnum = (b >= '0' && b <= '9') || (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z');
  const bool continuation = b >= 0x80 && b < 0xC0;
  return !alnum && !continuation;
}

struct SpacePatcher {
  NextByte next = NextByte::kHf;
  int64_t max_patch_length = 0;  // 0 = no limit

  std::vector<uint8_t> patch_starts(std::span<const int64_t> ids, std::span<const float> = {}) const {
    const int64_t N = static_cast<int64_t>(ids.size());
    TESSERA_CHECK(N >= 1, "SpacePatcher: empty row (need at least the BOS id)");
    std::vector<uint8_t> flags(static_cast<size_t>(N + 1), 0);
    flags[0] = flags[1] = 1;
    for (int64_t k = 1; k < N; ++k)
      flags[k + 1] = (space_like(ids[k]) && !space_like(ids[k - 1])) || ids[k] < 4;
    finish_starts(flags, N, next, max_patch_length);
    return flags;
  }
  std::vector<int64_t> patch_lengths(std::span<const int64_t> ids, std::span<const float> h = {}) const {
    return lengths_from_starts(patch_starts(ids, h), static_cast<int64_t>(ids.size()), next);
  }
};

}  // namespace tessera::patchers
