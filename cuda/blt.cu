// BLT's device pieces that the generic ops do not cover: attention under BLT's two id masks with a
// key-sortedness check that never synchronises the host.
//
// - All<SlidingWindow, DocumentCuts>: every BLT transformer's self-attention (the local encoder and decoder
//   over bytes with the 512-byte window, the global model over patches with window 0 = causal; document ids
//   all zero when EOS cuts are off). No other CUDA binding exists.
// - PatchSegments (= SegmentEqual): the byte <-> patch cross-attention (ops/blt_cuda.hpp), fp32 and bf16.
//   attention.cu binds SegmentEqual too, but verifies k_sorted with a copy back to the host, i.e. one
//   synchronisation per call (per cross-attention layer, forward and backward); this binding keeps the BLT
//   step free of them.
//
// The cross-attention does not use the tile kernels: under PatchSegments a query row sees only the few key
// rows of its own segment, so the segment kernels below walk exactly those (warp per row).
//
// The flash kernels of attention_kernels.cuh are instantiated here with a mask functor of their own (the
// header's kernels live in an unnamed namespace, so this file gets its own copy); the launch code is
// attention.cu's (attention_launch.cuh). Sortedness of the key ids (the policy's k_sorted) is checked by a
// small device kernel into a device flag that the kernels read when they compute a tile's key range: binary
// search over the ids when the flag is clear, the window's (or the whole) range otherwise. An unsorted
// "sorted" array thus gives the exact result more slowly instead of an exception (BLT builds its ids sorted).
#include <cuda_runtime_api.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "attention_kernels.cuh"
#include "attention_launch.cuh"
#include "check.hpp"
#include "core_util.cuh"
#include "launch_blt.hpp"
#include "scratch.cuh"

namespace tessera::cuda_detail {
namespace {

/// Equal ids, within a causal window of W keys when W > 0.
struct IdNoSyncMask {
  int64_t W;                           // 0: no window (cross-attention)
  IdRows ids;                          // ids.k_sorted: the policy's promise (binary search once verified)
  const unsigned long long* unsorted;  // device flag (ids_sorted_kernel): nonzero = the promise is broken

  __device__ bool allowed(int64_t b, int64_t qpos, int64_t kpos) const {
    return (W == 0 || (kpos <= qpos && kpos > qpos - W)) && ids.q(b, qpos) == ids.k(b, kpos);
  }
  __device__ Range range(int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) const {
    Range r = W > 0 ? Range{max(int64_t{0}, qpos_lo - W + 1), min(Tk, qpos_hi)} : Range{0, Tk};
    if (ids.k_sorted && *unsorted == 0) {
      const Range e = ids.equal_range(b, qpos_lo, qpos_hi);
      r.lo = max(r.lo, e.lo);
      r.hi = min(r.hi, e.hi);
    }
    return r;
  }
};

/// The mask functor; with k_sorted, queues the sortedness check into a flag carved from `scratch`.
IdNoSyncMask id_mask(const AttnArgs& a, int64_t window, const int64_t* q_id, const int64_t* k_id,
                     bool k_sorted, DeviceScratch& scratch) {
  TESSERA_CHECK(window >= 0, "attention (cuda): window must be >= 0, got ", window);
  TESSERA_CHECK((a.B * a.Tq == 0 || q_id) && (a.B * a.Tk == 0 || k_id),
                "attention (cuda): query or key ids are null");
  unsigned long long* flag = nullptr;
  // Keys within one tile gain nothing from the binary search: skip it and its check (a memset and a launch
  // per call, e.g. for the decoder's cross-attention over one patch's k slots while generating).
  if (a.Tk <= kBK) k_sorted = false;
  if (k_sorted) {
    scratch.reserve(DeviceScratch::bytes_for<unsigned long long>(1));
    flag = scratch.carve<unsigned long long>(1);
    TESSERA_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(unsigned long long), 0));
    queue_ids_sorted_check(k_id, a.B, a.Tk, flag, "attention (cuda)");
  }
  return IdNoSyncMask{window, IdRows{q_id, k_id, a.Tq, a.Tk, a.q_offset, k_sorted}, flag};
}

