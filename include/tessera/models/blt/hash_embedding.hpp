// BLT hash n-gram embeddings (spec blt.md §3, §8.3).
//
// For position i of a row, n-gram size n and prime P, the window w = (x_{i-n+1}, ..., x_i) of token ids
// (missing history = id 0) hashes to  h = sum_j w_j * P^j  (oldest element P^0, current P^(n-1)), in int64
// two's-complement wrap-around arithmetic — P^j itself wraps — and the id is the floor-mod h mod M in [0, M).
// Each (function, size) pair has its own table of M rows; the HF port stacks them in one embedding
// `encoder_hash_tok_embedding.weight` [n_tables * M, dim] (row block t = table t, t = func * |sizes| +
// size_idx). The local encoder's input is   e_i = embed_tokens[x_i] + sum_t hash_table_t[hash_id_t(i)] (plain
// sum).
//
// Placing the layer in a model: HashNgramEmbedding names its two tables relative to the HF "model." root —
// "local_encoder.embed_tokens" and "encoder_hash_tok_embedding" — so visiting it as a child called "model"
// (f("model", hash_embedding)) yields the checkpoint keys model.local_encoder.embed_tokens.weight and
// model.encoder_hash_tok_embedding.weight. A model that prefers to place the tables itself can visit the
// public members `embed_tokens` and `hash_tables` (both tessera::Embedding) under any names instead (and must
// then not visit the HashNgramEmbedding itself, or the tables would appear twice).
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <algorithm>
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tessera/core/backend.hpp"
#include "tessera/core/error.hpp"
#include "tessera/io/json_config.hpp"
#include "tessera/layers/embedding.hpp"
#include "tessera/ops/embedding.hpp"

namespace tessera::blt {

/// The reference's prime list; hash function f uses kHashPrimes[f % 11] (released models: f = 0 only).
inline constexpr std::array<int64_t, 11> kHashPrimes = {1000000007, 5915587277, 1500450271, 3267000013,
                                                        5754853343, 4093082899, 9576890767, 3628273133,
                                                        2860486313, 5463458053, 3367900313};

/// Floor-mod hash ids of the n-grams ending at each of the T positions of one row: out[i] in [0, table_size).
/// ids are token ids (byte + 4, BOS = 1, ...) BEFORE the per-table offset of the stacked HF table.
inline void hash_ngram_ids(const int64_t* ids, int64_t T, int n, int64_t table_size, int64_t* out,
                           int64_t prime = kHashPrimes[0]) {
  TESSERA_CHECK(n >= 1, "blt::hash_ngram_ids: n-gram size must be >= 1, got ", n);
  TESSERA_CHECK(table_size >= 1, "blt::hash_ngram_ids: table size must be >= 1, got ", table_size);
  TESSERA_CHECK(T >= 0, "blt::hash_ngram_ids: negative length ", T);
  TESSERA_CHECK(n <= 64, "blt::hash_ngram_ids: n-gram size ", n, " is larger than 64");
  // P^j mod 2^64: unsigned arithmetic wraps without UB and has the same bits as wrapping int64.
  uint64_t pw[64];
  pw[0] = 1;
  for (int j = 1; j < n; ++j) pw[j] = pw[j - 1] * static_cast<uint64_t>(prime);
  for (int64_t i = 0; i < T; ++i) {
    uint64_t h = 0;
    // window element j is x_{i-n+1+j}; positions before the row start are the id 0 and contribute nothing
    for (int64_t j = std::max<int64_t>(0, n - 1 - i); j < n; ++j)
      h += static_cast<uint64_t>(ids[i - n + 1 + j]) * pw[j];
    int64_t r = static_cast<int64_t>(h) % table_size;  // C++ truncates toward zero ...
    if (r < 0) r += table_size;                        // ... PyTorch's % floors (sign of the divisor)
    out[i] = r;
  }
}

/// Batch form: ids and out are [B, T] row-major; each row is hashed on its own (zero history at every row
/// start).
inline void hash_ngram_ids_batch(const int64_t* ids, int64_t B, int64_t T, int n, int64_t table_size,
                                 int64_t* out, int64_t prime = kHashPrimes[0]) {
  TESSERA_CHECK(B >= 0, "blt::hash_ngram_ids_batch: negative batch ", B);
  for (int64_t b = 0; b < B; ++b) hash_ngram_ids(ids + b * T, T, n, table_size, out + b * T, prime);
}

/// Sizes of the hash embedding. Defaults are the released 1B/7B values except dim.
struct HashConfig {
  std::vector<int64_t> group_sizes{3, 4, 5, 6, 7, 8};  // encoder_hash_byte_group_size
  int64_t n_functions = 1;                             // encoder_hash_byte_group_nb_functions
  int64_t table_size = 500002;                         // encoder_hash_byte_group_vocab (rows per table)
  int64_t vocab_size = 260;                            // byte vocabulary of embed_tokens
  int64_t dim = 0;                                     // local encoder width

