// CPU vs CUDA parity for the core and BLT ops of tessera::cuda (elementwise.cu, loss.cu, segment.cu, hash.cu,
// adamw.cu and the bf16 path of gemm.cu): each op runs on the same random inputs through the CPU
// implementation and the CUDA one. Every test skips itself (with a message) when no CUDA device is visible.
// Sizes are deliberately not multiples of the warp, block or tile sizes (37, 53, 301, ...).
//
// Default tolerance (expect_close): |gpu - cpu| <= rtol * |cpu| + rtol * max|cpu| elementwise, rtol = 1e-5
// (~80 fp32 ulp). The two sides differ only by float rounding: expf/erff/tanhf on the GPU vs Eigen's
// vectorised exp/erf/tanh (each a few ulp), FMA contraction by nvcc, and sums over rows or columns in a
// different order (tree reductions vs sequential loops, relative error ~1e-7 * log2(length)). The max|cpu|
// term keeps entries that cancel to near zero from being judged by their own magnitude. Any indexing,
// striding or transposition mistake is off by O(1) relative and fails by orders of magnitude.
// Integer outputs (argmax, patch ids, hash ids) and pure data movement (gather, max) must match exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../../cuda/launch_core.hpp"  // internal: the RoPE kernel choice, the AdamW route
#include "support/cuda_testing.hpp"
#include "support/gradcheck.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/models/blt/entropy.hpp"
#include "tessera/models/blt/hash_embedding.hpp"
#include "tessera/ops/activation.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/embedding.hpp"
#include "tessera/ops/loss.hpp"
#include "tessera/ops/matmul.hpp"
#include "tessera/ops/norm.hpp"
#include "tessera/ops/rope.hpp"
#include "tessera/ops/segment.hpp"
#include "tessera/patchers/patcher.hpp"
#include "tessera/train/adamw.hpp"
#include "tessera/train/clip.hpp"

using namespace tessera;

using tessera::testing::DeviceCopy;

namespace {

constexpr double kRtol = 1e-5;

class CudaCore : public tessera::testing::CudaTest {};

using Host = std::vector<float>;
using Ids = std::vector<int64_t>;

Host randn(int64_t n, Rng& rng, double scale = 1.0) {
  Host v(static_cast<size_t>(n));
  tessera::testing::fill_normal(v.data(), n, rng, scale);
  return v;
}

/// Uniform integers in [lo, hi).
Ids randint(int64_t n, Rng& rng, int64_t lo, int64_t hi) {
  Ids v(static_cast<size_t>(n));
  for (auto& x : v) x = lo + static_cast<int64_t>(rng.next_u64() % static_cast<uint64_t>(hi - lo));
  return v;
}

size_t sz(int64_t n) {
  return static_cast<size_t>(n);
}

/// bf16(v) element by element (round to nearest even), and back to fp32 (exact).
std::vector<bf16> to_bf16(const Host& v) {
  std::vector<bf16> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16(v[i]);
  return r;
}
Host widen(const std::vector<bf16>& v) {
  Host r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = static_cast<float>(v[i]);
  return r;
}

void expect_close(const std::string& what, const Host& gpu, const Host& ref, double rtol = kRtol) {
  tessera::testing::expect_elementwise_close(what, gpu, ref, rtol);
}

template <class T>
void expect_equal(const std::string& what, const std::vector<T>& gpu, const std::vector<T>& ref) {
  ASSERT_EQ(gpu.size(), ref.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    if (!(gpu[i] == ref[i]) && ++bad <= 5)
      ADD_FAILURE() << what << "[" << i << "]: gpu " << gpu[i] << " vs cpu " << ref[i];
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << ref.size() << " entries differ";
}

bool all_nan(const Host& v, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i)
    if (!std::isnan(v[i])) return false;
  return true;
}

}  // namespace

// ---- embedding
// ---------------------------------------------------------------------------------------------

// Many repeated ids (301 rows over 37 ids) so the backward sums runs of equal ids; D = 300 spans two column
// blocks of the accumulate kernel. The gather is exact; dtable starts non-zero (backward accumulates).
TEST_F(CudaCore, EmbeddingForwardBackwardMatchCpu) {
  Rng rng(11);
  const int64_t N = 301, V = 37, D = 300;
  const Ids ids = randint(N, rng, 0, V);
  const Host table = randn(V * D, rng), dout = randn(N * D, rng);
  Host out(sz(N * D)), dtable = randn(V * D, rng);
  DeviceCopy<int64_t> d_ids(ids);
  DeviceCopy<float> d_table(table), d_out(out), d_dout(dout), d_dtable(dtable);

  ops::embedding_forward(cpu{}, out.data(), ids.data(), table.data(), N, V, D);
  ops::embedding_forward(cuda{}, d_out.data(), d_ids.data(), d_table.data(), N, V, D);
  expect_equal("embedding out", d_out.host(), out);

  ops::embedding_backward(cpu{}, dtable.data(), dout.data(), ids.data(), N, V, D);
  ops::embedding_backward(cuda{}, d_dtable.data(), d_dout.data(), d_ids.data(), N, V, D);
  expect_close("embedding dtable", d_dtable.host(), dtable);
}

// Sorted by id, each id's rows are summed in row order starting from the table's value: the same additions in
// the same order as the CPU loop, so the result is bitwise reproducible run to run (and equal to the CPU's).
TEST_F(CudaCore, EmbeddingBackwardIsDeterministic) {
  Rng rng(12);
  const int64_t N = 5000, V = 7, D = 33;
  const Ids ids = randint(N, rng, 0, V);
  const Host dout = randn(N * D, rng);
  DeviceCopy<int64_t> d_ids(ids);
  DeviceCopy<float> d_dout(dout);
  Host first;
  for (int run = 0; run < 2; ++run) {
    DeviceCopy<float> d_dtable(Host(sz(V * D), 0.f));
    ops::embedding_backward(cuda{}, d_dtable.data(), d_dout.data(), d_ids.data(), N, V, D);
    if (run == 0)
      first = d_dtable.host();
    else
      EXPECT_EQ(d_dtable.host(), first);
  }
}

// Ids are not validated on the host: an out-of-range id gives a NaN row forward and is skipped backward,
// without touching memory outside the table.
TEST_F(CudaCore, EmbeddingOutOfRangeIdsAreNanAndSkipped) {
  const int64_t V = 4, D = 3;
  const Ids ids = {1, -1, 4, 1000000, 2, 1};
  const int64_t N = static_cast<int64_t>(ids.size());
  Host table(sz(V * D));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<float>(i);
  DeviceCopy<int64_t> d_ids(ids);
  DeviceCopy<float> d_table(table), d_out(Host(sz(N * D))), d_dout(Host(sz(N * D), 1.f)),
      d_dtable(Host(sz(V * D), 0.f));
  ops::embedding_forward(cuda{}, d_out.data(), d_ids.data(), d_table.data(), N, V, D);
  const Host out = d_out.host();
  EXPECT_EQ(out[0], 3.f);
  EXPECT_EQ(out[12], 6.f);
  EXPECT_EQ(out[15], 3.f);
  EXPECT_TRUE(all_nan(out, 3, 12)) << "rows 1-3 have out-of-range ids";
  ops::embedding_backward(cuda{}, d_dtable.data(), d_dout.data(), d_ids.data(), N, V, D);
  EXPECT_EQ(d_dtable.host(), (Host{0, 0, 0, 2, 2, 2, 1, 1, 1, 0, 0, 0}));
  EXPECT_THROW(ops::embedding_forward(cuda{}, d_out.data(), d_ids.data(), d_table.data(), N, V, 0), Error);
}

// ---- activations -----------------------------------------------------------------------------------------

