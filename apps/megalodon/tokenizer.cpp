// Byte and sentencepiece tokenizers (tokenizer.hpp). The sentencepiece half compiles only with
// TESSERA_HAVE_SENTENCEPIECE (apps/megalodon/CMakeLists.txt sets it when libsentencepiece-dev is installed).
#include "tokenizer.hpp"

#include <algorithm>
#include <filesystem>

#include "tessera/core/error.hpp"

#ifdef TESSERA_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace mglapp {

using tessera::Error;
using tessera::str;

namespace {
std::vector<int32_t> byte_ids(std::string_view text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<uint8_t>(text[i]);
  return ids;
}
std::string byte_text(std::span<const int64_t> ids) {
  std::string s;
  s.reserve(ids.size());
  for (int64_t id : ids) s.push_back(static_cast<char>(static_cast<uint8_t>(id)));
  return s;
}
}  // namespace

#ifdef TESSERA_HAVE_SENTENCEPIECE

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

bool Tokenizer::sentencepiece_available() {
  return true;
}

Tokenizer Tokenizer::sentencepiece(const std::string& model_file) {
  std::error_code ec;
  TESSERA_CHECK(std::filesystem::is_regular_file(model_file, ec), "sentencepiece model '", model_file,
                "' does not exist");
  auto impl = std::make_shared<Impl>();
  const auto status = impl->sp.Load(model_file);
  TESSERA_CHECK(status.ok(), "sentencepiece model '", model_file, "' cannot be loaded: ", status.ToString());
  Tokenizer t;
  t.impl_ = std::move(impl);
  t.file_ = model_file;
  return t;
}

int64_t Tokenizer::vocab_size() const {
  return impl_ ? impl_->sp.GetPieceSize() : 256;
}

int64_t Tokenizer::eos_id() const {
  return impl_ ? impl_->sp.eos_id() : -1;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  if (!impl_) return byte_ids(text);
  // Lines in blocks of about 1 MiB, encoded in parallel (Encode is const and thread-safe).
  std::vector<std::pair<size_t, size_t>> blocks;
  for (size_t b = 0; b < text.size();) {
    size_t e = std::min(text.size(), b + (size_t{1} << 20));
    while (e < text.size() && text[e - 1] != '\n') ++e;
    blocks.emplace_back(b, e);
    b = e;
  }
  std::vector<std::vector<int32_t>> out(blocks.size());
  std::vector<std::string> errors(blocks.size());
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < blocks.size(); ++i) {
    std::vector<int> ids;
    for (size_t b = blocks[i].first; b < blocks[i].second;) {
      size_t e = text.find('\n', b);
      if (e == std::string_view::npos || e > blocks[i].second) e = blocks[i].second;
      if (e > b) {
        const auto st = impl_->sp.Encode(text.substr(b, e - b), &ids);
        if (!st.ok()) {
          errors[i] = st.ToString();
          break;
        }
        out[i].insert(out[i].end(), ids.begin(), ids.end());
      }
      b = e + 1;
    }
  }
  for (const auto& e : errors) TESSERA_CHECK(e.empty(), "sentencepiece '", file_, "': cannot encode text: ", e);
  std::vector<int32_t> all;
  for (const auto& o : out) all.insert(all.end(), o.begin(), o.end());
  return all;
}

std::string Tokenizer::decode(std::span<const int64_t> ids) const {
  if (!impl_) return byte_text(ids);
  const std::vector<int> v(ids.begin(), ids.end());
  std::string s;
  const auto st = impl_->sp.Decode(v, &s);
  TESSERA_CHECK(st.ok(), "sentencepiece '", file_, "': cannot decode ids: ", st.ToString());
  return s;
}

#else  // no sentencepiece in this build

struct Tokenizer::Impl {};

bool Tokenizer::sentencepiece_available() {
  return false;
}

Tokenizer Tokenizer::sentencepiece(const std::string& model_file) {
  throw Error(str("sentencepiece model '", model_file,
                  "': this megalodon was built without sentencepiece support (install Debian's "
                  "libsentencepiece-dev, e.g. with scripts/setup, then re-run cmake and rebuild)"));
}

int64_t Tokenizer::vocab_size() const {
  return 256;
}

int64_t Tokenizer::eos_id() const {
  return -1;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  return byte_ids(text);
}

std::string Tokenizer::decode(std::span<const int64_t> ids) const {
  return byte_text(ids);
}

#endif

std::string Tokenizer::describe() const {
  return is_bytes() ? std::string("bytes (256 ids)") : str("sentencepiece ", file_, " (", vocab_size(), " pieces)");
}

}  // namespace mglapp
