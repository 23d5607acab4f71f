// Scaled dot-product attention with mask policies (ops/mask.hpp), blockwise: no T x T score matrix or mask
// is ever materialised. Forward: FlashAttention-2 style online softmax over key blocks, saving the row
// log-sum-exp. Backward: recomputes scores tile by tile from the saved log-sum-exp.
//
// Layout: row-major token rows with explicit strides so q, k, v may be slices of one fused QKV buffer.
//   q row (b*Tq + i) at q + (b*Tq+i)*q_stride, head h at column h*Dh;  k, v rows (b*Tk + j) likewise;
//   o like q with o_stride; lse [B, Hq, Tq]. GQA: query head h reads kv head h / (Hq/Hkv).
//   q, k heads are Dh wide; v and o heads are Dv = dims.dv() wide (v head g at column g*Dv).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"
#include "tessera/ops/eigen.hpp"
#include "tessera/ops/mask.hpp"

namespace tessera::ops {

struct AttnDims {
  int64_t B = 0, Tq = 0, Tk = 0;    // batch, query length, key length
  int64_t Hq = 0, Hkv = 0, Dh = 0;  // query heads, key/value heads (Hq % Hkv == 0), query/key head dim
  int64_t Dv = 0;                   // value/output head dim; 0 = Dh (Megalodon: dz != dv)
  int64_t q_stride = 0, k_stride = 0, v_stride = 0, o_stride = 0;  // elements between token rows
  int64_t q_offset = 0;  // absolute position of query row 0 (KV-cache decoding: Tk - Tq)
  double scale = 0;      // usually 1/sqrt(Dh)

