// vae train's flags (include/cuvae/cli/train_command.h holds what they fill).
#include <limits>
#include <memory>

#include "cuvae/cli/commands.h"
#include "cuvae/cli/flags.h"
#include "cuvae/cli/train_command.h"
#include "cuvae/cli/train_pack.h"
#include "cuvae/model/trainer.h"

namespace cuvae {

Command add_train_command(CLI::App& app) {
  auto train = std::make_shared<TrainOptions>();
  CLI::App* train_cmd = app.add_subcommand("train", "Train the VAE; write the model, metrics.csv and the task images");
  train_cmd->add_option("--data", train->data, "Directory with the MNIST IDX files (tools/fetch_mnist.sh)")->check(non_empty())->capture_default_str();
  CLI::Option* out_opt = train_cmd->add_option("--out", train->out, "Output directory (with --resume: defaults to the resumed directory)")->check(non_empty())->capture_default_str();
  add_device(train_cmd, &train->device);
  CLI::Option* epochs_opt = train_cmd->add_option("--epochs", train->epochs, "Epochs in all (a resumed run counts its earlier epochs; default there: the checkpoint's)")->transform(integer_in(1, TrainConfig::kMaxEpochs))->capture_default_str();
  CLI::Option* batch_opt = train_cmd->add_option("--batch-size", train->batch_size, "Images per step (the last partial batch of an epoch is dropped)")->transform(integer_in(1, TrainConfig::kMaxBatchSize))->capture_default_str();
  CLI::Option* latent_opt = train_cmd->add_option("--latent-dim", train->latent_dim, "Latent dimensions L, one per stochastic layer, bottom first (100,50: the IWAE paper's two-layer model)")->capture_default_str();
  CLI::Option* hidden_opt = train_cmd->add_option("--hidden", train->hidden, "Hidden layer widths of each stochastic layer's encoder and decoder, comma-separated, '/' between layers (200,200/100,100)")->capture_default_str();
  CLI::Option* lr_opt = train_cmd->add_option("--lr", train->lr_list, "Adam step size alpha (with --schedule iwae: the first stage's); a comma-separated list trains a pack, one model per value")->check(list_of(learning_rate(), "POSITIVE[,...]"))->capture_default_str();
  CLI::Option* adam_eps_opt = train_cmd->add_option("--adam-eps", train->adam_eps_list, "Adam's epsilon (the IWAE paper: 1e-4); a comma-separated list trains a pack")->check(list_of(learning_rate(), "POSITIVE[,...]"))->capture_default_str();
  CLI::Option* objective_opt = train_cmd->add_option("--objective", train->objective, "elbo (analytic KL, averaged over K samples), iwae (the K-sample importance-weighted bound), iwae-dreg (the same, DReG gradients for the encoder), miwae (M groups of K: the mean of M K-sample bounds; --outer-samples M), piwae (the decoder on IWAE over all M K samples, the encoder on MIWAE(M, K)) or ciwae (beta ELBO + (1 - beta) IWAE over K samples; --ciwae-beta)")->check(CLI::IsMember({"elbo", "iwae", "iwae-dreg", "miwae", "piwae", "ciwae"}))->capture_default_str();
  CLI::Option* samples_opt = train_cmd->add_option("--samples", train->samples, "K: samples of z per image, per group for miwae and piwae (the decoder runs on batch * M * K rows)")->transform(integer_in(1, ObjectiveConfig::kMaxSamples))->capture_default_str();
  CLI::Option* outer_samples_opt = train_cmd->add_option("--outer-samples", train->outer_samples, "M: groups of K samples per image (miwae and piwae only)")->transform(integer_in(1, ObjectiveConfig::kMaxSamples))->capture_default_str();
  CLI::Option* ciwae_beta_opt = train_cmd->add_option("--ciwae-beta", train->ciwae_beta, "ciwae's beta in [0, 1]: beta ELBO + (1 - beta) IWAE (ciwae only)")->check(unit_interval())->capture_default_str();
  CLI::Option* activation_opt = train_cmd->add_option("--activation", train->activation, "Hidden layers' nonlinearity: relu (the seed) or tanh (the IWAE paper)")->check(CLI::IsMember({"relu", "tanh"}))->capture_default_str();
  CLI::Option* init_opt = train_cmd->add_option("--init", train->init, "small-normal (the seed: 0.01 N(0,1)) or glorot (the IWAE paper's code: Glorot-uniform weights, zero biases, output bias at the logit of the mean pixel)")->check(CLI::IsMember({"small-normal", "glorot"}))->capture_default_str();
  CLI::Option* schedule_opt = train_cmd->add_option("--schedule", train->schedule, "constant, or iwae: 8 stages of 3^i epochs at lr 10^(-i/7) (3280 epochs; --epochs cuts it)")->check(CLI::IsMember({"constant", "iwae"}))->capture_default_str();
  CLI::Option* eval_every_opt = train_cmd->add_option("--eval-every", train->eval_every, "Evaluate the trained bound on the test set every N epochs and at the end (0: never)")->transform(integer_in(0, TrainConfig::kMaxEpochs))->capture_default_str();
  CLI::Option* seed_opt = train_cmd->add_option("--seed", train->seed, "Seed of every random draw (init, binarization, eps, shuffles)")->transform(unsigned_integer())->capture_default_str();
  CLI::Option* seeds_opt = train_cmd->add_option("--seeds", train->seeds, "Train a pack, one model per seed, side by side in this process: 0-7, 0,3,5 or 0-3,8 (with list --lr/--adam-eps: every combination); each model in OUT/NAME (seed-3, lr-0.0003_seed-3), with the bits it has alone")->check(list_of(unsigned_integer(), "SEEDS", true));
  CLI::Option* max_steps_opt = train_cmd->add_option("--max-steps", train->max_steps, "Stop after this many steps in all, a resumed run's earlier steps included (0: no limit)")->transform(integer_in(0, std::numeric_limits<int64_t>::max(), "NONNEGATIVE"))->capture_default_str();
  CLI::Option* shuffle_opt = train_cmd->add_flag("--shuffle", train->shuffle, "Reshuffle the training images every epoch (default: dataset order, as the seed)");
  CLI::Option* checkpoint_every_opt = train_cmd->add_option("--checkpoint-every", train->checkpoint_every, "Write OUT/checkpoint.safetensors every N steps (0: at the end of every epoch; always at the end and on Ctrl-C)")->transform(integer_in(0, std::numeric_limits<int64_t>::max(), "NONNEGATIVE"))->capture_default_str();
  train_cmd->add_option("--resume", train->resume, "Continue the run whose output directory is DIR, exactly, from DIR/checkpoint.safetensors; its architecture, batch size, lr, seed, shuffling and data are kept (--epochs, --max-steps, --eval-every, --checkpoint-every and --image-scale default to the checkpoint's; they, --out and --device may change)")->check(non_empty());
  train_cmd->add_flag("--overwrite", train->overwrite, "Start a new run in an --out that already holds one (its checkpoint, model and metrics are replaced); without it such an --out is refused: continue that run with --resume");
  train_cmd->add_flag("--tf32", train->tf32, "TF32 tensor-core math in the GEMMs (CUDA, sm_80 and newer): faster, about 1e-3 relative error per product; default FP32");
  train_cmd->add_flag("--gemm-epilogues", train->gemm_epilogues, "Dense layers as cuBLASLt GEMMs with fused bias+ReLU and ReLU-gradient+bias-gradient epilogues (CUDA; not yet measured on a GPU, so off by default)");
  train_cmd->add_flag("--two-branch-graph", train->two_branch_graph, "Run the weight-gradient GEMMs on a second stream, a second branch of the step's CUDA Graph, off the critical path (CUDA; not yet measured on a GPU, so off by default)");
  train_cmd->add_flag("--cuda-graph,!--no-cuda-graph", train->cuda_graph, "Replay each training step as one CUDA Graph (default; needs the training images resident)");
  train_cmd->add_option("--pack-mode", train->pack_mode, "How a pack's models share the device: auto (lockstep on CUDA, threads on the CPU), threads (side by side, one thread and, on CUDA, one stream each: each model's exact bits alone) or lockstep (each step of every model collected, then run together: on CUDA one batched GEMM or kernel launch per call for all models and the pack's step one CUDA Graph; on the CPU interleaved, one call at a time)")->check(CLI::IsMember({"auto", "threads", "lockstep"}))->capture_default_str();
  train_cmd->add_option("--resident-data", train->resident_data, "Keep the training images in backend memory: auto (if they fit), on, off (stream each batch through pinned buffers)")->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  CLI::Option* image_scale_opt = add_image_scale(train_cmd, &train->image_scale);
  // Which flags were given: a resumed run checks those against its checkpoint.
  return {train_cmd, [=] {
            train->given_out = out_opt->count() > 0;
            train->given_batch_size = batch_opt->count() > 0;
            train->given_latent_dim = latent_opt->count() > 0;
            train->given_hidden = hidden_opt->count() > 0;
            train->given_lr = lr_opt->count() > 0;
            train->given_adam_eps = adam_eps_opt->count() > 0;
            train->given_objective = objective_opt->count() > 0;
            train->given_samples = samples_opt->count() > 0;
            train->given_outer_samples = outer_samples_opt->count() > 0;
            train->given_ciwae_beta = ciwae_beta_opt->count() > 0;
            train->given_activation = activation_opt->count() > 0;
            train->given_init = init_opt->count() > 0;
            train->given_schedule = schedule_opt->count() > 0;
            train->given_seed = seed_opt->count() > 0;
            train->given_seeds = seeds_opt->count() > 0;
            // One value: the run's own; more: a pack's (checked there).
            train->lr = parse_rate_list(train->lr_list, "--lr").front();
            train->adam_eps = parse_rate_list(train->adam_eps_list, "--adam-eps").front();
            train->given_shuffle = shuffle_opt->count() > 0;
            train->given_epochs = epochs_opt->count() > 0;
            train->given_max_steps = max_steps_opt->count() > 0;
            train->given_eval_every = eval_every_opt->count() > 0;
            train->given_checkpoint_every = checkpoint_every_opt->count() > 0;
            train->given_image_scale = image_scale_opt->count() > 0;
            return run_train_command(*train);
          }};
}

}  // namespace cuvae
