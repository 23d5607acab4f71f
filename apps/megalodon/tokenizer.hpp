// Text <-> token ids for the `megalodon` app: bytes (ids 0..255, the default: trains on any text with no
// tokenizer file) or a sentencepiece model (Debian's libsentencepiece; compiled in only when CMake found it,
// TESSERA_HAVE_SENTENCEPIECE). A model folder that holds `tokenizer.model` uses it; otherwise bytes.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mglapp {

class Tokenizer {
 public:
  /// The byte vocabulary: id = byte value, 256 ids.
  static Tokenizer bytes() { return {}; }
  /// A sentencepiece model file; throws tessera::Error naming the file when it cannot be loaded, or when this
  /// build has no sentencepiece support.
  static Tokenizer sentencepiece(const std::string& model_file);
  /// True when this build can read sentencepiece models.
  static bool sentencepiece_available();

  bool is_bytes() const { return !impl_; }
  /// Number of ids: 256 for bytes, the piece count of a sentencepiece model.
  int64_t vocab_size() const;
  /// "bytes (256 ids)" or "sentencepiece FILE (N pieces)".
  std::string describe() const;
  /// The sentencepiece model file ("" for bytes).
  const std::string& file() const { return file_; }
  /// End-of-sequence id of a sentencepiece model (-1: none, and always for bytes).
  int64_t eos_id() const;

  /// Ids of `text`. A sentencepiece model encodes a large text line by line (in parallel) and concatenates the
  /// ids, so line breaks act as word boundaries.
  std::vector<int32_t> encode(std::string_view text) const;
  /// Text of `ids` (bytes: the bytes themselves; sentencepiece: the decoded pieces).
  std::string decode(std::span<const int64_t> ids) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
  std::string file_;
};

}  // namespace mglapp