TEST_F(CudaCore, SiluGeluForwardBackwardMatchCpu) {
  Rng rng(21);
  const int64_t n = 37 * 301;
  Host x = randn(n, rng, 3.0);
  x[0] = 100.f;  // saturated sigmoid / erf / tanh
  x[1] = -100.f;
  const Host dy = randn(n, rng);
  DeviceCopy<float> d_x(x), d_dy(dy), d_y(Host(sz(n))), d_dx(Host(sz(n)));
  Host y(sz(n)), dx(sz(n));

  ops::silu_forward(cpu{}, y.data(), x.data(), n);
  ops::silu_forward(cuda{}, d_y.data(), d_x.data(), n);
  expect_close("silu y", d_y.host(), y);
  ops::silu_backward(cpu{}, dx.data(), dy.data(), x.data(), n);
  ops::silu_backward(cuda{}, d_dx.data(), d_dy.data(), d_x.data(), n);
  expect_close("silu dx", d_dx.host(), dx);

  for (const auto approx : {ops::GeluApprox::None, ops::GeluApprox::Tanh}) {
    const std::string tag = approx == ops::GeluApprox::None ? " (erf)" : " (tanh)";
    ops::gelu_forward(cpu{}, y.data(), x.data(), n, approx);
    ops::gelu_forward(cuda{}, d_y.data(), d_x.data(), n, approx);
    expect_close("gelu y" + tag, d_y.host(), y);
    ops::gelu_backward(cpu{}, dx.data(), dy.data(), x.data(), n, approx);
    ops::gelu_backward(cuda{}, d_dx.data(), d_dy.data(), d_x.data(), n, approx);
    expect_close("gelu dx" + tag, d_dx.host(), dx);
  }

  // In place (y == x), allowed on both backends.
  DeviceCopy<float> d_inplace(x);
  ops::silu_forward(cpu{}, y.data(), x.data(), n);
  ops::silu_forward(cuda{}, d_inplace.data(), d_inplace.data(), n);
  expect_close("silu in place", d_inplace.host(), y);
}

// gate and up as the two halves of a fused [N, 2H] projection (gu_stride = 2H), and as separate [N, H]
// arrays. H = 301: the elementwise kernels; H = 304: the four-wide row kernels (H and strides multiples of 4).
TEST_F(CudaCore, SwigluForwardBackwardMatchCpu) {
  Rng rng(22);
  const int64_t N = 37;
  for (const int64_t H : {int64_t(301), int64_t(304)})
  for (const bool fused : {true, false}) {
    const std::string tag = std::string(fused ? " fused" : " separate") + " H=" + std::to_string(H);
    const int64_t ld = fused ? 2 * H : H;
    // fused: gu holds [gate | up] rows; separate: gu is gate and `up` its own array. Gradients likewise.
    const Host gu = randn(N * ld, rng, 2.0), up_sep = randn(N * H, rng), dout = randn(N * H, rng);
    Host out(sz(N * H)), dgu(gu.size(), 0.f), dup_sep(sz(N * H), 0.f);
    DeviceCopy<float> d_gu(gu), d_up_sep(up_sep), d_dout(dout), d_out(out), d_dgu(dgu), d_dup_sep(dup_sep);
    const float* up = fused ? gu.data() + H : up_sep.data();
    float* dup = fused ? dgu.data() + H : dup_sep.data();
    const float* d_up = fused ? d_gu.data() + H : d_up_sep.data();
    float* d_dup = fused ? d_dgu.data() + H : d_dup_sep.data();
    const int64_t stride = fused ? ld : 0;  // 0 = H, the default

    ops::swiglu_forward(cpu{}, out.data(), gu.data(), up, N, H, stride);
    ops::swiglu_forward(cuda{}, d_out.data(), d_gu.data(), d_up, N, H, stride);
    expect_close("swiglu out" + tag, d_out.host(), out);
    ops::swiglu_backward(cpu{}, dgu.data(), dup, dout.data(), gu.data(), up, N, H, stride);
    ops::swiglu_backward(cuda{}, d_dgu.data(), d_dup, d_dout.data(), d_gu.data(), d_up, N, H, stride);
    expect_close("swiglu dgate (and dup when fused)" + tag, d_dgu.host(), dgu);
    if (!fused) expect_close("swiglu dup" + tag, d_dup_sep.host(), dup_sep);

    // bf16 outputs: exactly the bf16 rounding of the fp32 outputs (the same fp32 value, rounded once).
    auto rounded = [](const Host& v) {
      std::vector<uint16_t> r(v.size());
      for (size_t i = 0; i < v.size(); ++i) r[i] = bf16(v[i]).bits;
      return r;
    };
    auto bits = [](const std::vector<bf16>& v) {
      std::vector<uint16_t> r(v.size());
      for (size_t i = 0; i < v.size(); ++i) r[i] = v[i].bits;
      return r;
    };
    DeviceCopy<bf16> h16(std::vector<bf16>(sz(N * H))), dgu16(std::vector<bf16>(gu.size())),
        dup16_sep(std::vector<bf16>(sz(N * H)));
    ops::swiglu_forward(cuda{}, h16.data(), d_gu.data(), d_up, N, H, stride);
    EXPECT_EQ(bits(h16.host()), rounded(d_out.host())) << "swiglu bf16 out" << tag;
    bf16* dup16 = fused ? dgu16.data() + H : dup16_sep.data();
    ops::swiglu_backward(cuda{}, dgu16.data(), dup16, d_dout.data(), d_gu.data(), d_up, N, H, stride);
    EXPECT_EQ(bits(dgu16.host()), rounded(d_dgu.host())) << "swiglu bf16 dgate (and dup when fused)" << tag;
    if (!fused) {
      EXPECT_EQ(bits(dup16_sep.host()), rounded(d_dup_sep.host())) << "swiglu bf16 dup" << tag;
    }
  }
}

// bf16 gate/up (the all-bf16 SwiGLU saves its gate/up products in bf16): the same per-element fp32
// arithmetic as the fp32-input kernels (bf16 outputs) given the widened inputs, so the outputs agree to the
// bit; 1 bf16 ulp is allowed for a different FMA contraction by nvcc. H = 304: 8 columns per thread
// (separate and fused [N, 2H] gate/up); H = 300: 4 (fused: the up half only 8-byte aligned); H = 303 and
// arrays starting one element into their allocation (misaligned rows): the one-column fallback. Outputs start
// zeroed on both sides, so an element the new kernels skip shows up.
TEST_F(CudaCore, SwigluBf16InputsMatchTheFp32KernelsOnRoundedInputs) {
  struct Case {
    int64_t H;
    bool fused;
    int64_t shift;  // every array starts this many elements into its allocation
  };
  Rng rng(31);
  const int64_t N = 37;
  // The largest distance in bf16 ulps (the bit patterns mapped to a monotone integer scale).
  auto max_ulps = [](const std::vector<bf16>& a, const std::vector<bf16>& b) {
    auto ord = [](uint16_t x) {
      return (x & 0x8000u) ? -static_cast<int>(x & 0x7fffu) : static_cast<int>(x);
    };
    int m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(ord(a[i].bits) - ord(b[i].bits)));
    return m;
  };
  for (const Case c : {Case{304, false, 0}, Case{304, true, 0}, Case{300, true, 0}, Case{303, false, 0},
                       Case{304, false, 1}, Case{303, true, 1}}) {
    const int64_t H = c.H, ld = c.fused ? 2 * H : H, s = c.shift;
    SCOPED_TRACE(std::string(c.fused ? "fused" : "separate") + " H=" + std::to_string(H) +
                 " shift=" + std::to_string(s));
    // fused: gu holds [gate | up] rows (and dgu the two gradients); separate: up and dup their own arrays.
    const std::vector<bf16> gu16 = to_bf16(randn(s + N * ld, rng, 2.0)),
                            up16_sep = to_bf16(randn(s + N * H, rng));
    const Host dout = randn(s + N * H, rng);
    DeviceCopy<float> d_gu(widen(gu16)), d_up_sep(widen(up16_sep)), d_dout(dout);
    DeviceCopy<bf16> d_gu16(gu16), d_up16_sep(up16_sep);
    const std::vector<bf16> zeros_h(sz(s + N * H)), zeros_gu(sz(s + N * ld));
    DeviceCopy<bf16> h_ref(zeros_h), h_new(zeros_h), dgu_ref(zeros_gu), dgu_new(zeros_gu), dup_ref(zeros_h),
        dup_new(zeros_h);
    const float* gate = d_gu.data() + s;
    const float* up = c.fused ? gate + H : d_up_sep.data() + s;
    const bf16* gate16 = d_gu16.data() + s;
    const bf16* up16 = c.fused ? gate16 + H : d_up16_sep.data() + s;
    auto dup_of = [&](DeviceCopy<bf16>& dgu, DeviceCopy<bf16>& dup) {
      return c.fused ? dgu.data() + s + H : dup.data() + s;
    };
    const int64_t stride = c.fused ? ld : 0;

    ops::swiglu_forward(cuda{}, h_ref.data() + s, gate, up, N, H, stride);
    ops::swiglu_forward(cuda{}, h_new.data() + s, gate16, up16, N, H, stride);
    EXPECT_LE(max_ulps(h_new.host(), h_ref.host()), 1) << "swiglu bf16-input out";
    ops::swiglu_backward(cuda{}, dgu_ref.data() + s, dup_of(dgu_ref, dup_ref), d_dout.data() + s, gate, up, N,
                         H, stride);
    ops::swiglu_backward(cuda{}, dgu_new.data() + s, dup_of(dgu_new, dup_new), d_dout.data() + s, gate16,
                         up16, N, H, stride);
    EXPECT_LE(max_ulps(dgu_new.host(), dgu_ref.host()), 1) << "swiglu bf16-input dgate (and dup when fused)";
    if (!c.fused) {
      EXPECT_LE(max_ulps(dup_new.host(), dup_ref.host()), 1) << "swiglu bf16-input dup";
    }
  }
}

