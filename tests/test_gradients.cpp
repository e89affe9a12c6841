// The hand-derived gradient of the whole ELBO against central finite
// differences, for every parameter of every tensor of a small network, with
// fixed eps and fixed binary x.
//
// Tolerance: the loss is computed in float (about 1e-7 relative). With step
// h = 1e-2 the rounding error of the difference quotient is ~1e-7 * |loss| / h
// ~ 1e-4 and the truncation error O(h^2 f''') is of the same order, so we
// accept |fd - analytic| <= 5e-4 + 1e-2 |analytic|. A wrong term or factor
// anywhere in the backward pass is off by far more (typically 10-100%).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cuvae/cpu_backend.h"
#include "cuvae/vae_model.h"

namespace cuvae {
namespace {

TEST(Gradients, WholeElboMatchesFiniteDifferencesForEveryParameter) {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Architecture arch;
  arch.input_dim = 12;
  arch.hidden = {7, 5};
  arch.latent_dim = 3;
  const int rows = 4;
  VaeModel model(*backend, arch, rows);

  // Parameters large enough that every term matters (0.01 * N would make the
  // network nearly linear and the KL terms tiny).
  std::vector<float> params(model.layout().size());
  for (size_t i = 0; i < params.size(); ++i) {
    params[i] = 0.4f * random_normal(RandomKey{11, RandomStream::kInit, 0}, i);
  }
  model.set_parameters(params);
  std::vector<float> x(static_cast<size_t>(rows) * arch.input_dim), eps(static_cast<size_t>(rows) * arch.latent_dim);
  for (size_t i = 0; i < x.size(); ++i) x[i] = random_uniform(RandomKey{12, RandomStream::kBinarize, 0}, i) < 0.4f ? 1.0f : 0.0f;
  for (size_t i = 0; i < eps.size(); ++i) eps[i] = random_normal(RandomKey{13, RandomStream::kEps, 0}, i);
  DeviceArray<float> x_dev(*backend, x.size()), eps_dev(*backend, eps.size());
  backend->copy_to_device(x_dev.get(), x.data(), x.size() * sizeof(float));
  backend->copy_to_device(eps_dev.get(), eps.data(), eps.size() * sizeof(float));

  auto loss = [&](const std::vector<float>& p) {
    model.set_parameters(p);
    model.forward_backward(x_dev.get(), eps_dev.get(), rows, false);
    std::vector<float> logp(rows), kl(rows);
    backend->copy_to_host(logp.data(), model.row_logprob(), rows * sizeof(float));
    backend->copy_to_host(kl.data(), model.row_kl(), rows * sizeof(float));
    double sum = 0;
    for (int r = 0; r < rows; ++r) sum += static_cast<double>(logp[r]) - kl[r];
    return -sum / rows;
  };

  model.set_parameters(params);
  model.forward_backward(x_dev.get(), eps_dev.get(), rows, true);
  const std::vector<float> analytic = model.gradients();

  const float h = 1e-2f;
  int checked = 0;
  for (const DenseLayer& layer : model.layout().all_layers()) {
    const size_t begin = layer.weight_offset, end = layer.bias_offset + layer.out;
    double worst = 0;  // largest error as a fraction of the tolerance
    for (size_t i = begin; i < end; ++i) {
      std::vector<float> p = params;
      p[i] = params[i] + h;
      const double up = loss(p);
      p[i] = params[i] - h;
      const double down = loss(p);
      const double fd = (up - down) / (2 * h);
      const double tolerance = 5e-4 + 1e-2 * std::fabs(analytic[i]);
      worst = std::max(worst, std::fabs(fd - analytic[i]) / tolerance);
      EXPECT_NEAR(analytic[i], fd, tolerance)
          << layer.name << (i < layer.bias_offset ? ".weight[" : ".bias[")
          << (i < layer.bias_offset ? i - begin : i - layer.bias_offset) << "]";
      ++checked;
    }
    RecordProperty(layer.name + "_worst_error_fraction_of_tolerance", std::to_string(worst));
    std::printf("  %s: worst |fd - analytic| = %.2f of tolerance\n", layer.name.c_str(), worst);
  }
  EXPECT_EQ(checked, static_cast<int>(params.size()));
}

}  // namespace
}  // namespace cuvae
