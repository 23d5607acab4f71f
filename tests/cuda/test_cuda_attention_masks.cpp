// CPU vs CUDA parity for the flash-style attention (cuda/attention.cu) with the id mask policies:
// DocumentCuts, All<Causal, DocumentCuts>, BlockCausal, SegmentEqual and KeyValid. Both backends run on the
// same random fp32 inputs and the same ids (host copies for the CPU policy, device copies for the CUDA
// policy); every test skips itself when no CUDA device is visible.
//
// Outputs start as NaN on the device (an element the GPU never writes fails); padding columns start as 7 on
// both sides and must stay untouched. Tolerance as in test_cuda_megalodon.cpp: |gpu - cpu| <= 1e-4 (|cpu| +
// max|cpu|) elementwise; a masking or key-range mistake gives O(1) errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "support/cuda_testing.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/ops/attention.hpp"

using namespace tessera;
namespace mask = tessera::ops::mask;

using tessera::testing::DeviceCopy;

namespace {

constexpr double kRtol = 1e-4;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class CudaAttentionMasks : public tessera::testing::CudaTest {};

void expect_close(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& ref) {
  tessera::testing::expect_elementwise_close(what, gpu, ref, kRtol);
}

ops::AttnDims dims(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t Dh, int64_t Dv,
                   int64_t q_offset, double scale, int64_t pad) {
  ops::AttnDims d;
  d.B = B;
  d.Tq = Tq;
  d.Tk = Tk;
  d.Hq = Hq;
  d.Hkv = Hkv;
  d.Dh = Dh;
  d.Dv = Dv;
  d.q_offset = q_offset;
  d.scale = scale;
  d.q_stride = Hq * Dh + pad;
  d.k_stride = Hkv * Dh + pad;
  d.v_stride = Hkv * d.dv() + pad;
  d.o_stride = Hq * d.dv() + pad;
  return d;
}

/// Per-row ids that are non-decreasing along each of B rows of length T: runs of random length 1..max_run.
std::vector<int64_t> sorted_ids(int64_t B, int64_t T, int64_t max_run, Rng& rng, int64_t first = 0) {
  std::vector<int64_t> ids(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b) {
    int64_t id = first, left = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (left == 0) {
        left = 1 + static_cast<int64_t>(rng.uniform() * static_cast<double>(max_run)) % max_run;
        if (t > 0) ++id;
      }
      ids[b * T + t] = id;
      --left;
    }
  }
  return ids;
}

/// n standard normal values.
std::vector<float> randn(int64_t n, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal());
  return v;
}

/// Random ids in [0, n).
std::vector<int64_t> random_ids(int64_t count, int64_t n, Rng& rng) {
  std::vector<int64_t> ids(static_cast<size_t>(count));
  for (int64_t& x : ids) x = static_cast<int64_t>(rng.uniform() * static_cast<double>(n)) % n;
  return ids;
}

/// The query rows' ids of a self-attention layout: query row i is key position q_offset + i.
std::vector<int64_t> query_ids_from_keys(const std::vector<int64_t>& k, const ops::AttnDims& d) {
  std::vector<int64_t> q(static_cast<size_t>(d.B * d.Tq));
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t i = 0; i < d.Tq; ++i) q[b * d.Tq + i] = k[b * d.Tk + std::min(d.Tk - 1, d.q_offset + i)];
  return q;
}

