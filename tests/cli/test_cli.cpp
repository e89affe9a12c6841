// The driver's promises, tested end to end: the vae binary runs as a child
// process (stdout, stderr and exit status captured separately, with a
// timeout). Bad input of every kind must give exactly one line on stderr that
// names the flag or file at fault and what is wrong, a non-zero exit status,
// and no crash; good input must write what the help promises.
//
// Data sets are small generated IDX files in a temporary directory, so the
// suite runs in seconds; one test also reads the real MNIST files
// (CUVAE_MNIST_DIR, else CUVAE_SOURCE_DIR/data/mnist) and skips without them.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "vae_process.h"

namespace {

namespace fs = std::filesystem;
using namespace cuvae::testing;

bool is_png(const fs::path& path) {
  const std::string bytes = read_file(path);
  return bytes.size() > 8 && bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0;
}

std::vector<std::string> leftover_temporaries(const fs::path& dir) {
  std::vector<std::string> found;
  std::error_code ignored;
  for (const auto& entry : fs::directory_iterator(dir, ignored)) {
    const std::string name = entry.path().filename().string();
    if (contains(name, ".tmp.")) found.push_back(name);
  }
  return found;
}

// ---------------------------------------------------------------------------
// Command line: flags, subcommands, values

class CliArgs : public ::testing::Test {
 protected:
  TempDir dir;
  std::string data() const { return shared().data; }
  std::string out() const { return dir / "out"; }
  RunResult train(const std::map<std::string, std::string>& overrides) {
    return run_vae(train_args(data(), out(), overrides), dir.path());
  }
};

TEST_F(CliArgs, UnknownFlagOfSubcommand) {
  RunResult r = run_vae({"train", "--bogus-flag"}, dir.path());
  expect_one_line_error(r, {"--bogus-flag"}, {"not expected", "unknown"});
  EXPECT_EQ(r.exit_code, 2);
}

TEST_F(CliArgs, UnknownTopLevelFlag) {
  expect_one_line_error(run_vae({"--bogus-flag"}, dir.path()), {"--bogus-flag"},
                        {"not expected", "unknown"});
}

TEST_F(CliArgs, UnknownSubcommand) {
  expect_one_line_error(run_vae({"bogus-command"}, dir.path()), {"bogus-command"},
                        {"unknown subcommand", "not expected"});
}

TEST_F(CliArgs, NoSubcommand) {
  expect_one_line_error(run_vae({}, dir.path()), {}, {"subcommand"});
}

TEST_F(CliArgs, MissingRequiredModel) {
  expect_one_line_error(run_vae({"eval"}, dir.path()), {"--model"}, {"required"});
}

TEST_F(CliArgs, BatchSizeZero) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--batch-size", "0"}}), {"--batch-size", "0"},
                        {"range", "must be", "positive"});
}

TEST_F(CliArgs, BatchSizeNegative) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--batch-size", "-5"}}), {"--batch-size", "-5"},
                        {"range", "must be", "positive"});
}

TEST_F(CliArgs, BatchSizeNotANumber) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--batch-size", "abc"}}), {"--batch-size", "abc"},
                        {"not an integer", "not a number", "integer"});
}

TEST_F(CliArgs, BatchSizeLargerThanDataSet) {
  REQUIRE_SHARED();
  RunResult r = train({{"--batch-size", "1000"}});
  expect_one_line_error(r, {"--batch-size", "1000"}, {"400", "training images"});
  EXPECT_FALSE(fs::exists(out() + "/model.safetensors"));
}

TEST_F(CliArgs, LatentDimZero) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--latent-dim", "0"}}), {"--latent-dim"},
                        {"range", "must be", "positive"});
}

TEST_F(CliArgs, HiddenWithEmptyWidth) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--hidden", "200,,200"}}), {"--hidden", "200,,200"},
                        {"must be", "invalid"});
}

TEST_F(CliArgs, HiddenNotANumber) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--hidden", "abc"}}), {"--hidden", "abc"},
                        {"must be", "invalid"});
}

TEST_F(CliArgs, HiddenZero) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--hidden", "0"}}), {"--hidden"}, {"positive"});
}

TEST_F(CliArgs, EpochsZero) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--epochs", "0"}}), {"--epochs"},
                        {"range", "must be", "positive"});
}

