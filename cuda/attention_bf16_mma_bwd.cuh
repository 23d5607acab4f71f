// Internal to tessera::cuda: the bf16 attention BACKWARD of attention_bf16.cu on mma.sync m16n8k16 + ldmatrix
// (mma_sm80.cuh), with the scores, P, dP and dS in registers. Included by attention_bf16.cu after
// attention_bf16_kernels.cuh (masks, BDims, tile loader, constants, the D = rowsum(dO * O) kernel) and
// attention_bf16_mma.cuh. Same two-kernel structure, semantics and precision contract as the WMMA backward
// there: every gradient element has one owner (no atomics, bitwise deterministic), P = exp2(S scale log2e -
// lse log2e) rounded to bf16 before its products, dS = P (dP - D) scale computed from that rounded P and
// rounded to bf16, dQ / dK / dV accumulated in fp32 and rounded once when stored.
//
// Fragment bookkeeping (see mma_sm80.cuh): lane 4 g + t holds accumulator rows g and g + 8 and, in 8-column
// n-tile j, columns 8 j + 2 t, +1; two n-tiles of accumulators are, element for element, one A fragment
// (acc_to_a), which is how P and dS feed the next product without leaving registers. Work is done in 16-wide
// chunks of the loop dimension, which are exactly the k-steps of those products.
//
// dK/dV kernel: block per (b, kv head, 64 keys), warp w owns keys 16 w ..; K and V stay in shared memory,
// over every query head of the group and every query tile whose key range meets the block, Q and dO tiles
// stream through two shared-memory buffers (the next tile loads while this one is used); per 16-query chunk
// the warp's keys can see:
//   S^T = K_w Q_c^T (A: K rows, B: Q rows via ldmatrix) and dP^T = V_w dO_c^T in one k-loop (4 independent
//   accumulator chains: the mma latency of one chain is what bounded the earlier one-product-at-a-time
//   loop), P^T (needs lse per query column), dV += P^T dO_c (B: dO rows via ldmatrix.trans),
//   dS^T = P^T (dP^T - D) scale, dK += dS^T Q_c (B: Q rows via ldmatrix.trans).
// dQ kernel: block per (b, h, 64 query rows; heaviest first), warp w owns query rows 16 w .. (their Q and dO
// A fragments in registers); K and V tiles stream through two buffers (the second in Q's and dO's space);
// per 16-key chunk the warp's rows can see:
//   S = Q_w K_c^T and dP = dO_w V_c^T in one k-loop, P (lse per row), dS = P (dP - D) scale, dQ += dS K_c.
// P's exponential is ex2.approx of one fma (s scale log2e - lse log2e), as in the forward.
// Stored-dS mode (AttnBf16Dq in launch_attention_bf16.hpp, the default where the buffer fits): the dK/dV
// kernel also writes each bf16 dS^T block it computes into a [64 keys][64 queries] tile per (b, h, query
// tile, key tile the query tile sees; slots numbered by attn_ds_tile_offsets_kernel), and
// attn_bf16_bwd_dq_stored_kernel computes dQ = dS K from those tiles: 5 tile products per (query tile, key
// tile) instead of 7, the same dS values, deterministic, and no S, P or dP recomputed. Cost: the buffer (B Hq
// 8 KB per visible tile, 1.1 GB at B 4, T 4096, H 16 causal) written once and read once.
#pragma once
#include "attention_bf16_kernels.cuh"
#include "mma_sm80.cuh"