/// Forward and backward on both backends for the policy pair (cpu_mask over host ids, gpu_mask over device
/// ids); o, lse, dq, dk, dv compared. Returns the number of fully masked (lse = -inf) query rows of the CPU.
template <class M>
int64_t check(const std::string& name, const ops::AttnDims& d, const M& cpu_mask, const M& gpu_mask,
              Rng& rng) {
  SCOPED_TRACE(name);
  const int64_t nq = d.B * d.Tq, nk = d.B * d.Tk, Dv = d.dv();
  auto buffer = [&](int64_t rows, int64_t stride, int64_t cols, bool random, float fill) {
    std::vector<float> v(static_cast<size_t>(rows * stride), 7.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) v[r * stride + c] = random ? static_cast<float>(rng.normal()) : fill;
    return v;
  };
  const std::vector<float> q = buffer(nq, d.q_stride, d.Hq * d.Dh, true, 0),
                           k = buffer(nk, d.k_stride, d.Hkv * d.Dh, true, 0),
                           v = buffer(nk, d.v_stride, d.Hkv * Dv, true, 0),
                           dout = buffer(nq, d.o_stride, d.Hq * Dv, true, 0);
  std::vector<float> o = buffer(nq, d.o_stride, d.Hq * Dv, false, 0),
                     lse(static_cast<size_t>(d.B * d.Hq * d.Tq));
  std::vector<float> dq = buffer(nq, d.q_stride, d.Hq * d.Dh, false, 0),
                     dk = buffer(nk, d.k_stride, d.Hkv * d.Dh, false, 0),
                     dv = buffer(nk, d.v_stride, d.Hkv * Dv, false, 0);
  DeviceCopy<float> d_q(q), d_k(k), d_v(v), d_dout(dout);
  DeviceCopy<float> d_o(buffer(nq, d.o_stride, d.Hq * Dv, false, kNaN)),
      d_lse(std::vector<float>(lse.size(), kNaN));
  DeviceCopy<float> d_dq(buffer(nq, d.q_stride, d.Hq * d.Dh, false, kNaN)),
      d_dk(buffer(nk, d.k_stride, d.Hkv * d.Dh, false, kNaN)),
      d_dv(buffer(nk, d.v_stride, d.Hkv * Dv, false, kNaN));

  ops::attention_forward(cpu{}, d, cpu_mask, q.data(), k.data(), v.data(), o.data(), lse.data());
  ops::attention_backward(cpu{}, d, cpu_mask, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(),
                          dq.data(), dk.data(), dv.data());
  ops::attention_forward(cuda{}, d, gpu_mask, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data());
  ops::attention_backward(cuda{}, d, gpu_mask, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data(),
                          d_dout.data(), d_dq.data(), d_dk.data(), d_dv.data());
  expect_close("o", d_o.host(), o);
  expect_close("lse", d_lse.host(), lse);
  expect_close("dq", d_dq.host(), dq);
  expect_close("dk", d_dk.host(), dk);
  expect_close("dv", d_dv.host(), dv);
  return std::count(lse.begin(), lse.end(), -std::numeric_limits<float>::infinity());
}

/// DocumentCuts (causal = false) or All<Causal, DocumentCuts> over the given ids.
int64_t check_docs(const std::string& name, const ops::AttnDims& d, const std::vector<int64_t>& qd,
                   const std::vector<int64_t>& kd, bool sorted, bool causal, Rng& rng) {
  DeviceCopy<int64_t> dq(qd), dk(kd);
  const mask::DocumentCuts host{qd.data(), kd.data(), sorted}, dev{dq.data(), dk.data(), sorted};
  if (causal) return check(name, d, mask::All{mask::Causal{}, host}, mask::All{mask::Causal{}, dev}, rng);
  return check(name, d, host, dev, rng);
}

}  // namespace

// Packed documents, sorted (key blocks skipped by binary search) and unsorted (every key block visited);
// GQA, lengths off the 32-row tiles, padded strides, Dh != Dv and the larger kernel instantiation.
TEST_F(CudaAttentionMasks, DocumentCutsMatchesCpu) {
  Rng rng(41);
  {
    const auto d = dims(2, 77, 77, 4, 2, 64, 0, 0, 0.125, 3);
    const auto k = sorted_ids(2, 77, 30, rng);
    check_docs("sorted docs GQA 4/2", d, query_ids_from_keys(k, d), k, true, false, rng);
    check_docs("same docs, not declared sorted", d, query_ids_from_keys(k, d), k, false, false, rng);
  }
  {
    const auto d = dims(1, 100, 100, 2, 2, 128, 40, 0, 0.09, 0);
    const auto k = random_ids(100, 3, rng);
    check_docs("unsorted docs Dh=128 Dv=40", d, query_ids_from_keys(k, d), k, false, false, rng);
  }
  {
    // Queries with a document that no key has: fully masked rows (lse -inf, zero output and gradients).
    const auto d = dims(2, 45, 70, 3, 1, 32, 0, 0, 0.2, 1);
    const auto k = sorted_ids(2, 70, 25, rng);
    auto q = sorted_ids(2, 45, 12, rng);
    for (int64_t i = 5; i < 15; ++i) q[i] = 1000;      // batch 0, rows 5..14
    for (int64_t i = 40; i < 45; ++i) q[45 + i] = -7;  // batch 1, last rows
    EXPECT_GE(check_docs("cross docs with absent ids", d, q, k, true, false, rng), 3 * 15);
    check_docs("cross docs with absent ids, unsorted path", d, q, k, false, false, rng);
  }
}

