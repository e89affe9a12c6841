#include "cuvae/cli/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>

namespace cuvae {

namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int signal_number) {
  int expected = 0;
  if (!g_stop_signal.compare_exchange_strong(expected, signal_number)) {
    // The second signal: the user means it. Only async-signal-safe calls here.
    static const char message[] = "\nvae: second interrupt, exiting now\n";
    const ssize_t ignored = ::write(STDERR_FILENO, message, sizeof message - 1);
    (void)ignored;
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

}  // namespace cuvae