  int64_t dv() const { return Dv ? Dv : Dh; }
};

namespace attn_detail {

inline constexpr int64_t kBlockQ = 64;  // query rows per tile
inline constexpr int64_t kBlockK = 64;  // key rows per tile

inline void check_dims(const AttnDims& d, const char* who) {
  TESSERA_CHECK(d.B >= 0 && d.Tq >= 0 && d.Tk >= 0, who, ": AttnDims B, Tq, Tk must be >= 0, got B=", d.B,
                " Tq=", d.Tq, " Tk=", d.Tk);
  TESSERA_CHECK(d.Hq >= 1 && d.Hkv >= 1 && d.Dh >= 1, who,
                ": AttnDims Hq, Hkv, Dh must be >= 1, got Hq=", d.Hq, " Hkv=", d.Hkv, " Dh=", d.Dh);
  TESSERA_CHECK(d.Hq % d.Hkv == 0, who, ": AttnDims Hq (", d.Hq, ") must be a multiple of Hkv (", d.Hkv, ")");
  TESSERA_CHECK(d.q_stride >= d.Hq * d.Dh, who, ": AttnDims q_stride (", d.q_stride, ") < Hq*Dh (",
                d.Hq * d.Dh, ")");
  TESSERA_CHECK(d.Dv >= 0, who, ": AttnDims Dv must be >= 0 (0 = Dh), got ", d.Dv);
  TESSERA_CHECK(d.o_stride >= d.Hq * d.dv(), who, ": AttnDims o_stride (", d.o_stride, ") < Hq*Dv (",
                d.Hq * d.dv(), ")");
  TESSERA_CHECK(d.k_stride >= d.Hkv * d.Dh, who, ": AttnDims k_stride (", d.k_stride, ") < Hkv*Dh (",
                d.Hkv * d.Dh, ")");
  TESSERA_CHECK(d.v_stride >= d.Hkv * d.dv(), who, ": AttnDims v_stride (", d.v_stride, ") < Hkv*Dv (",
                d.Hkv * d.dv(), ")");
  TESSERA_CHECK(d.q_offset >= 0, who, ": AttnDims q_offset must be >= 0, got ", d.q_offset);
  TESSERA_CHECK(std::isfinite(d.scale), who, ": AttnDims scale must be finite, got ", d.scale);
}

inline void check_ptr(const void* p, bool needed, const char* who, const char* name) {
  TESSERA_CHECK(!needed || p != nullptr, who, ": ", name, " is null");
}

/// Key range of a query block clamped to [0, Tk).
template <class Mask>
mask::KeyRange clamped_range(const Mask& m, int64_t b, int64_t qpos_lo, int64_t qpos_hi, int64_t Tk) {
  mask::KeyRange r = m.key_range(b, qpos_lo, qpos_hi, Tk);
  r.lo = std::max<int64_t>(r.lo, 0);
  r.hi = std::min(r.hi, Tk);
  if (r.hi < r.lo) r.hi = r.lo;
  return r;
}

/// Per-thread packing buffers for tile_gemm.
template <class T>
struct TileWork {
  std::vector<T, Eigen::aligned_allocator<T>> lhs, rhs;
  explicit TileWork(int64_t Dh) {
    const int64_t cap = std::max({kBlockQ, kBlockK, Dh});
    lhs.resize(static_cast<size_t>(cap * cap));
    rhs.resize(static_cast<size_t>(cap * cap));
  }
};

/// Tile product C[M,N] += alpha * op(A) * op(B), row-major pointers as in ops::gemm (A is [M,K], or [K,M]
/// when TA; B is [K,N], or [N,K] when TB); M, N, K at most TileWork's cap. Calls Eigen's packing + GEBP
/// kernel directly (Eigen 3.4 internals): with EIGEN_USE_BLAS an ordinary Eigen product goes to OpenBLAS,
/// whose pthread pool fights the OpenMP threads running the tiles — measured with 2 OpenMP threads, the
/// small-problem gradient tests ran 17x slower than with OPENBLAS_NUM_THREADS=1. Tiles are small enough
/// (<= 64 x 64 x Dh) that GEBP without cache blocking matches the BLAS speed.
template <bool TA, bool TB, class T>
void tile_gemm(TileWork<T>& w, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
               int64_t ldb, T* C, int64_t ldc) {
  namespace ei = Eigen::internal;
  using Index = Eigen::Index;
  using Traits = ei::gebp_traits<T, T>;
  // Computed column-major as C^T[N,M] += op(B)^T[N,K] * op(A)^T[K,M]; row-major X read column-major is X^T.
  constexpr int kLhsOrder = TB ? Eigen::RowMajor : Eigen::ColMajor;
  constexpr int kRhsOrder = TA ? Eigen::RowMajor : Eigen::ColMajor;
  using LhsMapper = ei::const_blas_data_mapper<T, Index, kLhsOrder>;
  using RhsMapper = ei::const_blas_data_mapper<T, Index, kRhsOrder>;
  using ResMapper = ei::blas_data_mapper<T, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
  if (M == 0 || N == 0 || K == 0) return;
  ei::gemm_pack_lhs<T, Index, LhsMapper, Traits::mr, Traits::LhsProgress, typename Traits::LhsPacket4Packing,
                    kLhsOrder>()(w.lhs.data(), LhsMapper(B, ldb), K, N);
  ei::gemm_pack_rhs<T, Index, RhsMapper, Traits::nr, kRhsOrder>()(w.rhs.data(), RhsMapper(A, lda), K, M);
  ei::gebp_kernel<T, T, Index, ResMapper, Traits::mr, Traits::nr, false, false>()(
      ResMapper(C, ldc), w.lhs.data(), w.rhs.data(), N, K, M, alpha);
}

/// Set the disallowed entries of the score tile s (query positions qpos0.., key rows j0..) to -inf.
template <class Mask, class S>
void apply_mask(S& s, const Mask& m, int64_t b, int64_t qpos0, int64_t j0) {
  using T = typename S::Scalar;
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < s.rows(); ++r)
    for (int64_t c = 0; c < s.cols(); ++c)
      if (!m.allowed(b, qpos0 + r, j0 + c)) s(r, c) = ninf;
}

/// Pointers to row r0 of head column `head` in a strided row-major buffer.
template <class T>
T* rows_at(T* base, int64_t r0, int64_t stride, int64_t head, int64_t Dh) {
  return base + r0 * stride + head * Dh;
}

/// Score tile s[nq,nk] = scale * Q K^T with disallowed entries at -inf.
template <class T, class Mask>
void score_tile(TileWork<T>& w, eig::MapMat<T>& s, const T* qp, int64_t q_stride, const T* kp,
                int64_t k_stride, int64_t Dh, T scale, const Mask& m, int64_t b, int64_t qpos0, int64_t j0) {
  s.setZero();
  tile_gemm<false, true>(w, s.rows(), s.cols(), Dh, scale, qp, q_stride, kp, k_stride, s.data(), s.cols());
  apply_mask(s, m, b, qpos0, j0);
}

/// Turn a score tile into probabilities P = exp(S - lse) (0 where masked or where the row is fully masked).
template <class T>
void probs_from_lse(eig::MapMat<T>& p, const T* lse) {
  for (int64_t r = 0; r < p.rows(); ++r) {
    if (lse[r] == -std::numeric_limits<T>::infinity())
      p.row(r).setZero();
    else
      p.row(r) = (p.row(r).array() - lse[r]).exp();
  }
}

/// dS = P * (dO V^T - D), written over dp (nq x nk).
template <class T>
void dscores_tile(TileWork<T>& w, eig::MapMat<T>& dp, const eig::MapMat<T>& p, const T* dop, int64_t o_stride,
                  const T* vp, int64_t v_stride, int64_t Dh, const T* D) {
  dp.setZero();
  tile_gemm<false, true>(w, dp.rows(), dp.cols(), Dh, T(1), dop, o_stride, vp, v_stride, dp.data(),
                         dp.cols());
  for (int64_t r = 0; r < dp.rows(); ++r) dp.row(r).array() = p.row(r).array() * (dp.row(r).array() - D[r]);
}

/// Enough work to wake the OpenMP team? `work` bounds the multiply-adds (B*H*Tq*Tk*Dh, ignoring the mask).
inline bool worth_parallel(const AttnDims& d, int64_t tasks) {
  const double work = double(d.B) * double(d.Hq) * double(d.Tq) * double(d.Tk) * double(d.Dh);
  return tasks > 1 && work > double(1 << 18);
}

}  // namespace attn_detail