// BLT's local-layer mask: causal within packed documents; also chunked prefill (q_offset) and decode.
TEST_F(CudaAttentionMasks, CausalDocumentCutsMatchesCpu) {
  Rng rng(42);
  {
    const auto d = dims(2, 90, 90, 4, 1, 64, 0, 0, 0.125, 0);
    const auto k = sorted_ids(2, 90, 40, rng);
    check_docs("causal docs GQA 4/1", d, query_ids_from_keys(k, d), k, true, true, rng);
    check_docs("causal docs unsorted path", d, query_ids_from_keys(k, d), k, false, true, rng);
  }
  {
    const auto d = dims(2, 37, 101, 2, 2, 48, 16, 64, 0.15, 2);
    const auto k = sorted_ids(2, 101, 33, rng);
    check_docs("causal docs q_offset 64", d, query_ids_from_keys(k, d), k, true, true, rng);
  }
  {
    const auto d = dims(1, 1, 70, 2, 1, 64, 0, 69, 0.125, 0);
    const auto k = sorted_ids(1, 70, 20, rng);
    check_docs("causal docs decode", d, query_ids_from_keys(k, d), k, true, true, rng);
  }
  {
    // Query ids that contradict the keys' (documents absent from the visible keys): fully masked rows.
    const auto d = dims(1, 40, 40, 2, 2, 32, 0, 0, 0.2, 0);
    const auto k = sorted_ids(1, 40, 10, rng);
    auto q = query_ids_from_keys(k, d);
    for (int64_t i = 0; i < 6; ++i) q[i] = 500;
    EXPECT_EQ(check_docs("causal docs masked rows", d, q, k, true, true, rng), 2 * 6);
  }
}

// Block-causal over patch ids: a byte sees every byte of its own and earlier patches (not causal within a
// patch); sorted and unsorted paths, GQA, and rows whose id is below every key's (fully masked).
TEST_F(CudaAttentionMasks, BlockCausalMatchesCpu) {
  Rng rng(43);
  auto run = [&](const std::string& name, const ops::AttnDims& d, const std::vector<int64_t>& qs,
                 const std::vector<int64_t>& ks, bool sorted) {
    DeviceCopy<int64_t> dq(qs), dk(ks);
    return check(name, d, mask::BlockCausal{qs.data(), ks.data(), sorted},
                 mask::BlockCausal{dq.data(), dk.data(), sorted}, rng);
  };
  {
    const auto d = dims(2, 83, 83, 4, 2, 64, 0, 0, 0.125, 1);
    const auto k = sorted_ids(2, 83, 9, rng);
    run("patches sorted", d, query_ids_from_keys(k, d), k, true);
    run("patches unsorted path", d, query_ids_from_keys(k, d), k, false);
  }
  {
    const auto d = dims(1, 50, 66, 2, 1, 256, 0, 16, 0.0625, 0);
    const auto k = random_ids(66, 5, rng);
    run("random segments Dh=256", d, query_ids_from_keys(k, d), k, false);
  }
  {
    const auto d = dims(1, 40, 70, 1, 1, 32, 64, 0, 0.2, 0);
    const auto k = sorted_ids(1, 70, 15, rng, 3);
    auto q = sorted_ids(1, 40, 8, rng, 3);
    for (int64_t i = 0; i < 4; ++i) q[i] = 0;  // below every key id (>= 3)
    EXPECT_EQ(run("segments below every key", d, q, k, true), 4);
  }
}

