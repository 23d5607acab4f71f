// Internal to tessera::cuda: the device code of the fp32 attention (see attention.cu for the design), shared
// by the .cu files that instantiate it for their mask functors (attention.cu, blt.cu); each gets its own
// copy (unnamed namespace).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core_util.cuh"  // load_value
#include "pdl.cuh"

namespace tessera::cuda_detail {
namespace {


constexpr unsigned kFull = 0xffffffffu;
constexpr int kBQ = 32;  // query rows per tile
constexpr int kBK = 32;  // keys per tile (one per lane)

// ---- masks: device copies of tessera::ops::mask::{Causal, SlidingWindow, ChunkLocal, DocumentCuts,
// BlockCausal, SegmentEqual, KeyValid, All<Causal, DocumentCuts>} ------------------------------------------
// allowed(b, qpos, kpos) and range(b, qpos_lo, qpos_hi, Tk) mirror the policies' allowed() / key_range().
// The id arrays are device memory; allowed() is only called for real (in-range) query rows and keys.

struct Range {
  int64_t lo, hi;
};

struct CausalMask {
  __device__ bool allowed(int64_t, int64_t qpos, int64_t kpos) const { return kpos <= qpos; }
  __device__ Range range(int64_t, int64_t, int64_t qpos_hi, int64_t Tk) const {
    return {0, min(Tk, qpos_hi)};
  }
};

struct WindowMask {
  int64_t W;
  __device__ bool allowed(int64_t, int64_t qpos, int64_t kpos) const {
    return kpos <= qpos && kpos > qpos - W;
  }
  __device__ Range range(int64_t, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    return {max(int64_t{0}, qpos_lo - W + 1), min(Tk, qpos_hi)};
  }
};

struct ChunkMask {
  int64_t C;
  // kpos / C == qpos / C with kpos <= qpos, written with one modulo (positions are >= 0).
  __device__ bool allowed(int64_t, int64_t qpos, int64_t kpos) const {
    return kpos <= qpos && kpos >= qpos - qpos % C;
  }
  __device__ Range range(int64_t, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    return {min(Tk, qpos_lo / C * C), min(Tk, qpos_hi)};
  }
};

/// First index i of the non-decreasing row[0, n) with row[i] >= v (upper = false) or row[i] > v (upper =
/// true).
__device__ inline int64_t sorted_bound(const int64_t* row, int64_t n, int64_t v, bool upper) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (upper ? row[mid] <= v : row[mid] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/// Query ids [B, Tq] and key ids [B, Tk] (mask::detail::Ids). k_sorted: key ids non-decreasing per batch row
/// (verified on the device before any kernel relies on it), which lets range() binary-search.
struct IdRows {
  const int64_t* q_id;
  const int64_t* k_id;
  int64_t Tq, Tk, q_offset;
  bool k_sorted;

  __device__ int64_t q(int64_t b, int64_t qpos) const { return q_id[b * Tq + (qpos - q_offset)]; }
  __device__ int64_t k(int64_t b, int64_t kpos) const { return k_id[b * Tk + kpos]; }
  /// Min / max query id over [qpos_lo, qpos_hi) clamped to the rows (lo > hi when empty).
  __device__ void q_minmax(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t& lo, int64_t& hi) const {
    const int64_t i0 = max(int64_t{0}, qpos_lo - q_offset), i1 = min(Tq, qpos_hi - q_offset);
    lo = INT64_MAX;
    hi = INT64_MIN;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t v = q_id[b * Tq + i];
      lo = min(lo, v);
      hi = max(hi, v);
    }
  }
  /// First key row of batch b with id >= v (upper = false) or > v (upper = true); needs k_sorted.
  __device__ int64_t first_key(int64_t b, int64_t v, bool upper) const {
    return sorted_bound(k_id + b * Tk, Tk, v, upper);
  }
  __device__ Range equal_range(int64_t b, int64_t qpos_lo, int64_t qpos_hi) const {
    if (!k_sorted) return {0, Tk};
    int64_t lo, hi;
    q_minmax(b, qpos_lo, qpos_hi, lo, hi);
    if (lo > hi) return {0, 0};
    return {first_key(b, lo, false), first_key(b, hi, true)};
  }
  __device__ Range below_range(int64_t b, int64_t qpos_lo, int64_t qpos_hi) const {
    if (!k_sorted) return {0, Tk};
    int64_t lo, hi;
    q_minmax(b, qpos_lo, qpos_hi, lo, hi);
    if (lo > hi) return {0, 0};
    return {0, first_key(b, hi, true)};
  }
};

/// DocumentCuts and SegmentEqual: same id. With `causal`, also kpos <= qpos (All<Causal, DocumentCuts>).
struct IdEqualMask {
  IdRows ids;
  bool causal;
  __device__ bool allowed(int64_t b, int64_t qpos, int64_t kpos) const {
    return (!causal || kpos <= qpos) && ids.q(b, qpos) == ids.k(b, kpos);
  }
  __device__ Range range(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    Range r = ids.equal_range(b, qpos_lo, qpos_hi);
    if (causal) r.hi = min(r.hi, min(Tk, qpos_hi));
    return r;
  }
};

/// BlockCausal: key segment <= query segment.
struct BlockCausalMask {
  IdRows ids;
  __device__ bool allowed(int64_t b, int64_t qpos, int64_t kpos) const {
    return ids.k(b, kpos) <= ids.q(b, qpos);
  }
  __device__ Range range(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t) const {
    return ids.below_range(b, qpos_lo, qpos_hi);
  }
};

/// KeyValid: valid[b*Tk + kpos] != 0.
struct KeyValidMask {
  const uint8_t* valid;
  int64_t Tk;
  __device__ bool allowed(int64_t b, int64_t, int64_t kpos) const { return valid[b * Tk + kpos] != 0; }
  __device__ Range range(int64_t, int64_t, int64_t, int64_t Tk_) const { return {0, Tk_}; }
};

/// bad = max over violations of (b*Tk + j + 1) where ids[b*Tk + j - 1] > ids[b*Tk + j]; 0 when sorted.
__global__ void ids_sorted_kernel(const int64_t* __restrict__ ids, int64_t B, int64_t Tk,
                                  unsigned long long* __restrict__ bad) {
  const int64_t n = B * Tk;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (e % Tk != 0 && ids[e - 1] > ids[e]) atomicMax(bad, static_cast<unsigned long long>(e + 1));
}

/// Key range of the query positions [qpos_lo, qpos_hi) of batch b clamped to [0, Tk)
/// (attn_detail::clamped_range).
template <class Mask>
__device__ Range clamped_range(const Mask& m, int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) {
  Range r = m.range(b, qpos_lo, qpos_hi, Tk);
  r.lo = max(r.lo, int64_t{0});
  r.hi = min(r.hi, Tk);
  if (r.hi < r.lo) r.hi = r.lo;
  return r;
}

struct Dims {
  int64_t B, Tq, Tk, Hq, Hkv, Dh, Dv, q_stride, k_stride, v_stride, o_stride, q_offset;
  float scale;
  __host__ __device__ int64_t rep() const { return Hq / Hkv; }
};

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

/// Copy `n` rows x `cols` columns (row r at src + r*stride) into dst [rows][ld], zero elsewhere.
__device__ void load_tile(float* dst, int rows, int ld, const float* src, int64_t stride, int n, int64_t cols) {
  for (int e = threadIdx.x; e < rows * ld; e += blockDim.x) {
    const int r = e / ld, c = e % ld;
    dst[e] = (r < n && c < cols) ? src[r * stride + c] : 0.f;
  }
}

// ---- forward -----------------------------------------------------------------------------------------

constexpr int kFwdThreads = 128;
constexpr int kFwdRows = kBQ / (kFwdThreads / 32);  // query rows per warp (8)

template <int kD>
constexpr size_t fwd_smem() {
  return sizeof(float) * (kBQ * kD + kBK * (kD + 1) + kBK * kD);
}

template <int kD, class Mask>
__global__ void __launch_bounds__(kFwdThreads)
    attn_forward_kernel(Dims d, Mask m, const float* __restrict__ q, const float* __restrict__ k,
                        const float* __restrict__ v, float* __restrict__ o, float* __restrict__ lse) {
  constexpr int kC = kD / 32;  // output columns per lane
  extern __shared__ float sm[];
  float* Qs = sm;                    // [kBQ][kD]
  float* Ks = Qs + kBQ * kD;         // [kBK][kD + 1]: lane j reads row j, padded against bank conflicts
  float* Vs = Ks + kBK * (kD + 1);   // [kBK][kD]
  const int64_t nqb = (d.Tq + kBQ - 1) / kBQ;
  const int64_t blk = blockIdx.x;
  const int64_t b = blk / (nqb * d.Hq), h = blk / nqb % d.Hq, i0 = blk % nqb * kBQ;
  const int nq = static_cast<int>(min(static_cast<int64_t>(kBQ), d.Tq - i0));
  const int64_t g = h / d.rep(), qpos0 = d.q_offset + i0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  load_tile(Qs, kBQ, kD, q + (b * d.Tq + i0) * d.q_stride + h * d.Dh, d.q_stride, nq, d.Dh);

  float mx[kFwdRows], lsum[kFwdRows], acc[kFwdRows][kC];
#pragma unroll
  for (int rr = 0; rr < kFwdRows; ++rr) {
    mx[rr] = -INFINITY;
    lsum[rr] = 0.f;
#pragma unroll
    for (int i = 0; i < kC; ++i) acc[rr][i] = 0.f;
  }

  const Range kr = clamped_range(m, b, qpos0, qpos0 + nq, d.Tk);
  for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kBK) {
    const int nk = static_cast<int>(min(static_cast<int64_t>(kBK), kr.hi - j0));
    __syncthreads();  // every warp is done with the previous K, V tiles
    load_tile(Ks, kBK, kD + 1, k + (b * d.Tk + j0) * d.k_stride + g * d.Dh, d.k_stride, nk, d.Dh);
    load_tile(Vs, kBK, kD, v + (b * d.Tk + j0) * d.v_stride + g * d.Dv, d.v_stride, nk, d.Dv);
    __syncthreads();

    // s[rr] = q_row . k_lane
    float s[kFwdRows];
#pragma unroll
    for (int rr = 0; rr < kFwdRows; ++rr) s[rr] = 0.f;
    const float* krow = Ks + lane * (kD + 1);
    const float* qrows = Qs + warp * kFwdRows * kD;
    for (int c = 0; c < d.Dh; ++c) {
      const float kc = krow[c];
#pragma unroll
      for (int rr = 0; rr < kFwdRows; ++rr) s[rr] += qrows[rr * kD + c] * kc;
    }

    // Online softmax; s[rr] becomes the (unnormalised) probability exp(score - running max).
#pragma unroll
    for (int rr = 0; rr < kFwdRows; ++rr) {
      const int r = warp * kFwdRows + rr;
      const bool ok = lane < nk && r < nq && m.allowed(b, qpos0 + r, j0 + lane);
      const float sv = ok ? s[rr] * d.scale : -INFINITY;
      const float new_max = fmaxf(mx[rr], warp_max(sv));  // warp-uniform
      if (new_max == -INFINITY) {                         // nothing allowed in this row so far
        s[rr] = 0.f;
        continue;
      }
      const float alpha = expf(mx[rr] - new_max);  // 0 while mx was -inf
      s[rr] = ok ? expf(sv - new_max) : 0.f;
      lsum[rr] = lsum[rr] * alpha + s[rr];
#pragma unroll
      for (int i = 0; i < kC; ++i) acc[rr][i] *= alpha;
      mx[rr] = new_max;
    }

    // acc[rr][i] += sum_j p[rr][j] * V[j][lane + 32 i]
    for (int j = 0; j < nk; ++j) {
      float vj[kC];
#pragma unroll
      for (int i = 0; i < kC; ++i) vj[i] = Vs[j * kD + lane + 32 * i];
#pragma unroll
      for (int rr = 0; rr < kFwdRows; ++rr) {
        const float pj = __shfl_sync(kFull, s[rr], j);
#pragma unroll
        for (int i = 0; i < kC; ++i) acc[rr][i] += pj * vj[i];
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kFwdRows; ++rr) {
    const int r = warp * kFwdRows + rr;
    const float l = warp_sum(lsum[rr]);
    if (r >= nq) continue;
    const int64_t row = b * d.Tq + i0 + r;
    float* orow = o + row * d.o_stride + h * d.Dv;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      const int c = lane + 32 * i;
      if (c < d.Dv) orow[c] = l > 0.f ? acc[rr][i] * inv : 0.f;
    }
    if (lse && lane == 0) lse[(b * d.Hq + h) * d.Tq + i0 + r] = l > 0.f ? mx[rr] + logf(l) : -INFINITY;
  }
}

// ---- forward, split-KV ("flash decoding") for a few query rows ----------------------------------------
// With few query rows the tile grid above has B*Hq*ceil(Tq/32) blocks (16 for one-token decoding of a
// 16-head model on a 132-SM GPU), each walking every key tile alone. Here a block takes one query row and
// one of `ns` contiguous chunks ("splits") of that row's visible key range; its warps take groups of
// kSplitKeys keys in turn (a warp reads a whole key row, lane c owning columns c + 32 i: coalesced) and keep
// an online softmax each: running max m, sum l = sum_j exp(s_j - m), acc = sum_j exp(s_j - m) v_j. Parts
// (the warps of a block, then the splits of a row) merge exactly with M = max_s m_s:
//   l = sum_s exp(m_s - M) l_s,   o = sum_s exp(m_s - M) acc_s / l,   lse = M + log(l)
// (a part that saw no allowed key has m_s = -inf, l_s = 0, acc_s = 0 and weight 0; no part at all: o = 0,
// lse = -inf, as in the tile kernel). With ns == 1 the block writes o, lse itself; otherwise it writes its
// part (m, l) and acc to scratch and the row's last block to finish merges the ns parts (split_combine_row).

constexpr int kSplitThreads = 128;
constexpr int kSplitWarps = kSplitThreads / 32;
constexpr int kSplitKeys = 4;        // keys per warp step: their loads are in flight together
constexpr int kSplitMaxParts = 128;  // bound on ns (split_combine_row's shared weights)

/// o, lse (lse may be null) of query row `row` from its ns parts (formula above), by the kSplitThreads
/// threads of a block. The parts come from other blocks of the same launch: read through L2 (__ldcg).
__device__ inline void split_combine_row(const Dims& d, int ns, int64_t row, const float* part_ml,
                                         const float* part_acc, float* __restrict__ o,
                                         float* __restrict__ lse) {
  __shared__ float wt[kSplitMaxParts], ML[2];
  const float* ml = part_ml + row * ns * 2;
  if (threadIdx.x < 32) {  // warp 0: M = max_s m_s, weights exp(m_s - M), l = sum_s weight_s l_s
    const int lane = threadIdx.x;
    float M = -INFINITY;
    for (int s = lane; s < ns; s += 32) M = fmaxf(M, __ldcg(ml + 2 * s));
    M = warp_max(M);
    float L = 0.f;
    for (int s = lane; s < ns; s += 32) {
      const float w = M == -INFINITY ? 0.f : expf(__ldcg(ml + 2 * s) - M);
      wt[s] = w;
      L += w * __ldcg(ml + 2 * s + 1);
    }
    L = warp_sum(L);
    if (lane == 0) {
      ML[0] = M;
      ML[1] = L;
    }
  }
  __syncthreads();
  const float M = ML[0], L = ML[1];
  const int64_t i = row % d.Tq, h = row / d.Tq % d.Hq, b = row / (d.Tq * d.Hq);
  float* orow = o + (b * d.Tq + i) * d.o_stride + h * d.Dv;
  const float* pacc = part_acc + row * ns * d.Dv;
  const float inv = L > 0.f ? 1.f / L : 0.f;
  for (int c = threadIdx.x; c < d.Dv; c += kSplitThreads) {
    float a = 0.f;
    for (int s = 0; s < ns; ++s) a += wt[s] * __ldcg(pacc + s * d.Dv + c);
    orow[c] = L > 0.f ? a * inv : 0.f;
  }
  if (lse && threadIdx.x == 0) lse[row] = L > 0.f ? M + logf(L) : -INFINITY;
}

/// Block blockIdx.x = row * ns + split, row = (b*Hq + h)*Tq + i (the lse layout). part_ml [rows*ns][2],
/// part_acc [rows*ns][Dv] and counters [rows] (zero before the launch, zero again after it) are only used
/// when ns > 1.
template <int kD, class Mask>
__global__ void __launch_bounds__(kSplitThreads)
    attn_forward_split_kernel(Dims d, Mask m, int ns, const float* __restrict__ q,
                              const float* __restrict__ k, const float* __restrict__ v, float* __restrict__ o,
                              float* __restrict__ lse, float* __restrict__ part_ml,
                              float* __restrict__ part_acc, unsigned* __restrict__ counters) {
  constexpr int kC = kD / 32;  // columns per lane
  pdl_launch_dependents();     // a decoding step's next product may load its weights meanwhile (pdl.cuh)
  pdl_wait();                  // q and the newest keys come from the kernels before this one
  __shared__ float wm[kSplitWarps], wl[kSplitWarps], wacc[kSplitWarps][kD];
  const int64_t blk = blockIdx.x, row = blk / ns;
  const int64_t split = blk % ns;
  const int64_t i = row % d.Tq, h = row / d.Tq % d.Hq, b = row / (d.Tq * d.Hq);
  const int64_t g = h / d.rep(), qpos = d.q_offset + i;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // This split's keys [c0, c1): the row's range cut into ns near-equal chunks.
  const Range kr = clamped_range(m, b, qpos, qpos + 1, d.Tk);
  const int64_t per = (kr.hi - kr.lo + ns - 1) / ns;
  const int64_t c0 = min(kr.hi, kr.lo + split * per), c1 = min(kr.hi, c0 + per);

  const float* qrow = q + (b * d.Tq + i) * d.q_stride + h * d.Dh;
  const float* kb = k + b * d.Tk * d.k_stride + g * d.Dh;  // key j at kb + j * k_stride
  const float* vb = v + b * d.Tk * d.v_stride + g * d.Dv;
  float qr[kC], acc[kC];
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int col = lane + 32 * c;
    qr[c] = col < d.Dh ? qrow[col] : 0.f;
    acc[c] = 0.f;
  }
  float mx = -INFINITY, l = 0.f;  // warp-uniform (the xor-butterfly sums are identical on every lane)

