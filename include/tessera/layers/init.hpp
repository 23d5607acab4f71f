// Weight initialisation by walking the reflected parameters (deterministic order => reproducible).
#pragma once
#include <string>
#include <type_traits>
#include <vector>

#include "tessera/core/param.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/transfer.hpp"

namespace tessera {

/// Matrices (rank >= 2) ~ N(0, std); vectors keep their setup value (norm gains 1, biases 0). The numbers are
/// drawn on the host in the same order for every backend (a CUDA model gets exactly the CPU model's weights:
/// one upload per matrix).
template <class L>
void init_normal(L& layer, Rng& rng, double std = 0.02) {
  for_each_param(layer, [&](const std::string&, auto& p) {
    p.value_bf16_current = false;
    if (p.value.rank() < 2) return;
    using T = typename std::remove_reference_t<decltype(p.value)>::value_type;
    using B = typename std::remove_reference_t<decltype(p)>::backend;
    if constexpr (is_cpu_v<B>) {
      for (auto& v : p.value) v = static_cast<T>(rng.normal() * std);
    } else {
      std::vector<T> host(static_cast<size_t>(p.value.numel()));
      for (auto& v : host) v = static_cast<T>(rng.normal() * std);
      copy_bytes<B, cpu>(p.value.data(), host.data(), host.size() * sizeof(T));
    }
  });
}

}  // namespace tessera
