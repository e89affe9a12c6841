// The CUDA backend against the CPU reference on the same parameters, inputs
// and noise: every forward value, every gradient, one Adam step, and 50
// training steps. Skips (with the reason) where no CUDA device is present.
//
// Tolerances, with the reasoning:
//  - Both backends draw the same Philox numbers and binarize to the same bits
//    (tested exactly in test_backend_ops.cpp); they differ only by summation
//    order (cuBLAS vs OpenBLAS, CUB trees vs sequential sums) and by a few
//    ulps in expf/logf. A float dot product of length K then differs by about
//    sqrt(K) * 2^-24 relative: ~2e-6 for K = 784.
//  - Forward values and row sums: relative 1e-4 of each tensor's largest
//    magnitude (50x that estimate, for error growth through 3 layers).
//  - Gradients: relative 1e-3 of each tensor's largest magnitude: they pass
//    through twice as many GEMMs, and ReLU masks can flip where a
//    pre-activation is within rounding of 0.
//  - After 50 Adam steps the parameters are compared by the norm of their
//    difference relative to how far training moved them (< 2%), and the mean
//    ELBO of the 50 steps within 0.1 nats: Adam divides by sqrt(v), so where a
//    gradient is near zero a rounding difference can flip the sign of that
//    element's update, which makes element-wise comparison meaningless while
//    the trajectories stay together.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend_fixture.h"
#include "synthetic_images.h"
#include "cuvae/backends/cpu/cpu_backend.h"
#include "cuvae/model/evaluate.h"
#include "cuvae/model/trainer.h"

namespace cuvae {
namespace {


double max_abs(const std::vector<float>& v, size_t begin, size_t end) {
  double m = 0;
  for (size_t i = begin; i < end; ++i) m = std::max(m, std::fabs(static_cast<double>(v[i])));
  return m;
}

void expect_tensor_close(const std::vector<float>& cuda, const std::vector<float>& cpu, size_t begin,
                         size_t end, double relative, const std::string& what) {
  const double tolerance = relative * max_abs(cpu, begin, end) + 1e-12;
  double worst = 0;
  for (size_t i = begin; i < end; ++i) worst = std::max(worst, std::fabs(static_cast<double>(cuda[i]) - cpu[i]));
  EXPECT_LE(worst, tolerance) << what;
  std::printf("  %-28s worst |cuda - cpu| %.3g = %.3f of tolerance\n", what.c_str(), worst, worst / tolerance);
}

// The model on the CPU and on `cuda` (as configured by the caller) on the
// same parameters, inputs and noise: forward values within 1e-4, gradients
// within 1e-3, one Adam step; the seed's model and objective unless told.
void expect_forward_gradients_and_adam_step_match(Backend* cuda, const Architecture& arch = Architecture{},
                                                   const ObjectiveConfig& objective = ObjectiveConfig{}) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const int rows = 200, samples = objective.total_samples();
  VaeModel a(*cpu, arch, rows, samples), b(*cuda, arch, rows, samples);
  a.initialize(3);
  b.initialize(3);
  ASSERT_EQ(a.parameters(), b.parameters()) << "initialization is drawn on the host: same bits";

