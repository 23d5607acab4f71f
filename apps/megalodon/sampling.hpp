// Next-token choice for `megalodon generate`: greedy (temperature 0: the first maximum) or one seeded draw
// from softmax(logits / temperature) restricted to the top k ids and then to the smallest prefix (by
// probability) whose mass reaches top_p.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"

namespace mglapp {

struct SamplingOptions {
  double temperature = 0.8;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 0 or 1 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o) : o_(o), rng_(o.seed) {
    TESSERA_CHECK(std::isfinite(o.temperature) && o.temperature >= 0, "--temp must be a finite number >= 0, got ",
                  o.temperature);
    TESSERA_CHECK(o.top_k >= 0, "--top-k must be >= 0, got ", o.top_k);
    TESSERA_CHECK(o.top_p >= 0 && o.top_p <= 1, "--top-p must be in [0, 1], got ", o.top_p);
  }

  int64_t operator()(const float* logits, int64_t V) {
    if (o_.temperature == 0) return std::max_element(logits, logits + V) - logits;
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(logits[v]) / o_.temperature);
    p_.resize(static_cast<size_t>(V));
    order_.resize(static_cast<size_t>(V));
    for (int64_t v = 0; v < V; ++v) p_[v] = std::exp(static_cast<double>(logits[v]) / o_.temperature - mx);
    std::iota(order_.begin(), order_.end(), int64_t{0});
    std::stable_sort(order_.begin(), order_.end(), [&](int64_t a, int64_t b) { return p_[a] > p_[b]; });
    int64_t kept = o_.top_k > 0 ? std::min(o_.top_k, V) : V;
    double total = 0;
    for (int64_t i = 0; i < kept; ++i) total += p_[order_[i]];
    if (o_.top_p > 0 && o_.top_p < 1) {
      double mass = 0;
      int64_t i = 0;
      while (i < kept && mass < o_.top_p * total) mass += p_[order_[i++]];
      kept = std::max<int64_t>(i, 1);
      total = mass;
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
  tessera::Rng rng_;
  std::vector<double> p_;
  std::vector<int64_t> order_;
};

}  // namespace mglapp
