// Checkpoints, exact resume, interruption and torn writes, end to end through
// the vae binary on a small generated data set.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstring>
#include <random>
#include <sstream>

#include "cuvae/backends/backend.h"
#include "cuvae/error.h"
#include "cuvae/io/checkpoint.h"
#include "cuvae/io/model_file.h"
#include "cuvae/io/safetensors.h"
#include "vae_process.h"

namespace cuvae {
namespace {

using namespace cuvae::testing;

// 400 training images, batch 50: 8 steps an epoch.
std::vector<std::string> tiny_run(const std::string& data, const std::string& out,
                                  std::map<std::string, std::string> extra = {}) {
  extra.emplace("--batch-size", "50");
  extra.emplace("--hidden", "16");
  extra.emplace("--latent-dim", "3");
  extra.emplace("--epochs", "5");
  extra.emplace("--max-steps", "0");
  std::vector<std::string> args = train_args(data, out, extra);
  args.push_back("--shuffle");
  return args;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void expect_same_state(const TrainState& a, const TrainState& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_TRUE(same_bits(a.params, b.params)) << "parameters differ";
  EXPECT_TRUE(same_bits(a.adam_m, b.adam_m)) << "Adam m differs";
  EXPECT_TRUE(same_bits(a.adam_v, b.adam_v)) << "Adam v differs";
}

class Resume : public ::testing::Test {
 protected:
  void SetUp() override { write_dataset(data_); }

  // Resumes the run in `out` to `target` steps, and runs tiny_run(`flags`)
  // to `target` in one go beside it: their checkpoints, whole run first.
  std::pair<TrainState, TrainState> resume_and_run_whole(const std::string& out,
                                                         std::map<std::string, std::string> flags,
                                                         uint64_t target) {
    const std::string steps = std::to_string(target);
    expect_success(run_vae({"train", "--resume", out, "--data", data_, "--max-steps", steps, "--device", "cpu"},
                           dir_.path()));
    const std::string whole = out + "-whole";
    flags["--max-steps"] = steps;
    expect_success(run_vae(tiny_run(data_, whole, flags), dir_.path()));
    return {load_checkpoint(whole + "/checkpoint.safetensors"), load_checkpoint(out + "/checkpoint.safetensors")};
  }

  TempDir dir_;
  std::string data_ = dir_ / "data";
};

TEST_F(Resume, StoppedAndResumedRunIsBitIdenticalToAnUninterruptedOne) {
  // 30 steps in one go, against 13 (mid-epoch), then resumed to 30.
  expect_success(run_vae(tiny_run(data_, dir_ / "whole", {{"--max-steps", "30"}}), dir_.path()));
  expect_success(run_vae(tiny_run(data_, dir_ / "parts", {{"--max-steps", "13"}}), dir_.path()));
  const RunResult resumed = run_vae({"train", "--resume", dir_ / "parts", "--data", data_,
                                     "--max-steps", "30", "--device", "cpu"},
                                    dir_.path());
  expect_success(resumed);
  EXPECT_TRUE(contains(resumed.out, "resuming from")) << resumed.out;
  const TrainState whole = load_checkpoint(dir_ / "whole/checkpoint.safetensors");
  const TrainState parts = load_checkpoint(dir_ / "parts/checkpoint.safetensors");
  EXPECT_EQ(whole.step, 30u);
  expect_same_state(whole, parts);
  // The epoch lines agree too: same ELBO per epoch (the resumed epoch's sum
  // was carried in the checkpoint).
  auto elbos = [](const std::string& csv) {
    std::vector<std::string> column;
    std::istringstream lines(csv);
    for (std::string line; std::getline(lines, line);) column.push_back(line.substr(0, line.find(',', line.find(',', line.find(',') + 1) + 1)));
    return column;
  };
  EXPECT_EQ(elbos(read_file(dir_ / "whole/metrics.csv")), elbos(read_file(dir_ / "parts/metrics.csv")));
}

// The same on the GPU, where the resumed run's step is a CUDA Graph again,
// recorded afresh (resuming on another backend continues the run, but not
// bit-identically: the backends round differently).
TEST_F(Resume, OnTheGpuTooWithItsCudaGraph) {
  std::string why_not;
  if (!cuda_available(&why_not)) GTEST_SKIP() << "CUDA test skipped: " << why_not;
  const std::map<std::string, std::string> gpu = {{"--device", "cuda"}};
  auto with = [&](std::map<std::string, std::string> extra) {
    extra.insert(gpu.begin(), gpu.end());
    return extra;
  };
  expect_success(run_vae(tiny_run(data_, dir_ / "whole", with({{"--max-steps", "30"}})), dir_.path()));
  expect_success(run_vae(tiny_run(data_, dir_ / "parts", with({{"--max-steps", "13"}})), dir_.path()));
  const RunResult resumed = run_vae({"train", "--resume", dir_ / "parts", "--data", data_,
                                     "--max-steps", "30", "--device", "cuda"},
                                    dir_.path());
  expect_success(resumed);
  EXPECT_TRUE(contains(resumed.out, "CUDA Graph")) << resumed.out;
  expect_same_state(load_checkpoint(dir_ / "whole/checkpoint.safetensors"),
                    load_checkpoint(dir_ / "parts/checkpoint.safetensors"));
}

TEST_F(Resume, ResumeWithoutEpochFlagsFinishesTheOriginalRun) {
  expect_success(run_vae(tiny_run(data_, dir_ / "a", {{"--epochs", "3"}}), dir_.path()));
  expect_success(run_vae(tiny_run(data_, dir_ / "b", {{"--epochs", "3"}, {"--max-steps", "5"}}), dir_.path()));
  // b's own target was 5 steps: resuming it unchanged has nothing to do.
  expect_success(run_vae({"train", "--resume", dir_ / "b", "--data", data_, "--device", "cpu"}, dir_.path()));
  EXPECT_EQ(load_checkpoint(dir_ / "b/checkpoint.safetensors").step, 5u);
  // With --max-steps 0 (no limit) it runs to the original 3 epochs.
  expect_success(run_vae({"train", "--resume", dir_ / "b", "--data", data_, "--max-steps", "0", "--device", "cpu"},
                         dir_.path()));
  expect_same_state(load_checkpoint(dir_ / "a/checkpoint.safetensors"),
                    load_checkpoint(dir_ / "b/checkpoint.safetensors"));
}

TEST_F(Resume, DisagreeingFlagsAndOtherDataAreRefused) {
  expect_success(run_vae(tiny_run(data_, dir_ / "run", {{"--max-steps", "3"}}), dir_.path()));
  const TrainState before = load_checkpoint(dir_ / "run/checkpoint.safetensors");
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--batch-size", "40"}, {"--latent-dim", "4"}, {"--hidden", "16,16"}, {"--lr", "0.01"}, {"--seed", "9"}}) {
    const RunResult r = run_vae({"train", "--resume", dir_ / "run", "--data", data_, flag, value}, dir_.path());
    EXPECT_NE(r.exit_code, 0) << describe(r);
    EXPECT_TRUE(contains(r.err, flag) && contains(r.err, "disagrees")) << describe(r);
  }
  // Values that differ print apart (std::to_string gave 0.001000 for both).
  const RunResult close_lr =
      run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--lr", "0.00100000001"}, dir_.path());
  EXPECT_TRUE(contains(close_lr.err, "--lr 0.00100000001 disagrees with 0.001 in")) << describe(close_lr);
  const std::string other = dir_ / "other";
  fs::create_directories(other);
  write_file(fs::path(other) / "train-images-idx3-ubyte", idx_images(400, 0x803, 77));
  fs::copy_file(fs::path(data_) / "train-labels-idx1-ubyte", fs::path(other) / "train-labels-idx1-ubyte");
  fs::copy_file(fs::path(data_) / "t10k-images-idx3-ubyte", fs::path(other) / "t10k-images-idx3-ubyte");
  fs::copy_file(fs::path(data_) / "t10k-labels-idx1-ubyte", fs::path(other) / "t10k-labels-idx1-ubyte");
  const RunResult r = run_vae({"train", "--resume", dir_ / "run", "--data", other}, dir_.path());
  EXPECT_NE(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.err, "not the checkpoint's")) << describe(r);
  const RunResult missing = run_vae({"train", "--resume", dir_ / "nothing-here", "--data", data_}, dir_.path());
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_TRUE(contains(missing.err, "no checkpoint")) << describe(missing);
  expect_same_state(before, load_checkpoint(dir_ / "run/checkpoint.safetensors"));
}

// Each checkpoint field read back only within its flag's range, whatever its
// digits: a hand-edited or corrupt value is refused, naming the field.
TEST_F(Resume, CheckpointFieldsOutOfRangeAreRefused) {
  expect_success(run_vae(tiny_run(data_, dir_ / "run", {{"--max-steps", "3"}}), dir_.path()));
  const std::string path = dir_ / "run/checkpoint.safetensors";
  const SafetensorsFile good = read_safetensors(path);
  const std::string edited = dir_ / "edited.safetensors";
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"batch_size", "4294967346"}, {"batch_size", "0"}, {"input_dim", "4294968080"},
           {"latent_dim", "4294967299"}, {"epochs", "2147483648"}, {"epochs", "4294967295"},
           {"max_steps", "18446744073709551615"}, {"seed", "18446744073709551616"}, {"step", "-1"},
           {"shuffle", "7"}, {"lr", "nan"}, {"lr", "-1"}, {"lr", "inf"}, {"lr", "1e-999"}, {"lr", "1e-320"},
           {"beta1", "2"}, {"beta1", "nan"}, {"beta2", "-5"}, {"eps", "0"}, {"eps", "nan"},
           {"epoch_elbo_sum", "nan"}, {"epoch_seconds", "nan"}, {"epoch_seconds", "-1"}}) {
    SafetensorsFile file = good;
    file.metadata[key] = value;
    write_safetensors(edited, file);
    try {
      load_checkpoint(edited);
      ADD_FAILURE() << key << "=" << value << " accepted";
    } catch (const Error& e) {
      EXPECT_TRUE(contains(e.what(), "'" + key + "' is '" + value + "'")) << e.what();
    }
  }
  EXPECT_NO_THROW(load_checkpoint(path));
}

