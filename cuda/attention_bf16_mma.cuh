// Internal to tessera::cuda: the FlashAttention-2-style bf16 forward of attention_bf16.cu on mma.sync
// m16n8k16 + ldmatrix (mma_sm80.cuh), with the scores, the online softmax and P in registers. Included by
// attention_bf16.cu after attention_bf16_kernels.cuh, whose masks, BDims, tile loader (load_tiles: cp.async,
// zero padding) and constants it shares; same semantics and precision contract as the WMMA forward there.
//
// Block per (b, h, 64 query rows; heaviest query tiles first), 4 warps, warp w owns query rows 16 w .. 16 w +
// 15 and keeps their Q fragments in registers (kD / 16 A fragments, loaded once by ldmatrix). Key tiles of 64
// keys stream through two shared-memory buffers of K and V: tile j + 1 loads while tile j is used, one
// barrier per tile (FA2's order, V_j during S and K_{j+1} during P V, took two).
// Per key tile and warp (a warp that sees no key of the tile idles; otherwise all 4 chunks of 16 keys, in
// straight-line code: the busiest warp of a diagonal tile computes them all anyway, and without branches
// between chunks the independent mma chains of different chunks overlap instead of running one by one):
//   S = Q K^T: 2 mma per (16-key chunk, 16 dims), head-dim step outer, chunks inner (8 accumulator chains in
//   flight), K's B fragments by ldmatrix (rows = keys);
//   online softmax on the accumulators: lane 4 g + t holds rows g and g + 8, columns 8 n + 2 t, +1 of every
//   8-key n-tile n; scores scaled to log2 units, masked per element only on tiles the mask cuts (or the last,
//   partial one), row max over the quad by two xor shuffles; P = exp2(s - m) rounded to bf16 straight into
//   the A fragments of P V (the S accumulator layout of n-tiles 2j, 2j+1 is the A layout of key chunk j), and
//   the row sum adds exactly those rounded values (the contract: o is a convex combination of V rows), on the
//   tensor cores as P times a block of ones next to P V (one mma per key chunk replaces 64 unpack-and-add
//   instructions per lane and key tile; every lane ends with its rows' full sums);
//   O = alpha O + P V: V's B fragments by ldmatrix.trans (rows = keys), 2 mma per (16-key chunk, 16 dims).
// End: O / l (l: the row sums of the ones product) rounded to bf16 and stored from the accumulators (4-byte
// stores of bf16 pairs), lse = (m + log2 l) ln 2; a row with no visible key (l = 0) gets O = 0 and lse =
// -inf.
#pragma once
#include "attention_bf16_kernels.cuh"
#include "mma_sm80.cuh"

