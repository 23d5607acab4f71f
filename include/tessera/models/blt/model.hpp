// The Byte Latent Transformer (specs/blt.md §0-§6, §9): BltModel (embeddings, local encoder, global
// transformer, local decoder, optional entropy model) and BltForCausalLM (+ the 260-way lm_head) with forward,
// loss, a full backward through every trainable parameter, and no-cache greedy generation.
//
// Parameter names are exactly the Hugging Face port's when the causal LM is walked from the root:
//   model.encoder_hash_tok_embedding.weight, model.local_encoder.{embed_tokens,layers.N,patch_embedding_projection,
//   cross_attn_layers.0}, model.global_transformer.{layers.N,token_embedding_projection}, model.local_decoder.
//   {patch_embedding_projection,cross_attn_layers.N,layers.N,norm}, model.patcher.* (entropy model), lm_head.weight
// so io::load_model(lm, "model.safetensors") loads a transformers checkpoint strictly, and io::save_model writes one.
//
// Patches: forward takes per-row patch lengths [B, P] (zero-padded rows; HF sums to T, the original to T + 1),
// or computes them with the entropy model (`model.patcher`) and patchers::EntropyPatcher: BOS alone, a new patch
// after every byte whose next-byte entropy exceeds the threshold (HF: possibly an empty trailing patch).
//
// Backends: BltForCausalLM<T, cpu> (any T) and BltForCausalLM<float, cuda>. On CUDA every pointer the model
// takes (byte ids, targets) and every tensor it returns (logits, states) is DEVICE memory, like
// models::Llama; patch lengths, when given, are host memory ([B, P] is small and P sizes every buffer). Per
// forward the host builds the patch layout (PatchLayout: patch / document / segment ids) and uploads it in
// one copy; it reads the ids on the host (one download) only with EOS document cuts, and entropy patching
// brings the entropies back (one download per entropy-model forward) for the threshold rule. Everything else
// — hash ids, embeddings, all transformers, pooling, cross-attention, loss and backward — runs on the device
// without host round trips (loss() returns the mean, which synchronises, as for Llama). Byte ids are not
// range-checked on the device (that would cost a synchronisation): an id outside [0, vocab) gives NaN rows, as
// the CUDA embedding ops document (they are checked where they reach the host anyway: entropy patching
// with EOS cuts).
//
// Training note: the entropy model is frozen in BLT and never receives a gradient. It is part of the parameter
// walk so that checkpoints round-trip; set `model.walk_patcher = false` after loading to hide it from optimizers
// (AdamW would otherwise weight-decay it), clipping and zero_grads — and back to true before saving.
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "tessera/core/transfer.hpp"
#include "tessera/models/blt/config.hpp"
#include "tessera/models/blt/entropy.hpp"
#include "tessera/models/blt/global_transformer.hpp"
#include "tessera/models/blt/hash_embedding.hpp"
#include "tessera/models/blt/local_decoder.hpp"
#include "tessera/models/blt/local_encoder.hpp"
#include "tessera/models/blt/patch_index.hpp"
#include "tessera/ops/loss.hpp"
#include "tessera/patchers/entropy_patcher.hpp"

namespace tessera::blt {

/// Per-row patch lengths, zero-padded to a common count P. lengths is [B, P] row-major.
struct PatchLengths {
  int64_t B = 0, P = 0;
  std::vector<int64_t> lengths;
};

/// `Global` is the latent model over patches: any layer template with setup(const BltConfig&), for_each_child,
/// forward(patch context, x [B*P, k*d_enc], y [B*P, d_global], Saved&) and backward — the Llama-style
/// GlobalTransformer by default (cached generation needs it); see tests/models/megalodon for a Megalodon one.
template <class T, class B = cpu, template <class, class> class Global = GlobalTransformer>
class BltModel {
 public:
  using value_type = T;
  using backend = B;
  BltConfig config;
  HashNgramEmbedding<T, B> embeddings;  // names local_encoder.embed_tokens and encoder_hash_tok_embedding
  LocalEncoder<T, B> local_encoder;
  Global<T, B> global_transformer;
  LocalDecoder<T, B> local_decoder;
  models::Llama<T, B> patcher;  // the entropy model; set up only when config.patch_in_forward
  bool walk_patcher = true;     // include `patcher.*` in for_each_param (see the training note above)

