// Blockwise attention with mask policies vs a naive materialised reference (double), finite-difference
// gradients, GQA, KV-cache decoding offsets, fully masked rows, strided (fused QKV) inputs, long sequences.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "support/gradcheck.hpp"
#include "tessera/ops/attention.hpp"

using namespace tessera;
using namespace tessera::ops;
using tessera::testing::expect_grad_close;
using tessera::testing::fill_normal;
using tessera::testing::max_abs_err;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
using Size = std::tuple<int64_t, int64_t, int64_t>;  // Tq, Tk, q_offset

AttnDims make_dims(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t Dh,
                   int64_t q_offset = 0, int64_t Dv = 0) {
  AttnDims d;
  d.B = B, d.Tq = Tq, d.Tk = Tk, d.Hq = Hq, d.Hkv = Hkv, d.Dh = Dh, d.Dv = Dv;
  d.q_stride = Hq * Dh;
  d.o_stride = Hq * d.dv();
  d.k_stride = Hkv * Dh;
  d.v_stride = Hkv * d.dv();
  d.q_offset = q_offset;
  d.scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  return d;
}

/// Naive attention: one full score row per query (materialised over all Tk keys), double throughout.
template <class Mask>
void ref_forward(const AttnDims& d, const Mask& mask0, const double* q, const double* k, const double* v,
                 double* o, double* lse) {
  const auto m = mask::bind(mask0, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  const int64_t rep = d.Hq / d.Hkv;
  std::vector<double> s(d.Tk);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; ++h)
      for (int64_t i = 0; i < d.Tq; ++i) {
        const double* qi = q + (b * d.Tq + i) * d.q_stride + h * d.Dh;
        double mx = -kInf;
        for (int64_t j = 0; j < d.Tk; ++j) {
          s[j] = -kInf;
          if (!m.allowed(b, d.q_offset + i, j)) continue;
          const double* kj = k + (b * d.Tk + j) * d.k_stride + h / rep * d.Dh;
          double dot = 0;
          for (int64_t c = 0; c < d.Dh; ++c) dot += qi[c] * kj[c];
          s[j] = dot * d.scale;
          mx = std::max(mx, s[j]);
        }
        double* oi = o + (b * d.Tq + i) * d.o_stride + h * d.dv();
        for (int64_t c = 0; c < d.dv(); ++c) oi[c] = 0;
        double l = 0;
        if (mx != -kInf)
          for (int64_t j = 0; j < d.Tk; ++j) {
            const double p = std::exp(s[j] - mx);
            l += p;
            const double* vj = v + (b * d.Tk + j) * d.v_stride + h / rep * d.dv();
            for (int64_t c = 0; c < d.dv(); ++c) oi[c] += p * vj[c];
          }
        if (l > 0)
          for (int64_t c = 0; c < d.dv(); ++c) oi[c] /= l;
        lse[(b * d.Hq + h) * d.Tq + i] = l > 0 ? mx + std::log(l) : -kInf;
      }
}

/// Naive gradients of ref_forward (accumulating into zeroed dq, dk, dv).
template <class Mask>
void ref_backward(const AttnDims& d, const Mask& mask0, const double* q, const double* k, const double* v,
                  const double* dout, double* dq, double* dk, double* dv) {
  const auto m = mask::bind(mask0, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
  const int64_t rep = d.Hq / d.Hkv;
  std::vector<double> p(d.Tk), dp(d.Tk);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; ++h)
      for (int64_t i = 0; i < d.Tq; ++i) {
        const double* qi = q + (b * d.Tq + i) * d.q_stride + h * d.Dh;
        const double* doi = dout + (b * d.Tq + i) * d.o_stride + h * d.dv();
        double mx = -kInf;
        for (int64_t j = 0; j < d.Tk; ++j) {
          p[j] = -kInf;
          if (!m.allowed(b, d.q_offset + i, j)) continue;
          const double* kj = k + (b * d.Tk + j) * d.k_stride + h / rep * d.Dh;
          double dot = 0;
          for (int64_t c = 0; c < d.Dh; ++c) dot += qi[c] * kj[c];
          p[j] = dot * d.scale;
          mx = std::max(mx, p[j]);
        }
        if (mx == -kInf) continue;
        double l = 0;
        for (int64_t j = 0; j < d.Tk; ++j) l += (p[j] = std::exp(p[j] - mx));
        double D = 0;
        for (int64_t j = 0; j < d.Tk; ++j) {
          p[j] /= l;
          const double* vj = v + (b * d.Tk + j) * d.v_stride + h / rep * d.dv();
          dp[j] = 0;
          for (int64_t c = 0; c < d.dv(); ++c) dp[j] += doi[c] * vj[c];
          D += p[j] * dp[j];
        }
        double* dqi = dq + (b * d.Tq + i) * d.q_stride + h * d.Dh;
        for (int64_t j = 0; j < d.Tk; ++j) {
          const double ds = p[j] * (dp[j] - D) * d.scale;
          const double* kj = k + (b * d.Tk + j) * d.k_stride + h / rep * d.Dh;
          double* dkj = dk + (b * d.Tk + j) * d.k_stride + h / rep * d.Dh;
          double* dvj = dv + (b * d.Tk + j) * d.v_stride + h / rep * d.dv();
          for (int64_t c = 0; c < d.Dh; ++c) {
            dqi[c] += ds * kj[c];
            dkj[c] += ds * qi[c];
          }
          for (int64_t c = 0; c < d.dv(); ++c) dvj[c] += p[j] * doi[c];
        }
      }
}

