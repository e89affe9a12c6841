// Counter-based random numbers: Philox4x32-10.
//
// Reference: Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011 (the Random123 library), the generator cuRAND also calls
// Philox4_32_10. A draw is a pure function of (key, counter), so the value of
// element i of step t does not depend on the order, the thread or the backend
// that computes it: a run is reproducible bit for bit with any thread count,
// and the CPU and CUDA backends draw the same uniforms.
//
// Our counter layout: key = the run's 64-bit seed; counter = (group of four
// elements: 64 bits, step: 56 bits, stream: 8 bits). Each purpose (init,
// binarization, eps, ...) has its own stream, so they never share numbers.
//
// This is exactly cuRAND's Philox4_32_10 layout, which the CUDA kernels draw
// from (include/cuvae/backends/cuda/curand_block.h). curand_init(seed, subsequence, offset)
// (curand_kernel.h, curand_philox4x32_x.h) sets key = (seed low 32 bits,
// seed high 32), counter words 2-3 = subsequence (low, high) and words 0-1 =
// offset / 4, and curand4 then returns the block for that counter. So
//   random_block(key, g) = curand4 after curand_init(key.seed,
//                          curand_subsequence(key), curand_offset(g))
// with subsequence = stream << 56 | step (its low 56 bits) and offset = 4 g
// (g < 2^62, as every group of a 64-bit element index is).
// tests/backends/test_curand_mapping.cpp checks this against cuRAND's own functions,
// compiled for the host, and known answers.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuvae/model/hd.h"
#include "cuvae/model/vae_math.h"

namespace cuvae {

// The purposes that draw random numbers; each is an independent stream.
enum class RandomStream : uint32_t {
  kInit = 1,          // parameter initialization
  kBinarize = 2,      // training binarization uniforms
  kEps = 3,           // training reparameterization noise
  kShuffle = 4,       // epoch shuffles
  kPrior = 5,         // z ~ p(z) for the sample images
  kEvalBinarize = 6,  // the fixed binarization of the test set
  kEvalEps = 7,       // eps for the test-set ELBO and importance sampling
  kReconstructEps = 8 // eps for the reconstruction images
};

// Identifies one draw of many numbers: element i of it is a function of
// (seed, stream, step, i) alone.
struct RandomKey {
  uint64_t seed = 0;
  RandomStream stream = RandomStream::kInit;
  uint64_t step = 0;
};

struct Philox4 {
  uint32_t v[4];
};

CUVAE_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// Ten rounds of the Philox4x32 bijection keyed by (key0, key1).
CUVAE_HD Philox4 philox4x32_10(Philox4 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kMul0, counter.v[0], &hi0);
    const uint32_t lo1 = mulhilo32(kMul1, counter.v[2], &hi1);
    counter = Philox4{{hi1 ^ counter.v[1] ^ key0, lo1, hi0 ^ counter.v[3] ^ key1, lo0}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

// The four raw 32-bit draws of element group `group` (elements 4g..4g+3).
CUVAE_HD Philox4 random_block(const RandomKey& key, uint64_t group) {
  const Philox4 counter{{static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                         static_cast<uint32_t>(key.step),
                         (static_cast<uint32_t>(key.stream) << 24) |
                             (static_cast<uint32_t>(key.step >> 32) & 0xFFFFFFu)}};
  return philox4x32_10(counter, static_cast<uint32_t>(key.seed),
                       static_cast<uint32_t>(key.seed >> 32));
}

// cuRAND's (subsequence, offset) for random_block(key, group): see the top.
CUVAE_HD uint64_t curand_subsequence(const RandomKey& key) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(key.stream) & 0xFFu) << 56) |
         (key.step & 0x00FFFFFFFFFFFFFFull);
}
CUVAE_HD uint64_t curand_offset(uint64_t group) { return group * 4; }

// Uniform in [0, 1): the top 24 bits, so every value is exact in float.
CUVAE_HD float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// Uniform in (0, 1]: safe to take the log of.
CUVAE_HD float uniform_open_zero_from_bits(uint32_t bits) {
  return static_cast<float>((bits >> 8) + 1u) * (1.0f / 16777216.0f);
}

// Four standard normals from one block by Box-Muller:
// r = sqrt(-2 log u1), z0 = r cos(2 pi u2), z1 = r sin(2 pi u2), twice.
// log and sin/cos are vae_math.h's: branch-free polynomials on the host (so
// that fill_normal's loop vectorizes), logf and sincospif on the device.
CUVAE_HD void normals_from_block(const Philox4& block, float out[4]) {
  for (int pair = 0; pair < 2; ++pair) {
    const float u1 = uniform_open_zero_from_bits(block.v[2 * pair]);
    const float u2 = uniform_from_bits(block.v[2 * pair + 1]);
    const float r = sqrtf(-2.0f * log_positive(u1));
    float sine, cosine;
    sincos_turns(u2, &sine, &cosine);
    out[2 * pair] = r * cosine;
    out[2 * pair + 1] = r * sine;
  }
}

// Element `index` of a draw of uniforms in [0, 1).
CUVAE_HD float random_uniform(const RandomKey& key, uint64_t index) {
  return uniform_from_bits(random_block(key, index / 4).v[index % 4]);
}

// Element `index` of a draw of standard normals.
CUVAE_HD float random_normal(const RandomKey& key, uint64_t index) {
  float out[4];
  normals_from_block(random_block(key, index / 4), out);
  return out[index % 4];
}

}  // namespace cuvae