// A checkpoint with NaN or Inf in its parameters or Adam moments (or a
// negative second moment) resumed and then "diverged in epoch 1"; it is
// refused on load, as model files are.
TEST_F(Resume, CheckpointTensorsThatAreNotFiniteAreRefused) {
  expect_success(run_vae(tiny_run(data_, dir_ / "run", {{"--max-steps", "3"}}), dir_.path()));
  const std::string path = dir_ / "run/checkpoint.safetensors";
  const SafetensorsFile good = read_safetensors(path);
  for (const auto& [name, value] : std::vector<std::pair<std::string, float>>{
           {"params", NAN}, {"adam.m", NAN}, {"adam.m", INFINITY}, {"adam.v", -INFINITY}, {"adam.v", -1.0f},
           {"adam.v", NAN}}) {
    SCOPED_TRACE(name + " " + std::to_string(value));
    SafetensorsFile file = good;
    for (Tensor& t : file.tensors) {
      if (t.name == name) t.data[7] = value;
    }
    write_safetensors(path, file);
    expect_one_line_error(run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--device", "cpu",
                                   "--max-steps", "6"},
                                  dir_.path()),
                          {path, "'" + name + "'", "index 7"}, {"not a finite number"});
  }
  write_safetensors(path, good);
  expect_success(run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--device", "cpu", "--max-steps", "6"},
                         dir_.path()));
}

