// `vae bench`. Throughput is timed on the plain backend (no synchronization
// inside a repetition but at its end); the breakdown comes from a separate,
// profiled run (ProfilingBackend synchronizes around every call), and the
// GEMMs are replayed alone on the same shapes to compare with the BLAS, and a
// large square SGEMM gives the machine's FP32 (or TF32) peak (on the CPU the
// faster of the backend's GEMM and OpenBLAS's own), so that each step's time
// can be set against the time its FLOPs need at that peak.
#include "cuvae/cli/bench_command.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <thread>
#include <nlohmann/json.hpp>

#include "cuvae/backends/cpu/blas_kernel.h"
#include "cuvae/backends/cpu/cpu_gemm.h"
#include "cuvae/backends/cpu/profiling_backend.h"
#include "cuvae/backends/lockstep.h"
#include "cuvae/build_info.h"
#include "cuvae/cli/commands.h"
#include "cuvae/cli/flags.h"
#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/io/idx.h"
#include "cuvae/model/side_by_side.h"
#include "cuvae/model/trainer.h"
#include "cuvae/timing.h"

namespace cuvae {

namespace {

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}


// MNIST's training images if they are in `dir` and there are enough for the
// largest batch, else random ones (throughput does not depend on the pixels);
// `source` says which, and why not MNIST. Files that are there but damaged
// (truncated, not IDX, a corrupt gzip stream) or not 28x28 are refused.
IdxImages bench_images(const std::string& dir, int needed, std::string* source) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  std::string why;
  if (!fs::exists(status)) {
    why = dir + " does not exist";
  } else if (!fs::is_directory(status)) {
    throw Error("--data " + dir + ": not a directory");
  } else {
    const std::string name = "train-images-idx3-ubyte";
    const std::string path = find_mnist_file_if_present(dir, name);
    if (path.empty()) {
      why = "no " + name + " or " + name + ".gz in " + dir;
    } else {
      IdxImages images = read_idx_images(path);
      if (images.pixels_per_image() != 784) {
        throw Error(path + ": images of " + std::to_string(images.rows) + "x" + std::to_string(images.cols) +
                    ", but the benchmark's model takes 28x28");
      }
      if (images.count >= needed) {
        *source = "MNIST training images from " + dir;
        return images;
      }
      why = path + " has " + std::to_string(images.count) + " images, fewer than the largest batch size, " +
            std::to_string(needed);
    }
  }
  IdxImages images;
  images.count = std::max(needed, 10000);
  images.rows = images.cols = 28;
  images.pixels.resize(static_cast<size_t>(images.count) * 784);
  for (size_t i = 0; i < images.pixels.size(); ++i) {
    images.pixels[i] = static_cast<uint8_t>(random_uniform(RandomKey{1, RandomStream::kInit, 0}, i) * 256);
  }
  *source = "generated images (" + why + ")";
  return images;
}

struct Result {
  std::string device;
  int batch = 0;
  double samples_per_s = 0, step_ms = 0, gemm_ms = 0, other_ms = 0, gemm_alone_ms = 0;
  double gemm_gflops = 0;
  double step_gflop = 0;  // the step's GEMM FLOPs
  std::map<std::string, double> op_ms;  // per step
};

// The step's objective, checked.
ObjectiveConfig bench_objective(const BenchOptions& o) {
  ObjectiveConfig objective;
  objective.objective = parse_objective(o.objective, "--objective");
  objective.samples = o.samples;
  objective.outer_samples = o.outer_samples;
  objective.ciwae_beta = o.ciwae_beta;
  objective.validate();
  return objective;
}

