// The Llama-style transformer on CUDA against the same model on the CPU: logits, loss and every parameter
// gradient of a training step, three AdamW steps, KV caches on the device (append, sliding-window drop) and
// cached greedy decoding. Plus the small ops the model path added (fill, strided row copies, rotary position
// fills) against hand-computed values. Skips without a device.
//
// Tolerances: fp32 on both sides with different summation orders (cuBLAS vs Eigen GEMMs, flash vs blockwise
// attention), so results agree to a few ulps of the largest value: 1e-4 relative (max |d| / max |ref|).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "support/cuda_testing.hpp"
#include "support/gradcheck.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/transfer.hpp"
#include "tessera/layers/init.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/train/adamw.hpp"

using namespace tessera;
using tessera::testing::download;
using tessera::testing::rel_err;
using tessera::testing::upload;

namespace {

constexpr double kTol = 1e-4;

models::LlamaConfig tiny_config(int64_t window) {
  models::LlamaConfig c;
  c.vocab_size = 64;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_hidden = 48;
  c.window = window;
  return c;
}

/// A CPU model with random weights (norm gains too) and the same model on the device.
struct Pair {
  models::Llama<float> h;
  models::Llama<float, cuda> d;
  explicit Pair(const models::LlamaConfig& c, uint64_t seed) : h(c), d(c) {
    Rng rng(seed);
    for_each_param(h, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.3); });
    copy_params(d, h);
  }
};

std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
  return ids;
}

/// Every parameter of the device model (values or gradients) against the CPU model's, matched by name.
template <class Get>
void expect_params_close(models::Llama<float>& h, models::Llama<float, cuda>& d, Get get, double tol,
                         const std::string& what) {
  std::map<std::string, std::vector<float>> dev;
  for_each_param(d, [&](const std::string& name, auto& p) {
    const Tensor<float, cuda>& t = get(p);
    dev[name] = download(t.data(), t.numel());
  });
  size_t n = 0;
  for_each_param(h, [&](const std::string& name, auto& p) {
    const Tensor<float>& t = get(p);
    auto it = dev.find(name);
    ASSERT_NE(it, dev.end()) << what << ": no device parameter " << name;
    ASSERT_EQ(static_cast<int64_t>(it->second.size()), t.numel()) << what << ": " << name;
    EXPECT_LE(rel_err(it->second, t.data(), t.numel()), tol) << what << ": " << name;
    ++n;
  });
  EXPECT_EQ(n, dev.size());
  EXPECT_EQ(n, 3u + 2u * 9u);  // embed, final norm, lm_head + per layer 2 norms, 4 attention, 3 mlp
}

int64_t argmax(const float* row, int64_t n) {
  return std::max_element(row, row + n) - row;
}

}  // namespace

// ---- the ops the model path needs -----------------------------------------------------------------------

TEST(CudaLlamaOps, FillCopyRowsAndPositions) {
  TESSERA_NEED_GPU();
  Tensor<float, cuda> y({37});
  ops::fill(cuda{}, y.data(), 1.5f, 37);
  for (float v : download(y.data(), 37)) EXPECT_EQ(v, 1.5f);

  // 3 rows of 4 columns from a source with row stride 6 into a destination with row stride 5.
  std::vector<float> src(18);
  for (size_t i = 0; i < src.size(); ++i) src[i] = float(i);
  std::vector<float> dst_h(15, -1.f);
  Tensor<float, cuda> s = upload(src), dst = upload(dst_h);
  ops::copy_rows(cuda{}, dst.data(), 5, s.data(), 6, 3, 4);
  ops::copy_rows(cpu{}, dst_h.data(), 5, src.data(), 6, 3, 4);
  const std::vector<float> want = {0, 1, 2, 3, -1, 6, 7, 8, 9, -1, 12, 13, 14, 15, -1};
  EXPECT_EQ(dst_h, want);
  EXPECT_EQ(download(dst.data(), 15), want);

  // positions: offset + t per sequence, and the chunked (modulo) variant.
  Tensor<int64_t, cuda> pos({2 * 5});
  std::vector<int64_t> pos_h(10);
  ops::fill_positions(cuda{}, pos.data(), 2, 5, 7);
  ops::fill_positions(cpu{}, pos_h.data(), 2, 5, 7);
  const std::vector<int64_t> want_pos = {7, 8, 9, 10, 11, 7, 8, 9, 10, 11};
  EXPECT_EQ(pos_h, want_pos);
  EXPECT_EQ(download(pos.data(), 10), want_pos);
  ops::fill_positions(cuda{}, pos.data(), 2, 5, 2, 4);
  ops::fill_positions(cpu{}, pos_h.data(), 2, 5, 2, 4);
  const std::vector<int64_t> want_mod = {2, 3, 0, 1, 2, 2, 3, 0, 1, 2};
  EXPECT_EQ(pos_h, want_mod);
  EXPECT_EQ(download(pos.data(), 10), want_mod);
  EXPECT_THROW(ops::fill_positions(cuda{}, pos.data(), 2, 5, 0, -1), Error);
}

