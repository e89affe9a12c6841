// tools/fetch_data.sh and its wrapper tools/fetch_mnist.sh, run as a user
// would, offline: bad names and arguments, and files already in place
// (checked against their SHA-256; no network is needed for either).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "vae_process.h"

namespace {

namespace fs = std::filesystem;
using namespace cuvae::testing;

struct Script {
  int exit_code = -1;
  std::string out, err;
};

// Runs `bash SOURCE/tools/<script> args...` with stdout and stderr in files.
Script run_script(const TempDir& dir, const std::string& script, const std::string& args) {
  const std::string out = dir / ".out", err = dir / ".err";
  const std::string command = "bash '" + std::string(CUVAE_SOURCE_DIR) + "/tools/" + script + "' " +
                              args + " </dev/null >'" + out + "' 2>'" + err + "'";
  const int status = std::system(command.c_str());
  Script s;
  s.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  s.out = read_file(out);
  s.err = read_file(err);
  fs::remove(out);
  fs::remove(err);
  return s;
}

int count_lines(const std::string& text) {
  int n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

TEST(FetchData, UnknownNameIsOneErrorLineAndCreatesNothing) {
  TempDir dir;
  const std::string target = dir / "cifar";
  const Script s = run_script(dir, "fetch_data.sh", "cifar-10 '" + target + "'");
  EXPECT_EQ(s.exit_code, 2) << s.err;
  EXPECT_EQ(count_lines(s.err), 1) << s.err;
  EXPECT_TRUE(contains(s.err, "fetch_data.sh: error: unknown data set 'cifar-10'")) << s.err;
  EXPECT_TRUE(contains(s.err, "mnist, fashion-mnist")) << s.err;
  EXPECT_TRUE(s.out.empty()) << s.out;
  EXPECT_FALSE(fs::exists(target));
}

TEST(FetchData, WrongArgumentsGiveUsage) {
  TempDir dir;
  for (const std::string& args : {std::string(""), std::string("mnist"),
                                 std::string("mnist a b"), std::string("mnist -x")}) {
    const Script s = run_script(dir, "fetch_data.sh", args);
    EXPECT_EQ(s.exit_code, 2) << args;
    EXPECT_TRUE(contains(s.err, "usage:")) << args << ": " << s.err;
  }
  const Script wrapper = run_script(dir, "fetch_mnist.sh", "");
  EXPECT_EQ(wrapper.exit_code, 2);
  EXPECT_TRUE(contains(wrapper.err, "usage:")) << wrapper.err;
}

// Fashion-MNIST's four files as .gz in DIR (copied from Debian's package):
// gunzipped, checked, in place; a second run finds them.
TEST(FetchData, FashionMnistFromGzippedFilesInPlace) {
  const std::string debian = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(debian + "/t10k-labels-idx1-ubyte.gz")) {
    GTEST_SKIP() << "Debian's dataset-fashion-mnist is not installed";
  }
  TempDir dir;
  const fs::path target = dir.path() / "fashion";
  fs::create_directories(target);
  for (const char* name : {kTrainImages, kTrainLabels, kTestImages, kTestLabels}) {
    fs::copy_file(debian + "/" + name + ".gz", target / (std::string(name) + ".gz"));
  }
  const Script first = run_script(dir, "fetch_data.sh", "fashion-mnist '" + target.string() + "'");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(count_lines(first.out), 4) << first.out;
  EXPECT_TRUE(contains(first.out, "t10k-labels-idx1-ubyte: from " + target.string() +
                                      "/t10k-labels-idx1-ubyte.gz"))
      << first.out;
  EXPECT_EQ(fs::file_size(target / kTrainImages), 47040016u);
  const Script again = run_script(dir, "fetch_data.sh", "fashion-mnist '" + target.string() + "'");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_TRUE(contains(again.out, "train-images-idx3-ubyte: already in " + target.string() +
                                      " (SHA-256 ok)"))
      << again.out;
  // A wrong copy (and no .gz of it) is replaced from the installed package.
  fs::remove(target / (std::string(kTestLabels) + ".gz"));
  write_file(target / kTestLabels, "not the labels");
  const Script repaired = run_script(dir, "fetch_data.sh", "fashion-mnist '" + target.string() + "'");
  ASSERT_EQ(repaired.exit_code, 0) << repaired.err;
  EXPECT_TRUE(contains(repaired.out, "t10k-labels-idx1-ubyte: from Debian package dataset-fashion-mnist"))
      << repaired.out;
  EXPECT_TRUE(contains(repaired.out, "replacing a copy with the wrong SHA-256")) << repaired.out;
  EXPECT_EQ(fs::file_size(target / kTestLabels), 10008u);
}

// The wrapper keeps fetch_mnist.sh DIR working: MNIST already in DIR
// (symbolic links to CUVAE_MNIST_DIR's files) is found and checked.
TEST(FetchData, FetchMnistWrapperFindsFilesInPlace) {
  const char* env = std::getenv("CUVAE_MNIST_DIR");
  const std::string mnist = env != nullptr && *env != '\0' ? env : std::string(CUVAE_SOURCE_DIR) + "/data/mnist";
  for (const char* name : {kTrainImages, kTrainLabels, kTestImages, kTestLabels}) {
    if (!fs::exists(mnist + "/" + name)) GTEST_SKIP() << "uncompressed MNIST not in " << mnist;
  }
  TempDir dir;
  const fs::path target = dir.path() / "mnist";
  fs::create_directories(target);
  for (const char* name : {kTrainImages, kTrainLabels, kTestImages, kTestLabels}) {
    fs::create_symlink(fs::absolute(mnist + "/" + name), target / name);
  }
  const Script s = run_script(dir, "fetch_mnist.sh", "'" + target.string() + "'");
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(count_lines(s.out), 4) << s.out;
  EXPECT_TRUE(contains(s.out, "t10k-images-idx3-ubyte: already in " + target.string() + " (SHA-256 ok)"))
      << s.out;
}

}  // namespace
