// Rotary position embedding (RoPE), applied in place to a [N, H, Dh] block of query or key heads.
//
// Token n starts at x + n * stride (stride >= H * Dh, so q and k may be slices of a fused qkv buffer); its
// H heads of Dh values are contiguous. Pair i (0 <= i < Dh/2) is rotated by angle pos[n] * theta^(-2i/Dh):
//   RopeStyle::Interleaved  pairs (x[2i], x[2i+1])      Meta's Llama complex-pair layout
//   RopeStyle::Half         pairs (x[i], x[i + Dh/2])   GPT-NeoX / Hugging Face rotate_half layout
// (a, b) -> (a cos - b sin, a sin + b cos). The backward pass is the inverse rotation (angle -> -angle).
//
// Angles, cos and sin are computed in double and then cast to T. Hugging Face forms pos * inv_freq in fp32,
// which loses ~pos * 2^-24 rad (about 2.4e-4 rad at position 4096); computing in double keeps the rotation
// accurate at long positions at the cost of small differences from fp32 reference implementations there.
// Nothing is cached between calls: the per-token cos/sin table lives in a per-thread buffer.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/dtype.hpp"
#include "tessera/core/error.hpp"

namespace tessera::ops {

enum class RopeStyle { Interleaved, Half };

namespace detail {
inline constexpr int64_t kRopeParallelMin = int64_t(1) << 15;  // elements before OpenMP pays

/// Rotates every pair by sign * angle (sign = +1 forward, -1 inverse).
template <class T>
void rope_rotate(const char* what, T* x, int64_t stride, const int64_t* positions, int64_t N, int64_t H,
                 int64_t Dh, double theta, RopeStyle style, double sign) {
  TESSERA_CHECK(Dh > 0 && Dh % 2 == 0, what, ": head dimension must be positive and even, got ", Dh);
  TESSERA_CHECK(H > 0, what, ": number of heads must be positive, got ", H);
  TESSERA_CHECK(stride >= H * Dh, what, ": token stride ", stride, " is smaller than heads*head_dim ", H * Dh);
  TESSERA_CHECK(theta > 0, what, ": theta must be positive, got ", theta);
  const int64_t half = Dh / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(Dh));

#pragma omp parallel if (N * H * Dh >= kRopeParallelMin)
  {
    std::vector<T> cs(Dh);  // cos in [0, half), sign * sin in [half, Dh)
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const double pos = static_cast<double>(positions[n]);
      for (int64_t i = 0; i < half; ++i) {
        const double a = pos * inv_freq[i];
        cs[i] = static_cast<T>(std::cos(a));
        cs[half + i] = static_cast<T>(sign * std::sin(a));
      }
      const T* c = cs.data();
      const T* s = cs.data() + half;
      for (int64_t h = 0; h < H; ++h) {
        T* v = x + n * stride + h * Dh;
        if (style == RopeStyle::Interleaved) {
          for (int64_t i = 0; i < half; ++i) {
            const T a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * c[i] - b * s[i];
            v[2 * i + 1] = a * s[i] + b * c[i];
          }
        } else {
          T* lo = v;
          T* hi = v + half;
          for (int64_t i = 0; i < half; ++i) {
            const T a = lo[i], b = hi[i];
            lo[i] = a * c[i] - b * s[i];
            hi[i] = a * s[i] + b * c[i];
          }
        }
      }
    }
  }
}
}  // namespace detail

/// Rotates x in place (see the file comment). positions is [N].
template <class T>
void rope_forward(cpu, T* x, int64_t stride, const int64_t* positions, int64_t N, int64_t H, int64_t Dh,
                  double theta, RopeStyle style) {
  detail::rope_rotate("rope_forward", x, stride, positions, N, H, Dh, theta, style, 1.0);
}

/// Gradient of rope_forward, in place: dx <- R^T dx, the inverse rotation (R is orthogonal).
template <class T>
void rope_backward(cpu, T* dx, int64_t stride, const int64_t* positions, int64_t N, int64_t H, int64_t Dh,
                   double theta, RopeStyle style) {
  detail::rope_rotate("rope_backward", dx, stride, positions, N, H, Dh, theta, style, -1.0);
}

