// Internal to tessera::cuda: the device code of attention_bf16.cu (see there for the design). Tensor cores
// through the WMMA API (16x16x16 bf16 fragments, fp32 accumulators), which tools/cuda-emu emulates, so the
// kernels also run on the CPU. Exactly one .cu file includes this header (hence the unnamed namespace).
//
// WMMA leaves the fragment element layout unspecified. Row-wise work on an accumulator (the online-softmax
// rescale of the output) uses an index fragment: a 16x16 table t[r][c] = 16 r + c loaded into an accumulator
// fragment, whose x[e] names the (row, column) slot e of every accumulator fragment of that type (load, mma
// and store of one fragment type share one mapping). Everything else goes through shared memory.
#pragma once
#include <cuda_bf16.h>
#include <mma.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core_util.cuh"

namespace tessera::cuda_detail {
namespace {

namespace wmma = nvcuda::wmma;
using bf16_t = __nv_bfloat16;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::col_major>;
using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

#ifdef __CUDACC__
using Vec16 = uint4;  // 16-byte global / shared memory accesses
using Float4 = float4;
#else
struct alignas(16) Vec16 {
  unsigned x, y, z, w;
};
struct alignas(16) Float4 {
  float x, y, z, w;
};
#endif

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kTile = 64;  // query rows per block tile = keys per key tile
constexpr int kWarps = 4;  // each warp owns 16 rows (queries, or keys in the dK/dV kernel)
constexpr int kThreads = 32 * kWarps;
constexpr int kSub = kTile / 16;  // 16-wide sub-tiles per tile
constexpr int kSLd = kTile + 4;   // fp32 score tile row stride (floats; WMMA wants a multiple of 4)
constexpr int kPLd = kTile + 8;   // bf16 probability tile row stride (elements; a multiple of 8)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- masks: device copies of ops::mask::{Causal, SlidingWindow, ChunkLocal} ------------------------------
// Each allows key k for query q iff key_lo(q) <= k <= q, equivalently k <= q < query_hi(k); the kernels hoist
// key_lo (per query row) or query_hi (per key row) out of their elementwise loops. range(b, qlo, qhi, Tk) is
// the policy's key_range; full(b, qlo, qhi, klo, khi): every query in [qlo, qhi) sees every key in [klo, khi)
// (both non-empty), so a tile needs no per-element test.

struct Range {
  int64_t lo, hi;
};

__host__ __device__ constexpr int64_t i64min(int64_t a, int64_t b) {
  return a < b ? a : b;
}
__host__ __device__ constexpr int64_t i64max(int64_t a, int64_t b) {
  return a < b ? b : a;
}

struct CausalMaskB {
  __device__ int64_t key_lo(int64_t) const { return 0; }
  __device__ int64_t query_hi(int64_t) const { return INT64_MAX; }
  __host__ __device__ Range range(int64_t, int64_t, int64_t qpos_hi, int64_t Tk) const {
    return {0, i64min(Tk, qpos_hi)};
  }
  __device__ bool full(int64_t, int64_t qlo, int64_t, int64_t, int64_t khi) const { return khi - 1 <= qlo; }
};

struct WindowMaskB {
  int64_t W;
  __device__ int64_t key_lo(int64_t q) const { return q - W + 1; }
  __device__ int64_t query_hi(int64_t k) const { return k + W; }
  __host__ __device__ Range range(int64_t, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    return {i64max(int64_t{0}, qpos_lo - W + 1), i64min(Tk, qpos_hi)};
  }
  __device__ bool full(int64_t, int64_t qlo, int64_t qhi, int64_t klo, int64_t khi) const {
    return khi - 1 <= qlo && klo > qhi - 1 - W;
  }
};

struct ChunkMaskB {
  int64_t C;
  __device__ int64_t key_lo(int64_t q) const { return q - q % C; }
  __device__ int64_t query_hi(int64_t k) const { return k - k % C + C; }
  __host__ __device__ Range range(int64_t, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    return {i64min(Tk, qpos_lo / C * C), i64min(Tk, qpos_hi)};
  }
  __device__ bool full(int64_t, int64_t qlo, int64_t qhi, int64_t klo, int64_t khi) const {
    return khi - 1 <= qlo && klo >= (qhi - 1) - (qhi - 1) % C;
  }
};

/// Key range of the query positions [qpos_lo, qpos_hi) clamped to [0, Tk); empty (lo == hi) when none.
template <class Mask>
__host__ __device__ Range key_range(const Mask& m, int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) {
  if (qpos_hi <= qpos_lo) return {0, 0};
  Range r = m.range(b, qpos_lo, qpos_hi, Tk);
  r.lo = i64max(r.lo, int64_t{0});
  r.hi = i64min(r.hi, Tk);
  if (r.hi < r.lo) r.hi = r.lo;
  return r;
}

/// The aligned 64-key tiles [lo, hi) (tile jt: keys 64 jt ..) that query tile i (rows 64 i ..) sees: the
/// tiles whose dK/dV block visits query tile i, hence the dS tiles the stored-dS backward keeps for it.
template <class Mask>
__host__ __device__ Range query_tile_key_tiles(const Mask& m, int64_t i, int64_t Tq, int64_t Tk,
                                               int64_t q_offset) {
  const int64_t i0 = i * kTile, qpos0 = q_offset + i0;
  const Range kr = key_range(m, 0, qpos0, qpos0 + i64min(kTile, Tq - i0), Tk);
  if (kr.lo >= kr.hi) return {0, 0};
  return {kr.lo / kTile, (kr.hi + kTile - 1) / kTile};
}

struct BDims {
  int64_t B, Tq, Tk, Hq, Hkv, Dh, Dv, q_stride, k_stride, v_stride, o_stride, q_offset;
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e): scores are exponentiated with exp2f
  bool vec;          // strides, head dims and base pointers allow 16-byte accesses
  __host__ __device__ int64_t rep() const { return Hq / Hkv; }
};

// ---- shared-memory tiles -------------------------------------------------------------------------------

template <int kD>
struct TileLd {
  static constexpr int value = kD + 8;  // bf16 tile row stride: 16-byte multiple, staggers the banks
};

/// One tile to load: rows 0..n-1 (row r at src + r * stride), columns 0..cols-1, into dst [kTile][kD + 8];
/// zero in the rest of the kD columns and in rows n..kTile-1 (padding never meets garbage).
struct TileSrc {
  bf16_t* dst;
  const uint16_t* src;
  int64_t stride;
  int n;
  int64_t cols;
};

/// The 8 elements of chunk e (row e / (kD/8), columns 8 (e % (kD/8)) ..) of a tile, zero-padded.
template <int kD>
__device__ Vec16 load_chunk(const TileSrc& t, int e, bool vec) {
  constexpr int kChunks = kD / 8;
  const int r = e / kChunks, c = e % kChunks * 8;
  if (r >= t.n) return Vec16{0, 0, 0, 0};
  const uint16_t* s = t.src + r * t.stride + c;
  if (vec && c + 8 <= t.cols) return *reinterpret_cast<const Vec16*>(s);
  unsigned w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const unsigned lo = c + 2 * i < t.cols ? s[2 * i] : 0u, hi = c + 2 * i + 1 < t.cols ? s[2 * i + 1] : 0u;
    w[i] = lo | hi << 16;
  }
  return Vec16{w[0], w[1], w[2], w[3]};
}

