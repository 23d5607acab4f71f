// Megalodon model: finite-difference gradients through the whole model (double), streaming = one pass,
// carried training state = one pass, constant decoding memory, checkpoints with the official names.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"
#include "support/temp_dir.hpp"
#include "tessera/models/megalodon/megalodon.hpp"

using namespace tessera;
using namespace tessera::models;
using tessera::testing::expect_grad_close;

namespace {

MegalodonConfig tiny_config(bool swiglu = true) {
  MegalodonConfig c;
  c.num_layers = 2;
  c.model_dim = 8;
  c.z_dim = 4;
  c.value_dim = 8;
  c.num_heads = 2;
  c.ffn_hidden_dim = 12;
  c.cema_ndim = 3;
  c.chunk_size = 4;
  c.norm_num_groups = 2;
  c.vocab_size = 11;
  c.swiglu = swiglu;
  return c;
}

/// Official init, then every tensor the init leaves at zero gets small random values (else whole classes of
/// bugs — a wrong sign on a norm offset, a bias never used — stay invisible).
template <class T>
void init_perturbed(Megalodon<T>& m, uint64_t seed) {
  Rng rng(seed);
  m.init(rng);
  for_each_param(m, [&](const std::string& name, auto& p) {
    const bool zero_init = p.value.rank() == 1 || name.ends_with("mega.gamma") ||
                           name.ends_with("mega.beta") || name.ends_with("cema.gamma");
    if (!zero_init) return;
    for (auto& v : p.value) v += static_cast<T>(0.1 * rng.normal());
  });
}

std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
  return ids;
}

double max_abs(const float* a, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(a[i])));
  return m;
}

void check_model_grads(const MegalodonConfig& c, uint64_t seed) {
  Megalodon<double> m(c);
  init_perturbed(m, seed);
  const int64_t Bt = 2, L = 8;  // two chunks of 4
  const auto ids = random_ids(Bt * L, c.vocab_size, seed + 1);
  auto targets = random_ids(Bt * L, c.out_size(), seed + 2);
  targets[3] = -100;
  zero_grads(m);
  m.forward(ids.data(), Bt, L);
  m.backward(targets.data());
  const auto loss = [&] {
    m.forward(ids.data(), Bt, L);
    return m.loss(targets.data());
  };
  int checked = 0;
  for_each_param(m, [&](const std::string& name, auto& p) {
    std::vector<double> g(p.grad.begin(), p.grad.end());
    expect_grad_close(name, p.value.data(), g.data(), p.value.numel(), loss, 1e-6, 1e-5, 1e-8);
    ++checked;
  });
  EXPECT_GT(checked, 30);
}

}  // namespace

TEST(MegalodonGrad, WholeModelSwiGlu) {
  check_model_grads(tiny_config(true), 1);
}

TEST(MegalodonGrad, WholeModelSiluRescaledScaledTiedEmbedding) {
  MegalodonConfig c = tiny_config(false);
  c.rescale_nffn = true;
  c.scale_emb = true;
  c.share_emb = true;
  check_model_grads(c, 2);
}

TEST(Megalodon, ParameterNamesAreTheOfficialOnes) {
  Megalodon<float> m(tiny_config());
  std::vector<std::string> names;
  for_each_param(m, [&](const std::string& n, auto&) { names.push_back(n); });
  for (const char* want : {"embed.weight",
                           "layers.0.mega.timenorm.weight",
                           "layers.0.mega.timenorm.bias",
                           "layers.0.mega.cema.alpha",
                           "layers.0.mega.cema.delta",
                           "layers.0.mega.cema.theta",
                           "layers.0.mega.cema.gamma",
                           "layers.0.mega.cema.omega",
                           "layers.0.mega.rmsnorm.weight",
                           "layers.0.mega.wv.weight",
                           "layers.0.mega.wv.bias",
                           "layers.0.mega.wz.weight",
                           "layers.0.mega.wr.bias",
                           "layers.0.mega.wh1.bias",
                           "layers.0.mega.wh2.weight",
                           "layers.0.mega.gamma",
                           "layers.0.mega.beta",
                           "layers.1.nffn.norm.weight",
                           "layers.1.nffn.norm.bias",
                           "layers.1.nffn.fc1.weight",
                           "layers.1.nffn.fc2.weight",
                           "layers.1.nffn.fc3.weight",
                           "output.final_norm.weight",
                           "output.output.weight"})
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  EXPECT_EQ(std::find(names.begin(), names.end(), "layers.0.mega.wh2.bias"), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), "layers.0.nffn.fc1.bias"), names.end());
}

