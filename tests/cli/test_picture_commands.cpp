// vae manifold and vae latents end to end: what they draw (checked pixel by
// pixel on a model made by hand), their sizes, and their bad inputs (one
// error line naming the flag or file, a non-zero exit, nothing written).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/io/idx.h"
#include "cuvae/io/model_file.h"
#include "cuvae/model/latent_map.h"
#include "cuvae/model/vae_math.h"
#include "cuvae/model/vae_model.h"
#include "vae_process.h"

#include "png_decoder.h"

namespace {

namespace fs = std::filesystem;
using namespace cuvae::testing;

struct Png {
  int width = 0, height = 0, channels = 0;
  std::vector<unsigned char> pixels;
};

Png decode_png(const std::string& path) {
  Png png;
  unsigned char* data = stbi_load(path.c_str(), &png.width, &png.height, &png.channels, 0);
  if (data == nullptr) return png;
  png.pixels.assign(data, data + static_cast<size_t>(png.width) * png.height * png.channels);
  stbi_image_free(data);
  return png;
}

std::vector<std::string> manifold_args(const std::string& model, const std::string& out,
                                       std::vector<std::string> more = {}) {
  std::vector<std::string> args = {"manifold", "--model", model, "--out", out, "--device", "cpu"};
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

// A tiny model trained on the generated data with latent size `latent`.
std::string train_tiny(const TempDir& dir, int latent) {
  const std::string out = dir / ("l" + std::to_string(latent));
  const RunResult r = run_vae(
      train_args(shared().data, out, {{"--latent-dim", std::to_string(latent)}, {"--max-steps", "2"}}),
      dir.path());
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  return out + "/model.safetensors";
}

// ---------------------------------------------------------------------------
// manifold

// A model made by hand whose decoder draws z: 2 x 2 images, L = 2, one
// hidden layer of 2. Hidden h = relu(z + 10) = z + 10 (|z| < 3 here); logits
// (2 z1, 2 z2, -2 z1, 0). So pixel 0 grows with z1 (columns), pixel 1 with
// z2 (rows, top high), pixel 3 is sigmoid(0) = 0.5 everywhere.
std::string write_hand_made_model(const TempDir& dir) {
  cuvae::Architecture arch;
  arch.input_dim = 4;
  arch.hidden = {2};
  arch.latent_dim = 2;
  const cuvae::ParameterLayout layout(arch);
  std::vector<float> params(layout.size(), 0.0f);
  const cuvae::DenseLayer& first = layout.decoder()[0];   // 2 -> 2
  const cuvae::DenseLayer& second = layout.decoder()[1];  // 2 -> 4
  params[first.weight_offset + 0 * 2 + 0] = 1.0f;
  params[first.weight_offset + 1 * 2 + 1] = 1.0f;
  params[first.bias_offset + 0] = 10.0f;
  params[first.bias_offset + 1] = 10.0f;
  params[second.weight_offset + 0 * 4 + 0] = 2.0f;   // h0 -> pixel 0
  params[second.weight_offset + 1 * 4 + 1] = 2.0f;   // h1 -> pixel 1
  params[second.weight_offset + 0 * 4 + 2] = -2.0f;  // h0 -> pixel 2
  params[second.bias_offset + 0] = -20.0f;
  params[second.bias_offset + 1] = -20.0f;
  params[second.bias_offset + 2] = 20.0f;
  const std::string path = dir / "hand.safetensors";
  cuvae::save_model(path, arch, params, {});
  return path;
}

TEST(Manifold, DrawsTheDecoderMeansAtThePriorsQuantiles) {
  TempDir dir;
  const std::string model = write_hand_made_model(dir);
  const int grid = 3;
  const RunResult r = run_vae(manifold_args(model, dir / "out", {"--grid", std::to_string(grid)}),
                              dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "wrote " + (dir / "out") + "/manifold.png (6 x 6 pixels)")) << r.out;
  const Png png = decode_png(dir / "out/manifold.png");
  ASSERT_EQ(png.width, 6);
  ASSERT_EQ(png.height, 6);
  ASSERT_EQ(png.channels, 1);
  auto gray = [](double v) { return static_cast<int>(std::lround(255.0 * (1.0 - v))); };
  for (int row = 0; row < grid; ++row) {
    for (int col = 0; col < grid; ++col) {
      const double z1 = cuvae::normal_quantile((col + 0.5) / grid);
      const double z2 = cuvae::normal_quantile((grid - 1 - row + 0.5) / grid);
      const float logits[4] = {static_cast<float>(2 * z1), static_cast<float>(2 * z2),
                               static_cast<float>(-2 * z1), 0.0f};
      for (int p = 0; p < 4; ++p) {
        const int x = col * 2 + p % 2, y = row * 2 + p / 2;
        EXPECT_NEAR(png.pixels[static_cast<size_t>(y) * png.width + x],
                    gray(cuvae::sigmoid(logits[p])), 1)
            << "cell (" << row << ", " << col << ") pixel " << p;
      }
    }
  }
}

TEST(Manifold, DefaultGridOfATrainedModelAndItsScale) {
  REQUIRE_SHARED();
  TempDir dir;
  RunResult r = run_vae(manifold_args(shared().model, dir / "a"), dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "20 x 20 decoder means at the prior's quantiles")) << r.out;
  Png png = decode_png(dir / "a/manifold.png");
  EXPECT_EQ(png.width, 20 * 28);
  EXPECT_EQ(png.height, 20 * 28);
  r = run_vae(manifold_args(shared().model, dir / "b", {"--grid", "4", "--image-scale", "2"}),
              dir.path());
  expect_success(r);
  png = decode_png(dir / "b/manifold.png");
  EXPECT_EQ(png.width, 4 * 28 * 2);
  EXPECT_EQ(png.height, 4 * 28 * 2);
}

