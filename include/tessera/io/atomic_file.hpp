// Atomic file replacement: write "<path>.tmp.<pid>" in the same directory, flush and fsync it, rename it over
// <path>, fsync the directory. Readers see the old file or the complete new one, never a partial file, even
// after a crash (POSIX rename is atomic within a file system).
#pragma once
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

#include "tessera/core/error.hpp"

namespace tessera::io {

/// The temporary file being written; a writer callback gets one. Every failure throws tessera::Error naming
/// the target path and the errno text.
class AtomicOut {
 public:
  AtomicOut(std::FILE* f, std::string target) : f_(f), target_(std::move(target)) {}
  void write(const void* data, size_t bytes) {
    if (bytes == 0) return;
    if (std::fwrite(data, 1, bytes, f_) != bytes)
      throw Error(str(target_, ": write failed: ", std::strerror(errno)));
  }
  void write(std::string_view s) { write(s.data(), s.size()); }
  /// The underlying stream, for fprintf and friends (errors are caught by the final ferror check).
  std::FILE* file() const { return f_; }
  const std::string& target() const { return target_; }

 private:
  std::FILE* f_;
  std::string target_;
};

namespace detail {

inline void fsync_directory(const std::string& target) {
  std::filesystem::path dir = std::filesystem::path(target).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error(str(target, ": cannot open directory '", dir.string(), "' to sync it: ", std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems cannot sync directories (EINVAL); the rename has happened, so that is not a failure.
  if (rc != 0 && err != EINVAL)
    throw Error(str(target, ": fsync of directory '", dir.string(), "' failed: ", std::strerror(err)));
}

}  // namespace detail

/// Replace `path` atomically with what `writer(AtomicOut&)` writes. If anything fails (the writer throws, a
/// write/flush/fsync/rename fails), the temporary file is removed and `path` is left as it was; I/O failures
/// throw tessera::Error naming the path and the errno text, exceptions from the writer are rethrown as they are.
template <class F>
void write_file_atomic(const std::string& path, F&& writer) {
  const std::string tmp = str(path, ".tmp.", ::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error(str(path, ": cannot create temporary file '", tmp, "': ", std::strerror(errno)));
  auto fail = [&](const char* what) {
    const int err = errno;
    if (f) std::fclose(f);
    f = nullptr;
    std::remove(tmp.c_str());
    throw Error(str(path, ": ", what, ": ", std::strerror(err)));
  };
  try {
    AtomicOut out(f, path);
    std::forward<F>(writer)(out);
  } catch (...) {
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::ferror(f)) fail("write failed");
  if (std::fflush(f) != 0) fail("flush failed");
  if (::fsync(::fileno(f)) != 0) fail("fsync failed");
  const int rc = std::fclose(f);
  f = nullptr;
  if (rc != 0) fail("close failed");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("rename of the temporary file failed");
  detail::fsync_directory(path);
}

/// Replace `path` atomically with `bytes` bytes from `data`.
inline void write_bytes_atomic(const std::string& path, const void* data, size_t bytes) {
  write_file_atomic(path, [&](AtomicOut& out) { out.write(data, bytes); });
}

/// Replace `path` atomically with the text `s`.
inline void write_text_atomic(const std::string& path, std::string_view s) {
  write_bytes_atomic(path, s.data(), s.size());
}

}  // namespace tessera::io
