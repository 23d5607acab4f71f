// BLT in bf16 mixed precision on CUDA (layers/precision.hpp) against the fp32 CPU model on the transformers
// fixture weights: one training step (logits, loss, every gradient) with the fixture's patches. bf16 covers
// every Linear (entropy model, local encoder/decoder, cross-attention projections, global transformer,
// lm_head) and, since this config has no document cuts (SeqContext::single_document), the self-attention of
// the local and global transformers (mask::PositionOnly) and the patch cross-attention (its all-bf16 path:
// bf16 projections around the bf16 segment kernels, ops/blt_cuda.hpp). Skips without a device.
//
// Tolerances: as in test_cuda_mixed_precision.cpp, every GEMM operand is rounded to bf16 (2^-9 relative) and
// the attention kernel rounds P and dS; errors compound through the local decoder, the global stack, the
// cross-attentions and the local encoder, so they grow towards the input, and a gradient that is a small
// difference of large terms shows them most. Measured with emulated tensor cores (fp32 accumulation): logits
// 9.5e-3 of their largest entry, loss 1.4e-4 relative, gradients median 1.36e-2 and at most 1.36e-1 (the
// encoder's FFN, deepest in the chain; 1.1e-4, 1.35e-2 and 1.33e-1 with the cross-attention in fp32). Bounds:
// logits 2e-2, loss 5e-3, median gradient 3e-2, every gradient 2.5e-1 — any real error (a stale weight copy,
// a missing gradient term, a transposed operand) is O(1) and moves the median.
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
#include "tessera/layers/init.hpp"
#include "tessera/layers/precision.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/train/adamw.hpp"

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

std::vector<float> normals(int64_t n, uint64_t seed, double sd = 1.0) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.normal() * sd);
  return v;
}

/// A small patch cross-attention layer: width 64, 4 heads of 16.
LayerConfig cross_config() {
  LayerConfig c;
  c.dim = 64, c.n_heads = 4, c.norm_eps = 1e-5;
  return c;
}

/// The CPU layer h and its CUDA copy d set up from c with the same N(0, 0.2) weights (seeded); d in bf16.
void cross_pair(const LayerConfig& c, uint64_t seed, blt::PatchCrossAttention<float>& h,
                blt::PatchCrossAttention<float, cuda>& d) {
  h.setup(c);
  d.setup(c);
  Rng rng(seed);
  init_normal(h, rng, 0.2);
  copy_params(d, h);
  set_compute_precision(d, Precision::bf16);
}

std::vector<int64_t> case_vec(int i, const std::string& name) {
  static const io::SafeTensorsFile f(kDir + "/cases.safetensors");
  Tensor<int64_t> t = f.read<int64_t>("case" + std::to_string(i) + "." + name);
  return std::vector<int64_t>(t.begin(), t.end());
}

/// The fixture's weights on the host.
void load_fixture(BltForCausalLM<float>& h) {
  io::load_model(h, kDir + "/model.safetensors");
}

/// d: a copy of h's weights computing in bf16.
void bf16_copy(BltForCausalLM<float, cuda>& d, BltForCausalLM<float>& h) {
  copy_params(d, h);
  set_compute_precision(d, Precision::bf16);
}

/// Case 0 of the fixture as a training step's input: its ids and patches (a bf16 entropy model may cut
/// elsewhere; patching in bf16 is not what is compared), next-byte targets, on the host and the device.
struct TrainCase {
  std::vector<int64_t> ids = case_vec(0, "ids"), pl = case_vec(0, "patch_lengths"), targets;
  int64_t T = static_cast<int64_t>(ids.size()), P = static_cast<int64_t>(pl.size());
  Tensor<int64_t, cuda> ids_d, targets_d;
  TrainCase() : targets(ids.size(), -100) {
    for (int64_t i = 0; i + 1 < T; ++i) targets[i] = ids[i + 1];
    ids_d = upload(ids);
    targets_d = upload(targets);
  }
};

}  // namespace

