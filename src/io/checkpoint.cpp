#include "cuvae/io/checkpoint.h"

#include <zlib.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "cuvae/error.h"
#include "cuvae/io/atomic_file.h"
#include "cuvae/io/safetensors.h"

namespace cuvae {

namespace {

constexpr const char* kFormat = "cuvae-checkpoint/1";

std::string exact(double value) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);  // round-trips a double
  return buffer;
}

const std::string& field(const std::string& path, const SafetensorsFile& file,
                         const std::string& key) {
  const auto it = file.metadata.find(key);
  if (it == file.metadata.end()) throw Error(path + ": checkpoint metadata has no '" + key + "'");
  return it->second;
}

// A field that older builds did not write, or `absent`.
std::string optional_field(const SafetensorsFile& file, const std::string& key, const char* absent) {
  const auto it = file.metadata.find(key);
  return it == file.metadata.end() ? absent : it->second;
}

// A field written by save_checkpoint, read back no wider than the range its
// flag allows: a hand-edited or corrupt value is refused, not wrapped.
uint64_t unsigned_field(const std::string& path, const SafetensorsFile& file, const std::string& key,
                        uint64_t lo = 0, uint64_t hi = std::numeric_limits<uint64_t>::max()) {
  const std::string& text = field(path, file, key);
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || text[0] == '-' || text[0] == '+' || text[0] == ' ' || errno == ERANGE ||
      value < lo || value > hi) {
    throw Error(path + ": checkpoint metadata '" + key + "' is '" + printable_excerpt(text) + "', not an integer in [" +
                std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return value;
}

// A finite double; `valid` says what else it must be, `what` in words.
double double_field(const std::string& path, const SafetensorsFile& file, const std::string& key,
                    bool (*valid)(double), const char* what) {
  const std::string& text = field(path, file, key);
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(value) || !valid(value)) {
    throw Error(path + ": checkpoint metadata '" + key + "' is '" + printable_excerpt(text) + "', not " + what);
  }
  return value;
}

// metrics.csv's rows as a checkpoint stores them: epochs 1, 2, ... in order,
// each "epoch,BOUND,bound,lr,seconds,images_per_s,test_bound" (BOUND the
// run's bound name, test_bound possibly empty) or an earlier build's
// "epoch,elbo,seconds,images_per_s"; numbers finite, times and rates >= 0.
// Returns how many; throws naming the line otherwise.
uint64_t check_metrics_rows(const std::string& path, const std::string& rows, const std::string& bound) {
  uint64_t epoch = 0;
  size_t at = 0;
  while (at < rows.size()) {
    const size_t end = rows.find('\n', at);
    const std::string line = rows.substr(at, end == std::string::npos ? std::string::npos : end - at);
    ++epoch;
    auto refuse = [&](const std::string& why) {
      throw Error(path + ": checkpoint metadata 'metrics_csv' row " + std::to_string(epoch) + " is '" +
                  printable_excerpt(line) + "': " + why);
    };
    if (end == std::string::npos) refuse("not ended by a newline (a truncated field)");
    std::vector<std::string> fields;
    for (size_t from = 0;;) {
      const size_t comma = line.find(',', from);
      fields.push_back(line.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
      if (comma == std::string::npos) break;
      from = comma + 1;
    }
    if (fields.size() != 7 && fields.size() != 4) refuse("not a row of metrics.csv (7 fields, or 4 of an earlier build)");
    if (fields[0] != std::to_string(epoch)) refuse("epochs must run 1, 2, 3, ... in order; expected " + std::to_string(epoch));
    auto number = [&](size_t i, bool nonnegative_value, bool may_be_empty) {
      if (may_be_empty && fields[i].empty()) return;
      char* stop = nullptr;
      const double v = std::strtod(fields[i].c_str(), &stop);
      if (fields[i].empty() || *stop != '\0' || !std::isfinite(v) || (nonnegative_value && v < 0.0)) {
        refuse("field " + std::to_string(i + 1) + " is not a " + (nonnegative_value ? "finite number >= 0" : "finite number"));
      }
    };
    if (fields.size() == 7) {
      if (fields[1] != bound && fields[1] != "elbo") refuse("field 2 is not the run's bound, " + bound);
      number(2, false, false);
      number(3, true, false);
      number(4, true, false);
      number(5, true, false);
      number(6, false, true);
    } else {
      number(1, false, false);
      number(2, true, false);
      number(3, true, false);
    }
    at = end + 1;
  }
  return epoch;
}

bool any_finite(double) { return true; }
bool nonnegative(double v) { return v >= 0.0; }
bool positive_normal(double v) { return v > 0.0 && std::isnormal(static_cast<float>(v)); }
bool in_unit_interval(double v) { return v >= 0.0 && v < 1.0; }

// A tensor of `size` values, all finite (and, for Adam's second moment,
// none negative), as model files are checked: a damaged checkpoint would
// otherwise resume and "diverge" at its first step.
std::vector<float> tensor(const std::string& path, const SafetensorsFile& file,
                          const std::string& name, size_t size, bool nonnegative = false) {
  const Tensor* t = file.find(name);
  if (t == nullptr) throw Error(path + ": checkpoint has no tensor '" + name + "'");
  if (t->data.size() != size) {
    throw Error(path + ": checkpoint tensor '" + name + "' has " + std::to_string(t->data.size()) +
                " values, the architecture needs " + std::to_string(size));
  }
  for (size_t i = 0; i < t->data.size(); ++i) {
    const float v = t->data[i];
    if (!std::isfinite(v) || (nonnegative && v < 0.0f)) {
      char text[32];
      std::snprintf(text, sizeof text, "%g", static_cast<double>(v));
      throw Error(path + ": checkpoint tensor '" + name + "' has value " + text + " at index " + std::to_string(i) +
                  (nonnegative ? ", not a finite number >= 0" : ", not a finite number") +
                  " (a damaged checkpoint; resume from an earlier copy or start over)");
    }
  }
  return t->data;
}

}  // namespace