// 16-byte global -> shared copy: cp.async on sm_80+ (no registers; complete after async_wait_all), a plain
// copy elsewhere (the CPU emulation runs it synchronously, which the wait makes equivalent).
__device__ inline void copy16_async(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#else
  *reinterpret_cast<Vec16*>(dst) = *reinterpret_cast<const Vec16*>(src);
#endif
}
__device__ inline void async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

/// Start loading kN tiles: every 16-byte chunk in flight at once (cp.async), zero / partial chunks stored
/// directly. The tiles are complete after async_wait_all() and then a __syncthreads(). Needs blockDim.x ==
/// kThreads.
template <int kD, int kN>
__device__ void load_tiles(const TileSrc (&t)[kN], bool vec) {
  constexpr int kLd = TileLd<kD>::value, kChunks = kD / 8, kIters = kTile * kChunks / kThreads;
  static_assert(kTile * kChunks % kThreads == 0, "whole chunks per thread");
  static_assert(kThreads % kChunks == 0, "a thread's chunks share one column");
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    if (vec && t[i].n == kTile && t[i].cols == kD) {
      // Whole tile (the common case): cp.async only, no bounds tests; thread x copies column chunk x %
      // kChunks of rows x / kChunks + kThreads / kChunks * it.
      constexpr int kRowStep = kThreads / kChunks;
      const int r0 = threadIdx.x / kChunks, c = threadIdx.x % kChunks * 8;
      const uint16_t* src = t[i].src + r0 * t[i].stride + c;
      bf16_t* dst = t[i].dst + r0 * kLd + c;
#pragma unroll
      for (int it = 0; it < kIters; ++it)
        copy16_async(dst + it * kRowStep * kLd, src + it * kRowStep * t[i].stride);
      continue;
    }
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int e = threadIdx.x + it * kThreads, r = e / kChunks, c = e % kChunks * 8;
      bf16_t* dst = t[i].dst + r * kLd + c;
      if (vec && r < t[i].n && c + 8 <= t[i].cols)
        copy16_async(dst, t[i].src + r * t[i].stride + c);
      else
        *reinterpret_cast<Vec16*>(dst) = load_chunk<kD>(t[i], e, vec);
    }
  }
}

/// Start loading key tile j0 (nk rows) of kv head g: K into Ks, V into Vs (load_tiles: complete after
/// async_wait_all() and a __syncthreads()).
template <int kD>
__device__ void load_kv_tile(const BDims& d, const uint16_t* k, const uint16_t* v, int64_t b, int64_t g,
                             int64_t j0, int nk, bf16_t* Ks, bf16_t* Vs) {
  load_tiles<kD, 2>({TileSrc{Ks, k + (b * d.Tk + j0) * d.k_stride + g * d.Dh, d.k_stride, nk, d.Dh},
                     TileSrc{Vs, v + (b * d.Tk + j0) * d.v_stride + g * d.Dv, d.v_stride, nk, d.Dv}},
                    d.vec);
}

/// Start loading query tile i0 (nq rows) of head h: Q into Qs, dO into dOs (as load_kv_tile).
template <int kD>
__device__ void load_q_do_tile(const BDims& d, const uint16_t* q, const uint16_t* dout, int64_t b, int64_t h,
                               int64_t i0, int nq, bf16_t* Qs, bf16_t* dOs) {
  load_tiles<kD, 2>({TileSrc{Qs, q + (b * d.Tq + i0) * d.q_stride + h * d.Dh, d.q_stride, nq, d.Dh},
                     TileSrc{dOs, dout + (b * d.Tq + i0) * d.o_stride + h * d.Dv, d.o_stride, nq, d.Dv}},
                    d.vec);
}

