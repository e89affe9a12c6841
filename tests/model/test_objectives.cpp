// The IWAE paper's training and evaluation, end to end: the schedule, exact
// resume of every objective, models that remember their activation, the
// evaluation against a direct computation, and their bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <algorithm>
#include <memory>
#include <sstream>
#include <tuple>
#include <vector>

#include "cuvae/backends/cpu/cpu_backend.h"
#include "cuvae/error.h"
#include "cuvae/io/checkpoint.h"
#include "cuvae/io/model_file.h"
#include "cuvae/model/evaluate.h"
#include "cuvae/model/schedule.h"
#include "cuvae/model/vae_model.h"
#include "vae_process.h"

namespace cuvae {
namespace {

using namespace cuvae::testing;

// A batch times its samples beyond an int is refused, not wrapped (a
// wrapped product would size every buffer wrong), before any large buffer
// is made (2 images of 2^30 samples).
TEST(VaeModelLimits, DecoderRowsBeyondAnIntAreRefused) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const Architecture arch;
  try {
    VaeModel model(*cpu, arch, 2, 1 << 30);
    FAIL() << "a model of 2^31 decoder rows was made";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2147483648 decoder rows, more than 2147483647"), std::string::npos)
        << e.what();
  }
}

TEST(Schedule, IwaeStagesAreThreeToTheIEpochsAtTenToTheMinusISevenths) {
  int epoch = 0;
  for (int stage = 0, length = 1; stage < 8; ++stage, length *= 3) {
    for (int e = 0; e < length; ++e, ++epoch) {
      ASSERT_EQ(schedule_stage(Schedule::kIwae, epoch), stage) << "epoch " << epoch;
      EXPECT_DOUBLE_EQ(scheduled_learning_rate(Schedule::kIwae, 1e-3, epoch), 1e-3 * std::pow(10.0, -stage / 7.0));
    }
  }
  EXPECT_EQ(epoch, kIwaeScheduleEpochs);
  EXPECT_EQ(schedule_stage(Schedule::kIwae, 5000), 7) << "the last stage goes on";
  EXPECT_NEAR(scheduled_learning_rate(Schedule::kIwae, 1e-3, 3279), 1e-4, 1e-12);
  EXPECT_EQ(scheduled_learning_rate(Schedule::kConstant, 1e-3, 3279), 1e-3);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class Objectives : public ::testing::Test {
 protected:
  void SetUp() override { write_dataset(data_); }
  // 400 images, batch 50: 8 steps an epoch; 5 epochs span stages 1-3 of the
  // iwae schedule.
  std::vector<std::string> run(const std::string& out, std::map<std::string, std::string> extra) {
    extra.emplace("--batch-size", "50");
    extra.emplace("--hidden", "16");
    extra.emplace("--latent-dim", "3");
    extra.emplace("--epochs", "5");
    return train_args(data_, out, extra);
  }
  TempDir dir_;
  std::string data_ = dir_ / "data";
};

// Stopped mid-stage (step 13 is in epoch 2, stage 2 of the schedule) and
// resumed to step 36 (epoch 5, stage 3): the same bits as in one go.
TEST_F(Objectives, EveryObjectiveResumesExactlyInTheMiddleOfAStage) {
  for (const std::string objective : {"elbo", "iwae", "iwae-dreg", "miwae", "piwae", "ciwae"}) {
    SCOPED_TRACE(objective);
    std::map<std::string, std::string> flags = {
        {"--objective", objective}, {"--samples", "3"},     {"--activation", "tanh"},
        {"--init", "glorot"},       {"--schedule", "iwae"}, {"--adam-eps", "1e-4"}};
    if (objective == "miwae" || objective == "piwae") flags["--outer-samples"] = "2";
    if (objective == "ciwae") flags["--ciwae-beta"] = "0.25";
    auto with = [&](const std::string& steps) {
      auto f = flags;
      f["--max-steps"] = steps;
      return f;
    };
    const std::string whole = dir_ / (objective + "-whole"), parts = dir_ / (objective + "-parts");
    expect_success(run_vae(run(whole, with("36")), dir_.path()));
    expect_success(run_vae(run(parts, with("13")), dir_.path()));
    const RunResult resumed =
        run_vae({"train", "--resume", parts, "--data", data_, "--max-steps", "36", "--device", "cpu"}, dir_.path());
    expect_success(resumed);
    EXPECT_TRUE(contains(resumed.out, "stage 3/8")) << resumed.out;
    const TrainState a = load_checkpoint(whole + "/checkpoint.safetensors");
    const TrainState b = load_checkpoint(parts + "/checkpoint.safetensors");
    EXPECT_EQ(a.step, 36u);
    EXPECT_EQ(b.step, 36u);
    EXPECT_TRUE(same_bits(a.params, b.params)) << "parameters differ";
    EXPECT_TRUE(same_bits(a.adam_v, b.adam_v)) << "Adam v differs";
    EXPECT_EQ(objective_name(b.config.objective.objective), objective);
    EXPECT_EQ(b.config.objective.samples, 3);
    EXPECT_EQ(b.config.objective.outer_samples, objective == "miwae" || objective == "piwae" ? 2 : 1);
    if (objective == "ciwae") {
      EXPECT_EQ(b.config.objective.ciwae_beta, 0.25);
    }
    // The epoch line and metrics name the bound.
    const std::string bound = objective == "miwae"   ? "miwae-2x3"
                              : objective == "piwae" ? "piwae-2x3"
                              : objective == "ciwae" ? "ciwae-0.25-3"
                              : objective == "elbo"  ? "elbo-3"
                                                     : "iwae-3";
    EXPECT_TRUE(contains(read_file(whole + "/metrics.csv"), "," + bound + ",")) << read_file(whole + "/metrics.csv");
    EXPECT_EQ(b.config.arch.activation, Activation::kTanh);
    EXPECT_EQ(b.config.init, InitScheme::kGlorot);
    EXPECT_EQ(b.config.schedule, Schedule::kIwae);
    // The same bound in every epoch's row (the seconds differ).
    auto bounds = [](const std::string& csv) {
      std::vector<std::string> column;
      std::istringstream lines(csv);
      for (std::string line; std::getline(lines, line);) {
        size_t end = 0;
        for (int commas = 0; commas < 4 && end != std::string::npos; ++commas) end = line.find(',', end + 1);
        column.push_back(line.substr(0, end));
      }
      return column;
    };
    EXPECT_EQ(bounds(read_file(whole + "/metrics.csv")), bounds(read_file(parts + "/metrics.csv")));
  }
}

// A tanh model evaluated as ReLU would be silently wrong: the file says tanh,
// eval rebuilds tanh, and the same parameters as ReLU give another NLL.
TEST_F(Objectives, ModelFilesRebuildTheirActivation) {
  const std::string out = dir_ / "tanh";
  expect_success(run_vae(run(out, {{"--activation", "tanh"}, {"--objective", "iwae"}, {"--samples", "2"},
                                   {"--max-steps", "8"}, {"--eval-every", "1"}}),
                         dir_.path()));
  const ModelFile file = load_model(out + "/model.safetensors");
  EXPECT_EQ(file.arch.activation, Activation::kTanh);
  EXPECT_EQ(file.metadata.at("objective"), "iwae");
  EXPECT_EQ(file.metadata.at("samples"), "2");
  EXPECT_EQ(file.metadata.at("schedule"), "constant");
  // The test bound of --eval-every is in the last column.
  const std::string metrics = read_file(out + "/metrics.csv");
  const std::string row = metrics.substr(metrics.find('\n') + 1);
  EXPECT_NE(row.substr(row.rfind(',') + 1), "\n") << metrics;

  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const IdxImages test = load_mnist_split(data_, false).images;
  EvalRequest request;
  request.k = 10;
  auto nll_as = [&](Activation act, float scale) {
    Architecture arch = file.arch;
    arch.activation = act;
    VaeModel model(*cpu, arch, eval_images_per_chunk(request.k), request.k);
    std::vector<float> params = file.params;
    for (float& p : params) p *= scale;
    model.set_parameters(params);
    return evaluate(model, test, request).nll;
  };
  const RunResult r = run_vae({"eval", "--model", out + "/model.safetensors", "--data", data_, "--k", "10",
                               "--device", "cpu"},
                              dir_.path());
  expect_success(r);
  char expected[64];
  std::snprintf(expected, sizeof expected, "NLL %.3f nats", nll_as(Activation::kTanh, 1.0f));
  EXPECT_TRUE(contains(r.out, expected)) << r.out;
  // Eight steps from 0.01 N(0,1) leave the hidden layers nearly linear, where
  // the two activations barely differ; scaled parameters tell them apart.
  EXPECT_GT(std::fabs(nll_as(Activation::kTanh, 30.0f) - nll_as(Activation::kRelu, 30.0f)), 1.0);
}

// 28 x 28 test images whose pixels follow (i * stride) % 256, and a
// 784-16-L model's parameters scale * N(0,1) from init seed `seed`: the
// evaluation tests' fixtures.
IdxImages patterned_images(int count, size_t stride) {
  IdxImages images;
  images.count = count;
  images.rows = images.cols = 28;
  images.pixels.resize(static_cast<size_t>(count) * 784);
  for (size_t i = 0; i < images.pixels.size(); ++i) images.pixels[i] = static_cast<uint8_t>((i * stride) % 256);
  return images;
}

Architecture tiny_eval_arch(int latent) {
  Architecture arch;
  arch.input_dim = 784;
  arch.hidden = {16};
  arch.latent_dim = latent;
  return arch;
}

std::vector<float> normal_params(const Architecture& arch, uint64_t seed, float scale) {
  std::vector<float> params(ParameterLayout(arch).size());
  for (size_t i = 0; i < params.size(); ++i) params[i] = scale * random_normal(RandomKey{seed, RandomStream::kInit, 0}, i);
  return params;
}

// evaluate() against a direct computation: each sample through the model on
// its own, log w = log p(x|z) + log p(z) - log q(z|x), the log-mean-exp in
// double; the same whatever the chunking; L_K = -NLL; L_1 the mean log w.
TEST(Evaluate, MatchesADirectEvaluationWhateverTheChunking) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  Architecture arch = tiny_eval_arch(3);
  arch.activation = Activation::kTanh;
  const IdxImages images = patterned_images(6, 37);
  const int k = 7;
  const std::vector<float> params = normal_params(arch, 5, 0.2f);

  EvalRequest request;
  request.k = k;
  request.seed = 3;
  request.bounds = {1, k};
  request.per_image = true;
  std::vector<EvalResult> results;
  for (int chunk : {1, 4, 6}) {
    VaeModel model(*cpu, arch, chunk, k);
    model.set_parameters(params);
    results.push_back(evaluate(model, images, request));
  }
  // Direct: one sample at a time, with that sample's eps from the stream.
  VaeModel one(*cpu, arch, 1, 1);
  one.set_parameters(params);
  DeviceArray<float> x(*cpu, 784), eps(*cpu, 3);
  double nll = 0.0, mean_log_w = 0.0;
  for (int i = 0; i < images.count; ++i) {
    binarize_fixed(*cpu, images, i, 1, request.seed, x.get());
    std::vector<double> log_w;
    for (int s = 0; s < k; ++s) {
      cpu->fill_normal(eps.get(), 3, (static_cast<uint64_t>(i) * k + s) * 3, RandomKey{3, RandomStream::kEvalEps, 0});
      one.forward_backward(x.get(), eps.get(), 1, false);
      log_w.push_back(static_cast<double>(*one.row_logprob()) + *one.row_log_ratio());
      mean_log_w += log_w.back() / k;
    }
    const double max = *std::max_element(log_w.begin(), log_w.end());
    double sum = 0.0;
    for (double v : log_w) sum += std::exp(v - max);
    nll -= max + std::log(sum / k);
    EXPECT_NEAR(results[0].log_likelihood[i], max + std::log(sum / k), 1e-4) << "image " << i;
  }
  for (const EvalResult& r : results) {
    EXPECT_NEAR(r.nll, nll / images.count, 1e-4);
    // Not bit for bit: the GEMMs' blocking, so their rounding, depends on the rows.
    EXPECT_NEAR(r.nll, results[0].nll, 1e-5 * std::fabs(r.nll)) << "the chunking changed the result";
    ASSERT_EQ(r.bounds.size(), 2u);
    EXPECT_NEAR(r.bounds[0].second, mean_log_w / images.count, 1e-4) << "L_1";
    EXPECT_NEAR(r.bounds[1].second, -r.nll, 1e-4) << "L_K";
  }
}

// A unit is active when its posterior mean varies over the images (variance
// above 0.01): none when the encoder ignores x, all when it follows x.
TEST(Evaluate, CountsActiveUnits) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const Architecture arch = tiny_eval_arch(4);
  const IdxImages images = patterned_images(20, 131);
  const ParameterLayout layout(arch);
  const std::vector<float> params = normal_params(arch, 9, 0.3f);
  EvalRequest request;
  request.k = 2;
  auto active = [&](const std::vector<float>& p) {
    VaeModel model(*cpu, arch, 20, 2);
    model.set_parameters(p);
    return evaluate(model, images, request).active_units;
  };
  EXPECT_EQ(active(params), 4);
  const DenseLayer& top = layout.encoder().back();  // [mean | log_std] outputs
  std::vector<float> blind = params;
  for (int in = 0; in < top.in; ++in) {
    for (int u = 0; u < arch.latent_dim; ++u) blind[top.weight_offset + static_cast<size_t>(in) * top.out + u] = 0.0f;
  }
  EXPECT_EQ(active(blind), 0);
}

