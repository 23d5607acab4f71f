// Compute precision of a model's layers (DESIGN.md "Numerics"): fp32 everywhere, or bf16.
//   CUDA: bf16 mixed precision, the autocast recipe: parameters, optimizer state, activations between layers,
//     norms, softmax statistics and every reduction stay fp32 (master copies); the matrix products (Linear
//     layers, attention) read bf16 copies of their operands and accumulate in fp32 on the tensor cores.
//   CPU: bf16 weights for inference: the Linear layers multiply fp32 inputs with bf16 copies of their
//     weights (ops/bf16_weight_product.hpp), summing in fp32; everything else stays fp32. Frozen, the copies
//     halve the bytes a decoding step reads. There is no CPU bf16 backward (a Linear refuses it).
//
//   set_compute_precision(model, Precision::bf16);   // any model or layer, after construction
//   freeze_bf16_weights(model);                       // inference: cast the weights once, not per forward
//   keep_bf16_weight_copies(model);                   // training: AdamW writes the bf16 copies
//
// Layers opt in with a member `Precision compute_precision`; the walk visits every layer that holds a
// parameter (the same recursion as for_each_param), so a new model needs no code for this.
#pragma once
#include <string_view>
#include <type_traits>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/param.hpp"

namespace tessera {

enum class Precision { fp32, bf16 };

inline const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }
inline Precision parse_precision(std::string_view s) {
  if (s == "fp32") return Precision::fp32;
  if (s == "bf16") return Precision::bf16;
  throw Error(str("unknown precision '", s, "' (expected fp32 or bf16)"));
}

template <class L>
concept HasComputePrecision = requires(L& l) { l.compute_precision; };
template <class L>
concept HasBf16WeightCache = requires(L& l) { l.cache_bf16_weight(true); };
template <class L>
concept HasBf16WeightCopy = requires(L& l) {
  l.keep_bf16_weight_copy(true);
};

/// Set `compute_precision` on every layer of `layer` (itself included) that has one. bf16 needs float
/// parameters (see the file comment for what it means on each backend); anything else is rejected.
template <class L>
void set_compute_precision(L& layer, Precision p) {
  if constexpr (HasComputePrecision<L>) {
    using T = typename L::value_type;
    TESSERA_CHECK(p == Precision::fp32 || (std::is_same_v<T, float>),
                  "bf16 compute precision needs a float model (this one's parameters are ", sizeof(T) * 8,
                  "-bit)");
    layer.compute_precision = p;
  }
  if constexpr (HasBf16WeightCache<L>) layer.cache_bf16_weight(false);
  if constexpr (HasChildren<L>) {
    layer.for_each_child([&](std::string_view, auto& child) { set_compute_precision(child, p); });
  }
}

/// bf16 inference: every bf16 layer casts its weights once now and reuses the copies, instead of re-casting
/// them from the fp32 masters at every forward (right for training, where they change every step; when
/// decoding one token at a time the re-cast would move 3x the bytes of the bf16 product itself). Call again
/// after the weights change; set_compute_precision undoes it; a backward through frozen weights is an error.
template <class L>
void freeze_bf16_weights(L& layer) {
  if constexpr (HasBf16WeightCache<L>) layer.cache_bf16_weight(true);
  if constexpr (HasChildren<L>) {
    layer.for_each_child([&](std::string_view, auto& child) { freeze_bf16_weights(child); });
  }
}

/// bf16 training: every bf16 layer's weight gets a bf16 copy (Param::value_bf16, 2 bytes per weight) that
/// train::AdamW writes with each update — the same rounding as the cast — so the forward after a step reads
/// it instead of casting the fp32 master again (6 bytes per weight and step saved, 2 spent in the optimizer).
/// Until the first step, and after anything else writes the weights (the library's loads, initialisations and
/// copies mark them; code that writes Param::value directly must call mark_values_changed), the forward casts
/// as before, so the numbers never depend on it. Call after set_compute_precision; keep = false drops the
/// copies.
template <class L>
void keep_bf16_weight_copies(L& layer, bool keep = true) {
  if constexpr (HasBf16WeightCopy<L>) layer.keep_bf16_weight_copy(keep);
  if constexpr (HasChildren<L>) {
    layer.for_each_child([&](std::string_view, auto& child) { keep_bf16_weight_copies(child, keep); });
  }
}

}  // namespace tessera