namespace tessera::cuda_detail {
namespace {

/// Shared memory of the mma backward kernels: bf16 [kTile][kD + 8] tiles. dQ kernel: Q, dO, K, V, then a
/// second K, V buffer in Q's and dO's place. dK/dV kernel: K, V and two buffers of a query tile: Q, dO and
/// the rows' lse * log2(e) and D (fp32 [kTile] each).
template <int kD>
struct MmaBwdSmem {
  static constexpr int kLd = TileLd<kD>::value;
  static constexpr size_t tile = sizeof(bf16_t) * kTile * kLd;
  static constexpr size_t q = 0, dout = tile, k = 2 * tile, v = 3 * tile;
  static constexpr size_t dq_bytes = 4 * tile;
  // dK/dV kernel: query buffer i at q_buf(i), dout_buf(i), rowq(i), rowd(i).
  static constexpr size_t q_buf(int i) { return i == 0 ? q : 4 * tile; }
  static constexpr size_t dout_buf(int i) { return i == 0 ? dout : 5 * tile; }
  static constexpr size_t rowq(int i) { return 6 * tile + 2 * i * sizeof(float) * kTile; }
  static constexpr size_t rowd(int i) { return rowq(i) + sizeof(float) * kTile; }
  static constexpr size_t dkdv_bytes = rowq(2);
};

/// The bf16 values (as floats) of an A fragment in accumulator order: p[j][e] is element e of n-tile j.
__device__ __forceinline__ void a_to_acc(float (&p)[2][4], const uint32_t (&a)[4]) {
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    p[j][0] = mma::bf16x2_lo(a[2 * j]);
    p[j][1] = mma::bf16x2_hi(a[2 * j]);
    p[j][2] = mma::bf16x2_lo(a[2 * j + 1]);
    p[j][3] = mma::bf16x2_hi(a[2 * j + 1]);
  }
}

/// dS = P (dP - D) scale from the bf16-rounded P of the A fragment `pa` (D of element e of n-tile j: d_of(j,
/// e)), rounded to bf16 as the A fragment of the next product.
template <class DOf>
__device__ __forceinline__ void ds_fragment(uint32_t (&dsa)[4], const uint32_t (&pa)[4], const float (&dp)[2][4],
                                            DOf d_of, float scale) {
  float pr[2][4];
  a_to_acc(pr, pa);
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) pr[j][e] = pr[j][e] * (dp[j][e] - d_of(j, e)) * scale;
  mma::acc_to_a(dsa, pr[0], pr[1]);
}

/// acc [16][kD] += A (16 x 16) B, B the 16 rows of a row-major [k][n] tile at `tile` (ldmatrix.trans).
template <int kD>
__device__ __forceinline__ void mma_add_rows(float (&acc)[kD / 8][4], const uint32_t (&a)[4], const bf16_t* tile,
                                             int ld) {
#pragma unroll
  for (int dn = 0; dn < kD / 16; ++dn) {
    uint32_t b[4];
    mma::load_b_kn(b, tile + dn * 16, ld);
    mma::mma_nt(acc[2 * dn], a, b, 0);
    mma::mma_nt(acc[2 * dn + 1], a, b, 1);
  }
}

/// Store this lane's part of a [16][kD] fp32 accumulator block as bf16 to global rows (row r at dst + r *
/// stride): rows < nrows, columns < cols. 4-byte stores of column pairs when `vec` (cols and strides
/// multiples of 8, 16-byte aligned base).
template <int kOt>
__device__ __forceinline__ void store_rows_bf16(const float (&acc)[kOt][4], uint16_t* dst, int64_t stride,
                                                int nrows, int64_t cols, bool vec) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = g + 8 * hr;
    if (r >= nrows) continue;
    uint16_t* row = dst + r * stride;
#pragma unroll
    for (int n = 0; n < kOt; ++n) {
      const int c = 8 * n + 2 * t;
      if (c >= cols) continue;
      const uint32_t u = mma::pack_bf16x2(acc[n][2 * hr], acc[n][2 * hr + 1]);
      if (vec) {
        *reinterpret_cast<uint32_t*>(row + c) = u;
      } else {
        row[c] = static_cast<uint16_t>(u & 0xffffu);
        if (c + 1 < cols) row[c + 1] = static_cast<uint16_t>(u >> 16);
      }
    }
  }
}