TEST(Manifold, LatentSizeAboveTwoUsesThePrincipalDirectionsAndSaysSo) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string model = train_tiny(dir, 3);
  const RunResult r = run_vae(
      manifold_args(model, dir / "out", {"--data", shared().data, "--grid", "5"}), dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "L = 3 > 2")) << r.out;
  EXPECT_TRUE(contains(r.out, "first two principal directions of the 20 test images' posterior means"))
      << r.out;
  const Png png = decode_png(dir / "out/manifold.png");
  EXPECT_EQ(png.width, 5 * 28);
  EXPECT_EQ(png.height, 5 * 28);
}

TEST(ManifoldBadInput, GridOutOfRange) {
  REQUIRE_SHARED();
  TempDir dir;
  for (const char* grid : {"1", "101", "0", "-3", "abc", "2.5"}) {
    expect_one_line_error(run_vae(manifold_args(shared().model, dir / "out", {"--grid", grid}),
                                  dir.path()),
                          {"--grid"}, {"integer from 2 to 100", "not an integer"});
    EXPECT_FALSE(fs::exists(dir / "out")) << grid;
  }
}

// Found by the adversarial pass: --grid 100 --image-scale 16 (a 44800 x
// 44800 picture) decoded the whole grid, then failed with "cannot write
// ...: png grid: ... exceed the 268435456-pixel limit", naming no flag.
TEST(ManifoldBadInput, APictureTooLargeIsRefusedUpFrontNamingTheFlags) {
  REQUIRE_SHARED();
  TempDir dir;
  const RunResult r =
      run_vae(manifold_args(shared().model, dir / "out", {"--grid", "100", "--image-scale", "16"}), dir.path());
  expect_one_line_error(r, {"--grid 100", "--image-scale 16", "44800 x 44800"}, {"limit"});
  EXPECT_FALSE(contains(r.out, "manifold: ")) << "decoded first: " << r.out;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(ManifoldBadInput, LatentSizeOneIsRefused) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string model = train_tiny(dir, 1);
  expect_one_line_error(run_vae(manifold_args(model, dir / "out"), dir.path()),
                        {"--model", model}, {"at least 2 latent dimensions"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(ManifoldBadInput, AboveTwoNeedsTestImages) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string model = train_tiny(dir, 3);
  const std::string empty = dir / "empty";
  fs::create_directories(empty);
  expect_one_line_error(run_vae(manifold_args(model, dir / "out", {"--data", empty}), dir.path()),
                        {empty, "t10k-images-idx3-ubyte"}, {"not found"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(ManifoldBadInput, MissingOrBadModel) {
  TempDir dir;
  expect_one_line_error(run_vae(manifold_args(dir / "none.safetensors", dir / "out"), dir.path()),
                        {"none.safetensors"}, {});
  write_file(dir.path() / "junk.safetensors", "not a model");
  expect_one_line_error(run_vae(manifold_args(dir / "junk.safetensors", dir / "out"), dir.path()),
                        {"junk.safetensors"}, {});
  expect_one_line_error(run_vae({"manifold", "--out", dir / "out"}, dir.path()), {"--model"},
                        {"required"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// ---------------------------------------------------------------------------
// latents

std::vector<std::string> latents_args(const std::string& model, const std::string& data,
                                      const std::string& out) {
  return {"latents", "--model", model, "--data", data, "--out", out, "--device", "cpu"};
}

bool have_matplotlib() {
  for (const char* python : {"python3", "/usr/bin/python3"}) {
    const std::string command = std::string(python) + " -c 'import matplotlib' >/dev/null 2>&1";
    if (std::system(command.c_str()) == 0) return true;
  }
  return false;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The points are the model's posterior means of the fixed binarization,
// labelled by the label file; the chart is drawn when matplotlib is there.
TEST(Latents, WritesThePosteriorMeansByLabel) {
  REQUIRE_SHARED();
  TempDir dir;
  const RunResult r = run_vae(latents_args(shared().model, shared().data, dir / "out"), dir.path());
  const std::vector<std::string> csv = lines_of(read_file(dir / "out/latents.csv"));
  ASSERT_EQ(csv.size(), 1u + kTestCount) << describe(r);
  EXPECT_EQ(csv[0], "label,z1 (posterior mean),z2 (posterior mean)");

  const cuvae::ModelFile file = cuvae::load_model(shared().model);
  std::unique_ptr<cuvae::Backend> backend = cuvae::make_backend("cpu");
  cuvae::VaeModel model(*backend, file.arch, 500);
  model.set_parameters(file.params);
  const cuvae::MnistSplit test = cuvae::load_mnist_split(shared().data, false);
  const std::vector<double> means = cuvae::posterior_means(model, test.images, 0);
  for (uint32_t i = 0; i < kTestCount; ++i) {
    std::istringstream row(csv[1 + i]);
    std::string label, x, y;
    std::getline(row, label, ',');
    std::getline(row, x, ',');
    std::getline(row, y, ',');
    EXPECT_EQ(label, std::to_string(i % 10));  // write_dataset's labels
    EXPECT_NEAR(std::stod(x), means[2 * i], 1e-6 * (1 + std::fabs(means[2 * i])));
    EXPECT_NEAR(std::stod(y), means[2 * i + 1], 1e-6 * (1 + std::fabs(means[2 * i + 1])));
  }
  if (!have_matplotlib()) {
    expect_one_line_error(r, {"latents.png", "latents.csv"}, {"matplotlib"});
    GTEST_SKIP() << "matplotlib is not installed: latents.png not drawn (the error says so)";
  }
  expect_success(r);
  const Png png = decode_png(dir / "out/latents.png");
  EXPECT_EQ(png.width, 760);
  EXPECT_EQ(png.height, 640);
}

TEST(Latents, AboveTwoDimensionsUsesPrincipalComponents) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string model = train_tiny(dir, 3);
  const RunResult r = run_vae(latents_args(model, shared().data, dir / "out"), dir.path());
  EXPECT_TRUE(contains(r.out, "the first two principal components of their posterior means (L = 3"))
      << describe(r);
  const std::vector<std::string> csv = lines_of(read_file(dir / "out/latents.csv"));
  ASSERT_EQ(csv.size(), 1u + kTestCount) << describe(r);
  EXPECT_EQ(csv[0].rfind("label,principal component 1 of the posterior means (", 0), 0u) << csv[0];
  if (have_matplotlib()) expect_success(r);
}

TEST(LatentsBadInput, LabelCountDisagreesWithImages) {
  REQUIRE_SHARED();
  TempDir dir;
  const fs::path data = dir.path() / "data";
  write_dataset(data);
  write_file(data / kTestLabels, idx_labels(kTestCount - 1));
  expect_one_line_error(run_vae(latents_args(shared().model, data.string(), dir / "out"), dir.path()),
                        {(data / kTestLabels).string()}, {"must agree"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(LatentsBadInput, NoLabels) {
  REQUIRE_SHARED();
  TempDir dir;
  const fs::path data = dir.path() / "data";
  write_dataset(data);
  fs::remove(data / kTestLabels);
  expect_one_line_error(run_vae(latents_args(shared().model, data.string(), dir / "out"), dir.path()),
                        {kTestLabels}, {"not found"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(LatentsBadInput, LabelsAboveNine) {
  REQUIRE_SHARED();
  TempDir dir;
  const fs::path data = dir.path() / "data";
  write_dataset(data);
  std::string labels = idx_labels(kTestCount);
  labels[8 + 3] = 12;  // the fourth label
  write_file(data / kTestLabels, labels);
  expect_one_line_error(run_vae(latents_args(shared().model, data.string(), dir / "out"), dir.path()),
                        {"--data", "test label 3 is 12"}, {"0 to 9"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(LatentsBadInput, LatentSizeOneIsRefused) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string model = train_tiny(dir, 1);
  expect_one_line_error(run_vae(latents_args(model, shared().data, dir / "out"), dir.path()),
                        {"--model", model}, {"at least 2 latent dimensions"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

}  // namespace

namespace {

// The chart subprocess had no timeout: a python3 that hangs hung `vae
// latents`, and a run killed while drawing left /tmp/cuvae_plot_* behind.
// A drawing is bounded (CUVAE_PLOT_TIMEOUT, here 2 s) and its temporary is
// unlinked as soon as Python has it.
TEST(LatentsChart, AHangingPythonIsStoppedAndNothingIsLeftInTmp) {
  REQUIRE_SHARED();
  TempDir dir;
  fs::create_directories(dir / "tmp");
  write_file(dir / "hang.sh", "#!/bin/sh\necho $$ > \"$(dirname \"$0\")/hang.pid\"\nexec sleep 20\n");
  fs::permissions(dir / "hang.sh", fs::perms::owner_all);
  ScopedEnv python("CUVAE_PYTHON", (dir / "hang.sh").c_str());
  ScopedEnv timeout("CUVAE_PLOT_TIMEOUT", "2");
  ScopedEnv tmpdir("TMPDIR", (dir / "tmp").c_str());
  const auto start = std::chrono::steady_clock::now();
  const RunResult r = run_vae(latents_args(shared().model, shared().data, dir / "out"), dir.path(), 30);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 20.0);
  expect_one_line_error(r, {"latents.png"}, {"did not finish in 2 s"});
  EXPECT_TRUE(fs::exists(dir / "out/latents.csv"));
  EXPECT_TRUE(fs::is_empty(dir / "tmp")) << "a temporary was left in TMPDIR";
  // Killed while drawing: nothing left either.
  VaeProcess killed(latents_args(shared().model, shared().data, dir / "out2"), dir.path(), "k");
  for (int i = 0; i < 10000 && !fs::exists(dir / "out2/latents.csv"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  killed.signal(SIGKILL);
  killed.wait();
  // The orphaned "python" (in its own process group) is the test's to end.
  const std::string orphan = read_file(dir / "hang.pid");
  if (!orphan.empty()) ::kill(static_cast<pid_t>(std::stol(orphan)), SIGKILL);
  EXPECT_TRUE(fs::is_empty(dir / "tmp")) << "a killed run left a temporary in TMPDIR";
}

}  // namespace
