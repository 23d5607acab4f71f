// BLT checkpoints in both published layouts (specs/blt.md §8).
//
// Hugging Face transformers (a directory with config.json + model.safetensors, the reflected names as they are):
//   auto lm = blt::load_pretrained<float>("blt-1b-hf");      // strict: no missing / unexpected keys
//   blt::save_pretrained(*lm, "out-dir");                    // config.json + model.safetensors, atomically
//
// Original facebookresearch/blt names (safetensors of the `consolidated.pth` state dicts or the PyTorchModelHubMixin
// `model.safetensors`; `.pth` pickles are not read). The BLT weights and the entropy model live in two files:
//   blt::load_original(lm, "blt_1b/model.safetensors", "entropy_model/model.safetensors");
//   blt::save_original(lm, "blt.safetensors", "entropy.safetensors");
// Key mapping = the inverse of transformers' convert_blt_weights_to_hf.py: strip "model.", attention/feed_forward/
// attention_norm/ffn_norm/tok_embeddings/cross_attn_norm_q/cross_attn_norm_kv/w1/w2/w3/wq/wk/wv/wo/output names,
// lm_head.weight <-> local_decoder.output.weight, and the stacked hash table
// encoder_hash_tok_embedding.weight [n*M, d] <-> encoder_hash_tok_embedding.{0..n-1}.weight [M, d].
#pragma once
// clang-format off (must stay first: it declares CUDA overloads before any layer header, see there)
#include "tessera/ops/blt_cuda.hpp"
// clang-format on

#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/io/atomic_file.hpp"
#include "tessera/io/model_io.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/blt/model.hpp"

