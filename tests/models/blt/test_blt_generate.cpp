// BLT generation with caches (specs/blt.md §9): the cached path (entropy-model, encoder, global and decoder
// caches, patches decided byte by byte) against the no-cache reference path and full forwards, on the Hugging
// Face fixture model (tests/fixtures/blt-hf-tiny); plus the cache building blocks (KvCache, SelfAttention /
// CrossAttention / Llama forward_cached) against their full forwards.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"
#include "tessera/io/model_io.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/blt/blt.hpp"
#include "tessera/models/blt/generate.hpp"

using namespace tessera;
using tessera::blt::BltConfig;
using tessera::blt::BltForCausalLM;
using tessera::blt::GenerateOptions;

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

#ifdef _OPENMP
// The no-cache reference path runs about a thousand small full forwards whose OpenMP regions only cost: on
// this busy 2-core machine, two threads made the tests 30x slower whenever another process held a core. The
// cached path has no parallel region at these sizes, so one thread changes no result.
const bool kOneThread = [] {
  omp_set_num_threads(1);
  return true;
}();
#endif

const std::string kDir = std::string(TESSERA_TEST_FIXTURES) + "/blt-hf-tiny";

const io::SafeTensorsFile& cases() {
  static const io::SafeTensorsFile f(kDir + "/cases.safetensors");
  return f;
}
std::vector<int64_t> case_vec(int i, const std::string& name) {
  Tensor<int64_t> t = cases().read<int64_t>("case" + std::to_string(i) + "." + name);
  return std::vector<int64_t>(t.begin(), t.end());
}
BltConfig fixture_config() {
  return BltConfig::read(kDir + "/config.json");
}

std::unique_ptr<BltForCausalLM<float>> load_model(const BltConfig& cfg) {
  auto lm = std::make_unique<BltForCausalLM<float>>(cfg);
  io::load_model(*lm, kDir + "/model.safetensors");
  return lm;
}
/// The fixture model (HF layout: plain causal masks, patches summing to T with a possible empty trailing
/// patch).
BltForCausalLM<float>& fixture_model() {
  static auto m = load_model(fixture_config());
  return *m;
}
/// The same weights with the original layout's semantics and short windows, so that >W-byte texts exercise
/// the sliding-window caches: local windows, entropy window, EOS document cuts, include-next-byte patches.
BltForCausalLM<float>& original_model(int64_t window) {
  static std::map<int64_t, std::unique_ptr<BltForCausalLM<float>>> models;
  auto& m = models[window];
  if (!m) {
    BltConfig c = fixture_config();
    c.local_window = window;
    c.eos_document_cuts = true;
    c.patcher.window = window;
    m = load_model(c);
  }
  return *m;
}

void report(const std::string& key, double value) {
  std::cout << "[blt-gen] " << key << " = " << value << "\n";
  ::testing::Test::RecordProperty(key, str(value));
}

/// The prompt of a fixture case, truncated to at most `n` ids.
std::vector<int64_t> prompt(int i, size_t n = 1000) {
  std::vector<int64_t> ids = case_vec(i, "ids");
  if (ids.size() > n) ids.resize(n);
  return ids;
}

/// Feeds `ids` one by one after prefilling `ids[0, n0)` and checks, at every step, the cached logits against
/// the last row of a full forward and the cached patches against the entropy patcher on the whole prefix.
/// Returns the largest logit difference.
template <class T>
double check_stepwise(BltForCausalLM<T>& m, const std::vector<int64_t>& ids, size_t n0,
                      const std::string& what, double tol = 1e-5) {
  const int64_t V = m.config().vocab_size;
  blt::BltIncremental<T> inc(m);
  blt::BltRowCache<T> row;
  inc.prefill(row, std::span<const int64_t>(ids.data(), n0));
  double worst = 0;
  for (size_t n = n0;; ++n) {
    const auto& full = m.forward(ids.data(), 1, static_cast<int64_t>(n));
    const double err = tessera::testing::max_abs_err(row.logits.data(), full.data() + (n - 1) * V, V);
    worst = std::max(worst, err);
    EXPECT_LE(err, tol) << what << ": logits after " << n << " ids";
    const blt::PatchLengths pl = m.model.compute_patch_lengths(ids.data(), 1, static_cast<int64_t>(n));
    EXPECT_EQ(inc.patch_lengths(row), pl.lengths) << what << ": patches after " << n << " ids";
    if (n == ids.size() || ::testing::Test::HasFailure()) break;
    blt::BltRowCache<T>* rp = &row;
    inc.step(&rp, 1, &ids[n]);
  }
  return worst;
}