// Single fp32 additions and multiplications: exact. Four floats per access where every pointer is 16-byte
// aligned (then a tail of n % 4), one where one is not (views starting one float in), and n below 4.
TEST_F(CudaCore, AddAndScaleAreExact) {
  Rng rng(23);
  struct Case {
    int64_t n, off;  // off: the views start `off` floats into their buffers
  };
  for (const Case c : {Case{1001, 0}, Case{4096, 0}, Case{1001, 1}, Case{4099, 2}, Case{3, 0}}) {
    SCOPED_TRACE("n = " + std::to_string(c.n) + ", offset " + std::to_string(c.off));
    const int64_t n = c.n, m = c.n + c.off;
    const Host x = randn(m, rng), y = randn(m, rng);
    Host z(sz(m)), yi = y, ys = y, yf = y;
    ops::add(cpu{}, z.data() + c.off, x.data() + c.off, y.data() + c.off, n);
    ops::add_inplace(cpu{}, yi.data() + c.off, x.data() + c.off, n);
    ops::scale_inplace(cpu{}, ys.data() + c.off, -0.37f, n);
    std::fill(yf.begin() + c.off, yf.end(), 2.75f);
    DeviceCopy<float> d_x(x), d_y(y), d_z(Host(sz(m))), d_yi(y), d_ys(y), d_yf(y);
    ops::add(cuda{}, d_z.data() + c.off, d_x.data() + c.off, d_y.data() + c.off, n);
    ops::add_inplace(cuda{}, d_yi.data() + c.off, d_x.data() + c.off, n);
    ops::scale_inplace(cuda{}, d_ys.data() + c.off, -0.37f, n);
    ops::fill(cuda{}, d_yf.data() + c.off, 2.75f, n);
    expect_equal("add", d_z.host(), z);
    expect_equal("add_inplace", d_yi.host(), yi);
    expect_equal("scale_inplace", d_ys.host(), ys);
    expect_equal("fill", d_yf.host(), yf);
  }
}

// ---- RoPE ----------------------------------------------------------------------------------------------

// Both pair layouts, a padded token stride (the padding must stay untouched), odd half = 17 and positions up
// to 5000; 3 heads, and 11 (a thread loads eight heads ahead of their stores: a full run and a short one).
// cos/sin are computed in double on both sides, so only the fp32 rotation (possibly FMA-contracted on the
// GPU) differs: within kRtol. Backward is compared with the CPU and must invert forward.
TEST_F(CudaCore, RopeForwardBackwardMatchCpu) {
  Rng rng(31);
  for (const int64_t H : {int64_t{3}, int64_t{11}})
    for (const auto style : {ops::RopeStyle::Interleaved, ops::RopeStyle::Half}) {
      const int64_t N = 37, Dh = 34, stride = H * Dh + 5;
      Ids pos = randint(N, rng, 0, 5000);
      pos[0] = 0;
      const Host x = randn(N * stride, rng);
      DeviceCopy<int64_t> d_pos(pos);
      const std::string tag = (style == ops::RopeStyle::Interleaved ? " interleaved" : " half") +
                              std::string(", H ") + std::to_string(H);
      Host y = x;
      DeviceCopy<float> d_y(x);
      ops::rope_forward(cpu{}, y.data(), stride, pos.data(), N, H, Dh, 10000.0, style);
      ops::rope_forward(cuda{}, d_y.data(), stride, d_pos.data(), N, H, Dh, 10000.0, style);
      const Host gy = d_y.host();
      expect_close("rope forward" + tag, gy, y);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = H * Dh; k < stride; ++k)
          EXPECT_EQ(gy[sz(n * stride + k)], x[sz(n * stride + k)]) << "padding changed" << tag;

      ops::rope_backward(cpu{}, y.data(), stride, pos.data(), N, H, Dh, 10000.0, style);
      ops::rope_backward(cuda{}, d_y.data(), stride, d_pos.data(), N, H, Dh, 10000.0, style);
      const Host back = d_y.host();
      expect_close("rope backward" + tag, back, y);
      expect_close("rope backward(forward(x)) = x" + tag, back, x);
      DeviceCopy<float> d_x(x);
      EXPECT_THROW(
          ops::rope_forward(cuda{}, d_x.data(), stride, d_pos.data(), N, H, 33, 1e4, ops::RopeStyle::Half),
          Error);
    }
}

// rope_qk: the queries' and keys' head sets (Hq != Hk) in one launch, against the CPU's rope_forward /
// rope_backward of each. fp32 in place within kRtol; fp32 -> bf16 equal to bf16(the CPU's fp32 rotation)
// bit for bit except where the two fp32 values straddle a bf16 rounding boundary (then one bf16 step); bf16
// -> fp32 and bf16 -> bf16 start from bf16 inputs (the CPU rotates their fp32 values).
TEST_F(CudaCore, RopeQkRotatesQueriesAndKeysInOneLaunch) {
  Rng rng(37);
  const int64_t Dh = 16;
  struct Heads {
    int64_t q, k;
  };
  // Head sets of 4 + 2 and 11 + 6 (a thread loads up to eight heads ahead of their stores: 17 heads are two
  // full runs and a short one). Token counts: one (a decoding step: one head per thread), 29, 4096 (two
  // head groups per token, a thread each) and 8192 (the training layout: every head in one thread).
  for (const Heads heads : {Heads{4, 2}, Heads{11, 6}})
    for (const int64_t N : {int64_t{1}, int64_t{29}, int64_t{4096}, int64_t{8192}}) {
      const int64_t Hq = heads.q, Hk = heads.k;
      SCOPED_TRACE("N = " + std::to_string(N) + ", heads " + std::to_string(Hq) + " + " + std::to_string(Hk));
      Ids pos = randint(N, rng, 0, 3000);
      DeviceCopy<int64_t> d_pos(pos);
      const Host q = randn(N * Hq * Dh, rng), k = randn(N * Hk * Dh, rng);
      // Within one bf16 step of the rounded reference (a tie-breaking difference of the fp32 rotations).
      auto expect_bf16_of = [](const std::string& what, const Host& got, const Host& ref32) {
        int off = 0;
        for (size_t i = 0; i < ref32.size(); ++i) {
          const float want = static_cast<float>(bf16(ref32[i]));
          if (got[i] == want) continue;
          ++off;
          EXPECT_LE(std::abs(got[i] - want), std::abs(want) / 128 + 1e-30) << what << "[" << i << "]";
        }
        EXPECT_LE(off, static_cast<int>(ref32.size() / 100) + 1)
            << what << ": too many values off the rounding";
      };
      for (const auto style : {ops::RopeStyle::Interleaved, ops::RopeStyle::Half}) {
        for (const bool inverse : {false, true}) {
          const std::string tag =
              std::string(style == ops::RopeStyle::Interleaved ? " interleaved" : " half") +
              (inverse ? " inverse" : "");
          auto cpu_rotate = [&](Host a, Host b) {
            ops::rope_qk(cpu{}, a.data(), b.data(), a.data(), b.data(), pos.data(), N, Hq, Hk, Dh, 1e4, style,
                         inverse);
            return std::pair{a, b};
          };
          const auto [rq, rk] = cpu_rotate(q, k);
          {  // fp32 in place
            DeviceCopy<float> dq(q), dk(k);
            ops::rope_qk(cuda{}, dq.data(), dk.data(), dq.data(), dk.data(), d_pos.data(), N, Hq, Hk, Dh, 1e4,
                         style, inverse);
            expect_close("rope_qk fp32 q" + tag, dq.host(), rq);
            expect_close("rope_qk fp32 k" + tag, dk.host(), rk);
          }
          {  // fp32 -> bf16
            DeviceCopy<float> dq(q), dk(k);
            DeviceCopy<bf16> oq(std::vector<bf16>(q.size())), ok(std::vector<bf16>(k.size()));
            ops::rope_qk(cuda{}, dq.data(), dk.data(), oq.data(), ok.data(), d_pos.data(), N, Hq, Hk, Dh, 1e4,
                         style, inverse);
            expect_bf16_of("rope_qk fp32->bf16 q" + tag, widen(oq.host()), rq);
            expect_bf16_of("rope_qk fp32->bf16 k" + tag, widen(ok.host()), rk);
            EXPECT_EQ(dq.host(), q) << "the fp32 input is left alone";
          }
          const auto [rq16, rk16] = cpu_rotate(widen(to_bf16(q)), widen(to_bf16(k)));
          {  // bf16 -> fp32
            DeviceCopy<bf16> dq(to_bf16(q)), dk(to_bf16(k));
            DeviceCopy<float> oq(Host(q.size())), ok(Host(k.size()));
            ops::rope_qk(cuda{}, dq.data(), dk.data(), oq.data(), ok.data(), d_pos.data(), N, Hq, Hk, Dh, 1e4,
                         style, inverse);
            expect_close("rope_qk bf16->fp32 q" + tag, oq.host(), rq16);
            expect_close("rope_qk bf16->fp32 k" + tag, ok.host(), rk16);
          }
          {  // bf16 -> bf16 in place
            DeviceCopy<bf16> dq(to_bf16(q)), dk(to_bf16(k));
            ops::rope_qk(cuda{}, dq.data(), dk.data(), dq.data(), dk.data(), d_pos.data(), N, Hq, Hk, Dh, 1e4,
                         style, inverse);
            expect_bf16_of("rope_qk bf16 in place q" + tag, widen(dq.host()), rq16);
            expect_bf16_of("rope_qk bf16 in place k" + tag, widen(dk.host()), rk16);
          }
        }
      }
    }
  const int64_t N = 29, Hq = 4, Hk = 2;
  Ids pos = randint(N, rng, 0, 3000);
  DeviceCopy<int64_t> d_pos(pos);
  const Host q = randn(N * Hq * Dh, rng), k = randn(N * Hk * Dh, rng);
  DeviceCopy<float> dq(q), dk(k);
  EXPECT_THROW(ops::rope_qk(cuda{}, dq.data(), dk.data(), dq.data(), dk.data(), d_pos.data(), N, Hq, Hk, 15,
                            1e4, ops::RopeStyle::Half, false),
               Error);
}

