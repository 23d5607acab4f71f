// Megalodon checkpoints in the official layout: a directory with config.json (the official ModelConf field
// names) and model.safetensors (the official Mega state_dict names, parameters and buffers).
//   auto m = load_megalodon<float>("run/model");   // strict: missing, unexpected or mis-shaped keys all
//   reported save_megalodon(*m, "run/model");               // atomically; loadable by the official model's
//   load_state_dict
// The official state_dict also holds buffers: per TimestepNorm `prior_count` (I64 scalar), `prior_mean` and
// `prior_logv` [G] (the prior the release never uses: count 0, mean 0, log-variance 0) and `rope.freqs`
// [dz/2]. They are written on save and checked on load (a prior other than the official one is refused with
// a message; rope.freqs must match rope_base).
#pragma once
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tessera/io/atomic_file.hpp"
#include "tessera/io/json_config.hpp"
#include "tessera/io/model_io.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/megalodon/model.hpp"

namespace tessera::models {

namespace megalodon_detail {

inline std::vector<std::string> norm_prefixes(const MegalodonConfig& c) {
  std::vector<std::string> p;
  for (int64_t i = 0; i < c.num_layers; ++i) p.push_back("layers." + std::to_string(i) + ".mega.timenorm");
  p.push_back("output.final_norm");
  return p;
}

/// The official rotary frequencies 1 / base^(j/dz), j = 0, 2, ... (computed in double, stored as f32).
inline std::vector<float> rope_freqs(const MegalodonConfig& c) {
  const int64_t dz = c.z_head_dim();
  std::vector<float> f(static_cast<size_t>(dz / 2));
  for (int64_t j = 0; j < dz; j += 2)
    f[j / 2] =
        static_cast<float>(1.0 / std::pow(c.rope_base, static_cast<double>(j) / static_cast<double>(dz)));
  return f;
}

inline bool is_buffer(std::string_view key) {
  return key == "rope.freqs" || key.ends_with(".prior_count") || key.ends_with(".prior_mean") ||
         key.ends_with(".prior_logv");
}

/// Checks the buffers present in `f` (each is optional: a state_dict saved without buffers loads too).
inline void check_buffers(const io::SafeTensorsFile& f, const MegalodonConfig& c) {
  const std::string file = f.path();
  for (const std::string& p : norm_prefixes(c)) {
    if (f.contains(p + ".prior_count")) {
      const auto cnt = f.read<int64_t>(p + ".prior_count");
      TESSERA_CHECK(cnt.numel() == 1 && cnt[0] == 0, file, ": '", p,
                    ".prior_count' is not 0: a TimestepNorm "
                    "prior (the research fork's prior_count > 0) is not supported");
    }
    for (const char* b : {".prior_mean", ".prior_logv"}) {
      if (!f.contains(p + b)) continue;
      const auto t = f.read<float>(p + b);
      TESSERA_CHECK(t.numel() == c.norm_num_groups, file, ": '", p, b, "' has ", t.numel(),
                    " values, norm_num_groups is ", c.norm_num_groups);
      for (int64_t i = 0; i < t.numel(); ++i)
        TESSERA_CHECK(t[i] == 0.0f, file, ": '", p, b,
                      "' is not zero: a learnt TimestepNorm prior is not supported");
    }
  }
  const std::vector<std::string> stray = [&] {
    std::vector<std::string> s;
    for (const auto& t : f.tensors())
      if (is_buffer(t.name) && t.name != "rope.freqs") {
        bool known = false;
        for (const std::string& p : norm_prefixes(c)) known = known || t.name.starts_with(p + ".prior_");
        if (!known) s.push_back(t.name);
      }
    return s;
  }();
  TESSERA_CHECK(stray.empty(), file, ": unexpected buffer '", stray.empty() ? "" : stray.front(), "'");
  if (f.contains("rope.freqs")) {
    const auto got = f.read<float>("rope.freqs");
    const auto want = rope_freqs(c);
    TESSERA_CHECK(got.numel() == static_cast<int64_t>(want.size()), file, ": 'rope.freqs' has ", got.numel(),
                  " values, z_dim / num_heads / 2 is ", want.size());
    for (size_t i = 0; i < want.size(); ++i)
      TESSERA_CHECK(std::abs(got[i] - want[i]) <= 1e-6f * std::abs(want[i]) + 1e-12f, file, ": 'rope.freqs'[",
                    i, "] = ", got[i], " does not match rope_base ", c.rope_base, " (expected ", want[i],
                    ")");
  }
}

}  // namespace megalodon_detail

/// Reads `dir`/config.json (official ModelConf names).
inline MegalodonConfig read_megalodon_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  return MegalodonConfig::from_json(io::read_json_file(path), path);
}

/// Loads weights from a safetensors file with the official names into `m` (strict; buffers checked).
template <class T, class B>
void load_megalodon_weights(Megalodon<T, B>& m, const std::string& path) {
  const io::SafeTensorsFile f(path);
  megalodon_detail::check_buffers(f, m.config);
  io::load_model(m, f, "", megalodon_detail::is_buffer);
}

/// config.json + model.safetensors from `dir`.
template <class T, class B = cpu>
std::unique_ptr<Megalodon<T, B>> load_megalodon(const std::string& dir) {
  auto m = std::make_unique<Megalodon<T, B>>(read_megalodon_config(dir));
  load_megalodon_weights(*m, dir + "/model.safetensors");
  return m;
}

/// Writes the weights (official names) and buffers to `path`, atomically.
template <class T, class B>
void save_megalodon_weights(Megalodon<T, B>& m, const std::string& path) {
  static_assert(is_cpu_v<B>, "save_megalodon_weights: copy a CUDA model to the host first");
  io::SafeTensorsWriter w;
  for_each_param(m, [&](const std::string& name, auto& p) { w.add_borrowed(name, p.value.view()); });
  const int64_t zero = 0;
  const std::vector<float> zeros(static_cast<size_t>(m.config.norm_num_groups), 0.0f);
  for (const std::string& p : megalodon_detail::norm_prefixes(m.config)) {
    w.add_raw(p + ".prior_count", DType::I64, Shape{}, &zero);
    w.add_raw(p + ".prior_mean", DType::F32, Shape{m.config.norm_num_groups}, zeros.data());
    w.add_raw(p + ".prior_logv", DType::F32, Shape{m.config.norm_num_groups}, zeros.data());
  }
  const auto freqs = megalodon_detail::rope_freqs(m.config);
  w.add_raw("rope.freqs", DType::F32, Shape{static_cast<int64_t>(freqs.size())}, freqs.data());
  w.set_metadata("format", "pt");
  w.write(path);
}

/// Writes `dir`/config.json and `dir`/model.safetensors (`dir` must exist).
template <class T, class B>
void save_megalodon(Megalodon<T, B>& m, const std::string& dir) {
  save_megalodon_weights(m, dir + "/model.safetensors");
  io::write_text_atomic(dir + "/config.json", m.config.to_json().dump(2) + "\n");
}

}  // namespace tessera::models