// ---- BLT's byte <-> patch cross-attention: exact key ranges, one warp per row ---------------------------
// Under PatchSegments a query row sees the key rows with its own segment id: a patch's bytes (encoder: the
// patch's k query slots attend to its bytes) or a patch's k slots (decoder: every byte attends to the slots
// of its patch), a handful of keys. The tile kernels would walk whole 64 x 64 tiles, nearly all masked, for
// each of them (one tile per 64 patches). Here one warp takes one (query row, head) for the forward and dQ,
// and one (key row, kv head) for dK and dV, and walks exactly its equal range. The ranges come from
// seg_ranges_kernel, one thread per row, before the walks: a binary search over sorted ids (the keys' for the
// forward and dQ, the queries' for dK / dV) — once per row instead of once per (row, head) warp, whose walk
// would otherwise start behind ~log2(T) dependent loads — or every row of the other side when the ids are
// not sorted or too few to be worth a search. Lane c owns columns c, c + 32, ...; a row's sum runs in order
// over the range, so results are deterministic. Same formulas as the tile kernels (o = sum p v / l, lse = m +
// log l, dS = P (dP - D), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO) and the same conventions: a query
// without a visible key has o = 0 and lse = -inf, a key no query sees gets dK = dV = 0.
//
// The kernels are templated on the storage type E of q, k, v, o, dO, dQ, dK, dV: float, or bf16 bits
// (uint16_t) for the bf16 cross-attention (ops/blt_cuda.hpp): bf16 values widen exactly, every sum, max, exp
// and lse is fp32, and each output is rounded to bf16 once when it is stored — P and dS are never rounded.

constexpr int kSegThreads = 128;
constexpr int kSegKeys = 4;  // keys per step of the forward and dQ walks: their loads are in flight together
constexpr int64_t kSegScan = 64;  // up to this many rows on the other side: scan them, no search, no check

/// Ids of both sides and, per row, the range of the other side's rows to walk (null: every row).
struct SegIds {
  const int64_t* q_id;
  const int64_t* k_id;
  int64_t Tq, Tk;
  const Range* k_rows;  // [B * Tq]: the key rows of each query row (forward, dQ)
  const Range* q_rows;  // [B * Tk]: the query rows of each key row (dK, dV)

  __device__ Range keys_of(int64_t bi) const { return k_rows ? k_rows[bi] : Range{0, Tk}; }
  __device__ Range queries_of(int64_t bj) const { return q_rows ? q_rows[bj] : Range{0, Tq}; }
};

/// out[r] for each of the `rows` = B * n_self rows of one side: the rows of the other side (n_other per
/// batch row) whose id equals row r's — its equal range while `unsorted` (ids_sorted_kernel's flag over
/// other_id) is clear, every row [0, n_other) when the promise is broken.
__global__ void seg_ranges_kernel(const int64_t* __restrict__ self_id, int64_t n_self,
                                  const int64_t* __restrict__ other_id, int64_t n_other, int64_t rows,
                                  const unsigned long long* __restrict__ unsorted, Range* __restrict__ out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  if (*unsorted != 0) {
    out[r] = Range{0, n_other};
    return;
  }
  const int64_t* row = other_id + r / n_self * n_other;
  const int64_t v = self_id[r];
  out[r] = Range{sorted_bound(row, n_other, v, false), sorted_bound(row, n_other, v, true)};
}

