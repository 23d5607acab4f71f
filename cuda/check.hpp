// Internal to tessera::cuda: turn CUDA runtime / cuBLAS status codes into tessera::Error naming the call.
#pragma once
#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include "tessera/core/error.hpp"

namespace tessera::cuda_detail {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  throw Error(
      str(call, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") at ", file, ":", line));
}
[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  throw Error(str(call, " failed: ", cublasGetStatusName(s), " (", cublasGetStatusString(s), ") at ", file,
                  ":", line));
}

}  // namespace tessera::cuda_detail

#define TESSERA_CUDA_CHECK(call)                                                   \
  do {                                                                             \
    const cudaError_t tessera_err_ = (call);                                       \
    if (tessera_err_ != cudaSuccess)                                               \
      ::tessera::cuda_detail::throw_cuda(tessera_err_, #call, __FILE__, __LINE__); \
  } while (0)

#define TESSERA_CUBLAS_CHECK(call)                                                  \
  do {                                                                              \
    const cublasStatus_t tessera_st_ = (call);                                      \
    if (tessera_st_ != CUBLAS_STATUS_SUCCESS)                                       \
      ::tessera::cuda_detail::throw_cublas(tessera_st_, #call, __FILE__, __LINE__); \
  } while (0)

/// After a kernel launch: report launch-configuration errors with the kernel's name.
#define TESSERA_CUDA_CHECK_LAUNCH(kernel_name)                                                        \
  do {                                                                                                \
    const cudaError_t tessera_err_ = cudaGetLastError();                                              \
    if (tessera_err_ != cudaSuccess)                                                                  \
      ::tessera::cuda_detail::throw_cuda(tessera_err_, "launch of " kernel_name, __FILE__, __LINE__); \
  } while (0)

#include <cstddef>
#include <map>
#include <mutex>
#include <utility>

namespace tessera::cuda_detail {

/// Raise a kernel's dynamic shared-memory limit to `bytes`, once per (kernel, device): the driver call costs
/// microseconds, which adds up when decoding launches attention kernels thousands of times per second.
inline void allow_dynamic_smem(const void* kernel, size_t bytes) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> raised;
  int dev = 0;
  TESSERA_CUDA_CHECK(cudaGetDevice(&dev));
  const std::lock_guard<std::mutex> lock(mu);
  size_t& have = raised[{kernel, dev}];
  if (have >= bytes) return;
  TESSERA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  have = bytes;
}

}  // namespace tessera::cuda_detail
