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

// ---- the forward scan over t, in chunks ---------------------------------------------------------------
//
// The running state after step t of sequence b, group g is a Welford merge of every step so far (each step a
// block of count 1 with its group moments), so it is associative (Chan et al.'s merge). Steps are cut into
// K chunks of C: (1) a thread per (b, chunk, g) computes its chunk's own moments, (2) a thread per (b, g)
// merges the prior state and the chunks in order, recording the state entering each chunk, (3) a thread per
// (b, chunk, g) walks its chunk from that state with the sequential Kahan-compensated update (as the
// official CUDA kernel) and writes cummean, cumrstd. One chunk (K = 1) is the plain sequential scan.
// Index of (b, k, g) in the chunk arrays: (b * K + k) * G + g.

struct TsnChunks {
  int64_t L, C, K;  // steps, steps per chunk, chunks
  int G;
};

/// The (b, chunk k, g) of thread i in a kernel over `chunks` chunks numbered from k0; `at` its index in the
/// chunk arrays. False for threads past the end.
struct TsnChunkThread {
  int64_t b, k, bg, at;
  int g;
};
__device__ inline bool tsn_chunk_thread(int64_t B, const TsnChunks& ch, int64_t chunks, int64_t k0,
                                        TsnChunkThread& t) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * chunks * ch.G) return false;
  t.g = static_cast<int>(i % ch.G);
  const int64_t bk = i / ch.G;
  t.b = bk / chunks, t.k = bk % chunks + k0, t.bg = t.b * ch.G + t.g;
  t.at = (t.b * ch.K + t.k) * ch.G + t.g;
  return true;
}

// One step of the running state: n = the count before it (the prior's and earlier steps'); n == 0 takes the
// step's moments exactly (a fresh sequence: the prior has weight 0).
__device__ inline void tsn_step(int64_t n, float m, float v, float& m1, float& m2, float& c1, float& c2) {
  if (n == 0) {
    m1 = m, m2 = v, c1 = c2 = 0.f;
    return;
  }
  const float coef = 1.f / static_cast<float>(n + 1);
  const float delta1 = m - m1;
  const float delta2 = v + (1.f - coef) * delta1 * delta1 - m2;
  kahan_add(coef * delta1, m1, c1);
  kahan_add(coef * delta2, m2, c2);
}

// (1) Moments of chunk k's steps alone (mean of the step means, Welford variance), in double; chunks
// 0 .. K-2 (the last chunk's are not needed: nothing enters after it).
__global__ void tsn_chunk_moments_kernel(int64_t B, TsnChunks ch, const float* __restrict__ gm,
                                         const float* __restrict__ gv, double* __restrict__ kmean,
                                         double* __restrict__ kvar) {
  TsnChunkThread th;
  if (!tsn_chunk_thread(B, ch, ch.K - 1, 0, th)) return;
  double mean = 0.0, m2 = 0.0;  // m2: sum of squared deviations of the step means
  double vsum = 0.0;            // sum of the steps' own variances
  const int64_t t0 = th.k * ch.C;
#pragma unroll 4
  for (int64_t j = 0; j < ch.C; ++j) {
    const int64_t s = (th.b * ch.L + t0 + j) * ch.G + th.g;
    const double m = gm[s], d = m - mean;
    mean += d / static_cast<double>(j + 1);
    m2 += d * (m - mean);
    vsum += gv[s];
  }
  kmean[th.at] = mean;
  kvar[th.at] = (vsum + m2) / static_cast<double>(ch.C);
}

// (2) The state entering each chunk (k >= 1: entering chunk 0 is the prior), merged in double.
__global__ void tsn_chunk_prefix_kernel(int64_t B, TsnChunks ch, const int64_t* __restrict__ prev_count,
                                        const float* __restrict__ prev_mean,
                                        const float* __restrict__ prev_var, const double* __restrict__ kmean,
                                        const double* __restrict__ kvar, float* __restrict__ emean,
                                        float* __restrict__ evar) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * ch.G) return;
  const int64_t b = i / ch.G;
  const int g = static_cast<int>(i % ch.G);
  double n = prev_count ? static_cast<double>(prev_count[b]) : 0.0;
  double mean = prev_mean ? prev_mean[i] : 0.0, var = prev_var ? prev_var[i] : 1.0;
  const double c = static_cast<double>(ch.C);
#pragma unroll 4
  for (int64_t k = 0; k + 1 < ch.K; ++k) {
    const int64_t o = (b * ch.K + k) * ch.G + g;
    const double km = kmean[o], kv = kvar[o];
    if (n == 0.0) {
      mean = km, var = kv;
    } else {
      const double tot = n + c, d = km - mean;
      mean += d * c / tot;
      var = (n * var + c * kv + d * d * n * c / tot) / tot;
    }
    n += c;
    const int64_t e = o + ch.G;  // entering chunk k + 1
    emean[e] = static_cast<float>(mean);
    evar[e] = static_cast<float>(var);
  }
}

