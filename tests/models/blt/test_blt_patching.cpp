// BLT entropy model and patchers (spec blt.md §2, §13.1-3, §13.8, §13.12-13).
// Fixture: tests/fixtures/blt-hf-tiny (Hugging Face transformers 5.17, fp32, random weights; entropy model
// 64-d, 2 layers, its lm_head scaled x8 so that entropies vary). Hand-made patcher expectations were checked
// against a re-statement of the original bytelatent patcher functions in PyTorch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tessera/io/json_config.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/blt/entropy.hpp"
#include "tessera/models/blt/tokenizer.hpp"
#include "tessera/patchers/patchers.hpp"

using namespace tessera;
using patchers::EntropyPatcher;
using patchers::NextByte;
using V = std::vector<int64_t>;

namespace {

const std::string kDir = std::string(TESSERA_TEST_FIXTURES) + "/blt-hf-tiny";
constexpr int kCases = 5;

const io::SafeTensorsFile& cases() {
  static const io::SafeTensorsFile f(kDir + "/cases.safetensors");
  return f;
}
const nlohmann::json& hf_config() {
  static const nlohmann::json j = io::read_json_file(kDir + "/config.json");
  return j;
}
V read_ids(const std::string& name) {
  const Tensor<int64_t> t = cases().read<int64_t>(name);
  return {t.begin(), t.end()};
}
std::vector<float> read_floats(const std::string& name) {
  const Tensor<float> t = cases().read<float>(name);
  return {t.begin(), t.end()};
}

/// The fixture's entropy model (window 512 unless told otherwise), loaded once.
models::Llama<float>& entropy_model() {
  static auto m = [] {
    auto p =
        std::make_unique<models::Llama<float>>(blt::entropy_config_from_hf(hf_config()["patcher_config"]));
    blt::load_entropy_model(*p, io::SafeTensorsFile(kDir + "/model.safetensors"));
    return p;
  }();
  return *m;
}
/// Entropies with a given attention window (restores the model's window afterwards).
std::vector<float> entropies_w(const V& ids, int64_t B, int64_t T, int64_t window,
                               const blt::EntropyOptions& opt = blt::EntropyOptions::original()) {
  auto& m = entropy_model();
  const int64_t saved = m.config.window;
  m.config.window = window;
  auto h = blt::entropies(m, ids.data(), B, T, opt);
  m.config.window = saved;
  return h;
}
V sub(const V& v, int64_t b, int64_t e) {
  return V(v.begin() + b, v.begin() + e);
}
std::vector<float> subf(const std::vector<float>& v, int64_t b, int64_t e) {
  return std::vector<float>(v.begin() + b, v.begin() + e);
}
double max_abs(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    m = std::max(m, static_cast<double>(std::abs(a[i] - b[i])));
  return m;
}
/// A long deterministic byte text (mixed prose and digits, so entropies vary).
V long_ids(int64_t n_bytes) {
  std::string s;
  uint32_t x = 12345;
  const std::string words[] = {"the ",   "patch ", "byte ", "latent ", "entropy ",
                               "model ", "of ",    "42, ",  "\n"};
  while (static_cast<int64_t>(s.size()) < n_bytes) {
    x = x * 1664525u + 1013904223u;
    s += words[(x >> 16) % 9];
  }
  s.resize(static_cast<size_t>(n_bytes));
  return blt::encode(s);  // BOS + n_bytes
}

}  // namespace

// ---- entropy model vs the HF fixture
// ---------------------------------------------------------------------------

TEST(BltEntropy, ConfigFromHfPatcherConfig) {
  const auto c = blt::entropy_config_from_hf(hf_config()["patcher_config"]);
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.ffn_hidden, 160);
  EXPECT_EQ(c.vocab_size, 260);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_EQ(c.window, 512);
  EXPECT_EQ(blt::entropy_config_from_hf(hf_config()["patcher_config"], 0).window, 0);
  auto bad = hf_config()["patcher_config"];
  bad.erase("intermediate_size");
  try {
    blt::entropy_config_from_hf(bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("intermediate_size"), std::string::npos) << e.what();
  }
  auto odd = hf_config()["patcher_config"];
  odd["head_dim"] = 32;
  EXPECT_THROW(blt::entropy_config_from_hf(odd), Error);
}

