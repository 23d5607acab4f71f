// A Llama-style transformer (RMSNorm, interleaved RoPE, GQA, SwiGLU, no biases) composed only from
// library layers. Used as the byte-level LM of tessera's first app and as BLT's entropy model.
//
// Backends: Llama<T, cpu> (any T) and Llama<float, cuda>. Every pointer the model takes (token ids,
// targets, ctx.positions) and every tensor it returns (logits) is in the backend's memory: device pointers
// on CUDA. A CUDA training step (forward, loss, backward) queues its kernels without synchronising the host,
// except loss(), which returns the mean to the host; its buffers are reused across steps (no allocations
// after the first step of a given shape), and layers share their backward temporaries (layers/context.hpp).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "tessera/layers/kv_cache.hpp"
#include "tessera/layers/layers.hpp"
#include "tessera/ops/loss.hpp"

namespace tessera::models {

struct LlamaConfig {
  int64_t vocab_size = 256, dim = 256, n_layers = 4, n_heads = 4, n_kv_heads = 0, ffn_hidden = 0;
  double norm_eps = 1e-5, rope_theta = 10000.0;
  int64_t window = 0;  // sliding attention window (0 = full causal)

  LayerConfig layer() const {
    LayerConfig c;
    c.dim = dim;
    c.n_layers = n_layers;
    c.n_heads = n_heads;
    c.n_kv_heads = n_kv_heads ? n_kv_heads : n_heads;
    c.ffn_hidden = ffn_hidden;
    c.norm_eps = norm_eps;
    c.rope_theta = rope_theta;
    return c;
  }
  /// Reads a JSON object; every size is required, eps/theta/window optional. Errors name the field.
  static LlamaConfig from_json(const nlohmann::json& j, const std::string& where = "model config") {
    auto req = [&](const char* f) -> int64_t {
      TESSERA_CHECK(j.is_object() && j.contains(f), where, ": missing field '", f, "'");
      TESSERA_CHECK(j[f].is_number_integer() && j[f].get<int64_t>() > 0, where, ": field '", f,
                    "' must be a positive integer");
      return j[f].get<int64_t>();
    };
    auto opt = [&](const char* f, double d) {
      if (!j.contains(f)) return d;
      TESSERA_CHECK(j[f].is_number(), where, ": field '", f, "' must be a number");
      return j[f].get<double>();
    };
    LlamaConfig c;
    c.vocab_size = req("vocab_size");
    c.dim = req("dim");
    c.n_layers = req("n_layers");
    c.n_heads = req("n_heads");
    c.n_kv_heads = j.contains("n_kv_heads") ? req("n_kv_heads") : c.n_heads;
    c.ffn_hidden = req("ffn_hidden");
    c.norm_eps = opt("norm_eps", 1e-5);
    c.rope_theta = opt("rope_theta", 10000.0);
    c.window = static_cast<int64_t>(opt("window", 0));
    TESSERA_CHECK(c.dim % c.n_heads == 0, where, ": dim ", c.dim, " is not divisible by n_heads ", c.n_heads);
    TESSERA_CHECK(c.n_heads % c.n_kv_heads == 0, where, ": n_heads ", c.n_heads,
                  " is not a multiple of n_kv_heads ", c.n_kv_heads);
    return c;
  }
  nlohmann::json to_json() const {
    return {{"vocab_size", vocab_size}, {"dim", dim},           {"n_layers", n_layers},
            {"n_heads", n_heads},       {"n_kv_heads", n_kv_heads ? n_kv_heads : n_heads},
            {"ffn_hidden", ffn_hidden}, {"norm_eps", norm_eps}, {"rope_theta", rope_theta},
            {"window", window}};
  }
};

/// One Llama block, with the key names of the reference implementations.
template <class T, class Mask = mask::SlidingWindow, class B = cpu>
using LlamaBlock =
    Sequence<PreNormResidual<Named<"input_layernorm", RmsNorm<T, B>>,
                             Named<"self_attn", SelfAttention<T, rope::Interleaved, Mask, B>>>,
             PreNormResidual<Named<"post_attention_layernorm", RmsNorm<T, B>>, Named<"mlp", SwiGlu<T, B>>>>;

// ---- inference with KV caches ------------------------------------------------------------------------

/// Scratch of the cached forward of Llama blocks (buffers reused across steps; no state between calls).
template <class T, class Mask = mask::SlidingWindow, class B = cpu>
struct LlamaBlockScratch {
  typename RmsNorm<T, B>::Saved n1, n2;
  typename SelfAttention<T, rope::Interleaved, Mask, B>::Saved attn;
  typename SwiGlu<T, B>::Saved mlp;
  Tensor<T, B> normed, h;
};

/// One Llama block with KV caches (inference only): y = h + mlp(n2(h)), h = x + attn(n1(x)), the attention
/// reading and extending caches[b] for sequence b (SelfAttention::forward_cached). The same operations in the
/// same order as LlamaBlock::forward, so each row equals the full forward's row.
template <class T, class Mask, class B>
void llama_block_forward_cached(const LlamaBlock<T, Mask, B>& blk, const SeqContext& ctx,
                                std::type_identity_t<TensorView<const T>> x, Tensor<T, B>& y,
                                KvCache<T, B>* const* caches, LlamaBlockScratch<T, Mask, B>& s) {
  const auto& attn_part = std::get<0>(blk.layers);
  const auto& mlp_part = std::get<1>(blk.layers);
  if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
    // Frozen bf16 weights at decoding sizes: both norms and both residual adds ride in the layers' small
    // products (8 launches per block, as many as the layers' own).
    const auto& attn = attn_part.inner.inner;
    const auto& mlp = mlp_part.inner.inner;
    if (attn.fuses_decode(x) && mlp.fuses_decode(x)) {
      const auto& n1 = attn_part.norm.inner;
      const auto& n2 = mlp_part.norm.inner;
      attn.forward_cached_fused(ctx, x, {n1.params.weight.value.data(), n1.eps}, x.data(), s.h, caches,
                                s.attn);
      mlp.forward_fused(ctx, s.h, {n2.params.weight.value.data(), n2.eps}, s.h.data(), y, s.mlp);
      return;
    }
  }
  attn_part.norm.inner.forward(ctx, x, s.normed, s.n1);
  attn_part.inner.inner.forward_cached(ctx, s.normed, s.h, caches, s.attn);
  ops::add_inplace(B{}, s.h.data(), x.data(), x.numel());
  mlp_part.norm.inner.forward(ctx, s.h, s.normed, s.n2);
  mlp_part.inner.inner.forward(ctx, s.normed, y, s.mlp);
  ops::add_inplace(B{}, y.data(), s.h.data(), s.h.numel());
}

