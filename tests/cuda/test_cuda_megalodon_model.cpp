// The whole Megalodon model on CUDA (models::Megalodon<float, cuda>) against the same model on the CPU and
// against the official code's outputs (fixture tests/fixtures/megalodon-tiny, written by
// tools/reference/megalodon_reference.py):
//   * a training step: logits, loss and EVERY parameter gradient, then a second segment continuing the
//   carried
//     TimestepNorm / CEMA state (and the carried state itself);
//   * streaming decoding in pieces (32, 5, 1, 1, 1 tokens: whole chunks, a cached piece, single tokens)
//     against the fixture's stream.logits, the CPU stream and the one-pass GPU forward, with constant state
//     size; and batch-2 streaming in pieces that cross chunk boundaries;
//   * the options the fixture does not use (rescale_nffn, share_emb, scale_emb, no swiglu) on random weights.
// CUDA inputs are device memory: token ids and targets are device int64 arrays.
//
// Tolerance: max |gpu - ref| / max |ref| <= 1e-4 (fp32; see test_cuda_megalodon.cpp for why the CEMA,
// TimestepNorm and attention kernels agree with the CPU only to rounding carried through recurrences and
// exp()). Against the official outputs the GPU carries both its own and the CPU port's rounding: the same
// 1e-4 bound is used, as in the CPU parity test. Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "support/cuda_testing.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/models/megalodon/megalodon.hpp"

using namespace tessera;
using tessera::testing::download;
using tessera::testing::rel_err;
using tessera::testing::upload;
using namespace tessera::models;

namespace {

/// The fixture folder: $TESSERA_TEST_FIXTURES when set (a binary run from another checkout), else the
/// CMake definition, else (tools/cuda-emu builds outside CMake) the fixtures beside this file.
std::string fixtures() {
  if (const char* e = std::getenv("TESSERA_TEST_FIXTURES")) return e;
#ifdef TESSERA_TEST_FIXTURES
  return TESSERA_TEST_FIXTURES;
#else
  const std::string f = __FILE__;
  return f.substr(0, f.rfind('/')) + "/../fixtures";
#endif
}
const std::string kDir = fixtures() + "/megalodon-tiny";
constexpr double kTol = 1e-4;

const io::SafeTensorsFile& cases() {
  static const io::SafeTensorsFile f(kDir + "/cases.safetensors");
  return f;
}

class CudaMegalodonModel : public tessera::testing::CudaTest {};

/// The CPU model's weights into the CUDA model, matched by reflected name (both walks must agree).
void copy_params(Megalodon<float>& h, Megalodon<float, cuda>& d) {
  std::map<std::string, Param<float>*> src;
  for_each_param(h, [&](const std::string& name, auto& p) { src[name] = &p; });
  int64_t n = 0;
  for_each_param(d, [&](const std::string& name, auto& p) {
    ASSERT_TRUE(src.count(name)) << "the CPU model has no parameter " << name;
    const Param<float>& s = *src[name];
    ASSERT_EQ(s.value.shape(), p.value.shape()) << name;
    cuda_mem::to_device(p.value.data(), s.value.data(), static_cast<size_t>(s.value.numel()) * sizeof(float));
    ++n;
  });
  ASSERT_EQ(n, static_cast<int64_t>(src.size())) << "the CUDA model lacks parameters of the CPU model";
}

/// Every parameter gradient of the GPU model against the CPU model's; returns the worst relative error.
double compare_grads(Megalodon<float>& h, Megalodon<float, cuda>& d, const std::string& what) {
  std::map<std::string, const Tensor<float>*> ref;
  for_each_param(h, [&](const std::string& name, auto& p) { ref[name] = &p.grad; });
  double worst = 0;
  std::string worst_name;
  for_each_param(d, [&](const std::string& name, auto& p) {
    const double e = rel_err(download(p.grad), *ref.at(name));
    EXPECT_LE(e, kTol) << what << ": gradient of " << name;
    if (!(e <= worst)) worst = e, worst_name = name;
  });
  std::printf("%s: %zu parameter gradients, worst rel err %.3g (%s)\n", what.c_str(), ref.size(), worst,
              worst_name.c_str());
  return worst;
}

/// The carried state of every layer (TimestepNorm count/mean/var, CEMA hx) and of the final norm.
void compare_state(const MegalodonState<float>& h, const MegalodonState<float, cuda>& d,
                   const std::string& what) {
  ASSERT_EQ(h.layers.size(), d.layers.size());
  EXPECT_EQ(h.pos, d.pos) << what;
  const auto tsn = [&](const TimestepNormState<float>& a, const TimestepNormState<float, cuda>& b,
                       const std::string& w) {
    const auto cnt = download(b.count);
    ASSERT_EQ(static_cast<int64_t>(cnt.size()), a.count.numel()) << w;
    for (int64_t i = 0; i < a.count.numel(); ++i) EXPECT_EQ(cnt[i], a.count[i]) << w << " count[" << i << "]";
    EXPECT_LE(rel_err(download(b.mean), a.mean), kTol) << w << " mean";
    EXPECT_LE(rel_err(download(b.var), a.var), kTol) << w << " var";
  };
  for (size_t i = 0; i < h.layers.size(); ++i) {
    const std::string w = what + " layer " + std::to_string(i);
    tsn(h.layers[i].tsn, d.layers[i].tsn, w + " timenorm");
    EXPECT_LE(rel_err(download(d.layers[i].hx), h.layers[i].hx), kTol) << w << " CEMA state";
  }
  tsn(h.final_norm, d.final_norm, what + " final_norm");
}

/// Ids [B, L] -> the rows [b, first, first + n) of each sequence, row-major.
std::vector<int64_t> piece(const std::vector<int64_t>& ids, int64_t B, int64_t L, int64_t first, int64_t n) {
  std::vector<int64_t> out;
  for (int64_t b = 0; b < B; ++b)
    out.insert(out.end(), ids.begin() + b * L + first, ids.begin() + b * L + first + n);
  return out;
}

}  // namespace