namespace tessera::cuda_detail {
namespace {

/// Shared memory of the mma forward: Q and two buffers of K and V, bf16 [kTile][kD + 8] each (16-byte rows
/// whose banks are staggered, so that the 8 row addresses of every ldmatrix phase hit distinct banks).
template <int kD>
struct MmaFwdSmem {
  static constexpr int kLd = TileLd<kD>::value;
  static constexpr size_t tile = sizeof(bf16_t) * kTile * kLd;
  static constexpr size_t q = 0;
  static constexpr size_t k(int buf) { return buf ? 3 * tile : tile; }
  static constexpr size_t v(int buf) { return buf ? 4 * tile : 2 * tile; }
  static constexpr size_t bytes = 5 * tile;
};

template <int kD, class Mask>
__global__ void __launch_bounds__(kThreads, kD <= 64 ? 3 : 2)
    attn_bf16_fwd_mma_kernel(BDims d, Mask m, const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                             const uint16_t* __restrict__ v, uint16_t* __restrict__ o,
                             float* __restrict__ lse) {
  using L = MmaFwdSmem<kD>;
  constexpr int kLd = L::kLd;
  constexpr int kKs = kD / 16;     // 16-wide k-steps of S = Q K^T (head dim)
  constexpr int kNt = kTile / 8;   // 8-key n-tiles of S
  constexpr int kKc = kTile / 16;  // 16-key chunks of a key tile (the k-steps of P V)
  constexpr int kOt = kD / 8;      // 8-column n-tiles of O
  static_assert(kWarps * 16 == kTile, "one 16-row m-tile per warp");
  extern __shared__ __align__(128) float smem_f[];
  char* sm = reinterpret_cast<char*>(smem_f);
  bf16_t* Qs = reinterpret_cast<bf16_t*>(sm + L::q);
  // K / V buffer `buf` (selects, not arrays: nothing in local memory).
  auto Kb = [&](int buf) { return reinterpret_cast<bf16_t*>(sm + (buf ? L::k(1) : L::k(0))); };
  auto Vb = [&](int buf) { return reinterpret_cast<bf16_t*>(sm + (buf ? L::v(1) : L::v(0))); };

  const int64_t nqb = (d.Tq + kTile - 1) / kTile, blk = blockIdx.x;
  const int64_t b = blk / (nqb * d.Hq), h = blk / nqb % d.Hq, i0 = (nqb - 1 - blk % nqb) * kTile;
  const int nq = static_cast<int>(min(int64_t{kTile}, d.Tq - i0));
  const int64_t g_kv = h / d.rep(), qpos0 = d.q_offset + i0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int w0 = warp * 16;  // the warp's first row in the block tile

  const Range wr = key_range(m, b, qpos0 + w0, qpos0 + min(nq, w0 + 16), d.Tk);  // the warp's keys
  const Range kr = key_range(m, b, qpos0, qpos0 + nq, d.Tk);                     // the block's keys
  // This lane's rows g, g + 8: visible keys [key_lo, key_hi) (empty for rows past the tile).
  int64_t key_lo[2], key_hi[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = w0 + g + 8 * hr;
    const int64_t qpos = qpos0 + r;
    key_lo[hr] = r < nq ? max(int64_t{0}, m.key_lo(qpos)) : 0;
    key_hi[hr] = r < nq ? min(d.Tk, qpos + 1) : 0;
  }
  // Key tile j's K and V into buffer `buf`.
  auto load_kv = [&](int64_t j0, int buf) {
    const int nk = static_cast<int>(min(int64_t{kTile}, kr.hi - j0));
    load_kv_tile<kD>(d, k, v, b, g_kv, j0, nk, Kb(buf), Vb(buf));
  };

  load_tiles<kD, 1>({TileSrc{Qs, q + (b * d.Tq + i0) * d.q_stride + h * d.Dh, d.q_stride, nq, d.Dh}}, d.vec);
  if (kr.lo < kr.hi) load_kv(kr.lo, 0);
  async_wait_all();
  __syncthreads();
  uint32_t qa[kKs][4];  // the warp's Q rows as A fragments
#pragma unroll
  for (int kk = 0; kk < kKs; ++kk) mma::load_a(qa[kk], Qs + w0 * kLd + kk * 16, kLd);

  float oacc[kOt][4];
#pragma unroll
  for (int n = 0; n < kOt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) oacc[n][e] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};  // rows g, g + 8: running max in log2 units (quad-uniform)
  // Running row sums of the rounded P, as an accumulator of P times a 16 x 8 block of ones (one mma per key
  // chunk instead of unpacking and adding every P value): lsum[0], [1] hold row g's sum, [2], [3] row g +
  // 8's.
  float lsum[4] = {0.f, 0.f, 0.f, 0.f};
  const uint32_t ones[2] = {0x3f803f80u, 0x3f803f80u};  // bf16 pairs (1, 1): the B fragment of all ones

  int buf = 0;
  for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kTile, buf ^= 1) {
    const int nk = static_cast<int>(min(int64_t{kTile}, kr.hi - j0));
    if (j0 + kTile < kr.hi) load_kv(j0 + kTile, buf ^ 1);  // its buffers were released by the last barrier
    const bf16_t* Ks = Kb(buf);
    const bf16_t* Vs = Vb(buf);
    // Does the warp see any key of this tile (warp-uniform)?
    const bool active = max(wr.lo, j0) < min(wr.hi, j0 + nk);
    uint32_t pa[kKc][4];  // P (bf16) as the A fragments of P V, per key chunk

    if (active) {
      // S = Q K^T over the whole key tile, k-step outer: 2 kKc independent accumulator chains per k-step
      // (chunks the warp cannot see are computed too and masked below; the block waits for its busiest warp
      // at the next barrier anyway, and straight-line code lets the mma of different chunks overlap).
      float s[kNt][4];
#pragma unroll
      for (int n = 0; n < kNt; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kKs; ++kk)
#pragma unroll
        for (int kc = 0; kc < kKc; ++kc) {
          uint32_t kb[4];
          mma::load_b_nk(kb, Ks + kc * 16 * kLd + kk * 16, kLd);
          mma::mma_nt(s[2 * kc], qa[kk], kb, 0);
          mma::mma_nt(s[2 * kc + 1], qa[kk], kb, 1);
        }

      // Scale to log2 units and mask: per element only where the mask cuts the warp's part of the tile (which
      // includes every chunk the warp's rows cannot see) or the tile is partial.
      const bool need_mask = nk < kTile || !m.full(b, qpos0 + w0, qpos0 + min(nq, w0 + 16), j0, j0 + nk);
      int lo_rel[2], hi_rel[2];  // visible columns of rows g, g + 8 in this tile
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        lo_rel[hr] = static_cast<int>(min(max(key_lo[hr] - j0, int64_t{0}), int64_t{kTile}));
        hi_rel[hr] = static_cast<int>(min(max(key_hi[hr] - j0, int64_t{0}), int64_t{nk}));
      }
#pragma unroll
      for (int n = 0; n < kNt; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] *= d.scale_log2;
      if (need_mask) {  // a separate, warp-uniform branch: unmasked tiles skip the per-element tests entirely
#pragma unroll
        for (int n = 0; n < kNt; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int hr = e / 2, col = 8 * n + 2 * t + e % 2;
            if (col < lo_rel[hr] || col >= hi_rel[hr]) s[n][e] = -INFINITY;
          }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kNt; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
      float alpha[2], m_sub[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(kFullMask, mx[hr], 1));
        mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(kFullMask, mx[hr], 2));
        const float m_new = fmaxf(m_run[hr], mx[hr]);
        alpha[hr] = m_new == -INFINITY ? 1.f : mma::exp2_approx(m_run[hr] - m_new);  // 0 while m_run is -inf
        m_sub[hr] = m_new == -INFINITY ? 0.f : m_new;                                // exp2(-inf - m_sub) = 0
        m_run[hr] = m_new;
      }