/// Inference: y = lin(norm(x)) (a final norm and an output head). With frozen bf16 weights and decoding-size
/// rows, one small product with the norm fused in (ops::linear_small_bf16); otherwise the two forwards, the
/// norm's output in `normed`.
template <class T, class B>
void rmsnorm_linear_forward(const SeqContext& ctx, const RmsNorm<T, B>& norm, const Linear<T, B>& lin,
                            std::type_identity_t<TensorView<const T>> x, Tensor<T, B>& normed,
                            Tensor<T, B>& y, typename RmsNorm<T, B>::Saved& ns,
                            typename Linear<T, B>::Saved& ls) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
    if (lin.small_forward_ok(x)) {
      const ops::SmallLinearOut o = lin.small_output(y, x.size(0));
      return ops::linear_small_bf16(B{}, x.data(), x.size(0), x.size(1), &o, 1,
                                    {norm.params.weight.value.data(), norm.eps});
    }
  }
  norm.forward(ctx, x, normed, ns);
  lin.forward(ctx, normed, y, ls);
}

/// Scratch of llama_stack_forward_cached.
template <class T, class Mask = mask::SlidingWindow, class B = cpu>
struct LlamaStackScratch {
  LlamaBlockScratch<T, Mask, B> block;
  Tensor<T, B> buf[2];
  Tensor<int64_t, B> positions;  // backend memory
  std::vector<KvCache<T, B>*> layer_caches;
};

/// A stack of Llama blocks with KV caches (inference only). ctx.batch sequences with ctx.seq new tokens each;
/// caches[b] is sequence b's KvCacheStack (one cache per layer). Rotary positions are caches[b]->next_pos + t
/// unless ctx.positions (backend memory) is set; next_pos advances by ctx.seq. x [rows, dim] -> y [rows,
/// dim].
template <class T, class Mask, class B>
void llama_stack_forward_cached(const Stack<LlamaBlock<T, Mask, B>>& stack, const SeqContext& ctx,
                                std::type_identity_t<TensorView<const T>> x, Tensor<T, B>& y,
                                KvCacheStack<T, B>* const* caches, LlamaStackScratch<T, Mask, B>& s) {
  const size_t n = stack.size();
  TESSERA_CHECK(n > 0, "llama_stack_forward_cached: no layers");
  SeqContext c = ctx;
  if (!c.positions) {
    cached_positions(caches, ctx.batch, ctx.seq, s.positions);
    c.positions = s.positions.data();
  }
  s.layer_caches.resize(static_cast<size_t>(ctx.batch));
  TensorView<const T> cur = x;
  for (size_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b < ctx.batch; ++b) {
      TESSERA_CHECK(caches[b]->layers.size() == n, "llama_stack_forward_cached: cache of sequence ", b,
                    " has ", caches[b]->layers.size(), " layers, the stack ", n);
      s.layer_caches[b] = &caches[b]->layers[i];
    }
    Tensor<T, B>& out = i + 1 == n ? y : s.buf[i % 2];
    llama_block_forward_cached(stack.layers[i], c, cur, out, s.layer_caches.data(), s.block);
    cur = out;
  }
  for (int64_t b = 0; b < ctx.batch; ++b) caches[b]->next_pos += ctx.seq;
}