/// o = softmax(scale * q k^T restricted by `mask`) v, blockwise with an online softmax.
/// lse (may be null when no backward follows): [B, Hq, Tq] log-sum-exp of the scaled, masked scores;
/// -inf for a fully masked row, whose output row is 0. Only the Hq*Dh head columns of each o row are written.
template <class T, class Mask>
void attention_forward(cpu, const AttnDims& d, const Mask& mask_policy, const T* q, const T* k, const T* v,
                       T* o, T* lse) {
  using namespace attn_detail;
  constexpr const char* who = "attention_forward";
  check_dims(d, who);
  check_ptr(q, d.B * d.Tq > 0, who, "q");
  check_ptr(o, d.B * d.Tq > 0, who, "o");
  check_ptr(k, d.B * d.Tk > 0, who, "k");
  check_ptr(v, d.B * d.Tk > 0, who, "v");
  const auto m = mask::bind(mask_policy, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  const int64_t Dh = d.Dh, Dv = d.dv(), rep = d.Hq / d.Hkv, nqb = (d.Tq + kBlockQ - 1) / kBlockQ;
  const int64_t ntasks = d.B * d.Hq * nqb;
  const T scale = static_cast<T>(d.scale), ninf = -std::numeric_limits<T>::infinity();

#pragma omp parallel if (worth_parallel(d, ntasks))
  {
    // Per-thread scratch: score/probability tile, output accumulator, running row max and sum.
    TileWork<T> work(std::max(Dh, Dv));
    eig::Mat<T> s_buf(kBlockQ, kBlockK), acc_buf(kBlockQ, Dv);
    Eigen::Matrix<T, Eigen::Dynamic, 1> mx(kBlockQ), sum(kBlockQ);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t b = task / (d.Hq * nqb), h = task / nqb % d.Hq, i0 = task % nqb * kBlockQ;
      const int64_t nq = std::min(kBlockQ, d.Tq - i0), g = h / rep, qpos0 = d.q_offset + i0;
      const T* qp = rows_at(q, b * d.Tq + i0, d.q_stride, h, Dh);
      auto acc = eig::mat(acc_buf.data(), nq, Dv);
      acc.setZero();
      mx.head(nq).setConstant(ninf);
      sum.head(nq).setZero();

      const mask::KeyRange kr = clamped_range(m, b, qpos0, qpos0 + nq, d.Tk);
      for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kBlockK) {
        const int64_t nk = std::min(kBlockK, kr.hi - j0);
        auto s = eig::mat(s_buf.data(), nq, nk);
        score_tile(work, s, qp, d.q_stride, rows_at(k, b * d.Tk + j0, d.k_stride, g, Dh), d.k_stride, Dh,
                   scale, m, b, qpos0, j0);
        // Online softmax: rescale what was accumulated under the old row max by exp(old - new).
        for (int64_t r = 0; r < nq; ++r) {
          const T new_max = std::max(mx[r], s.row(r).maxCoeff());
          if (new_max == ninf) {  // nothing allowed so far in this row
            s.row(r).setZero();
            continue;
          }
          const T alpha = std::exp(mx[r] - new_max);  // 0 when mx was -inf
          s.row(r) = (s.row(r).array() - new_max).exp();
          sum[r] = sum[r] * alpha + s.row(r).sum();
          acc.row(r) *= alpha;
          mx[r] = new_max;
        }
        tile_gemm<false, false>(work, nq, Dv, nk, T(1), s.data(), nk,
                                rows_at(v, b * d.Tk + j0, d.v_stride, g, Dv), d.v_stride, acc.data(), Dv);
      }

      auto ob = eig::mat(rows_at(o, b * d.Tq + i0, d.o_stride, h, Dv), nq, Dv, d.o_stride);
      T* lse_row = lse ? lse + (b * d.Hq + h) * d.Tq + i0 : nullptr;
      for (int64_t r = 0; r < nq; ++r) {
        if (sum[r] > T(0)) {
          ob.row(r) = acc.row(r) / sum[r];
          if (lse_row) lse_row[r] = mx[r] + std::log(sum[r]);
        } else {
          ob.row(r).setZero();
          if (lse_row) lse_row[r] = ninf;
        }
      }
    }
  }
}