/// Queue the row ranges the walks use: the key rows of each query row when the key ids are promised sorted
/// (forward, dQ), the query rows of each key row when `search_queries` (dK / dV; BLT's query ids are sorted
/// too, and the check finds out when not); each only for an other side of more than kSegScan rows. The
/// sortedness flags and ranges live in `scratch`, which must outlive the launches that read them.
SegIds seg_ids(const Dims& d, const int64_t* q_id, const int64_t* k_id, bool k_sorted, bool search_keys,
               bool search_queries, DeviceScratch& scratch, const char* op) {
  SegIds ids{q_id, k_id, d.Tq, d.Tk, nullptr, nullptr};
  const bool by_k = search_keys && k_sorted && d.Tk > kSegScan, by_q = search_queries && d.Tq > kSegScan;
  if (!by_k && !by_q) return ids;
  const int64_t nk = by_k ? d.B * d.Tq : 0, nq = by_q ? d.B * d.Tk : 0;
  scratch.reserve(DeviceScratch::bytes_for<unsigned long long>(2) + DeviceScratch::bytes_for<Range>(nk) +
                  DeviceScratch::bytes_for<Range>(nq));
  unsigned long long* flags = scratch.carve<unsigned long long>(2);
  TESSERA_CUDA_CHECK(cudaMemsetAsync(flags, 0, 2 * sizeof(unsigned long long), 0));
  if (by_k && nk > 0) {
    queue_ids_sorted_check(k_id, d.B, d.Tk, flags, op);
    Range* r = scratch.carve<Range>(nk);
    seg_ranges_kernel<<<grid_for(nk, 128, op), 128>>>(q_id, d.Tq, k_id, d.Tk, nk, flags, r);
    TESSERA_CUDA_CHECK_LAUNCH("seg_ranges_kernel");
    ids.k_rows = r;
  }
  if (by_q && nq > 0) {
    queue_ids_sorted_check(q_id, d.B, d.Tq, flags + 1, op);
    Range* r = scratch.carve<Range>(nq);
    seg_ranges_kernel<<<grid_for(nq, 128, op), 128>>>(k_id, d.Tk, q_id, d.Tq, nq, flags + 1, r);
    TESSERA_CUDA_CHECK_LAUNCH("seg_ranges_kernel");
    ids.q_rows = r;
  }
  return ids;
}

/// Warp w = (b * Tq + i) * Hq + h: o and lse of query row i, head h.
template <int kD, class E>
__global__ void __launch_bounds__(kSegThreads)
    seg_attn_forward_kernel(Dims d, SegIds ids, const E* __restrict__ q, const E* __restrict__ k,
                            const E* __restrict__ v, E* __restrict__ o, float* __restrict__ lse) {
  constexpr int kC = kD / 32;
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * kSegThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= d.B * d.Tq * d.Hq) return;  // whole warps
  const int64_t h = w % d.Hq, bi = w / d.Hq, b = bi / d.Tq, i = bi % d.Tq, g = h / d.rep();
  const int64_t* krow_id = ids.k_id + b * d.Tk;
  const int64_t id = ids.q_id[bi];
  const Range kr = ids.keys_of(bi);
  const E* qrow = q + bi * d.q_stride + h * d.Dh;
  const E* kb = k + b * d.Tk * d.k_stride + g * d.Dh;
  const E* vb = v + b * d.Tk * d.v_stride + g * d.Dv;
  float qr[kC], acc[kC];
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int col = lane + 32 * c;
    qr[c] = col < d.Dh ? load_value(qrow + col) : 0.f;
    acc[c] = 0.f;
  }
  float mx = -INFINITY, l = 0.f;  // warp-uniform
  for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kSegKeys) {
    float kv[kSegKeys][kC], vv[kSegKeys][kC];
    bool ok[kSegKeys];
#pragma unroll
    for (int t = 0; t < kSegKeys; ++t) {
      ok[t] = j0 + t < kr.hi && krow_id[j0 + t] == id;  // warp-uniform
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        const int col = lane + 32 * c;
        kv[t][c] = ok[t] && col < d.Dh ? load_value(kb + (j0 + t) * d.k_stride + col) : 0.f;
        vv[t][c] = ok[t] && col < d.Dv ? load_value(vb + (j0 + t) * d.v_stride + col) : 0.f;
      }
    }
    float s[kSegKeys], smax = -INFINITY;
#pragma unroll
    for (int t = 0; t < kSegKeys; ++t) {
      float dot = 0.f;
#pragma unroll
      for (int c = 0; c < kC; ++c) dot += qr[c] * kv[t][c];
      dot = warp_sum(dot);
      s[t] = ok[t] ? dot * d.scale : -INFINITY;
      smax = fmaxf(smax, s[t]);
    }
    const float new_max = fmaxf(mx, smax);
    if (new_max == -INFINITY) continue;      // nothing visible so far
    const float alpha = expf(mx - new_max);  // 0 while mx was -inf
    l *= alpha;
#pragma unroll
    for (int c = 0; c < kC; ++c) acc[c] *= alpha;