  for (int64_t j0 = c0 + warp * kSplitKeys; j0 < c1; j0 += kSplitWarps * kSplitKeys) {
    float kv[kSplitKeys][kC], vv[kSplitKeys][kC];
#pragma unroll
    for (int t = 0; t < kSplitKeys; ++t) {
      const bool in = j0 + t < c1;
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        const int col = lane + 32 * c;
        kv[t][c] = in && col < d.Dh ? kb[(j0 + t) * d.k_stride + col] : 0.f;
        vv[t][c] = in && col < d.Dv ? vb[(j0 + t) * d.v_stride + col] : 0.f;
      }
    }
    float s[kSplitKeys], smax = -INFINITY;
#pragma unroll
    for (int t = 0; t < kSplitKeys; ++t) {
      float dot = 0.f;
#pragma unroll
      for (int c = 0; c < kC; ++c) dot += qr[c] * kv[t][c];
      dot = warp_sum(dot);
      const bool ok = j0 + t < c1 && m.allowed(b, qpos, j0 + t);
      s[t] = ok ? dot * d.scale : -INFINITY;
      smax = fmaxf(smax, s[t]);
    }
    const float new_max = fmaxf(mx, smax);
    if (new_max == -INFINITY) continue;      // nothing allowed so far (warp-uniform)
    const float alpha = expf(mx - new_max);  // 0 while mx was -inf
    l *= alpha;
#pragma unroll
    for (int c = 0; c < kC; ++c) acc[c] *= alpha;
#pragma unroll
    for (int t = 0; t < kSplitKeys; ++t) {
      const float p = expf(s[t] - new_max);  // 0 for masked keys
      l += p;
#pragma unroll
      for (int c = 0; c < kC; ++c) acc[c] += p * vv[t][c];
    }
    mx = new_max;
  }

