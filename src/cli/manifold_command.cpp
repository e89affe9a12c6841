// vae manifold: the decoder's mean images over a lattice of latent points.
#include <cmath>
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
#include "cuvae/io/idx.h"
#include "cuvae/io/model_file.h"
#include "cuvae/io/png_grid.h"
#include "cuvae/model/latent_map.h"
#include "cuvae/model/vae_math.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {

namespace {

constexpr int kEncodeRows = 500;  // test images per encoder batch (L > 2)

int square_side(int pixels, const std::string& model_path) {
  const int side = static_cast<int>(std::lround(std::sqrt(static_cast<double>(pixels))));
  if (side * side != pixels) {
    throw Error("--model " + model_path + ": images of " + std::to_string(pixels) +
                " pixels are not square; the manifold cannot draw them");
  }
  return side;
}

std::string fixed(double value, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, value);
  return buffer;
}

}  // namespace

int run_manifold_command(const ManifoldOptions& o) {
  if (o.grid < ManifoldOptions::kMinGrid || o.grid > ManifoldOptions::kMaxGrid) {
    throw Error("--grid: must be an integer from " + std::to_string(ManifoldOptions::kMinGrid) +
                " to " + std::to_string(ManifoldOptions::kMaxGrid) + ", got " +
                std::to_string(o.grid));
  }
  const ModelFile file = load_model(o.model);  // bad models fail before anything else
  const Architecture& arch = file.arch;
  const int latent = arch.latent_dim;
  if (arch.stochastic_layers() > 1) {
    // The grid is of the prior's quantiles, decoded by p(x|h_1): the first
    // layer's prior is N(0, I) only when it is the top one.
    throw Error(o.model + ": the manifold needs a model with one stochastic layer (this one has " +
                std::to_string(arch.stochastic_layers()) + ", --latent-dim " + arch.latent_dims_text() +
                "); vae latents maps the first layer's posterior means");
  }
  check_latent_size_for_plane(latent, o.model, "the manifold");
  const int side = square_side(arch.input_dim, o.model);
  // Before decoding, not when writing the picture after it.
  const int64_t picture = int64_t{o.grid} * side * o.scale;
  if (picture * picture > kMaxGridPixels) {
    throw Error("--grid " + std::to_string(o.grid) + " with --image-scale " + std::to_string(o.scale) + " makes a " +
                std::to_string(picture) + " x " + std::to_string(picture) + "-pixel picture, over the " +
                std::to_string(kMaxGridPixels) + "-pixel limit: give a smaller --grid or --image-scale (their product " +
                "at most " + std::to_string(16384 / side) + " for " + std::to_string(side) + "x" + std::to_string(side) +
                " digits)");
  }
  IdxImages test;
  if (latent > 2) test = load_mnist_split(o.data, false).images;

  std::unique_ptr<Backend> backend = open_backend(o.device, std::cout);
  OutputDirectory out_dir(o.out, "--out", "vae manifold");  // removed again if the command fails
  const int rows_needed = std::max(o.grid, latent > 2 ? kEncodeRows : 1);
  VaeModel model(*backend, arch, rows_needed);
  model.set_parameters(file.params);
  std::cout << "model: " << o.model << " (" << arch.describe() << ")\n";

  // The lattice: u_i = Phi^-1((i + 0.5) / grid), i = 0..grid-1.
  std::vector<double> u(static_cast<size_t>(o.grid));
  for (int i = 0; i < o.grid; ++i) u[i] = normal_quantile((i + 0.5) / o.grid);
  // z(a, b) = origin + a * axis[0] + b * axis[1].
  std::vector<double> origin(latent, 0.0);
  std::vector<double> axis[2] = {std::vector<double>(latent, 0.0), std::vector<double>(latent, 0.0)};
  if (latent == 2) {
    axis[0][0] = 1.0;
    axis[1][1] = 1.0;
    std::cout << "manifold: " << o.grid << " x " << o.grid
              << " decoder means at the prior's quantiles Phi^-1((i+0.5)/" << o.grid
              << ") of z1 (columns, left to right) and z2 (rows, top high), z from "
              << fixed(u.front(), 2) << " to " << fixed(u.back(), 2) << "\n";
  } else {
    if (test.pixels_per_image() != arch.input_dim) {
      throw Error("--data " + o.data + ": test images of " +
                  std::to_string(test.pixels_per_image()) + " pixels, but the model expects " +
                  std::to_string(arch.input_dim));
    }
    const std::vector<double> means = posterior_means(model, test, o.seed);
    const PrincipalPlane plane = principal_plane(means, test.count, latent);
    origin = plane.mean;
    for (int k = 0; k < 2; ++k) {
      for (int j = 0; j < latent; ++j) axis[k][j] = plane.sd[k] * plane.direction[k][j];
    }
    std::cout << "manifold: L = " << latent << " > 2, so the lattice lies in the plane of the "
              << "first two principal directions of the " << test.count
              << " test images' posterior means (" << o.data << ", "
              << fixed(100 * plane.variance_share[0], 1) << "% and "
              << fixed(100 * plane.variance_share[1], 1)
              << "% of their variance), centred at their mean: z = mean + a sd1 d1 + b sd2 d2, "
              << "a (columns) and b (rows, top high) at Phi^-1((i+0.5)/" << o.grid
              << "), sd1 = " << fixed(plane.sd[0], 3) << ", sd2 = " << fixed(plane.sd[1], 3)
              << "\n";
  }

  // One grid row (top: the largest b) per decoder call.
  const size_t pixels = static_cast<size_t>(arch.input_dim);
  std::vector<float> images(static_cast<size_t>(o.grid) * o.grid * pixels);
  std::vector<float> host_z(static_cast<size_t>(o.grid) * latent);
  DeviceArray<float> z(*backend, host_z.size());
  std::vector<float> logits(static_cast<size_t>(o.grid) * pixels);
  for (int row = 0; row < o.grid; ++row) {
    const double b = u[o.grid - 1 - row];
    for (int col = 0; col < o.grid; ++col) {
      for (int j = 0; j < latent; ++j) {
        host_z[static_cast<size_t>(col) * latent + j] =
            static_cast<float>(origin[j] + u[col] * axis[0][j] + b * axis[1][j]);
      }
    }
    backend->copy_to_device(z.get(), host_z.data(), host_z.size() * sizeof(float));
    backend->copy_to_host(logits.data(), model.decode(z.get(), o.grid), logits.size() * sizeof(float));
    for (size_t i = 0; i < logits.size(); ++i) {
      images[static_cast<size_t>(row) * o.grid * pixels + i] = sigmoid(logits[i]);
    }
  }
  GridOptions grid;
  grid.per_row = o.grid;
  grid.padding = 0;  // one seamless picture, as Kingma & Welling's
  grid.scale = o.scale;
  const std::string path = o.out + "/manifold.png";
  write_png_grid(path, images, side, side, grid);
  out_dir.keep();
  std::cout << "wrote " << path << " (" << o.grid * side * o.scale << " x "
            << o.grid * side * o.scale << " pixels)\n";
  return 0;
}

Command add_manifold_command(CLI::App& app) {
  auto manifold = std::make_shared<ManifoldOptions>();
  CLI::App* manifold_cmd = app.add_subcommand("manifold", "Write manifold.png: decoder means over a grid of the prior's quantiles (Kingma & Welling, Fig. 4); L > 2: in the test set's first two principal directions");
  add_model(manifold_cmd, &manifold->model);
  manifold_cmd->add_option("--data", manifold->data, "Directory with the MNIST IDX files (read when L > 2)")->check(non_empty())->capture_default_str();
  manifold_cmd->add_option("--out", manifold->out, "Output directory")->check(non_empty())->capture_default_str();
  manifold_cmd->add_option("--grid", manifold->grid, "Images per side of the grid")->transform(integer_in(ManifoldOptions::kMinGrid, ManifoldOptions::kMaxGrid))->capture_default_str();
  add_device(manifold_cmd, &manifold->device);
  manifold_cmd->add_option("--seed", manifold->seed, "Seed of the test set's fixed binarization (L > 2)")->transform(unsigned_integer())->capture_default_str();
  add_image_scale(manifold_cmd, &manifold->scale);
  return {manifold_cmd, [manifold] { return run_manifold_command(*manifold); }};
}

}  // namespace cuvae
