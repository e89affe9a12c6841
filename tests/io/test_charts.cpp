// Charts through tools/plot.py (matplotlib): the training curve from a
// metrics.csv, today's columns and the optional ones, and the notes when it
// cannot be drawn. Skipped, saying why, where matplotlib is not installed.
#include "cuvae/io/charts.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "vae_process.h"

namespace {

namespace fs = std::filesystem;
using namespace cuvae::testing;

// Width and height from a PNG's IHDR chunk; 0 x 0 if it is not a PNG.
std::pair<uint32_t, uint32_t> png_size(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 24 || bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0 ||
      bytes.compare(12, 4, "IHDR") != 0) {
    return {0, 0};
  }
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

// Skips the test when matplotlib (or python3) is missing: run_plot_script
// says so and the chart is a chart to skip.
#define SKIP_WITHOUT_MATPLOTLIB(dir)                                                 \
  do {                                                                               \
    write_file((dir).path() / "probe.csv", "epoch,elbo\n1,-200\n");                  \
    std::string probe_note;                                                          \
    bool probe_missing = false;                                                      \
    if (!cuvae::run_plot_script({"curve", (dir) / "probe.csv", (dir) / "probe.png"}, \
                                &probe_note, &probe_missing) &&                      \
        probe_missing) {                                                             \
      GTEST_SKIP() << "charts skipped: " << probe_note;                              \
    }                                                                                \
  } while (0)

TEST(Charts, FindsPlotScriptInTheSourceTree) {
  const std::string script = cuvae::find_plot_script();
  EXPECT_FALSE(script.empty());
  EXPECT_TRUE(fs::exists(script)) << script;
  EXPECT_EQ(fs::path(script).filename(), "plot.py");
}

TEST(Charts, TrainingCurveOfTodaysMetrics) {
  TempDir dir;
  SKIP_WITHOUT_MATPLOTLIB(dir);
  write_file(dir.path() / "metrics.csv",
             "epoch,elbo,seconds,samples_per_s\n1,-221.86,1.09,54792.2\n2,-192.34,0.96,62509.6\n"
             "3,-180.0,0.95,63000\n");
  std::string note = "untouched";
  ASSERT_TRUE(cuvae::draw_training_curve(dir / "metrics.csv", dir / "training_curve.png", &note))
      << note;
  EXPECT_EQ(png_size(dir / "training_curve.png"), std::make_pair(700u, 440u));
  // Nothing but the chart (and the probe's) was left in the directory.
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
  }
}

TEST(Charts, TrainingCurveWithTheOptionalColumns) {
  TempDir dir;
  SKIP_WITHOUT_MATPLOTLIB(dir);
  // bound + objective, lr stages, test_bound empty where not evaluated.
  std::string csv = "epoch,objective,bound,test_bound,seconds,samples_per_s,lr\n";
  for (int e = 1; e <= 13; ++e) {
    const double lr = e == 1 ? 1e-3 : e <= 4 ? 7.2e-4 : 5.2e-4;
    csv += std::to_string(e) + ",iwae," + std::to_string(-200 + 5 * e) + "," +
           (e % 4 == 0 ? std::to_string(-201 + 5 * e) : "") + ",1.0,60000," + std::to_string(lr) +
           "\n";
  }
  write_file(dir.path() / "metrics.csv", csv);
  std::string note;
  ASSERT_TRUE(cuvae::draw_training_curve(dir / "metrics.csv", dir / "curve.png", &note)) << note;
  EXPECT_EQ(png_size(dir / "curve.png"), std::make_pair(700u, 440u));
}

TEST(Charts, BadMetricsGiveOneNoteAndNoChart) {
  TempDir dir;
  SKIP_WITHOUT_MATPLOTLIB(dir);
  const std::string out = dir / "curve.png";
  struct Case {
    std::string csv, says;
  };
  for (const Case& c : {Case{"epoch,elbo\n", "no epochs yet"},
                        Case{"epoch,seconds\n1,2\n", "no 'bound' or 'elbo' column"},
                        Case{"epoch,elbo\n1,abc\n", "line 2: elbo is 'abc', not a number"},
                        Case{"epoch,elbo\n2,-1\n1,-2\n", "does not follow"},
                        Case{"", "empty"}}) {
    write_file(dir.path() / "metrics.csv", c.csv);
    std::string note;
    bool missing = true;
    EXPECT_FALSE(cuvae::run_plot_script({"curve", dir / "metrics.csv", out}, &note, &missing));
    EXPECT_FALSE(missing) << "bad input is not a missing library";
    EXPECT_TRUE(contains(note, "plot.py: error: ")) << note;
    EXPECT_TRUE(contains(note, c.says)) << note;
    EXPECT_EQ(note.find('\n'), std::string::npos) << note;
    EXPECT_FALSE(fs::exists(out));
  }
  std::string note;
  EXPECT_FALSE(cuvae::draw_training_curve(dir / "absent.csv", out, &note));
  EXPECT_TRUE(contains(note, "absent.csv")) << note;
  write_file(dir.path() / "metrics.csv", "epoch,elbo\n1,-200\n");
  EXPECT_FALSE(cuvae::draw_training_curve(dir / "metrics.csv", dir / "no/such/dir/c.png", &note));
  EXPECT_TRUE(contains(note, "does not exist")) << note;
}

// An old chart stays whole when the new one cannot be drawn.
TEST(Charts, FailedRedrawLeavesThePreviousChart) {
  TempDir dir;
  SKIP_WITHOUT_MATPLOTLIB(dir);
  write_file(dir.path() / "metrics.csv", "epoch,elbo\n1,-200\n2,-190\n");
  std::string note;
  ASSERT_TRUE(cuvae::draw_training_curve(dir / "metrics.csv", dir / "c.png", &note)) << note;
  const std::string before = read_file(dir / "c.png");
  write_file(dir.path() / "metrics.csv", "epoch,elbo\n1,nan\n");
  EXPECT_FALSE(cuvae::draw_training_curve(dir / "metrics.csv", dir / "c.png", &note));
  EXPECT_EQ(read_file(dir / "c.png"), before);
}

TEST(Charts, MissingPythonIsANoteNotAnError) {
  ASSERT_EQ(::setenv("CUVAE_PYTHON", "/nonexistent/python3", 1), 0);
  std::string note;
  bool missing = false;
  TempDir dir;
  write_file(dir.path() / "metrics.csv", "epoch,elbo\n1,-200\n");
  EXPECT_FALSE(cuvae::run_plot_script({"curve", dir / "metrics.csv", dir / "c.png"}, &note, &missing));
  ::unsetenv("CUVAE_PYTHON");
  EXPECT_TRUE(missing);
  EXPECT_TRUE(contains(note, "cannot run python3")) << note;
  EXPECT_TRUE(contains(note, "/nonexistent/python3")) << note;
  EXPECT_FALSE(fs::exists(dir / "c.png"));
}

TEST(Charts, MissingScriptIsANote) {
  ASSERT_EQ(::setenv("CUVAE_PLOT_SCRIPT", "/nonexistent/plot.py", 1), 0);
  std::string note;
  bool missing = false;
  EXPECT_FALSE(cuvae::run_plot_script({"curve", "m.csv", "c.png"}, &note, &missing));
  ::unsetenv("CUVAE_PLOT_SCRIPT");
  EXPECT_TRUE(missing);
  EXPECT_TRUE(contains(note, "plot.py not found")) << note;
}

}  // namespace