// ---------------------------------------------------------------------------
// Bad input: one line naming the flag, a non-zero exit.

TEST_F(Objectives, BadObjectiveFlagsAreRefused) {
  const std::string out = dir_ / "bad";
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--objective", "vae"}, {"--activation", "sigmoid"}, {"--init", "zeros"},
           {"--schedule", "cosine"}, {"--samples", "0"}, {"--samples", "many"}, {"--adam-eps", "0"},
           {"--outer-samples", "0"}, {"--ciwae-beta", "1.5"}, {"--ciwae-beta", "-0.1"},
           {"--ciwae-beta", "nan"}}) {
    SCOPED_TRACE(flag + " " + value);
    const RunResult r = run_vae(run(out, {{flag, value}}), dir_.path());
    expect_one_line_error(r, {flag}, {"must", "not", "one of"});
    EXPECT_FALSE(fs::exists(out));
  }
  // Flags an objective has no use for: refused, naming the flag.
  for (const auto& [objective, flag, value] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"iwae", "--outer-samples", "4"}, {"ciwae", "--outer-samples", "2"},
           {"elbo", "--ciwae-beta", "0.5"}, {"miwae", "--ciwae-beta", "0.1"}}) {
    SCOPED_TRACE(objective + " " + flag);
    const RunResult bad = run_vae(run(out, {{"--objective", objective}, {flag, value}}), dir_.path());
    expect_one_line_error(bad, {flag}, {"only"});
    EXPECT_FALSE(fs::exists(out));
  }
  // M K samples per image above the most.
  const RunResult many = run_vae(
      run(out, {{"--objective", "miwae"}, {"--outer-samples", "1000"}, {"--samples", "1000"}}), dir_.path());
  expect_one_line_error(many, {"--outer-samples"}, {"more than"});
  EXPECT_FALSE(fs::exists(out));
  // B K decoder rows that cannot fit: says how much they need.
  const RunResult r = run_vae(run(out, {{"--samples", "100000"}, {"--batch-size", "400"}}), dir_.path());
  expect_one_line_error(r, {"--samples", "--batch-size"}, {"GiB"});
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(Objectives, ResumeRefusesAnotherObjective) {
  const std::string out = dir_ / "run";
  expect_success(run_vae(run(out, {{"--objective", "iwae"}, {"--samples", "2"}, {"--max-steps", "3"}}), dir_.path()));
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--objective", "elbo"}, {"--samples", "5"}, {"--activation", "tanh"},
           {"--init", "glorot"}, {"--schedule", "iwae"}, {"--adam-eps", "1e-4"}}) {
    SCOPED_TRACE(flag);
    const RunResult r = run_vae({"train", "--resume", out, "--data", data_, "--device", "cpu", flag, value}, dir_.path());
    expect_one_line_error(r, {flag}, {"disagrees"});
  }
}

