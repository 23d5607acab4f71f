// BLT in bf16 mixed precision on CUDA (layers/precision.hpp) against the fp32 CPU model on the transformers
// fixture weights: one training step (logits, loss, every gradient) with the fixture's patches. bf16 covers
// every Linear (entropy model, local encoder/decoder, cross-attention projections, global transformer,
// lm_head) and, since this config has no document cuts (SeqContext::single_document), the self-attention of
// the local and global transformers (mask::PositionOnly); the patch cross-attention stays fp32. Skips without
// a device.
//
// Tolerances: as in test_cuda_mixed_precision.cpp, every GEMM operand is rounded to bf16 (2^-9 relative) and
// the attention kernel rounds P and dS; errors compound through the local decoder, the global stack, the
// cross-attentions and the local encoder, so they grow towards the input, and a gradient that is a small
// difference of large terms shows them most. Measured with emulated tensor cores (fp32 accumulation): logits
// 9.5e-3 of their largest entry, loss 1.1e-4 relative, gradients median 1.35e-2 and at most 1.33e-1 (the
// encoder's first FFN, deepest in the chain). Bounds: logits 2e-2, loss 5e-3, median gradient 3e-2, every
// gradient 2.5e-1 — any real error (a stale weight copy, a missing gradient term, a transposed operand)
// is O(1) and moves the median.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

// clang-format off (BLT first: it declares the CUDA mask overloads before any layer header, see blt_cuda.hpp)
#include "tessera/models/blt/blt.hpp"
#include "tessera/models/blt/generate.hpp"
// clang-format on

#include "support/cuda_testing.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/transfer.hpp"
#include "tessera/io/model_io.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/layers/precision.hpp"

using namespace tessera;
using tessera::testing::download;
using tessera::testing::rel_err;
using tessera::testing::upload;
using tessera::blt::BltConfig;
using tessera::blt::BltForCausalLM;

namespace {

#ifdef TESSERA_TEST_FIXTURES
const std::string kDir = std::string(TESSERA_TEST_FIXTURES) + "/blt-hf-tiny";
#else  // tools/cuda-emu builds the test outside CMake: the fixtures beside this source file
const std::string kDir =
    (std::filesystem::path(__FILE__).parent_path().parent_path() / "fixtures" / "blt-hf-tiny").string();
#endif

std::vector<int64_t> case_vec(int i, const std::string& name) {
  static const io::SafeTensorsFile f(kDir + "/cases.safetensors");
  Tensor<int64_t> t = f.read<int64_t>("case" + std::to_string(i) + "." + name);
  return std::vector<int64_t>(t.begin(), t.end());
}

}  // namespace

TEST(CudaBltBf16, TrainStepTracksTheFp32Model) {
  TESSERA_NEED_GPU();
  const BltConfig c = BltConfig::read(kDir + "/config.json");
  BltForCausalLM<float> h(c);
  BltForCausalLM<float, cuda> d(c);
  io::load_model(h, kDir + "/model.safetensors");
  copy_params(d, h);
  set_compute_precision(d, Precision::bf16);
  h.model.walk_patcher = d.model.walk_patcher = false;  // the frozen entropy model gets no gradient
  allocate_grads(h);
  allocate_grads(d);
  // The fixture's patches (a bf16 entropy model may cut elsewhere; patching in bf16 is not what is compared).
  const std::vector<int64_t> ids = case_vec(0, "ids"), pl = case_vec(0, "patch_lengths");
  const int64_t T = static_cast<int64_t>(ids.size()), P = static_cast<int64_t>(pl.size());
  std::vector<int64_t> targets(ids.size(), -100);
  for (int64_t i = 0; i + 1 < T; ++i) targets[i] = ids[i + 1];
  const auto ids_d = upload(ids), targets_d = upload(targets);

  const Tensor<float>& lh = h.forward(ids.data(), 1, T, pl.data(), P);
  const Tensor<float, cuda>& ld = d.forward(ids_d.data(), 1, T, pl.data(), P);
  const double le = rel_err(download(ld.data(), ld.numel()), lh.data(), lh.numel());
  EXPECT_LE(le, 2e-2) << "logits";
  EXPECT_GT(le, 1e-6) << "logits identical to fp32: the bf16 path was not taken";
  const double loss_h = h.loss(targets.data()), loss_d = d.loss(targets_d.data());
  EXPECT_NEAR(loss_d, loss_h, 5e-3 * loss_h);
  h.backward(targets.data());
  d.backward(targets_d.data());
  double worst = 0;
  size_t n = 0;
  std::vector<double> errs;
  std::string worst_name;
  for (const auto& g : tessera::testing::gradient_errors(h, d)) {
    if (g.ref_amax == 0) continue;  // the entropy model (frozen)
    EXPECT_LE(g.err, 2.5e-1) << g.name;
    errs.push_back(g.err);
    if (g.err > worst) worst = g.err, worst_name = g.name;
    ++n;
  }
  EXPECT_GE(n, 40u);
  std::nth_element(errs.begin(), errs.begin() + errs.size() / 2, errs.end());
  const double median = errs[errs.size() / 2];
  EXPECT_LE(median, 3e-2) << "median gradient error";
  std::cout << "[cuda-blt-bf16] logits rel err " << le << ", loss " << loss_d << " vs " << loss_h << ", " << n
            << " gradients, median " << median << ", worst " << worst << " (" << worst_name << ")\n";
}

