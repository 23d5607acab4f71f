// safetensors: round trips of every dtype, conversions on read, metadata, writer layout, and one test per
// validation failure (each error must start with the file path and name the problem).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "support/temp_dir.hpp"
#include "tessera/io/safetensors.hpp"

using namespace tessera;
using namespace tessera::io;

using tessera::testing::TempDir;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

/// A hand-made file: 8-byte length (the real one unless overridden), header text, then `data`.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               uint64_t n_override = ~uint64_t{0}) {
  const uint64_t n = n_override == ~uint64_t{0} ? header.size() : n_override;
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  spit(path, bytes + header + data);
}

/// Opening `path` must throw a tessera::Error starting with the path and containing `phrase`.
void expect_open_error(const std::string& path, const std::string& phrase) {
  try {
    SafeTensorsFile f(path);
    ADD_FAILURE() << "no error for " << path << " (expected '" << phrase << "')";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path, 0), 0u) << "message does not start with the path: " << msg;
    EXPECT_NE(msg.find(phrase), std::string::npos) << "expected '" << phrase << "' in: " << msg;
  }
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

}  // namespace

TEST(SafeTensors, RoundTripEveryDtype) {
  TempDir tmp;
  const std::string path = tmp.file("all.safetensors");
  auto f32 = make_tensor<float>({2, 3}, {1.5f, -2.f, 0.f, 3.25f, 1e-30f, -7e20f});
  auto f64 = make_tensor<double>({3}, {1.0 / 3.0, -1e300, 5e-324});
  Tensor<bf16> b16(Shape{4});
  for (int i = 0; i < 4; ++i) b16[i] = bf16(static_cast<float>(i) * 0.75f - 1.f);
  auto f16src = make_tensor<float>({2, 2}, {0.5f, -2.f, 65504.f, 5.9604645e-08f});  // all exact in f16
  auto i64 = make_tensor<int64_t>({2}, {-(int64_t{1} << 62), 123456789012345});
  auto i32 = make_tensor<int32_t>({3}, {-2147483647 - 1, 0, 2147483647});
  auto u8 = make_tensor<uint8_t>({1, 3}, {0, 128, 255});
  auto bl = make_tensor<bool>({5}, {true, false, false, true, true});
  auto scalar = make_tensor<float>({}, {42.5f});
  Tensor<float> empty(Shape{0, 4});
  Tensor<int32_t> empty_i(Shape{3, 0});

  SafeTensorsWriter w;
  w.add("u8", u8);  // inserted before the wider types: the writer still stores it last
  w.add("f32", f32);
  w.add("f64", f64);
  w.add("bf16", b16);
  w.add_converted("f16", f16src, DType::F16);
  w.add("i64", i64);
  w.add("i32", i32);
  w.add("bool", bl);
  w.add("scalar", scalar);
  w.add("empty", empty);
  w.add("empty_i", empty_i.view());
  w.write(path);

  SafeTensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 11u);
  // Header order is insertion order.
  EXPECT_EQ(f.tensors()[0].name, "u8");
  EXPECT_EQ(f.tensors()[10].name, "empty_i");

  auto check_meta = [&](const char* name, DType d, Shape s) {
    EXPECT_EQ(f.info(name).dtype, d) << name;
    EXPECT_EQ(f.info(name).shape, s) << name;
  };
  check_meta("f32", DType::F32, {2, 3});
  check_meta("f64", DType::F64, {3});
  check_meta("bf16", DType::BF16, {4});
  check_meta("f16", DType::F16, {2, 2});
  check_meta("i64", DType::I64, {2});
  check_meta("i32", DType::I32, {3});
  check_meta("u8", DType::U8, {1, 3});
  check_meta("bool", DType::BOOL, {5});
  check_meta("scalar", DType::F32, {});
  check_meta("empty", DType::F32, {0, 4});
  check_meta("empty_i", DType::I32, {3, 0});

  auto eq = [](const auto& a, const auto& b) {
    ASSERT_EQ(a.shape(), b.shape());
    for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(a[i], b[i]) << "element " << i;
  };
  eq(f.read<float>("f32"), f32);
  eq(f.read<double>("f64"), f64);
  eq(f.read<float>("f16"), f16src);
  eq(f.read<int64_t>("i64"), i64);
  eq(f.read<int32_t>("i32"), i32);
  eq(f.read<uint8_t>("u8"), u8);
  eq(f.read<bool>("bool"), bl);
  const auto s = f.read<float>("scalar");
  EXPECT_EQ(s.rank(), 0);
  EXPECT_EQ(s[0], 42.5f);
  const auto e = f.read<float>("empty");
  EXPECT_EQ(e.shape(), (Shape{0, 4}));
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(f.read<int32_t>("empty_i").shape(), (Shape{3, 0}));
  const auto rb = f.read<bf16>("bf16");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(rb[i].bits, b16[i].bits);
  const auto rbf = f.read<float>("bf16");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(rbf[i], static_cast<float>(i) * 0.75f - 1.f);

  // Layout: buffer starts 8-aligned and each tensor is aligned to its element size; wider dtypes first.
  const std::string bytes = slurp(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  for (const auto& t : f.tensors()) EXPECT_EQ((8 + n + t.begin) % dtype_size(t.dtype), 0u) << t.name;
  EXPECT_EQ(f.info("f64").begin, 0u);
  EXPECT_EQ(f.info("u8").end + 8 + n, bytes.size() - 5);  // only the 5 BOOL bytes follow the U8 data
  // raw() gives the stored bytes.
  const auto raw = f.raw("i32");
  ASSERT_EQ(raw.size(), 12u);
  int32_t first;
  std::memcpy(&first, raw.data(), 4);
  EXPECT_EQ(first, -2147483647 - 1);
}

