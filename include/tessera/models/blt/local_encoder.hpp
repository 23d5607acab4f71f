// BLT local encoder (specs/blt.md §4) and the pieces the local decoder shares with it:
//   PatchLayout          per-row patch ids, decoder memory ids, document ids and segment ids for every mask
//   PatchCrossAttention  cross-attention with q_norm / k_norm and BLT's double residual  y = 2·x + o
//   LocalBlock           the Llama-style byte/patch transformer layer with a windowed, document-cut causal mask
//   LocalEncoder         transformer layer(s) over bytes -> max-pool per patch -> k query slots -> cross-attention
// Parameter names follow the Hugging Face port (`model.local_encoder.*`).
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tessera/layers/layers.hpp"
#include "tessera/models/blt/config.hpp"
#include "tessera/models/blt/patch_index.hpp"
#include "tessera/models/llama.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/segment.hpp"
#include "tessera/patchers/patcher.hpp"

namespace tessera::blt {

/// Causal self-attention mask of every BLT transformer: sliding window (SeqContext::window, 0 = unlimited)
/// and document cuts (SeqContext::doc_ids; all zero when cuts are off). One type for the encoder, decoder and
/// global stacks keeps a single instantiation of the block. CUDA: ops/blt_cuda.hpp (cuda/blt.cu).
using BltMask = mask::All<mask::SlidingWindow, mask::Document>;
template <class T, class B = cpu>
using LocalBlock = models::LlamaBlock<T, BltMask, B>;

/// Cross-attention mask of BLT (mask::SegmentMatch: a query row sees the key rows of its own segment), built
/// as ops::mask::PatchSegments so that CUDA uses the binding that never synchronises (ops/blt_cuda.hpp).
struct PatchSegmentMatch {
  static ops::mask::PatchSegments make_cross(const SeqContext& q, const SeqContext& k) {
    TESSERA_CHECK(q.segment_ids && k.segment_ids,
                  "blt::PatchSegmentMatch needs segment_ids on both contexts");
    return ops::mask::PatchSegments(ops::mask::SegmentEqual{q.segment_ids, k.segment_ids, true});
  }
};

// ---- patch bookkeeping --------------------------------------------------------------------------------

/// Everything the masks and pooling need about one batch of B rows x T bytes cut into P patches per row.
/// Rebuilt by every forward pass on the host; the model keeps it alive until backward and hands its arrays to
/// the layers as a PatchIndex (patch_index.hpp: the same vectors on the CPU, one upload on CUDA).
///
/// Patch lengths come in either convention and are normalised to the original one:
///   HF        a row sums to T; HF emits at most one trailing zero-length patch (when byte T would start a
///   new
///             patch); any further zeros are padding.
///   original  a row sums to T + 1 (include_next_token): the last patch holds the not-yet-seen byte T;
///   trailing
///             zeros are padding.
/// An HF row becomes an original one by adding the next byte to its last real patch (the empty trailing patch
/// if there is one). Patch ids of the T real bytes, the decoder mapping and the logits are unchanged (§8.3),
/// but zero padding then starts past the end of every row and cannot change the mapping — with the HF form a
/// padded zero would move the last byte's decoder patch onto an empty one.
struct PatchLayout {
  int64_t B = 0, T = 0, P = 0, k = 1;
  std::vector<int64_t> lengths;     // [B, P] patch lengths, normalised to sum T + 1 per row
  std::vector<int64_t> patch_id;    // [B*T] patch of each byte, 0..P-1 (encoder pooling / cross keys)
  std::vector<int64_t> pool_seg;    // [B*T] b*P + patch_id: global segment for max-pooling
  std::vector<int64_t> dec_patch;   // [B*T] patch whose global output byte i reads (§6: patch_id(i+1) - 1)
  std::vector<int64_t> slot_patch;  // [B*P*k] patch of each query/memory slot (slot p*k + r -> p)
  std::vector<int64_t> byte_doc;    // [B*T] document of each byte (cuts after EOS bytes; zeros when off)
  std::vector<int64_t> patch_doc;   // [B*P] document of each patch (cuts after EOS-containing patches)

