// The CUDA backend's K-sample and tanh operations (kernels/importance_weights.cu,
// reparameterize_kl.cu, bernoulli_logprob.cu, bias_activation.cu) against the
// CPU backend, the reference, on the same inputs; the importance-weighted
// bound also against a direct evaluation in long double. Skips (with the
// reason) where no CUDA device is present.
//
// Tolerances, with the reasoning (each check states which it uses):
//  - element-wise values (z, tanh, dlogits, a scaled activation gradient):
//    a few float operations, 0.5 ulp each on both sides, plus up to 2 ulp for
//    CUDA's expf/tanhf against the host's Cephes polynomials and an FMA
//    contraction nvcc may make: relative 1e-5 (~80 ulp) + a tiny absolute.
//  - sums of n float terms (row sums, the K-sample sums of the backward,
//    bias-gradient column sums): both sides add in a different order, so
//    they differ by up to ~n 2^-24 sum|terms| in the worst case; with the
//    element-wise error on top we allow 1e-5 sum|terms| + 2n 6e-8 sum|terms|,
//    with sum|terms| computed here in double from the formulas.
//  - the bound L_K and the weights: both backends take the same float max
//    (exact) and add the shifted weights in double, whose terms differ only by
//    expf's few ulps (~2e-7 relative) and the addition order (~1e-16): the
//    weights within relative 4e-6, the bound within 2e-6 absolute plus
//    relative 2e-6 (float's ulp at a 300-nat bound is 3e-5 / 300 = 1e-7
//    relative; the cast to float rounds each side once).
//  - accumulate_elbo: float inputs added in double on both sides, in a
//    different order: relative 1e-12.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend_fixture.h"
#include "cuvae/model/philox.h"

namespace cuvae {
namespace {

constexpr int kLatent = 50;  // the IWAE paper's latent size
constexpr double kElementwise = 1e-5;

std::vector<float> normals(size_t n, uint64_t seed, float scale = 1.0f, float shift = 0.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = shift + scale * random_normal(RandomKey{seed, RandomStream::kInit, 7}, i);
  return v;
}

std::vector<float> uniforms(size_t n, uint64_t seed, float low, float high) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i] = low + (high - low) * random_uniform(RandomKey{seed, RandomStream::kInit, 9}, i);
  }
  return v;
}

// A sum's tolerance from its n terms' magnitudes (the header's rule).
double sum_tolerance(double sum_of_magnitudes, int n) {
  return (kElementwise + 2.0 * n * 6e-8) * sum_of_magnitudes + 1e-30;
}

// |actual[i] - expected[i]| <= tolerance[i] for all i; prints the worst
// error as a fraction of its tolerance.
void expect_within(const std::vector<float>& actual, const std::vector<float>& expected,
                   const std::vector<double>& tolerance, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  ASSERT_EQ(tolerance.size(), expected.size()) << what;
  double worst = 0.0;
  size_t worst_index = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double error = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    const double fraction = std::isfinite(actual[i]) ? error / tolerance[i] : INFINITY;
    if (!(fraction <= worst)) {
      worst = fraction;
      worst_index = i;
    }
  }
  EXPECT_LE(worst, 1.0) << what << ": element " << worst_index << " is " << actual[worst_index]
                        << " on CUDA, " << expected[worst_index] << " on the CPU";
  std::printf("  %-50s worst error %.3f of tolerance\n", what.c_str(), worst);
}

// Element-wise: relative kElementwise of the CPU's value + `absolute`.
void expect_elementwise(const std::vector<float>& actual, const std::vector<float>& expected,
                        double absolute, const std::string& what) {
  std::vector<double> tolerance(expected.size());
  for (size_t i = 0; i < expected.size(); ++i) tolerance[i] = kElementwise * std::fabs(expected[i]) + absolute;
  expect_within(actual, expected, tolerance, what);
}

