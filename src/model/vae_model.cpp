// The model's forward and backward passes, once, for every backend.
//
// Shapes for a batch of B rows, input D, latent L:
//   x (B x D) --encoder--> h (B x 2L) = [mean | log_std]
//   z = mean + exp(log_std) * eps                       (B x L)
//   f = decoder(z)                                      (B x D logits)
//   ELBO_r = sum_j log p(x_rj | f_rj) - sum_k KL_rk,    loss = -(1/B) sum_r ELBO_r
// Backward: dloss/df = (sigma(f) - x)/B, through the decoder to dz, through
// the reparameterization and KL to d[mean | log_std], through the encoder.
// With K samples per image the decoder runs on B K rows (z_bk from image b's
// mean and log_std); the ELBO weighs each sample's terms 1/(B K), the IWAE
// objectives by scale w~_bk (vae_math.h).
#include "cuvae/model/vae_model.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <utility>

#include "cuvae/error.h"

namespace cuvae {

// ---------------------------------------------------------------------------
// Architecture

int Architecture::noise_per_sample() const {
  int total = latent_dim;
  for (const StochasticLayer& layer : upper) total += layer.latent_dim;
  return total;
}

std::vector<int> Architecture::encoder_widths(int s) const {
  std::vector<int> widths{s == 0 ? input_dim : latent_dim_of(s - 1)};
  const std::vector<int>& h = hidden_of(s);
  widths.insert(widths.end(), h.begin(), h.end());
  widths.push_back(2 * latent_dim_of(s));
  return widths;
}

std::vector<int> Architecture::decoder_widths(int s) const {
  std::vector<int> widths{latent_dim_of(s)};
  const std::vector<int>& h = hidden_of(s);
  widths.insert(widths.end(), h.begin(), h.end());
  widths.push_back(s == 0 ? input_dim : 2 * latent_dim_of(s - 1));
  return widths;
}

std::string Architecture::describe() const {
  // q: 784-200-200-(100+100) -100-100-(50+50) | p: 50-100-100-(100+100) -200-200-784
  auto chain = [](const std::vector<int>& widths, bool gaussian_top, bool first) {
    std::ostringstream s;
    for (size_t i = first ? 0 : 1; i + 1 < widths.size(); ++i) s << (i || !first ? "-" : "") << widths[i];
    const int top = widths.back();
    if (gaussian_top) s << "-(" << top / 2 << '+' << top / 2 << ')';
    else s << '-' << top;
    return s.str();
  };
  std::ostringstream s;
  for (int l = 0; l < stochastic_layers(); ++l) s << (l ? " " : "") << chain(encoder_widths(l), true, l == 0);
  s << " | ";
  for (int l = stochastic_layers() - 1; l >= 0; --l) {
    s << (l + 1 < stochastic_layers() ? " " : "") << chain(decoder_widths(l), l > 0, l + 1 == stochastic_layers());
  }
  if (activation != Activation::kRelu) s << " (" << activation_name(activation) << ")";
  return s.str();
}

std::string Architecture::latent_dims_text() const {
  std::vector<int> dims;
  for (int l = 0; l < stochastic_layers(); ++l) dims.push_back(latent_dim_of(l));
  return format_widths(dims);
}

std::string Architecture::hidden_text() const {
  std::string text;
  for (int l = 0; l < stochastic_layers(); ++l) text += (l ? "/" : "") + format_widths(hidden_of(l));
  return text;
}

void Architecture::set_layers(const std::string& latent_dims, const std::string& hidden_widths,
                              const std::string& where) {
  const std::string prefix = where.empty() ? "" : where + ": ";
  const std::vector<int> dims = parse_widths(latent_dims, prefix + "--latent-dim", "100,50");
  if (dims.size() > static_cast<size_t>(kMaxStochasticLayers)) {
    throw Error(prefix + "--latent-dim " + latent_dims + " has " + std::to_string(dims.size()) +
                " stochastic layers; at most " + std::to_string(kMaxStochasticLayers));
  }
  const std::vector<std::vector<int>> widths = parse_layer_widths(hidden_widths, prefix + "--hidden");
  if (widths.size() != dims.size()) {
    throw Error(prefix + "--hidden " + hidden_widths + " has " + std::to_string(widths.size()) +
                " layer list" + (widths.size() == 1 ? "" : "s") + " for the " +
                std::to_string(dims.size()) + " stochastic layer" + (dims.size() == 1 ? "" : "s") +
                " of --latent-dim " + latent_dims + "; give one per layer, '/' between them (e.g. 200,200/100,100)");
  }
  latent_dim = dims[0];
  hidden = widths[0];
  upper.clear();
  for (size_t l = 1; l < dims.size(); ++l) upper.push_back(StochasticLayer{dims[l], widths[l]});
}

void Architecture::set_layers_from_fields(const std::string& latent_dims, const std::string& hidden_widths,
                                          const std::string& where) {
  const auto refuse = [&](const std::string& key, const std::string& value, const std::string& what) {
    throw Error(where + " '" + key + "' is '" + printable_excerpt(value) + "', not " + what);
  };
  try {
    parse_widths(latent_dims, "");
  } catch (const Error&) {
    refuse("latent_dim", latent_dims, "a comma-separated list of positive integers (one per stochastic layer)");
  }
  try {
    parse_layer_widths(hidden_widths, "");
  } catch (const Error&) {
    refuse("hidden", hidden_widths, "comma-separated lists of positive integers, '/' between stochastic layers");
  }
  set_layers(latent_dims, hidden_widths, where + " 'latent_dim' and 'hidden'");
}

bool Architecture::operator==(const Architecture& other) const {
  return input_dim == other.input_dim && hidden == other.hidden &&
         latent_dim == other.latent_dim && upper == other.upper && activation == other.activation;
}

void Architecture::validate() const {
  auto check = [](int width, const std::string& what) {
    if (width < 1 || width > kMaxWidth) {
      throw Error(what + " must be between 1 and " + std::to_string(kMaxWidth) + ", got " +
                  std::to_string(width));
    }
  };
  check(input_dim, "input size");
  if (stochastic_layers() > kMaxStochasticLayers) {
    throw Error("at most " + std::to_string(kMaxStochasticLayers) + " stochastic layers (--latent-dim), got " +
                std::to_string(stochastic_layers()));
  }
  for (int l = 0; l < stochastic_layers(); ++l) {
    check(latent_dim_of(l), "latent size (--latent-dim)");
    if (hidden_of(l).empty()) throw Error("--hidden needs at least one hidden layer width under each stochastic layer");
    for (int h : hidden_of(l)) check(h, "hidden width (--hidden)");
  }
}

std::vector<int> parse_widths(const std::string& text, const std::string& what, const std::string& example) {
  std::vector<int> widths;
  std::stringstream stream(text);
  std::string item;
  const std::string usage = what + " must be a comma-separated list of positive integers like " + example +
                            ", got '" + printable_excerpt(text) + "'";
  if (text.empty()) throw Error(usage);
  while (std::getline(stream, item, ',')) {
    if (item.empty() || item.size() > 6 ||
        !std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      throw Error(usage);
    }
    const int width = std::stoi(item);
    if (width < 1) throw Error(usage);
    widths.push_back(width);
  }
  if (text.back() == ',') throw Error(usage);
  return widths;
}

std::vector<std::vector<int>> parse_layer_widths(const std::string& text, const std::string& what) {
  std::vector<std::vector<int>> widths;
  size_t start = 0;
  while (true) {
    const size_t slash = text.find('/', start);
    const std::string list = text.substr(start, slash == std::string::npos ? slash : slash - start);
    try {
      widths.push_back(parse_widths(list, what));
    } catch (const Error&) {
      // The whole value is quoted, and which list is wrong.
      throw Error(what + " must be one comma-separated list of positive integers per stochastic layer, '/' "
                  "between layers (like 200,200/100,100), got '" + printable_excerpt(text) + "' (list " +
                  std::to_string(widths.size() + 1) + (list.empty() ? " is empty)" : ", '" + printable_excerpt(list) + "')"));
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return widths;
}

namespace {

// One name per enum value, the flags' and the files' spelling.
template <typename Enum, size_t N>
Enum parse_name(const std::pair<Enum, const char*> (&names)[N], const std::string& name,
                const std::string& what) {
  std::string choices;
  for (const auto& [value, text] : names) {
    if (name == text) return value;
    choices += std::string(choices.empty() ? "" : ", ") + text;
  }
  throw Error(what + " must be one of " + choices + ", got '" + printable_excerpt(name) + "'");
}

template <typename Enum, size_t N>
std::string name_of(const std::pair<Enum, const char*> (&names)[N], Enum value) {
  for (const auto& [v, text] : names) {
    if (v == value) return text;
  }
  return "?";
}

const std::pair<Activation, const char*> kActivationNames[] = {{Activation::kRelu, "relu"},
                                                               {Activation::kTanh, "tanh"}};
const std::pair<Objective, const char*> kObjectiveNames[] = {
    {Objective::kElbo, "elbo"},   {Objective::kIwae, "iwae"},   {Objective::kIwaeDreg, "iwae-dreg"},
    {Objective::kMiwae, "miwae"}, {Objective::kPiwae, "piwae"}, {Objective::kCiwae, "ciwae"}};
const std::pair<InitScheme, const char*> kInitNames[] = {{InitScheme::kSmallNormal, "small-normal"},
                                                         {InitScheme::kGlorot, "glorot"}};

}  // namespace

Activation parse_activation(const std::string& name, const std::string& what) {
  return parse_name(kActivationNames, name, what);
}
std::string activation_name(Activation act) {
  return act == Activation::kIdentity ? "identity" : name_of(kActivationNames, act);
}
Objective parse_objective(const std::string& name, const std::string& what) {
  return parse_name(kObjectiveNames, name, what);
}
std::string objective_name(Objective objective) { return name_of(kObjectiveNames, objective); }
InitScheme parse_init(const std::string& name, const std::string& what) {
  return parse_name(kInitNames, name, what);
}
std::string init_name(InitScheme init) { return name_of(kInitNames, init); }

bool has_outer_samples(Objective objective) {
  return objective == Objective::kMiwae || objective == Objective::kPiwae;
}

std::string format_beta(double beta) {
  char text[32];
  const std::to_chars_result result = std::to_chars(text, text + sizeof text, beta);
  return std::string(text, result.ptr);
}

void ObjectiveConfig::validate() const {
  const std::string most = std::to_string(kMaxSamples);
  if (samples < 1 || samples > kMaxSamples) {
    throw Error("--samples must be between 1 and " + most + ", got " + std::to_string(samples));
  }
  if (outer_samples < 1 || outer_samples > kMaxSamples) {
    throw Error("--outer-samples must be between 1 and " + most + ", got " +
                std::to_string(outer_samples));
  }
  if (outer_samples != 1 && !has_outer_samples(objective)) {
    throw Error("--outer-samples " + std::to_string(outer_samples) + ": objective " +
                objective_name(objective) + " has no groups of samples (only miwae and piwae do)");
  }
  if (static_cast<long long>(samples) * outer_samples > kMaxSamples) {
    throw Error("--outer-samples " + std::to_string(outer_samples) + " times --samples " +
                std::to_string(samples) + " is more than " + most + " samples per image");
  }
  if (!(ciwae_beta >= 0.0 && ciwae_beta <= 1.0)) {
    throw Error("--ciwae-beta must be in [0, 1], got " + format_beta(ciwae_beta));
  }
}

std::string bound_name(Objective objective, int samples) {
  const std::string base = objective == Objective::kElbo ? "elbo" : "iwae";
  return samples == 1 && objective == Objective::kElbo ? base : base + "-" + std::to_string(samples);
}

std::string bound_name(const ObjectiveConfig& o) {
  const std::string k = std::to_string(o.samples);
  switch (o.objective) {
    case Objective::kMiwae: return "miwae-" + std::to_string(o.outer_samples) + "x" + k;
    case Objective::kPiwae: return "piwae-" + std::to_string(o.outer_samples) + "x" + k;
    case Objective::kCiwae: return "ciwae-" + format_beta(o.ciwae_beta) + "-" + k;
    default: return bound_name(o.objective, o.samples);
  }
}

std::string format_widths(const std::vector<int>& widths) {
  std::string s;
  for (size_t i = 0; i < widths.size(); ++i) s += (i ? "," : "") + std::to_string(widths[i]);
  return s;
}

// ---------------------------------------------------------------------------
// Layout

namespace {

std::vector<DenseLayer> lay_out(const std::vector<int>& widths, Activation hidden_activation,
                                const std::string& prefix, size_t* offset) {
  std::vector<DenseLayer> layers;
  for (size_t i = 0; i + 1 < widths.size(); ++i) {
    DenseLayer layer;
    layer.in = widths[i];
    layer.out = widths[i + 1];
    layer.weight_offset = *offset;
    layer.bias_offset = *offset + static_cast<size_t>(layer.in) * layer.out;
    *offset = layer.bias_offset + layer.out;
    layer.activation = i + 2 < widths.size() ? hidden_activation : Activation::kIdentity;
    layer.name = prefix + "." + std::to_string(i);
    layers.push_back(layer);
  }
  return layers;
}

}  // namespace

ParameterLayout::ParameterLayout(const Architecture& arch) {
  arch.validate();
  for (int l = 0; l < arch.stochastic_layers(); ++l) {
    const std::string suffix = l == 0 ? "" : std::to_string(l + 1);
    encoders_.push_back(lay_out(arch.encoder_widths(l), arch.activation, "encoder" + suffix, &size_));
    decoders_.push_back(lay_out(arch.decoder_widths(l), arch.activation, "decoder" + suffix, &size_));
  }
}

std::vector<DenseLayer> ParameterLayout::all_layers() const {
  std::vector<DenseLayer> layers;
  for (size_t l = 0; l < encoders_.size(); ++l) {
    layers.insert(layers.end(), encoders_[l].begin(), encoders_[l].end());
    layers.insert(layers.end(), decoders_[l].begin(), decoders_[l].end());
  }
  return layers;
}

// ---------------------------------------------------------------------------
// Mlp

Mlp::Mlp(Backend& backend, std::vector<DenseLayer> layers, int max_rows)
    : backend_(backend), layers_(std::move(layers)), max_rows_(max_rows) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DenseLayer& layer = layers_[i];
    outputs_.emplace_back(backend_, static_cast<size_t>(max_rows) * layer.out);
    masks_.emplace_back(backend_, layer.activation == Activation::kRelu
                                      ? backend_.activation_mask_bytes(max_rows, layer.out)
                                      : 0);
    // The top layer's dA is the caller's d_output.
    const bool top = i + 1 == layers_.size();
    d_preactivations_.emplace_back(backend_, top ? 0 : static_cast<size_t>(max_rows) * layer.out);
  }
}

float* Mlp::forward(const float* params, const float* input, int rows) {
  const float* x = input;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DenseLayer& layer = layers_[i];
    float* y = outputs_[i].get();
    // y = act(x W + b): B x in times in x out.
    backend_.dense_forward(x, params + layer.weight_offset, params + layer.bias_offset, rows,
                           layer.in, layer.out, layer.activation, y, masks_[i].get());
    x = y;
  }
  return outputs_.back().get();
}

