// The BLT model on CUDA against the same model on the CPU, on the Hugging Face fixture
// (tests/fixtures/blt-hf-tiny) and the same weights with the original layout's semantics:
//   - BLT's self-attention mask All<SlidingWindow, DocumentCuts> (cuda/blt.cu) against the CPU op;
//   - logits (also against the fixture's transformers logits), entropy patching, loss and every parameter
//     gradient of a training step, in the HF layout and in the original one (windows, EOS document cuts);
//   - greedy generation: the no-cache path against the fixture's continuations, and the cached generator
//     (device caches) against the CPU generator, byte for byte and logits per step.
// Skips without a device.
//
// Tolerances: fp32 on both sides with different summation orders (cuBLAS vs Eigen GEMMs, flash vs blockwise
// attention), so results agree to a few ulps of the largest value: 1e-4 relative (max |d| / max |ref|), the
// bound of the other model tests. Patch decisions compare fp32 entropies with the threshold; the fixture's
// entropies stay >= 9e-4 away from it, far beyond the backends' ~1e-6 differences, so patches are identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

// clang-format off (BLT first: it declares the CUDA mask overloads before any layer header, see blt_cuda.hpp)
#include "tessera/models/blt/blt.hpp"
#include "tessera/models/blt/generate.hpp"
// clang-format on

#include "support/cuda_testing.hpp"
#include "support/gradcheck.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/transfer.hpp"
#include "tessera/io/model_io.hpp"
#include "tessera/io/safetensors.hpp"

using namespace tessera;
using tessera::testing::download;
using tessera::testing::rel_err;
using tessera::testing::upload;
using tessera::blt::BltConfig;
using tessera::blt::BltForCausalLM;
namespace om = tessera::ops::mask;

namespace {

constexpr double kTol = 1e-4;

// ---- fixture -------------------------------------------------------------------------------------------

#ifdef TESSERA_TEST_FIXTURES
const std::string kDir = std::string(TESSERA_TEST_FIXTURES) + "/blt-hf-tiny";
#else  // tools/cuda-emu builds the test outside CMake: the fixtures beside this source file
const std::string kDir =
    (std::filesystem::path(__FILE__).parent_path().parent_path() / "fixtures" / "blt-hf-tiny").string();
#endif

const io::SafeTensorsFile& cases() {
  static const io::SafeTensorsFile f(kDir + "/cases.safetensors");
  return f;
}
std::vector<int64_t> case_vec(int i, const std::string& name) {
  Tensor<int64_t> t = cases().read<int64_t>("case" + std::to_string(i) + "." + name);
  return std::vector<int64_t>(t.begin(), t.end());
}
/// The fixture config; `original`: the same weights with the original layout's semantics and short windows
/// (local layers and entropy model), EOS document cuts and include-next-byte patches.
BltConfig config(bool original, int64_t window = 8) {
  BltConfig c = BltConfig::read(kDir + "/config.json");
  if (original) {
    c.local_window = window;
    c.eos_document_cuts = true;
    c.patcher.window = 2 * window;
  }
  return c;
}

/// The fixture weights on the CPU and the same model on the device.
struct Pair {
  BltForCausalLM<float> h;
  BltForCausalLM<float, cuda> d;
  explicit Pair(const BltConfig& c) : h(c), d(c) {
    io::load_model(h, kDir + "/model.safetensors");
    copy_params(d, h);
  }
};

/// Every parameter gradient of the device model against the CPU model's, matched by name.
void expect_grads_close(BltForCausalLM<float>& h, BltForCausalLM<float, cuda>& d, const std::string& what) {
  std::map<std::string, std::vector<float>> dev;
  for_each_param(
      d, [&](const std::string& name, auto& p) { dev[name] = download(p.grad.data(), p.grad.numel()); });
  size_t n = 0;
  double worst = 0;
  for_each_param(h, [&](const std::string& name, auto& p) {
    auto it = dev.find(name);
    ASSERT_NE(it, dev.end()) << what << ": no device parameter " << name;
    ASSERT_EQ(static_cast<int64_t>(it->second.size()), p.grad.numel()) << what << ": " << name;
    double amax = 0;
    for (int64_t i = 0; i < p.grad.numel(); ++i) amax = std::max(amax, std::abs(double(p.grad[i])));
    EXPECT_GT(amax, 0.0) << what << ": " << name << " has no gradient on the CPU (the check would be empty)";
    const double e = rel_err(it->second.data(), p.grad.data(), p.grad.numel());
    worst = std::max(worst, e);
    EXPECT_LE(e, kTol) << what << ": gradient of " << name;
    ++n;
  });
  EXPECT_EQ(n, dev.size());
  EXPECT_GE(n, 40u) << "every trainable tensor of the fixture model";
  std::cout << "[cuda-blt] " << what << ": " << n << " gradients, max rel err " << worst << "\n";
}

/// Next-byte targets of a [batch, seq] id block: ids shifted left, the last byte of every row ignored.
std::vector<int64_t> next_byte_targets(const std::vector<int64_t>& ids, int64_t batch, int64_t seq) {
  std::vector<int64_t> t(ids.size(), -100);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i + 1 < seq; ++i) t[b * seq + i] = ids[b * seq + i + 1];
  return t;
}