/// Gradients of attention_forward. dq, dk, dv are OVERWRITTEN (same strides as q, k, v; only the head
/// columns are written); dout has o_stride. With P = exp(scale*S - lse) and D_i = rowsum(dO_i * O_i):
///   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - D),  dQ = scale * dS K,  dK = scale * dS^T Q.
/// Two race-free passes: (1) per (batch, kv head, key block) accumulate dK, dV over every query head of the
/// group and every query block whose key range meets the key block; (2) per (batch, query head, query block)
/// accumulate dQ over its key range. Pass 2 recomputes P and dP (7 tile products instead of 5), trading that
/// for full parallelism, determinism and no per-thread gradient copies or atomics.
template <class T, class Mask>
void attention_backward(cpu, const AttnDims& d, const Mask& mask_policy, const T* q, const T* k, const T* v,
                        const T* o, const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  using namespace attn_detail;
  constexpr const char* who = "attention_backward";
  check_dims(d, who);
  const bool has_q = d.B * d.Tq > 0, has_k = d.B * d.Tk > 0;
  check_ptr(q, has_q, who, "q");
  check_ptr(o, has_q, who, "o");
  check_ptr(lse, has_q, who, "lse");
  check_ptr(dout, has_q, who, "dout");
  check_ptr(dq, has_q, who, "dq");
  check_ptr(k, has_k, who, "k");
  check_ptr(v, has_k, who, "v");
  check_ptr(dk, has_k, who, "dk");
  check_ptr(dv, has_k, who, "dv");
  const auto m = mask::bind(mask_policy, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  const int64_t Dh = d.Dh, Dv = d.dv(), rep = d.Hq / d.Hkv;
  const int64_t nqb = (d.Tq + kBlockQ - 1) / kBlockQ, nkb = (d.Tk + kBlockK - 1) / kBlockK;
  const T scale = static_cast<T>(d.scale);

  // D[b, h, i] = dO_i . O_i (the softmax-Jacobian correction term), laid out like lse.
  std::vector<T> D(static_cast<size_t>(d.B * d.Hq * d.Tq));
  const int64_t nrows = d.B * d.Tq;
#pragma omp parallel for if (worth_parallel(d, nrows))
  for (int64_t row = 0; row < nrows; ++row) {
    const int64_t b = row / d.Tq, i = row % d.Tq;
    for (int64_t h = 0; h < d.Hq; ++h) {
      const auto dor = eig::mat(rows_at(dout, row, d.o_stride, h, Dv), 1, Dv);
      D[(b * d.Hq + h) * d.Tq + i] =
          dor.cwiseProduct(eig::mat(rows_at(o, row, d.o_stride, h, Dv), 1, Dv)).sum();
    }
  }

  // Key range of every query block (shared by its heads), looked up by both passes.
  std::vector<mask::KeyRange> ranges(static_cast<size_t>(d.B * nqb));
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t qblk = 0; qblk < nqb; ++qblk) {
      const int64_t qpos0 = d.q_offset + qblk * kBlockQ, nq = std::min(kBlockQ, d.Tq - qblk * kBlockQ);
      ranges[b * nqb + qblk] = clamped_range(m, b, qpos0, qpos0 + nq, d.Tk);
    }

  // Pass 1: dK, dV per key block.
  const int64_t ntasks_k = d.B * d.Hkv * nkb;
#pragma omp parallel if (worth_parallel(d, ntasks_k))
  {
    TileWork<T> work(std::max(Dh, Dv));
    eig::Mat<T> p_buf(kBlockQ, kBlockK), dp_buf(kBlockQ, kBlockK), dk_buf(kBlockK, Dh), dv_buf(kBlockK, Dv);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks_k; ++task) {
      const int64_t b = task / (d.Hkv * nkb), g = task / nkb % d.Hkv, j0 = task % nkb * kBlockK;
      const int64_t nk = std::min(kBlockK, d.Tk - j0);
      const T* kp = rows_at(k, b * d.Tk + j0, d.k_stride, g, Dh);
      const T* vp = rows_at(v, b * d.Tk + j0, d.v_stride, g, Dv);
      auto dkacc = eig::mat(dk_buf.data(), nk, Dh), dvacc = eig::mat(dv_buf.data(), nk, Dv);
      dkacc.setZero();
      dvacc.setZero();
      for (int64_t qblk = 0; qblk < nqb; ++qblk) {
        const mask::KeyRange kr = ranges[b * nqb + qblk];
        if (std::max(kr.lo, j0) >= std::min(kr.hi, j0 + nk)) continue;  // this query block never sees it
        const int64_t i0 = qblk * kBlockQ, nq = std::min(kBlockQ, d.Tq - i0), qpos0 = d.q_offset + i0;
        auto p = eig::mat(p_buf.data(), nq, nk), dp = eig::mat(dp_buf.data(), nq, nk);
        for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
          const T* qp = rows_at(q, b * d.Tq + i0, d.q_stride, h, Dh);
          const T* dop = rows_at(dout, b * d.Tq + i0, d.o_stride, h, Dv);
          const int64_t row0 = (b * d.Hq + h) * d.Tq + i0;
          score_tile(work, p, qp, d.q_stride, kp, d.k_stride, Dh, scale, m, b, qpos0, j0);
          probs_from_lse(p, lse + row0);
          tile_gemm<true, false>(work, nk, Dv, nq, T(1), p.data(), nk, dop, d.o_stride, dvacc.data(), Dv);
          dscores_tile(work, dp, p, dop, d.o_stride, vp, d.v_stride, Dv, D.data() + row0);
          tile_gemm<true, false>(work, nk, Dh, nq, scale, dp.data(), nk, qp, d.q_stride, dkacc.data(), Dh);
        }
      }
      eig::mat(rows_at(dk, b * d.Tk + j0, d.k_stride, g, Dh), nk, Dh, d.k_stride) = dkacc;
      eig::mat(rows_at(dv, b * d.Tk + j0, d.v_stride, g, Dv), nk, Dv, d.v_stride) = dvacc;
    }
  }

  // Pass 2: dQ per query block.
  const int64_t ntasks_q = d.B * d.Hq * nqb;