TEST(Megalodon, StreamingInPiecesEqualsOnePass) {
  MegalodonConfig c = tiny_config();
  c.chunk_size = 8;
  Megalodon<float> m(c);
  init_perturbed(m, 5);
  const int64_t Bt = 2, L = 40;
  const auto ids = random_ids(Bt * L, c.vocab_size, 6);
  const Tensor<float> full = m.forward(ids.data(), Bt, L).clone();
  const double scale = max_abs(full.data(), full.numel());

  auto state = m.make_state(Bt);
  typename Megalodon<float>::StreamScratch scratch;
  int64_t done = 0;
  for (const int64_t piece : {3, 5, 1, 1, 8, 13, 9}) {
    std::vector<int64_t> chunk_ids;
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t t = 0; t < piece; ++t) chunk_ids.push_back(ids[b * L + done + t]);
    const auto& out = m.forward_stream(chunk_ids.data(), piece, state, scratch);
    double worst = 0;
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t t = 0; t < piece; ++t)
        for (int64_t v = 0; v < c.vocab_size; ++v)
          worst = std::max(worst, std::abs(double(out[(b * piece + t) * c.vocab_size + v]) -
                                           double(full[(b * L + done + t) * c.vocab_size + v])));
    EXPECT_LE(worst, 2e-5 * scale) << "piece of " << piece << " at position " << done;
    done += piece;
  }
  EXPECT_EQ(state.pos, L);
}

TEST(Megalodon, CarriedTrainingStateEqualsOnePass) {
  MegalodonConfig c = tiny_config();
  c.chunk_size = 4;
  Megalodon<float> m(c);
  init_perturbed(m, 7);
  const int64_t Bt = 2, L = 16, half = 8;
  const auto ids = random_ids(Bt * L, c.vocab_size, 8);
  const Tensor<float> full = m.forward(ids.data(), Bt, L).clone();
  const double scale = max_abs(full.data(), full.numel());
  typename Megalodon<float>::State state;
  for (int seg = 0; seg < 2; ++seg) {
    std::vector<int64_t> part;
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t t = 0; t < half; ++t) part.push_back(ids[b * L + seg * half + t]);
    const auto& out = m.forward(part.data(), Bt, half, &state);
    double worst = 0;
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t i = 0; i < half * c.vocab_size; ++i)
        worst = std::max(worst, std::abs(double(out[b * half * c.vocab_size + i]) -
                                         double(full[(b * L + seg * half) * c.vocab_size + i])));
    EXPECT_LE(worst, 2e-5 * scale) << "segment " << seg;
  }
  // A state that ends inside a chunk cannot continue a training segment.
  typename Megalodon<float>::State odd;
  m.forward(ids.data(), 1, 3, &odd);
  EXPECT_THROW(m.forward(ids.data(), 1, 4, &odd), Error);
}

TEST(Megalodon, DecodingStateHasConstantSize) {
  MegalodonConfig c = tiny_config();
  c.chunk_size = 16;
  Megalodon<float> m(c);
  init_perturbed(m, 9);
  auto state = m.make_state(1);
  typename Megalodon<float>::StreamScratch scratch;
  int64_t id = 1, bytes_after_first = 0;
  for (int step = 0; step < 300; ++step) {
    const auto& logits = m.forward_stream(&id, 1, state, scratch);
    id = static_cast<int64_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (step == 0) bytes_after_first = state.bytes();
    ASSERT_EQ(state.bytes(), bytes_after_first) << "at step " << step;
  }
  EXPECT_EQ(state.pos, 300);
  EXPECT_EQ(state.layers[0].count, 300 % 16);
}

