// The device draws its random numbers through cuRAND (curand_init + curand4,
// include/cuvae/backends/cuda/curand_block.h); the host through philox.h's random_block.
// They must give the same bits, or the CPU and the GPU would binarize
// differently. cuRAND's device functions are plain C++ when QUALIFIERS is
// defined before curand_kernel.h, so this runs on the host, without a GPU:
//  - cuRAND reproduces Random123's Philox4x32-10 known answers (so it is the
//    standard generator, and our reading of its counter layout is right:
//    key = seed, counter words 0-1 = offset / 4, words 2-3 = subsequence);
//  - curand_random_block(key, g) == random_block(key, g) over seeds, streams,
//    steps and groups at the edges of their ranges;
//  - known answers of the mapping, printed by a standalone program that
//    calls only cuRAND (tools/gpu/curand_known_answers.cpp), so a change of
//    either side's layout fails here.
#include <gtest/gtest.h>

#include <cstdint>

#include "cuvae/model/philox.h"

#if CUVAE_HAVE_CUDA
#define QUALIFIERS static inline
#include "cuvae/backends/cuda/curand_block.h"
#endif

namespace cuvae {
namespace {

#if CUVAE_HAVE_CUDA

void expect_block(const Philox4& actual, const Philox4& expected, const char* what) {
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(actual.v[i], expected.v[i]) << what << ", word " << i << std::hex << ": 0x" << actual.v[i]
                                          << " vs 0x" << expected.v[i];
  }
}

Philox4 block_of(curandStatePhilox4_32_10_t* state) {
  const uint4 bits = curand4(state);
  return Philox4{{bits.x, bits.y, bits.z, bits.w}};
}

// Counter words 0-1 hold offset / 4, but curand_init's offset is 64 bits:
// a group of 2^62 or more takes several skipaheads.
void skip_groups(uint64_t groups, curandStatePhilox4_32_10_t* state) {
  constexpr uint64_t kMostPerSkip = (uint64_t{1} << 62) - 1;
  while (groups > 0) {
    const uint64_t part = groups < kMostPerSkip ? groups : kMostPerSkip;
    skipahead(4 * part, state);
    groups -= part;
  }
}

TEST(CurandMapping, CurandIsRandom123sPhilox) {
  struct Case {
    uint64_t seed, subsequence, groups;
    Philox4 expected;  // Random123's kat_vectors (as in test_vae_math.cpp)
  } cases[] = {
      {0, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {~uint64_t{0}, ~uint64_t{0}, ~uint64_t{0}, {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      // key (0xa4093822, 0x299f31d0), counter (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344)
      {0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Case& c : cases) {
    curandStatePhilox4_32_10_t state;
    curand_init(c.seed, c.subsequence, 0, &state);
    skip_groups(c.groups, &state);
    expect_block(block_of(&state), c.expected, "Random123 known answer");
  }
}

TEST(CurandMapping, CurandRandomBlockIsRandomBlock) {
  const uint64_t seeds[] = {0, 1, 42, 0x0123456789abcdefull, ~uint64_t{0}};
  const RandomStream streams[] = {RandomStream::kInit, RandomStream::kBinarize, RandomStream::kEps,
                                  RandomStream::kEvalEps, RandomStream::kReconstructEps};
  const uint64_t steps[] = {0, 1, 977, (uint64_t{1} << 32) + 5, (uint64_t{1} << 56) - 1};
  const uint64_t groups[] = {0, 1, 195, (uint64_t{1} << 32) - 1, uint64_t{1} << 32, (uint64_t{1} << 62) - 1};
  int compared = 0;
  for (uint64_t seed : seeds) {
    for (RandomStream stream : streams) {
      for (uint64_t step : steps) {
        for (uint64_t group : groups) {
          const RandomKey key{seed, stream, step};
          expect_block(curand_random_block(key, group), random_block(key, group), "curand vs host");
          ++compared;
        }
      }
    }
  }
  EXPECT_EQ(compared, 5 * 5 * 5 * 6);
}

// A kernel may also draw consecutive groups from one state: curand4's next
// block is the next group's.
TEST(CurandMapping, ConsecutiveCurand4CallsAreConsecutiveGroups) {
  const RandomKey key{7, RandomStream::kBinarize, 3};
  curandStatePhilox4_32_10_t state;
  const uint64_t first = (uint64_t{1} << 32) - 2;  // crosses into counter word 1
  curand_init(key.seed, curand_subsequence(key), curand_offset(first), &state);
  for (uint64_t g = first; g < first + 4; ++g) expect_block(block_of(&state), random_block(key, g), "next group");
}

// Printed by tools/gpu/curand_known_answers.cpp, which calls cuRAND alone.
TEST(CurandMapping, KnownAnswersOfTheMapping) {
  struct Case {
    RandomKey key;
    uint64_t group;
    Philox4 expected;
  } cases[] = {
      {{42, RandomStream::kBinarize, 1}, 0, {{0x3eefb9d3u, 0x505ba460u, 0xfc18f2b5u, 0xc87b11bcu}}},
      {{42, RandomStream::kEps, 7}, 12345, {{0x38a58ee9u, 0x7b05323bu, 0xe9ed0e5au, 0xb9d63315u}}},
      {{0x0123456789abcdefull, RandomStream::kEvalBinarize, (uint64_t{1} << 32) + 5},
       (uint64_t{1} << 32) + 3,
       {{0x29d1fbc9u, 0xf9ee3f6au, 0x46928061u, 0xe1f20380u}}},
      {{~uint64_t{0}, static_cast<RandomStream>(255), (uint64_t{1} << 56) - 1},
       (uint64_t{1} << 62) - 1,
       {{0x8c5f4338u, 0x4a57523du, 0x7e300cb1u, 0x411fcefdu}}},
  };
  for (const Case& c : cases) {
    expect_block(random_block(c.key, c.group), c.expected, "host random_block");
    expect_block(curand_random_block(c.key, c.group), c.expected, "curand_random_block");
  }
}

#else

TEST(CurandMapping, NeedsTheCudaToolkit) {
  GTEST_SKIP() << "built without CUDA: cuRAND's headers are not available to compare against";
}

#endif

}  // namespace
}  // namespace cuvae
