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
// per sample (vae_math.h: importance weights, grouped_sample_weight).
//
// More stochastic layers (the IWAE paper's second architecture, S = 2):
// layer s >= 2 has its own encoder q(h_s|h_{s-1}) (Gaussian, on the layer
// below's sample) and decoder p(h_{s-1}|h_s) (Gaussian: mean | log_std), the
// prior N(0, I) is on h_S, and
//   log w = log p(x|h_1) + sum_{s<S} log p(h_s|h_{s+1}) + log p(h_S) - sum_s log q(h_s|.)
// With S > 1 the elbo is the mean over the K samples of log w (ciwae with
// beta 1): p(h_1|h_2) has no closed-form KL. Its expectation is the same
// as the one-layer elbo's analytic-KL form, whose bits the one-layer model keeps.
// The encoder runs on B rows, the decoder on B K (sample k of image b in row
// b K + k). A dense layer computes
// y = x W + b with W stored [in, out] row-major (the seed's np.dot(x, W) + b).
//
// All parameters live in one flat buffer, encoder layers then decoder layers,
// each layer's W then b, so an Adam step is one pass over one buffer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuvae/backends/backend.h"

namespace cuvae {

// A stochastic layer above the first: its size and the deterministic widths
// of its encoder q(h_s|h_{s-1}) and its decoder p(h_{s-1}|h_s).
struct StochasticLayer {
  int latent_dim = 50;
  std::vector<int> hidden;
  bool operator==(const StochasticLayer& other) const {
    return latent_dim == other.latent_dim && hidden == other.hidden;
  }
};

struct Architecture {
  int input_dim = 784;
  std::vector<int> hidden = {200, 200};  // of the first stochastic layer's encoder and decoder
  int latent_dim = 50;                   // the first stochastic layer's size
  // Stochastic layers 2..S, bottom first (the IWAE paper's two-layer model:
  // {{50, {100, 100}}}); empty for one stochastic layer (the seed's model).
  std::vector<StochasticLayer> upper;
  Activation activation = Activation::kRelu;  // of the hidden layers

  int stochastic_layers() const { return 1 + static_cast<int>(upper.size()); }
  // Layer s's (0-based, bottom first) size and deterministic widths.
  int latent_dim_of(int s) const { return s == 0 ? latent_dim : upper[s - 1].latent_dim; }
  const std::vector<int>& hidden_of(int s) const { return s == 0 ? hidden : upper[s - 1].hidden; }
  // Standard normal values per sample: the sum of the layers' sizes.
  int noise_per_sample() const;
  // Layer s's encoder: its input (the image, or layer s - 1's sample),
  // hidden..., 2 L_s (mean | log_std).
  std::vector<int> encoder_widths(int s = 0) const;
  // Layer s's decoder: L_s, hidden..., the image's logits (s = 0) or layer
  // s - 1's mean | log_std.
  std::vector<int> decoder_widths(int s = 0) const;
  std::string describe() const;  // "784-200-200-(50+50) | 50-200-200-784"
  // The flags' and the files' spelling: "100,50" and "200,200/100,100".
  std::string latent_dims_text() const;
  std::string hidden_text() const;
  // Sets the stochastic layers from those texts; throws cuvae::Error naming
  // --latent-dim or --hidden (or `where`, a file) when they do not parse or
  // do not have one width list per stochastic layer.
  void set_layers(const std::string& latent_dims, const std::string& hidden_widths,
                  const std::string& where = "");
  // set_layers from a file's fields 'latent_dim' and 'hidden' (`where`:
  // "PATH: checkpoint metadata"): a value that is not a layer list is named
  // as the field and quoted ("'latent_dim' is '...', not ..."), as every
  // other field of a damaged file is.
  void set_layers_from_fields(const std::string& latent_dims, const std::string& hidden_widths,
                              const std::string& where);
  bool operator==(const Architecture& other) const;
  bool operator!=(const Architecture& other) const { return !(*this == other); }
  // Throws cuvae::Error unless every width is in 1..kMaxWidth and there is
  // at least one hidden layer under every stochastic layer.
  void validate() const;
  static constexpr int kMaxWidth = 65536;
  static constexpr int kMaxStochasticLayers = 8;
};

// "200,200" -> {200, 200}; throws cuvae::Error naming `what` on anything else.
// The error message shows `example` as a valid value.
std::vector<int> parse_widths(const std::string& text, const std::string& what,
                              const std::string& example = "200,200");
std::string format_widths(const std::vector<int>& widths);
// "200,200/100,100" -> {{200, 200}, {100, 100}}: one parse_widths list per
// stochastic layer, '/' between them.
std::vector<std::vector<int>> parse_layer_widths(const std::string& text, const std::string& what);

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
  // Stochastic layer s's encoder and decoder (layer 0: "encoder.i" and
  // "decoder.i", the seed's; layer s > 0: "encoder<s+1>.i", "decoder<s+1>.i").
  const std::vector<DenseLayer>& encoder(int s = 0) const { return encoders_[s]; }
  const std::vector<DenseLayer>& decoder(int s = 0) const { return decoders_[s]; }
  std::vector<DenseLayer> all_layers() const;
  size_t size() const { return size_; }

