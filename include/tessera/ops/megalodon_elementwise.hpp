// Megalodon's small elementwise pieces (megalodon spec §3, §4), as ops so that the layers run on either
// backend: the normalised-attention affine of q and k, the attention * r gate, the rescaled FFN residual,
// the offset gain 1 + w, chunk-restarting RoPE positions, a row bias (the CUDA linear_forward has none yet)
// and a constant fill. CPU: the plain loops the layers used before (same operations, same order, so results
// are unchanged to the bit). CUDA (cuda/megalodon_layers.cu): grid-stride kernels; the column reductions
// (parameter gradients) are deterministic: fixed row tiles summed in double, then the tiles in order.
// Gradients of parameters are accumulated (+=); everything else is overwritten.
#pragma once
#include <cmath>
#include <cstdint>

#include "tessera/core/backend.hpp"
#include "tessera/ops/matmul.hpp"  // add_row_bias / row_bias_backward live there (the linear bias)

namespace tessera::ops {

/// q = zn (1 + gamma[0]) / sqrt(dz) + beta[0],  k = zn (1 + gamma[1]) / sqrt(dz) + beta[1]; zn, q, k [n, Z],
/// gamma, beta [2, Z].
template <class T>
void mega_qk_forward(cpu, T* q, T* k, const T* zn, const T* gamma, const T* beta, int64_t n, int64_t Z,
                     int64_t dz) {
  const T inv = T(1) / std::sqrt(static_cast<T>(dz));
  for (int64_t i = 0; i < n; ++i) {
    const T* z = zn + i * Z;
    T* qi = q + i * Z;
    T* ki = k + i * Z;
    for (int64_t c = 0; c < Z; ++c) {
      qi[c] = z[c] * ((T(1) + gamma[c]) * inv) + beta[c];
      ki[c] = z[c] * ((T(1) + gamma[Z + c]) * inv) + beta[Z + c];
    }
  }
}

/// dzn = dq (1 + gamma[0]) / sqrt(dz) + dk (1 + gamma[1]) / sqrt(dz) (overwritten); dgamma, dbeta [2, Z]
/// accumulated.
template <class T>
void mega_qk_backward(cpu, T* dzn, T* dgamma, T* dbeta, const T* dq, const T* dk, const T* zn, const T* gamma,
                      int64_t n, int64_t Z, int64_t dz) {
  const T inv = T(1) / std::sqrt(static_cast<T>(dz));
  for (int64_t i = 0; i < n; ++i) {
    const T* zq = dq + i * Z;
    const T* zk = dk + i * Z;
    const T* z = zn + i * Z;
    T* o = dzn + i * Z;
    for (int64_t c = 0; c < Z; ++c) {
      o[c] = zq[c] * (T(1) + gamma[c]) * inv + zk[c] * (T(1) + gamma[Z + c]) * inv;
      dgamma[c] += zq[c] * z[c] * inv;
      dgamma[Z + c] += zk[c] * z[c] * inv;
      dbeta[c] += zq[c];
      dbeta[Z + c] += zk[c];
    }
  }
}

/// y = a * b (elementwise, n values).
template <class T>
void gate_mul_forward(cpu, T* y, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}
/// da = g * b, db = g * a (overwritten).
template <class T>
void gate_mul_backward(cpu, T* da, T* db, const T* g, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    da[i] = g[i] * b[i];
    db[i] = g[i] * a[i];
  }
}

/// out[i, d] = (alpha ? alpha[d] h[i, d] : h[i, d]) + res[i, d]; [n, D] rows, alpha [D] nullable.
template <class T>
void rescale_residual_forward(cpu, T* out, const T* h, const T* alpha, const T* res, int64_t n, int64_t D) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d)
      out[i * D + d] = (alpha ? alpha[d] * h[i * D + d] : h[i * D + d]) + res[i * D + d];
}
/// With alpha: dh = alpha[d] g (overwritten), dalpha[d] += sum_i g[i, d] h[i, d].
template <class T>
void rescale_residual_backward(cpu, T* dh, T* dalpha, const T* g, const T* h, const T* alpha, int64_t n,
                               int64_t D) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d) {
      dh[i * D + d] = alpha[d] * g[i * D + d];
      dalpha[d] += g[i * D + d] * h[i * D + d];
    }
}

/// y = 1 + w (the gain of an offset-stored norm weight).
template <class T>
void offset_scale(cpu, T* y, const T* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = T(1) + w[i];
}


// CUDA (cuda/megalodon_layers.cu), fp32, device pointers, same semantics.
void mega_qk_forward(cuda, float* q, float* k, const float* zn, const float* gamma, const float* beta,
                     int64_t n, int64_t Z, int64_t dz);
void mega_qk_backward(cuda, float* dzn, float* dgamma, float* dbeta, const float* dq, const float* dk,
                      const float* zn, const float* gamma, int64_t n, int64_t Z, int64_t dz);
void gate_mul_forward(cuda, float* y, const float* a, const float* b, int64_t n);
void gate_mul_backward(cuda, float* da, float* db, const float* g, const float* a, const float* b, int64_t n);
void rescale_residual_forward(cuda, float* out, const float* h, const float* alpha, const float* res,
                              int64_t n, int64_t D);
void rescale_residual_backward(cuda, float* dh, float* dalpha, const float* g, const float* h,
                               const float* alpha, int64_t n, int64_t D);
void offset_scale(cuda, float* y, const float* w, int64_t n);

}  // namespace tessera::ops