TEST_F(CliArgs, LearningRateNegative) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--lr", "-1"}}), {"--lr", "-1"}, {"positive"});
}

TEST_F(CliArgs, LearningRateNotANumber) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--lr", "abc"}}), {"--lr", "abc"}, {"not a number"});
}

TEST_F(CliArgs, MaxStepsNegative) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--max-steps", "-1"}}), {"--max-steps", "-1"},
                        {"range", "must be"});
}

TEST_F(CliArgs, SeedNegative) {
  // An unsigned option must not take -1 as 2^64 - 1.
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--seed", "-1"}}), {"--seed", "-1"},
                        {"non-negative", "must be"});
}

TEST_F(CliArgs, DeviceUnknown) {
  REQUIRE_SHARED();
  expect_one_line_error(train({{"--device", "gpu"}}), {"--device", "gpu"},
                        {"not in", "must be", "unknown"});
}

TEST_F(CliArgs, EvalSamplesZero) {
  expect_one_line_error(run_vae({"eval", "--model", "m", "--k", "0"}, dir.path()), {"--k"},
                        {"range", "must be"});
}

TEST_F(CliArgs, EvalLimitNegative) {
  expect_one_line_error(run_vae({"eval", "--model", "m", "--limit", "-2"}, dir.path()),
                        {"--limit", "-2"}, {"range", "must be"});
}

// ---------------------------------------------------------------------------
// --device cuda where CUDA is not usable

TEST(CliDevice, CudaWithoutCudaSaysSo) {
  REQUIRE_SHARED();
  TempDir dir;
  const RunResult info = run_vae({"info"}, dir.path());
  ASSERT_EQ(info.exit_code, 0) << describe(info);
  if (!contains(info.out, "CUDA device: none")) {
    GTEST_SKIP() << "this machine has a usable CUDA device";
  }
  expect_one_line_error(run_vae(train_args(shared().data, dir / "out", {{"--device", "cuda"}}),
                                dir.path()),
                        {"--device cuda"}, {"no cuda", "not compiled", "no device", "driver"});
  expect_one_line_error(run_vae({"eval", "--model", shared().model, "--data", shared().data,
                                 "--device", "cuda", "--limit", "2", "--k", "2"},
                                dir.path()),
                        {"--device cuda"}, {"no cuda", "not compiled", "no device", "driver"});
}

// ---------------------------------------------------------------------------
// Data files

class CliData : public ::testing::Test {
 protected:
  TempDir dir;
  std::string data() const { return dir / "data"; }
  RunResult train() {
    return run_vae(train_args(data(), dir / "out"), dir.path());
  }
};

TEST(CliTrain, StepOptionsAreAcceptedAndSaidOnTheStepLine) {
  REQUIRE_SHARED();
  TempDir dir;
  const RunResult r = run_vae(train_args(shared().data, dir / "out",
                                         {{"--device", "cpu"}, {"--resident-data", "off"}}),
                              dir.path());
  std::vector<std::string> args = train_args(shared().data, dir / "out2", {{"--device", "cpu"}});
  args.push_back("--tf32");
  args.push_back("--gemm-epilogues");
  args.push_back("--no-cuda-graph");
  const RunResult tf32 = run_vae(args, dir.path());
  expect_success(r);
  expect_success(tf32);
  EXPECT_TRUE(contains(r.out, "step: training images streamed batch by batch")) << r.out;
  EXPECT_TRUE(contains(tf32.out, "step: training images read in place from host memory")) << tf32.out;
  EXPECT_TRUE(contains(tf32.out, "note: --tf32 has no effect on the cpu backend")) << tf32.out;
  EXPECT_TRUE(contains(tf32.out, "note: --gemm-epilogues has no effect on the cpu backend")) << tf32.out;
  expect_one_line_error(run_vae(train_args(shared().data, dir / "out3", {{"--resident-data", "maybe"}}),
                                dir.path()),
                        {"--resident-data"}, {"maybe", "not in", "auto"});
}

TEST_F(CliData, MissingDirectory) {
  REQUIRE_SHARED();
  const std::string missing = dir / "no_such_dir";
  expect_one_line_error(run_vae(train_args(missing, dir / "out"), dir.path()), {missing},
                        {"not found", "no such", "missing"});
  expect_one_line_error(
      run_vae({"reconstruct", "--model", shared().model, "--data", missing, "--out", dir / "o"},
              dir.path()),
      {missing}, {"not found", "no such", "missing"});
}