/// Random inputs for one problem (contiguous unless the dims say otherwise).
struct Data {
  std::vector<double> q, k, v, dout;
  Data(const AttnDims& d, uint64_t seed) {
    Rng rng(seed);
    q.resize(d.B * d.Tq * d.q_stride);
    k.resize(d.B * d.Tk * d.k_stride);
    v.resize(d.B * d.Tk * d.v_stride);
    dout.resize(d.B * d.Tq * d.o_stride);
    fill_normal(q.data(), q.size(), rng);
    fill_normal(k.data(), k.size(), rng);
    fill_normal(v.data(), v.size(), rng);
    fill_normal(dout.data(), dout.size(), rng);
  }
};

template <class T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

/// lse arrays equal within tol, with -inf matching -inf exactly.
template <class T>
void expect_lse_close(const std::string& what, const std::vector<T>& a, const std::vector<double>& ref,
                      double tol) {
  int bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool ok = std::isinf(ref[i]) ? (std::isinf(a[i]) && a[i] < 0) : std::abs(a[i] - ref[i]) <= tol;
    if (!ok && ++bad <= 3) ADD_FAILURE() << what << ": lse[" << i << "] = " << a[i] << " vs " << ref[i];
  }
}

/// Blockwise forward+backward in T vs the naive double reference.
template <class T, class Mask>
void check_against_reference(const std::string& what, const AttnDims& d, const Mask& m, uint64_t seed,
                             double fwd_tol, double bwd_tol) {
  SCOPED_TRACE(what);
  const Data x(d, seed);
  std::vector<double> o_ref(d.B * d.Tq * d.o_stride), lse_ref(d.B * d.Hq * d.Tq);
  ref_forward(d, m, x.q.data(), x.k.data(), x.v.data(), o_ref.data(), lse_ref.data());
  std::vector<double> dq_ref(x.q.size()), dk_ref(x.k.size()), dv_ref(x.v.size());
  ref_backward(d, m, x.q.data(), x.k.data(), x.v.data(), x.dout.data(), dq_ref.data(), dk_ref.data(),
               dv_ref.data());

  const auto q = cast<T>(x.q), k = cast<T>(x.k), v = cast<T>(x.v), dout = cast<T>(x.dout);
  std::vector<T> o(o_ref.size(), T(7)), lse(lse_ref.size(), T(7));
  attention_forward(cpu{}, d, m, q.data(), k.data(), v.data(), o.data(), lse.data());
  EXPECT_LE(max_abs_err(o.data(), o_ref.data(), o.size()), fwd_tol) << what << ": output";
  expect_lse_close(what, lse, lse_ref, fwd_tol);

  // Gradients start as garbage: backward must overwrite them.
  std::vector<T> dq(q.size(), T(3)), dk(k.size(), T(3)), dv(v.size(), T(3));
  attention_backward(cpu{}, d, m, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(), dq.data(),
                     dk.data(), dv.data());
  EXPECT_LE(max_abs_err(dq.data(), dq_ref.data(), dq.size()), bwd_tol) << what << ": dq";
  EXPECT_LE(max_abs_err(dk.data(), dk_ref.data(), dk.size()), bwd_tol) << what << ": dk";
  EXPECT_LE(max_abs_err(dv.data(), dv_ref.data(), dv.size()), bwd_tol) << what << ": dv";
}

