#include <gtest/gtest.h>

#include <vector>

#include "ops_testing.hpp"
#include "tessera/ops/embedding.hpp"

using namespace tessera;
using namespace tessera::testing;

TEST(Embedding, ForwardGathersRows) {
  const int64_t V = 4, D = 3;
  std::vector<float> table(V * D);
  for (int64_t i = 0; i < V * D; ++i) table[i] = static_cast<float>(i);
  const std::vector<int64_t> ids = {3, 0, 3, 1};
  std::vector<float> out(ids.size() * D);
  ops::embedding_forward(cpu{}, out.data(), ids.data(), table.data(), 4, V, D);
  EXPECT_EQ(out, (std::vector<float>{9, 10, 11, 0, 1, 2, 9, 10, 11, 3, 4, 5}));
}

TEST(Embedding, BadIdNamesIdAndPosition) {
  std::vector<float> table(4 * 2), out(3 * 2);
  const std::vector<int64_t> hi = {0, 1, 4}, neg = {0, -1, 2};
  expect_error([&] { ops::embedding_forward(cpu{}, out.data(), hi.data(), table.data(), 3, 4, 2); },
               {"embedding_forward", "id 4", "position 2", "[0, 4)"});
  expect_error([&] { ops::embedding_backward(cpu{}, table.data(), out.data(), neg.data(), 3, 4, 2); },
               {"embedding_backward", "id -1", "position 1"});
}

// Repeated ids sum their gradients into the same row; untouched rows keep their previous contents.
TEST(Embedding, BackwardScatterAddsRepeatedIds) {
  const int64_t V = 4, D = 2;
  const std::vector<int64_t> ids = {2, 0, 2, 2};
  const std::vector<float> dout = {1, 2, 10, 20, 100, 200, 1000, 2000};
  std::vector<float> dtable(V * D, 0.5f);
  ops::embedding_backward(cpu{}, dtable.data(), dout.data(), ids.data(), 4, V, D);
  EXPECT_EQ(dtable, (std::vector<float>{10.5f, 20.5f, 0.5f, 0.5f, 1101.5f, 2202.5f, 0.5f, 0.5f}));
}

TEST(Embedding, Gradcheck) {
  Rng rng(11);
  const int64_t V = 5, D = 3, N = 6;
  const std::vector<int64_t> ids = {1, 4, 1, 0, 4, 4};
  auto table = randn(V * D, rng), R = randn(N * D, rng);
  auto loss = [&] {
    std::vector<double> out(N * D);
    ops::embedding_forward(cpu{}, out.data(), ids.data(), table.data(), N, V, D);
    return dot(out, R);
  };
  std::vector<double> dtable(V * D, 0.0);
  ops::embedding_backward(cpu{}, dtable.data(), R.data(), ids.data(), N, V, D);
  expect_grad_close("embedding dtable", table.data(), dtable.data(), V * D, loss);
}

// Sizes above the OpenMP threshold (several column blocks) against a serial loop.
TEST(Embedding, LargeMatchesSerialLoop) {
  Rng rng(12);
  const int64_t V = 50, D = 600, N = 300;
  std::vector<int64_t> ids(N);
  for (auto& id : ids) id = static_cast<int64_t>(rng.below(V));
  auto table = randn<float>(V * D, rng), dout = randn<float>(N * D, rng);
  std::vector<float> out(N * D), dtable(V * D, 0.f), ref(V * D, 0.f);
  ops::embedding_forward(cpu{}, out.data(), ids.data(), table.data(), N, V, D);
  ops::embedding_backward(cpu{}, dtable.data(), dout.data(), ids.data(), N, V, D);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      ASSERT_EQ(out[n * D + d], table[ids[n] * D + d]);
      ref[ids[n] * D + d] += dout[n * D + d];
    }
  EXPECT_EQ(dtable, ref);  // same row order of summation: bit-exact
}