// ---- KV caches on the device ------------------------------------------------------------------------------

// init_normal draws on the host in parameter order for every backend: a CUDA model gets the CPU model's
// weights bit for bit (matrices), and vectors keep their setup values (RMSNorm gains 1).
TEST(CudaLlamaInit, InitNormalGivesTheCpuWeights) {
  TESSERA_NEED_GPU();
  const auto cfg = tiny_config(0);
  models::Llama<float> cpu_model(cfg);
  models::Llama<float, cuda> gpu_model(cfg);
  Rng r1(7), r2(7);
  init_normal(cpu_model, r1, 0.1);
  init_normal(gpu_model, r2, 0.1);
  std::map<std::string, std::vector<float>> want;
  for_each_param(cpu_model, [&](const std::string& name, auto& p) {
    want[name].assign(p.value.data(), p.value.data() + p.value.numel());
  });
  int64_t checked = 0;
  for_each_param(gpu_model, [&](const std::string& name, auto& p) {
    const auto got = download(p.value.data(), p.value.numel());
    ASSERT_EQ(got, want.at(name)) << name;
    ++checked;
  });
  EXPECT_EQ(checked, static_cast<int64_t>(want.size()));
  EXPECT_EQ(want.at("norm.weight").front(), 1.f);
}

TEST(CudaLlamaCache, AppendAndWindowDropMatchTheCpu) {
  TESSERA_NEED_GPU();
  // Window 10 with single-row appends: the buffer holds 16 rows when the first drop keeps 9 and drops 7, so
  // the device moves the kept rows in two non-overlapping chunks. Then a 13-row append (a prefill).
  constexpr int64_t KW = 3, VW = 2, W = 10;
  KvCache<float> h(KW, VW, W);
  KvCache<float, cuda> d(KW, VW, W);
  Rng rng(4);
  auto step = [&](int64_t n, int64_t stride, bool with_seg) {
    std::vector<float> k(static_cast<size_t>(n * stride)), v(static_cast<size_t>(n * stride));
    for (auto& x : k) x = static_cast<float>(rng.normal());
    for (auto& x : v) x = static_cast<float>(rng.normal());
    std::vector<int64_t> seg(static_cast<size_t>(n));
    for (auto& s : seg) s = static_cast<int64_t>(rng.below(100));
    Tensor<float, cuda> kd = upload(k), vd = upload(v);
    Tensor<int64_t, cuda> sd = upload(seg);
    h.append(k.data(), stride, v.data(), stride, n, with_seg ? seg.data() : nullptr);
    d.append(kd.data(), stride, vd.data(), stride, n, with_seg ? sd.data() : nullptr);
    ASSERT_EQ(d.size(), h.size());
    EXPECT_EQ(download(d.k(), d.size() * KW), std::vector<float>(h.k(), h.k() + h.size() * KW));
    EXPECT_EQ(download(d.v(), d.size() * VW), std::vector<float>(h.v(), h.v() + h.size() * VW));
    EXPECT_EQ(download(d.segments(), d.size()), std::vector<int64_t>(h.segments(), h.segments() + h.size()));
  };
  for (int i = 0; i < 40; ++i) step(1, i % 2 ? 4 : KW, i % 3 == 0);
  EXPECT_LE(d.size(), 2 * W);
  step(13, 5, true);
  // Deep copies, pop_back and keep_last.
  KvCache<float, cuda> copy = d;
  d.clear();
  EXPECT_EQ(copy.size(), h.size());
  EXPECT_EQ(download(copy.k(), copy.size() * KW), std::vector<float>(h.k(), h.k() + h.size() * KW));
  copy.keep_last(4);
  h.keep_last(4);
  copy.pop_back(1);
  h.pop_back(1);
  ASSERT_EQ(copy.size(), 3);
  EXPECT_EQ(download(copy.v(), 3 * VW), std::vector<float>(h.v(), h.v() + 3 * VW));
}

// ---- training step ----------------------------------------------------------------------------------------

class CudaLlama : public ::testing::TestWithParam<int64_t> {};