/// Per-position ids over absolute positions [0, Tk); queries read them at q_offset + i.
struct Ids {
  std::vector<int64_t> doc_k, doc_q;      // sorted document ids (contiguous documents)
  std::vector<int64_t> mixed_k, mixed_q;  // unsorted ids in {0,1,2} (interleaved "documents")
  std::vector<int64_t> patch_k, patch_q;  // sorted patch ids
  std::vector<uint8_t> valid;             // key validity
  Ids(const AttnDims& d, uint64_t seed) {
    Rng rng(seed);
    for (int64_t b = 0; b < d.B; ++b) {
      int64_t doc = 0, patch = 0;
      for (int64_t j = 0; j < d.Tk; ++j) {
        if (j > 0 && rng.below(40) == 0) ++doc;
        if (j > 0 && rng.below(5) == 0) ++patch;
        doc_k.push_back(doc);
        patch_k.push_back(patch);
        mixed_k.push_back(static_cast<int64_t>(rng.below(3)));
        valid.push_back(rng.below(4) != 0);
      }
      for (int64_t i = 0; i < d.Tq; ++i) {
        const int64_t j = std::min(d.q_offset + i, d.Tk - 1) + b * d.Tk;
        doc_q.push_back(doc_k[j]);
        patch_q.push_back(patch_k[j]);
        mixed_q.push_back(mixed_k[j]);
      }
    }
  }
};

/// Call f(name, policy) for every self-attention policy (and some conjunctions).
template <class F>
void for_each_policy(const Ids& ids, F&& f) {
  f("Full", mask::Full{});
  f("Causal", mask::Causal{});
  f("SlidingWindow5", mask::SlidingWindow{5});
  f("SlidingWindow70", mask::SlidingWindow{70});
  f("ChunkLocal16", mask::ChunkLocal{16});
  f("ChunkLocal100", mask::ChunkLocal{100});
  f("DocumentCutsSorted", mask::DocumentCuts{ids.doc_q.data(), ids.doc_k.data(), true});
  f("DocumentCutsUnsorted", mask::DocumentCuts{ids.mixed_q.data(), ids.mixed_k.data()});
  f("BlockCausalSorted", mask::BlockCausal{ids.patch_q.data(), ids.patch_k.data(), true});
  f("BlockCausalUnsorted", mask::BlockCausal{ids.mixed_q.data(), ids.mixed_k.data()});
  f("SegmentEqualSorted", mask::SegmentEqual{ids.patch_q.data(), ids.patch_k.data(), true});
  f("KeyValid", mask::KeyValid{ids.valid.data()});
  f("Causal+DocumentCuts",
    mask::All{mask::Causal{}, mask::DocumentCuts{ids.doc_q.data(), ids.doc_k.data(), true}});
  f("SlidingWindow+KeyValid", mask::All{mask::SlidingWindow{20}, mask::KeyValid{ids.valid.data()}});
  f("Causal+Mixed+KeyValid",
    mask::All{mask::Causal{}, mask::DocumentCuts{ids.mixed_q.data(), ids.mixed_k.data()},
              mask::KeyValid{ids.valid.data()}});
}

}  // namespace

// ---- mask policies ------------------------------------------------------------------------------

TEST(AttentionMask, PositionPoliciesByHand) {
  EXPECT_TRUE(mask::Causal{}.allowed(0, 5, 5));
  EXPECT_FALSE(mask::Causal{}.allowed(0, 5, 6));
  // BLT's W = 512: a byte sees itself and the 511 before it.
  const mask::SlidingWindow w{512};
  EXPECT_TRUE(w.allowed(0, 600, 600));
  EXPECT_TRUE(w.allowed(0, 600, 89));
  EXPECT_FALSE(w.allowed(0, 600, 88));
  EXPECT_FALSE(w.allowed(0, 600, 601));
  EXPECT_EQ(w.key_range(0, 600, 664, 5000).lo, 89);
  EXPECT_EQ(w.key_range(0, 600, 664, 5000).hi, 664);
  const mask::ChunkLocal c{10};
  EXPECT_TRUE(c.allowed(0, 19, 10));
  EXPECT_FALSE(c.allowed(0, 20, 19));
  EXPECT_FALSE(c.allowed(0, 15, 16));
  EXPECT_EQ(c.key_range(0, 25, 40, 100).lo, 20);
  EXPECT_EQ(mask::Causal{}.key_range(0, 0, 64, 30).hi, 30);
  const auto a = mask::All{mask::Causal{}, mask::SlidingWindow{4}};
  EXPECT_TRUE(a.allowed(0, 10, 7));
  EXPECT_FALSE(a.allowed(0, 10, 6));
  EXPECT_EQ(a.key_range(0, 10, 20, 100).lo, 7);
  EXPECT_EQ(a.key_range(0, 10, 20, 100).hi, 20);
}

