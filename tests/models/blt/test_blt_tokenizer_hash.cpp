// BLT byte tokenizer and hash n-gram embeddings (spec blt.md §1, §3) against hand-computed values, the spec's
// test vectors and the Hugging Face fixture tests/fixtures/blt-hf-tiny (transformers 5.17, fp32).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"
#include "tessera/io/json_config.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/blt/hash_embedding.hpp"
#include "tessera/models/blt/tokenizer.hpp"

using namespace tessera;

namespace {

const std::string kDir = std::string(TESSERA_TEST_FIXTURES) + "/blt-hf-tiny";

const io::SafeTensorsFile& cases() {
  static const io::SafeTensorsFile f(kDir + "/cases.safetensors");
  return f;
}
const io::SafeTensorsFile& weights() {
  static const io::SafeTensorsFile f(kDir + "/model.safetensors");
  return f;
}
const nlohmann::json& hf_config() {
  static const nlohmann::json j = io::read_json_file(kDir + "/config.json");
  return j;
}
constexpr int kCases = 5;

std::vector<int64_t> read_ids(const std::string& name) {
  const Tensor<int64_t> t = cases().read<int64_t>(name);
  return {t.begin(), t.end()};
}

/// The raw bytes of case i (its text, stored as hex in the header metadata).
std::string case_bytes(int i) {
  const auto info = nlohmann::json::parse(cases().metadata().at("info"));
  const std::string hex = info["cases"][i]["bytes_hex"].get<std::string>();
  std::string out;
  for (size_t k = 0; k + 1 < hex.size(); k += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(k, 2), nullptr, 16)));
  return out;
}

}  // namespace

// ---- tokenizer
// ------------------------------------------------------------------------------------------------

TEST(BltTokenizer, EncodeIsBytePlusFourWithOptionalBosEos) {
  EXPECT_EQ(blt::VOCAB_SIZE, 260);
  EXPECT_EQ(blt::encode("Hi"), (std::vector<int64_t>{1, 76, 109}));
  EXPECT_EQ(blt::encode("Hi", false, true), (std::vector<int64_t>{76, 109, 2}));
  EXPECT_EQ(blt::encode("", true, true), (std::vector<int64_t>{1, 2}));
  // é = C3 A9; the extreme byte values map to 4 and 259
  EXPECT_EQ(blt::encode("\xc3\xa9", false), (std::vector<int64_t>{199, 173}));
  EXPECT_EQ(blt::encode(std::string("\x00\xff", 2), false), (std::vector<int64_t>{4, 259}));
}

TEST(BltTokenizer, EncodeMatchesTheFixtureIdsForAllCases) {
  for (int i = 0; i < kCases; ++i)  // case 4 is 120 arbitrary bytes (invalid UTF-8)
    EXPECT_EQ(blt::encode(case_bytes(i)), read_ids("case" + std::to_string(i) + ".ids")) << "case " << i;
}

TEST(BltTokenizer, RawDecodeRoundTripsEveryByteSequence) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(blt::decode(blt::encode(all, true, true)), all);
  const std::string invalid = "a\xff\xc3(\xe6\x97\x80\xbf";
  EXPECT_EQ(blt::decode(blt::encode(invalid)), invalid);
  const std::string c4 = case_bytes(4);
  EXPECT_EQ(blt::decode(read_ids("case4.ids")), c4);
}

TEST(BltTokenizer, DecodeDropsSpecialIdsAndRejectsOutOfVocab) {
  // BOE, BOS, EOS, BPE and the generation buffer's -1 are dropped
  EXPECT_EQ(blt::decode(std::vector<int64_t>{0, 1, 76, 2, 3, 109, -1}), "Hi");
  EXPECT_THROW(blt::decode(std::vector<int64_t>{1, 76, 260}), Error);
  try {
    blt::decode(std::vector<int64_t>{1, 76, 300});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 2"), std::string::npos) << e.what();
  }
}

