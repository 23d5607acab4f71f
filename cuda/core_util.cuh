// Internal to tessera::cuda (elementwise.cu, loss.cu, segment.cu, hash.cu, adamw.cu): temporary device
// memory for one op call, launch-size helpers and size checks.
//
// OpTemp is scratch.cuh's DeviceScratch (stream-ordered memory on the legacy default stream) reserved once at
// construction.
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "check.hpp"
#include "scratch.cuh"

namespace tessera::cuda_detail {

/// DeviceScratch (scratch.cuh) sized once at construction: `total` = the sum of bytes<T>(n) over the carves.
class OpTemp : public DeviceScratch {
 public:
  template <class T>
  static size_t bytes(int64_t n) {
    return bytes_for<T>(std::max<int64_t>(n, 0));
  }
  explicit OpTemp(size_t total) { reserve(total); }
};

/// Multiprocessor count of the current device, queried once (tessera drives one device per process).
inline int device_sm_count() {
  static const int sms = [] {
    int dev = 0, n = 0;
    TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
    TESSERA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return sms;
}

/// Grid for a grid-stride loop over n items with `threads` per block (capped; the loop covers the rest).
inline unsigned stride_blocks(int64_t n, int threads = 256) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + threads - 1) / threads, 1, int64_t(1) << 16));
}

/// for (int64_t i ...; i < n; ...): a grid-stride loop over [0, n) (int64 indices).
#define TESSERA_GRID_STRIDE(i, n)                                           \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

/// An elementwise grid-stride loop four elements per access where every pointer is 16-byte aligned (vec4):
/// vec(i) for the float4 items [0, n / 4) first, then one(i) for the n % 4 last elements (every element when
/// !vec4), in one launch. The same operation on every element either way, so the same bits.
template <class Vec, class One>
__device__ inline void for_each_x4(int64_t n, bool vec4, Vec vec, One one) {
  int64_t done = 0;
  if (vec4) {
    const int64_t n4 = n / 4;
    TESSERA_GRID_STRIDE(i, n4) vec(i);
    done = 4 * n4;
  }
  for (int64_t i = done + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    one(i);
}

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
/// Four floats rounded to bf16 (as bf16_bits) in one 8-byte word, the first in the lowest bits (memory
/// order).
__host__ __device__ inline uint64_t pack_bf16x4(float a, float b, float c, float d) {
  return uint64_t{bf16_bits(a)} | uint64_t{bf16_bits(b)} << 16 | uint64_t{bf16_bits(c)} << 32 |
         uint64_t{bf16_bits(d)} << 48;
}

// fp32 values stored as fp32, or as bf16 bits (uint16_t: rounded to nearest even once); bf16 loads widen
// exactly. For kernels templated on their input / output type.
__device__ inline float load_value(const float* p) {
  return *p;
}
__device__ inline float load_value(const uint16_t* p) {
  return bf16_to_float(*p);
}
__device__ inline void store_value(float* p, float v) {
  *p = v;
}
__device__ inline void store_value(uint16_t* p, float v) {
  *p = bf16_bits(v);
}

/// Whether `ptr` is a multiple of `bytes` (vectorised paths check their pointers with it).
inline bool aligned_to(const void* ptr, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

}  // namespace tessera::cuda_detail