TEST(AttentionMask, IdPoliciesByHand) {
  // Two batch rows of 4 keys, 2 queries each at positions q_offset=2, 3.
  const int64_t k_doc[] = {0, 0, 1, 1, 5, 6, 6, 6};
  const int64_t q_doc[] = {1, 1, 6, 9};
  const auto dc = mask::bind(mask::DocumentCuts{q_doc, k_doc, true}, mask::Layout{2, 2, 4, 2});
  EXPECT_TRUE(dc.allowed(0, 2, 3));
  EXPECT_FALSE(dc.allowed(0, 2, 1));
  EXPECT_TRUE(dc.allowed(1, 2, 1));
  EXPECT_FALSE(dc.allowed(1, 3, 1));
  EXPECT_EQ(dc.key_range(0, 2, 4, 4).lo, 2);
  EXPECT_EQ(dc.key_range(0, 2, 4, 4).hi, 4);
  EXPECT_EQ(dc.key_range(1, 2, 4, 4).lo, 1);  // ids 6..9 -> keys from the first 6
  EXPECT_EQ(dc.key_range(1, 3, 4, 4).lo, 4);  // id 9 is absent: empty range
  EXPECT_TRUE(dc.key_range(1, 3, 4, 4).empty());
  const auto bc = mask::bind(mask::BlockCausal{q_doc, k_doc, true}, mask::Layout{2, 2, 4, 2});
  EXPECT_TRUE(bc.allowed(0, 2, 0));
  EXPECT_TRUE(bc.allowed(0, 2, 3));
  EXPECT_TRUE(bc.allowed(1, 2, 0));  // 5 <= 6
  EXPECT_EQ(bc.key_range(0, 2, 3, 4).hi, 4);
  const uint8_t valid[] = {1, 0, 1, 1, 0, 0, 0, 1};
  const auto kv = mask::bind(mask::KeyValid{valid}, mask::Layout{2, 2, 4, 2});
  EXPECT_FALSE(kv.allowed(0, 2, 1));
  EXPECT_TRUE(kv.allowed(1, 2, 3));
  EXPECT_FALSE(kv.allowed(1, 2, 0));  // batch row 1 reads valid[4 + 0]
}

TEST(AttentionMask, KeyRangeIsConservative) {
  const AttnDims d = make_dims(2, 150, 180, 1, 1, 1, 30);
  const Ids ids(d, 11);
  int checked = 0;
  for_each_policy(ids, [&](const std::string& name, const auto& m0) {
    const auto m = mask::bind(m0, mask::Layout{d.B, d.Tq, d.Tk, d.q_offset});
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t lo = 0; lo < d.Tq; lo += 7)
        for (int64_t n : {1, 13, 64}) {
          const int64_t hi = std::min(d.Tq, lo + n);
          const auto r = m.key_range(b, d.q_offset + lo, d.q_offset + hi, d.Tk);
          for (int64_t i = lo; i < hi; ++i)
            for (int64_t j = 0; j < d.Tk; ++j)
              if (m.allowed(b, d.q_offset + i, j)) {
                ++checked;
                ASSERT_TRUE(j >= r.lo && j < r.hi) << name << ": key " << j << " allowed for query " << i
                                                   << " but outside [" << r.lo << ", " << r.hi << ")";
              }
        }
  });
  EXPECT_GT(checked, 1000);
}

// ---- forward/backward vs the naive reference -----------------------------------------------------

TEST(Attention, EveryPolicyMatchesReferenceDouble) {
  // Lengths not multiples of the 64-row tiles; GQA (4 query heads over 2 kv heads).
  for (const Size& sz :
       std::vector<Size>{{1, 1, 0}, {7, 7, 0}, {100, 100, 0}, {300, 300, 0}, {37, 200, 163}}) {
    const auto [Tq, Tk, off] = sz;
    const AttnDims d = make_dims(2, Tq, Tk, 4, 2, 8, off);
    const Ids ids(d, 100 + Tq);
    for_each_policy(ids, [&](const std::string& name, const auto& m) {
      check_against_reference<double>(tessera::str(name, " Tq=", Tq, " Tk=", Tk, " q_offset=", off), d, m,
                                      Tq * 31 + Tk, 1e-12, 1e-11);
    });
  }
}

TEST(Attention, FloatMatchesDoubleReference) {
  // fp32 tiles accumulate ~Tk products of O(1) values: errors ~1e-6, so 1e-5 for outputs and lse;
  // gradients go through one more product and the D correction, hence 5e-5.
  for (const Size& sz : std::vector<Size>{{7, 7, 0}, {300, 300, 0}, {37, 200, 163}}) {
    const auto [Tq, Tk, off] = sz;
    const AttnDims d = make_dims(2, Tq, Tk, 4, 2, 16, off);
    const Ids ids(d, 7 + Tq);
    for_each_policy(ids, [&](const std::string& name, const auto& m) {
      check_against_reference<float>(tessera::str("float ", name, " Tq=", Tq), d, m, 5 + Tk, 1e-5, 5e-5);
    });
  }
}

