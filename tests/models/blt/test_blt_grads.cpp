// BLT backward against PyTorch autograd through Hugging Face transformers' BltForCausalLM
// (tests/fixtures/blt_grads_tiny.safetensors, written by tools/reference/blt_reference.py): the training loss
// and the gradient of every trainable parameter, fp32, B=2 rows of 64 bytes with the reference's patches.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <map>

#include "support/gradcheck.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/blt/blt.hpp"

using namespace tessera;

namespace {
const std::string kFixtures = TESSERA_TEST_FIXTURES;

/// max |a - b| / max |b| over the tensor: the error relative to the gradient's scale (elementwise relative
/// error is meaningless for entries that are ~0 in both).
double rel_to_max(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, std::abs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::abs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}
}  // namespace

TEST(BltGradients, MatchPyTorchAutogradThroughTransformers) {
  auto lm = blt::load_pretrained<float>(kFixtures + "/blt-hf-tiny");
  io::SafeTensorsFile ref(kFixtures + "/blt_grads_tiny.safetensors");
  const auto ids = ref.read<int64_t>("input_ids");
  const auto plen = ref.read<int64_t>("patch_lengths");
  const int64_t B = ids.size(0), T = ids.size(1), P = plen.size(1);

  // transformers' causal LM loss: position t predicts t+1; the last position of each row has no target.
  std::vector<int64_t> targets(static_cast<size_t>(B * T), -100);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) targets[b * T + t] = ids[b * T + t + 1];

  lm->model.walk_patcher = false;  // the entropy model is frozen: no gradients, as in the reference
  allocate_grads(*lm);
  zero_grads(*lm);
  const auto& logits = lm->forward(ids.data(), B, T, plen.data(), P);
  const auto ref_logits = ref.read<float>("logits");
  const double logit_err = tessera::testing::max_abs_err(logits.data(), ref_logits.data(), logits.numel());
  const double loss = lm->loss(targets.data());
  const double ref_loss = ref.read<double>("loss")[0];
  lm->backward(targets.data());
  std::cout << "[blt grads] logits max abs err " << logit_err << ", loss " << loss << " vs " << ref_loss << "\n";
  EXPECT_LT(logit_err, 1e-4);
  EXPECT_LT(std::abs(loss - ref_loss) / ref_loss, 1e-5);

  // The hash tables' gradient is stored sparsely (rows + values); every other row is exactly zero.
  std::map<std::string, Tensor<float>> expected;
  for (const auto& info : ref.tensors()) {
    if (info.name.rfind("grad.", 0) != 0) continue;
    const std::string name = info.name.substr(5);
    if (name.size() > 5 && name.substr(name.size() - 5) == ".rows") continue;
    if (name.size() > 7 && name.substr(name.size() - 7) == ".values") {
      const std::string base = name.substr(0, name.size() - 7);
      const auto rows = ref.read<int64_t>("grad." + base + ".rows");
      const auto values = ref.read<float>(info.name);
      int64_t n_rows = 0, dim = values.size(1);
      for_each_param(*lm, [&](const std::string& n, auto& p) {
        if (n == base) n_rows = p.value.size(0);
      });
      ASSERT_GT(n_rows, 0) << base;
      Tensor<float> dense({n_rows, dim});
      for (int64_t r = 0; r < rows.numel(); ++r)
        for (int64_t d = 0; d < dim; ++d) dense[rows[r] * dim + d] = values[r * dim + d];
      expected.emplace(base, std::move(dense));
    } else {
      expected.emplace(name, ref.read<float>(info.name));
    }
  }
  int compared = 0;
  double worst = 0;
  std::string worst_name;
  for_each_param(*lm, [&](const std::string& name, auto& p) {
    auto it = expected.find(name);
    ASSERT_NE(it, expected.end()) << "no reference gradient for " << name;
    ASSERT_EQ(it->second.shape(), p.grad.shape()) << name;
    const double e = rel_to_max(p.grad.data(), it->second.data(), p.grad.numel());
    EXPECT_LT(e, 1e-4) << name;
    if (e > worst) worst = e, worst_name = name;
    ++compared;
  });
  EXPECT_EQ(compared, static_cast<int>(expected.size())) << "every reference gradient has a parameter";
  std::cout << "[blt grads] " << compared << " parameters, worst max|a-b|/max|b| = " << worst << " (" << worst_name
            << ")\n";
}
