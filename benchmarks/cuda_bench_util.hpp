// Helpers shared by the whole-model GPU benchmarks (model_cuda_step.cpp, blt_cuda_bench.cpp): random weights
// written on the device, a step timer with device synchronisation, a random token batch, device memory in
// use.
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "../cuda/cudnn_attention.hpp"  // internal: which implementation ran the bf16 attention
#include "tessera/core/allocator.hpp"
#include "tessera/core/param.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/transfer.hpp"

namespace tessera::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Matrices ~ N(0, 0.02): windows of one pool of 2^22 normal draws (fixed seed) at random offsets — drawing
/// billions of separate normals on the host would take longer than the benchmark; timing does not depend on
/// the values as long as they are sane. The pool is uploaded once and the windows are device-to-device
/// copies, so even the 4.6 B parameters of BLT-1B take a few tens of milliseconds. Vectors keep their setup
/// values (norm gains 1). Walks every parameter the model's for_each_param visits.
template <class Model>
void init_on_device(Model& m, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> pool(size_t{1} << 22);
  for (auto& v : pool) v = static_cast<float>(rng.normal() * 0.02);
  Tensor<float, cuda> dev_pool;
  dev_pool.resize_uninit({static_cast<int64_t>(pool.size())});
  cuda_mem::to_device(dev_pool.data(), pool.data(), pool.size() * sizeof(float));
  for_each_param(m, [&](const std::string&, auto& p) {
    p.value_bf16_current = false;
    if (p.value.rank() < 2) return;
    const size_t total = static_cast<size_t>(p.value.numel());
    for (size_t i = 0; i < total;) {
      const size_t off = static_cast<size_t>(rng.below(pool.size() / 2));
      const size_t n = std::min(pool.size() - off, total - i);
      Allocator<cuda>::copy(p.value.data() + i, dev_pool.data() + off, n * sizeof(float));
      i += n;
    }
  });
  cudaDeviceSynchronize();
}

struct Timing {
  double median_ms = 0, min_ms = 0, loss = 0;
};

/// Runs `warmup` + `steps` calls of step() (which returns a loss, or 0) and times each with a device sync.
template <class F>
Timing time_steps(F&& step, int64_t warmup, int64_t steps) {
  Timing t;
  for (int64_t i = 0; i < warmup; ++i) t.loss = step();
  cudaDeviceSynchronize();
  if (warmup > 0)
    tessera::cuda_mem::profile_restart();  // TESSERA_CUDA_PROFILE tables cover the timed steps only
  std::vector<double> ms;
  for (int64_t i = 0; i < std::max<int64_t>(steps, 1); ++i) {
    const auto t0 = Clock::now();
    t.loss = step();
    cudaDeviceSynchronize();
    ms.push_back(seconds_since(t0) * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  t.median_ms = ms[ms.size() / 2];
  t.min_ms = ms.front();
  return t;
}

/// Random token ids and next-token targets, uploaded.
struct DeviceBatch {
  Tensor<int64_t, cuda> ids, targets;
  DeviceBatch(int64_t rows, int64_t vocab, uint64_t seed) {
    Rng rng(seed);
    Tensor<int64_t> h_ids({rows}), h_tgt({rows});
    for (int64_t i = 0; i < rows; ++i)
      h_ids[i] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
    for (int64_t i = 0; i < rows; ++i) h_tgt[i] = h_ids[(i + 1) % rows];
    copy_tensor(ids, h_ids);
    copy_tensor(targets, h_tgt);
  }
};

/// Device memory in use (total - free, GiB), as cudaMemGetInfo reports it: every allocation of the process
/// plus the memory pools' reserve and the CUDA context.
inline double device_used_gib() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  return static_cast<double>(total_b - free_b) / double(1ull << 30);
}

/// For a row's name: which implementation ran the bf16 attention calls so far. ", cuDNN attention (N of M
/// calls)" when cuDNN ran some or was chosen for all (the rest: masks or shapes outside its graphs or, by
/// default, shorter than kCudnnMinKeys keys, on tessera's kernels; the last reason when none ran), ", tessera
/// attention kernels" when TESSERA_ATTN_BF16_BACKEND=tessera chose those, "" when there were no such calls.
inline std::string attention_backend_note() {
  namespace cd = tessera::cuda_detail;
  const int64_t on = cd::attention_bf16_calls(cd::AttnBf16Backend::Cudnn),
                all = on + cd::attention_bf16_calls(cd::AttnBf16Backend::Tessera);
  if (all == 0) return "";
  const auto chosen = cd::attention_bf16_backend();
  if (chosen == cd::AttnBf16Backend::Tessera) return ", tessera attention kernels";
  if (on == 0 && chosen != cd::AttnBf16Backend::Cudnn) return ", tessera attention kernels (by length)";
  std::string note = ", cuDNN attention (" + std::to_string(on) + " of " + std::to_string(all) + " calls";
  if (on == 0) {
    std::string why = cd::last_cudnn_attention_error();
    std::replace(why.begin(), why.end(), '|', '/');
    note += ": " + why;
  }
  return note + ")";
}

}  // namespace tessera::bench
