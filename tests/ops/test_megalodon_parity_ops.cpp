// Parity of the CPU CEMA and TimestepNorm ops with the official Megalodon code (XuezheMax/megalodon cff8ba5,
// run on CPU in fp32 by tools/reference/megalodon_reference.py; fixture tests/fixtures/megalodon-tiny/
// cases.safetensors, keys cema.*, cema_nohx.*, tsn.*, tsn_nostate.*). The official CEMA layout is B x D x L;
// ours is B x L x D, so u, y, dy and grad.u are transposed. Complex tensors are stored as (re, im) pairs,
// which is std::complex's layout; the official complex gradients follow PyTorch's convention, as ours do.
// Error measure (printed): rel_to_max(a, ref) = max|a - ref| / max|ref| over one tensor; bound 1e-4 in fp32.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <iostream>
#include <string>
#include <vector>

#include "tessera/io/safetensors.hpp"
#include "tessera/ops/cema.hpp"
#include "tessera/ops/timestep_norm.hpp"

using namespace tessera;
using ops::CemaMode;
using cf = std::complex<float>;

namespace {

const std::string kFixture = std::string(TESSERA_TEST_FIXTURES) + "/megalodon-tiny/cases.safetensors";
constexpr double kTol = 1e-4;

const io::SafeTensorsFile& fixture() {
  static const io::SafeTensorsFile f(kFixture);
  return f;
}

template <class T>
std::vector<T> load(const std::string& name) {
  const auto& f = fixture();
  std::vector<T> v(static_cast<size_t>(f.info(name).shape.numel()));
  f.read_into(name, v.data(), static_cast<int64_t>(v.size()));
  return v;
}
std::vector<cf> load_complex(const std::string& name) {
  const auto r = load<float>(name);
  std::vector<cf> v(r.size() / 2);
  for (size_t i = 0; i < v.size(); ++i) v[i] = cf(r[2 * i], r[2 * i + 1]);
  return v;
}
int64_t dim(const std::string& name, int i) {
  return fixture().info(name).shape[i];
}

/// [B, P, Q] -> [B, Q, P]
template <class T>
std::vector<T> transpose(const std::vector<T>& v, int64_t B, int64_t P, int64_t Q) {
  std::vector<T> o(v.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Q; ++q) o[(b * Q + q) * P + p] = v[(b * P + p) * Q + q];
  return o;
}

template <class A, class B>
double rel_to_max(const A* a, const B* b, int64_t n) {
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(ref, 1e-30);
}

/// Compare ours to the fixture tensor `key`, print and record the error.
template <class T>
void check(const std::string& tag, const std::string& key, const T* ours, const std::vector<float>& ref) {
  const double e = rel_to_max(ours, ref.data(), static_cast<int64_t>(ref.size()));
  std::cout << "[parity] " << tag << " " << key << " = " << e << "\n";
  ::testing::Test::RecordProperty(tag + " " + key, str(e));
  EXPECT_LT(e, kTol) << tag << " " << key;
}
void check(const std::string& tag, const std::string& key, const std::vector<cf>& ours,
           const std::vector<float>& ref) {
  check(tag, key, reinterpret_cast<const float*>(ours.data()), ref);
}

void cema_case(const std::string& pre, bool with_hx, CemaMode mode) {
  const std::string tag = pre + (mode == CemaMode::Scan ? " [scan]" : " [fft]");
  const int64_t B = dim(pre + ".u", 0), D = dim(pre + ".u", 1), L = dim(pre + ".u", 2),
                N = dim(pre + ".alpha", 1);
  const ops::CemaDims dm{B, L, D, N};
  const auto alpha = load<float>(pre + ".alpha"), delta = load<float>(pre + ".delta"),
             theta = load<float>(pre + ".theta"), gamma = load<float>(pre + ".gamma"),
             omega = load<float>(pre + ".omega");
  const ops::CemaParams<float> P{alpha.data(), delta.data(), theta.data(), gamma.data(), omega.data()};
  const auto u = transpose(load<float>(pre + ".u"), B, D, L),
             dy = transpose(load<float>(pre + ".dy"), B, D, L);
  const auto hx = with_hx ? load_complex(pre + ".hx") : std::vector<cf>{};
  const auto dh = load_complex(pre + ".dh");
  const cf* hxp = with_hx ? hx.data() : nullptr;

  std::vector<float> y(B * L * D);
  std::vector<cf> h(B * D * N);
  ops::cema_forward(cpu{}, dm, P, u.data(), hxp, y.data(), h.data(), mode);
  check(tag, "y", transpose(y, B, L, D).data(), load<float>(pre + ".y"));
  check(tag, "h", h, load<float>(pre + ".h"));

  std::vector<float> du(B * L * D), ga(alpha.size()), gd(delta.size()), gt(theta.size()), gg(gamma.size()),
      go(omega.size());
  std::vector<cf> dhx(B * D * N);
  ops::cema_backward(cpu{}, dm, P, u.data(), hxp, dy.data(), dh.data(), du.data(),
                     with_hx ? dhx.data() : nullptr, {ga.data(), gd.data(), gt.data(), gg.data(), go.data()},
                     mode);
  check(tag, "grad.u", transpose(du, B, L, D).data(), load<float>(pre + ".grad.u"));
  if (with_hx) check(tag, "grad.hx", dhx, load<float>(pre + ".grad.hx"));
  check(tag, "grad.alpha", ga.data(), load<float>(pre + ".grad.alpha"));
  check(tag, "grad.delta", gd.data(), load<float>(pre + ".grad.delta"));
  check(tag, "grad.theta", gt.data(), load<float>(pre + ".grad.theta"));
  check(tag, "grad.gamma", gg.data(), load<float>(pre + ".grad.gamma"));
  check(tag, "grad.omega", go.data(), load<float>(pre + ".grad.omega"));
}

void tsn_case(const std::string& pre, bool with_state) {
  const int64_t B = dim(pre + ".x", 0), L = dim(pre + ".x", 1), D = dim(pre + ".x", 2),
                G = dim(pre + ".dmean", 1);
  const ops::TsnDims dm{B, L, D, G};
  const double eps = 1e-5;  // config.json norm_eps
  const auto x = load<float>(pre + ".x"), w = load<float>(pre + ".weight"), bias = load<float>(pre + ".bias");
  const auto dy = load<float>(pre + ".dy"), dmean = load<float>(pre + ".dmean"),
             dvar = load<float>(pre + ".dvar");
  std::vector<int64_t> pc;
  std::vector<float> pm, pv;
  if (with_state) {
    pc = load<int64_t>(pre + ".prev_count");
    pm = load<float>(pre + ".prev_mean");
    pv = load<float>(pre + ".prev_var");
  }
  const int64_t* pcp = with_state ? pc.data() : nullptr;
  const float* pmp = with_state ? pm.data() : nullptr;
  const float* pvp = with_state ? pv.data() : nullptr;
  std::vector<float> y(x.size()), mean(B * G), var(B * G), cm(B * L * G), cr(B * L * G);
  std::vector<int64_t> count(B);
  ops::timestep_norm_forward(cpu{}, dm, x.data(), pcp, pmp, pvp, w.data(), bias.data(), eps, y.data(),
                             count.data(), mean.data(), var.data(), cm.data(), cr.data());
  check(pre, "y", y.data(), load<float>(pre + ".y"));
  check(pre, "mean", mean.data(), load<float>(pre + ".mean"));
  check(pre, "var", var.data(), load<float>(pre + ".var"));
  EXPECT_EQ(count, load<int64_t>(pre + ".count"));
  std::vector<float> dx(x.size()), dpm(B * G), dpv(B * G), dw(D), db(D);
  ops::timestep_norm_backward(cpu{}, dm, dy.data(), dmean.data(), dvar.data(), x.data(), pcp, pmp, cm.data(),
                              cr.data(), w.data(), dx.data(), dpm.data(), dpv.data(), dw.data(), db.data());
  check(pre, "grad.x", dx.data(), load<float>(pre + ".grad.x"));
  if (with_state) {
    check(pre, "grad.prev_mean", dpm.data(), load<float>(pre + ".grad.prev_mean"));
    check(pre, "grad.prev_var", dpv.data(), load<float>(pre + ".grad.prev_var"));
  }
  check(pre, "grad.weight", dw.data(), load<float>(pre + ".grad.weight"));
  check(pre, "grad.bias", db.data(), load<float>(pre + ".grad.bias"));
}

}  // namespace

TEST(MegalodonParityOps, CemaWithHxFft) {
  cema_case("cema", true, CemaMode::Fft);
}
TEST(MegalodonParityOps, CemaWithHxScan) {
  cema_case("cema", true, CemaMode::Scan);
}
TEST(MegalodonParityOps, CemaNoHxFft) {
  cema_case("cema_nohx", false, CemaMode::Fft);
}
TEST(MegalodonParityOps, CemaNoHxScan) {
  cema_case("cema_nohx", false, CemaMode::Scan);
}
TEST(MegalodonParityOps, TimestepNormWithState) {
  tsn_case("tsn", true);
}
TEST(MegalodonParityOps, TimestepNormNoState) {
  tsn_case("tsn_nostate", false);
}
