#include "cuvae/cli/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

namespace cuvae {

namespace {

std::atomic<int> g_stop_signal{0};
// The run's output directory (never freed) and the step its last checkpoint
// of this run holds (-1: none yet), for what a second interrupt says.
std::atomic<const char*> g_run_dir{nullptr};
std::atomic<int64_t> g_checkpoint_step{-1};
std::atomic<const char*> g_pack_dir{nullptr};

void say(const char* text) {
  size_t n = 0;
  while (text[n] != '\0') ++n;
  const ssize_t ignored = ::write(STDERR_FILENO, text, n);
  (void)ignored;
}

extern "C" void on_stop_signal(int signal_number) {
  int expected = 0;
  if (!g_stop_signal.compare_exchange_strong(expected, signal_number)) {
    // The second signal: the user means it. Only async-signal-safe calls here.
    say("\nvae: second interrupt, exiting now");
    const char* dir = g_run_dir.load();
    const int64_t step = g_checkpoint_step.load();
    const char* pack = g_pack_dir.load();
    if (pack != nullptr) {
      say("; each model of the pack in ");
      say(pack);
      say(" keeps its last checkpoint, if any (vae train --resume ");
      say(pack);
      say(" continues them)");
    } else if (dir != nullptr && step < 0) {
      say("; nothing of this run was saved: ");
      say(dir);
      say(" holds no checkpoint of it");
    } else if (dir != nullptr) {
      char digits[24];
      char* p = digits + sizeof digits;
      *--p = '\0';
      uint64_t value = static_cast<uint64_t>(step);
      do {
        *--p = static_cast<char>('0' + value % 10);
        value /= 10;
      } while (value != 0);
      say("; ");
      say(dir);
      say("/checkpoint.safetensors holds step ");
      say(p);
      say(" (vae train --resume ");
      say(dir);
      say(" continues from there)");
    }
    say("\n");
    ::_exit(128 + signal_number);
  }
}

}  // namespace

void install_interrupt_handlers() {
  static_assert(std::atomic<int>::is_always_lock_free, "the flag must be usable in a handler");
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  signal(SIGXFSZ, SIG_IGN);
}

int stop_requested() { return g_stop_signal.load(); }

void set_interrupted_run(const std::string& out_dir, int64_t checkpoint_step) {
  g_checkpoint_step.store(checkpoint_step);
  g_run_dir.store(::strdup(out_dir.c_str()));  // kept for the process's life
}

void set_interrupted_pack(const std::string& pack_dir) { g_pack_dir.store(::strdup(pack_dir.c_str())); }

void note_checkpoint_written(uint64_t step) { g_checkpoint_step.store(static_cast<int64_t>(step)); }

}  // namespace cuvae