/// One training step (forward with the entropy model's patches, loss, backward) on both backends; compares
/// patches, logits, loss and every gradient.
void check_train_step(Pair& m, const std::vector<int64_t>& ids, int64_t batch, int64_t seq,
                      const std::string& what) {
  SCOPED_TRACE(what);
  const std::vector<int64_t> targets = next_byte_targets(ids, batch, seq);
  const Tensor<int64_t, cuda> ids_d = upload(ids), targets_d = upload(targets);
  m.h.model.walk_patcher = m.d.model.walk_patcher = false;  // the frozen entropy model gets no gradient
  zero_grads(m.h);
  zero_grads(m.d);
  const Tensor<float>& lh = m.h.forward(ids.data(), batch, seq);
  const Tensor<float, cuda>& ld = m.d.forward(ids_d.data(), batch, seq);
  EXPECT_EQ(m.d.model.layout().lengths, m.h.model.layout().lengths) << "entropy patches";
  EXPECT_EQ(m.d.model.layout().byte_doc, m.h.model.layout().byte_doc);
  const double le = rel_err(ld, lh);
  EXPECT_LE(le, kTol) << "logits";
  const double loss_h = m.h.loss(targets.data()), loss_d = m.d.loss(targets_d.data());
  EXPECT_NEAR(loss_d, loss_h, kTol * std::abs(loss_h)) << "loss";
  m.h.backward(targets.data());
  m.d.backward(targets_d.data());
  std::cout << "[cuda-blt] " << what << ": logits rel err " << le << ", loss " << loss_h << " vs " << loss_d
            << "\n";
  expect_grads_close(m.h, m.d, what);
  m.h.model.walk_patcher = m.d.model.walk_patcher = true;
}

// ---- the mask kernel -----------------------------------------------------------------------------------

/// Random fp32 values in [-1, 1).
std::vector<float> random_floats(int64_t n, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.uniform() * 2 - 1);
  return v;
}

/// Expect the device's lse to match the CPU's: -inf exactly where the CPU's is (a query row without a
/// visible key), within kTol elsewhere. Returns how many rows had no visible key.
int64_t expect_lse_matches(const std::vector<float>& got, const std::vector<float>& want) {
  int64_t empty = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isinf(want[i])) {
      ++empty;
      EXPECT_TRUE(std::isinf(got[i]) && got[i] < 0) << "lse " << i;
    } else {
      EXPECT_NEAR(got[i], want[i], kTol * (1 + std::abs(want[i]))) << "lse " << i;
    }
  }
  return empty;
}

}  // namespace

