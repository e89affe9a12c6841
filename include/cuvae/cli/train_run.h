// One training run of `vae train`, set up and ready to train: its output
// folder (locked), data, backend, trainer and epoch loop. `vae train` runs
// one (train_command.cpp); a pack runs several side by side (train_pack.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cuvae/backends/backend.h"
#include "cuvae/cli/train_command.h"

namespace cuvae {

struct TrainData;  // the training and test images, loaded once per process

// How a run shows itself. A run alone prints its set-up lines (device, data,
// step, model, objective) and a live progress line on a terminal; a pack's
// member prefixes its lines with its name, leaves the set-up lines to the
// pack (`quiet`) and draws its training curve at its last epoch only (a
// drawing is ~0.8 s of Python, per member).
struct RunStyle {
  std::string prefix;  // "seed-3: " in a pack
  bool member = false;
  bool quiet = false;  // no set-up lines (a pack's members after the first)
  // The CPU backend's thread count follows the load (off where a pack runs
  // its members side by side, one thread each).
  bool adaptive_threads = true;
};

class PreparedRun {
 public:
  virtual ~PreparedRun() = default;
  // The next epoch to train (a resumed run's unfinished one), and the last.
  virtual int first_epoch() const = 0;
  virtual int last_epoch() const = 0;
  // Trains epoch `epoch` from where the trainer is: its steps, line, files.
  // Returns 0, or 128 + the signal when interrupted (after a checkpoint).
  virtual int train_epoch(int epoch) = 0;
  // The seed's task images and the "wrote" line; 0 or 128 + the signal.
  virtual int write_task_images() = 0;
  virtual const std::string& out() const = 0;
  virtual std::shared_ptr<const TrainData> data() const = 0;
  virtual std::string backend_name() const = 0;
};

// The training and test images of --data, for a model of `input_dim` pixels.
std::shared_ptr<const TrainData> load_train_data(const std::string& dir, int input_dim);

// Resolves the run from the flags (and its checkpoint when resuming), locks
// its folder, opens its backend and builds its trainer and loop. `data`:
// loaded here when null (then also the "data:" line), else shared (a pack).
// `backend`: opened here from --device when null, else the run's (a pack's
// member in lock step, lockstep.h). Throws cuvae::Error on bad input.
std::unique_ptr<PreparedRun> prepare_run(const TrainOptions& o, const RunStyle& style,
                                         std::shared_ptr<const TrainData> data,
                                         std::unique_ptr<Backend> backend = nullptr);

// The shortest text that reads back as `value` (0.001 and 0.00100000001
// stay apart, where std::to_string prints both as 0.001000).
std::string shortest(double value);

}  // namespace cuvae
