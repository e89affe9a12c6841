// Running the vae binary as a child process from tests, and small generated
// MNIST-format data sets: shared by the end-to-end tests (test_cli.cpp,
// test_resume.cpp).
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace cuvae::testing {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Running the binary

struct RunResult {
  int exit_code = -1;   // WEXITSTATUS when the child exited normally
  int signal = 0;       // WTERMSIG when a signal ended it
  bool timed_out = false;
  std::string out;
  std::string err;
  std::string command;  // for failure messages
};

inline std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// A fresh directory under $TMPDIR (or /tmp), removed when the object dies.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                          "/cuvae_test_XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (::mkdtemp(buffer.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed: " << std::strerror(errno);
      return;
    }
    path_ = buffer.data();
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// A running vae child process; wait() collects it.
class VaeProcess {
 public:
  // Starts CUVAE_VAE_BINARY with `args` in `cwd`, stdin from /dev/null,
  // stdout and stderr into files read by wait().
  VaeProcess(const std::vector<std::string>& args, const fs::path& cwd, const std::string& tag = "")
      : out_path_(cwd / (".vae_stdout" + tag)), err_path_(cwd / (".vae_stderr" + tag)) {
    result_.command = "vae";
    for (const std::string& arg : args) result_.command += " '" + arg + "'";
    std::vector<std::string> argv_storage;
    argv_storage.push_back(CUVAE_VAE_BINARY);
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& arg : argv_storage) argv.push_back(arg.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) {
      ADD_FAILURE() << "fork failed: " << std::strerror(errno);
      return;
    }
    if (pid_ == 0) {
      // Child: only async-signal-safe calls from here on.
      const int in = ::open("/dev/null", O_RDONLY);
      const int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || out < 0 || err < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 ||
          ::dup2(err, 2) < 0 || ::chdir(cwd.c_str()) != 0) {
        ::_exit(126);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  VaeProcess(const VaeProcess&) = delete;
  VaeProcess& operator=(const VaeProcess&) = delete;
  ~VaeProcess() {
    if (pid_ > 0 && !waited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }
  void signal(int signal_number) const { ::kill(pid_, signal_number); }

  // Waits (killing it after timeout_seconds) and returns what it did.
  RunResult wait(int timeout_seconds = 120) {
    if (pid_ <= 0 || waited_) return result_;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
    int status = 0;
    for (;;) {
      const pid_t done = ::waitpid(pid_, &status, WNOHANG);
      if (done == pid_) break;
      if (done < 0 && errno != EINTR) {
        ADD_FAILURE() << "waitpid failed: " << std::strerror(errno);
        return result_;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        result_.timed_out = true;
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    waited_ = true;
    if (WIFEXITED(status)) result_.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) result_.signal = WTERMSIG(status);
    result_.out = read_file(out_path_);
    result_.err = read_file(err_path_);
    std::error_code ignored;
    fs::remove(out_path_, ignored);
    fs::remove(err_path_, ignored);
    return result_;
  }

 private:
  fs::path out_path_, err_path_;
  pid_t pid_ = -1;
  bool waited_ = false;
  RunResult result_;
};

// Sets an environment variable for the vae processes a test starts.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

// Runs vae to completion (killed after timeout_seconds).
inline RunResult run_vae(const std::vector<std::string>& args, const fs::path& cwd,
                         int timeout_seconds = 120) {
  VaeProcess process(args, cwd);
  return process.wait(timeout_seconds);
}

// Runs vae to completion with its stdout on `stdout_path` (a device such as
// /dev/full, a file) or, if empty, closed; stderr is captured. For the
// promise that a failed write of results is an error.
inline RunResult run_vae_with_stdout(const std::vector<std::string>& args, const fs::path& cwd,
                                     const std::string& stdout_path, int timeout_seconds = 120) {
  RunResult result;
  result.command = "vae";
  for (const std::string& arg : args) result.command += " '" + arg + "'";
  result.command += stdout_path.empty() ? " >&-" : " > " + stdout_path;
  const fs::path err_path = cwd / ".vae_stderr_stdout_test";
  std::vector<std::string> argv_storage = {CUVAE_VAE_BINARY};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int in = ::open("/dev/null", O_RDONLY);
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || err < 0 || ::dup2(in, 0) < 0 || ::dup2(err, 2) < 0 || ::chdir(cwd.c_str()) != 0) ::_exit(126);
    if (stdout_path.empty()) {
      ::close(1);
    } else {
      const int out = ::open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out < 0 || ::dup2(out, 1) < 0) ::_exit(126);
    }
    if (in > 2) ::close(in);
    if (err > 2) ::close(err);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  result.err = read_file(err_path);
  std::error_code ignored;
  fs::remove(err_path, ignored);
  return result;
}

inline std::string describe(const RunResult& r) {
  std::ostringstream s;
  s << r.command << "\n  exit " << r.exit_code << ", signal " << r.signal
    << (r.timed_out ? ", TIMED OUT" : "") << "\n  stdout: " << r.out << "\n  stderr: " << r.err;
  return s.str();
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Whether stderr holds a line of vae's own ("vae: error: ...", "vae:
// warning: ..."). What the machine's environment makes other libraries say
// there (libgomp on its variables, say) is not vae's to promise away.
inline bool has_vae_diagnostic(const std::string& err) {
  return err.rfind("vae: ", 0) == 0 || contains(err, "\nvae: ");
}

inline void expect_success(const RunResult& r) {
  EXPECT_FALSE(r.timed_out) << describe(r);
  EXPECT_EQ(r.signal, 0) << describe(r);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_FALSE(has_vae_diagnostic(r.err)) << describe(r);
}

// `vae info` with NAME=VALUE set, a value the start-up refuses: exit 2,
// exactly `error_line` on stderr, nothing on stdout.
inline void expect_info_refuses_env(const char* name, const char* value, const std::string& error_line) {
  ScopedEnv bad(name, value);
  TempDir dir;
  const RunResult r = run_vae({"info"}, dir.path());
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_EQ(r.err, error_line) << describe(r);
  EXPECT_EQ(r.out, "") << describe(r);
}

// ---------------------------------------------------------------------------
// Generated data

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;

inline void put_be32(std::string* bytes, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    bytes->push_back(static_cast<char>((value >> shift) & 0xffu));
  }
}

inline std::string idx_images(uint32_t count, uint32_t magic = kImagesMagic, uint32_t seed = 1) {
  std::string bytes;
  put_be32(&bytes, magic);
  put_be32(&bytes, count);
  put_be32(&bytes, 28);
  put_be32(&bytes, 28);
  std::mt19937 rng(seed);
  for (uint32_t i = 0; i < count * 28u * 28u; ++i) bytes.push_back(static_cast<char>(rng() & 0xffu));
  return bytes;
}

inline std::string idx_labels(uint32_t count, uint32_t magic = kLabelsMagic) {
  std::string bytes;
  put_be32(&bytes, magic);
  put_be32(&bytes, count);
  for (uint32_t i = 0; i < count; ++i) bytes.push_back(static_cast<char>(i % 10));
  return bytes;
}

constexpr const char* kTrainImages = "train-images-idx3-ubyte";
constexpr const char* kTrainLabels = "train-labels-idx1-ubyte";
constexpr const char* kTestImages = "t10k-images-idx3-ubyte";
constexpr const char* kTestLabels = "t10k-labels-idx1-ubyte";

constexpr uint32_t kTrainCount = 400;
constexpr uint32_t kTestCount = 20;

// A valid data set of kTrainCount + kTestCount random images in `dir`.
inline void write_dataset(const fs::path& dir) {
  fs::create_directories(dir);
  write_file(dir / kTrainImages, idx_images(kTrainCount, kImagesMagic, 1));
  write_file(dir / kTrainLabels, idx_labels(kTrainCount));
  write_file(dir / kTestImages, idx_images(kTestCount, kImagesMagic, 2));
  write_file(dir / kTestLabels, idx_labels(kTestCount));
}

// `vae train` arguments for a tiny run, with some replaced or added.
inline std::vector<std::string> train_args(const std::string& data, const std::string& out,
                                    const std::map<std::string, std::string>& overrides = {}) {
  std::vector<std::pair<std::string, std::string>> options = {
      {"--data", data},       {"--out", out},         {"--batch-size", "100"},
      {"--epochs", "1"},      {"--hidden", "8"},      {"--latent-dim", "2"},
      {"--max-steps", "1"},   {"--device", "cpu"}};
  std::map<std::string, std::string> rest = overrides;
  std::vector<std::string> args = {"train"};
  for (auto& [flag, value] : options) {
    const auto it = rest.find(flag);
    if (it != rest.end()) {
      value = it->second;
      rest.erase(it);
    }
    args.push_back(flag);
    args.push_back(value);
  }
  for (const auto& [flag, value] : rest) {
    args.push_back(flag);
    args.push_back(value);
  }
  return args;
}

// Waits until `path` exists (the child is past start-up), up to 60 s.
inline bool wait_for_file(const std::string& path) {
  for (int i = 0; i < 30000 && !fs::exists(path); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  return fs::exists(path);
}

// A PID whose process has exited and been reaped (no process has it now,
// barring reuse within the test).
inline pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

// ---------------------------------------------------------------------------
// Expectations of the end-to-end tests (test_cli.cpp, test_bad_input.cpp)

inline std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

// The promise for bad input. `names` must all appear in the line (the flag or
// file at fault); at least one of `why` (case-insensitive) must appear too
// (what is wrong).
inline void expect_one_line_error(const RunResult& r, std::initializer_list<std::string> names,
                                  std::initializer_list<std::string> why) {
  SCOPED_TRACE(describe(r));
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.signal, 0) << "the driver crashed";
  ASSERT_TRUE(r.exit_code > 0 && r.exit_code < 126) << "expected an error exit status";
  ASSERT_FALSE(r.err.empty()) << "nothing on stderr";
  EXPECT_EQ(r.err.back(), '\n') << "stderr's line is not terminated";
  const std::string line = r.err.substr(0, r.err.size() - 1);
  EXPECT_EQ(line.find('\n'), std::string::npos) << "more than one line on stderr";
  EXPECT_EQ(line.rfind("vae: error: ", 0), 0u) << "stderr does not start with 'vae: error: '";
  EXPECT_LT(line.size(), 400u) << "the error line is unreadably long";
  for (const std::string& name : names) {
    EXPECT_TRUE(contains(line, name)) << "the error does not name '" << name << "'";
  }
  bool said_why = why.size() == 0;
  for (const std::string& word : why) said_why = said_why || contains(lower(line), lower(word));
  EXPECT_TRUE(said_why) << "the error does not say what is wrong";
}


// One generated data set and one model trained on it, shared by the tests of
// a process (ctest runs each test in its own process; it takes well under a
// second to make).
struct Shared {
  TempDir dir;
  std::string data;
  std::string model;
  std::string error;  // why making it failed, if it did

  Shared() : data(dir / "data"), model(dir / "model/model.safetensors") {
    write_dataset(data);
    const RunResult r =
        run_vae(train_args(data, dir / "model", {{"--max-steps", "2"}}), dir.path());
    if (r.exit_code != 0 || r.signal != 0 || !fs::exists(model)) error = describe(r);
  }
};

// Made on first use, removed at exit.
inline const Shared& shared() {
  static const Shared instance;
  return instance;
}

#define REQUIRE_SHARED()                                                      \
  do {                                                                        \
    ASSERT_TRUE(shared().error.empty()) << "making the shared model failed: " \
                                        << shared().error;                    \
  } while (0)

}  // namespace cuvae::testing