TEST(Attention, WideHeadsMatchReference) {
  // Dh above the tile size (packing buffers are sized by max(tile, Dh)); MHA and MQA (Hkv = 1).
  const AttnDims d = make_dims(1, 100, 130, 2, 2, 96, 30);
  check_against_reference<double>("Dh=96 causal", d, mask::Causal{}, 8, 1e-12, 1e-11);
  check_against_reference<float>("Dh=96 float", d, mask::SlidingWindow{40}, 8, 1e-5, 5e-5);
  check_against_reference<double>("MQA", make_dims(2, 70, 70, 4, 1, 8), mask::ChunkLocal{32}, 9, 1e-12,
                                  1e-11);
}

TEST(Attention, ValueHeadsWiderOrNarrowerThanKeyHeads) {
  // Megalodon: dz != dv. Dv > tile size and Dv < Dh, GQA, offset queries, chunk-local and causal masks.
  check_against_reference<double>("Dv=80 chunk", make_dims(2, 100, 100, 4, 2, 8, 0, 80), mask::ChunkLocal{32},
                                  11, 1e-12, 1e-11);
  check_against_reference<double>("Dv=4 causal", make_dims(1, 70, 90, 2, 1, 16, 20, 4), mask::Causal{}, 12,
                                  1e-12, 1e-11);
  check_against_reference<float>("Dv=24 float", make_dims(2, 130, 130, 2, 2, 8, 0, 24), mask::ChunkLocal{48},
                                 13, 1e-5, 5e-5);
}

TEST(Attention, CrossAttentionSegmentEqual) {
  // Bytes (queries) attend to their own patch (keys) and patches attend to their bytes; Tq != Tk.
  const int64_t B = 2, bytes = 130, patches = 23;
  std::vector<int64_t> byte_patch, patch_id;
  Rng rng(3);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < bytes; ++i)
      byte_patch.push_back(std::min<int64_t>(patches - 1, i / 6 + (b && i > 70)));
    for (int64_t p = 0; p < patches; ++p) patch_id.push_back(p);
  }
  const AttnDims d1 = make_dims(B, bytes, patches, 4, 2, 8);
  check_against_reference<double>(
      "bytes->patches", d1, mask::SegmentEqual{byte_patch.data(), patch_id.data(), true}, 1, 1e-12, 1e-11);
  const AttnDims d2 = make_dims(B, patches, bytes, 2, 2, 8);
  check_against_reference<double>(
      "patches->bytes", d2, mask::SegmentEqual{patch_id.data(), byte_patch.data(), true}, 2, 1e-12, 1e-11);
  check_against_reference<double>("patches->bytes unsorted flag", d2,
                                  mask::SegmentEqual{patch_id.data(), byte_patch.data()}, 2, 1e-12, 1e-11);
}

TEST(Attention, DecodeStepEqualsLastRowOfFullCausal) {
  const int64_t T = 150, Hq = 4, Hkv = 2, Dh = 8, W = Hq * Dh;
  const AttnDims full = make_dims(2, T, T, Hq, Hkv, Dh);
  const Data x(full, 21);
  std::vector<double> o(2 * T * W), lse(2 * Hq * T);
  attention_forward(cpu{}, full, mask::Causal{}, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data());
  for (int64_t tq : {1, 3}) {
    // Queries are the last tq rows of each batch; keys/values the whole cache.
    const AttnDims dec = make_dims(2, tq, T, Hq, Hkv, Dh, T - tq);
    std::vector<double> q(2 * tq * W), od(2 * tq * W), lsed(2 * Hq * tq);
    for (int64_t b = 0; b < 2; ++b)
      std::copy_n(x.q.data() + (b * T + T - tq) * W, tq * W, q.data() + b * tq * W);
    attention_forward(cpu{}, dec, mask::Causal{}, q.data(), x.k.data(), x.v.data(), od.data(), lsed.data());
    for (int64_t b = 0; b < 2; ++b) {
      EXPECT_LE(max_abs_err(od.data() + b * tq * W, o.data() + (b * T + T - tq) * W, tq * W), 1e-13) << tq;
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < tq; ++i)
          EXPECT_NEAR(lsed[(b * Hq + h) * tq + i], lse[(b * Hq + h) * T + T - tq + i], 1e-13);
    }
  }
}

