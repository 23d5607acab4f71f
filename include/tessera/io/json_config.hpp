// Reading JSON configs with errors that name the file, the config section and the field.
//
//   auto j = read_json_file("config.json");           // "config.json: JSON parse error at line 3, ..."
//   auto d = require<int64_t>(j, "dim", "model");     // "config model: missing field 'dim'"
//   auto e = get_or<double>(j, "eps", 1e-5, "model"); // absent or null -> default
//
// Duplicate keys are rejected (nlohmann would silently keep the last one, hiding a typo'd config).
#pragma once
#include <cerrno>
#include <cstdint>
#include <algorithm>
#include <initializer_list>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "tessera/core/error.hpp"

namespace tessera::io {

using json = nlohmann::json;

namespace detail {

/// Parse `text` as JSON, rejecting duplicate keys at any depth. Throws tessera::Error with `ctx` prefixed
/// ("<ctx>: JSON parse error at line 2, column 7: ..." or "<ctx>: duplicate key 'x'").
template <class Json = json>
Json parse_json_strict(std::string_view text, const std::string& ctx) {
  std::vector<std::set<std::string>> open;  // keys seen in each enclosing object
  std::string duplicate;
  auto cb = [&](int, nlohmann::json::parse_event_t ev, Json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) {
      open.emplace_back();
    } else if (ev == E::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (ev == E::key && !open.empty() && parsed.is_string()) {
      const auto& k = parsed.template get_ref<const std::string&>();
      if (!open.back().insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  Json j;
  try {
    j = Json::parse(text.begin(), text.end(), cb);
  } catch (const nlohmann::json::parse_error& e) {
    std::string msg = e.what();
    // Drop nlohmann's "[json.exception.parse_error.101] " tag; keep "parse error at line L, column C: ...".
    if (const auto p = msg.find("] "); msg.rfind("[json.exception", 0) == 0 && p != std::string::npos)
      msg = msg.substr(p + 2);
    throw Error(str(ctx, ": JSON ", msg));
  }
  if (!duplicate.empty()) throw Error(str(ctx, ": duplicate key '", duplicate, "'"));
  return j;
}

/// Human-readable description of the JSON type a C++ type expects ("an integer", "a string", ...).
template <class T>
struct JsonType;

template <class T>
  requires std::is_integral_v<T> && (!std::is_same_v<T, bool>)
struct JsonType<T> {
  static std::string name() {
    if constexpr (std::is_same_v<T, int64_t>)
      return "an integer";
    else if constexpr (std::is_same_v<T, uint64_t>)
      return "a non-negative integer";
    else if constexpr (std::is_unsigned_v<T>)
      return str("a non-negative integer <= ", std::numeric_limits<T>::max());
    else
      return str("an integer in [", std::numeric_limits<T>::min(), ", ", std::numeric_limits<T>::max(), "]");
  }
  static bool fits(const json& v) {
    if (v.is_number_unsigned()) return v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    if (v.is_number_integer()) {
      const int64_t x = v.get<int64_t>();
      if constexpr (std::is_unsigned_v<T>) return x >= 0 && static_cast<uint64_t>(x) <= std::numeric_limits<T>::max();
      else return x >= std::numeric_limits<T>::min() && x <= std::numeric_limits<T>::max();
    }
    return false;
  }
};
template <class T>
  requires std::is_floating_point_v<T>
struct JsonType<T> {
  static std::string name() { return "a number"; }
  static bool fits(const json& v) { return v.is_number(); }
};
template <>
struct JsonType<bool> {
  static std::string name() { return "a boolean"; }
  static bool fits(const json& v) { return v.is_boolean(); }
};
template <>
struct JsonType<std::string> {
  static std::string name() { return "a string"; }
  static bool fits(const json& v) { return v.is_string(); }
};
template <>
struct JsonType<json> {
  static std::string name() { return "any JSON value"; }
  static bool fits(const json&) { return true; }
};
template <class E>
struct JsonType<std::vector<E>> {
  static std::string name() { return str("an array (each element ", JsonType<E>::name(), ")"); }
  static bool fits(const json& v) {
    if (!v.is_array()) return false;
    for (const auto& e : v)
      if (!JsonType<E>::fits(e)) return false;
    return true;
  }
};
template <class V>
struct JsonType<std::map<std::string, V>> {
  static std::string name() { return str("an object (each value ", JsonType<V>::name(), ")"); }
  static bool fits(const json& v) {
    if (!v.is_object()) return false;
    for (const auto& [k, e] : v.items())
      if (!JsonType<V>::fits(e)) return false;
    return true;
  }
};

/// A value for an error message, cut to a readable length.
inline std::string brief(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

inline void check_object(const json& j, std::string_view where) {
  TESSERA_CHECK(j.is_object(), "config ", where, ": expected a JSON object, found ", j.type_name());
}

}  // namespace detail

/// Strict sections: every key of object `j` must be one of `allowed`, so a typo never falls back to a default
/// silently. "config <where>: unknown field 'x' (allowed: a, b, c)".
inline void check_keys(const json& j, std::initializer_list<std::string_view> allowed, std::string_view where) {
  detail::check_object(j, where);
  for (const auto& [k, v] : j.items()) {
    if (std::find(allowed.begin(), allowed.end(), std::string_view(k)) != allowed.end()) continue;
    std::string list;
    for (const std::string_view a : allowed) list += str(list.empty() ? "" : ", ", a);
    throw Error(str("config ", where, ": unknown field '", k, "' (allowed: ", list, ")"));
  }
}

/// Read and parse a JSON file. Errors name the path: missing/unreadable file (with the errno text),
/// parse errors (with line and column), duplicate keys.
inline json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str(path, ": cannot open JSON file: ", std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(str(path, ": error reading JSON file: ", std::strerror(errno)));
  return detail::parse_json_strict(ss.str(), path);
}

/// The value of `field` in object `j`, converted to T. `where` names the config section in errors:
/// "config <where>: missing field '<field>'" / "config <where>: field '<field>' must be <type>".
template <class T>
T require(const json& j, std::string_view field, std::string_view where) {
  detail::check_object(j, where);
  const auto it = j.find(field);
  if (it == j.end()) throw Error(str("config ", where, ": missing field '", field, "'"));
  if (!detail::JsonType<T>::fits(*it))
    throw Error(str("config ", where, ": field '", field, "' must be ", detail::JsonType<T>::name(), ", found ",
                    detail::brief(*it)));
  return it->template get<T>();
}

/// Like require, but an absent (or null) field gives `fallback`. A present field of the wrong type is an error.
template <class T>
T get_or(const json& j, std::string_view field, T fallback, std::string_view where) {
  detail::check_object(j, where);
  const auto it = j.find(field);
  if (it == j.end() || it->is_null()) return fallback;
  return require<T>(j, field, where);
}

}  // namespace tessera::io
