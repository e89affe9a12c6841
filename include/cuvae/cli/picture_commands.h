// vae manifold and vae latents: pictures of a trained model's latent space.
//
//   manifold  DIR/manifold.png: the decoder's mean images (sigmoid of the
//             logits) on a grid x grid lattice of the prior's quantiles,
//             z = Phi^-1((i + 0.5) / grid), as Kingma & Welling (2013), Fig. 4;
//             columns z1 (left low), rows z2 (top high). For L > 2 the
//             lattice lies in the plane of the first two principal directions
//             of the test images' posterior means (from --data), centred at
//             their mean and scaled by their standard deviation along each.
//   latents   DIR/latents.png (and the points, DIR/latents.csv): the test
//             images' posterior means, the first two principal components
//             when L > 2, one colour per label, drawn by tools/plot.py.
#pragma once

#include <cstdint>
#include <string>

namespace cuvae {

struct ManifoldOptions {
  std::string model;
  std::string data = "data/mnist";  // read only when L > 2
  std::string out = "runs/images";
  std::string device = "auto";
  int grid = 20;   // kMinGrid..kMaxGrid
  int scale = 1;   // integer upscaling of each digit, 1..16
  uint64_t seed = 0;  // the test set's fixed binarization (L > 2)
  static constexpr int kMinGrid = 2;
  static constexpr int kMaxGrid = 100;
};

struct LatentsOptions {
  std::string model;
  std::string data = "data/mnist";
  std::string out = "runs/images";
  std::string device = "auto";
  uint64_t seed = 0;  // the test set's fixed binarization
};

// Each prints what it drew and returns 0; throws cuvae::Error (one line,
// naming the flag or file) on bad input, before writing anything.
int run_manifold_command(const ManifoldOptions& options);
int run_latents_command(const LatentsOptions& options);

}  // namespace cuvae
