// Patchers: split one row of byte ids into patches (spec blt.md §2.3). Every patcher works on ONE row of N
// ids (position 0 = BOS for BLT) and returns
//   patch_starts(ids, entropies) -> N+1 flags: flags[t] = 1 iff a patch starts at position t. Position N is
//   the
//                                   next, not yet seen byte (see NextByte).
//   patch_lengths(ids, entropies) -> lengths of the patches in order (lengths_from_starts of the flags).
// `entropies` (one per id, nats) are read by the entropy patcher and ignored by the others (may be empty).
//
// The last patch (NextByte): a rule may want a patch to start at position N, the byte after the input.
//   kHf      Hugging Face port: the start at N is kept, lengths sum to N, so the row ends with a zero-length
//            patch when the rule fires at N (BltPatcher.patch_lengths_from_entropies).
//   kInclude original include_next_token=True (model forward, generation): lengths sum to N+1; the last patch
//            holds the next byte (alone when the rule fires at N).
//   kExclude original include_next_token=False (training preprocessing): a start at N is dropped, sum N.
// max_patch_length m > 0 splits every longer patch greedily into m, m, ..., remainder (original
// split_large_numbers; HF process_patch_lengths, which additionally drops zero-length patches — in kHf mode
// the trailing empty patch disappears when m is set, as in HF).
#pragma once
#include <concepts>
#include <cstdint>
#include <span>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"

namespace tessera::patchers {

enum class NextByte { kHf, kInclude, kExclude };

/// Sum of the lengths for N ids: N, or N+1 with NextByte::kInclude.
inline int64_t total_length(int64_t n_ids, NextByte next) {
  return n_ids + (next == NextByte::kInclude ? 1 : 0);
}

/// A patcher over one row: ids [N] and (optionally) entropies [N].
template <class P>
concept Patcher = requires(const P& p, std::span<const int64_t> ids, std::span<const float> h) {
  { p.patch_starts(ids, h) } -> std::same_as<std::vector<uint8_t>>;
  { p.patch_lengths(ids, h) } -> std::same_as<std::vector<int64_t>>;
};

/// Shared post-processing: apply the NextByte rule to the candidate flag at N and split patches longer than
/// max_len (0 = no limit). flags has N+1 entries and flags[0] must be 1.
inline void finish_starts(std::vector<uint8_t>& flags, int64_t n_ids, NextByte next, int64_t max_len) {
  TESSERA_CHECK(static_cast<int64_t>(flags.size()) == n_ids + 1, "patchers: ", flags.size(),
                " start flags for ", n_ids, " ids (expected N+1)");
  TESSERA_CHECK(n_ids >= 1 && flags[0], "patchers: position 0 must start a patch");
  TESSERA_CHECK(max_len >= 0, "patchers: max_patch_length must be >= 0, got ", max_len);
  if (next == NextByte::kExclude) flags[n_ids] = 0;
  if (max_len == 0) return;
  if (next == NextByte::kHf) flags[n_ids] = 0;  // HF drops zero-length patches when it splits
  const int64_t total = total_length(n_ids, next);
  int64_t start = 0;
  for (int64_t t = 1; t <= total; ++t) {
    if (t == total || flags[t]) {
      for (int64_t s = start + max_len; s < t; s += max_len) flags[s] = 1;  // s <= total-1 <= n_ids
      start = t;
    }
  }
}

/// Lengths of the patches given N+1 start flags (flags[0] = 1), summing to total_length(N, next). With kHf a
/// flag at N gives a trailing zero-length patch; with kExclude a flag at N is ignored.
inline std::vector<int64_t> lengths_from_starts(std::span<const uint8_t> flags, int64_t n_ids,
                                                NextByte next) {
  TESSERA_CHECK(static_cast<int64_t>(flags.size()) == n_ids + 1 && n_ids >= 1 && flags[0],
                "patchers::lengths_from_starts: need N+1 flags with flags[0] = 1 (N = ", n_ids, ", got ",
                flags.size(), " flags)");
  const int64_t total = total_length(n_ids, next);
  const int64_t last =
      next == NextByte::kExclude ? n_ids - 1 : n_ids;  // last position that may start a patch
  std::vector<int64_t> lengths;
  int64_t start = 0;
  for (int64_t t = 1; t <= last; ++t)
    if (flags[t]) {
      lengths.push_back(t - start);
      start = t;
    }
  lengths.push_back(total - start);
  return lengths;
}

/// Start position of each patch (exclusive prefix sums of the lengths).
inline std::vector<int64_t> starts_from_lengths(std::span<const int64_t> lengths) {
  std::vector<int64_t> s(lengths.size());
  int64_t acc = 0;
  for (size_t p = 0; p < lengths.size(); ++p) {
    TESSERA_CHECK(lengths[p] >= 0, "patchers: negative patch length ", lengths[p], " at patch ", p);
    s[p] = acc;
    acc += lengths[p];
  }
  return s;
}

/// Patch (segment) id of each of n_tokens positions: the last patch whose start is <= t, i.e.
/// id(t) = #{p : start_p <= t} - 1 (the HF port's _patch_ids_from_lengths). Positions past the end of the
/// patches get the last patch; a zero-length patch owns no position. out has n_tokens entries.
inline void patch_ids_from_lengths(const int64_t* lengths, int64_t n_patches, int64_t n_tokens,
                                   int64_t* out) {
  TESSERA_CHECK(n_patches >= 1, "patchers::patch_ids_from_lengths: need at least one patch");
  int64_t p = 0, next_start = lengths[0];  // start of patch p+1
  TESSERA_CHECK(lengths[0] >= 0, "patchers: negative patch length ", lengths[0], " at patch 0");
  for (int64_t t = 0; t < n_tokens; ++t) {
    while (p + 1 < n_patches && next_start <= t) {
      ++p;
      TESSERA_CHECK(lengths[p] >= 0, "patchers: negative patch length ", lengths[p], " at patch ", p);
      next_start += lengths[p];
    }
    out[t] = p;
  }
}
inline std::vector<int64_t> patch_ids_from_lengths(std::span<const int64_t> lengths, int64_t n_tokens) {
  std::vector<int64_t> ids(static_cast<size_t>(n_tokens));
  patch_ids_from_lengths(lengths.data(), static_cast<int64_t>(lengths.size()), n_tokens, ids.data());
  return ids;
}

/// Batch form: lengths [B, P] right-padded with zeros, out [B, T].
inline void patch_ids_from_lengths(const int64_t* lengths, int64_t batch, int64_t n_patches, int64_t n_tokens,
                                   int64_t* out) {
  for (int64_t b = 0; b < batch; ++b)
    patch_ids_from_lengths(lengths + b * n_patches, n_patches, n_tokens, out + b * n_tokens);
}

// CUDA (cuda/segment.cu): the batch form on device memory (cub::DeviceScan of the lengths, then a binary
// search per position). Lengths are not validated: negative ones give unspecified ids in [0, n_patches).
void patch_ids_from_lengths(cuda, const int64_t* lengths, int64_t batch, int64_t n_patches, int64_t n_tokens,
                            int64_t* out);

}  // namespace tessera::patchers
