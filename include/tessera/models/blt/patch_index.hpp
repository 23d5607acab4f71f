// Host-built index arrays (patch ids, document ids, segment ids ...) handed to backend ops.
//
//   IndexUpload<B>  a set of int64 arrays computed on the host: on the CPU the host arrays themselves (no
//   copy);
//                   on CUDA one device buffer filled by ONE host-to-device copy per set.
//   PatchIndex<B>   the arrays of a PatchLayout (local_encoder.hpp) that the masks and the pooling read, in
//                   backend memory, plus the layout's sizes.
//
// Why the host builds them: patch lengths are host data (the patcher thresholds the entropies on the host,
// and the patch count P sizes every buffer of the forward), the layout is one linear pass over B*T bytes, and
// it reaches the device in the same single copy the lengths would need anyway. A copy from pageable host
// memory waits for the stream, so the model uploads where the queue is empty: at the start of a forward
// (after the entropy model's results came back, when it patches) or of a generation step.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tessera/core/allocator.hpp"
#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::blt {

template <class Backend>
class IndexUpload {
 public:
  /// Start a new set. On CUDA, pointers of the previous set stay valid until the next upload().
  void clear() {
    host_.clear();
    off_.clear();
    ptr_.clear();
  }
  /// Register n ids at p (host memory). CPU: p itself is used, so it must stay alive and unchanged while the
  /// set is in use; CUDA: the ids are copied into the staging area now. Returns the array's handle.
  size_t add(const int64_t* p, int64_t n) {
    TESSERA_CHECK(n >= 0 && (n == 0 || p), "blt::IndexUpload: bad array (", n, " ids)");
    if constexpr (is_cpu_v<Backend>) {
      ptr_.push_back(p);
    } else {
      off_.push_back(static_cast<int64_t>(host_.size()));
      host_.insert(host_.end(), p, p + n);
    }
    return is_cpu_v<Backend> ? ptr_.size() - 1 : off_.size() - 1;
  }
  size_t add(const std::vector<int64_t>& v) { return add(v.data(), static_cast<int64_t>(v.size())); }
  /// Make the registered arrays visible to the backend (CUDA: one copy of the whole set).
  void upload() {
    if constexpr (!is_cpu_v<Backend>) {
      dev_.resize_uninit({std::max<int64_t>(static_cast<int64_t>(host_.size()), 1)});
      cuda_mem::to_device(dev_.data(), host_.data(), host_.size() * sizeof(int64_t));
      ptr_.resize(off_.size());
      for (size_t i = 0; i < off_.size(); ++i) ptr_[i] = dev_.data() + off_[i];
    }
  }
  /// The array registered as handle h, in backend memory (after upload()).
  const int64_t* operator[](size_t h) const {
    TESSERA_CHECK(h < ptr_.size(), "blt::IndexUpload: array ", h, " was not uploaded");
    return ptr_[h];
  }

 private:
  std::vector<int64_t> host_, off_;
  std::vector<const int64_t*> ptr_;
  Tensor<int64_t, Backend> dev_;
};

/// The index arrays of a PatchLayout in backend memory (see PatchLayout for their meaning) and its sizes.
template <class Backend>
struct PatchIndex {
  int64_t B = 0, T = 0, P = 0, k = 1;
  const int64_t* patch_id = nullptr;    // [B*T]
  const int64_t* pool_seg = nullptr;    // [B*T]
  const int64_t* dec_patch = nullptr;   // [B*T]
  const int64_t* slot_patch = nullptr;  // [B*P*k]
  const int64_t* byte_doc = nullptr;    // [B*T]
  const int64_t* patch_doc = nullptr;   // [B*P]

  /// Point at `layout`'s arrays (CPU: the layout's own vectors, which must outlive this index; CUDA: one
  /// upload).
  template <class Layout>
  void assign(const Layout& layout) {
    B = layout.B, T = layout.T, P = layout.P, k = layout.k;
    up_.clear();
    const size_t a = up_.add(layout.patch_id), b = up_.add(layout.pool_seg), c = up_.add(layout.dec_patch),
                 d = up_.add(layout.slot_patch), e = up_.add(layout.byte_doc), f = up_.add(layout.patch_doc);
    up_.upload();
    patch_id = up_[a], pool_seg = up_[b], dec_patch = up_[c], slot_patch = up_[d], byte_doc = up_[e],
    patch_doc = up_[f];
  }

 private:
  IndexUpload<Backend> up_;
};

}  // namespace tessera::blt