  std::vector<uint8_t> pixels(static_cast<size_t>(rows) * arch.input_dim);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 131) % 256);
  DeviceArray<float> xa(*cpu, pixels.size()), xb(*cuda, pixels.size());
  DeviceArray<float> ea(*cpu, static_cast<size_t>(rows) * samples * arch.latent_dim), eb(*cuda, ea.size());
  const RandomKey bin{3, RandomStream::kBinarize, 1}, eps{3, RandomStream::kEps, 1};
  cpu->upload_and_binarize(pixels.data(), rows, arch.input_dim, 0, bin, xa.get());
  cuda->upload_and_binarize(pixels.data(), rows, arch.input_dim, 0, bin, xb.get());
  cpu->fill_normal(ea.get(), ea.size(), 0, eps);
  cuda->fill_normal(eb.get(), eb.size(), 0, eps);
  ASSERT_EQ(to_host(*cpu, xa.get(), xa.size()), to_host(*cuda, xb.get(), xb.size()));

  a.forward_backward(xa.get(), ea.get(), rows, objective, true);
  b.forward_backward(xb.get(), eb.get(), rows, objective, true);
  auto pair = [&](const float* pa, const float* pb, size_t n, double rel, const std::string& what) {
    expect_tensor_close(to_host(*cuda, pb, n), to_host(*cpu, pa, n), 0, n, rel, what);
  };
  const size_t sample_rows = static_cast<size_t>(rows) * samples;
  pair(a.z(), b.z(), ea.size(), 1e-4, "z");
  pair(a.logits(), b.logits(), sample_rows * arch.input_dim, 1e-4, "logits");
  pair(a.row_logprob(), b.row_logprob(), sample_rows, 1e-4, "row log p(x|z)");
  pair(a.row_kl(), b.row_kl(), rows, 1e-4, "row KL");
  if (objective.objective != Objective::kElbo) pair(a.row_bound(), b.row_bound(), rows, 1e-4, "row bound");
  const std::vector<float> ga = a.gradients(), gb = b.gradients();
  for (const DenseLayer& layer : a.layout().all_layers()) {
    expect_tensor_close(gb, ga, layer.weight_offset, layer.bias_offset, 1e-3, layer.name + ".weight grad");
    expect_tensor_close(gb, ga, layer.bias_offset, layer.bias_offset + layer.out, 1e-3, layer.name + ".bias grad");
  }
  a.adam_update(AdamConfig{}, 1);
  b.adam_update(AdamConfig{}, 1);
  // Step 1 moves each parameter by ~lr * sign(g): compare the moves.
  const std::vector<float> pa = a.parameters(), pb = b.parameters();
  size_t flipped = 0;
  for (size_t i = 0; i < pa.size(); ++i) flipped += std::fabs(pa[i] - pb[i]) > 1e-4f;
  EXPECT_LE(flipped, pa.size() / 1000) << "parameters whose first Adam step differs";
}

TEST(CudaVsCpu, ForwardGradientsAndOneAdamStep) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  expect_forward_gradients_and_adam_step_match(cuda.get());
}

// --gemm-epilogues: the same FP32 products and sums in another order (the
// bias inside the GEMM's accumulator, the bias gradient reduced by
// cuBLASLt), so the same tolerances; and the flag must fuse something.
TEST(CudaVsCpu, GemmEpiloguesWithinTheFp32Tolerances) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  ASSERT_TRUE(cuda->set_gemm_epilogues(true));
  expect_forward_gradients_and_adam_step_match(cuda.get());
  const DenseFusionCounts counts = cuda->dense_fusion_counts();
  std::printf("  %ld dense-layer calls fused by cuBLASLt, %ld not\n", counts.fused, counts.unfused);
  // 6 layers forward, 4 ReLU inputs backward. A call cuBLASLt has no FP32
  // algorithm for runs unfused (correct, and said by vae bench); none fused
  // would mean the flag does nothing.
  EXPECT_EQ(counts.fused + counts.unfused, 10);
  EXPECT_GT(counts.fused, 0);
}

