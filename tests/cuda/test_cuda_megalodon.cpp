// CPU vs CUDA parity for Megalodon's ops on the GPU: CEMA (cuda/cema.cu), TimestepNorm (cuda/timestep_norm.cu)
// and flash-style attention with position-only masks (cuda/attention.cu). Both backends run on the same random
// fp32 inputs; every test skips itself (with a message) when no CUDA device is visible.
//
// Outputs that the op must overwrite start as NaN on the device, so an element the GPU never writes fails.
// Gradients that the op accumulates into start from the same random values on both sides.
//
// Tolerance (expect_close): |gpu - cpu| <= rtol |cpu| + rtol max|cpu|, elementwise, rtol = 1e-4 (~800 ulp of
// fp32). The two sides agree only to rounding, and more loosely than plain row ops:
//   CEMA:      float recurrences whose rounding is carried through 1/(1-|q|) steps (the CPU vectorises the
//              scan, fuses differently and reduces parameter sums in double over B*L terms; the GPU's fp32
//              coefficients differ from the CPU's by the last bit of expf/cosf/sinf).
//   TSN:       the CPU keeps the running statistics in double, the GPU in Kahan-compensated fp32 (as the
//              official CUDA kernel); the backward carries run over L steps.
//   attention: scores feed exp(): an absolute score error e becomes a relative probability error e, and
//              scores reach ~10 here, so ~1e-6 relative on the dot products shows as ~1e-5 on the outputs.
// An indexing, masking or chaining mistake produces O(1) relative errors, far above 1e-4.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "support/cuda_testing.hpp"
#include "support/gradcheck.hpp"
#include "tessera/core/allocator.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/ops/attention.hpp"
#include "tessera/ops/cema.hpp"
#include "tessera/ops/timestep_norm.hpp"

using namespace tessera;
using cfloat = std::complex<float>;

using tessera::testing::DeviceCopy;

namespace {

constexpr double kRtol = 1e-4;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class CudaMegalodon : public tessera::testing::CudaTest {};

/// n copies of v (a function, so `DeviceCopy<float> d(filled<float>(n))` is not a vexing parse).
template <class T>
std::vector<T> filled(int64_t n, T v = T{}) {
  return std::vector<T>(static_cast<size_t>(n), v);
}

std::vector<float> randn(int64_t n, Rng& rng, double scale = 1.0, double mean = 0.0) {
  std::vector<float> v(static_cast<size_t>(n));
  tessera::testing::fill_normal(v.data(), n, rng, scale);
  for (float& x : v) x += static_cast<float>(mean);
  return v;
}

std::vector<cfloat> crandn(int64_t n, Rng& rng, double scale = 1.0) {
  std::vector<cfloat> v(static_cast<size_t>(n));
  for (cfloat& z : v) z = cfloat(static_cast<float>(rng.normal() * scale), static_cast<float>(rng.normal() * scale));
  return v;
}

std::vector<float> as_floats(const std::vector<cfloat>& z) {
  std::vector<float> f;
  f.reserve(2 * z.size());
  for (const cfloat& c : z) {
    f.push_back(c.real());
    f.push_back(c.imag());
  }
  return f;
}

/// Elementwise comparison (see the tolerance note at the top; tessera::testing::expect_elementwise_close).
void expect_close(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& ref,
                  double rtol = kRtol) {
  tessera::testing::expect_elementwise_close(what, gpu, ref, rtol);
}

void expect_close(const std::string& what, const std::vector<cfloat>& gpu, const std::vector<cfloat>& ref,
                  double rtol = kRtol) {
  expect_close(what, as_floats(gpu), as_floats(ref), rtol);
}

// ---- CEMA ----------------------------------------------------------------------------------------------

/// Raw CEMA parameters, drawn a little wider than the official init (alpha, delta ~ N(0, 0.2^2)) so |q| spans
/// roughly 0.5 .. 0.95 while the recurrence stays well conditioned in fp32.
struct CemaHostParams {
  std::vector<float> alpha, delta, theta, gamma, omega;
  CemaHostParams(int64_t D, int64_t N, Rng& rng)
      : alpha(randn(D * N, rng, 0.5)),
        delta(randn(D * N, rng, 0.5)),
        theta(randn(D, rng, 1.0)),
        gamma(randn(D * N * 2, rng, 1.0)),
        omega(randn(D, rng, 0.25)) {}
};

struct CemaDevParams {
  DeviceCopy<float> alpha, delta, theta, gamma, omega;
  explicit CemaDevParams(const CemaHostParams& h)
      : alpha(h.alpha), delta(h.delta), theta(h.theta), gamma(h.gamma), omega(h.omega) {}
  ops::CemaParams<float> params() {
    return {alpha.data(), delta.data(), theta.data(), gamma.data(), omega.data()};
  }
};

ops::CemaParams<float> host_params(const CemaHostParams& h) {
  return {h.alpha.data(), h.delta.data(), h.theta.data(), h.gamma.data(), h.omega.data()};
}

struct CemaCase {
  int64_t B, L, D, N;
  bool with_hx, with_dh;
};

std::string tag(const CemaCase& c) {
  return "B=" + std::to_string(c.B) + " L=" + std::to_string(c.L) + " D=" + std::to_string(c.D) +
         " N=" + std::to_string(c.N) + (c.with_hx ? " hx" : " no-hx") + (c.with_dh ? " dh" : "");
}

}  // namespace

