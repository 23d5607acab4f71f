// Row-wise reductions on the GPU: softmax cross-entropy, entropies of softmax rows (BLT's entropy patcher)
// and LayerNorm.
//
// Every row kernel runs one row per warp or per block (rows.cuh) with fp32 max/sum reductions and expf;
// the few per-row scalar steps the CPU does in double (log-sum-exp of the loss, the entropy, 1/sqrt(var+eps))
// are done in double here too. Cross-entropy forward sums the per-row losses (double) and counts the valid
// rows in one block in a fixed order (deterministic), then copies the result to the host. Cross-entropy
// backward counts the valid rows on the device (no synchronisation). LayerNorm's dw/db column sums are
// deterministic and atomic-free: per-row-group partial sums, then a fixed-order sum (as rmsnorm in norm.cu).
#include <algorithm>
#include <climits>
#include <cub/block/block_reduce.cuh>

#include "column_sum.cuh"
#include "core_util.cuh"
#include "launch_core.hpp"
#include "rows.cuh"

namespace tessera::cuda_detail {
namespace {

__device__ inline float nan_f() {
  return __int_as_float(0x7fc00000);
}

// Row status for cross-entropy: ignored, counted, or a target outside [0, V).
enum : int { kIgnored = 0, kValid = 1, kBad = 2 };

__device__ inline int target_status(int64_t t, int V, int64_t ignore_index) {
  if (t == ignore_index) return kIgnored;
  return (t >= 0 && t < V) ? kValid : kBad;
}

// ---- cross-entropy forward --------------------------------------------------------------------------------

template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    ce_forward_kernel(double* __restrict__ row_loss, int* __restrict__ status, float* __restrict__ losses,
                      const float* __restrict__ logits, const int64_t* __restrict__ targets, int64_t N, int V,
                      int64_t ignore_index) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;  // a whole warp (WarpRows); never taken for BlockRow
  const int64_t t = targets[row];
  const int st = target_status(t, V, ignore_index);
  if (st != kValid) {  // uniform over the row's threads
    if (threadIdx.x == 0) {
      row_loss[row] = 0.0;
      status[row] = st;
      if (losses) losses[row] = st == kIgnored ? 0.f : nan_f();
    }
    return;
  }
  const float* x = logits + row * V;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += Row::kThreads) m = fmaxf(m, x[i]);
  m = Row::max(m, storage);
  float s = 0.f;
  for (int i = threadIdx.x; i < V; i += Row::kThreads) s += expf(x[i] - m);
  s = Row::sum(s, storage);
  if (threadIdx.x == 0) {
    // As the CPU: lse = max + log(sum) in double, loss = lse - logit of the target.
    const double l = static_cast<double>(m) + log(static_cast<double>(s)) - static_cast<double>(x[t]);
    row_loss[row] = l;
    status[row] = kValid;
    if (losses) losses[row] = static_cast<float>(l);
  }
}

struct CeTotals {
  double sum;
  long long valid;
  long long first_bad;  // N when there is none
};

constexpr int kReduceThreads = 1024;

struct MinLL {
  __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};

// One block: fixed per-thread strides and a fixed tree, so the total is the same on every run.
__global__ void __launch_bounds__(kReduceThreads)
    ce_totals_kernel(CeTotals* out, const double* __restrict__ row_loss, const int* __restrict__ status,
                     int64_t N) {
  using RD = cub::BlockReduce<double, kReduceThreads>;
  using RL = cub::BlockReduce<long long, kReduceThreads>;
  __shared__ union {
    typename RD::TempStorage d;
    typename RL::TempStorage l;
  } storage;
  double s = 0.0;
  long long valid = 0, bad = N;
  for (int64_t r = threadIdx.x; r < N; r += kReduceThreads) {
    const int st = status[r];
    if (st == kValid) {
      s += row_loss[r];
      ++valid;
    } else if (st == kBad && r < bad) {
      bad = r;
    }
  }
  s = RD(storage.d).Sum(s);
  __syncthreads();
  valid = RL(storage.l).Sum(valid);
  __syncthreads();
  bad = RL(storage.l).Reduce(bad, MinLL{});
  if (threadIdx.x == 0) *out = CeTotals{s, valid, bad};
}

// ---- cross-entropy backward -------------------------------------------------------------------------------

