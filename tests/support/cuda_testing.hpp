// Helpers shared by the GPU tests (tests/cuda): the skip when no device is visible (TESSERA_NEED_GPU, or the
// fixture base CudaTest), host <-> device copies of test data (upload / download, DeviceCopy), the
// elementwise check against the CPU (expect_elementwise_close) and the error measure they report: max |got -
// ref| / max |ref| over all elements.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "tessera/core/allocator.hpp"
#include "tessera/core/param.hpp"
#include "tessera/core/tensor.hpp"

/// First statement of a GPU test: skips it (with the reason) when no CUDA device is visible.
#define TESSERA_NEED_GPU()                                        \
  if (::tessera::cuda_mem::device_count() == 0) GTEST_SKIP() << \
      "no CUDA device: cudaGetDeviceCount reports none (no GPU or no driver)"

namespace tessera::testing {

/// Fixture base of GPU tests: every test skips (with the reason) when no CUDA device is visible.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override { TESSERA_NEED_GPU(); }
};

/// A device copy of a host vector (any trivially copyable element type), freed on destruction: data() is the
/// device pointer, host() downloads the current contents.
template <class T>
class DeviceCopy {
 public:
  explicit DeviceCopy(const std::vector<T>& h) : n_(h.size()) {
    p_ = static_cast<T*>(Allocator<cuda>::allocate(std::max<size_t>(n_, 1) * sizeof(T)));
    if (n_ > 0) cuda_mem::to_device(p_, h.data(), n_ * sizeof(T));
  }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  ~DeviceCopy() { Allocator<cuda>::deallocate(p_); }
  T* data() { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    if (n_ > 0) cuda_mem::to_host(h.data(), p_, n_ * sizeof(T));
    return h;
  }

 private:
  size_t n_ = 0;
  T* p_ = nullptr;
};

template <class T>
std::vector<T> download(const T* d, int64_t n) {
  std::vector<T> h(static_cast<size_t>(n));
  if (n > 0) cuda_mem::to_host(h.data(), d, h.size() * sizeof(T));
  return h;
}
template <class T>
std::vector<T> download(const Tensor<T, cuda>& d) {
  return download(d.data(), d.numel());
}
template <class T>
Tensor<T, cuda> upload(const T* h, int64_t n) {
  Tensor<T, cuda> d;
  d.resize_uninit({n});
  if (n > 0) cuda_mem::to_device(d.data(), h, static_cast<size_t>(n) * sizeof(T));
  return d;
}
template <class T>
Tensor<T, cuda> upload(const std::vector<T>& h) {
  return upload(h.data(), static_cast<int64_t>(h.size()));
}

/// Elementwise GPU-against-CPU check: |gpu - cpu| <= rtol * |cpu| + rtol * max |cpu| for every element, the
/// maximum over the finite CPU values. Equal infinities compare equal (e.g. the lse of a fully masked row); a
/// NaN on either side fails. Reports the first five offenders, the count and the worst |err| / max |cpu|.
inline void expect_elementwise_close(const std::string& what, const std::vector<float>& gpu,
                                     const std::vector<float>& ref, double rtol) {
  ASSERT_EQ(gpu.size(), ref.size()) << what;
  double scale = 0;
  for (float r : ref)
    if (std::isfinite(r)) scale = std::max(scale, std::abs(static_cast<double>(r)));
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = gpu[i], r = ref[i];
    if (std::isinf(r) && g == r) continue;
    const double err = std::abs(g - r);
    if (std::isfinite(err)) worst = std::max(worst, err / std::max(scale, 1e-30));
    if (!(err <= rtol * std::abs(r) + rtol * scale) && ++bad <= 5)
      ADD_FAILURE() << what << "[" << i << "]: gpu " << g << " vs cpu " << r;
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << ref.size() << " entries differ (worst |err|/max|cpu| "
                    << worst << ")";
}

/// max |got - ref| / max |ref| over n elements (max |got - ref| when ref is all zero). A NaN anywhere gives
/// NaN, which fails every `<= bound` check.
template <class A, class R>
double rel_err(const A* got, const R* ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::abs(double(got[i]) - double(ref[i]));
    if (std::isnan(d)) return std::numeric_limits<double>::quiet_NaN();
    num = std::max(num, d);
    den = std::max(den, std::abs(double(ref[i])));
  }
  return den > 0 ? num / den : num;
}
/// The same for a downloaded vector; a size mismatch gives infinity.
template <class A, class R>
double rel_err(const std::vector<A>& got, const R* ref, int64_t n) {
  if (static_cast<int64_t>(got.size()) != n) return std::numeric_limits<double>::infinity();
  return rel_err(got.data(), ref, n);
}
template <class A, class R>
double rel_err(const std::vector<A>& got, const std::vector<R>& ref) {
  return rel_err(got, ref.data(), static_cast<int64_t>(ref.size()));
}
/// A downloaded vector against a CPU tensor (element counts must match).
template <class A, class R>
double rel_err(const std::vector<A>& got, const Tensor<R>& ref) {
  return rel_err(got, ref.data(), ref.numel());
}
/// A device tensor against its CPU reference (shapes must match).
template <class T>
double rel_err(const Tensor<T, cuda>& got, const Tensor<T>& ref) {
  EXPECT_EQ(got.shape(), ref.shape());
  return rel_err(download(got), ref.data(), ref.numel());
}

/// One parameter's gradient on the device against the CPU model's (same reflected name).
struct GradErr {
  std::string name;
  double err;       // rel_err(device grad, CPU grad)
  double ref_amax;  // max |CPU grad| (0: the parameter got no gradient, e.g. a frozen part)
};
/// Every gradient of `device` against `host` by reflected name, in `host`'s walk order; a name missing on the
/// device is a test failure.
template <class HostModel, class DeviceModel>
std::vector<GradErr> gradient_errors(HostModel& host, DeviceModel& device) {
  std::map<std::string, std::vector<float>> dev;
  for_each_param(device, [&](const std::string& name, auto& p) { dev[name] = download(p.grad); });
  std::vector<GradErr> out;
  for_each_param(host, [&](const std::string& name, auto& p) {
    const auto it = dev.find(name);
    if (it == dev.end()) {
      ADD_FAILURE() << "no device parameter " << name;
      return;
    }
    double amax = 0;
    for (int64_t i = 0; i < p.grad.numel(); ++i) amax = std::max(amax, std::abs(double(p.grad[i])));
    out.push_back({name, rel_err(it->second, p.grad.data(), p.grad.numel()), amax});
  });
  EXPECT_EQ(out.size(), dev.size()) << "parameter sets differ";
  return out;
}

}  // namespace tessera::testing
