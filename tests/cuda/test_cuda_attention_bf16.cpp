// The bf16 tensor-core flash attention (cuda/attention_bf16.cu, ops/attention_bf16.hpp) against the fp32 CPU
// op run on the SAME bf16-rounded inputs: forward o and lse, backward dq, dk, dv; head dims 64 and 128 (and
// odd dims through the zero-padded kernels), Causal / SlidingWindow / ChunkLocal, GQA, Tq != Tk with
// q_offset, lengths off the 64-row tiles, padded strides (16-byte and scalar access paths), fully masked
// rows. Outputs start as NaN on the device (an element the GPU never writes fails); the padding columns of
// strided rows start as a sentinel and must stay untouched.
//
// Tolerances, as max |gpu - ref| / max |ref| over a tensor (ref: the fp32 CPU op; the inputs are exactly
// representable, so only the kernel's own roundings and fp32 summation order differ; u = 2^-9, the bf16 unit
// roundoff, 2^-8 = 2u its spacing relative to a value):
//   o    The kernel rounds P = exp(s - m) to bf16 (relative error <= u each) and normalises by the sum of the
//        same rounded P, so o_i is an exact convex combination of V rows with weights perturbed by <= 2u
//        relatively: |err| <= 2u max|v_j - o_i| before the final rounding of o (<= u |o_i|). The errors of
//        the weights are independent, so in practice they average to ~u sqrt(sum_j p_j^2) max|v| (tens of
//        times smaller); we allow 1e-2 ~ 5u relative to max|o| (the loose bound 4u max|v| / max|o| is what
//        the margin covers when a row concentrates on a few keys). fp32 accumulation adds ~1e-6.
//   lse  lse = m + log(sum of rounded P): |err| <= log(1 + u) ~ u ~ 2e-3 absolute; allowed 4e-3.
//   dv   sum_i P_ij dO_i with P rounded (u) and recomputed from the kernel's lse (<= u): <= 2u per term,
//        plus u for the output rounding; independent signs of dO keep the total near 3u relative to max|dv|.
//   dq, dk  sum over keys / queries of dS = P (dP - D) scale rounded to bf16 (u), P carrying <= 2u, and D
//   from
//        the bf16 o (<= u |dO| |o| absolute, small against |dP| since o averages v); the operands of the
//        products are exact. Allowed 2e-2 ~ 10u for all three gradients (the sums mix signs, so errors do not
//        grow with the number of terms the way a worst-case bound would).
// Measured (H100 and the CPU emulation agree): o <= 2.7e-3, lse <= 1.4e-3, dq/dk/dv <= 5.6e-3, i.e. margins
// of 3-4x; each case prints its errors. A masking, key-range, tiling or indexing mistake gives O(1) relative
// errors, far above these.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "tessera/core/allocator.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/attention_bf16.hpp"

using namespace tessera;
namespace mask = tessera::ops::mask;

namespace {

constexpr double kTolO = 1e-2, kTolLse = 4e-3, kTolGrad = 2e-2;
constexpr uint16_t kNaNBits = 0x7fc0;   // bf16 quiet NaN: output entries the kernel must write
constexpr uint16_t kSentinel = 0x40e0;  // bf16 7.0: padding columns the kernel must not touch
constexpr float kInf = std::numeric_limits<float>::infinity();

class CudaAttentionBf16 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_mem::device_count() == 0)
      GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount reports none (no GPU or no driver)";
  }
};

/// A device copy of a host vector (owning).
template <class T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& h) : n_(h.size()) {
    p_ = static_cast<T*>(Allocator<cuda>::allocate(std::max<size_t>(n_, 1) * sizeof(T)));
    cuda_mem::to_device(p_, h.data(), n_ * sizeof(T));
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { Allocator<cuda>::deallocate(p_); }
  T* get() { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    cuda_mem::to_host(h.data(), p_, n_ * sizeof(T));
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

/// A strided token-row tensor: `rows` rows of `stride` elements, the first `cols` of each are the heads.
struct Strided {
  int64_t rows, stride, cols;
  size_t size() const { return static_cast<size_t>(rows * stride); }
};

/// bf16 bits of normal(0, sigma) values in the head columns and kSentinel in the padding.
std::vector<bf16> random_bf16(const Strided& s, Rng& rng, double sigma) {
  std::vector<bf16> v(s.size());
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.stride; ++c) {
      bf16& x = v[r * s.stride + c];
      if (c < s.cols)
        x = bf16(static_cast<float>(sigma * rng.normal()));
      else
        x.bits = kSentinel;
    }
  return v;
}

/// An output buffer: NaN in the head columns, kSentinel in the padding.
std::vector<bf16> unwritten_bf16(const Strided& s) {
  std::vector<bf16> v(s.size());
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.stride; ++c) v[r * s.stride + c].bits = c < s.cols ? kNaNBits : kSentinel;
  return v;
}

