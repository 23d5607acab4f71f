// The entropy plot of `blt patch --png` (as the BLT paper's figure of entropy patching): for every byte the
// entropy of the entropy model's prediction of that byte, the global threshold as a dashed red line, and the
// patches as alternating background bands with a boundary line before every patch start. Bytes are labelled
// below the axis (printable ASCII; '_' for a space, '.' otherwise) and the entropy axis has a tick per nat.
// Drawing is our own (rectangles, Bresenham lines); glyphs come from stb_easy_font's quads.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace bltapp {

struct Rgb {
  uint8_t r, g, b;
};

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel

  Image(int w, int h, Rgb bg) : width(w), height(h), rgb(static_cast<size_t>(w) * h * 3) {
    for (size_t i = 0; i < rgb.size(); i += 3) rgb[i] = bg.r, rgb[i + 1] = bg.g, rgb[i + 2] = bg.b;
  }
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }
  /// Pixels [x0, x1) x [y0, y1), clipped.
  void fill(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = std::max(y0, 0); y < std::min(y1, height); ++y)
      for (int x = std::max(x0, 0); x < std::min(x1, width); ++x) set(x, y, c);
  }
  /// Bresenham line, `thick` pixels wide (a square brush); dash > 0 draws `dash` pixels on, `dash` off.
  void line(int x0, int y0, int x1, int y1, Rgb c, int thick = 1, int dash = 0) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy, n = 0;
    for (;;) {
      if (dash == 0 || (n / dash) % 2 == 0)
        fill(x0 - thick / 2, y0 - thick / 2, x0 - thick / 2 + thick, y0 - thick / 2 + thick, c);
      ++n;
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  /// ASCII text at (x, y) (top left), glyph pixels scaled by `scale` (png.cpp, via stb_easy_font).
  void text(int x, int y, const std::string& s, Rgb c, int scale = 1);
};

/// Encode as PNG (stb_image_write) and write `path` atomically; throws tessera::Error naming the path.
void write_png(const std::string& path, const Image& img);

/// v[i] = entropy of the prediction of byte i+1 of the text (i.e. H_i of the ids with BOS at 0); bytes[i] is
/// that byte; starts[i] = byte i starts a patch; threshold in nats.
inline Image entropy_plot(const std::string& bytes, const std::vector<float>& v,
                          const std::vector<bool>& starts, double threshold) {
  const int n = static_cast<int>(bytes.size());
  const int max_width = 16000, left = 48, right = 16, top = 16, plot_h = 240, label_h = 28;
  const int cw = std::clamp((max_width - left - right) / std::max(n, 1), 1, 14);  // pixels per byte
  const int W = left + n * cw + right, H = top + plot_h + label_h + 8;
  const Rgb white{255, 255, 255}, band{236, 240, 248}, grid{222, 222, 222}, axis{40, 40, 40},
      boundary{150, 160, 190}, red{220, 30, 30}, blue{30, 90, 200}, orange{235, 120, 0};
  Image img(W, H, white);
  double ymax = threshold;
  for (float e : v) ymax = std::max(ymax, static_cast<double>(e));
  ymax = std::max(1.0, std::ceil(ymax * 1.05 + 1e-9));
  const int y0 = top + plot_h;  // pixel row of entropy 0
  auto ypix = [&](double e) { return y0 - static_cast<int>(std::lround(e / ymax * plot_h)); };
  auto xcol = [&](int i) { return left + i * cw; };

  // Patch bands (every other patch shaded) and boundaries before each patch start.
  bool shaded = false;
  for (int i = 0; i < n; ++i) {
    if (starts[i] && i > 0) shaded = !shaded;
    if (shaded) img.fill(xcol(i), top, xcol(i) + cw, y0, band);
  }
  for (int e = 1; e <= static_cast<int>(ymax); ++e) img.line(left, ypix(e), W - right, ypix(e), grid);
  for (int i = 1; i < n; ++i)
    if (starts[i]) img.line(xcol(i), top, xcol(i), y0 + 4, boundary);
  // Axes and ticks (one per nat).
  img.line(left, top, left, y0, axis);
  img.line(left, y0, W - right, y0, axis);
  for (int e = 0; e <= static_cast<int>(ymax); ++e) {
    img.line(left - 4, ypix(e), left, ypix(e), axis);
    img.text(left - 10 - 12 * static_cast<int>(std::to_string(e).size()), ypix(e) - 6, std::to_string(e),
             axis, 2);
  }
  // The threshold.
  img.line(left, ypix(threshold), W - right, ypix(threshold), red, 2, 6);
  // Entropies: a polyline through the byte centres, a dot per byte (orange above the threshold).
  const int half = cw / 2;
  for (int i = 1; i < n; ++i)
    img.line(xcol(i - 1) + half, ypix(v[i - 1]), xcol(i) + half, ypix(v[i]), blue, cw >= 6 ? 2 : 1);
  for (int i = 0; i < n; ++i) {
    const int r = cw >= 6 ? 3 : 1;
    const Rgb c = v[i] > threshold ? orange : blue;
    img.fill(xcol(i) + half - r, ypix(v[i]) - r, xcol(i) + half + r + 1, ypix(v[i]) + r + 1, c);
  }
  // Byte labels, when there is room for a glyph.
  if (cw >= 8)
    for (int i = 0; i < n; ++i) {
      const unsigned char b = static_cast<unsigned char>(bytes[i]);
      const char g = b == ' ' ? '_' : (b > 32 && b < 127 ? static_cast<char>(b) : '.');
      img.text(xcol(i) + (cw - 10) / 2 + 1, y0 + 10, std::string(1, g), starts[i] ? red : axis, 2);
    }
  return img;
}

}  // namespace bltapp
