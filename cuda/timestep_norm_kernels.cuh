// Internal to tessera::cuda: the device code of timestep_norm.cu (see there for the design). A separate header
// only so that the kernels can also be compiled for a CPU-thread emulation of the launch model when checking
// their indexing without a GPU; it includes nothing CUDA-specific (the row kernels take their reduction shape
// from rows.cuh, included first by the .cu), and exactly one .cu file includes it (hence the unnamed
// namespace).
#pragma once
#include <cmath>
#include <cstdint>

namespace tessera::cuda_detail {
namespace {


// ---- forward -----------------------------------------------------------------------------------------

// gm[row], gv[row]: mean and population variance of x[row*Dg .. row*Dg + Dg), rows = B*L*G.
template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    tsn_moments_kernel(const float* __restrict__ x, int64_t rows, int Dg, float* __restrict__ gm,
                       float* __restrict__ gv) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= rows) return;  // a whole warp (WarpRows); never taken for BlockRow
  const float* xr = x + row * Dg;
  float s = 0.f;
  for (int i = threadIdx.x; i < Dg; i += Row::kThreads) s += xr[i];
  const float mean = Row::sum(s, storage) / static_cast<float>(Dg);
  __syncwarp();  // the reduction storage is reused below
  float ss = 0.f;
  for (int i = threadIdx.x; i < Dg; i += Row::kThreads) {
    const float c = xr[i] - mean;
    ss += c * c;
  }
  const float var = Row::sum(ss, storage) / static_cast<float>(Dg);
  if (threadIdx.x == 0) {
    gm[row] = mean;
    gv[row] = var;
  }
}

// sum += x with Kahan compensation c (the compiler does not reassociate float ops without fast-math).
__device__ inline void kahan_add(float x, float& sum, float& c) {
  const float y = x - c;
  const float t = sum + y;
  c = (t - sum) - y;
  sum = t;
}

// One thread per (b, g): running Welford state over t; each step is a block of count 1 with the step's
// group moments. cm, cr [B, L, G].
__global__ void tsn_scan_kernel(int64_t B, int64_t L, int G, const float* __restrict__ gm,
                                const float* __restrict__ gv, const int64_t* __restrict__ prev_count,
                                const float* __restrict__ prev_mean, const float* __restrict__ prev_var,
                                float eps, float* __restrict__ cm, float* __restrict__ cr,
                                int64_t* __restrict__ count, float* __restrict__ mean, float* __restrict__ var) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * G) return;
  const int64_t b = i / G;
  const int g = static_cast<int>(i % G);
  const int64_t n0 = prev_count ? prev_count[b] : 0;
  float m1 = prev_mean ? prev_mean[i] : 0.f, m2 = prev_var ? prev_var[i] : 1.f;
  float c1 = 0.f, c2 = 0.f;  // Kahan compensations of m1, m2
  for (int64_t t = 0; t < L; ++t) {
    const int64_t s = (b * L + t) * G + g;
    if (n0 + t == 0) {  // first step of a fresh sequence: the prior has weight 0, take the moments exactly
      m1 = gm[s];
      m2 = gv[s];
      c1 = c2 = 0.f;
    } else {
      const float coef = 1.f / static_cast<float>(n0 + t + 1);
      const float delta1 = gm[s] - m1;
      const float delta2 = gv[s] + (1.f - coef) * delta1 * delta1 - m2;
      kahan_add(coef * delta1, m1, c1);
      kahan_add(coef * delta2, m2, c2);
    }
    cm[s] = m1;
    cr[s] = 1.f / sqrtf(m2 + eps);
  }
  if (mean) mean[i] = m1;
  if (var) var[i] = m2;
  if (count && g == 0) count[b] = n0 + L;
}

// y = (x - cm) * cr * (1 + w) + bias, elementwise over B*L*D.
__global__ void tsn_normalize_kernel(int64_t total, int D, int Dg, int G, const float* __restrict__ x,
                                     const float* __restrict__ cm, const float* __restrict__ cr,
                                     const float* __restrict__ weight, const float* __restrict__ bias,
                                     float* __restrict__ y) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / D;
    const int k = static_cast<int>(e % D);
    const int64_t s = row * G + k / Dg;
    const float w = 1.f + (weight ? weight[k] : 0.f);
    y[e] = (x[e] - cm[s]) * cr[s] * w + (bias ? bias[k] : 0.f);
  }
}

// ---- backward ----------------------------------------------------------------------------------------

// Per row (b, t, g): ux = mean x, ds = sum dy w' (x - cm), db = sum dy w' (w' = 1 + weight).
template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    tsn_row_terms_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                         const float* __restrict__ cm, const float* __restrict__ weight, int64_t rows, int Dg,
                         int G, float* __restrict__ ux, float* __restrict__ ds, float* __restrict__ db) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= rows) return;
  const float* xr = x + row * Dg;
  const float* dyr = dy + row * Dg;
  const float* wr = weight ? weight + static_cast<int64_t>(row % G) * Dg : nullptr;
  const float mu = cm[row];
  float sx = 0.f, sds = 0.f, sdb = 0.f;
  for (int i = threadIdx.x; i < Dg; i += Row::kThreads) {
    const float w = 1.f + (wr ? wr[i] : 0.f);
    sx += xr[i];
    sds += dyr[i] * (xr[i] - mu) * w;
    sdb += dyr[i] * w;
  }
  // __syncwarp: the reduction storage is reused (CUB's rule for WarpReduce; BlockRow syncs itself).
  sx = Row::sum(sx, storage);
  __syncwarp();
  sds = Row::sum(sds, storage);
  __syncwarp();
  sdb = Row::sum(sdb, storage);
  if (threadIdx.x == 0) {
    ux[row] = sx / static_cast<float>(Dg);
    ds[row] = sds;
    db[row] = sdb;
  }
}