TEST(SafeTensors, HalfPrecisionConversionsRoundToNearestEven) {
  TempDir tmp;
  const std::string path = tmp.file("conv.safetensors");
  // bf16 keeps 8 significant bits: 1 + 2^-8 ties to even (1.0); 1 + 3*2^-8 ties up to 1 + 2^-6.
  // f16 keeps 11: 1 + 2^-11 -> 1.0, 1 + 3*2^-11 -> 1 + 2^-9.
  auto src = make_tensor<float>({5}, {1.f + 0x1p-8f, 1.f + 3 * 0x1p-8f, 1.f + 0x1p-11f, 1.f + 3 * 0x1p-11f, -3.f});
  SafeTensorsWriter w;
  w.add_converted("b", src, DType::BF16);
  w.add_converted("h", src, DType::F16);
  w.add_converted("d", src, DType::F64);
  w.write(path);
  SafeTensorsFile f(path);
  const auto b = f.read<float>("b");
  EXPECT_EQ(b[0], 1.f);
  EXPECT_EQ(b[1], 1.f + 0x1p-6f);
  EXPECT_EQ(b[2], 1.f);
  EXPECT_EQ(b[3], 1.f);
  EXPECT_EQ(b[4], -3.f);
  const auto bd = f.read<double>("b");  // bf16 -> double is exact too
  EXPECT_EQ(bd[1], 1.0 + 0x1p-6);
  const auto h = f.read<float>("h");
  EXPECT_EQ(h[0], 1.f + 0x1p-8f);  // f16 has 10 fraction bits: 1 + 2^-8 and 1 + 3*2^-8 are exact
  EXPECT_EQ(h[1], 1.f + 3 * 0x1p-8f);
  EXPECT_EQ(h[2], 1.f);
  EXPECT_EQ(h[3], 1.f + 0x1p-9f);
  const auto d = f.read<double>("d");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(d[i], static_cast<double>(src[i]));
  // bf16 target from F32 data rounds on read as well.
  const auto fb = f.read<bf16>("d");
  EXPECT_EQ(static_cast<float>(fb[1]), 1.f + 0x1p-6f);
}

