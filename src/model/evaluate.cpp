#include "cuvae/model/evaluate.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "cuvae/error.h"

namespace cuvae {

namespace {

constexpr int kEvalRows = 8192;  // decoder rows per chunk: large GEMMs, ~120 MB of buffers

// log (1/n) sum_i exp(v_i) in double, max-shifted.
double log_mean_exp(const float* v, int n) {
  double max = -INFINITY;
  for (int i = 0; i < n; ++i) max = std::max(max, static_cast<double>(v[i]));
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(v[i]) - max);
  return max + std::log(sum / n);
}

// Sums of each latent unit's posterior mean and its square over the images
// (in double): the active-unit count's variance.
struct PosteriorMeanMoments {
  std::vector<double> sum, sum_squares;
  explicit PosteriorMeanMoments(int latent) : sum(latent, 0.0), sum_squares(latent, 0.0) {}
  // encoder_out: images * samples rows of [mean | log_std]; an image's
  // posterior mean is the average of its rows' means (one row for the first
  // layer; for a layer above, E_q[h_s|x] = E_{q(h_{s-1}|x)} mean_s(h_{s-1})
  // estimated over the image's K samples).
  void add(const std::vector<float>& encoder_out, int images, int samples, int latent) {
    for (int i = 0; i < images; ++i) {
      for (int u = 0; u < latent; ++u) {
        double mean = 0.0;
        for (int k = 0; k < samples; ++k) {
          mean += encoder_out[(static_cast<size_t>(i) * samples + k) * 2 * latent + u];
        }
        mean /= samples;
        sum[u] += mean;
        sum_squares[u] += mean * mean;
      }
    }
  }
  int active_units(int images, double threshold) const {
    int active = 0;
    for (size_t u = 0; u < sum.size(); ++u) {
      const double mean = sum[u] / images;
      active += sum_squares[u] / images - mean * mean > threshold ? 1 : 0;
    }
    return active;
  }
};

// Adds, for each k in `bounds`, each image's mean over its K / k groups of
// k consecutive samples of their log-mean-exp (the K-sample bound L_k's
// estimate with the least variance from these samples) to (*sums)[b].
void add_group_bounds(Backend& backend, const VaeModel& model, int images, int k,
                      const std::vector<int>& bounds, std::vector<double>* sums) {
  std::vector<float> log_w = to_host(backend, model.row_logprob(), static_cast<size_t>(images) * k);
  const std::vector<float> log_ratio = to_host(backend, model.row_log_ratio(), log_w.size());
  for (size_t r = 0; r < log_w.size(); ++r) log_w[r] += log_ratio[r];
  for (size_t b = 0; b < bounds.size(); ++b) {
    const int group = bounds[b], groups = k / group;
    for (int i = 0; i < images; ++i) {
      double sum = 0.0;
      for (int g = 0; g < groups; ++g) {
        sum += log_mean_exp(log_w.data() + static_cast<size_t>(i) * k + static_cast<size_t>(g) * group, group);
      }
      (*sums)[b] += sum / groups;
    }
  }
}

void check_request(const VaeModel& model, const IdxImages& images, const EvalRequest& request) {
  const int dim = model.architecture().input_dim;
  if (images.pixels_per_image() != dim) {
    throw Error("test images have " + std::to_string(images.pixels_per_image()) +
                " pixels but the model expects " + std::to_string(dim));
  }
  if (request.k < 1) throw Error("--k must be at least 1, got " + std::to_string(request.k));
  if (request.k > model.max_samples()) {
    throw Error("--k " + std::to_string(request.k) + " exceeds the model's sample buffers");
  }
  for (int k : request.bounds) {
    if (k < 1 || k > request.k) {
      throw Error("--bounds " + std::to_string(k) + " must be between 1 and --k " +
                  std::to_string(request.k));
    }
  }
}

}  // namespace

int eval_images_per_chunk(int k) { return std::max(1, kEvalRows / std::max(1, k)); }

std::vector<int> parse_bounds(const std::string& text, int k) {
  std::vector<int> bounds = parse_widths(text, "--bounds");
  for (int b : bounds) {
    if (b > k) {
      throw Error("--bounds " + std::to_string(b) + " is more than --k " + std::to_string(k) +
                  " samples: each bound uses that many of the K samples");
    }
  }
  return bounds;
}