std::vector<float> to_float(const std::vector<bf16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = static_cast<float>(v[i]);
  return f;
}

/// max |gpu - ref| / max |ref| over the head columns (NaN anywhere fails); the padding must be kSentinel.
double rel_err(const std::string& what, const Strided& s, const std::vector<bf16>& gpu,
               const std::vector<float>& ref) {
  double max_diff = 0, max_ref = 0;
  int64_t nan = 0, pad_bad = 0;
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.stride; ++c) {
      const size_t i = static_cast<size_t>(r * s.stride + c);
      if (c >= s.cols) {
        pad_bad += gpu[i].bits != kSentinel;
        continue;
      }
      const double g = static_cast<float>(gpu[i]), e = ref[i];
      if (std::isnan(g)) ++nan;
      max_diff = std::max(max_diff, std::abs(g - e));
      max_ref = std::max(max_ref, std::abs(e));
    }
  EXPECT_EQ(nan, 0) << what << ": " << nan << " entries never written (NaN)";
  EXPECT_EQ(pad_bad, 0) << what << ": " << pad_bad << " padding entries overwritten";
  EXPECT_GT(max_ref, 0) << what << ": reference is all zero, the comparison proves nothing";
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

ops::AttnDims dims(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t Dh, int64_t Dv,
                   int64_t q_offset, int64_t pad) {
  ops::AttnDims d;
  d.B = B;
  d.Tq = Tq;
  d.Tk = Tk;
  d.Hq = Hq;
  d.Hkv = Hkv;
  d.Dh = Dh;
  d.Dv = Dv;
  d.q_offset = q_offset;
  d.scale = 1.3 / std::sqrt(static_cast<double>(Dh));  // scores ~ N(0, 1.7): peaked enough to rescale often
  d.q_stride = Hq * Dh + pad;
  d.k_stride = Hkv * Dh + pad;
  d.v_stride = Hkv * d.dv() + pad;
  d.o_stride = Hq * d.dv() + pad;
  return d;
}

struct Result {
  double o, lse, dq, dk, dv;
  int64_t masked_rows;
};

