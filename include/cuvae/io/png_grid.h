// PNG grids of digits, as the seed's save_images draws them.
//
// The seed (autograd's plot_images with matplotlib's "binary" colour map)
// draws images of values in [0,1] as dark ink on white: gray = 255*(1 - v).
// Digits sit in rows of `per_row`, with `padding` pixels of gap around and
// between them; the gap is drawn at the lightest level (white), as the seed
// fills it with the smallest value, which "binary" maps to white. Each digit
// may be scaled up by an integer factor (nearest neighbour) for viewing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cuvae {

// The most pixels a grid may have (the PNG encoder sizes with int).
constexpr int64_t kMaxGridPixels = int64_t{1} << 28;

struct GridOptions {
  int per_row = 5;   // digits per row, as in the seed
  int padding = 5;   // gap in pixels (before scaling), as in the seed
  int scale = 1;     // integer upscaling of each digit and gap, 1..16
};

// Gray levels of the grid, one byte per pixel, row-major, no row padding.
// `images` holds count = images.size() / (rows*cols) digits, each rows*cols
// values, row-major. With n_rows = ceil(count / per_row):
//   width  = ((cols + padding) * per_row + padding) * scale
//   height = ((rows + padding) * n_rows  + padding) * scale
// (every grid row is as wide as per_row digits, even the last). Digit i has
// its top-left unscaled pixel at x = padding + (cols + padding) * (i % per_row),
// y = padding + (rows + padding) * (i / per_row); each unscaled pixel becomes
// a scale x scale block. Value v is clamped to [0,1] (NaN -> 0) and drawn as
// gray lround(255 * (1 - v)), halves rounded up: 0 -> 255, 0.5 -> 128, 1 -> 0.
// Gaps and empty cells are 255. Stores the size in *width and *height.
// Throws cuvae::Error (one line) unless rows, cols > 0, images.size() is a
// nonzero multiple of rows*cols, per_row >= 1, padding >= 0,
// 1 <= scale <= 16, and width*height <= 2^28 (the PNG encoder sizes with int).
std::vector<unsigned char> render_grid(const std::vector<float>& images, int rows, int cols,
                                       const GridOptions& options, int* width, int* height);

// render_grid, then an 8-bit, 1-channel grayscale PNG (stb_image_write)
// written atomically (temporary file, then rename; see atomic_file.h).
// Throws cuvae::Error naming the path on any failure, argument errors
// included; on failure `path` is left as it was and no temporary remains.
void write_png_grid(const std::string& path, const std::vector<float>& images, int rows,
                    int cols, const GridOptions& options);

}  // namespace cuvae
