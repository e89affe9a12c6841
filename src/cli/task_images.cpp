#include "cuvae/cli/task_images.h"

#include <algorithm>
#include <vector>

#include "cuvae/error.h"
#include "cuvae/model/evaluate.h"

namespace cuvae {

namespace {

constexpr int kReconstructions = 10;
constexpr int kInterpolations = 5;
constexpr int kInterpolationSteps = 25;

// sigmoid of `rows` rows of decoder logits, on the host.
std::vector<float> probabilities(Backend& backend, const float* logits, int rows, int dim) {
  std::vector<float> p(static_cast<size_t>(rows) * dim);
  backend.copy_to_host(p.data(), logits, p.size() * sizeof(float));
  for (float& v : p) v = sigmoid(v);
  return p;
}

void require_test_images(const IdxImages& test, int needed, int dim, const std::string& what = "the test set") {
  if (test.count < needed) {
    throw Error(what + ": " + std::to_string(test.count) + " images, and the task images need " +
                std::to_string(needed));
  }
  if (test.pixels_per_image() != dim) {
    throw Error(what + ": images of " + std::to_string(test.pixels_per_image()) +
                " pixels, but the model expects " + std::to_string(dim));
  }
}

std::string join(const std::string& dir, const std::string& name) { return dir + "/" + name; }

// Digits are square (MNIST's 28 x 28); the model records only the pixel count.
int square_side(int pixels) {
  int side = 1;
  while ((side + 1) * (side + 1) <= pixels) ++side;
  if (side * side != pixels) {
    throw Error("cannot draw images of " + std::to_string(pixels) + " pixels: not a square");
  }
  return side;
}

}  // namespace

void check_task_image_inputs(const IdxImages& test, int input_dim, const std::string& what) {
  square_side(input_dim);
  require_test_images(test, std::max(kReconstructions, 2 * kInterpolations), input_dim, what);
}

std::vector<std::string> write_prior_samples(VaeModel& model, const std::string& out_dir,
                                             uint64_t seed, const GridOptions& grid) {
  Backend& backend = model.backend();
  const Architecture& arch = model.architecture();
  const int n = kTaskImageRows;
  // Ancestral: the top layer's prior, then each p(h_{s-1}|h_s) (one layer: z ~ N(0, I)).
  DeviceArray<float> noise(backend, static_cast<size_t>(n) * arch.noise_per_sample());
  backend.fill_normal(noise.get(), noise.size(), 0, RandomKey{seed, RandomStream::kPrior, 0});
  const float* logits = model.sample_logits(noise.get(), n);
  const std::string path = join(out_dir, "task_3_1.png");
  const int side = square_side(arch.input_dim);
  write_png_grid(path, probabilities(backend, logits, n, arch.input_dim), side, side, grid);
  return {path};
}

std::vector<std::string> write_reconstructions(VaeModel& model, const IdxImages& test,
                                               const std::string& out_dir, uint64_t seed,
                                               const GridOptions& grid) {
  Backend& backend = model.backend();
  const Architecture& arch = model.architecture();
  const int n = kReconstructions;
  require_test_images(test, n, arch.input_dim);
  DeviceArray<float> x(backend, static_cast<size_t>(n) * arch.input_dim);
  DeviceArray<float> eps(backend, static_cast<size_t>(n) * arch.noise_per_sample());
  binarize_fixed(backend, test, 0, n, seed, x.get());
  backend.fill_normal(eps.get(), eps.size(), 0, RandomKey{seed, RandomStream::kReconstructEps, 0});
  model.forward_backward(x.get(), eps.get(), n, false);
  // The originals as gray levels, then their reconstructions.
  std::vector<float> images(test.pixels.begin(),
                            test.pixels.begin() + static_cast<long>(n) * arch.input_dim);
  for (float& v : images) v /= 255.0f;
  const std::vector<float> recon = probabilities(backend, model.logits(), n, arch.input_dim);
  images.insert(images.end(), recon.begin(), recon.end());
  const std::string path = join(out_dir, "task_3_2.png");
  write_png_grid(path, images, test.rows, test.cols, grid);
  return {path};
}

std::vector<std::string> write_interpolations(VaeModel& model, const IdxImages& test,
                                              const std::string& out_dir, uint64_t seed,
                                              const GridOptions& grid) {
  Backend& backend = model.backend();
  const Architecture& arch = model.architecture();
  const int latent = arch.latent_dim;
  require_test_images(test, 2 * kInterpolations, arch.input_dim);
  DeviceArray<float> x(backend, static_cast<size_t>(2 * kInterpolations) * arch.input_dim);
  binarize_fixed(backend, test, 0, 2 * kInterpolations, seed, x.get());
  std::vector<float> encoded(static_cast<size_t>(2 * kInterpolations) * 2 * latent);
  backend.copy_to_host(encoded.data(), model.encode(x.get(), 2 * kInterpolations),
                       encoded.size() * sizeof(float));
  DeviceArray<float> z(backend, static_cast<size_t>(kInterpolationSteps) * latent);
  std::vector<float> host_z(z.size());
  std::vector<std::string> paths;
  for (int i = 0; i < kInterpolations; ++i) {
    // The means: the first L of each encoder output row.
    const float* z1 = encoded.data() + static_cast<size_t>(2 * i) * 2 * latent;
    const float* z2 = encoded.data() + static_cast<size_t>(2 * i + 1) * 2 * latent;
    for (int step = 0; step < kInterpolationSteps; ++step) {
      const float s = 1.0f - static_cast<float>(step) / (kInterpolationSteps - 1);
      for (int j = 0; j < latent; ++j) {
        host_z[static_cast<size_t>(step) * latent + j] = s * z1[j] + (1.0f - s) * z2[j];
      }
    }
    backend.copy_to_device(z.get(), host_z.data(), host_z.size() * sizeof(float));
    const float* logits = model.decode(z.get(), kInterpolationSteps);
    const std::string path = join(out_dir, "task_3_3_" + std::to_string(i) + ".png");
    write_png_grid(path, probabilities(backend, logits, kInterpolationSteps, arch.input_dim),
                   test.rows, test.cols, grid);
    paths.push_back(path);
  }
  return paths;
}

}  // namespace cuvae