// One thread per (b, g), t from L-1 down to 0 (spec §2.4), with n_t = prev_count + t + 1, c1 = (n_t-1)/n_t,
// c2 = 1/n_t. Overwrites ds[s] with the gradient of the step's group mean and db[s] with that of its group
// variance.
__global__ void tsn_backward_scan_kernel(int64_t B, int64_t L, int G, const float* __restrict__ dmean,
                                         const float* __restrict__ dvar, const int64_t* __restrict__ prev_count,
                                         const float* __restrict__ prev_mean, const float* __restrict__ cm,
                                         const float* __restrict__ cr, const float* __restrict__ ux, float* ds,
                                         float* db, float* __restrict__ dprev_mean,
                                         float* __restrict__ dprev_var) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * G) return;
  const int64_t b = i / G;
  const int g = static_cast<int>(i % G);
  const int64_t n0 = prev_count ? prev_count[b] : 0;
  float du_c = dmean ? dmean[i] : 0.f, dv_c = dvar ? dvar[i] : 0.f;
  for (int64_t t = L - 1; t >= 0; --t) {
    const int64_t s = (b * L + t) * G + g;
    const float nt = static_cast<float>(n0 + t + 1);
    const float c1 = static_cast<float>(n0 + t) / nt, c2 = 1.f / nt;
    const float prev_u = t == 0 ? (prev_mean ? prev_mean[i] : 0.f) : cm[s - G];
    const float r = cr[s];
    const float du = du_c - r * db[s];
    const float dv = dv_c - 0.5f * r * r * r * ds[s];
    const float dev = ux[s] - prev_u;
    ds[s] = c2 * du + 2.f * c1 * c2 * dv * dev;  // d(group mean)
    db[s] = c2 * dv;                              // d(group variance)
    du_c = c1 * du - 2.f * c1 * c2 * dv * dev;
    dv_c = c1 * dv;
  }
  if (dprev_mean) dprev_mean[i] = du_c;
  if (dprev_var) dprev_var[i] = dv_c;
}

// dx = dy r w' + dgm / Dg + 2 dgv (x - ux) / Dg, elementwise.
__global__ void tsn_dx_kernel(int64_t total, int D, int Dg, int G, const float* __restrict__ x,
                              const float* __restrict__ dy, const float* __restrict__ cr,
                              const float* __restrict__ weight, const float* __restrict__ ux,
                              const float* __restrict__ dgm, const float* __restrict__ dgv,
                              float* __restrict__ dx) {
  const float cg = 1.f / static_cast<float>(Dg);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / D;
    const int k = static_cast<int>(e % D);
    const int64_t s = row * G + k / Dg;
    const float w = 1.f + (weight ? weight[k] : 0.f);
    dx[e] = dy[e] * cr[s] * w + dgm[s] * cg + 2.f * dgv[s] * cg * (x[e] - ux[s]);
  }
}

// dweight/dbias partial column sums. Block (32, 8) owns 32 columns; grid (ceil(D/32), groups). Row group
// blockIdx.y takes token rows blockIdx.y*8 + ty, stepping by 8*groups. out[(grp*2 + 0)*D + k] gets the
// group's sum of dy (x - cm) cr, out[(grp*2 + 1)*D + k] its sum of dy.
constexpr int kTileCols = 32, kTileRows = 8;

__global__ void __launch_bounds__(kTileCols* kTileRows)
    tsn_dwb_partial_kernel(int64_t rows, int D, int Dg, int G, const float* __restrict__ x,
                           const float* __restrict__ dy, const float* __restrict__ cm,
                           const float* __restrict__ cr, float* __restrict__ out) {
  __shared__ float pw[kTileRows][kTileCols + 1], pb[kTileRows][kTileCols + 1];
  const int k = blockIdx.x * kTileCols + threadIdx.x;
  float aw = 0.f, ab = 0.f;
  if (k < D)
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * kTileRows + threadIdx.y; r < rows;
         r += static_cast<int64_t>(gridDim.y) * kTileRows) {
      const int64_t e = r * D + k, s = r * G + k / Dg;
      aw += dy[e] * (x[e] - cm[s]) * cr[s];
      ab += dy[e];
    }
  pw[threadIdx.y][threadIdx.x] = aw;
  pb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && k < D) {
    float sw = 0.f, sb = 0.f;
    for (int j = 0; j < kTileRows; ++j) {
      sw += pw[j][threadIdx.x];
      sb += pb[j][threadIdx.x];
    }
    out[(static_cast<int64_t>(blockIdx.y) * 2) * D + k] = sw;
    out[(static_cast<int64_t>(blockIdx.y) * 2 + 1) * D + k] = sb;
  }
}

__global__ void tsn_dwb_sum_kernel(int groups, int D, const float* __restrict__ part, float* dweight,
                                   float* dbias) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= D) return;
  float sw = 0.f, sb = 0.f;
  for (int j = 0; j < groups; ++j) {
    sw += part[(static_cast<int64_t>(j) * 2) * D + k];
    sb += part[(static_cast<int64_t>(j) * 2 + 1) * D + k];
  }
  if (dweight) dweight[k] += sw;
  if (dbias) dbias[k] += sb;
}

}  // namespace
}  // namespace tessera::cuda_detail
