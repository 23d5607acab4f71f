// Megalodon's elementwise pieces on the GPU (ops/megalodon_elementwise.hpp): the q/k affine of normalised
// attention and its backward, the attention * r gate, the rescaled FFN residual, 1 + w gains,
// chunk-restarting RoPE positions, a row bias and a constant fill.
//
// Elementwise parts are grid-stride loops (int64 indices). Parameter gradients are column sums over rows:
// a block of 32 x 8 threads owns 32 columns of one tile of kRowTile rows; each thread sums every 8th row of
// its column in double, the block reduces the 8 partial sums in shared memory (fixed order) and writes one
// double per (tile, column); a second kernel adds the tiles in order and accumulates into the float
// gradient. No atomics: the result does not depend on scheduling.
#include <algorithm>

#include "column_sum.cuh"
#include "core_util.cuh"
#include "launch_megalodon.hpp"

namespace tessera::cuda_detail {
namespace {

constexpr int kThreads = 256;
constexpr int kColTile = 32;   // columns per reduction block (threadIdx.x)
constexpr int kRowLanes = 8;   // row lanes per reduction block (threadIdx.y)
constexpr int kRowTile = 256;  // rows per reduction tile

// ---- elementwise -----------------------------------------------------------------------------------------

__global__ void qk_forward_kernel(float* __restrict__ q, float* __restrict__ k, const float* __restrict__ zn,
                                  const float* __restrict__ gamma, const float* __restrict__ beta, int64_t n,
                                  int64_t Z, float inv) {
  TESSERA_GRID_STRIDE(i, n * Z) {
    const int64_t c = i % Z;
    const float z = zn[i];
    q[i] = z * ((1.f + gamma[c]) * inv) + beta[c];
    k[i] = z * ((1.f + gamma[Z + c]) * inv) + beta[Z + c];
  }
}

__global__ void qk_backward_dz_kernel(float* __restrict__ dzn, const float* __restrict__ dq,
                                      const float* __restrict__ dk, const float* __restrict__ gamma,
                                      int64_t n, int64_t Z, float inv) {
  TESSERA_GRID_STRIDE(i, n * Z) {
    const int64_t c = i % Z;
    dzn[i] = dq[i] * (1.f + gamma[c]) * inv + dk[i] * (1.f + gamma[Z + c]) * inv;
  }
}

__global__ void gate_mul_forward_kernel(float* y, const float* a, const float* b, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    y[i] = a[i] * b[i];
  }
}

__global__ void gate_mul_backward_kernel(float* __restrict__ da, float* __restrict__ db,
                                         const float* __restrict__ g, const float* __restrict__ a,
                                         const float* __restrict__ b, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    const float gi = g[i];
    da[i] = gi * b[i];
    db[i] = gi * a[i];
  }
}

__global__ void rescale_residual_forward_kernel(float* out, const float* h, const float* alpha,
                                                const float* res, int64_t n, int64_t D) {
  TESSERA_GRID_STRIDE(i, n * D) {
    out[i] = (alpha ? alpha[i % D] * h[i] : h[i]) + res[i];
  }
}

__global__ void rescale_residual_backward_kernel(float* dh, const float* g, const float* alpha, int64_t n,
                                                 int64_t D) {
  TESSERA_GRID_STRIDE(i, n * D) {
    dh[i] = alpha[i % D] * g[i];
  }
}

__global__ void offset_scale_kernel(float* y, const float* w, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    y[i] = 1.f + w[i];
  }
}

__global__ void add_row_bias_kernel(float* y, const float* bias, int64_t n, int64_t D) {
  TESSERA_GRID_STRIDE(i, n * D) {
    y[i] += bias[i % D];
  }
}

// ---- deterministic column sums ---------------------------------------------------------------------------

// partial[tile, c] = sum over the tile's rows i of a[i, c] * (b ? b[i, c] : 1), in double.
__global__ void column_partial_kernel(double* __restrict__ partial, const float* __restrict__ a,
                                      const float* __restrict__ b, int64_t n, int64_t C) {
  __shared__ double part[kRowLanes][kColTile];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRowTile;
  const int64_t r1 = n < r0 + kRowTile ? n : r0 + kRowTile;
  double s = 0;
  if (c < C)
    for (int64_t i = r0 + threadIdx.y; i < r1; i += kRowLanes) {
      const double v = a[i * C + c];
      s += b ? v * static_cast<double>(b[i * C + c]) : v;
    }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double t = 0;
    for (int y = 0; y < kRowLanes; ++y) t += part[y][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * C + c] = t;
  }
}

/// out[c] += scale * sum_i a[i, c] * b[i, c] (b null: 1) over n rows of C columns.
void column_sum(float* out, const float* a, const float* b, int64_t n, int64_t C, double scale,
                const char* op) {
  if (n == 0 || C == 0) return;
  const int64_t tiles = (n + kRowTile - 1) / kRowTile;
  TESSERA_CHECK(tiles <= 65535, op, "(cuda): ", n, " rows exceed the column-reduction limit of ",
                int64_t(65535) * kRowTile);
  OpTemp tmp(OpTemp::bytes<double>(tiles * C));
  double* partial = tmp.carve<double>(tiles * C);
  const dim3 grid(static_cast<unsigned>((C + kColTile - 1) / kColTile), static_cast<unsigned>(tiles));
  column_partial_kernel<<<grid, dim3(kColTile, kRowLanes)>>>(partial, a, b, n, C);
  TESSERA_CUDA_CHECK_LAUNCH("column_partial_kernel");
  launch_column_sum<double>({partial, out, C}, {}, tiles, C, scale);
}