TEST(BltTokenizer, Utf8IgnoreMatchesPythonDecodeErrorsIgnore) {
  // expected values: Python 3 bytes.decode("utf-8", "ignore").encode()
  const std::vector<std::pair<std::string, std::string>> v = {
      {"abc", "abc"},
      {"\xe6\x97\xa5", "\xe6\x97\xa5"},  // 日
      {"\xe6\x97"
       "A",
       "A"},         // truncated 3-byte sequence
      {"\xc3", ""},  // lone lead byte at the end
      {"a\x80"
       "b",
       "ab"},                                    // stray continuation byte
      {"\xed\xa0\x80z", "z"},                    // surrogate D800
      {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},  // 😀
      {"\xf4\x90\x80\x80!", "!"},                // above U+10FFFF
      {"\xc0\xaf", ""},                          // overlong '/'
      {"\xe0\x80\xaf", ""},                      // overlong 3-byte
      {"\xf0\x9f\x98", ""},                      // truncated 4-byte
      {"\xff\xfe", ""},
      {"x\xe2\x82\xacy\xf5", "x\xe2\x82\xacy"},  // € kept, F5 dropped
  };
  for (const auto& [in, want] : v) {
    EXPECT_EQ(blt::utf8_ignore_invalid(in), want);
    EXPECT_EQ(blt::decode_utf8_ignore(blt::encode(in, true, true)), want);
  }
  // valid UTF-8 (fixture cases 0-3: English, mixed scripts + emoji, code, dictionary) is unchanged
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(blt::decode_utf8_ignore(read_ids("case" + std::to_string(i) + ".ids")), case_bytes(i));
}

// ---- hash n-gram ids
// -------------------------------------------------------------------------------------------

TEST(BltHash, SpecTestVectorsWithTheReleasedTableSize) {
  // spec §3: fixtures/tokens_with_entropies.json ids, prime 1000000007, M = 500002, positions 0..5
  const std::vector<int64_t> ids = {1, 72, 101, 105, 114, 105, 118, 125, 119, 36, 88, 101};
  const std::vector<std::vector<int64_t>> want = {
      {443987, 348935, 37502, 294216, 274140, 242340}, {437197, 281585, 189712, 127061, 29038, 267201},
      {123201, 79613, 382808, 283737, 426389, 123063}, {166353, 302503, 241104, 306205, 90295, 349786},
      {34117, 201753, 20286, 95355, 64005, 444548},    {172383, 323061, 340750, 41807, 150805, 85526}};
  std::vector<int64_t> out(ids.size());
  for (int n = 3; n <= 8; ++n) {
    blt::hash_ngram_ids(ids.data(), static_cast<int64_t>(ids.size()), n, 500002, out.data());
    for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i], want[n - 3][i]) << "n=" << n << " position " << i;
  }
}

TEST(BltHash, WrapAroundAndFloorModulo) {
  // window (0,0,0,1) -> 1 * P^3; P^3 wraps to -4377642754154037417 as int64, whose floor-mod 500002 is 437197
  // (a truncating % would give a negative id).
  const int64_t one = 1;
  int64_t out = -1;
  blt::hash_ngram_ids(&one, 1, 4, 500002, &out);
  EXPECT_EQ(out, 437197);
  // every id lands in [0, M) for large ids and both signs of the wrapped sum
  std::vector<int64_t> ids(200), h(200);
  for (int i = 0; i < 200; ++i) ids[i] = (i * 37 + 11) % 260;
  for (int64_t M : {1, 7, 1009, 500002})
    for (int n : {1, 3, 8}) {
      blt::hash_ngram_ids(ids.data(), 200, n, M, h.data());
      for (int i = 0; i < 200; ++i) ASSERT_TRUE(h[i] >= 0 && h[i] < M) << "M=" << M << " n=" << n;
    }
  // n = 1 is the id itself modulo M (P^0 = 1)
  blt::hash_ngram_ids(ids.data(), 200, 1, 1009, h.data());
  for (int i = 0; i < 200; ++i) EXPECT_EQ(h[i], ids[i] % 1009);
}