  int64_t n_tables() const { return n_functions * static_cast<int64_t>(group_sizes.size()); }
  /// n-gram size and prime of stacked table t (t = func * |sizes| + size_idx, the reference's order).
  int group_size(int64_t t) const { return static_cast<int>(group_sizes[t % group_sizes.size()]); }
  int64_t prime(int64_t t) const {
    return kHashPrimes[(t / static_cast<int64_t>(group_sizes.size())) % kHashPrimes.size()];
  }

  void validate(const std::string& where = "hash embedding config") const {
    TESSERA_CHECK(!group_sizes.empty(), where, ": encoder_hash_byte_group_size is empty");
    for (const int64_t n : group_sizes)
      TESSERA_CHECK(n >= 1 && n <= 64, where, ": n-gram size ", n, " must be in [1, 64]");
    TESSERA_CHECK(n_functions >= 1, where, ": encoder_hash_byte_group_nb_functions must be >= 1, got ",
                  n_functions);
    TESSERA_CHECK(table_size >= 1, where, ": encoder_hash_byte_group_vocab must be >= 1, got ", table_size);
    TESSERA_CHECK(vocab_size >= 1, where, ": vocab_size must be >= 1, got ", vocab_size);
    TESSERA_CHECK(dim >= 1, where, ": dim must be >= 1, got ", dim);
  }

  /// From a Hugging Face BltConfig (config.json): encoder_hash_byte_group_{size,nb_functions,vocab},
  /// vocab_size and encoder_config.hidden_size. Errors name the field.
  static HashConfig from_hf(const nlohmann::json& config) {
    HashConfig c;
    c.group_sizes = io::require<std::vector<int64_t>>(config, "encoder_hash_byte_group_size", "blt");
    c.n_functions = io::get_or<int64_t>(config, "encoder_hash_byte_group_nb_functions", 1, "blt");
    c.table_size = io::require<int64_t>(config, "encoder_hash_byte_group_vocab", "blt");
    c.vocab_size = io::get_or<int64_t>(config, "vocab_size", 260, "blt");
    c.dim = io::require<int64_t>(io::require<nlohmann::json>(config, "encoder_config", "blt"), "hidden_size",
                                 "blt.encoder_config");
    c.validate("config blt (hash embedding)");
    return c;
  }
};

/// Stacked hash ids of a [B, T] batch: out is [n_tables, B*T], entry (t, r) = hash id of row r in table t
/// PLUS the table offset t * table_size, i.e. a row index of the stacked HF table.
inline void stacked_hash_ids(const HashConfig& c, const int64_t* ids, int64_t B, int64_t T, int64_t* out) {
  const int64_t N = B * T;
  for (int64_t t = 0; t < c.n_tables(); ++t) {
    int64_t* o = out + t * N;
    hash_ngram_ids_batch(ids, B, T, c.group_size(t), c.table_size, o, c.prime(t));
    const int64_t off = t * c.table_size;
    for (int64_t r = 0; r < N; ++r) o[r] += off;
  }
}
/// The same with the backend tag first (the model's generic code calls stacked_hash_ids(B{}, ...)).
inline void stacked_hash_ids(cpu, const HashConfig& c, const int64_t* ids, int64_t B, int64_t T,
                             int64_t* out) {
  stacked_hash_ids(c, ids, B, T, out);
}

/// y[r] = byte_table[ids[r]] + sum_t hash_table[hash_ids[t*N + r]]  (summed in the reference's order:
/// byte embedding, then table 0, 1, ...). y is [N, D]; hash_ids are stacked row indices (stacked_hash_ids).
template <class T>
void hash_embedding_forward(cpu, T* y, const int64_t* ids, const int64_t* hash_ids, const T* byte_table,
                            const T* hash_table, int64_t N, int64_t n_tables, int64_t vocab, int64_t D) {
  ops::detail::check_embedding_ids(ids, N, vocab, "blt::hash_embedding_forward (byte ids)");
#pragma omp parallel for schedule(static) if (N * D * (n_tables + 1) >= ops::detail::kEmbeddingParallelMin)
  for (int64_t r = 0; r < N; ++r) {
    T* yr = y + r * D;
    const T* src = byte_table + ids[r] * D;
    for (int64_t d = 0; d < D; ++d) yr[d] = src[d];
    for (int64_t t = 0; t < n_tables; ++t) {
      const T* h = hash_table + hash_ids[t * N + r] * D;
      for (int64_t d = 0; d < D; ++d) yr[d] += h[d];
    }
  }
}

/// Gradients of hash_embedding_forward, ACCUMULATED (+=) into dbyte_table [vocab, D] and dhash_table [rows,
/// D].
template <class T>
void hash_embedding_backward(cpu, T* dbyte_table, T* dhash_table, const T* dy, const int64_t* ids,
                             const int64_t* hash_ids, int64_t N, int64_t n_tables, int64_t vocab,
                             int64_t hash_rows, int64_t D) {
  ops::embedding_backward(cpu{}, dbyte_table, dy, ids, N, vocab, D);
  for (int64_t t = 0; t < n_tables; ++t)
    ops::embedding_backward(cpu{}, dhash_table, dy, hash_ids + t * N, N, hash_rows, D);
}

// CUDA (cuda/hash.cu, cuda/elementwise.cu), device pointers, same results (the hash is exact integer
// arithmetic). hash_embedding_forward gives a NaN row for a byte id outside [0, vocab) (hash ids are produced
// in range by stacked_hash_ids and are not checked); the backward is embedding_backward(cuda) per table.
void hash_ngram_ids_batch(cuda, const int64_t* ids, int64_t B, int64_t T, int n, int64_t table_size,
                          int64_t* out, int64_t prime = kHashPrimes[0]);
void stacked_hash_ids(cuda, const HashConfig& c, const int64_t* ids, int64_t B, int64_t T, int64_t* out);
void hash_embedding_forward(cuda, float* y, const int64_t* ids, const int64_t* hash_ids,
                            const float* byte_table, const float* hash_table, int64_t N, int64_t n_tables,
                            int64_t vocab, int64_t D);
void hash_embedding_backward(cuda, float* dbyte_table, float* dhash_table, const float* dy,
                             const int64_t* ids, const int64_t* hash_ids, int64_t N, int64_t n_tables,
                             int64_t vocab, int64_t hash_rows, int64_t D);

/// Byte embedding + stacked hash n-gram tables (see the file comment for parameter placement).
template <class T, class B = cpu>
struct HashNgramEmbedding {
  using value_type = T;
  using backend = B;
  struct Saved {
    const int64_t* ids = nullptr;  // backend memory (the caller's, see forward)
    int64_t n = 0;
    Tensor<int64_t, B> hash_ids;  // [n_tables, n] stacked row indices (kept for backward)
  };
  HashConfig config;
  Embedding<T, B> embed_tokens;  // [vocab_size, dim]
  Embedding<T, B> hash_tables;   // [n_tables * table_size, dim]

