// Uses an installed tessera: a tensor filled from the seeded RNG, cloned and checked.
#include <cstdio>
#include <tessera/core/rng.hpp>
#include <tessera/core/tensor.hpp>

#ifdef CONSUMER_USES_CUDA
#include <tessera/core/allocator.hpp>
#endif

int main() {
  tessera::Rng rng(42);
  tessera::Tensor<float> t({2, 3});
  for (float& v : t) v = static_cast<float>(rng.normal());
  const tessera::Tensor<float> c = t.clone();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (c[i] != t[i]) {
      std::printf("clone differs at %lld\n", static_cast<long long>(i));
      return 1;
    }
  std::printf("tessera consumer ok: shape [%lld, %lld], t[0] = %.6f\n", static_cast<long long>(t.size(0)),
              static_cast<long long>(t.size(1)), t[0]);
#ifdef CONSUMER_USES_CUDA
  std::printf("cuda devices: %d\n", tessera::cuda_mem::device_count());
#endif
  return 0;
}