// scale = dloss / n_valid (0 when no row counts), computed on the device so no synchronisation is needed.
__global__ void __launch_bounds__(kReduceThreads)
    ce_scale_kernel(float* scale, const int64_t* __restrict__ targets, int64_t N, int V, int64_t ignore_index,
                    double dloss) {
  using RL = cub::BlockReduce<long long, kReduceThreads>;
  __shared__ typename RL::TempStorage storage;
  long long valid = 0;
  for (int64_t r = threadIdx.x; r < N; r += kReduceThreads)
    valid += target_status(targets[r], V, ignore_index) == kValid;
  valid = RL(storage).Sum(valid);
  if (threadIdx.x == 0) *scale = valid > 0 ? static_cast<float>(dloss / static_cast<double>(valid)) : 0.f;
}

// dlogits = (softmax - onehot(target)) * scale; zero for ignored rows, NaN for rows with a bad target.
template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    ce_backward_kernel(float* dlogits, const float* logits, const int64_t* __restrict__ targets,
                       const float* __restrict__ scale_ptr, int64_t N, int V, int64_t ignore_index) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;
  const int64_t t = targets[row];
  const int st = target_status(t, V, ignore_index);
  float* dr = dlogits + row * V;
  if (st != kValid) {
    const float fill = st == kIgnored ? 0.f : nan_f();
    for (int i = threadIdx.x; i < V; i += Row::kThreads) dr[i] = fill;
    return;
  }
  const float* x = logits + row * V;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += Row::kThreads) m = fmaxf(m, x[i]);
  m = Row::max(m, storage);
  float s = 0.f;
  for (int i = threadIdx.x; i < V; i += Row::kThreads) s += expf(x[i] - m);
  s = Row::sum(s, storage);
  const float scale = *scale_ptr;
  const float c = scale / s;  // as the CPU: exp(x - m) * (scale / sum), then scale off the target
  for (int i = threadIdx.x; i < V; i += Row::kThreads) {
    const float g = expf(x[i] - m) * c;
    dr[i] = i == t ? g - scale : g;
  }
}

// ---- entropies --------------------------------------------------------------------------------------------

// H = log S - sum_v e^{z_v} z_v / S with z = x - max, S = sum_v e^{z_v}; sums in fp32, the final step in
// double.
template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    entropy_kernel(float* __restrict__ out, const float* __restrict__ logits, int64_t rows, int V) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= rows) return;
  const float* x = logits + row * V;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += Row::kThreads) m = fmaxf(m, x[i]);
  m = Row::max(m, storage);
  float s = 0.f, sz = 0.f;
  for (int i = threadIdx.x; i < V; i += Row::kThreads) {
    const float z = x[i] - m, e = expf(z);
    s += e;
    sz += e * z;
  }
  s = Row::sum(s, storage);
  sz = Row::sum(sz, storage);
  if (threadIdx.x == 0)
    out[row] =
        static_cast<float>(log(static_cast<double>(s)) - static_cast<double>(sz) / static_cast<double>(s));
}

// ---- LayerNorm --------------------------------------------------------------------------------------------

template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    layernorm_forward_kernel(float* y, float* __restrict__ mean, float* __restrict__ rstd, const float* x,
                             const float* __restrict__ w, const float* __restrict__ b, int64_t N, int D,
                             double eps) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;
  const float* xr = x + row * D;
  float s = 0.f;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) s += xr[i];
  const float mu = Row::sum(s, storage) / static_cast<float>(D);
  float ss = 0.f;  // two-pass (biased) variance, as the CPU
  for (int i = threadIdx.x; i < D; i += Row::kThreads) {
    const float c = xr[i] - mu;
    ss += c * c;
  }
  const double var = static_cast<double>(Row::sum(ss, storage)) / static_cast<double>(D);
  const float r = static_cast<float>(1.0 / sqrt(var + eps));
  if (threadIdx.x == 0) {
    if (mean) mean[row] = mu;
    if (rstd) rstd[row] = r;
  }
  float* yr = y + row * D;  // may alias x: each element is read and then written by the same thread
  for (int i = threadIdx.x; i < D; i += Row::kThreads) {
    float v = (xr[i] - mu) * r;
    if (w) v *= w[i];
    if (b) v += b[i];
    yr[i] = v;
  }
}