std::string data_fingerprint(const IdxImages& images) {
  // zlib's crc32 takes a uInt length: feed it in chunks.
  uLong crc = crc32(0L, Z_NULL, 0);
  const size_t chunk = 1u << 30;
  for (size_t offset = 0; offset < images.pixels.size(); offset += chunk) {
    const size_t n = std::min(chunk, images.pixels.size() - offset);
    crc = crc32(crc, images.pixels.data() + offset, static_cast<uInt>(n));
  }
  char buffer[96];
  std::snprintf(buffer, sizeof buffer, "%d images of %dx%d, crc32 %08lx", images.count, images.rows,
                images.cols, static_cast<unsigned long>(crc));
  return buffer;
}

void save_checkpoint(const std::string& path, const TrainState& s) {
  const std::vector<char> bytes = checkpoint_bytes(path, s);
  write_file_atomically(path, bytes.data(), bytes.size());
}

std::vector<char> checkpoint_bytes(const std::string& path, const TrainState& s) {
  const size_t n = ParameterLayout(s.config.arch).size();
  SafetensorsFile file;
  const std::vector<int64_t> shape{static_cast<int64_t>(n)};
  file.tensors = {{"params", shape, s.params}, {"adam.m", shape, s.adam_m}, {"adam.v", shape, s.adam_v}};
  file.metadata = {{"format", kFormat},
                   {"input_dim", std::to_string(s.config.arch.input_dim)},
                   {"hidden", s.config.arch.hidden_text()},
                   {"latent_dim", s.config.arch.latent_dims_text()},
                   {"batch_size", std::to_string(s.config.batch_size)},
                   {"seed", std::to_string(s.config.seed)},
                   {"shuffle", s.config.shuffle ? "1" : "0"},
                   {"lr", exact(s.config.adam.lr)},
                   {"beta1", exact(s.config.adam.beta1)},
                   {"beta2", exact(s.config.adam.beta2)},
                   {"eps", exact(s.config.adam.eps)},
                   {"activation", activation_name(s.config.arch.activation)},
                   {"objective", objective_name(s.config.objective.objective)},
                   {"samples", std::to_string(s.config.objective.samples)},
                   {"outer_samples", std::to_string(s.config.objective.outer_samples)},
                   {"ciwae_beta", exact(s.config.objective.ciwae_beta)},
                   {"init", init_name(s.config.init)},
                   {"schedule", schedule_name(s.config.schedule)},
                   {"data", s.data_fingerprint},
                   {"step", std::to_string(s.step)},
                   {"epochs", std::to_string(s.epochs)},
                   {"max_steps", std::to_string(s.max_steps)},
                   {"eval_every", std::to_string(s.eval_every)},
                   {"checkpoint_every", std::to_string(s.checkpoint_every)},
                   {"image_scale", std::to_string(s.image_scale)},
                   {"random", "Philox4x32-10; counters are (seed, stream, step, index): the step is the state"},
                   {"epoch_elbo_sum", exact(s.epoch_elbo_sum)},
                   {"epoch_rows", std::to_string(s.epoch_rows)},
                   {"epoch_seconds", exact(s.epoch_seconds)},
                   {"metrics_csv", s.metrics_csv}};
  return safetensors_bytes(path, file);
}

