#include "cuvae/evaluate.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuvae/error.h"

namespace cuvae {

void binarize_fixed(Backend& backend, const IdxImages& images, int first, int rows, uint64_t seed,
                    float* x) {
  const size_t dim = static_cast<size_t>(images.pixels_per_image());
  backend.upload_and_binarize(images.pixels.data() + static_cast<size_t>(first) * dim, rows,
                              images.pixels_per_image(), static_cast<uint64_t>(first),
                              RandomKey{seed, RandomStream::kEvalBinarize, 0}, x);
}

EvalResult evaluate(VaeModel& model, const IdxImages& images, int limit, int k, uint64_t seed) {
  Backend& backend = model.backend();
  const int dim = model.architecture().input_dim;
  const int latent = model.architecture().latent_dim;
  if (images.pixels_per_image() != dim) {
    throw Error("test images have " + std::to_string(images.pixels_per_image()) +
                " pixels but the model expects " + std::to_string(dim));
  }
  if (k < 1) throw Error("--k must be at least 1, got " + std::to_string(k));
  if (k > model.max_rows()) throw Error("--k " + std::to_string(k) + " exceeds the batch buffers");
  const int count = limit <= 0 ? images.count : std::min(limit, images.count);
  if (count < 1) throw Error("no test images to evaluate");
  // Each image is repeated K times in a batch; as many images as fit.
  const int chunk = std::max(1, model.max_rows() / k);

  DeviceArray<float> x_chunk(backend, static_cast<size_t>(chunk) * dim);
  DeviceArray<float> x_rep(backend, static_cast<size_t>(chunk) * k * dim);
  DeviceArray<float> eps(backend, static_cast<size_t>(chunk) * k * latent);
  std::vector<float> host_chunk(static_cast<size_t>(chunk) * dim);
  std::vector<float> host_rep(static_cast<size_t>(chunk) * k * dim);
  std::vector<float> logprob, kl, log_ratio;

  double elbo_sum = 0.0, nll_sum = 0.0;
  for (int first = 0; first < count; first += chunk) {
    const int n = std::min(chunk, count - first);
    const int rows = n * k;
    binarize_fixed(backend, images, first, n, seed, x_chunk.get());
    backend.copy_to_host(host_chunk.data(), x_chunk.get(), static_cast<size_t>(n) * dim * sizeof(float));
    for (int i = 0; i < n; ++i) {
      for (int s = 0; s < k; ++s) {
        std::copy_n(host_chunk.data() + static_cast<size_t>(i) * dim, dim,
                    host_rep.data() + (static_cast<size_t>(i) * k + s) * dim);
      }
    }
    backend.copy_to_device(x_rep.get(), host_rep.data(), static_cast<size_t>(rows) * dim * sizeof(float));
    // eps of sample s of image i is element ((i*K + s) * L + j) of the
    // stream: independent of the chunk size.
    backend.fill_normal(eps.get(), static_cast<size_t>(rows) * latent,
                        static_cast<uint64_t>(first) * k * latent,
                        RandomKey{seed, RandomStream::kEvalEps, 0});
    model.forward_backward(x_rep.get(), eps.get(), rows, false);
    logprob.resize(rows);
    kl.resize(rows);
    log_ratio.resize(rows);
    backend.copy_to_host(logprob.data(), model.row_logprob(), rows * sizeof(float));
    backend.copy_to_host(kl.data(), model.row_kl(), rows * sizeof(float));
    backend.copy_to_host(log_ratio.data(), model.row_log_ratio(), rows * sizeof(float));
    for (int i = 0; i < n; ++i) {
      double elbo = 0.0, max_log_w = -INFINITY;
      for (int s = 0; s < k; ++s) {
        const size_t r = static_cast<size_t>(i) * k + s;
        elbo += static_cast<double>(logprob[r]) - kl[r];
        max_log_w = std::max(max_log_w, static_cast<double>(logprob[r]) + log_ratio[r]);
      }
      double sum_w = 0.0;
      for (int s = 0; s < k; ++s) {
        const size_t r = static_cast<size_t>(i) * k + s;
        sum_w += std::exp(static_cast<double>(logprob[r]) + log_ratio[r] - max_log_w);
      }
      elbo_sum += elbo / k;
      nll_sum += -(max_log_w + std::log(sum_w / k));
    }
  }
  EvalResult result;
  result.images = count;
  result.k = k;
  result.elbo = elbo_sum / count;
  result.nll = nll_sum / count;
  return result;
}

}  // namespace cuvae
