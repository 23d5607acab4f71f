// BLT hash n-gram ids and the summed byte + hash embedding lookup on the GPU (blt/hash_embedding.hpp).
//
// Hash ids: one thread per (row, position) evaluates h = sum_j w_j P^j over its window (oldest element P^0,
// missing history = id 0) in uint64 arithmetic, which wraps mod 2^64 exactly as the CPU's (and the
// reference's int64) arithmetic, then takes the floor-mod in [0, M) and adds the table offset.
// Embedding: one thread per (row, column) adds the byte row and every table's row in the CPU's order.
#include <climits>

#include "core_util.cuh"
#include "launch_core.hpp"

namespace tessera::cuda_detail {
namespace {

constexpr int kThreads = 256;

__global__ void hash_ngram_kernel(int64_t* __restrict__ out, const int64_t* __restrict__ ids, int64_t B,
                                  int64_t T, int n, int64_t M, uint64_t prime, int64_t offset) {
  TESSERA_GRID_STRIDE(k, B * T) {
    const int64_t b = k / T, i = k - b * T;
    const int64_t* row = ids + b * T;
    uint64_t h = 0, pw = 1;  // pw = P^j mod 2^64
    for (int j = 0; j < n; ++j) {
      const int64_t pos = i - n + 1 + j;  // window element j; before the row start it is id 0
      if (pos >= 0) h += static_cast<uint64_t>(row[pos]) * pw;
      pw *= prime;
    }
    int64_t r = static_cast<int64_t>(h) % M;  // truncates toward zero ...
    if (r < 0) r += M;                        // ... floor-mod like PyTorch's %
    out[k] = r + offset;
  }
}

__global__ void hash_embedding_forward_kernel(float* __restrict__ y, const int64_t* __restrict__ ids,
                                              const int64_t* __restrict__ hash_ids,
                                              const float* __restrict__ byte_table,
                                              const float* __restrict__ hash_table, int64_t N,
                                              int64_t n_tables, int64_t vocab, int64_t D) {
  TESSERA_GRID_STRIDE(i, N * D) {
    const int64_t r = i / D, d = i - r * D, id = ids[r];
    if (id < 0 || id >= vocab) {
      y[i] = __int_as_float(0x7fc00000);  // NaN: out-of-range byte id
      continue;
    }
    float acc = byte_table[id * D + d];
    for (int64_t t = 0; t < n_tables; ++t) acc += hash_table[hash_ids[t * N + r] * D + d];
    y[i] = acc;
  }
}

}  // namespace

void hash_ngram_ids_i64(const int64_t* ids, int64_t B, int64_t T, int n, int64_t M, int64_t prime,
                        int64_t offset, int64_t* out) {
  // The CPU function's checks and messages.
  TESSERA_CHECK(n >= 1, "blt::hash_ngram_ids: n-gram size must be >= 1, got ", n);
  TESSERA_CHECK(M >= 1, "blt::hash_ngram_ids: table size must be >= 1, got ", M);
  TESSERA_CHECK(T >= 0, "blt::hash_ngram_ids: negative length ", T);
  TESSERA_CHECK(n <= 64, "blt::hash_ngram_ids: n-gram size ", n, " is larger than 64");
  TESSERA_CHECK(B >= 0, "blt::hash_ngram_ids_batch: negative batch ", B);
  if (B == 0 || T == 0) return;
  hash_ngram_kernel<<<stride_blocks(B * T), kThreads>>>(out, ids, B, T, n, M, static_cast<uint64_t>(prime),
                                                        offset);
  TESSERA_CUDA_CHECK_LAUNCH("hash_ngram_kernel");
}

void hash_embedding_forward_f32(float* y, const int64_t* ids, const int64_t* hash_ids,
                                const float* byte_table, const float* hash_table, int64_t N, int64_t n_tables,
                                int64_t vocab, int64_t D) {
  TESSERA_CHECK(N >= 0 && n_tables >= 0 && vocab > 0 && D > 0,
                "blt::hash_embedding_forward(cuda): bad sizes N=", N, " n_tables=", n_tables,
                " vocab=", vocab, " D=", D);
  if (N == 0) return;
  hash_embedding_forward_kernel<<<stride_blocks(N * D), kThreads>>>(y, ids, hash_ids, byte_table, hash_table,
                                                                    N, n_tables, vocab, D);
  TESSERA_CUDA_CHECK_LAUNCH("hash_embedding_forward_kernel");
}

}  // namespace tessera::cuda_detail
