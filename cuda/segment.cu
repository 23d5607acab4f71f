// Segment pooling over patch ids on the GPU (ops/segment.hpp semantics) and patch ids from patch lengths.
//
// Max forward: one thread per (row, column) does a 64-bit atomicMax of the key (orderable bits of x << 32 |
// ~row) into the argmax buffer itself; a second kernel decodes each (segment, column) key into the argmax
// row and its value. The key order is (value, earliest row), so the result is exact and deterministic, with
// the CPU's tie rule (first row wins). Max backward: one thread per (segment, column); the argmax rows of one
// column are distinct, so the scatter is race-free.
// Mean forward: (segment id, row) pairs are radix-sorted with CUB (stable), each segment's range is found by
// binary search, and one thread per (segment, column) sums its rows in row order: the CPU's arithmetic.
// Mean backward: per-segment row counts by integer atomics (exact), then one thread per (row, column).
// Patch ids: cub::DeviceScan::InclusiveSum over all [B, P] lengths, then one thread per (row, position)
// binary-searches its row's patch ends (the row's inclusive sums minus the previous rows' total).
#include <algorithm>
#include <bit>
#include <climits>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "core_util.cuh"
#include "launch_core.hpp"

namespace tessera::cuda_detail {
namespace {

constexpr int kThreads = 256;

// ---- max ------------------------------------------------------------------------------------------------

// Monotone map of floats to uint32 (a < b  =>  key(a) < key(b)); -0 is mapped as +0 so that the two zeros tie
// (as `>` on the CPU treats them). NaN ordering is unspecified.
__device__ inline uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f == 0.f ? 0.f : f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void segment_max_scatter_kernel(unsigned long long* __restrict__ keys, const float* __restrict__ x,
                                           const int64_t* __restrict__ seg, int64_t N, int64_t S, int64_t D) {
  TESSERA_GRID_STRIDE(i, N * D) {
    const int64_t n = i / D, s = seg[n];
    if (s < 0 || s >= S) continue;
    // Low half ~n: among equal values the earliest row has the largest key. Never 0 (n < 2^31), so 0 = empty.
    const unsigned long long key =
        (static_cast<unsigned long long>(order_key(x[i])) << 32) | (0xffffffffu - static_cast<uint32_t>(n));
    atomicMax(keys + s * D + (i - n * D), key);
  }
}

__global__ void segment_max_decode_kernel(float* __restrict__ out, int64_t* argmax,
                                          const float* __restrict__ x, int64_t S, int64_t D) {
  TESSERA_GRID_STRIDE(i, S * D) {
    const unsigned long long key = static_cast<unsigned long long>(argmax[i]);
    if (key == 0) {
      out[i] = 0.f;
      argmax[i] = -1;
    } else {
      const int64_t n = 0xffffffffu - static_cast<uint32_t>(key & 0xffffffffull);
      out[i] = x[n * D + (i % D)];  // the row's own value, bit for bit
      argmax[i] = n;
    }
  }
}

__global__ void segment_max_backward_kernel(float* dx, const float* __restrict__ dout,
                                            const int64_t* __restrict__ argmax, int64_t S, int64_t D) {
  TESSERA_GRID_STRIDE(i, S * D) {
    const int64_t a = argmax[i];
    if (a >= 0) dx[a * D + (i % D)] += dout[i];
  }
}

// ---- mean -----------------------------------------------------------------------------------------------

// Sort keys: the segment id, or S for an ignored row (sorted last). Values: the row.
__global__ void segment_keys_kernel(uint32_t* __restrict__ keys, int32_t* __restrict__ rows,
                                    const int64_t* __restrict__ seg, int64_t N, int64_t S) {
  TESSERA_GRID_STRIDE(n, N) {
    const int64_t s = seg[n];
    keys[n] = static_cast<uint32_t>((s >= 0 && s < S) ? s : S);
    rows[n] = static_cast<int32_t>(n);
  }
}

__device__ inline int lower_bound_u32(const uint32_t* a, int n, uint32_t v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (a[mid] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// begin[s], end[s]: the range of segment s in the sorted keys.
__global__ void segment_ranges_kernel(int32_t* __restrict__ begin, int32_t* __restrict__ end,
                                      const uint32_t* __restrict__ keys, int N, int64_t S) {
  TESSERA_GRID_STRIDE(s, S) {
    begin[s] = lower_bound_u32(keys, N, static_cast<uint32_t>(s));
    end[s] = lower_bound_u32(keys, N, static_cast<uint32_t>(s + 1));
  }
}

__global__ void segment_mean_forward_kernel(float* __restrict__ out, const float* __restrict__ x,
                                            const int32_t* __restrict__ rows,
                                            const int32_t* __restrict__ begin,
                                            const int32_t* __restrict__ end, int64_t S, int64_t D) {
  TESSERA_GRID_STRIDE(i, S * D) {
    const int64_t s = i / D, d = i - s * D;
    const int b = begin[s], e = end[s];
    float acc = 0.f;
    for (int j = b; j < e; ++j) acc += x[static_cast<int64_t>(rows[j]) * D + d];  // row order, as the CPU
    const int count = e - b;
    out[i] = count > 1 ? acc * (1.f / static_cast<float>(count)) : acc;
  }
}

__global__ void segment_count_kernel(int* __restrict__ count, const int64_t* __restrict__ seg, int64_t N,
                                     int64_t S) {
  TESSERA_GRID_STRIDE(n, N) {
    const int64_t s = seg[n];
    if (s >= 0 && s < S) atomicAdd(count + s, 1);
  }
}

__global__ void segment_mean_backward_kernel(float* dx, const float* __restrict__ dout,
                                             const int64_t* __restrict__ seg, const int* __restrict__ count,
                                             int64_t N, int64_t S, int64_t D) {
  TESSERA_GRID_STRIDE(i, N * D) {
    const int64_t n = i / D, s = seg[n];
    if (s < 0 || s >= S) continue;
    dx[i] += dout[s * D + (i - n * D)] * (1.f / static_cast<float>(count[s]));
  }
}

// ---- patch ids ------------------------------------------------------------------------------------------

// id(t) = #{p in [0, P-1) : end_p <= t} with end_p the inclusive sum of the row's lengths up to p, i.e. the
// number of later patches that start at or before t (patchers::patch_ids_from_lengths).
__global__ void patch_ids_kernel(int64_t* __restrict__ out, const int64_t* __restrict__ incl, int64_t B,
                                 int64_t P, int64_t T) {
  TESSERA_GRID_STRIDE(i, B * T) {
    const int64_t b = i / T, t = i - b * T;
    const int64_t* row = incl + b * P;
    const int64_t base = b > 0 ? incl[b * P - 1] : 0;
    int64_t lo = 0, hi = P - 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (row[mid] - base <= t)
        lo = mid + 1;
      else
        hi = mid;
    }
    out[i] = lo;
  }
}

void check_segment_sizes(const char* op, int64_t N, int64_t S, int64_t D) {
  TESSERA_CHECK(N >= 0 && S >= 0 && D > 0, op, "(cuda): bad sizes N=", N, " S=", S, " D=", D);
  check_int_range(op, "N", N);
  check_int_range(op, "S", S);
}

}  // namespace

void segment_max_forward_f32(float* out, int64_t* argmax, const float* x, const int64_t* seg, int64_t N,
                             int64_t S, int64_t D) {
  check_segment_sizes("segment_max_forward", N, S, D);
  if (S == 0) return;
  TESSERA_CUDA_CHECK(cudaMemset(argmax, 0, static_cast<size_t>(S * D) * sizeof(int64_t)));  // 0 = empty
  auto* keys = reinterpret_cast<unsigned long long*>(argmax);
  if (N > 0) {
    segment_max_scatter_kernel<<<stride_blocks(N * D), kThreads>>>(keys, x, seg, N, S, D);
    TESSERA_CUDA_CHECK_LAUNCH("segment_max_scatter_kernel");
  }
  segment_max_decode_kernel<<<stride_blocks(S * D), kThreads>>>(out, argmax, x, S, D);
  TESSERA_CUDA_CHECK_LAUNCH("segment_max_decode_kernel");
}

void segment_max_backward_f32(float* dx, const float* dout, const int64_t* argmax, int64_t S, int64_t D) {
  TESSERA_CHECK(S >= 0 && D > 0, "segment_max_backward(cuda): bad sizes S=", S, " D=", D);
  if (S == 0) return;
  segment_max_backward_kernel<<<stride_blocks(S * D), kThreads>>>(dx, dout, argmax, S, D);
  TESSERA_CUDA_CHECK_LAUNCH("segment_max_backward_kernel");
}

void segment_mean_forward_f32(float* out, const float* x, const int64_t* seg, int64_t N, int64_t S,
                              int64_t D) {
  check_segment_sizes("segment_mean_forward", N, S, D);
  if (S == 0) return;
  const int n = static_cast<int>(N);
  const int end_bit = std::max(1, static_cast<int>(std::bit_width(static_cast<uint64_t>(S))));  // keys <= S
  size_t sort_bytes = 0;
  TESSERA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), n, 0, end_bit));
  OpTemp temp(2 * OpTemp::bytes<uint32_t>(N) + 2 * OpTemp::bytes<int32_t>(N) + 2 * OpTemp::bytes<int32_t>(S) +
              OpTemp::bytes<char>(static_cast<int64_t>(sort_bytes)));
  uint32_t* keys_in = temp.carve<uint32_t>(N);
  uint32_t* keys = temp.carve<uint32_t>(N);
  int32_t* rows_in = temp.carve<int32_t>(N);
  int32_t* rows = temp.carve<int32_t>(N);
  int32_t* begin = temp.carve<int32_t>(S);
  int32_t* end = temp.carve<int32_t>(S);
  void* sort_temp = temp.carve<char>(static_cast<int64_t>(sort_bytes));
  if (N > 0) {
    segment_keys_kernel<<<stride_blocks(N), kThreads>>>(keys_in, rows_in, seg, N, S);
    TESSERA_CUDA_CHECK_LAUNCH("segment_keys_kernel");
    TESSERA_CUDA_CHECK(
        cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, keys_in, keys, rows_in, rows, n, 0, end_bit));
  }
  segment_ranges_kernel<<<stride_blocks(S), kThreads>>>(begin, end, keys, n, S);
  TESSERA_CUDA_CHECK_LAUNCH("segment_ranges_kernel");
  segment_mean_forward_kernel<<<stride_blocks(S * D), kThreads>>>(out, x, rows, begin, end, S, D);
  TESSERA_CUDA_CHECK_LAUNCH("segment_mean_forward_kernel");
}