#pragma omp parallel if (worth_parallel(d, ntasks_q))
  {
    TileWork<T> work(std::max(Dh, Dv));
    eig::Mat<T> p_buf(kBlockQ, kBlockK), dp_buf(kBlockQ, kBlockK), dq_buf(kBlockQ, Dh);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks_q; ++task) {
      const int64_t b = task / (d.Hq * nqb), h = task / nqb % d.Hq, qblk = task % nqb, i0 = qblk * kBlockQ;
      const int64_t nq = std::min(kBlockQ, d.Tq - i0), g = h / rep, qpos0 = d.q_offset + i0;
      const T* qp = rows_at(q, b * d.Tq + i0, d.q_stride, h, Dh);
      const T* dop = rows_at(dout, b * d.Tq + i0, d.o_stride, h, Dv);
      const int64_t row0 = (b * d.Hq + h) * d.Tq + i0;
      auto dqacc = eig::mat(dq_buf.data(), nq, Dh);
      dqacc.setZero();
      const mask::KeyRange kr = ranges[b * nqb + qblk];
      for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kBlockK) {
        const int64_t nk = std::min(kBlockK, kr.hi - j0);
        const T* kp = rows_at(k, b * d.Tk + j0, d.k_stride, g, Dh);
        auto p = eig::mat(p_buf.data(), nq, nk), dp = eig::mat(dp_buf.data(), nq, nk);
        score_tile(work, p, qp, d.q_stride, kp, d.k_stride, Dh, scale, m, b, qpos0, j0);
        probs_from_lse(p, lse + row0);
        dscores_tile(work, dp, p, dop, d.o_stride, rows_at(v, b * d.Tk + j0, d.v_stride, g, Dv), d.v_stride,
                     Dv, D.data() + row0);
        tile_gemm<false, false>(work, nq, Dh, nk, scale, dp.data(), nk, kp, d.k_stride, dqacc.data(), Dh);
      }
      eig::mat(rows_at(dq, b * d.Tq + i0, d.q_stride, h, Dh), nq, Dh, d.q_stride) = dqacc;
    }
  }
}