TEST_F(CliData, MissingLabelsFile) {
  write_dataset(data());
  fs::remove(data() + "/" + kTestLabels);
  expect_one_line_error(train(), {kTestLabels}, {"not found", "no such", "missing"});
}

// Too few test images for the task images: said before the first step,
// with nothing written (it used to surface after all the training).
TEST_F(CliData, TooFewTestImagesRefusedBeforeTraining) {
  write_dataset(data());
  write_file(data() + "/" + kTestImages, idx_images(5));
  write_file(data() + "/t10k-labels-idx1-ubyte", idx_labels(5));
  const RunResult r = train();
  expect_one_line_error(r, {"test images in " + data()}, {"5 images, and the task images need 10"});
  EXPECT_FALSE(fs::exists(fs::path(dir / "out") / "model.safetensors")) << describe(r);
}

TEST_F(CliData, TruncatedImagesFile) {
  write_dataset(data());
  const std::string path = data() + "/" + kTrainImages;
  write_file(path, idx_images(kTrainCount).substr(0, 5000));
  expect_one_line_error(train(), {path}, {"truncated"});
}

TEST_F(CliData, TruncatedHeader) {
  write_dataset(data());
  const std::string path = data() + "/" + kTestImages;
  write_file(path, idx_images(kTestCount).substr(0, 3));
  expect_one_line_error(train(), {path}, {"too short", "truncated", "header"});
}

TEST_F(CliData, WrongMagicImagesFile) {
  write_dataset(data());
  const std::string path = data() + "/" + kTrainImages;
  write_file(path, idx_images(kTrainCount, 0xDEADBEEFu));
  expect_one_line_error(train(), {path}, {"magic", "not an idx"});
}

TEST_F(CliData, LabelsMagicInImagesFile) {
  write_dataset(data());
  const std::string path = data() + "/" + kTestImages;
  write_file(path, idx_labels(kTestCount));
  expect_one_line_error(train(), {path}, {"magic", "dimension"});
}

TEST_F(CliData, WrongMagicLabelsFile) {
  write_dataset(data());
  const std::string path = data() + "/" + kTrainLabels;
  write_file(path, idx_labels(kTrainCount, 0x00000803u));
  expect_one_line_error(train(), {path}, {"magic", "dimension"});
}

TEST_F(CliData, ImageAndLabelCountsDisagree) {
  write_dataset(data());
  write_file(data() + "/" + kTrainLabels, idx_labels(kTrainCount - 1));
  expect_one_line_error(train(), {kTrainImages, kTrainLabels}, {"agree", "disagree", "count"});
}

TEST_F(CliData, TestCountsDisagreeForEval) {
  REQUIRE_SHARED();
  write_dataset(data());
  write_file(data() + "/" + kTestImages, idx_images(kTestCount + 3));
  expect_one_line_error(run_vae({"eval", "--model", shared().model, "--data", data()},
                                dir.path()),
                        {kTestImages, kTestLabels}, {"agree", "disagree", "count"});
}

// ---------------------------------------------------------------------------
// Model files

class CliModel : public ::testing::Test {
 protected:
  TempDir dir;
  // Both subcommands that read a model must give the same kind of error.
  void expect_model_error(const std::string& model, std::initializer_list<std::string> why) {
    REQUIRE_SHARED();
    {
      SCOPED_TRACE("vae eval");
      expect_one_line_error(
          run_vae({"eval", "--model", model, "--data", shared().data, "--k", "2"}, dir.path()),
          {model}, why);
    }
    {
      SCOPED_TRACE("vae sample");
      const std::string out = dir / "sample_out";
      expect_one_line_error(
          run_vae({"sample", "--model", model, "--data", shared().data, "--out", out},
                  dir.path()),
          {model}, why);
      EXPECT_FALSE(fs::exists(out + "/task_3_1.png"));
    }
  }
};

TEST_F(CliModel, Missing) {
  expect_model_error(dir / "no_such.safetensors", {"no such file", "not found", "missing"});
}

TEST_F(CliModel, Truncated) {
  REQUIRE_SHARED();
  const std::string bytes = read_file(shared().model);
  ASSERT_GT(bytes.size(), 1000u);
  const std::string path = dir / "half.safetensors";
  write_file(path, bytes.substr(0, bytes.size() / 2));
  expect_model_error(path, {"truncated", "past the end", "short"});
}

