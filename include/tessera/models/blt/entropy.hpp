// BLT entropy model (spec blt.md §2.1, §2.2, §13.8, §13.12-13): a small Llama-style byte LM whose next-byte
// prediction entropy decides the patch boundaries.
//
//   auto cfg = blt::entropy_config_from_hf(hf_config["patcher_config"]);     // window 512 (the original)
//   models::Llama<float> em(cfg);
//   blt::load_entropy_model(em, io::SafeTensorsFile("model.safetensors"));   // keys model.patcher.*
//   std::vector<float> H = blt::entropies(em, ids.data(), B, T);             // [B*T] nats
//
// H[t] is the entropy of softmax(logits[t]), the model's distribution of byte t+1 given bytes 0..t.
//
// Context rules (EntropyOptions; both presets agree on the HF fixture: < 512 bytes, no EOS):
//  - original(): the reference `calculate_entropies` + `load_entropy_model` — attention window of 512 keys
//    (model.config.window, set by entropy_config_from_hf), context reset every 8192 tokens with positions
//    restarting (the 8192-row chunking), and EOS (id 2) ending a document (xformers block-diagonal mask:
//    tokens after an EOS do not see it or anything before it). Unlike the reference, every batch row is
//    processed on its own (the reference flattens the batch into one stream, so rows leak into each other:
//    issue #123).
//  - hf(): the Hugging Face port — plain causal over each row (also set model.config.window = 0, or build the
//    config with window 0), no chunking, no EOS cuts.
// A document piece is run with positions starting at 0; RoPE makes attention depend only on position
// differences, so this equals the reference's mask-based cut (up to fp rounding of the rotation angles).
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tessera/core/allocator.hpp"
#include "tessera/io/json_config.hpp"
#include "tessera/io/model_io.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/blt/tokenizer.hpp"
#include "tessera/models/llama.hpp"

namespace tessera::blt {

/// The reference's attention window of the entropy model (`sliding_window = 512` in load_entropy_model).
inline constexpr int64_t kEntropyWindow = 512;
/// The reference's chunk length (`getattr(model, "max_length", 8192)`; the RoPE table size).
inline constexpr int64_t kEntropyChunk = 8192;

/// LlamaConfig of the entropy model from the HF `patcher_config` object: hidden_size, num_hidden_layers,
/// num_attention_heads, num_key_value_heads (default: MHA), intermediate_size, rms_norm_eps,
/// rope_parameters.rope_theta (or a top-level rope_theta), vocab_size (default 260). `window` is not in the
/// HF config: 512 reproduces the original model, 0 the HF port (plain causal).
inline models::LlamaConfig entropy_config_from_hf(const nlohmann::json& pc, int64_t window = kEntropyWindow) {
  const char* where = "blt.patcher_config";
  models::LlamaConfig c;
  c.dim = io::require<int64_t>(pc, "hidden_size", where);
  c.n_layers = io::require<int64_t>(pc, "num_hidden_layers", where);
  c.n_heads = io::require<int64_t>(pc, "num_attention_heads", where);
  c.n_kv_heads = io::get_or<int64_t>(pc, "num_key_value_heads", c.n_heads, where);
  c.ffn_hidden = io::require<int64_t>(pc, "intermediate_size", where);
  c.vocab_size = io::get_or<int64_t>(pc, "vocab_size", VOCAB_SIZE, where);
  c.norm_eps = io::get_or<double>(pc, "rms_norm_eps", 1e-5, where);
  c.rope_theta = 10000.0;
  if (pc.contains("rope_parameters") && !pc["rope_parameters"].is_null()) {
    const auto& rp = pc["rope_parameters"];
    const std::string type =
        io::get_or<std::string>(rp, "rope_type", "default", "blt.patcher_config.rope_parameters");
    TESSERA_CHECK(type == "default", "config blt.patcher_config.rope_parameters: rope_type '", type,
                  "' is not supported (only 'default')");
    c.rope_theta = io::require<double>(rp, "rope_theta", "blt.patcher_config.rope_parameters");
  } else {
    c.rope_theta = io::get_or<double>(pc, "rope_theta", 10000.0, where);
  }
  const std::string act = io::get_or<std::string>(pc, "hidden_act", "silu", where);
  TESSERA_CHECK(act == "silu", "config ", where, ": hidden_act '", act, "' is not supported (only 'silu')");
  const std::pair<const char*, int64_t> sizes[] = {{"hidden_size", c.dim},
                                                   {"num_hidden_layers", c.n_layers},
                                                   {"num_attention_heads", c.n_heads},
                                                   {"num_key_value_heads", c.n_kv_heads},
                                                   {"intermediate_size", c.ffn_hidden},
                                                   {"vocab_size", c.vocab_size}};
  for (const auto& [f, v] : sizes)
    TESSERA_CHECK(v > 0, "config ", where, ": field '", f, "' must be positive, got ", v);
  TESSERA_CHECK(c.dim % c.n_heads == 0, "config ", where, ": hidden_size ", c.dim,
                " is not divisible by num_attention_heads ", c.n_heads);
  TESSERA_CHECK(c.n_heads % c.n_kv_heads == 0, "config ", where, ": num_attention_heads ", c.n_heads,
                " is not a multiple of num_key_value_heads ", c.n_kv_heads);
  const int64_t head_dim = io::get_or<int64_t>(pc, "head_dim", c.dim / c.n_heads, where);
  TESSERA_CHECK(head_dim == c.dim / c.n_heads, "config ", where, ": head_dim ", head_dim,
                " differs from hidden_size / num_attention_heads = ", c.dim / c.n_heads, " (not supported)");
  TESSERA_CHECK(window >= 0, "blt::entropy_config_from_hf: window must be >= 0, got ", window);
  c.window = window;
  return c;
}

/// Load the entropy model's weights from an HF BLT checkpoint (keys `<prefix>.embed_tokens.weight`,
/// `<prefix>.layers.N...`, `<prefix>.norm.weight`, `<prefix>.lm_head.weight`). Strict: every key under the
/// prefix must be used and every parameter found (io::load_model).
template <class T, class B>
void load_entropy_model(models::Llama<T, B>& m, const io::SafeTensorsFile& f,
                        const std::string& prefix = "model.patcher") {
  io::load_model(m, f, prefix);
}

/// Build and load the entropy model of an HF BLT checkpoint: config.json (its `patcher_config`) + a
/// safetensors file holding `model.patcher.*`.
template <class T, class B = cpu>
std::unique_ptr<models::Llama<T, B>> load_hf_entropy_model(const std::string& config_json_path,
                                                           const std::string& safetensors_path,
                                                           int64_t window = kEntropyWindow) {
  const auto cfg = io::read_json_file(config_json_path);
  TESSERA_CHECK(cfg.is_object() && cfg.contains("patcher_config"), config_json_path,
                ": no 'patcher_config' (not a Hugging Face BltConfig?)");
  auto m = std::make_unique<models::Llama<T, B>>(
      with_context(config_json_path, [&] { return entropy_config_from_hf(cfg["patcher_config"], window); }));
  load_entropy_model(*m, io::SafeTensorsFile(safetensors_path));
  return m;
}

/// out[r] = entropy (nats) of softmax(logits[r, :]), computed in double: H = log S - sum_v e^{z_v} z_v / S
/// with z = logits - max, S = sum_v e^{z_v}. logits are [rows, V] host memory.
template <class T>
void entropies_from_logits(const T* logits, int64_t rows, int64_t V, float* out) {
#pragma omp parallel for schedule(static) if (rows * V >= (int64_t(1) << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* l = logits + r * V;
    double m = -INFINITY;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(l[v]));
    double s = 0, sz = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double z = static_cast<double>(l[v]) - m, e = std::exp(z);
      s += e;
      sz += e * z;
    }
    out[r] = static_cast<float>(std::log(s) - sz / s);
  }
}

