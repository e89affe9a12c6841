// The hand-derived gradients of every objective (the ELBO, the IWAE bound,
// the decoder's part of DReG, MIWAE over M x K, CIWAE for several beta)
// against central finite differences, for every parameter of every tensor of
// a small network, with fixed eps and fixed binary x, K in {1, 3}, ReLU and
// tanh; PIWAE, which is not the gradient of one loss, as IWAE's decoder
// gradient and MIWAE's encoder gradient of the same samples, bit for bit.
//
// Tolerance: the loss is computed in float (about 1e-7 relative). With step
// h = 1e-2 the rounding error of the difference quotient is ~1e-7 * |loss| / h
// ~ 1e-4 and the truncation error O(h^2 f''') is of the same order, so we
// accept |fd - analytic| <= 5e-4 + 1e-2 |analytic|. A wrong term or factor
// anywhere in the backward pass is off by far more (typically 10-100%).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "cuvae/backends/cpu/cpu_backend.h"
#include "cuvae/model/vae_model.h"

namespace cuvae {
namespace {

// A small network with parameters large enough that every term matters
// (0.01 * N would make the network nearly linear and the KL terms tiny), a
// fixed binary batch and fixed eps for K samples per image.
struct GradientCase {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Architecture arch;
  int images = 4;
  ObjectiveConfig objective;
  std::vector<float> params;
  DeviceArray<float> x, eps;

  // layers 2: the two-stochastic-layer model 12-7-5-(3+3) -4-(2+2) | 2-4-(3+3) -7-5-12.
  GradientCase(Objective o, int samples, Activation activation, int outer = 1, double beta = 0.5,
               int layers = 1) {
    arch.input_dim = 12;
    arch.set_layers(layers == 1 ? "3" : "3,2", layers == 1 ? "7,5" : "7,5/4");
    arch.activation = activation;
    objective.objective = o;
    objective.samples = samples;
    objective.outer_samples = outer;
    objective.ciwae_beta = beta;
    params.resize(ParameterLayout(arch).size());
    for (size_t i = 0; i < params.size(); ++i) {
      params[i] = 0.4f * random_normal(RandomKey{11, RandomStream::kInit, 0}, i);
    }
    std::vector<float> hx(static_cast<size_t>(images) * arch.input_dim);
    std::vector<float> he(static_cast<size_t>(images) * samples * outer * arch.noise_per_sample());
    for (size_t i = 0; i < hx.size(); ++i) hx[i] = random_uniform(RandomKey{12, RandomStream::kBinarize, 0}, i) < 0.4f ? 1.0f : 0.0f;
    for (size_t i = 0; i < he.size(); ++i) he[i] = random_normal(RandomKey{13, RandomStream::kEps, 0}, i);
    x = to_device(*backend, hx);
    eps = to_device(*backend, he);
  }

