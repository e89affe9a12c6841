#include "cuvae/backends/cuda/step_graph.h"

#include <cstring>

#include "cuvae/backends/cuda/cuda_check.h"

namespace cuvae {

StepGraph::~StepGraph() {
  if (exec_ != nullptr) CUVAE_CUDA_WARN(cudaGraphExecDestroy(exec_));
  if (graph_ != nullptr) CUVAE_CUDA_WARN(cudaGraphDestroy(graph_));
}

void StepGraph::begin_capture(cudaStream_t stream) {
  calls_.clear();
  // Thread-local mode: another thread's unsafe call (e.g. a cudaMalloc) does
  // not break this capture, while this thread's would be reported.
  CUVAE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  branches.begin_recording();
}

void StepGraph::end_capture(cudaStream_t stream) {
  capturing_ = false;
  branches.end_step();  // the backend joined the side branch: a capture must end joined
  CUVAE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
  const cudaError_t status = cudaGraphInstantiate(&exec_, graph_, 0);
  if (status != cudaSuccess) {
    cudaGraphDestroy(graph_);  // a later capture starts clean
    graph_ = nullptr;
    exec_ = nullptr;
    calls_.clear();
    CUVAE_CUDA_CHECK(status);
  }
}

void StepGraph::abort_capture(cudaStream_t stream) noexcept {
  capturing_ = false;
  cudaGraph_t partial = nullptr;
  if (cudaStreamEndCapture(stream, &partial) == cudaSuccess && partial != nullptr) {
    cudaGraphDestroy(partial);
  }
  cudaGetLastError();  // the capture's error is the one being thrown
  calls_.clear();
}

void StepGraph::begin_replay() {
  next_ = 0;
  replaying_ = true;
  branches.begin_checking();
}

void StepGraph::end_replay(cudaStream_t stream) {
  replaying_ = false;
  if (next_ != calls_.size()) {
    throw Error("CUDA Graph replay: the step made " + std::to_string(next_) +
                " calls, the recorded step " + std::to_string(calls_.size()) +
                " (an internal error; --no-cuda-graph avoids it)");
  }
  branches.end_step();
  launch(stream);
}

void StepGraph::launch(cudaStream_t stream) { CUVAE_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

StepGraph::Call& StepGraph::next_recorded(const char* what) {
  if (next_ >= calls_.size()) {
    replaying_ = false;
    throw Error(std::string("CUDA Graph replay: the step made more calls than the recorded one (") +
                what + " is call " + std::to_string(next_ + 1) +
                "; an internal error; --no-cuda-graph avoids it)");
  }
  return calls_[next_++];
}

void StepGraph::kernel(const void* function, dim3 grid, dim3 block, size_t shared_bytes,
                       void** args, const size_t* arg_sizes, int arg_count, cudaStream_t stream) {
  std::vector<unsigned char> bytes;
  for (int i = 0; i < arg_count; ++i) {
    const auto* p = static_cast<const unsigned char*>(args[i]);
    bytes.insert(bytes.end(), p, p + arg_sizes[i]);
  }
  if (!replaying_) {
    CUVAE_CUDA_CHECK(cudaLaunchKernel(function, grid, block, args, shared_bytes, stream));
    if (!capturing_) return;
    branches.call("a kernel launch");
    Call c;
    c.function = function;
    c.grid = grid;
    c.block = block;
    c.shared_bytes = shared_bytes;
    c.args = std::move(bytes);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    const cudaGraphNode_t* last = nullptr;
    size_t count = 0;
    CUVAE_CUDA_CHECK(cudaStreamGetCaptureInfo(stream, &status, nullptr, nullptr, &last, nullptr, &count));
    // Right after a launch, the launching stream's (main or side) only
    // dependency is the node just added, whatever it depended on before.
    if (status != cudaStreamCaptureStatusActive || count != 1) {
      throw Error("CUDA Graph capture: cannot find the node of a kernel launch");
    }
    c.node = last[0];
    calls_.push_back(std::move(c));
    return;
  }
  branches.call("a kernel launch");
  Call& c = next_recorded("a kernel launch");
  if (c.function != function || c.grid.x != grid.x || c.grid.y != grid.y || c.grid.z != grid.z ||
      c.block.x != block.x || c.block.y != block.y || c.block.z != block.z ||
      c.shared_bytes != shared_bytes || c.args.size() != bytes.size()) {
    replaying_ = false;
    throw Error("CUDA Graph replay: kernel launch " + std::to_string(next_) +
                " differs from the recorded step's (an internal error; --no-cuda-graph avoids it)");
  }
  if (c.args == bytes) return;
  cudaKernelNodeParams params{};
  params.func = const_cast<void*>(function);
  params.gridDim = grid;
  params.blockDim = block;
  params.sharedMemBytes = static_cast<unsigned int>(shared_bytes);
  params.kernelParams = args;
  params.extra = nullptr;
  CUVAE_CUDA_CHECK(cudaGraphExecKernelNodeSetParams(exec_, c.node, &params));
  c.args = std::move(bytes);
}

bool StepGraph::call(const char* what, const std::vector<unsigned char>& key) {
  if (!replaying_) {
    if (capturing_) {
      branches.call(what);
      Call c;
      c.what = what;
      c.args = key;
      calls_.push_back(std::move(c));
    }
    return true;
  }
  branches.call(what);
  Call& c = next_recorded(what);
  if (c.function != nullptr || c.what != what || c.args != key) {
    replaying_ = false;
    throw Error(std::string("CUDA Graph replay: call ") + std::to_string(next_) + " (" + what +
                ") differs from the recorded step's (an internal error; --no-cuda-graph avoids it)");
  }
  return false;
}

}  // namespace cuvae