Result bench_one(Backend& backend, const IdxImages& images, int batch, const BenchOptions& o) {
  TrainConfig config;  // the seed's, with the objective and activation asked for
  config.batch_size = batch;
  config.objective = bench_objective(o);
  config.arch.set_layers(o.latent_dim, o.hidden);
  config.arch.activation = parse_activation(o.activation, "--activation");
  config.arch.validate();
  Result r;
  r.device = backend.name();
  r.batch = batch;
  {
    TrainerOptions options;
    options.step_graph = o.cuda_graph;
    Trainer trainer(backend, config, images, options);
    // A recorded step's first two runs set it up (one eager, one captured):
    // never timed, whatever --warmup says.
    const int setup_steps = trainer.step_recorded() ? 2 : 0;
    for (int s = 0; s < setup_steps + o.warmup_steps; ++s) trainer.step();
    backend.synchronize();
    std::vector<double> rates;
    for (int rep = 0; rep < o.repeats; ++rep) {
      const auto start = Clock::now();
      for (int s = 0; s < o.steps; ++s) trainer.step();
      backend.synchronize();
      rates.push_back(static_cast<double>(o.steps) * batch / seconds_since(start));
    }
    r.samples_per_s = median(rates);
    r.step_ms = 1e3 * batch / r.samples_per_s;
  }
  // The breakdown, from a profiled run of the same steps.
  ProfilingBackend profiler(backend);
  Trainer trainer(profiler, config, images);
  for (int s = 0; s < 3; ++s) trainer.step();
  profiler.reset();
  for (int s = 0; s < o.steps; ++s) trainer.step();
  double total = 0;
  for (const auto& [op, entry] : profiler.totals()) {
    r.op_ms[op] = 1e3 * entry.seconds / o.steps;
    total += r.op_ms[op];
  }
  r.gemm_ms = r.op_ms["gemm"];
  r.other_ms = total - r.gemm_ms;
  // The same GEMM shapes alone, one step's worth, on scratch buffers.
  std::vector<ProfilingBackend::GemmShape> shapes(profiler.gemm_shapes().begin(),
                                                  profiler.gemm_shapes().begin() +
                                                      static_cast<long>(profiler.gemm_shapes().size() / o.steps));
  size_t largest = 0;
  double flops = 0;
  for (const auto& g : shapes) {
    largest = std::max({largest, size_t(g.m) * g.k, size_t(g.k) * g.n, size_t(g.m) * g.n});
    flops += 2.0 * g.m * g.n * g.k;
  }
  DeviceArray<float> a(backend, largest), b(backend, largest), c(backend, largest);
  const std::vector<float> ones(largest, 0.01f);
  for (DeviceArray<float>* buffer : {&a, &b, &c}) {
    backend.copy_to_device(buffer->get(), ones.data(), largest * sizeof(float));
  }
  auto replay = [&] {
    for (const auto& g : shapes) {
      backend.gemm(g.transpose_a, g.transpose_b, g.m, g.n, g.k, 1.0f, a.get(), g.transpose_a ? g.m : g.k,
                   b.get(), g.transpose_b ? g.k : g.n, 0.0f, c.get(), g.n);
    }
  };
  for (int s = 0; s < 3; ++s) replay();
  backend.synchronize();
  std::vector<double> times;
  for (int rep = 0; rep < o.repeats; ++rep) {
    const auto start = Clock::now();
    for (int s = 0; s < o.steps; ++s) replay();
    backend.synchronize();
    times.push_back(1e3 * seconds_since(start) / o.steps);
  }
  r.gemm_alone_ms = median(times);
  r.gemm_gflops = flops / (r.gemm_alone_ms * 1e-3) / 1e9;
  r.step_gflop = flops / 1e9;
  return r;
}

// A pack of `models` models (seeds 0..models-1) against the same models
// trained one after another: images/s of each way, alternated within each
// repetition (a busy machine slows both alike), the medians reported.
struct PackResult {
  double alone_per_s = 0, pack_per_s = 0;
  double lockstep_per_s = 0;  // CUDA: the pack in lock step (lockstep.h); 0 elsewhere
  size_t bytes = 0;  // the pack's model buffers
};

