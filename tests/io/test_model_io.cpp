// Model checkpoints by reflected parameter name: round trip, every load error, dtype conversion on load.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "support/temp_dir.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/io/model_io.hpp"

using namespace tessera;
using namespace tessera::io;

using tessera::testing::TempDir;

namespace {

template <class T>
struct Leaf {
  struct Params {
    BOOST_HANA_DEFINE_STRUCT(Params, (Param<T>, weight), (Param<T>, bias));
  };
  Params params;
};

/// a: Leaf with weight [2,3] and bias [2]; b: Leaf with weight [4] and no bias (absent from the walk).
template <class T>
struct Net {
  Leaf<T> a, b;
  Net() {
    a.params.weight.resize({2, 3});
    a.params.bias.resize({2});
    b.params.weight.resize({4});
  }
  template <class F>
  void for_each_child(F&& f) {
    f("a", a);
    f("b", b);
  }
};

/// n leaves named "0", "1", ... each with weight [1] and bias [1].
struct Stack {
  std::vector<Leaf<float>> layers;
  explicit Stack(int n) : layers(static_cast<size_t>(n)) {
    for (auto& l : layers) {
      l.params.weight.resize({1});
      l.params.bias.resize({1});
    }
  }
  template <class F>
  void for_each_child(F&& f) {
    for (size_t i = 0; i < layers.size(); ++i) f(std::to_string(i), layers[i]);
  }
};

template <class M>
void fill(M& m, uint64_t seed) {
  Rng rng(seed);
  for_each_param(m, [&](const std::string&, auto& p) {
    for (auto& v : p.value) v = static_cast<std::remove_reference_t<decltype(v)>>(rng.normal());
  });
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

#define EXPECT_HAS(msg, phrase) EXPECT_NE((msg).find(phrase), std::string::npos) << "expected '" << (phrase) << "' in: " << (msg)

}  // namespace

TEST(ModelIo, SaveLoadRoundTripWithPrefix) {
  TempDir tmp;
  const std::string path = tmp.file("net.safetensors");
  Net<float> src;
  fill(src, 7);
  save_model(src, path, "model", {{"step", "12"}});

  SafeTensorsFile f(path);
  std::vector<std::string> names;
  for (const auto& t : f.tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"model.a.weight", "model.a.bias", "model.b.weight"}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("step"), "12");
  EXPECT_EQ(f.info("model.a.weight").dtype, DType::F32);

  Net<float> dst;
  load_model(dst, path, "model");
  for (int i = 0; i < 6; ++i) EXPECT_EQ(dst.a.params.weight.value[i], src.a.params.weight.value[i]);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(dst.a.params.bias.value[i], src.a.params.bias.value[i]);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(dst.b.params.weight.value[i], src.b.params.weight.value[i]);

  // Without a prefix the keys are the bare names.
  save_model(src, tmp.file("bare.safetensors"));
  EXPECT_TRUE(SafeTensorsFile(tmp.file("bare.safetensors")).contains("a.weight"));
  // A double model saves F64 and loads into float (narrowing is a plain conversion).
  Net<double> dsrc;
  fill(dsrc, 8);
  save_model(dsrc, tmp.file("double.safetensors"));
  EXPECT_EQ(SafeTensorsFile(tmp.file("double.safetensors")).info("a.bias").dtype, DType::F64);
  Net<float> fdst;
  load_model(fdst, tmp.file("double.safetensors"));
  EXPECT_EQ(fdst.a.params.bias.value[1], static_cast<float>(dsrc.a.params.bias.value[1]));
}

