// Cached BLT inference (specs/blt.md §9): the state of one generation row (BltRowCache) and the incremental
// forward (BltIncremental) that extends it by one byte per row, batched over rows, or by a whole prompt at
// once — with, row for row, the results of a full BltForCausalLM forward over the sequence so far.
//
// What a row keeps:
//   entropy  KvCacheStack of the entropy model. Positions restart where its context restarts (original
//            layout: after an EOS and every 8192 tokens, EntropyOptions::original(); HF layout: never).
//   encoder  KvCacheStack of the local encoder's self-attention (positions = byte index), and open_h, the
//            encoder states of the bytes of the open patch: max-pooled and cross-attended once, when the
//            patch closes.
//   global   KvCacheStack of the global transformer with one entry per CLOSED patch (position = patch index).
//   decoder  KvCacheStack of the local decoder's self-attention, and per decoder cross-attention layer the
//            K/V of the k memory slots of the latest closed patch.
// Why closed patches suffice (§6, §13.3): byte t reads the global output of patch_id(t+1) - 1. Whether byte
// t+1 starts a patch is decided by H_t as soon as byte t is ingested: if it does, byte t reads its own patch,
// which closes right then; otherwise the patch before it, closed earlier. Either way it is the latest closed
// patch, so the open patch's global output is never computed and the decoder memory holds one patch.
//
// Patching is decided byte by byte: byte t+1 starts a patch iff t == 0, or H_t > threshold (fp32 compare, as
// EntropyPatcher), or max_patch_length bytes are open. Earlier patches never change as the text grows (every
// component is causal and the rule is local), which is what makes the caches valid. Document cuts of the
// original layout (EOS bytes; patches holding an EOS for the global model) clear the caches, keeping the
// positions.
//
// One quirk is reproduced: with the HF patch form and max_patch_length set, the HF port drops the candidate
// start at position N (EntropyPatcher, finish_starts), so the LAST byte of a sequence reads the patch before
// its own even when byte N will start a new patch; one step later the same byte reads its own patch. Logits
// then come from a decoder pass with the "view" memory, and the byte is decoded once more with its final
// memory for the caches.
//
// Backends: BltIncremental<T, cpu> and BltIncremental<float, cuda>. On CUDA every activation, cache and index
// array is device memory; the ids, entropies, patch bookkeeping and logits of a row are host data (the
// sampler runs on the host). Per ingest the host uploads the new ids with their hash n-gram ids (one copy),
// reads the new entropies back (one copy: the patch rule needs them), uploads the index arrays of the patch
// decisions (one copy) and reads the logits back (one copy); the rest is queued on the device. The copies
// happen where the queue has just drained (after a read back) or is about to be filled, so they cost little
// beyond the round trips themselves.
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "tessera/core/transfer.hpp"
#include "tessera/layers/kv_cache.hpp"
#include "tessera/models/blt/entropy.hpp"
#include "tessera/models/blt/model.hpp"
#include "tessera/models/blt/patch_index.hpp"
#include "tessera/ops/elementwise.hpp"
#include "tessera/ops/segment.hpp"

namespace tessera::blt {

/// Rows of a fixed width in backend memory that grow at the end (capacity doubles); copies are deep.
template <class T, class B = cpu>
class RowBuffer {
 public:
  RowBuffer() = default;
  RowBuffer(const RowBuffer& o) { *this = o; }
  RowBuffer& operator=(const RowBuffer& o) {
    if (this == &o) return *this;
    w_ = o.w_, n_ = o.n_, cap_ = o.cap_;
    buf_ = o.buf_.clone();
    return *this;
  }
  RowBuffer(RowBuffer&&) noexcept = default;
  RowBuffer& operator=(RowBuffer&&) noexcept = default;

