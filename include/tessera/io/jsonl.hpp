// JSON Lines metrics: one JSON object per line, appended and flushed line by line, so a crash loses at most the
// line being written and a resumed run keeps appending to the same file.
#pragma once
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "tessera/core/error.hpp"

namespace tessera::io {

class JsonlWriter {
 public:
  /// Open `path` for appending (created if absent). Throws naming the path and the errno text.
  explicit JsonlWriter(std::string path) : path_(std::move(path)) {
    f_ = std::fopen(path_.c_str(), "a");
    if (!f_) throw Error(str(path_, ": cannot open metrics file for appending: ", std::strerror(errno)));
  }
  JsonlWriter(JsonlWriter&& o) noexcept : path_(std::move(o.path_)), f_(std::exchange(o.f_, nullptr)) {}
  JsonlWriter& operator=(JsonlWriter&& o) noexcept {
    if (this != &o) {
      close();
      path_ = std::move(o.path_);
      f_ = std::exchange(o.f_, nullptr);
    }
    return *this;
  }
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;
  ~JsonlWriter() { close(); }

  /// Append `record` (a JSON object) as one line and flush it. Invalid UTF-8 in strings is replaced by U+FFFD;
  /// non-finite numbers are written as null (JSON has no NaN).
  void write(const nlohmann::json& record) {
    TESSERA_CHECK(f_, path_, ": metrics file is closed");
    TESSERA_CHECK(record.is_object(), path_, ": a metrics record must be a JSON object, got ", record.type_name());
    std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    line += '\n';
    if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
      throw Error(str(path_, ": cannot write metrics record: ", std::strerror(errno)));
  }

  const std::string& path() const { return path_; }

 private:
  void close() {
    if (f_) std::fclose(f_);
    f_ = nullptr;
  }
  std::string path_;
  std::FILE* f_ = nullptr;
};

}  // namespace tessera::io
