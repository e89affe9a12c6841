// Launch geometry shared by the element-wise kernels.
#pragma once

#include <algorithm>
#include <cstddef>

namespace cuvae::kernels {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, no
// more than the items need (65535 keeps within every grid limit).
inline unsigned int blocks_for(size_t n) {
  const size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<size_t>(1, std::min<size_t>(blocks, 65535)));
}

}  // namespace cuvae::kernels
