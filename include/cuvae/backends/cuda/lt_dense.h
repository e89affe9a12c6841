// Dense layers as single cuBLASLt matmuls whose epilogues do the layer's
// neighbours (the CUDA backend with --gemm-epilogues):
//   forward         y = act(x W + b)             epilogue BIAS, or RELU_AUX_BIAS
//                                                (also writes the ReLU bit mask)
//   backward input  dx = (da W^T) * relu'(x),    epilogue DRELU_BGRAD (reads the
//                   x_dbias = column sums of dx  bit mask of x's forward)
// so the bias, activation and bias-gradient passes over the activations
// (bias_activation.cu) disappear from the step.
//
// cuBLASLt is column-major: a row-major y (rows x out) is a column-major
// Y^T (out x rows) = W^T X^T, with W (in x out row-major) read as the
// column-major out x in matrix W^T. So m = out, n = rows, k = in, and the
// bias (length m) is per output column, as in the row-major layer. The ReLU
// bit mask is column-major too: bit i of column r is element (r, i), columns
// mask_ld(out) bits apart (cuBLASLt wants a multiple of 128).
//
// Where cuBLASLt has no algorithm for a shape (its heuristic says
// NOT_SUPPORTED, or the algorithm refuses to run in a step's eager first
// run), or the bias is less than 16-byte aligned, the calls return false and
// the backend runs the unfused layer; the ReLU mask is then marked as not written, so a fused backward is
// never fed a stale one. Plans (descriptors and the heuristic's algorithm)
// are made once per shape, epilogue and pointer alignment, so a step's calls
// repeat exactly (a CUDA Graph replays them) and the same seed gives the same
// bits. Only for .cu files and the CUDA backend.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <unordered_map>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/backends/cuda/step_graph.h"

namespace cuvae {

class LtDense {
 public:
  LtDense(cudaStream_t stream, void* workspace, size_t workspace_bytes);
  ~LtDense();
  LtDense(const LtDense&) = delete;
  LtDense& operator=(const LtDense&) = delete;

  void set_tf32(bool on) { tf32_ = on; }

  // Bits between the mask's columns, and the mask's bytes for rows x cols
  // outputs.
  static int64_t mask_ld(int cols) { return (static_cast<int64_t>(cols) + 127) / 128 * 128; }
  static size_t mask_bytes(int rows, int cols) {
    return static_cast<size_t>(mask_ld(cols) / 8) * static_cast<size_t>(rows);
  }

  // y = act(x W + b), and for ReLU with a mask, the mask. False: not done
  // (an activation other than identity or ReLU, e.g. tanh, or no cuBLASLt
  // algorithm); the caller runs the unfused layer.
  bool forward(const float* x, const float* w, const float* b, int rows, int in, int out,
               Activation act, float* y, void* mask, StepGraph* graph);
  // dx = (da W^T) * relu'(x) and x_dbias = column sums of dx, where x_mask
  // is the mask the fused forward of x wrote. False: not done (no mask from a
  // fused forward for these rows and columns, or no algorithm).
  bool backward_input(const float* da, const float* w, int rows, int in, int out,
                      const void* x_mask, float* dx, float* x_dbias, StepGraph* graph);

  // From now on, no mask (or this one) counts as written by a fused forward.
  void forget_masks() { written_masks_.clear(); }
  void forget_mask(const void* mask) { written_masks_.erase(mask); }

  // Calls done fused and calls left to the unfused layer, since construction.
  DenseFusionCounts counts() const { return counts_; }

 private:
  struct Plan {
    bool supported = false;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // m x n = op(A) (m x k) op(B) (k x n), column-major, with `epilogue`.
  struct Shape {
    bool transpose_a;
    int m, n, k, lda, ldb, ldd;
    cublasLtEpilogue_t epilogue;
    int64_t aux_ld;  // 0: no aux
  };
  // The plan for a shape and these pointers' alignments, made on first use.
  Plan& plan(const Shape& shape, const void* a, const void* b, const void* d, const void* bias,
             const void* aux);
  void destroy_and_erase(const std::vector<unsigned char>& key) noexcept;
  // The matmul (or, replaying a graph, its check). False: cuBLASLt refused
  // the plan's algorithm outside a graph; the plan is then unsupported.
  bool run(Plan& plan, const void* a, const void* b, void* d, const void* bias, const void* aux,
           StepGraph* graph, const std::vector<unsigned char>& key);

  cudaStream_t stream_;
  void* workspace_;
  size_t workspace_bytes_;
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulPreference_t preference_ = nullptr;
  bool tf32_ = false;
  std::map<std::vector<unsigned char>, Plan> plans_;
  // Masks written by a fused ReLU forward, with their rows and columns.
  std::unordered_map<const void*, std::pair<int, int>> written_masks_;
  DenseFusionCounts counts_;
};

}  // namespace cuvae