void Mlp::backward(const float* params, float* grads, const float* input, float* d_output,
                   int rows, float* d_input, const float* row_scale, bool weight_gradients,
                   bool accumulate_d_input) {
  // The top layer: dA = dY * act'(Y); db = column sums of dA. Below it each
  // layer's dA and db come with the dX of the layer above
  // (dense_backward_input).
  const DenseLayer& top = layers_.back();
  backend_.activation_backward_bias_grad(d_output, outputs_.back().get(), grads + top.bias_offset,
                                         rows, top.out, top.activation, row_scale);
  float* da = d_output;
  for (size_t i = layers_.size(); i-- > 0;) {
    const DenseLayer& layer = layers_[i];
    const float* w = params + layer.weight_offset;
    const float* x = i == 0 ? input : outputs_[i - 1].get();
    // dW = X^T dA (in x out): nothing below needs it, so it may run beside
    // the chain of input gradients (each layer's dA has its own buffer, which
    // the chain does not overwrite while this GEMM may still read it).
    if (weight_gradients) {
      backend_.begin_side_branch();
      backend_.gemm(true, false, layer.in, layer.out, rows, 1.0f, x, layer.in, da, layer.out, 0.0f,
                    grads + layer.weight_offset, layer.out);
      backend_.end_side_branch();
    }
    if (i == 0) {
      // dX = dA W^T (B x in): the network's input has no activation or bias.
      if (d_input != nullptr) {
        backend_.gemm(false, true, rows, layer.in, layer.out, 1.0f, da, layer.out, w, layer.out,
                      accumulate_d_input ? 1.0f : 0.0f, d_input, layer.in);
      }
      break;
    }
    float* da_below = d_preactivations_[i - 1].get();
    const DenseLayer& below = layers_[i - 1];
    backend_.dense_backward_input(da, w, rows, layer.in, layer.out, x, masks_[i - 1].get(),
                                  below.activation, da_below, grads + below.bias_offset);
    da = da_below;
  }
}