TEST_F(CliModel, NotSafetensors) {
  std::string text;
  for (int i = 0; i < 20; ++i) text += "this is not a model, just some text\n";
  const std::string path = dir / "text.safetensors";
  write_file(path, text);
  expect_model_error(path, {"safetensors", "header", "not a"});
}

TEST_F(CliModel, Empty) {
  const std::string path = dir / "empty.safetensors";
  write_file(path, "");
  expect_model_error(path, {"safetensors", "header", "empty", "short", "truncated"});
}

// A valid safetensors file whose tensors' shapes disagree with its metadata:
// the metadata's latent_dim "2" becomes "3", same header length.
TEST_F(CliModel, ShapesDisagreeWithMetadata) {
  REQUIRE_SHARED();
  std::string bytes = read_file(shared().model);
  ASSERT_GT(bytes.size(), 8u);
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | static_cast<uint8_t>(bytes[i]);
  ASSERT_LE(8 + header_length, bytes.size());
  std::string header = bytes.substr(8, header_length);
  const std::string from = "\"latent_dim\":\"2\"";
  const size_t at = header.find(from);
  ASSERT_NE(at, std::string::npos) << "metadata not as expected: " << header.substr(0, 400);
  header.replace(at, from.size(), "\"latent_dim\":\"3\"");
  bytes.replace(8, header_length, header);
  const std::string path = dir / "shapes.safetensors";
  write_file(path, bytes);
  expect_model_error(path, {"shape"});
}

// ---------------------------------------------------------------------------
// Output directories

TEST(CliOutput, OutUnderARegularFile) {
  REQUIRE_SHARED();
  TempDir dir;
  write_file(dir / "file", "a regular file\n");
  const std::string out = dir / "file/sub";
  expect_one_line_error(run_vae(train_args(shared().data, out), dir.path()), {out},
                        {"cannot create", "not a directory"});
  expect_one_line_error(
      run_vae({"sample", "--model", shared().model, "--out", out}, dir.path()), {out},
      {"cannot create", "not a directory"});
}

// ---------------------------------------------------------------------------
// Help and version

// The help line of `flag` (the first line that lists it).
std::string help_line(const std::string& help, const std::string& flag) {
  std::istringstream lines(help);
  for (std::string line; std::getline(lines, line);) {
    // The flag's own line: the flag is the option name, after the indent or
    // after a short form ("-h,--help"), not a mention in another flag's text.
    const size_t at = line.find(flag);
    if (at == std::string::npos) continue;
    const size_t first = line.find_first_not_of(' ');
    if (at != first && !(at > 0 && line[at - 1] == ',')) continue;
    const size_t end = at + flag.size();
    if (end == line.size() || line[end] == ' ' || line[end] == '=') return line;
  }
  return std::string();
}

void expect_flags_with_defaults(const std::string& help,
                                const std::map<std::string, std::string>& defaults) {
  for (const auto& [flag, value] : defaults) {
    const std::string line = help_line(help, flag);
    EXPECT_FALSE(line.empty()) << "the help does not mention " << flag << "\n" << help;
    if (value.empty() || line.empty()) continue;
    const size_t at = line.find("=" + value);
    EXPECT_TRUE(at != std::string::npos &&
                (at + 1 + value.size() == line.size() || line[at + 1 + value.size()] == ' '))
        << flag << "'s help line does not show its default " << value << ": " << line;
  }
}

TEST(CliHelp, TopLevel) {
  TempDir dir;
  const RunResult r = run_vae({"--help"}, dir.path());
  expect_success(r);
  for (const char* word : {"--help", "--version", "train", "sample", "reconstruct", "interpolate",
                           "eval", "info"}) {
    EXPECT_TRUE(contains(r.out, word)) << word << " missing from\n" << r.out;
  }
}

TEST(CliHelp, Train) {
  TempDir dir;
  const RunResult r = run_vae({"train", "--help"}, dir.path());
  expect_success(r);
  expect_flags_with_defaults(r.out, {{"--data", "data/mnist"},
                                     {"--out", "runs/default"},
                                     {"--device", "auto"},
                                     {"--epochs", "30"},
                                     {"--batch-size", "200"},
                                     {"--latent-dim", "50"},
                                     {"--hidden", "200,200"},
                                     {"--lr", "0.001"},
                                     {"--seed", "0"},
                                     {"--max-steps", "0"},
                                     {"--shuffle", ""},
                                     {"--image-scale", "1"}});
  EXPECT_TRUE(contains(help_line(r.out, "--shuffle"), "default")) << r.out;
}