TEST(CudaBltBf16, TrainStepTracksTheFp32Model) {
  TESSERA_NEED_GPU();
  const BltConfig c = BltConfig::read(kDir + "/config.json");
  BltForCausalLM<float> h(c);
  BltForCausalLM<float, cuda> d(c);
  load_fixture(h);
  bf16_copy(d, h);
  h.model.walk_patcher = d.model.walk_patcher = false;  // the frozen entropy model gets no gradient
  allocate_grads(h);
  allocate_grads(d);
  const TrainCase tc;

  const Tensor<float>& lh = h.forward(tc.ids.data(), 1, tc.T, tc.pl.data(), tc.P);
  const Tensor<float, cuda>& ld = d.forward(tc.ids_d.data(), 1, tc.T, tc.pl.data(), tc.P);
  const double le = rel_err(download(ld.data(), ld.numel()), lh.data(), lh.numel());
  EXPECT_LE(le, 2e-2) << "logits";
  EXPECT_GT(le, 1e-6) << "logits identical to fp32: the bf16 path was not taken";
  const double loss_h = h.loss(tc.targets.data()), loss_d = d.loss(tc.targets_d.data());
  EXPECT_NEAR(loss_d, loss_h, 5e-3 * loss_h);
  h.backward(tc.targets.data());
  d.backward(tc.targets_d.data());
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

// keep_bf16_weight_copies on the whole BLT: AdamW writes every bf16 Linear's weight copy, and every route
// that multiplies with a weight (the plain forward, forward_to_bf16 for v and the all-bf16 cross-attention's
// q/k/v, forward_bf16_input for o, the backward's products) reads it. Two AdamW steps give the cast route's
// losses and weights bit for bit; then every master that has a copy is overwritten behind the optimizer's
// back and the logits must not move: a route that still cast its master would show it.
TEST(CudaBltBf16, AdamWWeightCopiesAreReadByEveryRoute) {
  TESSERA_NEED_GPU();
  const BltConfig c = BltConfig::read(kDir + "/config.json");
  BltForCausalLM<float> h(c);
  load_fixture(h);
  BltForCausalLM<float, cuda> cast(c), kept(c);
  for (auto* m : {&cast, &kept}) {
    bf16_copy(*m, h);
    m->model.walk_patcher = false;  // the frozen entropy model gets no gradient and no copy
    allocate_grads(*m);
  }
  keep_bf16_weight_copies(kept);
  const TrainCase tc;
  train::AdamW<float, cuda> opt_cast({1e-3, 0.9, 0.95, 1e-8, 0.1}), opt_kept({1e-3, 0.9, 0.95, 1e-8, 0.1});
  auto step = [&](BltForCausalLM<float, cuda>& m, train::AdamW<float, cuda>& opt) {
    zero_grads(m);
    m.forward(tc.ids_d.data(), 1, tc.T, tc.pl.data(), tc.P);
    const double loss = m.loss(tc.targets_d.data());
    m.backward(tc.targets_d.data());
    opt.step(m);
    return loss;
  };
  for (int s = 0; s < 2; ++s) EXPECT_EQ(step(cast, opt_cast), step(kept, opt_kept)) << "step " << s;
  std::map<std::string, std::vector<float>> want;
  for_each_param(cast, [&](const std::string& name, auto& p) { want[name] = download(p.value); });
  int64_t copies = 0;
  for_each_param(kept, [&](const std::string& name, auto& p) {
    EXPECT_EQ(download(p.value), want[name]) << name;
    if (p.value_bf16.numel() > 0) {
      EXPECT_TRUE(p.value_bf16_current) << name;
      ++copies;
    }
  });
  EXPECT_GE(copies, 20);
  const auto logits = [&](BltForCausalLM<float, cuda>& m) {
    return download(m.forward(tc.ids_d.data(), 1, tc.T, tc.pl.data(), tc.P));
  };
  const std::vector<float> expected = logits(cast);
  for_each_param(kept, [&](const std::string&, auto& p) {
    if (p.value_bf16.numel() > 0) ops::fill(cuda{}, p.value.data(), 0.5f, p.value.numel());
  });
  EXPECT_EQ(logits(kept), expected) << "a route cast its fp32 master instead of reading the optimizer's copy";
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
  load_fixture(h);
  BltForCausalLM<float, cuda> frozen(c), cast(c);
  bf16_copy(frozen, h);
  bf16_copy(cast, h);
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

// BLT's patch cross-attention in bf16 takes CrossAttention's all-bf16 path (the norms write the projections'
// bf16 inputs, q/k/v in bf16, the bf16 segment kernels, 2x + o in o_proj's epilogue, bf16 gradients between
// the kernel and the GEMMs) and tracks the fp32 CPU layer within bf16 tolerances; its backward can add the
// key/value path's gradient to a tensor in place (the decoder's layers sharing one memory) with exactly the
// same values. The decoder's shape: every byte attends to the k = 2 slots of its patch. Measured with
// emulated tensor cores: y 4.5e-3, dx 9.9e-3, dsrc 6.1e-3, weight gradients at most 8.6e-3 of their largest
// entries (every GEMM operand rounded to bf16, 2^-9, through two products and the norms); bounds 1e-2, 3e-2,
// 3e-2, 5e-2.
TEST(CudaBltBf16, PatchCrossAttentionRunsAllInBf16) {
  TESSERA_NEED_GPU();
  const LayerConfig c = cross_config();
  blt::PatchCrossAttention<float> h;
  blt::PatchCrossAttention<float, cuda> d;
  cross_pair(c, 5, h, d);
  allocate_grads(h);
  allocate_grads(d);
  ASSERT_TRUE(d.attn.all_bf16());
  const int64_t Bn = 2, T = 40, P = 12, k = 2;
  std::vector<int64_t> byte_seg(static_cast<size_t>(Bn * T)), slot_seg(static_cast<size_t>(Bn * P * k));
  for (int64_t b = 0; b < Bn; ++b) {
    for (int64_t t = 0; t < T; ++t) byte_seg[b * T + t] = std::min<int64_t>(P - 1, (t * (3 + b)) / 11);
    for (int64_t j = 0; j < P * k; ++j) slot_seg[b * P * k + j] = j / k;
  }
  const auto byte_seg_d = upload(byte_seg), slot_seg_d = upload(slot_seg);
  SeqContext qh, kh;
  qh.batch = kh.batch = Bn;
  qh.seq = T, kh.seq = P * k;
  SeqContext qd = qh, kd = kh;
  qh.segment_ids = byte_seg.data(), kh.segment_ids = slot_seg.data();
  qd.segment_ids = byte_seg_d.data(), kd.segment_ids = slot_seg_d.data();
  const int64_t nq = Bn * T * c.dim, nk = Bn * P * k * c.dim;
  const auto x = normals(nq, 6), src = normals(nk, 7), dy = normals(nq, 8, 0.5);
  const auto xd = upload(x), srcd = upload(src), dyd = upload(dy);
  const TensorView<const float> xh(x.data(), {Bn * T, c.dim}), srch(src.data(), {Bn * P * k, c.dim}),
      dyh(dy.data(), {Bn * T, c.dim});
  const TensorView<const float> xv(xd.data(), {Bn * T, c.dim}), srcv(srcd.data(), {Bn * P * k, c.dim}),
      dyv(dyd.data(), {Bn * T, c.dim});

  typename blt::PatchCrossAttention<float>::Saved sh;
  typename blt::PatchCrossAttention<float, cuda>::Saved sd;
  Tensor<float> yh, dxh, dsrch;
  Tensor<float, cuda> yd, dxd, dsrcd;
  h.forward(qh, xh, kh, srch, yh, sh);
  d.forward(qd, xv, kd, srcv, yd, sd);
  EXPECT_EQ(sd.qn.numel() + sd.kn.numel(), 0) << "fp32 normed tensors on the all-bf16 path";
  EXPECT_EQ(sd.attn_s.q.numel() + sd.attn_s.attn.numel(), 0)
      << "fp32 q / attention output on the all-bf16 path";
  EXPECT_EQ(sd.attn_s.o16.numel(), nq);
  const double ye = rel_err(download(yd), yh.data(), yh.numel());
  h.backward(qh, dyh, dxh, dsrch, sh);
  d.backward(qd, dyv, dxd, dsrcd, sd);
  const double dxe = rel_err(download(dxd), dxh.data(), dxh.numel()),
               dsrce = rel_err(download(dsrcd), dsrch.data(), dsrch.numel());
  EXPECT_LE(ye, 1e-2) << "y";
  EXPECT_GT(ye, 1e-7) << "y identical to fp32: the bf16 path was not taken";
  EXPECT_LE(dxe, 3e-2) << "dx";
  EXPECT_LE(dsrce, 3e-2) << "dsrc";
  double worst = 0;
  for (const auto& g : tessera::testing::gradient_errors(h, d)) {
    EXPECT_LE(g.err, 5e-2) << g.name;
    worst = std::max(worst, g.err);
  }
  // The key/value path added in place: exactly the overwritten gradient plus what was there.
  const auto dsrc1 = download(dsrcd);
  const auto base = normals(nk, 9);
  Tensor<float, cuda> acc = upload(base), dx2;
  d.forward(qd, xv, kd, srcv, yd, sd);
  d.backward(qd, dyv, dx2, acc, sd, true);
  const auto acch = download(acc);
  for (size_t i = 0; i < acch.size(); ++i) ASSERT_EQ(acch[i], base[i] + dsrc1[i]) << "accumulated dsrc " << i;
  std::cout << "[cuda-blt-bf16] patch cross-attention: y " << ye << ", dx " << dxe << ", dsrc " << dsrce
            << ", worst weight gradient " << worst << "\n";
}

// Decoding with frozen bf16 weights closes a patch through the fused small products (CrossAttention::
// forward_fused: the norms, the double residual and the products in 4 launches, the fp32 segment kernel);
// they round q, k and v to bf16 values so that the step computes what the all-bf16 forward does for the same
// rows (the route a prefill and unfrozen decoding take): only summation order and the norms' 1/rms reductions
// differ. The encoder's shape: the k = 2 slots of a closing patch attend to its bytes. Measured on the
// emulator: 6.5e-8 of the largest output; without the rounding of q, k, v it is 3.1e-3. Bound 5e-5.
TEST(CudaBltBf16, FusedPatchClosingMatchesTheAllBf16Forward) {
  TESSERA_NEED_GPU();
  const LayerConfig c = cross_config();
  blt::PatchCrossAttention<float> h;
  blt::PatchCrossAttention<float, cuda> d;
  cross_pair(c, 15, h, d);
  freeze_bf16_weights(d);
  const int64_t slots = 2, bytes = 5;
  const std::vector<int64_t> slot_seg(static_cast<size_t>(slots), 0), byte_seg(static_cast<size_t>(bytes), 0);
  const auto slot_seg_d = upload(slot_seg), byte_seg_d = upload(byte_seg);
  SeqContext qs, ks;
  qs.seq = slots, ks.seq = bytes;
  qs.segment_ids = slot_seg_d.data(), ks.segment_ids = byte_seg_d.data();
  const auto q0 = upload(normals(slots * c.dim, 16)), keys = upload(normals(bytes * c.dim, 17));
  const TensorView<const float> q0v(q0.data(), {slots, c.dim}), keysv(keys.data(), {bytes, c.dim});
  typename blt::PatchCrossAttention<float, cuda>::Saved s1, s2;
  Tensor<float, cuda> y_full, y_fused;
  d.forward(qs, q0v, ks, keysv, y_full, s1);
  ASSERT_EQ(s1.attn_s.o16.numel(), slots * c.dim)
      << "frozen weights at these sizes still take the all-bf16 path";
  ASSERT_TRUE(d.attn.forward_fused(qs, q0v, {d.q_norm.params.weight.value.data(), d.q_norm.eps}, ks, keysv,
                                   {d.k_norm.params.weight.value.data(), d.k_norm.eps}, q0.data(), 2, y_fused,
                                   s2.attn_s));
  const auto full = download(y_full);
  const double e = rel_err(download(y_fused), full.data(), static_cast<int64_t>(full.size()));
  EXPECT_LE(e, 5e-5);
  std::cout << "[cuda-blt-bf16] fused patch closing vs the all-bf16 forward: rel err " << e << "\n";
}