void segment_mean_backward_f32(float* dx, const float* dout, const int64_t* seg, int64_t N, int64_t S,
                               int64_t D) {
  check_segment_sizes("segment_mean_backward", N, S, D);
  if (N == 0 || S == 0) return;
  OpTemp temp(OpTemp::bytes<int>(S));
  int* count = temp.carve<int>(S);
  TESSERA_CUDA_CHECK(cudaMemset(count, 0, static_cast<size_t>(S) * sizeof(int)));
  segment_count_kernel<<<stride_blocks(N), kThreads>>>(count, seg, N, S);
  TESSERA_CUDA_CHECK_LAUNCH("segment_count_kernel");
  segment_mean_backward_kernel<<<stride_blocks(N * D), kThreads>>>(dx, dout, seg, count, N, S, D);
  TESSERA_CUDA_CHECK_LAUNCH("segment_mean_backward_kernel");
}

void patch_ids_from_lengths_i64(const int64_t* lengths, int64_t B, int64_t P, int64_t T, int64_t* out) {
  constexpr const char* op = "patch_ids_from_lengths";
  TESSERA_CHECK(P >= 1, "patchers::", op, ": need at least one patch");
  TESSERA_CHECK(B >= 0 && T >= 0, "patchers::", op, "(cuda): bad sizes batch=", B, " n_tokens=", T);
  TESSERA_CHECK(B * P <= INT_MAX, "patchers::", op, "(cuda): batch * n_patches = ", B * P, " is too large");
  if (B == 0 || T == 0) return;
  const int items = static_cast<int>(B * P);
  size_t scan_bytes = 0;
  TESSERA_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<const int64_t*>(nullptr),
                                                   static_cast<int64_t*>(nullptr), items));
  OpTemp temp(OpTemp::bytes<int64_t>(B * P) + OpTemp::bytes<char>(static_cast<int64_t>(scan_bytes)));
  int64_t* incl = temp.carve<int64_t>(B * P);
  void* scan_temp = temp.carve<char>(static_cast<int64_t>(scan_bytes));
  TESSERA_CUDA_CHECK(cub::DeviceScan::InclusiveSum(scan_temp, scan_bytes, lengths, incl, items));
  patch_ids_kernel<<<stride_blocks(B * T), kThreads>>>(out, incl, B, P, T);
  TESSERA_CUDA_CHECK_LAUNCH("patch_ids_kernel");
}

}  // namespace tessera::cuda_detail
