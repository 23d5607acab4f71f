// Internal to tessera::cuda, plain C++: the process-wide implementation choices that an environment variable
// sets and code (tests, benchmarks) may override — the bf16 attention's kernel family, its dQ mode and its
// implementation (tessera's kernels or cuDNN's). One pattern: a named table parses the variable, read once;
// a setter's value wins over it until it is set back to Auto.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <mutex>
#include <string>

#include "tessera/core/error.hpp"

namespace tessera::cuda_detail {

/// One value an environment variable may name.
template <class E>
struct EnvName {
  const char* name;
  E value;
};

/// The value `text` (the variable `var`'s, possibly null) names: `unset` for null or empty text, else the
/// entry of `names` spelled exactly so. Anything else throws tessera::Error naming the variable and what it
/// takes.
template <class E, size_t N>
E parse_env_choice(const char* var, const char* text, E unset, const EnvName<E> (&names)[N]) {
  if (text == nullptr || *text == '\0') return unset;
  const std::string s(text);
  std::string accepted;
  for (const auto& n : names) {
    if (s == n.name) return n.value;
    accepted += (accepted.empty() ? "\"" : ", \"") + std::string(n.name) + "\"";
  }
  throw Error(str(var, " must be one of ", accepted, " (or unset), got \"", s, "\""));
}

/// A process-wide choice of an enum with an Auto member: get() returns the value last set, or for Auto the
/// environment's (Parse(getenv(var)), read on first need; a value Parse rejects throws at every get()).
template <class E, E (*Parse)(const char*)>
class EnvChoice {
 public:
  explicit constexpr EnvChoice(const char* var) : var_(var) {}
  EnvChoice(const EnvChoice&) = delete;
  EnvChoice& operator=(const EnvChoice&) = delete;

  void set(E e) { chosen_.store(static_cast<int>(e)); }
  E get() const {
    const auto e = static_cast<E>(chosen_.load(std::memory_order_relaxed));
    if (e != E::Auto) return e;
    if (!parsed_.load(std::memory_order_acquire)) {  // (not std::call_once: Parse may throw)
      const std::lock_guard<std::mutex> lock(mu_);
      if (!parsed_.load(std::memory_order_relaxed)) {
        from_env_ = Parse(std::getenv(var_));
        parsed_.store(true, std::memory_order_release);
      }
    }
    return from_env_;
  }

 private:
  const char* var_;
  std::atomic<int> chosen_{static_cast<int>(E::Auto)};
  mutable std::mutex mu_;
  mutable std::atomic<bool> parsed_{false};
  mutable E from_env_ = E::Auto;
};

}  // namespace tessera::cuda_detail
