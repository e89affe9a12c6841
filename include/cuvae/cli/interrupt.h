// Ctrl-C that keeps the work: the first SIGINT or SIGTERM only asks the
// training loop to stop after the current step (it then writes a checkpoint
// and exits); a second one exits at once.
#pragma once

namespace cuvae {

// Installs the SIGINT and SIGTERM handlers (and ignores SIGXFSZ, so that a
// file-size limit makes write() fail with EFBIG, which we report, instead of
// killing the process).
void install_interrupt_handlers();

// The signal that asked to stop (SIGINT or SIGTERM), or 0.
int stop_requested();

}  // namespace cuvae
