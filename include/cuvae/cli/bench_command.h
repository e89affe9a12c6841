// `vae bench`: end-to-end training throughput of the seed's configuration.
#pragma once

#include <string>
#include <vector>

namespace cuvae {

struct BenchOptions {
  std::string data = "data/mnist";  // MNIST if there (and enough), else generated images
  std::string device = "all";       // all | cpu | cuda
  std::vector<int> batch_sizes = {200, 1000, 4096};
  int warmup_steps = 10;
  int steps = 30;    // per repetition
  int repeats = 5;   // the median is reported
  std::string json;  // also write the results here
  bool tf32 = false;        // TF32 GEMMs on the CUDA backend
  bool gemm_epilogues = false;  // dense layers with cuBLASLt epilogues (CUDA)
  bool cuda_graph = true;   // replay the step as a CUDA Graph
  bool two_branch_graph = false;  // weight gradients on a second stream (CUDA)
  // The step's objective (samples = K per image) and hidden activation.
  std::string objective = "elbo";
  int samples = 1;
  int outer_samples = 1;   // M (miwae, piwae)
  double ciwae_beta = 0.5;  // ciwae
  std::string activation = "relu";
  // The model: --latent-dim and --hidden as train spells them ("100,50",
  // "200,200/100,100" for two stochastic layers).
  std::string latent_dim = "50";
  std::string hidden = "200,200";
  // Packs of these many models against the same models one after another
  // (instead of the per-step breakdown); empty: none.
  std::vector<int> models;
};

// Prints, per backend and batch size: samples/s (median of the repetitions,
// warm-up excluded), the step's time split into GEMMs and everything else
// (from a profiled run), and the GEMMs' time against the same GEMM shapes
// run alone. Returns the exit status.
int run_bench_command(const BenchOptions& options);

}  // namespace cuvae
