// Corpus reading (gzip, plain, folder, errors), the held-out split, the byte loader and evaluation windows.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "support/temp_dir.hpp"
#include "tessera/train/byte_loader.hpp"
#include "tessera/train/text_corpus.hpp"

using namespace tessera;
using namespace tessera::train;
namespace fs = std::filesystem;

using tessera::testing::TempDir;

namespace {

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}

void write_gzip(const fs::path& p, const std::string& s) {
  gzFile gz = gzopen(p.c_str(), "wb9");
  ASSERT_NE(gz, nullptr);
  ASSERT_EQ(gzwrite(gz, s.data(), static_cast<unsigned>(s.size())), static_cast<int>(s.size()));
  ASSERT_EQ(gzclose(gz), Z_OK);
}

std::string as_string(const std::vector<uint8_t>& b) {
  return {b.begin(), b.end()};
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A text long enough to span several 1 MiB read chunks, with every byte value.
std::string big_text() {
  std::string s;
  for (int i = 0; i < 3'000'000; ++i) s.push_back(static_cast<char>((i * 7 + i / 256) & 0xff));
  return s;
}

}  // namespace

TEST(Corpus, ReadsGzipByMagicWhateverTheName) {
  TempDir d("corpus_gz");
  const std::string text = big_text();
  write_gzip(d.path / "data.dict.dz", text);
  write_gzip(d.path / "noext", "hello gzip");
  EXPECT_EQ(as_string(load_corpus(d.path / "data.dict.dz").bytes), text);
  EXPECT_EQ(as_string(load_corpus(d.path / "noext").bytes), "hello gzip");
  // max_bytes truncates exactly.
  EXPECT_EQ(as_string(load_corpus(d.path / "data.dict.dz", {.max_bytes = 1'500'000}).bytes),
            text.substr(0, 1'500'000));
}

TEST(Corpus, ReadsPlainFile) {
  TempDir d("corpus_plain");
  const std::string text = big_text();
  write_text(d.path / "a.txt", text);
  const auto c = load_corpus(d.path / "a.txt");
  EXPECT_EQ(as_string(c.bytes), text);
  ASSERT_EQ(c.files.size(), 1u);
}

TEST(Corpus, ReadsFolderSortedWithSeparator) {
  TempDir d("corpus_dir");
  fs::create_directories(d.path / "sub");
  write_text(d.path / "b.txt", "BBB");
  write_text(d.path / "a.txt", "AA");
  write_text(d.path / "empty.txt", "");
  write_gzip(d.path / "sub" / "c.gz", "CCCC");
  // Sorted by path: a.txt, b.txt, empty.txt (skipped), sub/c.gz.
  EXPECT_EQ(as_string(load_corpus(d.path).bytes), "AA\nBBB\nCCCC");
  EXPECT_EQ(load_corpus(d.path).files.size(), 3u);
  EXPECT_EQ(as_string(load_corpus(d.path, {.separator = 0}).bytes), std::string("AA\0BBB\0CCCC", 11));
  EXPECT_EQ(as_string(load_corpus(d.path, {.use_separator = false}).bytes), "AABBBCCCC");
}

