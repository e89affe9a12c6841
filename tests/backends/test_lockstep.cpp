// A pack's models in lock step on one backend (lockstep.h): each member a
// Trainer on its own thread and its own member backend, its steps collected
// and run with the others'. On the CPU (interleaved, call by call) a member
// has the bits it has alone; on CUDA (batched GEMMs and kernel launches, the
// pack's step one CUDA Graph) the fused kernels are the same per member and
// the GEMMs may round differently (see OnTheGpu... below).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "backend_fixture.h"
#include "cuvae/backends/lockstep.h"
#include "cuvae/error.h"
#include "cuvae/model/philox.h"
#include "cuvae/model/trainer.h"
#include "synthetic_images.h"

namespace cuvae {
namespace {

using testing::synthetic_images;

// Member i: seed 10 + i, lr by member; the IWAE paper's two-layer shape
// (small), IWAE with K = 3, shuffled. `variant` 1: the seed's one-layer ReLU
// model with the analytic-KL ELBO; 2: two layers with PIWAE (M = 2, K = 2)
// and DReG's grouped weights. Between them every fused op of a step runs.
TrainConfig member_config(int member, int variant = 0) {
  TrainConfig config;
  config.arch.latent_dim = 4;
  config.arch.hidden = {24, 24};
  config.arch.upper = {StochasticLayer{3, {12}}};
  config.arch.activation = Activation::kTanh;
  config.batch_size = 25;
  config.seed = 10 + static_cast<uint64_t>(member);
  config.shuffle = true;
  config.adam.lr = 1e-3 * (1 + member);
  config.objective.objective = Objective::kIwae;
  config.objective.samples = 3;
  if (variant == 1) {
    config.arch.upper.clear();
    config.arch.activation = Activation::kRelu;
    config.objective.objective = Objective::kElbo;
    config.objective.samples = 1;
  } else if (variant == 2) {
    config.objective.objective = Objective::kPiwae;
    config.objective.outer_samples = 2;
    config.objective.samples = 2;
  }
  return config;
}

std::vector<float> train_alone(const std::string& device, int member, int steps, int variant = 0) {
  std::unique_ptr<Backend> backend = make_backend(device);
  backend->set_adaptive_threads(false);
  static const IdxImages images = synthetic_images(200);
  Trainer trainer(*backend, member_config(member, variant), images);
  for (int s = 0; s < steps; ++s) trainer.step();
  return trainer.model().parameters();
}

// Member i takes steps[i] steps on its own thread, in lock step with the others.
std::vector<std::vector<float>> train_in_lockstep(const std::string& device, const std::vector<int>& steps,
                                                  bool graph = true, int variant = 0,
                                                  StepBatch::Counts* counts = nullptr, int streamed_member = -1) {
  const int members = static_cast<int>(steps.size());
  LockstepPack pack(make_backend(device), members, graph);
  pack.shared().set_adaptive_threads(false);
  static const IdxImages images = synthetic_images(200);
  std::vector<std::unique_ptr<Backend>> backends;
  std::vector<std::unique_ptr<Trainer>> trainers;
  for (int i = 0; i < members; ++i) {
    backends.push_back(pack.member_backend(i));
    TrainerOptions options;
    if (i == streamed_member) options.data = TrainerOptions::DataPlacement::kStreamed;
    trainers.push_back(std::make_unique<Trainer>(*backends.back(), member_config(i, variant), images, options));
  }
  std::vector<int> all(static_cast<size_t>(members));
  for (int i = 0; i < members; ++i) all[static_cast<size_t>(i)] = i;
  pack.enter(all);
  std::vector<std::string> errors(static_cast<size_t>(members));
  std::vector<std::thread> threads;
  for (int i = 0; i < members; ++i) {
    threads.emplace_back([&, i] {
      try {
        for (int s = 0; s < steps[static_cast<size_t>(i)]; ++s) trainers[static_cast<size_t>(i)]->step();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(i)] = e.what();
      }
      pack.leave(i);
    });
  }
  for (std::thread& t : threads) t.join();
  if (counts != nullptr) *counts = pack.batch_counts();
  std::vector<std::vector<float>> params;
  for (int i = 0; i < members; ++i) {
    EXPECT_EQ(errors[static_cast<size_t>(i)], "") << "member " << i;
    params.push_back(trainers[static_cast<size_t>(i)]->model().parameters());
  }
  trainers.clear();
  backends.clear();
  return params;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Lockstep, OnTheCpuEachMemberHasTheBitsItHasAlone) {
  const std::vector<int> steps = {13, 13, 13};
  for (int variant : {0, 1, 2}) {
    const std::vector<std::vector<float>> pack = train_in_lockstep("cpu", steps, false, variant);
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(same_bits(pack[static_cast<size_t>(i)], train_alone("cpu", i, 13, variant)))
          << "member " << i << ", variant " << variant;
    }
    EXPECT_FALSE(same_bits(pack[0], pack[1]));
  }
}