  // -(1/B) sum_b bound_b, the loss whose gradient forward_backward computes.
  double loss(VaeModel& model, const std::vector<float>& p) {
    model.set_parameters(p);
    model.forward_backward(x.get(), eps.get(), images, objective, false);
    DeviceArray<double> sum(*backend, 1);
    const double zero = 0.0;
    backend->copy_to_device(sum.get(), &zero, sizeof zero);
    model.accumulate_bound(objective, images, sum.get());
    double total = 0.0;
    backend->copy_to_host(&total, sum.get(), sizeof total);
    return -total / images;
  }
};

// Every parameter's analytic gradient against the central difference of the
// loss. DReG is not the gradient of any loss for the encoder (it is an
// estimator of it with the score term's expectation removed), so there only
// the decoder's parameters are checked here; its encoder gradient is checked
// against the formula in BackendOps and against PyTorch's autograd.
void check_against_finite_differences(Objective o, int samples, Activation activation,
                                      int outer = 1, double beta = 0.5, int layers = 1) {
  GradientCase c(o, samples, activation, outer, beta, layers);
  VaeModel model(*c.backend, c.arch, c.images, c.objective.total_samples());
  model.set_parameters(c.params);
  model.forward_backward(c.x.get(), c.eps.get(), c.images, c.objective, true);
  const std::vector<float> analytic = model.gradients();
  const float h = 1e-2f;
  int checked = 0;
  for (const DenseLayer& layer : model.layout().all_layers()) {
    if (o == Objective::kIwaeDreg && layer.name.rfind("encoder", 0) == 0) continue;
    const size_t begin = layer.weight_offset, end = layer.bias_offset + layer.out;
    double worst = 0;  // largest error as a fraction of the tolerance
    for (size_t i = begin; i < end; ++i) {
      std::vector<float> p = c.params;
      p[i] = c.params[i] + h;
      const double up = c.loss(model, p);
      p[i] = c.params[i] - h;
      const double down = c.loss(model, p);
      const double fd = (up - down) / (2 * h);
      const double tolerance = 5e-4 + 1e-2 * std::fabs(analytic[i]);
      worst = std::max(worst, std::fabs(fd - analytic[i]) / tolerance);
      EXPECT_NEAR(analytic[i], fd, tolerance)
          << layer.name << (i < layer.bias_offset ? ".weight[" : ".bias[")
          << (i < layer.bias_offset ? i - begin : i - layer.bias_offset) << "]";
      ++checked;
    }
    std::printf("  %s%s %s: worst |fd - analytic| = %.2f of tolerance\n",
                layers > 1 ? "two layers " : "", (bound_name(c.objective) + " " + activation_name(activation)).c_str(),
                layer.name.c_str(), worst);
  }
  EXPECT_GT(checked, 0);
}

TEST(Gradients, WholeElboMatchesFiniteDifferencesForEveryParameter) {
  check_against_finite_differences(Objective::kElbo, 1, Activation::kRelu);
}

TEST(Gradients, EveryObjectiveAndKMatchesFiniteDifferences) {
  for (Objective o : {Objective::kElbo, Objective::kIwae, Objective::kIwaeDreg}) {
    for (int samples : {1, 3}) {
      for (Activation act : {Activation::kRelu, Activation::kTanh}) {
        SCOPED_TRACE(objective_name(o) + " K=" + std::to_string(samples) + " " + activation_name(act));
        check_against_finite_differences(o, samples, act);
      }
    }
  }
}

// MIWAE's M x K samples per image and CIWAE's beta (0 and 1 at the ends).
TEST(Gradients, MiwaeAndCiwaeMatchFiniteDifferences) {
  for (Activation act : {Activation::kRelu, Activation::kTanh}) {
    for (const auto& [outer, samples] : std::vector<std::pair<int, int>>{{2, 3}, {3, 1}, {1, 3}}) {
      SCOPED_TRACE("miwae " + std::to_string(outer) + "x" + std::to_string(samples));
      check_against_finite_differences(Objective::kMiwae, samples, act, outer);
    }
    for (double beta : {0.0, 0.3, 1.0}) {
      for (int samples : {1, 3}) {
        SCOPED_TRACE("ciwae beta " + std::to_string(beta) + " K=" + std::to_string(samples));
        check_against_finite_differences(Objective::kCiwae, samples, act, 1, beta);
      }
    }
  }
}

// The two-stochastic-layer model: every objective, every parameter of both
// layers' encoders and decoders (DReG: the decoders'; its encoders' are
// checked against PyTorch's autograd, tests/torch). tanh (the IWAE paper's)
// for K = 1 and 3; ReLU for K = 3: at K = 1 these parameters put a
// pre-activation of encoder2's ReLU layer within 2e-3 of zero (along
// encoder2.0.bias[1] the loss's slope jumps from -0.30 to -0.42 inside
// [-0.002, 0]), where a central difference averages the slopes on both
// sides of the kink, for every parameter beneath that unit; away from kinks
// ReLU's backward is the one the one-layer checks above cover.
TEST(Gradients, TwoStochasticLayersMatchFiniteDifferences) {
  for (Activation act : {Activation::kTanh, Activation::kRelu}) {
    for (Objective o : {Objective::kElbo, Objective::kIwae, Objective::kIwaeDreg}) {
      for (int samples : {1, 3}) {
        if (act == Activation::kRelu && samples == 1) continue;
        SCOPED_TRACE("two layers " + objective_name(o) + " K=" + std::to_string(samples) + " " + activation_name(act));
        check_against_finite_differences(o, samples, act, 1, 0.5, 2);
      }
    }
    SCOPED_TRACE("two layers miwae 2x3 / ciwae 0.3");
    check_against_finite_differences(Objective::kMiwae, 3, act, 2, 0.5, 2);
    check_against_finite_differences(Objective::kCiwae, 3, act, 1, 0.3, 2);
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b, size_t begin, size_t end) {
  return std::memcmp(a.data() + begin, b.data() + begin, (end - begin) * sizeof(float)) == 0;
}

std::vector<float> gradients_of(GradientCase& c, const ObjectiveConfig& objective) {
  VaeModel model(*c.backend, c.arch, c.images, objective.total_samples());
  model.set_parameters(c.params);
  model.forward_backward(c.x.get(), c.eps.get(), c.images, objective, true);
  return model.gradients();
}

// PIWAE from the same M K samples: the decoder's parameters get IWAE's
// gradient over all M K samples, the encoder's MIWAE(M, K)'s, bit for bit
// (the same operations on the same inputs); its bound is L_MK.
TEST(Gradients, PiwaeIsIwaeForTheDecoderAndMiwaeForTheEncoder) {
  for (int layers : {1, 2}) {
    for (Activation act : {Activation::kRelu, Activation::kTanh}) {
      SCOPED_TRACE(std::to_string(layers) + " stochastic layers, " + activation_name(act));
      const int outer = 2, samples = 3;
      GradientCase c(Objective::kPiwae, samples, act, outer, 0.5, layers);
      ObjectiveConfig iwae{Objective::kIwae, outer * samples};
      ObjectiveConfig miwae = c.objective;
      miwae.objective = Objective::kMiwae;
      const std::vector<float> piwae_g = gradients_of(c, c.objective);
      const std::vector<float> iwae_g = gradients_of(c, iwae), miwae_g = gradients_of(c, miwae);
      // Every decoder (p(x|h_1), and p(h_1|h_2) with two layers) has IWAE's
      // bits, every encoder MIWAE's.
      for (const DenseLayer& layer : ParameterLayout(c.arch).all_layers()) {
        const size_t begin = layer.weight_offset, end = layer.bias_offset + layer.out;
        const bool decoder = layer.name.rfind("decoder", 0) == 0;
        EXPECT_TRUE(same_bits(piwae_g, decoder ? iwae_g : miwae_g, begin, end)) << layer.name;
        if (decoder) {
          EXPECT_FALSE(same_bits(piwae_g, miwae_g, begin, end))
              << layer.name << ": MIWAE's and IWAE's decoder gradients should differ";
        }
      }
      GradientCase i(Objective::kIwae, outer * samples, act, 1, 0.5, layers);
      VaeModel piwae_model(*c.backend, c.arch, c.images, outer * samples);
      VaeModel iwae_model(*i.backend, i.arch, i.images, outer * samples);
      EXPECT_EQ(c.loss(piwae_model, c.params), i.loss(iwae_model, i.params)) << "piwae's bound is L_MK";
    }
  }
}

// CIWAE at beta 0 is IWAE and MIWAE with one group is IWAE, bit for bit:
// their weights (0/K + 1 w~) / 1 are w~ exactly.
TEST(Gradients, CiwaeAtBetaZeroAndMiwaeWithOneGroupAreIwaeBitForBit) {
  GradientCase c(Objective::kIwae, 3, Activation::kTanh);
  const std::vector<float> iwae = gradients_of(c, c.objective);
  ObjectiveConfig ciwae{Objective::kCiwae, 3};
  ciwae.ciwae_beta = 0.0;
  ObjectiveConfig miwae{Objective::kMiwae, 3};
  const size_t n = iwae.size();
  EXPECT_TRUE(same_bits(gradients_of(c, ciwae), iwae, 0, n));
  EXPECT_TRUE(same_bits(gradients_of(c, miwae), iwae, 0, n));
}

// With K = 1 the IWAE bound is the one-sample bound with the sampled KL:
// log p(x|z) + log p(z) - log q(z|x), and its normalized weight is 1.
TEST(Gradients, IwaeWithOneSampleIsTheSampledKlBound) {
  GradientCase c(Objective::kIwae, 1, Activation::kTanh);
  VaeModel model(*c.backend, c.arch, c.images, 1);
  model.set_parameters(c.params);
  model.forward_backward(c.x.get(), c.eps.get(), c.images, c.objective, true);
  const auto bound = to_host(*c.backend, model.row_bound(), c.images);
  const auto logp = to_host(*c.backend, model.row_logprob(), c.images);
  const auto ratio = to_host(*c.backend, model.row_log_ratio(), c.images);
  const auto weights = to_host(*c.backend, model.sample_weights(), c.images);
  for (int b = 0; b < c.images; ++b) {
    EXPECT_NEAR(bound[b], logp[b] + ratio[b], 1e-5 * std::fabs(bound[b])) << b;
    EXPECT_EQ(weights[b], 1.0f) << b;
  }
}

// The K-sample ELBO with K copies of the same eps is the one-sample ELBO:
// same bound, same gradient (to rounding: the sums run in another order).
TEST(Gradients, ElboOfIdenticalSamplesIsTheOneSampleElbo) {
  GradientCase one(Objective::kElbo, 1, Activation::kRelu);
  const int k = 3;
  GradientCase three(Objective::kElbo, k, Activation::kRelu);
  const std::vector<float> e = to_host(*one.backend, one.eps.get(), one.eps.size());
  std::vector<float> repeated;
  for (int b = 0; b < one.images; ++b) {
    for (int s = 0; s < k; ++s) {
      repeated.insert(repeated.end(), e.begin() + b * one.arch.latent_dim, e.begin() + (b + 1) * one.arch.latent_dim);
    }
  }
  three.eps = to_device(*three.backend, repeated);
  VaeModel m1(*one.backend, one.arch, one.images, 1), m3(*three.backend, three.arch, three.images, k);
  EXPECT_NEAR(one.loss(m1, one.params), three.loss(m3, three.params), 1e-5);
  m1.forward_backward(one.x.get(), one.eps.get(), one.images, one.objective, true);
  m3.forward_backward(three.x.get(), three.eps.get(), three.images, three.objective, true);
  const std::vector<float> g1 = m1.gradients(), g3 = m3.gradients();
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_NEAR(g1[i], g3[i], 1e-5 + 1e-4 * std::fabs(g1[i])) << i;
}

}  // namespace
}  // namespace cuvae
