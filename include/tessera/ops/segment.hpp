// Segment pooling (e.g. bytes -> patches in BLT): rows of x [N, D] are pooled into S segments by an int64
// segment id per row. Ids need not be sorted or contiguous; rows with id < 0 are ignored (padding); an id >= S
// is an error. Empty segments produce 0 (and argmax -1 for max pooling).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"

namespace tessera::ops {

namespace detail {
inline constexpr int64_t kSegmentParallelMin = int64_t(1) << 15;  // elements before OpenMP pays
inline constexpr int64_t kSegmentBlock = 256;                      // columns per parallel task

inline void check_segment_ids(const char* what, const int64_t* seg, int64_t N, int64_t S) {
  for (int64_t n = 0; n < N; ++n)
    TESSERA_CHECK(seg[n] < S, what, ": segment id ", seg[n], " of row ", n, " is >= the segment count ", S);
}

/// Calls f(d0, d1) for column blocks [d0, d1) of [0, D); blocks run in parallel for large N * D. Each task owns
/// its columns, so scatter loops over rows inside f never race and keep row order.
template <class F>
void segment_column_blocks(int64_t N, int64_t D, F&& f) {
  const int64_t nblocks = (D + kSegmentBlock - 1) / kSegmentBlock;
#pragma omp parallel for schedule(static) if (N * D >= kSegmentParallelMin && nblocks > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) f(blk * kSegmentBlock, std::min(D, (blk + 1) * kSegmentBlock));
}
}  // namespace detail

// ---- max ------------------------------------------------------------------------------------------

/// out[s, d] = max over rows n with seg[n] == s of x[n, d]; argmax[s, d] = that row (the first one on ties),
/// or -1 with out = 0 for an empty segment. out and argmax are [S, D], overwritten.
template <class T>
void segment_max_forward(cpu, T* out, int64_t* argmax, const T* x, const int64_t* seg, int64_t N, int64_t S,
                         int64_t D) {
  detail::check_segment_ids("segment_max_forward", seg, N, S);
  std::fill_n(argmax, S * D, int64_t(-1));
  std::fill_n(out, S * D, T(0));
  detail::segment_column_blocks(N, D, [&](int64_t d0, int64_t d1) {
    for (int64_t n = 0; n < N; ++n) {
      const int64_t s = seg[n];
      if (s < 0) continue;
      const T* xr = x + n * D;
      T* o = out + s * D;
      int64_t* a = argmax + s * D;
      for (int64_t d = d0; d < d1; ++d) {
        if (a[d] < 0 || xr[d] > o[d]) {  // strict >: ties keep the earliest row
          o[d] = xr[d];
          a[d] = n;
        }
      }
    }
  });
}

/// dx[argmax[s, d], d] += dout[s, d] for every non-empty (s, d). dx is [N, D] (the x of the forward pass).
template <class T>
void segment_max_backward(cpu, T* dx, const T* dout, const int64_t* argmax, int64_t S, int64_t D) {
  // A row belongs to one segment, so for a fixed column the argmax rows of different segments are distinct:
  // the loop over segments is race-free.
#pragma omp parallel for schedule(static) if (S * D >= detail::kSegmentParallelMin)
  for (int64_t s = 0; s < S; ++s) {
    const int64_t* a = argmax + s * D;
    const T* g = dout + s * D;
    for (int64_t d = 0; d < D; ++d)
      if (a[d] >= 0) dx[a[d] * D + d] += g[d];
  }
}

// ---- mean -----------------------------------------------------------------------------------------

/// out[s, :] = mean of x[n, :] over rows n with seg[n] == s (0 for an empty segment). out is [S, D],
/// overwritten.
template <class T>
void segment_mean_forward(cpu, T* out, const T* x, const int64_t* seg, int64_t N, int64_t S, int64_t D) {
  detail::check_segment_ids("segment_mean_forward", seg, N, S);
  std::vector<int64_t> count(S, 0);
  for (int64_t n = 0; n < N; ++n)
    if (seg[n] >= 0) ++count[seg[n]];
  std::fill_n(out, S * D, T(0));
  detail::segment_column_blocks(N, D, [&](int64_t d0, int64_t d1) {
    for (int64_t n = 0; n < N; ++n) {
      if (seg[n] < 0) continue;
      const T* xr = x + n * D;
      T* o = out + seg[n] * D;
      for (int64_t d = d0; d < d1; ++d) o[d] += xr[d];
    }
  });
  for (int64_t s = 0; s < S; ++s) {
    if (count[s] <= 1) continue;
    const T inv = T(1) / static_cast<T>(count[s]);
    T* o = out + s * D;
    for (int64_t d = 0; d < D; ++d) o[d] *= inv;
  }
}

/// dx[n, :] += dout[seg[n], :] / count(seg[n]) for rows with seg[n] >= 0. dx is [N, D].
template <class T>
void segment_mean_backward(cpu, T* dx, const T* dout, const int64_t* seg, int64_t N, int64_t S, int64_t D) {
  detail::check_segment_ids("segment_mean_backward", seg, N, S);
  std::vector<int64_t> count(S, 0);
  for (int64_t n = 0; n < N; ++n)
    if (seg[n] >= 0) ++count[seg[n]];
#pragma omp parallel for schedule(static) if (N * D >= detail::kSegmentParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t s = seg[n];
    if (s < 0) continue;
    const T inv = T(1) / static_cast<T>(count[s]);
    const T* g = dout + s * D;
    T* r = dx + n * D;
    for (int64_t d = 0; d < D; ++d) r[d] += g[d] * inv;
  }
}

// CUDA (cuda/segment.cu), fp32, device pointers (segment ids too), same semantics and results except that
// segment ids >= S are not diagnosed (those rows are ignored, like negative ids). Deterministic: max pooling
// via an atomicMax on (value, earliest row) keys, mean pooling sums each segment's rows in row order.
void segment_max_forward(cuda, float* out, int64_t* argmax, const float* x, const int64_t* seg, int64_t N,
                         int64_t S, int64_t D);
void segment_max_backward(cuda, float* dx, const float* dout, const int64_t* argmax, int64_t S, int64_t D);
void segment_mean_forward(cuda, float* out, const float* x, const int64_t* seg, int64_t N, int64_t S,
                          int64_t D);
void segment_mean_backward(cuda, float* dx, const float* dout, const int64_t* seg, int64_t N, int64_t S,
                           int64_t D);

}  // namespace tessera::ops