// bf16 RoPE with 16-byte accesses (Dh a multiple of 16, aligned) against the per-pair kernel: bit for bit, in
// place and out of place, both styles, both directions; head counts past a run of 4 heads and not a multiple
// of it; token counts from a decoding step (one head per thread) to the training layout (every head in one
// thread). A row offset by one element (not 16-byte aligned) takes the per-pair kernel.
TEST_F(CudaCore, RopeQkBf16VectorisedMatchesThePerPairKernel) {
  Rng rng(43);
  struct Restore {
    bool on;
    ~Restore() { cuda_detail::set_rope_vectorised(on); }
  } const restore{cuda_detail::set_rope_vectorised(true)};
  struct Shape {
    int64_t Hq, Hk, Dh;
  };
  for (const Shape sh : {Shape{4, 2, 16}, Shape{11, 6, 48}, Shape{16, 16, 128}})
    for (const int64_t N : {int64_t{1}, int64_t{29}, int64_t{3000}})
      for (const auto style : {ops::RopeStyle::Interleaved, ops::RopeStyle::Half})
        for (const bool inverse : {false, true})
          for (const int64_t offset : {int64_t{0}, int64_t{1}}) {
            const std::string tag = "N " + std::to_string(N) + ", heads " + std::to_string(sh.Hq) + " + " +
                                    std::to_string(sh.Hk) + ", Dh " + std::to_string(sh.Dh) +
                                    (style == ops::RopeStyle::Half ? ", half" : ", interleaved") +
                                    (inverse ? ", inverse" : "") + (offset ? ", unaligned" : "");
            SCOPED_TRACE(tag);
            const int64_t nq = N * sh.Hq * sh.Dh, nk = N * sh.Hk * sh.Dh;
            DeviceCopy<int64_t> pos(randint(N, rng, 0, 5000));
            const std::vector<bf16> q = to_bf16(randn(nq + offset, rng)),
                                    k = to_bf16(randn(nk + offset, rng));
            // rotate(vectorised, in_place): q', k' (host)
            auto rotate = [&](bool vectorised, bool in_place) {
              cuda_detail::set_rope_vectorised(vectorised);
              // (out of place: the outputs start as the inputs, so the element before an unaligned view
              // matches the in-place reference, and an element left unwritten stays unrotated)
              DeviceCopy<bf16> dq(q), dk(k), oq(q), ok(k);
              bf16* q_out = in_place ? dq.data() : oq.data();
              bf16* k_out = in_place ? dk.data() : ok.data();
              ops::rope_qk(cuda{}, dq.data() + offset, dk.data() + offset, q_out + offset, k_out + offset,
                           pos.data(), N, sh.Hq, sh.Hk, sh.Dh, 5e5, style, inverse);
              return std::pair{in_place ? dq.host() : oq.host(), in_place ? dk.host() : ok.host()};
            };
            auto bits = [](const std::vector<bf16>& v) {
              std::vector<uint16_t> b(v.size());
              for (size_t i = 0; i < v.size(); ++i) b[i] = v[i].bits;
              return b;
            };
            const auto [ref_q, ref_k] = rotate(false, true);
            for (const bool in_place : {true, false}) {
              const auto [vq, vk] = rotate(true, in_place);
              EXPECT_EQ(bits(vq), bits(ref_q)) << "q, " << (in_place ? "in place" : "out of place");
              EXPECT_EQ(bits(vk), bits(ref_k)) << "k, " << (in_place ? "in place" : "out of place");
            }
            EXPECT_NE(bits(ref_q), bits(q)) << "the rotation changed nothing";
          }
}

// rope_qk_append (a cached attention step: RoPE of q in place, the rotated keys and the values into the cache
// rows, their segment ids zeroed) against the CPU's op, which is rope_qk followed by the copies; k and v stay
// as they were.
TEST_F(CudaCore, RopeQkAppendRotatesIntoTheCacheRows) {
  Rng rng(41);
  const int64_t Hq = 4, Hk = 2, Dh = 16, vw = Hk * Dh + 8;  // v rows wider than k rows
  for (const int64_t N : {int64_t{1}, int64_t{3}, int64_t{300}}) {
    for (const auto style : {ops::RopeStyle::Interleaved, ops::RopeStyle::Half}) {
      SCOPED_TRACE("N = " + std::to_string(N) + (style == ops::RopeStyle::Half ? " half" : " interleaved"));
      Ids pos = randint(N, rng, 0, 3000);
      const Host q = randn(N * Hq * Dh, rng), k = randn(N * Hk * Dh, rng), v = randn(N * vw, rng);
      Host rq = q, rk(k.size()), rv(v.size());
      Ids rseg(static_cast<size_t>(N), 7);
      ops::rope_qk_append(cpu{}, rq.data(), k.data(), v.data(), pos.data(), N, Hq, Hk, Dh, vw, 1e4, style,
                          rk.data(), rv.data(), rseg.data());
      DeviceCopy<int64_t> d_pos(pos), seg(Ids(static_cast<size_t>(N), 7));
      DeviceCopy<float> dq(q), dk(k), dv(v), kdst(Host(k.size(), -1.f)), vdst(Host(v.size(), -1.f));
      ops::rope_qk_append(cuda{}, dq.data(), dk.data(), dv.data(), d_pos.data(), N, Hq, Hk, Dh, vw, 1e4,
                          style, kdst.data(), vdst.data(), seg.data());
      expect_close("rope_qk_append q", dq.host(), rq);
      expect_close("rope_qk_append k rows", kdst.host(), rk);
      EXPECT_EQ(vdst.host(), v) << "v rows are copied";
      EXPECT_EQ(seg.host(), Ids(static_cast<size_t>(N), 0)) << "segment ids are zeroed";
      EXPECT_EQ(dk.host(), k) << "k is left alone";
      EXPECT_EQ(dv.host(), v) << "v is left alone";
      EXPECT_NE(rk, k) << "the keys were rotated";
    }
  }
}