TEST(BltHash, FixtureHashIdsExactlyEqual) {
  const auto c = blt::HashConfig::from_hf(hf_config());
  ASSERT_EQ(c.group_sizes, (std::vector<int64_t>{3, 4, 5, 6, 7, 8}));
  ASSERT_EQ(c.table_size, 1009);
  ASSERT_EQ(c.n_tables(), 6);
  ASSERT_EQ(c.dim, 64);
  int64_t compared = 0;
  for (int i = 0; i < kCases; ++i) {
    const std::string pre = "case" + std::to_string(i);
    const auto ids = read_ids(pre + ".ids");
    std::vector<int64_t> out(ids.size());
    for (int n = 3; n <= 8; ++n) {
      blt::hash_ngram_ids(ids.data(), static_cast<int64_t>(ids.size()), n, c.table_size, out.data());
      EXPECT_EQ(out, read_ids(pre + ".hash" + std::to_string(n))) << pre << " n=" << n;
      compared += static_cast<int64_t>(ids.size());
    }
  }
  EXPECT_EQ(compared, 6 * (79 + 97 + 166 + 119 + 121));
}

TEST(BltHash, BatchRowsAreHashedIndependently) {
  // row 1 must restart with zero history (not continue from row 0)
  const std::vector<int64_t> ids = {1, 50, 60, 70, 80, 1, 90, 100, 110, 120};
  std::vector<int64_t> batch(10), row(5);
  blt::hash_ngram_ids_batch(ids.data(), 2, 5, 4, 1009, batch.data());
  for (int b = 0; b < 2; ++b) {
    blt::hash_ngram_ids(ids.data() + 5 * b, 5, 4, 1009, row.data());
    for (int t = 0; t < 5; ++t) EXPECT_EQ(batch[5 * b + t], row[t]);
  }
  std::vector<int64_t> flat(10);
  blt::hash_ngram_ids(ids.data(), 10, 4, 1009, flat.data());
  EXPECT_NE(flat[5], batch[5]);  // the flattened stream would leak row 0's bytes into row 1
}

TEST(BltHash, ConfigErrorsNameTheField) {
  auto j = hf_config();
  j.erase("encoder_hash_byte_group_vocab");
  try {
    blt::HashConfig::from_hf(j);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("encoder_hash_byte_group_vocab"), std::string::npos) << e.what();
  }
  auto k = hf_config();
  k["encoder_hash_byte_group_size"] = nlohmann::json::array({3, 0});
  EXPECT_THROW(blt::HashConfig::from_hf(k), Error);
}

// ---- HashNgramEmbedding
// ----------------------------------------------------------------------------------------

TEST(BltHashEmbedding, NamesAreTheHfKeysWhenPlacedAtModel) {
  blt::HashNgramEmbedding<float> emb(blt::HashConfig::from_hf(hf_config()));
  std::vector<std::pair<std::string, Shape>> got;
  for_each_param(emb, "model", [&](const std::string& n, auto& p) { got.push_back({n, p.value.shape()}); });
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].first, "model.local_encoder.embed_tokens.weight");
  EXPECT_EQ(got[1].first, "model.encoder_hash_tok_embedding.weight");
  // the shapes the fixture stores under those keys: [260, 64] and [6 * 1009, 64]
  for (const auto& [name, shape] : got) EXPECT_EQ(shape, weights().info(name).shape) << name;
}

