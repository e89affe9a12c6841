#include "cuvae/io/charts.h"

#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>

#include "cuvae/io/executable_dir.h"

extern char** environ;

namespace cuvae {

namespace {

namespace fs = std::filesystem;

// plot.py's exit codes (see its docstring).
constexpr int kPlotNoMatplotlib = 3;
constexpr int kNotRunnable = 127;  // a shell's "command not found"

bool is_file(const fs::path& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// The last non-empty line of `text`, trimmed; "" if none.
std::string last_line(const std::string& text) {
  size_t end = text.find_last_not_of(" \t\r\n");
  if (end == std::string::npos) return std::string();
  const size_t begin = text.rfind('\n', end);
  return text.substr(begin == std::string::npos ? 0 : begin + 1,
                     end + 1 - (begin == std::string::npos ? 0 : begin + 1));
}

// How long a drawing may take: CUVAE_PLOT_TIMEOUT seconds (1 to 3600),
// else 120 (matplotlib's first import builds its font cache: ~10 s).
int plot_timeout_seconds() {
  const char* env = std::getenv("CUVAE_PLOT_TIMEOUT");
  if (env == nullptr || *env == '\0') return 120;
  char* end = nullptr;
  const long value = std::strtol(env, &end, 10);
  return *end == '\0' && value >= 1 && value <= 3600 ? static_cast<int>(value) : 120;
}

struct Outcome {
  bool timed_out = false;
  bool started = false;  // false: the program could not be run (*stderr_text says why)
  int exit_code = -1;
  std::string stderr_text;
};

// Runs program (looked up in PATH) with args, stdin from /dev/null, stdout
// discarded, stderr captured through a temporary file.
Outcome run(const std::string& program, const std::vector<std::string>& args) {
  Outcome outcome;
  const char* tmpdir = std::getenv("TMPDIR");
  const std::string pattern =
      std::string(tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp") + "/cuvae_plot_XXXXXX";
  std::vector<char> err_path(pattern.begin(), pattern.end());
  err_path.push_back('\0');
  const int err_fd = ::mkstemp(err_path.data());
  if (err_fd < 0) {
    outcome.stderr_text = "cannot make a temporary file in " + pattern + ": " + std::strerror(errno);
    return outcome;
  }
  // Unlinked at once: the child writes through its descriptor and we read
  // ours back, so a run killed while drawing leaves nothing in /tmp.
  ::unlink(err_path.data());
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, err_fd, 2);
  std::vector<std::string> storage = {program};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // Its own process group, so that a timeout ends Python and its children.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, program.c_str(), &actions, &attributes, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  if (rc != 0) {
    outcome.stderr_text = program + ": " + std::strerror(rc);
  } else {
    outcome.started = true;
    const int limit = plot_timeout_seconds();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(limit);
    int status = 0;
    for (;;) {
      const pid_t done = ::waitpid(pid, &status, WNOHANG);
      if (done == pid || (done < 0 && errno != EINTR)) break;
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(-pid, SIGKILL);
        ::kill(pid, SIGKILL);
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        outcome.timed_out = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (WIFEXITED(status)) {
      outcome.exit_code = WEXITSTATUS(status);
    } else {
      outcome.exit_code = 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    if (outcome.timed_out) {
      outcome.stderr_text = program + " did not finish in " + std::to_string(limit) +
                            " s (CUVAE_PLOT_TIMEOUT) and was stopped";
    } else {
      char buffer[4096];
      for (off_t at = 0;;) {
        const ssize_t n = ::pread(err_fd, buffer, sizeof buffer, at);
        if (n <= 0) break;
        outcome.stderr_text.append(buffer, static_cast<size_t>(n));
        at += n;
      }
    }
  }
  ::close(err_fd);
  return outcome;
}

}  // namespace

std::string find_plot_script() {
  if (const char* env = std::getenv("CUVAE_PLOT_SCRIPT"); env != nullptr && *env != '\0') {
    return is_file(env) ? std::string(env) : std::string();
  }
  const std::string exe_dir = executable_dir();
  if (!exe_dir.empty()) {
    for (const fs::path& candidate : {fs::path(exe_dir) / "tools" / "plot.py",
                                      fs::path(exe_dir) / ".." / "tools" / "plot.py"}) {
      if (is_file(candidate)) return candidate.lexically_normal().string();
    }
  }
#ifdef CUVAE_SOURCE_TOOLS_DIR
  const fs::path built_from = fs::path(CUVAE_SOURCE_TOOLS_DIR) / "plot.py";
  if (is_file(built_from)) return built_from.string();
#endif
  return std::string();
}

bool run_plot_script(const std::vector<std::string>& args, std::string* note,
                     bool* missing_library) {
  if (missing_library != nullptr) *missing_library = false;
  auto missing = [&](const std::string& why) {
    if (missing_library != nullptr) *missing_library = true;
    if (note != nullptr) *note = why;
    return false;
  };
  const std::string script = find_plot_script();
  if (script.empty()) {
    return missing("tools/plot.py not found (set CUVAE_PLOT_SCRIPT to its path)");
  }
  std::vector<std::string> script_args = {script};
  script_args.insert(script_args.end(), args.begin(), args.end());

  // The system's Python first (Debian's python3-matplotlib, which
  // tools/install_deps.sh installs), then python3 on PATH: the PATH one may
  // be a version manager's shim (pyenv's takes ~1 s to start, then lacks
  // matplotlib), and a run draws its curve more than once. Whichever drew a
  // chart is tried first from then on, for the process's life.
  static std::mutex worked_mutex;
  static std::string worked;
  std::vector<std::string> pythons;
  if (const char* env = std::getenv("CUVAE_PYTHON"); env != nullptr && *env != '\0') {
    pythons.push_back(env);
  } else {
    {
      std::lock_guard<std::mutex> lock(worked_mutex);
      if (!worked.empty()) pythons.push_back(worked);
    }
    for (const std::string candidate : {"/usr/bin/python3", "python3"}) {
      if (candidate.front() == '/' && !is_file(candidate)) continue;
      if (std::find(pythons.begin(), pythons.end(), candidate) == pythons.end()) pythons.push_back(candidate);
    }
  }
  Outcome outcome;
  for (const std::string& python : pythons) {
    outcome = run(python, script_args);
    if (outcome.started && outcome.exit_code == 0) {
      std::lock_guard<std::mutex> lock(worked_mutex);
      worked = python;
      return true;
    }
    if (outcome.timed_out) {
      if (note != nullptr) *note = outcome.stderr_text;
      return false;
    }
    // Another Python may be there, or have matplotlib (a shell's "command
    // not found" is 127); any other failure is the input's.
    const bool runnable = outcome.started && outcome.exit_code != kNotRunnable;
    if (runnable && outcome.exit_code != kPlotNoMatplotlib) break;
  }
  if (!outcome.started || outcome.exit_code == kNotRunnable) {
    const std::string why = outcome.started ? last_line(outcome.stderr_text) : outcome.stderr_text;
    return missing("cannot run python3 (" + (why.empty() ? std::string("exit status 127") : why) +
                   "; Debian: apt-get install python3-matplotlib)");
  }
  std::string line = last_line(outcome.stderr_text);
  if (line.empty()) line = "plot.py exited with status " + std::to_string(outcome.exit_code);
  if (outcome.exit_code == kPlotNoMatplotlib) return missing(line);
  if (note != nullptr) *note = line;
  return false;
}

bool draw_training_curve(const std::string& metrics_csv, const std::string& out_png,
                         std::string* note) {
  return run_plot_script({"curve", metrics_csv, out_png}, note);
}

}  // namespace cuvae