// With g = dy * w (w optional), xc = x - mean: dx = r * (g - mean(g) - xc * r * mean(g * xc) * r).
template <class Row>
__global__ void __launch_bounds__(Row::kThreads* Row::kRows)
    layernorm_backward_dx_kernel(float* dx, const float* dy, const float* __restrict__ x,
                                 const float* __restrict__ w, const float* __restrict__ mean,
                                 const float* __restrict__ rstd, int64_t N, int D) {
  __shared__ typename Row::Storage storage;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Row::kRows + threadIdx.y;
  if (row >= N) return;
  const float* xr = x + row * D;
  const float* dyr = dy + row * D;
  const float mu = mean[row], r = rstd[row], inv_d = 1.f / static_cast<float>(D);
  float sg = 0.f, sgx = 0.f;
  for (int i = threadIdx.x; i < D; i += Row::kThreads) {
    const float g = dyr[i] * (w ? w[i] : 1.f);
    sg += g;
    sgx += g * (xr[i] - mu);
  }
  const float mg = Row::sum(sg, storage) * inv_d;
  const float mgx = Row::sum(sgx, storage) * r * inv_d;
  float* dxr = dx + row * D;  // may alias dy (same-thread read-then-write per element)
  for (int i = threadIdx.x; i < D; i += Row::kThreads) {
    const float g = dyr[i] * (w ? w[i] : 1.f);
    dxr[i] = r * (g - mg - (xr[i] - mu) * (r * mgx));
  }
}

// dw/db partial sums. Block (32, 8) owns 32 columns; grid (ceil(D/32), G). Row group g = blockIdx.y takes
// rows g*8 + ty, stepping by 8G, and writes its column sums to pw/pb[g*D + c].
constexpr int kTileCols = 32, kTileRows = 8;

__global__ void __launch_bounds__(kTileCols* kTileRows)
    layernorm_dwdb_partial_kernel(float* __restrict__ pw, float* __restrict__ pb,
                                  const float* __restrict__ dy, const float* __restrict__ x,
                                  const float* __restrict__ mean, const float* __restrict__ rstd, int64_t N,
                                  int D) {
  __shared__ float tw[kTileRows][kTileCols + 1], tb[kTileRows][kTileCols + 1];
  const int c = blockIdx.x * kTileCols + threadIdx.x;
  float aw = 0.f, ab = 0.f;
  if (c < D)
    for (int64_t n = static_cast<int64_t>(blockIdx.y) * kTileRows + threadIdx.y; n < N;
         n += static_cast<int64_t>(gridDim.y) * kTileRows) {
      const float g = dy[n * D + c];
      aw += g * (x[n * D + c] - mean[n]) * rstd[n];
      ab += g;
    }
  tw[threadIdx.y][threadIdx.x] = aw;
  tb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float sw = 0.f, sb = 0.f;
    for (int k = 0; k < kTileRows; ++k) {
      sw += tw[k][threadIdx.x];
      sb += tb[k][threadIdx.x];
    }
    const int64_t o = static_cast<int64_t>(blockIdx.y) * D + c;
    pw[o] = sw;
    pb[o] = sb;
  }
}

// Rows and columns are indexed with int. Column loops step by up to 512 (i += kThreads) and the LayerNorm
// grids round D up to 256: keep D that far below INT_MAX so neither overflows.
constexpr int64_t kMaxCols = INT_MAX - 1024;

void check_rows(const char* op, int64_t N, int64_t D) {
  TESSERA_CHECK(N >= 0 && D > 0 && D <= kMaxCols && N <= INT_MAX, op, "(cuda): bad sizes N=", N, " D=", D,
                " (need 0 <= N <= ", INT_MAX, ", 0 < D <= ", kMaxCols, ")");
}

}  // namespace

// ---- cross-entropy ----------------------------------------------------------------------------------------

double cross_entropy_forward_f32(float* losses, const float* logits, const int64_t* targets, int64_t N,
                                 int64_t V, int64_t ignore_index) {
  constexpr const char* op = "cross_entropy_forward";
  check_rows(op, N, V);
  if (N == 0) return 0.0;
  TESSERA_CHECK(logits && targets, op, "(cuda): logits or targets is null");
  OpTemp temp(OpTemp::bytes<double>(N) + OpTemp::bytes<int>(N) + OpTemp::bytes<CeTotals>(1));
  double* row_loss = temp.carve<double>(N);
  int* status = temp.carve<int>(N);
  CeTotals* totals = temp.carve<CeTotals>(1);
  const int v = static_cast<int>(V);
  dispatch_rows(V, [&](auto row) {
    using Row = decltype(row);
    ce_forward_kernel<Row><<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(
        row_loss, status, losses, logits, targets, N, v, ignore_index);
  });
  TESSERA_CUDA_CHECK_LAUNCH("ce_forward_kernel");
  ce_totals_kernel<<<1, kReduceThreads>>>(totals, row_loss, status, N);
  TESSERA_CUDA_CHECK_LAUNCH("ce_totals_kernel");
  CeTotals h{};
  TESSERA_CUDA_CHECK(cudaMemcpy(&h, totals, sizeof h, cudaMemcpyDeviceToHost));
  if (h.first_bad < N) {
    int64_t t = 0;
    TESSERA_CUDA_CHECK(cudaMemcpy(&t, targets + h.first_bad, sizeof t, cudaMemcpyDeviceToHost));
    throw Error(str(op, ": target ", t, " of row ", h.first_bad, " is outside [0, ", V,
                    ") and is not ignore_index (", ignore_index, ")"));
  }
  return h.valid > 0 ? h.sum / static_cast<double>(h.valid) : 0.0;
}