// ---------------------------------------------------------------------------
// VaeModel

namespace {

// The decoder's rows, max_rows * max_samples, as the int that the layers
// and the backends' calls take; refused beyond it (no machine's memory
// holds such a model, and the trainers' memory check refuses it first, but
// a product that wrapped would size every buffer wrong).
int decoder_rows(int max_rows, int max_samples) {
  const int64_t rows = int64_t{max_rows} * max_samples;
  if (rows > std::numeric_limits<int>::max()) {
    throw Error("a batch of " + std::to_string(max_rows) + " images with " + std::to_string(max_samples) +
                " samples each is " + std::to_string(rows) + " decoder rows, more than " +
                std::to_string(std::numeric_limits<int>::max()));
  }
  return static_cast<int>(rows);
}

}  // namespace

VaeModel::VaeModel(Backend& backend, const Architecture& arch, int max_rows, int max_samples)
    : backend_(backend),
      arch_(arch),
      layout_(arch),
      max_rows_(max_rows),
      max_samples_(max_samples),
      params_(backend, layout_.size()),
      grads_(backend, layout_.size()),
      adam_m_(backend, layout_.size()),
      adam_v_(backend, layout_.size()),
      encoder_(backend, layout_.encoder(), max_rows),
      decoder_(backend, layout_.decoder(), decoder_rows(max_rows, max_samples)),
      z_(backend, static_cast<size_t>(max_rows) * max_samples * arch.latent_dim),
      dlogits_(backend, static_cast<size_t>(max_rows) * max_samples * arch.input_dim),
      dz_(backend, static_cast<size_t>(max_rows) * max_samples * arch.latent_dim),
      d_encoder_out_(backend, static_cast<size_t>(max_rows) * 2 * arch.latent_dim),
      row_logprob_(backend, static_cast<size_t>(max_rows) * max_samples),
      row_kl_(backend, static_cast<size_t>(max_rows)),
      row_log_ratio_(backend, static_cast<size_t>(max_rows) * max_samples),
      row_bound_(backend, static_cast<size_t>(max_rows)),
      sample_weights_(backend, static_cast<size_t>(max_rows) * max_samples),
      group_bound_(backend, static_cast<size_t>(max_rows) * max_samples) {
  if (max_rows < 1) throw Error("batch size must be at least 1, got " + std::to_string(max_rows));
  if (max_samples < 1) throw Error("--samples must be at least 1, got " + std::to_string(max_samples));
  std::vector<float> zeros(layout_.size(), 0.0f);
  backend_.copy_to_device(params_.get(), zeros.data(), zeros.size() * sizeof(float));
  backend_.copy_to_device(grads_.get(), zeros.data(), zeros.size() * sizeof(float));
  backend_.copy_to_device(adam_m_.get(), zeros.data(), zeros.size() * sizeof(float));
  backend_.copy_to_device(adam_v_.get(), zeros.data(), zeros.size() * sizeof(float));
  const int sample_rows = decoder_rows(max_rows, max_samples);
  for (int l = 1; l < arch_.stochastic_layers(); ++l) {
    upper_.push_back(std::make_unique<UpperLayer>(backend_, layout_, l, arch_.latent_dim_of(l),
                                                  arch_.latent_dim_of(l - 1), sample_rows));
  }
}