  // Merge the warps (formula above); thread c then owns output columns c, c + 128, ...
  if (lane == 0) {
    wm[warp] = mx;
    wl[warp] = l;
  }
#pragma unroll
  for (int c = 0; c < kC; ++c) wacc[warp][lane + 32 * c] = acc[c];
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kSplitWarps; ++w) M = fmaxf(M, wm[w]);
  float wt[kSplitWarps], L = 0.f;
#pragma unroll
  for (int w = 0; w < kSplitWarps; ++w) {
    wt[w] = M == -INFINITY ? 0.f : expf(wm[w] - M);
    L += wt[w] * wl[w];
  }
  if (ns == 1) {
    float* orow = o + (b * d.Tq + i) * d.o_stride + h * d.Dv;
    const float inv = L > 0.f ? 1.f / L : 0.f;
    for (int c = threadIdx.x; c < d.Dv; c += kSplitThreads) {
      float a = 0.f;
#pragma unroll
      for (int w = 0; w < kSplitWarps; ++w) a += wt[w] * wacc[w][c];
      orow[c] = L > 0.f ? a * inv : 0.f;
    }
    if (lse && threadIdx.x == 0) lse[row] = L > 0.f ? M + logf(L) : -INFINITY;
  } else {
    float* pacc = part_acc + blk * d.Dv;
    for (int c = threadIdx.x; c < d.Dv; c += kSplitThreads) {
      float a = 0.f;
#pragma unroll
      for (int w = 0; w < kSplitWarps; ++w) a += wt[w] * wacc[w][c];
      pacc[c] = a;
    }
    if (threadIdx.x == 0) {
      part_ml[2 * blk] = M;
      part_ml[2 * blk + 1] = L;
    }
    // The row's last block to finish merges the ns parts, so there is no second launch: every thread fences
    // its part's stores, then one count per block; the block that brings the count to ns reads all parts
    // (through L2) and re-arms the counter for the next launch.
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counters + row, 1u) == static_cast<unsigned>(ns - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    split_combine_row(d, ns, row, part_ml, part_acc, o, lse);
    if (threadIdx.x == 0) counters[row] = 0;
  }
}