namespace tessera::blt {

// ---- Hugging Face layout -------------------------------------------------------------------------------

/// Build a BltForCausalLM from `dir`/config.json and load `dir`/model.safetensors strictly.
template <class T, class B = cpu>
std::unique_ptr<BltForCausalLM<T, B>> load_pretrained(const std::string& dir) {
  auto lm = std::make_unique<BltForCausalLM<T, B>>(BltConfig::read(dir + "/config.json"));
  io::load_model(*lm, dir + "/model.safetensors");
  return lm;
}

/// Write `dir`/config.json (HF layout) and `dir`/model.safetensors (HF key names). `dir` must exist.
template <class T, class B>
void save_pretrained(BltForCausalLM<T, B>& lm, const std::string& dir) {
  io::save_model(lm, dir + "/model.safetensors");
  io::write_text_atomic(dir + "/config.json", lm.config().to_hf_json().dump(2) + "\n");
}

// ---- original layout -----------------------------------------------------------------------------------

/// Where a parameter lives in the original release.
struct OriginalKey {
  enum class File { Blt, Entropy, HashTables } file = File::Blt;
  std::string name;  // for HashTables: the prefix "encoder_hash_tok_embedding" (tables are "<prefix>.<i>.weight")
};

/// Original name of a parameter given its HF name walked from the BltForCausalLM root.
inline OriginalKey original_key(std::string_view hf) {
  static const std::map<std::string, std::string, std::less<>> rename = {
      {"self_attn", "attention"},       {"mlp", "feed_forward"},       {"input_layernorm", "attention_norm"},
      {"post_attention_layernorm", "ffn_norm"}, {"embed_tokens", "tok_embeddings"},
      {"q_norm", "cross_attn_norm_q"},  {"k_norm", "cross_attn_norm_kv"}, {"gate_proj", "w1"},
      {"down_proj", "w2"},              {"up_proj", "w3"},             {"q_proj", "wq"},
      {"k_proj", "wk"},                 {"v_proj", "wv"},              {"o_proj", "wo"},
      {"lm_head", "output"}};
  OriginalKey k;
  if (hf == "lm_head.weight") return {OriginalKey::File::Blt, "local_decoder.output.weight"};
  TESSERA_CHECK(hf.starts_with("model."), "BLT original layout: unexpected parameter name '", hf, "'");
  std::string_view rest = hf.substr(6);
  if (rest == "encoder_hash_tok_embedding.weight") return {OriginalKey::File::HashTables, "encoder_hash_tok_embedding"};
  if (rest.starts_with("patcher.")) {
    k.file = OriginalKey::File::Entropy;
    rest.remove_prefix(8);
  }
  for (size_t pos = 0; pos <= rest.size();) {
    size_t dot = rest.find('.', pos);
    if (dot == std::string_view::npos) dot = rest.size();
    const std::string_view part = rest.substr(pos, dot - pos);
    const auto it = rename.find(part);
    if (!k.name.empty()) k.name += '.';
    k.name += it == rename.end() ? std::string(part) : it->second;
    pos = dot + 1;
  }
  return k;
}

/// Write the BLT weights (and, when the model has one and `entropy_path` is given, the entropy model) with the
/// original key names.
template <class T, class B>
void save_original(BltForCausalLM<T, B>& lm, const std::string& blt_path, const std::string& entropy_path = "") {
  static_assert(is_cpu_v<B>, "save_original writes host tensors");
  io::SafeTensorsWriter w, we;
  for_each_param(lm, [&](const std::string& name, Param<T, B>& p) {
    const OriginalKey k = original_key(name);
    if (k.file == OriginalKey::File::HashTables) {
      const int64_t n = lm.config().hash_tables(), rows = lm.config().hash_vocab, d = p.value.size(1);
      for (int64_t t = 0; t < n; ++t)
        w.add_borrowed(str(k.name, ".", t, ".weight"), TensorView<T>(p.value.data() + t * rows * d, {rows, d}));
    } else {
      (k.file == OriginalKey::File::Entropy ? we : w).add_borrowed(k.name, p.value.view());
    }
  });
  w.set_metadata("format", "pt");
  w.write(blt_path);
  if (!entropy_path.empty() && we.size() > 0) {
    we.set_metadata("format", "pt");
    we.write(entropy_path);
  }
}

/// Load original-layout weights strictly: every parameter must be found with its shape, and every tensor of
/// each file must be used. The entropy file is required iff the model has an entropy model (patch_in_forward).
template <class T, class B>
void load_original(BltForCausalLM<T, B>& lm, const std::string& blt_path, const std::string& entropy_path = "") {
  static_assert(is_cpu_v<B>, "load_original reads into host tensors");
  const bool need_entropy = lm.config().patch_in_forward;
  TESSERA_CHECK(!need_entropy || !entropy_path.empty(), blt_path,
                ": the model has an entropy model (patch_in_forward) but no entropy checkpoint was given");
  const io::SafeTensorsFile fb(blt_path);
  std::unique_ptr<io::SafeTensorsFile> fe;
  if (need_entropy) fe = std::make_unique<io::SafeTensorsFile>(entropy_path);

  struct Job {
    const io::SafeTensorsFile* file;
    std::string name;
    T* dst;
    Shape shape;
  };
  std::vector<Job> jobs;
  for_each_param(lm, [&](const std::string& name, Param<T, B>& p) {
    const OriginalKey k = original_key(name);
    if (k.file == OriginalKey::File::HashTables) {
      const int64_t n = lm.config().hash_tables(), rows = lm.config().hash_vocab, d = p.value.size(1);
      for (int64_t t = 0; t < n; ++t)
        jobs.push_back({&fb, str(k.name, ".", t, ".weight"), p.value.data() + t * rows * d, Shape{rows, d}});
    } else {
      jobs.push_back({k.file == OriginalKey::File::Entropy ? fe.get() : &fb, k.name, p.value.data(), p.value.shape()});
    }
  });
  std::vector<std::string> missing, mismatched, unexpected;
  std::map<const io::SafeTensorsFile*, std::set<std::string>> used;
  for (const Job& j : jobs) {
    used[j.file].insert(j.name);
    if (!j.file->contains(j.name)) missing.push_back(str("'", j.name, "' (", j.file->path(), ")"));
    else if (!(j.file->info(j.name).shape == j.shape))
      mismatched.push_back(str("'", j.name, "' expected shape ", j.shape, ", found ", j.file->info(j.name).shape));
  }
  for (const io::SafeTensorsFile* f : std::initializer_list<const io::SafeTensorsFile*>{&fb, fe.get()}) {
    if (!f) continue;
    for (const auto& t : f->tensors())
      if (!used[f].count(t.name)) unexpected.push_back(str("'", t.name, "' (", f->path(), ")"));
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string msg = str(blt_path, ": cannot load the BLT model (original layout)");
    std::vector<std::string> parts;
    if (!missing.empty()) parts.push_back(io::detail::list_problems(missing, "missing keys"));
    if (!unexpected.empty()) parts.push_back(io::detail::list_problems(unexpected, "unexpected keys"));
    if (!mismatched.empty()) parts.push_back(io::detail::list_problems(mismatched, "mismatched tensors"));
    for (size_t i = 0; i < parts.size(); ++i) msg += (i ? "; " : ": ") + parts[i];
    throw Error(msg);
  }
  for (const Job& j : jobs) j.file->read_into(j.name, j.dst, j.shape.numel());
  mark_values_changed(lm);
}

}  // namespace tessera::blt
