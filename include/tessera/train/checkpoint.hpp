// Training checkpoints: one directory per step, committed atomically.
//
//   <out>/step_00001000/model.safetensors      io::save_model (reflected parameter names)
//                      /optimizer.safetensors  AdamW state: m.<name>, v.<name>, metadata "step"
//                      /trainer_state.json     {"step": 1000, "loader": {...}, ...} (whatever the trainer
//                      adds)
//   <out>/latest                                "step_00001000\n"
//
// save_checkpoint writes everything into <out>/.step_<N>.tmp/ (each file written and fsynced atomically),
// fsyncs that folder, renames it to <out>/step_<N>/, fsyncs <out>, and only then replaces <out>/latest
// atomically. A crash at any point leaves `latest` naming a complete checkpoint (the previous one until the
// new one is whole); a half-written .tmp folder is never read and is removed by the next save of that step.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/io/atomic_file.hpp"
#include "tessera/io/json_config.hpp"
#include "tessera/io/model_io.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/train/adamw.hpp"

namespace tessera::train {

inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kTrainerStateFile = "trainer_state.json";

/// "step_00001000" (8 digits, zero-padded; more digits if the step needs them).
inline std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

/// The step of a "step_<digits>" name, or -1 when the name has another form.
inline int64_t parse_step_dir_name(const std::string& name) {
  if (name.size() <= 5 || name.rfind("step_", 0) != 0) return -1;
  const std::string digits = name.substr(5);
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

namespace detail {

inline void fsync_dir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  TESSERA_CHECK(fd >= 0, "checkpoint: cannot open folder '", dir.string(),
                "' to sync it: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  TESSERA_CHECK(rc == 0 || err == EINVAL, "checkpoint: fsync of folder '", dir.string(),
                "' failed: ", std::strerror(err));
}

inline void rename_or_throw(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::rename(from, to, ec);
  TESSERA_CHECK(!ec, "checkpoint: cannot rename '", from.string(), "' to '", to.string(),
                "': ", ec.message());
}

/// Complete checkpoint directories under out_dir, as (step, path), ascending by step.
inline std::vector<std::pair<int64_t, std::filesystem::path>> list_step_dirs(
    const std::filesystem::path& out) {
  std::vector<std::pair<int64_t, std::filesystem::path>> dirs;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    const int64_t s = parse_step_dir_name(it->path().filename().string());
    if (s >= 0 && it->is_directory(ec)) dirs.emplace_back(s, it->path());
  }
  TESSERA_CHECK(!ec, "checkpoint: cannot list '", out.string(), "': ", ec.message());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

inline void require_file(const std::filesystem::path& p) {
  std::error_code ec;
  TESSERA_CHECK(std::filesystem::is_regular_file(p, ec), "checkpoint: '", p.string(), "' is missing");
}

}  // namespace detail

/// The checkpoint to resume from, or nullopt when `out_dir` has none (or does not exist).
/// `<out>/latest` is authoritative: if it exists it must name a complete step_<N> folder, otherwise this
/// throws an Error naming the file. Without `latest` (e.g. written by hand, or a crash before the very first
/// `latest`), the complete step_<N> folder with the largest N is used.
inline std::optional<std::filesystem::path> find_latest(const std::filesystem::path& out_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return std::nullopt;
  const fs::path latest = out_dir / "latest";
  if (fs::exists(latest, ec)) {
    std::ifstream in(latest);
    TESSERA_CHECK(in, "checkpoint: cannot read '", latest.string(), "': ", std::strerror(errno));
    std::string name;
    std::getline(in, name);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
    TESSERA_CHECK(parse_step_dir_name(name) >= 0, "checkpoint: '", latest.string(),
                  "' is corrupt: expected a folder name like step_00001000, found '", name, "'");
    const fs::path dir = out_dir / name;
    TESSERA_CHECK(fs::is_directory(dir, ec), "checkpoint: '", latest.string(), "' names '", name,
                  "', but folder '", dir.string(), "' does not exist");
    for (const char* f : {kModelFile, kOptimizerFile, kTrainerStateFile}) detail::require_file(dir / f);
    return dir;
  }
  auto dirs = detail::list_step_dirs(out_dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    bool complete = true;
    for (const char* f : {kModelFile, kOptimizerFile, kTrainerStateFile})
      complete = complete && fs::is_regular_file(it->second / f, ec);
    if (complete) return it->second;
  }
  return std::nullopt;
}

/// Write the checkpoint of `step` (see the top of this file) and point `<out>/latest` at it. `trainer_state`
/// is stored as trainer_state.json with "step" set to `step`. Re-saving an existing step replaces it.
/// keep_last > 0 then removes all but the newest keep_last step_<N> folders. Returns the checkpoint folder.
template <class Model, class T, class B>
std::filesystem::path save_checkpoint(const std::filesystem::path& out_dir, int64_t step, Model& model,
                                      const AdamW<T, B>& opt, nlohmann::json trainer_state,
                                      int keep_last = 0) {
  namespace fs = std::filesystem;
  TESSERA_CHECK(step >= 0, "checkpoint: step must be >= 0, got ", step);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  TESSERA_CHECK(!ec, "checkpoint: cannot create folder '", out_dir.string(), "': ", ec.message());
  const std::string name = step_dir_name(step);
  const fs::path tmp = out_dir / ("." + name + ".tmp");
  const fs::path final_dir = out_dir / name;
  fs::remove_all(tmp, ec);  // leftover of a crashed save of this step
  TESSERA_CHECK(!ec, "checkpoint: cannot remove stale '", tmp.string(), "': ", ec.message());
  fs::create_directory(tmp, ec);
  TESSERA_CHECK(!ec, "checkpoint: cannot create folder '", tmp.string(), "': ", ec.message());

  io::save_model(model, (tmp / kModelFile).string());
  {
    io::SafeTensorsWriter w;
    opt.save_state(w);
    w.write((tmp / kOptimizerFile).string());
  }
  trainer_state["step"] = step;
  io::write_text_atomic((tmp / kTrainerStateFile).string(), trainer_state.dump(2) + "\n");
  detail::fsync_dir(tmp);

  if (fs::exists(final_dir, ec)) {  // re-save of a step: move the old one aside, then drop it
    const fs::path old = out_dir / ("." + name + ".old");
    fs::remove_all(old, ec);
    detail::rename_or_throw(final_dir, old);
    detail::rename_or_throw(tmp, final_dir);
    fs::remove_all(old, ec);
  } else {
    detail::rename_or_throw(tmp, final_dir);
  }
  detail::fsync_dir(out_dir);
  io::write_text_atomic((out_dir / "latest").string(), name + "\n");

  if (keep_last > 0) {
    auto dirs = detail::list_step_dirs(out_dir);
    const auto n = static_cast<int64_t>(dirs.size());
    for (int64_t i = 0; i < n - keep_last; ++i) {
      if (dirs[static_cast<size_t>(i)].second == final_dir) continue;
      fs::remove_all(dirs[static_cast<size_t>(i)].second, ec);
      TESSERA_CHECK(!ec, "checkpoint: cannot remove old checkpoint '",
                    dirs[static_cast<size_t>(i)].second.string(), "': ", ec.message());
    }
  }
  return final_dir;
}

/// Load model weights and optimizer state from checkpoint folder `dir`; returns trainer_state.json (its
/// "step" checked to be a non-negative integer). Errors name the missing or corrupt file.
template <class Model, class T, class B>
nlohmann::json load_checkpoint(const std::filesystem::path& dir, Model& model, AdamW<T, B>& opt) {
  std::error_code ec;
  TESSERA_CHECK(std::filesystem::is_directory(dir, ec), "checkpoint: folder '", dir.string(),
                "' does not exist");
  for (const char* f : {kModelFile, kOptimizerFile, kTrainerStateFile}) detail::require_file(dir / f);
  const std::string state_path = (dir / kTrainerStateFile).string();
  nlohmann::json st = io::read_json_file(state_path);
  TESSERA_CHECK(st.is_object() && st.contains("step") && st["step"].is_number_integer() &&
                    st["step"].get<int64_t>() >= 0,
                "checkpoint: '", state_path, "' has no non-negative integer field 'step'");
  io::load_model(model, (dir / kModelFile).string());
  const std::string opt_path = (dir / kOptimizerFile).string();
  with_context(str("checkpoint: '", opt_path, "'"), [&] {
    io::SafeTensorsFile f(opt_path);
    opt.load_state(f, model);
  });
  return st;
}

}  // namespace tessera::train
