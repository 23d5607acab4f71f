// PNG output and glyphs for plot.hpp: the one translation unit that compiles stb_image_write (Debian
// libstb-dev) and uses stb_easy_font.
#include <cstring>
#include <vector>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include <stb/stb_easy_font.h>
#include <stb/stb_image_write.h>

#include "plot.hpp"
#include "tessera/core/error.hpp"
#include "tessera/io/atomic_file.hpp"

namespace bltapp {

void Image::text(int x, int y, const std::string& s, Rgb c, int scale) {
  // stb_easy_font emits axis-aligned quads (4 vertices of x, y, z floats + 4 colour bytes) at scale 1.
  std::vector<char> buf(s.size() * 300 + 64);
  std::string copy = s;
  const int quads = stb_easy_font_print(0, 0, copy.data(), nullptr, buf.data(), static_cast<int>(buf.size()));
  for (int q = 0; q < quads; ++q) {
    float v[4][2];
    for (int k = 0; k < 4; ++k) std::memcpy(v[k], buf.data() + (q * 4 + k) * 16, 2 * sizeof(float));
    float x0 = v[0][0], x1 = v[0][0], y0 = v[0][1], y1 = v[0][1];
    for (int k = 1; k < 4; ++k) {
      x0 = std::min(x0, v[k][0]), x1 = std::max(x1, v[k][0]);
      y0 = std::min(y0, v[k][1]), y1 = std::max(y1, v[k][1]);
    }
    fill(x + static_cast<int>(x0 * scale), y + static_cast<int>(y0 * scale), x + static_cast<int>(x1 * scale),
         y + static_cast<int>(y1 * scale), c);
  }
}

void write_png(const std::string& path, const Image& img) {
  std::vector<unsigned char> png;
  auto sink = [](void* ctx, void* data, int size) {
    auto* out = static_cast<std::vector<unsigned char>*>(ctx);
    const auto* p = static_cast<const unsigned char*>(data);
    out->insert(out->end(), p, p + size);
  };
  const int ok = stbi_write_png_to_func(sink, &png, img.width, img.height, 3, img.rgb.data(), img.width * 3);
  TESSERA_CHECK(ok != 0 && !png.empty(), path, ": PNG encoding failed (", img.width, " x ", img.height, ")");
  tessera::io::write_bytes_atomic(path, png.data(), png.size());
}

}  // namespace bltapp