// append_kv: strided k/v rows into a cache's next rows and their segment ids (given, or 0), one launch;
// rows before and after the appended ones untouched.
TEST_F(CudaCore, AppendKvCopiesRowsAndSegmentIds) {
  Rng rng(41);
  const int64_t rows = 5, kw = 12, vw = 8, ks = 20, vs = 9, cap = 9, at = 2;
  const Host k = randn(rows * ks, rng), v = randn(rows * vs, rng);
  const Ids seg = randint(rows, rng, 1, 100);
  for (const bool with_seg : {true, false}) {
    DeviceCopy<float> dk(k), dv(v), ck(Host(cap * kw, -1.f)), cv(Host(cap * vw, -2.f));
    DeviceCopy<int64_t> ds(seg), cs(Ids(cap, -3));
    ops::append_kv(cuda{}, ck.data() + at * kw, dk.data(), ks, kw, cv.data() + at * vw, dv.data(), vs, vw,
                   cs.data() + at, with_seg ? ds.data() : nullptr, rows);
    const Host gk = ck.host(), gv = cv.host();
    const Ids gs = cs.host();
    for (int64_t r = 0; r < cap; ++r) {
      const bool in = r >= at && r < at + rows;
      for (int64_t c = 0; c < kw; ++c)
        ASSERT_EQ(gk[sz(r * kw + c)], in ? k[sz((r - at) * ks + c)] : -1.f) << "k row " << r << " col " << c;
      for (int64_t c = 0; c < vw; ++c)
        ASSERT_EQ(gv[sz(r * vw + c)], in ? v[sz((r - at) * vs + c)] : -2.f) << "v row " << r << " col " << c;
      EXPECT_EQ(gs[sz(r)], in ? (with_seg ? seg[sz(r - at)] : 0) : -3) << "segment of row " << r;
    }
  }
}

// ---- cross-entropy
// -----------------------------------------------------------------------------------------

// V = 301 (warp per row) and V = 2000 (block per row); about one target in five is ignore_index. The mean
// loss is summed in double on both sides from per-row losses that differ by a few fp32 ulp: rtol 1e-6
// suffices.
TEST_F(CudaCore, CrossEntropyForwardBackwardMatchCpu) {
  Rng rng(41);
  for (const int64_t V : {int64_t(301), int64_t(2000)}) {
    const std::string tag = " V=" + std::to_string(V);
    const int64_t N = 37;
    const Host logits = randn(N * V, rng, 4.0);
    Ids targets = randint(N, rng, 0, V);
    for (int64_t n = 0; n < N; n += 5) targets[sz(n)] = -100;
    Host losses(sz(N)), dlogits(sz(N * V));
    DeviceCopy<float> d_logits(logits), d_losses(losses), d_dlogits(dlogits);
    DeviceCopy<int64_t> d_targets(targets);

    const double loss = ops::cross_entropy_forward(cpu{}, losses.data(), logits.data(), targets.data(), N, V);
    const double gloss =
        ops::cross_entropy_forward(cuda{}, d_losses.data(), d_logits.data(), d_targets.data(), N, V);
    EXPECT_NEAR(gloss, loss, 1e-6 * std::abs(loss)) << tag;
    expect_close("ce losses" + tag, d_losses.host(), losses);
    EXPECT_NEAR(ops::cross_entropy_forward(cuda{}, nullptr, d_logits.data(), d_targets.data(), N, V), loss,
                1e-6 * std::abs(loss))
        << "losses = nullptr" << tag;

    ops::cross_entropy_backward(cpu{}, dlogits.data(), logits.data(), targets.data(), N, V, 1.7);
    ops::cross_entropy_backward(cuda{}, d_dlogits.data(), d_logits.data(), d_targets.data(), N, V, 1.7);
    expect_close("ce dlogits" + tag, d_dlogits.host(), dlogits);
  }
}

TEST_F(CudaCore, CrossEntropyIgnoredAndBadTargets) {
  const int64_t N = 3, V = 5;
  Rng rng(42);
  const Host logits = randn(N * V, rng);
  DeviceCopy<float> d_logits(logits), d_dlogits(Host(sz(N * V), 7.f));
  DeviceCopy<int64_t> all_ignored(Ids{-1, -1, -1});
  EXPECT_EQ(ops::cross_entropy_forward(cuda{}, nullptr, d_logits.data(), all_ignored.data(), N, V, -1), 0.0);
  ops::cross_entropy_backward(cuda{}, d_dlogits.data(), d_logits.data(), all_ignored.data(), N, V, 1.0, -1);
  EXPECT_EQ(d_dlogits.host(), Host(sz(N * V), 0.f));

  DeviceCopy<int64_t> bad(Ids{0, 5, -100});
  try {
    ops::cross_entropy_forward(cuda{}, nullptr, d_logits.data(), bad.data(), N, V);
    ADD_FAILURE() << "expected tessera::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("target 5 of row 1"), std::string::npos) << e.what();
  }
  ops::cross_entropy_backward(cuda{}, d_dlogits.data(), d_logits.data(), bad.data(), N, V, 1.0);
  const Host g = d_dlogits.host();
  EXPECT_TRUE(all_nan(g, 5, 10)) << "row with a bad target";
  EXPECT_FALSE(std::isnan(g[0]));
  EXPECT_EQ(g[10], 0.f);  // ignored row
}

// ---- entropies -------------------------------------------------------------------------------------------

// The CPU computes in double; the GPU sums e^z and e^z z in fp32 (relative error ~1e-7 * log2 V) and does the
// final log and division in double. Entropies are <= log V ~ 7.6, so kRtol (relative to the largest) is an
// absolute ~7e-5 budget, ~100x the expected error; a wrong row or a missing max shift is off by O(1).
TEST_F(CudaCore, EntropiesMatchCpu) {
  Rng rng(51);
  for (const int64_t V : {int64_t(260), int64_t(2000)}) {
    const int64_t rows = 37;
    Host logits = randn(rows * V, rng, 3.0);
    for (int64_t v = 0; v < V; ++v) logits[sz(V + v)] = v == 7 ? 80.f : 0.f;  // row 1: nearly one-hot
    Host h(sz(rows));
    blt::entropies_from_logits(logits.data(), rows, V, h.data());
    DeviceCopy<float> d_logits(logits), d_h(Host(sz(rows)));
    blt::entropies_from_logits(cuda{}, d_logits.data(), rows, V, d_h.data());
    expect_close("entropies V=" + std::to_string(V), d_h.host(), h);
  }
}

// ---- LayerNorm -------------------------------------------------------------------------------------------

// Both row-kernel shapes (D <= 1024 warp per row, above block per row), N large enough for several dw/db row
// groups, with and without affine parameters; dw and db start non-zero (accumulated).
TEST_F(CudaCore, LayerNormForwardBackwardMatchCpu) {
  Rng rng(61);
  struct Case {
    int64_t N, D;
    bool affine;
  };
  for (const Case c : {Case{37, 301, true}, Case{5, 3000, false}, Case{300, 96, true}}) {
    const std::string tag = " N=" + std::to_string(c.N) + " D=" + std::to_string(c.D);
    const int64_t n = c.N * c.D;
    Host x = randn(n, rng, 2.0);
    for (float& v : x) v += 3.f;  // a non-zero mean
    const Host dy = randn(n, rng);
    Host w = randn(c.D, rng), b = randn(c.D, rng);
    for (float& v : w) v += 1.f;
    Host y(sz(n)), mean(sz(c.N)), rstd(sz(c.N)), dx(sz(n)), dw = randn(c.D, rng), db = randn(c.D, rng);
    DeviceCopy<float> d_x(x), d_dy(dy), d_w(w), d_b(b), d_y(y), d_mean(mean), d_rstd(rstd), d_dx(dx),
        d_dw(dw), d_db(db);
    const float* wp = c.affine ? w.data() : nullptr;
    const float* bp = c.affine ? b.data() : nullptr;

    ops::layernorm_forward(cpu{}, y.data(), mean.data(), rstd.data(), x.data(), wp, bp, c.N, c.D, 1e-5);
    ops::layernorm_forward(cuda{}, d_y.data(), d_mean.data(), d_rstd.data(), d_x.data(),
                           c.affine ? d_w.data() : nullptr, c.affine ? d_b.data() : nullptr, c.N, c.D, 1e-5);
    expect_close("layernorm y" + tag, d_y.host(), y);
    expect_close("layernorm mean" + tag, d_mean.host(), mean);
    expect_close("layernorm rstd" + tag, d_rstd.host(), rstd);

    ops::layernorm_backward(cpu{}, dx.data(), c.affine ? dw.data() : nullptr, c.affine ? db.data() : nullptr,
                            dy.data(), x.data(), wp, mean.data(), rstd.data(), c.N, c.D);
    ops::layernorm_backward(cuda{}, d_dx.data(), c.affine ? d_dw.data() : nullptr,
                            c.affine ? d_db.data() : nullptr, d_dy.data(), d_x.data(),
                            c.affine ? d_w.data() : nullptr, d_mean.data(), d_rstd.data(), c.N, c.D);
    expect_close("layernorm dx" + tag, d_dx.host(), dx);
    expect_close("layernorm dw" + tag, d_dw.host(), dw);
    expect_close("layernorm db" + tag, d_db.host(), db);
  }
}