TEST(CliHelp, ImagesAndEval) {
  TempDir dir;
  for (const char* command : {"sample", "reconstruct", "interpolate"}) {
    const RunResult r = run_vae({command, "--help"}, dir.path());
    expect_success(r);
    expect_flags_with_defaults(r.out, {{"--model", ""},
                                       {"--data", "data/mnist"},
                                       {"--out", "runs/images"},
                                       {"--device", "auto"},
                                       {"--seed", "0"},
                                       {"--image-scale", "1"}});
  }
  const RunResult r = run_vae({"eval", "--help"}, dir.path());
  expect_success(r);
  expect_flags_with_defaults(r.out, {{"--model", ""},
                                     {"--data", "data/mnist"},
                                     {"--device", "auto"},
                                     {"--k", "100"},
                                     {"--limit", "0"},
                                     {"--seed", "0"}});
}

TEST(CliHelp, Version) {
  TempDir dir;
  const RunResult r = run_vae({"--version"}, dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, CUVAE_VERSION)) << r.out;
}

TEST(CliHelp, Info) {
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "CUDA")) << r.out;
}

// ---------------------------------------------------------------------------
// Good runs

const char* const kTaskImages[] = {"task_3_1.png",   "task_3_2.png",   "task_3_3_0.png",
                                   "task_3_3_1.png", "task_3_3_2.png", "task_3_3_3.png",
                                   "task_3_3_4.png"};

// The number after "key": in a one-line JSON object, or NaN.
double json_number(const std::string& line, const std::string& key) {
  const std::string quoted = "\"" + key + "\":";
  const size_t at = line.find(quoted);
  if (at == std::string::npos) return std::nan("");
  const char* start = line.c_str() + at + quoted.size();
  char* end = nullptr;
  const double value = std::strtod(start, &end);
  return end == start ? std::nan("") : value;
}

// The lines of `text` that start with '{'.
std::vector<std::string> json_lines(const std::string& text) {
  std::vector<std::string> found;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.front() == '{') found.push_back(line);
  }
  return found;
}