  int64_t rows() const { return n_; }
  const T* data() const { return buf_.data(); }
  void clear() { n_ = 0; }
  /// Append n rows of `width` elements; row i at src + i * src_stride (backend memory). The width is fixed by
  /// the first append after construction.
  void append(const T* src, int64_t src_stride, int64_t n, int64_t width) {
    TESSERA_CHECK(w_ == 0 || w_ == width, "blt::RowBuffer: rows of width ", width, " appended to rows of ",
                  w_);
    w_ = width;
    if (n <= 0) return;
    if (n_ + n > cap_) {
      const int64_t cap = std::max<int64_t>({n_ + n, 2 * cap_, 16});
      Tensor<T, B> next;
      next.resize_uninit({cap, w_});
      if (n_ > 0) Allocator<B>::copy(next.data(), buf_.data(), static_cast<size_t>(n_ * w_) * sizeof(T));
      buf_ = std::move(next);
      cap_ = cap;
    }
    ops::copy_rows(B{}, buf_.data() + n_ * w_, w_, src, src_stride, n, w_);
    n_ += n;
  }

 private:
  Tensor<T, B> buf_;
  int64_t w_ = 0, n_ = 0, cap_ = 0;
};

/// The cached state of one row (see the file comment). Create with BltIncremental::new_row.
template <class T, class B = cpu>
struct BltRowCache {
  std::vector<int64_t> ids;            // every id ingested so far (host)
  std::vector<float> entropies;        // H_t of every ingested id (nats, host)
  std::vector<int64_t> patch_lengths;  // lengths of the closed patches
  int64_t open_len = 0;                // bytes ingested into the open patch
  bool open_has_eos = false;
  bool next_starts = true;  // the next byte starts a new patch
  RowBuffer<T, B> open_h;   // encoder states of the open patch's bytes [open_len, d] (backend memory)
  KvCacheStack<T, B> entropy, encoder, global, decoder;
  std::vector<KvCache<T, B>> cross;  // per decoder cross-attention layer: slots of the latest closed patch
  std::vector<T> logits;             // next-byte logits after the last ingested id [vocab] (host)

  int64_t size() const { return static_cast<int64_t>(ids.size()); }
  int64_t closed_patches() const { return static_cast<int64_t>(patch_lengths.size()); }
};

template <class T, class B = cpu>
class BltIncremental {
 public:
  using Model = BltForCausalLM<T, B>;
  using Row = BltRowCache<T, B>;

  explicit BltIncremental(const Model& lm) : lm_(lm) {
    const BltConfig& c = lm.config();
    TESSERA_CHECK(c.patch_in_forward,
                  "BLT generation: the model has no entropy model (patch_in_forward is false)");
    TESSERA_CHECK(c.patching_mode == "entropy", "BLT generation: patching_mode '", c.patching_mode,
                  "' is not supported (only \"entropy\")");
    entropy_opt_ = c.eos_document_cuts ? EntropyOptions::original() : EntropyOptions::hf();
    const patchers::EntropyPatcher rule = lm.model.entropy_patcher();
    threshold_ = static_cast<float>(rule.threshold);
    max_len_ = rule.max_patch_length;
    view_quirk_ = rule.next == patchers::NextByte::kHf && max_len_ > 0;
    k_ = c.cross_attn_k;
    d_ = c.encoder.dim;
    for (const int64_t n : c.hash_sizes) max_ngram_ = std::max(max_ngram_, n);
  }
  const Model& model() const { return lm_; }

  /// An empty row with caches sized for the model.
  Row new_row() const {
    const BltConfig& c = lm_.config();
    Row r;
    r.entropy = lm_.model.patcher.make_cache();
    auto kv = [](const LayerConfig& l) { return l.kv_heads() * l.hdim(); };
    const LayerConfig enc = c.encoder.layer(), glo = c.global.layer(), dec = c.decoder.layer();
    r.encoder.setup(enc.n_layers, kv(enc), kv(enc), c.local_window);
    r.global.setup(glo.n_layers, kv(glo), kv(glo), 0);
    r.decoder.setup(dec.n_layers, kv(dec), kv(dec), c.local_window);
    const LayerConfig cross = c.decoder.cross_layer();
    r.cross.assign(lm_.model.local_decoder.cross_attn_layers.size(), KvCache<T, B>{});
    for (auto& x : r.cross) x.setup(cross.kv_heads() * cross.hdim(), cross.kv_heads() * cross.hdim());
    return r;
  }