// (3) Walk chunk k from its entering state; the last chunk's final state is the carried-out (mean, var).
__global__ void tsn_chunk_scan_kernel(int64_t B, TsnChunks ch, const float* __restrict__ gm,
                                      const float* __restrict__ gv, const int64_t* __restrict__ prev_count,
                                      const float* __restrict__ prev_mean, const float* __restrict__ prev_var,
                                      const float* __restrict__ emean, const float* __restrict__ evar,
                                      float eps, float* __restrict__ cm, float* __restrict__ cr,
                                      int64_t* __restrict__ count, float* __restrict__ mean,
                                      float* __restrict__ var) {
  TsnChunkThread th;
  if (!tsn_chunk_thread(B, ch, ch.K, 0, th)) return;
  const int64_t b = th.b, k = th.k, bg = th.bg;
  const int g = th.g;
  const int64_t n0 = prev_count ? prev_count[b] : 0;
  float m1, m2;
  if (k == 0) {
    m1 = prev_mean ? prev_mean[bg] : 0.f, m2 = prev_var ? prev_var[bg] : 1.f;
  } else {
    m1 = emean[th.at], m2 = evar[th.at];
  }
  float c1 = 0.f, c2 = 0.f;  // Kahan compensations of m1, m2
  const int64_t t0 = k * ch.C, t1 = min(ch.L, t0 + ch.C);
#pragma unroll 4
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t s = (b * ch.L + t) * ch.G + g;
    tsn_step(n0 + t, gm[s], gv[s], m1, m2, c1, c2);
    cm[s] = m1;
    cr[s] = 1.f / sqrtf(m2 + eps);
  }
  if (k != ch.K - 1) return;
  if (mean) mean[bg] = m1;
  if (var) var[bg] = m2;
  if (count && g == 0) count[b] = n0 + ch.L;
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

// ---- the backward scan over t, in chunks --------------------------------------------------------------
//
// Spec §2.4: t from L-1 down to 0 with n_t = prev_count + t + 1, c1 = (n_t-1)/n_t, c2 = 1/n_t, carrying
// (du, dv); step t overwrites ds[s] with the gradient of the step's group mean and db[s] with that of its
// group variance; the final carries are dprev_mean, dprev_var. The carry update is affine,
//   dv' = c1 (dv - a),  du' = c1 (du - b) - 2 c1 c2 dev (dv - a),  a = r^3 ds / 2, b = r db,
// so chunks compose: (1) a thread per (b, chunk, g) composes its chunk's maps (upper triangular 2 x 2 plus an
// offset, in double), (2) a thread per (b, g) applies them from the last chunk down, recording the carry
// entering each chunk, (3) a thread per (b, chunk, g) walks its chunk from that carry with the per-step
// update. One chunk is the plain sequential scan.

/// The step terms of t (s its index): c1, c2, dev = ux - the previous step's cummean (the prior's mean at
/// t = 0), r^3/2 and r.
struct TsnBackStep {
  float c1, c2, dev, a_coef, b_coef;
};
__device__ inline TsnBackStep tsn_back_step(int64_t n0, int64_t t, int64_t s, int G, int64_t bg,
                                            const float* __restrict__ prev_mean, const float* __restrict__ cm,
                                            const float* __restrict__ cr, const float* __restrict__ ux) {
  const float nt = static_cast<float>(n0 + t + 1);
  const float prev_u = t == 0 ? (prev_mean ? prev_mean[bg] : 0.f) : cm[s - G];
  const float r = cr[s];
  return {static_cast<float>(n0 + t) / nt, 1.f / nt, ux[s] - prev_u, 0.5f * r * r * r, r};
}