// Forward and backward against the CPU scan for L in {1, 37, 300}, with and without a carried state, several
// state counts (N = 3 leaves odd thread layouts; N = 16 is the 7B configuration) and channel counts that do
// not fill the last block.
TEST_F(CudaMegalodon, CemaForwardBackwardMatchCpu) {
  Rng rng(11);
  const CemaCase cases[] = {
      {3, 1, 5, 8, true, true},     {2, 1, 7, 16, false, false}, {2, 37, 50, 3, true, false},
      {3, 37, 9, 8, false, true},   {2, 300, 33, 16, true, true}, {1, 300, 5, 8, false, false},
      {2, 300, 20, 64, true, true},
  };
  for (const CemaCase& c : cases) {
    SCOPED_TRACE(tag(c));
    const ops::CemaDims dm{c.B, c.L, c.D, c.N};
    const int64_t n_tok = c.B * c.L * c.D, n_st = c.B * c.D * c.N;
    const CemaHostParams hp(c.D, c.N, rng);
    CemaDevParams dp(hp);
    const std::vector<float> u = randn(n_tok, rng), dy = randn(n_tok, rng);
    const std::vector<cfloat> hx = crandn(n_st, rng), dh = crandn(n_st, rng);
    const cfloat* hx_h = c.with_hx ? hx.data() : nullptr;
    const cfloat* dh_h = c.with_dh ? dh.data() : nullptr;

    // CPU reference (the scan: the same algorithm, so the comparison measures rounding only).
    std::vector<float> y(n_tok), du(n_tok);
    std::vector<cfloat> h_out(n_st), dhx(n_st);
    ops::cema_forward(cpu{}, dm, host_params(hp), u.data(), hx_h, y.data(), h_out.data(), ops::CemaMode::Scan);
    std::vector<float> ga = randn(c.D * c.N, rng), gd = randn(c.D * c.N, rng), gt = randn(c.D, rng),
                       gg = randn(c.D * c.N * 2, rng), gw = randn(c.D, rng);
    DeviceCopy<float> d_ga(ga), d_gd(gd), d_gt(gt), d_gg(gg),
        d_gw(gw);  // same starting values: grads accumulate
    ops::cema_backward(cpu{}, dm, host_params(hp), u.data(), hx_h, dy.data(), dh_h, du.data(), dhx.data(),
                       ops::CemaGrads<float>{ga.data(), gd.data(), gt.data(), gg.data(), gw.data()},
                       ops::CemaMode::Scan);

    DeviceCopy<float> d_u(u), d_dy(dy), d_y(filled<float>(n_tok, kNaN)), d_du(filled<float>(n_tok, kNaN));
    DeviceCopy<cfloat> d_hx(hx), d_dh(dh), d_hout(filled<cfloat>(n_st, cfloat(kNaN, kNaN))),
        d_dhx(filled<cfloat>(n_st, cfloat(kNaN, kNaN)));
    const cfloat* hx_d = c.with_hx ? d_hx.data() : nullptr;
    const cfloat* dh_d = c.with_dh ? d_dh.data() : nullptr;
    ops::cema_forward(cuda{}, dm, dp.params(), d_u.data(), hx_d, d_y.data(), d_hout.data());
    expect_close("cema y", d_y.host(), y);
    expect_close("cema h_out", d_hout.host(), h_out);

    ops::cema_backward(
        cuda{}, dm, dp.params(), d_u.data(), hx_d, d_dy.data(), dh_d, d_du.data(), d_dhx.data(),
        ops::CemaGrads<float>{d_ga.data(), d_gd.data(), d_gt.data(), d_gg.data(), d_gw.data()});
    expect_close("cema du", d_du.host(), du);
    expect_close("cema dhx", d_dhx.host(), dhx);
    expect_close("cema dalpha", d_ga.host(), ga);
    expect_close("cema ddelta", d_gd.host(), gd);
    expect_close("cema dtheta", d_gt.host(), gt);
    expect_close("cema dgamma", d_gg.host(), gg);
    expect_close("cema domega", d_gw.host(), gw);
  }
}