// `models` trainers in lock step on one backend, each stepping on its own
// thread (train_pack.cpp's way on CUDA).
class LockstepTrainers {
 public:
  LockstepTrainers(const std::string& device, const TrainConfig& config, const IdxImages& images, int models,
                   const TrainerOptions& options)
      : pack_(make_backend(device), models, options.step_graph) {
    TrainConfig c = config;
    for (int m = 0; m < models; ++m) {
      backends_.push_back(pack_.member_backend(m));
      c.seed = static_cast<uint64_t>(m);
      trainers_.push_back(std::make_unique<Trainer>(*backends_.back(), c, images, options));
    }
  }
  ~LockstepTrainers() {
    trainers_.clear();
    backends_.clear();
  }
  // Every model's `steps` steps, side by side in lock step.
  void steps(int steps) {
    const int models = static_cast<int>(trainers_.size());
    std::vector<int> all;
    for (int m = 0; m < models; ++m) all.push_back(m);
    pack_.enter(all);
    std::vector<std::thread> threads;
    std::vector<std::string> errors(trainers_.size());
    for (int m = 0; m < models; ++m) {
      threads.emplace_back([&, m] {
        try {
          for (int s = 0; s < steps; ++s) trainers_[m]->step();
        } catch (const std::exception& e) {
          errors[m] = e.what();
        }
        pack_.leave(m);
      });
    }
    for (std::thread& t : threads) t.join();
    for (const std::string& e : errors) {
      if (!e.empty()) throw Error("a pack in lock step: " + e);
    }
    pack_.shared().synchronize();
  }

 private:
  LockstepPack pack_;
  std::vector<std::unique_ptr<Backend>> backends_;
  std::vector<std::unique_ptr<Trainer>> trainers_;
};

PackResult bench_pack(const std::string& device, const IdxImages& images, int batch, int models,
                      const BenchOptions& o) {
  TrainConfig config;
  config.batch_size = batch;
  config.objective = bench_objective(o);
  config.arch.set_layers(o.latent_dim, o.hidden);
  config.arch.activation = parse_activation(o.activation, "--activation");
  config.arch.validate();
  TrainerOptions options;
  options.step_graph = o.cuda_graph;
  std::vector<std::unique_ptr<Backend>> backends;
  std::vector<std::unique_ptr<Trainer>> trainers;
  for (int m = 0; m < models; ++m) {
    backends.push_back(make_backend(device));
    config.seed = static_cast<uint64_t>(m);
    trainers.push_back(std::make_unique<Trainer>(*backends.back(), config, images, options));
  }
  const bool cpu = device == "cpu";
  auto steps_of = [&](int m, int steps) {
    for (int s = 0; s < steps; ++s) trainers[m]->step();
    backends[m]->synchronize();
  };
  for (int m = 0; m < models; ++m) steps_of(m, (trainers[m]->step_recorded() ? 2 : 0) + o.warmup_steps);
  // On CUDA the lock-step way too (the default of train's packs there).
  std::unique_ptr<LockstepTrainers> lockstep;
  if (!cpu) {
    lockstep = std::make_unique<LockstepTrainers>(device, config, images, models, options);
    lockstep->steps(2 + o.warmup_steps);
  }
  const double images_per_round = static_cast<double>(models) * o.steps * batch;
  std::vector<double> alone, pack, together;
  // Each way as train runs it: alone, the thread count following the load;
  // side by side, one thread per model (train_pack.cpp).
  auto adaptive = [&](bool on) {
    for (auto& backend : backends) backend->set_adaptive_threads(on);
  };
  for (int rep = 0; rep < o.repeats; ++rep) {
    adaptive(true);
    auto start = Clock::now();
    for (int m = 0; m < models; ++m) steps_of(m, o.steps);
    alone.push_back(images_per_round / seconds_since(start));
    adaptive(side_by_side_threads(models, cpu) == 1);
    start = Clock::now();
    side_by_side(models, cpu, [&](int m) { steps_of(m, o.steps); });
    pack.push_back(images_per_round / seconds_since(start));
    if (lockstep) {
      start = Clock::now();
      lockstep->steps(o.steps);
      together.push_back(images_per_round / seconds_since(start));
    }
  }
  PackResult r;
  r.alone_per_s = median(alone);
  r.pack_per_s = median(pack);
  if (lockstep) r.lockstep_per_s = median(together);
  r.bytes = static_cast<size_t>(models) * model_bytes(config.arch, batch, config.objective.total_samples());
  return r;
}

