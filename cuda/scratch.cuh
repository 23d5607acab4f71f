// Internal to tessera::cuda: temporary device buffers for one op call, and small launch helpers.
//
// DeviceScratch allocates stream-ordered memory on the legacy default stream (cudaMallocAsync), so the
// buffer is valid for every kernel queued after the allocation and is released after every kernel queued
// before the destructor has run (cudaFreeAsync). The driver's memory pool caches the blocks, so a call per
// op is cheap. Devices without memory-pool support fall back to cudaMalloc/cudaFree (cudaFree waits for
// the device). Destruction never throws.
#pragma once
#include <cuda_runtime_api.h>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "check.hpp"

namespace tessera::cuda_detail {

class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() {
    if (!p_) return;
    if (async_)
      (void)cudaFreeAsync(p_, 0);
    else
      (void)cudaFree(p_);
  }

  /// Reserve `bytes` (rounded up to 256 per carve) before the first carve; call once.
  void reserve(size_t bytes) {
    TESSERA_CHECK(p_ == nullptr, "DeviceScratch::reserve called twice");
    if (bytes == 0) return;
    int dev = 0, pools = 0;
    TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
    TESSERA_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev));
    async_ = pools != 0;
    void* p = nullptr;
    if (async_)
      TESSERA_CUDA_CHECK(cudaMallocAsync(&p, bytes, 0));
    else
      TESSERA_CUDA_CHECK(cudaMalloc(&p, bytes));
    p_ = static_cast<char*>(p);
    cap_ = bytes;
  }

  /// reserve() that reports an out-of-memory as false instead of throwing (the error is cleared), for
  /// callers with a path that needs no buffer.
  bool try_reserve(size_t bytes) {
    TESSERA_CHECK(p_ == nullptr, "DeviceScratch::try_reserve after a reservation");
    if (bytes == 0) return true;
    int dev = 0, pools = 0;
    TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
    TESSERA_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev));
    void* p = nullptr;
    const cudaError_t e = pools != 0 ? cudaMallocAsync(&p, bytes, 0) : cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return false;
    }
    TESSERA_CUDA_CHECK(e);
    async_ = pools != 0;
    p_ = static_cast<char*>(p);
    cap_ = bytes;
    return true;
  }

  /// Bytes to reserve for `n` elements of T as one carve (each carve is 256-byte aligned).
  template <class T>
  static size_t bytes_for(int64_t n) {
    return (static_cast<size_t>(n) * sizeof(T) + 255) / 256 * 256;
  }

  /// Next n elements of T from the reservation (n may be 0: returns nullptr).
  template <class T>
  T* carve(int64_t n) {
    if (n <= 0) return nullptr;
    const size_t b = bytes_for<T>(n);
    TESSERA_CHECK(used_ + b <= cap_, "DeviceScratch: carve of ", b, " bytes exceeds the reservation (", cap_,
                  " bytes, ", used_, " used)");
    T* out = reinterpret_cast<T*>(p_ + used_);
    used_ += b;
    return out;
  }

 private:
  char* p_ = nullptr;
  size_t cap_ = 0, used_ = 0;
  bool async_ = false;
};

/// Grid size for `n` independent work items at `threads` per block; checks the 1-D grid limit.
inline unsigned grid_for(int64_t n, int threads, const char* op) {
  const int64_t blocks = (n + threads - 1) / threads;
  TESSERA_CHECK(blocks >= 1 && blocks <= INT_MAX, op, "(cuda): ", n, " work items need ", blocks,
                " blocks, beyond the grid limit");
  return static_cast<unsigned>(blocks);
}

}  // namespace tessera::cuda_detail