/// The dK/dV kernels' query tile: rows i0 .. i0 + nq of head h, Q and dO into Qs, dOs (load_tiles), and per
/// row lse in log2 units and D into lse2, Ds (-inf and 0 past the tile). Complete after async_wait_all() and
/// a __syncthreads().
template <int kD>
__device__ void load_query_tile(const BDims& d, int64_t b, int64_t h, int64_t i0, int nq, const uint16_t* q,
                                const uint16_t* dout, const float* lse_g, const float* D_g, bf16_t* Qs,
                                bf16_t* dOs, float* lse2, float* Ds) {
  load_q_do_tile<kD>(d, q, dout, b, h, i0, nq, Qs, dOs);
  for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
    const int64_t idx = (b * d.Hq + h) * d.Tq + i0 + i;
    lse2[i] = i < nq ? lse_g[idx] * kLog2e : -INFINITY;
    Ds[i] = i < nq ? D_g[idx] : 0.f;
  }
}

/// Write one 16 x 16 fp32 accumulator as bf16 to global rows (row r at dst + r * stride, columns c0 + ...):
/// rows < nrows and columns < cols only. Staged through `stage` (this warp's, >= 16 x kSLd floats); every
/// lane of the warp must call it.
__device__ void store_acc_bf16(const Acc& acc, float* stage, uint16_t* dst, int64_t stride, int nrows, int c0,
                               int64_t cols, bool vec) {
  const int lane = threadIdx.x % 32, r = lane / 2, cs = lane % 2 * 8;
  __syncwarp();  // earlier reads of `stage` are done
  wmma::store_matrix_sync(stage, acc, kSLd, wmma::mem_row_major);
  __syncwarp();
  if (r >= nrows) return;
  unsigned w[4];  // the 8 bf16 results, two per word (lower column in the low half)
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const bf16_t lo = __float2bfloat16(stage[r * kSLd + cs + 2 * i]);
    const bf16_t hi = __float2bfloat16(stage[r * kSLd + cs + 2 * i + 1]);
    uint16_t l16, h16;
    memcpy(&l16, &lo, 2);
    memcpy(&h16, &hi, 2);
    w[i] = unsigned{l16} | unsigned{h16} << 16;
  }
  uint16_t* d = dst + r * stride + c0 + cs;
  if (vec && c0 + cs + 8 <= cols) {
    *reinterpret_cast<Vec16*>(d) = Vec16{w[0], w[1], w[2], w[3]};
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (c0 + cs + i < cols) d[i] = static_cast<uint16_t>(w[i / 2] >> (16 * (i % 2)));
  }
}

/// s[:, 16 n ..] = A B_n^T (fp32, row stride kSLd) for the sub-tiles n with bit n of `act`: A is 16 rows x kD
/// at a (row stride kLd), B_n the 16 rows n*16.. of a [kTile][kLd] tile at bt (both bf16, row-major). kG
/// sub-tiles are accumulated at a time: 4 loads each A fragment once, fewer saves registers.
template <int kD, int kG>
__device__ void gemm_abt(float* s, const bf16_t* a, const bf16_t* bt, unsigned act) {
  constexpr int kLd = TileLd<kD>::value;
#pragma unroll
  for (int n0 = 0; n0 < kSub; n0 += kG) {
    if (!(act >> n0 & ((1u << kG) - 1u))) continue;
    Acc acc[kG];
#pragma unroll
    for (int j = 0; j < kG; ++j) wmma::fill_fragment(acc[j], 0.f);
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      FragA fa;
      wmma::load_matrix_sync(fa, a + kk * 16, kLd);
#pragma unroll
      for (int j = 0; j < kG; ++j) {
        if (!(act >> (n0 + j) & 1u)) continue;
        FragBCol fb;  // B^T: element (k, c) at bt[(n*16 + c) * kLd + k]
        wmma::load_matrix_sync(fb, bt + (n0 + j) * 16 * kLd + kk * 16, kLd);
        wmma::mma_sync(acc[j], fa, fb, acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kG; ++j)
      if (act >> (n0 + j) & 1u) wmma::store_matrix_sync(s + (n0 + j) * 16, acc[j], kSLd, wmma::mem_row_major);
  }
}

/// acc[f] += P_n C_n over the active sub-tiles n: P is 16 x kTile bf16 at p (row stride kPLd), C the
/// [kTile][kLd] bf16 tile at c (rows n*16.., all kD columns, f = column block).
template <int kD>
__device__ void gemm_pc(Acc (&acc)[kD / 16], const bf16_t* p, const bf16_t* c, unsigned act) {
  constexpr int kLd = TileLd<kD>::value;
#pragma unroll
  for (int n = 0; n < kSub; ++n) {
    if (!(act >> n & 1u)) continue;
    FragA fa;
    wmma::load_matrix_sync(fa, p + n * 16, kPLd);
#pragma unroll
    for (int f = 0; f < kD / 16; ++f) {
      FragBRow fb;
      wmma::load_matrix_sync(fb, c + n * 16 * kLd + f * 16, kLd);
      wmma::mma_sync(acc[f], fa, fb, acc[f]);
    }
  }
}

/// Bit n set when the 16 columns [c0 + 16 n, c0 + 16 n + 16) meet [lo, hi).
__device__ inline unsigned active_subtiles(int64_t c0, int64_t lo, int64_t hi) {
  unsigned act = 0;
#pragma unroll
  for (int n = 0; n < kSub; ++n)
    if (max(lo, c0 + 16 * n) < min(hi, c0 + 16 * n + 16)) act |= 1u << n;
  return act;
}

// Runs of 8 consecutive elements (16-byte aligned) between shared memory and registers: the elementwise
// phases give each lane of a pair (lanes 2r, 2r+1 of a warp: row r) the 8-column run `half` of every
// 16-column sub-tile, so that every shared access is 16 bytes wide.
__device__ inline void ld8(float (&x)[8], const float* p) {
  const Float4 a = *reinterpret_cast<const Float4*>(p), b = *reinterpret_cast<const Float4*>(p + 4);
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
__device__ inline uint16_t bf16_bits_of(bf16_t h) {
  uint16_t u;
  memcpy(&u, &h, 2);
  return u;
}
__device__ inline void ld8_bf16(float (&x)[8], const bf16_t* p) {
  const Vec16 v = *reinterpret_cast<const Vec16*>(p);
  const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint16_t u = static_cast<uint16_t>(w[i / 2] >> (16 * (i % 2)));
    bf16_t h;
    memcpy(&h, &u, 2);
    x[i] = __bfloat162float(h);
  }
}
/// Round x to bf16, store the 8 values at p, and return their (rounded) sum.
__device__ inline float st8_bf16(bf16_t* p, const float (&x)[8]) {
  unsigned w[4];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const bf16_t lo = __float2bfloat16(x[2 * i]), hi = __float2bfloat16(x[2 * i + 1]);
    sum += __bfloat162float(lo) + __bfloat162float(hi);
    w[i] = unsigned{bf16_bits_of(lo)} | unsigned{bf16_bits_of(hi)} << 16;
  }
  *reinterpret_cast<Vec16*>(p) = Vec16{w[0], w[1], w[2], w[3]};
  return sum;
}

