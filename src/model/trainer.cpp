#include "cuvae/model/trainer.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "cuvae/error.h"

namespace cuvae {

std::vector<uint32_t> epoch_permutation(uint64_t seed, uint64_t epoch, uint32_t n) {
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  const RandomKey key{seed, RandomStream::kShuffle, epoch};
  for (uint32_t i = n; i > 1; --i) {
    // j uniform in [0, i): 24 random bits scaled, plus 32 more for large n.
    const Philox4 block = random_block(key, i);
    const uint64_t bits = (static_cast<uint64_t>(block.v[0]) << 32) | block.v[1];
    const uint32_t j = static_cast<uint32_t>(bits % i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

namespace {

// Checked before any buffer is sized by it.
int checked_batch_size(const Backend& backend, const TrainConfig& config, const IdxImages& images) {
  if (config.batch_size < 1 || config.batch_size > images.count) {
    throw Error("--batch-size must be between 1 and the number of training images (" +
                std::to_string(images.count) + "), got " + std::to_string(config.batch_size));
  }
  if (images.pixels_per_image() != config.arch.input_dim) {
    throw Error("images have " + std::to_string(images.pixels_per_image()) +
                " pixels but the model expects " + std::to_string(config.arch.input_dim));
  }
  config.objective.validate();
  MemoryCauses causes;
  if (config.objective.outer_samples > 1) {
    causes.samples = "--outer-samples " + std::to_string(config.objective.outer_samples) + " x --samples " +
                     std::to_string(config.objective.samples);
  }
  check_model_fits(backend, config.arch, config.batch_size, config.objective.total_samples(), causes);
  return config.batch_size;
}

}  // namespace

std::vector<double> pixel_means(const IdxImages& images) {
  const size_t dim = static_cast<size_t>(images.pixels_per_image());
  std::vector<double> sums(dim, 0.0);
  for (int i = 0; i < images.count; ++i) {
    const uint8_t* image = images.pixels.data() + static_cast<size_t>(i) * dim;
    for (size_t j = 0; j < dim; ++j) sums[j] += image[j];
  }
  for (double& sum : sums) sum /= 255.0 * std::max(1, images.count);
  return sums;
}

// Per sample row, what the stochastic layers above the first keep: each
// encoder's and decoder's outputs and gradient scratch (the hidden widths
// twice over, and their tops), h, dh, eps, the log ratio, two gradients of
// the encoder's output and the decoder's.
size_t upper_layer_floats_per_row(const Architecture& arch) {
  size_t floats = 0;
  for (int l = 1; l < arch.stochastic_layers(); ++l) {
    size_t hidden = 0;
    for (int h : arch.hidden_of(l)) hidden += static_cast<size_t>(h);
    const size_t latent = static_cast<size_t>(arch.latent_dim_of(l));
    const size_t below = static_cast<size_t>(arch.latent_dim_of(l - 1));
    floats += 4 * hidden + 2 * latent + 2 * below + 3 * latent + 1 + 4 * latent + 2 * below;
  }
  return floats;
}

size_t model_bytes(const Architecture& arch, int images, int samples) {
  const ParameterLayout layout(arch);
  size_t widest = static_cast<size_t>(std::max(arch.input_dim, 2 * arch.latent_dim));
  size_t hidden = 0;
  for (int h : arch.hidden) {
    widest = std::max(widest, static_cast<size_t>(h));
    hidden += static_cast<size_t>(h);
  }
  const size_t b = static_cast<size_t>(images), rows = b * static_cast<size_t>(samples);
  const size_t d = static_cast<size_t>(arch.input_dim), l = static_cast<size_t>(arch.latent_dim);
  // Per decoder row: its layers' outputs, two gradient scratch rows, the
  // logits' gradient, z, dz, eps and four per-sample values; per image the
  // encoder's the same and the batch itself.
  const size_t decoder_floats = rows * (hidden + d + 2 * widest + d + 3 * l + 4 + upper_layer_floats_per_row(arch));
  const size_t encoder_floats = b * (hidden + 2 * l + 2 * widest + 2 * l + d + 4);
  return sizeof(float) * (4 * layout.size() + decoder_floats + encoder_floats);
}

void check_model_fits(const Backend& backend, const Architecture& arch, int images, int samples,
                      const MemoryCauses& causes) {
  const size_t available = backend.memory_bytes();
  if (samples > ObjectiveConfig::kMaxSamples) {
    throw Error("--samples must be between 1 and " + std::to_string(ObjectiveConfig::kMaxSamples) +
                ", got " + std::to_string(samples));
  }
  const size_t needed = model_bytes(arch, images, samples);
  if (available == 0 || needed <= available) return;
  // The parameters, their gradients and Adam's two moments; the rest is the
  // activations and their gradients, which grow with images x samples.
  const size_t parameters = ParameterLayout(arch).size();
  const size_t parameter_bytes = 4 * sizeof(float) * parameters;
  const size_t activation_bytes = needed - parameter_bytes;
  const std::string by_parameters = !causes.parameters.empty()
                                        ? causes.parameters
                                        : "--hidden " + arch.hidden_text() + " and --latent-dim " + arch.latent_dims_text();
  const std::string by_images = !causes.images.empty() ? causes.images : "--batch-size " + std::to_string(images);
  const std::string by_samples = !causes.samples.empty() ? causes.samples : "--samples " + std::to_string(samples);
  auto gib = [](size_t bytes) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
    return std::string(text);
  };
  char count[32];
  std::snprintf(count, sizeof count, "%.3g", static_cast<double>(parameters));
  const std::string rows = std::to_string(static_cast<long long>(images) * samples);
  const std::string limit =
      ", more than the " + backend.name() + " backend's " + gib(available) + " of memory";
  if (parameter_bytes >= activation_bytes) {
    throw Error(by_parameters + " needs " + gib(parameter_bytes) + " for " + count +
                " parameters, their gradients and Adam's moments (" + gib(needed) + " in all, with the activations of " +
                by_images + " and " + by_samples + ")" + limit);
  }
  throw Error(by_images + " with " + by_samples + " needs " + gib(activation_bytes) + " for the activations of " +
              rows + " decoder rows (" + gib(needed) + " in all, with the parameters of " + by_parameters + ")" + limit);
}

Trainer::Trainer(Backend& backend, const TrainConfig& config, const IdxImages& images,
                 const TrainerOptions& options)
    : backend_(backend),
      config_(config),
      images_(images),
      model_(backend, config.arch, checked_batch_size(backend, config, images),
             config.objective.total_samples()),
      steps_per_epoch_(images.count / std::max(1, config.batch_size)),
      x_(backend, static_cast<size_t>(config.batch_size) * config.arch.input_dim),
      eps_(backend, static_cast<size_t>(config.batch_size) * config.objective.total_samples() *
                        config.arch.noise_per_sample()),
      elbo_sum_(backend, 1) {
  if (config.init == InitScheme::kGlorot) {
    const std::vector<double> means = pixel_means(images);
    model_.initialize(config.seed, config.init, &means);
  } else {
    model_.initialize(config.seed, config.init);
  }
  const double zero = 0.0;
  backend_.copy_to_device(elbo_sum_.get(), &zero, sizeof(zero));
  using Placement = TrainerOptions::DataPlacement;
  if (options.data != Placement::kStreamed && backend_.memory_is_host()) {
    resident_images_ = images_.pixels.data();
  } else if (options.data != Placement::kStreamed) {
    try {
      images_on_backend_ = to_device(backend_, images_.pixels);
      if (config_.shuffle) order_on_backend_ = DeviceArray<uint32_t>(backend_, images_.count);
      resident_images_ = images_on_backend_.get();
    } catch (const Error& e) {
      if (options.data == Placement::kResident) throw;
      images_on_backend_.reset();
      order_on_backend_.reset();
      data_note_ = std::string(" (does not fit: ") + e.what() + ")";
    }
  }
  if (options.step_graph && data_resident()) recording_ = backend_.make_step_recording();
}

std::string Trainer::describe_step() const {
  const double mib = static_cast<double>(images_.pixels.size()) / (1 << 20);
  char size[32];
  std::snprintf(size, sizeof(size), "%.1f MiB", mib);
  std::string line =
      !data_resident()              ? std::string("training images streamed batch by batch") + data_note_
      : images_on_backend_.get() ? std::string("training images resident in ") + backend_.name() +
                                       " memory (" + size + ")"
                                 : std::string("training images read in place from host memory (") +
                                       size + ")";
  if (backend_.name() == "cuda") {
    line += recording_ ? "; step replayed as a CUDA Graph" : "; step launched call by call";
  }
  return line;
}

bool Trainer::update_epoch_order(int index_in_epoch) {
  if (index_in_epoch != 0 && !order_.empty()) return false;
  order_ = epoch_permutation(config_.seed, step_ / steps_per_epoch_, static_cast<uint32_t>(images_.count));
  return true;
}

const uint8_t* Trainer::batch_pixels(int index_in_epoch) {
  const size_t dim = static_cast<size_t>(images_.pixels_per_image());
  const size_t first = static_cast<size_t>(index_in_epoch) * config_.batch_size;
  if (!config_.shuffle) return images_.pixels.data() + first * dim;
  // Shuffled: gather the batch's rows into one contiguous host buffer.
  update_epoch_order(index_in_epoch);
  gather_.resize(static_cast<size_t>(config_.batch_size) * dim);
  for (int r = 0; r < config_.batch_size; ++r) {
    std::memcpy(gather_.data() + r * dim, images_.pixels.data() + order_[first + r] * dim, dim);
  }
  return gather_.data();
}

void Trainer::step() {
  const int rows = config_.batch_size;
  const int index_in_epoch = static_cast<int>(step_ % static_cast<uint64_t>(steps_per_epoch_));
  const uint64_t t = step_ + 1;  // Adam's 1-based step, also the random draws' step
  if (data_resident()) {
    // The epoch's order goes to the backend before, not inside, the step.
    if (config_.shuffle && update_epoch_order(index_in_epoch) && order_on_backend_.get()) {
      backend_.copy_to_device(order_on_backend_.get(), order_.data(), order_.size() * sizeof(uint32_t));
    }
    const uint32_t* order = !config_.shuffle          ? nullptr
                            : order_on_backend_.get() ? order_on_backend_.get()
                                                      : order_.data();
    backend_.run_step(recording_.get(), [&] {
      backend_.binarize_rows(resident_images_, order,
                             static_cast<uint64_t>(index_in_epoch) * rows, rows, config_.arch.input_dim,
                             RandomKey{config_.seed, RandomStream::kBinarize, t}, x_.get());
      step_body(t);
    });
  } else {
    backend_.upload_and_binarize(batch_pixels(index_in_epoch), rows, config_.arch.input_dim, 0,
                                 RandomKey{config_.seed, RandomStream::kBinarize, t}, x_.get());
    step_body(t);
  }
  step_ = t;
  rows_since_take_ += static_cast<uint64_t>(rows);
}

// Everything after the batch is in x_: draw eps, the objective and its
// gradient, the bound's sum, Adam at the schedule's rate.
void Trainer::step_body(uint64_t t) {
  const int images = config_.batch_size;
  backend_.fill_normal(eps_.get(), eps_.size(), 0, RandomKey{config_.seed, RandomStream::kEps, t});
  model_.forward_backward(x_.get(), eps_.get(), images, config_.objective, true);
  model_.accumulate_bound(config_.objective, images, elbo_sum_.get());
  AdamConfig adam = config_.adam;
  adam.lr = learning_rate();
  model_.adam_update(adam, t);
}

double Trainer::learning_rate() const {
  const int epoch = static_cast<int>(step_ / static_cast<uint64_t>(steps_per_epoch_));
  return scheduled_learning_rate(config_.schedule, config_.adam.lr, epoch);
}

double Trainer::elbo_sum() const {
  double sum = 0.0;
  backend_.copy_to_host(&sum, elbo_sum_.get(), sizeof(sum));
  return sum;
}

double Trainer::peek_mean_elbo() const {
  return rows_since_take_ == 0 ? 0.0 : elbo_sum() / static_cast<double>(rows_since_take_);
}

void Trainer::restore(const std::vector<float>& params, const std::vector<float>& adam_m,
                      const std::vector<float>& adam_v, uint64_t steps_done, double elbo_sum,
                      uint64_t rows) {
  model_.set_parameters(params);
  model_.set_adam_moments(adam_m, adam_v);
  step_ = steps_done;
  backend_.copy_to_device(elbo_sum_.get(), &elbo_sum, sizeof(elbo_sum));
  rows_since_take_ = rows;
  order_.clear();  // the shuffled order is recomputed for the resumed epoch
}

double Trainer::take_mean_elbo() {
  const double mean = peek_mean_elbo();
  const double zero = 0.0;
  backend_.copy_to_device(elbo_sum_.get(), &zero, sizeof(zero));
  rows_since_take_ = 0;
  return mean;
}

}  // namespace cuvae