// The CPU and the CUDA backend, each with a copy of the same host inputs.
struct TwoBackends {
  std::unique_ptr<Backend> cpu = make_backend("cpu");
  std::unique_ptr<Backend> cuda;
  explicit TwoBackends(std::unique_ptr<Backend> device) : cuda(std::move(device)) {}
};

// ---------------------------------------------------------------------------
// reparameterize_kl_forward / backward with K samples.

struct LatentInputs {
  int images, samples;
  std::vector<float> encoder_out, eps, dz;
  LatentInputs(int b, int k)
      : images(b),
        samples(k),
        encoder_out(normals(static_cast<size_t>(b) * 2 * kLatent, 11, 0.7f)),
        eps(normals(static_cast<size_t>(b) * k * kLatent, 12 + static_cast<uint64_t>(k))),
        dz(normals(eps.size(), 13 + static_cast<uint64_t>(k), 0.05f)) {}
  float mean(int b, int j) const { return encoder_out[static_cast<size_t>(b) * 2 * kLatent + j]; }
  float log_std(int b, int j) const { return encoder_out[static_cast<size_t>(b) * 2 * kLatent + kLatent + j]; }
  size_t sample(int b, int k, int j) const { return (static_cast<size_t>(b) * samples + k) * kLatent + j; }
};

struct ForwardResult {
  std::vector<float> z, row_kl, row_log_ratio;
};

ForwardResult run_forward(Backend& backend, const LatentInputs& in) {
  auto encoder_out = to_device(backend, in.encoder_out), eps = to_device(backend, in.eps);
  const size_t rows = static_cast<size_t>(in.images) * in.samples;
  DeviceArray<float> z(backend, in.eps.size()), row_kl(backend, in.images), log_ratio(backend, rows);
  backend.reparameterize_kl_forward(encoder_out.get(), eps.get(), in.images, in.samples, kLatent, z.get(),
                                    row_kl.get(), log_ratio.get());
  return {to_host(backend, z.get(), z.size()), to_host(backend, row_kl.get(), row_kl.size()),
          to_host(backend, log_ratio.get(), rows)};
}

class CudaIwaeSamples : public ::testing::TestWithParam<int> {};

TEST_P(CudaIwaeSamples, ReparameterizeKlForwardMatchesTheCpu) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  const int samples = GetParam();
  const LatentInputs in(7, samples);
  const ForwardResult want = run_forward(*on.cpu, in), got = run_forward(*on.cuda, in);
  // z = mean + sigma eps may cancel: relative to |mean| + |sigma eps|.
  std::vector<double> z_tolerance(want.z.size());
  std::vector<double> kl_tolerance(in.images), ratio_tolerance(want.row_log_ratio.size());
  for (int b = 0; b < in.images; ++b) {
    for (int k = 0; k < samples; ++k) {
      for (int j = 0; j < kLatent; ++j) {
        const size_t i = in.sample(b, k, j);
        z_tolerance[i] = kElementwise * (std::fabs(in.mean(b, j)) + std::exp(in.log_std(b, j)) * std::fabs(in.eps[i])) + 1e-30;
      }
    }
    double kl_magnitude = 0.0;
    for (int j = 0; j < kLatent; ++j) {
      const double m = in.mean(b, j), s = in.log_std(b, j);
      kl_magnitude += 0.5 * std::fabs(std::exp(2 * s) - 1 - 2 * s + m * m);
    }
    kl_tolerance[b] = sum_tolerance(kl_magnitude, kLatent);
    for (int k = 0; k < samples; ++k) {
      double magnitude = 0.0;
      for (int j = 0; j < kLatent; ++j) {
        const double e = in.eps[in.sample(b, k, j)], z = want.z[in.sample(b, k, j)];
        magnitude += 0.5 * (e * e + z * z) + std::fabs(in.log_std(b, j));  // z^2 carries z's error
      }
      ratio_tolerance[static_cast<size_t>(b) * samples + k] = sum_tolerance(magnitude, kLatent);
    }
  }
  expect_within(got.z, want.z, z_tolerance, "z, K = " + std::to_string(samples));
  expect_within(got.row_kl, want.row_kl, kl_tolerance, "row KL (once per image)");
  expect_within(got.row_log_ratio, want.row_log_ratio, ratio_tolerance, "row log p(z) - log q(z|x)");
}