TEST_F(Objectives, ResumeRefusesChangedGroupsAndBeta) {
  const std::string miwae = dir_ / "miwae", ciwae = dir_ / "ciwae";
  expect_success(run_vae(run(miwae, {{"--objective", "miwae"}, {"--outer-samples", "2"}, {"--samples", "2"},
                                     {"--max-steps", "3"}}),
                         dir_.path()));
  expect_success(run_vae(run(ciwae, {{"--objective", "ciwae"}, {"--ciwae-beta", "0.1"}, {"--samples", "2"},
                                     {"--max-steps", "3"}}),
                         dir_.path()));
  const ModelFile file = load_model(ciwae + "/model.safetensors");
  EXPECT_EQ(file.metadata.at("ciwae_beta"), "0.1");
  EXPECT_EQ(file.metadata.at("train_bound"), "ciwae-0.1-2");
  EXPECT_EQ(load_model(miwae + "/model.safetensors").metadata.at("outer_samples"), "2");
  for (const auto& [out, flag, value] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {miwae, "--outer-samples", "4"}, {miwae, "--ciwae-beta", "0.1"}, {ciwae, "--ciwae-beta", "0.2"},
           {ciwae, "--outer-samples", "2"}, {miwae, "--objective", "piwae"}}) {
    SCOPED_TRACE(flag + " " + value);
    const RunResult r = run_vae({"train", "--resume", out, "--data", data_, "--device", "cpu", flag, value}, dir_.path());
    expect_one_line_error(r, {flag}, {"disagrees"});
  }
  // The same values are accepted; eval reads the models (its k is its own).
  expect_success(run_vae({"train", "--resume", ciwae, "--data", data_, "--device", "cpu", "--ciwae-beta", "0.1",
                          "--max-steps", "4"},
                         dir_.path()));
  const RunResult eval = run_vae({"eval", "--model", miwae + "/model.safetensors", "--data", data_, "--k", "10",
                                  "--device", "cpu"},
                                 dir_.path());
  expect_success(eval);
  EXPECT_TRUE(contains(eval.out, "NLL")) << eval.out;
}

TEST_F(Objectives, BadEvalFlagsAreRefusedBeforeEvaluating) {
  const std::string out = dir_ / "run";
  expect_success(run_vae(run(out, {{"--max-steps", "2"}}), dir_.path()));
  const std::string model = out + "/model.safetensors";
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--bounds", "1,x"}, {"--bounds", "0"}, {"--bounds", "5,500"}, {"--bounds", "1,"},
           {"--per-image", dir_ / "missing/dir/ll.csv"}, {"--per-image", "/dev/full"}}) {
    SCOPED_TRACE(flag + " " + value);
    const RunResult r =
        run_vae({"eval", "--model", model, "--data", data_, "--k", "100", "--device", "cpu", flag, value}, dir_.path());
    expect_one_line_error(r, {flag}, {"must", "more than", "cannot write", "positive"});
    EXPECT_FALSE(contains(r.out, "NLL")) << "evaluated first";
  }
}

}  // namespace
}  // namespace cuvae