void cross_entropy_backward_f32(float* dlogits, const float* logits, const int64_t* targets, int64_t N,
                                int64_t V, double dloss, int64_t ignore_index) {
  constexpr const char* op = "cross_entropy_backward";
  check_rows(op, N, V);
  if (N == 0) return;
  TESSERA_CHECK(dlogits && logits && targets, op, "(cuda): dlogits, logits or targets is null");
  OpTemp temp(OpTemp::bytes<float>(1));
  float* scale = temp.carve<float>(1);
  const int v = static_cast<int>(V);
  ce_scale_kernel<<<1, kReduceThreads>>>(scale, targets, N, v, ignore_index, dloss);
  TESSERA_CUDA_CHECK_LAUNCH("ce_scale_kernel");
  dispatch_rows(V, [&](auto row) {
    using Row = decltype(row);
    ce_backward_kernel<Row><<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(
        dlogits, logits, targets, scale, N, v, ignore_index);
  });
  TESSERA_CUDA_CHECK_LAUNCH("ce_backward_kernel");
}

void row_entropies_f32(float* out, const float* logits, int64_t rows, int64_t V) {
  check_rows("entropies_from_logits", rows, V);
  if (rows == 0) return;
  dispatch_rows(V, [&](auto row) {
    using Row = decltype(row);
    entropy_kernel<Row>
        <<<row_blocks<Row>(rows), dim3(Row::kThreads, Row::kRows)>>>(out, logits, rows, static_cast<int>(V));
  });
  TESSERA_CUDA_CHECK_LAUNCH("entropy_kernel");
}

// ---- LayerNorm --------------------------------------------------------------------------------------------

void layernorm_forward_f32(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                           int64_t N, int64_t D, double eps) {
  check_rows("layernorm_forward", N, D);
  if (N == 0) return;
  dispatch_rows(D, [&](auto row) {
    using Row = decltype(row);
    layernorm_forward_kernel<Row><<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(
        y, mean, rstd, x, w, b, N, static_cast<int>(D), eps);
  });
  TESSERA_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

void layernorm_backward_f32(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                            const float* mean, const float* rstd, int64_t N, int64_t D) {
  check_rows("layernorm_backward", N, D);
  if (N == 0) return;
  const int d = static_cast<int>(D);
  // dw/db first: they read dy, which dx may overwrite (dx aliasing dy is allowed).
  if (dw || db) {
    const int groups = static_cast<int>(std::clamp<int64_t>((N + 63) / 64, 1, 256));
    OpTemp temp(2 * OpTemp::bytes<float>(static_cast<int64_t>(groups) * D));
    float* pw = temp.carve<float>(static_cast<int64_t>(groups) * D);
    float* pb = temp.carve<float>(static_cast<int64_t>(groups) * D);
    layernorm_dwdb_partial_kernel<<<dim3((d + kTileCols - 1) / kTileCols, groups),
                                    dim3(kTileCols, kTileRows)>>>(pw, pb, dy, x, mean, rstd, N, d);
    TESSERA_CUDA_CHECK_LAUNCH("layernorm_dwdb_partial_kernel");
    launch_column_sum<float>({pw, dw, D}, {pb, db, D}, groups, D);
  }
  if (dx) {
    dispatch_rows(D, [&](auto row) {
      using Row = decltype(row);
      layernorm_backward_dx_kernel<Row>
          <<<row_blocks<Row>(N), dim3(Row::kThreads, Row::kRows)>>>(dx, dy, x, w, mean, rstd, N, d);
    });
    TESSERA_CUDA_CHECK_LAUNCH("layernorm_backward_dx_kernel");
  }
}

}  // namespace tessera::cuda_detail