// ---- backward ----------------------------------------------------------------------------------------

// Dd[(b*Hq + h)*Tq + i] = dO_i . O_i over the Dv columns of head h, in fp32; one warp per (token row, head).
// E: the storage type of o and dO (float, or bf16 bits as uint16_t, widened exactly).
template <class E>
__global__ void attn_rowdot_kernel(Dims d, const E* __restrict__ o, const E* __restrict__ dout,
                                   float* __restrict__ Dd) {
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= d.B * d.Tq * d.Hq) return;  // whole warps
  const int64_t row = w / d.Hq, h = w % d.Hq;
  const E* orow = o + row * d.o_stride + h * d.Dv;
  const E* drow = dout + row * d.o_stride + h * d.Dv;
  float s = 0.f;
  for (int64_t c = lane; c < d.Dv; c += 32) s += load_value(drow + c) * load_value(orow + c);
  s = warp_sum(s);
  if (lane == 0) Dd[(row / d.Tq * d.Hq + h) * d.Tq + row % d.Tq] = s;
}

constexpr int kBwdThreads = 256;
constexpr int kBwdWarps = kBwdThreads / 32;  // 8
constexpr int kBwdPer = kBQ / kBwdWarps;      // rows (or keys) per warp (4)
static_assert(kBQ == kBK, "the backward thread mapping assumes square tiles");

