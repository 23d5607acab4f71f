// TimestepNorm (Megalodon, spec megalodon.md §2): a causal GroupNorm. At timestep t, group g of batch row b
// is normalised by the population mean and variance of all its scalars at timesteps <= t, including a carried
// prefix summarised by (prev_count, prev_mean, prev_var):
//   per-timestep group moments (two-pass over the D/G features): u_t = mean, v_t = population variance
//   n_t = n_{t-1} + 1, c1 = n_{t-1} / n_t, c2 = 1 / n_t
//   mu_t = c1 mu_{t-1} + c2 u_t,  var_t = c1 var_{t-1} + c2 v_t + c1 c2 (u_t - mu_{t-1})^2
//   y = (x - mu_t) (var_t + eps)^{-1/2} (1 + weight) + bias
// Counts are in timesteps (every timestep holds D/G scalars). The state defaults to (count 0, mean 0, var 1),
// so step 0 of a fresh sequence is GroupNorm of token 0. The running statistics are kept in double for every
// T (float streams of 1e5+ steps stay accurate without Kahan sums); per-timestep moments are reduced in T. No
// padding mask: the model never passes one (masked steps of the official op output 0 and skip the update).
// Work is a sequential scan over t per (b, g); OpenMP runs the B*G scans in parallel for large inputs.
#pragma once
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"

