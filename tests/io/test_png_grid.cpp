// PNG grids: layout, gray levels and error handling, checked by decoding the
// written file with stb_image (an independent reader of the same format).
#include "cuvae/io/png_grid.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "cuvae/error.h"

#include "png_decoder.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

struct Decoded {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<unsigned char> pixels;
  int at(int x, int y) const { return pixels[static_cast<size_t>(y) * width + x]; }
};

// Decodes as stored (desired channels 0), so the channel count is the file's.
Decoded read_png(const std::string& path) {
  Decoded d;
  unsigned char* data = stbi_load(path.c_str(), &d.width, &d.height, &d.channels, 0);
  if (data == nullptr) {
    ADD_FAILURE() << "stb_image cannot read " << path << ": " << stbi_failure_reason();
    return d;
  }
  d.pixels.assign(data, data + static_cast<size_t>(d.width) * d.height * d.channels);
  stbi_image_free(data);
  return d;
}

// `count` 28x28 digits whose values sweep [0,1] so neighbouring pixels and
// digits differ (a misplaced digit or block would show).
std::vector<float> sweep_digits(int count, int rows = 28, int cols = 28) {
  std::vector<float> v(static_cast<size_t>(count) * rows * cols);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 37) % 256) / 255.0f;
  return v;
}

bool has_temp_file(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().filename().string().find(".tmp.") != std::string::npos) return true;
  }
  return false;
}

class PngGridTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "cuvae_png_grid_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes, decodes, and checks the decoded pixels equal render_grid's.
  Decoded write_and_read(const std::vector<float>& images, int rows, int cols,
                         const cuvae::GridOptions& options) {
    const std::string p = path("grid.png");
    cuvae::write_png_grid(p, images, rows, cols, options);
    Decoded d = read_png(p);
    int w = 0;
    int h = 0;
    const std::vector<unsigned char> expected =
        cuvae::render_grid(images, rows, cols, options, &w, &h);
    EXPECT_EQ(d.width, w);
    EXPECT_EQ(d.height, h);
    EXPECT_EQ(d.channels, 1);
    EXPECT_EQ(d.pixels, expected);
    return d;
  }

  fs::path dir_;
};

// --- Layout ---------------------------------------------------------------

TEST_F(PngGridTest, DefaultsAreTheSeeds) {
  const cuvae::GridOptions options;
  EXPECT_EQ(options.per_row, 5);
  EXPECT_EQ(options.padding, 5);
  EXPECT_EQ(options.scale, 1);
}

TEST_F(PngGridTest, TwentyFiveDigitsMakeA170Square) {
  const Decoded d = write_and_read(sweep_digits(25), 28, 28, {});
  EXPECT_EQ(d.width, 170);  // (28+5)*5 + 5
  EXPECT_EQ(d.height, 170);
  EXPECT_EQ(d.channels, 1);
}

TEST_F(PngGridTest, TwentyDigitsMakeFourRows) {
  // The seed's task_3_2: 10 test digits then their 10 reconstructions.
  const Decoded d = write_and_read(sweep_digits(20), 28, 28, {});
  EXPECT_EQ(d.width, 170);
  EXPECT_EQ(d.height, 137);  // (28+5)*4 + 5
}

TEST_F(PngGridTest, SevenDigitsLeaveThePartialRowWhite) {
  // All-black digits: ink exactly in the 7 digit cells, white elsewhere,
  // including cells 8..10 of the second row.
  const std::vector<float> black(7 * 28 * 28, 1.0f);
  const Decoded d = write_and_read(black, 28, 28, {});
  ASSERT_EQ(d.width, 170);  // laid out for 5 per row even when fewer are drawn
  ASSERT_EQ(d.height, 71);  // (28+5)*2 + 5
  int ink = 0;
  for (int y = 0; y < d.height; ++y) {
    for (int x = 0; x < d.width; ++x) {
      const int cell_x = (x - 5) / 33;
      const int cell_y = (y - 5) / 33;
      const bool in_digit = x >= 5 && y >= 5 && (x - 5) % 33 < 28 && (y - 5) % 33 < 28 &&
                            cell_y * 5 + cell_x < 7;
      ASSERT_EQ(d.at(x, y), in_digit ? 0 : 255) << "at (" << x << ", " << y << ")";
      ink += in_digit ? 1 : 0;
    }
  }
  EXPECT_EQ(ink, 7 * 28 * 28);
}

