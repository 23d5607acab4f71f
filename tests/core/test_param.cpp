#include <gtest/gtest.h>

#include <vector>

#include "tessera/core/param.hpp"

using namespace tessera;

namespace {
struct Leaf {
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<float>, weight), (Param<float>, bias));
  };
  Params params;
};
struct Parent {
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