/// ids continued by the greedy no-cache generation of `n` bytes (a realistic text to feed step by step).
std::vector<int64_t> with_continuation(BltForCausalLM<float>& m, std::vector<int64_t> ids, int64_t n) {
  const auto more = m.generate_greedy(ids, n);
  ids.insert(ids.end(), more.begin(), more.end());
  return ids;
}

}  // namespace

// ---- building blocks
// ---------------------------------------------------------------------------------------

TEST(KvCache, AppendWindowKeepAndPop) {
  KvCache<double> c(2, 3, /*window=*/4);
  std::vector<double> k, v;
  std::vector<int64_t> seg;
  for (int i = 0; i < 40; ++i) {
    k = {double(i), -double(i)};
    v = {double(i), 2.0 * i, 3.0 * i};
    seg = {i};
    c.append(k.data(), 2, v.data(), 3, 1, seg.data());
    // The newest row is always last; at least window - 1 older rows survive (what the next query may see).
    ASSERT_EQ(c.k()[(c.size() - 1) * 2], double(i));
    ASSERT_EQ(c.v()[(c.size() - 1) * 3 + 2], 3.0 * i);
    ASSERT_EQ(c.segments()[c.size() - 1], i);
    ASSERT_GE(c.size(), std::min(i + 1, 4));
    ASSERT_LE(c.size(), 8 + 1);  // bounded by 2 * window (+ the appended row)
    for (int64_t r = 0; r < c.size(); ++r) ASSERT_EQ(c.k()[r * 2 + 1], -double(i - (c.size() - 1 - r)));
  }
  c.pop_back(1);
  EXPECT_EQ(c.k()[(c.size() - 1) * 2], 38.0);
  c.keep_last(2);
  EXPECT_EQ(c.size(), 2);
  EXPECT_EQ(c.segments()[0], 37);
  EXPECT_EQ(c.v()[1 * 3 + 1], 76.0);
  EXPECT_THROW(c.pop_back(3), Error);
  c.clear();
  EXPECT_EQ(c.size(), 0);
  KvCache<double> all(1, 1);  // no window: everything is kept
  for (int i = 0; i < 100; ++i) {
    const double x = i;
    all.append(&x, 1, &x, 1, 1);
  }
  EXPECT_EQ(all.size(), 100);
  EXPECT_EQ(all.k()[0], 0.0);
  EXPECT_EQ(all.k()[99], 99.0);
}

TEST(KvCache, SelfAttentionStepsEqualTheFullForward) {
  // GQA, RoPE, sliding window 5: prefill 7 tokens, then one at a time; two sequences with different lengths.
  using Attn = SelfAttention<double, rope::Interleaved, mask::SlidingWindow>;
  LayerConfig lc;
  lc.dim = 16;
  lc.n_heads = 4;
  lc.n_kv_heads = 2;
  Attn a;
  a.setup(lc);
  Rng rng(3);
  for (auto* p : {&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj})
    tessera::testing::fill_normal(p->params.weight.value, rng, 0.4);
  const int64_t T = 19, W = 5;
  constexpr int64_t D = 16, KW = 2 * 4;
  Tensor<double> x({2 * T, D});
  tessera::testing::fill_normal(x, rng);
  SeqContext full;
  full.batch = 2;
  full.seq = T;
  full.window = W;
  Tensor<double> y;
  Attn::Saved s;
  a.forward(full, x, y, s);

  std::vector<KvCache<double>> caches(2, KvCache<double>(KW, KW, W));
  std::vector<KvCache<double>*> ptrs = {&caches[0], &caches[1]};
  // sequence 0: 7 tokens at once, then 12 single steps; sequence 1: 19 single steps
  Tensor<double> yc;
  Attn::Saved sc;
  std::vector<int64_t> pos(7);
  for (int64_t t = 0; t < 7; ++t) pos[t] = t;
  SeqContext pre;
  pre.seq = 7;
  pre.window = W;
  pre.positions = pos.data();
  a.forward_cached(pre, x.view().slice(0, 0, 7), yc, ptrs.data(), sc);
  EXPECT_LE(tessera::testing::max_abs_err(yc.data(), y.data(), 7 * D), 1e-12);
  for (int64_t t = 0; t < T; ++t) {
    SeqContext one;
    one.seq = 1;
    one.window = W;
    one.pos_offset = t;
    a.forward_cached(one, x.view().slice(0, T + t, T + t + 1), yc, &ptrs[1], sc);
    EXPECT_LE(tessera::testing::max_abs_err(yc.data(), y.data() + (T + t) * D, D), 1e-12) << "seq 1, t " << t;
    if (t < 7) continue;
    a.forward_cached(one, x.view().slice(0, t, t + 1), yc, &ptrs[0], sc);
    EXPECT_LE(tessera::testing::max_abs_err(yc.data(), y.data() + t * D, D), 1e-12) << "seq 0, t " << t;
  }
  EXPECT_LE(caches[1].size(), 2 * W + 1);  // old rows were dropped
}

