// Composition check: a BLT whose global (patch-level) model is a Megalodon stack, built from library
// templates with no change to library code. The whole hybrid is the 40 lines between the markers; the test
// trains it on gradients checked by finite differences.
#include <gtest/gtest.h>

#include "support/gradcheck.hpp"
#include "tessera/models/blt/blt.hpp"
#include "tessera/models/megalodon/megalodon.hpp"

using namespace tessera;

// ---- the hybrid: BLT local encoder/decoder + Megalodon over patches -------------------------------------
template <class T, class B>
struct MegalodonGlobal {
  struct Saved {
    std::vector<typename models::MegaBlock<T, B>::Saved> blocks;
    std::vector<Tensor<T, B>> h;
  };
  std::vector<models::MegaBlock<T, B>> layers;
  Tensor<T, B> g_[2];

  void setup(const blt::BltConfig& c) {  // global width = k * d_enc (no projection), heads from the config
    models::MegalodonConfig m;
    m.num_layers = c.global.n_layers, m.model_dim = c.global.dim, m.num_heads = c.global.n_heads;
    m.z_dim = c.global.dim / 2, m.value_dim = c.global.dim, m.ffn_hidden_dim = c.global.ffn_hidden;
    m.cema_ndim = 4, m.chunk_size = 8, m.norm_num_groups = 4, m.vocab_size = 1, m.swiglu = true;
    layers.resize(static_cast<size_t>(m.num_layers));
    for (int64_t i = 0; i < m.num_layers; ++i) layers[i].setup(m, i);
  }
  template <class F>
  void for_each_child(F&& f) {
    for (size_t i = 0; i < layers.size(); ++i) f("layers." + std::to_string(i), layers[i]);
  }
  void forward(const SeqContext& patches, TensorView<const T> x, Tensor<T, B>& y, Saved& s) {
    s.blocks.resize(layers.size());
    s.h.resize(layers.size());
    TensorView<const T> cur = x;
    for (size_t i = 0; i < layers.size(); ++i) {
      layers[i].forward(patches, cur, i + 1 == layers.size() ? y : s.h[i], s.blocks[i]);
      cur = i + 1 == layers.size() ? y : s.h[i];
    }
  }
  void backward(const SeqContext& patches, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    TensorView<const T> cur = dy;
    for (size_t i = layers.size(); i-- > 0;) {
      layers[i].backward(patches, cur, i == 0 ? dx : g_[i % 2], s.blocks[i]);
      cur = i == 0 ? dx : g_[i % 2];
    }
  }
};
template <class T>
using BltMegalodon = blt::BltForCausalLM<T, cpu, MegalodonGlobal>;
// ---- end of the hybrid ------------------------------------------------------------------------------------

namespace {
blt::BltConfig tiny_blt() {
  blt::BltConfig c = blt::BltConfig::read(std::string(TESSERA_TEST_FIXTURES) + "/blt-hf-tiny/config.json");
  c.patch_in_forward = false;  // patches given explicitly below
  c.global.n_layers = 2;
  return c;
}
}  // namespace

TEST(BltMegalodonGlobal, ForwardBackwardMatchFiniteDifferences) {
  const blt::BltConfig c = tiny_blt();
  BltMegalodon<double> lm(c);
  Rng rng(3);
  for_each_param(lm, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.2); });
  int64_t mega_params = 0;
  for_each_param(lm, [&](const std::string& n, auto& p) {
    if (n.starts_with("model.global_transformer.layers.1.mega.cema.")) mega_params += p.value.numel();
  });
  EXPECT_GT(mega_params, 0) << "the global model's Megalodon parameters are part of the reflected names";

  const int64_t T = 24;
  std::vector<int64_t> ids(T), targets(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = 4 + (t * 37) % 250, targets[t] = 4 + (t * 37 + 37) % 250;
  const std::vector<int64_t> lengths = {1, 3, 2, 4, 1,
                                        5, 2, 3, 3};  // 9 patches over 24 bytes (2 chunks of 8)
  allocate_grads(lm);
  zero_grads(lm);
  lm.forward(ids.data(), 1, T, lengths.data(), static_cast<int64_t>(lengths.size()));
  lm.backward(targets.data());
  const auto loss = [&] {
    lm.forward(ids.data(), 1, T, lengths.data(), static_cast<int64_t>(lengths.size()));
    return lm.loss(targets.data());
  };
  // Finite differences on the Megalodon parameters of the global model and on the encoder's byte embedding
  // (atol 1e-8: the loss is rounded to ~1e-14, divided by 2 eps = 2e-6).
  int checked = 0;
  for_each_param(lm, [&](const std::string& n, auto& p) {
    if (!n.starts_with("model.global_transformer.layers.0.mega.cema.") &&
        !n.starts_with("model.global_transformer.layers.1.nffn.fc2") &&
        n != "model.local_encoder.embed_tokens.weight")
      return;
    std::vector<double> g(p.grad.begin(), p.grad.end());
    const int64_t n_check = std::min<int64_t>(p.value.numel(), 64);
    tessera::testing::expect_grad_close(n, p.value.data(), g.data(), n_check, loss, 1e-6, 1e-5, 1e-8);
    ++checked;
  });
  EXPECT_EQ(checked, 7);  // 5 CEMA tensors, fc2, the byte embedding
}
