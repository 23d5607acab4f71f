// safetensors reading (mmap, fully validated) and writing (atomic, deterministic).
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 N, then N bytes of JSON
// starting with '{' (may be padded with trailing spaces), then the data buffer. The JSON maps each tensor name to
// {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]} with offsets relative to the buffer start;
// an optional "__metadata__" entry maps strings to strings. The tensors must tile the buffer exactly: no
// overlaps, no holes, no trailing bytes.
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/shape.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/io/atomic_file.hpp"
#include "tessera/io/json_config.hpp"

namespace tessera::io {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");
static_assert(sizeof(bool) == 1, "BOOL tensors are stored as one byte per element");

/// One tensor's header entry. begin/end are byte offsets into the data buffer.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;
  uint64_t nbytes() const { return end - begin; }
};

/// The safetensors spec's limit on the JSON header size.
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

namespace detail {

inline constexpr bool is_float_dtype(DType d) {
  return d == DType::F32 || d == DType::F64 || d == DType::BF16 || d == DType::F16;
}
template <class T>
inline constexpr bool is_float_target_v = std::is_floating_point_v<T> || std::is_same_v<T, bf16>;
template <class T>
inline constexpr bool is_int_target_v =
    std::is_same_v<T, int64_t> || std::is_same_v<T, int32_t> || std::is_same_v<T, uint8_t> || std::is_same_v<T, bool>;

template <class T>
constexpr const char* target_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, double>) return "double";
  else if constexpr (std::is_same_v<T, bf16>) return "bf16";
  else if constexpr (std::is_same_v<T, int64_t>) return "int64";
  else if constexpr (std::is_same_v<T, int32_t>) return "int32";
  else if constexpr (std::is_same_v<T, uint8_t>) return "uint8";
  else return "bool";
}

/// dst[i] = cvt(load<S>(src + i * sizeof(S))) for i < n; memcpy loads make unaligned sources safe.
template <class S, class T, class Cvt>
void convert_loop(const std::byte* src, T* dst, int64_t n, Cvt cvt) {
  for (int64_t i = 0; i < n; ++i) {
    S s;
    std::memcpy(&s, src + static_cast<size_t>(i) * sizeof(S), sizeof(S));
    dst[i] = cvt(s, i);
  }
}

/// Convert n elements stored as `src_dtype` at `src` into dst (type T). `what` names the tensor for errors.
template <class T>
void convert_elements(DType src_dtype, const std::byte* src, T* dst, int64_t n, const std::string& what) {
  static_assert(is_float_target_v<T> || is_int_target_v<T>, "unsupported tensor element type");
  if constexpr (!std::is_same_v<T, bool>) {
    if (src_dtype == dtype_of_v<T>) {  // same representation: one block copy
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
      return;
    }
  }
  if constexpr (is_float_target_v<T>) {
    auto store = [](auto x, int64_t) {
      if constexpr (std::is_same_v<T, bf16>) return bf16(static_cast<float>(x));
      else return static_cast<T>(x);
    };
    switch (src_dtype) {
      case DType::F32: return convert_loop<float>(src, dst, n, store);
      case DType::F64: return convert_loop<double>(src, dst, n, store);
      case DType::BF16:
        return convert_loop<uint16_t>(src, dst, n, [&](uint16_t b, int64_t i) { return store(bf16::to_float(b), i); });
      case DType::F16:
        return convert_loop<uint16_t>(src, dst, n, [&](uint16_t h, int64_t i) { return store(half_to_float(h), i); });
      default:
        throw Error(str(what, ": cannot read ", dtype_name(src_dtype), " data as ", target_name<T>(),
                        " (integer data into a floating-point tensor)"));
    }
  } else {
    auto store = [&](int64_t v, int64_t i) -> T {
      if constexpr (std::is_same_v<T, bool>) {
        return v != 0;
      } else {
        if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
            v > static_cast<int64_t>(std::numeric_limits<T>::max()))
          throw Error(str(what, ": value ", v, " at element ", i, " does not fit in ", target_name<T>()));
        return static_cast<T>(v);
      }
    };
    switch (src_dtype) {
      case DType::I64: return convert_loop<int64_t>(src, dst, n, store);
      case DType::I32: return convert_loop<int32_t>(src, dst, n, [&](int32_t v, int64_t i) { return store(v, i); });
      case DType::U8: return convert_loop<uint8_t>(src, dst, n, [&](uint8_t v, int64_t i) { return store(v, i); });
      case DType::BOOL:
        return convert_loop<uint8_t>(src, dst, n, [&](uint8_t v, int64_t i) { return store(v != 0, i); });
      default:
        throw Error(str(what, ": cannot read ", dtype_name(src_dtype), " data as ", target_name<T>(),
                        " (floating-point data into an integer tensor)"));
    }
  }
}