// --tf32: the GEMM inputs are rounded to 10-bit mantissas (relative 2^-11,
// ~5e-4, per operand), so a length-784 dot product of mixed-sign terms is off
// by a few 1e-4 of its terms' scale, and more after three layers: forward
// values within 1e-2 of each tensor's largest magnitude, against 1e-4 in FP32.
// The test also checks that TF32 changes the bits (else the flag did nothing).
TEST(CudaVsCpu, Tf32ForwardWithinItsLooserTolerance) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  ASSERT_TRUE(cuda->set_tf32(true)) << "this test needs an sm_80 or newer GPU";
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> fp32 = make_backend("cuda");
  const Architecture arch;
  const int rows = 200;
  VaeModel a(*cpu, arch, rows), b(*cuda, arch, rows), c(*fp32, arch, rows);
  for (VaeModel* m : {&a, &b, &c}) m->initialize(5);
  std::vector<uint8_t> pixels(static_cast<size_t>(rows) * arch.input_dim);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 97) % 256);
  const RandomKey bin{5, RandomStream::kBinarize, 1}, eps{5, RandomStream::kEps, 1};
  std::vector<std::vector<float>> logits;
  for (auto [backend, model] : {std::pair<Backend*, VaeModel*>{cpu.get(), &a}, {cuda.get(), &b}, {fp32.get(), &c}}) {
    DeviceArray<float> x(*backend, pixels.size()), e(*backend, static_cast<size_t>(rows) * arch.latent_dim);
    backend->upload_and_binarize(pixels.data(), rows, arch.input_dim, 0, bin, x.get());
    backend->fill_normal(e.get(), e.size(), 0, eps);
    model->forward_backward(x.get(), e.get(), rows, true);
    logits.push_back(to_host(*backend, model->logits(), pixels.size()));
  }
  expect_tensor_close(logits[1], logits[0], 0, pixels.size(), 1e-2, "TF32 logits");
  expect_tensor_close(to_host(*cuda, b.row_logprob(), rows), to_host(*cpu, a.row_logprob(), rows), 0, rows, 1e-2,
                      "TF32 row log p(x|z)");
  EXPECT_NE(logits[1], logits[2]) << "--tf32 changed nothing: are the GEMMs really using TF32?";
}

// Two trainers from the same start, `steps` steps each: the mean bound of the
// steps within 0.1 nats and |p_b - p_a| / |p_a - p_0| < 2% (the header's
// reasons).
void expect_trajectories_together(Trainer& ta, Trainer& tb, int steps, const std::string& what) {
  const std::vector<float> start = ta.model().parameters();
  ASSERT_EQ(start, tb.model().parameters()) << what << ": initialization is drawn on the host: same bits";
  for (int s = 0; s < steps; ++s) {
    ta.step();
    tb.step();
  }
  const double elbo_a = ta.take_mean_elbo(), elbo_b = tb.take_mean_elbo();
  EXPECT_NEAR(elbo_a, elbo_b, 0.1) << what;
  const std::vector<float> pa = ta.model().parameters(), pb = tb.model().parameters();
  double diff = 0, moved = 0;
  for (size_t i = 0; i < pa.size(); ++i) {
    diff += (static_cast<double>(pa[i]) - pb[i]) * (static_cast<double>(pa[i]) - pb[i]);
    moved += (static_cast<double>(pa[i]) - start[i]) * (static_cast<double>(pa[i]) - start[i]);
  }
  std::printf("  %s: bound cpu %.4f cuda %.4f; |p_cuda - p_cpu| / |p_cpu - p_0| = %.4f\n", what.c_str(), elbo_a,
              elbo_b, std::sqrt(diff / moved));
  EXPECT_LT(std::sqrt(diff / moved), 0.02) << what;
}

// 50 steps from the same start on the CPU and on `cuda` (as configured by
// the caller, with its CUDA Graph): the trajectories stay together.
void expect_fifty_training_steps_together(Backend* cuda) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const IdxImages images = testing::synthetic_images(1000);
  TrainConfig config;
  config.seed = 4;
  Trainer ta(*cpu, config, images), tb(*cuda, config, images);
  expect_trajectories_together(ta, tb, 50, "the seed's model");
}

TEST(CudaVsCpu, FiftyTrainingStepsStayTogether) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  expect_fifty_training_steps_together(cuda.get());
}

TEST(CudaVsCpu, FiftyTrainingStepsStayTogetherWithGemmEpilogues) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  ASSERT_TRUE(cuda->set_gemm_epilogues(true));
  expect_fifty_training_steps_together(cuda.get());
  EXPECT_GT(cuda->dense_fusion_counts().fused, 0);
}