  /// Reset `row` and ingest a prompt (at least one id, normally BOS first; host memory). The prompt is
  /// processed in parallel, in pieces between context resets. Afterwards row.logits predict the byte after
  /// the prompt.
  void prefill(Row& row, std::span<const int64_t> prompt) {
    TESSERA_CHECK(!prompt.empty(), "BLT generate: empty prompt (it needs at least BOS)");
    row = new_row();
    Row* rp = &row;
    int64_t start = 0;
    const int64_t n = static_cast<int64_t>(prompt.size());
    for (int64_t t = 1; t < n; ++t)
      if (resets_before(prompt[t - 1], t)) {
        ingest(&rp, 1, prompt.data() + start, t - start);
        start = t;
      }
    ingest(&rp, 1, prompt.data() + start, n - start);
  }

  /// Ingest ids[i] (host memory) into rows[i] for i < n_rows (one byte per row, batched); updates each row's
  /// logits.
  void step(Row* const* rows, int64_t n_rows, const int64_t* ids) { ingest(rows, n_rows, ids, 1); }

  /// Ingest n ids per row (ids [n_rows * n], row-major, host memory) with no context reset inside them (a
  /// reset before the first is fine): entropy model, encoder, patch decisions, closed patches through the
  /// global model, decoder.
  void ingest(Row* const* rows, int64_t R, const int64_t* ids, int64_t n) {
    TESSERA_CHECK(R >= 1 && n >= 1, "BltIncremental::ingest: nothing to ingest (", R, " rows x ", n, " ids)");
    const BltConfig& cfg = lm_.config();
    const BltModel<T, B>& m = lm_.model;
    const int64_t N = R * n, V = cfg.vocab_size;
    for (int64_t i = 0; i < N; ++i)
      TESSERA_CHECK(ids[i] >= 0 && ids[i] < V, "BLT generate: id ", ids[i], " (row ", i / n,
                    ") is outside the vocabulary [0, ", V, ")");

    // 0. context resets before the first new id, then record the ids
    t0_.resize(static_cast<size_t>(R));
    for (int64_t b = 0; b < R; ++b) {
      Row& row = *rows[b];
      const int64_t t0 = row.size();
      const int64_t* x = ids + b * n;
      if (t0 > 0) {
        const int64_t prev = row.ids.back();
        if (entropy_resets_before(prev, t0)) row.entropy.clear(true);
        if (document_cut_after(prev)) {
          row.encoder.clear(false);
          row.decoder.clear(false);
        }
      }
      for (int64_t j = 1; j < n; ++j)
        TESSERA_CHECK(!resets_before(x[j - 1], t0 + j),
                      "BltIncremental::ingest: a context reset inside the ids", " (position ", t0 + j,
                      "); split them there (prefill does)");
      row.ids.insert(row.ids.end(), x, x + n);
      t0_[b] = t0;
    }

    // Hash n-gram ids of the new ids (host: they need the row's last n-1 ids), uploaded with the ids.
    const HashConfig& hc = m.embeddings.config;
    const int64_t nt = hc.n_tables();
    hash_.resize(static_cast<size_t>(nt * N));
    for (int64_t b = 0; b < R; ++b) {
      const int64_t t0 = t0_[b], w0 = std::max<int64_t>(0, t0 - (max_ngram_ - 1)), len = t0 + n - w0;
      window_hash_.resize(static_cast<size_t>(nt * len));
      stacked_hash_ids(hc, rows[b]->ids.data() + w0, 1, len, window_hash_.data());
      for (int64_t t = 0; t < nt; ++t)
        std::copy_n(window_hash_.data() + t * len + (t0 - w0), n, hash_.data() + t * N + b * n);
    }
    in_up_.clear();
    const size_t ids_h = in_up_.add(ids, N), hash_h = in_up_.add(hash_);
    in_up_.upload();
    const int64_t* ids_b = in_up_[ids_h];

    // 1. entropy model -> H_t of every new id
    ent_ptrs_.resize(static_cast<size_t>(R));
    for (int64_t b = 0; b < R; ++b) ent_ptrs_[b] = &rows[b]->entropy;
    const Tensor<T, B>& el = m.patcher.forward_cached(ids_b, R, n, ent_ptrs_.data(), ent_s_);
    H_.resize(static_cast<size_t>(N));
    if constexpr (is_cpu_v<B>) {
      entropies_from_logits(el.data(), N, el.size(1), H_.data());
    } else {
      H_dev_.resize_uninit({N});
      entropies_from_logits(B{}, el.data(), N, el.size(1), H_dev_.data());
    }
    m.phase("entropy_model");

    // 2. local encoder: byte + hash n-gram embeddings, then the cached layers
    e_.resize_uninit({N, d_});
    hash_embedding_forward(B{}, e_.data(), ids_b, in_up_[hash_h],
                           m.embeddings.embed_tokens.params.weight.value.data(),
                           m.embeddings.hash_tables.params.weight.value.data(), N, nt, hc.vocab_size, d_);
    SeqContext bytes;
    bytes.batch = R;
    bytes.seq = n;
    bytes.window = cfg.local_window;
    stack_ptrs_.resize(static_cast<size_t>(R));
    for (int64_t b = 0; b < R; ++b) stack_ptrs_[b] = &rows[b]->encoder;
    models::llama_stack_forward_cached(m.local_encoder.layers, bytes, e_, h_, stack_ptrs_.data(), enc_s_);
    m.phase("local_encoder");
    if constexpr (!is_cpu_v<B>)  // waits for the entropy model and the encoder
      copy_bytes<cpu, B>(H_.data(), H_dev_.data(), static_cast<size_t>(N) * sizeof(float));

    // 3. patch decisions, byte by byte (host); the open patches' encoder states move on the backend, and
    // closed
    //    patches are collected for steps 4-6
    closings_.clear();
    close_h_.clear();
    key_seg_.clear();
    seg_.resize(static_cast<size_t>(N));
    final_seg_.assign(static_cast<size_t>(R), 0);
    for (int64_t b = 0; b < R; ++b) {
      Row& row = *rows[b];
      int64_t pending = 0;  // first new byte of this row whose state is not yet in row.open_h
      for (int64_t j = 0; j < n; ++j) {
        const int64_t t = t0_[b] + j, r = b * n + j, p = row.closed_patches();  // p: the patch of byte t
        const float h = H_[r];
        row.entropies.push_back(h);
        ++row.open_len;
        row.open_has_eos = row.open_has_eos || ids[r] == cfg.eos_id;
        const bool starts = t == 0 || h > threshold_ || (max_len_ > 0 && row.open_len >= max_len_);
        seg_[r] = starts ? p : p - 1;  // patch_id(t+1) - 1 (t == 0: patch 0, which closes now)
        if (j == n - 1) {  // the last byte's logits use the view of a sequence ending at it (see the quirk)
          final_seg_[b] = seg_[r];
          if (view_quirk_) seg_[r] = std::max<int64_t>(p - 1, 0);
        }
        if (starts) {
          row.open_h.append(h_.data() + (b * n + pending) * d_, d_, j + 1 - pending, d_);
          pending = j + 1;
          closings_.push_back({b, p, row.open_has_eos});
          close_h_.append(row.open_h.data(), d_, row.open_h.rows(), d_);
          key_seg_.insert(key_seg_.end(), static_cast<size_t>(row.open_len),
                          static_cast<int64_t>(closings_.size()) - 1);
          row.patch_lengths.push_back(row.open_len);
          row.open_h.clear();
          row.open_len = 0;
          row.open_has_eos = false;
        }
        row.next_starts = starts;
      }
      row.open_h.append(h_.data() + (b * n + pending) * d_, d_, n - pending, d_);
    }
    quirk_rows_.clear();
    for (int64_t b = 0; b < R; ++b)
      if (final_seg_[b] != seg_[b * n + n - 1]) quirk_rows_.push_back(b);
    const int64_t C = static_cast<int64_t>(closings_.size()), Q = static_cast<int64_t>(quirk_rows_.size());

    // The index arrays of steps 4-7 in backend memory (one upload)
    slot_seg_.resize(static_cast<size_t>(C * k_));
    cross_seg_.resize(static_cast<size_t>(C * k_));
    for (int64_t s = 0; s < C * k_; ++s) {
      slot_seg_[s] = s / k_;
      cross_seg_[s] = closings_[s / k_].patch;
    }
    quirk_seg_.resize(static_cast<size_t>(Q));
    for (int64_t i = 0; i < Q; ++i) quirk_seg_[i] = final_seg_[quirk_rows_[i]];
    idx_up_.clear();
    const size_t key_h = idx_up_.add(key_seg_), slot_h = idx_up_.add(slot_seg_),
                 cross_h = idx_up_.add(cross_seg_), seg_h = idx_up_.add(seg_),
                 quirk_h = idx_up_.add(quirk_seg_);
    idx_up_.upload();
    m.phase("patch_decisions");

    // 4-6. closed patches: encoder cross-attention, global model, decoder memory
    if (C > 0) {
      close_patches(rows, n, idx_up_[key_h], idx_up_[slot_h], idx_up_[cross_h]);
      m.phase("close_patches");
    }

    // 7. decoder (pass A: the logits' view), final norm and head on the last byte of every row
    const Tensor<T, B>& hd = decode(rows, R, n, h_, idx_up_[seg_h]);
    last_.resize_uninit({R, d_});
    ops::copy_rows(B{}, last_.data(), d_, hd.data() + (n - 1) * d_, n * d_, R, d_);  // rows b*n + n-1
    SeqContext lastc;
    lastc.batch = R;
    lastc.seq = 1;
    models::rmsnorm_linear_forward(lastc, m.local_decoder.norm, lm_.lm_head, last_, normed_, logits_, norm_s_,
                                   head_s_);
    m.phase("local_decoder_and_head");

    // pass B (quirk only): decode the last byte again with its final memory patch, for the caches
    if (Q > 0) {
      quirk_ptrs_.resize(static_cast<size_t>(Q));
      quirk_h_.resize_uninit({Q, d_});
      for (int64_t i = 0; i < Q; ++i) {
        const int64_t b = quirk_rows_[i];
        Row& row = *rows[b];
        for (auto& l : row.decoder.layers) l.pop_back(1);
        --row.decoder.next_pos;
        quirk_ptrs_[i] = &row;
        ops::copy_rows(B{}, quirk_h_.data() + i * d_, d_, h_.data() + (b * n + n - 1) * d_, d_, 1, d_);
      }
      decode(quirk_ptrs_.data(), Q, 1, quirk_h_, idx_up_[quirk_h]);
    }

    // 8. the decoder only ever reads the latest closed patch again
    for (int64_t b = 0; b < R; ++b)
      for (auto& c : rows[b]->cross) c.keep_last(k_);

    // the logits come back to the host (CUDA: waits for everything above)
    logits_host_.resize(static_cast<size_t>(R * V));
    copy_bytes<cpu, B>(logits_host_.data(), logits_.data(), static_cast<size_t>(R * V) * sizeof(T));
    for (int64_t b = 0; b < R; ++b)
      rows[b]->logits.assign(logits_host_.begin() + b * V, logits_host_.begin() + (b + 1) * V);
    m.phase("logits_to_host");
  }

