// Bad input end to end, continued from test_cli.cpp: unusual files (FIFOs,
// gzip with trailing garbage), out-of-range and empty flag values, the bench
// JSON file, and what a failed run leaves behind. Each bad input must give
// one line on stderr naming what is wrong and a non-zero exit, never a hang.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cuvae/io/model_file.h"
#include "cuvae/io/safetensors.h"
#include "cuvae/model/vae_model.h"
#include "vae_process.h"

namespace {

namespace fs = std::filesystem;
using namespace cuvae::testing;

// Seconds a run that should fail at once may take before it counts as a hang.
constexpr int kHangSeconds = 20;

// ---------------------------------------------------------------------------
// Unusual input files

TEST(BadInputFiles, FifoAsTrainingImagesIsRefusedNotWaitedOn) {
  TempDir dir;
  const fs::path data = dir.path() / "data";
  write_dataset(data);
  const std::string images = (data / kTrainImages).string();
  fs::remove(images);
  ASSERT_EQ(::mkfifo(images.c_str(), 0600), 0) << std::strerror(errno);
  expect_one_line_error(run_vae(train_args(data.string(), dir / "out"), dir.path(), kHangSeconds),
                        {images}, {"not a regular file"});
}

TEST(BadInputFiles, GarbageAfterGzipStreamIsRefused) {
  TempDir dir;
  const fs::path data = dir.path() / "data";
  write_dataset(data);
  const std::string plain = (data / kTrainImages).string();
  const std::string gz = plain + ".gz";
  {
    gzFile out = gzopen(gz.c_str(), "wb");
    ASSERT_NE(out, nullptr);
    const std::string bytes = read_file(plain);
    ASSERT_EQ(gzwrite(out, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    ASSERT_EQ(gzclose(out), Z_OK);
  }
  fs::remove(plain);
  expect_success(run_vae(train_args(data.string(), dir / "ok"), dir.path()));
  write_file(gz, read_file(gz) + "garbage!");
  expect_one_line_error(run_vae(train_args(data.string(), dir / "out"), dir.path()), {gz},
                        {"trailing data after the gzip stream"});
}

TEST(BadInputFiles, FifoAsModelIsRefusedNotWaitedOn) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string fifo = dir / "model.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  expect_one_line_error(
      run_vae({"sample", "--model", fifo, "--out", dir / "out", "--device", "cpu"}, dir.path(),
              kHangSeconds),
      {fifo}, {"not a regular file"});
  expect_one_line_error(run_vae({"eval", "--model", fifo, "--data", shared().data, "--k", "2",
                                 "--device", "cpu"},
                                dir.path(), kHangSeconds),
                        {fifo}, {"not a regular file"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// JSON must be UTF-8; paths need not be. The model path is in eval's JSON line.
TEST(BadInputFiles, EvalWithModelPathThatIsNotUtf8) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string bad_dir = dir / "bad\xff";
  fs::create_directories(bad_dir);
  const std::string model = bad_dir + "/m.safetensors";
  fs::copy_file(shared().model, model);
  const RunResult r = run_vae({"eval", "--model", model, "--data", shared().data, "--k", "2",
                               "--limit", "3", "--device", "cpu"},
                              dir.path());
  expect_success(r);
  const size_t brace = r.out.rfind("\n{");
  ASSERT_NE(brace, std::string::npos) << r.out;
  const nlohmann::json line = nlohmann::json::parse(r.out.substr(brace + 1));
  EXPECT_TRUE(contains(line.at("model").get<std::string>(), "bad\xEF\xBF\xBD/m.safetensors"))
      << line.dump();
}

// An error line quotes a damaged file in short, escaped excerpts: a
// safetensors header that is not JSON echoed nlohmann's internal exception
// text and the raw bytes it read, and names, values and metadata from the
// file went out raw (newlines, escape sequences, bidi controls).
std::string safetensors_with_header(const std::string& header) {
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xffu));
  return bytes + header;
}

void expect_printable_one_line_error(const RunResult& r, std::initializer_list<std::string> names,
                                     std::initializer_list<std::string> why) {
  expect_one_line_error(r, names, why);
  EXPECT_FALSE(contains(r.err, "json.exception")) << describe(r);
  for (size_t i = 0; i + 1 < r.err.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(r.err[i]);
    EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "byte " << i << " of stderr is 0x" << std::hex << int(c) << ": "
                                       << describe(r);
  }
}

TEST(BadInputFiles, DamagedModelsAreQuotedInShortEscapedExcerpts) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string model = dir / "m.safetensors";
  auto eval = [&] {
    return run_vae({"eval", "--model", model, "--data", shared().data, "--k", "1", "--device", "cpu"}, dir.path());
  };
  const std::vector<std::pair<std::string, std::string>> headers = {
      {"{\"a\":\xff\xfe\x01\x1b[2J binary", "near '{\"a\":\\xff'"},
      {"{\"\xe2\x80\xae\x1b[31m\":1}", "near '{\"\\xe2\\x80\\xae\\x1b'"},
      {"{\"\xe2\x80\xae\\u001b[31m\":1}", "tensor \"\\xe2\\x80\\xae\\x1b[31m\" is not a JSON object"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[\"\xe2\x80\xae\\n\"],\"data_offsets\":[0,0]}}", "\"\\xe2\\x80\\xae\\\\n\""},
      {"{\"t\":{\"dtype\":\"F\\u001b[2J\",\"shape\":[],\"data_offsets\":[0,4]}}", "\\x1b[2J"},
      {"{\"a\":1e999}", "a number out of range"}};
  for (const auto& [header, shown] : headers) {
    SCOPED_TRACE(header);
    write_file(model, safetensors_with_header(header));
    expect_printable_one_line_error(eval(), {model, shown}, {});
  }
  // Metadata strings, written by a valid file (JSON escapes decode to the bytes).
  cuvae::SafetensorsFile file = cuvae::read_safetensors(shared().model);
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"hidden", "8\n\x1b[2J"}, {"activation", "relu\n\xe2\x80\xae"}, {"latent_dim", "2\r\x07"}}) {
    SCOPED_TRACE(key);
    cuvae::SafetensorsFile edited = file;
    edited.metadata[key] = value;
    cuvae::write_safetensors(model, edited);
    expect_printable_one_line_error(eval(), {model, "'" + key + "'", "\\x"}, {});
  }
}

