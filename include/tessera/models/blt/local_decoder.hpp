// BLT local decoder (specs/blt.md §6). Input: the encoder's byte states (§13.15), not a token embedding.
// The global output is projected to k memory slots per patch (`patch_embedding_projection`, d_global -> k·d);
// before each layer (or only before layer 0 when cross_attn_all_layers is false) every byte cross-attends to
// the k slots of the patch preceding the one it predicts (PatchLayout::dec_patch) with the doubled residual
// h <- 2h + o, then runs its transformer layer. A final RMSNorm; the 260-way head is the model's lm_head.
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <vector>

#include "tessera/models/blt/local_encoder.hpp"

namespace tessera::blt {

template <class T, class B = cpu>
struct LocalDecoder {
  using value_type = T;
  using backend = B;
  using Block = LocalBlock<T, B>;
  using Cross = PatchCrossAttention<T, B>;
  struct Saved {
    typename Linear<T, B>::Saved proj_s;
    std::vector<typename Cross::Saved> cross_s;
    std::vector<typename Block::Saved> layer_s;
    std::vector<Tensor<T, B>> after_cross, after_layer;  // per layer: cross output, layer output
    typename RmsNorm<T, B>::Saved norm_s;
    Tensor<T, B> memory;  // [B*P, k*d] = [B*P*k, d]
    SeqContext bytes_q, slots_k;
  };
  Linear<T, B> patch_embedding_projection;
  Stack<Cross> cross_attn_layers;
  Stack<Block> layers;
  RmsNorm<T, B> norm;
  int64_t dim = 0, k = 1, global_dim = 0;
  bool all_layers = true;

  void setup(const BltConfig& c) {
    dim = c.decoder.dim;
    k = c.cross_attn_k;
    global_dim = c.global.dim;
    all_layers = c.decoder.cross_attn_all_layers;
    patch_embedding_projection.setup(global_dim, k * dim);
    cross_attn_layers.setup(c.decoder.cross_layer(), all_layers ? c.decoder.n_layers : 1);
    layers.setup(c.decoder.layer());
    norm.setup(dim, c.decoder.norm_eps);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("layers", layers);
    f("patch_embedding_projection", patch_embedding_projection);
    f("norm", norm);
    f("cross_attn_layers", cross_attn_layers);
  }
  bool has_cross(size_t i) const { return i == 0 || all_layers; }

  /// h_enc: [B*T, d] encoder byte states; g: [B*P, d_global] global output; out: [B*T, d] normed states.
  void forward(const SeqContext& bytes, TensorView<const T> h_enc, TensorView<const T> g,
               const PatchIndex<B>& pl, Tensor<T, B>& out, Saved& s) {
    const size_t n = layers.size();
    patch_embedding_projection.forward(bytes, g, s.memory, s.proj_s);
    const TensorView<const T> mem = s.memory.view().reshape({pl.B * pl.P * k, dim});
    s.bytes_q = bytes;
    s.bytes_q.segment_ids = pl.dec_patch;
    s.slots_k = SeqContext{};
    s.slots_k.batch = pl.B;
    s.slots_k.seq = pl.P * k;
    s.slots_k.segment_ids = pl.slot_patch;
    s.cross_s.resize(cross_attn_layers.size());
    s.layer_s.resize(n);
    s.after_cross.resize(n);
    s.after_layer.resize(n);
    TensorView<const T> h = h_enc;
    for (size_t i = 0; i < n; ++i) {
      if (has_cross(i)) {
        cross_attn_layers.layers[i].forward(s.bytes_q, h, s.slots_k, mem, s.after_cross[i], s.cross_s[i]);
        h = s.after_cross[i];
      }
      layers.layers[i].forward(bytes, h, s.after_layer[i], s.layer_s[i]);
      h = s.after_layer[i];
    }
    norm.forward(bytes, h, out, s.norm_s);
  }

  /// dout: [B*T, d] -> dh_enc [B*T, d] and dg [B*P, d_global] (both overwritten).
  void backward(const SeqContext& bytes, TensorView<const T> dout, const PatchIndex<B>& pl,
                Tensor<T, B>& dh_enc, Tensor<T, B>& dg, Saved& s) {
    const size_t n = layers.size();
    dmem_.resize_uninit({pl.B * pl.P * k, dim});  // written by the last cross layer, added to by the others
    norm.backward(bytes, dout, g_[0], s.norm_s);
    int cur = 0;  // g_[cur] holds the gradient w.r.t. the current hidden state
    bool dmem_written = false;
    for (size_t i = n; i-- > 0;) {
      layers.layers[i].backward(bytes, g_[cur], g_[1 - cur], s.layer_s[i]);
      cur = 1 - cur;
      if (has_cross(i)) {  // always true for layer 0, so the loop ends in dh_enc
        Tensor<T, B>& dx = i == 0 ? dh_enc : g_[1 - cur];
        cross_attn_layers.layers[i].backward(s.bytes_q, g_[cur], dx, dmem_, s.cross_s[i], dmem_written);
        dmem_written = true;
        cur = 1 - cur;
      }
    }
    dmem_.reshape({pl.B * pl.P, k * dim});
    patch_embedding_projection.backward(bytes, dmem_, dg, s.proj_s);
  }

 private:
  Tensor<T, B> g_[2], dmem_;
};

}  // namespace tessera::blt