TEST(SafeTensors, IntegerConversionsAndTypeMixingErrors) {
  TempDir tmp;
  const std::string path = tmp.file("ints.safetensors");
  SafeTensorsWriter w;
  w.add("i32", make_tensor<int32_t>({3}, {-5, 0, 7}));
  w.add("u8", make_tensor<uint8_t>({2}, {0, 255}));
  w.add("bool", make_tensor<bool>({2}, {true, false}));
  w.add("big", make_tensor<int64_t>({2}, {1, 300}));
  w.add("w", make_tensor<float>({1}, {1.f}));
  w.write(path);
  SafeTensorsFile f(path);
  const auto a = f.read<int64_t>("i32");
  EXPECT_EQ(a[0], -5);
  EXPECT_EQ(a[2], 7);
  EXPECT_EQ(f.read<int32_t>("u8")[1], 255);
  const auto b = f.read<uint8_t>("bool");
  EXPECT_EQ(b[0], 1);
  EXPECT_EQ(b[1], 0);
  const auto c = f.read<bool>("i32");
  EXPECT_TRUE(c[0]);
  EXPECT_FALSE(c[1]);
  EXPECT_EQ(f.read<int32_t>("big")[1], 300);

  std::string msg = error_of([&] { f.read<uint8_t>("big"); });
  EXPECT_NE(msg.find("tensor 'big'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("value 300 at element 1 does not fit in uint8"), std::string::npos) << msg;
  msg = error_of([&] { f.read<uint8_t>("i32"); });
  EXPECT_NE(msg.find("value -5"), std::string::npos) << msg;
  msg = error_of([&] { f.read<int64_t>("w"); });
  EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
  EXPECT_NE(msg.find("tensor 'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot read F32 data as int64"), std::string::npos) << msg;
  msg = error_of([&] { f.read<float>("i32"); });
  EXPECT_NE(msg.find("cannot read I32 data as float"), std::string::npos) << msg;
  msg = error_of([&] { f.info("nope"); });
  EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
  EXPECT_NE(msg.find("no tensor named 'nope'"), std::string::npos) << msg;
  EXPECT_FALSE(f.contains("nope"));
  EXPECT_TRUE(f.contains("w"));
  float dst[2];
  msg = error_of([&] { f.read_into("w", dst, 2); });
  EXPECT_NE(msg.find("has 1 elements"), std::string::npos) << msg;
}

TEST(SafeTensors, MetadataRoundTrip) {
  TempDir tmp;
  const std::string path = tmp.file("meta.safetensors");
  SafeTensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("note", "α=0.5 \"quoted\"\nline two");
  w.set_metadata("empty", "");
  w.add("x", make_tensor<float>({1}, {2.f}));
  w.write(path);
  SafeTensorsFile f(path);
  const std::map<std::string, std::string> want{
      {"format", "pt"}, {"note", "α=0.5 \"quoted\"\nline two"}, {"empty", ""}};
  EXPECT_EQ(f.metadata(), want);
  EXPECT_EQ(f.tensors().size(), 1u);  // __metadata__ is not a tensor
  // A file without metadata has an empty map.
  SafeTensorsWriter w2;
  w2.add("x", make_tensor<float>({1}, {2.f}));
  w2.write(path);
  EXPECT_TRUE(SafeTensorsFile(path).metadata().empty());
}

TEST(SafeTensors, WriterIsDeterministicAndRejectsDuplicates) {
  TempDir tmp;
  auto build = [](SafeTensorsWriter& w) {
    w.set_metadata("b", "2");
    w.set_metadata("a", "1");
    w.add("z", make_tensor<float>({2}, {1.f, 2.f}));
    w.add("y", make_tensor<int64_t>({1}, {9}));
  };
  SafeTensorsWriter w1, w2;
  build(w1);
  build(w2);
  w1.write(tmp.file("1.safetensors"));
  w2.write(tmp.file("2.safetensors"));
  EXPECT_EQ(slurp(tmp.file("1.safetensors")), slurp(tmp.file("2.safetensors")));
  EXPECT_EQ(w1.header().rfind("{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\"},\"z\":", 0), 0u) << w1.header();

  std::string msg = error_of([&] { w1.add("z", make_tensor<float>({1}, {0.f})); });
  EXPECT_NE(msg.find("duplicate tensor name 'z'"), std::string::npos) << msg;
  msg = error_of([&] { w1.add("__metadata__", make_tensor<float>({1}, {0.f})); });
  EXPECT_NE(msg.find("reserved"), std::string::npos) << msg;
  msg = error_of([&] { w1.add_converted("q", make_tensor<float>({1}, {0.f}), DType::I32); });
  EXPECT_NE(msg.find("cannot convert float data to I32"), std::string::npos) << msg;
  EXPECT_FALSE(w1.contains("q"));  // a failed add leaves no entry behind
  w1.add_converted("q", make_tensor<float>({1}, {0.f}), DType::BF16);
  EXPECT_TRUE(w1.contains("q"));
  // Non-contiguous views are refused.
  auto m = make_tensor<float>({2, 2}, {1, 2, 3, 4});
  msg = error_of([&] { w1.add("t", m.view().transpose(0, 1)); });
  EXPECT_NE(msg.find("not contiguous"), std::string::npos) << msg;
}

TEST(SafeTensors, UnalignedDataAndPaddedHeader) {
  TempDir tmp;
  const std::string path = tmp.file("unaligned.safetensors");
  // A U8 byte first puts the F32 and I64 data at odd offsets; the header is padded with spaces.
  const std::string header =
      R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
      R"("i":{"dtype":"I64","shape":[],"data_offsets":[9,17]}}   )";
  std::string data(17, '\0');
  data[0] = 7;
  const float fv[2] = {3.5f, -1.25f};
  const int64_t iv = -99;
  std::memcpy(data.data() + 1, fv, 8);
  std::memcpy(data.data() + 9, &iv, 8);
  write_raw(path, header, data);
  SafeTensorsFile f(path);
  EXPECT_EQ(f.read<uint8_t>("b")[0], 7);
  const auto x = f.read<float>("f");
  EXPECT_EQ(x[0], 3.5f);
  EXPECT_EQ(x[1], -1.25f);
  EXPECT_EQ(f.read<double>("f")[1], -1.25);
  EXPECT_EQ(f.read<int64_t>("i")[0], -99);
  EXPECT_EQ(f.read<int32_t>("i")[0], -99);
}

TEST(SafeTensors, ValidationErrorsNameFileAndProblem) {
  TempDir tmp;
  int k = 0;
  auto bad = [&](const std::string& header, const std::string& data, const std::string& phrase) {
    const std::string path = tmp.file("bad" + std::to_string(k++) + ".safetensors");
    write_raw(path, header, data);
    expect_open_error(path, phrase);
  };
  const std::string d8(8, '\0');
  // Header structure.
  bad(R"({"a": {"dtype": "F32", )", "", "JSON parse error");
  bad(R"({"a": 1,})", "", "JSON parse error at line 1");
  bad(R"([1, 2])", "", "does not start with '{'");
  bad(R"(  {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d8, "does not start with '{'");
  bad("", "", "does not start with '{'");
  bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      d8, "duplicate key 'a'");
  bad(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d8, "duplicate key 'dtype'");
  // Entry fields and types.
  bad(R"({"a":{"dtype":"F32","shape":[2]}})", d8, "tensor 'a': missing 'data_offsets'");
  bad(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", d8, "tensor 'a': missing 'dtype'");
  bad(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", d8, "tensor 'a': missing 'shape'");
  bad(R"({"a":[1,2]})", d8, "tensor 'a': entry must be an object");
  bad(R"({"a":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", d8, "'dtype' must be a string");
  bad(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", d8, "'shape' must be an array");
  bad(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", d8, "non-negative integers");
  bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", d8, "'data_offsets' must be an array of two");
  bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", d8, "'data_offsets' must be an array of two");
  bad(R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", d8, "tensor 'a': unknown dtype 'F8_E4M3'");
  bad(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8, "tensor 'a': negative dimension -2");
  bad(R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,8],"data_offsets":[0,8]}})", d8, "rank 8 exceeds");
  bad(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d8,
      "'__metadata__' value of 'k' must be a string");
  bad(R"({"__metadata__":[],"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d8, "'__metadata__' must be");
  // Offsets and sizes.
  bad(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8,
      "tensor 'a': size mismatch: shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8 bytes");
  bad(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", d8, "size mismatch");
  bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", d8, "begin > end");
  bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", d8, "out of bounds of the data buffer (8 bytes)");
  bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      std::string(12, '\0'), "tensors 'a' (data_offsets [0, 8]) and 'b' (data_offsets [4, 12]) overlap");
  bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
      std::string(20, '\0'), "hole in the data buffer: bytes [8, 12)");
  bad(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(11, '\0'), "3 trailing bytes");
  bad(R"({})", "x", "1 trailing bytes");
}

TEST(SafeTensors, CorruptFilesNameFileAndProblem) {
  TempDir tmp;
  // Missing file, directory, empty and truncated files.
  expect_open_error(tmp.file("missing.safetensors"), "cannot open: No such file or directory");
  expect_open_error(tmp.path.string(), "not a regular file");
  spit(tmp.file("empty.safetensors"), "");
  expect_open_error(tmp.file("empty.safetensors"), "file is too short (0 bytes)");
  spit(tmp.file("five.safetensors"), std::string("\x10\0\0\0\0", 5));
  expect_open_error(tmp.file("five.safetensors"), "file is too short (5 bytes)");

  // A valid file cut short: first inside the data, then inside the header.
  SafeTensorsWriter w;
  w.add("x", make_tensor<float>({4}, {1, 2, 3, 4}));
  w.write(tmp.file("good.safetensors"));
  const std::string good = slurp(tmp.file("good.safetensors"));
  spit(tmp.file("cut_data.safetensors"), good.substr(0, good.size() - 3));
  expect_open_error(tmp.file("cut_data.safetensors"), "out of bounds of the data buffer (13 bytes)");
  spit(tmp.file("cut_header.safetensors"), good.substr(0, 20));
  expect_open_error(tmp.file("cut_header.safetensors"), "extends beyond the end of the file (20 bytes)");

  // Header length larger than the file, and beyond the 100 MB limit.
  write_raw(tmp.file("long.safetensors"), "{}", "", 1000);
  expect_open_error(tmp.file("long.safetensors"), "header size 1000 extends beyond the end of the file (10 bytes)");
  write_raw(tmp.file("huge.safetensors"), "{}", "", 200'000'000);
  expect_open_error(tmp.file("huge.safetensors"), "header size 200000000 exceeds the safetensors limit");

  // Garbage: random bytes (a huge length), and a plausible length followed by random bytes.
  std::mt19937 gen(1234);
  std::string garbage(256, '\0');
  for (auto& c : garbage) c = static_cast<char>(gen() & 0xff);
  garbage[7] = '\x7f';  // make sure the length is far beyond the limit
  spit(tmp.file("garbage.safetensors"), garbage);
  expect_open_error(tmp.file("garbage.safetensors"), "exceeds the safetensors limit");
  garbage[8] = '!';
  write_raw(tmp.file("garbage2.safetensors"), garbage.substr(8, 100), garbage.substr(108));
  expect_open_error(tmp.file("garbage2.safetensors"), "does not start with '{'");
  write_raw(tmp.file("garbage3.safetensors"), "{" + garbage.substr(9, 100), garbage.substr(109));
  expect_open_error(tmp.file("garbage3.safetensors"), "JSON parse error");
}

TEST(SafeTensors, MoveOnlyKeepsMappingAlive) {
  TempDir tmp;
  SafeTensorsWriter w;
  w.add("x", make_tensor<float>({2}, {5.f, 6.f}));
  w.write(tmp.file("m.safetensors"));
  SafeTensorsFile a(tmp.file("m.safetensors"));
  SafeTensorsFile b(std::move(a));
  EXPECT_EQ(b.read<float>("x")[1], 6.f);
  static_assert(!std::is_copy_constructible_v<SafeTensorsFile>);
}

// Interoperability: files written by the Rust safetensors library (Hugging Face transformers save_pretrained).
// The fixture is looked up in $TESSERA_FIXTURES_DIR, then in tests/fixtures.
TEST(SafeTensors, ReadsHuggingFaceFixture) {
  std::string dir = TESSERA_TEST_FIXTURES;
  if (const char* env = std::getenv("TESSERA_FIXTURES_DIR")) dir = env;
  const std::string cases = dir + "/blt-hf-tiny/cases.safetensors", model = dir + "/blt-hf-tiny/model.safetensors";
  if (!std::filesystem::exists(cases) || !std::filesystem::exists(model))
    GTEST_SKIP() << "fixture blt-hf-tiny not found under " << dir << " (set TESSERA_FIXTURES_DIR)";
  SafeTensorsFile f(cases);
  // ids = [BOS=1] + (byte + 4); the bytes are in the metadata as hex.
  const auto info = nlohmann::json::parse(f.metadata().at("info"));
  const auto hex = info["cases"][0]["bytes_hex"].get<std::string>();
  const auto ids = f.read<int64_t>("case0.ids");
  ASSERT_EQ(ids.numel(), static_cast<int64_t>(hex.size() / 2 + 1));
  EXPECT_EQ(ids[0], 1);
  for (size_t i = 0; i < hex.size() / 2; ++i)
    EXPECT_EQ(ids[static_cast<int64_t>(i) + 1], std::stoi(hex.substr(2 * i, 2), nullptr, 16) + 4) << i;
  EXPECT_EQ(f.info("case0.logits").shape, (Shape{ids.numel(), 260}));
  const auto logits = f.read<float>("case0.logits");
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));

  SafeTensorsFile m(model);
  EXPECT_EQ(m.metadata().at("format"), "pt");
  EXPECT_EQ(m.info("lm_head.weight").shape, (Shape{260, 64}));
  // Re-writing every tensor gives a file that reads back identically.
  TempDir tmp;
  SafeTensorsWriter w;
  for (const auto& t : m.tensors()) w.add_raw(t.name, t.dtype, t.shape, m.raw(t.name).data());
  w.write(tmp.file("copy.safetensors"));
  SafeTensorsFile c(tmp.file("copy.safetensors"));
  ASSERT_EQ(c.tensors().size(), m.tensors().size());
  for (const auto& t : m.tensors()) {
    const auto a = m.raw(t.name), b = c.raw(t.name);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0) << t.name;
  }
}