TEST(Attention, FullyMaskedRowsGiveZeroAndNoNaN) {
  // Batch 1 has no valid key at all; query rows whose document is absent from the keys see nothing.
  const AttnDims d = make_dims(2, 70, 90, 2, 1, 4);
  std::vector<uint8_t> valid(2 * 90, 1);
  std::fill(valid.begin() + 90, valid.end(), 0);
  std::vector<int64_t> q_doc(2 * 70), k_doc(2 * 90, 0);
  for (int64_t i = 0; i < 2 * 70; ++i) q_doc[i] = i % 3 == 0 ? 9 : 0;  // doc 9 has no keys
  const auto m =
      mask::All{mask::KeyValid{valid.data()}, mask::DocumentCuts{q_doc.data(), k_doc.data(), true}};
  check_against_reference<double>("fully masked", d, m, 5, 1e-12, 1e-11);
  check_against_reference<float>("fully masked float", d, m, 5, 1e-5, 5e-5);

  const Data x(d, 5);
  std::vector<double> o(2 * 70 * 2 * 4, 7.0), lse(2 * 2 * 70, 7.0);
  attention_forward(cpu{}, d, m, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data());
  std::vector<double> dq(x.q.size()), dk(x.k.size()), dv(x.v.size());
  attention_backward(cpu{}, d, m, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data(), x.dout.data(),
                     dq.data(), dk.data(), dv.data());
  int masked_rows = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 70; ++i) {
      const bool none = b == 1 || q_doc[b * 70 + i] == 9;
      for (int64_t h = 0; h < 2; ++h) {
        if (!none) continue;
        ++masked_rows;
        EXPECT_EQ(lse[(b * 2 + h) * 70 + i], -kInf);
        for (int64_t c = 0; c < 4; ++c) {
          EXPECT_EQ(o[(b * 70 + i) * 8 + h * 4 + c], 0.0);
          EXPECT_EQ(dq[(b * 70 + i) * 8 + h * 4 + c], 0.0);
        }
      }
    }
  EXPECT_GT(masked_rows, 140);
  for (double g : dk) ASSERT_TRUE(std::isfinite(g));
  for (double g : dv) ASSERT_TRUE(std::isfinite(g));
}

TEST(Attention, EmptyKeysGiveZeroOutput) {
  const AttnDims d = make_dims(1, 5, 0, 2, 2, 4);
  std::vector<float> q(5 * 8, 1.0f), o(5 * 8, 7.0f), lse(10, 7.0f);
  attention_forward(cpu{}, d, mask::Full{}, q.data(), static_cast<const float*>(nullptr),
                    static_cast<const float*>(nullptr), o.data(), lse.data());
  for (float x : o) EXPECT_EQ(x, 0.0f);
  for (float x : lse) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
}

TEST(Attention, StridedFusedQkvMatchesContiguous) {
  // q, k, v as column slices of one fused [N, (Hq + 2 Hkv) Dh] buffer; o and dout in a padded buffer.
  const int64_t B = 2, T = 100, Hq = 4, Hkv = 2, Dh = 8, Wq = Hq * Dh, Wkv = Hkv * Dh, Wf = Wq + 2 * Wkv;
  const int64_t Wo = Wq + 5;
  AttnDims dc = make_dims(B, T, T, Hq, Hkv, Dh);
  const Data x(dc, 77);
  std::vector<int64_t> docs(B * T);
  for (int64_t i = 0; i < B * T; ++i) docs[i] = (i % T) / 33;
  const auto m = mask::All{mask::Causal{}, mask::DocumentCuts{docs.data(), docs.data(), true}};

  std::vector<float> fused(B * T * Wf), dout(B * T * Wo, 0.0f);
  for (int64_t r = 0; r < B * T; ++r) {
    for (int64_t c = 0; c < Wq; ++c) fused[r * Wf + c] = static_cast<float>(x.q[r * Wq + c]);
    for (int64_t c = 0; c < Wkv; ++c) {
      fused[r * Wf + Wq + c] = static_cast<float>(x.k[r * Wkv + c]);
      fused[r * Wf + Wq + Wkv + c] = static_cast<float>(x.v[r * Wkv + c]);
    }
    for (int64_t c = 0; c < Wq; ++c) dout[r * Wo + c] = static_cast<float>(x.dout[r * Wq + c]);
  }
  AttnDims ds = dc;
  ds.q_stride = ds.k_stride = ds.v_stride = Wf;
  ds.o_stride = Wo;
  std::vector<float> o(B * T * Wo, -5.0f), lse(B * Hq * T), dqkv(B * T * Wf, 9.0f);
  attention_forward(cpu{}, ds, m, fused.data(), fused.data() + Wq, fused.data() + Wq + Wkv, o.data(),
                    lse.data());
  attention_backward(cpu{}, ds, m, fused.data(), fused.data() + Wq, fused.data() + Wq + Wkv, o.data(),
                     lse.data(), dout.data(), dqkv.data(), dqkv.data() + Wq, dqkv.data() + Wq + Wkv);

  // Contiguous float run of the same problem.
  const auto q = cast<float>(x.q), k = cast<float>(x.k), v = cast<float>(x.v), dc_out = cast<float>(x.dout);
  std::vector<float> o2(B * T * Wq), lse2(B * Hq * T), dq(q.size()), dk(k.size()), dv(v.size());
  attention_forward(cpu{}, dc, m, q.data(), k.data(), v.data(), o2.data(), lse2.data());
  attention_backward(cpu{}, dc, m, q.data(), k.data(), v.data(), o2.data(), lse2.data(), dc_out.data(),
                     dq.data(), dk.data(), dv.data());
  for (int64_t r = 0; r < B * T; ++r) {
    for (int64_t c = 0; c < Wq; ++c) {
      ASSERT_EQ(o[r * Wo + c], o2[r * Wq + c]) << r << "," << c;
      ASSERT_EQ(dqkv[r * Wf + c], dq[r * Wq + c]) << r << "," << c;
    }
    for (int64_t c = Wq; c < Wo; ++c)
      ASSERT_EQ(o[r * Wo + c], -5.0f) << "padding written at " << r << "," << c;
    for (int64_t c = 0; c < Wkv; ++c) {
      ASSERT_EQ(dqkv[r * Wf + Wq + c], dk[r * Wkv + c]) << r << "," << c;
      ASSERT_EQ(dqkv[r * Wf + Wq + Wkv + c], dv[r * Wkv + c]) << r << "," << c;
    }
  }
  EXPECT_EQ(lse, lse2);
}