// ---- forward -----------------------------------------------------------------------------------------

template <int kD>
struct FwdSmem {
  static constexpr int kLd = TileLd<kD>::value;
  static constexpr size_t q = 0;                                          // bf16 [kTile][kLd]
  static constexpr size_t k = q + sizeof(bf16_t) * kTile * kLd;           // bf16 [kTile][kLd]
  static constexpr size_t v = k + sizeof(bf16_t) * kTile * kLd;           // bf16 [kTile][kLd]
  static constexpr size_t s = v + sizeof(bf16_t) * kTile * kLd;           // f32 [warps][16][kSLd]
  static constexpr size_t p = s + sizeof(float) * kWarps * 16 * kSLd;     // bf16 [warps][16][kPLd]
  static constexpr size_t row = p + sizeof(bf16_t) * kWarps * 16 * kPLd;  // f32 [warps][16]
  static constexpr size_t idx = row + sizeof(float) * kWarps * 16;        // f32 [16][16]
  static constexpr size_t bytes = idx + sizeof(float) * 256;
};

/// Row index (0..15) of every slot of an accumulator fragment, from the index table.
__device__ inline void slot_rows(int (&rows)[Acc::num_elements], const float* idx_table) {
  Acc f;
  wmma::load_matrix_sync(f, idx_table, 16, wmma::mem_row_major);
#pragma unroll
  for (int e = 0; e < Acc::num_elements; ++e) rows[e] = static_cast<int>(f.x[e]) >> 4;
}

/// acc[i] row r *= factor[r] for every fragment (rows through the slot map).
template <int kF>
__device__ void scale_rows(Acc (&acc)[kF], const float* factor, const int (&rows)[Acc::num_elements]) {
  float f[Acc::num_elements];
#pragma unroll
  for (int e = 0; e < Acc::num_elements; ++e) f[e] = factor[rows[e]];
#pragma unroll
  for (int i = 0; i < kF; ++i)
#pragma unroll
    for (int e = 0; e < Acc::num_elements; ++e) acc[i].x[e] *= f[e];
}

