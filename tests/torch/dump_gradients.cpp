// cuvae's analytic gradients of every objective, written for a comparison
// with PyTorch autograd (tools/torch/check_gradients_torch.py; ctest
// GradientsVsTorch).
//
//   cuvae_dump_gradients OUT.safetensors [--mnist DIR]
//
// For each architecture (a small one, 784-32-16-4, and the real one,
// 784-200-200-50, each with ReLU and with tanh; and two stochastic layers:
// a small one, latents 4,3 under 32,16/8,8, with ReLU and with tanh, and the
// IWAE paper's, 100,50 under 200,200/100,100, tanh) it
//   * starts from the IWAE paper's Glorot initialization and takes a few Adam
//     steps of iwae K = 5 on MNIST training batches, so the parameters are
//     those of a network that has begun to learn (at initialization the
//     posterior is nearly the prior and the importance weights nearly
//     uniform, which would test little of the weighting);
//   * fixes one batch: B binarized MNIST training images (x) and, for each K
//     in {1, 3, 5}, eps (B K rows, sample k of image b in row b K + k);
//   * runs forward_backward for elbo, iwae and iwae-dreg with each K and
//     writes cuvae's per-image bound and the gradient of
//     loss = -(1/B) sum_b bound_b for every parameter tensor.
// Without MNIST (no --mnist DIR, or DIR lacks the files) the images are
// synthetic (pixel intensities uniform in 0..255) and the metadata says so.
//
// Tensors (all F32):
//   {arch}.param.{layer}.W [in, out]   {arch}.param.{layer}.b [out]
//   {arch}.x [B, 784]                  {arch}.K{K}.eps [B K, L]  (the bottom layer's)
//   {arch}.K{K}.eps.{s} [B K, L_s]  stochastic layer s's (s = 1, 2, ...; bottom is 0)
//   {arch}.{objective}.K{K}.bound [B]
//   {arch}.{objective}.K{K}.grad.{layer}.W / .b
// With more than one stochastic layer the elbo's bound is the mean of log w
// over the K samples (cuvae's, vae_model.cpp), the others as for one layer.
// Metadata: "cases" (JSON list of {arch, hidden, latent, activation, latents,
// hidden_layers}),
// "objectives", "samples", "images", "data", "params", "commit", "backend".
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "cuvae/backends/cpu/cpu_backend.h"
#include "cuvae/build_info.h"
#include "cuvae/error.h"
#include "cuvae/io/idx.h"
#include "cuvae/io/safetensors.h"
#include "cuvae/model/philox.h"
#include "cuvae/model/trainer.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {
namespace {

constexpr int kImages = 8;          // the checked batch
constexpr int kTrainImages = 20;    // the warm-up steps' batch
constexpr int kWarmupSteps = 300;
constexpr int kSampleCounts[] = {1, 3, 5, 6};  // S, the samples per image
constexpr int kMaxSamples = 6;
// miwae and piwae split S into M groups of K: M = 2 where S is even, else
// M = S (K = 1); ciwae's beta. check_gradients_torch.py reads both from the
// file's metadata.
int outer_samples_for(int s) { return s % 2 == 0 ? 2 : s; }
constexpr double kCiwaeBeta = 0.3;
constexpr uint64_t kSeed = 20261201;

struct Case {
  std::string name;
  std::string latents, hidden;  // --latent-dim's and --hidden's spelling
  Activation activation;
};

std::string json_list(const std::vector<int>& v) { return "[" + format_widths(v) + "]"; }

std::vector<float> binarized(const IdxImages& images, int first, int count, uint64_t step) {
  const int dim = images.pixels_per_image();
  std::vector<float> x(static_cast<size_t>(count) * dim);
  const RandomKey key{kSeed, RandomStream::kBinarize, step};
  for (int i = 0; i < count; ++i) {
    const uint8_t* image = images.pixels.data() + static_cast<size_t>((first + i) % images.count) * dim;
    for (int j = 0; j < dim; ++j) {
      const size_t e = static_cast<size_t>(i) * dim + j;
      x[e] = binarize(image[j], random_uniform(key, e));
    }
  }
  return x;
}

std::vector<float> normals(RandomStream stream, uint64_t step, size_t count) {
  std::vector<float> out(count);
  const RandomKey key{kSeed, stream, step};
  for (size_t i = 0; i < count; ++i) out[i] = random_normal(key, i);
  return out;
}

void upload(Backend& backend, DeviceArray<float>& dev, const std::vector<float>& host) {
  backend.copy_to_device(dev.get(), host.data(), host.size() * sizeof(float));
}

Tensor slice(const std::string& name, const std::vector<float>& flat, size_t offset,
             std::vector<int64_t> shape) {
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  return Tensor{name, std::move(shape),
                std::vector<float>(flat.begin() + static_cast<long>(offset),
                                   flat.begin() + static_cast<long>(offset + count))};
}

void add_layers(SafetensorsFile& file, const std::string& prefix, const ParameterLayout& layout,
                const std::vector<float>& flat) {
  for (const DenseLayer& layer : layout.all_layers()) {
    file.tensors.push_back(slice(prefix + layer.name + ".W", flat, layer.weight_offset, {layer.in, layer.out}));
    file.tensors.push_back(slice(prefix + layer.name + ".b", flat, layer.bias_offset, {layer.out}));
  }
}

int run(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0) {
    std::fprintf(stderr, "usage: %s OUT.safetensors [--mnist DIR]\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  std::string mnist_dir;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--mnist") == 0 && i + 1 < argc) {
      mnist_dir = argv[++i];
    } else {
      std::fprintf(stderr, "unknown argument '%s'\n", argv[i]);
      return 2;
    }
  }
  IdxImages images;
  std::string data = "synthetic (MNIST not found)";
  if (!mnist_dir.empty()) {
    namespace fs = std::filesystem;
    const bool present = fs::exists(fs::path(mnist_dir) / "train-images-idx3-ubyte") ||
                         fs::exists(fs::path(mnist_dir) / "train-images-idx3-ubyte.gz");
    if (present) {
      images = load_mnist_split(mnist_dir, true).images;
      data = "MNIST training images (" + mnist_dir + ")";
    }
  }
  if (images.count == 0) {
    images.count = 64;
    images.rows = images.cols = 28;
    images.pixels.resize(static_cast<size_t>(images.count) * 784);
    const RandomKey key{kSeed, RandomStream::kShuffle, 0};
    for (size_t i = 0; i < images.pixels.size(); ++i) {
      images.pixels[i] = static_cast<uint8_t>(256.0f * random_uniform(key, i)) ;
    }
  }
  const std::vector<double> means = pixel_means(images);

  const std::vector<Case> cases = {
      {"small-relu", "4", "32,16", Activation::kRelu},
      {"small-tanh", "4", "32,16", Activation::kTanh},
      {"real-relu", "50", "200,200", Activation::kRelu},
      {"real-tanh", "50", "200,200", Activation::kTanh},
      {"two-small-relu", "4,3", "32,16/8,8", Activation::kRelu},
      {"two-small-tanh", "4,3", "32,16/8,8", Activation::kTanh},
      {"two-real-tanh", "100,50", "200,200/100,100", Activation::kTanh},
  };
  const std::pair<Objective, const char*> objectives[] = {
      {Objective::kElbo, "elbo"},   {Objective::kIwae, "iwae"},   {Objective::kIwaeDreg, "iwae-dreg"},
      {Objective::kMiwae, "miwae"}, {Objective::kPiwae, "piwae"}, {Objective::kCiwae, "ciwae"}};

  std::unique_ptr<Backend> backend = make_cpu_backend();
  SafetensorsFile file;
  std::string case_list = "[";
  for (const Case& c : cases) {
    Architecture arch;
    arch.input_dim = images.pixels_per_image();
    arch.set_layers(c.latents, c.hidden);
    arch.activation = c.activation;
    VaeModel model(*backend, arch, kTrainImages, kMaxSamples);
    model.initialize(kSeed, InitScheme::kGlorot, &means);

    // Warm-up: a few Adam steps of iwae K = 5.
    const ObjectiveConfig warmup{Objective::kIwae, 5};
    DeviceArray<float> x_dev(*backend, static_cast<size_t>(kTrainImages) * arch.input_dim);
    const int noise = arch.noise_per_sample();  // standard normals per sample, all layers
    DeviceArray<float> eps_dev(*backend, static_cast<size_t>(kTrainImages) * kMaxSamples * noise);
    for (int t = 1; t <= kWarmupSteps; ++t) {
      upload(*backend, x_dev, binarized(images, 1000 + t * kTrainImages, kTrainImages, t));
      upload(*backend, eps_dev, normals(RandomStream::kEps, t, static_cast<size_t>(kTrainImages) * 5 * noise));
      model.forward_backward(x_dev.get(), eps_dev.get(), kTrainImages, warmup, true);
      model.adam_update(AdamConfig{}, static_cast<uint64_t>(t));
    }

    const std::string prefix = c.name + ".";
    const std::vector<float> params = model.parameters();
    add_layers(file, prefix + "param.", model.layout(), params);
    const std::vector<float> x = binarized(images, 0, kImages, 0);
    file.tensors.push_back(Tensor{prefix + "x", {kImages, arch.input_dim}, x});
    upload(*backend, x_dev, x);
    for (int samples : kSampleCounts) {
      const size_t rows = static_cast<size_t>(kImages) * samples;
      const std::vector<float> eps = normals(RandomStream::kEvalEps, static_cast<uint64_t>(samples),
                                             rows * noise);
      // One block of rows x L_s per stochastic layer, bottom first (the model's layout).
      size_t block = 0;
      for (int l = 0; l < arch.stochastic_layers(); ++l) {
        const std::string name = prefix + "K" + std::to_string(samples) + ".eps" + (l ? "." + std::to_string(l) : "");
        file.tensors.push_back(slice(name, eps, block, {static_cast<int64_t>(rows), arch.latent_dim_of(l)}));
        block += rows * arch.latent_dim_of(l);
      }
      upload(*backend, eps_dev, eps);
      for (const auto& [objective, objective_text] : objectives) {
        const std::string key = prefix + objective_text + ".K" + std::to_string(samples) + ".";
        ObjectiveConfig config{objective, samples};
        if (has_outer_samples(objective)) {
          config.outer_samples = outer_samples_for(samples);
          config.samples = samples / config.outer_samples;
        }
        config.ciwae_beta = kCiwaeBeta;
        model.forward_backward(x_dev.get(), eps_dev.get(), kImages, config, true);
        std::vector<float> bound(kImages);
        if (objective == Objective::kElbo && arch.stochastic_layers() == 1) {
          std::vector<float> logprob(rows), kl(kImages);
          backend->copy_to_host(logprob.data(), model.row_logprob(), rows * sizeof(float));
          backend->copy_to_host(kl.data(), model.row_kl(), kImages * sizeof(float));
          for (int b = 0; b < kImages; ++b) {
            double sum = 0;
            for (int k = 0; k < samples; ++k) sum += logprob[static_cast<size_t>(b) * samples + k];
            bound[b] = static_cast<float>(sum / samples - kl[b]);
          }
        } else {
          backend->copy_to_host(bound.data(), model.row_bound(), kImages * sizeof(float));
        }
        file.tensors.push_back(Tensor{key + "bound", {kImages}, bound});
        add_layers(file, key + "grad.", model.layout(), model.gradients());
      }
    }
    std::string latents = "[", hidden_layers = "[";
    for (int l = 0; l < arch.stochastic_layers(); ++l) {
      latents += (l ? ", " : "") + std::to_string(arch.latent_dim_of(l));
      hidden_layers += (l ? ", " : "") + json_list(arch.hidden_of(l));
    }
    case_list += std::string(case_list.size() > 1 ? ", " : "") + "{\"arch\": \"" + c.name +
                 "\", \"hidden\": " + json_list(arch.hidden) + ", \"latent\": " +
                 std::to_string(arch.latent_dim) + ", \"activation\": \"" + activation_name(c.activation) +
                 "\", \"latents\": " + latents + "], \"hidden_layers\": " + hidden_layers + "]}";
    std::printf("%s: %s, %zu parameters\n", c.name.c_str(), arch.describe().c_str(), params.size());
  }
  case_list += "]";
  file.metadata["cases"] = case_list;
  file.metadata["objectives"] = "elbo,iwae,iwae-dreg,miwae,piwae,ciwae";
  file.metadata["samples"] = "1,3,5,6";
  file.metadata["outer_samples"] = "M = 2 where S is even, else M = S; K = S / M (miwae, piwae)";
  file.metadata["ciwae_beta"] = "0.3";
  file.metadata["images"] = std::to_string(kImages);
  file.metadata["data"] = data;
  file.metadata["params"] = "glorot init, then " + std::to_string(kWarmupSteps) +
                            " Adam steps (lr 1e-3) of iwae K=5, batch " + std::to_string(kTrainImages);
  file.metadata["commit"] = CUVAE_GIT_COMMIT;
  file.metadata["backend"] = backend->description();
  write_safetensors(out, file);
  std::printf("wrote %s (%zu tensors; data: %s)\n", out.c_str(), file.tensors.size(), data.c_str());
  return 0;
}

}  // namespace
}  // namespace cuvae

int main(int argc, char** argv) {
  try {
    return cuvae::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
