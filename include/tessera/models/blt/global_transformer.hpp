// BLT global latent transformer (specs/blt.md §5): Llama-style layers over patch vectors, RoPE over patch
// indices, causal (block-causal at EOS patches in the original layout), and NO final norm (§13.7) — the output
// is the raw residual stream. When k·d_enc != d_global (7B) the input is first projected by
// `token_embedding_projection` (HF: nn.Identity otherwise, so the key is absent).
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include "tessera/models/blt/local_encoder.hpp"

namespace tessera::blt {

template <class T, class B = cpu>
struct GlobalTransformer {
  using value_type = T;
  using backend = B;
  using Layers = Stack<LocalBlock<T, B>>;
  struct Saved {
    typename Linear<T, B>::Saved proj_s;
    typename Layers::Saved layers_s;
    Tensor<T, B> x;  // projected input (7B only)
  };
  Layers layers;
  Linear<T, B> token_embedding_projection;  // allocated only when the widths differ
  int64_t dim = 0, in_dim = 0;

  void setup(const BltConfig& c) {
    dim = c.global.dim;
    in_dim = c.global_input_dim();
    layers.setup(c.global.layer());
    token_embedding_projection = Linear<T, B>{};
    if (c.has_token_projection()) token_embedding_projection.setup(in_dim, dim);
  }
  bool projects() const { return token_embedding_projection.params.weight.present(); }

  template <class F>
  void for_each_child(F&& f) {
    f("layers", layers);
    if (projects()) f("token_embedding_projection", token_embedding_projection);
  }

  /// x: [B*P, in_dim] patch representations -> y: [B*P, dim].
  void forward(const SeqContext& patches, TensorView<const T> x, Tensor<T, B>& y, Saved& s) {
    TESSERA_CHECK(x.rank() == 2 && x.size(1) == in_dim, "BLT global transformer: input ", x.shape,
                  " does not have width k*d_enc = ", in_dim);
    if (projects()) {
      token_embedding_projection.forward(patches, x, s.x, s.proj_s);
      layers.forward(patches, s.x, y, s.layers_s);
    } else {
      layers.forward(patches, x, y, s.layers_s);
    }
  }
  /// dy: [B*P, dim] -> dx: [B*P, in_dim] (overwritten).
  void backward(const SeqContext& patches, TensorView<const T> dy, Tensor<T, B>& dx, Saved& s) {
    if (projects()) {
      layers.backward(patches, dy, dproj_, s.layers_s);
      token_embedding_projection.backward(patches, dproj_, dx, s.proj_s);
    } else {
      layers.backward(patches, dy, dx, s.layers_s);
    }
  }

 private:
  Tensor<T, B> dproj_;
};

}  // namespace tessera::blt