  BltModel() = default;
  explicit BltModel(const BltConfig& c) { setup(c); }
  void setup(const BltConfig& c) {
    c.validate("BltModel");
    config = c;
    HashConfig h;
    h.group_sizes = c.hash_sizes;
    h.n_functions = c.hash_functions;
    h.table_size = c.hash_vocab;
    h.vocab_size = c.vocab_size;
    h.dim = c.encoder.dim;
    embeddings.setup(h);
    local_encoder.setup(c);
    global_transformer.setup(c);
    local_decoder.setup(c);
    patcher = models::Llama<T, B>{};
    if (c.patch_in_forward) patcher.setup(c.patcher);
  }
  template <class F>
  void for_each_child(F&& f) {
    embeddings.for_each_child(f);
    f("local_encoder", local_encoder);
    f("global_transformer", global_transformer);
    f("local_decoder", local_decoder);
    if (config.patch_in_forward && walk_patcher) f("patcher", patcher);
  }

  /// The patch rule of this config: global entropy threshold; HF layout: lengths sum to T with a possible empty
  /// trailing patch (NextByte::kHf), original layout: include_next_token (sum T + 1, NextByte::kInclude).
  patchers::EntropyPatcher entropy_patcher() const {
    patchers::EntropyPatcher p;
    p.threshold = config.patching_threshold;
    p.max_patch_length = config.max_patch_length;
    p.next = config.eos_document_cuts ? patchers::NextByte::kInclude : patchers::NextByte::kHf;
    return p;
  }

  /// Patch lengths [batch, P] of ids [batch*seq] from the entropy model, each row on its own (no batch leak,
  /// §13.12). One row: the rule's own form (HF config: sum T, as transformers returns them); several rows:
  /// sum T + 1 per row, zero-padded. ids in backend memory (device on CUDA; host_ids: their host copy if the
  /// caller has one, see blt::entropies). The threshold rule runs on the host.
  PatchLengths compute_patch_lengths(const int64_t* ids, int64_t batch, int64_t seq,
                                     const int64_t* host_ids = nullptr) {
    TESSERA_CHECK(config.patch_in_forward, "BLT: no patch lengths given and the model has no entropy model "
                                           "(patch_in_forward is false)");
    TESSERA_CHECK(config.patching_mode == "entropy", "BLT: patching_mode '", config.patching_mode,
                  "' is not supported; pass patch lengths explicitly");
    const EntropyOptions opt = config.eos_document_cuts ? EntropyOptions::original() : EntropyOptions::hf();
    const std::vector<float> H = entropies(patcher, ids, batch, seq, opt, host_ids);
    const patchers::EntropyPatcher rule = entropy_patcher();
    std::vector<std::vector<int64_t>> rows(batch);
    PatchLengths out;
    out.B = batch;
    for (int64_t b = 0; b < batch; ++b) {
      rows[b] = rule.patch_lengths(std::span<const float>(H.data() + b * seq, seq));  // the rule reads no ids
      out.P = std::max<int64_t>(out.P, static_cast<int64_t>(rows[b].size()));
    }
    // Rows right-padded with empty patches. Padding is only unambiguous in the include-next-byte form (sum T + 1,
    // see PatchLayout), so with several rows an HF-form row gets the next byte added to its last patch.
    out.lengths.assign(batch * out.P, 0);
    for (int64_t b = 0; b < batch; ++b) {
      if (batch > 1 && rule.next == patchers::NextByte::kHf) ++rows[b].back();
      std::copy(rows[b].begin(), rows[b].end(), out.lengths.begin() + b * out.P);
    }
    return out;
  }

