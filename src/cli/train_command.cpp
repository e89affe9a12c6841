// `vae train`: epochs of Trainer steps, with the per-epoch line, the model
// file, metrics.csv, checkpoints, resume, interruption and the task images.
#include "cuvae/cli/train_command.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <sstream>
#include <iostream>
#include <memory>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/build_info.h"
#include "cuvae/cli/interrupt.h"
#include "cuvae/cli/task_images.h"
#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/io/charts.h"
#include "cuvae/io/checkpoint.h"
#include "cuvae/io/dataset_name.h"
#include "cuvae/io/model_file.h"
#include "cuvae/model/evaluate.h"
#include "cuvae/model/trainer.h"
#include "cuvae/timing.h"

namespace cuvae {

namespace {

// The configuration of a new run, from the flags.
TrainConfig config_from_flags(const TrainOptions& o) {
  TrainConfig config;
  config.arch.hidden = parse_widths(o.hidden, "--hidden");
  config.arch.latent_dim = o.latent_dim;
  config.arch.activation = parse_activation(o.activation, "--activation");
  config.arch.validate();
  config.objective.objective = parse_objective(o.objective, "--objective");
  config.objective.samples = o.samples;
  config.init = parse_init(o.init, "--init");
  config.schedule = parse_schedule(o.schedule, "--schedule");
  config.batch_size = o.batch_size;
  config.seed = o.seed;
  config.shuffle = o.shuffle;
  if (!(o.lr > 0.0) || !std::isfinite(o.lr)) throw Error("--lr must be a positive number");
  config.adam.lr = o.lr;
  config.adam.eps = o.adam_eps;
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
                "; a resumed run keeps its architecture, objective, batch size, learning rate "
                "and schedule, seed, shuffling and data (only --epochs, --max-steps, --out, "
                "--device, --checkpoint-every, --eval-every and --image-scale may change)");
  };
  auto check_name = [&](bool given, const std::string& flag, const std::string& value,
                        const std::string& saved) {
    if (given && value != saved) refuse(flag, value, saved);
  };
  check_name(o.given_objective, "--objective", o.objective, objective_name(c.objective.objective));
  check_name(o.given_activation, "--activation", o.activation, activation_name(c.arch.activation));
  check_name(o.given_init, "--init", o.init, init_name(c.init));
  check_name(o.given_schedule, "--schedule", o.schedule, schedule_name(c.schedule));
  if (o.given_samples && o.samples != c.objective.samples)
    refuse("--samples", std::to_string(o.samples), std::to_string(c.objective.samples));
  if (o.given_adam_eps && o.adam_eps != c.adam.eps)
    refuse("--adam-eps", shortest(o.adam_eps), shortest(c.adam.eps));
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

// "elbo, K = 1 sample per image" style, for the start-up lines.
std::string describe_objective(const TrainConfig& c) {
  const int k = c.objective.samples;
  return objective_name(c.objective.objective) + ", K = " + std::to_string(k) +
         (k == 1 ? " sample" : " samples") + " per image (trained bound: " +
         bound_name(c.objective.objective, k) + "); " + activation_name(c.arch.activation) +
         " hidden layers, " + init_name(c.init) + " init";
}

std::string fixed(double value, int digits) {
  char text[48];
  std::snprintf(text, sizeof text, "%.*f", digits, value);
  return text;
}

// "stage 3/8 lr 0.000373  " for a schedule with stages, else "".
std::string stage_text(Schedule schedule, int epoch, double lr) {
  if (schedule == Schedule::kConstant) return "";
  char text[64];
  std::snprintf(text, sizeof text, "stage %d/8 lr %.3g  ", schedule_stage(schedule, epoch) + 1, lr);
  return text;
}

// metrics.csv: one row per epoch; test_bound is empty where the test set
// was not evaluated. Rows of checkpoints from builds before the objectives
// (epoch,elbo,seconds,samples_per_s) are rewritten into these columns.
constexpr const char* kMetricsHeader = "epoch,objective,bound,lr,seconds,images_per_s,test_bound";

std::string metrics_row(int epoch, const std::string& objective, double bound, double lr,
                        double seconds, double rate, double test_bound) {
  char row[192];
  std::snprintf(row, sizeof row, "%d,%s,%.6f,%.6g,%.4f,%.1f,%s\n", epoch, objective.c_str(), bound,
                lr, seconds, rate, std::isnan(test_bound) ? "" : fixed(test_bound, 6).c_str());
  return row;
}

std::string upgraded_metrics_rows(const std::string& rows, double lr) {
  std::string out, line;
  std::istringstream lines(rows);
  while (std::getline(lines, line)) {
    const size_t commas = static_cast<size_t>(std::count(line.begin(), line.end(), ','));
    if (commas != 3) {
      out += line + "\n";
      continue;
    }
    // epoch,elbo,seconds,rate -> epoch,elbo,elbo,lr,seconds,rate,
    const size_t first = line.find(','), second = line.find(',', first + 1);
    char lr_text[32];
    std::snprintf(lr_text, sizeof lr_text, "%.6g", lr);
    out += line.substr(0, first) + ",elbo" + line.substr(first, second - first) + "," + lr_text +
           line.substr(second) + ",\n";
  }
  return out;
}

// The trained bound on the whole test set (fixed binarization, the run's
// seed): the ELBO for elbo, the K-sample IWAE bound for the IWAE objectives.
double test_set_bound(Backend& backend, const VaeModel& model, const TrainConfig& c,
                      const IdxImages& test) {
  const int k = c.objective.samples;
  VaeModel eval_model(backend, c.arch, eval_images_per_chunk(k), k);
  eval_model.set_parameters(model.parameters());
  EvalRequest request;
  request.k = k;
  request.seed = c.seed;
  const EvalResult r = evaluate(eval_model, test, request);
  return c.objective.objective == Objective::kElbo ? r.elbo : -r.nll;
}

// OUT/training_curve.png, redrawn from metrics.csv after an epoch: at the
// last epoch and otherwise at most every 30 s (a drawing starts Python and
// matplotlib, ~0.8 s, which must not hold up short epochs). Where it cannot
// be drawn (no matplotlib), one note and no more tries.
class TrainingCurve {
 public:
  explicit TrainingCurve(const std::string& out) : out_(out) {}
  void draw_after_epoch(bool last) {
    if (given_up_ || (!last && drawn_ && seconds_since(last_draw_) < 30.0)) return;
    std::string note;
    if (draw_training_curve(out_ + "/metrics.csv", path(), &note)) {
      drawn_ = true;
      last_draw_ = Clock::now();
    } else {
      std::cout << "note: no training_curve.png: " << note << "\n";
      given_up_ = true;
    }
  }
  bool drawn() const { return drawn_; }
  std::string path() const { return out_ + "/training_curve.png"; }