// The --models table of one device.
void print_pack_table(const std::string& device, const IdxImages& images, const BenchOptions& o,
                      nlohmann::json* json) {
  side_by_side_threads(1, true);  // reads OpenMP's count before any thread tuner moves it
  const bool lockstep = device != "cpu";
  std::printf("%6s %6s %8s %16s %16s %10s%s %12s\n", "models", "batch", "threads", "one after another",
              "side by side", "pack/alone", lockstep ? "     lock step  lock/alone" : "", "memory MiB");
  for (int batch : o.batch_sizes) {
    for (int models : o.models) {
      const PackResult r = bench_pack(device, images, batch, models, o);
      const int threads = side_by_side_threads(models, device == "cpu");
      std::printf("%6d %6d %8d %16.0f %16.0f %9.2fx", models, batch, threads, r.alone_per_s, r.pack_per_s,
                  r.pack_per_s / r.alone_per_s);
      if (lockstep) std::printf(" %13.0f %10.2fx", r.lockstep_per_s, r.lockstep_per_s / r.alone_per_s);
      std::printf(" %12.1f\n", static_cast<double>(r.bytes) / (1 << 20));
      std::fflush(stdout);
      (*json)["packs"].push_back({{"device", device}, {"models", models}, {"batch", batch}, {"threads", threads},
                                  {"alone_images_per_s", r.alone_per_s}, {"pack_images_per_s", r.pack_per_s},
                                  {"lockstep_images_per_s", r.lockstep_per_s},
                                  {"memory_bytes", r.bytes}});
    }
  }
  std::printf("\nimages/s of all the models together (median of %d repetitions of %d steps per model, the two "
              "ways alternated):\none after another: each model's steps alone, on every thread; side by side: "
              "one model per thread (CPU) or\nper stream (GPU); lock step (GPU): the pack's way there, each call of every "
              "model's step run together\n(lockstep.h); memory: the models' buffers (parameters, Adam, activations), "
              "per way.\n",
              o.repeats, o.steps);
}

void write_json(const BenchOptions& o, const nlohmann::json& json) {
  if (o.json.empty()) return;
  // --data need not be UTF-8, which JSON requires: bad bytes become U+FFFD.
  const std::string text = json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  try {
    write_file_atomically(o.json, text.data(), text.size());
  } catch (const Error& e) {
    throw Error(std::string("--json: ") + e.what());
  }
}

// One large square row-major SGEMM, c = a b, n x n, on the backend's memory.
using SquareSgemm = std::function<void(int n, const float* a, const float* b, float* c)>;

// GFLOP/s of one large square SGEMM (n = 2048 on the CPU, 8192 on a GPU)
// through `gemm`, median of 5.
double square_sgemm_gflops(Backend& backend, const SquareSgemm& gemm) {
  const int n = backend.name() == "cpu" ? 2048 : 8192;
  const size_t count = size_t(n) * n;
  DeviceArray<float> a(backend, count), b(backend, count), c(backend, count);
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = static_cast<float>(random_uniform(RandomKey{2, RandomStream::kInit, 0}, i)) - 0.5f;
  backend.copy_to_device(a.get(), values.data(), count * sizeof(float));
  backend.copy_to_device(b.get(), values.data(), count * sizeof(float));
  auto one = [&] { gemm(n, a.get(), b.get(), c.get()); };
  one();
  backend.synchronize();
  std::vector<double> rates;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = Clock::now();
    one();
    backend.synchronize();
    rates.push_back(2.0 * n * double(n) * n / seconds_since(start) / 1e9);
  }
  return median(rates);
}

// The rates a step's floor is set against: the backend's own GEMM and, on
// the CPU, OpenBLAS's own kernel called directly (libxsmm's blocks, made for
// the model's shapes, ran a 2048^3 SGEMM at a third of OpenBLAS's rate on
// the Zen 3 of 2026-12-06). The floor uses the faster: the machine's rate.
struct SquareRates {
  double backend = 0, blas = 0;  // GFLOP/s; blas 0 where not measured
  double floor() const { return std::max(backend, blas); }
};