// A member that stops early (an interrupt, a failure) leaves the pack's
// rounds: the others go on without waiting for it, with their own bits.
TEST(Lockstep, AMemberThatStopsEarlyDoesNotHoldTheOthers) {
  const std::vector<int> steps = {11, 4, 11, 0};
  const std::vector<std::vector<float>> pack = train_in_lockstep("cpu", steps);
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(same_bits(pack[static_cast<size_t>(i)], train_alone("cpu", i, steps[static_cast<size_t>(i)])))
        << "member " << i;
  }
}

// A member whose images stream batch by batch (they did not fit the
// device) steps outside the rounds, one call at a time: the others do not
// wait for it, and every member keeps its bits.
TEST(Lockstep, AStreamedMemberStepsAloneWithoutHoldingTheOthers) {
  const std::vector<int> steps = {9, 9, 9};
  const std::vector<std::vector<float>> pack = train_in_lockstep("cpu", steps, false, 0, nullptr, 1);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(same_bits(pack[static_cast<size_t>(i)], train_alone("cpu", i, 9))) << "member " << i;
  }
}

TEST(Lockstep, BadUseIsRefused) {
  EXPECT_THROW(LockstepPack(make_backend("cpu"), 0, false), Error);
  LockstepPack pack(make_backend("cpu"), 2, false);
  EXPECT_FALSE(pack.batched());  // the CPU interleaves
  EXPECT_THROW(pack.member_backend(2), Error);
  EXPECT_THROW(pack.enter({0, 5}), Error);
  // A member stepping outside a round it entered.
  std::unique_ptr<Backend> member = pack.member_backend(1);
  pack.enter({0});
  EXPECT_THROW(member->run_step(nullptr, [] {}), Error);
}

// On CUDA each call of the members' steps is one batched GEMM
// (cublasSgemmBatched) or one launch of a kernel's batched form. The kernels
// run each member's arguments through the same body as alone; the batched
// GEMM may choose another kernel than cublasSgemm, and so another summation
// order: ~1e-7 relative a product. After 13 Adam steps members agree with
// their runs alone within 2e-4: a fifth of one Adam step's size (lr, 1e-3 to
// 3e-3), so a step dropped, repeated or taken with another member's
// arguments fails. With and without the pack's CUDA Graph the calls are the
// same: the same bits. And every call ran batched (none alone).
float largest_difference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float most = 0.0f;
  for (size_t j = 0; j < std::min(a.size(), b.size()); ++j) most = std::max(most, std::fabs(a[j] - b[j]));
  return most;
}

TEST(Lockstep, OnTheGpuMembersAgreeWithTheirRunsAloneWithinTheGemmsRounding) {
  CUVAE_BACKEND_OR_SKIP(probe, "cuda");
  probe.reset();
  const std::vector<int> steps = {13, 13, 13};
  std::vector<std::vector<float>> pack;
  for (int variant : {1, 2, 0}) {
    SCOPED_TRACE("variant " + std::to_string(variant));
    StepBatch::Counts counts;
    pack = train_in_lockstep("cuda", steps, true, variant, &counts);
    EXPECT_GT(counts.batched, 13);
    EXPECT_EQ(counts.alone, 0);
    const std::vector<std::vector<float>> eager = train_in_lockstep("cuda", steps, false, variant);
    for (int i = 0; i < 3; ++i) {
      const std::vector<float> alone = train_alone("cuda", i, 13, variant);
      const std::vector<float>& p = pack[static_cast<size_t>(i)];
      EXPECT_LE(largest_difference(p, alone), 2e-4f) << "member " << i;
      EXPECT_TRUE(same_bits(p, eager[static_cast<size_t>(i)])) << "member " << i << ": graph against eager";
    }
  }
  // A member that stops early: the rounds after it run without the graph,
  // batched over the members left.
  const std::vector<std::vector<float>> uneven = train_in_lockstep("cuda", {13, 5, 13}, true);
  for (int i : {0, 2}) {
    EXPECT_LE(largest_difference(uneven[static_cast<size_t>(i)], pack[static_cast<size_t>(i)]), 2e-4f)
        << "member " << i << " of the uneven pack";
  }
}

// More members than one launch's small batch (16) of arguments: the large
// batched kernel, and more than one launch where its parameters are full.
TEST(Lockstep, OnTheGpuPacksBeyondSixteenMembers) {
  CUVAE_BACKEND_OR_SKIP(probe, "cuda");
  probe.reset();
  const std::vector<int> steps(20, 3);
  StepBatch::Counts counts;
  const std::vector<std::vector<float>> pack = train_in_lockstep("cuda", steps, true, 1, &counts);
  EXPECT_EQ(counts.alone, 0);
  for (int i : {0, 17, 19}) {
    EXPECT_LE(largest_difference(pack[static_cast<size_t>(i)], train_alone("cuda", i, 3, 1)), 2e-4f) << "member " << i;
  }
}

}  // namespace
}  // namespace cuvae
