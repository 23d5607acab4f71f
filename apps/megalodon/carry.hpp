// The carried state of `megalodon train` with data.carry_state (TimestepNorm statistics and CEMA states of
// every layer, the final norm's statistics, the position) as JSON, bit-exact: each tensor's raw bytes in
// base64. Stored in the checkpoints through the loader's state (loader.hpp), so a resumed run continues the
// same state. The KV part is not stored: training segments end at chunk boundaries, where it is empty.
#pragma once
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common.hpp"

namespace mglapp {

namespace carry_detail {

inline constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

inline std::string base64(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  std::string s;
  s.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    const uint32_t v = (uint32_t{p[i]} << 16) | (i + 1 < n ? uint32_t{p[i + 1]} << 8 : 0) |
                       (i + 2 < n ? uint32_t{p[i + 2]} : 0);
    s += kB64[(v >> 18) & 63];
    s += kB64[(v >> 12) & 63];
    s += i + 1 < n ? kB64[(v >> 6) & 63] : '=';
    s += i + 2 < n ? kB64[v & 63] : '=';
  }
  return s;
}

inline std::vector<uint8_t> unbase64(const std::string& s, const std::string& what) {
  TESSERA_CHECK(s.size() % 4 == 0, what, ": base64 length ", s.size(), " is not a multiple of 4");
  auto val = [&](char c) -> uint32_t {
    const char* f = std::strchr(kB64, c);
    TESSERA_CHECK(c != 0 && f, what, ": '", std::string(1, c), "' is not a base64 character");
    return static_cast<uint32_t>(f - kB64);
  };
  std::vector<uint8_t> out;
  out.reserve(s.size() / 4 * 3);
  for (size_t i = 0; i < s.size(); i += 4) {
    const int pad = (s[i + 3] == '=') + (s[i + 2] == '=');
    TESSERA_CHECK(pad == 0 || i + 4 == s.size(), what, ": padding inside the base64 data");
    const uint32_t v = (val(s[i]) << 18) | (val(s[i + 1]) << 12) | (pad >= 2 ? 0 : val(s[i + 2]) << 6) |
                       (pad >= 1 ? 0 : val(s[i + 3]));
    out.push_back(static_cast<uint8_t>(v >> 16));
    if (pad < 2) out.push_back(static_cast<uint8_t>(v >> 8));
    if (pad < 1) out.push_back(static_cast<uint8_t>(v));
  }
  return out;
}

template <class T>
nlohmann::json tensor_json(const tessera::Tensor<T>& t) {
  if (t.numel() == 0) return nullptr;
  return {{"shape", t.shape().vec()}, {"data", base64(t.data(), static_cast<size_t>(t.numel()) * sizeof(T))}};
}

template <class T>
void tensor_from_json(const nlohmann::json& j, tessera::Tensor<T>& t, const std::string& what) {
  if (j.is_null()) {
    t = tessera::Tensor<T>{};
    return;
  }
  TESSERA_CHECK(j.is_object() && j.contains("shape") && j.contains("data") && j["shape"].is_array() &&
                    j["data"].is_string(),
                what, ": expected {\"shape\": [...], \"data\": base64}");
  const auto shape = tessera::Shape(j["shape"].get<std::vector<int64_t>>());
  const auto bytes = unbase64(j["data"].get<std::string>(), what);
  TESSERA_CHECK(static_cast<int64_t>(bytes.size()) == shape.numel() * static_cast<int64_t>(sizeof(T)), what,
                ": ", bytes.size(), " bytes do not fill shape ", shape);
  t.resize_uninit(shape);
  std::memcpy(t.data(), bytes.data(), bytes.size());
}

inline nlohmann::json tsn_json(const tessera::TimestepNormState<float>& s) {
  return {{"count", tensor_json(s.count)}, {"mean", tensor_json(s.mean)}, {"var", tensor_json(s.var)}};
}

inline void tsn_from_json(const nlohmann::json& j, tessera::TimestepNormState<float>& s, const std::string& what) {
  TESSERA_CHECK(j.is_object(), what, ": expected an object");
  for (const char* f : {"count", "mean", "var"}) TESSERA_CHECK(j.contains(f), what, ": field '", f, "' is missing");
  tensor_from_json(j["count"], s.count, what + ".count");
  tensor_from_json(j["mean"], s.mean, what + ".mean");
  tensor_from_json(j["var"], s.var, what + ".var");
}

}  // namespace carry_detail

/// `st` as JSON ({"pos": 0, "layers": []} before the first forward).
inline nlohmann::json carried_state_json(const Model::State& st) {
  using namespace carry_detail;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : st.layers) {
    TESSERA_CHECK(l.count == 0, "carried state: a layer holds ", l.count,
                  " tokens of an unfinished chunk (training windows must be whole chunks)");
    layers.push_back({{"tsn", tsn_json(l.tsn)}, {"hx", tensor_json(l.hx)}});
  }
  return {{"batch", st.batch}, {"pos", st.pos}, {"layers", layers}, {"final_norm", tsn_json(st.final_norm)}};
}

/// Restores `st` for model `m` from carried_state_json (shapes checked against the model).
inline void carried_state_from_json(const Model& m, const nlohmann::json& j, Model::State& st) {
  using namespace carry_detail;
  const std::string what = "loader state: carried_state";
  TESSERA_CHECK(j.is_object() && j.contains("batch") && j.contains("pos") && j.contains("layers") &&
                    j.contains("final_norm") && j["layers"].is_array() && j["batch"].is_number_integer() &&
                    j["pos"].is_number_integer(),
                what, ": expected {batch, pos, layers, final_norm}");
  if (j["layers"].empty()) {
    st = Model::State{};
    return;
  }
  const int64_t batch = j["batch"].get<int64_t>();
  const auto& c = m.config;
  TESSERA_CHECK(batch > 0 && static_cast<int64_t>(j["layers"].size()) == c.num_layers, what, ": holds ",
                j["layers"].size(), " layers of batch ", batch, ", the model has ", c.num_layers, " layers");
  Model::State s = m.make_state(batch);
  for (size_t i = 0; i < s.layers.size(); ++i) {
    const std::string w = str(what, ".layers[", i, "]");
    const auto& lj = j["layers"][i];
    TESSERA_CHECK(lj.is_object() && lj.contains("tsn") && lj.contains("hx"), w, ": expected {tsn, hx}");
    tsn_from_json(lj["tsn"], s.layers[i].tsn, w + ".tsn");
    tensor_from_json(lj["hx"], s.layers[i].hx, w + ".hx");
    TESSERA_CHECK(s.layers[i].hx.numel() == 0 || s.layers[i].hx.numel() == batch * c.model_dim * c.cema_ndim * 2,
                  w, ".hx: shape ", s.layers[i].hx.shape(), " does not match the model");
    TESSERA_CHECK(s.layers[i].tsn.empty() || s.layers[i].tsn.mean.numel() == batch * c.norm_num_groups, w,
                  ".tsn: shape ", s.layers[i].tsn.mean.shape(), " does not match the model");
  }
  tsn_from_json(j["final_norm"], s.final_norm, what + ".final_norm");
  s.pos = j["pos"].get<int64_t>();
  st = std::move(s);
}

}  // namespace mglapp
