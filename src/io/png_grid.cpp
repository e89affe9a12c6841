#include "cuvae/io/png_grid.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"

// stb_image_write is third-party code that trips -Wconversion,
// -Wmissing-field-initializers and (being static here) -Wunused-function.
// CMake passes its directory as SYSTEM, but silence it here too so -Werror
// builds stay clean however the include path is given. STATIC keeps its
// symbols private to this file, so another translation unit may embed stb
// as well; NO_STDIO drops the FILE* writers, as the bytes go through
// write_file_atomically instead.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBI_WRITE_NO_STDIO
#include <stb_image_write.h>
#pragma GCC diagnostic pop

namespace cuvae {

namespace {

// The PNG encoder does its size arithmetic in int (it allocates
// (width+1)*height bytes for the filtered rows, and the zlib stream can be a
// little larger than that), so grids are capped well below 2^31 bytes.
// 2^28 pixels is ~16000 MNIST digits at scale 1, far beyond any useful grid.
constexpr int64_t kMaxPixels = kMaxGridPixels;
constexpr int kMaxScale = 16;

// "binary" colour map with vmin=0, vmax=1: value 0 is white, 1 is black.
// Out-of-range values are clamped; NaN (a diverged model) is drawn as 0,
// i.e. white, rather than poisoning the cast. Rounds half away from zero,
// so 0.5 -> 127.5 -> 128.
unsigned char gray_level(float value) {
  double v = value;
  if (!(v >= 0.0)) {  // negative or NaN
    v = 0.0;
  } else if (v > 1.0) {
    v = 1.0;
  }
  return static_cast<unsigned char>(std::lround(255.0 * (1.0 - v)));
}

void append_bytes(void* context, void* data, int size) {
  auto* out = static_cast<std::vector<unsigned char>*>(context);
  const auto* bytes = static_cast<const unsigned char*>(data);
  out->insert(out->end(), bytes, bytes + size);
}

}  // namespace

std::vector<unsigned char> render_grid(const std::vector<float>& images, int rows, int cols,
                                       const GridOptions& options, int* width, int* height) {
  if (rows <= 0 || cols <= 0) {
    throw Error("png grid: digit size must be positive, got " + std::to_string(rows) + "x" +
                std::to_string(cols));
  }
  if (options.per_row < 1) {
    throw Error("png grid: per_row must be >= 1, got " + std::to_string(options.per_row));
  }
  if (options.padding < 0) {
    throw Error("png grid: padding must be >= 0, got " + std::to_string(options.padding));
  }
  if (options.scale < 1 || options.scale > kMaxScale) {
    throw Error("png grid: scale must be in [1, " + std::to_string(kMaxScale) + "], got " +
                std::to_string(options.scale));
  }
  const size_t pixels_per_image = static_cast<size_t>(rows) * static_cast<size_t>(cols);
  if (images.empty() || images.size() % pixels_per_image != 0) {
    throw Error("png grid: " + std::to_string(images.size()) +
                " values is not a nonzero multiple of " + std::to_string(rows) + "x" +
                std::to_string(cols) + " digits");
  }
  const size_t count = images.size() / pixels_per_image;

  // Layout in unscaled pixels (autograd's plot_images): every row is laid out
  // for per_row digits even when fewer are drawn; padding before each digit
  // and once more at the right/bottom edge. The arithmetic is int64 and
  // checked step by step, so absurd options are refused instead of wrapping:
  // (cols + pad) * per_row + pad < 2^63 for any int arguments.
  const int64_t per_row = options.per_row;
  const int64_t pad = options.padding;
  const int64_t scale = options.scale;
  const int64_t grid_rows = (static_cast<int64_t>(count) + per_row - 1) / per_row;
  const int64_t unscaled_w = (cols + pad) * per_row + pad;
  auto too_large = [&]() {
    return Error("png grid: " + std::to_string(count) + " digits of " + std::to_string(rows) +
                 "x" + std::to_string(cols) + " (per_row " + std::to_string(per_row) +
                 ", padding " + std::to_string(pad) + ", scale " + std::to_string(scale) +
                 ") exceed the " + std::to_string(kMaxPixels) + "-pixel limit");
  };
  if (unscaled_w > kMaxPixels || grid_rows > kMaxPixels) throw too_large();
  const int64_t unscaled_h = (rows + pad) * grid_rows + pad;  // < 2^61 after the check above
  if (unscaled_h > kMaxPixels) throw too_large();
  const int64_t w = unscaled_w * scale;  // each <= 2^32 now
  const int64_t h = unscaled_h * scale;  // and >= 1, as rows >= 1
  if (w > kMaxPixels / h) throw too_large();

  // Start all white: the gaps and any empty cells of the last row stay so.
  std::vector<unsigned char> pixels(static_cast<size_t>(w * h), 255);
  for (size_t i = 0; i < count; ++i) {
    const int64_t grid_y = pad + (pad + rows) * (static_cast<int64_t>(i) / per_row);
    const int64_t grid_x = pad + (pad + cols) * (static_cast<int64_t>(i) % per_row);
    const float* digit = images.data() + i * pixels_per_image;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const unsigned char level = gray_level(digit[r * cols + c]);
        // Nearest-neighbour upscaling: each source pixel fills a scale^2 block.
        for (int64_t dy = 0; dy < scale; ++dy) {
          unsigned char* line = pixels.data() + ((grid_y + r) * scale + dy) * w;
          for (int64_t dx = 0; dx < scale; ++dx) line[(grid_x + c) * scale + dx] = level;
        }
      }
    }
  }
  // Both fit in int: each is at most w*h <= kMaxPixels < 2^31.
  *width = static_cast<int>(w);
  *height = static_cast<int>(h);
  return pixels;
}

void write_png_grid(const std::string& path, const std::vector<float>& images, int rows,
                    int cols, const GridOptions& options) {
  int width = 0;
  int height = 0;
  std::vector<unsigned char> pixels;
  try {
    pixels = render_grid(images, rows, cols, options, &width, &height);
  } catch (const Error& e) {
    throw Error("cannot write " + path + ": " + e.what());
  }

  std::vector<unsigned char> png;
  // One channel (gray); rows are packed, so the stride is the width.
  if (stbi_write_png_to_func(append_bytes, &png, width, height, 1, pixels.data(), width) == 0 ||
      png.empty()) {
    throw Error("cannot write " + path + ": PNG encoding of a " + std::to_string(width) + "x" +
                std::to_string(height) + " image failed (out of memory?)");
  }
  write_file_atomically(path, png.data(), png.size());
}

}  // namespace cuvae