// The paper's two-stochastic-layer model (tanh, Glorot) on each objective
// whose backward passes differ (the K-sample ELBO, IWAE, DReG through both
// encoders, PIWAE's two decoder passes): 20 steps from the same start stay
// together as the one-layer model's 50 do (same tolerances, same reasons:
// the new ops, gaussian_layer_forward/backward and upper_latent_backward,
// are compared op by op in test_backend_ops.cpp).
TEST(CudaVsCpu, TwoStochasticLayersTrainTogetherForEveryBackwardPath) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const IdxImages images = testing::synthetic_images(200);
  for (const Objective objective : {Objective::kElbo, Objective::kIwae, Objective::kIwaeDreg, Objective::kPiwae}) {
    TrainConfig config;
    config.seed = 6;
    config.batch_size = 20;
    config.arch.set_layers("100,50", "200,200/100,100");
    config.arch.activation = Activation::kTanh;
    config.init = InitScheme::kGlorot;
    config.objective.objective = objective;
    config.objective.samples = 5;
    config.objective.outer_samples = objective == Objective::kPiwae ? 2 : 1;
    Trainer ta(*cpu, config, images), tb(*cuda, config, images);
    expect_trajectories_together(ta, tb, 20, "two layers, " + objective_name(objective));
  }
}

TEST(CudaVsCpu, SameSeedSameBitsOnTheGpu) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  IdxImages images;
  images.count = 400;
  images.rows = images.cols = 28;
  images.pixels.assign(static_cast<size_t>(images.count) * 784, 0);
  for (size_t i = 0; i < images.pixels.size(); ++i) images.pixels[i] = static_cast<uint8_t>(i * 13 % 256);
  TrainConfig config;
  config.seed = 8;
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    Trainer t(*cuda, config, images);
    for (int s = 0; s < 10; ++s) t.step();
    runs.push_back(t.model().parameters());
  }
  EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)));
}

// The one-layer model on every K-sample objective whose backward differs
// (the K-sample ELBO, IWAE, DReG), with each hidden activation, with the
// weight gradients on a second branch or not, and with cuBLASLt's epilogues
// or not: forward, gradients and one Adam step (the tolerances above), then
// 50 training steps of batch 20 from the same start, replayed as the CUDA
// Graph after the first two (the trajectories' tolerances).
struct ObjectiveCase {
  Objective objective;
  Activation activation;
  bool two_branch;
  bool epilogues;
};

// "iwae_dreg_tanh_two_branch_epilogues": the test's name and its messages' label.
std::string case_label(const ObjectiveCase& c) {
  std::string name = objective_name(c.objective) + "_" + (c.activation == Activation::kTanh ? "tanh" : "relu");
  if (c.two_branch) name += "_two_branch";
  if (c.epilogues) name += "_epilogues";
  for (char& ch : name) ch = ch == '-' ? '_' : ch;
  return name;
}

std::string case_name(const ::testing::TestParamInfo<ObjectiveCase>& info) { return case_label(info.param); }

std::vector<ObjectiveCase> all_objective_cases() {
  std::vector<ObjectiveCase> cases;
  for (Objective objective : {Objective::kElbo, Objective::kIwae, Objective::kIwaeDreg}) {
    for (Activation activation : {Activation::kRelu, Activation::kTanh}) {
      for (bool two_branch : {false, true}) {
        for (bool epilogues : {false, true}) cases.push_back({objective, activation, two_branch, epilogues});
      }
    }
  }
  return cases;
}

class CudaVsCpuObjectives : public ::testing::TestWithParam<ObjectiveCase> {
 protected:
  // The CUDA backend as the case says.
  void configure(Backend& cuda) const {
    if (GetParam().two_branch) {
      EXPECT_TRUE(cuda.set_two_branch(true));
    }
    if (GetParam().epilogues) {
      EXPECT_TRUE(cuda.set_gemm_epilogues(true));
    }
  }
  ObjectiveConfig objective() const {
    ObjectiveConfig o;
    o.objective = GetParam().objective;
    o.samples = 5;
    return o;
  }
};

TEST_P(CudaVsCpuObjectives, ForwardGradientsAndOneAdamStep) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  configure(*cuda);
  Architecture arch;
  arch.activation = GetParam().activation;
  expect_forward_gradients_and_adam_step_match(cuda.get(), arch, objective());
}