std::vector<float> run_kl_backward(Backend& backend, const LatentInputs& in, float kl_scale) {
  auto dz = to_device(backend, in.dz), encoder_out = to_device(backend, in.encoder_out);
  auto eps = to_device(backend, in.eps);
  DeviceArray<float> d_encoder_out(backend, in.encoder_out.size());
  backend.reparameterize_kl_backward(dz.get(), encoder_out.get(), eps.get(), in.images, in.samples, kLatent,
                                     kl_scale, d_encoder_out.get());
  return to_host(backend, d_encoder_out.get(), d_encoder_out.size());
}

TEST_P(CudaIwaeSamples, ReparameterizeKlBackwardSumsTheSamplesAsTheCpu) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  const int samples = GetParam();
  const LatentInputs in(7, samples);
  const float kl_scale = 1.0f / 7;
  const std::vector<float> want = run_kl_backward(*on.cpu, in, kl_scale);
  const std::vector<float> got = run_kl_backward(*on.cuda, in, kl_scale);
  std::vector<double> tolerance(want.size());
  for (int b = 0; b < in.images; ++b) {
    for (int j = 0; j < kLatent; ++j) {
      const double m = in.mean(b, j), s = in.log_std(b, j), sigma = std::exp(s);
      double mean_terms = kl_scale * std::fabs(m);
      double log_std_terms = kl_scale * std::fabs(std::expm1(2 * s));
      for (int k = 0; k < samples; ++k) {
        const size_t i = in.sample(b, k, j);
        mean_terms += std::fabs(in.dz[i]);
        log_std_terms += std::fabs(in.dz[i] * sigma * in.eps[i]);
      }
      const size_t row = static_cast<size_t>(b) * 2 * kLatent;
      tolerance[row + j] = sum_tolerance(mean_terms, samples + 1);
      tolerance[row + kLatent + j] = sum_tolerance(log_std_terms, samples + 1);
    }
  }
  expect_within(got, want, tolerance, "d encoder_out (ELBO), K = " + std::to_string(samples));
}

// ---------------------------------------------------------------------------
// bernoulli_logprob_and_grad and accumulate_elbo with K sample rows per image.

TEST_P(CudaIwaeSamples, BernoulliSampleRowsReadTheirImage) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  const int samples = GetParam(), images = 5, cols = 784, rows = images * samples;
  std::vector<float> x = uniforms(static_cast<size_t>(images) * cols, 21, 0.0f, 1.0f);
  for (float& v : x) v = v < 0.3f ? 1.0f : 0.0f;
  const std::vector<float> logits = normals(static_cast<size_t>(rows) * cols, 22, 4.0f);
  const float grad_scale = 1.0f / images;
  std::vector<float> row_logprob[2], dlogits[2];
  Backend* backends[2] = {on.cpu.get(), on.cuda.get()};
  for (int which = 0; which < 2; ++which) {
    Backend& be = *backends[which];
    auto x_d = to_device(be, x), logits_d = to_device(be, logits);
    DeviceArray<float> d(be, logits.size()), lp(be, rows);
    be.bernoulli_logprob_and_grad(x_d.get(), logits_d.get(), rows, cols, samples, grad_scale, d.get(), lp.get());
    row_logprob[which] = to_host(be, lp.get(), rows);
    dlogits[which] = to_host(be, d.get(), logits.size());
  }
  // dlogits = grad_scale (sigma - x): where sigma ~ x = 1 the difference
  // cancels, leaving sigma's rounding (6e-8) unscaled: absolute 2.5e-7 grad_scale.
  expect_elementwise(dlogits[1], dlogits[0], 2.5e-7 * grad_scale, "dlogits, K = " + std::to_string(samples));
  std::vector<double> tolerance(rows);
  for (int r = 0; r < rows; ++r) {
    double magnitude = 0.0;
    for (int c = 0; c < cols; ++c) {
      const double f = logits[static_cast<size_t>(r) * cols + c];
      const double xv = x[static_cast<size_t>(r / samples) * cols + c];
      magnitude += std::fabs(xv * f - (std::max(f, 0.0) + std::log1p(std::exp(-std::fabs(f)))));
    }
    tolerance[r] = sum_tolerance(magnitude, cols);
  }
  expect_within(row_logprob[1], row_logprob[0], tolerance, "row log p(x|z) of sample rows");
}

