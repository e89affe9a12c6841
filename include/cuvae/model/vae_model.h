// The VAE: architecture, the flat parameter layout, and the forward and
// backward passes, written once against the Backend interface.
//
// Encoder (recognition net): input -> hidden... -> 2L, ReLU (the seed) or
// tanh (the IWAE paper) on hidden layers, linear output; the first L outputs
// are the posterior mean, the last L its log standard deviation. Decoder
// (generator): L -> hidden... -> input, the same hidden activation, linear
// output = Bernoulli logits.
//
// Objectives for K samples z_k ~ q(z|x) per image (vae_math.h has the math):
//   elbo       (1/K) sum_k log p(x|z_k) - KL(q(z|x) || p(z))   (analytic KL)
//   iwae       log (1/K) sum_k w_k, w_k = p(x|z_k) p(z_k) / q(z_k|x)
//   iwae-dreg  the same bound, the encoder's gradient by DReG (Tucker et al. 2019)
//   miwae      M groups of K: (1/M) sum_m log (1/K) sum_k w_mk  (Rainforth et al. 2018)
//   piwae      the decoder's gradient IWAE's over all M K samples, the encoder's MIWAE's
//   ciwae      beta (1/K) sum_k log w_k + (1 - beta) log (1/K) sum_k w_k
// Each objective's gradient with respect to sample k's log w is one weight
// per sample (vae_math.h: importance weights, grouped_sample_weight); nothing
// here assumes one stochastic layer beyond the rows of z the decoder reads.
// The encoder runs on B rows, the decoder on B K (sample k of image b in row
// b K + k). A dense layer computes
// y = x W + b with W stored [in, out] row-major (the seed's np.dot(x, W) + b).
//
// All parameters live in one flat buffer, encoder layers then decoder layers,
// each layer's W then b, so an Adam step is one pass over one buffer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuvae/backends/backend.h"

namespace cuvae {

struct Architecture {
  int input_dim = 784;
  std::vector<int> hidden = {200, 200};
  int latent_dim = 50;
  Activation activation = Activation::kRelu;  // of the hidden layers

  std::vector<int> encoder_widths() const;  // input, hidden..., 2L
  std::vector<int> decoder_widths() const;  // L, hidden..., input
  std::string describe() const;             // "784-200-200-(50+50) | 50-200-200-784"
  bool operator==(const Architecture& other) const;
  bool operator!=(const Architecture& other) const { return !(*this == other); }
  // Throws cuvae::Error unless every width is in 1..kMaxWidth and there is
  // at least one hidden layer.
  void validate() const;
  static constexpr int kMaxWidth = 65536;
};

// "200,200" -> {200, 200}; throws cuvae::Error naming `what` on anything else.
std::vector<int> parse_widths(const std::string& text, const std::string& what);
std::string format_widths(const std::vector<int>& widths);

// "relu" | "tanh" and back; throws cuvae::Error naming `what` otherwise.
Activation parse_activation(const std::string& name, const std::string& what);
std::string activation_name(Activation act);

enum class Objective { kElbo, kIwae, kIwaeDreg, kMiwae, kPiwae, kCiwae };
// "elbo" | "iwae" | "iwae-dreg" | "miwae" | "piwae" | "ciwae" and back.
Objective parse_objective(const std::string& name, const std::string& what);
std::string objective_name(Objective objective);
// Whether the objective has M groups of K samples (--outer-samples).
bool has_outer_samples(Objective objective);

// The training objective and its samples per image: K (--samples) in each
// of M groups (--outer-samples; miwae and piwae, 1 for the others), and
// ciwae's beta (--ciwae-beta).
struct ObjectiveConfig {
  Objective objective = Objective::kElbo;
  int samples = 1;
  int outer_samples = 1;
  double ciwae_beta = 0.5;
  // M K: the decoder's rows per image.
  int total_samples() const { return samples * outer_samples; }
  // Throws cuvae::Error, one line naming the flag, unless K and M are in
  // 1..kMaxSamples with M K <= kMaxSamples, M is 1 for the objectives without
  // groups, and beta is in [0, 1].
  void validate() const;
  static constexpr int kMaxSamples = 100000;
};
// What the epoch line and metrics.csv call the bound being trained: "elbo",
// "iwae-5" ("elbo-5" for the K = 5 ELBO, "iwae-dreg" trains "iwae-5" too),
// "miwae-8x8" and "piwae-8x8" (M x K), "ciwae-0.05-64" (beta, K).
std::string bound_name(const ObjectiveConfig& objective);
std::string bound_name(Objective objective, int samples);
// beta's shortest text that reads back as the same double ("0.05").
std::string format_beta(double beta);

// How the parameters start (stream kInit of the seed).
enum class InitScheme {
  kSmallNormal,  // the seed: every weight and bias 0.01 N(0,1)
  kGlorot,       // the IWAE paper's code: Glorot-uniform weights, zero biases,
                 // the decoder's output bias at the logit of the mean pixel
};
InitScheme parse_init(const std::string& name, const std::string& what);
std::string init_name(InitScheme init);

struct DenseLayer {
  int in = 0;
  int out = 0;
  size_t weight_offset = 0;  // into the flat buffer: in * out values
  size_t bias_offset = 0;    // out values
  Activation activation = Activation::kRelu;
  std::string name;          // "encoder.0", ..., "decoder.2"
};

class ParameterLayout {
 public:
  explicit ParameterLayout(const Architecture& arch);
  const std::vector<DenseLayer>& encoder() const { return encoder_; }
  const std::vector<DenseLayer>& decoder() const { return decoder_; }
  std::vector<DenseLayer> all_layers() const;
  size_t size() const { return size_; }