// ---- finite-difference gradients (double) --------------------------------------------------------

namespace {

/// Checks dq, dk, dv of L = sum(o * G) by central differences.
template <class Mask>
void fd_check(const std::string& what, const AttnDims& d, const Mask& m, uint64_t seed) {
  SCOPED_TRACE(what);
  Data x(d, seed);
  std::vector<double> o(d.B * d.Tq * d.o_stride), lse(d.B * d.Hq * d.Tq);
  const auto loss = [&] {
    attention_forward(cpu{}, d, m, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data());
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += o[i] * x.dout[i];
    return l;
  };
  loss();
  std::vector<double> dq(x.q.size()), dk(x.k.size()), dv(x.v.size());
  attention_backward(cpu{}, d, m, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data(), x.dout.data(),
                     dq.data(), dk.data(), dv.data());
  // Loss ~ sqrt(#outputs) ~ 30: central-difference rounding ~1e-16 * 30 / 1e-6 ~ 3e-9, truncation ~eps^2.
  expect_grad_close(what + " dq", x.q.data(), dq.data(), x.q.size(), loss, 1e-6, 1e-5, 1e-7);
  expect_grad_close(what + " dk", x.k.data(), dk.data(), x.k.size(), loss, 1e-6, 1e-5, 1e-7);
  expect_grad_close(what + " dv", x.v.data(), dv.data(), x.v.size(), loss, 1e-6, 1e-5, 1e-7);
}

}  // namespace

TEST(AttentionGrad, CausalWithDocumentCuts) {
  // 70 rows: two query and key tiles, the second partial.
  const AttnDims d = make_dims(2, 70, 70, 2, 1, 3);
  std::vector<int64_t> docs(2 * 70);
  for (int64_t i = 0; i < 2 * 70; ++i) docs[i] = (i % 70) / 25 + (i >= 70 ? 3 : 0);
  fd_check("causal+doc", d, mask::All{mask::Causal{}, mask::DocumentCuts{docs.data(), docs.data(), true}}, 1);
}

TEST(AttentionGrad, ChunkLocalWithWideValues) {
  fd_check("chunk local Dv=5", make_dims(2, 70, 70, 2, 1, 3, 0, 5), mask::ChunkLocal{16}, 6);
}

TEST(AttentionGrad, SlidingWindow) {
  fd_check("sliding window", make_dims(1, 90, 90, 2, 2, 3), mask::SlidingWindow{20}, 2);
}

TEST(AttentionGrad, BlockCausal) {
  std::vector<int64_t> seg(80);
  for (int64_t i = 0; i < 80; ++i) seg[i] = i / 7;
  fd_check("block causal", make_dims(1, 80, 80, 2, 1, 4), mask::BlockCausal{seg.data(), seg.data(), true}, 3);
}

