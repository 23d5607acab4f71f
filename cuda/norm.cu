// RMSNorm on the GPU: y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps), rows of length D.
//
// Two kernel families:
// - vectorised rows (D a multiple of 4, D <= 8192, 16-byte aligned rows): a row's threads hold it in
//   registers as float4s, so x is read from memory once (the row-wise kernels read it twice) with 16-byte
//   loads, and bf16 outputs are stored 4 at a time. The backward computes dx and dw's partial column sums in
//   the same pass over dy and x: a block walks a fixed set of rows and keeps its columns' sums in registers.
// - row-wise (any D): one row per warp or block (rows.cuh), element by element; dw from a separate tiled
//   pass over dy and x.
// Both reduce dw deterministically without atomics: per-slot partial column sums, then a fixed-order sum.
#include <algorithm>
#include <atomic>
#include <climits>
#include <initializer_list>

#include "check.hpp"
#include "column_sum.cuh"
#include "core_util.cuh"
#include "launch.hpp"
#include "rows.cuh"

namespace tessera::cuda_detail {
namespace {

// Out = float, or uint16_t for bf16 (the fp32 value rounded once: what a cast of the fp32 output gives).
template <class Row, class Out>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    rmsnorm_forward_kernel(Out* y, float* rstd, const float* x, const float* w, int64_t N, int D,
                           double eps) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;  // a whole warp (WarpRows); never taken for BlockRow, whose grid is exactly N
  const float* xr = x + row * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) ss += xr[i] * xr[i];
  // eps added and the root taken in double, as on the CPU (one double op per row).
  const float r = static_cast<float>(1.0 / sqrt(static_cast<double>(Row::sum(ss, storage)) / D + eps));
  if (rstd && threadIdx.x == 0) rstd[row] = r;
  Out* yr = y + row * D;  // fp32: may alias x (each element is read and then written by the same thread)
  if (w)
    for (int i = threadIdx.x; i < D; i += Row::kThreads) store_value(yr + i, xr[i] * r * w[i]);
  else
    for (int i = threadIdx.x; i < D; i += Row::kThreads) store_value(yr + i, xr[i] * r);
}

// With g = dy * w (w optional) and r the row's rstd: dx = r * (g - x * r^2 * <g, x> / D) (+ res, a residual
// branch's gradient, when given: the add of a pre-norm residual block in the same pass).
template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    rmsnorm_backward_dx_kernel(float* dx, const float* dy, const float* x, const float* w, const float* rstd,
                               const float* res, int64_t N, int D) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;
  const float* xr = x + row * D;
  const float* dyr = dy + row * D;
  float dot = 0.f;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) dot += dyr[i] * (w ? w[i] : 1.f) * xr[i];
  dot = Row::sum(dot, storage);
  const float r = rstd[row];
  const float c = dot * r * r / static_cast<float>(D);
  float* dxr = dx + row * D;  // may alias dy or res (same-thread read-then-write per element)
  const float* rr = res ? res + row * D : nullptr;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) {
    const float v = r * (dyr[i] * (w ? w[i] : 1.f) - xr[i] * c);
    dxr[i] = rr ? v + rr[i] : v;
  }
}

// dw partial sums. Block (32, 8) owns 32 columns; grid (ceil(D/32), G). Row group g = blockIdx.y takes
// rows g*8 + ty, stepping by 8G. out[g*D + c] (= or += when `add`) gets the group's sum for column c.
constexpr int kTileCols = 32, kTileRows = 8;

__global__ void __launch_bounds__(kTileCols* kTileRows)
    rmsnorm_dw_partial_kernel(float* __restrict__ out, bool add, const float* __restrict__ dy,
                              const float* __restrict__ x, const float* __restrict__ rstd, int64_t N, int D) {
  __shared__ float part[kTileRows][kTileCols + 1];
  const int c = blockIdx.x * kTileCols + threadIdx.x;
  float acc = 0.f;
  if (c < D)
    for (int64_t n = static_cast<int64_t>(blockIdx.y) * kTileRows + threadIdx.y; n < N;
         n += static_cast<int64_t>(gridDim.y) * kTileRows)
      acc += dy[n * D + c] * x[n * D + c] * rstd[n];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float s = 0.f;
    for (int k = 0; k < kTileRows; ++k) s += part[k][threadIdx.x];
    float* o = out + static_cast<int64_t>(blockIdx.y) * D + c;
    *o = add ? *o + s : s;
  }
}

