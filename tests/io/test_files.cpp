// Atomic file replacement, JSON config helpers, JSONL metrics.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/temp_dir.hpp"
#include "tessera/io/atomic_file.hpp"
#include "tessera/io/json_config.hpp"
#include "tessera/io/jsonl.hpp"
#include "tessera/io/safetensors.hpp"

using namespace tessera;
using namespace tessera::io;
namespace fs = std::filesystem;

using tessera::testing::TempDir;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void spit(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

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

// ---- atomic files ------------------------------------------------------------------------------------------

TEST(AtomicFile, WritesAndReplacesWithoutLeftovers) {
  TempDir tmp;
  const std::string path = tmp.file("out.bin");
  write_file_atomic(path, [](AtomicOut& out) {
    out.write("hello ");
    std::fprintf(out.file(), "%d", 42);
  });
  EXPECT_EQ(slurp(path), "hello 42");
  write_bytes_atomic(path, "xyz", 3);
  EXPECT_EQ(slurp(path), "xyz");
  write_text_atomic(path, "");
  EXPECT_EQ(slurp(path), "");
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFile, WriterThrowingMidwayLeavesNothingBehind) {
  TempDir tmp;
  const std::string path = tmp.file("ckpt.safetensors");
  auto half_then_throw = [](AtomicOut& out) {
    const std::string big(1 << 20, 'x');
    out.write(big);  // a megabyte reaches the temporary file...
    throw std::runtime_error("writer failed");  // ...then the writer dies
  };
  EXPECT_THROW(write_file_atomic(path, half_then_throw), std::runtime_error);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(tmp.listing().empty());

  // With a previous file in place, a failed write keeps it byte for byte.
  write_text_atomic(path, "previous checkpoint");
  EXPECT_THROW(write_file_atomic(path, half_then_throw), std::runtime_error);
  EXPECT_EQ(slurp(path), "previous checkpoint");
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"ckpt.safetensors"});
  // tessera::Error from the writer propagates unchanged as well.
  const std::string msg = error_of([&] {
    write_file_atomic(path, [](AtomicOut&) { throw Error("tensor 'w': boom"); });
  });
  EXPECT_EQ(msg, "tensor 'w': boom");
  EXPECT_EQ(slurp(path), "previous checkpoint");
}

TEST(AtomicFile, IoFailuresNamePathAndErrno) {
  TempDir tmp;
  const std::string missing_dir = tmp.file("no/such/dir/out.bin");
  std::string msg = error_of([&] { write_text_atomic(missing_dir, "x"); });
  EXPECT_EQ(msg.rfind(missing_dir, 0), 0u) << msg;
  EXPECT_HAS(msg, "No such file or directory");
  // The target is a non-empty directory: the rename fails after the data was written; the temp file goes away.
  fs::create_directories(tmp.path / "target" / "child");
  const std::string target = tmp.file("target");
  msg = error_of([&] { write_text_atomic(target, "data"); });
  EXPECT_EQ(msg.rfind(target, 0), 0u) << msg;
  EXPECT_HAS(msg, "rename of the temporary file failed");
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"target"});
  EXPECT_TRUE(fs::is_directory(target));
}

TEST(AtomicFile, SafetensorsWriteKeepsPreviousFileOnFailure) {
  TempDir tmp;
  const std::string path = tmp.file("m.safetensors");
  SafeTensorsWriter w;
  w.add("x", make_tensor<float>({2}, {1.f, 2.f}));
  w.write(path);
  const std::string before = slurp(path);
  // Invalid UTF-8 in a tensor name makes the header unwritable: an error, and the old file stays.
  SafeTensorsWriter bad;
  bad.add("bad\xff", make_tensor<float>({1}, {0.f}));
  const std::string msg = error_of([&] { bad.write(path); });
  EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
  EXPECT_HAS(msg, "valid UTF-8");
  EXPECT_EQ(slurp(path), before);
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"m.safetensors"});
}

// ---- JSON configs ------------------------------------------------------------------------------------------

TEST(JsonConfig, ReadFileErrorsNamePathAndPosition) {
  TempDir tmp;
  const std::string missing = tmp.file("missing.json");
  std::string msg = error_of([&] { read_json_file(missing); });
  EXPECT_EQ(msg.rfind(missing, 0), 0u) << msg;
  EXPECT_HAS(msg, "cannot open JSON file: No such file or directory");

  const std::string broken = tmp.file("broken.json");
  spit(broken, "{\n  \"dim\": 64,\n  \"heads\": ,\n}\n");
  msg = error_of([&] { read_json_file(broken); });
  EXPECT_EQ(msg.rfind(broken, 0), 0u) << msg;
  EXPECT_HAS(msg, "JSON parse error at line 3, column");

  const std::string dup = tmp.file("dup.json");
  spit(dup, R"({"model": {"dim": 64, "dim": 128}})");
  msg = error_of([&] { read_json_file(dup); });
  EXPECT_EQ(msg, dup + ": duplicate key 'dim'");

  const std::string good = tmp.file("good.json");
  spit(good, R"({"model": {"dim": 64, "eps": 1e-5, "name": "tiny", "layers": [1, 2]}})");
  const json j = read_json_file(good);
  EXPECT_EQ(require<int64_t>(j["model"], "dim", "model"), 64);
}