// CUDA (cuda/attention.cu), fp32, flash-style; position-only masks. dq, dk, dv are overwritten.
void attention_forward(cuda, const AttnDims& d, const mask::Causal& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_forward(cuda, const AttnDims& d, const mask::SlidingWindow& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_forward(cuda, const AttnDims& d, const mask::ChunkLocal& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_backward(cuda, const AttnDims& d, const mask::Causal& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv);
void attention_backward(cuda, const AttnDims& d, const mask::SlidingWindow& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv);
void attention_backward(cuda, const AttnDims& d, const mask::ChunkLocal& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv);
/// CUDA, bf16 mixed precision (Megalodon's attention under set_compute_precision(bf16)): mask::ChunkLocal
/// through batched bf16 GEMMs with fp32 accumulation and a softmax kernel (cuda/chunk_attention.cu), for the
/// wide heads the flash kernels can only run in fp32. Same interface and layouts as the fp32 op, the bf16
/// attention's precision contract (q, k, v, dout, P and dS rounded to bf16 once). Returns false, nothing
/// written, unless q_offset is 0, Tq == Tk is a multiple of C <= 4096 and Hq == Hkv, or when its buffers for
/// every chunk's scores (B T C fp32 and bf16) cannot be allocated.
bool attention_forward_chunks_bf16(cuda, const AttnDims& d, const mask::ChunkLocal& m, const float* q,
                                   const float* k, const float* v, float* o, float* lse);
bool attention_backward_chunks_bf16(cuda, const AttnDims& d, const mask::ChunkLocal& m, const float* q,
                                    const float* k, const float* v, const float* o, const float* lse,
                                    const float* dout, float* dq, float* dk, float* dv);

// CUDA id masks (same kernels). Every id / validity pointer inside the policy (q_doc, k_doc, q_seg, k_seg,
// valid) must be DEVICE memory, laid out as on the CPU (rows b*Tq + i, b*Tk + j); the host never reads
// it. A declared k_sorted is verified on the device (one small kernel plus a synchronising 8-byte copy per
// call) and throws like the CPU bind when the key ids decrease. All<Causal, DocumentCuts> is BLT's local mask.
void attention_forward(cuda, const AttnDims& d, const mask::DocumentCuts& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_forward(cuda, const AttnDims& d, const mask::All<mask::Causal, mask::DocumentCuts>& m,
                       const float* q, const float* k, const float* v, float* o, float* lse);
void attention_forward(cuda, const AttnDims& d, const mask::SegmentEqual& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_forward(cuda, const AttnDims& d, const mask::BlockCausal& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_forward(cuda, const AttnDims& d, const mask::KeyValid& m, const float* q, const float* k,
                       const float* v, float* o, float* lse);
void attention_backward(cuda, const AttnDims& d, const mask::DocumentCuts& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv);
void attention_backward(cuda, const AttnDims& d, const mask::All<mask::Causal, mask::DocumentCuts>& m,
                        const float* q, const float* k, const float* v, const float* o, const float* lse,
                        const float* dout, float* dq, float* dk, float* dv);
void attention_backward(cuda, const AttnDims& d, const mask::SegmentEqual& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv);
void attention_backward(cuda, const AttnDims& d, const mask::BlockCausal& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv);
void attention_backward(cuda, const AttnDims& d, const mask::KeyValid& m, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv);

}  // namespace tessera::ops

// BLT's mask policies and their CUDA overloads, declared here so that every layer template sees them whatever
// the include order (the layers call ops::attention_forward by its qualified name).
#include "tessera/ops/blt_cuda.hpp"