// ---- segment pooling -------------------------------------------------------------------------------------

namespace {
// 301 rows in 37 unsorted segments, ~10% padding rows (-1), segment 5 empty, and duplicated rows inside
// segments so that max pooling has exact ties (the first row must win).
struct SegmentCase {
  int64_t N = 301, S = 37, D = 53;
  Ids seg;
  Host x;
  explicit SegmentCase(Rng& rng) {
    seg = randint(N, rng, -4, S);
    for (auto& s : seg) {
      if (s < 0) s = -1;
      if (s == 5) s = 6;
    }
    x = randn(N * D, rng);
    for (int64_t n = 1; n < N; n += 7)
      for (int64_t m = 0; m < n; ++m)
        if (seg[sz(m)] == seg[sz(n)]) {  // row n copies an earlier row of its segment
          std::copy_n(x.begin() + m * D, D, x.begin() + n * D);
          break;
        }
  }
};
}  // namespace

// Max pooling moves values (no arithmetic): out and argmax must equal the CPU's exactly; backward adds one
// value per element of dx (exact too).
TEST_F(CudaCore, SegmentMaxForwardBackwardMatchCpu) {
  Rng rng(71);
  const SegmentCase c(rng);
  const int64_t N = c.N, S = c.S, D = c.D;
  Host out(sz(S * D)), dx = randn(N * D, rng);
  Ids argmax(sz(S * D));
  const Host dout = randn(S * D, rng);
  DeviceCopy<float> d_x(c.x), d_out(out), d_dout(dout), d_dx(dx);
  DeviceCopy<int64_t> d_seg(c.seg), d_argmax(argmax);

  ops::segment_max_forward(cpu{}, out.data(), argmax.data(), c.x.data(), c.seg.data(), N, S, D);
  ops::segment_max_forward(cuda{}, d_out.data(), d_argmax.data(), d_x.data(), d_seg.data(), N, S, D);
  expect_equal("segment max out", d_out.host(), out);
  expect_equal("segment max argmax", d_argmax.host(), argmax);

  ops::segment_max_backward(cpu{}, dx.data(), dout.data(), argmax.data(), S, D);
  ops::segment_max_backward(cuda{}, d_dx.data(), d_dout.data(), d_argmax.data(), S, D);
  expect_equal("segment max dx", d_dx.host(), dx);
}

// Mean pooling sums each segment's rows in row order on both sides (then one multiply): results agree to
// rounding (in practice bit for bit); backward adds dout / count.
TEST_F(CudaCore, SegmentMeanForwardBackwardMatchCpu) {
  Rng rng(72);
  const SegmentCase c(rng);
  const int64_t N = c.N, S = c.S, D = c.D;
  Host out(sz(S * D)), dx = randn(N * D, rng);
  const Host dout = randn(S * D, rng);
  DeviceCopy<float> d_x(c.x), d_out(out), d_dout(dout), d_dx(dx);
  DeviceCopy<int64_t> d_seg(c.seg);

  ops::segment_mean_forward(cpu{}, out.data(), c.x.data(), c.seg.data(), N, S, D);
  ops::segment_mean_forward(cuda{}, d_out.data(), d_x.data(), d_seg.data(), N, S, D);
  expect_close("segment mean out", d_out.host(), out);

  ops::segment_mean_backward(cpu{}, dx.data(), dout.data(), c.seg.data(), N, S, D);
  ops::segment_mean_backward(cuda{}, d_dx.data(), d_dout.data(), d_seg.data(), N, S, D);
  expect_close("segment mean dx", d_dx.host(), dx);
}

// ---- patch ids
// ---------------------------------------------------------------------------------------------

// Rows with zero-length patches in the middle and at the start of the padding, lengths summing to less than
// T (positions past the end take the last patch) and to more than T.
TEST_F(CudaCore, PatchIdsFromLengthsMatchCpu) {
  const int64_t B = 4, P = 9, T = 23;
  const Ids lengths = {1,  3, 0, 2, 5, 0, 0, 0, 0,  //
                       0,  4, 4, 4, 4, 4, 4, 4, 4,  //
                       23, 0, 0, 0, 0, 0, 0, 0, 0,  //
                       2,  2, 2, 2, 2, 2, 2, 2, 2};
  Ids ref(sz(B * T));
  patchers::patch_ids_from_lengths(lengths.data(), B, P, T, ref.data());
  DeviceCopy<int64_t> d_len(lengths), d_out(Ids(sz(B * T), -7));
  patchers::patch_ids_from_lengths(cuda{}, d_len.data(), B, P, T, d_out.data());
  expect_equal("patch ids", d_out.host(), ref);

  // A longer random batch through the same path.
  Rng rng(81);
  const int64_t B2 = 3, P2 = 61, T2 = 301;
  const Ids len2 = randint(B2 * P2, rng, 0, 9);
  Ids ref2(sz(B2 * T2));
  patchers::patch_ids_from_lengths(len2.data(), B2, P2, T2, ref2.data());
  DeviceCopy<int64_t> d_len2(len2), d_out2(Ids(sz(B2 * T2)));
  patchers::patch_ids_from_lengths(cuda{}, d_len2.data(), B2, P2, T2, d_out2.data());
  expect_equal("patch ids (random)", d_out2.host(), ref2);
}

// ---- BLT hash n-gram ids and hash embedding
// ------------------------------------------------------------------

// Exact integer arithmetic: byte ids and arbitrary int64 ids (negative hashes exercise the floor-mod), n-gram
// sizes 1..8 and primes above 2^32 (the products wrap mod 2^64).
TEST_F(CudaCore, HashNgramIdsMatchCpuExactly) {
  Rng rng(91);
  const int64_t B = 3, T = 301;
  for (const bool bytes : {true, false}) {
    Ids ids(sz(B * T));
    for (auto& v : ids)
      v = bytes ? static_cast<int64_t>(rng.next_u64() % 260) : static_cast<int64_t>(rng.next_u64());
    DeviceCopy<int64_t> d_ids(ids);
    for (const int n : {1, 3, 8})
      for (const int64_t prime : {blt::kHashPrimes[0], blt::kHashPrimes[1], blt::kHashPrimes[6]}) {
        const int64_t M = 500002;
        Ids ref(sz(B * T));
        blt::hash_ngram_ids_batch(ids.data(), B, T, n, M, ref.data(), prime);
        DeviceCopy<int64_t> d_out(Ids(sz(B * T), -1));
        blt::hash_ngram_ids_batch(cuda{}, d_ids.data(), B, T, n, M, d_out.data(), prime);
        expect_equal("hash ids n=" + std::to_string(n) + " prime=" + std::to_string(prime) +
                         (bytes ? " (bytes)" : " (int64)"),
                     d_out.host(), ref);
      }
  }
}