  /// Patch lengths of the ids ingested so far, in the form BltModel::compute_patch_lengths gives one row:
  /// HF (sum N, possibly a trailing empty patch) or original (sum N + 1, the next byte in the last patch).
  std::vector<int64_t> patch_lengths(const Row& row) const {
    std::vector<int64_t> l = row.patch_lengths;
    if (lm_.config().eos_document_cuts) {
      l.push_back(row.open_len + 1);
    } else {
      if (row.open_len > 0) l.push_back(row.open_len);
      if (row.next_starts && !view_quirk_) l.push_back(0);
    }
    return l;
  }

 private:
  struct Closing {
    int64_t row, patch;  // index into the ingest's rows, patch index in that row
    bool has_eos;
  };

  /// Context resets of the entropy model before position t (prev = the id at t - 1).
  bool entropy_resets_before(int64_t prev, int64_t t) const {
    return (entropy_opt_.eos_cuts && prev == EOS) || (entropy_opt_.chunk > 0 && t % entropy_opt_.chunk == 0);
  }
  /// A document cut of the local models after the id `prev` (original layout).
  bool document_cut_after(int64_t prev) const {
    const BltConfig& c = lm_.config();
    return c.eos_document_cuts && prev == c.eos_id;
  }
  bool resets_before(int64_t prev, int64_t t) const {
    return entropy_resets_before(prev, t) || document_cut_after(prev);
  }

