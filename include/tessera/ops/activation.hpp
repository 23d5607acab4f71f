// Elementwise activations: SiLU, GELU (erf or tanh approximation) and the gated SwiGLU.
// Elementwise ops take a count n; outputs may alias inputs (y == x, dx == dy). Backward overwrites dx.
// CPU: Eigen array expressions (vectorised exp/tanh/erf), chunked and parallel over chunks for large n.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <unsupported/Eigen/SpecialFunctions>

#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"

namespace tessera::ops {

/// GELU variant: None = exact 0.5 x (1 + erf(x / sqrt 2)); Tanh = the tanh approximation (GPT-2 "gelu_new").
enum class GeluApprox { None, Tanh };

namespace detail {
inline constexpr int64_t kActChunk = 2048;
inline constexpr int64_t kActParallelMin = int64_t(1) << 14;  // elements before OpenMP pays

template <class T>
using ArrMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using CArrMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

/// Calls f(begin, len) on consecutive chunks of [0, n), in parallel when n is large.
template <class F>
void act_chunks(int64_t n, F&& f) {
  const int64_t nchunks = (n + kActChunk - 1) / kActChunk;
#pragma omp parallel for schedule(static) if (n >= kActParallelMin)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t b = c * kActChunk;
    f(b, std::min(kActChunk, n - b));
  }
}

/// sigmoid into buf; 1 / (1 + exp(-x)) saturates to exactly 0 or 1, never NaN.
template <class T>
void sigmoid_into(T* buf, const T* x, int64_t len) {
  ArrMap<T>(buf, len) = (T(1) + (-CArrMap<T>(x, len)).exp()).inverse();
}

template <class T>
void silu_grad_chunk(T* dx, const T* dy, const T* x, int64_t len) {
  alignas(64) T sbuf[kActChunk];
  sigmoid_into(sbuf, x, len);
  const auto s = CArrMap<T>(sbuf, len);
  const auto xa = CArrMap<T>(x, len);
  // d/dx [x s(x)] = s (1 + x (1 - s))
  ArrMap<T>(dx, len) = CArrMap<T>(dy, len) * s * (T(1) + xa * (T(1) - s));
}

inline constexpr double kSqrt2Inv = 0.70710678118654752440;     // 1/sqrt(2)
inline constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1/sqrt(2 pi)
inline constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2/pi)
inline constexpr double kGeluCubic = 0.044715;
}  // namespace detail

// ---- SiLU -----------------------------------------------------------------------------------------

/// y = x * sigmoid(x).
template <class T>
void silu_forward(cpu, T* y, const T* x, int64_t n) {
  using namespace detail;
  act_chunks(n, [&](int64_t b, int64_t len) {
    const auto xa = CArrMap<T>(x + b, len);
    ArrMap<T>(y + b, len) = xa / (T(1) + (-xa).exp());
  });
}

/// dx = dy * s * (1 + x (1 - s)), s = sigmoid(x).
template <class T>
void silu_backward(cpu, T* dx, const T* dy, const T* x, int64_t n) {
  detail::act_chunks(n, [&](int64_t b, int64_t len) { detail::silu_grad_chunk(dx + b, dy + b, x + b, len); });
}

// ---- GELU -----------------------------------------------------------------------------------------

template <class T>
void gelu_forward(cpu, T* y, const T* x, int64_t n, GeluApprox approx = GeluApprox::None) {
  using namespace detail;
  act_chunks(n, [&](int64_t b, int64_t len) {
    const auto xa = CArrMap<T>(x + b, len);
    auto ya = ArrMap<T>(y + b, len);
    if (approx == GeluApprox::None) {
      ya = T(0.5) * xa * (T(1) + (xa * T(kSqrt2Inv)).erf());
    } else {
      ya = T(0.5) * xa * (T(1) + (T(kSqrt2OverPi) * (xa + T(kGeluCubic) * xa.cube())).tanh());
    }
  });
}

/// erf:  dx = dy * (Phi(x) + x phi(x));
/// tanh: dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 c x^2)), t = tanh(sqrt(2/pi)(x + c x^3)).
template <class T>
void gelu_backward(cpu, T* dx, const T* dy, const T* x, int64_t n, GeluApprox approx = GeluApprox::None) {
  using namespace detail;
  act_chunks(n, [&](int64_t b, int64_t len) {
    const auto xa = CArrMap<T>(x + b, len);
    const auto dya = CArrMap<T>(dy + b, len);
    if (approx == GeluApprox::None) {
      ArrMap<T>(dx + b, len) = dya * (T(0.5) * (T(1) + (xa * T(kSqrt2Inv)).erf()) +
                                      xa * T(kInvSqrt2Pi) * (T(-0.5) * xa.square()).exp());
    } else {
      alignas(64) T tbuf[kActChunk];
      ArrMap<T>(tbuf, len) = (T(kSqrt2OverPi) * (xa + T(kGeluCubic) * xa.cube())).tanh();
      const auto t = CArrMap<T>(tbuf, len);
      ArrMap<T>(dx + b, len) =
          dya * (T(0.5) * (T(1) + t) + T(0.5) * xa * (T(1) - t.square()) * T(kSqrt2OverPi) *
                                            (T(1) + T(3 * kGeluCubic) * xa.square()));
    }
  });
}