// Stacked ids of 2 functions x 3 sizes (dim 19: the per-element kernel) and of 3 functions x 3 sizes (dim 32:
// the row kernel, 9 tables: a group of eight loads and one more), then the summed embedding forward (one
// out-of-range byte id: a NaN row) and its backward.
TEST_F(CudaCore, StackedHashEmbeddingMatchesCpu) {
  Rng rng(92);
  for (const auto& [dim, functions] : {std::pair<int64_t, int64_t>{19, 2}, {32, 3}}) {
    SCOPED_TRACE("dim " + std::to_string(dim) + ", functions " + std::to_string(functions));
    blt::HashConfig hc;
    hc.group_sizes = {3, 4, 6};
    hc.n_functions = functions;
    hc.table_size = 50;
    hc.vocab_size = 260;
    hc.dim = dim;
    const int64_t B = 2, T = 37, N = B * T, nt = hc.n_tables(), D = hc.dim, rows = nt * hc.table_size;
    const Ids ids = randint(N, rng, 0, hc.vocab_size);
    Ids hid(sz(nt * N));
    blt::stacked_hash_ids(hc, ids.data(), B, T, hid.data());
    DeviceCopy<int64_t> d_ids(ids), d_hid(Ids(sz(nt * N), -1));
    blt::stacked_hash_ids(cuda{}, hc, d_ids.data(), B, T, d_hid.data());
    expect_equal("stacked hash ids", d_hid.host(), hid);

    const Host byte_table = randn(hc.vocab_size * D, rng), hash_table = randn(rows * D, rng),
               dy = randn(N * D, rng);
    Host y(sz(N * D)), dbyte = randn(hc.vocab_size * D, rng), dhash = randn(rows * D, rng);
    DeviceCopy<float> d_bt(byte_table), d_ht(hash_table), d_dy(dy), d_y(y), d_dbyte(dbyte), d_dhash(dhash);
    blt::hash_embedding_forward(cpu{}, y.data(), ids.data(), hid.data(), byte_table.data(), hash_table.data(),
                                N, nt, hc.vocab_size, D);
    blt::hash_embedding_forward(cuda{}, d_y.data(), d_ids.data(), d_hid.data(), d_bt.data(), d_ht.data(), N,
                                nt, hc.vocab_size, D);
    expect_close("hash embedding y", d_y.host(), y);

    blt::hash_embedding_backward(cpu{}, dbyte.data(), dhash.data(), dy.data(), ids.data(), hid.data(), N, nt,
                                 hc.vocab_size, rows, D);
    blt::hash_embedding_backward(cuda{}, d_dbyte.data(), d_dhash.data(), d_dy.data(), d_ids.data(),
                                 d_hid.data(), N, nt, hc.vocab_size, rows, D);
    expect_close("hash embedding dbyte", d_dbyte.host(), dbyte);
    expect_close("hash embedding dhash", d_dhash.host(), dhash);

    // An out-of-range byte id gives a NaN row (the other rows as before).
    Ids bad = ids;
    bad[5] = hc.vocab_size;
    DeviceCopy<int64_t> d_bad(bad);
    blt::hash_embedding_forward(cuda{}, d_y.data(), d_bad.data(), d_hid.data(), d_bt.data(), d_ht.data(), N,
                                nt, hc.vocab_size, D);
    const Host yb = d_y.host();
    for (int64_t r = 0; r < N; ++r)
      for (int64_t c = 0; c < D; ++c) {
        const float v = yb[sz(r * D + c)];
        if (r == 5)
          ASSERT_TRUE(std::isnan(v)) << "row 5 col " << c;
        else
          ASSERT_FLOAT_EQ(v, y[sz(r * D + c)]) << "row " << r << " col " << c;
      }
  }
}

// ---- AdamW and clipping
// ------------------------------------------------------------------------------------

// Three steps with fresh gradients, weight decay on. Both sides evaluate each element's update in double and
// round once (the GPU without FMA contraction; the per-step scalars come from the same host code), so they
// agree bit for bit unless the CPU build contracts its loop into FMAs (-march=native may), which moves an
// fp32 result by at most 1 ulp; after 3 steps rtol 1e-6 (~8 ulp) is ample, a wrong formula is off by far
// more. The bf16 copy must be exactly the RNE rounding of the GPU's fp32 weights. Offset 0: aligned tensors
// (the kernel's 4-wide path, plus its one-by-one path for the tail of 4099 = 4 * 1024 + 3); offset 1:
// misaligned pointers (one by one only). Step 2 reads the gradients scaled by a clipping coefficient on both
// sides. Every route of the 4-wide path (adamw.cu: loads ahead on the default grid, loads ahead on a grid of
// one block, where each thread walks four groups, and the plain grid-stride pass) gives the same bits.
TEST_F(CudaCore, AdamWThreeStepsMatchCpu) {
  struct Restore {
    cuda_detail::AdamWRoute was;
    ~Restore() { cuda_detail::set_adamw_route(was); }
  } const restore{cuda_detail::set_adamw_route({})};
  const std::pair<const char*, cuda_detail::AdamWRoute> routes[] = {
      {"loads ahead", {true, 0}}, {"loads ahead, one block", {true, 1}}, {"grid-stride", {false, 0}}};
  for (const int64_t offset : {0, 1}) {
    std::vector<float> first_route_p;
    for (const auto& [route_name, route] : routes) {
      SCOPED_TRACE(std::string(route_name) + ", offset " + std::to_string(offset));
      cuda_detail::set_adamw_route(route);
      Rng rng(101);
      const int64_t n = 4099;
      Host p = randn(n + offset, rng), m(sz(n + offset), 0.f), v(sz(n + offset), 0.f);
      DeviceCopy<float> d_p(p), d_m(m), d_v(v);
      DeviceCopy<bf16> d_pb(std::vector<bf16>(sz(n + offset)));
      for (int64_t t = 1; t <= 3; ++t) {
        const Host g = randn(n + offset, rng, 0.1);
        DeviceCopy<float> d_g(g);
        const float grad_scale = t == 2 ? 0.37f : 1.f;  // step 2 folds a clipping coefficient in
        train::adamw_update(cpu{}, p.data() + offset, g.data() + offset, m.data() + offset, v.data() + offset,
                            n, 1e-2, 0.9, 0.95, 1e-8, 0.1, t, grad_scale);
        train::adamw_update(cuda{}, d_p.data() + offset, d_g.data() + offset, d_m.data() + offset,
                            d_v.data() + offset, n, 1e-2, 0.9, 0.95, 1e-8, 0.1, t,
                            t == 3 ? d_pb.data() + offset : nullptr, grad_scale);
      }
      const Host gp = d_p.host();
      expect_close("adamw p", gp, p, 1e-6);
      expect_close("adamw m", d_m.host(), m, 1e-6);
      expect_close("adamw v", d_v.host(), v, 1e-6);
      const std::vector<bf16> pb = d_pb.host();
      for (int64_t i = offset; i < n + offset; ++i)
        ASSERT_EQ(pb[sz(i)].bits, bf16(gp[sz(i)]).bits) << "bf16 copy of p[" << i << "] = " << gp[sz(i)];
      if (first_route_p.empty()) {
        first_route_p = gp;
      } else {
        for (size_t i = 0; i < gp.size(); ++i)
          ASSERT_EQ(std::bit_cast<uint32_t>(gp[i]), std::bit_cast<uint32_t>(first_route_p[i]))
              << "p[" << i << "] differs from the first route's";
      }
    }
  }
}

namespace {
/// Runs add(d_s) twice, each time on a fresh device accumulator holding `start`: the sum must be within 1e-12
/// of ref (the summation order of ~1e5 double terms differs from the double loop) and equal in both runs.
template <class Add>
void expect_sumsq_twice(const std::string& what, double start, double ref, Add add) {
  double first = 0;
  for (int run = 0; run < 2; ++run) {
    DeviceCopy<double> d_s(std::vector<double>{start});
    add(d_s.data());
    const double s = d_s.host()[0];
    EXPECT_NEAR(s, ref, 1e-12 * ref) << what;
    if (run == 0)
      first = s;
    else
      EXPECT_EQ(s, first) << what << ": not deterministic";
  }
}
}  // namespace

// Sum of squares over three tensors accumulated in one device double (vs a double loop: relative 1e-12 allows
// for the different summation order of ~2e5 double terms), deterministic, then clipping by the CPU's rule.
// Lengths not multiples of 4 (the 16-byte loads leave a tail); the third starts off a 16-byte boundary
// (element loads only).
TEST_F(CudaCore, GradNormAndClipMatchCpu) {
  Rng rng(102);
  const Host g1 = randn(100003, rng), g2 = randn(777, rng, 3.0);
  double ref = 0;
  for (float x : g1) ref += double(x) * x;
  for (float x : g2) ref += double(x) * x;
  for (size_t i = 1; i < g1.size(); ++i) ref += double(g1[i]) * g1[i];
  DeviceCopy<float> d_g1(g1), d_g2(g2);
  expect_sumsq_twice("one by one", 0.0, ref, [&](double* s) {
    train::grad_sumsq(cuda{}, s, d_g1.data(), 100003);
    train::grad_sumsq(cuda{}, s, d_g2.data(), 777);
    train::grad_sumsq(cuda{}, s, d_g1.data() + 1, 100002);
  });
  // The same three as one list (one launch and a final sum).
  const std::vector<const float*> gs = {d_g1.data(), d_g2.data(), d_g1.data() + 1};
  const std::vector<int64_t> ns = {100003, 777, 100002};
  expect_sumsq_twice("list", 0.0, ref, [&](double* s) { train::grad_sumsq(cuda{}, s, gs, ns); });

  const double norm = std::sqrt(ref);
  DeviceCopy<double> d_s(std::vector<double>{ref});
  for (const double max_norm : {2.0 * norm, 0.5 * norm, 0.0}) {
    DeviceCopy<float> d_g(g2);
    train::clip_scale_grads(cuda{}, d_g.data(), 777, d_s.data(), max_norm);
    Host want = g2;
    const double coef = max_norm / (norm + 1e-6);
    if (max_norm > 0 && coef < 1.0)
      for (float& x : want) x *= static_cast<float>(coef);
    expect_close("clip max_norm=" + std::to_string(max_norm), d_g.host(), want, 1e-6);
  }
}