TEST(KvCache, CrossAttentionAgainstCachedKeysEqualsTheFullForward) {
  using Cross = CrossAttention<double, mask::SegmentMatch>;
  LayerConfig lc;
  lc.dim = 8;
  lc.n_heads = 2;
  lc.kv_dim = 6;
  Cross a;
  a.setup(lc);
  Rng rng(5);
  for (auto* p : {&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj})
    tessera::testing::fill_normal(p->params.weight.value, rng, 0.5);
  const int64_t Tq = 5, Tk = 6;
  Tensor<double> x({Tq, 8}), src({Tk, 6});
  tessera::testing::fill_normal(x, rng);
  tessera::testing::fill_normal(src, rng);
  const std::vector<int64_t> qseg = {0, 1, 1, 2, 2}, kseg = {0, 0, 1, 1, 2, 2};
  SeqContext q, k;
  q.seq = Tq;
  q.segment_ids = qseg.data();
  k.seq = Tk;
  k.segment_ids = kseg.data();
  Tensor<double> y, yc, kk, vv;
  Cross::Saved s, sc;
  a.forward(q, x, k, src, y, s);
  a.project_kv(k, src, kk, vv);
  KvCache<double> cache(8, 8);
  cache.append(kk.data(), 8, vv.data(), 8, Tk, kseg.data());
  const KvCache<double>* cp = &cache;
  a.forward_cached(q, x, &cp, yc, sc);  // 5 query rows: the blockwise kernel
  EXPECT_LE(tessera::testing::max_abs_err(yc.data(), y.data(), y.numel()), 1e-12);
  for (int64_t i = 0; i < Tq; ++i) {  // one row at a time: decode_attention
    SeqContext qi;
    qi.seq = 1;
    qi.segment_ids = &qseg[i];
    a.forward_cached(qi, x.view().slice(0, i, i + 1), &cp, yc, sc);
    EXPECT_LE(tessera::testing::max_abs_err(yc.data(), y.data() + i * 8, 8), 1e-12) << "query " << i;
  }
  // A query whose segment has no key gets zeros (like the blockwise kernel's fully masked rows).
  const int64_t none = 7;
  SeqContext qn;
  qn.seq = 1;
  qn.segment_ids = &none;
  a.forward_cached(qn, x.view().slice(0, 0, 1), &cp, yc, sc);
  Tensor<double> zero({1, 8});
  a.o_proj.forward(qn, zero, y, s.o_s);  // o_proj of a zero attention output (no bias: zeros)
  EXPECT_LE(tessera::testing::max_abs_err(yc.data(), y.data(), 8), 1e-15);
}