// A checkpoint's metrics rows were copied into metrics.csv unchecked
// (garbage lines, epochs out of order or twice). They are checked like
// every other field, and must be one per finished epoch.
TEST_F(Resume, CheckpointMetricsRowsAreChecked) {
  expect_success(run_vae(tiny_run(data_, dir_ / "run", {{"--max-steps", "19"}}), dir_.path()));
  const std::string path = dir_ / "run/checkpoint.safetensors";
  const SafetensorsFile good = read_safetensors(path);
  const std::string rows = good.metadata.at("metrics_csv");
  const std::string row1 = rows.substr(0, rows.find('\n') + 1), row2 = rows.substr(rows.find('\n') + 1);
  ASSERT_EQ(row2.substr(0, 2), "2,") << rows;
  for (const auto& [value, why] : std::vector<std::pair<std::string, std::string>>{
           {"garbage\n" + row2, "row 1 is 'garbage'"},
           {row2 + row1, "expected 1"},
           {row1 + row1, "expected 2"},
           {row1 + "2,elbo,-1,0.001,1,2,3,4\n", "7 fields"},
           {row1 + "2,elbo,nan,0.001,1,2,\n", "field 3"},
           {row1 + "2,elbo,-1,0.001,-1,2,\n", "field 5"},
           {row1 + row2.substr(0, row2.size() - 1), "newline"},
           {row1 + std::string("2,\x01\xc3\xa9\\,1\n"), "'2,\\x01\\xc3\\xa9\\\\,1'"}}) {
    SCOPED_TRACE(value);
    SafetensorsFile file = good;
    file.metadata["metrics_csv"] = value;
    write_safetensors(path, file);
    expect_one_line_error(run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--device", "cpu",
                                   "--max-steps", "24"},
                                  dir_.path()),
                          {path, "'metrics_csv'", why}, {});
  }
  // Whole rows, but one too few for the step.
  SafetensorsFile file = good;
  file.metadata["metrics_csv"] = row1;
  write_safetensors(path, file);
  expect_one_line_error(run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--device", "cpu",
                                 "--max-steps", "24"},
                                dir_.path()),
                        {path, "'metrics_csv' has 1 rows", "2 finished epochs"}, {});
  write_safetensors(path, good);
  expect_success(run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--device", "cpu", "--max-steps", "24"},
                         dir_.path()));
}