TEST(BltEntropy, LoaderIsStrictAboutThePrefix) {
  models::Llama<float> m(blt::entropy_config_from_hf(hf_config()["patcher_config"]));
  const io::SafeTensorsFile f(kDir + "/model.safetensors");
  EXPECT_NO_THROW(blt::load_entropy_model(m, f));
  EXPECT_THROW(blt::load_entropy_model(m, f, "model.local_encoder"), Error);  // wrong subtree: missing keys
  auto p = blt::load_hf_entropy_model<float>(kDir + "/config.json", kDir + "/model.safetensors");
  EXPECT_EQ(p->config.window, 512);
}

TEST(BltEntropy, EntropiesMatchTheFixture) {
  // fixture: HF BltPatcher (plain causal, fp32, Categorical.entropy); all cases < 512 bytes and without EOS,
  // so the original's window/chunk/EOS rules and the HF port agree. Tolerance 1e-4 abs (fp32 model, summation
  // order).
  double worst = 0;
  for (int i = 0; i < kCases; ++i) {
    const std::string pre = "case" + std::to_string(i);
    const V ids = read_ids(pre + ".ids");
    const auto want = read_floats(pre + ".entropies");
    const int64_t T = static_cast<int64_t>(ids.size());
    const auto orig = entropies_w(ids, 1, T, 512, blt::EntropyOptions::original());
    const auto hf = entropies_w(ids, 1, T, 0, blt::EntropyOptions::hf());
    const double e1 = max_abs(orig, want), e2 = max_abs(hf, want);
    EXPECT_LE(e1, 1e-4) << pre;
    EXPECT_LE(e2, 1e-4) << pre;
    worst = std::max({worst, e1, e2});
  }
  std::cout << "[blt] entropy max abs error vs HF fixture (5 cases) = " << worst << "\n";
  ::testing::Test::RecordProperty("entropy_max_abs_err", str(worst));
}

TEST(BltEntropy, DoubleModelAgreesWithTheFixtureToo) {
  // Llama<double> with the same (fp32-stored) weights: its distance to the fixture measures the fixture's own
  // fp32 rounding (the HF reference ran in fp32 on an H100), which bounds what the fp32 model can reach.
  auto m = blt::load_hf_entropy_model<double>(kDir + "/config.json", kDir + "/model.safetensors");
  double worst = 0, f32_vs_f64 = 0;
  for (int i = 0; i < kCases; ++i) {
    const std::string pre = "case" + std::to_string(i);
    const V ids = read_ids(pre + ".ids");
    const int64_t T = static_cast<int64_t>(ids.size());
    const auto h64 = blt::entropies(*m, ids.data(), 1, T);
    worst = std::max(worst, max_abs(h64, read_floats(pre + ".entropies")));
    f32_vs_f64 = std::max(f32_vs_f64, max_abs(h64, entropies_w(ids, 1, T, 512)));
  }
  std::cout << "[blt] entropy max abs error: fp64 model vs HF fixture " << worst << ", fp64 vs our fp32 "
            << f32_vs_f64 << "\n";
  EXPECT_LE(worst, 1e-4);
  EXPECT_LE(f32_vs_f64, 1e-4);
}