TEST(KvCache, LlamaForwardCachedEqualsForward) {
  models::LlamaConfig c;
  c.vocab_size = 30;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_hidden = 24;
  c.window = 6;
  models::Llama<double> m(c);
  Rng rng(11);
  for_each_param(m, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.3); });
  std::vector<int64_t> ids(2 * 15);
  for (auto& i : ids) i = static_cast<int64_t>(rng.below(30));
  const Tensor<double> full = m.forward(ids.data(), 2, 15).clone();
  std::vector<models::Llama<double>::Cache> caches = {m.make_cache(), m.make_cache()};
  std::vector<models::Llama<double>::Cache*> ptrs = {&caches[0], &caches[1]};
  models::Llama<double>::DecodeScratch s;
  // Both rows: 4 ids together (batched), then the rest one id per row per call.
  std::vector<int64_t> first = {ids[0], ids[1], ids[2], ids[3], ids[15], ids[16], ids[17], ids[18]};
  const auto& l0 = m.forward_cached(first.data(), 2, 4, ptrs.data(), s);
  for (int64_t b = 0; b < 2; ++b)
    EXPECT_LE(tessera::testing::max_abs_err(l0.data() + b * 4 * 30, full.data() + b * 15 * 30, 4 * 30),
              1e-12);
  for (int64_t t = 4; t < 15; ++t) {
    const int64_t two[2] = {ids[t], ids[15 + t]};
    const auto& l = m.forward_cached(two, 2, 1, ptrs.data(), s);
    for (int64_t b = 0; b < 2; ++b)
      EXPECT_LE(tessera::testing::max_abs_err(l.data() + b * 30, full.data() + (b * 15 + t) * 30, 30), 1e-12)
          << t;
  }
  EXPECT_EQ(caches[0].next_pos, 15);
}

// ---- cached BLT steps against full forwards
// ----------------------------------------------------------------

TEST(BltCache, PrefillReproducesTheFixturePatchesAndLogits) {
  auto& m = fixture_model();
  blt::BltIncremental<float> inc(m);
  for (int i = 0; i < 5; ++i) {
    const std::vector<int64_t> ids = case_vec(i, "ids");
    blt::BltRowCache<float> row;
    inc.prefill(row, ids);
    EXPECT_EQ(inc.patch_lengths(row), case_vec(i, "patch_lengths")) << "case " << i;
    const Tensor<float> want = cases().read<float>("case" + std::to_string(i) + ".logits");
    const Tensor<float> ent = cases().read<float>("case" + std::to_string(i) + ".entropies");
    const int64_t T = static_cast<int64_t>(ids.size());
    EXPECT_LE(tessera::testing::max_abs_err(row.logits.data(), want.data() + (T - 1) * 260, 260), 1e-4) << i;
    EXPECT_LE(tessera::testing::max_abs_err(row.entropies.data(), ent.data(), T), 1e-4) << i;
  }
}

TEST(BltCache, EveryStepEqualsAFullForward) {
  // HF layout; the invalid-UTF-8 case and a text case, each fed byte by byte after a short prompt, with their
  // greedy continuation appended so the text grows past the fixture.
  auto& m = fixture_model();
  double worst = 0;
  for (const int i : {0, 4}) {
    const auto ids = with_continuation(m, prompt(i, 60), 40);
    worst = std::max(worst, check_stepwise(m, ids, 5, "case " + std::to_string(i)));
  }
  // BOS alone as the prompt: patch 0 closes at once, every byte is a step.
  worst = std::max(worst, check_stepwise(m, with_continuation(m, {1}, 30), 1, "BOS prompt"));
  report("stepwise.max_abs_err", worst);
}

TEST(BltCache, OriginalLayoutWindowsAndDocumentCuts) {
  // Original semantics with 16-byte windows (local layers and entropy model): caches drop old rows. The text
  // holds EOS bytes, which cut documents in the local layers, reset the entropy context and end a global
  // document at the patch holding them; patches sum to T + 1.
  auto& m = original_model(16);
  std::vector<int64_t> ids = prompt(1, 40);
  ids.push_back(blt::EOS);
  const auto more = prompt(3, 45);
  ids.insert(ids.end(), more.begin() + 1, more.end());
  ids.push_back(blt::EOS);
  ids.push_back(blt::EOS);
  ids = with_continuation(m, ids, 20);
  // prefill across the cuts (in pieces), then steps across more cuts
  const double a = check_stepwise(m, ids, 50, "original, window 16");
  const double b = check_stepwise(m, ids, ids.size() - 2, "original, long prefill");
  report("original_window16.stepwise.max_abs_err", std::max(a, b));
}

TEST(BltCache, EntropyContextRestartsEvery8192Tokens) {
  // Original layout: the entropy model's context restarts at token 8192 (positions from 0 again); prefill in
  // pieces across the restart, then steps across it.
  auto& m = original_model(16);
  std::vector<int64_t> ids = {blt::BOS};
  for (int i = 0; ids.size() < 8200; i = (i + 1) % 4) {
    const auto c = case_vec(i, "ids");
    ids.insert(ids.end(), c.begin() + 1, c.end());
  }
  ids.resize(8194);
  const double a = check_stepwise(m, ids, 8190, "8192 restart, steps");
  const double b = check_stepwise(m, ids, 8194, "8192 restart, prefill");
  report("entropy_restart.stepwise.max_abs_err", std::max(a, b));
}

