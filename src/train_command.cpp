// `vae train`: epochs of Trainer steps, with the per-epoch line, the model
// file, metrics.csv, checkpoints, resume, interruption and the task images.
#include "cuvae/train_command.h"

#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <vector>

#include "cuvae/atomic_file.h"
#include "cuvae/backend.h"
#include "cuvae/build_info.h"
#include "cuvae/checkpoint.h"
#include "cuvae/error.h"
#include "cuvae/interrupt.h"
#include "cuvae/model_file.h"
#include "cuvae/task_images.h"
#include "cuvae/timing.h"
#include "cuvae/trainer.h"

namespace cuvae {

namespace {

// The configuration of a new run, from the flags.
TrainConfig config_from_flags(const TrainOptions& o) {
  TrainConfig config;
  config.arch.hidden = parse_widths(o.hidden, "--hidden");
  config.arch.latent_dim = o.latent_dim;
  config.arch.validate();
  config.batch_size = o.batch_size;
  config.seed = o.seed;
  config.shuffle = o.shuffle;
  if (!(o.lr > 0.0) || !std::isfinite(o.lr)) throw Error("--lr must be a positive number");
  config.adam.lr = o.lr;
  return config;
}

// The shortest text that reads back as `value` (0.001 and 0.00100000001 stay
// apart, where std::to_string prints both as 0.001000).
std::string shortest(double value) {
  char text[32];
  const std::to_chars_result result = std::to_chars(text, text + sizeof text, value);
  return std::string(text, result.ptr);
}

// A resumed run keeps its checkpoint's configuration; flags given explicitly
// must agree with it.
void check_resume_flags(const TrainOptions& o, const TrainConfig& c, const std::string& path) {
  auto refuse = [&](const std::string& flag, const std::string& given, const std::string& saved) {
    throw Error("--resume: " + flag + " " + given + " disagrees with " + saved + " in " + path +
                "; a resumed run keeps its architecture, batch size, learning rate, seed, "
                "shuffling and data (only --epochs, --max-steps, --out, --device, "
                "--checkpoint-every and --image-scale may change)");
  };
  if (o.given_batch_size && o.batch_size != c.batch_size)
    refuse("--batch-size", std::to_string(o.batch_size), std::to_string(c.batch_size));
  if (o.given_latent_dim && o.latent_dim != c.arch.latent_dim)
    refuse("--latent-dim", std::to_string(o.latent_dim), std::to_string(c.arch.latent_dim));
  if (o.given_hidden && parse_widths(o.hidden, "--hidden") != c.arch.hidden)
    refuse("--hidden", o.hidden, format_widths(c.arch.hidden));
  if (o.given_lr && o.lr != c.adam.lr) refuse("--lr", shortest(o.lr), shortest(c.adam.lr));
  if (o.given_seed && o.seed != c.seed)
    refuse("--seed", std::to_string(o.seed), std::to_string(c.seed));
  if (o.given_shuffle && o.shuffle != c.shuffle) refuse("--shuffle", "", "no shuffling");
}

// A checkpoint of an earlier build, interrupted on an epoch's last step
// before that epoch's end was written: its rows are a whole epoch's, and
// resuming finishes that epoch (its line, metrics row, model) first.
bool epoch_left_unfinished(const TrainState& r, int steps_per_epoch) {
  return r.step > 0 && r.step % static_cast<uint64_t>(steps_per_epoch) == 0 &&
         r.epoch_rows == uint64_t(steps_per_epoch) * uint64_t(r.config.batch_size);
}

// The checkpoint's progress against this run's length, once the steps per
// epoch are known (they depend on the data and the batch size).
void check_resumed_progress(const TrainState& r, const std::string& path, int steps_per_epoch,
                            int64_t total_steps) {
  if (r.step > static_cast<uint64_t>(total_steps)) {
    throw Error("--resume: " + path + " is at step " + std::to_string(r.step) + ", past the " +
                std::to_string(total_steps) + " steps that --epochs and --max-steps give this run: "
                "nothing is left to train (give more --epochs or a larger --max-steps)");
  }
  const uint64_t rows = (r.step % static_cast<uint64_t>(steps_per_epoch)) * static_cast<uint64_t>(r.config.batch_size);
  if (r.epoch_rows != rows && !epoch_left_unfinished(r, steps_per_epoch)) {
    throw Error(path + ": checkpoint metadata 'epoch_rows' is " + std::to_string(r.epoch_rows) +
                ", but step " + std::to_string(r.step) + " at " + std::to_string(steps_per_epoch) +
                " steps per epoch of " + std::to_string(r.config.batch_size) + " means " + std::to_string(rows));
  }
}

const char* signal_name(int signal_number) { return signal_number == SIGINT ? "SIGINT" : "SIGTERM"; }

// After SIGINT or SIGTERM: what was saved and how to go on; 128 + the signal.
int report_interrupt(int signal_number, const std::string& state, const TrainOptions& o) {
  std::fflush(stdout);
  std::cerr << "vae: interrupted by " << signal_name(signal_number) << " " << state
            << "; resume with: vae train --resume " << o.out << " --data " << o.data << "\n";
  return 128 + signal_number;
}

TrainState snapshot(Trainer& trainer, const TrainOptions& o, const TrainConfig& config,
                    const std::string& fingerprint, double epoch_seconds,
                    const std::string& metrics) {
  TrainState s;
  s.config = config;
  s.epochs = o.epochs;
  s.max_steps = o.max_steps;
  s.data_fingerprint = fingerprint;
  s.step = trainer.steps_done();
  s.params = trainer.model().parameters();
  s.adam_m = trainer.model().adam_moment(1);
  s.adam_v = trainer.model().adam_moment(2);
  s.epoch_elbo_sum = trainer.elbo_sum();
  s.epoch_rows = trainer.rows_since_take();
  s.epoch_seconds = epoch_seconds;
  s.metrics_csv = metrics;
  return s;
}

}  // namespace

int run_train_command(TrainOptions o) {
  install_interrupt_handlers();
  const bool resuming = !o.resume.empty();
  TrainState resumed;
  TrainConfig config;
  if (resuming) {
    if (!o.given_out) o.out = o.resume;
    const std::string path = o.resume + "/checkpoint.safetensors";
    if (!std::filesystem::exists(path)) {
      throw Error("--resume " + o.resume + ": no checkpoint there (" + path + " is missing)");
    }
    resumed = load_checkpoint(path);
    config = resumed.config;
    if (!o.given_epochs) o.epochs = resumed.epochs;
    if (!o.given_max_steps) o.max_steps = resumed.max_steps;
    check_resume_flags(o, config, path);
  } else {
    config = config_from_flags(o);
  }

  const MnistSplit train = load_mnist_split(o.data, true);
  const MnistSplit test = load_mnist_split(o.data, false);
  check_task_image_inputs(test.images, config.arch.input_dim, "the test images in " + o.data);
  const std::string fingerprint = data_fingerprint(train.images);
  if (resuming && fingerprint != resumed.data_fingerprint) {
    throw Error("--resume: the training images in " + o.data + " (" + fingerprint +
                ") are not the checkpoint's (" + resumed.data_fingerprint + ")");
  }
  std::unique_ptr<Backend> backend = open_backend(o.device, std::cout);
  // Made here, stale temporaries of killed runs cleared; removed again if the
  // run fails before writing anything into it.
  const OutputDirectory out_dir(o.out);
  if (o.tf32 && !backend->set_tf32(true)) {
    std::cout << "note: --tf32 has no effect on the " << backend->name()
              << " backend; its GEMMs compute in FP32\n";
  }
  if (o.gemm_epilogues && !backend->set_gemm_epilogues(true)) {
    std::cout << "note: --gemm-epilogues has no effect on the " << backend->name()
              << " backend; it has no cuBLASLt\n";
  }
  if (o.two_branch_graph && !backend->set_two_branch(true)) {
    std::cout << "note: --two-branch-graph has no effect on the " << backend->name()
              << " backend; it runs its calls in order\n";
  }
  TrainerOptions trainer_options;
  trainer_options.data = o.resident_data == "on"    ? TrainerOptions::DataPlacement::kResident
                         : o.resident_data == "off" ? TrainerOptions::DataPlacement::kStreamed
                                                    : TrainerOptions::DataPlacement::kAuto;
  trainer_options.step_graph = o.cuda_graph;
  Trainer trainer(*backend, config, train.images, trainer_options);
  const bool cuda = backend->name() == "cuda";
  std::cout << "step: " << trainer.describe_step() << (o.tf32 && cuda ? "; TF32 GEMMs" : "")
            << (o.gemm_epilogues && cuda ? "; cuBLASLt epilogues" : "")
            << (o.two_branch_graph && cuda ? "; weight gradients on a second branch" : "") << "\n";
  VaeModel& model = trainer.model();
  std::string metrics;
  if (resuming) {
    trainer.restore(resumed.params, resumed.adam_m, resumed.adam_v, resumed.step,
                    resumed.epoch_elbo_sum, resumed.epoch_rows);
    metrics = resumed.metrics_csv;
  }

  const int steps_per_epoch = trainer.steps_per_epoch();
  const int64_t all_steps = int64_t(o.epochs) * steps_per_epoch;
  const int64_t total_steps = o.max_steps > 0 ? std::min<int64_t>(o.max_steps, all_steps) : all_steps;
  const int epochs = static_cast<int>((total_steps + steps_per_epoch - 1) / steps_per_epoch);
  std::cout << "model: " << config.arch.describe() << ", " << model.layout().size()
            << " parameters; batch " << config.batch_size << ", " << steps_per_epoch
            << " steps/epoch, " << epochs << " epochs (" << total_steps << " steps), lr "
            << config.adam.lr << ", seed " << config.seed
            << (config.shuffle ? ", shuffled" : ", dataset order") << "\n";
  if (resuming) {
    check_resumed_progress(resumed, o.resume + "/checkpoint.safetensors", steps_per_epoch, total_steps);
    std::cout << "resuming from " << o.resume << "/checkpoint.safetensors at step "
              << resumed.step << "\n";
  }

  const std::string model_path = o.out + "/model.safetensors";
  const std::string checkpoint_path = o.out + "/checkpoint.safetensors";
  const bool live = ::isatty(STDOUT_FILENO) != 0;
  const int first_epoch = static_cast<int>(trainer.steps_done() / steps_per_epoch) +
                          (resuming && epoch_left_unfinished(resumed, steps_per_epoch) ? 0 : 1);
  for (int epoch = first_epoch; epoch <= epochs; ++epoch) {
    const auto start = Clock::now();
    const double earlier_seconds = resuming && epoch == first_epoch ? resumed.epoch_seconds : 0.0;
    auto last_progress = start;
    int steps = static_cast<int>(trainer.steps_done() - uint64_t(epoch - 1) * steps_per_epoch);
    while (steps < steps_per_epoch && static_cast<int64_t>(trainer.steps_done()) < total_steps) {
      trainer.step();
      ++steps;
      const bool epoch_ends = steps == steps_per_epoch ||
                              static_cast<int64_t>(trainer.steps_done()) == total_steps;
      // At an epoch's last step the epoch's own end (below) writes its line,
      // model and checkpoint first; this checkpoint would count its rows in
      // the next epoch.
      if (const int signal_number = epoch_ends ? 0 : stop_requested()) {
        save_checkpoint(checkpoint_path, snapshot(trainer, o, config, fingerprint,
                                                  earlier_seconds + seconds_since(start), metrics));
        if (live) std::printf("\n");
        return report_interrupt(signal_number,
                                "at step " + std::to_string(trainer.steps_done()) + " of " +
                                    std::to_string(total_steps) + "; checkpoint written to " + checkpoint_path,
                                o);
      }
      if (o.checkpoint_every > 0 && !epoch_ends &&
          trainer.steps_done() % static_cast<uint64_t>(o.checkpoint_every) == 0) {
        save_checkpoint(checkpoint_path, snapshot(trainer, o, config, fingerprint,
                                                  earlier_seconds + seconds_since(start), metrics));
      }
      if (live && seconds_since(last_progress) > 0.25) {
        last_progress = Clock::now();
        std::printf("\r  epoch %d/%d  step %d/%d  elbo %.2f   ", epoch, epochs, steps,
                    steps_per_epoch, trainer.peek_mean_elbo());
        std::fflush(stdout);
      }
    }
    backend->synchronize();  // the steps run asynchronously on a GPU: time them whole
    const double seconds = earlier_seconds + seconds_since(start);
    // A run that stops mid-epoch (--max-steps) checkpoints the epoch's partial
    // state, so that a resumed run completes this epoch as if never stopped.
    const bool complete = steps == steps_per_epoch;
    const TrainState partial =
        complete ? TrainState{} : snapshot(trainer, o, config, fingerprint, seconds, metrics);
    const uint64_t rows = trainer.rows_since_take();
    const double elbo = trainer.take_mean_elbo();
    const double rate = static_cast<double>(rows) / seconds;
    if (live) std::printf("\r%*s\r", 72, "");
    std::printf("epoch %3d/%d  elbo %9.3f  %7.2f s  %8.0f samples/s\n", epoch, epochs, elbo,
                seconds, rate);
    std::fflush(stdout);
    const std::vector<float> params = model.parameters();
    bool finite = std::isfinite(elbo);
    for (float p : params) finite = finite && std::isfinite(p);
    if (!finite) {
      throw Error("training diverged in epoch " + std::to_string(epoch) +
                  " (the ELBO or a parameter is not finite); " + model_path + " and " +
                  checkpoint_path + " keep the last good state, if any");
    }
    char row[128];
    std::snprintf(row, sizeof row, "%d,%.6f,%.4f,%.1f\n", epoch, elbo, seconds, rate);
    metrics += row;
    const std::string csv = "epoch,elbo,seconds,samples_per_s\n" + metrics;
    write_file_atomically(o.out + "/metrics.csv", csv.data(), csv.size());
    save_model(model_path, config.arch, params,
               {{"seed", std::to_string(config.seed)},
                {"epochs", std::to_string(epoch)},
                {"steps", std::to_string(trainer.steps_done())},
                {"batch_size", std::to_string(config.batch_size)},
                {"lr", std::to_string(config.adam.lr)},
                {"train_elbo", std::to_string(elbo)},
                {"commit", CUVAE_GIT_COMMIT},
                {"created", utc_now()}});
    save_checkpoint(checkpoint_path,
                    complete ? snapshot(trainer, o, config, fingerprint, 0.0, metrics) : partial);
    if (const int signal_number = stop_requested()) {
      return report_interrupt(signal_number,
                              "at the end of epoch " + std::to_string(epoch) + " (step " +
                                  std::to_string(trainer.steps_done()) + " of " + std::to_string(total_steps) +
                                  "); checkpoint written to " + checkpoint_path,
                              o);
    }
  }

  // The task images need batches of 25; the training model may be smaller.
  VaeModel images_model(*backend, config.arch, kTaskImageRows);
  images_model.set_parameters(model.parameters());
  GridOptions grid;
  grid.scale = o.image_scale;
  std::vector<std::string> written = {model_path, o.out + "/metrics.csv", checkpoint_path};
  // A signal after the last step stops before the next set of images; a
  // resumed run has no steps left and writes them all.
  const std::function<std::vector<std::string>()> writers[] = {
      [&] { return write_prior_samples(images_model, o.out, config.seed, grid); },
      [&] { return write_reconstructions(images_model, test.images, o.out, config.seed, grid); },
      [&] { return write_interpolations(images_model, test.images, o.out, config.seed, grid); }};
  for (const auto& write : writers) {
    if (const int signal_number = stop_requested()) {
      return report_interrupt(signal_number,
                              "after the last step; " + model_path + " and " + checkpoint_path +
                                  " are written, the task images not all",
                              o);
    }
    const std::vector<std::string> paths = write();
    written.insert(written.end(), paths.begin(), paths.end());
  }
  std::cout << "wrote";
  for (const std::string& path : written) std::cout << " " << path;
  std::cout << "\n";
  if (const int signal_number = stop_requested()) {
    // Too late to stop anything, but the caller asked: exit as interrupted.
    std::fflush(stdout);
    std::cerr << "vae: interrupted by " << signal_name(signal_number)
              << " as the run ended; every file above is whole\n";
    return 128 + signal_number;
  }
  return 0;
}

}  // namespace cuvae
