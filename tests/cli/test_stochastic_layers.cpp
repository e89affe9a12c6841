// The model with more than one stochastic layer, end to end through the vae
// binary on a small generated data set: --latent-dim / --hidden lists, the
// model file's structure, exact resume, evaluation with active units per
// layer, the pictures (ancestral samples; reconstructions, interpolations and
// the latent map of the first layer; the manifold refused), and the layer
// lists that are refused with one line.
#include <gtest/gtest.h>

#include <cstring>

#include "cuvae/io/checkpoint.h"
#include "cuvae/io/model_file.h"
#include "vae_process.h"

namespace cuvae {
namespace {

using namespace cuvae::testing;

class StochasticLayers : public ::testing::Test {
 protected:
  void SetUp() override { write_dataset(data_); }

  // 400 images, batch 50 (8 steps an epoch), two stochastic layers of 4 and 2.
  std::vector<std::string> two_layers(const std::string& out, std::map<std::string, std::string> extra = {}) {
    extra.emplace("--batch-size", "50");
    extra.emplace("--latent-dim", "4,2");
    extra.emplace("--hidden", "16,16/8");
    extra.emplace("--epochs", "2");
    extra.emplace("--max-steps", "0");
    extra.emplace("--activation", "tanh");
    return train_args(data_, out, extra);
  }