// The progress a checkpoint records must fit the run it continues.
TEST_F(Resume, ProgressPastTheRunOrInconsistentIsRefused) {
  expect_success(run_vae(tiny_run(data_, dir_ / "run", {{"--epochs", "3"}, {"--max-steps", "19"}}), dir_.path()));
  const std::string path = dir_ / "run/checkpoint.safetensors";
  // 19 steps done; 1 epoch is 8: nothing left, said, and nothing changed.
  const RunResult fewer = run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--epochs", "1"}, dir_.path());
  EXPECT_NE(fewer.exit_code, 0) << describe(fewer);
  EXPECT_TRUE(contains(fewer.err, "at step 19, past the 8 steps") && contains(fewer.err, "nothing is left"))
      << describe(fewer);
  const RunResult lower = run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--max-steps", "10"}, dir_.path());
  EXPECT_NE(lower.exit_code, 0) << describe(lower);
  EXPECT_TRUE(contains(lower.err, "nothing is left")) << describe(lower);
  const SafetensorsFile good = read_safetensors(path);
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"step", "999999999"}, {"step", "18446744073709551615"}, {"epoch_rows", "18446744073709551615"},
           {"epoch_rows", "100"}}) {
    SafetensorsFile file = good;
    file.metadata[key] = value;
    write_safetensors(path, file);
    const RunResult r = run_vae({"train", "--resume", dir_ / "run", "--data", data_}, dir_.path());
    EXPECT_NE(r.exit_code, 0) << key << "=" << value << ": " << describe(r);
    EXPECT_TRUE(contains(r.err, key == "step" ? "nothing is left" : "'epoch_rows' is " + value)) << describe(r);
  }
  write_safetensors(path, good);
  expect_success(run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--max-steps", "0"}, dir_.path()));
  EXPECT_EQ(load_checkpoint(path).step, 24u);
}

// Found by the adversarial pass: --resume RUN --overwrite resumed, the
// --overwrite ignored without a word; --resume RUN/checkpoint.safetensors
// said 'RUN/checkpoint.safetensors/checkpoint.safetensors is missing'.
TEST_F(Resume, ContradictoryOrMistakenResumeFlagsAreNamed) {
  expect_success(run_vae(tiny_run(data_, dir_ / "run", {{"--max-steps", "3"}}), dir_.path()));
  const std::string checkpoint = dir_ / "run/checkpoint.safetensors";
  const std::string before = read_file(checkpoint);
  expect_one_line_error(run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--overwrite"}, dir_.path()),
                        {"--overwrite", "--resume " + dir_ / "run"}, {"give one or the other"});
  expect_one_line_error(run_vae({"train", "--resume", checkpoint, "--data", data_}, dir_.path()),
                        {"--resume", checkpoint, "--resume " + dir_ / "run"}, {"is a file"});
  EXPECT_EQ(read_file(checkpoint), before);
  // Into another folder --overwrite still means what it says.
  expect_success(run_vae(tiny_run(data_, dir_ / "other", {{"--max-steps", "2"}}), dir_.path()));
  expect_success(run_vae({"train", "--resume", dir_ / "run", "--out", dir_ / "other", "--data", data_, "--overwrite",
                          "--max-steps", "4"},
                         dir_.path()));
  EXPECT_EQ(load_checkpoint(dir_ / "other/checkpoint.safetensors").step, 4u);
}

TEST_F(Resume, FirstInterruptCheckpointsAndResumesExactly) {
  for (const int signal_number : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(signal_number == SIGINT ? "SIGINT" : "SIGTERM");
    const std::string out = dir_ / ("int" + std::to_string(signal_number));
    // Many epochs so that the run is still going when the signal comes.
    VaeProcess child(tiny_run(data_, out, {{"--epochs", "2000"}, {"--checkpoint-every", "1"}}), dir_.path());
    ASSERT_TRUE(wait_for_file(out + "/checkpoint.safetensors"));
    child.signal(signal_number);
    const RunResult r = child.wait();
    EXPECT_EQ(r.signal, 0) << describe(r);
    EXPECT_EQ(r.exit_code, 128 + signal_number) << describe(r);
    EXPECT_TRUE(contains(r.err, "resume with: vae train --resume " + out)) << describe(r);
    const TrainState stopped = load_checkpoint(out + "/checkpoint.safetensors");
    ASSERT_GT(stopped.step, 0u);
    ASSERT_LT(stopped.step, 16000u);
    // Resume to a few steps past the interruption; compare with a run that
    // went there in one go.
    const auto [whole, resumed] = resume_and_run_whole(out, {{"--epochs", "2000"}}, stopped.step + 7);
    expect_same_state(whole, resumed);
  }
}