// dw[c] += sum over g of partial[g * D + c], in a fixed order (column_sum.cuh).
void launch_sum_partials(float* dw, const float* partial, int groups, int D) {
  launch_column_sum<float>({partial, dw, D}, {}, groups, D);
}

// ---- vectorised rows ----------------------------------------------------------------------------------

// A row of D floats is D/4 float4s; thread t of the row's T threads holds float4s t, t + T, ..., up to
// kVecRowVecs of them (T = threads per row, a multiple of 32, so every warp lies in one row). A block is
// (T, R) threads: R rows side by side, T * R <= max(256, T).
constexpr int kVecRowVecs = 4;
constexpr int kVecRowMaxThreads = 512;
constexpr int64_t kVecRowMaxD = int64_t{4} * kVecRowVecs * kVecRowMaxThreads;  // 8192

struct VecRowShape {
  int threads;  // per row
  int rows;     // per block
};

VecRowShape vec_row_shape(int64_t D) {
  const int64_t vecs = D / 4;
  const int64_t per = (vecs + kVecRowVecs - 1) / kVecRowVecs;  // threads needed
  const int threads = static_cast<int>(std::max<int64_t>(32, (per + 31) / 32 * 32));
  return {threads, std::max(1, 256 / threads)};
}

/// The sum of v over the T threads of this thread's row (block (T, R), T a multiple of 32); every thread of
/// the row gets it. `part` holds one float per warp of the block. In a fixed order: deterministic.
__device__ inline float vec_row_sum(float v, float* part) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warps = blockDim.x / 32;
  if (warps == 1) return v;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) part[threadIdx.y * warps + warp] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < warps; ++i) s += part[threadIdx.y * warps + i];
  __syncthreads();  // part is rewritten by the next call
  return s;
}

__device__ inline void store4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}
__device__ inline void store4(uint16_t* p, float4 v) {
  *reinterpret_cast<uint64_t*>(p) = pack_bf16x4(v.x, v.y, v.z, v.w);
}

// Rows rows_per_block * blockIdx.x + threadIdx.y. Rows past N take part in the barriers and store nothing.
template <class Out>
__global__ void __launch_bounds__(kVecRowMaxThreads)
    rmsnorm_forward_vec_kernel(Out* y, float* rstd, const float* x, const float* w, int64_t N, int D,
                               double eps) {
  __shared__ float part[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool live = row < N;
  const int vecs = D / 4, T = blockDim.x;
  const float4* xr = reinterpret_cast<const float4*>(x + (live ? row : 0) * D);
  float4 v[kVecRowVecs];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kVecRowVecs; ++j) {
    const int c = threadIdx.x + j * T;
    v[j] = live && c < vecs ? xr[c] : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  }
  ss = vec_row_sum(ss, part);
  if (!live) return;
  // eps added and the root taken in double, as on the CPU (one double op per row).
  const float r = static_cast<float>(1.0 / sqrt(static_cast<double>(ss) / D + eps));
  if (rstd && threadIdx.x == 0) rstd[row] = r;
  Out* yr = y + row * D;  // fp32: may alias x (x is in registers)
#pragma unroll
  for (int j = 0; j < kVecRowVecs; ++j) {
    const int c = threadIdx.x + j * T;
    if (c >= vecs) break;
    float4 o = make_float4(v[j].x * r, v[j].y * r, v[j].z * r, v[j].w * r);
    if (w) {
      const float4 g = reinterpret_cast<const float4*>(w)[c];
      o = make_float4(o.x * g.x, o.y * g.y, o.z * g.z, o.w * g.w);
    }
    store4(yr + 4 * c, o);
  }
}