#pragma unroll
    for (int t = 0; t < kSegKeys; ++t) {
      const float p = expf(s[t] - new_max);  // 0 for keys of other segments
      l += p;
#pragma unroll
      for (int c = 0; c < kC; ++c) acc[c] += p * vv[t][c];
    }
    mx = new_max;
  }
  E* orow = o + bi * d.o_stride + h * d.Dv;
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int col = lane + 32 * c;
    if (col < d.Dv) store_value(orow + col, acc[c] * inv);
  }
  if (lse && lane == 0) lse[(b * d.Hq + h) * d.Tq + i] = l > 0.f ? mx + logf(l) : -INFINITY;
}

/// Warp w = (b * Tq + i) * Hq + h: dQ of query row i, head h (Dd: the rowdot D = dO . O per (b, h, i)).
template <int kD, class E>
__global__ void __launch_bounds__(kSegThreads)
    seg_attn_dq_kernel(Dims d, SegIds ids, const E* __restrict__ q, const E* __restrict__ k,
                       const E* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ Dd,
                       const E* __restrict__ dout, E* __restrict__ dq) {
  constexpr int kC = kD / 32;
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * kSegThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= d.B * d.Tq * d.Hq) return;
  const int64_t h = w % d.Hq, bi = w / d.Hq, b = bi / d.Tq, i = bi % d.Tq, g = h / d.rep();
  const int64_t row = (b * d.Hq + h) * d.Tq + i;
  const float L = lse[row], Di = Dd[row];
  const int64_t* krow_id = ids.k_id + b * d.Tk;
  const int64_t id = ids.q_id[bi];
  // A row without visible keys (lse = -inf) has dQ = 0: walk nothing.
  const Range kr = L == -INFINITY ? Range{0, 0} : ids.keys_of(bi);
  const E* qrow = q + bi * d.q_stride + h * d.Dh;
  const E* drow = dout + bi * d.o_stride + h * d.Dv;
  const E* kb = k + b * d.Tk * d.k_stride + g * d.Dh;
  const E* vb = v + b * d.Tk * d.v_stride + g * d.Dv;
  float qr[kC], dr[kC], acc[kC];
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int col = lane + 32 * c;
    qr[c] = col < d.Dh ? load_value(qrow + col) : 0.f;
    dr[c] = col < d.Dv ? load_value(drow + col) : 0.f;
    acc[c] = 0.f;
  }
  for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kSegKeys) {
    float kv[kSegKeys][kC], vv[kSegKeys][kC];
    bool ok[kSegKeys];
#pragma unroll
    for (int t = 0; t < kSegKeys; ++t) {
      ok[t] = j0 + t < kr.hi && krow_id[j0 + t] == id;
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        const int col = lane + 32 * c;
        kv[t][c] = ok[t] && col < d.Dh ? load_value(kb + (j0 + t) * d.k_stride + col) : 0.f;
        vv[t][c] = ok[t] && col < d.Dv ? load_value(vb + (j0 + t) * d.v_stride + col) : 0.f;
      }
    }
#pragma unroll
    for (int t = 0; t < kSegKeys; ++t) {
      float s = 0.f, dp = 0.f;
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        s += qr[c] * kv[t][c];
        dp += dr[c] * vv[t][c];
      }
      s = warp_sum(s);
      dp = warp_sum(dp);
      const float p = ok[t] ? expf(s * d.scale - L) : 0.f;
      const float ds = p * (dp - Di);
#pragma unroll
      for (int c = 0; c < kC; ++c) acc[c] += ds * kv[t][c];
    }
  }
  E* dqrow = dq + bi * d.q_stride + h * d.Dh;
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int col = lane + 32 * c;
    if (col < d.Dh) store_value(dqrow + col, d.scale * acc[c]);
  }
}