TEST(BltEntropy, FromLogitsIsTheSoftmaxEntropyInNats) {
  const float uniform[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  const float peaked[3] = {1000.f, 0.f, 0.f};  // stable for huge logits
  const float two[2] = {0.f, std::log(3.f)};   // p = (1/4, 3/4)
  float h[3];
  blt::entropies_from_logits(uniform, 1, 4, h);
  blt::entropies_from_logits(peaked, 1, 3, h + 1);
  blt::entropies_from_logits(two, 1, 2, h + 2);
  EXPECT_NEAR(h[0], std::log(4.0), 1e-7);
  EXPECT_NEAR(h[1], 0.0, 1e-7);
  EXPECT_NEAR(h[2], -(0.25 * std::log(0.25) + 0.75 * std::log(0.75)), 1e-7);
}

TEST(BltEntropy, PatchLengthsExactlyMatchTheFixture) {
  // HF rule: global threshold (config.json patching_threshold), positions 0, 1 forced, lengths sum to N with
  // a trailing zero-length patch when H_{N-1} > threshold (cases 3 and 4).
  const auto p = EntropyPatcher::from_hf(hf_config());
  EXPECT_DOUBLE_EQ(p.threshold, 0.9027012586593628);
  EXPECT_EQ(p.next, NextByte::kHf);
  EXPECT_EQ(p.max_patch_length, 0);
  int trailing_empty = 0;
  for (int i = 0; i < kCases; ++i) {
    const std::string pre = "case" + std::to_string(i);
    const V ids = read_ids(pre + ".ids");
    const V want = read_ids(pre + ".patch_lengths");
    // from the fixture's own entropies ...
    EXPECT_EQ(p.patch_lengths(ids, read_floats(pre + ".entropies")), want) << pre;
    // ... and end to end from ours (nearest entropy to the threshold is 8.9e-4 away, our error < 1e-4)
    const auto h = entropies_w(ids, 1, static_cast<int64_t>(ids.size()), 512);
    EXPECT_EQ(p.patch_lengths(ids, h), want) << pre;
    trailing_empty += want.back() == 0;
  }
  EXPECT_EQ(trailing_empty, 2);
}

// ---- entropy model: context rules
// ------------------------------------------------------------------------------

TEST(BltEntropy, WindowOf512LimitsTheContext) {
  // 2 layers x window 512: the entropy at t depends on tokens t - 2*511 .. t only. Check: (a) positions < 512
  // equal the unwindowed model, (b) later positions differ from it, (c) for t >= 1022 the windowed entropy
  // equals the entropy computed on just the last 1023 tokens (so nothing earlier leaks in, and positions are
  // relative).
  const V ids = long_ids(1299);  // 1300 tokens
  const int64_t T = static_cast<int64_t>(ids.size());
  const auto hw = entropies_w(ids, 1, T, 512);
  const auto hf = entropies_w(ids, 1, T, 0);
  const double same = max_abs(subf(hw, 0, 512), subf(hf, 0, 512)),
               diff = max_abs(subf(hw, 512, T), subf(hf, 512, T));
  std::cout << "[blt] window 512 vs none: positions < 512 max diff " << same << ", positions >= 512 max diff "
            << diff << "\n";
  EXPECT_LE(same, 1e-5);
  EXPECT_GT(diff, 1e-2);
  double ctx_err = 0;
  const int64_t reach = 2 * 511;
  for (int64_t t : {reach, reach + 1, int64_t{1100}, T - 1}) {
    const V ctx = sub(ids, t - reach, t + 1);
    const auto hc = entropies_w(ctx, 1, reach + 1, 512);
    EXPECT_NEAR(hc.back(), hw[t], 1e-5) << "t=" << t;
    ctx_err = std::max(ctx_err, static_cast<double>(std::abs(hc.back() - hw[t])));
    EXPECT_GT(std::abs(hf[t] - hw[t]), 0.0) << "t=" << t;
  }
  std::cout << "[blt] windowed entropy vs last-1023-token context: max diff " << ctx_err << "\n";
}

// Pieces of equal length are batched into one forward; a [2, 100] GEMM rounds differently from a [1, 100] one
// and the fixture's lm_head (x8) amplifies logit rounding, so batched vs single pieces agree to ~5e-6, not
// bitwise. kPieceTol leaves margin; any leakage between pieces changes entropies by > 1e-3.
constexpr double kPieceTol = 3e-5;

TEST(BltEntropy, ChunkingRestartsTheContext) {
  // the reference resets the context every 8192 tokens (positions restart); checked with a smaller chunk
  EXPECT_EQ(blt::EntropyOptions{}.chunk, 8192);
  const V ids = long_ids(249);  // 250 tokens
  blt::EntropyOptions opt;
  opt.chunk = 100;
  const auto h = entropies_w(ids, 1, 250, 512, opt);
  for (int64_t c0 : {0, 100, 200}) {
    const int64_t c1 = std::min<int64_t>(250, c0 + 100);
    const auto piece = entropies_w(sub(ids, c0, c1), 1, c1 - c0, 512, blt::EntropyOptions::hf());
    EXPECT_LE(max_abs(subf(h, c0, c1), piece), kPieceTol) << "chunk at " << c0;
  }
  const auto whole = entropies_w(ids, 1, 250, 512, blt::EntropyOptions::hf());
  EXPECT_GT(max_abs(subf(h, 100, 250), subf(whole, 100, 250)), 1e-3);
}

TEST(BltEntropy, EosEndsADocument) {
  V ids = long_ids(79);  // 80 tokens; EOS at 40: tokens 41.. see nothing up to and including it
  ids[40] = blt::EOS;
  const auto h = entropies_w(ids, 1, 80, 512, blt::EntropyOptions::original());
  const auto first = entropies_w(sub(ids, 0, 41), 1, 41, 512, blt::EntropyOptions::hf());
  const auto second = entropies_w(sub(ids, 41, 80), 1, 39, 512, blt::EntropyOptions::hf());
  EXPECT_LE(max_abs(subf(h, 0, 41), first), kPieceTol);
  EXPECT_LE(max_abs(subf(h, 41, 80), second), kPieceTol);
  const auto hf = entropies_w(ids, 1, 80, 512, blt::EntropyOptions::hf());  // HF: no cut
  EXPECT_GT(max_abs(subf(hf, 41, 80), second), 1e-3);
  const auto segs = blt::entropy_segments(ids.data(), 1, 80, blt::EntropyOptions::original());
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[1].begin, 41);
}

