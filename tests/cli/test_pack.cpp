// Packs (`vae train --seeds 0-3 --lr 1e-3,3e-3`): several models side by
// side in one process, each a complete run with the bits it has alone,
// resumed exactly, checkpointed on Ctrl-C, failing alone; end to end through
// the vae binary on a small generated data set.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "cuvae/backends/backend.h"
#include "cuvae/cli/train_command.h"
#include "cuvae/cli/train_pack.h"
#include "cuvae/error.h"
#include "cuvae/io/checkpoint.h"
#include "vae_process.h"

namespace cuvae {
namespace {

using namespace cuvae::testing;

// 400 training images, batch 50: 8 steps an epoch; 3 epochs.
std::vector<std::string> pack_args(const std::string& data, const std::string& out,
                                   std::map<std::string, std::string> extra = {}) {
  extra.emplace("--batch-size", "50");
  extra.emplace("--hidden", "16");
  extra.emplace("--latent-dim", "3");
  extra.emplace("--epochs", "3");
  extra.emplace("--max-steps", "0");
  std::vector<std::string> args = train_args(data, out, extra);
  args.push_back("--shuffle");
  return args;
}

void expect_same_state(const TrainState& a, const TrainState& b, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(a.step, b.step);
  auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(a.params, b.params)) << "parameters differ";
  EXPECT_TRUE(same(a.adam_m, b.adam_m)) << "Adam m differs";
  EXPECT_TRUE(same(a.adam_v, b.adam_v)) << "Adam v differs";
}

class Pack : public ::testing::Test {
 protected:
  void SetUp() override { write_dataset(data_); }
  TrainState checkpoint(const std::string& run) { return load_checkpoint(run + "/checkpoint.safetensors"); }
  // The bound column of metrics.csv (seconds and images/s differ run to run).
  std::string bounds(const std::string& run) {
    std::istringstream lines(read_file(fs::path(run) / "metrics.csv"));
    std::string line, out;
    while (std::getline(lines, line)) out += line.substr(0, line.find(',', line.find(',', line.find(',') + 1) + 1)) + "\n";
    return out;
  }
  TempDir dir_;
  const std::string data_ = dir_ / "data";
};

// The same tests with the members side by side on threads and in lock step
// (lockstep.h; on the CPU their steps interleaved call by call).
class PackModes : public Pack, public ::testing::WithParamInterface<std::string> {
 protected:
  std::vector<std::string> args(const std::string& out, std::map<std::string, std::string> extra = {}) {
    extra.emplace("--pack-mode", GetParam());
    return pack_args(data_, out, extra);
  }
  std::vector<std::string> resume_args(std::vector<std::string> a) {
    a.push_back("--pack-mode");
    a.push_back(GetParam());
    return a;
  }
};

INSTANTIATE_TEST_SUITE_P(Modes, PackModes, ::testing::Values("threads", "lockstep"));

TEST(PackFlags, MembersAreTheProductNamedByWhatVaries) {
  TrainOptions o;
  o.given_seeds = true;
  o.seeds = "0-1,5";
  o.lr_list = "0.001,3e-4";
  std::vector<PackMember> m = pack_members(o);
  ASSERT_EQ(m.size(), 6u);
  EXPECT_EQ(m[0].name, "lr-0.001_seed-0");
  EXPECT_EQ(m[2].name, "lr-0.001_seed-5");
  EXPECT_EQ(m[5].name, "lr-0.0003_seed-5");
  EXPECT_EQ(m[5].seed, 5u);
  EXPECT_EQ(m[5].lr, 3e-4);
  o.lr_list = "0.001";
  o.adam_eps_list = "1e-8,1e-4";
  o.seeds = "3";
  m = pack_members(o);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1].name, "adam-eps-0.0001_seed-3");
  o.given_seeds = false;
  o.adam_eps_list = "1e-08";
  EXPECT_EQ(pack_members(o).size(), 1u);
  EXPECT_FALSE(is_pack(o));
  EXPECT_EQ(parse_seed_list("0-3,8"), (std::vector<uint64_t>{0, 1, 2, 3, 8}));
  EXPECT_EQ(parse_seed_list("18446744073709551615"), (std::vector<uint64_t>{18446744073709551615ull}));
  for (const char* bad : {"", "3-1", "1,1", "0-2,2", "a", "-1", "0-", "1,,2", "0-2000", "18446744073709551616"}) {
    EXPECT_THROW(parse_seed_list(bad), Error) << bad;
  }
  for (const char* bad : {"", "0", "-1e-3", "1e-3,1e-3", "abc", "1e-3,", "nan", "inf"}) {
    EXPECT_THROW(parse_rate_list(bad, "--lr"), Error) << bad;
  }
}