TEST_P(CudaIwaeSamples, AccumulateElboAveragesTheSamplesWithOrWithoutKl) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  const int samples = GetParam(), images = 300;  // more images than the kernel's 256 threads
  const std::vector<float> row_logprob = normals(static_cast<size_t>(images) * samples, 31, 20.0f, -90.0f);
  const std::vector<float> row_kl = uniforms(images, 32, 5.0f, 30.0f);
  for (bool with_kl : {true, false}) {
    double result[2];
    Backend* backends[2] = {on.cpu.get(), on.cuda.get()};
    for (int which = 0; which < 2; ++which) {
      Backend& be = *backends[which];
      auto lp = to_device(be, row_logprob), kl = to_device(be, row_kl);
      const std::vector<double> start{1.5};
      auto acc = to_device(be, start);
      be.accumulate_elbo(lp.get(), with_kl ? kl.get() : nullptr, images, samples, acc.get());
      be.accumulate_elbo(lp.get(), with_kl ? kl.get() : nullptr, images, samples, acc.get());  // adds again
      result[which] = to_host(be, acc.get(), 1)[0];
    }
    double direct = 1.5;
    for (int twice = 0; twice < 2; ++twice) {
      for (int b = 0; b < images; ++b) {
        double mean = 0.0;
        for (int k = 0; k < samples; ++k) mean += row_logprob[static_cast<size_t>(b) * samples + k];
        direct += mean / samples - (with_kl ? row_kl[b] : 0.0);
      }
    }
    EXPECT_NEAR(result[1], result[0], 1e-12 * std::fabs(result[0])) << "with KL " << with_kl;
    EXPECT_NEAR(result[1], direct, 1e-12 * std::fabs(direct)) << "with KL " << with_kl;
  }
}

// ---------------------------------------------------------------------------
// importance_weights: the bound L_K and the normalized weights.

struct WeightResult {
  std::vector<float> weights, row_bound, bound_without_weights;
};

WeightResult run_importance_weights(Backend& backend, const std::vector<float>& logprob,
                                    const std::vector<float>& log_ratio, int images, int samples) {
  auto lp = to_device(backend, logprob), lr = to_device(backend, log_ratio);
  DeviceArray<float> weights(backend, logprob.size()), bound(backend, images), bound_only(backend, images);
  backend.importance_weights(lp.get(), lr.get(), images, samples, weights.get(), bound.get());
  backend.importance_weights(lp.get(), lr.get(), images, samples, nullptr, bound_only.get());
  return {to_host(backend, weights.get(), weights.size()), to_host(backend, bound.get(), images),
          to_host(backend, bound_only.get(), images)};
}