TEST(BadInputFiles, DamagedCheckpointFieldsAreQuotedEscaped) {
  REQUIRE_SHARED();
  TempDir dir;
  const fs::path run = dir.path() / "run";
  fs::create_directories(run);
  const std::string checkpoint = (run / "checkpoint.safetensors").string();
  const cuvae::SafetensorsFile good =
      cuvae::read_safetensors((fs::path(shared().model).parent_path() / "checkpoint.safetensors").string());
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"batch_size", "1\n2"}, {"lr", "0.001\x1b[2J"}, {"hidden", "8\n8"}, {"objective", "elbo\xe2\x80\xae"}}) {
    SCOPED_TRACE(key);
    cuvae::SafetensorsFile edited = good;
    edited.metadata[key] = value;
    cuvae::write_safetensors(checkpoint, edited);
    expect_printable_one_line_error(run_vae({"train", "--resume", run.string(), "--data", shared().data}, dir.path()),
                                    {checkpoint, "'" + key + "'", "\\x"}, {});
  }
}

// ---------------------------------------------------------------------------
// Flag values

class BadInputFlags : public ::testing::Test {
 protected:
  TempDir dir;
  RunResult train(const std::map<std::string, std::string>& overrides) {
    return run_vae(train_args(shared().data, dir / "out", overrides), dir.path());
  }
};

// CLI11 clamps integers beyond 64 bits to the type's limit; they must be refused.
TEST_F(BadInputFlags, IntegersBeyond64BitsAreRefused) {
  for (const std::string seed : {"18446744073709551616", "99999999999999999999999999"}) {
    expect_one_line_error(train({{"--seed", seed}}), {"--seed", seed}, {"below 2^64"});
    expect_one_line_error(run_vae({"eval", "--model", "m", "--seed", seed}, dir.path()),
                          {"--seed", seed}, {"below 2^64"});
    expect_one_line_error(run_vae({"sample", "--model", "m", "--seed", seed}, dir.path()),
                          {"--seed", seed}, {"below 2^64"});
  }
  expect_one_line_error(train({{"--checkpoint-every", "9223372036854775808"}}),
                        {"--checkpoint-every", "9223372036854775808"}, {"must be an integer from"});
  expect_one_line_error(train({{"--max-steps", "99999999999999999999999"}}),
                        {"--max-steps", "99999999999999999999999"}, {"must be an integer from"});
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST_F(BadInputFlags, LargestValuesStillAccepted) {
  REQUIRE_SHARED();
  const RunResult r = train({{"--seed", "18446744073709551615"},
                             {"--checkpoint-every", "9223372036854775807"}});
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "18446744073709551615")) << r.out;
}