 private:
  std::vector<DenseLayer> encoder_;
  std::vector<DenseLayer> decoder_;
  size_t size_ = 0;
};

// A multilayer perceptron over a slice of the flat buffers. It owns the
// activations of each layer (for the backward pass) and, below the top
// layer, each layer's gradient with respect to its pre-activation.
class Mlp {
 public:
  Mlp(Backend& backend, std::vector<DenseLayer> layers, int max_rows);
  // Runs the layers on `input` (rows x layers[0].in); returns the output
  // (rows x layers.back().out), valid until the next forward.
  float* forward(const float* params, const float* input, int rows);
  // Given the last forward's input and d_output = dloss/d(output) (rows x
  // out, overwritten), writes each layer's weight and bias gradient into
  // `grads` at the layer's offsets and, if d_input is not null, dloss/d(input).
  // If row_scale is not null, row r of d_output is multiplied by
  // row_scale[r] first.
  // With weight_gradients false, no weight gradient is computed (the bias
  // gradients still are): the pass only carries d_output down to d_input.
  void backward(const float* params, float* grads, const float* input, float* d_output, int rows,
                float* d_input, const float* row_scale = nullptr, bool weight_gradients = true);

 private:
  Backend& backend_;
  std::vector<DenseLayer> layers_;
  int max_rows_;
  std::vector<DeviceArray<float>> outputs_;
  std::vector<DeviceArray<unsigned char>> masks_;  // per layer; empty on most backends
  std::vector<DeviceArray<float>> d_preactivations_;  // per layer; empty for the top
};

// Adam's hyper-parameters (the seed's defaults).
struct AdamConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

class VaeModel {
 public:
  // Buffers are sized for batches of up to max_rows images with up to
  // max_samples samples each (the decoder's max_rows * max_samples rows).
  VaeModel(Backend& backend, const Architecture& arch, int max_rows, int max_samples = 1);

  const Architecture& architecture() const { return arch_; }
  const ParameterLayout& layout() const { return layout_; }
  Backend& backend() { return backend_; }
  int max_rows() const { return max_rows_; }
  int max_samples() const { return max_samples_; }

