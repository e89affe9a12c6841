// vae eval: the test-set ELBO, the importance-sampled log-likelihood and the
// K-sample bounds of a saved model (include/cuvae/model/evaluate.h).
#include <signal.h>
#include <unistd.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <map>
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
#include "cuvae/cli/train_pack.h"
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
  std::vector<std::string> models;  // model files and packs' folders, as given
  std::string data = "data/mnist";
  std::string device = "auto";
  int k = 100;
  int limit = 0;
  uint64_t seed = 0;
  std::string bounds;     // "1,5,50", or empty
  std::string per_image;  // a file for one line per image, or empty
};

std::string fixed3(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f", value);
  return text;
}

// The training settings of a model but its seed, from its file: models that
// share them are one configuration, seeds of one experiment.
std::string training_configuration(const ModelFile& file) {
  const auto& m = file.metadata;
  auto get = [&](const char* key) {
    const auto it = m.find(key);
    return it == m.end() ? std::string("?") : it->second;
  };
  std::string text = file.arch.describe() + ", " + get("objective") + " K=" + get("samples");
  if (get("outer_samples") != "1" && get("outer_samples") != "?") text += " M=" + get("outer_samples");
  if (m.count("ciwae_beta")) text += " beta=" + get("ciwae_beta");
  return text + ", lr " + get("lr") + ", Adam eps " + get("adam_eps") + ", batch " + get("batch_size") + ", " +
         get("init") + " init, " + get("schedule") + " schedule, " + get("epochs") + " epochs";
}

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

// One model's evaluation: its line and JSON line (prefixed with its name
// when there are several), and what the summary over seeds needs.
struct ModelResult {
  std::string name, configuration;
  double elbo = 0, nll = 0;
};

// Evaluates `path`; 0 with `*result` filled, or 128 + the signal when a
// Ctrl-C stopped it.
int evaluate_model(const std::string& path, const std::string& name, const EvalOptions& o, Backend& backend,
                   const IdxImages& test, ModelResult* result) {
  const ModelFile file = load_model(path);
  EvalRequest request;
  request.k = o.k;
  request.limit = o.limit;
  request.seed = o.seed;
  if (!o.bounds.empty()) request.bounds = parse_bounds(o.bounds, o.k);
  request.per_image = !o.per_image.empty();
  const int chunk = eval_images_per_chunk(o.k);
  check_model_fits(backend, file.arch, chunk, o.k,
                   {"the model " + path, "chunks of " + std::to_string(chunk) + " test image" + (chunk == 1 ? "" : "s"),
                    "--k " + std::to_string(o.k)});
  std::unique_ptr<VaeModel> model = open_saved_model(backend, path, file, chunk, o.k);
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
              << " of " << (o.limit > 0 ? std::min(o.limit, test.count) : test.count) << " images"
              << (name.empty() ? "" : " of " + name) << "; nothing written\n";
    return 128 + signal_number;
  }
  if (!std::isfinite(r.elbo) || !std::isfinite(r.nll)) {
    throw Error(path + ": the test-set ELBO or NLL is not finite (a diverged model?)");
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
  std::printf("%sOn %d test images (fixed binarization, seed %llu): ELBO %.3f nats, NLL %.3f nats "
              "(importance sampled, K=%d)%s%s, %s, in %.1f s.\n",
              name.empty() ? "" : (name + ": ").c_str(), r.images, static_cast<unsigned long long>(o.seed), r.elbo,
              r.nll, r.k, bounds_text.empty() ? "" : "; bounds ", bounds_text.c_str(), active.c_str(), seconds);
  nlohmann::json line = {{"model", path},   {"images", r.images}, {"k", r.k},
                         {"seed", o.seed},     {"elbo", r.elbo},     {"nll", r.nll},
                         {"active_units", r.active_units}, {"seconds", seconds},
                         {"device", backend.name()}};
  if (!r.bounds.empty()) line["bounds"] = bounds;
  if (layers > 1) line["active_units_per_layer"] = r.active_units_per_layer;
  if (request.per_image) line["per_image"] = o.per_image;
  // Paths need not be UTF-8; replace bad bytes (U+FFFD) rather than throw.
  std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  result->name = name;
  result->configuration = training_configuration(file);
  result->elbo = r.elbo;
  result->nll = r.nll;
  return 0;
}

// The models --model names: files as given, a pack's folder as its members'
// model files (named by the member, "seed-3"; "PACK/seed-3" with several packs).
std::vector<std::pair<std::string, std::string>> models_to_evaluate(const std::vector<std::string>& given) {
  std::vector<std::pair<std::string, std::string>> models;  // path, name
  for (const std::string& g : given) {
    std::error_code ec;
    if (std::filesystem::is_directory(g, ec)) {
      if (!std::filesystem::exists(std::filesystem::path(g) / "pack.json", ec)) {
        throw Error("--model " + g + " is a directory but not a pack's (no pack.json): give a model file" +
                    (std::filesystem::exists(std::filesystem::path(g) / "model.safetensors", ec)
                         ? ", " + g + "/model.safetensors"
                         : std::string()));
      }
      for (const std::string& member : read_pack_members(g)) {
        models.emplace_back(g + "/" + member + "/model.safetensors", given.size() > 1 ? g + "/" + member : member);
      }
    } else {
      models.emplace_back(g, g);
    }
  }
  return models;
}

