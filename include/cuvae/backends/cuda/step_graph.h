// A training step recorded once as a CUDA Graph and replayed afterwards.
//
// Why: at batch 200 a step is ~35 small launches (GEMMs, fused kernels) whose
// launch costs and gaps exceed their run time. A graph launches them all in
// one call. The model code stays written once: every step makes the same
// backend calls, so the CUDA backend records the step's calls while
// capturing, and on each later step the same calls, instead of launching,
// are checked against the recording:
//  - a fused kernel (kernels/launch.cuh) whose arguments changed (the step
//    number in a Philox key or in Adam's bias correction, the batch's first
//    image) gets them written into its graph node
//    (cudaGraphExecKernelNodeSetParams copies them at once, so the next
//    replay can be prepared while the last one runs);
//  - a call that cannot be updated (a cuBLAS GEMM, whose kernels we do not
//    own) must repeat exactly; a difference is a programming error and
//    throws rather than replaying something else;
//  - with the two-branch step (Backend::begin_side_branch), every call must
//    be on the branch it was captured on, with the forks and joins in the
//    same places (`branches`, step_branches.h): the graph's dependencies are
//    those of the captured step.
// Only for .cu files and the CUDA backend.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "cuvae/backends/backend.h"
#include "cuvae/backends/step_branches.h"

namespace cuvae {

class StepGraph final : public StepRecording {
 public:
  StepGraph() = default;
  ~StepGraph() override;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  bool instantiated() const { return exec_ != nullptr; }
  bool replaying() const { return replaying_; }

  // Capture: begin_capture, the step's calls (launched into the capture
  // through kernel() and call()), end_capture (instantiates the graph).
  // abort_capture ends a capture that threw.
  void begin_capture(cudaStream_t stream);
  void end_capture(cudaStream_t stream);
  void abort_capture(cudaStream_t stream) noexcept;
  // Replay: begin_replay, the same calls (checked, nodes updated), then
  // end_replay launches the graph on `stream`.
  void begin_replay();
  void end_replay(cudaStream_t stream);
  // Launches the instantiated graph (after end_capture: the capture ran nothing).
  void launch(cudaStream_t stream);

  // A kernel launch: launched (capturing: into the graph, its node kept), or,
  // replaying, its node updated with these arguments where they changed.
  void kernel(const void* function, dim3 grid, dim3 block, size_t shared_bytes, void** args,
              const size_t* arg_sizes, int arg_count, cudaStream_t stream);
  // Any other call (`what` names it, `key` holds its arguments). Returns true
  // when the caller must issue it (capturing); false when replaying, after
  // checking that it repeats the recorded call exactly.
  bool call(const char* what, const std::vector<unsigned char>& key);

  size_t recorded_calls() const { return calls_.size(); }

  bool warmed_up = false;  // the step has run once without the graph
  // The captured step's branch structure (recorded by begin_capture ..
  // end_capture, checked by begin_replay .. end_replay); the backend adds
  // the forks, ends and joins, kernel() and call() the calls.
  StepBranches branches;

 private:
  struct Call {
    const void* function = nullptr;  // the kernel, or null for other calls
    std::string what;                // other calls: their name
    dim3 grid, block;
    size_t shared_bytes = 0;
    std::vector<unsigned char> args;  // concatenated argument bytes
    cudaGraphNode_t node = nullptr;   // kernels: their node in graph_
  };
  Call& next_recorded(const char* what);

  std::vector<Call> calls_;
  size_t next_ = 0;
  bool capturing_ = false, replaying_ = false;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// Serializes values into a call's key. Scalars and pointers only: a struct's
// padding bytes would make equal calls compare unequal.
template <typename... Values>
std::vector<unsigned char> call_key(const Values&... values) {
  static_assert(((std::is_arithmetic_v<Values> || std::is_pointer_v<Values>) && ...),
                "call_key takes scalars and pointers (no padding bytes)");
  std::vector<unsigned char> key((sizeof(Values) + ... + 0));
  size_t at = 0;
  ((std::memcpy(key.data() + at, &values, sizeof(Values)), at += sizeof(Values)), ...);
  return key;
}

}  // namespace cuvae