  /// Steps 4-6 for the patches closed by this ingest (closings_, their byte states in close_h_). Backend
  /// index arrays: key_seg [L] (closing of each key byte), slot_seg [C*k] (closing of each query slot),
  /// cross_seg [C*k] (patch index of each decoder memory slot).
  void close_patches(Row* const* rows, int64_t n, const int64_t* key_seg, const int64_t* slot_seg,
                     const int64_t* cross_seg) {
    const BltModel<T, B>& m = lm_.model;
    const int64_t C = static_cast<int64_t>(closings_.size()), L = static_cast<int64_t>(key_seg_.size());
    // 4. max-pool -> k query slots -> cross-attention over exactly the patch's bytes (2·q0 + o)
    pooled_.resize_uninit({C, d_});
    argmax_.resize_uninit({C, d_});
    ops::segment_max_forward(B{}, pooled_.data(), argmax_.data(), close_h_.data(), key_seg, L, C, d_);
    SeqContext pc;
    pc.batch = 1;
    pc.seq = C;
    m.local_encoder.patch_embedding_projection.forward(pc, pooled_, q0_, lin_s_);
    SeqContext qs, ks;
    qs.seq = C * k_;
    qs.segment_ids = slot_seg;
    ks.seq = L;
    ks.segment_ids = key_seg;
    const TensorView<const T> keys(close_h_.data(), Shape{L, d_});
    const auto& enc_cross = m.local_encoder.cross_attn_layers.layers[0];
    const TensorView<const T> q0 = q0_.view().reshape({C * k_, d_});
    bool fused = false;
    if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
      // Frozen bf16 weights at decoding sizes: both norms and the double residual ride in the small products.
      fused = enc_cross.attn.forward_fused(
          qs, q0, {enc_cross.q_norm.params.weight.value.data(), enc_cross.q_norm.eps}, ks, keys,
          {enc_cross.k_norm.params.weight.value.data(), enc_cross.k_norm.eps}, q0.data(), 2, reprs_,
          enc_cross_s_.attn_s);
    }
    if (!fused && is_cpu_v<B> && n == 1 && C > 1) {
      // A decoding step of several rows: each closed patch attends over its own bytes in a call of its own,
      // exactly as in the step of its row alone (one batched call would tile the concatenated keys of all the
      // rows, so a row's sums would depend on the others). With the streamed products, a row stepped in a
      // batch then gets the bits of the row stepped alone.
      reprs_.resize_uninit({C * k_, d_});
      for (int64_t c = 0, key0 = 0; c < C; ++c) {
        int64_t key1 = key0;
        while (key1 < L && key_seg_[static_cast<size_t>(key1)] == c) ++key1;
        SeqContext qc, kc;
        qc.seq = k_;
        qc.segment_ids = slot_seg + c * k_;
        kc.seq = key1 - key0;
        kc.segment_ids = key_seg + key0;
        enc_cross.forward(qc, q0.slice(0, c * k_, (c + 1) * k_), kc, keys.slice(0, key0, key1), enc_one_,
                          enc_cross_s_);
        Allocator<B>::copy(reprs_.data() + c * k_ * d_, enc_one_.data(),
                           static_cast<size_t>(k_ * d_) * sizeof(T));
        key0 = key1;
      }
      fused = true;
    }
    if (!fused) enc_cross.forward(qs, q0, ks, keys, reprs_, enc_cross_s_);
    reprs_.reshape({C, k_ * d_});