// Decoding: feeding the sequence one token at a time (L = 1, h_out -> hx) gives the outputs and final state
// of one call over the whole sequence; null optional outputs/gradients are skipped, not written.
TEST_F(CudaMegalodon, CemaDecodeStepsMatchOneCallAndNullsAreSkipped) {
  Rng rng(12);
  const int64_t B = 2, L = 12, D = 6, N = 8;
  const CemaHostParams hp(D, N, rng);
  CemaDevParams dp(hp);
  const std::vector<float> u = randn(B * L * D, rng);
  const std::vector<cfloat> hx = crandn(B * D * N, rng);
  DeviceCopy<float> d_u(u), d_y(filled<float>(B * L * D, kNaN));
  DeviceCopy<cfloat> d_hx(hx), d_h(filled<cfloat>(B * D * N));
  ops::cema_forward(cuda{}, ops::CemaDims{B, L, D, N}, dp.params(), d_u.data(), d_hx.data(), d_y.data(),
                    d_h.data());
  const std::vector<float> y_full = d_y.host();

  std::vector<float> y_steps(B * L * D);
  std::vector<cfloat> state = hx;
  for (int64_t t = 0; t < L; ++t) {
    std::vector<float> ut(B * D);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; ++d) ut[b * D + d] = u[(b * L + t) * D + d];
    DeviceCopy<float> d_ut(ut), d_yt(filled<float>(B * D, kNaN));
    DeviceCopy<cfloat> d_s(state), d_next(filled<cfloat>(B * D * N));
    ops::cema_forward(cuda{}, ops::CemaDims{B, 1, D, N}, dp.params(), d_ut.data(), d_s.data(), d_yt.data(),
                      d_next.data());
    const std::vector<float> yt = d_yt.host();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; ++d) y_steps[(b * L + t) * D + d] = yt[b * D + d];
    state = d_next.host();
  }
  expect_close("decode y", y_steps, y_full, 1e-5);
  expect_close("decode state", state, d_h.host(), 1e-5);

  // Backward with every optional pointer null: du is still produced, nothing else is touched.
  const std::vector<float> dy = randn(B * L * D, rng);
  DeviceCopy<float> d_dy(dy), d_du(filled<float>(B * L * D, kNaN));
  ops::cema_backward(cuda{}, ops::CemaDims{B, L, D, N}, dp.params(), d_u.data(), nullptr, d_dy.data(),
                     nullptr, d_du.data(), nullptr,
                     ops::CemaGrads<float>{nullptr, nullptr, nullptr, nullptr, nullptr});
  std::vector<float> du(B * L * D);
  ops::cema_backward(cpu{}, ops::CemaDims{B, L, D, N}, host_params(hp), u.data(), nullptr, dy.data(), nullptr,
                     du.data(), nullptr, ops::CemaGrads<float>{nullptr, nullptr, nullptr, nullptr, nullptr},
                     ops::CemaMode::Scan);
  expect_close("du (no optional outputs)", d_du.host(), du);
}

// The parameter gradients are reduced without atomics: two runs agree bitwise.
TEST_F(CudaMegalodon, CemaBackwardIsDeterministic) {
  Rng rng(13);
  const int64_t B = 4, L = 200, D = 24, N = 16;
  const CemaHostParams hp(D, N, rng);
  CemaDevParams dp(hp);
  DeviceCopy<float> d_u(randn(B * L * D, rng)), d_dy(randn(B * L * D, rng));
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    DeviceCopy<float> d_du(filled<float>(B * L * D)), d_ga(filled<float>(D * N)), d_gt(filled<float>(D));
    ops::cema_backward(cuda{}, ops::CemaDims{B, L, D, N}, dp.params(), d_u.data(), nullptr, d_dy.data(),
                       nullptr, d_du.data(), nullptr,
                       ops::CemaGrads<float>{d_ga.data(), nullptr, d_gt.data(), nullptr, nullptr});
    std::vector<float> all = d_ga.host(), gt = d_gt.host(), du = d_du.host();
    all.insert(all.end(), gt.begin(), gt.end());
    all.insert(all.end(), du.begin(), du.end());
    if (run == 0)
      first = all;
    else
      EXPECT_EQ(all, first);
  }
}

TEST_F(CudaMegalodon, CemaBadInputsAreTesseraErrors) {
  Rng rng(14);
  const CemaHostParams hp(4, 8, rng);
  CemaDevParams dp(hp);
  DeviceCopy<float> buf(filled<float>(64));
  EXPECT_THROW(ops::cema_forward(cuda{}, ops::CemaDims{1, 2, 4, 0}, dp.params(), buf.data(), nullptr,
                                 buf.data(), nullptr),
               Error);
  ops::CemaParams<float> missing = dp.params();
  missing.gamma = nullptr;
  EXPECT_THROW(
      ops::cema_forward(cuda{}, ops::CemaDims{1, 2, 4, 8}, missing, buf.data(), nullptr, buf.data(), nullptr),
      Error);
}

