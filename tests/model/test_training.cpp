// Training end to end on the CPU backend: determinism (same seed, same bits;
// another seed, other bits), and a short run on real MNIST whose ELBO rises.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "cuvae/backends/cpu/cpu_backend.h"
#include "cuvae/io/idx.h"
#include "cuvae/model/trainer.h"
#include "synthetic_images.h"

namespace cuvae {
namespace {

using testing::synthetic_images;

std::vector<float> train_parameters(uint64_t seed, bool shuffle, int steps) {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  const IdxImages images = synthetic_images(300);
  TrainConfig config;
  config.arch.hidden = {32, 32};
  config.arch.latent_dim = 4;
  config.batch_size = 50;
  config.seed = seed;
  config.shuffle = shuffle;
  Trainer trainer(*backend, config, images);
  for (int s = 0; s < steps; ++s) trainer.step();
  return trainer.model().parameters();
}

TEST(Determinism, SameSeedGivesBitIdenticalParameters) {
  for (bool shuffle : {false, true}) {
    const std::vector<float> a = train_parameters(5, shuffle, 20);
    const std::vector<float> b = train_parameters(5, shuffle, 20);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "shuffle " << shuffle;
  }
}

// Resident or streamed data, a CUDA Graph or not: the same computation, so
// the same bits, on every backend.
TEST(Determinism, DataPlacementAndStepGraphDoNotChangeTheBits) {
  const IdxImages images = synthetic_images(300);
  for (const auto& [device, epilogues] : std::vector<std::pair<std::string, bool>>{
           {"cpu", false}, {"cuda", false}, {"cuda", true}}) {
    std::string why_not;
    if (device == "cuda" && !cuda_available(&why_not)) {
      std::printf("  cuda: skipped (%s)\n", why_not.c_str());
      continue;
    }
    std::unique_ptr<Backend> backend = make_backend(device);
    ASSERT_TRUE(backend->set_gemm_epilogues(epilogues));
    for (const bool shuffle : {false, true}) {
      TrainConfig config;
      config.arch.hidden = {32};
      config.arch.latent_dim = 4;
      config.batch_size = 50;  // 6 steps an epoch: 14 steps cross two epoch starts
      config.seed = 11;
      config.shuffle = shuffle;
      std::vector<std::vector<float>> results;
      std::vector<double> elbos;
      using Placement = TrainerOptions::DataPlacement;
      for (const auto& [placement, graph] : std::vector<std::pair<Placement, bool>>{
               {Placement::kStreamed, false}, {Placement::kResident, false}, {Placement::kResident, true}}) {
        TrainerOptions options;
        options.data = placement;
        options.step_graph = graph;
        Trainer trainer(*backend, config, images, options);
        EXPECT_EQ(trainer.data_resident(), placement == Placement::kResident);
        EXPECT_EQ(trainer.step_recorded(), graph && device == "cuda") << trainer.describe_step();
        for (int s = 0; s < 14; ++s) trainer.step();
        results.push_back(trainer.model().parameters());
        elbos.push_back(trainer.take_mean_elbo());
      }
      for (size_t i = 1; i < results.size(); ++i) {
        EXPECT_EQ(0, std::memcmp(results[0].data(), results[i].data(), results[0].size() * sizeof(float)))
            << device << (shuffle ? " shuffled" : "") << ": variant " << i << " differs from streamed";
        EXPECT_EQ(elbos[0], elbos[i]) << device << ": variant " << i;
      }
    }
  }
}

TEST(Determinism, DifferentSeedsGiveDifferentParameters) {
  const std::vector<float> a = train_parameters(5, false, 5);
  const std::vector<float> b = train_parameters(6, false, 5);
  EXPECT_NE(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

TEST(Determinism, ShuffleIsAPermutationThatChangesPerEpoch) {
  const std::vector<uint32_t> a = epoch_permutation(1, 0, 1000), b = epoch_permutation(1, 1, 1000);
  std::vector<uint32_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (uint32_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_NE(a, b);
  EXPECT_EQ(a, epoch_permutation(1, 0, 1000));
}

std::string mnist_dir() {
  const char* env = std::getenv("CUVAE_MNIST_DIR");
  return env != nullptr ? env : std::string(CUVAE_SOURCE_DIR) + "/data/mnist";
}

TEST(TrainingMnist, ElboRisesOnRealData) {
  MnistSplit train;
  try {
    train = load_mnist_split(mnist_dir(), true);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "MNIST not found (" << e.what() << "); run tools/fetch_mnist.sh "
                 << mnist_dir();
  }
  std::unique_ptr<Backend> backend = make_cpu_backend();
  TrainConfig config;  // the seed's model and batch size
  Trainer trainer(*backend, config, train.images);
  // 60 steps: the first 10 give the starting ELBO (~ -540 nats: 784 pixels
  // at probability ~1/2), the last 10 must be far better.
  for (int s = 0; s < 10; ++s) trainer.step();
  const double first = trainer.take_mean_elbo();
  for (int s = 0; s < 40; ++s) trainer.step();
  trainer.take_mean_elbo();
  for (int s = 0; s < 10; ++s) trainer.step();
  const double last = trainer.take_mean_elbo();
  std::printf("  ELBO over steps 1-10: %.2f, steps 51-60: %.2f\n", first, last);
  EXPECT_LT(first, -400.0);
  EXPECT_GT(last, first + 150.0);
}

}  // namespace
}  // namespace cuvae