// Model i of a pack has the bits of the same model trained alone, after
// every epoch's checkpoint; a pack stopped halfway (--max-steps) and resumed
// ends with the bits of the pack that never stopped.
TEST_P(PackModes, EachModelHasTheBitsItHasAloneAndResumesExactly) {
  const std::string pack = dir_ / "pack";
  RunResult r = run_vae(args(pack, {{"--seeds", "0-1"}, {"--lr", "1e-3,3e-3"}}), dir_.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "pack: 4 models in " + pack)) << r.out;
  EXPECT_EQ(contains(r.out, "in lock step"), GetParam() == "lockstep") << r.out;
  EXPECT_TRUE(contains(r.out, "pack: 4 of 4 models trained")) << r.out;
  const std::vector<std::string> names = read_pack_members(pack);
  ASSERT_EQ(names, (std::vector<std::string>{"lr-0.001_seed-0", "lr-0.001_seed-1", "lr-0.003_seed-0",
                                             "lr-0.003_seed-1"}));
  const std::map<std::string, std::pair<std::string, std::string>> flags = {
      {"lr-0.001_seed-0", {"0.001", "0"}}, {"lr-0.003_seed-1", {"0.003", "1"}}};
  for (const auto& [name, lr_seed] : flags) {
    const std::string alone = dir_ / ("alone-" + name);
    expect_success(run_vae(pack_args(data_, alone, {{"--lr", lr_seed.first}, {"--seed", lr_seed.second}}),
                           dir_.path()));
    expect_same_state(checkpoint(alone), checkpoint(pack + "/" + name), name);
    EXPECT_EQ(bounds(alone), bounds(pack + "/" + name)) << name;
    EXPECT_TRUE(fs::exists(pack + "/" + name + "/task_3_3_4.png")) << name;
  }
  // The two seeds differ (each model has its own randomness).
  EXPECT_NE(checkpoint(pack + "/lr-0.001_seed-0").params, checkpoint(pack + "/lr-0.001_seed-1").params);

  const std::string halves = dir_ / "halves";
  expect_success(run_vae(args(halves, {{"--seeds", "0-1"}, {"--lr", "1e-3,3e-3"}, {"--max-steps", "12"}}),
                         dir_.path()));
  EXPECT_EQ(checkpoint(halves + "/lr-0.003_seed-0").step, 12u);
  r = run_vae(resume_args({"train", "--resume", halves, "--data", data_, "--max-steps", "0", "--device", "cpu"}),
              dir_.path());
  expect_success(r);
  for (const std::string& name : names) {
    expect_same_state(checkpoint(pack + "/" + name), checkpoint(halves + "/" + name), "resumed " + name);
  }
  // A member's folder is a run: resumed alone, it continues as any run.
  r = run_vae({"train", "--resume", halves + "/lr-0.001_seed-1", "--data", data_, "--epochs", "4", "--device", "cpu"},
              dir_.path());
  expect_success(r);
  EXPECT_EQ(checkpoint(halves + "/lr-0.001_seed-1").step, 32u);
}