/// RoPE on the queries q [N, Hq * Dh] and keys k [N, Hk * Dh] (contiguous rows) of one attention call, which
/// share their positions: rope_forward of both, or rope_backward when `inverse`. On the CPU in place (q_out
/// == q, k_out == k).
template <class T>
void rope_qk(cpu, const T* q, const T* k, T* q_out, T* k_out, const int64_t* positions, int64_t N, int64_t Hq,
             int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse) {
  TESSERA_CHECK(q_out == q && k_out == k, "rope_qk(cpu): works in place");
  const char* what = inverse ? "rope_backward" : "rope_forward";
  const double sign = inverse ? -1.0 : 1.0;
  detail::rope_rotate(what, q_out, Hq * Dh, positions, N, Hq, Dh, theta, style, sign);
  detail::rope_rotate(what, k_out, Hk * Dh, positions, N, Hk, Dh, theta, style, sign);
}

/// A cached attention step's RoPE and key/value cache append in one pass (layers/kv_cache.hpp): q [N, Hq *
/// Dh] rotated in place, k [N, Hk * Dh] rotated into k_dst, v [N, vw] copied to v_dst, seg_dst[0, N) = 0 (all
/// rows contiguous; k and v are left alone). The same numbers as rope_qk followed by append_kv; one launch
/// on CUDA.
template <class T>
void rope_qk_append(cpu, T* q, const T* k, const T* v, const int64_t* positions, int64_t N, int64_t Hq,
                    int64_t Hk, int64_t Dh, int64_t vw, double theta, RopeStyle style, T* k_dst, T* v_dst,
                    int64_t* seg_dst) {
  std::copy_n(k, N * Hk * Dh, k_dst);
  std::copy_n(v, N * vw, v_dst);
  std::fill_n(seg_dst, N, int64_t{0});
  rope_qk(cpu{}, q, static_cast<const T*>(k_dst), q, k_dst, positions, N, Hq, Hk, Dh, theta, style, false);
}

/// Rotary positions of `batch` sequences of `seq` tokens: positions[b * seq + t] = offset + t, or
/// (offset + t) % modulo when modulo > 0 (positions restarting every `modulo` tokens, e.g. chunked
/// attention).
inline void fill_positions(cpu, int64_t* positions, int64_t batch, int64_t seq, int64_t offset,
                           int64_t modulo = 0) {
  TESSERA_CHECK(batch >= 0 && seq >= 0 && modulo >= 0, "fill_positions: bad sizes batch=", batch,
                " seq=", seq, " modulo=", modulo);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t)
      positions[b * seq + t] = modulo > 0 ? (offset + t) % modulo : offset + t;
}

// CUDA (cuda/elementwise.cu), device pointers (positions too).
void fill_positions(cuda, int64_t* positions, int64_t batch, int64_t seq, int64_t offset, int64_t modulo = 0);

// CUDA (cuda/elementwise.cu), fp32, device pointers (positions too). Angles, cos and sin in double as above.
void rope_forward(cuda, float* x, int64_t stride, const int64_t* positions, int64_t N, int64_t H, int64_t Dh,
                  double theta, RopeStyle style);
void rope_backward(cuda, float* dx, int64_t stride, const int64_t* positions, int64_t N, int64_t H, int64_t Dh,
                   double theta, RopeStyle style);
/// rope_qk on CUDA, one launch for both head sets: fp32 in place (q_out == q, k_out == k), fp32 -> bf16 (the
/// bf16 attention's operands: rotated in fp32, rounded once), bf16 -> fp32 (rotated exactly) and bf16 -> bf16
/// (the bf16 attention's gradients for bf16 GEMMs: rotated in fp32, rounded once; may be in place).
void rope_qk(cuda, const float* q, const float* k, float* q_out, float* k_out, const int64_t* positions,
             int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse);
void rope_qk(cuda, const float* q, const float* k, bf16* q_out, bf16* k_out, const int64_t* positions,
             int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse);
void rope_qk(cuda, const bf16* q, const bf16* k, float* q_out, float* k_out, const int64_t* positions,
             int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse);
void rope_qk(cuda, const bf16* q, const bf16* k, bf16* q_out, bf16* k_out, const int64_t* positions,
             int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, double theta, RopeStyle style, bool inverse);
void rope_qk_append(cuda, float* q, const float* k, const float* v, const int64_t* positions, int64_t N,
                    int64_t Hq, int64_t Hk, int64_t Dh, int64_t vw, double theta, RopeStyle style,
                    float* k_dst, float* v_dst, int64_t* seg_dst);

}  // namespace tessera::ops