  HashNgramEmbedding() = default;
  explicit HashNgramEmbedding(const HashConfig& c) { setup(c); }
  void setup(const HashConfig& c) {
    c.validate();
    config = c;
    embed_tokens.setup(c.vocab_size, c.dim);
    hash_tables.setup(c.n_tables() * c.table_size, c.dim);
  }
  /// Names relative to the HF "model." root (visit this layer as "model" to get the HF keys).
  template <class F>
  void for_each_child(F&& f) {
    f("local_encoder.embed_tokens", embed_tokens);
    f("encoder_hash_tok_embedding", hash_tables);
  }

  /// ids [batch*seq] row-major, in backend memory (device on CUDA) -> y [batch*seq, dim]. ids must stay valid
  /// until backward. The hash ids are computed on the backend (cuda/hash.cu on CUDA).
  void forward(const int64_t* ids, int64_t batch, int64_t seq, Tensor<T, B>& y, Saved& s) const {
    TESSERA_CHECK(batch >= 0 && seq >= 0, "blt::HashNgramEmbedding: bad batch/seq ", batch, "x", seq);
    const int64_t N = batch * seq, nt = config.n_tables();
    s.ids = ids;
    s.n = N;
    s.hash_ids.resize_uninit({nt, N});
    stacked_hash_ids(B{}, config, ids, batch, seq, s.hash_ids.data());
    y.resize_uninit({N, config.dim});
    hash_embedding_forward(B{}, y.data(), ids, s.hash_ids.data(), embed_tokens.params.weight.value.data(),
                           hash_tables.params.weight.value.data(), N, nt, config.vocab_size, config.dim);
  }
  /// dy [n, dim]: scatter-adds into both tables' gradients (accumulated; allocate_grads/zero_grads first).
  void backward(TensorView<const T> dy, Saved& s) {
    TESSERA_CHECK(dy.numel() == s.n * config.dim, "blt::HashNgramEmbedding::backward: dy has ", dy.numel(),
                  " elements, expected ", s.n, " x ", config.dim);
    TESSERA_CHECK(
        embed_tokens.params.weight.grad.numel() == embed_tokens.params.weight.value.numel() &&
            hash_tables.params.weight.grad.numel() == hash_tables.params.weight.value.numel(),
        "blt::HashNgramEmbedding::backward: gradients are not allocated (call allocate_grads or zero_grads)");
    hash_embedding_backward(B{}, embed_tokens.params.weight.grad.data(),
                            hash_tables.params.weight.grad.data(), dy.data(), s.ids, s.hash_ids.data(), s.n,
                            config.n_tables(), config.vocab_size, config.n_tables() * config.table_size,
                            config.dim);
  }
};

}  // namespace tessera::blt