VaeModel::UpperLayer::UpperLayer(Backend& backend, const ParameterLayout& layout, int s, int latent,
                                 int below_latent, int rows)
    : encoder(backend, layout.encoder(s), rows),
      decoder(backend, layout.decoder(s), rows),
      h(backend, static_cast<size_t>(rows) * latent),
      dh(backend, static_cast<size_t>(rows) * latent),
      log_ratio(backend, static_cast<size_t>(rows)),
      d_encoder_out(backend, static_cast<size_t>(rows) * 2 * latent),
      d_encoder_out_below(backend, static_cast<size_t>(rows) * 2 * latent),
      d_p_params(backend, static_cast<size_t>(rows) * 2 * below_latent) {}

float* VaeModel::scratch_grads() {
  // Made at the first step that needs it (before a CUDA Graph records one).
  if (scratch_grads_.size() == 0) scratch_grads_ = DeviceArray<float>(backend_, layout_.size());
  return scratch_grads_.get();
}

namespace {

// The IWAE paper's code (yburda/iwae, nnet.py): weights uniform in
// [-limit, limit], limit = sqrt(6 / (in + out)) (Glorot & Bengio 2010),
// biases zero, and the decoder's output bias at logit(mean pixel), the mean
// clipped to [0.001, 0.999], so the untrained decoder draws the average digit.
void glorot_initialize(const ParameterLayout& layout, uint64_t seed,
                       const std::vector<double>& pixel_means, std::vector<float>* params) {
  const RandomKey key{seed, RandomStream::kInit, 0};
  std::fill(params->begin(), params->end(), 0.0f);
  for (const DenseLayer& layer : layout.all_layers()) {
    const double limit = std::sqrt(6.0 / (layer.in + layer.out));
    const size_t count = static_cast<size_t>(layer.in) * layer.out;
    for (size_t i = 0; i < count; ++i) {
      const size_t p = layer.weight_offset + i;
      (*params)[p] = static_cast<float>((2.0 * random_uniform(key, p) - 1.0) * limit);
    }
  }
  const DenseLayer& output = layout.decoder().back();
  if (pixel_means.size() != static_cast<size_t>(output.out)) {
    throw Error("--init glorot: " + std::to_string(pixel_means.size()) +
                " pixel means for a decoder of " + std::to_string(output.out) + " outputs");
  }
  for (int j = 0; j < output.out; ++j) {
    const double mean = std::clamp(pixel_means[j], 0.001, 0.999);
    (*params)[output.bias_offset + j] = static_cast<float>(std::log(mean / (1.0 - mean)));
  }
}

}  // namespace