// Block per (b, h, 64 query rows; heaviest tiles first); warp w owns rows 16 w... For each key tile: S = Q
// K^T on tensor cores into shared memory, online softmax by lane pairs (lane 2r, 2r+1: row r, alternate
// columns), P rounded to bf16, the output accumulator rescaled and O += P V on tensor cores.
template <int kD, class Mask>
__global__ void __launch_bounds__(kThreads, kD <= 64 ? 3 : 2)
    attn_bf16_fwd_kernel(BDims d, Mask m, const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                         const uint16_t* __restrict__ v, uint16_t* __restrict__ o, float* __restrict__ lse) {
  using L = FwdSmem<kD>;
  constexpr int kLd = L::kLd, kF = kD / 16;
  extern __shared__ __align__(128) float smem_f[];
  char* sm = reinterpret_cast<char*>(smem_f);
  bf16_t* Qs = reinterpret_cast<bf16_t*>(sm + L::q);
  bf16_t* Ks = reinterpret_cast<bf16_t*>(sm + L::k);
  bf16_t* Vs = reinterpret_cast<bf16_t*>(sm + L::v);
  float* idx_table = reinterpret_cast<float*>(sm + L::idx);

  const int64_t nqb = (d.Tq + kTile - 1) / kTile, blk = blockIdx.x;
  const int64_t b = blk / (nqb * d.Hq), h = blk / nqb % d.Hq, i0 = (nqb - 1 - blk % nqb) * kTile;
  const int nq = static_cast<int>(min(int64_t{kTile}, d.Tq - i0));
  const int64_t g = h / d.rep(), qpos0 = d.q_offset + i0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
  const int w0 = warp * 16;  // the warp's first row in the tile
  float* Sw = reinterpret_cast<float*>(sm + L::s) + warp * 16 * kSLd;
  bf16_t* Pw = reinterpret_cast<bf16_t*>(sm + L::p) + warp * 16 * kPLd;
  float* roww = reinterpret_cast<float*>(sm + L::row) + warp * 16;

  load_tiles<kD, 1>({TileSrc{Qs, q + (b * d.Tq + i0) * d.q_stride + h * d.Dh, d.q_stride, nq, d.Dh}}, d.vec);
  for (int e = threadIdx.x; e < 256; e += blockDim.x) idx_table[e] = static_cast<float>(e);
  async_wait_all();
  __syncthreads();
  int rows[Acc::num_elements];
  slot_rows(rows, idx_table);

  Acc oacc[kF];
#pragma unroll
  for (int f = 0; f < kF; ++f) wmma::fill_fragment(oacc[f], 0.f);
  float m_run = -INFINITY, l_run = 0.f;  // this lane pair's row: running max (log2 units) and sum
  const bool row_ok = w0 + r < nq;
  const int64_t qpos = qpos0 + w0 + r, klo = m.key_lo(qpos);
  const Range wr = key_range(m, b, qpos0 + w0, qpos0 + min(nq, w0 + 16), d.Tk);  // the warp's keys
  const Range kr = key_range(m, b, qpos0, qpos0 + nq, d.Tk);                     // the block's keys

  for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kTile) {
    const int nk = static_cast<int>(min(int64_t{kTile}, kr.hi - j0));
    __syncthreads();  // every warp is done with the previous K, V tiles
    load_kv_tile<kD>(d, k, v, b, g, j0, nk, Ks, Vs);
    async_wait_all();
    __syncthreads();
    const unsigned act = active_subtiles(j0, wr.lo, min(wr.hi, j0 + nk));
    if (act == 0) continue;  // warp-uniform: none of this warp's rows sees these keys

    gemm_abt<kD, kSub>(Sw, Qs + w0 * kLd, Ks, act);  // S
    __syncwarp();

    // Online softmax of row r (this lane: columns 16 n + 8 half .. + 8 of each active sub-tile n).
    const bool full = m.full(b, qpos0 + w0, qpos0 + min(nq, w0 + 16), j0, j0 + nk);
    float sv[kSub][8];
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < kSub; ++n) {
      if (!(act >> n & 1u)) continue;
      const int c0 = n * 16 + half * 8;
      ld8(sv[n], Sw + r * kSLd + c0);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t kp = j0 + c0 + i;
        const bool ok = row_ok && c0 + i < nk && (full || (kp <= qpos && kp >= klo));
        sv[n][i] = ok ? sv[n][i] * d.scale_log2 : -INFINITY;
        mx = fmaxf(mx, sv[n][i]);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
    const float m_new = fmaxf(m_run, mx);
    const float alpha = m_new == -INFINITY ? 1.f : exp2f(m_run - m_new);  // 0 while m_run is -inf
    const float m_sub = m_new == -INFINITY ? 0.f : m_new;                 // exp2(-inf - m_sub) = 0
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < kSub; ++n) {
      if (!(act >> n & 1u)) continue;
#pragma unroll
      for (int i = 0; i < 8; ++i) sv[n][i] = exp2f(sv[n][i] - m_sub);
      sum += st8_bf16(Pw + r * kPLd + n * 16 + half * 8, sv[n]);  // the sum of the rounded P that meets V
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    l_run = l_run * alpha + sum;
    m_run = m_new;
    if (half == 0) roww[r] = alpha;
    __syncwarp();
    scale_rows(oacc, roww, rows);
    gemm_pc<kD>(oacc, Pw, Vs, act);
  }

  // O = acc / l; a fully masked row (l = 0) gets O = 0 and lse = -inf.
  __syncwarp();  // every lane is done reading roww
  if (half == 0) roww[r] = l_run > 0.f ? 1.f / l_run : 0.f;
  __syncwarp();
  scale_rows(oacc, roww, rows);
  if (lse && half == 0 && row_ok)
    lse[(b * d.Hq + h) * d.Tq + i0 + w0 + r] = l_run > 0.f ? (m_run + log2f(l_run)) * kLn2 : -INFINITY;
  const int nrows = max(0, min(16, nq - w0));
  uint16_t* orow = o + (b * d.Tq + i0 + w0) * d.o_stride + h * d.Dv;
#pragma unroll
  for (int f = 0; f < kF; ++f)
    if (f * 16 < d.Dv) store_acc_bf16(oacc[f], Sw, orow, d.o_stride, nrows, f * 16, d.Dv, d.vec);
}

// ---- backward ----------------------------------------------------------------------------------------