 private:
  // Layer 0's encoder and decoder first, then each upper layer's: the
  // one-layer model's offsets do not depend on what is above it.
  std::vector<std::vector<DenseLayer>> encoders_;
  std::vector<std::vector<DenseLayer>> decoders_;
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
  // With accumulate_d_input, d_input += dloss/d(input) instead of =.
  void backward(const float* params, float* grads, const float* input, float* d_output, int rows,
                float* d_input, const float* row_scale = nullptr, bool weight_gradients = true,
                bool accumulate_d_input = false);

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

  // The first stochastic layer's encoder output (rows x 2L: mean |
  // log_std) of x (rows x input_dim).
  const float* encode(const float* x, int rows);
  // Decoder logits (rows x input_dim) of the first layer's z (rows x L).
  const float* decode(const float* z, int rows);
  // Logits of ancestral samples: eps holds rows x noise_per_sample()
  // standard normals, one block of rows x L_s per layer, bottom first; the
  // top block is h_S ~ p(h_S), each block below draws h_s ~ p(h_s|h_{s+1}).
  // With one layer, decode(eps).
  const float* sample_logits(const float* eps, int rows);

  // The objective of a batch with given noise: x (images x input_dim,
  // binary), eps (one block of images * K rows x L_s per stochastic layer,
  // bottom first). Fills row_logprob() and
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
  // Stochastic layer s's (s >= 1) encoder output of the last forward_backward
  // (images * K rows x 2 L_s: the means and log_stds of q(h_s|h_{s-1})).
  const float* upper_encoder_output(int s) const { return upper_[s - 1]->encoder_out; }
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
  // piwae's second set of weights and its decoder pass's logits, made at its first step.
  DeviceArray<float> decoder_weights_, piwae_dlogits_, piwae_bound_;
  // Bias gradients of the backward passes that only carry a gradient down
  // (piwae's, DReG's through an upper encoder), made at the first such step.
  DeviceArray<float> scratch_grads_;

  // A stochastic layer above the first, on the decoder's B M K rows.
  struct UpperLayer {
    UpperLayer(Backend& backend, const ParameterLayout& layout, int s, int latent, int below_latent,
               int rows);
    Mlp encoder, decoder;
    DeviceArray<float> h, dh, log_ratio, d_encoder_out, d_encoder_out_below, d_p_params;
    const float* encoder_out = nullptr;  // the last forward's
    const float* p_params = nullptr;     // p(h_{s-1}|h_s)'s mean | log_std, the last forward's
  };
  std::vector<std::unique_ptr<UpperLayer>> upper_;
  // The upper layers' forward on `rows` sample rows (eps: the whole noise).
  void upper_layers_forward(const float* eps, int rows);
  // The decoders' backward (p(x|h_1), then every p(h_{s-1}|h_s)), weighted
  // per sample row by `weights`: parameter gradients into `grads` (only the
  // biases' with weight_gradients false), each layer's dloss/dh into dz_ and
  // the upper layers' dh when with_dh.
  void decoders_backward(const float* weights, float* grads, float* dlogits, int rows,
                         bool weight_gradients, bool with_dh);
  // The upper encoders' backward, top first, each adding what reaches the
  // sample below to that layer's dh (dz_ for the first).
  void upper_encoders_backward(const float* eps, const float* weights, int rows, float scale,
                               bool dreg);
  float* scratch_grads();
  const float* logits_ = nullptr;
  const float* encoder_out_ = nullptr;
  float batch_scale_ = 1.0f;  // 1/B of the last forward_backward
};

}  // namespace cuvae