TEST_F(CudaMegalodonModel, TrainingStepsWithCarriedStateMatchTheCpuAndTheOfficialCode) {
  auto cpu_m = load_megalodon<float>(kDir);
  Megalodon<float, cuda> gpu_m(cpu_m->config);
  copy_params(*cpu_m, gpu_m);
  const auto tokens = cases().read<int64_t>("tokens");
  const auto targets = cases().read<int64_t>("targets");
  const int64_t Bt = tokens.size(0), L = tokens.size(1), V = cpu_m->vocab();
  const auto d_tokens = upload(tokens.data(), tokens.numel());
  const auto d_targets = upload(targets.data(), targets.numel());
  allocate_grads(*cpu_m);
  allocate_grads(gpu_m);
  typename Megalodon<float>::State cpu_state;
  typename Megalodon<float, cuda>::State gpu_state;

  // Segment 1 from a fresh state: the official code's stateless forward.
  zero_grads(*cpu_m);
  zero_grads(gpu_m);
  const auto& cl = cpu_m->forward(tokens.data(), Bt, L, &cpu_state);
  const auto gl = download(gpu_m.forward(d_tokens.data(), Bt, L, &gpu_state));
  ASSERT_EQ(static_cast<int64_t>(gl.size()), Bt * L * V);
  const double e_cpu = rel_err(gl, cl), e_ref = rel_err(gl, cases().read<float>("logits"));
  const double loss_c = cpu_m->loss(targets.data()), loss_g = gpu_m.loss(d_targets.data());
  const double loss_ref = cases().read<float>("loss")[0];
  std::printf(
      "segment 1: logits rel err %.3g vs cpu, %.3g vs official | loss %.7f gpu, %.7f cpu, %.7f official\n",
      e_cpu, e_ref, loss_g, loss_c, loss_ref);
  EXPECT_LE(e_cpu, kTol);
  EXPECT_LE(e_ref, kTol);
  EXPECT_NEAR(loss_g, loss_c, kTol * std::abs(loss_c));
  EXPECT_NEAR(loss_g, loss_ref, kTol * std::abs(loss_ref));
  cpu_m->backward(targets.data());
  gpu_m.backward(d_targets.data());
  compare_grads(*cpu_m, gpu_m, "segment 1 (vs cpu)");
  double worst_ref = 0;
  for_each_param(gpu_m, [&](const std::string& name, auto& p) {
    const auto ref = cases().read<float>("grad." + name);
    const double e = rel_err(download(p.grad), ref);
    EXPECT_LE(e, kTol) << "gradient of " << name << " vs official";
    worst_ref = std::max(worst_ref, e);
  });
  std::printf("segment 1: worst parameter gradient rel err vs official %.3g\n", worst_ref);
  compare_state(cpu_state, gpu_state, "after segment 1");

  // Segment 2 continues the carried state with other ids (each sequence reversed) and fresh gradients.
  std::vector<int64_t> ids2(tokens.data(), tokens.data() + tokens.numel());
  for (int64_t b = 0; b < Bt; ++b) std::reverse(ids2.begin() + b * L, ids2.begin() + (b + 1) * L);
  const auto d_ids2 = upload(ids2.data(), Bt * L);
  zero_grads(*cpu_m);
  zero_grads(gpu_m);
  const auto& cl2 = cpu_m->forward(ids2.data(), Bt, L, &cpu_state);
  const auto gl2 = download(gpu_m.forward(d_ids2.data(), Bt, L, &gpu_state));
  const double e2 = rel_err(gl2, cl2);
  const double l2c = cpu_m->loss(targets.data()), l2g = gpu_m.loss(d_targets.data());
  std::printf("segment 2 (carried state): logits rel err %.3g | loss %.7f gpu, %.7f cpu\n", e2, l2g, l2c);
  EXPECT_LE(e2, kTol);
  EXPECT_NEAR(l2g, l2c, kTol * std::abs(l2c));
  // The carried state matters: segment 2 differs from the same ids without it.
  Megalodon<float> fresh(cpu_m->config);
  for_each_param(fresh, [&](const std::string& name, auto& p) {
    for_each_param(*cpu_m, [&](const std::string& n2, auto& q) {
      if (n2 == name) p.value = q.value.clone();
    });
  });
  EXPECT_GT(rel_err(gl2, fresh.forward(ids2.data(), Bt, L)), 100 * kTol) << "state had no effect";
  cpu_m->backward(targets.data());
  gpu_m.backward(d_targets.data());
  compare_grads(*cpu_m, gpu_m, "segment 2 (vs cpu)");
  compare_state(cpu_state, gpu_state, "after segment 2");
}

