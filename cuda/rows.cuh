// Internal to tessera::cuda: building blocks for row-wise kernels (norms, softmax).
//
// A row kernel runs blocks of (Row::kThreads x Row::kRows) threads; the kThreads threads with the same
// threadIdx.y own one row and walk its columns with stride kThreads (coalesced). Two shapes:
//   WarpRows<R>:  one warp per row, R rows per block   (short rows, D <= 1024)
//   BlockRow<T>:  one block of T threads per row       (long rows)
// Row::sum / Row::max reduce over the threads of one row with CUB and give every thread the result.
#pragma once
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

namespace tessera::cuda_detail {

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <int R>
struct WarpRows {
  static constexpr int kThreads = 32;
  static constexpr int kRows = R;
  using Reduce = cub::WarpReduce<float>;
  struct Storage {
    typename Reduce::TempStorage t[R];
  };
  __device__ static float sum(float v, Storage& s) {
    return __shfl_sync(0xffffffffu, Reduce(s.t[threadIdx.y]).Sum(v), 0);  // lane 0 holds the total
  }
  __device__ static float max(float v, Storage& s) {
    return __shfl_sync(0xffffffffu, Reduce(s.t[threadIdx.y]).Reduce(v, MaxOp{}), 0);
  }
};

template <int T>
struct BlockRow {
  static constexpr int kThreads = T;
  static constexpr int kRows = 1;
  using Reduce = cub::BlockReduce<float, T>;
  struct Storage {
    typename Reduce::TempStorage t;
    float result;
  };
  // Thread 0 holds the total; publish it through shared memory. The barrier also makes `t` reusable: the
  // next reduction's internal barrier orders every thread's read of `result` before thread 0 rewrites it.
  __device__ static float publish(float r, Storage& s) {
    if (threadIdx.x == 0) s.result = r;
    __syncthreads();
    return s.result;
  }
  __device__ static float sum(float v, Storage& s) { return publish(Reduce(s.t).Sum(v), s); }
  __device__ static float max(float v, Storage& s) { return publish(Reduce(s.t).Reduce(v, MaxOp{}), s); }
};

/// Grid size for a row kernel over N rows.
template <class Row>
inline unsigned row_blocks(int64_t N) {
  return static_cast<unsigned>((N + Row::kRows - 1) / Row::kRows);
}

/// Run `launch(Row{})` with the row shape that suits rows of length D.
template <class F>
void dispatch_rows(int64_t D, F&& launch) {
  if (D <= 1024)
    launch(WarpRows<4>{});
  else
    launch(BlockRow<512>{});
}

}  // namespace tessera::cuda_detail