// CLI11 read a leading zero as octal and 0x as hex (--batch-size 020 trained
// with batch 16, --seed 010 was seed 8, --limit 010 evaluated 8 images)
// while --hidden 020 was 20: decimal everywhere.
TEST_F(BadInputFlags, IntegersAreDecimalEverywhere) {
  REQUIRE_SHARED();
  const RunResult r = train({{"--batch-size", "020"}, {"--seed", "010"}, {"--hidden", "020"}, {"--max-steps", "02"}});
  expect_success(r);
  EXPECT_TRUE(contains(r.out, "batch 20,")) << r.out;
  EXPECT_TRUE(contains(r.out, "seed 10,")) << r.out;
  EXPECT_TRUE(contains(r.out, "(2 steps)")) << r.out;
  EXPECT_TRUE(contains(r.out, "20 hidden")|| contains(r.out, "784-20-")) << r.out;
  const RunResult e = run_vae({"eval", "--model", shared().model, "--data", shared().data, "--k", "02", "--limit",
                               "010", "--device", "cpu"},
                              dir.path());
  expect_success(e);
  EXPECT_TRUE(contains(e.out, "On 10 test images")) << e.out;
  EXPECT_TRUE(contains(e.out, "\"k\":2")) << e.out;
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--batch-size", "0x10"}, {"--seed", "0x10"}, {"--epochs", "+3"}, {"--seed", " 5"}, {"--max-steps", "1e3"},
           {"--hidden", "0x14"}, {"--latent-dim", "0b11"}}) {
    SCOPED_TRACE(flag + " " + value);
    expect_one_line_error(train({{flag, value}}), {flag}, {"decimal", "integer"});
  }
  expect_one_line_error(run_vae({"eval", "--model", shared().model, "--limit", "0x10"}, dir.path()), {"--limit"},
                        {"decimal"});
}