  /// lens: [B, P] row-major, non-negative, each row summing to T (HF) or T + 1 (original). ids: [B*T].
  void build(const int64_t* ids, const int64_t* lens, int64_t batch, int64_t seq, int64_t n_patches, int64_t k_slots,
             bool eos_cuts, int64_t eos_id) {
    TESSERA_CHECK(batch > 0 && seq > 0, "BLT: empty batch (", batch, " x ", seq, ")");
    TESSERA_CHECK(n_patches > 0, "BLT: patch_lengths has no patches");
    TESSERA_CHECK(lens != nullptr, "BLT: patch_lengths is null");
    B = batch, T = seq, P = n_patches, k = k_slots;
    lengths.assign(lens, lens + B * P);
    for (int64_t b = 0; b < B; ++b) {
      int64_t* l = lengths.data() + b * P;
      int64_t sum = 0;
      for (int64_t p = 0; p < P; ++p) {
        TESSERA_CHECK(l[p] >= 0, "BLT: patch_lengths[", b, ", ", p, "] = ", l[p], " is negative");
        sum += l[p];
      }
      TESSERA_CHECK(sum == T || sum == T + 1, "BLT: patch_lengths of row ", b, " sum to ", sum, "; expected T = ", T,
                    " (Hugging Face) or T + 1 = ", T + 1, " (original, include_next_token)");
      if (sum == T) {
        int64_t last = P - 1;  // the last real patch: skip padding zeros, keep one trailing empty patch
        while (last > 0 && l[last] == 0 && l[last - 1] == 0) --last;
        ++l[last];
      }
    }
    patch_id.resize(B * T);
    pool_seg.resize(B * T);
    dec_patch.resize(B * T);
    slot_patch.resize(B * P * k);
    byte_doc.assign(B * T, 0);
    patch_doc.assign(B * P, 0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* l = lengths.data() + b * P;
      // HF _patch_ids_from_lengths: the last patch starting at or before byte i (past the end: the last patch).
      patchers::patch_ids_from_lengths(l, P, T, patch_id.data() + b * T);
      // Decoder: ids from lengths[1:] (HF), i.e. the patch preceding the one that byte i + 1 starts or continues
      // (with a single patch, HF's formula gives 0 everywhere).
      if (P > 1) patchers::patch_ids_from_lengths(l + 1, P - 1, T, dec_patch.data() + b * T);
      else std::fill_n(dec_patch.data() + b * T, T, int64_t(0));
      for (int64_t i = 0; i < T; ++i) pool_seg[b * T + i] = b * P + patch_id[b * T + i];
      for (int64_t s = 0; s < P * k; ++s) slot_patch[b * P * k + s] = s / k;
      if (eos_cuts) {
        int64_t doc = 0;
        std::vector<char> has_eos(P, 0);
        for (int64_t i = 0; i < T; ++i) {
          byte_doc[b * T + i] = doc;
          if (ids[b * T + i] == eos_id) {
            ++doc;  // the next byte starts a new document
            has_eos[patch_id[b * T + i]] = 1;
          }
        }
        int64_t pdoc = 0;
        for (int64_t p = 0; p < P; ++p) {
          patch_doc[b * P + p] = pdoc;
          if (has_eos[p]) ++pdoc;
        }
      }
    }
  }
};

// ---- cross-attention block -------------------------------------------------------------------------

/// BLT cross-attention (HF BltCrossAttention, original CrossAttention):
///   o = Wo · Attn(Wq · RMSNorm_q(x), Wk · RMSNorm_kv(src), Wv · RMSNorm_kv(src)),   y = 2·x + o.
/// The reference module returns x + o and its caller adds x once more (encoder: patch_embeds + cross(...),
/// decoder: h + cross(h, ...)); the released checkpoints depend on that doubled residual (§13.4), so both
/// additions live here. No rotary positions; the mask matches segment ids of queries and keys.
template <class T, class B = cpu>
struct PatchCrossAttention {
  using value_type = T;
  using backend = B;
  using Attn = CrossAttention<T, PatchSegmentMatch, B>;
  struct Saved {
    typename RmsNorm<T, B>::Saved qn_s, kn_s;
    typename Attn::Saved attn_s;
    Tensor<T, B> qn, kn;
  };
  RmsNorm<T, B> q_norm, k_norm;
  Attn attn;

