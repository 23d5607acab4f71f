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
//
// Two forward kernels exist (cuda/attention_bf16.cu): mma.sync (the default, which every check() runs)
// and WMMA; MmaAndWmmaForwardsAgree runs both on the same inputs. MmaPrimitivesMatchHostMatmul tests the
// warp-level primitives of cuda/mma_sm80.cuh (mma m16n8k16, ldmatrix, bf16x2 packing) on their own, with
// integer-valued operands whose products and sums are exact, so any fragment layout error is an exact
// mismatch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../../cuda/cudnn_attention.hpp"        // internal: cuDNN as the second implementation
#include "../../cuda/launch_attention_bf16.hpp"  // internal: kernel choice, mma primitive self-test
#include "support/cuda_testing.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/attention_bf16.hpp"

using namespace tessera;
using cuda_detail::AttnBf16Kernel;
namespace mask = tessera::ops::mask;

using tessera::testing::DeviceCopy;

namespace {

constexpr double kTolO = 1e-2, kTolLse = 4e-3, kTolGrad = 2e-2;
constexpr uint16_t kNaNBits = 0x7fc0;   // bf16 quiet NaN: output entries the kernel must write
constexpr uint16_t kSentinel = 0x40e0;  // bf16 7.0: padding columns the kernel must not touch
constexpr float kInf = std::numeric_limits<float>::infinity();

class CudaAttentionBf16 : public tessera::testing::CudaTest {
 protected:
  // tessera's kernels, whatever TESSERA_ATTN_BF16_BACKEND says: these tests are about them (the cuDNN test
  // chooses cuDNN itself).
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped()) return;
    cuda_detail::set_attention_bf16_backend(cuda_detail::AttnBf16Backend::Tessera);
  }
  void TearDown() override { cuda_detail::set_attention_bf16_backend(cuda_detail::AttnBf16Backend::Auto); }
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

/// Random bf16 q, k, v, dout for `d` (padding columns kSentinel) and the fp32 CPU op's forward and backward
/// on those exact values: the reference every forward-and-backward check compares with.
struct Problem {
  Strided sq, sk, sv, so;
  std::vector<bf16> q, k, v, dout;
  std::vector<float> o_ref, lse_ref, dq_ref, dk_ref, dv_ref;
};

template <class Mask>
Problem make_problem(const ops::AttnDims& d, const Mask& m, Rng& rng) {
  const int64_t Dv = d.dv();
  Problem p;
  p.sq = {d.B * d.Tq, d.q_stride, d.Hq * d.Dh};
  p.sk = {d.B * d.Tk, d.k_stride, d.Hkv * d.Dh};
  p.sv = {d.B * d.Tk, d.v_stride, d.Hkv * Dv};
  p.so = {d.B * d.Tq, d.o_stride, d.Hq * Dv};
  p.q = random_bf16(p.sq, rng, 1.0);
  p.k = random_bf16(p.sk, rng, 1.0);
  p.v = random_bf16(p.sv, rng, 1.0);
  p.dout = random_bf16(p.so, rng, 1.0);
  const std::vector<float> qf = to_float(p.q), kf = to_float(p.k), vf = to_float(p.v),
                           doutf = to_float(p.dout);
  p.o_ref.resize(p.so.size());
  p.lse_ref.resize(static_cast<size_t>(d.B * d.Hq * d.Tq));
  p.dq_ref.resize(p.sq.size());
  p.dk_ref.resize(p.sk.size());
  p.dv_ref.resize(p.sv.size());
  ops::attention_forward(cpu{}, d, m, qf.data(), kf.data(), vf.data(), p.o_ref.data(), p.lse_ref.data());
  ops::attention_backward(cpu{}, d, m, qf.data(), kf.data(), vf.data(), p.o_ref.data(), p.lse_ref.data(),
                          doutf.data(), p.dq_ref.data(), p.dk_ref.data(), p.dv_ref.data());
  return p;
}