// Ctrl-C checkpoints every model of the pack; the pack resumes to the bits
// of one never interrupted.
TEST_P(PackModes, SigintCheckpointsEveryModelAndTheResumeIsExact) {
  const std::string pack = dir_ / "pack";
  VaeProcess p(args(pack, {{"--seeds", "0-2"}, {"--epochs", "400"}}), dir_.path());
  ASSERT_TRUE(wait_for_file(pack + "/seed-2/checkpoint.safetensors"));
  p.signal(SIGINT);
  const RunResult stopped = p.wait();
  EXPECT_EQ(stopped.exit_code, 128 + SIGINT) << describe(stopped);
  EXPECT_TRUE(contains(stopped.err, "resume with: vae train --resume " + pack)) << stopped.err;
  // Each model was checkpointed where it stopped: on the signal (its line
  // says so) or, for one that had just ended its epoch, at that end.
  EXPECT_TRUE(contains(stopped.err, ": interrupted by SIGINT")) << stopped.err;
  uint64_t most = 0;
  for (const char* name : {"seed-0", "seed-1", "seed-2"}) {
    most = std::max<uint64_t>(most, checkpoint(pack + "/" + name).step);
  }
  ASSERT_LT(most, 400u * 8u) << "the pack ended before the signal";
  const std::string steps = std::to_string(most + 8);
  expect_success(run_vae(resume_args({"train", "--resume", pack, "--data", data_, "--max-steps", steps, "--device", "cpu"}),
                         dir_.path()));
  const std::string whole = dir_ / "whole";
  expect_success(run_vae(args(whole, {{"--seeds", "0-2"}, {"--epochs", "400"}, {"--max-steps", steps}}),
                         dir_.path()));
  for (const char* name : {"seed-0", "seed-1", "seed-2"}) {
    expect_same_state(checkpoint(whole + "/" + name), checkpoint(pack + "/" + name), name);
  }
}

// On the GPU, side by side (--pack-mode threads) each member runs on its own
// stream from its own host thread, each step a CUDA Graph recorded there:
// the same kernels as alone, so the same bits as alone. In lock step (the
// default there) each GEMM of the members' step is one cublasSgemmBatched,
// which may sum in another order than cublasSgemm alone: the fused kernels
// are the same per member (their batched form runs the same body), so a
// member differs from its run alone only by the GEMMs' rounding, ~1e-7
// relative a product. After 24 Adam steps (each moves a parameter by at
// most about lr = 1e-3) the parameters agree within 1e-3, the epochs' bounds
// within 1e-3 relative. A lock-step pack resumed ends with the bits of one
// never stopped (the same batched calls either way).
TEST_F(Pack, OnTheGpuEachModelHasTheBitsItHasAlone) {
  std::string why_not;
  if (!cuda_available(&why_not)) GTEST_SKIP() << "CUDA test skipped: " << why_not;
  const std::string alone = dir_ / "alone";
  expect_success(run_vae(pack_args(data_, alone, {{"--seed", "2"}, {"--device", "cuda"}}), dir_.path()));
  const std::string threads = dir_ / "threads";
  expect_success(run_vae(pack_args(data_, threads, {{"--seeds", "0-3"}, {"--device", "cuda"}, {"--pack-mode", "threads"}}),
                         dir_.path()));
  expect_same_state(checkpoint(alone), checkpoint(threads + "/seed-2"), "seed-2 on cuda, threads");

  const std::string pack = dir_ / "pack";
  const RunResult r = run_vae(pack_args(data_, pack, {{"--seeds", "0-3"}, {"--device", "cuda"}}), dir_.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "in lock step, each call of every model's step run together")) << r.out;
  const TrainState a = checkpoint(alone), b = checkpoint(pack + "/seed-2");
  ASSERT_EQ(a.params.size(), b.params.size());
  EXPECT_EQ(a.step, b.step);
  float most = 0.0f;
  for (size_t i = 0; i < a.params.size(); ++i) most = std::max(most, std::fabs(a.params[i] - b.params[i]));
  EXPECT_LE(most, 1e-3f) << "seed-2 in lock step against alone";
  EXPECT_NE(checkpoint(pack + "/seed-1").params, b.params);

  const std::string halves = dir_ / "halves";
  expect_success(
      run_vae(pack_args(data_, halves, {{"--seeds", "0-3"}, {"--device", "cuda"}, {"--max-steps", "11"}}), dir_.path()));
  expect_success(run_vae({"train", "--resume", halves, "--data", data_, "--max-steps", "0", "--device", "cuda"},
                         dir_.path()));
  for (const char* name : {"seed-0", "seed-1", "seed-2", "seed-3"}) {
    expect_same_state(checkpoint(pack + "/" + name), checkpoint(halves + "/" + name), name);
  }
}