template <int kD>
constexpr size_t bwd_smem() {
  return sizeof(float) * (2 * kBK * (kD + 1) + 2 * kBQ * kD + 2 * kBQ * (kBK + 1) + 2 * kBQ);
}

/// Shared-memory tiles of the backward kernels.
template <int kD>
struct BwdTiles {
  float *Ks, *Vs;   // [kBK][kD + 1]
  float *Qs, *dOs;  // [kBQ][kD]
  float *Ps, *dSs;  // [kBQ][kBK + 1]
  float *lse, *Dd;  // [kBQ]
  __device__ explicit BwdTiles(float* sm) {
    Ks = sm;
    Vs = Ks + kBK * (kD + 1);
    Qs = Vs + kBK * (kD + 1);
    dOs = Qs + kBQ * kD;
    Ps = dOs + kBQ * kD;
    dSs = Ps + kBQ * (kBK + 1);
    lse = dSs + kBQ * (kBK + 1);
    Dd = lse + kBQ;
  }

  /// Query-side tiles for head h, query rows i0 .. i0+nq (zero / -inf padded).
  __device__ void load_queries(const Dims& d, const float* q, const float* dout, const float* lse_g,
                               const float* D_g, int64_t b, int64_t h, int64_t i0, int nq) {
    load_tile(Qs, kBQ, kD, q + (b * d.Tq + i0) * d.q_stride + h * d.Dh, d.q_stride, nq, d.Dh);
    load_tile(dOs, kBQ, kD, dout + (b * d.Tq + i0) * d.o_stride + h * d.Dv, d.o_stride, nq, d.Dv);
    for (int r = threadIdx.x; r < kBQ; r += blockDim.x) {
      const int64_t idx = (b * d.Hq + h) * d.Tq + i0 + r;
      lse[r] = r < nq ? lse_g[idx] : -INFINITY;
      Dd[r] = r < nq ? D_g[idx] : 0.f;
    }
  }