// (1) Chunk k's composed map: carry_out = A carry_in + v, A = [[a11, a12], [0, a22]]; chunks 1 .. K-1 (chunk
// 0 ends the walk). map[(b * K + k) * G + g] holds 5 doubles: a11, a12, a22, v_du, v_dv.
__global__ void tsn_chunk_back_map_kernel(int64_t B, TsnChunks ch, const int64_t* __restrict__ prev_count,
                                          const float* __restrict__ prev_mean, const float* __restrict__ cm,
                                          const float* __restrict__ cr, const float* __restrict__ ux,
                                          const float* __restrict__ ds, const float* __restrict__ db,
                                          double* __restrict__ map) {
  TsnChunkThread th;
  if (!tsn_chunk_thread(B, ch, ch.K - 1, 1, th)) return;
  const int64_t b = th.b, k = th.k, bg = th.bg;
  const int g = th.g;
  const int64_t n0 = prev_count ? prev_count[b] : 0;
  double a11 = 1, a12 = 0, a22 = 1, vu = 0, vv = 0;
  const int64_t t0 = k * ch.C, t1 = min(ch.L, t0 + ch.C);
#pragma unroll 4
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const int64_t s = (b * ch.L + t) * ch.G + g;
    const TsnBackStep st = tsn_back_step(n0, t, s, ch.G, bg, prev_mean, cm, cr, ux);
    const double c1 = st.c1, m12 = -2.0 * st.c1 * st.c2 * st.dev;
    const double a = static_cast<double>(st.a_coef) * ds[s], bb = static_cast<double>(st.b_coef) * db[s];
    // step map M = [[c1, m12], [0, c1]], offset o = (-c1 b - m12 a, -c1 a); (A, v) <- (M A, M v + o)
    const double n11 = c1 * a11, n12 = c1 * a12 + m12 * a22, n22 = c1 * a22;
    const double nu = c1 * vu + m12 * vv - c1 * bb - m12 * a, nv = c1 * vv - c1 * a;
    a11 = n11, a12 = n12, a22 = n22, vu = nu, vv = nv;
  }
  double* o = map + th.at * 5;
  o[0] = a11, o[1] = a12, o[2] = a22, o[3] = vu, o[4] = vv;
}

// (2) The carry entering each chunk from above (k <= K-2: entering the last chunk is (dmean, dvar)).
__global__ void tsn_chunk_back_prefix_kernel(int64_t B, TsnChunks ch, const float* __restrict__ dmean,
                                             const float* __restrict__ dvar, const double* __restrict__ map,
                                             float* __restrict__ edu, float* __restrict__ edv) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * ch.G) return;
  const int64_t b = i / ch.G;
  const int g = static_cast<int>(i % ch.G);
  double du = dmean ? dmean[i] : 0.0, dv = dvar ? dvar[i] : 0.0;
#pragma unroll 4
  for (int64_t k = ch.K - 1; k >= 1; --k) {
    const int64_t o = (b * ch.K + k) * ch.G + g;
    const double* m = map + o * 5;
    const double nu = m[0] * du + m[1] * dv + m[3], nv = m[2] * dv + m[4];
    du = nu, dv = nv;
    edu[o - ch.G] = static_cast<float>(du);  // entering chunk k - 1
    edv[o - ch.G] = static_cast<float>(dv);
  }
}

// (3) Walk chunk k downwards from its entering carry, writing the step gradients; chunk 0's final carry is
// (dprev_mean, dprev_var).
__global__ void tsn_chunk_back_scan_kernel(int64_t B, TsnChunks ch, const float* __restrict__ dmean,
                                           const float* __restrict__ dvar,
                                           const int64_t* __restrict__ prev_count,
                                           const float* __restrict__ prev_mean, const float* __restrict__ cm,
                                           const float* __restrict__ cr, const float* __restrict__ ux,
                                           const float* __restrict__ edu, const float* __restrict__ edv,
                                           float* __restrict__ ds, float* __restrict__ db,
                                           float* __restrict__ dprev_mean, float* __restrict__ dprev_var) {
  TsnChunkThread th;
  if (!tsn_chunk_thread(B, ch, ch.K, 0, th)) return;
  const int64_t b = th.b, k = th.k, bg = th.bg;
  const int g = th.g;
  const int64_t n0 = prev_count ? prev_count[b] : 0;
  float du_c, dv_c;
  if (k == ch.K - 1) {
    du_c = dmean ? dmean[bg] : 0.f, dv_c = dvar ? dvar[bg] : 0.f;
  } else {
    du_c = edu[th.at], dv_c = edv[th.at];
  }
  const int64_t t0 = k * ch.C, t1 = min(ch.L, t0 + ch.C);
#pragma unroll 4
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const int64_t s = (b * ch.L + t) * ch.G + g;
    const TsnBackStep st = tsn_back_step(n0, t, s, ch.G, bg, prev_mean, cm, cr, ux);
    const float du = du_c - st.b_coef * db[s];
    const float dv = dv_c - st.a_coef * ds[s];
    ds[s] = st.c2 * du + 2.f * st.c1 * st.c2 * dv * st.dev;  // d(group mean)
    db[s] = st.c2 * dv;                                      // d(group variance)
    du_c = st.c1 * du - 2.f * st.c1 * st.c2 * dv * st.dev;
    dv_c = st.c1 * dv;
  }
  if (k != 0) return;
  if (dprev_mean) dprev_mean[bg] = du_c;
  if (dprev_var) dprev_var[bg] = dv_c;
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

}  // namespace
}  // namespace tessera::cuda_detail
