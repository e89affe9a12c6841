// `vae train`: the training run with its outputs, checkpoints and resume.
#pragma once

#include <cstdint>
#include <string>

namespace cuvae {

struct TrainOptions {
  std::string data = "data/mnist";
  std::string out = "runs/default";
  std::string device = "auto";
  int epochs = 30;
  int batch_size = 200;
  std::string latent_dim = "50";   // one size per stochastic layer, bottom first
  std::string hidden = "200,200";  // each layer's widths, '/' between layers
  double lr = 1e-3;
  double adam_eps = 1e-8;
  // Lists train a pack (train_pack.h): --lr and --adam-eps as given (one
  // value: lr and adam_eps above), --seeds (empty: not given).
  std::string lr_list = "0.001", adam_eps_list = "1e-08", seeds;
  std::string objective = "elbo";      // elbo, iwae, iwae-dreg, miwae, piwae, ciwae
  int samples = 1;                     // K
  int outer_samples = 1;               // M (miwae, piwae)
  double ciwae_beta = 0.5;             // ciwae's beta
  std::string activation = "relu";     // relu, tanh
  std::string init = "small-normal";   // small-normal, glorot
  std::string schedule = "constant";   // constant, iwae
  int eval_every = 0;                  // epochs between test-set bounds; 0: never
  uint64_t seed = 0;
  int64_t max_steps = 0;      // 0: no limit; counts the whole run, resumed or not
  bool shuffle = false;
  int image_scale = 1;
  int64_t checkpoint_every = 0;  // steps; 0: at the end of every epoch
  std::string resume;            // a run's output directory, or empty
  bool overwrite = false;        // start over in an --out that holds another run
  // How the steps run (never what they compute, except tf32).
  bool tf32 = false;
  bool gemm_epilogues = false;  // cuBLASLt epilogues (CUDA); changes summation order
  bool cuda_graph = true;
  bool two_branch_graph = false;  // weight gradients on a second stream (CUDA); the same GEMMs
  std::string resident_data = "auto";  // auto, on, off
  // A pack's members: auto (lockstep on CUDA, threads on the CPU), threads
  // (side by side, each its own stream on CUDA) or lockstep (their steps
  // collected and run together: lockstep.h).
  std::string pack_mode = "auto";

  // Which flags were given explicitly: when resuming, those that must agree
  // with the checkpoint are checked, and --epochs and --max-steps default to
  // the checkpoint's.
  bool given_batch_size = false, given_latent_dim = false, given_hidden = false,
       given_lr = false, given_seed = false, given_shuffle = false, given_out = false,
       given_epochs = false, given_max_steps = false, given_adam_eps = false,
       given_objective = false, given_samples = false, given_activation = false,
       given_init = false, given_schedule = false, given_outer_samples = false,
       given_ciwae_beta = false, given_eval_every = false, given_checkpoint_every = false,
       given_image_scale = false, given_seeds = false;
};

// Runs training as the options say, printing progress to stdout. Returns the
// process exit status: 0, or 128 + the signal number when interrupted (after
// writing a checkpoint). Throws cuvae::Error on bad input or failure.
int run_train_command(const TrainOptions& options);

}  // namespace cuvae