// Per configuration (the models' training settings but the seed): the mean
// and standard error over its models, as papers report.
void print_summary(const std::vector<ModelResult>& results) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<const ModelResult*>> groups;
  for (const ModelResult& r : results) {
    if (!groups.count(r.configuration)) order.push_back(r.configuration);
    groups[r.configuration].push_back(&r);
  }
  nlohmann::json summary = nlohmann::json::array();
  std::printf("\nper configuration, mean +- standard error over its models (seeds):\n");
  for (const std::string& c : order) {
    const std::vector<const ModelResult*>& g = groups[c];
    auto mean_se = [&](double ModelResult::*field) {
      double mean = 0;
      for (const ModelResult* r : g) mean += r->*field;
      mean /= static_cast<double>(g.size());
      double ss = 0;
      for (const ModelResult* r : g) ss += (r->*field - mean) * (r->*field - mean);
      const double se = g.size() > 1 ? std::sqrt(ss / static_cast<double>(g.size() - 1) / static_cast<double>(g.size())) : NAN;
      return std::make_pair(mean, se);
    };
    const auto [nll, nll_se] = mean_se(&ModelResult::nll);
    const auto [elbo, elbo_se] = mean_se(&ModelResult::elbo);
    std::string names;
    for (const ModelResult* r : g) names += (names.empty() ? "" : ", ") + r->name;
    std::printf("  %s: %zu model%s (%s): NLL %.3f +- %s, ELBO %.3f +- %s\n", c.c_str(), g.size(),
                g.size() == 1 ? "" : "s", names.c_str(), nll, std::isnan(nll_se) ? "-" : fixed3(nll_se).c_str(), elbo,
                std::isnan(elbo_se) ? "-" : fixed3(elbo_se).c_str());
    nlohmann::json entry = {{"configuration", c}, {"models", g.size()}, {"nll_mean", nll}, {"elbo_mean", elbo}};
    entry["nll_standard_error"] = std::isnan(nll_se) ? nlohmann::json() : nlohmann::json(nll_se);
    entry["elbo_standard_error"] = std::isnan(elbo_se) ? nlohmann::json() : nlohmann::json(elbo_se);
    summary.push_back(entry);
  }
  std::cout << nlohmann::json{{"configurations", summary}}.dump(-1, ' ', false,
                                                                  nlohmann::json::error_handler_t::replace)
            << std::endl;
}

int run_eval(const EvalOptions& o) {
  install_interrupt_handlers();  // a Ctrl-C ends the evaluation between chunks, with one line
  const std::vector<std::pair<std::string, std::string>> models = models_to_evaluate(o.models);
  for (const auto& [path, name] : models) load_model(path);  // bad models fail before the data is read
  const bool several = models.size() > 1 || (o.models.size() == 1 && models.front().first != o.models.front());
  if (!o.bounds.empty()) parse_bounds(o.bounds, o.k);
  if (!o.per_image.empty()) {
    if (several) throw Error("--per-image writes one model's images: give one --model");
    std::vector<std::pair<std::string, std::string>> inputs = data_set_inputs("--data", o.data);
    inputs.emplace_back("--model", models.front().first);
    check_output_is_not_an_input("--per-image", o.per_image, inputs);
    try {
      check_writable_file_path(o.per_image);  // before the long evaluation
    } catch (const Error& e) {
      throw Error(std::string("--per-image: ") + e.what());
    }
  }
  const IdxImages test = load_mnist_split(o.data, false).images;
  std::unique_ptr<Backend> backend = open_backend(o.device, std::cout);
  std::vector<ModelResult> results(models.size());
  for (size_t i = 0; i < models.size(); ++i) {
    if (const int status = evaluate_model(models[i].first, several ? models[i].second : "", o, *backend, test,
                                          &results[i])) {
      return status;
    }
  }
  if (several) print_summary(results);
  return 0;
}

}  // namespace

Command add_eval_command(CLI::App& app) {
  auto eval = std::make_shared<EvalOptions>();
  CLI::App* eval_cmd = app.add_subcommand("eval", "Test-set ELBO and importance-sampled negative log-likelihood");
  eval_cmd->add_option("--model", eval->models, "Model file written by vae train; or a pack's folder (vae train --seeds ...: each of its models); repeat it for several models. Several models: each evaluated in turn, then per configuration (all but the seed) the mean and standard error over its models")->required()->check(non_empty());
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
