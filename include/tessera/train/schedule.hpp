// Learning-rate schedules: constant, and linear warmup followed by cosine decay to min_lr (llm.c's shape).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "tessera/core/error.hpp"

namespace tessera::train {

/// lr as a function of the 0-based optimizer step (the step about to be taken).
///
/// Warmup (both kinds), for step < warmup:   lr * (step + 1) / warmup   (so step 0 already has a non-zero lr
///                                            and step warmup-1 reaches the full lr, as in llm.c).
/// Cosine, for warmup <= step < total:        min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * r)),
///                                            r = (step - warmup) / (total - warmup)  in [0, 1).
/// Cosine, for step >= total:                 min_lr (the schedule stays there if training is extended).
/// Constant, after warmup:                    lr.
struct Schedule {
  enum class Kind { constant, cosine };
  Kind kind = Kind::cosine;
  double lr = 3e-4;
  double min_lr = 0.0;
  int64_t warmup = 0;
  int64_t total = 0;

  static Schedule constant(double lr, int64_t warmup = 0) {
    return checked({Kind::constant, lr, lr, warmup, 0});
  }
  static Schedule cosine(double lr, double min_lr, int64_t warmup, int64_t total) {
    return checked({Kind::cosine, lr, min_lr, warmup, total});
  }
  /// "constant" or "cosine" (the names used in configs and trainer_state.json).
  static Kind parse_kind(const std::string& name) {
    if (name == "constant") return Kind::constant;
    if (name == "cosine") return Kind::cosine;
    throw Error(str("unknown lr schedule '", name, "' (expected 'constant' or 'cosine')"));
  }
  static const char* kind_name(Kind k) { return k == Kind::constant ? "constant" : "cosine"; }

  double lr_at(int64_t step) const {
    if (step < 0) step = 0;
    if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
    if (kind == Kind::constant) return lr;
    if (step >= total) return min_lr;
    const double r = static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * r));
  }

 private:
  static Schedule checked(Schedule s) {
    TESSERA_CHECK(s.lr >= 0 && std::isfinite(s.lr), "lr schedule: lr must be finite and >= 0, got ", s.lr);
    TESSERA_CHECK(s.min_lr >= 0 && s.min_lr <= s.lr, "lr schedule: min_lr must be in [0, lr], got ", s.min_lr,
                  " with lr ", s.lr);
    TESSERA_CHECK(s.warmup >= 0, "lr schedule: warmup must be >= 0, got ", s.warmup);
    if (s.kind == Kind::cosine)
      TESSERA_CHECK(s.total > s.warmup, "lr schedule: cosine needs total steps (", s.total,
                    ") > warmup steps (", s.warmup, ")");
    return s;
  }
};

}  // namespace tessera::train
