// Dynamic binarization of a batch: x = [pixel / 255 > u], u ~ U[0,1) drawn by
// Philox. Element i of the batch uses uniform element first_row * cols + i of
// the key, exactly as the CPU backend does, so both backends binarize a batch
// to the same bits. One thread per Philox block of four elements.
#include "cuvae/cuda_check.h"
#include "cuvae/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

__global__ void binarize_kernel(const uint8_t* __restrict__ pixels, long long count,
                                unsigned long long base, RandomKey key, float* __restrict__ x) {
  const unsigned long long first_group = base / 4;
  const unsigned long long groups = (base + count + 3) / 4 - first_group;
  for (unsigned long long g = blockIdx.x * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    const Philox4 block = random_block(key, first_group + g);
    for (int lane = 0; lane < 4; ++lane) {
      const long long i =
          static_cast<long long>((first_group + g) * 4 + lane) - static_cast<long long>(base);
      if (i >= 0 && i < count) x[i] = cuvae::binarize(pixels[i], uniform_from_bits(block.v[lane]));
    }
  }
}

void binarize(const uint8_t* pixels, int rows, int cols, uint64_t first_row, RandomKey key,
              float* x, cudaStream_t stream) {
  const long long count = static_cast<long long>(rows) * cols;
  binarize_kernel<<<blocks_for(static_cast<size_t>(count) / 4 + 1), kThreads, 0, stream>>>(
      pixels, count, first_row * static_cast<uint64_t>(cols), key, x);
  CUVAE_KERNEL_CHECK();
}

}  // namespace cuvae::kernels
