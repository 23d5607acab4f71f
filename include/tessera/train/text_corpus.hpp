// Byte corpora for language-model training: a gzip file (dictzip .dz files are gzip, e.g. Debian's GCIDE at
// /usr/share/dictd/gcide.dict.dz), a plain file, or a folder of files; plus a deterministic held-out split.
#pragma once
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera::train {

struct Corpus {
  std::vector<uint8_t> bytes;
  std::vector<std::filesystem::path> files;  // the files read, in order
};

struct CorpusOptions {
  /// Byte placed between consecutive files of a folder ('\n' by default; e.g. 0 or an EOS-like byte).
  uint8_t separator = '\n';
  bool use_separator = true;
  /// Stop after this many bytes (0 = no limit). The result is truncated exactly at the limit.
  int64_t max_bytes = 0;
};

namespace detail {

inline bool has_gzip_magic(const std::filesystem::path& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  TESSERA_CHECK(f, "corpus: cannot open '", path.string(), "' for reading");
  unsigned char magic[2] = {0, 0};
  const size_t got = std::fread(magic, 1, 2, f.get());
  return got == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
}

/// Append the (decompressed, if gzip) contents of one file to `out`, reading at most `limit` bytes (0 = all).
inline void append_file(const std::filesystem::path& path, std::vector<uint8_t>& out, int64_t limit) {
  // Bytes to ask for next: a chunk, or less when the limit is near (the loops stop once it is reached).
  auto room = [&](size_t want) {
    return limit > 0 ? std::min<size_t>(want, static_cast<size_t>(limit) - out.size()) : want;
  };
  constexpr size_t kChunk = 1 << 20;
  if (has_gzip_magic(path)) {
    // zlib reads concatenated gzip members (dictzip is one member with an extra header field).
    gzFile gz = gzopen(path.c_str(), "rb");
    TESSERA_CHECK(gz, "corpus: cannot open gzip file '", path.string(), "'");
    std::unique_ptr<gzFile_s, int (*)(gzFile)> guard(gz, &gzclose_r);
    gzbuffer(gz, 1 << 18);
    while (limit <= 0 || static_cast<int64_t>(out.size()) < limit) {
      const size_t want = room(kChunk);
      const size_t old = out.size();
      out.resize(old + want);
      const int got = gzread(gz, out.data() + old, static_cast<unsigned>(want));
      if (got < 0) {
        int errnum = 0;
        const char* msg = gzerror(gz, &errnum);
        out.resize(old);
        throw Error(str("corpus: gzip file '", path.string(), "' is corrupt or unreadable: ", msg));
      }
      out.resize(old + static_cast<size_t>(got));
      if (static_cast<size_t>(got) < want) {
        // A short read is the end of the data; zlib reports a truncated stream only through gzerror.
        int errnum = Z_OK;
        const char* msg = gzerror(gz, &errnum);
        if (errnum != Z_OK || !gzeof(gz))
          throw Error(str("corpus: gzip file '", path.string(), "' is truncated or corrupt: ", msg));
        break;
      }
    }
    return;
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  TESSERA_CHECK(f, "corpus: cannot open '", path.string(), "' for reading");
  while (limit <= 0 || static_cast<int64_t>(out.size()) < limit) {
    const size_t want = room(kChunk);
    const size_t old = out.size();
    out.resize(old + want);
    const size_t got = std::fread(out.data() + old, 1, want, f.get());
    out.resize(old + got);
    if (got < want) {
      TESSERA_CHECK(!std::ferror(f.get()), "corpus: error while reading '", path.string(), "'");
      break;
    }
  }
}

}  // namespace detail

/// Load a corpus from `path`:
///  - a regular file: its bytes; gzip files (detected by their magic bytes 1f 8b, whatever the extension, so
///    dictzip .dz files too) are decompressed with zlib;
///  - a folder: every regular file below it (recursively, symlinks followed), sorted by path, each read as
///    above, empty files skipped, concatenated with options.separator between consecutive files.
/// Throws tessera::Error naming the path when it does not exist, cannot be read, is corrupt, or yields no
/// bytes.
inline Corpus load_corpus(const std::filesystem::path& path, const CorpusOptions& options = {}) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto st = fs::status(path, ec);
  TESSERA_CHECK(!ec && fs::exists(st), "corpus: '", path.string(), "' does not exist");
  Corpus c;
  if (fs::is_directory(st)) {
    std::vector<fs::path> files;
    fs::recursive_directory_iterator it(path, fs::directory_options::follow_directory_symlink, ec), end;
    TESSERA_CHECK(!ec, "corpus: cannot list folder '", path.string(), "': ", ec.message());
    for (; it != end; it.increment(ec)) {
      TESSERA_CHECK(!ec, "corpus: cannot list folder '", path.string(), "': ", ec.message());
      if (it->is_regular_file(ec)) files.push_back(it->path());
    }
    TESSERA_CHECK(!ec, "corpus: cannot list folder '", path.string(), "': ", ec.message());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      if (options.max_bytes > 0 && static_cast<int64_t>(c.bytes.size()) >= options.max_bytes) break;
      const size_t before = c.bytes.size();
      if (options.use_separator && !c.bytes.empty()) c.bytes.push_back(options.separator);
      const size_t with_sep = c.bytes.size();
      detail::append_file(f, c.bytes, options.max_bytes);
      if (c.bytes.size() == with_sep) {
        c.bytes.resize(before);  // empty file: no separator either
        continue;
      }
      c.files.push_back(f);
    }
    TESSERA_CHECK(!c.bytes.empty(), "corpus: folder '", path.string(), "' contains no non-empty files");
  } else {
    TESSERA_CHECK(fs::is_regular_file(st), "corpus: '", path.string(), "' is neither a file nor a folder");
    detail::append_file(path, c.bytes, options.max_bytes);
    TESSERA_CHECK(!c.bytes.empty(), "corpus: '", path.string(), "' is empty");
    c.files.push_back(path);
  }
  if (options.max_bytes > 0 && static_cast<int64_t>(c.bytes.size()) > options.max_bytes)
    c.bytes.resize(static_cast<size_t>(options.max_bytes));
  return c;
}

struct CorpusSplit {
  std::vector<uint8_t> train;
  std::vector<uint8_t> heldout;
};

/// Deterministic split: the held-out part is the LAST floor(size * heldout_fraction) bytes, the training part
/// everything before it. (For a folder that is the end of the last files in path order.) No shuffling, so the
/// same corpus always gives the same split. heldout_fraction must be in [0, 1).
inline CorpusSplit split_corpus(std::span<const uint8_t> bytes, double heldout_fraction) {
  TESSERA_CHECK(heldout_fraction >= 0.0 && heldout_fraction < 1.0,
                "split_corpus: heldout_fraction must be in [0, 1), got ", heldout_fraction);
  const auto n = bytes.size();
  const auto h = static_cast<size_t>(static_cast<double>(n) * heldout_fraction);
  CorpusSplit s;
  s.train.assign(bytes.begin(), bytes.end() - static_cast<std::ptrdiff_t>(h));
  s.heldout.assign(bytes.end() - static_cast<std::ptrdiff_t>(h), bytes.end());
  return s;
}

}  // namespace tessera::train
