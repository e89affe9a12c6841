// vae sample | reconstruct | interpolate: the seed's task images from a saved
// model (include/cuvae/cli/task_images.h draws them).
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/cli/commands.h"
#include "cuvae/cli/flags.h"
#include "cuvae/cli/task_images.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/io/idx.h"
#include "cuvae/io/model_file.h"

namespace cuvae {

namespace {

struct ImageOptions {
  std::string model;
  std::string data = "data/mnist";
  std::string out = "runs/images";
  std::string device = "auto";
  uint64_t seed = 0;
  int scale = 1;
};

int run_images(const ImageOptions& o, const std::string& which) {
  const ModelFile file = load_model(o.model);  // bad models fail before anything else
  IdxImages test;
  if (which != "sample") test = load_mnist_split(o.data, false).images;
  std::unique_ptr<Backend> backend = open_backend(o.device, std::cout);
  // Removed again if the command fails (e.g. the model does not fit the data).
  OutputDirectory out_dir(o.out, "--out", "vae " + which);
  std::unique_ptr<VaeModel> model =
      open_saved_model(*backend, o.model, file, kTaskImageRows);
  GridOptions grid;
  grid.scale = o.scale;
  std::vector<std::string> paths;
  if (which == "sample") paths = write_prior_samples(*model, o.out, o.seed, grid);
  if (which == "reconstruct") paths = write_reconstructions(*model, test, o.out, o.seed, grid);
  if (which == "interpolate") paths = write_interpolations(*model, test, o.out, o.seed, grid);
  out_dir.keep();
  std::cout << "wrote";
  for (const std::string& path : paths) std::cout << " " << path;
  std::cout << "\n";
  return 0;
}

}  // namespace

std::unique_ptr<VaeModel> open_saved_model(Backend& backend, const std::string& path, const ModelFile& file,
                                           int max_rows, int max_samples) {
  auto model = std::make_unique<VaeModel>(backend, file.arch, max_rows, max_samples);
  model->set_parameters(file.params);
  std::cout << "model: " << path << " (" << file.arch.describe() << ")\n";
  return model;
}

std::vector<Command> add_image_commands(CLI::App& app) {
  auto images = std::make_shared<ImageOptions>();
  std::vector<Command> commands;
  for (const auto& [name, help] : std::vector<std::pair<std::string, std::string>>{
           {"sample", "Write task_3_1.png: 25 samples from the prior"},
           {"reconstruct", "Write task_3_2.png: 10 test images and their reconstructions"},
           {"interpolate", "Write task_3_3_0..4.png: latent interpolations between test images"}}) {
    CLI::App* cmd = app.add_subcommand(name, help);
    add_model(cmd, &images->model);
    cmd->add_option("--data", images->data, "Directory with the MNIST IDX files")->check(non_empty())->capture_default_str();
    cmd->add_option("--out", images->out, "Output directory")->check(non_empty())->capture_default_str();
    add_device(cmd, &images->device);
    cmd->add_option("--seed", images->seed, "Seed of the random draws")->transform(unsigned_integer())->capture_default_str();
    add_image_scale(cmd, &images->scale);
    commands.push_back({cmd, [images, which = name] { return run_images(*images, which); }});
  }

  return commands;
}

}  // namespace cuvae
