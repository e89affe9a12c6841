// The vae driver's subcommands. Each add_*_command registers its flags on the
// application and returns what runs it once the command line is parsed; main
// (src/cli/main.cpp) only registers, parses and runs the one chosen.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/io/model_file.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {

struct Command {
  CLI::App* app = nullptr;   // the subcommand; app->parsed() says whether it was chosen
  std::function<int()> run;  // its exit status; throws cuvae::Error on bad input or failure
};

Command add_train_command(CLI::App& app);                // src/cli/train_flags.cpp
std::vector<Command> add_image_commands(CLI::App& app);  // sample, reconstruct, interpolate
Command add_eval_command(CLI::App& app);
Command add_manifold_command(CLI::App& app);             // src/cli/manifold_command.cpp
Command add_latents_command(CLI::App& app);              // src/cli/latents_command.cpp
Command add_bench_command(CLI::App& app);                // src/cli/bench_command.cpp
Command add_info_command(CLI::App& app);

// A saved model on `backend`, for batches of up to max_rows images and
// max_samples samples each; prints its "model: PATH (ARCHITECTURE)" line.
std::unique_ptr<VaeModel> open_saved_model(Backend& backend, const std::string& path, const ModelFile& file,
                                           int max_rows, int max_samples = 1);

}  // namespace cuvae