/// Store a warp's dS^T fragment (rows: keys w0 .. w0 + 15 of the key tile, columns: queries c0 .. c0 + 15 of
/// the query tile, as ds_fragment leaves it) into a [64 keys][64 queries] bf16 tile in global memory: every
/// lane writes two 4-byte pairs in each of its two rows, so each row's 32 bytes are one full sector.
__device__ __forceinline__ void store_ds_t(uint16_t* tile, int w0, int c0, const uint32_t (&a)[4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  uint32_t* r0 = reinterpret_cast<uint32_t*>(tile + (w0 + g) * kTile + c0 + 2 * t);
  uint32_t* r1 = reinterpret_cast<uint32_t*>(tile + (w0 + g + 8) * kTile + c0 + 2 * t);
  r0[0] = a[0];  // row g, columns 2t, 2t + 1
  r1[0] = a[1];  // row g + 8
  r0[4] = a[2];  // row g, columns 2t + 8, 2t + 9
  r1[4] = a[3];
}

template <int kD, class Mask>
__global__ void __launch_bounds__(kThreads, kD <= 64 ? 3 : 2)
    attn_bf16_bwd_dkdv_mma_kernel(BDims d, Mask m, const uint16_t* __restrict__ q,
                                  const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                                  const float* __restrict__ lse_g, const float* __restrict__ D_g,
                                  const uint16_t* __restrict__ dout, uint16_t* __restrict__ dk,
                                  uint16_t* __restrict__ dv, uint16_t* __restrict__ ds,
                                  const int64_t* __restrict__ tile_off, int64_t n_tiles) {
  using L = MmaBwdSmem<kD>;
  constexpr int kLd = L::kLd, kKs = kD / 16, kOt = kD / 8, kQc = kTile / 16;
  static_assert(kWarps * 16 == kTile, "one 16-key m-tile per warp");
  static_assert(kThreads >= kTile, "one thread per query row for lse and D");
  extern __shared__ __align__(128) float smem_f[];
  char* sm = reinterpret_cast<char*>(smem_f);
  bf16_t* Ks = reinterpret_cast<bf16_t*>(sm + L::k);
  bf16_t* Vs = reinterpret_cast<bf16_t*>(sm + L::v);
  // Query buffer `buf` (0 or 1; selects, not arrays, so that nothing lands in local memory).
  auto Qb = [&](int buf) { return reinterpret_cast<bf16_t*>(sm + (buf ? L::q_buf(1) : L::q_buf(0))); };
  auto dOb = [&](int buf) { return reinterpret_cast<bf16_t*>(sm + (buf ? L::dout_buf(1) : L::dout_buf(0))); };
  auto lse2b = [&](int buf) { return reinterpret_cast<float*>(sm + (buf ? L::rowq(1) : L::rowq(0))); };
  auto Db = [&](int buf) { return reinterpret_cast<float*>(sm + (buf ? L::rowd(1) : L::rowd(0))); };

  const int64_t nkb = (d.Tk + kTile - 1) / kTile, blk = blockIdx.x;
  const int64_t b = blk / (nkb * d.Hkv), gk = blk / nkb % d.Hkv, j0 = blk % nkb * kTile;
  const int nk = static_cast<int>(min(int64_t{kTile}, d.Tk - j0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int w0 = warp * 16;                                      // the warp's first key in the tile
  const int64_t wk_lo = j0 + w0, wk_hi = j0 + min(nk, w0 + 16);  // the warp's keys (maybe none)
  // This lane's keys (rows g, g + 8): position, validity and the end of the queries that see them.
  int64_t kpos[2], qhi[2];
  bool key_ok[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    kpos[hr] = j0 + w0 + g + 8 * hr;
    key_ok[hr] = w0 + g + 8 * hr < nk;
    qhi[hr] = m.query_hi(kpos[hr]);
  }

  // The query tiles to visit: u = (h - first head of the group) * nqb + i0 / kTile over every query head of
  // the group, those whose key range meets this key tile (block-uniform). Tile u + 1's Q, dO, lse and D load
  // into the other buffer while tile u is used.
  const int64_t rep = d.rep(), nqb = (d.Tq + kTile - 1) / kTile, n_u = rep * nqb;
  auto sees_us = [&](int64_t u) {
    const int64_t i0 = u % nqb * kTile, qpos0 = d.q_offset + i0;
    const Range kr = key_range(m, b, qpos0, qpos0 + min(int64_t{kTile}, d.Tq - i0), d.Tk);
    return max(kr.lo, j0) < min(kr.hi, j0 + nk);
  };
  auto next_tile = [&](int64_t u) {
    while (u < n_u && !sees_us(u)) ++u;
    return u;
  };
  auto load_tile = [&](int64_t u, int buf) {
    const int64_t i0 = u % nqb * kTile;
    load_query_tile<kD>(d, b, gk * rep + u / nqb, i0, static_cast<int>(min(int64_t{kTile}, d.Tq - i0)), q,
                        dout, lse_g, D_g, Qb(buf), dOb(buf), lse2b(buf), Db(buf));
  };

  load_kv_tile<kD>(d, k, v, b, gk, j0, nk, Ks, Vs);
  // Stored-dS mode: the slot of tile u's dS^T tile among its (b, h)'s (tile_off: a global load, so the next
  // tile's is fetched a tile ahead, like its lse and D).
  auto slot_of = [&](int64_t uu) {
    const int64_t i = uu % nqb;
    return tile_off[i] + blk % nkb - query_tile_key_tiles(m, i, d.Tq, d.Tk, d.q_offset).lo;
  };
  int64_t u = next_tile(0);
  if (u < n_u) load_tile(u, 0);
  int64_t slot = ds && u < n_u ? slot_of(u) : 0;
  async_wait_all();
  __syncthreads();

  float dka[kOt][4], dva[kOt][4];
#pragma unroll
  for (int n = 0; n < kOt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;

  for (int buf = 0; u < n_u; buf ^= 1) {
    const int64_t u_next = next_tile(u + 1);
    // The next tile into the other buffer (released by the last barrier): Q and dO by cp.async now; its rows'
    // lse and D loaded into registers now and stored to shared memory after this tile's work, so that the
    // loads' latency does not stall it (a plain load feeding a shared store right away would).
    float next_lse = -INFINITY, next_d = 0.f;
    int64_t next_slot = 0;
    if (u_next < n_u) {
      const int64_t ni0 = u_next % nqb * kTile, nh = gk * rep + u_next / nqb;
      const int nnq = static_cast<int>(min(int64_t{kTile}, d.Tq - ni0));
      load_q_do_tile<kD>(d, q, dout, b, nh, ni0, nnq, Qb(buf ^ 1), dOb(buf ^ 1));
      const int r = threadIdx.x;
      if (r < nnq) {
        const int64_t idx = (b * d.Hq + nh) * d.Tq + ni0 + r;
        next_lse = lse_g[idx];
        next_d = D_g[idx];
      }
      if (ds) next_slot = slot_of(u_next);
    }
    const int64_t i0 = u % nqb * kTile, qpos0 = d.q_offset + i0;
    const int nq = static_cast<int>(min(int64_t{kTile}, d.Tq - i0));
    const bf16_t* Qs = Qb(buf);
    const bf16_t* dOs = dOb(buf);
    const float* lse2 = lse2b(buf);
    const float* Ds = Db(buf);
    // Stored-dS mode: this (query tile, key tile) pair's dS^T tile, [64 keys][64 queries] bf16.
    uint16_t* ds_tile = ds ? ds + ((b * d.Hq + gk * rep + u / nqb) * n_tiles + slot) * (kTile * kTile) : nullptr;

#pragma unroll 1
    for (int qc = 0; qc < kQc; ++qc) {
      const int c0 = 16 * qc;
      if (c0 >= nq) break;
      const int64_t lo = qpos0 + c0, hi = qpos0 + min(nq, c0 + 16);
      const Range rn = key_range(m, b, lo, hi, d.Tk);
      // Warp-uniform: no key of ours is seen. (Its dS block stays unwritten in stored-dS mode: the dQ kernel
      // skips the same (16 queries, 16 keys) blocks, by the same visibility test from the other side.)
      if (max(rn.lo, wk_lo) >= min(rn.hi, wk_hi)) continue;
      // Queries [vis_lo, vis_hi) of this chunk that see the keys of rows g, g + 8 (k <= q < query_hi(k), and
      // the tile's end; empty for keys past the tile): the elementwise test is two compares and a select.
      int vis_lo[2], vis_hi[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        vis_lo[hr] = key_ok[hr] ? static_cast<int>(min(max(kpos[hr] - lo, int64_t{0}), int64_t{16})) : 0;
        vis_hi[hr] =
            key_ok[hr] ? static_cast<int>(min(max(min(qhi[hr], hi) - lo, int64_t{0}), int64_t{16})) : 0;
      }

      // S^T = K_w Q_c^T and dP^T = V_w dO_c^T in one k-loop (4 independent accumulator chains): rows = the
      // warp's keys, columns = the chunk's 16 queries.
      float s[2][4] = {}, dp[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < kKs; ++kk) {
        uint32_t ka[4], qb[4], va[4], ob[4];
        mma::load_a(ka, Ks + w0 * kLd + kk * 16, kLd);
        mma::load_b_nk(qb, Qs + c0 * kLd + kk * 16, kLd);
        mma::load_a(va, Vs + w0 * kLd + kk * 16, kLd);
        mma::load_b_nk(ob, dOs + c0 * kLd + kk * 16, kLd);
        mma::mma_nt(s[0], ka, qb, 0);
        mma::mma_nt(s[1], ka, qb, 1);
        mma::mma_nt(dp[0], va, ob, 0);
        mma::mma_nt(dp[1], va, ob, 1);
      }
      // P^T (0 where masked), rounded to bf16 into an A fragment.
      float p[2][4];
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hr = e / 2, col = 8 * j + 2 * t + e % 2;
          const float l2 = lse2[c0 + col];  // -inf: a query row without visible keys (P = 0)
          const float x = mma::exp2_approx(fmaf(s[j][e], d.scale_log2, -l2));
          p[j][e] = col >= vis_lo[hr] && col < vis_hi[hr] && l2 != -INFINITY ? x : 0.f;
        }
      uint32_t pa[4];
      mma::acc_to_a(pa, p[0], p[1]);
      mma_add_rows<kD>(dva, pa, dOs + c0 * kLd, kLd);  // dV += P^T dO_c
      // dS^T = P^T (dP^T - D) scale (D per query column), then dK += dS^T Q_c.
      uint32_t dsa[4];
      ds_fragment(
          dsa, pa, dp, [&](int j, int e) { return Ds[c0 + 8 * j + 2 * t + e % 2]; }, d.scale);
      mma_add_rows<kD>(dka, dsa, Qs + c0 * kLd, kLd);
      if (ds_tile) store_ds_t(ds_tile, w0, c0, dsa);
    }
    if (u_next < n_u && threadIdx.x < kTile) {  // as load_query_tile: lse in log2 units, -inf / 0 past the tile
      lse2b(buf ^ 1)[threadIdx.x] = next_lse * kLog2e;
      Db(buf ^ 1)[threadIdx.x] = next_d;
    }
    async_wait_all();  // the next query tile
    __syncthreads();   // ... visible; every warp is done with this one
    u = u_next;
    slot = next_slot;
  }

  const int nrows = max(0, min(16, nk - w0));
  store_rows_bf16(dka, dk + (b * d.Tk + j0 + w0) * d.k_stride + gk * d.Dh, d.k_stride, nrows, d.Dh, d.vec);
  store_rows_bf16(dva, dv + (b * d.Tk + j0 + w0) * d.v_stride + gk * d.Dv, d.v_stride, nrows, d.Dv, d.vec);
}

template <int kD, class Mask>
__global__ void __launch_bounds__(kThreads, kD <= 64 ? 3 : 2)
    attn_bf16_bwd_dq_mma_kernel(BDims d, Mask m, const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                                const uint16_t* __restrict__ v, const float* __restrict__ lse_g,
                                const float* __restrict__ D_g, const uint16_t* __restrict__ dout,
                                uint16_t* __restrict__ dq) {
  using L = MmaBwdSmem<kD>;
  constexpr int kLd = L::kLd, kKs = kD / 16, kOt = kD / 8, kKc = kTile / 16;
  extern __shared__ __align__(128) float smem_f[];
  char* sm = reinterpret_cast<char*>(smem_f);
  bf16_t* Qs = reinterpret_cast<bf16_t*>(sm + L::q);
  bf16_t* dOs = reinterpret_cast<bf16_t*>(sm + L::dout);
  bf16_t* Ks = reinterpret_cast<bf16_t*>(sm + L::k);
  bf16_t* Vs = reinterpret_cast<bf16_t*>(sm + L::v);

  const int64_t nqb = (d.Tq + kTile - 1) / kTile, blk = blockIdx.x;
  const int64_t b = blk / (nqb * d.Hq), h = blk / nqb % d.Hq, i0 = (nqb - 1 - blk % nqb) * kTile;
  const int nq = static_cast<int>(min(int64_t{kTile}, d.Tq - i0));
  const int64_t gk = h / d.rep(), qpos0 = d.q_offset + i0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int w0 = warp * 16;

  const Range wr = key_range(m, b, qpos0 + w0, qpos0 + min(nq, w0 + 16), d.Tk);
  const Range kr = key_range(m, b, qpos0, qpos0 + nq, d.Tk);
  // Key / value tiles double-buffered: tile j in buffer j % 2, buffer 1 in the space of Q and dO (free once
  // their fragments are in registers), so tile j + 1 loads while tile j is used.
  auto Kbuf = [&](int buf) { return buf ? Qs : Ks; };  // selects, not arrays: nothing in local memory
  auto Vbuf = [&](int buf) { return buf ? dOs : Vs; };
  auto load_kv = [&](int64_t j0, int buf) {
    const int nk = static_cast<int>(min(int64_t{kTile}, kr.hi - j0));
    load_kv_tile<kD>(d, k, v, b, gk, j0, nk, Kbuf(buf), Vbuf(buf));
  };

  load_q_do_tile<kD>(d, q, dout, b, h, i0, nq, Qs, dOs);
  if (kr.lo < kr.hi) load_kv(kr.lo, 0);
  // This lane's rows g, g + 8: position, validity, first visible key, lse (log2 units) and D.
  int64_t qpos[2], klo[2];
  bool row_ok[2];
  float l2[2], Di[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = w0 + g + 8 * hr;
    row_ok[hr] = r < nq;
    qpos[hr] = qpos0 + r;
    klo[hr] = m.key_lo(qpos[hr]);
    const int64_t idx = (b * d.Hq + h) * d.Tq + i0 + r;
    l2[hr] = row_ok[hr] ? lse_g[idx] * kLog2e : -INFINITY;
    Di[hr] = row_ok[hr] ? D_g[idx] : 0.f;
  }
  async_wait_all();
  __syncthreads();
  uint32_t qa[kKs][4], oa[kKs][4];  // the warp's Q and dO rows as A fragments
#pragma unroll
  for (int kk = 0; kk < kKs; ++kk) {
    mma::load_a(qa[kk], Qs + w0 * kLd + kk * 16, kLd);
    mma::load_a(oa[kk], dOs + w0 * kLd + kk * 16, kLd);
  }
  __syncthreads();  // every warp holds its Q and dO fragments: buffer 1 is free

  float dqa[kOt][4];
#pragma unroll
  for (int n = 0; n < kOt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dqa[n][e] = 0.f;

  int buf = 0;
  for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kTile, buf ^= 1) {
    const int nk = static_cast<int>(min(int64_t{kTile}, kr.hi - j0));
    if (j0 + kTile < kr.hi) load_kv(j0 + kTile, buf ^ 1);  // its buffer was released by the last barrier
    const bf16_t* Kc = Kbuf(buf);
    const bf16_t* Vc = Vbuf(buf);

#pragma unroll 1
    for (int kc = 0; kc < kKc; ++kc) {
      const int c0 = 16 * kc;
      if (c0 >= nk) break;
      const int64_t klo_c = j0 + c0, khi_c = j0 + min(nk, c0 + 16);
      if (max(wr.lo, klo_c) >= min(wr.hi, khi_c)) continue;  // warp-uniform: none of these keys is seen
      // Visible columns [vis_lo, vis_hi) of rows g, g + 8 in this chunk (empty for rows past the tile or
      // without any visible key): the mask's key_lo(q) <= k <= q and the tile's end, so that the elementwise
      // test below is two integer compares and a select.
      int vis_lo[2], vis_hi[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const bool live = row_ok[hr] && l2[hr] != -INFINITY;
        vis_lo[hr] = live ? static_cast<int>(min(max(klo[hr] - klo_c, int64_t{0}), int64_t{16})) : 0;
        vis_hi[hr] =
            live ? static_cast<int>(min(max(min(qpos[hr] + 1, khi_c) - klo_c, int64_t{0}), int64_t{16})) : 0;
      }

      // S = Q_w K_c^T and dP = dO_w V_c^T in one k-loop: 4 independent accumulator chains.
      float s[2][4] = {}, dp[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < kKs; ++kk) {
        uint32_t kb[4], vb[4];
        mma::load_b_nk(kb, Kc + c0 * kLd + kk * 16, kLd);
        mma::load_b_nk(vb, Vc + c0 * kLd + kk * 16, kLd);
        mma::mma_nt(s[0], qa[kk], kb, 0);
        mma::mma_nt(s[1], qa[kk], kb, 1);
        mma::mma_nt(dp[0], oa[kk], vb, 0);
        mma::mma_nt(dp[1], oa[kk], vb, 1);
      }
      float p[2][4];
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hr = e / 2, col = 8 * j + 2 * t + e % 2;
          const float x = mma::exp2_approx(fmaf(s[j][e], d.scale_log2, -l2[hr]));
          p[j][e] = col >= vis_lo[hr] && col < vis_hi[hr] ? x : 0.f;
        }
      uint32_t pa[4];
      mma::acc_to_a(pa, p[0], p[1]);
      // dS = P (dP - D) scale (D per query row), then dQ += dS K_c.
      uint32_t dsa[4];
      ds_fragment(dsa, pa, dp, [&](int, int e) { return Di[e / 2]; }, d.scale);
      mma_add_rows<kD>(dqa, dsa, Kc + c0 * kLd, kLd);
    }
    async_wait_all();  // the next tile
    __syncthreads();   // ... visible; every warp is done with this one
  }

  const int nrows = max(0, min(16, nq - w0));
  store_rows_bf16(dqa, dq + (b * d.Tq + i0 + w0) * d.q_stride + h * d.Dh, d.q_stride, nrows, d.Dh, d.vec);
}

/// Stored-dS mode: the dS tile slots of query tile i start at off[i] (per (b, h); off[nqb] = tiles per
/// (b, h)). One thread: nqb is T / 64.
template <class Mask>
__global__ void attn_ds_tile_offsets_kernel(Mask m, int64_t nqb, int64_t Tq, int64_t Tk, int64_t q_offset,
                                            int64_t* __restrict__ off) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t acc = 0;
  for (int64_t i = 0; i < nqb; ++i) {
    off[i] = acc;
    const Range r = query_tile_key_tiles(m, i, Tq, Tk, q_offset);
    acc += r.hi - r.lo;
  }
  off[nqb] = acc;
}

/// Shared memory of the stored-dS dQ kernel: two buffers of (K tile bf16 [kTile][kD + 8], dS^T tile bf16
/// [kTile][kTile + 8]).
template <int kD>
struct DqStoredSmem {
  static constexpr int kLd = TileLd<kD>::value, kDsLd = kTile + 8;
  static constexpr size_t k_tile = sizeof(bf16_t) * kTile * kLd, ds_tile = sizeof(bf16_t) * kTile * kDsLd;
  static constexpr size_t k(int buf) { return buf ? k_tile + ds_tile : 0; }
  static constexpr size_t ds(int buf) { return k(buf) + k_tile; }
  static constexpr size_t bytes = 2 * (k_tile + ds_tile);
};

/// dQ from the dS tiles the dK/dV kernel stored: dQ = dS K over the key tiles query tile i sees, in the
/// order the recomputing dQ kernel adds them (key tiles, then 16-key chunks, ascending). Block per (b, h, 64
/// query rows; heaviest first), warp w owns query rows 16 w ..; the K and dS^T tiles of key tile j + 1 load
/// while tile j is used. Per 16-key chunk the warp's rows can see: A = the warp's dS rows (ldmatrix.trans of
/// the stored dS^T), dQ += A K_c (K rows by ldmatrix.trans): 2 kD / 16 mma, no recomputation of S, P, dP.
template <int kD, class Mask>
__global__ void __launch_bounds__(kThreads, kD <= 64 ? 4 : 3)
    attn_bf16_bwd_dq_stored_kernel(BDims d, Mask m, const uint16_t* __restrict__ k,
                                   const uint16_t* __restrict__ ds, const int64_t* __restrict__ tile_off,
                                   int64_t n_tiles, uint16_t* __restrict__ dq) {
  using L = DqStoredSmem<kD>;
  constexpr int kLd = L::kLd, kDsLd = L::kDsLd, kOt = kD / 8, kKc = kTile / 16;
  extern __shared__ __align__(128) float smem_f[];
  char* sm = reinterpret_cast<char*>(smem_f);
  auto Kb = [&](int buf) { return reinterpret_cast<bf16_t*>(sm + (buf ? L::k(1) : L::k(0))); };
  auto DSb = [&](int buf) { return reinterpret_cast<bf16_t*>(sm + (buf ? L::ds(1) : L::ds(0))); };

  const int64_t nqb = (d.Tq + kTile - 1) / kTile, blk = blockIdx.x;
  const int64_t b = blk / (nqb * d.Hq), h = blk / nqb % d.Hq, qt = nqb - 1 - blk % nqb, i0 = qt * kTile;
  const int nq = static_cast<int>(min(int64_t{kTile}, d.Tq - i0));
  const int64_t gk = h / d.rep(), qpos0 = d.q_offset + i0;
  const int warp = threadIdx.x / 32, w0 = warp * 16;
  const Range wr = key_range(m, b, qpos0 + w0, qpos0 + min(nq, w0 + 16), d.Tk);  // the warp's keys
  const Range tiles = query_tile_key_tiles(m, qt, d.Tq, d.Tk, d.q_offset);
  const uint16_t* ds_q = ds + ((b * d.Hq + h) * n_tiles + tile_off[qt]) * (kTile * kTile);

  auto load = [&](int64_t jt, int buf) {
    const int64_t j0 = jt * kTile;
    const int nk = static_cast<int>(min(int64_t{kTile}, d.Tk - j0));
    load_tiles<kD, 1>({TileSrc{Kb(buf), k + (b * d.Tk + j0) * d.k_stride + gk * d.Dh, d.k_stride, nk, d.Dh}},
                      d.vec);
    // The dS^T tile: 64 rows of 64 bf16 (128 bytes, 8 chunks of 16), dense and 16-byte aligned.
    const uint16_t* src = ds_q + (jt - tiles.lo) * (kTile * kTile);
    bf16_t* dst = DSb(buf);
#pragma unroll
    for (int it = 0; it < kTile * 8 / kThreads; ++it) {
      const int e = threadIdx.x + it * kThreads, r = e / 8, c = e % 8 * 8;
      copy16_async(dst + r * kDsLd + c, src + r * kTile + c);
    }
  };

  float dqa[kOt][4];
#pragma unroll
  for (int n = 0; n < kOt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dqa[n][e] = 0.f;

  if (tiles.lo < tiles.hi) load(tiles.lo, 0);
  async_wait_all();
  __syncthreads();
  int buf = 0;
  for (int64_t jt = tiles.lo; jt < tiles.hi; ++jt, buf ^= 1) {
    if (jt + 1 < tiles.hi) load(jt + 1, buf ^ 1);  // its buffer was released by the last barrier
    const int64_t j0 = jt * kTile;
    const int nk = static_cast<int>(min(int64_t{kTile}, d.Tk - j0));
    const bf16_t* Ks = Kb(buf);
    const bf16_t* DSs = DSb(buf);
#pragma unroll
    for (int kc = 0; kc < kKc; ++kc) {
      const int c0 = 16 * kc;
      if (c0 >= nk) break;
      if (max(wr.lo, j0 + c0) >= min(wr.hi, j0 + min(nk, c0 + 16))) continue;  // warp-uniform: none seen
      uint32_t a[4];
      mma::load_a_t(a, DSs + c0 * kDsLd + w0, kDsLd);  // dS rows w0.. = columns of the stored dS^T
      mma_add_rows<kD>(dqa, a, Ks + c0 * kLd, kLd);
    }
    async_wait_all();  // the next tiles
    __syncthreads();   // ... visible; every warp is done with these
  }

  const int nrows = max(0, min(16, nq - w0));
  store_rows_bf16(dqa, dq + (b * d.Tq + i0 + w0) * d.q_stride + h * d.Dh, d.q_stride, nrows, d.Dh, d.vec);
}

}  // namespace
}  // namespace tessera::cuda_detail
