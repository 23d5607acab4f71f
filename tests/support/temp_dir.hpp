// A scratch folder for a test: created fresh under the system temp folder with a unique name (mkdtemp, so
// tests run in parallel, or two checkouts tested at once, never share one) and removed with everything in it
// when the object goes, whether the test passed or not.
#pragma once
#include <stdlib.h>  // mkdtemp (POSIX)

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace tessera::testing {

class TempDir {
 public:
  /// tag names the folder (tessera-<tag>-XXXXXX) so that a leftover one, after a crash, says whose it was.
  explicit TempDir(const std::string& tag = "test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / ("tessera-" + tag + "-XXXXXX")).string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("TempDir: mkdtemp failed for " + tmpl);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  /// The path of `name` inside the folder, as a string (the io API takes strings).
  std::string file(const std::string& name) const { return (path / name).string(); }
  /// The names in the folder, sorted (to check that a failed write left nothing behind).
  std::vector<std::string> listing() const {
    std::vector<std::string> v;
    for (const auto& e : std::filesystem::directory_iterator(path)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }

  std::filesystem::path path;
};

}  // namespace tessera::testing
