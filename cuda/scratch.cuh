// Internal to tessera::cuda: temporary device buffers for one op call, and small launch helpers.
//
// DeviceScratch takes its buffer from tessera::Allocator<cuda> (cuda/memory.cu): stream-ordered memory of the
// device's default pool on the legacy default stream, so the buffer is valid for every kernel queued after
// the allocation and is released after every kernel queued before the destructor has run. Going through the
// allocator also sets the pool to keep freed memory (without that, a program whose first device allocation
// is a scratch buffer would hand a large one back to the driver at every synchronisation and map it again at
// the next call) and retries an out-of-memory allocation once after trimming the pool. Destruction never
// throws.
#pragma once
#include <climits>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "check.hpp"
#include "tessera/core/allocator.hpp"

namespace tessera::cuda_detail {

class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() { Allocator<cuda>::deallocate(p_); }

  /// Reserve `bytes` (rounded up to 256 per carve) before the first carve; call once.
  void reserve(size_t bytes) {
    TESSERA_CHECK(p_ == nullptr, "DeviceScratch::reserve called twice");
    if (bytes == 0) return;
    p_ = static_cast<char*>(Allocator<cuda>::allocate(bytes));
    cap_ = bytes;
  }

  /// reserve() that reports a failed allocation as false instead of throwing (the allocator has cleared the
  /// error), for callers with a path that needs no buffer.
  bool try_reserve(size_t bytes) {
    TESSERA_CHECK(p_ == nullptr, "DeviceScratch::try_reserve after a reservation");
    if (bytes == 0) return true;
    try {
      p_ = static_cast<char*>(Allocator<cuda>::allocate(bytes));
    } catch (const Error&) {
      return false;
    }
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
};

/// Grid size for `n` independent work items at `threads` per block; checks the 1-D grid limit.
inline unsigned grid_for(int64_t n, int threads, const char* op) {
  const int64_t blocks = (n + threads - 1) / threads;
  TESSERA_CHECK(blocks >= 1 && blocks <= INT_MAX, op, "(cuda): ", n, " work items need ", blocks,
                " blocks, beyond the grid limit");
  return static_cast<unsigned>(blocks);
}

/// A device buffer kept across calls, per device (hold one per host thread: thread_local): grows, never
/// shrinks, freed at thread exit. For kernels' state that outlives a call — partial sums reused by every
/// call, counters that the kernels leave zeroed. get(n, zeroed): at least n elements on the current device;
/// with zeroed, storage new to this buffer is zero-filled (what is kept is whatever the kernels left).
template <class T>
class KeptDeviceBuffer {
 public:
  KeptDeviceBuffer() = default;
  KeptDeviceBuffer(const KeptDeviceBuffer&) = delete;
  KeptDeviceBuffer& operator=(const KeptDeviceBuffer&) = delete;
  ~KeptDeviceBuffer() {
    for (auto& [p, n] : per_device_)
      if (p) (void)cudaFree(p);
  }
  T* get(size_t n, bool zeroed = false) {
    int dev = 0;
    TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
    if (static_cast<size_t>(dev) >= per_device_.size()) per_device_.resize(dev + 1, {nullptr, 0});
    auto& [p, cap] = per_device_[dev];
    if (cap < n) {
      if (p) TESSERA_CUDA_CHECK(cudaFree(p));  // ordered after queued kernels that used it
      p = nullptr;
      cap = 0;
      TESSERA_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
      if (zeroed) TESSERA_CUDA_CHECK(cudaMemset(p, 0, n * sizeof(T)));
      cap = n;
    }
    return p;
  }

 private:
  std::vector<std::pair<T*, size_t>> per_device_;
};

}  // namespace tessera::cuda_detail
