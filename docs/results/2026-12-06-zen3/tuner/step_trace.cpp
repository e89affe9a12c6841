// Scratch (not committed): per-step wall times of the seed's model at a
// batch size, on the CPU backend with the environment's thread settings.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "cuvae/backends/backend.h"
#include "cuvae/io/idx.h"
#include "cuvae/model/trainer.h"

int main(int argc, char** argv) {
  const int batch = argc > 1 ? std::atoi(argv[1]) : 200;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 2000;
  const cuvae::IdxImages images = cuvae::load_mnist_split("data/mnist", true).images;
  std::unique_ptr<cuvae::Backend> backend = cuvae::make_backend("cpu");
  cuvae::TrainConfig config;
  config.batch_size = batch;
  cuvae::Trainer trainer(*backend, config, images);
  for (int i = 0; i < 20; ++i) trainer.step();
  auto last = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) {
    trainer.step();
    const auto now = std::chrono::steady_clock::now();
    std::printf("%.6e\n", std::chrono::duration<double>(now - last).count());
    last = now;
  }
  return 0;
}
