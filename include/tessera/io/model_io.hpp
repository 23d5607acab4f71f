// Saving and loading a model's parameters as safetensors, keyed by the reflected parameter names
// (core/param.hpp for_each_param). Only Param::value is stored; gradients are not part of a checkpoint.
#pragma once
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tessera/core/param.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/io/safetensors.hpp"

namespace tessera::io {

namespace detail {

/// True when `key` belongs to the model rooted at `prefix` ("" holds every key; "m" holds "m.x", not "mx").
inline bool under_prefix(std::string_view key, std::string_view prefix) {
  if (prefix.empty()) return true;
  return key == prefix || (key.size() > prefix.size() && key.starts_with(prefix) && key[prefix.size()] == '.');
}

/// "N <what>: a, b, c (and K more)" with at most `max` items shown.
inline std::string list_problems(const std::vector<std::string>& items, std::string_view what, size_t max = 10) {
  std::string s = str(items.size(), " ", what, ": ");
  for (size_t i = 0; i < items.size() && i < max; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > max) s += str(" (and ", items.size() - max, " more)");
  return s;
}

template <class P>
using param_value_t = typename std::remove_reference_t<decltype(std::declval<P&>().value)>::value_type;
template <class P>
using param_backend_t = typename std::remove_reference_t<decltype(std::declval<P&>().value)>::backend;

}  // namespace detail

/// Write every present parameter of `m` (named by for_each_param under `prefix`) to `path`, atomically.
/// Tensors keep the model's element type. metadata["format"] defaults to "pt" (Hugging Face loaders check it).
template <class Model>
void save_model(Model& m, const std::string& path, const std::string& prefix = "",
                const std::map<std::string, std::string>& metadata = {}) {
  SafeTensorsWriter w;
  for_each_param(m, prefix, [&](const std::string& name, auto& p) {
    using P = std::remove_reference_t<decltype(p)>;
    using T = detail::param_value_t<P>;
    if constexpr (is_cpu_v<detail::param_backend_t<P>>) {
      w.add_borrowed(name, p.value.view());  // the model outlives write()
    } else {
      Tensor<T> host;
      host.resize_uninit(p.value.shape());
      cuda_mem::to_host(host.data(), p.value.data(), static_cast<size_t>(host.numel()) * sizeof(T));
      w.add(name, host);
    }
  });
  w.set_metadata("format", "pt");
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  w.write(path);
}

/// Load every present parameter of `m` from `f`. Checks everything before changing the model, then reports all
/// problems at once: missing keys, unexpected keys under `prefix`, shape mismatches, and integer/float dtype
/// mixing. Stored F32/F64/BF16/F16 data converts to the model's floating-point type.
/// `known_extra` (optional) accepts keys that are not parameters (e.g. buffers the caller checks itself).
template <class Model>
void load_model(Model& m, const SafeTensorsFile& f, const std::string& prefix = "",
                const std::function<bool(std::string_view)>& known_extra = {}) {
  std::vector<std::string> missing, mismatched, unexpected;
  std::set<std::string, std::less<>> expected;
  for_each_param(m, prefix, [&](const std::string& name, auto& p) {
    using T = detail::param_value_t<std::remove_reference_t<decltype(p)>>;
    expected.insert(name);
    if (!f.contains(name)) {
      missing.push_back(str("'", name, "'"));
      return;
    }
    const TensorInfo& t = f.info(name);
    if (!(t.shape == p.value.shape()))
      mismatched.push_back(str("'", name, "' expected shape ", p.value.shape(), ", found ", t.shape));
    else if (detail::is_float_dtype(t.dtype) != detail::is_float_target_v<T>)
      mismatched.push_back(str("'", name, "' is stored as ", dtype_name(t.dtype), " but the model holds ",
                               detail::target_name<T>()));
  });
  for (const TensorInfo& t : f.tensors())
    if (detail::under_prefix(t.name, prefix) && !expected.contains(t.name) && !(known_extra && known_extra(t.name)))
      unexpected.push_back(str("'", t.name, "'"));

  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string msg = str(f.path(), ": cannot load model");
    if (!prefix.empty()) msg += str(" (prefix '", prefix, "')");
    std::vector<std::string> parts;
    if (!missing.empty()) parts.push_back(detail::list_problems(missing, "missing keys"));
    if (!unexpected.empty()) parts.push_back(detail::list_problems(unexpected, "unexpected keys"));
    if (!mismatched.empty()) parts.push_back(detail::list_problems(mismatched, "mismatched tensors"));
    for (size_t i = 0; i < parts.size(); ++i) msg += (i ? "; " : ": ") + parts[i];
    throw Error(msg);
  }

  for_each_param(m, prefix, [&](const std::string& name, auto& p) {
    using P = std::remove_reference_t<decltype(p)>;
    using T = detail::param_value_t<P>;
    if constexpr (is_cpu_v<detail::param_backend_t<P>>) {
      f.read_into(name, p.value.data(), p.value.numel());
    } else {
      const Tensor<T> host = f.read<T>(name);
      cuda_mem::to_device(p.value.data(), host.data(), static_cast<size_t>(host.numel()) * sizeof(T));
    }
    p.value_bf16_current = false;
  });
}

/// Open `path` and load `m` from it (see above).
template <class Model>
void load_model(Model& m, const std::string& path, const std::string& prefix = "") {
  const SafeTensorsFile f(path);
  load_model(m, f, prefix);
}

}  // namespace tessera::io