/// Forward and backward on the CPU (fp32, rounded inputs) and the GPU (bf16); asserts the tolerances.
/// `repeat`: run the GPU backward a second time and require bitwise-identical gradients.
template <class Mask>
Result check(const std::string& name, const ops::AttnDims& d, const Mask& m, Rng& rng, bool repeat = false) {
  SCOPED_TRACE(name);
  const int64_t Dv = d.dv();
  const Strided sq{d.B * d.Tq, d.q_stride, d.Hq * d.Dh}, sk{d.B * d.Tk, d.k_stride, d.Hkv * d.Dh},
      sv{d.B * d.Tk, d.v_stride, d.Hkv * Dv}, so{d.B * d.Tq, d.o_stride, d.Hq * Dv};
  const std::vector<bf16> q = random_bf16(sq, rng, 1.0), k = random_bf16(sk, rng, 1.0),
                          v = random_bf16(sv, rng, 1.0), dout = random_bf16(so, rng, 1.0);
  const std::vector<float> qf = to_float(q), kf = to_float(k), vf = to_float(v), doutf = to_float(dout);
  const size_t nlse = static_cast<size_t>(d.B * d.Hq * d.Tq);

  // Reference: the fp32 CPU op on the same (bf16-exact) values.
  std::vector<float> o_ref(so.size()), lse_ref(nlse), dq_ref(sq.size()), dk_ref(sk.size()), dv_ref(sv.size());
  ops::attention_forward(cpu{}, d, m, qf.data(), kf.data(), vf.data(), o_ref.data(), lse_ref.data());
  ops::attention_backward(cpu{}, d, m, qf.data(), kf.data(), vf.data(), o_ref.data(), lse_ref.data(),
                          doutf.data(), dq_ref.data(), dk_ref.data(), dv_ref.data());

  Dev<bf16> d_q(q), d_k(k), d_v(v), d_dout(dout), d_o(unwritten_bf16(so));
  Dev<float> d_lse(std::vector<float>(nlse, std::numeric_limits<float>::quiet_NaN()));
  ops::attention_forward(cuda{}, d, m, d_q.get(), d_k.get(), d_v.get(), d_o.get(), d_lse.get());
  Dev<bf16> d_dq(unwritten_bf16(sq)), d_dk(unwritten_bf16(sk)), d_dv(unwritten_bf16(sv));
  ops::attention_backward(cuda{}, d, m, d_q.get(), d_k.get(), d_v.get(), d_o.get(), d_lse.get(), d_dout.get(),
                          d_dq.get(), d_dk.get(), d_dv.get());

  Result res{};
  const std::vector<bf16> o = d_o.host();
  res.o = rel_err("o", so, o, o_ref);
  const std::vector<float> lse = d_lse.host();
  for (size_t i = 0; i < nlse; ++i) {
    if (lse_ref[i] == -kInf) {  // fully masked row: -inf and a zero output row (checked below)
      ++res.masked_rows;
      EXPECT_EQ(lse[i], -kInf) << "lse[" << i << "] of a fully masked row";
      continue;
    }
    const double e = std::isnan(lse[i]) ? double(kInf) : std::abs(double(lse[i]) - double(lse_ref[i]));
    res.lse = std::max(res.lse, e);
  }
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; ++h)
      for (int64_t i = 0; i < d.Tq; ++i) {
        if (lse_ref[(b * d.Hq + h) * d.Tq + i] != -kInf) continue;
        for (int64_t c = 0; c < Dv; ++c) {
          const size_t e = static_cast<size_t>((b * d.Tq + i) * d.o_stride + h * Dv + c);
          EXPECT_EQ(o[e].bits & 0x7fffu, 0u) << "o of fully masked row " << i << " head " << h << " is not 0";
        }
      }
  res.dq = rel_err("dq", sq, d_dq.host(), dq_ref);
  res.dk = rel_err("dk", sk, d_dk.host(), dk_ref);
  res.dv = rel_err("dv", sv, d_dv.host(), dv_ref);
  EXPECT_LE(res.o, kTolO) << "o";
  EXPECT_LE(res.lse, kTolLse) << "lse (absolute)";
  EXPECT_LE(res.dq, kTolGrad) << "dq";
  EXPECT_LE(res.dk, kTolGrad) << "dk";
  EXPECT_LE(res.dv, kTolGrad) << "dv";
  std::printf("  %-40s rel err o %.2e  lse(abs) %.2e  dq %.2e  dk %.2e  dv %.2e  masked rows %lld\n",
              name.c_str(), res.o, res.lse, res.dq, res.dk, res.dv, static_cast<long long>(res.masked_rows));

  if (repeat) {  // deterministic: no atomics, every element written by one warp
    const std::vector<bf16> dq1 = d_dq.host(), dk1 = d_dk.host(), dv1 = d_dv.host();
    ops::attention_backward(cuda{}, d, m, d_q.get(), d_k.get(), d_v.get(), d_o.get(), d_lse.get(),
                            d_dout.get(), d_dq.get(), d_dk.get(), d_dv.get());
    auto same = [](const std::vector<bf16>& a, const std::vector<bf16>& b) {
      return std::equal(a.begin(), a.end(), b.begin(), [](bf16 x, bf16 y) { return x.bits == y.bits; });
    };
    EXPECT_TRUE(same(dq1, d_dq.host())) << "dq differs between two identical backward calls";
    EXPECT_TRUE(same(dk1, d_dk.host())) << "dk differs between two identical backward calls";
    EXPECT_TRUE(same(dv1, d_dv.host())) << "dv differs between two identical backward calls";
  }
  return res;
}

}  // namespace

TEST_F(CudaAttentionBf16, CausalDh64MatchesCpu) {
  Rng rng(61);
  // 80 rows: one full and one partial 64-row tile; padded (16-byte aligned) strides.
  check("causal Dh=64 B=2 T=80 pad 8", dims(2, 80, 80, 2, 2, 64, 0, 0, 8), mask::Causal{}, rng);
  // Decode-style: one query row at the end of the keys.
  check("causal Dh=64 decode Tq=1 Tk=70", dims(1, 1, 70, 2, 1, 64, 0, 69, 0), mask::Causal{}, rng);
}

