// Training checkpoints: everything needed to continue a run exactly.
//
// A run's random numbers are functions of (seed, stream, step, index) and its
// batch order a function of (seed, epoch), so the state to save is the flat
// parameters, Adam's two moments, the step counter and the configuration.
// Resuming from a checkpoint gives bit-identical parameters to a run that was
// never interrupted (same backend, same thread count). Written as
// safetensors (tensors "params", "adam.m", "adam.v"; the rest in metadata),
// atomically, so a kill at any moment leaves the previous checkpoint or the
// new one, whole.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuvae/io/idx.h"
#include "cuvae/model/trainer.h"

namespace cuvae {

// The largest --image-scale (the flag's range, checked in checkpoints too).
inline constexpr int kMaxImageScale = 16;

struct TrainState {
  TrainConfig config;
  std::string data_fingerprint;  // data_fingerprint() of the training images
  uint64_t step = 0;             // steps done
  int epochs = 0;                // the run's targets, the defaults of a resume
  int64_t max_steps = 0;
  // The run's other flags, the defaults of a resume (checkpoints of earlier
  // builds: 0, 0, 1, the flags' defaults).
  int eval_every = 0;            // --eval-every
  int64_t checkpoint_every = 0;  // --checkpoint-every
  int image_scale = 1;           // --image-scale
  std::vector<float> params, adam_m, adam_v;
  // The current epoch's progress, so that its line after a resume reads as if
  // the run had not stopped.
  double epoch_elbo_sum = 0.0;
  uint64_t epoch_rows = 0;
  double epoch_seconds = 0.0;
  std::string metrics_csv;  // the rows of metrics.csv so far, one per finished epoch
  uint64_t metrics_rows = 0;  // how many (load_checkpoint counts them)
};

// Image count, shape and CRC-32 of the pixels: refuses resuming on other data.
std::string data_fingerprint(const IdxImages& images);

void save_checkpoint(const std::string& path, const TrainState& state);
// What save_checkpoint writes to `path`, as bytes.
std::vector<char> checkpoint_bytes(const std::string& path, const TrainState& state);
// Throws cuvae::Error naming the path if the file is not a whole cuvae
// checkpoint.
TrainState load_checkpoint(const std::string& path);

}  // namespace cuvae
