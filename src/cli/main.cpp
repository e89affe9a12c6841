// vae: the driver. Registers the subcommands (include/cuvae/cli/commands.h),
// parses the command line, runs the one chosen. Library errors arrive as
// cuvae::Error and become one line on stderr and a non-zero exit.
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "cuvae/backends/cpu/blas_kernel.h"
#include "cuvae/backends/cpu/denormals.h"
#include "cuvae/build_info.h"
#include "cuvae/cli/commands.h"
#include "cuvae/error.h"

namespace {

using cuvae::Command;
using cuvae::Error;

// An error line's text, control bytes (a newline or an escape sequence in
// a flag's value or a path) shown as \xNN: one line, whatever was typed.
// Text from files is escaped where it is quoted (printable_excerpt).
std::string shown(const std::string& text) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (const char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

// A closed stdin, stdout or stderr would be reused by the first file the
// command opens (a checkpoint, the lock file), which printf would then
// write into. They are held open on /dev/null; a closed stdout, where the
// results go, is refused: exit status 2 (false when it is).
bool standard_descriptors_open() {
  bool stdout_open = true;
  for (const int fd : {0, 1, 2}) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    if (fd == 1) stdout_open = false;
    const int null_fd = ::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
    if (null_fd >= 0 && null_fd != fd) {
      ::dup2(null_fd, fd);
      ::close(null_fd);
    }
  }
  if (!stdout_open) {
    std::cerr << "vae: error: standard output is closed: the command's output would be lost (redirect it to a "
                 "file, or to /dev/null to discard it)\n";
  }
  return stdout_open;
}

// stdout carries the results (eval's line, info, train's log): a write that
// failed (a full disk, /dev/full) is an error, not an exit status 0 with
// nothing written.
int check_standard_output(int status) {
  errno = 0;
  const bool flushed = std::fflush(stdout) == 0;
  const int saved = errno;
  if (flushed && std::ferror(stdout) == 0 && !std::cout.fail()) return status;
  std::cerr << "vae: error: cannot write to standard output"
            << (saved != 0 ? std::string(": ") + std::strerror(saved) : std::string())
            << "; the command's output is lost\n";
  return status != 0 ? status : 1;
}

// OpenBLAS's kernel and OpenMP's waiting, before anything computes: may
// restart the binary. A non-zero exit status on a bad environment value.
int choose_cpu_kernels(int argc, char** argv) {
  try {
    bool refused = false;
    for (const cuvae::EnvFinding& finding : cuvae::check_environment_at_startup()) {
      std::cerr << (finding.error ? "vae: error: " : "vae: warning: ") << shown(finding.message) << "\n";
      refused = refused || finding.error;
    }
    if (refused) return 2;
    const std::string command = argc > 1 ? argv[1] : "";
    cuvae::select_blas_kernel_at_startup(argv, command == "train" || command == "eval" || command == "bench");
  } catch (const Error& e) {
    std::cerr << "vae: error: " << shown(e.what()) << "\n";
    return 2;
  }
  return 0;
}

// Every subcommand, in the order --help lists them.
std::vector<Command> add_commands(CLI::App& app) {
  std::vector<Command> commands = {cuvae::add_train_command(app)};
  for (Command& image : cuvae::add_image_commands(app)) commands.push_back(std::move(image));
  for (auto add : {cuvae::add_eval_command, cuvae::add_manifold_command, cuvae::add_latents_command,
                   cuvae::add_bench_command, cuvae::add_info_command}) {
    commands.push_back(add(app));
  }
  return commands;
}

// "train, sample, ... or info".
std::string subcommand_names(const std::vector<Command>& commands) {
  std::string names;
  for (size_t i = 0; i < commands.size(); ++i) {
    if (i > 0) names += i + 1 == commands.size() ? " or " : ", ";
    names += commands[i].app->get_name();
  }
  return names;
}

// Parses the command line; the exit status when that ends the run (help,
// version, a flag error: one line on stderr), else nothing.
std::optional<int> parse_command_line(CLI::App& app, const std::vector<Command>& commands, int argc,
                                      char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ExtrasError& e) {
    const std::vector<std::string> extras = app.remaining();
    if (app.get_subcommands().empty() && !extras.empty() && extras.front().rfind("-", 0) != 0) {
      std::cerr << "vae: error: unknown subcommand '" << shown(extras.front()) << "'; expected "
                << subcommand_names(commands) << " (see vae --help)\n";
    } else {
      std::cerr << "vae: error: " << shown(e.what()) << " (see vae --help)\n";
    }
    return 2;
  } catch (const CLI::ArgumentMismatch& e) {
    // CLI11 says "--seed: At Most 1 required but received 2" of a repeated flag.
    const std::string what = e.what(), marker = ": At Most 1 required but received ";
    const size_t at = what.find(marker);
    if (at != std::string::npos) {
      std::cerr << "vae: error: " << shown(what.substr(0, at)) << " given " << what.substr(at + marker.size())
                << " times; give it once (see vae --help)\n";
    } else {
      std::cerr << "vae: error: " << shown(what) << " (see vae --help)\n";
    }
    return 2;
  } catch (const CLI::ParseError& e) {
    std::cerr << "vae: error: " << shown(e.what()) << " (see vae --help)\n";
    return 2;
  }
  if (app.get_subcommands().empty()) {
    std::cerr << "vae: error: a subcommand is required: " << subcommand_names(commands) << " (see vae --help)\n";
    return 2;
  }
  return std::nullopt;
}

// Runs the parsed subcommand; its errors become one line on stderr.
int run_chosen(const std::vector<Command>& commands) {
  try {
    for (const Command& command : commands) {
      if (command.app->parsed()) return command.run();
    }
  } catch (const Error& e) {
    std::cout.flush();
    std::cerr << "vae: error: " << shown(e.what()) << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "vae: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "vae: error: " << shown(e.what()) << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (!standard_descriptors_open()) return 2;
  CLI::App app{"cuvae: a Variational Autoencoder on MNIST (the seed's model), CPU and CUDA"};
  // At most one; "none" is reported after parsing, so that an unknown flag or
  // subcommand is named rather than hidden behind "A subcommand is required".
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", std::string("cuvae ") + CUVAE_VERSION + " (commit " + CUVAE_GIT_COMMIT + ")");
  const std::vector<Command> commands = add_commands(app);
  if (const std::optional<int> status = parse_command_line(app, commands, argc, argv)) {
    return check_standard_output(*status);
  }
  // After parsing, so that --help, --version and a flag's error do not
  // depend on the environment (nor restart); before anything computes.
  if (const int status = choose_cpu_kernels(argc, argv)) return status;
  // After parsing (whose number checks must see a subnormal --lr as what it
  // is), before the command starts any thread, so that every thread gets it.
  cuvae::enable_flush_denormals_to_zero();
  return check_standard_output(run_chosen(commands));
}
