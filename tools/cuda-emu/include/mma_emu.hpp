// CPU emulation of the warp-level tensor-core instructions cuda/mma_sm80.cuh uses: mma.sync.aligned
// m16n8k16.row.col.f32.bf16.bf16.f32, ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16, cvt.rn.bf16x2.f32,
// on top of cuda_emu.hpp's launch model (one std::thread per CUDA thread, a barrier per warp).
//
// Unlike the WMMA emulation (wmma_emu.hpp: whole tiles in every thread, layout unspecified), these
// instructions have documented per-lane fragment layouts that kernels depend on, so the emulation moves
// exactly those registers between lanes: every lane publishes its registers (or its ldmatrix row address) to
// a per-warp exchange, the warp meets at its barrier, each lane assembles the whole operands from the
// published registers with the PTX ISA's layout formulas ("Matrix Fragments for mma.m16n8k16 with floating
// point type", "Warp-level matrix load instruction: ldmatrix") and computes its own result registers, and the
// warp meets again before the exchange is reused. A kernel whose fragment bookkeeping disagrees with the PTX
// layouts computes wrong results here just as on a GPU.
//
// All 32 lanes must call each instruction (as .sync.aligned requires; a lane that skips one deadlocks the
// warp here). ldmatrix checks that every row address lies in the block's dynamic shared memory and is
// 16-byte aligned (relative to its base, which kernels align to 128). mma accumulates the 16 exact bf16
// products in double and rounds once to fp32 (the hardware's internal accumulation order is unspecified).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "cuda_emu.hpp"

namespace emu::mma {

constexpr int kMaxWarps = 32;            // 1024 threads per block
inline uint32_t xreg[kMaxWarps][32][6];  // published fragment registers (A: 0-3, B: 4-5)
inline const char* xrow[kMaxWarps][32];  // published ldmatrix row addresses

inline void warp_meet() {
  if (my_warp >= kMaxWarps) fail("mma emulation: warp index beyond 32");
  warp_bar[my_warp]->arrive_and_wait();
}

inline float bf16_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t half_of(uint32_t reg, int i) {
  return static_cast<uint16_t>(i ? reg >> 16 : reg & 0xffffu);
}

// Element i (0..7) of lane `lane`'s A fragment (register i / 2, half i % 2) is A[row][col]:
//   row = groupID for a0, a1, a4, a5, groupID + 8 otherwise;
//   col = 2 threadID_in_group + (i & 1), plus 8 for i >= 4.
inline void a_element(int lane, int i, int& row, int& col) {
  const int g = lane >> 2, t = lane & 3;
  row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
  col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}
// Element i (0..3) of the B fragment (register i / 2, half i % 2) is B[row][col] (row = k, col = n):
//   row = 2 threadID_in_group + (i & 1) (+ 8 for i >= 2); col = groupID.
inline void b_element(int lane, int i, int& row, int& col) {
  const int g = lane >> 2, t = lane & 3;
  row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
  col = g;
}
// Element i (0..3) of the C / D fragment is C[row][col]: row = groupID (i < 2) or groupID + 8; col =
// 2 threadID_in_group + (i & 1).
inline void c_element(int lane, int i, int& row, int& col) {
  const int g = lane >> 2, t = lane & 3;
  row = i < 2 ? g : g + 8;
  col = t * 2 + (i & 1);
}

/// d += A B: this lane's 4 accumulator elements.
inline void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  uint32_t* mine = xreg[my_warp][my_lane];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b[0];
  mine[5] = b[1];
  warp_meet();
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const uint32_t* x = xreg[my_warp][lane];
    int r, c;
    for (int i = 0; i < 8; ++i) {
      a_element(lane, i, r, c);
      A[r][c] = bf16_float(half_of(x[i / 2], i % 2));
    }
    for (int i = 0; i < 4; ++i) {
      b_element(lane, i, r, c);
      B[r][c] = bf16_float(half_of(x[4 + i / 2], i % 2));
    }
  }
  warp_meet();  // every lane has read the exchange before the next instruction overwrites it
  for (int i = 0; i < 4; ++i) {
    int r, c;
    c_element(my_lane, i, r, c);
    double acc = 0;
    for (int k = 0; k < 16; ++k) acc += double(A[r][k]) * double(B[k][c]);
    d[i] = static_cast<float>(double(d[i]) + acc);
  }
}

/// ldmatrix.x4 (trans: .trans): lanes 8m .. 8m+7 give the row addresses of matrix m; register m of lane l
/// gets elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of matrix m, or with trans (2 (l % 4), l / 4)
/// and (2 (l % 4) + 1, l / 4); the first element in the low half.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  const char* p = static_cast<const char*>(row);
  const char* base = reinterpret_cast<const char*>(smem.data());
  const size_t bytes = smem.size() * sizeof(float);
  if (p < base || p + 16 > base + bytes) {
    std::fprintf(stderr, "EMU: ldmatrix: lane %d's row address is outside the dynamic shared memory\n",
                 my_lane);
    std::abort();
  }
  if ((p - base) % 16 != 0) {
    std::fprintf(stderr, "EMU: ldmatrix: lane %d's row address (shared offset %lld) is not 16-byte aligned\n",
                 my_lane, static_cast<long long>(p - base));
    std::abort();
  }
  xrow[my_warp][my_lane] = p;
  warp_meet();
  const int l = my_lane;
  for (int m = 0; m < 4; ++m) {
    uint16_t e[2];
    for (int j = 0; j < 2; ++j) {
      const int rr = trans ? 2 * (l % 4) + j : l / 4;  // row of the 8 x 8 matrix in memory
      const int cc = trans ? l / 4 : 2 * (l % 4) + j;  // column
      std::memcpy(&e[j], xrow[my_warp][8 * m + rr] + 2 * cc, 2);
    }
    r[m] = uint32_t(e[0]) | uint32_t(e[1]) << 16;
  }
  warp_meet();
}

/// cvt.rn.bf16x2.f32: round to nearest even (NaN stays NaN), `lo` in the low half.
inline uint16_t bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline uint32_t pack_bf16x2(float lo, float hi) {
  return uint32_t(bf16_rne(lo)) | uint32_t(bf16_rne(hi)) << 16;
}

}  // namespace emu::mma