void VaeModel::initialize(uint64_t seed, InitScheme init, const std::vector<double>* pixel_means) {
  std::vector<float> host(layout_.size());
  if (init == InitScheme::kGlorot) {
    if (pixel_means == nullptr) throw Error("--init glorot needs the training images' pixel means");
    glorot_initialize(layout_, seed, *pixel_means, &host);
  } else {
    const RandomKey key{seed, RandomStream::kInit, 0};
    for (size_t i = 0; i < host.size(); ++i) host[i] = 0.01f * random_normal(key, i);
  }
  set_parameters(host);
  std::vector<float> zeros(layout_.size(), 0.0f);
  backend_.copy_to_device(adam_m_.get(), zeros.data(), zeros.size() * sizeof(float));
  backend_.copy_to_device(adam_v_.get(), zeros.data(), zeros.size() * sizeof(float));
}

std::vector<float> VaeModel::parameters() const { return to_host(backend_, params_.get(), params_.size()); }
std::vector<float> VaeModel::gradients() const { return to_host(backend_, grads_.get(), grads_.size()); }
std::vector<float> VaeModel::adam_moment(int which) const {
  const DeviceArray<float>& moment = which == 1 ? adam_m_ : adam_v_;
  return to_host(backend_, moment.get(), moment.size());
}