TEST(BltEntropy, BatchRowsAreIndependent) {
  // issue #123: the reference flattens the batch, so identical prompts get different patches. Here every row
  // equals its single-row computation, and identical rows give identical entropies and patches.
  const V a = read_ids("case0.ids");  // 79 tokens
  const V b = sub(read_ids("case3.ids"), 0, 79);
  V batch = a;
  batch.insert(batch.end(), b.begin(), b.end());
  batch.insert(batch.end(), a.begin(), a.end());
  const auto h = entropies_w(batch, 3, 79, 512);
  const auto ha = entropies_w(a, 1, 79, 512), hb = entropies_w(b, 1, 79, 512);
  EXPECT_LE(max_abs(subf(h, 0, 79), ha), kPieceTol);
  EXPECT_LE(max_abs(subf(h, 79, 158), hb), kPieceTol);
  EXPECT_LE(max_abs(subf(h, 158, 237), ha), kPieceTol);
  const auto p = EntropyPatcher::from_hf(hf_config());
  const auto pb = patchers::patch_batch(p, batch.data(), 3, 79, h.data());
  EXPECT_EQ(pb.batch, 3);
  const V want = read_ids("case0.patch_lengths");
  for (int r : {0, 2}) {
    const auto row = pb.row(r);
    EXPECT_EQ(V(row.begin(), row.begin() + static_cast<int64_t>(want.size())), want) << "row " << r;
  }
  // forward-size batching must not change results: one token budget per row gives the same numbers
  blt::EntropyOptions small;
  small.max_tokens = 79;
  EXPECT_LE(max_abs(entropies_w(batch, 3, 79, 512, small), h), kPieceTol);
  EXPECT_THROW(entropies_w(V{1, 5, 260}, 1, 3, 512), Error);
}

// ---- entropy patcher rules (hand-made)
// -------------------------------------------------------------------------

TEST(EntropyPatcher, GlobalThresholdAndTheLastPatch) {
  const V ids(6, 10);
  EntropyPatcher p;
  p.threshold = 1.0;
  // H_0 is discarded; H_2 = 2 starts byte 3, H_4 = 3 starts byte 5; H = threshold does not (strict >)
  const std::vector<float> h = {9, 0.5f, 2.0f, 0.1f, 3.0f, 0.2f};
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 2, 2, 1}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 2, 2, 2}));
  p.next = NextByte::kExclude;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 2, 2, 1}));
  // H_5 > threshold proposes a start at N = 6
  const std::vector<float> g = {9, 0.5f, 2.0f, 0.1f, 3.0f, 1.5f};
  p.next = NextByte::kHf;
  EXPECT_EQ(p.patch_lengths(ids, g), (V{1, 2, 2, 1, 0}));
  EXPECT_EQ(p.patch_starts(ids, g), (std::vector<uint8_t>{1, 1, 0, 1, 0, 1, 1}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(ids, g), (V{1, 2, 2, 1, 1}));
  p.next = NextByte::kExclude;
  EXPECT_EQ(p.patch_lengths(ids, g), (V{1, 2, 2, 1}));
  // equality is not above the threshold
  p.next = NextByte::kHf;
  EXPECT_EQ(p.patch_lengths(V(3, 10), std::vector<float>{9, 1.0f, 1.0f}), (V{1, 2}));
  // one id (BOS only): HF gives [1, 0], the original [1] (sum N) or [1, 1] (sum N+1)
  EXPECT_EQ(p.patch_lengths(V{1}, std::vector<float>{5}), (V{1, 0}));
  p.next = NextByte::kExclude;
  EXPECT_EQ(p.patch_lengths(V{1}, std::vector<float>{5}), (V{1}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(V{1}, std::vector<float>{5}), (V{1, 1}));
  EXPECT_THROW(p.patch_lengths(ids, std::vector<float>{1, 2}), Error);  // entropies missing
}

TEST(EntropyPatcher, MonotonicRule) {
  // start at p iff H_{p-1} - H_{p-2} > 0.5; p = 2 always starts (original quirk)
  const V ids(7, 10);
  const std::vector<float> h = {0, 1.0f, 0.2f, 1.0f, 1.2f, 0.3f, 2.0f};
  EntropyPatcher p;
  p.rule = EntropyPatcher::Rule::kMonotonic;
  p.threshold = 0.5;
  p.next = NextByte::kExclude;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 1, 2, 3}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 1, 2, 3, 1}));
  p.next = NextByte::kHf;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 1, 2, 3, 0}));
}

