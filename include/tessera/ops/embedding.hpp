// Token embedding: a row gather from a [V, D] table and its scatter-add gradient.
#pragma once
#include <algorithm>
#include <cstdint>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"

namespace tessera::ops {

namespace detail {
/// Throws naming the first id outside [0, V) and its position.
inline void check_embedding_ids(const int64_t* ids, int64_t N, int64_t V, const char* what) {
  for (int64_t i = 0; i < N; ++i)
    TESSERA_CHECK(ids[i] >= 0 && ids[i] < V, what, ": id ", ids[i], " at position ", i,
                  " is outside the vocabulary [0, ", V, ")");
}
inline constexpr int64_t kEmbeddingParallelMin = int64_t(1) << 16;  // elements before OpenMP pays
}  // namespace detail

/// out[n, :] = table[ids[n], :]. out is [N, D], table is [V, D].
template <class T>
void embedding_forward(cpu, T* out, const int64_t* ids, const T* table, int64_t N, int64_t V, int64_t D) {
  detail::check_embedding_ids(ids, N, V, "embedding_forward");
#pragma omp parallel for schedule(static) if (N * D >= detail::kEmbeddingParallelMin)
  for (int64_t n = 0; n < N; ++n) std::copy_n(table + ids[n] * D, D, out + n * D);
}

/// dtable[ids[n], :] += dout[n, :] (accumulated; repeated ids sum). Parallel over column blocks so that
/// repeated ids never race and the summation order (row order) does not depend on the thread count.
template <class T>
void embedding_backward(cpu, T* dtable, const T* dout, const int64_t* ids, int64_t N, int64_t V, int64_t D) {
  detail::check_embedding_ids(ids, N, V, "embedding_backward");
  constexpr int64_t kBlock = 256;
  const int64_t nblocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * D >= detail::kEmbeddingParallelMin && nblocks > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t d0 = blk * kBlock, d1 = std::min(D, d0 + kBlock);
    for (int64_t n = 0; n < N; ++n) {
      T* dst = dtable + ids[n] * D;
      const T* src = dout + n * D;
      for (int64_t d = d0; d < d1; ++d) dst[d] += src[d];
    }
  }
}

// CUDA (cuda/elementwise.cu), fp32, device pointers. Ids are not validated on the host (that would need a
// synchronisation): an id outside [0, V) gives a NaN row in forward and is skipped in backward. Backward is
// deterministic (rows sorted by id with CUB, each id's rows summed in row order, as here).
void embedding_forward(cuda, float* out, const int64_t* ids, const float* table, int64_t N, int64_t V,
                       int64_t D);
void embedding_backward(cuda, float* dtable, const float* dout, const int64_t* ids, int64_t N, int64_t V,
                        int64_t D);

}  // namespace tessera::ops
