// Weight initialisation by walking the reflected parameters (deterministic order => reproducible).
#pragma once
#include <string>

#include "tessera/core/param.hpp"
#include "tessera/core/rng.hpp"

namespace tessera {

/// Matrices (rank >= 2) ~ N(0, std); vectors keep their setup value (norm gains 1, biases 0).
template <class L>
void init_normal(L& layer, Rng& rng, double std = 0.02) {
  for_each_param(layer, [&](const std::string&, auto& p) {
    if (p.value.rank() < 2) return;
    using T = typename std::remove_reference_t<decltype(p.value)>::value_type;
    for (auto& v : p.value) v = static_cast<T>(rng.normal() * std);
  });
}

}  // namespace tessera