// Dd[(b*Hq + h)*Tq + i] = dO_i . O_i (fp32 over the bf16 values) for each (token row, head) item.
struct RowdotShape {
  int lanes;  // lanes per item: a power of two dividing 32, so an item's lanes stay within one warp
  bool vec;   // 16-byte loads (8 columns) instead of 2-byte ones
};
/// 16-byte loads where Dv, the row stride and both pointers allow, with the fewest lanes (>= Dv / 8 up to
/// 32) so that a warp covers several items of a small head; otherwise one warp per item.
inline RowdotShape rowdot_shape(const BDims& d, const void* o, const void* dout) {
  const bool vec = d.Dv % 8 == 0 && d.o_stride % 8 == 0 && aligned_to(o, 16) && aligned_to(dout, 16);
  int lanes = 32;
  if (vec)
    for (lanes = 1; lanes < 32 && 8 * lanes < d.Dv;) lanes *= 2;
  return {lanes, vec};
}

__global__ void attn_bf16_rowdot_kernel(BDims d, RowdotShape rs, const uint16_t* __restrict__ o,
                                        const uint16_t* __restrict__ dout, float* __restrict__ Dd) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = d.B * d.Tq * d.Hq;
  // Whole warps return: every lane of the others takes part in the shuffles.
  if (t / 32 * (32 / rs.lanes) >= n) return;
  const int64_t w = t / rs.lanes, row = w / d.Hq, h = w % d.Hq;
  const int sub = threadIdx.x % rs.lanes;
  float s = 0.f;
  if (w < n) {
    const uint16_t* orow = o + row * d.o_stride + h * d.Dv;
    const uint16_t* drow = dout + row * d.o_stride + h * d.Dv;
    if (rs.vec) {
      for (int64_t c = 8 * sub; c < d.Dv; c += 8 * rs.lanes) {
        float a[8], g[8];
        ld8_bf16(a, reinterpret_cast<const bf16_t*>(orow + c));
        ld8_bf16(g, reinterpret_cast<const bf16_t*>(drow + c));
#pragma unroll
        for (int i = 0; i < 8; ++i) s += a[i] * g[i];
      }
    } else {
      for (int64_t c = sub; c < d.Dv; c += rs.lanes) s += bf16_to_float(orow[c]) * bf16_to_float(drow[c]);
    }
  }
  for (int off = rs.lanes / 2; off > 0; off >>= 1) s += __shfl_xor_sync(kFullMask, s, off);
  if (w < n && sub == 0) Dd[(row / d.Tq * d.Hq + h) * d.Tq + row % d.Tq] = s;
}

template <int kD>
struct BwdSmem {
  static constexpr int kLd = TileLd<kD>::value;
  static constexpr size_t t0 = 0;  // four bf16 [kTile][kLd] tiles: Q, dO, K, V
  static constexpr size_t tile = sizeof(bf16_t) * kTile * kLd;
  static constexpr size_t s = 4 * tile;                                    // f32 [warps][16][kSLd]
  static constexpr size_t p = s + sizeof(float) * kWarps * 16 * kSLd;      // bf16 [warps][16][kPLd]
  static constexpr size_t rowq = p + sizeof(bf16_t) * kWarps * 16 * kPLd;  // f32 [kTile] lse * log2 e
  static constexpr size_t rowd = rowq + sizeof(float) * kTile;             // f32 [kTile] D
  static constexpr size_t bytes = rowd + sizeof(float) * kTile;
};

