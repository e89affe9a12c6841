// Launch geometry shared by the element-wise kernels, and the one way every
// fused kernel is launched: straight onto the stream, or through the step's
// CUDA Graph (include/cuvae/backends/cuda/step_graph.h) while one is captured or replayed.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>

#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/kernels.h"
#include "cuvae/backends/cuda/step_graph.h"

namespace cuvae::kernels {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, no
// more than the items need (65535 keeps within every grid limit).
inline unsigned int blocks_for(size_t n) {
  const size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<size_t>(1, std::min<size_t>(blocks, 65535)));
}

// A grid-stride loop with a 32-bit index over `count` items must not wrap:
// count plus one grid's threads (blocks_for's most) stays below 2^32.
inline void check_32bit_grid_stride(const char* what, size_t count) {
  if (count > 0xffffffffu - size_t{65535} * kThreads) {
    throw Error(std::string(what) + ": " + std::to_string(count) +
                " elements is more than this kernel's 32-bit indices allow");
  }
}

// images * samples sample rows, as an int (the rows of the decoder's GEMMs).
inline int sample_rows(const char* what, int images, int samples) {
  const long long rows = static_cast<long long>(images) * samples;
  if (images < 0 || samples < 1 || rows > 0x7fffffff) {
    throw Error(std::string(what) + ": " + std::to_string(images) + " images x " +
                std::to_string(samples) +
                " samples (K must be at least 1 and the sample rows at most 2^31 - 1)");
  }
  return static_cast<int>(rows);
}

template <typename T>
struct Exactly {
  using type = T;
};

// kernel<<<grid, block, shared_bytes, on.stream>>>(args...), checked; the
// arguments are converted to the kernel's parameter types first, so the
// bytes a graph node compares and receives are exactly the parameters'.
template <typename... Params>
void launch(const LaunchTarget& on, void (*kernel)(Params...), dim3 grid, dim3 block,
            size_t shared_bytes, typename Exactly<Params>::type... args) {
  void* argv[] = {static_cast<void*>(&args)..., nullptr};
  const size_t sizes[] = {sizeof(Params)..., 0};
  const void* function = reinterpret_cast<const void*>(kernel);
  if (on.graph != nullptr) {
    on.graph->kernel(function, grid, block, shared_bytes, argv, sizes,
                     static_cast<int>(sizeof...(Params)), on.stream);
  } else {
    CUVAE_CUDA_CHECK(cudaLaunchKernel(function, grid, block, argv, shared_bytes, on.stream));
  }
}

}  // namespace cuvae::kernels
