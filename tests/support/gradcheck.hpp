// Test support: finite-difference gradient checks in double and array comparisons.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::testing {

/// Fill with N(0, scale) values from a seeded RNG.
template <class T>
void fill_normal(T* p, int64_t n, Rng& rng, double scale = 1.0) {
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(rng.normal() * scale);
}
template <class T>
void fill_normal(Tensor<T>& t, Rng& rng, double scale = 1.0) {
  fill_normal(t.data(), t.numel(), rng, scale);
}

/// Central-difference check of an analytic gradient. `loss` recomputes the scalar loss from the current
/// contents of `x`; `analytic` holds dL/dx. Checks |fd - an| <= atol + rtol*|fd| for every element.
inline void expect_grad_close(const std::string& what, double* x, const double* analytic, int64_t n,
                              const std::function<double()>& loss, double eps = 1e-6, double rtol = 1e-5,
                              double atol = 1e-7) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double lp = loss();
    x[i] = saved - eps;
    const double lm = loss();
    x[i] = saved;
    const double fd = (lp - lm) / (2 * eps);
    if (std::abs(fd - analytic[i]) > atol + rtol * std::abs(fd)) {
      if (++bad <= 5)
        ADD_FAILURE() << what << "[" << i << "]: finite difference " << fd << " vs analytic " << analytic[i];
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << n << " gradient entries differ";
}

/// Largest |a-b| / max(|b|, floor) over the arrays (relative error with a floor for tiny references).
template <class A, class B>
double max_rel_err(const A* a, const B* b, int64_t n, double floor = 1e-6) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    m = std::max(m, d / std::max(std::abs(static_cast<double>(b[i])), floor));
  }
  return m;
}
template <class A, class B>
double max_abs_err(const A* a, const B* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i)
    m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m;
}

}  // namespace tessera::testing
