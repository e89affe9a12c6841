// The dense layer's epilogues around the cuBLAS GEMM (act: identity, ReLU or
// tanh, vae_math.h's activate / activation_backward).
//   forward:  y[r][c] = act(y[r][c] + bias[c])                 (in place)
//   backward: dy[r][c] = act'(y[r][c]) (s_r dy[r][c]);  dbias[c] = sum_r dy[r][c]
//             (s_r = row_scale[r], or 1 when row_scale is null: the IWAE
//             objectives' per-sample weights on the decoder's output gradient)
//
// Backward, version 1 gave each block 32 columns and all rows: at batch 4096
// a 200-column layer ran on 7 of the H100's 132 SMs. Version 2 gave each
// block 8 columns and 128 row lanes: 25 blocks, still 18 us a call at batch
// 4096 under Nsight Compute (2.8% of SM throughput), 16% of the step's
// kernel time. Version 3 split the rows too, into chunks of 128 (224 blocks
// of 32 x 8 threads at batch 4096 and 200 columns; each block writes its
// chunk's 32 column sums to a scratch buffer, a second kernel adds them):
// 10.3 us a call, 5% SM throughput, too few threads in flight (a fifth of
// the H100's) to hide memory latency. Version 4 (this) uses chunks of 32
// rows, 896 blocks, and a warp per column in the second kernel. Each warp
// reads 128 contiguous bytes of a row per iteration. Fixed order
// throughout: deterministic, no atomics. (Not cub::BlockReduce for the first
// kernel: that reduces a whole block to one value; each of a block's 32
// columns needs its own sum.)
#include <cub/cub.cuh>

#include <algorithm>

#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

// 32-bit indices (the launcher refuses outputs of 2^32 elements or more): a
// 64-bit `%` is a long software sequence on the GPU, a 32-bit one a few
// instructions.
__device__ void bias_activation_forward_kernel(float* __restrict__ y,
                                               const float* __restrict__ bias, unsigned int count,
                                               unsigned int cols, Activation act) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += gridDim.x * blockDim.x) {
    y[i] = activate(y[i] + bias[i % cols], act);
  }
}

constexpr int kColumnsPerBlock = 32;
constexpr int kRowLanes = 8;
constexpr int kRowsPerChunk = 32;

__device__ void activation_backward_partial_sums_kernel(float* __restrict__ dy,
                                                        const float* __restrict__ y,
                                                        const float* __restrict__ row_scale,
                                                        float* __restrict__ partials, int rows,
                                                        int cols, Activation act) {
  __shared__ float lane_sums[kRowLanes][kColumnsPerBlock + 1];
  const int c = blockIdx.x * kColumnsPerBlock + threadIdx.x;
  const int chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  // Chunk by chunk, gridDim.y apart: each chunk's sum is the same whatever
  // the grid, so the bits do not depend on it (gridDim.y stops at 65535).
  for (int chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int first_row = chunk * kRowsPerChunk;
    const int end_row = min(rows, first_row + kRowsPerChunk);
    float sum = 0.0f;
    if (c < cols) {
      for (int r = first_row + threadIdx.y; r < end_row; r += kRowLanes) {
        const size_t i = static_cast<size_t>(r) * cols + c;
        const float scaled = row_scale != nullptr ? row_scale[r] * dy[i] : dy[i];
        const float d = activation_backward(scaled, y[i], act);
        dy[i] = d;
        sum += d;
      }
    }
    lane_sums[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      float total = 0.0f;
      for (int lane = 0; lane < kRowLanes; ++lane) total += lane_sums[lane][threadIdx.x];
      partials[static_cast<size_t>(chunk) * cols + c] = total;
    }
    __syncthreads();  // lane_sums is written again by the next chunk
  }
}

// One warp per column: lane l adds chunks l, l + 32, ..., then
// cub::WarpReduce adds the 32 lane sums in a fixed tree.
__device__ void sum_partials_kernel(const float* __restrict__ partials, int chunks, int cols,
                                    float* __restrict__ dbias) {
  using WarpReduce = cub::WarpReduce<float>;
  __shared__ typename WarpReduce::TempStorage storage[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int c = blockIdx.x * (kThreads / 32) + warp;
  if (c >= cols) return;  // whole warps leave together
  float sum = 0.0f;
  for (int k = lane; k < chunks; k += 32) sum += partials[static_cast<size_t>(k) * cols + c];
  sum = WarpReduce(storage[warp]).Sum(sum);
  if (lane == 0) dbias[c] = sum;
}

size_t bias_grad_scratch_floats(int rows, int cols) {
  return static_cast<size_t>((rows + kRowsPerChunk - 1) / kRowsPerChunk) * static_cast<size_t>(cols);
}

void bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act,
                             const LaunchTarget& on) {
  const size_t count = static_cast<size_t>(rows) * cols;
  check_32bit_grid_stride("bias_activation_forward", count);
  if (count == 0) return;
  launch<bias_activation_forward_kernel>(on, blocks_for(count), kThreads, 0, y, bias,
         static_cast<unsigned int>(count), static_cast<unsigned int>(cols), act);
}

void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                   Activation act, const float* row_scale, float* scratch,
                                   const LaunchTarget& on) {
  const int chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  constexpr int kMaxGridY = 65535;  // gridDim.y's limit: the kernel loops over the chunks beyond it
  const dim3 grid(static_cast<unsigned int>((cols + kColumnsPerBlock - 1) / kColumnsPerBlock),
                  static_cast<unsigned int>(std::min(chunks, kMaxGridY)));
  if (cols == 0) return;
  // No rows: no chunks, and the second kernel writes a zero gradient.
  if (chunks > 0) {
    launch<activation_backward_partial_sums_kernel>(on, grid, dim3(kColumnsPerBlock, kRowLanes), 0,
           dy, y, row_scale, scratch, rows, cols, act);
  }
  constexpr int kWarps = kThreads / 32;
  launch<sum_partials_kernel>(on, static_cast<unsigned int>((cols + kWarps - 1) / kWarps), kThreads, 0,
         scratch, chunks, cols, dbias);
}

}  // namespace cuvae::kernels