TEST_P(CudaVsCpuObjectives, FiftyTrainingStepsStayTogether) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  configure(*cuda);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const IdxImages images = testing::synthetic_images(400);
  TrainConfig config;
  config.seed = 12;
  config.batch_size = 20;
  config.arch.activation = GetParam().activation;
  config.objective = objective();
  Trainer ta(*cpu, config, images), tb(*cuda, config, images);
  expect_trajectories_together(ta, tb, 50, case_label(GetParam()));
  if (GetParam().epilogues) {
    // ReLU layers fuse where cuBLASLt has the FP32 algorithm; tanh layers run unfused (counted).
    const DenseFusionCounts counts = cuda->dense_fusion_counts();
    EXPECT_GT(counts.fused + counts.unfused, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaVsCpuObjectives, ::testing::ValuesIn(all_objective_cases()), case_name);

// The weight gradients on a second branch of the step's graph change where
// the GEMMs run, not what they compute: 20 replayed steps of the real model
// give the bits of one stream (the seed's model and objective, and the IWAE
// paper's tanh model on IWAE K = 5).
TEST(CudaVsCpu, TwoBranchStepsGiveTheOneStreamBits) {
  CUVAE_BACKEND_OR_SKIP(probe, "cuda");
  const IdxImages images = testing::synthetic_images(400);
  for (bool paper : {false, true}) {
    std::unique_ptr<Backend> one_stream = make_backend("cuda"), two_branch = make_backend("cuda");
    ASSERT_TRUE(two_branch->set_two_branch(true));
    TrainConfig config;
    config.seed = 13;
    if (paper) {
      config.batch_size = 20;
      config.arch.activation = Activation::kTanh;
      config.init = InitScheme::kGlorot;
      config.objective.objective = Objective::kIwae;
      config.objective.samples = 5;
    }
    Trainer ta(*one_stream, config, images), tb(*two_branch, config, images);
    for (int s = 0; s < 20; ++s) {
      ta.step();
      tb.step();
    }
    const std::vector<float> pa = ta.model().parameters(), pb = tb.model().parameters();
    EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)))
        << (paper ? "tanh, iwae K = 5" : "the seed's model");
  }
}

// evaluate() on CUDA against the CPU: the IWAE paper's protocol (K = 5000)
// on 20 images, with the bounds L_1 and L_50, of a model trained 30 steps
// (so that q(z|x) is not the prior). Both draw the same samples; each log w
// differs by the rounding of its sums (~1e-4 nats for 784 pixels), so the
// estimates are compared within 0.01 nats; the active units (variances
// against a 0.01 threshold) within one unit.
TEST(CudaVsCpu, EvaluateAtFiveThousandSamples) {
  CUVAE_BACKEND_OR_SKIP(cuda, "cuda");
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  const IdxImages images = testing::synthetic_images(200);
  TrainConfig config;
  config.seed = 14;
  config.batch_size = 20;
  Trainer trainer(*cpu, config, images);
  for (int s = 0; s < 30; ++s) trainer.step();
  const std::vector<float> params = trainer.model().parameters();
  EvalRequest request;
  request.limit = 20;
  request.k = 5000;
  request.seed = 3;
  request.bounds = {1, 50};
  std::vector<EvalResult> results;
  for (Backend* backend : {cpu.get(), cuda.get()}) {
    VaeModel model(*backend, config.arch, eval_images_per_chunk(request.k), request.k);
    model.set_parameters(params);
    results.push_back(evaluate(model, images, request));
  }
  const EvalResult &a = results[0], &b = results[1];
  std::printf("  NLL cpu %.5f cuda %.5f; ELBO cpu %.5f cuda %.5f\n", a.nll, b.nll, a.elbo, b.elbo);
  EXPECT_EQ(a.images, 20);
  EXPECT_EQ(b.images, 20);
  EXPECT_NEAR(a.nll, b.nll, 0.01);
  EXPECT_NEAR(a.elbo, b.elbo, 0.01);
  ASSERT_EQ(a.bounds.size(), b.bounds.size());
  for (size_t i = 0; i < a.bounds.size(); ++i) {
    EXPECT_EQ(a.bounds[i].first, b.bounds[i].first);
    EXPECT_NEAR(a.bounds[i].second, b.bounds[i].second, 0.01) << "L_" << a.bounds[i].first;
  }
  EXPECT_NEAR(a.active_units, b.active_units, 1);
}

}  // namespace
}  // namespace cuvae
