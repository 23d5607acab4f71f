// Internal to tessera::cuda: programmatic dependent launch (PDL, compute capability 9.0+) for the kernels of
// a decoding step, where one token's work is a chain of ~300 small dependent kernels and the gap between two
// of them costs about as much as a kernel.
//
// A kernel launched with launch_pdl may start while the kernel before it in the stream is still running, once
// that one has called pdl_launch_dependents() in every block (or finished). So a PDL kernel must
//   - read nothing another kernel writes and write nothing before pdl_wait(), which returns when the previous
//     kernel has completed and its memory is visible (transitively, everything before it);
//   - do its independent prologue first — for a product, loading its first weights — to overlap the tail of
//     the previous kernel.
// Kernels that only call pdl_launch_dependents() (early, to let their successor's prologue start) are
// launched normally. Both device calls are no-ops when the grid was launched without the attribute.
//
// Off by default: TESSERA_CUDA_PDL=1 turns it on (devices of compute capability 9.0 and newer); a launch the
// runtime rejects falls back to a plain launch and turns PDL off for the process.
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <utility>

#include "check.hpp"

namespace tessera::cuda_detail {

__device__ inline void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ inline void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/// Whether launch_pdl sets the PDL attribute: TESSERA_CUDA_PDL=1 and a device of compute capability >= 9.0
/// (queried once; tessera drives one device per process).
inline bool& pdl_on() {
  static bool on = [] {
    const char* v = std::getenv("TESSERA_CUDA_PDL");
    if (!v || v[0] != '1') return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return on;
}

/// Launches kernel(args...) with grid, block and smem bytes on the legacy default stream, with the PDL
/// attribute when pdl_on().
template <class... Params, class... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  if (pdl_on()) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = nullptr;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...) == cudaSuccess) return;
    (void)cudaGetLastError();  // rejected (not a launch failure): plain launches from now on
    pdl_on() = false;
  }
  kernel<<<grid, block, smem>>>(std::forward<Args>(args)...);
}

}  // namespace tessera::cuda_detail