    // 5. global model, one position per closed patch; the cache is cleared after a patch holding an EOS
    //    (original layout: block-causal documents over patches)
    TensorView<const T> gx = reprs_;
    if (m.global_transformer.projects()) {
      m.global_transformer.token_embedding_projection.forward(pc, reprs_, gproj_, lin_s_);
      gx = gproj_;
    }
    const int64_t dg = m.global_transformer.dim;
    const bool cuts = lm_.config().eos_document_cuts;
    g_.resize_uninit({C, dg});
    SeqContext gc;
    if (n == 1) {  // at most one closed patch per row: one batched call
      stack_ptrs_.resize(static_cast<size_t>(C));
      for (int64_t c = 0; c < C; ++c) stack_ptrs_[c] = &rows[closings_[c].row]->global;
      gc.batch = C;
      gc.seq = 1;
      models::llama_stack_forward_cached(m.global_transformer.layers, gc, gx, g_, stack_ptrs_.data(),
                                         glob_s_);
      for (int64_t c = 0; c < C; ++c)
        if (cuts && closings_[c].has_eos) rows[closings_[c].row]->global.clear(false);
    } else {  // one row: its patches in runs that end at EOS patches
      for (int64_t c0 = 0; c0 < C;) {
        int64_t c1 = c0 + 1;
        while (c1 < C && !(cuts && closings_[c1 - 1].has_eos)) ++c1;
        KvCacheStack<T, B>* gs = &rows[closings_[c0].row]->global;
        gc.batch = 1;
        gc.seq = c1 - c0;
        models::llama_stack_forward_cached(m.global_transformer.layers, gc, gx.slice(0, c0, c1), grun_, &gs,
                                           glob_s_);
        Allocator<B>::copy(g_.data() + c0 * dg, grun_.data(),
                           static_cast<size_t>((c1 - c0) * dg) * sizeof(T));
        if (cuts && closings_[c1 - 1].has_eos) gs->clear(false);
        c0 = c1;
      }
    }