TEST(BltCache, MaxPatchLengthInBothForms) {
  // max_patch_length splits long patches. The HF form then drops the start at N, so the last byte reads the
  // patch before its own (the "view" quirk of BltIncremental); the original form keeps it.
  for (const bool original : {false, true}) {
    BltConfig c = fixture_config();
    c.max_patch_length = 2;
    if (original) c.eos_document_cuts = true;
    auto m = load_model(c);
    const auto ids = with_continuation(*m, prompt(2, 30), 25);
    const double err =
        check_stepwise(*m, ids, 3, original ? "max_patch_length, original" : "max_patch_length, HF");
    report(original ? "max_patch_length_original.max_abs_err" : "max_patch_length_hf.max_abs_err", err);
    check_stepwise(*m, {1, 80, 81}, 1, "max_patch_length, BOS prompt");
  }
}

TEST(BltCache, RandomDoubleModelWithGqaAndTokenProjection) {
  // Paths the fixture does not take: the global input projection (k * d_enc = 128 != d_global = 96, the 7B
  // case), grouped-query attention everywhere, decoder cross-attention before the first layer only. In
  // double, cached and full forwards agree to rounding.
  BltConfig c = fixture_config();
  c.global.dim = 96;
  c.global.n_kv_heads = 2;
  c.global.ffn_hidden = 160;
  c.encoder.n_kv_heads = 2;
  c.decoder.n_kv_heads = 2;
  c.decoder.n_layers = 3;
  c.decoder.cross_attn_all_layers = false;
  c.patcher.n_kv_heads = 2;
  BltForCausalLM<double> m(c);
  ASSERT_TRUE(m.model.global_transformer.projects());
  Rng rng(21);
  for_each_param(m, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.3); });
  std::vector<int64_t> ids = prompt(1, 70);
  const auto more = prompt(4, 50);
  ids.insert(ids.end(), more.begin() + 1, more.end());
  // threshold at the median entropy of this text: patches of every length
  std::vector<float> H = blt::entropies(m.model.patcher, ids.data(), 1, static_cast<int64_t>(ids.size()),
                                        blt::EntropyOptions::hf());
  std::nth_element(H.begin(), H.begin() + H.size() / 2, H.end());
  m.model.config.patching_threshold = H[H.size() / 2];
  const double err = check_stepwise(m, ids, 10, "random double model", 1e-10);
  report("random_double.stepwise.max_abs_err", err);
  const auto pl = m.model.compute_patch_lengths(ids.data(), 1, static_cast<int64_t>(ids.size()));
  EXPECT_GT(pl.P, 20);
  EXPECT_LT(pl.P, static_cast<int64_t>(ids.size()) - 20);
}

TEST(BltCache, ARowSteppedInABatchGetsTheBitsOfTheRowSteppedAlone) {
  // The decoding products are streamed (ops/streamed_product.hpp: one fixed-order sum per output whatever
  // the rows around it), the patches closing in one step attend over their bytes one call each, and every
  // other op of a step is row by row: batching rows changes no bit of their logits — in fp32 and with bf16
  // weights.
  for (const bool b16 : {false, true}) {
    auto m = load_model(fixture_config());
    if (b16) {
      set_compute_precision(*m, Precision::bf16);
      freeze_bf16_weights(*m);
    }
    blt::BltIncremental<float> inc(*m);
    const std::vector<std::vector<int64_t>> texts = {with_continuation(fixture_model(), prompt(1, 12), 40),
                                                     with_continuation(fixture_model(), prompt(3, 30), 40),
                                                     with_continuation(fixture_model(), prompt(4, 20), 40)};
    const size_t n0[] = {12, 30, 20};
    std::vector<blt::BltRowCache<float>> batch(3), alone(3);
    for (int b = 0; b < 3; ++b) {
      inc.prefill(batch[b], std::span<const int64_t>(texts[b].data(), n0[b]));
      inc.prefill(alone[b], std::span<const int64_t>(texts[b].data(), n0[b]));
    }
    blt::BltRowCache<float>* rows[] = {&batch[0], &batch[1], &batch[2]};
    for (int t = 0; t < 40; ++t) {
      const int64_t ids[] = {texts[0][n0[0] + t], texts[1][n0[1] + t], texts[2][n0[2] + t]};
      inc.step(rows, 3, ids);
      for (int b = 0; b < 3; ++b) {
        blt::BltRowCache<float>* one = &alone[b];
        inc.step(&one, 1, &ids[b]);
        ASSERT_EQ(batch[b].logits, alone[b].logits)
            << (b16 ? "bf16" : "fp32") << " row " << b << ", step " << t;
      }
    }
    for (int b = 0; b < 3; ++b) EXPECT_EQ(inc.patch_lengths(batch[b]), inc.patch_lengths(alone[b]));
  }
}