  /// ids: [batch*seq] row-major, backend memory (device on CUDA). patch_lengths: [batch, n_patches] host
  /// memory, or nullptr (computed by the entropy model). Returns the decoder's normed byte states [batch*seq,
  /// d] (input of lm_head). ids and patch lengths are copied; buffers stay valid until the next forward.
  const Tensor<T, B>& forward(const int64_t* ids, int64_t batch, int64_t seq, const int64_t* patch_lengths = nullptr,
                              int64_t n_patches = 0) {
    TESSERA_CHECK(ids != nullptr && batch > 0 && seq > 0, "BLT forward: empty input (", batch, " x ", seq, ")");
    const int64_t N = batch * seq;
    ids_.resize_uninit({N});
    Allocator<B>::copy(ids_.data(), ids, static_cast<size_t>(N) * sizeof(int64_t));
    // Host ids: the CPU's own; on CUDA downloaded only when the layout reads them (EOS document cuts).
    const int64_t* host_ids = nullptr;
    if constexpr (is_cpu_v<B>) {
      host_ids = ids_.data();
    } else if (config.eos_document_cuts) {
      host_ids_.resize(static_cast<size_t>(N));
      copy_bytes<cpu, B>(host_ids_.data(), ids_.data(), static_cast<size_t>(N) * sizeof(int64_t));
      host_ids = host_ids_.data();
    }
    if (patch_lengths == nullptr) {
      PatchLengths pl = compute_patch_lengths(ids_.data(), batch, seq, host_ids);
      layout_.build(host_ids, pl.lengths.data(), batch, seq, pl.P, config.cross_attn_k,
                    config.eos_document_cuts, config.eos_id);
    } else {
      layout_.build(host_ids, patch_lengths, batch, seq, n_patches, config.cross_attn_k,
                    config.eos_document_cuts, config.eos_id);
    }
    index_.assign(layout_);  // CUDA: the one upload of the forward
    phase("patch_layout");
    bytes_ = SeqContext{};
    bytes_.batch = batch;
    bytes_.seq = seq;
    bytes_.doc_ids = index_.byte_doc;
    bytes_.single_document = !config.eos_document_cuts;  // then every doc id is 0: cuts may be dropped
    bytes_.window = config.local_window;
    patches_ = SeqContext{};
    patches_.batch = batch;
    patches_.seq = layout_.P;
    patches_.doc_ids = index_.patch_doc;
    patches_.single_document = !config.eos_document_cuts;

    embeddings.forward(ids_.data(), batch, seq, e_, s_.emb);
    phase("embeddings");
    local_encoder.forward(bytes_, e_, index_, h_enc_, patch_repr_, s_.enc);
    phase("local_encoder");
    global_transformer.forward(patches_, patch_repr_, g_, s_.glob);
    phase("global_transformer");
    local_decoder.forward(bytes_, h_enc_, g_, index_, out_, s_.dec);
    phase("local_decoder");
    return out_;
  }
  /// The last forward's patch layout (host memory) and its index arrays in backend memory.
  const PatchLayout& layout() const { return layout_; }
  const PatchIndex<B>& patch_index() const { return index_; }
  const Tensor<T, B>& encoder_states() const { return h_enc_; }
  const Tensor<T, B>& global_states() const { return g_; }
  const SeqContext& byte_context() const { return bytes_; }

  /// dout: gradient of forward()'s output. Accumulates into every parameter's grad except the entropy model's.
  void backward(TensorView<const T> dout) {
    local_decoder.backward(bytes_, dout, index_, dh_enc_, dg_, s_.dec);
    phase("local_decoder_backward");
    global_transformer.backward(patches_, dg_, dpatch_, s_.glob);
    phase("global_transformer_backward");
    local_encoder.backward(bytes_, dh_enc_, dpatch_, index_, de_, s_.enc);
    phase("local_encoder_backward");
    embeddings.backward(de_, s_.emb);
    phase("embeddings_backward");
  }

  /// Called with each phase's name once its work is queued — forward: patch_layout (the entropy model and
  /// patching, or the given lengths), embeddings, local_encoder, global_transformer, local_decoder;
  /// backward: the same with a _backward suffix, in reverse; cached generation (BltIncremental::ingest):
  /// entropy_model, local_encoder, patch_decisions, close_patches, local_decoder_and_head, logits_to_host —
  /// e.g. to record a timing event per phase (blt_cuda_bench --breakdown). Empty by default.
  std::function<void(const char*)> on_phase;
  /// on_phase(name) if it is set (also for the causal LM's head, loss and their backward).
  void phase(const char* name) const {
    if (on_phase) on_phase(name);
  }

 private:
  struct Saved {
    typename HashNgramEmbedding<T, B>::Saved emb;
    typename LocalEncoder<T, B>::Saved enc;
    typename Global<T, B>::Saved glob;
    typename LocalDecoder<T, B>::Saved dec;
  };
  Tensor<int64_t, B> ids_;         // the forward's ids (backend memory)
  std::vector<int64_t> host_ids_;  // CUDA: their host copy when the layout needs it
  PatchLayout layout_;
  PatchIndex<B> index_;
  SeqContext bytes_, patches_;
  Saved s_;
  Tensor<T, B> e_, h_enc_, patch_repr_, g_, out_;
  Tensor<T, B> dh_enc_, dg_, dpatch_, de_;
};

/// BLT with its output head (HF BltForCausalLM): logits[b*T + t] predict ids[b*T + t + 1].
template <class T, class B = cpu, template <class, class> class Global = GlobalTransformer>
class BltForCausalLM {
 public:
  using value_type = T;
  using backend = B;
  BltModel<T, B, Global> model;
  Linear<T, B> lm_head;