// grad_sumsq over a list longer than one launch takes (150 tensors, 64 per launch): empty tensors, lengths
// around the 4-float loads and the 2^17-element chunks a block sums, views starting off a 16-byte boundary;
// added to what *sumsq held, against a double loop, twice (deterministic).
TEST_F(CudaCore, GradSumsqOverManyTensors) {
  Rng rng(103);
  const Host pool = randn(1 << 20, rng);
  DeviceCopy<float> d_pool(pool);
  const int64_t sizes[] = {0, 1, 3, 4, 5, 1000, 131072, 131073, 262151, 7};
  std::vector<const float*> gs;
  std::vector<int64_t> ns;
  double ref = 2.5;  // already in the accumulator
  int64_t offset = 0;
  for (int k = 0; k < 150; ++k) {
    const int64_t n = sizes[k % 10], off = (offset + k) % ((1 << 20) - 262151);  // any float offset
    gs.push_back(d_pool.data() + off);
    ns.push_back(n);
    for (int64_t i = 0; i < n; ++i) ref += double(pool[sz(off + i)]) * pool[sz(off + i)];
    offset += 9973;
  }
  expect_sumsq_twice("150 tensors", 2.5, ref, [&](double* s) { train::grad_sumsq(cuda{}, s, gs, ns); });
  DeviceCopy<double> d_s(std::vector<double>{0.0});
  EXPECT_THROW(train::grad_sumsq(cuda{}, d_s.data(), gs, std::span<const int64_t>(ns).first(3)), Error);
  ns[4] = -1;
  EXPECT_THROW(train::grad_sumsq(cuda{}, d_s.data(), gs, ns), Error);
}

// ---- bf16 GEMM
// -----------------------------------------------------------------------------------------------

// A and B are rounded to bf16 (8 significant bits: relative error <= 2^-8 per input, so <= ~2^-7 per product)
// and the products are accumulated in fp32. Against the fp32 CPU GEMM on the unrounded inputs the error of
// C[i,j] is therefore bounded by |alpha| 2^-7 (|A||B|)[i,j] plus fp32 accumulation (1e-5 of the scale); we
// check that bound with 5% slack. A transposed or misindexed operand is off by ~|C|, about sqrt(K) times the
// typical bound, and fails. Against the CPU GEMM on the bf16-rounded inputs (exact products) only the
// accumulation differs: 1e-4 of (|A||B|)[i,j]. bf16 C output adds one rounding: 2^-8 |C|.
TEST_F(CudaCore, GemmBf16MatchesCpuWithinBf16Rounding) {
  Rng rng(111);
  const int64_t M = 37, N = 29, K = 301, pad = 3;
  const float alpha = 0.75f, beta = 0.5f;
  auto absv = [](Host h) {
    for (float& x : h) x = std::abs(x);
    return h;
  };
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const std::string tag = " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb);
      const int64_t arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
      const int64_t lda = acols + pad, ldb = bcols + pad, ldc = N + pad;
      const Host A = randn(arows * lda, rng), B = randn(brows * ldb, rng), C0 = randn(M * ldc, rng);
      const std::vector<bf16> Ab = to_bf16(A), Bb = to_bf16(B), Cb = to_bf16(C0);
      const Host Ar = widen(Ab), Br = widen(Bb), Cr = widen(Cb);

      Host exact = C0, rounded = C0, mag(sz(M * ldc), 0.f), rounded_c = Cr;
      ops::gemm(cpu{}, ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, exact.data(), ldc);
      ops::gemm(cpu{}, ta, tb, M, N, K, alpha, Ar.data(), lda, Br.data(), ldb, beta, rounded.data(), ldc);
      ops::gemm(cpu{}, ta, tb, M, N, K, alpha, Ar.data(), lda, Br.data(), ldb, beta, rounded_c.data(), ldc);
      const Host aA = absv(A), aB = absv(B);
      ops::gemm(cpu{}, ta, tb, M, N, K, std::abs(alpha), aA.data(), lda, aB.data(), ldb, 0.f, mag.data(),
                ldc);
      double scale = 0;
      for (float x : exact) scale = std::max(scale, std::abs(double(x)));

      DeviceCopy<bf16> d_A(Ab), d_B(Bb), d_Cb(Cb);
      DeviceCopy<float> d_C(C0);
      ops::gemm(cuda{}, ta, tb, M, N, K, alpha, d_A.data(), lda, d_B.data(), ldb, beta, d_C.data(), ldc);
      ops::gemm(cuda{}, ta, tb, M, N, K, alpha, d_A.data(), lda, d_B.data(), ldb, beta, d_Cb.data(), ldc);
      const Host got = d_C.host(), got_b = widen(d_Cb.host());
      int bad = 0;
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < ldc; ++j) {
          const size_t k = sz(i * ldc + j);
          if (j >= N) {  // padding columns stay as they were
            EXPECT_EQ(got[k], C0[k]) << tag;
            EXPECT_EQ(got_b[k], Cr[k]) << tag;
            continue;
          }
          const double bound = 1.05 * std::ldexp(double(mag[k]), -7) + 1e-5 * scale;
          const double tight = 1e-4 * double(mag[k]) + 1e-6 * scale;
          const double out_round = std::ldexp(std::abs(double(rounded_c[k])), -8);
          if (std::abs(double(got[k]) - exact[k]) > bound && ++bad <= 5)
            ADD_FAILURE() << "bf16 gemm vs fp32" << tag << " [" << i << "," << j << "]: " << got[k] << " vs "
                          << exact[k] << " (bound " << bound << ")";
          if (std::abs(double(got[k]) - rounded[k]) > tight && ++bad <= 5)
            ADD_FAILURE() << "bf16 gemm vs rounded inputs" << tag << " [" << i << "," << j << "]: " << got[k]
                          << " vs " << rounded[k];
          if (std::abs(double(got_b[k]) - rounded_c[k]) > tight + out_round && ++bad <= 5)
            ADD_FAILURE() << "bf16 gemm, bf16 C" << tag << " [" << i << "," << j << "]: " << got_b[k]
                          << " vs " << rounded_c[k];
        }
      EXPECT_EQ(bad, 0) << tag;
    }
}

TEST_F(CudaCore, BadSizesAreTesseraErrors) {
  DeviceCopy<float> f(Host(16, 0.f));
  DeviceCopy<int64_t> i(Ids(16, 0));
  EXPECT_THROW(ops::swiglu_forward(cuda{}, f.data(), f.data(), f.data(), 2, 8, 4), Error);  // stride < H
  EXPECT_THROW(
      ops::layernorm_forward(cuda{}, f.data(), nullptr, nullptr, f.data(), nullptr, nullptr, 2, 0, 1e-5),
      Error);
  EXPECT_THROW(ops::segment_mean_forward(cuda{}, f.data(), f.data(), i.data(), -1, 2, 2), Error);
  EXPECT_THROW(patchers::patch_ids_from_lengths(cuda{}, i.data(), 1, 0, 4, i.data()), Error);
  EXPECT_THROW(blt::hash_ngram_ids_batch(cuda{}, i.data(), 1, 4, 0, 10, i.data()), Error);
  EXPECT_THROW(
      train::adamw_update(cuda{}, f.data(), f.data(), f.data(), f.data(), 16, 1e-3, 0.9, 0.95, 1e-8, 0, 0),
      Error);
  DeviceCopy<bf16> b(std::vector<bf16>(16));
  EXPECT_THROW(ops::gemm(cuda{}, false, false, 2, 2, 3, 1.f, b.data(), 2, b.data(), 2, 0.f, f.data(), 2),
               Error);
}
