// Copies between backends: one tensor (host <-> device <-> host) and a whole model's parameters by reflected
// name, e.g. a model initialised or loaded on the CPU moved into the same model set up on the GPU:
//
//   models::Llama<float> cpu_model(cfg);   init_params(cpu_model, rng);
//   models::Llama<float, cuda> gpu_model(cfg);
//   copy_params(gpu_model, cpu_model);     // every parameter, matched by dotted name, shapes checked
//
// The CUDA paths call cuda_mem::{to_device,to_host} and Allocator<cuda>::copy (link tessera::cuda); a program
// that copies only between CPU tensors needs no CUDA library.
#pragma once
#include <cstring>
#include <map>
#include <string>
#include <type_traits>

#include "tessera/core/allocator.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/param.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera {

/// Raw copy of `bytes` from memory of backend SrcB to memory of backend DstB.
template <class DstB, class SrcB>
void copy_bytes(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if constexpr (is_cpu_v<DstB> && is_cpu_v<SrcB>)
    std::memcpy(dst, src, bytes);
  else if constexpr (is_cpu_v<SrcB>)
    cuda_mem::to_device(dst, src, bytes);
  else if constexpr (is_cpu_v<DstB>)
    cuda_mem::to_host(dst, src, bytes);
  else
    Allocator<cuda>::copy(dst, src, bytes);
}

/// dst = src across backends; dst is (re)sized to src's shape.
template <class T, class DstB, class SrcB>
void copy_tensor(Tensor<T, DstB>& dst, const Tensor<T, SrcB>& src) {
  if (dst.shape() != src.shape()) dst.resize_uninit(src.shape());
  copy_bytes<DstB, SrcB>(dst.data(), src.data(), static_cast<size_t>(src.numel()) * sizeof(T));
}

/// A copy of `src` in backend DstB's memory.
template <class DstB, class T, class SrcB>
Tensor<T, DstB> to_backend(const Tensor<T, SrcB>& src) {
  Tensor<T, DstB> out;
  copy_tensor(out, src);
  return out;
}

/// Copies every parameter value of `src` into the parameter of the same dotted name in `dst` (both models set
/// up with the same configuration; their backends may differ). Throws naming the parameter when a name is
/// missing on either side or the shapes differ. Gradients are not copied.
template <class DstModel, class SrcModel>
void copy_params(DstModel& dst, SrcModel& src) {
  using SrcB = typename SrcModel::backend;
  using DstB = typename DstModel::backend;
  std::map<std::string, std::pair<const void*, Shape>> from;
  size_t elem = 0;
  for_each_param(src, [&](const std::string& name, auto& p) {
    from.emplace(name, std::make_pair(static_cast<const void*>(p.value.data()), p.value.shape()));
    elem = sizeof(*p.value.data());
  });
  size_t matched = 0;
  for_each_param(dst, [&](const std::string& name, auto& p) {
    auto it = from.find(name);
    TESSERA_CHECK(it != from.end(), "copy_params: parameter '", name, "' of the destination model is missing in the source");
    TESSERA_CHECK(it->second.second == p.value.shape(), "copy_params: parameter '", name, "' has shape ",
                  p.value.shape(), " in the destination but ", it->second.second, " in the source");
    TESSERA_CHECK(sizeof(*p.value.data()) == elem, "copy_params: parameter '", name, "' has a different dtype");
    copy_bytes<DstB, SrcB>(p.value.data(), it->second.first, static_cast<size_t>(p.value.numel()) * elem);
    p.value_bf16_current = false;
    ++matched;
  });
  TESSERA_CHECK(matched == from.size(), "copy_params: the source model has ", from.size(),
                " parameters but only ", matched, " exist in the destination");
}

}  // namespace tessera
