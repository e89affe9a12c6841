// Ctrl-C that keeps the work: the first SIGINT or SIGTERM only asks the
// training loop to stop after the current step (it then writes a checkpoint
// and exits); a second one exits at once.
#pragma once

#include <cstdint>
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
// nothing was saved), then each checkpoint as it is written.
void set_interrupted_run(const std::string& out_dir, int64_t checkpoint_step);
void note_checkpoint_written(uint64_t step);
// A pack's folder instead (train_pack.h): each model's checkpoint is in its
// own folder under it.
void set_interrupted_pack(const std::string& pack_dir);

}  // namespace cuvae