TEST(BltCache, Bf16WeightsOnTheCpu) {
  // bf16 weights on the CPU (layers/precision.hpp; `blt generate --precision bf16`): the cached steps equal
  // the bf16 model's own full forwards (the same rounded weights; decoding streams them through the small
  // products, a full forward widens them for the GEMM), and the logits stay within the weights' rounding of
  // the fp32 model's.
  auto m = load_model(fixture_config());
  set_compute_precision(*m, Precision::bf16);
  freeze_bf16_weights(*m);
  const auto ids = with_continuation(fixture_model(), prompt(0, 60), 40);
  report("bf16_weights.stepwise.max_abs_err", check_stepwise(*m, ids, 5, "bf16 weights"));
  // Against fp32 with the fp32 model's patches (the entropies move by the rounding too, and an entropy at the
  // threshold may cut a patch elsewhere).
  const int64_t T = static_cast<int64_t>(ids.size()), V = m->config().vocab_size;
  const blt::PatchLengths pl = fixture_model().model.compute_patch_lengths(ids.data(), 1, T);
  const Tensor<float> got = m->forward(ids.data(), 1, T, pl.lengths.data(), pl.P).clone();
  const Tensor<float>& want = fixture_model().forward(ids.data(), 1, T, pl.lengths.data(), pl.P);
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < T * V; ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(got[i] - want[i])));
    scale = std::max(scale, static_cast<double>(std::abs(want[i])));
  }
  report("bf16_weights.logits_vs_fp32.max_abs_err", diff);
  report("bf16_weights.logits_vs_fp32.relative_to_max", diff / scale);
  // Weights rounded to 8 significant bits (relative error <= 2^-9 each) through the ~15 products of entropy
  // model, encoder, global and decoder: measured 7.1e-3 of the largest logit (0.029 absolute), the size of
  // the GPU's bf16 errors; 2e-2 bounds it. Above 1e-6: the bf16 weights were used.
  EXPECT_GT(diff, 1e-6);
  EXPECT_LE(diff / scale, 2e-2);
}

// ---- generation: cached == uncached
// --------------------------------------------------------------------------

TEST(BltGenerate, GreedyContinuationsMatchTheFixture) {
  auto& m = fixture_model();
  GenerateOptions o;
  o.max_new_tokens = 24;
  o.stop_at_eos = false;  // HF generate with eos_token_id null
  std::vector<std::vector<int64_t>> prompts;
  for (int i = 0; i < 5; ++i) prompts.push_back(case_vec(i, "ids"));
  const auto r = blt::generate_cached(m, prompts, o);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(r.tokens[i], case_vec(i, "greedy")) << "case " << i;
}