void VaeModel::set_parameters(const std::vector<float>& host_params) {
  if (host_params.size() != layout_.size()) {
    throw Error("parameter count " + std::to_string(host_params.size()) +
                " does not match the architecture's " + std::to_string(layout_.size()));
  }
  backend_.copy_to_device(params_.get(), host_params.data(), host_params.size() * sizeof(float));
}

void VaeModel::set_adam_moments(const std::vector<float>& m, const std::vector<float>& v) {
  if (m.size() != layout_.size() || v.size() != layout_.size()) {
    throw Error("Adam moments of " + std::to_string(m.size()) + " and " + std::to_string(v.size()) +
                " values do not match the architecture's " + std::to_string(layout_.size()));
  }
  backend_.copy_to_device(adam_m_.get(), m.data(), m.size() * sizeof(float));
  backend_.copy_to_device(adam_v_.get(), v.data(), v.size() * sizeof(float));
}

void VaeModel::check_rows(int rows) const {
  if (rows < 1 || rows > max_rows_) {
    throw Error("batch of " + std::to_string(rows) + " rows does not fit buffers sized for " +
                std::to_string(max_rows_));
  }
}

const float* VaeModel::encode(const float* x, int rows) {
  check_rows(rows);
  return encoder_.forward(params_.get(), x, rows);
}

const float* VaeModel::decode(const float* z, int rows) {
  check_rows(rows);
  return decoder_.forward(params_.get(), z, rows);
}

void VaeModel::check_samples(int samples) const {
  if (samples < 1 || samples > max_samples_) {
    throw Error(std::to_string(samples) + " samples per image do not fit buffers sized for " +
                std::to_string(max_samples_));
  }
}

const float* VaeModel::sample_logits(const float* eps, int rows) {
  check_rows(rows);
  // Layer s's block of eps starts after the rows x L_t blocks below it.
  std::vector<size_t> offsets{0};
  for (int l = 0; l < arch_.stochastic_layers(); ++l) {
    offsets.push_back(offsets.back() + static_cast<size_t>(rows) * arch_.latent_dim_of(l));
  }
  const int top = arch_.stochastic_layers() - 1;
  const float* h = eps + offsets[top];  // h_S ~ N(0, I)
  for (int l = top; l >= 1; --l) {
    // h_{s-1} = mean + exp(log_std) eps from p(h_{s-1}|h_s).
    UpperLayer& layer = *upper_[l - 1];
    const float* p_params = layer.decoder.forward(params_.get(), h, rows);
    float* below = l == 1 ? z_.get() : upper_[l - 2]->h.get();
    backend_.reparameterize_kl_forward(p_params, eps + offsets[l - 1], rows, 1, arch_.latent_dim_of(l - 1),
                                       below, nullptr, nullptr);
    h = below;
  }
  return decoder_.forward(params_.get(), h, rows);
}

void VaeModel::upper_layers_forward(const float* eps, int rows) {
  const float* below = z_.get();
  size_t eps_offset = static_cast<size_t>(rows) * arch_.latent_dim;
  for (int l = 1; l < arch_.stochastic_layers(); ++l) {
    UpperLayer& layer = *upper_[l - 1];
    const int latent = arch_.latent_dim_of(l);
    layer.encoder_out = layer.encoder.forward(params_.get(), below, rows);
    // h_s and its log N(h_s; 0, I) - log q(h_s|h_{s-1}), one sample a row.
    backend_.reparameterize_kl_forward(layer.encoder_out, eps + eps_offset, rows, 1, latent,
                                       layer.h.get(), nullptr, layer.log_ratio.get());
    layer.p_params = layer.decoder.forward(params_.get(), layer.h.get(), rows);
    backend_.gaussian_layer_forward(below, layer.p_params, layer.log_ratio.get(), rows,
                                    arch_.latent_dim_of(l - 1), row_log_ratio_.get());
    below = layer.h.get();
    eps_offset += static_cast<size_t>(rows) * latent;
  }
}