// Adam applies the rate as a float: a subnormal one trains nothing.
TEST_F(BadInputFlags, LearningRateThatIsNotANormalFloat) {
  for (const std::string lr : {"1e-320", "1e-39", "1e39"}) {
    expect_one_line_error(train({{"--lr", lr}}), {"--lr", lr}, {"normal single-precision"});
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST_F(BadInputFlags, EmptyPathsAreRefusedNamingTheFlag) {
  const std::string data = dir / "data";
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"--out", train_args(data, "")},
      {"--data", train_args("", dir / "out")},
      {"--resume", [&] {
         std::vector<std::string> args = train_args(data, dir / "out");
         args.insert(args.end(), {"--resume", ""});
         return args;
       }()},
      {"--model", {"sample", "--model", ""}},
      {"--out", {"sample", "--model", "m", "--out", ""}},
      {"--data", {"reconstruct", "--model", "m", "--data", ""}},
      {"--model", {"eval", "--model", ""}},
      {"--data", {"eval", "--model", "m", "--data", ""}},
      {"--bounds", {"eval", "--model", "m", "--bounds", ""}},  // was accepted silently
      {"--data", {"bench", "--device", "cpu", "--batch-sizes", "10", "--warmup", "0", "--steps",
                  "1", "--repeats", "1", "--data", ""}},
      {"--json", {"bench", "--device", "cpu", "--batch-sizes", "10", "--warmup", "0", "--steps",
                  "1", "--repeats", "1", "--json", ""}},
  };
  for (const auto& [flag, args] : cases) {
    SCOPED_TRACE(flag);
    expect_one_line_error(run_vae(args, dir.path()), {flag}, {"must not be empty"});
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// The memory refusal named --samples and --batch-size whatever dominated
// ("--samples 1 with --batch-size 20 needs 129.58 GiB" for --hidden
// 65536,65536), and bench's named --batch-size, which bench does not have.
TEST_F(BadInputFlags, TheMemoryRefusalNamesTheFlagsThatDominate) {
  REQUIRE_SHARED();
  const RunResult parameters = train({{"--hidden", "65536,65536"}, {"--latent-dim", "65536"}, {"--batch-size", "20"}});
  expect_one_line_error(parameters, {"--hidden 65536,65536 and --latent-dim 65536 needs", "parameters"}, {"memory"});
  EXPECT_FALSE(contains(parameters.err, "--samples 1 with")) << parameters.err;
  const RunResult activations = train({{"--batch-size", "400"}, {"--samples", "100000"}});
  expect_one_line_error(activations, {"--batch-size 400 with --samples 100000 needs", "activations"}, {"memory"});
  const RunResult grouped = train({{"--batch-size", "400"}, {"--objective", "miwae"}, {"--outer-samples", "100"},
                                   {"--samples", "1000"}});
  expect_one_line_error(grouped, {"--outer-samples 100 x --samples 1000"}, {"memory"});
  const RunResult bench = run_vae({"bench", "--device", "cpu", "--data", dir / "none", "--batch-sizes", "10,10000",
                                   "--samples", "100000", "--warmup", "0", "--steps", "1", "--repeats", "1"},
                                  dir.path());
  expect_one_line_error(bench, {"batch 10000 of --batch-sizes with --samples 100000"}, {"memory"});
  EXPECT_FALSE(contains(bench.out, "GFLOP/s")) << "benchmarked first: " << bench.out;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// Found by the adversarial pass: a newline or an escape sequence typed into
// a flag's value or a path went out raw ("--lr: '1e-3<newline>' is not a
// number": two lines; ESC [2J cleared the terminal).
TEST_F(BadInputFlags, ControlBytesInValuesAreShownEscaped) {
  REQUIRE_SHARED();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {train_args(dir / "data", dir / "out", {{"--lr", "1e-3\n"}}), "1e-3\\x0a"},
      {train_args(dir / "data", dir / "out", {{"--objective", "iwae\x1b[2J"}}), "iwae\\x1b[2J"},
      {train_args(dir / "data", dir / "out", {{"--device", "\acpu"}}), "\\x07cpu"},
      {{"eval", "--model", "m\n.safetensors"}, "m\\x0a.safetensors"},
      {{"eval", "--model", shared().model, "--data", dir / "da\x1bta"}, "da\\x1bta"},
      {{"x\x1b[2Jy"}, "x\\x1b[2Jy"}};
  for (const auto& [args, shown] : cases) {
    SCOPED_TRACE(shown);
    expect_printable_one_line_error(run_vae(args, dir.path()), {shown}, {});
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// A checkpoint passed as a model said "not a cuvae model": say what it is
// and which file to pass.
TEST_F(BadInputFlags, ACheckpointPassedAsAModelIsNamed) {
  REQUIRE_SHARED();
  const std::string checkpoint = fs::path(shared().model).parent_path() / "checkpoint.safetensors";
  const std::string model = fs::path(shared().model).parent_path() / "model.safetensors";
  expect_one_line_error(run_vae({"eval", "--model", checkpoint, "--data", shared().data}, dir.path()),
                        {checkpoint, model}, {"is a training checkpoint"});
  expect_one_line_error(run_vae({"sample", "--model", checkpoint, "--out", dir / "s"}, dir.path()),
                        {checkpoint, model}, {"is a training checkpoint"});
}

// A repeated flag said "At Most 1 required but received 2".
TEST_F(BadInputFlags, ARepeatedFlagIsNamed) {
  std::vector<std::string> args = train_args(dir / "data", dir / "out");
  args.insert(args.end(), {"--seed", "1", "--seed", "2"});
  expect_one_line_error(run_vae(args, dir.path()), {"--seed given 2 times"}, {"give it once"});
  expect_one_line_error(run_vae({"eval", "--model", "m", "--k", "1", "--k", "2", "--k", "3"}, dir.path()),
                        {"--k given 3 times"}, {"give it once"});
}

TEST_F(BadInputFlags, UnknownSubcommandListsEverySubcommand) {
  const RunResult r = run_vae({"bogus"}, dir.path());
  expect_one_line_error(r, {"bogus", "train", "sample", "reconstruct", "interpolate", "eval",
                            "bench", "info"},
                        {"unknown subcommand"});
  expect_one_line_error(run_vae({}, dir.path()), {"bench", "info"}, {"subcommand is required"});
}

// ---------------------------------------------------------------------------
// bench --json

class BadInputBenchJson : public ::testing::Test {
 protected:
  TempDir dir;
  RunResult bench(const std::string& json, const std::string& data = "no-such-data") {
    return run_vae({"bench", "--device", "cpu", "--data", data, "--batch-sizes", "10", "--warmup",
                    "0", "--steps", "1", "--repeats", "1", "--json", json},
                   dir.path());
  }
};

// bench --data with a truncated, wrong-magic or corrupt-gzip training file
// exited 0 on generated images ("no MNIST in DIR"), and said the same of a
// valid folder with fewer images than the largest batch. Damaged files are
// refused with one line; where generated images stand in, the line says why.
TEST(BadInputBenchData, DamagedFilesAreRefusedAndGeneratedImagesSayWhy) {
  TempDir dir;
  auto bench = [&](const std::string& data, const std::string& batches = "10") {
    return run_vae({"bench", "--device", "cpu", "--data", data, "--batch-sizes", batches, "--warmup", "0", "--steps",
                    "1", "--repeats", "1"},
                   dir.path());
  };
  const fs::path data = dir.path() / "data";
  write_dataset(data);  // 400 training images
  const std::string images = (data / kTrainImages).string();
  const std::string good = read_file(images);

  const RunResult mnist = bench(data.string());
  expect_success(mnist);
  EXPECT_TRUE(contains(mnist.out, "MNIST training images from " + data.string())) << mnist.out;
  const RunResult few = bench(data.string(), "10,1000");
  expect_success(few);
  EXPECT_TRUE(contains(few.out, "generated images (" + images + " has 400 images, fewer than the largest batch size, 1000)"))
      << few.out;
  const RunResult missing = bench(dir / "nowhere");
  expect_success(missing);
  EXPECT_TRUE(contains(missing.out, "generated images (" + dir / "nowhere" + " does not exist)")) << missing.out;
  fs::create_directories(dir / "empty");
  const RunResult no_files = bench(dir / "empty");
  expect_success(no_files);
  EXPECT_TRUE(contains(no_files.out, "generated images (no train-images-idx3-ubyte or train-images-idx3-ubyte.gz in"))
      << no_files.out;

  write_file(images, good.substr(0, good.size() - 100));
  expect_one_line_error(bench(data.string()), {images}, {"truncated"});
  std::string wrong_magic = good;
  wrong_magic[0] = 'P';
  write_file(images, wrong_magic);
  expect_one_line_error(bench(data.string()), {images}, {"not an IDX file"});
  fs::remove(images);
  const std::string gz = images + ".gz";
  {
    gzFile out = gzopen(gz.c_str(), "wb");
    ASSERT_NE(out, nullptr);
    ASSERT_EQ(gzwrite(out, good.data(), static_cast<unsigned>(good.size())), static_cast<int>(good.size()));
    ASSERT_EQ(gzclose(out), Z_OK);
  }
  expect_success(bench(data.string()));
  std::string corrupt = read_file(gz);
  for (size_t i = corrupt.size() / 3; i < corrupt.size() / 3 + 64; ++i) corrupt[i] = static_cast<char>(~corrupt[i]);
  write_file(gz, corrupt);
  expect_one_line_error(bench(data.string()), {gz}, {"corrupt gzip stream", "crc", "incorrect"});
  write_file(dir / "afile", "x");
  expect_one_line_error(bench(dir / "afile"), {"--data", dir / "afile"}, {"not a directory"});
}

// The path is checked before the benchmark runs, and the error says why.
TEST_F(BadInputBenchJson, UnwritablePathFailsBeforeBenchmarking) {
  fs::create_directories(dir / "adir");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"adir", "is a directory"},
      {"nope/x.json", "No such file or directory"},
      {"/dev/full", "not a regular file"},
  };
  for (const auto& [path, why] : cases) {
    const RunResult r = bench(path);
    expect_one_line_error(r, {"--json: cannot write " + path}, {why});  // the flag was not named (adversarial pass)
    EXPECT_FALSE(contains(r.out, "samples/s")) << "benchmarked first: " << r.out;
  }
}

// --data that is not UTF-8 lands in the JSON; it used to throw at the end
// and leave the old file at 0 bytes.
TEST_F(BadInputBenchJson, DataPathThatIsNotUtf8IsWrittenAtomically) {
  const std::string json = dir / "bj.json";
  write_file(json, "{\"old\":\"results\"}\n");
  const RunResult r = bench(json, "bad\xff");
  expect_success(r);
  const nlohmann::json results = nlohmann::json::parse(read_file(json));
  EXPECT_TRUE(contains(results.at("data").get<std::string>(), "bad\xEF\xBF\xBD")) << results.dump();
  EXPECT_EQ(results.at("results").size(), 1u);
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    EXPECT_FALSE(contains(entry.path().filename().string(), ".tmp.")) << entry.path();
  }
}

// `eval --per-image` naming the model replaced it with a CSV, exit 0. An
// output that is an input of the same command (same device and inode:
// another spelling, a hard link) is refused before anything is written.
TEST(BadInputOutputs, AnOutputThatIsAnInputIsRefused) {
  REQUIRE_SHARED();
  TempDir dir;
  fs::copy_file(shared().model, dir / "model.safetensors");
  fs::create_hard_link(dir / "model.safetensors", dir / "link.safetensors");
  const std::string model_bytes = read_file(dir / "model.safetensors");
  for (const std::string& output : {dir / "model.safetensors", dir / "./model.safetensors", dir / "link.safetensors"}) {
    SCOPED_TRACE(output);
    expect_one_line_error(run_vae({"eval", "--model", dir / "model.safetensors", "--data", shared().data, "--k", "1",
                                   "--device", "cpu", "--per-image", output},
                                  dir.path()),
                          {"--per-image " + output, "--model"}, {"input"});
    EXPECT_EQ(read_file(dir / "model.safetensors"), model_bytes) << "the model was replaced";
  }
  const std::string test_images = shared().data + "/t10k-images-idx3-ubyte";
  const std::string images_bytes = read_file(test_images);
  expect_one_line_error(run_vae({"eval", "--model", dir / "model.safetensors", "--data", shared().data, "--k", "1",
                                 "--device", "cpu", "--per-image", test_images},
                                dir.path()),
                        {"--per-image", "--data"}, {"input"});
  expect_one_line_error(run_vae({"bench", "--data", shared().data, "--json", test_images}, dir.path()),
                        {"--json", "--data"}, {"input"});
  EXPECT_EQ(read_file(test_images), images_bytes);
}

// --per-image with a legal 250-byte name failed after the whole evaluation
// ("File name too long": the temporary's name was longer), and
// --per-image /proc/version said "No such file or directory" without the
// flag. Output paths are checked up front by creating the temporary.
TEST(BadInputOutputs, PerImagePathsAreCheckedUpFront) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string long_name = dir / std::string(250, 'p');
  const RunResult ok = run_vae({"eval", "--model", shared().model, "--data", shared().data, "--k", "1", "--device",
                                "cpu", "--per-image", long_name},
                               dir.path());
  expect_success(ok);
  EXPECT_TRUE(contains(read_file(long_name), "image,log_likelihood\n")) << describe(ok);
  expect_one_line_error(run_vae({"eval", "--model", shared().model, "--data", shared().data, "--k", "1", "--device",
                                 "cpu", "--per-image", "/proc/version"},
                                dir.path()),
                        {"--per-image", "/proc/version"}, {"cannot"});
  expect_one_line_error(run_vae({"eval", "--model", shared().model, "--data", shared().data, "--k", "1", "--device",
                                 "cpu", "--per-image", dir / std::string(256, 'p')},
                                dir.path()),
                        {"--per-image"}, {"File name too long"});
}

