// The Megalodon language model (official Mega, megalodon spec §5.2):
//   embed (x sqrt(D) with scale_emb) -> layers.0..L-1 (MegaBlock) -> output.final_norm (TimestepNorm)
//   -> output.output (Linear D -> V, no bias; tied to the embedding with share_emb) -> fp32 logits.
// Parameter names are the official state_dict keys (checkpoint.hpp adds the official buffers).
//
// Unlimited context:
//   * training: forward(ids, batch, seq, &state) continues `state` (TimestepNorm statistics and CEMA states
//   of
//     every layer, detached) from the previous segment; segments are whole chunks, so attention never needs
//     the previous segment.
//   * inference: forward_stream(ids, batch, n, state) takes any number of new tokens and keeps only the keys
//     and values of the current partial chunk: memory is constant in the sequence length.
//
// Backends: Megalodon<float, cuda> runs every pass on the device. Token ids and targets are then DEVICE int64
// pointers (forward, loss, backward, forward_stream), logits are device tensors, and the carried state
// (TimestepNorm statistics, CEMA states, the KV cache of the partial chunk, the cached CEMA coefficients)
// lives on the device. Weights move in through the reflected walk (for_each_param + cuda_mem::to_device, or
// io::load_model).
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/layers/embedding.hpp"
#include "tessera/models/megalodon/block.hpp"
#include "tessera/ops/loss.hpp"
#include "tessera/ops/matmul.hpp"

namespace tessera::models {

/// Everything a Megalodon model carries between calls for `batch` sequences.
template <class T, class B = cpu>
struct MegalodonState {
  std::vector<MegaLayerState<T, B>> layers;
  TimestepNormState<T, B> final_norm, final_norm_next;
  std::vector<CemaCache<T, B>> coeffs;  // per layer, for streaming (fixed at make_state: weights frozen)
  int64_t batch = 0, pos = 0;           // tokens processed per sequence

  /// Bytes held: constant in pos (the KV part is one chunk).
  int64_t bytes() const {
    const auto tsn_bytes = [](const TimestepNormState<T, B>& t) {
      return t.count.numel() * 8 + (t.mean.numel() + t.var.numel()) * int64_t(sizeof(T));
    };
    int64_t n = tsn_bytes(final_norm) + tsn_bytes(final_norm_next);
    for (const auto& l : layers)
      n += tsn_bytes(l.tsn) + tsn_bytes(l.tsn_next) +
           (l.hx.numel() + l.hx_next.numel() + l.k.numel() + l.v.numel()) * int64_t(sizeof(T));
    for (const auto& c : coeffs) n += c.bytes();
    return n;
  }
};

/// The output layer with the official names: output.final_norm, output.output.
template <class T, class B = cpu>
struct MegaOutput {
  TimestepNorm<T, B> final_norm;
  Linear<T, B> output;
  bool tied = false;
  template <class F>
  void for_each_child(F&& f) {
    f("final_norm", final_norm);
    if (!tied) f("output", output);
  }
};

template <class T, class B = cpu>
class Megalodon {
 public:
  using value_type = T;
  using backend = B;
  using State = MegalodonState<T, B>;

  MegalodonConfig config;
  Embedding<T, B> embed;
  std::vector<MegaBlock<T, B>> layers;
  MegaOutput<T, B> output;

  Megalodon() = default;
  explicit Megalodon(const MegalodonConfig& c) { setup(c); }
  void setup(const MegalodonConfig& c) {
    c.validate();
    config = c;
    embed.setup(c.vocab_size, c.model_dim);
    layers.clear();
    layers.resize(static_cast<size_t>(c.num_layers));
    for (int64_t i = 0; i < c.num_layers; ++i) layers[i].setup(c, i);
    output.final_norm.setup(c.model_dim, c.norm_num_groups, c.norm_eps);
    output.tied = c.share_emb;
    if (!c.share_emb) output.output.setup(c.model_dim, c.out_size());
    saved_.resize(layers.size());
    x_.resize(layers.size() + 1);
  }
  template <class F>
  void for_each_child(F&& f) {
    f("embed", embed);
    for (size_t i = 0; i < layers.size(); ++i) f("layers." + std::to_string(i), layers[i]);
    f("output", output);
  }