void VaeModel::decoders_backward(const float* weights, float* grads, float* dlogits, int rows,
                                 bool weight_gradients, bool with_dh) {
  decoder_.backward(params_.get(), grads, z_.get(), dlogits, rows, with_dh ? dz_.get() : nullptr,
                    weights, weight_gradients);
  float* dh_below = dz_.get();
  const float* h_below = z_.get();
  for (int l = 1; l < arch_.stochastic_layers(); ++l) {
    UpperLayer& layer = *upper_[l - 1];
    // p(h_{s-1}|h_s): its log-ratio's gradient (weighted per row) to its
    // mean | log_std and to h_{s-1}, then through its decoder to h_s.
    backend_.gaussian_layer_backward(h_below, layer.p_params, weights, rows, arch_.latent_dim_of(l - 1),
                                     batch_scale_, layer.d_p_params.get(), with_dh ? dh_below : nullptr);
    layer.decoder.backward(params_.get(), grads, layer.h.get(), layer.d_p_params.get(), rows,
                           with_dh ? layer.dh.get() : nullptr, nullptr, weight_gradients);
    dh_below = layer.dh.get();
    h_below = layer.h.get();
  }
}

void VaeModel::upper_encoders_backward(const float* eps, const float* weights, int rows,
                                       float scale, bool dreg) {
  std::vector<size_t> offsets{0};
  for (int l = 0; l < arch_.stochastic_layers(); ++l) {
    offsets.push_back(offsets.back() + static_cast<size_t>(rows) * arch_.latent_dim_of(l));
  }
  for (int l = arch_.stochastic_layers() - 1; l >= 1; --l) {
    UpperLayer& layer = *upper_[l - 1];
    const float* h_below = l == 1 ? z_.get() : upper_[l - 2]->h.get();
    float* dh_below = l == 1 ? dz_.get() : upper_[l - 2]->dh.get();
    backend_.upper_latent_backward(layer.dh.get(), layer.encoder_out, eps + offsets[l], layer.h.get(),
                                   weights, rows, arch_.latent_dim_of(l), scale, dreg,
                                   layer.d_encoder_out.get(),
                                   dreg ? layer.d_encoder_out_below.get() : nullptr);
    if (dreg) {
      // The full gradient continues down (its bias gradients to scratch);
      // DReG's, without the score of q's parameters, trains this encoder.
      layer.encoder.backward(params_.get(), scratch_grads(), h_below, layer.d_encoder_out_below.get(),
                             rows, dh_below, nullptr, /*weight_gradients=*/false,
                             /*accumulate_d_input=*/true);
      layer.encoder.backward(params_.get(), grads_.get(), h_below, layer.d_encoder_out.get(), rows,
                             nullptr);
    } else {
      layer.encoder.backward(params_.get(), grads_.get(), h_below, layer.d_encoder_out.get(), rows,
                             dh_below, nullptr, true, /*accumulate_d_input=*/true);
    }
  }
}

