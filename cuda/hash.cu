// BLT hash n-gram ids and the summed byte + hash embedding lookup on the GPU (blt/hash_embedding.hpp).
//
// Hash ids: one thread per (row, position) evaluates h = sum_j w_j P^j over its window (oldest element P^0,
// missing history = id 0) in uint64 arithmetic, which wraps mod 2^64 exactly as the CPU's (and the
// reference's int64) arithmetic, then takes the floor-mod in [0, M) and adds the table offset.
// Embedding: adds the byte row and every table's row in the CPU's order. Rows of a multiple of 4 floats with
// 16-byte aligned tables: a block per row reads the row's ids once, then each thread adds four columns with
// the tables' loads issued together (eight at a time) — the per-element kernel waited on an id load and then
// a table load for every table in turn. Other rows: one thread per (row, column).
#include <algorithm>
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

constexpr int kRowTables = 8;  // table loads in flight per thread in the row kernel

__global__ void hash_embedding_rows_kernel(float4* __restrict__ y, const int64_t* __restrict__ ids,
                                           const int64_t* __restrict__ hash_ids,
                                           const float4* __restrict__ byte_table,
                                           const float4* __restrict__ hash_table, int64_t N, int n_tables,
                                           int64_t vocab, int64_t D4) {
  extern __shared__ int64_t row_ids[];  // [1 + n_tables]: the byte id, then the row of every table
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    for (int t = threadIdx.x; t <= n_tables; t += blockDim.x)
      row_ids[t] = t == 0 ? ids[r] : hash_ids[(t - 1) * N + r];
    __syncthreads();
    const int64_t id = row_ids[0];
    for (int64_t c = threadIdx.x; c < D4; c += blockDim.x) {
      if (id < 0 || id >= vocab) {  // NaN: out-of-range byte id
        const float nan = __int_as_float(0x7fc00000);
        y[r * D4 + c] = make_float4(nan, nan, nan, nan);
        continue;
      }
      float4 acc = byte_table[id * D4 + c];
      for (int t0 = 0; t0 < n_tables; t0 += kRowTables) {
        float4 v[kRowTables];
#pragma unroll
        for (int j = 0; j < kRowTables; ++j)
          if (t0 + j < n_tables) v[j] = hash_table[row_ids[1 + t0 + j] * D4 + c];
#pragma unroll
        for (int j = 0; j < kRowTables; ++j)
          if (t0 + j < n_tables)
            acc = make_float4(acc.x + v[j].x, acc.y + v[j].y, acc.z + v[j].z, acc.w + v[j].w);
      }
      y[r * D4 + c] = acc;
    }
    __syncthreads();  // row_ids is rewritten for the next row
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
  if (D % 4 == 0 && n_tables <= 1024 && aligned_to(y, 16) && aligned_to(byte_table, 16) &&
      (n_tables == 0 || aligned_to(hash_table, 16))) {
    const int64_t D4 = D / 4;
    const int threads = static_cast<int>(std::clamp<int64_t>((D4 + 31) / 32 * 32, 32, kThreads));
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(N, int64_t{1} << 20));
    hash_embedding_rows_kernel<<<blocks, threads, sizeof(int64_t) * (n_tables + 1)>>>(
        reinterpret_cast<float4*>(y), ids, hash_ids, reinterpret_cast<const float4*>(byte_table),
        reinterpret_cast<const float4*>(hash_table), N, static_cast<int>(n_tables), vocab, D4);
    TESSERA_CUDA_CHECK_LAUNCH("hash_embedding_rows_kernel");
    return;
  }
  hash_embedding_forward_kernel<<<stride_blocks(N * D), kThreads>>>(y, ids, hash_ids, byte_table, hash_table,
                                                                    N, n_tables, vocab, D);
  TESSERA_CUDA_CHECK_LAUNCH("hash_embedding_forward_kernel");
}

}  // namespace tessera::cuda_detail