// A model that diverges stops alone, its error on stderr and in its folder;
// the others finish.
TEST_P(PackModes, ADivergedModelStopsAloneWithItsReason) {
  const std::string pack = dir_ / "pack";
  const RunResult r = run_vae(args(pack, {{"--lr", "1e-3,1e30"}}), dir_.path());
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_TRUE(contains(r.err, "vae: error: lr-1e+30: training diverged")) << r.err;
  EXPECT_TRUE(contains(read_file(fs::path(pack) / "lr-1e+30/error.txt"), "training diverged")) << describe(r);
  EXPECT_TRUE(fs::exists(pack + "/lr-0.001/task_3_3_4.png")) << describe(r);
  EXPECT_EQ(checkpoint(pack + "/lr-0.001").step, 24u);
  EXPECT_TRUE(contains(r.out, "pack: 1 of 2 models trained in " + pack + ", 1 failed")) << r.out;
}

// vae eval of a pack: each model's line and JSON, then per configuration
// (the lr here) the mean and standard error over its seeds; each model's
// numbers are the ones it gets evaluated alone.
TEST_F(Pack, EvalOfAPackReportsEachModelAndTheMeanOverSeeds) {
  const std::string pack = dir_ / "pack";
  expect_success(run_vae(pack_args(data_, pack, {{"--seeds", "0-2"}, {"--lr", "1e-3,3e-3"}, {"--max-steps", "4"}}),
                         dir_.path()));
  const RunResult r = run_vae({"eval", "--model", pack, "--data", data_, "--k", "5", "--device", "cpu"}, dir_.path());
  expect_success(r);
  std::map<std::string, double> nll;
  std::istringstream lines(r.out);
  std::string line, summary;
  while (std::getline(lines, line)) {
    if (line.rfind("{\"configurations\"", 0) == 0) summary = line;
    const size_t at = line.find("\"nll\":");
    const size_t model = line.find("\"model\":\"");
    if (line.rfind("{", 0) == 0 && at != std::string::npos && model != std::string::npos) {
      const std::string path = line.substr(model + 9, line.find('"', model + 9) - model - 9);
      nll[path] = std::stod(line.substr(at + 6));
    }
  }
  ASSERT_EQ(nll.size(), 6u) << r.out;
  EXPECT_TRUE(contains(r.out, "lr-0.003_seed-2: On ")) << r.out;
  ASSERT_FALSE(summary.empty()) << r.out;
  EXPECT_TRUE(contains(r.out, "3 models (lr-0.001_seed-0, lr-0.001_seed-1, lr-0.001_seed-2)")) << r.out;
  EXPECT_TRUE(contains(summary, "lr 0.001,")) << summary;
  EXPECT_TRUE(contains(summary, "lr 0.003,")) << summary;
  double mean = 0;
  for (int seed = 0; seed < 3; ++seed) mean += nll[pack + "/lr-0.003_seed-" + std::to_string(seed) + "/model.safetensors"];
  mean /= 3;
  const size_t second = summary.find("lr 0.003,");
  const size_t at = summary.find("\"nll_mean\":", second);
  ASSERT_NE(at, std::string::npos) << summary;
  EXPECT_NEAR(std::stod(summary.substr(at + 11)), mean, 1e-9 * std::abs(mean)) << summary;
  // One of them alone: the same numbers.
  const std::string one = pack + "/lr-0.003_seed-1/model.safetensors";
  const RunResult alone = run_vae({"eval", "--model", one, "--data", data_, "--k", "5", "--device", "cpu"}, dir_.path());
  expect_success(alone);
  const size_t a = alone.out.find("\"nll\":");
  ASSERT_NE(a, std::string::npos) << alone.out;
  EXPECT_EQ(std::stod(alone.out.substr(a + 6)), nll[one]);
  EXPECT_FALSE(contains(alone.out, "configurations")) << "one model: no summary";
  // A run's folder that is not a pack is named as such.
  expect_one_line_error(run_vae({"eval", "--model", pack + "/lr-0.003_seed-1", "--data", data_}, dir_.path()),
                        {"--model", "pack.json"}, {"not a pack"});
  expect_one_line_error(
      run_vae({"eval", "--model", pack, "--data", data_, "--per-image", dir_ / "x.csv"}, dir_.path()),
      {"--per-image"}, {"one --model"});
}