// dK, dV for (b, kv head g, 64 keys j0..): warp w owns keys 16 w... Over every query head of the group and
// every query tile whose key range meets the key tile: S^T = K Q^T, P^T = exp2(S^T scale log2e - lse log2e)
// (bf16), dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - D) scale (bf16, in place of P^T), dK += dS^T Q.
// Each output element is owned by one warp: no atomics, deterministic.
template <int kD, class Mask>
__global__ void __launch_bounds__(kThreads, kD <= 64 ? 3 : 2)
    attn_bf16_bwd_dkdv_kernel(BDims d, Mask m, const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                              const uint16_t* __restrict__ v, const float* __restrict__ lse_g,
                              const float* __restrict__ D_g, const uint16_t* __restrict__ dout,
                              uint16_t* __restrict__ dk, uint16_t* __restrict__ dv) {
  using L = BwdSmem<kD>;
  constexpr int kLd = L::kLd, kF = kD / 16;
  constexpr int kG = kD > 64 ? 1 : kSub;  // with 2 x 8 accumulator fragments live, S^T one sub-tile at a time
  extern __shared__ __align__(128) float smem_f[];
  char* sm = reinterpret_cast<char*>(smem_f);
  bf16_t* Qs = reinterpret_cast<bf16_t*>(sm + L::t0);
  bf16_t* dOs = reinterpret_cast<bf16_t*>(sm + L::t0 + L::tile);
  bf16_t* Ks = reinterpret_cast<bf16_t*>(sm + L::t0 + 2 * L::tile);
  bf16_t* Vs = reinterpret_cast<bf16_t*>(sm + L::t0 + 3 * L::tile);
  float* lse2 = reinterpret_cast<float*>(sm + L::rowq);
  float* Ds = reinterpret_cast<float*>(sm + L::rowd);

  const int64_t nkb = (d.Tk + kTile - 1) / kTile, blk = blockIdx.x;
  const int64_t b = blk / (nkb * d.Hkv), g = blk / nkb % d.Hkv, j0 = blk % nkb * kTile;
  const int nk = static_cast<int>(min(int64_t{kTile}, d.Tk - j0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
  const int w0 = warp * 16;  // the warp's first key in the tile
  float* Sw = reinterpret_cast<float*>(sm + L::s) + warp * 16 * kSLd;
  bf16_t* Pw = reinterpret_cast<bf16_t*>(sm + L::p) + warp * 16 * kPLd;
  const bool key_ok = w0 + r < nk;
  const int64_t kpos = j0 + w0 + r, qhi = m.query_hi(kpos);
  const int64_t wk_lo = j0 + w0, wk_hi = j0 + min(nk, w0 + 16);  // the warp's keys (maybe none)

  load_kv_tile<kD>(d, k, v, b, g, j0, nk, Ks, Vs);

  Acc dka[kF], dva[kF];
#pragma unroll
  for (int f = 0; f < kF; ++f) {
    wmma::fill_fragment(dka[f], 0.f);
    wmma::fill_fragment(dva[f], 0.f);
  }

  const int64_t rep = d.rep();
  for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
    for (int64_t i0 = 0; i0 < d.Tq; i0 += kTile) {
      const int nq = static_cast<int>(min(int64_t{kTile}, d.Tq - i0));
      const int64_t qpos0 = d.q_offset + i0;
      const Range kr = key_range(m, b, qpos0, qpos0 + nq, d.Tk);
      if (max(kr.lo, j0) >= min(kr.hi, j0 + nk)) continue;  // block-uniform: this query tile never sees us
      __syncthreads();  // every warp is done with the previous query tiles (and K, V are loaded)
      load_query_tile<kD>(d, b, h, i0, nq, q, dout, lse_g, D_g, Qs, dOs, lse2, Ds);
      async_wait_all();  // Q, dO (and the first time K, V)
      __syncthreads();

      // Query sub-tiles (16 rows) of this tile that can see any of the warp's keys.
      unsigned act = 0;
#pragma unroll
      for (int n = 0; n < kSub; ++n) {
        const int64_t lo = qpos0 + 16 * n, hi = qpos0 + min(nq, 16 * n + 16);
        const Range rn = key_range(m, b, lo, hi, d.Tk);
        if (max(rn.lo, wk_lo) < min(rn.hi, wk_hi)) act |= 1u << n;
      }
      if (act == 0) continue;  // warp-uniform

      gemm_abt<kD, kG>(Sw, Ks + w0 * kLd, Qs, act);  // S^T: rows = the warp's keys, columns = queries
      __syncwarp();
      const bool full = m.full(b, qpos0, qpos0 + nq, wk_lo, wk_hi);
#pragma unroll
      for (int n = 0; n < kSub; ++n) {  // P^T, this lane: key row r, queries 16 n + 8 half .. + 8
        if (!(act >> n & 1u)) continue;
        const int c0 = n * 16 + half * 8;
        float x[8], l2[8];
        ld8(x, Sw + r * kSLd + c0);
        ld8(l2, lse2 + c0);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int64_t qp = qpos0 + c0 + i;
          const bool ok = key_ok && c0 + i < nq && l2[i] != -INFINITY && (full || (qp >= kpos && qp < qhi));
          x[i] = ok ? exp2f(x[i] * d.scale_log2 - l2[i]) : 0.f;
        }
        st8_bf16(Pw + r * kPLd + c0, x);
      }
      __syncwarp();
      gemm_pc<kD>(dva, Pw, dOs, act);                 // dV += P^T dO
      gemm_abt<kD, kG>(Sw, Vs + w0 * kLd, dOs, act);  // dP^T = V dO^T
      __syncwarp();  // also: every lane has loaded its P^T fragments before P^T is overwritten
#pragma unroll
      for (int n = 0; n < kSub; ++n) {  // dS^T = P^T (dP^T - D) scale, over P^T
        if (!(act >> n & 1u)) continue;
        const int c0 = n * 16 + half * 8;
        float p[8], dp[8], dd[8];
        ld8_bf16(p, Pw + r * kPLd + c0);
        ld8(dp, Sw + r * kSLd + c0);
        ld8(dd, Ds + c0);
#pragma unroll
        for (int i = 0; i < 8; ++i) p[i] = p[i] * (dp[i] - dd[i]) * d.scale;
        st8_bf16(Pw + r * kPLd + c0, p);
      }
      __syncwarp();
      gemm_pc<kD>(dka, Pw, Qs, act);  // dK += dS^T Q (scale already in dS)
    }
  }

  const int nrows = max(0, min(16, nk - w0));
  uint16_t* dkrow = dk + (b * d.Tk + j0 + w0) * d.k_stride + g * d.Dh;
  uint16_t* dvrow = dv + (b * d.Tk + j0 + w0) * d.v_stride + g * d.Dv;
#pragma unroll
  for (int f = 0; f < kF; ++f) {
    if (f * 16 < d.Dh) store_acc_bf16(dka[f], Sw, dkrow, d.k_stride, nrows, f * 16, d.Dh, d.vec);
    if (f * 16 < d.Dv) store_acc_bf16(dva[f], Sw, dvrow, d.v_stride, nrows, f * 16, d.Dv, d.vec);
  }
}