// Image 0: log-weights spread uniformly over `spread` nats around -500 (a
// real image's log p(x|z) scale); image 1: all equal (weights exactly 1/K in
// exact arithmetic); image 2: one sample 200 nats above the rest; images 3..:
// spread again with other draws.
void log_weight_inputs(int images, int samples, float spread, std::vector<float>* logprob,
                       std::vector<float>* log_ratio) {
  const size_t n = static_cast<size_t>(images) * samples;
  *logprob = uniforms(n, 41 + static_cast<uint64_t>(samples), -500.0f - spread / 2, -500.0f + spread / 2);
  *log_ratio = normals(n, 42 + static_cast<uint64_t>(samples), 3.0f);
  for (int k = 0; k < samples && images > 2; ++k) {
    (*logprob)[static_cast<size_t>(samples) + k] = -480.0f;
    (*log_ratio)[static_cast<size_t>(samples) + k] = -20.0f;
    (*logprob)[2 * static_cast<size_t>(samples) + k] = k == samples / 2 ? -300.0f : -500.0f;
    (*log_ratio)[2 * static_cast<size_t>(samples) + k] = 0.0f;
  }
}

// log (1/K) sum_k exp(log w_k) in long double, max-shifted: the test's own
// evaluation, not the shared math's.
double direct_bound(const float* logprob, const float* log_ratio, int samples) {
  long double m = -INFINITY;
  for (int k = 0; k < samples; ++k) m = std::max(m, static_cast<long double>(logprob[k]) + log_ratio[k]);
  long double sum = 0.0L;
  for (int k = 0; k < samples; ++k) sum += std::exp(static_cast<long double>(logprob[k]) + log_ratio[k] - m);
  return static_cast<double>(m + std::log(sum / samples));
}

void expect_importance_weights_match(TwoBackends& on, int images, int samples, float spread) {
  std::vector<float> logprob, log_ratio;
  log_weight_inputs(images, samples, spread, &logprob, &log_ratio);
  const WeightResult want = run_importance_weights(*on.cpu, logprob, log_ratio, images, samples);
  const WeightResult got = run_importance_weights(*on.cuda, logprob, log_ratio, images, samples);
  const std::string k = "K = " + std::to_string(samples);
  std::vector<double> bound_tolerance(images);
  std::vector<float> direct(images);
  for (int b = 0; b < images; ++b) {
    const size_t first = static_cast<size_t>(b) * samples;
    direct[b] = static_cast<float>(direct_bound(&logprob[first], &log_ratio[first], samples));
    bound_tolerance[b] = 2e-6 + 2e-6 * std::fabs(direct[b]);
  }
  expect_within(got.row_bound, want.row_bound, bound_tolerance, "L_K, CUDA vs CPU, " + k);
  expect_within(got.row_bound, direct, bound_tolerance, "L_K, CUDA vs long double, " + k);
  EXPECT_EQ(got.bound_without_weights, got.row_bound) << "the bound does not depend on asking for weights";
  std::vector<double> weight_tolerance(want.weights.size());
  // Weights below float's normal range (exp(-87.3)/sum, where the shifted
  // weight is clamped) are subnormal, with fewer digits: absolute 1e-38.
  for (size_t i = 0; i < want.weights.size(); ++i) weight_tolerance[i] = 4e-6 * std::fabs(want.weights[i]) + 1e-38;
  expect_within(got.weights, want.weights, weight_tolerance, "normalized weights, " + k);
  for (int b = 0; b < images; ++b) {
    double sum = 0.0;
    for (int s = 0; s < samples; ++s) {
      const float w = got.weights[static_cast<size_t>(b) * samples + s];
      ASSERT_TRUE(std::isfinite(w) && w >= 0.0f) << "image " << b << " sample " << s << ": " << w;
      sum += w;
    }
    EXPECT_NEAR(sum, 1.0, 1e-5) << "image " << b << ", " << k;
  }
  // Image 2 has one sample 200 nats above the rest: its weight is 1 to float
  // precision, and L_K = -300 - log K.
  if (images > 2) {
    EXPECT_FLOAT_EQ(got.weights[2 * static_cast<size_t>(samples) + samples / 2], 1.0f) << k;
    EXPECT_NEAR(got.row_bound[2], -300.0 - std::log(static_cast<double>(samples)), 1e-3) << k;
  }
}