TEST(JsonConfig, CheckKeysRejectsUnknownFieldsByName) {
  const auto j = nlohmann::json::parse(R"({"dim": 64, "n_layer": 2})");
  EXPECT_NO_THROW(check_keys(j, {"dim", "n_layer", "n_heads"}, "model"));
  try {
    check_keys(j, {"dim", "n_layers"}, "model");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "config model: unknown field 'n_layer' (allowed: dim, n_layers)");
  }
  EXPECT_THROW(check_keys(nlohmann::json::array(), {"dim"}, "model"), Error);
}

TEST(JsonConfig, RequireAndGetOrMessages) {
  const json j = json::parse(R"({"dim": 64, "big": 10000000000, "neg": -1, "eps": 1e-5, "name": "tiny",
                                 "flag": true, "ids": [1, 2, 3], "mixed": [1, "x"], "nothing": null})");
  EXPECT_EQ(require<int>(j, "dim", "model"), 64);
  EXPECT_EQ(require<int64_t>(j, "big", "model"), 10000000000);
  EXPECT_EQ(require<double>(j, "eps", "model"), 1e-5);
  EXPECT_EQ(require<double>(j, "dim", "model"), 64.0);  // integers are numbers too
  EXPECT_EQ(require<std::string>(j, "name", "model"), "tiny");
  EXPECT_TRUE(require<bool>(j, "flag", "model"));
  EXPECT_EQ(require<std::vector<int64_t>>(j, "ids", "model"), (std::vector<int64_t>{1, 2, 3}));

  EXPECT_EQ(error_of([&] { require<int>(j, "heads", "model"); }), "config model: missing field 'heads'");
  std::string msg = error_of([&] { require<int>(j, "name", "model"); });
  EXPECT_EQ(msg.rfind("config model: field 'name' must be an integer", 0), 0u) << msg;
  EXPECT_HAS(msg, "found \"tiny\"");
  msg = error_of([&] { require<int32_t>(j, "big", "model.global"); });
  EXPECT_EQ(msg.rfind("config model.global: field 'big' must be an integer in [-2147483648, 2147483647]", 0), 0u)
      << msg;
  msg = error_of([&] { require<uint32_t>(j, "neg", "train"); });
  EXPECT_EQ(msg.rfind("config train: field 'neg' must be a non-negative integer", 0), 0u) << msg;
  msg = error_of([&] { require<int>(j, "eps", "model"); });
  EXPECT_HAS(msg, "field 'eps' must be an integer");
  msg = error_of([&] { require<std::string>(j, "dim", "data"); });
  EXPECT_EQ(msg, "config data: field 'dim' must be a string, found 64");
  msg = error_of([&] { require<bool>(j, "dim", "data"); });
  EXPECT_HAS(msg, "must be a boolean");
  msg = error_of([&] { require<std::vector<int64_t>>(j, "mixed", "data"); });
  EXPECT_HAS(msg, "field 'mixed' must be an array (each element an integer");
  msg = error_of([&] { require<int>(j["ids"], "x", "model.ids"); });
  EXPECT_EQ(msg, "config model.ids: expected a JSON object, found array");

  EXPECT_EQ(get_or<int>(j, "heads", 4, "model"), 4);
  EXPECT_EQ(get_or<int>(j, "dim", 4, "model"), 64);
  EXPECT_EQ(get_or<double>(j, "nothing", 0.5, "model"), 0.5);  // null means "use the default"
  EXPECT_EQ(get_or<std::string>(j, "mode", "train", "run"), "train");
  msg = error_of([&] { get_or<int>(j, "name", 4, "model"); });
  EXPECT_EQ(msg.rfind("config model: field 'name' must be an integer", 0), 0u) << msg;
}

// ---- JSONL metrics -----------------------------------------------------------------------------------------

TEST(Jsonl, AppendsOneObjectPerLineAcrossReopens) {
  TempDir tmp;
  const std::string path = tmp.file("metrics.jsonl");
  {
    JsonlWriter w(path);
    w.write({{"step", 1}, {"loss", 2.5}});
    w.write({{"step", 2}, {"loss", 2.25}, {"note", "a\nb"}});
    const std::string so_far = slurp(path);  // flushed line by line: visible while the writer is open
    EXPECT_EQ(std::count(so_far.begin(), so_far.end(), '\n'), 2);
  }
  {
    JsonlWriter w(path);  // a resumed run appends
    w.write({{"step", 3}, {"loss", std::nan("")}});
  }
  std::ifstream in(path);
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["step"], 1);
  EXPECT_EQ(lines[1]["note"], "a\nb");
  EXPECT_EQ(lines[2]["step"], 3);
  EXPECT_TRUE(lines[2]["loss"].is_null());

  JsonlWriter w(path);
  std::string msg = error_of([&] { w.write(json::array({1, 2})); });
  EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
  EXPECT_HAS(msg, "must be a JSON object");
  const std::string bad = tmp.file("no/dir/metrics.jsonl");
  msg = error_of([&] { JsonlWriter x(bad); });
  EXPECT_EQ(msg, bad + ": cannot open metrics file for appending: No such file or directory");
}