/// Forward and backward on the CPU (fp32, rounded inputs) and the GPU (bf16); asserts the tolerances.
/// `repeat`: run the GPU backward a second time and require bitwise-identical gradients.
template <class Mask>
Result check(const std::string& name, const ops::AttnDims& d, const Mask& m, Rng& rng, bool repeat = false) {
  SCOPED_TRACE(name);
  const int64_t Dv = d.dv();
  // Reference: the fp32 CPU op on the same (bf16-exact) values.
  const Problem p = make_problem(d, m, rng);
  const auto& [sq, sk, sv, so, q, k, v, dout, o_ref, lse_ref, dq_ref, dk_ref, dv_ref] = p;
  const size_t nlse = lse_ref.size();

  DeviceCopy<bf16> d_q(q), d_k(k), d_v(v), d_dout(dout), d_o(unwritten_bf16(so));
  DeviceCopy<float> d_lse(std::vector<float>(nlse, std::numeric_limits<float>::quiet_NaN()));
  ops::attention_forward(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data());
  DeviceCopy<bf16> d_dq(unwritten_bf16(sq)), d_dk(unwritten_bf16(sk)), d_dv(unwritten_bf16(sv));
  ops::attention_backward(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data(),
                          d_dout.data(), d_dq.data(), d_dk.data(), d_dv.data());

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
    ops::attention_backward(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data(),
                            d_dout.data(), d_dq.data(), d_dk.data(), d_dv.data());
    auto same = [](const std::vector<bf16>& a, const std::vector<bf16>& b) {
      return std::equal(a.begin(), a.end(), b.begin(), [](bf16 x, bf16 y) { return x.bits == y.bits; });
    };
    EXPECT_TRUE(same(dq1, d_dq.host())) << "dq differs between two identical backward calls";
    EXPECT_TRUE(same(dk1, d_dk.host())) << "dk differs between two identical backward calls";
    EXPECT_TRUE(same(dv1, d_dv.host())) << "dv differs between two identical backward calls";
  }
  return res;
}

/// One of the process-wide attention choices (cuda/launch_attention_bf16.hpp, cuda/cudnn_attention.hpp) for
/// a scope, then back to Auto (the environment's, else the default).
template <class Choice, void (*set)(Choice)>
class Scoped {
 public:
  explicit Scoped(Choice c) { set(c); }
  Scoped(const Scoped&) = delete;
  Scoped& operator=(const Scoped&) = delete;
  ~Scoped() { set(Choice::Auto); }
};
/// The kernel family (forward and backward), the mma backward's dQ mode, the implementation (tessera's
/// kernels or cuDNN's).
using KernelChoice = Scoped<AttnBf16Kernel, cuda_detail::set_attention_bf16_kernel>;
using DqChoice = Scoped<cuda_detail::AttnBf16Dq, cuda_detail::set_attention_bf16_dq>;
using BackendChoice = Scoped<cuda_detail::AttnBf16Backend, cuda_detail::set_attention_bf16_backend>;

struct Forward {
  std::vector<bf16> o;
  std::vector<float> lse;
};

/// The GPU forward with kernel `kern` on device inputs (o starts as NaN / sentinel, lse as NaN).
template <class Mask>
Forward gpu_forward(AttnBf16Kernel kern, const ops::AttnDims& d, const Mask& m, DeviceCopy<bf16>& q,
                    DeviceCopy<bf16>& k, DeviceCopy<bf16>& v) {
  const KernelChoice choice(kern);
  EXPECT_EQ(cuda_detail::attention_bf16_kernel(), kern);
  const Strided so{d.B * d.Tq, d.o_stride, d.Hq * d.dv()};
  DeviceCopy<bf16> o(unwritten_bf16(so));
  DeviceCopy<float> lse(
      std::vector<float>(static_cast<size_t>(d.B * d.Hq * d.Tq), std::numeric_limits<float>::quiet_NaN()));
  ops::attention_forward(cuda{}, d, m, q.data(), k.data(), v.data(), o.data(), lse.data());
  return {o.host(), lse.host()};
}

/// Both forward kernels on the same inputs: each within the tolerances of the fp32 CPU op, and within them
/// of each other (o relative to max |o|, lse absolute; -inf rows identical).
template <class Mask>
void compare_kernels(const std::string& name, const ops::AttnDims& d, const Mask& m, Rng& rng) {
  SCOPED_TRACE(name);
  const int64_t Dv = d.dv();
  const Strided sq{d.B * d.Tq, d.q_stride, d.Hq * d.Dh}, sk{d.B * d.Tk, d.k_stride, d.Hkv * d.Dh},
      sv{d.B * d.Tk, d.v_stride, d.Hkv * Dv}, so{d.B * d.Tq, d.o_stride, d.Hq * Dv};
  const std::vector<bf16> q = random_bf16(sq, rng, 1.0), k = random_bf16(sk, rng, 1.0),
                          v = random_bf16(sv, rng, 1.0);
  const std::vector<float> qf = to_float(q), kf = to_float(k), vf = to_float(v);
  std::vector<float> o_ref(so.size()), lse_ref(static_cast<size_t>(d.B * d.Hq * d.Tq));
  ops::attention_forward(cpu{}, d, m, qf.data(), kf.data(), vf.data(), o_ref.data(), lse_ref.data());

  DeviceCopy<bf16> d_q(q), d_k(k), d_v(v);
  const Forward fm = gpu_forward(AttnBf16Kernel::Mma, d, m, d_q, d_k, d_v);
  const Forward fw = gpu_forward(AttnBf16Kernel::Wmma, d, m, d_q, d_k, d_v);
  const double em = rel_err("o mma", so, fm.o, o_ref), ew = rel_err("o wmma", so, fw.o, o_ref);
  const double emw = rel_err("o mma vs wmma", so, fm.o, to_float(fw.o));
  double lm = 0, lw = 0, lmw = 0;
  for (size_t i = 0; i < lse_ref.size(); ++i) {
    if (lse_ref[i] == -kInf) {
      EXPECT_EQ(fm.lse[i], -kInf) << "mma lse[" << i << "] of a fully masked row";
      EXPECT_EQ(fw.lse[i], -kInf) << "wmma lse[" << i << "] of a fully masked row";
      continue;
    }
    auto err = [](float a, float b) {
      return std::isnan(a) || std::isnan(b) ? double(kInf) : std::abs(double(a) - double(b));
    };
    lm = std::max(lm, err(fm.lse[i], lse_ref[i]));
    lw = std::max(lw, err(fw.lse[i], lse_ref[i]));
    lmw = std::max(lmw, err(fm.lse[i], fw.lse[i]));
  }
  EXPECT_LE(em, kTolO) << "o mma vs cpu";
  EXPECT_LE(ew, kTolO) << "o wmma vs cpu";
  EXPECT_LE(emw, kTolO) << "o mma vs wmma";
  EXPECT_LE(lm, kTolLse) << "lse mma vs cpu";
  EXPECT_LE(lw, kTolLse) << "lse wmma vs cpu";
  EXPECT_LE(lmw, kTolLse) << "lse mma vs wmma";
  std::printf("  %-40s o: mma %.2e wmma %.2e mma-wmma %.2e  lse: mma %.2e wmma %.2e mma-wmma %.2e\n",
              name.c_str(), em, ew, emw, lm, lw, lmw);
}

}  // namespace