TEST(EntropyPatcher, GlobalAndMonotonicRule) {
  // start iff increase > 0.5 and H > 1; p = 2 always, p = 3 never (H_2 = 5 would qualify)
  const V ids(8, 10);
  const std::vector<float> h = {0, 0.1f, 5.0f, 3.0f, 4.0f, 4.2f, 0.0f, 2.0f};
  const auto p = EntropyPatcher::from_original(
      {{"threshold", 1.0}, {"threshold_add", 0.5}, {"monotonicity", false}, {"max_patch_length", nullptr}},
      NextByte::kExclude);
  EXPECT_EQ(p.rule, EntropyPatcher::Rule::kGlobalAndMonotonic);
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 1, 3, 3}));
  auto q = p;
  q.next = NextByte::kInclude;
  EXPECT_EQ(q.patch_lengths(ids, h), (V{1, 1, 3, 3, 1}));
  // the released patcher_args: global rule, include_next_token for the model forward
  const auto r = EntropyPatcher::from_original({{"patching_mode", "entropy"},
                                                {"threshold", 1.335442066192627},
                                                {"threshold_add", nullptr},
                                                {"monotonicity", false},
                                                {"max_patch_length", nullptr}});
  EXPECT_EQ(r.rule, EntropyPatcher::Rule::kGlobal);
  EXPECT_EQ(r.next, NextByte::kInclude);
  EXPECT_EQ(r.max_patch_length, 0);
}

TEST(EntropyPatcher, MaxPatchLengthSplitsGreedily) {
  V ids(12, 10);
  std::vector<float> h(12, 0.0f);
  h[7] = 2.0f;  // start at 8
  EntropyPatcher p;
  p.threshold = 1.0;
  p.next = NextByte::kExclude;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 7, 4}));
  p.max_patch_length = 3;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 3, 3, 1, 3, 1}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 3, 3, 1, 3, 2}));
  // HF: the split drops zero-length patches, so the trailing empty patch disappears
  h[11] = 2.0f;
  p.next = NextByte::kHf;
  p.max_patch_length = 0;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 7, 4, 0}));
  p.max_patch_length = 3;
  EXPECT_EQ(p.patch_lengths(ids, h), (V{1, 3, 3, 1, 3, 1}));
  EXPECT_EQ(EntropyPatcher::from_hf({{"patching_threshold", 1.0}, {"max_patch_length", 6}}).max_patch_length,
            6);
  EXPECT_THROW(EntropyPatcher::from_hf({{"patching_mode", "space"}, {"patching_threshold", 1.0}}), Error);
  EXPECT_THROW(EntropyPatcher::from_hf(nlohmann::json::object()), Error);  // no threshold
}

// ---- space and static patchers
// ---------------------------------------------------------------------------------