TEST(AttentionGrad, CrossAttentionSegmentEqual) {
  // 75 byte queries over 12 patch keys, GQA.
  std::vector<int64_t> byte_patch(75), patch(12);
  for (int64_t i = 0; i < 75; ++i) byte_patch[i] = std::min<int64_t>(11, i / 6);
  for (int64_t p = 0; p < 12; ++p) patch[p] = p;
  fd_check("cross", make_dims(1, 75, 12, 4, 2, 3), mask::SegmentEqual{byte_patch.data(), patch.data(), true},
           4);
}

TEST(AttentionGrad, CausalDecodeOffsetWithPadding) {
  const AttnDims d = make_dims(2, 20, 75, 2, 1, 3, 55);
  std::vector<uint8_t> valid(2 * 75, 1);
  for (int64_t j = 0; j < 75; j += 4) valid[j] = 0;
  fd_check("decode offset", d, mask::All{mask::Causal{}, mask::KeyValid{valid.data()}}, 5);
}

// ---- long sequences ------------------------------------------------------------------------------

TEST(Attention, LongSlidingWindowRunsWithoutQuadraticMemory) {
  // T = 65536: one T x T fp32 score matrix would be 16 GiB. Sliding window of 64 keeps it O(T * W).
  const int64_t T = 1 << 16, Dh = 16, W = 64;
  const AttnDims d = make_dims(1, T, T, 1, 1, Dh);
  Rng rng(9);
  std::vector<float> q(T * Dh), k(T * Dh), v(T * Dh), o(T * Dh), lse(T);
  fill_normal(q.data(), T * Dh, rng);
  fill_normal(k.data(), T * Dh, rng);
  fill_normal(v.data(), T * Dh, rng);
  attention_forward(cpu{}, d, mask::SlidingWindow{W}, q.data(), k.data(), v.data(), o.data(), lse.data());
  // Spot-check rows against the naive formula over their window.
  for (int64_t i : {int64_t{0}, int64_t{63}, int64_t{64}, int64_t{1000}, T / 2 + 17, T - 1}) {
    double mx = -kInf;
    std::vector<double> s;
    for (int64_t j = std::max<int64_t>(0, i - W + 1); j <= i; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < Dh; ++c) dot += double(q[i * Dh + c]) * k[j * Dh + c];
      s.push_back(dot * d.scale);
      mx = std::max(mx, s.back());
    }
    double l = 0;
    std::vector<double> out(Dh, 0.0);
    for (size_t n = 0; n < s.size(); ++n) {
      const double p = std::exp(s[n] - mx);
      l += p;
      const int64_t j = std::max<int64_t>(0, i - W + 1) + n;
      for (int64_t c = 0; c < Dh; ++c) out[c] += p * v[j * Dh + c];
    }
    for (int64_t c = 0; c < Dh; ++c) EXPECT_NEAR(o[i * Dh + c], out[c] / l, 1e-5) << "row " << i;
    EXPECT_NEAR(lse[i], mx + std::log(l), 1e-5) << "row " << i;
  }
}

// ---- bad input -----------------------------------------------------------------------------------

namespace {
template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected tessera::Error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Attention, BadInputNamesTheField) {
  std::vector<float> buf(4096, 0.0f);
  float* p = buf.data();
  const auto fwd = [&](AttnDims d, auto m) { attention_forward(cpu{}, d, m, p, p, p, p, p); };
  AttnDims d = make_dims(1, 4, 4, 3, 2, 4);
  expect_error([&] { fwd(d, mask::Full{}); }, "multiple of Hkv");
  d = make_dims(1, 4, 4, 2, 2, 4);
  d.q_stride = 7;
  expect_error([&] { fwd(d, mask::Full{}); }, "q_stride");
  d = make_dims(1, 4, 4, 2, 2, 4);
  d.k_stride = 4;
  expect_error([&] { fwd(d, mask::Full{}); }, "k_stride");
  d = make_dims(1, 4, 4, 2, 2, 4);
  expect_error([&] { fwd(d, mask::SlidingWindow{0}); }, "SlidingWindow");
  expect_error([&] { fwd(d, mask::ChunkLocal{0}); }, "ChunkLocal");
  expect_error([&] { fwd(d, mask::DocumentCuts{}); }, "q_doc is null");
  expect_error([&] { fwd(d, mask::KeyValid{}); }, "valid is null");
  const int64_t unsorted[] = {0, 2, 1, 3};
  expect_error([&] { fwd(d, mask::BlockCausal{unsorted, unsorted, true}); }, "k_seg is declared sorted");
  expect_error([&] { attention_forward(cpu{}, d, mask::Full{}, p, p, static_cast<float*>(nullptr), p, p); },
               "v is null");
  expect_error(
      [&] {
        attention_backward(cpu{}, d, mask::Causal{}, p, p, p, p, static_cast<float*>(nullptr), p, p, p, p);
      },
      "lse is null");
}