TEST_F(PngGridTest, PaddingIsWhiteAroundAndBetweenDigits) {
  const std::vector<float> black(25 * 28 * 28, 1.0f);
  const Decoded d = write_and_read(black, 28, 28, {});
  ASSERT_EQ(d.width, 170);
  for (int y = 0; y < d.height; ++y) {
    for (int x = 0; x < d.width; ++x) {
      const bool gap = x < 5 || y < 5 || (x - 5) % 33 >= 28 || (y - 5) % 33 >= 28;
      ASSERT_EQ(d.at(x, y), gap ? 255 : 0) << "at (" << x << ", " << y << ")";
    }
  }
}

TEST_F(PngGridTest, ScaleThreeMakesEveryPixelA3x3Block) {
  const std::vector<float> images = sweep_digits(25);
  const Decoded one = write_and_read(images, 28, 28, {});
  const Decoded three = write_and_read(images, 28, 28, {5, 5, 3});
  ASSERT_EQ(three.width, 510);
  ASSERT_EQ(three.height, 510);
  for (int y = 0; y < three.height; ++y) {
    for (int x = 0; x < three.width; ++x) {
      ASSERT_EQ(three.at(x, y), one.at(x / 3, y / 3)) << "at (" << x << ", " << y << ")";
    }
  }
}

TEST_F(PngGridTest, NonSquareDigitsAndOtherOptions) {
  // 2 rows x 3 cols digits, 4 per row, padding 2, scale 2, 5 digits:
  // width = ((3+2)*4 + 2)*2 = 44, height = ((2+2)*2 + 2)*2 = 20.
  const Decoded d = write_and_read(sweep_digits(5, 2, 3), 2, 3, {4, 2, 2});
  EXPECT_EQ(d.width, 44);
  EXPECT_EQ(d.height, 20);
}

// --- Gray levels ----------------------------------------------------------

TEST_F(PngGridTest, ExactPixelsOfASmallGrid) {
  // Three 2x2 digits, 2 per row, padding 1: a 7x7 image. Gray is
  // round(255*(1-v)) with halves rounded up, so 0.5 -> 128.
  const std::vector<float> images = {
      0.0f, 0.5f, 1.0f, 0.25f,  // digit 0: 255 128 / 0 191
      1.0f, 1.0f, 0.0f, 0.0f,   // digit 1:   0   0 / 255 255
      0.2f, 0.4f, 0.6f, 0.8f,   // digit 2: 204 153 / 102 51
  };
  const std::vector<unsigned char> expected = {
      255, 255, 255, 255, 255, 255, 255,  //
      255, 255, 128, 255, 0,   0,   255,  //
      255, 0,   191, 255, 255, 255, 255,  //
      255, 255, 255, 255, 255, 255, 255,  //
      255, 204, 153, 255, 255, 255, 255,  // empty cell right of digit 2
      255, 102, 51,  255, 255, 255, 255,  //
      255, 255, 255, 255, 255, 255, 255,  //
  };
  const Decoded d = write_and_read(images, 2, 2, {2, 1, 1});
  ASSERT_EQ(d.width, 7);
  ASSERT_EQ(d.height, 7);
  EXPECT_EQ(d.pixels, expected);
}

TEST_F(PngGridTest, ZeroPaddingPacksDigits) {
  const std::vector<float> images = {0.0f, 1.0f, 1.0f, 0.0f};  // two 1x2 digits
  const Decoded d = write_and_read(images, 1, 2, {2, 0, 1});
  ASSERT_EQ(d.width, 4);
  ASSERT_EQ(d.height, 1);
  EXPECT_EQ(d.pixels, (std::vector<unsigned char>{255, 0, 0, 255}));
}

TEST_F(PngGridTest, OutOfRangeAndNanAreClamped) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  // One 1x6 digit, no padding: the image is exactly the digit's gray levels.
  const std::vector<float> images = {-1.0f, 2.0f, nan, inf, -inf, 1.0f / 255.0f};
  const Decoded d = write_and_read(images, 1, 6, {1, 0, 1});
  ASSERT_EQ(d.width, 6);
  ASSERT_EQ(d.height, 1);
  EXPECT_EQ(d.pixels, (std::vector<unsigned char>{255, 0, 255, 0, 255, 254}));
}

TEST_F(PngGridTest, RenderGridReportsSize) {
  int w = -1;
  int h = -1;
  const std::vector<unsigned char> pixels =
      cuvae::render_grid(sweep_digits(7), 28, 28, {}, &w, &h);
  EXPECT_EQ(w, 170);
  EXPECT_EQ(h, 71);
  EXPECT_EQ(pixels.size(), static_cast<size_t>(170 * 71));
}