// ---------------------------------------------------------------------------
// Standard output

// eval, info and train wrote into /dev/full or a closed stdout and exited 0:
// the results were lost without a word. A failed write is an error.
TEST(BadInputOutputs, AFailedWriteToStandardOutputIsAnError) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::vector<std::vector<std::string>> commands = {
      {"eval", "--model", shared().model, "--data", shared().data, "--k", "2", "--limit", "3", "--device", "cpu"},
      {"info"},
      train_args(shared().data, dir / "run")};
  for (const std::vector<std::string>& args : commands) {
    SCOPED_TRACE(args[0]);
    // (The reason where the failed write is the last: an earlier flush that
    // failed leaves only the stream's error flag.)
    expect_one_line_error(run_vae_with_stdout(args, dir.path(), "/dev/full"), {"cannot write to standard output"},
                          {"lost"});
    expect_one_line_error(run_vae_with_stdout(args, dir.path(), ""), {"standard output"}, {"closed"});
  }
  // The closed stdout is not reused for a file the command opens.
  EXPECT_FALSE(fs::exists(dir / "run/model.safetensors") &&
               contains(read_file(dir / "run/model.safetensors"), "model:"));
  // A regular file still works.
  const RunResult ok = run_vae_with_stdout({"info"}, dir.path(), dir / "info.txt");
  EXPECT_EQ(ok.exit_code, 0) << describe(ok);
  EXPECT_TRUE(contains(read_file(dir / "info.txt"), "cuvae ")) << describe(ok);
}