// vae bench --models: the pack's images/s against the same models one after
// another, and the memory they take.
TEST_F(Pack, BenchTimesPacksAgainstTheModelsOneAfterAnother) {
  const RunResult r = run_vae({"bench", "--device", "cpu", "--batch-sizes", "20", "--models", "1,3", "--steps", "2",
                               "--repeats", "1", "--warmup", "0", "--data", data_, "--json", dir_ / "b.json"},
                              dir_.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "one after another")) << r.out;
  const std::string json = read_file(dir_ / "b.json");
  EXPECT_TRUE(contains(json, "\"pack_images_per_s\"")) << json;
  EXPECT_TRUE(contains(json, "\"models\": 3")) << json;
  expect_one_line_error(run_vae({"bench", "--device", "cpu", "--models", "0"}, dir_.path()), {"--models"}, {});
}

TEST_F(Pack, BadFlagsAreOneLineNamingTheFlag) {
  const std::string pack = dir_ / "pack";
  expect_one_line_error(run_vae(pack_args(data_, pack, {{"--seeds", "0-2"}, {"--seed", "4"}}), dir_.path()),
                        {"--seed", "--seeds"}, {"give one"});
  expect_one_line_error(run_vae(pack_args(data_, pack, {{"--seeds", "3-1"}}), dir_.path()), {"--seeds"},
                        {"backwards"});
  expect_one_line_error(run_vae(pack_args(data_, pack, {{"--seeds", "1,1"}}), dir_.path()), {"--seeds"},
                        {"twice"});
  expect_one_line_error(run_vae(pack_args(data_, pack, {{"--lr", "1e-3,,2e-3"}}), dir_.path()), {"--lr"},
                        {"empty"});
  expect_one_line_error(run_vae(pack_args(data_, pack, {{"--adam-eps", "1e-8,x"}}), dir_.path()), {"--adam-eps"},
                        {"not a number"});
  expect_one_line_error(run_vae(pack_args(data_, pack, {{"--seeds", "0-5000"}}), dir_.path()), {"--seeds"},
                        {"more than"});
  EXPECT_FALSE(fs::exists(pack)) << "a refused pack left its folder";
  expect_success(run_vae(pack_args(data_, pack, {{"--seeds", "0-1"}, {"--max-steps", "2"}}), dir_.path()));
  // A second pack into it, and a resume with new lists, are refused.
  expect_one_line_error(run_vae(pack_args(data_, pack, {{"--seeds", "0-1"}}), dir_.path()), {"--out " + pack},
                        {"holds a pack"});
  expect_one_line_error(run_vae({"train", "--resume", pack, "--data", data_, "--seeds", "0-3"}, dir_.path()),
                        {"--resume " + pack}, {"own members"});
  expect_one_line_error(
      run_vae({"train", "--resume", pack + "/seed-0", "--data", data_, "--lr", "1e-3,2e-3"}, dir_.path()),
      {"--resume " + pack + "/seed-0"}, {"one run"});
  write_file(fs::path(pack) / "pack.json", "{\"members\": 3}");
  expect_one_line_error(run_vae({"train", "--resume", pack, "--data", data_}, dir_.path()), {"pack.json"},
                        {"not a pack"});
}

}  // namespace
}  // namespace cuvae
