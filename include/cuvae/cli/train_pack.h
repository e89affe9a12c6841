// A pack: several models of one shape trained side by side in one process,
// `vae train --seeds 0-7`, `--lr 1e-3,3e-4`, `--adam-eps 1e-8,1e-4` (their
// product, seeds varying fastest). Each model is a complete run in its own
// folder, OUT/NAME, NAME made of what varies ("seed-3", "lr-0.0003_seed-3"):
// every other command reads it as if trained alone, and it holds the bits it
// would have alone. OUT/pack.json lists the members; `--resume OUT` continues
// them all.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuvae/cli/train_command.h"

namespace cuvae {

struct PackMember {
  std::string name;
  uint64_t seed = 0;
  double lr = 0, adam_eps = 0;
};

// The most models one pack trains.
constexpr int kMaxPackModels = 1024;

// "0-7" or "0,3,5" (or both: "0-3,8"): each seed once, in the order given.
// Throws cuvae::Error naming --seeds.
std::vector<uint64_t> parse_seed_list(const std::string& text);
// "1e-3,3e-4": positive normal floats, each once. Throws naming `flag`.
std::vector<double> parse_rate_list(const std::string& text, const std::string& flag);

// The members the flags ask for, in order; a single model when nothing is a
// list and --seeds is not given.
std::vector<PackMember> pack_members(const TrainOptions& o);

// Whether the flags ask for a pack: --seeds, a list of several --lr or
// --adam-eps, or --resume of a pack's folder.
bool is_pack(const TrainOptions& o);

// Trains the pack; the exit status as run_train_command's, and 1 when a
// member failed (the others finish; its folder's error.txt says why).
int run_pack(const TrainOptions& o);

// OUT/pack.json's member names. Throws cuvae::Error naming the file.
std::vector<std::string> read_pack_members(const std::string& pack_dir);

}  // namespace cuvae