      // P = exp2(s - m) rounded to bf16 into the A fragments (0 for masked keys); the row sums take the same
      // rounded values (in the P V phase below).
#pragma unroll
      for (int kc = 0; kc < kKc; ++kc) {
        float p[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) p[j][e] = mma::exp2_approx(s[2 * kc + j][e] - m_sub[e / 2]);
        mma::acc_to_a(pa[kc], p[0], p[1]);
      }
      // Rescale O and the sums by alpha = exp2(m_old - m_new), skipped when no row of the warp has a new
      // maximum (alpha == 1 exactly: the product would change nothing), which after the first key tiles is
      // the common case: 68 multiplies per lane and tile.
      if (__any_sync(kFullMask, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int e = 0; e < 4; ++e) lsum[e] *= alpha[e / 2];
#pragma unroll
        for (int n = 0; n < kOt; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) oacc[n][e] *= alpha[e / 2];
      }

      // O += P V and the row sums.
#pragma unroll
      for (int kc = 0; kc < kKc; ++kc) {  // every chunk: P is 0 on the ones the warp cannot see
        mma::mma_bf16_16816(lsum, pa[kc], ones);
#pragma unroll
        for (int dn = 0; dn < kD / 16; ++dn) {
          uint32_t vb[4];
          mma::load_b_kn(vb, Vs + kc * 16 * kLd + dn * 16, kLd);
          mma::mma_nt(oacc[2 * dn], pa[kc], vb, 0);
          mma::mma_nt(oacc[2 * dn + 1], pa[kc], vb, 1);
        }
      }
    }
    async_wait_all();  // K_{j+1}, V_{j+1}
    __syncthreads();   // ... visible; every warp is done with K_j, V_j
  }

  // O = acc / l; a row without visible keys (l = 0) gets O = 0, lse = -inf.
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const float l = lsum[2 * hr];
    const int r = w0 + g + 8 * hr;
    if (r >= nq) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (lse && t == 0)
      lse[(b * d.Hq + h) * d.Tq + i0 + r] = l > 0.f ? (m_run[hr] + log2f(l)) * kLn2 : -INFINITY;
    uint16_t* orow = o + (b * d.Tq + i0 + r) * d.o_stride + h * d.Dv;
#pragma unroll
    for (int n = 0; n < kOt; ++n) {
      const int c = 8 * n + 2 * t;
      if (c >= d.Dv) continue;
      const uint32_t u = mma::pack_bf16x2(oacc[n][2 * hr] * inv, oacc[n][2 * hr + 1] * inv);
      if (d.vec) {  // Dv, o_stride multiples of 8 and o 16-byte aligned: c + 1 < Dv, 4-byte aligned
        *reinterpret_cast<uint32_t*>(orow + c) = u;
      } else {
        orow[c] = static_cast<uint16_t>(u & 0xffffu);
        if (c + 1 < d.Dv) orow[c + 1] = static_cast<uint16_t>(u >> 16);
      }
    }
  }
}

}  // namespace
}  // namespace tessera::cuda_detail