TEST_F(CudaAttentionBf16, CausalDh128GqaMatchesCpuDeterministically) {
  Rng rng(62);
  check("causal Dh=128 GQA 4/2 T=70", dims(1, 70, 70, 4, 2, 128, 0, 0, 0), mask::Causal{}, rng, true);
}

TEST_F(CudaAttentionBf16, SlidingWindowMatchesCpu) {
  Rng rng(63);
  // The window (24) crosses the 16-key sub-tiles and 64-key tiles; early key tiles are skipped per block.
  check("window 24 Dh=64 T=150", dims(1, 150, 150, 2, 2, 64, 0, 0, 0), mask::SlidingWindow{24}, rng);
  check("window 70 Dh=128 GQA 2/1 T=100", dims(1, 100, 100, 2, 1, 128, 0, 0, 8), mask::SlidingWindow{70},
        rng);
}

TEST_F(CudaAttentionBf16, ChunkLocalMatchesCpu) {
  Rng rng(64);
  // Tq != Tk: 40 query rows at positions 50..89 over 90 keys (chunked prefill); chunks of 32.
  check("chunk 32 Dh=128 Tq=40 Tk=90 q_offset 50", dims(2, 40, 90, 2, 1, 128, 0, 50, 8), mask::ChunkLocal{32},
        rng);
  check("chunk 48 Dh=64 T=130", dims(1, 130, 130, 2, 2, 64, 0, 0, 0), mask::ChunkLocal{48}, rng);
}

TEST_F(CudaAttentionBf16, FullyMaskedRowsAreZeroWithInfiniteLse) {
  Rng rng(65);
  // Positions 48..59 start a chunk beyond the last key (Tk = 40): no visible key.
  const Result a =
      check("chunk 16, rows past the keys", dims(1, 20, 40, 2, 2, 64, 0, 40, 0), mask::ChunkLocal{16}, rng);
  EXPECT_EQ(a.masked_rows, 2 * 12);
  // Window 8 at positions 35..54 over 30 keys: only positions 35 and 36 still see keys 28, 29.
  const Result b = check("window 8, rows past the keys", dims(1, 20, 30, 2, 1, 128, 0, 35, 0),
                         mask::SlidingWindow{8}, rng);
  EXPECT_EQ(b.masked_rows, 2 * 18);
}

TEST_F(CudaAttentionBf16, OddHeadDimsUseThePaddedKernels) {
  Rng rng(66);
  // Dh=40, Dv=24 with strides that are not multiples of 8: the scalar (unaligned) load/store path, kD=64.
  check("causal Dh=40 Dv=24 pad 3 GQA 3/1", dims(1, 50, 50, 3, 1, 40, 24, 0, 3), mask::Causal{}, rng);
  // Dh=Dv=80: the kD=128 kernels with zero-padded columns, 16-byte path.
  check("causal Dh=80 T=33", dims(2, 33, 33, 2, 2, 80, 0, 0, 0), mask::Causal{}, rng);
}

TEST_F(CudaAttentionBf16, RejectsBadArguments) {
  // All checks run on the host before any launch, so dummy (never dereferenced) pointers suffice.
  auto* p = reinterpret_cast<bf16*>(std::uintptr_t{256});
  auto* l = reinterpret_cast<float*>(std::uintptr_t{256});
  const auto big = dims(1, 4, 4, 1, 1, 192, 0, 0, 0);
  EXPECT_THROW(ops::attention_forward(cuda{}, big, mask::Causal{}, p, p, p, p, l), Error);
  const auto d = dims(1, 4, 4, 1, 1, 64, 0, 0, 0);
  EXPECT_THROW(ops::attention_forward(cuda{}, d, mask::SlidingWindow{0}, p, p, p, p, l), Error);
  EXPECT_THROW(ops::attention_forward(cuda{}, d, mask::ChunkLocal{0}, p, p, p, p, l), Error);
  EXPECT_THROW(ops::attention_backward(cuda{}, d, mask::Causal{}, p, p, p, p, nullptr, p, p, p, p), Error);
  auto bad = d;
  bad.q_stride = 32;  // < Hq * Dh
  EXPECT_THROW(ops::attention_forward(cuda{}, bad, mask::Causal{}, p, p, p, p, l), Error);
}
