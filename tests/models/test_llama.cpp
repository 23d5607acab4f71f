// The composed Llama: end-to-end finite-difference gradient check in double through embedding, blocks,
// final norm, head and cross-entropy; reflected checkpoint names; config errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <vector>

#include "support/gradcheck.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/models/llama.hpp"

using namespace tessera;

namespace {
models::LlamaConfig tiny() {
  models::LlamaConfig c;
  c.vocab_size = 11;
  c.dim = 8;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.ffn_hidden = 12;
  return c;
}
/// A small model with grouped-query attention for the CPU decoding tests.
models::LlamaConfig decoding_config() {
  models::LlamaConfig c;
  c.vocab_size = 40;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_hidden = 96;
  return c;
}
}  // namespace

TEST(Llama, NamesFollowTheReferenceLayout) {
  models::Llama<float> m(tiny());
  std::vector<std::string> names;
  for_each_param(m, [&](const std::string& n, auto&) { names.push_back(n); });
  ASSERT_EQ(names.size(), 1u + 2 * 9 + 2);
  EXPECT_EQ(names.front(), "embed_tokens.weight");
  EXPECT_EQ(names[1], "layers.0.input_layernorm.weight");
  EXPECT_EQ(names[3], "layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(names[19], "norm.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  EXPECT_EQ(count_params(m), 11 * 8 * 2 + 2 * (8 + 8 * 8 + 2 * 4 * 8 + 8 * 8 + 8 + 3 * 8 * 12) + 8);
}

TEST(Llama, EndToEndGradientsMatchFiniteDifferences) {
  for (int64_t window : {0, 2}) {
    auto cfg = tiny();
    cfg.window = window;
    models::Llama<double> m(cfg);
    Rng rng(11);
    init_normal(m, rng, 0.4);
    std::vector<int64_t> ids = {1, 5, 7, 2, 9, 3, 0, 10, 4, 4}, tgt = {5, 7, 2, 9, 3, -100, 10, 4, 4, 6};
    m.forward(ids.data(), 2, 5);
    zero_grads(m);
    m.backward(tgt.data());
    auto loss = [&] {
      m.forward(ids.data(), 2, 5);
      return m.loss(tgt.data());
    };
    for_each_param(m, [&](const std::string& name, auto& p) {
      Tensor<double> g = p.grad.clone();
      tessera::testing::expect_grad_close(name + " (window " + std::to_string(window) + ")", p.value.data(), g.data(),
                                 p.value.numel(), loss, 1e-6, 1e-5, 1e-8);
    });
  }
}

TEST(Llama, BadConfigAndInputsGiveClearErrors) {
  nlohmann::json j = {{"vocab_size", 256}, {"dim", 64}, {"n_layers", 2}, {"n_heads", 4}};
  try {
    models::LlamaConfig::from_json(j, "cfg.json");
    FAIL() << "no error for a missing field";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json: missing field 'ffn_hidden'"), std::string::npos) << e.what();
  }
  j["ffn_hidden"] = "big";
  EXPECT_THROW(models::LlamaConfig::from_json(j), Error);
  j["ffn_hidden"] = 128;
  j["n_heads"] = 5;
  EXPECT_THROW(models::LlamaConfig::from_json(j), Error);
  models::Llama<float> m(tiny());
  std::vector<int64_t> bad = {1, 2, 99};
  EXPECT_THROW(m.forward(bad.data(), 1, 3), Error);
}

// bf16 weights on the CPU (layers/precision.hpp): the cached decoding of a float Llama with frozen bf16
// weights equals its own full forward (the same rounded weights: streamed by the decoding products, widened
// for the prompt's GEMMs), and stays within the weights' rounding of the fp32 model.
TEST(Llama, Bf16WeightsOnTheCpuDecodeLikeTheirFullForward) {
  models::LlamaConfig c = decoding_config();
  models::Llama<float> m(c);
  Rng rng(5);
  for_each_param(m, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.2); });
  const int64_t T = 40, V = c.vocab_size;
  std::vector<int64_t> ids(T);
  for (auto& i : ids) i = static_cast<int64_t>(rng.below(V));
  const Tensor<float> fp32 = m.forward(ids.data(), 1, T).clone();
  set_compute_precision(m, Precision::bf16);
  freeze_bf16_weights(m);
  const Tensor<float> full = m.forward(ids.data(), 1, T).clone();
  auto cache = m.make_cache();
  auto* cp = &cache;
  models::Llama<float>::DecodeScratch s;
  const int64_t prompt = 20;  // more than 16 rows: the prompt takes the widened-panel products
  const auto& l0 = m.forward_cached(ids.data(), 1, prompt, &cp, s);
  double worst = tessera::testing::max_abs_err(l0.data(), full.data(), prompt * V);
  for (int64_t t = prompt; t < T; ++t) {
    const auto& l = m.forward_cached(&ids[t], 1, 1, &cp, s);
    worst = std::max(worst, tessera::testing::max_abs_err(l.data(), full.data() + t * V, V));
  }
  EXPECT_LE(worst, 1e-5);
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < T * V; ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(full[i] - fp32[i])));
    scale = std::max(scale, static_cast<double>(std::abs(fp32[i])));
  }
  EXPECT_GT(diff, 1e-6);          // the bf16 weights were used
  EXPECT_LE(diff / scale, 1e-2);  // measured 3.4e-3 (cached vs full: 4.2e-7)
  std::cout << "[llama-bf16] cached vs full " << worst << ", bf16 vs fp32 " << diff / scale
            << " of the largest logit\n";
}

// Decoding products are streamed on the CPU (ops/streamed_product.hpp: one fixed-order sum per output,
// whatever the rows around it) and every other op of a decoding step is row by row, so sequences decoded
// together get the logits, bit for bit, of each sequence decoded alone — in fp32 and with bf16 weights.
TEST(Llama, SequencesDecodedTogetherGetTheBitsOfEachDecodedAlone) {
  models::LlamaConfig c = decoding_config();
  c.window = 12;  // the caches drop rows too
  for (const bool b16 : {false, true}) {
    models::Llama<float> m(c);
    Rng rng(6);
    for_each_param(m, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.2); });
    if (b16) {
      set_compute_precision(m, Precision::bf16);
      freeze_bf16_weights(m);
    }
    const int64_t R = 3, T = 30, V = c.vocab_size;
    std::vector<int64_t> ids(R * T);
    for (auto& i : ids) i = static_cast<int64_t>(rng.below(V));
    std::vector<models::Llama<float>::Cache> together(R, m.make_cache()), alone(R, m.make_cache());
    std::vector<models::Llama<float>::Cache*> ptrs = {&together[0], &together[1], &together[2]};
    models::Llama<float>::DecodeScratch s, s1;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t step[] = {ids[t], ids[T + t], ids[2 * T + t]};
      const std::vector<float> batch = [&] {
        const auto& l = m.forward_cached(step, R, 1, ptrs.data(), s);
        return std::vector<float>(l.data(), l.data() + R * V);
      }();
      for (int64_t b = 0; b < R; ++b) {
        auto* one = &alone[b];
        const auto& l = m.forward_cached(&step[b], 1, 1, &one, s1);
        for (int64_t v = 0; v < V; ++v)
          ASSERT_EQ(batch[b * V + v], l[v]) << (b16 ? "bf16" : "fp32") << " sequence " << b << ", step " << t;
      }
    }
  }
}