TEST_F(CudaAttentionBf16, MmaPrimitivesMatchHostMatmul) {
  // Integer operands (|a|, |b| <= 8, |c| <= 64): every product and partial sum is an integer below 2^24, so
  // the device results are exact whatever the summation order, and the references are computed exactly.
  Rng rng(70);
  auto small_int = [&](int bound) {
    return static_cast<float>(std::lround(rng.uniform() * 2 * bound - bound));
  };
  std::vector<bf16> a(256), bt(256), b(256);
  std::vector<float> c(256), A(256), B(256);
  for (int i = 0; i < 256; ++i) {
    A[i] = small_int(8);
    B[i] = small_int(8);
    c[i] = small_int(64);
    a[i] = bf16(A[i]);
    b[i] = bf16(B[i]);                        // b[k][n] = B[k][n]
    bt[(i % 16) * 16 + i / 16] = bf16(B[i]);  // bt[n][k] = B[k][n]
  }
  // Values for the bf16x2 packing: round-to-nearest-even ties, signs, overflow to infinity, infinities, NaN.
  std::vector<float> x = {1.f,          1.00390625f,   1.01171875f,
                          -1.00390625f, 257.f,         259.f,
                          3.14159265f,  -2.71828183f,  65535.f,
                          1e30f,        -1e-30f,       0.f,
                          -0.f,         3.4028235e38f, -3.4028235e38f,
                          kInf,         -kInf,         std::numeric_limits<float>::quiet_NaN()};
  while (x.size() < 64) x.push_back(static_cast<float>(rng.normal() * 100));

  DeviceCopy<bf16> d_a(a), d_bt(bt), d_b(b);
  DeviceCopy<float> d_c(c), d_x(x), d_nk(std::vector<float>(256, 0.f)), d_kn(std::vector<float>(256, 0.f)),
      d_chain(std::vector<float>(256, 0.f));
  DeviceCopy<uint32_t> d_packed(std::vector<uint32_t>(32, 0u));
  cuda_detail::mma_selftest(reinterpret_cast<const uint16_t*>(d_a.data()),
                            reinterpret_cast<const uint16_t*>(d_bt.data()),
                            reinterpret_cast<const uint16_t*>(d_b.data()), d_c.data(), d_x.data(),
                            d_nk.data(), d_kn.data(), d_chain.data(), d_packed.data());
  const std::vector<float> nk = d_nk.host(), kn = d_kn.host(), chain = d_chain.host();
  const std::vector<uint32_t> packed = d_packed.host();

  int bad_nk = 0, bad_kn = 0, bad_chain = 0, nonzero = 0;
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      double ref = c[r * 16 + n], ref_chain = 0;
      for (int kk = 0; kk < 16; ++kk) ref += double(A[r * 16 + kk]) * B[kk * 16 + n];
      for (int kk = 0; kk < 16; ++kk) {
        double p = c[r * 16 + kk];  // row r of A B + C, rounded to bf16, times B
        for (int j = 0; j < 16; ++j) p += double(A[r * 16 + j]) * B[j * 16 + kk];
        ref_chain += double(static_cast<float>(bf16(static_cast<float>(p)))) * B[kk * 16 + n];
      }
      bad_nk += nk[r * 16 + n] != ref;
      bad_kn += kn[r * 16 + n] != ref;
      bad_chain += chain[r * 16 + n] != ref_chain;
      nonzero += ref != 0.0;
    }
  EXPECT_GT(nonzero, 200) << "degenerate operands: the comparison proves little";
  EXPECT_EQ(bad_nk, 0) << "A B + C with B from ldmatrix ([n][k] storage): wrong elements";
  EXPECT_EQ(bad_kn, 0) << "A B + C with B from ldmatrix.trans ([k][n] storage): wrong elements";
  EXPECT_EQ(bad_chain, 0) << "accumulators reused as an A fragment: wrong elements";
  for (int i = 0; i < 32; ++i) {
    for (int half = 0; half < 2; ++half) {
      const float f = x[2 * i + half];
      const uint16_t got = static_cast<uint16_t>(packed[i] >> (16 * half));
      if (std::isnan(f)) {
        EXPECT_TRUE((got & 0x7f80u) == 0x7f80u && (got & 0x7fu) != 0) << "packing NaN gave " << got;
      } else {
        EXPECT_EQ(got, bf16(f).bits) << "bf16x2 packing of " << f << " (half " << half << ")";
      }
    }
  }
}