// dx (nullable) and dw's partial column sums (dw_out nullable) in one pass. Block b walks rows
// b * R + threadIdx.y + k * gridDim.x * R (k = 0, 1, ...): one slot of rows per (block, threadIdx.y), whose
// column sums sum_n dy * x * rstd go to dw_out[slot * D + c] (= or += when `add`).
// With g = dy * w (w optional) and r the row's rstd: dx = r * (g - x * r^2 * <g, x> / D) (+ res).
__global__ void __launch_bounds__(kVecRowMaxThreads)
    rmsnorm_backward_vec_kernel(float* dx, float* dw_out, bool add, const float* dy, const float* x,
                                const float* w, const float* rstd, const float* res, int64_t N, int D) {
  __shared__ float part[32];
  const int vecs = D / 4, T = blockDim.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  float4 wv[kVecRowVecs], acc[kVecRowVecs];
#pragma unroll
  for (int j = 0; j < kVecRowVecs; ++j) {
    const int c = threadIdx.x + j * T;
    wv[j] = w && c < vecs ? reinterpret_cast<const float4*>(w)[c] : make_float4(1.f, 1.f, 1.f, 1.f);
    acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  // Every row of the block takes the same number of turns (the barriers in vec_row_sum).
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.y;
  for (int64_t base = first; base < N; base += step) {
    const int64_t row = base + threadIdx.y;
    const bool live = row < N;
    const float4* xr = reinterpret_cast<const float4*>(x + (live ? row : 0) * D);
    const float4* dyr = reinterpret_cast<const float4*>(dy + (live ? row : 0) * D);
    float4 xv[kVecRowVecs], gv[kVecRowVecs];
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < kVecRowVecs; ++j) {
      const int c = threadIdx.x + j * T;
      const bool in = live && c < vecs;
      xv[j] = in ? xr[c] : make_float4(0.f, 0.f, 0.f, 0.f);
      gv[j] = in ? dyr[c] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    const float r = live ? rstd[row] : 0.f;
#pragma unroll
    for (int j = 0; j < kVecRowVecs; ++j) {
      // dw's terms use dy itself; then g = dy * w.
      acc[j].x += gv[j].x * xv[j].x * r, acc[j].y += gv[j].y * xv[j].y * r;
      acc[j].z += gv[j].z * xv[j].z * r, acc[j].w += gv[j].w * xv[j].w * r;
      gv[j] = make_float4(gv[j].x * wv[j].x, gv[j].y * wv[j].y, gv[j].z * wv[j].z, gv[j].w * wv[j].w);
      dot += gv[j].x * xv[j].x + gv[j].y * xv[j].y + gv[j].z * xv[j].z + gv[j].w * xv[j].w;
    }
    dot = vec_row_sum(dot, part);
    if (!live || !dx) continue;
    const float k = dot * r * r / static_cast<float>(D);
    float4* dxr = reinterpret_cast<float4*>(dx + row * D);  // may alias dy or res (read before written)
    const float4* rr = res ? reinterpret_cast<const float4*>(res + row * D) : nullptr;
#pragma unroll
    for (int j = 0; j < kVecRowVecs; ++j) {
      const int c = threadIdx.x + j * T;
      if (c >= vecs) break;
      float4 o = make_float4(r * (gv[j].x - xv[j].x * k), r * (gv[j].y - xv[j].y * k),
                             r * (gv[j].z - xv[j].z * k), r * (gv[j].w - xv[j].w * k));
      if (rr) {
        const float4 e = rr[c];
        // Not contracted into an fma with the product above: dx + res is exactly dx, then + res.
        o = make_float4(__fadd_rn(o.x, e.x), __fadd_rn(o.y, e.y), __fadd_rn(o.z, e.z), __fadd_rn(o.w, e.w));
      }
      dxr[c] = o;
    }
  }
  if (!dw_out || slot >= N) return;  // a slot without rows has nothing to add (and is not summed)
  float4* out = reinterpret_cast<float4*>(dw_out + slot * D);
#pragma unroll
  for (int j = 0; j < kVecRowVecs; ++j) {
    const int c = threadIdx.x + j * T;
    if (c >= vecs) break;
    if (add) {
      const float4 o = out[c];
      out[c] = make_float4(o.x + acc[j].x, o.y + acc[j].y, o.z + acc[j].z, o.w + acc[j].w);
    } else {
      out[c] = acc[j];
    }
  }
}

void check_sizes(const char* op, int64_t N, int64_t D) {
  TESSERA_CHECK(N >= 0 && N <= INT_MAX && D > 0 && D <= INT_MAX, op, "(cuda): bad sizes N=", N, " D=", D);
}

std::atomic<bool> g_vectorised_rows{true};

/// Whether the vectorised kernels take these rows: D a multiple of 4 and at most kVecRowMaxD, every pointer
/// 16-byte aligned (rows then are too), not switched off (set_rmsnorm_vectorised).
bool vec_rows_fit(int64_t D, std::initializer_list<const void*> ptrs) {
  if (!g_vectorised_rows.load(std::memory_order_relaxed) || D % 4 != 0 || D > kVecRowMaxD) return false;
  for (const void* p : ptrs)
    if (p && !aligned_to(p, 16)) return false;
  return true;
}

template <class Out>
void rmsnorm_forward_any(Out* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                         double eps) {
  check_sizes("rmsnorm_forward", N, D);
  if (N == 0) return;
  if (vec_rows_fit(D, {y, x, w}) && (sizeof(Out) == 4 || aligned_to(y, 8))) {
    const VecRowShape sh = vec_row_shape(D);
    const auto blocks = static_cast<unsigned>((N + sh.rows - 1) / sh.rows);
    rmsnorm_forward_vec_kernel<Out>
        <<<blocks, dim3(sh.threads, sh.rows)>>>(y, rstd, x, w, N, static_cast<int>(D), eps);
    TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_forward_vec_kernel");
    return;
  }
  dispatch_rows(D, [&](auto row) {
    using Row = decltype(row);
    rmsnorm_forward_kernel<Row, Out>
        <<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(y, rstd, x, w, N, static_cast<int>(D), eps);
  });
  TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

/// The partial sums of dw (one row of D per slot), kept across calls.
float* dw_partials(int64_t slots, int64_t D) {
  thread_local KeptDeviceBuffer<float> scratch;
  return scratch.get(static_cast<size_t>(slots) * static_cast<size_t>(D));
}

void rmsnorm_backward_vec(float* dx, float* dw, const float* dy, const float* x, const float* w,
                          const float* rstd, int64_t N, int D, const float* residual) {
  const VecRowShape sh = vec_row_shape(D);
  // dx alone: a slot per row. With dw: slots of at least 8 rows, at most 1024 slots (enough blocks to fill
  // the GPU at BLT's 4096 rows; bounds the partial sums' scratch and their final sum); a function of N only,
  // so the sums' order is fixed.
  const int64_t slots = dw ? std::clamp<int64_t>((N + 7) / 8, 1, 1024) : N;
  const auto blocks = static_cast<unsigned>((slots + sh.rows - 1) / sh.rows);
  const int64_t live_slots = std::min<int64_t>(static_cast<int64_t>(blocks) * sh.rows, N);
  float* out = nullptr;
  bool add = false;
  if (dw && live_slots == 1) {
    out = dw, add = true;
  } else if (dw) {
    out = dw_partials(live_slots, D);
  }
  rmsnorm_backward_vec_kernel<<<blocks, dim3(sh.threads, sh.rows)>>>(dx, out, add, dy, x, w, rstd, residual,
                                                                     N, D);
  TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_backward_vec_kernel");
  if (dw && live_slots > 1) {
    launch_sum_partials(dw, out, static_cast<int>(live_slots), D);
  }
}
}  // namespace

bool set_rmsnorm_vectorised(bool on) {
  return g_vectorised_rows.exchange(on);
}

void rmsnorm_forward_f32(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                         double eps) {
  rmsnorm_forward_any(y, rstd, x, w, N, D, eps);
}

void rmsnorm_forward_bf16out(uint16_t* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                             double eps) {
  rmsnorm_forward_any(y, rstd, x, w, N, D, eps);
}

void rmsnorm_backward_f32(float* dx, float* dw, const float* dy, const float* x, const float* w,
                          const float* rstd, int64_t N, int64_t D, const float* residual) {
  check_sizes("rmsnorm_backward", N, D);
  if (N == 0 || (!dx && !dw)) return;
  const int d = static_cast<int>(D);
  if (vec_rows_fit(D, {dx, dy, x, w, residual})) {
    rmsnorm_backward_vec(dx, dw, dy, x, w, rstd, N, d, residual);
    return;
  }
  // dw first: it reads dy, which dx may overwrite (dx aliasing dy is allowed).
  if (dw) {
    // Enough row groups to fill the GPU, at least 64 rows each; capped to bound the scratch.
    const int groups = static_cast<int>(std::clamp<int64_t>((N + 63) / 64, 1, 256));
    const dim3 grid((d + kTileCols - 1) / kTileCols, groups), block(kTileCols, kTileRows);
    if (groups == 1) {
      rmsnorm_dw_partial_kernel<<<grid, block>>>(dw, true, dy, x, rstd, N, d);
      TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_dw_partial_kernel");
    } else {
      float* partial = dw_partials(groups, D);
      rmsnorm_dw_partial_kernel<<<grid, block>>>(partial, false, dy, x, rstd, N, d);
      TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_dw_partial_kernel");
      launch_sum_partials(dw, partial, groups, d);
    }
  }
  if (dx) {
    dispatch_rows(D, [&](auto row) {
      using Row = decltype(row);
      rmsnorm_backward_dx_kernel<Row>
          <<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(dx, dy, x, w, rstd, residual, N, d);
    });
    TESSERA_CUDA_CHECK_LAUNCH("rmsnorm_backward_dx_kernel");
  }
}

}  // namespace tessera::cuda_detail