void check_sizes(const char* op, int64_t n, int64_t w) {
  TESSERA_CHECK(n >= 0 && w >= 0, op, "(cuda): negative size ", n, " x ", w);
}

}  // namespace

void mega_qk_forward_f32(float* q, float* k, const float* zn, const float* gamma, const float* beta,
                         int64_t n, int64_t Z, int64_t dz) {
  constexpr const char* op = "mega_qk_forward";
  check_sizes(op, n, Z);
  if (n * Z == 0) return;
  TESSERA_CHECK(q && k && zn && gamma && beta, op, "(cuda): a pointer is null");
  const float inv = 1.f / sqrtf(static_cast<float>(dz));
  qk_forward_kernel<<<stride_blocks(n * Z), kThreads>>>(q, k, zn, gamma, beta, n, Z, inv);
  TESSERA_CUDA_CHECK_LAUNCH("qk_forward_kernel");
}

void mega_qk_backward_f32(float* dzn, float* dgamma, float* dbeta, const float* dq, const float* dk,
                          const float* zn, const float* gamma, int64_t n, int64_t Z, int64_t dz) {
  constexpr const char* op = "mega_qk_backward";
  check_sizes(op, n, Z);
  if (n * Z == 0) return;
  TESSERA_CHECK(dzn && dq && dk && zn && gamma, op, "(cuda): a pointer is null");
  const float inv = 1.f / sqrtf(static_cast<float>(dz));
  qk_backward_dz_kernel<<<stride_blocks(n * Z), kThreads>>>(dzn, dq, dk, gamma, n, Z, inv);
  TESSERA_CUDA_CHECK_LAUNCH("qk_backward_dz_kernel");
  if (dgamma) {
    column_sum(dgamma, dq, zn, n, Z, inv, op);
    column_sum(dgamma + Z, dk, zn, n, Z, inv, op);
  }
  if (dbeta) {
    column_sum(dbeta, dq, nullptr, n, Z, 1.0, op);
    column_sum(dbeta + Z, dk, nullptr, n, Z, 1.0, op);
  }
}

void gate_mul_forward_f32(float* y, const float* a, const float* b, int64_t n) {
  check_sizes("gate_mul_forward", n, 1);
  if (n == 0) return;
  gate_mul_forward_kernel<<<stride_blocks(n), kThreads>>>(y, a, b, n);
  TESSERA_CUDA_CHECK_LAUNCH("gate_mul_forward_kernel");
}

void gate_mul_backward_f32(float* da, float* db, const float* g, const float* a, const float* b, int64_t n) {
  check_sizes("gate_mul_backward", n, 1);
  if (n == 0) return;
  gate_mul_backward_kernel<<<stride_blocks(n), kThreads>>>(da, db, g, a, b, n);
  TESSERA_CUDA_CHECK_LAUNCH("gate_mul_backward_kernel");
}

void rescale_residual_forward_f32(float* out, const float* h, const float* alpha, const float* res, int64_t n,
                                  int64_t D) {
  check_sizes("rescale_residual_forward", n, D);
  if (n * D == 0) return;
  rescale_residual_forward_kernel<<<stride_blocks(n * D), kThreads>>>(out, h, alpha, res, n, D);
  TESSERA_CUDA_CHECK_LAUNCH("rescale_residual_forward_kernel");
}

void rescale_residual_backward_f32(float* dh, float* dalpha, const float* g, const float* h,
                                   const float* alpha, int64_t n, int64_t D) {
  constexpr const char* op = "rescale_residual_backward";
  check_sizes(op, n, D);
  if (n * D == 0) return;
  TESSERA_CHECK(alpha, op, "(cuda): alpha is null");
  rescale_residual_backward_kernel<<<stride_blocks(n * D), kThreads>>>(dh, g, alpha, n, D);
  TESSERA_CUDA_CHECK_LAUNCH("rescale_residual_backward_kernel");
  if (dalpha) column_sum(dalpha, g, h, n, D, 1.0, op);
}

void offset_scale_f32(float* y, const float* w, int64_t n) {
  check_sizes("offset_scale", n, 1);
  if (n == 0) return;
  offset_scale_kernel<<<stride_blocks(n), kThreads>>>(y, w, n);
  TESSERA_CUDA_CHECK_LAUNCH("offset_scale_kernel");
}

void add_row_bias_f32(float* y, const float* bias, int64_t n, int64_t D) {
  check_sizes("add_row_bias", n, D);
  if (n * D == 0) return;
  add_row_bias_kernel<<<stride_blocks(n * D), kThreads>>>(y, bias, n, D);
  TESSERA_CUDA_CHECK_LAUNCH("add_row_bias_kernel");
}

void row_bias_backward_f32(float* dbias, const float* dy, int64_t n, int64_t D) {
  check_sizes("row_bias_backward", n, D);
  column_sum(dbias, dy, nullptr, n, D, 1.0, "row_bias_backward");
}

}  // namespace tessera::cuda_detail