  void setup(const LayerConfig& c) {
    q_norm.setup(c.dim, c.norm_eps);
    k_norm.setup(c.source_dim(), c.norm_eps);
    attn.setup(c);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("q_norm", q_norm);
    f("k_norm", k_norm);
    attn.for_each_child(f);  // q_proj, k_proj, v_proj, o_proj directly under this layer
  }
  /// x: [q.rows(), dim] queries; src: [k.rows(), kv_dim] keys/values; y = 2x + o. In bf16 (the attention's
  /// all-bf16 path) the norms write the projections' bf16 inputs directly and 2x rides in o_proj's epilogue.
  void forward(const SeqContext& q, TensorView<const T> x, const SeqContext& k, TensorView<const T> src,
               Tensor<T, B>& y, Saved& s) const {
    if constexpr (Attn::has_bf16_attention) {
      if (attn.all_bf16()) {
        q_norm.forward_to_bf16(q, x, s.attn_s.x16, s.qn_s);
        k_norm.forward_to_bf16(k, src, s.attn_s.src16, s.kn_s);
        return attn.forward_from_bf16_inputs(q, k, y, s.attn_s, x.data(), 2);
      }
    }
    q_norm.forward(q, x, s.qn, s.qn_s);
    k_norm.forward(k, src, s.kn, s.kn_s);
    attn.forward(q, s.qn, k, s.kn, y, s.attn_s);
    ops::add_inplace(B{}, y.data(), x.data(), x.numel());
    ops::add_inplace(B{}, y.data(), x.data(), x.numel());
  }
  /// dx (overwritten) = 2·dy + q-path gradient; dsrc = k/v-path gradient, overwritten, or added to dsrc's
  /// [k.rows(), kv_dim] when accumulate_dsrc (in k_norm's backward pass: e.g. the decoder's layers that all
  /// read one memory).
  void backward(const SeqContext& q, TensorView<const T> dy, Tensor<T, B>& dx, Tensor<T, B>& dsrc, Saved& s,
                bool accumulate_dsrc = false) {
    attn.backward(q, dy, dqn_, dkn_, s.attn_s);
    q_norm.backward(q, dqn_, dx, s.qn_s, dy.data());          // q-path + dy in one pass,
    ops::add_inplace(B{}, dx.data(), dy.data(), dy.numel());  // + dy again: the doubled residual
    if (accumulate_dsrc)
      TESSERA_CHECK(dsrc.numel() == dkn_.numel(), "PatchCrossAttention: accumulating into dsrc of ",
                    dsrc.shape(), ", expected ", dkn_.shape());
    k_norm.backward(s.attn_s.kctx, dkn_, dsrc, s.kn_s, accumulate_dsrc ? dsrc.data() : nullptr);
  }