// ---- TimestepNorm --------------------------------------------------------------------------------------

namespace {

struct TsnCase {
  int64_t B, L, D, G;
  bool with_state, affine, with_dstate;
};

}  // namespace

// With and without carried state (counts 0, small and large), affine or not, Dg from 2 to > 1024 (both row
// kernel shapes), L up to 2000; all outputs and gradients against the CPU op. The scans over t run in chunks
// when there are few (b, g) sequences for the steps: one chunk (L = 1, 5), 2 (L = 20), 3 (L = 37, 40), 19
// (L = 300) and dozens (L = 2000, 1500), so the chunks' merged entering states are checked against the CPU's
// sequential walk, with and without a prior.
TEST_F(CudaMegalodon, TimestepNormForwardBackwardMatchCpu) {
  Rng rng(21);
  const TsnCase cases[] = {
      {2, 37, 32, 4, true, true, true},   {3, 1, 32, 4, true, true, false},
      {2, 300, 64, 8, false, true, true}, {1, 40, 32, 16, true, false, true},
      {2, 5, 2200, 2, true, true, true},  {3, 20, 48, 1, false, false, false},
      {2, 2000, 8, 2, true, true, true},  {1, 1500, 12, 3, false, true, true},
  };
  for (const TsnCase& c : cases) {
    SCOPED_TRACE("B=" + std::to_string(c.B) + " L=" + std::to_string(c.L) + " D=" + std::to_string(c.D) +
                 " G=" + std::to_string(c.G) + (c.with_state ? " state" : "") + (c.affine ? " affine" : ""));
    const ops::TsnDims dm{c.B, c.L, c.D, c.G};
    const int64_t n = c.B * c.L * c.D, nbg = c.B * c.G, nlg = c.B * c.L * c.G;
    const double eps = 1e-5;
    const std::vector<float> x = randn(n, rng, 2.0, 0.5), dy = randn(n, rng);
    std::vector<int64_t> pc(c.B);
    for (int64_t b = 0; b < c.B; ++b) pc[b] = (b % 3 == 0) ? 0 : (b % 3 == 1 ? 7 : 1000);
    std::vector<float> pm = randn(nbg, rng, 1.0, 0.3), pv = randn(nbg, rng, 0.5);
    for (float& v : pv) v = 0.5f + v * v;  // variances > 0
    const std::vector<float> w = randn(c.D, rng, 0.3), bias = randn(c.D, rng, 0.3);
    const std::vector<float> dmean = randn(nbg, rng), dvar = randn(nbg, rng);
    const std::vector<float> gw0 = randn(c.D, rng), gb0 = randn(c.D, rng);  // dweight, dbias accumulate

    // CPU reference.
    const int64_t* pc_h = c.with_state ? pc.data() : nullptr;
    const float* pm_h = c.with_state ? pm.data() : nullptr;
    const float* pv_h = c.with_state ? pv.data() : nullptr;
    const float* w_h = c.affine ? w.data() : nullptr;
    const float* b_h = c.affine ? bias.data() : nullptr;
    std::vector<float> y(n), mean(nbg), var(nbg), cm(nlg), cr(nlg), dx(n), dpm(nbg), dpv(nbg), gw = gw0, gb = gb0;
    std::vector<int64_t> count(c.B);
    ops::timestep_norm_forward(cpu{}, dm, x.data(), pc_h, pm_h, pv_h, w_h, b_h, eps, y.data(), count.data(),
                               mean.data(), var.data(), cm.data(), cr.data());
    ops::timestep_norm_backward(cpu{}, dm, dy.data(), c.with_dstate ? dmean.data() : nullptr,
                                c.with_dstate ? dvar.data() : nullptr, x.data(), pc_h, pm_h, cm.data(), cr.data(),
                                w_h, dx.data(), dpm.data(), dpv.data(), gw.data(), gb.data());

    // GPU.
    DeviceCopy<float> d_x(x), d_dy(dy), d_pm(pm), d_pv(pv), d_w(w), d_b(bias), d_dmean(dmean), d_dvar(dvar);
    DeviceCopy<float> d_gw(gw0), d_gb(gb0);
    DeviceCopy<int64_t> d_pc(pc), d_count(filled<int64_t>(c.B, -1));
    DeviceCopy<float> d_y(filled<float>(n, kNaN)), d_mean(filled<float>(nbg, kNaN)),
        d_var(filled<float>(nbg, kNaN)), d_cm(filled<float>(nlg, kNaN)), d_cr(filled<float>(nlg, kNaN)),
        d_dx(filled<float>(n, kNaN)), d_dpm(filled<float>(nbg, kNaN)), d_dpv(filled<float>(nbg, kNaN));
    const int64_t* pc_d = c.with_state ? d_pc.data() : nullptr;
    const float* pm_d = c.with_state ? d_pm.data() : nullptr;
    const float* pv_d = c.with_state ? d_pv.data() : nullptr;
    const float* w_d = c.affine ? d_w.data() : nullptr;
    const float* b_d = c.affine ? d_b.data() : nullptr;
    ops::timestep_norm_forward(cuda{}, dm, d_x.data(), pc_d, pm_d, pv_d, w_d, b_d, eps, d_y.data(),
                               d_count.data(), d_mean.data(), d_var.data(), d_cm.data(), d_cr.data());
    expect_close("tsn y", d_y.host(), y);
    expect_close("tsn mean", d_mean.host(), mean);
    expect_close("tsn var", d_var.host(), var);
    expect_close("tsn cummean", d_cm.host(), cm);
    expect_close("tsn cumrstd", d_cr.host(), cr);
    EXPECT_EQ(d_count.host(), count);

    // Backward from the GPU's own saved statistics (the end-to-end path).
    ops::timestep_norm_backward(cuda{}, dm, d_dy.data(), c.with_dstate ? d_dmean.data() : nullptr,
                                c.with_dstate ? d_dvar.data() : nullptr, d_x.data(), pc_d, pm_d, d_cm.data(),
                                d_cr.data(), w_d, d_dx.data(), d_dpm.data(), d_dpv.data(), d_gw.data(),
                                d_gb.data());
    expect_close("tsn dx", d_dx.host(), dx);
    expect_close("tsn dprev_mean", d_dpm.host(), dpm);
    expect_close("tsn dprev_var", d_dpv.host(), dpv);
    expect_close("tsn dweight", d_gw.host(), gw);
    expect_close("tsn dbias", d_gb.host(), gb);
  }
}