namespace tessera::ops {

struct TsnDims {
  int64_t B = 0, L = 0, D = 0, G = 0;  // x, y [B, L, D]; groups of D/G consecutive features
};

namespace tsn_detail {

inline constexpr int64_t kParallelMin = int64_t(1) << 15;  // B*L*D before OpenMP pays
inline constexpr int64_t kFlush = 64;                      // steps summed in T before a double accumulation

inline void check_dims(const char* op, const TsnDims& d) {
  TESSERA_CHECK(d.B > 0, op, ": B must be positive, got ", d.B);
  TESSERA_CHECK(d.L > 0, op, ": L must be positive, got ", d.L);
  TESSERA_CHECK(d.D > 0, op, ": D must be positive, got ", d.D);
  TESSERA_CHECK(d.G > 0, op, ": G must be positive, got ", d.G);
  TESSERA_CHECK(d.D % d.G == 0, op, ": D (", d.D, ") must be divisible by G (", d.G, ")");
}
inline void check_counts(const char* op, const int64_t* prev_count, int64_t B) {
  if (!prev_count) return;
  for (int64_t b = 0; b < B; ++b)
    TESSERA_CHECK(prev_count[b] >= 0, op, ": prev_count[", b, "] is negative (", prev_count[b], ")");
}

template <class T>
using CVec = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using Vec = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;

/// Two-pass mean and population variance of n values, reduced in T.
template <class T>
void moments(const T* x, int64_t n, double& mean, double& var) {
  const auto a = CVec<T>(x, n);
  const T m = a.sum() / static_cast<T>(n);
  mean = static_cast<double>(m);
  var = static_cast<double>((a - m).square().sum()) / static_cast<double>(n);
}

}  // namespace tsn_detail

/// Forward. State in: prev_count [B] (null = 0), prev_mean [B,G] (null = 0), prev_var [B,G] (null = 1).
/// weight, bias [D] (null = 0; the scale is 1 + weight). Outputs: y [B,L,D]; final state count [B], mean
/// [B,G], var [B,G] (each nullable); cummean, cumrstd [B,L,G] saved for backward (nullable when none
/// follows).
template <class T>
void timestep_norm_forward(cpu, const TsnDims& dm, const T* x, const int64_t* prev_count,
                           const std::type_identity_t<T>* prev_mean, const std::type_identity_t<T>* prev_var,
                           const std::type_identity_t<T>* weight, const std::type_identity_t<T>* bias,
                           double eps, std::type_identity_t<T>* y, int64_t* count,
                           std::type_identity_t<T>* mean, std::type_identity_t<T>* var,
                           std::type_identity_t<T>* cummean, std::type_identity_t<T>* cumrstd) {
  constexpr const char* op = "timestep_norm_forward";
  tsn_detail::check_dims(op, dm);
  TESSERA_CHECK(x, op, ": x is null");
  TESSERA_CHECK(y, op, ": y is null");
  TESSERA_CHECK(eps >= 0, op, ": eps must be non-negative, got ", eps);
  tsn_detail::check_counts(op, prev_count, dm.B);
  const int64_t B = dm.B, L = dm.L, D = dm.D, G = dm.G, Dg = D / G;
  std::vector<T> scale(D, T(1)), shift(D, T(0));
  for (int64_t k = 0; k < D; ++k) {
    if (weight) scale[k] += weight[k];
    if (bias) shift[k] = bias[k];
  }
#pragma omp parallel for schedule(static) if (B * L * D >= tsn_detail::kParallelMin && B * G > 1)
  for (int64_t bg = 0; bg < B * G; ++bg) {
    const int64_t b = bg / G, g = bg % G;
    const int64_t n0 = prev_count ? prev_count[b] : 0;
    double mu = prev_mean ? static_cast<double>(prev_mean[bg]) : 0.0;
    double vr = prev_var ? static_cast<double>(prev_var[bg]) : 1.0;
    const auto sc = tsn_detail::CVec<T>(scale.data() + g * Dg, Dg);
    const auto sh = tsn_detail::CVec<T>(shift.data() + g * Dg, Dg);
    for (int64_t t = 0; t < L; ++t) {
      const int64_t row = (b * L + t) * D + g * Dg;
      double um, uv;
      tsn_detail::moments(x + row, Dg, um, uv);
      const double n1 = static_cast<double>(n0 + t + 1), c1 = (n1 - 1.0) / n1, c2 = 1.0 / n1;
      const double delta = um - mu;
      mu = c1 * mu + c2 * um;
      vr = c1 * vr + c2 * uv + c1 * c2 * delta * delta;
      const double rstd = 1.0 / std::sqrt(vr + eps);
      tsn_detail::Vec<T>(y + row, Dg) =
          (tsn_detail::CVec<T>(x + row, Dg) - static_cast<T>(mu)) * static_cast<T>(rstd) * sc + sh;
      if (cummean) cummean[(b * L + t) * G + g] = static_cast<T>(mu);
      if (cumrstd) cumrstd[(b * L + t) * G + g] = static_cast<T>(rstd);
    }
    if (mean) mean[bg] = static_cast<T>(mu);
    if (var) var[bg] = static_cast<T>(vr);
  }
  if (count)
    for (int64_t b = 0; b < B; ++b) count[b] = (prev_count ? prev_count[b] : 0) + L;
}

/// Backward (spec §2.4): a reverse scan per (b, g) carrying (dmu, dvar), seeded with the gradients dmean,
/// dvar [B,G] of the returned final state (null = 0). prev_count / prev_mean as given to the forward (null =
/// 0); cummean, cumrstd from the forward. dx overwritten; dprev_mean, dprev_var [B,G] overwritten (nullable);
/// dweight, dbias [D] accumulated (nullable). Per step, with w' = 1 + weight, r = rstd_t:
///   du = dmu - r sum dy w',  dv = dvar - r^3/2 sum dy w' (x - mu_t)
///   dubar = c2 du + 2 c1 c2 dv (ubar - mu_{t-1}),  dvbar = c2 dv
///   dx = dy r w' + dubar / Dg + 2 dvbar (x - ubar) / Dg
///   carry dmu = c1 du - 2 c1 c2 dv (ubar - mu_{t-1}),  dvar = c1 dv.
template <class T>
void timestep_norm_backward(cpu, const TsnDims& dm, const T* dy, const std::type_identity_t<T>* dmean,
                            const std::type_identity_t<T>* dvar, const std::type_identity_t<T>* x,
                            const int64_t* prev_count, const std::type_identity_t<T>* prev_mean,
                            const std::type_identity_t<T>* cummean, const std::type_identity_t<T>* cumrstd,
                            const std::type_identity_t<T>* weight, std::type_identity_t<T>* dx,
                            std::type_identity_t<T>* dprev_mean, std::type_identity_t<T>* dprev_var,
                            std::type_identity_t<T>* dweight, std::type_identity_t<T>* dbias) {
  constexpr const char* op = "timestep_norm_backward";
  tsn_detail::check_dims(op, dm);
  TESSERA_CHECK(dy, op, ": dy is null");
  TESSERA_CHECK(x, op, ": x is null");
  TESSERA_CHECK(cummean, op, ": cummean is null (save it in the forward)");
  TESSERA_CHECK(cumrstd, op, ": cumrstd is null (save it in the forward)");
  TESSERA_CHECK(dx, op, ": dx is null");
  tsn_detail::check_counts(op, prev_count, dm.B);
  const int64_t B = dm.B, L = dm.L, D = dm.D, G = dm.G, Dg = D / G;
  std::vector<T> scale(D, T(1));
  if (weight)
    for (int64_t k = 0; k < D; ++k) scale[k] += weight[k];
  const bool affine_grads = dweight || dbias;
  std::vector<double> pw(affine_grads ? B * D : 0, 0.0), pb(affine_grads ? B * D : 0, 0.0);  // per batch row
#pragma omp parallel if (B * L * D >= tsn_detail::kParallelMin && B * G > 1)
  {
    std::vector<T> xc(Dg), aw(Dg), ab(Dg);  // x - mu_t; affine-gradient partial sums of <= kFlush steps in T
#pragma omp for schedule(static)
    for (int64_t bg = 0; bg < B * G; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const int64_t n0 = prev_count ? prev_count[b] : 0;
      double dmu = dmean ? static_cast<double>(dmean[bg]) : 0.0;
      double dv_c = dvar ? static_cast<double>(dvar[bg]) : 0.0;
      const auto sc = tsn_detail::CVec<T>(scale.data() + g * Dg, Dg);
      auto xcv = tsn_detail::Vec<T>(xc.data(), Dg);
      auto awv = tsn_detail::Vec<T>(aw.data(), Dg), abv = tsn_detail::Vec<T>(ab.data(), Dg);
      awv.setZero();
      abv.setZero();
      auto flush = [&] {  // partial sums -> the batch row's double accumulators
        double* pwr = pw.data() + b * D + g * Dg;
        double* pbr = pb.data() + b * D + g * Dg;
        for (int64_t k = 0; k < Dg; ++k) {
          pwr[k] += static_cast<double>(aw[k]);
          pbr[k] += static_cast<double>(ab[k]);
        }
        awv.setZero();
        abv.setZero();
      };
      for (int64_t t = L - 1; t >= 0; --t) {
        const int64_t row = (b * L + t) * D + g * Dg;
        const double n1 = static_cast<double>(n0 + t + 1), c1 = (n1 - 1.0) / n1, c2 = 1.0 / n1;
        const double mu_t = static_cast<double>(cummean[(b * L + t) * G + g]);
        const double r = static_cast<double>(cumrstd[(b * L + t) * G + g]);
        const double mu_p = t > 0 ? static_cast<double>(cummean[(b * L + t - 1) * G + g])
                                  : (prev_mean ? static_cast<double>(prev_mean[bg]) : 0.0);
        const auto xr = tsn_detail::CVec<T>(x + row, Dg);
        const auto dyr = tsn_detail::CVec<T>(dy + row, Dg);
        const T ubar_t = xr.sum() / static_cast<T>(Dg);
        const double ubar = static_cast<double>(ubar_t);
        xcv = xr - static_cast<T>(mu_t);
        const double sdb = static_cast<double>((dyr * sc).sum());
        const double sds = static_cast<double>((dyr * sc * xcv).sum());
        const double du = dmu - r * sdb;
        const double dv = dv_c - 0.5 * r * r * r * sds;
        const double dub = c2 * du + 2.0 * c1 * c2 * dv * (ubar - mu_p);
        const double dvb = c2 * dv;
        const T a = static_cast<T>(dub / static_cast<double>(Dg));
        const T bcoef = static_cast<T>(2.0 * dvb / static_cast<double>(Dg));
        tsn_detail::Vec<T>(dx + row, Dg) = dyr * static_cast<T>(r) * sc + a + bcoef * (xr - ubar_t);
        if (affine_grads) {
          awv += dyr * xcv * static_cast<T>(r);
          abv += dyr;
          if (t % tsn_detail::kFlush == 0) flush();
        }
        dmu = c1 * du - 2.0 * c1 * c2 * dv * (ubar - mu_p);
        dv_c = c1 * dv;
      }
      if (dprev_mean) dprev_mean[bg] = static_cast<T>(dmu);
      if (dprev_var) dprev_var[bg] = static_cast<T>(dv_c);
    }
  }
  if (affine_grads) {
    for (int64_t k = 0; k < D; ++k) {
      double sw = 0, sb = 0;
      for (int64_t b = 0; b < B; ++b) {
        sw += pw[b * D + k];
        sb += pb[b * D + k];
      }
      if (dweight) dweight[k] += static_cast<T>(sw);
      if (dbias) dbias[k] += static_cast<T>(sb);
    }
  }
}

// CUDA (cuda/timestep_norm.cu), float only, same argument lists, all pointers device memory.
void timestep_norm_forward(cuda, const TsnDims&, const float* x, const int64_t* prev_count,
                           const float* prev_mean, const float* prev_var, const float* weight,
                           const float* bias, double eps, float* y, int64_t* count, float* mean, float* var,
                           float* cummean, float* cumrstd);
void timestep_norm_backward(cuda, const TsnDims&, const float* dy, const float* dmean, const float* dvar,
                            const float* x, const int64_t* prev_count, const float* prev_mean,
                            const float* cummean, const float* cumrstd, const float* weight, float* dx,
                            float* dprev_mean, float* dprev_var, float* dweight, float* dbias);

}  // namespace tessera::ops