  /// Key-side tiles for kv head g, keys j0 .. j0+nk (zero padded).
  __device__ void load_keys(const Dims& d, const float* k, const float* v, int64_t b, int64_t g, int64_t j0,
                            int nk) {
    load_tile(Ks, kBK, kD + 1, k + (b * d.Tk + j0) * d.k_stride + g * d.Dh, d.k_stride, nk, d.Dh);
    load_tile(Vs, kBK, kD + 1, v + (b * d.Tk + j0) * d.v_stride + g * d.Dv, d.v_stride, nk, d.Dv);
  }

  /// Ps[r][j] = P, dSs[r][j] = P (dO_r . v_j - D_r); 0 where masked, padded or the row is fully masked.
  /// Lane = key j, rows r = warp + 8 m. Needs both tile sets loaded (and a barrier after this).
  template <class Mask>
  __device__ void probs(const Dims& d, const Mask& m, int64_t b, int64_t qpos0, int nq, int64_t j0, int nk) {
    const int warp = threadIdx.x / 32, j = threadIdx.x % 32;
    float s[kBwdPer], dp[kBwdPer];
#pragma unroll
    for (int mm = 0; mm < kBwdPer; ++mm) s[mm] = dp[mm] = 0.f;
    const float* krow = Ks + j * (kD + 1);
    const float* vrow = Vs + j * (kD + 1);
    for (int c = 0; c < d.Dh; ++c) {
      const float kc = krow[c];
#pragma unroll
      for (int mm = 0; mm < kBwdPer; ++mm) s[mm] += Qs[(warp + kBwdWarps * mm) * kD + c] * kc;
    }
    for (int c = 0; c < d.Dv; ++c) {
      const float vc = vrow[c];
#pragma unroll
      for (int mm = 0; mm < kBwdPer; ++mm) dp[mm] += dOs[(warp + kBwdWarps * mm) * kD + c] * vc;
    }
#pragma unroll
    for (int mm = 0; mm < kBwdPer; ++mm) {
      const int r = warp + kBwdWarps * mm;
      const bool ok = j < nk && r < nq && lse[r] != -INFINITY && m.allowed(b, qpos0 + r, j0 + j);
      const float p = ok ? expf(s[mm] * d.scale - lse[r]) : 0.f;
      Ps[r * (kBK + 1) + j] = p;
      dSs[r * (kBK + 1) + j] = p * (dp[mm] - Dd[r]);
    }
  }
};