// Streaming: two calls carrying (count, mean, var) give the outputs of one call over the concatenation.
TEST_F(CudaMegalodon, TimestepNormCarriedStateMatchesOneCall) {
  Rng rng(22);
  const int64_t B = 2, L1 = 30, L2 = 11, D = 24, G = 3;
  const std::vector<float> x = randn(B * (L1 + L2) * D, rng, 1.5, -0.7), w = randn(D, rng, 0.2);
  std::vector<float> x1(B * L1 * D), x2(B * L2 * D);
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(x.begin() + b * (L1 + L2) * D, L1 * D, x1.begin() + b * L1 * D);
    std::copy_n(x.begin() + (b * (L1 + L2) + L1) * D, L2 * D, x2.begin() + b * L2 * D);
  }
  DeviceCopy<float> d_x(x), d_x1(x1), d_x2(x2), d_w(w);
  DeviceCopy<float> d_y(filled<float>(x.size(), kNaN)), d_y1(filled<float>(x1.size(), kNaN)),
      d_y2(filled<float>(x2.size(), kNaN));
  DeviceCopy<int64_t> d_c1(filled<int64_t>(B)), d_c2(filled<int64_t>(B));
  DeviceCopy<float> d_m1(filled<float>(B * G)), d_v1(filled<float>(B * G));
  ops::timestep_norm_forward(cuda{}, ops::TsnDims{B, L1 + L2, D, G}, d_x.data(), nullptr, nullptr, nullptr,
                             d_w.data(), nullptr, 1e-5, d_y.data(), nullptr, nullptr, nullptr, nullptr,
                             nullptr);
  ops::timestep_norm_forward(cuda{}, ops::TsnDims{B, L1, D, G}, d_x1.data(), nullptr, nullptr, nullptr,
                             d_w.data(), nullptr, 1e-5, d_y1.data(), d_c1.data(), d_m1.data(), d_v1.data(),
                             nullptr, nullptr);
  ops::timestep_norm_forward(cuda{}, ops::TsnDims{B, L2, D, G}, d_x2.data(), d_c1.data(), d_m1.data(),
                             d_v1.data(), d_w.data(), nullptr, 1e-5, d_y2.data(), d_c2.data(), nullptr,
                             nullptr, nullptr, nullptr);
  const std::vector<float> y = d_y.host(), y1 = d_y1.host(), y2 = d_y2.host();
  std::vector<float> joined(y.size());
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(y1.begin() + b * L1 * D, L1 * D, joined.begin() + b * (L1 + L2) * D);
    std::copy_n(y2.begin() + b * L2 * D, L2 * D, joined.begin() + (b * (L1 + L2) + L1) * D);
  }
  expect_close("tsn streamed y", joined, y, 1e-5);
  EXPECT_EQ(d_c2.host(), std::vector<int64_t>(B, L1 + L2));
}