// Cached generation with frozen bf16 weights (freeze_bf16_weights: the serving setup, and the GPU
// benchmark's) decodes through the small products (ops::linear_small_bf16 / swiglu_small_bf16: q/k/v, SwiGLU,
// every Linear at <= 8 rows) while the prompt's prefill runs the cast + cuBLAS route. The same model unfrozen
// decodes through cast + cuBLAS at every step: the same bf16 operands, so the logits agree up to fp32
// summation order (and an occasional operand that rounds the other way at the next layer's cast) and the
// greedy bytes and patches are the same. Two prompts (20 and 13 bytes): decoding steps of 1 and 2 rows.
// Measured: logits within 9.4e-8 of their largest entry on the emulator (where cuBLAS sums in double) and
// 1.9e-7 on an H200; an operand flipping at a later bf16 rounding can add ~1e-3; bound 1e-2, while a wrong
// product is O(1).
TEST(CudaBltBf16, FrozenWeightsDecodeLikeTheCastRoute) {
  TESSERA_NEED_GPU();
  const BltConfig c = BltConfig::read(kDir + "/config.json");
  BltForCausalLM<float> h(c);
  io::load_model(h, kDir + "/model.safetensors");
  BltForCausalLM<float, cuda> frozen(c), cast(c);
  copy_params(frozen, h);
  copy_params(cast, h);
  set_compute_precision(frozen, Precision::bf16);
  set_compute_precision(cast, Precision::bf16);
  freeze_bf16_weights(frozen);
  std::vector<int64_t> p0 = case_vec(1, "ids"), p1 = case_vec(3, "ids");
  p0.resize(20);
  p1.resize(13);
  blt::GenerateOptions o;  // greedy
  o.max_new_tokens = 12;
  o.stop_at_eos = false;
  blt::BltGenerator<float, cuda> gf(frozen, o), gc(cast, o);
  gf.prefill({p0, p1});
  gc.prefill({p0, p1});
  double worst = 0;
  while (!gc.done()) {
    for (int64_t b = 0; b < 2; ++b) {
      const auto lf = gf.logits(b), lc = gc.logits(b);
      ASSERT_EQ(lf.size(), lc.size());
      const double e = rel_err(lf.data(), lc.data(), static_cast<int64_t>(lc.size()));
      worst = std::max(worst, e);
      EXPECT_LE(e, 1e-2) << "logits of row " << b << " after " << gc.generated(b).size() << " bytes";
      EXPECT_EQ(gf.patch_lengths(b), gc.patch_lengths(b)) << "row " << b;
    }
    ASSERT_EQ(gf.step(), gc.step()) << "greedy bytes after " << gc.generated(0).size() << " steps";
  }
  for (int64_t b = 0; b < 2; ++b) EXPECT_EQ(static_cast<int64_t>(gf.generated(b).size()), o.max_new_tokens);
  std::cout << "[cuda-blt-bf16] frozen vs cast-route decoding: max logits rel err " << worst << "\n";
}
