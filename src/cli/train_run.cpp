// One run of `vae train` (include/cuvae/cli/train_run.h): epochs of Trainer
// steps, with the per-epoch line, the model file, metrics.csv, checkpoints,
// resume, interruption and the task images.
#include "cuvae/cli/train_run.h"

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
#include <map>
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
  config.arch.set_layers(o.latent_dim, o.hidden);
  config.arch.activation = parse_activation(o.activation, "--activation");
  config.arch.validate();
  config.objective.objective = parse_objective(o.objective, "--objective");
  config.objective.samples = o.samples;
  config.objective.outer_samples = o.outer_samples;
  config.objective.ciwae_beta = o.ciwae_beta;
  if (o.given_ciwae_beta && config.objective.objective != Objective::kCiwae) {
    throw Error("--ciwae-beta " + format_beta(o.ciwae_beta) + ": objective " + o.objective +
                " has no beta (only ciwae does)");
  }
  config.objective.validate();
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
  if (o.given_outer_samples && o.outer_samples != c.objective.outer_samples)
    refuse("--outer-samples", std::to_string(o.outer_samples), std::to_string(c.objective.outer_samples));
  if (o.given_ciwae_beta && (c.objective.objective != Objective::kCiwae || o.ciwae_beta != c.objective.ciwae_beta))
    refuse("--ciwae-beta", format_beta(o.ciwae_beta),
           c.objective.objective == Objective::kCiwae ? format_beta(c.objective.ciwae_beta)
                                                      : "objective " + objective_name(c.objective.objective) + " (no beta)");
  if (o.given_adam_eps && o.adam_eps != c.adam.eps)
    refuse("--adam-eps", shortest(o.adam_eps), shortest(c.adam.eps));
  if (o.given_batch_size && o.batch_size != c.batch_size)
    refuse("--batch-size", std::to_string(o.batch_size), std::to_string(c.batch_size));
  // Each list against the run's, as numbers ("050" is 50).
  if (o.given_latent_dim && format_widths(parse_widths(o.latent_dim, "--latent-dim", "100,50")) != c.arch.latent_dims_text())
    refuse("--latent-dim", o.latent_dim, c.arch.latent_dims_text());
  if (o.given_hidden) {
    std::string given;
    for (const std::vector<int>& layer : parse_layer_widths(o.hidden, "--hidden"))
      given += (given.empty() ? "" : "/") + format_widths(layer);
    if (given != c.arch.hidden_text()) refuse("--hidden", o.hidden, c.arch.hidden_text());
  }
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
  const uint64_t finished = r.step / static_cast<uint64_t>(steps_per_epoch) - (epoch_left_unfinished(r, steps_per_epoch) ? 1 : 0);
  if (r.metrics_rows != finished) {
    throw Error(path + ": checkpoint metadata 'metrics_csv' has " + std::to_string(r.metrics_rows) +
                " rows, but step " + std::to_string(r.step) + " at " + std::to_string(steps_per_epoch) +
                " steps per epoch means " + std::to_string(finished) + " finished epochs");
  }
}