/// CUDA (cuda/loss.cu): the same on device memory (logits [rows, V], out [rows]), one row per warp or block;
/// sums in fp32, the final log/division in double.
void entropies_from_logits(cuda, const float* logits, int64_t rows, int64_t V, float* out);

/// How the entropy model's context is cut (see the file comment).
struct EntropyOptions {
  int64_t chunk = kEntropyChunk;          // context reset every `chunk` tokens of a row; 0 = never
  bool eos_cuts = true;                   // EOS (id 2) ends a document; the next token starts a fresh context
  int64_t max_tokens = int64_t(1) << 16;  // tokens per model forward when pieces of equal length are batched

  static EntropyOptions original() { return {}; }
  static EntropyOptions hf() { return {0, false}; }
};

/// One independent piece of context: tokens [begin, begin + len) of the flattened [B*T] ids.
struct EntropySegment {
  int64_t begin = 0, len = 0;
};

/// The independent pieces the entropy model sees: every row, cut into chunks of opt.chunk tokens, each cut
/// after every EOS when opt.eos_cuts. Pieces never cross a row boundary. ids (host memory) are read only when
/// opt.eos_cuts (may be null otherwise).
inline std::vector<EntropySegment> entropy_segments(const int64_t* ids, int64_t batch, int64_t seq,
                                                    const EntropyOptions& opt) {
  TESSERA_CHECK(opt.chunk >= 0, "blt::EntropyOptions: chunk must be >= 0, got ", opt.chunk);
  std::vector<EntropySegment> segs;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t row = b * seq;
    const int64_t step = opt.chunk > 0 ? opt.chunk : std::max<int64_t>(seq, 1);
    for (int64_t c0 = 0; c0 < seq; c0 += step) {
      const int64_t c1 = std::min(seq, c0 + step);
      int64_t s0 = c0;
      if (opt.eos_cuts)
        for (int64_t t = c0; t < c1 - 1; ++t)
          if (ids[row + t] == EOS) {
            segs.push_back({row + s0, t + 1 - s0});
            s0 = t + 1;
          }
      segs.push_back({row + s0, c1 - s0});
    }
  }
  return segs;
}