template <class T, class B = cpu>
class Llama {
 public:
  using value_type = T;
  using backend = B;
  LlamaConfig config;
  Embedding<T, B> embed_tokens;
  Stack<LlamaBlock<T, mask::SlidingWindow, B>> layers;
  RmsNorm<T, B> norm;
  Linear<T, B> lm_head;

  Llama() = default;
  explicit Llama(const LlamaConfig& c) { setup(c); }
  void setup(const LlamaConfig& c) {
    config = c;
    embed_tokens.setup(c.vocab_size, c.dim);
    layers.setup(c.layer());
    norm.setup(c.layer());
    lm_head.setup(c.dim, c.vocab_size);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("embed_tokens", embed_tokens);
    f("layers", layers);
    f("norm", norm);
    f("lm_head", lm_head);
  }

  /// ids: [B*T] row-major, in the backend's memory -> logits [B*T, vocab]. Keeps what backward needs (and the
  /// ids pointer) until the next forward.
  const Tensor<T, B>& forward(const int64_t* ids, int64_t batch, int64_t seq) {
    ctx_ = SeqContext{};
    ctx_.batch = batch;
    ctx_.seq = seq;
    ctx_.window = config.window;
    embed_tokens.forward(ids, ctx_.rows(), x0_, s_.embed);
    layers.forward(ctx_, x0_, h_, s_.layers);
    norm.forward(ctx_, h_, hn_, s_.norm);
    lm_head.forward(ctx_, hn_, logits_, s_.head);
    return logits_;
  }
  const Tensor<T, B>& logits() const { return logits_; }

  // ---- inference with KV caches (no backward) ----
  using Cache = KvCacheStack<T, B>;
  /// Buffers of forward_cached, reused across calls (one per concurrent caller).
  struct DecodeScratch {
    typename Embedding<T, B>::Saved embed;
    LlamaStackScratch<T, mask::SlidingWindow, B> stack;
    typename RmsNorm<T, B>::Saved norm;
    typename Linear<T, B>::Saved head;
    Tensor<T, B> x0, h, hn, logits;
  };
  /// An empty cache for one sequence (window = config.window; position 0).
  Cache make_cache() const {
    Cache c;
    const LayerConfig l = config.layer();
    c.setup(config.n_layers, l.kv_heads() * l.hdim(), l.kv_heads() * l.hdim(), config.window);
    return c;
  }
  /// Incremental forward: ids [batch*seq] (backend memory), `seq` new tokens of each of `batch` sequences;
  /// caches[b] (make_cache) holds sequence b's earlier tokens and advances by seq positions. Returns logits
  /// [batch*seq, vocab] (in s, valid until its next use). Equals the rows of forward() over each whole
  /// sequence.
  const Tensor<T, B>& forward_cached(const int64_t* ids, int64_t batch, int64_t seq, Cache* const* caches,
                                     DecodeScratch& s) const {
    SeqContext ctx;
    ctx.batch = batch;
    ctx.seq = seq;
    ctx.window = config.window;
    embed_tokens.forward(ids, ctx.rows(), s.x0, s.embed);
    llama_stack_forward_cached(layers, ctx, s.x0, s.h, caches, s.stack);
    rmsnorm_linear_forward(ctx, norm, lm_head, s.h, s.hn, s.logits, s.norm, s.head);
    return s.logits;
  }

  /// Mean cross-entropy of the last forward's logits against targets [B*T] (backend memory; ignore_index
  /// skipped). On CUDA this synchronises (the mean comes back to the host).
  double loss(const int64_t* targets, int64_t ignore_index = -100) const {
    return ops::cross_entropy_forward(B{}, static_cast<T*>(nullptr), logits_.data(), targets, ctx_.rows(),
                                      config.vocab_size, ignore_index);
  }
  /// Gradient of loss(targets) * scale into every Param::grad (accumulated; call zero_grads first). targets
  /// in backend memory; no host synchronisation on CUDA (invalid targets give NaN gradients there, see
  /// ops/loss.hpp).
  void backward(const int64_t* targets, double scale = 1.0, int64_t ignore_index = -100) {
    dlogits_.resize_uninit(logits_.shape());
    ops::cross_entropy_backward(B{}, dlogits_.data(), logits_.data(), targets, ctx_.rows(), config.vocab_size,
                                scale, ignore_index);
    lm_head.backward(ctx_, dlogits_, g1_, s_.head);
    norm.backward(ctx_, g1_, g2_, s_.norm);
    layers.backward(ctx_, g2_, g1_, s_.layers);
    embed_tokens.backward(g1_, s_.embed);
  }

 private:
  struct Saved {
    typename Embedding<T, B>::Saved embed;
    typename Stack<LlamaBlock<T, mask::SlidingWindow, B>>::Saved layers;
    typename RmsNorm<T, B>::Saved norm;
    typename Linear<T, B>::Saved head;
  };
  SeqContext ctx_;
  Saved s_;
  Tensor<T, B> x0_, h_, hn_, logits_, dlogits_, g1_, g2_;
};

}  // namespace tessera::models