// ---- SwiGLU ---------------------------------------------------------------------------------------

/// out[n, h] = silu(gate[n, h]) * up[n, h]. out is [N, H] contiguous; gate and up have row stride gu_stride
/// (0 means H), so they can be the two halves of a fused [N, 2H] gate_up projection (gu_stride = 2H).
template <class T>
void swiglu_forward(cpu, T* out, const T* gate, const T* up, int64_t N, int64_t H, int64_t gu_stride = 0) {
  using namespace detail;
  const int64_t ld = gu_stride ? gu_stride : H;
  TESSERA_CHECK(ld >= H, "swiglu_forward: gate/up row stride ", ld, " is smaller than the width ", H);
#pragma omp parallel for schedule(static) if (N * H >= kActParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < H; b += kActChunk) {
      const int64_t len = std::min(kActChunk, H - b);
      const auto g = CArrMap<T>(gate + n * ld + b, len);
      ArrMap<T>(out + n * H + b, len) = g / (T(1) + (-g).exp()) * CArrMap<T>(up + n * ld + b, len);
    }
  }
}

/// dup = dout * silu(gate); dgate = dout * up * silu'(gate). Both overwritten, with row stride gu_stride
/// (0 means H) like gate and up; they must not alias the inputs.
template <class T>
void swiglu_backward(cpu, T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t N, int64_t H,
                     int64_t gu_stride = 0) {
  using namespace detail;
  const int64_t ld = gu_stride ? gu_stride : H;
  TESSERA_CHECK(ld >= H, "swiglu_backward: gate/up row stride ", ld, " is smaller than the width ", H);
#pragma omp parallel for schedule(static) if (N * H >= kActParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    alignas(64) T sbuf[kActChunk];
    for (int64_t b = 0; b < H; b += kActChunk) {
      const int64_t len = std::min(kActChunk, H - b);
      const auto g = CArrMap<T>(gate + n * ld + b, len);
      const auto u = CArrMap<T>(up + n * ld + b, len);
      const auto d = CArrMap<T>(dout + n * H + b, len);
      sigmoid_into(sbuf, gate + n * ld + b, len);
      const auto s = CArrMap<T>(sbuf, len);
      ArrMap<T>(dup + n * ld + b, len) = d * g * s;
      ArrMap<T>(dgate + n * ld + b, len) = d * u * s * (T(1) + g * (T(1) - s));
    }
  }
}

// CUDA (cuda/elementwise.cu), fp32, device pointers, same semantics (outputs may alias inputs as above).
void silu_forward(cuda, float* y, const float* x, int64_t n);
void silu_backward(cuda, float* dx, const float* dy, const float* x, int64_t n);
void gelu_forward(cuda, float* y, const float* x, int64_t n, GeluApprox approx = GeluApprox::None);
void gelu_backward(cuda, float* dx, const float* dy, const float* x, int64_t n,
                   GeluApprox approx = GeluApprox::None);
void swiglu_forward(cuda, float* out, const float* gate, const float* up, int64_t N, int64_t H,
                    int64_t gu_stride = 0);
void swiglu_backward(cuda, float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     int64_t N, int64_t H, int64_t gu_stride = 0);
/// bf16 outputs (rounded once from the fp32 results; out / dgate / dup laid out as above): the all-bf16
/// SwiGLU (layers/feed_forward.hpp) feeds them straight to its bf16 GEMMs.
void swiglu_forward(cuda, bf16* out, const float* gate, const float* up, int64_t N, int64_t H,
                    int64_t gu_stride = 0);
void swiglu_backward(cuda, bf16* dgate, bf16* dup, const float* dout, const float* gate, const float* up,
                     int64_t N, int64_t H, int64_t gu_stride = 0);
/// bf16 gate/up as well (the all-bf16 SwiGLU saves its gate/up products in bf16): the same fp32 arithmetic
/// on the widened inputs, i.e. the fp32 overloads given float(gate), float(up), with bf16 outputs as above.
void swiglu_forward(cuda, bf16* out, const bf16* gate, const bf16* up, int64_t N, int64_t H,
                    int64_t gu_stride = 0);
void swiglu_backward(cuda, bf16* dgate, bf16* dup, const float* dout, const bf16* gate, const bf16* up,
                     int64_t N, int64_t H, int64_t gu_stride = 0);

}  // namespace tessera::ops