TEST(CudaBltMask, WindowDocumentAttentionMatchesTheCpu) {
  TESSERA_NEED_GPU();
  // B = 2 rows of 70 tokens (three key tiles), GQA 4:2, head dim 16, window 9, documents of varying length
  // (sorted per row); then Tq = 3 query rows after 70 keys (decoding, q_offset 67).
  ops::AttnDims d{};
  d.B = 2, d.Hq = 4, d.Hkv = 2, d.Dh = 16;
  d.q_stride = d.o_stride = d.Hq * d.Dh;
  d.k_stride = d.v_stride = d.Hkv * d.Dh;
  d.scale = 0.25;
  const int64_t T = 70;
  std::vector<int64_t> docs(static_cast<size_t>(2 * T));
  for (int64_t i = 0; i < T; ++i) {
    docs[i] = i / 23;                            // row 0: documents of 23 tokens
    docs[T + i] = i < 5 ? 0 : (i < 41 ? 1 : 2);  // row 1: 5, 36, 29
  }
  Rng rng(11);
  for (const int64_t Tq : {T, int64_t{3}}) {
    SCOPED_TRACE("Tq " + std::to_string(Tq));
    d.Tq = Tq, d.Tk = T, d.q_offset = T - Tq;
    std::vector<int64_t> qdocs(static_cast<size_t>(2 * Tq));
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = 0; i < Tq; ++i) qdocs[b * Tq + i] = docs[b * T + d.q_offset + i];
    const auto q = random_floats(2 * Tq * d.q_stride, rng), k = random_floats(2 * T * d.k_stride, rng),
               v = random_floats(2 * T * d.v_stride, rng), dout = random_floats(2 * Tq * d.o_stride, rng);
    const om::All<om::SlidingWindow, om::DocumentCuts> mh{om::SlidingWindow{9},
                                                          om::DocumentCuts{qdocs.data(), docs.data(), true}};
    std::vector<float> o(q.size()), lse(static_cast<size_t>(2 * d.Hq * Tq)), dq(q.size()), dk(k.size()),
        dv(v.size());
    ops::attention_forward(cpu{}, d, mh, q.data(), k.data(), v.data(), o.data(), lse.data());
    ops::attention_backward(cpu{}, d, mh, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(),
                            dq.data(), dk.data(), dv.data());
    auto qd = upload(q), kd = upload(k), vd = upload(v), doutd = upload(dout);
    auto docs_d = upload(docs);
    auto qdocs_d = upload(qdocs);
    // Sorted documents (binary-searched key ranges) and the same ids without the promise (window range only).
    for (const bool sorted : {true, false}) {
      SCOPED_TRACE(sorted ? "k_sorted" : "unsorted");
      const om::All<om::SlidingWindow, om::DocumentCuts> md{
          om::SlidingWindow{9}, om::DocumentCuts{qdocs_d.data(), docs_d.data(), sorted}};
      Tensor<float, cuda> od({static_cast<int64_t>(o.size())}), lsed({static_cast<int64_t>(lse.size())}),
          dqd({static_cast<int64_t>(q.size())}), dkd({static_cast<int64_t>(k.size())}),
          dvd({static_cast<int64_t>(v.size())});
      ops::attention_forward(cuda{}, d, md, qd.data(), kd.data(), vd.data(), od.data(), lsed.data());
      ops::attention_backward(cuda{}, d, md, qd.data(), kd.data(), vd.data(), od.data(), lsed.data(),
                              doutd.data(), dqd.data(), dkd.data(), dvd.data());
      EXPECT_LE(rel_err(download(od.data(), od.numel()).data(), o.data(), static_cast<int64_t>(o.size())),
                kTol)
          << "o";
      EXPECT_LE(
          rel_err(download(lsed.data(), lsed.numel()).data(), lse.data(), static_cast<int64_t>(lse.size())),
          kTol)
          << "lse";
      EXPECT_LE(rel_err(download(dqd.data(), dqd.numel()).data(), dq.data(), static_cast<int64_t>(dq.size())),
                kTol)
          << "dq";
      EXPECT_LE(rel_err(download(dkd.data(), dkd.numel()).data(), dk.data(), static_cast<int64_t>(dk.size())),
                kTol)
          << "dk";
      EXPECT_LE(rel_err(download(dvd.data(), dvd.numel()).data(), dv.data(), static_cast<int64_t>(dv.size())),
                kTol)
          << "dv";
    }
  }
  // The mask really cuts: with every token its own document only the diagonal is visible, so o = v row-wise.
  d.Tq = d.Tk = T, d.q_offset = 0;
  std::vector<int64_t> own(static_cast<size_t>(2 * T));
  for (size_t i = 0; i < own.size(); ++i) own[i] = static_cast<int64_t>(i);
  const auto q = random_floats(2 * T * d.q_stride, rng), kv = random_floats(2 * T * d.k_stride, rng);
  auto qd = upload(q), kvd = upload(kv);
  auto own_d = upload(own);
  Tensor<float, cuda> od({2 * T * d.o_stride});
  ops::attention_forward(cuda{}, d,
                         om::All<om::SlidingWindow, om::DocumentCuts>{
                             om::SlidingWindow{9}, om::DocumentCuts{own_d.data(), own_d.data(), true}},
                         qd.data(), kvd.data(), kvd.data(), od.data(), static_cast<float*>(nullptr));
  const auto o = download(od.data(), od.numel());
  for (int64_t r = 0; r < 2 * T; ++r)
    for (int64_t h = 0; h < d.Hq; ++h)
      for (int64_t c = 0; c < d.Dh; ++c)
        ASSERT_EQ(o[r * d.o_stride + h * d.Dh + c], kv[r * d.k_stride + (h / 2) * d.Dh + c]) << r << " " << h;
  // Bad windows are errors, as on the CPU.
  EXPECT_THROW(
      ops::attention_forward(cuda{}, d,
                             om::All<om::SlidingWindow, om::DocumentCuts>{
                                 om::SlidingWindow{0}, om::DocumentCuts{own_d.data(), own_d.data()}},
                             qd.data(), kvd.data(), kvd.data(), od.data(), static_cast<float*>(nullptr)),
      Error);
}