TEST(BltGenerate, CachedEqualsUncachedOver200Bytes) {
  auto& m = fixture_model();
  // 4: invalid UTF-8. Kept short: the no-cache path costs a full forward per byte.
  const std::vector<std::vector<int64_t>> prompts = {prompt(0, 50), prompt(4, 60), prompt(2, 30)};
  GenerateOptions greedy;
  greedy.max_new_tokens = 200;
  greedy.stop_at_eos = false;
  GenerateOptions sampled = greedy;
  sampled.temperature = 1.0;
  sampled.top_k = 40;
  sampled.top_p = 0.9;
  sampled.seed = 1234;
  GenerateOptions hot = greedy;  // plain multinomial
  hot.temperature = 1.0;
  hot.seed = 99;
  for (const auto* o : {&greedy, &sampled, &hot}) {
    const auto rows = o == &hot ? std::vector<std::vector<int64_t>>{prompts[1]} : prompts;
    const auto c = blt::generate_cached(m, rows, *o);
    const auto u = blt::generate_uncached(m, rows, *o);
    for (size_t b = 0; b < rows.size(); ++b) {
      ASSERT_EQ(c.tokens[b].size(), 200u);
      EXPECT_EQ(c.tokens[b], u.tokens[b])
          << "row " << b << ", temperature " << o->temperature << ", top_k " << o->top_k;
    }
    if (o == &greedy) {
      report("cached.prefill_bytes_per_s", c.prefill_bytes_per_s());
      report("cached.generate_bytes_per_s", c.generate_bytes_per_s());
      report("uncached.generate_bytes_per_s", u.generate_bytes_per_s());
      report("cached_over_uncached.speedup", c.generate_bytes_per_s() / u.generate_bytes_per_s());
    }
  }
  // Sampling really samples: it leaves the greedy path, and the seed matters.
  const auto g = blt::generate_cached(m, prompts, greedy);
  const auto s = blt::generate_cached(m, prompts, sampled);
  GenerateOptions other = sampled;
  other.seed = 4321;
  const auto s2 = blt::generate_cached(m, prompts, other);
  EXPECT_NE(g.tokens[0], s.tokens[0]);
  EXPECT_NE(s.tokens[0], s2.tokens[0]);
  EXPECT_EQ(s.tokens, blt::generate_cached(m, prompts, sampled).tokens);  // deterministic
}

TEST(BltGenerate, OriginalLayoutCachedEqualsUncached) {
  // Short windows: 120 bytes run far past them.
  auto& m = original_model(16);
  const std::vector<std::vector<int64_t>> prompts = {prompt(1, 30), prompt(4, 20)};
  GenerateOptions o;
  o.max_new_tokens = 120;
  o.stop_at_eos = false;
  o.temperature = 0.8;
  o.top_k = 20;
  o.seed = 5;
  const auto c = blt::generate_cached(m, prompts, o);
  const auto u = blt::generate_uncached(m, prompts, o);
  EXPECT_EQ(c.tokens, u.tokens);
}

TEST(BltGenerate, BatchGivesThePerPromptResults) {
  auto& m = fixture_model();
  const std::vector<std::vector<int64_t>> prompts = {prompt(1, 12), prompt(3), prompt(4, 41)};
  for (const double temp : {0.0, 1.0}) {
    GenerateOptions o;
    o.max_new_tokens = 60;
    o.stop_at_eos = false;
    o.temperature = temp;
    o.top_p = 0.95;
    o.seed = 17;
    const auto batch = blt::generate_cached(m, prompts, o);
    for (size_t b = 0; b < prompts.size(); ++b) {
      const auto one = blt::generate_cached(m, {prompts[b]}, o);
      EXPECT_EQ(batch.tokens[b], one.tokens[0]) << "row " << b << ", temperature " << temp;
    }
  }
  // Rows keep their own patches: the batch's patch lengths are each row's own.
  GenerateOptions o;
  o.max_new_tokens = 30;
  blt::BltGenerator<float> g(m, o);
  g.prefill(prompts);
  while (!g.done()) g.step();
  for (int64_t b = 0; b < 3; ++b) {
    const auto& ids = g.ids(b);
    const auto pl = m.model.compute_patch_lengths(ids.data(), 1, static_cast<int64_t>(ids.size()));
    EXPECT_EQ(g.patch_lengths(b), pl.lengths) << "row " << b;
  }
}