// dQ for (b, h, 64 query rows; heaviest tiles first): warp w owns rows 16 w... Over the block's key range:
// S = Q K^T, P = exp2(S scale log2e - lse log2e) (bf16), dP = dO V^T, dS = P (dP - D) scale (bf16),
// dQ += dS K. Recomputes S and dP (the price of a deterministic dQ without atomics).
template <int kD, class Mask>
__global__ void __launch_bounds__(kThreads, kD <= 64 ? 3 : 2)
    attn_bf16_bwd_dq_kernel(BDims d, Mask m, const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                            const uint16_t* __restrict__ v, const float* __restrict__ lse_g,
                            const float* __restrict__ D_g, const uint16_t* __restrict__ dout,
                            uint16_t* __restrict__ dq) {
  using L = BwdSmem<kD>;
  constexpr int kLd = L::kLd, kF = kD / 16;
  extern __shared__ __align__(128) float smem_f[];
  char* sm = reinterpret_cast<char*>(smem_f);
  bf16_t* Qs = reinterpret_cast<bf16_t*>(sm + L::t0);
  bf16_t* dOs = reinterpret_cast<bf16_t*>(sm + L::t0 + L::tile);
  bf16_t* Ks = reinterpret_cast<bf16_t*>(sm + L::t0 + 2 * L::tile);
  bf16_t* Vs = reinterpret_cast<bf16_t*>(sm + L::t0 + 3 * L::tile);

  const int64_t nqb = (d.Tq + kTile - 1) / kTile, blk = blockIdx.x;
  const int64_t b = blk / (nqb * d.Hq), h = blk / nqb % d.Hq, i0 = (nqb - 1 - blk % nqb) * kTile;
  const int nq = static_cast<int>(min(int64_t{kTile}, d.Tq - i0));
  const int64_t g = h / d.rep(), qpos0 = d.q_offset + i0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
  const int w0 = warp * 16;
  float* Sw = reinterpret_cast<float*>(sm + L::s) + warp * 16 * kSLd;
  bf16_t* Pw = reinterpret_cast<bf16_t*>(sm + L::p) + warp * 16 * kPLd;

  load_q_do_tile<kD>(d, q, dout, b, h, i0, nq, Qs, dOs);
  const bool row_ok = w0 + r < nq;
  const int64_t qpos = qpos0 + w0 + r, klo = m.key_lo(qpos);
  const int64_t ridx = (b * d.Hq + h) * d.Tq + i0 + w0 + r;
  const float l2 = row_ok ? lse_g[ridx] * kLog2e : -INFINITY;
  const float Di = row_ok ? D_g[ridx] : 0.f;

  Acc dqa[kF];
#pragma unroll
  for (int f = 0; f < kF; ++f) wmma::fill_fragment(dqa[f], 0.f);
  const Range wr = key_range(m, b, qpos0 + w0, qpos0 + min(nq, w0 + 16), d.Tk);
  const Range kr = key_range(m, b, qpos0, qpos0 + nq, d.Tk);

  for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kTile) {
    const int nk = static_cast<int>(min(int64_t{kTile}, kr.hi - j0));
    __syncthreads();  // every warp is done with the previous K, V tiles (and Q, dO are loaded)
    load_kv_tile<kD>(d, k, v, b, g, j0, nk, Ks, Vs);
    async_wait_all();  // K, V (and the first time Q, dO)
    __syncthreads();
    const unsigned act = active_subtiles(j0, wr.lo, min(wr.hi, j0 + nk));
    if (act == 0) continue;

    gemm_abt<kD, kSub>(Sw, Qs + w0 * kLd, Ks, act);  // S
    __syncwarp();
    const bool full = m.full(b, qpos0 + w0, qpos0 + min(nq, w0 + 16), j0, j0 + nk);
#pragma unroll
    for (int n = 0; n < kSub; ++n) {  // P, this lane: row r, keys 16 n + 8 half .. + 8
      if (!(act >> n & 1u)) continue;
      const int c0 = n * 16 + half * 8;
      float x[8];
      ld8(x, Sw + r * kSLd + c0);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t kp = j0 + c0 + i;
        const bool ok = row_ok && c0 + i < nk && l2 != -INFINITY && (full || (kp <= qpos && kp >= klo));
        x[i] = ok ? exp2f(x[i] * d.scale_log2 - l2) : 0.f;
      }
      st8_bf16(Pw + r * kPLd + c0, x);
    }
    __syncwarp();                                     // every lane is done reading S before dP overwrites it
    gemm_abt<kD, kSub>(Sw, dOs + w0 * kLd, Vs, act);  // dP
    __syncwarp();
#pragma unroll
    for (int n = 0; n < kSub; ++n) {  // dS = P (dP - D) scale, over P
      if (!(act >> n & 1u)) continue;
      const int c0 = n * 16 + half * 8;
      float p[8], dp[8];
      ld8_bf16(p, Pw + r * kPLd + c0);
      ld8(dp, Sw + r * kSLd + c0);
#pragma unroll
      for (int i = 0; i < 8; ++i) p[i] = p[i] * (dp[i] - Di) * d.scale;
      st8_bf16(Pw + r * kPLd + c0, p);
    }
    __syncwarp();
    gemm_pc<kD>(dqa, Pw, Ks, act);  // dQ += dS K
  }

  const int nrows = max(0, min(16, nq - w0));
  uint16_t* dqrow = dq + (b * d.Tq + i0 + w0) * d.q_stride + h * d.Dh;
#pragma unroll
  for (int f = 0; f < kF; ++f)
    if (f * 16 < d.Dh) store_acc_bf16(dqa[f], Sw, dqrow, d.q_stride, nrows, f * 16, d.Dh, d.vec);
}

}  // namespace
}  // namespace tessera::cuda_detail