TEST_F(PngGridTest, OverwritesAnExistingFile) {
  const std::string p = path("grid.png");
  cuvae::write_png_grid(p, std::vector<float>(25 * 28 * 28, 1.0f), 28, 28, {});
  cuvae::write_png_grid(p, std::vector<float>(4, 0.0f), 2, 2, {1, 0, 1});
  const Decoded d = read_png(p);
  EXPECT_EQ(d.width, 2);
  EXPECT_EQ(d.height, 2);
  EXPECT_EQ(d.pixels, (std::vector<unsigned char>{255, 255, 255, 255}));
  EXPECT_FALSE(has_temp_file(dir_));
}

// --- Errors ---------------------------------------------------------------

struct BadCall {
  const char* name;
  std::vector<float> images;
  int rows;
  int cols;
  cuvae::GridOptions options;
  const char* message;  // expected part of the error
};

class PngGridInvalidTest : public PngGridTest,
                           public ::testing::WithParamInterface<BadCall> {};

TEST_P(PngGridInvalidTest, ThrowsNamingThePathAndWritesNothing) {
  const BadCall& c = GetParam();
  const std::string p = path("bad.png");
  try {
    cuvae::write_png_grid(p, c.images, c.rows, c.cols, c.options);
    FAIL() << "no error for " << c.name;
  } catch (const cuvae::Error& e) {
    const std::string what = e.what();
    EXPECT_THAT(what, HasSubstr(p));
    EXPECT_THAT(what, HasSubstr(c.message));
    EXPECT_THAT(what, Not(HasSubstr("\n")));
  }
  EXPECT_TRUE(fs::is_empty(dir_)) << "a file was left behind";

  int w = 0;
  int h = 0;
  EXPECT_THROW(cuvae::render_grid(c.images, c.rows, c.cols, c.options, &w, &h), cuvae::Error);
}

INSTANTIATE_TEST_SUITE_P(
    PngGrid, PngGridInvalidTest,
    ::testing::Values(
        BadCall{"ZeroRows", std::vector<float>(4), 0, 2, {}, "digit size"},
        BadCall{"NegativeCols", std::vector<float>(4), 2, -2, {}, "digit size"},
        BadCall{"NoImages", {}, 2, 2, {}, "not a nonzero multiple"},
        BadCall{"PartialImage", std::vector<float>(5), 2, 2, {}, "not a nonzero multiple"},
        BadCall{"ZeroPerRow", std::vector<float>(4), 2, 2, {0, 5, 1}, "per_row"},
        BadCall{"NegativePadding", std::vector<float>(4), 2, 2, {5, -1, 1}, "padding"},
        BadCall{"ZeroScale", std::vector<float>(4), 2, 2, {5, 5, 0}, "scale"},
        BadCall{"ScaleAbove16", std::vector<float>(4), 2, 2, {5, 5, 17}, "scale"},
        // One row laid out for 2^24 digits at scale 16: 2^28 x 16 pixels,
        // past the cap where the encoder's int arithmetic would overflow.
        BadCall{"TooLarge", {0.5f}, 1, 1, {1 << 24, 0, 16}, "pixel limit"},
        // Extreme ints must be refused, not overflow the size arithmetic.
        BadCall{"HugePaddingAndPerRow", {0.5f}, 1, 1,
                {std::numeric_limits<int>::max(), std::numeric_limits<int>::max(), 16},
                "pixel limit"},
        BadCall{"HugeDigits", {0.5f}, std::numeric_limits<int>::max(),
                std::numeric_limits<int>::max(), {}, "not a nonzero multiple"}),
    [](const ::testing::TestParamInfo<BadCall>& param) { return std::string(param.param.name); });

TEST_F(PngGridTest, MissingDirectoryThrowsNamingThePath) {
  const std::string p = path("missing/grid.png");
  try {
    cuvae::write_png_grid(p, sweep_digits(1), 28, 28, {});
    FAIL() << "no error writing into a missing directory";
  } catch (const cuvae::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p));
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(PngGridTest, FailedRenameLeavesNoTempFile) {
  // The target is a non-empty directory: the temporary is written, then the
  // rename over it fails, and the temporary must be cleaned up.
  const std::string p = path("occupied");
  fs::create_directory(p);
  fs::create_directory(p + "/child");
  try {
    cuvae::write_png_grid(p, sweep_digits(1), 28, 28, {});
    FAIL() << "no error writing over a directory";
  } catch (const cuvae::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p));
  }
  EXPECT_FALSE(has_temp_file(dir_));
  EXPECT_TRUE(fs::is_directory(p + "/child"));
}

}  // namespace
