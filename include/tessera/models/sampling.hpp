// Next-token choice shared by every generator (BLT, Megalodon, the byte LM): greedy or one seeded draw from
// softmax(logits / temperature) after top-k and nucleus (top-p) filtering, with the Hugging Face conventions.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"

namespace tessera::models {

struct SamplingOptions {
  double temperature = 0.0;  // 0 = greedy (argmax, first maximum); > 0: sample softmax(logits / temperature)
  int64_t top_k = 0;         // > 0: keep the k most likely ids (ties with the k-th kept too)
  double top_p = 1.0;        // < 1: nucleus — keep ids while the probability mass before them is <= top_p
  uint64_t seed = 0;         // the random stream starts from Rng(seed)

  /// Errors start with `who` (e.g. "BLT generate").
  void validate(std::string_view who = "sampling") const {
    TESSERA_CHECK(std::isfinite(temperature) && temperature >= 0, who,
                  ": temperature must be a finite number >= 0 (0 = greedy), got ", temperature);
    TESSERA_CHECK(top_k >= 0, who, ": top_k must be >= 0 (0 = off), got ", top_k);
    TESSERA_CHECK(top_p > 0 && top_p <= 1, who, ": top_p must be in (0, 1] (1 = off), got ", top_p);
  }
};

/// Picks the next id from logits [V]. Greedy (temperature 0): the first maximum, no random number. Otherwise
/// p = softmax(logits / temperature) in double, ids ordered by p (descending, ties by id), top-k then top-p
/// filtering, and ONE uniform draw u from the stream: the first kept id whose cumulative mass exceeds
/// u * (kept mass).
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o, std::string_view who = "sampling") : o_(o), rng_(o.seed) {
    o.validate(who);
  }

  template <class T>
  int64_t operator()(const T* logits, int64_t V) {
    TESSERA_CHECK(V >= 1, "sampling: empty logits");
    if (o_.temperature == 0) return std::max_element(logits, logits + V) - logits;
    const double inv_t = 1.0 / o_.temperature;
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(logits[v]) * inv_t);
    p_.resize(static_cast<size_t>(V));
    order_.resize(static_cast<size_t>(V));
    for (int64_t v = 0; v < V; ++v) p_[v] = std::exp(static_cast<double>(logits[v]) * inv_t - mx);
    std::iota(order_.begin(), order_.end(), int64_t(0));
    std::stable_sort(order_.begin(), order_.end(), [&](int64_t a, int64_t b) { return p_[a] > p_[b]; });
    int64_t kept = V;
    if (o_.top_k > 0 && o_.top_k < V) {
      kept = o_.top_k;
      while (kept < V && p_[order_[kept]] == p_[order_[o_.top_k - 1]]) ++kept;
    }
    double total = 0;
    for (int64_t i = 0; i < kept; ++i) total += p_[order_[i]];
    if (o_.top_p < 1) {
      double before = 0;  // mass (normalised over the kept ids) in front of id i
      int64_t i = 0;
      while (i < kept && before <= o_.top_p) before += p_[order_[i++]] / total;
      kept = i;
      total = 0;
      for (int64_t j = 0; j < kept; ++j) total += p_[order_[j]];
    }
    const double u = rng_.uniform() * total;
    double acc = 0;
    for (int64_t i = 0; i < kept; ++i) {
      acc += p_[order_[i]];
      if (acc > u) return order_[i];
    }
    return order_[kept - 1];
  }

 private:
  SamplingOptions o_;
  Rng rng_;
  std::vector<double> p_;
  std::vector<int64_t> order_;
};

}  // namespace tessera::models