TEST_F(CudaAttentionBf16, MmaAndWmmaForwardsAgree) {
  Rng rng(71);
  compare_kernels("causal Dh=64 T=200 pad 8", dims(2, 200, 200, 2, 2, 64, 0, 0, 8), mask::Causal{}, rng);
  compare_kernels("window 40 Dh=128 GQA 4/1 Tq=70 Tk=150 q_off 80", dims(1, 70, 150, 4, 1, 128, 0, 80, 0),
                  mask::SlidingWindow{40}, rng);
  compare_kernels("chunk 16 Dh=96 Dv=48 rows past keys", dims(1, 30, 40, 2, 1, 96, 48, 30, 0),
                  mask::ChunkLocal{16}, rng);
  compare_kernels("causal Dh=40 Dv=24 pad 3", dims(1, 50, 50, 3, 3, 40, 24, 0, 3), mask::Causal{}, rng);
}

TEST_F(CudaAttentionBf16, WmmaKernelsMatchCpu) {
  // The default (mma.sync) family runs in every other test; the WMMA forward and backward here.
  const KernelChoice w(AttnBf16Kernel::Wmma);
  Rng rng(72);
  check("wmma causal Dh=64 T=80 pad 8", dims(1, 80, 80, 2, 2, 64, 0, 0, 8), mask::Causal{}, rng, true);
  check("wmma window 24 Dh=128 GQA 4/2 Tq=40 Tk=100 q_off 60", dims(1, 40, 100, 4, 2, 128, 0, 60, 0),
        mask::SlidingWindow{24}, rng);
  check("wmma chunk 16 Dh=40 Dv=24", dims(1, 50, 50, 2, 1, 40, 24, 0, 0), mask::ChunkLocal{16}, rng);
}

TEST_F(CudaAttentionBf16, KernelChoiceParsingAndOverride) {
  EXPECT_EQ(cuda_detail::parse_attention_bf16_kernel(nullptr), AttnBf16Kernel::Mma);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_kernel(""), AttnBf16Kernel::Mma);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_kernel("mma"), AttnBf16Kernel::Mma);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_kernel("wmma"), AttnBf16Kernel::Wmma);
  EXPECT_THROW(cuda_detail::parse_attention_bf16_kernel("WMMA "), Error);
  try {
    cuda_detail::parse_attention_bf16_kernel("cutlass");
    ADD_FAILURE() << "no error for an unknown kernel name";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("TESSERA_ATTN_BF16_KERNEL"), std::string::npos) << e.what();
  }
  {
    const KernelChoice w(AttnBf16Kernel::Wmma);
    EXPECT_EQ(cuda_detail::attention_bf16_kernel(), AttnBf16Kernel::Wmma);
  }
  EXPECT_NE(cuda_detail::attention_bf16_kernel(), AttnBf16Kernel::Auto);
}

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

TEST_F(CudaAttentionBf16, DvDiffersFromDhWithGqaAndOffset) {
  Rng rng(67);
  // kD=128 from Dh with a narrower Dv, and the other way round; q_offset, GQA, several key tiles.
  check("causal Dh=128 Dv=64 GQA 4/2 Tq=70 Tk=150 q_off 80", dims(1, 70, 150, 4, 2, 128, 64, 80, 8),
        mask::Causal{}, rng);
  check("window 50 Dh=64 Dv=128 T=140", dims(1, 140, 140, 2, 1, 64, 128, 0, 0), mask::SlidingWindow{50}, rng);
}