  /// The official initialisation (spec §1.7, §5.2): embedding and output ~ truncated N(0, 1/D) cut at 3 std;
  /// projections "he" = N(0, 1/(3 fan_in)); biases and norm offsets 0; CEMA as in Cema::init.
  void init(Rng& rng) {
    using cema_layer_detail::on_host;
    const double s = 1.0 / std::sqrt(static_cast<double>(config.model_dim));
    auto trunc = [&](Tensor<T, B>& t, double std) {
      on_host(t, [&](Tensor<T>& h) {
        for (auto& v : h) {
          double z;
          do z = rng.normal();
          while (z < -3.0 || z > 3.0);
          v = static_cast<T>(z * std);
        }
      });
    };
    trunc(embed.params.weight.value, s);
    for (auto& blk : layers) {
      blk.mega.cema.init(rng);
      for_each_param(blk, [&](const std::string& name, auto& p) {
        if (p.value.rank() == 2 && name.ends_with(".weight")) {
          const double std = 1.0 / std::sqrt(3.0 * static_cast<double>(p.value.size(1)));
          on_host(p.value, [&](Tensor<T>& h) {
            for (auto& v : h) v = static_cast<T>(rng.normal() * std);
          });
        }
      });
    }
    if (!output.tied) trunc(output.output.params.weight.value, s);
    mark_values_changed(*this);
  }

  int64_t vocab() const { return config.out_size(); }

  /// Training/evaluation forward. ids [batch*seq] row-major -> logits [batch*seq, V]. `state` (nullable)
  /// continues earlier segments (see the file comment); state->pos must be a multiple of chunk_size.
  const Tensor<T, B>& forward(const int64_t* ids, int64_t batch, int64_t seq, State* state = nullptr) {
    TESSERA_CHECK(seq > 0 && batch > 0, "Megalodon::forward: empty input (", batch, " x ", seq, ")");
    if (state) {
      ensure_state(*state, batch);
      TESSERA_CHECK(state->pos % config.chunk_size == 0,
                    "Megalodon::forward: the carried state ends inside a "
                    "chunk (position ",
                    state->pos, ", chunk_size ", config.chunk_size,
                    "); training segments continue at chunk boundaries");
    }
    ctx_ = SeqContext{};
    ctx_.batch = batch;
    ctx_.seq = seq;
    embed_in(ids, ctx_.rows(), x_[0], s_embed_);
    for (size_t i = 0; i < layers.size(); ++i)
      layers[i].forward(ctx_, x_[i], x_[i + 1], saved_[i], state ? &state->layers[i] : nullptr);
    const auto& h = x_[layers.size()];
    prev_final_ = state ? state->final_norm.clone() : TimestepNormState<T, B>{};
    output.final_norm.forward(ctx_, h, hn_, s_final_, prev_final_.empty() ? nullptr : &prev_final_,
                              state ? &state->final_norm : nullptr);
    if (output.tied) {
      head(hn_, logits_);  // the embedding matrix, fp32 (its backward is ops::linear_backward below)
      s_head_.x = hn_;
    } else {
      output.output.forward(ctx_, hn_, logits_, s_head_);  // a Linear: bf16 compute when set
    }
    if (state) state->pos += seq;
    return logits_;
  }
  const Tensor<T, B>& logits() const { return logits_; }

  /// Mean cross-entropy of the last forward against targets [batch*seq] (ignore_index skipped).
  double loss(const int64_t* targets, int64_t ignore_index = -100) const {
    return ops::cross_entropy_forward(B{}, static_cast<T*>(nullptr), logits_.data(), targets, ctx_.rows(),
                                      vocab(), ignore_index);
  }
  /// Gradient of loss(targets) * scale into every Param::grad (accumulated; zero_grads first).
  void backward(const int64_t* targets, double scale = 1.0, int64_t ignore_index = -100) {
    const int64_t n = ctx_.rows(), D = config.model_dim;
    dlogits_.resize_uninit(logits_.shape());
    ops::cross_entropy_backward(B{}, dlogits_.data(), logits_.data(), targets, n, vocab(), scale,
                                ignore_index);
    g_[0].resize_uninit({n, D});
    if (output.tied)
      ops::linear_backward(B{}, g_[0].data(), embed.params.weight.grad.data(), static_cast<T*>(nullptr),
                           dlogits_.data(), hn_.data(), embed.params.weight.value.data(), n, D, vocab());
    else
      output.output.backward(ctx_, dlogits_, g_[0], s_head_);
    output.final_norm.backward(ctx_, g_[0], g_[1], s_final_);
    int cur = 1;
    for (size_t i = layers.size(); i-- > 0;) {
      layers[i].backward(ctx_, g_[cur], g_[1 - cur], saved_[i]);
      cur = 1 - cur;
    }
    if (config.scale_emb) ops::scale_inplace(B{}, g_[cur].data(), emb_scale(), g_[cur].numel());
    embed.backward(g_[cur], s_embed_);
  }

  // ---- streaming inference (constant memory) ----

