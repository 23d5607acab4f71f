// Training on CUDA parameters: clip_grad_norm (device reduction and scaling) and AdamW (fused kernel, fp32
// master weights) against the CPU path on the same values, three clipped steps; optimizer state save/load;
// gradients zeroed on the side stream (zero_grads_async) and ordered by the join.
// Skips without a device.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/gradcheck.hpp"
#include "support/temp_dir.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/clip.hpp"

using namespace tessera;

namespace {

template <class B>
struct TwoTensors {
  using backend = B;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<float, B>, weight), (Param<float, B>, bias));
  };
  Params params;
  TwoTensors() {
    params.weight.resize({37, 301});
    params.bias.resize({5});
    params.weight.grad.resize({37, 301});
    params.bias.grad.resize({5});
  }
};

void upload(Tensor<float, cuda>& d, const Tensor<float>& h) {
  cuda_mem::to_device(d.data(), h.data(), static_cast<size_t>(h.numel()) * sizeof(float));
}
std::vector<float> download(const Tensor<float, cuda>& d) {
  std::vector<float> h(static_cast<size_t>(d.numel()));
  cuda_mem::to_host(h.data(), d.data(), h.size() * sizeof(float));
  return h;
}
double max_rel(const std::vector<float>& a, const Tensor<float>& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

}  // namespace

TEST(CudaTrain, ClipAndAdamWMatchTheCpu) {
  if (cuda_mem::device_count() == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount reports none";
  TwoTensors<cpu> h;
  TwoTensors<cuda> d;
  Rng rng(5);
  const train::AdamWConfig cfg{1e-2, 0.9, 0.95, 1e-8, 0.1};
  train::AdamW<float> opt_h(cfg);
  train::AdamW<float, cuda> opt_d(cfg);
  tessera::testing::fill_normal(h.params.weight.value, rng);
  tessera::testing::fill_normal(h.params.bias.value, rng);
  upload(d.params.weight.value, h.params.weight.value);
  upload(d.params.bias.value, h.params.bias.value);
  for (int step = 0; step < 3; ++step) {
    tessera::testing::fill_normal(h.params.weight.grad, rng, 0.5);
    tessera::testing::fill_normal(h.params.bias.grad, rng, 0.5);
    upload(d.params.weight.grad, h.params.weight.grad);
    upload(d.params.bias.grad, h.params.bias.grad);
    // max_norm below the norm (~52): both clip. The norms are sums of 11k squares in double: ~1e-12 apart.
    const double nh = train::clip_grad_norm(h, 3.0), nd = train::clip_grad_norm(d, 3.0);
    EXPECT_NEAR(nd, nh, 1e-9 * nh) << "step " << step;
    EXPECT_LE(max_rel(download(d.params.weight.grad), h.params.weight.grad), 1e-6) << "clipped grads";
    opt_h.step(h);
    opt_d.step(d);
    // Both evaluate each element in double and round once (no FMA contraction on the device): equal to 1 ulp.
    EXPECT_LE(max_rel(download(d.params.weight.value), h.params.weight.value), 1e-6) << "step " << step;
    EXPECT_LE(max_rel(download(d.params.bias.value), h.params.bias.value), 1e-6) << "step " << step;
    EXPECT_LE(max_rel(download(*opt_d.v("weight")), *opt_h.v("weight")), 1e-6) << "step " << step;
  }
  EXPECT_NEAR(train::grad_norm(d), train::grad_norm(h), 1e-9 * train::grad_norm(h));

  // Optimizer state written from the device and read back onto it.
  const tessera::testing::TempDir tmp("cuda-adamw");
  const std::string path = tmp.file("state.safetensors");
  {
    io::SafeTensorsWriter w;
    opt_d.save_state(w);
    w.write(path);
  }
  train::AdamW<float, cuda> back(cfg);
  back.load_state(io::SafeTensorsFile(path), d);
  EXPECT_EQ(back.steps(), 3);
  EXPECT_EQ(download(*back.m("weight")), download(*opt_d.m("weight")));
}

// zero_grads_async: the existing gradients are zeroed on the side stream and the join orders that before an
// accumulation queued after it; a missing gradient is allocated (zeroed) on the default stream. Under
// tools/cuda-emu the side stream's memsets wait until something orders them, so a join that did not make the
// default stream wait leaves the old values under the accumulation here.
TEST(CudaTrain, GradientsZeroedAsideAreZeroWhenTheBackwardRuns) {
  if (cuda_mem::device_count() == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount reports none";
  TwoTensors<cuda> d;
  TwoTensors<cpu> h;
  Rng rng(9);
  tessera::testing::fill_normal(h.params.weight.grad, rng);
  tessera::testing::fill_normal(h.params.bias.grad, rng);
  tessera::testing::fill_normal(h.params.weight.value, rng);  // what the "backward" adds
  for (int round = 0; round < 2; ++round) {
    upload(d.params.weight.grad, h.params.weight.grad);
    if (round == 0)
      upload(d.params.bias.grad, h.params.bias.grad);
    else
      d.params.bias.grad = Tensor<float, cuda>();  // a missing gradient
    Tensor<float, cuda> add;
    add.resize_uninit(h.params.weight.value.shape());
    upload(add, h.params.weight.value);
    {
      auto zeroing = zero_grads_async(d);
      EXPECT_TRUE(zeroing.pending());
      zeroing.join();
      EXPECT_FALSE(zeroing.pending());
      ops::add_inplace(cuda{}, d.params.weight.grad.data(), add.data(), add.numel());
    }
    EXPECT_EQ(download(d.params.weight.grad), download(add)) << "round " << round;
    ASSERT_EQ(d.params.bias.grad.shape(), d.params.bias.value.shape()) << "allocated by zero_grads_async";
    EXPECT_EQ(download(d.params.bias.grad), std::vector<float>(5, 0.f)) << "round " << round;
  }
  // Joined by the destructor at the end of its scope; nothing pending: no join to make.
  upload(d.params.weight.grad, h.params.weight.grad);
  { auto zeroing = zero_grads_async(d); }
  EXPECT_EQ(download(d.params.weight.grad), std::vector<float>(37 * 301, 0.f));
  TwoTensors<cuda> none;
  none.params.weight.grad = Tensor<float, cuda>();
  none.params.bias.grad = Tensor<float, cuda>();
  auto nothing = zero_grads_async(none, /*allocate_missing=*/false);
  EXPECT_FALSE(nothing.pending());
  EXPECT_EQ(none.params.weight.grad.numel(), 0);
}
