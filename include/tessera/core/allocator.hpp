// Memory behind backend tags. CPU: 64-byte aligned host memory. CUDA: declared here, defined in
// cuda/memory.cu (link tessera::cuda to use it).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

#include "tessera/core/backend.hpp"

// Under AddressSanitizer the bytes between a buffer's end and its 64-byte rounding are poisoned, so that an
// access past a tensor's last element is reported even where it stays inside the rounded allocation.
#if defined(__SANITIZE_ADDRESS__)
#define TESSERA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TESSERA_ASAN 1
#endif
#endif
#ifdef TESSERA_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace tessera {

template <class B>
struct Allocator;

template <>
struct Allocator<cpu> {
  static void* allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) throw std::bad_alloc();
#ifdef TESSERA_ASAN
    ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + bytes, rounded - bytes);
#endif
    return p;
  }
  static void deallocate(void* p) { std::free(p); }
  static void memset_zero(void* p, size_t bytes) {
    if (bytes) std::memset(p, 0, bytes);
  }
  static void copy(void* dst, const void* src, size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }
};

/// Defined in cuda/memory.cu. Errors are thrown as tessera::Error naming the CUDA call.
template <>
struct Allocator<cuda> {
  static void* allocate(size_t bytes);
  static void deallocate(void* p);
  static void memset_zero(void* p, size_t bytes);
  static void copy(void* dst, const void* src, size_t bytes);  // device -> device
};

namespace cuda_mem {
/// Host <-> device copies (defined in cuda/memory.cu).
void to_device(void* dst, const void* src, size_t bytes);
void to_host(void* dst, const void* src, size_t bytes);
/// Work alongside the default stream, on a second (non-blocking) stream of its own. aside_begin(): what is
/// queued there next starts after everything queued so far on the default stream. aside_zero(): zero bytes at
/// p there. aside_join(): what is queued next on the default stream waits for all of it. Between begin and
/// join the memory zeroed aside must not be used (zero_grads_async in core/param.hpp wraps this).
void aside_begin();
void aside_zero(void* p, size_t bytes);
void aside_join();
/// Number of visible devices; 0 when the driver or device is missing (never throws).
int device_count();
/// TESSERA_CUDA_PROFILE (cuda/check.hpp): drop the operations counted so far, e.g. after warm-up steps, so
/// that the table at exit covers only what follows. No effect when the profiler is off.
void profile_restart();
/// TESSERA_CUDA_PROFILE: the operations issued since the previous call (or the start) belong to phase `name`;
/// the table at exit then also lists each phase's costliest operations. No effect when the profiler is off.
void profile_phase_end(const char* name);
/// Whether TESSERA_CUDA_PROFILE is set (the profiler records).
bool profile_on();
}  // namespace cuda_mem

}  // namespace tessera