TEST(CudaBltMask, PatchSegmentsCrossAttentionMatchesTheCpu) {
  TESSERA_NEED_GPU();
  // The encoder's shape: 2 query slots per patch attend to the bytes of their patch. B = 2, 14 slots (patch 6
  // has no bytes in row 1: a fully masked query row), 45 keys (two key tiles), 2 heads, Dh = Dv = 8.
  ops::AttnDims d{};
  d.B = 2, d.Tq = 14, d.Tk = 45, d.Hq = d.Hkv = 2, d.Dh = 8;
  d.q_stride = d.o_stride = d.k_stride = d.v_stride = 16;
  d.scale = 0.35;
  std::vector<int64_t> qseg(static_cast<size_t>(2 * d.Tq)), kseg(static_cast<size_t>(2 * d.Tk));
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t i = 0; i < d.Tq; ++i) qseg[b * d.Tq + i] = i / 2;
    for (int64_t j = 0; j < d.Tk; ++j) kseg[b * d.Tk + j] = b == 0 ? j / 7 : (j < 1 ? 0 : 1 + (j - 1) / 9);
  }
  Rng rng(13);
  const auto q = random_floats(2 * d.Tq * d.q_stride, rng), k = random_floats(2 * d.Tk * d.k_stride, rng),
             v = random_floats(2 * d.Tk * d.v_stride, rng), dout = random_floats(2 * d.Tq * d.o_stride, rng);
  const om::SegmentEqual mh{qseg.data(), kseg.data(), true};
  std::vector<float> o(q.size()), lse(static_cast<size_t>(2 * d.Hq * d.Tq)), dq(q.size()), dk(k.size()),
      dv(v.size());
  ops::attention_forward(cpu{}, d, mh, q.data(), k.data(), v.data(), o.data(), lse.data());
  ops::attention_backward(cpu{}, d, mh, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(),
                          dq.data(), dk.data(), dv.data());
  ASSERT_TRUE(std::isinf(lse[(1 * d.Hq + 0) * d.Tq + 13])) << "row 1, slot 13 has no key";
  auto qd = upload(q), kd = upload(k), vd = upload(v), doutd = upload(dout);
  auto qseg_d = upload(qseg);
  auto kseg_d = upload(kseg);
  for (const bool sorted : {true, false}) {
    SCOPED_TRACE(sorted ? "k_sorted" : "unsorted");
    const om::PatchSegments md(om::SegmentEqual{qseg_d.data(), kseg_d.data(), sorted});
    Tensor<float, cuda> od({static_cast<int64_t>(o.size())}), lsed({static_cast<int64_t>(lse.size())}),
        dqd({static_cast<int64_t>(q.size())}), dkd({static_cast<int64_t>(k.size())}),
        dvd({static_cast<int64_t>(v.size())});
    ops::attention_forward(cuda{}, d, md, qd.data(), kd.data(), vd.data(), od.data(), lsed.data());
    ops::attention_backward(cuda{}, d, md, qd.data(), kd.data(), vd.data(), od.data(), lsed.data(),
                            doutd.data(), dqd.data(), dkd.data(), dvd.data());
    EXPECT_LE(rel_err(download(od.data(), od.numel()).data(), o.data(), static_cast<int64_t>(o.size())),
              kTol);
    expect_lse_matches(download(lsed.data(), lsed.numel()), lse);
    EXPECT_LE(rel_err(download(dqd.data(), dqd.numel()).data(), dq.data(), static_cast<int64_t>(dq.size())),
              kTol);
    EXPECT_LE(rel_err(download(dkd.data(), dkd.numel()).data(), dk.data(), static_cast<int64_t>(dk.size())),
              kTol);
    EXPECT_LE(rel_err(download(dvd.data(), dvd.numel()).data(), dv.data(), static_cast<int64_t>(dv.size())),
              kTol);
  }
  // Null ids are errors naming the policy, as on the CPU.
  Tensor<float, cuda> od({static_cast<int64_t>(o.size())});
  EXPECT_THROW(
      ops::attention_forward(cuda{}, d, om::PatchSegments(om::SegmentEqual{nullptr, kseg_d.data(), true}),
                             qd.data(), kd.data(), vd.data(), od.data(), static_cast<float*>(nullptr)),
      Error);
}