TEST(Corpus, ErrorsNameThePath) {
  TempDir d("corpus_err");
  const auto missing = d.path / "nope.txt";
  auto msg = error_of([&] { load_corpus(missing); });
  EXPECT_NE(msg.find(missing.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;

  write_text(d.path / "empty.txt", "");
  msg = error_of([&] { load_corpus(d.path / "empty.txt"); });
  EXPECT_NE(msg.find((d.path / "empty.txt").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty"), std::string::npos) << msg;

  fs::create_directories(d.path / "hollow");
  msg = error_of([&] { load_corpus(d.path / "hollow"); });
  EXPECT_NE(msg.find("hollow"), std::string::npos) << msg;

  // A truncated gzip stream is reported, not silently shortened.
  write_gzip(d.path / "full.gz", big_text());
  std::ifstream in(d.path / "full.gz", std::ios::binary);
  std::string gz((std::istreambuf_iterator<char>(in)), {});
  write_text(d.path / "cut.gz", gz.substr(0, gz.size() / 2));
  msg = error_of([&] { load_corpus(d.path / "cut.gz"); });
  EXPECT_NE(msg.find((d.path / "cut.gz").string()), std::string::npos) << msg;
}

TEST(Corpus, SplitTakesTheLastFraction) {
  std::vector<uint8_t> b(100);
  for (int i = 0; i < 100; ++i) b[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
  const auto s = split_corpus(b, 0.1);
  ASSERT_EQ(s.train.size(), 90u);
  ASSERT_EQ(s.heldout.size(), 10u);
  EXPECT_EQ(s.train.back(), 89);
  EXPECT_EQ(s.heldout.front(), 90);
  EXPECT_EQ(split_corpus(b, 0.0).heldout.size(), 0u);
  EXPECT_THROW(split_corpus(b, 1.0), Error);
}

TEST(Corpus, ReadsGcideWhenInstalled) {
  const fs::path gcide = "/usr/share/dictd/gcide.dict.dz";
  if (!fs::exists(gcide)) GTEST_SKIP() << gcide << " is not installed (Debian package dict-gcide)";
  const auto c = load_corpus(gcide, {.max_bytes = 1 << 20});
  ASSERT_EQ(c.bytes.size(), 1u << 20);
  const std::string s = as_string(c.bytes);
  EXPECT_NE(s.find("GNU"), std::string::npos);  // the dictionary's preamble mentions the GNU licence
}

TEST(ByteLoader, WindowsAreShiftedByOneWithOffset) {
  std::vector<uint8_t> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i % 251);
  ByteLoader loader(data, {.batch = 4, .seq_len = 16, .seed = 7, .id_offset = 4});
  const auto b = loader.next();
  ASSERT_EQ(b.inputs.shape(), (Shape{4, 16}));
  ASSERT_EQ(b.targets.shape(), (Shape{4, 16}));
  for (int64_t r = 0; r < 4; ++r) {
    // Inputs are consecutive bytes + 4 (mod 251 wrap aside), targets are inputs shifted by one.
    for (int64_t t = 0; t + 1 < 16; ++t) EXPECT_EQ(b.targets[r * 16 + t], b.inputs[r * 16 + t + 1]);
    const int64_t first = b.inputs[r * 16] - 4;
    EXPECT_GE(first, 0);
    EXPECT_LT(first, 251);
  }
  EXPECT_EQ(loader.tokens_per_batch(), 64);
}

TEST(ByteLoader, DeterministicCoversAllOffsetsAndRestoresState) {
  std::vector<uint8_t> data(40);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i);  // byte == position
  ByteLoader a(data, {.batch = 3, .seq_len = 8, .seed = 42});
  ByteLoader b(data, {.batch = 3, .seq_len = 8, .seed = 42});
  ByteLoader c(data, {.batch = 3, .seq_len = 8, .seed = 43});
  std::set<int64_t> starts;
  bool differs = false;
  for (int i = 0; i < 200; ++i) {
    const auto x = a.next(), y = b.next(), z = c.next();
    EXPECT_EQ(0, std::memcmp(x.inputs.data(), y.inputs.data(), 24 * sizeof(int64_t)));
    differs = differs || std::memcmp(x.inputs.data(), z.inputs.data(), 24 * sizeof(int64_t)) != 0;
    for (int r = 0; r < 3; ++r) {
      starts.insert(x.inputs[r * 8]);
      EXPECT_EQ(x.targets[r * 8 + 7], x.inputs[r * 8] + 8);  // last target is the window's byte T
    }
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(starts.size(), 32u);  // every start 0..31 (= 40 - 8 - 1) drawn, nothing beyond
  EXPECT_EQ(*starts.rbegin(), 31);

  // Save the state after 200 batches; a fresh loader restored from it (also via JSON) continues identically.
  const auto st = a.state();
  const auto js = a.state_json();
  ByteLoader r1(data, {.batch = 3, .seq_len = 8, .seed = 42});
  ByteLoader r2(data, {.batch = 3, .seq_len = 8, .seed = 42});
  r1.set_state(st);
  r2.set_state_json(nlohmann::json::parse(js.dump()));
  EXPECT_EQ(r2.batches_drawn(), 200);
  for (int i = 0; i < 20; ++i) {
    const auto x = a.next(), y = r1.next(), z = r2.next();
    EXPECT_EQ(0, std::memcmp(x.inputs.data(), y.inputs.data(), 24 * sizeof(int64_t)));
    EXPECT_EQ(0, std::memcmp(x.inputs.data(), z.inputs.data(), 24 * sizeof(int64_t)));
  }
  // Restoring into a loader with other geometry or seed is refused with the field named.
  ByteLoader other(data, {.batch = 2, .seq_len = 8, .seed = 42});
  EXPECT_NE(error_of([&] { other.set_state_json(js); }).find("batch"), std::string::npos);
  ByteLoader reseeded(data, {.batch = 3, .seq_len = 8, .seed = 1});
  EXPECT_NE(error_of([&] { reseeded.set_state_json(js); }).find("seed"), std::string::npos);
  EXPECT_THROW(ByteLoader(std::vector<uint8_t>(8), {.batch = 1, .seq_len = 8}), Error);
}

TEST(EvalWindows, SequentialNonOverlapping) {
  std::vector<uint8_t> data(30);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i);
  EvalWindows ev(data, /*batch=*/2, /*seq_len=*/8);
  EXPECT_EQ(ev.num_windows(), 3);  // (30 - 1) / 8
  EXPECT_EQ(ev.num_targets(), 24);
  ByteBatch b;
  ASSERT_TRUE(ev.next(b));
  EXPECT_EQ(b.rows(), 2);
  EXPECT_EQ(b.inputs[0], 0);
  EXPECT_EQ(b.targets[7], 8);
  EXPECT_EQ(b.inputs[8], 8);  // second window starts where the first one's inputs end
  EXPECT_EQ(b.targets[15], 16);
  ASSERT_TRUE(ev.next(b));
  EXPECT_EQ(b.rows(), 1);
  EXPECT_EQ(b.inputs[0], 16);
  EXPECT_EQ(b.targets[7], 24);
  EXPECT_FALSE(ev.next(b));
  ev.reset();
  ASSERT_TRUE(ev.next(b));
  EXPECT_EQ(b.inputs[0], 0);
  EXPECT_NEAR(bits_per_byte(std::log(2.0) * 24, 24), 1.0, 1e-15);
  EXPECT_THROW(EvalWindows(std::span<const uint8_t>(data.data(), 8), 1, 8), Error);
}