// Two trainings into one --out mixed their files (B's model beside A's
// checkpoint). The directory is locked for a run's life: a second run is
// refused before it writes anything, naming --out and the holder; once the
// holder is gone (even by kill -9: the kernel releases the lock) it is free.
TEST_F(Resume, ASecondRunIntoARunningRunsDirectoryIsRefused) {
  const std::string out = dir_ / "shared";
  VaeProcess a(tiny_run(data_, out, {{"--epochs", "2000"}, {"--seed", "1"}, {"--checkpoint-every", "1"}}),
               dir_.path(), "a");
  // The model file is written at an epoch's end, the checkpoint every step:
  // wait for both, so that A's model is there for B to overwrite.
  ASSERT_TRUE(wait_for_file(out + "/checkpoint.safetensors"));
  ASSERT_TRUE(wait_for_file(out + "/model.safetensors"));
  const TrainState before = load_checkpoint(out + "/checkpoint.safetensors");
  VaeProcess b(tiny_run(data_, out, {{"--seed", "2"}, {"--latent-dim", "2"}}), dir_.path(), "b");
  const RunResult refused = b.wait();
  expect_one_line_error(refused, {"--out " + out, "process " + std::to_string(a.pid()), "vae train"}, {"in use"});
  // Resuming it while it runs is refused too, naming --resume.
  VaeProcess c({"train", "--resume", out, "--data", data_, "--device", "cpu"}, dir_.path(), "c");
  expect_one_line_error(c.wait(), {"--resume " + out, "process " + std::to_string(a.pid())}, {"in use"});
  a.signal(SIGINT);
  const RunResult stopped = a.wait();
  EXPECT_EQ(stopped.exit_code, 128 + SIGINT) << describe(stopped);
  const TrainState after = load_checkpoint(out + "/checkpoint.safetensors");
  EXPECT_EQ(after.config.seed, 1u);
  EXPECT_GE(after.step, before.step);
  EXPECT_EQ(load_model(out + "/model.safetensors").arch.latent_dim, 3) << "B's model is in A's directory";
  // kill -9 releases the lock with the process.
  std::vector<std::string> over_a = tiny_run(data_, out, {{"--epochs", "2000"}, {"--checkpoint-every", "1"}});
  over_a.push_back("--overwrite");
  VaeProcess d(over_a, dir_.path(), "d");
  const std::string holder = "process " + std::to_string(d.pid()) + ", vae train";
  for (int i = 0; i < 30000 && !contains(read_file(out + "/.vae.lock"), holder); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_TRUE(contains(read_file(out + "/.vae.lock"), holder));
  d.signal(SIGKILL);
  d.wait();
  expect_success(run_vae({"train", "--resume", out, "--data", data_, "--device", "cpu", "--max-steps",
                          std::to_string(load_checkpoint(out + "/checkpoint.safetensors").step + 1)},
                         dir_.path()));
}

// Resume forgot --eval-every, --image-scale and --checkpoint-every: an
// interrupted run with --eval-every 2 lost its test_bound column. They are
// stored in the checkpoint and are a resume's defaults; given, they change.
TEST_F(Resume, ResumeKeepsEvalEveryImageScaleAndCheckpointEvery) {
  const std::string out = dir_ / "flags";
  expect_success(run_vae(tiny_run(data_, out,
                                  {{"--epochs", "4"}, {"--max-steps", "12"}, {"--eval-every", "2"},
                                   {"--image-scale", "2"}, {"--checkpoint-every", "3"}}),
                         dir_.path()));
  const TrainState stopped = load_checkpoint(out + "/checkpoint.safetensors");
  EXPECT_EQ(stopped.eval_every, 2);
  EXPECT_EQ(stopped.image_scale, 2);
  EXPECT_EQ(stopped.checkpoint_every, 3);
  expect_success(run_vae({"train", "--resume", out, "--data", data_, "--device", "cpu", "--max-steps", "0"},
                         dir_.path()));
  // Epochs 2 and 4 (the last) have a test bound: the seventh column.
  std::istringstream lines(read_file(out + "/metrics.csv"));
  std::vector<std::string> test_bounds;
  for (std::string line; std::getline(lines, line);) test_bounds.push_back(line.substr(line.rfind(',') + 1));
  ASSERT_EQ(test_bounds.size(), 5u) << read_file(out + "/metrics.csv");
  EXPECT_EQ(test_bounds[1], "");
  EXPECT_NE(test_bounds[2], "");
  EXPECT_EQ(test_bounds[3], "");
  EXPECT_NE(test_bounds[4], "") << "the resumed run forgot --eval-every";
  // --image-scale 2: the task images of 28x28 digits are twice as wide as
  // at scale 1 (PNG width: big-endian at byte 16).
  auto png_width = [](const std::string& png) {
    return (uint32_t(uint8_t(png[16])) << 24) | (uint32_t(uint8_t(png[17])) << 16) |
           (uint32_t(uint8_t(png[18])) << 8) | uint32_t(uint8_t(png[19]));
  };
  const std::string scaled = read_file(out + "/task_3_1.png");
  ASSERT_GT(scaled.size(), 20u);
  const TrainState ended = load_checkpoint(out + "/checkpoint.safetensors");
  EXPECT_EQ(ended.eval_every, 2);
  EXPECT_EQ(ended.image_scale, 2);
  EXPECT_EQ(ended.checkpoint_every, 3);
  // Given on resume, they change (and are stored).
  expect_success(run_vae({"train", "--resume", out, "--data", data_, "--device", "cpu", "--epochs", "5",
                          "--max-steps", "0", "--image-scale", "1", "--eval-every", "0"},
                         dir_.path()));
  EXPECT_EQ(png_width(read_file(out + "/task_3_1.png")) * 2, png_width(scaled));
  EXPECT_EQ(load_checkpoint(out + "/checkpoint.safetensors").image_scale, 1);
  EXPECT_EQ(load_checkpoint(out + "/checkpoint.safetensors").eval_every, 0);
}

// A Ctrl-C during the test-set evaluation of --eval-every was honoured only
// when the evaluation ended (minutes on a full test set at large K). It is
// checked between evaluation chunks: in train (the epoch's end is written
// without its test bound, exit 130) and in vae eval (one line, exit 130).
TEST_F(Resume, AnInterruptDuringTheTestSetEvaluationIsHonouredAtOnce) {
  // 100 training images, 3000 test images: one step of 10, then a long evaluation
  // (3000 images x K = 2000 through a 256-wide network, about a minute here).
  const std::string data = dir_ / "big-test";
  fs::create_directories(data);
  write_file(fs::path(data) / kTrainImages, idx_images(100, kImagesMagic, 1));
  write_file(fs::path(data) / kTrainLabels, idx_labels(100));
  write_file(fs::path(data) / kTestImages, idx_images(3000, kImagesMagic, 2));
  write_file(fs::path(data) / kTestLabels, idx_labels(3000));
  const std::string out = dir_ / "eval-run";
  VaeProcess train(train_args(data, out, {{"--hidden", "256"}, {"--samples", "2000"}, {"--objective", "iwae"}, {"--batch-size", "10"},
                                          {"--eval-every", "1"}}),
                   dir_.path(), "train");
  // The lock file appears before the step; the step takes well under 2 s.
  ASSERT_TRUE(wait_for_file(out + "/.vae.lock"));
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const auto signalled = std::chrono::steady_clock::now();
  train.signal(SIGINT);
  const RunResult r = train.wait();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
  EXPECT_EQ(r.exit_code, 130) << describe(r);
  EXPECT_LT(seconds, 10.0) << "the interrupt waited for the evaluation";
  const TrainState stopped = load_checkpoint(out + "/checkpoint.safetensors");
  EXPECT_EQ(stopped.step, 1u);
  EXPECT_TRUE(contains(read_file(out + "/metrics.csv"), "\n1,")) << read_file(out + "/metrics.csv");
  // vae eval of that model: the same.
  VaeProcess eval({"eval", "--model", out + "/model.safetensors", "--data", data, "--k", "2000", "--device", "cpu"},
                  dir_.path(), "eval");
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const auto eval_signalled = std::chrono::steady_clock::now();
  eval.signal(SIGINT);
  const RunResult e = eval.wait();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - eval_signalled).count(), 10.0);
  EXPECT_EQ(e.exit_code, 130) << describe(e);
  EXPECT_TRUE(contains(e.err, "vae: interrupted by SIGINT after ")) << describe(e);
  EXPECT_TRUE(contains(e.err, " of 3000 images; nothing written")) << describe(e);
  EXPECT_FALSE(contains(e.out, "\"nll\"")) << describe(e);
}