/// Entropies [batch*seq] (nats, fp32 like the HF port's) of the entropy model's next-byte predictions for
/// ids [batch*seq] row-major. Rows never influence each other. Uses model.config.window as the attention
/// window.
///
/// ids are in the model's backend memory (device memory for Llama<float, cuda>). On CUDA the entropies are
/// computed on the device and only they come back (one synchronising copy per forward of the entropy model);
/// the ids themselves are read on the host only when the context rule needs them (EOS cuts, or chunks shorter
/// than a row) — pass their host copy as host_ids when the caller has one, or they are downloaded. Without
/// host ids, ids outside the vocabulary are not detected on CUDA (their entropies are NaN).
template <class T, class B>
std::vector<float> entropies(models::Llama<T, B>& model, const int64_t* ids, int64_t batch, int64_t seq,
                             const EntropyOptions& opt = {}, const int64_t* host_ids = nullptr) {
  TESSERA_CHECK(batch >= 0 && seq >= 0, "blt::entropies: bad batch/seq ", batch, "x", seq);
  TESSERA_CHECK(opt.max_tokens >= 1, "blt::EntropyOptions: max_tokens must be >= 1, got ", opt.max_tokens);
  TESSERA_CHECK(opt.chunk >= 0, "blt::EntropyOptions: chunk must be >= 0, got ", opt.chunk);
  const int64_t N = batch * seq, V = model.config.vocab_size;
  if constexpr (is_cpu_v<B>) host_ids = ids;
  // Every row one piece: the pieces are the rows themselves and no id has to be read on the host.
  const bool whole_rows = !opt.eos_cuts && (opt.chunk == 0 || opt.chunk >= seq);
  std::vector<int64_t> downloaded;
  if constexpr (!is_cpu_v<B>) {
    if (host_ids == nullptr && !whole_rows && N > 0) {
      downloaded.resize(static_cast<size_t>(N));
      cuda_mem::to_host(downloaded.data(), ids, static_cast<size_t>(N) * sizeof(int64_t));
      host_ids = downloaded.data();
    }
  }
  if (host_ids)
    for (int64_t i = 0; i < N; ++i)
      TESSERA_CHECK(host_ids[i] >= 0 && host_ids[i] < V, "blt::entropies: id ", host_ids[i], " at row ",
                    i / std::max<int64_t>(seq, 1), ", position ", i % std::max<int64_t>(seq, 1),
                    " is outside the vocabulary [0, ", V, ")");
  std::vector<float> out(static_cast<size_t>(N));
  std::vector<EntropySegment> segs =
      entropy_segments(host_ids, batch, seq, opt);  // reads ids only for EOS cuts
  // Batch pieces of equal length into one forward (most inputs: all rows, one piece each).
  std::stable_sort(segs.begin(), segs.end(), [](const auto& a, const auto& b) { return a.len > b.len; });
  std::vector<int64_t> buf;
  std::vector<float> ent;
  Tensor<int64_t, B> dev_ids;
  Tensor<float, B> dev_ent;
  for (size_t i = 0; i < segs.size();) {
    const int64_t len = segs[i].len;
    const int64_t cap = std::max<int64_t>(1, opt.max_tokens / std::max<int64_t>(len, 1));
    size_t j = i;
    while (j < segs.size() && segs[j].len == len && static_cast<int64_t>(j - i) < cap) ++j;
    const int64_t nb = static_cast<int64_t>(j - i);
    // The pieces' ids in backend memory: consecutive pieces are read in place, others gathered on the host.
    bool consecutive = true;
    for (int64_t k = 1; k < nb; ++k)
      consecutive = consecutive && segs[i + k].begin == segs[i].begin + k * len;
    const int64_t* piece_ids = ids + segs[i].begin;
    if constexpr (is_cpu_v<B>) consecutive = false;  // the CPU path keeps its gathered copy
    if (!consecutive) {
      buf.resize(static_cast<size_t>(nb * len));
      for (int64_t k = 0; k < nb; ++k) std::copy_n(host_ids + segs[i + k].begin, len, buf.data() + k * len);
      piece_ids = buf.data();
      if constexpr (!is_cpu_v<B>) {
        dev_ids.resize_uninit({nb * len});
        cuda_mem::to_device(dev_ids.data(), buf.data(), buf.size() * sizeof(int64_t));
        piece_ids = dev_ids.data();
      }
    }
    const auto& logits = model.forward(piece_ids, nb, len);
    ent.resize(static_cast<size_t>(nb * len));
    if constexpr (is_cpu_v<B>) {
      entropies_from_logits(logits.data(), nb * len, V, ent.data());
    } else {
      dev_ent.resize_uninit({nb * len});
      entropies_from_logits(B{}, logits.data(), nb * len, V, dev_ent.data());
      cuda_mem::to_host(ent.data(), dev_ent.data(), ent.size() * sizeof(float));
    }
    for (int64_t k = 0; k < nb; ++k) std::copy_n(ent.data() + k * len, len, out.data() + segs[i + k].begin);
    i = j;
  }
  return out;
}

}  // namespace tessera::blt