/// Owns a read-only private mapping of a whole file.
class Mapping {
 public:
  Mapping() = default;
  explicit Mapping(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(str(path, ": cannot open: ", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw Error(str(path, ": cannot stat: ", std::strerror(err)));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error(str(path, ": not a regular file"));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw Error(str(path, ": mmap failed: ", std::strerror(err)));
      }
      data_ = static_cast<const std::byte*>(p);
    }
    ::close(fd);  // the mapping stays valid without the descriptor
  }
  Mapping(Mapping&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept {
    if (this != &o) {
      unmap();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { unmap(); }
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void unmap() {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
  }
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace detail

/// A safetensors file opened read-only with mmap. The constructor validates the whole header; every error is a
/// tessera::Error whose message starts with the file path. tensors() is in header order. Move-only.
class SafeTensorsFile {
 public:
  explicit SafeTensorsFile(const std::string& path) : path_(path), map_(path) { parse_header(); }

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }

  const TensorInfo& info(std::string_view name) const {
    const auto it = index_.find(name);
    if (it == index_.end())
      throw Error(str(path_, ": no tensor named '", name, "' (the file has ", tensors_.size(), " tensors)"));
    return tensors_[it->second];
  }

  /// The stored bytes of a tensor (little-endian, possibly unaligned), valid while this object lives.
  std::span<const std::byte> raw(std::string_view name) const {
    const TensorInfo& t = info(name);
    return {map_.data() + data_start_ + t.begin, static_cast<size_t>(t.nbytes())};
  }

  /// Read a tensor as T. Floating-point targets (float, double, bf16) accept F32/F64/BF16/F16 data; integer
  /// targets (int64_t, int32_t, uint8_t, bool) accept I64/I32/U8/BOOL data (values must fit; bool is != 0).
  template <class T>
  Tensor<T> read(std::string_view name) const {
    const TensorInfo& t = info(name);
    Tensor<T> out;
    out.resize_uninit(t.shape);
    read_into(name, out.data(), t.shape.numel());
    return out;
  }

  /// Read a tensor of n elements into dst (converting as read() does); n must equal the stored element count.
  template <class T>
  void read_into(std::string_view name, T* dst, int64_t n) const {
    const TensorInfo& t = info(name);
    const std::string what = str(path_, ": tensor '", t.name, "'");
    TESSERA_CHECK(n == t.shape.numel(), what, ": has ", t.shape.numel(), " elements (shape ", t.shape,
                  "), the destination has ", n);
    detail::convert_elements<T>(t.dtype, map_.data() + data_start_ + t.begin, dst, n, what);
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const { throw Error(str(path_, ": ", msg)); }

  void parse_header() {
    const size_t size = map_.size();
    if (size < 8)
      fail(str("file is too short (", size, " bytes) to be a safetensors file: it needs at least the 8-byte header "
               "length"));
    uint64_t n = 0;
    std::memcpy(&n, map_.data(), 8);
    if (n > kSafetensorsMaxHeader)
      fail(str("header size ", n, " exceeds the safetensors limit of ", kSafetensorsMaxHeader, " bytes (100 MB)"));
    if (n > size - 8) fail(str("header size ", n, " extends beyond the end of the file (", size, " bytes)"));
    const std::string_view text(reinterpret_cast<const char*>(map_.data()) + 8, static_cast<size_t>(n));
    if (text.empty() || text.front() != '{') fail("JSON header does not start with '{'");
    const auto header = detail::parse_json_strict<nlohmann::ordered_json>(text, str(path_, ": header"));
    if (!header.is_object()) fail("JSON header is not an object");

    data_start_ = 8 + n;
    const uint64_t buffer = size - data_start_;
    for (const auto& [key, v] : header.items()) {
      if (key == "__metadata__") {
        if (!v.is_object()) fail("'__metadata__' must be an object of strings");
        for (const auto& [mk, mv] : v.items()) {
          if (!mv.is_string()) fail(str("'__metadata__' value of '", mk, "' must be a string"));
          metadata_[mk] = mv.get<std::string>();
        }
        continue;
      }
      tensors_.push_back(parse_entry(key, v, buffer));
    }
    for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
    check_tiling(buffer);
  }

  TensorInfo parse_entry(const std::string& key, const nlohmann::ordered_json& v, uint64_t buffer) const {
    const std::string t = str("tensor '", key, "'");
    if (!v.is_object()) fail(str(t, ": entry must be an object with dtype, shape and data_offsets"));
    TensorInfo info;
    info.name = key;
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) fail(str(t, ": missing '", field, "'"));

    const auto& dt = v["dtype"];
    if (!dt.is_string()) fail(str(t, ": 'dtype' must be a string"));
    try {
      info.dtype = dtype_from_name(dt.get<std::string>());
    } catch (const Error&) {
      fail(str(t, ": unknown dtype '", dt.get<std::string>(), "' (supported: F32, F16, BF16, F64, I64, I32, U8, BOOL)"));
    }

    const auto& sh = v["shape"];
    if (!sh.is_array()) fail(str(t, ": 'shape' must be an array of integers"));
    if (sh.size() > static_cast<size_t>(kMaxRank))
      fail(str(t, ": rank ", sh.size(), " exceeds the maximum of ", kMaxRank));
    std::vector<int64_t> dims;
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : sh) {
      if (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() < 0)
        fail(str(t, ": negative dimension ", d.get<int64_t>(), " in 'shape'"));
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(str(t, ": 'shape' must be an array of non-negative integers, found ", detail::brief(d)));
      const uint64_t x = d.get<uint64_t>();
      if (x != 0 && numel > std::numeric_limits<uint64_t>::max() / x) overflow = true;
      numel *= x;
      dims.push_back(static_cast<int64_t>(x));
    }
    info.shape = Shape(dims);

    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(str(t, ": 'data_offsets' must be an array of two non-negative integers, found ", detail::brief(off)));
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    const std::string offs = str("data_offsets [", info.begin, ", ", info.end, "]");
    if (info.begin > info.end) fail(str(t, ": ", offs, " have begin > end"));
    if (info.end > buffer)
      fail(str(t, ": ", offs, " are out of bounds of the data buffer (", buffer, " bytes)"));
    const uint64_t esize = dtype_size(info.dtype);
    if (overflow || numel > std::numeric_limits<uint64_t>::max() / esize || numel * esize != info.end - info.begin)
      fail(str(t, ": size mismatch: shape ", info.shape, " of ", dtype_name(info.dtype), " needs ",
               overflow ? std::string("too many") : std::to_string(numel * esize), " bytes but ", offs, " span ",
               info.end - info.begin, " bytes"));
    return info;
  }

  /// The tensors must cover [0, buffer) exactly once: walk them in offset order.
  void check_tiling(uint64_t buffer) const {
    std::vector<size_t> order(tensors_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return std::pair(tensors_[a].begin, tensors_[a].end) < std::pair(tensors_[b].begin, tensors_[b].end);
    });
    uint64_t cursor = 0;
    const TensorInfo* last = nullptr;  // the tensor that ends at `cursor`
    for (size_t i : order) {
      const TensorInfo& t = tensors_[i];
      if (t.begin < cursor)
        fail(str("tensors '", last->name, "' (data_offsets [", last->begin, ", ", last->end, "]) and '", t.name,
                 "' (data_offsets [", t.begin, ", ", t.end, "]) overlap"));
      if (t.begin > cursor)
        fail(str("hole in the data buffer: bytes [", cursor, ", ", t.begin, ") are not covered by any tensor"));
      if (t.end > cursor || !last) {
        cursor = t.end;
        last = &t;
      }
    }
    if (cursor != buffer)
      fail(str("hole in the data buffer: ", buffer - cursor, " trailing bytes [", cursor, ", ", buffer,
               ") after the last tensor are not covered by any tensor"));
  }

  std::string path_;
  detail::Mapping map_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file in memory and writes it atomically.
///
/// Layout (deterministic): the header lists "__metadata__" first (keys sorted), then the tensors in insertion
/// order. The data buffer holds the tensors in a stable sort by element size, largest first (8-, 4-, 2-, then
/// 1-byte dtypes; insertion order within a size), and the header is space-padded so the buffer starts at a
/// multiple of 8 — so every tensor's data is aligned to its element size in the file (as the reference Rust
/// writer does). The same sequence of add() calls always gives the same bytes.
class SafeTensorsWriter {
 public:
  /// Add a copy of a CPU tensor, stored with its own dtype.
  template <class T>
  void add(std::string name, const Tensor<T>& t) {
    TESSERA_CHECK(t.data() || t.shape().numel() == 0, "safetensors writer: tensor '", name, "' has no storage");
    add(std::move(name), t.view());
  }
  /// Add a copy of a contiguous view.
  template <class T>
  void add(std::string name, TensorView<T> v) {
    using U = std::remove_const_t<T>;
    TESSERA_CHECK(v.is_contiguous(), "safetensors writer: tensor '", name, "' is not contiguous");
    add_raw(std::move(name), dtype_of_v<U>, v.shape, v.ptr);
  }
  /// Add a contiguous view WITHOUT copying: the data must stay alive and unchanged until write() returns.
  template <class T>
  void add_borrowed(std::string name, TensorView<T> v) {
    using U = std::remove_const_t<T>;
    TESSERA_CHECK(v.is_contiguous(), "safetensors writer: tensor '", name, "' is not contiguous");
    TESSERA_CHECK(v.ptr || v.numel() == 0, "safetensors writer: tensor '", name, "': null data");
    Entry& e = new_entry(std::move(name), dtype_of_v<U>, v.shape);
    e.borrowed = reinterpret_cast<const std::byte*>(v.ptr);
  }
  /// Add F32 data stored as `target` (F32, F64, BF16 or F16); BF16/F16 round to nearest even.
  void add_converted(std::string name, const Tensor<float>& t, DType target) {
    TESSERA_CHECK(t.data() || t.shape().numel() == 0, "safetensors writer: tensor '", name, "' has no storage");
    const int64_t n = t.numel();
    const float* x = t.data();
    Entry& e = new_entry(std::move(name), target, t.shape());
    e.owned.resize(e.bytes);
    std::byte* out = e.owned.data();
    auto put = [&](int64_t i, auto v) { std::memcpy(out + static_cast<size_t>(i) * sizeof(v), &v, sizeof(v)); };
    switch (target) {
      case DType::F32:
        for (int64_t i = 0; i < n; ++i) put(i, x[i]);
        break;
      case DType::F64:
        for (int64_t i = 0; i < n; ++i) put(i, static_cast<double>(x[i]));
        break;
      case DType::BF16:
        for (int64_t i = 0; i < n; ++i) put(i, bf16::from_float(x[i]));
        break;
      case DType::F16:
        for (int64_t i = 0; i < n; ++i) put(i, float_to_half(x[i]));
        break;
      default:
        const std::string nm = entries_.back().name;
        drop_last();
        throw Error(str("safetensors writer: tensor '", nm, "': cannot convert float data to ", dtype_name(target)));
    }
  }
  /// Add numel(shape) * dtype_size(dtype) bytes copied from `bytes` (already in the stored little-endian form).
  void add_raw(std::string name, DType dtype, Shape shape, const void* bytes) {
    TESSERA_CHECK(bytes || shape.numel() == 0, "safetensors writer: tensor '", name, "': null data");
    Entry& e = new_entry(std::move(name), dtype, shape);
    const auto* p = static_cast<const std::byte*>(bytes);
    e.owned.assign(p, p + e.bytes);
  }
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  bool contains(std::string_view name) const { return names_.find(name) != names_.end(); }
  size_t size() const { return entries_.size(); }

  /// The header bytes (JSON, space-padded) for the current contents; `path` is for error messages only.
  std::string header(const std::string& path = "<memory>") const {
    std::vector<uint64_t> begin(entries_.size());
    uint64_t off = 0;
    for (size_t i : data_order()) {
      begin[i] = off;
      off += entries_[i].bytes;
    }
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      auto& m = h["__metadata__"] = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata_) m[k] = v;
    }
    for (size_t i = 0; i < entries_.size(); ++i) {
      const Entry& e = entries_[i];
      h[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                   {"shape", e.shape.vec()},
                   {"data_offsets", {begin[i], begin[i] + e.bytes}}};
    }
    std::string s;
    try {
      s = h.dump();
    } catch (const nlohmann::json::type_error& ex) {
      throw Error(str(path, ": tensor names and metadata must be valid UTF-8 (", ex.what(), ")"));
    }
    s.resize((s.size() + 7) / 8 * 8, ' ');  // the buffer starts at 8 + N, a multiple of 8
    return s;
  }

