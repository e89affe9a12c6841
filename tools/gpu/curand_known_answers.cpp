// Known answers for tests/backends/test_curand_mapping.cpp, from cuRAND alone: the
// Philox4_32_10 block that curand_init(seed, subsequence, offset) + curand4
// return, with cuRAND's device functions compiled for the host (QUALIFIERS).
// Independent of cuvae's philox.h: the subsequences and offsets are written
// out by hand from philox.h's documented mapping (subsequence = stream << 56 |
// step, offset = 4 group), so the test compares two separate derivations.
//   g++ -std=c++17 -isystem /usr/local/cuda/include tools/gpu/curand_known_answers.cpp -o /tmp/kat && /tmp/kat
#define QUALIFIERS static inline
#include <curand_kernel.h>

#include <cstdio>

namespace {

uint4 block(unsigned long long seed, unsigned long long subsequence, unsigned long long offset) {
  curandStatePhilox4_32_10_t s;
  curand_init(seed, subsequence, offset, &s);
  return curand4(&s);
}

}  // namespace

int main() {
  struct {
    unsigned long long seed, subsequence, offset;
  } cases[] = {
      {42ull, (2ull << 56) | 1ull, 0},            // seed 42, kBinarize, step 1, group 0
      {42ull, (3ull << 56) | 7ull, 4ull * 12345},  // kEps, step 7, group 12345
      {0x0123456789abcdefull, (6ull << 56) | ((1ull << 32) + 5), 4ull * ((1ull << 32) + 3)},
      {0xffffffffffffffffull, (255ull << 56) | 0x00ffffffffffffffull, 4ull * ((1ull << 62) - 1)},
  };
  for (const auto& c : cases) {
    const uint4 r = block(c.seed, c.subsequence, c.offset);
    std::printf("seed %016llx subsequence %016llx offset %016llx -> %08x %08x %08x %08x\n", c.seed,
                c.subsequence, c.offset, r.x, r.y, r.z, r.w);
  }
  return 0;
}
