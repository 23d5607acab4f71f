// Internal to tessera::cuda (elementwise.cu, loss.cu, segment.cu, hash.cu, adamw.cu): temporary device
// memory for one op call, launch-size helpers and size checks.
//
// OpTemp holds stream-ordered memory on the legacy default stream (cudaMallocAsync / cudaFreeAsync), so it is
// valid for every kernel queued after the allocation and returned to the driver's pool after every kernel
// queued before the destructor (the pool caches blocks: a call per op is cheap). Devices without memory pools
// use cudaMalloc / cudaFree (which waits for the device). Destruction never throws.
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "check.hpp"

namespace tessera::cuda_detail {

class OpTemp {
 public:
  /// Bytes one carve of n elements of T takes (256-byte aligned carves).
  template <class T>
  static size_t bytes(int64_t n) {
    return (static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(T) + 255) / 256 * 256;
  }

  explicit OpTemp(size_t total) {
    if (total == 0) return;
    int dev = 0, pools = 0;
    TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
    TESSERA_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev));
    async_ = pools != 0;
    void* p = nullptr;
    if (async_)
      TESSERA_CUDA_CHECK(cudaMallocAsync(&p, total, 0));
    else
      TESSERA_CUDA_CHECK(cudaMalloc(&p, total));
    base_ = static_cast<char*>(p);
    cap_ = total;
  }
  OpTemp(const OpTemp&) = delete;
  OpTemp& operator=(const OpTemp&) = delete;
  ~OpTemp() {
    if (!base_) return;
    if (async_)
      (void)cudaFreeAsync(base_, 0);
    else
      (void)cudaFree(base_);
  }

  /// The next n elements of T (nullptr for n == 0). The total passed to the constructor must be the sum of
  /// bytes<T>(n) over the carves.
  template <class T>
  T* carve(int64_t n) {
    if (n <= 0) return nullptr;
    const size_t b = bytes<T>(n);
    TESSERA_CHECK(used_ + b <= cap_, "tessera::cuda internal error: temporary buffer of ", cap_,
                  " bytes is too small (", used_ + b, " needed)");
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += b;
    return p;
  }

 private:
  char* base_ = nullptr;
  size_t cap_ = 0, used_ = 0;
  bool async_ = false;
};

/// Grid for a grid-stride loop over n items with `threads` per block (capped; the loop covers the rest).
inline unsigned stride_blocks(int64_t n, int threads = 256) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + threads - 1) / threads, 1, int64_t(1) << 16));
}

/// for (int64_t i ...; i < n; ...): a grid-stride loop over [0, n) (int64 indices).
#define TESSERA_GRID_STRIDE(i, n)                                           \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

/// Throws naming the op unless 0 <= v <= INT_MAX (kernels index rows/columns with int).
inline void check_int_range(const char* op, const char* what, int64_t v) {
  TESSERA_CHECK(v >= 0 && v <= INT_MAX, op, "(cuda): ", what, "=", v, " must be in [0, ", INT_MAX, "]");
}

/// Round-to-nearest-even fp32 -> bf16 bits, quiet NaN kept: identical to tessera::bf16::from_float.
__host__ __device__ inline uint16_t bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
__host__ __device__ inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

}  // namespace tessera::cuda_detail