TEST(BltGenerate, StopsAtEosAndRowsFinishAtDifferentTimes) {
  // A model whose EOS logit equals the logit of the byte the fixture model generates 7th for prompt 0: greedy
  // (first maximum; EOS = 2 comes first) emits EOS wherever the original would emit that byte, so rows stop
  // at different steps while the batch goes on.
  GenerateOptions o;
  o.max_new_tokens = 40;
  o.stop_at_eos = false;
  const std::vector<std::vector<int64_t>> prompts = {prompt(0), prompt(1), prompt(2, 70)};
  const int64_t byte = blt::generate_cached(fixture_model(), prompts, o).tokens[0][6];
  auto m = load_model(fixture_config());
  auto& w = m->lm_head.params.weight.value;
  std::copy_n(w.data() + byte * w.size(1), w.size(1), w.data() + blt::EOS * w.size(1));

  // Without stopping, EOS is fed back like any byte and generation goes on (cached == uncached).
  const auto on = blt::generate_cached(*m, prompts, o);
  EXPECT_EQ(on.tokens, blt::generate_uncached(*m, prompts, o).tokens);
  // With stopping: the same ids up to and including the first EOS.
  o.stop_at_eos = true;
  const auto c = blt::generate_cached(*m, prompts, o);
  const auto u = blt::generate_uncached(*m, prompts, o);
  std::set<size_t> lengths;
  for (size_t b = 0; b < prompts.size(); ++b) {
    std::vector<int64_t> want = on.tokens[b];
    const auto it = std::find(want.begin(), want.end(), blt::EOS);
    const bool stops = it != want.end();
    if (stops) want.erase(it + 1, want.end());
    EXPECT_EQ(c.tokens[b], want) << "row " << b;
    EXPECT_EQ(c.tokens[b], u.tokens[b]) << "row " << b;
    EXPECT_EQ(c.stopped_at_eos[b] != 0, stops) << "row " << b;
    EXPECT_EQ(u.stopped_at_eos[b], c.stopped_at_eos[b]) << "row " << b;
    lengths.insert(c.tokens[b].size());
  }
  EXPECT_LE(c.tokens[0].size(), 7u);
  EXPECT_TRUE(c.stopped_at_eos[0]);
  EXPECT_EQ(c.tokens[0].back(), blt::EOS);
  EXPECT_GE(lengths.size(), 2u) << "rows should finish at different times";
  EXPECT_LT(c.new_bytes, on.new_bytes);
}

TEST(BltGenerate, SamplerFilters) {
  // logits: id 3 > 1 > 0 > 2 (probabilities at T = 1 about 0.64, 0.24, 0.09, 0.03)
  const float logits[4] = {0.0f, 1.0f, -1.0f, 2.0f};
  GenerateOptions o;
  blt::Sampler greedy(o);
  EXPECT_EQ(greedy(logits, 4), 3);
  o.temperature = 1.0;
  o.top_k = 1;
  blt::Sampler k1(o);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(k1(logits, 4), 3);
  o.top_k = 2;
  blt::Sampler k2(o);
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(k2(logits, 4));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 3}));
  o.top_k = 0;
  o.top_p = 0.7;  // 0.64 < 0.7: the second id is kept, the third (mass before it 0.88) is not
  blt::Sampler p(o);
  seen.clear();
  for (int i = 0; i < 200; ++i) seen.insert(p(logits, 4));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 3}));
  o.top_p = 1.0;
  blt::Sampler all(o);
  std::vector<int> count(4, 0);
  for (int i = 0; i < 4000; ++i) ++count[all(logits, 4)];
  EXPECT_NEAR(count[3] / 4000.0, 0.6439, 0.03);
  EXPECT_NEAR(count[2] / 4000.0, 0.0321, 0.01);
}

TEST(BltGenerate, BadInputsGiveClearErrors) {
  auto& m = fixture_model();
  auto expect_error = [](auto f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error, expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  GenerateOptions o;
  o.max_new_tokens = 2;
  expect_error([&] { blt::generate_cached(m, {{1, 80}, {}}, o); }, "prompt 1: BLT generate: empty prompt");
  expect_error([&] { blt::generate_uncached(m, {{}}, o); }, "prompt 0 is empty");
  expect_error([&] { blt::generate_cached(m, {{1, 300}}, o); }, "id 300 (row 0) is outside the vocabulary");
  expect_error([&] { blt::generate_cached(m, {}, o); }, "no prompts");
  GenerateOptions bad = o;
  bad.top_p = 0;
  expect_error([&] { blt::generate_cached(m, {{1}}, bad); }, "top_p must be in (0, 1]");
  bad = o;
  bad.temperature = -1;
  expect_error([&] { blt::generate_cached(m, {{1}}, bad); }, "temperature must be");
  BltConfig c = fixture_config();
  c.patch_in_forward = false;
  BltForCausalLM<float> no_patcher(c);
  expect_error([&] { blt::BltIncremental<float> inc(no_patcher); }, "no entropy model");
  // max_new_tokens = 0: nothing generated, nothing fails
  o.max_new_tokens = 0;
  const auto r = blt::generate_cached(m, {{1, 80}}, o);
  EXPECT_TRUE(r.tokens[0].empty());
  EXPECT_TRUE(blt::generate_uncached(m, {{1, 80}}, o).tokens[0].empty());
}
