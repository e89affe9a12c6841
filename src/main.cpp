// vae: the driver. Trains the seed's VAE, writes its task images, evaluates
// saved models. Library errors arrive as cuvae::Error and become one line on
// stderr and a non-zero exit.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cuvae/atomic_file.h"
#include "cuvae/backend.h"
#include "cuvae/bench_command.h"
#include "cuvae/blas_kernel.h"
#include "cuvae/build_info.h"
#include "cuvae/cpu_gemm.h"
#include "cuvae/denormals.h"
#include "cuvae/error.h"
#include "cuvae/evaluate.h"
#include "cuvae/idx.h"
#include "cuvae/model_file.h"
#include "cuvae/openmp_wait.h"
#include "cuvae/picture_commands.h"
#include "cuvae/task_images.h"
#include "cuvae/trainer.h"
#include "cuvae/timing.h"
#include "cuvae/train_command.h"

namespace {

using cuvae::Error;

// ---------------------------------------------------------------------------
// Options shared by the subcommands.

struct ImageOptions {
  std::string model;
  std::string data = "data/mnist";
  std::string out = "runs/images";
  std::string device = "auto";
  uint64_t seed = 0;
  int scale = 1;
};

// Number checks. CLI11's Range says "Value abc not in range 1 to 1048576" for
// text that is no number, PositiveNumber spells DBL_MAX out in full, and an
// unsigned option takes "-1" as 2^64 - 1; these say what is wrong instead.
// CLI11 converts with strtoll/strtoull (base 0) and ignores ERANGE, clamping
// text beyond 64 bits to the limit; these parse the same way and refuse it.
enum class Parsed { kOk, kNotANumber, kOutOfRange };

template <typename T, typename Convert>
Parsed parse_integer(const std::string& input, Convert convert, T* value) {
  if (input.empty()) return Parsed::kNotANumber;
  char* end = nullptr;
  errno = 0;
  *value = convert(input.c_str(), &end, 0);
  if (end != input.c_str() + input.size()) return Parsed::kNotANumber;
  return errno == ERANGE ? Parsed::kOutOfRange : Parsed::kOk;
}

CLI::Validator integer_in(int64_t lo, int64_t hi, const std::string& description) {
  return CLI::Validator(
      [lo, hi](std::string& input) -> std::string {
        long long value = 0;
        const Parsed parsed = parse_integer(input, std::strtoll, &value);
        if (parsed == Parsed::kNotANumber) return "'" + input + "' is not an integer";
        if (parsed == Parsed::kOutOfRange || value < lo || value > hi) {
          return "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
                 ", got " + input;
        }
        return std::string();
      },
      description);
}

CLI::Validator integer_in(int64_t lo, int64_t hi) {
  return integer_in(lo, hi, "INT in [" + std::to_string(lo) + " - " + std::to_string(hi) + "]");
}

const CLI::Validator kNonNegativeInteger =
    integer_in(0, std::numeric_limits<int>::max(), "NONNEGATIVE");

// The learning rate is applied as a float: below FLT_MIN it is subnormal or
// zero there (1e-320 ran as 9.99989e-321 and trained nothing).
const CLI::Validator kLearningRate(
    [](std::string& input) -> std::string {
      double value = 0;
      if (!CLI::detail::lexical_cast(input, value)) return "'" + input + "' is not a number";
      if (!(value > 0.0) || !std::isfinite(value)) return "must be a positive number, got " + input;
      if (value < std::numeric_limits<float>::min() || value > std::numeric_limits<float>::max()) {
        return "must be a normal single-precision number (about 1.2e-38 to 3.4e38), got " + input;
      }
      return std::string();
    },
    "POSITIVE");

const CLI::Validator kUnsignedInteger(
    [](std::string& input) -> std::string {
      unsigned long long value = 0;
      if (input.find('-') != std::string::npos ||
          parse_integer(input, std::strtoull, &value) != Parsed::kOk) {
        return "must be a non-negative integer below 2^64, got " + input;
      }
      return std::string();
    },
    "");

// Paths: an empty one would surface later as "cannot create directory :" or
// ": MNIST directory not found", or (--resume) start a fresh run.
const CLI::Validator kNonEmpty(
    [](std::string& input) -> std::string {
      return input.empty() ? "must not be empty" : std::string();
    },
    "");


void add_device(CLI::App* app, std::string* device) {
  app->add_option("--device", *device, "auto (CUDA if compiled in and present, else CPU), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
}

void add_image_scale(CLI::App* app, int* scale) {
  app->add_option("--image-scale", *scale, "Scale each digit of the PNGs up by this integer factor")
      ->check(integer_in(1, 16))
      ->capture_default_str();
}

// ---------------------------------------------------------------------------
// vae sample | reconstruct | interpolate | eval: from a saved model

std::unique_ptr<cuvae::VaeModel> open_model(cuvae::Backend& backend, const std::string& path,
                                            const cuvae::ModelFile& file, int max_rows,
                                            int max_samples = 1) {
  auto model = std::make_unique<cuvae::VaeModel>(backend, file.arch, max_rows, max_samples);
  model->set_parameters(file.params);
  std::cout << "model: " << path << " (" << file.arch.describe() << ")\n";
  return model;
}

int run_images(const ImageOptions& o, const std::string& which) {
  const cuvae::ModelFile file = cuvae::load_model(o.model);  // bad models fail before anything else
  cuvae::IdxImages test;
  if (which != "sample") test = cuvae::load_mnist_split(o.data, false).images;
  std::unique_ptr<cuvae::Backend> backend = cuvae::open_backend(o.device, std::cout);
  // Removed again if the command fails (e.g. the model does not fit the data).
  cuvae::OutputDirectory out_dir(o.out);
  std::unique_ptr<cuvae::VaeModel> model =
      open_model(*backend, o.model, file, cuvae::kTaskImageRows);
  cuvae::GridOptions grid;
  grid.scale = o.scale;
  std::vector<std::string> paths;
  if (which == "sample") paths = cuvae::write_prior_samples(*model, o.out, o.seed, grid);
  if (which == "reconstruct") paths = cuvae::write_reconstructions(*model, test, o.out, o.seed, grid);
  if (which == "interpolate") paths = cuvae::write_interpolations(*model, test, o.out, o.seed, grid);
  out_dir.keep();
  std::cout << "wrote";
  for (const std::string& path : paths) std::cout << " " << path;
  std::cout << "\n";
  return 0;
}

struct EvalOptions {
  std::string model;
  std::string data = "data/mnist";
  std::string device = "auto";
  int k = 100;
  int limit = 0;
  uint64_t seed = 0;
  std::string bounds;     // "1,5,50", or empty
  std::string per_image;  // a file for one line per image, or empty
};

// "\r  eval: 1200/10000 images, 14 s, about 103 s left" on a terminal.
std::function<void(int, int)> eval_progress(const cuvae::Clock::time_point& start) {
  if (::isatty(STDOUT_FILENO) == 0) return nullptr;
  return [start](int done, int total) {
    const double seconds = cuvae::seconds_since(start);
    std::printf("\r  eval: %d/%d images, %.0f s, about %.0f s left   ", done, total, seconds,
                seconds / done * (total - done));
    std::fflush(stdout);
    if (done == total) std::printf("\r%*s\r", 64, "");
  };
}

// One "image,log_likelihood" line per image, atomically.
void write_per_image(const std::string& path, const std::vector<float>& log_likelihood) {
  std::string text = "image,log_likelihood\n";
  char line[64];
  for (size_t i = 0; i < log_likelihood.size(); ++i) {
    std::snprintf(line, sizeof line, "%zu,%.6f\n", i, static_cast<double>(log_likelihood[i]));
    text += line;
  }
  cuvae::write_file_atomically(path, text.data(), text.size());
}

int run_eval(const EvalOptions& o) {
  const cuvae::ModelFile file = cuvae::load_model(o.model);  // bad models fail before the data is read
  cuvae::EvalRequest request;
  request.k = o.k;
  request.limit = o.limit;
  request.seed = o.seed;
  if (!o.bounds.empty()) request.bounds = cuvae::parse_bounds(o.bounds, o.k);
  request.per_image = !o.per_image.empty();
  if (request.per_image) {
    try {
      cuvae::check_writable_file_path(o.per_image);  // before the long evaluation
    } catch (const Error& e) {
      throw Error(std::string("--per-image: ") + e.what());
    }
  }
  const cuvae::IdxImages test = cuvae::load_mnist_split(o.data, false).images;
  std::unique_ptr<cuvae::Backend> backend = cuvae::open_backend(o.device, std::cout);
  const int chunk = cuvae::eval_images_per_chunk(o.k);
  cuvae::check_model_fits(*backend, file.arch, chunk, o.k);
  std::unique_ptr<cuvae::VaeModel> model = open_model(*backend, o.model, file, chunk, o.k);
  const auto start = cuvae::Clock::now();
  request.progress = eval_progress(start);
  const cuvae::EvalResult r = cuvae::evaluate(*model, test, request);
  const double seconds = cuvae::seconds_since(start);
  if (!std::isfinite(r.elbo) || !std::isfinite(r.nll)) {
    throw Error(o.model + ": the test-set ELBO or NLL is not finite (a diverged model?)");
  }
  if (request.per_image) write_per_image(o.per_image, r.log_likelihood);
  std::string bounds_text;
  nlohmann::json bounds = nlohmann::json::object();
  for (const auto& [k, value] : r.bounds) {
    char text[64];
    std::snprintf(text, sizeof text, "%sL_%d %.3f", bounds_text.empty() ? "" : ", ", k, value);
    bounds_text += text;
    bounds[std::to_string(k)] = value;
  }
  std::printf("On %d test images (fixed binarization, seed %llu): ELBO %.3f nats, NLL %.3f nats "
              "(importance sampled, K=%d)%s%s, %d active units of %d, in %.1f s.\n",
              r.images, static_cast<unsigned long long>(o.seed), r.elbo, r.nll, r.k,
              bounds_text.empty() ? "" : "; bounds ", bounds_text.c_str(), r.active_units,
              file.arch.latent_dim, seconds);
  nlohmann::json line = {{"model", o.model},   {"images", r.images}, {"k", r.k},
                         {"seed", o.seed},     {"elbo", r.elbo},     {"nll", r.nll},
                         {"active_units", r.active_units}, {"seconds", seconds},
                         {"device", backend->name()}};
  if (!r.bounds.empty()) line["bounds"] = bounds;
  if (request.per_image) line["per_image"] = o.per_image;
  // Paths need not be UTF-8; replace bad bytes (U+FFFD) rather than throw.
  std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  return 0;
}

int run_info() {
  std::cout << "cuvae " << CUVAE_VERSION << " (commit " << CUVAE_GIT_COMMIT << ")\n";
#if CUVAE_HAVE_CUDA
  std::cout << "CUDA backend: compiled in\n";
#else
  std::cout << "CUDA backend: not compiled in\n";
#endif
  std::string why_not;
  if (cuvae::cuda_available(&why_not)) {
    std::cout << "CUDA device: " << cuvae::make_backend("cuda")->description() << "\n";
  } else {
    std::cout << "CUDA device: none (" << why_not << ")\n";
  }
  std::cout << "CPU backend: " << cuvae::make_backend("cpu")->description() << "\n";
  const cuvae::BlasKernelReport gemm = cuvae::cpu_gemm_kernel();
  std::cout << "CPU vector ISA: " << cuvae::vector_isa_name(gemm.cpu_isa) << "\n";
  std::cout << "GEMM kernel: " << gemm.kernel << "\n";
  std::cout << "GEMM shapes: " << cuvae::cpu_gemm_shapes() << "\n";
  if (!gemm.below_cpu.empty()) std::cout << "GEMM speed: " << gemm.below_cpu << "\n";
  std::cout << "OpenMP waiting: " << cuvae::openmp_wait_description() << "\n";
  std::cout.flush();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    // First: it may restart the binary.
    const std::string command = argc > 1 ? argv[1] : "";
    cuvae::select_blas_kernel_at_startup(argv, command == "train" || command == "eval" || command == "bench");
  } catch (const Error& e) {
    std::cerr << "vae: error: " << e.what() << "\n";
    return 2;
  }
  CLI::App app{"cuvae: a Variational Autoencoder on MNIST (the seed's model), CPU and CUDA"};
  // At most one; "none" is reported after parsing, so that an unknown flag or
  // subcommand is named rather than hidden behind "A subcommand is required".
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", std::string("cuvae ") + CUVAE_VERSION + " (commit " +
                                        CUVAE_GIT_COMMIT + ")");

  cuvae::TrainOptions train;
  CLI::App* train_cmd = app.add_subcommand("train", "Train the VAE; write the model, metrics.csv and the task images");
  train_cmd->add_option("--data", train.data, "Directory with the MNIST IDX files (tools/fetch_mnist.sh)")->check(kNonEmpty)->capture_default_str();
  CLI::Option* out_opt = train_cmd->add_option("--out", train.out, "Output directory (with --resume: defaults to the resumed directory)")->check(kNonEmpty)->capture_default_str();
  add_device(train_cmd, &train.device);
  CLI::Option* epochs_opt = train_cmd->add_option("--epochs", train.epochs, "Epochs in all (a resumed run counts its earlier epochs; default there: the checkpoint's)")->check(integer_in(1, cuvae::TrainConfig::kMaxEpochs))->capture_default_str();
  CLI::Option* batch_opt = train_cmd->add_option("--batch-size", train.batch_size, "Images per step (the last partial batch of an epoch is dropped)")->check(integer_in(1, cuvae::TrainConfig::kMaxBatchSize))->capture_default_str();
  CLI::Option* latent_opt = train_cmd->add_option("--latent-dim", train.latent_dim, "Latent dimensions L")->check(integer_in(1, cuvae::Architecture::kMaxWidth))->capture_default_str();
  CLI::Option* hidden_opt = train_cmd->add_option("--hidden", train.hidden, "Hidden layer widths of encoder and decoder, comma-separated")->capture_default_str();
  CLI::Option* lr_opt = train_cmd->add_option("--lr", train.lr, "Adam step size alpha (with --schedule iwae: the first stage's)")->check(kLearningRate)->capture_default_str();
  CLI::Option* adam_eps_opt = train_cmd->add_option("--adam-eps", train.adam_eps, "Adam's epsilon (the IWAE paper: 1e-4)")->check(kLearningRate)->capture_default_str();
  CLI::Option* objective_opt = train_cmd->add_option("--objective", train.objective, "elbo (analytic KL, averaged over K samples), iwae (the K-sample importance-weighted bound) or iwae-dreg (the same, DReG gradients for the encoder)")->check(CLI::IsMember({"elbo", "iwae", "iwae-dreg"}))->capture_default_str();
  CLI::Option* samples_opt = train_cmd->add_option("--samples", train.samples, "K: samples of z per image (the decoder runs on batch * K rows)")->check(integer_in(1, cuvae::ObjectiveConfig::kMaxSamples))->capture_default_str();
  CLI::Option* activation_opt = train_cmd->add_option("--activation", train.activation, "Hidden layers' nonlinearity: relu (the seed) or tanh (the IWAE paper)")->check(CLI::IsMember({"relu", "tanh"}))->capture_default_str();
  CLI::Option* init_opt = train_cmd->add_option("--init", train.init, "small-normal (the seed: 0.01 N(0,1)) or glorot (the IWAE paper's code: Glorot-uniform weights, zero biases, output bias at the logit of the mean pixel)")->check(CLI::IsMember({"small-normal", "glorot"}))->capture_default_str();
  CLI::Option* schedule_opt = train_cmd->add_option("--schedule", train.schedule, "constant, or iwae: 8 stages of 3^i epochs at lr 10^(-i/7) (3280 epochs; --epochs cuts it)")->check(CLI::IsMember({"constant", "iwae"}))->capture_default_str();
  train_cmd->add_option("--eval-every", train.eval_every, "Evaluate the trained bound on the test set every N epochs and at the end (0: never)")->check(integer_in(0, cuvae::TrainConfig::kMaxEpochs))->capture_default_str();
  CLI::Option* seed_opt = train_cmd->add_option("--seed", train.seed, "Seed of every random draw (init, binarization, eps, shuffles)")->check(kUnsignedInteger)->capture_default_str();
  CLI::Option* max_steps_opt = train_cmd->add_option("--max-steps", train.max_steps, "Stop after this many steps in all, a resumed run's earlier steps included (0: no limit)")->check(integer_in(0, std::numeric_limits<int64_t>::max(), "NONNEGATIVE"))->capture_default_str();
  CLI::Option* shuffle_opt = train_cmd->add_flag("--shuffle", train.shuffle, "Reshuffle the training images every epoch (default: dataset order, as the seed)");
  train_cmd->add_option("--checkpoint-every", train.checkpoint_every, "Write OUT/checkpoint.safetensors every N steps (0: at the end of every epoch; always at the end and on Ctrl-C)")->check(integer_in(0, std::numeric_limits<int64_t>::max(), "NONNEGATIVE"))->capture_default_str();
  train_cmd->add_option("--resume", train.resume, "Continue the run whose output directory is DIR, exactly, from DIR/checkpoint.safetensors; its architecture, batch size, lr, seed, shuffling and data are kept (--epochs, --max-steps, --out, --device, --checkpoint-every, --image-scale may change)")->check(kNonEmpty);
  train_cmd->add_flag("--tf32", train.tf32, "TF32 tensor-core math in the GEMMs (CUDA, sm_80 and newer): faster, about 1e-3 relative error per product; default FP32");
  train_cmd->add_flag("--gemm-epilogues", train.gemm_epilogues, "Dense layers as cuBLASLt GEMMs with fused bias+ReLU and ReLU-gradient+bias-gradient epilogues (CUDA; not yet measured on a GPU, so off by default)");
  train_cmd->add_flag("--two-branch-graph", train.two_branch_graph, "Run the weight-gradient GEMMs on a second stream, a second branch of the step's CUDA Graph, off the critical path (CUDA; not yet measured on a GPU, so off by default)");
  train_cmd->add_flag("--cuda-graph,!--no-cuda-graph", train.cuda_graph, "Replay each training step as one CUDA Graph (default; needs the training images resident)");
  train_cmd->add_option("--resident-data", train.resident_data, "Keep the training images in backend memory: auto (if they fit), on, off (stream each batch through pinned buffers)")->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  add_image_scale(train_cmd, &train.image_scale);

  ImageOptions images;
  std::vector<std::pair<std::string, CLI::App*>> image_cmds;
  for (const auto& [name, help] : std::vector<std::pair<std::string, std::string>>{
           {"sample", "Write task_3_1.png: 25 samples from the prior"},
           {"reconstruct", "Write task_3_2.png: 10 test images and their reconstructions"},
           {"interpolate", "Write task_3_3_0..4.png: latent interpolations between test images"}}) {
    CLI::App* cmd = app.add_subcommand(name, help);
    cmd->add_option("--model", images.model, "Model file written by vae train")->required()->check(kNonEmpty);
    cmd->add_option("--data", images.data, "Directory with the MNIST IDX files")->check(kNonEmpty)->capture_default_str();
    cmd->add_option("--out", images.out, "Output directory")->check(kNonEmpty)->capture_default_str();
    add_device(cmd, &images.device);
    cmd->add_option("--seed", images.seed, "Seed of the random draws")->check(kUnsignedInteger)->capture_default_str();
    add_image_scale(cmd, &images.scale);
    image_cmds.emplace_back(name, cmd);
  }

  EvalOptions eval;
  CLI::App* eval_cmd = app.add_subcommand("eval", "Test-set ELBO and importance-sampled negative log-likelihood");
  eval_cmd->add_option("--model", eval.model, "Model file written by vae train")->required()->check(kNonEmpty);
  eval_cmd->add_option("--data", eval.data, "Directory with the MNIST IDX files")->check(kNonEmpty)->capture_default_str();
  add_device(eval_cmd, &eval.device);
  eval_cmd->add_option("--k", eval.k, "Importance samples per image")->check(integer_in(1, 100000))->capture_default_str();
  eval_cmd->add_option("--limit", eval.limit, "Evaluate only the first N test images (0: all)")->check(kNonNegativeInteger)->capture_default_str();
  eval_cmd->add_option("--seed", eval.seed, "Seed of the fixed binarization and the samples")->check(kUnsignedInteger)->capture_default_str();
  eval_cmd->add_option("--bounds", eval.bounds, "Also estimate the K-sample IWAE bounds L_k for these k, comma-separated (e.g. 1,5,50; each at most --k), from the same samples");
  eval_cmd->add_option("--per-image", eval.per_image, "Write each test image's estimated log-likelihood to this CSV file")->check(kNonEmpty);

  // vae manifold | latents: pictures of the latent space (picture_commands.h).
  cuvae::ManifoldOptions manifold;
  CLI::App* manifold_cmd = app.add_subcommand("manifold", "Write manifold.png: decoder means over a grid of the prior's quantiles (Kingma & Welling, Fig. 4); L > 2: in the test set's first two principal directions");
  manifold_cmd->add_option("--model", manifold.model, "Model file written by vae train")->required()->check(kNonEmpty);
  manifold_cmd->add_option("--data", manifold.data, "Directory with the MNIST IDX files (read when L > 2)")->check(kNonEmpty)->capture_default_str();
  manifold_cmd->add_option("--out", manifold.out, "Output directory")->check(kNonEmpty)->capture_default_str();
  manifold_cmd->add_option("--grid", manifold.grid, "Images per side of the grid")->check(integer_in(cuvae::ManifoldOptions::kMinGrid, cuvae::ManifoldOptions::kMaxGrid))->capture_default_str();
  add_device(manifold_cmd, &manifold.device);
  manifold_cmd->add_option("--seed", manifold.seed, "Seed of the test set's fixed binarization (L > 2)")->check(kUnsignedInteger)->capture_default_str();
  add_image_scale(manifold_cmd, &manifold.scale);
  cuvae::LatentsOptions latents;
  CLI::App* latents_cmd = app.add_subcommand("latents", "Write latents.png: the test images' posterior means in 2-D (first two principal components when L > 2), coloured by label");
  latents_cmd->add_option("--model", latents.model, "Model file written by vae train")->required()->check(kNonEmpty);
  latents_cmd->add_option("--data", latents.data, "Directory with the MNIST IDX files, labels included")->check(kNonEmpty)->capture_default_str();
  latents_cmd->add_option("--out", latents.out, "Output directory")->check(kNonEmpty)->capture_default_str();
  add_device(latents_cmd, &latents.device);
  latents_cmd->add_option("--seed", latents.seed, "Seed of the test set's fixed binarization")->check(kUnsignedInteger)->capture_default_str();

  cuvae::BenchOptions bench;
  std::string bench_batches = "200,1000,4096";
  CLI::App* bench_cmd = app.add_subcommand("bench", "End-to-end training throughput of the seed's configuration per backend and batch size");
  bench_cmd->add_option("--data", bench.data, "MNIST directory (generated images when absent)")->check(kNonEmpty)->capture_default_str();
  bench_cmd->add_option("--device", bench.device, "all (every available backend), cpu or cuda")->check(CLI::IsMember({"all", "cpu", "cuda"}))->capture_default_str();
  bench_cmd->add_option("--batch-sizes", bench_batches, "Batch sizes, comma-separated")->capture_default_str();
  bench_cmd->add_option("--warmup", bench.warmup_steps, "Warm-up steps, not timed (a CUDA Graph step's two set-up runs come before them)")->check(integer_in(0, 100000))->capture_default_str();
  bench_cmd->add_option("--steps", bench.steps, "Steps per timed repetition")->check(integer_in(1, 100000))->capture_default_str();
  bench_cmd->add_option("--repeats", bench.repeats, "Timed repetitions; the median is reported")->check(integer_in(1, 1000))->capture_default_str();
  bench_cmd->add_option("--json", bench.json, "Also write the results as JSON to this file")->check(kNonEmpty);
  bench_cmd->add_flag("--tf32", bench.tf32, "TF32 tensor-core GEMMs on the CUDA backend");
  bench_cmd->add_flag("--gemm-epilogues", bench.gemm_epilogues, "Dense layers with cuBLASLt epilogues on the CUDA backend");
  bench_cmd->add_flag("--two-branch-graph", bench.two_branch_graph, "Weight-gradient GEMMs on a second stream / graph branch (CUDA)");
  bench_cmd->add_option("--objective", bench.objective, "The step's objective: elbo, iwae or iwae-dreg")->check(CLI::IsMember({"elbo", "iwae", "iwae-dreg"}))->capture_default_str();
  bench_cmd->add_option("--samples", bench.samples, "K samples per image (the decoder runs on batch * K rows)")->check(integer_in(1, cuvae::ObjectiveConfig::kMaxSamples))->capture_default_str();
  bench_cmd->add_option("--activation", bench.activation, "Hidden layers: relu or tanh")->check(CLI::IsMember({"relu", "tanh"}))->capture_default_str();
  bench_cmd->add_flag("--cuda-graph,!--no-cuda-graph", bench.cuda_graph, "Replay each step as a CUDA Graph (default)");

  CLI::App* info_cmd = app.add_subcommand("info", "Build facts: version, commit, CUDA, threads, BLAS");

  // "train, sample, ... or info", from the subcommands registered above.
  std::string subcommand_names;
  {
    const std::vector<CLI::App*> all = app.get_subcommands([](CLI::App*) { return true; });
    for (size_t i = 0; i < all.size(); ++i) {
      if (i > 0) subcommand_names += i + 1 == all.size() ? " or " : ", ";
      subcommand_names += all[i]->get_name();
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ExtrasError& e) {
    const std::vector<std::string> extras = app.remaining();
    if (app.get_subcommands().empty() && !extras.empty() && extras.front().rfind("-", 0) != 0) {
      std::cerr << "vae: error: unknown subcommand '" << extras.front()
                << "'; expected " << subcommand_names << " (see vae --help)\n";
    } else {
      std::cerr << "vae: error: " << e.what() << " (see vae --help)\n";
    }
    return 2;
  } catch (const CLI::ParseError& e) {
    std::cerr << "vae: error: " << e.what() << " (see vae --help)\n";
    return 2;
  }
  if (app.get_subcommands().empty()) {
    std::cerr << "vae: error: a subcommand is required: " << subcommand_names
              << " (see vae --help)\n";
    return 2;
  }

  // After parsing (whose number checks must see a subnormal --lr as what it
  // is), before the command starts any thread, so that every thread gets it.
  cuvae::enable_flush_denormals_to_zero();
  try {
    if (train_cmd->parsed()) {
      train.given_out = out_opt->count() > 0;
      train.given_batch_size = batch_opt->count() > 0;
      train.given_latent_dim = latent_opt->count() > 0;
      train.given_hidden = hidden_opt->count() > 0;
      train.given_lr = lr_opt->count() > 0;
      train.given_adam_eps = adam_eps_opt->count() > 0;
      train.given_objective = objective_opt->count() > 0;
      train.given_samples = samples_opt->count() > 0;
      train.given_activation = activation_opt->count() > 0;
      train.given_init = init_opt->count() > 0;
      train.given_schedule = schedule_opt->count() > 0;
      train.given_seed = seed_opt->count() > 0;
      train.given_shuffle = shuffle_opt->count() > 0;
      train.given_epochs = epochs_opt->count() > 0;
      train.given_max_steps = max_steps_opt->count() > 0;
      return cuvae::run_train_command(train);
    }
    for (const auto& [name, cmd] : image_cmds) {
      if (cmd->parsed()) return run_images(images, name);
    }
    if (eval_cmd->parsed()) return run_eval(eval);
    if (manifold_cmd->parsed()) return cuvae::run_manifold_command(manifold);
    if (latents_cmd->parsed()) return cuvae::run_latents_command(latents);
    if (info_cmd->parsed()) return run_info();
    if (bench_cmd->parsed()) {
      bench.batch_sizes = cuvae::parse_widths(bench_batches, "--batch-sizes");
      return cuvae::run_bench_command(bench);
    }
  } catch (const Error& e) {
    std::cout.flush();
    std::cerr << "vae: error: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "vae: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "vae: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
