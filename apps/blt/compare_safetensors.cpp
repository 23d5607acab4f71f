// blt_compare_safetensors: checks for tests and scripts without Python.
//
//   blt_compare_safetensors compare A.safetensors name_a B.safetensors name_b [--atol 1e-4] [--rtol 0]
//       exit 0 when the shapes are equal and every |a - b| <= atol + rtol * |b| (integer tensors: a == b),
//       exit 1 otherwise (the message names the first offending element and the largest error)
//   blt_compare_safetensors dump F.safetensors name
//       the values, whitespace-separated decimals (integers exactly; floats with 9 significant digits)
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>

#include "tessera/io/safetensors.hpp"

namespace {

using tessera::io::SafeTensorsFile;

bool is_int(tessera::DType d) {
  return !tessera::io::detail::is_float_dtype(d);
}

int compare(const std::string& fa, const std::string& na, const std::string& fb, const std::string& nb,
            double atol, double rtol) {
  const SafeTensorsFile a(fa), b(fb);
  const auto& ia = a.info(na);
  const auto& ib = b.info(nb);
  const std::string what = tessera::str(fa, ":", na, " vs ", fb, ":", nb);
  if (!(ia.shape == ib.shape)) {
    std::printf("MISMATCH %s: shape %s vs %s\n", what.c_str(), tessera::str(ia.shape).c_str(),
                tessera::str(ib.shape).c_str());
    return 1;
  }
  if (is_int(ia.dtype) != is_int(ib.dtype)) {
    std::printf("MISMATCH %s: dtype %s vs %s\n", what.c_str(),
                std::string(tessera::dtype_name(ia.dtype)).c_str(),
                std::string(tessera::dtype_name(ib.dtype)).c_str());
    return 1;
  }
  const int64_t n = ia.shape.numel();
  if (is_int(ia.dtype)) {
    const auto x = a.read<int64_t>(na), y = b.read<int64_t>(nb);
    for (int64_t i = 0; i < n; ++i)
      if (x.data()[i] != y.data()[i]) {
        std::printf("MISMATCH %s: element %lld is %lld vs %lld\n", what.c_str(), static_cast<long long>(i),
                    static_cast<long long>(x.data()[i]), static_cast<long long>(y.data()[i]));
        return 1;
      }
    std::printf("ok %s: %lld integers equal\n", what.c_str(), static_cast<long long>(n));
    return 0;
  }
  const auto x = a.read<double>(na), y = b.read<double>(nb);
  double worst = 0;
  int64_t first_bad = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::fabs(x.data()[i] - y.data()[i]);
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
    if ((std::isnan(d) || d > atol + rtol * std::fabs(y.data()[i])) && first_bad < 0) first_bad = i;
  }
  if (first_bad >= 0) {
    std::printf("MISMATCH %s: element %lld is %.9g vs %.9g; max abs err %.3g (atol %.3g, rtol %.3g)\n",
                what.c_str(), static_cast<long long>(first_bad), x.data()[first_bad], y.data()[first_bad],
                worst, atol, rtol);
    return 1;
  }
  std::printf("ok %s: %lld values, max abs err %.3g\n", what.c_str(), static_cast<long long>(n), worst);
  return 0;
}

int dump(const std::string& f, const std::string& name) {
  const SafeTensorsFile file(f);
  const auto& info = file.info(name);
  const int64_t n = info.shape.numel();
  std::string out;
  if (is_int(info.dtype)) {
    const auto x = file.read<int64_t>(name);
    for (int64_t i = 0; i < n; ++i) out += tessera::str(i ? " " : "", x.data()[i]);
  } else {
    const auto x = file.read<double>(name);
    char buf[32];
    for (int64_t i = 0; i < n; ++i) {
      std::snprintf(buf, sizeof buf, "%s%.9g", i ? " " : "", x.data()[i]);
      out += buf;
    }
  }
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"compare or print tensors of safetensors files"};
  app.require_subcommand(1);
  std::string fa, na, fb, nb;
  double atol = 1e-4, rtol = 0;
  auto* cmp = app.add_subcommand("compare", "compare tensor name_a of file A with tensor name_b of file B");
  cmp->add_option("file_a", fa)->required();
  cmp->add_option("name_a", na)->required();
  cmp->add_option("file_b", fb)->required();
  cmp->add_option("name_b", nb)->required();
  cmp->add_option("--atol", atol, "absolute tolerance (floating-point tensors)")->capture_default_str();
  cmp->add_option("--rtol", rtol, "relative tolerance (floating-point tensors)")->capture_default_str();
  auto* dmp = app.add_subcommand("dump", "print a tensor's values");
  dmp->add_option("file", fa)->required();
  dmp->add_option("name", na)->required();
  CLI11_PARSE(app, argc, argv);
  try {
    return *cmp ? compare(fa, na, fb, nb, atol, rtol) : dump(fa, na);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