TEST_F(CudaMegalodon, TimestepNormBadInputsAreTesseraErrors) {
  DeviceCopy<float> buf(filled<float>(64));
  EXPECT_THROW(ops::timestep_norm_forward(cuda{}, ops::TsnDims{1, 2, 6, 4}, buf.data(), nullptr, nullptr,
                                          nullptr, nullptr, nullptr, 1e-5, buf.data(), nullptr, nullptr,
                                          nullptr, nullptr, nullptr),
               Error);  // D % G != 0
  EXPECT_THROW(ops::timestep_norm_backward(cuda{}, ops::TsnDims{1, 2, 8, 4}, buf.data(), nullptr, nullptr,
                                           buf.data(), nullptr, nullptr, nullptr, buf.data(), nullptr,
                                           buf.data(), nullptr, nullptr, nullptr, nullptr),
               Error);  // cummean missing
}

// ---- attention -----------------------------------------------------------------------------------------

namespace {

struct AttnCase {
  std::string name;
  ops::AttnDims d;
  int mask;  // 0 causal, 1 sliding window, 2 chunk-local
  int64_t param;
  int64_t pad = 0;  // extra columns per token row in every buffer (strided slices)
};

/// Fill the strides of d for row buffers with `pad` extra columns.
ops::AttnDims with_strides(ops::AttnDims d, int64_t pad) {
  d.q_stride = d.Hq * d.Dh + pad;
  d.k_stride = d.Hkv * d.Dh + pad;
  d.v_stride = d.Hkv * d.dv() + pad;
  d.o_stride = d.Hq * d.dv() + pad;
  return d;
}

template <class F>
void with_mask(const AttnCase& c, F&& f) {
  if (c.mask == 0)
    f(ops::mask::Causal{});
  else if (c.mask == 1)
    f(ops::mask::SlidingWindow{c.param});
  else
    f(ops::mask::ChunkLocal{c.param});
}

/// Forward and backward on both backends; o, lse, dq, dk, dv compared. Padding columns start with the same
/// value on both sides (7) and must stay untouched; head columns of outputs start as NaN on the GPU.
/// chunks_bf16: the GPU side is ops::attention_*_chunks_bf16 (batched bf16 GEMMs), which must take the call,
/// compared within the bf16 contract's tolerances.
void check_attention(const AttnCase& c, Rng& rng, bool chunks_bf16 = false) {
  SCOPED_TRACE(c.name);
  const ops::AttnDims d = with_strides(c.d, c.pad);
  const int64_t nq = d.B * d.Tq, nk = d.B * d.Tk;
  auto buffer = [&](int64_t rows, int64_t stride, int64_t cols, bool random, float fill) {
    std::vector<float> v(static_cast<size_t>(rows * stride), 7.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; ++col)
        v[r * stride + col] = random ? static_cast<float>(rng.normal()) : fill;
    return v;
  };
  const int64_t Dv = d.dv();
  const std::vector<float> q = buffer(nq, d.q_stride, d.Hq * d.Dh, true, 0),
                           k = buffer(nk, d.k_stride, d.Hkv * d.Dh, true, 0),
                           v = buffer(nk, d.v_stride, d.Hkv * Dv, true, 0),
                           dout = buffer(nq, d.o_stride, d.Hq * Dv, true, 0);
  std::vector<float> o = buffer(nq, d.o_stride, d.Hq * Dv, false, 0), lse(d.B * d.Hq * d.Tq);
  std::vector<float> dq = buffer(nq, d.q_stride, d.Hq * d.Dh, false, 0),
                     dk = buffer(nk, d.k_stride, d.Hkv * d.Dh, false, 0),
                     dv = buffer(nk, d.v_stride, d.Hkv * Dv, false, 0);
  DeviceCopy<float> d_q(q), d_k(k), d_v(v), d_dout(dout);
  DeviceCopy<float> d_o(buffer(nq, d.o_stride, d.Hq * Dv, false, kNaN)),
      d_lse(filled<float>(lse.size(), kNaN));
  DeviceCopy<float> d_dq(buffer(nq, d.q_stride, d.Hq * d.Dh, false, kNaN)),
      d_dk(buffer(nk, d.k_stride, d.Hkv * d.Dh, false, kNaN)),
      d_dv(buffer(nk, d.v_stride, d.Hkv * Dv, false, kNaN));

  with_mask(c, [&](auto m) {
    ops::attention_forward(cpu{}, d, m, q.data(), k.data(), v.data(), o.data(), lse.data());
    ops::attention_backward(cpu{}, d, m, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(),
                            dq.data(), dk.data(), dv.data());
    if constexpr (std::is_same_v<decltype(m), ops::mask::ChunkLocal>) {
      if (chunks_bf16) {
        ASSERT_TRUE(ops::attention_forward_chunks_bf16(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(),
                                                       d_o.data(), d_lse.data()));
        ASSERT_TRUE(ops::attention_backward_chunks_bf16(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(),
                                                        d_o.data(), d_lse.data(), d_dout.data(), d_dq.data(),
                                                        d_dk.data(), d_dv.data()));
        return;
      }
    }
    ASSERT_FALSE(chunks_bf16) << "the GEMM route is for mask::ChunkLocal";
    ops::attention_forward(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data());
    ops::attention_backward(cuda{}, d, m, d_q.data(), d_k.data(), d_v.data(), d_o.data(), d_lse.data(),
                            d_dout.data(), d_dq.data(), d_dk.data(), d_dv.data());
  });
  // bf16 operands, P and dS (one rounding each, 2^-9 relative) under fp32 accumulation: 1e-2 of the largest
  // output for o and lse, 2e-2 for the gradients (two rounded factors per product), as the bf16 kernels'
  // tests.
  const double t_out = chunks_bf16 ? 1e-2 : kRtol, t_grad = chunks_bf16 ? 2e-2 : kRtol;
  expect_close("attention o", d_o.host(), o, t_out);
  expect_close("attention lse", d_lse.host(), lse, t_out);
  expect_close("attention dq", d_dq.host(), dq, t_grad);
  expect_close("attention dk", d_dk.host(), dk, t_grad);
  expect_close("attention dv", d_dv.host(), dv, t_grad);
}

ops::AttnDims dims(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t Dh, int64_t Dv,
                   int64_t q_offset, double scale) {
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
  return d;
}

}  // namespace