TEST_F(CudaMegalodonModel, StreamingInPiecesMatchesTheOfficialCodeAndTheOnePassForward) {
  auto cpu_m = load_megalodon<float>(kDir);
  Megalodon<float, cuda> gpu_m(cpu_m->config);
  copy_params(*cpu_m, gpu_m);
  const auto tokens = cases().read<int64_t>("stream.tokens");
  const auto ref = cases().read<float>("stream.logits");
  const int64_t L = tokens.size(1), V = cpu_m->vocab();
  const auto d_tokens = upload(tokens.data(), tokens.numel());
  const auto one_pass = download(gpu_m.forward(d_tokens.data(), 1, L));

  auto cpu_state = cpu_m->make_state(1);
  auto gpu_state = gpu_m.make_state(1);
  typename Megalodon<float>::StreamScratch cpu_s;
  typename Megalodon<float, cuda>::StreamScratch gpu_s;
  std::vector<float> got;
  int64_t done = 0, bytes = -1;
  for (const int64_t n : {32, 5, 1, 1, 1}) {
    const auto out = download(gpu_m.forward_stream(d_tokens.data() + done, n, gpu_state, gpu_s));
    const auto& cpu_out = cpu_m->forward_stream(tokens.data() + done, n, cpu_state, cpu_s);
    EXPECT_LE(rel_err(out, cpu_out), kTol) << "piece of " << n << " at " << done << " vs cpu";
    EXPECT_LE(rel_err(out, one_pass.data() + done * V, n * V), kTol)
        << "piece of " << n << " at " << done << " vs the one-pass forward";
    got.insert(got.end(), out.begin(), out.end());
    done += n;
    if (bytes < 0) bytes = gpu_state.bytes();
    EXPECT_EQ(gpu_state.bytes(), bytes) << "state size changed at position " << done;
  }
  ASSERT_EQ(done, L);
  EXPECT_EQ(gpu_state.pos, L);
  EXPECT_EQ(gpu_state.layers[0].count, L % cpu_m->config.chunk_size);
  const double e = rel_err(got, ref);
  std::printf("streaming (32, 5, 1, 1, 1 tokens): logits rel err %.3g vs official\n", e);
  EXPECT_LE(e, kTol);
  compare_state(cpu_state, gpu_state, "after streaming");
}