TEST(SpacePatcher, StartsAfterTheFirstSpaceLikeByteOfARun) {
  patchers::SpacePatcher p;
  p.next = NextByte::kExclude;
  // [BOS] "ab," " cd " " e": ',' (3) starts 4; ' ' at 4 follows ','; ' ' at 7 starts 8; 8 follows 7
  const V ids = blt::encode("ab, cd  e");
  EXPECT_EQ(p.patch_lengths(ids), (V{1, 3, 4, 2}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(ids), (V{1, 3, 4, 3}));
  // a trailing space proposes a start at N
  p.next = NextByte::kExclude;
  EXPECT_EQ(p.patch_lengths(blt::encode("ab ")), (V{1, 3}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(blt::encode("ab ")), (V{1, 3, 1}));
  p.next = NextByte::kHf;
  EXPECT_EQ(p.patch_lengths(blt::encode("ab ")), (V{1, 3, 0}));
  // UTF-8 lead bytes (C3) are space-like, continuation bytes (A9) are not: "xéy" splits inside é
  p.next = NextByte::kExclude;
  EXPECT_EQ(p.patch_lengths(blt::encode("x\xc3\xa9y")), (V{1, 2, 2}));
  // ids < 4 always count, even in a run
  EXPECT_EQ(p.patch_lengths(V{1, 2, 1, 117}), (V{1, 1, 1, 1}));
  EXPECT_TRUE(patchers::space_like(4 + '\n'));
  EXPECT_TRUE(patchers::space_like(4 + 0xF0));
  EXPECT_FALSE(patchers::space_like(4 + 'Q'));
  EXPECT_FALSE(patchers::space_like(4 + 0x9F));
}

TEST(StaticPatcher, FixedSizePatches) {
  const V ids(10, 10);
  patchers::StaticPatcher p;
  p.patch_size = 4;
  EXPECT_EQ(p.patch_lengths(ids), (V{4, 4, 2}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(ids), (V{4, 4, 3}));
  p.bos_alone = true;
  EXPECT_EQ(p.patch_lengths(ids), (V{1, 4, 4, 2}));
  p.next = NextByte::kExclude;
  EXPECT_EQ(p.patch_lengths(ids), (V{1, 4, 4, 1}));
  p = {};
  p.patch_size = 5;
  EXPECT_EQ(p.patch_lengths(ids), (V{5, 5}));
  p.next = NextByte::kInclude;
  EXPECT_EQ(p.patch_lengths(ids), (V{5, 5, 1}));
  p = {};
  p.patch_size = 1;  // byte patching
  EXPECT_EQ(p.patch_lengths(V(3, 10)), (V{1, 1, 1}));
  p.patch_size = 0;
  EXPECT_THROW(p.patch_lengths(ids), Error);
}

// ---- patch ids, batches, the variant
// ---------------------------------------------------------------------------

TEST(Patchers, PatchIdsFromLengths) {
  EXPECT_EQ(patchers::patch_ids_from_lengths(V{1, 3, 2}, 6), (V{0, 1, 1, 1, 2, 2}));
  // a trailing empty patch owns no byte; positions past the end clamp to the last patch (HF semantics)
  EXPECT_EQ(patchers::patch_ids_from_lengths(V{1, 2, 0}, 4), (V{0, 1, 1, 2}));
  EXPECT_EQ(patchers::patch_ids_from_lengths(V{1, 2, 0}, 3), (V{0, 1, 1}));
  // decoder mapping: lengths[1:] of a sum-N+1 patching (include_next_token)
  EXPECT_EQ(patchers::patch_ids_from_lengths(V{3, 2}, 4), (V{0, 0, 0, 1}));
  // batch form over zero-padded rows
  const V lengths = {1, 2, 1, 1, 3, 0};
  V out(8);
  patchers::patch_ids_from_lengths(lengths.data(), 2, 3, 4, out.data());
  EXPECT_EQ(out, (V{0, 1, 1, 2, 0, 1, 1, 1}));
  EXPECT_THROW(patchers::patch_ids_from_lengths(V{1, -1}, 2), Error);
  EXPECT_EQ(patchers::starts_from_lengths(V{1, 2, 0}), (V{0, 1, 3}));
}

TEST(Patchers, BatchAndVariant) {
  const V ids = {1, 101, 102, 36, 103, 1, 104, 105, 106, 107};  // [2, 5]: "ab c", "defg"
  patchers::AnyPatcher sp = patchers::SpacePatcher{NextByte::kExclude, 0};
  const auto pb = patchers::patch_batch(sp, ids.data(), 2, 5);
  EXPECT_EQ(pb.n_patches, 3);
  EXPECT_EQ(pb.lengths, (V{1, 3, 1, 1, 4, 0}));  // row 1 right-padded with a zero-length patch
  patchers::AnyPatcher st = patchers::StaticPatcher{2, true, NextByte::kInclude};
  EXPECT_EQ(patchers::patch_lengths(st, V(5, 10)), (V{1, 2, 2, 1}));
  EXPECT_EQ(patchers::patch_starts(st, V(5, 10)), (std::vector<uint8_t>{1, 1, 0, 1, 0, 1}));
}
