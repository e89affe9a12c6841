// One pack member's training step as the CUDA backend collected it, to be
// run together with the other members' (CudaBackend's StepBatch, lockstep.h):
// the step's kernel launches, cuBLAS GEMMs and device copies in order, with
// their arguments, nothing run yet. Only for .cu files and the CUDA backend.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

namespace cuvae {
namespace kernels {
struct LaunchTarget;
}

// C = alpha op(A) op(B) + beta C, row-major (Backend::gemm's arguments).
struct CollectedGemm {
  bool transpose_a = false, transpose_b = false;
  int m = 0, n = 0, k = 0;
  float alpha = 1.0f, beta = 0.0f;
  const float* a = nullptr;
  const float* b = nullptr;
  float* c = nullptr;
  int lda = 0, ldb = 0, ldc = 0;
  // Everything but the three pointers is the same: one batched GEMM can run both.
  bool same_shape(const CollectedGemm& o) const {
    return transpose_a == o.transpose_a && transpose_b == o.transpose_b && m == o.m && n == o.n && k == o.k &&
           alpha == o.alpha && beta == o.beta && lda == o.lda && ldb == o.ldb && ldc == o.ldc;
  }
};

// Launches `count` members' calls of one kernel body (launch.cuh): each
// member's arguments are args[i] (the bytes of its parameters), the grid
// the same for all; blockIdx.z is the member.
using BatchedLauncher = void (*)(const kernels::LaunchTarget& on, dim3 grid, dim3 block, size_t shared_bytes,
                                 const unsigned char* const* args, int count);

struct CollectedCall {
  enum class Kind { kKernel, kGemm, kCopy };
  Kind kind = Kind::kKernel;
  // kKernel: which body (its single-member kernel), the geometry, the arguments.
  const void* function = nullptr;
  dim3 grid, block;
  size_t shared_bytes = 0;
  std::vector<unsigned char> args;
  BatchedLauncher launch_batched = nullptr;
  // kGemm
  CollectedGemm gemm;
  // kCopy: cudaMemcpyAsync device to device
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;

  // Call j of every member can run as one batched call.
  bool batches_with(const CollectedCall& o) const {
    if (kind != o.kind) return false;
    switch (kind) {
      case Kind::kKernel:
        return function == o.function && grid.x == o.grid.x && grid.y == o.grid.y && grid.z == o.grid.z &&
               block.x == o.block.x && block.y == o.block.y && block.z == o.block.z &&
               shared_bytes == o.shared_bytes && args.size() == o.args.size();
      case Kind::kGemm:
        return gemm.same_shape(o.gemm);
      case Kind::kCopy:
        return false;  // copies run one by one
    }
    return false;
  }
};

using CollectedStep = std::vector<CollectedCall>;

}  // namespace cuvae