void VaeModel::forward_backward(const float* x, const float* eps, int images,
                                const ObjectiveConfig& objective, bool compute_gradients) {
  check_rows(images);
  const Objective o = objective.objective;
  const int groups = has_outer_samples(o) ? objective.outer_samples : 1;
  const int group_size = objective.samples;  // K
  if (groups < 1 || group_size < 1 ||
      static_cast<long long>(groups) * group_size > static_cast<long long>(max_samples_)) {
    throw Error(std::to_string(groups) + " x " + std::to_string(group_size) +
                " samples per image do not fit buffers sized for " + std::to_string(max_samples_));
  }
  const int latent = arch_.latent_dim, samples = groups * group_size;  // M K per image
  check_samples(samples);
  const int rows = images * samples;  // the decoder's
  const bool layered = arch_.stochastic_layers() > 1;
  const float* encoder_out = encoder_.forward(params_.get(), x, images);
  encoder_out_ = encoder_out;
  backend_.reparameterize_kl_forward(encoder_out, eps, images, samples, latent, z_.get(),
                                     row_kl_.get(), row_log_ratio_.get());
  if (layered) upper_layers_forward(eps, rows);
  const float* logits = decoder_.forward(params_.get(), z_.get(), rows);
  logits_ = logits;
  // The loss is the batch mean of -bound: each image's bound weighs 1/B.
  const float scale = 1.0f / static_cast<float>(images);
  batch_scale_ = scale;
  // The one-layer elbo keeps its analytic KL; with more layers the elbo is
  // the mean of log w over the samples, an objective of per-sample weights 1/K.
  const bool analytic_elbo = o == Objective::kElbo && !layered;
  // The analytic ELBO's samples weigh 1/(B K) each; the other objectives' Bernoulli
  // gradient gets scale here and its per-sample weight in the decoder's top layer.
  const float logprob_scale = analytic_elbo ? 1.0f / static_cast<float>(rows) : scale;
  backend_.bernoulli_logprob_and_grad(x, logits, rows, arch_.input_dim, samples, logprob_scale,
                                      compute_gradients ? dlogits_.get() : nullptr,
                                      row_logprob_.get());
  const bool piwae = o == Objective::kPiwae;
  if (piwae && decoder_weights_.size() == 0) {
    // Made once, at the first piwae step (before a CUDA Graph records one).
    const size_t sample_rows = static_cast<size_t>(max_rows_) * max_samples_;
    decoder_weights_ = DeviceArray<float>(backend_, sample_rows);
    piwae_dlogits_ = DeviceArray<float>(backend_, sample_rows * arch_.input_dim);
    piwae_bound_ = DeviceArray<float>(backend_, static_cast<size_t>(max_rows_));
  }
  if (o == Objective::kIwae || o == Objective::kIwaeDreg) {
    backend_.importance_weights(row_logprob_.get(), row_log_ratio_.get(), images, samples,
                                sample_weights_.get(), row_bound_.get());
  } else if (!analytic_elbo) {
    // miwae, ciwae, piwae's encoder and the layered elbo (ciwae with beta
    // 1): normalized weights within each of the B M groups of K, then v and
    // the image's bound (vae_math.h).
    backend_.importance_weights(row_logprob_.get(), row_log_ratio_.get(), images * groups,
                                group_size, sample_weights_.get(), group_bound_.get());
    const float beta = o == Objective::kCiwae ? static_cast<float>(objective.ciwae_beta)
                       : o == Objective::kElbo ? 1.0f
                                               : 0.0f;
    backend_.grouped_objective_weights(row_logprob_.get(), row_log_ratio_.get(), group_bound_.get(),
                                       images, groups, group_size, beta, sample_weights_.get(),
                                       piwae ? piwae_bound_.get() : row_bound_.get());
    // piwae's decoder: IWAE over all M K samples, whose bound is the one reported.
    if (piwae) {
      backend_.importance_weights(row_logprob_.get(), row_log_ratio_.get(), images, samples,
                                  decoder_weights_.get(), row_bound_.get());
    }
  }
  if (!compute_gradients) return;
  const float* weights = analytic_elbo ? nullptr : sample_weights_.get();
  if (piwae) {
    // The encoder's weights first, for dz only: the decoders' backward on a
    // copy of the logits' gradient (each pass scales its d_output in place),
    // no weight gradients, their bias gradients into scratch. Then the
    // decoders' own pass with IWAE's weights, no dz.
    backend_.copy_on_device(piwae_dlogits_.get(), dlogits_.get(),
                            static_cast<size_t>(rows) * arch_.input_dim * sizeof(float));
    decoders_backward(weights, scratch_grads(), piwae_dlogits_.get(), rows, false, true);
    decoders_backward(decoder_weights_.get(), grads_.get(), dlogits_.get(), rows, true, false);
  } else {
    decoders_backward(weights, grads_.get(), dlogits_.get(), rows, true, true);
  }
  const bool dreg = o == Objective::kIwaeDreg;
  if (layered) upper_encoders_backward(eps, weights, rows, scale, dreg);
  if (analytic_elbo) {
    backend_.reparameterize_kl_backward(dz_.get(), encoder_out, eps, images, samples, latent,
                                        scale, d_encoder_out_.get());
  } else {
    backend_.importance_weighted_latent_backward(dz_.get(), encoder_out, eps, z_.get(), weights,
                                                 images, samples, latent, scale, dreg,
                                                 d_encoder_out_.get());
  }
  encoder_.backward(params_.get(), grads_.get(), x, d_encoder_out_.get(), images, nullptr);
  backend_.join_side_branches();  // every gradient complete before Adam reads them
}

void VaeModel::accumulate_bound(const ObjectiveConfig& objective, int images, double* accumulator) {
  if (objective.objective == Objective::kElbo && arch_.stochastic_layers() == 1) {
    backend_.accumulate_elbo(row_logprob_.get(), row_kl_.get(), images, objective.samples, accumulator);
  } else {
    backend_.accumulate_elbo(row_bound_.get(), nullptr, images, 1, accumulator);
  }
}

void VaeModel::adam_update(const AdamConfig& config, uint64_t t) {
  backend_.adam_step(params_.get(), grads_.get(), adam_m_.get(), adam_v_.get(), layout_.size(),
                     make_adam_step(config.lr, config.beta1, config.beta2, config.eps, t));
}

}  // namespace cuvae