  /// A fresh state for `batch` sequences (position 0). Precomputes the CEMA coefficients: make a new state
  /// (or call refresh_coeffs) after the weights change.
  State make_state(int64_t batch) const {
    State st;
    st.batch = batch;
    st.final_norm.reset_prior(batch, config.norm_num_groups);
    st.final_norm_next.reset_prior(batch, config.norm_num_groups);
    for (const auto& blk : layers) st.layers.push_back(blk.mega.make_state(batch));
    refresh_coeffs(st);
    return st;
  }
  void refresh_coeffs(State& st) const {
    st.coeffs.clear();
    for (const auto& blk : layers) st.coeffs.push_back(blk.mega.cema.coeffs());
  }

  /// Scratch of forward_stream (reused across calls).
  struct StreamScratch {
    std::vector<typename MegaBlock<T, B>::Saved> blocks;
    typename Embedding<T, B>::Saved embed;
    typename TimestepNorm<T, B>::Saved final_norm;
    Tensor<T, B> x[2], piece_out, hn, logits, out;
    Tensor<int64_t, B> ids;
  };

  /// `n` new tokens of each of state.batch sequences: ids [batch*n] row-major. Returns logits [batch*n, V]
  /// (in s.out). Splits the tokens at chunk boundaries internally; equal row for row to forward() over the
  /// whole sequences (up to rounding).
  const Tensor<T, B>& forward_stream(const int64_t* ids, int64_t n, State& state, StreamScratch& s) const {
    const int64_t batch = state.batch, C = config.chunk_size, V = vocab();
    TESSERA_CHECK(batch > 0 && state.layers.size() == layers.size(),
                  "Megalodon::forward_stream: state was not made by make_state for this model");
    TESSERA_CHECK(n > 0, "Megalodon::forward_stream: no new tokens");
    s.blocks.resize(layers.size());
    s.out.resize_uninit({batch * n, V});
    for (int64_t done = 0; done < n;) {
      const int64_t in_chunk = state.pos % C, left = n - done;
      const int64_t len = in_chunk == 0 && left >= C ? left / C * C : std::min(left, C - in_chunk);
      s.ids.resize_uninit({batch * len});
      for (int64_t b = 0; b < batch; ++b)
        Allocator<B>::copy(s.ids.data() + b * len, ids + b * n + done,
                           static_cast<size_t>(len) * sizeof(int64_t));
      SeqContext ctx;
      ctx.batch = batch;
      ctx.seq = len;
      embed_in(s.ids.data(), ctx.rows(), s.x[0], s.embed);
      int cur = 0;
      for (size_t i = 0; i < layers.size(); ++i) {
        layers[i].forward_stream(ctx, state.coeffs[i], s.x[cur], s.x[1 - cur], state.layers[i], s.blocks[i]);
        cur = 1 - cur;
      }
      output.final_norm.forward(ctx, s.x[cur], s.hn, s.final_norm,
                                state.final_norm.empty() ? nullptr : &state.final_norm,
                                &state.final_norm_next, false);
      std::swap(state.final_norm, state.final_norm_next);
      head(s.hn, s.logits);
      for (int64_t b = 0; b < batch; ++b)
        Allocator<B>::copy(s.out.data() + (b * n + done) * V, s.logits.data() + b * len * V,
                           static_cast<size_t>(len * V) * sizeof(T));
      state.pos += len;
      done += len;
    }
    return s.out;
  }

 private:
  T emb_scale() const { return static_cast<T>(std::sqrt(static_cast<double>(config.model_dim))); }
  void embed_in(const int64_t* ids, int64_t rows, Tensor<T, B>& x, typename Embedding<T, B>::Saved& s) const {
    embed.forward(ids, rows, x, s);
    if (config.scale_emb) ops::scale_inplace(B{}, x.data(), emb_scale(), x.numel());
  }
  void head(const Tensor<T, B>& hn, Tensor<T, B>& logits) const {
    const int64_t n = hn.size(0), D = config.model_dim;
    logits.resize_uninit({n, vocab()});
    const T* w = output.tied ? embed.params.weight.value.data() : output.output.params.weight.value.data();
    ops::linear_forward(B{}, logits.data(), hn.data(), w, static_cast<const T*>(nullptr), n, D, vocab());
  }
  void ensure_state(State& st, int64_t batch) const {
    if (st.layers.empty()) st = make_state(batch);
    TESSERA_CHECK(st.batch == batch && st.layers.size() == layers.size(), "Megalodon: state is for ",
                  st.batch, " sequences of a ", st.layers.size(), "-layer model; input has ", batch,
                  " sequences");
  }

  SeqContext ctx_;
  std::vector<typename MegaBlock<T, B>::Saved> saved_;
  typename Embedding<T, B>::Saved s_embed_;
  typename TimestepNorm<T, B>::Saved s_final_;
  typename Linear<T, B>::Saved s_head_;
  TimestepNormState<T, B> prev_final_;
  std::vector<Tensor<T, B>> x_;  // block inputs/outputs
  Tensor<T, B> hn_, logits_, dlogits_, g_[2];
};

}  // namespace tessera::models