TEST(CudaBltMask, PatchSegmentsWalkExactlyEachRowsSegment) {
  TESSERA_NEED_GPU();
  // Sizes past the segment kernels' scan limit (64 rows), so that key ranges (forward, dQ) and query ranges
  // (dK, dV) come from binary searches over the ids, checked sorted on the device. Patches of 1 to 7 bytes,
  // one of 80 (a walk of many keys), one empty (its slots see no byte); 2 slots per patch (BLT's k).
  Rng rng(29);
  const int64_t B = 2;
  std::vector<std::vector<int64_t>> lens(B);
  for (int64_t b = 0; b < B; ++b) {
    int64_t total = 0;
    for (int64_t p = 0; total < 190; ++p) {
      const int64_t len = p == 5 && b == 1 ? 0 : p == 9 ? 80 : 1 + static_cast<int64_t>(rng.uniform() * 7.0);
      lens[b].push_back(len);
      total += len;
    }
  }
  const int64_t P = static_cast<int64_t>(std::max(lens[0].size(), lens[1].size()));
  const int64_t T = 190;
  std::vector<int64_t> byte_seg(static_cast<size_t>(B * T)), slot_seg(static_cast<size_t>(B * 2 * P));
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0;
    for (size_t p = 0; p < lens[b].size(); ++p)
      for (int64_t e = 0; e < lens[b][p] && t < T; ++e) byte_seg[b * T + t++] = static_cast<int64_t>(p);
    for (int64_t j = 0; j < 2 * P; ++j)
      slot_seg[b * 2 * P + j] = j / 2;  // slots past a row's patches: unseen
  }
  // The shapes: decoder (bytes attend to slots; GQA, Dh 64) and encoder (slots attend to bytes; Dh 96 in the
  // 128 kernels; padded strides), each with sorted ids (promised or not), with the key ids' promise broken (a
  // shuffled row: the device check finds it and every key is scanned) and with shuffled query ids.
  struct Shape {
    const char* name;
    int64_t Tq, Tk, Hq, Hkv, Dh;
    const std::vector<int64_t>*q_seg, *k_seg;
  };
  const Shape shapes[] = {{"decoder", T, 2 * P, 4, 2, 64, &byte_seg, &slot_seg},
                          {"encoder", 2 * P, T, 2, 2, 96, &slot_seg, &byte_seg}};
  for (const Shape& sh : shapes) {
    for (const int variant :
         {0, 1, 2, 3}) {  // sorted + promise, sorted, keys shuffled + promise, queries shuffled
      SCOPED_TRACE(std::string(sh.name) + " variant " + std::to_string(variant));
      ops::AttnDims d{};
      d.B = B, d.Tq = sh.Tq, d.Tk = sh.Tk, d.Hq = sh.Hq, d.Hkv = sh.Hkv, d.Dh = sh.Dh;
      d.q_stride = d.o_stride = sh.Hq * sh.Dh + 8;
      d.k_stride = d.v_stride = sh.Hkv * sh.Dh + 4;
      d.scale = 1.0 / std::sqrt(static_cast<double>(sh.Dh));
      std::vector<int64_t> qseg = *sh.q_seg, kseg = *sh.k_seg;
      auto shuffle_row = [&](std::vector<int64_t>& ids, int64_t n) {
        for (int64_t i = n - 1; i > 0; --i)
          std::swap(
              ids[static_cast<size_t>(n + i)],
              ids[static_cast<size_t>(n + static_cast<int64_t>(rng.uniform() * static_cast<double>(i + 1)))]);
      };
      if (variant == 2) shuffle_row(kseg, d.Tk);  // row 1
      if (variant == 3) shuffle_row(qseg, d.Tq);
      const auto q = random_floats(B * d.Tq * d.q_stride, rng), k = random_floats(B * d.Tk * d.k_stride, rng),
                 v = random_floats(B * d.Tk * d.v_stride, rng),
                 dout = random_floats(B * d.Tq * d.o_stride, rng);
      const bool promise = variant != 1;
      const om::SegmentEqual mh{qseg.data(), kseg.data(), variant != 2 && promise};
      std::vector<float> o(q.size()), lse(static_cast<size_t>(B * d.Hq * d.Tq)), dq(q.size()), dk(k.size()),
          dv(v.size());
      ops::attention_forward(cpu{}, d, mh, q.data(), k.data(), v.data(), o.data(), lse.data());
      ops::attention_backward(cpu{}, d, mh, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(),
                              dq.data(), dk.data(), dv.data());
      auto qd = upload(q), kd = upload(k), vd = upload(v), doutd = upload(dout);
      auto qseg_d = upload(qseg);
      auto kseg_d = upload(kseg);
      const om::PatchSegments md(om::SegmentEqual{qseg_d.data(), kseg_d.data(), promise});
      Tensor<float, cuda> od({static_cast<int64_t>(o.size())}), lsed({static_cast<int64_t>(lse.size())}),
          dqd({static_cast<int64_t>(q.size())}), dkd({static_cast<int64_t>(k.size())}),
          dvd({static_cast<int64_t>(v.size())});
      ops::attention_forward(cuda{}, d, md, qd.data(), kd.data(), vd.data(), od.data(), lsed.data());
      ops::attention_backward(cuda{}, d, md, qd.data(), kd.data(), vd.data(), od.data(), lsed.data(),
                              doutd.data(), dqd.data(), dkd.data(), dvd.data());
      // Only the heads' columns: the padding between rows is not the op's to write.
      auto cols = [](const std::vector<float>& x, int64_t rows, int64_t stride, int64_t width) {
        std::vector<float> out;
        for (int64_t r = 0; r < rows; ++r)
          out.insert(out.end(), x.begin() + r * stride, x.begin() + r * stride + width);
        return out;
      };
      auto check = [&](const char* what, Tensor<float, cuda>& got, const std::vector<float>& want,
                       int64_t rows, int64_t stride, int64_t width) {
        const auto g = cols(download(got.data(), got.numel()), rows, stride, width);
        const auto w = cols(want, rows, stride, width);
        EXPECT_LE(rel_err(g.data(), w.data(), static_cast<int64_t>(w.size())), kTol) << what;
      };
      check("o", od, o, B * d.Tq, d.o_stride, d.Hq * d.Dh);
      check("dq", dqd, dq, B * d.Tq, d.q_stride, d.Hq * d.Dh);
      check("dk", dkd, dk, B * d.Tk, d.k_stride, d.Hkv * d.Dh);
      check("dv", dvd, dv, B * d.Tk, d.v_stride, d.Hkv * d.Dh);
      const int64_t empty = expect_lse_matches(download(lsed.data(), lsed.numel()), lse);
      if (std::string(sh.name) == "encoder") {
        EXPECT_GT(empty, 0) << "the empty patch's slots see no byte";
      }

      // The bf16 overloads (the all-bf16 cross-attention): the same kernels on bf16 operands, against the
      // CPU's fp32 op on the same bf16-rounded values. Scores, softmax and sums stay fp32 and only each
      // output is rounded (2^-9 relative), so o and lse are that close; the gradients also read the rounded o
      // and dO (D = dO . O), a few roundings more: bounds 4e-3 (o), 1e-2 (gradients), 1e-3 (lse). The walks
      // are the fp32 kernels' (one template), so two variants suffice: searched ranges, and shuffled queries.
      if (variant == 1 || variant == 2) continue;
      auto round16 = [](const std::vector<float>& x) {
        std::vector<float> r(x.size());
        for (size_t i = 0; i < x.size(); ++i) r[i] = static_cast<float>(bf16(x[i]));
        return r;
      };
      auto to16 = [](const std::vector<float>& x) {
        std::vector<bf16> r(x.size());
        for (size_t i = 0; i < x.size(); ++i) r[i] = bf16(x[i]);
        return r;
      };
      auto from16 = [](Tensor<bf16, cuda>& t) {
        const auto h = download(t.data(), t.numel());
        std::vector<float> r(h.size());
        for (size_t i = 0; i < h.size(); ++i) r[i] = static_cast<float>(h[i]);
        return r;
      };
      const auto q_r = round16(q), k_r = round16(k), v_r = round16(v), dout_r = round16(dout);
      std::vector<float> o_r(q.size()), lse_r(lse.size()), dq_r(q.size()), dk_r(k.size()), dv_r(v.size());
      ops::attention_forward(cpu{}, d, mh, q_r.data(), k_r.data(), v_r.data(), o_r.data(), lse_r.data());
      ops::attention_backward(cpu{}, d, mh, q_r.data(), k_r.data(), v_r.data(), o_r.data(), lse_r.data(),
                              dout_r.data(), dq_r.data(), dk_r.data(), dv_r.data());
      auto q16 = upload(to16(q)), k16 = upload(to16(k)), v16 = upload(to16(v)), dout16 = upload(to16(dout));
      Tensor<bf16, cuda> o16({static_cast<int64_t>(o.size())}), dq16({static_cast<int64_t>(q.size())}),
          dk16({static_cast<int64_t>(k.size())}), dv16({static_cast<int64_t>(v.size())});
      Tensor<float, cuda> lse16({static_cast<int64_t>(lse.size())});
      ops::attention_forward(cuda{}, d, md, q16.data(), k16.data(), v16.data(), o16.data(), lse16.data());
      ops::attention_backward(cuda{}, d, md, q16.data(), k16.data(), v16.data(), o16.data(), lse16.data(),
                              dout16.data(), dq16.data(), dk16.data(), dv16.data());
      auto check16 = [&](const char* what, Tensor<bf16, cuda>& got, const std::vector<float>& want,
                         int64_t rows, int64_t stride, int64_t width, double tol) {
        const auto g = cols(from16(got), rows, stride, width);
        const auto w = cols(want, rows, stride, width);
        const double e = rel_err(g.data(), w.data(), static_cast<int64_t>(w.size()));
        EXPECT_LE(e, tol) << what << " (bf16)";
        EXPECT_GT(e, 0.0) << what << " (bf16): identical to fp32, not rounded";
      };
      check16("o", o16, o_r, B * d.Tq, d.o_stride, d.Hq * d.Dh, 4e-3);
      check16("dq", dq16, dq_r, B * d.Tq, d.q_stride, d.Hq * d.Dh, 1e-2);
      check16("dk", dk16, dk_r, B * d.Tk, d.k_stride, d.Hkv * d.Dh, 1e-2);
      check16("dv", dv16, dv_r, B * d.Tk, d.v_stride, d.Hkv * d.Dh, 1e-2);
      const auto l16 = download(lse16.data(), lse16.numel());
      for (size_t i = 0; i < lse_r.size(); ++i) {
        if (std::isinf(lse_r[i])) {
          ASSERT_TRUE(std::isinf(l16[i]) && l16[i] < 0) << "lse (bf16) " << i;
        } else {
          ASSERT_NEAR(l16[i], lse_r[i], 1e-3) << "lse (bf16) " << i;
        }
      }
    }
  }
}