  BltForCausalLM() = default;
  explicit BltForCausalLM(const BltConfig& c) { setup(c); }
  void setup(const BltConfig& c) {
    model.setup(c);
    lm_head.setup(c.decoder.dim, c.vocab_size);
  }
  const BltConfig& config() const { return model.config; }
  template <class F>
  void for_each_child(F&& f) {
    f("model", model);
    f("lm_head", lm_head);
  }

  /// ids [batch*seq] (backend memory) -> logits [batch*seq, vocab]. patch_lengths [batch, n_patches] (host)
  /// or nullptr (entropy model).
  const Tensor<T, B>& forward(const int64_t* ids, int64_t batch, int64_t seq, const int64_t* patch_lengths = nullptr,
                              int64_t n_patches = 0) {
    const Tensor<T, B>& h = model.forward(ids, batch, seq, patch_lengths, n_patches);
    lm_head.forward(model.byte_context(), h, logits_, head_s_);
    model.phase("lm_head");
    return logits_;
  }
  const Tensor<T, B>& logits() const { return logits_; }

  /// Mean next-byte cross-entropy of the last forward's logits against targets [batch*seq] (backend memory;
  /// on CUDA this synchronises: the mean comes back to the host).
  double loss(const int64_t* targets, int64_t ignore_index = -100) const {
    return ops::cross_entropy_forward(B{}, static_cast<T*>(nullptr), logits_.data(), targets, logits_.size(0),
                                      logits_.size(1), ignore_index);
  }
  /// Gradient of loss(targets) * scale into every trainable Param::grad (accumulated; zero_grads first).
  /// targets in backend memory; no host synchronisation on CUDA.
  void backward(const int64_t* targets, double scale = 1.0, int64_t ignore_index = -100) {
    dlogits_.resize_uninit(logits_.shape());
    ops::cross_entropy_backward(B{}, dlogits_.data(), logits_.data(), targets, logits_.size(0), logits_.size(1),
                                scale, ignore_index);
    lm_head.backward(model.byte_context(), dlogits_, dh_, head_s_);
    model.phase("loss_and_lm_head_backward");
    model.backward(dh_);
  }

  /// Greedy continuation without a cache (HF generate(do_sample=False, use_cache=False), the reference's
  /// generate_nocache): every step recomputes the patches of the whole sequence with the entropy model and
  /// runs a full forward; the argmax of the last position is appended. Returns the n_new generated ids. ids
  /// are host memory on every backend (CUDA: uploaded per step; the last row of logits comes back for the
  /// argmax).
  std::vector<int64_t> generate_greedy(std::vector<int64_t> ids, int64_t n_new) {
    TESSERA_CHECK(!ids.empty(), "BLT generate: empty prompt (it needs at least BOS)");
    std::vector<int64_t> out;
    out.reserve(n_new);
    std::vector<T> last;
    for (int64_t step = 0; step < n_new; ++step) {
      const int64_t seq = static_cast<int64_t>(ids.size());
      const Tensor<T, B>& lg = forward(to_backend_ids(ids), 1, seq);
      const int64_t V = lg.size(1);
      last.resize(static_cast<size_t>(V));
      copy_bytes<cpu, B>(last.data(), lg.data() + (seq - 1) * V, static_cast<size_t>(V) * sizeof(T));
      const int64_t next =
          std::max_element(last.begin(), last.end()) - last.begin();  // first maximum (argmax)
      ids.push_back(next);
      out.push_back(next);
    }
    return out;
  }

  /// Host ids in backend memory: the vector's own data on the CPU, a device copy (valid until the next call)
  /// on CUDA.
  const int64_t* to_backend_ids(const std::vector<int64_t>& ids) {
    if constexpr (is_cpu_v<B>) {
      return ids.data();
    } else {
      ids_up_.resize_uninit({std::max<int64_t>(static_cast<int64_t>(ids.size()), 1)});
      copy_bytes<B, cpu>(ids_up_.data(), ids.data(), ids.size() * sizeof(int64_t));
      return ids_up_.data();
    }
  }

 private:
  typename Linear<T, B>::Saved head_s_;
  Tensor<T, B> logits_, dlogits_, dh_;
  Tensor<int64_t, B> ids_up_;
};

}  // namespace tessera::blt