// `train --out` into an existing run without --resume silently replaced its
// checkpoint: refused, naming --resume and --overwrite; --overwrite starts
// over; a resume into its own folder needs neither.
TEST_F(Resume, ANewRunIntoAnExistingRunNeedsOverwrite) {
  const std::string out = dir_ / "existing";
  expect_success(run_vae(tiny_run(data_, out, {{"--max-steps", "3"}, {"--seed", "5"}}), dir_.path()));
  const std::string checkpoint = read_file(out + "/checkpoint.safetensors");
  expect_one_line_error(run_vae(tiny_run(data_, out, {{"--max-steps", "2"}}), dir_.path()),
                        {"--out " + out, "--resume", "--overwrite"}, {"holds a run"});
  EXPECT_EQ(read_file(out + "/checkpoint.safetensors"), checkpoint);
  // Resuming another run into it is refused too.
  expect_success(run_vae(tiny_run(data_, dir_ / "other", {{"--max-steps", "2"}}), dir_.path()));
  expect_one_line_error(run_vae({"train", "--resume", dir_ / "other", "--out", out, "--data", data_, "--device", "cpu",
                                 "--max-steps", "4"},
                                dir_.path()),
                        {"--out " + out, "--overwrite"}, {"holds a run"});
  EXPECT_EQ(read_file(out + "/checkpoint.safetensors"), checkpoint);
  expect_success(run_vae({"train", "--resume", out, "--data", data_, "--device", "cpu", "--max-steps", "4"}, dir_.path()));
  std::vector<std::string> over = tiny_run(data_, out, {{"--max-steps", "2"}});
  over.push_back("--overwrite");
  expect_success(run_vae(over, dir_.path()));
  EXPECT_EQ(load_checkpoint(out + "/checkpoint.safetensors").step, 2u);
  EXPECT_EQ(load_checkpoint(out + "/checkpoint.safetensors").config.seed, 0u);
}

