// The model's forward and backward passes, once, for every backend.
//
// Shapes for a batch of B rows, input D, latent L:
//   x (B x D) --encoder--> h (B x 2L) = [mean | log_std]
//   z = mean + exp(log_std) * eps                       (B x L)
//   f = decoder(z)                                      (B x D logits)
//   ELBO_r = sum_j log p(x_rj | f_rj) - sum_k KL_rk,    loss = -(1/B) sum_r ELBO_r
// Backward: dloss/df = (sigma(f) - x)/B, through the decoder to dz, through
// the reparameterization and KL to d[mean | log_std], through the encoder.
#include "cuvae/vae_model.h"

#include <algorithm>
#include <sstream>

#include "cuvae/error.h"

namespace cuvae {

// ---------------------------------------------------------------------------
// Architecture

std::vector<int> Architecture::encoder_widths() const {
  std::vector<int> widths{input_dim};
  widths.insert(widths.end(), hidden.begin(), hidden.end());
  widths.push_back(2 * latent_dim);
  return widths;
}

std::vector<int> Architecture::decoder_widths() const {
  std::vector<int> widths{latent_dim};
  widths.insert(widths.end(), hidden.begin(), hidden.end());
  widths.push_back(input_dim);
  return widths;
}

std::string Architecture::describe() const {
  std::ostringstream s;
  s << input_dim;
  for (int h : hidden) s << '-' << h;
  s << "-(" << latent_dim << '+' << latent_dim << ") | " << latent_dim;
  for (int h : hidden) s << '-' << h;
  s << '-' << input_dim;
  return s.str();
}

bool Architecture::operator==(const Architecture& other) const {
  return input_dim == other.input_dim && hidden == other.hidden &&
         latent_dim == other.latent_dim;
}

void Architecture::validate() const {
  auto check = [](int width, const std::string& what) {
    if (width < 1 || width > kMaxWidth) {
      throw Error(what + " must be between 1 and " + std::to_string(kMaxWidth) + ", got " +
                  std::to_string(width));
    }
  };
  check(input_dim, "input size");
  check(latent_dim, "latent size (--latent-dim)");
  if (hidden.empty()) throw Error("--hidden needs at least one hidden layer width");
  for (int h : hidden) check(h, "hidden width (--hidden)");
}

std::vector<int> parse_widths(const std::string& text, const std::string& what) {
  std::vector<int> widths;
  std::stringstream stream(text);
  std::string item;
  const std::string usage = what + " must be a comma-separated list of positive integers like 200,200, got '" + text + "'";
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

std::string format_widths(const std::vector<int>& widths) {
  std::string s;
  for (size_t i = 0; i < widths.size(); ++i) s += (i ? "," : "") + std::to_string(widths[i]);
  return s;
}

// ---------------------------------------------------------------------------
// Layout

namespace {

std::vector<DenseLayer> lay_out(const std::vector<int>& widths, const std::string& prefix,
                                size_t* offset) {
  std::vector<DenseLayer> layers;
  for (size_t i = 0; i + 1 < widths.size(); ++i) {
    DenseLayer layer;
    layer.in = widths[i];
    layer.out = widths[i + 1];
    layer.weight_offset = *offset;
    layer.bias_offset = *offset + static_cast<size_t>(layer.in) * layer.out;
    *offset = layer.bias_offset + layer.out;
    layer.activation = i + 2 < widths.size() ? Activation::kRelu : Activation::kIdentity;
    layer.name = prefix + "." + std::to_string(i);
    layers.push_back(layer);
  }
  return layers;
}

}  // namespace

ParameterLayout::ParameterLayout(const Architecture& arch) {
  arch.validate();
  encoder_ = lay_out(arch.encoder_widths(), "encoder", &size_);
  decoder_ = lay_out(arch.decoder_widths(), "decoder", &size_);
}

std::vector<DenseLayer> ParameterLayout::all_layers() const {
  std::vector<DenseLayer> layers = encoder_;
  layers.insert(layers.end(), decoder_.begin(), decoder_.end());
  return layers;
}

// ---------------------------------------------------------------------------
// Mlp

Mlp::Mlp(Backend& backend, std::vector<DenseLayer> layers, int max_rows)
    : backend_(backend), layers_(std::move(layers)), max_rows_(max_rows) {
  int max_width = 0;
  for (const DenseLayer& layer : layers_) {
    outputs_.emplace_back(backend_, static_cast<size_t>(max_rows) * layer.out);
    masks_.emplace_back(backend_, layer.activation == Activation::kRelu
                                      ? backend_.activation_mask_bytes(max_rows, layer.out)
                                      : 0);
    max_width = std::max({max_width, layer.in, layer.out});
  }
  for (DeviceArray<float>& buffer : scratch_) {
    buffer = DeviceArray<float>(backend_, static_cast<size_t>(max_rows) * max_width);
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
                   int rows, float* d_input) {
  // The top layer: dA = dY * act'(Y); db = column sums of dA. Below it each
  // layer's dA and db come with the dX of the layer above
  // (dense_backward_input).
  const DenseLayer& top = layers_.back();
  backend_.activation_backward_bias_grad(d_output, outputs_.back().get(), grads + top.bias_offset,
                                         rows, top.out, top.activation);
  float* da = d_output;
  for (size_t i = layers_.size(); i-- > 0;) {
    const DenseLayer& layer = layers_[i];
    const float* w = params + layer.weight_offset;
    const float* x = i == 0 ? input : outputs_[i - 1].get();
    // dW = X^T dA (in x out).
    backend_.gemm(true, false, layer.in, layer.out, rows, 1.0f, x, layer.in, da, layer.out, 0.0f,
                  grads + layer.weight_offset, layer.out);
    if (i == 0) {
      // dX = dA W^T (B x in): the network's input has no activation or bias.
      if (d_input != nullptr) {
        backend_.gemm(false, true, rows, layer.in, layer.out, 1.0f, da, layer.out, w, layer.out,
                      0.0f, d_input, layer.in);
      }
      break;
    }
    // The layer below's dA, into the scratch buffer da is not in.
    float* da_below = da == scratch_[0].get() ? scratch_[1].get() : scratch_[0].get();
    const DenseLayer& below = layers_[i - 1];
    backend_.dense_backward_input(da, w, rows, layer.in, layer.out, x, masks_[i - 1].get(),
                                  below.activation, da_below, grads + below.bias_offset);
    da = da_below;
  }
}

// ---------------------------------------------------------------------------
// VaeModel

VaeModel::VaeModel(Backend& backend, const Architecture& arch, int max_rows)
    : backend_(backend),
      arch_(arch),
      layout_(arch),
      max_rows_(max_rows),
      params_(backend, layout_.size()),
      grads_(backend, layout_.size()),
      adam_m_(backend, layout_.size()),
      adam_v_(backend, layout_.size()),
      encoder_(backend, layout_.encoder(), max_rows),
      decoder_(backend, layout_.decoder(), max_rows),
      z_(backend, static_cast<size_t>(max_rows) * arch.latent_dim),
      dlogits_(backend, static_cast<size_t>(max_rows) * arch.input_dim),
      dz_(backend, static_cast<size_t>(max_rows) * arch.latent_dim),
      d_encoder_out_(backend, static_cast<size_t>(max_rows) * 2 * arch.latent_dim),
      row_logprob_(backend, static_cast<size_t>(max_rows)),
      row_kl_(backend, static_cast<size_t>(max_rows)),
      row_log_ratio_(backend, static_cast<size_t>(max_rows)) {
  if (max_rows < 1) throw Error("batch size must be at least 1, got " + std::to_string(max_rows));
  std::vector<float> zeros(layout_.size(), 0.0f);
  backend_.copy_to_device(params_.get(), zeros.data(), zeros.size() * sizeof(float));
  backend_.copy_to_device(grads_.get(), zeros.data(), zeros.size() * sizeof(float));
  backend_.copy_to_device(adam_m_.get(), zeros.data(), zeros.size() * sizeof(float));
  backend_.copy_to_device(adam_v_.get(), zeros.data(), zeros.size() * sizeof(float));
}

void VaeModel::initialize(uint64_t seed) {
  const RandomKey key{seed, RandomStream::kInit, 0};
  std::vector<float> host(layout_.size());
  for (size_t i = 0; i < host.size(); ++i) host[i] = 0.01f * random_normal(key, i);
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

void VaeModel::forward_backward(const float* x, const float* eps, int rows,
                                bool compute_gradients) {
  check_rows(rows);
  const int latent = arch_.latent_dim;
  const float* encoder_out = encoder_.forward(params_.get(), x, rows);
  backend_.reparameterize_kl_forward(encoder_out, eps, rows, latent, z_.get(), row_kl_.get(),
                                     row_log_ratio_.get());
  const float* logits = decoder_.forward(params_.get(), z_.get(), rows);
  logits_ = logits;
  // The loss is the batch mean of -ELBO, so each row's terms weigh 1/B.
  const float scale = 1.0f / static_cast<float>(rows);
  backend_.bernoulli_logprob_and_grad(x, logits, rows, arch_.input_dim, scale,
                                      compute_gradients ? dlogits_.get() : nullptr,
                                      row_logprob_.get());
  if (!compute_gradients) return;
  decoder_.backward(params_.get(), grads_.get(), z_.get(), dlogits_.get(), rows, dz_.get());
  backend_.reparameterize_kl_backward(dz_.get(), encoder_out, eps, rows, latent, scale,
                                      d_encoder_out_.get());
  encoder_.backward(params_.get(), grads_.get(), x, d_encoder_out_.get(), rows, nullptr);
}

void VaeModel::adam_update(const AdamConfig& config, uint64_t t) {
  backend_.adam_step(params_.get(), grads_.get(), adam_m_.get(), adam_v_.get(), layout_.size(),
                     make_adam_step(config.lr, config.beta1, config.beta2, config.eps, t));
}

}  // namespace cuvae
