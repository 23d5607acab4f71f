// Shapes and strides: small fixed-capacity arrays (rank <= 6), row-major by default.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera {

inline constexpr int kMaxRank = 6;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<int64_t>& dims) { assign(dims.begin(), dims.end()); }

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(i < 0 ? i + rank_ : i)]; }
  int64_t& operator[](int i) { return dims_[static_cast<size_t>(i < 0 ? i + rank_ : i)]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<size_t>(i)];
    return n;
  }
  std::vector<int64_t> vec() const { return {dims_.begin(), dims_.begin() + rank_}; }
  /// Row-major (C order) strides, in elements.
  Shape contiguous_strides() const {
    Shape s;
    s.rank_ = rank_;
    int64_t st = 1;
    for (int i = rank_ - 1; i >= 0; --i) {
      s.dims_[static_cast<size_t>(i)] = st;
      st *= dims_[static_cast<size_t>(i)];
    }
    return s;
  }
  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.dims_[static_cast<size_t>(i)] != b.dims_[static_cast<size_t>(i)]) return false;
    return true;
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
    os << '[';
    for (int i = 0; i < s.rank_; ++i) os << (i ? ", " : "") << s.dims_[static_cast<size_t>(i)];
    return os << ']';
  }

 private:
  template <class It>
  void assign(It b, It e) {
    TESSERA_CHECK(e - b <= kMaxRank, "rank ", e - b, " exceeds the maximum of ", kMaxRank);
    rank_ = 0;
    for (; b != e; ++b) {
      TESSERA_CHECK(*b >= 0, "negative dimension ", *b);
      dims_[static_cast<size_t>(rank_++)] = *b;
    }
  }
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

}  // namespace tessera