// ---------------------------------------------------------------------------
// What runs leave behind

// A model whose input size (10x10) does not fit MNIST-sized test images.
std::string write_model_of_100_pixels(const TempDir& dir) {
  cuvae::Architecture arch;
  arch.input_dim = 100;
  arch.hidden = {8};
  arch.latent_dim = 2;
  const std::string path = dir / "m100.safetensors";
  cuvae::save_model(path, arch, std::vector<float>(cuvae::ParameterLayout(arch).size(), 0.01f), {});
  return path;
}

TEST(BadInputOutputs, ModelThatDoesNotFitTheDataLeavesNoDirectory) {
  REQUIRE_SHARED();
  TempDir dir;
  const std::string model = write_model_of_100_pixels(dir);
  for (const std::string command : {"reconstruct", "interpolate"}) {
    SCOPED_TRACE(command);
    expect_one_line_error(run_vae({command, "--model", model, "--data", shared().data, "--out",
                                   dir / "new/deeper", "--device", "cpu"},
                                  dir.path()),
                          {}, {"pixels"});
    EXPECT_FALSE(fs::exists(dir / "new")) << "left the directories it made";
  }
  // A directory that was there before stays, and so does what it holds.
  fs::create_directories(dir / "old");
  write_file(dir / "old/keep.txt", "x");
  expect_one_line_error(run_vae({"reconstruct", "--model", model, "--data", shared().data,
                                 "--out", dir / "old/new", "--device", "cpu"},
                                dir.path()),
                        {}, {"pixels"});
  EXPECT_TRUE(fs::exists(dir / "old/keep.txt"));
  EXPECT_FALSE(fs::exists(dir / "old/new"));
}

