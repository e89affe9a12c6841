// The dense layer's epilogues around the cuBLAS GEMM.
//   forward:  y[r][c] = act(y[r][c] + bias[c])                 (in place)
//   backward: dy[r][c] *= act'(y[r][c]);  dbias[c] = sum_r dy[r][c]
//
// Backward, version 1 (until 2026-11-25) gave each block 32 columns and 8
// row lanes: at batch 4096 a 200-column layer ran on 7 blocks, i.e. 7 of the
// H100's 132 SMs, and the bias gradients were most of the step's non-GEMM
// time. Version 2 (this) gives each block 8 columns (one 32-byte sector of a
// row) and 128 row lanes: 25 blocks of 1024 threads for 200 columns, 98 for
// 784, every warp reading 4 rows x 32 bytes per iteration. The 128 partial
// sums of a column are added by a fixed tree in shared memory: deterministic,
// no atomics. (Not cub::BlockReduce: that reduces the whole block to one
// value, and here each of the block's 8 columns needs its own sum.)
#include "cuvae/cuda_check.h"
#include "cuvae/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

__global__ void bias_activation_forward_kernel(float* __restrict__ y,
                                               const float* __restrict__ bias, long long count,
                                               int cols, bool is_relu) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const float a = y[i] + bias[i % cols];
    y[i] = is_relu ? relu(a) : a;
  }
}

constexpr int kColumnsPerBlock = 8;
constexpr int kRowLanes = 128;

__global__ void activation_backward_bias_grad_kernel(float* __restrict__ dy,
                                                     const float* __restrict__ y,
                                                     float* __restrict__ dbias, int rows, int cols,
                                                     bool is_relu) {
  __shared__ float partial[kRowLanes][kColumnsPerBlock];
  const int c = blockIdx.x * kColumnsPerBlock + threadIdx.x;
  float sum = 0.0f;
  if (c < cols) {
    for (int r = threadIdx.y; r < rows; r += kRowLanes) {
      const size_t i = static_cast<size_t>(r) * cols + c;
      const float d = is_relu ? relu_backward(dy[i], y[i]) : dy[i];
      dy[i] = d;
      sum += d;
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  for (int half = kRowLanes / 2; half > 0; half /= 2) {
    if (threadIdx.y < half) partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + half][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < cols) dbias[c] = partial[0][threadIdx.x];
}

void bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act,
                             const LaunchTarget& on) {
  const long long count = static_cast<long long>(rows) * cols;
  launch(on, bias_activation_forward_kernel, blocks_for(static_cast<size_t>(count)), kThreads, 0, y,
         bias, count, cols, act == Activation::kRelu);
}

void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                   Activation act, const LaunchTarget& on) {
  const dim3 block(kColumnsPerBlock, kRowLanes);
  const unsigned int blocks = static_cast<unsigned int>((cols + kColumnsPerBlock - 1) / kColumnsPerBlock);
  launch(on, activation_backward_bias_grad_kernel, blocks, block, 0, dy, y, dbias, rows, cols,
         act == Activation::kRelu);
}

}  // namespace cuvae::kernels
