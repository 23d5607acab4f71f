// BLT byte tokenizer (spec blt.md §1): id = byte + 4, with four special ids below the bytes.
//
//   auto ids = blt::encode("héllo");            // {1, 108, 199, 173, 112, 112, 115}  (BOS + UTF-8 bytes + 4)
//   std::string raw = blt::decode(ids);          // the exact bytes back, valid UTF-8 or not
//   std::string txt = blt::decode_utf8_ignore(ids);  // Python's bytes.decode("utf-8", errors="ignore")
//
// Bytes are bytes: encode takes any byte sequence (invalid UTF-8 included) and never drops anything. The
// original tokenizer encodes a Python str, which cannot hold invalid UTF-8; the only place where the original
// loses bytes is decode, which uses errors="ignore" — decode_utf8_ignore reproduces that, decode does not.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera::blt {

inline constexpr int64_t BOE =
    0;  // beginning of example; also the training pad id and hash/chunk zero padding
inline constexpr int64_t BOS = 1;
inline constexpr int64_t EOS = 2;  // also the document separator of the block-causal masks
inline constexpr int64_t BPE =
    3;  // BPE delimiter in the original ("<pad>" in the HF port); unused by the models
inline constexpr int64_t OFFSET = 4;
inline constexpr int64_t BYTE_UNITS = 256;
inline constexpr int64_t VOCAB_SIZE = OFFSET + BYTE_UNITS;  // 260

/// ids of `bytes`: [BOS] + (byte + 4 ...) + [EOS], BOS/EOS optional. Every byte value is accepted.
inline std::vector<int64_t> encode(std::string_view bytes, bool add_bos = true, bool add_eos = false) {
  std::vector<int64_t> ids;
  ids.reserve(bytes.size() + 2);
  if (add_bos) ids.push_back(BOS);
  for (const char c : bytes) ids.push_back(static_cast<int64_t>(static_cast<unsigned char>(c)) + OFFSET);
  if (add_eos) ids.push_back(EOS);
  return ids;
}

/// The raw bytes of `ids`: ids < 4 (BOE/BOS/EOS/BPE, and the generation buffer's -1) are dropped, the rest
/// become byte id - 4. Invalid UTF-8 is NOT removed (use decode_utf8_ignore for the reference's text).
/// Throws naming the position of an id >= 260.
inline std::string decode(std::span<const int64_t> ids) {
  std::string out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    TESSERA_CHECK(id < VOCAB_SIZE, "blt::decode: id ", id, " at position ", i,
                  " is outside the byte vocabulary [0, ", VOCAB_SIZE, ")");
    if (id >= OFFSET) out.push_back(static_cast<char>(static_cast<unsigned char>(id - OFFSET)));
  }
  return out;
}

/// Keep only the well-formed UTF-8 sequences of `bytes` (Unicode Table 3-7: no overlongs, no surrogates,
/// nothing above U+10FFFF); every other byte is dropped. Equals Python's bytes.decode("utf-8", "ignore")
/// re-encoded: an ill-formed byte can never begin a well-formed sequence that a skipped maximal subpart
/// would have hidden, so dropping one byte at a time gives the same text as dropping maximal subparts.
inline std::string utf8_ignore_invalid(std::string_view bytes) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(bytes[i]); };
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const unsigned char b = byte(i);
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b < 0x80)
      len = 1;
    else if (b >= 0xC2 && b <= 0xDF)
      len = 2;
    else if (b == 0xE0)
      len = 3, lo = 0xA0;
    else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF)
      len = 3;
    else if (b == 0xED)
      len = 3, hi = 0x9F;
    else if (b == 0xF0)
      len = 4, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3)
      len = 4;
    else if (b == 0xF4)
      len = 4, hi = 0x8F;
    bool ok = len > 0 && i + len <= bytes.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char c = byte(i + k);
      ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    }
    if (ok) {
      out.append(bytes.substr(i, len));
      i += len;
    } else {
      ++i;
    }
  }
  return out;
}

/// The reference decoder (bytelatent BltTokenizer.decode): decode(ids) followed by UTF-8 errors="ignore".
inline std::string decode_utf8_ignore(std::span<const int64_t> ids) {
  return utf8_ignore_invalid(decode(ids));
}

}  // namespace tessera::blt