// Each mask with Dh = Dv = 64; Dh = 128 and 256 (the larger kernel instantiations); Dh = 16 with Dv = 32
// (Megalodon's dz != dv) at scale 1; GQA; lengths that are not multiples of the 32-row tiles; padded strides.
TEST_F(CudaMegalodon, AttentionMatchesCpuForEachMask) {
  Rng rng(31);
  const AttnCase cases[] = {
      {"causal Dh=Dv=64", dims(2, 100, 100, 2, 2, 64, 0, 0, 0.125), 0, 0},
      {"window W=17 Dh=Dv=64", dims(2, 70, 70, 2, 2, 64, 64, 0, 0.125), 1, 17},
      {"chunk C=16 Dh=Dv=64", dims(2, 77, 77, 2, 2, 64, 0, 0, 0.125), 2, 16},
      {"causal Dh=128 GQA 4/2 padded", dims(2, 45, 45, 4, 2, 128, 0, 0, 1.0 / std::sqrt(128.0)), 0, 0, 3},
      {"window W=9 Dh=128", dims(1, 66, 66, 2, 1, 128, 0, 0, 0.09), 1, 9},
      {"chunk C=16 Dh=16 Dv=32 scale=1", dims(2, 80, 80, 2, 2, 16, 32, 0, 1.0), 2, 16},
      {"chunk C=40 Dh=Dv=256", dims(1, 50, 50, 1, 1, 256, 0, 0, 0.0625), 2, 40},
      {"causal Dh=48 Dv=200 GQA 3/1", dims(1, 33, 33, 3, 1, 48, 200, 0, 0.15), 0, 0, 1},
  };
  for (const AttnCase& c : cases) check_attention(c, rng);
}

// Chunk-local attention through batched bf16 GEMMs (Megalodon under bf16 compute precision): Megalodon's wide
// values (Dv 8 x Dh) and scale 1, several heads, padded strides, one chunk per sequence; calls it does not
// cover return false with nothing written.
TEST_F(CudaMegalodon, ChunkAttentionThroughBf16GemmsMatchesCpu) {
  Rng rng(33);
  const AttnCase cases[] = {
      {"chunks C=16 Dh=16 Dv=128 scale=1", dims(2, 64, 64, 1, 1, 16, 128, 0, 1.0), 2, 16},
      {"chunks C=32 Dh=Dv=64 H=2 padded", dims(2, 96, 96, 2, 2, 64, 0, 0, 0.125), 2, 32, 3},
      {"one chunk C=T=48 Dh=32 Dv=80 H=3", dims(1, 48, 48, 3, 3, 32, 80, 0, 0.2), 2, 48},
  };
  for (const AttnCase& c : cases) check_attention(c, rng, true);

  const ops::AttnDims d = with_strides(dims(1, 40, 40, 2, 2, 16, 0, 0, 0.25), 0);
  DeviceCopy<float> buf(filled<float>(40 * 64, 0.5f)), lse(filled<float>(80, kNaN)),
      o(filled<float>(40 * 32, kNaN));
  EXPECT_FALSE(ops::attention_forward_chunks_bf16(cuda{}, d, ops::mask::ChunkLocal{16}, buf.data(),
                                                  buf.data(), buf.data(), o.data(), lse.data()))
      << "40 is not a multiple of the chunk";
  for (float x : o.host()) ASSERT_TRUE(std::isnan(x)) << "a refused call wrote its output";
  auto gqa = dims(1, 32, 32, 2, 1, 16, 0, 0, 0.25);
  EXPECT_FALSE(ops::attention_forward_chunks_bf16(cuda{}, with_strides(gqa, 0), ops::mask::ChunkLocal{16},
                                                  buf.data(), buf.data(), buf.data(), o.data(), lse.data()))
      << "grouped heads";
}

