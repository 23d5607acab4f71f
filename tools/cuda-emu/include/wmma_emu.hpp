// CPU emulation of bf16 (cuda_bf16.h: __nv_bfloat16 and its conversions) and of the WMMA API (mma.h:
// nvcuda::wmma fragments, load_matrix_sync, store_matrix_sync, fill_fragment, mma_sync) for the 16x16x16
// bf16 x bf16 -> fp32 shape, on top of cuda_emu.hpp's launch model.
//
// CUDA leaves the mapping of a fragment's elements to the lanes of a warp unspecified, so here every thread's
// fragment holds the WHOLE 16 x 16 tile (num_elements = 256, element i = (row i / 16, column i % 16) of the
// logical matrix) and mma_sync computes it redundantly in every lane. This is a valid implementation for
// kernels that touch fragments only through the API and through uniform elementwise loops over
// x[0 .. num_elements) (the same operation on every element, or one chosen through a fragment loaded from an
// index table, whose x[i] then says which (row, column) slot i holds). Checked like the hardware requires:
// ldm a multiple of 16 bytes, pointers 32-byte aligned (relative to the dynamic shared memory base inside
// it). store_matrix_sync writes each element from one lane only (element i from lane i % 32), so reading a
// stored tile from another lane without a __syncwarp() in between is a race the emulation can expose.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_emu.hpp"

// ---- bf16
// ----------------------------------------------------------------------------------------------------
struct __nv_bfloat16 {
  uint16_t __x;
};
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even, NaN stays NaN (as cvt.rn.bf16.f32)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __float2bfloat16(f);
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.__x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- WMMA
// ----------------------------------------------------------------------------------------------------
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "wmma emulation: only the 16x16x16 shape");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float>
                                                 : std::is_same_v<T, __nv_bfloat16>,
                "wmma emulation: bf16 matrix_a / matrix_b and float accumulators only");

 public:
  using element_type = T;
  enum { num_elements = 256 };
  T x[num_elements];
};

namespace emu_detail {
inline void check(const void* p, unsigned ldm, size_t elem, const char* who) {
  const auto* c = static_cast<const char*>(p);
  const auto* s = reinterpret_cast<const char*>(emu::smem.data());
  const bool in_smem = c >= s && c < s + emu::smem.size() * sizeof(float);
  const uintptr_t addr = in_smem ? uintptr_t(c - s) : reinterpret_cast<uintptr_t>(c);
  if (addr % 32 != 0) {
    std::fprintf(stderr, "EMU: %s: pointer not 32-byte aligned (%s offset %llu)\n", who,
                 in_smem ? "shared" : "global", (unsigned long long)addr);
    std::abort();
  }
  if ((ldm * elem) % 16 != 0 || ldm < 16) {
    std::fprintf(stderr, "EMU: %s: ldm %u is not a multiple of 16 bytes or < 16\n", who, ldm);
    std::abort();
  }
}
}  // namespace emu_detail

template <class Use, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const T& v) {
  for (auto& e : f.x) e = v;
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  for (auto& e : f.x) e = v;
}

// matrix_a: logical A[m][k]; row_major: p[m * ldm + k], col_major: p[k * ldm + m].
// matrix_b: logical B[k][n]; row_major: p[k * ldm + n], col_major: p[n * ldm + k].
template <class Use, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>);
  emu_detail::check(p, ldm, 2, "load_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r * 16 + c] = std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r];
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  emu_detail::check(p, ldm, 4, "load_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  emu_detail::check(p, ldm, 4, "store_matrix_sync");
  for (int i = emu::my_lane; i < 256; i += 32) {
    const int r = i / 16, c = i % 16;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i];
  }
}

/// d = a b + c with fp32 accumulation; bf16 products are exact in fp32. d may alias c.
template <class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float af[256], bf[256], out[256];
  for (int i = 0; i < 256; ++i) {
    af[i] = __bfloat162float(a.x[i]);
    bf[i] = __bfloat162float(b.x[i]);
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float acc = c.x[m * 16 + n];
      for (int k = 0; k < 16; ++k) acc += af[m * 16 + k] * bf[k * 16 + n];
      out[m * 16 + n] = acc;
    }
  std::memcpy(d.x, out, sizeof out);
}

}  // namespace nvcuda::wmma
