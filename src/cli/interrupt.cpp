#include "cuvae/cli/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
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

// Whether a checkpoint of a single run is being written (commit_checkpoint):
// a second interrupt then waits for it, so that what it says is what is on
// disk. kCommitDeferred: one came meanwhile, and the writer exits for it.
enum : int { kNoCommit = 0, kCommitting = 1, kCommitDeferred = 2 };
std::atomic<int> g_commit_state{kNoCommit};

void say_step(int64_t step) {
  char digits[24];
  char* p = digits + sizeof digits;
  *--p = '\0';
  uint64_t value = static_cast<uint64_t>(step);
  do {
    *--p = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0);
  say(p);
}

// The rest of the second interrupt's line, then the exit. Async-signal-safe:
// called from the handler, or from the thread that finished a checkpoint.
// `replacing_with` >= 0: a third interrupt came while the checkpoint of that
// step was still being written.
[[noreturn]] void exit_saying_what_was_saved(int signal_number, int64_t replacing_with) {
  const char* dir = g_run_dir.load();
  const int64_t step = g_checkpoint_step.load();
  const char* pack = g_pack_dir.load();
  if (pack != nullptr) {
    say("; each model of the pack in ");
    say(pack);
    say(" keeps its last checkpoint, if any (vae train --resume ");
    say(pack);
    say(" continues them)");
  } else if (dir != nullptr && step < 0 && replacing_with < 0) {
    say("; nothing of this run was saved: ");
    say(dir);
    say(" holds no checkpoint of it");
  } else if (dir != nullptr) {
    say("; ");
    say(dir);
    say("/checkpoint.safetensors holds step ");
    if (replacing_with >= 0 && step >= 0) {
      say_step(step);
      say(" or ");
    }
    say_step(replacing_with >= 0 ? replacing_with : step);
    if (replacing_with >= 0) {
      say(" (a third interrupt cut the writing of step ");
      say_step(replacing_with);
      say(" short; vae train --resume ");
      say(dir);
      say(" continues from the one there)");
    } else {
      say(" (vae train --resume ");
      say(dir);
      say(" continues from there)");
    }
  }
  say("\n");
  ::_exit(128 + signal_number);
}

std::atomic<int64_t> g_committing_step{-1};
std::atomic<int> g_second_signal{0};

extern "C" void on_stop_signal(int signal_number) {
  int expected = 0;
  if (g_stop_signal.compare_exchange_strong(expected, signal_number)) return;
  // The second signal: the user means it. Only async-signal-safe calls here.
  int committing = kCommitting;
  g_second_signal.store(signal_number);
  if (g_commit_state.compare_exchange_strong(committing, kCommitDeferred)) {
    say("\nvae: second interrupt, exiting now");  // the rest once the checkpoint is whole
    return;
  }
  if (committing == kCommitDeferred) exit_saying_what_was_saved(signal_number, g_committing_step.load());
  say("\nvae: second interrupt, exiting now");
  exit_saying_what_was_saved(signal_number, -1);
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

void commit_checkpoint(uint64_t step, const std::function<void()>& write) {
  if (g_pack_dir.load() != nullptr) {
    // A pack's members write concurrently, and its line names no step.
    write();
    return;
  }
  g_committing_step.store(static_cast<int64_t>(step));
  g_commit_state.store(kCommitting);
  try {
    write();
  } catch (...) {
    // Not written: the previous checkpoint, if any, is still the one there.
    int state = kCommitting;
    if (!g_commit_state.compare_exchange_strong(state, kNoCommit)) {
      exit_saying_what_was_saved(g_second_signal.load(), -1);
    }
    throw;
  }
  g_checkpoint_step.store(static_cast<int64_t>(step));
  int state = kCommitting;
  if (!g_commit_state.compare_exchange_strong(state, kNoCommit)) {
    exit_saying_what_was_saved(g_second_signal.load(), -1);
  }
}

}  // namespace cuvae