TEST_P(CudaIwaeSamples, ImportanceWeightsMatchTheCpuOverHundredsOfNats) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  expect_importance_weights_match(on, 37, GetParam(), 300.0f);  // 37: warps of a partial block
}

// The evaluation's K = 5000 (a block per image), log-weights over 600 nats.
TEST(CudaIwae, ImportanceWeightsAtEvaluationsFiveThousandSamples) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  expect_importance_weights_match(on, 6, 5000, 600.0f);
  // Around the switch from a warp to a block per image.
  expect_importance_weights_match(on, 9, 512, 300.0f);
  expect_importance_weights_match(on, 9, 513, 300.0f);
}

TEST(CudaIwae, ImportanceWeightsSameBitsTwiceAndInsideAStepGraph) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  const int images = 4, samples = 5000;
  std::vector<float> logprob, log_ratio;
  log_weight_inputs(images, samples, 400.0f, &logprob, &log_ratio);
  const WeightResult eager = run_importance_weights(*cuda, logprob, log_ratio, images, samples);
  EXPECT_EQ(run_importance_weights(*cuda, logprob, log_ratio, images, samples).weights, eager.weights);
  // Eager, captured, replayed twice: the same bits each time, and a replay
  // reads the inputs as they are when it runs.
  auto lp = to_device(*cuda, logprob), lr = to_device(*cuda, log_ratio);
  DeviceArray<float> weights(*cuda, logprob.size()), bound(*cuda, images);
  std::unique_ptr<StepRecording> recording = cuda->make_step_recording();
  for (int run = 0; run < 4; ++run) {
    cuda->run_step(recording.get(), [&] {
      cuda->importance_weights(lp.get(), lr.get(), images, samples, weights.get(), bound.get());
    });
    EXPECT_EQ(to_host(*cuda, weights.get(), weights.size()), eager.weights) << "run " << run;
    EXPECT_EQ(to_host(*cuda, bound.get(), images), eager.row_bound) << "run " << run;
  }
  std::vector<float> shifted = logprob;
  for (float& v : shifted) v += 10.0f;  // L_K moves by exactly 10 in exact arithmetic
  cuda->copy_to_device(lp.get(), shifted.data(), shifted.size() * sizeof(float));
  cuda->run_step(recording.get(), [&] {
    cuda->importance_weights(lp.get(), lr.get(), images, samples, weights.get(), bound.get());
  });
  const std::vector<float> moved = to_host(*cuda, bound.get(), images);
  for (int b = 0; b < images; ++b) EXPECT_NEAR(moved[b], eager.row_bound[b] + 10.0f, 1e-3) << b;
}

// ---------------------------------------------------------------------------
// importance_weighted_latent_backward: IWAE and DReG.

std::vector<float> run_weighted_backward(Backend& backend, const LatentInputs& in, const std::vector<float>& z,
                                         const std::vector<float>& weights, float scale, bool dreg) {
  auto dz = to_device(backend, in.dz), encoder_out = to_device(backend, in.encoder_out);
  auto eps = to_device(backend, in.eps), z_d = to_device(backend, z), w = to_device(backend, weights);
  DeviceArray<float> d_encoder_out(backend, in.encoder_out.size());
  backend.importance_weighted_latent_backward(dz.get(), encoder_out.get(), eps.get(), z_d.get(), w.get(),
                                              in.images, in.samples, kLatent, scale, dreg,
                                              d_encoder_out.get());
  return to_host(backend, d_encoder_out.get(), d_encoder_out.size());
}