TEST(MegalodonCheckpoint, RoundTripWithOfficialNamesAndBuffers) {
  const tessera::testing::TempDir tmp("megalodon-ckpt");
  const auto& dir = tmp.path;
  Megalodon<float> m(tiny_config());
  init_perturbed(m, 11);
  save_megalodon(m, dir.string());
  const io::SafeTensorsFile f((dir / "model.safetensors").string());
  EXPECT_TRUE(f.contains("rope.freqs"));
  EXPECT_TRUE(f.contains("layers.1.mega.timenorm.prior_count"));
  EXPECT_TRUE(f.contains("output.final_norm.prior_logv"));
  const auto cfg = io::read_json_file((dir / "config.json").string());
  EXPECT_EQ(cfg.at("model_dim"), 8);
  EXPECT_EQ(cfg.at("cema_ndim"), 3);
  EXPECT_TRUE(cfg.contains("norm_num_groups"));

  auto back = load_megalodon<float>(dir.string());
  const auto ids = random_ids(12, 11, 12);
  const Tensor<float> a = m.forward(ids.data(), 1, 12).clone();
  const auto& b = back->forward(ids.data(), 1, 12);
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a[i], b[i]);
}

TEST(MegalodonCheckpoint, BadInputsGiveClearErrors) {
  const tessera::testing::TempDir tmp("megalodon-bad");
  const auto& dir = tmp.path;
  Megalodon<float> m(tiny_config());
  save_megalodon(m, dir.string());
  const auto expect_error = [&](const std::string& needle) {
    try {
      load_megalodon<float>(dir.string());
      ADD_FAILURE() << "no error, expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // A config without a required field.
  auto cfg = io::read_json_file((dir / "config.json").string());
  cfg.erase("z_dim");
  io::write_text_atomic((dir / "config.json").string(), cfg.dump());
  expect_error("z_dim");
  // Dropout is refused by name.
  cfg = m.config.to_json();
  cfg["dropout"] = 0.1;
  io::write_text_atomic((dir / "config.json").string(), cfg.dump());
  expect_error("dropout");
  // A shape mismatch is reported with the key.
  cfg = m.config.to_json();
  cfg["ffn_hidden_dim"] = 16;
  io::write_text_atomic((dir / "config.json").string(), cfg.dump());
  expect_error("layers.0.nffn.fc1.weight");
  // A learnt TimestepNorm prior is refused.
  io::write_text_atomic((dir / "config.json").string(), m.config.to_json().dump());
  {
    io::SafeTensorsWriter w;
    for_each_param(m, [&](const std::string& name, auto& p) { w.add_borrowed(name, p.value.view()); });
    const int64_t two = 2;
    w.add_raw("layers.0.mega.timenorm.prior_count", DType::I64, Shape{}, &two);
    w.write((dir / "model.safetensors").string());
  }
  expect_error("prior_count");
  // A truncated weights file.
  save_megalodon(m, dir.string());
  const auto path = (dir / "model.safetensors").string();
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  expect_error("model.safetensors");
}

TEST(Megalodon, IsCausal) {
  // Changing token t0 must leave every logit row before t0 unchanged, in every chunk position.
  MegalodonConfig c = tiny_config();
  c.chunk_size = 8;
  Megalodon<float> m(c);
  init_perturbed(m, 13);
  const int64_t L = 24;
  auto ids = random_ids(L, c.vocab_size, 14);
  const Tensor<float> base = m.forward(ids.data(), 1, L).clone();
  for (const int64_t t0 : {1, 7, 8, 13, 23}) {
    auto changed = ids;
    changed[t0] = (changed[t0] + 1) % c.vocab_size;
    const auto& out = m.forward(changed.data(), 1, L);
    for (int64_t i = 0; i < t0 * c.vocab_size; ++i) ASSERT_EQ(out[i], base[i]) << "t0 " << t0 << " row " << i / c.vocab_size;
    double diff = 0;
    for (int64_t i = t0 * c.vocab_size; i < (t0 + 1) * c.vocab_size; ++i) diff += std::abs(out[i] - base[i]);
    EXPECT_GT(diff, 0.0) << "token " << t0 << " does not affect its own row";
  }
}