TEST_F(CudaMegalodonModel, BatchedStreamingAcrossChunkBoundariesEqualsOnePass) {
  auto cpu_m = load_megalodon<float>(kDir);
  Megalodon<float, cuda> gpu_m(cpu_m->config);
  copy_params(*cpu_m, gpu_m);
  const auto t = cases().read<int64_t>("tokens");
  const std::vector<int64_t> ids(t.data(), t.data() + t.numel());
  const int64_t Bt = t.size(0), L = t.size(1), V = cpu_m->vocab();
  const auto d_ids = upload(ids.data(), Bt * L);
  const auto one_pass = download(gpu_m.forward(d_ids.data(), Bt, L));
  auto st = gpu_m.make_state(Bt);
  typename Megalodon<float, cuda>::StreamScratch s;
  int64_t done = 0;
  for (const int64_t n : {3, 5, 1, 1, 8, 13, 1}) {  // chunk 16: the 8 and the 13 cross a boundary
    const auto p = piece(ids, Bt, L, done, n);
    const auto d_p = upload(p.data(), Bt * n);
    const auto out = download(gpu_m.forward_stream(d_p.data(), n, st, s));
    std::vector<float> want;
    for (int64_t b = 0; b < Bt; ++b)
      want.insert(want.end(), one_pass.begin() + (b * L + done) * V,
                  one_pass.begin() + (b * L + done + n) * V);
    EXPECT_LE(rel_err(out, want.data(), Bt * n * V), kTol) << "piece of " << n << " at " << done;
    done += n;
  }
  EXPECT_EQ(done, L);
}

TEST_F(CudaMegalodonModel, RescaledTiedScaledVariantMatchesTheCpu) {
  MegalodonConfig c;
  c.num_layers = 2, c.model_dim = 32, c.z_dim = 16, c.value_dim = 24, c.num_heads = 2, c.ffn_hidden_dim = 40;
  c.cema_ndim = 4, c.chunk_size = 8, c.vocab_size = 48, c.norm_num_groups = 4;
  c.swiglu = false, c.rescale_nffn = true, c.share_emb = true, c.scale_emb = true;
  Megalodon<float> cpu_m(c);
  Rng rng(11);
  cpu_m.init(rng);
  // Perturb the zero-initialised offsets and biases so every gradient path carries signal.
  for_each_param(cpu_m, [&](const std::string&, auto& p) {
    for (auto& v : p.value) v += static_cast<float>(0.05 * rng.normal());
  });
  Megalodon<float, cuda> gpu_m(c);
  {  // the official initialisation draws the same numbers on both backends (the GPU's are uploaded)
    Rng r1(3), r2(3);
    Megalodon<float> a(c);
    a.init(r1);
    gpu_m.init(r2);
    for_each_param(gpu_m, [&](const std::string& name, auto& p) {
      for_each_param(a, [&](const std::string& n2, auto& q) {
        if (n2 == name) {
          EXPECT_EQ(download(p.value), std::vector<float>(q.value.begin(), q.value.end())) << name;
        }
      });
    });
  }
  copy_params(cpu_m, gpu_m);
  const int64_t Bt = 2, L = 16;
  std::vector<int64_t> ids(Bt * L), tgt(Bt * L);
  for (auto& v : ids) v = static_cast<int64_t>(rng.below(48));
  for (auto& v : tgt) v = static_cast<int64_t>(rng.below(48));
  tgt[3] = -100;  // ignored
  const auto d_ids = upload(ids.data(), Bt * L), d_tgt = upload(tgt.data(), Bt * L);
  allocate_grads(cpu_m);
  allocate_grads(gpu_m);
  typename Megalodon<float>::State cs;
  typename Megalodon<float, cuda>::State gs;
  for (int seg = 0; seg < 2; ++seg) {
    zero_grads(cpu_m);
    zero_grads(gpu_m);
    const auto& cl = cpu_m.forward(ids.data(), Bt, L, &cs);
    const double e = rel_err(download(gpu_m.forward(d_ids.data(), Bt, L, &gs)), cl);
    EXPECT_LE(e, kTol) << "segment " << seg << " logits";
    const double lc = cpu_m.loss(tgt.data()), lg = gpu_m.loss(d_tgt.data());
    EXPECT_NEAR(lg, lc, kTol * std::abs(lc)) << "segment " << seg;
    cpu_m.backward(tgt.data(), 0.5);
    gpu_m.backward(d_tgt.data(), 0.5);
    compare_grads(cpu_m, gpu_m, "variant segment " + std::to_string(seg));
  }
  compare_state(cs, gs, "variant");
}
