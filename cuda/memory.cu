// Device memory for the `cuda` backend tag: tessera::Allocator<cuda> and host<->device copies.
// Everything runs on the legacy default stream, so it is ordered with the kernels and cuBLAS calls
// of tessera::cuda; copies to the host synchronise.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "check.hpp"
#include "tessera/core/allocator.hpp"

namespace tessera {

namespace {

// Tensors come from the device's default memory pool, stream-ordered on the legacy default stream
// (cudaMallocAsync / cudaFreeAsync): a freed block is reused by the next allocation without waiting for the
// device, whereas cudaFree waits for every queued kernel — once per temporary tensor, which made decoding
// (hundreds of small tensors per token) wait on the GPU at every op. The pool keeps freed memory (release
// threshold: unlimited, as PyTorch's caching allocator does); when an allocation fails, the unused part of
// the pool is returned to the driver and the allocation is tried once more. Devices without memory pools
// fall back to cudaMalloc / cudaFree.
struct DevicePool {
  bool async = false;
  cudaMemPool_t pool{};
  DevicePool() {
    int dev = 0, pools = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess || pools == 0 ||
        cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return;
    }
    uint64_t keep = UINT64_MAX;
    async = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) == cudaSuccess;
    (void)cudaGetLastError();
  }
};

DevicePool& device_pool() {
  static DevicePool p;  // the device current at the first allocation (tessera uses one device per process)
  return p;
}

cudaError_t try_allocate(void** p, size_t bytes, bool async) {
  return async ? cudaMallocAsync(p, bytes, 0) : cudaMalloc(p, bytes);
}

}  // namespace

void* Allocator<cuda>::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  DevicePool& dp = device_pool();
  void* p = nullptr;
  cudaError_t e = try_allocate(&p, bytes, dp.async);
  if (e == cudaErrorMemoryAllocation && dp.async) {
    (void)cudaGetLastError();
    // Out of memory with blocks cached in the pool: wait for the frees queued on the stream, hand the unused
    // memory back, and try again (the pool may hold free blocks of the wrong sizes).
    if (cudaDeviceSynchronize() == cudaSuccess && cudaMemPoolTrimTo(dp.pool, 0) == cudaSuccess)
      e = try_allocate(&p, bytes, true);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // an out-of-memory error is not sticky; clear it for the caller
    throw Error(str(dp.async ? "cudaMallocAsync(" : "cudaMalloc(", bytes,
                    " bytes) failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
  }
  return p;
}

// Called from destructors, so it must not throw. A free fails only for invalid pointers or when the runtime
// is already shutting down at process exit; neither can be acted on here.
void Allocator<cuda>::deallocate(void* p) {
  if (!p) return;
  if (device_pool().async)
    (void)cudaFreeAsync(p, 0);
  else
    (void)cudaFree(p);
}

void Allocator<cuda>::memset_zero(void* p, size_t bytes) {
  if (bytes) TESSERA_CUDA_CHECK(cudaMemset(p, 0, bytes));
}

void Allocator<cuda>::copy(void* dst, const void* src, size_t bytes) {
  if (bytes) TESSERA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

namespace cuda_mem {

void to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) TESSERA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) TESSERA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

namespace {
// The side stream and its two events, made on first use and kept for the process (destroying them at exit
// could run after the runtime is gone). Non-blocking: the legacy default stream does not wait for it, nor it
// for the default stream, except through the events.
struct Aside {
  cudaStream_t stream{};
  cudaEvent_t fork{}, done{};
  Aside() {
    TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    TESSERA_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    TESSERA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  }
};
Aside& aside() {
  static Aside* a = new Aside;
  return *a;
}
}  // namespace

void aside_begin() {
  Aside& a = aside();
  TESSERA_CUDA_CHECK(cudaEventRecord(a.fork, 0));
  TESSERA_CUDA_CHECK(cudaStreamWaitEvent(a.stream, a.fork, 0));
}

void aside_zero(void* p, size_t bytes) {
  if (bytes) TESSERA_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, aside().stream));
}

void aside_join() {
  Aside& a = aside();
  TESSERA_CUDA_CHECK(cudaEventRecord(a.done, a.stream));
  TESSERA_CUDA_CHECK(cudaStreamWaitEvent(0, a.done, 0));
}

void profile_restart() {
  cuda_detail::Profiler::get().restart();
}

void profile_phase_end(const char* name) {
  cuda_detail::Profiler::get().phase_end(name);
}

bool profile_on() {
  return cuda_detail::Profiler::get().on();
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: not an error for the caller
    return 0;
  }
  return n;
}

}  // namespace cuda_mem
}  // namespace tessera