// ---- forward, loss, gradients ---------------------------------------------------------------------------

TEST(CudaBlt, FixtureLogitsMatchTheCpuAndTransformers) {
  TESSERA_NEED_GPU();
  Pair m(config(false));
  for (const int i : {0, 3}) {  // case 3 ends with an empty patch
    SCOPED_TRACE("case " + std::to_string(i));
    const std::vector<int64_t> ids = case_vec(i, "ids"), pl = case_vec(i, "patch_lengths");
    const int64_t T = static_cast<int64_t>(ids.size()), P = static_cast<int64_t>(pl.size());
    const Tensor<float> hf = cases().read<float>("case" + std::to_string(i) + ".logits");
    const Tensor<int64_t, cuda> ids_d = upload(ids);
    // Given patch lengths (host memory), then the entropy model's patches.
    const Tensor<float> lh = m.h.forward(ids.data(), 1, T, pl.data(), P).clone();
    const Tensor<float, cuda>& ld = m.d.forward(ids_d.data(), 1, T, pl.data(), P);
    EXPECT_LE(rel_err(ld, lh), kTol) << "logits, fixture patches";
    const std::vector<float> l = download(ld.data(), ld.numel());
    EXPECT_LE(rel_err(l.data(), hf.data(), hf.numel()), kTol) << "logits vs transformers";
    const Tensor<float, cuda>& le = m.d.forward(ids_d.data(), 1, T);
    // The CPU layout holds the fixture's patches (sum T + 1): the device's entropy patches are the same.
    EXPECT_EQ(m.d.model.layout().lengths, m.h.model.layout().lengths) << "entropy patches on the device";
    EXPECT_LE(rel_err(le, lh), kTol) << "logits, entropy patches";
    std::cout << "[cuda-blt] case " << i << ": logits rel err vs transformers "
              << rel_err(l.data(), hf.data(), hf.numel()) << "\n";
  }
}

