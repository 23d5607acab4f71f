// What every layer's forward/backward sees besides its input: the batch layout and per-token ids
// from which mask policies, rotary positions and modality routing are computed (DESIGN.md "Masks").
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

#include "tessera/core/tensor.hpp"

namespace tessera {

/// Rows of every activation are tokens, row index = b * seq + t. Pointers are optional (nullptr = unused)
/// and must stay valid until the matching backward has run.
struct SeqContext {
  int64_t batch = 1;
  int64_t seq = 0;
  const int64_t* positions = nullptr;    // [batch*seq] RoPE positions; nullptr = pos_offset + t
  int64_t pos_offset = 0;                // first position when `positions` is null (cached decoding)
  const int64_t* doc_ids = nullptr;      // [batch*seq] document of each token (document-cut masks)
  const int64_t* segment_ids = nullptr;  // [batch*seq] e.g. patch id of each byte (block-causal masks)
  const int64_t* modality = nullptr;     // [batch*seq] modality id (ModalityUntied routing)
  const uint8_t* key_valid = nullptr;    // [batch*seq] 1 = key may be attended (padding masks)
  int64_t window = 0;                    // sliding-window size for windowed masks (0 = unlimited)
  bool single_document = false;          // every row is one document (doc_ids, if set, all equal): document
                                         // cuts may be dropped (mask::PositionOnly)

  int64_t rows() const { return batch * seq; }
};

/// Sizes a layer reads at setup. Structure is a type, size is a value (DESIGN.md principle 1).
struct LayerConfig {
  int64_t dim = 0;          // model width
  int64_t n_layers = 0;     // for stacks
  int64_t n_heads = 0;      // query heads
  int64_t n_kv_heads = 0;   // key/value heads (GQA); 0 = n_heads
  int64_t head_dim = 0;     // 0 = dim / n_heads
  int64_t ffn_hidden = 0;   // SwiGLU inner width
  int64_t kv_dim = 0;       // width of the key/value source of cross-attention; 0 = dim
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;

  int64_t kv_heads() const { return n_kv_heads ? n_kv_heads : n_heads; }
  int64_t hdim() const { return head_dim ? head_dim : dim / n_heads; }
  int64_t source_dim() const { return kv_dim ? kv_dim : dim; }
};

/// Backward temporaries of layer type L: N tensors shared by every instance of L on this thread. A layer's
/// backward temporaries live only inside one backward call, and a model runs its layers' backward passes one
/// after another (a type never contains an instance of itself), so one set per type and thread suffices:
/// a stack of 25 blocks keeps one block's worth of backward scratch instead of 25 (GBs at long sequences).
/// Buffers keep their capacity across calls (no per-step allocations once the largest shape has been seen).
/// Rule for users: never let a Saved struct or a forward output point into these buffers.
template <class L, class T, class B, size_t N>
std::array<Tensor<T, B>, N>& shared_scratch() {
  thread_local std::array<Tensor<T, B>, N> scratch;
  return scratch;
}

}  // namespace tessera
