#include <gtest/gtest.h>

#include <vector>

#include "tessera/core/param.hpp"
#include "tessera/core/transfer.hpp"

using namespace tessera;

namespace {
struct Leaf {
  using backend = cpu;
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<float>, weight), (Param<float>, bias));
  };
  Params params;
};
struct Parent {
  using backend = cpu;
  Leaf a, b;
  template <class F>
  void for_each_child(F&& f) {
    f("a", a);
    f("b", b);
  }
};
}  // namespace

TEST(Param, ReflectedDottedNamesSkipAbsent) {
  Parent p;
  p.a.params.weight.resize({2, 3});
  p.a.params.bias.resize({2});
  p.b.params.weight.resize({4});  // b has no bias: absent from the walk
  std::vector<std::string> names;
  for_each_param(p, "model", [&](const std::string& n, auto&) { names.push_back(n); });
  EXPECT_EQ(names, (std::vector<std::string>{"model.a.weight", "model.a.bias", "model.b.weight"}));
  EXPECT_EQ(count_params(p), 12);
  allocate_grads(p);
  EXPECT_EQ(p.a.params.weight.grad.shape(), (Shape{2, 3}));
  EXPECT_EQ(p.b.params.bias.grad.numel(), 0);
}

TEST(Param, ZeroGradsAsyncOnTheCpuZeroesAtOnceAndAllocatesWhatIsMissing) {
  Parent p;
  p.a.params.weight.resize({2, 3});
  p.a.params.bias.resize({2});
  p.b.params.weight.resize({4});
  p.a.params.weight.grad.resize({2, 3});
  for (int64_t i = 0; i < 6; ++i) p.a.params.weight.grad[i] = 1.f + float(i);
  {
    auto none = zero_grads_async(p, /*allocate_missing=*/false);
    EXPECT_FALSE(none.pending());
    for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(p.a.params.weight.grad[i], 0.f);
    EXPECT_EQ(p.a.params.bias.grad.numel(), 0) << "allocate_missing = false leaves it absent";
  }
  p.a.params.weight.grad[4] = 3.f;
  auto zeroing = zero_grads_async(p);
  EXPECT_FALSE(zeroing.pending()) << "nothing runs aside on the CPU";
  zeroing.join();
  EXPECT_EQ(p.a.params.weight.grad[4], 0.f);
  ASSERT_EQ(p.a.params.bias.grad.shape(), (Shape{2}));
  ASSERT_EQ(p.b.params.weight.grad.shape(), (Shape{4}));
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(p.b.params.weight.grad[i], 0.f);
}

TEST(Transfer, CopyParamsByNameChecksNamesAndShapes) {
  Parent src, dst;
  src.a.params.weight.resize({2, 3});
  src.b.params.weight.resize({4});
  for (int64_t i = 0; i < 6; ++i) src.a.params.weight.value[i] = float(i) + 0.5f;
  for (int64_t i = 0; i < 4; ++i) src.b.params.weight.value[i] = -float(i);
  dst.a.params.weight.resize({2, 3});
  dst.b.params.weight.resize({4});
  copy_params(dst, src);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(dst.a.params.weight.value[i], float(i) + 0.5f);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(dst.b.params.weight.value[i], -float(i));

  Parent wrong_shape;
  wrong_shape.a.params.weight.resize({3, 2});
  wrong_shape.b.params.weight.resize({4});
  try {
    copy_params(wrong_shape, src);
    FAIL() << "shape mismatch accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.weight"), std::string::npos) << e.what();
  }
  Parent extra;  // destination has a bias the source lacks
  extra.a.params.weight.resize({2, 3});
  extra.a.params.bias.resize({2});
  extra.b.params.weight.resize({4});
  EXPECT_THROW(copy_params(extra, src), Error);
  Parent fewer;  // source has b.weight, destination does not
  fewer.a.params.weight.resize({2, 3});
  EXPECT_THROW(copy_params(fewer, src), Error);

  Tensor<float> t({3}), u;
  t[0] = 1, t[1] = 2, t[2] = 3;
  copy_tensor(u, t);
  ASSERT_EQ(u.shape(), t.shape());
  EXPECT_EQ(u[2], 3.f);
}