// Cross attention bytes -> patches: byte i sees only the patch (key) carrying its own patch id.
TEST_F(CudaAttentionMasks, SegmentEqualMatchesCpu) {
  Rng rng(44);
  auto run = [&](const std::string& name, const ops::AttnDims& d, const std::vector<int64_t>& qs,
                 const std::vector<int64_t>& ks, bool sorted) {
    DeviceCopy<int64_t> dq(qs), dk(ks);
    return check(name, d, mask::SegmentEqual{qs.data(), ks.data(), sorted},
                 mask::SegmentEqual{dq.data(), dk.data(), sorted}, rng);
  };
  {
    // 150 bytes in patches of 1..6 bytes; two key rows per patch id (a single key per query would make the
    // softmax trivial and dk exactly zero), ids 0..22: bytes of later patches see nothing.
    const int64_t B = 2, Tq = 150, Tk = 45;
    const auto d = dims(B, Tq, Tk, 4, 2, 64, 0, 0, 0.125, 2);
    const auto q = sorted_ids(B, Tq, 6, rng);
    std::vector<int64_t> k(static_cast<size_t>(B * Tk));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < Tk; ++j) k[b * Tk + j] = j / 2;
    run("bytes to patches sorted", d, q, k, true);
    run("bytes to patches unsorted path", d, q, k, false);
  }
  {
    const auto d = dims(1, 64, 40, 2, 2, 16, 32, 0, 1.0, 0);
    const auto q = random_ids(64, 6, rng), k = random_ids(40, 8, rng);
    run("random segments Dh=16 Dv=32", d, q, k, false);
  }
  {
    const auto d = dims(1, 33, 20, 1, 1, 64, 0, 0, 0.125, 0);
    std::vector<int64_t> q(33), k(20);
    for (int64_t i = 0; i < 33; ++i) q[i] = i / 3;  // patches 0..10; keys hold 0..9 only
    for (int64_t j = 0; j < 20; ++j) k[j] = j / 2;
    EXPECT_EQ(run("patch without a key row", d, q, k, true), 3);
  }
}

// Key padding: random validity, a batch row with no valid key (fully masked), GQA, Tq != Tk with q_offset.
TEST_F(CudaAttentionMasks, KeyValidMatchesCpu) {
  Rng rng(45);
  const auto d = dims(3, 41, 75, 4, 2, 64, 24, 10, 0.125, 1);
  std::vector<uint8_t> valid(static_cast<size_t>(d.B * d.Tk));
  for (int64_t j = 0; j < d.Tk; ++j) {
    valid[j] = rng.uniform() < 0.6 ? 1 : 0;
    valid[d.Tk + j] = 0;                    // batch 1: nothing valid
    valid[2 * d.Tk + j] = j >= 64 ? 1 : 0;  // batch 2: only the last (partial) key tile
  }
  DeviceCopy<uint8_t> dvalid(valid);
  const int64_t masked =
      check("key validity", d, mask::KeyValid{valid.data()}, mask::KeyValid{dvalid.data()}, rng);
  EXPECT_EQ(masked, d.Hq * d.Tq);  // exactly batch 1
}

// A declared k_sorted is checked on the device, with the CPU bind's message; null id arrays are rejected.
TEST_F(CudaAttentionMasks, BadIdsAreTesseraErrors) {
  const auto d = dims(2, 5, 40, 1, 1, 8, 0, 0, 0.1, 0);
  DeviceCopy<float> buf(std::vector<float>(4096, 0.f)), out(std::vector<float>(4096, 0.f)),
      lse(std::vector<float>(4096, 0.f));
  std::vector<int64_t> k(80, 0);
  k[40 + 17] = 3;  // batch 1 decreases at key row 18
  DeviceCopy<int64_t> dk(k), dq(std::vector<int64_t>(10, 0));
  try {
    ops::attention_forward(cuda{}, d, mask::DocumentCuts{dq.data(), dk.data(), true}, buf.data(), buf.data(),
                           buf.data(), out.data(), lse.data());
    ADD_FAILURE() << "expected tessera::Error for unsorted k_doc";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("k_doc"), std::string::npos) << msg;
    EXPECT_NE(msg.find("batch 1, key row 18"), std::string::npos) << msg;
  }
  EXPECT_THROW(ops::attention_backward(cuda{}, d, mask::BlockCausal{dq.data(), dk.data(), true}, buf.data(),
                                       buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), buf.data(),
                                       buf.data(), buf.data()),
               Error);
  // Declared unsorted: accepted (every key block is visited).
  EXPECT_NO_THROW(ops::attention_forward(cuda{}, d, mask::SegmentEqual{dq.data(), dk.data(), false},
                                         buf.data(), buf.data(), buf.data(), out.data(), lse.data()));
  EXPECT_THROW(
      ops::attention_forward(cuda{}, d, mask::All{mask::Causal{}, mask::DocumentCuts{nullptr, dk.data()}},
                             buf.data(), buf.data(), buf.data(), buf.data(), buf.data()),
      Error);
  EXPECT_THROW(ops::attention_forward(cuda{}, d, mask::KeyValid{nullptr}, buf.data(), buf.data(), buf.data(),
                                      buf.data(), buf.data()),
               Error);
}