/// Warp w = (b * Tk + j) * Hkv + g: dK, dV of key row j, kv head g, over the query rows of its segment and
/// the query heads of group g (queries ascending, heads ascending within a query).
template <int kD, class E>
__global__ void __launch_bounds__(kSegThreads)
    seg_attn_dkdv_kernel(Dims d, SegIds ids, const E* __restrict__ q, const E* __restrict__ k,
                         const E* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ Dd,
                         const E* __restrict__ dout, E* __restrict__ dk, E* __restrict__ dv) {
  constexpr int kC = kD / 32;
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * kSegThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= d.B * d.Tk * d.Hkv) return;
  const int64_t g = w % d.Hkv, bj = w / d.Hkv, b = bj / d.Tk, rep = d.rep();
  const int64_t* qrow_id = ids.q_id + b * d.Tq;
  const int64_t id = ids.k_id[bj];
  const Range qr = ids.queries_of(bj);
  const E* krow = k + bj * d.k_stride + g * d.Dh;
  const E* vrow = v + bj * d.v_stride + g * d.Dv;
  float kr[kC], vr[kC], dka[kC], dva[kC];
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int col = lane + 32 * c;
    kr[c] = col < d.Dh ? load_value(krow + col) : 0.f;
    vr[c] = col < d.Dv ? load_value(vrow + col) : 0.f;
    dka[c] = dva[c] = 0.f;
  }
  // (query row, head) pairs u = (i - qr.lo) * rep + (h - g rep), kSegKeys per step so that their loads are in
  // flight together (a long patch's slot walks many bytes).
  const int64_t n_pairs = (qr.hi - qr.lo) * rep;
  for (int64_t u0 = 0; u0 < n_pairs; u0 += kSegKeys) {
    float qv[kSegKeys][kC], dov[kSegKeys][kC], L[kSegKeys], Di[kSegKeys];
#pragma unroll
    for (int t = 0; t < kSegKeys; ++t) {
      const int64_t i = qr.lo + (u0 + t) / rep, h = g * rep + (u0 + t) % rep;
      const bool ok = u0 + t < n_pairs && qrow_id[i] == id;  // warp-uniform (the id test: only when scanning)
      const int64_t row = (b * d.Hq + h) * d.Tq + i;
      L[t] = ok ? lse[row] : -INFINITY;  // finite for a row that sees this key
      Di[t] = ok ? Dd[row] : 0.f;
      const E* qp = q + (b * d.Tq + i) * d.q_stride + h * d.Dh;
      const E* dp_row = dout + (b * d.Tq + i) * d.o_stride + h * d.Dv;
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        const int col = lane + 32 * c;
        qv[t][c] = ok && col < d.Dh ? load_value(qp + col) : 0.f;
        dov[t][c] = ok && col < d.Dv ? load_value(dp_row + col) : 0.f;
      }
    }
#pragma unroll
    for (int t = 0; t < kSegKeys; ++t) {
      float s = 0.f, dp = 0.f;
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        s += qv[t][c] * kr[c];
        dp += dov[t][c] * vr[c];
      }
      s = warp_sum(s);
      dp = warp_sum(dp);
      const float p = L[t] == -INFINITY ? 0.f : expf(s * d.scale - L[t]);
      const float ds = p * (dp - Di[t]);
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        dva[c] += p * dov[t][c];
        dka[c] += ds * qv[t][c];
      }
    }
  }
  E* dkrow = dk + bj * d.k_stride + g * d.Dh;
  E* dvrow = dv + bj * d.v_stride + g * d.Dv;
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int col = lane + 32 * c;
    if (col < d.Dh) store_value(dkrow + col, d.scale * dka[c]);
    if (col < d.Dv) store_value(dvrow + col, dva[c]);
  }
}

template <class E>
void segments_forward(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id, bool k_sorted, const E* q,
                      const E* k, const E* v, E* o, float* lse) {
  constexpr const char* op = "attention_forward";
  const Dims d = make_dims(a, op);
  if (d.B * d.Tq == 0) return;
  TESSERA_CHECK(q && o && (d.Tk == 0 || (k && v)), op, "(cuda): q, k, v or o is null");
  TESSERA_CHECK(q_id && (d.Tk == 0 || k_id), op, "(cuda): query or key ids are null");
  DeviceScratch scratch;  // the flags and ranges outlive the launches that read them
  const SegIds ids = seg_ids(d, q_id, k_id, k_sorted, true, false, scratch, op);
  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    seg_attn_forward_kernel<kD, E>
        <<<grid_for(d.B * d.Tq * d.Hq * 32, kSegThreads, op), kSegThreads>>>(d, ids, q, k, v, o, lse);
  });
  TESSERA_CUDA_CHECK_LAUNCH("seg_attn_forward_kernel");
}