  TempDir dir_;
  std::string data_ = dir_ / "data";
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST_F(StochasticLayers, TrainResumeExactlyEvaluateAndDraw) {
  for (const std::string objective : {"elbo", "iwae-dreg", "piwae"}) {
    SCOPED_TRACE(objective);
    std::map<std::string, std::string> flags = {{"--objective", objective}, {"--samples", "3"}};
    if (objective == "piwae") flags["--outer-samples"] = "2";
    const std::string whole = dir_ / ("whole-" + objective), parts = dir_ / ("parts-" + objective);
    const RunResult r = run_vae(two_layers(whole, flags), dir_.path());
    expect_success(r);
    EXPECT_TRUE(contains(r.out, "784-16-16-(4+4) -8-(2+2) | 2-8-(4+4) -16-16-784 (tanh)")) << r.out;
    auto cut = flags;
    cut["--max-steps"] = "5";
    expect_success(run_vae(two_layers(parts, cut), dir_.path()));
    expect_success(run_vae({"train", "--resume", parts, "--data", data_, "--max-steps", "16", "--device", "cpu"}, dir_.path()));
    const TrainState a = load_checkpoint(whole + "/checkpoint.safetensors");
    const TrainState b = load_checkpoint(parts + "/checkpoint.safetensors");
    EXPECT_EQ(a.step, 16u);
    EXPECT_EQ(a.step, b.step);
    EXPECT_TRUE(same_bits(a.params, b.params)) << "resumed parameters differ";
    EXPECT_TRUE(same_bits(a.adam_v, b.adam_v)) << "resumed Adam v differs";
  }

  // The model file keeps the structure.
  const std::string model = dir_ / "whole-elbo/model.safetensors";
  const ModelFile file = load_model(model);
  EXPECT_EQ(file.arch.latent_dims_text(), "4,2");
  EXPECT_EQ(file.arch.hidden_text(), "16,16/8");
  EXPECT_EQ(file.arch.stochastic_layers(), 2);

  const RunResult e = run_vae({"eval", "--model", model, "--data", data_, "--k", "20", "--bounds", "1,5", "--device", "cpu"},
                              dir_.path());
  expect_success(e);
  EXPECT_TRUE(contains(e.out, "in layer 1, ")) << e.out;
  EXPECT_TRUE(contains(e.out, " of 2 in layer 2")) << e.out;
  EXPECT_TRUE(contains(e.out, "\"active_units_per_layer\":[")) << e.out;

  for (const std::string command : {"sample", "reconstruct", "interpolate"}) {
    SCOPED_TRACE(command);
    const std::string out = dir_ / ("img-" + command);
    expect_success(run_vae({command, "--model", model, "--data", data_, "--out", out, "--device", "cpu"}, dir_.path()));
    EXPECT_FALSE(fs::is_empty(out));
  }
  expect_one_line_error(
      run_vae({"manifold", "--model", model, "--data", data_, "--out", dir_ / "manifold", "--device", "cpu"}, dir_.path()),
      {"manifold", "one stochastic layer"}, {"--latent-dim 4,2"});
  EXPECT_FALSE(fs::exists(dir_ / "manifold"));
}

// The first layer of 2 units: the latent map draws q(h_1|x)'s means and says so.
TEST_F(StochasticLayers, TheLatentMapIsOfTheFirstLayer) {
  const std::string out = dir_ / "run";
  expect_success(run_vae(two_layers(out, {{"--latent-dim", "2,2"}, {"--max-steps", "3"}}), dir_.path()));
  const RunResult r = run_vae({"latents", "--model", out + "/model.safetensors", "--data", data_, "--out", dir_ / "map",
                               "--device", "cpu"},
                              dir_.path());
  // latents.csv and this line come before the chart (which needs matplotlib).
  EXPECT_TRUE(fs::exists(dir_ / "map/latents.csv")) << describe(r);
  EXPECT_TRUE(contains(r.out, "the first of 2 stochastic layers")) << r.out;
}

TEST_F(StochasticLayers, InconsistentLayerListsAreRefusedNamingTheFlag) {
  const std::string out = dir_ / "out";
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"100,50", "200,200", "--hidden"},          // one width list for two layers
      {"100", "200/100", "--hidden"},             // two lists for one layer
      {"100,50", "200,200//100", "--hidden"},     // an empty list
      {"100,50", "/100", "--hidden"},
      {"100,50", "200,200/", "--hidden"},
      {"100,,50", "200/100", "--latent-dim"},
      {"100,50,", "200/100", "--latent-dim"},
      {"0,50", "200/100", "--latent-dim"},
      {"100,70000", "200/100", "--latent-dim"},
      {"100,0x10", "200/100", "--latent-dim"},
      {"1,1,1,1,1,1,1,1,1", "1/1/1/1/1/1/1/1/1", "--latent-dim"},
      {"", "200", "--latent-dim"},
  };
  for (const auto& [latent, hidden, flag] : cases) {
    SCOPED_TRACE("--latent-dim '" + latent + "' --hidden '" + hidden + "'");
    expect_one_line_error(run_vae(train_args(data_, out, {{"--latent-dim", latent}, {"--hidden", hidden}}), dir_.path()),
                          {flag}, {});
    EXPECT_FALSE(fs::exists(out));
  }
}

// A wrong list inside --hidden: the whole value is quoted, and which list.
TEST_F(StochasticLayers, AWrongLayerListIsQuotedWholeAndNumbered) {
  const std::string out = dir_ / "out";
  expect_one_line_error(
      run_vae(train_args(data_, out, {{"--latent-dim", "100,50,20"}, {"--hidden", "200,200/100,100//"}}), dir_.path()),
      {"--hidden", "'200,200/100,100//'", "list 3 is empty"}, {});
  expect_one_line_error(
      run_vae(train_args(data_, out, {{"--latent-dim", "100,50"}, {"--hidden", "200/1e2"}}), dir_.path()),
      {"--hidden", "'200/1e2'", "list 2, '1e2'"}, {});
  expect_one_line_error(run_vae(train_args(data_, out, {{"--latent-dim", "100,-50"}}), dir_.path()),
                        {"--latent-dim", "like 100,50", "'100,-50'"}, {});
  EXPECT_FALSE(fs::exists(out));
}

// vae bench times the layered model too (--latent-dim, --hidden as train's),
// names it in its banner, and refuses a bad list with train's line.
TEST_F(StochasticLayers, BenchTimesTheLayeredModel) {
  const std::vector<std::string> bench = {"bench", "--device", "cpu", "--batch-sizes", "4", "--warmup", "0",
                                          "--steps", "1", "--repeats", "1", "--data", data_,
                                          "--latent-dim", "4,2", "--activation", "tanh"};
  std::vector<std::string> good = bench, bad = bench;
  good.insert(good.end(), {"--hidden", "16,16/8"});
  const RunResult r = run_vae(good, dir_.path());
  expect_success(r);
  EXPECT_NE(r.out.find("model 784-16-16-(4+4) -8-(2+2) | 2-8-(4+4) -16-16-784"), std::string::npos) << r.out;
  bad.insert(bad.end(), {"--hidden", "16,16"});
  expect_one_line_error(run_vae(bad, dir_.path()), {"--hidden 16,16 has 1 layer list"}, {});
}

TEST_F(StochasticLayers, ResumeRefusesOtherLayers) {
  const std::string out = dir_ / "run";
  expect_success(run_vae(two_layers(out, {{"--max-steps", "2"}}), dir_.path()));
  expect_one_line_error(
      run_vae({"train", "--resume", out, "--data", data_, "--latent-dim", "4", "--device", "cpu"}, dir_.path()),
      {"--latent-dim", "4,2"}, {});
  expect_one_line_error(
      run_vae({"train", "--resume", out, "--data", data_, "--hidden", "16,16/9", "--device", "cpu"}, dir_.path()),
      {"--hidden", "16,16/8"}, {});
  // The run's own lists are accepted.
  expect_success(run_vae({"train", "--resume", out, "--data", data_, "--latent-dim", "4,2", "--hidden", "16,16/8",
                          "--max-steps", "3", "--device", "cpu"},
                         dir_.path()));
}

}  // namespace
}  // namespace cuvae
