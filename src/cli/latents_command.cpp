// vae latents: the test set in latent space, one colour per label.
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/cli/commands.h"
#include "cuvae/cli/flags.h"
#include "cuvae/cli/picture_commands.h"
#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/io/charts.h"
#include "cuvae/io/dataset_name.h"
#include "cuvae/io/idx.h"
#include "cuvae/io/model_file.h"
#include "cuvae/model/latent_map.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {

namespace {

constexpr int kEncodeRows = 500;  // test images per encoder batch
constexpr int kLabels = 10;       // plot.py's colours

std::string fixed(double value, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, value);
  return buffer;
}

std::string shortest(double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.9g", value);
  return buffer;
}

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string text;
  for (size_t i = 0; i < parts.size(); ++i) text += (i > 0 ? separator : "") + parts[i];
  return text;
}

}  // namespace

int run_latents_command(const LatentsOptions& o) {
  const ModelFile file = load_model(o.model);  // bad models fail before the data is read
  const Architecture& arch = file.arch;
  const int latent = arch.latent_dim;
  check_latent_size_for_plane(latent, o.model, "the latent map");
  // Images and labels, their counts checked against each other.
  const MnistSplit test = load_mnist_split(o.data, false);
  if (test.images.pixels_per_image() != arch.input_dim) {
    throw Error("--data " + o.data + ": test images of " +
                std::to_string(test.images.pixels_per_image()) + " pixels, but the model expects " +
                std::to_string(arch.input_dim));
  }
  for (size_t i = 0; i < test.labels.size(); ++i) {
    if (test.labels[i] >= kLabels) {
      throw Error("--data " + o.data + ": test label " + std::to_string(i) + " is " +
                  std::to_string(test.labels[i]) + "; the latent map draws labels 0 to 9");
    }
  }
  if (latent > 2 && test.images.count < 3) {
    throw Error("--data " + o.data + ": " + std::to_string(test.images.count) +
                " test images; principal components need at least 3");
  }
  std::string dataset = "unknown";
  try {
    dataset = recognize_dataset(o.data);
  } catch (const Error&) {
    // No training images there: the labels stay numbers.
  }

  std::unique_ptr<Backend> backend = open_backend(o.device, std::cout);
  OutputDirectory out_dir(o.out, "--out", "vae latents");  // removed again if the command fails
  VaeModel model(*backend, arch, kEncodeRows);
  model.set_parameters(file.params);
  std::cout << "model: " << o.model << " (" << arch.describe() << ")\n";
  const std::vector<double> means = posterior_means(model, test.images, o.seed);

  const int n = test.images.count;
  std::vector<double> x(n), y(n);
  std::string x_name, y_name, what;
  if (latent == 2) {
    for (int i = 0; i < n; ++i) {
      x[i] = means[2 * static_cast<size_t>(i)];
      y[i] = means[2 * static_cast<size_t>(i) + 1];
    }
    x_name = "z1 (posterior mean)";
    y_name = "z2 (posterior mean)";
    what = "their posterior means (L = 2)";
  } else {
    const PrincipalPlane plane = principal_plane(means, n, latent);
    for (int i = 0; i < n; ++i) {
      project(plane, means.data() + static_cast<size_t>(i) * latent, &x[i], &y[i]);
    }
    x_name = "principal component 1 of the posterior means (" +
             fixed(100 * plane.variance_share[0], 1) + "% of their variance)";
    y_name = "principal component 2 (" + fixed(100 * plane.variance_share[1], 1) + "%)";
    what = "the first two principal components of their posterior means (L = " +
           std::to_string(latent) + ", " +
           fixed(100 * (plane.variance_share[0] + plane.variance_share[1]), 1) +
           "% of the variance)";
  }
  std::string csv = "label," + x_name + "," + y_name + "\n";
  for (int i = 0; i < n; ++i) {
    csv += std::to_string(test.labels[i]) + "," + shortest(x[i]) + "," + shortest(y[i]) + "\n";
  }
  const std::string csv_path = o.out + "/latents.csv";
  const std::string png_path = o.out + "/latents.png";
  write_file_atomically(csv_path, csv.data(), csv.size());
  std::cout << "latents: " << n << " test images (" << o.data
            << (dataset == "unknown" ? std::string() : ", " + dataset) << "), " << what
            << (arch.stochastic_layers() > 1 ? " (the first of " + std::to_string(arch.stochastic_layers()) +
                                                   " stochastic layers: q(h_1|x)'s means)"
                                             : std::string())
            << "\n";

  std::vector<std::string> args = {"latents", csv_path, png_path, "--title",
                                   std::to_string(n) + " test images in latent space, " +
                                       (latent == 2 ? std::string("posterior means")
                                                    : "first two principal components (L = " +
                                                          std::to_string(latent) + ")")};
  const std::vector<std::string> names = dataset_class_names(dataset);
  if (!names.empty()) {
    args.push_back("--label-names");
    args.push_back(join(names, ","));
  }
  std::string note;
  if (!run_plot_script(args, &note)) {
    out_dir.keep();  // latents.csv is whole and says what would have been drawn
    throw Error(png_path + " not drawn: " + note + "; the points are in " + csv_path);
  }
  out_dir.keep();
  std::cout << "wrote " << png_path << " and " << csv_path << "\n";
  return 0;
}

Command add_latents_command(CLI::App& app) {
  auto latents = std::make_shared<LatentsOptions>();
  CLI::App* latents_cmd = app.add_subcommand("latents", "Write latents.png: the test images' posterior means in 2-D (first two principal components when L > 2), coloured by label");
  add_model(latents_cmd, &latents->model);
  latents_cmd->add_option("--data", latents->data, "Directory with the MNIST IDX files, labels included")->check(non_empty())->capture_default_str();
  latents_cmd->add_option("--out", latents->out, "Output directory")->check(non_empty())->capture_default_str();
  add_device(latents_cmd, &latents->device);
  latents_cmd->add_option("--seed", latents->seed, "Seed of the test set's fixed binarization")->transform(unsigned_integer())->capture_default_str();
  return {latents_cmd, [latents] { return run_latents_command(*latents); }};
}

}  // namespace cuvae