/// The key range of every query tile (kBQ rows) of every batch row, out[b * nqt + tile]: the dK/dV kernel
/// reads these instead of computing them in each of its blocks. For an id mask a range is a min / max over
/// the tile's query ids and two binary searches, some 60 dependent global loads; per key block and query tile
/// that dominated the backward of BLT's cross-attention (7 ms per call at 4096 x 4096 on an H100).
template <class Mask>
__global__ void attn_tile_ranges_kernel(Dims d, Mask m, Range* __restrict__ out) {
  const int64_t nqt = (d.Tq + kBQ - 1) / kBQ;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < d.B * nqt;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / nqt, i0 = i % nqt * kBQ;
    const int64_t nq = min(static_cast<int64_t>(kBQ), d.Tq - i0), qpos0 = d.q_offset + i0;
    out[i] = clamped_range(m, b, qpos0, qpos0 + nq, d.Tk);
  }
}

// dK, dV for (b, kv head g, keys j0 .. j0+nk). Thread owns keys j = warp + 8 m and columns lane + 32 i.
// tile_ranges: attn_tile_ranges_kernel's output for these dims and mask.
template <int kD, class Mask>
__global__ void __launch_bounds__(kBwdThreads)
    attn_backward_dkdv_kernel(Dims d, Mask m, const float* __restrict__ q, const float* __restrict__ k,
                              const float* __restrict__ v, const float* __restrict__ lse_g,
                              const float* __restrict__ D_g, const float* __restrict__ dout,
                              float* __restrict__ dk, float* __restrict__ dv,
                              const Range* __restrict__ tile_ranges) {
  constexpr int kC = kD / 32;
  extern __shared__ float sm[];
  BwdTiles<kD> t(sm);
  const int64_t nkb = (d.Tk + kBK - 1) / kBK;
  const int64_t blk = blockIdx.x;
  const int64_t b = blk / (nkb * d.Hkv), g = blk / nkb % d.Hkv, j0 = blk % nkb * kBK;
  const int nk = static_cast<int>(min(static_cast<int64_t>(kBK), d.Tk - j0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t rep = d.rep();

  float dka[kBwdPer][kC], dva[kBwdPer][kC];
#pragma unroll
  for (int mm = 0; mm < kBwdPer; ++mm)
#pragma unroll
    for (int i = 0; i < kC; ++i) dka[mm][i] = dva[mm][i] = 0.f;

  t.load_keys(d, k, v, b, g, j0, nk);  // made visible by the first barrier below
  const Range* ranges = tile_ranges + b * ((d.Tq + kBQ - 1) / kBQ);
  for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
    for (int64_t i0 = 0; i0 < d.Tq; i0 += kBQ) {
      const int nq = static_cast<int>(min(static_cast<int64_t>(kBQ), d.Tq - i0));
      const int64_t qpos0 = d.q_offset + i0;
      const Range kr = ranges[i0 / kBQ];
      if (max(kr.lo, j0) >= min(kr.hi, j0 + nk)) continue;  // block-uniform: this query tile never sees us
      __syncthreads();  // previous iteration done with the query tiles and Ps, dSs
      t.load_queries(d, q, dout, lse_g, D_g, b, h, i0, nq);
      __syncthreads();
      t.probs(d, m, b, qpos0, nq, j0, nk);
      __syncthreads();
      for (int r = 0; r < nq; ++r) {
#pragma unroll
        for (int mm = 0; mm < kBwdPer; ++mm) {
          const int j = warp + kBwdWarps * mm;
          const float p = t.Ps[r * (kBK + 1) + j], ds = t.dSs[r * (kBK + 1) + j];
#pragma unroll
          for (int i = 0; i < kC; ++i) {
            dva[mm][i] += p * t.dOs[r * kD + lane + 32 * i];
            dka[mm][i] += ds * t.Qs[r * kD + lane + 32 * i];
          }
        }
      }
    }
  }

#pragma unroll
  for (int mm = 0; mm < kBwdPer; ++mm) {
    const int j = warp + kBwdWarps * mm;
    if (j >= nk) continue;
    float* dkrow = dk + (b * d.Tk + j0 + j) * d.k_stride + g * d.Dh;
    float* dvrow = dv + (b * d.Tk + j0 + j) * d.v_stride + g * d.Dv;
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      const int c = lane + 32 * i;
      if (c < d.Dh) dkrow[c] = d.scale * dka[mm][i];
      if (c < d.Dv) dvrow[c] = dva[mm][i];
    }
  }
}