TEST(ModelIo, LoadsBf16F16AndF64IntoFloat) {
  TempDir tmp;
  const std::string path = tmp.file("bf16.safetensors");
  auto w = make_tensor<float>({2, 3}, {1.f + 0x1p-8f, 1.f + 3 * 0x1p-8f, -0.1f, 3.f, 1e-3f, -65.f});
  SafeTensorsWriter wr;
  wr.add_converted("a.weight", w, DType::BF16);
  wr.add_converted("a.bias", make_tensor<float>({2}, {0.25f, -0.1f}), DType::F16);
  wr.add_converted("b.weight", make_tensor<float>({4}, {1.f, 2.f, 3.f, 4.f}), DType::F64);
  wr.write(path);

  Net<float> m;
  load_model(m, path);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(m.a.params.weight.value[i], static_cast<float>(bf16(w[i]))) << i;
  EXPECT_EQ(m.a.params.weight.value[0], 1.f);           // tie to even
  EXPECT_EQ(m.a.params.weight.value[1], 1.f + 0x1p-6f);  // tie to even (up)
  EXPECT_EQ(m.a.params.bias.value[0], 0.25f);
  EXPECT_EQ(m.a.params.bias.value[1], half_to_float(float_to_half(-0.1f)));
  EXPECT_NE(m.a.params.bias.value[1], -0.1f);  // really went through f16
  EXPECT_EQ(m.b.params.weight.value[3], 4.f);
}

TEST(ModelIo, MissingKeysAreAllListed) {
  TempDir tmp;
  const std::string path = tmp.file("partial.safetensors");
  SafeTensorsWriter w;
  w.add("a.bias", make_tensor<float>({2}, {1, 2}));
  w.write(path);
  Net<float> m;
  const std::string msg = error_of([&] { load_model(m, path); });
  EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
  EXPECT_HAS(msg, "2 missing keys: 'a.weight', 'b.weight'");
  EXPECT_EQ(msg.find("unexpected"), std::string::npos) << msg;

  // Many missing keys: the first 10 are shown, then a count.
  Stack s(8);
  const std::string many = error_of([&] { load_model(s, path, "stack"); });
  EXPECT_HAS(many, "(prefix 'stack')");
  EXPECT_HAS(many, "16 missing keys: 'stack.0.weight', 'stack.0.bias', 'stack.1.weight'");
  EXPECT_HAS(many, "'stack.4.bias' (and 6 more)");
  EXPECT_EQ(many.find("'stack.5.weight'"), std::string::npos) << many;
}

TEST(ModelIo, UnexpectedKeysUnderThePrefixAreListed) {
  TempDir tmp;
  const std::string path = tmp.file("extra.safetensors");
  Net<float> src;
  fill(src, 1);
  SafeTensorsWriter w;
  for_each_param(src, "m", [&](const std::string& n, auto& p) { w.add(n, p.value); });
  w.add("m.b.bias", make_tensor<float>({4}, {0, 0, 0, 0}));  // the model has no b.bias
  w.add("m.c.weight", make_tensor<float>({1}, {0}));
  w.add("mx.weight", make_tensor<float>({1}, {0}));   // not under "m."
  w.add("other.weight", make_tensor<float>({1}, {0}));
  w.write(path);

  Net<float> m;
  const std::string msg = error_of([&] { load_model(m, path, "m"); });
  EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
  EXPECT_HAS(msg, "2 unexpected keys: 'm.b.bias', 'm.c.weight'");
  EXPECT_EQ(msg.find("other.weight"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("mx.weight"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("missing"), std::string::npos) << msg;
  // Nothing was loaded: the model is unchanged (still zero).
  for (float v : m.a.params.weight.value) EXPECT_EQ(v, 0.f);
}

TEST(ModelIo, ShapeAndDtypeMismatchesNameKeyAndShapes) {
  TempDir tmp;
  const std::string path = tmp.file("shape.safetensors");
  SafeTensorsWriter w;
  w.add("a.weight", make_tensor<float>({3, 2}, {1, 2, 3, 4, 5, 6}));
  w.add("a.bias", make_tensor<float>({2}, {1, 2}));
  w.add("b.weight", make_tensor<int64_t>({4}, {1, 2, 3, 4}));
  w.write(path);
  Net<float> m;
  const std::string msg = error_of([&] { load_model(m, SafeTensorsFile(path)); });
  EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
  EXPECT_HAS(msg, "'a.weight' expected shape [2, 3], found [3, 2]");
  EXPECT_HAS(msg, "'b.weight' is stored as I64 but the model holds float");
  EXPECT_HAS(msg, "2 mismatched tensors");
  for (float v : m.a.params.bias.value) EXPECT_EQ(v, 0.f);  // all-or-nothing
}