TEST(CliTrain, TinyRunWritesModelMetricsAndImages) {
  TempDir dir;
  const std::string data = dir / "data";
  write_dataset(data);
  const std::string out = dir / "run";
  const RunResult r = run_vae({"train", "--data", data, "--out", out, "--batch-size", "100",
                               "--epochs", "2", "--hidden", "16", "--latent-dim", "2",
                               "--device", "cpu"},
                              dir.path());
  expect_success(r);
  EXPECT_TRUE(fs::is_regular_file(out + "/model.safetensors"));
  for (const char* name : kTaskImages) {
    EXPECT_TRUE(is_png(out + "/" + name)) << name << " is missing or not a PNG";
  }
  EXPECT_EQ(leftover_temporaries(out), std::vector<std::string>());

  const std::string metrics = read_file(out + "/metrics.csv");
  std::istringstream lines(metrics);
  std::string line;
  ASSERT_TRUE(std::getline(lines, line));
  EXPECT_EQ(line, "epoch,objective,bound,lr,seconds,images_per_s,test_bound");
  int rows = 0;
  while (std::getline(lines, line)) {
    ++rows;
    std::istringstream fields(line);
    std::vector<std::string> cells;
    for (std::string field; std::getline(fields, field, ',');) cells.push_back(field);
    if (!line.empty() && line.back() == ',') cells.push_back("");  // the empty last cell
    ASSERT_EQ(cells.size(), 7u) << line;
    EXPECT_EQ(std::stod(cells[0]), rows) << line;
    EXPECT_EQ(cells[1], "elbo") << line;
    EXPECT_TRUE(std::isfinite(std::stod(cells[2])) && std::stod(cells[2]) < 0) << line;
    EXPECT_EQ(std::stod(cells[3]), 1e-3) << line;
    EXPECT_GE(std::stod(cells[4]), 0) << line;
    EXPECT_GT(std::stod(cells[5]), 0) << line;
    EXPECT_EQ(cells[6], "") << line << ": no --eval-every, no test bound";
  }
  EXPECT_EQ(rows, 2) << metrics;

  // The model drives every other subcommand.
  for (const auto& [command, files] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"sample", {"task_3_1.png"}},
           {"reconstruct", {"task_3_2.png"}},
           {"interpolate",
            {"task_3_3_0.png", "task_3_3_1.png", "task_3_3_2.png", "task_3_3_3.png",
             "task_3_3_4.png"}}}) {
    SCOPED_TRACE(command);
    const std::string images = dir / ("images_" + command);
    const RunResult ri = run_vae({command, "--model", out + "/model.safetensors", "--data", data,
                                  "--out", images, "--device", "cpu"},
                                 dir.path());
    expect_success(ri);
    for (const std::string& name : files) {
      EXPECT_TRUE(is_png(images + "/" + name)) << name << " is missing or not a PNG";
    }
    EXPECT_EQ(leftover_temporaries(images), std::vector<std::string>());
  }

  const RunResult re = run_vae({"eval", "--model", out + "/model.safetensors", "--data", data,
                                "--k", "5", "--limit", "10", "--device", "cpu"},
                               dir.path());
  expect_success(re);
  const std::vector<std::string> json = json_lines(re.out);
  ASSERT_EQ(json.size(), 1u) << re.out;
  EXPECT_EQ(json[0].back(), '}') << json[0];
  const double elbo = json_number(json[0], "elbo");
  const double nll = json_number(json[0], "nll");
  EXPECT_TRUE(std::isfinite(elbo)) << json[0];
  EXPECT_TRUE(std::isfinite(nll)) << json[0];
  EXPECT_LT(elbo, 0) << json[0];
  EXPECT_GT(nll, 0) << json[0];
  // The importance-sampled NLL bounds -ELBO from below (up to sampling noise).
  EXPECT_LE(nll, -elbo + 1.0) << json[0];
  EXPECT_EQ(json_number(json[0], "images"), 10) << json[0];
  EXPECT_EQ(json_number(json[0], "k"), 5) << json[0];
}

// The eval line must stay JSON whatever the model's path.
TEST(CliEval, JsonLineEscapesModelPath) {
  REQUIRE_SHARED();
  TempDir dir;
  fs::create_directories(dir / "a\"b\\c");
  const std::string model = dir / "a\"b\\c/model.safetensors";
  fs::copy_file(shared().model, model);
  const RunResult r = run_vae({"eval", "--model", model, "--data", shared().data, "--k", "2",
                               "--limit", "2", "--device", "cpu"},
                              dir.path());
  expect_success(r);
  const std::vector<std::string> json = json_lines(r.out);
  ASSERT_EQ(json.size(), 1u) << r.out;
  EXPECT_TRUE(contains(json[0], "a\\\"b\\\\c/model.safetensors")) << json[0];
  EXPECT_TRUE(std::isfinite(json_number(json[0], "elbo"))) << json[0];
}

// The real data set, when present: two steps, then eval on 10 test images.
TEST(CliMnist, TrainsAndEvaluatesOnMnist) {
  const char* env = std::getenv("CUVAE_MNIST_DIR");
  const std::string mnist = env != nullptr && *env != '\0' ? env : CUVAE_SOURCE_DIR "/data/mnist";
  bool present = true;
  for (const char* name : {kTrainImages, kTrainLabels, kTestImages, kTestLabels}) {
    present = present && (fs::exists(mnist + "/" + name) || fs::exists(mnist + "/" + name + ".gz"));
  }
  if (!present) GTEST_SKIP() << "MNIST not found in " << mnist << " (set CUVAE_MNIST_DIR)";
  TempDir dir;
  const std::string out = dir / "run";
  const RunResult r = run_vae(train_args(mnist, out, {{"--max-steps", "2"}}), dir.path());
  expect_success(r);
  const RunResult re = run_vae({"eval", "--model", out + "/model.safetensors", "--data", mnist,
                                "--k", "5", "--limit", "10", "--device", "cpu"},
                               dir.path());
  expect_success(re);
  const std::vector<std::string> json = json_lines(re.out);
  ASSERT_EQ(json.size(), 1u) << re.out;
  EXPECT_TRUE(std::isfinite(json_number(json[0], "nll"))) << json[0];
}

}  // namespace