// dQ for (b, h, query rows i0 .. i0+nq). Thread owns rows r = warp + 8 m and columns lane + 32 i.
template <int kD, class Mask>
__global__ void __launch_bounds__(kBwdThreads)
    attn_backward_dq_kernel(Dims d, Mask m, const float* __restrict__ q, const float* __restrict__ k,
                            const float* __restrict__ v, const float* __restrict__ lse_g,
                            const float* __restrict__ D_g, const float* __restrict__ dout,
                            float* __restrict__ dq) {
  constexpr int kC = kD / 32;
  extern __shared__ float sm[];
  BwdTiles<kD> t(sm);
  const int64_t nqb = (d.Tq + kBQ - 1) / kBQ;
  const int64_t blk = blockIdx.x;
  const int64_t b = blk / (nqb * d.Hq), h = blk / nqb % d.Hq, i0 = blk % nqb * kBQ;
  const int nq = static_cast<int>(min(static_cast<int64_t>(kBQ), d.Tq - i0));
  const int64_t g = h / d.rep(), qpos0 = d.q_offset + i0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  float dqa[kBwdPer][kC];
#pragma unroll
  for (int mm = 0; mm < kBwdPer; ++mm)
#pragma unroll
    for (int i = 0; i < kC; ++i) dqa[mm][i] = 0.f;

  t.load_queries(d, q, dout, lse_g, D_g, b, h, i0, nq);  // made visible by the first barrier below
  const Range kr = clamped_range(m, b, qpos0, qpos0 + nq, d.Tk);
  for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kBK) {
    const int nk = static_cast<int>(min(static_cast<int64_t>(kBK), kr.hi - j0));
    __syncthreads();  // previous iteration done with Ks and dSs
    t.load_keys(d, k, v, b, g, j0, nk);
    __syncthreads();
    t.probs(d, m, b, qpos0, nq, j0, nk);
    __syncthreads();
    for (int j = 0; j < nk; ++j) {
#pragma unroll
      for (int mm = 0; mm < kBwdPer; ++mm) {
        const float ds = t.dSs[(warp + kBwdWarps * mm) * (kBK + 1) + j];
#pragma unroll
        for (int i = 0; i < kC; ++i) dqa[mm][i] += ds * t.Ks[j * (kD + 1) + lane + 32 * i];
      }
    }
  }

#pragma unroll
  for (int mm = 0; mm < kBwdPer; ++mm) {
    const int r = warp + kBwdWarps * mm;
    if (r >= nq) continue;
    float* dqrow = dq + (b * d.Tq + i0 + r) * d.q_stride + h * d.Dh;
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      const int c = lane + 32 * i;
      if (c < d.Dh) dqrow[c] = d.scale * dqa[mm][i];
    }
  }
}

}  // namespace
}  // namespace tessera::cuda_detail