// "elbo, K = 1 sample per image" style, for the start-up lines.
std::string describe_objective(const TrainConfig& c) {
  const int k = c.objective.samples;
  const std::string groups =
      has_outer_samples(c.objective.objective)
          ? "M = " + std::to_string(c.objective.outer_samples) + " groups of "
          : "";
  const std::string beta = c.objective.objective == Objective::kCiwae
                               ? ", beta = " + format_beta(c.objective.ciwae_beta)
                               : "";
  return objective_name(c.objective.objective) + ", " + groups + "K = " + std::to_string(k) +
         (k == 1 ? " sample" : " samples") + (groups.empty() ? " per image" : " per image each") +
         beta + " (trained bound: " + bound_name(c.objective) + "); " +
         activation_name(c.arch.activation) +
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
// seed): the ELBO for elbo, the K-sample IWAE bound for the IWAE objectives,
// miwae's mean of M K-sample bounds (L_K over the M K samples' M groups),
// piwae's L_MK, ciwae's beta ELBO + (1 - beta) L_K (the ELBO with the
// analytic KL: the same expectation as the trained bound's sampled one).
// NaN (no test bound) when a Ctrl-C stops it.
double test_set_bound(Backend& backend, const VaeModel& model, const TrainConfig& c,
                      const IdxImages& test) {
  const int k = c.objective.total_samples();
  VaeModel eval_model(backend, c.arch, eval_images_per_chunk(k), k);
  eval_model.set_parameters(model.parameters());
  EvalRequest request;
  request.k = k;
  request.seed = c.seed;
  request.stop = [] { return stop_requested() != 0; };  // the epoch's end is written without it
  const Objective o = c.objective.objective;
  if (o == Objective::kMiwae) request.bounds = {c.objective.samples};
  const EvalResult r = evaluate(eval_model, test, request);
  if (r.stopped) return NAN;
  if (o == Objective::kElbo) return r.elbo;
  if (o == Objective::kMiwae) return r.bounds.at(0).second;
  if (o == Objective::kCiwae) {
    return c.objective.ciwae_beta * r.elbo + (1.0 - c.objective.ciwae_beta) * -r.nll;
  }
  return -r.nll;
}

// OUT/training_curve.png, redrawn from metrics.csv after an epoch: when the
// run stops (its last epoch, or an interrupt) and otherwise at most every
// 30 s, counted from the start (a drawing starts Python and matplotlib,
// ~0.8 s, which must not hold up short epochs; a run shorter than 30 s draws
// it once, at its end). Where it cannot be drawn (no matplotlib), one note
// and no more tries.
class TrainingCurve {
 public:
  explicit TrainingCurve(const std::string& out) : out_(out), last_draw_(Clock::now()) {}
  void draw_after_epoch(bool stops) {
    if (given_up_ || (!stops && seconds_since(last_draw_) < 30.0)) return;
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

// A run, read and checked once from the flags and (when resuming) the
// checkpoint: what it computes, how long, where. Everything below takes it.
struct TrainRun {
  TrainConfig config;
  int epochs = 0;
  int64_t max_steps = 0;
  int eval_every = 0, image_scale = 1;  // --eval-every, --image-scale
  int64_t checkpoint_every = 0;         // --checkpoint-every
  std::string data, out;
  bool resuming = false;
  TrainState resumed;         // the checkpoint continued, when resuming
  std::string resumed_path;   // its file
};

// A new run (or a resumed one written elsewhere) into an --out that holds
// another run's checkpoint would replace it silently: refused unless
// --overwrite says so.
void refuse_replacing_a_run(const TrainRun& run, const TrainOptions& o) {
  const std::string existing = run.out + "/checkpoint.safetensors";
  std::error_code ec;
  const bool own_folder = run.resuming && std::filesystem::equivalent(run.out, o.resume, ec);
  if (own_folder && o.overwrite) {  // was ignored: the run resumed
    throw Error("--overwrite starts a new run, but --resume " + o.resume +
                " continues the run there: give one or the other");
  }
  if (o.overwrite || !std::filesystem::exists(std::filesystem::symlink_status(existing, ec))) return;
  if (own_folder) return;
  throw Error("--out " + run.out + " holds a run (" + existing + "): continue it with --resume " + run.out +
              ", or give --overwrite to start over there (its checkpoint, model and metrics are replaced)");
}

TrainRun resolve_run(const TrainOptions& o) {
  TrainRun run;
  run.data = o.data;
  run.out = o.out;
  run.epochs = o.epochs;
  run.max_steps = o.max_steps;
  run.eval_every = o.eval_every;
  run.image_scale = o.image_scale;
  run.checkpoint_every = o.checkpoint_every;
  run.resuming = !o.resume.empty();
  if (!run.resuming) {
    run.config = config_from_flags(o);
    // The paper's schedule is the run's length unless --epochs cuts it.
    if (run.config.schedule == Schedule::kIwae && !o.given_epochs) run.epochs = kIwaeScheduleEpochs;
    return run;
  }
  if (!o.given_out) run.out = o.resume;
  run.resumed_path = o.resume + "/checkpoint.safetensors";
  std::error_code ec;
  if (std::filesystem::exists(o.resume, ec) && !std::filesystem::is_directory(o.resume, ec)) {
    const std::filesystem::path given(o.resume);
    throw Error("--resume takes a run's directory, and " + o.resume + " is a file" +
                (given.filename() == "checkpoint.safetensors" || given.filename() == "model.safetensors"
                     ? ": give its directory, --resume " + (given.has_parent_path() ? given.parent_path().string() : ".")
                     : std::string()));
  }
  if (!std::filesystem::exists(run.resumed_path)) {
    throw Error("--resume " + o.resume + ": no checkpoint there (" + run.resumed_path + " is missing)");
  }
  run.resumed = load_checkpoint(run.resumed_path);
  run.config = run.resumed.config;
  if (!o.given_epochs) run.epochs = run.resumed.epochs;
  if (!o.given_max_steps) run.max_steps = run.resumed.max_steps;
  if (!o.given_eval_every) run.eval_every = run.resumed.eval_every;
  if (!o.given_image_scale) run.image_scale = run.resumed.image_scale;
  if (!o.given_checkpoint_every) run.checkpoint_every = run.resumed.checkpoint_every;
  check_resume_flags(o, run.config, run.resumed_path);
  return run;
}

}  // namespace

// The training and test images.
struct TrainData {
  std::string dir;
  MnistSplit train, test;
  std::string fingerprint, dataset;
};

namespace {

// A resumed run's data must be its checkpoint's.
void check_train_data(const TrainRun& run, const TrainData& d) {
  if (run.data != d.dir) throw Error("--data " + run.data + " is not the pack's " + d.dir);
  if (run.resuming && d.fingerprint != run.resumed.data_fingerprint) {
    throw Error("--resume: the training images in " + run.data + " (" + d.fingerprint +
                ") are not the checkpoint's (" + run.resumed.data_fingerprint + ")");
  }
}

// --tf32, --gemm-epilogues, --two-branch-graph: a note where the backend has
// no such thing.
void apply_step_options(Backend& backend, const TrainOptions& o) {
  if (o.tf32 && !backend.set_tf32(true)) {
    std::cout << "note: --tf32 has no effect on the " << backend.name()
              << " backend; its GEMMs compute in FP32\n";
  }
  if (o.gemm_epilogues && !backend.set_gemm_epilogues(true)) {
    std::cout << "note: --gemm-epilogues has no effect on the " << backend.name()
              << " backend; it has no cuBLASLt\n";
  }
  if (o.two_branch_graph && !backend.set_two_branch(true)) {
    std::cout << "note: --two-branch-graph has no effect on the " << backend.name()
              << " backend; it runs its calls in order\n";
  }
}

TrainerOptions trainer_options(const TrainOptions& o) {
  TrainerOptions t;
  t.data = o.resident_data == "on"    ? TrainerOptions::DataPlacement::kResident
           : o.resident_data == "off" ? TrainerOptions::DataPlacement::kStreamed
                                      : TrainerOptions::DataPlacement::kAuto;
  t.step_graph = o.cuda_graph;
  return t;
}

// The run's length in steps and epochs, once the steps per epoch are known.
struct StepPlan {
  int steps_per_epoch = 0;
  int64_t total_steps = 0;
  int epochs = 0;
};

StepPlan plan_steps(const TrainRun& run, int steps_per_epoch) {
  StepPlan p;
  p.steps_per_epoch = steps_per_epoch;
  const int64_t all_steps = int64_t(run.epochs) * steps_per_epoch;
  p.total_steps = run.max_steps > 0 ? std::min<int64_t>(run.max_steps, all_steps) : all_steps;
  p.epochs = static_cast<int>((p.total_steps + steps_per_epoch - 1) / steps_per_epoch);
  return p;
}

// The "model:" and "objective:" lines.
void print_plan(const TrainRun& run, const StepPlan& plan, size_t parameters) {
  const TrainConfig& config = run.config;
  std::cout << "model: " << config.arch.describe() << ", " << parameters << " parameters; batch "
            << config.batch_size << ", " << plan.steps_per_epoch << " steps/epoch, " << plan.epochs
            << " epochs (" << plan.total_steps << " steps), lr " << config.adam.lr
            << (config.schedule == Schedule::kIwae ? " (iwae schedule)" : "") << ", Adam eps "
            << config.adam.eps << ", seed " << config.seed
            << (config.shuffle ? ", shuffled" : ", dataset order") << "\n";
  std::cout << "objective: " << describe_objective(config) << "\n";
}

// The epochs of a run on its trainer, with their lines, metrics.csv, model
// file, checkpoints and curve; then the task images. Each public step
// returns 0, or 128 + the signal when interrupted (after a checkpoint).
class TrainingLoop {
 public:
  TrainingLoop(const TrainRun& run, const TrainOptions& o, Backend& backend, Trainer& trainer,
               const TrainData& data, const RunStyle& style)
      : run_(run), o_(o), backend_(backend), trainer_(trainer), data_(data), style_(style),
        plan_(plan_steps(run, trainer.steps_per_epoch())), curve_(run.out),
        bound_(bound_name(run.config.objective)),
        model_path_(run.out + "/model.safetensors"), checkpoint_path_(run.out + "/checkpoint.safetensors") {
    if (run.resuming) metrics_ = upgraded_metrics_rows(run.resumed.metrics_csv, run.config.adam.lr);
  }

  const StepPlan& plan() const { return plan_; }

  // The first epoch to train: the trainer's, or a resumed run's unfinished one.
  int first_epoch() const {
    const bool unfinished = run_.resuming && epoch_left_unfinished(run_.resumed, plan_.steps_per_epoch);
    return static_cast<int>(trainer_.steps_done() / plan_.steps_per_epoch) + (unfinished ? 0 : 1);
  }

  // Epoch `epoch` from where the trainer is (a resumed run's first epoch
  // counts the seconds its checkpoint had).
  int train_epoch(int epoch) {
    const double earlier_seconds = run_.resuming && !resumed_seconds_used_ ? run_.resumed.epoch_seconds : 0.0;
    resumed_seconds_used_ = true;
    return train_epoch(epoch, earlier_seconds);
  }

  // The seed's task images; then the "wrote" line.
  int write_task_images() {
    // The task images need batches of 25; the training model may be smaller.
    VaeModel images_model(backend_, run_.config.arch, kTaskImageRows);
    images_model.set_parameters(trainer_.model().parameters());
    GridOptions grid;
    grid.scale = run_.image_scale;
    const uint64_t seed = run_.config.seed;
    const IdxImages& test = data_.test.images;
    std::vector<std::string> written = {model_path_, run_.out + "/metrics.csv", checkpoint_path_};
    if (curve_.drawn()) written.push_back(curve_.path());
    // A signal after the last step stops before the next set of images; a
    // resumed run has no steps left and writes them all.
    const std::function<std::vector<std::string>()> writers[] = {
        [&] { return write_prior_samples(images_model, run_.out, seed, grid); },
        [&] { return write_reconstructions(images_model, test, run_.out, seed, grid); },
        [&] { return write_interpolations(images_model, test, run_.out, seed, grid); }};
    for (const auto& write : writers) {
      if (const int signal_number = stop_requested()) {
        return report_interrupt(signal_number, "after the last step; " + model_path_ + " and " + checkpoint_path_ +
                                                   " are written, the task images not all");
      }
      const std::vector<std::string> paths = write();
      written.insert(written.end(), paths.begin(), paths.end());
    }
    std::string line = style_.prefix + "wrote";
    for (const std::string& path : written) line += " " + path;
    std::cout << line + "\n";
    if (const int signal_number = stop_requested()) {
      // Too late to stop anything, but the caller asked: exit as interrupted.
      std::fflush(stdout);
      std::cerr << "vae: interrupted by " << signal_name(signal_number)
                << " as the run ended; every file above is whole\n";
      return 128 + signal_number;
    }
    return 0;
  }

 private:
  // One epoch's steps (from where the trainer is), then its end.
  int train_epoch(int epoch, double earlier_seconds) {
    const auto start = Clock::now();
    auto last_progress = start;
    int steps = static_cast<int>(trainer_.steps_done() - uint64_t(epoch - 1) * plan_.steps_per_epoch);
    while (steps < plan_.steps_per_epoch && static_cast<int64_t>(trainer_.steps_done()) < plan_.total_steps) {
      trainer_.step();
      ++steps;
      const bool epoch_ends = steps == plan_.steps_per_epoch ||
                              static_cast<int64_t>(trainer_.steps_done()) == plan_.total_steps;
      const double seconds = earlier_seconds + seconds_since(start);
      if (const int status = after_step(epoch_ends, seconds)) return status;
      if (live() && seconds_since(last_progress) > 0.25) {
        last_progress = Clock::now();
        std::printf("\r  epoch %d/%d  step %d/%d  %s %.2f   ", epoch, plan_.epochs, steps, plan_.steps_per_epoch,
                    bound_.c_str(), trainer_.peek_mean_elbo());
        std::fflush(stdout);
      }
    }
    backend_.synchronize();  // the steps run asynchronously on a GPU: time them whole
    return finish_epoch(epoch, steps == plan_.steps_per_epoch, earlier_seconds + seconds_since(start));
  }

  // A checkpoint mid-epoch on a signal or every --checkpoint-every steps.
  // At an epoch's last step the epoch's own end writes its line, model and
  // checkpoint first; a checkpoint here would count its rows in the next epoch.
  int after_step(bool epoch_ends, double seconds) {
    if (epoch_ends) return 0;
    if (const int signal_number = stop_requested()) {
      commit_checkpoint(trainer_.steps_done(), [&] { save_checkpoint(checkpoint_path_, snapshot(seconds)); });
      if (live()) std::printf("\n");
      return report_interrupt(signal_number, "at step " + std::to_string(trainer_.steps_done()) + " of " +
                                                 std::to_string(plan_.total_steps) + "; checkpoint written to " +
                                                 checkpoint_path_);
    }
    if (run_.checkpoint_every > 0 && trainer_.steps_done() % static_cast<uint64_t>(run_.checkpoint_every) == 0) {
      commit_checkpoint(trainer_.steps_done(), [&] { save_checkpoint(checkpoint_path_, snapshot(seconds)); });
    }
    return 0;
  }

  // The epoch's line, metrics row, curve, model and checkpoint.
  int finish_epoch(int epoch, bool complete, double seconds) {
    const TrainConfig& config = run_.config;
    // A run that stops mid-epoch (--max-steps) checkpoints the epoch's partial
    // state, so that a resumed run completes this epoch as if never stopped.
    const TrainState partial = complete ? TrainState{} : snapshot(seconds);
    const uint64_t rows = trainer_.rows_since_take();
    const double elbo = trainer_.take_mean_elbo();
    const double rate = static_cast<double>(rows) / seconds;
    const double lr = scheduled_learning_rate(config.schedule, config.adam.lr, epoch - 1);
    const double test_bound = run_.eval_every > 0 && (epoch % run_.eval_every == 0 || epoch == plan_.epochs)
                                  ? test_set_bound(backend_, trainer_.model(), config, data_.test.images)
                                  : NAN;
    if (live()) std::printf("\r%*s\r", 72, "");
    std::printf("%sepoch %3d/%d  %s%s %9.3f%s  %7.2f s  %8.0f images/s\n", style_.prefix.c_str(), epoch, plan_.epochs,
                stage_text(config.schedule, epoch - 1, lr).c_str(), bound_.c_str(), elbo,
                std::isnan(test_bound) ? "" : ("  test " + fixed(test_bound, 3)).c_str(), seconds, rate);
    std::fflush(stdout);
    const std::vector<float> params = trainer_.model().parameters();
    check_finite(epoch, elbo, params);
    metrics_ += metrics_row(epoch, bound_, elbo, lr, seconds, rate, test_bound);
    const std::string csv = std::string(kMetricsHeader) + "\n" + metrics_;
    // All three or none (a full disk fails the writing of the temporaries,
    // before any rename); the checkpoint first.
    AtomicFileSet files;
    files.add(checkpoint_path_, checkpoint_bytes(checkpoint_path_, complete ? snapshot(0.0) : partial));
    files.add(model_path_, model_file_bytes(model_path_, config.arch, params, model_metadata(epoch, elbo)));
    files.add(run_.out + "/metrics.csv", csv.data(), csv.size());
    commit_checkpoint(trainer_.steps_done(), [&] { files.commit(); });
    const bool stops = epoch == plan_.epochs || stop_requested() != 0;
    if (!style_.member || epoch == plan_.epochs) curve_.draw_after_epoch(stops);
    if (const int signal_number = stop_requested()) {
      return report_interrupt(signal_number, "at the end of epoch " + std::to_string(epoch) + " (step " +
                                                 std::to_string(trainer_.steps_done()) + " of " +
                                                 std::to_string(plan_.total_steps) + "); checkpoint written to " +
                                                 checkpoint_path_);
    }
    return 0;
  }

  void check_finite(int epoch, double elbo, const std::vector<float>& params) const {
    bool finite = std::isfinite(elbo);
    for (float p : params) finite = finite && std::isfinite(p);
    if (!finite) {
      throw Error("training diverged in epoch " + std::to_string(epoch) + " (the " + bound_ +
                  " bound or a parameter is not finite); " + model_path_ + " and " + checkpoint_path_ +
                  " keep the last good state, if any");
    }
  }

  std::map<std::string, std::string> model_metadata(int epoch, double elbo) const {
    const TrainConfig& config = run_.config;
    std::map<std::string, std::string> metadata{{"seed", std::to_string(config.seed)},
            {"epochs", std::to_string(epoch)},
            {"steps", std::to_string(trainer_.steps_done())},
            {"batch_size", std::to_string(config.batch_size)},
            {"lr", shortest(config.adam.lr)},
            {"adam_eps", shortest(config.adam.eps)},
            {"objective", objective_name(config.objective.objective)},
            {"samples", std::to_string(config.objective.samples)},
            {"outer_samples", std::to_string(config.objective.outer_samples)},
            {"init", init_name(config.init)},
            {"schedule", schedule_name(config.schedule)},
            {"train_bound", bound_},
            {"train_bound_value", shortest(elbo)},
            {"dataset", data_.dataset},
            {"commit", CUVAE_GIT_COMMIT},
            {"created", utc_now()}};
    if (config.objective.objective == Objective::kCiwae) {
      metadata["ciwae_beta"] = format_beta(config.objective.ciwae_beta);
    }
    return metadata;
  }

  TrainState snapshot(double epoch_seconds) const {
    TrainState s;
    s.config = run_.config;
    s.epochs = run_.epochs;
    s.max_steps = run_.max_steps;
    s.eval_every = run_.eval_every;
    s.checkpoint_every = run_.checkpoint_every;
    s.image_scale = run_.image_scale;
    s.data_fingerprint = data_.fingerprint;
    s.step = trainer_.steps_done();
    s.params = trainer_.model().parameters();
    s.adam_m = trainer_.model().adam_moment(1);
    s.adam_v = trainer_.model().adam_moment(2);
    s.epoch_elbo_sum = trainer_.elbo_sum();
    s.epoch_rows = trainer_.rows_since_take();
    s.epoch_seconds = epoch_seconds;
    s.metrics_csv = metrics_;
    return s;
  }

  // After SIGINT or SIGTERM: what was saved and how to go on; 128 + the signal.
  // (One write: a pack's members report from several threads.)
  int report_interrupt(int signal_number, const std::string& state) const {
    std::fflush(stdout);
    std::cerr << "vae: " + style_.prefix + "interrupted by " + signal_name(signal_number) + " " + state +
                     (style_.member ? "\n"
                                    : "; resume with: vae train --resume " + run_.out + " --data " + run_.data + "\n");
    return 128 + signal_number;
  }

  bool live() const { return live_ && !style_.member; }

  const TrainRun& run_;
  const TrainOptions& o_;
  Backend& backend_;
  Trainer& trainer_;
  const TrainData& data_;
  const RunStyle style_;
  const StepPlan plan_;
  TrainingCurve curve_;
  const std::string bound_, model_path_, checkpoint_path_;
  const bool live_ = ::isatty(STDOUT_FILENO) != 0;
  std::string metrics_;  // metrics.csv's rows so far
  bool resumed_seconds_used_ = false;
};

// A run with everything it trains on. Members are destroyed in reverse:
// the loop, the trainer, the backend, then the folder's lock.
class PreparedRunImpl : public PreparedRun {
 public:
  PreparedRunImpl(const TrainOptions& o, const RunStyle& style, std::shared_ptr<const TrainData> data,
                  std::unique_ptr<Backend> backend)
      : o_(o), style_(style), run_(resolve_run(o_)) {
    // Made here and locked for the run's life (one run per directory), stale
    // temporaries of killed runs cleared; removed again if the run fails
    // before writing anything into it.
    out_dir_ = std::make_unique<OutputDirectory>(
        run_.out, run_.resuming && !o_.given_out ? "--resume" : "--out", "vae train");
    refuse_replacing_a_run(run_, o_);
    if (!style.member) {
      std::error_code same_ec;
      set_interrupted_run(run_.out, run_.resuming && std::filesystem::equivalent(run_.out, o_.resume, same_ec)
                                        ? static_cast<int64_t>(run_.resumed.step)
                                        : -1);
    }
    data_ = data ? data : load_train_data(run_.data, run_.config.arch.input_dim);
    check_train_data(run_, *data_);
    std::ostringstream quiet;
    if (backend) {
      backend_ = std::move(backend);
      (style.quiet ? quiet : std::cout) << "device: " << backend_->description() << "\n";
    } else {
      backend_ = open_backend(o_.device, style.quiet ? quiet : std::cout);
    }
    backend_->set_adaptive_threads(style.adaptive_threads);
    if (!style.quiet) {
      std::cout << "data: " << run_.data << ": "
                << (data_->dataset == "unknown" ? "not a known data set" : data_->dataset) << " ("
                << data_->fingerprint << ")\n";
      apply_step_options(*backend_, o_);
    } else {
      std::streambuf* saved = std::cout.rdbuf(quiet.rdbuf());  // the same notes as the first member's
      apply_step_options(*backend_, o_);
      std::cout.rdbuf(saved);
    }
    trainer_ = std::make_unique<Trainer>(*backend_, run_.config, data_->train.images, trainer_options(o_));
    const bool cuda = backend_->name() == "cuda";
    if (!style.quiet) {
      std::cout << "step: " << trainer_->describe_step() << (o_.tf32 && cuda ? "; TF32 GEMMs" : "")
                << (o_.gemm_epilogues && cuda ? "; cuBLASLt epilogues" : "")
                << (o_.two_branch_graph && cuda ? "; weight gradients on a second branch" : "") << "\n";
    }
    if (run_.resuming) {
      const TrainState& r = run_.resumed;
      trainer_->restore(r.params, r.adam_m, r.adam_v, r.step, r.epoch_elbo_sum, r.epoch_rows);
    }
    loop_ = std::make_unique<TrainingLoop>(run_, o_, *backend_, *trainer_, *data_, style_);
    if (!style.quiet) print_plan(run_, loop_->plan(), trainer_->model().layout().size());
    if (run_.resuming) {
      check_resumed_progress(run_.resumed, run_.resumed_path, loop_->plan().steps_per_epoch,
                             loop_->plan().total_steps);
      std::cout << style.prefix + "resuming from " + run_.resumed_path + " at step " +
                       std::to_string(run_.resumed.step) + "\n";
    }
  }

  int first_epoch() const override { return loop_->first_epoch(); }
  int last_epoch() const override { return loop_->plan().epochs; }
  int train_epoch(int epoch) override { return loop_->train_epoch(epoch); }
  int write_task_images() override { return loop_->write_task_images(); }
  const std::string& out() const override { return run_.out; }
  std::shared_ptr<const TrainData> data() const override { return data_; }
  std::string backend_name() const override { return backend_->name(); }

 private:
  const TrainOptions o_;
  const RunStyle style_;
  const TrainRun run_;
  std::unique_ptr<OutputDirectory> out_dir_;
  std::shared_ptr<const TrainData> data_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Trainer> trainer_;
  std::unique_ptr<TrainingLoop> loop_;
};

}  // namespace

std::string shortest(double value) {
  char text[32];
  const std::to_chars_result result = std::to_chars(text, text + sizeof text, value);
  return std::string(text, result.ptr);
}

std::shared_ptr<const TrainData> load_train_data(const std::string& dir, int input_dim) {
  auto d = std::make_shared<TrainData>();
  d->dir = dir;
  d->train = load_mnist_split(dir, true);
  d->test = load_mnist_split(dir, false);
  check_task_image_inputs(d->test.images, input_dim, "the test images in " + dir);
  d->fingerprint = data_fingerprint(d->train.images);
  d->dataset = dataset_name_from_fingerprint(d->fingerprint);
  return d;
}

std::unique_ptr<PreparedRun> prepare_run(const TrainOptions& o, const RunStyle& style,
                                         std::shared_ptr<const TrainData> data, std::unique_ptr<Backend> backend) {
  return std::make_unique<PreparedRunImpl>(o, style, std::move(data), std::move(backend));
}

}  // namespace cuvae