TEST_P(CudaLlama, TrainStepMatchesTheCpu) {
  TESSERA_NEED_GPU();
  const models::LlamaConfig cfg = tiny_config(GetParam());
  Pair m(cfg, 17);
  const int64_t batch = 2, seq = 24, rows = batch * seq;
  std::vector<int64_t> ids = random_ids(rows, cfg.vocab_size, 3),
                       targets = random_ids(rows, cfg.vocab_size, 5);
  targets[7] = -100;  // an ignored row
  Tensor<int64_t, cuda> ids_d = upload(ids), targets_d = upload(targets);

  train::AdamWConfig ocfg{1e-3, 0.9, 0.95, 1e-8, 0.1};
  train::AdamW<float> opt_h(ocfg);
  train::AdamW<float, cuda> opt_d(ocfg);
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    zero_grads(m.h);
    zero_grads(m.d);
    const Tensor<float>& lh = m.h.forward(ids.data(), batch, seq);
    const Tensor<float, cuda>& ld = m.d.forward(ids_d.data(), batch, seq);
    EXPECT_LE(rel_err(ld, lh), kTol) << "logits";
    const double loss_h = m.h.loss(targets.data()), loss_d = m.d.loss(targets_d.data());
    EXPECT_NEAR(loss_d, loss_h, kTol * std::abs(loss_h));
    m.h.backward(targets.data());
    m.d.backward(targets_d.data());
    expect_params_close(
        m.h, m.d, [](auto& p) -> const auto& { return p.grad; }, kTol, "gradient");
    opt_h.step(m.h);
    opt_d.step(m.d);
    expect_params_close(
        m.h, m.d, [](auto& p) -> const auto& { return p.value; }, kTol, "weights after AdamW");
  }
}

// ---- cached decoding
// ---------------------------------------------------------------------------------------

TEST_P(CudaLlama, CachedGreedyDecodingMatchesTheCpuAndTheFullForward) {
  TESSERA_NEED_GPU();
  const models::LlamaConfig cfg = tiny_config(GetParam());
  Pair m(cfg, 23);
  const int64_t batch = 2, prompt = 6, total = 24, V = cfg.vocab_size;
  using HL = models::Llama<float>;
  using DL = models::Llama<float, cuda>;
  std::vector<HL::Cache> hc = {m.h.make_cache(), m.h.make_cache()};
  std::vector<DL::Cache> dc = {m.d.make_cache(), m.d.make_cache()};
  std::vector<HL::Cache*> hp = {&hc[0], &hc[1]};
  std::vector<DL::Cache*> dp = {&dc[0], &dc[1]};
  HL::DecodeScratch hs;
  DL::DecodeScratch ds;

  // seqs[b]: sequence b's tokens; the prompt in one batched call (more rows than decode_attention takes).
  std::vector<std::vector<int64_t>> seqs(batch);
  const std::vector<int64_t> p = random_ids(batch * prompt, V, 9);
  for (int64_t b = 0; b < batch; ++b) seqs[b].assign(p.begin() + b * prompt, p.begin() + (b + 1) * prompt);
  std::vector<std::vector<float>> cached(batch);  // each position's logits from the device's cached decode
  std::vector<int64_t> in = p;
  int64_t n = prompt;
  while (true) {
    SCOPED_TRACE("position " + std::to_string(seqs[0].size()));
    Tensor<int64_t, cuda> in_d = upload(in);
    const Tensor<float>& lh = m.h.forward_cached(in.data(), batch, n, hp.data(), hs);
    const Tensor<float, cuda>& ld = m.d.forward_cached(in_d.data(), batch, n, dp.data(), ds);
    ASSERT_EQ(ld.shape(), lh.shape());
    const std::vector<float> l = download(ld.data(), ld.numel());
    EXPECT_LE(rel_err(l, lh.data(), lh.numel()), kTol) << "cached logits, device vs CPU";
    for (int64_t b = 0; b < batch; ++b)
      cached[b].insert(cached[b].end(), l.begin() + b * n * V, l.begin() + (b + 1) * n * V);
    if (static_cast<int64_t>(seqs[0].size()) == total) break;
    // Greedy: both continue with the CPU's choice; the device's must agree unless the top two nearly tie.
    in.resize(batch);
    for (int64_t b = 0; b < batch; ++b) {
      const float* row_h = lh.data() + ((b + 1) * n - 1) * V;
      const int64_t th = argmax(row_h, V), td = argmax(l.data() + ((b + 1) * n - 1) * V, V);
      if (td != th) {
        EXPECT_NEAR(row_h[td], row_h[th], 1e-4) << "greedy choice of sequence " << b;
      }
      in[b] = th;
      seqs[b].push_back(th);
    }
    n = 1;
  }
  EXPECT_EQ(dc[0].next_pos, total);
  if (cfg.window > 0) {
    EXPECT_LE(dc[0].size(), 2 * cfg.window);  // the device caches dropped old rows
  }

  // The full forward over the decoded sequences equals the cached logits, row for row.
  std::vector<int64_t> all;
  for (const auto& s : seqs) all.insert(all.end(), s.begin(), s.end());
  Tensor<int64_t, cuda> all_d = upload(all);
  const Tensor<float, cuda>& full = m.d.forward(all_d.data(), batch, total);
  const std::vector<float> f = download(full.data(), full.numel());
  for (int64_t b = 0; b < batch; ++b)
    EXPECT_LE(rel_err(cached[b], f.data() + b * total * V, total * V), kTol) << "sequence " << b;
}

INSTANTIATE_TEST_SUITE_P(Windows, CudaLlama, ::testing::Values(int64_t{0}, int64_t{5}), [](const auto& info) {
  return info.param ? "Window" + std::to_string(info.param) : "Full";
});
