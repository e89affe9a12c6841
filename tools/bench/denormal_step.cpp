// cpu/step_from_state/STATE/FTZ/200: one training step (batch 200, the
// seed's model) from a given state, with flush-to-zero and
// denormals-are-zero on or off in every thread (include/cuvae/backends/cpu/denormals.h).
//
// STATE "normal": the parameters and Adam moments after kWarmupSteps steps.
// STATE "subnormal": the same, but with the share of subnormal moments that
// a late checkpoint of the seed's run had (issue 14, epoch 175: 21% of m,
// 18% of v). They sit where a late run has them: on the encoder's input
// weights of the pixels that are least often on, whose gradients are zero in
// most batches. Each timing restores the state first (untimed) and times
// kStepsPerRestore steps, so m's subnormals, which decay to 0 within ~150
// steps, are there throughout.
//
// Expected: with FTZ the two states take the same time (within noise);
// without, the subnormal state is slower (microcode assists).
#include "denormal_step.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "cuvae/backends/cpu/denormals.h"
#include "cuvae/error.h"
#include "cuvae/io/idx.h"
#include "cuvae/model/philox.h"
#include "cuvae/model/trainer.h"

namespace {

constexpr int kBatch = 200;
constexpr int kWarmupSteps = 20;
constexpr int kStepsPerRestore = 10;
constexpr double kSubnormalShareM = 90701.0 / 425284;  // issue 14's epoch-175 checkpoint
constexpr double kSubnormalShareV = 76215.0 / 425284;

struct State {
  std::vector<float> params, m, v;
};

// MNIST's training images from CUVAE_MNIST_DIR or data/mnist; else 10,000
// generated ones, noise inside a black 4-pixel border, as MNIST's digits.
cuvae::IdxImages bench_images() {
  const char* dir = std::getenv("CUVAE_MNIST_DIR");
  try {
    return cuvae::load_mnist_split(dir != nullptr ? dir : "data/mnist", true).images;
  } catch (const cuvae::Error&) {
  }
  cuvae::IdxImages images;
  images.count = 10000;
  images.rows = images.cols = 28;
  images.pixels.assign(static_cast<size_t>(images.count) * 784, 0);
  const cuvae::RandomKey key{3, cuvae::RandomStream::kInit, 0};
  for (size_t i = 0; i < images.pixels.size(); ++i) {
    const int row = static_cast<int>(i % 784) / 28, col = static_cast<int>(i % 28);
    const bool inside = row >= 4 && row < 24 && col >= 4 && col < 24;
    if (inside) images.pixels[i] = static_cast<uint8_t>(cuvae::random_uniform(key, i) * 256);
  }
  return images;
}

// Pixels, least often nonzero over the images first.
std::vector<int> pixels_by_rarity(const cuvae::IdxImages& images) {
  const int pixels = images.pixels_per_image();
  std::vector<long> on(pixels, 0);
  for (size_t i = 0; i < images.pixels.size(); ++i) on[i % pixels] += images.pixels[i] != 0;
  std::vector<int> order(pixels);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return on[a] < on[b]; });
  return order;
}

// A random subnormal float of either sign (bits 1..2^23-1 of the mantissa).
float random_subnormal(uint64_t index) {
  const cuvae::Philox4 block = cuvae::random_block(cuvae::RandomKey{4, cuvae::RandomStream::kInit, 0}, index);
  const uint32_t bits = std::max<uint32_t>(1, block.v[0] & 0x7fffffu) | (block.v[1] & 0x80000000u);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Overwrites `share` of `moment` with subnormals: the encoder's first-layer
// weights of the rarest pixels (a row of W per pixel), rarest first.
void make_subnormal(std::vector<float>* moment, double share, const cuvae::DenseLayer& first,
                    const std::vector<int>& rarest_pixels) {
  const size_t wanted = static_cast<size_t>(share * static_cast<double>(moment->size()));
  size_t done = 0;
  for (int pixel : rarest_pixels) {
    const size_t row = first.weight_offset + static_cast<size_t>(pixel) * first.out;
    for (int j = 0; j < first.out && done < wanted; ++j, ++done) (*moment)[row + j] = random_subnormal(done);
  }
}

// By the bits: under DAZ a comparison reads a subnormal as 0.
bool is_subnormal(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits & 0x7f800000u) == 0 && (bits & 0x7fffffu) != 0;
}

double subnormal_share(const std::vector<float>& values) {
  const auto subnormal = [](float x) { return is_subnormal(x); };
  return static_cast<double>(std::count_if(values.begin(), values.end(), subnormal)) /
         static_cast<double>(values.size());
}

void bm_step_from_state(benchmark::State& s, cuvae::Backend* backend, bool subnormal, bool ftz) {
  static const cuvae::IdxImages images = bench_images();
  cuvae::TrainConfig config;
  config.batch_size = kBatch;
  cuvae::Trainer trainer(*backend, config, images);
  for (int i = 0; i < kWarmupSteps; ++i) trainer.step();
  State state{trainer.model().parameters(), trainer.model().adam_moment(1), trainer.model().adam_moment(2)};
  if (subnormal) {
    const std::vector<int> rarest = pixels_by_rarity(images);
    const cuvae::DenseLayer& first = trainer.model().layout().encoder().front();
    make_subnormal(&state.m, kSubnormalShareM, first, rarest);
    make_subnormal(&state.v, kSubnormalShareV, first, rarest);
  }
  s.counters["subnormal_m"] = subnormal_share(state.m);
  s.counters["subnormal_v"] = subnormal_share(state.v);
  cuvae::set_flush_denormals_to_zero(ftz);
  for (auto _ : s) {
    s.PauseTiming();
    trainer.restore(state.params, state.m, state.v, kWarmupSteps, 0.0, 0);
    s.ResumeTiming();
    for (int i = 0; i < kStepsPerRestore; ++i) trainer.step();
  }
  cuvae::set_flush_denormals_to_zero(true);  // as main set it
  s.counters["subnormal_v_after"] = subnormal_share(trainer.model().adam_moment(2));
  s.SetItemsProcessed(static_cast<int64_t>(s.iterations()) * kStepsPerRestore);
}

}  // namespace

void register_denormal_step_benchmarks(cuvae::Backend* cpu) {
  for (bool ftz : {true, false}) {
    for (bool subnormal : {false, true}) {
      const std::string name = std::string("cpu/step_from_state/") + (subnormal ? "subnormal" : "normal") +
                               (ftz ? "/ftz/" : "/no_ftz/") + std::to_string(kBatch);
      benchmark::RegisterBenchmark(name.c_str(), [cpu, subnormal, ftz](benchmark::State& s) {
        bm_step_from_state(s, cpu, subnormal, ftz);
      })->UseRealTime()->Unit(benchmark::kMillisecond);
    }
  }
}