TEST(CudaBlt, TrainStepMatchesTheCpu) {
  TESSERA_NEED_GPU();
  // Two rows (cases 0 and 1 cut to a common length) with the entropy model's per-row patches.
  Pair m(config(false));
  std::vector<int64_t> ids = case_vec(0, "ids");
  const int64_t T = static_cast<int64_t>(ids.size());
  const std::vector<int64_t> second = case_vec(1, "ids");
  ids.insert(ids.end(), second.begin(), second.begin() + T);
  check_train_step(m, ids, 2, T, "HF layout, 2 rows");
}

TEST(CudaBlt, OriginalLayoutTrainStepMatchesTheCpu) {
  TESSERA_NEED_GPU();
  // 8-byte local windows, EOS document cuts in the local and global models and in the entropy model's context
  // (16-token window), patches summing to T + 1.
  Pair m(config(true));
  std::vector<int64_t> ids = case_vec(2, "ids");
  ids.resize(60);
  ids[17] = ids[18] = blt::EOS;  // an EOS pair: a one-byte document between them
  ids[40] = blt::EOS;
  check_train_step(m, ids, 1, 60, "original layout");
  EXPECT_GT(m.d.model.layout().byte_doc.back(), 1) << "the ids hold document cuts";
}

// ---- generation ------------------------------------------------------------------------------------------

