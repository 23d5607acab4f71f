// Tensors: an owning, contiguous, move-only buffer (Tensor) and a non-owning strided view (TensorView).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "tessera/core/allocator.hpp"
#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/shape.hpp"

namespace tessera {

/// Non-owning view: pointer + shape + strides (in elements). Cheap to copy.
template <class T>
struct TensorView {
  T* ptr = nullptr;
  Shape shape;
  Shape strides;

  TensorView() = default;
  TensorView(T* p, Shape s) : ptr(p), shape(s), strides(s.contiguous_strides()) {}
  TensorView(T* p, Shape s, Shape st) : ptr(p), shape(s), strides(st) {}
  /// Views of T convert to views of const T.
  operator TensorView<const T>() const { return {ptr, shape, strides}; }

  int rank() const { return shape.rank(); }
  int64_t numel() const { return shape.numel(); }
  int64_t size(int i) const { return shape[i]; }
  T* data() const { return ptr; }
  bool is_contiguous() const { return strides == shape.contiguous_strides(); }

  template <class... I>
  T& operator()(I... idx) const {
    static_assert(sizeof...(I) > 0);
    int64_t off = 0;
    int d = 0;
    ((off += static_cast<int64_t>(idx) * strides[d++]), ...);
    return ptr[off];
  }
  /// Sub-range [begin, end) along dimension `dim` (no copy).
  TensorView slice(int dim, int64_t begin, int64_t end) const {
    TESSERA_CHECK(dim >= 0 && dim < rank() && begin >= 0 && begin <= end && end <= shape[dim],
                  "slice [", begin, ", ", end, ") out of range for dim ", dim, " of shape ", shape);
    TensorView v = *this;
    v.ptr = ptr + begin * strides[dim];
    v.shape[dim] = end - begin;
    return v;
  }
  /// Swap two dimensions (no copy).
  TensorView transpose(int a, int b) const {
    TensorView v = *this;
    std::swap(v.shape[a], v.shape[b]);
    std::swap(v.strides[a], v.strides[b]);
    return v;
  }
  /// Reinterpret a contiguous view with a new shape of the same size.
  TensorView reshape(Shape s) const {
    TESSERA_CHECK(is_contiguous(), "reshape of a non-contiguous view");
    TESSERA_CHECK(s.numel() == numel(), "reshape ", shape, " -> ", s, " changes the element count");
    return {ptr, s};
  }
};

/// Owning contiguous tensor on backend B. Move-only: copies are explicit through clone().
template <class T, class B = cpu>
class Tensor {
 public:
  using value_type = T;
  using backend = B;

  Tensor() = default;
  /// Zero-initialised tensor of the given shape.
  explicit Tensor(Shape s) { resize(s); }
  Tensor(Tensor&& o) noexcept : data_(std::exchange(o.data_, nullptr)), shape_(o.shape_), cap_(o.cap_) {
    o.shape_ = Shape{};
    o.cap_ = 0;
  }
  Tensor& operator=(Tensor&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      shape_ = o.shape_;
      cap_ = std::exchange(o.cap_, 0);
      o.shape_ = Shape{};
    }
    return *this;
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  ~Tensor() { release(); }

  /// Set the shape, reallocating only when the capacity is too small; contents are zeroed.
  void resize(Shape s) {
    const int64_t n = s.numel();
    if (n > cap_) {
      release();
      data_ = static_cast<T*>(Allocator<B>::allocate(static_cast<size_t>(n) * sizeof(T)));
      cap_ = n;
    }
    shape_ = s;
    zero();
  }
  /// Set the shape without zeroing (for outputs that are fully overwritten).
  void resize_uninit(Shape s) {
    const int64_t n = s.numel();
    if (n > cap_) {
      release();
      data_ = static_cast<T*>(Allocator<B>::allocate(static_cast<size_t>(n) * sizeof(T)));
      cap_ = n;
    }
    shape_ = s;
  }
  void zero() { Allocator<B>::memset_zero(data_, static_cast<size_t>(numel()) * sizeof(T)); }
  /// Reinterpret with a new shape of the same element count (no copy).
  void reshape(Shape s) {
    TESSERA_CHECK(s.numel() == numel(), "reshape ", shape_, " -> ", s, " changes the element count");
    shape_ = s;
  }
  Tensor clone() const {
    Tensor t;
    if (!data_) return t;  // an unallocated tensor clones to an unallocated one (not a rank-0 scalar)
    t.resize_uninit(shape_);
    Allocator<B>::copy(t.data_, data_, static_cast<size_t>(numel()) * sizeof(T));
    return t;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t size(int i) const { return shape_[i]; }
  int64_t numel() const { return data_ ? shape_.numel() : 0; }
  bool empty() const { return numel() == 0; }

  TensorView<T> view() { return {data_, shape_}; }
  TensorView<const T> view() const { return {data_, shape_}; }
  operator TensorView<T>() { return view(); }
  operator TensorView<const T>() const { return view(); }

  // Host-side element access (CPU tensors only).
  T& operator[](int64_t i) {
    static_assert(std::is_same_v<B, cpu>, "element access needs a CPU tensor");
    return data_[i];
  }
  const T& operator[](int64_t i) const {
    static_assert(std::is_same_v<B, cpu>, "element access needs a CPU tensor");
    return data_[i];
  }
  T* begin() { return data_; }
  T* end() { return data_ + numel(); }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + numel(); }

 private:
  void release() {
    if (data_) Allocator<B>::deallocate(data_);
    data_ = nullptr;
    cap_ = 0;
  }
  T* data_ = nullptr;
  Shape shape_;
  int64_t cap_ = 0;
};

/// Build a CPU tensor from values (tests, small constants).
template <class T>
Tensor<T> make_tensor(Shape s, std::initializer_list<T> values) {
  TESSERA_CHECK(static_cast<int64_t>(values.size()) == s.numel(), "make_tensor: ", values.size(),
                " values for shape ", s);
  Tensor<T> t(s);
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

}  // namespace tessera