/// The mma backward with dQ from the dS tiles the dK/dV kernel stored, and with dQ recomputed: both within
/// the tolerances of the fp32 CPU op; dK and dV bit for bit the same (the dK/dV kernel is the same, storing
/// dS or not); dQ from the same dS values, added in the same order where the recomputing kernel's key tiles
/// are the aligned ones (then bit for bit equal; measured on the emulator: 0 in three of the shapes
/// below, 5.5e-6 of max |dq| with the window's unaligned key range), so 1e-3 of max |dq| is ample. The shapes
/// cover several key tiles per query tile (stored tiles at offsets > 0), GQA, Tq != Tk with q_offset, query
/// tiles that see no key tile, padded head dims and Dv != Dh.
template <class Mask>
void compare_dq_modes(const std::string& name, const ops::AttnDims& d, const Mask& m, Rng& rng) {
  using cuda_detail::AttnBf16Dq;
  SCOPED_TRACE(name);
  const Problem p = make_problem(d, m, rng);
  const auto& [sq, sk, sv, so, q, k, v, dout, o_ref, lse_ref, dq_ref, dk_ref, dv_ref] = p;

  DeviceCopy<bf16> d_q(q), d_k(k), d_v(v), d_dout(dout), d_o(unwritten_bf16(so));
  DeviceCopy<float> d_lse(std::vector<float>(lse_ref.size(), 0.f));
  ops::attention_forward(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data());
  std::vector<bf16> dq[2], dk[2], dv[2];
  const AttnBf16Dq modes[2] = {AttnBf16Dq::Stored, AttnBf16Dq::Recompute};
  for (int i = 0; i < 2; ++i) {
    const DqChoice choice(modes[i]);
    DeviceCopy<bf16> d_dq(unwritten_bf16(sq)), d_dk(unwritten_bf16(sk)), d_dv(unwritten_bf16(sv));
    ops::attention_backward(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data(),
                            d_dout.data(), d_dq.data(), d_dk.data(), d_dv.data());
    EXPECT_EQ(cuda_detail::last_attention_bf16_dq(), modes[i]) << "the backward did not take the forced path";
    dq[i] = d_dq.host();
    dk[i] = d_dk.host();
    dv[i] = d_dv.host();
    const char* tag = i == 0 ? "stored" : "recompute";
    EXPECT_LE(rel_err(std::string("dq ") + tag, sq, dq[i], dq_ref), kTolGrad) << tag;
    EXPECT_LE(rel_err(std::string("dk ") + tag, sk, dk[i], dk_ref), kTolGrad) << tag;
    EXPECT_LE(rel_err(std::string("dv ") + tag, sv, dv[i], dv_ref), kTolGrad) << tag;
  }
  auto same = [](const std::vector<bf16>& a, const std::vector<bf16>& b) {
    return std::equal(a.begin(), a.end(), b.begin(), [](bf16 x, bf16 y) { return x.bits == y.bits; });
  };
  EXPECT_TRUE(same(dk[0], dk[1])) << "dk differs between the dQ modes";
  EXPECT_TRUE(same(dv[0], dv[1])) << "dv differs between the dQ modes";
  const double between = rel_err("dq stored vs recompute", sq, dq[0], to_float(dq[1]));
  EXPECT_LE(between, 1e-3);
  std::printf("  %-44s dq stored vs recompute: rel %.2e\n", name.c_str(), between);
}

TEST_F(CudaAttentionBf16, DqFromStoredDsMatchesRecomputedDq) {
  Rng rng(67);
  compare_dq_modes("causal Dh=64 T=200 pad 8", dims(2, 200, 200, 2, 2, 64, 0, 0, 8), mask::Causal{}, rng);
  compare_dq_modes("window 40 Dh=128 GQA 4/1 Tq=70 Tk=150 q_off 80", dims(1, 70, 150, 4, 1, 128, 0, 80, 0),
                   mask::SlidingWindow{40}, rng);
  compare_dq_modes("chunk 16 Dh=64, rows past the keys", dims(1, 20, 40, 2, 2, 64, 0, 40, 0),
                   mask::ChunkLocal{16}, rng);
  compare_dq_modes("chunk 48 Dh=40 Dv=24 pad 3 T=130", dims(1, 130, 130, 2, 1, 40, 24, 0, 3),
                   mask::ChunkLocal{48}, rng);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_dq(nullptr), cuda_detail::AttnBf16Dq::Auto);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_dq("stored"), cuda_detail::AttnBf16Dq::Stored);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_dq("recompute"), cuda_detail::AttnBf16Dq::Recompute);
  EXPECT_THROW(cuda_detail::parse_attention_bf16_dq("atomic"), Error);
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