  /// Write the file atomically (see atomic_file.hpp): `path` is replaced only once the whole file is on disk.
  void write(const std::string& path) const {
    const std::string h = header(path);
    const uint64_t n = h.size();
    write_file_atomic(path, [&](AtomicOut& out) {
      out.write(&n, 8);
      out.write(h);
      for (size_t i : data_order()) out.write(entries_[i].data(), entries_[i].bytes);
    });
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t bytes = 0;
    std::vector<std::byte> owned;
    const std::byte* borrowed = nullptr;
    const std::byte* data() const { return borrowed ? borrowed : owned.data(); }
  };

  Entry& new_entry(std::string name, DType dtype, const Shape& shape) {
    TESSERA_CHECK(!name.empty(), "safetensors writer: empty tensor name");
    TESSERA_CHECK(name != "__metadata__", "safetensors writer: '__metadata__' is reserved, not a tensor name");
    TESSERA_CHECK(!contains(name), "safetensors writer: duplicate tensor name '", name, "'");
    names_.insert(name);
    Entry& e = entries_.emplace_back();
    e.name = std::move(name);
    e.dtype = dtype;
    e.shape = shape;
    e.bytes = static_cast<uint64_t>(shape.numel()) * dtype_size(dtype);
    return e;
  }
  void drop_last() {
    names_.erase(entries_.back().name);
    entries_.pop_back();
  }
  std::vector<size_t> data_order() const {
    std::vector<size_t> order(entries_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return dtype_size(entries_[a].dtype) > dtype_size(entries_[b].dtype);
    });
    return order;
  }

  std::vector<Entry> entries_;
  std::set<std::string, std::less<>> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace tessera::io
