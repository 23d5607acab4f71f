// Parity with the official Megalodon code (XuezheMax/megalodon at cff8ba5) on random weights, fp32.
// Fixture: tests/fixtures/megalodon-tiny (config.json, model.safetensors with the official state_dict, and
// cases.safetensors), written by tools/reference/megalodon_reference.py. Tolerance: 1e-4 of the largest
// reference value (the bound); the numbers reached are printed.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tessera/models/megalodon/megalodon.hpp"

using namespace tessera;
using namespace tessera::models;

namespace {

const std::string kDir = std::string(TESSERA_TEST_FIXTURES) + "/megalodon-tiny";

const io::SafeTensorsFile& cases() {
  static const io::SafeTensorsFile f(kDir + "/cases.safetensors");
  return f;
}

/// max|a - ref| / max|ref|.
double rel_err(const float* a, const Tensor<float>& ref) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(ref[i])));
    den = std::max(den, std::abs(double(ref[i])));
  }
  return den > 0 ? num / den : num;
}

constexpr double kTol = 1e-4;

}  // namespace

TEST(MegalodonParity, ModelLogitsLossAndEveryGradient) {
  auto m = load_megalodon<float>(kDir);
  const auto tokens = cases().read<int64_t>("tokens");
  const auto targets = cases().read<int64_t>("targets");
  const int64_t Bt = tokens.size(0), L = tokens.size(1);
  allocate_grads(*m);
  zero_grads(*m);
  const auto& logits = m->forward(tokens.data(), Bt, L);
  const auto ref_logits = cases().read<float>("logits");
  ASSERT_EQ(logits.numel(), ref_logits.numel());
  const double e_logits = rel_err(logits.data(), ref_logits);
  const double loss = m->loss(targets.data());
  const double ref_loss = cases().read<float>("loss")[0];
  std::printf("logits rel err %.3g | loss %.7f vs %.7f (rel %.3g)\n", e_logits, loss, ref_loss,
              std::abs(loss - ref_loss) / std::abs(ref_loss));
  EXPECT_LE(e_logits, kTol);
  EXPECT_LE(std::abs(loss - ref_loss), kTol * std::abs(ref_loss));

  m->backward(targets.data());
  double worst = 0;
  std::string worst_name;
  int n = 0;
  for_each_param(*m, [&](const std::string& name, auto& p) {
    const std::string key = "grad." + name;
    ASSERT_TRUE(cases().contains(key)) << "fixture has no " << key;
    const auto ref = cases().read<float>(key);
    ASSERT_EQ(ref.numel(), p.grad.numel()) << key;
    const double e = rel_err(p.grad.data(), ref);
    EXPECT_LE(e, kTol) << key;
    if (e > worst) worst = e, worst_name = name;
    ++n;
  });
  std::printf("%d parameter gradients, worst rel err %.3g (%s)\n", n, worst, worst_name.c_str());
}

TEST(MegalodonParity, OneBlockForwardBackward) {
  auto m = load_megalodon<float>(kDir);
  allocate_grads(*m);
  zero_grads(*m);
  const auto x = cases().read<float>("layer.x");
  const int64_t Bt = x.size(0), L = x.size(1), D = x.size(2);
  Tensor<float> xr = x.clone();
  xr.reshape({Bt * L, D});
  SeqContext ctx;
  ctx.batch = Bt;
  ctx.seq = L;
  auto& blk = m->layers[0];
  typename MegaBlock<float>::Saved s;
  Tensor<float> y, dx;
  blk.forward(ctx, xr, y, s);
  const double ey = rel_err(y.data(), cases().read<float>("layer.y"));
  Tensor<float> dy = cases().read<float>("layer.dy");
  dy.reshape({Bt * L, D});
  blk.backward(ctx, dy, dx, s);
  const double edx = rel_err(dx.data(), cases().read<float>("layer.grad.x"));
  std::printf("block: y rel err %.3g, dx rel err %.3g\n", ey, edx);
  EXPECT_LE(ey, kTol);
  EXPECT_LE(edx, kTol);
  double worst = 0;
  for_each_param(blk, [&](const std::string& name, auto& p) {
    const auto ref = cases().read<float>("layer.grad." + name);
    const double e = rel_err(p.grad.data(), ref);
    EXPECT_LE(e, kTol) << name;
    worst = std::max(worst, e);
  });
  std::printf("block parameter gradients: worst rel err %.3g\n", worst);
}

TEST(MegalodonParity, CachedInferenceInOfficialPieces) {
  auto m = load_megalodon<float>(kDir);
  const auto tokens = cases().read<int64_t>("stream.tokens");
  const auto ref = cases().read<float>("stream.logits");
  const int64_t L = tokens.size(1), V = m->vocab();
  auto state = m->make_state(1);
  typename Megalodon<float>::StreamScratch scratch;
  std::vector<float> got;
  int64_t done = 0;
  for (const int64_t piece : {32, 5, 1, 1, 1}) {
    const auto& out = m->forward_stream(tokens.data() + done, piece, state, scratch);
    got.insert(got.end(), out.begin(), out.end());
    done += piece;
  }
  ASSERT_EQ(done, L);
  ASSERT_EQ(static_cast<int64_t>(got.size()), L * V);
  const double e = rel_err(got.data(), ref);
  std::printf("cached inference (32, 5, 1, 1, 1 tokens): logits rel err %.3g\n", e);
  EXPECT_LE(e, kTol);
}
