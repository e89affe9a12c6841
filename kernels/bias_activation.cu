// The dense layer's epilogues around the cuBLAS GEMM.
//   forward:  y[r][c] = act(y[r][c] + bias[c])                 (in place)
//   backward: dy[r][c] *= act'(y[r][c]);  dbias[c] = sum_r dy[r][c]
// The backward kernel gives each block 32 columns; its 32 x 8 threads read
// rows in coalesced 128-byte lines, each thread summing every 8th row, and
// the 8 partial sums of a column are added in a fixed order in shared memory:
// deterministic, no atomics.
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

constexpr int kColumnsPerBlock = 32;
constexpr int kRowLanes = 8;

__global__ void activation_backward_bias_grad_kernel(float* __restrict__ dy,
                                                     const float* __restrict__ y,
                                                     float* __restrict__ dbias, int rows, int cols,
                                                     bool is_relu) {
  __shared__ float partial[kRowLanes][kColumnsPerBlock + 1];
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
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
    dbias[c] = total;
  }
}

void bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act,
                             cudaStream_t stream) {
  const long long count = static_cast<long long>(rows) * cols;
  bias_activation_forward_kernel<<<blocks_for(static_cast<size_t>(count)), kThreads, 0, stream>>>(
      y, bias, count, cols, act == Activation::kRelu);
  CUVAE_KERNEL_CHECK();
}

void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                   Activation act, cudaStream_t stream) {
  const dim3 block(kColumnsPerBlock, kRowLanes);
  const unsigned int blocks = static_cast<unsigned int>((cols + kColumnsPerBlock - 1) / kColumnsPerBlock);
  activation_backward_bias_grad_kernel<<<blocks, block, 0, stream>>>(dy, y, dbias, rows, cols,
                                                                     act == Activation::kRelu);
  CUVAE_KERNEL_CHECK();
}

}  // namespace cuvae::kernels