TEST_P(CudaIwaeSamples, ImportanceWeightedLatentBackwardIwaeAndDreg) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  const int samples = GetParam(), images = 7;
  const LatentInputs in(images, samples);
  // The forward's z and normalized weights, from the CPU, given to both.
  const std::vector<float> z = run_forward(*on.cpu, in).z;
  std::vector<float> logprob, log_ratio;
  log_weight_inputs(images, samples, 20.0f, &logprob, &log_ratio);
  const std::vector<float> weights = run_importance_weights(*on.cpu, logprob, log_ratio, images, samples).weights;
  const float scale = 1.0f / images;
  for (bool dreg : {false, true}) {
    const std::vector<float> want = run_weighted_backward(*on.cpu, in, z, weights, scale, dreg);
    const std::vector<float> got = run_weighted_backward(*on.cuda, in, z, weights, scale, dreg);
    std::vector<double> tolerance(want.size());
    for (int b = 0; b < images; ++b) {
      for (int j = 0; j < kLatent; ++j) {
        const double sigma = std::exp(static_cast<double>(in.log_std(b, j)));
        double mean_terms = 0.0, log_std_terms = dreg ? 0.0 : scale;
        for (int k = 0; k < samples; ++k) {
          const size_t i = in.sample(b, k, j);
          const double w = weights[static_cast<size_t>(b) * samples + k];
          // |terms| of the formula, each part apart (vae_math.h's importance_weighted_dz).
          const double dz_k = dreg ? std::fabs(w * in.dz[i]) + scale * w * w * (std::fabs(z[i]) + std::fabs(in.eps[i] / sigma))
                                   : std::fabs(in.dz[i]) + scale * w * std::fabs(z[i]);
          mean_terms += dz_k;
          log_std_terms += dz_k * sigma * std::fabs(in.eps[i]);
        }
        const size_t row = static_cast<size_t>(b) * 2 * kLatent;
        tolerance[row + j] = sum_tolerance(mean_terms, 2 * samples);
        tolerance[row + kLatent + j] = sum_tolerance(log_std_terms, 2 * samples + 1);
      }
    }
    expect_within(got, want, tolerance,
                  std::string(dreg ? "DReG" : "IWAE") + " d encoder_out, K = " + std::to_string(samples));
  }
}

INSTANTIATE_TEST_SUITE_P(K, CudaIwaeSamples, ::testing::Values(1, 3, 50),
                         [](const ::testing::TestParamInfo<int>& param) { return "K" + std::to_string(param.param); });

// ---------------------------------------------------------------------------
// tanh layers and the row-scaled bias gradient.

TEST(CudaIwae, BiasActivationForwardTanhMatchesTheCpu) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  const int rows = 300, cols = 200;
  // Pre-activations from 1e-4 (tanh(a) ~ a) to +-12 (tanh saturated at +-1).
  std::vector<float> y = normals(static_cast<size_t>(rows) * cols, 51, 3.0f);
  for (size_t i = 0; i < y.size(); i += 7) y[i] *= 1e-4f;
  const std::vector<float> bias = normals(cols, 52, 0.1f);
  std::vector<float> out[2];
  Backend* backends[2] = {on.cpu.get(), on.cuda.get()};
  for (int which = 0; which < 2; ++which) {
    auto y_d = to_device(*backends[which], y), b_d = to_device(*backends[which], bias);
    backends[which]->bias_activation_forward(y_d.get(), b_d.get(), rows, cols, Activation::kTanh);
    out[which] = to_host(*backends[which], y_d.get(), y.size());
  }
  expect_elementwise(out[1], out[0], 1e-7, "tanh(y + bias)");
}

