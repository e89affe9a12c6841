// Ctrl-C that keeps the work: the first SIGINT or SIGTERM only asks the
// training loop to stop after the current step (it then writes a checkpoint
// and exits); a second one exits at once.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace cuvae {

// Installs the SIGINT and SIGTERM handlers (and ignores SIGXFSZ, so that a
// file-size limit makes write() fail with EFBIG, which we report, instead of
// killing the process).
void install_interrupt_handlers();

// The signal that asked to stop (SIGINT or SIGTERM), or 0.
int stop_requested();

// For what a second interrupt says of a training run: its output directory
// and the step of the checkpoint of this run there (-1: none yet, so that
// nothing was saved).
void set_interrupted_run(const std::string& out_dir, int64_t checkpoint_step);
// Runs `write` (which writes the checkpoint of `step`), then records the step.
// A second interrupt meanwhile waits for it (a third does not), so that the
// step its line names is the one on disk: a signal between the rename and
// the record named the previous one (or "nothing was saved").
void commit_checkpoint(uint64_t step, const std::function<void()>& write);
// A pack's folder instead (train_pack.h): each model's checkpoint is in its
// own folder under it.
void set_interrupted_pack(const std::string& pack_dir);

}  // namespace cuvae
