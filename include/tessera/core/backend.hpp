// Backend tags (CUTLASS-style empty types). Models and layers are templates over one of these.
#pragma once
#include <type_traits>

namespace tessera {

/// Host memory, Eigen + OpenMP kernels.
struct cpu {
  static constexpr const char* name = "cpu";
};
/// NVIDIA GPU memory, kernels in cuda/ compiled into tessera::cuda (cuBLAS, CUB).
struct cuda {
  static constexpr const char* name = "cuda";
};

template <class B>
inline constexpr bool is_cpu_v = std::is_same_v<B, cpu>;

}  // namespace tessera