SquareRates square_sgemm_rates(Backend& backend) {
  SquareRates rates;
  rates.backend = square_sgemm_gflops(backend, [&](int n, const float* a, const float* b, float* c) {
    backend.gemm(false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
  });
  if (backend.name() == "cpu") {
    rates.blas = square_sgemm_gflops(backend, [](int n, const float* a, const float* b, float* c) {
      blas_sgemm(false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    });
  }
  return rates;
}

}  // namespace

int run_bench_command(const BenchOptions& o) {
  if (o.steps < 1 || o.repeats < 1 || o.warmup_steps < 0) {
    throw Error("--steps and --repeats must be at least 1, --warmup at least 0");
  }
  // Before the benchmark, not after minutes of it.
  const ObjectiveConfig objective = bench_objective(o);
  if (!o.json.empty()) {
    check_output_is_not_an_input("--json", o.json, data_set_inputs("--data", o.data));
    try {
      check_writable_file_path(o.json);
    } catch (const Error& e) {
      throw Error(std::string("--json: ") + e.what());
    }
  }
  std::vector<std::string> devices;
  std::string why_not;
  const bool have_cuda = cuda_available(&why_not);
  if (o.device == "all" || o.device == "cpu") devices.push_back("cpu");
  if (o.device == "cuda" || (o.device == "all" && have_cuda)) devices.push_back("cuda");
  const int largest_batch = *std::max_element(o.batch_sizes.begin(), o.batch_sizes.end());
  std::string source;
  const IdxImages images = bench_images(o.data, largest_batch, &source);

  std::printf("vae bench: %s, %s, commit %s\n", cpu_model().c_str(), utc_now("%Y-%m-%d %H:%M:%S UTC").c_str(), CUVAE_GIT_COMMIT);
  Architecture arch;
  arch.set_layers(o.latent_dim, o.hidden);
  arch.validate();
  std::printf("model %s, %s; objective %s, K = %d (samples/s: images/s); "
              "%s; %d warm-up steps, median of %d x %d steps\n",
              arch.describe().c_str(), o.activation.c_str(), o.objective.c_str(), o.samples, source.c_str(),
              o.warmup_steps, o.repeats, o.steps);
  if (!have_cuda && o.device == "all") std::printf("cuda: skipped (%s)\n", why_not.c_str());
  nlohmann::json json = {{"commit", CUVAE_GIT_COMMIT}, {"date", utc_now("%Y-%m-%d %H:%M:%S UTC")}, {"cpu", cpu_model()},
                         {"data", source}, {"objective", o.objective}, {"samples", o.samples},
                         {"activation", o.activation}, {"latent_dim", arch.latent_dims_text()},
                         {"hidden", arch.hidden_text()}, {"results", nlohmann::json::array()}};
  for (const std::string& device : devices) {
    std::unique_ptr<Backend> backend = make_backend(device);
    const bool tf32 = o.tf32 && backend->set_tf32(true);
    const bool epilogues = o.gemm_epilogues && backend->set_gemm_epilogues(true);
    const bool two_branch = o.two_branch_graph && backend->set_two_branch(true);
    // Every batch size is checked before the first is timed; the Trainer's
    // own check would name train's --batch-size.
    for (int batch : o.batch_sizes) {
      check_model_fits(*backend, arch, batch, objective.total_samples(),
                       {"the benchmark's model", "batch " + std::to_string(batch) + " of --batch-sizes",
                        objective.outer_samples > 1 ? "--outer-samples " + std::to_string(objective.outer_samples) +
                                                          " x --samples " + std::to_string(o.samples)
                                                    : "--samples " + std::to_string(o.samples)});
    }
    if (!o.models.empty()) {
      std::printf("\n%s: %s\n", device.c_str(), backend->description().c_str());
      print_pack_table(device, images, o, &json);
      continue;
    }
    const SquareRates square = square_sgemm_rates(*backend);
    const double peak = square.floor();
    std::printf("\n%s: %s\n", device.c_str(), backend->description().c_str());
    std::printf("%s GEMMs%s%s%s; large square SGEMM: %.0f GFLOP/s", tf32 ? "TF32" : "FP32",
                epilogues ? " with cuBLASLt epilogues" : "",
                two_branch ? ", weight gradients on a second branch" : "",
                device == "cuda" ? (o.cuda_graph ? "; step replayed as a CUDA Graph" : "; step launched call by call") : "",
                square.backend);
    if (square.blas > 0) {
      std::printf(", %s called directly: %.0f GFLOP/s; the floor is at the faster", current_blas_kernel().kernel.c_str(),
                  square.blas);
    }
    std::printf("\n");
    std::printf("%6s %12s %9s %9s %9s %7s %13s %10s %7s %9s %10s\n", "batch", "samples/s", "step ms", "gemm ms",
                "other ms", "other%", "gemm alone ms", "gemm GF/s", "rest%", "floor ms", "step/floor");
    for (int batch : o.batch_sizes) {
      const Result r = bench_one(*backend, images, batch, o);
      const double profiled = r.gemm_ms + r.other_ms;
      const double floor_ms = r.step_gflop / peak * 1e3;
      // GEMMs replayed alone (one launch each) can take longer than a whole
      // graph-replayed step: then the split says nothing, and we print "-".
      const double rest = std::max(0.0, 1.0 - r.gemm_alone_ms / r.step_ms);
      char rest_text[16] = "      -";
      if (r.gemm_alone_ms < r.step_ms) std::snprintf(rest_text, sizeof rest_text, "%6.1f%%", 100.0 * rest);
      std::printf("%6d %12.0f %9.3f %9.3f %9.3f %6.1f%% %13.3f %10.1f %s %9.3f %10.2f\n", r.batch,
                  r.samples_per_s, r.step_ms, r.gemm_ms, r.other_ms, 100.0 * r.other_ms / profiled,
                  r.gemm_alone_ms, r.gemm_gflops, rest_text, floor_ms, r.step_ms / floor_ms);
      std::fflush(stdout);
      const DenseFusionCounts fusion = backend->dense_fusion_counts();
      json["results"].push_back({{"device", device},
                                 {"description", backend->description()},
                                 {"batch", r.batch},
                                 {"samples_per_s", r.samples_per_s},
                                 {"step_ms", r.step_ms},
                                 {"profiled_gemm_ms", r.gemm_ms},
                                 {"profiled_other_ms", r.other_ms},
                                 {"gemm_alone_ms", r.gemm_alone_ms},
                                 {"gemm_alone_gflops", r.gemm_gflops},
                                 {"step_gemm_gflop", r.step_gflop},
                                 {"rest_share", rest},
                                 {"square_sgemm_gflops", square.backend},
                                 {"square_sgemm_gflops_openblas", square.blas > 0 ? nlohmann::json(square.blas) : nlohmann::json()},
                                 {"floor_gflops", peak},
                                 {"floor_ms", floor_ms},
                                 {"tf32", tf32},
                                 {"gemm_epilogues", epilogues},
                                 {"two_branch_graph", two_branch},
                                 {"cuda_graph", device == "cuda" && o.cuda_graph},
                                 {"profiled_op_ms", r.op_ms},
                                 {"dense_calls_fused", fusion.fused},
                                 {"dense_calls_unfused", fusion.unfused}});
    }
    if (epilogues) {
      const DenseFusionCounts fusion = backend->dense_fusion_counts();
      std::printf("cuBLASLt epilogues: %ld dense-layer calls fused, %ld left to the unfused path\n",
                  fusion.fused, fusion.unfused);
    }
  }
  if (!o.models.empty()) {
    write_json(o, json);
    return 0;
  }
  std::printf("\nsamples/s: median training throughput; gemm/other ms: one step's time in GEMMs and in\n"
              "everything else, from a profiled run (synchronized around every call, no CUDA Graph,\n"
              "no cuBLASLt epilogues);\n"
              "gemm alone: the step's GEMM shapes replayed without the rest; rest%%: 1 - gemm alone / step,\n"
              "the share of the real (unprofiled) step that is not GEMM time; floor: the step's GEMM\n"
              "FLOPs at the large square SGEMM's rate (on the CPU the faster of this backend's GEMM and\n"
              "OpenBLAS's own); step/floor: how far the step is from it.\n");
  write_json(o, json);
  return 0;
}

Command add_bench_command(CLI::App& app) {
  auto bench = std::make_shared<BenchOptions>();
  auto bench_batches = std::make_shared<std::string>("200,1000,4096");
  CLI::App* bench_cmd = app.add_subcommand("bench", "End-to-end training throughput per backend and batch size (the seed's model unless --latent-dim, --hidden, --activation, --objective say otherwise)");
  bench_cmd->add_option("--data", bench->data, "MNIST directory (generated images when it or its training images are absent, or too few for the largest batch; damaged files are refused)")->check(non_empty())->capture_default_str();
  bench_cmd->add_option("--device", bench->device, "all (every available backend), cpu or cuda")->check(CLI::IsMember({"all", "cpu", "cuda"}))->capture_default_str();
  bench_cmd->add_option("--batch-sizes", *bench_batches, "Batch sizes, comma-separated")->capture_default_str();
  bench_cmd->add_option("--warmup", bench->warmup_steps, "Warm-up steps, not timed (a CUDA Graph step's two set-up runs come before them)")->transform(integer_in(0, 100000))->capture_default_str();
  bench_cmd->add_option("--steps", bench->steps, "Steps per timed repetition")->transform(integer_in(1, 100000))->capture_default_str();
  bench_cmd->add_option("--repeats", bench->repeats, "Timed repetitions; the median is reported")->transform(integer_in(1, 1000))->capture_default_str();
  bench_cmd->add_option("--json", bench->json, "Also write the results as JSON to this file")->check(non_empty());
  bench_cmd->add_flag("--tf32", bench->tf32, "TF32 tensor-core GEMMs on the CUDA backend");
  bench_cmd->add_flag("--gemm-epilogues", bench->gemm_epilogues, "Dense layers with cuBLASLt epilogues on the CUDA backend");
  bench_cmd->add_flag("--two-branch-graph", bench->two_branch_graph, "Weight-gradient GEMMs on a second stream / graph branch (CUDA)");
  bench_cmd->add_option("--objective", bench->objective, "The step's objective: elbo, iwae, iwae-dreg, miwae, piwae or ciwae")->check(CLI::IsMember({"elbo", "iwae", "iwae-dreg", "miwae", "piwae", "ciwae"}))->capture_default_str();
  bench_cmd->add_option("--outer-samples", bench->outer_samples, "M groups of K samples per image (miwae and piwae only)")->transform(integer_in(1, ObjectiveConfig::kMaxSamples))->capture_default_str();
  bench_cmd->add_option("--ciwae-beta", bench->ciwae_beta, "ciwae's beta in [0, 1]")->check(unit_interval())->capture_default_str();
  bench_cmd->add_option("--samples", bench->samples, "K samples per image (the decoder runs on batch * K rows)")->transform(integer_in(1, ObjectiveConfig::kMaxSamples))->capture_default_str();
  bench_cmd->add_option("--activation", bench->activation, "Hidden layers: relu or tanh")->check(CLI::IsMember({"relu", "tanh"}))->capture_default_str();
  bench_cmd->add_option("--latent-dim", bench->latent_dim, "Latent units; one per stochastic layer, bottom first (100,50)")->check(non_empty())->capture_default_str();
  bench_cmd->add_option("--hidden", bench->hidden, "Hidden widths under each stochastic layer, '/' between layers (200,200/100,100)")->check(non_empty())->capture_default_str();
  bench_cmd->add_flag("--cuda-graph,!--no-cuda-graph", bench->cuda_graph, "Replay each step as a CUDA Graph (default)");
  auto bench_models = std::make_shared<std::string>();
  bench_cmd->add_option("--models", *bench_models, "Packs of these many models (e.g. 1,2,4,8,16) against the same models one after another, instead of the per-step breakdown")->check(non_empty());
  return {bench_cmd, [bench, bench_batches, bench_models] {
            bench->batch_sizes = parse_widths(*bench_batches, "--batch-sizes");
            if (!bench_models->empty()) {
              bench->models = parse_widths(*bench_models, "--models", "1,2,4,8");
              for (int m : bench->models) {
                if (m > 64) throw Error("--models " + *bench_models + ": at most 64 models per pack here");
              }
            }
            return run_bench_command(*bench);
          }};
}

}  // namespace cuvae
