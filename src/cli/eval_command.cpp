// vae eval: the test-set ELBO, the importance-sampled log-likelihood and the
// K-sample bounds of a saved model (include/cuvae/model/evaluate.h).
#include <signal.h>
#include <unistd.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/cli/commands.h"
#include "cuvae/cli/flags.h"
#include "cuvae/cli/interrupt.h"
#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/io/idx.h"
#include "cuvae/io/model_file.h"
#include "cuvae/model/evaluate.h"
#include "cuvae/model/trainer.h"
#include "cuvae/timing.h"

namespace cuvae {

namespace {

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
std::function<void(int, int)> eval_progress(const Clock::time_point& start) {
  if (::isatty(STDOUT_FILENO) == 0) return nullptr;
  return [start](int done, int total) {
    const double seconds = seconds_since(start);
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
  write_file_atomically(path, text.data(), text.size());
}

int run_eval(const EvalOptions& o) {
  install_interrupt_handlers();  // a Ctrl-C ends the evaluation between chunks, with one line
  const ModelFile file = load_model(o.model);  // bad models fail before the data is read
  EvalRequest request;
  request.k = o.k;
  request.limit = o.limit;
  request.seed = o.seed;
  if (!o.bounds.empty()) request.bounds = parse_bounds(o.bounds, o.k);
  request.per_image = !o.per_image.empty();
  if (request.per_image) {
    std::vector<std::pair<std::string, std::string>> inputs = data_set_inputs("--data", o.data);
    inputs.emplace_back("--model", o.model);
    check_output_is_not_an_input("--per-image", o.per_image, inputs);
    try {
      check_writable_file_path(o.per_image);  // before the long evaluation
    } catch (const Error& e) {
      throw Error(std::string("--per-image: ") + e.what());
    }
  }
  const IdxImages test = load_mnist_split(o.data, false).images;
  std::unique_ptr<Backend> backend = open_backend(o.device, std::cout);
  const int chunk = eval_images_per_chunk(o.k);
  check_model_fits(*backend, file.arch, chunk, o.k,
                   {"the model " + o.model, "chunks of " + std::to_string(chunk) + " test image" + (chunk == 1 ? "" : "s"),
                    "--k " + std::to_string(o.k)});
  std::unique_ptr<VaeModel> model = open_saved_model(*backend, o.model, file, chunk, o.k);
  const auto start = Clock::now();
  request.progress = eval_progress(start);
  request.stop = [] { return stop_requested() != 0; };
  const EvalResult r = evaluate(*model, test, request);
  const double seconds = seconds_since(start);
  if (r.stopped) {
    if (::isatty(STDOUT_FILENO) != 0) std::printf("\n");
    std::fflush(stdout);
    const int signal_number = stop_requested();
    std::cerr << "vae: interrupted by " << (signal_number == SIGINT ? "SIGINT" : "SIGTERM") << " after " << r.images
              << " of " << (o.limit > 0 ? std::min(o.limit, test.count) : test.count)
              << " images; nothing written\n";
    return 128 + signal_number;
  }
  if (!std::isfinite(r.elbo) || !std::isfinite(r.nll)) {
    throw Error(o.model + ": the test-set ELBO or NLL is not finite (a diverged model?)");
  }
  if (request.per_image) {
    try {
      write_per_image(o.per_image, r.log_likelihood);
    } catch (const Error& e) {
      throw Error(std::string("--per-image: ") + e.what());
    }
  }
  std::string bounds_text;
  nlohmann::json bounds = nlohmann::json::object();
  for (const auto& [k, value] : r.bounds) {
    char text[64];
    std::snprintf(text, sizeof text, "%sL_%d %.3f", bounds_text.empty() ? "" : ", ", k, value);
    bounds_text += text;
    bounds[std::to_string(k)] = value;
  }
  // "12 active units of 50", or per stochastic layer "active units 31 of 100
  // in layer 1, 7 of 50 in layer 2".
  const int layers = file.arch.stochastic_layers();
  std::string active = layers > 1 ? "active units " : "";
  for (int l = 0; l < layers; ++l) {
    const std::string count = std::to_string(r.active_units_per_layer[l]);
    const std::string of = std::to_string(file.arch.latent_dim_of(l));
    active += layers > 1 ? (l ? ", " : "") + count + " of " + of + " in layer " + std::to_string(l + 1)
                         : count + " active units of " + of;
  }
  std::printf("On %d test images (fixed binarization, seed %llu): ELBO %.3f nats, NLL %.3f nats "
              "(importance sampled, K=%d)%s%s, %s, in %.1f s.\n",
              r.images, static_cast<unsigned long long>(o.seed), r.elbo, r.nll, r.k,
              bounds_text.empty() ? "" : "; bounds ", bounds_text.c_str(), active.c_str(), seconds);
  nlohmann::json line = {{"model", o.model},   {"images", r.images}, {"k", r.k},
                         {"seed", o.seed},     {"elbo", r.elbo},     {"nll", r.nll},
                         {"active_units", r.active_units}, {"seconds", seconds},
                         {"device", backend->name()}};
  if (!r.bounds.empty()) line["bounds"] = bounds;
  if (layers > 1) line["active_units_per_layer"] = r.active_units_per_layer;
  if (request.per_image) line["per_image"] = o.per_image;
  // Paths need not be UTF-8; replace bad bytes (U+FFFD) rather than throw.
  std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  return 0;
}

}  // namespace

Command add_eval_command(CLI::App& app) {
  auto eval = std::make_shared<EvalOptions>();
  CLI::App* eval_cmd = app.add_subcommand("eval", "Test-set ELBO and importance-sampled negative log-likelihood");
  add_model(eval_cmd, &eval->model);
  eval_cmd->add_option("--data", eval->data, "Directory with the MNIST IDX files")->check(non_empty())->capture_default_str();
  add_device(eval_cmd, &eval->device);
  eval_cmd->add_option("--k", eval->k, "Importance samples per image")->transform(integer_in(1, 100000))->capture_default_str();
  eval_cmd->add_option("--limit", eval->limit, "Evaluate only the first N test images (0: all)")->transform(non_negative_integer())->capture_default_str();
  eval_cmd->add_option("--seed", eval->seed, "Seed of the fixed binarization and the samples")->transform(unsigned_integer())->capture_default_str();
  eval_cmd->add_option("--bounds", eval->bounds, "Also estimate the K-sample IWAE bounds L_k for these k, comma-separated (e.g. 1,5,50; each at most --k), from the same samples")->check(non_empty());
  eval_cmd->add_option("--per-image", eval->per_image, "Write each test image's estimated log-likelihood to this CSV file")->check(non_empty());

  return {eval_cmd, [eval] { return run_eval(*eval); }};
}

}  // namespace cuvae
