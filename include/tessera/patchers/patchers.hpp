// All patchers (one concept, patcher.hpp), a run-time choice among them, and patching of a [B, T] batch.
//
//   patchers::EntropyPatcher p = patchers::EntropyPatcher::from_hf(config);   // threshold, HF last-patch
//   rule std::vector<float> H = blt::entropies(entropy_model, ids, B, T);           // models/blt/entropy.hpp
//   patchers::PatchBatch pb = patchers::patch_batch(p, ids, B, T, H.data());   // lengths [B, P], zero-padded
//   std::vector<int64_t> seg(B * T);
//   patchers::patch_ids_from_lengths(pb.lengths.data(), B, pb.n_patches, T, seg.data());
//
// Rows are patched independently (no leakage between rows, unlike the reference's issue #123).
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "tessera/patchers/entropy_patcher.hpp"
#include "tessera/patchers/patcher.hpp"
#include "tessera/patchers/space_patcher.hpp"
#include "tessera/patchers/static_patcher.hpp"

namespace tessera::patchers {

static_assert(Patcher<EntropyPatcher> && Patcher<SpacePatcher> && Patcher<StaticPatcher>);

/// Any of the library's patchers, chosen at run time (e.g. from a command-line flag).
using AnyPatcher = std::variant<EntropyPatcher, SpacePatcher, StaticPatcher>;

inline std::vector<uint8_t> patch_starts(const AnyPatcher& p, std::span<const int64_t> ids,
                                         std::span<const float> h = {}) {
  return std::visit([&](const auto& q) { return q.patch_starts(ids, h); }, p);
}
inline std::vector<int64_t> patch_lengths(const AnyPatcher& p, std::span<const int64_t> ids,
                                          std::span<const float> h = {}) {
  return std::visit([&](const auto& q) { return q.patch_lengths(ids, h); }, p);
}

/// Patch lengths of a batch: [batch, n_patches] row-major, each row right-padded with zero-length patches.
struct PatchBatch {
  int64_t batch = 0, n_patches = 0;
  std::vector<int64_t> lengths;
  std::span<const int64_t> row(int64_t b) const {
    return {lengths.data() + b * n_patches, static_cast<size_t>(n_patches)};
  }
};

/// Right-pad per-row lengths with zeros into one [B, max P] block.
inline PatchBatch pad_patch_lengths(const std::vector<std::vector<int64_t>>& rows) {
  PatchBatch pb;
  pb.batch = static_cast<int64_t>(rows.size());
  for (const auto& r : rows) pb.n_patches = std::max<int64_t>(pb.n_patches, static_cast<int64_t>(r.size()));
  pb.lengths.assign(static_cast<size_t>(pb.batch * pb.n_patches), 0);
  for (int64_t b = 0; b < pb.batch; ++b)
    std::copy(rows[b].begin(), rows[b].end(), pb.lengths.begin() + b * pb.n_patches);
  return pb;
}

/// Patch every row of ids [batch, seq]; entropies [batch, seq] (nullptr for patchers that do not read them).
template <class P>
requires Patcher<P> PatchBatch patch_batch(const P& patcher, const int64_t* ids, int64_t batch, int64_t seq,
                                           const float* entropies = nullptr) {
  TESSERA_CHECK(batch >= 0 && seq >= 1, "patchers::patch_batch: bad batch/seq ", batch, "x", seq);
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    std::span<const float> h;
    if (entropies) h = {entropies + b * seq, static_cast<size_t>(seq)};
    rows[b] = patcher.patch_lengths({ids + b * seq, static_cast<size_t>(seq)}, h);
  }
  return pad_patch_lengths(rows);
}
inline PatchBatch patch_batch(const AnyPatcher& patcher, const int64_t* ids, int64_t batch, int64_t seq,
                              const float* entropies = nullptr) {
  return std::visit([&](const auto& q) { return patch_batch(q, ids, batch, seq, entropies); }, patcher);
}

}  // namespace tessera::patchers