  // The parameters as `init` says, drawn on the host from the run's seed
  // (stream kInit), so both backends start from the same bits; resets Adam's
  // moments. kGlorot needs pixel_means (input_dim values in [0, 1]) for the
  // decoder's output bias.
  void initialize(uint64_t seed, InitScheme init = InitScheme::kSmallNormal,
                  const std::vector<double>* pixel_means = nullptr);
  std::vector<float> parameters() const;
  void set_parameters(const std::vector<float>& host_params);
  std::vector<float> gradients() const;
  std::vector<float> adam_moment(int which) const;  // 1: m, 2: v
  void set_adam_moments(const std::vector<float>& m, const std::vector<float>& v);

  // Encoder output (rows x 2L: mean | log_std) of x (rows x input_dim).
  const float* encode(const float* x, int rows);
  // Decoder logits (rows x input_dim) of z (rows x L).
  const float* decode(const float* z, int rows);

  // The objective of a batch with given noise: x (images x input_dim,
  // binary), eps (images * K rows x L). Fills row_logprob() and
  // row_log_ratio() (images * K rows), row_kl() (images rows) and, for the
  // IWAE objectives, row_bound() and sample_weights(); with
  // compute_gradients, gradients() receives d(-batch mean bound)/d(params).
  // eps has images * M K rows for miwae and piwae (sample k of group m of
  // image b in row (b M + m) K + k). row_bound() is each image's trained
  // bound (piwae: the decoder's, L_MK) and sample_weights() the per-sample
  // weights of the encoder's gradient (miwae, ciwae, piwae: v of vae_math.h).
  // piwae runs the decoder's backward twice: once with the encoder's weights
  // for dz only (no weight gradients; its bias gradients go to a scratch
  // buffer), once with IWAE's weights over all M K samples for the decoder's
  // parameters (no dz).
  void forward_backward(const float* x, const float* eps, int images,
                        const ObjectiveConfig& objective, bool compute_gradients);
  // The one-sample ELBO (the seed's objective).
  void forward_backward(const float* x, const float* eps, int images, bool compute_gradients) {
    forward_backward(x, eps, images, ObjectiveConfig{}, compute_gradients);
  }
  // *accumulator += the sum over the last forward's images of its bound.
  void accumulate_bound(const ObjectiveConfig& objective, int images, double* accumulator);
  // One Adam step t (1-based) over the flat buffer with the last gradients.
  void adam_update(const AdamConfig& config, uint64_t t);

  const float* z() const { return z_.get(); }
  // The encoder's output (images x 2L: mean | log_std) of the last forward_backward.
  const float* encoder_output() const { return encoder_out_; }
  // The decoder's logits (rows x input_dim) of the last forward_backward.
  const float* logits() const { return logits_; }
  const float* row_logprob() const { return row_logprob_.get(); }
  const float* row_kl() const { return row_kl_.get(); }
  const float* row_log_ratio() const { return row_log_ratio_.get(); }
  const float* row_bound() const { return row_bound_.get(); }
  const float* sample_weights() const { return sample_weights_.get(); }
  float* params() { return params_.get(); }

 private:
  void check_rows(int rows) const;
  void check_samples(int samples) const;

  Backend& backend_;
  Architecture arch_;
  ParameterLayout layout_;
  int max_rows_;
  int max_samples_;
  DeviceArray<float> params_, grads_, adam_m_, adam_v_;
  Mlp encoder_, decoder_;
  DeviceArray<float> z_, dlogits_, dz_, d_encoder_out_;
  DeviceArray<float> row_logprob_, row_kl_, row_log_ratio_, row_bound_, sample_weights_;
  DeviceArray<float> group_bound_;  // L_K of each of the B M groups (miwae, piwae, ciwae)
  // piwae's second set of weights and its decoder pass's scratch, made at its first step.
  DeviceArray<float> decoder_weights_, piwae_dlogits_, piwae_scratch_grads_, piwae_bound_;
  const float* logits_ = nullptr;
  const float* encoder_out_ = nullptr;
};

}  // namespace cuvae