TEST(CudaBlt, UncachedGreedyMatchesTheFixture) {
  TESSERA_NEED_GPU();
  // The reference path (a full forward with fresh patches per byte) over the first 6 of the fixture's 24
  // greedy bytes: every step is two full forwards, slow under tools/cuda-emu.
  Pair m(config(false));
  const std::vector<int64_t> ids = case_vec(0, "ids"), want = case_vec(0, "greedy");
  EXPECT_EQ(m.d.generate_greedy(ids, 6), std::vector<int64_t>(want.begin(), want.begin() + 6));
}

class CudaBltGenerate : public ::testing::TestWithParam<int> {};

TEST_P(CudaBltGenerate, CachedGreedyMatchesTheCpu) {
  TESSERA_NEED_GPU();
  // 0: the fixture (HF layout); 1: HF layout with max_patch_length 2 (the last byte's "view" memory and a
  // second decoder pass); 2: the original layout with 8-byte windows and EOS bytes in a prompt (cache
  // clears); 3: the fixture with prompts of 150 and 137 bytes, so that decoding attends over more than 128
  // cached keys in the local and entropy models (the split-KV decode kernels of cuda/attention_kernels.cuh).
  const int variant = GetParam();
  BltConfig c = config(variant == 2);
  if (variant == 1) c.max_patch_length = 2;
  Pair m(c);
  std::vector<int64_t> p0 = case_vec(1, "ids"), p1 = case_vec(3, "ids");
  if (variant == 3) {
    const std::vector<int64_t> a = p0, b = p1;
    for (size_t i = 0; p0.size() < 150; ++i) p0.push_back(b[i % b.size()]);
    for (size_t i = 0; p1.size() < 137; ++i) p1.push_back(a[i % a.size()]);
  }
  p0.resize(variant == 3 ? 150 : 20);
  p1.resize(variant == 2 ? 30 : variant == 3 ? 137 : 13);
  if (variant == 2) p1[9] = p1[20] = blt::EOS;
  blt::GenerateOptions o;  // greedy
  o.max_new_tokens = 12;
  o.stop_at_eos = false;
  blt::BltGenerator<float> gh(m.h, o);
  blt::BltGenerator<float, cuda> gd(m.d, o);
  gh.prefill({p0, p1});
  gd.prefill({p0, p1});
  double worst = 0;
  while (!gh.done()) {
    for (int64_t b = 0; b < 2; ++b) {
      const auto lh = gh.logits(b), ld = gd.logits(b);
      ASSERT_EQ(lh.size(), ld.size());
      const double e = rel_err(ld.data(), lh.data(), static_cast<int64_t>(lh.size()));
      worst = std::max(worst, e);
      EXPECT_LE(e, kTol) << "logits of row " << b << " after " << gh.generated(b).size() << " bytes";
      EXPECT_EQ(gd.patch_lengths(b), gh.patch_lengths(b)) << "row " << b;
    }
    const std::vector<int64_t> nh = gh.step(), nd = gd.step();
    ASSERT_EQ(nd, nh) << "greedy bytes after " << gh.generated(0).size() << " steps";
    ASSERT_EQ(gd.done(), gh.done());
  }
  for (int64_t b = 0; b < 2; ++b) {
    EXPECT_EQ(gd.generated(b), gh.generated(b));
    EXPECT_EQ(static_cast<int64_t>(gd.generated(b).size()), o.max_new_tokens);
  }
  std::cout << "[cuda-blt] generation variant " << variant << ": max logits rel err " << worst << "\n";
}

std::string generate_variant_name(int v) {
  return v == 0 ? "Fixture" : v == 1 ? "MaxPatchLength" : v == 2 ? "OriginalWithEos" : "LongPrompts";
}
INSTANTIATE_TEST_SUITE_P(Layouts, CudaBltGenerate, ::testing::Values(0, 1, 2, 3),
                         [](const auto& info) { return generate_variant_name(info.param); });