// The choice of implementation and cuDNN's coverage are host logic: no device needed.
TEST(CudaAttentionBf16Backend, ParsingAndCoverage) {
  using cuda_detail::AttnBf16Backend;
  EXPECT_EQ(cuda_detail::parse_attention_bf16_backend(nullptr), AttnBf16Backend::ByLength);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_backend(""), AttnBf16Backend::ByLength);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_backend("auto"), AttnBf16Backend::ByLength);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_backend("tessera"), AttnBf16Backend::Tessera);
  EXPECT_EQ(cuda_detail::parse_attention_bf16_backend("cudnn"), AttnBf16Backend::Cudnn);
  try {
    cuda_detail::parse_attention_bf16_backend("cuDNN");
    ADD_FAILURE() << "no error for an unknown backend name";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("TESSERA_ATTN_BF16_BACKEND"), std::string::npos) << e.what();
  }
  {
    const BackendChoice c(AttnBf16Backend::Cudnn);
    EXPECT_EQ(cuda_detail::attention_bf16_backend(), AttnBf16Backend::Cudnn);
  }
  EXPECT_NE(cuda_detail::attention_bf16_backend(), AttnBf16Backend::Auto);
  // Which calls each choice sends to cuDNN first: by default those with at least kCudnnMinKeys keys.
  {
    cuda_detail::AttnArgs shorter, longer;
    shorter.Tq = shorter.Tk = cuda_detail::kCudnnMinKeys - 1;
    longer.Tq = longer.Tk = cuda_detail::kCudnnMinKeys;
    const BackendChoice by_length(AttnBf16Backend::ByLength);
    EXPECT_FALSE(cuda_detail::cudnn_attention_chosen(shorter));
    EXPECT_TRUE(cuda_detail::cudnn_attention_chosen(longer));
    const BackendChoice all(AttnBf16Backend::Cudnn);
    EXPECT_TRUE(cuda_detail::cudnn_attention_chosen(shorter));
    const BackendChoice none(AttnBf16Backend::Tessera);
    EXPECT_FALSE(cuda_detail::cudnn_attention_chosen(longer));
  }

  // Llama's attention: causal, Tq == Tk, q/k/v rows of one fused buffer (token stride 3 H Dh).
  cuda_detail::AttnArgs a;
  a.B = 4, a.Tq = a.Tk = 4096, a.Hq = a.Hkv = 16, a.Dh = a.Dv = 128;
  a.q_stride = a.k_stride = a.v_stride = 3 * 16 * 128, a.o_stride = 16 * 128, a.scale = 0.088;
  alignas(16) static char buf[64];
  const void* ok[4] = {buf, buf + 16, buf + 32, buf + 48};
  EXPECT_EQ(cuda_detail::cudnn_attention_unsupported(a, false, ok, 4), "");
  EXPECT_EQ(cuda_detail::cudnn_attention_unsupported(a, true, ok, 4), "");
  auto refused = [&](cuda_detail::AttnArgs x, bool bwd, const std::string& word,
                     const void* const* p = nullptr) {
    const std::string why = cuda_detail::cudnn_attention_unsupported(x, bwd, p ? p : ok, 4);
    EXPECT_NE(why.find(word), std::string::npos)
        << "expected a reason with \"" << word << "\", got \"" << why << "\"";
  };
  auto w = a;
  w.mask = cuda_detail::AttnMask::SlidingWindow, w.mask_param = 512;
  EXPECT_EQ(cuda_detail::cudnn_attention_unsupported(w, true, ok, 4), "") << "sliding windows are covered";
  auto chunk = a;
  chunk.mask = cuda_detail::AttnMask::ChunkLocal, chunk.mask_param = 2048;
  refused(chunk, false, "mask");
  auto off = a;
  off.q_offset = 7, off.Tq = 1;
  refused(off, false, "q_offset");
  auto odd = a;
  odd.Dh = 40 + 2;
  refused(odd, false, "head dims");
  auto big = a;
  big.Dh = big.Dv = 256;
  refused(big, false, "head dims");
  auto dv = a;
  dv.Dv = 64;
  refused(dv, false, "Dh == Dv");
  auto st = a;
  st.k_stride = 3 * 16 * 128 + 4;
  refused(st, false, "strides");
  const void* misaligned[4] = {buf, buf + 2, buf + 32, buf + 48};
  refused(a, false, "aligned", misaligned);
  // Windows at least as wide as the keys are the causal graph; a narrower one past fp32's exact integers is
  // not taken.
  auto win = a;
  win.mask = cuda_detail::AttnMask::SlidingWindow, win.mask_param = INT64_MAX / 4;
  EXPECT_EQ(cuda_detail::as_cudnn_call(win).mask, cuda_detail::AttnMask::Causal);
  win.mask_param = a.Tk;
  EXPECT_EQ(cuda_detail::as_cudnn_call(win).mask, cuda_detail::AttnMask::Causal);
  win.mask_param = a.Tk - 1;
  EXPECT_EQ(cuda_detail::as_cudnn_call(win).mask, cuda_detail::AttnMask::SlidingWindow);
  EXPECT_EQ(cuda_detail::as_cudnn_call(win).mask_param, a.Tk - 1);
  EXPECT_EQ(cuda_detail::cudnn_attention_unsupported(win, true, ok, 4), "");
  win.Tq = win.Tk = cuda_detail::kMaxExactWindow + 2, win.mask_param = cuda_detail::kMaxExactWindow + 1;
  refused(win, true, "window");
  auto gqa = a;
  gqa.Hkv = 4, gqa.k_stride = gqa.v_stride = 3 * 16 * 128;
  EXPECT_EQ(cuda_detail::cudnn_attention_unsupported(gqa, false, ok, 4), "") << "GQA forward is covered";
  EXPECT_EQ(cuda_detail::cudnn_attention_unsupported(gqa, true, ok, 4), "") << "GQA backward is covered";
}

