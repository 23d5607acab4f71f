// Device memory for the `cuda` backend tag: tessera::Allocator<cuda> and host<->device copies.
// Everything runs on the legacy default stream, so it is ordered with the kernels and cuBLAS calls
// of tessera::cuda; copies to the host synchronise.
#include <cuda_runtime_api.h>

#include "check.hpp"
#include "tessera/core/allocator.hpp"

namespace tessera {

void* Allocator<cuda>::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // an out-of-memory error is not sticky; clear it for the caller
    throw Error(
        str("cudaMalloc(", bytes, " bytes) failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
  }
  return p;
}

// Called from destructors, so it must not throw. cudaFree fails only for invalid pointers or when the
// runtime is already shutting down at process exit; neither can be acted on here.
void Allocator<cuda>::deallocate(void* p) {
  if (p) (void)cudaFree(p);
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