 private:
  Tensor<T, B> dqn_, dkn_;
};

// ---- local encoder ---------------------------------------------------------------------------------

/// Byte transformer + patch cross-attention. Its input (byte + hash n-gram embeddings) is computed by the
/// model's HashNgramEmbedding, which also names `model.local_encoder.embed_tokens.weight`.
template <class T, class B = cpu>
struct LocalEncoder {
  using value_type = T;
  using backend = B;
  using Layers = Stack<LocalBlock<T, B>>;
  using Cross = Stack<PatchCrossAttention<T, B>>;  // used as a named container (cross_attn_layers.N)
  struct Saved {
    typename Layers::Saved layers_s;
    typename Linear<T, B>::Saved proj_s;
    typename PatchCrossAttention<T, B>::Saved cross_s;
    Tensor<T, B> pooled;            // [B*P, d] max-pool init (zeros for empty patches)
    Tensor<int64_t, B> argmax;      // [B*P, d]
    Tensor<T, B> q0;                // [B*P, k*d] = [B*P*k, d] query slots
    SeqContext slots, bytes_keys;   // cross-attention query / key contexts
  };
  Layers layers;
  Linear<T, B> patch_embedding_projection;
  Cross cross_attn_layers;
  int64_t dim = 0, k = 1;

  void setup(const BltConfig& c) {
    dim = c.encoder.dim;
    k = c.cross_attn_k;
    layers.setup(c.encoder.layer());
    patch_embedding_projection.setup(dim, dim * k);
    cross_attn_layers.setup(c.encoder.cross_layer(), 1);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("layers", layers);
    f("patch_embedding_projection", patch_embedding_projection);
    f("cross_attn_layers", cross_attn_layers);
  }

  /// e: [B*T, d] byte embeddings. h: [B*T, d] byte states after the layers (the decoder's input, no norm);
  /// patches: [B*P, k*d] patch representations 2·q0 + o (§4 steps 3-6).
  void forward(const SeqContext& bytes, TensorView<const T> e, const PatchIndex<B>& pl, Tensor<T, B>& h,
               Tensor<T, B>& patches, Saved& s) {
    layers.forward(bytes, e, h, s.layers_s);
    const int64_t rows = pl.B * pl.P;
    s.pooled.resize_uninit({rows, dim});
    s.argmax.resize_uninit({rows, dim});
    ops::segment_max_forward(B{}, s.pooled.data(), s.argmax.data(), h.data(), pl.pool_seg, pl.B * pl.T, rows,
                             dim);
    patch_embedding_projection.forward(bytes, s.pooled, s.q0, s.proj_s);
    s.slots = SeqContext{};
    s.slots.batch = pl.B;
    s.slots.seq = pl.P * k;
    s.slots.segment_ids = pl.slot_patch;
    s.bytes_keys = SeqContext{};
    s.bytes_keys.batch = pl.B;
    s.bytes_keys.seq = pl.T;
    s.bytes_keys.segment_ids = pl.patch_id;
    const TensorView<const T> q0 = s.q0.view().reshape({rows * k, dim});
    cross_attn_layers.layers[0].forward(s.slots, q0, s.bytes_keys, h, patches, s.cross_s);
    patches.reshape({rows, k * dim});
  }

  /// dh_ext: gradient reaching the byte states from outside (the decoder), [B*T, d], may be empty;
  /// dpatches: [B*P, k*d]. de: [B*T, d] gradient of the input embeddings (overwritten).
  void backward(const SeqContext& bytes, TensorView<const T> dh_ext, TensorView<const T> dpatches,
                const PatchIndex<B>& pl, Tensor<T, B>& de, Saved& s) {
    const int64_t rows = pl.B * pl.P;
    const TensorView<const T> dp = dpatches.reshape({rows * k, dim});
    cross_attn_layers.layers[0].backward(s.slots, dp, dq0_, dh_, s.cross_s);  // dh_ = key/value path
    dq0_.reshape({rows, k * dim});
    patch_embedding_projection.backward(bytes, dq0_, dpooled_, s.proj_s);
    ops::segment_max_backward(B{}, dh_.data(), dpooled_.data(), s.argmax.data(), rows, dim);
    if (dh_ext.numel() > 0) ops::add_inplace(B{}, dh_.data(), dh_ext.data(), dh_.numel());
    layers.backward(bytes, dh_, de, s.layers_s);
  }

 private:
  Tensor<T, B> dq0_, dpooled_, dh_;
};

}  // namespace tessera::blt
