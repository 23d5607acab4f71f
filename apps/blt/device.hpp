// Where a `blt` command runs: --device cpu|cuda and --precision fp32|bf16, checked before anything is read or
// written, and the one thing the backend-generic commands need beyond the model: host ids in backend memory.
//
// The commands are templates over the backend B (train_impl.hpp, eval_impl.hpp), instantiated for
// tessera::cpu in cpu_commands.cpp and for tessera::cuda in cuda_commands.cpp, which CMake compiles (and
// defines TESSERA_BLT_CUDA=1 for, in blt_commands' users too) only when tessera::cuda is built.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "tessera/core/allocator.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/transfer.hpp"
#include "tessera/layers/precision.hpp"

#ifndef TESSERA_BLT_CUDA
#define TESSERA_BLT_CUDA 0
#endif

namespace bltapp {

enum class Device { cpu, cuda };

/// What a command does with the model: bf16 on the CPU is for inference only (bf16 weights, fp32 activations;
/// layers/precision.hpp), bf16 training needs CUDA.
enum class Use { training, inference };

/// The backend and compute precision of a command.
struct Target {
  Device device = Device::cpu;
  tessera::Precision precision = tessera::Precision::fp32;
};

/// Parses and checks --device / --precision: cuda needs a build with the CUDA backend and a visible device;
/// bf16 needs cuda for training. Throws tessera::Error with the reason (callers do this first, so a refused
/// command writes nothing).
inline Target select_target(const std::string& device, const std::string& precision = "fp32",
                            Use use = Use::training) {
  Target t;
  if (device == "cuda") {
    t.device = Device::cuda;
  } else {
    TESSERA_CHECK(device == "cpu", "--device: unknown device '", device, "' (expected cpu or cuda)");
  }
  t.precision = tessera::with_context("--precision", [&] { return tessera::parse_precision(precision); });
  if (t.device == Device::cuda) {
#if TESSERA_BLT_CUDA
    TESSERA_CHECK(tessera::cuda_mem::device_count() > 0,
                  "--device cuda: no CUDA device (cudaGetDeviceCount reports none: no NVIDIA GPU or driver "
                  "visible); use --device cpu");
#else
    throw tessera::Error(
        "--device cuda: this blt was built without the CUDA backend (tessera::cuda; configure with "
        "-DTESSERA_CUDA=ON where nvcc is installed), so there is no CUDA device to use; use --device cpu");
#endif
  }
  TESSERA_CHECK(t.precision == tessera::Precision::fp32 || t.device == Device::cuda || use == Use::inference,
                "--precision bf16 needs --device cuda for training (the CPU trains in fp32; its bf16 is for "
                "eval and generate)");
  return t;
}

/// Host ids/targets in backend memory: the host vector itself on the CPU, a device copy on CUDA (valid until
/// the next put()).
template <class B>
class BackendIds {
 public:
  const int64_t* put(const std::vector<int64_t>& host) {
    return put(host.data(), static_cast<int64_t>(host.size()));
  }
  const int64_t* put(const int64_t* host, int64_t n) {
    if constexpr (tessera::is_cpu_v<B>) {
      return host;
    } else {
      buf_.resize_uninit({std::max<int64_t>(n, 1)});
      tessera::copy_bytes<B, tessera::cpu>(buf_.data(), host, static_cast<size_t>(n) * sizeof(int64_t));
      return buf_.data();
    }
  }

 private:
  tessera::Tensor<int64_t, B> buf_;
};

}  // namespace bltapp
