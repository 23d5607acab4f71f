#include <gtest/gtest.h>

#include "tessera/core/rng.hpp"
#include "tessera/core/tensor.hpp"

using namespace tessera;

TEST(Tensor, ShapeStridesAndViews) {
  Tensor<float> t({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(i);
  auto v = t.view();
  EXPECT_EQ(v.strides[0], 12);
  EXPECT_EQ(v(1, 2, 3), 23.0f);
  auto tr = v.transpose(0, 2);  // [4,3,2]
  EXPECT_EQ(tr.shape, (Shape{4, 3, 2}));
  EXPECT_EQ(tr(3, 2, 1), 23.0f);
  EXPECT_FALSE(tr.is_contiguous());
  auto sl = v.slice(1, 1, 3);
  EXPECT_EQ(sl(0, 0, 0), 4.0f);
  EXPECT_EQ(sl(1, 1, 2), 22.0f);
  EXPECT_THROW(v.slice(1, 2, 4), Error);
  EXPECT_THROW(tr.reshape({24}), Error);
  EXPECT_EQ(v.reshape({6, 4})(5, 3), 23.0f);
}

TEST(Tensor, MoveCloneResize) {
  Tensor<double> a({3});
  a[1] = 2.0;
  Tensor<double> b = a.clone();
  b[1] = 5.0;
  EXPECT_EQ(a[1], 2.0);
  Tensor<double> c = std::move(a);
  EXPECT_EQ(c[1], 2.0);
  EXPECT_EQ(a.numel(), 0);
  EXPECT_EQ(a.clone().numel(), 0);  // an unallocated tensor stays unallocated when cloned
  c.resize({2, 2});
  EXPECT_EQ(c[3], 0.0);
  EXPECT_THROW(c.reshape({5}), Error);
  EXPECT_THROW(Tensor<float>({-1}), Error);
}

TEST(Rng, DeterministicAndResumable) {
  Rng a(42), b(42), c(43);
  EXPECT_EQ(a.next_u64(), b.next_u64());
  EXPECT_NE(a.next_u64(), c.next_u64());
  a.normal();  // leaves a spare value cached
  auto st = a.state();
  const double x1 = a.normal(), x2 = a.uniform();
  Rng d(0);
  d.set_state(st);
  EXPECT_EQ(d.normal(), x1);
  EXPECT_EQ(d.uniform(), x2);
  // Moments of the normal generator.
  Rng r(7);
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double z = r.normal();
    s += z;
    s2 += z * z;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.02);
  for (int i = 0; i < 1000; ++i) EXPECT_LT(r.below(7), 7u);
}