// The split-KV ("flash decoding") forward of cuda/attention_launch.cuh, taken for few query rows: decoding
// (Tq = 1) and a short chunk (Tq = 3), the queries being the last rows of a longer key sequence (q_offset =
// Tk - Tq), for every mask the CUDA attention binds. The backward (unchanged) reads the forward's o and lse,
// so it checks them once more. The sizes are in the split regime of split_kv_parts on a 132-SM H100 (the
// emulator reports 132 SMs): Tq <= 8 and a key span >= 32, with B*Hq = 8 query heads (tile grid 8 blocks,
// 2 * 8 <= 132 for Tq = 3); splits per row = min(ceil(8*132 / (B*Hq*Tq)), span / 16, 128), i.e.
// min(128, span/16) for Tq = 1 and min(44, span/16) for Tq = 3: e.g. causal Tk = 600 -> 37 splits, window
// W = 300 -> 18, chunk C = 256 -> 16, the non-causal id masks over Tk = 500 -> 31 (span = Tk); a split's
// keys may all be masked (its part has weight 0); with several splits the row's last block merges them, and
// the many launches here reuse the per-row counters it re-arms. The last case has B*Hq = 1056 rows: one
// split, written by its block directly.
TEST_F(CudaAttentionMasks, SplitKvDecodeMatchesCpu) {
  Rng rng(46);
  for (const int64_t Tq : {int64_t{1}, int64_t{3}}) {
    const std::string tq = " Tq=" + std::to_string(Tq);
    {
      const auto d = dims(2, Tq, 600, 4, 2, 64, 0, 600 - Tq, 0.125, 1);
      check("causal Tk=600 Dh=64" + tq, d, mask::Causal{}, mask::Causal{}, rng);
    }
    {
      const auto d = dims(1, Tq, 300, 2, 1, 256, 64, 300 - Tq, 0.0625, 0);
      check("causal Tk=300 Dh=256 Dv=64" + tq, d, mask::Causal{}, mask::Causal{}, rng);
    }
    {
      const auto d = dims(2, Tq, 700, 4, 2, 128, 0, 700 - Tq, 1.0 / std::sqrt(128.0), 3);
      check("window W=300 Tk=700 Dh=128" + tq, d, mask::SlidingWindow{300}, mask::SlidingWindow{300}, rng);
    }
    {
      // Rows 511..513: row 511 sees a full chunk (256 keys), rows 512, 513 one or two keys of the next.
      const auto d = dims(2, Tq, 514, 4, 2, 64, 40, 514 - Tq, 0.125, 1);
      check("chunk C=256 Tk=514 Dh=64 Dv=40" + tq, d, mask::ChunkLocal{256}, mask::ChunkLocal{256}, rng);
    }
    {
      // Documents of up to 300 keys; the last query row of batch 1 has an id no key has (fully masked).
      const auto d = dims(2, Tq, 500, 4, 2, 128, 96, 500 - Tq, 0.09, 2);
      const auto k = sorted_ids(2, 500, 300, rng);
      auto q = query_ids_from_keys(k, d);
      q[2 * Tq - 1] = 1000;
      EXPECT_EQ(check_docs("docs sorted Dh=128 Dv=96" + tq, d, q, k, true, false, rng), d.Hq);
      EXPECT_EQ(check_docs("docs unsorted path" + tq, d, q, k, false, false, rng), d.Hq);
      EXPECT_EQ(check_docs("causal docs" + tq, d, q, k, true, true, rng), d.Hq);
      EXPECT_EQ(check_docs("causal docs unsorted path" + tq, d, q, k, false, true, rng), d.Hq);
    }
    {
      // Patch ids from 3 on; the first query row of batch 0 has id 0, below every key (fully masked).
      const auto d = dims(2, Tq, 450, 4, 2, 64, 0, 450 - Tq, 0.125, 0);
      const auto k = sorted_ids(2, 450, 40, rng, 3);
      auto q = query_ids_from_keys(k, d);
      q[0] = 0;
      for (const bool sorted : {true, false}) {
        DeviceCopy<int64_t> dq(q), dk(k);
        EXPECT_EQ(check(std::string("block causal") + (sorted ? " sorted" : " unsorted") + tq, d,
                        mask::BlockCausal{q.data(), k.data(), sorted},
                        mask::BlockCausal{dq.data(), dk.data(), sorted}, rng),
                  d.Hq);
      }
    }
    {
      // Cross attention to 500 keys in runs of 150 ids (ids 0..3); query ids 0..3 and 9 (no key: masked).
      const auto d = dims(2, Tq, 500, 4, 2, 64, 0, 0, 0.125, 1);
      std::vector<int64_t> k(2 * 500), q(static_cast<size_t>(2 * Tq));
      for (int64_t j = 0; j < 1000; ++j) k[j] = j % 500 / 150;
      for (int64_t i = 0; i < 2 * Tq; ++i) q[i] = i % 4;
      q[Tq] = 9;  // batch 1, row 0
      for (const bool sorted : {true, false}) {
        DeviceCopy<int64_t> dq(q), dk(k);
        EXPECT_EQ(check(std::string("segment equal") + (sorted ? " sorted" : " unsorted") + tq, d,
                        mask::SegmentEqual{q.data(), k.data(), sorted},
                        mask::SegmentEqual{dq.data(), dk.data(), sorted}, rng),
                  d.Hq);
      }
    }
    {
      // Random validity in batch 0, none in batch 1 (every row of batch 1 fully masked).
      const auto d = dims(2, Tq, 520, 4, 2, 128, 0, 520 - Tq, 0.09, 1);
      std::vector<uint8_t> valid(static_cast<size_t>(2 * 520), 0);
      for (int64_t j = 0; j < 520; ++j) valid[j] = rng.uniform() < 0.6 ? 1 : 0;
      DeviceCopy<uint8_t> dvalid(valid);
      EXPECT_EQ(
          check("key valid Dh=128" + tq, d, mask::KeyValid{valid.data()}, mask::KeyValid{dvalid.data()}, rng),
          d.Hq * Tq);
    }
  }
  // One split per row (B*Hq*Tq = 1056 rows >= 8*132 blocks): o and lse come straight from the split kernel.
  // Forward only (the backward of this many heads is slow in the emulator and covered above).
  const auto d = dims(2, 1, 130, 528, 264, 16, 32, 129, 0.25, 0);
  const std::vector<float> q = randn(d.B * d.Tq * d.q_stride, rng), k = randn(d.B * d.Tk * d.k_stride, rng),
                           v = randn(d.B * d.Tk * d.v_stride, rng);
  std::vector<float> o(static_cast<size_t>(d.B * d.Tq * d.o_stride)), lse(static_cast<size_t>(d.B * d.Hq));
  DeviceCopy<float> d_q(q), d_k(k), d_v(v), d_o(std::vector<float>(o.size(), kNaN)),
      d_lse(std::vector<float>(lse.size(), kNaN));
  ops::attention_forward(cpu{}, d, mask::Causal{}, q.data(), k.data(), v.data(), o.data(), lse.data());
  ops::attention_forward(cuda{}, d, mask::Causal{}, d_q.data(), d_k.data(), d_v.data(), d_o.data(),
                         d_lse.data());
  expect_close("one split o", d_o.host(), o);
  expect_close("one split lse", d_lse.host(), lse);
}