    // 6. decoder memory: k slots per patch, their K/V for every cross-attention layer, appended to the rows
    m.local_decoder.patch_embedding_projection.forward(pc, g_, mem_, lin_s_);
    const TensorView<const T> mem = mem_.view().reshape({C * k_, d_});
    SeqContext mc;
    mc.seq = C * k_;
    for (size_t i = 0; i < m.local_decoder.cross_attn_layers.size(); ++i) {
      const auto& cross = m.local_decoder.cross_attn_layers.layers[i];
      if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
        // One closed patch (a decoding step): k_norm, the K/V products and the append are one launch.
        if (C == 1 &&
            cross.attn.project_kv_small_into(mem, {cross.k_norm.params.weight.value.data(), cross.k_norm.eps},
                                             rows[closings_[0].row]->cross[i], cross_seg))
          continue;
      }
      bool fused = false;
      if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>)  // k_norm inside the small product
        fused = cross.attn.project_kv_small(mem, {cross.k_norm.params.weight.value.data(), cross.k_norm.eps},
                                            kmem_, vmem_);
      if (!fused) {
        cross.k_norm.forward(mc, mem, kn_, rms_s_);
        cross.attn.project_kv(mc, kn_, kmem_, vmem_);
      }
      const int64_t w = kmem_.size(1);
      for (int64_t c = 0; c < C; ++c)
        rows[closings_[c].row]->cross[i].append(kmem_.data() + c * k_ * w, w, vmem_.data() + c * k_ * w, w,
                                                k_, cross_seg + c * k_);
    }
  }

  /// Decoder over n new byte states per row (x [R*n, d]); seg [R*n] (backend memory): the patch whose memory
  /// each byte reads. Extends the rows' decoder caches; returns the last layer's output [R*n, d] (before the
  /// final norm).
  const Tensor<T, B>& decode(Row* const* rows, int64_t R, int64_t n, TensorView<const T> x,
                             const int64_t* seg) {
    const auto& dec = lm_.model.local_decoder;
    SeqContext bytes;
    bytes.batch = R;
    bytes.seq = n;
    bytes.window = lm_.config().local_window;
    dec_stack_ptrs_.resize(static_cast<size_t>(R));
    for (int64_t b = 0; b < R; ++b) dec_stack_ptrs_[b] = &rows[b]->decoder;
    cached_positions(dec_stack_ptrs_.data(), R, n, dec_pos_);
    bytes.positions = dec_pos_.data();
    SeqContext q = bytes;
    q.segment_ids = seg;
    cross_ptrs_.resize(static_cast<size_t>(R));
    layer_ptrs_.resize(static_cast<size_t>(R));
    TensorView<const T> cur = x;
    const size_t L = dec.layers.size();
    for (size_t i = 0; i < L; ++i) {
      if (dec.has_cross(i)) {
        const auto& cross = dec.cross_attn_layers.layers[i];
        for (int64_t b = 0; b < R; ++b) cross_ptrs_[b] = &rows[b]->cross[i];
        bool fused = false;
        if constexpr (std::is_same_v<T, float> && std::is_same_v<B, cuda>) {
          // Frozen bf16 weights at decoding sizes: q_norm and the double residual ride in the small products.
          fused = cross.attn.fuses_decode(cur);
          if (fused)
            cross.attn.forward_cached_fused(q, cur,
                                            {cross.q_norm.params.weight.value.data(), cross.q_norm.eps},
                                            cur.data(), 2, cross_ptrs_.data(), cbuf_, dec_cross_s_);
        }
        if (!fused) {
          cross.q_norm.forward(q, cur, qn_, rms_s_);
          cross.attn.forward_cached(q, qn_, cross_ptrs_.data(), cbuf_, dec_cross_s_);
          ops::add_inplace(B{}, cbuf_.data(), cur.data(), cur.numel());  // 2·x + o, as PatchCrossAttention
          ops::add_inplace(B{}, cbuf_.data(), cur.data(), cur.numel());
        }
        cur = cbuf_;
      }
      for (int64_t b = 0; b < R; ++b) layer_ptrs_[b] = &rows[b]->decoder.layers[i];
      models::llama_block_forward_cached(dec.layers.layers[i], bytes, cur, lbuf_[i % 2], layer_ptrs_.data(),
                                         block_s_);
      cur = lbuf_[i % 2];
    }
    for (int64_t b = 0; b < R; ++b) rows[b]->decoder.next_pos += n;
    return lbuf_[(L - 1) % 2];
  }

  const Model& lm_;
  EntropyOptions entropy_opt_;
  float threshold_ = 0;
  int64_t max_len_ = 0, k_ = 1, d_ = 0, max_ngram_ = 1;
  bool view_quirk_ = false;

  // scratch, reused across calls
  typename models::Llama<T, B>::DecodeScratch ent_s_;
  models::LlamaStackScratch<T, BltMask, B> enc_s_, glob_s_;
  models::LlamaBlockScratch<T, BltMask, B> block_s_;
  typename PatchCrossAttention<T, B>::Saved enc_cross_s_;
  typename PatchCrossAttention<T, B>::Attn::Saved dec_cross_s_;
  typename RmsNorm<T, B>::Saved rms_s_, norm_s_;
  typename Linear<T, B>::Saved lin_s_, head_s_;
  std::vector<int64_t> t0_, hash_, window_hash_, seg_, final_seg_, key_seg_, slot_seg_, cross_seg_,
      quirk_rows_, quirk_seg_;
  IndexUpload<B> in_up_, idx_up_;  // host index arrays in backend memory (CPU: the vectors themselves)
  Tensor<int64_t, B> dec_pos_;
  std::vector<float> H_;
  std::vector<T> logits_host_;
  std::vector<Closing> closings_;
  std::vector<KvCacheStack<T, B>*> ent_ptrs_, stack_ptrs_, dec_stack_ptrs_;
  std::vector<const KvCache<T, B>*> cross_ptrs_;
  std::vector<KvCache<T, B>*> layer_ptrs_;
  std::vector<Row*> quirk_ptrs_;
  RowBuffer<T, B> close_h_;
  Tensor<float, B> H_dev_;
  Tensor<T, B> e_, h_, last_, normed_, logits_, quirk_h_, pooled_, q0_, reprs_, enc_one_, gproj_, g_, grun_,
      mem_, kn_, kmem_, vmem_, qn_, cbuf_, lbuf_[2];
  Tensor<int64_t, B> argmax_;
};

}  // namespace tessera::blt
