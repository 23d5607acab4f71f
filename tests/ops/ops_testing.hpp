// Small helpers shared by the ops tests.
#pragma once
#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"

namespace tessera::testing {

/// Expects f() to throw tessera::Error whose message contains every fragment.
template <class F>
void expect_error(F&& f, std::initializer_list<const char*> fragments) {
  try {
    f();
    ADD_FAILURE() << "expected tessera::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* frag : fragments)
      EXPECT_NE(msg.find(frag), std::string::npos) << "message '" << msg << "' lacks '" << frag << "'";
  }
}

/// n values drawn from N(0, scale^2).
template <class T = double>
std::vector<T> randn(int64_t n, Rng& rng, double scale = 1.0) {
  std::vector<T> v(n);
  fill_normal(v.data(), n, rng, scale);
  return v;
}

/// sum_i a[i] * b[i] in double: the scalar "loss" L = <out, R> whose gradient with respect to out is R.
template <class A, class B>
double dot(const std::vector<A>& a, const std::vector<B>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

template <class To, class From>
std::vector<To> cast(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

}  // namespace tessera::testing