TrainState load_checkpoint(const std::string& path) {
  const SafetensorsFile file = read_safetensors(path);
  if (field(path, file, "format") != kFormat) {
    throw Error(path + ": not a cuvae checkpoint (metadata 'format' is not '" + kFormat + "')");
  }
  TrainState s;
  Architecture& arch = s.config.arch;
  arch.input_dim = static_cast<int>(unsigned_field(path, file, "input_dim", 1, Architecture::kMaxWidth));
  arch.set_layers_from_fields(field(path, file, "latent_dim"), field(path, file, "hidden"),
                              path + ": checkpoint metadata");
  // Fields added with the IWAE objectives; a checkpoint of an earlier build
  // has the seed's values.
  const std::string what = path + ": checkpoint metadata ";
  arch.activation = parse_activation(optional_field(file, "activation", "relu"), what + "'activation'");
  s.config.objective.objective =
      parse_objective(optional_field(file, "objective", "elbo"), what + "'objective'");
  s.config.init = parse_init(optional_field(file, "init", "small-normal"), what + "'init'");
  s.config.schedule = parse_schedule(optional_field(file, "schedule", "constant"), what + "'schedule'");
  s.config.objective.samples =
      file.metadata.count("samples") == 0
          ? 1
          : static_cast<int>(unsigned_field(path, file, "samples", 1, ObjectiveConfig::kMaxSamples));
  // Fields added with miwae, piwae and ciwae (M; beta).
  s.config.objective.outer_samples =
      file.metadata.count("outer_samples") == 0
          ? 1
          : static_cast<int>(unsigned_field(path, file, "outer_samples", 1, ObjectiveConfig::kMaxSamples));
  if (file.metadata.count("ciwae_beta") != 0) {
    s.config.objective.ciwae_beta = double_field(
        path, file, "ciwae_beta", [](double v) { return v >= 0.0 && v <= 1.0; }, "in [0, 1]");
  }
  try {
    s.config.objective.validate();
  } catch (const Error& e) {
    throw Error(path + ": checkpoint metadata: " + e.what());
  }
  try {
    arch.validate();
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  s.config.batch_size = static_cast<int>(unsigned_field(path, file, "batch_size", 1, TrainConfig::kMaxBatchSize));
  s.config.seed = unsigned_field(path, file, "seed");
  s.config.shuffle = unsigned_field(path, file, "shuffle", 0, 1) != 0;
  s.config.adam.lr = double_field(path, file, "lr", positive_normal, "a positive normal number");
  s.config.adam.beta1 = double_field(path, file, "beta1", in_unit_interval, "in [0, 1)");
  s.config.adam.beta2 = double_field(path, file, "beta2", in_unit_interval, "in [0, 1)");
  s.config.adam.eps = double_field(path, file, "eps", positive_normal, "a positive normal number");
  s.data_fingerprint = field(path, file, "data");
  s.step = unsigned_field(path, file, "step");
  s.epochs = static_cast<int>(unsigned_field(path, file, "epochs", 1, TrainConfig::kMaxEpochs));
  s.max_steps = static_cast<int64_t>(
      unsigned_field(path, file, "max_steps", 0, static_cast<uint64_t>(std::numeric_limits<int64_t>::max())));
  // Added in issue 28; a checkpoint of an earlier build has the flags' defaults.
  if (file.metadata.count("eval_every") != 0) {
    s.eval_every = static_cast<int>(unsigned_field(path, file, "eval_every", 0, TrainConfig::kMaxEpochs));
  }
  if (file.metadata.count("checkpoint_every") != 0) {
    s.checkpoint_every = static_cast<int64_t>(unsigned_field(
        path, file, "checkpoint_every", 0, static_cast<uint64_t>(std::numeric_limits<int64_t>::max())));
  }
  if (file.metadata.count("image_scale") != 0) {
    s.image_scale = static_cast<int>(unsigned_field(path, file, "image_scale", 1, kMaxImageScale));
  }
  s.epoch_elbo_sum = double_field(path, file, "epoch_elbo_sum", any_finite, "a finite number");
  s.epoch_rows = unsigned_field(path, file, "epoch_rows");
  s.epoch_seconds = double_field(path, file, "epoch_seconds", nonnegative, "a finite number >= 0");
  s.metrics_csv = field(path, file, "metrics_csv");
  s.metrics_rows = check_metrics_rows(path, s.metrics_csv, bound_name(s.config.objective));
  const size_t n = ParameterLayout(arch).size();
  s.params = tensor(path, file, "params", n);
  s.adam_m = tensor(path, file, "adam.m", n);
  s.adam_v = tensor(path, file, "adam.v", n, true);
  return s;
}

}  // namespace cuvae