TEST(CudaIwae, ActivationBackwardBiasGradWithRowScaleMatchesTheCpu) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  const int rows = 1000, cols = 37;  // several row chunks; a partial column block
  std::vector<float> y = uniforms(static_cast<size_t>(rows) * cols, 61, -1.0f, 1.0f);  // tanh outputs
  const std::vector<float> dy = normals(y.size(), 62, 0.1f);
  const std::vector<float> row_scale = uniforms(rows, 63, 0.0f, 0.2f);
  for (Activation act : {Activation::kTanh, Activation::kRelu, Activation::kIdentity}) {
    for (bool scaled : {true, false}) {
      std::vector<float> dy_out[2], dbias[2];
      Backend* backends[2] = {on.cpu.get(), on.cuda.get()};
      for (int which = 0; which < 2; ++which) {
        Backend& be = *backends[which];
        auto dy_d = to_device(be, dy), y_d = to_device(be, y), s_d = to_device(be, row_scale);
        DeviceArray<float> db(be, cols);
        be.activation_backward_bias_grad(dy_d.get(), y_d.get(), db.get(), rows, cols, act,
                                         scaled ? s_d.get() : nullptr);
        dy_out[which] = to_host(be, dy_d.get(), dy.size());
        dbias[which] = to_host(be, db.get(), cols);
      }
      const std::string what = std::string(act == Activation::kTanh   ? "tanh"
                                            : act == Activation::kRelu ? "relu"
                                                                       : "identity") +
                               (scaled ? ", row-scaled" : "");
      // tanh's 1 - y^2 cancels near |y| = 1: y^2's rounding (6e-8 of 1),
      // which an FMA on the GPU does not make, times |s dy|: 2.4e-7 |s dy| more.
      std::vector<double> elementwise(dy.size());
      for (size_t i = 0; i < dy.size(); ++i) {
        const double s = scaled ? row_scale[i / cols] : 1.0;
        elementwise[i] = kElementwise * std::fabs(dy_out[0][i]) + 2.4e-7 * std::fabs(s * dy[i]) + 1e-30;
      }
      expect_within(dy_out[1], dy_out[0], elementwise, what + ": dy act'(y)");
      std::vector<double> tolerance(cols, 0.0);
      for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c) tolerance[c] += std::fabs(dy_out[0][static_cast<size_t>(r) * cols + c]);
      }
      for (double& t : tolerance) t = sum_tolerance(t, rows);
      expect_within(dbias[1], dbias[0], tolerance, what + ": bias gradient");
    }
  }
}

// --gemm-epilogues has no tanh epilogue: a tanh layer must run unfused (and
// be counted so), with the CPU's result.
TEST(CudaIwae, GemmEpiloguesRunTanhLayersUnfused) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  TwoBackends on(std::move(cuda));
  ASSERT_TRUE(on.cuda->set_gemm_epilogues(true));
  const int rows = 64, in = 50, out = 40;
  const std::vector<float> x = normals(static_cast<size_t>(rows) * in, 71);
  const std::vector<float> w = normals(static_cast<size_t>(in) * out, 72, 0.3f);
  const std::vector<float> b = normals(out, 73, 0.1f);
  std::vector<float> y[2];
  Backend* backends[2] = {on.cpu.get(), on.cuda.get()};
  const DenseFusionCounts before = on.cuda->dense_fusion_counts();
  for (int which = 0; which < 2; ++which) {
    Backend& be = *backends[which];
    auto x_d = to_device(be, x), w_d = to_device(be, w), b_d = to_device(be, b);
    DeviceArray<float> y_d(be, static_cast<size_t>(rows) * out);
    DeviceArray<unsigned char> mask(be, be.activation_mask_bytes(rows, out));
    be.dense_forward(x_d.get(), w_d.get(), b_d.get(), rows, in, out, Activation::kTanh, y_d.get(), mask.get());
    y[which] = to_host(be, y_d.get(), y_d.size());
  }
  const DenseFusionCounts after = on.cuda->dense_fusion_counts();
  EXPECT_EQ(after.fused, before.fused) << "a tanh layer went through a cuBLASLt epilogue";
  EXPECT_EQ(after.unfused, before.unfused + 1);
  // A length-50 dot product of O(1) terms (the sum rule) then tanh, whose
  // slope is at most 1: absolute 2e-5 covers both with room.
  expect_elementwise(y[1], y[0], 2e-5, "tanh dense layer, epilogues on");
}

}  // namespace
}  // namespace cuvae