// kill -9 during an atomic write leaves "<file>.tmp.<pid>"; the next command
// writing into the directory removes it, but not a live writer's.
TEST(BadInputOutputs, StaleTemporariesAreRemovedFromTheOutputDirectory) {
  REQUIRE_SHARED();
  TempDir dir;
  const fs::path out = dir.path() / "out";
  fs::create_directories(out);
  const std::string stale = "task_3_1.png.tmp." + std::to_string(dead_pid());
  const std::string live = "task_3_1.png.tmp." + std::to_string(::getpid());
  write_file(out / stale, "torn");
  write_file(out / live, "being written");
  expect_success(run_vae({"sample", "--model", shared().model, "--out", out.string(), "--device",
                          "cpu"},
                         dir.path()));
  EXPECT_FALSE(fs::exists(out / stale));
  EXPECT_TRUE(fs::exists(out / live));
  EXPECT_TRUE(fs::exists(out / "task_3_1.png"));
}

// train too: a run that fails before writing anything leaves no directory,
// and one that writes clears the temporaries of a killed run.
TEST(BadInputOutputs, TrainLeavesNoEmptyDirectoryAndClearsStaleTemporaries) {
  REQUIRE_SHARED();
  TempDir dir;
  expect_one_line_error(run_vae(train_args(shared().data, dir / "new/run", {{"--batch-size", "1000000"}}), dir.path()),
                        {"--batch-size"}, {"between 1 and the number of training images"});
  EXPECT_FALSE(fs::exists(dir / "new")) << "left the directories it made";
  const fs::path out = dir.path() / "out";
  fs::create_directories(out);
  const std::string stale = "checkpoint.safetensors.tmp." + std::to_string(dead_pid());
  write_file(out / stale, "torn");
  expect_success(run_vae(train_args(shared().data, out.string()), dir.path()));
  EXPECT_FALSE(fs::exists(out / stale));
  EXPECT_TRUE(fs::exists(out / "checkpoint.safetensors"));
}

}  // namespace
