// Dynamic binarization of a batch: x = [pixel / 255 > u], u ~ U[0,1) drawn by
// cuRAND's Philox4_32_10 (curand_init + curand4, cuvae/curand_block.h) at
// philox.h's counters, converted by philox.h's uniform_from_bits. Row r of
// the batch is image order[first_position + r] of the data
// set (or image first_position + r), so one kernel serves the resident data
// set (shuffled or not) and a batch staged alone (order null, position 0).
// Element (r, j) uses uniform element uniform_base + r * cols + j of the key,
// exactly as the CPU backend does, so both backends binarize a batch to the
// same bits. One thread per Philox block of four elements.
#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/curand_block.h"
#include "cuvae/backends/cuda/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

__device__ void binarize_kernel(const uint8_t* __restrict__ images,
                                const uint32_t* __restrict__ order,
                                unsigned long long first_position, int rows, int cols,
                                unsigned long long uniform_base, RandomKey key,
                                float* __restrict__ x) {
  const long long count = static_cast<long long>(rows) * cols;
  const unsigned long long first_group = uniform_base / 4;
  const unsigned long long groups = (uniform_base + count + 3) / 4 - first_group;
  for (unsigned long long g = blockIdx.x * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    const Philox4 block = curand_random_block(key, first_group + g);
    // 32-bit index arithmetic (a batch has fewer than 2^32 pixels: at most
    // 2^20 rows of 784), one division per group; the lanes step along the row.
    const long long first = static_cast<long long>((first_group + g) * 4) - static_cast<long long>(uniform_base);
    const unsigned int start = first < 0 ? 0u : static_cast<unsigned int>(first);
    unsigned int r = start / static_cast<unsigned int>(cols), j = start - r * static_cast<unsigned int>(cols);
    for (int lane = static_cast<int>(start - first); lane < 4 && first + lane < count; ++lane) {
      const unsigned long long position = first_position + r;
      const unsigned long long image = order != nullptr ? order[position] : position;
      x[first + lane] = cuvae::binarize(images[image * cols + j], uniform_from_bits(block.v[lane]));
      if (++j == static_cast<unsigned int>(cols)) {
        j = 0;
        ++r;
      }
    }
  }
}

void binarize(const uint8_t* images, const uint32_t* order, uint64_t first_position, int rows,
              int cols, uint64_t uniform_base, RandomKey key, float* x, const LaunchTarget& on) {
  const size_t count = static_cast<size_t>(rows) * cols;
  if (count > 0xffffffffu) {  // the kernel's 32-bit row and column arithmetic
    throw Error("binarize: a batch of " + std::to_string(count) + " pixels is more than 2^32 - 1");
  }
  launch<binarize_kernel>(on, blocks_for(count / 4 + 1), kThreads, 0, images, order, first_position,
         rows, cols, uniform_base, key, x);
}

}  // namespace cuvae::kernels