// cuDNN's operation descriptors for the Llama-1B shape and a small one, built without a device: cuDNN checks
// every tensor's dims, strides and type and every operation's inputs when it finalizes them. Skips where the
// library cannot be loaded.
TEST(CudaAttentionBf16Backend, CudnnOperationDescriptorsFinalize) {
  if (cuda_detail::cudnn_loaded_version() == 0)
    GTEST_SKIP() << "cuDNN not loaded: "
                 << cuda_detail::cudnn_attention_graph_check(cuda_detail::AttnArgs{}, false);
  EXPECT_NE(cuda_detail::cudnn_attention_graph_check(cuda_detail::AttnArgs{}, false), "") << "empty dims";
  cuda_detail::AttnArgs a;
  a.B = 4, a.Tq = a.Tk = 4096, a.Hq = a.Hkv = 16, a.Dh = a.Dv = 128;
  a.q_stride = a.k_stride = a.v_stride = 3 * 16 * 128, a.o_stride = 16 * 128, a.scale = 0.088;
  EXPECT_EQ(cuda_detail::cudnn_attention_graph_check(a, false), "") << "forward, Llama-1B";
  EXPECT_EQ(cuda_detail::cudnn_attention_graph_check(a, true), "") << "backward, Llama-1B";
  cuda_detail::AttnArgs s;
  s.B = 2, s.Tq = s.Tk = 80, s.Hq = 4, s.Hkv = 2, s.Dh = s.Dv = 64;
  s.q_stride = 4 * 64 + 8, s.k_stride = s.v_stride = 2 * 64 + 8, s.o_stride = 4 * 64, s.scale = 0.125;
  EXPECT_EQ(cuda_detail::cudnn_attention_graph_check(s, false), "") << "forward, GQA 4/2, padded rows";
  a.mask = cuda_detail::AttnMask::SlidingWindow, a.mask_param = 512;  // BLT's local layers
  EXPECT_EQ(cuda_detail::cudnn_attention_graph_check(a, false), "") << "forward, window 512";
  EXPECT_EQ(cuda_detail::cudnn_attention_graph_check(a, true), "") << "backward, window 512";
}