TEST(BltHashEmbedding, ForwardOnFixtureWeightsEqualsRowsPickedByTheFixtureHashIds) {
  blt::HashNgramEmbedding<float> emb(blt::HashConfig::from_hf(hf_config()));
  for_each_param(emb, "model", [&](const std::string& n, auto& p) {
    weights().read_into(n, p.value.data(), p.value.numel());
  });
  const auto E = weights().read<float>("model.local_encoder.embed_tokens.weight");
  const auto H = weights().read<float>("model.encoder_hash_tok_embedding.weight");
  const int64_t D = 64, M = 1009;
  for (int i = 0; i < kCases; ++i) {
    const std::string pre = "case" + std::to_string(i);
    const auto ids = read_ids(pre + ".ids");
    const int64_t T = static_cast<int64_t>(ids.size());
    Tensor<float> y;
    blt::HashNgramEmbedding<float>::Saved s;
    emb.forward(ids.data(), 1, T, y, s);
    ASSERT_EQ(y.shape(), Shape({T, D}));
    // reference: byte row + the rows the HF port picked (fixture hash ids + table offset), summed in that
    // order
    std::vector<std::vector<int64_t>> hid;
    for (int n = 3; n <= 8; ++n) hid.push_back(read_ids(pre + ".hash" + std::to_string(n)));
    double err = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < D; ++d) {
        float ref = E[ids[t] * D + d];
        for (int k = 0; k < 6; ++k) ref += H[(hid[k][t] + k * M) * D + d];
        err = std::max(err, static_cast<double>(std::abs(ref - y[t * D + d])));
      }
    EXPECT_EQ(err, 0.0) << pre;  // same additions in the same order: bit-identical
  }
}

TEST(BltHashEmbedding, GradientsMatchFiniteDifferences) {
  blt::HashConfig c;
  c.group_sizes = {2, 3};
  c.n_functions = 2;  // 4 tables; the second function uses the second prime
  c.table_size = 5;   // tiny tables so that rows collide and gradients accumulate
  c.vocab_size = 9;
  c.dim = 3;
  blt::HashNgramEmbedding<double> emb(c);
  Rng rng(3);
  for_each_param(emb, [&](const std::string&, auto& p) { tessera::testing::fill_normal(p.value, rng, 0.5); });
  const std::vector<int64_t> ids = {1, 4, 8, 8, 5, 1, 7, 4, 4, 6};  // [2, 5]
  Tensor<double> w({10, 3});
  tessera::testing::fill_normal(w, rng);
  blt::HashNgramEmbedding<double>::Saved s;
  Tensor<double> y;
  auto loss = [&] {
    emb.forward(ids.data(), 2, 5, y, s);
    double l = 0;
    for (int64_t i = 0; i < y.numel(); ++i) l += y[i] * w[i] + 0.5 * y[i] * y[i];
    return l;
  };
  loss();
  Tensor<double> dy({10, 3});
  for (int64_t i = 0; i < dy.numel(); ++i) dy[i] = w[i] + y[i];
  zero_grads(emb);
  emb.backward(dy.view(), s);
  for_each_param(emb, [&](const std::string& name, auto& p) {
    Tensor<double> g = p.grad.clone();
    tessera::testing::expect_grad_close(name, p.value.data(), g.data(), p.value.numel(), loss, 1e-6, 1e-6,
                                        1e-9);
  });
  // the second function's tables really use another prime: their ids differ from the first function's
  std::vector<int64_t> a(5), b(5);
  blt::hash_ngram_ids(ids.data(), 5, 3, 1009, a.data(), blt::kHashPrimes[0]);
  blt::hash_ngram_ids(ids.data(), 5, 3, 1009, b.data(), c.prime(3));
  EXPECT_EQ(c.prime(3), blt::kHashPrimes[1]);
  EXPECT_NE(a, b);
}

TEST(BltHashEmbedding, BadInputsGiveClearErrors) {
  blt::HashConfig c;
  c.table_size = 7;
  c.dim = 2;
  blt::HashNgramEmbedding<float> emb(c);
  Tensor<float> y;
  blt::HashNgramEmbedding<float>::Saved s;
  const std::vector<int64_t> bad = {1, 300};
  try {
    emb.forward(bad.data(), 1, 2, y, s);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("300"), std::string::npos) << e.what();
  }
  blt::HashConfig z = c;
  z.dim = 0;
  EXPECT_THROW(blt::HashNgramEmbedding<float>{z}, Error);
  const std::vector<int64_t> ok = {1, 5};
  emb.forward(ok.data(), 1, 2, y, s);
  EXPECT_THROW(emb.backward(y.view(), s), Error);  // gradients not allocated
}