// One step an epoch: every interrupt lands on an epoch's last step, whose
// epoch end (line, metrics row, model, checkpoint) must come first, so that
// the resume continues exactly, with the same metrics rows as a whole run.
TEST_F(Resume, InterruptOnAnEpochsLastStepResumesExactly) {
  const std::string out = dir_ / "one-step-epochs";
  VaeProcess child(tiny_run(data_, out, {{"--batch-size", "400"}, {"--epochs", "100000"}}), dir_.path());
  ASSERT_TRUE(wait_for_file(out + "/checkpoint.safetensors"));
  child.signal(SIGINT);
  const RunResult r = child.wait();
  EXPECT_EQ(r.exit_code, 128 + SIGINT) << describe(r);
  const TrainState stopped = load_checkpoint(out + "/checkpoint.safetensors");
  ASSERT_GT(stopped.step, 0u);
  EXPECT_EQ(stopped.epoch_rows, 0u);
  const auto [a, b] = resume_and_run_whole(out, {{"--batch-size", "400"}, {"--epochs", "100000"}}, stopped.step + 3);
  expect_same_state(a, b);
  // epoch,objective,bound of every row (the seconds differ).
  auto epochs_and_elbos = [](const std::string& csv) {
    std::string kept;
    std::istringstream lines(csv);
    for (std::string line; std::getline(lines, line);) kept += line.substr(0, line.find(',', line.find(',') + 1)) + "\n";
    return kept;
  };
  EXPECT_EQ(epochs_and_elbos(a.metrics_csv), epochs_and_elbos(b.metrics_csv));
}

// Checkpoints of earlier builds could hold that state: a whole epoch's rows
// at its last step, its end not yet written. Resuming finishes that epoch.
TEST_F(Resume, AnEarlierBuildsCheckpointAtAnEpochsLastStepIsFinished) {
  expect_success(run_vae(tiny_run(data_, dir_ / "run", {{"--max-steps", "8"}}), dir_.path()));
  const std::string path = dir_ / "run/checkpoint.safetensors";
  SafetensorsFile file = read_safetensors(path);
  file.metadata["epoch_rows"] = "400";
  file.metadata["epoch_elbo_sum"] = "-200000";
  file.metadata["metrics_csv"] = "";
  write_safetensors(path, file);
  const RunResult r =
      run_vae({"train", "--resume", dir_ / "run", "--data", data_, "--max-steps", "16", "--device", "cpu"}, dir_.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "epoch   1/2  elbo  -500.000")) << describe(r);
  const TrainState after = load_checkpoint(path);
  EXPECT_EQ(after.step, 16u);
  EXPECT_EQ(after.metrics_csv.rfind("1,elbo,-500.000000,", 0), 0u) << after.metrics_csv;
  EXPECT_NE(after.metrics_csv.find("\n2,"), std::string::npos) << after.metrics_csv;
}

TEST_F(Resume, SecondInterruptExitsAtOnce) {
  // Steps long enough (a wide network, big batches) that both signals land
  // inside one step: the second must end the process without finishing it.
  const std::string out = dir_ / "twice";
  VaeProcess child(train_args(data_, out, {{"--batch-size", "400"}, {"--hidden", "2000,2000"},
                                           {"--epochs", "1000"}, {"--max-steps", "0"},
                                           {"--checkpoint-every", "1"}}),
                   dir_.path());
  ASSERT_TRUE(wait_for_file(out + "/checkpoint.safetensors"));
  // Standard signals do not queue, so two sent back to back may arrive as
  // one: send several, 20 ms apart (a step here takes well over 100 ms; the
  // child stays a zombie until wait(), so its pid is not reused meanwhile).
  for (int i = 0; i < 5; ++i) {
    child.signal(SIGINT);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const RunResult r = child.wait();
  EXPECT_EQ(r.exit_code, 130) << describe(r);
  EXPECT_TRUE(contains(r.err, "second interrupt")) << describe(r);
  // Whatever checkpoint is there is whole, and the line says which step it holds.
  const TrainState state = load_checkpoint(out + "/checkpoint.safetensors");
  EXPECT_TRUE(contains(r.err, "; " + out + "/checkpoint.safetensors holds step " + std::to_string(state.step) +
                                  " (vae train --resume " + out + " continues from there)\n"))
      << describe(r);
}

// A second interrupt before the run's first checkpoint said only "exiting
// now", and left an output folder with no checkpoint (and, with stdout a
// file, none of the lines already printed): it says that nothing was saved.
TEST_F(Resume, ASecondInterruptBeforeAnyCheckpointSaysNothingWasSaved) {
  const std::string out = dir_ / "nothing";
  VaeProcess child(train_args(data_, out, {{"--batch-size", "400"}, {"--hidden", "2000,2000"}, {"--samples", "5"},
                                           {"--epochs", "1000"}, {"--max-steps", "0"}}),
                   dir_.path());
  // The plan's lines are out (flushed) when the first step starts; one step
  // here takes well over 100 ms.
  const fs::path child_stdout = dir_.path() / ".vae_stdout";
  for (int i = 0; i < 30000 && !contains(read_file(child_stdout), "\nobjective: "); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (int i = 0; i < 3; ++i) {
    child.signal(SIGINT);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const RunResult r = child.wait();
  EXPECT_EQ(r.exit_code, 130) << describe(r);
  EXPECT_TRUE(contains(r.out, "\nobjective: ")) << describe(r);
  EXPECT_TRUE(contains(r.err, "vae: second interrupt, exiting now; nothing of this run was saved: " + out +
                                  " holds no checkpoint of it\n"))
      << describe(r);
  EXPECT_FALSE(fs::exists(out + "/checkpoint.safetensors"));
}

TEST_F(Resume, KillNineNeverLeavesATornCheckpoint) {
  // 50 runs killed at random moments while they write a checkpoint every
  // step: each leaves no checkpoint yet, or one that loads whole.
  std::mt19937 rng(12345);
  int with_checkpoint = 0;
  for (int attempt = 0; attempt < 50; ++attempt) {
    const std::string out = dir_ / ("kill" + std::to_string(attempt));
    VaeProcess child(tiny_run(data_, out, {{"--epochs", "2000"}, {"--checkpoint-every", "1"}}), dir_.path());
    // From when the run has made its output directory, not from the exec:
    // loading the CUDA and oneDNN libraries takes ~0.3 s on a loaded machine,
    // which would put most kills before the first step.
    wait_for_file(out);
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 400)(rng)));
    child.signal(SIGKILL);
    child.wait();
    const std::string path = out + "/checkpoint.safetensors";
    if (fs::exists(path)) {
      ++with_checkpoint;
      EXPECT_NO_THROW(load_checkpoint(path)) << "attempt " << attempt;
    }
    if (fs::exists(out + "/model.safetensors")) {
      EXPECT_NO_THROW(load_model(out + "/model.safetensors")) << "attempt " << attempt;
    }
    std::error_code ignored;
    fs::remove_all(out, ignored);
  }
  std::printf("  %d of 50 killed runs had written a checkpoint\n", with_checkpoint);
  EXPECT_GT(with_checkpoint, 10) << "the kills came too early to test anything";
}