// cuDNN's graphs against the fp32 CPU op (the same tolerances as tessera's kernels: the same contract of
// bf16 P and dS) on the shapes they cover, with the call checked to have run on cuDNN; then calls outside
// its coverage, which must run tessera's kernels with the reason recorded. Skips where cuDNN cannot be
// loaded; a graph cuDNN's engines refuse on this GPU fails (the message carries cuDNN's reason).
TEST_F(CudaAttentionBf16, CudnnMatchesCpuWhereItRuns) {
  using cuda_detail::AttnBf16Backend;
  const std::string why = cuda_detail::cudnn_unavailable_reason();
  if (!why.empty()) GTEST_SKIP() << "cuDNN cannot run here: " << why;
  std::printf("  cuDNN %lld\n", static_cast<long long>(cuda_detail::cudnn_loaded_version()));
  // This GPU as cuDNN describes it (kept from a GPU run, it lets cuDNN build plans for this GPU elsewhere).
  std::printf("  cuDNN device properties: %s\n", cuda_detail::cudnn_device_properties_json().c_str());
  const BackendChoice c(AttnBf16Backend::Cudnn);
  Rng rng(71);
  // check() with both the forward and the backward required to run on cuDNN (the call counters).
  auto on_cudnn = [&](const std::string& name, const ops::AttnDims& d, const auto& m, bool repeat) {
    const int64_t before = cuda_detail::attention_bf16_calls(AttnBf16Backend::Cudnn);
    check(name, d, m, rng, repeat);
    EXPECT_EQ(cuda_detail::attention_bf16_calls(AttnBf16Backend::Cudnn) - before, repeat ? 3 : 2)
        << name << ": not every call ran on cuDNN: " << cuda_detail::last_cudnn_attention_error();
  };
  // repeat: the backward must be bitwise deterministic (no fp32 dq atomics).
  on_cudnn("cudnn causal Dh=64 B=2 T=80 pad 8", dims(2, 80, 80, 2, 2, 64, 0, 0, 8), mask::Causal{}, true);
  on_cudnn("cudnn causal Dh=128 B=1 T=300", dims(1, 300, 300, 4, 4, 128, 0, 0, 0), mask::Causal{}, true);
  on_cudnn("cudnn causal Dh=64 B=3 T=64 H=3", dims(3, 64, 64, 3, 3, 64, 0, 0, 8), mask::Causal{}, false);
  // GQA: dk, dv summed over each group of query heads.
  on_cudnn("cudnn causal GQA 4/2 Dh=64 T=130", dims(1, 130, 130, 4, 2, 64, 0, 0, 0), mask::Causal{}, true);
  on_cudnn("cudnn causal GQA 8/2 Dh=128 T=96 pad 8", dims(2, 96, 96, 8, 2, 128, 0, 0, 8), mask::Causal{},
           false);
  // Sliding windows (BLT's local layers): the window crosses cuDNN's tiles; W = 2 sees the diagonal and one
  // key before it (W = 1 has exactly zero dq and dk, which leaves only rounding noise to compare).
  on_cudnn("cudnn window 24 Dh=64 T=150", dims(1, 150, 150, 2, 2, 64, 0, 0, 0), mask::SlidingWindow{24},
           true);
  on_cudnn("cudnn window 70 Dh=128 T=260 pad 8", dims(2, 260, 260, 2, 2, 128, 0, 0, 8),
           mask::SlidingWindow{70}, false);
  on_cudnn("cudnn window 2 Dh=64 T=40", dims(1, 40, 40, 2, 2, 64, 0, 0, 0), mask::SlidingWindow{2}, false);
  on_cudnn("cudnn window T-1 Dh=32 T=64", dims(1, 64, 64, 2, 2, 32, 0, 0, 0), mask::SlidingWindow{63}, false);
  // A model's "no window" (layers/masks.hpp: INT64_MAX / 4 keys) is the causal graph; the small GQA Llama of
  // the model tests (Dh 16, 4/2 heads, B 2, T 24).
  on_cudnn("cudnn no window, GQA 4/2 Dh=16 T=24", dims(2, 24, 24, 4, 2, 16, 0, 0, 0),
           mask::SlidingWindow{INT64_MAX / 4}, true);
  // The backward with cuDNN's fp32 dq accumulator (not bitwise reproducible: no repeat check).
  cuda_detail::set_cudnn_attention_deterministic(0);
  on_cudnn("cudnn causal Dh=128 T=200, dq accumulator", dims(1, 200, 200, 2, 2, 128, 0, 0, 8), mask::Causal{},
           false);
  cuda_detail::set_cudnn_attention_deterministic(-1);

  // Outside cuDNN's graphs here: tessera's kernels, within the same tolerances.
  check("cudnn asked, chunk 16 (tessera)", dims(1, 100, 100, 2, 2, 64, 0, 0, 0), mask::ChunkLocal{16}, rng);
  EXPECT_EQ(cuda_detail::last_attention_bf16_backend(), AttnBf16Backend::Tessera);
  EXPECT_NE(cuda_detail::last_cudnn_attention_error().find("mask"), std::string::npos)
      << cuda_detail::last_cudnn_attention_error();
  check("cudnn asked, decode q_offset (tessera)", dims(1, 1, 70, 2, 1, 64, 0, 69, 0), mask::Causal{}, rng);
  EXPECT_EQ(cuda_detail::last_attention_bf16_backend(), AttnBf16Backend::Tessera);
  EXPECT_NE(cuda_detail::last_cudnn_attention_error().find("q_offset"), std::string::npos)
      << cuda_detail::last_cudnn_attention_error();

  // The default choice: cuDNN from kCudnnMinKeys keys on, tessera's kernels below.
  const BackendChoice by_length(AttnBf16Backend::ByLength);
  const int64_t before = cuda_detail::attention_bf16_calls(AttnBf16Backend::Cudnn);
  const int64_t T = cuda_detail::kCudnnMinKeys;
  check("by length: T=kCudnnMinKeys (cuDNN)", dims(1, T, T, 2, 2, 64, 0, 0, 0), mask::Causal{}, rng);
  EXPECT_EQ(cuda_detail::attention_bf16_calls(AttnBf16Backend::Cudnn) - before, 2)
      << cuda_detail::last_cudnn_attention_error();
  check("by length: T=kCudnnMinKeys-1 (tessera)", dims(1, T - 1, T - 1, 2, 2, 64, 0, 0, 0), mask::Causal{},
        rng);
  EXPECT_EQ(cuda_detail::last_attention_bf16_backend(), AttnBf16Backend::Tessera);
  EXPECT_EQ(cuda_detail::attention_bf16_calls(AttnBf16Backend::Cudnn) - before, 2);
}