// Tq != Tk with q_offset (KV-cache decoding and chunked prefill), and rows that see no key at all (lse -inf,
// zero output, zero gradients).
TEST_F(CudaMegalodon, AttentionWithQueryOffsetAndFullyMaskedRows) {
  Rng rng(32);
  const AttnCase cases[] = {
      {"causal decode Tq=1 Tk=90", dims(2, 1, 90, 2, 1, 64, 0, 89, 0.125), 0, 0},
      {"causal Tq=20 Tk=90 offset 70", dims(2, 20, 90, 2, 2, 64, 0, 70, 0.125), 0, 0, 2},
      {"window W=24 Tq=37 Tk=100 offset 63", dims(1, 37, 100, 4, 2, 32, 0, 63, 0.2), 1, 24},
      {"chunk C=16 Tq=30 Tk=75 offset 45", dims(2, 30, 75, 2, 2, 16, 32, 45, 1.0), 2, 16},
      {"chunk C=16 rows beyond the keys", dims(1, 20, 60, 2, 2, 64, 0, 64, 0.125), 2, 16},
      {"window W=4 far offset (all masked)", dims(1, 10, 40, 1, 1, 64, 0, 100, 0.125), 1, 4},
      {"causal Tq=40 Tk=12 offset 0", dims(1, 40, 12, 2, 2, 64, 0, 0, 0.125), 0, 0},
  };
  for (const AttnCase& c : cases) check_attention(c, rng);
}

// The backward uses no atomics: two runs agree bitwise.
TEST_F(CudaMegalodon, AttentionBackwardIsDeterministic) {
  Rng rng(33);
  const ops::AttnDims d = with_strides(dims(2, 96, 96, 4, 2, 64, 0, 0, 0.125), 0);
  const int64_t nq = d.B * d.Tq * d.q_stride, nk = d.B * d.Tk * d.k_stride;
  DeviceCopy<float> q(randn(nq, rng)), k(randn(nk, rng)), v(randn(nk, rng)), dout(randn(nq, rng));
  DeviceCopy<float> o(filled<float>(nq)), lse(filled<float>(d.B * d.Hq * d.Tq));
  ops::attention_forward(cuda{}, d, ops::mask::Causal{}, q.data(), k.data(), v.data(), o.data(), lse.data());
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    DeviceCopy<float> dq(filled<float>(nq)), dk(filled<float>(nk)), dv(filled<float>(nk));
    ops::attention_backward(cuda{}, d, ops::mask::Causal{}, q.data(), k.data(), v.data(), o.data(),
                            lse.data(), dout.data(), dq.data(), dk.data(), dv.data());
    std::vector<float> all = dq.host(), a = dk.host(), b = dv.host();
    all.insert(all.end(), a.begin(), a.end());
    all.insert(all.end(), b.begin(), b.end());
    if (run == 0)
      first = all;
    else
      EXPECT_EQ(all, first);
  }
}

TEST_F(CudaMegalodon, AttentionBadInputsAreTesseraErrors) {
  DeviceCopy<float> buf(filled<float>(4096));
  ops::AttnDims d = with_strides(dims(1, 2, 2, 1, 1, 300, 0, 0, 0.1), 0);
  try {
    ops::attention_forward(cuda{}, d, ops::mask::Causal{}, buf.data(), buf.data(), buf.data(), buf.data(),
                           nullptr);
    ADD_FAILURE() << "expected tessera::Error for Dh=300";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
  }
  d = with_strides(dims(1, 2, 2, 1, 1, 8, 0, 0, 0.1), 0);
  EXPECT_THROW(ops::attention_forward(cuda{}, d, ops::mask::SlidingWindow{0}, buf.data(), buf.data(),
                                      buf.data(), buf.data(), nullptr),
               Error);
  EXPECT_THROW(ops::attention_forward(cuda{}, d, ops::mask::ChunkLocal{0}, buf.data(), buf.data(), buf.data(),
                                      buf.data(), nullptr),
               Error);
}