TEST_F(Resume, AFullDiskIsAClearErrorAndKeepsThePreviousCheckpoint) {
  const std::string out = dir_ / "full";
  expect_success(run_vae(tiny_run(data_, out, {{"--max-steps", "8"}}), dir_.path()));
  const TrainState before = load_checkpoint(out + "/checkpoint.safetensors");
  // A file-size limit makes writes fail with EFBIG, as a full disk fails them
  // with ENOSPC: the resumed run's first model or checkpoint write fails.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 20000;  // enough for metrics.csv, not for a model file
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  signal(SIGXFSZ, SIG_IGN);
  const RunResult r = run_vae({"train", "--resume", out, "--data", data_, "--max-steps", "16"}, dir_.path());
  setrlimit(RLIMIT_FSIZE, &old_limit);
  EXPECT_EQ(r.signal, 0) << describe(r);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_TRUE(contains(r.err, "cannot write") && contains(r.err, out)) << describe(r);
  expect_same_state(before, load_checkpoint(out + "/checkpoint.safetensors"));
  for (const auto& entry : fs::directory_iterator(out)) {
    EXPECT_FALSE(contains(entry.path().filename().string(), ".tmp.")) << entry.path();
  }
}

// A full disk that let the model and metrics.csv through but not the larger
// checkpoint left the folder inconsistent (model and metrics at step 16,
// checkpoint at 8). The three are written all or none: here, none.
TEST_F(Resume, AFullDiskNeverLeavesTheModelAheadOfTheCheckpoint) {
  const std::string out = dir_ / "full";
  expect_success(run_vae(tiny_run(data_, out, {{"--max-steps", "8"}}), dir_.path()));
  const std::string model = read_file(out + "/model.safetensors");
  const std::string metrics = read_file(out + "/metrics.csv");
  const std::string checkpoint = read_file(out + "/checkpoint.safetensors");
  ASSERT_LT(model.size(), 150000u);
  ASSERT_GT(checkpoint.size(), 250000u);
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 200000;  // a model file fits, a checkpoint does not
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  signal(SIGXFSZ, SIG_IGN);
  const RunResult r = run_vae({"train", "--resume", out, "--data", data_, "--max-steps", "16"}, dir_.path());
  setrlimit(RLIMIT_FSIZE, &old_limit);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_TRUE(contains(r.err, "cannot write " + out + "/checkpoint.safetensors")) << describe(r);
  EXPECT_EQ(read_file(out + "/checkpoint.safetensors"), checkpoint);
  EXPECT_EQ(read_file(out + "/model.safetensors"), model) << "the model is ahead of the checkpoint";
  EXPECT_EQ(read_file(out + "/metrics.csv"), metrics) << "metrics.csv is ahead of the checkpoint";
  for (const auto& entry : fs::directory_iterator(out)) {
    EXPECT_FALSE(contains(entry.path().filename().string(), ".tmp.")) << entry.path();
  }
}

}  // namespace
}  // namespace cuvae