 private:
  std::string out_;
  bool drawn_ = false, given_up_ = false;
  Clock::time_point last_draw_;
};

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
    // The paper's schedule is the run's length unless --epochs cuts it.
    if (config.schedule == Schedule::kIwae && !o.given_epochs) o.epochs = kIwaeScheduleEpochs;
  }

  const MnistSplit train = load_mnist_split(o.data, true);
  const MnistSplit test = load_mnist_split(o.data, false);
  check_task_image_inputs(test.images, config.arch.input_dim, "the test images in " + o.data);
  const std::string fingerprint = data_fingerprint(train.images);
  if (resuming && fingerprint != resumed.data_fingerprint) {
    throw Error("--resume: the training images in " + o.data + " (" + fingerprint +
                ") are not the checkpoint's (" + resumed.data_fingerprint + ")");
  }
  const std::string dataset = dataset_name_from_fingerprint(fingerprint);
  std::unique_ptr<Backend> backend = open_backend(o.device, std::cout);
  std::cout << "data: " << o.data << ": " << (dataset == "unknown" ? "not a known data set" : dataset)
            << " (" << fingerprint << ")\n";
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
    metrics = upgraded_metrics_rows(resumed.metrics_csv, config.adam.lr);
  }

  const int steps_per_epoch = trainer.steps_per_epoch();
  const int64_t all_steps = int64_t(o.epochs) * steps_per_epoch;
  const int64_t total_steps = o.max_steps > 0 ? std::min<int64_t>(o.max_steps, all_steps) : all_steps;
  const int epochs = static_cast<int>((total_steps + steps_per_epoch - 1) / steps_per_epoch);
  std::cout << "model: " << config.arch.describe() << ", " << model.layout().size()
            << " parameters; batch " << config.batch_size << ", " << steps_per_epoch
            << " steps/epoch, " << epochs << " epochs (" << total_steps << " steps), lr "
            << config.adam.lr << (config.schedule == Schedule::kIwae ? " (iwae schedule)" : "")
            << ", Adam eps " << config.adam.eps << ", seed " << config.seed
            << (config.shuffle ? ", shuffled" : ", dataset order") << "\n";
  std::cout << "objective: " << describe_objective(config) << "\n";
  if (resuming) {
    check_resumed_progress(resumed, o.resume + "/checkpoint.safetensors", steps_per_epoch, total_steps);
    std::cout << "resuming from " << o.resume << "/checkpoint.safetensors at step "
              << resumed.step << "\n";
  }

  const std::string model_path = o.out + "/model.safetensors";
  const std::string checkpoint_path = o.out + "/checkpoint.safetensors";
  const bool live = ::isatty(STDOUT_FILENO) != 0;
  const std::string bound = bound_name(config.objective.objective, config.objective.samples);
  TrainingCurve curve(o.out);
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
        std::printf("\r  epoch %d/%d  step %d/%d  %s %.2f   ", epoch, epochs, steps,
                    steps_per_epoch, bound.c_str(), trainer.peek_mean_elbo());
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
    const double lr = scheduled_learning_rate(config.schedule, config.adam.lr, epoch - 1);
    const double test_bound = o.eval_every > 0 && (epoch % o.eval_every == 0 || epoch == epochs)
                                  ? test_set_bound(*backend, model, config, test.images)
                                  : NAN;
    if (live) std::printf("\r%*s\r", 72, "");
    std::printf("epoch %3d/%d  %s%s %9.3f%s  %7.2f s  %8.0f images/s\n", epoch, epochs,
                stage_text(config.schedule, epoch - 1, lr).c_str(), bound.c_str(), elbo,
                std::isnan(test_bound) ? "" : ("  test " + fixed(test_bound, 3)).c_str(), seconds, rate);
    std::fflush(stdout);
    const std::vector<float> params = model.parameters();
    bool finite = std::isfinite(elbo);
    for (float p : params) finite = finite && std::isfinite(p);
    if (!finite) {
      throw Error("training diverged in epoch " + std::to_string(epoch) + " (the " + bound +
                  " bound or a parameter is not finite); " + model_path + " and " +
                  checkpoint_path + " keep the last good state, if any");
    }
    metrics += metrics_row(epoch, bound, elbo, lr, seconds, rate, test_bound);
    const std::string csv = std::string(kMetricsHeader) + "\n" + metrics;
    write_file_atomically(o.out + "/metrics.csv", csv.data(), csv.size());
    curve.draw_after_epoch(epoch == epochs);
    save_model(model_path, config.arch, params,
               {{"seed", std::to_string(config.seed)},
                {"epochs", std::to_string(epoch)},
                {"steps", std::to_string(trainer.steps_done())},
                {"batch_size", std::to_string(config.batch_size)},
                {"lr", shortest(config.adam.lr)},
                {"adam_eps", shortest(config.adam.eps)},
                {"objective", objective_name(config.objective.objective)},
                {"samples", std::to_string(config.objective.samples)},
                {"init", init_name(config.init)},
                {"schedule", schedule_name(config.schedule)},
                {"train_bound", bound},
                {"train_bound_value", shortest(elbo)},
                {"dataset", dataset},
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
  if (curve.drawn()) written.push_back(curve.path());
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