template <class E>
void segments_backward(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id, bool k_sorted, const E* q,
                       const E* k, const E* v, const E* o, const float* lse, const E* dout, E* dq, E* dk,
                       E* dv) {
  constexpr const char* op = "attention_backward";
  const Dims d = make_dims(a, op);
  const bool has_q = d.B * d.Tq > 0, has_k = d.B * d.Tk > 0;
  TESSERA_CHECK(!has_q || (q && o && lse && dout && dq && q_id), op,
                "(cuda): q, o, lse, dout, dq or the query ids are null");
  TESSERA_CHECK(!has_k || (k && v && dk && dv && k_id), op, "(cuda): k, v, dk, dv or the key ids are null");
  if (!has_q && !has_k) return;
  DeviceScratch scratch;
  if (has_q) scratch.reserve(DeviceScratch::bytes_for<float>(d.B * d.Hq * d.Tq));
  float* Dd = has_q ? scratch.carve<float>(d.B * d.Hq * d.Tq) : nullptr;
  DeviceScratch range_scratch;  // the flags and ranges outlive the launches that read them
  const SegIds ids = seg_ids(d, q_id, k_id, k_sorted, has_q && has_k, has_q && has_k, range_scratch, op);
  if (has_q) {
    attn_rowdot_kernel<E><<<grid_for(d.B * d.Tq * d.Hq * 32, 128, op), 128>>>(d, o, dout, Dd);
    TESSERA_CUDA_CHECK_LAUNCH("attn_rowdot_kernel");
  }
  dispatch_dim(a, [&](auto dim) {
    constexpr int kD = decltype(dim)::value;
    if (has_k) {  // (without query rows: dK = dV = 0)
      seg_attn_dkdv_kernel<kD, E><<<grid_for(d.B * d.Tk * d.Hkv * 32, kSegThreads, op), kSegThreads>>>(
          d, ids, q, k, v, lse, Dd, dout, dk, dv);
      TESSERA_CUDA_CHECK_LAUNCH("seg_attn_dkdv_kernel");
    }
    if (has_q) {  // (without keys: dQ = 0)
      seg_attn_dq_kernel<kD, E><<<grid_for(d.B * d.Tq * d.Hq * 32, kSegThreads, op), kSegThreads>>>(
          d, ids, q, k, v, lse, Dd, dout, dq);
      TESSERA_CUDA_CHECK_LAUNCH("seg_attn_dq_kernel");
    }
  });
}

}  // namespace

void attention_forward_segments_f32(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id,
                                    bool k_sorted, const float* q, const float* k, const float* v, float* o,
                                    float* lse) {
  segments_forward(a, q_id, k_id, k_sorted, q, k, v, o, lse);
}

void attention_backward_segments_f32(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id,
                                     bool k_sorted, const float* q, const float* k, const float* v,
                                     const float* o, const float* lse, const float* dout, float* dq,
                                     float* dk, float* dv) {
  segments_backward(a, q_id, k_id, k_sorted, q, k, v, o, lse, dout, dq, dk, dv);
}

void attention_forward_segments_bf16(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id,
                                     bool k_sorted, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                     uint16_t* o, float* lse) {
  segments_forward(a, q_id, k_id, k_sorted, q, k, v, o, lse);
}

void attention_backward_segments_bf16(const AttnArgs& a, const int64_t* q_id, const int64_t* k_id,
                                      bool k_sorted, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                      const uint16_t* o, const float* lse, const uint16_t* dout, uint16_t* dq,
                                      uint16_t* dk, uint16_t* dv) {
  segments_backward(a, q_id, k_id, k_sorted, q, k, v, o, lse, dout, dq, dk, dv);
}

void attention_forward_ids_nosync_f32(const AttnArgs& a, int64_t window, const int64_t* q_id,
                                      const int64_t* k_id, bool k_sorted, const float* q, const float* k,
                                      const float* v, float* o, float* lse) {
  DeviceScratch flag_scratch;  // outlives the launches that read the flag
  forward_impl(a, id_mask(a, window, q_id, k_id, k_sorted, flag_scratch), q, k, v, o, lse);
}

void attention_backward_ids_nosync_f32(const AttnArgs& a, int64_t window, const int64_t* q_id,
                                       const int64_t* k_id, bool k_sorted, const float* q, const float* k,
                                       const float* v, const float* o, const float* lse, const float* dout,
                                       float* dq, float* dk, float* dv) {
  DeviceScratch flag_scratch;
  backward_impl(a, id_mask(a, window, q_id, k_id, k_sorted, flag_scratch), q, k, v, o, lse, dout, dq, dk, dv);
}

}  // namespace tessera::cuda_detail