void binarize_fixed(Backend& backend, const IdxImages& images, int first, int rows, uint64_t seed,
                    float* x) {
  const size_t dim = static_cast<size_t>(images.pixels_per_image());
  backend.upload_and_binarize(images.pixels.data() + static_cast<size_t>(first) * dim, rows,
                              images.pixels_per_image(), static_cast<uint64_t>(first),
                              RandomKey{seed, RandomStream::kEvalBinarize, 0}, x);
}

EvalResult evaluate(VaeModel& model, const IdxImages& images, const EvalRequest& request) {
  check_request(model, images, request);
  Backend& backend = model.backend();
  const int dim = model.architecture().input_dim, latent = model.architecture().latent_dim;
  const int k = request.k;
  const int count = request.limit <= 0 ? images.count : std::min(request.limit, images.count);
  if (count < 1) throw Error("no test images to evaluate");
  const int chunk = model.max_rows();
  const ObjectiveConfig samples{Objective::kElbo, k};

  DeviceArray<float> x(backend, static_cast<size_t>(chunk) * dim);
  const Architecture& arch = model.architecture();
  DeviceArray<float> eps(backend, static_cast<size_t>(chunk) * k * arch.noise_per_sample());
  DeviceArray<float> row_bound(backend, static_cast<size_t>(chunk));
  DeviceArray<double> elbo_sum(backend, 1);
  const double zero = 0.0;
  backend.copy_to_device(elbo_sum.get(), &zero, sizeof zero);
  std::vector<PosteriorMeanMoments> moments;
  for (int l = 0; l < arch.stochastic_layers(); ++l) moments.emplace_back(arch.latent_dim_of(l));
  std::vector<double> bound_sums(request.bounds.size(), 0.0);
  EvalResult result;
  double nll_sum = 0.0;
  for (int first = 0; first < count; first += chunk) {
    if (request.stop && request.stop()) {
      result.stopped = true;
      result.images = first;
      return result;
    }
    const int n = std::min(chunk, count - first);
    binarize_fixed(backend, images, first, n, request.seed, x.get());
    // Layer s's block of n K rows x L_s, from its own counter of the stream
    // (step s), so that every image's noise is the same whatever the chunk.
    size_t offset = 0;
    for (int l = 0; l < arch.stochastic_layers(); ++l) {
      const size_t values = static_cast<size_t>(k) * arch.latent_dim_of(l);
      backend.fill_normal(eps.get() + offset, n * values, static_cast<uint64_t>(first) * values,
                          RandomKey{request.seed, RandomStream::kEvalEps, static_cast<uint64_t>(l)});
      offset += n * values;
    }
    model.forward_backward(x.get(), eps.get(), n, samples, false);
    model.accumulate_bound(samples, n, elbo_sum.get());
    backend.importance_weights(model.row_logprob(), model.row_log_ratio(), n, k, nullptr,
                               row_bound.get());
    const std::vector<float> log_likelihood = to_host(backend, row_bound.get(), n);
    for (float value : log_likelihood) nll_sum -= value;
    if (request.per_image) {
      result.log_likelihood.insert(result.log_likelihood.end(), log_likelihood.begin(), log_likelihood.end());
    }
    moments[0].add(to_host(backend, model.encoder_output(), static_cast<size_t>(n) * 2 * latent), n, 1, latent);
    for (int l = 1; l < arch.stochastic_layers(); ++l) {
      const int upper_latent = arch.latent_dim_of(l);
      moments[l].add(to_host(backend, model.upper_encoder_output(l), static_cast<size_t>(n) * k * 2 * upper_latent),
                     n, k, upper_latent);
    }
    if (!request.bounds.empty()) add_group_bounds(backend, model, n, k, request.bounds, &bound_sums);
    if (request.progress) request.progress(first + n, count);
  }
  result.images = count;
  result.k = k;
  double elbo = 0.0;
  backend.copy_to_host(&elbo, elbo_sum.get(), sizeof elbo);
  result.elbo = elbo / count;
  result.nll = nll_sum / count;
  for (size_t b = 0; b < request.bounds.size(); ++b) {
    result.bounds.emplace_back(request.bounds[b], bound_sums[b] / count);
  }
  for (const PosteriorMeanMoments& layer : moments) {
    result.active_units_per_layer.push_back(layer.active_units(count, 0.01));
  }
  result.active_units = result.active_units_per_layer[0];
  return result;
}

}  // namespace cuvae
