// Errors as exceptions that carry context: which file, which tensor, which field.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tessera {

/// Concatenate anything streamable into one string (no fmt dependency, usable from .cu hosts).
template <class... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

/// The one exception type of tessera. `context` grows outward as the error propagates
/// ("safetensors file 'x.safetensors': tensor 'w': shape mismatch ...").
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  /// Prefix the message with an outer context, keeping the inner detail.
  [[nodiscard]] Error with_context(const std::string& ctx) const { return Error(ctx + ": " + what()); }
};

/// Run `f`; if it throws a tessera::Error, rethrow it with `ctx` prefixed.
template <class F>
decltype(auto) with_context(const std::string& ctx, F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const Error& e) {
    throw e.with_context(ctx);
  }
}

}  // namespace tessera

/// Throw tessera::Error with the streamed message when `cond` is false.
#define TESSERA_CHECK(cond, ...)                                     \
  do {                                                               \
    if (!(cond)) throw ::tessera::Error(::tessera::str(__VA_ARGS__)); \
  } while (0)
